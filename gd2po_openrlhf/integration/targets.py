"""What the import hook reads at every interpreter start, so nothing but these names and ``os`` here: the OpenRLHF
modules the plugin watches (also the patch table's, ``openrlhf_patches.PATCHES``) and its environment switches."""

import os

CLI_MODULE = "openrlhf.cli.train_ppo_ray"
TRAINER_MODULE = "openrlhf.trainer.ppo_trainer"
SAMPLES_MODULE = "openrlhf.trainer.ppo_utils.samples_generator"
AGENT_MODULE = "openrlhf.utils.agent"
ASYNC_TRAINER_MODULE = "openrlhf.trainer.ppo_trainer_async"
# The modules whose classes the plugin patches when they execute.
PATCHED_MODULES = (TRAINER_MODULE, SAMPLES_MODULE, AGENT_MODULE, ASYNC_TRAINER_MODULE)


def env_switch(name: str) -> bool:
    """Whether the environment variable ``name`` is on: 1, true, yes or on, any case (GD2PO_DISABLE, GD2PO_DRY_RUN).
    ``gd2po_openrlhf.pth`` spells the same test out for GD2PO_DISABLE: it runs before this package is imported."""
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")
