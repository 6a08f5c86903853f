"""Smoke test of the CPU demo (``python -m gd2po_openrlhf.demo``) with a very small budget: the real command in
subprocesses (2 worker processes, and 1), its tables, figures, results file and TensorBoard logs read back; the
report's statistics on hand-made curves."""

import csv
import json
import os
import subprocess
import sys

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

ARMS = [
    "main/grpo",
    "main/gdpo",
    "main/gd2po_hard",
    "main/gd2po_snr",
    "brevity/grpo",
    "brevity/gdpo",
    "brevity/gd2po_hard",
    "brevity/gd2po_snr",
    "three/gd2po_snr_ds",
    "brevity/gdpo_budget",
]
WEIGHTS = {"main": (1, 0, 1, 0), "brevity": (1, 1, 0, 1), "three": (1, 1, 1, 0)}
KEYS = ("correctness", "format", "length", "brevity")
STEPS = 3


def run_demo(out, workers: int):
    command = [sys.executable, "-m", "gd2po_openrlhf.demo", "--seeds", "2", "--steps", str(STEPS)]
    command += ["--warm-start-steps", "5", "--prompts-per-step", "4", "--micro-batch-size", "8"]
    command += ["--settings", "main", "brevity", "--extra-arms", "three/gd2po_snr_ds", "brevity/gdpo_budget"]
    command += ["--workers", str(workers), "--output-dir", str(out)]
    # GD2PO_DISABLE turns the .pth hook off: the demo (and its worker processes) must activate the plugin itself.
    env = {**os.environ, "GD2PO_DISABLE": "1"}
    completed = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return completed.stdout


