"""The stage registry: every stage, built-in or third-party, is added here.

Plugins receive the registry in their ``lipoframe_register_stages`` hook and
call :meth:`StageRegistry.add`. The registry checks the stage, refuses a second
stage of the same kind and name (naming both providers), and mirrors every
stage's ``Params`` dataclass into Hydra's ConfigStore so that
``detector=<name>`` selects it and ``detector.<param>=...`` is type-checked.
"""

from __future__ import annotations

import dataclasses
import enum
import re
import types
import typing
import weakref
from dataclasses import dataclass

from lipoframe.stages import BASES, KINDS, MULTI_KINDS, NoParams, Stage


#: Stage names: lower-case ASCII snake_case (they are Hydra option names and file-safe).
_NAME = re.compile(r"[a-z][a-z0-9_]*")


class RegistryError(Exception):
    """A stage could not be registered or found."""


@dataclass(frozen=True)
class StageInfo:
    """A registered stage and who provided it."""

    kind: str
    name: str
    cls: type
    provider: str
    #: ``"lipoframe-foo 1.2"``: the installed distribution (and version) of a
    #: third-party plugin that provides the stage; ``""`` for lipoframe's own.
    distribution: str = ""

    @property
    def params(self) -> type:
        return self.cls.Params


class StageRegistry:
    """All stages known to this process, by kind and name."""

    def __init__(self) -> None:
        self._stages: dict[tuple[str, str], StageInfo] = {}
        self._by_params: dict[type, StageInfo] = {}
        #: Name of the plugin whose hook is running (set by the plugin manager).
        self.current_provider: str = "<direct>"
        #: Its distribution and version, ``""`` for lipoframe's own (see :class:`StageInfo`).
        self.current_distribution: str = ""

    # -- registration -----------------------------------------------------
    def add(self, stage_cls: type) -> type:
        """Register a stage class; returns it so this works as a decorator.

        Raises
        ------
        RegistryError
            If the class is not a stage, its kind is unknown, its name is not a
            simple identifier, its ``Params`` is not a dataclass or is shared
            with another stage, or the (kind, name) pair is taken.
        """
        provider = self.current_provider
        if not (isinstance(stage_cls, type) and issubclass(stage_cls, Stage)):
            raise RegistryError(f"{provider}: {stage_cls!r} is not a lipoframe Stage subclass")
        kind, name = stage_cls.kind, stage_cls.name
        if kind not in KINDS:
            raise RegistryError(f"{provider}: stage {stage_cls.__name__} has unknown kind {kind!r}; kinds are {KINDS}")
        if not issubclass(stage_cls, BASES[kind]):
            raise RegistryError(f"{provider}: stage {stage_cls.__name__} of kind {kind!r} must subclass {BASES[kind].__name__}")
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise RegistryError(f"{provider}: stage {stage_cls.__name__} needs a snake_case name, got {name!r}")
        if stage_cls.Params is NoParams:
            raise RegistryError(f"{provider}: {stage_cls.__name__} must define its own Params dataclass (it may be empty)")
        if not dataclasses.is_dataclass(stage_cls.Params):
            raise RegistryError(f"{provider}: {stage_cls.__name__}.Params must be a dataclass")
        problem = params_problem(stage_cls.Params, section=f"{kind}.{name}" if kind in MULTI_KINDS else kind)
        if problem:
            raise RegistryError(f"{provider}: stage {kind}/{name} ({stage_cls.__name__}): {problem}")
        key = (kind, name)
        if key in self._stages:
            other = self._stages[key]
            raise RegistryError(
                f"two {kind} stages are named {name!r}: one from {other.provider} "
                f"({other.cls.__module__}.{other.cls.__qualname__}) and one from {provider} "
                f"({stage_cls.__module__}.{stage_cls.__qualname__}); uninstall one or rename it"
            )
        if stage_cls.Params in self._by_params:
            other = self._by_params[stage_cls.Params]
            raise RegistryError(
                f"{provider}: stage {kind}/{name} reuses the Params class of {other.kind}/{other.name}; "
                "give each stage its own Params dataclass (subclassing is fine)"
            )
        info = StageInfo(kind=kind, name=name, cls=stage_cls, provider=provider, distribution=self.current_distribution)
        self._stages[key] = info
        self._by_params[stage_cls.Params] = info
        return stage_cls

    # -- lookup -------------------------------------------------------------
    def get(self, kind: str, name: str) -> StageInfo:
        if kind not in KINDS:
            raise RegistryError(f"unknown stage kind {kind!r}; kinds are {', '.join(KINDS)}")
        try:
            return self._stages[(kind, name)]
        except KeyError:
            known = ", ".join(self.names(kind)) or "none"
            raise RegistryError(f"no {kind} stage named {name!r}; available: {known}") from None

    def for_params(self, params: object) -> StageInfo:
        """Find the stage whose ``Params`` class ``params`` is an instance of."""
        info = self._by_params.get(type(params))
        if info is None:
            raise RegistryError(f"no stage takes parameters of type {type(params).__name__}")
        return info

    def build(self, params: object) -> Stage:
        """Instantiate the stage that owns ``params``."""
        return self.for_params(params).cls(params)

    def reject_reasons(self) -> tuple[set[str], list[str]]:
        """The reject reasons the registered refiners and filters declare.

        Returns
        -------
        reasons : set of str
            The union of their ``reasons``.
        undeclared : list of str
            ``kind/name`` of those that declare none (``reasons is None``):
            they may give any reason.
        """
        reasons: set[str] = set()
        undeclared: list[str] = []
        for info in self.stages("refiner") + self.stages("filter"):
            if info.cls.reasons is None:
                undeclared.append(f"{info.kind}/{info.name}")
            else:
                reasons.update(info.cls.reasons)
        return reasons, undeclared

    def names(self, kind: str) -> list[str]:
        return sorted(n for (k, n) in self._stages if k == kind)

    def stages(self, kind: str | None = None) -> list[StageInfo]:
        return [self._stages[key] for key in sorted(self._stages, key=lambda k: (KINDS.index(k[0]), k[1])) if kind in (None, key[0])]

    def readers_by_suffix(self, *, dims: int = 2) -> dict[str, Stage]:
        """One reader per file suffix (the first registered that takes it), built for ``dims``.

        Readers whose Params have a ``dims`` field get ``dims``; the others
        are built with their defaults.
        """
        by_suffix: dict[str, Stage] = {}
        for info in self.stages("reader"):
            for suffix in getattr(info.cls, "suffixes", ()):
                if suffix in by_suffix:
                    continue
                params = info.cls.Params(**({"dims": dims} if "dims" in info.cls.Params.__dataclass_fields__ else {}))
                by_suffix[suffix] = info.cls(params)
        return by_suffix

    def __contains__(self, key: tuple[str, str]) -> bool:
        return key in self._stages

    def __len__(self) -> int:
        return len(self._stages)

    # -- Hydra ----------------------------------------------------------------
    def store_configs(self, cs=None) -> None:
        """Store every stage's Params as a Hydra config-group option.

        ``detector=log`` then selects ``LogParams``; writers and filters are
        stored under ``writer.<name>`` so several can be selected at once.
        """
        from hydra.core.config_store import ConfigNode, ConfigStore
        from omegaconf import OmegaConf

        if cs is None:
            cs = ConfigStore.instance()
        for info in self._stages.values():
            package = f"{info.kind}.{info.name}" if info.kind in MULTI_KINDS else info.kind
            group = cs.repo.get(info.kind)
            stored = group.get(f"{info.name}.yaml") if isinstance(group, dict) else None
            if (isinstance(stored, ConfigNode) and stored.package == package and stored.provider == info.provider
                    and OmegaConf.get_type(stored.node) is info.cls.Params):
                # Stored already (each command stores them, some twice): the same class gives the same node,
                # which Hydra copies before using it. Storing it again is most of the time of this call.
                continue
            cs.store(group=info.kind, name=info.name, node=info.cls.Params, package=package, provider=info.provider)


