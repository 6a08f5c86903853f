"""Explicit entry point: ``python -m gd2po_openrlhf.train_ppo_ray`` takes exactly OpenRLHF's
``openrlhf.cli.train_ppo_ray`` arguments plus the GD²PO flags.

It activates the plugin in this process even where the installed ``gd2po_openrlhf.pth`` is not processed.
Ray workers (the trainer, model and rollout actors) still need the .pth of the installed package, or Ray's
``worker_process_setup_hook`` set to ``gd2po_openrlhf.register`` (see docs/install.md).
"""

import runpy

from gd2po_openrlhf.integration.hook import register

if __name__ == "__main__":
    register()
    runpy.run_module("openrlhf.cli.train_ppo_ray", run_name="__main__", alter_sys=True)
