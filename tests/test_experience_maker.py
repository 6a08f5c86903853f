"""The GD²PO experience maker as OpenRLHF's trainer module sees it after the import hook, on real
Experience objects, against the estimator core."""

import openrlhf.trainer.ppo_trainer as ppo_trainer
import pytest
import torch
from gd2po_testing import experience_maker, openrlhf_strategy, rollout_experiences
from openrlhf.trainer.ppo_utils.experience import Experience
from openrlhf.trainer.ppo_utils.experience_maker import RemoteExperienceMaker
from openrlhf.trainer.ppo_utils.kl_controller import FixedKLController
from openrlhf.trainer.ppo_utils.samples_generator import SamplesGenerator

from gd2po_openrlhf import GD2POConfig, compute_advantages
from gd2po_openrlhf.integration.experience_maker import GD2POExperienceMaker

N = 4  # rollouts per prompt


REWARD_FILE_REWARDS = {"correctness": 1.0, "format": 0.0}  # conftest's reward_file


def micro_batches(samples, micro_batch_size, shuffle_seed=None):
    """Experiences as split_rollout_samples makes them (index = position in the rollout list)."""
    for i, sample in enumerate(samples):
        sample.index = [i]
    order = list(range(len(samples)))
    if shuffle_seed is not None:  # dynamic batching reorders rollouts across micro-batches
        order = torch.randperm(len(samples), generator=torch.Generator().manual_seed(shuffle_seed)).tolist()
    return [
        Experience.concat_experiences([samples[j] for j in order[i : i + micro_batch_size]], 0)
        for i in range(0, len(samples), micro_batch_size)
    ]


def test_hook_replaced_the_trainer_modules_maker():
    assert ppo_trainer.RemoteExperienceMaker is GD2POExperienceMaker
    assert issubclass(GD2POExperienceMaker, RemoteExperienceMaker)


