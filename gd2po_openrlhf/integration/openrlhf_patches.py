"""Every change the plugin makes to OpenRLHF: one table, ``PATCHES``, that drives the patching and the drift guard.

The import hook applies the table (``patching.patch_module``) right after one of ``targets.PATCHED_MODULES``
executes, in whichever process imports it (the driver, the PPOTrainer actor, the async TrainingActor and
GenerateSamplesActor, the vLLM rollout actors). Each replacement lives with its feature, under the name of the method
it replaces, and calls OpenRLHF's original (kept in ``UPSTREAM``); besides the methods, ``RemoteExperienceMaker`` in
``openrlhf.trainer.ppo_trainer`` becomes ``experience_maker.GD2POExperienceMaker``.

``WRITTEN_AGAINST`` holds a hash of the source of every OpenRLHF function these replace (from ``PATCHES``), override
or rely on (``RELIED_ON``), as in the OpenRLHF release they were written against. Every gd2po/gdpo launch and dry
run compares them with the installed OpenRLHF's files (``check_drift``, called by ``argparse_patch``) and warns once
per changed function, naming the plugin features that depend on it; ``GD2PO_OPENRLHF_DRIFT=refuse`` refuses instead.
Imports no feature module and nothing of ``openrlhf``: the features import ``UPSTREAM`` from here, and
``patching`` (which imports the features) fills it.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib
import importlib.metadata
import importlib.util
import os
import pathlib
import sys
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

from .targets import AGENT_MODULE, ASYNC_TRAINER_MODULE, SAMPLES_MODULE, TRAINER_MODULE


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

# What each plugin module does for a user: a drift warning names the features a changed OpenRLHF function feeds.
FEATURES = {
    "experience_maker": "the gd2po/gdpo advantages, their metrics and the --gd2po.reward_model groups",
    "resume": "resuming a gd2po/gdpo run (--ckpt.load_enable) with its saved settings",
    "remote_rewards": "rewards from a reward file, server or agent (--reward.remote_url), with their errors",
    "dynamic_sampling": "--gd2po.dynamic_sampling",
    "rollout_selection": "--gd2po.drop_filtered and the balanced steps over data-parallel ranks",
    "launcher_args": "the demo's, benchmarks' and tests' parse of the launcher's arguments",
    "demo": "the CPU demo (python -m gd2po_openrlhf.demo)",
}


class Relied(NamedTuple):
    """An OpenRLHF function or class the plugin overrides in a subclass, calls, or whose behaviour it relies on
    without replacing it; ``written_against`` as in :class:`Patch`, ``features`` keys of ``FEATURES``."""

    written_against: str
    features: Tuple[str, ...]


EXPERIENCE_MAKER = "openrlhf.trainer.ppo_utils.experience_maker:RemoteExperienceMaker"
SAMPLES_GENERATOR = f"{SAMPLES_MODULE}:SamplesGenerator"
RELIED_ON: Dict[str, Relied] = {
    # overridden by GD2POExperienceMaker, or the order of calls it relies on
    f"{EXPERIENCE_MAKER}.__init__": Relied("71047508ccbdc2b3", ("experience_maker",)),
    f"{EXPERIENCE_MAKER}.make_experience_batch": Relied("d8cad5d9cfb7c012", ("experience_maker",)),
    f"{EXPERIENCE_MAKER}.split_rollout_samples": Relied("c7286645b395b71a", ("experience_maker", "dynamic_sampling")),
    f"{EXPERIENCE_MAKER}.make_experience": Relied("85db1fe426dec3e6", ("experience_maker",)),
    f"{EXPERIENCE_MAKER}.compute_advantages_and_returns": Relied("43a58ae8e1c4aea2", ("experience_maker",)),
    f"{EXPERIENCE_MAKER}._dispatch_forward": Relied("4339cdd888efc46b", ("experience_maker",)),
    f"{EXPERIENCE_MAKER}._flatten_results": Relied("ab640fa5d44a07b5", ("experience_maker",)),
    f"{TRAINER_MODULE}:BasePPOTrainer.train_step": Relied("82f2cc733e64f4a4", ("experience_maker",)),
    # the model groups' actors: created, initialised and called as OpenRLHF's reward model group is
    "openrlhf.trainer.ray.launcher:RayActorGroup.__init__": Relied("b06dd4c1c896a6c6", ("experience_maker",)),
    "openrlhf.trainer.ray.launcher:RayActorGroup.async_run_method_batch": Relied(
        "c0638bfdc78bfb48", ("experience_maker", "rollout_selection")
    ),
    "openrlhf.trainer.ray.launcher:RewardModelActor.forward": Relied("897e4928d69c366d", ("experience_maker",)),
    # the policy's update: zero-advantage fillers, the info keys its all_reduce averages, PolicyLoss's return arity
    "openrlhf.trainer.ray.ppo_actor:ActorPPOTrainer.training_step": Relied(
        "ffa1acd4a5a21e37", ("rollout_selection", "experience_maker")
    ),
    "openrlhf.models.loss:PolicyLoss.forward": Relied("207b2f9506c3bea6", ("demo",)),
    "openrlhf.trainer.ppo_utils.kl_controller:FixedKLController.__init__": Relied("33b45ff28415feb5", ("demo",)),
    # dynamic sampling: which _generate_vllm call is a training batch (_dataloader_iter), what a short batch does
    f"{SAMPLES_GENERATOR}.__init__": Relied("483b8aa85d702619", ("dynamic_sampling", "demo")),
    f"{SAMPLES_GENERATOR}.generate_samples": Relied("7bf3f3e95631452b", ("dynamic_sampling",)),
    f"{SAMPLES_GENERATOR}.generate_eval_samples": Relied("d5b5ff27b1a7e157", ("dynamic_sampling",)),
    # where reward_endpoints and reward_func, which the reward replacements read, are set
    f"{AGENT_MODULE}:SingleTurnAgentExecutor.__init__": Relied("7053d9b0bb0384e9", ("remote_rewards", "demo")),
    # copied field by field by rollout_selection.select_rollouts; padded as OpenRLHF pads
    "openrlhf.trainer.ppo_utils.experience:Experience": Relied("97bf8975b9f48f13", ("rollout_selection",)),
    "openrlhf.utils.utils:zero_pad_sequences": Relied("7c7b9c792d9dacac", ("rollout_selection",)),
    # launcher_args.parse_launcher_args stops where train() asks for its strategy
    "openrlhf.cli.train_ppo_ray:train": Relied("b0047c66d0497de6", ("launcher_args",)),
    "openrlhf.utils.utils:get_strategy": Relied("54dba6adc63fe0bb", ("launcher_args",)),
    "openrlhf.utils.logging_utils:init_logger": Relied("292dad6c1658436b", ("experience_maker", "remote_rewards")),
}
# Private OpenRLHF attributes the plugin reads, with the function that sets them (tests/test_openrlhf_patches.py
# scans the package for private names OpenRLHF defines, so that none is read unguarded).
PRIVATE_ATTRIBUTES = {
    "_dataloader_iter": f"{SAMPLES_GENERATOR}.generate_samples",
}
WRITTEN_AGAINST = {f"{p.module}:{p.owner}.{p.method}": p.written_against for p in PATCHES} | {
    name: relied.written_against for name, relied in RELIED_ON.items()
}
# The OpenRLHF release the hashes were taken from.
TESTED_OPENRLHF = "0.11.2"
# GD2PO_OPENRLHF_DRIFT=refuse turns a drift warning into a refusal at launch.
DRIFT_POLICY_VARIABLE = "GD2PO_OPENRLHF_DRIFT"


def depending_features(name: str) -> Tuple[str, ...]:
    """The ``FEATURES`` descriptions of what depends on the OpenRLHF function ``name`` (a ``WRITTEN_AGAINST`` key)."""
    features = [p.feature for p in PATCHES if f"{p.module}:{p.owner}.{p.method}" == name]
    features += list(RELIED_ON[name].features) if name in RELIED_ON else []
    return tuple(FEATURES[feature] for feature in dict.fromkeys(features))


def installed_source(name: str) -> Optional[str]:
    """The source text of ``module:Qualified.name`` in the installed OpenRLHF, as ``inspect.getsource`` gives it,
    read from its file without importing it (no torch or DeepSpeed at parse time); None if it is gone."""
    module, qualified = name.split(":")
    spec = importlib.util.find_spec("openrlhf")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = pathlib.Path(list(spec.submodule_search_locations)[0]).joinpath(*module.split(".")[1:])
    path = path.with_suffix(".py") if path.with_suffix(".py").is_file() else path / "__init__.py"
    try:
        text = path.read_text(encoding="utf-8")
        body = ast.parse(text).body
    except (OSError, SyntaxError, UnicodeDecodeError):
        return None
    node = None
    for part in qualified.split("."):
        defined = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
        node = next((n for n in body if isinstance(n, defined) and n.name == part), None)
        if node is None:
            return None
        body = node.body
    first = min([decorator.lineno for decorator in node.decorator_list] + [node.lineno])
    return "".join(text.splitlines(keepends=True)[first - 1 : node.end_lineno])


def source_hash(source: str) -> str:
    return hashlib.sha256(source.encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=None)
def source_drift() -> Tuple[str, ...]:
    """The ``WRITTEN_AGAINST`` names whose installed source differs from (or lacks) the one the plugin was written
    against; computed once per process."""
    drifted = []
    for name, written_against in WRITTEN_AGAINST.items():
        source = installed_source(name)
        if source is None or source_hash(source) != written_against:
            drifted.append(name)
    return tuple(drifted)


def installed_openrlhf() -> str:
    try:
        return importlib.metadata.version("openrlhf")
    except importlib.metadata.PackageNotFoundError:
        return "(no metadata)"


def drift_warnings() -> List[str]:
    """One line per drifted OpenRLHF function, naming the plugin features that depend on it."""
    version = installed_openrlhf()
    return [
        f"warning: OpenRLHF's {name} "
        + ("is gone" if installed_source(name) is None else "changed")
        + f" in the installed openrlhf {version} (gd2po-openrlhf was tested with {TESTED_OPENRLHF}): check "
        + "; ".join(depending_features(name))
        for name in source_drift()
    ]


def check_drift(stream=None) -> Optional[str]:
    """Print the drift warnings once per process (to ``stream``, stderr by default). Returns the refusal message
    when ``GD2PO_OPENRLHF_DRIFT=refuse`` and a function drifted, else None."""
    policy = os.environ.get(DRIFT_POLICY_VARIABLE, "warn").strip().lower() or "warn"
    if policy not in ("warn", "refuse"):
        return f"{DRIFT_POLICY_VARIABLE}={policy!r}: expected 'warn' (the default) or 'refuse'"
    warnings = drift_warnings()
    if warnings and policy == "refuse":
        return (
            f"{len(warnings)} OpenRLHF functions the plugin relies on changed ({', '.join(source_drift())}), and "
            f"{DRIFT_POLICY_VARIABLE}=refuse: install openrlhf=={TESTED_OPENRLHF}, or unset it to run with warnings"
        )
    if warnings and not getattr(check_drift, "printed", False):
        check_drift.printed = True
        print("\n".join(warnings), file=stream or sys.stderr, flush=True)
    return None


def upstream(name: str) -> Callable:
    """OpenRLHF's original of the replaced ``Class.method`` ``name``. A process that runs a Ray actor class sent
    by value (``GenerateSamplesActor``) never imported the module it came from: importing it here lets the import
    hook patch it (``patching.patch_module``), which keeps the original."""
    if name not in UPSTREAM:
        patch = next(p for p in PATCHES if f"{p.owner}.{p.method}" == name)
        importlib.import_module(patch.module)
        if name not in UPSTREAM:
            raise RuntimeError(
                f"{patch.module} was imported without the plugin's import hook, so {name} was never patched: "
                "run with gd2po-openrlhf installed and GD2PO_DISABLE unset, or call gd2po_openrlhf.integration.hook"
                ".install() before importing OpenRLHF"
            )
    return UPSTREAM[name]


# "Class.method" → OpenRLHF's original, for the replacements to call (``patching.replace_method`` fills it).
UPSTREAM: Dict[str, Callable] = {}


def main() -> int:
    """``python -m gd2po_openrlhf.integration.openrlhf_patches``: the drift report of the installed OpenRLHF (exit 1
    if a function the plugin relies on changed), as ``make test-openrlhf`` prints it."""
    drifted = source_drift()
    print(
        f"openrlhf {installed_openrlhf()}: {len(WRITTEN_AGAINST)} functions the plugin replaces or relies on, "
        f"{len(drifted)} changed since {TESTED_OPENRLHF}"
    )
    for line in drift_warnings():
        print(line)
    return 1 if drifted else 0


if __name__ == "__main__":
    sys.exit(main())
