"""Remote reward sources end to end on the rollout side: OpenRLHF's SingleTurnAgentExecutor (as the vLLM
rollout actors run it) with a real reward file and a real HTTP server on loopback, its response turned
into an Experience by the trainer-side SamplesGenerator."""

import asyncio
import http.server
import json
import math
import re
import socket
import threading
import time
import urllib.request
from types import SimpleNamespace

import openrlhf.trainer.ppo_trainer  # noqa: F401  (the import hook patches SamplesGenerator through it)
import pytest
import torch
from gd2po_testing import ScriptedEngine, experience_maker, openrlhf_strategy
from openrlhf.trainer.ppo_utils.samples_generator import SamplesGenerator
from openrlhf.utils.agent import SingleTurnAgentExecutor
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

SLOW_S = 0.8
VOCAB = ["[UNK]", "[PAD]", "what", "is", "two", "plus", "three", "four", "five", "answer", "<format>"]
RULES = """
def reward_func(queries, prompts, labels):
    # correctness: the label word appears in the response; format: the response carries <format>
    response = queries[0][len(prompts[0]):]
    return {"rewards": {"correctness": float(labels[0] in response), "format": float("<format>" in response)}}
"""


@pytest.fixture(scope="module")
def tokenizer():
    word_level = Tokenizer(models.WordLevel({w: i for i, w in enumerate(VOCAB)}, unk_token="[UNK]"))
    word_level.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=word_level, unk_token="[UNK]", pad_token="[PAD]")


def rollout(executor, tokenizer, continuation, label="four"):
    params = SimpleNamespace(max_tokens=8, logprobs=None)
    return asyncio.run(
        executor.execute(
            "what is two plus two",
            label,
            params,
            64,
            tokenizer,
            ScriptedEngine(tokenizer(continuation, add_special_tokens=False)["input_ids"]),
        )
    )


def trainer_side(strategy, response):
    generator = SimpleNamespace(args=strategy.args)
    return SamplesGenerator._process_response_into_experience(generator, response)


def strategy_for(remote_url, *flags):
    return openrlhf_strategy(
        [
            "--advantage_estimator",
            "gd2po",
            "--reward.remote_url",
            remote_url,
            "--gd2po.reward_keys",
            "correctness",
            "format",
            "--rollout.n_samples_per_prompt",
            "2",
            *flags,
        ]
    )


@pytest.mark.parametrize(
    "continuation, expected", [("four <format>", [1.0, 1.0]), ("five", [0.0, 0.0]), ("<format> five", [0.0, 1.0])]
)
def test_reward_file_dimensions_reach_the_experience(tmp_path, tokenizer, continuation, expected):
    rules = tmp_path / "rules.py"
    rules.write_text(RULES)
    response = rollout(SingleTurnAgentExecutor(str(rules)), tokenizer, continuation)
    assert isinstance(response["reward"], dict)  # OpenRLHF passes the dict through untouched
    experience = trainer_side(strategy_for(str(rules)), response)
    assert [experience.info["reward/correctness"].item(), experience.info["reward/format"].item()] == expected
    assert experience.rewards.item() == sum(expected)


def test_an_async_reward_function_is_awaited_in_the_rollout_actor_as_on_the_server(tmp_path, tokenizer):
    rules = tmp_path / "rules.py"
    rules.write_text(RULES.replace("def reward_func", "async def reward_func"))
    response = rollout(SingleTurnAgentExecutor(str(rules)), tokenizer, "four <format>")
    experience = trainer_side(strategy_for(str(rules)), response)
    assert [experience.info["reward/correctness"].item(), experience.info["reward/format"].item()] == [1.0, 1.0]


