"""Smoke test of the CPU demo (``python -m gd2po_openrlhf.demo``) with a very small budget: the real
command in a subprocess, its table, figure, results file and TensorBoard logs read back."""

import csv
import json
import os
import subprocess
import sys

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

ESTIMATORS = ["grpo", "gdpo", "gd2po_hard", "gd2po_snr", "gdpo_ds", "gd2po_snr_ds", "gdpo_budget", "gd2po_snr_budget"]
STEPS = 3


@pytest.fixture(scope="module")
def demo_output(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    command = [
        sys.executable,
        "-m",
        "gd2po_openrlhf.demo",
        "--seeds",
        "1",
        "--steps",
        str(STEPS),
        "--warm-start-steps",
        "5",
        "--prompts-per-step",
        "4",
        "--micro-batch-size",
        "8",
        "--updates-per-step",
        "2",
        "--output-dir",
        str(out),
    ]
    # GD2PO_DISABLE turns the .pth hook off: the demo must activate the plugin itself.
    env = {**os.environ, "GD2PO_DISABLE": "1"}
    completed = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return out, completed.stdout


@pytest.mark.subprocess
def test_table_lists_every_arm(demo_output):
    out, stdout = demo_output
    with open(out / "summary.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["estimator"] for row in rows] == ESTIMATORS
    for row in rows:
        for key in (
            "final reward/correctness",
            "final reward/format",
            "final reward/brevity",
            "final reward",
            "mean gd2po/conflict_ratio",
        ):
            assert 0.0 <= float(row[key]) <= 3.0
    markdown = (out / "summary.md").read_text()
    assert all(f"| {name} |" in markdown for name in ESTIMATORS)
    assert "| collapsed to `[EOS]` |" in markdown.splitlines()[2] and all(
        row["collapsed"].endswith("/1") for row in rows
    )
    assert "| generated rollouts to target |" in markdown.splitlines()[2]
    assert [row["mean pass rate"] == "" for row in rows] == [not row["estimator"].endswith("_ds") for row in rows]
    assert all(0 < float(row["mean pass rate"]) <= 1 for row in rows if row["estimator"].endswith("_ds"))
    constrained = markdown.split("Length as a budget (at most 4 words on average):")[1]
    assert "| estimator | brevity as | final words | ≤ 4 words |" in constrained
    for name, role in [("gdpo", "reward (weight 1)"), ("gdpo_budget", "budget (+λ)"), ("gd2po_snr_budget", "budget")]:
        assert f"| {name} | {role}" in constrained
    assert "| grpo |" not in constrained
    budgeted = {row["estimator"]: row for row in rows if row["final lambda"]}
    assert set(budgeted) == {"gdpo_budget", "gd2po_snr_budget"}
    assert all(0 <= float(row["final lambda"]) <= 10 for row in budgeted.values())
    assert all(0 <= float(row["final words"]) <= 12 for row in rows)
    assert "| gd2po_snr |" in stdout  # the table is printed too
    assert "--advantage_estimator gd2po --gd2po.filter snr" in stdout  # the equivalent cluster command


@pytest.mark.subprocess
def test_figure_is_a_png(demo_output):
    out, _ = demo_output
    data = (out / "curves.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


@pytest.mark.subprocess
def test_results_file_records_versions_seeds_settings_and_curves(demo_output):
    out, _ = demo_output
    results = json.loads((out / "results.json").read_text())
    assert results["seeds"] == [0]
    assert results["settings"]["steps"] == STEPS and results["settings"]["prompts_per_step"] == 4
    for package in ("openrlhf", "torch", "transformers", "gd2po-openrlhf", "python"):
        assert results["versions"][package] not in ("", "not installed")
    assert set(results["curves"]) == set(ESTIMATORS)
    for name in ESTIMATORS:
        (curves,) = results["curves"][name]
        assert len(curves["reward"]) == STEPS
        # the total is the sum of the three dimensions, step by step
        for step in range(STEPS):
            parts = sum(curves[f"reward/{key}"][step] for key in ("correctness", "format", "brevity"))
            assert curves["reward"][step] == pytest.approx(parts)
    # which rollouts each estimator trained on: hard drops exactly the conflicting ones, snr at most those
    hard, snr = results["curves"]["gd2po_hard"][0], results["curves"]["gd2po_snr"][0]
    assert hard["gd2po/keep_ratio"] == pytest.approx([1 - c for c in hard["gd2po/conflict_ratio"]])
    assert all(
        keep >= 1 - conflict - 1e-9 for keep, conflict in zip(snr["gd2po/keep_ratio"], snr["gd2po/conflict_ratio"])
    )
    assert results["curves"]["grpo"][0]["gd2po/keep_ratio"] == [1.0] * STEPS
    assert results["curves"]["gdpo"][0]["gd2po/keep_ratio"] == [1.0] * STEPS
    assert "--gd2po.filter" in results["command_lines"]["gd2po_snr"]
    # Without dynamic sampling every step generates its 4 prompts × 4 rollouts; with it, at least that many when
    # groups were rejected and replaced (at most 4 × 4 prompts), fewer only if it hit the limit.
    for name in ("grpo", "gdpo", "gd2po_hard", "gd2po_snr"):
        assert results["curves"][name][0]["generated_rollouts"] == [16.0] * STEPS
    # The budgeted arms: λ by dual ascent on the mean brevity (floor 1 − 4/12, lr 1, λ_0 = 1), step by step, and
    # brevity's weight is +λ; words are read back from brevity (1 − words/12).
    for name in ("gdpo_budget", "gd2po_snr_budget"):
        (curves,) = results["curves"][name]
        lam, floor = 1.0, 1 - 4 / 12
        for step in range(STEPS):
            lam = min(max(lam + (floor - curves["reward/brevity"][step]), 0.0), 10.0)
            assert curves["gd2po/lambda/brevity"][step] == pytest.approx(lam, abs=1e-5)
            assert curves["gd2po/weight/brevity"][step] == pytest.approx(lam, abs=1e-5)
            assert curves["response_words"][step] == pytest.approx(12 * (1 - curves["reward/brevity"][step]))
        assert "--cost.budget" in results["command_lines"][name]
    for name in ("gdpo_ds", "gd2po_snr_ds"):
        (curves,) = results["curves"][name]
        assert "--gd2po.dynamic_sampling" in results["command_lines"][name]
        assert all(16 <= generated <= 64 for generated in curves["generated_rollouts"])
        assert len(curves["gd2po/dynamic_sampling/pass_rate"]) == STEPS


@pytest.mark.subprocess
def test_tensorboard_logs_carry_the_cluster_tags(demo_output):
    out, _ = demo_output
    results = json.loads((out / "results.json").read_text())
    for name in ESTIMATORS:
        events = EventAccumulator(str(out / name / "seed0"))
        events.Reload()
        tags = set(events.Tags()["scalars"])
        assert {
            "train/reward",
            "train/reward/correctness",
            "train/reward/format",
            "train/reward/brevity",
            "train/gd2po/conflict_ratio",
            "train/gd2po/keep_ratio",
            "train/advantage_abs_mean",
        } <= tags
        logged = [event.value for event in events.Scalars("train/reward")]
        assert [event.step for event in events.Scalars("train/reward")] == list(range(1, STEPS + 1))
        assert logged == pytest.approx(results["curves"][name][0]["reward"])
        if name.endswith("_ds"):
            assert {"train/gd2po/dynamic_sampling/pass_rate", "train/generated_rollouts"} <= tags
        if name.endswith("_budget"):
            assert {"train/gd2po/lambda/brevity", "train/gd2po/constraint_violation/brevity"} <= tags
        if name.startswith("gd2po"):
            # the plugin's experience maker produced these, as in a cluster run
            assert {
                "train/gd2po/dropped_ratio",
                "train/gd2po/group_keep_ratio_mean",
                "train/gd2po/snr_threshold",
            } <= tags


def test_a_seed_counts_as_collapsed_when_its_last_steps_are_the_empty_answer():
    """Hand-made curves: the empty answer scores brevity 1 and correctness 0; a healthy seed does not."""
    from gd2po_openrlhf.demo.report import summarize

    def run(correctness, brevity):
        steps = 8
        return {
            "reward/correctness": [correctness] * steps,
            "reward/format": [0.0] * steps,
            "reward/brevity": [brevity] * steps,
            "reward": [correctness + brevity] * steps,
            "advantage_abs_mean": [0.1] * steps,
            "gd2po/conflict_ratio": [0.0] * steps,
            "gd2po/keep_ratio": [1.0] * steps,
            "response_words": [12 * (1 - brevity)] * steps,
        }

    (row,) = summarize({"gd2po_snr": [run(0.0, 1.0), run(0.9, 0.75), run(0.02, 1.0)]}, target=2.3, word_budget=2)
    assert row["collapsed"] == "1/3"  # the third has some correctness left: not counted
    assert row["budget met"] == "2/3" and row["final words"] == pytest.approx(1.0)  # 0, 3 and 0 words; budget 2
