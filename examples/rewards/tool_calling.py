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

Dimensions, per rollout, following the rules of ToolRL's reward (the GD²PO authors' `rlla.py`; README table
"ToolRL rule → our test"):
  correctness in [-3, 3]: 0 when the ground truth's answer (the part after its `</think>`) has no `<tool_call>`
      block. -3 when the prediction has no `<tool_call>…</tool_call>` block, when any line of its block (blank
      lines included) is not a JSON object with a "name", or when a call naming a ground-truth tool has no
      "parameters" object. +3 when the call lists are equal (order included). Otherwise 6·score/max − 3 with
          score = M(gt names, predicted names) + Σ_{gt call c, in order} [M(keys of c, keys of p) + #{keys of c
                  whose values equal p's}],
      M the multiset Jaccard index (repeats count: |A ∩ B| / (|A| + |B| − |A ∩ B|), 1 for equal lists, 0 when
      one is empty), p the not yet used predicted call with c's name that scores highest for c (the first on a
      tie), used up only when it scores above 0; max = 1 + Σ_{gt call c} (1 + #params of c). A predicted call
      with another name is never looked into: a non-string name or non-object parameters only cost it its
      share of the name score.
  format in {0, 1}: 1 when the response is exactly `<think>…</think>`, then the blocks the ground truth's
      answer has, each on its own line: `\\n<tool_call>\\n…\\n</tool_call>` and/or `\\n<response>…</response>`
      (neither: the think block alone); the tool_call and response tags the ground truth has occur exactly
      once. Think tags are not counted, nor tags the ground truth does not have.
  length in [0, 1]: words in the last `<think>` block (up to its `</think>`) / 512, rounded to 2 decimals and
      capped at 1; 0 unless the response has both tags.
Deliberate difference: the ground truth's tool block is the one after its `</think>` (17 of the 346 rows of
ToolRL's SFT file mention a literal `<tool_call>` in their thinking, on which the authors' parser fails). A
ground-truth tool block that does not parse raises ValueError naming the label: bad data must not score 0.
"""

import json
import re
from collections import Counter

# End-of-turn markers that decoding with skip_special_tokens=False leaves after the response.
TRAILING_END_TOKENS = re.compile(r"(?:\s|<\|im_end\|>|<\|eot_id\|>|<\|endoftext\|>|<\|end_of_text\|>|</s>)+\Z")
THINK_WORDS_FOR_FULL_LENGTH = 512


def block(text, tag):
    """The content of the first <tag>…</tag> block, or None."""
    match = re.search(rf"<{tag}>(.*?)</{tag}>", text, re.DOTALL)
    return match.group(1) if match else None


def answer_part(ground_truth):
    """The ground truth after its thinking: its blocks are read from there."""
    return ground_truth.split("</think>", 1)[1] if "</think>" in ground_truth else ground_truth


def label_calls(ground_truth):
    """The ground truth's calls (blank lines skipped, missing parameters as {}), or None without a tool block."""
    content = block(answer_part(ground_truth), "tool_call")
    if content is None:
        return None
    calls = []
    for number, line in enumerate(content.strip().splitlines(), 1):
        if not line.strip():
            continue
        try:
            call = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"label tool_call line {number} is not JSON ({error}): {line!r:.200}") from None
        if not (
            isinstance(call, dict)
            and isinstance(call.get("name"), str)
            and isinstance(call.get("parameters", {}), dict)
        ):
            raise ValueError(
                f"label tool_call line {number} is not a {{'name': str, 'parameters': dict}} object: {line!r:.200}"
            )
        calls.append({"name": call["name"], "parameters": call.get("parameters", {})})
    return calls


def predicted_calls(response):
    """The response's calls, one JSON object per line of its first tool block, or None when the block is missing
    or any line (a blank one included) is not an object with a name."""
    content = block(response, "tool_call")
    if content is None:
        return None
    calls = []
    for line in content.strip().split("\n"):
        try:
            call = json.loads(line)
        except (ValueError, RecursionError):  # not JSON, an integer beyond Python's 4300 digits, deep nesting
            return None
        if not isinstance(call, dict) or "name" not in call:
            return None
        calls.append(call)
    return calls


def multiset_jaccard(a, b):
    """|A ∩ B| / (|A| + |B| − |A ∩ B|) over multisets: 1 for equal lists, 0 when one is empty."""
    if a == b:
        return 1.0
    if not a or not b:
        return 0.0
    shared = sum((Counter(a) & Counter(b)).values())
    return shared / (len(a) + len(b) - shared)


def correctness(response, ground_truth):
    expected = label_calls(ground_truth)
    if not expected:
        return 0.0
    predicted = predicted_calls(response)
    if predicted is None:
        return -3.0
    if predicted == expected:
        return 3.0
    try:
        score = multiset_jaccard([c["name"] for c in expected], [c["name"] for c in predicted])
    except TypeError:  # a name that cannot be counted (a list or an object)
        return -3.0
    expected_names = {c["name"] for c in expected}
    if any(
        c["name"] in expected_names and not isinstance(c.get("parameters"), dict)
        for c in predicted
        if isinstance(c["name"], str)
    ):
        return -3.0
    maximum = 1.0 + sum(1 + len(c["parameters"]) for c in expected)
    used = set()
    for call in expected:
        params = call["parameters"]
        best, best_score = None, 0.0
        for index, candidate in enumerate(predicted):
            if index in used or candidate["name"] != call["name"]:
                continue
            given = candidate["parameters"]
            candidate_score = multiset_jaccard(list(params), list(given)) + sum(
                key in given and given[key] == value for key, value in params.items()
            )
            if candidate_score > best_score:
                best, best_score = index, candidate_score
        if best is not None:
            used.add(best)
            score += best_score
    return 6.0 * score / maximum - 3.0


def format_ok(response, ground_truth):
    answer = answer_part(ground_truth)
    wanted = [tag for tag in ("tool_call", "response") if f"<{tag}>" in answer]
    body = {"tool_call": r"<tool_call>\n.*?\n</tool_call>", "response": r"<response>.*?</response>"}
    if re.fullmatch("\n".join([r"<think>.*?</think>"] + [body[tag] for tag in wanted]), response, re.DOTALL) is None:
        return 0.0
    return float(all(response.count(f"<{tag}>") == 1 and response.count(f"</{tag}>") == 1 for tag in wanted))


def think_words(response):
    """Words in the last <think> block (up to its </think>); 0 unless the response has both tags."""
    if "<think>" not in response or "</think>" not in response:
        return 0
    return len(response.rsplit("<think>", 1)[1].split("</think>", 1)[0].split())


def think_length(response):
    return round(min(think_words(response) / THINK_WORDS_FOR_FULL_LENGTH, 1.0), 2)


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
    dims = [score(query[len(prompt) :], label) for query, prompt, label in zip(queries, prompts, labels)]
    totals = [sum(d.values()) for d in dims]
    return {
        "rewards": totals,
        "scores": totals,
        "extra_logs": {f"reward/{key}": [d[key] for d in dims] for key in ("correctness", "format", "length")},
    }
