"""E2E stand-in for ``PyNcclCommunicator``: the weight-sync broadcast over gloo instead of NCCL."""

import sys
from datetime import timedelta

import torch
import torch.distributed as dist


class PyNcclCommunicator:
    def __init__(self, group, device=None):
        self.rank, self.world_size = group.rank, group.world_size
        self.group = dist.ProcessGroupGloo(group.store, group.rank, group.world_size, timedelta(seconds=300))
        print(
            f"[gd2po e2e stand-in] weight-sync group over gloo (not NCCL): rank {self.rank} of {self.world_size}",
            file=sys.stderr,
            flush=True,
        )

    def broadcast(self, tensor: torch.Tensor, src: int, stream=None) -> None:
        self.group.broadcast(tensor, src).wait()
