"""One step's rewards on their way to the estimator, in the same stages for every caller:

    stack      info["reward/<key>"] of each rollout → rewards [B, K]              ``stack_rewards``
    validate   NaN, ±inf and |r| > MAX_ABS_REWARD found                            ``invalid_rewards``
    condition  --gd2po.reward_condition zeroes a key where its gate fails         ``conditions.apply_conditions``
    weights    the step's: fixed, scheduled, or ±λ of a budget                    ``RunSettings.step_weights``
    estimate   per dimension, or GRPO on the weighted sum (--gd2po.sum_rewards)    ``estimate``

The experience maker runs them on a step's batch (between condition and estimate it takes λ's dual-ascent step on the
conditioned batch), dynamic sampling on one prompt group as it arrives (estimating with ``group_verdicts``), the dry
run's reward check on its sample rollouts, and the CPU demo through the experience maker. torch and the core only.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Dict, Mapping, Sequence, Tuple

import torch

from .config import GD2POConfig
from .estimator import GD2POResult, compute_rollout_advantages
from .rewards import MAX_ABS_REWARD


def stack_rewards(infos: Sequence[Mapping[str, torch.Tensor]], keys: Sequence[str]) -> torch.Tensor:
    """The rewards [B, K] (float64): column k holds ``info["reward/<keys[k]>"]`` of every info in order, each a
    tensor of its micro-batch's rollouts. One cat per key."""
    columns = [torch.cat([info[f"reward/{key}"].reshape(-1) for info in infos]) for key in keys]
    return torch.stack(columns, dim=1).double()


def invalid_rewards(rewards: torch.Tensor) -> torch.Tensor:
    """[B, K] bool: the rewards the estimator refuses (NaN, ±inf, |r| > MAX_ABS_REWARD)."""
    return ~(torch.isfinite(rewards) & (rewards.abs() <= MAX_ABS_REWARD))


def estimator_inputs(
    rewards: torch.Tensor, config: GD2POConfig, sum_rewards: bool
) -> Tuple[torch.Tensor, GD2POConfig]:
    """The reward matrix [B, K'] and configuration the estimator runs on: the (conditioned) rewards [B, K] with
    ``config``, or with ``sum_rewards`` (the GRPO baseline) their weighted sum Σ_k w_k r_k as the one dimension."""
    if not sum_rewards:
        return rewards, config
    weights = rewards.new_tensor(config.weights if config.weights is not None else [1.0] * rewards.shape[1])
    weighted_sum = (rewards * weights).sum(dim=1, keepdim=True)
    return weighted_sum, dataclasses.replace(config, weights=(1.0,), reward_keys=("weighted_sum",), reference_key=None)


@dataclass(frozen=True)
class StepEstimate:
    """``estimate``'s output: the estimator's result on the step's rollouts and the step's metrics (unprefixed)."""

    result: GD2POResult
    metrics: Dict[str, float]


def estimate(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    response_lengths: torch.Tensor,
    config: GD2POConfig,
    sum_rewards: bool,
) -> StepEstimate:
    """The estimator on conditioned rewards [B, K] (``config`` holds the step's weights and keys), with its metrics
    and, for the GRPO baseline on several keys, the conflict and mass metrics of the per-dimension (GDPO) advantages
    of the same rewards, so that every multi-reward run logs them."""
    inputs, inputs_config = estimator_inputs(rewards, config, sum_rewards)
    result = compute_rollout_advantages(inputs, group_ids, response_lengths, inputs_config)
    metrics = dict(result.metrics)
    if sum_rewards and rewards.shape[1] > 1:
        per_dimension = compute_rollout_advantages(
            rewards, group_ids, response_lengths, dataclasses.replace(config, filter="none")
        ).metrics
        metrics.update(
            {
                name: value
                for name, value in per_dimension.items()
                if name in ("conflict_ratio", "conflict_reference_agreement")
                or name.startswith("pair_")
                or name.endswith("_mass_ratio")
            }
        )
    return StepEstimate(result=result, metrics=metrics)
