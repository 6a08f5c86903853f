"""E2E stand-in for vLLM: the slice of its API that OpenRLHF 0.11.2's rollout actor and weight sync use,
generating with transformers on CPU. Development only (``make e2e``): it lives in dev/e2e, is put on
``PYTHONPATH`` by the e2e harness alone, and is never part of the gd2po-openrlhf wheel.

Used by ``openrlhf/trainer/ray/vllm_engine.py`` (``AsyncEngineArgs``, ``AsyncLLMEngine``, ``__version__``),
``samples_generator.py`` (``SamplingParams``), ``vllm_worker_wrap.py`` through ``collective_rpc`` and
``utils/distributed_util.py`` (``vllm.distributed``). Anything else raises.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import socket
import sys
from dataclasses import dataclass
from types import SimpleNamespace
from typing import List, Optional

import torch
from torch.overrides import TorchFunctionMode

__version__ = "0.11.0+gd2po.e2e.standin"  # OpenRLHF asserts > 0.8.5 and switches behaviour at 0.9.0
GD2PO_E2E_STANDIN = True


def _log(message: str) -> None:
    print(f"[gd2po e2e stand-in] {message}", file=sys.stderr, flush=True)


@dataclass
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    max_tokens: Optional[int] = 16
    min_tokens: int = 0
    skip_special_tokens: bool = True
    logprobs: Optional[int] = None
    stop: Optional[list] = None
    include_stop_str_in_output: bool = False


class AsyncEngineArgs:
    def __init__(
        self, model: str, seed: int = 0, dtype: str = "bfloat16", worker_extension_cls: str = None, **ignored
    ):
        self.model, self.seed, self.dtype, self.worker_extension_cls = model, seed, dtype, worker_extension_cls
        self.ignored = ignored


class _CudaToCpu(TorchFunctionMode):
    """Maps ``device="cuda"`` to the CPU for calls made on the engine's workers (``WorkerWrap.update_weight``
    allocates its receive buffer on "cuda")."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        device = kwargs.get("device")
        if device is not None and torch.device(device).type == "cuda":
            kwargs = {**kwargs, "device": "cpu"}
        return func(*args, **kwargs)


class _LoadableModel:
    """``model_runner.model`` of a vLLM worker: ``load_weights`` copies named tensors into the HF model."""

    def __init__(self, hf_model):
        self.hf_model = hf_model
        self.synced = {}

    def load_weights(self, weights):
        params = dict(self.hf_model.named_parameters())
        for name, tensor in weights:
            if name not in params:
                raise KeyError(f"vLLM stand-in: synced weight {name!r} is not a parameter of the rollout model")
            with torch.no_grad():
                params[name].copy_(tensor.to(params[name].dtype))
            self.synced[name] = tensor.detach().clone()


class _Worker:
    """The engine's only worker (tensor parallel 1): the HF model, and what ``WorkerWrap`` reads of a vLLM worker."""

    def __init__(self, engine_args: AsyncEngineArgs):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device = torch.device("cpu")
        self.model_config = SimpleNamespace(dtype=getattr(torch, engine_args.dtype))
        self.tokenizer = AutoTokenizer.from_pretrained(engine_args.model)
        hf_model = AutoModelForCausalLM.from_pretrained(engine_args.model, dtype=torch.float32).eval()
        self.model_runner = SimpleNamespace(model=_LoadableModel(hf_model))
        self.generator = torch.Generator().manual_seed(engine_args.seed)
        if not torch.distributed.is_initialized():  # a vLLM worker runs in its own world-size-1 group
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
            torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)

    @torch.no_grad()
    async def generate(self, prompt_token_ids: List[int], params: SamplingParams, token_delay_s: float = 0.0):
        """One request, token by token; with ``token_delay_s`` > 0 each token waits that long on the event loop, so
        that the engine's other requests progress in between (as vLLM's continuous batching interleaves them)."""
        if params.logprobs is not None:
            raise NotImplementedError(
                "vLLM stand-in: logprobs are not supported (--algo.advantage.is_correction_level off)"
            )
        model = self.model_runner.model.hf_model
        eos = self.tokenizer.eos_token_id
        tokens = torch.tensor([prompt_token_ids])
        generated: List[int] = []
        # Token-by-token sampling with the engine's own generator: reproducible for a given seed.
        for _ in range(params.max_tokens):
            logits = model(tokens).logits[0, -1].float()
            if len(generated) < (params.min_tokens or 0):
                logits[eos] = -float("inf")
            if params.temperature and params.temperature > 0:
                probs = torch.softmax(logits / params.temperature, dim=-1)
                if params.top_k and params.top_k > 0:
                    threshold = probs.topk(min(params.top_k, probs.numel())).values[-1]
                    probs = torch.where(probs >= threshold, probs, 0.0)
                token = int(torch.multinomial(probs / probs.sum(), 1, generator=self.generator))
            else:
                token = int(logits.argmax())
            generated.append(token)
            tokens = torch.cat([tokens, torch.tensor([[token]])], dim=1)
            if token_delay_s > 0:
                await asyncio.sleep(token_delay_s)
            if token == eos:
                break
        finish_reason = "stop" if generated and generated[-1] == eos else "length"
        text = self.tokenizer.decode(generated, skip_special_tokens=params.skip_special_tokens)
        output = SimpleNamespace(token_ids=generated, text=text, finish_reason=finish_reason, logprobs=None)
        return SimpleNamespace(prompt_token_ids=list(prompt_token_ids), outputs=[output], finished=True)


