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

import itertools
import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
from openrlhf.trainer.ppo_utils.experience import Experience
from openrlhf.trainer.ppo_utils.experience_maker import RemoteExperienceMaker
from openrlhf.trainer.ray.launcher import RayActorGroup, RewardModelActor
from openrlhf.utils.logging_utils import init_logger

from ..conditions import apply_conditions
from ..constraints import dual_ascent
from ..reward_pipeline import estimate, invalid_rewards, stack_rewards
from . import model_groups
from .cluster_shape import step_shape
from .dynamic_sampling import COUNTS_ATTRIBUTE, SamplingCounts, sampling_metrics
from .openrlhf_patches import UPSTREAM
from .rollout_selection import FILLER_ATTRIBUTE, rollouts_of_step
from .settings import (
    GD2PO_ESTIMATORS,
    REMOTE_SOURCES,
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
    # The tokenizer of a model group's model (a seam for tests, whose stand-in models have none).
    load_model_tokenizer = staticmethod(model_groups.load_model_tokenizer)

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
        # Tokenizers of the model groups that score their own chat template's rendering, by reward key.
        self.gd2po_model_tokenizers = {}
        created = [group for group in self.settings.model_groups if group.owner == "plugin"]
        model_groups.check_free_gpus(created)
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
            self.gd2po_model_groups[group.key] = model_groups.create_model_group(
                group, self.args, self.strategy, self.model_actor_class
            )
        self.openrlhf_reward_key = next((g.key for g in self.settings.model_groups if g.owner == "openrlhf"), None)
        self.gd2po_rendered = {}

    @property
    def last_step_report(self) -> Optional[StepReport]:
        """The last gd2po/gdpo step's report, until ``take_step_report`` takes it (None for other estimators)."""
        return self._step_report

    def take_step_report(self) -> Optional[StepReport]:
        """The last gd2po/gdpo step's report, once: the next step's statistics never see this step's."""
        report, self._step_report = self._step_report, None
        return report

    def _dispatch_forward(self, group, sync_condition, **kwargs):
        # OpenRLHF's own reward model group gets its chat template's rendering too (make_experience prepares it).
        if group is self.reward_model_group and self.openrlhf_reward_key in self.gd2po_rendered:
            kwargs.update(self.gd2po_rendered[self.openrlhf_reward_key])
        return super()._dispatch_forward(group, sync_condition, **kwargs)

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
            key: model_groups.render_samples(samples_list, self.tokenizer, tokenizer)
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
        rewards, condition_failed = apply_conditions(rewards, self.settings.reward_keys, self.settings.conditions)
        settings, weight_metrics = self._step_settings(rewards[good])
        weighted_total = (rewards * torch.tensor(settings.reward_weights, dtype=rewards.dtype)).sum(dim=1)
        # The estimator on the valid rollouts (with --gd2po.sum_rewards, on their weighted sum).
        estimated = estimate(rewards[good], groups[good], lengths[good], settings.gd2po_config, settings.sum_rewards)
        result = estimated.result
        rollout_advantages = torch.zeros(len(indices), dtype=result.rollout_advantages.dtype)
        rollout_advantages[good] = result.rollout_advantages
        keep = torch.zeros(len(indices), dtype=torch.bool)
        keep[good] = result.keep
        self._write_advantages(experiences, rollout_advantages, keep, weighted_total.float())

        metrics = {f"gd2po/{name}": value for name, value in estimated.metrics.items()}
        metrics.update(weight_metrics)
        failed_share = condition_failed[good].double().mean(dim=0).tolist()
        keys = settings.reward_keys
        metrics.update({f"gd2po/conditioned/{c.key}": failed_share[keys.index(c.key)] for c in settings.conditions})
        if self.settings.on_bad_reward == "drop_group":
            metrics["gd2po/dropped_bad_groups"] = float(groups[dropped].unique().numel())
        if self._sampling_counts is not None:
            metrics.update(sampling_metrics(self._sampling_counts, int((good & keep).sum())))
            self._sampling_counts = None
        generated, trained, trained_ratio = rollouts_of_step(
            experiences,
            good,
            good & keep if self.settings.drop_filtered else good,
            lengths,
            self.step_shape,
            self.args.rollout.micro_batch_size,
            self.tokenizer,
        )
        if self.settings.drop_filtered or bool(excluded.any()):
            metrics["gd2po/trained_ratio"] = trained_ratio
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
