"""--gd2po.drop_filtered: filtered rollouts never reach the actors' replay buffer, everything else is as
without the flag (advantages of the kept rollouts, κ, whitening, metrics, OpenRLHF's rollout stats)."""

import copy
import math
from types import SimpleNamespace
from unittest import mock

import pytest
import torch

import openrlhf.trainer.ppo_trainer as ppo_trainer
from openrlhf.trainer.ppo_utils.experience import Experience
from openrlhf.trainer.ppo_utils.kl_controller import FixedKLController
from openrlhf.trainer.ppo_utils.replay_buffer import NaiveReplayBuffer

from gd2po_openrlhf import GD2POConfig, compute_rollout_advantages
from gd2po_testing import openrlhf_strategy, rollout_experiences

N, PROMPTS, TRAIN_BATCH, MICRO_BATCH = 4, 12, 8, 4
PAD = 0


@pytest.fixture(scope="module")
def reward_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("rewards") / "rules.py"
    path.write_text("def reward_func(queries, prompts, labels):\n    return {'rewards': {'a': 1.0, 'b': 0.0}}\n")
    return str(path)


def strategy(reward_file, drop_filtered, filter_name="hard"):
    flags = ["--gd2po.drop_filtered"] if drop_filtered else []
    return openrlhf_strategy(
        ["--advantage_estimator", "gd2po", "--gd2po.filter", filter_name, "--reward.remote_url", reward_file,
         "--gd2po.reward_keys", "a", "b", "--rollout.n_samples_per_prompt", str(N), "--algo.kl.init_coef", "0",
         "--train.batch_size", str(TRAIN_BATCH), "--rollout.micro_batch_size", str(MICRO_BATCH)] + flags
    )


def run_maker(strategy, experiences):
    maker = ppo_trainer.RemoteExperienceMaker(None, None, None, None, FixedKLController(0.0), strategy, SimpleNamespace(pad_token_id=PAD))
    return maker, maker.compute_advantages_and_returns(experiences)


def micro_batches(rewards, lengths, seed=0):
    samples = rollout_experiences(rewards, lengths, N, MICRO_BATCH, seed=seed, reward_keys=["a", "b"])
    for i, sample in enumerate(samples):
        sample.index = [i]
    return [Experience.concat_experiences(samples[i : i + MICRO_BATCH], PAD) for i in range(0, len(samples), MICRO_BATCH)]


def by_rollout(experiences, field):
    """{rollout index: that rollout's row of a step field, cut to its action tokens}"""
    return {
        i: getattr(e, field)[row][e.action_mask[row]]
        for e in experiences
        for row, i in enumerate(e.index)
    }


