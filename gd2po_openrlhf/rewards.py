"""Reward payloads: what a reward function or server returns, validated into one list per dimension.

No torch or openrlhf import: used by the reward server, the trainer-side integration and the tests alike.
A payload follows OpenRLHF's remote-reward protocol, ``{"rewards": ..., "scores": ..., "extra_logs": ...}``,
and carries the dimensions either as ``"rewards": {key: values}`` or as ``"extra_logs": {"reward/<key>": values}``.
"""

from __future__ import annotations

import math
import os
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

# Larger rewards are almost surely a reward-source bug, and with norm_by_std=False they would overflow the
# float32 advantages: refused with the source and rollout named (payloads here, the estimator's input too).
MAX_ABS_REWARD = 1e15

DIMENSION_PREFIX = "reward/"


def dimensions_from_payload(
    payload, num_rollouts: int, reward_keys: Optional[Sequence[str]] = None, source: str = "reward source"
) -> Dict[str, List[float]]:
    """``{key: [value per rollout]}`` from one payload answering ``num_rollouts`` rollouts.

    Values may be a list, tuple or array (anything with ``tolist()``) of ``num_rollouts`` numbers, or a bare
    number when ``num_rollouts == 1``. With ``reward_keys`` the payload must carry exactly those dimensions.
    Raises ValueError naming the source, the reward key and the rollout for a missing or unexpected key,
    a wrong number of values, or a value that is not a finite real number.
    """
    if not isinstance(payload, Mapping):
        raise ValueError(
            f"{source} returned {type(payload).__name__} {payload!r:.200}, expected a dict with 'rewards' and/or "
            "'extra_logs'"
        )
    rewards, extra_logs = payload.get("rewards"), payload.get("extra_logs") or {}
    if not isinstance(extra_logs, Mapping):
        raise ValueError(f"{source} returned extra_logs of type {type(extra_logs).__name__}, expected a dict")
    logged = {
        key[len(DIMENSION_PREFIX) :]: value
        for key, value in extra_logs.items()
        if str(key).startswith(DIMENSION_PREFIX)
    }
    if isinstance(rewards, Mapping) and logged:
        # Two sources for the same dimensions, possibly disagreeing: picking one silently would hide a bug.
        raise ValueError(
            f"{source} returned the dimensions twice, as 'rewards' {sorted(map(str, rewards))} and as extra_logs "
            f"{sorted(DIMENSION_PREFIX + key for key in logged)}: return them in one of the two forms"
        )
    values = dict(rewards) if isinstance(rewards, Mapping) else logged
    if reward_keys is not None:
        unexpected = sorted(str(k) for k in set(values) - set(reward_keys))
        if unexpected:
            raise ValueError(
                f"{source} returned reward keys {unexpected} that are not among the declared reward keys "
                f"{list(reward_keys)}"
            )
        missing = [key for key in reward_keys if key not in values]
        if missing:
            raise ValueError(
                f"{source} returned no value for reward keys {missing}: return them as "
                "{'rewards': {key: values}} or as extra_logs {'reward/<key>': values}"
            )
        keys = list(reward_keys)
    else:
        keys = list(values)
        if not keys:
            raise ValueError(
                f"{source} returned no reward dimensions: return {{'rewards': {{key: values}}}} or extra_logs "
                "'reward/<key>'"
            )
    dimensions = {}
    for key in keys:
        value = values[key]
        if hasattr(value, "tolist"):  # torch tensors, numpy arrays and scalars
            value = value.tolist()
        if not isinstance(value, (list, tuple)):
            if num_rollouts != 1:
                raise ValueError(
                    f"{source} returned a single value for reward key {key!r}, expected a list of {num_rollouts}"
                )
            value = [value]
        if len(value) != num_rollouts:
            raise ValueError(
                f"{source} returned {len(value)} values for reward key {key!r}, expected one per rollout "
                f"({num_rollouts})"
            )
        for index, item in enumerate(value):
            # An int is compared as an int: float(10**400) overflows, and its repr may exceed Python's digit limit.
            if (
                isinstance(item, bool)
                or not isinstance(item, (int, float))
                or (isinstance(item, float) and not math.isfinite(item))
                or abs(item) > MAX_ABS_REWARD
            ):
                shown = (
                    f"an integer of {item.bit_length()} bits"
                    if isinstance(item, int) and item.bit_length() > 64
                    else f"{item!r:.100}"
                )
                raise ValueError(
                    f"{source} returned {shown} for reward key {key!r} of rollout {index}: expected a finite "
                    f"number with |r| <= {MAX_ABS_REWARD:g}"
                )
        dimensions[str(key)] = [float(item) for item in value]
    return dimensions


