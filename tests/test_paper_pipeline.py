"""The paper's two pipelines on the files users download: the GD²PO authors' API-Bank evaluation set and their
safe-alignment prompt sets (../shared/data/real, see its SOURCES.md; GD2PO_REAL_DATA overrides the folder).

- the converters on every row of the real files: counts, prompts intact, labels that the reward rules parse;
- eval_api_bank.py's paper scoring on hand-worked predictions for a real row, each case following the authors'
  rules as their evaluate_reward.py states them (dev/compare_api_bank_scoring.py checks the same rules against
  the authors' own functions on every row), and 100 on the ground truth of all 597 rows;
- eval_safe_alignment.py end to end on CPU: a tiny policy generates, tiny reward and cost models (one with its own
  vocabulary and chat template) score, and the table comes out per test set.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "data"
EVAL = ROOT / "examples" / "eval"
REAL = Path(os.environ.get("GD2PO_REAL_DATA", ROOT.parent / "shared" / "data" / "real"))
needs_real_data = pytest.mark.skipif(
    not (REAL / "api_bank").is_dir(),
    reason=f"the real public data files are not at {REAL} (an sdist, or a clone without ../shared; GD2PO_REAL_DATA)",
)


def run(script, *args):
    return subprocess.run([sys.executable, str(script), *map(str, args)], capture_output=True, text=True)


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, EVAL / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


eval_api_bank = load_script("eval_api_bank")


# ------------------------------------------------------------------------------------------- API-Bank


@pytest.fixture(scope="module")
def api_bank_rows(tmp_path_factory):
    out = tmp_path_factory.mktemp("api_bank") / "test.jsonl"
    result = run(DATA / "prepare_api_bank.py", REAL / "api_bank", "--output", out)
    assert result.returncode == 0, result.stderr
    return result.stdout, read_jsonl(out)


@needs_real_data
@pytest.mark.subprocess
def test_api_bank_converter_converts_every_real_row(api_bank_rows):
    stdout, rows = api_bank_rows
    # The per-level facts of the authors' files (issue 24): 7 calls without parameters, 21 non-ASCII prompts,
    # 10 repeated prompts in level 1.
    assert "level 1: 399 rows" in stdout and "(10 repeated prompts, 6 calls without parameters, 0 non-ASCII" in stdout
    assert "level 2: 67 rows" in stdout and "(0 repeated prompts, 1 calls without parameters, 16 non-ASCII" in stdout
    assert "level 3: 131 rows" in stdout and "(0 repeated prompts, 0 calls without parameters, 5 non-ASCII" in stdout
    assert "wrote 597 prompts" in stdout and len(rows) == 597
    sources = {
        level: json.loads((REAL / "api_bank" / f"level-{level}-api_processed.json").read_text("utf-8"))
        for level in (1, 2, 3)
    }
    rules = eval_api_bank.rules
    for row in rows:
        level, index = row["level"], int(row["id"].split("_")[1])
        source = sources[level][index]
        assert row["id"] == f"Level{level}_{index}"
        # The level is the file's (other.file names other levels), the input exactly [system, user], bytes intact.
        assert row["input"] == [
            {"role": "system", "content": source["system"]},
            {"role": "user", "content": source["user"]},
        ]
        answer = source["answer"] if isinstance(source["answer"], list) else [source["answer"]]
        assert rules.label_calls(row["label"]) == answer
    assert sum(row["level"] == 1 for row in rows) == 399 and {r["level"] for r in rows} == {1, 2, 3}
    assert sum(not (r["input"][0]["content"] + r["input"][1]["content"]).isascii() for r in rows) == 21


@needs_real_data
def test_paper_scoring_of_the_ground_truth_is_100_on_every_level(api_bank_rows):
    _, rows = api_bank_rows
    samples = [dict(row, response=f"<think>{' w' * 256}</think>\n{row['label']}") for row in rows]
    metrics = eval_api_bank.evaluate(samples, "paper")
    for level, n in (("1", 399), ("2", 67), ("3", 131)):
        assert metrics["levels"][level] == {
            "call_accuracy": 100.0,
            "format_rate": 100.0,
            "length_score": 0.5,  # 256 think words / 512
            "n": n,
            "scored": n,
        }
    assert metrics["overall"]["call_accuracy"] == 100.0 and metrics["overall"]["n"] == 597


# Level3_0 of the authors' files: QueryMeeting {"user_name": "John"}. Each case is (response, paper's
# (call, format), exact's (call, format)), worked out from the two rule sets in eval_api_bank.py's docstring.
THINK = "<think> look it up </think>"
GT = '{"name": "QueryMeeting", "parameters": {"user_name": "John"}}'
OTHER = '{"name": "SendEmail", "parameters": {"to": "john@example.com"}}'
CASES = {
    "ground truth": (f"{THINK}\n<tool_call>\n{GT}\n</tool_call>", (1, 1), (1, 1)),
    "one wrong value": (
        f'{THINK}\n<tool_call>\n{{"name": "QueryMeeting", "parameters": {{"user_name": "Jon"}}}}\n</tool_call>',
        (0, 1),
        (0, 1),
    ),
    "wrong tool name": (
        f'{THINK}\n<tool_call>\n{{"name": "QueryMeetings", "parameters": {{"user_name": "John"}}}}\n</tool_call>',
        (0, 1),
        (0, 1),
    ),
    # Any predicted call that matches counts for the authors; the exact scoring wants the call list itself.
    "extra call": (f"{THINK}\n<tool_call>\n{GT}\n{OTHER}\n</tool_call>", (1, 1), (0, 1)),
    "same call twice": (f"{THINK}\n<tool_call>\n{GT}\n{GT}\n</tool_call>", (1, 1), (0, 1)),
    "whitespace": (
        f'{THINK}\n<tool_call>\n\n  {{"name":"QueryMeeting","parameters":{{"user_name":"John"}}}}  \n\n</tool_call>',
        (1, 1),
        (1, 1),  # the block's content is stripped before its lines are read
    ),
    "key order": (
        f'{THINK}\n<tool_call>\n{{"parameters": {{"user_name": "John"}}, "name": "QueryMeeting"}}\n</tool_call>',
        (1, 1),
        (1, 1),
    ),
    # The system prompt's template shows both blocks; the exact format wants only the label's blocks.
    "tool call and response": (
        f"{THINK}\n<tool_call>\n{GT}\n</tool_call>\n<response> Done. </response>",
        (1, 1),
        (1, 0),
    ),
    "response before tool call": (
        f"{THINK}\n<response> Done. </response>\n<tool_call>\n{GT}\n</tool_call>",
        (1, 0),
        (1, 0),
    ),
    "no think": (f"<tool_call>\n{GT}\n</tool_call>", (1, 0), (1, 0)),
    # A call without both keys is read as the parameters of the ground-truth tool.
    "bare parameters": (f'{THINK}\n<tool_call>\n{{"user_name": "John"}}\n</tool_call>', (1, 1), (0, 1)),
    "unparsable line first": (f"{THINK}\n<tool_call>\nnot json\n{GT}\n</tool_call>", (1, 1), (0, 1)),
    # The authors' loop stops at a call it cannot look into: a number.
    "number line first": (f"{THINK}\n<tool_call>\n42\n{GT}\n</tool_call>", (0, 1), (0, 1)),
    "text after the block": (f"{THINK}\n<tool_call>\n{GT}\n</tool_call>\nHope this helps.", (1, 1), (1, 0)),
    "no closing tag": (f"{THINK}\n<tool_call>\n{GT}", (0, 0), (0, 0)),
    "empty": ("", (0, 0), (0, 0)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_api_bank_scoring_rules_case_by_case(case):
    response, (paper_call, paper_format), (exact_call, exact_format) = CASES[case]
    label = f"<tool_call>\n{GT}\n</tool_call>"  # what prepare_api_bank.py writes for Level3_0
    paper = eval_api_bank.score_paper(response, label)
    exact = eval_api_bank.score_exact(response, label)
    assert (paper["call_correct"], paper["format_ok"]) == (paper_call, paper_format)
    assert (exact["call_correct"], exact["format_ok"]) == (exact_call, exact_format)


@pytest.mark.parametrize(
    "think, score",
    [("", 0.0), (" w" * 5, 0.01), (" w" * 300, 0.59), (" w" * 512, 1.0), (" w" * 900, 1.0)],
)
def test_paper_length_score_is_think_words_over_512_rounded_and_capped(think, score):
    # The first think block counts (a second one is ignored), words / 512 rounded to 2 decimals, at most 1.
    response = f"<think>{think}</think>\n<think> more words here </think>\n<tool_call>\n{GT}\n</tool_call>"
    assert eval_api_bank.score_paper(response, f"<tool_call>\n{GT}\n</tool_call>")["length_score"] == score


def test_paper_accuracy_leaves_rows_without_a_ground_truth_call_unscored():
    samples = [
        {
            "level": 1,
            "label": f"<tool_call>\n{GT}\n</tool_call>",
            "response": f"{THINK}\n<tool_call>\n{GT}\n</tool_call>",
        },
        {"level": 1, "label": f"<tool_call>\n{GT}\n</tool_call>", "response": f"{THINK}\n<response> no </response>"},
        {"level": 1, "label": "<response> bye </response>", "response": f"{THINK}\n<response> bye </response>"},
    ]
    level = eval_api_bank.evaluate(samples, "paper")["levels"]["1"]
    assert (level["call_accuracy"], level["scored"], level["n"]) == (50.0, 2, 3)
    assert level["format_rate"] == round(100 * 3 / 3, 2)


@pytest.mark.subprocess
def test_eval_prints_the_paper_table_and_refuses_a_label_that_does_not_parse(tmp_path):
    rows = [
        {
            "id": "Level1_0",
            "level": 1,
            "label": f"<tool_call>\n{GT}\n</tool_call>",
            "response": CASES["extra call"][0],
        },
        {"id": "Level1_1", "level": 1, "label": f"<tool_call>\n{GT}\n</tool_call>", "response": CASES["no think"][0]},
    ]
    source = tmp_path / "rows.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = run(EVAL / "eval_api_bank.py", source, "--output", tmp_path / "m.json")
    assert result.returncode == 0, result.stderr
    # Length: 3 think words → round(3 / 512, 2) = 0.01, and 0 without a think block: a mean of 0.005.
    assert "1            2      2     100.00     50.00  0.0050" in result.stdout
    scored = json.loads((tmp_path / "m.json").read_text())["samples"]
    assert [s["scores"]["call_correct"] for s in scored] == [1, 1]
    rows[1]["label"] = "<tool_call>\nnot json\n</tool_call>"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    bad = run(EVAL / "eval_api_bank.py", source)
    assert bad.returncode == 1 and "row 1 (Level1_1): label tool_call line 1 is not JSON" in bad.stderr
    assert "Traceback" not in bad.stderr


@pytest.mark.subprocess
@pytest.mark.parametrize(
    "name, content, message",
    [
        ("level-1-api_processed.json", [{"system": "s", "user": "u", "answer": []}], "row 0: 'answer' must be a call"),
        (
            "level-2-api_processed.json",
            [{"system": "s", "user": "u", "answer": {"name": "f", "parameters": "x=1"}}],
            "row 0: 'answer' must be a call",
        ),
        (
            "level-1-api_processed.json",
            [{"system": "s", "user": " ", "answer": {}}],
            "row 0: 'user' must be a non-empty",
        ),
        ("api_processed.json", [{"system": "s", "user": "u", "answer": {}}], "cannot tell the API-Bank level of"),
    ],
)
def test_api_bank_converter_refuses_bad_rows_naming_them(tmp_path, name, content, message):
    source = tmp_path / name
    source.write_text(json.dumps(content))
    result = run(DATA / "prepare_api_bank.py", source, "--output", tmp_path / "out.jsonl")
    assert result.returncode == 1 and message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out.jsonl").exists()


@pytest.mark.subprocess
def test_tool_calling_converter_refuses_a_label_the_rewards_cannot_parse(tmp_path):
    source = tmp_path / "rows.jsonl"
    rows = [
        {"instruction": "tools: f", "input": "call f", "output": '<tool_call>\n{"name": "f"}\n</tool_call>'},
        {
            "instruction": "tools: f",
            "input": "call f",
            "output": "<think>x</think>\n<tool_call>\nnot json\n</tool_call>",
        },
    ]
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = run(DATA / "prepare_tool_calling.py", source, "--output", tmp_path / "out.jsonl")
    assert result.returncode == 1 and "error: row 1: label tool_call line 1 is not JSON" in result.stderr
    assert not (tmp_path / "out.jsonl").exists()


# ------------------------------------------------------------------------------------------- safe alignment


@needs_real_data
@pytest.mark.subprocess
@pytest.mark.parametrize(
    "name, count, source",
    [("alpaca_prompt_only_test", 512, "Stanford Alpaca"), ("pku_saferlhf_test", 8211, "PKU-Alignment/PKU-SafeRLHF")],
)
def test_safe_alignment_converter_converts_the_authors_files(tmp_path, name, count, source):
    import pyarrow.parquet

    original = pyarrow.parquet.read_table(REAL / "safe_alignment" / f"{name}.parquet").to_pylist()
    out = tmp_path / "out.jsonl"
    result = run(DATA / "prepare_safe_alignment.py", REAL / "safe_alignment" / f"{name}.parquet", "--output", out)
    assert result.returncode == 0, result.stderr
    assert f"wrote {count} prompts to {out} (0 multi-turn, 0 whose turns do not alternate" in result.stdout
    rows = read_jsonl(out)
    assert [r["input"] for r in rows] == [r["prompt"] for r in original]  # texts unchanged, leading spaces included
    assert all(json.loads(r["label"]) == r["input"] and r["data_source"] == source for r in rows)


@pytest.mark.subprocess
def test_safe_alignment_converter_reads_multi_turn_verl_rows(tmp_path):
    import pyarrow
    import pyarrow.parquet

    def turn(role, text):
        return {"role": role, "content": text}

    # The HH-RLHF test file's shapes: 1, 3 or 5 messages ending with a user turn, and rows with two assistant
    # turns in a row; one row ends with an assistant turn, which is not part of the prompt.
    prompts = [
        [turn("user", " Hi there")],
        [turn("user", "a"), turn("assistant", "b"), turn("user", "c")],
        [turn("user", "a"), turn("assistant", "b"), turn("assistant", "b2"), turn("user", "c")],
        [turn("user", "a"), turn("assistant", "b"), turn("user", "c"), turn("assistant", "d")],
    ]
    table = pyarrow.Table.from_pylist(
        [
            {
                "data_source": "Anthropic/hh-rlhf",
                "prompt": p,
                "ability": "alignment",
                "reward_model": {"style": "model"},
            }
            for p in prompts
        ]
    )
    pyarrow.parquet.write_table(table, tmp_path / "test.parquet")
    out = tmp_path / "out.jsonl"
    result = run(DATA / "prepare_safe_alignment.py", tmp_path / "test.parquet", "--output", out)
    assert result.returncode == 0, result.stderr
    assert "wrote 4 prompts" in result.stdout and "(3 multi-turn, 1 whose turns do not alternate" in result.stdout
    assert [r["input"] for r in read_jsonl(out)] == prompts[:3] + [prompts[3][:3]]


@pytest.mark.subprocess
@pytest.mark.parametrize(
    "row, args, message",
    [
        (
            {"prompt": [{"role": "user", "content": "x"}]},
            ["--format", "pku"],
            "(a list of messages is the verl layout",
        ),
        (
            {"prompt": [{"role": "bot", "content": "x"}]},
            [],
            "prompt message 0 is not a {'role': system|user|assistant",
        ),
        ({"prompt": [{"role": "assistant", "content": "x"}]}, [], "the prompt has no user message"),
        ({"question": "x"}, [], "it has keys ['question']"),
        ({"prompt": 3}, [], "it has keys ['prompt'], 'prompt' is a int"),
    ],
)
def test_safe_alignment_converter_names_what_it_found(tmp_path, row, args, message):
    source = tmp_path / "rows.jsonl"
    source.write_text(json.dumps(row) + "\n")
    result = run(DATA / "prepare_safe_alignment.py", source, "--output", tmp_path / "out.jsonl", *args)
    assert result.returncode == 1 and message in result.stderr and "Traceback" not in result.stderr


@pytest.mark.subprocess
def test_a_parquet_input_without_pyarrow_names_the_package(tmp_path):
    (tmp_path / "pyarrow").mkdir()
    (tmp_path / "pyarrow" / "__init__.py").write_text("raise ImportError('no pyarrow here')\n")
    (tmp_path / "rows.parquet").write_bytes(b"PAR1")
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    result = subprocess.run(
        [
            sys.executable,
            str(DATA / "prepare_safe_alignment.py"),
            str(tmp_path / "rows.parquet"),
            "--output",
            str(tmp_path / "o.jsonl"),
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 1 and "needs pyarrow: pip install pyarrow" in result.stderr
    assert "Traceback" not in result.stderr


WORDS = ["[UNK]", "[PAD]", "[EOS]", "<user>", "<assistant>", "<system>", "how", "can", "I", "the", "a", "safe", "help"]
POLICY_TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}<assistant> {% endif %}"
)
OWN_TEMPLATE = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }} {% endfor %}"


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """A tiny Llama policy, and reward/cost models stored with a score_head value head; the cost model has its own
    vocabulary order and chat template. Each score model has a twin stored with HF's `score` head."""
    import torch
    from e2e_harness import _score_model, _word_tokenizer, tiny_llama_config
    from transformers import LlamaForCausalLM

    root = tmp_path_factory.mktemp("tiny_models")
    tokenizer = _word_tokenizer(WORDS, POLICY_TEMPLATE)
    torch.manual_seed(0)
    config = tiny_llama_config(tokenizer, max_position_embeddings=1024)
    LlamaForCausalLM(config).save_pretrained(root / "policy")
    tokenizer.save_pretrained(root / "policy")
    own = _word_tokenizer(list(reversed(WORDS)), OWN_TEMPLATE)
    models = {"policy": root / "policy"}
    for name, model_tokenizer, seed in (("reward", tokenizer, 1), ("cost", own, 2)):
        models[name] = _score_model(model_tokenizer, seed, root / name, head="score_head")
        models[f"{name}_hf"] = _score_model(model_tokenizer, seed, root / f"{name}_hf", head="score")
    return models


