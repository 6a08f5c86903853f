"""OpenRLHF's arguments → the run's GD²PO settings, resolved once into a typed, frozen object.

``resolve_settings(args)`` is the only place that reads ``--gd2po.*`` / ``--cost.*`` values (and the OpenRLHF flags
they depend on) out of an argparse namespace: the parse-time check, the experience maker, the rollout-arrival patch
and the checkpoint code all read the :class:`RunSettings` it returns. ``dry_run.describe`` is the text of it.

Only the standard library and the plugin's torch-free modules (``config``, ``conditions``, ``constraints``) at import
time: this runs in the driver before OpenRLHF parses its arguments.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
import unicodedata
from dataclasses import dataclass
from typing import Optional, Tuple

from ..conditions import RewardCondition, ordered_conditions
from ..config import MAX_ABS_WEIGHT, GD2POConfig
from ..constraints import WeightSchedule
from . import flags
from .flags import REWARD_CHAT_TEMPLATES

GD2PO_ESTIMATORS = ("gd2po", "gdpo")
REMOTE_SOURCES = ("reward_function", "reward_server", "agent")
MODEL_SOURCES = ("reward_model", "cost_model")

REWARD_MODEL_FLAG = "--gd2po.reward_model"
# What a reward key may be made of (str patterns are Unicode: \w is any script's letters and digits, and '_').
REWARD_KEY = re.compile(r"[\w.-]+")
# A Hugging Face hub id: OWNER/NAME, neither absolute nor relative to the working directory.
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class ModelGroup:
    """A sequence-regression model scoring one reward key from its own Ray actor group: a ``--gd2po.reward_model
    KEY=PATH[,OPTION=VALUE...]`` entry, or the --reward.* / --cost.* groups under their own flags (``flag``)."""

    key: str
    path: str
    flag: str = REWARD_MODEL_FLAG  # --gd2po.reward_model, --reward.model_name_or_path or --cost.model_name_or_path
    nodes: int = 1
    gpus_per_node: int = 1
    value_head_prefix: Optional[str] = None  # None: --ds.value_head_prefix
    normalize: bool = False  # the model's stored mean/std normalisation
    offload: bool = False  # offload to CPU between calls
    chat_template: Optional[str] = None  # policy | own; None: --gd2po.reward_chat_template
    # Who creates its Ray actor group: OpenRLHF creates the --reward.model_name_or_path group unless a reward file,
    # server or agent also scores the rollouts (OpenRLHF does not combine them); the plugin creates every other.
    owner: str = "plugin"  # plugin | openrlhf

    @property
    def gpus(self) -> int:
        return self.nodes * self.gpus_per_node

    def __str__(self) -> str:
        """The canonical ``--gd2po.reward_model`` text of this group (its options at their values)."""
        options = [f"nodes={self.nodes}", f"gpus_per_node={self.gpus_per_node}"]
        options += [f"value_head_prefix={self.value_head_prefix}"] if self.value_head_prefix else []
        options += [f"normalize={str(self.normalize).lower()}", f"offload={str(self.offload).lower()}"]
        options += [f"chat_template={self.chat_template}"] if self.chat_template else []
        return f"{self.key}={self.path}," + ",".join(options)


MODEL_GROUP_OPTIONS = ("nodes", "gpus_per_node", "value_head_prefix", "normalize", "offload", "chat_template")


def parse_reward_model(text: str) -> ModelGroup:
    """One ``--gd2po.reward_model KEY=PATH[,OPTION=VALUE...]`` (options: ``MODEL_GROUP_OPTIONS``); raises ValueError
    naming ``text`` and what is wrong: the syntax, an unknown option or value, or a PATH that is neither a local
    folder nor a hub id."""
    key, equals, rest = str(text).partition("=")
    path, *options = rest.split(",")
    key, path = key.strip(), os.path.expanduser(path.strip())
    if not equals or not key or not path:
        raise ValueError(
            f"{REWARD_MODEL_FLAG} {text!r}: expected KEY=PATH[,OPTION=VALUE...], e.g. "
            "harmless=/models/harmless-rm,gpus_per_node=1,value_head_prefix=score"
        )
    if not os.path.isdir(path) and (not HUB_ID.match(path) or os.path.exists(path)):
        raise ValueError(
            f"{REWARD_MODEL_FLAG} {text!r}: the path {path!r} is neither a local folder nor a hub id (OWNER/NAME)"
        )
    values = {}
    for option in options:
        name, equals, value = (part.strip() for part in option.partition("="))
        if name not in MODEL_GROUP_OPTIONS or not equals or name in values:
            problem = "is given twice" if name in values else "is not one of " + ", ".join(MODEL_GROUP_OPTIONS)
            raise ValueError(f"{REWARD_MODEL_FLAG} {text!r}: option {option.strip()!r} {problem} (as NAME=VALUE)")
        if name in ("nodes", "gpus_per_node"):
            if not (value.isascii() and value.isdigit()) or int(value) < 1:  # not '²' or '٣
                raise ValueError(f"{REWARD_MODEL_FLAG} {text!r}: {name} must be an integer >= 1, got {value!r}")
            values[name] = int(value)
        elif name in ("normalize", "offload"):
            if value.lower() not in ("true", "false"):
                raise ValueError(f"{REWARD_MODEL_FLAG} {text!r}: {name} must be true or false, got {value!r}")
            values[name] = value.lower() == "true"
        elif name == "chat_template" and value not in REWARD_CHAT_TEMPLATES:
            raise ValueError(f"{REWARD_MODEL_FLAG} {text!r}: chat_template must be policy or own, got {value!r}")
        else:
            values[name] = value
    return ModelGroup(key, path, **values)


@dataclass(frozen=True)
class RewardDimension:
    """One column of the reward matrix: its key (``info["reward/<key>"]``), where it comes from, its weight."""

    key: str
    source: str  # reward_model | cost_model | reward_function | reward_server | agent
    location: str
    weight: float


@dataclass(frozen=True)
class RunSettings:
    """Everything a gd2po/gdpo run does with its flags, resolved and checked (``resolve_settings``).

    The defaults here are the flags' defaults (``flags.py`` reads them). ``filter`` is the effective filter:
    ``none`` for gdpo, the flag's value or ``GD2POConfig``'s default for gd2po.
    """

    estimator: str = "gd2po"
    n_samples_per_prompt: int = 2
    dimensions: Tuple[RewardDimension, ...] = ()
    # Every model-scored dimension's Ray actor group: --reward.model_name_or_path, --cost.model_name_or_path and each
    # --gd2po.reward_model, in --gd2po.reward_keys order.
    model_groups: Tuple[ModelGroup, ...] = ()
    filter: str = GD2POConfig.filter
    snr_threshold: float = GD2POConfig.snr_threshold
    snr_eps: float = GD2POConfig.snr_eps
    norm_by_std: bool = GD2POConfig.norm_by_std  # OpenRLHF's --algo.advantage.no_std_norm, negated
    no_reweight_queries: bool = False
    no_whiten: bool = False
    sum_rewards: bool = False
    drop_filtered: bool = False
    on_bad_reward: str = "error"
    reward_chat_template: str = "policy"
    reward_model_key: str = "reward_model"
    cost_model_key: str = "cost"
    resume_with_flags: bool = False
    dynamic_sampling: bool = False
    dynamic_sampling_min_kept: int = 1
    dynamic_sampling_max_prompts_factor: float = 4.0
    # --cost.budget: λ of ``constraint_key``'s dimension by dual ascent (``constraints.dual_ascent``).
    constraint_key: Optional[str] = None  # resolved: --gd2po.constraint_key, else the cost model's key
    cost_budget: Optional[float] = None
    lambda_init: float = 1.0
    lambda_lr: float = 0.1
    lambda_max: float = 10.0
    lambda_log_space: bool = False
    weight_schedules: Tuple[WeightSchedule, ...] = ()  # --gd2po.reward_weight_schedule, one per scheduled key
    conditions: Tuple[RewardCondition, ...] = ()  # --gd2po.reward_condition, in the order they apply
    reference_key: Optional[str] = None  # --gd2po.reference_key: a weight-0 dimension, logged against conflicts
    what_if_filter: Optional[str] = None  # --gd2po.what_if_filter: logged as the mass it would remove, not applied
    preset: Optional[str] = None

    @property
    def reward_keys(self) -> Tuple[str, ...]:
        return tuple(dim.key for dim in self.dimensions)

    @property
    def reward_weights(self) -> Tuple[float, ...]:
        return tuple(dim.weight for dim in self.dimensions)

    @functools.cached_property
    def gd2po_config(self) -> GD2POConfig:
        """The estimator's configuration (validated by ``GD2POConfig``, built once per settings); κ reweighting is
        gd2po's only."""
        return GD2POConfig(
            filter=self.filter,
            snr_threshold=self.snr_threshold,
            snr_eps=self.snr_eps,
            norm_by_std=self.norm_by_std,
            whiten=not self.no_whiten,
            reweight_queries=self.estimator == "gd2po" and not self.no_reweight_queries,
            weights=self.reward_weights,
            reward_keys=self.reward_keys,
            reference_key=self.reference_key,
            what_if_filter=self.what_if_filter if self.filter == "none" else None,
        )

    @property
    def weights_move(self) -> bool:
        """Whether a budget or a schedule changes the weights from step to step."""
        return self.cost_budget is not None or bool(self.weight_schedules)

    def step_weights(self, step: int, multiplier: Optional[float]) -> Tuple[float, ...]:
        """The weights of global step ``step`` (steps already trained): a scheduled dimension's ``weight_at(step)``,
        the budgeted one's ±λ (the sign of its --gd2po.reward_weights entry: −λ for a cost, +λ for a safety score),
        the others' fixed weights."""
        scheduled = {schedule.key: schedule.weight_at(step) for schedule in self.weight_schedules}
        if self.cost_budget is not None:
            scheduled[self.constraint_key] = math.copysign(multiplier, self.dimension(self.constraint_key).weight)
        return tuple(scheduled.get(dim.key, dim.weight) for dim in self.dimensions)

    def dimension(self, key: str) -> RewardDimension:
        return next(dim for dim in self.dimensions if dim.key == key)

    @property
    def remote_dimensions(self) -> Tuple[RewardDimension, ...]:
        """The dimensions a reward file, server or agent returns with each rollout (read when it arrives)."""
        return tuple(dim for dim in self.dimensions if dim.source in REMOTE_SOURCES)


