"""The thin Hydra shim behind ``lipoframe run``.

It composes the config (stage options come from the plugin registry through
ConfigStore), turns it into validated objects and calls
:func:`lipoframe.runner.run_pipeline`, which knows nothing about Hydra.
"""

from __future__ import annotations

import contextlib
import copy
import glob
import logging
import os
import re
import sys
from pathlib import Path
from typing import Sequence

from lipoframe.config import ConfigError, LipoframeConfig, config_dir, override_key, store_schema, to_run_config

log = logging.getLogger("lipoframe")


def prepare_hydra():
    """Load plugins and store the schema and every stage's Params in ConfigStore."""
    from omegaconf import OmegaConf

    from lipoframe import plugins

    pm, registry, infos = plugins.load()
    store_schema()
    registry.store_configs()
    if not OmegaConf.has_resolver("lipoframe_selected"):
        OmegaConf.register_new_resolver("lipoframe_selected", selected_stages)
    return pm, registry


def selected_stages(kind: str, *, _root_) -> str:
    """``[a,b]``: the stages selected for a list kind (``filter``, ``writer``), for ``lipoframe run --help``.

    Their names are the keys of the kind's section, in the order they run
    (conf/config.yaml's help template; single kinds use ``hydra:runtime.choices``).
    """
    node = _root_.get(kind) if kind in _root_ else None
    return "[" + ",".join(str(k) for k in node.keys()) + "]" if hasattr(node, "keys") else "?"


def _list_items(inner: str) -> list[str] | None:
    """The items of a list's text (between its brackets), split at the commas outside quotes and
    stripped as Hydra strips them; None for a nested list."""
    items, start, quote = [], 0, ""
    for i, c in enumerate(inner):
        if quote:
            quote = "" if c == quote else quote
        elif c in "'\"" and not inner[start:i].strip():
            quote = c
        elif c == ",":
            items.append(inner[start:i].strip())
            start = i + 1
        elif c in "[]":
            return None
    return items + [inner[start:].strip()]


def _quoted_item(item: str) -> str:
    """A list item quoted for Hydra, to show inside the shell's double quotes (its own quotes kept)."""
    if len(item) > 1 and item[0] in "'\"" and item[-1] == item[0]:
        return item
    return f"'{item}'" if "'" not in item else f'\\"{item}\\"'


def format_config_error(exc: BaseException) -> str:
    """One line naming the key, from a Hydra/OmegaConf/lipoframe exception chain."""
    from omegaconf.errors import OmegaConfBaseException

    chain = []
    e: BaseException | None = exc
    while e is not None and e not in chain:
        chain.append(e)
        e = e.__cause__ or e.__context__
    for e in chain:
        if isinstance(e, ConfigError):
            return str(e)
    for e in chain:
        override = getattr(e, "override", None)
        if isinstance(override, str) and override:
            # Hydra's OverrideParseException: the word is not in Hydra's override grammar.
            reason = str(e).splitlines()[0].strip()
            key, eq, value = override.partition("=")
            if not eq:
                return f"{override}: not a key=value override ({reason})"
            hint = ""
            items = _list_items(value[1:-1]) if key in _INPUT_KEYS and value.startswith("[") and value.endswith("]") else None
            if items is not None:
                # A list of paths: lipoframe quotes a single path Hydra cannot read, not the items of a list.
                hint = f"; quote each path for Hydra: \"{key}=[{','.join(map(_quoted_item, items))}]\" (docs/configuration.md, Shell quoting)"
            elif any(c in value for c in "{} $"):  # a template such as {stem}.mrc, quoted for the shell only
                hint = f"; quote the value for Hydra too: \"{key}='{value}'\" (docs/configuration.md, Shell quoting)"
            return f"{key.lstrip('+~')}: cannot read {override!r} ({reason}){hint}"
    for e in chain:
        missing = getattr(e, "missing_cfg_file", None)
        if missing and "/" in missing:
            # Hydra's MissingConfigException: an unknown stage name (``detector=nope``).
            from lipoframe.stages import KINDS

            group, _, name = missing.rpartition("/")
            if group in KINDS:
                return f"{group}={name}: no {group} stage named {name!r}; available: {_stage_options(group, e)}"
            options = ", ".join(getattr(e, "options", None) or [])
            return f"{group}={name}: no such option" + (f"; available: {options}" if options else "")
    for e in chain:
        if isinstance(e, OmegaConfBaseException) and getattr(e, "full_key", None):
            unselected = _unselected_stage(e)
            if unselected:
                return unselected
            msg = str(e).splitlines()[0].strip()
            for line in str(e).splitlines():
                if "is not in struct" in line or "could not be converted" in line.lower():
                    msg = line.strip()
                    break
            return f"{e.full_key}: {msg}{_did_you_mean(e)}"
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    if lines and lines[0].startswith("Could not find"):
        options = [ln for ln in lines[1:] if not ln.startswith("Available") and not ln.startswith("Config search path")]
        return f"{lines[0]}; available: {', '.join(options)}"
    return "; ".join(lines[:2]) if lines else type(exc).__name__


def _unselected_stage(exc: BaseException) -> str:
    """The message for ``filter.score.min_score=3`` when ``score`` is not in ``filter=[...]``, or ``""``.

    Hydra only says ``Key 'score' is not in struct``: the options of a list
    kind exist only for the stages selected.
    """
    from lipoframe.stages import MULTI_KINDS

    kind, _, name = str(exc.full_key).partition(".")
    if kind not in MULTI_KINDS or not name or "." in name or "not in struct" not in str(exc):
        return ""
    options = _stage_options(kind, exc)
    if name not in options.split(", "):
        return f"{kind}.{name}: no {kind} stage named {name!r}; available: {options}"
    return (f"{kind}.{name}: the {kind} {name!r} is not selected, so it has no options; select it with "
            f"'{kind}=[...,{name}]' (`lipoframe run --help` shows the selected ones)")


