"""Rewards from a reward file, server or agent: how they leave the rollout actors and how they arrive in the trainer.

OpenRLHF's vLLM rollout actors call the user's reward function or server (``utils/agent.py``,
``SingleTurnAgentExecutor``) and swallow whatever goes wrong into ``reward=None``. Here, replacing its two fetch
methods, a failure travels with the rollout as ``extra_logs[REWARD_ERROR_KEY]`` (``reward_client``: bounded
retries of transient faults). In the trainer, ``SamplesGenerator._process_response_into_experience`` turns each
rollout into an Experience; the replacement here reads the remote reward dimensions of a gd2po/gdpo run out of the
response (``{"rewards": {key: value}}`` or ``extra_logs["reward/<key>"]``) into ``info["reward/<key>"]``, and a bad
one stops the step or, under ``--gd2po.on_bad_reward drop_group``, arrives as NaN.

Imports nothing of ``openrlhf.trainer``: the vLLM rollout actors import this and must not pull in DeepSpeed.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import math

import torch
from openrlhf.utils.logging_utils import init_logger

from ..rewards import MAX_ABS_REWARD, dimensions_from_payload
from .openrlhf_patches import UPSTREAM
from .reward_client import REWARD_ERROR_KEY, failed_rewards, post_with_retries
from .settings import GD2PO_ESTIMATORS, generator_settings

logger = init_logger(__name__)


# ---- trainer process: openrlhf/trainer/ppo_utils/samples_generator.py, SamplesGenerator


def _process_response_into_experience(self, response, **generate_kwargs):
    """Mirrors ``SamplesGenerator._process_response_into_experience`` (one rollout's Experience from the rollout
    actor's response): the remote reward dimensions of a gd2po/gdpo run, from ``{"rewards": {key: value}}`` or
    ``extra_logs["reward/<key>"]``, become ``info["reward/<key>"]``. A bad one stops the step naming the key and the
    prompt, or under --gd2po.on_bad_reward drop_group arrives as NaN, which drops its prompt group."""
    upstream = UPSTREAM["SamplesGenerator._process_response_into_experience"]
    extra_logs = response.get("extra_logs") or {}
    reward_error = extra_logs.get(REWARD_ERROR_KEY) if isinstance(extra_logs, dict) else None
    if self.args.algo.advantage.estimator not in GD2PO_ESTIMATORS:
        if reward_error is not None:  # stock estimators get OpenRLHF's reward=None, and the cause in the log
            logger.warning(f"no reward for prompt {response.get('prompt')!r:.200}: {reward_error}")
            response = {**response, "extra_logs": {k: v for k, v in extra_logs.items() if k != REWARD_ERROR_KEY}}
        return upstream(self, response, **generate_kwargs)
    settings = generator_settings(self)
    remote = settings.remote_dimensions
    if not remote:
        # OpenRLHF turns every extra_logs value into a tensor: the client's message must never get there.
        if reward_error is not None:
            raise ValueError(
                f"a reward client ran for prompt {response.get('prompt')!r:.200} although no --gd2po.reward_keys "
                f"dimension comes from --reward.remote_url or an agent, and it failed: {reward_error}"
            )
        return upstream(self, response, **generate_kwargs)
    remote_keys = [dim.key for dim in remote]
    prompt = response.get("prompt")
    # A model group's key returned by the reward file too: a configuration error, never a bad reward to drop.
    returned = response.get("reward") if isinstance(response.get("reward"), dict) else extra_logs
    for group in settings.model_groups:
        if group.key in returned or f"reward/{group.key}" in returned:
            raise ValueError(
                f"reward key {group.key!r} is scored by the model group {group.flag} {group.path}, and the "
                f"{remote[0].source.replace('_', ' ')} {remote[0].location} returns it too (prompt {prompt!r:.200}): "
                "one source per key; drop it from the reward function, or give the model group another key"
            )
    try:
        if reward_error is not None:  # the rollout actor's reward client failed
            raise ValueError(f"reward keys {remote_keys} missing for prompt {prompt!r:.200}: {reward_error}")
        where = f"{remote[0].source.replace('_', ' ')} {remote[0].location} for prompt {prompt!r:.200}"
        if response.get("reward") is None and not extra_logs:
            raise ValueError(
                f"reward keys {remote_keys} missing from {where}: it returned no reward at all: the reward function "
                "raised or the server failed (OpenRLHF swallows the exception and logs '[SingleTurnExecutor] Failed "
                "to fetch reward' at INFO level)"
            )
        payload = {"rewards": response.get("reward"), "extra_logs": extra_logs}
        values = {key: column[0] for key, column in dimensions_from_payload(payload, 1, remote_keys, where).items()}
        # OpenRLHF makes each other extra_logs value a tensor and averages it as a metric: a string, None, a dict
        # or a long list would fail deep in its concat ("too many dimensions 'str'") naming neither source nor key.
        logged = {}  # the other extra_logs, each as the one number OpenRLHF makes a [1] tensor of
        for key, value in extra_logs.items():
            number = value.flatten()[0].item() if isinstance(value, torch.Tensor) and value.numel() == 1 else value
            if isinstance(number, (list, tuple)) and len(number) == 1:  # a batched reward function's one rollout
                number = number[0]
            if key.startswith("reward/"):
                continue
            if isinstance(number, (int, float)) and not isinstance(number, bool) and abs(number) <= MAX_ABS_REWARD:
                logged[key] = float(number)
                continue
            raise ValueError(
                f"{where} returned extra_logs[{key!r}] = {value!r:.100}: OpenRLHF logs every extra_logs value as a "
                f"metric, so it must be a finite number with |x| <= {MAX_ABS_REWARD:g}"
            )
    except ValueError as error:
        if settings.on_bad_reward != "drop_group":
            raise
        # NaN marks the rollout: the experience maker drops its whole group from the step.
        logger.warning(f"bad reward, its prompt group will be dropped (--gd2po.on_bad_reward drop_group): {error}")
        values, logged = {key: math.nan for key in remote_keys}, {}
        response = {**response, "reward": 0.0, "scores": 0.0}
    # Until the model-group dimensions arrive, reward/score are the weighted sum of these dimensions.
    partial_total = sum(dim.weight * values[dim.key] for dim in remote)
    response = dict(response)
    # A dict, a list of one (batched reward files and servers) or nothing becomes that scalar sum.
    for field in ("reward", "scores"):
        if isinstance(response.get(field), bool) or not isinstance(response.get(field), (int, float)):
            response[field] = partial_total
    response["extra_logs"] = logged
    experience = upstream(self, response, **generate_kwargs)
    for key, value in values.items():
        experience.info[f"reward/{key}"] = torch.tensor([value], dtype=torch.float32)
    tally = getattr(self, "gd2po_group_tally", None)
    if tally is not None:  # a --gd2po.dynamic_sampling training batch: _generate_vllm tests the group's scores
        tally.add(experience)
    return experience


# ---- vLLM rollout actors: openrlhf/utils/agent.py, SingleTurnAgentExecutor


async def _fetch_rewards_via_http(self, queries_list, prompts_list, labels_list):
    """Mirrors ``SingleTurnAgentExecutor._fetch_rewards_via_http``: OpenRLHF's sharding over the reward servers, each
    shard posted by ``reward_client.post_with_retries`` (bounded retries of transient faults only); a failure
    travels to the trainer with the rollout instead of OpenRLHF's bare None."""
    shard_size = -(-len(queries_list) // len(self.reward_endpoints))
    # Rollouts usually send one query: rotate across calls too, as OpenRLHF does, on a cycle of the plugin's own
    # (OpenRLHF's private one could be renamed by a release, and a failure here is swallowed into reward=None).
    endpoints = vars(self).setdefault("gd2po_endpoint_cycle", itertools.cycle(self.reward_endpoints))

    async def fetch(start: int) -> dict:
        url = next(endpoints)
        payload = {
            key: values[start : start + shard_size]
            for key, values in (("query", queries_list), ("prompts", prompts_list), ("labels", labels_list))
        }
        try:
            return await post_with_retries(url, payload, len(payload["query"]))
        except (RuntimeError, ValueError) as error:  # ValueError: a bad GD2PO_REWARD_* setting
            return failed_rewards(str(error), 1)[0]

    return await asyncio.gather(*(fetch(start) for start in range(0, len(queries_list), shard_size)))


async def _fetch_rewards_via_func(self, queries_list, prompts_list, labels_list):
    """Mirrors ``SingleTurnAgentExecutor._fetch_rewards_via_func``: whatever the user's reward function raises or
    returns instead of a dict is reported with the rollout, not swallowed; an ``async def`` one is awaited."""
    try:
        results = await UPSTREAM["SingleTurnAgentExecutor._fetch_rewards_via_func"](
            self, queries_list, prompts_list, labels_list
        )
        # OpenRLHF runs reward_func in a thread: an ``async def`` one returns its coroutine, awaited here as the
        # reward server awaits it (one contract for both, docs/reward-functions.md).
        results = [await result if inspect.iscoroutine(result) else result for result in results]
    except Exception as error:  # the user's reward function: anything it raises is reported, not swallowed
        message = f"reward function {self.reward_endpoints[0]} raised {type(error).__name__}: {error}"
        return failed_rewards(message, len(queries_list))
    # OpenRLHF reads each result with .get() inside a swallowed try: a bare number or None would vanish there.
    return [
        result
        if isinstance(result, dict)
        else failed_rewards(
            f"reward function {self.reward_endpoints[0]} returned {type(result).__name__} {result!r:.100}: expected "
            "a dict with 'rewards' (and optionally 'scores' and 'extra_logs')",
            1,
        )[0]
        for result in results
    ]
