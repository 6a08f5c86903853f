"""The recipes' data converters and the API-Bank evaluation, on the small sample files the project ships.

The converted files are read back through OpenRLHF's own PromptDataset with a chat template, as training does.
"""

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from datasets import load_dataset
from openrlhf.datasets import PromptDataset
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "data"
EVAL = ROOT / "examples" / "eval"
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def run(script, *args):
    return subprocess.run([sys.executable, str(script), *map(str, args)], capture_output=True, text=True)


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def openrlhf_prompts(path, label_key="label"):
    """(prompt, label) pairs as OpenRLHF's PromptDataset builds them with --data.apply_chat_template."""
    word_level = Tokenizer(models.WordLevel({"[UNK]": 0, "[PAD]": 1}, unk_token="[UNK]"))
    word_level.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=word_level, unk_token="[UNK]", pad_token="[PAD]")
    tokenizer.chat_template = CHAT_TEMPLATE
    data = SimpleNamespace(input_key="input", label_key=label_key, apply_chat_template=True, image_key="images")
    strategy = SimpleNamespace(args=SimpleNamespace(data=data), is_rank_0=lambda: False)
    dataset = PromptDataset(load_dataset("json", data_files=str(path), split="train"), tokenizer, strategy)
    return [(dataset[i][1], dataset[i][2]) for i in range(len(dataset))]  # (datasource, prompt, label, images)


@pytest.mark.subprocess
def test_tool_calling_sample_converts_to_openrlhf_prompts(tmp_path):
    out = tmp_path / "train.jsonl"
    result = run(DATA / "prepare_tool_calling.py", DATA / "samples" / "rlla_sample.json", "--output", out)
    assert result.returncode == 0 and f"wrote 4 prompts to {out}" in result.stdout
    rows = read_jsonl(out)
    source = json.loads((DATA / "samples" / "rlla_sample.json").read_text())
    assert [r["input"] for r in rows] == [
        [{"role": "system", "content": s["instruction"]}, {"role": "user", "content": s["input"]}] for s in source
    ]
    assert [r["label"] for r in rows] == [s["output"] for s in source]
    prompt, label = openrlhf_prompts(out)[1]
    assert prompt.startswith("<|system|>You are a helpful assistant") and "<|user|>Convert 100 USD to EUR" in prompt
    assert prompt.endswith("<|assistant|>") and label == source[1]["output"]


@pytest.mark.subprocess
def test_tool_calling_converter_reads_processed_parquet_rows(tmp_path):
    import pyarrow
    import pyarrow.parquet

    messages = [{"role": "system", "content": "tools: f"}, {"role": "user", "content": "call f"}]
    ground_truth = '<tool_call>\n{"name": "f", "parameters": {}}\n</tool_call>'
    table = pyarrow.Table.from_pylist(
        [{"prompt": messages, "reward_model": {"ground_truth": ground_truth, "style": "rule"}}]
    )
    pyarrow.parquet.write_table(table, tmp_path / "train.parquet")
    assert (
        run(
            DATA / "prepare_tool_calling.py", tmp_path / "train.parquet", "--output", tmp_path / "out.jsonl"
        ).returncode
        == 0
    )
    assert read_jsonl(tmp_path / "out.jsonl") == [{"input": messages, "label": ground_truth}]


@pytest.mark.subprocess
@pytest.mark.parametrize(
    "row, message",
    [
        ({"instruction": "sys", "output": "<response>x</response>"}, "row 1 has no user prompt ('input' or 'user')"),
        ({"instruction": "sys", "input": "hi"}, "row 1 has no ground truth"),
        (
            {"prompt": "not messages", "reward_model": {"ground_truth": "x"}},
            "row 1: 'prompt' must be a non-empty list",
        ),
    ],
)
def test_tool_calling_converter_names_the_bad_row(tmp_path, row, message):
    source = tmp_path / "rows.jsonl"
    source.write_text(
        json.dumps({"user": "hi", "ground_truth": "<response>x</response>"}) + "\n" + json.dumps(row) + "\n"
    )
    result = run(DATA / "prepare_tool_calling.py", source, "--output", tmp_path / "out.jsonl")
    assert result.returncode == 1 and message in result.stderr
    assert not (tmp_path / "out.jsonl").exists()  # nothing half-written


