"""Resuming with --ckpt.load_enable: the GD²PO settings travel in the actors' checkpoint client state; a resumed
run restores the checkpoint's estimator settings and warns about every flag that differs."""

import importlib.metadata
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import openrlhf.trainer.ppo_trainer as ppo_trainer
import pytest
import ray
import torch
from gd2po_testing import openrlhf_strategy, rollout_experiences
from openrlhf.trainer.ppo_utils.experience import Experience

N = 4


class CheckpointingActors:
    """Stands in for the actor RayActorGroup's checkpoint methods (tests): the client state is written to and read
    back from the checkpoint folder with torch.save/torch.load, as DeepSpeed's save_checkpoint/load_checkpoint do."""

    def __init__(self, ckpt_path):
        self.folder = Path(ckpt_path) / "_actor"

    def async_run_method(self, method_name, **kwargs):
        if method_name == "save_checkpoint":
            (self.folder / kwargs["tag"]).mkdir(parents=True)
            torch.save(kwargs["client_states"], self.folder / kwargs["tag"] / "client_states.pt")
            (self.folder / "latest").write_text(kwargs["tag"])
            return []
        assert method_name == "get_checkpoint_states"
        tag = (self.folder / "latest").read_text()
        return [torch.load(self.folder / tag / "client_states.pt", weights_only=False)]


REWARD_FILE_REWARDS = {"a": 1.0, "b": 0.0}  # conftest's reward_file


def trainer(ckpt_path, reward_file, *flags, keys=("a", "b")):
    """OpenRLHF's real PPO trainer base (patched by the plugin) over the stand-in actors."""
    strategy = openrlhf_strategy(
        [
            "--advantage_estimator",
            "gd2po",
            "--reward.remote_url",
            reward_file,
            "--gd2po.reward_keys",
            *keys,
            "--rollout.n_samples_per_prompt",
            str(N),
            "--algo.kl.init_coef",
            "0",
            "--ckpt.path",
            str(ckpt_path),
            "--ckpt.save_steps",
            "1",
            *flags,
        ]
    )
    base = ppo_trainer.BasePPOTrainer(strategy, None, None, None, None, None, SimpleNamespace(pad_token_id=0))
    base.actor_model_group = CheckpointingActors(ckpt_path)
    return base


def save(base, step=3):
    with mock.patch.object(ray, "get", lambda refs: refs):
        base.save_logs_and_checkpoints(
            step, {}, {"episode": 0, "global_step": step, "total_consumed_prompts": 12, "data_loader_state_dict": {}}
        )


def resume(base):
    with mock.patch.object(ray, "get", lambda refs: refs):
        return base.init_checkpoint_states()


def advantages(base, seed=0, b=None):
    """One step of the base's experience maker on random rewards (b's column set to ``b`` if given)."""
    generator = torch.Generator().manual_seed(seed)
    rewards = torch.randint(0, 3, (6 * N, 2), generator=generator).float()
    if b is not None:
        rewards[:, 1] = b
    lengths = torch.randint(1, 9, (6 * N,), generator=generator)
    samples = rollout_experiences(rewards, lengths, N, 4, reward_keys=["a", "b"])
    for i, sample in enumerate(samples):
        sample.index = [i]
    batches = [Experience.concat_experiences(samples[i : i + 4], 0) for i in range(0, len(samples), 4)]
    return torch.cat([e.advantages.sum(-1) for e in base.experience_maker.compute_advantages_and_returns(batches)])


def test_the_checkpoint_carries_the_settings(tmp_path, reward_file):
    save(trainer(tmp_path, reward_file, "--gd2po.filter", "snr", "--gd2po.snr_threshold", "0.6"))
    states = torch.load(tmp_path / "_actor" / "global_step3" / "client_states.pt", weights_only=False)
    assert states["global_step"] == 3 and states["total_consumed_prompts"] == 12  # OpenRLHF's own state untouched
    settings = states["gd2po"]
    assert settings["gd2po.filter"] == "snr" and settings["gd2po.snr_threshold"] == 0.6
    assert settings["gd2po.reward_weights"] == [1.0, 1.0] and settings["estimator"] == "gd2po"
    assert settings["dimensions"] == [["a", "reward_function", reward_file], ["b", "reward_function", reward_file]]


