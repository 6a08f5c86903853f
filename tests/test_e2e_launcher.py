"""The user's command, end to end: ``python -m openrlhf.cli.train_ppo_ray --advantage_estimator gd2po ...`` on CPU.

Each scenario runs OpenRLHF's real launcher against a private Ray head (``e2e_harness``) and asserts on what a
user looks at: the TensorBoard tags and values, the checkpoint's files and client state, log lines, the saved
actor weights and the weights the vLLM stand-in received. Run with ``make e2e`` (``make test`` runs them too,
after the unit tests). A failing run names its scenario and prints the launcher's log tail.
"""

from __future__ import annotations

import glob
import http.server
import itertools
import json
import math
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import e2e_harness as harness
import pytest
import torch
from gd2po_testing import wait_until_serving

from gd2po_openrlhf.demo.task import REWARD_KEYS

pytestmark = pytest.mark.e2e

WEIGHTS = ["1", "1", "1", "1", "1", "-1"]
TASK_KEYS = list(REWARD_KEYS)  # correctness, format, length, brevity
PROMPT_TOKENS = len("max 3 8 1 :".split())  # the task's prompts: the length cost model's P


@pytest.fixture(scope="module")
def e2e(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    assets = harness.build_assets(root / "assets")
    head = harness.RayHead(root / "ray", harness.e2e_environment(root / "vllm_reports")).start()
    yield assets, head, root
    head.stop()


def load_safetensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return {name: tensor.float() for name, tensor in load_file(str(path)).items()}


def assert_trained_and_synced(result: harness.RunResult, assets: harness.Assets, syncs: int) -> None:
    """The actor's saved weights moved away from the initial policy, and the vLLM stand-in's last weight sync
    (sent by OpenRLHF's own broadcast_to_vllm → WorkerWrap.update_weight) holds exactly those weights."""
    initial = load_safetensors(assets.policy / "model.safetensors")
    final = load_safetensors(result.run_dir / "model" / "model.safetensors")
    moved = sum(float((final[name] - initial[name].bfloat16().float()).abs().sum()) for name in initial)
    assert moved > 0, f"{result.scenario}: the actor's weights did not change"
    reports = sorted(result.report_dir.glob("vllm_engine*_sync*.pt"), key=lambda p: int(p.stem.rsplit("sync", 1)[1]))
    assert len(reports) == syncs, (
        f"{result.scenario}: {len(reports)} weight syncs reached the vLLM stand-in, expected {syncs}"
    )
    received = torch.load(reports[-1])
    assert set(received) <= set(final) and len(received) == len(initial)
    for name, tensor in received.items():
        assert torch.equal(tensor, final[name]), f"{result.scenario}: vLLM has another {name} than the saved actor"
    assert "[gd2po e2e stand-in] torch.cuda shim active" in result.log
    assert "vLLM stand-in (dev/e2e): generating with transformers on CPU" in result.log


def multi_source_flags(assets: harness.Assets) -> list:
    # τ = 0.3: with two randomly initialised model scores nearly every rollout is mixed-sign (see base_flags).
    return [
        "--advantage_estimator",
        "gd2po",
        "--gd2po.snr_threshold",
        "0.3",
        "--reward.remote_url",
        str(assets.reward_file),
        "--reward.model_name_or_path",
        str(assets.reward_model),
        "--cost.model_name_or_path",
        str(assets.cost_model),
        "--gd2po.reward_keys",
        *TASK_KEYS,
        "reward_model",
        "cost",
        "--gd2po.reward_weights",
        *WEIGHTS,
        "--ds.value_head_prefix",
        "score_head",  # as the safe-alignment recipe passes it for its checkpoints
    ]


def test_a_reward_file_reward_model_and_cost_model_with_kl_checkpoint_and_resume(e2e):
    assets, head, root = e2e
    run_dir = root / "a"
    flags = harness.base_flags(assets, run_dir) + multi_source_flags(assets) + ["--algo.kl.init_coef", "0.01"]
    result = harness.run_launcher("a: reward file + reward model + cost model", flags, run_dir, head).check()
    # Both model groups found their score_head weights: a head missing under the prefix would be newly initialised
    # and listed as MISSING in transformers' load report (what the README tells users to look for).
    assert "score_head.weight | MISSING" not in result.log and "RewardModel LOAD REPORT" not in result.log

    scalars = result.scalars()
    for key in TASK_KEYS + ["reward_model", "cost"]:
        assert len(scalars[f"train/reward/{key}"]) == 2 and all(map(math.isfinite, scalars[f"train/reward/{key}"]))
    assert len(scalars["train/gd2po/keep_ratio"]) == 2
    assert all(0 <= value <= 1 for value in scalars["train/gd2po/keep_ratio"])
    assert scalars["train/gd2po/num_reward_dims"] == [6.0, 6.0]
    # what the rewards' disagreement and the filter do to the advantage mass, every pair of the 6 keys named
    keys = TASK_KEYS + ["reward_model", "cost"]
    for a, b in itertools.combinations(keys, 2):
        assert all(0 <= value <= 1 for value in scalars[f"train/gd2po/pair_cancelled/{a}__{b}"]), (a, b)
    for name in ("cancelled_mass_ratio", "filtered_mass_ratio", "kappa_mass_ratio"):
        assert len(scalars[f"train/gd2po/{name}"]) == 2 and all(0 <= v <= 1 for v in scalars[f"train/gd2po/{name}"])
    assert scalars["train/gd2po/snr_threshold"] == pytest.approx([0.3, 0.3])
    assert scalars["train/gd2po/advantage_abs_mean"][0] > 0, "step 1 trained (see base_flags on tiny batches)"
    assert scalars["train/kl"][1] != 0, "KL in the reward: after step 1's update the actor differs from the reference"
    assert_trained_and_synced(result, assets, syncs=2)

    (states_file,) = glob.glob(str(run_dir / "ckpt" / "_actor" / "global_step2" / "mp_rank_00_model_states.pt"))
    client_state = torch.load(states_file, map_location="cpu", weights_only=False)
    assert client_state["gd2po"]["gd2po.snr_threshold"] == 0.3
    assert client_state["gd2po"]["gd2po.reward_weights"] == [1.0, 1.0, 1.0, 1.0, 1.0, -1.0]
    assert [key for key, _, _ in client_state["gd2po"]["dimensions"]] == TASK_KEYS + ["reward_model", "cost"]

    # Resume from step 2 with a changed τ and one more step of prompts: the checkpoint's τ is restored, with a warning.
    resume_flags = (
        harness.base_flags(assets, run_dir, steps=3)
        + multi_source_flags(assets)
        + [
            "--algo.kl.init_coef",
            "0.01",
            "--ckpt.load_enable",
            "--gd2po.snr_threshold",
            "0.5",
            "--logger.tensorboard_dir",
            str(run_dir / "tensorboard_resumed"),
        ]
    )
    # Its dry run reads DeepSpeed's checkpoint and shows the settings the resumed run will train on.
    dry = harness.run_launcher(
        "a (dry run of the resume)", resume_flags, run_dir / "dry_run", head, extra_env={"GD2PO_DRY_RUN": "1"}
    ).check()
    assert "snr (τ = 0.3," in dry.log and "  resume            from --ckpt.path " in dry.log
    resumed = harness.run_launcher("a (resume with --gd2po.snr_threshold 0.5)", resume_flags, run_dir, head).check()
    assert "--gd2po.snr_threshold checkpoint 0.3, command line 0.5" in resumed.log
    assert "Restored from the checkpoint" in resumed.log
    resumed_tau = [
        value for path, value in _scalar_files(run_dir / "tensorboard_resumed", "train/gd2po/snr_threshold")
    ]
    assert resumed_tau == pytest.approx([0.3]), "the resumed step trains with the checkpoint's τ"


def _scalar_files(directory: Path, tag: str):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for events in sorted(directory.rglob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0})
        accumulator.Reload()
        if tag in accumulator.Tags()["scalars"]:
            yield from ((events, event.value) for event in accumulator.Scalars(tag))


