"""API-Bank evaluation of a tool-calling policy: call accuracy per level and overall, format rate, length score.

    python examples/data/prepare_api_bank.py GD2PO/tool-calling/API_Bank --output data/api_bank/test.jsonl
    python examples/eval/eval_api_bank.py data/api_bank/test.jsonl --model ./ckpt/gd2po_tool_calling --output m.json
    python examples/eval/eval_api_bank.py scored.jsonl        # rows that already hold a `response`

Each row (JSON list or JSONL): `input` (chat messages or a user string), `label` (the ground-truth assistant turn,
with a `<tool_call>` block of one JSON call per line), optional `level` (default "all"), `id` and `response` (when
absent, `--model` generates it greedily: vLLM on a GPU, transformers on a CPU, up to --max-tokens new tokens).

`--scoring paper` (the default) computes the numbers of the GD²PO paper's API-Bank table, by the rules of the
authors' evaluation (tool-calling/API_Bank/evaluate_reward.py and the call parsing of generate_deterministic.py,
rewritten from their behaviour):
  calls      read from the text between the response's first `<tool_call>` and the next `</tool_call>` (both tags
             must occur), one JSON value per non-blank stripped line; lines that do not parse are skipped;
  accuracy   a row is correct when any predicted call, taken in order, has the ground truth's first call's name and
             parameters (Python equality of the parsed JSON: key order and whitespace never matter); a call object
             without both "name" and "parameters" is read as the parameters of the ground-truth tool; a JSON string
             is parsed once more; the authors' loop stops at a call it cannot read (a number, true/false, null, a
             string that does not parse, a list or a string that mentions both keys). Rows whose label has no call
             are not scored (left out of the accuracy's denominator, counted in the format and length rates).
             Accuracy = 100 · correct / scored, overall over all scored rows, rounded to 2 decimals;
  format     on the stripped response: each of think, tool_call and response opens as often as it closes and at
             most once; a think block; a tool_call and/or a response block, each opening after `</think>` and
             closing after it opens; a response after `</tool_call>`. Text around the blocks is allowed, and the
             label does not matter. Rate = 100 · well-formed / rows, rounded to 2 decimals;
  length     words in the first think block / 512, rounded to 2 decimals, at most 1; 0 without a think block;
             the mean per level and overall, rounded to 4 decimals.
`--scoring exact` is the stricter scoring of the tool-calling rewards (examples/rewards/tool_calling.py):
  accuracy   the predicted call list equals the label's call list (names and parameters, order free): an extra or
             repeated call is wrong, as is a tool block with any line that is not a call; a label without calls
             expects none;
  format     the training format reward: exactly the think block, then the blocks the label has, each on its own
             line;
  length     the mean number of words in the last think block (raw, not scaled). Accuracies are percentages
             (100 · rows / rows scored, rounded to 2 decimals), as in the paper's scoring.
Both strip trailing end-of-turn tokens (<|im_end|>, </s>, ...) before scoring.
"""

import argparse
import json
import os
import sys
from collections import defaultdict

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.join(HERE, "..", "data")]  # generation.py, and rows.py of the converters
from generation import generate  # noqa: E402
from rows import tool_calling_rules  # noqa: E402

rules = tool_calling_rules()
PAPER_LENGTH_WORDS = 512
TAGS = ("think", "tool_call", "response")


# ------------------------------------------------------------------------------------------- the paper's rules


def paper_calls(response):
    """The calls the authors read from a response: JSON values, one per non-blank line of its first tool block."""
    if "<tool_call>" not in response or "</tool_call>" not in response:
        return []
    content = response.split("<tool_call>", 1)[1].split("</tool_call>", 1)[0]
    calls = []
    for line in content.splitlines():
        if line.strip():
            try:
                calls.append(json.loads(line.strip()))
            except (ValueError, RecursionError):  # unparsable lines are skipped
                pass
    return calls


