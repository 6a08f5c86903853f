"""OpenRLHF's own launcher with the plugin's argparse extension (integration/argparse_patch.py): --help, dry
runs and parse-time validation, in subprocesses of the venv (the .pth hook is what activates the plugin there)."""

import os
import pathlib
import subprocess
import sys

import pytest
from gd2po_testing import VALID_GD2PO, launcher_subprocess, openrlhf_strategy


@pytest.mark.subprocess
def test_help_lists_estimators_and_flags():
    result = launcher_subprocess(["--help"])
    assert result.returncode == 0, result.stderr
    assert (
        "--advantage_estimator {gae,reinforce,rloo,reinforce_baseline,group_norm,dr_grpo,flash_reinforce,gd2po,gdpo}"
        in result.stdout
    )
    for flag in (
        "--gd2po.filter {none,hard,snr}",
        "--gd2po.snr_threshold TAU",
        "--gd2po.snr_eps EPS",
        "--gd2po.reward_keys KEY [KEY ...]",
        "--gd2po.reward_weights W [W ...]",
        "--gd2po.no_reweight_queries, --gd2po.no_reweight",
        "--gd2po.no_whiten",
        "--gd2po.dry_run",
        "--gd2po.on_bad_reward {error,drop_group}",
        "--gd2po.resume_with_flags",
        "--cost.model_name_or_path PATH",
        "--cost.num_nodes N",
        "--cost.num_gpus_per_node N",
        "--cost.offload",
    ):
        assert flag in result.stdout, flag


@pytest.mark.subprocess
def test_on_bad_reward_choices(reward_file):
    flags = [
        "--advantage_estimator",
        "gd2po",
        "--reward.remote_url",
        reward_file,
        "--gd2po.reward_keys",
        "a",
        "--rollout.n_samples_per_prompt",
        "4",
    ]
    dropping = launcher_subprocess(flags + ["--gd2po.on_bad_reward", "drop_group"], env={"GD2PO_DRY_RUN": "1"})
    assert dropping.returncode == 0 and "on bad reward     drop_group" in dropping.stdout
    refused = launcher_subprocess(flags + ["--gd2po.on_bad_reward", "skip"], env={"GD2PO_DRY_RUN": "1"})
    assert refused.returncode == 2 and "argument --gd2po.on_bad_reward: invalid choice: 'skip'" in refused.stderr


@pytest.mark.subprocess
def test_dry_run_reward_file(reward_file):
    result = launcher_subprocess(
        [
            "--advantage_estimator",
            "gd2po",
            "--gd2po.filter",
            "snr",
            "--reward.remote_url",
            reward_file,
            "--gd2po.reward_keys",
            "correctness",
            "format",
            "length",
            "--rollout.n_samples_per_prompt",
            "4",
        ],
        env={"GD2PO_DRY_RUN": "1"},
    )
    assert result.returncode == 0, result.stderr
    assert "filter            snr (τ = 0.8, ε = 1e-08)" in result.stdout
    assert "on bad reward     error" in result.stdout
    assert "dynamic sampling  off" in result.stdout
    for key in ("correctness", "format", "length"):
        assert f"reward/{key}" in result.stdout
    assert result.stdout.count(f"reward_function  {reward_file}  weight +1") == 3
    assert "exiting before Ray starts" in result.stdout


@pytest.mark.subprocess
def test_dry_run_prints_the_dynamic_sampling_predicate(reward_file):
    result = launcher_subprocess(
        VALID_GD2PO
        + [
            "--reward.remote_url",
            reward_file,
            "--gd2po.dynamic_sampling",
            "--gd2po.dynamic_sampling_min_kept",
            "2",
            "--gd2po.dynamic_sampling_max_prompts_factor",
            "3",
        ],
        env={"GD2PO_DRY_RUN": "1"},
    )
    assert result.returncode == 0, result.stderr
    assert (
        "dynamic sampling  a prompt group trains when at least 2 of its 4 rollouts survive the filter with a non-zero "
        "score (|κ Σ_k w_k A_k|·L > 1e-8); a rejected group is replaced by a fresh prompt, at most 3 × the batch's "
        "prompts drawn per batch"
    ) in result.stdout


