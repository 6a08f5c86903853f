"""Every change the plugin makes to OpenRLHF, each next to the upstream function it replaces.

The import hook calls :func:`patch_module` right after one of ``hook.PATCHED_MODULES`` executes, in whichever process
imports it (the driver, the PPOTrainer actor, the async TrainingActor and GenerateSamplesActor, the vLLM rollout
actors). Each replacement runs OpenRLHF's original (kept in ``UPSTREAM``) and adds the GD²PO part:

| OpenRLHF (0.11.2)                                                     | replacement here                       |
|-----------------------------------------------------------------------|----------------------------------------|
| trainer/ppo_trainer.py: ``RemoteExperienceMaker`` (module name)        | ``experience_maker.GD2POExperienceMaker`` |
| trainer/ppo_trainer.py: ``BasePPOTrainer._compute_rollout_stats``      | ``_compute_rollout_stats``             |
| trainer/ppo_trainer.py: ``BasePPOTrainer.save_logs_and_checkpoints``   | ``save_logs_and_checkpoints``          |
| trainer/ppo_trainer.py: ``BasePPOTrainer.init_checkpoint_states``      | ``init_checkpoint_states``             |
| trainer/ppo_utils/samples_generator.py: ``SamplesGenerator._process_response_into_experience`` | same name  |
| trainer/ppo_utils/samples_generator.py: ``SamplesGenerator._generate_vllm`` | same name (dynamic sampling) |
| utils/agent.py: ``SingleTurnAgentExecutor._fetch_rewards_via_http``    | ``_fetch_rewards_via_http``            |
| utils/agent.py: ``SingleTurnAgentExecutor._fetch_rewards_via_func``    | ``_fetch_rewards_via_func``            |

``WRITTEN_AGAINST`` holds a hash of the source of every OpenRLHF function these replace, override or rely on, as
installed when the plugin was written; ``tests/test_openrlhf_patches.py`` compares them with the installed
OpenRLHF, so that an upgrade names the patches to review. Imports nothing of ``openrlhf.trainer`` at module level:
the vLLM rollout actors import this for the reward client and must not pull in DeepSpeed.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import math
from typing import Callable, Dict, List, Optional, Tuple

import torch
from openrlhf.utils.logging_utils import init_logger

from ..rewards import dimensions_from_payload
from .dynamic_sampling import COUNTS_ATTRIBUTE, GroupTally
from .hook import AGENT_MODULE, SAMPLES_MODULE, TRAINER_MODULE
from .resume import checkpoint_settings, restore_checkpoint_settings
from .reward_client import REWARD_ERROR_KEY, failed_rewards, post_with_retries
from .settings import GD2PO_ESTIMATORS, RunSettings, resolve_settings

logger = init_logger(__name__)


# sha256 (first 16 hex digits) of inspect.getsource() of each OpenRLHF object, in openrlhf 0.11.2.
WRITTEN_AGAINST = {
    # replaced here
    "openrlhf.trainer.ppo_trainer:BasePPOTrainer._compute_rollout_stats": "a8a5c6f3eb23818f",
    "openrlhf.trainer.ppo_trainer:BasePPOTrainer.save_logs_and_checkpoints": "0ea42915023820ea",
    "openrlhf.trainer.ppo_trainer:BasePPOTrainer.init_checkpoint_states": "a4040b46b5ffd283",
    "openrlhf.trainer.ppo_utils.samples_generator:SamplesGenerator._process_response_into_experience": "f99fc0dd86a8ebb5",  # noqa: E501
    "openrlhf.utils.agent:SingleTurnAgentExecutor._fetch_rewards_via_http": "80fa86e093c31474",
    "openrlhf.utils.agent:SingleTurnAgentExecutor._fetch_rewards_via_func": "d95c3341afe015a5",
    "openrlhf.trainer.ppo_utils.samples_generator:SamplesGenerator._generate_vllm": "e31c2c4b19657950",
    # overridden by GD2POExperienceMaker, or the order of calls it relies on
    "openrlhf.trainer.ppo_utils.experience_maker:RemoteExperienceMaker.__init__": "71047508ccbdc2b3",
    "openrlhf.trainer.ppo_utils.experience_maker:RemoteExperienceMaker.make_experience_batch": "d8cad5d9cfb7c012",
    "openrlhf.trainer.ppo_utils.experience_maker:RemoteExperienceMaker.split_rollout_samples": "c7286645b395b71a",
    "openrlhf.trainer.ppo_utils.experience_maker:RemoteExperienceMaker.make_experience": "85db1fe426dec3e6",
    "openrlhf.trainer.ppo_utils.experience_maker:RemoteExperienceMaker.compute_advantages_and_returns": "43a58ae8e1c4aea2",  # noqa: E501
    "openrlhf.trainer.ppo_utils.experience_maker:RemoteExperienceMaker._dispatch_forward": "4339cdd888efc46b",
    "openrlhf.trainer.ppo_trainer:BasePPOTrainer.train_step": "82f2cc733e64f4a4",
    # dynamic sampling: which _generate_vllm call is a training batch, and what a short batch does
    "openrlhf.trainer.ppo_utils.samples_generator:SamplesGenerator.generate_samples": "7bf3f3e95631452b",
    "openrlhf.trainer.ppo_utils.samples_generator:SamplesGenerator.generate_eval_samples": "d5b5ff27b1a7e157",
    # copied field by field by rollout_selection.select_rollouts
    "openrlhf.trainer.ppo_utils.experience:Experience": "97bf8975b9f48f13",
    # settings.parse_launcher_args stops where train() asks for its strategy
    "openrlhf.cli.train_ppo_ray:train": "b0047c66d0497de6",
}

# "Class.method" → OpenRLHF's original, for the replacements to call.
UPSTREAM: Dict[str, Callable] = {}
# (class, method name) of every OpenRLHF method replaced: the unit test walks OpenRLHF's Ray actor classes and
# checks that each of these resolves to the plugin's version there, not to OpenRLHF's original.
PATCHED_METHODS: List[Tuple[type, str]] = []


def ray_actor_classes(module) -> List[type]:
    """The classes Ray instantiates for the ``@ray.remote`` classes defined or imported in ``module``."""
    from ray.actor import ActorClass  # the patched OpenRLHF modules import ray already

    return [
        value.__ray_metadata__.modified_class for value in list(vars(module).values()) if isinstance(value, ActorClass)
    ]


def replace_method(owner: type, name: str, function: Callable, module) -> None:
    """``owner.name = function``, also in every Ray actor class of ``module`` that inherited ``name`` from ``owner``.

    ``@ray.remote`` builds the actor class Ray instantiates (``__ray_metadata__.modified_class``) when the module
    executes, with a wrapped copy of every inherited method (``ray/util/tracing/tracing_helper.py``): patching only
    the base class afterwards changes nothing in the actor process (the sync ``PPOTrainer`` kept OpenRLHF's
    ``_compute_rollout_stats``, so no GD²PO metric reached TensorBoard). Methods patched here are called from inside
    the actor, never as remote methods, so they need no tracing wrapper.
    """
    original = owner.__dict__[name]
    UPSTREAM[f"{owner.__name__}.{name}"] = original
    setattr(owner, name, function)
    for actor_class in ray_actor_classes(module):
        copied = actor_class.__dict__.get(name)
        if copied is not None and inspect.unwrap(copied) is original:
            setattr(actor_class, name, function)
    PATCHED_METHODS.append((owner, name))


def patch_module(module) -> None:
    """Apply the plugin's patches to an executed OpenRLHF module of ``hook.PATCHED_MODULES`` (idempotent)."""
    if getattr(module, "gd2po_patched", False):
        return
    if module.__name__ == TRAINER_MODULE:
        from .experience_maker import GD2POExperienceMaker

        module.RemoteExperienceMaker = GD2POExperienceMaker
        for name in ("_compute_rollout_stats", "save_logs_and_checkpoints", "init_checkpoint_states"):
            replace_method(module.BasePPOTrainer, name, globals()[name], module)
    elif module.__name__ == SAMPLES_MODULE:
        for name in ("_process_response_into_experience", "_generate_vllm"):
            replace_method(module.SamplesGenerator, name, globals()[name], module)
    elif module.__name__ == AGENT_MODULE:
        for name in ("_fetch_rewards_via_http", "_fetch_rewards_via_func"):
            replace_method(module.SingleTurnAgentExecutor, name, globals()[name], module)
    module.gd2po_patched = True


