"""Execute plans with PyTorch's own distributed stack (an optional extra: `pip install 'meshplan[run]'`).

Nothing here is imported by the planner; `torch` is imported only when a run starts.
"""

from __future__ import annotations

from meshplan.errors import PlanError


def require_torch() -> None:
    """A clear error when the optional extra is missing."""
    try:
        import torch  # noqa: F401
    except ImportError:
        raise PlanError("meshplan run needs PyTorch: install the extra with pip install 'meshplan[run]'") from None
