"""setuptools needs code for two things: installing gd2po_openrlhf.pth at the root of site-packages, in
regular wheels (build_py) and in editable installs (editable_wheel), so the import hook is active after
`pip install .` and `pip install -e .` alike; and shipping the recipes (examples/, configs/) inside the wheel as
gd2po_openrlhf/_recipes, for `python -m gd2po_openrlhf.recipes --copy DIR`. Everything else is in setup.cfg."""

import pathlib
import shutil

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

PTH = "gd2po_openrlhf.pth"
PTH_TEXT = (pathlib.Path(__file__).parent / PTH).read_text()


class BuildPyWithPth(build_py):
    def run(self):
        super().run()
        if not self.editable_mode:
            target = pathlib.Path(self.build_lib) / PTH
            target.write_text(PTH_TEXT)
            self.outputs_with_pth = [str(target)]
            recipes = pathlib.Path(self.build_lib) / "gd2po_openrlhf" / "_recipes"
            for part in ("examples", "configs"):
                shutil.rmtree(recipes / part, ignore_errors=True)
                shutil.copytree(
                    pathlib.Path(__file__).parent / part,
                    recipes / part,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
                )
                self.outputs_with_pth += [str(path) for path in (recipes / part).rglob("*") if path.is_file()]

    def get_outputs(self, include_bytecode=True):
        return super().get_outputs(include_bytecode) + getattr(self, "outputs_with_pth", [])


class EditableWheelWithPth(editable_wheel):
    def _select_strategy(self, name, tag, build_lib):
        # setuptools writes the editable wheel through a strategy object (a context manager called with
        # the open wheel); wrap it to add the hook's .pth beside setuptools' own.
        strategy = super()._select_strategy(name, tag, build_lib)

        class WithPth:
            def __enter__(self):
                strategy.__enter__()
                return self

            def __exit__(self, *exc):
                return strategy.__exit__(*exc)

            def __call__(self, wheel, files, mapping):
                strategy(wheel, files, mapping)
                wheel.writestr(PTH, PTH_TEXT)

        return WithPth()


setup(cmdclass={"build_py": BuildPyWithPth, "editable_wheel": EditableWheelWithPth})