def params_problem(params_cls: type, *, section: str) -> str:
    """What keeps a Params dataclass from being a set of command-line options, or ``""``.

    Every field becomes the option ``<section>.<field>``: it needs a default
    (a stage that is not configured is built with ``Params()``, e.g. the
    readers chosen by suffix), and a type that Hydra's configs can hold.

    Parameters
    ----------
    params_cls : dataclass type
        A stage's ``Params``.
    section : str
        Where its options live, e.g. ``"detector"`` or ``"writer.csv"``.

    Returns
    -------
    problem : str
        One sentence naming the option, or ``""`` when there is none.
    """
    from omegaconf import OmegaConf

    for f in dataclasses.fields(params_cls):
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:  # type: ignore[misc]
            return f"{section}.{f.name} has no default; every parameter needs one (the stage is built with Params() when it is not configured)"
    if params_cls in _STRUCTURED:
        return ""
    try:
        OmegaConf.structured(params_cls)
    except Exception as exc:  # noqa: BLE001 - OmegaConf raises several types; all become one sentence
        key = getattr(exc, "full_key", "") or ""
        first = str(exc).splitlines()[0].strip() if str(exc) else type(exc).__name__
        where = f"{section}.{key}" if key else section
        return (f"{where}: {first}; a parameter must be an int, float, bool, str or Enum, "
                "a list or dict of them, or Optional of one of these")
    _STRUCTURED.add(params_cls)
    return ""


#: The Params classes OmegaConf made a config of in this process: a class's fields do not change, and
#: the conversion is most of the time of building a registry, which every command does (in-process callers,
#: such as the tests, many times). Weak: a plugin's module imported again gives new classes.
_STRUCTURED: weakref.WeakSet[type] = weakref.WeakSet()


def type_name(tp: object) -> str:
    """A field's type as ``lipoframe stages`` shows it, the same however it is spelled.

    ``Optional[float]``, ``Union[float, None]`` and ``float | None`` all read
    ``float | None``; ``List[float]`` and ``list[float]`` read ``list[float]``
    (``__name__`` alone gives ``Optional`` and ``list``).
    """
    if tp is type(None) or tp is None:
        return "None"
    if tp is Ellipsis:
        return "..."
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):  # Optional[float], Union[float, None], float | None
        # None last, as in the usual spelling
        return " | ".join(type_name(a) for a in sorted(args, key=lambda a: a is type(None)))
    if origin is not None:
        name = getattr(origin, "__name__", None) or str(origin).replace("typing.", "")
        return f"{name}[{', '.join(type_name(a) for a in args)}]" if args else name
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def describe_params(params_cls: type) -> list[tuple[str, str, object, str]]:
    """(name, type, default, help) for each field of a Params dataclass."""
    hints = typing.get_type_hints(params_cls)
    rows = []
    for f in dataclasses.fields(params_cls):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        else:
            default = "???"
        tp = hints.get(f.name, f.type)
        tname = type_name(tp)
        help_text = str(f.metadata.get("help", "") or "")
        if isinstance(tp, type) and issubclass(tp, enum.Enum):  # the values to type, which the type's name does not say
            help_text = "; ".join(t for t in (f"one of {', '.join(m.name for m in tp)}", help_text) if t)
        rows.append((f.name, tname, default, help_text))
    return rows
