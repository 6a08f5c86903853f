"""The CPU environment: the real openrlhf imports with the vLLM/flash-attn stand-ins, which raise when used
(that they never ship in the wheel is checked in test_wheel.py)."""

import importlib
import pathlib
import sys
import sysconfig

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
STUBS = REPO / "dev" / "cpu_stubs"


@pytest.mark.parametrize(
    "module, attribute",
    [
        ("openrlhf.trainer.ppo_utils.experience_maker", "RemoteExperienceMaker"),
        ("openrlhf.trainer.ppo_trainer", "PPOTrainer"),
        ("openrlhf.models", "PolicyLoss"),
        ("openrlhf.cli.train_ppo_ray", "train"),
    ],
)
def test_real_openrlhf_modules_import(module, attribute):
    imported = importlib.import_module(module)
    assert pathlib.Path(imported.__file__).is_relative_to(sysconfig.get_paths()["purelib"])
    assert hasattr(imported, attribute)
    import openrlhf

    assert openrlhf.__file__ and "site-packages" in openrlhf.__file__


def test_stand_ins_come_after_site_packages():
    entries = [str(pathlib.Path(p).resolve()) for p in sys.path if p]
    site_packages = str(pathlib.Path(sysconfig.get_paths()["purelib"]).resolve())
    assert str(STUBS) in entries, "the CPU venv must put dev/cpu_stubs on sys.path"
    assert entries.index(site_packages) < entries.index(str(STUBS))


def test_stand_ins_raise_when_used():
    import flash_attn.bert_padding
    import flash_attn.utils.distributed
    import vllm
    import vllm.inputs
    import vllm.utils
    from gd2po_cpu_standin import StandInUsedError

    if not getattr(vllm, "GD2PO_CPU_STANDIN", False):
        pytest.skip("a real vllm is installed")
    calls = [
        lambda: vllm.SamplingParams(temperature=1.0),
        lambda: vllm.AsyncEngineArgs(model="x"),
        lambda: vllm.AsyncLLMEngine.from_engine_args(None),
        lambda: vllm.inputs.TokensPrompt(prompt_token_ids=[1]),
        lambda: vllm.utils.random_uuid(),
        lambda: flash_attn.bert_padding.pad_input(None, None, 1, 1),
        lambda: flash_attn.bert_padding.unpad_input(None, None),
        lambda: flash_attn.bert_padding.index_first_axis(None, None),
        lambda: flash_attn.bert_padding.rearrange(None, "b s -> s b"),
        lambda: flash_attn.utils.distributed.all_gather(None, None),
    ]
    for call in calls:
        with pytest.raises(StandInUsedError, match="CPU import stand-in"):
            call()


def test_openrlhf_falls_back_to_torch_without_flash_attn_kernels():
    """flash_attn.ops is deliberately absent, so openrlhf's log-prob helper takes its torch path."""
    import torch
    from openrlhf.models.utils import log_probs_from_logits

    logits = torch.randn(2, 3, 5)
    labels = torch.randint(0, 5, (2, 3))
    expected = torch.log_softmax(logits, -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(log_probs_from_logits(logits, labels), expected)


def test_the_e2e_vllm_stand_in_refuses_what_vllm_0_29_would_refuse(monkeypatch):
    # Loaded by path under another name: the CPU stubs' `vllm` stays what this process imports.
    spec = importlib.util.spec_from_file_location(
        "gd2po_e2e_vllm_standin", REPO / "dev" / "e2e" / "vllm" / "__init__.py"
    )
    standin = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, standin)  # dataclasses look their module up there
    spec.loader.exec_module(standin)
    params = standin.SamplingParams(temperature=0.7, max_tokens=5, logprobs=1, seed=3)
    assert (params.temperature, params.max_tokens, params.logprobs, params.ignored) == (0.7, 5, 1, {"seed": 3})
    with pytest.raises(TypeError, match=r"vLLM 0.29.0's SamplingParams accepts no 'max_new_tokens'"):
        standin.SamplingParams(max_new_tokens=5)
    args = standin.AsyncEngineArgs(model="m", seed=1, enable_prefix_caching=True, gpu_memory_utilization=0.5)
    assert args.ignored == {"enable_prefix_caching": True, "gpu_memory_utilization": 0.5}
    with pytest.raises(TypeError, match=r"AsyncEngineArgs accepts no 'enable_sleep'"):
        standin.AsyncEngineArgs(model="m", enable_sleep=True)  # vLLM's name is enable_sleep_mode


def test_the_e2e_cuda_shim_names_a_tensor_the_device_move_does_not_reach():
    from types import SimpleNamespace

    import torch
    from openrlhf.trainer.ppo_utils.experience import Experience

    spec = importlib.util.spec_from_file_location("gd2po_e2e_shim", REPO / "dev" / "e2e" / "gd2po_e2e_cuda_shim.py")
    shim = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(shim)
    module = SimpleNamespace(Experience=type("ShimmedExperience", (Experience,), {}))  # leaves Experience alone
    shim._patch_experience(module)
    moved = module.Experience(sequences=torch.ones(1, 3), info={"reward/a": torch.ones(1)})
    moved.to_device(torch.device("cpu"))
    assert shim.host_tensors(moved) == []
    nested = module.Experience(sequences=torch.ones(1, 3), info={"stats": {"kept": torch.ones(1)}})
    nested.to_device(torch.device("cpu"))  # to_device moves one level of dicts only
    assert shim.host_tensors(nested) == ["experience.info.stats.kept"]
    assert shim.host_tensors(module.Experience(sequences=torch.ones(1, 3))) == ["experience.sequences"]