def test_reward_file_that_raises_fails_the_step_with_a_clear_error(tmp_path, tokenizer):
    rules = tmp_path / "broken.py"
    rules.write_text("def reward_func(queries, prompts, labels):\n    raise KeyError('label')\n")
    response = rollout(SingleTurnAgentExecutor(str(rules)), tokenizer, "four")
    assert response["reward"] is None  # OpenRLHF's executor still swallows the exception...
    # ... but the plugin's reward client sends the cause along with the rollout
    with pytest.raises(
        ValueError,
        match=r"missing for prompt 'what is two plus two': reward function .*broken.py raised KeyError: 'label'",
    ):
        trainer_side(strategy_for(str(rules)), response)
    # a rollout that arrives without any reward and without a cause (OpenRLHF's own client) is refused too
    bare = {**response, "extra_logs": {}}
    with pytest.raises(
        ValueError,
        match=r"missing from reward function .*broken.py for prompt 'what is two plus two': it returned no reward",
    ):
        trainer_side(strategy_for(str(rules)), bare)


def test_drop_group_drops_the_groups_of_failed_rollouts_from_reward_file_to_advantages(tmp_path, tokenizer, caplog):
    rules = tmp_path / "flaky.py"
    rules.write_text(
        "def reward_func(queries, prompts, labels):\n"
        "    response = queries[0][len(prompts[0]):]\n"
        "    if 'five' in response:\n"
        "        raise ValueError('cannot score five')\n"
        "    return {'rewards': {'correctness': float('nan') if 'three' in response\n"
        "                                        else float(labels[0] in response),\n"
        "                        'format': float('<format>' in response)},\n"
        "            'extra_logs': {'response_words': float(len(response.split()))}}\n"
    )
    strategy = strategy_for(
        str(rules), "--gd2po.on_bad_reward", "drop_group", "--train.batch_size", "2", "--rollout.micro_batch_size", "2"
    )
    executor = SingleTurnAgentExecutor(str(rules))
    groups = [["four <format>", "five"], ["four", "three"], ["four <format>", "<format>"]]
    experiences = []
    for index, continuation in enumerate(c for group in groups for c in group):
        experience = trainer_side(strategy, rollout(executor, tokenizer, continuation))
        experience.index = [index]
        experiences.append(experience)
    # the failed rollouts arrive marked, with a finite placeholder for OpenRLHF's own reward field
    assert math.isnan(experiences[1].info["reward/correctness"].item()) and experiences[1].rewards.item() == 0.0
    assert math.isnan(experiences[3].info["reward/format"].item())
    rollout_warnings = " ".join(r.getMessage() for r in caplog.records)
    assert (
        "raised ValueError: cannot score five" in rollout_warnings
        and "returned nan for reward key 'correctness'" in rollout_warnings
    )
    maker = experience_maker(strategy)
    assert "response_words" not in experiences[1].info and "response_words" in experiences[0].info
    # OpenRLHF's micro-batching (as make_experience_batch does it) of rollouts with and without that log
    batches = maker.split_rollout_samples(experiences)
    assert all(len(value) == len(batch.index) for batch in batches for value in batch.info.values())
    trained = maker.compute_advantages_and_returns(batches)
    assert [e.index for e in trained] == [[4, 5]] and trained[0].info["response_words"].tolist() == [2.0, 1.0]
    assert trained[0].info["reward/correctness"].tolist() == [1.0, 0.0] and trained[0].info[
        "reward/format"
    ].tolist() == [1.0, 1.0]
    assert torch.isfinite(trained[0].advantages).all() and float(trained[0].advantages.abs().sum()) > 0
    assert maker.last_step_report.metrics["gd2po/dropped_bad_groups"] == 2


STOCK_ANSWERS = []  # non-empty: the server answers in the single-reward format of OpenRLHF's own estimators


