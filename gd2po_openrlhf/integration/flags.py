"""The ``--gd2po.*`` and ``--cost.*`` flags and the YAML presets (``--gd2po.config``) that set them.

Defaults come from :class:`RunSettings` and ``GD2POConfig``: the flag, the preset and ``resolve_settings`` agree by
construction. Flags are dotted so that OpenRLHF's ``hierarchize`` nests them (``args.gd2po.snr_threshold``).
Only the standard library at import time (``yaml`` only when a preset is given).
"""

from __future__ import annotations

import argparse
import os

from ..config import FILTERS
from .settings import COST_GROUP_DEFAULTS, ON_BAD_REWARD, REWARD_CHAT_TEMPLATES, RunSettings

DEFAULTS = RunSettings()
MAX_PRESET_BYTES = 256 * 1024
MAX_PRESET_ALIASES = 64
MAX_PRESET_NODES = 10_000  # values and entries of a preset with every alias expanded


def _short(value, limit: int = 300) -> str:
    """``repr`` of a preset's value (``str`` of an error), cut to ``limit`` characters for an error message."""
    text = str(value) if isinstance(value, Exception) else repr(value)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


# Preset entries outside the gd2po:/cost: sections; the dry-run and preset flags themselves are not preset keys, nor is
# a user's secret.
PRESET_REWARD_KEYS = ("reward.remote_url", "reward.model_name_or_path")
NOT_PRESET_KEYS = ("gd2po.config", "gd2po.dry_run", "gd2po.reward_auth_token_file")
# The --gd2po.* flags that act with OpenRLHF's own estimators too (the rest are refused with them).
ANY_ESTIMATOR_FLAGS = ("gd2po.dry_run", "gd2po.reward_auth_token_file")


