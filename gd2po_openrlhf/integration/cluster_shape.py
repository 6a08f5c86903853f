"""How OpenRLHF spreads one step's rollouts over data-parallel ranks, and the step sizes that keep every rank busy.

The trainer hands each Ray actor group the step's micro-batches (``--rollout.micro_batch_size`` rollouts each) with
``RayActorGroup.async_run_method_batch`` (``trainer/ray/launcher.py`` 346-371): rank r of the R effective ranks
(GPUs / (ring attention × tensor parallel)) gets micro-batches [r·c, (r+1)·c) with c = ⌈M / R⌉, so a count M that
R does not divide leaves the last ranks fewer, or none ("Insufficient batch size" when M < R). A policy rank with
fewer rollouts leaves ``ppo_train`` early while the others wait in all_reduce (a hang); under ZeRO-3 every forward is
collective too, so each reward, cost and reference group needs equal shares as well.

A step of N rollouts is balanced when N is the full step (checked at parse time, ``check_cluster_shape``) or a
multiple of ``StepShape.unit`` = lcm(--train.batch_size, --rollout.micro_batch_size × R of the policy and of every
ZeRO-3 group), at least one micro-batch per rank of every group: then every rank of every group gets the same number
of whole micro-batches and the policy's ranks fill whole optimiser steps. Whatever shortens a step (--gd2po.
drop_filtered, dynamic sampling stopping at its prompt budget, dropped bad-reward groups) asks
``StepShape.balanced_size`` for its size and tops the rollouts up with zero-advantage fillers.

Only the standard library: this runs in the driver at parse time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Tuple

from .settings import RunSettings, _arg


def openrlhf_shares(num_items: int, ranks: int) -> List[int]:
    """Items per rank as ``RayActorGroup.async_run_method_batch`` hands out ``num_items`` over ``ranks`` effective
    ranks: chunks of ⌈num_items / ranks⌉ in rank order, the last ranks what is left (possibly nothing)."""
    chunk = -(-num_items // ranks)
    return [max(0, min(chunk, num_items - rank * chunk)) for rank in range(ranks)]


@dataclass(frozen=True)
class RankGroup:
    """One Ray actor group that receives a step's micro-batches: the policy (trains on them) or a forward-only group
    (reference, reward and cost models)."""

    name: str  # as the refusals name it: "the policy (--actor.num_nodes × --actor.num_gpus_per_node)"
    gpus: int
    duplicates: int  # ring attention × tensor parallel: ranks sharing one chunk
    zero3: bool  # ZeRO-3: every forward is collective over the group's ranks

    @property
    def ranks(self) -> int:
        return self.gpus // self.duplicates


@dataclass(frozen=True)
class StepShape:
    """The step sizes, in rollouts, that OpenRLHF spreads evenly over every group's ranks."""

    full: int  # --rollout.batch_size × --rollout.n_samples_per_prompt
    unit: int  # lcm(--train.batch_size, micro-batch × ranks of the policy and of each ZeRO-3 group, if > 1)
    minimum: int  # the smallest multiple of unit with a micro-batch for every rank of every group
    spread: bool  # some group has several data-parallel ranks (with one rank each, any step size is balanced)

    def balanced_size(self, wanted: int) -> int:
        """The smallest balanced step of at least ``wanted`` rollouts (at least ``minimum``), or the full step when
        that is smaller: ``min(full, max(minimum, ⌈wanted / unit⌉ · unit))``."""
        return min(self.full, max(self.minimum, math.ceil(wanted / self.unit) * self.unit))

    @property
    def can_shorten(self) -> bool:
        return self.minimum < self.full