def _did_you_mean(exc: BaseException) -> str:
    """``; did you mean runner.workers?`` for an unknown key of an OmegaConf error, or ``""`` (:func:`suggested_keys`)."""
    import dataclasses

    key, node = getattr(exc, "key", None), getattr(exc, "object_type", None)
    if not isinstance(key, str) or not (isinstance(node, type) and dataclasses.is_dataclass(node)):
        return ""
    found = suggested_keys(key, node, full_key=str(getattr(exc, "full_key", key) or key))
    return f"; did you mean {' or '.join(found)}?" if found else ""


def suggested_keys(key: str, node: type = LipoframeConfig, *, full_key: str | None = None) -> list[str]:
    """The keys (full, dotted; at most 3) an unknown ``key`` of config section ``node`` most likely meant.

    A key unknown in a section (``full_key`` ``detector.treshold``) is compared
    with that section's keys. One unknown at the top level
    (``node`` :class:`LipoframeConfig`) is looked for among the keys of the
    sections and of every registered stage's parameters, by its exact name
    first (``workers`` -> ``runner.workers``, ``tolerance`` ->
    ``filter.diameter_range.tolerance``), then spelled alike, then as the
    start of a key (``stream.poll`` -> ``stream.poll_seconds``). Empty for a
    known key or nothing alike.
    """
    import dataclasses
    import difflib

    from lipoframe.stages import KINDS, MULTI_KINDS

    def names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    if key in names(node):  # a known key with a bad value: nothing to suggest
        return []
    def alike(word: str, candidates) -> list[str]:
        """Spelt alike, else the keys that begin with it (``poll`` -> ``poll_seconds``)."""
        candidates = list(dict.fromkeys(candidates))
        close = difflib.get_close_matches(word, candidates, n=3, cutoff=0.75)
        return close or ([c for c in candidates if c.startswith(word)][:3] if len(word) >= 3 else [])

    if node is not LipoframeConfig:
        full = full_key or key
        prefix = full[: len(full) - len(key)]
        found = [prefix + n for n in alike(key, names(node))]
    else:
        found = difflib.get_close_matches(key, names(node), n=3, cutoff=0.75)
        if not found:
            nested: dict[str, str] = {}  # dotted key -> its last part
            for f in dataclasses.fields(node):
                section = f.default_factory() if f.default_factory is not dataclasses.MISSING else None
                if dataclasses.is_dataclass(section):
                    for n in names(type(section)):
                        nested.setdefault(f"{f.name}.{n}", n)
            _, registry = prepare_hydra()
            for kind in KINDS:
                for info in registry.stages(kind):
                    for n in names(info.params):
                        nested.setdefault(f"{kind}.{info.name}.{n}" if kind in MULTI_KINDS else f"{kind}.{n}", n)
            found = [k for k, n in nested.items() if n == key]
            if not found:
                similar = set(alike(key, sorted(set(nested.values()))))
                found = [k for k, n in nested.items() if n in similar]
    return found[:3]


def _stage_options(group: str, exc: BaseException) -> str:
    """The registered stage names of ``group`` (Hydra omits them for list groups)."""
    options = list(getattr(exc, "options", None) or [])
    if not options:
        from lipoframe import plugins

        try:
            options = plugins.load()[1].names(group)
        except Exception:  # noqa: BLE001 - only used to improve a message
            options = []
    return ", ".join(options) or "none"


def validate_overrides(overrides: list[str], *, config_dirs: Sequence[str] = ()) -> LipoframeConfig:
    """Compose and validate the config once, so errors appear before any work.

    Parameters
    ----------
    overrides : list of str
        The ``key=value`` words of one job.
    config_dirs : sequence of str, optional
        Folders of the user's own presets (``-cd DIR``), searched after
        lipoframe's own config tree, as Hydra does for the run.

    Returns
    -------
    cfg : LipoframeConfig
        The validated configuration.

    Raises
    ------
    ConfigError
        One line naming the bad key.
    """
    return _validated(overrides, config_dirs=config_dirs)[0]


def _is_mode_word(override: str) -> bool:
    """Whether ``override`` is one of the ``hydra`` words that decide between a run and a sweep (:func:`hydra_settings`)."""
    return override.startswith("hydra/sweeper=") or override.lstrip("+~").startswith(("hydra.sweeper.params", "hydra.mode"))


def _validated(overrides: list[str], *, config_dirs: Sequence[str] = (), mode_words: bool = False):
    """:func:`validate_overrides`, and the ``hydra.mode`` of that config (None unless ``mode_words``).

    With ``mode_words``, the words that set Hydra's mode and sweeper are
    composed too (they change only the ``hydra`` node, dropped before the
    run's config is made), so that a plain run is told from a sweep
    (``hydra.mode=MULTIRUN`` in a preset) by the compose that checks it.
    """
    from hydra import compose, initialize_config_dir
    from hydra.types import RunMode
    from omegaconf import open_dict

    from lipoframe.runner import check_ranking_columns, check_retry_suppressed

    plain = [o for o in overrides if not o.lstrip("+~").startswith("hydra") or (mode_words and _is_mode_word(o))]
    for d in config_dirs:
        if not Path(d).is_dir():
            raise ConfigError(f"--config-dir: {d}: no such folder")
    if config_dirs:
        plain.append("hydra.searchpath=[" + ",".join(f"'file://{Path(d).resolve()}'" for d in config_dirs) + "]")
    _, registry = prepare_hydra()  # cached: stage options must be in ConfigStore
    try:
        with initialize_config_dir(version_base="1.3", config_dir=str(config_dir()), job_name="lipoframe"):
            cfg = compose("config", overrides=plain, return_hydra_config=mode_words)
        mode = None
        if mode_words:
            mode = cfg.hydra.get("mode")
            with open_dict(cfg):  # as compose() leaves it without return_hydra_config
                del cfg["hydra"]
        run_cfg = to_run_config(cfg)
        if mode == RunMode.MULTIRUN:
            return run_cfg, mode  # a sweep: each job is checked (and warned about) on its own
        check_retry_suppressed(run_cfg.retry_suppressed, registry)
        check_ranking_columns(run_cfg, registry)
        return run_cfg, mode
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - Hydra raises many types; all become one line
        raise ConfigError(format_config_error(exc)) from exc