def paper_call_correct(calls, expected):
    """1 when a call, in order, matches ``expected`` (name and parameters); 0 when none does before one that
    cannot be read."""
    for call in calls:
        if isinstance(call, str):
            try:
                call = json.loads(call)
            except (ValueError, RecursionError):
                return 0
        if not isinstance(call, (dict, list, str)):
            return 0  # a number, true/false or null cannot be searched for keys
        if "name" in call and "parameters" in call:
            if not isinstance(call, dict):
                return 0  # a list or a string cannot be indexed by key
            name, parameters = call["name"], call["parameters"]
        else:
            name, parameters = expected["name"], call
        if name == expected["name"] and parameters == expected["parameters"]:
            return 1
    return 0


def paper_format_ok(response):
    text = response.strip()
    if not text:
        return 0
    if any(text.count(f"<{tag}>") != text.count(f"</{tag}>") or text.count(f"<{tag}>") > 1 for tag in TAGS):
        return 0
    opens = {tag: text.find(f"<{tag}>") for tag in TAGS}
    closes = {tag: text.find(f"</{tag}>") for tag in TAGS}
    if opens["think"] < 0 or closes["think"] <= opens["think"]:
        return 0
    present = [tag for tag in ("tool_call", "response") if opens[tag] >= 0]
    after_think = closes["think"] + len("</think>")
    if not present or any(closes[t] <= opens[t] or opens[t] < after_think for t in present):
        return 0
    return int(len(present) == 1 or opens["response"] >= closes["tool_call"])


def paper_length_score(response):
    start, end = response.find("<think>"), response.find("</think>")
    if start < 0 or end <= start:
        return 0.0
    words = len(response[start + len("<think>") : end].split())
    return min(round(words / PAPER_LENGTH_WORDS, 2), 1.0)


def score_paper(response, label):
    expected = rules.label_calls(label)
    return {
        "call_correct": None if not expected else paper_call_correct(paper_calls(response), expected[0]),
        "format_ok": paper_format_ok(response),
        "length_score": paper_length_score(response),
    }


# ------------------------------------------------------------------------------------------- the exact rules


def canonical(calls):
    """Calls as sorted canonical JSON strings: call accuracy ignores their order."""
    return sorted(
        json.dumps({"name": c["name"], "parameters": c.get("parameters", {})}, sort_keys=True) for c in calls
    )


def score_exact(response, label):
    expected = rules.label_calls(label) or []  # a ground truth without calls expects none
    predicted = [] if rules.block(response, "tool_call") is None else rules.predicted_calls(response)  # None: bad
    return {
        "call_correct": float(predicted is not None and canonical(predicted) == canonical(expected)),
        "format_ok": rules.format_ok(response, label),
        "think_words": float(rules.think_words(response)),
    }


def summarize(scores, scoring):
    n = len(scores)
    if scoring == "exact":
        return {
            "call_accuracy": round(100 * sum(s["call_correct"] for s in scores) / n, 2),
            "format_accuracy": round(100 * sum(s["format_ok"] for s in scores) / n, 2),
            "mean_think_words": sum(s["think_words"] for s in scores) / n,
            "n": n,
        }
    scored = [s["call_correct"] for s in scores if s["call_correct"] is not None]
    return {
        "call_accuracy": round(100 * sum(scored) / len(scored), 2) if scored else None,
        "format_rate": round(100 * sum(s["format_ok"] for s in scores) / n, 2),
        "length_score": round(sum(s["length_score"] for s in scores) / n, 4),
        "n": n,
        "scored": len(scored),
    }


def evaluate(samples, scoring="paper"):
    """{"overall": metrics, "levels": {level: metrics}}; each sample gets its row's scores under "scores"."""
    if not samples:
        raise ValueError("no rows to evaluate")
    score = score_paper if scoring == "paper" else score_exact
    by_level = defaultdict(list)
    for index, sample in enumerate(samples):
        if not isinstance(sample, dict):
            raise ValueError(
                f"row {index} is a {type(sample).__name__} ({sample!r:.100}), expected an object with 'label' and "
                "'response'"
            )
        if not isinstance(sample.get("response"), str) or not isinstance(sample.get("label"), str):
            # A null label would otherwise read as "no calls expected" and score a call-free answer 1.0.
            raise ValueError(
                f"row {index} needs a string 'response' and a string 'label'; got keys {sorted(sample)}, "
                f"label {sample.get('label')!r:.100}"
            )
        response = rules.TRAILING_END_TOKENS.sub("", sample["response"]).strip()
        try:
            sample["scores"] = score(response, sample["label"])
        except ValueError as error:  # the label's tool block does not parse
            raise ValueError(f"row {index} ({sample.get('id', 'no id')}): {error}") from None
        by_level[str(sample.get("level", "all"))].append(sample["scores"])
    return {
        "scoring": scoring,
        "overall": summarize([s for scores in by_level.values() for s in scores], scoring),
        "levels": {level: summarize(scores, scoring) for level, scores in sorted(by_level.items())},
    }