def rank_groups(args, settings: RunSettings) -> List[RankGroup]:
    """The policy, the reference (when KL is on) and every reward/cost model group, with their sizes."""
    duplicates = _arg(args, "ds.ring_attn_size", 1) * _arg(args, "ds.tensor_parallel_size", 1)
    zero3 = _arg(args, "ds.zero_stage", 2) == 3

    def sized(prefix: str) -> int:
        return _arg(args, f"{prefix}.num_nodes", 1) * _arg(args, f"{prefix}.num_gpus_per_node", 1)

    groups = [
        RankGroup("the policy (--actor.num_nodes × --actor.num_gpus_per_node)", sized("actor"), duplicates, zero3)
    ]
    if (_arg(args, "algo.kl.init_coef", 0.0) or 0) > 0:
        groups.append(
            RankGroup("the reference (--ref.num_nodes × --ref.num_gpus_per_node)", sized("ref"), duplicates, zero3)
        )
    for group in settings.model_groups:
        where = f"{group.flag} {group.key}=…" if group.flag == "--gd2po.reward_model" else group.flag
        groups.append(
            RankGroup(f"the model group of reward key {group.key!r} ({where})", group.gpus, duplicates, zero3)
        )
    return groups


def step_shape(args, settings: RunSettings) -> StepShape:
    """The run's ``StepShape`` from OpenRLHF's arguments."""
    micro_batch = _arg(args, "rollout.micro_batch_size", 1)
    full = _arg(args, "rollout.batch_size", 1) * settings.n_samples_per_prompt
    groups = rank_groups(args, settings)
    # Groups whose ranks must get equal shares: the policy (training) and ZeRO-3 groups (collective forwards), when
    # they have more than one rank; every group needs a micro-batch per rank.
    balanced = [group for i, group in enumerate(groups) if (i == 0 or group.zero3) and group.ranks > 1]
    unit = math.lcm(_arg(args, "train.batch_size", 1), *(micro_batch * group.ranks for group in balanced))
    every_rank_fed = max(micro_batch * max(group.ranks, 1) for group in groups)
    return StepShape(
        full=full,
        unit=unit,
        minimum=math.ceil(every_rank_fed / unit) * unit,
        spread=any(group.ranks > 1 for group in groups),
    )


