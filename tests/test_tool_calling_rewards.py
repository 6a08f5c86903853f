"""The tool-calling reward file (examples/rewards/tool_calling.py): every branch of the three ToolRL rules.

Expected values are worked out by hand from the rules in the file's docstring.
"""

import gc
import importlib.util
import json
from pathlib import Path

import pytest

REWARD_FILE = Path(__file__).resolve().parents[1] / "examples" / "rewards" / "tool_calling.py"
spec = importlib.util.spec_from_file_location("tool_calling_rewards", REWARD_FILE)
tool_calling = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tool_calling)


def calls(*pairs):
    return "\n".join(json.dumps({"name": name, "parameters": params}) for name, params in pairs)


def turn(think="I should call the tool", tool_calls=None, response=None):
    parts = [f"<think>{think}</think>"]
    if tool_calls is not None:
        parts.append(f"<tool_call>\n{tool_calls}\n</tool_call>")
    if response is not None:
        parts.append(f"<response>{response}</response>")
    return "\n".join(parts)


WEATHER = ("get_weather", {"city": "Paris", "unit": "C"})
TIME = ("get_time", {"tz": "CET"})
GT_TWO_CALLS = turn(tool_calls=calls(WEATHER, TIME))  # max = 1 + (1 + 2) + (1 + 1) = 6


@pytest.mark.parametrize(
    "response, ground_truth, expected",
    [
        (turn(tool_calls=calls(WEATHER, TIME)), GT_TWO_CALLS, 3.0),  # exact match
        (turn(tool_calls=calls(TIME, WEATHER)), GT_TWO_CALLS, 3.0),  # same calls, other order: full score
        (turn(response="hi"), GT_TWO_CALLS, -3.0),  # no tool block
        (turn(tool_calls='{"name": "get_weather", "parameters": {"city": "Paris"'), GT_TWO_CALLS, -3.0),  # bad JSON
        (turn(tool_calls='{"parameters": {}}'), GT_TWO_CALLS, -3.0),  # a call without a name
        (turn(tool_calls='["get_weather"]'), GT_TWO_CALLS, -3.0),  # not an object
        (turn(tool_calls=""), GT_TWO_CALLS, -3.0),  # empty block
        (turn(tool_calls=calls(WEATHER, TIME)), turn(response="no tool needed"), 0.0),  # gt calls nothing
        # one of two calls, exact: names 1/2, weather 1 + 2 → (0.5 + 3) / 6
        (turn(tool_calls=calls(WEATHER)), GT_TWO_CALLS, 6 * 3.5 / 6 - 3),
        # partial parameters: weather keys {city} vs {city, unit} → 1/2, one equal value; time exact 1 + 1
        (turn(tool_calls=calls(("get_weather", {"city": "Paris"}), TIME)), GT_TWO_CALLS, 6 * (1 + 1.5 + 2) / 6 - 3),
        # right keys, one wrong value: weather 1 + 1, time 1 + 0
        (
            turn(tool_calls=calls(("get_weather", {"city": "Lyon", "unit": "C"}), ("get_time", {"tz": "UTC"}))),
            GT_TWO_CALLS,
            6 * (1 + 2 + 1) / 6 - 3,
        ),
        # an extra wrong call: names 2/3, both gt calls exact
        (turn(tool_calls=calls(WEATHER, TIME, ("send_mail", {}))), GT_TWO_CALLS, 6 * (2 / 3 + 3 + 2) / 6 - 3),
        # the best unused same-name call counts once: gt [weather, weather'] vs pred [weather'] ...
        (
            turn(tool_calls=calls(("get_weather", {"city": "Rome", "unit": "C"}))),
            turn(tool_calls=calls(WEATHER, ("get_weather", {"city": "Rome", "unit": "C"}))),
            # names [w, w] vs [w]: 1/(2+1-1) = 0.5; the first gt call (in order) takes the only prediction
            # (keys 1 + unit 1), the second gets nothing; max 1 + 3 + 3 = 7
            6 * (0.5 + 2) / 7 - 3,
        ),
        (turn(tool_calls=calls(("other", {"x": 1}))), GT_TWO_CALLS, 6 * 0 / 6 - 3),  # nothing in common
        # values compare as JSON values: 5 ≠ "5"
        (turn(tool_calls=calls(("f", {"n": "5"}))), turn(tool_calls=calls(("f", {"n": 5}))), 6 * (1 + 1) / 3 - 3),
    ],
)
def test_correctness(response, ground_truth, expected):
    assert tool_calling.score(response, ground_truth)["correctness"] == pytest.approx(expected)


