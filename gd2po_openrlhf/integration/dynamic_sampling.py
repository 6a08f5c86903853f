"""Conflict-aware dynamic sampling (``--gd2po.dynamic_sampling``), run inside OpenRLHF's dynamic-filtering loop.

OpenRLHF's ``SamplesGenerator._generate_vllm`` turns each prompt's rollouts into Experiences together, as they come
back from the rollout actors (one list comprehension of ``_process_response_into_experience``). With dynamic
filtering on, it then drops the group unless the mean of its ``Experience.scores`` (OpenRLHF's "binary score for
dynamic sampling") lies strictly inside ``--algo.dynamic_filtering_range``, and dispatches a fresh prompt in its
place. The plugin runs that loop unchanged:

1. ``_generate_vllm`` (here, replacing ``SamplesGenerator``'s) runs it with filtering on for a training batch,
   drawing at most ⌈``--gd2po.dynamic_sampling_max_prompts_factor`` × the batch's prompts⌉ prompts;
2. ``remote_rewards._process_response_into_experience`` hands each rollout to the :class:`GroupTally`, which
   judges a group at its last rollout (:func:`judge_group`, i.e. ``estimator.group_verdicts``) and writes the
   verdict into the group's scores (:func:`verdict_scores`): spread evenly around the range's midpoint if it
   passes, its lower bound if not. Both OpenRLHF's range test (``low < mean < high``) and a test of the group's
   score spread (``std > threshold``, OpenRLHF PR #1272) then keep exactly the groups that passed;
3. the batch's :class:`SamplingCounts` ride on its first rollout to the experience maker, which logs them
   (:func:`sampling_metrics`).
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
from openrlhf.utils.logging_utils import init_logger

from ..conditions import apply_conditions
from ..estimator import group_verdicts
from ..reward_pipeline import estimator_inputs, invalid_rewards, stack_rewards
from .cluster_shape import step_shape
from .openrlhf_patches import UPSTREAM
from .rollout_selection import FILLER_ATTRIBUTE
from .settings import RunSettings, generator_settings

logger = init_logger(__name__)

VERDICTS = ("passed", "rejected_constant", "rejected_filtered", "rejected_bad_reward")
# The Experience attribute that carries a batch's SamplingCounts from the samples generator to the experience maker.
COUNTS_ATTRIBUTE = "gd2po_sampling_counts"


@dataclass
class SamplingCounts:
    """Prompt groups judged while one batch was sampled, by verdict, and what they cost."""

    prompts_consumed: int = 0
    passed: int = 0
    rejected_constant: int = 0  # every weighted dimension constant within the group
    rejected_filtered: int = 0  # varying, but fewer than min_kept rollouts survive with a non-zero score
    rejected_bad_reward: int = 0  # a reward arrived bad (--gd2po.on_bad_reward drop_group)
    generated_rollouts: int = 0
    filler_rollouts: int = 0  # rejected groups' rollouts topping a short batch up to a balanced size (advantage 0)

    def __add__(self, other: "SamplingCounts") -> "SamplingCounts":
        return SamplingCounts(
            *(getattr(self, f.name) + getattr(other, f.name) for f in dataclasses.fields(SamplingCounts))
        )

    @property
    def judged(self) -> int:
        return self.passed + self.rejected_constant + self.rejected_filtered + self.rejected_bad_reward


def judge_group(group: List, settings: RunSettings) -> str:
    """The verdict (one of ``VERDICTS``) on one prompt's rollouts, Experiences with ``info["reward/<key>"]``."""
    rewards = stack_rewards([e.info for e in group], settings.reward_keys)
    if bool(invalid_rewards(rewards).any()):
        return "rejected_bad_reward"
    lengths = torch.cat([e.action_mask.sum(dim=-1) for e in group])
    conditioned, _ = apply_conditions(rewards, settings.reward_keys, settings.conditions)
    estimator_rewards, config = estimator_inputs(conditioned, settings.gd2po_config, settings.sum_rewards)
    verdict = group_verdicts(
        estimator_rewards,
        torch.zeros(len(rewards), dtype=torch.int64),
        lengths,
        config,
        settings.dynamic_sampling_min_kept,
    )
    if bool(verdict.passed[0]):
        return "passed"
    return "rejected_constant" if bool(verdict.constant[0]) else "rejected_filtered"


def group_test(settings: RunSettings) -> str:
    """The group test in words, with the settings it runs on (logged with every batch and rejection)."""
    config = settings.gd2po_config
    tau = f" at τ = {config.snr_threshold:g}" if config.filter == "snr" else ""
    return (
        f"at least {settings.dynamic_sampling_min_kept} of {settings.n_samples_per_prompt} rollouts survive the "
        f"{config.filter} filter{tau} with a non-zero score"
    )