class AsyncLLMEngine:
    """``AsyncLLMEngine`` with one in-process worker whose class mixes in ``worker_extension_cls`` (OpenRLHF's
    ``WorkerWrap``), so OpenRLHF's own weight-sync code runs on it through ``collective_rpc``."""

    @classmethod
    def from_engine_args(cls, engine_args: AsyncEngineArgs) -> "AsyncLLMEngine":
        return cls(engine_args)

    def __init__(self, engine_args: AsyncEngineArgs):
        _log(
            f"vLLM stand-in (dev/e2e): generating with transformers on CPU from {engine_args.model}; not the real vllm"
        )
        bases = (_Worker,)
        if engine_args.worker_extension_cls:
            module_name, class_name = engine_args.worker_extension_cls.rsplit(".", 1)
            bases = (getattr(importlib.import_module(module_name), class_name), _Worker)
        self.worker = type("StandInWorker", bases, {})(engine_args)
        self.seed = engine_args.seed
        self.num_syncs = 0
        self.output_processor = SimpleNamespace(get_num_unfinished_requests=lambda: self._unfinished)
        self._unfinished = 0
        # GD2PO_E2E_TOKEN_DELAY_S: per-token latency, requests interleaved; the most in flight at once is logged.
        self.token_delay_s = float(os.environ.get("GD2PO_E2E_TOKEN_DELAY_S", "0"))
        self.peak_in_flight = 0
        if self.token_delay_s > 0:
            _log(f"vLLM stand-in engine seed {self.seed}: {self.token_delay_s:g} s per token, requests interleaved")

    async def is_sleeping(self) -> bool:
        return False

    async def generate(self, prompt, sampling_params: SamplingParams, request_id: str):
        self._unfinished += 1
        self.peak_in_flight = max(self.peak_in_flight, self._unfinished)
        try:
            output = await self.worker.generate(prompt["prompt_token_ids"], sampling_params, self.token_delay_s)
        finally:
            self._unfinished -= 1
        yield output

    async def collective_rpc(self, method: str, args=(), kwargs=None):
        with _CudaToCpu():
            result = getattr(self.worker, method)(*args, **(kwargs or {}))
        if method == "update_weight" and args[3]:  # empty_cache marks the last parameter of a sync
            self._report_sync()
        return [result]

    def _report_sync(self) -> None:
        """Log each completed weight sync and, when the harness asks (GD2PO_E2E_REPORT_DIR), save what arrived."""
        self.num_syncs += 1
        synced = self.worker.model_runner.model.synced
        _log(
            f"vLLM stand-in engine seed {self.seed}: weight sync {self.num_syncs} received {len(synced)} tensors; "
            f"at most {self.peak_in_flight} requests in flight so far"
        )
        report_dir = os.environ.get("GD2PO_E2E_REPORT_DIR")
        if report_dir:
            os.makedirs(report_dir, exist_ok=True)
            path = os.path.join(report_dir, f"vllm_engine{self.seed}_sync{self.num_syncs}.pt")
            torch.save({name: tensor.float() for name, tensor in synced.items()}, path)

    async def reset_prefix_cache(self):
        return None

    async def pause_generation(self, mode: str = "keep"):
        return None

    async def resume_generation(self):
        return None

    async def sleep(self, level: int = 1):
        return None

    async def wake_up(self, tags=None):
        return None
