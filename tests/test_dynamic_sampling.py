"""--gd2po.dynamic_sampling's group test: ``estimator.group_verdicts`` on hand-worked groups, ``GroupTally`` and
``judge_group`` on the Experiences OpenRLHF builds, the counts' metrics in the experience maker, and (hypothesis)
that a batch assembled from the groups that passed trains on exactly the estimator's advantages of that batch.

The loop itself (OpenRLHF's ``_generate_vllm`` with rollout actors) is in ``test_dynamic_sampling_loop.py``."""

import math

import pytest
import torch
from gd2po_testing import experience_maker, openrlhf_strategy, rollout_experiences
from hypothesis import given, settings
from hypothesis import strategies as st

from gd2po_openrlhf import GD2POConfig, compute_rollout_advantages
from gd2po_openrlhf.estimator import group_verdicts
from gd2po_openrlhf.integration.dynamic_sampling import (
    COUNTS_ATTRIBUTE,
    GroupTally,
    SamplingCounts,
    judge_group,
    sampling_metrics,
    verdict_scores,
)
from gd2po_openrlhf.integration.settings import resolve_settings

N = 4
KEYS = ["correctness", "format"]
REWARD_FILE_REWARDS = {"correctness": 1.0, "format": 0.0}  # conftest's reward_file

# Hand-worked groups of 4 rollouts, two dimensions, every response 5 tokens long.
CONSTANT = [[1, 0], [1, 0], [1, 0], [1, 0]]
# Each rollout is +a on one dimension and −a on the other: all conflicting, Σ_k A_k = 0 for every rollout.
ALL_CONFLICTING = [[1, 0], [0, 1], [1, 0], [0, 1]]
# Weights (1, 0.5): the weighted sum is 1 for every rollout (a constant group to a test of the summed reward), but
# A_correctness = ±0.866 and 0.5·A_format = ∓0.433: Σ = ±0.433, all mixed-sign, SNR ratio 0.433/1.299 = 1/3.
SUM_CONSTANT = [[1, 0], [0, 2], [1, 0], [0, 2]]
# correctness varies, format constant: no conflict, Σ = ±0.866.
ONE_VARIES = [[1, 1], [0, 1], [1, 1], [0, 1]]
# Rollouts 1 (−, −) and 2 (+, +) agree; 0 (+, −) and 3 (−, +) conflict: two rollouts survive the hard filter.
TWO_AGREE = [[1, 0], [0, 0], [1, 1], [0, 1]]


def verdict(group, weights=(1.0, 1.0), min_kept=1, **config):
    result = group_verdicts(
        torch.tensor(group, dtype=torch.float64),
        torch.zeros(len(group), dtype=torch.int64),
        torch.full((len(group),), 5.0),
        GD2POConfig(weights=weights, **config),
        min_kept,
    )
    return int(result.signal_rollouts[0]), bool(result.passed[0]), bool(result.constant[0])


@pytest.mark.parametrize(
    "group, weights, config, expected",
    [
        (CONSTANT, (1, 1), {"filter": "none"}, (0, False, True)),
        (CONSTANT, (1, 1), {"filter": "hard"}, (0, False, True)),
        (ALL_CONFLICTING, (1, 1), {"filter": "hard"}, (0, False, False)),
        (ALL_CONFLICTING, (1, 1), {"filter": "snr"}, (0, False, False)),
        (ALL_CONFLICTING, (1, 1), {"filter": "none"}, (0, False, False)),  # GDPO keeps them, but Σ = 0
        (SUM_CONSTANT, (1, 0.5), {"filter": "none"}, (4, True, False)),  # GDPO: signal a summed test drops
        (SUM_CONSTANT, (1, 0.5), {"filter": "hard"}, (0, False, False)),
        (SUM_CONSTANT, (1, 0.5), {"filter": "snr", "snr_threshold": 0.8}, (0, False, False)),
        (SUM_CONSTANT, (1, 0.5), {"filter": "snr", "snr_threshold": 0.3}, (4, True, False)),  # 1/3 ≥ 0.3
        (ONE_VARIES, (1, 1), {"filter": "hard"}, (4, True, False)),
        (TWO_AGREE, (1, 1), {"filter": "hard"}, (2, True, False)),
        (TWO_AGREE, (1, 1), {"filter": "none"}, (2, True, False)),  # GDPO: the conflicting two have Σ = 0
        (CONSTANT, (0, 1), {"filter": "none"}, (0, False, True)),
        (ONE_VARIES, (0, 1), {"filter": "none"}, (0, False, True)),  # only a zero-weight dimension varies
    ],
)
def test_hand_worked_groups(group, weights, config, expected):
    assert verdict(group, weights, **config) == expected


