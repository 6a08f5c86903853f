"""One worker of the HTTP reward server: aiohttp's low-level server behind a per-connection guard (deadlines,
connection and buffer limits), a pool of scoring threads, ``/health``, the socket it listens on, and the memory
slots its supervisor reads (``supervisor.py``)."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import json
import logging
import os
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Optional

try:
    from aiohttp import web
    from aiohttp.abc import AbstractAccessLogger
except ImportError:  # a reward host installed with --no-deps and without aiohttp: main() says what to install
    web = AbstractAccessLogger = None

from .protocol import (
    ALLOWED,
    HASH_BYTES,
    HEALTH_WITHOUT_TOKEN,
    UNAUTHORIZED,
    ServerLimits,
    authorized,
    check_body,
    route_request,
    score_batch,
)

logger = logging.getLogger("gd2po_openrlhf.serve_rewards")


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
