"""Reward weights that move during a run: a Lagrangian cost budget and per-step weight schedules.

Standard library only (the launcher's parse-time check reads it). ``integration/experience_maker.py`` calls both
once per step, before the estimator, and hands the estimator the step's weights: the conflict test, the SNR ratio
and κ see them as they see fixed weights.

Budget D on the batch mean c̄_t of one dimension (projected dual ascent, as PPO-Lagrangian and Safe RLHF do):

    violation_t = s · (c̄_t − D)    s = +1 for a cost (user weight < 0: D is a ceiling, c̄ ≤ D)
                                    s = −1 for a score (user weight > 0: D is a floor, c̄ ≥ D)
    λ_t = clip(λ_{t−1} + η · violation_t, 0, λ_max)             (dual ascent)
    λ_t = min(λ_{t−1} · exp(η · violation_t), λ_max)            (in log space: log λ moves by η · violation;
                                                                 λ > 0 always, floored at the smallest normal float)
    w_t = −s · λ_t                                              (−λ for a cost, +λ for a safety score)

The multiplier scales the group-normalised advantage of the dimension (A = Σ_others w_k A_k − λ A_cost), not the
raw reward, which is what Constrained GRPO (arXiv 2602.05863) shows group normalisation needs.

Schedule of one dimension's weight over global steps t = 0, 1, ... (t = steps already trained):

    w(t) = START + (END − START) · φ(min(t / STEPS, 1))
    φ(x) = x (linear),  (1 − cos πx) / 2 (cosine),  [x ≥ 1] (step: START before STEPS, END from STEPS on)
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Tuple

from .config import exact_number

SCHEDULE_SHAPES = ("linear", "cosine", "step")


@dataclass(frozen=True)
class WeightSchedule:
    """One ``--gd2po.reward_weight_schedule KEY=START:END:STEPS[:SHAPE]``."""

    key: str
    start: float
    end: float
    steps: int
    shape: str = "linear"

    @classmethod
    def parse(cls, text: str) -> "WeightSchedule":
        """``KEY=START:END:STEPS[:linear|cosine|step]``; raises ValueError naming ``text`` and the bad part."""
        key, equals, spec = str(text).partition("=")
        parts = spec.split(":")
        if not equals or not key.strip() or len(parts) not in (3, 4):
            raise ValueError(
                f"--gd2po.reward_weight_schedule {text!r}: expected KEY=START:END:STEPS[:linear|cosine|step], "
                "e.g. length=0:1:100:cosine"
            )
        try:
            start, end = float(parts[0]), float(parts[1])
        except ValueError:
            raise ValueError(f"--gd2po.reward_weight_schedule {text!r}: START and END must be numbers") from None
        if not (math.isfinite(start) and math.isfinite(end)):
            raise ValueError(f"--gd2po.reward_weight_schedule {text!r}: START and END must be finite")
        if not parts[2].strip().isdigit() or int(parts[2]) < 1:
            raise ValueError(f"--gd2po.reward_weight_schedule {text!r}: STEPS must be an integer >= 1")
        shape = parts[3].strip() if len(parts) == 4 else "linear"
        if shape not in SCHEDULE_SHAPES:
            raise ValueError(f"--gd2po.reward_weight_schedule {text!r}: the shape must be one of {SCHEDULE_SHAPES}")
        return cls(key.strip(), start, end, int(parts[2]), shape)

    def __str__(self) -> str:
        """The entry as ``parse`` reads it back (the weights exact; a linear shape left out)."""
        shape = "" if self.shape == "linear" else f":{self.shape}"
        return f"{self.key}={exact_number(self.start)}:{exact_number(self.end)}:{self.steps}{shape}"

    def weight_at(self, step: int) -> float:
        """The weight at global step ``step`` (the number of steps already trained; formula in the module doc)."""
        progress = min(step / self.steps, 1.0)
        if self.shape == "linear":
            phase = progress
        elif self.shape == "cosine":
            phase = (1.0 - math.cos(math.pi * progress)) / 2.0
        else:
            phase = float(progress >= 1.0)
        return self.start + (self.end - self.start) * phase


def dual_ascent(
    multiplier: float,
    batch_mean: float,
    budget: float,
    is_cost: bool,
    learning_rate: float,
    max_multiplier: float,
    log_space: bool = False,
) -> Tuple[float, float]:
    """One projected dual-ascent step of λ on a batch mean (formulas in the module doc).

    Returns ``(λ_t, violation_t)``; the violation is positive when the batch broke the budget (a cost above its
    ceiling, a score below its floor).
    """
    violation = (batch_mean - budget) if is_cost else (budget - batch_mean)
    if log_space:
        # exp overflows past ~709: the clip at λ_max is what a huge step means anyway. A huge step down would
        # underflow to 0, where λ·exp(·) stays for good: λ is floored at the smallest normal float instead.
        step = learning_rate * violation
        updated = max_multiplier if step > 700 else max(multiplier * math.exp(max(step, -700.0)), sys.float_info.min)
    else:
        updated = multiplier + learning_rate * violation
    return min(max(updated, 0.0), max_multiplier), violation
