import json
import pathlib

import pytest

from gd2po_openrlhf import GD2POConfig

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"


def test_shipped_presets_load():
    tool = GD2POConfig.from_json(str(CONFIGS / "tool_calling_snr.json"))
    assert (tool.filter, tool.snr_threshold, tool.snr_eps) == ("snr", 0.8, 1e-8)
    assert tool.reward_keys == ("correctness", "format", "length") and tool.weights == (1.0, 1.0, 1.0)
    safe = GD2POConfig.from_json(str(CONFIGS / "safe_alignment_snr.json"))
    assert safe.reward_keys == ("helpfulness", "cost") and safe.weights == (1.0, -1.0) and safe.snr_eps == 1e-6


def test_preset_with_unknown_field_is_refused(tmp_path):
    path = tmp_path / "typo.json"
    path.write_text(json.dumps({"filter": "hard", "snr_treshold": 0.5}))
    with pytest.raises(ValueError, match=r"unknown GD2POConfig fields \['snr_treshold'\]"):
        GD2POConfig.from_json(str(path))


def test_preset_values_are_validated(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"filter": "snr", "snr_threshold": 2}))
    with pytest.raises(ValueError, match="must lie in"):
        GD2POConfig.from_json(str(path))
