"""On a real local Ray cluster (logical GPUs): the patch reaches Ray worker processes, and the reward and
cost model groups are real RayActorGroups (of light CPU actors returning known scores) whose outputs flow
into two reward dimensions through the full make_experience_batch path."""

import subprocess
import sys

import pytest
import ray
import torch
from openrlhf.trainer.ppo_utils.kl_controller import FixedKLController
from openrlhf.trainer.ray.launcher import BaseModelActor, RayActorGroup

from gd2po_openrlhf import GD2POConfig, compute_advantages
from gd2po_openrlhf.integration.trainer import GD2POExperienceMaker
from gd2po_testing import openrlhf_strategy, rollout_experiences

# Classes of this test module travel to the workers by value (the workers cannot import tests/).
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
N = 4


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=4, num_gpus=4, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@ray.remote
class TrainerProbe:
    """Imports the trainer modules as OpenRLHF's PPOTrainer and async TrainingActor processes do."""

    def maker_classes(self):
        import openrlhf.trainer.ppo_trainer as sync_trainer
        import openrlhf.trainer.ppo_trainer_async as async_trainer

        sync_maker = sync_trainer.RemoteExperienceMaker
        async_maker = async_trainer.BasePPOTrainer.__init__.__globals__["RemoteExperienceMaker"]  # TrainingActor base
        return [f"{cls.__module__}.{cls.__qualname__}" for cls in (sync_maker, async_maker)]


def test_patch_reaches_ray_worker_processes(local_ray):
    names = ray.get(TrainerProbe.remote().maker_classes.remote())
    assert names == ["gd2po_openrlhf.integration.trainer.GD2POExperienceMaker"] * 2


SETUP_HOOK_SCRIPT = """
import ray

@ray.remote
def maker():
    import openrlhf.trainer.ppo_trainer as m
    return m.RemoteExperienceMaker.__qualname__

env = {"env_vars": {"GD2PO_DISABLE": "1"}, "worker_process_setup_hook": "gd2po_openrlhf.register"}
ray.init(address="local", num_cpus=1, include_dashboard=False, runtime_env=env)
print(ray.get(maker.remote()))
"""


def test_worker_process_setup_hook_activates_without_the_pth(local_ray, tmp_path):
    # With GD2PO_DISABLE=1 a worker's .pth does nothing (shown on the shared cluster)...
    disabled = {"env_vars": {"GD2PO_DISABLE": "1"}}
    names = ray.get(TrainerProbe.options(runtime_env=disabled).remote().maker_classes.remote())
    assert names == ["openrlhf.trainer.ppo_utils.experience_maker.RemoteExperienceMaker"] * 2
    # ...and Ray's job-level setup hook does the work, as for `ray job submit --runtime-env-json
    # '{"worker_process_setup_hook": "gd2po_openrlhf.register"}'` (a job of its own: the hook is job-level).
    script = tmp_path / "job.py"
    script.write_text(SETUP_HOOK_SCRIPT)
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "GD2POExperienceMaker"


@ray.remote(num_gpus=1)
class LightModelActor(BaseModelActor):
    """A policy, reward or cost model that returns known values instead of running a network."""

    def init_model_from_pretrained(self, strategy, pretrain):
        self.strategy = strategy  # is_rank_0() holds without torch.distributed
        self.kind = pretrain
        self.offload = strategy.args.reward.offload

    def settings(self):
        return self.kind, self.offload

    def forward(self, sequences, action_mask=None, attention_mask=None, pad_sequence=False, **kwargs):
        if self.kind == "policy":
            return torch.zeros(action_mask.shape)  # log-probs
        if self.kind == "helpful-rm":
            return ((sequences * attention_mask).sum(-1) % 7).float()
        return (attention_mask.sum(-1) % 3).float()  # cost: total length mod 3


class LightMaker(GD2POExperienceMaker):
    model_actor_class = LightModelActor


def light_group(kind, strategy):
    group = RayActorGroup(1, 1, LightModelActor, pg=None, num_gpus_per_actor=1)
    ray.get(group.async_init_model_from_pretrained(strategy, kind))
    return group


