"""Which rollouts of a step go to the actors (``--gd2po.drop_filtered``, dropped bad-reward groups, dynamic
sampling's short batches), sized so that every data-parallel rank gets equal work, and the re-cut of OpenRLHF's
experiences to exactly those rollouts."""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import List, Tuple

import torch
from openrlhf.trainer.ppo_utils.experience import Experience
from openrlhf.utils.utils import zero_pad_sequences

from .cluster_shape import StepShape

# The Experience attribute that marks a rollout handed to OpenRLHF only to fill a short step (dynamic sampling at its
# prompt budget): never estimated, advantage 0.
FILLER_ATTRIBUTE = "gd2po_filler"


def rollouts_to_train(
    train: torch.Tensor, lengths: torch.Tensor, excluded: torch.Tensor, shape: StepShape
) -> torch.Tensor:
    """The mask [B] of rollouts sent to the actors: every ``train`` rollout, topped up with fillers to
    ``shape.balanced_size(#train)`` rollouts (``cluster_shape``): a multiple of --train.batch_size and of the
    micro-batch × the ranks of the policy (and of every ZeRO-3 group), or the full step.

    Every data-parallel rank then gets the same number of whole micro-batches and the same whole optimiser steps (a
    step in which every rollout was filtered still trains one zero-advantage batch instead of leaving the actors an
    empty replay buffer). Fillers have advantage 0: the shortest non-``train`` rollouts first, then the shortest
    ``excluded`` ones (dropped groups and dynamic sampling's fillers, whose advantages were never computed).
    """
    num_train = int(train.sum())
    target = shape.balanced_size(num_train)
    if target > len(train) and not shape.spread:
        target = len(train)  # one rank in every group: nothing to balance, the short batch trains whole
    if target > len(train):
        raise RuntimeError(
            f"the step has {len(train)} rollouts, fewer than the {target} that OpenRLHF spreads evenly over the "
            f"data-parallel ranks (a multiple of {shape.unit}, at least {shape.minimum}, or the full step of "
            f"{shape.full}): training it would leave ranks waiting on each other. This OpenRLHF handed the plugin a "
            "batch shape it does not expect (see gd2po_openrlhf/integration/cluster_shape.py)"
        )
    fill_rank = lengths.double() + excluded.double() * (float(lengths.max()) + 1)
    fill_order = torch.argsort(torch.where(train, math.inf, fill_rank), stable=True)
    selected = train.clone()
    selected[fill_order[: target - num_train]] = True
    return selected


def select_rollouts(
    experiences: List[Experience], selected: torch.Tensor, micro_batch_size: int, pad_token_id: int
) -> List[Experience]:
    """The ``selected`` rollouts of ``experiences`` (a mask in the rollouts' order across them), re-cut into
    micro-batches of ``micro_batch_size``; every per-rollout field and info entry travels with its rollout."""
    target = int(selected.sum())
    per_experience = selected.split([len(e.index) for e in experiences])
    rows = [mask.nonzero().squeeze(1) for mask in per_experience]
    fields = {}
    for field in dataclasses.fields(Experience):
        values = [getattr(e, field.name) for e in experiences]
        if all(v is None for v in values):
            fields[field.name] = None
        elif Experience.is_step_tensor_field(field.name):
            pad = pad_token_id if field.name == "sequences" else 0
            fields[field.name] = zero_pad_sequences([v[r] for v, r in zip(values, rows)], "right", pad)
        elif isinstance(values[0], torch.Tensor):
            fields[field.name] = torch.cat([v[r] for v, r in zip(values, rows)])
        elif isinstance(values[0], dict):
            fields[field.name] = {key: torch.cat([v[key][r] for v, r in zip(values, rows)]) for key in values[0]}
        elif all(len(v) == len(e.index) for v, e in zip(values, experiences)):  # per rollout: index, prompts, ...
            fields[field.name] = [v[i] for v, r in zip(values, rows) for i in r.tolist()]
        else:  # not per rollout (e.g. no images at all): kept as OpenRLHF's concat keeps it
            fields[field.name] = list(itertools.chain.from_iterable(values))
    kept = []
    for start in range(0, target, micro_batch_size):
        chunk = slice(start, start + micro_batch_size)
        sliced = {
            name: value[chunk]
            if isinstance(value, torch.Tensor) or (isinstance(value, list) and len(value) == target)
            else value
            for name, value in fields.items()
        }
        sliced["info"] = {key: value[chunk] for key, value in fields["info"].items()}
        kept.append(Experience(**sliced))
    return kept


def rollouts_of_step(
    experiences: List[Experience],
    good: torch.Tensor,
    train: torch.Tensor,
    lengths: torch.Tensor,
    shape: StepShape,
    micro_batch_size: int,
    tokenizer,
) -> Tuple[List[Experience], List[Experience], float]:
    """``(generated, trained, trained share)`` of a step's ``experiences``: re-cut to the rollouts with a valid reward
    (``good`` [B]: what OpenRLHF's statistics describe) and to the rollouts sent to the actors (``rollouts_to_train``
    of ``train`` [B], sized so that every data-parallel rank gets equal work), and the share of the step's rollouts
    trained. The experiences themselves where nothing is cut (a cut pads with ``tokenizer``'s pad token)."""
    excluded = ~good
    if bool(train.all()) and shape.balanced_size(len(train)) == len(train):
        return experiences, experiences, 1.0
    pad_token_id = tokenizer.pad_token_id
    generated = select_rollouts(experiences, good, micro_batch_size, pad_token_id) if excluded.any() else experiences
    selected = rollouts_to_train(train, lengths, excluded, shape)
    trained = (
        select_rollouts(experiences, selected, micro_batch_size, pad_token_id) if not selected.all() else experiences
    )
    return generated, trained, int(selected.sum()) / len(train)
