"""The reward/cost model groups the plugin creates (``ModelGroup.owner == "plugin"``): each a sequence-regression
model in its own Ray actor group on its own GPUs, placed with a deadline, and, with ``--gd2po.reward_chat_template
own``, each rollout re-rendered with the model's own chat template without letting the policy's text forge its
special tokens. ``GD2POExperienceMaker`` creates the groups and calls them in ``make_experience``.
"""

from __future__ import annotations

import copy
import json
import os
from types import SimpleNamespace
from typing import Dict, List

import ray
import torch
from openrlhf.trainer.ppo_utils.experience import Experience
from openrlhf.trainer.ray.launcher import RayActorGroup
from ray.util.placement_group import placement_group, remove_placement_group

from .settings import ModelGroup


def check_free_gpus(groups: List[ModelGroup]) -> None:
    """Refuses model groups that ask for more GPUs than the Ray cluster has free (they would wait for ever)."""
    if not groups:
        return
    asked = sum(group.gpus for group in groups)
    free = ray.available_resources().get("GPU", 0)
    if asked > free:
        each = ", ".join(f"{g.key}: {g.nodes}x{g.gpus_per_node}" for g in groups)
        raise ValueError(
            f"the reward/cost model groups ask for {asked} GPUs ({each}) but the Ray cluster has {free:g} free after "
            "the actor, reference and vLLM groups: lower their nodes or gpus_per_node, or add GPUs"
        )


# Stands for the response while the chat template renders around it: private-use characters no template writes.
RESPONSE_MARK = "\ue000gd2po-response\ue000"


