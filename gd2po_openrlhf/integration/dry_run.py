"""The resolved configuration as text: what ``--gd2po.dry_run`` / ``GD2PO_DRY_RUN=1`` prints before Ray starts.

Only the standard library (OpenRLHF's KL and GPU flags are read from ``args``).
"""

from __future__ import annotations

import os
from typing import List, Optional

from .cluster_shape import describe_shape
from .settings import RunSettings, _arg

# A response of the user's own, scored by the dry run's reward check for each row beside the stand-ins.
SAMPLE_RESPONSE_VARIABLE = "GD2PO_DRY_RUN_RESPONSE"


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
        f"  what-if filter    {config.what_if_filter}"
        + (f" (τ = {config.snr_threshold})" if config.what_if_filter == "snr" else "")
        + " (not applied): gd2po/filtered_mass_ratio is the mass it would remove"
        if config.what_if_filter
        else None,
        f"  reference         reward/{settings.reference_key} (weight 0, logged): conflicting rollouts whose summed "
        "advantage has its sign -> gd2po/conflict_reference_agreement"
        if settings.reference_key
        else None,
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


def check_rewards(args, settings: RunSettings) -> List[str]:
    """The dry run's reward check: the reward file (or the first reward server, when it answers) scores the first
    rows of ``--data.prompt_dataset`` with stand-in responses (``reward_check``), and the estimator turns them into
    advantages, each row's responses one group. Raises ValueError naming the source, row, response and key of a bad
    answer. Model groups are not loaded: their dimensions are 0 here."""
    import torch

    from ..conditions import apply_conditions
    from ..reward_check import (
        ROWS_CHECKED,
        ServerUnreachable,
        batch_check,
        dataset_rows,
        load_reward_func,
        rewards_table,
        score_rows,
        server_reward_func,
        stand_in_responses,
    )
    from ..reward_pipeline import estimate

    # One source returns every remote dimension: a reward file, or reward servers (the first is asked).
    files = [dim for dim in settings.remote_dimensions if dim.source in ("reward_function", "reward_server")]
    dataset = _arg(args, "data.prompt_dataset")
    if not files:
        return []
    server = files[0].source == "reward_server"
    path = files[0].location.split(",")[0].strip() if server else files[0].location
    if not dataset:
        return ["  reward check      not run: no --data.prompt_dataset to score"]
    if not isinstance(dataset, str) or "," in dataset or not os.path.isfile(os.path.expanduser(dataset)):
        return [f"  reward check      not run: --data.prompt_dataset {dataset} is not one local file"]
    reward_func = server_reward_func(path) if server else load_reward_func(path)
    source = f"reward server {path}" if server else f"reward file {path}"
    rows = dataset_rows(dataset, _arg(args, "data.input_key", "input"), _arg(args, "data.label_key"), ROWS_CHECKED)
    responses = [stand_in_responses(label, os.environ.get(SAMPLE_RESPONSE_VARIABLE)) for _, label in rows]
    keys = [dim.key for dim in files]
    try:
        scored = score_rows(reward_func, rows, responses, keys, source)
    except ServerUnreachable as error:
        return [f"  reward check      not run: {error} (a server reachable only from the cluster is checked there)"]
    rewards = torch.zeros(len(scored), len(settings.reward_keys), dtype=torch.float64)
    rewards[:, [settings.reward_keys.index(key) for key in keys]] = scored
    groups = torch.repeat_interleave(torch.arange(len(rows)), torch.tensor([len(r) for r in responses]))
    lengths = torch.tensor([max(len(response.split()), 1) for row in responses for response in row])
    conditioned, _ = apply_conditions(rewards, settings.reward_keys, settings.conditions)
    result = estimate(conditioned, groups, lengths, settings.gd2po_config, settings.sum_rewards).result
    others = [key for key in settings.reward_keys if key not in keys]
    return [
        f"  reward check      {source} on the first {len(rows)} rows of {dataset}, each row's responses one group "
        "(its label as the response, a placeholder"
        + (f", {SAMPLE_RESPONSE_VARIABLE}" if os.environ.get(SAMPLE_RESPONSE_VARIABLE) else "")
        + "): every answer has the declared keys, one finite number each"
        + (f"; {', '.join(others)} from model groups counted as 0 here (not loaded)" if others else ""),
        *rewards_table(rows, responses, settings.reward_keys, rewards, result.rollout_advantages),
        "    " + batch_check(reward_func, rows, responses, keys, scored, source),
    ]
