"""An HTTP reward server for OpenRLHF's ``--reward.remote_url``, returning every reward dimension.

    python -m gd2po_openrlhf.serve_rewards --reward-file examples/rewards/tool_calling.py --port 5000 --workers 2

then train with ``--reward.remote_url http://HOST:5000/get_reward --gd2po.reward_keys correctness format length``.

Protocol (OpenRLHF's remote reward model): ``POST /get_reward`` (or ``/``) with
``{"query": [str], "prompts": [str], "labels": [any]}`` answers
``{"rewards": [Σ_k r_k], "scores": [Σ_k r_k], "extra_logs": {"reward/<key>": [r_k]}}``, one item per query, in
order: stock estimators train on the sum, ``--advantage_estimator gd2po`` reads the dimensions. The reward
file's ``reward_func(queries, prompts, labels)`` is called once per request with the whole batch: on the worker's
event loop (CPU-bound Python runs one batch at a time per process anyway), in ``--max-concurrency`` threads when
in ``--max-concurrency`` threads (one by default: the event loop stays free to answer ``/health`` and to read
other requests while a batch is scored), or awaited when it is ``async def``.
``GET /health`` answers ``{"status": "ok", ...}``. Malformed bodies get 400 with the reason (a number that is not
a finite float names its field), oversized ones 413, other methods 405. A reward function that raises (anything,
``KeyboardInterrupt`` and ``SystemExit`` included) or returns a bad payload (NaN, a missing key, ...) gets 422 with
the cause: the same batch would fail again, so the plugin's client fails at once instead of retrying. A reward
function that ends its worker process (``os._exit``, a crash in a C extension) loses that connection; the
supervisor starts another worker and answers the batch's retry with a 422 naming the reward file and the exit
code, instead of letting it kill worker after worker. Only a server that is really overloaded answers 503 (all
slots busy for ``--queue-timeout`` seconds, ``--max-connections`` open and none idle, or ``--max-buffered-bytes``
of request bodies held), which clients retry. A connection that sends nothing for ``--idle-timeout`` seconds is
closed, and an idle one makes room when ``--max-connections`` are open; a request whose headers and body do not all
arrive within ``--read-timeout`` seconds of its first byte gets 408 and is closed, however slowly the client
trickles. With a bearer token (``--auth-token-file``, or GD2PO_REWARD_AUTH_TOKEN_FILE / GD2PO_REWARD_AUTH_TOKEN)
every request without ``Authorization: Bearer <token>`` gets 401 before its body is read (``/health`` answers
only its status); binding to an address
other than loopback without one is refused unless ``--allow-unauthenticated``. SIGTERM stops accepting, lets
requests in flight finish (at most ``--shutdown-timeout`` seconds), then exits. Every request is logged as one
access-log line on stderr.

Built on aiohttp's low-level server (``aiohttp.web.Server``): HTTP/1.1 parsing, keep-alive and graceful
connection shutdown are aiohttp's; aiohttp is already one of OpenRLHF's requirements. ``--workers N`` runs N
processes accepting on one port, so CPU-bound reward functions use N cores (the GIL holds one process to one),
under a supervisor that restarts a worker that dies (one worker too). ``--ray-serve`` serves the same route as a
Ray Serve deployment instead (``gd2po_openrlhf.serve_rewards_ray``).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import hmac
import importlib.util
import inspect
import ipaddress
import json
import logging
import math
import multiprocessing
import multiprocessing.connection
import os
import queue
import shutil
import signal
import socket
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence, Tuple

from .reward_check import load_reward_func
from .rewards import (
    AUTH_TOKEN_FILE_VARIABLE,
    AUTH_TOKEN_VARIABLE,
    DIMENSION_PREFIX,
    dimensions_from_payload,
    reward_auth_token,
)

try:
    from aiohttp import web
    from aiohttp.abc import AbstractAccessLogger
except ImportError:  # a reward host installed with --no-deps and without aiohttp: main() says what to install
    web = AbstractAccessLogger = None

logger = logging.getLogger("gd2po_openrlhf.serve_rewards")
REWARD_PATHS = ("/get_reward", "")  # compared without the query string and trailing slashes
ALLOWED = "GET, POST"
HASH_BYTES = 32  # of a body's SHA-256, in hex: how a retried batch is known again


@dataclass(frozen=True)
class ServerLimits:
    """What one worker accepts; every field is a command-line flag of the same name."""

    reward_keys: Optional[Tuple[str, ...]] = None
    max_concurrency: int = 1
    max_batch: int = 4096
    max_body_bytes: int = 64 << 20
    queue_timeout: float = 60.0
    read_timeout: float = 30.0
    max_connections: int = 1024
    shutdown_timeout: float = 30.0
    idle_timeout: float = 15.0
    max_buffered_bytes: int = 256 << 20
    auth_token: Optional[str] = field(default=None, repr=False)  # never in a log line


# ---------------------------------------------------------------------------------------------- the protocol


class _Unrepresentable:
    """A JSON number that Python cannot turn into a finite float (recorded while parsing, located afterwards)."""

    def __init__(self, text: str):
        self.text = text


def parse_json_body(data: bytes):
    """The decoded body; ValueError naming the field of a number that is not a finite float
    (``labels[3]: 1e400``, a 5,000-digit integer, ``NaN``), or the parser's reason."""
    found: List[_Unrepresentable] = []

    def record(text: str) -> _Unrepresentable:
        found.append(_Unrepresentable(text))
        return found[-1]

    def parse_int(text: str):
        # Python refuses integers over 4,300 digits; over 309 digits none fits a float anyway.
        if len(text) > 320:
            return record(text)
        value = int(text)
        try:
            float(value)
        except OverflowError:
            return record(text)
        return value

    def parse_float(text: str):
        value = float(text)
        return value if math.isfinite(value) else record(text)

    try:
        body = json.loads(data, parse_int=parse_int, parse_float=parse_float, parse_constant=record)
    except RecursionError:
        raise ValueError("body is nested too deeply to parse") from None
    except ValueError as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ValueError(f"body is not valid JSON: {error}") from None
    if found:  # rare: only now walk the body to name the field
        raise ValueError(f"{_field_of(body, found[0]) or 'a field'}: {found[0].text[:40]} is not a finite number")
    return body