@pytest.mark.subprocess
def test_dry_run_reward_and_cost_model_with_explicit_entry_point():
    result = launcher_subprocess(
        [
            "--algo.advantage.estimator",
            "gd2po",
            "--gd2po.dry_run",
            "--reward.model_name_or_path",
            "org/helpful-rm",
            "--cost.model_name_or_path",
            "org/beaver-cost",
            "--cost.num_gpus_per_node",
            "2",
            "--gd2po.reward_weights",
            "1",
            "-1",
            "--rollout.n_samples_per_prompt",
            "4",
            "--gd2po.snr_eps",
            "1e-6",
        ],
        launcher=[sys.executable, "-m", "gd2po_openrlhf.train_ppo_ray"],
    )
    assert result.returncode == 0, result.stderr
    assert "reward/reward_model         reward_model     org/helpful-rm on 1x8 GPUs  weight +1" in result.stdout
    assert "reward/cost                 cost_model       org/beaver-cost on 1x2 GPUs  weight -1" in result.stdout


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--rollout.n_samples_per_prompt", "1"], "set --rollout.n_samples_per_prompt >= 2 (got 1)"),
        (
            ["--gd2po.reward_weights", "1", "2"],
            "--gd2po.reward_weights has 2 values [1.0, 2.0] for 1 reward keys ['correctness']",
        ),
        (["--gd2po.snr_threshold", "1.5"], "must lie in [0, 1], got 1.5"),
        (["--critic.model_name_or_path", "org/critic"], "has no critic: drop --critic.model_name_or_path"),
        (["--cost.offload"], "--cost.offload only acts with --cost.model_name_or_path; with no cost model it would"),
        (
            ["--reward.overlong_buffer_len", "64"],
            "--reward.overlong_buffer_len shapes OpenRLHF's single summed reward",
        ),
        (
            [
                "--reward.remote_url",
                "",
                "--reward.model_name_or_path",
                "org/rm",
                "--gd2po.reward_keys",
                "reward_model",
            ],
            "--reward.remote_url '' has an empty entry",
        ),
        (["--reward.remote_url", "http://127.0.0.1:5000/get_reward,"], "has an empty entry"),
        (
            ["--gd2po.dynamic_sampling", "--algo.dynamic_filtering_enable"],
            "--gd2po.dynamic_sampling and --algo.dynamic_filtering_enable both resample prompt groups: use one",
        ),
        (
            [
                "--gd2po.dynamic_sampling",
                "--reward.model_name_or_path",
                "org/rm",
                "--gd2po.reward_keys",
                "correctness",
                "reward_model",
            ],
            "reward key 'reward_model' comes from the reward model org/rm",
        ),
        (
            ["--gd2po.dynamic_sampling", "--gd2po.dynamic_sampling_min_kept", "5"],
            "--gd2po.dynamic_sampling_min_kept must be an integer in [1, --rollout.n_samples_per_prompt = 4], got 5",
        ),
        (
            ["--gd2po.dynamic_sampling", "--gd2po.dynamic_sampling_max_prompts_factor", "0.5"],
            "--gd2po.dynamic_sampling_max_prompts_factor must be a finite number >= 1",
        ),
        (
            ["--gd2po.dynamic_sampling", "--gd2po.dynamic_sampling_max_prompts_factor", "inf"],
            "--gd2po.dynamic_sampling_max_prompts_factor must be a finite number >= 1",
        ),
    ],
)
def test_parse_time_errors(reward_file, argv, message, capsys):
    # In-process run of the real launcher module (as `python -m` runs it): argparse exits with status 2.
    base = [
        "--advantage_estimator",
        "gd2po",
        "--reward.remote_url",
        reward_file,
        "--gd2po.reward_keys",
        "correctness",
        "--rollout.n_samples_per_prompt",
        "4",
        "--gd2po.dry_run",
    ]
    with pytest.raises(SystemExit) as exit_info:
        openrlhf_strategy(base + argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.subprocess
def test_example_launcher_dry_run():
    script = pathlib.Path(__file__).resolve().parents[1] / "examples" / "scripts" / "train_gd2po_reward_file.sh"
    env = {**os.environ, "GD2PO_DRY_RUN": "1", "PATH": f"{pathlib.Path(sys.executable).parent}:{os.environ['PATH']}"}
    result = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    for key in ("correctness", "format", "brevity"):
        assert f"reward/{key}" in result.stdout and "multi_reward_template.py" in result.stdout
    assert "filter            snr (τ = 0.8, ε = 1e-08)" in result.stdout and "KL                no KL" in result.stdout


@pytest.mark.subprocess
@pytest.mark.parametrize(
    "extra, returncode, message",
    [
        (
            ["--snr_treshold", "0.5", "--totally_bogus"],
            2,
            "unrecognized arguments: --snr_treshold 0.5 --totally_bogus",
        ),
        (["--train.partial_rollout_enable"], 1, "--train.partial_rollout_enable requires --train.async_enable"),
    ],
)
def test_the_dry_run_is_the_real_parse_with_openrlhfs_own_checks(reward_file, extra, returncode, message):
    """A dry run stops where Ray would start, after OpenRLHF's parse_args (unknown arguments) and its assertions."""
    result = launcher_subprocess(
        VALID_GD2PO + ["--reward.remote_url", reward_file] + extra, env={"GD2PO_DRY_RUN": "1"}
    )
    assert result.returncode == returncode and message in result.stderr
    assert "exiting before Ray starts" not in result.stdout


@pytest.mark.subprocess
def test_a_stock_estimator_dry_run_runs_openrlhfs_checks_too(reward_file):
    result = launcher_subprocess(
        [
            "--algo.advantage.estimator",
            "group_norm",
            "--reward.remote_url",
            reward_file,
            "--rollout.n_samples_per_prompt",
            "1",
        ],
        env={"GD2PO_DRY_RUN": "1"},
    )
    assert result.returncode == 1 and "group_norm requires n_samples_per_prompt > 1" in result.stderr


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            [
                "--algo.advantage.estimator",
                "group_norm",
                "--gd2po.snr_threshold",
                "0.5",
                "--cost.model_name_or_path",
                "org/cm",
            ],
            "--gd2po.snr_threshold, --cost.model_name_or_path only act with --advantage_estimator gd2po or gdpo; "
            "with OpenRLHF's group_norm",
        ),
        (
            ["--algo.advantage.estimator", "group_norm", "--gd2po.reward_keys", "correctness"],
            "--gd2po.reward_keys only acts with",
        ),
        (
            ["--algo.advantage.estimator", "group_norm", "--gd2po.config=configs/tool_calling.yaml"],
            "--gd2po.config only acts with",
        ),
        (
            VALID_GD2PO + ["--algo.advantage.estimator", "group_norm"],
            "the estimator is given twice: --advantage_estimator gd2po, --algo.advantage.estimator group_norm",
        ),
        (
            VALID_GD2PO + ["--gd2po.dynamic_sampling_min_kept", "2"],
            "--gd2po.dynamic_sampling_min_kept only acts with --gd2po.dynamic_sampling; with dynamic sampling off it "
            "would be ignored: drop it",
        ),
        (
            ["--algo.advantage.estimator", "group_norm", "--gd2po.dynamic_sampling"],
            "--gd2po.dynamic_sampling only acts with --advantage_estimator gd2po or gdpo",
        ),
        (
            VALID_GD2PO + ["--gd2po.filter", "hard", "--gd2po.snr_threshold", "0.5"],
            "--gd2po.snr_threshold only acts with the snr filter (or --gd2po.what_if_filter snr); with --gd2po.filter "
            "hard it would be ignored: "
            "drop it",
        ),
        (
            [
                "--advantage_estimator",
                "gdpo",
                "--gd2po.reward_keys",
                "correctness",
                "--rollout.n_samples_per_prompt",
                "4",
                "--gd2po.snr_eps",
                "1e-6",
                "--gd2po.snr_thr",
                "0.5",
            ],
            "--gd2po.snr_eps, --gd2po.snr_thr only act with the snr filter (or --gd2po.what_if_filter snr); with "
            "--advantage_estimator gdpo (no "
            "filter)",
        ),
    ],
)
def test_flags_that_would_be_ignored_are_refused_by_name(reward_file, argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        openrlhf_strategy(argv + ["--reward.remote_url", reward_file])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.subprocess
def test_the_dry_run_flag_is_fine_with_a_stock_estimator(reward_file):
    result = launcher_subprocess(
        [
            "--algo.advantage.estimator",
            "group_norm",
            "--reward.remote_url",
            reward_file,
            "--rollout.n_samples_per_prompt",
            "2",
            "--gd2po.dry_run",
        ]
    )
    assert result.returncode == 0 and "(GD²PO inactive)" in result.stdout


@pytest.mark.subprocess
@pytest.mark.parametrize(
    "name, value, message",
    [
        ("GD2PO_REWARD_ATTEMPTS", "abc", "GD2PO_REWARD_ATTEMPTS='abc' is not a whole number"),
        ("GD2PO_REWARD_BACKOFF_S", "-1", "GD2PO_REWARD_BACKOFF_S='-1' must be a positive number"),
    ],
)
def test_the_reward_clients_settings_are_checked_by_the_launcher_and_its_dry_run(name, value, message):
    """The rollout actors read them, where a bad value would surface only at the first reward of a real run."""
    argv = VALID_GD2PO + ["--reward.remote_url", "http://127.0.0.1:5000/get_reward"]
    result = launcher_subprocess(argv, env={"GD2PO_DRY_RUN": "1", name: value})
    assert (
        result.returncode == 2 and message in result.stderr and "reward client in the rollout actors" in result.stderr
    )
    group_norm = launcher_subprocess(
        [
            "--algo.advantage.estimator",
            "group_norm",
            "--reward.remote_url",
            "http://127.0.0.1:5000/get_reward",
            "--rollout.n_samples_per_prompt",
            "2",
        ],
        env={"GD2PO_DRY_RUN": "1", name: value},
    )
    assert group_norm.returncode == 2 and message in group_norm.stderr  # the client serves every estimator


@pytest.mark.parametrize(
    "remote_url, message",
    [
        (
            "rules.txt",
            "--reward.remote_url 'rules.txt' is neither a reward file (.py) nor a server URL (http:// or https://)",
        ),
        ("a.py,b.py", "OpenRLHF's rollout actors load one reward file"),
        ("a.py,http://127.0.0.1:5000/get_reward", "combine the reward functions into one file"),
    ],
)
def test_reward_urls_that_openrlhf_would_misread_are_refused(remote_url, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        openrlhf_strategy(VALID_GD2PO + ["--reward.remote_url", remote_url])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


# ---- issue 25: one policy, inputs that are refused, messages that name the flag


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["--advantage_estimator", "gdpo", "--gd2po.no_reweight_queries"],
            "--gd2po.no_reweight_queries only acts with --advantage_estimator gd2po (κ reweighting); with "
            "--advantage_estimator gdpo (no reweighting) it would be ignored: drop it",
        ),
        (
            ["--advantage_estimator", "gdpo", "--gd2po.drop_filtered"],
            "--gd2po.drop_filtered only acts with a conflict filter (--advantage_estimator gd2po with --gd2po.filter "
            "hard or snr); with --advantage_estimator gdpo (no filter) it would be ignored: drop it",
        ),
        (
            ["--advantage_estimator", "gd2po", "--gd2po.filter", "none", "--gd2po.drop_filtered"],
            "with --gd2po.filter none it would be ignored",
        ),
        (
            ["--advantage_estimator", "gd2po", "--cost.lambda_lr", "0.5", "--cost.lambda_max", "3"],
            "--cost.lambda_lr, --cost.lambda_max only act with --cost.budget; with no budget they would be ignored: "
            "drop them",
        ),
        (
            ["--advantage_estimator", "gd2po", "--gd2po.reward_weights", "0"],
            "--gd2po.reward_weights [0.0] gives every reward key ['correctness'] the weight 0: the run would train on "
            "nothing",
        ),
        (
            ["--advantage_estimator", "gd2po", "--gd2po.reward_keys", "correctness,format"],
            "reward key 'correctness,format' must be a non-empty name of letters, digits, '_', '-' and '.'",
        ),
        (
            ["--advantage_estimator", "gd2po", "--gd2po.reward_weights", "1e9"],
            "--gd2po.reward_weights[0] must be a number with |w| <= ",
        ),
    ],
)
def test_one_policy_and_inputs_that_would_train_wrongly_are_refused(reward_file, argv, message, capsys):
    base = ["--gd2po.reward_keys", "correctness", "--rollout.n_samples_per_prompt", "4"]
    with pytest.raises(SystemExit) as exit_info:
        openrlhf_strategy(base + argv + ["--reward.remote_url", reward_file])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert err.count("\n") == 2 and "usage:" not in err, "one line and a pointer to --help, not the usage text"


