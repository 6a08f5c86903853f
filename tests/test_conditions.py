"""--gd2po.reward_condition: the math by hand (conditions.py), the flag through OpenRLHF's real parser and presets,
the experience maker's advantages and metrics, the dynamic-sampling group test, the dry run and resume."""

import pytest
import torch
from gd2po_testing import experience_maker, openrlhf_strategy, rollout_experiences
from openrlhf.trainer.ppo_utils.experience import Experience

from gd2po_openrlhf import GD2POConfig, compute_rollout_advantages
from gd2po_openrlhf.conditions import RewardCondition, apply_conditions, ordered_conditions
from gd2po_openrlhf.integration.dry_run import describe
from gd2po_openrlhf.integration.dynamic_sampling import judge_group
from gd2po_openrlhf.integration.launcher_args import parse_launcher_args
from gd2po_openrlhf.integration.settings import resolve_settings

N = 4
KEYS = ["correctness", "format", "length"]
REWARD_FILE_REWARDS = {"correctness": 1.0, "format": 1.0, "length": 0.5}  # conftest's reward_file


# ---- the math, by hand ----


def test_a_condition_zeroes_its_key_where_the_gate_fails_and_leaves_the_input_alone():
    rewards = torch.tensor([[1.0, 1.0, 0.7], [0.0, 1.0, 0.9], [1.0, 0.0, 0.2], [0.5, 0.0, 0.4]], dtype=torch.float64)
    before = rewards.clone()
    conditioned, failed = apply_conditions(rewards, KEYS, ordered_conditions(["length=correctness>=1"], KEYS))
    assert conditioned.tolist() == [[1.0, 1.0, 0.7], [0.0, 1.0, 0.0], [1.0, 0.0, 0.2], [0.5, 0.0, 0.0]]
    assert failed.tolist() == [
        [False, False, False],
        [False, False, True],
        [False, False, False],
        [False, False, True],
    ]
    assert torch.equal(rewards, before)


def test_several_conditions_on_a_key_must_all_hold_and_a_cost_can_be_gated_from_above():
    rewards = torch.tensor([[1.0, 1.0, 0.7], [1.0, 0.0, 0.9], [0.0, 1.0, 0.2]], dtype=torch.float64)
    both = ordered_conditions(["length=correctness>=1", "length=format>=1"], KEYS)
    assert apply_conditions(rewards, KEYS, both)[0][:, 2].tolist() == [0.7, 0.0, 0.0]
    # <=: "format" counts only where length is at most 0.5 (a cost gated by a score, say).
    at_most = ordered_conditions(["format=length<=0.5"], KEYS)
    assert apply_conditions(rewards, KEYS, at_most)[0][:, 1].tolist() == [0.0, 0.0, 1.0]


def test_a_chain_reads_each_gate_after_its_own_conditions_whatever_order_it_is_given_in():
    # length counts only if format does, and format only if correct: the wrong rollout loses both.
    texts = ["length=format>=1", "format=correctness>=1"]
    ordered = ordered_conditions(texts, KEYS)
    assert [str(c) for c in ordered] == ["format=correctness>=1", "length=format>=1"]
    rewards = torch.tensor([[0.0, 1.0, 0.8], [1.0, 1.0, 0.8]], dtype=torch.float64)
    conditioned, failed = apply_conditions(rewards, KEYS, ordered)
    assert conditioned.tolist() == [[0.0, 0.0, 0.0], [1.0, 1.0, 0.8]]
    assert failed.tolist() == [[False, True, True], [False, False, False]]


@pytest.mark.parametrize(
    "texts, message",
    [
        (["length"], "expected KEY=GATE_KEY>=THRESHOLD or KEY=GATE_KEY<=THRESHOLD"),
        (["length=correctness>1"], "expected KEY=GATE_KEY>=THRESHOLD"),
        (["length=correctness==1"], "expected KEY=GATE_KEY>=THRESHOLD"),
        (["length=correctness>=one"], "THRESHOLD 'one' is not a number"),
        (["length=correctness>=nan"], "THRESHOLD must be finite"),
        (["length=length>=1"], "gates reward key 'length' on itself"),
        (["size=correctness>=1"], "KEY 'size' is not one of the reward keys ['correctness', 'format', 'length']"),
        (["length=judge>=1"], "GATE_KEY 'judge' is not one of the reward keys"),
        (["length=format>=1", "format=length>=1"], "a cycle: length → format → length"),
        (
            ["correctness=length>=1", "length=format>=1", "format=correctness<=0"],
            "a cycle: correctness → length → format → correctness",
        ),
    ],
)
def test_bad_conditions_are_refused_naming_them(texts, message):
    with pytest.raises(ValueError) as error:
        ordered_conditions(texts, KEYS)
    assert message in str(error.value)


