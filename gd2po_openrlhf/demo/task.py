"""The CPU demo's task, and its reward file for ``--reward.remote_url``.

The policy reads ``max of 3 8 1 :`` and must answer the largest digit. A response is optional
thinking filler followed by an answer block and the end token: ``hmm hmm <a> 8 </a> [EOS]``.

Three rule-based rewards pull in different directions:
  correctness  1 if the token right after the first ``<a>`` is the label, else 0 (a missing ``</a>`` is
               forgiven here: the answer is read anyway)
  format       1 if the response is exactly ``(hmm)* <a> D </a> [EOS]``, else 0
  brevity      1 − words / MAX_RESPONSE_TOKENS, clipped at 0 (``[EOS]`` is not a word)
The warm-start demonstrations make thinking pay for correctness and format (the teacher answers
better and cleaner after more filler), so early on, a correct long rollout has a positive correctness
advantage and a negative brevity one within its group: a mixed-sign, conflicting rollout.

OpenRLHF loads this file by path (``SingleTurnAgentExecutor``), so it imports nothing from the package.
``reward_func`` returns the weighted-1 sum as OpenRLHF's scalar reward (what GRPO's ``group_norm``
trains on) and each dimension as ``extra_logs["reward/<key>"]`` (what gd2po/gdpo train on), so one
file serves every estimator and the per-dimension curves are logged for all of them.
"""

import random
import re

REWARD_KEYS = ("correctness", "format", "brevity")
MAX_RESPONSE_TOKENS = 12
DIGITS = [str(d) for d in range(10)]
FILLER, OPEN, CLOSE, EOS, PAD = "hmm", "<a>", "</a>", "[EOS]", "[PAD]"
VOCAB = [PAD, "[UNK]", EOS, "max", "of", ":", FILLER, OPEN, CLOSE] + DIGITS
NUM_PROMPT_DIGITS = 3
WELL_FORMED = re.compile(rf"^({FILLER} )*{OPEN} \d {CLOSE} \[EOS\]$")


def make_prompt(rng: random.Random):
    """A prompt and its label (the largest digit, as text)."""
    digits = [rng.choice(DIGITS) for _ in range(NUM_PROMPT_DIGITS)]
    return "max of " + " ".join(digits) + " :", max(digits)


def demonstration(rng: random.Random, label: str) -> str:
    """A noisy teacher's response for the warm start: with k filler words (0–6) it answers correctly with
    probability 0.3 + 0.1·k and breaks the format with probability 0.4 − 0.05·k."""
    thinking = rng.randint(0, 6)
    answer = label if rng.random() < 0.3 + 0.1 * thinking else rng.choice([d for d in DIGITS if d != label])
    words = [FILLER] * thinking + [OPEN, answer, CLOSE]
    if rng.random() < 0.4 - 0.05 * thinking:
        broken = rng.choice(["no_close", "twice", "trailing"])
        if broken == "no_close":
            words = words[:-1]
        elif broken == "twice":
            words = words + [OPEN, answer, CLOSE]
        else:
            words = words + [FILLER]
    return " ".join(words) + " " + EOS


def score_response(response: str, label: str) -> dict:
    """The three reward dimensions of one response text (the part after the prompt)."""
    text = " ".join(response.split())  # decoding joins tokens with single spaces; be lenient anyway
    words = [w for w in text.split(" ") if w and w not in (EOS, PAD)]
    first_open = words.index(OPEN) if OPEN in words else -1
    correct = 0 <= first_open < len(words) - 1 and words[first_open + 1] == str(label).strip()
    return {
        "correctness": float(correct),
        "format": float(WELL_FORMED.match(text) is not None),
        "brevity": round(max(0.0, 1.0 - len(words) / MAX_RESPONSE_TOKENS), 4),
    }


def reward_func(queries, prompts, labels):
    """OpenRLHF's reward-file interface; called with one rollout at a time (``queries`` = prompt + response)."""
    scores = score_response(queries[0][len(prompts[0]) :], labels[0])
    total = sum(scores.values())
    return {"rewards": total, "scores": total, "extra_logs": {f"reward/{key}": value for key, value in scores.items()}}
