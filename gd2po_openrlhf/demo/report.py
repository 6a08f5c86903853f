"""The demo's tables (CSV, Markdown) and figures, from the per-step curves of every arm and seed.

Statistics over seeds (each seed: its own warm start, prompts and samples, shared by every arm):
  final x         the mean of x over a run's last FINAL_STEPS steps
  mean [CI]       the mean over seeds and a 95% percentile bootstrap CI: BOOTSTRAP resamples of the seeds with
                  replacement, the 2.5th and 97.5th percentiles of their means
  Δ vs GDPO       per seed, the arm's final objective minus GDPO's in the same setting, then mean [CI] of those
                  paired differences (the seed's warm start and prompts cancel out)
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from .training import KEYS, SETTINGS, arm_setting, setting_keys

FINAL_STEPS = 10  # "final" = the mean of the last FINAL_STEPS steps
FIRST_STEPS = 3  # "first" = the mean of the first FIRST_STEPS steps: the warm start's policy, barely trained
WINDOW = 5  # the figures' moving average
BOOTSTRAP = 2000
COLLAPSED_CORRECTNESS = 0.05  # a seed has collapsed when its final correctness is below this: a degenerate answer
# What a GRPO run must show for the task to have learning headroom (issue 26): first steps at most, last at least.
HEADROOM = (0.5, 0.8)
Curves = Dict[str, List[Dict[str, List[float]]]]  # arm -> one dict of per-step series per seed


def bootstrap_ci(values: Sequence[float], resamples: int = BOOTSTRAP, seed: int = 0) -> Tuple[float, float, float]:
    """(mean, 2.5th, 97.5th percentile of the bootstrap means) of ``values`` (one per seed), deterministic."""
    data = torch.tensor(list(values), dtype=torch.float64)
    generator = torch.Generator().manual_seed(seed)
    means = data[torch.randint(len(data), (resamples, len(data)), generator=generator)].mean(1)
    low, high = torch.quantile(means, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return float(data.mean()), low, high


def final(run: Dict[str, List[float]], key: str, steps: int = FINAL_STEPS) -> float:
    values = run[key][-steps:]
    return sum(values) / len(values)


def objective(values: Dict[str, float], setting: str) -> float:
    """The setting's fixed-weight sum of the dimensions (what its weights ask for; conditions not applied)."""
    return sum(w * values[f"reward/{key}"] for w, key in zip(SETTINGS[setting]["weights"], setting_keys(setting)))


def summarize(curves: Curves, warm: List[Dict[str, float]]) -> List[dict]:
    """One row per setting's warm start and per arm, in setting order (formulas in the module doc)."""
    rows = []
    settings = list(dict.fromkeys(arm_setting(arm) for arm in curves))
    for setting in settings:
        row = {"setting": setting, "arm": "warm start", "seeds": len(warm)}
        for key in KEYS:
            row[f"final reward/{key}"] = bootstrap_ci([w[f"reward/{key}"] for w in warm])
        row["final objective"] = bootstrap_ci([objective(w, setting) for w in warm])
        rows.append(row)
        baseline = f"{setting}/gdpo"
        for arm, runs in curves.items():
            if arm_setting(arm) != setting:
                continue
            row = {"setting": setting, "arm": arm.split("/", 1)[1], "seeds": len(runs)}
            for key in KEYS:
                row[f"final reward/{key}"] = bootstrap_ci([final(run, f"reward/{key}") for run in runs])
            objectives = [final(run, "reward") for run in runs]
            row["final objective"] = bootstrap_ci(objectives)
            if baseline in curves and arm != baseline:
                paired = [a - b for a, b in zip(objectives, [final(run, "reward") for run in curves[baseline]])]
                row["objective minus gdpo"] = bootstrap_ci(paired)
            row["first correctness"] = bootstrap_ci(
                [sum(run["reward/correctness"][:FIRST_STEPS]) / FIRST_STEPS for run in runs]
            )
            row["collapsed"] = f"{sum(final(run, 'reward/correctness') < COLLAPSED_CORRECTNESS for run in runs)}"
            row["collapsed"] += f"/{len(runs)}"
            for key in ("gd2po/conflict_ratio", "gd2po/keep_ratio"):
                row[f"mean {key}"] = sum(sum(run[key]) / len(run[key]) for run in runs) / len(runs)
            row["generated rollouts"] = sum(sum(run["generated_rollouts"]) for run in runs) / len(runs)
            pass_rates = [v for run in runs for v in run.get("gd2po/dynamic_sampling/pass_rate", [])]
            row["mean pass rate"] = sum(pass_rates) / len(pass_rates) if pass_rates else None
            lambdas = [final(run, "gd2po/lambda/brevity") for run in runs if "gd2po/lambda/brevity" in run]
            row["final lambda"] = sum(lambdas) / len(lambdas) if lambdas else None
            row["final words"] = sum(final(run, "response_words") for run in runs) / len(runs)
            rows.append(row)
    return rows


