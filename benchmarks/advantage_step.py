"""The advantage step at cluster batch sizes, on CPU: python benchmarks/advantage_step.py

One batch as OpenRLHF's trainer holds it: 512 prompts × 8 rollouts, K = 3 reward dimensions, response lengths
uniform in [1, 1024], micro-batches of 16 rollouts as `Experience` objects. Timed in this process,
interleaved, median of --repeats (of 3 × --repeats pairs for (1)), each call after writing --flush-mb MiB so
that every measurement and its floor start with cold caches:
  (1) the estimator core: gd2po_openrlhf.compute_advantages (SNR filter, τ = 0.8) on [B, K] rewards and a
      [B, 1024] float response mask; then on a bool mask, and its per-rollout math alone (from the lengths), and
      the mass diagnostics in it alone (estimator.mass_diagnostics); and compute_advantages' 0/1 test of a float
      mask alone, in plain torch (the estimator's) and by bit patterns (its earlier one-pass version, kept here);
  (2) a loop implementation of the same formulas, written here the way the authors' code computes them
      (Python loops over groups and rollouts), checked equal to (1) first;
  (3) the plugin's compute_advantages_and_returns (gd2po) on the Experience objects;
  (4) OpenRLHF's compute_advantages_and_returns (group_norm) on the same objects;
and (3) and (4) again with OpenRLHF's KL in the reward (β = 0.01). Then (1) and (3) at 4× and 16× the
rollouts, with the peak resident-memory growth of (3) (RSS sampled every 0.5 ms while it runs).
"""

import argparse
import math
import statistics
import threading
import time
from types import SimpleNamespace

import torch

import gd2po_openrlhf
from gd2po_openrlhf import GD2POConfig, compute_advantages, compute_rollout_advantages
from gd2po_openrlhf.estimator import mass_diagnostics
from gd2po_openrlhf.integration.launcher_args import ONE_RANK_PER_GROUP, parse_launcher_args

PROMPTS, GROUP, DIMS, MAX_LEN, MICRO_BATCH, PROMPT_LEN = 512, 8, 3, 1024, 16, 16
KEYS = ["correctness", "format", "length"]
CONFIG = GD2POConfig(filter="snr", snr_threshold=0.8, reward_keys=tuple(KEYS))


def make_batch(prompts: int, seed: int = 0):
    """Rewards [B, K] (a 0/1 correctness, a 0/1 format and a [0, 1] length score), response lengths, and
    the same rollouts as micro-batched Experience objects in prompt order."""
    from openrlhf.trainer.ppo_utils.experience import Experience

    generator = torch.Generator().manual_seed(seed)
    batch = prompts * GROUP
    rewards = torch.stack(
        [
            torch.randint(0, 2, (batch,), generator=generator).float(),
            torch.randint(0, 2, (batch,), generator=generator).float(),
            torch.rand(batch, generator=generator),
        ],
        dim=1,
    )
    lengths = torch.randint(1, MAX_LEN + 1, (batch,), generator=generator)
    experiences = []
    for start in range(0, batch, MICRO_BATCH):
        rows = slice(start, start + MICRO_BATCH)
        length = lengths[rows]
        width = PROMPT_LEN + int(length.max())
        positions = torch.arange(width)
        action_mask = (positions[:-1] >= PROMPT_LEN - 1) & (positions[:-1] < PROMPT_LEN - 1 + length.unsqueeze(1))
        experiences.append(
            Experience(
                sequences=torch.randint(5, 30000, (len(length), width), generator=generator),
                attention_mask=(positions < PROMPT_LEN + length.unsqueeze(1)).long(),
                action_mask=action_mask,
                action_log_probs=torch.zeros(action_mask.shape),
                rewards=rewards[rows].sum(1),
                response_length=length.float(),
                total_length=(PROMPT_LEN + length).float(),
                index=list(range(start, start + len(length))),
                prompts=[f"prompt {i // GROUP}" for i in range(start, start + len(length))],
                labels=[""] * len(length),
                info={f"reward/{key}": rewards[rows, k].clone() for k, key in enumerate(KEYS)},
            )
        )
    return rewards, lengths, experiences


