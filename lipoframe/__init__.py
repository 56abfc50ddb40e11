"""lipoframe: one pick per particle, with its own diameter, for round particles of many sizes."""

from __future__ import annotations

__version__ = "0.1.0"

from lipoframe.hookspecs import hookimpl  # noqa: E402

__all__ = ["__version__", "hookimpl", "pick", "run_pipeline"]


def __getattr__(name):
    # Lazy: importing lipoframe (e.g. for hookimpl in a plugin) stays cheap.
    if name == "pick":
        from lipoframe.runner import pick

        return pick
    if name == "run_pipeline":
        from lipoframe.runner import run_pipeline

        return run_pipeline
    raise AttributeError(f"module 'lipoframe' has no attribute {name!r}")


def __dir__():
    # The lazy names too, so that tab completion (IPython, Jupyter) offers lipoframe.pick.
    return sorted(set(globals()) | set(__all__))
