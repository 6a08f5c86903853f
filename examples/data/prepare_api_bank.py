"""Convert the GD²PO authors' processed API-Bank evaluation set into rows for examples/eval/eval_api_bank.py.

    python examples/data/prepare_api_bank.py GD2PO/tool-calling/API_Bank --output data/api_bank/test.jsonl
    python examples/data/prepare_api_bank.py level-1-api_processed.json level-3-api_processed.json --output …

Input: the folder holding `level-{1,2,3}-api_processed.json` (all three levels are converted), or those files.
Each file is a JSON list of {system, user, answer, other} rows (597 in all: 399, 67 and 131 rows):
  - the level is the one in the file name: `other.file` names other levels' source files and is not used;
  - the model input is exactly [system, user]: the dialogue history is already flattened into the user text;
  - `answer` is the ground-truth call, a one-element list of calls (levels 1 and 3) or a bare call (level 2),
    each {"name": str, "parameters": {…}} (parameters may be empty).
Each output line is {"id": "Level<N>_<row>" (the authors' key, for comparing row by row), "level": N,
"input": [system, user], "label": the ground-truth turn "<tool_call>\\n<one JSON call per line>\\n</tool_call>"};
texts are kept byte for byte (UTF-8). A label the reward rules cannot parse back is refused, naming the row.
"""

import argparse
import json
import os
import re

from rows import checked_label_calls, read_rows, tool_calling_rules, write_jsonl

LEVEL = re.compile(r"level-(\d+)-")


def input_files(paths):
    """The files to convert with their levels, in level order; a folder stands for its level-N-*.json files."""
    files = []
    for path in paths:
        if os.path.isdir(path):
            found = sorted(name for name in os.listdir(path) if LEVEL.match(name) and name.endswith(".json"))
            if not found:
                raise SystemExit(f"error: {path} holds no level-<N>-api_processed.json files")
            files += [os.path.join(path, name) for name in found]
        else:
            files.append(path)
    levels = {}
    for path in files:
        match = LEVEL.match(os.path.basename(path))
        if match is None:
            raise SystemExit(
                f"error: cannot tell the API-Bank level of {path}: the file name must start with level-<N>- "
                "(as level-1-api_processed.json)"
            )
        level = int(match.group(1))
        if level in levels:
            raise SystemExit(f"error: level {level} is given twice: {levels[level]} and {path}")
        levels[level] = path
    return sorted(levels.items())


def answer_calls(answer, where):
    """The ground-truth calls: a bare call or a non-empty list of calls, each {"name": str, "parameters": dict}."""
    calls = answer if isinstance(answer, list) else [answer]
    if not calls or not all(
        isinstance(c, dict) and isinstance(c.get("name"), str) and isinstance(c.get("parameters"), dict) for c in calls
    ):
        raise SystemExit(
            f"error: {where}: 'answer' must be a call {{'name': str, 'parameters': {{...}}}} or a non-empty list of "
            f"them, got {answer!r:.200}"
        )
    return [{"name": c["name"], "parameters": c["parameters"]} for c in calls]


def convert(row, level, index, rules, where):
    for field in ("system", "user"):
        if not isinstance(row.get(field), str) or not row[field].strip():
            raise SystemExit(f"error: {where}: '{field}' must be a non-empty string; keys {sorted(row)}")
    calls = answer_calls(row.get("answer"), where)
    label = "<tool_call>\n" + "\n".join(json.dumps(c, ensure_ascii=False) for c in calls) + "\n</tool_call>"
    if checked_label_calls(rules, label, where) != calls:  # the reward rules must read back exactly these calls
        raise SystemExit(f"error: {where}: the reward rules read the label {label!r:.200} as other calls")
    return {
        "id": f"Level{level}_{index}",
        "level": level,
        "input": [{"role": "system", "content": row["system"]}, {"role": "user", "content": row["user"]}],
        "label": label,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", nargs="+", help="the API_Bank folder, or level-<N>-api_processed.json files")
    parser.add_argument("--output", required=True, help="JSONL rows for examples/eval/eval_api_bank.py")
    args = parser.parse_args(argv)
    rules = tool_calling_rules()
    converted = []
    for level, path in input_files(args.inputs):
        rows = read_rows(path)
        level_rows = [convert(row, level, index, rules, f"{path} row {index}") for index, row in enumerate(rows)]
        prompts = [row["input"][0]["content"] + "\0" + row["input"][1]["content"] for row in level_rows]
        calls = [call for row in level_rows for call in rules.label_calls(row["label"])]
        print(
            f"level {level}: {len(level_rows)} rows from {path} ({len(prompts) - len(set(prompts))} repeated prompts, "
            f"{sum(not c['parameters'] for c in calls)} calls without parameters, "
            f"{sum(not prompt.isascii() for prompt in prompts)} non-ASCII prompts)"
        )
        converted += level_rows
    write_jsonl(converted, args.output)


if __name__ == "__main__":
    main()