def loop_reference(rewards, group_ids, response_mask, cfg: GD2POConfig) -> torch.Tensor:
    """The same estimator with Python loops over groups and rollouts, as the authors' code computes it."""
    batch, dims = rewards.shape
    lengths = response_mask.sum(1).tolist()
    weights = list(cfg.weights) if cfg.weights else [1.0] * dims
    advantages = [[0.0] * dims for _ in range(batch)]
    groups = {}
    for i, g in enumerate(group_ids.tolist()):
        groups.setdefault(g, []).append(i)
    values = rewards.tolist()
    for members in groups.values():
        for k in range(dims):
            column = [values[i][k] for i in members]
            mean = sum(column) / len(column)
            std = math.sqrt(sum((v - mean) ** 2 for v in column) / (len(column) - 1))
            for i in members:
                constant = max(column) == min(column)
                advantages[i][k] = 0.0 if constant else weights[k] * (values[i][k] - mean) / (std + 1e-6)
    keep, score = [], []
    for i in range(batch):
        positive = any(a > 1e-8 for a in advantages[i])
        negative = any(a < -1e-8 for a in advantages[i])
        conflict = positive and negative and lengths[i] > 0
        ratio = sum(advantages[i]) * lengths[i] / (sum(abs(a) for a in advantages[i]) * lengths[i] + cfg.snr_eps)
        keep.append(not (conflict and abs(ratio) < cfg.snr_threshold))
        score.append(sum(advantages[i]))
    kappa = {g: sum(keep[i] for i in members) / len(members) for g, members in groups.items()}
    token_scores = torch.zeros(response_mask.shape, dtype=torch.float64)
    kept_tokens = torch.zeros(response_mask.shape, dtype=torch.float64)
    for g, members in groups.items():
        for i in members:
            if keep[i]:
                token_scores[i] = kappa[g] * score[i] * response_mask[i]
                kept_tokens[i] = response_mask[i]
    count = kept_tokens.sum()
    mean = (token_scores * kept_tokens).sum() / count
    var = ((token_scores - mean) ** 2 * kept_tokens).sum() / (count - 1)
    return ((token_scores - mean) * torch.rsqrt(var + 1e-8) * kept_tokens).float()


def peak_rss_growth_mb(function, *args) -> float:
    """Runs function(*args); returns its peak resident memory above the level at the call, sampling
    /proc/self/statm every 0.5 ms from a thread."""

    def rss() -> int:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * 4096

    base = peak = rss()
    done = threading.Event()

    def sample():
        nonlocal peak
        while not done.wait(0.0005):
            peak = max(peak, rss())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    function(*args)
    done.set()
    sampler.join()
    return (max(peak, rss()) - base) / 2**20


def makers(kl_coef: float):
    """The experience makers of a gd2po run and of a group_norm run, with OpenRLHF's launcher arguments."""
    import openrlhf.trainer.ppo_trainer as ppo_trainer
    from openrlhf.trainer.ppo_utils.kl_controller import FixedKLController

    common = ONE_RANK_PER_GROUP + [
        "--rollout.n_samples_per_prompt",
        str(GROUP),
        "--rollout.micro_batch_size",
        str(MICRO_BATCH),
        "--algo.kl.init_coef",
        str(kl_coef),
        "--reward.remote_url",
        "http://localhost:5000/get_reward",
    ]
    gd2po_args = parse_launcher_args(["--advantage_estimator", "gd2po", "--gd2po.reward_keys", *KEYS] + common)
    stock_args = parse_launcher_args(["--advantage_estimator", "group_norm"] + common)
    # With KL in the reward, OpenRLHF needs a reference model group; only its presence is read here.
    reference = object() if kl_coef > 0 else None
    return [
        ppo_trainer.RemoteExperienceMaker(
            None, None, None, reference, FixedKLController(kl_coef), SimpleNamespace(args=args), None
        )
        for args in (gd2po_args, stock_args)
    ]


CACHE_FLUSH = torch.empty(0, dtype=torch.uint8)  # sized by --flush-mb in main()
CORE_PAIRS = 3  # (1) and its floor, interleaved, per repeat


