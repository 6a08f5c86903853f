"""YAML presets (--gd2po.config, integration/flags.py) through OpenRLHF's real parser: the shipped presets resolve to
the authors' settings, flags on the command line override them, bad presets are refused naming the file and key."""

import argparse
import dataclasses
import json
import pathlib
import time

import pytest

from gd2po_openrlhf import GD2POConfig
from gd2po_openrlhf.integration.launcher_args import parse_launcher_args
from gd2po_openrlhf.integration.settings import resolve_settings

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"


def launch(*flags):
    """OpenRLHF's real parser on a gd2po command line, then the plugin's resolution of it:
    (args, config, dimensions)."""
    args = parse_launcher_args(["--advantage_estimator", "gd2po", "--rollout.n_samples_per_prompt", "4", *flags])
    settings = resolve_settings(args)
    return args, settings.gd2po_config, list(settings.dimensions)


def test_tool_calling_preset_resolves_to_the_authors_settings():
    args, config, dims = launch("--gd2po.config", str(CONFIGS / "tool_calling.yaml"))
    assert (config.filter, config.snr_threshold, config.snr_eps) == ("snr", 0.8, 1e-8)
    # The authors' main setting: correctness + length trained, format logged with weight 0.
    assert config.reward_keys == ("correctness", "format", "length") and config.weights == (1.0, 0.0, 1.0)
    reward_file = str(CONFIGS.parent / "examples" / "rewards" / "tool_calling.py")  # resolved against configs/
    assert args.reward.remote_url == [reward_file]
    assert {(d.source, d.location) for d in dims} == {("reward_function", reward_file)}


def test_safe_alignment_preset_with_the_models_on_the_command_line():
    args, config, dims = launch(
        "--gd2po.config",
        str(CONFIGS / "safe_alignment.yaml"),
        "--reward.model_name_or_path",
        "org/rm",
        "--cost.model_name_or_path",
        "org/cm",
    )
    assert (config.filter, config.snr_threshold, config.snr_eps) == ("snr", 0.8, 1e-6)
    assert [(d.key, d.source, d.location, d.weight) for d in dims] == [
        ("helpfulness", "reward_model", "org/rm", 1.0),
        ("cost", "cost_model", "org/cm", 1.0),  # the authors' CM scores safety: added
    ]


def test_command_line_flags_override_the_preset():
    _, config, dims = launch(
        "--gd2po.snr_threshold",
        "0.5",
        "--gd2po.config",
        str(CONFIGS / "tool_calling.yaml"),
        "--gd2po.reward_weights",
        "2",
        "1",
        "1",
    )
    assert (config.filter, config.snr_threshold, config.weights) == ("snr", 0.5, (2.0, 1.0, 1.0))
    assert config.snr_eps == 1e-8  # not given on the command line: the preset's
    _, hard, _ = launch("--gd2po.config", str(CONFIGS / "tool_calling.yaml"), "--gd2po.filter", "hard")
    assert hard.filter == "hard"  # the preset's τ stays a default: not refused as an ignored flag


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "gd2po:\n  snr_treshold: 0.5\n",
            "unknown key 'gd2po.snr_treshold'; allowed: cost.budget, cost.lambda_init, ",
        ),
        ("reward:\n  num_gpus_per_node: 2\n", "unknown key 'reward.num_gpus_per_node'"),
        ("actor:\n  model_name_or_path: x\n", "unknown key 'actor.model_name_or_path'"),
        ("gd2po:\n  filter: strict\n", "gd2po.filter: expected one of ['none', 'hard', 'snr'], got 'strict'"),
        ("gd2po:\n  snr_threshold: high\n", "gd2po.snr_threshold: could not convert string to float: 'high'"),
        ("gd2po:\n  reward_keys: correctness\n", "gd2po.reward_keys: expected a non-empty list, got 'correctness'"),
        ("gd2po:\n  no_whiten: 1\n", "gd2po.no_whiten: expected true or false, got 1"),
        ("gd2po: snr\n", "section 'gd2po' must be a mapping"),
        ("- gd2po\n", "expected sections gd2po/cost/reward, got list"),
        ("gd2po: {filter: [snr\n", "cannot read it"),
        ("gd2po:\n  snr_threshold: true\n", "gd2po.snr_threshold: expected a number, got True"),
        ("gd2po:\n  reward_weights: [1, true, 1]\n", "gd2po.reward_weights: expected numbers, got [1, True, 1]"),
        ("gd2po:\n  filter: snr\n  filter: hard\n", "duplicate key 'filter'"),
        ("gd2po:\n  filter: snr\ngd2po:\n  filter: hard\n", "duplicate key 'gd2po'"),
        ("gd2po:\n  reward_keys: [caf\xe9]\n".encode("latin-1"), "cannot read it: 'utf-8' codec can't decode"),
    ],
)
def test_bad_presets_are_refused_naming_the_file_and_key(tmp_path, capsys, text, message):
    preset = tmp_path / "preset.yaml"
    preset.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(SystemExit) as exit_info:
        launch("--gd2po.config", str(preset), "--reward.model_name_or_path", "org/rm")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"--gd2po.config {preset}" in err and message in err


