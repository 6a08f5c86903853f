"""OpenRLHF's launcher parser learns gd2po/gdpo and the plugin's flags (``flags.py``), and every parse is checked.

``install_argparse_extension`` (called by the import hook when ``openrlhf.cli.train_ppo_ray`` is looked up) patches
``ArgumentParser.add_argument`` and ``parse_known_args`` process-wide, but changes only the parser that defines
``--algo.advantage.estimator``:
- ``add_argument``: the estimator gets the choices gd2po and gdpo and the flat alias ``--advantage_estimator``; the
  ``--gd2po.*`` / ``--cost.*`` flags (``flags.py``) are added;
- ``parse_known_args``: a ``--gd2po.config`` preset becomes the parser's defaults (the command line overrides it,
  key by key for the lists whose entries name a reward key, ``Flag.keyed``); negative numbers in
  scientific notation (``-1e-3``) are values, not options; after parsing, ``check_command_line`` refuses what does
  not fit (exit 2 with one line naming the flag, before Ray starts) and runs the dry run.

One policy for flags that act only together with another setting (``Flag.acts_with``, ``flags.ActsWith``): given on
the command line without it, they are refused; set by a preset, they are ignored.

Only the standard library and the plugin's torch-free modules at import time (``ray`` when the dry run stops the
launch or a token file is sent to the Ray job; ``torch`` for the dry run's reward check).
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import sys
from typing import List, Optional, Tuple

from ..rewards import AUTH_TOKEN_FILE_VARIABLE, reward_auth_token, reward_client_settings
from . import flags
from .cluster_shape import check_cluster_shape
from .dry_run import check_rewards, describe
from .openrlhf_patches import check_drift
from .presets import load_preset
from .settings import GD2PO_ESTIMATORS, RunSettings, _arg, resolve_settings
from .targets import env_switch

ESTIMATOR_FLAG = "--algo.advantage.estimator"
ESTIMATOR_ALIAS = "--advantage_estimator"  # OpenRLHF 0.9.x spelling
# argparse reads -5, -0.5 but not -5e-1 as a number (a value, not an option): this adds scientific notation.
NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


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
        flags.add_gd2po_arguments(self)
        return action

    def parse_known_args(self, args=None, namespace=None):
        if not getattr(self, "gd2po_extended", False):
            return original_parse_known_args(self, args, namespace)
        argv = list(sys.argv[1:] if args is None else args)
        self._negative_number_matcher = NEGATIVE_NUMBER
        # A preset becomes the parser's defaults, so that flags given on the command line override it.
        preset = argparse.ArgumentParser(add_help=False)
        preset.add_argument("--gd2po.config", default=None)
        path = getattr(original_parse_known_args(preset, argv)[0], "gd2po.config")
        preset_lists = {}
        if path:
            try:
                values = load_preset(self, path)
            except ValueError as error:
                refuse(self, str(error))
            # Lists whose entries name a reward key: a command-line entry replaces the preset's entries on its key
            # (instead of being appended to them).
            keyed = [flag.dest for flag in flags.FLAGS if flag.keyed]
            preset_lists = {dest: values.pop(dest) for dest in keyed if values.get(dest)}
            self.set_defaults(**values)
        _refuse_unknown_plugin_flags(self, argv)
        # argparse's errors on a plugin flag's value (a bad choice, not a number): one line, not OpenRLHF's usage.
        self.error = lambda message: (
            refuse(self, message)
            if re.search(r"argument --(gd2po|cost)\.", message)
            else type(self).error(self, message)
        )
        try:
            namespace, extras = original_parse_known_args(self, args, namespace)
        finally:
            del self.error
        if path and values.get("gd2po.reward_weights") and values.get("gd2po.reward_keys"):
            _weights_follow_keys(self, namespace, argv, path, values)
        for dest, preset_entries in preset_lists.items():
            given = getattr(namespace, dest) or []
            overridden = {_entry_key(text) for text in given}
            kept = [text for text in preset_entries if _entry_key(text) not in overridden]
            setattr(namespace, dest, kept + list(given))
        check_command_line(self, namespace, argv)
        return namespace, extras

    add_argument.gd2po_extension = True
    argparse.ArgumentParser.add_argument = add_argument
    argparse.ArgumentParser.parse_known_args = parse_known_args


def _refuse_unknown_plugin_flags(parser: argparse.ArgumentParser, argv: List[str]) -> None:
    """A ``--gd2po.*`` or ``--cost.*`` token that is no flag (nor an abbreviation of one), or any unknown token close
    to a plugin flag, is refused in one line with the nearest flag; OpenRLHF's own flags keep argparse's message."""
    options = parser._option_string_actions
    plugin_flags = [option for option in options if option.startswith(("--gd2po.", "--cost."))]
    for token in argv:
        name = token.partition("=")[0]
        if not name.startswith("--") or name in options or any(option.startswith(name) for option in options):
            continue
        nearest = difflib.get_close_matches(name, plugin_flags, n=1, cutoff=0.6)
        if name.startswith(("--gd2po.", "--cost.")) or difflib.get_close_matches(name, plugin_flags, n=1, cutoff=0.85):
            suggestion = f": did you mean {nearest[0]}?" if nearest else ""
            refuse(parser, f"unknown flag {name}{suggestion}")


def _weights_follow_keys(parser, namespace, argv: List[str], path: str, preset: dict) -> None:
    """A preset's reward_weights are its reward_keys' weights: when the command line gives --gd2po.reward_keys of
    its own (reordered, or a subset) and no --gd2po.reward_weights, each key keeps the preset's weight for it; a key
    the preset does not weigh is refused. (By position, reordered keys would silently train the wrong reward.)"""
    given = {dest for dest, _, _ in _given_options(parser, argv)}
    if "gd2po.reward_keys" not in given or "gd2po.reward_weights" in given:
        return
    preset_weights = dict(zip(preset["gd2po.reward_keys"], preset["gd2po.reward_weights"]))
    keys = list(getattr(namespace, "gd2po.reward_keys"))
    unweighted = [key for key in keys if key not in preset_weights]
    if len(preset["gd2po.reward_weights"]) != len(preset["gd2po.reward_keys"]) or unweighted:
        refuse(
            parser,
            f"--gd2po.reward_keys {' '.join(keys)} on the command line, but the preset {path} weighs "
            f"{dict(preset_weights)}"
            + (f", not {unweighted}" if unweighted else f" with {len(preset['gd2po.reward_weights'])} weights")
            + ": give --gd2po.reward_weights on the command line too, one per key in its order",
        )
    setattr(namespace, "gd2po.reward_weights", [preset_weights[key] for key in keys])


def _entry_key(text: str) -> str:
    return str(text).partition("=")[0].strip()


def refuse(parser: argparse.ArgumentParser, message: str) -> None:
    """Exit 2 with the message and one line on --help (``parser.error`` would print OpenRLHF's ~200-line usage)."""
    sys.stderr.write(f"{parser.prog}: error: {message}\n{parser.prog}: --help lists every flag\n")
    sys.exit(2)


def _local_paths(value) -> List[str]:
    """The entries of a --data.prompt_dataset value that name local files (a Hugging Face dataset id does not)."""
    entries = value.split(",") if isinstance(value, str) else list(value or [])
    return [
        entry.strip()
        for entry in entries
        if entry.strip().startswith(("/", "./", "../", "~"))
        or entry.strip().endswith((".json", ".jsonl", ".parquet", ".csv", ".txt", ".arrow"))
    ]


def check_command_line(parser: argparse.ArgumentParser, namespace: argparse.Namespace, argv: List[str]) -> None:
    """Parse-time check of a command line: gd2po/gdpo settings, flags that would be ignored, the reward client's
    settings, and the dry run (any estimator)."""
    estimator = getattr(namespace, "algo.advantage.estimator", None)
    remote = _arg(namespace, "reward.remote_url")
    servers = isinstance(remote, str) and any(
        url.strip().startswith(("http://", "https://")) for url in remote.split(",")
    )
    token_file = _arg(namespace, "gd2po.reward_auth_token_file")
    if token_file:
        if not servers:
            refuse(parser, "--gd2po.reward_auth_token_file only acts with an http(s) --reward.remote_url: drop it")
        token_file = os.path.abspath(os.path.expanduser(token_file))
        try:
            reward_auth_token(token_file)
        except ValueError as error:
            refuse(parser, f"--gd2po.reward_auth_token_file: {error}")
        os.environ[AUTH_TOKEN_FILE_VARIABLE] = token_file  # this process: the dry run's reward check
        # The rollout actors, on any node: added to the job's runtime_env that OpenRLHF's train() gives ray.init (the
        # driver's own environment reaches neither nodes started by `ray start` nor other hosts).
        import ray

        def init_with_token_file(*args, init=ray.init, **kwargs):
            runtime_env = dict(kwargs.get("runtime_env") or {})
            runtime_env["env_vars"] = {**(runtime_env.get("env_vars") or {}), AUTH_TOKEN_FILE_VARIABLE: token_file}
            return init(*args, **{**kwargs, "runtime_env": runtime_env})

        ray.init = init_with_token_file
    if servers:
        try:  # read in the rollout actors, where a bad value would only surface at the first reward
            reward_client_settings()
            reward_auth_token()
        except ValueError as error:
            refuse(parser, f"{error} (the plugin's reward client in the rollout actors reads it)")
    dry_run = _arg(namespace, "gd2po.dry_run") or env_switch("GD2PO_DRY_RUN")
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
        refuse(
            parser,
            f"--advantage_estimator {estimator} has no critic: drop --critic.model_name_or_path "
            "(gae is the critic estimator)",
        )
    try:
        settings = resolve_settings(namespace)
        check_cluster_shape(namespace, settings)
    except ValueError as error:
        refuse(parser, str(error))
    _refuse_ignored_flags(parser, argv, estimator, settings)
    # The installed OpenRLHF against the one the plugin was written for: a warning per changed function.
    refusal = check_drift()
    if refusal:
        refuse(parser, refusal)
    # A missing reward file would otherwise surface as a swallowed exception in every vLLM rollout actor.
    for dim in settings.dimensions:
        if dim.source == "reward_function" and not os.path.isfile(dim.location):
            refuse(parser, f"reward file {dim.location} (--reward.remote_url, reward key {dim.key!r}) does not exist")
    agent = _arg(namespace, "train.agent_func_path")
    if agent and not os.path.isfile(agent):
        refuse(parser, f"--train.agent_func_path {agent} does not exist")
    if agent and remote not in (None, "agent", ["agent"]):
        refuse(
            parser,
            f"--train.agent_func_path {agent} and --reward.remote_url {remote!r}: OpenRLHF's agent returns the "
            "rewards and the remote URL would be ignored; give one of them",
        )
    for path in _local_paths(_arg(namespace, "data.prompt_dataset")):
        if not os.path.exists(os.path.expanduser(path)):
            refuse(parser, f"--data.prompt_dataset {path} does not exist")
    if dry_run:
        try:
            from .resume import resumed_settings  # imports openrlhf's logging: only for a dry run of a resume

            resumed, resume_lines = (
                resumed_settings(namespace, settings) if _arg(namespace, "ckpt.load_enable") else (settings, [])
            )
            checked = check_rewards(namespace, resumed)
        except (ValueError, OSError) as error:
            refuse(parser, f"dry run: {error}")
        _exit_where_ray_starts("\n".join([describe(namespace, resumed), *resume_lines, *checked]))


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
    """Flags on the command line that would be silently ignored are refused, named: both estimator spellings with
    different values, GD²PO or cost-model flags with OpenRLHF's own estimators, and every flag given without what it
    acts with (``Flag.acts_with``)."""
    given = _given_options(parser, argv)
    estimators = {(name, value) for dest, name, value in given if dest == "algo.advantage.estimator"}
    if len({value for _, value in estimators}) > 1:
        refuse(
            parser,
            f"the estimator is given twice: {', '.join(f'{name} {value}' for name, value in sorted(estimators))} "
            "(the last one would win silently): keep one",
        )
    if estimator not in GD2PO_ESTIMATORS:
        plugin_flags = flags.flags_by_dest()
        ignored = [name for dest, name, _ in given if dest in plugin_flags and not plugin_flags[dest].any_estimator]
        if ignored:
            refuse(
                parser,
                _ignored(ignored, "--advantage_estimator gd2po or gdpo", f"OpenRLHF's {estimator}")
                + ", or switch the estimator",
            )
        return
    for rule, dests in flags.only_acts_with() if settings is not None else ():
        ignored = [name for dest, name, _ in given if dest in dests]
        if ignored and not rule.active(settings):
            refuse(parser, _ignored(ignored, rule.needs, rule.instead(settings)))


def _ignored(names: List[str], needs: str, instead: str) -> str:
    names = list(dict.fromkeys(names))
    one = len(names) == 1
    return (
        f"{', '.join(names)} only {'acts' if one else 'act'} with {needs}; with {instead} "
        f"{'it' if one else 'they'} would be ignored: drop {'it' if one else 'them'}"
    )


def _exit_where_ray_starts(description: str) -> None:
    """The dry run: OpenRLHF finishes parsing (unknown arguments are errors) and runs its own checks; the launch
    stops at ``ray.init``, the first thing ``train()`` does, with the description printed."""
    import ray

    def init(*args, **kwargs):
        print(description)
        torch = sys.modules.get("torch")
        if "deepspeed" in sys.modules and torch is not None and not torch.cuda.is_available():
            print(
                "note: DeepSpeed's 'Setting accelerator to CPU. If you have GPU or other accelerator, we were unable "
                "to detect it' comes from importing OpenRLHF's launcher on a host where torch sees no GPU: harmless "
                "for a dry run (it needs none); a real launch needs the GPUs"
            )
        print("GD2PO dry run: OpenRLHF parsed and checked the arguments; exiting before Ray starts.", flush=True)
        sys.exit(0)

    ray.init = init