def serve(faults, port=0):
    """A real HTTP reward server on loopback speaking OpenRLHF's {query, prompts, labels} protocol.

    ``faults`` is consumed one entry per request: an HTTP status to answer with, "slow" (answers after
    SLOW_S), "malformed" (a cut-off JSON body) or "two items" (one item too many); None answers normally.
    Returns the URL, the list of request bodies received, and the server (to shut down).
    """
    requests = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            requests.append(body)
            fault = faults.pop(0) if faults else None
            responses = [q[len(p) :] for q, p in zip(body["query"], body["prompts"])]
            copies = 2 if fault == "two items" else 1
            correctness = [float(label in r) for r, label in zip(responses, body["labels"])] * copies
            payload = {"rewards": {"correctness": correctness, "format": [float("<format>" in r) for r in responses]}}
            if STOCK_ANSWERS:  # one scalar reward per rollout, as OpenRLHF's own estimators read it
                payload = {
                    "rewards": correctness,
                    "scores": correctness,
                    "extra_logs": {"format": payload["rewards"]["format"]},
                }
            status, data = 200, json.dumps(payload).encode()
            if isinstance(fault, int):
                status, data = fault, b"reward backend overloaded"
            elif fault == "malformed":
                data = data[: len(data) // 2]
            elif fault == "slow":
                time.sleep(SLOW_S)
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up waiting (timeout tests)
                pass

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}/get_reward", requests, server


@pytest.fixture
def fault_server():
    """(url, requests, faults): a loopback reward server failing as the test appends to ``faults``."""
    faults = []
    url, requests, server = serve(faults)
    yield url, requests, faults
    server.shutdown()
    server.server_close()


@pytest.fixture
def reward_server(fault_server):
    url, requests, _ = fault_server
    return url, requests


@pytest.fixture
def fast_retries(monkeypatch):
    """The rollout actors' retry policy, shortened so that the fault tests take well under a second each."""
    monkeypatch.setenv("GD2PO_REWARD_ATTEMPTS", "4")
    monkeypatch.setenv("GD2PO_REWARD_BACKOFF_S", "0.02")
    monkeypatch.setenv("GD2PO_REWARD_TIMEOUT_S", str(SLOW_S / 4))