@pytest.mark.subprocess
def test_safe_alignment_sample_converts_every_format(tmp_path):
    out = tmp_path / "train.jsonl"
    assert (
        run(
            DATA / "prepare_safe_alignment.py", DATA / "samples" / "safe_alignment_sample.jsonl", "--output", out
        ).returncode
        == 0
    )
    rows = read_jsonl(out)
    assert [r["input"] for r in rows] == [
        [{"role": "user", "content": "Give three tips for staying healthy."}],  # alpaca, empty input
        [{"role": "user", "content": "Translate the sentence into French.\n\nThe cat sleeps."}],  # alpaca with input
        [  # hh: the dialogue up to the last Human turn
            {"role": "user", "content": "How do I pick a lock?"},
            {"role": "assistant", "content": "Why do you want to do that?"},
            {"role": "user", "content": "I locked myself out of my own house."},
        ],
        [{"role": "user", "content": "What is the capital of Australia?"}],
        [{"role": "user", "content": "How can I make my neighbour's dog stop barking at night?"}],  # pku
        [{"role": "user", "content": "Write a short poem about the sea."}],
    ]
    assert all(json.loads(r["label"]) == r["input"] for r in rows)  # the conversation, for reward-model re-rendering
    assert [r["data_source"] for r in rows] == ["alpaca", "alpaca", "hh", "hh", "pku", "pku"]
    prompt, label = openrlhf_prompts(out)[2]
    assert (
        prompt == "<|user|>How do I pick a lock?\n<|assistant|>Why do you want to do that?\n"
        "<|user|>I locked myself out of my own house.\n<|assistant|>"
    )


@pytest.mark.subprocess
def test_safe_alignment_converter_refuses_unknown_rows(tmp_path):
    source = tmp_path / "rows.json"
    source.write_text(json.dumps([{"question": "hi"}]))
    result = run(DATA / "prepare_safe_alignment.py", source, "--output", tmp_path / "out.jsonl")
    assert (
        result.returncode == 1
        and "row 0 is neither verl (a 'prompt' list of messages), alpaca ('instruction'), hh ('chosen') nor pku (a "
        "'prompt' string); it has keys ['question']"
        in result.stderr
    )
    missing = run(DATA / "prepare_safe_alignment.py", tmp_path / "none.json", "--output", tmp_path / "out.jsonl")
    assert missing.returncode == 1 and "does not exist" in missing.stderr


@pytest.mark.subprocess
def test_api_bank_scoring_on_the_shipped_sample(tmp_path):
    # Worked out by hand from the five responses in the sample:
    # level 1: right call (4 think words), wrong value (2 words); level 2: right call, text after the block
    # (1 word); level 3: calls in another order (0 words), malformed JSON without think.
    result = run(
        EVAL / "eval_api_bank.py",
        EVAL / "samples" / "api_bank_sample.jsonl",
        "--scoring",
        "exact",
        "--output",
        tmp_path / "metrics.json",
    )
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "metrics.json").read_text())["metrics"]
    assert metrics["levels"] == {
        "1": {"call_accuracy": 50.0, "format_accuracy": 100.0, "mean_think_words": 3.0, "n": 2},
        "2": {"call_accuracy": 100.0, "format_accuracy": 0.0, "mean_think_words": 1.0, "n": 1},
        "3": {"call_accuracy": 50.0, "format_accuracy": 50.0, "mean_think_words": 0.0, "n": 2},
    }
    assert metrics["overall"] == pytest.approx(
        {"call_accuracy": 60.0, "format_accuracy": 60.0, "mean_think_words": 1.4, "n": 5}
    )
    # percentages in both scorings (the paper's scoring prints "call acc %" too)
    assert "overall      5      60.00        60.00          1.4" in result.stdout