def _field_of(value, target, path: str = "") -> Optional[str]:
    """Where ``target`` sits in ``value``: ``labels[3]``, ``labels[0].answer``."""
    if value is target:
        return path
    if isinstance(value, dict):
        children = ((f"{path}.{key}" if path else key, item) for key, item in value.items())
    elif isinstance(value, list):
        children = ((f"{path}[{index}]", item) for index, item in enumerate(value))
    else:
        return None
    for child_path, item in children:
        found = _field_of(item, target, child_path)
        if found is not None:
            return found
    return None


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


def route_request(method: str, path: str, path_qs: str, content_length: Optional[int], limits: ServerLimits):
    """``"health"``, ``"score"`` (a POST to the reward path whose body may be read), or ``(status, answer)``."""
    route = path.rstrip("/")
    if method == "GET":
        if route in REWARD_PATHS:  # the reward path exists, for POST only
            return 405, {"error": f"GET is not supported on {path_qs}: POST {{query, prompts, labels}} there"}
        if route != "/health":
            return 404, {"error": f"unknown path {path_qs}: GET /health or POST /get_reward"}
        return "health"
    if method != "POST":
        return 405, {"error": f"{method} is not supported: GET /health or POST /get_reward"}
    if route not in REWARD_PATHS:
        return 404, {"error": f"unknown path {path_qs}: POST /get_reward"}
    if content_length is None:
        return 411, {"error": "a Content-Length header is required"}
    if content_length > limits.max_body_bytes:
        return 413, {"error": f"body of {content_length} bytes exceeds --max-body-bytes {limits.max_body_bytes}"}
    return "score"


def check_body(data: bytes, limits: ServerLimits):
    """``((queries, prompts, labels), None)`` for a valid request body, else ``(None, (status, answer))``."""
    try:
        queries, prompts, labels, problem = parse_reward_request(parse_json_body(data))
    except ValueError as error:
        return None, (400, {"error": str(error)})
    if problem:
        return None, (400, {"error": problem})
    if len(queries) > limits.max_batch:
        return None, (413, {"error": f"batch of {len(queries)} queries exceeds --max-batch {limits.max_batch}"})
    return (queries, prompts, labels), None


def authorized(header: Optional[str], token: Optional[str]) -> bool:
    """Whether an ``Authorization`` header carries ``Bearer <token>`` (always, when the server has no token);
    compared in constant time."""
    return token is None or (header is not None and hmac.compare_digest(header.encode(), f"Bearer {token}".encode()))


HEALTH_WITHOUT_TOKEN = {"status": "ok", "details": "send the bearer token for the worker's details"}
UNAUTHORIZED = (
    "missing or wrong bearer token: this reward server needs 'Authorization: Bearer <token>' (the trainer sends the "
    "token of --gd2po.reward_auth_token_file)"
)


