"""The reward file checked before anything starts: the dry run scores the first rows of the dataset with it (a wrong
key, a missing reward_func or a NaN refused in one line naming the file, row and key), and
``python -m gd2po_openrlhf.reward_check`` does the same without a launcher."""

import json
import pathlib
import shlex
import urllib.request

import pytest
from gd2po_testing import launcher_subprocess

from gd2po_openrlhf.reward_check import PLACEHOLDER_RESPONSE, main

GOOD = """
def reward_func(queries, prompts, labels):
    responses = [query[len(prompt):] for query, prompt in zip(queries, prompts)]
    return {
        "rewards": {
            "correctness": [float(label in response) for response, label in zip(responses, labels)],
            "format": [float(len(response) < 20) for response in responses],
        }
    }
"""
WRONG_KEY = GOOD.replace('"format"', '"formatting"')
NAN = GOOD.replace(
    "float(len(response) < 20) for response in responses",
    "float('nan') if label not in response else 1.0 for response, label in zip(responses, labels)",
)
NO_FUNCTION = "def score(queries, prompts, labels):\n    return {'rewards': {'correctness': 1.0, 'format': 1.0}}\n"
RAISES = GOOD.replace("[query[len(prompt):] for", "[1 / 0 if 'x' in prompt else query[len(prompt):] for")
# One rollout per call, bare numbers: what the trainer's calls need, not a server's batches.
SCALAR = """
def reward_func(queries, prompts, labels):
    response = queries[0][len(prompts[0]):]
    return {"rewards": {"correctness": float(labels[0] in response), "format": float(len(response) < 20)}}
"""


@pytest.fixture
def dataset(tmp_path):
    path = tmp_path / "prompts.jsonl"
    rows = [{"input": "what is 2+2? ", "label": "4"}, {"input": "what is 3+3? ", "label": "6"}]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows + [{"input": "x? ", "label": "1"}]))
    return path


def write(tmp_path, text):
    path = tmp_path / "rules.py"
    path.write_text(text)
    return str(path)


def launch(reward_file, dataset, *extra, env=None):
    return launcher_subprocess(
        [
            "--advantage_estimator",
            "gd2po",
            "--reward.remote_url",
            reward_file,
            "--gd2po.reward_keys",
            "correctness",
            "format",
            "--rollout.n_samples_per_prompt",
            "4",
            "--data.prompt_dataset",
            str(dataset),
            "--data.label_key",
            "label",
            *extra,
        ],
        env={"GD2PO_DRY_RUN": "1", **(env or {})},
    )


@pytest.mark.subprocess
def test_the_dry_run_scores_the_first_rows_and_shows_the_advantages(tmp_path, dataset):
    result = launch(write(tmp_path, GOOD), dataset, env={"GD2PO_DRY_RUN_RESPONSE": "the answer is 4"})
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("  reward check "))
    assert "on the first 3 rows of" in lines[start] and "GD2PO_DRY_RUN_RESPONSE" in lines[start]
    table = [line.split() for line in lines[start + 2 : start + 11]]
    # row 1: its label "4" (right, short), the placeholder (wrong, long), the sample (right: contains "4", short)
    assert table[0][:4] == ["1", "4", "1", "1"] and table[2][:2] == ["1", "the"] and table[2][-3:-1] == ["1", "1"]
    assert table[1][-3:-1] == ["0", "0"] and table[4][-3:-1] == ["0", "0"]  # the placeholders score nothing
    advantages = [float(row[-1]) for row in table]
    assert advantages[0] > 0 > advantages[1] and advantages[3] > 0 > advantages[4]
    # this host has no GPU: DeepSpeed's warning at the launcher's import is explained
    assert "Setting accelerator to CPU" in result.stdout and "harmless for a dry run" in result.stdout


@pytest.mark.subprocess
@pytest.mark.parametrize(
    "text, message",
    [
        (
            WRONG_KEY,
            "returned reward keys ['formatting'] that are not among the declared reward keys "
            "['correctness', 'format']",
        ),
        (NO_FUNCTION, "defines no reward_func(queries, prompts, labels) (it defines ['score'])"),
        (NAN, "for row 1 with the response '(a placeholder response"),
        (RAISES, "for row 3 with the response '1' raised ZeroDivisionError: division by zero"),
    ],
)
def test_the_dry_run_refuses_a_bad_reward_file_in_one_line(tmp_path, dataset, text, message):
    result = launch(write(tmp_path, text), dataset)
    assert result.returncode == 2
    error = result.stderr.strip().splitlines()
    assert len(error) == 2 and error[0].startswith("train_ppo_ray.py: error: dry run: ")
    assert message in error[0] and "rules.py" in error[0], error[0]


