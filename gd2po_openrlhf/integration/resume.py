"""The run's GD²PO settings in OpenRLHF's checkpoints, and what a resumed run (``--ckpt.load_enable``) restores.

The settings travel in the actors' DeepSpeed client state (``save_logs_and_checkpoints`` here, replacing
``BasePPOTrainer``'s) and are read back by ``init_checkpoint_states`` (likewise): the command line with the
checkpoint's restorable flags put back, resolved and checked by ``resolve_settings`` as at parse time, gives the one
``RunSettings`` of the resumed run. The experience maker, the samples generator (the dynamic-sampling group test and
the arrival of remote rewards; in async runs its actor gets them through ``GenerateSamplesActor.load_state_dict``)
and the logged configuration all use it.
"""

from __future__ import annotations

import argparse
import copy
import functools
import math
from typing import Optional, Tuple

from openrlhf.utils.logging_utils import init_logger

from .argparse_patch import ONLY_ACTS_WITH
from .dry_run import describe
from .flags import add_gd2po_arguments
from .openrlhf_patches import UPSTREAM, installed_openrlhf, source_drift, upstream
from .settings import REWARD_MODEL_FLAG, RunSettings, resolve_settings

logger = init_logger(__name__)

# Every RunSettings field by what a resumed run does with it; tests/test_resume.py checks that the three tables
# cover dataclasses.fields(RunSettings) exactly once.
# Restored: they define the advantages a run trains on; the checkpoint's flag value replaces the command line's.
RESTORED = {
    "filter": "gd2po.filter",
    "snr_threshold": "gd2po.snr_threshold",
    "snr_eps": "gd2po.snr_eps",
    "norm_by_std": "algo.advantage.no_std_norm",  # saved as the flag: not norm_by_std
    "dimensions": "gd2po.reward_weights",  # their weights; keys and sources are compared ("dimensions")
    "no_reweight": "gd2po.no_reweight",
    "no_whiten": "gd2po.no_whiten",
    "drop_filtered": "gd2po.drop_filtered",
    "sum_rewards": "gd2po.sum_rewards",
    "reward_weight_schedule": "gd2po.reward_weight_schedule",
    "reward_condition": "gd2po.reward_condition",
    "constraint_key": "gd2po.constraint_key",
    "cost_budget": "cost.budget",
    "lambda_init": "cost.lambda_init",
    "lambda_lr": "cost.lambda_lr",
    "lambda_max": "cost.lambda_max",
    "lambda_log_space": "cost.lambda_log_space",
}
# Reported: saved and compared, but acting where the run was set up before a checkpoint is read (the rollout actors,
# the model groups, the samples generator's loop), or deciding whether anything is restored at all.
REPORTED = {
    "estimator": "estimator",
    "model_groups": "gd2po.reward_model",  # the --gd2po.reward_model groups (the others' paths: "dimensions")
    "on_bad_reward": "gd2po.on_bad_reward",
    "reward_chat_template": "gd2po.reward_chat_template",
    "dynamic_sampling": "gd2po.dynamic_sampling",
    "dynamic_sampling_min_kept": "gd2po.dynamic_sampling_min_kept",
    "dynamic_sampling_max_prompts_factor": "gd2po.dynamic_sampling_max_prompts_factor",
}
# Not saved, and why.
NOT_SAVED = {
    "n_samples_per_prompt": "OpenRLHF's --rollout.n_samples_per_prompt, which its own data state follows",
    "reward_model_key": "the model groups' keys are in the dimensions",
    "cost_model_key": "the model groups' keys are in the dimensions",
    "resume_with_flags": "it decides the resume itself",
    "preset": "the preset's values are the other fields",
    "reference_key": "it adds a metric only: the command line's applies",
    "what_if_filter": "it changes a metric only: the command line's applies",
}
# The key under which the restored settings ride in the dataloader state to the async GenerateSamplesActor.
SETTINGS_KEY = "gd2po_settings"


def _flag_value(settings: RunSettings, field: str):
    if field == "norm_by_std":
        return not settings.norm_by_std
    if field == "dimensions":
        return list(settings.reward_weights)
    if field == "model_groups":
        return [str(group) for group in settings.model_groups if group.flag == REWARD_MODEL_FLAG]
    return getattr(settings, field)


def checkpoint_settings(settings: RunSettings) -> dict:
    """The run's GD²PO settings as saved with each OpenRLHF checkpoint (plain Python values).

    The restored and reported flags hold their resolved values (``estimator`` the estimator); ``dimensions`` lists
    each reward dimension as [key, source, location].
    """
    saved = {flag: _flag_value(settings, field) for field, flag in {**RESTORED, **REPORTED}.items()}
    saved["dimensions"] = [[dim.key, dim.source, dim.location] for dim in settings.dimensions]
    return saved


