"""args → RunSettings (integration/settings.py): resolve_settings on flat and nested namespaces, and
parse_launcher_args, OpenRLHF's own launcher parsing stopped where train() starts."""

import dataclasses
import sys
from types import SimpleNamespace

import pytest
from gd2po_testing import openrlhf_strategy

from gd2po_openrlhf.integration.launcher_args import parse_launcher_args
from gd2po_openrlhf.integration.settings import resolve_settings


def test_parsed_arguments_reach_openrlhf_nested(reward_file):
    strategy = openrlhf_strategy(
        [
            "--advantage_estimator",
            "gd2po",
            "--reward.remote_url",
            reward_file,
            "--gd2po.reward_keys",
            "correctness",
            "--rollout.n_samples_per_prompt",
            "4",
            "--gd2po.filter",
            "hard",
            "--gd2po.no_whiten",
        ]
    )
    args = strategy.args
    assert args.algo.advantage.estimator == "gd2po" and args.gd2po.filter == "hard" and args.gd2po.no_whiten
    assert args.critic.model_name_or_path is None and args.cost.model_name_or_path is None
    config = resolve_settings(
        args
    ).gd2po_config  # the trainer side resolves the same configuration from the nested args
    assert (config.filter, config.whiten, config.reward_keys) == ("hard", False, ("correctness",))


def args_for(**flags):
    """A flat namespace as argparse produces it, with OpenRLHF's defaults for the flags resolve_settings() reads."""
    defaults = {
        "algo.advantage.estimator": "gd2po",
        "rollout.n_samples_per_prompt": 4,
        "reward.remote_url": None,
        "train.agent_func_path": None,
        "reward.model_name_or_path": None,
        "cost.model_name_or_path": None,
        "gd2po.reward_keys": None,
        "gd2po.reward_weights": None,
        "gd2po.filter": None,
        "gd2po.snr_threshold": 0.8,
        "gd2po.snr_eps": 1e-8,
    }
    return SimpleNamespace(**{**defaults, **flags})


def test_resolve_gdpo_has_no_filter_and_no_reweighting():
    settings = resolve_settings(
        args_for(
            **{
                "algo.advantage.estimator": "gdpo",
                "reward.remote_url": "http://127.0.0.1:5000/get_reward",
                "gd2po.reward_keys": ["a", "b"],
            }
        )
    )
    config, dims = settings.gd2po_config, settings.dimensions
    assert config.filter == "none" and not config.reweight_queries
    assert [(d.key, d.source) for d in dims] == [("a", "reward_server"), ("b", "reward_server")]
    with pytest.raises(ValueError, match="gdpo is GD²PO without filtering"):
        resolve_settings(
            args_for(**{"algo.advantage.estimator": "gdpo", "gd2po.filter": "hard", "reward.model_name_or_path": "rm"})
        )


def test_resolve_mixes_reward_model_and_rule_based_function():
    settings = resolve_settings(
        args_for(
            **{
                "reward.remote_url": "rules.py",
                "reward.model_name_or_path": "org/rm",
                "gd2po.reward_keys": ["format", "reward_model"],
                "gd2po.reward_weights": [0.5, 1.0],
            }
        )
    )
    config, dims = settings.gd2po_config, settings.dimensions
    assert [(d.key, d.source, d.weight) for d in dims] == [
        ("format", "reward_function", 0.5),
        ("reward_model", "reward_model", 1.0),
    ]
    assert config.reward_keys == ("format", "reward_model") and config.weights == (0.5, 1.0)