def test_a_missing_preset_file_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        launch("--gd2po.config", str(tmp_path / "nope.yaml"))
    assert "--gd2po.config" in capsys.readouterr().err


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


def test_a_preset_turns_dynamic_sampling_on(tmp_path):
    preset = tmp_path / "dynamic.yaml"
    preset.write_text(
        f"gd2po:\n  dynamic_sampling: true\n  dynamic_sampling_min_kept: 2\n  reward_keys: [correctness]\n"
        f"reward:\n  remote_url: {CONFIGS.parent / 'examples' / 'rewards' / 'tool_calling.py'}\n"
    )
    args = parse_launcher_args(
        ["--advantage_estimator", "gd2po", "--rollout.n_samples_per_prompt", "4", "--gd2po.config", str(preset)]
    )
    settings = resolve_settings(args)
    assert (settings.dynamic_sampling, settings.dynamic_sampling_min_kept) == (True, 2)
    assert settings.dynamic_sampling_max_prompts_factor == 4.0
    with pytest.raises(SystemExit):  # a preset's value is checked as a flag's would be
        preset.write_text(preset.read_text().replace("min_kept: 2", "min_kept: 9"))
        parse_launcher_args(
            ["--advantage_estimator", "gd2po", "--rollout.n_samples_per_prompt", "4", "--gd2po.config", str(preset)]
        )


# ---- issue 25: presets that cannot disagree with the command line, or with themselves

TOOL_FILE = CONFIGS.parent / "examples" / "rewards" / "tool_calling.py"


def preset_args(tmp_path, text, *flags):
    preset = tmp_path / "preset.yaml"
    preset.write_text(text)
    return parse_launcher_args(
        [
            "--advantage_estimator",
            "gd2po",
            "--rollout.n_samples_per_prompt",
            "4",
            "--gd2po.config",
            str(preset),
            *flags,
        ]
    )


def test_a_command_line_schedule_overrides_the_presets_for_that_key_only(tmp_path):
    text = (
        f"gd2po:\n  reward_keys: [correctness, format, length]\n"
        f"  reward_weight_schedule: ['format=1:0:10', 'length=0:1:10']\n"
        f"reward:\n  remote_url: {TOOL_FILE}\n"
    )
    args = preset_args(tmp_path, text, "--gd2po.reward_weight_schedule", "format=1:0.5:20:cosine")
    assert tuple(map(str, resolve_settings(args).weight_schedules)) == ("length=0:1:10", "format=1:0.5:20:cosine")
    assert tuple(map(str, resolve_settings(preset_args(tmp_path, text)).weight_schedules)) == (
        "format=1:0:10",
        "length=0:1:10",
    )


def test_yaml_merge_keys_work_and_the_mappings_own_key_wins(tmp_path):
    # `<<: *anchor` was refused as a duplicate key; merged keys are not duplicates, and the mapping's own key wins.
    merged = (
        "gd2po:\n  <<: {filter: snr, snr_threshold: 0.5, reward_keys: [correctness, format, length]}\n"
        f"  snr_threshold: 0.7\nreward:\n  remote_url: {TOOL_FILE}\n"
    )
    settings = resolve_settings(preset_args(tmp_path, merged))
    assert (settings.filter, settings.snr_threshold) == ("snr", 0.7)
    assert settings.reward_keys == ("correctness", "format", "length")


