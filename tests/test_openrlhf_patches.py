"""integration/openrlhf_patches.py: every OpenRLHF method the plugin replaces is the one Ray's actor classes run,
and the OpenRLHF sources the patches were written against have not drifted.

``@ray.remote`` copies inherited methods into the class Ray instantiates (``__ray_metadata__.modified_class``)
when the module executes; the sync PPOTrainer actor once kept OpenRLHF's originals of three patched methods
while tests of ``BasePPOTrainer`` passed. This walks the actor classes themselves.
"""

import hashlib
import importlib
import inspect

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
    from gd2po_openrlhf.integration.openrlhf_patches import PATCHED_METHODS, ray_actor_classes

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


def upstream_source_hashes() -> dict:
    """sha256 (16 hex digits) of the installed OpenRLHF source of each ``WRITTEN_AGAINST`` entry; a method the
    plugin replaced is read from its original, kept in ``UPSTREAM``."""
    from gd2po_openrlhf.integration.openrlhf_patches import UPSTREAM, WRITTEN_AGAINST, plain_class

    hashes = {}
    for name in WRITTEN_AGAINST:
        module_name, qualified = name.split(":")
        owner, obj = None, importlib.import_module(module_name)
        for part in qualified.split("."):
            owner, obj = plain_class(obj), getattr(plain_class(obj), part)
        if getattr(obj, "__module__", "").startswith("gd2po_openrlhf"):  # replaced by the plugin
            obj = UPSTREAM[f"{owner.__name__}.{qualified.rsplit('.', 1)[-1]}"]
        hashes[name] = hashlib.sha256(inspect.getsource(obj).encode()).hexdigest()[:16]
    return hashes


def test_the_openrlhf_sources_the_patches_mirror_are_the_ones_they_were_written_against():
    from gd2po_openrlhf.integration.openrlhf_patches import WRITTEN_AGAINST

    for module in ACTOR_MODULES + ("openrlhf.trainer.ppo_utils.samples_generator", "openrlhf.cli.train_ppo_ray"):
        importlib.import_module(module)
    drifted = [name for name, digest in upstream_source_hashes().items() if WRITTEN_AGAINST[name] != digest]
    assert not drifted, (
        "OpenRLHF changed the source of functions the plugin replaces, overrides or relies on; review the "
        f"matching code in gd2po_openrlhf/integration/ and update WRITTEN_AGAINST: {drifted}"
    )


def test_the_drift_guard_sees_a_changed_upstream_function(monkeypatch):
    import openrlhf.trainer.ppo_utils.experience_maker as experience_maker

    def compute_advantages_and_returns(self, experiences):  # an "upgraded" OpenRLHF
        return experiences

    monkeypatch.setattr(
        experience_maker.RemoteExperienceMaker, "compute_advantages_and_returns", compute_advantages_and_returns
    )
    from gd2po_openrlhf.integration.openrlhf_patches import WRITTEN_AGAINST

    name = "openrlhf.trainer.ppo_utils.experience_maker:RemoteExperienceMaker.compute_advantages_and_returns"
    assert upstream_source_hashes()[name] != WRITTEN_AGAINST[name]
