"""Edge cases and invalid input of the estimator core."""

import dataclasses
import math
import subprocess
import sys

import pytest
import torch

from gd2po_openrlhf import GD2POConfig, compute_advantages, compute_rollout_advantages

HARD = GD2POConfig(filter="hard")
SNR = GD2POConfig(filter="snr", snr_threshold=0.8)
GDPO = GD2POConfig(filter="none", reweight_queries=False)


def full_mask(batch_size, num_tokens=4):
    return torch.ones(batch_size, num_tokens)


def assert_finite(result):
    assert torch.isfinite(result.advantages).all()
    assert all(math.isfinite(value) for value in result.metrics.values()), result.metrics


@pytest.mark.parametrize("cfg", [HARD, SNR])
def test_every_rollout_filtered_gives_zero_advantages(cfg):
    # Perfectly anti-correlated dimensions: every rollout with a non-zero advantage is mixed-sign, and
    # |ratio| = 0 < τ, so the SNR test drops them too.
    rewards = torch.tensor([[1.0, -1.0], [-1.0, 1.0], [2.0, -2.0], [-2.0, 2.0]])
    result = compute_advantages(rewards, torch.tensor([0, 0, 1, 1]), full_mask(4), cfg)
    assert not result.keep.any()
    assert torch.equal(result.advantages, torch.zeros(4, 4))
    assert result.group_keep_ratio.tolist() == [0.0] * 4
    assert result.metrics["dropped_ratio"] == 1.0 and result.metrics["conflict_ratio"] == 1.0
    assert_finite(result)


def test_one_kept_token_gives_zero_not_an_exception():
    # Rollout 0 is kept with a one-token response, rollout 1 has no tokens: one kept token in the batch,
    # where the reference's unbiased variance divides by zero.
    rewards = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    mask = torch.tensor([[1, 0, 0], [0, 0, 0]])
    result = compute_advantages(rewards, torch.tensor([0, 0]), mask, HARD)
    assert result.keep.all()
    assert torch.equal(result.advantages, torch.zeros(2, 3))
    assert_finite(result)


def test_constant_group_gets_exact_zero_advantage():
    # Group 0 is constant in both dimensions: rounding of its float mean must not leak into advantages.
    rewards = torch.tensor([[0.1, 0.7]] * 8 + [[0.0, 1.0], [1.0, 0.0], [0.5, 0.5], [1.0, 1.0]] * 2)
    group_ids = torch.tensor([0] * 8 + [1] * 8)
    result = compute_advantages(rewards, group_ids, full_mask(16), GD2POConfig(filter="none", whiten=False))
    assert torch.equal(result.dimension_advantages[:8], torch.zeros(8, 2, dtype=torch.float64))
    assert torch.equal(result.advantages[:8], torch.zeros(8, 4))
    assert result.advantages[8:].abs().sum() > 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("norm_by_std", [True, False])
def test_a_constant_dimension_is_exactly_zero_at_any_magnitude_and_group_size(dtype, norm_by_std):
    """The tie rule alone zeroes constant dimensions: values from subnormal to the 1e15 reward bound, negative
    ones, groups of 2 to 1000 rollouts, in a batch where the other dimension varies."""
    values = [5e-324 if dtype == torch.float64 else 1e-45, 1e-30, 0.1, 1 / 3, -0.7, 12345.678, -9.87e14, 1e15]
    sizes = [2, 3, 7, 64, 1000]
    rows, group_ids = [], []
    for group, (value, size) in enumerate((v, n) for v in values for n in sizes):
        rows += [[value, float(i % 2)] for i in range(size)]
        group_ids += [group] * size
    rewards = torch.tensor(rows, dtype=dtype)
    cfg = GD2POConfig(filter="none", whiten=False, norm_by_std=norm_by_std)
    result = compute_advantages(rewards, torch.tensor(group_ids), torch.ones(len(rows), 1), cfg)
    assert torch.equal(result.dimension_advantages[:, 0], torch.zeros(len(rows), dtype=torch.float64))
    assert bool((result.dimension_advantages[:, 1] != 0).all())