NAN_ONCE_REWARD_FILE = '''
"""The demo task's rewards, except that the third rollout scored gets a NaN correctness, on every retry too."""
import math
import threading

from gd2po_openrlhf.demo.task import REWARD_KEYS, score_response

lock, seen, poisoned = threading.Lock(), [], []


def reward_func(queries, prompts, labels):
    scores = [score_response(q[len(p):], l) for q, p, l in zip(queries, prompts, labels)]
    with lock:
        for query, score in zip(queries, scores):
            if query not in seen:
                seen.append(query)
                if len(seen) == 3:
                    poisoned.append(query)
            if query in poisoned:
                score["correctness"] = math.nan
    return {"rewards": [sum(s.values()) for s in scores],
            "extra_logs": {f"reward/{key}": [s[key] for s in scores] for key in REWARD_KEYS}}
'''


class FaultProxy(http.server.ThreadingHTTPServer):
    """Loopback proxy in front of the reward server: answers the first POST with HTTP 503, forwards the rest (and
    their Authorization header, counting the POSTs that carry one)."""

    def __init__(self, upstream: str):
        self.upstream, self.posts, self.answered_503, self.with_token = upstream, 0, 0, 0
        self.lock = threading.Lock()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(handler):
                body = handler.rfile.read(int(handler.headers["Content-Length"]))
                token = handler.headers.get("Authorization")
                with self.lock:
                    self.posts += 1
                    self.with_token += token is not None
                    fail = self.posts == 1
                if fail:
                    self.answered_503 += 1
                    status, answer = 503, b'{"error": "injected fault"}'
                else:
                    headers = {"Content-Type": "application/json", **({"Authorization": token} if token else {})}
                    request = urllib.request.Request(self.upstream, data=body, headers=headers)
                    try:
                        with urllib.request.urlopen(request, timeout=60) as response:
                            status, answer = response.status, response.read()
                    except urllib.error.HTTPError as error:  # the server's own error answers pass through unchanged
                        status, answer = error.code, error.read()
                handler.send_response(status)
                handler.send_header("Content-Type", "application/json")
                handler.send_header("Content-Length", str(len(answer)))
                handler.end_headers()
                handler.wfile.write(answer)

            def log_message(handler, *args):
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/get_reward"


