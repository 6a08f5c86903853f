"""Cluster shapes: every step the plugin hands OpenRLHF spreads evenly over the data-parallel ranks.

The split is OpenRLHF's own: ``RayActorGroup.async_run_method_batch`` on an instance whose actor handles record what
each rank receives (Ray's ``put`` returns the chunk itself), so a change of upstream's arithmetic shows here. The
selection is the plugin's own ``rollouts_to_train`` and ``select_rollouts``; the refusals run through OpenRLHF's
real parser.
"""

import itertools
import math
from types import SimpleNamespace
from unittest import mock

import openrlhf.trainer.ray.launcher as launcher
import pytest
import torch
from gd2po_testing import launcher_subprocess, openrlhf_strategy, rollout_experiences
from openrlhf.trainer.ppo_utils.experience import Experience

from gd2po_openrlhf.integration.cluster_shape import check_cluster_shape, openrlhf_shares, step_shape
from gd2po_openrlhf.integration.rollout_selection import rollouts_to_train, select_rollouts
from gd2po_openrlhf.integration.settings import ModelGroup, RunSettings


class RecordingHandle:
    """An actor handle whose ``execute_batch.remote`` records the chunk a rank receives."""

    def __init__(self, received):
        self.received = received
        self.execute_batch = SimpleNamespace(remote=lambda method, chunk, start, end: received.append(chunk))


def upstream_split(micro_batches: list, gpus: int, duplicates: int = 1) -> list:
    """What each effective rank receives from OpenRLHF's ``async_run_method_batch`` (ring/TP duplicates share a
    chunk): a list of micro-batches per rank, by OpenRLHF's real code."""
    group = launcher.RayActorGroup.__new__(launcher.RayActorGroup)
    received = []
    group._actor_handlers = [RecordingHandle(received) for _ in range(gpus)]
    group.duplicate_actors = duplicates
    with mock.patch.object(launcher.ray, "put", lambda value: value):
        group.async_run_method_batch(method_name="append", experience=micro_batches)
    return [chunk["experience"] for chunk in received[::duplicates]]


def test_the_mirror_of_openrlhfs_split_is_openrlhfs_split():
    for ranks in range(1, 17):
        for items in range(ranks, 60):
            upstream = [len(chunk) for chunk in upstream_split(list(range(items)), ranks)]
            assert openrlhf_shares(items, ranks) == upstream, (items, ranks)
    # ring attention × tensor parallel: 8 GPUs in pairs are 4 effective ranks
    assert [len(chunk) for chunk in upstream_split(list(range(6)), 8, duplicates=2)] == openrlhf_shares(6, 4)


def args_for(ranks, rollout_micro, train_batch, train_micro, prompts, n, zero_stage=0, extra=None):
    """OpenRLHF's flat argument names (``_arg`` reads flat or nested namespaces)."""
    values = {
        "actor.num_nodes": 1,
        "actor.num_gpus_per_node": ranks,
        "rollout.micro_batch_size": rollout_micro,
        "rollout.batch_size": prompts,
        "train.batch_size": train_batch,
        "train.micro_batch_size": train_micro,
        "ds.zero_stage": zero_stage,
        "algo.kl.init_coef": 0.0,
    }
    return SimpleNamespace(**{**values, **(extra or {})})


def valid_shapes():
    """Shapes a user could give (1-16 policy ranks), those the parse-time check accepts."""
    shapes = []
    for ranks, rollout_micro, train_micro, n in itertools.product(range(1, 17), (1, 2, 4), (1, 2), (2, 4, 8)):
        train_batch = train_micro * ranks * (1 + ranks % 3)  # one to three micro-steps per optimiser step
        prompts = math.lcm(train_batch, rollout_micro * ranks, n) * 2 // n
        args = args_for(ranks, rollout_micro, train_batch, train_micro, prompts, n)
        settings = RunSettings(n_samples_per_prompt=n)
        try:
            check_cluster_shape(args, settings)
        except ValueError:
            continue
        shapes.append((args, settings))
    return shapes


