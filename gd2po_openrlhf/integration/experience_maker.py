"""OpenRLHF's experience maker with multi-reward model groups and the GD²PO estimator.

``openrlhf_patches.patch_module`` puts :class:`GD2POExperienceMaker` in place of ``RemoteExperienceMaker``
in ``openrlhf.trainer.ppo_trainer`` (the driver, the PPOTrainer actor and the async TrainingActor). Every estimator
but gd2po/gdpo goes to OpenRLHF untouched. For gd2po/gdpo, one step of ``make_experience_batch`` is:

0. ``split_rollout_samples``: OpenRLHF's micro-batches; the dynamic-sampling counts that came with the rollouts;
1. ``make_experience``: OpenRLHF's forwards, plus one ``info["reward/<key>"]`` column per reward/cost model group
   (remote dimensions arrived with the rollouts: ``remote_rewards._process_response_into_experience``);
2. ``compute_advantages_and_returns``, the core's reward pipeline (``reward_pipeline``) on the step's batch:
   stack the rewards [B, K] → drop groups with a bad reward → condition them (--gd2po.reward_condition) → the
   step's weights (--cost.budget's λ, --gd2po.reward_weight_schedule: ``_step_settings``) → estimate → write the
   token advantages (+ KL returns) → select the rollouts to train (``rollout_selection``);
3. ``take_step_report``: the step's ``gd2po/*`` metrics and the rollouts OpenRLHF's statistics describe, read once
   by ``_compute_rollout_stats`` (here, replacing ``BasePPOTrainer``'s).
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import os
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Dict, List, Optional, Tuple

import ray
import torch
from openrlhf.trainer.ppo_utils.experience import Experience
from openrlhf.trainer.ppo_utils.experience_maker import RemoteExperienceMaker
from openrlhf.trainer.ray.launcher import RayActorGroup, RewardModelActor
from openrlhf.utils.logging_utils import init_logger
from ray.util.placement_group import placement_group, remove_placement_group

from ..constraints import dual_ascent
from ..reward_pipeline import condition, estimate, invalid_rewards, stack_rewards
from .cluster_shape import step_shape
from .dynamic_sampling import COUNTS_ATTRIBUTE, SamplingCounts, sampling_metrics
from .openrlhf_patches import UPSTREAM
from .rollout_selection import FILLER_ATTRIBUTE, rollouts_to_train, select_rollouts
from .settings import (
    GD2PO_ESTIMATORS,
    REMOTE_SOURCES,
    ModelGroup,
    RunSettings,
    replace_weights,
    resolve_settings,
)

logger = init_logger(__name__)


@dataclass
class StepReport:
    """What one ``compute_advantages_and_returns`` leaves for OpenRLHF's rollout statistics."""

    generated: List[Experience]  # every rollout with a valid reward: rollout/reward_mean, lengths, ... describe these
    metrics: Dict[str, float]  # logged as train/gd2po/<name>