@pytest.mark.parametrize("fault", [503, 500, 429, "slow"])
def test_transient_faults_are_retried_until_the_server_answers(tokenizer, fault_server, fast_retries, fault, caplog):
    url, requests, faults = fault_server
    faults.extend([fault] * 3)  # three failures, the fourth and last attempt succeeds
    response = rollout(SingleTurnAgentExecutor(url), tokenizer, "<format> four")
    experience = trainer_side(strategy_for(url), response)
    assert experience.info["reward/correctness"].tolist() == [1.0] and experience.info["reward/format"].tolist() == [
        1.0
    ]
    assert len(requests) == 4 and all(body["query"] == requests[0]["query"] for body in requests)
    expected = f"HTTP {fault}: reward backend overloaded" if isinstance(fault, int) else "no answer within"
    assert any(expected in r.getMessage() and "retry 1/3" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("fault", [503, "slow"])
def test_a_server_that_stays_down_gives_a_clear_final_error(tokenizer, fault_server, fast_retries, fault):
    url, requests, faults = fault_server
    faults.extend([fault] * 10)
    response = rollout(SingleTurnAgentExecutor(url), tokenizer, "<format> four")
    assert len(requests) == 4 and response["reward"] is None
    last = (
        "HTTP 503: reward backend overloaded"
        if fault == 503
        else f"no answer within {SLOW_S / 4:g} s (GD2PO_REWARD_TIMEOUT_S)"
    )
    with pytest.raises(ValueError) as error:
        trainer_side(strategy_for(url), response)
    assert f"reward server {url} failed 4 times" in str(error.value) and f"(last: {last})" in str(error.value)
    assert "for prompt 'what is two plus two'" in str(error.value) and "GD2PO_REWARD_ATTEMPTS" in str(error.value)


def test_connection_refused_until_the_server_starts(tokenizer, fast_retries, monkeypatch):
    monkeypatch.setenv("GD2PO_REWARD_BACKOFF_S", "0.2")  # waits 0.1-0.2, 0.2-0.4, 0.4-0.8 s
    with socket.socket() as probe:  # a free port, closed again: connecting to it is refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/get_reward"
    # nothing listens there: every attempt is refused
    response = rollout(SingleTurnAgentExecutor(url), tokenizer, "four")
    with pytest.raises(
        ValueError, match=r"failed 4 times .*\(last: ClientConnectorError: Cannot connect to host 127.0.0.1:\d+"
    ):
        trainer_side(strategy_for(url), response)
    # the server comes up while the client is backing off: the rollout gets its reward
    started = []
    timer = threading.Timer(0.15, lambda: started.append(serve([], port)))
    timer.start()
    response = rollout(SingleTurnAgentExecutor(url), tokenizer, "four")
    timer.join()
    url_served, requests, server = started[0]
    server.shutdown()
    server.server_close()
    assert (
        trainer_side(strategy_for(url), response).info["reward/correctness"].tolist() == [1.0] and len(requests) == 1
    )


@pytest.mark.parametrize(
    "fault, message",
    [
        ("malformed", r"answered malformed JSON \(Unterminated string|answered malformed JSON \(Expecting"),
        ("two items", r"answered the wrong number of items: rewards.correctness has 2 items for 1 rollouts"),
        (400, r"refused the request with HTTP 400: reward backend overloaded"),
    ],
)
def test_permanent_faults_are_not_retried(tokenizer, fault_server, fast_retries, fault, message):
    url, requests, faults = fault_server
    faults.append(fault)
    response = rollout(SingleTurnAgentExecutor(url), tokenizer, "four")
    assert len(requests) == 1  # one request: retrying cannot fix it
    with pytest.raises(ValueError, match=message):
        trainer_side(strategy_for(url), response)
    # with drop_group the rollout is marked for dropping instead, and nothing of the bad answer is kept
    experience = trainer_side(strategy_for(url, "--gd2po.on_bad_reward", "drop_group"), response)
    assert math.isnan(experience.info["reward/correctness"].item()) and experience.rewards.item() == 0.0


def test_backoff_doubles_up_to_its_bound(monkeypatch):
    from gd2po_openrlhf.integration import reward_client

    waits = []

    async def record(delay):
        waits.append(delay)

    monkeypatch.setattr(reward_client.asyncio, "sleep", record)
    monkeypatch.setattr(reward_client.random, "uniform", lambda low, high: high)  # the longest wait the jitter allows
    monkeypatch.setenv("GD2PO_REWARD_ATTEMPTS", "9")
    monkeypatch.setenv("GD2PO_REWARD_BACKOFF_S", "1.5")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}/get_reward"
    with pytest.raises(RuntimeError, match="failed 9 times"):
        asyncio.run(reward_client.post_with_retries(url, {"query": ["q"], "prompts": ["p"], "labels": ["l"]}, 1))
    assert waits == [1.5, 3.0, 6.0, 12.0, 24.0, 30.0, 30.0, 30.0]


@pytest.mark.parametrize("value", ["abc", "0", "-2"])
def test_a_bad_retry_setting_is_named(tokenizer, monkeypatch, value):
    """Set only where the rollout actors run (the launcher refuses it when it sees it: test_cli)."""
    url = "http://127.0.0.1:9/get_reward"
    strategy = strategy_for(url)
    monkeypatch.setenv("GD2PO_REWARD_ATTEMPTS", value)
    response = rollout(SingleTurnAgentExecutor(url), tokenizer, "four")
    with pytest.raises(ValueError, match=f"GD2PO_REWARD_ATTEMPTS={value!r}"):
        trainer_side(strategy, response)


def test_stock_estimators_get_openrlhfs_missing_reward_and_the_cause_in_the_log(
    tokenizer, fault_server, fast_retries, caplog
):
    url, _, faults = fault_server
    faults.append("malformed")
    response = rollout(SingleTurnAgentExecutor(url), tokenizer, "four")
    strategy = openrlhf_strategy(
        ["--advantage_estimator", "group_norm", "--reward.remote_url", url, "--rollout.n_samples_per_prompt", "2"]
    )
    experience = trainer_side(strategy, response)
    assert "reward" not in experience.info and experience.rewards is None  # as OpenRLHF makes it without a reward
    assert any(
        "no reward for prompt 'what is two plus two'" in r.getMessage() and "malformed JSON" in r.getMessage()
        for r in caplog.records
    )