def test_every_keep_count_splits_evenly_over_1_to_16_ranks_in_whole_optimiser_steps():
    shapes = valid_shapes()
    assert len({args.__dict__["actor.num_gpus_per_node"] for args, _ in shapes}) == 16 and len(shapes) > 200
    generator = torch.Generator().manual_seed(0)
    for args, settings in shapes:
        flat = args.__dict__
        ranks, rollout_micro = flat["actor.num_gpus_per_node"], flat["rollout.micro_batch_size"]
        train_micro, train_batch = flat["train.micro_batch_size"], flat["train.batch_size"]
        shape = step_shape(args, settings)
        full = flat["rollout.batch_size"] * settings.n_samples_per_prompt
        lengths = torch.randint(1, 20, (full,), generator=generator)
        for kept in range(full + 1):
            train = torch.zeros(full, dtype=torch.bool)
            train[torch.randperm(full, generator=generator)[:kept]] = True
            selected = rollouts_to_train(train, lengths, torch.zeros(full, dtype=torch.bool), shape)
            assert bool(selected[train].all())
            size = int(selected.sum())
            # select_rollouts cuts the selection into micro-batches of --rollout.micro_batch_size
            micro_batches = [min(rollout_micro, size - start) for start in range(0, size, rollout_micro)]
            per_rank = [sum(chunk) for chunk in upstream_split(micro_batches, ranks)]
            micro_steps = {rollouts // train_micro for rollouts in per_rank}
            assert len(set(per_rank)) == 1 and len(micro_steps) == 1, (flat, kept, per_rank)
            accumulation = train_batch // (train_micro * ranks)
            assert micro_steps.pop() % accumulation == 0, (flat, kept, per_rank)


def test_dynamic_sampling_sizes_and_zero3_model_groups_get_equal_forwards():
    # 4 policy ranks, a 2-GPU reward model group and a 3-GPU one under ZeRO-3: every forward is collective.
    settings = RunSettings(
        n_samples_per_prompt=4,
        model_groups=(ModelGroup("a", "/m/a", gpus_per_node=2), ModelGroup("b", "/m/b", gpus_per_node=3)),
    )
    args = args_for(4, 2, 24, 2, prompts=24, n=4, zero_stage=3)
    shape = check_cluster_shape(args, settings)
    assert shape.unit == math.lcm(24, 2 * 4, 2 * 2, 2 * 3) == 24 and shape.minimum == 24
    for passed_rollouts in range(0, shape.full + 1, 4):  # dynamic sampling: whole groups passed
        size = shape.balanced_size(passed_rollouts)
        assert size >= passed_rollouts
        micro_batches = [2] * (size // 2)
        assert size % 2 == 0
        for gpus in (4, 2, 3):
            assert len({len(chunk) for chunk in upstream_split(micro_batches, gpus)}) == 1, (passed_rollouts, gpus)


def test_select_rollouts_hands_each_rank_whole_micro_batches_of_real_experiences():
    # 4 ranks, micro-batch 2, train batch 4: 4 prompts × 4 rollouts (the e2e scenario's shape), 5 kept.
    settings = RunSettings(n_samples_per_prompt=4)
    args = args_for(4, 2, 4, 1, prompts=4, n=4)
    shape = check_cluster_shape(args, settings)
    rewards = torch.arange(16.0).unsqueeze(1)
    samples = rollout_experiences(rewards, torch.randint(1, 9, (16,)), 4, 2)
    for i, sample in enumerate(samples):
        sample.index = [i]
    experiences = [Experience.concat_experiences(samples[i : i + 2], 0) for i in range(0, 16, 2)]
    train = torch.zeros(16, dtype=torch.bool)
    train[[0, 3, 6, 9, 12]] = True
    selected = rollouts_to_train(train, torch.randint(1, 9, (16,)), torch.zeros(16, dtype=torch.bool), shape)
    assert int(selected.sum()) == 8  # 5 kept + 3 fillers: two whole micro-batches per rank
    trained = select_rollouts(experiences, selected, 2, 0)
    per_rank = [sum(len(e.index) for e in chunk) for chunk in upstream_split(trained, 4)]
    assert per_rank == [2, 2, 2, 2]


def test_a_short_batch_the_split_cannot_balance_is_refused_not_trained():
    settings = RunSettings(n_samples_per_prompt=4)
    shape = step_shape(args_for(4, 2, 8, 1, prompts=8, n=4), settings)
    with pytest.raises(RuntimeError, match="the step has 6 rollouts, fewer than the 8 that OpenRLHF spreads evenly"):
        rollouts_to_train(torch.ones(6, dtype=torch.bool), torch.ones(6), torch.zeros(6, dtype=torch.bool), shape)
    # one rank per group: nothing to balance, the short batch trains whole (the CPU demo, in-process tests)
    single = step_shape(args_for(1, 2, 8, 1, prompts=8, n=4), settings)
    assert not single.spread
    assert rollouts_to_train(
        torch.ones(6, dtype=torch.bool), torch.ones(6), torch.zeros(6, dtype=torch.bool), single
    ).all()


BASE = ["--advantage_estimator", "gd2po", "--gd2po.reward_keys", "correctness", "--gd2po.dry_run"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (  # 2 prompts × 2 rollouts in micro-batches of 1: 4 micro-batches for 8 ranks
            ["--actor.num_gpus_per_node", "8", "--rollout.batch_size", "2", "--rollout.n_samples_per_prompt", "2"],
            "a step of 4 rollouts (--rollout.batch_size × --rollout.n_samples_per_prompt) is 4 micro-batches of "
            "--rollout.micro_batch_size 1, which OpenRLHF splits over the 8 data-parallel ranks of the policy "
            "(--actor.num_nodes × --actor.num_gpus_per_node) as [1,1,1,1,0,0,0,0]: a rank without work",
        ),
        (  # 5 micro-batches over 3 ranks: [2,2,1]
            [
                "--actor.num_gpus_per_node",
                "3",
                "--rollout.batch_size",
                "5",
                "--rollout.n_samples_per_prompt",
                "4",
                "--rollout.micro_batch_size",
                "4",
                "--train.batch_size",
                "12",
                "--train.micro_batch_size",
                "4",
            ],
            "a step of 20 rollouts gives the 3 ranks of the policy (--actor.num_nodes × --actor.num_gpus_per_node) "
            "[8,8,4] rollouts, i.e. [2,2,1] micro-steps",
        ),
        (
            ["--cost.model_name_or_path", "org/cm", "--cost.num_gpus_per_node", "3", "--train.batch_size", "512"]
            + ["--train.micro_batch_size", "4", "--gd2po.reward_keys", "correctness", "cost"]
            + ["--gd2po.reward_weights", "1", "-1"],
            "the model group of reward key 'cost' (--cost.model_name_or_path) has 3 GPUs, and DeepSpeed needs "
            "--train.batch_size (512) × ring × TP (1) to be a multiple of --train.micro_batch_size (4) × its GPUs",
        ),
        (
            ["--ds.tensor_parallel_size", "2", "--actor.num_gpus_per_node", "2", "--ref.num_gpus_per_node", "2"]
            + ["--cost.model_name_or_path", "org/cm", "--cost.num_gpus_per_node", "1"]
            + ["--gd2po.reward_keys", "correctness", "cost", "--gd2po.reward_weights", "1", "-1"],
            "the model group of reward key 'cost' (--cost.model_name_or_path) has 1 GPUs, not a multiple of "
            "--ds.ring_attn_size × --ds.tensor_parallel_size = 2",
        ),
        (  # ZeRO-3: 10 micro-batches over a 4-GPU cost model group
            ["--ds.zero_stage", "3", "--actor.num_gpus_per_node", "2", "--rollout.batch_size", "5"]
            + ["--rollout.micro_batch_size", "2", "--train.batch_size", "4"]
            + ["--cost.model_name_or_path", "org/cm", "--cost.num_gpus_per_node", "4"]
            + ["--gd2po.reward_keys", "correctness", "cost", "--gd2po.reward_weights", "1", "-1"],
            "with --ds.zero_stage 3 every forward is collective, but a step of 20 rollouts gives the ranks of the "
            "model group of reward key 'cost' (--cost.model_name_or_path) different numbers of micro-batches "
            "([3,3,3,1])",
        ),
    ],
)
def test_shapes_that_would_leave_a_rank_idle_are_refused_at_parse_time(reward_file, argv, message, capsys):
    base = BASE + ["--reward.remote_url", reward_file, "--rollout.n_samples_per_prompt", "4"]
    with pytest.raises(SystemExit) as exit_info:
        openrlhf_strategy(base + argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.subprocess
def test_the_dry_run_shows_each_groups_share_of_a_full_and_of_the_shortest_step(reward_file):
    argv = BASE + ["--reward.remote_url", reward_file, "--rollout.n_samples_per_prompt", "4"]
    argv += ["--actor.num_gpus_per_node", "4", "--rollout.batch_size", "8", "--rollout.micro_batch_size", "2"]
    argv += ["--train.batch_size", "16", "--gd2po.drop_filtered", "--algo.kl.init_coef", "0"]
    result = launcher_subprocess(argv)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert (
        "    the policy (--actor.num_nodes × --actor.num_gpus_per_node): 4 ranks, [4,4,4,4] in a full step, "
        "[2,2,2,2] in the shortest" in out
    )
    assert "a shortened step is topped up with zero-advantage fillers to a multiple of 16 (at least 16)" in out