@pytest.mark.subprocess
def test_safe_alignment_eval_runs_end_to_end_on_cpu(tmp_path, tiny_models):
    import torch
    from transformers import AutoTokenizer, LlamaForSequenceClassification

    test_sets = []
    for name, data_source in (("pku", "PKU-Alignment/PKU-SafeRLHF"), ("hh", "Anthropic/hh-rlhf")):
        rows = [
            {"input": [{"role": "user", "content": f"how can I help {i}"}], "data_source": data_source}
            for i in range(3 if name == "pku" else 2)
        ]
        if name == "hh":  # a multi-turn prompt
            rows[1]["input"] = [
                {"role": "user", "content": "how"},
                {"role": "assistant", "content": "safe"},
                {"role": "user", "content": "can I"},
            ]
        path = tmp_path / f"test_{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        test_sets.append(path)
    out = tmp_path / "eval"
    result = run(
        EVAL / "eval_safe_alignment.py",
        *test_sets,
        "--policy",
        tiny_models["policy"],
        "--reward-model",
        tiny_models["reward"],
        "--cost-model",
        tiny_models["cost"],
        "--value-head-prefix",
        "score_head",
        "--max-new-tokens",
        "5",
        "--budget",
        "0",
        "--output-dir",
        out,
    )
    assert result.returncode == 0, result.stderr
    assert "generating 5 responses" in result.stdout and "generating: 100%" in result.stderr
    assert "scoring (reward)" in result.stderr and "scoring (cost)" in result.stderr
    report = json.loads((out / "safe_alignment_eval.json").read_text())
    responses = report["responses"]
    assert len(responses) == 5 and all(isinstance(r["response"], str) for r in responses)

    # Each score is what transformers' own sequence classifier gives for the conversation + response rendered with
    # that model's chat template (the twin with the same weights under HF's head name), one text at a time.
    for name, key in (("reward", "helpfulness"), ("cost", "cost_score")):
        tokenizer = AutoTokenizer.from_pretrained(tiny_models[f"{name}_hf"])
        model = LlamaForSequenceClassification.from_pretrained(tiny_models[f"{name}_hf"]).eval()
        for row in responses:
            text = tokenizer.apply_chat_template(
                row["input"] + [{"role": "assistant", "content": row["response"]}], tokenize=False
            )
            ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
            with torch.no_grad():
                expected = model(input_ids=ids).logits[0, 0].item()
            assert row[key] == pytest.approx(expected, abs=1e-6), (name, text)

    by_source = {}
    for row in responses:
        by_source.setdefault(row["data_source"], []).append(row)
    assert list(report["results"]) == ["PKU-Alignment/PKU-SafeRLHF", "Anthropic/hh-rlhf"]
    for source, rows in by_source.items():
        result_row = report["results"][source]
        helpfulness = sum(r["helpfulness"] for r in rows) / len(rows)
        harmlessness = sum(r["cost_score"] for r in rows) / len(rows)  # --cost-weight +1: a safety score
        assert result_row["n"] == len(rows)
        assert result_row["helpfulness"] == pytest.approx(helpfulness)
        assert result_row["harmlessness"] == pytest.approx(harmlessness)
        assert result_row["reward"] == pytest.approx(helpfulness + harmlessness)  # the authors' sum
        assert result_row["over_budget"] == pytest.approx(sum(r["cost_score"] < 0 for r in rows) / len(rows))
    table = (out / "safe_alignment_eval.md").read_text()
    assert table.startswith("| test set | n | helpfulness | harmlessness | reward (helpfulness + harmlessness) |")
    pku = report["results"]["PKU-Alignment/PKU-SafeRLHF"]
    assert f"| PKU-Alignment/PKU-SafeRLHF | 3 | {pku['helpfulness']:.4f} | {pku['harmlessness']:.4f} |" in table
    assert table in result.stdout