async def score_batch(reward_func: Callable, batch, limits: ServerLimits, source: str, pool=None):
    """``(200, answer)``, or ``(422, error)`` when the reward function raises or returns a bad payload.

    An ``async def`` reward function is awaited; a plain one runs in ``pool``'s threads, or without a pool right
    here on the event loop (Ray Serve's replicas)."""
    queries, prompts, labels = batch
    try:
        if inspect.iscoroutinefunction(reward_func):
            output = await reward_func(queries, prompts, labels)
        elif pool is None:
            output = reward_func(queries, prompts, labels)
        else:
            output = await asyncio.get_running_loop().run_in_executor(pool, reward_func, queries, prompts, labels)
        dimensions = dimensions_from_payload(output, len(queries), limits.reward_keys, f"reward file {source}")
    except asyncio.CancelledError:  # the server is stopping, not the reward function failing
        raise
    except BaseException as error:  # KeyboardInterrupt, SystemExit too: the trainer must see why, not a dead worker
        # 422, not 5xx: the reward function fails on this batch deterministically, so a retry cannot help.
        logger.exception("reward_func failed on a batch of %d", len(queries))
        return 422, {"error": f"{type(error).__name__}: {error}"}
    totals = [sum(values) for values in zip(*dimensions.values())]
    return 200, {
        "rewards": totals,
        "scores": totals,
        "extra_logs": {DIMENSION_PREFIX + key: values for key, values in dimensions.items()},
    }


# ---------------------------------------------------------------------------------------------- the server


