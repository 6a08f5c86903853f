"""Shared piece of the CPU import stand-ins for vLLM and flash-attn.

These packages exist only so that `import openrlhf...` works on a machine without GPUs. They live in
dev/cpu_stubs, which the CPU venv puts on sys.path *after* site-packages (a real install wins), and
they are never part of the gd2po-openrlhf wheel. Every name raises as soon as it is used.
"""


class StandInUsedError(RuntimeError):
    pass


def _fail(qualname: str):
    raise StandInUsedError(
        f"{qualname} is a CPU import stand-in from gd2po-openrlhf's dev/cpu_stubs, not the real package. "
        "Install the real vllm / flash-attn (pip install 'gd2po-openrlhf[gpu]') to use it."
    )


def standin_function(qualname: str):
    """A function that raises when called."""

    def standin(*args, **kwargs):
        _fail(qualname)

    standin.__qualname__ = standin.__name__ = qualname.rsplit(".", 1)[-1]
    return standin


def standin_class(qualname: str):
    """A class that raises when instantiated or when a class method is looked up."""

    class _Meta(type):
        def __getattr__(cls, name):
            _fail(f"{qualname}.{name}")

    def __init__(self, *args, **kwargs):
        _fail(qualname)

    return _Meta(qualname.rsplit(".", 1)[-1], (), {"__init__": __init__, "__module__": qualname.rsplit(".", 1)[0]})
