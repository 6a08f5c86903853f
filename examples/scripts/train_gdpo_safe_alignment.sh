#!/usr/bin/env bash
# GDPO baseline (no filter, no κ) on helpfulness–safety alignment; as train_gd2po_safe_alignment.sh.
ESTIMATOR=gdpo exec bash "$(dirname "$0")/train_gd2po_safe_alignment.sh" "$@"