def rejection_reason(verdict: str, settings: RunSettings) -> str:
    return {
        "rejected_constant": "every reward dimension is constant within the group",
        "rejected_filtered": f"not {group_test(settings)}",
        "rejected_bad_reward": "a reward is NaN, infinite or beyond the plugin's bound",
    }[verdict]


def verdict_scores(passed: bool, n_samples: int, score_range: Tuple[float, float]) -> torch.Tensor:
    """The ``[n_samples]`` scores that carry a group's verdict through OpenRLHF's dynamic filter.

    Passed: evenly spaced over [m - (high - low)/4, m + (high - low)/4], m the midpoint, so the mean is m, strictly
    inside the range, and the spread is a quarter of the range's width (std > 0, any small threshold); rejected:
    every score ``low`` (rounded down to float32), so the mean fails ``low < mean`` and the std is 0. A filter on
    either keeps the same groups.
    """
    low, high = score_range
    if not passed:
        # float32 like OpenRLHF's scores, rounded down: float32(0.2) > 0.2 would pass ``low < mean``
        score = torch.tensor(float(low), dtype=torch.float32)
        if float(score) > low:
            score = torch.nextafter(score, torch.tensor(-math.inf))
        return score.expand(n_samples).clone()
    middle, half_width = (low + high) / 2, (high - low) / 4
    return torch.linspace(middle - half_width, middle + half_width, n_samples)


class GroupTally:
    """Collects the rollouts of each prompt as OpenRLHF processes them, judges each complete group and writes the
    verdict into its ``scores`` for OpenRLHF's range test (``score_range``: ``--algo.dynamic_filtering_range``)."""

    def __init__(self, settings: RunSettings, n_samples: int, score_range: Tuple[float, float], max_fillers: int = 0):
        self.settings = settings
        self.n_samples = n_samples
        self.score_range = score_range
        self.counts = SamplingCounts()
        self.pending: List = []
        # Rejected groups' rollouts, at most max_fillers (a full step): the fillers of a batch that ends short.
        self.max_fillers = max_fillers
        self.rejected: List = []

    def add(self, experience) -> Optional[str]:
        """Take one rollout's Experience; returns the group's verdict at its last rollout, None before."""
        self.pending.append(experience)
        if len(self.pending) < self.n_samples:
            return None
        group, self.pending = self.pending, []
        prompts = {repr(e.prompts[0]) for e in group}
        if len(prompts) > 1:
            raise RuntimeError(
                f"--gd2po.dynamic_sampling judges {self.n_samples} consecutive rollouts as one prompt's group, but "
                f"they belong to {len(prompts)} prompts: this OpenRLHF no longer processes a prompt's rollouts "
                "together in SamplesGenerator._generate_vllm (see gd2po_openrlhf/integration/dynamic_sampling.py)"
            )
        verdict = judge_group(group, self.settings)
        if verdict != "passed":
            # OpenRLHF logs "Filtered out: avg_reward=…, scores=[…]" for this group next: those are the verdict's
            # encoding, not rewards, so say what the test found first.
            logger.info(
                f"--gd2po.dynamic_sampling rejected the prompt group of {group[0].prompts[0]!r:.80}: "
                f"{rejection_reason(verdict, self.settings)}. OpenRLHF's 'Filtered out' line for it shows this "
                f"verdict as scores ({self.score_range[0]:.2f} = rejected), not rewards"
            )
        setattr(self.counts, verdict, getattr(self.counts, verdict) + 1)
        self.counts.generated_rollouts += len(group)
        for experience, score in zip(group, verdict_scores(verdict == "passed", len(group), self.score_range)):
            experience.scores = score.reshape(1)
        if verdict != "passed":
            self.rejected.extend(group[: self.max_fillers - len(self.rejected)])
        return verdict


def sampling_metrics(counts: SamplingCounts, trained_rollouts: int) -> Dict[str, float]:
    """``gd2po/dynamic_sampling/*`` of one step. ``trained_rollouts``: the step's rollouts the filter kept.

    pass_rate = passed groups / judged groups; generated_per_trained_rollout = generated rollouts (passed and
    rejected groups) / ``trained_rollouts``: the generation one trained rollout cost.
    """
    prefix = "gd2po/dynamic_sampling/"
    metrics = {prefix + name: float(getattr(counts, name)) for name in ("prompts_consumed",) + VERDICTS[1:]}
    metrics[prefix + "pass_rate"] = counts.passed / max(counts.judged, 1)
    metrics[prefix + "generated_rollouts"] = float(counts.generated_rollouts)
    metrics[prefix + "filler_rollouts"] = float(counts.filler_rollouts)
    metrics[prefix + "generated_per_trained_rollout"] = counts.generated_rollouts / max(trained_rollouts, 1)
    return metrics


