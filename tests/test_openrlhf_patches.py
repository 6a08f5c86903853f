"""integration/openrlhf_patches.py: every OpenRLHF method the plugin replaces is the one Ray's actor classes run,
and the OpenRLHF sources the patches were written against have not drifted.

``@ray.remote`` copies inherited methods into the class Ray instantiates (``__ray_metadata__.modified_class``)
when the module executes; the sync PPOTrainer actor once kept OpenRLHF's originals of three patched methods
while tests of ``BasePPOTrainer`` passed. This walks the actor classes themselves.
"""

import ast
import importlib
import importlib.util
import inspect
import pathlib
import re
import shutil
import subprocess
import sys

import pytest
from gd2po_testing import launcher_subprocess

ACTOR_MODULES = (
    "openrlhf.trainer.ppo_trainer",  # PPOTrainer (sync)
    "openrlhf.trainer.ppo_trainer_async",  # TrainingActor, GenerateSamplesActor, PPOTrainerAsync
    "openrlhf.trainer.ray.vllm_engine",  # RolloutRayActor (runs SingleTurnAgentExecutor)
    "openrlhf.trainer.ray.launcher",  # ReferenceModelActor, RewardModelActor
    "openrlhf.trainer.ray.ppo_actor",  # PolicyModelActor
    "openrlhf.trainer.ray.ppo_critic",  # CriticModelActor
    "openrlhf.utils.agent",
)
EXPECTED_PATCHES = {
    ("BasePPOTrainer", "_compute_rollout_stats"),
    ("BasePPOTrainer", "save_logs_and_checkpoints"),
    ("BasePPOTrainer", "init_checkpoint_states"),
    ("SamplesGenerator", "_process_response_into_experience"),
    ("SamplesGenerator", "_generate_vllm"),
    ("SingleTurnAgentExecutor", "_fetch_rewards_via_http"),
    ("SingleTurnAgentExecutor", "_fetch_rewards_via_func"),
    ("GenerateSamplesActor", "load_state_dict"),
}


def test_every_patched_method_resolves_to_the_plugin_in_every_ray_actor_class():
    modules = [importlib.import_module(name) for name in ACTOR_MODULES]
    from gd2po_openrlhf.integration.patching import PATCHED_METHODS, ray_actor_classes

    assert {(owner.__name__, name) for owner, name in PATCHED_METHODS} == EXPECTED_PATCHES
    checked = []
    for module in modules:
        for actor_class in ray_actor_classes(module):
            for owner, name in PATCHED_METHODS:
                if owner not in actor_class.__mro__:
                    continue
                resolved = inspect.unwrap(getattr(actor_class, name))
                assert resolved is owner.__dict__[name], (
                    f"Ray actor class {module.__name__}.{actor_class.__name__} runs OpenRLHF's "
                    f"{owner.__name__}.{name}, "
                    "not the plugin's"
                )
                checked.append(f"{actor_class.__name__}.{name}")
    # The sync PPOTrainer and the async TrainingActor both inherit the three trainer patches; the async generator
    # actor is patched itself.
    assert sorted(checked) == sorted(
        [
            f"{actor}.{name}"
            for actor in ("PPOTrainer", "TrainingActor")
            for name in ("_compute_rollout_stats", "save_logs_and_checkpoints", "init_checkpoint_states")
        ]
        + ["GenerateSamplesActor.load_state_dict"]
    )


def imported_source_hashes() -> dict:
    """sha256 (16 hex digits) of ``inspect.getsource`` of each ``WRITTEN_AGAINST`` entry, imported; a method the
    plugin replaced is read from its original, kept in ``UPSTREAM``."""
    from gd2po_openrlhf.integration.openrlhf_patches import UPSTREAM, WRITTEN_AGAINST, source_hash
    from gd2po_openrlhf.integration.patching import plain_class

    hashes = {}
    for name in WRITTEN_AGAINST:
        module_name, qualified = name.split(":")
        owner, obj = None, importlib.import_module(module_name)
        for part in qualified.split("."):
            owner, obj = plain_class(obj), getattr(plain_class(obj), part)
        if getattr(obj, "__module__", "").startswith("gd2po_openrlhf"):  # replaced by the plugin
            obj = UPSTREAM[f"{owner.__name__}.{qualified.rsplit('.', 1)[-1]}"]
        hashes[name] = source_hash(inspect.getsource(obj))
    return hashes


def test_the_openrlhf_sources_the_patches_mirror_are_the_ones_they_were_written_against():
    from gd2po_openrlhf.integration.openrlhf_patches import (
        WRITTEN_AGAINST,
        installed_source,
        source_drift,
        source_hash,
    )

    for module in ACTOR_MODULES + ("openrlhf.trainer.ppo_utils.samples_generator", "openrlhf.cli.train_ppo_ray"):
        importlib.import_module(module)
    imported = imported_source_hashes()
    # The launch-time guard reads the files without importing them: the same text inspect gives.
    assert {name: source_hash(installed_source(name)) for name in WRITTEN_AGAINST} == imported
    drifted = [name for name, digest in imported.items() if WRITTEN_AGAINST[name] != digest]
    assert not drifted, (
        "OpenRLHF changed the source of functions the plugin replaces, overrides or relies on; review the "
        f"matching code in gd2po_openrlhf/integration/ and update WRITTEN_AGAINST: {drifted}"
    )
    assert source_drift() == ()


