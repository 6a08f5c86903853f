"""GD²PO configuration: one validated dataclass shared by the estimator, the CLI and the demo.

No torch or openrlhf import here: the CLI extension reads these defaults at argument-parsing time.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields
from typing import Optional, Sequence, Tuple

FILTERS = ("none", "hard", "snr")
MAX_ABS_WEIGHT = 1e6  # keeps weighted advantages far from float32 overflow


def exact_number(value: float) -> str:
    """``value`` as its shortest text that reads back as the same float (``1`` for 1.0, ``0.1`` for 0.1): how
    parsed entries (conditions, schedules) are written back, e.g. into a checkpoint, without losing digits."""
    short = f"{value:g}"
    return short if float(short) == value else repr(float(value))


@dataclass(frozen=True)
class GD2POConfig:
    """How per-dimension rewards become token-level advantages.

    Attributes:
        filter: "none" keeps every rollout (GDPO); "hard" drops rollouts whose weighted per-dimension
            advantages have mixed signs; "snr" drops a mixed-sign rollout only when its signal-to-noise
            ratio |Σ_k A'_k| / (Σ_k |A'_k| + ε/L) is below ``snr_threshold``.
        snr_threshold: τ in [0, 1]. τ = 0 filters nothing, τ = 1 equals "hard". The GD²PO authors use 0.8.
        snr_eps: ε of the SNR ratio, ≥ 0 (authors: 1e-8 for tool calling, 1e-6 for safe alignment).
        norm_by_std: divide by the group's unbiased std (+1e-6) after subtracting the group mean.
        whiten: whiten the token advantages over the kept response tokens of the whole batch.
        reweight_queries: scale each prompt's advantages by κ_g, the share of its rollouts that were kept.
        weights: one weight per reward dimension (None = all 1). A negative weight turns a cost into a reward.
        reward_keys: optional names of the dimensions, in column order; used to name per-dimension metrics
            and errors.
        what_if_filter: with ``filter="none"``, a filter ("hard" or "snr", with ``snr_threshold``) that is not applied
            but whose removed mass is reported as ``filtered_mass_ratio``: what GD²PO would do to a GDPO run.
        reference_key: optional name of a dimension of weight 0 (a gold or held-out verifier) against which the
            conflicting rollouts' summed advantage is compared (metric ``conflict_reference_agreement``).
    """

    filter: str = "snr"
    snr_threshold: float = 0.8
    snr_eps: float = 1e-8
    norm_by_std: bool = True
    whiten: bool = True
    reweight_queries: bool = True
    weights: Optional[Tuple[float, ...]] = None
    reward_keys: Optional[Tuple[str, ...]] = field(default=None)
    what_if_filter: Optional[str] = None
    reference_key: Optional[str] = None

    def __post_init__(self) -> None:
        if self.filter not in FILTERS:
            raise ValueError(f"GD2POConfig.filter must be one of {FILTERS}, got {self.filter!r}")
        for name in ("snr_threshold", "snr_eps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"GD2POConfig.{name} must be a finite number, got {value!r}")
        if not 0.0 <= self.snr_threshold <= 1.0:
            raise ValueError(f"GD2POConfig.snr_threshold (τ) must lie in [0, 1], got {self.snr_threshold}")
        if self.snr_eps < 0:
            raise ValueError(f"GD2POConfig.snr_eps must be >= 0, got {self.snr_eps}")
        if self.weights is not None:
            weights = _as_tuple(self.weights, "weights")
            for k, w in enumerate(weights):
                if isinstance(w, bool) or not isinstance(w, (int, float)) or not abs(w) <= MAX_ABS_WEIGHT:
                    raise ValueError(
                        f"GD2POConfig.weights[{k}] must be a number with |w| <= {MAX_ABS_WEIGHT:g}, got {w!r}"
                    )
            object.__setattr__(self, "weights", tuple(float(w) for w in weights))
        if self.reward_keys is not None:
            keys = _as_tuple(self.reward_keys, "reward_keys")
            bad = [k for k in keys if not isinstance(k, str) or not k]
            if bad:
                raise ValueError(f"GD2POConfig.reward_keys must be non-empty strings, got {bad!r}")
            duplicates = sorted({k for k in keys if keys.count(k) > 1})
            if duplicates:
                raise ValueError(f"GD2POConfig.reward_keys has duplicate names: {duplicates}")
            object.__setattr__(self, "reward_keys", keys)
            if self.weights is not None and len(self.weights) != len(keys):
                raise ValueError(
                    f"GD2POConfig has {len(self.weights)} weights {list(self.weights)} "
                    f"for {len(keys)} reward keys {list(keys)}"
                )
        if self.what_if_filter is not None and (self.what_if_filter not in ("hard", "snr") or self.filter != "none"):
            raise ValueError(
                f"GD2POConfig.what_if_filter must be 'hard' or 'snr' with filter 'none', got {self.what_if_filter!r} "
                f"with filter {self.filter!r}"
            )
        if self.reference_key is not None:
            if self.reward_keys is None or self.reference_key not in self.reward_keys:
                raise ValueError(
                    f"GD2POConfig.reference_key {self.reference_key!r} is not one of the reward keys "
                    f"{self.reward_keys}"
                )
            index = self.reward_keys.index(self.reference_key)
            if self.weights is None or self.weights[index] != 0:
                raise ValueError(
                    f"GD2POConfig.reference_key {self.reference_key!r} must have the weight 0 (it is logged, never "
                    "trained)"
                )

    @classmethod
    def from_json(cls, path: str) -> "GD2POConfig":
        """Load a JSON file of these fields (e.g. ``{"filter": "snr", "snr_threshold": 0.8}``); unknown fields are
        an error."""
        with open(path) as handle:
            values = json.load(handle)
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"{path}: unknown GD2POConfig fields {unknown}")
        return cls(**values)

    @property
    def effective_snr_threshold(self) -> float:
        """The τ the filter really applies: 0 for "none", 1 for "hard" (same decisions), τ for "snr"."""
        return {"none": 0.0, "hard": 1.0, "snr": self.snr_threshold}[self.filter]


def _as_tuple(value: Sequence, name: str) -> tuple:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
        raise ValueError(f"GD2POConfig.{name} must be a sequence, got {value!r}")
    return tuple(value)