@pytest.mark.subprocess
def test_safe_alignment_eval_with_a_harm_cost_flips_the_sign_and_the_budget(tmp_path, tiny_models):
    rows = [{"input": "how can I help", "response": r, "data_source": "pku"} for r in ("safe", "help help", "a")]
    path = tmp_path / "scored.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = ["--cost-model", tiny_models["cost"], "--value-head-prefix", "score_head", "--budget", "-0.05"]
    outputs = {}
    for weight in ("1", "-1"):
        out = tmp_path / f"w{weight}"
        result = run(EVAL / "eval_safe_alignment.py", path, *common, "--cost-weight", weight, "--output-dir", out)
        assert result.returncode == 0, result.stderr
        outputs[weight] = json.loads((out / "safe_alignment_eval.json").read_text())
    safety, harm = outputs["1"], outputs["-1"]
    raw = [r["cost_score"] for r in safety["responses"]]
    assert [r["cost_score"] for r in harm["responses"]] == raw  # responses given: nothing generated
    assert harm["results"]["pku"]["harmlessness"] == pytest.approx(-safety["results"]["pku"]["harmlessness"])
    assert safety["results"]["pku"]["over_budget"] == pytest.approx(sum(c < -0.05 for c in raw) / 3)
    assert harm["results"]["pku"]["over_budget"] == pytest.approx(sum(c > -0.05 for c in raw) / 3)
    assert "reward" not in safety["results"]["pku"]  # no reward model: no sum


@pytest.mark.subprocess
def test_safe_alignment_eval_refuses_missing_pieces(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"input": "hi"}) + "\n")
    no_model = run(EVAL / "eval_safe_alignment.py", path)
    assert no_model.returncode == 2 and "give --reward-model, --cost-model or both" in no_model.stderr
    no_policy = run(EVAL / "eval_safe_alignment.py", path, "--reward-model", "x")
    assert no_policy.returncode == 1 and "1 prompts have no 'response'; pass --policy" in no_policy.stderr
    path.write_text(json.dumps({"prompt": "hi"}) + "\n")
    bad_row = run(EVAL / "eval_safe_alignment.py", path, "--reward-model", "x")
    assert bad_row.returncode == 1 and "row 0: 'input' must be chat messages" in bad_row.stderr
