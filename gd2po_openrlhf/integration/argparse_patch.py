"""The only code that touches argparse: OpenRLHF's launcher parser learns gd2po/gdpo, and every parse is checked.

``install_argparse_extension`` (called by the import hook when ``openrlhf.cli.train_ppo_ray`` is looked up) patches
``ArgumentParser.add_argument`` and ``parse_known_args`` process-wide, but changes only the parser that defines
``--algo.advantage.estimator``:
- ``add_argument``: the estimator gets the choices gd2po and gdpo and the flat alias ``--advantage_estimator``; the
  ``--gd2po.*`` / ``--cost.*`` flags (``flags.py``) are added;
- ``parse_known_args``: a ``--gd2po.config`` preset becomes the parser's defaults (the command line overrides it);
  after parsing, ``check_command_line`` refuses what does not fit (``parser.error``: exit 2 with the usage line,
  before Ray starts) and runs the dry run.

Only the standard library at import time (``ray`` for the dry run only).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional, Tuple

from ..rewards import reward_client_settings
from .dry_run import describe
from .flags import add_gd2po_arguments, load_preset
from .settings import GD2PO_ESTIMATORS, RunSettings, _arg, resolve_settings

ESTIMATOR_FLAG = "--algo.advantage.estimator"
ESTIMATOR_ALIAS = "--advantage_estimator"  # OpenRLHF 0.9.x spelling


def install_argparse_extension() -> None:
    """Teach the parser that defines --algo.advantage.estimator about gd2po/gdpo (idempotent)."""
    if getattr(argparse.ArgumentParser.add_argument, "gd2po_extension", False):
        return
    original_add_argument = argparse.ArgumentParser.add_argument
    original_parse_known_args = argparse.ArgumentParser.parse_known_args

    def add_argument(self, *option_strings, **kwargs):
        if ESTIMATOR_FLAG not in option_strings or getattr(self, "gd2po_extended", False):
            return original_add_argument(self, *option_strings, **kwargs)
        self.gd2po_extended = True
        if kwargs.get("choices") is not None:
            kwargs["choices"] = list(kwargs["choices"]) + [c for c in GD2PO_ESTIMATORS if c not in kwargs["choices"]]
        kwargs["help"] = (kwargs.get("help") or "") + (
            "; gd2po: GD²PO multi-reward estimator (per-dimension group normalisation, conflict filter, κ "
            "reweighting); gdpo: the same without filter and reweighting (see --gd2po.*)"
        )
        if ESTIMATOR_ALIAS not in self._option_string_actions:
            option_strings = option_strings + (ESTIMATOR_ALIAS,)
        action = original_add_argument(self, *option_strings, **kwargs)
        add_gd2po_arguments(self)
        return action

    def parse_known_args(self, args=None, namespace=None):
        if not getattr(self, "gd2po_extended", False):
            return original_parse_known_args(self, args, namespace)
        argv = list(sys.argv[1:] if args is None else args)
        # A preset becomes the parser's defaults, so that flags given on the command line override it.
        preset = argparse.ArgumentParser(add_help=False)
        preset.add_argument("--gd2po.config", default=None)
        path = getattr(original_parse_known_args(preset, argv)[0], "gd2po.config")
        if path:
            try:
                self.set_defaults(**load_preset(self, path))
            except ValueError as error:
                self.error(str(error))
        namespace, extras = original_parse_known_args(self, args, namespace)
        check_command_line(self, namespace, argv)
        return namespace, extras

    add_argument.gd2po_extension = True
    argparse.ArgumentParser.add_argument = add_argument
    argparse.ArgumentParser.parse_known_args = parse_known_args


def check_command_line(parser: argparse.ArgumentParser, namespace: argparse.Namespace, argv: List[str]) -> None:
    """Parse-time check of a command line: gd2po/gdpo settings, flags that would be ignored, the reward client's
    settings, and the dry run (any estimator)."""
    estimator = getattr(namespace, "algo.advantage.estimator", None)
    remote = _arg(namespace, "reward.remote_url")
    if isinstance(remote, str) and any(url.strip().startswith(("http://", "https://")) for url in remote.split(",")):
        try:  # read in the rollout actors, where a bad value would only surface at the first reward
            reward_client_settings()
        except ValueError as error:
            parser.error(f"{error} (the plugin's reward client in the rollout actors reads it)")
    dry_run = _arg(namespace, "gd2po.dry_run") or os.environ.get("GD2PO_DRY_RUN", "").strip().lower() in (
        "1",
        "true",
        "yes",
        "on",
    )
    if estimator not in GD2PO_ESTIMATORS:
        _refuse_ignored_flags(parser, argv, estimator, None)
        if dry_run:  # a baseline launched through the same scripts: OpenRLHF's own estimator, GD²PO inactive
            reward = remote or _arg(namespace, "reward.model_name_or_path")
            _exit_where_ray_starts(
                f"OpenRLHF's --advantage_estimator {estimator} (GD²PO inactive): reward from {reward}, "
                f"{_arg(namespace, 'rollout.n_samples_per_prompt')} rollouts per prompt"
            )
        return
    if _arg(namespace, "critic.model_name_or_path"):
        parser.error(
            f"--advantage_estimator {estimator} has no critic: drop --critic.model_name_or_path "
            "(gae is the critic estimator)"
        )
    try:
        settings = resolve_settings(namespace)
    except ValueError as error:
        parser.error(str(error))
    _refuse_ignored_flags(parser, argv, estimator, settings)
    # A missing reward file would otherwise surface as a swallowed exception in every vLLM rollout actor.
    for dim in settings.dimensions:
        if dim.source == "reward_function" and not os.path.isfile(dim.location):
            parser.error(f"reward file {dim.location} (--reward.remote_url, reward key {dim.key!r}) does not exist")
    if dry_run:
        _exit_where_ray_starts(describe(namespace, settings))


def _given_options(parser: argparse.ArgumentParser, argv: List[str]) -> List[Tuple[str, str, Optional[str]]]:
    """``(dest, option as written, value)`` of each long option on the command line, abbreviations resolved as
    argparse resolves them (a unique prefix); the value is the token after it or after ``=``."""
    options = parser._option_string_actions
    given = []
    for position, token in enumerate(argv):
        if not token.startswith("--"):
            continue
        name, _, inline = token.partition("=")
        actions = {options[name]} if name in options else {a for o, a in options.items() if o.startswith(name)}
        if len(actions) == 1:
            value = inline or (argv[position + 1] if position + 1 < len(argv) else None)
            given.append((actions.pop().dest, name, value))
    return given


def _refuse_ignored_flags(
    parser: argparse.ArgumentParser, argv: List[str], estimator: str, settings: Optional[RunSettings]
) -> None:
    """Flags that would be silently ignored are refused, named: both estimator spellings with different values,
    GD²PO or cost-model flags with OpenRLHF's own estimators, the dynamic-sampling settings without
    --gd2po.dynamic_sampling, and the SNR settings without the SNR filter."""
    given = _given_options(parser, argv)
    estimators = {(name, value) for dest, name, value in given if dest == "algo.advantage.estimator"}
    if len({value for _, value in estimators}) > 1:
        parser.error(
            f"the estimator is given twice: {', '.join(f'{name} {value}' for name, value in sorted(estimators))} "
            "(the last one would win silently): keep one"
        )
    if estimator not in GD2PO_ESTIMATORS:
        ignored = [
            name for dest, name, _ in given if dest.split(".")[0] in ("gd2po", "cost") and dest != "gd2po.dry_run"
        ]
        verb = "acts" if len(set(ignored)) == 1 else "act"
        if ignored:
            parser.error(
                f"{', '.join(dict.fromkeys(ignored))} only {verb} with --advantage_estimator gd2po or gdpo; with "
                f"OpenRLHF's {estimator} they would be ignored: drop them, or switch the estimator"
            )
        return
    if settings is not None and not settings.dynamic_sampling:
        ignored = [
            name
            for dest, name, _ in given
            if dest in ("gd2po.dynamic_sampling_min_kept", "gd2po.dynamic_sampling_max_prompts_factor")
        ]
        if ignored:
            parser.error(
                f"{', '.join(dict.fromkeys(ignored))} only act with --gd2po.dynamic_sampling: add it or drop them"
            )
    if settings is not None and settings.filter != "snr":
        ignored = [name for dest, name, _ in given if dest in ("gd2po.snr_threshold", "gd2po.snr_eps")]
        verb = "acts" if len(set(ignored)) == 1 else "act"
        without = (
            "--advantage_estimator gdpo (no filter)" if estimator == "gdpo" else f"--gd2po.filter {settings.filter}"
        )
        if ignored:
            parser.error(
                f"{', '.join(dict.fromkeys(ignored))} only {verb} with the snr filter; with {without} "
                "they would be ignored: drop them"
            )


def _exit_where_ray_starts(description: str) -> None:
    """The dry run: OpenRLHF finishes parsing (unknown arguments are errors) and runs its own checks; the launch
    stops at ``ray.init``, the first thing ``train()`` does, with the description printed."""
    import ray

    def init(*args, **kwargs):
        print(description)
        print("GD2PO dry run: OpenRLHF parsed and checked the arguments; exiting before Ray starts.", flush=True)
        sys.exit(0)

    ray.init = init
