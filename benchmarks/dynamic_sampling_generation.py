"""Generation time of --gd2po.dynamic_sampling against the rollouts it generates, as a ratio to a run without it.

OpenRLHF's real ``SamplesGenerator`` (its replacement loop, its load-aware dispatch, the plugin's ``_generate_vllm``)
against ``--engines`` latency engines on a local Ray cluster. An engine is a Ray actor that answers a prompt's n
rollouts, each after ``--tokens`` × ``--token-delay-s``, at most ``--slots`` rollouts at a time (a GPU's batch: the
engine is throughput-bound, as vLLM is at cluster batch sizes). A prompt's first word decides its group's rewards:
``pass`` varies, ``constant`` is rejected by the group test. Two arms, alternated ``--repeats`` times:

- ``off``: dynamic sampling off, every prompt ``pass`` (a batch of ``--prompts`` groups);
- ``on``: dynamic sampling on, a share ``--reject`` of the prompts ``constant``; each rejected group is replaced.

Reported: the median seconds per batch of each arm, the rollouts each generated, and seconds per generated rollout
of ``on`` over ``off``. A ratio near 1 means the replacement loop keeps the engines as busy as a plain batch; above
1, engines sit idle while replacements wait for rejections (the loop dispatches one replacement per rejected group,
when its rollouts come back).

    python benchmarks/dynamic_sampling_generation.py [--prompts 16] [--group-size 4] [--reject 0.5] [--repeats 5]
"""

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
STANDINS = REPO / "dev" / "e2e"  # vllm's SamplingParams as the e2e stand-in has it (the CPU stub raises when used)
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(STANDINS))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--reject", type=float, default=0.5)
    parser.add_argument("--engines", type=int, default=2)
    parser.add_argument("--slots", type=int, default=8, help="rollouts an engine generates at once")
    parser.add_argument("--tokens", type=int, default=20)
    parser.add_argument("--token-delay-s", type=float, default=0.005)
    parser.add_argument("--repeats", type=int, default=5)
    settings = parser.parse_args()

    import ray

    import gd2po_openrlhf

    gd2po_openrlhf.register()
    from openrlhf.trainer.ppo_utils.samples_generator import SamplesGenerator

    from gd2po_openrlhf.integration.launcher_args import ONE_RANK_PER_GROUP, parse_launcher_args

    @ray.remote(num_cpus=0)
    class LatencyEngine:
        """A throughput-bound rollout actor: ``slots`` rollouts at a time, each ``tokens`` × ``delay`` seconds."""

        def __init__(self, slots: int, tokens: int, delay: float):
            self.slots, self.tokens, self.delay = asyncio.Semaphore(slots), tokens, delay
            self.unfinished = 0

        def get_num_unfinished_requests(self):
            return self.unfinished

        async def _rollout(self, prompt, label, rewards):
            async with self.slots:
                await asyncio.sleep(self.tokens * self.delay)
            reward = {"correctness": rewards[0], "format": rewards[1]}
            return {
                "prompt": prompt,
                "label": label,
                "images": None,
                "mm_train_inputs": None,
                "observation_tokens": list(range(1, 4 + self.tokens)),
                "action_ranges": [(3, 3 + self.tokens)],
                "rollout_log_probs": None,
                "truncated": False,
                "reward": reward,
                "scores": reward,
                "extra_logs": {},
            }

        async def generate_responses(
            self, prompt, label, sampling_params, max_length, hf_tokenizer, num_samples, images
        ):
            self.unfinished += num_samples
            try:
                kind = prompt.split()[0]
                groups = [(i % 2, 1) for i in range(num_samples)] if kind == "pass" else [(1, 0)] * num_samples
                return await asyncio.gather(*(self._rollout(prompt, label, rewards) for rewards in groups))
            finally:
                self.unfinished -= num_samples

    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join([str(STANDINS), str(REPO)])}},
    )
    engines = [
        LatencyEngine.remote(settings.slots, settings.tokens, settings.token_delay_s) for _ in range(settings.engines)
    ]
    with tempfile.TemporaryDirectory() as folder:
        reward_file = Path(folder) / "rewards.py"  # named by the flags; the engines return the rewards themselves
        reward_file.write_text("def reward_func(queries, prompts, labels):\n    return {'rewards': 0.0}\n")
        common = ["--advantage_estimator", "gd2po", "--reward.remote_url", str(reward_file)]
        common += ["--gd2po.reward_keys", "correctness", "format", *ONE_RANK_PER_GROUP]
        common += ["--rollout.n_samples_per_prompt", str(settings.group_size)]
        common += ["--rollout.batch_size", str(settings.prompts), "--rollout.max_new_tokens", str(settings.tokens)]
        arms = {
            "off": parse_launcher_args(common),
            "on": parse_launcher_args(
                common + ["--gd2po.dynamic_sampling", "--gd2po.dynamic_sampling_max_prompts_factor", "8"]
            ),
        }
        rng = random.Random(0)
        seconds = {arm: [] for arm in arms}
        generated = {arm: [] for arm in arms}
        for repeat in range(settings.repeats):
            for arm, args in arms.items():
                kinds = ["pass"] * (settings.prompts * 8)
                if arm == "on":
                    kinds = ["constant" if rng.random() < settings.reject else "pass" for _ in kinds]
                dataloader = [(i, [f"{kind} {i}"], [""], [None]) for i, kind in enumerate(kinds)]
                generator = SamplesGenerator(SimpleNamespace(args=args), dataloader, dataloader, None, engines)
                started = time.perf_counter()
                experiences, _, consumed, _ = generator.generate_samples()
                seconds[arm].append(time.perf_counter() - started)
                generated[arm].append(consumed * settings.group_size)
                assert len(experiences) == settings.prompts * settings.group_size, (arm, len(experiences))
            print(
                f"repeat {repeat + 1}/{settings.repeats}: off {seconds['off'][-1]:.3f} s, on {seconds['on'][-1]:.3f} s"
            )
    ray.shutdown()

    per_rollout = {arm: statistics.median(s / g for s, g in zip(seconds[arm], generated[arm])) for arm in arms}
    print(
        f"{settings.engines} engines × {settings.slots} slots, {settings.tokens} tokens × "
        f"{settings.token_delay_s:g} s; {settings.prompts} prompts × {settings.group_size} rollouts a batch, "
        f"reject share {settings.reject:g}"
    )
    for arm in arms:
        print(
            f"  {arm:>3}: median {statistics.median(seconds[arm]):.3f} s a batch, "
            f"{statistics.median(generated[arm]):.0f} rollouts generated, {per_rollout[arm] * 1000:.2f} ms per rollout"
        )
    ideal = settings.tokens * settings.token_delay_s / (settings.engines * settings.slots)
    print(f"  throughput floor: {ideal * 1000:.2f} ms per rollout (every slot busy)")
    print(f"  seconds per generated rollout, on / off: {per_rollout['on'] / per_rollout['off']:.2f}")


if __name__ == "__main__":
    main()