def test_reward_and_cost_model_groups_flow_into_two_dimensions(local_ray):
    strategy = openrlhf_strategy(
        ["--advantage_estimator", "gd2po", "--gd2po.filter", "hard", "--reward.model_name_or_path", "helpful-rm",
         "--reward.num_gpus_per_node", "1", "--cost.model_name_or_path", "beaver-cost", "--cost.offload",
         "--gd2po.reward_weights", "1", "-1", "--rollout.n_samples_per_prompt", str(N), "--rollout.micro_batch_size", "3",
         "--algo.kl.init_coef", "0", "--actor.num_gpus_per_node", "1"]
    )
    lengths = torch.tensor([2, 5, 3, 4, 6, 1, 2, 3, 4, 4, 5, 2])
    samples = rollout_experiences(torch.zeros(len(lengths), 1), lengths, N, 3)
    for sample in samples:  # rollouts as they come from vLLM without a reward file: scored by the model groups
        sample.rewards, sample.info = None, {}
    maker = LightMaker(light_group("policy", strategy), None, light_group("helpful-rm", strategy), None,
                       FixedKLController(0.0), strategy, type("Tokenizer", (), {"pad_token_id": 0}))
    assert ray.get(maker.gd2po_model_groups["cost"].async_run_method("settings")) == [("beaver-cost", True)]

    experiences = maker.make_experience_batch(samples)

    helpful = torch.tensor([float(s.sequences.sum() % 7) for s in samples])
    cost = torch.tensor([float(s.attention_mask.sum() % 3) for s in samples])
    rewards = torch.stack([helpful, cost], dim=1)
    assert 0 < cost.sum() and 0 < helpful.std()
    mask = torch.arange(int(lengths.max())) < lengths.unsqueeze(1)
    expected = compute_advantages(rewards, torch.arange(len(samples)) // N, mask,
                                  GD2POConfig(filter="hard", weights=(1.0, -1.0), reward_keys=("reward_model", "cost")))
    for experience in experiences:
        rows = torch.tensor(experience.index)
        assert experience.info["reward/reward_model"].tolist() == helpful[rows].tolist()
        assert experience.info["reward/cost"].tolist() == cost[rows].tolist()
        assert experience.rewards.tolist() == (helpful[rows] - cost[rows]).tolist()
        got = experience.advantages.sum(-1) / experience.action_mask.sum(-1)
        torch.testing.assert_close(got, expected.rollout_advantages[rows], atol=1e-6, rtol=1e-6)


def test_reward_model_mixed_with_a_rule_based_reward_file(local_ray, tmp_path):
    # OpenRLHF cannot combine these: with --reward.remote_url it creates no reward model group, so the
    # GD²PO maker creates and drives its own.
    rules = tmp_path / "rules.py"
    rules.write_text("def reward_func(queries, prompts, labels):\n    return {'rewards': {'format': 1.0}}\n")
    strategy = openrlhf_strategy(
        ["--advantage_estimator", "gd2po", "--reward.remote_url", str(rules), "--reward.model_name_or_path", "helpful-rm",
         "--reward.num_gpus_per_node", "1", "--gd2po.reward_keys", "format", "reward_model",
         "--rollout.n_samples_per_prompt", str(N), "--rollout.micro_batch_size", "4", "--algo.kl.init_coef", "0"]
    )
    lengths = torch.tensor([2, 5, 3, 4, 6, 1, 2, 3])
    formats = torch.tensor([[1.0], [0.0], [1.0], [1.0], [0.0], [0.0], [1.0], [0.0]])
    samples = rollout_experiences(formats, lengths, N, 4, reward_keys=["format"])  # as the rollout side delivers them
    maker = LightMaker(light_group("policy", strategy), None, None, None, FixedKLController(0.0), strategy,
                       type("Tokenizer", (), {"pad_token_id": 0}))
    assert list(maker.gd2po_model_groups) == ["reward_model"]

    experiences = maker.make_experience_batch(samples)

    helpful = torch.tensor([float(s.sequences.sum() % 7) for s in samples])
    for experience in experiences:
        rows = torch.tensor(experience.index)
        assert experience.info["reward/reward_model"].tolist() == helpful[rows].tolist()
        assert experience.info["reward/format"].tolist() == formats[rows, 0].tolist()
        assert experience.rewards.tolist() == (helpful[rows] + formats[rows, 0]).tolist()
