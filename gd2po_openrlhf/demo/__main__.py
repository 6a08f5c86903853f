"""python -m gd2po_openrlhf.demo: GRPO, GDPO, GD²PO-hard and GD²PO-SNR on a tiny policy, on CPU.

Trains the same warm-started policy with each estimator (same seeds, prompts and budget) through
OpenRLHF's own classes and the plugin's experience maker (see ``training.py``), then writes TensorBoard
logs, a table and a figure (``report.py``) under ``--output-dir``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import shutil
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Dict, List

import torch

import gd2po_openrlhf

from .report import summarize, write_report
from .training import ESTIMATORS, TASK_FILE, WORD_BUDGET, build_tokenizer, run_estimator, warm_started_policy


def parse_settings(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m gd2po_openrlhf.demo",
        description="Train a tiny policy on a 3-reward task with each estimator (same seeds, same budget) and "
        "compare them: TensorBoard logs, a figure, a table.",
    )
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds (0..N-1); every estimator runs on each")
    parser.add_argument("--steps", type=int, default=80, help="RL steps per run")
    parser.add_argument("--estimators", nargs="+", choices=list(ESTIMATORS), default=list(ESTIMATORS))
    parser.add_argument("--prompts-per-step", type=int, default=16)
    parser.add_argument("--rollouts-per-prompt", type=int, default=4, help="group size G (n_samples_per_prompt)")
    parser.add_argument("--micro-batch-size", type=int, default=16, help="rollouts per micro-batch")
    parser.add_argument("--updates-per-step", type=int, default=2, help="optimiser steps (mini-batches) per RL step")
    parser.add_argument("--lr", type=float, default=1e-3, help="policy learning rate during RL")
    parser.add_argument(
        "--warm-start-steps", type=int, default=300, help="supervised steps on the noisy demonstrations"
    )
    parser.add_argument(
        "--target", type=float, default=2.3, help="total reward (moving average over 5 steps) that counts as reached"
    )
    parser.add_argument("--output-dir", type=Path, default=Path("runs/demo"))
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: the model is tiny, so more threads mostly add synchronisation, and on a "
        "busy machine they oversubscribe the cores: 60x slower was seen)",
    )
    settings = parser.parse_args(argv)
    rollouts = settings.prompts_per_step * settings.rollouts_per_prompt
    if settings.seeds < 1 or settings.steps < 1 or settings.rollouts_per_prompt < 2 or settings.threads < 1:
        parser.error("--seeds, --steps and --threads must be >= 1 and --rollouts-per-prompt >= 2")
    if rollouts % (settings.micro_batch_size * settings.updates_per_step):
        parser.error(
            f"--prompts-per-step × --rollouts-per-prompt ({rollouts}) must be a multiple of "
            f"--micro-batch-size × --updates-per-step ({settings.micro_batch_size * settings.updates_per_step})"
        )
    return settings


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
        sys.exit("the demo draws its figure with matplotlib: pip install 'gd2po-openrlhf[demo]' (or matplotlib)")
    from torch.utils.tensorboard import SummaryWriter

    gd2po_openrlhf.register()  # explicit, so the demo also runs with GD2PO_DISABLE=1 or without the .pth
    torch.set_num_threads(settings.threads)
    out = settings.output_dir
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    common = f"--reward.remote_url {TASK_FILE} --rollout.n_samples_per_prompt {settings.rollouts_per_prompt}"
    print("Equivalent OpenRLHF command lines (python -m openrlhf.cli.train_ppo_ray ...):")
    for name in settings.estimators:
        print(f"  {name:<10} {' '.join(ESTIMATORS[name])} {common}")

    started = time.time()
    curves: Dict[str, List[Dict[str, List[float]]]] = {name: [] for name in settings.estimators}
    run_seconds: Dict[str, List[float]] = {name: [] for name in settings.estimators}
    for seed in range(settings.seeds):
        warm_policy = warm_started_policy(tokenizer, seed, settings.warm_start_steps)
        for name in settings.estimators:
            log_dir = out / name / f"seed{seed}"
            shutil.rmtree(log_dir, ignore_errors=True)  # one event file per run, not a mix of old and new
            run_started = time.time()
            with SummaryWriter(str(log_dir)) as writer:
                curves[name].append(run_estimator(name, settings, warm_policy, tokenizer, seed, writer))
            run_seconds[name].append(time.time() - run_started)

    rows = summarize(curves, settings.target, WORD_BUDGET)
    results = {
        "settings": {key: str(value) if isinstance(value, Path) else value for key, value in vars(settings).items()},
        "seeds": list(range(settings.seeds)),
        "versions": versions(),
        "command_lines": {name: ESTIMATORS[name] + common.split() for name in settings.estimators},
        "run_seconds": run_seconds,
        "total_seconds": time.time() - started,
        "table": rows,
        "curves": curves,
    }
    (out / "results.json").write_text(json.dumps(results, indent=1))
    table = write_report(rows, curves, settings, out, WORD_BUDGET)
    print(table)
    print(f"\nWrote {out}/summary.md, summary.csv, curves.png, results.json; TensorBoard: tensorboard --logdir {out}")
    print(f"Total time {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
