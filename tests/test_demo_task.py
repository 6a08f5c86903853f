"""The CPU demo's reward rules, prompts and demonstrations (gd2po_openrlhf/demo/task.py)."""

import random

import pytest

from gd2po_openrlhf.demo import task


@pytest.mark.parametrize(
    "response, label, expected",
    [
        (" <a> 8 </a> [EOS]", "8", (1.0, 1.0, 0.75)),  # the ideal answer: 3 words
        (" hmm hmm <a> 8 </a> [EOS]", "8", (1.0, 1.0, round(1 - 5 / 12, 4))),  # thinking costs brevity only
        (" <a> 3 </a> [EOS]", "8", (0.0, 1.0, 0.75)),  # wrong digit, well formed
        (" <a> 8 [EOS]", "8", (1.0, 0.0, round(1 - 2 / 12, 4))),  # missing </a>: read anyway, format broken
        (" <a> 3 </a> <a> 8 </a> [EOS]", "8", (0.0, 0.0, 0.5)),  # two blocks: the first one counts
        (" <a> 8 </a> hmm [EOS]", "8", (1.0, 0.0, round(1 - 4 / 12, 4))),  # words after the block
        (" hmm <a> </a> [EOS]", "8", (0.0, 0.0, 0.75)),  # empty block
        (" hmm <a>", "8", (0.0, 0.0, round(1 - 2 / 12, 4))),  # <a> as the last word, no [EOS]
        (" 8 [EOS]", "8", (0.0, 0.0, round(1 - 1 / 12, 4))),  # bare digit: no answer block
        (" [EOS]", "8", (0.0, 0.0, 1.0)),  # empty response: brevity's best case
        (" " + " ".join(["hmm"] * 12), "8", (0.0, 0.0, 0.0)),  # truncated: no [EOS], all filler
        (" <a> 8 </a>", "8", (1.0, 0.0, 0.75)),  # truncated right after the block: format needs [EOS]
        (" hmm <a> 8 </a> [EOS] [PAD] [PAD]", "8", (1.0, 0.0, round(1 - 4 / 12, 4))),  # padding is not a word
        ("   <a>  8   </a>  [EOS] ", " 8 ", (1.0, 1.0, 0.75)),  # spacing and label whitespace do not matter
    ],
)
def test_score_response(response, label, expected):
    scores = task.score_response(response, label)
    assert list(scores) == list(task.REWARD_KEYS)
    assert tuple(scores.values()) == pytest.approx(expected)


def test_reward_func_speaks_openrlhfs_reward_file_protocol():
    prompt = "max of 3 8 1 :"
    out = task.reward_func([prompt + " hmm <a> 8 </a> [EOS]"], [prompt], ["8"])
    assert set(out) == {"rewards", "scores", "extra_logs"}
    assert out["extra_logs"] == {
        "reward/correctness": 1.0,
        "reward/format": 1.0,
        "reward/brevity": round(1 - 4 / 12, 4),
    }
    assert out["rewards"] == out["scores"] == pytest.approx(2 + round(1 - 4 / 12, 4))
    # The prompt's own digits are not read as the answer.
    assert task.reward_func([prompt + " [EOS]"], [prompt], ["8"])["extra_logs"]["reward/correctness"] == 0.0


def test_prompts_label_the_largest_digit():
    rng = random.Random(0)
    for _ in range(200):
        prompt, label = task.make_prompt(rng)
        words = prompt.split()
        assert words[:2] == ["max", "of"] and words[-1] == ":"
        assert label == max(words[2:-1]) and len(words) == 3 + task.NUM_PROMPT_DIGITS
        assert set(words) <= set(task.VOCAB)


def test_demonstrations_make_thinking_pay_for_correctness_and_format():
    """The conflict the demo is about: the warm-start teacher is more accurate and better formatted after
    more filler words, while every filler word costs brevity."""
    rng = random.Random(1)
    by_thinking = {}
    for _ in range(6000):
        prompt, label = task.make_prompt(rng)
        response = task.demonstration(rng, label)
        assert set(response.split()) <= set(task.VOCAB)
        thinking = next(i for i, word in enumerate(response.split()) if word != "hmm")
        by_thinking.setdefault(thinking, []).append(task.score_response(" " + response, label))
    assert sorted(by_thinking) == list(range(7))

    def rate(k, key):
        return sum(s[key] for s in by_thinking[k]) / len(by_thinking[k])

    assert rate(0, "correctness") == pytest.approx(0.3, abs=0.06) and rate(6, "correctness") == pytest.approx(
        0.9, abs=0.06
    )
    # format breaks with probability 0.4 - 0.05 k (the "no </a>" break keeps correctness readable)
    assert rate(0, "format") == pytest.approx(0.6, abs=0.06) and rate(6, "format") == pytest.approx(0.9, abs=0.06)
    assert rate(6, "brevity") < rate(0, "brevity")