def test_every_guarded_function_names_the_features_that_depend_on_it():
    from gd2po_openrlhf.integration import openrlhf_patches as patches

    used = {p.feature for p in patches.PATCHES} | {f for r in patches.RELIED_ON.values() for f in r.features}
    assert used == set(patches.FEATURES)  # no feature without a guarded function, no unknown one
    assert all(patches.depending_features(name) for name in patches.WRITTEN_AGAINST)
    assert set(patches.PRIVATE_ATTRIBUTES.values()) <= set(patches.WRITTEN_AGAINST)


# ---- the scan: every OpenRLHF name the package reads is guarded

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "gd2po_openrlhf"
PRIVATE_NAME = re.compile(r"""(?:\.|["'])(_[a-z]\w+)\b""")


def openrlhf_names_read(sources: dict) -> set:
    """``(module, name)`` of every OpenRLHF name the ``{path: text}`` sources import or read off an imported
    OpenRLHF module (``from openrlhf.x import Name``; ``import openrlhf.x as m`` then ``m.Name``)."""
    names = set()
    for text in sources.values():
        tree = ast.parse(text)
        modules = {}  # local name -> OpenRLHF module
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("openrlhf"):
                names |= {(node.module, alias.name) for alias in node.names}
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("openrlhf"):
                        modules[alias.asname or alias.name] = alias.name
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute):
                dotted = ast.unparse(node.value)
                if dotted in modules:
                    names.add((modules[dotted], node.attr))
    return names


def unguarded_openrlhf_names(sources: dict) -> list:
    """The OpenRLHF functions and classes ``sources`` read that no ``WRITTEN_AGAINST`` entry guards (an entry
    guards its object and, for a class, the class itself), and the private OpenRLHF attributes they read that are
    neither a guarded method nor in ``PRIVATE_ATTRIBUTES``."""
    from gd2po_openrlhf.integration.openrlhf_patches import PRIVATE_ATTRIBUTES, WRITTEN_AGAINST
    from gd2po_openrlhf.integration.patching import plain_class

    guarded = set()
    for name in WRITTEN_AGAINST:
        module_name, qualified = name.split(":")
        obj = plain_class(getattr(importlib.import_module(module_name), qualified.split(".")[0]))
        guarded.add(obj)
    unguarded = []
    for module_name, name in sorted(openrlhf_names_read(sources)):
        obj = getattr(importlib.import_module(module_name), name)
        if inspect.ismodule(obj) or getattr(obj, "__module__", "").startswith("gd2po_openrlhf"):
            continue  # a submodule (its names are scanned where read), or the plugin's own replacement
        if plain_class(obj) not in guarded:
            unguarded.append(f"{module_name}.{name}")
    upstream_root = pathlib.Path(importlib.util.find_spec("openrlhf").submodule_search_locations[0])
    defined = set()
    for path in upstream_root.rglob("*.py"):
        defined |= set(re.findall(r"(?:self\.|def |^\s*)(_[a-z]\w+)\s*[=(]", path.read_text(), re.M))
    methods = {name.rsplit(".", 1)[-1] for name in WRITTEN_AGAINST}
    for text in sources.values():
        for private in sorted(set(PRIVATE_NAME.findall(text)) & defined - methods - set(PRIVATE_ATTRIBUTES)):
            unguarded.append(f"private attribute {private}")
    return unguarded


def package_sources() -> dict:
    return {str(path): path.read_text() for path in PACKAGE.rglob("*.py")}


def test_every_openrlhf_name_the_package_reads_is_guarded_against_drift():
    sources = package_sources()
    read = openrlhf_names_read(sources)
    # the scan sees what the package reads (so that an empty scan cannot pass)
    assert {
        ("openrlhf.utils.utils", "zero_pad_sequences"),
        ("openrlhf.trainer.ppo_trainer", "SamplesGenerator"),
    } <= read
    assert unguarded_openrlhf_names(sources) == []


def test_the_scan_fails_when_an_unguarded_openrlhf_name_is_added():
    added = {
        "new_feature.py": (
            "import openrlhf.trainer.ppo_utils.samples_generator as generator\n"
            "from openrlhf.utils.deepspeed import DeepspeedStrategy\n"
            "def f(self):\n"
            "    return generator.SamplesGenerator, self._eval_dataloader_iter\n"
        )
    }
    assert unguarded_openrlhf_names({**package_sources(), **added}) == [
        "openrlhf.utils.deepspeed.DeepspeedStrategy",
        "private attribute _eval_dataloader_iter",
    ]


