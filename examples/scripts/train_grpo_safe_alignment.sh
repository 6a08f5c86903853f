#!/usr/bin/env bash
# GRPO baseline: OpenRLHF's group_norm on the reward model alone (OpenRLHF has no cost model); as
# train_gd2po_safe_alignment.sh, without the cost model's GPUs.
ESTIMATOR=group_norm exec bash "$(dirname "$0")/train_gd2po_safe_alignment.sh" "$@"