@pytest.fixture(scope="module")
def demo_output(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return out, run_demo(out, workers=2)


def table_rows(out):
    with open(out / "summary.csv") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.subprocess
def test_each_setting_has_a_table_with_the_warm_start_and_cis(demo_output):
    out, stdout = demo_output
    rows = table_rows(out)
    expected = []
    for setting in ("main", "brevity", "three"):
        expected.append(f"{setting}/warm start")
        expected += [arm for arm in ARMS if arm.startswith(setting + "/")]
    assert [f"{row['setting']}/{row['arm']}" for row in rows] == expected
    for row in rows:
        for key in [f"final reward/{k}" for k in KEYS] + ["final objective"]:
            low, mean, high = (float(row[f"{key} ci low"]), float(row[key]), float(row[f"{key} ci high"]))
            assert low <= mean + 1e-12 and mean <= high + 1e-12
        has_difference = row["arm"] not in ("gdpo", "warm start") and row["setting"] != "three"
        assert (row["objective minus gdpo"] != "") == has_difference, row
    markdown = (out / "summary.md").read_text()
    assert "### main: correctness + length" in markdown
    assert "### brevity: correctness + format + brevity" in markdown
    assert "| warm start |" in markdown and "| Δ objective vs gdpo |" in markdown
    assert "GRPO correctness, main: first 3 steps" in markdown and "headroom target ≤ 0.5 → ≥ 0.8" in markdown
    assert "GRPO correctness, brevity:" in stdout  # the tables are printed too
    assert "--advantage_estimator gd2po --gd2po.filter snr" in stdout  # the equivalent cluster command
    assert "10 runs" not in stdout and "20 runs in 2 process(es)" in stdout


@pytest.mark.subprocess
def test_one_figure_per_setting(demo_output):
    out, _ = demo_output
    for setting in ("main", "brevity", "three"):
        data = (out / f"curves_{setting}.png").read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


@pytest.mark.subprocess
def test_results_file_records_versions_seeds_settings_and_curves(demo_output):
    out, _ = demo_output
    results = json.loads((out / "results.json").read_text())
    assert results["seeds"] == [0, 1] and results["settings"]["steps"] == STEPS
    for package in ("openrlhf", "torch", "transformers", "gd2po-openrlhf", "python"):
        assert results["versions"][package] not in ("", "not installed")
    assert list(results["curves"]) == ARMS and len(results["warm_start"]) == 2
    for arm, runs in results["curves"].items():
        weights = WEIGHTS[arm.split("/")[0]]
        for curves in runs:
            assert len(curves["reward"]) == STEPS
            for step in range(STEPS):  # the objective is the setting's weighted sum of the dimensions
                parts = sum(w * curves[f"reward/{key}"][step] for w, key in zip(weights, KEYS))
                assert curves["reward"][step] == pytest.approx(parts)
        assert "--gd2po.reward_weights" in results["command_lines"][arm]
    for seed in range(2):
        hard, snr = results["curves"]["main/gd2po_hard"][seed], results["curves"]["main/gd2po_snr"][seed]
        assert hard["gd2po/keep_ratio"] == pytest.approx([1 - c for c in hard["gd2po/conflict_ratio"]])
        assert all(k >= 1 - c - 1e-9 for k, c in zip(snr["gd2po/keep_ratio"], snr["gd2po/conflict_ratio"]))
        assert results["curves"]["main/grpo"][seed]["gd2po/keep_ratio"] == [1.0] * STEPS
        # GRPO and GDPO log the hard filter's what-if: the mass it would remove, while keeping every rollout.
        for arm in ("main/grpo", "main/gdpo"):
            curves = results["curves"][arm][seed]
            assert all(0.0 <= value <= 1.0 for value in curves["gd2po/filtered_mass_ratio"])
            assert all(0.0 <= value <= 1.0 for value in curves["gd2po/cancelled_mass_ratio"])
            assert max(curves["gd2po/conflict_ratio"]) > 0 and max(curves["gd2po/filtered_mass_ratio"]) > 0
            assert curves["gd2po/keep_ratio"] == [1.0] * STEPS
        assert results["curves"]["main/gdpo"][seed]["generated_rollouts"] == [16.0] * STEPS
        dynamic = results["curves"]["three/gd2po_snr_ds"][seed]
        assert all(16 <= generated <= 64 for generated in dynamic["generated_rollouts"])
        # brevity as a budget: λ by dual ascent on the mean brevity (floor 1 − 6/8, lr 1, λ_0 = 1), weight +λ
        budget = results["curves"]["brevity/gdpo_budget"][seed]
        lam = 1.0
        for step in range(STEPS):
            lam = min(max(lam + (0.25 - budget["reward/brevity"][step]), 0.0), 10.0)
            assert budget["gd2po/lambda/brevity"][step] == pytest.approx(lam, abs=1e-5)
            assert budget["gd2po/weight/brevity"][step] == pytest.approx(lam, abs=1e-5)


@pytest.mark.subprocess
def test_tensorboard_logs_carry_the_cluster_tags(demo_output):
    out, _ = demo_output
    results = json.loads((out / "results.json").read_text())
    for arm in ARMS:
        events = EventAccumulator(str(out / arm / "seed1"))
        events.Reload()
        tags = set(events.Tags()["scalars"])
        assert {f"train/reward/{key}" for key in KEYS} | {"train/reward", "train/gd2po/conflict_ratio"} <= tags
        logged = [event.value for event in events.Scalars("train/reward/correctness")]
        assert logged == pytest.approx(results["curves"][arm][1]["reward/correctness"])
        if "gd2po_" in arm:  # the plugin's experience maker produced these, as in a cluster run
            assert {"train/gd2po/group_keep_ratio_mean", "train/gd2po/snr_threshold"} <= tags


@pytest.mark.subprocess
def test_one_process_gives_the_same_results_as_two(demo_output, tmp_path):
    out, _ = demo_output
    run_demo(tmp_path, workers=1)
    two, one = (json.loads((folder / "results.json").read_text()) for folder in (out, tmp_path))
    assert one["curves"] == two["curves"] and one["warm_start"] == two["warm_start"]
    assert one["table"] == two["table"]


def test_the_statistics_on_hand_made_curves():
    """Bootstrap CIs over seeds, the paired difference against GDPO, collapse and the headroom line."""
    from gd2po_openrlhf.demo.report import bootstrap_ci, headroom_lines, summarize

    assert bootstrap_ci([0.4, 0.4, 0.4]) == pytest.approx((0.4, 0.4, 0.4))
    mean, low, high = bootstrap_ci([0.0, 1.0, 0.0, 1.0])
    assert mean == 0.5 and 0.0 <= low < 0.5 < high <= 1.0

    def run(correctness, length=1.0, steps=13):
        values = {"reward/correctness": [0.2] * 3 + [correctness] * (steps - 3), "reward/length": [length] * steps}
        values.update({"reward/format": [0.0] * steps, "reward/brevity": [0.0] * steps})
        values["reward"] = [c + length for c in values["reward/correctness"]]  # main: correctness + length
        values.update({"gd2po/conflict_ratio": [0.1] * steps, "gd2po/keep_ratio": [1.0] * steps})
        return {**values, "generated_rollouts": [16.0] * steps, "response_words": [6.0] * steps}

    curves = {"main/gdpo": [run(0.8), run(0.6)], "main/grpo": [run(0.9), run(0.0)]}
    warm = [{f"reward/{key}": 0.5 for key in KEYS}] * 2
    rows = summarize(curves, warm)
    assert [row["arm"] for row in rows] == ["warm start", "gdpo", "grpo"]
    assert rows[0]["final objective"] == pytest.approx((1.0, 1.0, 1.0))  # correctness 0.5 + length 0.5
    grpo = rows[2]
    assert grpo["objective minus gdpo"][0] == pytest.approx(((0.9 - 0.8) + (0.0 - 0.6)) / 2)
    assert grpo["collapsed"] == "1/2" and rows[1]["collapsed"] == "0/2"
    assert grpo["first correctness"][0] == pytest.approx(0.2)
    (line,) = headroom_lines(rows)
    assert "first 3 steps 0.200 → last 10 steps" in line and "NOT met" in line  # final 0.45 < 0.8