class GD2POExperienceMaker(RemoteExperienceMaker):
    """``model_actor_class`` is the Ray actor class of the model groups this maker creates itself: the cost model,
    every ``--gd2po.reward_model``, and ``--reward.model_name_or_path`` when a reward file or server is also used
    (which OpenRLHF does not combine)."""

    model_actor_class = RewardModelActor

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.settings: Optional[RunSettings] = None
        self.gd2po_model_groups: Dict[str, RayActorGroup] = {}
        self._step_report: Optional[StepReport] = None
        self._sampling_counts: Optional[SamplingCounts] = None  # --gd2po.dynamic_sampling: this step's batch
        self._fillers: Optional[torch.Tensor] = None  # [B] this step's dynamic-sampling fillers (FILLER_ATTRIBUTE)
        # Steps whose advantages this maker computed (OpenRLHF's global step; a resumed run sets it from the
        # checkpoint): the position of --gd2po.reward_weight_schedule.
        self.completed_steps = 0
        self.constraint_lambda: Optional[float] = None  # --cost.budget: λ after the last step (checkpointed)
        if self.advantage_estimator not in GD2PO_ESTIMATORS:
            return
        self.settings = resolve_settings(self.args)
        self.step_shape = step_shape(self.args, self.settings)
        if self.settings.cost_budget is not None:
            self.constraint_lambda = self.settings.lambda_init
        remote_used = bool(self.settings.remote_dimensions)
        # Tokenizers of the model groups that score their own chat template's rendering, by reward key.
        self.gd2po_model_tokenizers = {}
        # OpenRLHF creates the --reward.model_name_or_path group itself unless a reward file/server is given; the
        # plugin creates every other model group.
        created = [
            group for group in self.settings.model_groups if group.flag != "--reward.model_name_or_path" or remote_used
        ]
        _check_free_gpus(created)
        for group in self.settings.model_groups:
            model_tokenizer = self.load_model_tokenizer(group.path)
            if (group.chat_template or self.settings.reward_chat_template) == "own":
                self.gd2po_model_tokenizers[group.key] = model_tokenizer
            elif model_tokenizer.get_vocab() != self.tokenizer.get_vocab():
                raise ValueError(
                    f"the model group of reward key {group.key!r} ({group.flag} {group.path}) has another vocabulary "
                    f"({len(model_tokenizer.get_vocab())} tokens) than the policy "
                    f"({len(self.tokenizer.get_vocab())}): it would score token ids it does not know. Add "
                    "--gd2po.reward_chat_template own (or chat_template=own in its --gd2po.reward_model entry) to "
                    "re-render each conversation with its own tokenizer and chat template"
                )
        for group in created:
            self.gd2po_model_groups[group.key] = self._create_model_group(group)
        self.openrlhf_reward_key = next(
            (
                group.key
                for group in self.settings.model_groups
                if group.flag == "--reward.model_name_or_path" and group.key not in self.gd2po_model_groups
            ),
            None,
        )
        self.gd2po_rendered = {}

    @property
    def last_step_report(self) -> Optional[StepReport]:
        """The last gd2po/gdpo step's report, until ``take_step_report`` takes it (None for other estimators)."""
        return self._step_report

    def take_step_report(self) -> Optional[StepReport]:
        """The last gd2po/gdpo step's report, once: the next step's statistics never see this step's."""
        report, self._step_report = self._step_report, None
        return report

    def load_model_tokenizer(self, model_path: str):
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

    def _render_for_model(self, samples_list: List[Experience], model_tokenizer) -> Dict[str, list]:
        """Each rollout as ``model_tokenizer``'s chat template renders it: label conversation + decoded response
        (``render_for_model``). The response is the policy's action tokens decoded without special tokens; the
        conversation is the label, JSON chat messages or a plain user message. Returns ``sequences`` and
        ``attention_mask`` lists, one right-padded tensor per micro-batch, as the model groups' ``forward`` takes them.
        """
        sequences, attention_masks = [], []
        for samples in samples_list:
            responses = self.tokenizer.batch_decode(
                [seq[1:][mask].tolist() for seq, mask in zip(samples.sequences, samples.action_mask.bool())],
                skip_special_tokens=True,
            )
            conversations = [
                _label_conversation(label, prompt) for label, prompt in zip(samples.labels, samples.prompts)
            ]
            encoded = render_for_model(model_tokenizer, conversations, responses)
            sequences.append(encoded["input_ids"])
            attention_masks.append(encoded["attention_mask"])
        return {"sequences": sequences, "attention_mask": attention_masks}

    def _dispatch_forward(self, group, sync_condition, **kwargs):
        # OpenRLHF's own reward model group gets its chat template's rendering too (make_experience prepares it).
        if group is self.reward_model_group and self.openrlhf_reward_key in self.gd2po_rendered:
            kwargs.update(self.gd2po_rendered[self.openrlhf_reward_key])
        return super()._dispatch_forward(group, sync_condition, **kwargs)

    def _create_model_group(self, group: ModelGroup) -> RayActorGroup:
        """A sequence-regression model as its own Ray actor group on its own GPUs, with the group's settings."""
        args = self.args
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
            self.model_actor_class,
            pg=placement,
            num_gpus_per_actor=1,
            duplicate_actors=args.ds.ring_attn_size * args.ds.tensor_parallel_size,
        )
        # RewardModelActor reads offload and normalisation from args.reward and the value head from args.ds: give it
        # the group's.
        strategy = copy.copy(self.strategy)
        strategy.args = copy.copy(args)
        strategy.args.reward = SimpleNamespace(
            **{**vars(args.reward), "offload": group.offload, "normalize_enable": group.normalize}
        )
        if group.value_head_prefix:
            strategy.args.ds = SimpleNamespace(**{**vars(args.ds), "value_head_prefix": group.value_head_prefix})
        ray.get(actors.async_init_model_from_pretrained(strategy, group.path))
        return actors

    def split_rollout_samples(self, rollout_samples: List[Experience]) -> List[Experience]:
        if self.settings is not None:
            # --gd2po.dynamic_sampling: the samples generator's counts ride on the rollouts (the async trainer's
            # generator runs in another actor); a batch served from its buffer may carry none, or several.
            counts = [vars(s)[COUNTS_ATTRIBUTE] for s in rollout_samples if COUNTS_ATTRIBUTE in vars(s)]
            self._sampling_counts = sum(counts, SamplingCounts()) if counts else None
            # A rollout whose reward failed (kept for --gd2po.on_bad_reward drop_group) lacks its reward source's
            # extra_logs. OpenRLHF's concat would then build shorter info columns that misalign every later row:
            # give it zeros instead (its group is dropped before anything reads them). Every rollout's info keys in
            # one order: OpenRLHF's strategy.all_reduce runs one collective per key in dict order, so ranks whose
            # orders differ would average different metrics together.
            keys = list(dict.fromkeys(itertools.chain.from_iterable(sample.info for sample in rollout_samples)))
            fillers = [bool(vars(sample).get(FILLER_ATTRIBUTE)) for sample in rollout_samples]
            for sample, filler in zip(rollout_samples, fillers):
                info = {key: sample.info.get(key, torch.zeros(1)) for key in keys}
                if filler:  # a rejected group's rollout: its rewards are logged as trained, never estimated
                    info.update(
                        {
                            key: torch.where(invalid_rewards(value), 0.0, value)
                            for key, value in info.items()
                            if key.startswith("reward/")
                        }
                    )
                sample.info = info
            self._fillers = torch.tensor(fillers, dtype=torch.bool)
        return super().split_rollout_samples(rollout_samples)

    @torch.no_grad()
    def make_experience(self, samples_list: List[Experience]) -> List[Experience]:
        if self.settings is None:
            return super().make_experience(samples_list)
        duplicate_factor = self.args.ds.ring_attn_size * self.args.ds.tensor_parallel_size
        self.gd2po_rendered = {
            key: self._render_for_model(samples_list, tokenizer)
            for key, tokenizer in self.gd2po_model_tokenizers.items()
        }
        policy_tokens = {
            "sequences": [s.sequences for s in samples_list],
            "attention_mask": [s.attention_mask for s in samples_list],
        }
        # Dispatch our model groups first so that they run alongside the actor/reference forwards.
        model_refs = {
            key: self._dispatch_forward(
                group, False, **self.gd2po_rendered.get(key, policy_tokens), pad_sequence=[True] * len(samples_list)
            )
            for key, group in self.gd2po_model_groups.items()
        }
        # Without a reward file/server, OpenRLHF's own reward model group scores the rollouts.
        openrlhf_reward_model = samples_list[0].rewards is None
        experiences = super().make_experience(samples_list)
        if openrlhf_reward_model:
            for experience in experiences:
                experience.info[f"reward/{self.openrlhf_reward_key}"] = experience.rewards.float().clone()
        for key, refs in model_refs.items():
            outputs = self._flatten_results(refs, duplicate_factor)
            for experience, output in zip(experiences, outputs):
                output = torch.as_tensor(output).float().reshape(-1)
                if output.numel() != len(experience.sequences):
                    dim = self.settings.dimension(key)
                    raise ValueError(
                        f"{dim.source.replace('_', ' ')} {dim.location} returned {output.numel()} scores for a "
                        f"micro-batch of {len(experience.sequences)} rollouts (reward key {key!r})"
                    )
                experience.info[f"reward/{key}"] = output
        return experiences

    @torch.no_grad()
    def compute_advantages_and_returns(self, experiences: List[Experience]) -> List[Experience]:
        """GD²PO token advantages for gd2po/gdpo; OpenRLHF's own computation for every other estimator.

        advantages = returns = rollout advantage × action mask (+ the reverse-cumulated −β·KL rewards on kept
        rollouts when OpenRLHF puts KL in the reward); rewards and info["reward"] become the weighted sum
        Σ_k w_k r_k so OpenRLHF's logging, sample display and eval keep working. Returns the rollouts to train on.
        """
        if self.settings is None:
            return super().compute_advantages_and_returns(experiences)
        rewards = self._stack_rewards(experiences)
        indices = torch.tensor(list(itertools.chain.from_iterable(exp.index for exp in experiences)))
        groups = indices // self.settings.n_samples_per_prompt
        lengths = torch.cat([exp.action_mask.sum(dim=-1) for exp in experiences])
        # Dynamic sampling's fillers (rejected groups topping up a short batch) are never estimated.
        fillers = self._fillers[indices] if self._fillers is not None else torch.zeros(len(indices), dtype=torch.bool)
        self._fillers = None
        rewards, dropped = self._drop_bad_groups(experiences, rewards, indices, groups, fillers)
        excluded = dropped | fillers
        good = ~excluded
        # --gd2po.reward_condition on the raw rewards; info["reward/<key>"] keeps what the source returned.
        rewards, condition_failed = condition(rewards, self.settings.reward_keys, self.settings.conditions)
        settings, weight_metrics = self._step_settings(rewards[good])
        weighted_total = (rewards * torch.tensor(settings.reward_weights, dtype=rewards.dtype)).sum(dim=1)
        # The estimator on the valid rollouts (with --gd2po.sum_rewards, on their weighted sum).
        estimated = estimate(
            rewards[good],
            {key: failed[good] for key, failed in condition_failed.items()},
            groups[good],
            lengths[good],
            settings.gd2po_config,
            settings.sum_rewards,
        )
        result = estimated.result
        rollout_advantages = torch.zeros(len(indices), dtype=result.rollout_advantages.dtype)
        rollout_advantages[good] = result.rollout_advantages
        keep = torch.zeros(len(indices), dtype=torch.bool)
        keep[good] = result.keep
        self._write_advantages(experiences, rollout_advantages, keep, weighted_total.float())

        metrics = {f"gd2po/{name}": value for name, value in estimated.metrics.items()}
        metrics.update(weight_metrics)
        if self.settings.on_bad_reward == "drop_group":
            metrics["gd2po/dropped_bad_groups"] = float(groups[dropped].unique().numel())
        if self._sampling_counts is not None:
            metrics.update(sampling_metrics(self._sampling_counts, int((good & keep).sum())))
            self._sampling_counts = None
        # The rollouts to train, sized so that every data-parallel rank gets equal work (cluster_shape.StepShape).
        generated = trained = experiences
        shortened = self.settings.drop_filtered or bool(excluded.any())
        if shortened or self.step_shape.balanced_size(len(indices)) != len(indices):
            micro_batch_size, pad_token_id = self.args.rollout.micro_batch_size, self.tokenizer.pad_token_id
            if excluded.any():
                generated = select_rollouts(experiences, good, micro_batch_size, pad_token_id)
            selected = rollouts_to_train(
                good & keep if self.settings.drop_filtered else good, lengths, excluded, self.step_shape
            )
            if not bool(selected.all()):
                trained = select_rollouts(experiences, selected, micro_batch_size, pad_token_id)
            if shortened:
                metrics["gd2po/trained_ratio"] = int(selected.sum()) / len(indices)
        self._step_report = StepReport(generated=generated, metrics=metrics)
        return trained

    def _step_settings(self, rewards: torch.Tensor) -> Tuple[RunSettings, Dict[str, float]]:
        """This step's settings and their metrics; counts the step.

        With --cost.budget, λ takes one dual-ascent step (``constraints.dual_ascent``) on the batch mean of the
        budgeted dimension over ``rewards`` (the valid rollouts [B, K]) before the estimator sees it; with
        --gd2po.reward_weight_schedule, each scheduled weight is read at this step. Unchanged settings otherwise.
        """
        settings, step = self.settings, self.completed_steps
        self.completed_steps += 1
        if not settings.weights_move:
            return settings, {}
        metrics = {}
        if settings.cost_budget is not None:
            key = settings.constraint_key
            batch_mean = float(rewards[:, settings.reward_keys.index(key)].mean())
            self.constraint_lambda, violation = dual_ascent(
                self.constraint_lambda,
                batch_mean,
                settings.cost_budget,
                is_cost=settings.dimension(key).weight < 0,
                learning_rate=settings.lambda_lr,
                max_multiplier=settings.lambda_max,
                log_space=settings.lambda_log_space,
            )
            metrics[f"gd2po/lambda/{key}"] = self.constraint_lambda
            metrics[f"gd2po/constraint_violation/{key}"] = violation
            metrics[f"gd2po/constraint_mean/{key}"] = batch_mean
        weights = settings.step_weights(step, self.constraint_lambda)
        metrics.update({f"gd2po/weight/{key}": weight for key, weight in zip(settings.reward_keys, weights)})
        return replace_weights(settings, weights), metrics

    def _stack_rewards(self, experiences: List[Experience]) -> torch.Tensor:
        """The rewards [B, K] (float64, rollouts in the experiences' order, one column per reward key); a batch
        whose reward keys differ from --gd2po.reward_keys is refused, naming the key, its source and a prompt."""
        keys = self.settings.reward_keys
        declared = {f"reward/{key}" for key in keys}
        # The micro-batches of one step normally share their info keys: check the first, compare the others'
        # key sets to it (one set comparison each), and look closer only when they differ.
        first_keys = experiences[0].info.keys()
        same_keys = all(experience.info.keys() == first_keys for experience in experiences)
        for experience in experiences[:1] if same_keys else experiences:
            unexpected = sorted(k for k in experience.info if k.startswith("reward/") and k not in declared)
            missing = [k for k in keys if f"reward/{k}" not in experience.info]
            if unexpected or missing:
                dim = self.settings.dimension(missing[0]) if missing else None
                raise ValueError(
                    f"reward keys of the batch do not match --gd2po.reward_keys {list(keys)}: "
                    + (f"missing {missing} (source: {dim.source} {dim.location}) " if missing else "")
                    + (f"unexpected {unexpected} " if unexpected else "")
                    + f"for prompt {experience.prompts[0]!r:.200}"
                )
        return stack_rewards([experience.info for experience in experiences], keys)

    def _drop_bad_groups(
        self,
        experiences: List[Experience],
        rewards: torch.Tensor,
        indices: torch.Tensor,
        groups: torch.Tensor,
        fillers: torch.Tensor,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """The rewards with every bad value zeroed, and the mask [B] of rollouts whose prompt group has a bad reward
        (a model group's NaN, inf or |r| > MAX_ABS_REWARD, or a remote reward that arrived as the NaN marker under
        drop_group).

        With --gd2po.on_bad_reward error, or when every group is bad (a reward source down as a whole should stop
        the run, not burn GPU hours), raises naming each bad group's first bad value; with drop_group, warns and
        zeroes the bad values in the experiences' info too (OpenRLHF concatenates and logs them).
        """
        invalid = invalid_rewards(rewards) & ~fillers.unsqueeze(1)
        dropped = torch.isin(groups, groups[invalid.any(dim=1)]) & ~fillers
        if not dropped.any():
            return rewards, dropped
        policy, n_samples = self.settings.on_bad_reward, self.settings.n_samples_per_prompt
        prompts = list(itertools.chain.from_iterable(exp.prompts for exp in experiences))
        bad_rows, bad_columns = invalid.nonzero(as_tuple=True)
        first_of_group = {}
        for row, column in zip(bad_rows.tolist(), bad_columns.tolist()):  # bad values only: not a hot path
            first_of_group.setdefault(int(groups[row]), (row, column))
        reasons = []
        for row, column in first_of_group.values():
            dim = self.settings.dimensions[column]
            value = float(rewards[row, column])
            # Under drop_group a remote reward that failed validation arrives as a NaN marker: its real value or
            # cause is in the warning logged when it arrived.
            marker = policy == "drop_group" and dim.source in REMOTE_SOURCES and math.isnan(value)
            shown = "invalid at its source (see the warning above)" if marker else value
            reasons.append(
                f"reward key {dim.key!r} is {shown} (source: {dim.source.replace('_', ' ')} {dim.location}) "
                f"for rollout {int(indices[row])} (sample {int(indices[row]) % n_samples} of prompt "
                f"{prompts[row]!r:.200})"
            )
        if policy == "error" or bool((dropped | fillers).all()):
            raise ValueError(
                ("every prompt group of the step has a bad reward, nothing to train on: " if policy != "error" else "")
                + "; ".join(reasons[:3])
                + (f" (and {len(reasons) - 3} more groups)" if len(reasons) > 3 else "")
                + (
                    ". --gd2po.on_bad_reward drop_group drops such groups from the step instead"
                    if policy == "error"
                    else ""
                )
            )
        logger.warning(
            f"--gd2po.on_bad_reward drop_group: dropping {len(reasons)} of {int(groups.unique().numel())} prompt "
            "groups "
            "from this step: " + "; ".join(reasons)
        )
        cleaned = torch.where(invalid, torch.zeros_like(rewards), rewards)
        for experience, row_rewards in zip(experiences, cleaned.split([len(e.index) for e in experiences])):
            experience.info.update(
                {f"reward/{key}": row_rewards[:, k].float() for k, key in enumerate(self.settings.reward_keys)}
            )
        return cleaned, dropped

    def _write_advantages(
        self, experiences: List[Experience], rollout_advantages: torch.Tensor, keep: torch.Tensor, totals: torch.Tensor
    ) -> None:
        """Each experience's token advantages and returns, with the weighted reward sum as its rewards."""
        args = self.args
        kl_in_reward = self.initial_model_group is not None and not args.algo.kl.use_loss and self.kl_ctl.value > 0
        exp_len = [len(exp.index) for exp in experiences]
        # Split once into per-Experience views; each Experience then costs one [b, t] product (bool mask ×
        # float column promotes to float32 in the same pass).
        columns, first_token_returns = (
            rollout_advantages.unsqueeze(1).split(exp_len),
            rollout_advantages.split(exp_len),
        )
        for experience, column, first_token_return, rollout_keep, total in zip(
            experiences, columns, first_token_returns, keep.split(exp_len), totals.split(exp_len)
        ):
            action_mask = experience.action_mask
            advantages = action_mask * column
            if kl_in_reward:
                # γ = 1 returns of the per-token KL rewards: a reverse cumulative sum, no loop over tokens.
                kl_reward = -self.kl_ctl.value * experience.kl.float() * action_mask
                advantages = advantages + kl_reward.flip(-1).cumsum(-1).flip(
                    -1
                ) * action_mask * rollout_keep.unsqueeze(1)
                first_token_return = first_token_return + kl_reward.sum(-1) * rollout_keep
            experience.advantages = advantages
            # The same tensor: without a critic nothing reads returns, and nothing writes either in place.
            experience.returns = advantages
            experience.rewards = total
            experience.info["reward"] = total
            experience.info["return"] = first_token_return  # the return at the first response token
            experience.kl = None


def _check_free_gpus(groups: List[ModelGroup]) -> None:
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


def _label_conversation(label, prompt) -> List[dict]:
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


# ---- trainer process: openrlhf/trainer/ppo_trainer.py, BasePPOTrainer


def _compute_rollout_stats(self, experiences) -> Dict:
    """Mirrors ``BasePPOTrainer._compute_rollout_stats``, which ``train_step`` calls right after
    ``make_experience_batch``: OpenRLHF's statistics over every generated rollout with a valid reward (not only the
    trained ones, with --gd2po.drop_filtered or dropped groups), plus the step's ``gd2po/*`` metrics."""
    take_step_report = getattr(self.experience_maker, "take_step_report", None)
    report = take_step_report() if take_step_report else None
    stats = UPSTREAM["BasePPOTrainer._compute_rollout_stats"](self, report.generated if report else experiences)
    stats.update(report.metrics if report else {})
    return stats
