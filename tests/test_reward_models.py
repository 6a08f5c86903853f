"""--gd2po.reward_model KEY=PATH[,OPTION=VALUE...]: any number of model-scored reward keys, each its own Ray actor
group. The entry's syntax, the refusals through OpenRLHF's real parser, the settings and dry run, resume, and a
reward file that returns a model group's key. The groups on a real local Ray cluster: test_ray_integration.py;
through the launcher: e2e scenario h."""

import pytest
from gd2po_testing import openrlhf_strategy

from gd2po_openrlhf.integration.dry_run import describe
from gd2po_openrlhf.integration.launcher_args import parse_launcher_args
from gd2po_openrlhf.integration.resume import checkpoint_settings, restore_checkpoint_settings
from gd2po_openrlhf.integration.settings import ModelGroup, parse_reward_model, resolve_settings

REWARD_FILE_REWARDS = {"correctness": 1.0}  # conftest's reward_file


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Two local model folders (their contents are not read before Ray starts)."""
    root = tmp_path_factory.mktemp("models")
    for name in ("helpful", "harmless"):
        (root / name).mkdir()
    return root


def test_an_entry_with_every_option(models):
    text = f"harmless={models / 'harmless'},nodes=2,gpus_per_node=4,value_head_prefix=score_head,normalize=true,"
    text += "offload=false,chat_template=own"
    group = parse_reward_model(text)
    assert group == ModelGroup(
        "harmless",
        str(models / "harmless"),
        nodes=2,
        gpus_per_node=4,
        value_head_prefix="score_head",
        normalize=True,
        offload=False,
        chat_template="own",
    )
    assert group.gpus == 8 and parse_reward_model(str(group)) == group  # the canonical text reads back
    assert parse_reward_model("honest=OpenRLHF/Llama-3-8b-rm") == ModelGroup("honest", "OpenRLHF/Llama-3-8b-rm")


@pytest.mark.parametrize(
    "text, message",
    [
        ("harmless", "expected KEY=PATH[,OPTION=VALUE...]"),
        ("=OpenRLHF/rm", "expected KEY=PATH"),
        ("harmless=./no/such/folder", "the path './no/such/folder' is neither a local folder nor a hub id"),
        ("harmless=/no/such/folder", "is neither a local folder nor a hub id (OWNER/NAME)"),
        ("harmless=OpenRLHF/rm,gpus=2", "option 'gpus=2' is not one of nodes, gpus_per_node, value_head_prefix"),
        ("harmless=OpenRLHF/rm,nodes=0", "nodes must be an integer >= 1, got '0'"),
        ("harmless=OpenRLHF/rm,offload=yes", "offload must be true or false, got 'yes'"),
        ("harmless=OpenRLHF/rm,chat_template=mine", "chat_template must be policy or own, got 'mine'"),
        ("harmless=OpenRLHF/rm,nodes=1,nodes=2", "option 'nodes=2' is given twice"),
        ("harmless=OpenRLHF/rm,nodes=²", "nodes must be an integer >= 1, got '²'"),  # int('²') would raise bare
        ("harmless=OpenRLHF/rm,gpus_per_node=٣", "gpus_per_node must be an integer >= 1, got '٣'"),  # int() gives 3
    ],
)
def test_bad_entries_are_refused_naming_the_entry(text, message):
    with pytest.raises(ValueError) as error:
        parse_reward_model(text)
    assert message in str(error.value) and repr(text) in str(error.value)


def flags(reward_file, models, *extra, keys=("correctness", "helpful", "harmless"), weights=("1", "1", "-1")):
    return [
        *("--advantage_estimator", "gd2po", "--reward.remote_url", reward_file),
        *("--gd2po.reward_model", f"helpful={models / 'helpful'}"),
        *("--gd2po.reward_model", f"harmless={models / 'harmless'},gpus_per_node=2,chat_template=own"),
        *(["--gd2po.reward_keys", *keys] if keys else []),
        *(["--gd2po.reward_weights", *weights] if weights else []),
        *("--rollout.n_samples_per_prompt", "4", "--data.label_key", "label"),
        *extra,
    ]


def test_the_settings_hold_one_group_per_model_key_in_key_order(reward_file, models):
    args = parse_launcher_args(
        flags(
            reward_file,
            models,
            *("--cost.model_name_or_path", "PKU-Alignment/beaver-7b-unified-cost", "--cost.offload"),
            keys=("correctness", "harmless", "cost", "helpful"),
            weights=("1", "-1", "-1", "0.5"),
        )
    )
    settings = resolve_settings(args)
    assert [(d.key, d.source) for d in settings.dimensions] == [
        ("correctness", "reward_function"),
        ("harmless", "reward_model"),
        ("cost", "cost_model"),
        ("helpful", "reward_model"),
    ]
    assert [(g.key, g.flag, g.gpus, g.offload, g.chat_template) for g in settings.model_groups] == [
        ("harmless", "--gd2po.reward_model", 2, False, "own"),
        ("cost", "--cost.model_name_or_path", 1, True, None),
        ("helpful", "--gd2po.reward_model", 1, False, None),
    ]
    text = describe(args, settings)
    assert "  model groups      (each its own Ray actor group" in text
    assert (
        "    reward/harmless             --gd2po.reward_model         1x2 GPUs  value head score  chat template own"
        in text
    )
    assert "reward/cost                 --cost.model_name_or_path    1x1 GPUs  value head score  chat template" in text
    assert "chat template policy  normalise off  offload on" in text
    assert f"reward/helpful              reward_model     {models / 'helpful'} on 1x1 GPUs  weight +0.5" in text


def test_without_reward_keys_the_model_keys_are_the_dimensions(models):
    args = parse_launcher_args(
        [
            *("--advantage_estimator", "gdpo", "--reward.model_name_or_path", "OpenRLHF/Llama-3-8b-rm"),
            *("--gd2po.reward_model", f"helpful={models / 'helpful'}"),
            *("--rollout.n_samples_per_prompt", "4"),
        ]
    )
    assert resolve_settings(args).reward_keys == ("reward_model", "helpful")


@pytest.mark.parametrize(
    "extra, keys, weights, message",
    [
        (
            ("--gd2po.reward_model", "helpful=OpenRLHF/other-rm"),
            ("correctness", "helpful", "harmless"),
            ("1", "1", "-1"),
            "reward key 'helpful' is already scored by --gd2po.reward_model; give each model group its own key",
        ),
        (
            ("--cost.model_name_or_path", "PKU-Alignment/beaver-7b-unified-cost"),
            ("correctness", "helpful", "harmless", "cost"),
            ("1", "1", "-1", "-1"),
            None,  # valid: the cost model under its own key
        ),
        (
            ("--cost.model_name_or_path", "PKU-Alignment/beaver-7b-unified-cost", "--gd2po.cost_model_key", "helpful"),
            ("correctness", "helpful", "harmless"),
            ("1", "1", "-1"),
            "reward key 'helpful' is already scored by --cost.model_name_or_path",
        ),
        (
            (),
            ("correctness", "helpful"),
            ("1", "1"),
            "--gd2po.reward_model scores reward key 'harmless', which is not in --gd2po.reward_keys",
        ),
        (
            ("--gd2po.dynamic_sampling",),
            ("correctness", "helpful", "harmless"),
            ("1", "1", "-1"),
            "--gd2po.dynamic_sampling tests each prompt group when its rollouts arrive",
        ),
    ],
)
def test_entries_that_do_not_fit_the_run_are_refused_in_one_line(
    reward_file, models, extra, keys, weights, message, capsys
):
    argv = flags(reward_file, models, *extra, keys=keys, weights=weights)
    if message is None:
        assert resolve_settings(parse_launcher_args(argv)).reward_keys == keys
        return
    with pytest.raises(SystemExit) as exit_info:
        parse_launcher_args(argv)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert message in error and "Traceback" not in error


def test_a_model_group_needs_another_reward_source_and_own_templates_need_labels(models, capsys):
    with pytest.raises(SystemExit):
        parse_launcher_args(
            [
                *("--advantage_estimator", "gdpo", "--gd2po.reward_model", f"helpful={models / 'helpful'}"),
                *("--rollout.n_samples_per_prompt", "4"),
            ]
        )
    assert "--gd2po.reward_model without another reward source is not supported" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_launcher_args(
            [
                *("--advantage_estimator", "gdpo", "--reward.model_name_or_path", "OpenRLHF/Llama-3-8b-rm"),
                *("--gd2po.reward_model", f"helpful={models / 'helpful'},chat_template=own"),
                *("--rollout.n_samples_per_prompt", "4"),
            ]
        )
    assert "reads each prompt's conversation from its label: set --data.label_key" in capsys.readouterr().err


def test_a_preset_lists_reward_models_and_the_command_line_replaces_one_by_key(reward_file, models, tmp_path):
    preset = tmp_path / "three_models.yaml"
    preset.write_text(
        "gd2po:\n"
        "  reward_keys: [correctness, helpful, harmless]\n"
        f"  reward_model: ['helpful={models / 'helpful'}', 'harmless={models / 'harmless'},offload=true']\n"
        f"reward:\n  remote_url: {reward_file}\n"
    )
    base = [*("--advantage_estimator", "gdpo", "--gd2po.config", str(preset), "--rollout.n_samples_per_prompt", "4")]
    groups = resolve_settings(parse_launcher_args(base)).model_groups
    assert [(g.key, g.offload) for g in groups] == [("helpful", False), ("harmless", True)]
    replaced = base + ["--gd2po.reward_model", "harmless=OpenRLHF/harmless-rm"]
    groups = resolve_settings(parse_launcher_args(replaced)).model_groups
    assert [(g.key, g.path, g.offload) for g in groups] == [
        ("helpful", str(models / "helpful"), False),
        ("harmless", "OpenRLHF/harmless-rm", False),
    ]


def test_the_checkpoint_holds_the_groups_and_a_changed_one_is_reported(reward_file, models):
    args = parse_launcher_args(flags(reward_file, models))
    settings = resolve_settings(args)
    saved = checkpoint_settings(settings)
    assert saved["gd2po.reward_model"] == [
        f"helpful={models / 'helpful'},nodes=1,gpus_per_node=1,normalize=false,offload=false",
        f"harmless={models / 'harmless'},nodes=1,gpus_per_node=2,normalize=false,offload=false,chat_template=own",
    ]
    assert [key for key, _, _ in saved["dimensions"]] == ["correctness", "helpful", "harmless"]
    assert restore_checkpoint_settings(args, settings, saved, "ckpt") == (settings, None)
    moved = {
        **saved,
        "gd2po.reward_model": [
            saved["gd2po.reward_model"][0].replace("nodes=1", "nodes=2"),
            saved["gd2po.reward_model"][1],
        ],
    }
    _, warning = restore_checkpoint_settings(args, settings, moved, "ckpt")
    assert "Kept from the command line (not restorable on resume): --gd2po.reward_model checkpoint" in warning


def test_a_reward_file_that_also_returns_a_model_key_is_refused(tmp_path, models):
    import openrlhf.trainer.ppo_trainer as ppo_trainer

    reward_file = tmp_path / "overlapping.py"
    reward_file.write_text("")
    strategy = openrlhf_strategy(
        flags(str(reward_file), models, keys=("correctness", "helpful", "harmless"), weights=("1", "1", "-1"))
    )
    generator = ppo_trainer.SamplesGenerator(strategy, None, None, None, [])
    response = {
        "prompt": "max 3 8 1 :",
        "reward": {"correctness": 1.0, "helpful": 0.5},
        "observation_tokens": [5, 6, 7],
        "action_ranges": [(2, 3)],
        "extra_logs": {},
    }
    with pytest.raises(ValueError) as error:
        generator._process_response_into_experience(response, max_len=8)
    assert "reward key 'helpful' is scored by the model group --gd2po.reward_model" in str(error.value)
    assert "returns it too" in str(error.value)


def test_the_three_reward_models_preset_dry_runs():
    from pathlib import Path

    preset = Path(__file__).resolve().parents[1] / "configs" / "three_reward_models.yaml"
    args = parse_launcher_args(
        ["--advantage_estimator", "gd2po", "--gd2po.config", str(preset), "--rollout.n_samples_per_prompt", "4"]
    )
    settings = resolve_settings(args)
    assert settings.reward_keys == ("helpfulness", "harmlessness", "honesty")
    assert [g.flag for g in settings.model_groups] == ["--reward.model_name_or_path"] + ["--gd2po.reward_model"] * 2
    text = describe(args, settings)
    assert "reward/honesty              --gd2po.reward_model         1x1 GPUs" in text


def test_a_home_relative_model_path_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "rm").mkdir()
    assert parse_reward_model("helpful=~/rm").path == str(tmp_path / "rm")
