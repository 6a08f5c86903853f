"""The reward server (python -m gd2po_openrlhf.serve_rewards) on loopback: protocol, validation, limits,
concurrent clients, OpenRLHF's own HTTP client and the command line."""

import asyncio
import importlib.util
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import openrlhf.trainer.ppo_trainer  # noqa: F401  (the import hook patches SamplesGenerator through it)
import pytest
from gd2po_testing import ScriptedEngine, openrlhf_strategy
from openrlhf.trainer.ppo_utils.samples_generator import SamplesGenerator
from openrlhf.utils.agent import SingleTurnAgentExecutor
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from gd2po_openrlhf.reward_check import load_reward_func
from gd2po_openrlhf.serving.protocol import ServerLimits
from gd2po_openrlhf.serving.server import RewardServer

ROOT = Path(__file__).resolve().parents[1]
TOOL_CALLING = ROOT / "examples" / "rewards" / "tool_calling.py"
spec = importlib.util.spec_from_file_location("tool_calling_rewards_for_server", TOOL_CALLING)
tool_calling = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tool_calling)

GROUND_TRUTH = '<think>x</think>\n<tool_call>\n{"name": "f", "parameters": {"a": 1, "b": 2}}\n</tool_call>'


def rollout_text(i):
    """A response whose three rewards depend on i: the call's parameters, the format and the think length."""
    params = {"a": 1, "b": i % 3}
    think = " ".join(["w"] * (i % 600))
    body = f"<think>{think}</think>\n<tool_call>\n{json.dumps({'name': 'f', 'parameters': params})}\n</tool_call>"
    return body if i % 4 else body + " trailing words"


def post(url, payload, timeout=30, headers=None):
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.fixture
def serve():
    servers = []

    def start(reward_func=tool_calling.reward_func, **limits):
        server = RewardServer(reward_func, "test.py", ServerLimits(**limits)).start_in_thread()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop_thread()


def test_concurrent_clients_each_get_their_own_rollouts_rewards(serve):
    server = serve(reward_keys=["correctness", "format", "length"], max_concurrency=4)
    rng = random.Random(0)
    batches = [[rng.randrange(2000) for _ in range(rng.randint(1, 6))] for _ in range(120)]

    def ask(batch):
        prompts = [f"prompt {i}: call f\n" for i in batch]
        status, answer = post(
            server.url,
            {
                "query": [p + rollout_text(i) for p, i in zip(prompts, batch)],
                "prompts": prompts,
                "labels": [GROUND_TRUTH] * len(batch),
            },
        )
        return batch, status, answer

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(ask, batches))
    for batch, status, answer in results:
        assert status == 200
        expected = [tool_calling.score(rollout_text(i), GROUND_TRUTH) for i in batch]
        for key in ("correctness", "format", "length"):
            assert answer["extra_logs"][f"reward/{key}"] == [e[key] for e in expected]
        assert (
            answer["rewards"] == pytest.approx([sum(e.values()) for e in expected])
            and answer["scores"] == answer["rewards"]
        )
    # the batches really differ: otherwise a mix-up between clients could go unnoticed
    assert len({json.dumps(a["extra_logs"]) for _, _, a in results}) > 100
    status, health = post_get(server.url.replace("/get_reward", "/health"))
    assert (
        status == 200
        and health["served_requests"] == len(batches)
        and health["served_rollouts"] == sum(map(len, batches))
    )
    assert health["in_flight"] == 0 and health["reward_keys"] == ["correctness", "format", "length"]


def post_get(url):
    with urllib.request.urlopen(url, timeout=10) as answer:
        return answer.status, json.loads(answer.read())


@pytest.mark.parametrize(
    "body, status, message",
    [
        (b"{not json", 400, "body is not valid JSON"),
        (b"[1, 2]", 400, "body must be a JSON object"),
        ({"prompts": ["p"], "labels": [None]}, 400, "'query' must be a non-empty list of strings"),
        ({"query": [], "prompts": []}, 400, "'query' must be a non-empty list"),
        ({"query": ["p r", 3], "prompts": ["p", "p"]}, 400, "'query' must be a non-empty list of strings"),
        ({"query": ["p r", "p s"], "prompts": ["p"]}, 400, "'prompts' must be a list of 2 strings"),
        ({"query": ["p r"], "prompts": ["p"], "labels": ["a", "b"]}, 400, "'labels' must be a list of 1 items"),
        (
            {"query": ["p r"] * 5, "prompts": ["p"] * 5, "labels": ["a"] * 5},
            413,
            "batch of 5 queries exceeds --max-batch 4",
        ),
    ],
)
def test_malformed_requests_get_a_4xx_with_the_reason(serve, body, status, message):
    server = serve(max_batch=4)
    code, answer = post(server.url, body)
    assert code == status and message in answer["error"]
    assert (
        post(server.url, {"query": ["p " + rollout_text(1)], "prompts": ["p "], "labels": [GROUND_TRUTH]})[0] == 200
    )  # still serving


