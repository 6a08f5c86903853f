#!/usr/bin/env bash
# GRPO baseline: one group normalisation of the weighted sum of the reward and cost models
# (--advantage_estimator gdpo --gd2po.sum_rewards); every setting as in train_gd2po_safe_alignment.sh.
ESTIMATOR=grpo exec bash "$(dirname "$0")/train_gd2po_safe_alignment.sh" "$@"
