"""The documentation cannot drift from the code: flags, metric tags, make targets, files and folder listings."""

import re
import subprocess
import sys
from pathlib import Path

import torch

from gd2po_openrlhf import GD2POConfig, compute_rollout_advantages
from gd2po_openrlhf.integration.dynamic_sampling import SamplingCounts, sampling_metrics
from gd2po_openrlhf.reward_pipeline import estimate

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md", ROOT / "PYPI.md"]
DOCS += [ROOT / "examples" / "scripts" / "README.md", ROOT / "configs" / "README.md", ROOT / "tests" / "README.md"]


def test_the_flag_reference_is_the_parsers_and_the_docs_name_only_real_flags():
    result = subprocess.run(
        [sys.executable, str(ROOT / "dev" / "flag_reference.py"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    sys.path.insert(0, str(ROOT / "dev"))
    from flag_reference import plugin_actions

    flags = set(plugin_actions())
    reference = (ROOT / "docs" / "flags.md").read_text()
    assert all(f"`{flag}" in reference for flag in flags)
    named = {}
    for page in DOCS:
        for flag in re.findall(r"--(?:gd2po|cost)\.[a-z_]+", page.read_text()):
            named.setdefault(flag, page.name)
    spellings = {option for action in plugin_actions().values() for option in action.option_strings}  # + former names
    unknown = {flag: page for flag, page in named.items() if flag not in spellings}
    assert not unknown, f"the docs name flags that do not exist: {unknown}"


def logged_tags() -> set:
    """Every tag the plugin writes, ``<key>`` for a reward key: the reward pipeline's metrics (computed), dynamic
    sampling's (computed) and the experience maker's own (its ``"gd2po/..."`` literals)."""
    # Two dimensions, and three with a reference (--gd2po.reference_key).
    metrics = estimate(
        torch.tensor([[1.0, 0.0], [0.0, 1.0]]),
        torch.tensor([0, 0]),
        torch.tensor([3, 4]),
        GD2POConfig(filter="snr"),
        sum_rewards=False,
    ).metrics
    with_reference = GD2POConfig(weights=(1.0, 1.0, 0.0), reward_keys=("dim0", "dim1", "dim2"), reference_key="dim2")
    metrics.update(
        compute_rollout_advantages(
            torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]),
            torch.tensor([0, 0]),
            torch.tensor([3, 4]),
            with_reference,
        ).metrics
    )
    tags = {
        "train/gd2po/" + re.sub(r"dim\d+__dim\d+", "<a>__<b>", name).replace("/dim0", "/<key>")
        # every /dimN is a reward key's tag
        for name in (re.sub(r"/dim\d+$", "/dim0", name) for name in metrics)
    }
    tags |= {f"train/{name}" for name in sampling_metrics(SamplingCounts(), 1)}
    maker = (ROOT / "gd2po_openrlhf" / "integration" / "experience_maker.py").read_text()
    for literal in re.findall(r'f?"(gd2po/[a-z_/{}.]+)"', maker):
        if "{name}" not in literal:  # f"gd2po/{name}" is the estimator's metrics, counted above
            tags.add("train/" + re.sub(r"\{[^}]+\}", "<key>", literal))
    return tags | {"train/reward/<key>"}


def test_the_metrics_table_lists_exactly_the_tags_the_code_logs():
    table = set(re.findall(r"^\| `(train/[^`]+)`", (ROOT / "docs" / "metrics.md").read_text(), flags=re.M))
    logged = logged_tags()
    assert not logged - table, f"logged but not documented: {sorted(logged - table)}"
    assert not table - logged, f"documented but never logged: {sorted(table - logged)}"


def test_every_make_target_script_and_file_the_docs_name_exists():
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][a-z-]*):", makefile, flags=re.M))
    missing = []
    for page in DOCS:
        text = page.read_text()
        for target in re.findall(r"`make ([a-z][a-z-]*)`", text) + re.findall(r"^make ([a-z][a-z-]*)", text, re.M):
            if target not in targets:
                missing.append(f"{page.name}: make {target}")
        for path in re.findall(
            r"(?<![\w/.])((?:benchmarks|dev|examples|configs|tests|gd2po_openrlhf)/[\w./-]+\.(?:py|sh|yaml|md|json))",
            text,
        ):
            if not (ROOT / path).exists():
                missing.append(f"{page.name}: {path}")
    assert not missing, missing


def test_the_launcher_and_preset_readmes_list_their_folders():
    for folder, pattern in (("examples/scripts", "*.sh"), ("configs", "*.yaml")):
        listing = (ROOT / folder / "README.md").read_text()
        absent = [p.name for p in sorted((ROOT / folder).glob(pattern)) if f"`{p.name}`" not in listing]
        assert not absent, f"{folder}/README.md does not list {absent}"
        named = set(re.findall(r"`([\w.-]+\." + pattern[2:] + r")`", listing))
        assert not [n for n in named if not (ROOT / folder / n).exists()], named


def test_the_readme_stays_short_and_links_every_docs_page():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    pages = {p.name for p in (ROOT / "docs").glob("*.md")} - {"install.md"}
    assert all(f"docs/{page}" in readme for page in pages), sorted(p for p in pages if f"docs/{p}" not in readme)
    assert readme.startswith("# ") and "make demo" in readme.splitlines()[3] and "make test" in readme.splitlines()[4]