def test_same_flags_resume_silently(tmp_path, reward_file, caplog):
    flags = ("--gd2po.filter", "snr", "--gd2po.snr_threshold", "0.6")
    save(trainer(tmp_path, reward_file, *flags))
    resumed = trainer(tmp_path, reward_file, *flags, "--ckpt.load_enable")
    assert resume(resumed)["global_step"] == 3
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
    assert resumed.experience_maker.settings.gd2po_config.snr_threshold == 0.6


def test_changed_flags_restore_the_checkpoints_settings_and_warn(tmp_path, reward_file, caplog):
    original = ("--gd2po.filter", "snr", "--gd2po.snr_threshold", "0.6", "--gd2po.reward_weights", "1", "0.5")
    save(trainer(tmp_path, reward_file, *original))
    resumed = trainer(
        tmp_path,
        reward_file,
        "--gd2po.filter",
        "hard",
        "--gd2po.no_whiten",
        "--gd2po.on_bad_reward",
        "drop_group",
        "--ckpt.load_enable",
    )
    resume(resumed)
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert "Restored from the checkpoint: --gd2po.filter checkpoint 'snr', command line 'hard'" in warning
    assert "--gd2po.no_whiten checkpoint False, command line True" in warning
    assert "--gd2po.reward_weights checkpoint [1.0, 0.5], command line [1.0, 1.0]" in warning
    assert (
        "Kept from the command line (not restorable on resume): --gd2po.on_bad_reward checkpoint 'error', command "
        "line 'drop_group'" in warning
    )
    assert "--gd2po.resume_with_flags" in warning
    # the resumed run trains exactly as the original one would have
    restored = resumed.experience_maker.settings.gd2po_config
    assert (restored.filter, restored.snr_threshold, restored.whiten, restored.weights) == (
        "snr",
        0.6,
        True,
        (1.0, 0.5),
    )
    torch.testing.assert_close(
        advantages(resumed), advantages(trainer(tmp_path / "fresh", reward_file, *original)), rtol=0, atol=0
    )
    assert resumed.args.gd2po.on_bad_reward == "drop_group"


def test_resume_with_flags_keeps_the_command_lines_settings(tmp_path, reward_file, caplog):
    save(trainer(tmp_path, reward_file, "--gd2po.filter", "snr"))
    resumed = trainer(
        tmp_path, reward_file, "--gd2po.filter", "hard", "--gd2po.resume_with_flags", "--ckpt.load_enable"
    )
    resume(resumed)
    assert resumed.experience_maker.settings.gd2po_config.filter == "hard"
    assert (
        "Kept from the command line (--gd2po.resume_with_flags): --gd2po.filter checkpoint 'snr', command line 'hard'"
        in caplog.text
    )


def test_changed_reward_keys_restore_nothing(tmp_path, reward_file, caplog):
    save(trainer(tmp_path, reward_file, "--gd2po.reward_weights", "2", "1"))
    resumed = trainer(tmp_path, reward_file, "--ckpt.load_enable", keys=("a", "b", "c"))
    resume(resumed)
    assert resumed.experience_maker.settings.gd2po_config.weights == (1.0, 1.0, 1.0)
    assert "Kept from the command line (the estimator or the reward keys changed)" in caplog.text
    assert "dimensions: checkpoint [['a'" in caplog.text


def test_a_checkpoint_without_settings_is_reported(tmp_path, reward_file, caplog):
    stock = openrlhf_strategy(  # a stock run saves no GD²PO settings
        [
            "--advantage_estimator",
            "group_norm",
            "--reward.remote_url",
            reward_file,
            "--rollout.n_samples_per_prompt",
            str(N),
            "--algo.kl.init_coef",
            "0",
            "--ckpt.path",
            str(tmp_path),
            "--ckpt.save_steps",
            "1",
        ]
    )
    base = ppo_trainer.BasePPOTrainer(stock, None, None, None, None, None, SimpleNamespace(pad_token_id=0))
    base.actor_model_group = CheckpointingActors(tmp_path)
    save(base)
    assert "gd2po" not in torch.load(tmp_path / "_actor" / "global_step3" / "client_states.pt", weights_only=False)
    resume(trainer(tmp_path, reward_file, "--ckpt.load_enable"))
    assert "the checkpoint holds no GD²PO settings" in caplog.text


