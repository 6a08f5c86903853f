"""The import hook that activates GD²PO inside OpenRLHF without changing the user's command.

``gd2po_openrlhf.pth`` (installed at the root of site-packages) runs at every interpreter start, in the driver
and in every Ray worker alike, since Ray workers start from the same environment. It reads ``GD2PO_DISABLE``
itself and imports this module only when the plugin is on (or a dry run must be refused), and this module
imports nothing beyond ``sys``, ``os`` (already loaded by then) and the module names of ``targets.py``: the hook
costs well under a millisecond per interpreter start, and nothing with ``GD2PO_DISABLE=1``
(``benchmarks/startup_overhead.py`` measures both).

The finder watches five module names:
- ``openrlhf.cli.train_ppo_ray``: when it is looked up (``python -m`` does that through
  ``importlib.util.find_spec``), the argparse extension (``argparse_patch.py``) is installed, which widens the
  estimator choices and adds the ``--gd2po.*`` and ``--cost.*`` flags to the parser that defines
  ``--algo.advantage.estimator``;
- ``PATCHED_MODULES`` (the PPO trainer, its samples generator, the rollout actors' agent executor, the async
  trainer's generator actor): right after
  one of them executes, ``patching.patch_module`` applies the plugin's replacements to it, in whichever
  process imports it (the driver, the PPOTrainer actor, the async TrainingActor and GenerateSamplesActor, the
  vLLM rollout actors).

``GD2PO_DISABLE=1`` turns the automatic activation off and leaves OpenRLHF untouched; with ``GD2PO_DRY_RUN``
also set, the launcher refuses to start instead of silently launching a real run.
"""

import os
import sys

from .targets import CLI_MODULE, PATCHED_MODULES, env_switch

# The OpenRLHF releases whose internals the integration was checked against (the file:line references in
# integration/ point into openrlhf 0.11.2).
SUPPORTED_OPENRLHF = ((0, 11, 2), (0, 12, 0))


def check_openrlhf_version(version: "str | None" = None) -> None:
    """Refuse an installed openrlhf outside [0.11.2, 0.12) with one message naming both versions.

    Called when OpenRLHF's launcher or trainer module is looked up, before anything of the plugin patches it:
    a drifted OpenRLHF would otherwise fail deep inside a Ray actor, or silently train on misrouted rewards.
    """
    import importlib.metadata
    import re

    if version is None:
        try:
            version = importlib.metadata.version("openrlhf")
        except importlib.metadata.PackageNotFoundError:
            return  # a source checkout on sys.path without metadata: nothing to compare
    match = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?(.*)", version)
    # A pre-release (0.11.2rc1, 0.12.0.dev0) comes before its release, as pip orders them: (x, y, z, 0) < (x, y, z, 1).
    prerelease = bool(match and re.match(r"\.?(a|b|c|rc|alpha|beta|pre|preview|dev)\d*", match.group(4)))
    parsed = tuple(int(part or 0) for part in match.groups()[:3]) + (0 if prerelease else 1,) if match else None
    low, high = (SUPPORTED_OPENRLHF[0] + (1,), SUPPORTED_OPENRLHF[1] + (0,))
    if parsed is None or not low <= parsed < high:
        low, high = SUPPORTED_OPENRLHF
        try:
            plugin = importlib.metadata.version("gd2po-openrlhf")
        except importlib.metadata.PackageNotFoundError:
            plugin = "(source checkout)"
        raise RuntimeError(
            f"gd2po-openrlhf {plugin} supports openrlhf>={'.'.join(map(str, low))},<{'.'.join(map(str, high[:2]))}, "
            "but "
            f"openrlhf {version} is installed. Install a supported version (pip install 'openrlhf>=0.11.2,<0.12') or "
            "set "
            "GD2PO_DISABLE=1 to run OpenRLHF without the plugin"
        )


def disabled() -> bool:
    return env_switch("GD2PO_DISABLE")


