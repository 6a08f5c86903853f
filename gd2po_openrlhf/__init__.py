"""GD²PO for OpenRLHF: conflict-aware multi-reward advantage estimation.

The estimator core is pure torch and importable without openrlhf:

    from gd2po_openrlhf import GD2POConfig, compute_advantages
"""

from .config import GD2POConfig
from .estimator import GD2POResult, compute_advantages

__all__ = ["GD2POConfig", "GD2POResult", "compute_advantages"]
__version__ = "0.1.0"