@pytest.mark.unit
def test_the_check_command_checks_a_file_against_a_dataset(tmp_path, dataset, capsys):
    argv = ["--dataset", str(dataset), "--reward-keys", "correctness", "format", "--label-key", "label"]
    assert main(["--reward-file", write(tmp_path, GOOD)] + argv) == 0
    out = capsys.readouterr().out
    assert "every answer has the keys and values" in out and PLACEHOLDER_RESPONSE[:30] in out
    assert (
        out.splitlines()[-1] == "a batch of 6 rollouts in one call (the reward server's calls) gives the same rewards"
    )
    # a file that answers one rollout with bare numbers: fine for the trainer, not for a server's batch
    assert main(["--reward-file", write(tmp_path, SCALAR)] + argv) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith("note: one rollout per call works (the trainer's calls), but a batch of 6 does not")
    assert "returned a single value for reward key 'correctness', expected a list of 6" in last, last
    assert main(["--reward-file", write(tmp_path, NAN)] + argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: reward file") and "row 1" in err and "'format'" in err, err
    assert main(["--reward-file", write(tmp_path, GOOD), "--dataset", str(dataset), "--reward-keys", "a"]) == 1
    assert "that are not among the declared reward keys ['a']" in capsys.readouterr().err
    missing = main(argv + ["--reward-file", write(tmp_path, GOOD), "--input-key", "question"])
    assert missing == 1 and "row 1 has no 'question'" in capsys.readouterr().err


# ---- docs/reward-functions.md: its example, check command and curl line run as printed

DOC = pathlib.Path(__file__).resolve().parents[1] / "docs" / "reward-functions.md"


def doc_block(language: str, after: str) -> str:
    text = DOC.read_text()
    start = text.index(f"```{language}\n", text.index(after)) + len(language) + 4
    return text[start : text.index("```", start)]


def test_the_reward_function_page_example_checks_and_serves_as_printed(tmp_path, capsys, monkeypatch):
    from gd2po_openrlhf.reward_check import load_reward_func
    from gd2po_openrlhf.serving.protocol import ServerLimits
    from gd2po_openrlhf.serving.server import RewardServer

    (tmp_path / "rules.py").write_text(doc_block("python", "## A complete example"))
    (tmp_path / "data").mkdir()
    rows = [{"input": "What is 2+2? ", "label": "4"}, {"input": "Name a colour. ", "label": "red"}]
    (tmp_path / "data" / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    monkeypatch.chdir(tmp_path)
    command = shlex.split(doc_block("bash", "## Check it before training").replace("\\\n", " "))
    assert command[:3] == ["python", "-m", "gd2po_openrlhf.reward_check"]
    assert main(command[3:]) == 0
    out = capsys.readouterr().out
    assert "a batch of 4 rollouts in one call (the reward server's calls) gives the same rewards" in out

    server = RewardServer(
        load_reward_func("rules.py"), "rules.py", ServerLimits(reward_keys=("correctness", "format"))
    ).start_in_thread()
    try:
        curl = doc_block("bash", "## Over HTTP")
        body = curl[curl.index("-d '") + 4 : curl.rindex("'")]
        request = urllib.request.Request(
            server.url, data=body.encode(), headers={"Content-Type": "application/json"}, method="POST"
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            answer = json.loads(response.read())
    finally:
        server.stop_thread()
    assert answer == json.loads(doc_block("json", "and the answer carries"))


@pytest.mark.subprocess
def test_the_dry_run_asks_a_reward_server_that_answers_and_says_when_none_does(tmp_path, dataset):
    import socket

    from gd2po_openrlhf.reward_check import load_reward_func
    from gd2po_openrlhf.serving.protocol import ServerLimits
    from gd2po_openrlhf.serving.server import RewardServer

    for text, expected in ((GOOD, 0), (NAN, 2)):
        server = RewardServer(
            load_reward_func(write(tmp_path, text)), "rules.py", ServerLimits(reward_keys=("correctness", "format"))
        ).start_in_thread()
        try:
            result = launch(server.url, dataset)
        finally:
            server.stop_thread()
        assert result.returncode == expected, result.stderr[-2000:]
        if expected == 0:
            assert f"  reward check      reward server {server.url} on the first 3 rows of" in result.stdout
            assert "a batch of 6 rollouts in one call (the reward server's calls) gives the same rewards" in (
                result.stdout
            )
        else:  # the server's 422 for the NaN, named with the row
            assert f"dry run: reward server {server.url} for row 1 with the response '(a placeholder" in result.stderr
            assert "the server answered HTTP 422" in result.stderr
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = launch(f"http://127.0.0.1:{port}/get_reward", dataset)
    assert result.returncode == 0 and f"reward check      not run: http://127.0.0.1:{port}/get_reward did not" in (
        result.stdout
    )