def test_http_reward_server_dimensions_reach_the_experience(tokenizer, reward_server):
    url, requests = reward_server
    response = rollout(SingleTurnAgentExecutor(url), tokenizer, "<format> four")
    experience = trainer_side(strategy_for(url), response)
    assert experience.info["reward/correctness"].tolist() == [1.0] and experience.info["reward/format"].tolist() == [
        1.0
    ]
    assert requests[0]["labels"] == ["four"] and requests[0]["prompts"] == ["what is two plus two"]


@pytest.mark.parametrize(
    "continuation, expected",
    [("<answer> four </answer>", {"correctness": 1.0, "format": 1.0}), ("four", {"correctness": 0.0, "format": 0.0})],
)
def test_shipped_template_reward_file(tokenizer, continuation, expected):
    import pathlib

    template = pathlib.Path(__file__).resolve().parents[1] / "examples" / "rewards" / "multi_reward_template.py"
    tokenizer.add_tokens(["<answer>", "</answer>"])
    response = rollout(SingleTurnAgentExecutor(str(template)), tokenizer, continuation)
    rewards = {key: values[0] for key, values in response["reward"].items()}  # one rollout: one value per dimension
    assert {k: rewards[k] for k in expected} == expected
    assert 0.9 < rewards["brevity"] <= 1.0


def test_the_template_scores_every_query_of_a_batch_behind_the_server():
    import pathlib

    from gd2po_openrlhf.reward_check import load_reward_func
    from gd2po_openrlhf.serving.server import RewardServer

    template = pathlib.Path(__file__).resolve().parents[1] / "examples" / "rewards" / "multi_reward_template.py"
    server = RewardServer(load_reward_func(str(template)), str(template)).start_in_thread()
    try:
        body = {
            "query": ["Q <answer>4</answer>", "Q <answer>5</answer>", "Q no answer"],
            "prompts": ["Q", "Q", "Q"],
            "labels": ["4", "4", "4"],
        }
        request = urllib.request.Request(server.url, data=json.dumps(body).encode())
        logs = json.loads(urllib.request.urlopen(request, timeout=10).read())["extra_logs"]
    finally:
        server.stop_thread()
    assert logs["reward/correctness"] == [1.0, 0.0, 0.0] and logs["reward/format"] == [1.0, 1.0, 0.0]


def test_a_reward_client_failure_never_reaches_openrlhfs_info_tensors_as_a_string(
    tokenizer, fault_server, fast_retries
):
    """A rollout actor's reward client that failed while no dimension is remote (only model groups score): the
    trainer names the failure instead of handing its message to OpenRLHF (which crashed in torch.tensor on a str)."""
    url, _, faults = fault_server
    faults.append("malformed")
    response = rollout(SingleTurnAgentExecutor(url), tokenizer, "four")
    strategy = openrlhf_strategy(
        [
            "--advantage_estimator",
            "gd2po",
            "--reward.model_name_or_path",
            "org/rm",
            "--rollout.n_samples_per_prompt",
            "2",
        ]
    )
    with pytest.raises(ValueError, match="a reward client ran for prompt 'what is two plus two'.*malformed JSON"):
        trainer_side(strategy, response)


@pytest.mark.parametrize("returned, shown", [("1.0", "float 1.0"), ("None", "NoneType None"), ("[1.0]", "list [1.0]")])
def test_a_reward_function_returning_no_dict_is_named_with_what_it_returned(tmp_path, tokenizer, returned, shown):
    """OpenRLHF reads the result with .get() inside a swallowed try; the plugin names the bad return value instead."""
    rules = tmp_path / "bare_number.py"
    rules.write_text(f"def reward_func(queries, prompts, labels):\n    return {returned}\n")
    response = rollout(SingleTurnAgentExecutor(str(rules)), tokenizer, "four")
    with pytest.raises(
        ValueError, match=rf"bare_number.py returned {re.escape(shown)}: expected a dict with 'rewards'"
    ):
        trainer_side(strategy_for(str(rules)), response)


