"""The OpenRLHF modules the plugin watches, by name: read by the import hook at every interpreter start (so nothing
but these strings here) and by the patch table (``openrlhf_patches.PATCHES``)."""

CLI_MODULE = "openrlhf.cli.train_ppo_ray"
TRAINER_MODULE = "openrlhf.trainer.ppo_trainer"
SAMPLES_MODULE = "openrlhf.trainer.ppo_utils.samples_generator"
AGENT_MODULE = "openrlhf.utils.agent"
ASYNC_TRAINER_MODULE = "openrlhf.trainer.ppo_trainer_async"
# The modules whose classes the plugin patches when they execute.
PATCHED_MODULES = (TRAINER_MODULE, SAMPLES_MODULE, AGENT_MODULE, ASYNC_TRAINER_MODULE)
