"""Plugin discovery: built-in modules and the ``lipoframe`` entry-point group.

``LIPOFRAME_LOAD_PLUGINS`` controls third-party loading: unset loads every
installed plugin, an empty string loads none, ``a,b`` loads only the
distributions named ``a`` and ``b``. ``LIPOFRAME_BLOCK_PLUGINS=a,b`` blocks
entry points by name.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pluggy

from lipoframe import hookspecs
from lipoframe.registry import RegistryError, StageRegistry

ENTRY_POINT_GROUP = "lipoframe"

#: Built-in plugin modules, registered like third-party plugins.
DEFAULT_PLUGINS = (
    "lipoframe.builtin.readers",
    "lipoframe.builtin.detectors",
    "lipoframe.builtin.nms",
    "lipoframe.builtin.refiners",
    "lipoframe.builtin.filters",
    "lipoframe.builtin.junk",
    "lipoframe.builtin.binning",
    "lipoframe.builtin.writers",
    "lipoframe.builtin.heatmap",
    "lipoframe.builtin.maskwriter",
    "lipoframe.builtin.maskfilter",
    "lipoframe.builtin.tomo",
)


class PluginError(Exception):
    """A plugin could not be imported or is invalid."""


class _Manager(pluggy.PluginManager):
    def parse_hookimpl_opts(self, plugin, name):
        opts = super().parse_hookimpl_opts(plugin, name)
        if opts is None and name.startswith("lipoframe_"):
            # Like pytest: an unmarked lipoframe_* function is still a hook
            # implementation, so a misspelled name fails in check_pending().
            method = getattr(plugin, name, None)
            if callable(method):
                opts = {}
        return opts


@dataclass
class PluginInfo:
    """One loaded plugin: where it came from and what it added."""

    name: str
    distribution: str
    version: str
    module: str
    stages: list[str] = field(default_factory=list)


def _normalise(dist: str) -> str:
    return dist.lower().replace("_", "-")


def make_plugin_manager(*, load_entrypoints: bool = True) -> tuple[pluggy.PluginManager, list[PluginInfo]]:
    """Build a plugin manager with the built-ins and (optionally) installed plugins.

    Raises
    ------
    PluginError
        If a plugin cannot be imported or implements an unknown hook; the
        message names the plugin and its distribution.
    """
    import lipoframe

    pm = _Manager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    infos: list[PluginInfo] = []
    for modname in DEFAULT_PLUGINS:
        mod = importlib.import_module(modname)
        pm.register(mod, name=modname)
        infos.append(PluginInfo(modname, "lipoframe", lipoframe.__version__, modname))
    if load_entrypoints:
        wanted = os.environ.get("LIPOFRAME_LOAD_PLUGINS")
        only = None if wanted is None else {_normalise(w) for w in wanted.split(",") if w.strip()}
        blocked = {b.strip() for b in os.environ.get("LIPOFRAME_BLOCK_PLUGINS", "").split(",") if b.strip()}
        seen: set[tuple[str, str]] = set()
        # LIPOFRAME_LOAD_PLUGINS= (empty) loads none: the installed distributions are not looked at.
        for dist in md.distributions() if only != set() else ():
            ours = [ep for ep in dist.entry_points if ep.group == ENTRY_POINT_GROUP]
            if not ours:
                continue  # its metadata (the slow part: a parse of each METADATA file) is not read
            dname = dist.metadata["Name"] or "?"
            for ep in ours:
                if (dname, ep.name) in seen:
                    continue
                seen.add((dname, ep.name))
                if only is not None and _normalise(dname) not in only:
                    continue
                if ep.name in blocked:
                    continue
                # Two distributions may use the same entry-point name: keep both.
                pname = ep.name if not pm.has_plugin(ep.name) else f"{dname}:{ep.name}"
                try:
                    plugin = ep.load()
                except Exception as exc:  # noqa: BLE001 - re-raised with context
                    raise PluginError(
                        f"error importing plugin {ep.name!r} ({ep.value}) from distribution {dname} {dist.version}: "
                        f"{type(exc).__name__}: {exc}{_without_it(ep.name, dname)}"
                    ) from exc
                try:
                    pm.register(plugin, name=pname)
                except (pluggy.PluginValidationError, ValueError) as exc:
                    detail = "; ".join(ln.strip() for ln in str(exc).splitlines() if ln.strip())
                    raise PluginError(f"plugin {ep.name!r} from {dname} {dist.version} is invalid: {detail}"
                                      f"{_without_it(ep.name, dname)}") from exc
                infos.append(PluginInfo(pname, dname, dist.version, getattr(plugin, "__name__", str(plugin))))
    # Like pm.check_pending(), with a message that names the distribution.
    for hname, caller in vars(pm.hook).items():
        if hname.startswith("_") or caller.has_spec():
            continue
        for impl in caller.get_hookimpls():
            if not impl.optionalhook:
                info = next((i for i in infos if i.name == impl.plugin_name), None)
                where = f"{impl.plugin_name!r} from {info.distribution} {info.version}" if info else repr(impl.plugin_name)
                raise PluginError(
                    f"plugin {where} implements unknown hook {hname!r} (misspelled?); "
                    f"known hooks: {', '.join(_hook_names())}"
                    + (_without_it(info.name.rsplit(":", 1)[-1], info.distribution) if info else "")
                )
    pm.infos = infos
    return pm, infos


def _without_it(entry_point: str, distribution: str) -> str:
    """How to run lipoframe without a plugin that stops it, for the end of the message that names it.

    Every command loads every installed plugin, so one that cannot be
    imported stops all of them, also those that would not use it.
    """
    return (f" (to run without it: LIPOFRAME_BLOCK_PLUGINS={entry_point}, or pip uninstall {distribution}; "
            "see docs/plugins.md)")


def _provider(pm: pluggy.PluginManager, plugin_name: str) -> str:
    """``lipoframe-foo 1.2 (foo)`` for a registered plugin, or its bare name."""
    info = next((i for i in getattr(pm, "infos", ()) if i.name == plugin_name), None)
    return f"{info.distribution} {info.version} ({plugin_name})" if info else plugin_name


def call_run_end(pm: pluggy.PluginManager, *, out_dir: Path, summary: dict) -> list[str]:
    """Call every ``lipoframe_run_end`` implementation, each on its own.

    One that raises does not keep the others from running; the run's
    outputs are all written by then.

    Parameters
    ----------
    pm : pluggy.PluginManager
        From :func:`make_plugin_manager`.
    out_dir : Path
        The run's output folder.
    summary : dict
        The content of ``run_summary.json``.

    Returns
    -------
    failures : list of str
        One line per implementation that raised, naming its plugin,
        distribution and version and the exception.
    """
    kwargs = {"out_dir": out_dir, "summary": summary}
    failures = []
    # Last registered first, as pluggy calls them.
    for impl in reversed(pm.hook.lipoframe_run_end.get_hookimpls()):
        try:
            impl.function(**{arg: kwargs[arg] for arg in impl.argnames})
        except Exception as exc:  # noqa: BLE001 - reported naming the plugin
            first = str(exc).splitlines()[0] if str(exc) else ""
            failures.append(f"plugin {_provider(pm, impl.plugin_name)} failed in lipoframe_run_end: {type(exc).__name__}: {first}")
    return failures


def _hook_names() -> list[str]:
    return sorted(n for n in dir(hookspecs) if n.startswith("lipoframe_"))


def build_registry(pm: pluggy.PluginManager, infos: list[PluginInfo]) -> StageRegistry:
    """Call every ``lipoframe_register_stages`` hook, tracking who adds what."""
    registry = StageRegistry()
    by_name = {i.name: i for i in infos}
    # Built-ins first (registration order), then third-party plugins.
    impls = pm.hook.lipoframe_register_stages.get_hookimpls()
    for impl in impls:
        info = by_name.get(impl.plugin_name)
        provider = (
            f"{info.distribution} {info.version} ({impl.plugin_name})" if info else impl.plugin_name
        )
        registry.current_provider = provider
        registry.current_distribution = (
            f"{info.distribution} {info.version}" if info and _normalise(info.distribution) != "lipoframe" else ""
        )
        before = {(s.kind, s.name) for s in registry.stages()}
        try:
            # An implementation may take fewer arguments than the spec (pluggy rule).
            impl.function(**{arg: registry for arg in impl.argnames})
        except RegistryError as exc:
            raise PluginError(str(exc)) from exc
        except Exception as exc:  # noqa: BLE001 - re-raised naming the plugin
            raise PluginError(
                f"plugin {provider} failed in lipoframe_register_stages: {type(exc).__name__}: {exc}"
                + (_without_it(info.name.rsplit(":", 1)[-1], info.distribution) if info else "")
            ) from exc
        if info is not None:
            info.stages.extend(f"{s.kind}/{s.name}" for s in registry.stages() if (s.kind, s.name) not in before)
    registry.current_provider = "<direct>"
    registry.current_distribution = ""
    return registry


_CACHE: dict[str, object] = {}


def load(*, refresh: bool = False) -> tuple[pluggy.PluginManager, StageRegistry, list[PluginInfo]]:
    """Plugin manager, registry and plugin list of this process (cached)."""
    key = os.environ.get("LIPOFRAME_LOAD_PLUGINS", "\0") + "|" + os.environ.get("LIPOFRAME_BLOCK_PLUGINS", "")
    if refresh or _CACHE.get("key") != key:
        pm, infos = make_plugin_manager()
        registry = build_registry(pm, infos)
        _CACHE.update(key=key, value=(pm, registry, infos))
    return _CACHE["value"]  # type: ignore[return-value]


def read_file(path: str | os.PathLike, *, dims: int = 2):
    """The :class:`~lipoframe.records.Micrograph` in ``path``, read by the registered reader for its suffix.

    Readers are chosen as for a run's inputs
    (:meth:`~lipoframe.registry.StageRegistry.readers_by_suffix`), built
    for ``dims``; no pixel size is imposed, and a header's that is not valid
    (a TIFF's print resolution) is not warned about: the callers read masks,
    heatmaps and an evaluation's images, whose pixel size nobody uses.

    Raises
    ------
    InputError
        Naming the file, when no reader takes its suffix or it cannot be read.
    """
    from lipoframe.records import InputError, file_suffix, refuse_special_file

    path = Path(path)
    refuse_special_file(path)
    suffix = file_suffix(path)
    reader = load()[1].readers_by_suffix(dims=dims).get(suffix)
    if reader is None:
        raise InputError(f"{path}: no reader for {dims}D files ending in {suffix!r}")
    from lipoframe.builtin.readers import pixel_size_unused

    with pixel_size_unused():
        return reader.read(path, pixel_size=None)


def read_array(path: str | os.PathLike, *, dims: int = 2) -> np.ndarray:
    """The array in ``path`` as stored, read by the registered reader for its suffix.

    For files that are not inputs of a run (masks, the images of an
    evaluation); the readers are chosen as for a run's inputs
    (:meth:`~lipoframe.registry.StageRegistry.readers_by_suffix`).

    Raises
    ------
    InputError
        Naming the file, when no reader takes its suffix, it cannot be read,
        or it does not hold a ``dims``-dimensional array.
    """
    from lipoframe.records import InputError

    data = np.asarray(read_file(path, dims=dims).image)
    if data.ndim != dims:
        raise InputError(f"{path}: a {data.ndim}D array where a {dims}D one is expected")
    return data
