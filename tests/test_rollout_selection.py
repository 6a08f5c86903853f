"""Rollouts left out of the step. --gd2po.drop_filtered: filtered rollouts never reach the actors' replay
buffer, everything else is as without the flag (advantages of the kept rollouts, κ, whitening, metrics,
OpenRLHF's rollout stats). --gd2po.on_bad_reward: a non-finite reward stops the step (error) or removes its
prompt's group before the estimator sees it (drop_group)."""

import copy
import math
from types import SimpleNamespace
from unittest import mock

import openrlhf.trainer.ppo_trainer as ppo_trainer
import pytest
import torch
from gd2po_testing import experience_maker, openrlhf_strategy, rollout_experiences
from openrlhf.trainer.ppo_utils.experience import Experience
from openrlhf.trainer.ppo_utils.replay_buffer import NaiveReplayBuffer

from gd2po_openrlhf import GD2POConfig, compute_rollout_advantages

N, PROMPTS, TRAIN_BATCH, MICRO_BATCH = 4, 12, 8, 4
PAD = 0


REWARD_FILE_REWARDS = {"a": 1.0, "b": 0.0}  # conftest's reward_file


def strategy(reward_file, drop_filtered, filter_name="hard", on_bad_reward="error"):
    flags = (["--gd2po.drop_filtered"] if drop_filtered else []) + ["--gd2po.on_bad_reward", on_bad_reward]
    return openrlhf_strategy(
        [
            "--advantage_estimator",
            "gd2po",
            "--gd2po.filter",
            filter_name,
            "--reward.remote_url",
            reward_file,
            "--gd2po.reward_keys",
            "a",
            "b",
            "--rollout.n_samples_per_prompt",
            str(N),
            "--algo.kl.init_coef",
            "0",
            "--train.batch_size",
            str(TRAIN_BATCH),
            "--rollout.micro_batch_size",
            str(MICRO_BATCH),
        ]
        + flags
    )


def run_maker(strategy, experiences):
    maker = experience_maker(strategy, pad_token_id=PAD)
    return maker, maker.compute_advantages_and_returns(experiences)


def micro_batches(rewards, lengths, seed=0):
    samples = rollout_experiences(rewards, lengths, N, MICRO_BATCH, seed=seed, reward_keys=["a", "b"])
    for i, sample in enumerate(samples):
        sample.index = [i]
    return [
        Experience.concat_experiences(samples[i : i + MICRO_BATCH], PAD) for i in range(0, len(samples), MICRO_BATCH)
    ]


def by_rollout(experiences, field):
    """{rollout index: that rollout's row of a step field, cut to its action tokens}"""
    return {i: getattr(e, field)[row][e.action_mask[row]] for e in experiences for row, i in enumerate(e.index)}


def test_kept_rollouts_train_exactly_as_without_the_flag(reward_file):
    generator = torch.Generator().manual_seed(3)
    rewards = torch.randint(0, 3, (PROMPTS * N, 2), generator=generator).float()
    lengths = torch.randint(1, 12, (PROMPTS * N,), generator=generator)
    batches = micro_batches(rewards, lengths)
    full_maker, full = run_maker(strategy(reward_file, False), copy.deepcopy(batches))
    maker, trained = run_maker(strategy(reward_file, True), copy.deepcopy(batches))

    full_advantages = by_rollout(full, "advantages")
    keep = compute_rollout_advantages(
        rewards, torch.arange(PROMPTS * N) // N, lengths, GD2POConfig(filter="hard")
    ).keep
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
    metrics = dict(maker.last_step_report.metrics)
    assert metrics.pop("gd2po/trained_ratio") == len(trained_advantages) / (PROMPTS * N)
    assert metrics == full_maker.last_step_report.metrics
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
    assert (
        ppo_trainer.BasePPOTrainer._compute_rollout_stats(trainer, trained)["rollout/num_samples"]
        == len(trained) * MICRO_BATCH
    )


def test_a_fully_filtered_batch_trains_one_zero_advantage_minibatch(reward_file):
    # two dimensions that always disagree: every rollout with a non-zero advantage is mixed-sign
    first = torch.arange(PROMPTS * N, dtype=torch.float32) % N
    rewards = torch.stack([first, -first], dim=1)
    lengths = torch.randint(1, 12, (PROMPTS * N,), generator=torch.Generator().manual_seed(6))
    maker, trained = run_maker(strategy(reward_file, True), micro_batches(rewards, lengths))
    assert maker.last_step_report.metrics["gd2po/keep_ratio"] == 0
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
    assert maker.last_step_report.metrics["gd2po/trained_ratio"] == 1.0


def bad_reward_case(seed=11):
    """Rewards with a NaN, a +inf and a -inf in three of the twelve groups, and the expected dropped groups."""
    generator = torch.Generator().manual_seed(seed)
    rewards = torch.randint(0, 3, (PROMPTS * N, 2), generator=generator).float()
    lengths = torch.randint(1, 12, (PROMPTS * N,), generator=generator)
    rewards[1 * N + 2, 0] = math.nan
    rewards[5 * N + 0, 1] = math.inf
    rewards[9 * N + 3, 0] = -math.inf
    return rewards, lengths, {1, 5, 9}