def test_parse_reads_spaces_and_signed_thresholds():
    assert RewardCondition.parse(" length = correctness >= -0.5 ") == RewardCondition(
        "length", "correctness", ">=", -0.5
    )
    assert RewardCondition.parse("cost=safety<=1e-3") == RewardCondition("cost", "safety", "<=", 0.001)


# ---- the flag, through OpenRLHF's real parser ----


def flags(reward_file, *extra, estimator="gd2po"):
    return [
        "--advantage_estimator",
        estimator,
        "--reward.remote_url",
        reward_file,
        "--gd2po.reward_keys",
        *KEYS,
        "--rollout.n_samples_per_prompt",
        str(N),
        "--algo.kl.init_coef",
        "0",
        *extra,
    ]


@pytest.mark.parametrize(
    "condition, message",
    [
        ("length=judge>=1", "--gd2po.reward_condition 'length=judge>=1': GATE_KEY 'judge' is not one of the reward"),
        ("length=length>=1", "gates reward key 'length' on itself"),
        ("length=correctness>=x", "THRESHOLD 'x' is not a number"),
    ],
)
def test_the_launcher_refuses_bad_conditions_in_one_line(reward_file, condition, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_launcher_args(flags(reward_file, "--gd2po.reward_condition", condition))
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert message in error and "Traceback" not in error


def test_a_condition_with_openrlhfs_own_estimator_is_refused(reward_file, capsys):
    argv = ["--advantage_estimator", "group_norm", "--reward.remote_url", reward_file]
    with pytest.raises(SystemExit):
        parse_launcher_args(argv + ["--rollout.n_samples_per_prompt", "4", "--gd2po.reward_condition", "a=b>=1"])
    assert "--gd2po.reward_condition only acts with --advantage_estimator gd2po or gdpo" in capsys.readouterr().err


def test_the_flag_repeats_and_the_dry_run_shows_each_condition(reward_file):
    args = parse_launcher_args(
        flags(
            reward_file,
            *("--gd2po.reward_condition", "length=correctness>=1"),
            *("--gd2po.reward_condition", "format=correctness>=0.5"),
        )
    )
    settings = resolve_settings(args)
    assert tuple(map(str, settings.conditions)) == ("length=correctness>=1", "format=correctness>=0.5")
    text = describe(args, settings)
    assert (
        "  condition         reward/length counts where reward/correctness >= 1, else 0 (raw rewards, before "
        "normalisation)" in text
    )
    assert "reward/format counts where reward/correctness >= 0.5" in text


def test_a_command_line_condition_replaces_the_presets_on_that_key_only(reward_file, tmp_path):
    preset = tmp_path / "preset.yaml"
    preset.write_text(
        "gd2po:\n  reward_condition: ['length=correctness>=1', 'format=correctness>=1']\n"
        f"reward:\n  remote_url: {reward_file}\n"
    )
    base = flags(reward_file, "--gd2po.config", str(preset))
    assert tuple(map(str, resolve_settings(parse_launcher_args(base)).conditions)) == (
        "length=correctness>=1",
        "format=correctness>=1",
    )
    overridden = resolve_settings(parse_launcher_args(base + ["--gd2po.reward_condition", "length=format>=1"]))
    assert tuple(map(str, overridden.conditions)) == ("format=correctness>=1", "length=format>=1")


# ---- the experience maker ----


def batch(rewards, lengths):
    samples = rollout_experiences(rewards, lengths, N, 4, reward_keys=KEYS)
    for i, sample in enumerate(samples):
        sample.index = [i]
    return [Experience.concat_experiences(samples[i : i + 4], 0) for i in range(0, len(samples), 4)]


def random_step(seed, prompts=6):
    generator = torch.Generator().manual_seed(seed)
    rewards = torch.stack(
        [
            torch.randint(0, 2, (prompts * N,), generator=generator).float(),
            torch.randint(0, 2, (prompts * N,), generator=generator).float(),
            torch.rand(prompts * N, generator=generator),
        ],
        dim=1,
    )
    return rewards, torch.randint(1, 9, (prompts * N,), generator=generator)


@pytest.mark.parametrize(
    "estimator, extra, config",
    [
        ("gd2po", (), GD2POConfig(filter="snr")),
        ("gd2po", ("--gd2po.filter", "hard"), GD2POConfig(filter="hard")),
        ("gdpo", (), GD2POConfig(filter="none", reweight_queries=False)),
    ],
)
def test_the_maker_trains_on_the_conditioned_rewards(reward_file, estimator, extra, config):
    condition = ("--gd2po.reward_condition", "length=correctness>=1", "format=correctness>=1")
    maker = experience_maker(flags(reward_file, *condition, *extra, estimator=estimator))
    rewards, lengths = random_step(0)
    experiences = batch(rewards, lengths)
    out = maker.compute_advantages_and_returns(experiences)
    order = torch.cat([torch.tensor(e.index) for e in out]).argsort()
    advantages = torch.cat([e.advantages.sum(-1) / e.action_mask.sum(-1) for e in out])[order]

    correct = rewards[:, 0:1] >= 1  # by hand: format and length count only on correct rollouts
    by_hand = torch.cat([rewards[:, :1], rewards[:, 1:] * correct], dim=1).double()
    expected = compute_rollout_advantages(by_hand, torch.arange(len(rewards)) // N, lengths, config)
    torch.testing.assert_close(advantages, expected.rollout_advantages.float(), atol=1e-6, rtol=1e-6)
    metrics = maker.take_step_report().metrics
    wrong_share = float((~correct).float().mean())
    assert metrics["gd2po/conditioned/length"] == pytest.approx(wrong_share)
    assert metrics["gd2po/conditioned/format"] == pytest.approx(wrong_share)
    assert "gd2po/conditioned/correctness" not in metrics
    # What the reward source returned stays in info; the total trained on (and logged as reward) is conditioned.
    info_length = torch.cat([e.info["reward/length"] for e in out])[order]
    torch.testing.assert_close(info_length, rewards[:, 2])
    total = torch.cat([e.info["reward"] for e in out])[order]
    torch.testing.assert_close(total, by_hand.sum(1).float())


def test_with_sum_rewards_the_conditioned_rewards_are_summed(reward_file):
    condition = ("--gd2po.reward_condition", "length=correctness>=1")
    maker = experience_maker(flags(reward_file, "--gd2po.sum_rewards", *condition, estimator="gdpo"))
    rewards, lengths = random_step(1)
    out = maker.compute_advantages_and_returns(batch(rewards, lengths))
    order = torch.cat([torch.tensor(e.index) for e in out]).argsort()
    advantages = torch.cat([e.advantages.sum(-1) / e.action_mask.sum(-1) for e in out])[order]
    total = (rewards[:, 0] + rewards[:, 1] + rewards[:, 2] * (rewards[:, 0] >= 1)).double().unsqueeze(1)
    expected = compute_rollout_advantages(
        total, torch.arange(len(rewards)) // N, lengths, GD2POConfig(filter="none", reweight_queries=False)
    )
    torch.testing.assert_close(advantages, expected.rollout_advantages.float(), atol=1e-6, rtol=1e-6)


def test_without_conditions_nothing_is_logged_under_conditioned(reward_file):
    maker = experience_maker(flags(reward_file))
    maker.compute_advantages_and_returns(batch(*random_step(2)))
    assert not [name for name in maker.take_step_report().metrics if name.startswith("gd2po/conditioned/")]


# ---- the dynamic-sampling group test ----


def test_the_group_test_judges_the_conditioned_rewards(reward_file):
    # Every rollout wrong, format constant, length varying: unconditioned, length's signal passes the group;
    # with length gated on correctness every weighted dimension is constant, so it is rejected.
    rewards = torch.tensor([[0.0, 1.0, 0.2], [0.0, 1.0, 0.9], [0.0, 1.0, 0.5], [0.0, 1.0, 0.1]])
    samples = rollout_experiences(rewards, torch.full((N,), 5), N, 3, reward_keys=KEYS)
    common = ("--gd2po.dynamic_sampling", "--rollout.micro_batch_size", "3")
    plain = resolve_settings(openrlhf_strategy(flags(reward_file, *common, estimator="gdpo")).args)
    assert judge_group(samples, plain) == "passed"
    gated = resolve_settings(
        openrlhf_strategy(
            flags(reward_file, *common, "--gd2po.reward_condition", "length=correctness>=1", estimator="gdpo")
        ).args
    )
    assert judge_group(samples, gated) == "rejected_constant"
