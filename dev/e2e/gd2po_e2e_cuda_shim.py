"""E2E stand-in: just enough of ``torch.cuda`` on a CPU build for OpenRLHF 0.11.2's Ray actors to run on CPU.

Development only (dev/e2e, never in the wheel). Applied right after ``torch`` (and OpenRLHF's replay buffer)
execute, through a meta-path finder, so processes that never import torch pay nothing:
- ``torch.cuda.current_device()`` returns the CPU device (``.to(current_device())`` then stays on the CPU:
  ``launcher.py:136,190``, ``ppo_actor.py:148,171,627``, ``deepspeed.py:614,633``);
- ``set_device``, ``synchronize`` and ``current_stream`` do nothing (``deepspeed.py:97``,
  ``ppo_actor.py:436,600-605``, ``distributed_util.py:10``, ``vllm_worker_wrap.py:40,46``);
- ``NaiveReplayBuffer`` keeps its items on the CPU instead of ``cuda:{current_device()}`` (``replay_buffer.py:40``);
- ``Experience.to_device`` tags every tensor it reaches (on a GPU they would be moved; here they stay where they are),
  and ``ActorPPOTrainer.training_step`` refuses an Experience holding an untagged tensor, naming it: a tensor the
  plugin put where OpenRLHF's move does not reach would stay on the host on a GPU cluster.
"""

import importlib.abc
import importlib.machinery
import sys

TORCH, REPLAY_BUFFER = "torch", "openrlhf.trainer.ppo_utils.replay_buffer"
EXPERIENCE, PPO_ACTOR = "openrlhf.trainer.ppo_utils.experience", "openrlhf.trainer.ray.ppo_actor"
DEVICE_TAG = "_gd2po_e2e_on_device"


def _patch_torch(torch) -> None:
    torch.cuda.current_device = lambda: torch.device("cpu")
    torch.cuda.set_device = lambda device: None
    torch.cuda.synchronize = lambda device=None: None
    torch.cuda.current_stream = lambda device=None: None
    print(
        f"[gd2po e2e stand-in] torch.cuda shim active in pid {__import__('os').getpid()} (CPU run, not CUDA)",
        file=sys.stderr,
        flush=True,
    )


def _patch_replay_buffer(module) -> None:
    import torch

    original_init = module.NaiveReplayBuffer.__init__

    def __init__(self, *args, **kwargs):
        # It formats f"cuda:{current_device()}": give it an index for the string, then keep items on the CPU.
        current_device, torch.cuda.current_device = torch.cuda.current_device, lambda: 0
        try:
            original_init(self, *args, **kwargs)
        finally:
            torch.cuda.current_device = current_device
        self.target_device = torch.device("cpu")

    module.NaiveReplayBuffer.__init__ = __init__


def _tag_reached(value) -> None:
    """Tags what OpenRLHF's ``experience.to`` moves: a tensor, or the tensors of a (nested) list."""
    if isinstance(value, list):
        for item in value:
            _tag_reached(item)
    elif hasattr(value, "is_floating_point"):  # a tensor
        setattr(value, DEVICE_TAG, True)


def _patch_experience(module) -> None:
    original = module.Experience.to_device

    def to_device(self, device):
        moved = original(self, device)
        for value in vars(self).values():  # as Experience.to_device walks them: fields, and one level of dicts
            for item in value.values() if isinstance(value, dict) else [value]:
                _tag_reached(item)
        return moved

    module.Experience.to_device = to_device


def host_tensors(experience, path: str = "experience"):
    """Paths of the tensors anywhere in ``experience`` that ``Experience.to_device`` did not reach."""
    value = vars(experience) if path == "experience" else experience
    if isinstance(value, dict):
        return [found for key, item in value.items() for found in host_tensors(item, f"{path}.{key}")]
    if isinstance(value, (list, tuple)):
        return [found for i, item in enumerate(value) for found in host_tensors(item, f"{path}[{i}]")]
    return [path] if hasattr(value, "is_floating_point") and not getattr(value, DEVICE_TAG, False) else []


def _patch_ppo_actor(module) -> None:
    original = module.ActorPPOTrainer.training_step

    def training_step(self, experience, *args, **kwargs):
        left = host_tensors(experience)
        if left:
            raise RuntimeError(
                f"[gd2po e2e stand-in] {', '.join(left)} of the Experience stayed on the host: Experience.to_device "
                "does not reach it, so on a GPU it would not be moved"
            )
        return original(self, experience, *args, **kwargs)

    module.ActorPPOTrainer.training_step = training_step
    print(
        f"[gd2po e2e stand-in] device-move check active in pid {__import__('os').getpid()}",
        file=sys.stderr,
        flush=True,
    )


class _PatchAfterExec(importlib.abc.Loader):
    def __init__(self, loader, patch):
        self._loader, self._patch = loader, patch

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        self._patch(module)

    def __getattr__(self, name):
        return getattr(self._loader, name)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        patch = {
            TORCH: _patch_torch,
            REPLAY_BUFFER: _patch_replay_buffer,
            EXPERIENCE: _patch_experience,
            PPO_ACTOR: _patch_ppo_actor,
        }.get(fullname)
        if patch is None:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _PatchAfterExec(spec.loader, patch)
        return spec


def install() -> None:
    if not any(isinstance(finder, _Finder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
