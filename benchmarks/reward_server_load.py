"""Load test and benchmark of the reward server on loopback: throughput, latency, cores used, nothing lost.

    python benchmarks/reward_server_load.py                     # both reward functions, 1 and 2 workers, 5 rounds
    python benchmarks/reward_server_load.py --quick --json out.json       # CI's short mode
    python benchmarks/reward_server_load.py --baseline-src /tmp/old       # also an older checkout's server

Each round runs, in a rotated order, the reward function called directly in this process on the same batches
(one core, no HTTP) and `python -m gd2po_openrlhf.serve_rewards` with `--workers 1` and `--workers 2` (and, with
`--baseline-src`, the server of that source tree, 1 worker) against one asyncio load client (aiohttp, keep-alive,
a fixed number of requests in flight). Two reward files, each with a dimension that identifies its rollout
(`rollout_id` echoes the id written into its prompt), so a rollout that comes back with another rollout's
rewards, twice, or not at all is detected:
- `rules`: the tool-calling rules (`examples/rewards/tool_calling.py`, correctness), 64 requests in flight;
- `cpu`: about 2 ms of pure-Python work per rollout (the GIL holds it to one core per process), 16 in flight.
Reported per reward function and server: rollouts/s, p50 and p99 latency, cores used by the server's processes
(their CPU time over the wall time), and every ratio to the first server listed, with its spread over rounds.
"""

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
REWARD_FILES = {
    "rules": """
import importlib.util
_spec = importlib.util.spec_from_file_location("tool_calling", {tool_file!r})
_rules = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_rules)

def reward_func(queries, prompts, labels):
    ids = [float(p.split()[1]) for p in prompts]
    correctness = [_rules.score(q[len(p):], l)["correctness"] for q, p, l in zip(queries, prompts, labels)]
    return {{"rewards": {{"rollout_id": ids, "tool_correctness": correctness}}}}
""",
    "cpu": """
def _work(seed):
    x = seed
    for i in range(30000):  # about 2 ms of Python bytecode: holds the GIL throughout
        x = (x * 31 + i) % 1000003
    return x / 1000003

def reward_func(queries, prompts, labels):
    ids = [float(p.split()[1]) for p in prompts]
    return {{"rewards": {{"rollout_id": ids, "work": [_work(int(i)) for i in ids]}}}}
""",
}
IN_FLIGHT = {"rules": 64, "cpu": 16}
GROUND_TRUTH = '<think>x</think>\n<tool_call>\n{"name": "f", "parameters": {"a": 1, "b": 2}}\n</tool_call>'


def response_of(rollout_id):
    call = {"name": "f", "parameters": {"a": 1, "b": rollout_id % 3}}
    return f"<think>t</think>\n<tool_call>\n{json.dumps(call)}\n</tool_call>"


def make_payloads(requests, max_batch, seed=0):
    rng, payloads, next_id = random.Random(seed), [], 0
    for _ in range(requests):
        ids = list(range(next_id, next_id + rng.randint(1, max_batch)))
        next_id += len(ids)
        payloads.append(
            {
                "query": [f"rollout {i} :" + response_of(i) for i in ids],
                "prompts": [f"rollout {i} :" for i in ids],
                "labels": [GROUND_TRUTH] * len(ids),
            }
        )
    return payloads, next_id


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


async def load(url, payloads, in_flight):
    """Every payload posted once, ``in_flight`` at a time over keep-alive connections: [(seconds, body)]."""
    import aiohttp

    results = [None] * len(payloads)
    queue = list(enumerate(payloads))[::-1]
    connector = aiohttp.TCPConnector(limit=in_flight)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:

        async def client():
            while queue:
                index, payload = queue.pop()
                started = time.perf_counter()
                async with session.post(url, json=payload) as answer:
                    body = await answer.json()
                    if answer.status != 200:
                        raise RuntimeError(f"request {index}: {answer.status} {body}")
                results[index] = (time.perf_counter() - started, body)

        await asyncio.gather(*(client() for _ in range(in_flight)))
    return results


