"""--gd2po.dynamic_sampling in OpenRLHF's own replacement loop: the real ``SamplesGenerator.generate_samples`` and
``_generate_vllm`` (patched by the plugin) against a scripted rollout actor on a local Ray cluster.

Only vLLM's part is scripted: the actor answers each prompt with the rewards its first word names, and the
generator's ``_dispatch_prompts_to_vllm`` calls it without building vLLM's ``SamplingParams`` (the CPU stand-in
for vllm raises if used). Everything from ``ray.wait`` on is OpenRLHF's loop."""

import logging
import sys

import pytest
import ray
import torch
from gd2po_testing import experience_maker, openrlhf_strategy
from openrlhf.trainer.ppo_utils.samples_generator import SamplesGenerator

from gd2po_openrlhf import compute_rollout_advantages
from gd2po_openrlhf.integration.dynamic_sampling import COUNTS_ATTRIBUTE, SamplingCounts

pytestmark = pytest.mark.ray
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

N = 4
REWARD_FILE_REWARDS = {"correctness": 1.0, "format": 0.0}  # conftest's reward_file
# (correctness, format) of the N rollouts of a prompt, by the prompt's first word; "bad" returns no reward at all.
GROUPS = {
    "pass": [(1, 1), (0, 1), (1, 1), (0, 1)],  # correctness varies, format constant: every rollout trains
    "constant": [(1, 0)] * N,
    "conflict": [(1, 0), (0, 1), (1, 0), (0, 1)],  # every rollout mixed-sign, Σ_k A_k = 0
    "bad": [None] * N,
}


@ray.remote(num_cpus=0)
class ScriptedRolloutActor:
    """Stands in for OpenRLHF's vLLM rollout actor (tests): the responses ``generate_responses`` returns."""

    def get_num_unfinished_requests(self):
        return 0

    async def generate_responses(self, prompt, label, num_samples):
        responses = []
        for rewards in GROUPS[prompt.split()[0]][:num_samples]:
            reward = None if rewards is None else {"correctness": rewards[0], "format": rewards[1]}
            responses.append(
                {
                    "prompt": prompt,
                    "label": label,
                    "images": None,
                    "mm_train_inputs": None,
                    "observation_tokens": [1, 2, 3, 4, 5, 6],
                    "action_ranges": [(3, 6)],
                    "rollout_log_probs": None,
                    "truncated": False,
                    "reward": reward,
                    "scores": reward,
                    "extra_logs": {},
                }
            )
        return responses


class ScriptedSamplesGenerator(SamplesGenerator):
    def _dispatch_prompts_to_vllm(self, prompts, labels, *, images=None, **generate_kwargs):
        # As OpenRLHF dispatches: one remote call per prompt, N samples each (vLLM's SamplingParams aside).
        return [
            self.vllm_engines[0].generate_responses.remote(
                prompt, label, generate_kwargs.get("n_samples_per_prompt", N)
            )
            for prompt, label in zip(prompts, labels)
        ]


@pytest.fixture(scope="module")
def engine():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ScriptedRolloutActor.remote()
    ray.shutdown()


def generator(reward_file, engine, prompts, *flags):
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
            "--rollout.batch_size",
            "4",
            "--gd2po.dynamic_sampling",
            "--gd2po.on_bad_reward",
            "drop_group",
            *flags,
        ]
    )
    # OpenRLHF's prompt dataloader yields (index, prompts, labels, images) batches of one prompt.
    dataloader = [(i, [prompt], [""], [None]) for i, prompt in enumerate(prompts)]
    return ScriptedSamplesGenerator(strategy, dataloader, dataloader, None, [engine])


def served_prompts(experiences):
    return [e.prompts[0] for e in experiences[::N]]