def given_values(args) -> dict:
    """``{field: value}`` of every flag in the table whose ``RunSettings`` field is its value as given (not derived),
    its default where ``args`` lacks it; a switch is a bool whatever the namespace holds."""
    values = {}
    for flag in flags.FLAGS:
        if flag.field and not flag.derived:
            value = _arg(args, flag.dest, False if flag.switch else flag.default)
            values[flag.field] = bool(value) if flag.switch else value
    return values


def _arg(args, dotted: str, default=None):
    """A dotted option from either the flat argparse namespace or OpenRLHF's hierarchized one."""
    if dotted in vars(args):
        return vars(args)[dotted]
    node = args
    for part in dotted.split("."):
        if not hasattr(node, part):
            return default
        node = getattr(node, part)
    return node


def resolve_settings(args) -> RunSettings:
    """The run's settings and reward dimensions with their sources, from OpenRLHF's arguments (flat or nested).

    Raises ValueError naming the flags that do not fit together.
    """
    given = given_values(args)
    estimator = _arg(args, "algo.advantage.estimator")
    if estimator not in GD2PO_ESTIMATORS:
        raise ValueError(f"resolve_settings() is for --advantage_estimator gd2po|gdpo, got {estimator!r}")
    n_samples = _arg(args, "rollout.n_samples_per_prompt", 1)
    if n_samples is None or n_samples < 2:
        raise ValueError(
            f"--advantage_estimator {estimator} normalises rewards within each prompt's rollouts: "
            f"set --rollout.n_samples_per_prompt >= 2 (got {n_samples})"
        )
    given_filter = _arg(args, "gd2po.filter")
    if estimator == "gdpo" and given_filter not in (None, "none"):
        raise ValueError(
            f"--advantage_estimator gdpo is GD²PO without filtering; --gd2po.filter {given_filter} "
            "(given on the command line or by --gd2po.config) needs --advantage_estimator gd2po: add --gd2po.filter "
            "none"
        )
    if given["sum_rewards"] and estimator != "gdpo":
        raise ValueError(
            "--gd2po.sum_rewards (GRPO on the weighted sum) needs --advantage_estimator gdpo: "
            "a single summed dimension never conflicts"
        )
    for flag in ("reward.overlong_buffer_len", "reward.stop_properly_penalty_coef"):
        if _arg(args, flag) is not None:
            raise ValueError(
                f"--{flag} shapes OpenRLHF's single summed reward and is not supported with --advantage_estimator "
                f"{estimator}: return a length dimension from your reward function instead"
            )

    dimensions, model_groups = resolve_dimensions(args, given)
    if given["reward_chat_template"] == "own" or any(group.chat_template == "own" for group in model_groups):
        if not model_groups:
            raise ValueError(
                "--gd2po.reward_chat_template own re-renders rollouts for reward/cost models, but none is given"
            )
        if not _arg(args, "data.label_key"):
            raise ValueError(
                "--gd2po.reward_chat_template own reads each prompt's conversation from its label: set "
                "--data.label_key "
                "(examples/data/prepare_safe_alignment.py writes it as 'label')"
            )

    dynamic_sampling = given["dynamic_sampling"]
    if dynamic_sampling:
        _check_dynamic_sampling(
            args,
            dimensions,
            n_samples,
            given["dynamic_sampling_min_kept"],
            given["dynamic_sampling_max_prompts_factor"],
        )

    constraint_key = _resolve_budget(args, given, dimensions)
    schedules = _resolve_schedules(args, dimensions, constraint_key)
    if dynamic_sampling and (constraint_key or schedules):
        raise ValueError(
            "--gd2po.dynamic_sampling tests each prompt group with the run's fixed weights where its rollouts are "
            "generated, which never sees a step's λ or scheduled weights: drop --gd2po.dynamic_sampling, or "
            + ("--cost.budget" if constraint_key else "--gd2po.reward_weight_schedule")
        )

    # Refuses unknown keys, self-gates, cycles.
    conditions = ordered_conditions(_arg(args, "gd2po.reward_condition") or (), [dim.key for dim in dimensions])

    reference_key = given["reference_key"]
    if reference_key is not None:
        weights = {dim.key: dim.weight for dim in dimensions}
        if reference_key not in weights:
            raise ValueError(f"--gd2po.reference_key {reference_key!r} is not one of the reward keys {list(weights)}")
        if weights[reference_key] != 0:
            raise ValueError(
                f"--gd2po.reference_key {reference_key!r} has the weight {weights[reference_key]:g}: a reference is "
                "logged, never trained: give it the weight 0 in --gd2po.reward_weights"
            )
        if reference_key == constraint_key or any(schedule.key == reference_key for schedule in schedules):
            raise ValueError(
                f"--gd2po.reference_key {reference_key!r} is given a moving weight by "
                + ("--cost.budget" if reference_key == constraint_key else "--gd2po.reward_weight_schedule")
                + ": a reference keeps the weight 0"
            )

    settings = RunSettings(
        **given,
        estimator=estimator,
        n_samples_per_prompt=n_samples,
        norm_by_std=not _arg(args, "algo.advantage.no_std_norm", False),
        # The fields the flag table marks derived.
        filter="none" if estimator == "gdpo" else (given_filter or GD2POConfig.filter),
        dimensions=dimensions,
        model_groups=model_groups,
        constraint_key=constraint_key,
        weight_schedules=schedules,
        conditions=conditions,
    )
    if not schedules and all(weight == 0 for weight in settings.reward_weights):
        raise ValueError(
            f"--gd2po.reward_weights {list(settings.reward_weights)} gives every reward key "
            f"{list(settings.reward_keys)} the weight 0: the run would train on nothing. Give at least one a non-zero "
            "weight"
        )
    try:
        settings.gd2po_config  # GD2POConfig validates τ, ε and the weights: refused here, at parse time
    except ValueError as error:
        message = str(error)
        for field, flag in flags.config_flags().items():
            message = message.replace(f"GD2POConfig.{field}", flag)
        raise ValueError(message) from None
    return settings


