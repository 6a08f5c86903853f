"""Convert ToolRL's `rlla` rows into OpenRLHF prompt JSONL for the tool-calling recipe.

    python examples/data/prepare_tool_calling.py rlla_4k/train.parquet --output data/tool_calling/train.jsonl

Accepted rows (JSON, JSONL or Parquet):
  - processed (verl) rows: `prompt` = chat messages (system + user), `reward_model.ground_truth` = the
    ground-truth assistant turn;
  - raw rows: `instruction` (system prompt), `input` (user prompt), `output` (ground truth); `system`, `user`
    and `ground_truth` are accepted as the same fields.
Each output line is {"input": [system and user messages], "label": ground truth}: train with
`--data.input_key input --data.label_key label --data.apply_chat_template`. A ground truth whose tool block the
reward rules (examples/rewards/tool_calling.py) cannot parse is refused here, naming the row, rather than raising
in the reward file mid-training.
"""

import argparse

from rows import check_user_prompt, checked_label_calls, positive_int, read_rows, tool_calling_rules, write_jsonl


def convert(row, index, rules):
    if "prompt" in row and isinstance(row.get("reward_model"), dict):
        messages, ground_truth = row["prompt"], row["reward_model"].get("ground_truth")
    else:
        system = row.get("instruction", row.get("system"))
        user = row.get("input", row.get("user"))
        ground_truth = row.get("output", row.get("ground_truth"))
        if not isinstance(user, str) or not user.strip():
            raise SystemExit(f"error: row {index} has no user prompt ('input' or 'user'); keys: {sorted(row)}")
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
    if (
        not isinstance(messages, list)
        or not messages
        or not all(isinstance(m, dict) and {"role", "content"} <= set(m) for m in messages)
    ):
        raise SystemExit(f"error: row {index}: 'prompt' must be a non-empty list of {{role, content}} messages")
    check_user_prompt(messages, index)
    if not isinstance(ground_truth, str) or not ground_truth.strip():
        raise SystemExit(
            f"error: row {index} has no ground truth ('output', 'ground_truth' or reward_model.ground_truth)"
        )
    checked_label_calls(rules, ground_truth, f"row {index}")
    return {"input": [{"role": m["role"], "content": m["content"]} for m in messages], "label": ground_truth}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input", help="rlla rows: .json, .jsonl or .parquet")
    parser.add_argument("--output", required=True, help="OpenRLHF prompt JSONL to write")
    parser.add_argument("--max-rows", type=positive_int, default=None, help="convert only the first N rows")
    args = parser.parse_args(argv)
    rows = read_rows(args.input)[: args.max_rows]
    rules = tool_calling_rules()
    write_jsonl([convert(row, index, rules) for index, row in enumerate(rows)], args.output)


if __name__ == "__main__":
    main()