def test_labels_may_be_omitted_and_unknown_paths_are_404(serve):
    server = serve(reward_func=lambda q, p, labels: {"rewards": {"has_label": [float(x is not None) for x in labels]}})
    assert post(server.url, {"query": ["a b"], "prompts": ["a"]}) == (
        200,
        {"rewards": [0.0], "scores": [0.0], "extra_logs": {"reward/has_label": [0.0]}},
    )
    assert post(server.url.replace("get_reward", "nope"), {"query": ["a"], "prompts": ["a"]})[0] == 404


@pytest.mark.parametrize(
    "reward_func, message",
    [
        (lambda queries, prompts, labels: 1 / 0, "ZeroDivisionError"),
        (
            lambda queries, prompts, labels: {"rewards": {"correctness": [1.0]}},
            "returned 1 values for reward key 'correctness', expected one per rollout (2)",
        ),
        (
            lambda queries, prompts, labels: {"rewards": {"correctness": [1.0, float("nan")]}},
            "returned nan for reward key 'correctness' of rollout 1",
        ),
        (lambda queries, prompts, labels: {"rewards": [1.0, 2.0]}, "returned no reward dimensions"),
        (
            lambda queries, prompts, labels: {"rewards": {"correctness": [1.0, 1e20]}},
            "returned 1e+20 for reward key 'correctness' of rollout 1",
        ),
        (lambda queries, prompts, labels: sys.exit(3), "SystemExit: 3"),
        (lambda queries, prompts, labels: (_ for _ in ()).throw(KeyboardInterrupt("in the rules")), "KeyboardInter"),
    ],
)
def test_a_failing_reward_function_is_a_422_naming_the_cause(serve, reward_func, message):
    """422: the reward function fails on this batch every time, so clients must not retry (a 5xx would be)."""
    server = serve(reward_func=reward_func)
    code, answer = post(server.url, {"query": ["a b", "a c"], "prompts": ["a", "a"], "labels": [None, None]})
    assert code == 422 and message in answer["error"]


def test_declared_reward_keys_are_enforced(serve):
    server = serve(
        reward_func=lambda queries, prompts, labels: {"rewards": {"correctness": [1.0], "style": [0.0]}},
        reward_keys=["correctness"],
    )
    code, answer = post(server.url, {"query": ["a b"], "prompts": ["a"]})
    assert (
        code == 422
        and "reward keys ['style'] that are not among the declared reward keys ['correctness']" in answer["error"]
    )


def test_a_full_server_answers_503_after_the_queue_timeout(serve):
    release = threading.Event()

    def slow(queries, prompts, labels):
        release.wait(10)
        return {"rewards": {"x": [1.0] * len(queries)}}

    # Two threads score at once (--max-concurrency 2); a third batch waits 0.2 s for a slot, then gets the 503.
    server = serve(reward_func=slow, max_concurrency=2, queue_timeout=0.2)
    payload = {"query": ["a b"], "prompts": ["a"]}
    with ThreadPoolExecutor(2) as pool:
        first = [pool.submit(post, server.url, payload) for _ in range(2)]
        while server.in_flight < 2:
            time.sleep(0.01)
        code, answer = post(server.url, payload)
        release.set()
        for future in first:
            assert future.result() == (200, {"rewards": [1.0], "scores": [1.0], "extra_logs": {"reward/x": [1.0]}})
    assert code == 503 and "busy: all 2 slots taken" in answer["error"]


