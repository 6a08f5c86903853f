"""python -m gd2po_openrlhf.demo: GRPO, GDPO, GD²PO-hard and GD²PO-SNR on a tiny policy, on CPU, in four reward
settings (``training.SETTINGS``).

Every arm (setting × estimator) trains the same warm-started policy of each seed (same prompts, same budget)
through OpenRLHF's own classes and the plugin's experience maker (``training.py``), then the report (``report.py``)
writes TensorBoard logs, a table per setting with bootstrap CIs over seeds and a figure per setting under
``--output-dir``. Runs are deterministic per seed, so ``--workers N`` processes give the same results as one.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import multiprocessing
import os
import platform
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Dict, List

from .report import summarize, write_report
from .training import (
    DEMO_ESTIMATORS,
    DEMO_SETTINGS,
    ESTIMATORS,
    EXTRA_ARMS,
    SETTINGS,
    WORD_BUDGET,
    arm_flags,
    common_flags,
    start_worker,
    train_arm,
    warm_start,
)


def parse_settings(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m gd2po_openrlhf.demo",
        description="Train a tiny policy with each estimator in each reward setting (same seeds, same budget) and "
        "compare them: TensorBoard logs, a table per setting with 95%% bootstrap CIs over seeds, a figure per "
        "setting.",
    )
    parser.add_argument("--seeds", type=int, default=5, help="number of seeds (0..N-1); every arm runs on each")
    parser.add_argument("--steps", type=int, default=50, help="RL steps per run")
    parser.add_argument(
        "--settings",
        nargs="+",
        choices=list(SETTINGS),
        default=DEMO_SETTINGS,
        help=f"reward designs (default: {' '.join(DEMO_SETTINGS)})",
    )
    parser.add_argument(
        "--estimators",
        nargs="+",
        choices=list(ESTIMATORS),
        default=DEMO_ESTIMATORS,
        help=f"estimators and the study's controls (default: {' '.join(DEMO_ESTIMATORS)})",
    )
    parser.add_argument(
        "--extra-arms",
        nargs="*",
        choices=list(EXTRA_ARMS),
        default=[],
        help="arms beyond setting × estimator: dynamic sampling (three/*_ds) and brevity as a budget "
        "(brevity/*_budget)",
    )
    parser.add_argument("--prompts-per-step", type=int, default=16)
    parser.add_argument("--rollouts-per-prompt", type=int, default=4, help="group size G (n_samples_per_prompt)")
    parser.add_argument("--micro-batch-size", type=int, default=16, help="rollouts per micro-batch")
    parser.add_argument("--updates-per-step", type=int, default=2, help="optimiser steps (mini-batches) per RL step")
    parser.add_argument("--lr", type=float, default=1e-3, help="policy learning rate during RL")
    parser.add_argument(
        "--warm-start-steps", type=int, default=300, help="supervised steps on the noisy demonstrations"
    )
    parser.add_argument("--output-dir", type=Path, default=Path("runs/demo"))
    parser.add_argument(
        "--workers",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="processes running the arms side by side, one torch thread each (default: 2, or 1 on one core); the "
        "results do not depend on it",
    )
    settings = parser.parse_args(argv)
    rollouts = settings.prompts_per_step * settings.rollouts_per_prompt
    if settings.seeds < 1 or settings.steps < 1 or settings.rollouts_per_prompt < 2 or settings.workers < 1:
        parser.error("--seeds, --steps and --workers must be >= 1 and --rollouts-per-prompt >= 2")
    if rollouts % (settings.micro_batch_size * settings.updates_per_step):
        parser.error(
            f"--prompts-per-step × --rollouts-per-prompt ({rollouts}) must be a multiple of "
            f"--micro-batch-size × --updates-per-step ({settings.micro_batch_size * settings.updates_per_step})"
        )
    return settings


def arms_of(settings) -> List[str]:
    arms = [f"{setting}/{estimator}" for setting in settings.settings for estimator in settings.estimators]
    return arms + list(settings.extra_arms)


def versions() -> Dict[str, str]:
    found = {"python": platform.python_version(), "platform": platform.platform()}
    for package in ("gd2po-openrlhf", "openrlhf", "torch", "transformers", "ray", "tensorboard", "matplotlib"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


def main(argv=None) -> None:
    settings = parse_settings(argv)
    if importlib.util.find_spec("matplotlib") is None:  # fail before training, not after
        sys.exit("the demo draws its figures with matplotlib: pip install 'gd2po-openrlhf[demo]' (or matplotlib)")
    start_worker()
    out = settings.output_dir
    (out / "warm_start").mkdir(parents=True, exist_ok=True)
    arms = arms_of(settings)
    common = " ".join(common_flags(settings)[2:])
    print("Equivalent OpenRLHF command lines (python -m openrlhf.cli.train_ppo_ray --reward.remote_url task.py ...):")
    for arm in arms:
        print(f"  {arm:<26} {' '.join(arm_flags(arm))} {common}")

    started = time.time()
    seeds = list(range(settings.seeds))
    jobs = [(settings, arm, seed) for arm in arms for seed in seeds]
    print(f"{len(seeds)} warm starts, then {len(jobs)} runs in {settings.workers} process(es)", flush=True)
    if settings.workers == 1:
        warm = [warm_start((settings, seed)) for seed in seeds]
        results = [train_arm(job) for job in jobs]
    else:
        context = multiprocessing.get_context("spawn")  # no forked torch or Ray state
        with context.Pool(settings.workers, initializer=start_worker) as pool:
            warm = pool.map(warm_start, [(settings, seed) for seed in seeds])
            results = pool.map(train_arm, jobs, chunksize=1)  # in job order, whichever process ran a job
    curves = {arm: [results[a * len(seeds) + s][0] for s in seeds] for a, arm in enumerate(arms)}
    run_seconds = {arm: [results[a * len(seeds) + s][1] for s in seeds] for a, arm in enumerate(arms)}

    rows = summarize(curves, warm)
    results_file = {
        "settings": {key: str(value) if isinstance(value, Path) else value for key, value in vars(settings).items()},
        "seeds": seeds,
        "versions": versions(),
        "command_lines": {arm: arm_flags(arm) + common_flags(settings) for arm in arms},
        "warm_start": warm,
        "run_seconds": run_seconds,
        "total_seconds": time.time() - started,
        "table": rows,
        "curves": curves,
    }
    (out / "results.json").write_text(json.dumps(results_file, indent=1))
    text = write_report(rows, curves, settings, out, WORD_BUDGET)
    print(text)
    print(f"\nWrote {out}/summary.md, summary.csv, curves_<setting>.png, results.json")
    print(f"TensorBoard: tensorboard --logdir {out}")
    print(f"Total time {time.time() - started:.0f} s with {settings.workers} process(es)")


if __name__ == "__main__":
    main()