BUDGET = ("--gd2po.reward_weights", "1", "-1", "--cost.budget", "0.25", "--gd2po.constraint_key", "b")


def test_resume_restores_lambda_and_the_schedule_position(tmp_path, reward_file, caplog):
    # b = 0 on every rollout: its batch mean is 0, so λ falls by 0.1 · 0.25 a step.
    flags = BUDGET + ("--cost.lambda_lr", "0.1", "--gd2po.reward_weight_schedule", "a=1:3:4")
    original = trainer(tmp_path, reward_file, *flags)
    for seed in range(3):
        advantages(original, seed, b=0.0)
    assert original.experience_maker.constraint_lambda == pytest.approx(1.0 - 3 * 0.025)
    save(original, step=3)
    states = torch.load(tmp_path / "_actor" / "global_step3" / "client_states.pt", weights_only=False)
    assert states["gd2po_state"] == {
        "constraint_lambda": pytest.approx(0.925),
        "openrlhf_version": importlib.metadata.version("openrlhf"),
        "openrlhf_drift": [],  # the pinned OpenRLHF: nothing differs from what the plugin was written against
    }
    assert states["gd2po"]["cost.budget"] == 0.25 and states["gd2po"]["gd2po.reward_weight_schedule"] == ("a=1:3:4",)

    resumed = trainer(tmp_path, reward_file, *flags, "--ckpt.load_enable")
    resume(resumed)
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
    maker = resumed.experience_maker
    assert (maker.constraint_lambda, maker.completed_steps) == (pytest.approx(0.925), 3)
    advantages(resumed, 3, b=0.0)
    metrics = maker.take_step_report().metrics
    # The fourth step (t = 3): a's weight 1 + 2 · 3/4, λ one more step down; the same as the original's fourth.
    assert metrics["gd2po/weight/a"] == 2.5 and metrics["gd2po/lambda/b"] == pytest.approx(0.9)
    advantages(original, 3, b=0.0)
    assert original.experience_maker.take_step_report().metrics == metrics


def test_a_changed_budget_warns_and_the_checkpoints_is_restored(tmp_path, reward_file, caplog):
    original = trainer(tmp_path, reward_file, *BUDGET)
    advantages(original, b=0.0)
    save(original)
    resumed = trainer(
        tmp_path,
        reward_file,
        *BUDGET[:-4],
        "--cost.budget",
        "0.75",
        "--gd2po.constraint_key",
        "b",
        "--ckpt.load_enable",
    )
    resume(resumed)
    assert "Restored from the checkpoint: --cost.budget checkpoint 0.25, command line 0.75" in caplog.text
    assert resumed.experience_maker.settings.cost_budget == 0.25
    assert resumed.experience_maker.constraint_lambda == pytest.approx(1.0 - 0.1 * 0.25)


def test_a_budget_added_on_resume_starts_from_lambda_init(tmp_path, reward_file, caplog):
    save(trainer(tmp_path, reward_file, "--gd2po.reward_weights", "1", "-1"))
    resumed = trainer(
        tmp_path, reward_file, *BUDGET, "--cost.lambda_init", "2", "--gd2po.resume_with_flags", "--ckpt.load_enable"
    )
    resume(resumed)
    assert (
        "Kept from the command line (--gd2po.resume_with_flags): --gd2po.constraint_key checkpoint None" in caplog.text
    )
    assert "--cost.budget checkpoint None, command line 0.25" in caplog.text
    assert "the checkpoint holds no λ for reward/b: starting from --cost.lambda_init 2" in caplog.text
    assert resumed.experience_maker.constraint_lambda == 2.0


