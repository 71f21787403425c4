"""meshplan: plan how to spread a large language model over many GPUs.

The Python API: `estimate(...)` prices one training strategy; the specs, strategy and cost model are in
`meshplan.specs`, `meshplan.strategy` and `meshplan.cost`.
"""

from meshplan.errors import PlanError
from meshplan.estimator import Estimate, EstimateRequest, estimate
from meshplan.specs import load_gpu, load_model
from meshplan.strategy import Strategy

__all__ = ["Estimate", "EstimateRequest", "PlanError", "Strategy", "estimate", "load_gpu", "load_model"]
__version__ = "0.1.0"