def test_a_reward_above_the_magnitude_bound_is_named_at_its_source(tmp_path, tokenizer):
    rules = tmp_path / "huge.py"
    rules.write_text(
        "def reward_func(queries, prompts, labels):\n    return {'rewards': {'correctness': 1e20, 'format': 1.0}}\n"
    )
    response = rollout(SingleTurnAgentExecutor(str(rules)), tokenizer, "four")
    with pytest.raises(
        ValueError,
        match=(
            r"huge.py for prompt 'what is two plus two' returned 1e\+20 for reward key 'correctness' .*\|r\| <= "
            r"1e\+15"
        ),
    ):
        trainer_side(strategy_for(str(rules)), response)


def test_failures_that_differ_only_in_numbers_are_logged_once_with_a_count(monkeypatch, caplog):
    """A server that is down, or a bad setting, fails every rollout in flight: one warning, not one per rollout."""
    import gd2po_openrlhf.integration.reward_client as reward_client

    monkeypatch.setattr(reward_client, "_last_failure", {})
    for attempt in range(50):
        reward_client.failed_rewards(
            f"reward server http://127.0.0.1:5000/get_reward failed 4 times in {attempt} s (last: refused)", 1
        )
    warnings = [record.getMessage() for record in caplog.records if "failed 4 times" in record.getMessage()]
    assert len(warnings) == 1
    monkeypatch.setattr(reward_client, "WARNING_INTERVAL_S", 0.0)
    reward_client.failed_rewards(
        "reward server http://127.0.0.1:5000/get_reward failed 4 times in 99 s (last: refused)", 1
    )
    assert "(49 more rollouts failed the same way since the last warning)" in caplog.records[-1].getMessage()


def test_a_payload_with_the_dimensions_in_both_forms_is_refused():
    """Which of two disagreeing sources wins would be an accident of the code: neither does."""
    from gd2po_openrlhf.rewards import dimensions_from_payload

    with pytest.raises(
        ValueError, match=r"f.py returned the dimensions twice, as 'rewards' \['a'\] and as extra_logs \['reward/a'\]"
    ):
        dimensions_from_payload({"rewards": {"a": 1.0}, "extra_logs": {"reward/a": 2.0}}, 1, None, "reward file f.py")
    assert dimensions_from_payload({"rewards": 3.0, "extra_logs": {"reward/a": 2.0}}, 1) == {
        "a": [2.0]
    }  # a scalar sum is fine


@pytest.mark.parametrize("policy", ["error", "drop_group"])
def test_a_reward_too_large_for_a_float_is_named_and_drop_group_catches_it(tmp_path, tokenizer, policy):
    # 10**400 overflows float(): once an OverflowError naming nothing, which escaped drop_group (issue 25, item 6).
    rules = tmp_path / "vast.py"
    rules.write_text(
        "def reward_func(queries, prompts, labels):\n    return {'rewards': {'correctness': 10**400, 'format': 1.0}}\n"
    )
    response = rollout(SingleTurnAgentExecutor(str(rules)), tokenizer, "four")
    strategy = strategy_for(str(rules), "--gd2po.on_bad_reward", policy)
    if policy == "error":
        with pytest.raises(ValueError, match=r"returned an integer of 1329 bits for reward key 'correctness'"):
            trainer_side(strategy, response)
    else:
        experience = trainer_side(strategy, response)
        assert math.isnan(experience.info["reward/correctness"].item())  # its group is dropped from the step


