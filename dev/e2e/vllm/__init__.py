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


# The keyword arguments vLLM 0.29.0 (the version openrlhf 0.11.2's [vllm] extra pins) accepts, read from that
# release's wheel: the fields of ``vllm/sampling_params.py`` ``SamplingParams`` and of ``vllm/engine/arg_utils.py``
# ``EngineArgs`` + ``AsyncEngineArgs`` (private ones left out). A name outside them is a TypeError here, as there.
VLLM_SAMPLING_PARAMS = frozenset(
    """
    n presence_penalty frequency_penalty repetition_penalty temperature top_p top_k min_p seed stop
    stop_token_ids ignore_eos max_tokens min_tokens logprobs prompt_logprobs logprob_token_ids flat_logprobs
    detokenize skip_special_tokens spaces_between_special_tokens include_stop_str_in_output output_kind
    stream_interval skip_clone output_text_buffer_length structured_outputs logit_bias allowed_token_ids
    extra_args bad_words skip_reading_prefix_cache thinking_token_budget repetition_detection
    routed_experts_prompt_start trace_decode_token_ids
    """.split()
)
VLLM_ENGINE_ARGS = frozenset(
    """
    model enable_return_routed_experts return_sampling_mask model_weights served_model_name tokenizer
    hf_config_path runner convert skip_tokenizer_init enable_prompt_embeds tokenizer_mode trust_remote_code
    allowed_local_media_path allowed_media_domains download_dir safetensors_load_strategy
    safetensors_prefetch_num_threads safetensors_prefetch_block_size load_format config_format dtype
    kv_cache_dtype seed max_model_len cudagraph_capture_sizes max_cudagraph_capture_size ir_op_priority
    distributed_executor_backend pipeline_parallel_size master_addr master_port nnodes node_rank
    distributed_timeout_seconds cpu_distributed_timeout_seconds numa_bind numa_bind_nodes numa_bind_cpus
    device_ids tensor_parallel_size prefill_context_parallel_size decode_context_parallel_size dcp_comm_backend
    dcp_q_replicate dcp_kv_cache_interleave_size cp_kv_cache_interleave_size data_parallel_size
    data_parallel_rank data_parallel_start_rank data_parallel_size_local data_parallel_address
    data_parallel_rpc_port data_parallel_hybrid_lb data_parallel_external_lb
    data_parallel_multi_port_external_lb data_parallel_backend enable_expert_parallel
    enable_batch_sharded_sampling enable_ep_weight_filter moe_backend linear_backend all2all_backend
    enable_elastic_ep enable_dbo ubatch_size dbo_decode_token_threshold dbo_prefill_token_threshold
    disable_nccl_for_dp_synchronization eplb_config enable_eplb expert_placement_strategy
    max_parallel_loading_workers block_size enable_prefix_caching prefix_caching_hash_algo
    prefix_cache_retention_interval disable_sliding_window disable_cascade_attn offload_backend cpu_offload_gb
    cpu_offload_params offload_group_size offload_num_in_group offload_prefetch_step offload_params
    gpu_memory_utilization kv_cache_memory_bytes max_num_batched_tokens max_num_scheduled_tokens
    long_prefill_token_threshold max_num_seqs max_num_queued_reqs max_num_queued_tokens max_logprobs
    logprobs_mode use_fp64_gumbel enable_trace_replay disable_log_stats aggregate_engine_logging revision
    code_revision hf_token hf_overrides model_class_overrides tokenizer_revision quantization
    quantization_config allow_deprecated_quantization enforce_eager disable_custom_all_reduce
    language_model_only limit_mm_per_prompt enable_mm_embeds interleave_mm_strings media_io_kwargs
    mm_processor_kwargs mm_processor_cache_gb mm_processor_cache_type mm_hasher_algorithm
    mm_shm_cache_max_object_size_mb mm_encoder_only mm_encoder_tp_mode mm_encoder_attn_backend
    mm_encoder_attn_dtype mm_encoder_fp8_scale_path mm_encoder_fp8_scale_save_path
    mm_encoder_fp8_scale_save_margin io_processor_plugin renderer_num_workers skip_mm_profiling
    video_pruning_rate video_pruning_method mm_tensor_ipc mm_processor_device mm_ipc_gpu_memory_gb
    mm_device_do_normalize enable_lora max_loras max_lora_rank default_mm_loras fully_sharded_loras
    max_cpu_loras lora_dtype lora_target_modules enable_tower_connector_lora specialize_active_lora
    enable_mixed_moe_lora_format enable_moe_shared_loras ray_workers_use_nsight num_gpu_blocks_override
    model_loader_extra_config ignore_patterns enable_chunked_prefill disable_chunked_mm_input
    scheduler_reserve_full_isl prefill_schedule_interval watermark disable_hybrid_kv_cache_manager
    structured_outputs_config reasoning_parser reasoning_parser_plugin speculative_config spec_method spec_model
    spec_tokens diffusion_config show_hidden_metrics_for_version otlp_traces_endpoint collect_detailed_traces
    per_request_spec_decode_metrics kv_cache_metrics kv_cache_metrics_sample cudagraph_metrics
    enable_layerwise_nvtx_tracing enable_mfu_metrics enable_logging_iteration_details jit_monitor_mode
    jit_monitor_verbose enable_mm_processor_stats scheduling_policy scheduler_cls pooler_config
    compilation_config attention_config mamba_config kernel_config enable_flashinfer_autotune
    enable_bf16x3_router_gemm worker_cls worker_extension_cls profiler_config kv_transfer_config
    kv_events_config ec_transfer_config ec_manager_config reasoning_config generation_config enable_sleep_mode
    enable_cumem_allocator override_generation_config model_impl attention_backend kv_cache_dtype_skip_layers
    mamba_cache_dtype mamba_ssm_cache_dtype mamba_block_size prefix_match_unit mamba_cache_mode
    replayssm_buffer_len use_replayssm mamba_backend mamba_ssu_algorithm enable_mamba_cache_stochastic_rounding
    mamba_cache_philox_rounds additional_config use_tqdm_on_load pt_load_map_location logits_processors
    async_scheduling stream_interval kv_sharing_fast_prefill optimization_level performance_mode
    fault_tolerance_config enable_fault_tolerance kv_offloading_size kv_offloading_backend tokens_only
    shutdown_timeout weight_transfer_config fail_on_environ_validation gdn_prefill_backend kda_prefill_backend
    enable_log_requests
    """.split()
)