def test_a_checkpoint_written_with_another_openrlhf_says_so_on_resume(tmp_path, reward_file, caplog):
    save(trainer(tmp_path, reward_file))
    path = tmp_path / "_actor" / "global_step3" / "client_states.pt"
    states = torch.load(path, weights_only=False)
    states["gd2po_state"].update(openrlhf_version="0.11.1", openrlhf_drift=["openrlhf.cli.train_ppo_ray:train"])
    torch.save(states, path)
    resume(trainer(tmp_path, reward_file, "--ckpt.load_enable"))
    installed = importlib.metadata.version("openrlhf")
    assert (
        f"was written with openrlhf 0.11.1 (functions that differed from the plugin's: "
        f"['openrlhf.cli.train_ppo_ray:train']); this run uses openrlhf {installed}" in caplog.text
    )


def test_a_checkpoint_saved_before_budgets_existed_resumes_silently(tmp_path, reward_file, caplog):
    save(trainer(tmp_path, reward_file))
    path = tmp_path / "_actor" / "global_step3" / "client_states.pt"
    states = torch.load(path, weights_only=False)
    for flag in (
        "gd2po.reward_weight_schedule",
        "gd2po.constraint_key",
        "cost.budget",
        "cost.lambda_init",
        "cost.lambda_lr",
        "cost.lambda_max",
        "cost.lambda_log_space",
    ):
        del states["gd2po"][flag]
    del states["gd2po_state"]
    torch.save(states, path)
    resume(trainer(tmp_path, reward_file, "--ckpt.load_enable"))
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


# ---- one settings object per run (issue 25): the restored settings are checked and used everywhere


DYNAMIC = ("--gd2po.filter", "snr", "--gd2po.dynamic_sampling")


def test_the_sync_samples_generator_judges_with_the_restored_settings(tmp_path, reward_file):
    from gd2po_openrlhf.integration.settings import generator_settings

    save(trainer(tmp_path, reward_file, *DYNAMIC, "--gd2po.snr_threshold", "0.3"))
    resumed = trainer(tmp_path, reward_file, *DYNAMIC, "--gd2po.snr_threshold", "0.9", "--ckpt.load_enable")
    resumed.samples_generator = SimpleNamespace(args=resumed.args)  # the sync PPOTrainer holds one
    resume(resumed)
    settings = generator_settings(resumed.samples_generator)
    assert settings is resumed.experience_maker.settings and settings.snr_threshold == 0.3


def test_the_async_generator_actor_gets_the_restored_settings_with_the_dataloader_state(tmp_path, reward_file):
    from openrlhf.trainer import ppo_trainer_async

    from gd2po_openrlhf.integration.patching import plain_class
    from gd2po_openrlhf.integration.settings import generator_settings

    save(trainer(tmp_path, reward_file, *DYNAMIC, "--gd2po.snr_threshold", "0.3"))
    resumed = trainer(tmp_path, reward_file, *DYNAMIC, "--gd2po.snr_threshold", "0.9", "--ckpt.load_enable")
    states = resume(resumed)  # the TrainingActor has no samples generator
    loaded = []
    actor = SimpleNamespace(
        samples_generator=SimpleNamespace(args=resumed.args),
        prompts_dataloader=SimpleNamespace(load_state_dict=loaded.append),
    )
    # What PPOTrainerAsync.fit hands the GenerateSamplesActor, through the method Ray's actor class runs.
    plain_class(ppo_trainer_async.GenerateSamplesActor).load_state_dict(actor, states["data_loader_state_dict"])
    assert loaded == [{}]  # the dataloader gets its own state only
    assert generator_settings(actor.samples_generator).snr_threshold == 0.3