# ---- trainer process: openrlhf/trainer/ppo_trainer.py, BasePPOTrainer ----


def _compute_rollout_stats(self, experiences) -> Dict:
    """Mirrors ``BasePPOTrainer._compute_rollout_stats``, which ``train_step`` calls right after
    ``make_experience_batch``: OpenRLHF's statistics over every generated rollout with a valid reward (not only the
    trained ones, with --gd2po.drop_filtered or dropped groups), plus the step's ``gd2po/*`` metrics."""
    take_step_report = getattr(self.experience_maker, "take_step_report", None)
    report = take_step_report() if take_step_report else None
    stats = UPSTREAM["BasePPOTrainer._compute_rollout_stats"](self, report.generated if report else experiences)
    stats.update(report.metrics if report else {})
    return stats


def save_logs_and_checkpoints(self, global_step, logs_dict=None, client_states=None):
    """Mirrors ``BasePPOTrainer.save_logs_and_checkpoints``: the run's GD²PO settings travel in the actors' DeepSpeed
    client state, saved and loaded with every checkpoint."""
    settings = getattr(self.experience_maker, "settings", None)
    if settings is not None:
        # The run's state beside its settings: --cost.budget's λ (the schedule's position is the global step).
        state = {"constraint_lambda": self.experience_maker.constraint_lambda}
        client_states = {**(client_states or {}), "gd2po": checkpoint_settings(settings), "gd2po_state": state}
    return UPSTREAM["BasePPOTrainer.save_logs_and_checkpoints"](self, global_step, logs_dict, client_states)


