"""Every ``--gd2po.*`` and ``--cost.*`` flag, declared once: ``FLAGS``.

An entry holds the flag's name, type, default, help, the ``RunSettings`` field its value lands in, what it acts with,
what a resumed run does with it, whether a preset's entries merge with the command line's by reward key, and its
section of ``docs/flags.md``. Everything else is generated from the table when it is needed (read at call time, so
a test can add an entry): the parser's flags (``add_gd2po_arguments``), the refusals of flags given without what
they act with (``only_acts_with``), the preset keys (``presets.py``), the resume tables (``resume.resume_tables``),
the flag names in ``GD2POConfig``'s errors (``config_flags``), the generic read of plain values in
``settings.resolve_settings`` and the reference page (``dev/flag_reference.py``).

Flags are dotted so that OpenRLHF's ``hierarchize`` nests them (``args.gd2po.snr_threshold``). Only the standard
library and the torch-free ``config`` here: this runs in the driver before OpenRLHF parses its arguments.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

from ..config import FILTERS, GD2POConfig

ON_BAD_REWARD = ("error", "drop_group")
REWARD_CHAT_TEMPLATES = ("policy", "own")
# What a resumed run does with a flag's value (``integration/resume.py``). RESTORED: it defines the advantages a run
# trains on, so the checkpoint's value replaces the command line's. REPORTED: saved and compared, but it acts where
# the run is set up before a checkpoint is read (the rollout actors, the model groups, the samples generator's loop).
# NOT_SAVED: with the reason in ``Flag.not_saved_because``.
RESTORED, REPORTED, NOT_SAVED = "restored", "reported", "not saved"
# The sections of docs/flags.md, in page order.
SECTIONS = (
    "The estimator",
    "Reward dimensions and where they come from",
    "The cost model group",
    "Budgets and weight schedules",
    "Which rollouts train",
    "Reliability, resume and presets",
)


@dataclass(frozen=True)
class ActsWith:
    """What some flags need in order to do anything: ``active(settings)`` on the resolved ``RunSettings``; ``needs``
    says what that takes and ``instead(settings)`` what the run has instead. Given on the command line without it,
    such a flag is refused (it would be silently ignored); set by a preset, it is ignored, since one preset serves
    several variants of a run (``configs/tool_calling.yaml`` holds τ for the snr launcher and the hard one alike)."""

    active: Callable[[Any], bool]
    needs: str
    instead: Callable[[Any], str]


def _filter_in_words(settings) -> str:
    return (
        "--advantage_estimator gdpo (no filter)"
        if settings.estimator == "gdpo"
        else f"--gd2po.filter {settings.filter}"
    )


SNR_FILTER = ActsWith(
    lambda s: s.filter == "snr" or s.what_if_filter == "snr",
    "the snr filter (or --gd2po.what_if_filter snr)",
    _filter_in_words,
)
NO_FILTER = ActsWith(
    lambda s: s.filter == "none",
    "a run without a filter (--advantage_estimator gdpo, or --gd2po.filter none)",
    _filter_in_words,
)
A_FILTER = ActsWith(
    lambda s: s.filter != "none",
    "a conflict filter (--advantage_estimator gd2po with --gd2po.filter hard or snr)",
    _filter_in_words,
)
GD2PO_ESTIMATOR = ActsWith(
    lambda s: s.estimator == "gd2po",
    "--advantage_estimator gd2po (κ reweighting)",
    lambda s: "--advantage_estimator gdpo (no reweighting)",
)
DYNAMIC_SAMPLING = ActsWith(lambda s: s.dynamic_sampling, "--gd2po.dynamic_sampling", lambda s: "dynamic sampling off")
BUDGET = ActsWith(lambda s: s.cost_budget is not None, "--cost.budget", lambda s: "no budget")
COST_MODEL = ActsWith(
    lambda s: any(dim.source == "cost_model" for dim in s.dimensions),
    "--cost.model_name_or_path",
    lambda s: "no cost model",
)


@dataclass(frozen=True)
class Flag:
    """One ``--gd2po.*`` / ``--cost.*`` flag (see the module doc for what is generated from it)."""

    name: str  # as typed: --gd2po.snr_threshold
    help: str
    section: str  # of docs/flags.md, one of SECTIONS
    field: Optional[str] = None  # the RunSettings field its resolved value lands in (None: none does)
    derived: bool = False  # resolve_settings computes the field from it (and others); else it is the value as given
    default: Any = None
    type: Optional[Callable[[str], Any]] = None
    choices: Optional[Tuple[str, ...]] = None
    metavar: Optional[str] = None
    nargs: Optional[str] = None
    action: Optional[str] = None  # store_true | extend
    acts_with: Optional[ActsWith] = None
    resume: str = NOT_SAVED  # RESTORED | REPORTED | NOT_SAVED (only a flag with a field can be saved)
    not_saved_because: str = ""
    keyed: bool = False  # entries name a reward key: a preset's merge with the command line's key by key
    preset: bool = True  # may a --gd2po.config preset set it
    any_estimator: bool = False  # acts with OpenRLHF's own estimators too (the others are refused with them)
    config_field: Optional[str] = None  # the GD2POConfig field it sets, which GD2POConfig's errors name
    aliases: Tuple[str, ...] = ()  # former names, still accepted on the command line, in presets and checkpoints

    @property
    def dest(self) -> str:
        return self.name[2:]

    @property
    def switch(self) -> bool:
        return self.action == "store_true"


_SET_UP = "the model group is set up before a checkpoint is read"
_ESTIMATOR, _DIMENSIONS, _COST, _BUDGETS, _ROLLOUTS, _RELIABILITY = SECTIONS

FLAGS: Tuple[Flag, ...] = (
    Flag(
        "--gd2po.filter",
        "conflict filter: none (GDPO), hard (drop mixed-sign rollouts), snr (drop mixed-sign rollouts "
        f"whose |Σ_k A_k| / Σ_k |A_k| < τ). Default: {GD2POConfig.filter} for gd2po; gdpo is always none",
        _ESTIMATOR,
        field="filter",  # the effective filter: none for gdpo, GD2POConfig's default when not given
        derived=True,
        choices=FILTERS,
        resume=RESTORED,
        config_field="filter",
    ),
    Flag(
        "--gd2po.snr_threshold",
        f"τ in [0, 1] of the snr filter (authors: 0.8; default {GD2POConfig.snr_threshold})",
        _ESTIMATOR,
        field="snr_threshold",
        default=GD2POConfig.snr_threshold,
        type=float,
        metavar="TAU",
        acts_with=SNR_FILTER,
        resume=RESTORED,
        config_field="snr_threshold",
    ),
    Flag(
        "--gd2po.what_if_filter",
        "in a run without a filter (gdpo, its GRPO baseline --gd2po.sum_rewards, or --gd2po.filter none): the "
        "filter whose effect is logged, never applied: train/gd2po/filtered_mass_ratio becomes the share of the "
        "summed-advantage mass it would remove (snr with --gd2po.snr_threshold)",
        _ESTIMATOR,
        field="what_if_filter",
        choices=("hard", "snr"),
        acts_with=NO_FILTER,
        not_saved_because="it changes a metric only: the command line's applies",
    ),
    Flag(
        "--gd2po.snr_eps",
        "ε of the SNR ratio (authors: 1e-8 tool calling, 1e-6 safe alignment)",
        _ESTIMATOR,
        field="snr_eps",
        default=GD2POConfig.snr_eps,
        type=float,
        metavar="EPS",
        acts_with=SNR_FILTER,
        resume=RESTORED,
        config_field="snr_eps",
    ),
    Flag(
        "--gd2po.reward_keys",
        "names of the reward dimensions, in order. Keys returned by --reward.remote_url (a reward file's "
        "reward_func returning {'rewards': {key: value}} or extra_logs 'reward/<key>', or an HTTP server) plus "
        "--gd2po.reward_model_key and --gd2po.cost_model_key for the model groups. A key is letters and digits of "
        "any script, '_', '-' and '.', in Unicode NFC form. Default: the model groups' keys",
        _DIMENSIONS,
        nargs="+",
        metavar="KEY",
        not_saved_because="the keys are saved with the dimensions: with other keys the command line's settings apply",
        config_field="reward_keys",
    ),
    Flag(
        "--gd2po.reward_weights",
        "one weight per reward key (default 1 each; required with a cost model). A negative weight turns "
        "a cost into a reward",
        _DIMENSIONS,
        field="dimensions",  # their weights; keys and sources are compared on resume ("dimensions")
        derived=True,
        type=float,
        metavar="W",
        nargs="+",
        resume=RESTORED,
        config_field="weights",
    ),
    Flag(
        "--gd2po.reward_model_key",
        "dimension name of the --reward.model_name_or_path group",
        _DIMENSIONS,
        field="reward_model_key",
        default="reward_model",
        metavar="KEY",
        not_saved_because="the model groups' keys are in the dimensions",
    ),
    Flag(
        "--gd2po.cost_model_key",
        "dimension name of the --cost.model_name_or_path group",
        _DIMENSIONS,
        field="cost_model_key",
        default="cost",
        metavar="KEY",
        not_saved_because="the model groups' keys are in the dimensions",
    ),
    Flag(
        "--gd2po.reward_model",
        "add a model-scored reward key served by its own Ray actor group (a sequence-regression model, as "
        "--reward.model_name_or_path; any number of them). Options: nodes=N, gpus_per_node=N (default 1 each), "
        "value_head_prefix=NAME (default --ds.value_head_prefix), normalize=true|false, offload=true|false (default "
        "false), chat_template=policy|own (default --gd2po.reward_chat_template). Repeatable; KEY must be in "
        "--gd2po.reward_keys when that is given. E.g. harmless=/models/harmless-rm,value_head_prefix=score",
        _DIMENSIONS,
        field="model_groups",  # every model group; the --gd2po.reward_model ones are saved
        derived=True,
        nargs="+",
        action="extend",
        metavar="KEY=PATH[,OPTION=VALUE...]",
        resume=REPORTED,
        keyed=True,
    ),
    Flag(
        "--gd2po.reward_chat_template",
        "how the reward and cost model groups see a rollout. policy: the policy's tokens as generated (the "
        "models "
        "must share the policy's vocabulary; a mismatch is refused at start). own: each model scores the conversation "
        "re-rendered with its own tokenizer's chat template; the prompt's label (--data.label_key) must hold the "
        "conversation as JSON chat messages or a user string (examples/data/prepare_safe_alignment.py writes it)",
        _DIMENSIONS,
        field="reward_chat_template",
        default="policy",
        choices=REWARD_CHAT_TEMPLATES,
        resume=REPORTED,
    ),
    Flag(
        "--gd2po.sum_rewards",
        "with --advantage_estimator gdpo: GRPO on the weighted sum Σ_k w_k r_k (one group normalisation of the "
        "sum instead of one per dimension). The GRPO baseline for sources OpenRLHF cannot add up, e.g. a reward "
        "model and a cost model",
        _ESTIMATOR,
        field="sum_rewards",
        action="store_true",
        resume=RESTORED,
    ),
    Flag(
        "--gd2po.no_reweight_queries",
        "do not scale prompts by their kept share κ (GD2POConfig.reweight_queries off; --gd2po.no_reweight, its "
        "former name, is still accepted)",
        _ESTIMATOR,
        field="no_reweight_queries",
        aliases=("--gd2po.no_reweight",),
        action="store_true",
        acts_with=GD2PO_ESTIMATOR,
        resume=RESTORED,
    ),
    Flag(
        "--gd2po.no_whiten",
        "do not whiten the token advantages of the batch",
        _ESTIMATOR,
        field="no_whiten",
        action="store_true",
        resume=RESTORED,
    ),
    Flag(
        "--gd2po.drop_filtered",
        "send only kept rollouts to the actors (topped up with the shortest filtered ones to a multiple of "
        "--train.batch_size): saves their forward/backward; the loss's token-mean denominator then counts kept "
        "tokens only, unlike the authors' runs",
        _ROLLOUTS,
        field="drop_filtered",
        action="store_true",
        acts_with=A_FILTER,
        resume=RESTORED,
    ),
    Flag(
        "--gd2po.on_bad_reward",
        "a rollout whose reward is missing, None (the reward function raised), NaN/inf or malformed: 'error' "
        "stops "
        "the step naming the key, source and rollout; 'drop_group' removes its prompt's whole group from the step "
        "(logged as a warning, counted in gd2po/dropped_bad_groups)",
        _RELIABILITY,
        field="on_bad_reward",
        default="error",
        choices=ON_BAD_REWARD,
        resume=REPORTED,
    ),
    Flag(
        "--gd2po.dynamic_sampling",
        "conflict-aware dynamic sampling: test each prompt group as its rollouts arrive with the estimator's "
        "group-local part (per-dimension normalisation, weights, conflict filter, κ) and replace a group in which "
        "fewer than --gd2po.dynamic_sampling_min_kept rollouts survive with a non-zero score by a fresh prompt "
        "(OpenRLHF's dynamic-filtering loop). Needs reward dimensions from a reward file, server or agent; replaces "
        "--algo.dynamic_filtering_enable. Costs extra generation when few groups pass (gd2po/dynamic_sampling/*)",
        _ROLLOUTS,
        field="dynamic_sampling",
        action="store_true",
        resume=REPORTED,
    ),
    Flag(
        "--gd2po.dynamic_sampling_min_kept",
        "rollouts of a group that must survive with a non-zero score (default 1)",
        _ROLLOUTS,
        field="dynamic_sampling_min_kept",
        default=1,
        type=int,
        metavar="N",
        acts_with=DYNAMIC_SAMPLING,
        resume=REPORTED,
    ),
    Flag(
        "--gd2po.dynamic_sampling_max_prompts_factor",
        "the most prompts one batch may draw, as a multiple of its prompts (default 4); at the limit the batch "
        "trains on the groups that passed, with a warning naming the pass rate",
        _ROLLOUTS,
        field="dynamic_sampling_max_prompts_factor",
        default=4.0,
        type=float,
        metavar="F",
        acts_with=DYNAMIC_SAMPLING,
        resume=REPORTED,
    ),
    Flag(
        "--gd2po.reward_weight_schedule",
        "move a reward key's weight from START to END over STEPS global steps, then keep END; SHAPE is linear "
        "(default), cosine or step (START until STEPS, then END). Repeatable, one per key; logged as "
        "train/gd2po/weight/<key> and restored on resume. E.g. length=0:1:100:cosine",
        _BUDGETS,
        field="weight_schedules",
        derived=True,
        nargs="+",
        action="extend",
        metavar="KEY=START:END:STEPS[:SHAPE]",
        resume=RESTORED,
        keyed=True,
    ),
    Flag(
        "--gd2po.reward_condition",
        "count reward key KEY only for rollouts whose GATE_KEY reward is at least T (or at most T with <=), and "
        "0 otherwise, on the raw rewards before group normalisation (GDPO's conditioned reward: no length or format "
        "bought with wrong answers). Repeatable; several on one key must all hold; a gate that is itself "
        "conditioned is read conditioned. Logged as train/gd2po/conditioned/<key> (the share of rollouts whose "
        "condition failed) and restored on resume. E.g. length=correctness>=1",
        _DIMENSIONS,
        field="conditions",
        derived=True,
        nargs="+",
        action="extend",
        metavar="KEY=GATE_KEY>=T",
        resume=RESTORED,
        keyed=True,
    ),
    Flag(
        "--gd2po.reference_key",
        "a reward key of weight 0 (a gold or held-out verifier, logged, never trained): logs "
        "train/gd2po/conflict_reference_agreement, the share of rollouts whose trained rewards conflict and whose "
        "summed advantage has the sign of this key's advantage (high: the conflict is noise the sum resolves "
        "rightly; low: filtering them would help)",
        _DIMENSIONS,
        field="reference_key",
        metavar="KEY",
        not_saved_because="it adds a metric only: the command line's applies",
    ),
    Flag(
        "--gd2po.constraint_key",
        "the reward key --cost.budget constrains (default: the cost model's, --gd2po.cost_model_key)",
        _BUDGETS,
        field="constraint_key",  # resolved: the cost model's key when not given
        derived=True,
        metavar="KEY",
        acts_with=BUDGET,
        resume=RESTORED,
    ),
    Flag(
        "--gd2po.resume_with_flags",
        "with --ckpt.load_enable, train on the command line's GD²PO settings even where they differ from the "
        "checkpoint's (by default a resumed run restores the checkpoint's, with a warning)",
        _RELIABILITY,
        field="resume_with_flags",
        action="store_true",
        not_saved_because="it decides the resume itself",
    ),
    Flag(
        "--gd2po.config",
        "YAML preset (e.g. configs/tool_calling.yaml) with a gd2po: section (any --gd2po.* flag), an optional "
        "cost: "
        "section and reward: remote_url / model_name_or_path; flags given on the command line override it",
        _RELIABILITY,
        field="preset",
        metavar="PATH",
        not_saved_because="the preset's values are the other fields",
        preset=False,
    ),
    Flag(
        "--gd2po.dry_run",
        "print the resolved GD²PO configuration and exit before Ray starts (also GD2PO_DRY_RUN=1)",
        _RELIABILITY,
        action="store_true",
        not_saved_because="it stops the launch",
        preset=False,
        any_estimator=True,
    ),
    Flag(
        "--gd2po.reward_auth_token_file",
        "a file holding the bearer token of the --reward.remote_url servers (serve_rewards --auth-token-file): "
        "the rollout actors send it with every reward request. Read at that path on every node that runs vLLM "
        "engines; any estimator",
        _RELIABILITY,
        metavar="PATH",
        not_saved_because="a secret: read from the command line's file",
        preset=False,  # a preset is shared, a token is not
        any_estimator=True,
    ),
    Flag(
        "--cost.model_name_or_path",
        "HF path of a sequence-regression cost model",
        _COST,
        type=str,
        metavar="PATH",
        not_saved_because="its path is saved with the dimensions and compared",
    ),
    Flag(
        "--cost.num_nodes",
        "nodes of the cost model group",
        _COST,
        default=1,
        type=int,
        metavar="N",
        acts_with=COST_MODEL,
        not_saved_because=_SET_UP,
    ),
    Flag(
        "--cost.num_gpus_per_node",
        "GPUs per node of the cost model group",
        _COST,
        default=1,
        type=int,
        metavar="N",
        acts_with=COST_MODEL,
        not_saved_because=_SET_UP,
    ),
    Flag(
        "--cost.offload",
        "offload the cost model to CPU between calls",
        _COST,
        action="store_true",
        acts_with=COST_MODEL,
        not_saved_because=_SET_UP,
    ),
    Flag(
        "--cost.normalize_enable",
        "use the cost model's stored mean/std normalisation",
        _COST,
        action="store_true",
        acts_with=COST_MODEL,
        not_saved_because=_SET_UP,
    ),
    Flag(
        "--cost.budget",
        "a budget on the batch mean of the cost dimension (the cost model's, or --gd2po.constraint_key) instead "
        "of a fixed weight: its weight becomes -λ (reward weight -1 given: a cost, the budget is a ceiling) or +λ "
        "(+1 given: a safety score, the budget is a floor), λ updated each step by projected dual ascent, "
        "λ ← clip(λ + lr·violation, 0, λ_max). Logged as train/gd2po/lambda/<key> and "
        "train/gd2po/constraint_violation/<key>; saved in checkpoints",
        _BUDGETS,
        field="cost_budget",
        type=float,
        metavar="D",
        resume=RESTORED,
    ),
    Flag(
        "--cost.lambda_init",
        "λ at the first step (default 1)",
        _BUDGETS,
        field="lambda_init",
        default=1.0,
        type=float,
        metavar="L",
        acts_with=BUDGET,
        resume=RESTORED,
    ),
    Flag(
        "--cost.lambda_lr",
        "dual ascent step size of λ per unit of violation (default 0.1)",
        _BUDGETS,
        field="lambda_lr",
        default=0.1,
        type=float,
        metavar="LR",
        acts_with=BUDGET,
        resume=RESTORED,
    ),
    Flag(
        "--cost.lambda_max",
        "upper clip of λ (default 10)",
        _BUDGETS,
        field="lambda_max",
        default=10.0,
        type=float,
        metavar="L",
        acts_with=BUDGET,
        resume=RESTORED,
    ),
    Flag(
        "--cost.lambda_log_space",
        "dual ascent on log λ (λ ← λ·exp(lr·violation), as Safe RLHF): λ moves by factors and never reaches 0",
        _BUDGETS,
        field="lambda_log_space",
        action="store_true",
        acts_with=BUDGET,
        resume=RESTORED,
    ),
)


def flags_by_dest() -> Dict[str, Flag]:
    return {flag.dest: flag for flag in FLAGS}


def add_gd2po_arguments(parser: argparse.ArgumentParser) -> None:
    """Add every ``FLAGS`` entry to OpenRLHF's launcher parser, in table order, in two argument groups."""
    groups = {
        "gd2po": parser.add_argument_group("GD²PO (gd2po-openrlhf; used with --advantage_estimator gd2po|gdpo)"),
        "cost": parser.add_argument_group("GD²PO cost model group (its own Ray actor group, its own GPUs)"),
    }
    for flag in FLAGS:
        options = {"help": flag.help, "default": False if flag.switch else flag.default}
        for name in ("type", "choices", "metavar", "nargs", "action"):
            if getattr(flag, name) is not None:
                options[name] = getattr(flag, name)
        action = groups[flag.dest.split(".")[0]].add_argument(flag.name, *flag.aliases, **options)
        # Every help ends with its default, where it has one and the help does not say it already.
        if action.default not in (None, False) and "default" not in action.help.lower():
            shown = f"{action.default:g}" if isinstance(action.default, float) else action.default
            action.help = f"{action.help} (default {shown})"


def only_acts_with() -> List[Tuple[ActsWith, Tuple[str, ...]]]:
    """Each ``ActsWith`` rule with the dests of the flags that act only with it, in table order."""
    rules: Dict[int, Tuple[ActsWith, List[str]]] = {}
    for flag in FLAGS:
        if flag.acts_with is not None:
            rules.setdefault(id(flag.acts_with), (flag.acts_with, []))[1].append(flag.dest)
    return [(rule, tuple(dests)) for rule, dests in rules.values()]


def renamed() -> Dict[str, str]:
    """A former name's dest (``Flag.aliases``) → the flag's dest: how presets and checkpoints written with it read."""
    return {alias[2:]: flag.dest for flag in FLAGS for alias in flag.aliases}


def config_flags() -> Dict[str, str]:
    """GD2POConfig's field names, as its errors name them, mapped to the flags that set them."""
    return {flag.config_field: flag.name for flag in FLAGS if flag.config_field}