def test_rejected_groups_are_replaced_until_the_batch_is_full(reward_file, engine, caplog):
    prompts = ["constant 0", "pass 1", "conflict 2", "bad 3", "pass 4", "constant 5", "pass 6", "pass 7", "pass 8"]
    samples_generator = generator(reward_file, engine, prompts)
    with caplog.at_level(logging.WARNING):
        experiences, pass_rate, consumed, exhausted = samples_generator.generate_samples()
    # 4 rejected among the first 4 + 3 replacements: 8 prompts drawn for the 4 groups that passed.
    assert sorted(served_prompts(experiences)) == ["pass 1", "pass 4", "pass 6", "pass 7"]
    assert len(experiences) == 4 * N and consumed == 8 and not exhausted and pass_rate is None
    assert vars(experiences[0])[COUNTS_ATTRIBUTE] == SamplingCounts(
        prompts_consumed=8,
        passed=4,
        rejected_constant=2,
        rejected_filtered=1,
        rejected_bad_reward=1,
        generated_rollouts=32,
    )
    assert "bad reward" in caplog.text
    # OpenRLHF's range (0, 1): a passed group's scores spread over [0.25, 0.75] around 0.5
    scores = torch.cat([e.scores for e in experiences]).reshape(-1, N)
    assert scores.mean(dim=1).tolist() == [0.5] * 4 and scores.min() == 0.25 and scores.max() == 0.75
    # The ninth prompt is still in the dataloader for the next batch.
    assert next(samples_generator._dataloader_iter)[1] == ["pass 8"]


def test_at_the_prompt_limit_what_passed_trains_and_the_epoch_goes_on(reward_file, engine, caplog):
    prompts = ["pass 0"] + [f"constant {i}" for i in range(1, 12)] + ["pass 12"]
    samples_generator = generator(reward_file, engine, prompts, "--gd2po.dynamic_sampling_max_prompts_factor", "2")
    with caplog.at_level(logging.WARNING):
        experiences, _, consumed, exhausted = samples_generator.generate_samples()
    assert served_prompts(experiences) == ["pass 0"] and consumed == 8 and not exhausted
    assert (
        "--gd2po.dynamic_sampling drew its limit of 8 prompts (--gd2po.dynamic_sampling_max_prompts_factor 2 × 4) "
        "and 1 of 4 prompt groups passed (pass rate 12.5%: 7 constant, 0 filtered, 0 with a bad reward)"
    ) in caplog.text
    # Not one prompt past the limit was drawn: the next batch starts at the ninth.
    experiences, _, consumed, exhausted = samples_generator.generate_samples()
    assert served_prompts(experiences) == ["pass 12"] and consumed == 5 and exhausted


def test_when_the_dataloader_runs_out_what_passed_trains(reward_file, engine, caplog):
    samples_generator = generator(reward_file, engine, ["pass 0", "constant 1", "conflict 2", "constant 3", "pass 4"])
    experiences, _, consumed, exhausted = samples_generator.generate_samples()
    assert sorted(served_prompts(experiences)) == ["pass 0", "pass 4"] and consumed == 5 and exhausted

    # Nothing passes before the dataloader runs out: an empty batch, reported exhausted (OpenRLHF's trainer then
    # ends the epoch), with a warning; nothing waits.
    samples_generator = generator(reward_file, engine, ["constant 0", "conflict 1", "constant 2"])
    with caplog.at_level(logging.WARNING):
        experiences, _, consumed, exhausted = samples_generator.generate_samples()
    assert experiences == [] and consumed == 3 and exhausted
    assert "--gd2po.dynamic_sampling: none of 3 prompt groups passed; this batch trains nothing" in caplog.text


def test_evaluation_batches_are_never_resampled(reward_file, engine):
    prompts = ["constant 0", "pass 1", "conflict 2", "constant 3"]
    samples_generator = generator(reward_file, engine, prompts)
    experiences = samples_generator.generate_eval_samples(n_samples_per_prompt=N)
    assert sorted(served_prompts(experiences)) == sorted(prompts)
    assert not any(COUNTS_ATTRIBUTE in vars(e) for e in experiences)


def test_the_counts_reach_the_steps_metrics(reward_file, engine):
    samples_generator = generator(reward_file, engine, ["pass 0", "constant 1", "pass 2", "pass 3", "pass 4"])
    experiences, *_ = samples_generator.generate_samples()
    maker = experience_maker(samples_generator.strategy)
    trained = maker.compute_advantages_and_returns(maker.split_rollout_samples(experiences))
    metrics = maker.take_step_report().metrics
    assert metrics["gd2po/dynamic_sampling/pass_rate"] == 0.8
    assert metrics["gd2po/dynamic_sampling/rejected_constant"] == 1.0
    # 5 groups generated (20 rollouts) for 16 rollouts kept by the filter.
    assert metrics["gd2po/dynamic_sampling/generated_per_trained_rollout"] == pytest.approx(20 / 16)
    assert sum(len(e.index) for e in trained) == 16
    assert torch.isfinite(torch.cat([e.advantages.flatten() for e in trained])).all()


