"""The GD²PO diagnostics reach TensorBoard through OpenRLHF's own logger: event files written by
TensorboardLogger and read back."""

from types import SimpleNamespace

import pytest
import torch
from gd2po_testing import experience_maker, openrlhf_strategy, rollout_experiences
from openrlhf.trainer.ppo_trainer import BasePPOTrainer
from openrlhf.trainer.ppo_utils.experience import Experience
from openrlhf.utils.logging_utils import TensorboardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

N = 4
EXPECTED_TAGS = [
    "conflict_ratio",
    "dropped_ratio",
    "keep_ratio",
    "dropped_among_conflicting",
    "group_keep_ratio_mean",
    "group_keep_ratio_min",
    "group_keep_ratio_max",
    "group_keep_ratio_std",
    "snr_ratio_mean",
    "snr_ratio_abs_mean",
    "snr_ratio_abs_median",
    "snr_threshold",
    "num_reward_dims",
    "score_abs_mean_before_filter",
    "score_abs_mean_after_filter",
    "advantage_abs_mean",
    "reward_mean/correctness",
    "reward_std/correctness",
    "reward_mean/format",
    "reward_std/format",
]


def one_gd2po_step(tmp_path, *flags):
    """One step of the plugin's experience maker on fixed rewards, and what the trainer hands its loggers:
    ``(strategy, the step's metrics, OpenRLHF's rollout stats)``."""
    reward_file = tmp_path / "rules.py"
    reward_file.write_text("def reward_func(queries, prompts, labels):\n    return {'rewards': {}}\n")
    strategy = openrlhf_strategy(
        ["--advantage_estimator", "gd2po", "--reward.remote_url", str(reward_file), "--gd2po.reward_keys"]
        + ["correctness", "format", "--rollout.n_samples_per_prompt", str(N), "--algo.kl.init_coef", "0", *flags]
    )
    rewards = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]] * 3)
    samples = rollout_experiences(rewards, torch.tensor([3, 4, 2, 5] * 3), N, 4, reward_keys=["correctness", "format"])
    for i, sample in enumerate(samples):
        sample.index = [i]
    experiences = [Experience.concat_experiences(samples[i : i + 4], 0) for i in range(0, len(samples), 4)]
    maker = experience_maker(strategy)
    experiences = maker.compute_advantages_and_returns(experiences)
    metrics = dict(maker.last_step_report.metrics)
    # What the trainer does each step: rollout stats (patched to carry the diagnostics), then its loggers.
    stats = BasePPOTrainer._compute_rollout_stats(SimpleNamespace(experience_maker=maker), experiences)
    return strategy, metrics, stats


def test_diagnostics_are_logged_under_gd2po_prefix(tmp_path):
    strategy, metrics, stats = one_gd2po_step(tmp_path, "--logger.tensorboard_dir", str(tmp_path / "tb"))
    logger = TensorboardLogger(strategy.args)
    logger.log_train(1, stats)
    logger.close()

    run_dirs = list((tmp_path / "tb").iterdir())
    assert len(run_dirs) == 1
    events = EventAccumulator(str(run_dirs[0]))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for name in EXPECTED_TAGS:
        assert f"train/gd2po/{name}" in tags, name
        (scalar,) = events.Scalars(f"train/gd2po/{name}")
        assert scalar.step == 1 and scalar.value == pytest.approx(metrics[f"gd2po/{name}"], abs=1e-6)
    # Rows 0 and 1 of each group have mixed signs and a zero signed sum: the SNR filter (τ = 0.8) drops them.
    assert events.Scalars("train/gd2po/conflict_ratio")[0].value == pytest.approx(0.5)
    assert events.Scalars("train/gd2po/keep_ratio")[0].value == pytest.approx(0.5)
    assert "train/rollout/reward_mean" in tags


@pytest.mark.subprocess
def test_the_diagnostics_reach_weights_and_biases_read_back_from_the_offline_run(tmp_path, monkeypatch):
    """OpenRLHF's own WandbLogger (--logger.wandb.key), offline: the plugin's tags in the run's transaction log,
    read back with wandb's own reader (``wandb leet inspect --json``)."""
    import json
    import subprocess
    import sys

    from openrlhf.utils.logging_utils import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    flags = ["--logger.wandb.key", "0" * 40, "--logger.wandb.project", "gd2po-test"]
    strategy, metrics, stats = one_gd2po_step(tmp_path, *flags)
    logger = WandbLogger(strategy.args)
    logger.log_train(1, stats)
    logger.close()

    (run_file,) = tmp_path.glob("wandb/offline-run-*/run-*.wandb")
    wandb_cli = [sys.executable, "-c", "import sys; from wandb.cli.cli import cli; sys.exit(cli())"]
    inspected = subprocess.run(
        wandb_cli + ["leet", "inspect", "--json", str(run_file)], capture_output=True, text=True, timeout=120
    )
    assert inspected.returncode == 0, inspected.stderr[-2000:]
    records = [json.loads(line) for line in inspected.stdout.splitlines() if line.startswith("{")]
    (history,) = [record["history"]["item"] for record in records if record.get("type") == "history"]
    assert history["train/global_step"] == 1
    for name in EXPECTED_TAGS:
        assert history[f"train/gd2po/{name}"] == pytest.approx(metrics[f"gd2po/{name}"], abs=1e-6), name
    assert history["train/gd2po/keep_ratio"] == pytest.approx(0.5)