def test_a_bad_reward_stops_the_step_naming_key_source_and_rollout(reward_file):
    rewards, lengths, _ = bad_reward_case()
    with pytest.raises(ValueError) as error:
        run_maker(strategy(reward_file, False), micro_batches(rewards, lengths))
    message = str(error.value)
    assert (
        f"reward key 'a' is nan (source: reward function {reward_file}) for rollout {N + 2} (sample 2 of prompt "
        "'prompt 1')" in message
    )
    assert "reward key 'b' is inf" in message and f"rollout {5 * N}" in message and "reward key 'a' is -inf" in message
    assert "--gd2po.on_bad_reward drop_group" in message


@pytest.mark.parametrize("drop_filtered", [False, True])
def test_drop_group_trains_the_other_groups_exactly_as_if_the_bad_ones_never_existed(
    reward_file, drop_filtered, caplog
):
    rewards, lengths, bad_groups = bad_reward_case()
    maker, trained = run_maker(
        strategy(reward_file, drop_filtered, on_bad_reward="drop_group"), micro_batches(rewards, lengths)
    )
    good = torch.tensor([i // N not in bad_groups for i in range(PROMPTS * N)])
    # the reference: the estimator on the good groups alone, computed independently of the integration
    reference = compute_rollout_advantages(
        rewards[good], (torch.arange(PROMPTS * N) // N)[good], lengths[good], GD2POConfig(filter="hard")
    )
    expected = dict(zip(good.nonzero().squeeze(1).tolist(), reference.rollout_advantages.tolist()))
    kept = {i for i, k in zip(expected, reference.keep.tolist()) if k}
    trained_rollouts = {i: (e, row) for e in trained for row, i in enumerate(e.index)}
    # every rollout that trains has a finite advantage; those of good groups are the reference's
    for i, (e, row) in trained_rollouts.items():
        advantages = e.advantages[row][e.action_mask[row]]
        assert torch.isfinite(advantages).all() and torch.isfinite(e.returns[row]).all()
        assert all(torch.isfinite(value).all() for value in e.info.values())
        if i in expected:
            torch.testing.assert_close(advantages, torch.full_like(advantages, expected[i]), rtol=1e-6, atol=1e-6)
        else:  # a filler from a dropped group: no gradient from its reward
            assert float(advantages.abs().sum()) == 0
    must_train = kept if drop_filtered else set(expected)
    assert must_train <= set(trained_rollouts)
    assert len(trained_rollouts) == math.ceil(len(must_train) / TRAIN_BATCH) * TRAIN_BATCH
    assert maker.last_step_report.metrics["gd2po/dropped_bad_groups"] == 3
    assert maker.last_step_report.metrics["gd2po/num_groups"] == PROMPTS - 3
    assert maker.last_step_report.metrics["gd2po/keep_ratio"] == pytest.approx(float(reference.keep.float().mean()))
    # the warning names each dropped group's first bad value
    warning = " ".join(r.getMessage() for r in caplog.records if "drop_group" in r.getMessage())
    assert "dropping 3 of 12 prompt groups" in warning and "sample 2 of prompt 'prompt 1'" in warning
    # OpenRLHF's rollout statistics describe the rollouts with valid rewards, not the dropped groups
    stats = ppo_trainer.BasePPOTrainer._compute_rollout_stats(SimpleNamespace(experience_maker=maker), trained)
    assert stats["rollout/num_samples"] == int(good.sum())
    weighted = rewards[good].sum(1)
    assert stats["rollout/reward_mean"] == pytest.approx(float(weighted.mean()))


def test_drop_group_refuses_a_step_in_which_every_group_is_bad(reward_file):
    rewards, lengths, _ = bad_reward_case()
    rewards[torch.arange(PROMPTS) * N, 1] = math.nan
    # A remote reward's NaN under drop_group is the marker of a rollout whose reward failed at its source (the
    # cause, inf or 1e20 or an exception, was logged when it arrived): the message does not call it "nan".
    with pytest.raises(
        ValueError,
        match=r"every prompt group of the step has a bad reward, nothing to train on: reward key 'b' "
        r"is invalid at its source \(see the warning above\) \(source: reward function",
    ):
        run_maker(strategy(reward_file, False, on_bad_reward="drop_group"), micro_batches(rewards, lengths))


def test_drop_group_without_bad_rewards_changes_nothing(reward_file):
    rewards, lengths, _ = bad_reward_case()
    rewards = torch.nan_to_num(rewards, nan=1.0, posinf=2.0, neginf=0.0)
    batches = micro_batches(rewards, lengths)
    _, plain = run_maker(strategy(reward_file, False), copy.deepcopy(batches))
    maker, dropping = run_maker(strategy(reward_file, False, on_bad_reward="drop_group"), copy.deepcopy(batches))
    assert [e.index for e in dropping] == [e.index for e in plain]
    for a, b in zip(dropping, plain):
        torch.testing.assert_close(a.advantages, b.advantages, rtol=0, atol=0)
    assert maker.last_step_report.metrics["gd2po/dropped_bad_groups"] == 0
