"""Helpers shared by the integration tests (imported by module name; never as `tests.…`)."""

import os
import subprocess
import sys
from types import SimpleNamespace

import torch

from gd2po_openrlhf.integration.launcher_args import ONE_RANK_PER_GROUP, parse_launcher_args

LAUNCHER = [sys.executable, "-m", "openrlhf.cli.train_ppo_ray"]
# A valid gd2po command line, given a reward source (a reward file returning "correctness", or a server).
VALID_GD2PO = [
    "--advantage_estimator",
    "gd2po",
    "--gd2po.reward_keys",
    "correctness",
    "--rollout.n_samples_per_prompt",
    "4",
]


def launcher_subprocess(argv, env=None, launcher=LAUNCHER) -> subprocess.CompletedProcess:
    """OpenRLHF's launcher (``python -m openrlhf.cli.train_ppo_ray`` by default) in a subprocess of this venv, where
    the installed .pth hook activates the plugin; stdout and stderr captured as text."""
    return subprocess.run(
        launcher + list(argv), capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=300
    )


def openrlhf_strategy(argv):
    """OpenRLHF's real argument parsing, validation and DeepspeedStrategy for ``argv``, stopped before Ray
    (the args come from the plugin's ``parse_launcher_args``, which runs the launcher up to ``train()``)."""
    import openrlhf.utils

    # one rank per group, as in this process; argv's own values win (argparse keeps the last)
    return openrlhf.utils.get_strategy(parse_launcher_args(ONE_RANK_PER_GROUP + list(argv)))


def experience_maker(strategy, kl_coef: float = 0.0, initial_model_group=None, pad_token_id: int = 0):
    """OpenRLHF's ``RemoteExperienceMaker`` (the plugin's ``GD2POExperienceMaker`` once the hook patched
    ``openrlhf.trainer.ppo_trainer``) for a strategy, or for a command line (a list), without model groups: the one
    way the tests drive ``compute_advantages_and_returns``."""
    import openrlhf.trainer.ppo_trainer as ppo_trainer
    from openrlhf.trainer.ppo_utils.kl_controller import FixedKLController

    strategy = openrlhf_strategy(strategy) if isinstance(strategy, list) else strategy
    tokenizer = SimpleNamespace(pad_token_id=pad_token_id)
    return ppo_trainer.RemoteExperienceMaker(
        None, None, None, initial_model_group, FixedKLController(kl_coef), strategy, tokenizer
    )


def rollout_experiences(rewards, lengths, n_samples_per_prompt, micro_batch_size, seed=0, reward_keys=None):
    """One Experience per rollout, as SamplesGenerator makes them, with per-dimension rewards in info.

    rewards [B, K] in prompt order (n_samples_per_prompt consecutive rollouts per prompt); lengths [B].
    """
    from openrlhf.trainer.ppo_utils.experience import Experience

    generator = torch.Generator().manual_seed(seed)
    reward_keys = reward_keys or [f"dim{k}" for k in range(rewards.shape[1])]
    samples = []
    for i, length in enumerate(lengths.tolist()):
        prompt_length = 3
        sequences = torch.randint(5, 50, (1, prompt_length + length), generator=generator)
        action_mask = torch.zeros(1, prompt_length + length - 1, dtype=torch.bool)
        action_mask[0, prompt_length - 1 :] = True
        info = {f"reward/{key}": rewards[i, k : k + 1].float() for k, key in enumerate(reward_keys)}
        samples.append(
            Experience(
                sequences=sequences,
                attention_mask=torch.ones_like(sequences),
                action_mask=action_mask,
                prompts=[f"prompt {i // n_samples_per_prompt}"],
                labels=[""],
                rewards=rewards[i : i + 1].sum(1).float(),
                response_length=torch.tensor([length]),
                truncated=torch.tensor([False]),
                total_length=torch.tensor([prompt_length + length]),
                info=info,
            )
        )
    return samples


class ScriptedEngine:
    """Stands in for vLLM's engine only (tests): answers every prompt with the same continuation tokens."""

    def __init__(self, token_ids):
        self.token_ids = list(token_ids)

    async def generate(self, prompt_token_ids, sampling_params, multi_modal_data=None):
        from types import SimpleNamespace

        output = SimpleNamespace(token_ids=self.token_ids, finish_reason="stop", logprobs=None)
        return SimpleNamespace(outputs=[output])


def wait_until_serving(port: int, process, log, timeout_s: float = 60) -> None:
    """Poll GET /health of a reward server subprocess on loopback until it answers; ``log()`` is its output, shown
    if it exits or does not come up within ``timeout_s``."""
    import time
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
            return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    f"the reward server on port {port} did not come up (exit code {process.poll()}): {log()}"
                )
            time.sleep(0.2)
