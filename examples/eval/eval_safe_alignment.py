"""Helpfulness–safety evaluation of a policy: mean helpfulness (reward model), harmlessness (cost model) and their
sum per test set, as the GD²PO authors report it (safe-alignment/scripts/eval.sh: greedy mean@1 on the Alpaca,
HH-RLHF and PKU-SafeRLHF test prompts), and the share of responses over a cost budget.

    for f in alpaca_prompt_only anthropic_hh_rlhf pku-saferlhf; do
      python examples/data/prepare_safe_alignment.py GD2PO/safe-alignment/dataset/$f/test.parquet \\
        --output data/safe_alignment/test_$f.jsonl
    done
    python examples/eval/eval_safe_alignment.py data/safe_alignment/test_*.jsonl \\
      --policy ./ckpt/safe_alignment_gd2po_snr --reward-model Artessay/Qwen2.5-7B-SafeRLHF-RM \\
      --cost-model Artessay/Qwen2.5-7B-SafeRLHF-CM \\
      --value-head-prefix score_head --output-dir eval/safe_alignment

Rows: what examples/data/prepare_safe_alignment.py writes (`input` chat messages, `data_source`); a row that already
holds a `response` is scored as it is. The policy answers each prompt once, greedily (the authors' validation
setting), with prompts kept to their last --max-prompt-tokens (512) and up to --max-new-tokens (1024): vLLM on a
GPU, transformers' generate on a CPU. Each score model loads through OpenRLHF's own reward-model class (the value
at the last token, `--value-head-prefix` as `--ds.value_head_prefix`) and scores the conversation plus the
response rendered with its own tokenizer and chat template, as `--gd2po.reward_chat_template own` does in training.

Columns, per test set (the row's `data_source`):
  helpfulness   mean reward-model score;
  harmlessness  mean cost-model score times --cost-weight: +1 for a safety score (higher = safer, the authors'
                Artessay/Qwen2.5-7B-SafeRLHF-CM), -1 for a harm cost (higher = more harmful, Beaver's cost model);
  reward        mean of helpfulness + harmlessness, the authors' combined validation reward;
  over budget   with --budget D, the share of responses that violate it, in --cost.budget's convention: the raw
                cost-model score above D for a harm cost (--cost-weight -1), below D for a safety score (+1).
Writes DIR/safe_alignment_eval.json (settings, the table, every response with its scores) and
DIR/safe_alignment_eval.md (the table, also printed).
"""

import argparse
import json
import math
import os
import sys
from collections import defaultdict

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.join(HERE, "..", "data")]  # generation.py, and rows.py of the converters
from generation import generate, pick_engine  # noqa: E402
from rows import read_rows  # noqa: E402


def conversation_of(row, where):
    messages = row.get("input")
    if isinstance(messages, str) and messages.strip():
        return [{"role": "user", "content": messages}]
    if (
        isinstance(messages, list)
        and messages
        and all(isinstance(m, dict) and isinstance(m.get("content"), str) and "role" in m for m in messages)
    ):
        return [{"role": m["role"], "content": m["content"]} for m in messages]
    raise SystemExit(
        f"error: {where}: 'input' must be chat messages or a user string (examples/data/prepare_safe_alignment.py "
        f"writes them); keys {sorted(row)}"
    )


def score(model_path, conversations, responses, args, name):
    """Each conversation + response as ``model_path`` scores it: its own chat template, OpenRLHF's reward model."""
    import torch
    from openrlhf.models import get_llm_for_sequence_regression
    from tqdm import tqdm
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=True)
    except (OSError, ValueError) as error:
        raise SystemExit(f"error: cannot load the {name} model {model_path}: {error}") from None
    if getattr(tokenizer, "chat_template", None) is None:
        raise SystemExit(f"error: the {name} model {model_path} has no chat template to render the conversations with")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    on_gpu = torch.cuda.is_available()
    model = get_llm_for_sequence_regression(
        model_path,
        "reward",
        param_dtype="bf16",
        attn_implementation=args.attn_implementation,
        value_head_prefix=args.value_head_prefix,
    )
    if not on_gpu:  # bf16 on a CPU is slow and rounds the scores: the same OpenRLHF class, loaded in float32
        model = type(model).from_pretrained(model_path, config=model.config, torch_dtype=torch.float32)
    model = (model.cuda() if on_gpu else model).eval()
    texts = tokenizer.apply_chat_template(
        [c + [{"role": "assistant", "content": r}] for c, r in zip(conversations, responses)], tokenize=False
    )
    scores = []
    for start in tqdm(range(0, len(texts), args.batch_size), desc=f"scoring ({name})", unit="batch"):
        encoded = tokenizer(
            texts[start : start + args.batch_size], add_special_tokens=False, padding=True, return_tensors="pt"
        )
        with torch.no_grad():
            values = model(
                encoded["input_ids"].to(model.device), attention_mask=encoded["attention_mask"].to(model.device)
            )
        scores += values.float().cpu().tolist()
    del model
    return scores