def override_notes(cfg: LipoframeConfig, overrides: list[str]) -> list[str]:
    """Notes on options the user set that cannot change the result in this configuration."""
    from lipoframe.algorithms.nms import containment_distance
    from lipoframe.builtin.nms import SizeAwareParams

    notes = []
    given = {o.lstrip("+").split("=", 1)[0] for o in overrides}
    nms = cfg.nms
    if "nms.beta" in given and isinstance(nms, SizeAwareParams) and nms.max_containment < 1:
        reach = containment_distance(nms.max_containment)
        beta, default, within = nms.beta, SizeAwareParams.beta, f"nms.max_containment={nms.max_containment:g}"
        why = (f"circles whose centres are closer than {reach:.2f} radii overlap by more than {nms.max_containment:g} "
               "of the smaller and are suppressed anyway (tune nms.max_containment, or set it to 1 for the plain beta rule)")
        if beta < reach and beta == default:  # in a sweep (nms.beta=0.6,0.8), the job that is not a change at all
            notes.append(f"nms.beta={beta:g} is the default; while {within}, any nms.beta below {reach:.2f} gives the "
                         f"same picks as it: {why}")
        elif beta < reach and default < reach:
            notes.append(f"nms.beta={beta:g} changes nothing while {within}: any nms.beta below {reach:.2f} gives the "
                         f"picks of the default {default:g}, as {why}")
        elif beta < reach:  # the default suppresses by beta beyond the containment test: not the same picks
            notes.append(f"nms.beta={beta:g} gives the same picks as any nms.beta below {reach:.2f} while {within} "
                         f"(the default {default:g} also suppresses centres {reach:.2f} to {default:g} radii apart): {why}")
    return notes


