"""API-Bank style evaluation of a tool-calling policy: call accuracy per level and overall, format accuracy,
mean think length.

    python examples/eval/eval_api_bank.py samples.jsonl --model ./ckpt/gd2po_tool_calling   # generate with vLLM
    python examples/eval/eval_api_bank.py scored.jsonl   # rows already hold a response

Each row (JSON list or JSONL): `input` (chat messages or a user string), `label` (the ground-truth assistant
turn, in the tool-calling recipe's <think>/<tool_call>/<response> format), optional `level` (API-Bank level,
default "all") and `response` (when absent, `--model` generates it greedily with vLLM).

A call is correct when the predicted call list equals the ground truth's (same names, same parameters, order
free); a ground truth without calls expects none. Format is the recipe's format reward; think length counts the
words of the last <think> block, as the length reward does.
"""

import argparse
import importlib.util
import json
import os
from collections import defaultdict

HERE = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.util.spec_from_file_location(
    "tool_calling_rules", os.path.join(HERE, "..", "rewards", "tool_calling.py")
)
rules = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(rules)


def canonical(calls):
    """Calls as sorted canonical JSON strings: call accuracy ignores their order."""
    return sorted(
        json.dumps({"name": c["name"], "parameters": c.get("parameters", {})}, sort_keys=True) for c in calls
    )


def score_sample(response, label):
    response = rules.TRAILING_END_TOKENS.sub("", response).strip()
    expected = rules.label_calls(str(label)) or []  # a ground truth without calls expects none
    predicted = (
        [] if rules.block(response, "tool_call") is None else rules.predicted_calls(response)
    )  # None: malformed
    return {
        "call_correct": float(predicted is not None and canonical(predicted) == canonical(expected)),
        "format_ok": rules.format_ok(response, str(label)),
        "think_words": float(rules.think_words(response)),
    }


def evaluate(samples):
    """{"overall": metrics, "levels": {level: metrics}} with metrics = call/format accuracy, mean think words, n."""
    by_level = defaultdict(list)
    if not samples:
        raise ValueError("no rows to evaluate")
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
        by_level[str(sample.get("level", "all"))].append(score_sample(sample["response"], sample["label"]))

    def summarize(scores):
        n = len(scores)
        return {
            "call_accuracy": sum(s["call_correct"] for s in scores) / n,
            "format_accuracy": sum(s["format_ok"] for s in scores) / n,
            "mean_think_words": sum(s["think_words"] for s in scores) / n,
            "n": n,
        }

    return {
        "overall": summarize([s for scores in by_level.values() for s in scores]),
        "levels": {lv: summarize(s) for lv, s in sorted(by_level.items())},
    }


def generate(samples, model, tensor_parallel_size, max_tokens):
    try:
        from vllm import LLM, SamplingParams
    except ImportError as error:
        raise SystemExit(
            f"error: rows without 'response' need vLLM to generate them ({error}); install vllm or add responses"
        )
    llm = LLM(model=model, tensor_parallel_size=tensor_parallel_size)
    tokenizer = llm.get_tokenizer()
    prompts = [
        tokenizer.apply_chat_template(
            s["input"] if isinstance(s["input"], list) else [{"role": "user", "content": s["input"]}],
            tokenize=False,
            add_generation_prompt=True,
        )
        for s in samples
    ]
    outputs = llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=max_tokens))
    for sample, output in zip(samples, outputs):
        sample["response"] = output.outputs[0].text


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("samples", help="JSON or JSONL rows")
    parser.add_argument("--model", default=None, help="policy to generate missing responses with (vLLM)")
    parser.add_argument("--tensor-parallel-size", type=int, default=1)
    parser.add_argument("--max-tokens", type=int, default=1024)
    parser.add_argument("--output", default=None, help="write the metrics (and the responses) as JSON here")
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
    missing = [i for i, s in enumerate(samples) if isinstance(s, dict) and "response" not in s]
    if missing:
        if not args.model:
            raise SystemExit(
                f"error: {len(missing)} rows have no 'response' (first: row {missing[0]}); pass --model to generate "
                "them"
            )
        generate([samples[i] for i in missing], args.model, args.tensor_parallel_size, args.max_tokens)
    try:
        metrics = evaluate(samples)
    except ValueError as error:
        raise SystemExit(f"error: {error}")
    print(f"{'level':<8} {'n':>5} {'call acc':>9} {'format acc':>11} {'think words':>12}")
    for level, m in list(metrics["levels"].items()) + [("overall", metrics["overall"])]:
        print(
            f"{level:<8} {m['n']:>5} {m['call_accuracy']:>9.3f} {m['format_accuracy']:>11.3f} "
            f"{m['mean_think_words']:>12.1f}"
        )
    if args.output:
        with open(args.output, "w") as handle:
            json.dump({"metrics": metrics, "samples": samples}, handle, indent=1)


if __name__ == "__main__":
    main()
