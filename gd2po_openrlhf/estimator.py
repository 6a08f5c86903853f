"""GD²PO advantage estimator: pure tensor math, no openrlhf import.

Notation: rollout i in prompt group g(i) of size G_g ≥ 2, reward dimension k, raw reward r[i,k],
weight w[k], response mask m[i,t], response length L_i = Σ_t m[i,t].

1. Per-dimension group normalisation (GDPO): A[i,k] = (r[i,k] − mean_g) / (std_g + 1e-6), std unbiased;
   with norm_by_std=False, A = r − mean_g. A dimension that is constant within a group gets A = 0 exactly,
   and a reward equal to its group mean at the precision it was stored with (OpenRLHF keeps rewards in
   float32) counts as tied: r − mean_g = 0 when |r − mean_g| ≤ 2⁻²³ · max(|r|, |mean_g|), one float32 ulp.
   The mean is taken in float64, where e.g. float32 [.23, .10, .39, .20] average to .23 + 5.5e-9: without
   the tie rule that rounding would give the first rollout a positive advantage and a spurious conflict. The
   rule also makes a constant dimension exactly 0: n equal values v sum to n·v within n·2⁻⁵³ relative, far
   inside one float32 ulp, so every r − mean_g is a tie (and the std is 0).
2. Weighting: A'[i,k] = w[k] · A[i,k].
3. Conflict (on token sums, as the authors test it): conflict_i = (∃k A'[i,k]·L_i > 1e-8) ∧
   (∃k A'[i,k]·L_i < −1e-8); a long response lifts a small advantage over the threshold.
4. SNR: ratio_i = Σ_k A'[i,k]·L_i / (Σ_k |A'[i,k]|·L_i + ε); a conflicting rollout is dropped when
   |ratio_i| < τ ("snr"), always ("hard", the τ = 1 case), or never ("none" = GDPO).
5. κ_g = (#kept in g) / G_g; sequence score S_i = κ_g(i) · Σ_k A'[i,k] (κ ≡ 1 without reweighting).
6. F[i,t] = S_i · keep_i · m[i,t]; whitening over W = keep·m of the whole batch:
   adv = (F − μ_W) / sqrt(σ²_W + 1e-8) · W, μ_W and σ²_W (Bessel over the token count) taken where W = 1;
   adv = 0 when fewer than two tokens are kept.

Dynamic sampling (:func:`group_verdicts`) tests each prompt group with steps 1–5 alone: they read only the
group's own rollouts, so a group's verdict is the same alone as in any batch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Dict, Optional, Sequence

import torch

from .config import GD2POConfig
from .rewards import MAX_ABS_REWARD

STD_EPS = 1e-6  # added to the group std, as GRPO/GDPO do
SIGN_EPS = 1e-8  # |A'·L| at or below this counts as neither sign in the conflict test
TIE_ULPS = 2.0**-23  # |r − mean_g| within one float32 ulp of max(|r|, |mean_g|) is a tie (step 1)
WHITEN_EPS = 1e-8


@dataclass
class GD2POResult:
    """Output of :func:`compute_advantages` / :func:`compute_rollout_advantages`, on the input's device.

    rollout_advantages: [B] float32, the advantage on every response token of each rollout (0 if dropped).
    advantages: [B, T] float32 token advantages, rollout_advantages × response mask (filled by
        :func:`compute_advantages`; None from :func:`compute_rollout_advantages`).
    keep: [B] bool, False for rollouts the filter dropped.
    group_keep_ratio: [B] float32, κ of each rollout's group: the share of the group's rollouts kept
        (reported even when ``reweight_queries`` is off and κ is not applied).
    dimension_advantages: [B, K] the weighted group-normalised advantages A'.
    conflict: [B] bool, rollouts whose A' have mixed signs.
    snr_ratio: [B] Σ_k A'·L / (Σ_k |A'|·L + ε), 0 where the denominator is 0.
    metrics: diagnostics as Python floats (see :func:`compute_advantages`).
    """

    rollout_advantages: torch.Tensor
    keep: torch.Tensor
    group_keep_ratio: torch.Tensor
    dimension_advantages: torch.Tensor
    conflict: torch.Tensor
    snr_ratio: torch.Tensor
    metrics: Dict[str, float]
    advantages: Optional[torch.Tensor] = None


def compute_advantages(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    response_mask: torch.Tensor,
    cfg: GD2POConfig,
) -> GD2POResult:
    """GD²PO/GDPO token advantages for a batch of rollouts (formulas in the module docstring).

    Args:
        rewards: [B, K] raw outcome rewards, one column per reward dimension (float or int).
        group_ids: [B] integer prompt-group id of each rollout; any order, any group size ≥ 2.
        response_mask: [B, T] 1 on response tokens, 0 elsewhere (bool or numeric).
        cfg: the estimator configuration.

    Raises:
        ValueError: naming the offending rollout, dimension or group for shapes that do not fit,
            non-finite rewards, groups with a single rollout, a mask that is not 0/1, or weights whose
            length differs from K.

    Metrics: see :func:`compute_rollout_advantages`.
    """
    response_mask = _as_tensor(response_mask, "response_mask")
    rewards = _as_tensor(rewards, "rewards")
    if response_mask.dim() != 2 or rewards.dim() < 1 or response_mask.shape[0] != rewards.shape[0]:
        raise ValueError(
            f"response_mask must be [num_rollouts, num_tokens] with one row per rollout of rewards "
            f"{tuple(rewards.shape)}, got {tuple(response_mask.shape)}"
        )
    if response_mask.is_complex():
        raise ValueError(f"response_mask must be 0/1, got dtype {response_mask.dtype}")
    given = response_mask.to(device=rewards.device)
    # One conversion up front: torch's sums and products on bool and integer tensors are 5-10x slower on CPU.
    response_mask = given.to(torch.float32)
    lengths = response_mask.sum(dim=1)
    if given.dtype != torch.bool:
        bad = (response_mask != 0) & (response_mask != 1)  # NaN is neither
        if bool(bad.any()):
            rollout, token = bad.nonzero()[0].tolist()
            raise ValueError(
                f"response_mask must be 0/1; rollout {rollout} token {token} is {given[rollout, token].item()}"
            )
    result = compute_rollout_advantages(rewards, group_ids, lengths, cfg)
    column = result.rollout_advantages.unsqueeze(1)
    # A converted mask is this call's own copy: writing the advantages into it keeps to one [B, T] allocation.
    converted = given.dtype != torch.float32
    result.advantages = response_mask.mul_(column) if converted else column * response_mask
    return result


def compute_rollout_advantages(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    response_lengths: torch.Tensor,
    cfg: GD2POConfig,
) -> GD2POResult:
    """The same estimator from response lengths instead of a mask.

    F[i, t] is constant along each response, so everything, whitening included, is a function of the
    per-rollout score and its length L_i: the token advantages are ``rollout_advantages[i]`` on each of
    the L_i response tokens. The OpenRLHF integration uses this form, since its micro-batches have
    different widths.

    Args:
        rewards: [B, K] raw outcome rewards; group_ids: [B] prompt-group ids; response_lengths: [B]
        number of response tokens of each rollout (≥ 0); cfg: the estimator configuration.

    Metrics (Python floats): num_reward_dims, num_groups, snr_threshold (the τ applied), conflict_ratio,
    dropped_ratio, keep_ratio, dropped_among_conflicting, group_keep_ratio_{mean,min,max,std} (over
    groups), snr_ratio_mean / snr_ratio_abs_mean / snr_ratio_abs_median (over conflicting rollouts,
    0 when there are none), score_abs_mean_before_filter / score_abs_mean_after_filter (token means of
    |Σ_k A'| and |F| over response tokens), advantage_abs_mean (token mean of the final |adv|),
    reward_mean/<key>, reward_std/<key> of the raw rewards, and with ``cfg.reference_key`` (a weight-0 dimension)
    conflict_reference_agreement = #{i : conflict_i ∧ A_ref,i ≠ 0 ∧ sign(Σ_k w_k A_ik) = sign(A_ref,i)} /
    #{i : conflict_i ∧ A_ref,i ≠ 0} (0 when the denominator is), A_ref the reference's group-normalised reward.
    """
    rewards, group_ids, length = _validated(rewards, group_ids, response_lengths, cfg)
    batch_size, num_dims = rewards.shape
    device, dtype = rewards.device, rewards.dtype

    # 1. Group statistics per dimension, vectorised through the compact group index. Rollouts in group order
    # (OpenRLHF's) need no sort: there consecutive runs of an id are the groups.
    if bool((group_ids[1:] >= group_ids[:-1]).all()):
        group_key, group_index, group_size = torch.unique_consecutive(
            group_ids, return_inverse=True, return_counts=True
        )
    else:
        group_key, group_index, group_size = torch.unique(group_ids, return_inverse=True, return_counts=True)
    num_groups = group_size.numel()
    if bool((group_size < 2).any()):
        lonely = group_key[group_size < 2].tolist()
        raise ValueError(
            f"group_ids {lonely[:10]} have a single rollout; GD²PO normalises within prompt groups and needs "
            "at least 2 rollouts per prompt (n_samples_per_prompt >= 2)"
        )
    group_count = group_size.to(dtype).unsqueeze(1)
    group_mean = torch.zeros(num_groups, num_dims, dtype=dtype, device=device).index_add_(0, group_index, rewards)
    group_mean = group_mean / group_count
    rollout_group_mean = group_mean.index_select(0, group_index)
    centered = rewards - rollout_group_mean
    tie_tolerance = TIE_ULPS * torch.maximum(rewards.abs(), rollout_group_mean.abs())
    # Ties are exact zeros, so a constant dimension is 0 and the 1e-6 std epsilon has no rounding to amplify.
    normalized = torch.where(centered.abs() <= tie_tolerance, 0.0, centered)
    if cfg.norm_by_std:
        squares = normalized * normalized
        group_var = torch.zeros_like(group_mean).index_add_(0, group_index, squares) / (group_count - 1)
        normalized = normalized / (group_var.sqrt().index_select(0, group_index) + STD_EPS)

    # 2.-4. Weighting, conflict test, SNR ratio (token sums, as the authors compute them).
    weights = torch.as_tensor(cfg.weights if cfg.weights is not None else [1.0] * num_dims, dtype=dtype, device=device)
    dim_adv = normalized * weights
    token_dim_adv = dim_adv * length.unsqueeze(1)
    lowest, highest = token_dim_adv.aminmax(dim=1)
    conflict = (highest > SIGN_EPS) & (lowest < -SIGN_EPS)
    # Sums over the K dimensions as a product with ones: a reduction over a short last dimension is ~10x slower.
    ones = torch.ones(num_dims, dtype=dtype, device=device)
    signed_sum = dim_adv @ ones
    numerator = signed_sum * length
    denominator = (dim_adv.abs() @ ones) * length + cfg.snr_eps
    # 0 where the denominator is 0 (then so is the numerator): every positive float64 is >= 5e-324.
    snr_ratio = numerator / denominator.clamp_min(5e-324)
    keep = filter_keep(cfg.filter, conflict, snr_ratio, cfg.snr_threshold)

    # 5. Query-level reweighting by the share of each group's rollouts that survived.
    kept_per_group = torch.zeros(num_groups, dtype=dtype, device=device).index_add_(0, group_index, keep.to(dtype))
    group_keep = kept_per_group / group_size.to(dtype)
    rollout_group_keep = group_keep.index_select(0, group_index)
    kappa = rollout_group_keep if cfg.reweight_queries else torch.ones_like(signed_sum)
    score = kappa * signed_sum

    # 6. Masked token advantages and whitening over the kept response tokens of the whole batch. F is
    # constant along each response, so the token statistics reduce to per-rollout sums weighted by the
    # kept length: one [B, T] product at the end instead of [B, T] temporaries.
    kept = keep.to(dtype)
    kept_length = kept * length
    rollout_score = score * kept
    if cfg.whiten:
        num_kept_tokens = kept_length.sum()
        mean = rollout_score.dot(kept_length) / num_kept_tokens.clamp_min(1)
        deviation = rollout_score - mean
        # Bessel over the token count; with a single kept token (F − μ) is 0, so guard only the 0/0.
        var = (deviation * deviation).dot(kept_length) / (num_kept_tokens - 1).clamp_min(1)
        rollout_advantage = deviation * torch.rsqrt(var + WHITEN_EPS) * kept
    else:
        rollout_advantage = rollout_score

    metrics = rollout_diagnostics(
        rewards,
        length,
        normalized,
        token_dim_adv,
        signed_sum,
        conflict,
        snr_ratio,
        keep,
        group_keep,
        kappa,
        rollout_score,
        rollout_advantage,
        cfg,
    )

    return GD2POResult(
        rollout_advantages=rollout_advantage.to(torch.float32),
        keep=keep,
        group_keep_ratio=rollout_group_keep.to(torch.float32),
        dimension_advantages=dim_adv,
        conflict=conflict,
        snr_ratio=snr_ratio,
        metrics=metrics,
    )


def rollout_diagnostics(
    rewards: torch.Tensor,
    length: torch.Tensor,
    normalized: torch.Tensor,
    token_dim_adv: torch.Tensor,
    signed_sum: torch.Tensor,
    conflict: torch.Tensor,
    snr_ratio: torch.Tensor,
    keep: torch.Tensor,
    group_keep: torch.Tensor,
    kappa: torch.Tensor,
    rollout_score: torch.Tensor,
    rollout_advantage: torch.Tensor,
    cfg: GD2POConfig,
) -> Dict[str, float]:
    """The metrics of :func:`compute_rollout_advantages` (listed there) from its intermediate tensors (the module
    docstring's notation): A (``normalized``), A'·L (``token_dim_adv``), Σ_k A' (``signed_sum``), the conflict and SNR
    tests, the filter's keep, κ_g per group (``group_keep``) and per rollout as applied (``kappa``), F
    (``rollout_score``) and adv (``rollout_advantage``). Computed on the device and moved to the host in one transfer;
    nothing here feeds back into the advantages."""
    batch_size, num_dims = rewards.shape
    device, dtype = rewards.device, rewards.dtype
    num_groups = group_keep.numel()
    keys = cfg.reward_keys or tuple(f"dim{k}" for k in range(num_dims))
    response_tokens = length.sum().clamp_min(1)
    conflict_ratio = snr_ratio.masked_select(conflict)
    conflict_abs_ratio = conflict_ratio.abs()
    num_conflict = conflict_abs_ratio.numel()
    has_conflict = num_conflict > 0
    keep_ratio = keep.to(dtype).sum() / batch_size
    # |Σ_k A'|, |F| and |adv| as token means over the response tokens: one product with the lengths.
    token_means = (torch.stack([signed_sum.abs(), rollout_score.abs(), rollout_advantage.abs()]) @ length) / (
        response_tokens
    )
    zero = torch.zeros((), dtype=dtype, device=device)
    group_keep_std, group_keep_mean = torch.std_mean(group_keep, correction=0)
    group_keep_min, group_keep_max = group_keep.aminmax()
    values = {
        "dropped_ratio": 1 - keep_ratio,
        "keep_ratio": keep_ratio,
        "dropped_among_conflicting": (1 - keep_ratio) * batch_size / max(num_conflict, 1),
        "group_keep_ratio_mean": group_keep_mean,
        "group_keep_ratio_min": group_keep_min,
        "group_keep_ratio_max": group_keep_max,
        "group_keep_ratio_std": group_keep_std,
        "snr_ratio_mean": conflict_ratio.mean() if has_conflict else zero,
        "snr_ratio_abs_mean": conflict_abs_ratio.mean() if has_conflict else zero,
        "snr_ratio_abs_median": conflict_abs_ratio.median() if has_conflict else zero,
        "score_abs_mean_before_filter": token_means[0],
        "score_abs_mean_after_filter": token_means[1],
        "advantage_abs_mean": token_means[2],
    }
    if num_dims > 1:  # with a what-if filter, the mass it would remove; else the mass the filter removed
        would_keep = (
            keep
            if cfg.what_if_filter is None
            else filter_keep(cfg.what_if_filter, conflict, snr_ratio, cfg.snr_threshold)
        )
        values.update(mass_diagnostics(token_dim_adv, keep, kappa, keys, would_keep))
    if cfg.reference_key is not None:
        # Does the trained sum side with a held-out verifier where the trained rewards disagree? Over conflicting
        # rollouts whose reference advantage is not a tie: sign(Σ_k w_k A_k) = sign(A_ref).
        reference = normalized[:, keys.index(cfg.reference_key)]
        judged = conflict & (reference.abs() > 0)
        agree = judged & ((signed_sum > 0) == (reference > 0)) & (signed_sum != 0)
        values["conflict_reference_agreement"] = agree.sum() / judged.sum().clamp_min(1)
    names = [*values, *(f"reward_mean/{key}" for key in keys), *(f"reward_std/{key}" for key in keys)]
    reward_mean = rewards.mean(dim=0)  # std_mean over dim 0 of a [B, K] tensor is ~10x slower
    reward_deviation = rewards - reward_mean
    reward_std = (reward_deviation * reward_deviation).mean(dim=0).sqrt()
    metrics = {
        "num_reward_dims": float(num_dims),
        "num_groups": float(num_groups),
        "snr_threshold": float(cfg.effective_snr_threshold),
        "conflict_ratio": num_conflict / batch_size,
        **dict(zip(names, torch.cat([torch.stack(list(values.values())), reward_mean, reward_std]).tolist())),
    }
    return metrics


def filter_keep(name: str, conflict: torch.Tensor, snr_ratio: torch.Tensor, snr_threshold: float) -> torch.Tensor:
    """[B] bool, the rollouts a filter keeps: every one ("none"), the non-conflicting ("hard"), or those that do
    not conflict or whose |SNR| ≥ τ ("snr")."""
    if name == "none":
        return torch.ones_like(conflict)
    if name == "hard":
        return ~conflict
    return ~(conflict & (snr_ratio.abs() < snr_threshold))


def mass_diagnostics(
    token_dim_adv: torch.Tensor,
    keep: torch.Tensor,
    kappa: torch.Tensor,
    keys: Sequence[str],
    would_keep: Optional[torch.Tensor] = None,
) -> Dict[str, torch.Tensor]:
    """What the rewards' disagreement and the filter do to the advantage mass of a batch (0-d tensors).

    With M_ik = w_k A_ik L_i (the token-weighted advantage of rollout i on dimension k) and S_i = Σ_k M_ik:
    - ``pair_conflict/<a>__<b>``: share of rollouts whose M on a and on b have opposite signs;
    - ``pair_cancelled/<a>__<b>``: 1 − Σ_i |M_ia + M_ib| / Σ_i (|M_ia| + |M_ib|), the share of the pair's mass that
      cancels in their sum (0 when the pair has no mass);
    - ``cancelled_mass_ratio``: 1 − Σ_i |S_i| / Σ_i Σ_k |M_ik|, the same over all dimensions;
    - ``filtered_mass_ratio``: Σ_i (1 − keep_i)|S_i| / Σ_i |S_i|, the summed-advantage mass the filter removes
      (with ``would_keep``, a what-if filter's keep, the mass that one would remove);
    - ``kappa_mass_ratio``: Σ_i keep_i κ_i |S_i| / Σ_i keep_i |S_i|, the kept mass κ leaves (1 without κ).
    Ratios over an empty mass are 0 (1 for κ). The pairs are every a < b of ``keys``.
    """
    batch_size, num_dims = token_dim_adv.shape
    dtype = token_dim_adv.dtype
    positive = (token_dim_adv > SIGN_EPS).to(dtype)
    negative = (token_dim_adv < -SIGN_EPS).to(dtype)
    opposite = positive.T @ negative
    pair_conflict = (opposite + opposite.T) / batch_size
    magnitude = token_dim_adv.abs()
    pair_mass = magnitude.sum(dim=0)
    pair_total = pair_mass.unsqueeze(1) + pair_mass.unsqueeze(0)
    pair_net = (token_dim_adv.unsqueeze(2) + token_dim_adv.unsqueeze(1)).abs().sum(dim=0)
    pair_cancelled = torch.where(pair_total > 0, 1 - pair_net / pair_total.clamp_min(5e-324), 0.0)
    summed = token_dim_adv.sum(dim=1).abs()
    kept = keep.to(dtype)
    removed = 1 - (keep if would_keep is None else would_keep).to(dtype)

    def ratio(numerator: torch.Tensor, denominator: torch.Tensor, empty: float) -> torch.Tensor:
        return torch.where(denominator > 0, numerator / denominator.clamp_min(5e-324), empty)

    first, second = torch.triu_indices(num_dims, num_dims, offset=1, device=token_dim_adv.device)
    pairs = [f"{keys[a]}__{keys[b]}" for a, b in zip(first.tolist(), second.tolist())]
    return {
        **{f"pair_conflict/{pair}": value for pair, value in zip(pairs, pair_conflict[first, second])},
        **{f"pair_cancelled/{pair}": value for pair, value in zip(pairs, pair_cancelled[first, second])},
        "cancelled_mass_ratio": 1 - ratio(summed.sum(), magnitude.sum(), 1.0),
        "filtered_mass_ratio": ratio((removed * summed).sum(), summed.sum(), 0.0),
        "kappa_mass_ratio": ratio((kept * kappa * summed).sum(), (kept * summed).sum(), 1.0),
    }


@dataclass
class GroupVerdicts:
    """Output of :func:`group_verdicts`, one entry per prompt group in ascending ``group_ids`` order.

    group_ids: [G] the groups' ids. signal_rollouts: [G] int64, rollouts kept by the filter with a non-zero score.
    passed: [G] bool, signal_rollouts ≥ min_kept. constant: [G] bool, no weighted dimension varies in the group.
    """

    group_ids: torch.Tensor
    signal_rollouts: torch.Tensor
    passed: torch.Tensor
    constant: torch.Tensor


def group_verdicts(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    response_lengths: torch.Tensor,
    cfg: GD2POConfig,
    min_kept: int = 1,
) -> GroupVerdicts:
    """Dynamic sampling's test of each prompt group: the estimator's group-local steps 1–5, without whitening.

    signal_g = #{i ∈ g : keep_i ∧ |S_i|·L_i > 1e-8}, with S_i = κ_g · Σ_k A'[i,k] the sequence score (step 5);
    the group passes when signal_g ≥ ``min_kept``. constant_g: |A'[i,k]|·L_i ≤ 1e-8 for every rollout and
    dimension of g (every dimension with a non-zero weight is constant). A rejected group that is not constant had
    everything filtered, or its kept rollouts' dimensions cancel (S_i = 0).

    Args as :func:`compute_rollout_advantages`; ``min_kept`` ≥ 1.
    """
    if isinstance(min_kept, bool) or not isinstance(min_kept, int) or min_kept < 1:
        raise ValueError(f"min_kept must be an integer >= 1, got {min_kept!r}")
    result = compute_rollout_advantages(rewards, group_ids, response_lengths, dataclasses.replace(cfg, whiten=False))
    group_ids = _as_tensor(group_ids, "group_ids").to(result.keep.device)
    length = _as_tensor(response_lengths, "response_lengths").to(result.keep.device, torch.float64)
    ids, group_index = torch.unique(group_ids, return_inverse=True)
    # Unwhitened, rollout_advantages is S_i · keep_i.
    signal = (result.rollout_advantages.double() * length).abs() > SIGN_EPS
    varies = ((result.dimension_advantages * length.unsqueeze(1)).abs() > SIGN_EPS).any(dim=1)
    signal_rollouts = torch.zeros(len(ids), dtype=torch.int64, device=ids.device).index_add_(
        0, group_index, signal.long()
    )
    varying_rollouts = torch.zeros_like(signal_rollouts).index_add_(0, group_index, varies.long())
    return GroupVerdicts(
        group_ids=ids,
        signal_rollouts=signal_rollouts,
        passed=signal_rollouts >= min_kept,
        constant=varying_rollouts == 0,
    )


def _as_tensor(value, name: str) -> torch.Tensor:
    try:
        return torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as error:
        raise ValueError(f"{name} cannot be converted to a tensor: {error}") from None


def _validated(rewards, group_ids, response_lengths, cfg: GD2POConfig):
    """Shapes, dtypes and values checked once, with errors that name what is wrong."""
    if not isinstance(cfg, GD2POConfig):
        raise ValueError(f"cfg must be a GD2POConfig, got {type(cfg).__name__}")
    rewards = _as_tensor(rewards, "rewards")
    group_ids = _as_tensor(group_ids, "group_ids")
    length = _as_tensor(response_lengths, "response_lengths")

    if rewards.dim() != 2 or rewards.shape[1] == 0:
        raise ValueError(
            f"rewards must be [num_rollouts, num_reward_dims] with at least one dimension, got {tuple(rewards.shape)}"
        )
    batch_size, num_dims = rewards.shape
    if rewards.dtype == torch.bool or rewards.is_complex():
        raise ValueError(f"rewards must be real numbers, got dtype {rewards.dtype}")
    # Reward-level math is O(B·K): float64 costs nothing and keeps float32 inputs free of overflow.
    rewards = rewards.to(torch.float64)
    device = rewards.device
    if group_ids.shape != (batch_size,):
        raise ValueError(
            f"group_ids must be [{batch_size}] (one id per rollout of rewards), got {tuple(group_ids.shape)}"
        )
    if group_ids.is_floating_point() or group_ids.is_complex() or group_ids.dtype == torch.bool:
        raise ValueError(f"group_ids must be an integer tensor, got dtype {group_ids.dtype}")
    if length.shape != (batch_size,) or length.is_complex():
        raise ValueError(
            f"response_lengths must be [{batch_size}] real numbers, got {tuple(length.shape)} {length.dtype}"
        )
    group_ids = group_ids.to(device=device, dtype=torch.int64)
    length = length.to(device=device, dtype=torch.float64)
    if batch_size == 0:
        raise ValueError("rewards is empty: no rollouts to compute advantages for")
    shortest, longest = length.aminmax()  # NaN propagates, and fails both comparisons
    if not (bool(shortest >= 0) and bool(longest < torch.inf)):
        bad_length = ~((length >= 0) & (length < torch.inf))
        rollout = int(bad_length.nonzero()[0])
        raise ValueError(
            f"response length of rollout {rollout} is {length[rollout].item()}; lengths must be finite and >= 0"
        )

    keys = cfg.reward_keys or tuple(f"dim{k}" for k in range(num_dims))
    if len(keys) != num_dims:
        raise ValueError(f"rewards has {num_dims} dimensions but cfg.reward_keys names {len(keys)}: {list(keys)}")
    if cfg.weights is not None and len(cfg.weights) != num_dims:
        raise ValueError(
            f"cfg.weights has {len(cfg.weights)} entries {list(cfg.weights)} for {num_dims} reward dimensions"
        )
    lowest, highest = rewards.aminmax()  # NaN propagates, and fails both comparisons
    if not (bool(lowest >= -MAX_ABS_REWARD) and bool(highest <= MAX_ABS_REWARD)):
        valid = rewards.abs() <= MAX_ABS_REWARD  # False for NaN and ±inf too
        rollout, dim = (~valid).nonzero()[0].tolist()
        raise ValueError(
            f"reward of rollout {rollout} (group {group_ids[rollout].item()}) for dimension {keys[dim]!r} is "
            f"{rewards[rollout, dim].item()}; rewards must be finite with |r| <= {MAX_ABS_REWARD:g} "
            f"({int((~valid).sum())} invalid values in the batch)"
        )
    return rewards, group_ids, length