def test_a_restored_budget_with_dynamic_sampling_is_refused_as_the_parser_refuses_it(tmp_path, reward_file):
    save(trainer(tmp_path, reward_file, *BUDGET))
    resumed = trainer(
        tmp_path, reward_file, "--gd2po.reward_weights", "1", "-1", "--gd2po.dynamic_sampling", "--ckpt.load_enable"
    )
    with pytest.raises(ValueError) as refused:
        resume(resumed)
    message = str(refused.value)
    assert f"the GD²PO settings saved in the checkpoint --ckpt.path {tmp_path} (global step 3)" in message
    assert "--cost.budget 0.25" in message and "--gd2po.dynamic_sampling tests each prompt group" in message


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("gd2po.reward_weights", [1.0], "--gd2po.reward_weights has 1 values [1.0] for 2 reward keys"),
        ("gd2po.filter", "bogus", "--gd2po.filter must be one of"),
        ("gd2po.snr_threshold", 5.0, "must lie in [0, 1], got 5.0"),
        ("gd2po.snr_threshold", "0.3", "--gd2po.snr_threshold '0.3' restored"),
        ("cost.budget", 0.5, "--cost.budget needs the dimension it constrains"),
        ("gd2po.drop_filtered", "false", "--gd2po.drop_filtered 'false' restored, expected true or false"),
        ("algo.advantage.no_std_norm", 1, "--algo.advantage.no_std_norm 1 restored, expected true or false"),
        ("gd2po.reward_weights", ["1", "0"], "--gd2po.reward_weights ['1', '0'] restored, expected a list of numbers"),
        ("gd2po.reward_condition", "a=b>=1", "--gd2po.reward_condition 'a=b>=1' restored, expected a list of strings"),
        ("cost.lambda_lr", True, "--cost.lambda_lr True restored, expected a number"),
    ],
)
def test_a_corrupt_checkpoint_is_refused_naming_it_and_the_field(tmp_path, reward_file, field, value, message):
    save(trainer(tmp_path, reward_file))
    path = tmp_path / "_actor" / "global_step3" / "client_states.pt"
    states = torch.load(path, weights_only=False)
    states["gd2po"][field] = value
    torch.save(states, path)
    with pytest.raises(ValueError) as refused:
        resume(trainer(tmp_path, reward_file, "--ckpt.load_enable"))
    assert f"checkpoint --ckpt.path {tmp_path}" in str(refused.value) and message in str(refused.value)


def test_a_restored_flag_that_would_be_ignored_is_refused_as_the_parser_refuses_it(tmp_path, reward_file):
    save(trainer(tmp_path, reward_file, "--gd2po.drop_filtered"))
    path = tmp_path / "_actor" / "global_step3" / "client_states.pt"
    states = torch.load(path, weights_only=False)
    states["gd2po"]["gd2po.filter"] = "none"  # drop_filtered with no filter: the parser would refuse it
    torch.save(states, path)
    with pytest.raises(ValueError) as refused:
        resume(trainer(tmp_path, reward_file, "--ckpt.load_enable"))
    assert "--gd2po.drop_filtered only acts with a conflict filter" in str(refused.value)


@pytest.mark.parametrize("value", [float("nan"), -1.0, 11.0, "1"])
def test_a_checkpoints_lambda_outside_its_range_is_refused(tmp_path, reward_file, value):
    save(trainer(tmp_path, reward_file, *BUDGET))
    path = tmp_path / "_actor" / "global_step3" / "client_states.pt"
    states = torch.load(path, weights_only=False)
    states["gd2po_state"]["constraint_lambda"] = value
    torch.save(states, path)
    with pytest.raises(ValueError, match=r"\(gd2po_state.constraint_lambda\): --cost.budget needs a number in \[0,"):
        resume(trainer(tmp_path, reward_file, *BUDGET, "--ckpt.load_enable"))


def test_no_std_norm_is_restored_and_reported(tmp_path, reward_file, caplog):
    save(trainer(tmp_path, reward_file, "--algo.advantage.no_std_norm"))
    resumed = trainer(tmp_path, reward_file, "--ckpt.load_enable")
    resume(resumed)
    assert (
        "Restored from the checkpoint: --algo.advantage.no_std_norm checkpoint True, command line False" in caplog.text
    )
    assert resumed.experience_maker.settings.norm_by_std is False
    fresh = trainer(tmp_path / "fresh", reward_file, "--algo.advantage.no_std_norm")
    torch.testing.assert_close(advantages(resumed), advantages(fresh), rtol=0, atol=0)


