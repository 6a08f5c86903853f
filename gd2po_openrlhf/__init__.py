"""GD²PO for OpenRLHF: conflict-aware multi-reward advantage estimation.

    from gd2po_openrlhf import GD2POConfig, compute_advantages

The names are resolved on first use (PEP 562) because the installed ``gd2po_openrlhf.pth`` imports
``gd2po_openrlhf.integration.hook`` at every interpreter start: importing this package must not
import torch.
"""

__version__ = "0.1.0"
__all__ = ["GD2POConfig", "GD2POResult", "compute_advantages", "compute_rollout_advantages", "register"]


def __getattr__(name: str):
    if name == "GD2POConfig":
        from .config import GD2POConfig

        return GD2POConfig
    if name in ("GD2POResult", "compute_advantages", "compute_rollout_advantages"):
        from . import estimator

        return getattr(estimator, name)
    if name == "register":
        from .integration.hook import register

        return register
    raise AttributeError(f"module 'gd2po_openrlhf' has no attribute {name!r}")
