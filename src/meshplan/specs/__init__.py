"""What is planned for: models, GPUs, clusters and workloads."""

from meshplan.specs.catalog import gpu_catalog, load_gpu, load_model, model_catalog
from meshplan.specs.cluster import ClusterSpec, make_cluster
from meshplan.specs.gpu import GpuSpec
from meshplan.specs.model import MlaSpec, ModelSpec
from meshplan.specs.workload import TrainWorkload

__all__ = [
    "ClusterSpec",
    "GpuSpec",
    "MlaSpec",
    "ModelSpec",
    "TrainWorkload",
    "gpu_catalog",
    "load_gpu",
    "load_model",
    "make_cluster",
    "model_catalog",
]
