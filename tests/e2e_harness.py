"""The e2e harness: OpenRLHF's real launcher, ``python -m openrlhf.cli.train_ppo_ray``, on CPU.

What runs is what a user runs: the installed openrlhf and its Ray actors (PPOTrainer, policy, reference,
reward and cost model groups, vLLM rollout actors), DeepSpeed on its CPU accelerator over gloo, and the
plugin through its ``.pth`` import hook. Three dev-only stand-ins from ``dev/e2e`` make that possible on a
machine without GPUs, and are active only in the environment this module builds (each logs that it is):
- ``dev/e2e/vllm``: vLLM's engine API generating with transformers, OpenRLHF's ``WorkerWrap`` doing the
  weight sync over a gloo group;
- ``dev/e2e/gd2po_e2e_cuda_shim.py`` (imported by ``dev/e2e/sitecustomize.py`` when
  ``GD2PO_E2E_STANDINS=1``): ``torch.cuda.current_device/set_device/synchronize/current_stream`` on CPU;
- ``DS_ACCELERATOR=cpu``, with DeepSpeed's JIT ops pre-built into ``.venv/torch_extensions`` (``make venv``).

A private Ray head with logical GPUs is started on its own port and temp dir, and stopped by PID.
"""

from __future__ import annotations

import functools
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import torch

REPO = Path(__file__).resolve().parents[1]
E2E_STANDINS = REPO / "dev" / "e2e"
TORCH_EXTENSIONS_DIR = Path(sys.prefix) / "torch_extensions"  # make venv pre-builds them there
LOGICAL_GPUS = 6


def e2e_environment(report_dir: Path) -> Dict[str, str]:
    """The environment of the Ray head (hence of every Ray worker) and of the launcher."""
    env = dict(os.environ)
    env.update(
        PYTHONPATH=os.pathsep.join(
            [str(E2E_STANDINS)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        ),
        GD2PO_E2E_STANDINS="1",
        GD2PO_E2E_REPORT_DIR=str(report_dir),
        DS_ACCELERATOR="cpu",
        TORCH_EXTENSIONS_DIR=str(TORCH_EXTENSIONS_DIR),
        # 2 cores shared by ~6 actor processes: one torch thread each avoids oversubscription.
        OMP_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
        RAY_DEDUP_LOGS="0",
        # The rollout actors' reward client (read there, so set where Ray starts): quick retries for the fault
        # scenario.
        GD2PO_REWARD_ATTEMPTS="3",
        GD2PO_REWARD_BACKOFF_S="0.2",
        PYTHONUNBUFFERED="1",
    )
    env.pop("GD2PO_DISABLE", None)
    return env


# ---------------------------------------------------------------------------------------------- assets


@dataclass
class Assets:
    policy: Path
    reward_model: Path  # value head stored as score_head (--ds.value_head_prefix score_head)
    cost_model: Path  # likewise
    own_template_reward_model: Path  # another tokenizer (vocabulary order and chat template) than the policy's
    length_cost_model: Path  # cost = LENGTH_COST_SCALE · r / (prompt tokens + r) for a response of r tokens
    prompts: Path
    reward_file: Path


def _word_tokenizer(words: List[str], chat_template: Optional[str] = None):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from gd2po_openrlhf.demo import task

    word_level = Tokenizer(models.WordLevel({word: i for i, word in enumerate(words)}, unk_token="[UNK]"))
    word_level.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=word_level, unk_token="[UNK]", pad_token=task.PAD, eos_token=task.EOS
    )
    tokenizer.chat_template = chat_template
    return tokenizer