def test_a_preset_of_nested_aliases_is_refused_with_a_short_message(tmp_path, capsys):
    # 300 bytes that expand to 9^9 list items when printed (the "billion laughs"): a 28 MB message once.
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    lines += ["gd2po:", "  reward_keys: *a8"]
    with pytest.raises(SystemExit):
        preset_args(tmp_path, "\n".join(lines) + "\n")
    err = capsys.readouterr().err
    assert "73 YAML aliases; a preset may use 64" in err and len(err) < 1000


def test_a_long_bad_value_is_cut_in_the_message(tmp_path, capsys):
    with pytest.raises(SystemExit):
        preset_args(tmp_path, f"gd2po:\n  reward_keys: {'k' * 5000}\n")
    err = capsys.readouterr().err
    assert "gd2po.reward_keys: expected a non-empty list" in err and "(5002 characters)" in err and len(err) < 1000


def test_an_integer_flag_refuses_a_fraction_from_a_preset(tmp_path, capsys):
    text = (
        "gd2po:\n  dynamic_sampling: true\n  dynamic_sampling_min_kept: 2.7\n  reward_keys: [correctness]\n"
        f"reward:\n  remote_url: {TOOL_FILE}\n"
    )
    with pytest.raises(SystemExit):
        preset_args(tmp_path, text)
    assert "gd2po.dynamic_sampling_min_kept: expected a whole number, got 2.7" in capsys.readouterr().err
    settings = resolve_settings(preset_args(tmp_path, text.replace("2.7", "2.0")))
    assert settings.dynamic_sampling_min_kept == 2


def test_a_presets_settings_for_another_variant_are_ignored_not_refused(tmp_path):
    # The one policy: a preset may hold τ (for the snr launcher) and λ settings (for the budget launcher); a run that
    # uses neither ignores them, while the same flags on the command line are refused.
    text = (
        "gd2po:\n  filter: snr\n  snr_threshold: 0.8\n  reward_keys: [correctness, format]\n"
        f"cost:\n  lambda_lr: 0.5\nreward:\n  remote_url: {TOOL_FILE}\n"
    )
    settings = resolve_settings(preset_args(tmp_path, text, "--gd2po.filter", "hard"))
    assert settings.filter == "hard" and settings.cost_budget is None


def test_reordered_or_fewer_reward_keys_keep_the_presets_weight_for_each_key(capsys):
    preset = str(CONFIGS / "tool_calling.yaml")  # correctness 1, format 0, length 1
    _, config, _ = launch("--gd2po.config", preset, "--gd2po.reward_keys", "format", "correctness", "length")
    assert config.reward_keys == ("format", "correctness", "length") and config.weights == (0.0, 1.0, 1.0)
    _, config, _ = launch("--gd2po.config", preset, "--gd2po.reward_keys", "length", "format")
    assert config.weights == (1.0, 0.0)
    # weights given with the keys are the command line's, in its order
    _, config, _ = launch(
        "--gd2po.config", preset, "--gd2po.reward_keys", "format", "length", "--gd2po.reward_weights", "1", "0"
    )
    assert config.weights == (1.0, 0.0)
    with pytest.raises(SystemExit):  # a key the preset does not weigh
        launch("--gd2po.config", preset, "--gd2po.reward_keys", "correctness", "brevity")
    err = capsys.readouterr().err
    assert "--gd2po.reward_keys correctness brevity on the command line, but the preset" in err
    assert "not ['brevity']: give --gd2po.reward_weights on the command line too" in err