def _check_dynamic_sampling(args, dimensions, n_samples: int, min_kept, max_prompts_factor) -> None:
    """--gd2po.dynamic_sampling's flags fit together; raises ValueError naming the flag."""
    if _arg(args, "algo.dynamic_filtering_enable"):
        raise ValueError(
            "--gd2po.dynamic_sampling and --algo.dynamic_filtering_enable both resample prompt groups: use one. "
            "--gd2po.dynamic_sampling tests every reward dimension with the estimator (a group trains when a rollout "
            "survives the conflict filter with a non-zero score); OpenRLHF's tests the mean of the summed reward"
        )
    models = [dim for dim in dimensions if dim.source in MODEL_SOURCES]
    if models:
        raise ValueError(
            "--gd2po.dynamic_sampling tests each prompt group when its rollouts arrive from the rollout actors, "
            f"before the reward/cost model groups score them; reward key {models[0].key!r} comes from the "
            f"{models[0].source.replace('_', ' ')} {models[0].location}. Use it with dimensions from a reward file, "
            "server or agent (--reward.remote_url, --train.agent_func_path) only, as OpenRLHF's dynamic filtering"
        )
    if isinstance(min_kept, bool) or not isinstance(min_kept, int) or not 1 <= min_kept <= n_samples:
        raise ValueError(
            f"--gd2po.dynamic_sampling_min_kept must be an integer in [1, --rollout.n_samples_per_prompt = "
            f"{n_samples}], got {min_kept!r}"
        )
    if not isinstance(max_prompts_factor, (int, float)) or not 1 <= max_prompts_factor < float("inf"):
        raise ValueError(
            "--gd2po.dynamic_sampling_max_prompts_factor must be a finite number >= 1 (the most prompts one batch "
            f"may draw, as a multiple of its prompts), got {max_prompts_factor!r}"
        )