def test_b_reward_server_with_a_503_and_a_nan_rollout_drop_group_and_drop_filtered(e2e):
    """The reward server needs a bearer token: the rollout actors, on the nodes of a `ray start` head the driver's
    environment does not reach, send the one of --gd2po.reward_auth_token_file."""
    assets, head, root = e2e
    run_dir = root / "b"
    run_dir.mkdir()
    reward_file = run_dir / "nan_once.py"
    reward_file.write_text(NAN_ONCE_REWARD_FILE)
    token_file = run_dir / "reward-token"
    token_file.write_text("e2e-token-b\n")
    port = harness._free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "gd2po_openrlhf.serve_rewards", "--reward-file", str(reward_file), "--port", str(port)]
        + ["--auth-token-file", str(token_file)],
        stdout=open(run_dir / "server.log", "w"),
        stderr=subprocess.STDOUT,
    )
    try:
        wait_until_serving(port, server, lambda: (run_dir / "server.log").read_text())
        proxy = FaultProxy(f"http://127.0.0.1:{port}/get_reward")
        flags = harness.base_flags(assets, run_dir) + [
            "--advantage_estimator",
            "gd2po",
            "--reward.remote_url",
            proxy.url,
            "--gd2po.reward_keys",
            *TASK_KEYS,
            "--gd2po.on_bad_reward",
            "drop_group",
            "--gd2po.drop_filtered",
            "--gd2po.reward_auth_token_file",
            str(token_file),
        ]
        result = harness.run_launcher(
            "b: reward server with faults, drop_group + drop_filtered", flags, run_dir, head
        ).check()
        proxy.shutdown()
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert proxy.answered_503 == 1 and proxy.posts >= 2 * 32
    assert proxy.with_token == proxy.posts, "every rollout actor's request carried the token"
    assert "HTTP 503" in result.log and "retry 1/" in result.log, "the rollout actor's client retried the 503"
    assert "its prompt group will be dropped" in result.log
    # The server's 500 names the cause, and the rollout actor's final failure carries it to the trainer's warning.
    assert "returned nan for reward key 'correctness' of rollout 0: expected a finite number" in result.log
    scalars = result.scalars()
    assert sum(scalars["train/gd2po/dropped_bad_groups"]) == 1, "the NaN rollout's group, once"
    assert len(scalars["train/gd2po/trained_ratio"]) == 2
    assert all(0 < value <= 1 for value in scalars["train/gd2po/trained_ratio"])
    assert_trained_and_synced(result, assets, syncs=2)


def test_c_async_trainer(e2e):
    assets, head, root = e2e
    run_dir = root / "c"
    flags = harness.base_flags(assets, run_dir) + [
        "--advantage_estimator",
        "gd2po",
        "--reward.remote_url",
        str(assets.reward_file),
        "--gd2po.reward_keys",
        *TASK_KEYS,
        "--train.async_enable",
        "--gd2po.reward_condition",
        "brevity=correctness>=1",
    ]
    result = harness.run_launcher("c: --train.async_enable, a conditioned reward", flags, run_dir, head).check()
    scalars = result.scalars()
    assert len(scalars["train/gd2po/keep_ratio"]) == 2 and scalars["train/gd2po/num_reward_dims"] == [4.0, 4.0]
    assert all(len(scalars[f"train/reward/{key}"]) == 2 for key in TASK_KEYS)
    # brevity counts only on correct rollouts (correctness is 0 or 1): the share whose condition failed is the
    # share of wrong ones, step by step, from the trainer actor of the async run.
    wrong = [1 - value for value in scalars["train/reward/correctness"]]
    assert scalars["train/gd2po/conditioned/brevity"] == pytest.approx(wrong, abs=1e-5)
    assert "condition         reward/brevity counts where reward/correctness >= 1" in result.log
    assert_trained_and_synced(result, assets, syncs=2)


