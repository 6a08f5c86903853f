#!/usr/bin/env bash
# GDPO baseline (per-dimension group normalisation, no filter, no κ) on tool calling; as train_gd2po_tool_calling.sh.
ESTIMATOR=gdpo exec bash "$(dirname "$0")/train_gd2po_tool_calling.sh" "$@"
