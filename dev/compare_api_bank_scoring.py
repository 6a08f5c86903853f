"""Row-by-row check of eval_api_bank.py's `--scoring paper` against the GD²PO authors' own API-Bank scoring.

    git clone https://github.com/Qwen-Applications/GD2PO   # or any checkout of it
    python examples/data/prepare_api_bank.py GD2PO/tool-calling/API_Bank --output /tmp/api_bank.jsonl
    python dev/compare_api_bank_scoring.py /tmp/api_bank.jsonl --authors GD2PO/tool-calling/API_Bank

For every converted row it writes a set of predictions (the ground truth, one wrong value, a wrong tool name, an
extra or repeated call, whitespace and key-order changes, a response block, broken tags, ...) and scores each one
twice: with the authors' functions, loaded at run time from their checkout (`compute_correctness_score`,
`validate_output_format` and `compute_length_score` from evaluate_reward.py; `parse_assistant_output` taken
alone from generate_deterministic.py, whose module imports vLLM), and with ours. Prints the agreement per kind of
prediction and exits 1 on any disagreement. Nothing of the authors' code is stored in this repository.
"""

import argparse
import ast
import importlib.util
import json
import os
import sys
from collections import Counter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "examples", "eval"))
import eval_api_bank  # noqa: E402


def authors_functions(folder):
    spec = importlib.util.spec_from_file_location(
        "authors_evaluate_reward", os.path.join(folder, "evaluate_reward.py")
    )
    evaluate_reward = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(evaluate_reward)
    source = open(os.path.join(folder, "generate_deterministic.py"), encoding="utf-8").read()
    tree = ast.parse(source)
    parse = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "parse_assistant_output")
    namespace = {"json": json}
    exec(compile(ast.Module(body=[parse], type_ignores=[]), "generate_deterministic.py", "exec"), namespace)
    return evaluate_reward, namespace["parse_assistant_output"]


def predictions(call):
    """(kind, response text) pairs built from one ground-truth call."""
    other = {"name": call["name"] + "Other", "parameters": {}}
    params = call["parameters"]
    wrong_value = dict(params)
    if params:
        wrong_value[next(iter(params))] = "WRONG"
    reordered = {"parameters": dict(reversed(list(params.items()))), "name": call["name"]}
    think = "<think> I should call the tool for the user. </think>"

    def block(*lines):
        return "<tool_call>\n" + "\n".join(lines) + "\n</tool_call>"

    gt = json.dumps(call, ensure_ascii=False)
    return [
        ("ground truth", f"{think}\n{block(gt)}"),
        ("one wrong value", f"{think}\n{block(json.dumps({'name': call['name'], 'parameters': wrong_value}))}"),
        ("wrong tool name", f"{think}\n{block(json.dumps({'name': call['name'] + 'X', 'parameters': params}))}"),
        ("extra call after", f"{think}\n{block(gt, json.dumps(other))}"),
        ("extra call before", f"{think}\n{block(json.dumps(other), gt)}"),
        ("same call twice", f"{think}\n{block(gt, gt)}"),
        ("whitespace", f"{think}\n<tool_call>\n\n   {json.dumps(call, separators=(',', ':'))}   \n\n</tool_call>"),
        ("key order", f"{think}\n{block(json.dumps(reordered))}"),
        ("tool call and response", f"{think}\n{block(gt)}\n<response> Done. </response>"),
        ("response before tool call", f"{think}\n<response> Done. </response>\n{block(gt)}"),
        ("no think", block(gt)),
        ("bare parameters", f"{think}\n{block(json.dumps(params))}"),
        ("unparsable line first", f"{think}\n{block('not json', gt)}"),
        ("number line first", f"{think}\n{block('42', gt)}"),
        ("string line", f"{think}\n{block(json.dumps(gt))}"),
        ("list line", f"{think}\n{block(json.dumps([call]))}"),
        ("no closing tag", f"{think}\n<tool_call>\n{gt}"),
        ("two tool blocks", f"{think}\n{block(json.dumps(other))}\n{block(gt)}"),
        ("text after the block", f"{think}\n{block(gt)}\nI hope this helps."),
        ("think only", think),
        ("empty", ""),
        ("long think", "<think>" + " word" * 300 + "</think>\n" + block(gt)),
        ("two think blocks", f"{think}\n<think> more </think>\n{block(gt)}"),
        ("end token", f"{think}\n{block(gt)}<|im_end|>"),
    ]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rows", help="JSONL from examples/data/prepare_api_bank.py")
    parser.add_argument("--authors", required=True, help="the authors' tool-calling/API_Bank folder")
    args = parser.parse_args(argv)
    evaluate_reward, parse_assistant_output = authors_functions(args.authors)
    rows = [json.loads(line) for line in open(args.rows, encoding="utf-8")]
    agree, total, first_disagreement = Counter(), Counter(), {}
    for row in rows:
        call = eval_api_bank.rules.label_calls(row["label"])[0]
        for kind, response in predictions(call):
            # The authors score vLLM's text, stripped and without special tokens.
            raw = eval_api_bank.rules.TRAILING_END_TOKENS.sub("", response).strip()
            _, tool_calls = parse_assistant_output(raw)
            theirs = (
                evaluate_reward.compute_correctness_score(tool_calls, call),
                evaluate_reward.validate_output_format(raw)[0],
                evaluate_reward.compute_length_score(raw)[0],
            )
            ours = eval_api_bank.score_paper(raw, row["label"])
            ours = (ours["call_correct"], ours["format_ok"], ours["length_score"])
            total[kind] += 1
            agree[kind] += ours == theirs
            if ours != theirs and kind not in first_disagreement:
                first_disagreement[kind] = (row["id"], theirs, ours)
    for kind in total:
        print(f"{kind:<28} {agree[kind]:>4} / {total[kind]} rows agree")
        if kind in first_disagreement:
            print(f"    first: {first_disagreement[kind]} (authors, ours)")
    print(f"all: {sum(agree.values())} / {sum(total.values())} (call, format, length) triples agree")
    return 0 if agree == total else 1


if __name__ == "__main__":
    sys.exit(main())
