"""What --gd2po.dynamic_sampling's group test adds to the trainer's rollout processing, as a ratio.

OpenRLHF's ``SamplesGenerator`` turns each rollout actor response into an Experience
(``_process_response_into_experience``, patched by the plugin) as it arrives. With dynamic sampling, a
``GroupTally`` also judges each complete group (``judge_group``: the estimator on G rollouts). Both arms process
the same prompt groups of G responses (``--response-tokens`` tokens each, three remote reward dimensions) in
this process, alternating, REPEATS times; the report is the median time per group of each arm and their ratio.
Generation itself (vLLM) is not part of either arm: against it the test is smaller still.

    python benchmarks/dynamic_sampling_overhead.py [--groups 200] [--group-size 8] [--response-tokens 512]
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", type=int, default=200)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--response-tokens", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=7)
    settings = parser.parse_args()

    import gd2po_openrlhf

    gd2po_openrlhf.register()
    from openrlhf.trainer.ppo_utils.samples_generator import SamplesGenerator

    from gd2po_openrlhf.integration.dynamic_sampling import GroupTally
    from gd2po_openrlhf.integration.launcher_args import parse_launcher_args
    from gd2po_openrlhf.integration.settings import resolve_settings

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as folder:
        reward_file = Path(folder) / "rewards.py"
        reward_file.write_text("def reward_func(queries, prompts, labels):\n    return {'rewards': 0.0}\n")
        args = parse_launcher_args(
            [
                "--advantage_estimator",
                "gd2po",
                "--reward.remote_url",
                str(reward_file),
                "--gd2po.reward_keys",
                "correctness",
                "format",
                "length",
                "--rollout.n_samples_per_prompt",
                str(settings.group_size),
                "--gd2po.dynamic_sampling",
            ]
        )
    generator = SamplesGenerator.__new__(SamplesGenerator)  # only the attributes the conversion reads
    generator.args = args
    run = resolve_settings(args)
    rng = torch.Generator().manual_seed(0)
    prompt_tokens = 64
    groups = []
    for g in range(settings.groups):
        rewards = torch.randint(0, 3, (settings.group_size, 3), generator=rng).tolist()
        groups.append(
            [
                {
                    "prompt": f"prompt {g}",
                    "label": "",
                    "images": None,
                    "mm_train_inputs": None,
                    "observation_tokens": list(range(prompt_tokens + settings.response_tokens)),
                    "action_ranges": [(prompt_tokens, prompt_tokens + settings.response_tokens)],
                    "rollout_log_probs": None,
                    "truncated": False,
                    "reward": dict(zip(("correctness", "format", "length"), row)),
                    "scores": None,
                    "extra_logs": {},
                }
                for row in rewards
            ]
        )
    max_len = prompt_tokens + settings.response_tokens

    def process(with_test: bool) -> float:
        generator.gd2po_group_tally = GroupTally(run, settings.group_size, (0.0, 1.0)) if with_test else None
        started = time.perf_counter()
        for group in groups:
            [generator._process_response_into_experience(response, max_len=max_len) for response in group]
        elapsed = time.perf_counter() - started
        generator.gd2po_group_tally = None
        return elapsed / len(groups)

    process(True)  # warm-up
    baseline, tested = [], []
    for _ in range(settings.repeats):
        baseline.append(process(False))
        tested.append(process(True))
    base, test = statistics.median(baseline), statistics.median(tested)
    print(
        f"{settings.groups} groups of {settings.group_size} rollouts, {settings.response_tokens} response tokens, "
        f"3 reward dimensions; median of {settings.repeats} passes, 1 torch thread"
    )
    print(f"  Experiences only (OpenRLHF + the plugin's reward columns): {base * 1e3:.3f} ms per group")
    print(f"  + the dynamic-sampling group test:                          {test * 1e3:.3f} ms per group")
    print(f"  ratio {test / base:.2f} (the test alone: {(test - base) * 1e3:.3f} ms per group)")


if __name__ == "__main__":
    main()