# ---- trainer process (PPOTrainer / GenerateSamplesActor): openrlhf/trainer/ppo_utils/samples_generator.py


def _generate_vllm(self, dataloader_iter, num_prompts: int, dynamic_filtering, **generate_kwargs):
    """Mirrors ``SamplesGenerator._generate_vllm`` (one batch of prompt groups from the rollout actors): with
    --gd2po.dynamic_sampling, a training batch runs OpenRLHF's own loop with dynamic filtering on, each group judged
    by a ``dynamic_sampling.GroupTally`` and each rejected one replaced by a fresh prompt, drawing at most
    ⌈factor × ``num_prompts``⌉ prompts. At that limit the groups that passed train, with a warning; the dataloader
    is reported exhausted only when it is. The batch's counts ride on its first rollout (``COUNTS_ATTRIBUTE``)."""
    upstream = UPSTREAM["SamplesGenerator._generate_vllm"]
    settings = generator_settings(self)
    # generate_samples passes its training iterator; generate_eval_samples another one (never resampled).
    training = dataloader_iter is getattr(self, "_dataloader_iter", None)
    if settings is None or not settings.dynamic_sampling or not training:
        return upstream(self, dataloader_iter, num_prompts, dynamic_filtering, **generate_kwargs)
    max_prompts = math.ceil(settings.dynamic_sampling_max_prompts_factor * num_prompts)
    n_samples = generate_kwargs.get("n_samples_per_prompt", self.args.rollout.n_samples_per_prompt)
    shape = step_shape(self.args, settings)
    tally = self.gd2po_group_tally = GroupTally(
        settings, n_samples, self.args.algo.dynamic_filtering_range, max_fillers=shape.full
    )
    try:
        experiences, consumed, exhausted = upstream(
            self, itertools.islice(dataloader_iter, max_prompts), num_prompts, True, **generate_kwargs
        )
    finally:
        self.gd2po_group_tally = None
    counts = tally.counts
    counts.prompts_consumed = consumed
    at_limit = consumed >= max_prompts
    if at_limit and counts.passed < num_prompts:
        logger.warning(
            f"--gd2po.dynamic_sampling drew its limit of {max_prompts} prompts "
            f"(--gd2po.dynamic_sampling_max_prompts_factor {settings.dynamic_sampling_max_prompts_factor:g} × "
            f"{num_prompts}) and {counts.passed} of {num_prompts} prompt groups passed (pass rate "
            f"{counts.passed / max(counts.judged, 1):.1%}: {counts.rejected_constant} constant, "
            f"{counts.rejected_filtered} filtered, {counts.rejected_bad_reward} with a bad reward): training on the "
            "groups that passed, topped up with rejected rollouts at advantage 0 (their gradient is lost): raise the "
            "factor if this recurs"
        )
    logger.info(
        f"--gd2po.dynamic_sampling: {counts.passed} of {counts.judged} prompt groups passed ({group_test(settings)}); "
        f"rejected: {counts.rejected_constant} constant, {counts.rejected_filtered} filtered, "
        f"{counts.rejected_bad_reward} with a bad reward"
    )
    # With several data-parallel ranks, a short batch goes to OpenRLHF topped up to a size that its split spreads
    # evenly over every group's ranks (cluster_shape): rejected groups' rollouts first (generated anyway), copies of
    # any rollout if those run out (the last batch of an epoch). The experience maker never estimates them.
    balanced = shape.balanced_size(len(experiences))
    if experiences and balanced != len(experiences) and shape.spread:
        pool = tally.rejected + experiences
        fillers = [
            copy.copy(rollout) for rollout in itertools.islice(itertools.cycle(pool), balanced - len(experiences))
        ]
        for filler in fillers:
            filler.info = dict(filler.info)
            setattr(filler, FILLER_ATTRIBUTE, True)
        counts.filler_rollouts = len(fillers)
        logger.info(
            f"--gd2po.dynamic_sampling: {len(experiences)} rollouts passed; {len(fillers)} rollouts of rejected "
            f"groups fill the batch to {balanced}, which OpenRLHF spreads evenly over the data-parallel ranks (they "
            "train with advantage 0)"
        )
        experiences = experiences + fillers
    if experiences:
        setattr(experiences[0], COUNTS_ATTRIBUTE, counts)
    else:
        logger.warning(
            f"--gd2po.dynamic_sampling: none of {counts.judged} prompt groups passed; this batch trains nothing"
        )
    # islice ends at the limit as if the dataloader had: OpenRLHF would end the epoch there.
    return experiences, consumed, exhausted and not at_limit