def _with_flags(args, values: dict):
    """A copy of OpenRLHF's (nested) ``args`` with the dotted flags of ``values`` set."""
    args = copy.deepcopy(args)
    for dotted, value in values.items():
        if dotted in vars(args):
            setattr(args, dotted, value)
            continue
        node, *parents, name = [args] + dotted.split(".")
        for part in parents:
            node = getattr(node, part)
        setattr(node, name, value)
    return args


def _check_restored_type(flag: str, value) -> None:
    """A restored value has the type the flag's parser gives (a checkpoint file can hold anything: ``"false"`` is
    truthy); raises ValueError naming the flag and the type expected."""
    action = {a.dest: a for a in _plugin_parser()._actions}.get(flag)
    number = (int, float)
    if action is None or action.nargs == 0:  # a switch (OpenRLHF's --algo.advantage.no_std_norm has no action here)
        ok, expected = isinstance(value, bool), "true or false"
    elif action.nargs == "+":
        kinds = number if action.type is float else str
        ok = isinstance(value, (list, tuple)) and all(isinstance(v, kinds) and not isinstance(v, bool) for v in value)
        expected = "a list of numbers" if action.type is float else "a list of strings"
    elif action.type is float:
        ok = (value is None and action.default is None) or (isinstance(value, number) and not isinstance(value, bool))
        expected = "a number"
    else:
        ok, expected = value is None or isinstance(value, str), "a string"
    if not ok:
        raise ValueError(f"--{flag} {value!r} restored, expected {expected}")


@functools.lru_cache(maxsize=1)
def _plugin_parser() -> argparse.ArgumentParser:
    """The plugin's flags on a parser of their own: their types, for checking restored values."""
    parser = argparse.ArgumentParser(add_help=False)
    add_gd2po_arguments(parser)
    return parser