def byte_level_tokenizer():
    """Round-trips any text exactly, so the reward file sees the response as generated."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    tokenizer = Tokenizer(models.BPE({c: i for i, c in enumerate(sorted(alphabet))}, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer)


def test_openrlhfs_http_client_and_the_plugin_read_every_dimension(serve):
    server = serve(reward_keys=["correctness", "format", "length"])
    tokenizer = byte_level_tokenizer()
    strategy = openrlhf_strategy(
        [
            "--advantage_estimator",
            "gd2po",
            "--reward.remote_url",
            server.url,
            "--gd2po.reward_keys",
            "correctness",
            "format",
            "length",
            "--rollout.n_samples_per_prompt",
            "2",
        ]
    )
    executor = SingleTurnAgentExecutor(server.url)
    params = SimpleNamespace(max_tokens=512, logprobs=None)
    for i in (1, 2, 7):
        engine = ScriptedEngine(tokenizer(rollout_text(i), add_special_tokens=False)["input_ids"])
        response = asyncio.run(executor.execute("call f please\n", GROUND_TRUTH, params, 4096, tokenizer, engine))
        experience = SamplesGenerator._process_response_into_experience(SimpleNamespace(args=strategy.args), response)
        expected = tool_calling.score(rollout_text(i), GROUND_TRUTH)
        assert {k: experience.info[f"reward/{k}"].item() for k in expected} == pytest.approx(expected)
        assert experience.rewards.tolist() == pytest.approx([sum(expected.values())])


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.subprocess
def test_command_line_serves_the_tool_calling_file_and_logs_each_request():
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gd2po_openrlhf.serve_rewards",
            "--reward-file",
            str(TOOL_CALLING),
            "--port",
            str(port),
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for _ in range(200):
            try:
                status, health = post_get(f"http://127.0.0.1:{port}/health")
                break
            except OSError:
                time.sleep(0.05)
        assert status == 200 and health["status"] == "ok" and health["reward_file"] == str(TOOL_CALLING)
        code, answer = post(
            f"http://127.0.0.1:{port}/get_reward",
            {"query": ["p" + rollout_text(5)] * 3, "prompts": ["p"] * 3, "labels": [GROUND_TRUTH] * 3},
        )
        assert code == 200 and answer["extra_logs"]["reward/correctness"] == [3.0] * 3
    finally:
        process.terminate()
        log = process.communicate(timeout=10)[1]
    assert f"serving {TOOL_CALLING} on http://127.0.0.1:{port}/get_reward" in log
    assert '"POST /get_reward HTTP/1.1" 200 batch=3' in log and '"GET /health HTTP/1.1" 200' in log


@pytest.mark.subprocess
def test_command_line_refuses_a_file_without_reward_func(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def reward(queries):\n    return 0\n")
    result = subprocess.run(
        [sys.executable, "-m", "gd2po_openrlhf.serve_rewards", "--reward-file", str(bad)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and f"reward file {bad} defines no reward_func" in result.stderr
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_reward_func(str(tmp_path / "missing.py"))


@pytest.mark.subprocess
def test_load_benchmark_short_mode_finds_no_lost_duplicated_or_misattributed_rollouts(tmp_path):
    report_path = tmp_path / "load.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "reward_server_load.py"), "--quick", "--json", str(report_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    report = json.loads(report_path.read_text())
    assert set(report["results"]) == {"rules", "cpu"}
    for reward, rows in report["results"].items():
        assert set(rows) == {"direct", "workers=1", "workers=2"}, reward
        for name in ("workers=1", "workers=2"):
            row = rows[name]
            assert row["lost"] == row["duplicated"] == row["wrong"] == 0, (reward, name)
            assert row["rollouts_per_s"] > 0 and 0 < row["p50_ms"] <= row["p99_ms"] and row["cores"] > 0
        assert rows["workers=2"]["rollouts_per_s_vs_workers=1"]["median"] > 0


def raw_request(server, data: bytes, timeout=10) -> bytes:
    with socket.create_connection(server.server_address[:2], timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_deeply_nested_labels_get_a_400(serve):
    server = serve()
    body = '{"query": ["a b"], "prompts": ["a"], "labels": [' + "[" * 100_000 + "]" * 100_000 + "]}"
    code, answer = post(server.url, body.encode())
    assert code == 400 and "nested too deeply" in answer["error"]


def test_a_negative_content_length_gets_aiohttps_400_and_a_one_line_log(serve, caplog):
    server = serve()
    answer = raw_request(server, b"POST /get_reward HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n")
    assert answer.startswith(b"HTTP/1.0 400") and b"Invalid character in Content-Length" in answer
    (record,) = [r for r in caplog.records if r.name == "gd2po_openrlhf.serve_rewards.http"]
    assert record.exc_info is None and "Content-Length" in record.getMessage()


@pytest.mark.parametrize(
    "labels, field",
    [
        ("[" + "9" * 5000 + "]", "labels[0]: 99999"),
        ('[{"answer": [1, 1e400]}]', "labels[0].answer[1]: 1e400"),
        ("[NaN]", "labels[0]: NaN"),
        ("[-Infinity]", "labels[0]: -Infinity"),
    ],
)
def test_numbers_python_cannot_make_a_finite_float_get_a_400_naming_the_field(serve, labels, field):
    server = serve()
    body = '{"query": ["a b"], "prompts": ["a"], "labels": %s}' % labels
    code, answer = post(server.url, body.encode())
    assert code == 400 and answer["error"].startswith(field) and "is not a finite number" in answer["error"]
    assert post(server.url, {"query": ["a b"], "prompts": ["a"], "labels": [10**300]})[0] == 200  # 301 digits: fine


def test_an_async_reward_function_is_awaited_on_the_loop(serve):
    async def judge(queries, prompts, labels):
        await asyncio.sleep(0.01)
        return {"rewards": {"judge": [float(len(q)) for q in queries]}}

    server = serve(reward_func=judge)
    assert post(server.url, {"query": ["abc", "a"], "prompts": ["a", "a"]})[1]["extra_logs"] == {
        "reward/judge": [3.0, 1.0]
    }


def test_slow_clients_are_cut_off_after_the_read_timeout_and_others_are_served(serve):
    """64 clients that never finish their headers and 16 that never finish their body, while normal clients are
    served: each slow one gets a 408 and is closed within the read timeout."""
    server = serve(read_timeout=0.5)
    slow = [socket.create_connection(server.server_address[:2]) for _ in range(80)]
    for sock in slow[:64]:
        sock.sendall(b"POST /get_reward HTTP/1.1\r\nHost: x\r\n")  # headers never finished
    for sock in slow[64:]:
        sock.sendall(b"POST /get_reward HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")  # body never finished
    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda _: post(server.url, {"query": ["a b"], "prompts": ["a"]})[0], range(32)))
    assert codes == [200] * 32 and time.monotonic() - started < 0.5  # not blocked by them
    for sock in slow:
        sock.settimeout(5)
        answer = sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 408"), answer[:100]
        assert sock.recv(65536) == b""  # and closed
        sock.close()
    assert time.monotonic() - started < 3


def test_a_client_trickling_its_headers_cannot_extend_the_read_timeout(serve):
    """One header byte every 0.1 s (each read succeeds, so a per-read timeout never fires): cut off 1 s after the
    first byte."""
    server = serve(read_timeout=1.0)
    sock = socket.create_connection(server.server_address[:2])
    started = time.monotonic()
    answer = b""
    for byte in b"POST /get_reward HTTP/1.1\r\nHost: x\r\nX-Trickle: " + b"a" * 100:
        try:
            sock.sendall(bytes([byte]))
        except (BrokenPipeError, ConnectionResetError):
            break
        time.sleep(0.1)
        sock.setblocking(False)
        try:
            answer += sock.recv(65536)
        except BlockingIOError:
            pass
        sock.setblocking(True)
        if answer:
            break
    elapsed = time.monotonic() - started
    sock.close()
    assert answer.startswith(b"HTTP/1.1 408") and b"did not arrive within 1 s" in answer
    assert 0.9 < elapsed < 1.6


def test_connections_over_max_connections_get_a_503_and_the_rest_are_served(serve):
    server = serve(max_connections=4)
    idle = [socket.create_connection(server.server_address[:2]) for _ in range(4)]
    time.sleep(0.1)
    over = socket.create_connection(server.server_address[:2])
    over.settimeout(5)
    answer = over.recv(65536)
    assert answer.startswith(b"HTTP/1.1 503") and b"Retry-After: 1" in answer and b"--max-connections" in answer
    idle.pop().close()
    time.sleep(0.1)
    assert post(server.url, {"query": ["a b"], "prompts": ["a"]})[0] == 200
    for sock in idle + [over]:
        sock.close()


@pytest.mark.parametrize("method", ["PUT", "DELETE", "OPTIONS", "PATCH"])
def test_other_methods_get_a_405_in_json(serve, method):
    server = serve()
    request = urllib.request.Request(server.url, data=b"{}", method=method)
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(request, timeout=10)
    assert error.value.code == 405 and error.value.headers["Allow"] == "GET, POST"
    assert "is not supported: GET /health or POST /get_reward" in json.loads(error.value.read())["error"]
    with pytest.raises(urllib.error.HTTPError) as error:  # a browser or curl without -d on the reward path
        urllib.request.urlopen(server.url, timeout=10)
    assert error.value.code == 405 and error.value.headers["Allow"] == "GET, POST"
    assert json.loads(error.value.read())["error"] == (
        "GET is not supported on /get_reward: POST {query, prompts, labels} there"
    )
    head = urllib.request.Request(server.url, method="HEAD")
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(head, timeout=10)
    assert error.value.code == 405


def test_a_trailing_slash_and_a_query_string_reach_the_reward_path(serve):
    server = serve()
    for path in ("/get_reward/", "/get_reward?client=1", "/?x=y"):
        url = server.url.replace("/get_reward", path)
        assert post(url, {"query": ["a b"], "prompts": ["a"]})[0] == 200, path
    assert urllib.request.urlopen(server.url.replace("/get_reward", "/health/?verbose=1"), timeout=10).status == 200


@pytest.mark.subprocess
@pytest.mark.parametrize(
    "args, file_text, message",
    [
        (["--max-body-bytes", "-5"], None, "--max-body-bytes must be >= 1, got -5"),
        (["--port", "99999"], None, "--port must be between 0 and 65535, got 99999"),
        (["--workers", "0"], None, "--workers must be >= 1, got 0"),
        (["--replicas", "2"], None, "--replicas needs --ray-serve"),
        (
            ["--workers", "2"],
            "import no_such_module_gd2po\n",
            "failed to load: ModuleNotFoundError: No module named 'no_such_module_gd2po'",
        ),
        (["--queue-timeout", "-1"], None, "--queue-timeout must be > 0 seconds, got -1.0"),
        (["--idle-timeout", "inf"], None, "--idle-timeout must be > 0 seconds, got inf"),
        (["--max-buffered-bytes", "10"], None, "--max-buffered-bytes 10 is below --max-body-bytes 67108864"),
        (["--host", "0.0.0.0"], None, "--host 0.0.0.0 serves other machines, and without a token anyone"),
        (["--auth-token-file", "no-such-token"], None, "--auth-token-file: token file no-such-token: cannot read it"),
        (["--host", "no-such-host.invalid"], None, "cannot listen on no-such-host.invalid:"),
        ([], "def reward_func(q, p, l)\n    return {}\n", "failed to load: SyntaxError"),
        (
            [],
            "import no_such_module_gd2po\n",
            "failed to load: ModuleNotFoundError: No module named 'no_such_module_gd2po'",
        ),
    ],
)
def test_command_line_mistakes_are_usage_errors_not_tracebacks(tmp_path, args, file_text, message):
    reward_file = tmp_path / "rules.py"
    reward_file.write_text(file_text or "def reward_func(q, p, l):\n    return {'rewards': {'a': [1.0] * len(q)}}\n")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "gd2po_openrlhf.serve_rewards",
            "--reward-file",
            str(reward_file),
            "--port",
            "0",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


@pytest.mark.subprocess
def test_a_port_in_use_is_a_usage_error(tmp_path):
    reward_file = tmp_path / "rules.py"
    reward_file.write_text("def reward_func(q, p, l):\n    return {'rewards': {'a': [1.0] * len(q)}}\n")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "gd2po_openrlhf.serve_rewards",
                "--reward-file",
                str(reward_file),
                "--port",
                str(port),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert (
        result.returncode == 2
        and f"cannot listen on 127.0.0.1:{port}" in result.stderr
        and "Traceback" not in result.stderr
    )


# ---------------------------------------------------------------------------------------------- worker processes

ECHO_REWARDS = """
import os, time

