#!/usr/bin/env bash
# Constrained helpfulness–safety alignment: train_gd2po_safe_alignment.sh (same models, data and settings) with
# the cost model as a budget instead of a fixed weight (PPO-Lagrangian, as Safe RLHF trains its Beaver models).
# Each step, before the estimator, λ takes one step of dual ascent on the batch mean of the cost model's score;
# the cost dimension's weight for that step is ±λ, on its group-normalised advantage.
#
#   bash examples/scripts/train_gd2po_safe_alignment_budget.sh                    # GD²PO-SNR, the authors' CM
#   ESTIMATOR=grpo bash examples/scripts/train_gd2po_safe_alignment_budget.sh     # the GRPO-Lagrangian baseline
#   ESTIMATOR=gdpo / FILTER=hard: the other launchers' estimators, constrained alike
#   GD2PO_DRY_RUN=1 bash examples/scripts/train_gd2po_safe_alignment_budget.sh    # prints the sign convention
#
# The sign of COST_WEIGHT says what the model scores, and so what BUDGET means:
#   COST_WEIGHT=+1 (default; the GD²PO authors' Artessay/Qwen2.5-7B-SafeRLHF-CM scores safety, higher = safer):
#     BUDGET is a floor, mean score >= BUDGET; the weight is +λ.
#   COST_WEIGHT=-1 (Beaver: COST_MODEL=PKU-Alignment/beaver-7b-unified-cost, higher = more harmful):
#     BUDGET is a ceiling, mean cost <= BUDGET; the weight is -λ.
# BUDGET=0 (default) is the score's sign boundary, the usual choice for Beaver's cost (harmful on average when
# positive). Both models' scales are their own: score a batch of the initial policy's responses and set BUDGET
# from them before a long run.
# λ: LAMBDA_INIT=1, LAMBDA_LR=0.1, LAMBDA_MAX=10, in log space (LAMBDA_LOG_SPACE=1: λ ← λ·exp(lr·violation),
# never 0; 0: λ ← clip(λ + lr·violation, 0, λ_max)). TensorBoard: train/gd2po/lambda/cost,
# train/gd2po/constraint_violation/cost (> 0: over budget), train/gd2po/weight/*. λ is saved in each checkpoint
# and restored by --ckpt.load_enable.
set -euo pipefail
BUDGET=${BUDGET:-0}
LAMBDA_INIT=${LAMBDA_INIT:-1}
LAMBDA_LR=${LAMBDA_LR:-0.1}
LAMBDA_MAX=${LAMBDA_MAX:-10}
LAMBDA_LOG_SPACE=${LAMBDA_LOG_SPACE:-1}
LOG_SPACE_ARGS=()
if [ "$LAMBDA_LOG_SPACE" = 1 ]; then LOG_SPACE_ARGS=(--cost.lambda_log_space); fi
RUN_SUFFIX=${RUN_SUFFIX:-_budget} exec bash "$(dirname "$0")/train_gd2po_safe_alignment.sh" \
  --cost.budget "$BUDGET" --cost.lambda_init "$LAMBDA_INIT" --cost.lambda_lr "$LAMBDA_LR" \
  --cost.lambda_max "$LAMBDA_MAX" "${LOG_SPACE_ARGS[@]}" "$@"