def add_gd2po_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``--gd2po.*`` and ``--cost.*`` flags to OpenRLHF's launcher parser."""
    group = parser.add_argument_group("GD²PO (gd2po-openrlhf; used with --advantage_estimator gd2po|gdpo)")
    group.add_argument(
        "--gd2po.filter",
        choices=FILTERS,
        default=None,  # None tells gdpo's implied "none" from a filter given by mistake
        help="conflict filter: none (GDPO), hard (drop mixed-sign rollouts), snr (drop mixed-sign rollouts "
        f"whose |Σ_k A_k| / Σ_k |A_k| < τ). Default: {DEFAULTS.filter} for gd2po; gdpo is always none",
    )
    group.add_argument(
        "--gd2po.snr_threshold",
        type=float,
        default=DEFAULTS.snr_threshold,
        metavar="TAU",
        help=f"τ in [0, 1] of the snr filter (authors: 0.8; default {DEFAULTS.snr_threshold})",
    )
    group.add_argument(
        "--gd2po.what_if_filter",
        choices=("hard", "snr"),
        default=None,
        help="in a run without a filter (gdpo, its GRPO baseline --gd2po.sum_rewards, or --gd2po.filter none): the "
        "filter whose effect is logged, never applied: train/gd2po/filtered_mass_ratio becomes the share of the "
        "summed-advantage mass it would remove (snr with --gd2po.snr_threshold)",
    )
    group.add_argument(
        "--gd2po.snr_eps",
        type=float,
        default=DEFAULTS.snr_eps,
        metavar="EPS",
        help="ε of the SNR ratio (authors: 1e-8 tool calling, 1e-6 safe alignment)",
    )
    group.add_argument(
        "--gd2po.reward_keys",
        nargs="+",
        metavar="KEY",
        default=None,
        help="names of the reward dimensions, in order. Keys returned by --reward.remote_url (a reward file's "
        "reward_func returning {'rewards': {key: value}} or extra_logs 'reward/<key>', or an HTTP server) plus "
        "--gd2po.reward_model_key and --gd2po.cost_model_key for the model groups. A key is letters and digits of "
        "any script, '_', '-' and '.', in Unicode NFC form. Default: the model groups' keys",
    )
    group.add_argument(
        "--gd2po.reward_weights",
        type=float,
        metavar="W",
        nargs="+",
        default=None,
        help="one weight per reward key (default 1 each; required with a cost model). A negative weight turns "
        "a cost into a reward",
    )
    group.add_argument(
        "--gd2po.reward_model_key",
        default=DEFAULTS.reward_model_key,
        metavar="KEY",
        help="dimension name of the --reward.model_name_or_path group",
    )
    group.add_argument(
        "--gd2po.cost_model_key",
        default=DEFAULTS.cost_model_key,
        metavar="KEY",
        help="dimension name of the --cost.model_name_or_path group",
    )
    group.add_argument(
        "--gd2po.reward_model",
        nargs="+",
        action="extend",
        metavar="KEY=PATH[,OPTION=VALUE...]",
        default=None,
        help="add a model-scored reward key served by its own Ray actor group (a sequence-regression model, as "
        "--reward.model_name_or_path; any number of them). Options: nodes=N, gpus_per_node=N (default 1 each), "
        "value_head_prefix=NAME (default --ds.value_head_prefix), normalize=true|false, offload=true|false (default "
        "false), chat_template=policy|own (default --gd2po.reward_chat_template). Repeatable; KEY must be in "
        "--gd2po.reward_keys when that is given. E.g. harmless=/models/harmless-rm,value_head_prefix=score",
    )
    group.add_argument(
        "--gd2po.reward_chat_template",
        choices=REWARD_CHAT_TEMPLATES,
        default=DEFAULTS.reward_chat_template,
        help="how the reward and cost model groups see a rollout. policy: the policy's tokens as generated (the "
        "models "
        "must share the policy's vocabulary; a mismatch is refused at start). own: each model scores the conversation "
        "re-rendered with its own tokenizer's chat template; the prompt's label (--data.label_key) must hold the "
        "conversation as JSON chat messages or a user string (examples/data/prepare_safe_alignment.py writes it)",
    )
    group.add_argument(
        "--gd2po.sum_rewards",
        action="store_true",
        default=DEFAULTS.sum_rewards,
        help="with --advantage_estimator gdpo: GRPO on the weighted sum Σ_k w_k r_k (one group normalisation of the "
        "sum instead of one per dimension). The GRPO baseline for sources OpenRLHF cannot add up, e.g. a reward "
        "model and a cost model",
    )
    group.add_argument(
        "--gd2po.no_reweight",
        action="store_true",
        default=DEFAULTS.no_reweight,
        help="do not scale prompts by their kept share κ",
    )
    group.add_argument(
        "--gd2po.no_whiten",
        action="store_true",
        default=DEFAULTS.no_whiten,
        help="do not whiten the token advantages of the batch",
    )
    group.add_argument(
        "--gd2po.drop_filtered",
        action="store_true",
        default=DEFAULTS.drop_filtered,
        help="send only kept rollouts to the actors (topped up with the shortest filtered ones to a multiple of "
        "--train.batch_size): saves their forward/backward; the loss's token-mean denominator then counts kept "
        "tokens only, unlike the authors' runs",
    )
    group.add_argument(
        "--gd2po.on_bad_reward",
        choices=ON_BAD_REWARD,
        default=DEFAULTS.on_bad_reward,
        help="a rollout whose reward is missing, None (the reward function raised), NaN/inf or malformed: 'error' "
        "stops "
        "the step naming the key, source and rollout; 'drop_group' removes its prompt's whole group from the step "
        "(logged as a warning, counted in gd2po/dropped_bad_groups)",
    )
    group.add_argument(
        "--gd2po.dynamic_sampling",
        action="store_true",
        default=DEFAULTS.dynamic_sampling,
        help="conflict-aware dynamic sampling: test each prompt group as its rollouts arrive with the estimator's "
        "group-local part (per-dimension normalisation, weights, conflict filter, κ) and replace a group in which "
        "fewer than --gd2po.dynamic_sampling_min_kept rollouts survive with a non-zero score by a fresh prompt "
        "(OpenRLHF's dynamic-filtering loop). Needs reward dimensions from a reward file, server or agent; replaces "
        "--algo.dynamic_filtering_enable. Costs extra generation when few groups pass (gd2po/dynamic_sampling/*)",
    )
    group.add_argument(
        "--gd2po.dynamic_sampling_min_kept",
        type=int,
        metavar="N",
        default=DEFAULTS.dynamic_sampling_min_kept,
        help=f"rollouts of a group that must survive with a non-zero score (default "
        f"{DEFAULTS.dynamic_sampling_min_kept})",
    )
    group.add_argument(
        "--gd2po.dynamic_sampling_max_prompts_factor",
        type=float,
        metavar="F",
        default=DEFAULTS.dynamic_sampling_max_prompts_factor,
        help="the most prompts one batch may draw, as a multiple of its prompts (default "
        f"{DEFAULTS.dynamic_sampling_max_prompts_factor:g}); at the limit the batch trains on the groups that "
        "passed, with a warning naming the pass rate",
    )
    group.add_argument(
        "--gd2po.reward_weight_schedule",
        nargs="+",
        action="extend",
        metavar="KEY=START:END:STEPS[:SHAPE]",
        default=None,
        help="move a reward key's weight from START to END over STEPS global steps, then keep END; SHAPE is linear "
        "(default), cosine or step (START until STEPS, then END). Repeatable, one per key; logged as "
        "train/gd2po/weight/<key> and restored on resume. E.g. length=0:1:100:cosine",
    )
    group.add_argument(
        "--gd2po.reward_condition",
        nargs="+",
        action="extend",
        metavar="KEY=GATE_KEY>=T",
        default=None,
        help="count reward key KEY only for rollouts whose GATE_KEY reward is at least T (or at most T with <=), and "
        "0 otherwise, on the raw rewards before group normalisation (GDPO's conditioned reward: no length or format "
        "bought with wrong answers). Repeatable; several on one key must all hold; a gate that is itself "
        "conditioned is read conditioned. Logged as train/gd2po/conditioned/<key> (the share of rollouts whose "
        "condition failed) and restored on resume. E.g. length=correctness>=1",
    )
    group.add_argument(
        "--gd2po.reference_key",
        default=None,
        metavar="KEY",
        help="a reward key of weight 0 (a gold or held-out verifier, logged, never trained): logs "
        "train/gd2po/conflict_reference_agreement, the share of rollouts whose trained rewards conflict and whose "
        "summed advantage has the sign of this key's advantage (high: the conflict is noise the sum resolves "
        "rightly; low: filtering them would help)",
    )
    group.add_argument(
        "--gd2po.constraint_key",
        default=None,
        metavar="KEY",
        help="the reward key --cost.budget constrains (default: the cost model's, --gd2po.cost_model_key)",
    )
    group.add_argument(
        "--gd2po.resume_with_flags",
        action="store_true",
        default=DEFAULTS.resume_with_flags,
        help="with --ckpt.load_enable, train on the command line's GD²PO settings even where they differ from the "
        "checkpoint's (by default a resumed run restores the checkpoint's, with a warning)",
    )
    group.add_argument(
        "--gd2po.config",
        default=None,
        metavar="PATH",
        help="YAML preset (e.g. configs/tool_calling.yaml) with a gd2po: section (any --gd2po.* flag), an optional "
        "cost: "
        "section and reward: remote_url / model_name_or_path; flags given on the command line override it",
    )
    group.add_argument(
        "--gd2po.dry_run",
        action="store_true",
        default=False,
        help="print the resolved GD²PO configuration and exit before Ray starts (also GD2PO_DRY_RUN=1)",
    )
    group.add_argument(
        "--gd2po.reward_auth_token_file",
        default=None,
        metavar="PATH",
        help="a file holding the bearer token of the --reward.remote_url servers (serve_rewards --auth-token-file): "
        "the rollout actors send it with every reward request. Read at that path on every node that runs vLLM "
        "engines; any estimator",
    )
    cost = parser.add_argument_group("GD²PO cost model group (its own Ray actor group, its own GPUs)")
    cost.add_argument(
        "--cost.model_name_or_path",
        type=str,
        default=None,
        metavar="PATH",
        help="HF path of a sequence-regression cost model",
    )
    cost.add_argument(
        "--cost.num_nodes",
        type=int,
        metavar="N",
        default=COST_GROUP_DEFAULTS["cost.num_nodes"],
        help="nodes of the cost model group",
    )
    cost.add_argument(
        "--cost.num_gpus_per_node",
        type=int,
        metavar="N",
        default=COST_GROUP_DEFAULTS["cost.num_gpus_per_node"],
        help="GPUs per node of the cost model group",
    )
    cost.add_argument(
        "--cost.offload",
        action="store_true",
        default=COST_GROUP_DEFAULTS["cost.offload"],
        help="offload the cost model to CPU between calls",
    )
    cost.add_argument(
        "--cost.normalize_enable",
        action="store_true",
        default=COST_GROUP_DEFAULTS["cost.normalize_enable"],
        help="use the cost model's stored mean/std normalisation",
    )

    cost.add_argument(
        "--cost.budget",
        type=float,
        default=DEFAULTS.cost_budget,
        metavar="D",
        help="a budget on the batch mean of the cost dimension (the cost model's, or --gd2po.constraint_key) instead "
        "of a fixed weight: its weight becomes -λ (reward weight -1 given: a cost, the budget is a ceiling) or +λ "
        "(+1 given: a safety score, the budget is a floor), λ updated each step by projected dual ascent, "
        "λ ← clip(λ + lr·violation, 0, λ_max). Logged as train/gd2po/lambda/<key> and "
        "train/gd2po/constraint_violation/<key>; saved in checkpoints",
    )
    cost.add_argument(
        "--cost.lambda_init",
        type=float,
        default=DEFAULTS.lambda_init,
        metavar="L",
        help=f"λ at the first step (default {DEFAULTS.lambda_init:g})",
    )
    cost.add_argument(
        "--cost.lambda_lr",
        type=float,
        default=DEFAULTS.lambda_lr,
        metavar="LR",
        help=f"dual ascent step size of λ per unit of violation (default {DEFAULTS.lambda_lr:g})",
    )
    cost.add_argument(
        "--cost.lambda_max",
        type=float,
        default=DEFAULTS.lambda_max,
        metavar="L",
        help=f"upper clip of λ (default {DEFAULTS.lambda_max:g})",
    )
    cost.add_argument(
        "--cost.lambda_log_space",
        action="store_true",
        default=DEFAULTS.lambda_log_space,
        help="dual ascent on log λ (λ ← λ·exp(lr·violation), as Safe RLHF): λ moves by factors and never reaches 0",
    )
    _with_defaults(group)
    _with_defaults(cost)