def test_keyed_preset_entries_follow_their_keys_when_the_command_line_reorders_them(tmp_path):
    preset = tmp_path / "keyed.yaml"
    preset.write_text(
        "gd2po:\n  reward_keys: [a, b, c]\n  reward_weights: [1, 2, 3]\n"
        "  reward_weight_schedule: ['b=2:0:10']\n  reward_condition: ['c=a>=1']\n"
        "reward:\n  remote_url: rewards.py\n"
    )
    (tmp_path / "rewards.py").write_text("def reward_func(queries, prompts, labels):\n    return {'rewards': 0.0}\n")
    args = parse_launcher_args(
        ["--advantage_estimator", "gd2po", "--rollout.n_samples_per_prompt", "4", "--gd2po.config", str(preset)]
        + ["--gd2po.reward_keys", "c", "b", "a"]
    )
    settings = resolve_settings(args)
    assert [(d.key, d.weight) for d in settings.dimensions] == [("c", 3.0), ("b", 2.0), ("a", 1.0)]
    assert [(s.key, s.start) for s in settings.weight_schedules] == [("b", 2.0)]
    assert [(c.key, c.gate_key) for c in settings.conditions] == [("c", "a")]


def test_a_preset_whose_few_aliases_expand_to_gigabytes_is_refused(tmp_path, capsys):
    # 63 aliases, under the alias cap, 3 per level over 21 levels: 3^21 values once expanded.
    lines = ["a0: &a0 [x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 3)}]" for i in range(1, 22)]
    lines += ["gd2po:", "  reward_keys: *a21"]
    started = time.monotonic()
    with pytest.raises(SystemExit):
        preset_args(tmp_path, "\n".join(lines) + "\n")
    assert time.monotonic() - started < 30  # a hang guard (expanding would take hours), not a timing claim
    err = capsys.readouterr().err
    assert "more than 10000 values once its YAML aliases are expanded, not a preset" in err and len(err) < 1000


@pytest.mark.parametrize(
    "digits, message",
    [
        (4000, "snr_threshold: int too large to convert to float"),
        (4400, "cannot read it: Exceeds the limit (4300 digits)"),
    ],
)
def test_a_huge_integer_in_a_preset_is_named_without_a_traceback(tmp_path, capsys, digits, message):
    with pytest.raises(SystemExit):
        preset_args(tmp_path, f"gd2po:\n  snr_threshold: {'9' * digits}\n")
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err) < 1500


# ---- the flag table (integration/flags.py): one declaration per flag


def test_every_flag_is_declared_consistently_with_run_settings():
    """The table is complete and its entries fit RunSettings: a plain flag's field exists with the flag's default,
    only a flag with a field is saved, every not-saved flag says why, every flag has a docs section."""
    from gd2po_openrlhf.integration import flags
    from gd2po_openrlhf.integration.settings import RunSettings

    fields = {field.name: field for field in dataclasses.fields(RunSettings)}
    names = [flag.name for flag in flags.FLAGS]
    assert len(names) == len(set(names)) and all(name.startswith(("--gd2po.", "--cost.")) for name in names)
    declared_fields = [flag.field for flag in flags.FLAGS if flag.field]
    assert len(declared_fields) == len(set(declared_fields))
    for flag in flags.FLAGS:
        assert flag.section in flags.SECTIONS, flag.name
        assert flag.resume in (flags.RESTORED, flags.REPORTED, flags.NOT_SAVED), flag.name
        assert flag.resume == flags.NOT_SAVED or flag.field, f"{flag.name} is saved but lands in no field"
        assert flag.resume != flags.NOT_SAVED or flag.not_saved_because, f"{flag.name}: say why it is not saved"
        if flag.field:
            assert flag.field in fields, flag.name
        if flag.field and not flag.derived:
            assert fields[flag.field].default == (False if flag.switch else flag.default), flag.name
    # The parser's flags are exactly the table's.
    parser = argparse.ArgumentParser()
    flags.add_gd2po_arguments(parser)
    assert [action.option_strings[0] for action in parser._actions[1:]] == names


@pytest.fixture
def probe_flag(monkeypatch):
    """A new flag in one declaration: --gd2po.probe_scale, acting with the snr filter and restored on resume, plus
    the RunSettings field that the code using it would read."""
    from gd2po_openrlhf.integration import flags, settings

    flag = flags.Flag(
        "--gd2po.probe_scale",
        "a probe flag of the tests",
        "The estimator",
        field="probe_scale",
        default=0.5,
        type=float,
        metavar="S",
        acts_with=flags.SNR_FILTER,
        resume=flags.RESTORED,
    )
    extended = dataclasses.make_dataclass(
        "RunSettings",
        [("probe_scale", float, dataclasses.field(default=0.5))],
        bases=(settings.RunSettings,),
        frozen=True,
    )
    monkeypatch.setattr(flags, "FLAGS", flags.FLAGS + (flag,))
    monkeypatch.setattr(settings, "RunSettings", extended)
    return flag