def test_min_kept_counts_the_rollouts_with_signal():
    assert verdict(TWO_AGREE, filter="hard", min_kept=2)[1] is True
    assert verdict(TWO_AGREE, filter="hard", min_kept=3)[1] is False
    with pytest.raises(ValueError, match="min_kept must be an integer >= 1, got 0"):
        verdict(TWO_AGREE, min_kept=0)


def test_a_group_is_judged_alike_alone_and_in_a_batch():
    groups = [CONSTANT, ALL_CONFLICTING, SUM_CONSTANT, ONE_VARIES, TWO_AGREE]
    rewards = torch.tensor(sum(groups, []), dtype=torch.float64)
    ids = torch.arange(len(groups)).repeat_interleave(N) * 7  # any integer ids
    result = group_verdicts(rewards, ids, torch.full((len(rewards),), 5.0), GD2POConfig(filter="hard"))
    assert result.group_ids.tolist() == [0, 7, 14, 21, 28]
    assert result.signal_rollouts.tolist() == [verdict(g, filter="hard")[0] for g in groups] == [0, 0, 0, 4, 2]
    assert result.constant.tolist() == [True, False, False, False, False]


def strategy_for(reward_file, *extra):
    return openrlhf_strategy(
        [
            "--advantage_estimator",
            extra[0] if extra else "gd2po",
            "--reward.remote_url",
            reward_file,
            "--gd2po.reward_keys",
            *KEYS,
            "--gd2po.reward_weights",
            "1",
            "0.5",
            "--rollout.n_samples_per_prompt",
            str(N),
            "--rollout.micro_batch_size",
            "3",
            "--algo.kl.init_coef",
            "0",
            "--gd2po.dynamic_sampling",
            *extra[1:],
        ]
    )


@pytest.mark.parametrize(
    "estimator_flags, expected",
    [
        (("gd2po", "--gd2po.filter", "hard"), ["rejected_constant", "rejected_filtered", "passed"]),
        (("gdpo",), ["rejected_constant", "passed", "passed"]),
        # GRPO on the weighted sum (DAPO's test): the sum-constant group has no signal at all.
        (("gdpo", "--gd2po.sum_rewards"), ["rejected_constant", "rejected_constant", "passed"]),
    ],
)
def test_judge_group_reads_the_experiences_reward_columns(reward_file, estimator_flags, expected):
    settings = resolve_settings(strategy_for(reward_file, *estimator_flags).args)
    groups = [CONSTANT, SUM_CONSTANT, TWO_AGREE]
    samples = rollout_experiences(
        torch.tensor(sum(groups, []), dtype=torch.float32), torch.full((12,), 5), N, 3, reward_keys=KEYS
    )
    assert [judge_group(samples[i : i + N], settings) for i in range(0, 12, N)] == expected


def test_a_bad_reward_rejects_its_group(reward_file):
    settings = resolve_settings(strategy_for(reward_file, "gd2po", "--gd2po.on_bad_reward", "drop_group").args)
    rewards = torch.tensor(TWO_AGREE, dtype=torch.float32)
    rewards[2, 1] = math.nan  # the marker _process_response_into_experience gives a bad remote reward
    samples = rollout_experiences(rewards, torch.full((N,), 5), N, 3, reward_keys=KEYS)
    assert judge_group(samples, settings) == "rejected_bad_reward"


