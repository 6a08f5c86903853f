"""Remote reward sources end to end on the rollout side: OpenRLHF's SingleTurnAgentExecutor (as the vLLM
rollout actors run it) with a real reward file and a real HTTP server on loopback, its response turned
into an Experience by the trainer-side SamplesGenerator."""

import asyncio
import http.server
import json
import math
import threading
from types import SimpleNamespace

import pytest
import torch
from openrlhf.trainer.ppo_utils.experience import Experience
from openrlhf.trainer.ppo_utils.kl_controller import FixedKLController
from openrlhf.trainer.ppo_utils.samples_generator import SamplesGenerator
from openrlhf.utils.agent import SingleTurnAgentExecutor
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

import openrlhf.trainer.ppo_trainer  # noqa: F401  (the import hook patches SamplesGenerator through it)
from gd2po_testing import ScriptedEngine, openrlhf_strategy

VOCAB = ["[UNK]", "[PAD]", "what", "is", "two", "plus", "three", "four", "five", "answer", "<format>"]
RULES = '''
def reward_func(queries, prompts, labels):
    # correctness: the label word appears in the response; format: the response carries <format>
    response = queries[0][len(prompts[0]):]
    return {"rewards": {"correctness": float(labels[0] in response), "format": float("<format>" in response)}}
'''


@pytest.fixture(scope="module")
def tokenizer():
    word_level = Tokenizer(models.WordLevel({w: i for i, w in enumerate(VOCAB)}, unk_token="[UNK]"))
    word_level.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=word_level, unk_token="[UNK]", pad_token="[PAD]")


def rollout(executor, tokenizer, continuation, label="four"):
    params = SimpleNamespace(max_tokens=8, logprobs=None)
    return asyncio.run(executor.execute("what is two plus two", label, params, 64, tokenizer, ScriptedEngine(tokenizer(continuation, add_special_tokens=False)["input_ids"])))


def trainer_side(strategy, response):
    generator = SimpleNamespace(args=strategy.args)
    return SamplesGenerator._process_response_into_experience(generator, response)


def strategy_for(remote_url, *flags):
    return openrlhf_strategy(
        ["--advantage_estimator", "gd2po", "--reward.remote_url", remote_url, "--gd2po.reward_keys", "correctness", "format",
         "--rollout.n_samples_per_prompt", "2", *flags]
    )


@pytest.mark.parametrize("continuation, expected", [("four <format>", [1.0, 1.0]), ("five", [0.0, 0.0]), ("<format> five", [0.0, 1.0])])
def test_reward_file_dimensions_reach_the_experience(tmp_path, tokenizer, continuation, expected):
    rules = tmp_path / "rules.py"
    rules.write_text(RULES)
    response = rollout(SingleTurnAgentExecutor(str(rules)), tokenizer, continuation)
    assert isinstance(response["reward"], dict)  # OpenRLHF passes the dict through untouched
    experience = trainer_side(strategy_for(str(rules)), response)
    assert [experience.info["reward/correctness"].item(), experience.info["reward/format"].item()] == expected
    assert experience.rewards.item() == sum(expected)


def test_reward_file_that_raises_fails_the_step_with_a_clear_error(tmp_path, tokenizer):
    rules = tmp_path / "broken.py"
    rules.write_text("def reward_func(queries, prompts, labels):\n    raise KeyError('label')\n")
    response = rollout(SingleTurnAgentExecutor(str(rules)), tokenizer, "four")
    assert response["reward"] is None  # OpenRLHF's executor still swallows the exception...
    # ... but the plugin's reward client sends the cause along with the rollout
    with pytest.raises(ValueError, match=r"missing for prompt 'what is two plus two': reward function .*broken.py raised KeyError: 'label'"):
        trainer_side(strategy_for(str(rules)), response)
    # a rollout that arrives without any reward and without a cause (OpenRLHF's own client) is refused too
    bare = {**response, "extra_logs": {}}
    with pytest.raises(ValueError, match=r"missing from reward function .*broken.py for prompt 'what is two plus two': it returned no reward"):
        trainer_side(strategy_for(str(rules)), bare)