def _with_defaults(group) -> None:
    """Every flag's help ends with its default, where it has one and the help does not say it already."""
    for action in group._group_actions:
        if action.default not in (None, False) and "default" not in (action.help or "").lower():
            shown = f"{action.default:g}" if isinstance(action.default, float) else action.default
            action.help = f"{action.help} (default {shown})"


def load_preset(parser: argparse.ArgumentParser, path: str) -> dict:
    """``{dest: value}`` of a YAML preset, checked and converted as the parser would convert the flags.

    Sections: ``gd2po`` (``--gd2po.*``), ``cost`` (``--cost.*``) and ``reward`` (``remote_url`` and
    ``model_name_or_path`` only). A relative ``.py`` reward file is resolved against the preset's folder, so a
    preset works from any working directory. Raises ValueError naming the file and the offending key.
    """
    import yaml  # only when a preset is given: keeps the launcher's start-up free of it

    class UniqueKeyLoader(yaml.SafeLoader):
        """YAML keeps the last of two equal keys; a preset refuses them (one of the two values is a mistake).
        Keys merged in with ``<<: *anchor`` are not duplicates: the mapping's own keys override them, as YAML says."""

        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=deep)
                if key in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
                seen.add(key)
            return super().construct_mapping(node, deep)

    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read(MAX_PRESET_BYTES + 1)
        if len(text) > MAX_PRESET_BYTES:
            raise ValueError(f"--gd2po.config {path}: larger than {MAX_PRESET_BYTES // 1024} kB, not a preset")
        # Nested aliases expand exponentially when a value is copied or printed ("billion laughs"): a preset needs
        # few.
        aliases = sum(isinstance(event, yaml.AliasEvent) for event in yaml.parse(text, Loader=yaml.SafeLoader))
        if aliases > MAX_PRESET_ALIASES:
            raise ValueError(f"--gd2po.config {path}: {aliases} YAML aliases; a preset may use {MAX_PRESET_ALIASES}")
        # Fewer aliases can still nest (3 per level over 22 levels: 3^22 values): count the expanded tree on the
        # composed graph, where an alias is the node it names, once per node.
        expanded, visiting = {}, set()

        def size(node) -> int:
            if id(node) not in expanded:
                if id(node) in visiting:
                    raise ValueError(f"--gd2po.config {path}: a YAML alias refers to itself, not a preset")
                visiting.add(id(node))
                children = node.value if isinstance(node, yaml.SequenceNode) else []
                if isinstance(node, yaml.MappingNode):
                    children = [part for pair in node.value for part in pair]
                total = 1
                for child in children:
                    total += size(child)
                    if total > MAX_PRESET_NODES:
                        break
                visiting.discard(id(node))
                expanded[id(node)] = total
            return expanded[id(node)]

        document = yaml.compose(text, Loader=yaml.SafeLoader)
        if document is not None and size(document) > MAX_PRESET_NODES:
            raise ValueError(
                f"--gd2po.config {path}: more than {MAX_PRESET_NODES} values once its YAML aliases are expanded, "
                "not a preset"
            )
        try:
            data = yaml.load(text, Loader=UniqueKeyLoader)
        except ValueError as error:  # an integer beyond Python's 4300 digits
            raise ValueError(f"--gd2po.config {path}: cannot read it: {_short(error, 1000)}") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise ValueError(f"--gd2po.config {path}: cannot read it: {_short(error, 1000)}") from None
    if not isinstance(data, dict):
        raise ValueError(f"--gd2po.config {path}: expected sections gd2po/cost/reward, got {type(data).__name__}")
    actions = {action.dest: action for action in parser._actions}
    allowed = sorted(d for d in actions if d.split(".")[0] in ("gd2po", "cost") and d not in NOT_PRESET_KEYS)
    values = {}
    for section, entries in data.items():
        if not isinstance(entries, dict):
            raise ValueError(f"--gd2po.config {path}: section {section!r} must be a mapping of option: value")
        for key, value in entries.items():
            dest = f"{section}.{key}"
            if dest not in allowed and dest not in PRESET_REWARD_KEYS:
                raise ValueError(
                    f"--gd2po.config {path}: unknown key {dest!r}; allowed: "
                    f"{', '.join(allowed + list(PRESET_REWARD_KEYS))}"
                )
            action = actions[dest]
            try:
                # YAML's true/false are not numbers here, although float(True) would accept them as 1.0.
                numeric = action.type in (int, float)
                if action.nargs in ("+", "*"):
                    if not isinstance(value, list) or (action.nargs == "+" and not value):
                        raise ValueError(f"expected a non-empty list, got {_short(value)}")
                    if numeric and any(isinstance(v, bool) for v in value):
                        raise ValueError(f"expected numbers, got {_short(value)}")
                    value = [action.type(v) if action.type else v for v in value]
                elif numeric and isinstance(value, bool):
                    raise ValueError(f"expected a number, got {_short(value)}")
                elif action.type is int and isinstance(value, float) and not value.is_integer():
                    raise ValueError(f"expected a whole number, got {value!r}")  # int(2.7) would give 2
                elif action.const is True and action.nargs == 0:  # store_true
                    if not isinstance(value, bool):
                        raise ValueError(f"expected true or false, got {_short(value)}")
                elif value is not None and action.type is not None:
                    value = action.type(value)
                if action.choices is not None and value not in action.choices:
                    raise ValueError(f"expected one of {list(action.choices)}, got {_short(value)}")
            except (TypeError, ValueError, OverflowError) as error:  # OverflowError: float(10**400)
                raise ValueError(f"--gd2po.config {path}: {dest}: {_short(error, 1000)}") from None
            if dest == "reward.remote_url" and isinstance(value, str):
                here = os.path.dirname(os.path.abspath(path))
                value = ",".join(
                    os.path.normpath(os.path.join(here, url))
                    if url.endswith(".py") and not os.path.isabs(url)
                    else url
                    for url in value.split(",")
                )
            values[dest] = value
    return values