@pytest.mark.parametrize("trainer", ["sync", "async"])
def test_g_dynamic_sampling_with_drop_filtered(e2e, trainer):
    """--gd2po.dynamic_sampling in OpenRLHF's own replacement loop, in the sync trainer actor or the async
    GenerateSamplesActor: every group that trains passed the GD²PO test, rejected ones were replaced, and
    gd2po/dynamic_sampling/* reach TensorBoard (from the async generator, with the rollouts)."""
    assets, head, root = e2e
    run_dir = root / f"g_{trainer}"
    flags = (
        harness.base_flags(assets, run_dir)
        + [
            "--advantage_estimator",
            "gd2po",
            "--reward.remote_url",
            str(assets.reward_file),
            "--gd2po.reward_keys",
            *TASK_KEYS,
            "--gd2po.snr_threshold",
            "0.3",
            "--gd2po.dynamic_sampling",
            "--gd2po.dynamic_sampling_min_kept",
            "2",
            "--gd2po.dynamic_sampling_max_prompts_factor",
            "2",
            "--gd2po.drop_filtered",
            "--data.max_samples",
            "32",  # room for replacements: up to 2 × 8 prompts per step
        ]
        + (["--train.async_enable"] if trainer == "async" else [])
    )
    result = harness.run_launcher(f"g: --gd2po.dynamic_sampling, {trainer}", flags, run_dir, head).check()
    scalars = result.scalars()
    prefix = "train/gd2po/dynamic_sampling/"
    steps = len(scalars[prefix + "pass_rate"])
    assert steps >= 2, f"g: {steps} steps logged"
    for step in range(steps):
        consumed = scalars[prefix + "prompts_consumed"][step]
        passed = scalars[prefix + "pass_rate"][step] * consumed
        rejected = sum(scalars[prefix + f"rejected_{why}"][step] for why in ("constant", "filtered", "bad_reward"))
        # 8 prompts, plus one per rejected group, at most 2 × 8; the last step may find the dataset short.
        assert (8 <= consumed or step == steps - 1) and consumed <= 16
        assert passed + rejected == pytest.approx(consumed)
        assert scalars[prefix + "generated_rollouts"][step] == 4 * consumed
        # OpenRLHF's rollout statistics describe the rollouts of the groups that passed, and only those.
        assert scalars["train/rollout/num_samples"][step] == pytest.approx(4 * passed)
        assert scalars[prefix + "generated_per_trained_rollout"][step] >= 1.0
    assert sum(scalars[prefix + "rejected_constant"]) + sum(scalars[prefix + "rejected_filtered"]) > 0, (
        "g: no group was rejected, the replacement loop was not exercised"
    )
    assert "Filtered out: avg_reward=0.00, threshold=(0.00, 1.00)" in result.log  # OpenRLHF's loop dropped them
    assert "shows this verdict as scores (0.00 = rejected), not rewards" in result.log  # and the plugin said why
    # What trained is in the launcher's log, from the trainer actor (the async TrainingActor too).
    assert "(the GD²PO configuration this run trains with)" in result.log
    assert "filter            snr (τ = 0.3, ε = 1e-08)" in result.log
    assert "[gd2po e2e stand-in] torch.cuda shim active" in result.log

    # Resume with --gd2po.snr_threshold 0.9 against the checkpoint's 0.3: the group test (in the sync trainer actor,
    # or the async GenerateSamplesActor) judges with the restored τ, as the estimator does. A second episode gives
    # the resumed run steps to take.
    resume_flags = flags + [
        "--gd2po.snr_threshold",
        "0.9",
        "--ckpt.load_enable",
        "--train.num_episodes",
        "2",
        "--logger.tensorboard_dir",
        str(run_dir / "tensorboard_resumed"),
    ]
    resumed = harness.run_launcher(f"g (resume with τ 0.9), {trainer}", resume_flags, run_dir, head).check()
    assert "Restored from the checkpoint: --gd2po.snr_threshold checkpoint 0.3, command line 0.9" in resumed.log
    assert "prompt groups passed (at least 2 of 4 rollouts survive the snr filter at τ = 0.3" in resumed.log
    assert "τ = 0.9" not in resumed.log
    resumed_tau = [value for _, value in _scalar_files(run_dir / "tensorboard_resumed", "train/gd2po/snr_threshold")]
    assert resumed_tau and resumed_tau == pytest.approx([0.3] * len(resumed_tau))


