"""Top-level configuration schema and the location of the Hydra config tree.

The schema is a dataclass stored in Hydra's ConfigStore as ``lipoframe_schema``
and extended by ``conf/config.yaml``. Each stage group (``detector``, ``nms``,
...) is filled with the ``Params`` dataclass of the chosen stage, so a wrong
type or an unknown key fails when Hydra composes the config, and value ranges
are checked by ``__post_init__`` when :func:`to_run_config` turns it into
objects, before any micrograph is read.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
from dataclasses import dataclass, field, is_dataclass
from importlib import resources
from pathlib import Path
from typing import Any, List, Optional

#: The smallest particle diameter, in pixels, that lipoframe picks.
MIN_DIAMETER_PX = 3.0
UNITS = ("A", "px")
POLARITIES = ("dark", "bright")
#: Default ``retry_suppressed``: the radial refiner's and the diameter_range filter's reasons.
RETRY_SUPPRESSED = ("no_edge", "diameter_range")


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the key."""


@dataclass
class RunnerConfig:
    """How the runner executes.

    workers: worker processes (0 = one per CPU core).
    progress: show a progress bar (done/total, rate, ETA) on stderr when it is a terminal, else a timed line a minute.
    resume: skip micrographs whose outputs from the same settings, the same
        (unchanged) input file and the same lipoframe version are complete;
        false redoes everything.
    verbose: print tracebacks for failed micrographs.
    report: write report.html and overlays at the end.
    polarity_check: after picking, pick the first micrograph again in both
        polarities and end with a note when the particles look far clearer
        with the other one (about the time of picking one micrograph).
    """

    workers: int = 0
    progress: bool = True
    resume: bool = True
    verbose: bool = False
    report: bool = True
    polarity_check: bool = True

    def __post_init__(self) -> None:
        if self.workers < 0:
            raise ConfigError(f"runner.workers must be >= 0 (0 = all cores), got {self.workers}")


