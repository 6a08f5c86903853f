"""The import hook (integration/hook.py): what it imports at interpreter start, GD2PO_DISABLE, the OpenRLHF version
guard and the launcher run by path, each in a fresh subprocess of the venv (the .pth activates the plugin there)."""

import os
import pathlib
import subprocess
import sys

import pytest
from gd2po_testing import VALID_GD2PO, launcher_subprocess


@pytest.mark.subprocess
def test_disable_leaves_openrlhf_untouched():
    result = launcher_subprocess(["--help"], env={"GD2PO_DISABLE": "1"})
    assert result.returncode == 0
    assert "gd2po" not in result.stdout and "--advantage_estimator" not in result.stdout
    refused = launcher_subprocess(["--algo.advantage.estimator", "gd2po"], env={"GD2PO_DISABLE": "1"})
    assert refused.returncode == 2 and "invalid choice: 'gd2po'" in refused.stderr


@pytest.mark.subprocess
def test_interpreter_start_imports_nothing_heavy():
    heavy = ("torch", "openrlhf", "ray", "gd2po_openrlhf.config")
    code = f"import sys; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
    hook = subprocess.run(
        [sys.executable, "-c", "import sys; print([type(f).__name__ for f in sys.meta_path][0])"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert hook.stdout.strip() == "GD2POFinder"


@pytest.mark.parametrize(
    "version, supported",
    [
        ("0.11.2", True),
        ("0.11.9.post1", True),
        ("0.11.3rc1", True),
        ("0.11.2+cpu", True),
        ("0.11.2rc1", False),
        ("0.11.2.dev0", False),
        ("0.10.4", False),
        ("0.12.0rc1", False),
        ("0.12.0", False),
        ("1.0", False),
        ("dev", False),
    ],
)
def test_version_guard_accepts_only_the_supported_range(version, supported):
    from gd2po_openrlhf.integration.hook import check_openrlhf_version

    if supported:
        check_openrlhf_version(version)
    else:
        with pytest.raises(
            RuntimeError, match=rf"supports openrlhf>=0.11.2,<0.12, but openrlhf {version} is installed"
        ):
            check_openrlhf_version(version)


@pytest.fixture
def old_openrlhf_metadata(tmp_path):
    """A PYTHONPATH entry whose dist-info claims openrlhf 0.10.4 (found before site-packages by importlib.metadata)."""
    dist = tmp_path / "openrlhf-0.10.4.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: openrlhf\nVersion: 0.10.4\n")
    return {"PYTHONPATH": str(tmp_path)}


@pytest.mark.subprocess
def test_an_unsupported_openrlhf_stops_the_launcher_before_training(old_openrlhf_metadata):
    result = launcher_subprocess(
        ["--advantage_estimator", "gd2po", "--rollout.n_samples_per_prompt", "4"], env=old_openrlhf_metadata
    )
    assert result.returncode == 1
    assert (
        "supports openrlhf>=0.11.2,<0.12, but openrlhf 0.10.4 is installed" in result.stderr
        and "GD2PO_DISABLE=1" in result.stderr
    )
    assert "Traceback" not in result.stderr  # one message, not a stack trace from inside OpenRLHF
    # GD2PO_DISABLE=1 leaves that OpenRLHF alone: its own parser runs and answers --help
    stock = launcher_subprocess(["--help"], env={**old_openrlhf_metadata, "GD2PO_DISABLE": "1"})
    assert stock.returncode == 0 and "gd2po" not in stock.stdout
    # a stock estimator runs on that OpenRLHF without GD2PO_DISABLE too: a warning, and OpenRLHF untouched
    group_norm = launcher_subprocess(["--algo.advantage.estimator", "group_norm", "--help"], env=old_openrlhf_metadata)
    assert group_norm.returncode == 0 and "gd2po" not in group_norm.stdout
    assert "GD²PO stays inactive for this run" in group_norm.stderr


@pytest.mark.subprocess
def test_disabled_plugin_patches_nothing_in_the_process():
    code = (
        "import argparse; before = argparse.ArgumentParser.add_argument\n"
        "import openrlhf.trainer.ppo_trainer as m\n"
        "from openrlhf.trainer.ppo_utils.samples_generator import SamplesGenerator as S\n"
        "from openrlhf.utils.agent import SingleTurnAgentExecutor as E\n"
        "print(m.RemoteExperienceMaker.__module__, S._process_response_into_experience.__qualname__,\n"
        "      argparse.ArgumentParser.add_argument is before, getattr(m, 'gd2po_patched', False), "
        "E._fetch_rewards_via_http.__module__)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "GD2PO_DISABLE": "1"},
        timeout=300,
    )
    assert result.stdout.splitlines()[-1].split() == [
        "openrlhf.trainer.ppo_utils.experience_maker",
        "SamplesGenerator._process_response_into_experience",
        "True",
        "False",
        "openrlhf.utils.agent",
    ]


@pytest.mark.subprocess
def test_the_hook_imports_nothing_but_itself_and_its_module_names_and_nothing_at_all_when_disabled():
    """The .pth runs at every interpreter start (every Ray worker, every pip): it must stay free."""
    root = str(pathlib.Path(__file__).resolve().parents[1])
    code = (
        f"import os, sys; sys.path.insert(0, {root!r}); before = set(sys.modules); "  # os: loaded by site anyway
        "import gd2po_openrlhf.integration.hook as hook; hook.install(); print(sorted(set(sys.modules) - before))"
    )
    result = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, check=True)
    assert (
        result.stdout.strip() == "['gd2po_openrlhf', 'gd2po_openrlhf.integration', 'gd2po_openrlhf.integration.hook', "
        "'gd2po_openrlhf.integration.targets']"
    )
    pth_line = (pathlib.Path(root) / "gd2po_openrlhf.pth").read_text()
    disabled = subprocess.run(
        [
            sys.executable,
            "-S",
            "-c",
            f"import sys; sys.path.insert(0, {root!r}); exec({pth_line!r}); "
            "print([m for m in sys.modules if m.startswith('gd2po')], [type(f).__name__ for f in sys.meta_path])",
        ],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "GD2PO_DISABLE": "1"},
    )
    assert disabled.stdout.startswith("[] ") and "GD2POFinder" not in disabled.stdout


@pytest.mark.subprocess
def test_the_launcher_run_by_path_gets_the_plugin_as_with_python_m(reward_file):
    import openrlhf.cli

    script = str(pathlib.Path(openrlhf.cli.__file__).parent / "train_ppo_ray.py")
    result = launcher_subprocess(
        VALID_GD2PO + ["--reward.remote_url", reward_file],
        env={"GD2PO_DRY_RUN": "1"},
        launcher=[sys.executable, script],
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "GD²PO configuration (--advantage_estimator gd2po)" in result.stdout