def tiny_llama_config(tokenizer, max_position_embeddings: int = 64):
    """A 1-layer Llama of hidden size 32 over ``tokenizer``'s vocabulary (a sequence classifier's has one label)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=max_position_embeddings,
        num_labels=1,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )


def _score_model(tokenizer, seed: int, path: Path, head: str = "score", set_weights=None) -> Path:
    """A 1-layer sequence-regression Llama saved as a model folder, its value head stored as ``head``: ``score`` as
    OpenRLHF's own reward models, ``score_head`` as the align-anything and Beaver checkpoints of the recipes.
    Random weights from ``seed``, or those ``set_weights(model)`` writes."""
    from safetensors.torch import load_file, save_file
    from transformers import LlamaForSequenceClassification

    torch.manual_seed(seed)
    model = LlamaForSequenceClassification(tiny_llama_config(tokenizer))
    if set_weights is not None:
        with torch.no_grad():
            set_weights(model)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    if head != "score":
        weights = load_file(str(path / "model.safetensors"))
        weights[f"{head}.weight"] = weights.pop("score.weight")
        save_file(weights, str(path / "model.safetensors"), metadata={"format": "pt"})
    return path


LENGTH_COST_SCALE = 10.0


def _length_cost_weights(model, marker_id: int, prompt_tokens: int) -> None:
    """Hand-set weights of a cost model whose cost tracks response length (``_score_model``'s 1-layer Llama).

    Every prompt starts with the marker token; the query and key projections are zero, so attention averages over
    the n tokens, and the marker's share of them, 1/n, reaches the value head: cost = LENGTH_COST_SCALE · (1 − P/n)
    = LENGTH_COST_SCALE · r / (P + r) for a prompt of P tokens (5 here) and a response of r, within 0.05 in float32
    (checked by the e2e module against OpenRLHF's own reward model class).
    """
    hidden, carrier = model.config.hidden_size, 100.0  # a large constant dimension: each RMSNorm scales by ≈ 1/carrier
    layer = model.model.layers[0]
    for parameter in model.parameters():
        parameter.zero_()
    for norm in (layer.input_layernorm, layer.post_attention_layernorm, model.model.norm):
        norm.weight.fill_(1.0)
    model.model.embed_tokens.weight[:, 1] = carrier
    model.model.embed_tokens.weight[marker_id, 2] = 1.0
    layer.self_attn.v_proj.weight[0, 2] = 1.0  # the marker, normalised to ≈ sqrt(hidden)/carrier ...
    layer.self_attn.o_proj.weight[0, 0] = carrier**2 / hidden  # ... averaged (1/n) into dimension 0
    model.score.weight[0, 1] = LENGTH_COST_SCALE / hidden**0.5  # the constant dimension: the scale
    model.score.weight[0, 0] = -LENGTH_COST_SCALE * prompt_tokens  # minus scale · P/n


def build_assets(root: Path, num_prompts: int = 32) -> Assets:
    """The demo's task as a launcher run: a warm-started 2-layer Llama policy, reward and cost models, prompts."""
    from gd2po_openrlhf.demo import task
    from gd2po_openrlhf.demo.training import TASK_FILE, build_tokenizer, warm_started_policy

    root.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    policy = warm_started_policy(tokenizer, seed=0, steps=40)
    policy.config.max_position_embeddings = 64
    policy.save_pretrained(root / "policy")
    tokenizer.save_pretrained(root / "policy")
    rng = random.Random(0)
    with open(root / "prompts.jsonl", "w") as handle:
        for _ in range(num_prompts):
            prompt, label = task.make_prompt(rng)
            handle.write(json.dumps({"input": prompt, "label": label}) + "\n")
    own_words = list(reversed(task.VOCAB)) + ["<user>", "<assistant>"]
    return Assets(
        policy=root / "policy",
        reward_model=_score_model(tokenizer, 1, root / "reward_model", head="score_head"),
        cost_model=_score_model(tokenizer, 2, root / "cost_model", head="score_head"),
        own_template_reward_model=_score_model(
            _word_tokenizer(own_words, "{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} {% endfor %}"),
            3,
            root / "own_template_reward_model",
        ),
        length_cost_model=_score_model(
            tokenizer,
            4,
            root / "length_cost_model",
            head="score_head",
            set_weights=functools.partial(
                _length_cost_weights,
                marker_id=tokenizer.convert_tokens_to_ids("max"),
                prompt_tokens=len(task.make_prompt(random.Random(0))[0].split()),
            ),
        ),
        prompts=root / "prompts.jsonl",
        reward_file=Path(TASK_FILE),
    )


# ---------------------------------------------------------------------------------------------- Ray head


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RayHead:
    """A private Ray head with logical GPUs (its own port and temp dir), stopped by PID, never ``ray stop``."""

    def __init__(self, temp_dir: Path, env: Dict[str, str], num_gpus: int = LOGICAL_GPUS):
        self.temp_dir, self.env, self.num_gpus = temp_dir, env, num_gpus
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.process: Optional[subprocess.Popen] = None
        self.workers: List[subprocess.Popen] = []

    def start(self, attempts: int = 3) -> "RayHead":
        """Start the head; on a port that another process took between ``_free_port`` and Ray binding it (Ray
        names the component and the port), try again on fresh ports."""
        for attempt in range(attempts):
            try:
                return self._start_once()
            except RuntimeError as error:
                if "that is used by other components" not in str(error) or attempt == attempts - 1:
                    raise
                self.port = _free_port()
                self.address = f"127.0.0.1:{self.port}"

    def _start_once(self) -> "RayHead":
        self.temp_dir.mkdir(parents=True, exist_ok=True)
        ray_cli = Path(sys.executable).with_name("ray")
        command = [
            str(ray_cli),
            "start",
            "--head",
            "--block",
            f"--port={self.port}",
            "--node-ip-address=127.0.0.1",  # loopback only: nothing of the test cluster listens elsewhere
            f"--num-gpus={self.num_gpus}",
            "--num-cpus=8",
            f"--temp-dir={self.temp_dir}",
            "--include-dashboard=false",
            "--disable-usage-stats",
        ] + self._node_ports()
        self.log = open(self.temp_dir / "ray_head.log", "w")
        self.process = subprocess.Popen(
            command, env=self.env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the Ray head exited: {(self.temp_dir / 'ray_head.log').read_text()[-3000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    pass
                time.sleep(2)  # the GCS accepts connections slightly before the raylet has registered
                return self
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError("the Ray head did not come up within 90 s")

    def _node_ports(self) -> List[str]:
        """The ports of one raylet: each node on this machine needs its own."""
        port = _free_port()
        # Worker ports: a range of this node's own, below Linux's ephemeral range (32768+) where the other ports
        # come from, and above Ray's default client port 10001.
        low = 11000 + port % 20000
        return [
            f"--node-manager-port={port}",
            f"--object-manager-port={_free_port()}",
            f"--dashboard-agent-listen-port={_free_port()}",
            f"--metrics-export-port={_free_port()}",
            f"--min-worker-port={low}",
            f"--max-worker-port={low + 999}",
            f"--ray-client-server-port={_free_port()}",
        ]

    def add_node(self, num_gpus: int, num_cpus: int = 8) -> None:
        """A second raylet on this machine joining the head: a Ray node of its own (its own node id, resources,
        object store and worker processes), as ``ray start --address`` on another host would add it."""
        ray_cli = Path(sys.executable).with_name("ray")
        command = [
            str(ray_cli),
            "start",
            f"--address={self.address}",
            "--node-ip-address=127.0.0.1",
            "--block",
            f"--num-gpus={num_gpus}",
            f"--num-cpus={num_cpus}",
            "--object-store-memory=500000000",
            "--disable-usage-stats",
        ] + self._node_ports()
        log = open(self.temp_dir / f"ray_node{len(self.workers) + 1}.log", "w")
        process = subprocess.Popen(command, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.workers.append(process)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"the Ray node exited: {Path(log.name).read_text()[-3000:]}")
            if len([node for node in self.placement()["nodes"] if node["alive"]]) >= 1 + len(self.workers):
                return
            time.sleep(1)
        raise RuntimeError(f"the Ray node did not join within 90 s: {Path(log.name).read_text()[-3000:]}")

    def placement(self) -> Dict[str, list]:
        """``{"nodes": [{node_id, alive, gpus, head}], "actors": [{class_name, node_id, pid}]}`` from the GCS, read
        by a child process so that this one never joins the cluster (dead actors keep their node id)."""
        script = (
            "import json, ray, ray._private.state as state\n"
            "ray.init(address=%r, logging_level='ERROR')\n"
            "nodes = [dict(node_id=n['NodeID'], alive=n['Alive'], gpus=n['Resources'].get('GPU', 0),"
            " head='node:__internal_head__' in n['Resources']) for n in ray.nodes()]\n"
            "actors = [dict(class_name=a['ActorClassName'], node_id=a['Address']['NodeID'], pid=a['Pid'])"
            " for a in state.actors().values()]\n"
            "print(json.dumps(dict(nodes=nodes, actors=actors)))\n"
        ) % self.address
        env = {key: value for key, value in self.env.items() if key != "RAY_ADDRESS"}
        output = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120, check=True
        ).stdout
        return json.loads(output.strip().splitlines()[-1])

    def stop(self) -> None:
        # --block keeps `ray start` in the foreground; its whole process group (GCS or raylet, workers) goes.
        for process in self.workers + [self.process]:
            if process is None or process.poll() is not None:
                continue
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        if self.process is not None:
            self.log.close()


# ---------------------------------------------------------------------------------------------- runs


def base_flags(assets: Assets, run_dir: Path, steps: int = 2) -> List[str]:
    """The flags every scenario shares: 1 logical GPU per group, gloo weight sync, eager attention, no warm-up,
    ``steps`` PPO steps of 8 prompts × 4 rollouts, TensorBoard, a checkpoint at the last step.

    8 prompts, not 4: a step that keeps fewer than 2 rollouts trains nothing (batch whitening gives a single kept
    rollout advantage 0). With 4 prompts and τ = 0.8 that happened in 2% (3 dimensions) to 35% (5 dimensions)
    of simulated steps, and once in a CI run; with 8 prompts, in none of 2,000 (τ = 0.3 for 5 dimensions)."""
    return [
        "--actor.model_name_or_path",
        str(assets.policy),
        "--actor.num_nodes",
        "1",
        "--actor.num_gpus_per_node",
        "1",
        "--ref.num_nodes",
        "1",
        "--ref.num_gpus_per_node",
        "1",
        "--reward.num_nodes",
        "1",
        "--reward.num_gpus_per_node",
        "1",
        "--vllm.num_engines",
        "1",
        "--vllm.tensor_parallel_size",
        "1",
        "--vllm.sync_backend",
        "gloo",
        "--ds.attn_implementation",
        "eager",
        "--ds.zero_stage",
        "0",
        "--data.prompt_dataset",
        str(assets.prompts),
        "--data.input_key",
        "input",
        "--data.label_key",
        "label",
        "--data.max_samples",
        str(8 * steps),
        "--rollout.batch_size",
        "8",
        "--rollout.n_samples_per_prompt",
        "4",
        "--rollout.micro_batch_size",
        "8",
        "--train.batch_size",
        "32",
        "--train.micro_batch_size",
        "8",
        "--train.max_epochs",
        "1",
        "--train.num_episodes",
        "1",
        "--rollout.max_new_tokens",
        "12",
        "--data.max_len",
        "24",
        "--rollout.temperature",
        "1.0",
        "--actor.adam.lr",
        "1e-3",
        "--actor.lr_warmup_ratio",
        "0",
        "--logger.logging_steps",
        "1",
        "--logger.tensorboard_dir",
        str(run_dir / "tensorboard"),
        "--ckpt.save_steps",
        str(steps),
        "--ckpt.path",
        str(run_dir / "ckpt"),
        "--ckpt.output_dir",
        str(run_dir / "model"),
        "--train.seed",
        "0",
    ]


@dataclass
class RunResult:
    scenario: str
    returncode: int
    log: str
    run_dir: Path
    report_dir: Path

    def tail(self, lines: int = 80) -> str:
        return "\n".join(self.log.splitlines()[-lines:])

    def check(self) -> "RunResult":
        if self.returncode != 0:
            raise AssertionError(
                f"e2e scenario {self.scenario!r}: the launcher exited {self.returncode}; log tail:\n{self.tail()}"
            )
        return self

    def scalars(self) -> Dict[str, List[float]]:
        """Every TensorBoard scalar of the run, read back from the event files: {tag: [value per step]}."""
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        values: Dict[str, List[float]] = {}
        for events in sorted((self.run_dir / "tensorboard").rglob("events.out.tfevents.*")):
            accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0})
            accumulator.Reload()
            for tag in accumulator.Tags()["scalars"]:
                values.setdefault(tag, []).extend(event.value for event in accumulator.Scalars(tag))
        return values


def run_launcher(
    scenario: str,
    flags: List[str],
    run_dir: Path,
    head: RayHead,
    extra_env: Optional[Dict[str, str]] = None,
    timeout_s: float = 600,
) -> RunResult:
    """``python -m openrlhf.cli.train_ppo_ray FLAGS`` against ``head``; the whole output in ``run_dir/launcher.log``.

    The vLLM stand-in's weight-sync reports of this run are moved into ``run_dir/vllm_reports``.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    report_dir = Path(head.env["GD2PO_E2E_REPORT_DIR"])
    for stale in report_dir.glob("*.pt"):
        stale.unlink()
    env = {**head.env, "RAY_ADDRESS": head.address, **(extra_env or {})}
    for key, value in (extra_env or {}).items():
        if value is None:
            env.pop(key)
    command = [sys.executable, "-m", "openrlhf.cli.train_ppo_ray"] + flags
    (run_dir / "command.txt").write_text(" ".join(command))
    started = time.monotonic()
    try:
        completed = subprocess.run(command, env=env, cwd=run_dir, capture_output=True, text=True, timeout=timeout_s)
        returncode, log = completed.returncode, completed.stdout + completed.stderr
    except subprocess.TimeoutExpired as expired:
        returncode = -1
        log = (
            (expired.stdout or b"").decode(errors="replace")
            + (expired.stderr or b"").decode(errors="replace")
            + f"\n[e2e harness] timed out after {timeout_s} s"
        )
    log += f"\n[e2e harness] scenario {scenario!r} took {time.monotonic() - started:.0f} s"
    (run_dir / "launcher.log").write_text(log)
    reports = run_dir / "vllm_reports"
    reports.mkdir(exist_ok=True)
    for report in report_dir.glob("*.pt"):
        report.rename(reports / report.name)
    return RunResult(scenario, returncode, log, run_dir, reports)
