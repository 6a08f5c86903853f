"""Tool-calling rewards (ToolRL rules) as an OpenRLHF reward file: correctness, format and length.

Use it with `--reward.remote_url examples/rewards/tool_calling.py --gd2po.reward_keys correctness format length`,
or serve it over HTTP with `python -m gd2po_openrlhf.serve_rewards --reward-file examples/rewards/tool_calling.py`.

The response is the text after the prompt in each query. It is expected to look like

    <think> reasoning </think>
    <tool_call>
    {"name": "get_weather", "parameters": {"city": "Paris"}}
    {"name": "get_time", "parameters": {"tz": "CET"}}
    </tool_call>
    <response> text for the user </response>      (when the ground truth has one)

and the label (`--data.label_key`) holds the ground-truth assistant turn in the same format.

Dimensions, per rollout:
  correctness in [-3, 3]: 0 when the ground truth makes no tool call; -3 when the prediction's tool block is
      missing or a line of it is not a {"name": str, "parameters": dict} JSON object; +3 for an exact match of
      the call list; otherwise 6·score/max − 3 with
          score = Jaccard(gt names, predicted names)
                  + Σ_{gt call c} [Jaccard(keys of c, keys of p) + #{keys whose values are equal}]
      where p is the best-scoring not yet used predicted call with c's name (0 when there is none), and
          max = 1 + Σ_{gt call c} (1 + #params of c).
  format in {0, 1}: 1 when the whole response is `<think>…</think>` followed by the blocks its ground truth
      has, in order — `<tool_call>\\n…\\n</tool_call>` and/or `<response>…</response>` (a ground truth with
      neither expects a `<response>` block) — and each tag occurs exactly once.
  length in [0, 1]: min(words inside <think> / 512, 1), rounded to 2 decimals; 0 without think tags.
"""

import json
import re

TAGS = ("think", "tool_call", "response")
# End-of-turn markers that decoding with skip_special_tokens=False leaves after the response.
TRAILING_END_TOKENS = re.compile(r"(?:\s|<\|im_end\|>|<\|eot_id\|>|<\|endoftext\|>|<\|end_of_text\|>|</s>)+\Z")
THINK_WORDS_FOR_FULL_LENGTH = 512


def block(text, tag):
    """The content of the first <tag>…</tag> block, or None."""
    match = re.search(rf"<{tag}>(.*?)</{tag}>", text, re.DOTALL)
    return match.group(1) if match else None


def parse_tool_calls(content):
    """The calls of a tool block, one JSON object per non-empty line, or None if any line is malformed."""
    calls = []
    for line in content.strip().splitlines():
        if not line.strip():
            continue
        try:
            call = json.loads(line)
        except json.JSONDecodeError:
            return None
        if not (isinstance(call, dict) and isinstance(call.get("name"), str) and isinstance(call.get("parameters", {}), dict)):
            return None
        calls.append({"name": call["name"], "parameters": call.get("parameters", {})})
    return calls or None


def jaccard(a, b):
    a, b = set(a), set(b)
    return 1.0 if not a and not b else len(a & b) / len(a | b)


def correctness(response, ground_truth):
    expected_block = block(ground_truth, "tool_call")
    expected = parse_tool_calls(expected_block) if expected_block is not None else None
    if not expected:
        return 0.0
    predicted_block = block(response, "tool_call")
    predicted = parse_tool_calls(predicted_block) if predicted_block is not None else None
    if predicted is None:
        return -3.0
    if predicted == expected:
        return 3.0
    score = jaccard([c["name"] for c in expected], [c["name"] for c in predicted])
    maximum = 1.0 + sum(1 + len(c["parameters"]) for c in expected)
    unused = list(predicted)
    for call in expected:
        params = call["parameters"]

        def match(candidate):
            given = candidate["parameters"]
            return jaccard(params, given) + sum(key in given and given[key] == value for key, value in params.items())

        candidates = [c for c in unused if c["name"] == call["name"]]
        if candidates:
            best = max(candidates, key=match)
            score += match(best)
            unused.remove(best)
    return 6.0 * score / maximum - 3.0


def format_ok(response, ground_truth):
    wanted = ["think"] + [tag for tag in ("tool_call", "response") if f"<{tag}>" in ground_truth]
    if wanted == ["think"]:
        wanted.append("response")
    for tag in TAGS:
        count = 1 if tag in wanted else 0
        if response.count(f"<{tag}>") != count or response.count(f"</{tag}>") != count:
            return 0.0
    body = {"think": r"<think>.*?</think>", "tool_call": r"<tool_call>\n.*?\n</tool_call>", "response": r"<response>.*?</response>"}
    pattern = r"\s*".join(body[tag] for tag in wanted)
    return float(re.fullmatch(pattern, response, re.DOTALL) is not None)


def think_length(response):
    thought = block(response, "think")
    if thought is None:
        return 0.0
    return round(min(len(thought.split()) / THINK_WORDS_FOR_FULL_LENGTH, 1.0), 2)


def score(response, ground_truth):
    """The three dimensions of one response against its ground-truth assistant turn."""
    response = TRAILING_END_TOKENS.sub("", response).strip()
    ground_truth = str(ground_truth)
    return {
        "correctness": correctness(response, ground_truth),
        "format": format_ok(response, ground_truth),
        "length": think_length(response),
    }


def reward_func(queries, prompts, labels):
    """OpenRLHF's reward-file interface, for any number of rollouts (OpenRLHF sends one, the server a batch).

    Returns the summed reward as `rewards`/`scores` (what a stock estimator trains on) and each dimension as
    `extra_logs["reward/<key>"]` (what `--advantage_estimator gd2po` reads).
    """
    dims = [score(query[len(prompt):], label) for query, prompt, label in zip(queries, prompts, labels)]
    totals = [sum(d.values()) for d in dims]
    return {
        "rewards": totals,
        "scores": totals,
        "extra_logs": {f"reward/{key}": [d[key] for d in dims] for key in ("correctness", "format", "length")},
    }
