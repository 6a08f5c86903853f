"""An HTTP reward server for OpenRLHF's ``--reward.remote_url``, returning every reward dimension.

    python -m gd2po_openrlhf.serve_rewards --reward-file examples/rewards/tool_calling.py --port 5000

then train with ``--reward.remote_url http://HOST:5000/get_reward --gd2po.reward_keys correctness format length``.

Protocol (OpenRLHF's remote reward model): ``POST /get_reward`` (or ``/``) with
``{"query": [str], "prompts": [str], "labels": [any]}`` answers
``{"rewards": [Σ_k r_k], "scores": [Σ_k r_k], "extra_logs": {"reward/<key>": [r_k]}}``, one item per query, in
order: stock estimators train on the sum, ``--advantage_estimator gd2po`` reads the dimensions. The reward
file's ``reward_func(queries, prompts, labels)`` is called once per request with the whole batch.
``GET /health`` answers ``{"status": "ok", ...}``. Malformed bodies get 400 with the reason, oversized ones 413,
other methods 405. A reward function that raises or returns a bad payload (NaN, a missing key, ...) gets 422 with
the cause: the same batch would fail again, so the plugin's client fails at once instead of retrying. Only a
server that is really overloaded answers 503 (all ``--max-concurrency`` slots busy for ``--queue-timeout``
seconds), which clients retry. A client that sends its request slower than ``--read-timeout`` seconds is cut
off. Every request is logged as one access-log line on stderr.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Optional, Sequence
from urllib.parse import urlsplit

from .rewards import DIMENSION_PREFIX, dimensions_from_payload

logger = logging.getLogger("gd2po_openrlhf.serve_rewards")
REWARD_PATHS = ("/get_reward", "")  # compared without the query string and trailing slashes


def load_reward_func(path: str) -> Callable:
    """``reward_func`` of a reward file, as OpenRLHF loads it for ``--reward.remote_url file.py``."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"reward file {path} does not exist")
    spec = importlib.util.spec_from_file_location("gd2po_reward_file", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not callable(getattr(module, "reward_func", None)):
        raise ValueError(f"reward file {path} defines no reward_func(queries, prompts, labels)")
    return module.reward_func


class RewardServer(ThreadingHTTPServer):
    """A thread per connection; ``slots`` bounds how many batches are scored at once."""

    daemon_threads = True
    request_queue_size = 1024  # pending connections the kernel holds before refusing: many rollouts post at once

    def __init__(
        self,
        address,
        reward_func: Callable,
        source: str,
        reward_keys: Optional[Sequence[str]] = None,
        max_concurrency: int = 8,
        max_batch: int = 4096,
        max_body_bytes: int = 64 << 20,
        queue_timeout: float = 60.0,
        read_timeout: float = 30.0,
    ):
        # Every socket read and write of a request waits at most read_timeout: slow or stalled clients give their
        # thread back instead of holding it indefinitely.
        handler = type("BoundedRewardRequestHandler", (RewardRequestHandler,), {"timeout": read_timeout})
        super().__init__(address, handler)
        self.read_timeout = read_timeout
        self.reward_func, self.source, self.reward_keys = reward_func, source, reward_keys
        self.max_batch, self.max_body_bytes, self.queue_timeout = max_batch, max_body_bytes, queue_timeout
        self.max_concurrency = max_concurrency
        self.slots = threading.BoundedSemaphore(max_concurrency)
        self.counter_lock = threading.Lock()
        self.in_flight = self.served_requests = self.served_rollouts = 0

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/get_reward"


class RewardRequestHandler(BaseHTTPRequestHandler):
    server: RewardServer

    def route(self) -> str:
        """The request path without its query string and trailing slashes ("/get_reward/?x=1" → "/get_reward")."""
        return urlsplit(self.path).path.rstrip("/")

    def method_not_allowed(self):
        self.reply(
            405, {"error": f"{self.command} is not supported: GET /health or POST /get_reward"}, allow="GET, POST"
        )

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = method_not_allowed

    def do_HEAD(self):  # a HEAD answer carries no body
        self.send_response(405)
        self.send_header("Allow", "GET, POST")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self):
        if self.route() != "/health":
            return self.reply(404, {"error": f"unknown path {self.path}: GET /health or POST /get_reward"})
        server = self.server
        self.reply(
            200,
            {
                "status": "ok",
                "reward_file": server.source,
                "reward_keys": list(server.reward_keys) if server.reward_keys else None,
                "in_flight": server.in_flight,
                "max_concurrency": server.max_concurrency,
                "served_requests": server.served_requests,
                "served_rollouts": server.served_rollouts,
            },
        )

    def do_POST(self):
        server, self.batch_size = self.server, 0
        if self.route() not in REWARD_PATHS:
            return self.reply(404, {"error": f"unknown path {self.path}: POST /get_reward"})
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            return self.reply(411, {"error": "a Content-Length header is required"})
        if length < 0:
            return self.reply(400, {"error": f"Content-Length must be >= 0, got {length}"})
        if length > server.max_body_bytes:
            return self.reply(
                413, {"error": f"body of {length} bytes exceeds --max-body-bytes {server.max_body_bytes}"}
            )
        try:
            body = json.loads(self.read_body(length))
        except TimeoutError:
            return self.reply(
                408, {"error": f"the body did not arrive within --read-timeout {server.read_timeout:g} s"}
            )
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            return self.reply(400, {"error": f"body is not valid JSON: {error}"})
        except RecursionError:
            return self.reply(400, {"error": "body is nested too deeply to parse"})
        queries, prompts, labels, problem = parse_reward_request(body)
        if problem:
            return self.reply(400, {"error": problem})
        self.batch_size = len(queries)
        if self.batch_size > server.max_batch:
            return self.reply(
                413, {"error": f"batch of {self.batch_size} queries exceeds --max-batch {server.max_batch}"}
            )
        if not server.slots.acquire(timeout=server.queue_timeout):
            return self.reply(
                503,
                {"error": f"busy: all {server.max_concurrency} slots taken for {server.queue_timeout}s"},
                retry_after=1,
            )
        with server.counter_lock:
            server.in_flight += 1
        try:
            output = server.reward_func(queries, prompts, labels)
            dimensions = dimensions_from_payload(
                output, len(queries), server.reward_keys, f"reward file {server.source}"
            )
        except (Exception, SystemExit) as error:  # the trainer must see why, not a dropped connection
            # 422, not 5xx: the reward function fails on this batch deterministically, so a retry cannot help.
            logger.exception("reward_func failed on a batch of %d", len(queries))
            return self.reply(422, {"error": f"{type(error).__name__}: {error}"})
        finally:
            server.slots.release()
            with server.counter_lock:
                server.in_flight -= 1
        totals = [sum(values) for values in zip(*dimensions.values())]
        with server.counter_lock:
            server.served_requests += 1
            server.served_rollouts += len(queries)
        self.reply(
            200,
            {
                "rewards": totals,
                "scores": totals,
                "extra_logs": {DIMENSION_PREFIX + key: values for key, values in dimensions.items()},
            },
        )

    def read_body(self, length: int) -> bytes:
        """The request body, read within read_timeout in all (each read is bounded by the socket timeout too)."""
        deadline, chunks, remaining = time.monotonic() + self.server.read_timeout, [], length
        while remaining > 0:
            if time.monotonic() > deadline:
                raise TimeoutError
            chunk = self.rfile.read1(min(remaining, 1 << 20))
            if not chunk:
                break  # the client closed early: json.loads reports the truncated body
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks)

    def reply(
        self, status: int, payload: dict, retry_after: Optional[int] = None, allow: Optional[str] = None
    ) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if retry_after is not None:
            self.send_header("Retry-After", str(retry_after))
        if allow is not None:
            self.send_header("Allow", allow)
        self.end_headers()
        self.wfile.write(data)
        if status >= 400 and "error" in payload:
            logger.warning("%s %s -> %d: %s", self.command, self.path, status, payload["error"])

    def log_request(self, code="-", size="-"):
        # One access-log line per request, with the batch size and the time since the request line was read.
        elapsed_ms = (time.perf_counter() - getattr(self, "started", time.perf_counter())) * 1000
        logger.info(
            '%s "%s" %s batch=%d %.1fms',
            self.client_address[0],
            self.requestline,
            code,
            getattr(self, "batch_size", 0),
            elapsed_ms,
        )

    def parse_request(self):
        self.started = time.perf_counter()
        return super().parse_request()