def test_d_two_data_parallel_actor_ranks_and_a_logged_only_dimension(e2e):
    """2 actor ranks; brevity has weight 0: logged (train/reward/brevity) but not trained on, and the reference of
    --gd2po.reference_key (train/gd2po/conflict_reference_agreement)."""
    assets, head, root = e2e
    run_dir = root / "d"
    flags = harness.base_flags(assets, run_dir) + [
        "--advantage_estimator",
        "gd2po",
        "--reward.remote_url",
        str(assets.reward_file),
        "--gd2po.reward_keys",
        *TASK_KEYS,
        "--gd2po.reward_weights",
        "1",
        "1",
        "1",
        "0",
        "--gd2po.reference_key",
        "brevity",
        "--actor.num_gpus_per_node",
        "2",
    ]
    result = harness.run_launcher("d: 2 data-parallel actor ranks, brevity logged only", flags, run_dir, head).check()
    assert result.log.count("torch.cuda shim active") >= 2
    scalars = result.scalars()
    assert len(scalars["train/gd2po/keep_ratio"]) == 2
    assert len(scalars["train/reward/brevity"]) == 2 and len(scalars["train/gd2po/reward_mean/brevity"]) == 2
    agreement = scalars["train/gd2po/conflict_reference_agreement"]
    assert len(agreement) == 2 and all(0.0 <= value <= 1.0 for value in agreement), agreement
    assert_trained_and_synced(result, assets, syncs=2)


def test_e_reward_model_with_its_own_tokenizer_and_chat_template(e2e):
    assets, head, root = e2e
    run_dir = root / "e"
    flags = harness.base_flags(assets, run_dir) + [
        "--advantage_estimator",
        "gd2po",
        "--reward.remote_url",
        str(assets.reward_file),
        "--reward.model_name_or_path",
        str(assets.own_template_reward_model),
        "--gd2po.snr_threshold",
        "0.3",
        "--gd2po.reward_keys",
        *TASK_KEYS,
        "reward_model",
        "--gd2po.reward_chat_template",
        "own",
    ]
    result = harness.run_launcher("e: --gd2po.reward_chat_template own", flags, run_dir, head).check()
    scalars = result.scalars()
    assert len(scalars["train/reward/reward_model"]) == 2 and all(
        map(math.isfinite, scalars["train/reward/reward_model"])
    )
    assert scalars["train/gd2po/num_reward_dims"] == [5.0, 5.0]
    assert_trained_and_synced(result, assets, syncs=2)


def test_f_plugin_disabled_runs_stock_group_norm(e2e, tmp_path):
    """GD2PO_DISABLE=1 where Ray starts (so in every worker) and in the launcher: OpenRLHF exactly as shipped."""
    assets, _, root = e2e
    run_dir = root / "f"
    env = harness.e2e_environment(root / "vllm_reports_f")
    env["GD2PO_DISABLE"] = "1"
    head = harness.RayHead(root / "ray_f", env).start()
    try:
        flags = harness.base_flags(assets, run_dir) + [
            "--algo.advantage.estimator",
            "group_norm",
            "--reward.remote_url",
            str(assets.reward_file),
        ]
        result = harness.run_launcher("f: GD2PO_DISABLE=1 with group_norm", flags, run_dir, head).check()
    finally:
        head.stop()
    scalars = result.scalars()
    assert not [tag for tag in scalars if tag.startswith("train/gd2po")]
    assert len(scalars["train/reward"]) == 2
    # The reward file's dimensions reach OpenRLHF as its own extra_logs, unchanged by the plugin.
    assert all(len(scalars[f"train/reward/{key}"]) == 2 for key in TASK_KEYS)
    assert_trained_and_synced(result, assets, syncs=2)


def test_the_length_cost_model_scores_length(e2e):
    """The asset scenario h relies on, through OpenRLHF's own reward model class: cost = 10 · r / (P + r) for a prompt
    of P = 5 tokens."""
    from openrlhf.models import get_llm_for_sequence_regression
    from transformers import AutoTokenizer

    assets, _, _ = e2e
    model = get_llm_for_sequence_regression(
        str(assets.length_cost_model), "reward", value_head_prefix="score_head", attn_implementation="eager"
    ).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(assets.length_cost_model))
    responses = ["", "[EOS]", "<a> 8 </a> [EOS]", "3 8 8 <a> 8 </a> [EOS]", " ".join(["hmm"] * 7) + " [EOS]"]
    texts = ["max 3 8 1 : " + response for response in responses]
    tokenizer.padding_side = "left"  # a padded batch, as the model groups receive it
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        costs = model(batch.input_ids, attention_mask=batch.attention_mask).tolist()
    lengths = [len(response.split()) for response in responses]
    expected = [harness.LENGTH_COST_SCALE * r / (PROMPT_TOKENS + r) for r in lengths]
    assert costs == pytest.approx(expected, abs=0.05)