def test_the_log_says_what_the_group_test_found_with_the_settings_it_used(reward_file, engine, caplog):
    # OpenRLHF's "Filtered out: avg_reward=0.00 … scores=['0.00', …]" encodes the plugin's verdict; the plugin's
    # own line before it names the reason, and one line per batch the test and its settings (issue 25, item 10).
    prompts = ["constant 0", "pass 1", "conflict 2", "bad 3", "pass 4", "pass 5", "pass 6"]
    samples_generator = generator(
        reward_file, engine, prompts, "--gd2po.filter", "snr", "--gd2po.snr_threshold", "0.3"
    )
    with caplog.at_level(logging.INFO):
        samples_generator.generate_samples()
    text = caplog.text
    assert "rejected the prompt group of 'constant 0': every reward dimension is constant within the group" in text
    assert (
        "rejected the prompt group of 'conflict 2': not at least 1 of 4 rollouts survive the snr filter at τ = 0.3 "
        "with a non-zero score" in text
    )
    assert "rejected the prompt group of 'bad 3': a reward is NaN, infinite or beyond the plugin's bound" in text
    assert "shows this verdict as scores (0.00 = rejected), not rewards" in text
    assert (
        "--gd2po.dynamic_sampling: 4 of 7 prompt groups passed (at least 1 of 4 rollouts survive the snr filter at "
        "τ = 0.3 with a non-zero score); rejected: 1 constant, 1 filtered, 1 with a bad reward" in text
    )


def test_with_four_ranks_a_short_batch_is_topped_up_with_rejected_rollouts_that_never_train(reward_file, engine):
    # 4 policy ranks, micro-batches of 2, optimiser steps of 4: a step must be a multiple of 8 rollouts. One group
    # passes within the limit of 8 prompts; the first rejected group (no reward at all) fills the batch to 8.
    prompts = ["bad 0", "pass 1"] + [f"constant {i}" for i in range(2, 12)]
    shape_flags = ["--actor.num_gpus_per_node", "4", "--rollout.micro_batch_size", "2", "--train.batch_size", "4"]
    flags = shape_flags + ["--gd2po.dynamic_sampling_max_prompts_factor", "2"]
    samples_generator = generator(reward_file, engine, prompts, *flags)
    experiences, _, consumed, _ = samples_generator.generate_samples()
    assert consumed == 8 and len(experiences) == 8
    assert [e.prompts[0] for e in experiences] == ["pass 1"] * N + ["bad 0"] * N
    assert vars(experiences[0])[COUNTS_ATTRIBUTE].filler_rollouts == N

    maker = experience_maker(samples_generator.strategy)
    trained = maker.compute_advantages_and_returns(maker.split_rollout_samples(experiences))
    report = maker.take_step_report()
    # The estimator saw the passed group alone: its advantages are those of that group on its own.
    passed = torch.tensor(GROUPS["pass"], dtype=torch.float64)
    expected = compute_rollout_advantages(
        passed, torch.zeros(N, dtype=torch.int64), torch.full((N,), 3), maker.settings.gd2po_config
    )
    advantages = torch.cat([e.advantages[:, -1] for e in trained])
    indices = [i for e in trained for i in e.index]
    assert sorted(indices) == list(range(8))
    by_index = dict(zip(indices, advantages.tolist()))
    assert [by_index[i] for i in range(N)] == pytest.approx(expected.rollout_advantages.tolist(), abs=1e-6)
    assert [by_index[i] for i in range(N, 2 * N)] == [0.0] * N  # fillers: advantage 0
    # The fillers' missing rewards (NaN markers) reach neither the estimator nor the logs; the step's statistics
    # describe the passed group only.
    assert all(torch.isfinite(e.info["reward/correctness"]).all() for e in trained)
    assert sum(len(e.index) for e in report.generated) == N
    assert report.metrics["gd2po/dynamic_sampling/filler_rollouts"] == N
    # Each micro-batch has the same info keys in the same order.
    assert len({tuple(e.info) for e in trained}) == 1