# ---- drift at launch: a copy of OpenRLHF with one relied-on function changed


@pytest.fixture(scope="module")
def drifted_openrlhf(tmp_path_factory) -> pathlib.Path:
    """A copy of the installed OpenRLHF whose ``RemoteExperienceMaker.compute_advantages_and_returns`` has one
    more line and whose ``SingleTurnAgentExecutor.__init__`` is renamed away; nothing is installed."""
    root = tmp_path_factory.mktemp("drifted")
    source = pathlib.Path(importlib.util.find_spec("openrlhf").submodule_search_locations[0])
    shutil.copytree(source, root / "openrlhf", ignore=shutil.ignore_patterns("__pycache__"))
    maker = root / "openrlhf" / "trainer" / "ppo_utils" / "experience_maker.py"
    docstring = '"""Compute shaped rewards, advantages, and returns for a batch of experiences."""'
    assert maker.read_text().count(docstring) == 1
    maker.write_text(maker.read_text().replace(docstring, docstring + "\n        experiences = list(experiences)"))
    agent = root / "openrlhf" / "utils" / "agent.py"
    agent.write_text(
        agent.read_text().replace("        self._reward_endpoint_cycle =", "        self._endpoints =", 1)
    )
    return root


DRIFT_FLAGS = ["--advantage_estimator", "gd2po", "--gd2po.reward_keys", "a", "--rollout.n_samples_per_prompt", "4"]


@pytest.mark.subprocess
def test_a_launch_against_a_changed_openrlhf_warns_naming_the_function_and_the_feature(drifted_openrlhf, reward_file):
    env = {"PYTHONPATH": str(drifted_openrlhf), "GD2PO_DRY_RUN": "1"}
    result = launcher_subprocess(DRIFT_FLAGS + ["--reward.remote_url", reward_file], env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    warnings = [line for line in result.stderr.splitlines() if "gd2po-openrlhf was tested with" in line]
    assert len(warnings) == 2, result.stderr[-3000:]
    assert (
        "warning: OpenRLHF's openrlhf.trainer.ppo_utils.experience_maker:RemoteExperienceMaker."
        "compute_advantages_and_returns changed in the installed openrlhf 0.11.2 (gd2po-openrlhf was tested with "
        "0.11.2): check the gd2po/gdpo advantages, their metrics and the --gd2po.reward_model groups" in warnings
    )
    assert any(
        "openrlhf.utils.agent:SingleTurnAgentExecutor.__init__ changed" in line
        and "rewards from a reward file, server or agent (--reward.remote_url)" in line
        for line in warnings
    )
    assert "GD²PO configuration" in result.stdout  # the dry run went on

    refused = launcher_subprocess(
        DRIFT_FLAGS + ["--reward.remote_url", reward_file], env={**env, "GD2PO_OPENRLHF_DRIFT": "refuse"}
    )
    assert refused.returncode == 2
    assert refused.stderr.splitlines()[-2].endswith(
        "2 OpenRLHF functions the plugin relies on changed (openrlhf.trainer.ppo_utils.experience_maker:"
        "RemoteExperienceMaker.compute_advantages_and_returns, openrlhf.utils.agent:SingleTurnAgentExecutor.__init__"
        "), and GD2PO_OPENRLHF_DRIFT=refuse: install openrlhf==0.11.2, or unset it to run with warnings"
    )

    # the installed OpenRLHF: silent
    clean = launcher_subprocess(DRIFT_FLAGS + ["--reward.remote_url", reward_file], env={"GD2PO_DRY_RUN": "1"})
    assert clean.returncode == 0 and "gd2po-openrlhf was tested with" not in clean.stderr


# ---- resume in a process that never imported ppo_trainer_async (Ray sends GenerateSamplesActor by value)


@pytest.mark.subprocess
def test_the_async_generators_load_state_dict_runs_openrlhfs_own_method():
    script = """
import sys
from types import SimpleNamespace
from gd2po_openrlhf.integration import resume
from gd2po_openrlhf.integration.openrlhf_patches import UPSTREAM
assert "openrlhf.trainer.ppo_trainer_async" not in sys.modules and not UPSTREAM
loaded = []
actor = SimpleNamespace(
    samples_generator=SimpleNamespace(), prompts_dataloader=SimpleNamespace(load_state_dict=loaded.append)
)
resume.load_state_dict(actor, {"consumed": 12, resume.SETTINGS_KEY: "the settings"})
original = UPSTREAM["GenerateSamplesActor.load_state_dict"]
print(actor.samples_generator.gd2po_settings, loaded, original.__module__, original.__qualname__)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines()[-1] == (
        "the settings [{'consumed': 12}] openrlhf.trainer.ppo_trainer_async GenerateSamplesActor.load_state_dict"
    )
