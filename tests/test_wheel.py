"""The built wheel: only the runtime package plus gd2po_openrlhf.pth at its root; installed into a
throwaway venv (reusing the CPU environment's packages), the import hook is active there."""

import pathlib
import subprocess
import sys
import sysconfig
import zipfile

import pytest

pytestmark = pytest.mark.subprocess

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out), str(REPO)],
        check=True,
    )
    (built,) = out.glob("gd2po_openrlhf-*.whl")
    return built


def test_wheel_holds_the_runtime_package_and_the_hook(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names}
    assert "gd2po_openrlhf.pth" in names  # at the root: installed straight into site-packages
    assert top_level - {"gd2po_openrlhf", "gd2po_openrlhf.pth"} == {
        next(n for n in top_level if n.endswith(".dist-info"))
    }
    assert not [
        name for name in names if "cpu_stubs" in name or "standin" in name or name.startswith(("vllm", "flash_attn"))
    ]
    pth = zipfile.ZipFile(wheel).read("gd2po_openrlhf.pth").decode()
    assert pth.strip() == (REPO / "gd2po_openrlhf.pth").read_text().strip()
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA"))).decode()
    assert "Requires-Dist: openrlhf<0.12,>=0.11.2" in metadata
    assert 'extra == "gpu"' in metadata and "openrlhf[vllm]" in metadata
    assert "License-File: LICENSE" in metadata and any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert (
        "pip install --no-deps dist/gd2po_openrlhf-0.1.0-py3-none-any.whl" in metadata and "make test" not in metadata
    )  # PYPI.md, not the README
    # the recipes travel as package data, for `python -m gd2po_openrlhf.recipes --copy DIR`
    for recipe in (
        "examples/scripts/train_gd2po_tool_calling.sh",
        "examples/rewards/tool_calling.py",
        "configs/tool_calling.yaml",
        "examples/data/prepare_tool_calling.py",
        "examples/data/samples/rlla_sample.json",
        "examples/eval/eval_api_bank.py",
        "examples/data/prepare_api_bank.py",
        "examples/data/prepare_safe_alignment.py",
        "examples/data/rows.py",
        "examples/eval/eval_safe_alignment.py",
        "examples/eval/generation.py",
    ):
        assert f"gd2po_openrlhf/_recipes/{recipe}" in names, recipe