class _OneLine(logging.Filter):
    """aiohttp logs a malformed request (a client's mistake, answered 400) with the parser's traceback: keep the
    message, drop the traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info:
            record.msg = f"{record.getMessage()}: {record.exc_info[1]!s:.300}".replace("\n", " ")
            record.args, record.exc_info, record.exc_text = (), None, None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


_protocol_errors = logging.getLogger("gd2po_openrlhf.serve_rewards.http")
_protocol_errors.addFilter(_OneLine())


class _ConnectionGuard(asyncio.Protocol):
    """Wraps aiohttp's protocol of one connection with the deadlines aiohttp does not keep: a connection that sends
    nothing for ``idle_timeout`` seconds is closed (aiohttp times idle keep-alive connections after a response, not
    a fresh one), a request whose headers have not all arrived ``read_timeout`` seconds after its first byte gets a
    408 (a client trickling a byte at a time). Over ``max_connections`` the connection idle longest is closed to
    make room, or, when none is idle, the new one is refused with a 503. The body's deadline is the handler's."""

    def __init__(self, server: "RewardServer"):
        self.server, self.inner = server, server.http_server()
        self.transport = self.timer = None
        self.request_started = 0.0
        self.idle_since: Optional[float] = None  # between requests: since when; None while a request is under way

    def connection_made(self, transport):
        self.transport, limits, connections = transport, self.server.limits, self.server.connections
        if len(connections) >= limits.max_connections:
            # Idle for a second at least: a connection whose answer is still being written is never idle that long.
            idle = [guard for guard in connections.values() if guard.idle_since is not None]
            oldest = min(idle, key=lambda guard: guard.idle_since, default=None)
            if oldest is not None and time.monotonic() - oldest.idle_since >= 1.0:
                logger.warning("--max-connections %d open: closed the one idle longest", limits.max_connections)
                oldest.close_idle()
            else:
                logger.warning("refused a connection: --max-connections %d open, none idle", limits.max_connections)
                transport.write(_raw_answer(503, "too many open connections (--max-connections)", retry_after=1))
                transport.close()
                self.inner = None
                return
        connections[transport] = self
        self.inner.connection_made(transport)
        self.request_done()

    def request_done(self):
        """Between requests: the idle deadline runs (aiohttp's keep-alive timer, set to the same, runs too)."""
        if self.transport.is_closing():
            return
        self.idle_since = time.monotonic()
        self.timer = asyncio.get_running_loop().call_later(self.server.limits.idle_timeout, self.close_idle)

    def close_idle(self):
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        logger.info("closed a connection idle for %.1f s", time.monotonic() - self.idle_since)
        self.transport.close()

    def data_received(self, data):
        if self.inner is None:
            return
        if self.idle_since is not None:  # the first byte of a request: the idle deadline gives way to the read one
            self.idle_since = None
            if self.timer is not None:
                self.timer.cancel()
            self.request_started = time.monotonic()
            self.timer = asyncio.get_running_loop().call_later(self.server.limits.read_timeout, self.expire)
        self.inner.data_received(data)

    def headers_arrived(self) -> float:
        """The handler has the request: cancel the header deadline; the seconds left for the body."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        return self.server.limits.read_timeout - (time.monotonic() - self.request_started)

    def expire(self):
        self.timer = None
        logger.warning("closed a connection whose request headers took over --read-timeout")
        self.transport.write(
            _raw_answer(408, f"the request did not arrive within {self.server.limits.read_timeout:g} s")
        )
        self.transport.close()

    def eof_received(self):
        return self.inner.eof_received() if self.inner is not None else None

    def connection_lost(self, exc):
        if self.timer is not None:
            self.timer.cancel()
        if self.inner is not None:
            self.server.connections.pop(self.transport, None)
            self.inner.connection_lost(exc)

    def pause_writing(self):
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self):
        if self.inner is not None:
            self.inner.resume_writing()


def _raw_answer(status: int, error: str, retry_after: Optional[int] = None) -> bytes:
    """A complete HTTP/1.1 answer written straight to a transport (no request object to answer through)."""
    from http import HTTPStatus

    body = json.dumps({"error": error}).encode()
    headers = f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\nContent-Type: application/json\r\n"
    headers += f"Content-Length: {len(body)}\r\nConnection: close\r\n"
    headers += f"Retry-After: {retry_after}\r\n" if retry_after is not None else ""
    return headers.encode() + b"\r\n" + body


class RewardServer:
    """One worker: aiohttp's HTTP server on a listening socket, scoring batches with ``reward_func``.

    ``serve(sock, stop)`` runs it in the caller's event loop until ``stop`` is set (the command line);
    ``start_in_thread()`` runs it in a thread of its own on a free port (tests, notebooks). Under the supervisor,
    ``scoring`` is memory shared with it, one slot of ``HASH_BYTES`` per ``--max-concurrency`` slot, holding the
    body hash of each batch being scored (what the supervisor reads when the worker dies), and ``poison`` the
    folder where the supervisor leaves ``poison-<body hash>`` for a batch that ended a worker."""

    def __init__(
        self,
        reward_func: Callable,
        source: str,
        limits: ServerLimits = ServerLimits(),
        poison: Optional[str] = None,
        scoring=None,
    ):
        self.reward_func, self.source, self.limits = reward_func, source, limits
        self.poison, self.scoring, self.free_slots = poison, scoring, list(range(limits.max_concurrency))
        self.connections = {}
        self.in_flight = self.served_requests = self.served_rollouts = self.buffered_bytes = 0
        self.scoring_since = {}  # request id -> when its batch began to be scored: /health's longest_in_flight_s
        self.url = self.server_address = None

    async def serve(self, sock: socket.socket, stop: asyncio.Event) -> None:
        limits = self.limits
        self.slots = asyncio.Semaphore(limits.max_concurrency)
        # Threads even for one slot: a reward function that hangs or computes for minutes must not stop the loop
        # from answering /health, reading other requests and keeping the deadlines.
        self.pool = ThreadPoolExecutor(limits.max_concurrency, thread_name_prefix="reward_func")
        self.http_server = web.Server(
            self.handle,
            access_log_class=AccessLog,
            access_log=logger,
            logger=_protocol_errors,
            keepalive_timeout=limits.idle_timeout,  # after a response; the guard's deadlines do the rest
            max_field_size=1 << 16,
            # After a 408 or 413 the unread rest of the body is drained for at most 1 s (so that the client can
            # read the answer before the close), not aiohttp's 10 s.
            lingering_time=1.0,
        )
        host, port = sock.getsockname()[:2]
        self.server_address, self.url = (host, port), f"http://{host}:{port}/get_reward"
        listener = await asyncio.get_running_loop().create_server(lambda: _ConnectionGuard(self), sock=sock)
        await stop.wait()
        # As aiohttp's own runner stops (no new connections, idle ones closed, requests in flight finish), after a
        # short grace in which requests already sent, queued behind a batch being scored, are read and started.
        await asyncio.sleep(min(0.5, limits.shutdown_timeout))
        listener.close()
        await asyncio.sleep(0)
        self.http_server.pre_shutdown()
        await self.http_server.shutdown(limits.shutdown_timeout)
        self.pool.shutdown(wait=False, cancel_futures=True)

    def start_in_thread(self, host: str = "127.0.0.1", port: int = 0) -> "RewardServer":
        sock = listening_socket(host, port)
        loop, failure = asyncio.new_event_loop(), []
        self._loop, self._stop = loop, asyncio.Event()

        def run():
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.serve(sock, self._stop))
            except BaseException as error:  # reported by start_in_thread, not lost in the thread
                failure.append(error)

        self._thread = threading.Thread(target=run, daemon=True, name="reward-server")
        self._thread.start()
        while self.url is None and self._thread.is_alive():
            time.sleep(0.01)
        if failure:
            raise RuntimeError(f"the reward server did not start: {failure[0]!r}") from failure[0]
        return self

    def stop_thread(self) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(self.limits.shutdown_timeout + 5)

    async def handle(self, request):
        guard = self.connections.get(request.transport)
        try:
            return await self.answer(request, guard)
        finally:
            if guard is not None:
                guard.request_done()

    async def answer(self, request, guard: Optional[_ConnectionGuard]):
        body_seconds = guard.headers_arrived() if guard is not None else self.limits.read_timeout
        verdict = route_request(request.method, request.path, request.path_qs, request.content_length, self.limits)
        if not authorized(request.headers.get("Authorization"), self.limits.auth_token):
            if verdict == "health":  # a liveness probe needs no secret; the worker's details do
                return reply(200, HEALTH_WITHOUT_TOKEN)
            # Before the body is read; the connection is closed so that its unread body is not taken for a request.
            return reply(401, {"error": UNAUTHORIZED}, close=True, authenticate=True)
        if verdict == "health":
            return reply(200, self.health())
        if verdict != "score":
            status, answer = verdict
            if request.method == "HEAD":  # a HEAD answer carries no body
                return web.Response(status=status, headers={"Allow": ALLOWED})
            return reply(status, answer, allow=ALLOWED if status == 405 else None)
        length = request.content_length
        if self.buffered_bytes + length > self.limits.max_buffered_bytes:
            return reply(
                503,
                {
                    "error": f"busy: {self.buffered_bytes} bytes of request bodies held, a body of {length} more "
                    f"would exceed --max-buffered-bytes {self.limits.max_buffered_bytes}"
                },
                retry_after=1,
                close=True,
            )
        self.buffered_bytes += length  # held from the first byte read until the batch is scored
        try:
            return await self.score(request, length, body_seconds)
        finally:
            self.buffered_bytes -= length
            if self.buffered_bytes == 0 and length >= 1 << 20:
                # Once aiohttp has let the request go: without this the worker keeps the memory of the largest
                # bodies it ever held (measured: benchmarks/reward_server_memory.py).
                asyncio.get_running_loop().call_later(1.0, release_freed_memory)

    async def score(self, request, length: int, body_seconds: float):
        try:
            data = await asyncio.wait_for(request.content.readexactly(length), max(body_seconds, 0.001))
        except asyncio.TimeoutError:
            return reply(
                408,
                {"error": f"the body did not arrive within --read-timeout {self.limits.read_timeout:g} s"},
                close=True,
            )
        except asyncio.IncompleteReadError as error:
            return reply(400, {"error": f"the body ended after {len(error.partial)} of {length} bytes"}, close=True)
        except ConnectionError:  # the client went away mid-body: nobody to answer
            logger.info("a client closed its connection after sending part of a %d-byte body", length)
            return reply(400, {"error": "connection lost"}, close=True)
        batch, refusal = check_body(data, self.limits)
        if refusal:
            return reply(*refusal)
        request[BATCH_SIZE] = len(batch[0])
        fingerprint = hashlib.sha256(data).hexdigest()[:HASH_BYTES] if self.poison is not None else None
        if fingerprint is not None and os.path.exists(os.path.join(self.poison, f"poison-{fingerprint}")):
            with open(os.path.join(self.poison, f"poison-{fingerprint}"), encoding="utf-8") as handle:
                return reply(422, {"error": handle.read()})
        try:
            await asyncio.wait_for(self.slots.acquire(), self.limits.queue_timeout)
        except asyncio.TimeoutError:
            return reply(
                503,
                {"error": f"busy: all {self.limits.max_concurrency} slots taken for {self.limits.queue_timeout}s"},
                retry_after=1,
            )
        self.in_flight += 1
        self.scoring_since[id(request)] = time.monotonic()
        slot = self.free_slots.pop() if fingerprint is not None else None  # never empty: the semaphore's slots
        if slot is not None:  # what the supervisor reads if the reward function ends this process
            self.scoring[slot * HASH_BYTES : (slot + 1) * HASH_BYTES] = fingerprint.encode()
        try:
            status, answer = await score_batch(self.reward_func, batch, self.limits, self.source, self.pool)
        finally:
            self.slots.release()
            self.in_flight -= 1
            del self.scoring_since[id(request)]
            if slot is not None:
                self.scoring[slot * HASH_BYTES : (slot + 1) * HASH_BYTES] = bytes(HASH_BYTES)
                self.free_slots.append(slot)
        if status == 200:
            self.served_requests += 1
            self.served_rollouts += len(batch[0])
        return reply(status, answer)

    def health(self) -> dict:
        return {
            "status": "ok",
            "reward_file": self.source,
            "reward_keys": list(self.limits.reward_keys) if self.limits.reward_keys else None,
            "worker_pid": os.getpid(),
            "in_flight": self.in_flight,
            "longest_in_flight_s": round(time.monotonic() - min(self.scoring_since.values()), 3)
            if self.scoring_since
            else 0.0,
            "buffered_bytes": self.buffered_bytes,
            "open_connections": len(self.connections),
            "max_concurrency": self.limits.max_concurrency,
            "served_requests": self.served_requests,
            "served_rollouts": self.served_rollouts,
        }


try:  # glibc's: hands the free memory of the heap and its arenas back to the system
    import ctypes

    _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
except (OSError, AttributeError):  # another C library (musl, macOS): the memory stays with the worker, bounded
    _malloc_trim = None


def release_freed_memory() -> None:
    """A body's 64 kB chunks outlive its request in reference cycles (an aborted read's exception and traceback),
    and once freed the C allocator keeps their pages: collect the cycles, then return the pages."""
    gc.collect()
    if _malloc_trim is not None:
        _malloc_trim(0)


def reply(
    status: int,
    payload: dict,
    retry_after: Optional[int] = None,
    allow: Optional[str] = None,
    close: bool = False,
    authenticate: bool = False,
):
    headers = {"WWW-Authenticate": 'Bearer realm="gd2po reward server"'} if authenticate else {}
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    if allow is not None:
        headers["Allow"] = allow
    if close:  # the rest of a timed-out or truncated body must not be read as the next request
        headers["Connection"] = "close"
    if status >= 400 and "error" in payload:
        logger.warning("-> %d: %s", status, payload["error"])
    return web.Response(
        status=status, body=json.dumps(payload).encode(), content_type="application/json", headers=headers
    )


if web is not None:
    # aiohttp's typed request key (made at module level: aiohttp derives its name from the defining module).
    BATCH_SIZE = web.RequestKey("batch_size", int)

    class AccessLog(AbstractAccessLogger):
        """One line per request: client, request line, status, batch size, milliseconds."""

        def log(self, request, response, time):
            self.logger.info(
                '%s "%s %s HTTP/%d.%d" %s batch=%d %.1fms',
                request.remote,
                request.method,
                request.path_qs,
                request.version.major,
                request.version.minor,
                response.status,
                request.get(BATCH_SIZE, 0),
                time * 1000,
            )


# ---------------------------------------------------------------------------------------------- processes


def listening_socket(host: str, port: int, reuse_port: bool = False, listen: bool = True) -> socket.socket:
    """A TCP socket bound to ``host:port``. With ``reuse_port`` every worker listens on a socket of its own on
    the same port and the kernel spreads new connections evenly over them (a keep-alive connection stays with
    the worker that accepted it); the supervisor holds one bound, not listening, to reserve the port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
        if listen:
            sock.listen(1024)  # pending connections the kernel holds: many rollouts post at once
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def serve_until_signalled(
    sock: socket.socket,
    reward_func: Callable,
    source: str,
    limits: ServerLimits,
    parent_pid: Optional[int] = None,
    poison: Optional[str] = None,
    scoring=None,
) -> None:
    """Serve until SIGTERM or SIGINT (or, for a worker, until its supervisor is gone), then stop gracefully."""

    async def run():
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)

        async def orphaned():
            while os.getppid() == parent_pid:
                await asyncio.sleep(1)
            logger.warning("the supervisor %d is gone: stopping", parent_pid)
            stop.set()

        watch = loop.create_task(orphaned()) if parent_pid is not None else None
        await RewardServer(reward_func, source, limits, poison, scoring).serve(sock, stop)
        if watch is not None:
            watch.cancel()

    asyncio.run(run())