@pytest.mark.parametrize("trainer", ["sync", "async"])
def test_h_cost_budget_on_a_cost_model_group_with_a_schedule_and_resume(e2e, trainer):
    """--cost.budget on a cost model group whose cost tracks response length (Beaver convention, weight -1), with
    --gd2po.reward_weight_schedule on format and two --gd2po.reward_model groups (three model groups and a reward
    file, 7 dimensions): λ follows dual ascent on the logged batch mean cost, the weights and every dimension reach
    TensorBoard, the checkpoint holds every key, and a resumed run continues λ and the schedule from the checkpoint
    with the same groups (in the PPOTrainer actor, or the async TrainingActor that holds the experience maker)."""
    assets, head, root = e2e
    run_dir = root / f"h_{trainer}"
    budget = 2.0  # about 1.5 response tokens: the warm-started policy writes ~6, so λ rises
    flags = [
        "--advantage_estimator",
        "gd2po",
        "--gd2po.snr_threshold",
        "0.3",
        "--reward.remote_url",
        str(assets.reward_file),
        "--cost.model_name_or_path",
        str(assets.length_cost_model),
        "--ds.value_head_prefix",
        "score_head",
        # Two more model groups: one scoring the policy's tokens with --ds.value_head_prefix, one with its own
        # tokenizer, chat template and value head.
        "--gd2po.reward_model",
        f"helpful={assets.reward_model}",
        "--gd2po.reward_model",
        f"judge={assets.own_template_reward_model},value_head_prefix=score,chat_template=own",
        "--gd2po.reward_keys",
        *TASK_KEYS,
        "cost",
        "helpful",
        "judge",
        "--gd2po.reward_weights",
        "1",
        "1",
        "0",
        "0",
        "-1",
        "0.5",
        "0.5",
        "--cost.budget",
        str(budget),
        "--cost.lambda_lr",
        "0.5",
        "--gd2po.reward_weight_schedule",
        "format=1:0:2",
    ] + (["--train.async_enable"] if trainer == "async" else [])
    result = harness.run_launcher(
        f"h: --cost.budget on a length cost model, three model groups, {trainer}",
        harness.base_flags(assets, run_dir) + flags,
        run_dir,
        head,
    ).check()
    scalars = result.scalars()
    means, lambdas = scalars["train/gd2po/constraint_mean/cost"], scalars["train/gd2po/lambda/cost"]
    assert len(means) == len(lambdas) == 2
    # Dual ascent from λ_0 = 1 on the batch mean cost, step by step (λ ← clip(λ + 0.5 · (mean − 2), 0, 10)).
    expected, lam = [], 1.0
    for mean in means:
        lam = min(max(lam + 0.5 * (mean - budget), 0.0), 10.0)
        expected.append(lam)
    assert lambdas == pytest.approx(expected, rel=1e-5)
    assert all(mean > budget for mean in means) and lambdas[1] > lambdas[0] > 1.0, "λ rises while over budget"
    assert scalars["train/gd2po/constraint_violation/cost"] == pytest.approx([m - budget for m in means], rel=1e-5)
    assert scalars["train/gd2po/weight/cost"] == pytest.approx([-lam for lam in lambdas], rel=1e-5)
    assert scalars["train/gd2po/weight/format"] == pytest.approx([1.0, 0.5])
    assert scalars["train/gd2po/weight/correctness"] == [1.0, 1.0]
    # The cost tracks length: the mean of 10·r/(P+r) is at most its value at the mean length (concave).
    for mean, length in zip(means, scalars["train/rollout/response_length_mean"]):
        assert 0 < mean <= harness.LENGTH_COST_SCALE * length / (PROMPT_TOKENS + length) + 0.05
    (states_file,) = glob.glob(str(run_dir / "ckpt" / "_actor" / "global_step2" / "mp_rank_00_model_states.pt"))
    client_state = torch.load(states_file, map_location="cpu", weights_only=False)
    assert client_state["gd2po_state"]["constraint_lambda"] == pytest.approx(lambdas[1], rel=1e-5)
    assert client_state["gd2po"]["cost.budget"] == budget
    # Every dimension trained and logged, the model groups' keys and paths in the checkpoint.
    keys = TASK_KEYS + ["cost", "helpful", "judge"]
    assert scalars["train/gd2po/num_reward_dims"] == [7.0, 7.0]
    for key in ("helpful", "judge"):
        assert len(scalars[f"train/reward/{key}"]) == 2 and all(map(math.isfinite, scalars[f"train/reward/{key}"]))
    assert [key for key, _, _ in client_state["gd2po"]["dimensions"]] == keys
    assert [entry.split("=")[0] for entry in client_state["gd2po"]["gd2po.reward_model"]] == ["helpful", "judge"]
    # The launch log lists every model group with its placement and settings.
    assert (
        "reward/judge                --gd2po.reward_model         1x1 GPUs  value head score  chat template own"
        in (result.log)
    )
    assert "reward/cost                 --cost.model_name_or_path    1x1 GPUs  value head score_head" in result.log

    resume_flags = harness.base_flags(assets, run_dir, steps=3) + flags
    resume_flags += ["--ckpt.load_enable", "--logger.tensorboard_dir", str(run_dir / "tensorboard_resumed")]
    resumed = harness.run_launcher(f"h (resume), {trainer}", resume_flags, run_dir, head).check()
    assert f"--cost.budget: λ of reward/cost resumes at {lambdas[1]:g}" in resumed.log
    resumed_scalars = {
        tag: [value for _, value in _scalar_files(run_dir / "tensorboard_resumed", f"train/gd2po/{tag}")]
        for tag in ("constraint_mean/cost", "lambda/cost", "weight/format")
    }
    (mean,) = resumed_scalars["constraint_mean/cost"]
    assert resumed_scalars["lambda/cost"] == pytest.approx([min(max(lambdas[1] + 0.5 * (mean - budget), 0), 10)])
    assert resumed_scalars["weight/format"] == [0.0], "the third global step: the schedule has ended at 0"
    judged = [value for _, value in _scalar_files(run_dir / "tensorboard_resumed", "train/reward/judge")]
    assert len(judged) == 1 and "differ from the command line's" not in resumed.log  # the same groups, restored


