"""What the plugin's .pth costs every Python start (every Ray worker, every pip), in milliseconds.

Two throwaway venvs of this interpreter, made here: ``bare`` (nothing installed) and ``plugin`` (the package and
``gd2po_openrlhf.pth`` copied into site-packages, as a wheel install leaves them; ``--source`` takes them from
another checkout, e.g. an older commit for a before/after comparison). ``python -c pass`` runs RUNS times in
each, interleaved, also with GD2PO_DISABLE=1; the report is the median wall time of each and the differences to
``bare``, plus the ``-X importtime`` lines of the plugin's modules.

    python benchmarks/startup_overhead.py [--runs 30] [--source CHECKOUT]
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def make_venv(path: Path, source: Path = None, empty_pth: bool = False) -> Path:
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    python = path / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    if empty_pth:  # the floor of any .pth hook: site lists, opens and executes one line
        (site / "gd2po_openrlhf.pth").write_text("import os\n")
    if source is not None:
        shutil.copytree(
            source / "gd2po_openrlhf", site / "gd2po_openrlhf", ignore=shutil.ignore_patterns("__pycache__")
        )
        shutil.copy(source / "gd2po_openrlhf.pth", site / "gd2po_openrlhf.pth")
    return python


def wall_ms(python: Path, env: dict) -> float:
    started = time.perf_counter()
    subprocess.run([str(python), "-c", "pass"], env=env, check=True)
    return (time.perf_counter() - started) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--source", type=Path, default=REPO, help="checkout whose package and .pth are measured")
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GD2PO_", "PYTHON"))}
    with tempfile.TemporaryDirectory() as tmp:
        bare = make_venv(Path(tmp) / "bare")
        floor = make_venv(Path(tmp) / "floor", empty_pth=True)
        plugin = make_venv(Path(tmp) / "plugin", args.source)
        setups = {
            "bare venv": (bare, env),
            "bare + a one-line .pth (floor)": (floor, env),
            "with the plugin": (plugin, env),
            "with the plugin, GD2PO_DISABLE=1": (plugin, {**env, "GD2PO_DISABLE": "1"}),
        }
        for python, environment in setups.values():  # warm the page cache and __pycache__ once
            wall_ms(python, environment)
        times = {name: [] for name in setups}
        for _ in range(args.runs):
            for name, (python, environment) in setups.items():
                times[name].append(wall_ms(python, environment))
        importtime = subprocess.run(
            [str(plugin), "-X", "importtime", "-c", "pass"], env=env, capture_output=True, text=True
        ).stderr
    baseline = statistics.median(times["bare venv"])
    print(
        f"python -c pass, median of {args.runs} interleaved runs ({sys.version.split()[0]}, "
        f"{sysconfig.get_platform()}), "
        f"plugin from {args.source}:"
    )
    for name, values in times.items():
        median = statistics.median(values)
        print(f"  {name:<34} {median:7.2f} ms   {median - baseline:+6.2f} ms vs bare   ratio {median / baseline:.3f}")
    print("-X importtime of the plugin's modules (self µs | cumulative µs | module):")
    for line in importtime.splitlines():
        if "gd2po" in line:
            print("  " + line.removeprefix("import time:").strip())


if __name__ == "__main__":
    main()
