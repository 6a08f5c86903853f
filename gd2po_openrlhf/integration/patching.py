"""Applies ``openrlhf_patches.PATCHES`` to an OpenRLHF module that just executed: called by the import hook.

Each replacement is the function of the same name in its feature module (imported here, by the name the table
gives); OpenRLHF's original goes to ``openrlhf_patches.UPSTREAM``, where the replacement finds it.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Callable, List, Tuple

from .openrlhf_patches import PATCHES, UPSTREAM
from .targets import TRAINER_MODULE

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
    """Apply the ``PATCHES`` of an executed OpenRLHF module of ``targets.PATCHED_MODULES`` (idempotent)."""
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