def _resolve_budget(args, given: dict, dimensions) -> Optional[str]:
    """The budgeted reward key (None without --cost.budget), with the --cost.budget/lambda_* values checked; raises
    ValueError naming the flag that does not fit."""
    budget = given["cost_budget"]
    values = {name: given[name] for name in ("cost_budget", "lambda_init", "lambda_lr", "lambda_max")}
    given_key = _arg(args, "gd2po.constraint_key")
    if budget is None:  # λ flags given without it: refused by flags.BUDGET
        return None
    cost_models = [dim.key for dim in dimensions if dim.source == "cost_model"]
    key = given_key or (cost_models[0] if cost_models else None)
    keys = [dim.key for dim in dimensions]
    if key is None:
        raise ValueError(
            "--cost.budget needs the dimension it constrains: a cost model (--cost.model_name_or_path) or "
            f"--gd2po.constraint_key naming one of the reward keys {keys}"
        )
    if key not in keys:
        raise ValueError(f"--gd2po.constraint_key {key!r} is not one of the reward keys {keys}")
    if _arg(args, "gd2po.reward_weights") is None:
        raise ValueError(
            f"--cost.budget on reward key {key!r}: give its sign in --gd2po.reward_weights. -1 for a cost (higher is "
            "more harmful, e.g. a Beaver cost model): the budget is a ceiling and the step's weight is -λ. +1 for a "
            "score (higher is safer, e.g. the GD²PO authors' safety model): the budget is a floor, weight +λ"
        )
    weight = next(dim.weight for dim in dimensions if dim.key == key)
    if abs(weight) != 1:
        raise ValueError(
            f"--gd2po.reward_weights gives the budgeted reward key {key!r} the weight {weight:g}; λ replaces its "
            "magnitude each step, so give only its sign: -1 (a cost, the budget is a ceiling) or +1 (a score, the "
            "budget is a floor)"
        )
    for name, value in values.items():
        if isinstance(value, bool) or not math.isfinite(value):
            raise ValueError(f"--cost.{name.removeprefix('cost_')} must be a finite number, got {value!r}")
    if not 0 < values["lambda_max"] <= MAX_ABS_WEIGHT:
        raise ValueError(f"--cost.lambda_max must lie in (0, {MAX_ABS_WEIGHT:g}], got {values['lambda_max']!r}")
    low = 0 if not given["lambda_log_space"] else math.nextafter(0, 1)
    if not low <= values["lambda_init"] <= values["lambda_max"]:
        raise ValueError(
            f"--cost.lambda_init must lie in [0, --cost.lambda_max = {values['lambda_max']:g}]"
            + (" and be > 0 with --cost.lambda_log_space (λ moves by factors)" if given["lambda_log_space"] else "")
            + f", got {values['lambda_init']!r}"
        )
    if values["lambda_lr"] < 0:
        raise ValueError(f"--cost.lambda_lr must be >= 0, got {values['lambda_lr']!r}")
    return key


