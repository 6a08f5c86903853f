"""The demo's table (CSV, Markdown) and figure, from the per-step curves of every estimator and seed."""

from __future__ import annotations

import csv
import statistics
from pathlib import Path
from typing import Dict, List

import torch

from .task import REWARD_KEYS

WINDOW = 5  # steps of the moving average used for "reached the target" and for the figure
# A seed has collapsed to the empty answer `[EOS]` when, over the last WINDOW steps, brevity is (almost) 1 and
# correctness (almost) 0: the degenerate optimum of the brevity reward alone.
COLLAPSED_BREVITY, COLLAPSED_CORRECTNESS = 0.99, 0.01
PANELS = [f"reward/{key}" for key in REWARD_KEYS] + ["reward", "gd2po/conflict_ratio", "gd2po/keep_ratio"]
PANELS += ["response_words", "gd2po/lambda/brevity"]  # the word budget, and the λ that enforces it
LAMBDA = "gd2po/lambda/brevity"
Curves = Dict[str, List[Dict[str, List[float]]]]  # estimator -> one dict of per-step series per seed


def moving_average(values: List[float], window: int = WINDOW) -> torch.Tensor:
    """Trailing mean over full windows: entry s is the mean of steps s+1 .. s+window (1-based)."""
    series = torch.tensor(values, dtype=torch.float64)
    return series.unfold(0, min(window, len(series)), 1).mean(1)


def steps_to_target(total_reward: List[float], target: float):
    """The first step at which the moving average of the total reward reaches ``target``, or None."""
    window = min(WINDOW, len(total_reward))
    reached = (moving_average(total_reward, window) >= target).nonzero()
    return int(reached[0]) + window if len(reached) else None


def summarize(curves: Curves, target: float, word_budget: float) -> List[dict]:
    """One row per estimator: final rewards (mean of the last WINDOW steps, then over seeds), steps to the
    target (mean and population std over the seeds that reached it), the word budget (final words, seeds that
    met it, final λ of the budgeted arms), run means of |advantage| and ratios."""
    rows = []
    for name, runs in curves.items():
        row = {"estimator": name, "seeds": len(runs)}
        for key in [f"reward/{k}" for k in REWARD_KEYS] + ["reward"]:
            row[f"final {key}"] = statistics.fmean(statistics.fmean(run[key][-WINDOW:]) for run in runs)
        steps = [steps_to_target(run["reward"], target) for run in runs]
        reached = [s for s in steps if s is not None]
        # Generation is what dynamic sampling spends: the rollouts generated up to the step the target was reached.
        generated = [sum(run["generated_rollouts"][:s]) for run, s in zip(runs, steps) if s is not None]
        row["target"] = target
        row["reached"] = f"{len(reached)}/{len(runs)}"
        row["steps to target mean"] = statistics.fmean(reached) if reached else None
        row["steps to target std"] = statistics.pstdev(reached) if reached else None
        row["generated rollouts to target mean"] = statistics.fmean(generated) if generated else None
        row["generated rollouts to target std"] = statistics.pstdev(generated) if generated else None
        pass_rates = [value for run in runs for value in run.get("gd2po/dynamic_sampling/pass_rate", [])]
        row["mean pass rate"] = statistics.fmean(pass_rates) if pass_rates else None
        collapsed = sum(
            statistics.fmean(run["reward/brevity"][-WINDOW:]) >= COLLAPSED_BREVITY
            and statistics.fmean(run["reward/correctness"][-WINDOW:]) <= COLLAPSED_CORRECTNESS
            for run in runs
        )
        row["collapsed"] = f"{collapsed}/{len(runs)}"
        # The word budget: met by a seed whose last WINDOW steps average at most word_budget words.
        words = [statistics.fmean(run["response_words"][-WINDOW:]) for run in runs]
        row["final words"] = statistics.fmean(words)
        row["budget met"] = f"{sum(w <= word_budget for w in words)}/{len(runs)}"
        row["final lambda"] = (
            statistics.fmean(statistics.fmean(run[LAMBDA][-WINDOW:]) for run in runs) if LAMBDA in runs[0] else None
        )
        for key in ("advantage_abs_mean", "gd2po/conflict_ratio", "gd2po/keep_ratio"):
            row[f"mean {key}"] = statistics.fmean(value for run in runs for value in run[key])
        rows.append(row)
    return rows