def test_negative_numbers_in_scientific_notation_are_values(reward_file):
    args = openrlhf_strategy(
        VALID_GD2PO[:2]
        + ["--gd2po.reward_keys", "a", "b", "c", "--gd2po.reward_weights", "1", "1", "-1e-3"]
        + ["--rollout.n_samples_per_prompt", "4", "--reward.remote_url", reward_file]
        + ["--cost.budget", "-5e-1", "--gd2po.constraint_key", "c", "--gd2po.reward_weights", "1", "1", "-1"]
    ).args
    assert args.gd2po.reward_weights == [1.0, 1.0, -1.0] and args.cost.budget == -0.5
    args = openrlhf_strategy(
        VALID_GD2PO[:2]
        + ["--gd2po.reward_keys", "a", "b", "c", "--gd2po.reward_weights", "1", "1", "-1e-3"]
        + ["--rollout.n_samples_per_prompt", "4", "--reward.remote_url", reward_file]
    ).args
    assert args.gd2po.reward_weights == [1.0, 1.0, -1e-3]


def test_the_safe_alignment_preset_without_models_names_what_is_missing(capsys):
    preset = pathlib.Path(__file__).resolve().parents[1] / "configs" / "safe_alignment.yaml"
    with pytest.raises(SystemExit):
        openrlhf_strategy(["--advantage_estimator", "gd2po", "--gd2po.config", str(preset)] + VALID_GD2PO[4:])
    assert (
        "reward key 'helpfulness' is the reward model's dimension (--gd2po.reward_model_key), but no "
        "--reward.model_name_or_path is given" in capsys.readouterr().err
    )