def test_drop_group_drops_the_groups_of_failed_rollouts_from_reward_file_to_advantages(tmp_path, tokenizer, caplog):
    rules = tmp_path / "flaky.py"
    rules.write_text(
        "def reward_func(queries, prompts, labels):\n"
        "    response = queries[0][len(prompts[0]):]\n"
        "    if 'five' in response:\n"
        "        raise ValueError('cannot score five')\n"
        "    return {'rewards': {'correctness': float('nan') if 'three' in response else float(labels[0] in response),\n"
        "                        'format': float('<format>' in response)}}\n"
    )
    strategy = strategy_for(str(rules), "--gd2po.on_bad_reward", "drop_group", "--train.batch_size", "2", "--rollout.micro_batch_size", "2")
    executor = SingleTurnAgentExecutor(str(rules))
    groups = [["four <format>", "five"], ["four", "three"], ["four <format>", "<format>"]]
    experiences = []
    for index, continuation in enumerate(c for group in groups for c in group):
        experience = trainer_side(strategy, rollout(executor, tokenizer, continuation))
        experience.index = [index]
        experiences.append(experience)
    # the failed rollouts arrive marked, with a finite placeholder for OpenRLHF's own reward field
    assert math.isnan(experiences[1].info["reward/correctness"].item()) and experiences[1].rewards.item() == 0.0
    assert math.isnan(experiences[3].info["reward/format"].item())
    rollout_warnings = " ".join(r.getMessage() for r in caplog.records)
    assert "raised ValueError: cannot score five" in rollout_warnings and "returned nan for reward key 'correctness'" in rollout_warnings
    maker = openrlhf.trainer.ppo_trainer.RemoteExperienceMaker(None, None, None, None, FixedKLController(0.0), strategy, tokenizer)
    batches = [Experience.concat_experiences(experiences[i : i + 2], tokenizer.pad_token_id) for i in range(0, 6, 2)]
    trained = maker.compute_advantages_and_returns(batches)
    assert [e.index for e in trained] == [[4, 5]]
    assert trained[0].info["reward/correctness"].tolist() == [1.0, 0.0] and trained[0].info["reward/format"].tolist() == [1.0, 1.0]
    assert torch.isfinite(trained[0].advantages).all() and float(trained[0].advantages.abs().sum()) > 0
    assert maker.gd2po_metrics["gd2po/dropped_bad_groups"] == 2


@pytest.fixture
def reward_server():
    """A real HTTP reward server on loopback speaking OpenRLHF's {query, prompts, labels} protocol."""
    requests = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            requests.append(body)
            responses = [q[len(p):] for q, p in zip(body["query"], body["prompts"])]
            payload = {
                "rewards": {
                    "correctness": [float(label in r) for r, label in zip(responses, body["labels"])],
                    "format": [float("<format>" in r) for r in responses],
                }
            }
            data = json.dumps(payload).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/get_reward", requests
    server.shutdown()
    server.server_close()


def test_http_reward_server_dimensions_reach_the_experience(tokenizer, reward_server):
    url, requests = reward_server
    response = rollout(SingleTurnAgentExecutor(url), tokenizer, "<format> four")
    experience = trainer_side(strategy_for(url), response)
    assert experience.info["reward/correctness"].tolist() == [1.0] and experience.info["reward/format"].tolist() == [1.0]
    assert requests[0]["labels"] == ["four"] and requests[0]["prompts"] == ["what is two plus two"]


@pytest.mark.parametrize(
    "continuation, expected",
    [("<answer> four </answer>", {"correctness": 1.0, "format": 1.0}), ("four", {"correctness": 0.0, "format": 0.0})],
)
def test_shipped_template_reward_file(tokenizer, continuation, expected):
    import pathlib

    template = pathlib.Path(__file__).resolve().parents[1] / "examples" / "rewards" / "multi_reward_template.py"
    tokenizer.add_tokens(["<answer>", "</answer>"])
    response = rollout(SingleTurnAgentExecutor(str(template)), tokenizer, continuation)
    rewards = response["reward"]
    assert {k: rewards[k] for k in expected} == expected
    assert 0.9 < rewards["brevity"] <= 1.0
