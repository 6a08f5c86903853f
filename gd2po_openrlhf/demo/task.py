"""The CPU demo's task, and its reward file for ``--reward.remote_url``.

The policy reads ``max 3 8 1 :`` and must answer the largest digit. The thinking is a scratchpad of running
maxima, one digit per word (the largest digit so far), and the answer copies the last one:

    max 3 8 1 :  3 8 8 <a> 8 </a> [EOS]          (7 response tokens: 3 thinking + 3 answer + [EOS])

Each step compares the digit it reads with the one before it, which a 2-layer model learns from the warm start's
few hundred steps; without the scratchpad the warm-started policy has only the teacher's guesses to copy.

Thinking competes with finishing: a response has at most ``MAX_RESPONSE_TOKENS`` = 8 tokens, so one filler word
(``hmm``) more than the scratchpad still fits, two cut off the answer's ``[EOS]`` (format lost) and three its
``</a>``.

Four rule-based reward dimensions; each demo setting trains on some of them and logs all (weight 0):
  correctness  1 if the word right after the first ``<a>`` is the label, else 0
  format       1 if the response is exactly ``(thinking word)* <a> D </a> [EOS]``, else 0
  length       min(thinking words / LENGTH_CAP, 1), LENGTH_CAP = 3: the GD²PO authors' capped length reward
               (thinking = the words before the first ``<a>``, all of them without one), capped where the full
               scratchpad reaches it, so that no degenerate answer beats a good one on length
  brevity      1 − words / MAX_RESPONSE_TOKENS (``[EOS]`` is not a word): a reward that the empty answer
               ``[EOS]`` wins outright, the trap of the demo's brevity setting

The arithmetic of the degenerate answers, as (correctness, format, length, brevity): ``[EOS]`` (0, 0, 0, 1);
eight filler words (0, 0, 1, 0); a guess without thinking, ``<a> D </a> [EOS]`` (about 0.1 expected, 1, 0, 0.625);
the full scratchpad done right (1, 1, 1, 0.25). Brevity alone prefers ``[EOS]`` to every good answer.

The warm-start teacher (``demonstration``) uses the scratchpad unevenly: it thinks all three steps in about a third
of its answers, one or two steps in another third and not at all in the rest (and then guesses a digit), slips on
a step now and then, and pads a quarter of its thinking with filler words. RL has to find that thinking pays and
make the steps reliable.

Noisy verifiers (the study's ``noisy`` setting): when a rollout's label carries a nonce after the digit (``"8
4711"``, one nonce per rollout, drawn by the trainer), three more dimensions ``verifier_1..3`` each report
correctness flipped with probability ``VERIFIER_FLIP`` = 0.25, independently per verifier and rollout. The flips are
a function of the nonce, not of a global generator: OpenRLHF calls the reward function in threads, in no fixed order,
and the runs must be reproducible.

OpenRLHF loads this file by path (``SingleTurnAgentExecutor``), so it imports nothing from the package.
``reward_func`` returns each dimension as ``extra_logs["reward/<key>"]`` (what gd2po/gdpo train on, with the
weights of the demo's setting) and correctness as OpenRLHF's scalar reward and score.
"""

import random
import re

REWARD_KEYS = ("correctness", "format", "length", "brevity")
VERIFIER_KEYS = ("verifier_1", "verifier_2", "verifier_3")
VERIFIER_FLIP = 0.25
NUM_PROMPT_DIGITS = 3
MAX_RESPONSE_TOKENS = 8
LENGTH_CAP = NUM_PROMPT_DIGITS  # the full scratchpad's thinking words
DIGITS = [str(d) for d in range(10)]
FILLER, OPEN, CLOSE, EOS, PAD = "hmm", "<a>", "</a>", "[EOS]", "[PAD]"
VOCAB = [PAD, "[UNK]", EOS, "max", ":", FILLER, OPEN, CLOSE] + DIGITS
WELL_FORMED = re.compile(rf"^((\d|{FILLER}) )*{OPEN} \d {CLOSE} \[EOS\]$")
# The teacher: how often it thinks all steps or some, how it slips and pads.
FULL_THINKING, PARTIAL_THINKING = 0.35, 0.3  # the rest (0.35) answers at once, guessing
STEP_SLIP = 0.1  # a running maximum written as a random other digit, carried on from there
FILLER_RATE = 0.25  # 1-3 filler words after the steps
BROKEN_FORMAT = 0.15  # no </a>, or a word after it


