"""The study (``python -m gd2po_openrlhf.demo.study``, ``make study``): its noisy verifiers and controls on hand-made
inputs, its report on hand-made results, a short configuration of the real command (TensorBoard logs read back),
and docs/study.md against the committed results file."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from gd2po_openrlhf.demo import study, task
from gd2po_openrlhf.demo.training import random_drop_filter

DOCS = Path(__file__).resolve().parent.parent / "docs"
RIGHT = " 3 8 8 <a> 8 </a> [EOS]"  # a correct full answer to "max 3 8 1 :"


def test_noisy_verifiers_flip_a_quarter_of_answers_each_independently_and_reproducibly():
    prompt = "max 3 8 1 :"
    plain = task.reward_func([prompt + RIGHT], [prompt], ["8"])["extra_logs"]
    assert set(plain) == {f"reward/{key}" for key in task.REWARD_KEYS}  # no nonce, no verifiers
    n = 4000
    logs = [task.reward_func([prompt + RIGHT], [prompt], [f"8 {nonce}"])["extra_logs"] for nonce in range(n)]
    assert all(entry["reward/correctness"] == 1.0 for entry in logs)
    verifiers = torch.tensor([[entry[f"reward/{key}"] for key in task.VERIFIER_KEYS] for entry in logs])
    # each verifier right with p = 0.75; two independent ones agree with 0.75² + 0.25² = 0.625 (±4 σ for n = 4000)
    assert verifiers.mean(0).tolist() == pytest.approx([0.75] * 3, abs=4 * (0.75 * 0.25 / n) ** 0.5)
    agree = (verifiers[:, 0] == verifiers[:, 1]).double().mean().item()
    assert agree == pytest.approx(0.625, abs=4 * (0.625 * 0.375 / n) ** 0.5)
    wrong = task.reward_func([prompt + " <a> 3 </a> [EOS]"], [prompt], ["8 7"])["extra_logs"]
    again = task.reward_func([prompt + " <a> 3 </a> [EOS]"], [prompt], ["8 7"])["extra_logs"]
    assert wrong == again and wrong["reward/correctness"] == 0.0
    # a flip turns a wrong answer's 0 into 1, with the same nonce-decided draw as for a right answer's 1 into 0
    for key in task.VERIFIER_KEYS:
        assert wrong[f"reward/{key}"] == 1.0 - logs[7][f"reward/{key}"]


def test_random_drop_keeps_the_filters_count_in_each_group_but_not_its_choice():
    conflict = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0]], dtype=torch.bool).view(-1)
    snr_ratio = torch.tensor([0.9, 0, 0, 0, 0.1, 0.95, 0, 0, 0, 0, 0, 0], dtype=torch.float64)
    keep = random_drop_filter(4, torch.Generator().manual_seed(0))
    dropped_where = torch.zeros(12)
    for _ in range(200):
        hard = keep("hard", conflict, snr_ratio, 0.8).view(3, 4)
        assert hard.sum(1).tolist() == [3, 2, 4]
        dropped_where += (~hard).view(-1).double()
        snr = keep("snr", conflict, snr_ratio, 0.8).view(3, 4)  # snr drops only rollout 4 (|0.1| < 0.8)
        assert snr.sum(1).tolist() == [4, 3, 4]
    assert bool((dropped_where[:8] > 0).all()) and dropped_where[8:].sum() == 0  # anywhere in groups 0 and 1
    first = random_drop_filter(4, torch.Generator().manual_seed(5))("hard", conflict, snr_ratio, 0.8)
    second = random_drop_filter(4, torch.Generator().manual_seed(5))("hard", conflict, snr_ratio, 0.8)
    assert torch.equal(first, second)


def test_rank_correlation_on_hand_worked_ranks():
    assert study.rank_correlation([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert study.rank_correlation([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ρ = 1 − 6 Σd² / (n (n² − 1)) = 1 − 6·2 / 60
    assert study.rank_correlation([0.1, 0.3, 0.2, 0.4], [1, 2, 3, 4]) == pytest.approx(0.8)


def hand_made_results():
    """3 seeds, group size 4, brevity and three; every arm's AUC is GDPO's plus a chosen per-seed shift."""
    gdpo = [1.0, 1.5, 2.0]
    shifts = {
        "gdpo": [0, 0, 0],
        "gd2po_hard": [0.1, 0.2, 0.3],
        "gd2po_snr": [-0.1, 0.1, 0.0],
        "random_drop": [0.3] * 3,
    }
    fields = ["group_size", "setting", "arm", "seed", "seconds", "auc_objective", "last_objective", "auc_correctness"]
    fields += study.DIAGNOSTICS
    runs = []
    for setting in ("brevity", "three"):
        for arm, shift in shifts.items():
            for seed in range(3):
                auc = gdpo[seed] + shift[seed]
                runs.append([4, setting, arm, seed, 1.0, auc, auc + 0.5, 0.5, 0.2, 0.3, 0.1, 0.9, 0.95, None])
    curves = {key: [0.0, 1.0] for key in study.CURVES}
    return {
        "machine": {"commit": "abc1234", "tree": "clean", "cpu": "test CPU", "cores": "2"},
        "versions": {"torch": "t", "openrlhf": "o"},
        "study": {"workers": 2, "steps": 2, "rollouts_per_step": 16, "warm_start_steps": 5},
        "total_seconds": 12.0,
        "fields": fields,
        "runs": runs,
        "mean_curves": {f"g4/{s}/{a}": curves for s in ("brevity", "three") for a in shifts},
    }


def test_report_on_hand_made_results():
    text = study.report(hand_made_results())
    assert "commit `abc1234` (clean), test CPU, 2 cores" in text
    brevity = text.split("### brevity")[1].split("###")[0]
    hard_row = next(line for line in brevity.splitlines() if line.startswith("| GD²PO-hard | 4 |"))
    assert "| +0.200 [+0.100, +0.300] | helps |" in hard_row  # the shifts 0.1, 0.2, 0.3: every resample above 0
    snr_row = next(line for line in brevity.splitlines() if line.startswith("| GD²PO-SNR τ=0.8 | 4 |"))
    assert "| +0.000 [" in snr_row and "| ties |" in snr_row
    assert "| GDPO (AUC, correctness) | 4 | 1.500 | — | — | 0.500 |" in brevity
    assert "| GD²PO-hard | +0.200 ▲ | +0.200 ▲ |" in text  # the grid: brevity G=4, three G=4
    assert "| GD²PO-hard | 2 | 0 | 0 |" in text  # helps in 2 cells, ties in 0, hurts in 0
    # hard − random drop: 0.1 − 0.3, 0.2 − 0.3, 0.3 − 0.3
    assert "| three G=4 | -0.100 [-0.200, +0.000] |" in text
    assert "H1, GD²PO-hard does not beat GDPO in `brevity`: G=4 +0.200 [+0.100, +0.300]: **rejected**" in text
    assert "H2, GD²PO-hard does not beat the random drop in `three`" in text and "**holds**" in text
    assert "H3" not in text  # no noisy setting in these results


def run_study_command(out: Path, *extra: str):
    command = [sys.executable, "-m", "gd2po_openrlhf.demo.study", "--seeds", "2", "--steps", "3"]
    command += ["--warm-start-steps", "5", "--rollouts-per-step", "16", "--micro-batch-size", "8"]
    command += ["--output-dir", str(out / "runs"), "--docs", str(out / "docs"), *extra]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return completed.stdout


def scalars(log_dir: Path, tag: str):
    events = EventAccumulator(str(log_dir))
    events.Reload()
    return [event.value for event in events.Scalars(f"train/gd2po/{tag}")]


@pytest.mark.subprocess
def test_a_short_study_runs_every_arm_and_writes_the_page(tmp_path):
    stdout = run_study_command(tmp_path, "--settings", "three", "noisy")
    assert "2 warm starts, then 64 runs of 3 steps in 2 process(es)" in stdout and "[study] 64/64 runs" in stdout
    results = json.loads((tmp_path / "runs" / "results.json").read_text())
    assert results == json.loads((tmp_path / "docs" / "study-results.json").read_text())
    cells = {(row[0], row[1], row[2]) for row in results["runs"]}
    assert cells == {(g, s, a) for g in (4, 8) for s in ("three", "noisy") for a in study.ARMS}
    assert results["machine"]["cores"] and results["machine"]["commit"]
    page = (tmp_path / "docs" / "study.md").read_text()
    assert page.count(study.BEGIN) == 1 and "### three: correctness + format + length" in page
    assert "### noisy: verifier_1 + verifier_2 + verifier_3 (`--gd2po.reference_key correctness`)" in page
    for image in ("study_delta_auc.png", "study_curves.png"):
        assert (tmp_path / "docs" / "img" / image).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    logs = tmp_path / "runs"
    differs_at_step_one = False
    for size in (4, 8):
        for seed in (0, 1):
            run = logs / f"g{size}" / "three"
            hard, drop = run / "gd2po_hard" / f"seed{seed}", run / "random_drop" / f"seed{seed}"
            for log in (hard, drop):  # both drop exactly as many rollouts as conflict
                kept, conflict = scalars(log, "keep_ratio"), scalars(log, "conflict_ratio")
                assert kept == pytest.approx([1 - c for c in conflict])
            # step 1: the same batch, the same count, other rollouts (unless chance picks the conflicting ones)
            assert scalars(drop, "conflict_ratio")[0] == scalars(hard, "conflict_ratio")[0]
            differs_at_step_one |= scalars(drop, "filtered_mass_ratio")[0] != scalars(hard, "filtered_mass_ratio")[0]
            assert scalars(run / "no_kappa" / f"seed{seed}", "kappa_mass_ratio") == [1.0] * 3
            noisy = logs / f"g{size}" / "noisy" / "gdpo" / f"seed{seed}"
            assert all(0 <= value <= 1 for value in scalars(noisy, "conflict_reference_agreement"))
            assert max(scalars(noisy, "conflict_ratio")) > 0  # three noisy verifiers of one truth disagree
    assert differs_at_step_one

    # Redrawn from the results file: the same page, and text written outside the markers stays.
    (tmp_path / "docs" / "study.md").write_text("# Mine\n\nmy reading\n" + page[page.index(study.BEGIN) :])
    redrawn = subprocess.run(
        [sys.executable, "-m", "gd2po_openrlhf.demo.study", "--from-results", str(tmp_path / "runs" / "results.json")]
        + ["--docs", str(tmp_path / "docs")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert redrawn.returncode == 0, redrawn.stderr[-3000:]
    assert (tmp_path / "docs" / "study.md").read_text() == "# Mine\n\nmy reading\n" + page[page.index(study.BEGIN) :]


def test_the_numbers_in_docs_study_md_are_the_committed_results():
    """The generated part of docs/study.md is the report of docs/study-results.json; and, recomputed here without the
    report's code, every ΔAUC mean in the per-setting tables is the mean paired difference of the committed runs."""
    results = json.loads((DOCS / "study-results.json").read_text())
    page = (DOCS / "study.md").read_text()
    generated = page.split(study.BEGIN)[1].split(study.END)[0].strip()
    assert generated == study.report(results)
    fields = results["fields"]
    auc = {}
    for row in results["runs"]:
        values = dict(zip(fields, row))
        auc[values["group_size"], values["setting"], values["arm"], values["seed"]] = values["auc_objective"]
    seeds = sorted({key[3] for key in auc})
    assert len(seeds) >= 10
    names = {name: arm for arm, name in study.ARM_NAMES.items()}
    checked = 0
    for section in generated.split("\n### ")[1:]:
        setting = section.split(":")[0]
        for line in section.splitlines():
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            if len(cells) != 6 or cells[0] not in names or cells[0] == "GDPO" or not cells[1].isdigit():
                continue
            size, arm = int(cells[1]), names[cells[0]]
            differences = [auc[size, setting, arm, seed] - auc[size, setting, "gdpo", seed] for seed in seeds]
            assert float(cells[2].split(" [")[0]) == pytest.approx(sum(differences) / len(differences), abs=5e-4)
            checked += 1
    assert checked == 5 * 2 * 7  # settings × group sizes × arms against GDPO


def test_the_reading_quotes_only_numbers_from_the_generated_tables():
    """Every signed number the hand-written text of docs/study.md quotes (a Δ, a CI bound, a correlation) is in the
    generated part, so that a rerun that changes the tables cannot leave the reading quoting old numbers."""
    page = (DOCS / "study.md").read_text()
    before, rest = page.split(study.BEGIN)
    generated, after = rest.split(study.END)
    quoted = re.findall(r"[-+−]\d+\.\d{2,3}\b", (before + after).replace("−", "-"))
    assert len(quoted) >= 10
    missing = [number for number in quoted if number not in generated]
    assert not missing, f"docs/study.md's reading quotes {missing}, which the generated tables do not hold"


def test_docs_demo_md_has_no_hand_copied_results():
    """docs/demo.md describes the demo and points to the study for numbers: no CI, no table of results."""
    demo = (DOCS / "demo.md").read_text()
    assert not re.search(r"\d\.\d{3} \[[-+]?\d\.\d{3}, [-+]?\d\.\d{3}\]", demo)
    assert "(study.md)" in demo
