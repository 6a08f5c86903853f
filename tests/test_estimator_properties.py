"""Invariants of the estimator that must hold for any input (hypothesis)."""

import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from gd2po_openrlhf import GD2POConfig, compute_advantages, compute_rollout_advantages

settings.register_profile("gd2po", max_examples=150, deadline=None)
settings.load_profile("gd2po")


@st.composite
def batches(draw, max_dims=4):
    """Rollouts in shuffled groups of sizes 2..6, K reward dimensions, ragged response masks.

    Rewards are multiples of 0.5 in [-3, 3] (binary and Likert-style rewards, as in tool calling): group
    means and differences are then exact, so the invariants below can be checked tightly.
    """
    num_groups = draw(st.integers(1, 5))
    sizes = draw(st.lists(st.integers(2, 6), min_size=num_groups, max_size=num_groups))
    num_dims = draw(st.integers(1, max_dims))
    num_tokens = draw(st.integers(1, 7))
    group_ids = torch.tensor([g * 13 - 20 for g, size in enumerate(sizes) for _ in range(size)])
    batch_size = len(group_ids)
    order = torch.tensor(draw(st.permutations(range(batch_size))))
    half_steps = draw(st.lists(st.integers(-6, 6), min_size=batch_size * num_dims, max_size=batch_size * num_dims))
    rewards = torch.tensor(half_steps, dtype=torch.float32).reshape(batch_size, num_dims) / 2
    bits = draw(st.lists(st.booleans(), min_size=batch_size * num_tokens, max_size=batch_size * num_tokens))
    mask = torch.tensor(bits).reshape(batch_size, num_tokens)
    return rewards, group_ids[order], mask


def configs(filters=("none", "hard", "snr")):
    return st.builds(
        GD2POConfig,
        filter=st.sampled_from(filters),
        snr_threshold=st.sampled_from([0.0, 0.3, 0.5, 0.8, 1.0]),
        snr_eps=st.sampled_from([1e-8, 1e-6]),
        norm_by_std=st.booleans(),
        whiten=st.booleans(),
        reweight_queries=st.booleans(),
    )


def assert_same(a, b, atol=0.0):
    if atol == 0.0:
        assert torch.equal(a.advantages, b.advantages)
    else:
        torch.testing.assert_close(a.advantages, b.advantages, atol=atol, rtol=atol)
    assert torch.equal(a.keep, b.keep)
    torch.testing.assert_close(a.group_keep_ratio, b.group_keep_ratio, atol=atol, rtol=0)


def with_changes(cfg, **changes):
    fields = {name: getattr(cfg, name) for name in cfg.__dataclass_fields__}
    return GD2POConfig(**{**fields, **changes})


@given(batches(), configs())
def test_outputs_are_finite_and_shaped(batch, cfg):
    rewards, group_ids, mask = batch
    result = compute_advantages(rewards, group_ids, mask, cfg)
    assert result.advantages.shape == mask.shape and result.advantages.dtype == torch.float32
    assert torch.isfinite(result.advantages).all()
    assert all(math.isfinite(value) for value in result.metrics.values())
    # Nothing outside the response, nothing on dropped rollouts.
    assert torch.equal(result.advantages[~mask], torch.zeros_like(result.advantages[~mask]))
    assert result.advantages[~result.keep].abs().sum() == 0
    if cfg.filter == "none":
        assert result.keep.all()
    assert ((result.group_keep_ratio >= 0) & (result.group_keep_ratio <= 1)).all()


@pytest.mark.parametrize("threshold, equivalent_filter", [(0.0, "none"), (1.0, "hard")])
@given(batches(), configs(filters=("snr",)))
def test_threshold_zero_equals_no_filter_and_one_equals_hard(threshold, equivalent_filter, batch, cfg):
    rewards, group_ids, mask = batch
    soft = compute_advantages(rewards, group_ids, mask, with_changes(cfg, snr_threshold=threshold))
    equivalent = compute_advantages(rewards, group_ids, mask, with_changes(cfg, filter=equivalent_filter))
    assert_same(soft, equivalent)


@given(batches(), configs(), st.randoms(use_true_random=False))
def test_permuting_rollouts_permutes_outputs(batch, cfg, rng):
    rewards, group_ids, mask = batch
    perm = list(range(len(group_ids)))
    rng.shuffle(perm)
    perm = torch.tensor(perm)
    base = compute_advantages(rewards, group_ids, mask, cfg)
    permuted = compute_advantages(rewards[perm], group_ids[perm], mask[perm], cfg)
    torch.testing.assert_close(permuted.advantages, base.advantages[perm], atol=1e-5, rtol=1e-5)
    assert torch.equal(permuted.keep, base.keep[perm])
    torch.testing.assert_close(permuted.group_keep_ratio, base.group_keep_ratio[perm])


