"""The recipes, for users who installed the wheel: launch scripts, reward files, presets, data converters with
their samples, and the API-Bank evaluation, copied into a folder of your choice.

    python -m gd2po_openrlhf.recipes --copy ./gd2po_recipes

then the two commands it prints: convert the shipped ToolRL sample into the launcher's default data, and dry-run
the tool-calling launcher on it (the configuration, and the reward file scoring the first rows).

The wheel carries them under ``gd2po_openrlhf/_recipes`` (setup.py puts ``examples/`` and ``configs/`` there); a
source checkout uses its own folders. The copy keeps their layout, so the scripts' relative paths work.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import List, Optional

PARTS = ("examples", "configs")


def recipes_root() -> Path:
    """The folder holding examples/ and configs/: the wheel's package data, or the source checkout."""
    packaged = Path(__file__).resolve().parent / "_recipes"
    checkout = Path(__file__).resolve().parents[1]
    for root in (packaged, checkout):
        if all((root / part).is_dir() for part in PARTS):
            return root
    raise FileNotFoundError(
        f"no recipes next to {Path(__file__).parent}: reinstall gd2po-openrlhf, or clone its repository"
    )


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m gd2po_openrlhf.recipes", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--copy", required=True, metavar="DIR", type=Path, help="folder to copy examples/ and configs/ into"
    )
    args = parser.parse_args(argv)
    try:
        root = recipes_root()
    except FileNotFoundError as error:
        parser.error(str(error))
    clashes = [str(args.copy / part) for part in PARTS if (args.copy / part).exists()]
    if clashes:
        parser.error(f"{', '.join(clashes)} already exist: choose an empty folder (nothing was copied)")
    for part in PARTS:
        shutil.copytree(root / part, args.copy / part, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    scripts = sorted(p.name for p in (args.copy / "examples" / "scripts").glob("*.sh"))
    print(
        f"copied the recipes into {args.copy}: {len(scripts)} launch scripts in examples/scripts, presets in configs/",
        file=sys.stdout,
    )
    examples = args.copy / "examples"
    print("try (the shipped sample as the launcher's default data, then a dry run of the launcher on it):")
    sample = examples / "data" / "samples" / "rlla_sample.json"
    output = args.copy / "data" / "tool_calling" / "train.jsonl"
    print(f"  python {examples / 'data' / 'prepare_tool_calling.py'} {sample} --output {output}")
    print(f"  GD2PO_DRY_RUN=1 bash {examples / 'scripts' / 'train_gd2po_tool_calling.sh'}")


if __name__ == "__main__":
    main()
