"""Writes docs/flags.md, the reference of every --gd2po.* and --cost.* flag, from the parser itself.

    python dev/flag_reference.py            # rewrite docs/flags.md
    python dev/flag_reference.py --check    # exit 1 if docs/flags.md differs (tests/test_docs.py runs this)

Each flag's default, choices and help text are the parser's, and its section, what it acts with and what a resumed
run does with it are its entry in the flag table (``gd2po_openrlhf/integration/flags.py``), so the page cannot drift
from the code.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "flags.md"

# What refuses each section's flags (before Ray starts, one line naming the flag), as bullets under its table.
REFUSALS = {
    "The estimator": (
        "`--rollout.n_samples_per_prompt` below 2 (groups need two rollouts), τ outside [0, 1], a critic.",
        "`--gd2po.snr_threshold` / `--gd2po.snr_eps` without the snr filter (applied or `--gd2po.what_if_filter "
        "snr`); `--gd2po.what_if_filter` in a run that filters; `--gd2po.no_reweight_queries` with `gdpo` "
        "(it never reweights); `--gd2po.sum_rewards` without `gdpo`.",
        "Any `--gd2po.*` or `--cost.*` flag with one of OpenRLHF's own estimators (`--gd2po.dry_run` and "
        "`--gd2po.reward_auth_token_file` aside), and "
        "`--advantage_estimator` and `--algo.advantage.estimator` both given with different values.",
    ),
    "Reward dimensions and where they come from": (
        "Reward keys without a source, a model group whose key is not listed, keys with commas, spaces or `/` "
        "(`correctness,format` is one key: separate them with spaces).",
        "Weights that do not match the keys, all weights 0 (nothing would train), a cost model without explicit "
        "weights. Negative numbers in scientific notation are values (`1 1 -1e-3`).",
        "`--gd2po.reward_model`: a duplicate key, a key another model group or a reward file already scores, a "
        "path that is neither a folder nor a hub id, unknown options, GPUs the cluster does not have (at start, "
        "naming asked and free), `own` chat templates without `--data.label_key`.",
        "`--gd2po.reward_condition`: an unknown key or gate, a key gated on itself, cycles (`a → b → a`), a "
        "threshold that is not a finite number.",
        "OpenRLHF's length penalties (`--reward.overlong_buffer_len`, `--reward.stop_properly_penalty_coef`, which "
        "shape the single summed reward: return a length dimension instead); a missing reward file or agent file; "
        "an agent together with a remote reward URL.",
    ),
    "The cost model group": ("The `--cost.*` group flags without `--cost.model_name_or_path`.",),
    "Budgets and weight schedules": (
        "`--cost.budget` without a dimension to constrain, without explicit `--gd2po.reward_weights` (their sign "
        "is the convention), with a weight other than ±1 on the budgeted key, with `--gd2po.dynamic_sampling`.",
        "λ settings out of range: `--cost.lambda_init` outside [0, `--cost.lambda_max`] (or 0 in log space), a "
        "negative `--cost.lambda_lr`; the λ flags (`--cost.lambda_init`, `--cost.lambda_lr`, `--cost.lambda_max`, "
        "`--cost.lambda_log_space`) and `--gd2po.constraint_key` without a budget.",
        "A schedule that does not parse, names an unknown key, schedules a key twice or the budgeted key, or "
        "starts elsewhere than the key's explicit weight.",
    ),
    "Which rollouts train": (
        "`--gd2po.drop_filtered` without a conflict filter (`gdpo` or `--gd2po.filter none`).",
        "`--gd2po.dynamic_sampling` with OpenRLHF's `--algo.dynamic_filtering_enable` (use one), with a reward or "
        "cost model dimension, with `min_kept` outside [1, `n_samples_per_prompt`], with a factor below 1 or "
        "infinite; its two settings without it.",
    ),
    "Reliability, resume and presets": (
        "Presets: unknown keys, a fraction for an integer setting, more than 64 YAML aliases, a file over 256 kB "
        "(a bad value is quoted, cut to 300 characters). A flag on the command line overrides the preset; a "
        "command-line schedule, condition or reward model replaces the preset's entry for that key only.",
        "A flag that acts only with another setting (the column *acts only with*) is refused when given on the "
        "command line without it, and ignored when a preset sets it (one preset serves several variants of a run).",
        "On resume, a checkpoint whose settings the launcher would refuse stops the run naming the checkpoint "
        "and the flag (see [reliability](reliability.md)).",
        "`--gd2po.reward_auth_token_file`: a file that cannot be read, an empty token or one with characters other "
        "than RFC 6750's (a second line, a space), or no http(s) `--reward.remote_url` to send it to. It is not a "
        "preset key (a preset is shared, a token is not).",
    ),
}


def plugin_actions() -> dict:
    """{flag: argparse action} of every --gd2po.* and --cost.* flag, as the launcher's parser gets them."""
    from gd2po_openrlhf.integration import flags

    parser = argparse.ArgumentParser()
    flags.add_gd2po_arguments(parser)
    return {action.option_strings[0]: action for action in parser._actions if action.option_strings[0] != "-h"}