def reward_func(queries, prompts, labels):
    ids = [int(p.split()[1]) for p in prompts]
    with open({log!r}, "a") as log:  # which worker scored which rollouts: a retried rollout is scored twice
        log.write("".join(f"{{os.getpid()}} {{i}}\\n" for i in ids))
    time.sleep({sleep})
    return {{"rewards": {{"rollout_id": [float(i) for i in ids]}}}}
"""


def start_workers(tmp_path, workers, sleep=0.01, extra=()):
    """``python -m gd2po_openrlhf.serve_rewards --workers N`` with the echo reward file: (process, url, scored log,
    worker pids from its 'serving' line, stderr lines read so far)."""
    scored = tmp_path / "scored.txt"
    reward_file = tmp_path / "echo.py"
    reward_file.write_text(ECHO_REWARDS.format(log=str(scored), sleep=sleep))
    port = free_port()
    command = [sys.executable, "-m", "gd2po_openrlhf.serve_rewards", "--reward-file", str(reward_file)]
    command += ["--port", str(port), "--workers", str(workers), *extra]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    lines = []
    for line in process.stderr:
        lines.append(line)
        if " serving " in line:
            break
    assert process.poll() is None, "".join(lines)
    threading.Thread(target=lambda: lines.extend(process.stderr), daemon=True).start()
    pids = [int(pid) for pid in lines[-1].split("(pids ")[1].split(";")[0].split()] if workers > 1 else [process.pid]
    return process, f"http://127.0.0.1:{port}/get_reward", scored, pids, lines


def payload_of(ids):
    return {"query": [f"rollout {i} : r" for i in ids], "prompts": [f"rollout {i} :" for i in ids]}


def load_through_the_plugins_client(url, rollouts, after_each=None, in_flight=16):
    """Posts rollouts 0..N-1 in batches of 4 through the plugin's reward client (its retries included),
    ``in_flight`` requests at a time: [(batch, the rollout ids answered)]. ``after_each(answered so far)``."""
    from gd2po_openrlhf.integration.reward_client import post_with_retries

    queue, answered = [list(range(b, b + 4)) for b in range(0, rollouts, 4)], []

    async def client():
        while queue:
            batch = queue.pop()
            answer = await post_with_retries(url, payload_of(batch), len(batch))
            answered.append((batch, answer["extra_logs"]["reward/rollout_id"]))
            if after_each is not None:
                after_each(len(answered))

    async def load():
        await asyncio.gather(*(client() for _ in range(in_flight)))

    asyncio.run(load())
    return answered


@pytest.mark.subprocess
def test_two_workers_serve_one_port_from_two_processes(tmp_path):
    process, url, scored, pids, _ = start_workers(tmp_path, 2)
    try:
        health = url.replace("/get_reward", "/health")
        seen = {json.loads(urllib.request.urlopen(health, timeout=10).read())["worker_pid"] for _ in range(40)}
        assert seen == set(pids) and len(pids) == 2, "new connections are spread over both workers"
    finally:
        process.terminate()
        assert process.wait(timeout=30) == 0


@pytest.mark.subprocess
def test_a_worker_killed_mid_load_loses_nothing_and_answers_nothing_twice(tmp_path, monkeypatch):
    """SIGKILL one of 2 workers while 16 requests are in flight: the plugin's client retries what was in flight on
    it, the other worker (and the supervisor's replacement) answers, every rollout comes back once with its own
    reward."""
    import random as random_module

    from gd2po_openrlhf.integration import reward_client

    retries = []  # the client draws its backoff jitter once per retry, and only then
    monkeypatch.setattr(
        reward_client, "random", SimpleNamespace(uniform=lambda a, b: retries.append(1) or random_module.uniform(a, b))
    )
    monkeypatch.setenv("GD2PO_REWARD_ATTEMPTS", "6")
    monkeypatch.setenv("GD2PO_REWARD_BACKOFF_S", "0.05")
    process, url, scored, pids, lines = start_workers(tmp_path, 2, sleep=0.02)

    def kill_a_worker(answered_so_far):
        if answered_so_far == 50:
            os.kill(pids[0], signal.SIGKILL)

    try:
        answered = load_through_the_plugins_client(url, 800, kill_a_worker)
        time.sleep(1.5)  # the supervisor notices within 0.5 s and starts another worker
    finally:
        process.terminate()
        assert process.wait(timeout=30) == 0
    assert sorted(b for batch, _ in answered for b in batch) == list(range(800)), "every rollout answered once"
    assert all([float(i) for i in batch] == values for batch, values in answered), "each with its own reward"
    scorers = {int(line.split()[0]) for line in scored.read_text().split("\n")[:-1]}
    assert pids[0] in scorers and len(scorers) >= 2, "the killed worker had scored before, the others after"
    assert retries, "the requests in flight on the killed worker were retried"
    assert any(f"worker {pids[0]} exited with -9: starting another" in line for line in lines), "".join(lines)


@pytest.mark.subprocess
@pytest.mark.parametrize("workers, concurrency", [(1, "8"), (2, "8"), (1, "1")])
def test_sigterm_under_load_finishes_the_requests_in_flight_then_exits(tmp_path, workers, concurrency):
    """8 requests in flight (scored in 8 threads, or one after another on the loop with --max-concurrency 1):
    SIGTERM lets every one finish with its answer, then the server exits 0 and takes no new connection."""
    process, url, _, _, lines = start_workers(tmp_path, workers, sleep=0.3, extra=["--max-concurrency", concurrency])
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(post, url, payload_of([i])) for i in range(8)]
        time.sleep(0.15)  # all 8 are being scored (0.3 s each)
        process.send_signal(signal.SIGTERM)
        results = [future.result() for future in futures]
    assert process.wait(timeout=30) == 0, "".join(lines)
    assert [code for code, _ in results] == [200] * 8
    assert [answer["extra_logs"]["reward/rollout_id"] for _, answer in results] == [[float(i)] for i in range(8)]
    with pytest.raises(OSError):
        urllib.request.urlopen(url.replace("/get_reward", "/health"), timeout=2)


@pytest.mark.subprocess
def test_ray_serve_replicas_behind_the_same_route_lose_nothing(tmp_path, monkeypatch):
    """``--ray-serve --replicas 2`` on a local Ray cluster (CPU): the plugin's client posts 400 rollouts, 16
    requests in flight; every rollout comes back once with its own reward, both replicas scored, SIGTERM removes
    the deployment and exits 0. With --auth-token-file: a request without the token gets a 401, the plugin's client
    sends it."""
    pytest.importorskip("ray.serve")

    monkeypatch.setenv("GD2PO_REWARD_BACKOFF_S", "0.2")
    (tmp_path / "token").write_text("replica-token\n")
    monkeypatch.setenv("GD2PO_REWARD_AUTH_TOKEN_FILE", str(tmp_path / "token"))
    auth = {"Authorization": "Bearer replica-token"}
    scored = tmp_path / "scored.txt"
    reward_file = tmp_path / "echo.py"
    reward_file.write_text(ECHO_REWARDS.format(log=str(scored), sleep=0.01))
    port = free_port()
    command = [sys.executable, "-m", "gd2po_openrlhf.serve_rewards", "--ray-serve", "--replicas", "2"]
    command += ["--reward-file", str(reward_file), "--port", str(port), "--reward-keys", "rollout_id"]
    command += ["--auth-token-file", str(tmp_path / "token")]
    env = {
        key: value for key, value in os.environ.items() if key not in ("RAY_ADDRESS", "GD2PO_REWARD_AUTH_TOKEN_FILE")
    }
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    lines = []
    try:
        for line in process.stderr:
            lines.append(line)
            if " serving " in line:
                break
        assert process.poll() is None and "with 2 Ray Serve replicas" in lines[-1], "".join(lines[-30:])
        threading.Thread(target=lambda: lines.extend(process.stderr), daemon=True).start()
        url = f"http://127.0.0.1:{port}/get_reward"
        answered = load_through_the_plugins_client(url, 400)
        code, answer = post(url, payload_of([0]))
        assert code == 401 and "missing or wrong bearer token" in answer["error"]
        code, answer = post(url.replace("/get_reward", "/nowhere"), {}, headers=auth)
        assert code == 404 and "unknown path /nowhere" in answer["error"]
        code, answer = post(url, {"query": ["a"], "prompts": ["a"], "labels": [float("nan")]}, headers=auth)
        assert code == 400 and answer["error"].startswith("labels[0]: NaN")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=120) == 0, "".join(lines[-30:])
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert sorted(b for batch, _ in answered for b in batch) == list(range(400))
    assert all([float(i) for i in batch] == values for batch, values in answered)
    pids = {line.split()[0] for line in scored.read_text().split("\n")[:-1]}
    assert len(pids) == 2, f"both replicas scored: {pids}"


# ---------------------------------------------------------------------------------------------- hostile clients


def idle_socket(server) -> socket.socket:
    """A connection that sends nothing."""
    return socket.create_connection(server.server_address[:2], timeout=10)


def closed_by_server(sock: socket.socket, within: float) -> bool:
    sock.settimeout(within)
    try:
        return sock.recv(1) == b""
    except socket.timeout:
        return False
    finally:
        sock.close()


def test_connections_that_send_nothing_are_closed_after_the_idle_timeout(serve):
    """Before: aiohttp kept a connection that never sent a byte for its 75 s keep-alive."""
    server = serve(idle_timeout=0.5)
    started = time.monotonic()
    assert closed_by_server(idle_socket(server), within=5)
    assert 0.4 < time.monotonic() - started < 3
    # After an answer too (aiohttp's keep-alive timer, set to the same deadline).
    with idle_socket(server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        assert sock.recv(65536) == b"", "closed after --idle-timeout"


def test_idle_connections_filling_max_connections_make_room_for_a_request(serve):
    """Before: 4 idle connections under --max-connections 4 answered every request 503 for 75 s."""
    server = serve(max_connections=4, idle_timeout=60)
    idle = [idle_socket(server) for _ in range(4)]
    while len(server.connections) < 4:
        time.sleep(0.01)
    time.sleep(1.1)  # idle for over a second: they may be closed to make room
    code, answer = post(server.url, {"query": ["a b"], "prompts": ["a"]})
    assert code == 200 and answer["extra_logs"]["reward/correctness"] == [0.0]
    assert sum(closed_by_server(sock, within=0.5) for sock in idle) == 1, "the one idle longest, only"


def test_request_bodies_held_past_max_buffered_bytes_get_a_503_and_are_let_go(serve):
    """Before: 8 unfinished 59 MB bodies took a worker from 36 MB to 509 MB. Now a worker holds at most
    --max-buffered-bytes of bodies: a body over it is refused (503, retryable) before a byte of it is read."""
    server = serve(
        reward_func=lambda queries, prompts, labels: {"rewards": {"size": [float(len(x)) for x in queries]}},
        max_body_bytes=1_000_000,
        max_buffered_bytes=1_500_000,
    )
    payload = json.dumps({"query": ["x" * 899_000], "prompts": ["p"]}).encode()
    unfinished = idle_socket(server)
    header = f"POST /get_reward HTTP/1.1\r\nHost: x\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
    unfinished.sendall(header + payload[:1000])
    health = server.url.replace("/get_reward", "/health")
    while json.loads(urllib.request.urlopen(health, timeout=10).read())["buffered_bytes"] == 0:
        time.sleep(0.01)
    code, answer = post(server.url, payload)
    assert (
        code == 503 and f"a body of {len(payload)} more would exceed --max-buffered-bytes 1500000" in answer["error"]
    )
    unfinished.close()  # its bytes are let go with its connection
    while json.loads(urllib.request.urlopen(health, timeout=10).read())["buffered_bytes"] != 0:
        time.sleep(0.01)
    code, answer = post(server.url, payload)
    assert code == 200 and answer["extra_logs"]["reward/size"] == [899_000.0]


def test_health_answers_while_the_reward_function_hangs(serve):
    """Before: with --max-concurrency 1 the reward function ran on the event loop and /health waited for it."""
    release = threading.Event()

    def hangs(queries, prompts, labels):
        release.wait(30)
        return {"rewards": {"x": [1.0] * len(queries)}}

    server = serve(reward_func=hangs)
    with ThreadPoolExecutor(1) as pool:
        stuck = pool.submit(post, server.url, {"query": ["a b"], "prompts": ["a"]})
        while server.in_flight < 1:
            time.sleep(0.01)
        time.sleep(0.3)
        health = json.loads(urllib.request.urlopen(server.url.replace("/get_reward", "/health"), timeout=5).read())
        release.set()
        assert stuck.result()[0] == 200
    assert health["in_flight"] == 1 and health["longest_in_flight_s"] >= 0.3


def test_a_bearer_token_is_required_when_the_server_has_one(serve, tmp_path, monkeypatch):
    """401 without the token or with a wrong one (the body not read), 200 with it; the plugin's client sends the
    token of GD2PO_REWARD_AUTH_TOKEN_FILE (set by --gd2po.reward_auth_token_file) and does not retry a 401."""
    from gd2po_openrlhf.integration.reward_client import post_with_retries

    server = serve(auth_token="s3cret-Token_1")
    payload = json.dumps({"query": ["a b"], "prompts": ["a"]}).encode()

    def ask(path="/get_reward", token=None, data=payload):
        headers = {"Content-Type": "application/json", **({"Authorization": token} if token else {})}
        request = urllib.request.Request(server.url.replace("/get_reward", path), data=data, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                return answer.status, dict(answer.headers), json.loads(answer.read())
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers), json.loads(error.read())

    assert ask()[0] == 401 and ask()[1]["WWW-Authenticate"].startswith("Bearer")
    assert ask(token="Bearer wrong")[0] == 401 and ask(token="s3cret-Token_1")[0] == 401
    assert ask(token="Bearer s3cret-Token_1")[0] == 200
    # /health: its status to anyone (a liveness probe), the worker's details with the token only
    status, _, health = ask(path="/health", data=None)
    assert status == 200 and health["status"] == "ok" and set(health) == {"status", "details"}
    assert ask(path="/health", token="Bearer s3cret-Token_1", data=None)[2]["reward_file"] == "test.py"

    monkeypatch.setenv("GD2PO_REWARD_BACKOFF_S", "0.01")
    with pytest.raises(RuntimeError, match="refused the request with HTTP 401: .*missing or wrong bearer token"):
        asyncio.run(post_with_retries(server.url, {"query": ["a b"], "prompts": ["a"]}, 1))
    (tmp_path / "token").write_text("s3cret-Token_1\n")
    monkeypatch.setenv("GD2PO_REWARD_AUTH_TOKEN_FILE", str(tmp_path / "token"))
    answer = asyncio.run(post_with_retries(server.url, {"query": ["a b"], "prompts": ["a"]}, 1))
    assert answer["extra_logs"]["reward/correctness"] == [0.0]
    assert server.served_requests == 2


@pytest.mark.parametrize(
    "host, other_machines",
    [
        ("127.0.0.1", False),
        ("localhost", False),
        ("::1", False),
        ("127.0.0.2", False),
        ("0.0.0.0", True),
        ("::", True),
    ],
)
def test_only_loopback_addresses_count_as_this_machine(host, other_machines):
    from gd2po_openrlhf.serve_rewards import serves_other_machines

    assert serves_other_machines(host) is other_machines


ENDS_ITS_WORKER = """
import os

def reward_func(queries, prompts, labels):
    with open({log!r}, "a") as log:
        log.write(f"{{os.getpid()}} {{len(queries)}}\\n")
    if any("END" in query for query in queries):
        log = None
        os._exit(3)
    return {{"rewards": {{"n": [float(len(q)) for q in queries]}}}}
"""


@pytest.mark.subprocess
@pytest.mark.parametrize("workers", [1, 2])
def test_a_batch_that_ends_its_worker_is_answered_422_naming_the_reward_file(tmp_path, monkeypatch, workers):
    """Before: os._exit in the reward function ended a --workers 1 server for good without a log line, and with
    --workers 2 the client's retries of the batch killed worker after worker. Now: the supervisor restarts the
    worker, the retry gets a 422 naming the reward file and the exit code, the client stops there, and the server
    serves the next batch."""
    from gd2po_openrlhf.integration.reward_client import post_with_retries

    monkeypatch.setenv("GD2PO_REWARD_ATTEMPTS", "12")
    monkeypatch.setenv("GD2PO_REWARD_BACKOFF_S", "0.05")
    scored = tmp_path / "scored.txt"
    reward_file = tmp_path / "ends.py"
    reward_file.write_text(ENDS_ITS_WORKER.format(log=str(scored)))
    port = free_port()
    command = [sys.executable, "-m", "gd2po_openrlhf.serve_rewards", "--reward-file", str(reward_file)]
    process = subprocess.Popen(
        command + ["--port", str(port), "--workers", str(workers)], stderr=subprocess.PIPE, text=True
    )
    lines = []
    for line in process.stderr:
        lines.append(line)
        if " serving " in line:
            break
    threading.Thread(target=lambda: lines.extend(process.stderr), daemon=True).start()
    url = f"http://127.0.0.1:{port}/get_reward"
    try:
        with pytest.raises(RuntimeError) as refused:
            asyncio.run(post_with_retries(url, {"query": ["p END", "p ok"], "prompts": ["p", "p"]}, 2))
        answer = asyncio.run(post_with_retries(url, {"query": ["p ok"], "prompts": ["p"]}, 1))
        assert answer["extra_logs"]["reward/n"] == [4.0]
    finally:
        process.terminate()
        assert process.wait(timeout=30) == 0, "".join(lines)
    assert (
        f'HTTP 422: {{"error": "reward file {reward_file}: its reward_func ended the worker process (exited '
        "with code 3) while scoring this batch" in str(refused.value)
    )
    assert [line.split()[1] for line in scored.read_text().splitlines()] == ["2", "1"], "the batch was scored once"
    assert sum("exited with 3: starting another (1 batch in flight on it)" in line for line in lines) == 1