@pytest.mark.parametrize(
    "response, ground_truth, expected",
    [
        (turn(tool_calls=calls(WEATHER)), GT_TWO_CALLS, 1.0),  # format does not judge the calls
        (turn(tool_calls=calls(WEATHER)) + "<|im_end|>\n", GT_TWO_CALLS, 1.0),  # end-of-turn marker stripped
        (turn(tool_calls=calls(WEATHER), response="done"), turn(tool_calls=calls(WEATHER), response="ok"), 1.0),
        (turn(response="Paris is sunny"), turn(response="x"), 1.0),
        (turn(response="Paris is sunny"), "plain text ground truth", 0.0),  # neither block: the think block alone
        ("<think>only thinking</think>", "plain text ground truth", 1.0),
        (turn(tool_calls=calls(WEATHER)), turn(tool_calls=calls(WEATHER), response="ok"), 0.0),  # response missing
        (turn(tool_calls=calls(WEATHER), response="x"), GT_TWO_CALLS, 0.0),  # a response the gt does not have
        ("<tool_call>\n" + calls(WEATHER) + "\n</tool_call>", GT_TWO_CALLS, 0.0),  # no think
        (
            "<tool_call>\n" + calls(WEATHER) + "\n</tool_call>\n<think>late</think>",
            GT_TWO_CALLS,
            0.0,
        ),  # wrong order
        # think tags are not counted: two think blocks pass (ToolRL)
        ("<think>a</think><think>b</think>\n<tool_call>\n" + calls(WEATHER) + "\n</tool_call>", GT_TWO_CALLS, 1.0),
        ("<think>a</think>\n<tool_call>" + calls(WEATHER) + "</tool_call>", GT_TWO_CALLS, 0.0),  # no newlines inside
        (turn(tool_calls=calls(WEATHER)) + " and more", GT_TWO_CALLS, 0.0),  # text after the last block
        ("sure! " + turn(tool_calls=calls(WEATHER)), GT_TWO_CALLS, 0.0),  # text before the first block
        ("<think>unclosed\n<tool_call>\n" + calls(WEATHER) + "\n</tool_call>", GT_TWO_CALLS, 0.0),
    ],
)
def test_format(response, ground_truth, expected):
    assert tool_calling.score(response, ground_truth)["format"] == expected


@pytest.mark.parametrize(
    "response, expected",
    [
        (turn(think="one two three", response="x"), 0.01),  # 3/512 = 0.0059 → 0.01
        (turn(think=" ".join(["w"] * 256), response="x"), 0.5),
        (turn(think=" ".join(["w"] * 700), response="x"), 1.0),  # capped
        (turn(think="", response="x"), 0.0),
        ("<response>no thinking</response>", 0.0),
        ("<think>never closed " + " ".join(["w"] * 100), 0.0),
    ],
)
def test_length(response, expected):
    assert tool_calling.score(response, "<response>x</response>")["length"] == expected


def test_reward_func_scores_a_batch_and_returns_every_dimension():
    prompts = ["<|im_start|>user\nweather?<|im_end|>\n<|im_start|>assistant\n", "<|im_start|>user\ntime?<|im_end|>\n"]
    responses = [turn(tool_calls=calls(WEATHER, TIME)) + "<|im_end|>", "no tags at all"]
    out = tool_calling.reward_func([p + r for p, r in zip(prompts, responses)], prompts, [GT_TWO_CALLS, GT_TWO_CALLS])
    assert out["extra_logs"] == {
        "reward/correctness": [3.0, -3.0],
        "reward/format": [1.0, 0.0],
        "reward/length": [0.01, 0.0],
    }
    assert out["rewards"] == out["scores"] == pytest.approx([4.01, -3.0])


