#!/usr/bin/env bash
# GD²PO with the hard sign filter on tool calling; every setting as in train_gd2po_tool_calling.sh.
FILTER=hard exec bash "$(dirname "$0")/train_gd2po_tool_calling.sh" "$@"