def step_shares(args, groups: List[RankGroup], num_rollouts: int) -> List[Tuple[RankGroup, List[int]]]:
    """Micro-batches per rank of each group for a step of ``num_rollouts`` rollouts, as OpenRLHF splits them."""
    micro_batches = -(-num_rollouts // _arg(args, "rollout.micro_batch_size", 1))
    return [(group, openrlhf_shares(micro_batches, max(group.ranks, 1))) for group in groups]


def check_cluster_shape(args, settings: RunSettings) -> StepShape:
    """Refuses, naming the flags, group sizes and batch sizes that would stop a gd2po/gdpo run inside a Ray actor:

    - a group whose GPUs are not a multiple of ring attention × tensor parallel (no data-parallel rank, or a partial
      one), or whose DeepSpeed batch check fails (--train.batch_size × ring × TP must be a multiple of
      --train.micro_batch_size × its GPUs: DeepSpeed checks this for every group when it loads the model);
    - a full step that leaves a rank of some group without a micro-batch, ZeRO-3 ranks with different numbers of
      forwards, or policy ranks with different numbers of training micro-steps.

    Returns the run's ``StepShape``.
    """
    duplicates = _arg(args, "ds.ring_attn_size", 1) * _arg(args, "ds.tensor_parallel_size", 1)
    train_batch, train_micro = _arg(args, "train.batch_size", 1), _arg(args, "train.micro_batch_size", 1)
    micro_batch = _arg(args, "rollout.micro_batch_size", 1)
    groups = rank_groups(args, settings)
    for group in groups:
        if group.gpus % duplicates or group.gpus < duplicates:
            raise ValueError(
                f"{group.name} has {group.gpus} GPUs, not a multiple of --ds.ring_attn_size × "
                f"--ds.tensor_parallel_size = {duplicates}: give it a multiple of {duplicates} GPUs"
            )
        if (train_batch * duplicates) % (train_micro * group.gpus):
            raise ValueError(
                f"{group.name} has {group.gpus} GPUs, and DeepSpeed needs --train.batch_size ({train_batch}) × ring × "
                f"TP ({duplicates}) to be a multiple of --train.micro_batch_size ({train_micro}) × its GPUs: change "
                "--train.batch_size, --train.micro_batch_size or the group's GPUs"
            )
    shape = step_shape(args, settings)
    full = shape.full
    for group, shares in step_shares(args, groups, full):
        if min(shares) == 0:
            raise ValueError(
                f"a step of {full} rollouts (--rollout.batch_size × --rollout.n_samples_per_prompt) is "
                f"{sum(shares)} micro-batches of --rollout.micro_batch_size {micro_batch}, which OpenRLHF splits over "
                f"the {group.ranks} data-parallel ranks of {group.name} as {_shares_text(shares)}: a rank without "
                f"work. Make the step a multiple of --rollout.micro_batch_size × {group.ranks} "
                f"({micro_batch * group.ranks}) rollouts, or give the group fewer GPUs"
            )
        if group.zero3 and len(set(shares)) > 1:
            raise ValueError(
                f"with --ds.zero_stage 3 every forward is collective, but a step of {full} rollouts gives the ranks "
                f"of {group.name} different numbers of micro-batches ({_shares_text(shares)}): make "
                f"--rollout.batch_size × --rollout.n_samples_per_prompt a multiple of --rollout.micro_batch_size × "
                f"{group.ranks} ({micro_batch * group.ranks})"
            )
    policy, shares = step_shares(args, groups[:1], full)[0]
    if not _arg(args, "train.dynamic_batch_enable", False):
        # Rollouts per policy rank (the last micro-batch may be short), then micro-steps (DataLoader, drop_last).
        sizes = [micro_batch] * (full // micro_batch) + ([full % micro_batch] if full % micro_batch else [])
        starts = [sum(shares[:rank]) for rank in range(len(shares))]
        rollouts = [sum(sizes[start : start + share]) for start, share in zip(starts, shares)]
        micro_steps = [count // train_micro for count in rollouts]
        if len(set(micro_steps)) > 1 or min(micro_steps) == 0:
            raise ValueError(
                f"a step of {full} rollouts gives the {policy.ranks} ranks of {policy.name} "
                f"{_shares_text(rollouts)} rollouts, i.e. {_shares_text(micro_steps)} micro-steps of "
                f"--train.micro_batch_size {train_micro}: a rank with fewer would wait in all_reduce for ever. Make "
                "--rollout.batch_size × --rollout.n_samples_per_prompt a multiple of --rollout.micro_batch_size × "
                f"{policy.ranks} ({micro_batch * policy.ranks}) and of --train.micro_batch_size × {policy.ranks}"
            )
    return shape


def _shares_text(shares: List[int]) -> str:
    return "[" + ",".join(str(share) for share in shares) + "]"


def describe_shape(args, settings: RunSettings) -> List[str]:
    """The dry run's lines: micro-batches per rank of each group for a full step and for the shortest step the
    plugin may hand OpenRLHF (--gd2po.drop_filtered, dynamic sampling at its budget, dropped groups)."""
    shape = step_shape(args, settings)
    groups = rank_groups(args, settings)
    shortens = settings.drop_filtered or settings.dynamic_sampling or settings.on_bad_reward == "drop_group"
    lines = ["  ranks             micro-batches per data-parallel rank, as OpenRLHF splits a step:"]
    shortest = shape.balanced_size(0)
    for (group, full_shares), (_, short_shares) in zip(
        step_shares(args, groups, shape.full), step_shares(args, groups, shortest)
    ):
        lines.append(
            f"    {group.name}: {group.ranks} ranks, {_shares_text(full_shares)} in a full step"
            + (f", {_shares_text(short_shares)} in the shortest" if shortens else "")
        )
    if shortens:
        lines.append(
            f"  shortened steps   {shape.full} rollouts when full; a shortened step is topped up with zero-advantage "
            f"fillers to a multiple of {shape.unit} (at least {shape.minimum}), so every rank gets equal work"
            + ("" if shape.can_shorten else ": at this shape that is the full step, nothing is saved")
        )
    return lines
