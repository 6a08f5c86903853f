"""The reward client of the vLLM rollout actors, used by ``remote_rewards``' replacements in ``openrlhf.utils.agent``.

OpenRLHF's ``SingleTurnAgentExecutor`` posts each rollout to the reward server, retrying 5 times one second
apart on any error (a 400 included), and swallows the final exception: the rollout arrives in the trainer
with ``reward=None`` and the cause is only logged at INFO level in the rollout actor. The executor's two fetch
methods are replaced (``remote_rewards``) so that
- transient failures (connection refused or reset, HTTP 408/429/5xx, timeouts) are retried with bounded,
  jittered exponential backoff, and permanent ones (other 4xx, malformed JSON, a wrong number of items)
  are not;
- a failure travels with the rollout to the trainer as ``extra_logs[REWARD_ERROR_KEY]`` (a message naming
  the server or reward file and the cause), where ``--gd2po.on_bad_reward`` decides, instead of a bare None.

The rollout actors do not see the launcher's flags, so the retry policy is read from environment variables
(set them where Ray starts, or in a job's ``runtime_env``): ``GD2PO_REWARD_ATTEMPTS`` (default 6),
``GD2PO_REWARD_TIMEOUT_S`` per request (default 180, as OpenRLHF) and ``GD2PO_REWARD_BACKOFF_S``, the first
wait, doubled after each failure up to 30 s (default 1). A reward server's bearer token is read from the file named
by ``GD2PO_REWARD_AUTH_TOKEN_FILE`` (the launcher sets it in the rollout actors from
``--gd2po.reward_auth_token_file``) or from ``GD2PO_REWARD_AUTH_TOKEN``, and sent as ``Authorization: Bearer``.
It applies to every estimator while the plugin is enabled; ``GD2PO_DISABLE=1`` restores OpenRLHF's client.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
from typing import List, Optional

import aiohttp
from openrlhf.utils.logging_utils import init_logger

from ..rewards import reward_auth_token, reward_client_settings

logger = init_logger(__name__)

REWARD_ERROR_KEY = "gd2po_reward_error"
TRANSIENT_STATUS = (408, 429, 500, 502, 503, 504)
MAX_BACKOFF_S = 30.0
# One retry warning per server every few seconds: a server outage with a thousand rollouts in flight
# would otherwise write a thousand lines per retry round.
WARNING_INTERVAL_S = 10.0
_last_warning = {}


def count_mismatch(answer, num_rollouts: int) -> Optional[str]:
    """Why a reward answer does not hold one item per rollout, or None when it does.

    Checks every list in ``rewards``, ``scores`` (lists or ``{key: list}`` dicts) and ``extra_logs``; a bare
    number stands for one rollout.
    """
    if not isinstance(answer, dict):
        return f"the answer is a {type(answer).__name__}, expected a JSON object with 'rewards'"
    if "rewards" not in answer and "scores" not in answer:
        return f"the answer has no 'rewards' (keys: {sorted(answer)[:10]})"
    fields = {name: answer.get(name) for name in ("rewards", "scores")}
    for name in ("rewards", "scores"):
        if isinstance(fields[name], dict):
            fields.update({f"{name}.{key}": value for key, value in fields.pop(name).items()})
    extra_logs = answer.get("extra_logs") or {}
    if isinstance(extra_logs, dict):
        fields.update({f"extra_logs.{key}": value for key, value in extra_logs.items()})
    for name, value in fields.items():
        count = len(value) if isinstance(value, list) else (None if value is None else 1)
        if count is not None and count != num_rollouts:
            return f"{name} has {count} items for {num_rollouts} rollouts"
    return None


async def post_with_retries(url: str, payload: dict, num_rollouts: int) -> dict:
    """POST one reward request; retry transient failures, raise RuntimeError with the cause otherwise.

    Waits ``backoff · 2^(attempt−1)`` seconds (capped at 30 s, times a random factor in [0.5, 1] so that
    many rollouts in flight do not retry in lockstep) between attempts.
    """
    attempts, timeout_s, backoff_s = reward_client_settings()
    token = reward_auth_token()  # read per request: a rotated token file is picked up without a restart
    headers = {"Authorization": f"Bearer {token}"} if token is not None else None
    started = time.monotonic()
    failure = None
    for attempt in range(1, attempts + 1):
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as session:
                async with session.post(url, json=payload, headers=headers) as response:
                    body = await response.text()
                    status = response.status
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as error:
            failure = f"{type(error).__name__}: {error}"
        except asyncio.TimeoutError:
            failure = f"no answer within {timeout_s:g} s (GD2PO_REWARD_TIMEOUT_S)"
        else:
            if status in TRANSIENT_STATUS:
                failure = f"HTTP {status}: {body.strip()[:300]}"
            elif status >= 400:
                raise RuntimeError(f"reward server {url} refused the request with HTTP {status}: {body.strip()[:500]}")
            else:
                try:
                    answer = json.loads(body)
                except json.JSONDecodeError as error:
                    raise RuntimeError(
                        f"reward server {url} answered malformed JSON ({error}): {body[:200]!r}"
                    ) from None
                mismatch = count_mismatch(answer, num_rollouts)
                if mismatch:
                    raise RuntimeError(f"reward server {url} answered the wrong number of items: {mismatch}")
                return answer
        if attempt < attempts:
            delay = min(backoff_s * 2 ** (attempt - 1), MAX_BACKOFF_S) * random.uniform(0.5, 1.0)
            if time.monotonic() - _last_warning.get(url, -WARNING_INTERVAL_S) >= WARNING_INTERVAL_S:
                _last_warning[url] = time.monotonic()
                logger.warning(f"reward server {url}: {failure}; retry {attempt}/{attempts - 1} in {delay:.1f} s")
            await asyncio.sleep(delay)
    raise RuntimeError(
        f"reward server {url} failed {attempts} times in {time.monotonic() - started:.0f} s (last: {failure}). Check "
        "that "
        "it is up (gd2po_openrlhf.serve_rewards answers GET /health), or raise GD2PO_REWARD_ATTEMPTS / "
        "GD2PO_REWARD_TIMEOUT_S"
    )


_last_failure = {}


def failed_rewards(message: str, count: int) -> List[dict]:
    """What the executor receives for ``count`` rollouts whose fetch failed: no reward, and the cause for the trainer.

    The warning is logged once per WARNING_INTERVAL_S for failures that differ only in their numbers (a server that
    is down, a bad setting): with a thousand rollouts in flight it would otherwise repeat a thousand times."""
    key, now = re.sub(r"\d+(\.\d+)?", "N", message), time.monotonic()
    last, suppressed = _last_failure.get(key, (-WARNING_INTERVAL_S, 0))
    if now - last >= WARNING_INTERVAL_S:
        _last_failure[key] = (now, 0)
        logger.warning(
            message
            + (f" ({suppressed} more rollouts failed the same way since the last warning)" if suppressed else "")
        )
    else:
        _last_failure[key] = (last, suppressed + count)
    return [{"rewards": None, "scores": None, "extra_logs": {REWARD_ERROR_KEY: message}} for _ in range(count)]
