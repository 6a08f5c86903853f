"""The resolved configuration as text: what ``--gd2po.dry_run`` / ``GD2PO_DRY_RUN=1`` prints before Ray starts.

Only the standard library (OpenRLHF's KL and GPU flags are read from ``args``).
"""

from __future__ import annotations

from typing import Optional

from .cluster_shape import describe_shape
from .settings import RunSettings, _arg


def describe(args, settings: RunSettings) -> str:
    """The resolved configuration, as the dry run prints it (OpenRLHF's KL and GPU flags read from ``args``)."""
    kl_coef = _arg(args, "algo.kl.init_coef", 0.0)
    if _arg(args, "algo.kl.use_loss", False):
        kl = f"KL as a loss term (coef {kl_coef})"
    elif kl_coef:
        kl = f"KL in the reward (coef {kl_coef}): its per-token returns are added to the kept rollouts' advantages"
    else:
        kl = "no KL"
    config = settings.gd2po_config
    filtered = (
        "True (filtered rollouts are not sent to the actors)"
        if settings.drop_filtered
        else "False (filtered rollouts train with advantage 0)"
    )
    rendering = (
        "their own chat template's rendering of each conversation"
        if settings.reward_chat_template == "own"
        else "the policy's tokens"
    )
    lines = [
        f"GD²PO configuration (--advantage_estimator {settings.estimator})",
        "  advantage of      the weighted sum Σ_k w_k r_k, normalised within each group (GRPO)"
        if settings.sum_rewards
        else None,
        f"  filter            {config.filter}"
        + (f" (τ = {config.snr_threshold}, ε = {config.snr_eps})" if config.filter == "snr" else ""),
        f"  preset            {settings.preset}" if settings.preset else None,
        f"  group size        {settings.n_samples_per_prompt} rollouts per prompt",
        f"  normalise by std  {config.norm_by_std}",
        f"  reweight by κ     {config.reweight_queries}",
        f"  whiten            {config.whiten}",
        f"  drop filtered     {filtered}",
        f"  KL                {kl}",
        f"  on bad reward     {settings.on_bad_reward}",
        f"  dynamic sampling  a prompt group trains when at least {settings.dynamic_sampling_min_kept} of its "
        f"{settings.n_samples_per_prompt} rollouts survive the filter with a non-zero score "
        f"(|κ Σ_k w_k A_k|·L > 1e-8); a rejected group is replaced by a fresh prompt, at most "
        f"{settings.dynamic_sampling_max_prompts_factor:g} × the batch's prompts drawn per batch"
        if settings.dynamic_sampling
        else "  dynamic sampling  off",
        _budget_line(settings),
        *(
            f"  weight schedule   reward/{s.key} {s.start:g} → {s.end:g} over {s.steps} global steps ({s.shape}), "
            f"then {s.end:g}"
            for s in settings.weight_schedules
        ),
        *(
            f"  condition         reward/{c.key} counts where reward/{c.gate_key} {c.operator} {c.threshold:g}, "
            "else 0 (raw rewards, before normalisation)"
            for c in settings.conditions
        ),
        f"  reward models see {rendering}" if settings.model_groups else None,
        "  model groups      (each its own Ray actor group: key, flag, nodes x GPUs per node, value head, chat "
        "template, normalisation, offload)"
        if settings.model_groups
        else None,
        *(
            f"    reward/{g.key:<20} {g.flag:<28} {g.nodes}x{g.gpus_per_node} GPUs  value head "
            f"{g.value_head_prefix or _arg(args, 'ds.value_head_prefix', 'score')}  chat template "
            f"{g.chat_template or settings.reward_chat_template}  normalise {'on' if g.normalize else 'off'}  offload "
            f"{'on' if g.offload else 'off'}"
            for g in settings.model_groups
        ),
        *describe_shape(args, settings),
        "  reward dimensions (info key, source, weight):",
    ]
    gpus = {g.key: f" on {g.nodes}x{g.gpus_per_node} GPUs" for g in settings.model_groups}
    for dim in settings.dimensions:
        where = dim.location + gpus.get(dim.key, "")
        schedule = next((s for s in settings.weight_schedules if s.key == dim.key), None)
        if dim.key == settings.constraint_key:
            weight = f"weight {'-' if dim.weight < 0 else '+'}λ (budget)"
        elif schedule is not None:
            weight = f"weight {schedule.start:+g} → {schedule.end:+g} (schedule)"
        else:
            weight = f"weight {dim.weight:+g}" + ("  (logged, not trained)" if dim.weight == 0 else "")
        lines.append(f"    reward/{dim.key:<20} {dim.source:<16} {where}  {weight}")
    return "\n".join(line for line in lines if line is not None)


def _budget_line(settings: RunSettings) -> Optional[str]:
    """The dry run's line for --cost.budget: the constraint, its sign convention and λ's update."""
    if settings.cost_budget is None:
        return None
    is_cost = settings.dimension(settings.constraint_key).weight < 0
    convention = (
        "a cost (weight -1 given: higher is more harmful), so the budget is a ceiling and the weight is -λ"
        if is_cost
        else "a score (weight +1 given: higher is safer), so the budget is a floor and the weight is +λ"
    )
    update = "log λ += lr·violation" if settings.lambda_log_space else "λ += lr·violation"
    return (
        f"  cost budget       batch mean of reward/{settings.constraint_key} {'<=' if is_cost else '>='} "
        f"{settings.cost_budget:g}: {convention}; each step {update} (λ_0 = {settings.lambda_init:g}, "
        f"lr {settings.lambda_lr:g}, clipped to [0, {settings.lambda_max:g}])"
    )