def test_the_tally_writes_openrlhfs_range_test_into_the_scores(reward_file):
    settings = resolve_settings(strategy_for(reward_file, "gd2po", "--gd2po.filter", "hard").args)
    groups = [CONSTANT, TWO_AGREE, ALL_CONFLICTING]
    samples = rollout_experiences(
        torch.tensor(sum(groups, []), dtype=torch.float32), torch.full((12,), 5), N, 3, reward_keys=KEYS
    )
    low, high = (0.0, 1.0)  # OpenRLHF's default --algo.dynamic_filtering_range
    tally = GroupTally(settings, N, (low, high))
    verdicts = [tally.add(sample) for sample in samples]
    assert verdicts == [None] * 3 + ["rejected_constant"] + [None] * 3 + ["passed"] + [None] * 3 + [
        "rejected_filtered"
    ]
    # OpenRLHF keeps a group when low < mean(scores) < high (0.11.2), and also std(scores) > threshold (PR #1272).
    scores = [[float(s.scores[0]) for s in samples[i : i + N]] for i in range(0, 12, N)]
    assert [keeps_by_range(group, low, high) for group in scores] == [False, True, False]
    assert [keeps_by_range_and_spread(group, low, high, 0.0, True) for group in scores] == [False, True, False]
    assert tally.counts == SamplingCounts(
        prompts_consumed=0, passed=1, rejected_constant=1, rejected_filtered=1, generated_rollouts=12
    )


def keeps_by_range(scores, low, high) -> bool:
    """OpenRLHF 0.11.2's dynamic filter (samples_generator.py:169-177): the group's mean score strictly inside."""
    return low < sum(scores) / len(scores) < high


def keeps_by_range_and_spread(scores, low, high, threshold, unbiased) -> bool:
    """OpenRLHF PR #1272's: the range test, then a group whose score std is <= the threshold is dropped too."""
    return keeps_by_range(scores, low, high) and float(torch.tensor(scores).std(unbiased=unbiased)) > threshold


@pytest.mark.parametrize("score_range", [(0.0, 1.0), (-1.0, 1.0), (0.2, 0.3), (-5.0, 100.0)])
@pytest.mark.parametrize("n_samples", [2, 3, 4, 7, 16, 64])
def test_the_verdict_keeps_the_same_groups_under_the_range_rule_and_the_std_rule(score_range, n_samples):
    low, high = score_range
    for passed in (True, False):
        scores = verdict_scores(passed, n_samples, score_range).tolist()
        assert keeps_by_range(scores, low, high) is passed
        for threshold in (0.0, 1e-6, 1e-3):
            for unbiased in (True, False):
                assert keeps_by_range_and_spread(scores, low, high, threshold, unbiased) is passed


def test_the_tally_refuses_rollouts_of_different_prompts_as_one_group(reward_file):
    settings = resolve_settings(strategy_for(reward_file).args)
    samples = rollout_experiences(
        torch.tensor(TWO_AGREE * 2, dtype=torch.float32), torch.full((8,), 5), N, 3, reward_keys=KEYS
    )
    tally = GroupTally(settings, N, (0.0, 1.0))
    with pytest.raises(RuntimeError, match="they belong to 2 prompts"):
        for sample in samples[2:6]:
            tally.add(sample)


def test_sampling_metrics():
    counts = SamplingCounts(
        prompts_consumed=10,
        passed=4,
        rejected_constant=3,
        rejected_filtered=2,
        rejected_bad_reward=1,
        generated_rollouts=40,
        filler_rollouts=8,
    )
    assert sampling_metrics(counts, trained_rollouts=8) == {
        "gd2po/dynamic_sampling/prompts_consumed": 10.0,
        "gd2po/dynamic_sampling/rejected_constant": 3.0,
        "gd2po/dynamic_sampling/rejected_filtered": 2.0,
        "gd2po/dynamic_sampling/rejected_bad_reward": 1.0,
        "gd2po/dynamic_sampling/pass_rate": 0.4,
        "gd2po/dynamic_sampling/generated_rollouts": 40.0,
        "gd2po/dynamic_sampling/filler_rollouts": 8.0,
        "gd2po/dynamic_sampling/generated_per_trained_rollout": 5.0,
    }
    assert SamplingCounts(passed=1, generated_rollouts=4) + SamplingCounts(rejected_constant=2) == SamplingCounts(
        passed=1, rejected_constant=2, generated_rollouts=4
    )