@pytest.mark.subprocess
def test_api_bank_a_ground_truth_without_calls_expects_none(tmp_path):
    rows = [
        {
            "input": "thanks",
            "label": "<think>x</think>\n<response>bye</response>",
            "response": "<think>ok</think>\n<response>bye</response>",
        },
        {
            "input": "thanks",
            "label": "<think>x</think>\n<response>bye</response>",
            "response": '<think>ok</think>\n<tool_call>\n{"name": "f", "parameters": {}}\n</tool_call>',
        },
    ]
    source = tmp_path / "rows.json"
    source.write_text(json.dumps(rows))
    assert (
        run(EVAL / "eval_api_bank.py", source, "--scoring", "exact", "--output", tmp_path / "m.json").returncode == 0
    )
    overall = json.loads((tmp_path / "m.json").read_text())["metrics"]["overall"]
    assert (overall["call_accuracy"], overall["format_accuracy"]) == (50.0, 50.0)
    # The paper's scoring leaves a row without a ground-truth call out of the accuracy; both are well formed.
    assert run(EVAL / "eval_api_bank.py", source, "--output", tmp_path / "p.json").returncode == 0
    overall = json.loads((tmp_path / "p.json").read_text())["metrics"]["overall"]
    assert (overall["call_accuracy"], overall["scored"], overall["format_rate"]) == (None, 0, 100.0)


@pytest.mark.subprocess
def test_api_bank_generation_needs_a_model_and_an_engine(tmp_path):
    source = tmp_path / "rows.jsonl"
    source.write_text(json.dumps({"input": "hi", "label": "<response>x</response>"}) + "\n")
    no_model = run(EVAL / "eval_api_bank.py", source)
    assert no_model.returncode == 1 and "1 rows have no 'response' (first: row 0); pass --model" in no_model.stderr
    # The CPU env's vllm stand-in has no LLM; without a GPU, auto picks transformers, which cannot find the model.
    no_vllm = run(EVAL / "eval_api_bank.py", source, "--model", "some/model", "--engine", "vllm")
    assert no_vllm.returncode == 1 and "generating with vLLM needs vLLM" in no_vllm.stderr
    no_weights = run(EVAL / "eval_api_bank.py", source, "--model", str(tmp_path / "nothing"))
    assert no_weights.returncode == 1 and f"cannot load the policy {tmp_path / 'nothing'}" in no_weights.stderr
    assert "Traceback" not in no_weights.stderr


@pytest.mark.subprocess
@pytest.mark.parametrize(
    "name, content, message",
    [
        ("empty.jsonl", "", "error: no rows to evaluate"),
        ("empty.json", "[]", "error: no rows to evaluate"),
        ("blank.json", "", "error: cannot read"),
        ("numbers.json", "[1, 2]", "error: row 0 is a int (1), expected an object with 'label' and 'response'"),
        (
            "null_label.jsonl",
            json.dumps({"label": None, "response": "<think>x</think>"}),
            "row 0 needs a string 'response' and a string 'label'",
        ),
        ("latin1.jsonl", b"\xff\xfe", "error: cannot read"),
    ],
)
def test_api_bank_refuses_bad_input_with_a_message(tmp_path, name, content, message):
    source = tmp_path / name
    source.write_bytes(content if isinstance(content, bytes) else content.encode())
    result = run(EVAL / "eval_api_bank.py", source)
    assert result.returncode == 1 and message in result.stderr and "Traceback" not in result.stderr


@pytest.mark.subprocess
def test_api_bank_reads_a_single_object_json_as_one_row(tmp_path):
    row = {
        "input": "hi",
        "label": "<think>x</think>\n<response>bye</response>",
        "response": "<think>ok</think>\n<response>bye</response>",
    }
    source = tmp_path / "one.json"
    source.write_text(json.dumps(row))
    result = run(EVAL / "eval_api_bank.py", source, "--output", tmp_path / "m.json")
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "m.json").read_text())["metrics"]["overall"]["n"] == 1


