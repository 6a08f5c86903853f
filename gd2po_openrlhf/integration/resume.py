"""The run's GD²PO settings in OpenRLHF's checkpoints, and what a resumed run (``--ckpt.load_enable``) restores.

The settings travel in the actors' DeepSpeed client state (``save_logs_and_checkpoints`` here, replacing
``BasePPOTrainer``'s) and are read back by ``init_checkpoint_states`` (likewise).
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

from openrlhf.utils.logging_utils import init_logger

from .openrlhf_patches import UPSTREAM
from .settings import RunSettings, replace_weights

logger = init_logger(__name__)

# The settings that define the advantages a run trains on, by flag: a resumed run restores the checkpoint's.
RESUMED_FLAGS = {
    "gd2po.filter": "filter",
    "gd2po.snr_threshold": "snr_threshold",
    "gd2po.snr_eps": "snr_eps",
    "gd2po.reward_weights": "reward_weights",
    "gd2po.no_reweight": "no_reweight",
    "gd2po.no_whiten": "no_whiten",
    "gd2po.drop_filtered": "drop_filtered",
    "gd2po.sum_rewards": "sum_rewards",
    "gd2po.reward_weight_schedule": "reward_weight_schedule",
    "gd2po.constraint_key": "constraint_key",
    "cost.budget": "cost_budget",
    "cost.lambda_init": "lambda_init",
    "cost.lambda_lr": "lambda_lr",
    "cost.lambda_max": "lambda_max",
    "cost.lambda_log_space": "lambda_log_space",
}
# Saved and compared, but acting outside the experience maker (set up before a checkpoint is read): reported only.
REPORTED_FLAGS = {
    "gd2po.on_bad_reward": "on_bad_reward",
    "gd2po.reward_chat_template": "reward_chat_template",
    "gd2po.dynamic_sampling": "dynamic_sampling",
    "gd2po.dynamic_sampling_min_kept": "dynamic_sampling_min_kept",
    "gd2po.dynamic_sampling_max_prompts_factor": "dynamic_sampling_max_prompts_factor",
}


def checkpoint_settings(settings: RunSettings) -> dict:
    """The run's GD²PO settings as saved with each OpenRLHF checkpoint (plain Python values).

    ``gd2po.<flag>`` and ``cost.<flag>`` entries hold the flags' resolved values; ``dimensions`` lists each reward
    dimension as [key, source, location].
    """
    saved = {flag: getattr(settings, name) for flag, name in {**RESUMED_FLAGS, **REPORTED_FLAGS}.items()}
    saved["gd2po.reward_weights"] = list(settings.reward_weights)
    saved["estimator"] = settings.estimator
    saved["dimensions"] = [[dim.key, dim.source, dim.location] for dim in settings.dimensions]
    return saved


def restore_checkpoint_settings(settings: RunSettings, saved: dict) -> Tuple[RunSettings, Optional[str]]:
    """The settings to resume with, and a warning naming every difference from the checkpoint's (None if none).

    The checkpoint's ``RESUMED_FLAGS`` replace the command line's, except with --gd2po.resume_with_flags or when the
    estimator or the reward keys changed (the checkpoint's weights would then belong to other dimensions). Other
    differences (reward sources, the bad-reward policy, the reward chat template, dynamic sampling) are reported:
    they act outside the experience maker, in processes and actor groups set up before a checkpoint is read.
    """
    current = checkpoint_settings(settings)
    # A flag the checkpoint lacks came with a later plugin version: the checkpoint's run had the flag's default.
    defaults = checkpoint_settings(RunSettings())
    saved = {**{flag: defaults[flag] for flag in RESUMED_FLAGS.keys() | REPORTED_FLAGS.keys()}, **saved}
    differences = {name: (saved.get(name), value) for name, value in current.items() if saved.get(name) != value}
    if not differences:
        return settings, None
    same_keys = [d[0] for d in saved.get("dimensions", [])] == [d[0] for d in current["dimensions"]]
    restore = same_keys and saved.get("estimator") == current["estimator"] and not settings.resume_with_flags
    restored = [name for name in differences if restore and name in RESUMED_FLAGS]
    values = {RESUMED_FLAGS[name]: differences[name][0] for name in restored}
    weights = values.pop("reward_weights", None)
    settings = dataclasses.replace(settings, **values)
    if weights is not None:
        settings = replace_weights(settings, weights)

    def listed(names):
        return "; ".join(
            f"--{name} checkpoint {differences[name][0]!r}, command line {differences[name][1]!r}"
            if name.startswith(("gd2po.", "cost."))
            else f"{name}: checkpoint {differences[name][0]!r}, command line {differences[name][1]!r}"
            for name in names
        )

    kept = [name for name in differences if name not in restored]
    lines = ["the GD²PO settings of the checkpoint differ from the command line's."]
    if restored:
        lines.append(
            f"Restored from the checkpoint: {listed(restored)}. "
            "Pass --gd2po.resume_with_flags to train on the command line's instead."
        )
    if kept:
        reason = (
            "--gd2po.resume_with_flags"
            if settings.resume_with_flags
            else "the estimator or the reward keys changed"
            if not restore
            else "not restorable on resume"
        )
        lines.append(f"Kept from the command line ({reason}): {listed(kept)}.")
    return settings, " ".join(lines)


# ---- trainer process: openrlhf/trainer/ppo_trainer.py, BasePPOTrainer


def save_logs_and_checkpoints(self, global_step, logs_dict=None, client_states=None):
    """Mirrors ``BasePPOTrainer.save_logs_and_checkpoints``: the run's GD²PO settings travel in the actors' DeepSpeed
    client state, saved and loaded with every checkpoint."""
    settings = getattr(self.experience_maker, "settings", None)
    if settings is not None:
        # The run's state beside its settings: --cost.budget's λ (the schedule's position is the global step).
        state = {"constraint_lambda": self.experience_maker.constraint_lambda}
        client_states = {**(client_states or {}), "gd2po": checkpoint_settings(settings), "gd2po_state": state}
    return UPSTREAM["BasePPOTrainer.save_logs_and_checkpoints"](self, global_step, logs_dict, client_states)


def init_checkpoint_states(self):
    """Mirrors ``BasePPOTrainer.init_checkpoint_states``: a resumed gd2po/gdpo run restores the checkpoint's
    settings into the experience maker (``resume.restore_checkpoint_settings``), warning about every difference."""
    states = UPSTREAM["BasePPOTrainer.init_checkpoint_states"](self)
    maker = self.experience_maker
    if getattr(maker, "settings", None) is None or not states.get("global_step"):
        return states  # not a GD²PO run, or not resuming
    maker.completed_steps = states["global_step"]  # where --gd2po.reward_weight_schedule goes on
    if "gd2po" not in states:
        logger.warning(
            "the checkpoint holds no GD²PO settings (saved without the plugin, or by another estimator): "
            "resuming with the command line's"
        )
        return states
    maker.settings, warning = restore_checkpoint_settings(maker.settings, states["gd2po"])
    if warning:
        logger.warning(warning)
    settings = maker.settings
    if settings.cost_budget is not None:
        saved_lambda = states.get("gd2po_state", {}).get("constraint_lambda")
        same_key = states["gd2po"].get("gd2po.constraint_key") == settings.constraint_key
        if saved_lambda is not None and same_key:
            maker.constraint_lambda = min(max(float(saved_lambda), 0.0), settings.lambda_max)
            logger.info(f"--cost.budget: λ of reward/{settings.constraint_key} resumes at {maker.constraint_lambda:g}")
        else:
            maker.constraint_lambda = settings.lambda_init
            logger.warning(
                f"--cost.budget: the checkpoint holds no λ for reward/{settings.constraint_key}: starting from "
                f"--cost.lambda_init {settings.lambda_init:g}"
            )
    logger.info(f"GD²PO settings after resuming: {checkpoint_settings(settings)}")
    return states
