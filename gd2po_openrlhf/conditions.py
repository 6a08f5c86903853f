"""Conditioned rewards (``--gd2po.reward_condition KEY=GATE_KEY>=T`` or ``KEY=GATE_KEY<=T``).

A condition makes dimension KEY count only for the rollouts that pass its gate, on the raw rewards, before any
group normalisation (GDPO's conditioned length reward, which stops a policy from buying length or brevity with
wrong answers):

    r'_KEY = r_KEY · [r'_GATE ≥ T]        (or [r'_GATE ≤ T] with <=, e.g. a cost gated by a score)

Several conditions on one key must all hold. A gate that is itself conditioned is read after its own conditions
(r' on the right), so conditions apply in dependency order; a key gated on itself, or a cycle, is refused.

Standard library only (the launcher's parse-time check reads it); ``apply_conditions`` takes and returns torch
tensors through their methods, without importing torch here.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Sequence, Tuple

from .config import exact_number

SYNTAX = re.compile(r"^\s*([^=\s]+)\s*=\s*([^<>=\s]+)\s*(>=|<=)\s*(\S+)\s*$")


@dataclass(frozen=True)
class RewardCondition:
    """One ``KEY=GATE_KEY>=THRESHOLD`` (``operator`` ">=") or ``KEY=GATE_KEY<=THRESHOLD`` (``operator`` "<=")."""

    key: str
    gate_key: str
    operator: str
    threshold: float

    @classmethod
    def parse(cls, text: str) -> "RewardCondition":
        """Raises ValueError naming ``text`` and what is wrong with it."""
        match = SYNTAX.match(str(text))
        if match is None:
            raise ValueError(
                f"--gd2po.reward_condition {text!r}: expected KEY=GATE_KEY>=THRESHOLD or KEY=GATE_KEY<=THRESHOLD, "
                "e.g. length=correctness>=1"
            )
        key, gate_key, operator, threshold = match.groups()
        try:
            value = float(threshold)
        except ValueError:
            raise ValueError(f"--gd2po.reward_condition {text!r}: THRESHOLD {threshold!r} is not a number") from None
        if not math.isfinite(value):
            raise ValueError(f"--gd2po.reward_condition {text!r}: THRESHOLD must be finite")
        if key == gate_key:
            raise ValueError(f"--gd2po.reward_condition {text!r} gates reward key {key!r} on itself")
        return cls(key, gate_key, operator, value)

    def __str__(self) -> str:
        """The entry as ``parse`` reads it back (the threshold exact)."""
        return f"{self.key}={self.gate_key}{self.operator}{exact_number(self.threshold)}"


def ordered_conditions(texts: Sequence[str], reward_keys: Sequence[str]) -> Tuple[RewardCondition, ...]:
    """The parsed conditions in the order they apply: every condition on a gate key before any that reads it.

    Raises ValueError for a key or gate key that is not among ``reward_keys`` and for a cycle (naming it).
    """
    conditions = [RewardCondition.parse(text) for text in texts]
    for condition, text in zip(conditions, texts):
        for role, key in (("KEY", condition.key), ("GATE_KEY", condition.gate_key)):
            if key not in reward_keys:
                raise ValueError(
                    f"--gd2po.reward_condition {text!r}: {role} {key!r} is not one of the reward keys "
                    f"{list(reward_keys)}"
                )
    ordered, pending = [], list(conditions)
    while pending:  # a handful of conditions at parse time: a simple topological sort
        conditioned = {c.key for c in pending}
        ready = [c for c in pending if c.gate_key not in conditioned]
        if not ready:
            raise ValueError(f"--gd2po.reward_condition has a cycle: {_cycle(pending)}")
        ordered += ready
        pending = [c for c in pending if c not in ready]
    return tuple(ordered)


def _cycle(conditions) -> str:
    """One cycle among ``conditions`` (each of which waits for another), as KEY → GATE → ... → KEY."""
    gates = {c.key: c.gate_key for c in conditions}
    path = [conditions[0].key]
    while path.count(path[-1]) < 2:
        path.append(gates[path[-1]])
    start = path.index(path[-1])
    return " → ".join(path[start:]) + " (each key is gated on the next)"


def apply_conditions(rewards, reward_keys: Sequence[str], conditions: Sequence[RewardCondition]):
    """``(conditioned rewards [B, K], failed [B, K])``: the rewards with each condition's key zeroed where its gate
    fails, and for each reward key the rollouts where a condition on it failed (all False for an unconditioned key).

    ``rewards`` is a float tensor [B, K] with columns in ``reward_keys`` order; it is not modified. ``conditions``
    must be in the order ``ordered_conditions`` returns.
    """
    conditioned = rewards.clone()
    failed = rewards.new_zeros(rewards.shape, dtype=bool)
    for condition in conditions:  # one vectorised pass per condition, not per rollout
        gate = conditioned[:, reward_keys.index(condition.gate_key)]
        passed = gate >= condition.threshold if condition.operator == ">=" else gate <= condition.threshold
        column = reward_keys.index(condition.key)
        failed[:, column] |= ~passed
        conditioned[:, column] = conditioned[:, column] * passed
    return conditioned, failed
