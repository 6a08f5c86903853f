"""The recipe launchers in examples/scripts: bash syntax, then a dry run through OpenRLHF's real argument parsing
and the plugin's validation (GD2PO_DRY_RUN=1 stops right after parsing, before Ray starts)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.subprocess

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "examples" / "scripts"
TOOL_FILE = str(ROOT / "examples" / "rewards" / "tool_calling.py")


# The launchers' default DATA is the converters' output, absent here: the dry run refuses a missing local dataset.
PROMPTS = str(ROOT / "examples" / "data" / "samples" / "smoke_prompts.jsonl")


def dry_run(script, **env):
    environment = {
        **os.environ,
        "GD2PO_DRY_RUN": "1",
        "DATA": PROMPTS,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        **env,
    }
    return subprocess.run(
        ["bash", str(SCRIPTS / script)], capture_output=True, text=True, env=environment, timeout=300
    )


@pytest.mark.parametrize("script", sorted(p.name for p in SCRIPTS.glob("*.sh")))
def test_bash_syntax(script):
    assert subprocess.run(["bash", "-n", str(SCRIPTS / script)], capture_output=True).returncode == 0


@pytest.mark.parametrize(
    "script, expected",
    [
        (
            "train_gd2po_tool_calling.sh",
            ["(--advantage_estimator gd2po)", "filter            snr (τ = 0.8, ε = 1e-08)"],
        ),
        ("train_gd2po_tool_calling_hard.sh", ["(--advantage_estimator gd2po)", "filter            hard\n"]),
        (
            "train_gdpo_tool_calling.sh",
            ["(--advantage_estimator gdpo)", "filter            none\n", "reweight by κ     False"],
        ),
    ],
)
def test_tool_calling_scripts_resolve_three_rule_dimensions(script, expected):
    result = dry_run(script)
    assert result.returncode == 0, result.stderr[-3000:]
    for line in expected + [
        "KL                no KL",
        "group size        4 rollouts per prompt",
        "configs/tool_calling.yaml",
    ]:
        assert line in result.stdout
    # The authors' main setting trains correctness + length; format is scored and logged with weight 0.
    for key, weight in (("correctness", "+1"), ("format", "+0  (logged, not trained)"), ("length", "+1")):
        assert f"reward/{key:<20} reward_function  {TOOL_FILE}  weight {weight}" in result.stdout


def test_tool_calling_rewards_variable_selects_the_trained_dimensions():
    result = dry_run("train_gd2po_tool_calling.sh", REWARDS="correctness format length")
    assert result.returncode == 0, result.stderr[-3000:]
    for key in ("correctness", "format", "length"):
        assert f"reward/{key:<20} reward_function  {TOOL_FILE}  weight +1\n" in result.stdout
    typo = dry_run("train_gd2po_tool_calling.sh", REWARDS="correctness lenght")
    assert typo.returncode == 2 and "REWARDS: unknown dimension 'lenght' (correctness, format, length)" in typo.stderr


def test_tool_calling_grpo_baseline_normalises_the_sum_of_the_trained_dimensions():
    result = dry_run("train_grpo_tool_calling.sh")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "advantage of      the weighted sum Σ_k w_k r_k, normalised within each group (GRPO)" in result.stdout
    assert (
        f"reward/format               reward_function  {TOOL_FILE}  weight +0  (logged, not trained)" in result.stdout
    )


def run_with_python_shim(tmp_path, script, python_code, **env):
    """Run a launcher script with a ``python3`` shim first on PATH that runs ``python_code`` instead of the launcher;
    the code sees the launcher's arguments (after ``-m openrlhf.cli.train_ppo_ray``) as ``sys.argv[3:]``."""
    shim = tmp_path / "python3"
    shim.write_text(f"#!/bin/sh\nexec {sys.executable} -c '{python_code}' \"$@\"\n")
    shim.chmod(0o755)
    environment = {
        **os.environ,
        "DATA": PROMPTS,
        "PATH": f"{tmp_path}:{Path(sys.executable).parent}:{os.environ['PATH']}",
        **env,
    }
    environment.pop("GD2PO_DRY_RUN", None)
    return subprocess.run(
        ["bash", str(SCRIPTS / script)], capture_output=True, text=True, env=environment, timeout=300
    )


