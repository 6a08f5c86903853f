"""Convert helpfulness–safety prompt sets into OpenRLHF prompt JSONL for the safe-alignment recipe.

    python examples/data/prepare_safe_alignment.py alpaca_prompt_only/train.parquet --output data/safe/train.jsonl
    python examples/data/prepare_safe_alignment.py anthropic_hh_rlhf/test.parquet --output data/safe/eval_hh.jsonl
    python examples/data/prepare_safe_alignment.py pku-saferlhf/test.parquet --output data/safe/eval_pku.jsonl

Row formats, detected per row (or forced with --format):
  verl    `prompt` = a list of chat messages ({"role", "content"}), as the GD²PO authors ship their prompt sets
          (safe-alignment/dataset/*/*.parquet, with `data_source`): every turn up to the last user turn, texts
          unchanged;
  alpaca  `instruction` and optional `input` → one user message (instruction, blank line, input);
  hh      `chosen` = "\\n\\nHuman: …\\n\\nAssistant: …" → the dialogue up to its last Human turn;
  pku     `prompt` (a string) → one user message.
Each output line is {"input": [chat messages], "label": the same messages as a JSON string, "data_source": the
row's `data_source` or the format}: the label lets `--gd2po.reward_chat_template own` re-render the conversation
with each reward model's own chat template, and the evaluation reports per data source.

Multi-turn prompts whose turns do not alternate user/assistant (11 rows of the authors' HH-RLHF test set have two
assistant turns in a row) are converted as they are and counted in the summary line: Qwen's chat template accepts
them; a template that enforces alternation (Llama 2's, Mistral's) raises on them when OpenRLHF renders the prompt.
"""

import argparse
import json
import re

from rows import check_user_prompt, positive_int, read_rows, write_jsonl

TURN = re.compile(r"\n\n(Human|Assistant): ")
ROLES = ("system", "user", "assistant")


def detect(row):
    if isinstance(row.get("prompt"), (list, tuple)):
        return "verl"
    if "instruction" in row:
        return "alpaca"
    if "chosen" in row:
        return "hh"
    if isinstance(row.get("prompt"), str):
        return "pku"
    return None


def describe(row):
    """What a row holds, for the error of a row no format reads: its keys and the type of `prompt`."""
    found = f"keys {sorted(row)}"
    if "prompt" in row:
        found += f", 'prompt' is a {type(row['prompt']).__name__}"
    return found


def verl_messages(prompt, index):
    """The conversation up to its last user turn; every message must be {role: system|user|assistant, content: str}."""
    for number, message in enumerate(prompt):
        if not (
            isinstance(message, dict) and message.get("role") in ROLES and isinstance(message.get("content"), str)
        ):
            raise SystemExit(
                f"error: row {index}: prompt message {number} is not a {{'role': system|user|assistant, 'content': "
                f"str}} message: {message!r:.200}"
            )
    users = [number for number, message in enumerate(prompt) if message["role"] == "user"]
    if not users:
        raise SystemExit(f"error: row {index}: the prompt has no user message (roles {[m['role'] for m in prompt]})")
    return [{"role": m["role"], "content": m["content"]} for m in prompt[: users[-1] + 1]]


def messages_of(row, kind, index):
    if kind == "verl":
        if not isinstance(row.get("prompt"), (list, tuple)):
            raise SystemExit(
                f"error: row {index} is not a verl row: 'prompt' must be a list of messages; {describe(row)}"
            )
        return verl_messages(row["prompt"], index)
    if kind == "alpaca":
        text = row["instruction"].strip() + (f"\n\n{row['input'].strip()}" if (row.get("input") or "").strip() else "")
        return [{"role": "user", "content": text}]
    if kind == "pku":
        if not isinstance(row.get("prompt"), str):
            raise SystemExit(
                f"error: row {index} is not a pku row: 'prompt' must be a string; {describe(row)}"
                + (" (a list of messages is the verl layout: --format verl or auto)" if "prompt" in row else "")
            )
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


def alternates(messages):
    """True when the turns after an optional system message go user, assistant, user, …"""
    turns = [m["role"] for m in messages if m["role"] != "system"]
    return all(role == ("user" if number % 2 == 0 else "assistant") for number, role in enumerate(turns))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input", help="rows: .json, .jsonl or .parquet")
    parser.add_argument("--output", required=True, help="OpenRLHF prompt JSONL to write")
    parser.add_argument("--format", choices=["auto", "verl", "alpaca", "hh", "pku"], default="auto")
    parser.add_argument("--max-rows", type=positive_int, default=None, help="convert only the first N rows")
    args = parser.parse_args(argv)
    converted, multi_turn, not_alternating = [], 0, 0
    for index, row in enumerate(read_rows(args.input)[: args.max_rows]):
        kind = detect(row) if args.format == "auto" else args.format
        if kind is None:
            raise SystemExit(
                f"error: row {index} is neither verl (a 'prompt' list of messages), alpaca ('instruction'), hh "
                f"('chosen') nor pku (a 'prompt' string); it has {describe(row)}"
            )
        try:
            messages = messages_of(row, kind, index)
        except (KeyError, AttributeError, TypeError) as error:
            raise SystemExit(f"error: row {index} is not a valid {kind} row: {error!r}; it has {describe(row)}")
        check_user_prompt(messages, index)
        multi_turn += sum(m["role"] == "user" for m in messages) > 1
        not_alternating += not alternates(messages)
        source = row.get("data_source") if isinstance(row.get("data_source"), str) else kind
        converted.append({"input": messages, "label": json.dumps(messages, ensure_ascii=False), "data_source": source})
    write_jsonl(
        converted,
        args.output,
        summary=f"{multi_turn} multi-turn, {not_alternating} whose turns do not alternate user/assistant",
    )


if __name__ == "__main__":
    main()
