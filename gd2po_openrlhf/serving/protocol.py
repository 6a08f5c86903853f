"""The reward route's rules, shared by the aiohttp server (``server.py``) and the Ray Serve replicas
(``ray_serve.py``): paths and methods, body limits, the JSON body and its numbers, the bearer token, and the scoring
of one batch by the reward file (answers and status codes as the module doc of ``gd2po_openrlhf.serve_rewards``
lists them)."""

from __future__ import annotations

import asyncio
import hmac
import inspect
import json
import logging
import math
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Tuple

from ..rewards import (
    DIMENSION_PREFIX,
    dimensions_from_payload,
)

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