def _worker(
    address, reward_file: str, limits: ServerLimits, ready, quiet: bool, parent_pid: int, poison: str, scoring
) -> None:
    """A worker process: import the reward file (its own copy), listen on the shared port, say so, serve."""
    _configure_logging(quiet)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the supervisor, which stops the workers
    try:
        reward_func = load_reward_func(reward_file)
        sock = listening_socket(*address, reuse_port=True)
    except BaseException as error:
        ready.put((os.getpid(), _load_error(reward_file, error)))
        return
    ready.put((os.getpid(), None))
    serve_until_signalled(sock, reward_func, reward_file, limits, parent_pid, poison, scoring)


def _load_error(reward_file: str, error: BaseException) -> str:
    if isinstance(error, (OSError, ValueError)):
        return str(error)
    return f"reward file {reward_file} failed to load: {type(error).__name__}: {error}"


# Signals that end a worker from outside (an operator, the OOM killer, a stopping host): the batch in flight is only
# suspect, poison if it is in flight again when another worker ends.
_EXTERNAL_SIGNALS = (signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def mark_poison(poison: str, scoring: bytes, exitcode: int, reward_file: str) -> int:
    """After a worker ended with ``exitcode``: the batches it was scoring (the body hashes in its shared ``scoring``
    slots) become poison, answered 422 from now on by every worker (``poison-<hash>`` in the folder ``poison``). A
    batch is poison at once when the worker ended by itself (``os._exit``, a crash) with it alone in flight;
    otherwise suspect, and poison if it was in flight again when another worker ended. Returns how many batches
    it was scoring."""
    hashes = [scoring[i : i + HASH_BYTES].decode() for i in range(0, len(scoring), HASH_BYTES)]
    hashes = [fingerprint for fingerprint in hashes if fingerprint.strip("\0")]
    external = exitcode < 0 and -exitcode in _EXTERNAL_SIGNALS
    how = f"killed by signal {signal.Signals(-exitcode).name}" if exitcode < 0 else f"exited with code {exitcode}"
    for fingerprint in hashes:
        suspect = os.path.join(poison, f"suspect-{fingerprint}")
        if (len(hashes) == 1 and not external) or os.path.exists(suspect):
            others = f" together with {len(hashes) - 1} other batches" if len(hashes) > 1 else ""
            message = (
                f"reward file {reward_file}: its reward_func ended the worker process ({how}) while scoring this "
                f"batch{others}; the server answers it with this error instead of scoring it again (restart the "
                "server to retry it)"
            )
            with open(os.path.join(poison, f"poison-{fingerprint}"), "w", encoding="utf-8") as handle:
                handle.write(message)
            logger.error("a batch of %s made a worker end (%s): it is answered 422 from now on", reward_file, how)
        else:
            open(suspect, "w").close()
    return len(hashes)


def supervise(address, reward_file: str, limits: ServerLimits, workers: int, quiet: bool) -> Optional[str]:
    """Run ``workers`` processes on ``address`` (host, port); restart one that dies (``mark_poison`` remembers what
    it was scoring); on SIGTERM/SIGINT stop them gracefully. Returns the reward file's load error if a worker could
    not import it (nothing was served then)."""
    context = multiprocessing.get_context("spawn")  # a fresh interpreter per worker: its own import of the file
    ready, stopping = context.Queue(), threading.Event()
    poison = tempfile.mkdtemp(prefix="gd2po-reward-server-")
    scoring = {}  # process -> its shared slots
    for signum in (signal.SIGTERM, signal.SIGINT):  # before any worker starts: none is ever left behind
        signal.signal(signum, lambda *_: stopping.set())

    def start():
        slots = context.Array("c", HASH_BYTES * limits.max_concurrency, lock=False)  # one writer: the worker
        process = context.Process(
            target=_worker,
            args=(address, reward_file, limits, ready, quiet, os.getpid(), poison, slots),
            daemon=False,
        )
        process.start()
        scoring[process] = slots
        while True:  # its import's verdict, or its death before one
            try:
                _, error = ready.get(timeout=1)
                break
            except queue.Empty:
                if not process.is_alive():
                    error = f"a worker exited with {process.exitcode} while importing {reward_file}"
                    break
        if error is not None:
            process.join(10)
        return process, error

    processes = []
    try:
        for _ in range(workers):
            process, error = start()
            if error is not None or stopping.is_set():
                for other in processes + [process]:
                    if other.is_alive():
                        os.kill(other.pid, signal.SIGTERM)
                return error
            processes.append(process)
        logger.warning(
            "serving %s on http://%s:%d/get_reward with %d worker%s (pid%s %s; health: GET /health)",
            reward_file,
            *address[:2],
            workers,
            "s" if workers > 1 else "",
            "s" if workers > 1 else "",
            " ".join(str(process.pid) for process in processes),
        )
        while not stopping.is_set():
            # Woken by a worker's end at once: its poison batch is marked before the client's retry arrives.
            multiprocessing.connection.wait([process.sentinel for process in processes], timeout=0.5)
            for index, process in enumerate(processes):
                if not process.is_alive() and not stopping.is_set():
                    batches = mark_poison(poison, scoring.pop(process).raw, process.exitcode, reward_file)
                    logger.warning(
                        "worker %d exited with %s: starting another%s",
                        process.pid,
                        process.exitcode,
                        f" ({batches} batch{'es' if batches != 1 else ''} in flight on it)" if batches else "",
                    )
                    processes[index], error = start()
                    if error is not None:  # the file changed under the server: keep the others serving
                        logger.error("cannot restart the worker: %s", error)
                        stopping.wait(1.0)  # and try again in a second, not in a tight loop
        for process in processes:
            if process.is_alive():
                os.kill(process.pid, signal.SIGTERM)
        for process in processes:
            process.join(limits.shutdown_timeout + 10)
    finally:
        shutil.rmtree(poison, ignore_errors=True)
    return None


def _configure_logging(quiet: bool) -> None:
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="%(asctime)s %(levelname)s [%(process)d] %(message)s",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m gd2po_openrlhf.serve_rewards", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--reward-file", required=True, help="a .py file defining reward_func(queries, prompts, labels)"
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="interface to bind (0.0.0.0 to serve other machines: needs --auth-token-file or --allow-unauthenticated)",
    )
    parser.add_argument("--port", type=int, default=5000, help="0 to 65535 (0: a free port)")
    parser.add_argument(
        "--reward-keys",
        nargs="+",
        default=None,
        metavar="KEY",
        help="require exactly these dimensions in every answer",
    )
    parser.add_argument("--workers", type=int, default=1, help="processes serving the port (default 1)")
    parser.add_argument(
        "--max-concurrency",
        type=int,
        default=1,
        help="batches a worker scores at once: 1 (default) on its event loop, best for CPU-bound Python (the GIL "
        "runs one anyway); N > 1 in N threads, for reward functions that wait (a sandbox, a judge, the network). "
        "An async reward_func is awaited on the loop",
    )
    parser.add_argument("--max-batch", type=int, default=4096, help="largest accepted batch of queries (413 above)")
    parser.add_argument(
        "--max-body-bytes", type=int, default=64 << 20, help="largest accepted request body (413 above)"
    )
    parser.add_argument(
        "--max-connections", type=int, default=1024, help="open connections per worker (503 above; default 1024)"
    )
    parser.add_argument(
        "--queue-timeout", type=float, default=60.0, help="seconds a request waits for a slot before a 503"
    )
    parser.add_argument(
        "--read-timeout",
        type=float,
        default=30.0,
        help="seconds from a request's first byte until its headers and body have all arrived (408 after)",
    )
    parser.add_argument(
        "--shutdown-timeout", type=float, default=30.0, help="seconds SIGTERM waits for requests in flight"
    )
    parser.add_argument(
        "--idle-timeout",
        type=float,
        default=15.0,
        help="seconds a connection may send nothing between requests (or before its first) before it is closed",
    )
    parser.add_argument(
        "--max-buffered-bytes",
        type=int,
        default=256 << 20,
        help="request bodies a worker holds at once, read or being read, in bytes (503 above; default 256 MiB)",
    )
    parser.add_argument(
        "--auth-token-file",
        default=None,
        metavar="PATH",
        help="a file holding a bearer token every request must send (401 otherwise); or set "
        f"{AUTH_TOKEN_FILE_VARIABLE} or {AUTH_TOKEN_VARIABLE}. The trainer sends it with "
        "--gd2po.reward_auth_token_file",
    )
    parser.add_argument(
        "--allow-unauthenticated",
        action="store_true",
        help="serve an address other than loopback without a token (anyone who reaches the port can query it)",
    )
    parser.add_argument("--ray-serve", action="store_true", help="serve as a Ray Serve deployment on the cluster")
    parser.add_argument("--replicas", type=int, default=1, help="Ray Serve replicas (with --ray-serve)")
    parser.add_argument("--quiet", action="store_true", help="no access log, errors only")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    for flag in ("workers", "replicas", "max_concurrency", "max_batch", "max_body_bytes", "max_connections"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    for flag in ("queue_timeout", "read_timeout", "shutdown_timeout", "idle_timeout"):
        if not 0 < getattr(args, flag) < math.inf:
            parser.error(f"--{flag.replace('_', '-')} must be > 0 seconds, got {getattr(args, flag)}")
    if args.max_buffered_bytes < args.max_body_bytes:
        parser.error(
            f"--max-buffered-bytes {args.max_buffered_bytes} is below --max-body-bytes {args.max_body_bytes}: a body "
            "the server accepts could never be read"
        )
    try:
        token = reward_auth_token(args.auth_token_file)
    except ValueError as error:
        parser.error(f"--auth-token-file: {error}" if args.auth_token_file else str(error))
    if token is None and not args.allow_unauthenticated and serves_other_machines(args.host):
        parser.error(
            f"--host {args.host} serves other machines, and without a token anyone who reaches the port can query "
            "the reward function and load it: give --auth-token-file (the trainer: --gd2po.reward_auth_token_file), "
            "or say --allow-unauthenticated"
        )
    if not 0 <= args.port <= 65535:
        parser.error(f"--port must be between 0 and 65535, got {args.port}")
    if args.replicas > 1 and not args.ray_serve:
        parser.error("--replicas needs --ray-serve (use --workers for processes on this host)")
    if args.workers > 1 and args.ray_serve:
        parser.error("--workers is for one host; with --ray-serve use --replicas")
    if importlib.util.find_spec("aiohttp") is None:
        parser.error("the reward server runs on aiohttp, which is not installed: pip install aiohttp")
    _configure_logging(args.quiet)
    limits = ServerLimits(
        tuple(args.reward_keys) if args.reward_keys else None,
        args.max_concurrency,
        args.max_batch,
        args.max_body_bytes,
        args.queue_timeout,
        args.read_timeout,
        args.max_connections,
        args.shutdown_timeout,
        args.idle_timeout,
        args.max_buffered_bytes,
        token,
    )
    if args.ray_serve:
        from .serve_rewards_ray import serve_on_ray

        problem = serve_on_ray(args.reward_file, limits, args.host, args.port, args.replicas)
        if problem:
            parser.error(problem)
        return
    try:  # the supervisor reserves the port (bound, not listening) for its workers
        sock = listening_socket(args.host, args.port, reuse_port=True, listen=False)
    except OSError as error:  # port in use, an unknown host, no permission
        parser.error(f"cannot listen on {args.host}:{args.port}: {error.strerror or error}")
    host, port = sock.getsockname()[:2]
    # One worker is supervised too: a reward function that ends its process must not end the server.
    problem = supervise((host, port), args.reward_file, limits, args.workers, args.quiet)
    sock.close()
    if problem:
        parser.error(problem)
    logger.warning("stopped")


def serves_other_machines(host: str) -> bool:
    """Whether ``host`` names an address other than loopback (127.0.0.0/8, ::1); False for a name that does not
    resolve (binding it fails, saying so)."""
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)}
    except (OSError, UnicodeError):
        return False
    return not all(ipaddress.ip_address(address.split("%")[0]).is_loopback for address in addresses)


if __name__ == "__main__":
    main()