SNR_RUN = ("--reward.model_name_or_path", "org/rm", "--gd2po.filter", "snr")


def test_a_flag_declared_once_reaches_help_refusals_presets_resume_and_docs(probe_flag, capsys, tmp_path):
    import importlib.util

    from gd2po_openrlhf.integration import resume

    # --help, through OpenRLHF's real parser
    with pytest.raises(SystemExit) as exited:
        launch("--help")
    assert exited.value.code == 0
    assert "--gd2po.probe_scale S a probe flag of the tests (default 0.5)" in " ".join(capsys.readouterr().out.split())
    # its value lands in the settings
    args, _, _ = launch(*SNR_RUN, "--gd2po.probe_scale", "2")
    from gd2po_openrlhf.integration.settings import resolve_settings as resolve

    assert resolve(args).probe_scale == 2.0
    # refused without what it acts with, naming it
    with pytest.raises(SystemExit) as exited:
        launch("--reward.model_name_or_path", "org/rm", "--gd2po.filter", "hard", "--gd2po.probe_scale", "2")
    assert exited.value.code == 2
    assert (
        "--gd2po.probe_scale only acts with the snr filter (or --gd2po.what_if_filter snr); with --gd2po.filter hard "
        "it would be ignored" in capsys.readouterr().err
    )
    # a preset key
    preset = tmp_path / "probe.yaml"
    preset.write_text("gd2po:\n  filter: snr\n  probe_scale: 3\n")
    args, _, _ = launch("--reward.model_name_or_path", "org/rm", "--gd2po.config", str(preset))
    assert resolve(args).probe_scale == 3.0
    # resume: saved, restored over the command line's, and named in the warning
    assert "probe_scale" in resume.resume_tables()[0]
    saved = resume.checkpoint_settings(resolve(launch(*SNR_RUN, "--gd2po.probe_scale", "2")[0]))
    assert saved["gd2po.probe_scale"] == 2.0
    args = launch(*SNR_RUN)[0]
    restored, warning = resume.restore_checkpoint_settings(args, resolve(args), saved, "ckpt")
    assert restored.probe_scale == 2.0
    assert "Restored from the checkpoint: --gd2po.probe_scale checkpoint 2.0, command line 0.5" in warning
    # the generated reference page, in its section
    spec = importlib.util.spec_from_file_location("flag_reference", CONFIGS.parent / "dev" / "flag_reference.py")
    reference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reference)
    page = reference.render()
    row = "| `--gd2po.probe_scale S` | `0.5` | a probe flag of the tests (default 0.5) | the snr filter"
    assert row in page and page.index("## The estimator") < page.index(row) < page.index("## Reward dimensions")


def test_a_renamed_flag_reads_under_its_former_name_on_the_command_line_in_presets_and_checkpoints(tmp_path):
    """--gd2po.no_reweight became --gd2po.no_reweight_queries (one word with GD2POConfig.reweight_queries)."""
    from gd2po_openrlhf.integration import resume

    base = ("--reward.model_name_or_path", "org/rm")
    new = resolve_settings(launch(*base, "--gd2po.no_reweight_queries")[0])
    assert new.no_reweight_queries and not new.gd2po_config.reweight_queries
    assert resolve_settings(launch(*base, "--gd2po.no_reweight")[0]) == new
    preset = tmp_path / "old.yaml"
    preset.write_text("gd2po:\n  no_reweight: true\n")
    assert resolve_settings(launch(*base, "--gd2po.config", str(preset))[0]).no_reweight_queries
    # a checkpoint written before the rename restores it
    args = launch(*base)[0]
    saved = {**resume.checkpoint_settings(new)}
    saved["gd2po.no_reweight"] = saved.pop("gd2po.no_reweight_queries")
    restored, warning = resume.restore_checkpoint_settings(args, resolve_settings(args), saved, "old-ckpt")
    assert (
        restored.no_reweight_queries and "--gd2po.no_reweight_queries checkpoint True, command line False" in warning
    )
