"""The built wheel: only the runtime package plus gd2po_openrlhf.pth at its root; installed into a
throwaway venv (reusing the CPU environment's packages), the import hook is active there."""

import pathlib
import subprocess
import sys
import sysconfig
import zipfile

import pytest

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
    assert top_level - {"gd2po_openrlhf", "gd2po_openrlhf.pth"} == {next(n for n in top_level if n.endswith(".dist-info"))}
    assert not [name for name in names if "cpu_stubs" in name or "standin" in name or name.startswith(("vllm", "flash_attn"))]
    pth = zipfile.ZipFile(wheel).read("gd2po_openrlhf.pth").decode()
    assert pth.strip() == (REPO / "gd2po_openrlhf.pth").read_text().strip()
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA"))).decode()
    assert "Requires-Dist: openrlhf<0.12,>=0.11.2" in metadata
    assert 'extra == "gpu"' in metadata and "openrlhf[vllm]" in metadata


def test_installed_wheel_activates_the_hook(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", str(wheel)], check=True)
    site_packages = pathlib.Path(
        subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                       capture_output=True, text=True, check=True).stdout.strip()
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
