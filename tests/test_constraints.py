"""--cost.budget (a Lagrangian multiplier by dual ascent) and --gd2po.reward_weight_schedule: the math by hand
(constraints.py), the flags through OpenRLHF's real parser, and the step's weights in the experience maker."""

import math

import pytest
import torch
from gd2po_testing import experience_maker, rollout_experiences
from openrlhf.trainer.ppo_utils.experience import Experience

from gd2po_openrlhf import GD2POConfig, compute_rollout_advantages
from gd2po_openrlhf.constraints import WeightSchedule, dual_ascent
from gd2po_openrlhf.integration.dry_run import describe
from gd2po_openrlhf.integration.launcher_args import parse_launcher_args
from gd2po_openrlhf.integration.settings import resolve_settings

N = 4
KEYS = ["correctness", "cost"]
REWARD_FILE_REWARDS = {"correctness": 1.0, "cost": 0.0}  # conftest's reward_file


# ---- the math, by hand ----


def test_lambda_rises_over_budget_falls_under_it_and_stays_in_its_range():
    # A cost with ceiling D = 2, lr 0.5, λ_max 3: each step λ += 0.5 · (mean − 2), clipped to [0, 3].
    means = [4.0, 3.0, 1.0, 0.0, 0.0, 0.0, 2.0, 9.0, 9.0]
    expected = [2.0, 2.5, 2.0, 1.0, 0.0, 0.0, 0.0, 3.0, 3.0]  # 1 + 0.5·2; 2 + 0.5; 2.5 − 0.5; 2 − 1; clip at 0; ...
    violations = [2.0, 1.0, -1.0, -2.0, -2.0, -2.0, 0.0, 7.0, 7.0]
    lam = 1.0
    for mean, want, want_violation in zip(means, expected, violations):
        lam, violation = dual_ascent(lam, mean, 2.0, is_cost=True, learning_rate=0.5, max_multiplier=3.0)
        assert (lam, violation) == (want, want_violation)


def test_a_safety_score_budget_is_a_floor():
    # Higher is safer, floor D = 0.5: a batch below it (0.2) raises λ, one above it (0.9) lowers it.
    lam, violation = dual_ascent(1.0, 0.2, 0.5, is_cost=False, learning_rate=1.0, max_multiplier=10.0)
    assert violation == pytest.approx(0.3) and lam == pytest.approx(1.3)
    lam, violation = dual_ascent(lam, 0.9, 0.5, is_cost=False, learning_rate=1.0, max_multiplier=10.0)
    assert violation == pytest.approx(-0.4) and lam == pytest.approx(0.9)


def test_log_space_moves_lambda_by_factors_and_never_to_zero():
    lam = 1.0
    for mean, want in [(3.0, 2.0), (3.0, 4.0), (1.0, 2.0), (-100.0, 2.0 * 2.0**-101), (5000.0, 8.0)]:
        # violation = mean − 2, lr = ln 2: λ doubles per unit of violation; a huge step is clipped at λ_max.
        lam, _ = dual_ascent(lam, mean, 2.0, True, math.log(2.0), 8.0, log_space=True)
        assert lam == pytest.approx(want, rel=1e-12) and lam > 0


@pytest.mark.parametrize(
    "text, breakpoints",
    [
        ("length=0:1:10", {0: 0.0, 5: 0.5, 10: 1.0, 11: 1.0, 1000: 1.0}),
        ("length=0:1:10:cosine", {0: 0.0, 5: 0.5, 10: 1.0, 30: 1.0}),
        ("length=0:1:10:step", {0: 0.0, 9: 0.0, 10: 1.0, 11: 1.0}),
        ("safety=2:-1:4", {0: 2.0, 1: 1.25, 2: 0.5, 4: -1.0, 5: -1.0}),
    ],
)
def test_schedules_at_their_breakpoints(text, breakpoints):
    schedule = WeightSchedule.parse(text)
    assert {step: schedule.weight_at(step) for step in breakpoints} == pytest.approx(breakpoints, abs=1e-12)


def test_the_cosine_schedule_between_breakpoints():
    # (1 − cos(π/4)) / 2 at a quarter: slower than linear at the start, faster in the middle.
    assert WeightSchedule.parse("k=0:1:8:cosine").weight_at(2) == pytest.approx((1 - math.sqrt(0.5)) / 2)


