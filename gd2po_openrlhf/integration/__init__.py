"""Everything that touches openrlhf. Submodules import openrlhf only where they need it:
``hook`` and ``cli`` use the standard library alone (they run at interpreter start and before parsing);
``trainer`` imports openrlhf and runs in the trainer process."""