def test_every_run_logs_the_configuration_it_trains_with(tmp_path, reward_file, caplog):
    import logging

    caplog.set_level(logging.INFO)
    save(trainer(tmp_path, reward_file, "--gd2po.filter", "snr", "--gd2po.snr_threshold", "0.3"))
    caplog.clear()
    resume(trainer(tmp_path / "fresh", reward_file, "--gd2po.filter", "hard"))  # a fresh run
    assert (
        "GD²PO configuration (--advantage_estimator gd2po)" in caplog.text and "filter            hard" in caplog.text
    )
    caplog.clear()
    resume(trainer(tmp_path, reward_file, "--gd2po.filter", "hard", "--ckpt.load_enable"))  # after the restore
    assert "filter            snr (τ = 0.3" in caplog.text
    assert "(the GD²PO configuration this run trains with)" in caplog.text


def test_every_settings_field_is_restored_reported_or_not_saved_exactly_once():
    import dataclasses

    from gd2po_openrlhf.integration import resume as resume_module
    from gd2po_openrlhf.integration.settings import RunSettings

    tables = resume_module.resume_tables()
    listed = [name for table in tables for name in table]
    assert sorted(listed) == sorted(field.name for field in dataclasses.fields(RunSettings))
    assert len(listed) == len(set(listed))


def test_resume_restores_the_checkpoints_reward_conditions(tmp_path, reward_file, caplog):
    save(trainer(tmp_path, reward_file, "--gd2po.reward_condition", "b=a>=1"))
    states = torch.load(tmp_path / "_actor" / "global_step3" / "client_states.pt", weights_only=False)
    assert states["gd2po"]["gd2po.reward_condition"] == ("b=a>=1",)
    resumed = trainer(tmp_path, reward_file, "--gd2po.reward_condition", "b=a>=2", "--ckpt.load_enable")
    resume(resumed)
    assert (
        "Restored from the checkpoint: --gd2po.reward_condition checkpoint ('b=a>=1',), command line ('b=a>=2',)"
        in caplog.text
    )
    assert tuple(map(str, resumed.experience_maker.settings.conditions)) == ("b=a>=1",)


# ---- the dry run of a resumed run shows the settings it will train on (issue 39)


@pytest.mark.subprocess
def test_the_dry_run_of_a_resume_shows_the_checkpoints_settings(tmp_path, reward_file):
    from gd2po_testing import launcher_subprocess

    from gd2po_openrlhf.integration.resume import checkpoint_settings

    saved = checkpoint_settings(
        trainer(tmp_path, reward_file, "--gd2po.snr_threshold", "0.3").experience_maker.settings
    )
    # DeepSpeed's layout: _actor/latest names the tag, whose model states file holds the client state's keys.
    (tmp_path / "_actor" / "global_step3").mkdir(parents=True)
    (tmp_path / "_actor" / "latest").write_text("global_step3")
    torch.save({"module": {}, "gd2po": saved}, tmp_path / "_actor" / "global_step3" / "mp_rank_00_model_states.pt")
    argv = ["--advantage_estimator", "gd2po", "--reward.remote_url", reward_file, "--gd2po.reward_keys", "a", "b"]
    argv += ["--rollout.n_samples_per_prompt", "4", "--ckpt.path", str(tmp_path), "--gd2po.snr_threshold", "0.5"]
    result = launcher_subprocess(argv + ["--ckpt.load_enable"], env={"GD2PO_DRY_RUN": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "filter            snr (τ = 0.3," in result.stdout
    assert f"  resume            from --ckpt.path {tmp_path} (global_step3): the settings above" in result.stdout
    assert "Restored from the checkpoint: --gd2po.snr_threshold checkpoint 0.3, command line 0.5" in result.stdout
    fresh = launcher_subprocess(argv, env={"GD2PO_DRY_RUN": "1"})  # without --ckpt.load_enable: the command line's
    assert "filter            snr (τ = 0.5," in fresh.stdout and "  resume " not in fresh.stdout
    empty = launcher_subprocess(
        [*argv[:-4], "--ckpt.path", str(tmp_path / "none"), "--ckpt.load_enable"], env={"GD2PO_DRY_RUN": "1"}
    )
    assert f"no checkpoint in {tmp_path / 'none' / '_actor'} yet: the run starts from step 0" in empty.stdout