def timed(function, *args) -> float:
    """Seconds of one call, started with cold caches: every measurement and its floor begin in the same state,
    as the advantage step does in a training step, after generation and scoring have used the caches."""
    CACHE_FLUSH.fill_(1)
    started = time.perf_counter()
    function(*args)
    return time.perf_counter() - started


def core_floor(response_mask, column):
    """What the estimator core cannot avoid: read the [B, T] mask once (the lengths) and write the [B, T]
    advantages once."""
    response_mask.sum(dim=1)
    return response_mask * column


def step_floor(experiences, columns):
    """What the plugin's step cannot avoid: read the rewards (one cat per key) and each Experience's action mask
    (its lengths), and write each Experience's advantages (returns are the same tensor), rewards, logged reward
    and return."""
    for key in KEYS:
        torch.cat([experience.info[f"reward/{key}"] for experience in experiences])
    for experience, column in zip(experiences, columns):
        experience.action_mask.sum(dim=-1)
        experience.advantages = experience.action_mask * column
        experience.returns = experience.advantages
        experience.rewards = experience.info["reward"] = experience.info["return"] = column[:, 0]


FLOAT32_ONE_BITS = 0x3F800000  # the bit pattern of 1.0 in float32


def zero_one_by_bit_patterns(mask: torch.Tensor, lengths: torch.Tensor) -> bool:
    """The estimator's earlier 0/1 test, kept to time against its plain one: whether a float32 [B, T] mask holds
    only 0 and 1, in one read pass without temporaries (``lengths`` = Σ_t m is computed anyway).

    Read as its int32 bit patterns b(m), a row of 0s and 1s has a whole Σ_t m in [0, T] and Σ_t b(m) = b(1.0) · Σ_t
    m modulo 2^32 (b(0) = 0). Any single other value breaks one of the two: a fraction makes Σ_t m non-whole or,
    rounded away, leaves Σ_t b short of a multiple of b(1.0); a whole number ±2^e ≠ 1 has b = (127 + e) · 2^23 (+
    the sign bit), never 127 · 2^(e + 23) modulo 2^32; NaN and infinities put Σ_t m outside [0, T]. Only several
    odd values chosen to cancel modulo 2^32 could pass.
    """
    if mask.numel() == 0:
        return True
    # Whole sums within [0, T]: NaN fails the comparisons, ±inf the bounds.
    shortest, longest = lengths.aminmax()
    if not (bool(shortest >= 0) and bool(longest <= mask.shape[1]) and torch.equal(lengths, lengths.round())):
        return False
    # int32 sums wrap modulo 2^32, as the expected value does when the int64 product is narrowed.
    expected = (lengths.to(torch.int64) * FLOAT32_ONE_BITS).to(torch.int32)
    return torch.equal(mask.view(torch.int32).sum(dim=1, dtype=torch.int32), expected)


def zero_one_plain(mask: torch.Tensor) -> bool:
    """The estimator's 0/1 test of a float mask (compute_advantages)."""
    return not bool(((mask != 0) & (mask != 1)).any())