def check_override_syntax(overrides: list[str]) -> None:
    """Parse ``overrides`` with Hydra's grammar, as a sweep is parsed before its jobs run.

    Raises
    ------
    ConfigError
        One line naming the key of the first word that cannot be parsed.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        OverridesParser.create().parse_overrides([o for o in overrides if not o.lstrip("+~").startswith("hydra")])
    except Exception as exc:  # noqa: BLE001 - Hydra raises several types; all become one line
        raise ConfigError(format_config_error(exc)) from exc


def sweep_jobs(overrides: list[str], *, limit: int = 256) -> list[list[str]] | None:
    """The override list of every job of a multirun sweep (cartesian product).

    ``glob()`` is expanded over the options of lipoframe's config groups
    (``detector=glob(*og)``), as Hydra expands it. A key given twice keeps
    its first place and its last value, as Hydra's basic sweeper combines a
    preset's ``hydra.sweeper.params`` (given first) with the command line.
    Returns None when the sweep cannot be expanded here (e.g. interval
    sweeps, a ``glob()`` over a group of your own presets, or more than
    ``limit`` jobs); Hydra then reports errors per job.

    The jobs and their order are those of Hydra's basic sweeper; the words
    are not quite. This runs before Hydra, to check each job's config and
    name a bad job in the words as typed, so a word that is not swept is
    kept as written. Hydra's own expansion
    (:meth:`BasicSweeper.split_arguments`, which
    :func:`lipoframe.sweepdir.last_sweep_jobs` uses to tell a finished
    sweep's jobs apart) writes such a word again from its parsed value
    (``nms.beta=.6`` as ``nms.beta=0.6``, ``dmin=1e3`` as ``dmin=1000.0``,
    ``~key`` as ``~key=null``), and would put those words in the error
    lines instead. Here also the ``hydra`` words are left out, ``glob()`` is
    expanded over lipoframe's own groups (a finished sweep's ``-cd`` folders
    are not known there) and ``limit`` is small (each job is composed), so
    the two expansions are kept apart.
    """
    import itertools

    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        with initialize_config_dir(version_base="1.3", config_dir=str(config_dir()), job_name="lipoframe"):
            parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
            parsed = parser.parse_overrides([o for o in overrides if not o.lstrip("+~").startswith("hydra")])
            by_key: dict[str, list[str]] = {}
            for o in parsed:
                if o.is_sweep_override():
                    by_key[o.get_key_element()] = [f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()]
                else:
                    by_key[o.get_key_element()] = [o.input_line]
            axes = list(by_key.values())
    except Exception:  # noqa: BLE001 - Hydra reports its own parse errors when it runs
        return None
    if not all(axes):  # a glob() that matches none of lipoframe's options: Hydra knows more groups (-cd)
        return None
    n = 1
    for a in axes:
        n *= len(a)
    if n > limit:
        return None
    return [list(job) for job in itertools.product(*axes)]


#: Hydra's built-in sweeper, the one whose ``hydra.sweeper.params`` lipoframe expands to check every job.
_BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


def preset_sweep_params(overrides: list[str], *, config_dirs: Sequence[str] = ()) -> list[str]:
    """The ``key=values`` words of the ``hydra.sweeper.params`` the presets in ``overrides`` set.

    Hydra's basic sweeper puts them before the command line's words (which
    win for the same key); other sweepers (``hydra/sweeper=...``) read their
    params their own way, so none are returned for them, nor when the
    config cannot be composed (:func:`validate_overrides` then says why).

    Parameters
    ----------
    overrides : list of str
        The command line's ``key=value`` words.
    config_dirs : sequence of str, optional
        Folders of the user's own presets (``-cd DIR``).

    Returns
    -------
    list of str
        e.g. ``["nms.beta=0.6,0.8"]``.
    """
    return _sweeper_params(hydra_settings(overrides, config_dirs=config_dirs))


def _sweeper_params(hydra_cfg) -> list[str]:
    """:func:`preset_sweep_params` of the ``hydra`` node :func:`hydra_settings` composed (None: none)."""
    if hydra_cfg is None or hydra_cfg.sweeper.get("_target_") != _BASIC_SWEEPER:
        return []
    return [f"{k}={v}" for k, v in (hydra_cfg.sweeper.get("params") or {}).items()]


def hydra_settings(overrides: list[str], *, config_dirs: Sequence[str] = ()):
    """Hydra's own settings (``hydra.mode``, ``hydra.sweeper``) as the command line and its presets make them.

    Composed as Hydra does to choose between a run and a multirun: the
    sweep words (``key=a,b``) are allowed and not expanded. None when the
    config cannot be composed (:func:`validate_overrides` then says why).
    """
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    plain = [o for o in overrides if not o.lstrip("+~").startswith("hydra") or _is_mode_word(o)]
    dirs = [d for d in config_dirs if Path(d).is_dir()]
    if dirs:
        plain.append("hydra.searchpath=[" + ",".join(f"'file://{Path(d).resolve()}'" for d in dirs) + "]")
    prepare_hydra()
    try:
        with initialize_config_dir(version_base="1.3", config_dir=str(config_dir()), job_name="lipoframe"):
            return GlobalHydra.instance().hydra.compose_config(
                "config", overrides=plain, run_mode=RunMode.MULTIRUN, validate_sweep_overrides=False).hydra
    except Exception:  # noqa: BLE001 - composing again later reports the error in one line
        return None


def check_sweeper_params_override(overrides: list[str]) -> None:
    """Refuse ``hydra.sweeper.params`` set on the command line; it is swept with ``key=a,b`` words.

    Hydra cannot merge it into lipoframe's config (its default is null): a
    traceback, a parse error for unquoted commas, or "Sweeping over Hydra's
    configuration is not supported"; nor delete it (``~``).
    ``hydra.sweeper.params=null`` (drops a preset's sweep) is left alone.

    Raises
    ------
    ConfigError
        One line saying how to sweep instead.
    """
    for o in overrides:
        key, _, value = o.partition("=")
        key = key.lstrip("+~")
        if key != "hydra.sweeper.params" and not key.startswith("hydra.sweeper.params."):
            continue
        if key == "hydra.sweeper.params" and not o.startswith("~") and value.strip() in ("null", "{}"):
            continue
        raise ConfigError(
            "hydra.sweeper.params: cannot be set on the command line; sweep with key=values words instead "
            "(lipoframe run -m nms.beta=0.6,0.8 detector=dog,log), or put hydra.sweeper.params in a preset "
            "(hydra.sweeper.params=null drops a preset's sweep; docs/configuration.md, Multirun)")


#: Hydra flags that show the config, help, version or completion instead of running.
_INFO_FLAGS = ("--help", "-h", "--hydra-help", "--version", "--info", "-i", "--cfg", "-c", "--resolve", "--shell-completion", "-sc")
#: Hydra flags followed by a value (``-cd DIR``), and the values ``--info`` may take.
_VALUE_FLAGS = ("--config-dir", "-cd", "--config-path", "-cp", "--config-name", "-cn", "--cfg", "-c", "--package", "-p", "--experimental-rerun")
_INFO_VALUES = ("all", "config", "defaults", "defaults-tree", "plugins", "searchpath")


def _hydra_options() -> dict:
    """Hydra's command-line flags: each of their spellings (``--cfg``, ``-c``) -> its argparse action."""
    from hydra._internal.utils import get_args_parser

    return {name: action for action in get_args_parser()._actions for name in action.option_strings}


def _read_flag(word: str, options: dict) -> list | None:
    """``[(action, value or None), ...]``: the flags of one word as Hydra's argparse reads them; None if it reads none.

    ``--cfg``, ``--cfg=job``, an unambiguous start of a long name (``--inf``),
    ``-c=job``, ``-cjob`` and short flags together (``-mc``, ``-mcjob``).
    None too for a word argparse refuses (unknown, ambiguous, a value given
    to a flag that takes none): it is left for Hydra to report.
    """
    if not word.startswith("-") or word in ("-", "--"):
        return None
    if word in options:
        return [(options[word], None)]
    head, eq, value = word.partition("=")
    if eq and head in options:
        found = [(options[head], value)]
    elif word.startswith("--"):
        starts = [name for name in options if name.startswith(head)]
        found = [(options[starts[0]], value if eq else None)] if len(starts) == 1 else []
    else:
        found = [(options[word[:2]], word[2:])] if word[:2] in options else []
        found += [(options[name], None) for name in options if name.startswith(word)]
    if len(found) != 1:
        return None
    action, value = found[0]
    flags = []
    while action.nargs == 0 and value:
        if word.startswith("--") or "-" + value[0] not in options:
            return None
        flags.append((action, None))  # -mc: -m, then -c
        action, value = options["-" + value[0]], value[1:] or None
    return flags + [(action, value)]


def spelled_out_flags(argv: list[str]) -> list[str]:
    """``argv`` with each of Hydra's flags written out: its long name, then its value (if it takes one) as the next word.

    Hydra's argparse reads a flag in several spellings: ``--cfg=job``,
    ``-c job``, ``-cjob``, ``-c=job``, an unambiguous start of a long name
    (``--inf``), short flags together (``-mc job``). Each becomes the one
    spelling lipoframe looks for (``--cfg job``, ``--multirun``), so that a
    flag that shows the config instead of running (:data:`_INFO_FLAGS`)
    or makes a sweep is seen however it is typed, and a flag and its value
    stay together when the flags are put before the overrides. ``--info``
    without one of its values (:data:`_INFO_VALUES`) next is ``--info all``,
    as Hydra reads it; the next word stays an override. A word Hydra would
    refuse is left as typed for Hydra to report, as is everything after
    ``--``.
    """
    options = _hydra_options()
    out: list[str] = []
    i = 0
    while i < len(argv):
        word = argv[i]
        i += 1
        if word == "--":
            out += argv[i - 1:]
            break
        flags = _read_flag(word, options)
        if flags is None:
            out.append(word)
            continue
        for action, value in flags:
            out.append(next(name for name in action.option_strings if name.startswith("--")))
            if action.nargs == 0:
                continue
            if value is None and i < len(argv) and not argv[i].startswith("-") and (
                    action.nargs != "?" or argv[i] in (action.choices or ())):
                value = argv[i]
                i += 1
            if value is None and action.nargs == "?":
                value = action.const
            if value is not None:
                out.append(value)
    return out


def split_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    """Split ``lipoframe run`` arguments into Hydra flags (with their values) and overrides."""
    flags: list[str] = []
    overrides: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a.startswith("-"):
            flags.append(a)
            takes_value = a in _VALUE_FLAGS or (a in ("--info", "-i") and i + 1 < len(argv) and argv[i + 1] in _INFO_VALUES)
            if takes_value and i + 1 < len(argv):
                flags.append(argv[i + 1])
                i += 1
        else:
            overrides.append(a)
        i += 1
    return flags, overrides


def _flag_values(flags: list[str], names: tuple[str, ...]) -> list[str]:
    """The values given to the flags ``names`` in ``flags`` (``-cd DIR`` or ``--config-dir=DIR``)."""
    values = []
    for i, f in enumerate(flags):
        name, eq, value = f.partition("=")
        if name in names:
            if eq:
                values.append(value)
            elif i + 1 < len(flags):
                values.append(flags[i + 1])
    return values


_INPUT_KEYS = ("input", "+input", "++input")
_PATH_KEYS = (*_INPUT_KEYS, "output", "+output", "++output")


def expand_output_home(override: str, *, sweep: bool = False) -> str:
    """``output=~/picks`` with the home folder written out, as ``input=`` reads ``~``.

    Hydra takes ``~`` literally and makes a folder named ``~`` in the current
    one; the shell expands it after ``=`` only in bash, and not in quotes.
    A value in quotes keeps them. With ``sweep`` (a multirun), each value of
    ``output=~/a,~/b`` or ``output=choice(~/a,~/b)`` is written out (bash
    writes out only the first), so that :func:`check_output_not_swept` can
    name the folders. Anything else is returned unchanged.
    """
    key, sep, value = override.partition("=")
    if not sep or key.lstrip("+") != "output":
        return override
    quote = value[0] if len(value) > 1 and value[0] in "'\"" and value[-1] == value[0] else ""
    inner = value[len(quote):len(value) - len(quote)]
    if sweep and not (quote and quote not in inner):
        head, body, tail = ("choice(", value[7:-1], ")") if value.startswith("choice(") and value.endswith(")") else ("", value, "")
        parts = [_SWEPT_HOME.sub(lambda m: m[1] + os.path.expanduser(m[2]), part) for part in body.split(",")]
        return f"{key}={head}{','.join(parts)}{tail}"
    if not inner.startswith("~"):
        return override
    return f"{key}={quote}{os.path.expanduser(inner)}{quote}"


#: One value of a sweep that starts with ``~`` (after blanks and a quote).
_SWEPT_HOME = re.compile(r"^(\s*['\"]?)(~[^'\"]*)")


def check_output_not_swept(overrides: list[str], *, multirun: bool = True) -> None:
    """Refuse a sweep of ``output``: a sweep writes into one folder (Hydra's ``hydra.sweep.dir``), each job
    into a folder below it, and Hydra cannot sweep its own settings.

    Not ``multirun`` (a plain run), ``output=a,b``, ``choice(a,b)``,
    ``range(3)``... is refused too: a run writes into one folder, and Hydra
    would make one named like the sweep (or say only that it cannot
    sweep its own settings). A folder whose name has a comma is given
    quoted for Hydra (``output="'a,b'"``), or is one that exists
    (:func:`quote_input_glob` quotes it).

    Raises
    ------
    ConfigError
        One line naming the folders and what to do instead.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ChoiceSweep

    for o in overrides:
        if o.partition("=")[0].lstrip("+") != "output":
            continue
        typed = o.partition("=")[2]
        o = expand_output_home(o, sweep=True)  # each folder's ~ written out, to name them (as -m's words are)
        try:
            parsed = OverridesParser.create().parse_override(o)
        except Exception:  # noqa: BLE001 - a word Hydra cannot read is reported where it is parsed
            continue
        if not parsed.is_sweep_override():
            continue
        try:
            folders = ", ".join(str(v) for v in parsed.sweep_iterator())  # as named: not escaped for Hydra (run\ 1)
        except Exception:  # noqa: BLE001 - glob() and intervals list their values only in Hydra's sweeper
            folders = o.partition("=")[2]
        if multirun:
            raise ConfigError(f"output: a sweep writes into one folder, its jobs into <output>/0, <output>/1, ...: give one "
                              f"output folder, not several ({folders}), or run once per output folder")
        listed = isinstance(parsed.value(), ChoiceSweep) and not re.match(r"\s*\w+\(", typed)  # a,b (not choice(), sort())
        named = f"; a folder whose name has a comma: quote it for Hydra, \"output='{typed}'\"" if listed and "'" not in typed else ""
        which = f" of the folders {folders}" if folders != o.partition("=")[2] else ""
        raise ConfigError(f"output: {typed} is a sweep{which}, and a run writes into one folder: give one output folder "
                          f"(a sweep, -m, too: its jobs go into <output>/0, <output>/1, ...){named}")


def _hydra_parses(override: str) -> bool:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        OverridesParser.create().parse_override(override)
    except Exception:  # noqa: BLE001 - Hydra raises several types for a value it cannot read
        return False
    return True


def _names_files(value: str, *, glob_too: bool) -> bool:
    """Whether ``value`` is a file or folder that exists or, with ``glob_too``, a pattern that matches one."""
    path = os.path.expanduser(value)
    return os.path.exists(path) or (glob_too and glob.has_magic(path) and bool(glob.glob(path, recursive=True)))


def quote_input_glob(override: str) -> str:
    """``input=/data/mic_[0-9].mrc`` as Hydra can parse it: ``input='/data/mic_[0-9].mrc'``.

    A glob's character class would be parsed as a list; a single path with
    ``[`` after its start (no list, sweep or quotes of its own) is quoted.
    So is an input or output path that Hydra's grammar cannot read unquoted
    (letters beyond ASCII, ``( ) { } = # & ! ; ~ ^ '``): in double quotes
    when it holds a single quote. A path with a comma is quoted when that
    file or folder exists (an input glob: when it matches one, such as
    ``grid1,2/*.mrc``); otherwise the comma separates a sweep's values
    (:func:`check_output_not_swept` refuses them for ``output``), or Hydra
    asks for a list. Anything else is returned unchanged.
    """
    key, sep, value = override.partition("=")
    if not sep or key not in _PATH_KEYS or value[:1] in ("[", "'", '"'):
        return override
    comma = "," in value
    if comma and not _names_files(value, glob_too=key in _INPUT_KEYS):
        return override
    quote = "'" if "'" not in value else '"' if '"' not in value else None
    if quote and (comma or (key in _INPUT_KEYS and "[" in value[1:]) or not _hydra_parses(override)):
        return f"{key}={quote}{value}{quote}"
    return override


def run(argv: list[str]) -> int:
    """Run ``lipoframe run ARGS`` through Hydra; returns the exit code."""
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    from lipoframe.cli import outputs_complete
    from lipoframe.logs import logged_errors, restored_logging
    from lipoframe.records import InputError
    from lipoframe.runner import format_summary, run_pipeline

    pm, registry = prepare_hydra()
    argv = spelled_out_flags(argv)  # --cfg=job, -cjob, -mc job: each flag in the one spelling looked for below
    multirun = any(a in ("-m", "--multirun") for a in argv)
    checked = None  # (words, config, mode) of a plain run checked while telling it from a sweep
    sweep_mode = None  # (hydra.mode,) of a sweep, as composed to read its preset's hydra.sweeper.params
    if not multirun:
        # hydra.mode=MULTIRUN (on the command line or in a preset) makes Hydra sweep as -m does:
        # the checks below must treat it as a sweep too.
        flags, overrides = split_argv(argv)
        if not any(f.split("=", 1)[0] in ("--config-path", "-cp", "--config-name", "-cn") for f in flags):
            words = [quote_input_glob(expand_output_home(o)) for o in overrides]
            dirs = _flag_values(flags, ("--config-dir", "-cd"))
            try:
                # The check of a plain run's config, made here, tells it from a sweep too: one compose less.
                # A config that cannot be checked so (sweep words, an error) is told apart as Hydra does it.
                checked = None if any(f in _INFO_FLAGS for f in flags) else (words, *_validated(words, config_dirs=dirs, mode_words=True))
            except ConfigError:
                checked = None
            if checked is not None:
                mode = checked[2]
            else:
                # output=~/a,~/b: Hydra reads no ~ unquoted, and every folder of a sweep's is written out
                settings = hydra_settings([expand_output_home(w, sweep=True) for w in words], config_dirs=dirs)
                mode = settings.get("mode") if settings is not None else None
            multirun = mode == RunMode.MULTIRUN
    argv = [expand_output_home(a, sweep=multirun) for a in argv]
    argv = [quote_input_glob(a) for a in argv]
    flags, overrides = split_argv(argv)
    if "--hydra-help" in flags and "--help" not in flags and overrides:
        # Hydra's own help composes no primary config, so lipoframe's keys (input=, output=) cannot be
        # applied there: Hydra stopped with a traceback. The help shows none of them; it is shown without.
        print("lipoframe: note: --hydra-help shows Hydra's own help, which takes no overrides: "
              f"{' '.join(overrides)} left out (lipoframe run --help shows lipoframe's options)", file=sys.stderr)
        overrides = []
    # Hydra's argparse takes the overrides in one block after the flags: `... output=x --cfg job`
    # (and the hydra.run.dir added below) would be refused as unrecognized arguments.
    argv = flags + overrides
    shown = [f for f in flags if f in ("--cfg", "-c", "--info", "-i", "--shell-completion", "-sc")]
    if multirun and shown:
        # Hydra refuses the combination with a traceback; say it in one line.
        print(f"lipoframe: {shown[0]} shows one job's config and cannot be combined with -m/--multirun (or hydra.mode=MULTIRUN); "
              "run it without -m, once per combination you want to see", file=sys.stderr)
        return 2
    info_only = any(f in _INFO_FLAGS for f in flags)
    # With a primary config of the user's, Hydra composes (and reports) itself; a folder of
    # presets (-cd DIR) is searched after lipoframe's own config tree, here as in the run.
    own_config = any(f.split("=", 1)[0] in ("--config-path", "-cp", "--config-name", "-cn") for f in flags)
    config_dirs = _flag_values(flags, ("--config-dir", "-cd"))
    try:
        check_sweeper_params_override(overrides)
        check_output_not_swept(overrides, multirun=multirun)
    except ConfigError as exc:
        print(f"lipoframe: config error: {exc}", file=sys.stderr)
        return 2
    if not info_only and not own_config:
        # Every job's config is checked before the first one starts.
        if multirun:
            try:
                check_override_syntax(overrides)  # a word sweep_jobs cannot expand would reach Hydra unchecked
            except ConfigError as exc:
                print(f"lipoframe: config error: {exc}", file=sys.stderr)
                return 2
        # A preset's hydra.sweeper.params are part of the sweep: their jobs are checked too. Composed as Hydra's
        # get_mode composes a sweep's config, it holds its hydra.mode too: Hydra is told it (_mode_told_to_hydra).
        settings = hydra_settings(overrides, config_dirs=config_dirs) if multirun else None
        if settings is not None:
            sweep_mode = (settings.get("mode"),)
        params = _sweeper_params(settings)
        try:
            check_output_not_swept(params)
        except ConfigError as exc:
            print(f"lipoframe: config error: {exc}; it is swept by hydra.sweeper.params in a preset", file=sys.stderr)
            return 2
        jobs = sweep_jobs(params + overrides) if multirun else [overrides]
        notes: list[str] = []
        resolved_output = None
        for job in jobs or []:
            try:
                if checked is not None and not multirun and job == checked[0]:
                    job_cfg = checked[1]
                else:
                    job_cfg = validate_overrides(job, config_dirs=config_dirs)
            except ConfigError as exc:
                where = f" (job {' '.join(job)})" if multirun else ""
                bad = re.split(r"[:=\s]", str(exc), maxsplit=1)[0]
                if any(override_key(p) == bad for p in params):
                    where += "; it is swept by hydra.sweeper.params in a preset"
                print(f"lipoframe: config error: {exc}{where}", file=sys.stderr)
                return 2
            notes += [n for n in override_notes(job_cfg, job) if n not in notes]
            resolved_output = resolved_output or job_cfg.output
        for note in notes:
            print(f"lipoframe: note: {note}", file=sys.stderr)
    output = next((o.split("=", 1)[1] for o in overrides if o.startswith("output=")), None)
    if output and not any(o.startswith(("hydra.run.dir=", "hydra.sweep.dir=")) for o in overrides):
        # The folder as Hydra will make it: quotes removed, ${...} resolved.
        folder = Path(resolved_output) if (not info_only and not own_config and resolved_output) else None
        if folder is not None and not multirun:
            # Nothing to pick (every input failed before a micrograph was read): only the input errors, and
            # nothing made or written: no output folder, no .hydra/ record over an earlier run's.
            from lipoframe.runner import nothing_to_pick_messages

            try:
                refused = nothing_to_pick_messages(job_cfg, folder, registry)
            except ConfigError as exc:
                print(f"lipoframe: config error: {exc}", file=sys.stderr)
                return 2
            for line in refused:
                print(f"lipoframe: {line}", file=sys.stderr)
            if refused:
                return 1
        try:
            if folder is not None:
                folder.mkdir(parents=True, exist_ok=True)
                probe = folder / f".lipoframe-write-test-{os.getpid()}"
                probe.write_text("")
                probe.unlink()
        except OSError as exc:
            print(f"lipoframe: {folder}: cannot create or write the output folder ({exc.strerror or exc})", file=sys.stderr)
            return 1
        argv = argv + ([f"hydra.sweep.dir={output}"] if multirun else [f"hydra.run.dir={output}"])

    state = {"exit": 0}
    keep_earlier_handlers = None  # set by restored_logging below

    @hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="config")
    def task(cfg) -> float:
        keep_earlier_handlers()  # Hydra's logging config replaced the root logger's handlers (pytest's caplog too)
        try:
            run_cfg = to_run_config(cfg)
        except ConfigError as exc:
            print(f"lipoframe: config error: {exc}", file=sys.stderr)
            state["exit"] = 2
            return float("nan")
        hydra_cfg = HydraConfig.get()
        out_dir = Path(hydra_cfg.runtime.output_dir)
        subdir = hydra_cfg.output_subdir
        if subdir is None or (out_dir / subdir).resolve() != (out_dir / ".hydra").resolve():
            # hydra.output_subdir=null (or another folder): Hydra writes no .hydra/ record, and plan, report,
            # merge and evaluate would read an earlier run's as this one's. Its settings are config.yaml,
            # written as Hydra writes its record, before any work. The stages an earlier run recorded in
            # inputs.json go first, and this run's are recorded after: stopped at any point before the run
            # writes its inputs.json, the folder never holds one run's settings with another's binning policy.
            from lipoframe.io.atomic import write_text
            from lipoframe.merge import drop_hydra_record
            from lipoframe.runner import record_started_stages

            drop_hydra_record(out_dir)
            record_started_stages(out_dir, None)
            write_text(out_dir / "config.yaml", OmegaConf.to_yaml(cfg))
            record_started_stages(out_dir, dict(hydra_cfg.runtime.choices))
        # A sweep's jobs write into one folder: no job reads another's outputs (overlays, masks) as input.
        sweep_dir = Path(hydra_cfg.sweep.dir) if hydra_cfg.mode == RunMode.MULTIRUN else None
        try:
            with logged_errors() as shown:  # on the console as they happened: the summary counts them
                result = run_pipeline(run_cfg, out_dir, registry=registry, pm=pm, exclude=sweep_dir)
        except ConfigError as exc:
            print(f"lipoframe: config error: {exc}", file=sys.stderr)
            state["exit"] = 2
            return float("nan")
        except InputError as exc:
            print(f"lipoframe: {exc}", file=sys.stderr)
            state["exit"] = 1
            return float("nan")
        summary = result.summary()
        if not multirun:  # (a sweep's later jobs are still to come)
            # The outputs are complete: a SIGTERM now (the end of a batch job) must not turn the run into a failure.
            outputs_complete(0 if result.ok else 1)
        try:
            print(format_summary(summary, shown=shown), flush=True)
        except BrokenPipeError:
            # Output piped into `head` or `true` and closed: the run's outputs are written;
            # Hydra would report the print as the job's error. Later prints go nowhere.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        if not result.ok:
            state["exit"] = 1
        return float(summary["picks"]["accepted"])

    old_argv = sys.argv
    sys.argv = ["lipoframe run"] + argv
    try:
        # A plain run's mode is known from the compose that checked its config, a sweep's from the compose that read its
        # preset's sweeper params: Hydra need not compose it once more to find it.
        known = (checked[2],) if checked is not None and not multirun else sweep_mode
        told = _mode_told_to_hydra(known[0]) if known is not None else contextlib.nullcontext()
        # A help lists the config groups: each listing would copy the whole ConfigStore (about half its time).
        listing = _store_shared_by_copies() if {"--help", "--hydra-help"} & set(flags) else contextlib.nullcontext()
        with restored_logging() as keep_earlier_handlers, told, listing:  # Hydra's log handlers end with the run
            task()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
        return code or state["exit"]
    finally:
        sys.argv = old_argv
    if multirun and output:
        # The folder as Hydra made it: `output='/data/sweep (1)'` was quoted for Hydra above.
        sweep_dir = resolved_output or _unquoted(output)
        state["exit"] = max(state["exit"], _sweep_failed(Path(sweep_dir)))
    return state["exit"]


@contextlib.contextmanager
def _mode_told_to_hydra(mode):
    """Hydra's ``get_mode`` answers ``mode`` while this lasts, instead of composing the whole config to find it.

    Before it runs a job, Hydra composes the config once only to read its
    ``hydra.mode`` (a third compose of a run's config, after lipoframe's
    check and before the run's own; about 0.2 CPU s). ``mode`` is what that
    compose gives: :func:`_validated` composes the same words, presets and
    ``-cd`` folders with the words that set the mode, and reads the same
    ``hydra.mode`` (None unless a word or preset sets it; Hydra then runs
    once). For a sweep, ``mode`` is that of :func:`hydra_settings`, which
    composes the sweep's words as ``get_mode`` does (the sweep words left
    out, ``run_mode`` MULTIRUN): None unless a word or preset sets it (Hydra
    then adds ``hydra.mode=MULTIRUN`` for ``-m``, as before). Left alone by a
    Hydra without ``get_mode``.
    """
    from hydra._internal.hydra import Hydra

    found = Hydra.__dict__.get("get_mode")
    if found is None:
        yield
        return
    Hydra.get_mode = lambda self, config_name, overrides: mode
    try:
        yield
    finally:
        Hydra.get_mode = found


@contextlib.contextmanager
def _store_shared_by_copies():
    """While this lasts, a copy of Hydra's structured config source shares the ConfigStore instead of copying it.

    Hydra's help (``--help``, ``--hydra-help``) lists the config groups with
    one ``get_group_options`` call per group and kind (89 for lipoframe's),
    and each deep-copies the config repository, with the structured config
    source's reference to the process's ``ConfigStore``: a copy of every
    stored config each time (20-30 ms), about half of what the help takes.
    The copy is made so that the repository's sources can be set up anew
    without changing the original; the store is not changed by that, and
    Hydra's main branch no longer keeps it on the source (its pull request
    2928; not in the 1.3.x releases lipoframe is pinned to). The class is
    the one Hydra registered for ``structured://`` (its plugin scan loads
    the module again, so the importable class may be another); a Hydra
    without it, or with a ``__deepcopy__`` of its own there, is left alone.
    """
    try:
        from hydra._internal.sources_registry import SourcesRegistry
        from hydra.core.plugins import Plugins

        Plugins.instance()  # registers the config sources
        source = SourcesRegistry.instance().resolve("structured")
    except Exception:  # noqa: BLE001 - another Hydra: nothing to change
        source = None
    if source is None or "__deepcopy__" in vars(source):
        yield
        return
    source.__deepcopy__ = lambda self, memo: copy.copy(self)  # shallow: the ConfigStore is the process's singleton
    try:
        yield
    finally:
        del source.__deepcopy__


def _unquoted(value: str) -> str:
    """``value`` as Hydra reads it (``'a(1)'`` -> ``a(1)``); unchanged if Hydra reads no single text in it."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_override(f"output={value}").value()
    except Exception:  # noqa: BLE001 - Hydra raises several types for a value it cannot read
        return value
    return parsed if isinstance(parsed, str) else value


def _sweep_failed(sweep_dir: Path) -> int:
    """1 if any job of a sweep folder reported a failure in its run_summary.json."""
    import json

    from lipoframe.sweepdir import job_folders

    code = 0
    # the jobs' folders may be deeper than the sweep folder's children (a hydra.sweep.subdir with a '/')
    for summary in (job / "run_summary.json" for job in job_folders(sweep_dir, lambda p: (p / "run_summary.json").is_file())):
        try:
            s = json.loads(summary.read_text())
        except (OSError, ValueError):
            return 1
        if s["micrographs"]["failed"] or s.get("errors"):
            code = 1
    return code


if os.environ.get("LIPOFRAME_TRACE_PLUGINS"):  # pragma: no cover - debugging aid
    logging.basicConfig(level=logging.DEBUG)