def _refuse_unknown(kind: str, given, known) -> None:
    unknown = sorted(set(given) - known)
    if unknown:
        raise TypeError(f"vLLM stand-in: vLLM 0.29.0's {kind} accepts no {', '.join(map(repr, unknown))}")


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

    def __init__(self, **kwargs):
        _refuse_unknown("SamplingParams", kwargs, VLLM_SAMPLING_PARAMS)
        used = {name for name in self.__dataclass_fields__}
        for name in used:
            setattr(self, name, kwargs.get(name, self.__dataclass_fields__[name].default))
        self.ignored = {name: value for name, value in kwargs.items() if name not in used}


@dataclass
class Logprob:
    """vLLM's ``vllm.logprobs.Logprob``: one token's log probability and rank at one position."""

    logprob: float
    rank: Optional[int] = None
    decoded_token: Optional[str] = None


class AsyncEngineArgs:
    def __init__(self, model: str, seed: int = 0, dtype: str = "bfloat16", worker_extension_cls: str = None, **kwargs):
        _refuse_unknown("AsyncEngineArgs", kwargs, VLLM_ENGINE_ARGS)
        self.model, self.seed, self.dtype, self.worker_extension_cls = model, seed, dtype, worker_extension_cls
        self.ignored = kwargs


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
        model = self.model_runner.model.hf_model
        eos = self.tokenizer.eos_token_id
        tokens = torch.tensor([prompt_token_ids])
        generated: List[int] = []
        # logprobs=k: per position a {token id: Logprob} dict holding the sampled token (vLLM adds the top k), of the
        # processed distribution (after temperature), as OpenRLHF's logprobs_mode "processed_logprobs" asks.
        logprobs: Optional[List[dict]] = [] if params.logprobs is not None else None
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
            if logprobs is not None:
                processed = torch.log_softmax(logits / (params.temperature or 1.0), dim=-1)
                top = processed.topk(params.logprobs) if params.logprobs > 0 else None
                position = {token: Logprob(float(processed[token]), int((processed > processed[token]).sum()) + 1)}
                if top is not None:
                    position.update(
                        {
                            int(i): Logprob(float(v), rank + 1)
                            for rank, (v, i) in enumerate(zip(top.values, top.indices))
                        }
                    )
                logprobs.append(position)
            generated.append(token)
            tokens = torch.cat([tokens, torch.tensor([[token]])], dim=1)
            if token_delay_s > 0:
                await asyncio.sleep(token_delay_s)
            if token == eos:
                break
        finish_reason = "stop" if generated and generated[-1] == eos else "length"
        text = self.tokenizer.decode(generated, skip_special_tokens=params.skip_special_tokens)
        output = SimpleNamespace(token_ids=generated, text=text, finish_reason=finish_reason, logprobs=logprobs)
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