@given(batches(), configs(), st.data())
def test_scaling_a_dimension_leaves_result_unchanged(batch, cfg, data):
    rewards, group_ids, mask = batch
    assume(cfg.norm_by_std)  # without std normalisation the advantage scales with the reward, by design
    dim = data.draw(st.integers(0, rewards.shape[1] - 1))
    scale = data.draw(st.sampled_from([0.25, 0.5, 2.0, 3.0, 10.0]))
    base = compute_advantages(rewards, group_ids, mask, cfg)
    # The 1e-6 std epsilon makes the invariance approximate: skip ratios within 1e-4 of τ.
    assume(not ((base.snr_ratio.abs() - cfg.snr_threshold).abs() < 1e-4).any())
    if cfg.whiten:
        # Whitening divides by the spread of the kept scores: where they (nearly) cancel to one value, it
        # amplifies the epsilon's ~1e-6 relative differences into O(1) ones. Skip those batches too.
        kappa = base.group_keep_ratio.double() if cfg.reweight_queries else 1.0
        scores = (base.dimension_advantages.sum(1) * kappa)[base.keep & mask.any(1)]
        assume(scores.numel() < 2 or float(scores.std()) > 1e-3)
    scaled_rewards = rewards.clone()
    scaled_rewards[:, dim] *= scale
    scaled = compute_advantages(scaled_rewards, group_ids, mask, cfg)
    assert_same(scaled, base, atol=1e-4)


@given(batches(), configs(), st.data())
def test_negative_weight_equals_negated_reward(batch, cfg, data):
    rewards, group_ids, mask = batch
    num_dims = rewards.shape[1]
    weights = data.draw(st.lists(st.sampled_from([0.5, 1.0, 2.0]), min_size=num_dims, max_size=num_dims))
    dim = data.draw(st.integers(0, num_dims - 1))
    negative_weights = list(weights)
    negative_weights[dim] = -weights[dim]
    negated_rewards = rewards.clone()
    negated_rewards[:, dim] = -negated_rewards[:, dim]
    as_cost = compute_advantages(rewards, group_ids, mask, with_changes(cfg, weights=tuple(negative_weights)))
    as_reward = compute_advantages(negated_rewards, group_ids, mask, with_changes(cfg, weights=tuple(weights)))
    assert_same(as_cost, as_reward, atol=1e-6)


@given(
    st.integers(2, 4),
    st.lists(
        st.floats(min_value=-(2.0**49), max_value=2.0**49, width=32),
        min_size=8,
        max_size=8,
    ),
    configs(),
)
def test_arbitrary_finite_rewards_give_finite_advantages(group_size, values, cfg):
    # Any float32 magnitude the estimator accepts, including subnormals and near-ties: never NaN/inf.
    rewards = torch.tensor(values[: (8 // group_size) * group_size], dtype=torch.float32).reshape(-1, 1)
    rewards = torch.cat([rewards, rewards.flip(0)], dim=1)
    group_ids = torch.arange(len(rewards)) // group_size
    result = compute_advantages(rewards, group_ids, torch.ones(len(rewards), 3), cfg)
    assert torch.isfinite(result.advantages).all()
    assert all(math.isfinite(value) for value in result.metrics.values())


@pytest.mark.parametrize("filter_name", ["none", "hard", "snr"])
@pytest.mark.parametrize("seed", range(5))
def test_a_dimension_with_weight_zero_is_logged_but_changes_nothing(filter_name, seed):
    """The recipes log ToolRL's format reward without training on it (weight 0): A' = 0 is neither sign in the
    conflict test and adds nothing to the SNR sums or the score, so the result equals the estimator without it."""
    generator = torch.Generator().manual_seed(seed)
    rewards = torch.randint(-3, 4, (32, 3), generator=generator).float()
    rewards[:, 2] = torch.rand(32, generator=generator).round(decimals=2)  # a length-like dimension
    groups = torch.arange(8).repeat_interleave(4)
    lengths = torch.randint(1, 50, (32,), generator=generator).float()
    with_zero = compute_rollout_advantages(
        rewards, groups, lengths, GD2POConfig(filter=filter_name, weights=(1.0, 0.0, 1.0))
    )
    without = compute_rollout_advantages(
        rewards[:, [0, 2]], groups, lengths, GD2POConfig(filter=filter_name, weights=(1.0, 1.0))
    )
    assert torch.equal(with_zero.keep, without.keep)
    assert torch.allclose(with_zero.rollout_advantages, without.rollout_advantages, atol=1e-6)
    assert torch.equal(with_zero.group_keep_ratio, without.group_keep_ratio)
    assert with_zero.metrics["reward_mean/dim1"] == pytest.approx(float(rewards[:, 1].mean()))  # still logged
