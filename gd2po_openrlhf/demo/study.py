"""python -m gd2po_openrlhf.demo.study (``make study``): when does GD²PO help? The preregistered study of
``docs/study-protocol.md`` on the demo's task.

Every arm (group size × setting × estimator or control) trains the same warm-started policy of each seed through the
demo's training loop (``training.train_arm``), in ``--workers`` processes. Each run is reduced to its endpoints
(``endpoints``); the report compares every arm with GDPO of the same seed, setting and group size:

  ΔAUC            per seed, the arm's objective (the setting's weighted reward sum) averaged over all steps minus
                  GDPO's; mean and 95% percentile bootstrap CI over seeds (BOOTSTRAP resamples). The primary endpoint.
  Δ last 10       the same on the mean of the last FINAL_STEPS steps
  Δ correctness   the same on correctness averaged over all steps
  verdict         helps when the CI lies above 0, hurts when below, ties otherwise

With ``--docs DIR`` the results go to DIR/study-results.json, the tables between the markers of DIR/study.md (the
hand-written reading outside them is kept) and the figures to DIR/img/study_*.png. ``--from-results FILE`` redraws
the page from a results file without training.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import multiprocessing
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import torch

from .__main__ import parse_settings, versions
from .report import FINAL_STEPS, bootstrap_ci
from .training import ESTIMATORS, SETTINGS, setting_keys, start_worker, train_arm, warm_start

STUDY_BOOTSTRAP = 10_000  # the protocol's resamples (the demo's tables use report.BOOTSTRAP = 2000)
STUDY_STEPS = 40  # fixed before the first run from a timing of one seed (docs/study-protocol.md)
BASELINE = "gdpo"
ARMS = list(ESTIMATORS)  # grpo, gdpo, GD²PO-hard, SNR at τ = 0.8, 0.5, 0.3, and the controls
ARM_NAMES = {
    "grpo": "GRPO",
    "gdpo": "GDPO",
    "gd2po_hard": "GD²PO-hard",
    "gd2po_snr": "GD²PO-SNR τ=0.8",
    "gd2po_snr_0.5": "GD²PO-SNR τ=0.5",
    "gd2po_snr_0.3": "GD²PO-SNR τ=0.3",
    "random_drop": "control: random drop",
    "no_kappa": "control: hard without κ",
}
# Per-step diagnostics averaged over a run (predictors, not outcomes); the last one only where a reference is logged.
DIAGNOSTICS = [
    "gd2po/conflict_ratio",
    "gd2po/cancelled_mass_ratio",
    "gd2po/filtered_mass_ratio",
    "gd2po/keep_ratio",
    "gd2po/kappa_mass_ratio",
    "gd2po/conflict_reference_agreement",
]
CURVES = ["reward", "reward/correctness", "gd2po/conflict_ratio"]  # kept per step (means over seeds) for figures
BEGIN, END = "<!-- study:generated begin -->", "<!-- study:generated end -->"


def parse_study(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m gd2po_openrlhf.demo.study",
        description="The preregistered study (docs/study-protocol.md): every estimator and control against GDPO in "
        "each reward setting and group size, paired by seed, with bootstrap CIs.",
    )
    parser.add_argument("--seeds", type=int, default=10, help="seeds 0..N-1; every arm runs on each")
    parser.add_argument("--steps", type=int, default=STUDY_STEPS, help="RL steps per run")
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=ARMS, help="estimators and controls")
    parser.add_argument("--group-sizes", nargs="+", type=int, default=[4, 8], help="rollouts per prompt")
    parser.add_argument(
        "--rollouts-per-step", type=int, default=64, help="generated per step at every group size (prompts = this / G)"
    )
    parser.add_argument("--micro-batch-size", type=int, default=16)
    parser.add_argument("--warm-start-steps", type=int, default=300)
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--output-dir", type=Path, default=Path("runs/study"))
    parser.add_argument(
        "--docs", type=Path, help="write study-results.json, study.md's tables and img/study_*.png into this folder"
    )
    parser.add_argument("--from-results", type=Path, help="only the report, from this results file (no training)")
    study = parser.parse_args(argv)
    if BASELINE not in study.arms:
        parser.error(f"--arms must include {BASELINE}, the baseline every arm is compared with")
    if study.seeds < 2:
        parser.error("--seeds must be >= 2 (the CIs are over seeds)")
    for group_size in study.group_sizes:
        if group_size < 2 or study.rollouts_per_step % group_size:
            parser.error(f"--group-sizes: {group_size} must be >= 2 and divide --rollouts-per-step")
    return study


def run_settings(study: argparse.Namespace, group_size: int) -> argparse.Namespace:
    """The demo's settings for one group size: the same rollouts per step, checked by the demo's own parser."""
    return parse_settings(
        [
            *("--seeds", str(study.seeds), "--steps", str(study.steps), "--workers", str(study.workers)),
            *("--prompts-per-step", str(study.rollouts_per_step // group_size)),
            *("--rollouts-per-prompt", str(group_size), "--micro-batch-size", str(study.micro_batch_size)),
            *("--warm-start-steps", str(study.warm_start_steps)),
            *("--output-dir", str(study.output_dir / f"g{group_size}")),
        ]
    )


def endpoints(curves: Dict[str, List[float]]) -> Dict[str, float]:
    """One run's endpoints: objective and correctness averaged over all steps (AUC) and the objective's last
    FINAL_STEPS steps, and each logged diagnostic averaged over the steps."""
    values = {
        "auc_objective": sum(curves["reward"]) / len(curves["reward"]),
        "last_objective": sum(curves["reward"][-FINAL_STEPS:]) / len(curves["reward"][-FINAL_STEPS:]),
        "auc_correctness": sum(curves["reward/correctness"]) / len(curves["reward/correctness"]),
    }
    values.update({key: sum(curves[key]) / len(curves[key]) for key in DIAGNOSTICS if key in curves})
    return values


def machine() -> Dict[str, str]:
    """The commit (and whether the tree had changes) and the CPU the study ran on."""
    here = Path(__file__).resolve().parent

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=here, capture_output=True, text=True, timeout=10).stdout.strip()
        except OSError:
            return ""

    cpu = platform.processor() or platform.machine()
    if Path("/proc/cpuinfo").exists():
        names = [line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")]
        cpu = names[0] if names else cpu
    return {
        "commit": git("rev-parse", "--short", "HEAD") or "unknown (not a git checkout)",
        "tree": "with uncommitted changes" if git("status", "--porcelain", "--untracked-files=no") else "clean",
        "cpu": cpu,
        "cores": str(os.cpu_count()),
    }


def run_study(study: argparse.Namespace) -> dict:
    """Every job, in worker processes; returns the results (metadata, one row of endpoints per run, mean curves)."""
    started, host = time.time(), machine()  # the checkout the runs load, before anyone edits it
    per_size = {group_size: run_settings(study, group_size) for group_size in study.group_sizes}
    first = per_size[study.group_sizes[0]]
    (first.output_dir / "warm_start").mkdir(parents=True, exist_ok=True)
    seeds = list(range(study.seeds))
    jobs = [
        (per_size[size], f"{setting}/{arm}", seed)
        for size in study.group_sizes
        for setting in study.settings
        for arm in study.arms
        for seed in seeds
    ]
    print(f"{len(seeds)} warm starts, then {len(jobs)} runs of {study.steps} steps in {study.workers} process(es)")
    context = multiprocessing.get_context("spawn")  # no forked torch or Ray state
    with context.Pool(study.workers, initializer=start_worker) as pool:
        warm = pool.map(warm_start, [(first, seed) for seed in seeds])
        for size, settings in per_size.items():  # every group size starts from the same warm starts
            if settings is not first:
                shutil.copytree(
                    first.output_dir / "warm_start", settings.output_dir / "warm_start", dirs_exist_ok=True
                )
        results = []
        for done, result in enumerate(pool.imap(train_arm, jobs, chunksize=1), 1):
            results.append(result)
            if done % max(1, len(jobs) // 20) == 0 or done == len(jobs):
                elapsed = time.time() - started
                left = elapsed / done * (len(jobs) - done)
                print(f"[study] {done}/{len(jobs)} runs, {elapsed:.0f} s, about {left:.0f} s left", flush=True)

    fields = ["group_size", "setting", "arm", "seed", "seconds", "auc_objective", "last_objective", "auc_correctness"]
    fields += DIAGNOSTICS
    rows, sums = [], {}
    for (settings, name, seed), (curves, seconds) in zip(jobs, results):
        setting, arm = name.split("/")
        values = endpoints(curves)
        rows.append([settings.rollouts_per_prompt, setting, arm, seed, seconds] + [values.get(k) for k in fields[5:]])
        cell = sums.setdefault(f"g{settings.rollouts_per_prompt}/{name}", {key: [] for key in CURVES})
        for key in CURVES:
            cell[key].append(curves[key])
    mean_curves = {
        cell: {key: [round(sum(step) / len(step), 5) for step in zip(*series)] for key, series in keyed.items()}
        for cell, keyed in sums.items()
    }
    return {
        "protocol": "docs/study-protocol.md",
        "machine": host,
        "versions": versions(),
        "study": {key: str(value) if isinstance(value, Path) else value for key, value in vars(study).items()},
        "warm_start": warm,
        "total_seconds": round(time.time() - started, 1),
        "fields": fields,
        "runs": rows,
        "mean_curves": mean_curves,
    }


# ---- the report: a pure function of the results


def run_table(results: dict) -> Dict[Tuple[int, str, str], Dict[str, List[float]]]:
    """(group size, setting, arm) -> endpoint -> one value per seed, in seed order."""
    fields = results["fields"]
    table: Dict[Tuple[int, str, str], Dict[str, List[float]]] = {}
    for row in sorted(results["runs"], key=lambda row: row[3]):
        values = dict(zip(fields, row))
        cell = table.setdefault((values["group_size"], values["setting"], values["arm"]), {})
        for key in fields[5:]:
            if values[key] is not None:
                cell.setdefault(key, []).append(values[key])
    return table


def paired(arm: Sequence[float], baseline: Sequence[float]) -> Tuple[float, float, float]:
    """Mean [95% CI] over seeds of arm − baseline, paired by seed (the protocol's bootstrap)."""
    return bootstrap_ci([a - b for a, b in zip(arm, baseline)], resamples=STUDY_BOOTSTRAP)


def verdict(ci: Tuple[float, float, float]) -> str:
    return "helps" if ci[1] > 0 else "hurts" if ci[2] < 0 else "ties"


def rank_correlation(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Spearman's ρ: the Pearson correlation of the ranks (ties get consecutive ranks, in input order)."""
    ranks = [torch.tensor(v, dtype=torch.float64).argsort(stable=True).argsort().double() for v in (xs, ys)]
    x, y = (r - r.mean() for r in ranks)
    scale = float((x.norm() * y.norm()).clamp_min(1e-300))
    return float(x.dot(y)) / scale


def _ci(value: Tuple[float, float, float]) -> str:
    return f"{value[0]:+.3f} [{value[1]:+.3f}, {value[2]:+.3f}]"


def report(results: dict) -> str:
    """The generated part of docs/study.md: the run, a verdict grid, a table per setting, the controls, the
    diagnostics and the hypotheses (Markdown)."""
    table = run_table(results)
    study = results["study"]
    sizes = list(dict.fromkeys(key[0] for key in table))
    settings = list(dict.fromkeys(key[1] for key in table))
    arms = [arm for arm in ARMS if any(key[2] == arm for key in table)]
    compared = [arm for arm in arms if arm != BASELINE]
    cells = [(size, setting) for setting in settings for size in sizes]
    delta = {
        (size, setting, arm, endpoint): paired(
            table[size, setting, arm][endpoint], table[size, setting, BASELINE][endpoint]
        )
        for size, setting in cells
        for arm in compared
        for endpoint in ("auc_objective", "last_objective", "auc_correctness")
    }
    host, seeds = results["machine"], len(table[cells[0][0], cells[0][1], BASELINE]["auc_objective"])
    lines = [
        f"Run: commit `{host['commit']}` ({host['tree']}), {host['cpu']}, {host['cores']} cores, "
        f"{study['workers']} worker processes, {len(results['runs'])} runs in {results['total_seconds']:.0f} s; "
        f"torch {results['versions'].get('torch')}, openrlhf {results['versions'].get('openrlhf')}.",
        "",
        f"{seeds} seeds × {study['steps']} steps, {study['rollouts_per_step']} rollouts per step "
        f"(group sizes {', '.join(map(str, sizes))}), warm start {study['warm_start_steps']} steps. Every Δ is "
        f"arm − GDPO in the same seed, setting and group size: mean [95% paired bootstrap CI over seeds, "
        f"{STUDY_BOOTSTRAP} resamples]. ΔAUC: the objective (the setting's weighted reward sum) averaged over all "
        f"steps; Δ last {FINAL_STEPS}: over the last {FINAL_STEPS} steps; Δ correctness: correctness over all steps.",
        "",
        "### Primary endpoint, every cell",
        "",
        "ΔAUC against GDPO; ▲ helps (CI above 0), ▼ hurts (CI below 0), no mark: ties.",
        "",
        "| arm | " + " | ".join(f"{setting} G={size}" for size, setting in cells) + " |",
        "|---|" + "---|" * len(cells),
    ]
    marks = {"helps": " ▲", "hurts": " ▼", "ties": ""}
    for arm in compared:
        primary = [delta[size, setting, arm, "auc_objective"] for size, setting in cells]
        row = [f"{ci[0]:+.3f}{marks[verdict(ci)]}" for ci in primary]
        lines.append(f"| {ARM_NAMES[arm]} | " + " | ".join(row) + " |")
    counts = {
        arm: [verdict(delta[size, setting, arm, "auc_objective"]) for size, setting in cells] for arm in compared
    }
    lines += ["", "| arm | helps | ties | hurts |", "|---|---|---|---|"]
    for arm in compared:
        lines.append(
            f"| {ARM_NAMES[arm]} | " + " | ".join(str(counts[arm].count(v)) for v in ("helps", "ties", "hurts")) + " |"
        )

    for setting in settings:
        weights = SETTINGS[setting]["weights"]
        trained = " + ".join(key for key, w in zip(setting_keys(setting), weights) if w)
        extra = " ".join(SETTINGS[setting]["flags"])
        lines += ["", f"### {setting}: {trained}" + (f" (`{extra}`)" if extra else ""), ""]
        lines += ["| arm | G | ΔAUC | verdict | Δ last 10 | Δ correctness |", "|---|---|---|---|---|---|"]
        for size in sizes:
            base = table[size, setting, BASELINE]
            mean_auc = sum(base["auc_objective"]) / seeds
            mean_correct = sum(base["auc_correctness"]) / seeds
            lines.append(f"| GDPO (AUC, correctness) | {size} | {mean_auc:.3f} | — | — | {mean_correct:.3f} |")
            for arm in compared:
                auc = delta[size, setting, arm, "auc_objective"]
                last, correct = (delta[size, setting, arm, key] for key in ("last_objective", "auc_correctness"))
                lines.append(
                    f"| {ARM_NAMES[arm]} | {size} | {_ci(auc)} | {verdict(auc)} | {_ci(last)} | {_ci(correct)} |"
                )

    lines += [
        "",
        "### The controls: which rollouts, or how many?",
        "",
        "Paired ΔAUC between two filtered arms (same seed, setting and group size).",
        "",
        "| cell | hard − random drop | hard − hard without κ | SNR τ=0.8 − hard |",
        "|---|---|---|---|",
    ]
    contrasts = [("gd2po_hard", "random_drop"), ("gd2po_hard", "no_kappa"), ("gd2po_snr", "gd2po_hard")]
    for size, setting in cells:
        row = []
        for a, b in contrasts:
            if (size, setting, a) in table and (size, setting, b) in table:
                row.append(
                    _ci(paired(table[size, setting, a]["auc_objective"], table[size, setting, b]["auc_objective"]))
                )
            else:
                row.append("—")
        lines.append(f"| {setting} G={size} | " + " | ".join(row) + " |")

    lines += [
        "",
        "### Diagnostics: what GDPO's own batches show, and whether it predicts the filter's effect",
        "",
        "Means over steps and seeds of the GDPO arm (the filter columns are what the hard filter would remove), "
        "beside GD²PO-hard's ΔAUC.",
        "",
        "| cell | conflict | cancelled mass | filtered mass (what-if) | reference agreement | hard ΔAUC |",
        "|---|---|---|---|---|---|",
    ]
    predictors = {key: [] for key in DIAGNOSTICS[:3]}
    effects = []
    for size, setting in cells:
        base = table[size, setting, BASELINE]
        means = {key: sum(base[key]) / seeds if key in base else None for key in DIAGNOSTICS}
        hard = delta.get((size, setting, "gd2po_hard", "auc_objective"))
        cols = [f"{means[key]:.3f}" for key in DIAGNOSTICS[:3]]
        agreement = means["gd2po/conflict_reference_agreement"]
        cols.append("—" if agreement is None else f"{agreement:.3f}")
        cols.append("—" if hard is None else _ci(hard))
        lines.append(f"| {setting} G={size} | " + " | ".join(cols) + " |")
        if hard is not None:
            effects.append(hard[0])
            for key in predictors:
                predictors[key].append(means[key])
    if len(effects) >= 3:
        rho = ", ".join(
            f"{key.split('/')[1]} {rank_correlation(values, effects):+.2f}" for key, values in predictors.items()
        )
        lines += ["", f"Rank correlation (Spearman ρ) over the {len(effects)} cells with GD²PO-hard's ΔAUC: {rho}."]

    lines += ["", "### The preregistered hypotheses", ""] + hypotheses(table, delta, sizes, settings)
    return "\n".join(lines)


def hypotheses(table, delta, sizes: List[int], settings: List[str]) -> List[str]:
    """H1-H4 of the protocol, each with the numbers that decide it (a hypothesis needs its arms in the results)."""
    lines = []
    if "brevity" in settings and ("gd2po_hard" in {key[2] for key in table}):
        cis = [delta[size, "brevity", "gd2po_hard", "auc_objective"] for size in sizes]
        held = all(ci[1] <= 0 for ci in cis)
        lines.append(
            "- H1, GD²PO-hard does not beat GDPO in `brevity`: "
            + "; ".join(f"G={size} {_ci(ci)}" for size, ci in zip(sizes, cis))
            + f": **{'holds' if held else 'rejected'}**."
        )
    if "three" in settings and all((sizes[0], "three", arm) in table for arm in ("gd2po_hard", "random_drop")):
        cis = [
            paired(table[s, "three", "gd2po_hard"]["auc_objective"], table[s, "three", "random_drop"]["auc_objective"])
            for s in sizes
        ]
        held = all(ci[1] <= 0 for ci in cis)
        lines.append(
            "- H2, GD²PO-hard does not beat the random drop in `three` (hard − random drop): "
            + "; ".join(f"G={size} {_ci(ci)}" for size, ci in zip(sizes, cis))
            + f": **{'holds' if held else 'rejected'}**."
        )
    if "noisy" in settings and (sizes[0], "noisy", "gd2po_hard") in table:
        agreement, effect = [], []
        for size in sizes:
            base, hard = table[size, "noisy", BASELINE], table[size, "noisy", "gd2po_hard"]
            agreement += base["gd2po/conflict_reference_agreement"]
            effect += [a - b for a, b in zip(hard["auc_objective"], base["auc_objective"])]
        rho = rank_correlation(agreement, effect)
        lines.append(
            f"- H3, in `noisy` a high reference agreement goes with filtering losing: Spearman ρ between GDPO's "
            f"mean agreement and hard's ΔAUC over the {len(effect)} (seed, group size) pairs = {rho:+.2f} "
            f"(H3 predicts ρ < 0): **{'holds' if rho < 0 else 'rejected'}**."
        )
    if all((sizes[0], settings[0], arm) in table for arm in ("gd2po_snr", "gd2po_hard")):
        within, total = 0, 0
        for size in sizes:
            for setting in settings:
                gap = paired(
                    table[size, setting, "gd2po_snr"]["auc_objective"],
                    table[size, setting, "gd2po_hard"]["auc_objective"],
                )
                hard = delta[size, setting, "gd2po_hard", "auc_objective"]
                within += abs(gap[0]) < hard[2] - hard[1]
                total += 1
        reading = "holds" if within == total else "holds in most cells" if within * 2 > total else "rejected"
        lines.append(
            f"- H4, SNR τ=0.8 and hard differ by less than the width of hard's ΔAUC CI: in {within} of {total} "
            f"cells: **{reading}**."
        )
    return lines


def figures(results: dict, image_dir: Path) -> List[Path]:
    """study_delta_auc.png (ΔAUC with CIs per setting, arm and group size) and study_curves.png (the objective and
    GDPO's conflict ratio per step, means over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = run_table(results)
    sizes = list(dict.fromkeys(key[0] for key in table))
    settings = list(dict.fromkeys(key[1] for key in table))
    compared = [arm for arm in ARMS if arm != BASELINE and any(key[2] == arm for key in table)]
    image_dir.mkdir(parents=True, exist_ok=True)
    written = []

    figure, axes = plt.subplots(1, len(settings), figsize=(4 * len(settings), 4.5), sharey=True, squeeze=False)
    for axis, setting in zip(axes[0], settings):
        for offset, size in enumerate(sizes):
            for y, arm in enumerate(compared):
                mean, low, high = paired(
                    table[size, setting, arm]["auc_objective"], table[size, setting, BASELINE]["auc_objective"]
                )
                position = y + (offset - (len(sizes) - 1) / 2) * 0.25
                axis.errorbar(
                    mean,
                    position,
                    xerr=[[mean - low], [high - mean]],
                    fmt="o" if offset == 0 else "s",
                    color=f"C{offset}",
                    label=f"G={size}" if y == 0 else None,
                    markersize=4,
                    capsize=2,
                )
        axis.axvline(0, color="black", linewidth=0.8)
        axis.set_title(setting)
        axis.set_xlabel("ΔAUC vs GDPO")
        axis.grid(alpha=0.3)
    axes[0][0].set_yticks(range(len(compared)), [ARM_NAMES[arm] for arm in compared])
    axes[0][0].invert_yaxis()
    axes[0][-1].legend(loc="lower right", fontsize=8)
    figure.suptitle("Objective AUC minus GDPO's, paired by seed: mean and 95% bootstrap CI")
    figure.tight_layout()
    written.append(image_dir / "study_delta_auc.png")
    figure.savefig(written[-1], dpi=80)
    plt.close(figure)

    shown = [arm for arm in ("grpo", "gdpo", "gd2po_hard", "gd2po_snr", "random_drop") if arm in compared + [BASELINE]]
    figure, axes = plt.subplots(
        len(sizes) + 1, len(settings), figsize=(4 * len(settings), 3 * (len(sizes) + 1)), squeeze=False
    )
    for column, setting in enumerate(settings):
        for row, size in enumerate(sizes):
            axis = axes[row][column]
            for arm in shown:
                series = results["mean_curves"][f"g{size}/{setting}/{arm}"]["reward"]
                axis.plot(range(1, len(series) + 1), series, label=ARM_NAMES[arm], linewidth=1.2)
            axis.set_title(f"{setting}, G={size}: objective")
            axis.grid(alpha=0.3)
        axis = axes[-1][column]
        for size in sizes:
            series = results["mean_curves"][f"g{size}/{setting}/{BASELINE}"]["gd2po/conflict_ratio"]
            axis.plot(range(1, len(series) + 1), series, label=f"G={size}")
        axis.set_title(f"{setting}: GDPO's conflict ratio")
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7)
    axes[-1][-1].legend(fontsize=7)
    figure.suptitle("Means over seeds, per step")
    figure.tight_layout()
    written.append(image_dir / "study_curves.png")
    figure.savefig(written[-1], dpi=80)
    plt.close(figure)
    return written


def write_docs(results: dict, docs: Path) -> Path:
    """DIR/study-results.json, the generated part of DIR/study.md (between BEGIN and END; the rest is kept, or a
    placeholder on the first run) and DIR/img/study_*.png."""
    docs.mkdir(parents=True, exist_ok=True)
    (docs / "study-results.json").write_text(json.dumps(results, indent=None, separators=(",", ":")) + "\n")
    generated = f"{BEGIN}\n{report(results)}\n{END}"
    page = docs / "study.md"
    if page.exists() and BEGIN in page.read_text() and END in page.read_text():
        before, rest = page.read_text().split(BEGIN, 1)
        after = rest.split(END, 1)[1]
        text = before + generated + after
    else:
        text = "# When does GD²PO help? The study\n\n" + generated + "\n\n## Reading\n\n(not written yet)\n"
    page.write_text(text)
    figures(results, docs / "img")
    return page


def main(argv=None) -> None:
    study = parse_study(argv)
    if importlib.util.find_spec("matplotlib") is None:  # fail before training, not after
        sys.exit("the study draws its figures with matplotlib: pip install 'gd2po-openrlhf[demo]' (or matplotlib)")
    if study.from_results:
        results = json.loads(study.from_results.read_text())
    else:
        results = run_study(study)
        study.output_dir.mkdir(parents=True, exist_ok=True)
        (study.output_dir / "results.json").write_text(json.dumps(results) + "\n")
        logs = f"{study.output_dir}/g<G>/<setting>/<arm>/seed<k>"
        print(f"Wrote {study.output_dir}/results.json (TensorBoard logs: {logs})")
    print(report(results))
    if study.docs:
        print(
            f"Wrote {write_docs(results, study.docs)}, {study.docs}/study-results.json, {study.docs}/img/study_*.png"
        )


if __name__ == "__main__":
    main()
