#!/usr/bin/env bash
# GD²PO with the hard sign filter on helpfulness–safety alignment; every setting as in train_gd2po_safe_alignment.sh.
FILTER=hard exec bash "$(dirname "$0")/train_gd2po_safe_alignment.sh" "$@"
