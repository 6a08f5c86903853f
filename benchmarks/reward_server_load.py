"""Load test of the reward server on loopback: many concurrent clients, no lost or duplicated rollouts.

    python benchmarks/reward_server_load.py                       # 4000 requests from 64 clients
    python benchmarks/reward_server_load.py --requests 200 --clients 8 --json out.json

Starts `python -m gd2po_openrlhf.serve_rewards` as its own process (loopback only) with a reward file whose
dimensions identify each rollout: `rollout_id` echoes the id written into its query and `tool_correctness`
is the tool-calling correctness of its response, so a rollout that comes back with another rollout's
rewards, twice, or not at all is detected. Every request carries 1 to --max-batch rollouts.
Reports latency percentiles, throughput, and the ratio of the served rate to the same reward function
called in this process on the same batches (the HTTP overhead).
"""

import argparse
import json
import random
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REWARD_FILE = """
import importlib.util
_spec = importlib.util.spec_from_file_location("tool_calling", {tool_file!r})
_rules = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_rules)

def reward_func(queries, prompts, labels):
    ids = [float(p.split()[1]) for p in prompts]
    correctness = [_rules.score(q[len(p):], l)["correctness"] for q, p, l in zip(queries, prompts, labels)]
    return {{"rewards": {{"rollout_id": ids, "tool_correctness": correctness}}}}
"""
GROUND_TRUTH = '<think>x</think>\n<tool_call>\n{"name": "f", "parameters": {"a": 1, "b": 2}}\n</tool_call>'


def response_of(rollout_id):
    call = {"name": "f", "parameters": {"a": 1, "b": rollout_id % 3}}
    return f"<think>t</think>\n<tool_call>\n{json.dumps(call)}\n</tool_call>"


def post(url, payload):
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
    )
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=120) as answer:
        body = json.loads(answer.read())
    return time.perf_counter() - started, body


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--max-batch", type=int, default=4)
    parser.add_argument("--server-concurrency", type=int, default=8)
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)

    rng = random.Random(0)
    batches, next_id = [], 0
    for _ in range(args.requests):
        size = rng.randint(1, args.max_batch)
        batches.append(list(range(next_id, next_id + size)))
        next_id += size
    payloads = [
        {
            "query": [f"rollout {i} :" + response_of(i) for i in batch],
            "prompts": [f"rollout {i} :" for i in batch],
            "labels": [GROUND_TRUTH] * len(batch),
        }
        for batch in batches
    ]

    with tempfile.TemporaryDirectory() as tmp:
        reward_file = Path(tmp) / "load_rewards.py"
        reward_file.write_text(REWARD_FILE.format(tool_file=str(ROOT / "examples" / "rewards" / "tool_calling.py")))
        namespace = {}
        exec(compile(reward_file.read_text(), str(reward_file), "exec"), namespace)
        started = time.perf_counter()
        expected = [namespace["reward_func"](p["query"], p["prompts"], p["labels"]) for p in payloads]
        direct_seconds = time.perf_counter() - started

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gd2po_openrlhf.serve_rewards",
                "--reward-file",
                str(reward_file),
                "--port",
                str(port),
                "--max-concurrency",
                str(args.server_concurrency),
                "--reward-keys",
                "rollout_id",
                "tool_correctness",
                "--quiet",
            ],
            stderr=subprocess.PIPE,
            text=True,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            for _ in range(400):
                try:
                    urllib.request.urlopen(url + "/health", timeout=1).read()
                    break
                except OSError:
                    time.sleep(0.05)
            print(
                f"{args.requests} requests ({next_id} rollouts) from {args.clients} clients to {url}/get_reward ...",
                flush=True,
            )
            started = time.perf_counter()
            with ThreadPoolExecutor(args.clients) as pool:
                results = list(pool.map(lambda p: post(url + "/get_reward", p), payloads))
            served_seconds = time.perf_counter() - started
            health = json.loads(urllib.request.urlopen(url + "/health", timeout=5).read())
        finally:
            server.terminate()
            server.wait(timeout=10)

    returned_ids = [int(v) for _, body in results for v in body["extra_logs"]["reward/rollout_id"]]
    mismatched = sum(
        body["extra_logs"]["reward/tool_correctness"] != exp["rewards"]["tool_correctness"]
        or body["extra_logs"]["reward/rollout_id"] != exp["rewards"]["rollout_id"]
        for (_, body), exp in zip(results, expected)
    )
    latencies = [seconds * 1000 for seconds, _ in results]
    report = {
        "requests": args.requests,
        "rollouts": next_id,
        "clients": args.clients,
        "lost_rollouts": len(set(range(next_id)) - set(returned_ids)),
        "duplicated_rollouts": len(returned_ids) - len(set(returned_ids)),
        "requests_with_wrong_rewards": mismatched,
        "server_counted_rollouts": health["served_rollouts"],
        "latency_ms": {f"p{q}": round(percentile(latencies, q), 2) for q in (50, 90, 99)}
        | {"max": round(max(latencies), 2)},
        "served_rollouts_per_s": round(next_id / served_seconds, 1),
        "direct_rollouts_per_s": round(next_id / direct_seconds, 1),
        "served_over_direct_rate": round(direct_seconds / served_seconds, 4),
    }
    print(json.dumps(report, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    ok = report["lost_rollouts"] == report["duplicated_rollouts"] == report["requests_with_wrong_rewards"] == 0
    sys.exit(0 if ok and health["served_rollouts"] == next_id else 1)


if __name__ == "__main__":
    main()