@pytest.mark.parametrize(
    "flags, message",
    [
        ({"reward.remote_url": "rules.py"}, "--gd2po.reward_keys is required with a reward function (rules.py)"),
        ({}, "needs reward dimensions"),
        (
            {"cost.model_name_or_path": "org/cost", "reward.model_name_or_path": "org/rm"},
            "set --gd2po.reward_weights when a cost model is used",
        ),
        ({"cost.model_name_or_path": "org/cost", "gd2po.reward_weights": [-1]}, "a cost model alone is not supported"),
        (
            {"reward.model_name_or_path": "org/rm", "gd2po.reward_keys": ["helpful"]},
            "its dimension 'reward_model' is not in --gd2po.reward_keys",
        ),
        (
            {
                "reward.model_name_or_path": "org/rm",
                "gd2po.reward_keys": ["reward_model", "cost"],
                "gd2po.reward_weights": [1, -1],
            },
            "reward key 'cost' is the cost model's dimension (--gd2po.cost_model_key), but no "
            "--cost.model_name_or_path is given",
        ),
    ],
)
def test_resolve_refuses_keys_and_sources_that_do_not_fit(flags, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        resolve_settings(args_for(**flags))


def test_parse_launcher_args_gives_openrlhfs_nested_args(reward_file):
    """The demo's way to get a run's args: the real launcher, stopped where train() starts."""
    argv_before = list(sys.argv)
    args = parse_launcher_args(
        [
            "--advantage_estimator",
            "gd2po",
            "--gd2po.filter",
            "hard",
            "--reward.remote_url",
            reward_file,
            "--gd2po.reward_keys",
            "correctness",
            "--rollout.n_samples_per_prompt",
            "4",
        ]
    )
    assert args.algo.advantage.estimator == "gd2po" and args.gd2po.filter == "hard"
    assert args.reward.remote_url == [reward_file]  # split as the launcher does
    assert args.rollout.n_samples_per_prompt == 4 and args.reward.clip_range is not None  # OpenRLHF's defaults
    assert sys.argv == argv_before
    # the same parse-time validation as a launch, and the next call parses normally again
    with pytest.raises(SystemExit):
        parse_launcher_args(
            [
                "--advantage_estimator",
                "gd2po",
                "--reward.remote_url",
                reward_file,
                "--rollout.n_samples_per_prompt",
                "4",
            ]
        )
    assert (
        parse_launcher_args(
            ["--advantage_estimator", "group_norm", "--rollout.n_samples_per_prompt", "2"]
        ).algo.advantage.estimator
        == "group_norm"
    )


def test_the_flags_defaults_are_the_settings_defaults():
    """One source of defaults: a bare gd2po command line resolves to RunSettings' and GD2POConfig's defaults."""
    from gd2po_openrlhf import GD2POConfig
    from gd2po_openrlhf.integration.settings import RunSettings

    args = parse_launcher_args(
        [
            "--advantage_estimator",
            "gd2po",
            "--reward.model_name_or_path",
            "org/rm",
            "--rollout.n_samples_per_prompt",
            "4",
        ]
    )
    settings, defaults = resolve_settings(args), RunSettings()
    # Every field, except what this command line sets on purpose: the run's estimator, group size and dimension.
    set_here = {"estimator", "n_samples_per_prompt", "dimensions", "model_groups"}
    for field in dataclasses.fields(RunSettings):
        if field.name not in set_here:
            assert getattr(settings, field.name) == getattr(defaults, field.name), field.name
    assert (settings.estimator, settings.n_samples_per_prompt, settings.reward_keys) == ("gd2po", 4, ("reward_model",))
    # one model group, on OpenRLHF's default --reward.num_gpus_per_node (8)
    assert [(g.key, g.flag, g.gpus) for g in settings.model_groups] == [
        ("reward_model", "--reward.model_name_or_path", 8)
    ]
    config, default_config = settings.gd2po_config, GD2POConfig()
    assert (config.filter, config.snr_threshold, config.snr_eps, config.whiten, config.reweight_queries) == (
        default_config.filter,
        default_config.snr_threshold,
        default_config.snr_eps,
        default_config.whiten,
        default_config.reweight_queries,
    )


def test_settings_are_frozen():
    settings = resolve_settings(args_for(**{"reward.model_name_or_path": "org/rm"}))
    with pytest.raises(AttributeError):
        settings.snr_threshold = 0.1


def test_each_model_group_names_who_creates_its_ray_actor_group(reward_file):
    """OpenRLHF creates the --reward.model_name_or_path group unless a remote reward source also scores; the plugin
    creates every other group (the cost model's, each --gd2po.reward_model)."""
    both_models = resolve_settings(
        args_for(
            **{
                "reward.model_name_or_path": "org/rm",
                "cost.model_name_or_path": "org/cm",
                "gd2po.reward_weights": [1.0, -1.0],
            }
        )
    )
    assert [(g.key, g.owner) for g in both_models.model_groups] == [("reward_model", "openrlhf"), ("cost", "plugin")]
    with_file = resolve_settings(
        args_for(
            **{
                "reward.model_name_or_path": "org/rm",
                "reward.remote_url": reward_file,
                "gd2po.reward_keys": ["correctness", "reward_model"],
            }
        )
    )
    assert [(g.key, g.owner) for g in with_file.model_groups] == [("reward_model", "plugin")]