def _resolve_schedules(args, dimensions, constraint_key: Optional[str]) -> Tuple[WeightSchedule, ...]:
    """The --gd2po.reward_weight_schedule entries, parsed; each names a reward key once, stays off the budgeted key
    and starts where an explicit --gd2po.reward_weights puts the key. Raises ValueError naming the entry."""
    keys = [dim.key for dim in dimensions]
    given_weights = _arg(args, "gd2po.reward_weights")
    seen, schedules = set(), []
    for text in _arg(args, "gd2po.reward_weight_schedule") or ():
        schedule = WeightSchedule.parse(text)
        schedules.append(schedule)
        if schedule.key not in keys:
            raise ValueError(f"--gd2po.reward_weight_schedule {text!r}: {schedule.key!r} is not one of {keys}")
        if schedule.key in seen:
            raise ValueError(f"--gd2po.reward_weight_schedule schedules reward key {schedule.key!r} twice")
        seen.add(schedule.key)
        if schedule.key == constraint_key:
            raise ValueError(
                f"--gd2po.reward_weight_schedule {text!r} and --cost.budget both set the weight of {schedule.key!r}: "
                "the budget's λ moves it; use one"
            )
        if max(abs(schedule.start), abs(schedule.end)) > MAX_ABS_WEIGHT:
            raise ValueError(
                f"--gd2po.reward_weight_schedule {text!r}: weights must satisfy |w| <= {MAX_ABS_WEIGHT:g}"
            )
        fixed = next(dim.weight for dim in dimensions if dim.key == schedule.key)
        if given_weights is not None and fixed != schedule.start:
            raise ValueError(
                f"--gd2po.reward_weight_schedule {text!r} starts at {schedule.start:g} but --gd2po.reward_weights "
                f"gives {schedule.key!r} the weight {fixed:g}: make them agree"
            )
    return tuple(schedules)


