"""Resuming with --ckpt.load_enable: the GD²PO settings travel in the actors' checkpoint client state; a resumed
run restores the checkpoint's estimator settings and warns about every flag that differs."""

from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import openrlhf.trainer.ppo_trainer as ppo_trainer
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


def advantages(base, seed=0):
    generator = torch.Generator().manual_seed(seed)
    rewards = torch.randint(0, 3, (6 * N, 2), generator=generator).float()
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
