"""The demo's training loop, one cluster-run step at a time, with transformers' ``generate`` in place of vLLM:
  1. P prompts × G rollouts sampled from the policy with ``generate`` (with --gd2po.dynamic_sampling, rounds of
     OpenRLHF's dynamic-filtering loop: ``sample_dynamically``);
  2. each rollout goes through OpenRLHF's ``SingleTurnAgentExecutor`` (what the vLLM rollout actors
     run), which calls the reward file ``task.py``: one value per reward dimension;
  3. OpenRLHF's ``SamplesGenerator`` turns each response into an ``Experience`` (the plugin's patch puts
     the dimensions into ``info["reward/<key>"]``) and the experience maker splits them into micro-batches;
  4. old log-probs (the policy actor's job on a cluster; no reference model, no KL), then the experience
     maker's ``compute_advantages_and_returns``: OpenRLHF's own for group_norm, the plugin's for gd2po/gdpo;
  5. OpenRLHF's ``PolicyLoss`` (PPO clip), one optimiser step per mini-batch.
Each run's ``args`` come from OpenRLHF's own launcher parser (extended by the plugin) applied to the
equivalent ``train_ppo_ray`` flags.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import math
import random
import shutil
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Dict, List, Optional
from unittest import mock

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from tqdm import tqdm
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

import gd2po_openrlhf
from gd2po_openrlhf import estimator
from gd2po_openrlhf.integration.dynamic_sampling import COUNTS_ATTRIBUTE, GroupTally
from gd2po_openrlhf.integration.launcher_args import ONE_RANK_PER_GROUP, parse_launcher_args
from gd2po_openrlhf.integration.settings import RunSettings
from gd2po_openrlhf.reward_pipeline import stack_rewards

from . import task

TASK_FILE = str(Path(task.__file__).resolve())
KEYS = list(task.REWARD_KEYS)
# The demo's reward settings: a weight per dimension of task.py (0: logged, not trained), extra flags, and the
# dimensions when they are not KEYS.
SETTINGS = {
    # The GD²PO authors' main setting: correctness + their capped length reward.
    "main": {"weights": (1, 0, 1, 0), "flags": []},
    # Their three-reward setting: correctness + format + length.
    "three": {"weights": (1, 1, 1, 0), "flags": []},
    # The trap: brevity, which the empty answer wins outright, beside correctness and format.
    "brevity": {"weights": (1, 1, 0, 1), "flags": []},
    # The same, with brevity paid only on correct answers (GDPO's conditioned reward).
    "conditioned": {"weights": (1, 1, 0, 1), "flags": ["--gd2po.reward_condition", "brevity=correctness>=1"]},
    # Three noisy verifiers of one clean correctness (each flipped with p = 0.25), trained; the clean correctness
    # logged as the reference: does the sum side with the truth where the verifiers disagree?
    "noisy": {
        "weights": (0, 0, 0, 0, 1, 1, 1),
        "flags": ["--gd2po.reference_key", "correctness"],
        "keys": KEYS + list(task.VERIFIER_KEYS),
    },
}
DEMO_SETTINGS = ["main", "three", "brevity", "conditioned"]  # make demo's; the study adds noisy
# The estimators' train_ppo_ray flags. GRPO is the plugin's group normalisation of the weighted sum, as in the
# recipes' GRPO scripts, so that every estimator sees the same four dimensions and weights.
# GRPO and GDPO log what the hard filter would remove (gd2po/filtered_mass_ratio), changing nothing they train on.
ESTIMATORS = {
    "grpo": ["--advantage_estimator", "gdpo", "--gd2po.sum_rewards", "--gd2po.what_if_filter", "hard"],
    "gdpo": ["--advantage_estimator", "gdpo", "--gd2po.what_if_filter", "hard"],
    "gd2po_hard": ["--advantage_estimator", "gd2po", "--gd2po.filter", "hard"],
    "gd2po_snr": ["--advantage_estimator", "gd2po", "--gd2po.filter", "snr", "--gd2po.snr_threshold", "0.8"],
    "gd2po_snr_0.5": ["--advantage_estimator", "gd2po", "--gd2po.filter", "snr", "--gd2po.snr_threshold", "0.5"],
    "gd2po_snr_0.3": ["--advantage_estimator", "gd2po", "--gd2po.filter", "snr", "--gd2po.snr_threshold", "0.3"],
    # The study's controls. random_drop runs GD²PO-hard's flags, but the demo swaps the filter's mask for a random
    # one with as many drops per group (``random_drop_filter``): same rate, same κ, same whitening, other rollouts.
    "random_drop": ["--advantage_estimator", "gd2po", "--gd2po.filter", "hard"],
    "no_kappa": ["--advantage_estimator", "gd2po", "--gd2po.filter", "hard", "--gd2po.no_reweight_queries"],
}
DEMO_ESTIMATORS = ["grpo", "gdpo", "gd2po_hard", "gd2po_snr"]  # make demo's; the study runs every one
# Brevity as a constraint instead of a reward: "at most WORD_BUDGET words on average", which the full scratchpad
# and its answer (6 words) meet. brevity = 1 − words / 8, so the budget is a floor on mean brevity (weight +1: +λ),
# and λ falls to 0 once responses are short enough.
WORD_BUDGET = 6
BUDGET_FLAGS = [
    "--gd2po.constraint_key",
    "brevity",
    "--cost.budget",
    f"{1 - WORD_BUDGET / task.MAX_RESPONSE_TOKENS:.6f}",
    "--cost.lambda_lr",
    "1",
]
# Arms beyond the default (setting × estimator), each in the setting where it makes sense: dynamic sampling where
# groups can be all-wrong (three rewards), the budget where brevity is the trap.
EXTRA_ARMS = {
    "three/gdpo_ds": ("three", "gdpo", ["--gd2po.dynamic_sampling"]),
    "three/gd2po_snr_ds": ("three", "gd2po_snr", ["--gd2po.dynamic_sampling"]),
    "brevity/gdpo_budget": ("brevity", "gdpo", BUDGET_FLAGS),
    "brevity/gd2po_snr_budget": ("brevity", "gd2po_snr", BUDGET_FLAGS),
}


def arm_flags(arm: str) -> List[str]:
    """The train_ppo_ray flags of an arm ``SETTING/ESTIMATOR`` (or an ``EXTRA_ARMS`` name), without the common ones."""
    setting, estimator_name, extra = EXTRA_ARMS.get(arm) or (*arm.split("/"), [])
    weights = [str(w) for w in SETTINGS[setting]["weights"]]
    return (
        ESTIMATORS[estimator_name]
        + ["--gd2po.reward_keys", *setting_keys(setting), "--gd2po.reward_weights", *weights]
        + (SETTINGS[setting]["flags"] + extra)
    )


def arm_setting(arm: str) -> str:
    return (EXTRA_ARMS.get(arm) or arm.split("/"))[0]


def arm_estimator(arm: str) -> str:
    return (EXTRA_ARMS.get(arm) or arm.split("/"))[1]


def setting_keys(setting: str) -> List[str]:
    """The reward dimensions a setting's runs log, in the order of its weights."""
    return SETTINGS[setting].get("keys", KEYS)


