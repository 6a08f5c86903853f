"""Everything that touches openrlhf, one responsibility per module (docs/development.md, "Layout"), no import cycle:
``hook`` (with ``targets``: at interpreter start) → ``argparse_patch`` with ``flags`` (every flag, declared once),
``presets`` and ``settings`` (the command line → ``RunSettings``) → ``patching`` applies ``openrlhf_patches``
(every replaced OpenRLHF method) with the features that replace them: ``experience_maker`` (+ ``model_groups``,
``rollout_selection``), ``remote_rewards``, ``dynamic_sampling``, ``resume``."""