def render_for_model(
    model_tokenizer, conversations: List[List[dict]], responses: List[str]
) -> Dict[str, torch.Tensor]:
    """``input_ids`` and ``attention_mask`` [B, T] (right-padded) of each conversation + its assistant response as
    ``model_tokenizer``'s chat template renders it, with the template's special tokens parsed and the response's
    never: a policy that spells ``<|im_end|>`` or ``<|eot_id|>`` in ordinary tokens cannot close its turn and write
    a user turn that the reward model would read as real.

    The template renders each conversation twice, around the response and around ``RESPONSE_MARK``: what precedes
    and follows the mark is the template's (tokenized with special tokens), what lies between them in the real
    rendering is the response as the template put it (trimmed, say), tokenized with ``split_special_tokens``.
    """
    honest = model_tokenizer.apply_chat_template(
        [c + [{"role": "assistant", "content": r}] for c, r in zip(conversations, responses)], tokenize=False
    )
    marked = model_tokenizer.apply_chat_template(
        [c + [{"role": "assistant", "content": RESPONSE_MARK}] for c in conversations], tokenize=False
    )
    parts = []  # (template before, response, template after) of each rollout
    for text, template in zip(honest, marked):
        before, found, after = template.partition(RESPONSE_MARK)
        if (
            not found
            or len(before) + len(after) > len(text)
            or not text.startswith(before)
            or not text.endswith(after)
        ):
            raise ValueError(
                f"the chat template of the reward model tokenizer {model_tokenizer.name_or_path!r} renders the "
                "assistant's message in a way the plugin cannot separate from the template's own text, so it cannot "
                "keep special tokens the policy wrote out of the reward model's input: use a template that inserts "
                "the message's content as it is"
            )
        parts.append((before, text[len(before) : len(text) - len(after)], after))
    before, response, after = (list(column) for column in zip(*parts))
    template_ids = model_tokenizer(before + after, add_special_tokens=False)["input_ids"]
    response_ids = model_tokenizer(response, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    rows = [
        head + middle + tail
        for head, middle, tail in zip(template_ids[: len(parts)], response_ids, template_ids[len(parts) :])
    ]
    return model_tokenizer.pad({"input_ids": rows}, padding=True, return_tensors="pt")


def label_conversation(label, prompt) -> List[dict]:
    """The chat messages a label carries for --gd2po.reward_chat_template own: a JSON list of messages or a user
    string."""
    if isinstance(label, str) and label.lstrip().startswith("["):
        try:
            label = json.loads(label)
        except json.JSONDecodeError:
            pass
    if isinstance(label, list) and label and all(isinstance(m, dict) and {"role", "content"} <= set(m) for m in label):
        return [{"role": m["role"], "content": m["content"]} for m in label]
    if isinstance(label, str) and label.strip():
        return [{"role": "user", "content": label}]
    raise ValueError(
        "--gd2po.reward_chat_template own needs each prompt's conversation in its label (--data.label_key), as JSON "
        "chat "
        f"messages or a user string; prompt {prompt!r:.200} has label {label!r:.200}"
    )


def create_model_group(group: ModelGroup, args, strategy, actor_class: type) -> RayActorGroup:
    """A sequence-regression model as its own Ray actor group of ``actor_class`` on its own GPUs, with the group's
    settings (OpenRLHF's ``args`` and ``strategy`` otherwise)."""
    # Placed here, with a deadline: RayActorGroup would wait for its GPUs for ever (a free-GPU count read once
    # can be wrong by the time the group asks, e.g. when another job takes them).
    placement = placement_group([{"GPU": 1, "CPU": 1}] * group.gpus, strategy="PACK")
    timeout_s = float(os.environ.get("GD2PO_PLACEMENT_TIMEOUT_S", "600"))
    try:
        ray.get(placement.ready(), timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        remove_placement_group(placement)
        raise RuntimeError(
            f"the model group of reward key {group.key!r} ({group.flag}, {group.nodes}x{group.gpus_per_node} "
            f"GPUs) could not be placed within {timeout_s:g} s (GD2PO_PLACEMENT_TIMEOUT_S): the Ray cluster has "
            f"{ray.available_resources().get('GPU', 0):g} GPUs free now. Lower its nodes or gpus_per_node, or "
            "free GPUs"
        ) from None
    actors = RayActorGroup(
        group.nodes,
        group.gpus_per_node,
        actor_class,
        pg=placement,
        num_gpus_per_actor=1,
        duplicate_actors=args.ds.ring_attn_size * args.ds.tensor_parallel_size,
    )
    # RewardModelActor reads offload and normalisation from args.reward and the value head from args.ds: give it
    # the group's.
    strategy = copy.copy(strategy)
    strategy.args = copy.copy(args)
    strategy.args.reward = SimpleNamespace(
        **{**vars(args.reward), "offload": group.offload, "normalize_enable": group.normalize}
    )
    if group.value_head_prefix:
        strategy.args.ds = SimpleNamespace(**{**vars(args.ds), "value_head_prefix": group.value_head_prefix})
    ray.get(actors.async_init_model_from_pretrained(strategy, group.path))
    return actors


def load_model_tokenizer(model_path: str):
    """The tokenizer shipped with a reward or cost model, padding on the right; without a pad token it pads with
    its end-of-sequence token, as OpenRLHF's own ``get_tokenizer`` does (most Llama-family tokenizers)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=True)
    tokenizer.padding_side = "right"
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(
                f"the tokenizer of the reward/cost model {model_path} has neither a pad nor an end-of-sequence "
                "token: a batch of its renderings cannot be padded; give it a pad_token in tokenizer_config.json"
            )
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def render_samples(samples_list: List[Experience], policy_tokenizer, model_tokenizer) -> Dict[str, list]:
    """Each rollout as ``model_tokenizer``'s chat template renders it: label conversation + decoded response
    (``render_for_model``). The response is the policy's action tokens decoded without special tokens; the
    conversation is the label, JSON chat messages or a plain user message. Returns ``sequences`` and
    ``attention_mask`` lists, one right-padded tensor per micro-batch, as the model groups' ``forward`` takes them.
    """
    sequences, attention_masks = [], []
    for samples in samples_list:
        responses = policy_tokenizer.batch_decode(
            [seq[1:][mask].tolist() for seq, mask in zip(samples.sequences, samples.action_mask.bool())],
            skip_special_tokens=True,
        )
        conversations = [label_conversation(label, prompt) for label, prompt in zip(samples.labels, samples.prompts)]
        encoded = render_for_model(model_tokenizer, conversations, responses)
        sequences.append(encoded["input_ids"])
        attention_masks.append(encoded["attention_mask"])
    return {"sequences": sequences, "attention_mask": attention_masks}
