"""CPU import stand-in for vllm (names openrlhf imports at module level); see gd2po_cpu_standin."""

from gd2po_cpu_standin import standin_class

__version__ = "0.0.0+cpu.standin"
GD2PO_CPU_STANDIN = True

SamplingParams = standin_class("vllm.SamplingParams")
AsyncEngineArgs = standin_class("vllm.AsyncEngineArgs")
AsyncLLMEngine = standin_class("vllm.AsyncLLMEngine")
