"""Training-side savings of --gd2po.drop_filtered, on CPU with the demo's tiny policy:
python benchmarks/drop_filtered_training.py

Each step samples a fresh batch from the warm-started demo policy (the demo's rollout path: generate,
OpenRLHF's executor with the task's reward file, SamplesGenerator), computes GD²PO-SNR advantages with the
plugin's experience maker with and without --gd2po.drop_filtered, and times the actor update (OpenRLHF's
PolicyLoss, forward + backward + optimiser steps, as the demo trains) on each, interleaved, each from the
same policy state. Reports the median update time per step, the ratio, and the measured keep ratio.
"""

import argparse
import copy
import random
import statistics
import time
from types import SimpleNamespace

import torch

import gd2po_openrlhf
from gd2po_openrlhf.demo import task
from gd2po_openrlhf.demo.training import (
    TASK_FILE,
    action_log_probs,
    build_tokenizer,
    ppo_update,
    sample_rollouts,
    warm_started_policy,
)
from gd2po_openrlhf.integration.launcher_args import parse_launcher_args


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument(
        "--train-batch-size",
        type=int,
        default=64,
        help="--train.batch_size: one optimiser step per this many rollouts",
    )
    parser.add_argument("--micro-batch-size", type=int, default=16)
    settings = parser.parse_args()
    torch.set_num_threads(2)
    gd2po_openrlhf.register()
    import openrlhf.trainer.ppo_trainer as ppo_trainer
    from openrlhf.models.loss import PolicyLoss
    from openrlhf.trainer.ppo_utils.kl_controller import FixedKLController
    from openrlhf.utils.agent import SingleTurnAgentExecutor

    tokenizer = build_tokenizer()
    policy = warm_started_policy(tokenizer, seed=0, steps=300)
    flags = [
        "--advantage_estimator",
        "gd2po",
        "--gd2po.filter",
        "snr",
        "--gd2po.reward_keys",
        *task.REWARD_KEYS,
        "--reward.remote_url",
        TASK_FILE,
        "--rollout.n_samples_per_prompt",
        str(settings.group_size),
        "--rollout.micro_batch_size",
        str(settings.micro_batch_size),
        "--train.batch_size",
        str(settings.train_batch_size),
        "--algo.kl.init_coef",
        "0",
    ]
    makers = {
        name: ppo_trainer.RemoteExperienceMaker(
            None,
            None,
            None,
            None,
            FixedKLController(0.0),
            SimpleNamespace(args=parse_launcher_args(flags + extra)),
            tokenizer,
        )
        for name, extra in (("all rollouts", []), ("drop_filtered", ["--gd2po.drop_filtered"]))
    }
    samples_generator = ppo_trainer.SamplesGenerator(
        SimpleNamespace(args=makers["all rollouts"].args), None, None, tokenizer, []
    )
    executor = SingleTurnAgentExecutor(TASK_FILE)
    policy_loss = PolicyLoss()
    torch.manual_seed(0)
    rng = random.Random(0)
    times = {name: [] for name in makers}
    keep_ratios, trained_ratios = [], []
    for step in range(settings.steps):
        prompts, labels = zip(*(task.make_prompt(rng) for _ in range(settings.prompts)))
        samples = sample_rollouts(policy, tokenizer, executor, samples_generator, prompts, labels, settings.group_size)
        experiences = makers["all rollouts"].split_rollout_samples(samples)
        with torch.no_grad():
            for experience in experiences:
                experience.action_log_probs = action_log_probs(policy, experience)
                experience.kl = torch.zeros_like(experience.action_log_probs)
        for name, maker in makers.items():
            batch = maker.compute_advantages_and_returns(copy.deepcopy(experiences))
            trained_policy = copy.deepcopy(policy)
            optimizer = torch.optim.AdamW(trained_policy.parameters(), lr=1e-3)
            started = time.perf_counter()
            # the same number of optimiser steps per rollout as a cluster run: one per train batch
            ppo_update(
                trained_policy,
                optimizer,
                policy_loss,
                batch,
                sum(len(e.index) for e in batch) // settings.train_batch_size,
            )
            times[name].append(time.perf_counter() - started)
        keep_ratios.append(makers["drop_filtered"].last_step_report.metrics["gd2po/keep_ratio"])
        trained_ratios.append(makers["drop_filtered"].last_step_report.metrics["gd2po/trained_ratio"])
        print(
            f"step {step + 1}/{settings.steps}: keep {keep_ratios[-1]:.3f}, trained {trained_ratios[-1]:.3f}, "
            f"update {times['all rollouts'][-1]:.3f} s vs {times['drop_filtered'][-1]:.3f} s"
        )

    full, dropped = statistics.median(times["all rollouts"]), statistics.median(times["drop_filtered"])
    print(
        f"\n{settings.prompts} prompts × {settings.group_size} rollouts per step, train batch "
        f"{settings.train_batch_size}, "
        f"{settings.steps} steps (median)"
    )
    print("| actor update per step | seconds |")
    print("|---|---|")
    print(f"| all rollouts | {full:.3f} |")
    print(f"| --gd2po.drop_filtered | {dropped:.3f} |")
    print(
        f"\nmean keep ratio {statistics.fmean(keep_ratios):.3f}, mean share of rollouts trained "
        f"{statistics.fmean(trained_ratios):.3f}; "
        f"update time ratio drop_filtered / all = {dropped / full:.3f}"
    )


if __name__ == "__main__":
    main()