def summarize(rows, args):
    by_source = defaultdict(list)
    for row in rows:
        by_source[row["data_source"]].append(row)
    results = {}
    for source, members in by_source.items():
        n = len(members)
        result = {"n": n}
        if args.reward_model:
            result["helpfulness"] = sum(r["helpfulness"] for r in members) / n
        if args.cost_model:
            result["harmlessness"] = sum(r["harmlessness"] for r in members) / n
        if args.reward_model and args.cost_model:
            result["reward"] = result["helpfulness"] + result["harmlessness"]
        if args.budget is not None:
            over = [
                r["cost_score"] > args.budget if args.cost_weight < 0 else r["cost_score"] < args.budget
                for r in members
            ]
            result["over_budget"] = sum(over) / n
        results[source] = result
    return results


def markdown(results, args):
    columns = [("n", "n", "{:d}")]
    columns += [("helpfulness", "helpfulness", "{:.4f}")] if args.reward_model else []
    columns += [("harmlessness", "harmlessness", "{:.4f}")] if args.cost_model else []
    columns += (
        [("reward", "reward (helpfulness + harmlessness)", "{:.4f}")] if args.reward_model and args.cost_model else []
    )
    if args.budget is not None:
        columns.append(("over_budget", f"over budget D = {args.budget:g}", "{:.1%}"))
    lines = ["| test set | " + " | ".join(title for _, title, _ in columns) + " |"]
    lines.append("|---|" + "---:|" * len(columns))
    for source, result in results.items():
        lines.append(f"| {source} | " + " | ".join(fmt.format(result[key]) for key, _, fmt in columns) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("prompts", nargs="+", help="JSONL test prompts from examples/data/prepare_safe_alignment.py")
    parser.add_argument("--policy", default=None, help="the policy to generate with (rows without a 'response')")
    parser.add_argument("--reward-model", default=None, help="the helpfulness reward model")
    parser.add_argument("--cost-model", default=None, help="the cost (or safety-score) model")
    parser.add_argument("--cost-weight", type=float, choices=[1.0, -1.0], default=1.0, help="+1 safety score, -1 cost")
    parser.add_argument("--budget", type=float, default=None, help="report the share of responses violating D")
    parser.add_argument("--value-head-prefix", default="score", help="the score models' value head (score_head: ...)")
    parser.add_argument("--attn-implementation", default="sdpa", help="for the score models (eager, sdpa, ...)")
    parser.add_argument("--engine", choices=["auto", "vllm", "transformers"], default="auto", help="auto: vLLM on GPU")
    parser.add_argument("--tensor-parallel-size", type=int, default=1)
    parser.add_argument("--max-prompt-tokens", type=int, default=512)
    parser.add_argument("--max-new-tokens", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=8, help="per scoring (and CPU generation) batch")
    parser.add_argument("--max-rows", type=int, default=None, help="only the first N rows of each file")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--output-dir", default="eval_safe_alignment")
    args = parser.parse_args(argv)
    if not args.reward_model and not args.cost_model:
        parser.error("give --reward-model, --cost-model or both")
    if args.budget is not None and (not args.cost_model or not math.isfinite(args.budget)):
        parser.error("--budget needs --cost-model and a finite D")
    rows = []
    for path in args.prompts:
        stem = os.path.splitext(os.path.basename(path))[0]
        for index, row in enumerate(read_rows(path)[: args.max_rows]):
            conversation = conversation_of(row, f"{path} row {index}")
            source = row["data_source"] if isinstance(row.get("data_source"), str) else stem
            rows.append({"data_source": source, "input": conversation, "response": row.get("response")})
    missing = [r for r in rows if not isinstance(r["response"], str)]
    if missing:
        if not args.policy:
            raise SystemExit(f"error: {len(missing)} prompts have no 'response'; pass --policy to generate them")
        print(f"generating {len(missing)} responses with {args.policy} ({pick_engine(args.engine)})", flush=True)
        responses = generate(
            [r["input"] for r in missing],
            args.policy,
            engine=args.engine,
            max_new_tokens=args.max_new_tokens,
            max_prompt_tokens=args.max_prompt_tokens,
            seed=args.seed,
            tensor_parallel_size=args.tensor_parallel_size,
            batch_size=args.batch_size,
        )
        for row, response in zip(missing, responses):
            row["response"] = response
    conversations, responses = [r["input"] for r in rows], [r["response"] for r in rows]
    if args.reward_model:
        for row, value in zip(rows, score(args.reward_model, conversations, responses, args, "reward")):
            row["helpfulness"] = value
    if args.cost_model:
        for row, value in zip(rows, score(args.cost_model, conversations, responses, args, "cost")):
            row["cost_score"], row["harmlessness"] = value, args.cost_weight * value
    results = summarize(rows, args)
    table = markdown(results, args)
    print(table, end="")
    try:
        os.makedirs(args.output_dir, exist_ok=True)
        with open(os.path.join(args.output_dir, "safe_alignment_eval.md"), "w", encoding="utf-8") as handle:
            handle.write(table)
        with open(os.path.join(args.output_dir, "safe_alignment_eval.json"), "w", encoding="utf-8") as handle:
            json.dump(
                {"settings": vars(args), "results": results, "responses": rows}, handle, indent=1, ensure_ascii=False
            )
    except OSError as error:
        raise SystemExit(f"error: cannot write to {args.output_dir}: {error.strerror}") from None
    print(f"wrote {args.output_dir}/safe_alignment_eval.json and .md")


if __name__ == "__main__":
    main()