def launcher_args(tmp_path, script, expression, **env):
    """``expression`` evaluated on the args OpenRLHF's parser (with the plugin) makes of the script's command line."""
    code = (
        "import sys; from gd2po_openrlhf.integration.launcher_args import parse_launcher_args; "
        f'a = parse_launcher_args(sys.argv[3:]); print("PARSED", {expression})'
    )
    result = run_with_python_shim(tmp_path, script, code, **env)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.split("PARSED ", 1)[1].strip()


def test_the_stock_grpo_baseline_runs_on_openrlhf_without_the_plugin(tmp_path):
    """ESTIMATOR=group_norm with GD2PO_DISABLE=1: OpenRLHF's own launcher, unpatched, parses the script's command line
    and runs its checks up to ray.init (stubbed to stop there)."""
    code = (
        'import runpy, sys, ray; ray.init = lambda *a, **k: (print("REACHED ray.init", "gd2po_openrlhf" in '
        "sys.modules), "
        'sys.exit(0)); sys.argv = ["train_ppo_ray"] + sys.argv[3:]; runpy.run_module("openrlhf.cli.train_ppo_ray", '
        'run_name="__main__")'
    )
    result = run_with_python_shim(
        tmp_path, "train_gd2po_tool_calling.sh", code, ESTIMATOR="group_norm", GD2PO_DISABLE="1"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "REACHED ray.init False" in result.stdout


def test_a_dry_run_with_the_plugin_disabled_is_refused_not_launched():
    result = dry_run("train_gd2po_tool_calling.sh", ESTIMATOR="group_norm", GD2PO_DISABLE="1")
    assert result.returncode == 1
    assert "GD2PO_DRY_RUN is set but GD2PO_DISABLE=1 turns the plugin off" in result.stderr


def test_tool_calling_launcher_uses_the_authors_adamw_settings(tmp_path):
    assert (
        launcher_args(
            tmp_path, "train_gd2po_tool_calling.sh", "a.actor.adam.betas, a.actor.adam.weight_decay, a.actor.adam.lr"
        )
        == "[0.9, 0.999] 0.01 1e-06"
    )


def test_safe_alignment_launcher_reads_the_models_score_head(tmp_path):
    assert launcher_args(tmp_path, "train_gd2po_safe_alignment.sh", "a.ds.value_head_prefix") == "score_head"


@pytest.mark.parametrize(
    "script, cost_weight, expected",
    [
        ("train_gd2po_safe_alignment.sh", "1", "filter            snr (τ = 0.8, ε = 1e-06)"),
        ("train_gd2po_safe_alignment_hard.sh", "-1", "filter            hard\n"),  # a harm cost: subtracted
        ("train_gdpo_safe_alignment.sh", "1", "filter            none\n"),
    ],
)
def test_safe_alignment_scripts_put_reward_and_cost_models_in_their_own_groups(script, cost_weight, expected):
    result = dry_run(script, COST_WEIGHT=cost_weight, COST_GPUS="4")
    assert result.returncode == 0, result.stderr[-3000:]
    assert expected in result.stdout and "KL                no KL" in result.stdout
    assert (
        "reward/helpfulness          reward_model     Artessay/Qwen2.5-7B-SafeRLHF-RM on 1x2 GPUs  weight +1"
        in result.stdout
    )
    assert (
        "reward/cost                 cost_model       Artessay/Qwen2.5-7B-SafeRLHF-CM on 1x4 GPUs  weight "
        f"{float(cost_weight):+g}" in result.stdout
    )
    assert "reward models see their own chat template's rendering of each conversation" in result.stdout


def test_safe_alignment_defaults_are_the_authors_models_added_with_weight_plus_one_and_beaver_is_the_alternative(
    tmp_path,
):
    default = dry_run("train_gd2po_safe_alignment.sh")
    assert default.returncode == 0, default.stderr[-3000:]
    assert (
        "reward/cost                 cost_model       Artessay/Qwen2.5-7B-SafeRLHF-CM on 1x2 GPUs  weight +1"
        in default.stdout
    )
    beaver = dry_run(
        "train_gd2po_safe_alignment.sh",
        REWARD_MODEL="PKU-Alignment/beaver-7b-unified-reward",
        COST_MODEL="PKU-Alignment/beaver-7b-unified-cost",
        COST_WEIGHT="-1",
    )
    assert beaver.returncode == 0, beaver.stderr[-3000:]
    assert (
        "reward/cost                 cost_model       PKU-Alignment/beaver-7b-unified-cost on 1x2 GPUs  weight -1"
        in beaver.stdout
    )


def test_safe_alignment_grpo_baseline_and_a_bad_estimator():
    result = dry_run("train_grpo_safe_alignment.sh")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (
        "(--advantage_estimator gdpo)" in result.stdout
        and "the weighted sum Σ_k w_k r_k, normalised within each group (GRPO)" in result.stdout
    )
    assert (
        "reward/cost                 cost_model" in result.stdout and "weight +1" in result.stdout
    )  # the authors' CM: a safety score
    bad = dry_run("train_gd2po_safe_alignment.sh", ESTIMATOR="ppo")
    assert bad.returncode == 2 and "ESTIMATOR must be gd2po, gdpo or grpo, got 'ppo'" in bad.stderr


def test_a_bad_override_fails_in_parsing_with_the_plugins_message():
    result = dry_run("train_gd2po_tool_calling.sh", TAU="1.5")
    assert result.returncode == 2 and "snr_threshold (τ) must lie in [0, 1], got 1.5" in result.stderr
    missing = dry_run("train_gd2po_tool_calling.sh", REWARD="/nonexistent/rules.py")
    assert (
        missing.returncode == 2
        and "reward file /nonexistent/rules.py (--reward.remote_url, reward key 'correctness') does not exist"
        in missing.stderr
    )


def test_the_one_gpu_smoke_script_dry_runs_with_the_template_rewards():
    """The first-run script for GPU users can only be dry-run here (no GPU): its flags pass OpenRLHF's parser and
    the plugin's validation, with the template's three dimensions from its reward file."""
    result = dry_run("smoke_gd2po_1gpu.sh")
    assert result.returncode == 0, result.stderr[-3000:]
    for key in ("correctness", "format", "brevity"):
        assert (
            f"reward/{key:<20} reward_function  {SCRIPTS}/../rewards/multi_reward_template.py  weight +1"
            in result.stdout
        )
    assert "filter            snr (τ = 0.8, ε = 1e-08)" in result.stdout and "KL                no KL" in result.stdout


@pytest.mark.parametrize(
    "env, expected",
    [
        (
            {},
            "batch mean of reward/cost >= 0: a score (weight +1 given: higher is safer), so the budget is a floor and "
            "the weight is +λ; each step log λ += lr·violation (λ_0 = 1, lr 0.1, clipped to [0, 10])",
        ),
        (
            {
                "COST_MODEL": "PKU-Alignment/beaver-7b-unified-cost",
                "COST_WEIGHT": "-1",
                "BUDGET": "0.5",
                "LAMBDA_LOG_SPACE": "0",
                "ESTIMATOR": "grpo",
            },
            "batch mean of reward/cost <= 0.5: a cost (weight -1 given: higher is more harmful), so the budget is a "
            "ceiling and the weight is -λ; each step λ += lr·violation",
        ),
    ],
)
def test_the_budget_launcher_constrains_the_cost_model_with_either_sign_convention(env, expected):
    result = dry_run("train_gd2po_safe_alignment_budget.sh", **env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert expected in result.stdout
    assert "weight " + ("-" if env.get("COST_WEIGHT") == "-1" else "+") + "λ (budget)" in result.stdout
    if env.get("ESTIMATOR") == "grpo":  # GRPO-Lagrangian: the budget weights the cost before the sum
        assert "the weighted sum Σ_k w_k r_k, normalised within each group (GRPO)" in result.stdout


def test_a_dry_run_refuses_a_local_dataset_that_does_not_exist(tmp_path):
    missing = tmp_path / "data" / "tool_calling" / "train.jsonl"  # not converted yet
    result = dry_run("train_gd2po_tool_calling.sh", DATA=str(missing))
    assert result.returncode == 2 and f"--data.prompt_dataset {missing} does not exist" in result.stderr
    assert result.stderr.count("\n") == 2, "one error line and one line on --help, not OpenRLHF's usage text"