@pytest.mark.parametrize(
    "text, message",
    [
        ("length", "expected KEY=START:END:STEPS"),
        ("length=0:1", "expected KEY=START:END:STEPS"),
        ("=0:1:5", "expected KEY=START:END:STEPS"),
        ("length=a:1:5", "START and END must be numbers"),
        ("length=0:inf:5", "must be finite"),
        ("length=0:1:0", "STEPS must be an integer >= 1"),
        ("length=0:1:2.5", "STEPS must be an integer >= 1"),
        ("length=0:1:5:exp", "the shape must be one of"),
    ],
)
def test_bad_schedules_are_refused_naming_the_text(text, message):
    with pytest.raises(ValueError, match=message) as error:
        WeightSchedule.parse(text)
    assert repr(text) in str(error.value)


# ---- the flags, through OpenRLHF's real parser ----


def flags(reward_file, *extra, weights=("1", "-1")):
    return [
        "--advantage_estimator",
        "gd2po",
        "--reward.remote_url",
        reward_file,
        "--gd2po.reward_keys",
        *KEYS,
        *(["--gd2po.reward_weights", *weights] if weights else []),
        "--rollout.n_samples_per_prompt",
        str(N),
        "--algo.kl.init_coef",
        "0",
        *extra,
    ]


@pytest.mark.parametrize(
    "extra, weights, message",
    [
        (["--cost.budget", "1"], ("1", "-1"), "--cost.budget needs the dimension it constrains"),
        (["--cost.budget", "1", "--gd2po.constraint_key", "length"], ("1", "-1"), "'length' is not one of"),
        (["--cost.budget", "1", "--gd2po.constraint_key", "cost"], None, "give its sign in --gd2po.reward_weights"),
        (["--cost.budget", "1", "--gd2po.constraint_key", "cost"], ("1", "-2"), "give only its sign: -1"),
        (["--cost.budget", "1", "--gd2po.constraint_key", "cost"], ("1", "0"), "give only its sign"),
        (
            ["--cost.lambda_lr", "0.5"],
            ("1", "-1"),
            "--cost.lambda_lr only acts with --cost.budget; with no budget it would be ignored: drop it",
        ),
        (
            ["--gd2po.constraint_key", "cost"],
            ("1", "-1"),
            "--gd2po.constraint_key only acts with --cost.budget; with no budget it",
        ),
        (["--cost.budget", "nan", "--gd2po.constraint_key", "cost"], ("1", "-1"), "--cost.budget must be a finite"),
        (
            ["--cost.budget", "1", "--gd2po.constraint_key", "cost", "--cost.lambda_init", "20"],
            ("1", "-1"),
            "--cost.lambda_init must lie in [0, --cost.lambda_max = 10]",
        ),
        (
            [
                "--cost.budget",
                "1",
                "--gd2po.constraint_key",
                "cost",
                "--cost.lambda_init",
                "0",
                "--cost.lambda_log_space",
            ],
            ("1", "-1"),
            "be > 0 with --cost.lambda_log_space",
        ),
        (
            ["--cost.budget", "1", "--gd2po.constraint_key", "cost", "--cost.lambda_lr", "-1"],
            ("1", "-1"),
            "--cost.lambda_lr must be >= 0",
        ),
        (
            ["--cost.budget", "1", "--gd2po.constraint_key", "cost", "--cost.lambda_max", "0"],
            ("1", "-1"),
            "--cost.lambda_max must lie in (0, 1e+06]",
        ),
        (["--gd2po.reward_weight_schedule", "length=0:1:5"], ("1", "-1"), "'length' is not one of"),
        (
            ["--gd2po.reward_weight_schedule", "cost=0:1:5", "--gd2po.reward_weight_schedule", "cost=0:2:5"],
            ("1", "0"),
            "schedules reward key 'cost' twice",
        ),
        (
            ["--gd2po.reward_weight_schedule", "cost=0:-1:5"],
            ("1", "-1"),
            "starts at 0 but --gd2po.reward_weights gives 'cost' the weight -1: make them agree",
        ),
        (
            ["--gd2po.reward_weight_schedule", "cost=-1:-2:5", "--cost.budget", "1", "--gd2po.constraint_key", "cost"],
            ("1", "-1"),
            "and --cost.budget both set the weight of 'cost'",
        ),
        (
            ["--gd2po.reward_weight_schedule", "correctness=1:2:5", "--gd2po.dynamic_sampling"],
            ("1", "-1"),
            "--gd2po.dynamic_sampling tests each prompt group with the run's fixed weights",
        ),
        (["--gd2po.reward_weight_schedule", "correctness=1:1e7:5"], None, "weights must satisfy |w| <= 1e+06"),
    ],
)
def test_flags_that_do_not_fit_are_refused_by_name(reward_file, extra, weights, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_launcher_args(flags(reward_file, *extra, weights=weights))
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_the_dry_run_prints_the_sign_convention_and_the_schedule(reward_file):
    budget = ["--cost.budget", "0.25", "--gd2po.constraint_key", "cost", "--cost.lambda_lr", "0.5"]
    schedule = ["--gd2po.reward_weight_schedule", "correctness=1:3:100:cosine"]
    args = parse_launcher_args(flags(reward_file, *budget, *schedule))
    text = describe(args, resolve_settings(args))
    assert (
        "cost budget       batch mean of reward/cost <= 0.25: a cost (weight -1 given: higher is more harmful), so "
        "the budget is a ceiling and the weight is -λ; each step λ += lr·violation (λ_0 = 1, lr 0.5, clipped to "
        "[0, 10])" in text
    )
    assert "weight schedule   reward/correctness 1 → 3 over 100 global steps (cosine), then 3" in text
    assert "weight -λ (budget)" in text and "weight +1 → +3 (schedule)" in text

    args = parse_launcher_args(flags(reward_file, *budget, "--cost.lambda_log_space", weights=("1", "1")))
    text = describe(args, resolve_settings(args))
    assert (
        "batch mean of reward/cost >= 0.25: a score (weight +1 given: higher is safer), so the budget is a floor "
        in text
    )
    assert "log λ += lr·violation" in text and "weight +λ (budget)" in text


def test_a_preset_sets_budget_and_schedules(reward_file, tmp_path):
    preset = tmp_path / "budget.yaml"
    preset.write_text(
        "gd2po:\n  constraint_key: cost\n  reward_weights: [0, -1]\n"
        "  reward_weight_schedule: ['correctness=0:1:10:step']\n"
        "cost:\n  budget: 0.5\n  lambda_lr: 0.2\n  lambda_log_space: true\n"
    )
    settings = resolve_settings(parse_launcher_args(flags(reward_file, "--gd2po.config", str(preset), weights=None)))
    assert (settings.constraint_key, settings.cost_budget, settings.lambda_lr) == ("cost", 0.5, 0.2)
    assert settings.lambda_log_space and settings.lambda_init == 1.0
    assert settings.weight_schedules == (WeightSchedule("correctness", 0.0, 1.0, 10, "step"),)


# ---- the experience maker: the step's weights ----


def maker_for(reward_file, *extra, weights=("1", "-1"), estimator="gd2po"):
    argv = flags(reward_file, *extra, weights=weights)
    argv[1] = estimator
    return experience_maker(argv)


def batch(rewards, lengths):
    samples = rollout_experiences(rewards, lengths, N, 4, reward_keys=KEYS)
    for i, sample in enumerate(samples):
        sample.index = [i]
    return [Experience.concat_experiences(samples[i : i + 4], 0) for i in range(0, len(samples), 4)]


def step_advantages(maker, rewards, lengths):
    out = maker.compute_advantages_and_returns(batch(rewards, lengths))
    order = torch.cat([torch.tensor(e.index) for e in out]).argsort()
    advantages = torch.cat([e.advantages.sum(-1) / e.action_mask.sum(-1) for e in out])[order]
    return advantages, maker.take_step_report().metrics


def random_step(seed, prompts=5):
    generator = torch.Generator().manual_seed(seed)
    rewards = torch.randint(0, 3, (prompts * N, 2), generator=generator).float()
    return rewards, torch.randint(1, 9, (prompts * N,), generator=generator)


@pytest.mark.parametrize("estimator", ["gd2po", "gdpo"])
def test_at_a_fixed_lambda_the_estimator_is_the_fixed_weight_estimator(reward_file, estimator):
    # lr 0 keeps λ at 0.7: the cost's weight is −0.7 on every step, as --gd2po.reward_weights 1 -0.7 would give.
    maker = maker_for(
        reward_file,
        *("--cost.budget", "0.5", "--gd2po.constraint_key", "cost", "--cost.lambda_init", "0.7"),
        *("--cost.lambda_lr", "0"),
        estimator=estimator,
    )
    fixed = GD2POConfig(
        filter="snr" if estimator == "gd2po" else "none",
        reweight_queries=estimator == "gd2po",
        weights=(1.0, -0.7),
    )
    for seed in range(3):
        rewards, lengths = random_step(seed)
        advantages, metrics = step_advantages(maker, rewards, lengths)
        expected = compute_rollout_advantages(rewards.double(), torch.arange(len(rewards)) // N, lengths, fixed)
        torch.testing.assert_close(advantages, expected.rollout_advantages, atol=1e-6, rtol=1e-6)
        assert metrics["gd2po/lambda/cost"] == 0.7 and metrics["gd2po/weight/cost"] == -0.7
        assert metrics["gd2po/weight/correctness"] == 1.0
        assert metrics["gd2po/conflict_ratio"] == pytest.approx(expected.metrics["conflict_ratio"])


def test_lambda_follows_the_batch_mean_cost_step_by_step(reward_file):
    maker = maker_for(reward_file, "--cost.budget", "0.5", "--gd2po.constraint_key", "cost", "--cost.lambda_lr", "2")
    # λ += 2 · (mean cost − 0.5) from 1: 1 → 3 → 4 → 3 → 2 → 1 → 0 → 0 (clipped at 0, never below)
    costs = [1.5, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    for seed, (cost, lam) in enumerate(zip(costs, [3.0, 4.0, 3.0, 2.0, 1.0, 0.0, 0.0])):
        rewards, lengths = random_step(seed)
        rewards[:, 1] = cost  # every rollout the same cost: the cost dimension adds no advantage, λ still moves
        advantages, metrics = step_advantages(maker, rewards, lengths)
        assert metrics["gd2po/lambda/cost"] == pytest.approx(lam)
        assert metrics["gd2po/constraint_violation/cost"] == pytest.approx(cost - 0.5)
        assert metrics["gd2po/constraint_mean/cost"] == pytest.approx(cost)
        assert metrics["gd2po/weight/cost"] == pytest.approx(-lam)


def test_with_sum_rewards_the_budget_weights_the_cost_before_the_sum(reward_file):
    # GRPO-Lagrangian: one group normalisation of r_correctness − λ·r_cost, λ = 1 + 1·(mean cost − 0.5).
    maker = maker_for(
        reward_file,
        *("--gd2po.sum_rewards", "--cost.budget", "0.5", "--gd2po.constraint_key", "cost", "--cost.lambda_lr", "1"),
        estimator="gdpo",
    )
    rewards, lengths = random_step(7)
    advantages, metrics = step_advantages(maker, rewards, lengths)
    lam = 1.0 + (float(rewards[:, 1].mean()) - 0.5)
    total = (rewards[:, 0] - lam * rewards[:, 1]).double().unsqueeze(1)
    expected = compute_rollout_advantages(
        total, torch.arange(len(rewards)) // N, lengths, GD2POConfig(filter="none", reweight_queries=False)
    )
    torch.testing.assert_close(advantages, expected.rollout_advantages, atol=1e-6, rtol=1e-6)
    assert metrics["gd2po/lambda/cost"] == pytest.approx(lam) and metrics["gd2po/num_reward_dims"] == 1


def test_the_maker_reads_each_schedule_at_the_global_step(reward_file):
    maker = maker_for(
        reward_file,
        *("--gd2po.reward_weight_schedule", "correctness=0:2:4", "cost=-1:0:2:step"),
        weights=None,
    )
    seen = []
    for step in range(6):
        rewards, lengths = random_step(step)
        advantages, metrics = step_advantages(maker, rewards, lengths)
        weights = (metrics["gd2po/weight/correctness"], metrics["gd2po/weight/cost"])
        expected = compute_rollout_advantages(
            rewards.double(), torch.arange(len(rewards)) // N, lengths, GD2POConfig(weights=weights)
        )
        torch.testing.assert_close(advantages, expected.rollout_advantages, atol=1e-6, rtol=1e-6)
        seen.append(weights)
    assert seen == [(0.0, -1.0), (0.5, -1.0), (1.0, 0.0), (1.5, 0.0), (2.0, 0.0), (2.0, 0.0)]
    assert maker.completed_steps == 6


def test_fixed_weights_log_no_weight_metrics(reward_file):
    maker = maker_for(reward_file)
    _, metrics = step_advantages(maker, *random_step(0))
    assert not [name for name in metrics if name.startswith(("gd2po/weight/", "gd2po/lambda/"))]


def test_log_space_dual_ascent_never_reaches_zero_and_recovers():
    # A step of lr · violation = -2000 once underflowed λ to exactly 0, where λ · exp(·) stays (issue 25, item 6).
    lam, _ = dual_ascent(
        1.0, batch_mean=0.0, budget=2000.0, is_cost=True, learning_rate=1.0, max_multiplier=10.0, log_space=True
    )
    assert 0 < lam < 1e-300
    for _ in range(3):  # and it can climb back: λ moves by factors
        lam, _ = dual_ascent(
            lam, batch_mean=800.0, budget=0.0, is_cost=True, learning_rate=1.0, max_multiplier=10.0, log_space=True
        )
    assert lam == 10.0