@pytest.mark.parametrize(
    "value, shown",
    [
        ("'high'", "'high'"),
        ("None", "None"),
        ("{'a': 1}", "{'a': 1}"),
        ("float('nan')", "nan"),
        ("[1.0, 2.0]", r"\[1.0, 2.0\]"),
    ],
)
def test_an_extra_logs_value_that_is_no_number_is_named_and_drop_group_catches_it(tmp_path, tokenizer, value, shown):
    # OpenRLHF would fail later in its concat ("too many dimensions 'str'") naming neither the source nor the key.
    rules = tmp_path / "chatty.py"
    rules.write_text(
        "def reward_func(queries, prompts, labels):\n"
        f"    return {{'rewards': {{'correctness': 1.0, 'format': 0.0}}, 'extra_logs': {{'mood': {value}}}}}\n"
    )
    response = rollout(SingleTurnAgentExecutor(str(rules)), tokenizer, "four")
    with pytest.raises(
        ValueError, match=rf"chatty.py for prompt 'what is two plus two' returned extra_logs\['mood'\] = {shown}"
    ):
        trainer_side(strategy_for(str(rules)), response)
    experience = trainer_side(strategy_for(str(rules), "--gd2po.on_bad_reward", "drop_group"), response)
    assert math.isnan(experience.info["reward/correctness"].item()) and "mood" not in experience.info


def test_numeric_extra_logs_reach_the_info_as_one_number_each(tmp_path, tokenizer):
    rules = tmp_path / "metrics.py"
    rules.write_text(
        "def reward_func(queries, prompts, labels):\n"
        "    return {'rewards': {'correctness': 1.0, 'format': 0.0}, 'extra_logs': {'steps': 3, 'acc': [0.5]}}\n"
    )
    response = rollout(SingleTurnAgentExecutor(str(rules)), tokenizer, "four")
    experience = trainer_side(strategy_for(str(rules)), response)
    assert experience.info["steps"].tolist() == [3.0] and experience.info["acc"].tolist() == [0.5]


# ---- OpenRLHF's own estimators: the plugin's HTTP fetch ends where OpenRLHF's does


def same_experience(first, second) -> bool:
    fields = set(vars(first)) | set(vars(second))
    for name in fields:
        a, b = getattr(first, name, None), getattr(second, name, None)
        if name == "info":
            if a.keys() != b.keys() or not all(torch.equal(a[k], b[k]) for k in a):
                return False
        elif isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
            if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b)):
                return False
        elif a != b:
            return False
    return True


@pytest.mark.parametrize("faults", [[], [500], [400] * 6, ["malformed"] * 6, [503] * 6])
def test_with_a_stock_estimator_the_http_fetch_gives_the_experience_openrlhfs_gives(
    tokenizer, fault_server, fast_retries, faults, monkeypatch
):
    """The HTTP replacement runs in the rollout actors whatever the estimator (they do not know it): for
    OpenRLHF's own estimators its retries differ (transient faults only, with backoff), but every rollout reaches
    the trainer as the Experience OpenRLHF's own fetch gives: the reward, or None when the server fails."""
    from gd2po_openrlhf.integration.openrlhf_patches import UPSTREAM

    monkeypatch.setattr(asyncio, "sleep", lambda seconds, sleep=asyncio.sleep: sleep(0))  # OpenRLHF waits 1 s a try
    STOCK_ANSWERS.append(True)
    try:
        url, requests, queued = fault_server
        stock = openrlhf_strategy(
            ["--advantage_estimator", "group_norm", "--reward.remote_url", url, "--rollout.n_samples_per_prompt", "2"]
        )
        experiences = []
        for fetch in (UPSTREAM["SingleTurnAgentExecutor._fetch_rewards_via_http"], None):
            queued[:] = list(faults)
            executor = SingleTurnAgentExecutor(url)
            if fetch is not None:
                executor._fetch_rewards_via_http = fetch.__get__(executor)
            experiences.append(trainer_side(stock, rollout(executor, tokenizer, "<format> four")))
    finally:
        STOCK_ANSWERS.clear()
    upstream, plugin = experiences
    assert same_experience(upstream, plugin), (vars(upstream), vars(plugin))
    if faults[-1:] in ([], [500]):
        assert upstream.rewards.flatten().tolist() == [1.0] and upstream.info["format"].flatten().tolist() == [1.0]
    else:
        assert upstream.rewards is None  # the failure: no reward either way