def restore_checkpoint_settings(
    args, settings: RunSettings, saved: dict, checkpoint: str
) -> Tuple[RunSettings, Optional[str]]:
    """The settings to resume with, and a warning naming every difference from the checkpoint's (None if none).

    The checkpoint's ``RESTORED`` flags replace the command line's in ``args``, except with
    --gd2po.resume_with_flags or when the estimator or the reward keys changed (the checkpoint's weights would then
    belong to other dimensions), and ``resolve_settings`` checks the result as it checks a command line: a value the
    launcher would refuse raises ValueError naming ``checkpoint`` and the flag. Other differences are reported.
    """
    current = checkpoint_settings(settings)
    # A flag the checkpoint lacks came with a later plugin version: the checkpoint's run had the flag's default.
    defaults = checkpoint_settings(RunSettings())
    saved = {**{flag: defaults[flag] for flag in {**RESTORED, **REPORTED}.values()}, **saved}
    differences = {name: (saved.get(name), value) for name, value in current.items() if saved.get(name) != value}
    if not differences:
        return settings, None
    same_keys = [d[0] for d in saved.get("dimensions", [])] == [d[0] for d in current["dimensions"]]
    restore = same_keys and saved.get("estimator") == current["estimator"] and not settings.resume_with_flags
    restored = [name for name in differences if restore and name in RESTORED.values()]
    if restored:
        try:
            for name in restored:
                _check_restored_type(name, differences[name][0])
            settings = resolve_settings(_with_flags(args, {name: differences[name][0] for name in restored}))
            for rule in ONLY_ACTS_WITH:  # as the parser refuses a flag that would be ignored
                ignored = [name for name in restored if name in rule.flags and differences[name][0] != defaults[name]]
                if ignored and not rule.active(settings):
                    raise ValueError(
                        f"{', '.join('--' + name for name in ignored)} only acts with {rule.needs}, which the "
                        f"restored settings lack ({rule.instead(settings)})"
                    )
        except (ValueError, TypeError) as error:
            raise ValueError(
                f"the GD²PO settings saved in the checkpoint {checkpoint} do not pass the launcher's checks with "
                f"{', '.join(f'--{name} {differences[name][0]!r}' for name in restored)} restored from it: {error}. "
                "Resume from another checkpoint, or pass --gd2po.resume_with_flags to train on the command line's "
                "settings"
            ) from None

    def listed(names):
        return "; ".join(
            f"--{name} checkpoint {differences[name][0]!r}, command line {differences[name][1]!r}"
            if "." in name
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
        # The run's state beside its settings: --cost.budget's λ (the schedule's position is the global step), and
        # the OpenRLHF that wrote it with the drift seen (a resumed run on another OpenRLHF says so).
        state = {
            "constraint_lambda": self.experience_maker.constraint_lambda,
            "openrlhf_version": installed_openrlhf(),
            "openrlhf_drift": list(source_drift()),
        }
        client_states = {**(client_states or {}), "gd2po": checkpoint_settings(settings), "gd2po_state": state}
    return UPSTREAM["BasePPOTrainer.save_logs_and_checkpoints"](self, global_step, logs_dict, client_states)


def init_checkpoint_states(self):
    """Mirrors ``BasePPOTrainer.init_checkpoint_states``, which ``fit`` calls once before the first step: a resumed
    gd2po/gdpo run restores the checkpoint's settings (``restore_checkpoint_settings``), warning about every
    difference, and hands them to the samples generator; every gd2po/gdpo run then logs its configuration."""
    states = UPSTREAM["BasePPOTrainer.init_checkpoint_states"](self)
    maker = self.experience_maker
    if getattr(maker, "settings", None) is None:
        return states  # not a GD²PO run
    if states.get("global_step"):
        _resume(self, states)
    logger.info(f"{describe(self.args, maker.settings)}\n(the GD²PO configuration this run trains with)")
    return states


def _resume(trainer, states: dict) -> None:
    maker = trainer.experience_maker
    maker.completed_steps = states["global_step"]  # where --gd2po.reward_weight_schedule goes on
    if "gd2po" not in states:
        logger.warning(
            "the checkpoint holds no GD²PO settings (saved without the plugin, or by another estimator): "
            "resuming with the command line's"
        )
        return
    checkpoint = f"--ckpt.path {trainer.args.ckpt.path} (global step {states['global_step']})"
    written_by = states.get("gd2po_state", {}).get("openrlhf_version")
    if written_by is not None and written_by != installed_openrlhf():
        logger.warning(
            f"the checkpoint {checkpoint} was written with openrlhf {written_by} (functions that differed from the "
            f"plugin's: {states['gd2po_state'].get('openrlhf_drift') or 'none'}); this run uses openrlhf "
            f"{installed_openrlhf()}"
        )
    maker.settings, warning = restore_checkpoint_settings(trainer.args, maker.settings, states["gd2po"], checkpoint)
    if warning:
        logger.warning(warning)
    settings = maker.settings
    if settings.cost_budget is not None:
        saved_lambda = states.get("gd2po_state", {}).get("constraint_lambda")
        same_key = states["gd2po"].get("gd2po.constraint_key") == settings.constraint_key
        if saved_lambda is not None and same_key:
            if isinstance(saved_lambda, bool) or not isinstance(saved_lambda, (int, float)):
                saved_lambda = math.nan
            if not 0 <= saved_lambda <= settings.lambda_max:  # NaN included
                raise ValueError(
                    f"the checkpoint {checkpoint} holds λ = {states['gd2po_state']['constraint_lambda']!r} for "
                    f"reward/{settings.constraint_key} (gd2po_state.constraint_lambda): --cost.budget needs a number "
                    f"in [0, --cost.lambda_max = {settings.lambda_max:g}]; resume from another checkpoint"
                )
            maker.constraint_lambda = float(saved_lambda)
            logger.info(f"--cost.budget: λ of reward/{settings.constraint_key} resumes at {maker.constraint_lambda:g}")
        else:
            maker.constraint_lambda = settings.lambda_init
            logger.warning(
                f"--cost.budget: the checkpoint holds no λ for reward/{settings.constraint_key}: starting from "
                f"--cost.lambda_init {settings.lambda_init:g}"
            )
    generator = getattr(trainer, "samples_generator", None)
    if generator is not None:  # the sync PPOTrainer: its samples generator judges dynamic-sampling groups
        generator.gd2po_settings = settings
    else:  # the async TrainingActor: they ride with the dataloader state to the GenerateSamplesActor
        states["data_loader_state_dict"] = {**(states.get("data_loader_state_dict") or {}), SETTINGS_KEY: settings}


# ---- async generator process: openrlhf/trainer/ppo_trainer_async.py, GenerateSamplesActor


def load_state_dict(self, state_dict):
    """Mirrors ``GenerateSamplesActor.load_state_dict`` (the resumed dataloader position, the only part of the
    checkpoint that reaches this actor): the resumed run's settings, put there by ``init_checkpoint_states``, become
    its samples generator's, and OpenRLHF's own method restores the rest."""
    state_dict = dict(state_dict or {})
    settings = state_dict.pop(SETTINGS_KEY, None)
    if settings is not None:
        self.samples_generator.gd2po_settings = settings
    return upstream("GenerateSamplesActor.load_state_dict")(self, state_dict)
