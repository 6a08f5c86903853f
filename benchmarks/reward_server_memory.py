"""What unfinished request bodies cost a reward server worker: resident memory while clients hold them, and after.

    python benchmarks/reward_server_memory.py                           # 8 bodies of 59 MB, default limits
    python benchmarks/reward_server_memory.py --bodies 4 --mb 10 --extra --max-buffered-bytes 50000000

Starts ``python -m gd2po_openrlhf.serve_rewards --workers 1`` on loopback, then opens ``--bodies`` connections that
each send a request's headers and all but one byte of a ``--mb`` MB body, and never the last byte. Reports the
worker's resident memory (``/proc``, via psutil) before, while the bodies are held, and 5 s after the clients
closed their connections; how many bodies the worker took on and how many it answered 503 (its
``--max-buffered-bytes``); and whether it still answers a request. The same numbers for another source tree's
server with ``--baseline-src DIR`` (e.g. a checkout of an older commit), run first in the same process.
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
REWARD_FILE = "def reward_func(queries, prompts, labels):\n    return {'rewards': {'n': [1.0] * len(queries)}}\n"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def measure(source: Path, bodies: int, megabytes: float, extra) -> dict:
    folder = Path(tempfile.mkdtemp())
    (folder / "rules.py").write_text(REWARD_FILE)
    port = free_port()
    command = [sys.executable, "-m", "gd2po_openrlhf.serve_rewards", "--reward-file", str(folder / "rules.py")]
    env = {**os.environ, "PYTHONPATH": str(source)}
    server = subprocess.Popen(
        command + ["--port", str(port), "--quiet", *extra], env=env, cwd=source, stderr=subprocess.PIPE, text=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                health = json.loads(urllib.request.urlopen(url + "/health", timeout=5).read())
                break
            except OSError:
                time.sleep(0.05)
        worker = psutil.Process(health["worker_pid"])
        before = worker.memory_info().rss
        length = int(megabytes * 1e6)
        header = f"POST /get_reward HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n".encode()
        chunk, connections, refused = b"x" * (1 << 20), [], 0
        for _ in range(bodies):
            sock = socket.create_connection(("127.0.0.1", port), timeout=30)
            sock.sendall(header)
            sent = 0
            try:
                while sent < length - 1:
                    sent += sock.send(chunk[: min(len(chunk), length - 1 - sent)])
            except OSError:  # the server answered (a 503) and closed the connection
                refused += 1
                sock.close()
                continue
            sock.settimeout(0.5)
            try:
                answer = sock.recv(200)
                refused += answer.startswith(b"HTTP/1.1 503")
                sock.close()
            except socket.timeout:  # no answer: the worker holds this body
                connections.append(sock)
        time.sleep(1.0)
        held = worker.memory_info().rss
        for sock in connections:
            sock.close()
        time.sleep(5.0)
        after = worker.memory_info().rss
        request = urllib.request.Request(
            url + "/get_reward",
            data=json.dumps({"query": ["a"], "prompts": ["a"]}).encode(),
            headers={"Content-Type": "application/json"},
        )
        answers = urllib.request.urlopen(request, timeout=30).status == 200
    finally:
        server.terminate()
        server.wait(timeout=60)
    return {
        "bodies": bodies,
        "mb_each": megabytes,
        "held_by_worker": len(connections),
        "refused_503": refused,
        "rss_mb_before": round(before / 1e6, 1),
        "rss_mb_holding": round(held / 1e6, 1),
        "rss_mb_5s_after_close": round(after / 1e6, 1),
        "still_answers": answers,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bodies", type=int, default=8)
    parser.add_argument("--mb", type=float, default=59.0)
    parser.add_argument("--baseline-src", type=Path, default=None, help="another source tree's server, run first")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="flags for both servers")
    args = parser.parse_args()
    rows = {}
    for name, source in (("baseline", args.baseline_src), ("this tree", ROOT)):
        if source is not None:
            rows[name] = measure(source.resolve(), args.bodies, args.mb, args.extra)
            print(f"{name:10} {json.dumps(rows[name])}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
