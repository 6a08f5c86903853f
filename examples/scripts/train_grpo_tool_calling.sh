#!/usr/bin/env bash
# GRPO baseline: OpenRLHF's group_norm on the summed reward of the tool-calling rules; as train_gd2po_tool_calling.sh.
ESTIMATOR=group_norm exec bash "$(dirname "$0")/train_gd2po_tool_calling.sh" "$@"