def _cell(value) -> str:
    if value is None:
        return "—"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def write_report(rows: List[dict], curves: Curves, settings, out: Path, word_budget: float) -> str:
    """Writes summary.csv, summary.md and curves.png into ``out``; returns the Markdown table."""
    with open(out / "summary.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    headers = (
        ["estimator"]
        + [f"final {k}" for k in REWARD_KEYS]
        + ["final total", "steps to target", "generated rollouts to target", "reached", "collapsed to `[EOS]`"]
        + ["mean abs adv", "conflict", "kept", "pass rate"]
    )
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        steps = row["steps to target mean"]
        steps_cell = "—" if steps is None else f"{steps:.1f} ± {row['steps to target std']:.1f}"
        generated = row["generated rollouts to target mean"]
        generated_cell = (
            "—" if generated is None else f"{generated:.0f} ± {row['generated rollouts to target std']:.0f}"
        )
        cells = (
            [row["estimator"]]
            + [_cell(row[f"final reward/{k}"]) for k in REWARD_KEYS]
            + [
                _cell(row["final reward"]),
                steps_cell,
                generated_cell,
                row["reached"],
                row["collapsed"],
                _cell(row["mean advantage_abs_mean"]),
                _cell(row["mean gd2po/conflict_ratio"]),
                _cell(row["mean gd2po/keep_ratio"]),
                _cell(row["mean pass rate"]),
            ]
        )
        lines.append("| " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    # The constrained problem: length as a budget (the *_budget arms) against length as a reward.
    constrained_headers = ["estimator", "brevity as", "final words", f"≤ {word_budget} words", "final correctness"]
    constrained_headers += ["final format", "collapsed to `[EOS]`", "final λ"]
    constrained = ["| " + " | ".join(constrained_headers) + " |", "|" + "---|" * len(constrained_headers)]
    for row in rows:
        if row["estimator"] not in ("gdpo", "gd2po_snr") and row["final lambda"] is None:
            continue
        cells = [
            row["estimator"],
            "budget (+λ)" if row["final lambda"] is not None else "reward (weight 1)",
            _cell(row["final words"]),
            row["budget met"],
            _cell(row["final reward/correctness"]),
            _cell(row["final reward/format"]),
            row["collapsed"],
            _cell(row["final lambda"]),
        ]
        constrained.append("| " + " | ".join(cells) + " |")
    if any(row["final lambda"] is not None for row in rows):
        table += f"\n\nLength as a budget (at most {word_budget} words on average):\n\n" + "\n".join(constrained)
    note = (
        f"{settings.seeds} seed(s) × {settings.steps} steps, {settings.prompts_per_step} prompts × "
        f"{settings.rollouts_per_prompt} rollouts per step. Final = mean of the last {WINDOW} steps; steps to target "
        "= "
        f"first step whose {WINDOW}-step moving average of the total reward reaches {settings.target} (mean ± std "
        "over "
        f"the seeds that reached it); conflict = share of rollouts with mixed-sign per-dimension advantages; kept = "
        f"share of rollouts the filter kept (of the trained batch); generated rollouts to target = rollouts generated "
        "up to that step (with dynamic sampling, rejected groups included); pass rate = share of prompt groups that "
        "passed dynamic sampling's test; rewards are means over every rollout generated in a step; "
        f"collapsed = seeds whose last {WINDOW} steps have brevity >= "
        f"{COLLAPSED_BREVITY} and correctness <= {COLLAPSED_CORRECTNESS} (the empty answer); final words = mean "
        f"response words of the last {WINDOW} steps; ≤ {word_budget} words = seeds whose final words meet the budget; "
        "final λ = the budget's multiplier on brevity (arms with --cost.budget).\n"
    )
    (out / "summary.md").write_text(note + "\n" + table + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Thin lines: each seed; bold: the mean over seeds. With bimodal outcomes (some seeds collapse) the mean alone
    # traces a curve no seed followed, and min..max bands of four estimators merge into one mass.
    colours = dict(zip(curves, plt.get_cmap("tab10").colors))
    figure, axes = plt.subplots(3, 3, figsize=(15, 11.5), sharex=True)
    for axis, key in zip(axes.flat, PANELS):
        for name, runs in curves.items():
            if key not in runs[0]:  # λ: the budgeted arms only
                continue
            smoothed = torch.stack([moving_average(run[key]) for run in runs])
            steps = torch.arange(smoothed.shape[1]) + min(WINDOW, len(runs[0][key]))
            for seed_curve in smoothed:
                axis.plot(steps, seed_curve, color=colours[name], linewidth=0.7, alpha=0.45)
            axis.plot(steps, smoothed.mean(0), color=colours[name], linewidth=2.4, label=name)
        if key == "response_words":
            axis.axhline(word_budget, color="black", linestyle=":", linewidth=1, label=f"budget {word_budget} words")
        if key == "reward":
            axis.axhline(
                settings.target, color="black", linestyle="--", linewidth=1, label=f"target {settings.target}"
            )
        axis.set_title(key.replace("gd2po/", ""))
        axis.grid(alpha=0.3)
    axes.flat[-1].axis("off")
    for axis in axes[2]:
        axis.set_xlabel("step")
    axes.flat[3].legend(loc="lower right", fontsize=8)
    figure.suptitle(f"{WINDOW}-step moving average: thin = one seed, bold = mean over {settings.seeds} seed(s)")
    figure.tight_layout()
    figure.savefig(out / "curves.png", dpi=100)
    plt.close(figure)
    return table
