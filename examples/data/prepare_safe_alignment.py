"""Convert helpfulness–safety prompt sets into OpenRLHF prompt JSONL for the safe-alignment recipe.

    python examples/data/prepare_safe_alignment.py alpaca_data.json --output data/safe/train.jsonl
    python examples/data/prepare_safe_alignment.py hh_rlhf_test.jsonl --output data/safe/eval_hh.jsonl
    python examples/data/prepare_safe_alignment.py pku_saferlhf_test.jsonl --output data/safe/eval_pku.jsonl

Row formats, detected per row (or forced with --format):
  alpaca  `instruction` and optional `input` → one user message (instruction, blank line, input);
  hh      `chosen` = "\\n\\nHuman: …\\n\\nAssistant: …" → the dialogue up to its last Human turn;
  pku     `prompt` (a string) → one user message.
Each output line is {"input": [chat messages], "label": the same messages as a JSON string}: the label lets
`--gd2po.reward_chat_template own` re-render the conversation with each reward model's own chat template.
"""

import argparse
import json
import re

from rows import check_user_prompt, positive_int, read_rows, write_jsonl

TURN = re.compile(r"\n\n(Human|Assistant): ")


def detect(row):
    if "instruction" in row:
        return "alpaca"
    if "chosen" in row:
        return "hh"
    if isinstance(row.get("prompt"), str):
        return "pku"
    return None


def messages_of(row, kind, index):
    if kind == "alpaca":
        text = row["instruction"].strip() + (f"\n\n{row['input'].strip()}" if (row.get("input") or "").strip() else "")
        return [{"role": "user", "content": text}]
    if kind == "pku":
        return [{"role": "user", "content": row["prompt"].strip()}]
    parts = TURN.split("\n\n" + row["chosen"].lstrip("\n"))[1:]  # [speaker, text, speaker, text, ...]
    turns = [
        {"role": "user" if speaker == "Human" else "assistant", "content": text.strip()}
        for speaker, text in zip(parts[::2], parts[1::2])
    ]
    while turns and turns[-1]["role"] == "assistant":  # the response being judged is not part of the prompt
        turns.pop()
    if not turns:
        raise SystemExit(f"error: row {index}: no 'Human:' turn in 'chosen'")
    return turns


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input", help="rows: .json, .jsonl or .parquet")
    parser.add_argument("--output", required=True, help="OpenRLHF prompt JSONL to write")
    parser.add_argument("--format", choices=["auto", "alpaca", "hh", "pku"], default="auto")
    parser.add_argument("--max-rows", type=positive_int, default=None, help="convert only the first N rows")
    args = parser.parse_args(argv)
    converted = []
    for index, row in enumerate(read_rows(args.input)[: args.max_rows]):
        kind = detect(row) if args.format == "auto" else args.format
        if kind is None:
            raise SystemExit(
                f"error: row {index} is neither alpaca (instruction), hh (chosen) nor pku (prompt); keys: "
                f"{sorted(row)}"
            )
        try:
            messages = messages_of(row, kind, index)
        except (KeyError, AttributeError, TypeError) as error:
            raise SystemExit(f"error: row {index} is not a valid {kind} row: {error!r}")
        check_user_prompt(messages, index)
        converted.append({"input": messages, "label": json.dumps(messages, ensure_ascii=False)})
    write_jsonl(converted, args.output)


if __name__ == "__main__":
    main()