def _on_resume(flag) -> str:
    from gd2po_openrlhf.integration import flags

    if flag.resume == flags.NOT_SAVED:
        return f"not saved: {flag.not_saved_because}" if flag.not_saved_because else "not saved"
    return flag.resume


def _default(action) -> str:
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        return "off"
    if action.default is None:
        return "—"
    return f"`{action.default}`"


def render() -> str:
    from gd2po_openrlhf.integration import flags

    actions = plugin_actions()
    unplaced = [flag.name for flag in flags.FLAGS if flag.section not in flags.SECTIONS]
    if unplaced or set(REFUSALS) - set(flags.SECTIONS):
        raise SystemExit(f"flags in no section of flags.SECTIONS: {unplaced}, or REFUSALS names an unknown section")
    lines = [
        "# Flag reference",
        "",
        "Every flag the plugin adds to `python -m openrlhf.cli.train_ppo_ray`, with its default and what it does,",
        "generated from the parser by `python dev/flag_reference.py` (a test fails when this page and the parser",
        "differ). All of them act only with `--advantage_estimator gd2po` or `gdpo`; given with one of OpenRLHF's",
        "own estimators they are refused before Ray starts. A preset (`--gd2po.config FILE.yaml`, see",
        "[recipes](recipes.md)) sets the same values; the command line wins. A preset's entries follow their reward",
        "keys: `--gd2po.reward_keys` on the command line keeps each key's preset weight (reordered or fewer), and",
        "keyed entries (schedules, conditions, reward models) are replaced key by key. Every refusal names the flag",
        "and happens at parse time, before any GPU is touched; the dry run (`--gd2po.dry_run`) prints what a launch",
        "would train with.",
        "",
    ]
    for section in flags.SECTIONS:
        lines += [
            f"## {section}",
            "",
            "| flag | default | what it does | acts only with | on resume |",
            "|---|---|---|---|---|",
        ]
        for declared in (flag for flag in flags.FLAGS if flag.section == section):
            flag, action = declared.name, actions[declared.name]
            value = f" {action.metavar}" if action.metavar else ""
            if action.choices:
                value = " {" + ",".join(map(str, action.choices)) + "}"
            if action.nargs in ("+", "*"):
                value += " ..."
            text = " ".join((action.help or "").split()).replace("|", "\\|")
            acts_with = declared.acts_with.needs.replace("|", "\\|") if declared.acts_with else "—"
            lines.append(f"| `{flag}{value}` | {_default(action)} | {text} | {acts_with} | {_on_resume(declared)} |")
        lines += ["", "Refused:", ""] + [f"- {refusal}" for refusal in REFUSALS.get(section, ())] + [""]
    return "\n".join(lines)


def main(argv=None) -> None:
    check = "--check" in (argv if argv is not None else sys.argv[1:])
    text = render()
    if check:
        if not PAGE.exists() or PAGE.read_text() != text:
            raise SystemExit(f"{PAGE} is out of date: run python dev/flag_reference.py")
        return
    PAGE.parent.mkdir(exist_ok=True)
    PAGE.write_text(text)
    print(f"wrote {PAGE}")


if __name__ == "__main__":
    main()