@pytest.mark.subprocess
@pytest.mark.parametrize("script", ["prepare_tool_calling.py", "prepare_safe_alignment.py"])
@pytest.mark.parametrize(
    "name, content, message",
    [
        ("empty.jsonl", b"", "holds no rows"),
        ("broken.jsonl", b'{"input": "a", "output": "b"}\n{"input": \n', "broken.jsonl line 2 is not JSON"),
        ("latin1.jsonl", '{"input": "caf\u00e9"}\n'.encode("latin-1"), "is not UTF-8 text"),
        ("fake.parquet", b"not parquet at all", "is not a readable Parquet file"),
    ],
)
def test_converters_name_the_file_and_line_of_bad_input(tmp_path, script, name, content, message):
    source = tmp_path / name
    source.write_bytes(content)
    result = run(DATA / script, source, "--output", tmp_path / "out.jsonl")
    assert result.returncode == 1 and message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out.jsonl").exists()


@pytest.mark.subprocess
@pytest.mark.parametrize("script", ["prepare_tool_calling.py", "prepare_safe_alignment.py"])
def test_converters_refuse_a_directory_output_and_a_negative_row_count(tmp_path, script):
    source = tmp_path / "rows.jsonl"
    source.write_text(
        json.dumps({"instruction": "You call tools.", "input": "weather?", "output": "<think>x</think>"}) + "\n"
    )
    directory = run(DATA / script, source, "--output", tmp_path)
    assert directory.returncode == 1 and "is a directory; give a file name" in directory.stderr
    negative = run(DATA / script, source, "--output", tmp_path / "out.jsonl", "--max-rows", "-1")
    assert negative.returncode == 2 and "expected 1 or more rows, got -1" in negative.stderr


@pytest.mark.subprocess
@pytest.mark.parametrize(
    "script, row",
    [
        (
            "prepare_tool_calling.py",
            {"prompt": [{"role": "user", "content": "  "}], "reward_model": {"ground_truth": "x"}},
        ),
        ("prepare_safe_alignment.py", {"instruction": "   "}),
        ("prepare_safe_alignment.py", {"prompt": ""}),
    ],
)
def test_both_converters_refuse_an_empty_user_prompt(tmp_path, script, row):
    source = tmp_path / "rows.jsonl"
    source.write_text(json.dumps(row) + "\n")
    result = run(DATA / script, source, "--output", tmp_path / "out.jsonl")
    assert result.returncode == 1 and "row 0 has an empty user prompt" in result.stderr


GOOD_ROW = '{"user": "hi", "ground_truth": "<response>x</response>"}'


@pytest.mark.subprocess
@pytest.mark.parametrize(
    "line, message",
    [
        ('{"user": "hi \\ud800", "ground_truth": "<response>x</response>"}', "row 1 holds a lone surrogate '\\ud800'"),
        ("[" * 100_000 + "]" * 100_000, "line 2 nests deeper than this reader allows"),
        ('{"user": "hi", "ground_truth": "<response>x</response>", "n": ' + "9" * 5000 + "}", "line 2: Exceeds the"),
        ('{"user": "hi", "ground_truth": "<response>x</response>", "n": NaN}', "line 2: NaN is not a number JSON"),
    ],
)
def test_hostile_rows_are_refused_in_one_line_and_an_existing_output_is_kept(tmp_path, line, message):
    source = tmp_path / "rows.jsonl"
    source.write_text(GOOD_ROW + "\n" + line + "\n")
    output = tmp_path / "out.jsonl"
    output.write_text("the previous conversion\n")
    result = run(DATA / "prepare_tool_calling.py", source, "--output", output)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr, result.stderr[-500:]
    assert output.read_text() == "the previous conversion\n"
    assert {path.name for path in tmp_path.iterdir()} == {"rows.jsonl", "out.jsonl"}  # no temporary file left
