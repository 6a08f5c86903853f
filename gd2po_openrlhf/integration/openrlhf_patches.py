"""Every change the plugin makes to OpenRLHF: one table, ``PATCHES``, that drives the patching and the drift guard.

The import hook calls :func:`patch_module` right after one of ``hook.PATCHED_MODULES`` executes, in whichever process
imports it (the driver, the PPOTrainer actor, the async TrainingActor and GenerateSamplesActor, the vLLM rollout
actors). Each replacement lives with its feature, under the name of the method it replaces, and calls OpenRLHF's
original (kept in ``UPSTREAM``); besides the methods, ``RemoteExperienceMaker`` in ``openrlhf.trainer.ppo_trainer``
becomes ``experience_maker.GD2POExperienceMaker``.

``WRITTEN_AGAINST`` holds a hash of the source of every OpenRLHF function these replace (from ``PATCHES``), override
or rely on (``RELIED_ON``), as installed when the plugin was written; ``tests/test_openrlhf_patches.py`` compares
them with the installed OpenRLHF, so that an upgrade names the patches to review. Imports no feature module and
nothing of ``openrlhf`` at module level: the features import ``UPSTREAM`` from here.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Callable, Dict, List, NamedTuple, Tuple

from .hook import AGENT_MODULE, ASYNC_TRAINER_MODULE, SAMPLES_MODULE, TRAINER_MODULE


class Patch(NamedTuple):
    """OpenRLHF's ``module:owner.method`` is replaced by the function of the same name in ``integration.<feature>``;
    ``written_against``: sha256 (first 16 hex digits) of ``inspect.getsource`` of the original in openrlhf 0.11.2."""

    module: str
    owner: str
    method: str
    feature: str
    written_against: str


PATCHES: Tuple[Patch, ...] = (
    Patch(TRAINER_MODULE, "BasePPOTrainer", "_compute_rollout_stats", "experience_maker", "a8a5c6f3eb23818f"),
    Patch(TRAINER_MODULE, "BasePPOTrainer", "save_logs_and_checkpoints", "resume", "0ea42915023820ea"),
    Patch(TRAINER_MODULE, "BasePPOTrainer", "init_checkpoint_states", "resume", "a4040b46b5ffd283"),
    Patch(
        SAMPLES_MODULE, "SamplesGenerator", "_process_response_into_experience", "remote_rewards", "f99fc0dd86a8ebb5"
    ),
    Patch(SAMPLES_MODULE, "SamplesGenerator", "_generate_vllm", "dynamic_sampling", "e31c2c4b19657950"),
    Patch(AGENT_MODULE, "SingleTurnAgentExecutor", "_fetch_rewards_via_http", "remote_rewards", "80fa86e093c31474"),
    Patch(AGENT_MODULE, "SingleTurnAgentExecutor", "_fetch_rewards_via_func", "remote_rewards", "d95c3341afe015a5"),
    Patch(ASYNC_TRAINER_MODULE, "GenerateSamplesActor", "load_state_dict", "resume", "285d0067475979c1"),
)

# The same hashes of what the plugin overrides in a subclass or relies on without replacing it.
RELIED_ON = {
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
    # launcher_args.parse_launcher_args stops where train() asks for its strategy
    "openrlhf.cli.train_ppo_ray:train": "b0047c66d0497de6",
}
WRITTEN_AGAINST = {f"{p.module}:{p.owner}.{p.method}": p.written_against for p in PATCHES} | RELIED_ON

# "Class.method" → OpenRLHF's original, for the replacements to call.
UPSTREAM: Dict[str, Callable] = {}
# (class, method name) of every OpenRLHF method replaced: the unit test walks OpenRLHF's Ray actor classes and
# checks that each of these resolves to the plugin's version there, not to OpenRLHF's original.
PATCHED_METHODS: List[Tuple[type, str]] = []


def plain_class(value) -> type:
    """The class a ``@ray.remote`` class was defined as (``value`` itself for a plain class)."""
    metadata = getattr(value, "__ray_metadata__", None)
    return metadata.modified_class.__ray_actor_class__ if metadata is not None else value


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
    """Apply the ``PATCHES`` of an executed OpenRLHF module of ``hook.PATCHED_MODULES`` (idempotent)."""
    if getattr(module, "gd2po_patched", False):
        return
    if module.__name__ == TRAINER_MODULE:
        from .experience_maker import GD2POExperienceMaker

        module.RemoteExperienceMaker = GD2POExperienceMaker
    for patch in PATCHES:
        if patch.module == module.__name__:
            feature = importlib.import_module(f"{__package__}.{patch.feature}")
            owner = plain_class(getattr(module, patch.owner))
            replace_method(owner, patch.method, getattr(feature, patch.method), module)
    module.gd2po_patched = True
