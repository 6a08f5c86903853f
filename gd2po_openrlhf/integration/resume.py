"""The run's GD²PO settings in OpenRLHF's checkpoints, and what a resumed run (``--ckpt.load_enable``) restores.

The settings travel in the actors' DeepSpeed client state (``save_logs_and_checkpoints`` here, replacing
``BasePPOTrainer``'s) and are read back by ``init_checkpoint_states`` (likewise): the command line with the
checkpoint's restorable flags put back, resolved and checked by ``resolve_settings`` as at parse time, gives the one
``RunSettings`` of the resumed run. The experience maker, the samples generator (the dynamic-sampling group test and
the arrival of remote rewards; in async runs its actor gets them through ``GenerateSamplesActor.load_state_dict``)
and the logged configuration all use it.
"""

from __future__ import annotations

import copy
import math
import os
from typing import Dict, List, Optional, Tuple

from openrlhf.utils.logging_utils import init_logger

from . import flags
from .dry_run import describe
from .openrlhf_patches import UPSTREAM, installed_openrlhf, source_drift, upstream
from .settings import REWARD_MODEL_FLAG, RunSettings, _arg, resolve_settings

logger = init_logger(__name__)

# The RunSettings fields that no plugin flag sets, by what a resumed run does with them (the others: ``Flag.resume``).
OTHER_FIELDS = {
    "estimator": (flags.REPORTED, "estimator"),
    "norm_by_std": (flags.RESTORED, "algo.advantage.no_std_norm"),  # saved as the flag: not norm_by_std
    "n_samples_per_prompt": (
        flags.NOT_SAVED,
        "OpenRLHF's --rollout.n_samples_per_prompt, which its own data state follows",
    ),
}


def resume_tables() -> Tuple[Dict[str, str], Dict[str, str], Dict[str, str]]:
    """``(restored, reported, not_saved)``: every RunSettings field by what a resumed run does with it, from the flag
    table (``Flag.resume``) and ``OTHER_FIELDS``. Restored and reported map a field to the flag it is saved as
    (``dimensions``: their weights, as --gd2po.reward_weights; keys and sources are compared apart); not saved maps it
    to the reason. tests/test_resume.py checks that they cover ``dataclasses.fields(RunSettings)`` exactly once."""
    tables = {flags.RESTORED: {}, flags.REPORTED: {}, flags.NOT_SAVED: {}}
    for flag in flags.FLAGS:
        if flag.field:
            tables[flag.resume][flag.field] = flag.not_saved_because if flag.resume == flags.NOT_SAVED else flag.dest
    for field, (resume, saved_as) in OTHER_FIELDS.items():
        tables[resume][field] = saved_as
    return tables[flags.RESTORED], tables[flags.REPORTED], tables[flags.NOT_SAVED]


# The key under which the restored settings ride in the dataloader state to the async GenerateSamplesActor.
SETTINGS_KEY = "gd2po_settings"


def _flag_value(settings: RunSettings, field: str):
    if field == "norm_by_std":
        return not settings.norm_by_std
    if field == "dimensions":
        return list(settings.reward_weights)
    if field == "model_groups":
        return [str(group) for group in settings.model_groups if group.flag == REWARD_MODEL_FLAG]
    value = getattr(settings, field)
    # Parsed entries (schedules, conditions) are saved as the text their flag takes.
    return tuple(str(entry) for entry in value) if isinstance(value, tuple) else value


def checkpoint_settings(settings: RunSettings) -> dict:
    """The run's GD²PO settings as saved with each OpenRLHF checkpoint (plain Python values).

    The restored and reported flags hold their resolved values (``estimator`` the estimator); ``dimensions`` lists
    each reward dimension as [key, source, location].
    """
    restored, reported, _ = resume_tables()
    saved = {flag: _flag_value(settings, field) for field, flag in {**restored, **reported}.items()}
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
    declared = flags.flags_by_dest().get(flag)
    number = (int, float)
    if declared is None or declared.switch:  # a switch (OpenRLHF's --algo.advantage.no_std_norm is not declared here)
        ok, expected = isinstance(value, bool), "true or false"
    elif declared.nargs == "+":
        kinds = number if declared.type is float else str
        ok = isinstance(value, (list, tuple)) and all(isinstance(v, kinds) and not isinstance(v, bool) for v in value)
        expected = "a list of numbers" if declared.type is float else "a list of strings"
    elif declared.type in (int, float):
        ok = (value is None and declared.default is None) or (
            isinstance(value, number) and not isinstance(value, bool)
        )
        expected = "a number"
    else:
        ok, expected = value is None or isinstance(value, str), "a string"
    if not ok:
        raise ValueError(f"--{flag} {value!r} restored, expected {expected}")