# One test per rule where the file once differed from ToolRL's reward (the GD²PO authors' rlla.py); values by hand.
W_PARIS = ("get_weather", {"city": "Paris"})  # one parameter: max for [W_PARIS] is 1 + (1 + 1) = 3
W_ROME = ("get_weather", {"city": "Rome"})


@pytest.mark.parametrize(
    "predicted, ground_truth, expected",
    [
        # names are counted with repeats: [W, W] vs [W] → 1/(2+1-1) = 0.5; W_PARIS matched (1 + 1) → 6·2.5/3 − 3
        (calls(W_PARIS, W_PARIS), [W_PARIS], 2.0),
        (calls(W_PARIS, W_ROME), [W_PARIS], 2.0),
        # [W] vs [W, W] → 0.5; the first gt call takes W_PARIS (2), W_ROME gets nothing; max 1 + 2 + 2 → 6·2.5/5 − 3
        (calls(W_PARIS), [W_PARIS, W_ROME], 0.0),
        # a candidate that scores 0 for a gt call is not used up: f(y=2) scores 0 for f(x=1), then 1 + 1 for
        # f(y=2); names 0.5; max 5 → 6·2.5/5 − 3
        (calls(("f", {"y": 2})), [("f", {"x": 1}), ("f", {"y": 2})], 0.0),
        # a call naming a gt tool without "parameters", or with parameters that are not an object: -3
        ('{"name": "get_weather"}', [W_PARIS], -3.0),
        ('{"name": "get_weather", "parameters": "Paris"}', [W_PARIS], -3.0),
        (calls(W_PARIS) + '\n{"name": "get_weather"}', [W_PARIS], -3.0),
        # an unmatched call is never looked into: no parameters, a non-string name or non-object parameters
        # only add to the names' union: [W] vs [W, x] → 0.5, W_PARIS 2 → 6·2.5/3 − 3
        (calls(W_PARIS) + '\n{"name": "other"}', [W_PARIS], 2.0),
        (calls(W_PARIS) + '\n{"name": 7, "parameters": "x"}', [W_PARIS], 2.0),
        (calls(W_PARIS) + '\n{"name": null, "parameters": [1]}', [W_PARIS], 2.0),
        # a blank line inside the tool block is a line that is not JSON: -3
        (calls(W_PARIS) + "\n\n" + calls(TIME), [W_PARIS, TIME], -3.0),
        # a name that cannot be counted (a list): -3
        ('{"name": ["get_weather"], "parameters": {}}', [W_PARIS], -3.0),
    ],
)
def test_correctness_follows_toolrl(predicted, ground_truth, expected):
    assert tool_calling.score(turn(tool_calls=predicted), turn(tool_calls=calls(*ground_truth)))[
        "correctness"
    ] == pytest.approx(expected)


GT_THINKS_ABOUT_TOOL_CALL = (
    "<think>I will answer with a <tool_call> block</think>\n<tool_call>\n" + calls(W_PARIS) + "\n</tool_call>"
)


def test_a_ground_truth_whose_thinking_mentions_tool_call_is_read_after_its_think_block():
    """17 of 346 rows of ToolRL's SFT file: the label's tool block is the one after </think>."""
    exact = tool_calling.score(turn(tool_calls=calls(W_PARIS)), GT_THINKS_ABOUT_TOOL_CALL)
    assert exact["correctness"] == 3.0 and exact["format"] == 1.0
    assert tool_calling.score(turn(tool_calls=calls(W_ROME)), GT_THINKS_ABOUT_TOOL_CALL)[
        "correctness"
    ] == pytest.approx(6 * 2 / 3 - 3)


def test_a_ground_truth_tool_block_that_does_not_parse_is_an_error_naming_the_line():
    with pytest.raises(ValueError, match="label tool_call line 2 is not JSON"):
        tool_calling.score(turn(tool_calls=calls(W_PARIS)), turn(tool_calls=calls(W_PARIS) + '\n{"name": "x"'))


