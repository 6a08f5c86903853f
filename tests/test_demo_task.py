"""The CPU demo's reward rules, prompts and demonstrations (gd2po_openrlhf/demo/task.py)."""

import random

import pytest

from gd2po_openrlhf.demo import task


# (correctness, format, length, brevity); length = min(thinking words / 3, 1), brevity = 1 − words / 8
@pytest.mark.parametrize(
    "response, label, expected",
    [
        (" 3 8 8 <a> 8 </a> [EOS]", "8", (1.0, 1.0, 1.0, 0.25)),  # the full scratchpad done right: 6 words
        (" <a> 8 </a> [EOS]", "8", (1.0, 1.0, 0.0, 0.625)),  # a right answer without thinking
        (" 3 8 <a> 3 </a> [EOS]", "8", (0.0, 1.0, round(2 / 3, 4), 0.375)),  # thought two steps, answered wrong
        (" 3 8 8 hmm <a> 8 </a> [EOS]", "8", (1.0, 1.0, 1.0, 0.125)),  # filler is thinking too: 7 words fit
        (" 3 8 8 hmm hmm <a> 8 </a>", "8", (1.0, 0.0, 1.0, 0.0)),  # cut at 8 tokens: no [EOS], format lost
        (" 3 8 8 hmm hmm hmm <a> 8", "8", (1.0, 0.0, 1.0, 0.0)),  # no </a>: the answer is read anyway
        (" " + " ".join(["hmm"] * 8), "8", (0.0, 0.0, 1.0, 0.0)),  # all filler: length's cap, nothing else
        (" [EOS]", "8", (0.0, 0.0, 0.0, 1.0)),  # the empty answer: brevity's best case
        (" <a> 3 </a> <a> 8 </a> [EOS]", "8", (0.0, 0.0, 0.0, 0.25)),  # two blocks: the first one counts
        (" <a> 8 </a> hmm [EOS]", "8", (1.0, 0.0, 0.0, 0.5)),  # a word after the block
        (" 8 <a> </a> [EOS]", "8", (0.0, 0.0, round(1 / 3, 4), 0.625)),  # an empty block
        (" 3 8 8 <a>", "8", (0.0, 0.0, 1.0, 0.5)),  # <a> as the last word
        (" 3 8 8 <a> 8 </a> [EOS] [PAD]", "8", (1.0, 0.0, 1.0, 0.25)),  # padding is not a word
        ("   3  8 8 <a>  8   </a>  [EOS] ", " 8 ", (1.0, 1.0, 1.0, 0.25)),  # spacing and label whitespace
    ],
)
def test_score_response(response, label, expected):
    scores = task.score_response(response, label)
    assert list(scores) == list(task.REWARD_KEYS)
    assert tuple(scores.values()) == pytest.approx(expected)


def test_the_degenerate_answers_in_the_module_doc():
    """No degenerate answer beats the full scratchpad on length (capped where it reaches), but ``[EOS]`` beats
    every answer on brevity: the trap of the brevity setting."""
    full = task.score_response(" 3 8 8 <a> 8 </a> [EOS]", "8")
    for degenerate in (" [EOS]", " " + " ".join(["hmm"] * 8), " <a> 1 </a> [EOS]"):
        scores = task.score_response(degenerate, "8")
        assert scores["correctness"] == 0 and scores["length"] <= full["length"]
    assert task.score_response(" [EOS]", "8")["brevity"] == 1.0 > full["brevity"]


def test_reward_func_speaks_openrlhfs_reward_file_protocol():
    prompt = "max 3 8 1 :"
    out = task.reward_func([prompt + " 3 8 8 <a> 8 </a> [EOS]"], [prompt], ["8"])
    assert set(out) == {"rewards", "scores", "extra_logs"}
    assert out["extra_logs"] == {
        "reward/correctness": 1.0,
        "reward/format": 1.0,
        "reward/length": 1.0,
        "reward/brevity": 0.25,
    }
    assert out["rewards"] == out["scores"] == 1.0
    # The prompt's own digits are not read as the answer.
    assert task.reward_func([prompt + " [EOS]"], [prompt], ["8"])["extra_logs"]["reward/correctness"] == 0.0


def test_prompts_label_the_largest_digit_and_the_scratchpad_holds_the_running_maxima():
    rng = random.Random(0)
    for _ in range(200):
        prompt, label = task.make_prompt(rng)
        words = prompt.split()
        assert words[0] == "max" and words[-1] == ":" and len(words) == 2 + task.NUM_PROMPT_DIGITS
        assert label == max(words[1:-1]) and set(words) <= set(task.VOCAB)
        maxima = task.running_maxima(prompt)
        assert maxima[0] == words[1] and maxima[-1] == label and maxima == sorted(maxima)
    # 3 thinking words + <a> D </a> + [EOS] fit the limit with one token to spare
    assert task.NUM_PROMPT_DIGITS + 4 == task.MAX_RESPONSE_TOKENS - 1


def test_the_teacher_thinks_unevenly_slips_and_guesses_without_a_full_scratchpad():
    rng = random.Random(1)
    by_steps = {}
    for _ in range(8000):
        prompt, label = task.make_prompt(rng)
        response = task.demonstration(rng, prompt)
        assert set(response.split()) <= set(task.VOCAB)
        words = response.split()
        thinking = [w for w in words[: words.index("<a>")] if w != "hmm"]
        by_steps.setdefault(len(thinking), []).append((prompt, thinking, task.score_response(" " + response, label)))
    shares = {steps: len(rows) / 8000 for steps, rows in by_steps.items()}
    assert sorted(shares) == [0, 1, 2, 3]
    assert shares[3] == pytest.approx(0.35, abs=0.02) and shares[0] == pytest.approx(0.35, abs=0.02)

    def correctness(steps):
        return sum(scores["correctness"] for _, _, scores in by_steps[steps]) / len(by_steps[steps])

    # a full scratchpad is right unless a step slipped (the last one, or one the max did not overwrite)
    assert 0.7 < correctness(3) < 0.95
    for steps in (0, 1, 2):  # otherwise a guess: about one in ten
        assert correctness(steps) == pytest.approx(0.1, abs=0.04)
    steps_right = [t == task.running_maxima(p)[: len(t)] for rows in by_steps.values() for p, t, _ in rows if t]
    assert 0.75 < sum(steps_right) / len(steps_right) < 0.95