def start_server(reward_file, keys, workers, source=None):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "gd2po_openrlhf.serve_rewards", "--reward-file", str(reward_file)]
    command += ["--port", str(port), "--reward-keys", *keys, "--quiet"]
    if workers > 1:
        command += ["--workers", str(workers)]
    env = dict(os.environ)
    if source:  # an older checkout's package first on the path
        env["PYTHONPATH"] = os.pathsep.join(
            [str(source)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        )
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    # Ready when it says it serves (with several workers, after all of them have imported the file); the rest of
    # its stderr is drained so that it never blocks on a full pipe.
    lines = []
    for line in process.stderr:
        lines.append(line)
        if " serving " in line:
            break
    else:
        raise RuntimeError(f"the server did not start: {''.join(lines)[-2000:]}")
    threading.Thread(target=process.stderr.read, daemon=True).start()
    return process, f"http://127.0.0.1:{port}"


def cpu_seconds(process):
    """CPU time of a process and its children (the workers)."""
    tree = psutil.Process(process.pid)
    total = 0.0
    for member in [tree] + tree.children(recursive=True):
        try:
            times = member.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def run_server(reward_file, keys, workers, source, payloads, in_flight, expected):
    process, url = start_server(reward_file, keys, workers, source)
    try:
        asyncio.run(load(url + "/get_reward", payloads[: max(1, len(payloads) // 20)], in_flight))  # warm-up
        cpu_before, started = cpu_seconds(process), time.perf_counter()
        results = asyncio.run(load(url + "/get_reward", payloads, in_flight))
        wall, cpu = time.perf_counter() - started, cpu_seconds(process) - cpu_before
    finally:
        process.terminate()
        process.wait(timeout=30)
    rollouts = sum(len(p["query"]) for p in payloads)
    returned = [int(v) for _, body in results for v in body["extra_logs"]["reward/rollout_id"]]
    wrong = sum(
        [body["extra_logs"][f"reward/{key}"] for key in keys] != [want["rewards"][key] for key in keys]
        for (_, body), want in zip(results, expected)
    )
    latencies = [seconds * 1000 for seconds, _ in results]
    return {
        "rollouts_per_s": rollouts / wall,
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "cores": cpu / wall,
        "lost": len(set(range(rollouts)) - set(returned)),
        "duplicated": len(returned) - len(set(returned)),
        "wrong": wrong,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=4000, help="per round, for the rules (cpu: a quarter)")
    parser.add_argument("--max-batch", type=int, default=4)
    parser.add_argument("--rewards", nargs="+", default=list(REWARD_FILES), choices=list(REWARD_FILES))
    parser.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--baseline-src", default=None, help="a source tree whose server runs as `baseline`")
    parser.add_argument("--quick", action="store_true", help="1 round of 300 requests (CI)")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.requests = 1, 300

    servers = ([("baseline", 1, args.baseline_src)] if args.baseline_src else []) + [
        (f"workers={n}", n, None) for n in args.workers
    ]
    report = {"rounds": args.rounds, "results": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for reward in args.rewards:
            reward_file = Path(tmp) / f"{reward}_rewards.py"
            reward_file.write_text(
                REWARD_FILES[reward].format(tool_file=str(ROOT / "examples/rewards/tool_calling.py"))
            )
            namespace = {}
            exec(compile(reward_file.read_text(), str(reward_file), "exec"), namespace)
            requests = args.requests if reward == "rules" else max(20, args.requests // 4)
            payloads, rollouts = make_payloads(requests, args.max_batch)
            call = namespace["reward_func"]
            expected = [call(p["query"], p["prompts"], p["labels"]) for p in payloads]
            keys = list(expected[0]["rewards"])
            runs = {name: [] for name in ["direct"] + [name for name, _, _ in servers]}
            order = list(runs)
            print(f"{reward}: {requests} requests ({rollouts} rollouts), {IN_FLIGHT[reward]} in flight", flush=True)
            for round_index in range(args.rounds):
                for name in order[round_index % len(order) :] + order[: round_index % len(order)]:
                    if name == "direct":
                        started = time.perf_counter()
                        for p in payloads:
                            call(p["query"], p["prompts"], p["labels"])
                        runs[name].append({"rollouts_per_s": rollouts / (time.perf_counter() - started), "cores": 1.0})
                        continue
                    _, workers, source = next(server for server in servers if server[0] == name)
                    runs[name].append(
                        run_server(reward_file, keys, workers, source, payloads, IN_FLIGHT[reward], expected)
                    )
                    last = runs[name][-1]
                    print(
                        f"  round {round_index + 1} {name}: {last['rollouts_per_s']:.0f} rollouts/s, "
                        f"p99 {last['p99_ms']:.1f} ms, {last['cores']:.2f} cores",
                        flush=True,
                    )
            reference = servers[0][0]
            summary = {}
            for name, values in runs.items():
                row = {
                    metric: statistics.median(v[metric] for v in values)
                    for metric in values[0]
                    if metric not in ("lost", "duplicated", "wrong")
                }
                if name != "direct":
                    row.update({fault: sum(v[fault] for v in values) for fault in ("lost", "duplicated", "wrong")})
                for metric in ("rollouts_per_s", "p99_ms"):
                    if metric in values[0] and name != reference:
                        ratios = [v[metric] / r[metric] for v, r in zip(values, runs[reference])]
                        row[f"{metric}_vs_{reference}"] = {
                            "median": statistics.median(ratios),
                            "min": min(ratios),
                            "max": max(ratios),
                        }
                summary[name] = row
            report["results"][reward] = summary
            for name, row in summary.items():
                ratio = row.get(f"rollouts_per_s_vs_{reference}")
                tail = (
                    f", x{ratio['median']:.2f} [{ratio['min']:.2f}, {ratio['max']:.2f}] vs {reference}"
                    if ratio
                    else ""
                )
                p99 = f", p99 {row['p99_ms']:.1f} ms" if "p99_ms" in row else ""
                print(f"  {name}: {row['rollouts_per_s']:.0f} rollouts/s{p99}, {row['cores']:.2f} cores{tail}")
    print(json.dumps(report, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    faults = [
        row[fault]
        for summary in report["results"].values()
        for name, row in summary.items()
        if name != "direct"
        for fault in ("lost", "duplicated", "wrong")
    ]
    sys.exit(0 if not any(faults) else 1)


if __name__ == "__main__":
    main()