def init_checkpoint_states(self):
    """Mirrors ``BasePPOTrainer.init_checkpoint_states``: a resumed gd2po/gdpo run restores the checkpoint's
    settings into the experience maker (``resume.restore_checkpoint_settings``), warning about every difference."""
    states = UPSTREAM["BasePPOTrainer.init_checkpoint_states"](self)
    maker = self.experience_maker
    if getattr(maker, "settings", None) is None or not states.get("global_step"):
        return states  # not a GD²PO run, or not resuming
    maker.completed_steps = states["global_step"]  # where --gd2po.reward_weight_schedule goes on
    if "gd2po" not in states:
        logger.warning(
            "the checkpoint holds no GD²PO settings (saved without the plugin, or by another estimator): "
            "resuming with the command line's"
        )
        return states
    maker.settings, warning = restore_checkpoint_settings(maker.settings, states["gd2po"])
    if warning:
        logger.warning(warning)
    settings = maker.settings
    if settings.cost_budget is not None:
        saved_lambda = states.get("gd2po_state", {}).get("constraint_lambda")
        same_key = states["gd2po"].get("gd2po.constraint_key") == settings.constraint_key
        if saved_lambda is not None and same_key:
            maker.constraint_lambda = min(max(float(saved_lambda), 0.0), settings.lambda_max)
            logger.info(f"--cost.budget: λ of reward/{settings.constraint_key} resumes at {maker.constraint_lambda:g}")
        else:
            maker.constraint_lambda = settings.lambda_init
            logger.warning(
                f"--cost.budget: the checkpoint holds no λ for reward/{settings.constraint_key}: starting from "
                f"--cost.lambda_init {settings.lambda_init:g}"
            )
    logger.info(f"GD²PO settings after resuming: {checkpoint_settings(settings)}")
    return states


# ---- trainer process: openrlhf/trainer/ppo_utils/samples_generator.py, SamplesGenerator ----


def _generator_settings(self) -> Optional[RunSettings]:
    """The run's settings in this samples generator (resolved once); None for OpenRLHF's own estimators."""
    if self.args.algo.advantage.estimator not in GD2PO_ESTIMATORS:
        return None
    if not hasattr(self, "gd2po_settings"):
        self.gd2po_settings = resolve_settings(self.args)
    return self.gd2po_settings