def test_zero_length_responses():
    rewards = torch.tensor([[1.0, -1.0], [-1.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
    mask = torch.tensor([[0, 0, 0], [1, 1, 0], [0, 0, 0], [1, 1, 1]])
    for cfg in (HARD, SNR, GDPO):
        result = compute_advantages(rewards, torch.tensor([0, 0, 1, 1]), mask, cfg)
        assert_finite(result)
        assert torch.equal(result.advantages[[0, 2]], torch.zeros(2, 3))
        # No tokens, no token sums: a zero-length rollout is never counted as conflicting (as the reference).
        assert not result.conflict[0]


def test_all_zero_length_batch():
    result = compute_advantages(torch.tensor([[1.0], [0.0]]), torch.tensor([3, 3]), torch.zeros(2, 5), SNR)
    assert torch.equal(result.advantages, torch.zeros(2, 5))
    assert_finite(result)


def test_groups_in_any_order_and_sizes():
    # Interleaved ids, sizes 2, 3 and 5, arbitrary id values.
    group_ids = torch.tensor([7, -2, 7, 100, -2, 100, 100, -2, 100, 100])
    rewards = torch.arange(20, dtype=torch.float32).reshape(10, 2) % 7
    result = compute_advantages(rewards, group_ids, full_mask(10), GD2POConfig(filter="none", whiten=False))
    for gid in (7, -2, 100):
        members = group_ids == gid
        dim_adv = result.dimension_advantages[members]
        torch.testing.assert_close(dim_adv.mean(0), torch.zeros(2, dtype=torch.float64), atol=1e-9, rtol=0)
        group = rewards[members].double()
        expected = (group - group.mean(0)) / (group.std(0) + 1e-6)
        torch.testing.assert_close(dim_adv, expected)


def test_integer_rewards_and_bool_mask():
    rewards = torch.tensor([[1, 0], [0, 1], [1, 1], [0, 0]])
    mask = torch.tensor([[True, True], [True, False], [True, True], [False, True]])
    result = compute_advantages(rewards, torch.tensor([0, 0, 0, 0]), mask, HARD)
    assert result.keep.tolist() == [False, False, True, True]
    assert result.advantages.dtype == torch.float32


def test_unweighted_sum_without_filter_matches_formula():
    rewards = torch.tensor([[1.0, 3.0], [2.0, 1.0], [4.0, 2.0], [0.0, 0.0]])
    cfg = GD2POConfig(filter="none", whiten=False, weights=(2.0, -0.5))
    result = compute_advantages(rewards, torch.zeros(4, dtype=torch.long), full_mask(4, 2), cfg)
    normalized = (rewards - rewards.mean(0)) / (rewards.std(0) + 1e-6)
    expected = (normalized * torch.tensor([2.0, -0.5])).sum(1)
    torch.testing.assert_close(result.advantages[:, 0], expected)
    torch.testing.assert_close(result.advantages[:, 1], expected)


def test_reweighting_scales_by_group_keep_ratio():
    # Group 0: rollout 0 conflicts (dim0 up, dim1 down) and is dropped by the hard test, κ = 2/3.
    rewards = torch.tensor([[2.0, 0.0], [0.0, 0.0], [1.0, 3.0], [0.0, 1.0], [1.0, 0.0]])
    group_ids = torch.tensor([0, 0, 0, 1, 1])
    with_kappa = compute_advantages(rewards, group_ids, full_mask(5, 1), GD2POConfig(filter="hard", whiten=False))
    without = compute_advantages(
        rewards, group_ids, full_mask(5, 1), GD2POConfig(filter="hard", whiten=False, reweight_queries=False)
    )
    assert with_kappa.keep.tolist() == [False, True, True, False, False]
    assert with_kappa.group_keep_ratio.tolist() == pytest.approx([2 / 3] * 3 + [0.0] * 2)
    torch.testing.assert_close(with_kappa.advantages[1:3], without.advantages[1:3] * (2 / 3))
    assert with_kappa.metrics["group_keep_ratio_mean"] == pytest.approx(1 / 3)
    assert with_kappa.metrics["group_keep_ratio_min"] == 0.0
    assert with_kappa.metrics["group_keep_ratio_max"] == pytest.approx(2 / 3)
    assert with_kappa.metrics["score_abs_mean_after_filter"] < with_kappa.metrics["score_abs_mean_before_filter"]


def test_metrics_names_and_values():
    rewards = torch.tensor([[1.0, -1.0], [-1.0, 1.0], [1.0, 1.0], [-1.0, -1.0]])
    cfg = GD2POConfig(filter="snr", snr_threshold=0.5, reward_keys=("correctness", "format"))
    result = compute_advantages(rewards, torch.tensor([0, 0, 1, 1]), full_mask(4), cfg)
    metrics = result.metrics
    assert metrics["num_reward_dims"] == 2 and metrics["num_groups"] == 2
    assert metrics["conflict_ratio"] == 0.5 and metrics["dropped_ratio"] == 0.5 and metrics["keep_ratio"] == 0.5
    assert metrics["dropped_among_conflicting"] == 1.0
    assert metrics["snr_threshold"] == 0.5
    assert metrics["snr_ratio_abs_mean"] == pytest.approx(0.0, abs=1e-6)
    assert metrics["reward_mean/correctness"] == 0.0 and metrics["reward_std/format"] == 1.0
    # The dropped rollouts have a zero signed sum, and κ = 1 for the other group: nothing changes.
    assert metrics["score_abs_mean_after_filter"] == pytest.approx(metrics["score_abs_mean_before_filter"])
    assert GD2POConfig(filter="hard").effective_snr_threshold == 1.0
    assert GD2POConfig(filter="none").effective_snr_threshold == 0.0


@pytest.mark.parametrize(
    "rewards, group_ids, mask, cfg, message",
    [
        ([[1.0], [2.0], [3.0]], [0, 0, 1], full_mask(3), SNR, r"group_ids \[1\] have a single rollout"),
        ([[1.0], [2.0]], [0, 0, 0], full_mask(2), SNR, r"group_ids must be \[2\]"),
        (
            [[1.0], [2.0]],
            [0, 0],
            full_mask(3),
            SNR,
            r"response_mask must be \[num_rollouts, num_tokens\] with one row per rollout",
        ),
        ([1.0, 2.0], [0, 0], full_mask(2), SNR, r"rewards must be \[num_rollouts, num_reward_dims\]"),
        (
            [[1.0, 0.0], [float("nan"), 1.0]],
            [0, 0],
            full_mask(2),
            SNR,
            r"rollout 1 \(group 0\) for dimension 'dim0' is nan",
        ),
        (
            [[1.0, 0.0], [2.0, float("inf")]],
            [0, 0],
            full_mask(2),
            GD2POConfig(reward_keys=("correctness", "format")),
            r"rollout 1 \(group 0\) for dimension 'format' is inf",
        ),
        ([[1e16], [0.0]], [0, 0], full_mask(2), SNR, r"\|r\| <= 1e\+15"),
        ([[1.0, 0.0], [2.0, 1.0]], [0, 0], full_mask(2), GD2POConfig(weights=(1.0,)), r"cfg.weights has 1 entries"),
        ([[1.0], [2.0]], [0.0, 0.0], full_mask(2), SNR, r"group_ids must be an integer tensor"),
        ([[1.0], [2.0]], [0, 0], torch.full((2, 2), 0.5), SNR, r"response_mask must be 0/1; rollout 0 token 0"),
        (torch.zeros(0, 2), torch.zeros(0, dtype=torch.long), torch.zeros(0, 3), SNR, r"rewards is empty"),
        ([["a"], ["b"]], [0, 0], full_mask(2), SNR, r"rewards cannot be converted to a tensor"),
        ([[1.0], [2.0]], [0, 0], full_mask(2), "snr", r"cfg must be a GD2POConfig"),
    ],
)
def test_invalid_input_raises_value_error_naming_the_problem(rewards, group_ids, mask, cfg, message):
    with pytest.raises(ValueError, match=message):
        compute_advantages(rewards, group_ids, mask, cfg)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"snr_threshold": 1.5}, r"snr_threshold \(τ\) must lie in \[0, 1\], got 1.5"),
        ({"snr_threshold": -0.1}, r"must lie in \[0, 1\]"),
        ({"snr_threshold": float("nan")}, r"snr_threshold must be a finite number"),
        ({"snr_eps": -1e-8}, r"snr_eps must be >= 0"),
        ({"filter": "soft"}, r"filter must be one of \('none', 'hard', 'snr'\), got 'soft'"),
        ({"weights": (1.0, float("inf"))}, r"weights\[1\] must be a number"),
        ({"weights": "1,2"}, r"weights must be a sequence"),
        ({"weights": (1.0, 2.0), "reward_keys": ("a",)}, r"2 weights \[1.0, 2.0\] for 1 reward keys \['a'\]"),
        ({"reward_keys": ("a", "a")}, r"duplicate names: \['a'\]"),
        ({"reward_keys": ("a", "")}, r"non-empty strings"),
    ],
)
def test_invalid_config_raises_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GD2POConfig(**kwargs)