def test_the_counts_that_ride_on_the_rollouts_are_logged_by_the_maker(reward_file):
    strategy = strategy_for(reward_file, "gd2po", "--gd2po.filter", "hard")
    maker = experience_maker(strategy)
    samples = rollout_experiences(
        torch.tensor(TWO_AGREE * 2, dtype=torch.float32), torch.full((8,), 5), N, 3, reward_keys=KEYS
    )
    counts = SamplingCounts(prompts_consumed=5, passed=2, rejected_constant=3, generated_rollouts=20)
    setattr(samples[0], COUNTS_ATTRIBUTE, counts)
    maker.compute_advantages_and_returns(maker.split_rollout_samples(samples))
    metrics = maker.take_step_report().metrics
    # 2 groups × 2 kept rollouts (TWO_AGREE under the hard filter): 20 generated / 4 trained.
    assert metrics["gd2po/dynamic_sampling/generated_per_trained_rollout"] == 5.0
    assert metrics["gd2po/dynamic_sampling/pass_rate"] == 0.4
    assert metrics["gd2po/dynamic_sampling/prompts_consumed"] == 5.0
    # The next step without counts (a batch served from the generator's buffer) logs none.
    served = rollout_experiences(
        torch.tensor(TWO_AGREE * 2, dtype=torch.float32), torch.full((8,), 5), N, 3, reward_keys=KEYS
    )
    maker.compute_advantages_and_returns(maker.split_rollout_samples(served))
    assert not any(name.startswith("gd2po/dynamic_sampling/") for name in maker.take_step_report().metrics)


@st.composite
def candidate_groups(draw):
    """4 to 8 prompt groups of N rollouts, two dimensions with values in {0, 0.5, 1}, lengths 1..6."""
    num_groups = draw(st.integers(4, 8))
    values = draw(st.lists(st.sampled_from([0.0, 0.5, 1.0]), min_size=num_groups * N * 2, max_size=num_groups * N * 2))
    lengths = draw(st.lists(st.integers(1, 6), min_size=num_groups * N, max_size=num_groups * N))
    return torch.tensor(values).reshape(-1, 2), torch.tensor(lengths)


@pytest.fixture(scope="module")
def snr_strategy(reward_file):
    return strategy_for(reward_file, "gd2po", "--gd2po.filter", "snr", "--gd2po.dynamic_sampling_min_kept", "2")


@settings(max_examples=40, deadline=None)
@given(batch=candidate_groups())
def test_an_assembled_batch_trains_on_the_estimators_advantages_of_that_batch(snr_strategy, batch):
    rewards, lengths = batch
    strategy = snr_strategy
    run = resolve_settings(strategy.args)
    samples = rollout_experiences(rewards, lengths, N, 3, reward_keys=KEYS)
    tally = GroupTally(run, N, (0.0, 1.0))
    passed = [tally.add(sample) for sample in samples][N - 1 :: N]
    kept_groups = [g for g, v in enumerate(passed) if v == "passed"]
    if not kept_groups:
        return
    rows = torch.cat([torch.arange(g * N, (g + 1) * N) for g in kept_groups])
    assembled = [samples[i] for i in rows.tolist()]
    maker = experience_maker(strategy)
    out = maker.compute_advantages_and_returns(maker.split_rollout_samples(assembled))

    config = GD2POConfig(filter="snr", weights=(1.0, 0.5), reward_keys=tuple(KEYS))
    group_ids = torch.arange(len(rows)) // N
    expected = compute_rollout_advantages(rewards[rows], group_ids, lengths[rows], config)
    got = torch.cat([e.advantages.sum(-1) / e.action_mask.sum(-1) for e in out])
    order = torch.cat([torch.tensor(e.index) for e in out])
    torch.testing.assert_close(got, expected.rollout_advantages[order], atol=1e-6, rtol=1e-6)
    # Every assembled group still has ≥ min_kept (2) kept rollouts with a non-zero score in the batch.
    unwhitened = compute_rollout_advantages(
        rewards[rows], group_ids, lengths[rows], GD2POConfig(filter="snr", weights=(1.0, 0.5), whiten=False)
    )
    signal = unwhitened.keep & ((unwhitened.rollout_advantages.double() * lengths[rows]).abs() > 1e-8)
    assert (torch.zeros(len(kept_groups), dtype=torch.long).index_add_(0, group_ids, signal.long()) >= 2).all()
