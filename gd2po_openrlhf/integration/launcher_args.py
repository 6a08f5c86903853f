"""OpenRLHF's launcher arguments for a command line, as a cluster run would see them, without launching anything."""

from __future__ import annotations

import argparse
from typing import List

# A run whose steps are driven in one process (the CPU demo, the tests, the benchmarks) has one data-parallel rank per
# group; OpenRLHF's defaults are 8 GPUs, whose step shapes the plugin's parse-time check would judge instead.
ONE_RANK_PER_GROUP = [
    "--actor.num_gpus_per_node",
    "1",
    "--ref.num_gpus_per_node",
    "1",
    "--reward.num_gpus_per_node",
    "1",
]


def parse_launcher_args(argv: List[str]) -> argparse.Namespace:
    """The ``args`` OpenRLHF's ``train_ppo_ray`` hands to ``train()`` for ``argv``: parsed by its own parser
    (extended and validated by the plugin), nested by ``hierarchize`` and post-processed by its ``__main__`` block.

    Runs the launcher module as ``__main__`` with Ray reported as started, and stops where ``train()`` asks for its
    strategy, its first step after ``ray.init``: nothing is launched. Used by the CPU demo, the benchmarks and the
    tests, so that they read the same ``args`` as a cluster run.
    """
    import runpy
    import sys
    from unittest import mock

    import openrlhf.utils
    import ray

    from .argparse_patch import install_argparse_extension

    class ReachedTrain(Exception):
        pass

    def stop_at_train(args):
        raise ReachedTrain(args)

    install_argparse_extension()
    with (
        mock.patch.object(sys, "argv", ["train_ppo_ray"] + list(argv)),
        mock.patch.object(openrlhf.utils, "get_strategy", stop_at_train),
        mock.patch.object(ray, "is_initialized", lambda: True),
    ):
        try:
            runpy.run_module("openrlhf.cli.train_ppo_ray", run_name="__main__")
        except ReachedTrain as reached:
            return reached.args[0]
    raise RuntimeError("openrlhf.cli.train_ppo_ray did not reach train()")