def random_drop_filter(group_size: int, generator: torch.Generator):
    """The random-drop control's stand-in for ``estimator.filter_keep``: in each prompt group, as many rollouts
    dropped as the configured filter would drop there, chosen uniformly at random within the group, so that κ and
    the whitening see the same counts and only which rollouts go differs. Groups are consecutive runs of
    ``group_size`` rollouts, as OpenRLHF (and the demo) order a batch."""
    filter_keep = estimator.filter_keep

    def keep(name: str, conflict: torch.Tensor, snr_ratio: torch.Tensor, snr_threshold: float) -> torch.Tensor:
        would_keep = filter_keep(name, conflict, snr_ratio, snr_threshold).view(-1, group_size)
        dropped = (~would_keep).sum(1, keepdim=True)
        rank = torch.rand(would_keep.shape, generator=generator).argsort(1).argsort(1)  # a random order per group
        return (rank >= dropped).view(-1)

    return keep


def build_tokenizer() -> PreTrainedTokenizerFast:
    word_level = Tokenizer(models.WordLevel({word: i for i, word in enumerate(task.VOCAB)}, unk_token="[UNK]"))
    word_level.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=word_level, unk_token="[UNK]", pad_token=task.PAD, eos_token=task.EOS
    )


def warm_started_policy(tokenizer, seed: int, steps: int, batch_size: int = 64, lr: float = 3e-3) -> LlamaForCausalLM:
    """A 2-layer Llama from a config (random init), then supervised steps on the noisy teacher's responses
    (loss on the response tokens only), so that RL starts from a policy that answers, sometimes well."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=32,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    policy = LlamaForCausalLM(config)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=lr)
    rng = random.Random(seed)
    prompt_tokens = len(task.make_prompt(random.Random(0))[0].split())
    for _ in range(steps):
        prompts, labels = zip(*(task.make_prompt(rng) for _ in range(batch_size)))
        texts = [f"{prompt} {task.demonstration(rng, prompt)}" for prompt in prompts]
        batch = tokenizer(texts, padding=True, return_tensors="pt", add_special_tokens=False)
        targets = batch.input_ids.masked_fill(batch.attention_mask == 0, -100)
        targets[:, :prompt_tokens] = -100
        loss = policy(**batch, labels=targets).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return policy


def action_log_probs(policy, experience) -> torch.Tensor:
    """log π(token) of each response token, aligned with ``action_mask`` as OpenRLHF's Actor returns it."""
    sequences, attention_mask = experience.sequences, experience.attention_mask
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)
    logits = policy(sequences, attention_mask=attention_mask, position_ids=position_ids).logits.float()
    log_probs = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, sequences[:, 1:].unsqueeze(-1)).squeeze(-1)
    return log_probs * experience.action_mask