def resolve_dimensions(args, given: dict) -> Tuple[Tuple[RewardDimension, ...], Tuple[ModelGroup, ...]]:
    """The reward dimensions, in --gd2po.reward_keys order, each with its source (a reward/cost model group, a
    reward file, a server or an agent) and its weight, and the model groups that score the model dimensions (same
    order). Raises ValueError naming the flags that do not fit."""
    estimator = _arg(args, "algo.advantage.estimator")
    given_remote = _arg(args, "reward.remote_url")
    remote = given_remote.split(",") if isinstance(given_remote, str) else list(given_remote or [])
    if given_remote is not None and not all(url.strip() for url in remote):
        # OpenRLHF would still hand the rollout actors a blank endpoint, whose failure then crashes its info tensors.
        raise ValueError(
            f"--reward.remote_url {given_remote!r} has an empty entry: give reward files or server URLs separated by "
            "commas, or leave the flag out to score with --reward.model_name_or_path alone"
        )
    agent = _arg(args, "train.agent_func_path")
    reward_model = _arg(args, "reward.model_name_or_path")
    cost_model = _arg(args, "cost.model_name_or_path")
    reward_model_key, cost_model_key = given["reward_model_key"], given["cost_model_key"]
    extra_models = {}
    for text in _arg(args, "gd2po.reward_model") or ():
        group = parse_reward_model(text)
        taken = {reward_model_key: "--reward.model_name_or_path" if reward_model else None}
        taken[cost_model_key] = "--cost.model_name_or_path" if cost_model else None
        if group.key in extra_models or taken.get(group.key):
            other = REWARD_MODEL_FLAG if group.key in extra_models else taken[group.key]
            raise ValueError(
                f"{REWARD_MODEL_FLAG} {text!r}: reward key {group.key!r} is already scored by {other}; give each "
                "model group its own key"
            )
        extra_models[group.key] = group

    if agent:
        remote_source, remote_location = "agent", agent
    elif remote and remote != ["agent"]:
        files = [url for url in remote if url.strip().endswith(".py")]
        servers = [url for url in remote if url.strip().startswith(("http://", "https://"))]
        others = [url for url in remote if url not in files and url not in servers]
        if others:
            raise ValueError(
                f"--reward.remote_url {others[0]!r} is neither a reward file (.py) nor a server URL (http:// or https://)"
            )
        if len(files) > 1 or (files and servers):
            raise ValueError(
                f"--reward.remote_url {','.join(remote)!r}: OpenRLHF's rollout actors load one reward file, or share "
                "the rollouts across several servers (commas); combine the reward functions into one file"
            )
        remote_source, remote_location = ("reward_function" if files else "reward_server"), ",".join(remote)
    else:
        remote_source = remote_location = None

    if (cost_model or extra_models) and not (reward_model or remote_source):
        alone = "a cost model alone" if cost_model else f"{REWARD_MODEL_FLAG} without another reward source"
        raise ValueError(
            f"{alone} is not supported: OpenRLHF needs a reward source of its own for its rollouts; add "
            "--reward.model_name_or_path or a --reward.remote_url reward file/server"
        )
    keys = _arg(args, "gd2po.reward_keys")
    if not keys:
        if remote_source:
            raise ValueError(
                f"--gd2po.reward_keys is required with a {remote_source.replace('_', ' ')} ({remote_location}): "
                "name the reward dimensions it returns, e.g. --gd2po.reward_keys correctness format length"
            )
        keys = ([reward_model_key] if reward_model else []) + ([cost_model_key] if cost_model else [])
        keys += list(extra_models)
        if not keys:
            raise ValueError(
                f"--advantage_estimator {estimator} needs reward dimensions: --reward.remote_url (a reward file or "
                "server) with --gd2po.reward_keys, --reward.model_name_or_path, and/or --cost.model_name_or_path"
            )
    keys = list(keys)
    for key in keys + [reward_model_key, cost_model_key]:
        # Letters and digits of any script, '_', '-', '.', in NFC: no separators, no '=' or '>=' of the entries that
        # name keys, and one spelling per key (an NFD twin would be another info key).
        if not isinstance(key, str) or not REWARD_KEY.fullmatch(key) or unicodedata.normalize("NFC", key) != key:
            hint = " (separate keys with spaces, not commas)" if isinstance(key, str) and "," in key else ""
            nfc = unicodedata.normalize("NFC", key) if isinstance(key, str) else None
            hint += f" (write it in NFC form, {nfc!r})" if nfc != key and REWARD_KEY.fullmatch(nfc or "") else ""
            raise ValueError(
                f"reward key {key!r} must be a non-empty name of letters, digits, '_', '-' and '.': it becomes the "
                f"info key reward/<key> and a TensorBoard tag{hint}"
            )
    if reward_model and reward_model_key not in keys:
        raise ValueError(
            f"--reward.model_name_or_path is set but its dimension {reward_model_key!r} is not in --gd2po.reward_keys "
            f"{keys}: add it, or name it with --gd2po.reward_model_key"
        )
    for key in extra_models:
        if key not in keys:
            raise ValueError(
                f"{REWARD_MODEL_FLAG} scores reward key {key!r}, which is not in --gd2po.reward_keys {keys}: add it "
                "(the order of the keys is the order of --gd2po.reward_weights)"
            )
    if cost_model and cost_model_key not in keys:
        raise ValueError(
            f"--cost.model_name_or_path is set but its dimension {cost_model_key!r} is not in --gd2po.reward_keys "
            f"{keys}: add it, or name it with --gd2po.cost_model_key"
        )

    weights = _arg(args, "gd2po.reward_weights")
    if weights is None and cost_model:
        raise ValueError(
            "set --gd2po.reward_weights when a cost model is used: cost models differ in sign. Beaver-style cost "
            "models score harm (higher = more harmful): weight -1. The GD²PO authors' safety model scores "
            "safety (higher = safer): weight +1"
        )
    weights = list(weights) if weights is not None else [1.0] * len(keys)
    if len(weights) != len(keys):
        raise ValueError(
            f"--gd2po.reward_weights has {len(weights)} values {weights} for {len(keys)} reward keys {keys}"
        )

    model_keys = {reward_model_key} if reward_model else set()
    model_keys |= ({cost_model_key} if cost_model else set()) | set(extra_models)
    # OpenRLHF scores with its own --reward.model_name_or_path group only when no remote dimension exists.
    reward_group_owner = "plugin" if remote_source and set(keys) - model_keys else "openrlhf"
    dimensions, groups = [], []
    for key, weight in zip(keys, weights):
        if reward_model and key == reward_model_key:
            dimensions.append(RewardDimension(key, "reward_model", reward_model, weight))
            groups.append(_flag_group(args, "reward", key, reward_model, reward_group_owner))
        elif cost_model and key == cost_model_key:
            dimensions.append(RewardDimension(key, "cost_model", cost_model, weight))
            groups.append(_flag_group(args, "cost", key, cost_model, "plugin"))
        elif key in extra_models:
            dimensions.append(RewardDimension(key, "reward_model", extra_models[key].path, weight))
            groups.append(extra_models[key])
        elif remote_source:
            dimensions.append(RewardDimension(key, remote_source, remote_location, weight))
        elif key in (reward_model_key, cost_model_key):
            group, flag = ("reward", "reward_model_key") if key == reward_model_key else ("cost", "cost_model_key")
            raise ValueError(
                f"reward key {key!r} is the {group} model's dimension (--gd2po.{flag}), but no "
                f"--{group}.model_name_or_path is given: add the model, or a --reward.remote_url that returns {key!r}"
            )
        else:
            raise ValueError(
                f"reward key {key!r} has no source: no --reward.remote_url or --train.agent_func_path returns it, and "
                f"it is neither the reward model's ({reward_model_key!r}) nor the cost model's ({cost_model_key!r}) "
                "dimension"
            )

    return tuple(dimensions), tuple(groups)