def table(metrics):
    rows = list(metrics["levels"].items()) + [("overall", metrics["overall"])]
    if metrics["scoring"] == "exact":
        lines = [f"{'level':<8} {'n':>5} {'call acc %':>10} {'format acc %':>12} {'think words':>12}"]
        lines += [
            f"{lv:<8} {m['n']:>5} {m['call_accuracy']:>10.2f} {m['format_accuracy']:>12.2f} "
            f"{m['mean_think_words']:>12.1f}"
            for lv, m in rows
        ]
        return "\n".join(lines)
    lines = [f"{'level':<8} {'n':>5} {'scored':>6} {'call acc %':>10} {'format %':>9} {'length':>7}"]
    for lv, m in rows:
        accuracy = "n/a" if m["call_accuracy"] is None else f"{m['call_accuracy']:.2f}"
        lines.append(
            f"{lv:<8} {m['n']:>5} {m['scored']:>6} {accuracy:>10} {m['format_rate']:>9.2f} {m['length_score']:>7.4f}"
        )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("samples", help="JSON or JSONL rows (examples/data/prepare_api_bank.py writes them)")
    parser.add_argument("--scoring", choices=["paper", "exact"], default="paper", help="see the module docstring")
    parser.add_argument("--model", default=None, help="policy to generate missing responses with")
    parser.add_argument("--engine", choices=["auto", "vllm", "transformers"], default="auto", help="auto: vLLM on GPU")
    parser.add_argument("--tensor-parallel-size", type=int, default=1)
    parser.add_argument("--max-tokens", type=int, default=4096, help="new tokens per response (the authors': 4096)")
    parser.add_argument("--max-model-len", type=int, default=4096, help="vLLM's context length (the authors': 4096)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--output", default=None, help="write the metrics and the scored rows as JSON here")
    args = parser.parse_args(argv)
    try:
        with open(args.samples, encoding="utf-8") as handle:
            text = handle.read()
        if args.samples.endswith(".json"):
            samples = json.loads(text)
            samples = [samples] if isinstance(samples, dict) else samples  # a single row
        else:
            samples = [json.loads(line) for line in text.splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SystemExit(f"error: cannot read {args.samples}: {error}")
    if not isinstance(samples, list):
        raise SystemExit(f"error: {args.samples} holds a {type(samples).__name__}, expected a list of rows")
    missing = [s for s in samples if isinstance(s, dict) and "response" not in s]
    if missing:
        if not args.model:
            first = next(i for i, s in enumerate(samples) if isinstance(s, dict) and "response" not in s)
            raise SystemExit(
                f"error: {len(missing)} rows have no 'response' (first: row {first}); pass --model to generate them"
            )
        conversations = [
            s["input"] if isinstance(s["input"], list) else [{"role": "user", "content": s["input"]}] for s in missing
        ]
        responses = generate(
            conversations,
            args.model,
            engine=args.engine,
            max_new_tokens=args.max_tokens,
            seed=args.seed,
            tensor_parallel_size=args.tensor_parallel_size,
            max_model_len=args.max_model_len,
        )
        for sample, response in zip(missing, responses):
            sample["response"] = response
    try:
        metrics = evaluate(samples, args.scoring)
    except ValueError as error:
        raise SystemExit(f"error: {error}")
    print(table(metrics))
    if args.output:
        with open(args.output, "w", encoding="utf-8") as handle:
            json.dump({"metrics": metrics, "samples": samples}, handle, indent=1, ensure_ascii=False)


if __name__ == "__main__":
    main()