@pytest.mark.parametrize(
    "extra, message",
    [
        (
            ["--data.prompt_dataset", "data/missing/train.jsonl"],
            "--data.prompt_dataset data/missing/train.jsonl does not",
        ),
        (["--data.prompt_dataset", "/nowhere/prompts"], "--data.prompt_dataset /nowhere/prompts does not exist"),
        (["--train.agent_func_path", "missing_agent.py"], "--train.agent_func_path missing_agent.py does not exist"),
    ],
)
def test_the_dry_run_refuses_local_files_that_do_not_exist(reward_file, extra, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        openrlhf_strategy(VALID_GD2PO + ["--reward.remote_url", reward_file, "--gd2po.dry_run"] + extra)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_an_agent_with_a_remote_reward_url_is_refused(reward_file, tmp_path, capsys):
    agent = tmp_path / "agent.py"
    agent.write_text("")
    with pytest.raises(SystemExit):
        openrlhf_strategy(VALID_GD2PO + ["--reward.remote_url", reward_file, "--train.agent_func_path", str(agent)])
    assert "OpenRLHF's agent returns the rewards and the remote URL would be ignored" in capsys.readouterr().err


def test_a_hugging_face_dataset_id_is_not_a_local_path(reward_file):
    args = openrlhf_strategy(
        VALID_GD2PO + ["--reward.remote_url", reward_file, "--data.prompt_dataset", "org/set"]
    ).args
    assert args.data.prompt_dataset == "org/set"


@pytest.mark.subprocess
def test_help_shows_the_defaults():
    result = launcher_subprocess(["--help"])
    for flag_help in (
        "ε of the SNR ratio (authors: 1e-8 tool calling, 1e-6 safe alignment) (default 1e-08)",
        "dimension name of the --reward.model_name_or_path group (default reward_model)",
        "nodes of the cost model group (default 1)",
    ):
        assert flag_help in " ".join(result.stdout.split()), flag_help


@pytest.mark.parametrize("key", ["a\r", "a\u00a0b", "a\u2028", "a=b", "a>=1", "e\u0301", ""])
def test_reward_keys_outside_the_documented_character_set_are_refused(reward_file, key, capsys):
    argv = ["--advantage_estimator", "gd2po", "--reward.remote_url", reward_file, "--gd2po.reward_keys", key]
    with pytest.raises(SystemExit) as exit_info:
        openrlhf_strategy(argv + ["--rollout.n_samples_per_prompt", "4"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"reward key {key!r} must be a non-empty name of letters, digits, '_', '-' and '.'" in err
    assert ("(write it in NFC form, '\u00e9')" in err) == (key == "e\u0301")


def test_reward_keys_of_any_script_in_nfc_are_accepted(reward_file):
    argv = [
        "--advantage_estimator",
        "gd2po",
        "--reward.remote_url",
        reward_file,
        "--rollout.n_samples_per_prompt",
        "4",
    ]
    strategy = openrlhf_strategy(argv + ["--gd2po.reward_keys", "\u00e9l\u00e9gance", "корректность", "len.v-2"])
    assert strategy.args.gd2po.reward_keys == ["\u00e9l\u00e9gance", "корректность", "len.v-2"]


@pytest.mark.subprocess
@pytest.mark.parametrize(
    "typo, message",
    [
        (["--gd2po.snr_treshold", "0.3"], "unknown flag --gd2po.snr_treshold: did you mean --gd2po.snr_threshold?"),
        (["--gdpo.filter", "hard"], "unknown flag --gdpo.filter: did you mean --gd2po.filter?"),
        (
            ["--gd2po.filter", "sn"],
            "argument --gd2po.filter: invalid choice: 'sn' (choose from 'none', 'hard', 'snr')",
        ),
        (["--cost.budget", "low"], "argument --cost.budget: invalid float value: 'low'"),
    ],
)
def test_a_mistyped_plugin_flag_is_refused_in_two_lines_with_the_nearest_flag(reward_file, typo, message):
    result = launcher_subprocess(VALID_GD2PO + ["--reward.remote_url", reward_file] + typo, env={"GD2PO_DRY_RUN": "1"})
    lines = [line for line in result.stderr.splitlines() if "real_accelerator" not in line]
    assert result.returncode == 2
    assert lines == [f"train_ppo_ray.py: error: {message}", "train_ppo_ray.py: --help lists every flag"]


@pytest.mark.subprocess
def test_a_mistyped_openrlhf_flag_keeps_openrlhfs_message(reward_file):
    result = launcher_subprocess(
        VALID_GD2PO + ["--reward.remote_url", reward_file, "--actor.learning_rat", "1e-6"], env={"GD2PO_DRY_RUN": "1"}
    )
    assert result.returncode == 2 and "unrecognized arguments: --actor.learning_rat 1e-6" in result.stderr


# ---- issue 37: the reward server's bearer token


@pytest.mark.subprocess
def test_the_reward_token_file_reaches_the_dry_runs_reward_check_with_any_estimator(tmp_path):
    """A server that needs a token: the dry run's reward check is refused a 401 without --gd2po.reward_auth_token_file
    and scores with it; with OpenRLHF's own estimator the flag is accepted (the plugin's client serves every
    estimator)."""
    from gd2po_openrlhf.serving.protocol import ServerLimits
    from gd2po_openrlhf.serving.server import RewardServer

    server = RewardServer(
        lambda queries, prompts, labels: {"rewards": {"correctness": [1.0] * len(queries)}},
        "rules.py",
        ServerLimits(auth_token="tok-123"),
    ).start_in_thread()
    token_file = tmp_path / "token"
    token_file.write_text("tok-123\n")
    dataset = tmp_path / "prompts.jsonl"
    dataset.write_text('{"input": "2+2?", "label": "4"}\n')
    try:
        argv = VALID_GD2PO + ["--reward.remote_url", server.url, "--data.prompt_dataset", str(dataset)]
        argv += ["--data.label_key", "label"]
        refused = launcher_subprocess(argv, env={"GD2PO_DRY_RUN": "1"})
        assert refused.returncode == 2 and "HTTP 401" in refused.stderr and "bearer token" in refused.stderr
        checked = launcher_subprocess(
            argv + ["--gd2po.reward_auth_token_file", str(token_file)], env={"GD2PO_DRY_RUN": "1"}
        )
        assert checked.returncode == 0, checked.stderr
        assert f"reward check      reward server {server.url} on the first 1 rows" in checked.stdout
        stock = launcher_subprocess(
            [
                "--algo.advantage.estimator",
                "group_norm",
                "--reward.remote_url",
                server.url,
                "--rollout.n_samples_per_prompt",
                "2",
                "--gd2po.reward_auth_token_file",
                str(token_file),
            ],
            env={"GD2PO_DRY_RUN": "1"},
        )
        assert stock.returncode == 0 and "(GD²PO inactive)" in stock.stdout, stock.stderr
    finally:
        server.stop_thread()
    assert server.served_requests >= 1


@pytest.mark.parametrize(
    "remote_url, token_text, message",
    [
        ("http://127.0.0.1:5000/get_reward", "two words\n", "the token may hold letters, digits and -._~+/= only"),
        ("http://127.0.0.1:5000/get_reward", "\n", "expected a token of 1 to 4096 characters, got 0"),
        ("REWARD_FILE", "tok", "--gd2po.reward_auth_token_file only acts with an http(s) --reward.remote_url"),
    ],
)
def test_a_bad_reward_token_file_is_refused_naming_it(
    reward_file, tmp_path, remote_url, token_text, message, capsys, monkeypatch
):
    monkeypatch.delenv("GD2PO_REWARD_AUTH_TOKEN_FILE", raising=False)  # restored whatever the launcher does
    token_file = tmp_path / "token"
    token_file.write_text(token_text)
    remote_url = reward_file if remote_url == "REWARD_FILE" else remote_url
    argv = VALID_GD2PO + ["--reward.remote_url", remote_url, "--gd2po.reward_auth_token_file", str(token_file)]
    with pytest.raises(SystemExit) as exit_info:
        openrlhf_strategy(argv + ["--gd2po.dry_run"])
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in error
    if "token may" in message or "characters" in message:
        assert f"--gd2po.reward_auth_token_file: token file {token_file}" in error
    assert "GD2PO_REWARD_AUTH_TOKEN_FILE" not in os.environ, "a refused token file is not exported"


def test_the_token_files_path_rides_in_the_ray_jobs_runtime_env(tmp_path, monkeypatch):
    """The rollout actors run where the driver's environment does not reach (nodes of `ray start`, other hosts):
    the launcher adds the path (never the token) to the runtime_env OpenRLHF's train() gives ray.init."""
    import ray

    received = []
    monkeypatch.setattr(ray, "init", lambda *args, **kwargs: received.append(kwargs))
    monkeypatch.setenv("GD2PO_REWARD_AUTH_TOKEN_FILE", "")  # restored after the test: the launcher sets it
    token_file = tmp_path / "token"
    token_file.write_text("tok-123\n")
    argv = VALID_GD2PO + ["--reward.remote_url", "http://127.0.0.1:5000/get_reward"]
    openrlhf_strategy(argv + ["--gd2po.reward_auth_token_file", str(token_file)])
    ray.init(runtime_env={"env_vars": {"NCCL_DEBUG": "WARN"}})
    assert received == [
        {"runtime_env": {"env_vars": {"NCCL_DEBUG": "WARN", "GD2PO_REWARD_AUTH_TOKEN_FILE": str(token_file)}}}
    ]
    assert os.environ["GD2PO_REWARD_AUTH_TOKEN_FILE"] == str(token_file)


# ---- issue 40: --gd2po.reference_key


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--gd2po.reward_weights", "1", "0", "--gd2po.reference_key", "gold"], None),
        (
            ["--gd2po.reward_weights", "1", "1", "--gd2po.reference_key", "gold"],
            "--gd2po.reference_key 'gold' has the weight 1: a reference is logged, never trained",
        ),
        (
            ["--gd2po.reward_weights", "1", "0", "--gd2po.reference_key", "golden"],
            "--gd2po.reference_key 'golden' is not one of the reward keys ['correctness', 'gold']",
        ),
        (
            ["--gd2po.reward_weights", "1", "0", "--gd2po.reference_key", "gold"]
            + ["--gd2po.reward_weight_schedule", "gold=0:1:10"],
            "--gd2po.reference_key 'gold' is given a moving weight by --gd2po.reward_weight_schedule",
        ),
    ],
)
def test_the_reference_key_is_a_logged_weight_zero_dimension(reward_file, extra, message, capsys):
    # No --gd2po.dry_run: a dry run that passes replaces ray.init in this process (the tests after would exit).
    argv = VALID_GD2PO[:4] + ["gold", *VALID_GD2PO[4:], "--reward.remote_url", reward_file]
    if message is None:
        from gd2po_openrlhf.integration.dry_run import describe
        from gd2po_openrlhf.integration.settings import resolve_settings

        args = openrlhf_strategy(argv + extra).args
        settings = resolve_settings(args)
        assert settings.reference_key == "gold" and settings.gd2po_config.reference_key == "gold"
        assert "reference         reward/gold (weight 0, logged)" in describe(args, settings)
        return
    with pytest.raises(SystemExit) as exit_info:
        openrlhf_strategy(argv + extra)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize(
    "estimator, extra, message",
    [
        ("gdpo", ["--gd2po.what_if_filter", "snr", "--gd2po.snr_threshold", "0.5"], None),
        (
            "gd2po",
            ["--gd2po.filter", "hard", "--gd2po.what_if_filter", "snr"],
            "--gd2po.what_if_filter only acts with a run without a filter",
        ),
        (
            "gdpo",
            ["--gd2po.what_if_filter", "hard", "--gd2po.snr_threshold", "0.5"],
            "--gd2po.snr_threshold only acts with the snr filter (or --gd2po.what_if_filter snr)",
        ),
    ],
)
def test_a_what_if_filter_is_for_runs_without_a_filter(reward_file, estimator, extra, message, capsys):
    argv = ["--advantage_estimator", estimator, *VALID_GD2PO[2:], "--reward.remote_url", reward_file]
    argv += ["--gd2po.reward_keys", "correctness", "gold"]  # no dry run: it would replace ray.init here
    if message is None:
        from gd2po_openrlhf.integration.dry_run import describe
        from gd2po_openrlhf.integration.settings import resolve_settings

        args = openrlhf_strategy(argv + extra).args
        settings = resolve_settings(args)
        assert settings.gd2po_config.what_if_filter == "snr" and settings.gd2po_config.filter == "none"
        assert "what-if filter    snr (τ = 0.5) (not applied)" in describe(args, settings)
        return
    with pytest.raises(SystemExit) as exit_info:
        openrlhf_strategy(argv + extra)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