AGENT_FILE = '''
"""A two-turn agent on the demo's task: the first answer gets feedback and a second try; the final step returns
the reward dimensions (OpenRLHF's MultiTurnAgentExecutor keeps the last step's extra_logs), plus the turns taken.
The first step's extra_logs carry a value no dimension can take: if it reached the trainer, a test would see it."""
import torch
from openrlhf.utils.agent import AgentInstanceBase, MultiTurnAgentExecutor

from gd2po_openrlhf.demo.task import REWARD_KEYS, score_response


class AgentInstance(AgentInstanceBase):
    def __init__(self, *args, **kwargs):
        self.turns = 0

    async def reset(self, states, **kwargs):
        return {"observation": states["observation"]}

    async def step(self, states, **kwargs):
        self.turns += 1
        scores = score_response(states["action_text"], states["label"])
        # OpenRLHF's executor ends a rollout without asking the agent when --data.max_len leaves no room for another
        # turn: then this step must be the last one (the feedback is 2 words; a margin for the word count).
        room = states["sampling_params"].max_tokens - len(states["action_text"].split()) - 2
        done = self.turns == 2 or room < 4
        extra_logs = {"reward/correctness": 1000.0}
        if done:
            extra_logs = {f"reward/{key}": float(scores[key]) for key in REWARD_KEYS}
            extra_logs["reward/turns"] = float(self.turns)
        return {
            "rewards": torch.tensor(scores["correctness"]),
            "scores": torch.tensor(scores["correctness"]),
            "environment_feedback": "" if done else " max :",
            "done": done,
            "extra_logs": extra_logs,
        }


class AgentExecutor(MultiTurnAgentExecutor):
    def __init__(self):
        super().__init__(AgentInstance)
'''