def test_installed_wheel_activates_the_hook(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", str(wheel)], check=True
    )
    site_packages = pathlib.Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    assert (site_packages / "gd2po_openrlhf.pth").exists()
    # Reuse the CPU environment's packages (openrlhf, torch, the stand-ins), after the venv's own.
    (site_packages / "zz_reuse_cpu_env.pth").write_text(
        f"{sysconfig.get_paths()['purelib']}\n{REPO / 'dev' / 'cpu_stubs'}\n"
    )
    code = (
        "import sys, gd2po_openrlhf; "
        "assert type(sys.meta_path[0]).__name__ == 'GD2POFinder', sys.meta_path; "
        "import openrlhf.trainer.ppo_trainer as m; "
        "print(gd2po_openrlhf.__file__); print(m.RemoteExperienceMaker.__qualname__)"
    )
    result = subprocess.run([str(python), "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    package_file, maker = result.stdout.strip().splitlines()[-2:]  # after whatever openrlhf prints
    assert pathlib.Path(package_file).is_relative_to(site_packages)  # the wheel's copy, not the editable checkout
    assert maker == "GD2POExperienceMaker"


def test_installed_wheel_copies_its_recipes_and_they_dry_run(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", str(wheel)], check=True
    )
    site_packages = pathlib.Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    (site_packages / "zz_reuse_cpu_env.pth").write_text(
        f"{sysconfig.get_paths()['purelib']}\n{REPO / 'dev' / 'cpu_stubs'}\n"
    )
    copied = tmp_path / "recipes"
    result = subprocess.run(
        [str(python), "-m", "gd2po_openrlhf.recipes", "--copy", str(copied)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert (copied / "configs" / "tool_calling.yaml").is_file() and (
        copied / "examples" / "rewards" / "tool_calling.py"
    ).is_file()
    again = subprocess.run(
        [str(python), "-m", "gd2po_openrlhf.recipes", "--copy", str(copied)], capture_output=True, text=True
    )
    assert again.returncode == 2 and "already exist" in again.stderr
    import os

    # The commands the copy prints, run as printed: the shipped sample converted into the launcher's default data,
    # then the dry run (with the wheel's venv first on PATH, as after activating it).
    printed = result.stdout.splitlines()
    commands = printed[printed.index(next(line for line in printed if line.startswith("try"))) + 1 :]
    assert len(commands) == 2 and commands[1].strip().startswith("GD2PO_DRY_RUN=1 bash ")
    env = {**os.environ, "PATH": f"{venv / 'bin'}:{os.environ['PATH']}"}
    converted = subprocess.run(["bash", "-c", commands[0]], capture_output=True, text=True, env=env)
    assert converted.returncode == 0, converted.stderr
    dry = subprocess.run(["bash", "-c", commands[1]], capture_output=True, text=True, env=env, timeout=300)
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert f"{copied}/examples/rewards/tool_calling.py" in dry.stdout and str(REPO) not in dry.stdout
    assert (
        f"  reward check      reward file {copied}/examples/rewards/tool_calling.py on the first 3 rows of"
        in dry.stdout
    )


def test_a_reward_host_serves_with_the_wheel_alone(wheel, tmp_path):
    """pip install --no-deps on a CPU host without openrlhf or torch (openrlhf pins flash-attn), then aiohttp: the
    server runs; without aiohttp it says how to install it."""
    import json
    import socket
    import urllib.request

    from gd2po_testing import wait_until_serving

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", str(wheel)], check=True
    )
    rules = tmp_path / "rules.py"
    rules.write_text(
        "def reward_func(queries, prompts, labels):\n    return "
        "{'rewards': {'length': [float(len(q)) for q in queries]}}\n"
    )
    missing = subprocess.run(
        [str(python), "-m", "gd2po_openrlhf.serve_rewards", "--reward-file", str(rules)],
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 2 and "pip install aiohttp" in missing.stderr and "Traceback" not in missing.stderr
    import aiohttp  # the version of this environment, from the package index

    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", f"aiohttp=={aiohttp.__version__}"],
        check=True,
    )
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [str(python), "-m", "gd2po_openrlhf.serve_rewards", "--reward-file", str(rules), "--port", str(port)],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until_serving(port, server, lambda: server.stderr.read() if server.poll() is not None else "")
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/get_reward",
            data=json.dumps({"query": ["ab", "abc"], "prompts": ["a", "a"]}).encode(),
        )
        assert json.loads(urllib.request.urlopen(request, timeout=10).read())["extra_logs"] == {
            "reward/length": [2.0, 3.0]
        }
        check = subprocess.run(
            [str(python), "-c", "import importlib.util as u; print(u.find_spec('torch'), u.find_spec('openrlhf'))"],
            capture_output=True,
            text=True,
        )
        assert check.stdout.strip() == "None None"  # really without them
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_the_sdist_holds_what_the_tests_need(tmp_path):
    import tarfile

    subprocess.run(
        [sys.executable, "setup.py", "-q", "sdist", "-d", str(tmp_path)], cwd=REPO, check=True, capture_output=True
    )
    (sdist,) = tmp_path.glob("gd2po_openrlhf-*.tar.gz")
    names = {name.split("/", 1)[1] for name in tarfile.open(sdist).getnames() if "/" in name}
    for needed in (
        "Makefile",
        ".ci/run",
        "LICENSE",
        "requirements/cpu-dev.txt",
        "requirements/constraints-cpu.txt",
        "tests/gd2po_testing.py",
        "tests/e2e_harness.py",
        "tests/data/gd2po_reference_cases.json",
        "dev/cpu_stubs/vllm/__init__.py",
        "dev/e2e/vllm/__init__.py",
        "dev/e2e/sitecustomize.py",
        "examples/data/samples/rlla_sample.json",
        "examples/eval/samples/api_bank_sample.jsonl",
        "configs/tool_calling.yaml",
    ):
        assert needed in names, needed
    assert not [name for name in names if "__pycache__" in name]