def _generate_vllm(self, dataloader_iter, num_prompts: int, dynamic_filtering, **generate_kwargs):
    """Mirrors ``SamplesGenerator._generate_vllm`` (one batch of prompt groups from the rollout actors): with
    --gd2po.dynamic_sampling, a training batch runs OpenRLHF's own loop with dynamic filtering on, each group judged
    by a ``dynamic_sampling.GroupTally`` and each rejected one replaced by a fresh prompt, drawing at most
    ⌈factor × ``num_prompts``⌉ prompts. At that limit the groups that passed train, with a warning; the dataloader
    is reported exhausted only when it is. The batch's counts ride on its first rollout (``COUNTS_ATTRIBUTE``)."""
    upstream = UPSTREAM["SamplesGenerator._generate_vllm"]
    settings = _generator_settings(self)
    # generate_samples passes its training iterator; generate_eval_samples another one (never resampled).
    training = dataloader_iter is getattr(self, "_dataloader_iter", None)
    if settings is None or not settings.dynamic_sampling or not training:
        return upstream(self, dataloader_iter, num_prompts, dynamic_filtering, **generate_kwargs)
    max_prompts = math.ceil(settings.dynamic_sampling_max_prompts_factor * num_prompts)
    n_samples = generate_kwargs.get("n_samples_per_prompt", self.args.rollout.n_samples_per_prompt)
    tally = self.gd2po_group_tally = GroupTally(settings, n_samples, self.args.algo.dynamic_filtering_range)
    try:
        experiences, consumed, exhausted = upstream(
            self, itertools.islice(dataloader_iter, max_prompts), num_prompts, True, **generate_kwargs
        )
    finally:
        self.gd2po_group_tally = None
    counts = tally.counts
    counts.prompts_consumed = consumed
    at_limit = consumed >= max_prompts
    if at_limit and counts.passed < num_prompts:
        logger.warning(
            f"--gd2po.dynamic_sampling drew its limit of {max_prompts} prompts "
            f"(--gd2po.dynamic_sampling_max_prompts_factor {settings.dynamic_sampling_max_prompts_factor:g} × "
            f"{num_prompts}) and {counts.passed} of {num_prompts} prompt groups passed (pass rate "
            f"{counts.passed / max(counts.judged, 1):.1%}: {counts.rejected_constant} constant, "
            f"{counts.rejected_filtered} filtered, {counts.rejected_bad_reward} with a bad reward): training on the "
            "groups that passed. A batch of fewer rollouts than --train.batch_size leaves DeepSpeed's gradient "
            "accumulation mid-window, as any short batch in OpenRLHF: raise the factor if this recurs"
        )
    if experiences:
        setattr(experiences[0], COUNTS_ATTRIBUTE, counts)
    else:
        logger.warning(
            f"--gd2po.dynamic_sampling: none of {counts.judged} prompt groups passed; this batch trains nothing"
        )
    # islice ends at the limit as if the dataloader had: OpenRLHF would end the epoch there.
    return experiences, consumed, exhausted and not at_limit


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
    settings = _generator_settings(self)
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
    except ValueError as error:
        if settings.on_bad_reward != "drop_group":
            raise
        # NaN marks the rollout: the experience maker drops its whole group from the step.
        logger.warning(f"bad reward, its prompt group will be dropped (--gd2po.on_bad_reward drop_group): {error}")
        values = {key: math.nan for key in remote_keys}
        response = {**response, "reward": 0.0, "scores": 0.0, "extra_logs": {}}
    # Until the model-group dimensions arrive, reward/score are the weighted sum of these dimensions.
    partial_total = sum(dim.weight * values[dim.key] for dim in remote)
    response = dict(response)
    # A dict, a list of one (batched reward files and servers) or nothing becomes that scalar sum.
    for field in ("reward", "scores"):
        if isinstance(response.get(field), bool) or not isinstance(response.get(field), (int, float)):
            response[field] = partial_total
    response["extra_logs"] = {
        k: v for k, v in (response.get("extra_logs") or {}).items() if not k.startswith("reward/")
    }
    experience = upstream(self, response, **generate_kwargs)
    for key, value in values.items():
        experience.info[f"reward/{key}"] = torch.tensor([value], dtype=torch.float32)
    tally = getattr(self, "gd2po_group_tally", None)
    if tally is not None:  # a --gd2po.dynamic_sampling training batch: _generate_vllm tests the group's scores
        tally.add(experience)
    return experience


# ---- vLLM rollout actors: openrlhf/utils/agent.py, SingleTurnAgentExecutor ----


async def _fetch_rewards_via_http(self, queries_list, prompts_list, labels_list):
    """Mirrors ``SingleTurnAgentExecutor._fetch_rewards_via_http``: OpenRLHF's sharding over the reward servers, each
    shard posted by ``reward_client.post_with_retries`` (bounded retries of transient faults only); a failure
    travels to the trainer with the rollout instead of OpenRLHF's bare None."""
    shard_size = -(-len(queries_list) // len(self.reward_endpoints))

    async def fetch(start: int) -> dict:
        url = next(self._reward_endpoint_cycle)  # rollouts usually send one query: rotate across calls too
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
    returns instead of a dict is reported with the rollout, not swallowed."""
    try:
        results = await UPSTREAM["SingleTurnAgentExecutor._fetch_rewards_via_func"](
            self, queries_list, prompts_list, labels_list
        )
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