def test_kept_rollouts_train_exactly_as_without_the_flag(reward_file):
    generator = torch.Generator().manual_seed(3)
    rewards = torch.randint(0, 3, (PROMPTS * N, 2), generator=generator).float()
    lengths = torch.randint(1, 12, (PROMPTS * N,), generator=generator)
    batches = micro_batches(rewards, lengths)
    full_maker, full = run_maker(strategy(reward_file, False), copy.deepcopy(batches))
    maker, trained = run_maker(strategy(reward_file, True), copy.deepcopy(batches))

    full_advantages = by_rollout(full, "advantages")
    keep = compute_rollout_advantages(rewards, torch.arange(PROMPTS * N) // N, lengths, GD2POConfig(filter="hard")).keep
    kept = set(keep.nonzero().squeeze(1).tolist())
    num_kept = len(kept)
    assert 0 < num_kept < PROMPTS * N  # the case exercises the filter
    trained_advantages = by_rollout(trained, "advantages")
    assert len(trained_advantages) == math.ceil(num_kept / TRAIN_BATCH) * TRAIN_BATCH
    for i, advantage in trained_advantages.items():
        torch.testing.assert_close(advantage, full_advantages[i], rtol=0, atol=0)
    assert kept <= set(trained_advantages)
    # the top-up rollouts are filtered ones (advantage 0), the shortest of them
    fillers = [i for i in trained_advantages if i not in kept]
    assert all(float(full_advantages[i].abs().sum()) == 0 for i in fillers)
    dropped_lengths = sorted(int(lengths[i]) for i in full_advantages if i not in kept)
    assert sorted(int(lengths[i]) for i in fillers) == dropped_lengths[: len(fillers)]
    # every per-rollout field travelled with its rollout
    for e in trained:
        assert len(e.index) == MICRO_BATCH == len(e.prompts) == e.sequences.shape[0] == e.info["reward/a"].shape[0]
        for row, i in enumerate(e.index):
            assert e.prompts[row] == f"prompt {i // N}" and e.info["reward/a"][row] == rewards[i, 0]
            assert int(e.action_mask[row].sum()) == int(lengths[i])
    # κ, whitening and the batch metrics are those of the whole batch
    metrics = dict(maker.gd2po_metrics)
    assert metrics.pop("gd2po/trained_ratio") == len(trained_advantages) / (PROMPTS * N)
    assert metrics == full_maker.gd2po_metrics
    # what the actors receive: OpenRLHF's replay buffer holds exactly the trained rollouts
    with mock.patch.object(torch.cuda, "current_device", lambda: 0):  # it only names its target device
        buffer = NaiveReplayBuffer(sample_batch_size=2)
    for e in trained:
        buffer.append(copy.deepcopy(e))
    assert len(buffer) == len(trained_advantages)


def test_rollout_stats_still_describe_every_generated_rollout(reward_file):
    rewards = torch.randint(0, 3, (PROMPTS * N, 2), generator=torch.Generator().manual_seed(4)).float()
    lengths = torch.randint(1, 12, (PROMPTS * N,), generator=torch.Generator().manual_seed(5))
    maker, trained = run_maker(strategy(reward_file, True), micro_batches(rewards, lengths))
    assert sum(len(e.index) for e in trained) < PROMPTS * N
    trainer = SimpleNamespace(experience_maker=maker)
    stats = ppo_trainer.BasePPOTrainer._compute_rollout_stats(trainer, trained)
    assert stats["rollout/num_samples"] == PROMPTS * N
    assert stats["rollout/response_length_mean"] == pytest.approx(float(lengths.float().mean()))
    assert stats["gd2po/trained_ratio"] < 1
    # the next step's statistics are not those of this one
    assert ppo_trainer.BasePPOTrainer._compute_rollout_stats(trainer, trained)["rollout/num_samples"] == len(trained) * MICRO_BATCH


def test_a_fully_filtered_batch_trains_one_zero_advantage_minibatch(reward_file):
    # two dimensions that always disagree: every rollout with a non-zero advantage is mixed-sign
    first = torch.arange(PROMPTS * N, dtype=torch.float32) % N
    rewards = torch.stack([first, -first], dim=1)
    lengths = torch.randint(1, 12, (PROMPTS * N,), generator=torch.Generator().manual_seed(6))
    maker, trained = run_maker(strategy(reward_file, True), micro_batches(rewards, lengths))
    assert maker.gd2po_metrics["gd2po/keep_ratio"] == 0
    assert sum(len(e.index) for e in trained) == TRAIN_BATCH and len(trained) == TRAIN_BATCH // MICRO_BATCH
    assert all(float(e.advantages.abs().sum()) == 0 for e in trained)
    shortest = sorted(lengths.tolist())[:TRAIN_BATCH]
    assert sorted(int(lengths[i]) for e in trained for i in e.index) == shortest


def test_nothing_dropped_keeps_every_rollout(reward_file):
    rewards = torch.randint(0, 3, (PROMPTS * N, 2), generator=torch.Generator().manual_seed(7)).float()
    lengths = torch.randint(1, 12, (PROMPTS * N,), generator=torch.Generator().manual_seed(8))
    batches = micro_batches(rewards, lengths)
    # τ = 0: the snr filter keeps everything
    snr_strategy = strategy(reward_file, True, filter_name="snr")
    snr_strategy.args.gd2po.snr_threshold = 0.0
    maker, trained = run_maker(snr_strategy, batches)
    assert sorted(i for e in trained for i in e.index) == list(range(PROMPTS * N))
    assert maker.gd2po_metrics["gd2po/trained_ratio"] == 1.0