def test_i_a_multi_turn_agent_returns_the_dimensions_at_its_last_step(e2e):
    """--train.agent_func_path with OpenRLHF's MultiTurnAgentExecutor: two turns per rollout, the final step's
    extra_logs become the reward dimensions (the first step's never reach the trainer). GDPO with
    --gd2po.what_if_filter hard: filtered_mass_ratio is what the hard filter would remove, every rollout kept."""
    assets, head, root = e2e
    run_dir = root / "i"
    run_dir.mkdir(parents=True, exist_ok=True)
    agent_file = run_dir / "two_turn_agent.py"
    agent_file.write_text(AGENT_FILE)
    flags = harness.base_flags(assets, run_dir) + [
        "--advantage_estimator",
        "gdpo",
        "--train.agent_func_path",
        str(agent_file),
        "--gd2po.reward_keys",
        *TASK_KEYS,
        "turns",
        "--gd2po.reward_weights",
        "1",
        "1",
        "1",
        "0",
        "0",
        "--gd2po.what_if_filter",
        "hard",
    ]
    result = harness.run_launcher("i: a two-turn agent", flags, run_dir, head).check()
    scalars = result.scalars()
    # most rollouts took the agent's two turns; one whose first answer filled --data.max_len ends after one
    turns = scalars["train/reward/turns"]
    assert all(1.0 <= value <= 2.0 for value in turns) and max(turns) > 1.0, turns
    for key in TASK_KEYS:
        assert len(scalars[f"train/reward/{key}"]) == 2
        assert all(0.0 <= value <= 1.0 for value in scalars[f"train/reward/{key}"]), key
    assert scalars["train/gd2po/num_reward_dims"] == [5.0, 5.0]
    assert scalars["train/gd2po/keep_ratio"] == [1.0, 1.0]
    assert all(0.0 <= value <= 1.0 for value in scalars["train/gd2po/filtered_mass_ratio"])
    assert "what-if filter    hard (not applied)" in result.log
    assert "reward/turns                agent" in result.log
    assert_trained_and_synced(result, assets, syncs=2)


def test_j_two_ray_nodes_the_actor_across_them(e2e):
    """Two Ray nodes on this machine (the head with 1 logical GPU, a second raylet with 3) and a run that needs all
    4: vLLM 1, the actor 2 nodes × 1 GPU, the reference 1. Ray places the groups (OpenRLHF asks for no spread:
    ``--actor.num_nodes 2`` with 1 GPU per node makes no placement group); every placement that fits crosses the
    node boundary (the actor's two ranks on two nodes, or the actor on the second node and vLLM on the head). The
    test reads from the GCS which node each actor ran on, then checks that training, the weight sync and the
    checkpoint worked across it. Both nodes share one file system and the loopback network: what it cannot show."""
    assets, _, root = e2e
    run_dir = root / "j"
    # A short temp dir: Ray's AF_UNIX socket paths under it may not exceed 107 bytes.
    cluster = harness.RayHead(root / "ray2", harness.e2e_environment(root / "vllm_reports_j"), num_gpus=1)
    cluster.start()
    try:
        cluster.add_node(num_gpus=3)
        # gdpo (no filter): every step trains, so the step-2 KL shows the reference scoring a changed actor.
        flags = harness.base_flags(assets, run_dir) + [
            "--advantage_estimator",
            "gdpo",
            "--reward.remote_url",
            str(assets.reward_file),
            "--gd2po.reward_keys",
            *TASK_KEYS,
            "--actor.num_nodes",
            "2",
            "--algo.kl.init_coef",
            "0.01",
        ]
        result = harness.run_launcher("j: two Ray nodes", flags, run_dir, cluster).check()
        placement = cluster.placement()
    finally:
        cluster.stop()
    (run_dir / "placement.json").write_text(json.dumps(placement, indent=1))
    node_names = {node["node_id"]: "head" if node["head"] else "second node" for node in placement["nodes"]}
    assert sorted(node_names.values()) == ["head", "second node"], placement["nodes"]
    landed = {}
    for actor in placement["actors"]:
        landed.setdefault(actor["class_name"], []).append(node_names[actor["node_id"]])
    gpu_groups = ("PolicyModelActor", "ReferenceModelActor", "RolloutRayActor")
    assert [len(landed.get(name, [])) for name in gpu_groups] == [2, 1, 1], landed
    used = [name for group in gpu_groups for name in landed[group]]
    assert (used.count("head"), used.count("second node")) == (1, 3), f"every logical GPU holds one actor: {landed}"
    if len(set(landed["PolicyModelActor"])) == 2:
        crossing = "the actor's two DeepSpeed ranks"
    else:
        assert landed["RolloutRayActor"] != landed["PolicyModelActor"][:1], landed
        crossing = "the weight sync from the actor to vLLM"
    print(f"[e2e j] placement: {landed}; the node boundary is crossed by {crossing}")

    scalars = result.scalars()
    assert scalars["train/gd2po/num_reward_dims"] == [4.0, 4.0]
    assert scalars["train/gd2po/advantage_abs_mean"][0] > 0, "step 1 trained"
    assert scalars["train/kl"][1] != 0, "the reference scored the trained actor's rollouts"
    assert_trained_and_synced(result, assets, syncs=2)
    assert (run_dir / "ckpt" / "_actor" / "global_step2").is_dir()