async def _engine_answer(token_ids, finish_reason, *args, **kwargs):
    return SimpleNamespace(outputs=[SimpleNamespace(token_ids=token_ids, finish_reason=finish_reason, logprobs=None)])


def sample_rollouts(
    policy, tokenizer, executor, samples_generator, prompts, labels, group_size: int, nonces: Optional[List] = None
):
    """G continuations per prompt from ``generate``, then OpenRLHF's rollout path: the executor (reward file)
    and the trainer-side conversion into one Experience per rollout, in prompt order. ``nonces``, one per rollout,
    go after each rollout's label (the noisy verifiers' randomness, ``task.noisy_verifiers``)."""
    prompt_ids = tokenizer(list(prompts), return_tensors="pt", add_special_tokens=False).input_ids  # equal lengths
    with torch.no_grad():
        sequences = policy.generate(
            prompt_ids.repeat_interleave(group_size, 0),
            attention_mask=torch.ones(len(prompts) * group_size, prompt_ids.shape[1], dtype=torch.long),
            do_sample=True,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            max_new_tokens=task.MAX_RESPONSE_TOKENS,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    continuations = sequences[:, prompt_ids.shape[1] :]
    # generate pads the finished rollouts: keep each up to and including its first [EOS], as vLLM returns it.
    is_eos = continuations == tokenizer.eos_token_id
    lengths = torch.where(is_eos.any(1), is_eos.int().argmax(1) + 1, continuations.shape[1]).tolist()
    finished = is_eos.any(1).tolist()
    params = SimpleNamespace(max_tokens=task.MAX_RESPONSE_TOKENS, logprobs=None)
    max_len = prompt_ids.shape[1] + task.MAX_RESPONSE_TOKENS

    async def execute_all():
        return await asyncio.gather(
            *(
                executor.execute(
                    prompts[i // group_size],
                    labels[i // group_size] if nonces is None else f"{labels[i // group_size]} {nonces[i]}",
                    params,
                    max_len,
                    tokenizer,
                    SimpleNamespace(
                        generate=functools.partial(_engine_answer, row[:length].tolist(), "stop" if done else "length")
                    ),
                )
                for i, (row, length, done) in enumerate(zip(continuations, lengths, finished))
            )
        )

    responses = asyncio.run(execute_all())
    return [samples_generator._process_response_into_experience(response, max_len=max_len) for response in responses]


def sample_dynamically(
    policy,
    tokenizer,
    executor,
    samples_generator,
    settings: RunSettings,
    prompt_rng,
    num_prompts: int,
    group_size: int,
):
    """OpenRLHF's dynamic-filtering loop (``SamplesGenerator._generate_vllm``) as the demo runs it, in rounds: the
    plugin's ``GroupTally`` judges each group while ``_process_response_into_experience`` builds its Experiences,
    OpenRLHF's range test on their scores keeps it or not, and every rejected group is replaced by a fresh prompt,
    at most ⌈factor × ``num_prompts``⌉ prompts in all. Rounds instead of one prompt at a time give the same groups:
    the policy does not change while a batch is sampled.

    Returns every rollout generated and the rollouts of the groups that passed (the batch).
    """
    max_prompts = math.ceil(settings.dynamic_sampling_max_prompts_factor * num_prompts)
    low, high = samples_generator.args.algo.dynamic_filtering_range
    tally = samples_generator.gd2po_group_tally = GroupTally(settings, group_size, (low, high))
    generated, batch, drawn = [], [], 0
    try:
        while len(batch) < num_prompts * group_size and drawn < max_prompts:
            wanted = min(num_prompts - len(batch) // group_size, max_prompts - drawn)
            prompts, labels = zip(*(task.make_prompt(prompt_rng) for _ in range(wanted)))
            drawn += wanted
            samples = sample_rollouts(policy, tokenizer, executor, samples_generator, prompts, labels, group_size)
            generated += samples
            for start in range(0, len(samples), group_size):
                group = samples[start : start + group_size]
                if low < sum(float(e.scores[0]) for e in group) / group_size < high:
                    batch += group
    finally:
        samples_generator.gd2po_group_tally = None
    tally.counts.prompts_consumed = drawn
    if batch:
        setattr(batch[0], COUNTS_ATTRIBUTE, tally.counts)
    return generated, batch


def ppo_update(policy, optimizer, policy_loss, experiences, num_mini_batches: int) -> List[float]:
    """The actor's update: consecutive micro-batches form ``num_mini_batches`` mini-batches, one optimiser
    step each (gradients averaged over the mini-batch's micro-batches, clipped at norm 1)."""
    per_mini_batch = max(1, len(experiences) // num_mini_batches)
    losses = []
    for start in range(0, len(experiences), per_mini_batch):
        mini_batch = experiences[start : start + per_mini_batch]
        for experience in mini_batch:
            loss, _, _, _, _ = policy_loss(
                action_log_probs(policy, experience),
                experience.action_log_probs,
                experience.advantages,
                action_mask=experience.action_mask,
            )
            (loss / len(mini_batch)).backward()
            losses.append(loss.item())
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
    return losses


def common_flags(settings) -> List[str]:
    """The flags every arm shares (the reward file, the group size, no KL, one process: one rank per group)."""
    return ONE_RANK_PER_GROUP + [
        "--reward.remote_url",
        TASK_FILE,
        "--rollout.n_samples_per_prompt",
        str(settings.rollouts_per_prompt),
        "--rollout.micro_batch_size",
        str(settings.micro_batch_size),
        "--algo.kl.init_coef",
        "0",
    ]


def run_arm(arm: str, settings, warm_policy, tokenizer, seed: int, writer, progress: bool = True):
    """One RL run; returns the per-step curves (also written to TensorBoard under the cluster run's tags).

    ``reward`` is the setting's objective (its fixed weights times the dimensions), ``reward/<key>`` every
    dimension's mean over the rollouts generated in the step (with dynamic sampling, rejected groups too).
    The ``random_drop`` control runs with ``random_drop_filter`` in place of the estimator's filter.
    """
    import openrlhf.trainer.ppo_trainer as ppo_trainer
    from openrlhf.models.loss import PolicyLoss
    from openrlhf.trainer.ppo_utils.kl_controller import FixedKLController
    from openrlhf.utils.agent import SingleTurnAgentExecutor

    group_size = settings.rollouts_per_prompt
    strategy = SimpleNamespace(args=parse_launcher_args(arm_flags(arm) + common_flags(settings)))
    maker = ppo_trainer.RemoteExperienceMaker(None, None, None, None, FixedKLController(0.0), strategy, tokenizer)
    samples_generator = ppo_trainer.SamplesGenerator(strategy, None, None, tokenizer, [])
    executor = SingleTurnAgentExecutor(TASK_FILE)
    policy = copy.deepcopy(warm_policy)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=settings.lr)
    policy_loss = PolicyLoss(clip_eps_low=0.2, clip_eps_high=0.2)
    # Same seed, same prompts, the same first samples and the same verifier noise for every arm.
    torch.manual_seed(seed)
    prompt_rng = random.Random(10_000 + seed)
    keys = setting_keys(arm_setting(arm))
    noise_rng = random.Random(30_000 + seed) if keys != KEYS else None
    rollouts_per_step = settings.prompts_per_step * group_size
    weights = torch.tensor(SETTINGS[arm_setting(arm)]["weights"], dtype=torch.float64)
    curves: Dict[str, List[float]] = {}
    steps = range(1, settings.steps + 1)
    if progress:
        steps = tqdm(steps, desc=f"{arm:<26} seed {seed}", file=sys.stdout, mininterval=1.0)
    control = contextlib.nullcontext()
    if arm_estimator(arm) == "random_drop":
        drop_generator = torch.Generator().manual_seed(40_000 + seed)
        control = mock.patch.object(estimator, "filter_keep", random_drop_filter(group_size, drop_generator))
    with control:
        for step in steps:
            if maker.settings.dynamic_sampling:
                generated, batch = sample_dynamically(
                    policy,
                    tokenizer,
                    executor,
                    samples_generator,
                    maker.settings,
                    prompt_rng,
                    settings.prompts_per_step,
                    group_size,
                )
            else:
                prompts, labels = zip(*(task.make_prompt(prompt_rng) for _ in range(settings.prompts_per_step)))
                nonces = [noise_rng.getrandbits(64) for _ in range(rollouts_per_step)] if noise_rng else None
                generated = batch = sample_rollouts(
                    policy, tokenizer, executor, samples_generator, prompts, labels, group_size, nonces
                )
            rewards = stack_rewards([e.info for e in generated], keys)
            values = {f"reward/{key}": float(rewards[:, k].mean()) for k, key in enumerate(keys)}
            values["reward"] = float((rewards * weights).sum(1).mean())
            values["response_words"] = task.MAX_RESPONSE_TOKENS * (1.0 - values["reward/brevity"])  # never clipped
            values["generated_rollouts"] = float(len(generated))
            if not batch:  # dynamic sampling: no group passed (e.g. a collapsed policy, every group constant)
                metrics = {
                    "gd2po/conflict_ratio": 0.0,
                    "gd2po/keep_ratio": 0.0,
                    "gd2po/dynamic_sampling/pass_rate": 0.0,
                }
                metrics.update({"gd2po/cancelled_mass_ratio": 0.0, "gd2po/filtered_mass_ratio": 0.0})
                values.update(advantage_abs_mean=0.0, policy_loss=0.0, **metrics)
                for key, value in values.items():
                    curves.setdefault(key, []).append(value)
                    writer.add_scalar(f"train/{key}", value, step)
                continue
            experiences = maker.split_rollout_samples(batch)
            with torch.no_grad():
                for experience in experiences:
                    experience.action_log_probs = action_log_probs(policy, experience)
                    experience.kl = torch.zeros_like(experience.action_log_probs)
            experiences = maker.compute_advantages_and_returns(experiences)

            metrics = dict(maker.take_step_report().metrics)
            lengths = torch.cat([e.action_mask.sum(-1) for e in experiences])
            advantage_abs = sum(float(e.advantages.abs().sum()) for e in experiences) / float(lengths.sum())

            losses = ppo_update(policy, optimizer, policy_loss, experiences, settings.updates_per_step)

            values["advantage_abs_mean"] = advantage_abs
            values["policy_loss"] = sum(losses) / len(losses)
            values.update(metrics)
            for key, value in values.items():
                curves.setdefault(key, []).append(value)
                writer.add_scalar(f"train/{key}", value, step)
            if progress:
                steps.set_postfix(
                    correct=f"{values['reward/correctness']:.2f}",
                    conflict=f"{metrics['gd2po/conflict_ratio']:.2f}",
                    refresh=False,
                )
    return curves


def warm_start_rewards(policy, tokenizer, seed: int, settings) -> Dict[str, float]:
    """The warm-started policy's mean rewards on one step's worth of fresh prompts (its own, not any arm's), sampled
    and scored as RL samples and scores them: the tables' warm-start row."""
    import openrlhf.trainer.ppo_trainer as ppo_trainer
    from openrlhf.utils.agent import SingleTurnAgentExecutor

    # noisy declares every dimension: the warm start is scored on all of them.
    strategy = SimpleNamespace(args=parse_launcher_args(arm_flags("noisy/gdpo") + common_flags(settings)))
    samples_generator = ppo_trainer.SamplesGenerator(strategy, None, None, tokenizer, [])
    torch.manual_seed(20_000 + seed)
    rng = random.Random(20_000 + seed)
    prompts, labels = zip(*(task.make_prompt(rng) for _ in range(4 * settings.prompts_per_step)))
    nonces = [rng.getrandbits(64) for _ in range(len(prompts) * settings.rollouts_per_prompt)]
    samples = sample_rollouts(
        policy,
        tokenizer,
        SingleTurnAgentExecutor(TASK_FILE),
        samples_generator,
        prompts,
        labels,
        settings.rollouts_per_prompt,
        nonces,
    )
    keys = setting_keys("noisy")
    means = stack_rewards([e.info for e in samples], keys).mean(dim=0).tolist()
    return {f"reward/{key}": mean for key, mean in zip(keys, means)}


# ---- the demo's jobs (run in the demo's process or in its worker processes: module-level, so spawn finds them)


def start_worker() -> None:
    # One thread per process: the model is tiny, so more threads mostly add synchronisation, and on a busy machine
    # they oversubscribe the cores (60x slower was seen).
    torch.set_num_threads(1)
    gd2po_openrlhf.register()  # explicit, so the demo also runs with GD2PO_DISABLE=1 or without the .pth


def warm_start(job) -> Dict[str, float]:
    """Job 1 of a seed: the warm-started policy, saved for the seed's arms, and its own rewards."""
    settings, seed = job
    tokenizer = build_tokenizer()
    policy = warm_started_policy(tokenizer, seed, settings.warm_start_steps)
    torch.save(policy.state_dict(), settings.output_dir / "warm_start" / f"seed{seed}.pt")
    return warm_start_rewards(policy, tokenizer, seed, settings)


def train_arm(job):
    """One arm on one seed, from the seed's saved warm start; returns its curves and its wall time."""
    from torch.utils.tensorboard import SummaryWriter

    settings, arm, seed = job
    tokenizer = build_tokenizer()
    policy = warm_started_policy(tokenizer, seed, steps=0)  # the architecture; the weights come from the file
    state = torch.load(settings.output_dir / "warm_start" / f"seed{seed}.pt", weights_only=True)
    policy.load_state_dict(state)
    log_dir = settings.output_dir / arm / f"seed{seed}"
    shutil.rmtree(log_dir, ignore_errors=True)  # one event file per run, not a mix of old and new
    started = time.time()
    with SummaryWriter(str(log_dir)) as writer:
        curves = run_arm(arm, settings, policy, tokenizer, seed, writer, progress=settings.workers == 1)
    print(f"  {arm:<26} seed {seed}: {time.time() - started:.1f} s", flush=True)
    return curves, time.time() - started