# The plugin's reward client in the rollout actors (integration/reward_client.py) reads these; the launcher checks
# them too.
REWARD_CLIENT_SETTINGS = (
    ("GD2PO_REWARD_ATTEMPTS", 6, int),
    ("GD2PO_REWARD_TIMEOUT_S", 180.0, float),
    ("GD2PO_REWARD_BACKOFF_S", 1.0, float),
)


def reward_client_settings(environ: Optional[Mapping[str, str]] = None) -> Tuple[int, float, float]:
    """``(attempts, timeout_s, backoff_s)`` from the environment; ValueError naming the variable for a bad value."""
    environ = os.environ if environ is None else environ
    values = []
    for name, default, cast in REWARD_CLIENT_SETTINGS:
        raw = environ.get(name)
        if raw is None or raw.strip() == "":
            values.append(default)
            continue
        try:
            value = cast(raw)
        except ValueError:
            raise ValueError(f"{name}={raw!r} is not a {'whole ' if cast is int else ''}number") from None
        if not value > 0 or not math.isfinite(value):
            raise ValueError(f"{name}={raw!r} must be a positive number")
        values.append(value)
    return tuple(values)


# The bearer token of a reward server (``serve_rewards --auth-token-file``) and of the plugin's client
# (``--gd2po.reward_auth_token_file``, exported to the rollout actors as GD2PO_REWARD_AUTH_TOKEN_FILE).
AUTH_TOKEN_FILE_VARIABLE = "GD2PO_REWARD_AUTH_TOKEN_FILE"
AUTH_TOKEN_VARIABLE = "GD2PO_REWARD_AUTH_TOKEN"
# RFC 6750's token characters: what an Authorization header carries without quoting.
_TOKEN_CHARACTERS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/=")


def reward_auth_token(path: Optional[str] = None, environ: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """The bearer token of ``path``, else of the file named by GD2PO_REWARD_AUTH_TOKEN_FILE, else the value of
    GD2PO_REWARD_AUTH_TOKEN; None when none is set. ValueError naming the file or variable for an unreadable file or
    a token that is empty or holds characters other than RFC 6750's (a second line, a space)."""
    environ = os.environ if environ is None else environ
    path = path or environ.get(AUTH_TOKEN_FILE_VARIABLE) or None
    if path is not None:
        where = f"token file {path}"
        try:
            with open(os.path.expanduser(path), encoding="utf-8") as handle:
                token = handle.read(4097).strip()
        except (OSError, UnicodeDecodeError) as error:
            raise ValueError(f"{where}: cannot read it: {error}") from None
    elif environ.get(AUTH_TOKEN_VARIABLE):
        where, token = AUTH_TOKEN_VARIABLE, environ[AUTH_TOKEN_VARIABLE].strip()
    else:
        return None
    if not token or len(token) > 4096:
        raise ValueError(f"{where}: expected a token of 1 to 4096 characters, got {len(token)}")
    odd = sorted(set(token) - _TOKEN_CHARACTERS)
    if odd:
        raise ValueError(
            f"{where}: the token may hold letters, digits and -._~+/= only, found {''.join(odd)[:10]!r} (one line, "
            "no spaces; e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )
    return token