@pytest.mark.subprocess
def test_estimator_imports_no_framework():
    """The core must stay importable without openrlhf, ray or deepspeed being loaded."""
    code = (
        "import sys; from gd2po_openrlhf import GD2POConfig, compute_advantages; "
        "bad = [m for m in ('openrlhf', 'ray', 'deepspeed', 'transformers', 'vllm') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    torch.manual_seed(0)
    rewards = torch.randn(64, 3)
    group_ids = torch.arange(16).repeat_interleave(4)
    mask = (torch.rand(64, 32) > 0.3).float()
    cpu = compute_advantages(rewards, group_ids, mask, SNR)
    gpu = compute_advantages(rewards.cuda(), group_ids.cuda(), mask.cuda(), SNR)
    assert gpu.advantages.is_cuda
    torch.testing.assert_close(gpu.advantages.cpu(), cpu.advantages, atol=1e-5, rtol=0)
    assert torch.equal(gpu.keep.cpu(), cpu.keep)


def test_rollout_form_matches_token_form():
    torch.manual_seed(0)
    rewards = torch.randint(0, 3, (12, 3)).float()
    group_ids = torch.arange(3).repeat(4)
    mask = (torch.arange(9) < torch.randint(0, 10, (12, 1))).float()
    token_form = compute_advantages(rewards, group_ids, mask, SNR)
    rollout_form = compute_rollout_advantages(rewards, group_ids, mask.sum(1), SNR)
    assert rollout_form.advantages is None
    torch.testing.assert_close(rollout_form.rollout_advantages.unsqueeze(1) * mask, token_form.advantages)
    assert rollout_form.metrics == token_form.metrics


@pytest.mark.parametrize("lengths", [[3.0, -1.0], [3.0, float("nan")]])
def test_rollout_form_rejects_bad_lengths(lengths):
    with pytest.raises(ValueError, match="response length of rollout 1"):
        compute_rollout_advantages([[1.0], [0.0]], [0, 0], lengths, SNR)


def test_hard_sign_test_weights_advantages_by_response_length():
    """One group, hard filter. Dimension 0 = [-1, 1, 1e-10] gives rollout 2 a tiny positive advantage
    ((1e-10 − 1e-10/3) / std ≈ 5.8e-11), dimension 1 = [0, 0, -1] a negative one. Alone 5.8e-11 is below the
    1e-8 sign threshold, but over 1000 tokens A·L ≈ 5.8e-8 is above it: rollout 2 is mixed-sign, as in the
    authors' code. Rollout 0 (A0 < 0 < A1) conflicts too; rollout 1 (both positive) is kept."""
    rewards = torch.tensor([[-1.0, 0.0], [1.0, 0.0], [1e-10, -1.0]])
    result = compute_rollout_advantages(
        rewards, torch.tensor([0, 0, 0]), torch.tensor([10.0, 10.0, 1000.0]), GD2POConfig(filter="hard")
    )
    assert result.keep.tolist() == [False, True, False]
    assert (
        result.dimension_advantages[2, 0] > 0
        and result.dimension_advantages[2, 0] * 1000 > 1e-8 > result.dimension_advantages[2, 0]
    )


def test_a_reward_equal_to_its_group_mean_in_float32_is_a_tie():
    """Correctness [-3, 3, -3, 3] and length rewards [.23, .10, .39, .20] stored as float32 (as OpenRLHF stores
    them). In decimal the length mean is exactly .23, so rollout 0's length advantage is 0 and, with a negative
    correctness advantage only, it is not mixed-sign: hard keeps it. Rollouts 1-3 have length advantages of the
    opposite sign to their correctness advantages (.10 and .20 below the mean with correctness +3; .39 above
    with −3): all three conflict."""
    length_rewards = torch.tensor([0.23, 0.10, 0.39, 0.20], dtype=torch.float32)
    # The float64 mean of the float32 values is not exactly the float32 .23: the case the tie rule is for.
    assert length_rewards.double().mean() != length_rewards.double()[0]
    rewards = torch.stack([torch.tensor([-3.0, 3.0, -3.0, 3.0]), length_rewards], dim=1)
    result = compute_rollout_advantages(
        rewards, torch.tensor([0, 0, 0, 0]), torch.tensor([361.0, 200.0, 300.0, 250.0]), GD2POConfig(filter="hard")
    )
    assert result.dimension_advantages[0, 1] == 0
    assert result.keep.tolist() == [True, False, False, False]


@pytest.mark.parametrize("offset_ulps", [1.5, 2, 8, 1000])
def test_the_tie_rule_never_zeroes_or_flips_a_difference_above_one_float32_ulp(offset_ulps):
    """Two float32 rewards more than one ulp apart keep their true order: + for the larger, − for the smaller."""
    base = 0.7
    rewards = torch.tensor([[base], [base + offset_ulps * 2.0**-23 * base * 2]], dtype=torch.float32)
    result = compute_rollout_advantages(
        rewards, torch.tensor([0, 0]), torch.tensor([5.0, 5.0]), GD2POConfig(filter="none")
    )
    assert result.dimension_advantages[0, 0] < 0 < result.dimension_advantages[1, 0]


@pytest.mark.parametrize(
    "dtype", [torch.bool, torch.uint8, torch.int64, torch.float16, torch.bfloat16, torch.float32, torch.float64]
)
def test_a_zero_one_mask_of_any_dtype_gives_the_float32_masks_advantages(dtype):
    rewards, groups = torch.rand(8, 2, generator=torch.Generator().manual_seed(1)), torch.arange(8) // 4
    lengths = torch.tensor([3, 7, 1, 0, 5, 6, 2, 4])
    mask = torch.arange(7) < lengths.unsqueeze(1)
    expected = compute_advantages(rewards, groups, mask.float(), SNR).advantages
    given = mask.to(dtype)
    assert torch.equal(compute_advantages(rewards, groups, given, SNR).advantages, expected)
    # The advantages are written into the call's own float32 copy, never into the caller's mask.
    assert given.dtype == dtype and torch.equal(given, mask.to(dtype))


@pytest.mark.parametrize(
    "value", [0.5, 1 - 2**-24, 2**-149, 1e-30, 1.0000001, 2.0, -1.0, float("nan"), float("inf"), -float("inf")]
)
@pytest.mark.parametrize("position", [(0, 0), (5, 900), (31, 1023)])
def test_any_single_value_that_is_not_0_or_1_is_refused_naming_its_position(value, position):
    """The 0/1 test on long rows of ones: every single odd value is found, the smallest subnormal and the float just
    below 1 included."""
    mask = (torch.arange(1024) < torch.randint(600, 1025, (32, 1), generator=torch.Generator().manual_seed(0))).float()
    mask[position] = value
    groups = torch.arange(32) // 4
    with pytest.raises(ValueError, match=rf"response_mask must be 0/1; rollout {position[0]} token {position[1]} is"):
        compute_advantages(torch.rand(32, 2), groups, mask, SNR)


def test_minus_infinity_whose_bit_pattern_cancels_modulo_2_32_is_refused():
    """-inf beside 383 ones sums to bit pattern 0 modulo 2^32, the same as the int64 cast of the -inf length times
    b(1.0): a one-pass test on summed bit patterns (the estimator's earlier one) needs a bound test on the lengths
    to catch it."""
    mask = torch.zeros(4, 1024)
    mask[:, :2] = 1.0
    mask[2, :383] = 1.0
    mask[2, 500] = -float("inf")
    assert mask[2].view(torch.int32).sum(dtype=torch.int32) == 0
    with pytest.raises(ValueError, match=r"response_mask must be 0/1; rollout 2 token 500 is -inf"):
        compute_advantages(torch.rand(4, 2), torch.tensor([0, 0, 1, 1]), mask, SNR)


def test_negative_zero_is_a_zero_in_the_mask():
    mask = torch.tensor([[1.0, -0.0], [1.0, 1.0], [-0.0, 1.0], [1.0, 0.0]])
    rewards = torch.tensor([[1.0], [0.0], [1.0], [0.0]])
    result = compute_advantages(rewards, torch.tensor([0, 0, 1, 1]), mask, SNR)
    assert torch.equal(
        result.advantages, compute_advantages(rewards, torch.tensor([0, 0, 1, 1]), mask.abs(), SNR).advantages
    )


# ---- the mass diagnostics (issue 40), on hand-worked batches


def test_mass_diagnostics_on_a_hand_worked_batch():
    """One group, c = [1, 0, 1, 0] and f = [0, 1, 1, 0], weights (2, 1), one token each: both normalise to
    ±a (a = 0.5 / std, std = sqrt(1/3)), so M = (2a, -a), (-2a, a), (2a, a), (-2a, -a) and S = a, -a, 3a, -3a.
    Rows 0 and 1 conflict; the hard filter drops them and κ = 1/2 for the group."""
    rewards = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
    config = GD2POConfig(filter="hard", weights=(2.0, 1.0), reward_keys=("c", "f"))
    metrics = compute_rollout_advantages(rewards, torch.zeros(4, dtype=torch.long), torch.ones(4), config).metrics
    assert metrics["pair_conflict/c__f"] == pytest.approx(2 / 4)
    # net |S| = a + a + 3a + 3a = 8a of a total 3a per row, 12a
    assert metrics["pair_cancelled/c__f"] == pytest.approx(1 - 8 / 12)
    assert metrics["cancelled_mass_ratio"] == pytest.approx(1 - 8 / 12)
    assert metrics["filtered_mass_ratio"] == pytest.approx(2 / 8)  # the dropped rows carry a + a of 8a
    assert metrics["kappa_mass_ratio"] == pytest.approx(0.5)
    # SNR at τ = 0.3 keeps rows 0 and 1 (|S| / Σ|M| = 1/3 ≥ 0.3): nothing filtered, κ = 1
    config = dataclasses.replace(config, filter="snr", snr_threshold=0.3)
    metrics = compute_rollout_advantages(rewards, torch.zeros(4, dtype=torch.long), torch.ones(4), config).metrics
    assert (metrics["filtered_mass_ratio"], metrics["kappa_mass_ratio"]) == (0.0, pytest.approx(1.0))
    assert metrics["cancelled_mass_ratio"] == pytest.approx(1 - 8 / 12)  # the same advantages


def test_mass_diagnostics_name_every_pair_and_weigh_by_tokens():
    # three keys: pairs a__b, a__c, b__c; c is constant (no mass), a and b agree on rollout 0 and disagree on 1
    rewards = torch.tensor([[1.0, 1.0, 5.0], [0.0, 1.0, 5.0], [1.0, 0.0, 5.0], [0.0, 0.0, 5.0]])
    config = GD2POConfig(filter="none", reward_keys=("a", "b", "c"))
    lengths = torch.tensor([1.0, 3.0, 1.0, 1.0])
    metrics = compute_rollout_advantages(rewards, torch.zeros(4, dtype=torch.long), lengths, config).metrics
    pairs = sorted(name for name in metrics if name.startswith("pair_"))
    assert pairs == [f"pair_{kind}/{pair}" for kind in ("cancelled", "conflict") for pair in ("a__b", "a__c", "b__c")]
    assert metrics["pair_conflict/a__b"] == pytest.approx(2 / 4) and metrics["pair_conflict/a__c"] == 0.0
    # a, b = ±x each; tokens 1, 3, 1, 1: the two mixed rows (3 and 1 tokens) cancel 4 of 6 token-weights
    assert metrics["pair_cancelled/a__b"] == pytest.approx(4 / 6)
    assert metrics["pair_cancelled/a__c"] == 0.0 and metrics["filtered_mass_ratio"] == 0.0
    assert metrics["kappa_mass_ratio"] == 1.0


def test_one_dimension_has_no_mass_diagnostics():
    config = GD2POConfig(filter="none", reward_keys=("weighted_sum",))
    rewards = torch.tensor([[1.0], [0.0]])
    metrics = compute_rollout_advantages(rewards, torch.zeros(2, dtype=torch.long), torch.ones(2), config).metrics
    assert not [name for name in metrics if "mass" in name or name.startswith("pair_")]


# ---- --gd2po.reference_key: does the trained sum side with a held-out verifier where the trained rewards conflict?


def test_conflict_reference_agreement_on_a_hand_worked_batch():
    """Two groups of 4, trained keys a and b, reference ref (weight 0), no std normalisation:
    group 0: A_a = [2, -1, -1, 0], A_b = [-1, 2, -1, 0], A_ref = [0, -1, 0, 1]
      -> rollouts 0 and 1 conflict; 0 has a tied reference (not judged); 1 sums to +1 against ref -1: disagrees;
    group 1: A_a = [-2, 2, -1, 1], A_b = [1, -2, 0, 1], A_ref = [-1, 0, 0, 1]
      -> rollouts 0 and 1 conflict; 0 sums to -1 with ref -1: agrees; 1 has a tied reference.
    Judged 2, agreeing 1: 0.5. The reference changes no advantage."""
    rewards = torch.tensor(
        [[3, 0, 1], [0, 3, 0], [0, 0, 1], [1, 1, 2], [0, 3, 0], [4, 0, 1], [1, 2, 1], [3, 3, 2]], dtype=torch.float64
    )
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    lengths = torch.ones(8)
    config = GD2POConfig(
        filter="none", norm_by_std=False, weights=(1.0, 1.0, 0.0), reward_keys=("a", "b", "ref"), reference_key="ref"
    )
    result = compute_rollout_advantages(rewards, groups, lengths, config)
    assert result.conflict.tolist() == [True, True, False, False, True, True, False, False]
    assert result.metrics["conflict_reference_agreement"] == 0.5
    without = compute_rollout_advantages(rewards, groups, lengths, dataclasses.replace(config, reference_key=None))
    assert "conflict_reference_agreement" not in without.metrics
    assert torch.equal(result.rollout_advantages, without.rollout_advantages)


@pytest.mark.parametrize(
    "weights, reference_key, message",
    [
        ((1.0, 1.0, 0.5), "ref", "must have the weight 0"),
        ((1.0, 1.0, 0.0), "gold", "is not one of the reward keys"),
    ],
)
def test_a_reference_key_must_be_a_weight_zero_reward_key(weights, reference_key, message):
    with pytest.raises(ValueError, match=message):
        GD2POConfig(weights=weights, reward_keys=("a", "b", "ref"), reference_key=reference_key)


def test_a_what_if_filter_reports_the_mass_the_filter_would_remove_and_changes_nothing():
    """GDPO (filter none) with what_if_filter hard: the advantages are GDPO's, filtered_mass_ratio is what the hard
    filter removes in a run that applies it. Hand-worked: one group, A_a = [1, -1, 1, -1], A_b = [-3, 1, 1, 1]
    (no std normalisation): sums S = [-2, 0, 2, 0]; rollouts 0, 1 and 3 conflict; the hard filter removes
    |S_0| + |S_1| + |S_3| = 2 of Σ|S| = 4: 0.5."""
    rewards = torch.tensor([[1.0, -3.0], [-1.0, 1.0], [1.0, 1.0], [-1.0, 1.0]], dtype=torch.float64)
    groups, lengths = torch.zeros(4, dtype=torch.long), torch.ones(4)
    gdpo = GD2POConfig(filter="none", norm_by_std=False, reweight_queries=False)
    what_if = dataclasses.replace(gdpo, what_if_filter="hard")
    hard = dataclasses.replace(gdpo, filter="hard")
    result = compute_rollout_advantages(rewards, groups, lengths, what_if)
    plain = compute_rollout_advantages(rewards, groups, lengths, gdpo)
    assert torch.equal(result.rollout_advantages, plain.rollout_advantages) and bool(result.keep.all())
    assert plain.metrics["filtered_mass_ratio"] == 0.0
    assert result.metrics["filtered_mass_ratio"] == 0.5
    assert compute_rollout_advantages(rewards, groups, lengths, hard).metrics["filtered_mass_ratio"] == 0.5
    with pytest.raises(ValueError, match="what_if_filter must be 'hard' or 'snr' with filter 'none'"):
        dataclasses.replace(hard, what_if_filter="snr")