@pytest.mark.parametrize("filter_name, shuffle_seed", [("snr", None), ("hard", 3), ("none", 5)])
def test_advantages_match_the_estimator(reward_file, filter_name, shuffle_seed):
    strategy = openrlhf_strategy(
        [
            "--advantage_estimator",
            "gd2po",
            "--gd2po.filter",
            filter_name,
            "--reward.remote_url",
            reward_file,
            "--gd2po.reward_keys",
            "correctness",
            "format",
            "--gd2po.reward_weights",
            "1",
            "0.5",
            "--rollout.n_samples_per_prompt",
            str(N),
            "--algo.kl.init_coef",
            "0",
        ]
    )
    generator = torch.Generator().manual_seed(1)
    rewards = torch.randint(0, 3, (6 * N, 2), generator=generator).float()
    lengths = torch.randint(1, 9, (6 * N,), generator=generator)
    samples = rollout_experiences(rewards, lengths, N, 5, reward_keys=["correctness", "format"])
    experiences = micro_batches(samples, 5, shuffle_seed)
    maker = experience_maker(strategy)
    out = maker.compute_advantages_and_returns(experiences)

    # Expected: the estimator on the same rollouts in prompt order, with a common padded mask.
    width = int(lengths.max())
    mask = (torch.arange(width) < lengths.unsqueeze(1)).float()
    cfg = GD2POConfig(filter=filter_name, weights=(1.0, 0.5), reward_keys=("correctness", "format"))
    expected = compute_advantages(rewards, torch.arange(6 * N) // N, mask, cfg)
    for experience in out:
        rows = torch.tensor(experience.index)
        response = experience.action_mask
        assert torch.equal(experience.advantages[~response], torch.zeros(int((~response).sum())))
        got = experience.advantages.sum(-1) / response.sum(-1)  # constant along each response
        torch.testing.assert_close(got, expected.rollout_advantages[rows], atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(experience.returns, experience.advantages)
        torch.testing.assert_close(experience.rewards, rewards[rows] @ torch.tensor([1.0, 0.5]))
        assert experience.info["reward"].shape == (len(rows),) and experience.kl is None
    assert maker.last_step_report.metrics["gd2po/conflict_ratio"] == pytest.approx(expected.metrics["conflict_ratio"])
    assert maker.last_step_report.metrics["gd2po/reward_mean/format"] == pytest.approx(
        expected.metrics["reward_mean/format"]
    )


def test_sum_rewards_is_grpo_on_the_weighted_sum(reward_file):
    strategy = openrlhf_strategy(
        [
            "--advantage_estimator",
            "gdpo",
            "--gd2po.sum_rewards",
            "--reward.remote_url",
            reward_file,
            "--gd2po.reward_keys",
            "correctness",
            "format",
            "--gd2po.reward_weights",
            "1",
            "-0.5",
            "--rollout.n_samples_per_prompt",
            str(N),
            "--algo.kl.init_coef",
            "0",
        ]
    )
    generator = torch.Generator().manual_seed(2)
    rewards = torch.randint(0, 3, (5 * N, 2), generator=generator).float()
    lengths = torch.randint(1, 9, (5 * N,), generator=generator)
    maker = experience_maker(strategy)
    out = maker.compute_advantages_and_returns(
        micro_batches(rollout_experiences(rewards, lengths, N, 4, reward_keys=["correctness", "format"]), 4)
    )
    total = rewards @ torch.tensor([1.0, -0.5])
    mask = (torch.arange(int(lengths.max())) < lengths.unsqueeze(1)).float()
    expected = compute_advantages(
        total.unsqueeze(1), torch.arange(5 * N) // N, mask, GD2POConfig(filter="none", reweight_queries=False)
    )
    per_dimension = compute_advantages(
        rewards,
        torch.arange(5 * N) // N,
        mask,
        GD2POConfig(filter="none", reweight_queries=False, weights=(1.0, -0.5), reward_keys=("correctness", "format")),
    )
    assert not torch.allclose(expected.rollout_advantages, per_dimension.rollout_advantages)  # GRPO ≠ GDPO here
    for experience in out:
        rows = torch.tensor(experience.index)
        got = experience.advantages.sum(-1) / experience.action_mask.sum(-1)
        torch.testing.assert_close(got, expected.rollout_advantages[rows], atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(experience.rewards, total[rows])
    metrics = maker.last_step_report.metrics
    assert metrics["gd2po/num_reward_dims"] == 1
    # its conflict and mass tags are what the per-dimension advantages of the same rewards show
    assert metrics["gd2po/conflict_ratio"] == per_dimension.metrics["conflict_ratio"] > 0
    for name in ("pair_conflict/correctness__format", "pair_cancelled/correctness__format", "cancelled_mass_ratio"):
        assert metrics[f"gd2po/{name}"] == pytest.approx(per_dimension.metrics[name]), name
    assert (metrics["gd2po/filtered_mass_ratio"], metrics["gd2po/kappa_mass_ratio"]) == (0.0, 1.0)


def test_kl_in_reward_adds_reverse_cumulative_kl_on_kept_rollouts(reward_file):
    strategy = openrlhf_strategy(
        [
            "--advantage_estimator",
            "gd2po",
            "--gd2po.filter",
            "hard",
            "--reward.remote_url",
            reward_file,
            "--gd2po.reward_keys",
            "correctness",
            "format",
            "--rollout.n_samples_per_prompt",
            str(N),
            "--algo.kl.init_coef",
            "0.1",
        ]
    )
    rewards = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]] * 2)
    lengths = torch.tensor([3, 4, 2, 5, 1, 3, 4, 2])
    experiences = micro_batches(rollout_experiences(rewards, lengths, N, 4, reward_keys=["correctness", "format"]), 4)
    for experience in experiences:
        experience.kl = torch.rand(experience.action_mask.shape, generator=torch.Generator().manual_seed(7))
    kl = [experience.kl.clone() for experience in experiences]
    keep = compute_advantages(
        rewards, torch.arange(8) // N, (torch.arange(5) < lengths.unsqueeze(1)), GD2POConfig(filter="hard")
    ).keep
    assert 0 < keep.sum() < 8  # some rollouts dropped, some kept: both branches are checked
    without_kl = experience_maker(strategy, kl_coef=0.0).compute_advantages_and_returns(
        [Experience(**{**vars(e), "info": dict(e.info)}) for e in experiences]
    )
    with_kl = experience_maker(strategy, kl_coef=0.1, initial_model_group=object()).compute_advantages_and_returns(
        experiences
    )
    for base, shaped, kl_values in zip(without_kl, with_kl, kl):
        mask = shaped.action_mask.float()
        kept = keep[torch.tensor(base.index)].float().unsqueeze(1)
        # Reference: the returns of per-token rewards −β·kl with γ = 1, by an explicit loop.
        expected = torch.zeros_like(mask)
        running = torch.zeros(mask.shape[0])
        for t in reversed(range(mask.shape[1])):
            running = running - 0.1 * kl_values[:, t] * mask[:, t]
            expected[:, t] = running
        torch.testing.assert_close(shaped.advantages, base.advantages + expected * mask * kept)
        first_response_token = mask.argmax(-1, keepdim=True)
        torch.testing.assert_close(shaped.info["return"], shaped.advantages.gather(1, first_response_token).squeeze(1))