def restore_checkpoint_settings(
    args, settings: RunSettings, saved: dict, checkpoint: str
) -> Tuple[RunSettings, Optional[str]]:
    """The settings to resume with, and a warning naming every difference from the checkpoint's (None if none).

    The checkpoint's restored flags (``resume_tables``) replace the command line's in ``args``, except with
    --gd2po.resume_with_flags or when the estimator or the reward keys changed (the checkpoint's weights would then
    belong to other dimensions), and ``resolve_settings`` checks the result as it checks a command line: a value the
    launcher would refuse raises ValueError naming ``checkpoint`` and the flag. Other differences are reported.
    """
    current = checkpoint_settings(settings)
    # A flag the checkpoint lacks came with a later plugin version: the checkpoint's run had the flag's default.
    defaults = checkpoint_settings(type(settings)())
    restored_flags = resume_tables()[0].values()
    saved = {flags.renamed().get(flag, flag): value for flag, value in saved.items()}  # a flag's former name
    saved = {**{flag: value for flag, value in defaults.items() if flag != "dimensions"}, **saved}
    differences = {name: (saved.get(name), value) for name, value in current.items() if saved.get(name) != value}
    if not differences:
        return settings, None
    same_keys = [d[0] for d in saved.get("dimensions", [])] == [d[0] for d in current["dimensions"]]
    restore = same_keys and saved.get("estimator") == current["estimator"] and not settings.resume_with_flags
    restored = [name for name in differences if restore and name in restored_flags]
    if restored:
        try:
            for name in restored:
                _check_restored_type(name, differences[name][0])
            settings = resolve_settings(_with_flags(args, {name: differences[name][0] for name in restored}))
            for rule, dests in flags.only_acts_with():  # as the parser refuses a flag that would be ignored
                ignored = [name for name in restored if name in dests and differences[name][0] != defaults[name]]
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


def resumed_settings(args, settings: RunSettings) -> Tuple[RunSettings, List[str]]:
    """With --ckpt.load_enable: the settings the resumed run will train on (the checkpoint's restorable ones, as
    ``restore_checkpoint_settings`` gives them at the first step) and the lines saying so; the command line's
    settings and no line when there is no checkpoint yet. The model states file is memory-mapped: only its client
    state is read."""
    import glob

    import torch

    actor = os.path.join(os.path.expanduser(str(_arg(args, "ckpt.path", ""))), "_actor")
    latest = os.path.join(actor, "latest")
    if not os.path.isfile(latest):
        return settings, [f"  resume            no checkpoint in {actor} yet: the run starts from step 0"]
    with open(latest, encoding="utf-8") as file:
        tag = file.read().strip()
    files = sorted(glob.glob(os.path.join(actor, tag, "*model_states.pt")))
    if not files:
        raise ValueError(f"--ckpt.load_enable: {latest} names {tag}, but {os.path.join(actor, tag)} holds no states")
    states = torch.load(files[0], map_location="cpu", weights_only=False, mmap=True)
    checkpoint = f"--ckpt.path {_arg(args, 'ckpt.path')} ({tag})"
    if "gd2po" not in states:
        return settings, [f"  resume            {checkpoint} holds no GD²PO settings: the command line's are used"]
    resumed, warning = restore_checkpoint_settings(args, settings, states["gd2po"], checkpoint)
    line = f"  resume            from {checkpoint}: the settings above are the ones the resumed run trains on"
    return resumed, [line] + ([f"  resume            {warning}"] if warning else [])


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
