"""Everything that touches openrlhf, one responsibility per module (docs/development.md, "Layout"):
``hook`` (stdlib only, at interpreter start) → ``argparse_patch`` + ``flags`` + ``settings`` (the command line,
stdlib only) → ``openrlhf_patches`` (every replaced OpenRLHF method) → ``experience_maker``, ``rollout_selection``,
``resume``, ``reward_client`` (what the patches run)."""