def test_other_estimators_are_delegated_untouched():
    strategy = openrlhf_strategy(
        [
            "--advantage_estimator",
            "group_norm",
            "--reward.remote_url",
            "http://127.0.0.1:1/unused",
            "--rollout.n_samples_per_prompt",
            str(N),
            "--algo.kl.init_coef",
            "0",
        ]
    )
    rewards = torch.tensor([[1.0], [0.0], [2.0], [0.5]] * 2)
    lengths = torch.tensor([3, 4, 2, 5, 1, 3, 4, 2])

    def batch():
        experiences = micro_batches(rollout_experiences(rewards, lengths, N, 4), 4)
        for experience in experiences:  # as make_experience leaves them without a reference model
            experience.kl = torch.zeros(experience.action_mask.shape)
        return experiences

    ours = experience_maker(strategy).compute_advantages_and_returns(batch())
    stock = RemoteExperienceMaker(
        None, None, None, None, FixedKLController(0.0), strategy, None
    ).compute_advantages_and_returns(batch())
    for a, b in zip(ours, stock):
        assert torch.equal(a.advantages, b.advantages) and torch.equal(a.returns, b.returns)
        assert "gd2po/conflict_ratio" not in a.info


def test_missing_and_unexpected_reward_keys_fail_with_names(reward_file):
    strategy = openrlhf_strategy(
        [
            "--advantage_estimator",
            "gd2po",
            "--reward.remote_url",
            reward_file,
            "--gd2po.reward_keys",
            "correctness",
            "format",
            "--rollout.n_samples_per_prompt",
            str(N),
        ]
    )
    samples = rollout_experiences(torch.ones(N, 2), torch.full((N,), 3), N, 4, reward_keys=["correctness", "style"])
    with pytest.raises(
        ValueError,
        match=(
            r"missing \['format'\] \(source: reward_function .*my_rewards.py\) unexpected \['reward/style'\] for "
            r"prompt 'prompt 0'"
        ),
    ):
        experience_maker(strategy).compute_advantages_and_returns(micro_batches(samples, 4))


class FakeGenerator:
    """The attributes SamplesGenerator._process_response_into_experience reads from self."""

    def __init__(self, args):
        self.args = args