class _PatchingLoader:
    """Runs the real loader, then applies the plugin's patch for that module (a loader needs only these two
    methods; subclassing importlib.abc.Loader would cost ~8 ms of imports at every interpreter start)."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        _patch(module)

    def __getattr__(self, name):  # get_code, get_source, is_package, ... of the real loader
        return getattr(self._loader, name)


def _patch(module) -> None:
    from .patching import patch_module

    patch_module(module)


def _path_finder():
    """importlib's PathFinder, taken from sys.meta_path where Python put it (no import needed)."""
    return next(finder for finder in sys.meta_path if getattr(finder, "__name__", None) == "PathFinder")


class GD2POFinder:
    def find_spec(self, fullname, path, target=None):
        if fullname != CLI_MODULE and fullname not in PATCHED_MODULES:
            return None
        spec = _path_finder().find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return None
        try:
            check_openrlhf_version()
        except RuntimeError as error:
            # An unsupported OpenRLHF is left untouched. The launcher stops with one line (no traceback through
            # runpy) only when the command asks for the plugin; OpenRLHF's own estimators still run.
            if fullname == CLI_MODULE and any(
                token in ("gd2po", "gdpo") or token.startswith(("--gd2po.", "--cost.")) for token in sys.argv
            ):
                raise SystemExit(f"error: {error}") from None
            if fullname == CLI_MODULE:
                print(f"warning: {error}; GD²PO stays inactive for this run", file=sys.stderr)
            return None
        if fullname == CLI_MODULE:
            from .argparse_patch import install_argparse_extension

            install_argparse_extension()
        else:
            spec.loader = _PatchingLoader(spec.loader)
        return spec


class DryRunRefusal:
    """With GD2PO_DISABLE=1 the plugin cannot run a dry run: refuse OpenRLHF's launcher rather than launch."""

    def find_spec(self, fullname, path, target=None):
        if fullname == CLI_MODULE:
            raise SystemExit(
                "error: GD2PO_DRY_RUN is set but GD2PO_DISABLE=1 turns the plugin off, so nothing would stop this "
                "command before Ray starts: unset GD2PO_DISABLE for a dry run, or GD2PO_DRY_RUN for a real launch"
            )
        return None


def install() -> None:
    """Put the finder first on ``sys.meta_path`` (idempotent). With GD2PO_DISABLE=1 nothing is patched; a dry
    run (GD2PO_DRY_RUN) is then refused, since nothing would stop the launcher."""
    if any(isinstance(finder, (GD2POFinder, DryRunRefusal)) for finder in sys.meta_path):
        return
    if disabled():
        if env_switch("GD2PO_DRY_RUN"):
            sys.meta_path.insert(0, DryRunRefusal())
        return
    sys.meta_path.insert(0, GD2POFinder())
    # `python .../openrlhf/cli/train_ppo_ray.py` runs the launcher as a script, never looked up by its module name:
    # extend argparse now, as the finder does for `python -m` (an unsupported OpenRLHF is left alone here).
    script = (getattr(sys, "argv", None) or [""])[0].replace(os.sep, "/")
    if script.endswith("openrlhf/cli/train_ppo_ray.py"):
        try:
            check_openrlhf_version()
        except RuntimeError:
            return
        from .argparse_patch import install_argparse_extension

        install_argparse_extension()


def register() -> None:
    """Explicit activation, for environments where the .pth file is not processed.

    Installs the finder, and patches the ``PATCHED_MODULES`` right away if they are already imported. Use it as
    Ray's ``worker_process_setup_hook`` ("gd2po_openrlhf.register") for
    ``ray job submit`` set-ups so that every worker gets it too. An explicit call applies even with
    GD2PO_DISABLE=1, which only turns off the automatic activation by the .pth file.
    """
    check_openrlhf_version()
    if not any(isinstance(finder, GD2POFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, GD2POFinder())
    from .argparse_patch import install_argparse_extension

    install_argparse_extension()
    for name in PATCHED_MODULES:
        if name in sys.modules:
            _patch(sys.modules[name])