def make_prompt(rng: random.Random):
    """A prompt and its label (the largest digit, as text)."""
    digits = [rng.choice(DIGITS) for _ in range(NUM_PROMPT_DIGITS)]
    return "max " + " ".join(digits) + " :", max(digits)


def running_maxima(prompt: str):
    """The scratchpad done right: the largest digit so far, after each digit of ``prompt``."""
    digits = prompt.split()[1:-1]
    return [max(digits[: i + 1]) for i in range(len(digits))]


def demonstration(rng: random.Random, prompt: str) -> str:
    """A noisy teacher's response for the warm start (the rates above)."""
    mode = rng.random()
    if mode < FULL_THINKING:
        steps = NUM_PROMPT_DIGITS
    elif mode < FULL_THINKING + PARTIAL_THINKING:
        steps = rng.randint(1, NUM_PROMPT_DIGITS - 1)
    else:
        steps = 0
    thinking, largest = [], None
    for digit in prompt.split()[1 : 1 + steps]:
        largest = digit if largest is None else max(largest, digit)
        if rng.random() < STEP_SLIP:
            largest = rng.choice([other for other in DIGITS if other != largest])
        thinking.append(largest)
    # Only a finished scratchpad gives the answer; otherwise the teacher guesses.
    answer = largest if steps == NUM_PROMPT_DIGITS else rng.choice(DIGITS)
    if rng.random() < FILLER_RATE:
        thinking += [FILLER] * rng.randint(1, 3)
    words = thinking + [OPEN, answer, CLOSE]
    if rng.random() < BROKEN_FORMAT:
        words = words[:-1] if rng.random() < 0.5 else words + [FILLER]
    return " ".join(words) + " " + EOS


def score_response(response: str, label: str) -> dict:
    """The four reward dimensions of one response text (the part after the prompt)."""
    text = " ".join(response.split())  # decoding joins tokens with single spaces; be lenient anyway
    words = [w for w in text.split(" ") if w and w not in (EOS, PAD)]
    first_open = words.index(OPEN) if OPEN in words else len(words)
    correct = first_open < len(words) - 1 and words[first_open + 1] == str(label).strip()
    return {
        "correctness": float(correct),
        "format": float(WELL_FORMED.match(text) is not None),
        "length": round(min(first_open / LENGTH_CAP, 1.0), 4),
        "brevity": round(max(0.0, 1.0 - len(words) / MAX_RESPONSE_TOKENS), 4),
    }


def noisy_verifiers(correctness: float, nonce: str) -> dict:
    """``VERIFIER_KEYS`` for one rollout: its correctness, each flipped with probability ``VERIFIER_FLIP``, decided by
    a generator seeded with the rollout's nonce and the verifier (string seeds hash with SHA-512: the same in every
    process)."""
    return {
        key: float(bool(correctness) != (random.Random(f"{nonce}:{key}").random() < VERIFIER_FLIP))
        for key in VERIFIER_KEYS
    }


def reward_func(queries, prompts, labels):
    """OpenRLHF's reward-file interface; called with one rollout at a time (``queries`` = prompt + response)."""
    label, _, nonce = str(labels[0]).strip().partition(" ")
    scores = score_response(queries[0][len(prompts[0]) :], label)
    if nonce:
        scores.update(noisy_verifiers(scores["correctness"], nonce))
    return {
        "rewards": scores["correctness"],
        "scores": scores["correctness"],
        "extra_logs": {f"reward/{key}": value for key, value in scores.items()},
    }