def _flag_group(args, prefix: str, key: str, path: str, owner: str) -> ModelGroup:
    """The --reward.* or --cost.* model group as a ``ModelGroup``."""
    return ModelGroup(
        key,
        path,
        flag=f"--{prefix}.model_name_or_path",
        nodes=_arg(args, f"{prefix}.num_nodes", 1),
        gpus_per_node=_arg(args, f"{prefix}.num_gpus_per_node", 1),
        normalize=bool(_arg(args, f"{prefix}.normalize_enable", False)),
        offload=bool(_arg(args, f"{prefix}.offload", False)),
        owner=owner,
    )


def generator_settings(self) -> Optional[RunSettings]:
    """The run's settings in an OpenRLHF ``SamplesGenerator`` (resolved once from its args); None for OpenRLHF's own
    estimators. Read by the dynamic-sampling loop and by the arrival of remote rewards."""
    if self.args.algo.advantage.estimator not in GD2PO_ESTIMATORS:
        return None
    if not hasattr(self, "gd2po_settings"):
        self.gd2po_settings = resolve_settings(self.args)
    return self.gd2po_settings


def replace_weights(settings: RunSettings, weights) -> RunSettings:
    """``settings`` with one new weight per dimension (a resumed checkpoint's)."""
    dimensions = tuple(dataclasses.replace(dim, weight=float(w)) for dim, w in zip(settings.dimensions, weights))
    return dataclasses.replace(settings, dimensions=dimensions)
