"""What the plugin's settings look like from outside, as one text file: for comparing a refactor before and after.

    python dev/settings_snapshot.py > /tmp/before.txt   # ... move code ...
    python dev/settings_snapshot.py > /tmp/after.txt && diff /tmp/before.txt /tmp/after.txt

Holds the launcher's `--help`, the argparse action of every `--gd2po.*` / `--cost.*` flag, the dry-run text of
every launcher in examples/scripts and of each preset in configs/, and `checkpoint_settings` of those presets'
settings. Paths of this checkout are written as <ROOT>.
"""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

PRESET_COMMANDS = {
    "tool_calling.yaml": ["--rollout.n_samples_per_prompt", "4"],
    "safe_alignment.yaml": [
        "--rollout.n_samples_per_prompt",
        "4",
        "--reward.model_name_or_path",
        "RM",
        "--cost.model_name_or_path",
        "CM",
        "--data.label_key",
        "label",
    ],
}
BASE = ["--actor.model_name_or_path", "m", "--advantage_estimator", "gd2po"]


def launcher(argv, env=None):
    environment = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", **(env or {})}
    result = subprocess.run(
        [sys.executable, "-m", "openrlhf.cli.train_ppo_ray", *argv], capture_output=True, text=True, env=environment
    )
    return f"rc {result.returncode}\n{result.stdout}{result.stderr[-2000:] if result.returncode else ''}"


def main():
    sections = [("--help", launcher(["--help"]))]
    from gd2po_openrlhf.integration.argparse_patch import install_argparse_extension

    install_argparse_extension()
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--algo.advantage.estimator", choices=["gae"], default="gae")
    actions = [
        f"{a.option_strings} dest={a.dest} type={getattr(a.type, '__name__', a.type)} default={a.default!r} "
        f"nargs={a.nargs!r} choices={a.choices!r} const={a.const!r} metavar={a.metavar!r} class={type(a).__name__}\n"
        f"    {a.help}"
        for a in parser._actions
        if a.dest.split(".")[0] in ("gd2po", "cost")
    ]
    sections.append(("argparse actions", "\n".join(actions)))
    for script in sorted((ROOT / "examples" / "scripts").glob("*.sh")):
        environment = {
            **os.environ,
            "GD2PO_DRY_RUN": "1",
            "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        }
        result = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=environment)
        sections.append((f"dry run {script.name}", f"rc {result.returncode}\n{result.stdout}"))
    from gd2po_openrlhf.integration.resume import checkpoint_settings
    from gd2po_openrlhf.integration.settings import resolve_settings

    for preset, extra in PRESET_COMMANDS.items():
        argv = BASE + ["--gd2po.config", str(ROOT / "configs" / preset)] + extra
        sections.append((f"dry run preset {preset}", launcher(argv + ["--gd2po.dry_run"])))
        from gd2po_testing import openrlhf_strategy

        settings = resolve_settings(openrlhf_strategy(argv).args)
        # Sorted: the order of the saved dict is not what a checkpoint means.
        sections.append((f"checkpoint_settings {preset}", repr(sorted(checkpoint_settings(settings).items()))))
    text = "".join(f"==== {title}\n{body}\n" for title, body in sections)
    # DeepSpeed's start-up warning carries a timestamp: not part of what the plugin prints.
    lines = [line for line in text.replace(str(ROOT), "<ROOT>").splitlines() if "real_accelerator.py" not in line]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
