"""An HTTP reward server for OpenRLHF's ``--reward.remote_url``, returning every reward dimension.

    python -m gd2po_openrlhf.serve_rewards --reward-file examples/rewards/tool_calling.py --port 5000 --workers 2

then train with ``--reward.remote_url http://HOST:5000/get_reward --gd2po.reward_keys correctness format length``.

Protocol (OpenRLHF's remote reward model): ``POST /get_reward`` (or ``/``) with
``{"query": [str], "prompts": [str], "labels": [any]}`` answers
``{"rewards": [Σ_k r_k], "scores": [Σ_k r_k], "extra_logs": {"reward/<key>": [r_k]}}``, one item per query, in
order: stock estimators train on the sum, ``--advantage_estimator gd2po`` reads the dimensions. The reward
file's ``reward_func(queries, prompts, labels)`` is called once per request with the whole batch, in one of
``--max-concurrency`` threads (one by default: the event loop stays free to answer ``/health`` and to read other
requests while a batch is scored), or awaited when it is ``async def``.
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
Ray Serve deployment instead. This module is the command line; the server is the ``gd2po_openrlhf.serving``
package (``protocol``, ``server``, ``supervisor``, ``ray_serve``).
"""

from __future__ import annotations

import argparse
import importlib.util
import ipaddress
import logging
import math
import socket
from typing import Optional, Sequence

from .rewards import (
    AUTH_TOKEN_FILE_VARIABLE,
    AUTH_TOKEN_VARIABLE,
    reward_auth_token,
)
from .serving.protocol import ServerLimits
from .serving.server import listening_socket
from .serving.supervisor import _configure_logging, supervise

logger = logging.getLogger("gd2po_openrlhf.serve_rewards")


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
        from .serving.ray_serve import serve_on_ray

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