def response(reward=None, extra_logs=None, prompt="What is 2+2?"):
    return {
        "prompt": prompt,
        "label": "4",
        "images": None,
        "mm_train_inputs": None,
        "observation_tokens": [1, 2, 3, 4, 5],
        "action_ranges": [(3, 5)],
        "rollout_log_probs": None,
        "truncated": False,
        "reward": reward,
        "scores": reward,
        "extra_logs": extra_logs or {},
    }


@pytest.fixture(scope="module")
def generator(reward_file):
    strategy = openrlhf_strategy(
        [
            "--advantage_estimator",
            "gd2po",
            "--reward.remote_url",
            reward_file,
            "--gd2po.reward_keys",
            "correctness",
            "format",
            "--gd2po.reward_weights",
            "2",
            "1",
            "--rollout.n_samples_per_prompt",
            str(N),
        ]
    )
    return FakeGenerator(strategy.args)


def test_dict_rewards_become_info_keys(generator):
    experience = SamplesGenerator._process_response_into_experience(
        generator, response({"correctness": 1, "format": 0.5})
    )
    assert experience.info["reward/correctness"].tolist() == [1.0] and experience.info["reward/format"].tolist() == [
        0.5
    ]
    assert experience.rewards.tolist() == [2.5] and experience.scores.tolist() == [2.5]


def test_extra_logs_form_is_accepted(generator):
    experience = SamplesGenerator._process_response_into_experience(
        generator, response(0.0, {"reward/correctness": torch.tensor(1.0), "reward/format": 0.0, "acc": 1.0})
    )
    assert experience.info["reward/correctness"].tolist() == [1.0] and experience.info["acc"].tolist() == [1.0]
    assert "reward/format" in experience.info and experience.rewards.tolist() == [0.0]


@pytest.mark.parametrize(
    "reward, extra_logs, message",
    [
        (
            None,
            None,
            r"reward keys \['correctness', 'format'\] missing from reward function .*my_rewards.py for prompt 'What "
            r"is 2\+2\?': it returned no reward at all",
        ),
        (
            {"correctness": 1.0},
            None,
            r"reward function .*my_rewards.py for prompt 'What is 2\+2\?' returned no value for reward keys "
            r"\['format'\]",
        ),
        (
            {"correctness": 1.0, "format": 0.0, "style": 1.0},
            None,
            r"returned reward keys \['style'\] that are not among the declared reward keys \['correctness', "
            r"'format'\]",
        ),
        (
            {"correctness": float("nan"), "format": 0.0},
            None,
            r"reward function .* for prompt .* returned nan for reward key 'correctness' of rollout 0: expected a "
            r"finite number",
        ),
        (
            {"correctness": "1", "format": 0.0},
            None,
            r"returned '1' for reward key 'correctness' of rollout 0: expected a finite number",
        ),
    ],
)
def test_bad_rollout_rewards_name_key_source_and_prompt(generator, reward, extra_logs, message):
    with pytest.raises(ValueError, match=message):
        SamplesGenerator._process_response_into_experience(generator, response(reward, extra_logs))


@pytest.mark.subprocess
def test_advantage_step_benchmark_short_mode_checks_the_estimator_against_loops_and_reports_its_floors(tmp_path):
    """CI runs the benchmark's short mode: it asserts (2) = (1) itself, and reports the ratios to both floors."""
    import json
    import pathlib
    import subprocess
    import sys

    script = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "advantage_step.py"
    report = tmp_path / "advantage_step.json"
    result = subprocess.run(
        [sys.executable, str(script), "--quick", "--json", str(report)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "(2) equals (1): max |difference|" in result.stdout
    ratios = json.loads(report.read_text())["ratios"]
    assert set(ratios) == {
        "core / core floor",
        "step / step floor",
        "stock group_norm / step",
        "step / stock group_norm, KL in the reward",
        "mass diagnostics / per-rollout math",
        "0/1 test, plain torch / core",
        "0/1 test, bit patterns / core",
    }
    assert all(0 < r["min"] <= r["median"] <= r["max"] for r in ratios.values())
