"""Hook specifications of lipoframe.

Every hook is prefixed ``lipoframe_`` and called with keyword arguments; an
implementation may accept fewer arguments than the spec lists. Plugins are
found through the entry-point group ``lipoframe``; the built-in stages are
registered through exactly the same hooks.

Example plugin module::

    from lipoframe import hookimpl

    @hookimpl
    def lipoframe_register_stages(registry):
        registry.add(MyDetector)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from pathlib import Path

    from lipoframe.registry import StageRegistry

PROJECT = "lipoframe"
_spec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

__all__ = ["hookimpl", "lipoframe_register_stages", "lipoframe_run_end"]


@_spec
def lipoframe_register_stages(registry: "StageRegistry") -> None:
    """Add stages to the registry with ``registry.add(StageClass)``.

    :param registry: the :class:`~lipoframe.registry.StageRegistry` of this
        process. Adding a stage whose kind and name are taken raises an error
        that names both providers.
    """


@_spec
def lipoframe_run_end(out_dir: "Path", summary: dict) -> None:
    """Called once after a run (or merge, or plan) has written its outputs.

    :param out_dir: the run's output folder.
    :param summary: the content of ``run_summary.json``. Return values are
        ignored; use it for notifications, extra reports or bookkeeping.
    """