def spread(ratios):
    return f"{statistics.median(ratios):.2f} [{min(ratios):.2f}, {max(ratios):.2f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7, help="interleaved repeats per measurement")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (pinned; default 1)")
    parser.add_argument(
        "--scales", type=int, nargs="*", default=[4, 16], help="multiples of the base batch to time (1) and (3) at"
    )
    parser.add_argument("--quick", action="store_true", help="CI: 64 prompts, 3 repeats, no scaling table")
    parser.add_argument("--json", default=None, help="write the ratios here")
    parser.add_argument(
        "--flush-mb", type=int, default=128, help="bytes written before every timed call to evict the caches (MiB)"
    )
    settings = parser.parse_args()
    global CACHE_FLUSH
    CACHE_FLUSH = torch.empty(settings.flush_mb << 20, dtype=torch.uint8)
    prompts = 64 if settings.quick else PROMPTS
    if settings.quick:
        settings.repeats, settings.scales = 3, []
    torch.set_num_threads(settings.threads)
    gd2po_openrlhf.register()
    started = time.perf_counter()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; base batch {prompts} prompts × {GROUP} "
        f"rollouts, K = {DIMS}, lengths U[1, {MAX_LEN}], micro-batches of {MICRO_BATCH}; {settings.repeats} "
        "interleaved repeats"
    )

    rewards, lengths, experiences = make_batch(prompts)
    group_ids = torch.arange(len(rewards)) // GROUP
    bool_mask = torch.arange(MAX_LEN) < lengths.unsqueeze(1)
    response_mask = bool_mask.float()
    float_lengths = response_mask.sum(dim=1)
    expected = compute_advantages(rewards, group_ids, response_mask, CONFIG)
    reference = loop_reference(rewards, group_ids, response_mask, CONFIG)
    error = float((expected.advantages - reference).abs().max())
    assert error < 1e-4, f"the loop baseline and the estimator disagree by {error}"
    print(f"(2) equals (1): max |difference| {error:.2e}; keep ratio {expected.metrics['keep_ratio']:.3f}")
    column = expected.rollout_advantages.float().unsqueeze(1)
    columns = column.split([len(e.index) for e in experiences])
    per_rollout = compute_rollout_advantages(rewards, group_ids, lengths, CONFIG)
    mass_inputs = (
        per_rollout.dimension_advantages * lengths.unsqueeze(1).double(),
        per_rollout.keep,
        per_rollout.group_keep_ratio.double(),
        KEYS,
    )

    kl = [torch.rand(e.action_mask.shape) * 0.1 for e in experiences]
    results, ratios = {}, {}
    for kl_coef in (0.0, 0.01):
        plugin, stock = makers(kl_coef)

        def run(maker):
            for experience, experience_kl in zip(experiences, kl):
                experience.kl = experience_kl  # both makers consume it (set to None afterwards)
            maker.compute_advantages_and_returns(experiences)

        names = ("(1)", "(1) floor", "(1) bool mask", "(1) per-rollout", "(1) mass", "(1) 0/1 plain", "(1) 0/1 bits")
        names += ("(2)", "(3)", "(3) floor", "(4)")
        times = {name: [] for name in names}
        for _ in range(settings.repeats):
            if kl_coef == 0:
                for _ in range(CORE_PAIRS):  # milliseconds each: more pairs for a steadier median
                    times["(1)"].append(timed(compute_advantages, rewards, group_ids, response_mask, CONFIG))
                    times["(1) floor"].append(timed(core_floor, response_mask, column))
                times["(1) bool mask"].append(timed(compute_advantages, rewards, group_ids, bool_mask, CONFIG))
                times["(1) per-rollout"].append(timed(compute_rollout_advantages, rewards, group_ids, lengths, CONFIG))
                times["(1) mass"].append(timed(mass_diagnostics, *mass_inputs))
                times["(1) 0/1 plain"].append(timed(zero_one_plain, response_mask))
                times["(1) 0/1 bits"].append(timed(zero_one_by_bit_patterns, response_mask, float_lengths))
                if len(times["(2)"]) < 3:  # the loop baseline is slow and steady: 3 runs suffice
                    times["(2)"].append(timed(loop_reference, rewards, group_ids, response_mask, CONFIG))
                times["(3) floor"].append(timed(step_floor, experiences, columns))
            times["(3)"].append(timed(run, plugin))
            times["(4)"].append(timed(run, stock))
        results[kl_coef] = {name: statistics.median(values) for name, values in times.items() if values}
        if kl_coef == 0:
            ratios["core / core floor"] = [a / b for a, b in zip(times["(1)"], times["(1) floor"])]
            ratios["step / step floor"] = [a / b for a, b in zip(times["(3)"], times["(3) floor"])]
            ratios["stock group_norm / step"] = [a / b for a, b in zip(times["(4)"], times["(3)"])]
            ratios["0/1 test, plain torch / core"] = [
                a / b for a, b in zip(times["(1) 0/1 plain"], times["(1)"][::CORE_PAIRS])
            ]
            ratios["0/1 test, bit patterns / core"] = [
                a / b for a, b in zip(times["(1) 0/1 bits"], times["(1)"][::CORE_PAIRS])
            ]
            ratios["mass diagnostics / per-rollout math"] = [
                a / b for a, b in zip(times["(1) mass"], times["(1) per-rollout"])
            ]
        else:
            ratios["step / stock group_norm, KL in the reward"] = [a / b for a, b in zip(times["(3)"], times["(4)"])]

    base = results[0.0]
    print("\n| measurement (base batch) | median seconds |")
    print("|---|---|")
    labels = {
        "(1)": "(1) estimator core, compute_advantages",
        "(1) floor": "(1) floor: read the mask once, write the advantages once",
        "(1) bool mask": "(1) on a bool mask (no 0/1 check to make)",
        "(1) per-rollout": "(1)'s per-rollout math alone: compute_rollout_advantages on the lengths",
        "(1) mass": "the mass diagnostics inside it alone (estimator.mass_diagnostics)",
        "(1) 0/1 plain": "(1)'s 0/1 test of the float mask alone, plain torch (the estimator's)",
        "(1) 0/1 bits": "the same test by bit patterns (the earlier version; (3) runs neither: it has lengths)",
        "(2)": "(2) loop baseline",
        "(3)": "(3) plugin compute_advantages_and_returns (gd2po)",
        "(3) floor": "(3) floor: read rewards and action masks, write each Experience's advantages and rewards",
        "(4)": "(4) OpenRLHF compute_advantages_and_returns (group_norm)",
    }
    for name, seconds in base.items():
        print(f"| {labels[name]} | {seconds:.4f} |")
    print(f"| (3) with KL in the reward | {results[0.01]['(3)']:.4f} |")
    print(f"| (4) with KL in the reward | {results[0.01]['(4)']:.4f} |")
    print("\nratios, median [min, max] over the interleaved repeats:")
    for name, values in ratios.items():
        print(f"  {name}: {spread(values)}")
    print(f"  loop baseline / core: {base['(2)'] / base['(1)']:.1f}")
    report = {
        "threads": settings.threads,
        "prompts": prompts,
        "seconds": {labels[name]: seconds for name, seconds in base.items()},
        "ratios": {name: {"median": statistics.median(v), "min": min(v), "max": max(v)} for name, v in ratios.items()},
    }
    if settings.json:
        import json

        with open(settings.json, "w") as handle:
            json.dump(report, handle, indent=1)
    if not settings.scales:
        return

    plugin, _ = makers(0.0)
    print(
        "\n| rollouts | response tokens | (1) s | (3) s | (3) / base (3) | tokens / base tokens | (3) peak RSS "
        "growth MB |"
    )
    print("|---|---|---|---|---|---|---|")
    base_tokens = None
    for scale in [1] + settings.scales:
        # fresh experiences at every size, so that the memory measurement is a first call's
        scaled_rewards, scaled_lengths, scaled_experiences = make_batch(prompts * scale, seed=100 + scale)
        scaled_groups = torch.arange(len(scaled_rewards)) // GROUP
        scaled_mask = (torch.arange(MAX_LEN) < scaled_lengths.unsqueeze(1)).float()
        memory_mb = peak_rss_growth_mb(plugin.compute_advantages_and_returns, scaled_experiences)
        core, whole = [], []
        for _ in range(settings.repeats):
            core.append(timed(compute_advantages, scaled_rewards, scaled_groups, scaled_mask, CONFIG))
            whole.append(timed(plugin.compute_advantages_and_returns, scaled_experiences))
        core_s, whole_s = statistics.median(core), statistics.median(whole)
        tokens = int(scaled_lengths.sum())
        if scale == 1:
            base_whole, base_tokens = whole_s, tokens
        print(
            f"| {len(scaled_rewards)} | {tokens} | {core_s:.4f} | {whole_s:.4f} | {whole_s / base_whole:.2f} | "
            f"{tokens / base_tokens:.2f} | {memory_mb:.0f} |"
        )
        del scaled_experiences, scaled_mask
    print(f"\ntotal benchmark time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