@dataclass
class ShardConfig:
    """Process only every ``count``-th input, starting at ``index``."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ConfigError(f"shard.count must be >= 1, got {self.count}")
        if not 0 <= self.index < self.count:
            raise ConfigError(f"shard.index must be in [0, shard.count), got {self.index} with count {self.count}")


@dataclass
class StreamConfig:
    """Streaming settings, used with ``watch=true``.

    poll_seconds: how often the input folders are scanned for new files.
    stable_polls: a new file is picked once its size and modification time
        have not changed for this many scans (so half-copied files are never read).
    update_every: rewrite the dataset-level outputs (size statistics, plan,
        writers) after every this many newly picked micrographs.
    stop_file: stop once this file exists, after picking every file already
        there (relative paths are inside the output folder).
    idle_timeout: also stop after this many seconds without a new file (0 = never).
    stop_after_settings_errors: stop, with an error, once this many micrographs
        have failed on the settings with the same problem (a diameter in Å and
        no pixel size in the headers) before any was picked: nothing can be
        picked until the settings change (0 = keep watching).
    """

    poll_seconds: float = 5.0
    stable_polls: int = 2
    update_every: int = 20
    stop_file: str = "STOP"
    idle_timeout: float = 0.0
    stop_after_settings_errors: int = 3

    def __post_init__(self) -> None:
        from lipoframe.stages import check_finite

        try:
            check_finite(self, "stream")  # idle_timeout=inf is 0 (never)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if not self.poll_seconds > 0:
            raise ConfigError(f"stream.poll_seconds must be > 0, got {self.poll_seconds}")
        if self.stable_polls < 1:
            raise ConfigError(f"stream.stable_polls must be >= 1, got {self.stable_polls}")
        if self.update_every < 1:
            raise ConfigError(f"stream.update_every must be >= 1, got {self.update_every}")
        if not self.stop_file:
            raise ConfigError("stream.stop_file must not be empty")
        if self.idle_timeout < 0:
            raise ConfigError(f"stream.idle_timeout must be >= 0 (0 = never), got {self.idle_timeout}")
        if self.stop_after_settings_errors < 0:
            raise ConfigError(f"stream.stop_after_settings_errors must be >= 0 (0 = never), got {self.stop_after_settings_errors}")


@dataclass
class LipoframeConfig:
    """Everything ``lipoframe run`` needs.

    input: file, folder or glob, or a list of them; empty runs the built-in demo.
    output: output folder (default: Hydra's run folder).
    pixel_size: Å/px; default is the value in each file's header.
    dmin, dmax: particle diameter range, in ``units``.
    units: ``A`` (Ångström) or ``px`` (pixels).
    polarity: ``dark`` particles on a light background, or ``bright``.
    export_rejected: writers also export rejected picks (flagged).
    retry_suppressed: reject reasons after which the detections NMS suppressed
        at that place get their turn (NMS chooses by the detector's response;
        when refinement then finds no edge, or a diameter outside the range,
        the suppressed detections are the other explanations of the place).
        Empty turns it off.
    peel: after picking, detect again on the micrograph with the accepted
        particles replaced by background, for faint particles that their
        neighbours hid (2D micrographs; see ``lipoframe.algorithms.peel``).
        Off by default: it about doubles the time per micrograph.
    watch: keep running and pick new micrographs as they appear (see ``stream``).
    flip_y: whether the exports (every writer but csv) count a micrograph's
        rows from the bottom, ``ny - 1 - y``: null flips TIFF inputs, as
        RELION, IMOD, EMAN2 and crYOLO read them; true flips every micrograph,
        false none (particles extracted from unflipped originals, e.g. the
        MRCs of TIFFs written by ``topaz denoise``). It does not change the
        picks: a run continued with another value re-exports every micrograph.
    """

    input: Any = None
    output: Optional[str] = None
    pixel_size: Optional[float] = None
    dmin: float = 150.0
    dmax: float = 500.0
    units: str = "A"
    polarity: str = "dark"
    export_rejected: bool = False
    retry_suppressed: List[str] = field(default_factory=lambda: list(RETRY_SUPPRESSED))
    peel: bool = False
    seed: int = 0
    runner: RunnerConfig = field(default_factory=RunnerConfig)
    shard: ShardConfig = field(default_factory=ShardConfig)
    watch: bool = False
    flip_y: Optional[bool] = None
    stream: StreamConfig = field(default_factory=StreamConfig)
    reader: Any = None
    detector: Any = None
    nms: Any = None
    refiner: Any = None
    filter: Any = field(default_factory=dict)
    binning: Any = None
    writer: Any = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.units not in UNITS:
            raise ConfigError(f"units must be one of {UNITS}, got {self.units!r}")
        if self.polarity not in POLARITIES:
            raise ConfigError(f"polarity must be one of {POLARITIES}, got {self.polarity!r}")
        if not self.dmin > 0:
            raise ConfigError(f"dmin must be > 0, got {self.dmin}")
        if not self.dmax > self.dmin:
            raise ConfigError(f"dmin must be < dmax, got dmin={self.dmin} and dmax={self.dmax}")
        if self.pixel_size is not None and not 0 < self.pixel_size < float("inf"):
            raise ConfigError(f"pixel_size must be > 0 and finite (Å/px), got {self.pixel_size}")
        if not self.dmax < float("inf"):
            raise ConfigError(f"dmax must be finite, got {self.dmax}")
        # Known before any micrograph is read when the range is in pixels or the pixel size is given.
        dmin_px = self.dmin if self.units == "px" else None if self.pixel_size is None else self.dmin / self.pixel_size
        if dmin_px is not None and dmin_px < MIN_DIAMETER_PX:
            at = "" if self.units == "px" else f" (dmin={self.dmin:g} Å at pixel_size={self.pixel_size:g} Å/px)"
            raise ConfigError(f"dmin must be at least {MIN_DIAMETER_PX:g} px, got {dmin_px:.3g} px{at}")
        if self.input is None:
            self.input = []  # not given: the built-in demo set
        else:
            given = [self.input] if isinstance(self.input, str) else list(self.input)
            self.input = [str(i) for i in given if str(i).strip()]
            if not self.input:
                # `input=` with nothing after it (an unset shell variable) must not run the demo
                raise ConfigError("input is empty: name a file, folder or glob (leave input out to run the built-in demo)")
        if self.watch and self.shard.count > 1:
            raise ConfigError("watch=true cannot be combined with shard.count > 1 (watch one folder per run instead)")
        self.retry_suppressed = [str(r) for r in (self.retry_suppressed or [])]
        self.filter = dict(self.filter or {})
        self.writer = dict(self.writer or {})
        for kind in ("filter", "writer"):
            for name, params in getattr(self, kind).items():
                if not is_dataclass(params):  # filter.score=3: a value where the stage's options belong
                    raise ConfigError(f"{kind}.{name}: set the options of the {kind} one by one "
                                      f"({kind}.{name}.<option>=value, see `lipoframe stages {kind}`), got {params!r}")

    def per_micrograph_fingerprint(self) -> str:
        """Hash of every setting that changes per-micrograph results (for resume)."""
        return settings_fingerprint(self.per_micrograph_settings())

    def dataset_fingerprint(self) -> str:
        """Hash of every setting that changes the dataset-level outputs (``picks.csv``, the exports,
        the plan, the report): the per-micrograph ones, the binning, the writers, ``export_rejected`` and ``flip_y``.

        Not the inputs, the shard, ``runner.*``, ``watch`` or ``stream.*``: a run
        of the same settings into the folder again (resume, more files, a
        ``watch=true`` session) continues the earlier run's dataset.
        """
        payload = {
            "per_micrograph": self.per_micrograph_settings(),
            **{k: _plain(getattr(self, k)) for k in ("binning", "writer", "export_rejected")},
        }
        if self.flip_y is not None:  # only when given: the default keeps the fingerprint of folders made before it existed
            payload["flip_y"] = self.flip_y
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def per_micrograph_settings(self) -> dict:
        """The settings :meth:`per_micrograph_fingerprint` hashes, by top-level key, as plain data."""
        payload = {
            k: _plain(getattr(self, k))
            for k in (
                "pixel_size", "dmin", "dmax", "units", "polarity", "seed", "retry_suppressed", "peel",
                "reader", "detector", "nms", "refiner",
            )
        }
        # Filters run in the order selected (the first reason is kept; later ones see only what
        # the earlier ones accepted): their order is part of the result, unlike a dict's keys.
        payload["filter"] = [[str(name), _plain(params)] for name, params in self.filter.items()]
        return payload


def settings_fingerprint(settings: dict) -> str:
    """The fingerprint of per-micrograph ``settings`` (:meth:`LipoframeConfig.per_micrograph_settings`).

    :meth:`LipoframeConfig.per_micrograph_fingerprint` of a configuration
    with these settings; for the settings of another run (resume compares
    a result saved at another pixel size, see
    :func:`lipoframe.runner.reused_at_pixel_size`).
    """
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _plain(o):
    """``o`` (stage parameters: dataclasses, dicts, lists) as plain data for a fingerprint."""
    import dataclasses

    if dataclasses.is_dataclass(o):
        return {"__type__": type(o).__qualname__, **{f.name: _plain(getattr(o, f.name)) for f in dataclasses.fields(o)}}
    if isinstance(o, dict):
        return {str(k): _plain(v) for k, v in sorted(o.items())}
    if isinstance(o, (list, tuple)):
        return [_plain(v) for v in o]
    return o


def config_dir() -> Path:
    """The Hydra config tree: inside the installed package, else the checkout's ``conf/``."""
    env = os.environ.get("LIPOFRAME_CONFIG_DIR")
    if env:
        return Path(env)
    packaged = Path(str(resources.files("lipoframe"))) / "conf"
    if (packaged / "config.yaml").is_file():
        return packaged
    source = Path(__file__).resolve().parent.parent / "conf"
    if (source / "config.yaml").is_file():
        return source
    raise FileNotFoundError(f"lipoframe's config tree was not found in {packaged} or {source}")


def store_schema(cs=None) -> None:
    """Store the top-level schema (``lipoframe_schema``) in Hydra's ConfigStore."""
    if cs is None:
        from hydra.core.config_store import ConfigStore

        cs = ConfigStore.instance()
    cs.store(name="lipoframe_schema", node=LipoframeConfig, provider="lipoframe")


def to_run_config(cfg) -> LipoframeConfig:
    """Turn a composed DictConfig into validated objects.

    Raises
    ------
    ConfigError
        With a one-line message naming the key.
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        obj = OmegaConf.to_object(cfg)
    except ConfigError:
        raise
    except (ValueError, TypeError) as exc:
        raise ConfigError(str(exc).splitlines()[0]) from exc
    except OmegaConfBaseException as exc:
        raise ConfigError(_first_line(exc)) from exc
    if not isinstance(obj, LipoframeConfig):
        raise ConfigError("the composed config does not follow lipoframe_schema")
    _no_extra_keys(cfg, obj, "")
    return obj


def _no_extra_keys(node, obj, prefix: str) -> None:
    """Raise ConfigError for a key of ``node`` that ``obj`` (a dataclass, or a
    dict of them) has no field for: a key added with ``+`` (``+nms.foo=1``)
    that nothing would read."""
    from dataclasses import fields, is_dataclass

    from omegaconf import DictConfig

    if not isinstance(node, DictConfig):
        return
    if is_dataclass(obj):
        known = {f.name for f in fields(obj)}
        for key in node.keys():
            if key not in known and key != "hydra":
                raise ConfigError(f"{prefix}{key}: not an option of lipoframe (added with +?); "
                                  f"see `lipoframe run --help` or docs/configuration.md")
            _no_extra_keys(node[key], getattr(obj, str(key), None), f"{prefix}{key}.")
    elif isinstance(obj, dict):
        for key in node.keys():
            _no_extra_keys(node[key], obj.get(key), f"{prefix}{key}.")


def _first_line(exc: BaseException) -> str:
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, (ValueError, TypeError)) and not isinstance(cause, type(exc)):
        return str(cause).splitlines()[0]
    return str(exc).splitlines()[0]


def override_key(override: str) -> str:
    """The key an override sets: ``binning.n_bins`` of ``binning.n_bins=3``, ``+shard.index=0`` or ``~writer``."""
    return override.split("=", 1)[0].lstrip("+~")


#: Characters Hydra's override grammar takes in a value without quotes, as a path uses them (``/data/run_1/**/*.mrc``;
#: its lexer's letters, digits and ``UNQUOTED_CHAR``, and blanks inside). Any other is quoted (``'`` ``(`` ``,`` ``$``
#: ``\``, letters beyond ASCII...).
_HYDRA_PLAIN = re.compile(r"[A-Za-z0-9_/.*?+\-%@| ]*")


def hydra_quoted(value: str) -> str:
    """``value`` as Hydra's override grammar reads it back: as it is when it can, else in quotes.

    Single quotes, or double quotes for a value with a single quote (and
    none of those); a quote of the kind used, and backslashes before it or
    at the end, are escaped with a backslash, as the grammar's quoted
    strings un-escape them. ``${`` is escaped for OmegaConf, which would
    read an interpolation in it: a backslash before it, and each backslash
    already there doubled (:func:`omegaconf_unescaped` reads it back).
    """
    if _HYDRA_PLAIN.fullmatch(value) and value == value.strip():
        return value
    quote = '"' if "'" in value and '"' not in value else "'"
    # OmegaConf reads \${ as ${, and 2n backslashes before ${ as n before an interpolation: n before ${ are 2n + 1
    value = re.sub(r"(\\*)\$\{", lambda m: m[1] * 2 + "\\${", value)
    body = re.sub(r"(\\*)(" + quote + "|$)", lambda m: m[1] * 2 + ("\\" + m[2] if m[2] else ""), value)
    return quote + body + quote


#: ``${`` after backslashes, as OmegaConf's grammar reads them in a string (:func:`omegaconf_unescaped`).
_ESCAPED_INTERPOLATION = re.compile(r"(\\+)\$\{")


def omegaconf_unescaped(text: str) -> str:
    """``text`` (a string value as OmegaConf stores it, or a YAML file of them) as OmegaConf reads it: its ``${`` escapes undone.

    OmegaConf reads a backslash before ``${`` as the escape of a ``${`` that
    is no interpolation, and two backslashes before it as one: an odd
    number ``2n + 1`` of them is ``n`` backslashes and ``${``; an even
    number ``2n`` is ``n`` backslashes before an interpolation, which is
    left as it is (with the ``n`` backslashes). Other backslashes are kept.
    The inverse of the escaping in :func:`hydra_quoted`: the value a run
    used, shown as it is (the report's configuration, where the run's
    ``config.yaml`` keeps the escapes).
    """
    return _ESCAPED_INTERPOLATION.sub(lambda m: "\\" * (len(m[1]) // 2) + "${", text)


def pasteable_override(key: str, value: str) -> str:
    """``key=value`` as one word to paste into a POSIX shell (bash), which Hydra reads back as ``value``.

    ``value`` is quoted for Hydra when it must be (:func:`hydra_quoted`),
    and the word for the shell when it must be: ``input='/data/run 1/**/*.mrc'``,
    ``"input='/data/grid (2)/**/*.mrc'"``, ``'input="/data/Anna'"'"'s grid/**/*.mrc"'``.
    """
    value = hydra_quoted(value)
    if not value.startswith(("'", '"')):
        return f"{key}={shlex.quote(value)}"
    word = f"{key}={value}"
    # In the shell's double quotes when nothing in it is special there (bash's `!` too, on a terminal).
    return shlex.quote(word) if re.search(r'[$`"\\!]', word) else f'"{word}"'