def _ci(value: Optional[Tuple[float, float, float]], signed: bool = False) -> str:
    if value is None:
        return "—"
    mean, low, high = value
    form = "{:+.3f}" if signed else "{:.3f}"
    return f"{form.format(mean)} [{form.format(low)}, {form.format(high)}]"


def _plain(value) -> str:
    if value is None:
        return "—"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def headroom_lines(rows: List[dict]) -> List[str]:
    """GRPO's correctness from its first steps to its last, per setting, against HEADROOM."""
    lines = []
    for row in rows:
        if row["arm"] != "grpo":
            continue
        first, last = row["first correctness"][0], row["final reward/correctness"][0]
        met = first <= HEADROOM[0] and last >= HEADROOM[1]
        lines.append(
            f"GRPO correctness, {row['setting']}: first {FIRST_STEPS} steps {first:.3f} → last {FINAL_STEPS} steps "
            f"{last:.3f} (headroom target ≤ {HEADROOM[0]} → ≥ {HEADROOM[1]}: {'met' if met else 'NOT met'})"
        )
    return lines


def write_report(rows: List[dict], curves: Curves, settings, out: Path, word_budget: float) -> str:
    """Writes summary.csv, summary.md and curves_<setting>.png into ``out``; returns the Markdown text."""
    flat = []
    for row in rows:
        cells = {}
        for key, value in row.items():
            if isinstance(value, tuple):
                cells[key], cells[f"{key} ci low"], cells[f"{key} ci high"] = value
            else:
                cells[key] = value
        flat.append(cells)
    fields = list(dict.fromkeys(key for cells in flat for key in cells))
    with open(out / "summary.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(flat)

    headers = ["arm"] + [f"final {k}" for k in KEYS] + ["final objective", "Δ objective vs gdpo", "collapsed"]
    headers += ["conflict", "kept", "pass rate", "final λ"]
    sections = []
    for setting in dict.fromkeys(row["setting"] for row in rows):
        weights = SETTINGS[setting]["weights"]
        trained = " + ".join(key for key, w in zip(setting_keys(setting), weights) if w)
        extra = " ".join(SETTINGS[setting]["flags"])
        lines = [f"### {setting}: {trained}" + (f" ({extra})" if extra else ""), ""]
        lines += ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        for row in rows:
            if row["setting"] != setting:
                continue
            cells = [row["arm"]] + [_ci(row[f"final reward/{k}"]) for k in KEYS]
            cells += [_ci(row["final objective"]), _ci(row.get("objective minus gdpo"), signed=True)]
            cells += [row.get("collapsed", "—")]
            cells += [_plain(row.get(f"mean gd2po/{k}")) for k in ("conflict_ratio", "keep_ratio")]
            cells += [_plain(row.get("mean pass rate")), _plain(row.get("final lambda"))]
            lines.append("| " + " | ".join(cells) + " |")
        sections.append("\n".join(lines))
    note = (
        f"{settings.seeds} seed(s) × {settings.steps} steps, {settings.prompts_per_step} prompts × "
        f"{settings.rollouts_per_prompt} rollouts per step. Final = mean of the last {FINAL_STEPS} steps of the "
        "rewards of every rollout generated in a step; mean [95% bootstrap CI over seeds]; objective = the "
        "setting's weighted sum of the dimensions, unconditioned; Δ vs gdpo = the paired difference per seed; "
        f"collapsed = seeds whose final correctness is below {COLLAPSED_CORRECTNESS}; warm start = the warm-started "
        "policy's own rollouts; conflict = share of rollouts with mixed-sign per-dimension advantages (weighted); "
        "kept = share the filter kept; pass rate = share of prompt groups that passed dynamic sampling's test; "
        f"λ = the multiplier of brevity's budget (at most {word_budget} words on average)."
    )
    text = "\n\n".join([note, *sections, "\n".join(headroom_lines(rows))])
    (out / "summary.md").write_text(text + "\n")
    for setting in dict.fromkeys(row["setting"] for row in rows):
        _figure(setting, {arm: runs for arm, runs in curves.items() if arm_setting(arm) == setting}, out, word_budget)
    return text


def moving_average(values: List[float], window: int = WINDOW) -> torch.Tensor:
    """Trailing mean over full windows: entry s is the mean of steps s+1 .. s+window (1-based)."""
    series = torch.tensor(values, dtype=torch.float64)
    return series.unfold(0, min(window, len(series)), 1).mean(1)


def _figure(setting: str, curves: Curves, out: Path, word_budget: float) -> None:
    """curves_<setting>.png: each dimension, the objective, the conflict ratio, the kept share and what the
    disagreement and the filter do to the advantage mass (cancelled; filtered, or for GRPO and GDPO what the hard
    filter would remove) per step; correctness per generated rollout; the words against the budget. Thin lines:
    seeds; bold: their mean; legend outside."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [f"reward/{key}" for key in KEYS] + ["reward", "gd2po/conflict_ratio", "gd2po/keep_ratio"]
    panels += ["gd2po/cancelled_mass_ratio", "gd2po/filtered_mass_ratio"]
    panels += ["correctness per generated rollout", "response_words"]
    colours = dict(zip(curves, plt.get_cmap("tab10").colors))
    figure, axes = plt.subplots(3, 4, figsize=(20, 10.5))
    axes.flat[-1].axis("off")  # 11 panels
    for axis, key in zip(axes.flat, panels):
        for arm, runs in curves.items():
            series = "reward/correctness" if key == "correctness per generated rollout" else key
            smoothed = torch.stack([moving_average(run[series]) for run in runs])
            offset = min(WINDOW, len(runs[0][series]))
            if key == "correctness per generated rollout":
                # x = rollouts generated up to each step (dynamic sampling generates more per step), per seed.
                xs = [torch.tensor(run["generated_rollouts"]).cumsum(0)[offset - 1 :] for run in runs]
            else:
                xs = [torch.arange(smoothed.shape[1]) + offset] * len(runs)
            for x, seed_curve in zip(xs, smoothed):
                axis.plot(x, seed_curve, color=colours[arm], linewidth=0.6, alpha=0.35)
            axis.plot(xs[0], smoothed.mean(0), color=colours[arm], linewidth=2.2, label=arm.split("/", 1)[1])
        if key == "response_words" and any("gd2po/lambda/brevity" in runs[0] for runs in curves.values()):
            axis.axhline(word_budget, color="black", linestyle=":", linewidth=1)
            axis.annotate(f"budget {word_budget} words", (0.02, word_budget), xycoords=("axes fraction", "data"))
        titles = {
            "reward": "objective (the setting's weighted sum)",
            "response_words": "response words",
            "gd2po/cancelled_mass_ratio": "advantage mass cancelled in the sum",
            "gd2po/filtered_mass_ratio": "mass filtered (GRPO, GDPO: hard's what-if)",
        }
        axis.set_title(titles.get(key, key.replace("gd2po/", "")))
        axis.set_xlabel("generated rollouts" if key == "correctness per generated rollout" else "step")
        axis.grid(alpha=0.3)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="center right", title="estimator", fontsize=10)
    weights = SETTINGS[setting]["weights"]
    trained = " + ".join(key for key, w in zip(setting_keys(setting), weights) if w)
    figure.suptitle(
        f"{setting}: {trained} {' '.join(SETTINGS[setting]['flags'])}\n{WINDOW}-step moving average; thin = one "
        f"seed, bold = mean over {len(next(iter(curves.values())))} seeds"
    )
    figure.tight_layout(rect=(0, 0, 0.88, 1))
    figure.savefig(out / f"curves_{setting}.png", dpi=90)
    plt.close(figure)