def parse_reward_request(body):
    """``(queries, prompts, labels, problem)`` of a request body; ``problem`` is the reason for a 400, or None."""
    if not isinstance(body, dict):
        return (
            None,
            None,
            None,
            f"body must be a JSON object with 'query', 'prompts' and 'labels', got {type(body).__name__}",
        )
    queries, prompts, labels = body.get("query"), body.get("prompts"), body.get("labels")
    if not isinstance(queries, list) or not queries or not all(isinstance(q, str) for q in queries):
        return None, None, None, "'query' must be a non-empty list of strings (prompt + response of each rollout)"
    if not isinstance(prompts, list) or len(prompts) != len(queries) or not all(isinstance(p, str) for p in prompts):
        return None, None, None, f"'prompts' must be a list of {len(queries)} strings, one per query"
    if labels is None:
        labels = [None] * len(queries)
    if not isinstance(labels, list) or len(labels) != len(queries):
        return None, None, None, f"'labels' must be a list of {len(queries)} items, one per query"
    return queries, prompts, labels, None


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m gd2po_openrlhf.serve_rewards", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--reward-file", required=True, help="a .py file defining reward_func(queries, prompts, labels)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (0.0.0.0 to serve other machines)")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument(
        "--reward-keys",
        nargs="+",
        default=None,
        metavar="KEY",
        help="require exactly these dimensions in every answer",
    )
    parser.add_argument("--max-concurrency", type=int, default=8, help="batches scored at once (default 8)")
    parser.add_argument("--max-batch", type=int, default=4096, help="largest accepted batch of queries (413 above)")
    parser.add_argument(
        "--max-body-bytes", type=int, default=64 << 20, help="largest accepted request body (413 above)"
    )
    parser.add_argument(
        "--queue-timeout", type=float, default=60.0, help="seconds a request waits for a slot before a 503"
    )
    parser.add_argument(
        "--read-timeout", type=float, default=30.0, help="seconds a client may take to send its request"
    )
    parser.add_argument("--quiet", action="store_true", help="no access log, errors only")
    args = parser.parse_args(argv)
    for flag in ("max_concurrency", "max_batch", "max_body_bytes"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    for flag in ("queue_timeout", "read_timeout"):
        if not getattr(args, flag) > 0:
            parser.error(f"--{flag.replace('_', '-')} must be > 0 seconds, got {getattr(args, flag)}")
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO, format="%(asctime)s %(levelname)s %(message)s"
    )
    try:
        reward_func = load_reward_func(args.reward_file)
    except (OSError, ValueError) as error:
        parser.error(str(error))
    except Exception as error:  # SyntaxError, ImportError, ... of the user's file
        parser.error(f"reward file {args.reward_file} failed to load: {type(error).__name__}: {error}")
    try:
        server = RewardServer(
            (args.host, args.port),
            reward_func,
            args.reward_file,
            args.reward_keys,
            args.max_concurrency,
            args.max_batch,
            args.max_body_bytes,
            args.queue_timeout,
            args.read_timeout,
        )
    except OSError as error:  # port in use, an unknown host, no permission
        parser.error(f"cannot listen on {args.host}:{args.port}: {error.strerror or error}")
    logger.warning("serving %s on %s (health: GET /health)", args.reward_file, server.url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