@pytest.mark.parametrize(
    "response, expected",
    [
        ("<think>a</think><tool_call>\n" + calls(W_PARIS) + "\n</tool_call>", 0.0),  # no newline between blocks
        ("<think>a</think>\n\n<tool_call>\n" + calls(W_PARIS) + "\n</tool_call>", 0.0),  # a blank line
        ("<think>a</think> \n<tool_call>\n" + calls(W_PARIS) + "\n</tool_call>", 0.0),  # a space
        ("<think>a</think>\n<tool_call>\n" + calls(W_PARIS) + "\n</tool_call>", 1.0),  # exactly one newline
    ],
)
def test_format_blocks_are_separated_by_exactly_one_newline(response, expected):
    assert tool_calling.score(response, turn(tool_calls=calls(W_PARIS)))["format"] == expected


@pytest.mark.parametrize(
    "response, ground_truth, expected",
    [
        # only the tags the ground truth has are counted: a literal <tool_call> in think or response is fine
        ("<think>should I use <tool_call>? no</think>\n<response>hi</response>", turn(response="x"), 1.0),
        ("<think>a</think>\n<response>no <tool_call> needed</response>", turn(response="x"), 1.0),
        # ...but the ground truth's own tags must occur once
        ("<think>a</think>\n<response>x <response> y</response>", turn(response="x"), 0.0),
        (
            "<think>a <tool_call></think>\n<tool_call>\n" + calls(W_PARIS) + "\n</tool_call>",
            turn(tool_calls=calls(W_PARIS)),
            0.0,
        ),
    ],
)
def test_format_counts_only_the_ground_truths_tags(response, ground_truth, expected):
    assert tool_calling.score(response, ground_truth)["format"] == expected


def test_length_reads_the_last_think_block():
    first, last = " ".join(["w"] * 256), "one two three"
    response = f"<think>{first}</think><think>{last}</think>\n<response>x</response>"
    assert tool_calling.score(response, "<response>x</response>")["length"] == 0.01  # 3/512, not 256/512


DEGENERATE_CALL_LINES = [
    "[" * 1000,  # nesting beyond the JSON parser's recursion
    '{"name": "get_weather", "parameters": ' + "[" * 5000 + "]" * 5000 + "}",
    '{"name": "get_weather", "parameters": {"city": ' + "9" * 4301 + "}}",  # beyond int()'s digit limit
    '{"name": ' + "1" * 5000 + "}",
    '{"name": "get_weather"\x00\x01\x1b}',
    '{"name": "\\ud800"}',  # a lone surrogate
    "x" * 100_000,
]


@pytest.mark.parametrize("line", DEGENERATE_CALL_LINES, ids=range(len(DEGENERATE_CALL_LINES)))
def test_degenerate_tool_calls_score_as_unparsable_output_instead_of_raising(line):
    # Garbage an earlier test left in this worker would otherwise be finalized at the JSON parser's recursion limit,
    # where pytest's hook for a finalizer's warning runs out of stack itself ("Failed to process unraisable
    # exception"): outside pytest such a warning is only printed.
    gc.collect()
    response = turn(tool_calls=line)
    scores = tool_calling.reward_func([response], [""], [GT_TWO_CALLS])["extra_logs"]
    # an unparsable tool block: ToolRL's lowest correctness; format and length read the tags as usual
    assert scores["reward/correctness"] == [-3.0] or line.startswith(
        '{"name": "get_weather", "parameters": {"city": NaN'
    )
    assert all(len(values) == 1 and isinstance(values[0], float) for values in scores.values())


def test_a_nan_parameter_is_a_value_that_matches_nothing():
    # JSON's NaN parses; it equals no label value: names 1/2, get_weather's keys 1/2, no value: 6 · 1/6 − 3
    line = '{"name": "get_weather", "parameters": {"city": NaN}}'
    assert tool_calling.correctness(turn(tool_calls=line), GT_TWO_CALLS) == -2.0


def test_unbalanced_tags_and_a_huge_response_score_without_raising():
    for response in [
        "<tool_call>\n" + "{" * 3000,
        "</think><tool_call><tool_call>\n\n</tool_call>",
        "<think>" * 50_000,
    ]:
        scores = tool_calling.score(response, GT_TWO_CALLS)
        assert scores["correctness"] == -3.0 and scores["format"] == 0.0
