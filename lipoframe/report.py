"""The run report: per-micrograph overlays, dataset plots and ``report.html``.

``lipoframe run`` writes the report at the end (``runner.report=true``, the
default); ``lipoframe report <run dir>`` (re)writes it for an existing run.
Everything goes below the run folder::

    report.html                      one self-contained file (images embedded)
    overlays/<mic>_picks.png         each micrograph with its picks as circles
    overlays/thumbs/<mic>.jpg        the gallery thumbnails
    overlays/crops/bin<k>_*.jpg      full-resolution crops of a few picks per bin
    overlays/index.json              what was drawn, so unchanged overlays are reused

Overlays are drawn in worker processes (``runner.workers``) and are reused
when neither the picks, the plan nor the micrograph file changed. Errors in
the report never fail a run: :func:`write_report_safely` logs them.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import html
import json
import logging
import math
import os
import shlex
import signal
import stat
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import numpy as np
import pandas as pd

from lipoframe import schema
from lipoframe.io.atomic import safe_child, write_bytes, write_text
from lipoframe.plan import OUTLIER_REASON, ExtractionPlan, format_range
from lipoframe.records import MicrographMeta, file_stem, file_suffix

log = logging.getLogger("lipoframe")

REPORT_NAME = "report.html"
OVERLAY_DIR = "overlays"
#: Bump when the look of overlays changes, so cached ones are redrawn.
RENDER_VERSION = 6
#: Longest side of an overlay, in pixels.
OVERLAY_SIZE = 1600
#: Longest side of a gallery thumbnail, in pixels (smaller above LARGE_DATASET micrographs,
#: so report.html stays around 20 KB per micrograph).
THUMB_SIZE = 240
THUMB_SIZE_LARGE = 160
LARGE_DATASET = 1000
#: While overlays are drawn, ``overlays/index.json`` is rewritten at most this often (seconds), with the
#: overlays drawn so far: a report killed outright (kill -9, out of memory) leaves them recorded, and the
#: next one redraws only the rest. (Ctrl-C or SIGTERM writes it when it stops.)
INDEX_SAVE_SECONDS = 2.0
#: ... and so that the rewrites take at most this share of the time (0.05 s for the 2 MB of 10000 micrographs).
INDEX_SAVE_SHARE = 0.02
#: Crops shown per size bin.
CROPS_PER_BIN = 8


# ---------------------------------------------------------------------------
# What a run folder holds
# ---------------------------------------------------------------------------
@dataclass
class MicrographRow:
    """One micrograph as the report lists it."""

    name: str
    path: str
    status: str  # ok | failed | not finished (a watch session's file that failed but may still be being written)
    total: int = 0
    accepted: int = 0
    error: str = ""
    overlay: str = ""  # path relative to the run folder, when drawn
    thumb: bytes = b""
    note: str = ""

    @property
    def rejected(self) -> int:
        return self.total - self.accepted

    def sort_key(self) -> tuple:
        """Worst first: failed, not finished, then fewest accepted picks, then most rejected."""
        frac = self.rejected / self.total if self.total else 0.0
        return (self.status == "ok", self.status != "failed", self.accepted, -frac, -self.rejected, self.name)


@dataclass
class RunData:
    """Everything the report shows, read from a run folder or handed over by the runner.

    ``picks`` has every pick (accepted and rejected) with ``size_bin``
    (-1 = rejected or unbinned).
    """

    out_dir: Path
    picks: pd.DataFrame
    metas: dict[str, MicrographMeta]
    plan: ExtractionPlan | None
    summary: dict
    config: dict
    config_text: str
    stage_names: dict[str, Any]
    failures: list[dict] = field(default_factory=list)  # {name, path, error}
    #: As ``failures``: the files of a ``watch=true`` session, at an update while it runs, that failed but may be
    #: copies still being written (``not_finished`` in ``run_summary.json``): not failures yet.
    not_finished: list[dict] = field(default_factory=list)


#: ``<meta name=...>`` of report.html holding :func:`plan_digest` of the plan it shows.
PLAN_META = "lipoframe-plan"


def plan_digest(plan: ExtractionPlan | None) -> str:
    """A digest of what report.html shows of an extraction plan: its bins, boxes, range, notes and diagnostics.

    The same for the plan a run or ``lipoframe plan`` has just made and for
    that plan read back from ``extraction_plan.json``; ``"none"`` without a plan.
    """
    from lipoframe.plan import _json_default

    if plan is None:
        return "none"
    text = json.dumps(plan.to_dict(), sort_keys=True, default=_json_default)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def shown_plan_digest(report: Path) -> str | None:
    """The :func:`plan_digest` a report.html was drawn with, or None (unreadable, or from before it was recorded)."""
    import re

    try:
        with open(report, "rb") as f:
            head = f.read(4096).decode("utf-8", errors="replace")
    except OSError:
        return None
    m = re.search(rf'<meta name="{PLAN_META}" content="([0-9a-z]+)">', head)
    return m.group(1) if m else None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("report: cannot read %s (%s)", path, exc)
        return None


def _config_from_folder(out_dir: Path, *, made_in: str | None = None) -> tuple[dict, str, dict]:
    """Config dict, its YAML text and the selected stage names (from ``.hydra``, else ``inputs.json``) of a run folder.

    Of a folder copied or moved since the run was made, the config says
    where it is now (:func:`_named_here`); ``made_in`` is the folder the
    run's ``run_summary.json`` records (its ``out_dir``), as it was written.
    Its values, and the text shown, are those the run used: the escapes of
    ``${`` that OmegaConf reads in the file (a folder named ``cost ${x}``,
    given quoted for Hydra, is saved as ``cost \\${x}``) are undone
    (:func:`lipoframe.config.omegaconf_unescaped`).
    """
    import yaml

    from lipoframe.config import omegaconf_unescaped

    text, config, choices, runtime = "", {}, {}, {}
    for candidate in (out_dir / ".hydra" / "config.yaml", out_dir / "config.yaml"):
        if candidate.is_file():
            text = candidate.read_text(encoding="utf-8", errors="replace")
            try:
                config = _unescaped_values(yaml.safe_load(text) or {}, omegaconf_unescaped)
            except yaml.YAMLError as exc:
                log.warning("report: cannot parse %s (%s)", candidate, exc)
            text = omegaconf_unescaped(text)
            break
    hydra_yaml = out_dir / ".hydra" / "hydra.yaml"
    if hydra_yaml.is_file():
        try:
            runtime = (yaml.safe_load(hydra_yaml.read_text()) or {}).get("hydra", {}).get("runtime", {}) or {}
            choices = runtime.get("choices", {}) or {}
        except (yaml.YAMLError, AttributeError):
            runtime, choices = {}, {}
    if not choices:  # no Hydra record (hydra.output_subdir=null, a merge): the names the run recorded in inputs.json
        from lipoframe.runner import recorded_stages

        choices = recorded_stages(out_dir)
    names: dict[str, Any] = {k: choices[k] for k in ("reader", "detector", "nms", "refiner", "binning") if choices.get(k)}
    config = config if isinstance(config, dict) else {}
    config, text = _with_plan_config(out_dir, config, text)
    # The run's own folder: Hydra's record of it, else (no .hydra/: a merge, hydra.output_subdir=null) output= or the summary's.
    config, text = _named_here(out_dir, config, text, made_in=[runtime.get("output_dir") if isinstance(runtime, dict) else None,
                                                                made_in, config.get("output")])
    for multi in ("filter", "writer"):
        if isinstance(config.get(multi), dict):
            names[multi] = list(config[multi])
    return config, text, names


def _unescaped_values(value: Any, unescape: Callable[[str], str]) -> Any:
    """``value`` (a config as YAML loads it) with ``unescape`` applied to each string in it, at any depth (a new object)."""
    if isinstance(value, str):
        return unescape(value)
    if isinstance(value, dict):
        return {k: _unescaped_values(v, unescape) for k, v in value.items()}
    if isinstance(value, list):
        return [_unescaped_values(v, unescape) for v in value]
    return value


def _named_here(out_dir: Path, config: dict, text: str, *, made_in: list) -> tuple[dict, str]:
    """``config`` and its YAML ``text``, saying where the run folder is now when it was copied or moved since.

    The folder the run was made in is the first absolute path of
    ``made_in`` (Hydra's ``runtime.output_dir``, ``run_summary.json``'s
    ``out_dir``, or its ``made_in`` once a plan of a copy renamed that, the
    config's ``output``); when it is neither ``out_dir`` nor
    a folder above it (a sweep's, whose job folders are in it), a
    comment line names both, and ``output`` (where it names that folder,
    not a sweep's folder above it) becomes ``out_dir``'s absolute path, as the
    notes of a copied folder name it (:func:`lipoframe.runner.picking_named_here`).
    Unchanged when none is absolute or the folder is where it was made.
    """
    import re

    import yaml

    made = next((Path(p).expanduser() for p in made_in if isinstance(p, str) and os.path.isabs(os.path.expanduser(p))), None)
    if made is None or not text:
        return config, text
    here = out_dir.absolute()
    try:
        if made.resolve() == here.resolve() or made.resolve() in here.resolve().parents:
            return config, text
    except (OSError, RuntimeError):  # a symbolic link loop: not this folder
        pass
    said = f"# this run folder is now {here}; it was made as {made} (copied or moved since)"
    output = config.get("output")
    if isinstance(output, str) and output:
        given = Path(output).expanduser()
        names_it = given == made if given.is_absolute() else made.parts[-len(given.parts):] == given.parts
        line = re.compile(r"^output:.*(?:\n[ \t]+\S.*)*$", re.M)  # the top-level key, with any continuation lines
        if names_it and line.search(text):
            new = yaml.safe_dump({"output": str(here)}, default_flow_style=False, allow_unicode=True, width=1 << 20).rstrip("\n")
            return {**config, "output": str(here)}, line.sub(lambda _: f"{said}\n{new}", text, count=1)
    return config, f"{said}\n{text}"


#: The settings of ``plan_config.yaml`` that replace the run's own in the report's configuration.
_PLAN_KEYS = ("binning", "writer", "export_rejected", "pixel_size", "flip_y")


def _with_plan_config(out_dir: Path, config: dict, text: str) -> tuple[dict, str]:
    """``config`` (and its YAML ``text``) with the settings the folder's last ``lipoframe plan`` used.

    ``lipoframe plan`` records them in ``plan_config.yaml`` (its binning,
    writers, ``export_rejected`` and a ``pixel_size`` or ``flip_y`` it gave), which the
    next ``lipoframe run`` into the folder removes: while it is there, the
    plan files are that plan's, so the report shows its settings, not the
    picking run's. Unchanged without the file (or without a run config).
    """
    import yaml

    from lipoframe.plancmd import PLAN_CONFIG

    path = out_dir / PLAN_CONFIG
    if not text or not path.is_file():
        return config, text
    try:
        recorded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        log.warning("report: cannot read %s (%s)", path, exc)
        return config, text
    if not isinstance(recorded, dict):
        return config, text
    merged = dict(config)
    for k in _PLAN_KEYS:
        if k in recorded:
            merged[k] = recorded[k]
    given = " ".join(str(o) for o in recorded.get("overrides") or []) or "the run's own settings"
    head = (f"# {', '.join(k for k in _PLAN_KEYS if k in recorded)}: those of the last `lipoframe plan` ({given}; "
            f"{PLAN_CONFIG}); the rest as the run picked\n")
    return merged, head + yaml.safe_dump(merged, sort_keys=False, allow_unicode=True, default_flow_style=False)


def _config_from_object(cfg) -> tuple[dict, str]:
    from omegaconf import OmegaConf

    as_dict = dataclasses.asdict(cfg)
    return as_dict, OmegaConf.to_yaml(OmegaConf.create(as_dict))


def _match_exported(work: pd.DataFrame, exported: pd.DataFrame, *, tolerance_px: float = 0.75) -> np.ndarray:
    """Row of ``exported`` (or -1) for each row of ``work``: same micrograph, nearest centre within tolerance."""
    from scipy.spatial import cKDTree

    match = np.full(len(work), -1, dtype=np.int64)
    if not len(work) or not len(exported):
        return match
    codes = {n: i for i, n in enumerate(pd.unique(pd.concat([work[schema.MICROGRAPH], exported[schema.MICROGRAPH]]).astype(str)))}
    span = 1e7  # micrographs far apart on the x axis: one tree for all
    def pts(t):
        off = t[schema.MICROGRAPH].astype(str).map(codes).to_numpy(dtype=float) * span
        return np.column_stack([t[schema.X].to_numpy(dtype=float) + off, t[schema.Y].to_numpy(dtype=float)])
    dist, idx = cKDTree(pts(exported)).query(pts(work), distance_upper_bound=tolerance_px)
    ok = np.isfinite(dist)
    match[ok] = idx[ok]
    return match


def _with_bins(work: pd.DataFrame, exported: pd.DataFrame | None, plan: ExtractionPlan | None) -> pd.DataFrame:
    """Every pick of the per-micrograph tables, with the dataset stage's ``size_bin``/acceptance.

    ``exported`` is ``picks.csv`` (accepted picks, or all when the run
    exported rejected ones). Without it, bins come from the plan.
    """
    out = schema.with_acceptance(work).reset_index(drop=True)
    if exported is not None and schema.SIZE_BIN in exported.columns:
        if len(exported) == len(out) and schema.ACCEPTED in exported.columns:
            return schema.with_acceptance(exported).reset_index(drop=True)
        # One row of picks.csv per pick: the picks accepted per micrograph claim theirs first, so a
        # rejected candidate beside an accepted one (within the tolerance) is not taken for it.
        acc0 = out[schema.ACCEPTED].to_numpy(dtype=bool)
        m = np.full(len(out), -1, dtype=np.int64)
        m[acc0] = _match_exported(out[acc0], exported)
        if (~acc0).any():
            rest = _match_exported(out[~acc0], exported)
            claimed = np.zeros(len(exported), dtype=bool)
            claimed[m[m >= 0]] = True
            found = rest >= 0  # (indexing claimed only there: an empty picks.csv has no row 0)
            taken = np.zeros(len(rest), dtype=bool)
            taken[found] = claimed[rest[found]]
            rest[taken] = -1
            m[~acc0] = rest
        hit = m >= 0
        bins = np.full(len(out), schema.REJECTED_BIN, dtype=np.int64)
        bins[hit] = exported[schema.SIZE_BIN].to_numpy(dtype=np.int64)[m[hit]]
        if schema.ACCEPTED in exported.columns:
            acc = out[schema.ACCEPTED].to_numpy().copy()
            acc[hit] = exported[schema.ACCEPTED].astype(bool).to_numpy()[m[hit]]
            dropped = out[schema.ACCEPTED].to_numpy() & ~hit  # accepted per micrograph, not exported: binning rejected it
            acc[dropped] = False
            reason = out[schema.REASON].to_numpy(dtype=object).copy()
            reason[dropped] = OUTLIER_REASON
            out[schema.ACCEPTED] = acc
            out[schema.REASON] = reason
        out[schema.SIZE_BIN] = bins
        return out
    acc = out[schema.ACCEPTED].to_numpy()
    if plan is not None and plan.bins:
        bins = plan.assign(out[schema.DIAMETER].to_numpy(dtype=float))
        outside = acc & (bins < 0)
        out.loc[outside, schema.ACCEPTED] = False
        out.loc[outside, schema.REASON] = OUTLIER_REASON
        bins[~out[schema.ACCEPTED].to_numpy()] = schema.REJECTED_BIN
    else:
        bins = np.where(acc, 0 if plan is None else schema.REJECTED_BIN, schema.REJECTED_BIN)
    out[schema.SIZE_BIN] = np.asarray(bins, dtype=np.int64)
    return out


def dataset_verdicts(
    work: pd.DataFrame, out_dir: str | os.PathLike, *, infos: dict[str, dict | None] | None = None
) -> tuple[pd.DataFrame, ExtractionPlan | None]:
    """A run's per-micrograph tables with the verdicts of its dataset-level step.

    The dataset filters' rejections (``dataset_rejections.csv``), the
    binning's size outliers (``binning_outlier``) and ``size_bin``, from the
    run's ``picks.csv`` and ``extraction_plan.json`` (also after ``lipoframe
    plan``). A micrograph whose saved result that step did not see (picked
    again, or added, by a run stopped before its own dataset step:
    :func:`~lipoframe.runner.unseen_by_dataset_step`) keeps its own verdicts,
    with bins and size outliers from the plan, as in a run without
    ``picks.csv``. ``infos``: the JSON of the saved results already read
    (:func:`~lipoframe.runner.run_results`).

    Returns
    -------
    picks : DataFrame
        Every row of ``work``, with ``accepted``/``reject_reason`` and ``size_bin``.
    plan : ExtractionPlan or None
    """
    from lipoframe.runner import apply_dataset_rejections, unseen_by_dataset_step

    out_dir = Path(out_dir)
    unseen = unseen_by_dataset_step(out_dir, pd.unique(work[schema.MICROGRAPH].astype(str)), infos) if len(work) else set()
    work = apply_dataset_rejections(work, out_dir, skip=unseen)
    plan_dict = _read_json(out_dir / "extraction_plan.json")
    plan = None
    if plan_dict:
        try:
            plan = ExtractionPlan.from_dict(plan_dict)
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("%s: not an extraction plan (%s)", out_dir / "extraction_plan.json", exc)
    exported = None
    if (out_dir / "picks.csv").is_file():
        try:
            exported = pd.read_csv(out_dir / "picks.csv", keep_default_na=False, na_values=[""],
                                   dtype={schema.MICROGRAPH: str, schema.REASON: str})
        except (OSError, ValueError, pd.errors.ParserError) as exc:
            log.warning("cannot read %s (%s); using the per-micrograph tables", out_dir / "picks.csv", exc)
    if not unseen or exported is None or schema.MICROGRAPH not in exported.columns:
        return _with_bins(work, exported, plan), plan
    new = work[schema.MICROGRAPH].astype(str).isin(unseen).to_numpy()
    parts = [_with_bins(work[~new], exported[~exported[schema.MICROGRAPH].astype(str).isin(unseen)], plan),
             _with_bins(work[new], None, plan)]
    order = np.argsort(np.concatenate([np.flatnonzero(~new), np.flatnonzero(new)]), kind="stable")
    return pd.concat(parts, ignore_index=True).iloc[order].reset_index(drop=True), plan


def _planned_pixel_size(out_dir: Path, plan: ExtractionPlan | None) -> float | None:
    """The ``pixel_size`` the folder's last ``lipoframe plan`` gave every micrograph (None: the saved ones).

    Read from its ``plan_config.yaml`` when the plan in ``extraction_plan.json``
    is at that pixel size (a later ``lipoframe run`` or plain ``lipoframe
    plan`` leaves none or another).
    """
    import yaml

    from lipoframe.plancmd import PLAN_CONFIG

    if plan is None or plan.pixel_size is None:
        return None
    try:
        recorded = (yaml.safe_load((out_dir / PLAN_CONFIG).read_text(encoding="utf-8")) or {}).get("pixel_size")
    except (OSError, yaml.YAMLError, AttributeError):
        return None
    if isinstance(recorded, (int, float)) and not isinstance(recorded, bool) and math.isclose(recorded, plan.pixel_size):
        return float(recorded)
    return None


def load_run(out_dir: str | os.PathLike) -> RunData:
    """Read a finished (or partly finished) run folder.

    Raises
    ------
    FileNotFoundError
        If ``out_dir`` holds neither per-micrograph results nor a run summary.
    """
    from lipoframe.runner import MADE_IN, collect_work, picking_named_here, recorded_failures, run_results, safe_name

    out_dir = Path(out_dir)
    # the saved results of the run's micrographs, with the JSON read to check their settings (read once)
    infos = run_results(out_dir)
    names = list(infos)
    summary = _read_json(out_dir / "run_summary.json") or {}
    # As recorded: the folder the run was made in (made_in, once a plan of a copy renamed out_dir to the copy).
    made_in = (summary.get(MADE_IN) or summary.get("out_dir")) if isinstance(summary, dict) else None
    if isinstance(summary, dict):  # of a copied or moved folder: its notes name this one
        summary = picking_named_here(summary, out_dir)
    if not names and not summary:
        from lipoframe.sweepdir import sweep_folder_hint

        raise FileNotFoundError(f"{out_dir}: not a lipoframe run folder (no micrographs/*.json and no run_summary.json)"
                                + sweep_folder_hint(out_dir))
    work, metas = collect_work(out_dir, names, infos=infos)
    picks, plan = dataset_verdicts(work, out_dir, infos=infos)
    px = _planned_pixel_size(out_dir, plan)
    if px is not None:  # `lipoframe plan pixel_size=` of a run picked in pixels: every micrograph's, as in the plan
        metas = {n: dataclasses.replace(m, pixel_size=px) for n, m in metas.items()}
    config, text, stage_names = _config_from_folder(out_dir, made_in=made_in)
    if plan is not None:  # the policy of the plan shown (another than the run's after `lipoframe plan binning=...`)
        stage_names["binning"] = plan.policy
    failures, not_finished = ([{"name": safe_name(file_stem(path)), "path": path, "error": error} for path, error in listed.items()]
                              for listed in recorded_failures(summary))
    return RunData(out_dir, picks, metas, plan, summary, config, text, stage_names, failures, not_finished)


def run_data_from_result(out_dir: Path, *, cfg, stages, result, metas: dict[str, MicrographMeta]) -> RunData:
    """The report's view of a run that just finished (no re-reading of tables)."""
    config, text, stage_names = _config_from_folder(out_dir)
    if not text:
        config, text = _config_from_object(cfg)
    from lipoframe.runner import stage_names as names_of

    stage_names = names_of(stages)
    picks = result.picks
    if schema.SIZE_BIN not in picks.columns:  # the dataset stage failed
        picks = _with_bins(picks, None, result.plan)
    failures, not_finished = ([{"name": r.name, "path": r.path, "error": r.error} for r in listed]
                              for listed in (result.failed, result.unfinished))
    # The summary finish_run has just written: after `lipoframe plan`, it keeps the picking run's
    # time, workers and counts, where result.summary() would give the plan's few seconds.
    summary = _read_json(out_dir / "run_summary.json")
    if not isinstance(summary, dict):
        summary = result.summary()
    return RunData(out_dir, schema.with_acceptance(picks).reset_index(drop=True), dict(metas), result.plan,
                   summary, config, text, stage_names, failures, not_finished)


# ---------------------------------------------------------------------------
# Overlays (in worker processes)
# ---------------------------------------------------------------------------
@dataclass
class CropRequest:
    key: str  # file name below overlays/crops/
    bin: int
    x: float
    y: float
    diameter: float
    box: int
    color: str
    z: float | None = None  # tomograms: the crop is the slab around the pick's own z


@dataclass
class OverlayJob:
    name: str
    path: str
    x: np.ndarray
    y: np.ndarray
    z: np.ndarray | None
    diameter: np.ndarray
    colors: list[str]
    dashed: np.ndarray
    legend: list[tuple[str, str, bool]]
    title: str
    png: Path
    thumb: Path
    crops: list[CropRequest]
    crop_dir: Path
    thumb_size: int = THUMB_SIZE


@dataclass
class OverlayResult:
    name: str
    ok: bool
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    error: str = ""


class ReaderChoice:
    """Finds the reader of a micrograph file: the run's reader, or by suffix."""

    def __init__(self, reader=None, by_suffix: dict | None = None):
        self.reader = reader
        self.by_suffix = by_suffix or {}

    @classmethod
    def from_stages(cls, stages) -> "ReaderChoice":
        return cls(None if stages.reader.name == "auto" else stages.reader, stages.readers_by_suffix)

    @classmethod
    def from_config(cls, config: dict, reader_name: str | None) -> "ReaderChoice":
        from lipoframe import plugins

        _, registry, _ = plugins.load()
        reader_cfg = config.get("reader") if isinstance(config.get("reader"), dict) else {}
        by_suffix = registry.readers_by_suffix(dims=int(reader_cfg.get("dims", 2) or 2))
        reader = None
        if reader_name and reader_name != "auto":
            try:
                info = registry.get("reader", reader_name)
                known = {k: v for k, v in reader_cfg.items() if k in info.cls.Params.__dataclass_fields__}
                reader = info.cls(info.cls.Params(**known))
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("report: reader %r of the run is not available (%s); choosing readers by suffix", reader_name, exc)
        return cls(reader, by_suffix)

    def read(self, path: Path):
        reader = self.reader or self.by_suffix.get(file_suffix(path))
        if reader is None:
            raise ValueError(f"{path}: no reader for files ending in {file_suffix(path)!r}")
        # What a reader warns about a file (pixel sizes that differ, unsigned
        # bytes, ...) was said when the run read it to pick; not again for its overlay.
        quiet = _ErrorsOnly()
        log.addFilter(quiet)
        try:
            return reader.read(path, pixel_size=None)
        finally:
            log.removeFilter(quiet)


class _ErrorsOnly(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR


_STATE: dict[str, Any] = {}


def _init_worker(readers: ReaderChoice) -> None:
    from lipoframe.runner import exit_with_parent

    # Ctrl-C is handled by the main process, which lets the overlays handed out finish (and records them)
    # before it stops: a worker stopped half-way would leave an overlay's files half rewritten.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):  # held back while the pool started it (_stops_held): Ctrl-C ignored from now on
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
    _STATE["readers"] = readers
    exit_with_parent()  # not left behind by a run killed outright while it draws the report


def _slab(image: np.ndarray, z: float) -> tuple[np.ndarray, int]:
    """The mean of the slices around ``z`` of a volume, and the central slice."""
    from lipoframe import plots

    plane, _, _ = plots.volume_slab(image, z)
    return plane, plots.nearest_plane(z, image.shape[0])


def _display_plane(image: np.ndarray, job: OverlayJob) -> tuple[np.ndarray, np.ndarray, str, np.ndarray]:
    """A 2D view of the image, the mask of the picks to draw on it, a note and the diameters to draw.

    3D: a slab at the picks' median z; each pick that reaches it is drawn
    with its sphere's largest cross-section within the slab
    (:func:`lipoframe.plots.slab_sections`), the others are left out.
    """
    from lipoframe import plots

    keep = np.ones(len(job.x), dtype=bool)
    diameter = np.asarray(job.diameter, dtype=float)
    if image.ndim == 2:
        return image, keep, "", diameter
    nz = image.shape[0]
    plane, first, last = plots.volume_slab(image, np.median(job.z) if job.z is not None and len(job.z) else nz // 2)
    if job.z is not None:
        diameter = plots.slab_sections(job.z, diameter, first, last)
        keep = diameter > 0
    return plane, keep, f"   (slab z={first}-{last}: {int(keep.sum())} of {len(keep)} picks cross it)", diameter


def render_job(job: OverlayJob, readers: ReaderChoice | None = None) -> OverlayResult:
    """Read one micrograph and write its overlay, thumbnail and crops; never raises."""
    from lipoframe import plots

    t0, c0 = time.perf_counter(), time.process_time()
    try:
        readers = readers or _STATE["readers"]
        mic = readers.read(Path(job.path))
        image, keep, note, diameter = _display_plane(mic.image, job)
        disp, factor = plots.display_image(image, max_size=OVERLAY_SIZE)
        title = job.title + (f"   (binned x{factor} for display)" if factor > 1 else
                             f"   (enlarged x{round(1 / factor)} for display)" if factor < 1 else "")
        title += note
        rgb = plots.overlay(
            disp, factor=factor, x=job.x[keep], y=job.y[keep], diameter=diameter[keep],
            colors=[c for c, k in zip(job.colors, keep) if k], dashed=job.dashed[keep], legend=job.legend, title=title,
        )
        write_bytes(job.png, plots.encode(rgb, "png", palette=True))
        write_bytes(job.thumb, plots.encode(rgb, "jpeg", max_size=job.thumb_size, quality=75))
        for c in job.crops:
            # A tomogram's pick is cropped from the slab around its own z, not the overview's.
            plane = _slab(mic.image, c.z)[0] if mic.image.ndim == 3 and c.z is not None else image
            pic = plots.crop_picture(plane, x=c.x, y=c.y, diameter=c.diameter, box=c.box, color=c.color)
            write_bytes(job.crop_dir / c.key, plots.encode(pic, "jpeg", quality=90))
        return OverlayResult(job.name, True, time.perf_counter() - t0, time.process_time() - c0)
    except Exception as exc:  # noqa: BLE001 - one unreadable micrograph must not stop the report
        msg = str(exc)  # a reader's InputError already names the file and the problem
        if not msg.startswith(str(job.path)):
            msg = f"{job.path}: {type(exc).__name__}: {msg}"
        return OverlayResult(job.name, False, time.perf_counter() - t0, time.process_time() - c0, msg)


def _job_key(job: OverlayJob) -> str:
    try:
        st = os.stat(job.path)
        file_id = [st.st_size, st.st_mtime_ns]
    except OSError:
        file_id = None
    h = hashlib.sha256()
    h.update(json.dumps([RENDER_VERSION, OVERLAY_SIZE, job.thumb_size, job.path, file_id, job.title, job.legend, job.colors,
                         [dataclasses.asdict(c) for c in job.crops]], default=str).encode())
    for a in (job.x, job.y, job.diameter, job.dashed, job.z):
        if a is not None:
            h.update(np.ascontiguousarray(np.round(np.asarray(a, dtype=float), 3)).tobytes())
    return h.hexdigest()[:20]


def _job_files(job: OverlayJob) -> list[Path]:
    """The files :func:`render_job` writes for ``job``: the overlay, its thumbnail and its crops."""
    return [job.png, job.thumb, *(job.crop_dir / c.key for c in job.crops)]


def _file_ids(paths: list[Path]) -> list[list[int]] | None:
    """``[size, mtime_ns]`` of each file of ``paths``, or None when one is not a file.

    ``overlays/index.json`` records them once an overlay's files are all
    written; a file rewritten since (by a report stopped before it recorded
    its own) no longer matches, so the overlay is drawn again.
    """
    ids = []
    for path in paths:
        try:
            st = path.stat()
        except OSError:
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        ids.append([st.st_size, st.st_mtime_ns])
    return ids


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    class Bar(tqdm):
        monitor_interval = 0  # no monitor thread: worker processes may be forked

    return Bar(total=total, unit="overlay", desc="report", disable=not enabled or not sys.stderr.isatty(), file=sys.stderr,
               dynamic_ncols=True, leave=False)


def render_overlays(jobs: list[OverlayJob], readers: ReaderChoice, *, workers: int = 1, progress: bool = False,
                    on_result=None) -> list[OverlayResult]:
    """Render ``jobs`` (in a process pool when ``workers > 1``), in job order.

    ``on_result``: called with each :class:`OverlayResult` as soon as it is
    back, in job order (:func:`write_report` records the drawn ones). On
    Ctrl-C or SIGTERM (a :class:`KeyboardInterrupt`) with worker processes,
    the jobs not handed out yet are cancelled, those the workers have are
    finished and passed to ``on_result`` (in job order), and the exception is
    re-raised.
    """
    import matplotlib.backends.backend_agg  # noqa: F401 - imported once here, inherited by forked workers
    import matplotlib.figure  # noqa: F401

    from lipoframe.runner import _start_method

    workers = max(1, min(workers, len(jobs)))
    results: list[OverlayResult] = []
    with _progress(len(jobs), progress) as bar:
        if workers == 1:
            for job in jobs:
                results.append(render_job(job, readers))
                if on_result is not None:
                    on_result(results[-1])
                bar.update(1)
        else:
            import multiprocessing as mp

            ctx = mp.get_context(_start_method())
            with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker, initargs=(readers,)) as ex:
                futures: list = []
                try:
                    # A worker started before it ignores Ctrl-C would die of it (BrokenProcessPool), and a stop
                    # while a job is handed out would lose its future (its overlay drawn, not recorded): held back.
                    with _stops_held():
                        for job in jobs:
                            futures.append(ex.submit(render_job, job))
                    for fut in futures:
                        results.append(fut.result())
                        if on_result is not None:
                            on_result(results[-1])
                        bar.update(1)
                except KeyboardInterrupt:
                    _finish_handed_out(futures[len(results):], on_result)
                    raise
    return results


#: Ctrl-C and SIGTERM (``kill``, the end of a batch job), which stop a report (:func:`_stops_held`).
_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


@contextlib.contextmanager
def _stops_held():
    """Ctrl-C and SIGTERM (:data:`_STOP_SIGNALS`) held back in this thread while it lasts, and in the threads and
    worker processes started meanwhile (the pool's, until :func:`_init_worker` has a worker ignore Ctrl-C);
    here they arrive when this ends.

    While jobs are handed out to a pool: a stop raised inside ``submit``
    lost the job's future (the worker drew its overlay, and the index did
    not record it), and a worker started before it ignores Ctrl-C died of it.
    """
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _finish_handed_out(futures: list, on_result) -> None:
    """After Ctrl-C or SIGTERM: cancel the ``futures`` not started, wait for the others and pass their results to ``on_result``.

    The pool runs the jobs it has handed out (about two per worker) to the
    end in any case; their overlays are whole, so the index records them
    rather than leaving them to be drawn again. After a second Ctrl-C, only
    those passed on before it are recorded.
    """
    for fut in futures:
        fut.cancel()
    handed_out = [fut for fut in futures if not fut.cancelled()]
    if handed_out:
        log.warning("interrupted: finishing the %d overlay(s) in progress", len(handed_out))
    for fut in handed_out:
        if fut.exception() is None and on_result is not None:  # a worker killed: BrokenProcessPool
            on_result(fut.result())


# ---------------------------------------------------------------------------
# Building the report
# ---------------------------------------------------------------------------
def _fmt(v: float, nd: int = 1) -> str:
    return "–" if v is None or not np.isfinite(v) else f"{v:,.{nd}f}"


def _bin_label(b, pixel_size: float | None) -> str:
    """An overlay legend's bin: ``bin 1: 79-97 px (16–19 nm), box 160 px`` (nm to 0.1 below 10 nm)."""
    nm = ""
    if pixel_size:
        lo, hi = b.d_min_px * pixel_size / 10, b.d_max_px * pixel_size / 10
        nm = f" ({format_range(lo, hi, sep='–', spec='.1f' if hi < 9.95 else '.0f')} nm)"
    return f"bin {b.index + 1}: {format_range(b.d_min_px, b.d_max_px, sep='–')} px{nm}, box {b.box_px} px"


def _legend(data: RunData, picks: pd.DataFrame, pixel_size: float | None = None) -> list[tuple[str, str, bool]]:
    """The overlay legend; its nm are at ``pixel_size`` (the micrograph's), else at the plan's."""
    from lipoframe import plots

    px = pixel_size or (data.plan.pixel_size if data.plan else None)
    counts = picks.loc[picks[schema.ACCEPTED], schema.SIZE_BIN].value_counts()
    entries = []
    if data.plan is not None and data.plan.bins:
        for b in data.plan.bins:
            entries.append((f"{_bin_label(b, px)}  [{int(counts.get(b.index, 0))}]", plots.bin_color(b.index), False))
    elif picks[schema.ACCEPTED].any():
        entries.append((f"accepted (no extraction plan)  [{int(picks[schema.ACCEPTED].sum())}]", plots.UNBINNED_COLOR, False))
    n_rej = int((~picks[schema.ACCEPTED]).sum())
    entries.append((f"rejected  [{n_rej}]", plots.REJECTED_COLOR, True))
    return entries


def _colors(picks: pd.DataFrame, has_plan: bool) -> list[str]:
    from lipoframe import plots

    acc = picks[schema.ACCEPTED].to_numpy()
    bins = picks[schema.SIZE_BIN].to_numpy()
    return [plots.bin_color(int(b)) if (a and b >= 0) else (plots.UNBINNED_COLOR if a and not has_plan else plots.REJECTED_COLOR)
            for a, b in zip(acc, bins)]


def choose_crops(picks: pd.DataFrame, metas: dict[str, MicrographMeta], plan: ExtractionPlan | None, *,
                 per_bin: int = CROPS_PER_BIN, seed: int = 0) -> list[tuple[str, CropRequest]]:
    """A few accepted picks per bin (seeded, spread over micrographs), as (micrograph, request)."""
    from lipoframe import plots

    if plan is None or not plan.bins or not len(picks):
        return []
    rng = np.random.default_rng(seed)
    out = []
    for b in plan.bins:
        sel = picks[picks[schema.ACCEPTED] & (picks[schema.SIZE_BIN] == b.index)]
        sel = sel[sel[schema.MICROGRAPH].isin([n for n, m in metas.items() if m.path])]
        if not len(sel):
            continue
        # Prefer picks whose whole box lies inside the micrograph.
        shapes = sel[schema.MICROGRAPH].map(lambda n: metas[n].shape[-2:])
        half = b.box_px / 2
        inside = np.array([half <= x <= s[1] - half and half <= y <= s[0] - half
                           for x, y, s in zip(sel[schema.X], sel[schema.Y], shapes)], dtype=bool)
        pool = sel[inside] if inside.sum() >= min(per_bin, len(sel)) else sel
        take = np.sort(rng.choice(len(pool), size=min(per_bin, len(pool)), replace=False))
        chosen = pool.iloc[take].sort_values(schema.DIAMETER, kind="stable")
        for i, (idx, row) in enumerate(chosen.iterrows()):
            key = f"bin{b.index + 1}_{i:02d}_{row[schema.MICROGRAPH]}.jpg"
            z = float(row[schema.Z]) if schema.Z in row.index and pd.notna(row[schema.Z]) else None
            out.append((row[schema.MICROGRAPH], CropRequest(key, b.index, float(row[schema.X]), float(row[schema.Y]),
                                                            float(row[schema.DIAMETER]), int(b.box_px), plots.bin_color(b.index), z)))
    return out


def _thresholds(config: dict, stage_names: dict) -> list[tuple[str, float]]:
    """Score thresholds of the run: the detector's (when in MAD units = score units) and score filters'.

    The scale-space detectors (``dog``, ``log`` and ``edge``, the default) score a candidate by its
    response in MAD units; with ``threshold_method=mad`` their ``threshold``, and a lower
    ``weak_threshold`` down to which they also report weak candidates, are on the score axis.
    """
    out = []
    det = config.get("detector") if isinstance(config.get("detector"), dict) else {}
    blob = stage_names.get("detector") in (None, "dog", "log", "edge")  # their score is the response in MAD units
    if blob and det.get("threshold_method") == "mad" and det.get("threshold") is not None:
        out.append(("detector.threshold", float(det["threshold"])))
        weak = det.get("weak_threshold")
        if weak is not None and float(weak) < float(det["threshold"]):
            out.append(("detector.weak_threshold", float(weak)))
    for name, params in (config.get("filter") or {}).items():
        if isinstance(params, dict) and params.get("min_score") is not None:
            out.append((f"filter.{name}.min_score", float(params["min_score"])))
    return out


def _b64(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _href(rel: str) -> str:
    """An ``href`` value for a file of the run folder: a relative URL, escaped for HTML.

    Relative, so the report still works when the whole folder is copied or
    moved; URL-quoted, so a name with ``#``, ``%``, ``?`` or a blank stays one
    path (``notes #1.txt`` is not the file ``notes `` and a fragment).
    """
    return html.escape(quote(rel, safe="/"))


CSS = """
:root{--fg:#1d232b;--muted:#5b6570;--line:#dde2e7;--bg:#f6f7f9;--bad:#b3261e;--warn:#8a5a00}
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:var(--fg);margin:0;background:#fff}
header{background:#1d232b;color:#fff;padding:14px 24px}
header h1{margin:0;font-size:20px} header p{margin:2px 0 0;color:#c5ccd4;font-size:13px}
nav{padding:6px 24px;background:var(--bg);border-bottom:1px solid var(--line);font-size:13px}
nav a{margin-right:14px;color:#1d4f91;text-decoration:none}
main{padding:8px 24px 40px;max-width:1500px}
h2{font-size:17px;margin:26px 0 8px;border-bottom:1px solid var(--line);padding-bottom:4px}
.cards{display:flex;flex-wrap:wrap;gap:10px}
.card{background:var(--bg);border:1px solid var(--line);border-radius:6px;padding:8px 12px;min-width:150px}
.card b{display:block;font-size:20px} .card span{color:var(--muted);font-size:12px}
.card.bad b{color:var(--bad)}
table{border-collapse:collapse;font-size:13px;margin:6px 0}
th,td{border:1px solid var(--line);padding:3px 8px;text-align:right} th{background:var(--bg)} td.l,th.l{text-align:left}
.swatch{display:inline-block;width:11px;height:11px;border-radius:50%;border:2px solid;vertical-align:-1px;margin-right:4px}
.plots{display:grid;grid-template-columns:repeat(auto-fill,minmax(560px,1fr));gap:12px}
.plots img{width:100%;height:auto;border:1px solid var(--line)}
.gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(230px,1fr));gap:10px}
.mic{border:1px solid var(--line);border-radius:6px;overflow:hidden;background:var(--bg);font-size:12px}
.mic img{display:block;width:100%;height:auto;background:#000}
.mic div{padding:4px 7px} .mic .n{font-weight:600;word-break:break-all}
.mic.failed{border-color:var(--bad)} .mic.failed .n{color:var(--bad)}
.mic .err{color:var(--bad);white-space:pre-wrap;word-break:break-word}
.crops{display:flex;flex-wrap:wrap;gap:6px;align-items:flex-end;margin-bottom:10px}
.crops figure{margin:0;font-size:11px;color:var(--muted);text-align:center}
.crops img{display:block;width:140px;height:140px;border:1px solid var(--line);image-rendering:auto}
pre{background:var(--bg);border:1px solid var(--line);padding:8px;overflow:auto;font-size:12px;max-height:520px}
.muted{color:var(--muted)} .warn{color:var(--warn)}
details summary{cursor:pointer;color:#1d4f91}
"""


def _table(head: list[str], rows: list[list[str]], left: int = 0) -> str:
    h = "".join(f'<th class="l">{c}</th>' if i < left else f"<th>{c}</th>" for i, c in enumerate(head))
    body = "".join("<tr>" + "".join(f'<td class="l">{c}</td>' if i < left else f"<td>{c}</td>" for i, c in enumerate(r)) + "</tr>"
                   for r in rows)
    return f"<table><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>"


def build_html(data: RunData, rows: list[MicrographRow], plots_png: list[tuple[str, bytes]], crops: list[tuple[CropRequest, bytes, str]],
               *, overlay_stats: dict) -> str:
    """The report page (one string; every image a data: URI)."""
    from lipoframe import __version__, plots
    from lipoframe.runner import MAX_LISTED, PLAN_INTERRUPTED, REPORT_INTERRUPTED, notes_beginning, picking_interrupted

    e = html.escape
    picks = data.picks
    acc = picks[schema.ACCEPTED].to_numpy(dtype=bool) if len(picks) else np.zeros(0, bool)
    px = data.plan.pixel_size if data.plan else None
    n_ok = sum(r.status == "ok" for r in rows)
    n_failed = sum(r.status == "failed" for r in rows)
    n_unfinished = sum(r.status == "not finished" for r in rows)  # a watch session's, while it runs
    per_mic = np.array([r.accepted for r in rows if r.status == "ok"], dtype=float)
    d_acc = picks.loc[acc, schema.DIAMETER].to_numpy(dtype=float) if len(picks) else np.zeros(0)
    q = np.percentile(d_acc, [25, 50, 75]) if d_acc.size else [np.nan] * 3
    nm = (lambda v: f" ({v * px / 10:.1f} nm)") if px else (lambda v: "")

    counts = data.summary.get("micrographs") if isinstance(data.summary.get("micrographs"), dict) else {}
    not_done = int(counts.get("not_done", 0) or 0)  # an interrupted run: micrographs not picked yet
    cards = [
        ("micrographs", f"{n_ok:,}", " · ".join(["picked"] + ([f"{n_failed} failed"] if n_failed else [])
                                                 + ([f"{n_unfinished} not finished yet"] if n_unfinished else [])
                                                 + ([f"{not_done:,} not done"] if not_done else [])),
         n_failed > 0 or n_unfinished > 0 or not_done > 0),
        ("accepted picks", f"{int(acc.sum()):,}", f"of {len(picks):,} ({int((~acc).sum()):,} rejected)", False),
        ("picks / micrograph", _fmt(float(np.median(per_mic)), 0) if per_mic.size else "–",
         f"median · range {int(per_mic.min())}–{int(per_mic.max())}" if per_mic.size else "no micrographs", False),
        ("diameter", f"{q[1]:.0f} px" if d_acc.size else "–", f"median{nm(q[1])} · IQR {q[0]:.0f}–{q[2]:.0f} px" if d_acc.size else "no accepted picks", False),
        ("size bins", str(len(data.plan.bins)) if data.plan else "–", f"policy {data.plan.policy}" if data.plan else "no extraction plan", data.plan is None),
        ("pixel size", f"{px:g} Å" if px else "–", "per pixel" if px else "unknown", False),
    ]
    secs = data.summary.get("seconds")
    if secs is not None and data.summary.get("watch"):
        # A watch=true session's time includes waiting for files: per micrograph it would say nothing of picking.
        cards.append(("session time", f"{secs:,.1f} s", "watching, waiting for files included", False))
    elif secs is not None:
        # Per micrograph picked by this run, as run_summary.json's micrographs_per_s: failed ones and ones a
        # resumed run skipped (picked before) took next to none of its time.
        n_picked = counts.get("ok", n_ok) if data.summary.get("micrographs_per_s") else 0
        cards.append(("run time", f"{secs:,.1f} s", f"{secs / n_picked:.2f} s per micrograph picked" if n_picked
                      else "no micrograph picked by this run", False))
    card_html = "".join(f'<div class="card{" bad" if bad else ""}"><span>{e(t)}</span><b>{e(v)}</b><span>{e(s)}</span></div>'
                        for t, v, s, bad in cards)

    reasons = schema.rejection_reasons(picks).value_counts() if len(picks) else pd.Series(dtype=int)
    reason_html = _table(["reject reason", "picks"], [[e(str(k)), f"{int(v):,}"] for k, v in reasons.items()], left=1) if len(reasons) else ""

    problems = ""
    # Interrupted while the report was drawn: the picks are complete and a note says so. This report is the one
    # the note asks for: it shows neither (settle_report_interruption drops them from run_summary.json once written).
    report_only = bool(notes_beginning(data.summary.get("notes"), REPORT_INTERRUPTED))
    # A `lipoframe plan` stopped in its binning or writers: its note says so and what to run; the run's own flag is kept apart.
    plan_stopped = notes_beginning(data.summary.get("notes"), PLAN_INTERRUPTED)
    from lipoframe.merge import MERGE_UNFINISHED, is_merged_folder, merge_unfinished

    if merge_unfinished(data.out_dir):
        # Stopped or killed before it wrote config.yaml (perhaps without a run_summary.json): no settings, no plan.
        problems += f"<li class='warn'><b>Interrupted</b>: {e(MERGE_UNFINISHED.replace('the lipoframe merge into this folder', 'the merge'))}</li>"
    elif not_done or (picking_interrupted(data.summary) and not report_only):
        # As the console summary says (runner.format_summary): the report of a partly done run.
        # A merge stopped while copying the shards' results: those not copied yet are picked (in their shards).
        merged = is_merged_folder(data.out_dir)
        left = (f"{not_done:,} of {int(counts.get('total', 0) or 0):,} micrographs not {'copied' if merged else 'picked'} yet" if not_done
                else f"the {'merge' if merged else 'run'} did not finish")
        problems += f"<li class='warn'><b>Interrupted</b>: {e(left)}; run the same command again to continue</li>"
    problems += "".join(f"<li class='warn'><b>Interrupted</b> {e(n[len('interrupted '):])}</li>" for n in plan_stopped)
    problems += "".join(f"<li class='warn'>{e(str(x))}</li>" for x in data.summary.get("errors", []))
    notes = [n for n in data.summary.get("notes", []) if not str(n).startswith((REPORT_INTERRUPTED, PLAN_INTERRUPTED))]
    # As many as the console summary lists (runner.format_summary).
    problems += "".join(f"<li>Note: {e(str(x))}</li>" for x in notes[:MAX_LISTED])
    if len(notes) > MAX_LISTED:
        problems += f"<li>... and {len(notes) - MAX_LISTED} more notes (run_summary.json)</li>"
    if problems:
        problems = f"<ul>{problems}</ul>"

    # Extraction plan
    if data.plan is not None:
        counts_all = picks.loc[acc, schema.SIZE_BIN].value_counts() if len(picks) else pd.Series(dtype=int)
        extract = data.plan.extract_pixel_size
        head = ["bin", "diameter (px)"] + (["diameter (nm)"] if px else []) + ["picks", "box (px)"] + (["mask (Å)"] if px else []) \
            + ([f"box at {extract:g} Å/px"] if extract else [])
        prow = []
        for b in data.plan.bins:
            r = [f'<span class="swatch" style="border-color:{plots.bin_color(b.index)}"></span>{b.index + 1}',
                 format_range(b.d_min_px, b.d_max_px, sep="–")]
            if px:
                r.append(format_range(b.d_min_px * px / 10, b.d_max_px * px / 10, sep="–", spec=".1f"))
            r += [f"{int(counts_all.get(b.index, b.count)):,}", f"<b>{b.box_px}</b>"]
            if px:
                r.append(_fmt(b.mask_diameter_A, 0))
            if extract:
                cut = f" (cut {b.extract_size_px})" if b.box_px_extract and b.extract_size_px else ""
                r.append(f"{b.box_px_extract or '–'}{cut}")
            prow.append(r)
        plan_html = _table(head, prow, left=1) if prow else "<p class='warn'>The plan has no bins.</p>"
        extra = []
        if data.plan.accepted_range_px:
            lo, hi = data.plan.accepted_range_px
            extra.append(f"accepted diameters {lo:.0f}–{hi:.0f} px")
        extra += [e(n) for n in data.plan.notes]
        plan_html = (f"<p class='muted'>policy <b>{e(data.plan.policy)}</b>" + (f", {px:g} Å/px" if px else "")
                     + "".join(f" · {x}" for x in extra) + "</p>" + plan_html)
    else:
        plan_html = "<p class='warn'>No extraction plan (extraction_plan.json is missing or the dataset stage failed).</p>"

    plots_html = "".join(f'<figure style="margin:0"><img alt="{e(t)}" src="{_b64(b, "image/png")}"></figure>' for t, b in plots_png)

    crop_html = ""
    if crops:
        by_bin: dict[int, list] = {}
        for c, data_bytes, mic in crops:
            by_bin.setdefault(c.bin, []).append((c, data_bytes, mic))
        parts = []
        for k in sorted(by_bin):
            b = data.plan.bins[k] if data.plan and k < len(data.plan.bins) else None
            label = _bin_label(b, px) if b else f"bin {k + 1}"
            figs = "".join(f'<figure><img alt="crop" src="{_b64(d, "image/jpeg")}">{c.diameter:.0f} px · {e(mic)}</figure>'
                           for c, d, mic in by_bin[k])
            parts.append(f"<h3 style='font-size:14px;margin:10px 0 4px'><span class='swatch' style='border-color:{plots.bin_color(k)}'></span>"
                         f"{e(label)}</h3><div class='crops'>{figs}</div>")
        crop_html = ("<h2 id='crops'>Picks per bin</h2><p class='muted'>A random sample of accepted picks of each bin, cropped at "
                     "full resolution in the bin's extraction box, with the pick's circle.</p>" + "".join(parts))

    # Gallery, worst first
    cards_g = []
    for r in rows:
        if r.status != "ok":  # failed, or not finished yet
            cards_g.append(f'<div class="mic failed"><div class="n">{e(r.name)}</div><div>{e(r.status)}</div><div class="err">{e(r.error)}</div></div>')
            continue
        label = f"{r.accepted} accepted · {r.rejected} rejected"
        img = (f'<a href="{_href(r.overlay)}"><img alt="{e(r.name)}" src="{_b64(r.thumb, "image/jpeg")}"></a>' if r.thumb and r.overlay
               else f'<div class="muted">no overlay{": " + e(r.note) if r.note else ""}</div>' if overlay_stats.get("drawn", True)
               else '<div class="muted">overlay not drawn (--no-overlays)</div>')
        cards_g.append(f'<div class="mic">{img}<div class="n">{e(r.name)}</div><div>{label}</div></div>')
    table_rows = [[e(r.name), r.status, f"{r.accepted}", f"{r.rejected}",
                   f'<a href="{_href(r.overlay)}">overlay</a>' if r.overlay else "", e(r.error or r.note)] for r in rows]
    mic_table = _table(["micrograph", "status", "accepted", "rejected", "", "note"], table_rows, left=2)

    stages = " · ".join(f"{k} <b>{e(', '.join(v) if isinstance(v, list) else str(v))}</b>" for k, v in data.stage_names.items())
    files = sorted(p for p in data.out_dir.iterdir() if p.is_file() and not p.name.startswith(".") and p.name != REPORT_NAME)
    files_html = " · ".join(f'<a href="{_href(p.name)}">{e(p.name)}</a>' for p in files)
    ov = overlay_stats
    timing = (f" in {ov['seconds']:.1f} s with {ov['workers']} worker{'s' if ov['workers'] != 1 else ''} "
              f"({ov['per_overlay']:.2f} s, {ov['cpu_per_overlay']:.2f} CPU s each)") if ov["rendered"] else ""
    ov_line = (f"{ov['rendered']} overlays drawn{timing}, {ov['cached']} unchanged and reused, {ov['failed']} failed"
               if ov.get("drawn", True) else "Overlays were not drawn (lipoframe report --no-overlays); "
               "the same command without it draws them")
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="{PLAN_META}" content="{plan_digest(data.plan)}">
<title>lipoframe report · {e(data.out_dir.name)}</title>
<style>{CSS}</style></head>
<body>
<header><h1>lipoframe report</h1><p>{e(str(data.out_dir))} · lipoframe {e(__version__)} · {when}</p></header>
<nav><a href="#summary">Summary</a><a href="#plots">Plots</a><a href="#plan">Extraction plan</a>{'<a href="#crops">Picks per bin</a>' if crop_html else ''}<a href="#micrographs">Micrographs</a><a href="#config">Configuration</a></nav>
<main>
<h2 id="summary">Summary</h2>
<div class="cards">{card_html}</div>
{problems}
{reason_html}
<p class="muted">{stages}</p>
<h2 id="plots">Plots</h2>
<div class="plots">{plots_html}</div>
<h2 id="plan">Extraction plan</h2>
{plan_html}
{crop_html}
<h2 id="micrographs">Micrographs <span class="muted" style="font-weight:normal;font-size:13px">worst first (failed, fewest accepted picks, most rejected) · click a thumbnail for the full overlay</span></h2>
<div class="gallery">{''.join(cards_g)}</div>
<details><summary>Table of all {len(rows)} micrographs</summary>{mic_table}</details>
<h2 id="config">Configuration</h2>
<pre>{e(data.config_text or '(no configuration file in the run folder)')}</pre>
<p class="muted">Files: {files_html}</p>
<p class="muted">{e(ov_line)}</p>
</main></body></html>
"""


def _dataset_plots(data: RunData, rows: list[MicrographRow]) -> list[tuple[str, bytes]]:
    from lipoframe import plots

    picks = data.picks
    acc = picks[schema.ACCEPTED].to_numpy(dtype=bool)
    d = picks[schema.DIAMETER].to_numpy(dtype=float)
    s = picks[schema.SCORE].to_numpy(dtype=float)
    px = data.plan.pixel_size if data.plan else None
    thresholds = _thresholds(data.config, data.stage_names)
    out = []
    hist_file = data.out_dir / "size_histogram.png"
    if hist_file.is_file():
        out.append(("size histogram", hist_file.read_bytes()))
    else:
        out.append(("size histogram", plots.size_histogram(d, acc, plan=data.plan, pixel_size=px)))
    ok_rows = sorted((r for r in rows if r.status == "ok"), key=lambda r: r.name)
    out.append(("picks per micrograph", plots.picks_per_micrograph([r.name for r in ok_rows], np.array([r.accepted for r in ok_rows]),
                                                                    np.array([r.rejected for r in ok_rows]))))
    out.append(("score distribution", plots.score_distribution(s, acc, thresholds=thresholds)))
    seed = int(data.config.get("seed", 0) or 0)
    out.append(("diameter vs score", plots.diameter_vs_score(d, s, picks[schema.SIZE_BIN].to_numpy(), acc, plan=data.plan,
                                                             thresholds=thresholds, pixel_size=px, seed=seed)))
    return out


@dataclass
class ReportProgress:
    """How far :func:`write_report` got, as :class:`ReportInterrupted` says."""

    #: Overlays to draw (new or changed ones); None until they are known, or with none asked for.
    to_draw: int | None = None
    #: Of those, drawn and recorded in ``overlays/index.json``.
    drawn: int = 0
    #: Overlays reused unchanged.
    unchanged: int = 0

    def __str__(self) -> str:
        """``2 of 5 overlays drawn, 10 unchanged``, or ``""`` before the overlays to draw are known."""
        if self.to_draw is None:
            return ""
        return (f"{self.drawn} of {self.to_draw} overlay{'' if self.to_draw == 1 else 's'} drawn"
                + (f", {self.unchanged} unchanged" if self.unchanged else ""))


class ReportInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped :func:`write_report`; ``progress`` (a :class:`ReportProgress`) says how far it got."""

    def __init__(self, progress: ReportProgress):
        super().__init__(str(progress))
        self.progress = progress


def write_report(
    data: RunData,
    *,
    readers: ReaderChoice,
    workers: int = 1,
    overlays: bool = True,
    crops: bool = True,
    force: bool = False,
    progress: bool = False,
) -> dict:
    """Draw the overlays and write ``report.html`` into ``data.out_dir``.

    Returns
    -------
    stats : dict
        ``report`` (path), ``rendered``, ``cached``, ``failed``, ``seconds``
        (overlay wall time), ``per_overlay`` (mean seconds per drawn overlay,
        reading included), ``workers``.

    Raises
    ------
    ReportInterrupted
        A :class:`KeyboardInterrupt` (Ctrl-C, or SIGTERM under
        :func:`~lipoframe.runner.sigterm_as_interrupt`) on the way, with how
        far the report got; the overlays drawn so far are recorded.
    """
    how_far = ReportProgress()
    try:
        return _write_report(data, how_far, readers=readers, workers=workers, overlays=overlays, crops=crops, force=force,
                             progress=progress)
    except ReportInterrupted:
        raise
    except KeyboardInterrupt as exc:
        raise ReportInterrupted(how_far) from exc


def _write_report(data: RunData, how_far: ReportProgress, *, readers: ReaderChoice, workers: int, overlays: bool, crops: bool,
                  force: bool, progress: bool) -> dict:
    """:func:`write_report`, keeping ``how_far`` up to date."""
    out_dir = data.out_dir
    picks = data.picks
    has_plan = data.plan is not None
    ov_dir = safe_child(out_dir, OVERLAY_DIR)
    by_mic = {n: g for n, g in picks.groupby(schema.MICROGRAPH, sort=False)} if len(picks) else {}
    legends: dict = {}  # by pixel size: the bins' nm are each micrograph's own

    rows: list[MicrographRow] = []
    for status, listed in (("failed", data.failures), ("not finished", data.not_finished)):
        rows.extend(MicrographRow(f["name"], f["path"], status, error=f["error"]) for f in listed)
    seed = int(data.config.get("seed", 0) or 0)
    crop_reqs = choose_crops(picks, data.metas, data.plan, seed=seed) if (crops and overlays) else []
    crops_by_mic: dict[str, list[CropRequest]] = {}
    for mic, c in crop_reqs:
        crops_by_mic.setdefault(mic, []).append(c)

    index_path = ov_dir / "index.json"
    previous = _read_overlay_index(index_path)
    index = previous if not force else {}
    new_index: dict[str, Any] = {}
    jobs: list[OverlayJob] = []
    for name, meta in data.metas.items():
        g = by_mic.get(name, picks.iloc[0:0])
        n_acc = int(g[schema.ACCEPTED].sum())
        row = MicrographRow(name, meta.path, "ok", total=len(g), accepted=n_acc)
        rows.append(row)
        if not overlays:
            continue
        if not meta.path:
            row.note = "no file path recorded"
            continue
        if meta.pixel_size not in legends:
            legends[meta.pixel_size] = _legend(data, picks, meta.pixel_size)
        legend_all = legends[meta.pixel_size]
        legend = [(lab.rsplit("  [", 1)[0] + f"  [{cnt}]", c, dsh) for (lab, c, dsh), cnt in
                  zip(legend_all, _legend_counts(data, g))]
        if len(g) > n_acc:
            lab, c, dsh = legend[-1]
            legend[-1] = (f"{lab[:-1]}: {_reasons(g)}]", c, dsh)
        px = f" · {meta.pixel_size:g} Å/px" if meta.pixel_size else ""
        job = OverlayJob(
            name=name, path=meta.path,
            x=g[schema.X].to_numpy(dtype=float), y=g[schema.Y].to_numpy(dtype=float),
            z=g[schema.Z].to_numpy(dtype=float) if schema.Z in g.columns else None,
            diameter=g[schema.DIAMETER].to_numpy(dtype=float), colors=_colors(g, has_plan),
            dashed=~g[schema.ACCEPTED].to_numpy(dtype=bool), legend=legend,
            title=f"{name} · {n_acc} accepted of {len(g)} picks{px}",
            png=safe_child(ov_dir, f"{name}_picks.png"), thumb=safe_child(ov_dir, "thumbs", f"{name}.jpg"),
            crops=crops_by_mic.get(name, []), crop_dir=safe_child(ov_dir, "crops"),
            thumb_size=THUMB_SIZE if len(data.metas) <= LARGE_DATASET else THUMB_SIZE_LARGE,
        )
        key = _job_key(job)
        row.overlay = f"{OVERLAY_DIR}/{name}_picks.png"
        # Reused only when its files are those the entry recorded once they were all written: a report stopped
        # after rewriting some of them (before the thumbnail, before the index was saved) leaves other ones.
        entry = index.get(name, {})
        done = entry.get("key") == key and entry.get("files") is not None and entry.get("files") == _file_ids(_job_files(job))
        new_index[name] = {"key": key, "seconds": entry.get("seconds"), "files": entry["files"]} if done else {"key": key}
        new_index[name]["crops"] = [c.key for c in job.crops]
        if not done:
            jobs.append(job)

    # Until every overlay is back, the index on disk holds the new entries of those drawn (or unchanged) and the
    # previous ones of the rest: a report killed on the way leaves what it drew recorded, and lists every file
    # an earlier report drew, so that a later one removes those no longer in the run (_remove_stale_overlays).
    pending = {job.name for job in jobs}
    job_of = {job.name: job for job in jobs}
    if overlays:
        how_far.to_draw, how_far.unchanged = len(jobs), len(new_index) - len(jobs)
    saved_at, save_cost = time.monotonic(), 0.0

    def save_index() -> None:
        kept = {k: v for k, v in previous.items() if k in pending or k not in new_index}
        write_text(index_path, json.dumps({**kept, "render_version": RENDER_VERSION,
                                           **{k: v for k, v in new_index.items() if k not in pending}}, indent=1))

    def drawn(res: OverlayResult) -> None:
        nonlocal saved_at, save_cost
        if not res.ok:
            return  # its previous entry stays, as at the end
        new_index[res.name]["seconds"] = round(res.seconds, 3)
        new_index[res.name]["cpu_seconds"] = round(res.cpu_seconds, 3)
        new_index[res.name]["files"] = _file_ids(_job_files(job_of[res.name]))
        pending.discard(res.name)
        how_far.drawn += 1
        now = time.monotonic()
        if pending and now - saved_at >= max(INDEX_SAVE_SECONDS, save_cost / INDEX_SAVE_SHARE):
            save_index()
            saved_at = time.monotonic()
            save_cost = saved_at - now

    t0 = time.perf_counter()
    n_workers = max(1, min(workers, len(jobs))) if jobs else 0
    try:
        results = render_overlays(jobs, readers, workers=max(1, workers), progress=progress, on_result=drawn) if jobs else []
    except BaseException:  # Ctrl-C or SIGTERM, a worker process killed (BrokenProcessPool): the overlays drawn so far are not drawn again
        if len(pending) < len(jobs):
            with contextlib.suppress(OSError):
                save_index()
        raise
    wall = time.perf_counter() - t0
    by_name = {r.name: r for r in rows}
    n_failed = 0
    for res in results:
        if not res.ok:
            n_failed += 1
            # The last good picture stays (the images may be back later, e.g. a
            # moved project); its entry is kept so it is neither reused for
            # other picks nor forgotten.
            if isinstance(previous.get(res.name), dict):
                new_index[res.name] = previous[res.name]
            else:
                new_index.pop(res.name, None)
            by_name[res.name].overlay = ""
            by_name[res.name].note = res.error.splitlines()[0]
            log.warning("report: no overlay for %s", res.error.splitlines()[0])
    for r in rows:
        if r.overlay:
            try:
                r.thumb = (ov_dir / "thumbs" / f"{r.name}.jpg").read_bytes()
            except OSError:
                r.overlay = ""
    if overlays:
        write_text(index_path, json.dumps({"render_version": RENDER_VERSION, **new_index}, indent=1))
        _remove_stale_overlays(ov_dir, previous, new_index)  # failed ones are in new_index: kept
    ok_results = [r for r in results if r.ok]
    stats = {
        "rendered": len(ok_results),
        # reused unchanged: drawn neither now nor attempted (a failed one keeps its old entry)
        "cached": len(new_index) - len(ok_results) - sum(1 for r in results if not r.ok and r.name in new_index),
        "failed": n_failed,
        "seconds": round(wall, 3),
        "per_overlay": round(float(np.mean([r.seconds for r in ok_results])), 4) if ok_results else 0.0,
        "cpu_per_overlay": round(float(np.mean([r.cpu_seconds for r in ok_results])), 4) if ok_results else 0.0,
        "workers": n_workers,
        "drawn": overlays,  # False: the caller asked for none (--no-overlays)
    }

    crop_pics = []
    for mic, c in crop_reqs:
        p = ov_dir / "crops" / c.key
        if p.is_file():
            crop_pics.append((c, p.read_bytes(), mic))

    rows.sort(key=MicrographRow.sort_key)
    plots_png = _dataset_plots(data, rows)
    page = build_html(data, rows, plots_png, crop_pics, overlay_stats=stats)
    path = write_text(safe_child(out_dir, REPORT_NAME), page)
    stats["report"] = str(path)
    log.info("report: %s (%d overlays drawn in %.1f s, %.2f s / %.2f CPU s each; %d reused; %d failed)",
             path, stats["rendered"], wall, stats["per_overlay"], stats["cpu_per_overlay"], stats["cached"], n_failed)
    return stats


def _read_overlay_index(path: Path) -> dict:
    """``overlays/index.json``, or ``{}`` (every overlay drawn again) when it is missing or not what a report writes.

    A report writes a JSON object: ``render_version`` and, for each
    micrograph, an object whose ``crops`` is a list of file names. Anything
    else (a list, an entry that is a number, crops that are no list of
    names), like a file that is not JSON, is logged with the file named and
    ignored, as if there were no index: nothing is reused and no overlay is
    removed on its word.
    """
    index = _read_json(path)
    if index is None:
        return {}
    problem = ""
    if not isinstance(index, dict):
        problem = f"a JSON {type(index).__name__}, not an object"
    else:
        for name, entry in index.items():
            if name == "render_version":
                continue
            if not isinstance(entry, dict):
                problem = f"the entry {name!r} is a JSON {type(entry).__name__}, not an object"
            elif not isinstance(entry.get("crops", []), list) or not all(isinstance(c, str) for c in entry.get("crops", [])):
                problem = f"the crops of {name!r} are not a list of file names"
            if problem:
                break
    if problem:
        log.warning("report: cannot use %s (%s): every overlay is drawn again", path, problem)
        return {}
    return index


def _remove_stale_overlays(ov_dir: Path, previous: dict, current: dict) -> int:
    """Delete the overlay, thumbnail and crops ``previous`` recorded and ``current`` does not.

    A micrograph left out of a rerun must not keep a picture of picks that
    are no longer the run's. Only files an earlier report listed in
    ``overlays/index.json`` are deleted.
    """
    keep = {c for entry in current.values() if isinstance(entry, dict) for c in entry.get("crops", [])}
    stale: list[Path] = []
    for name, entry in previous.items():
        if not isinstance(entry, dict):  # render_version
            continue
        if name not in current:
            stale += [ov_dir / f"{name}_picks.png", ov_dir / "thumbs" / f"{name}.jpg"]
        stale += [ov_dir / "crops" / c for c in entry.get("crops", []) if c not in keep]
    root = ov_dir.resolve()
    n = 0
    for p in stale:
        with contextlib.suppress(OSError, ValueError):
            if p.resolve().is_relative_to(root) and p.is_file():
                p.unlink()
                n += 1
    if n:
        log.info("report: removed %d overlay file(s) of micrographs or picks no longer in the run", n)
    return n


def _legend_counts(data: RunData, g: pd.DataFrame) -> list[int]:
    """Counts for the legend entries of one micrograph (same order as :func:`_legend`)."""
    acc = g[schema.ACCEPTED].to_numpy(dtype=bool)
    counts = []
    if data.plan is not None and data.plan.bins:
        bins = g[schema.SIZE_BIN].to_numpy()
        counts += [int((acc & (bins == b.index)).sum()) for b in data.plan.bins]
    elif data.picks[schema.ACCEPTED].any():
        counts.append(int(acc.sum()))
    counts.append(int((~acc).sum()))
    return counts


def _reasons(g: pd.DataFrame) -> str:
    """``score 5, diameter_range 2`` for the rejected picks of a table."""
    return ", ".join(f"{k} {v}" for k, v in schema.rejection_reasons(g).value_counts().items())


def _load_metas(out_dir: Path, names: list[str]) -> dict[str, MicrographMeta]:
    from lipoframe.runner import WORK_DIR

    metas = {}
    for name in names:
        info = _read_json(safe_child(out_dir, WORK_DIR, f"{name}.json"))
        if info and "meta" in info:
            metas[name] = MicrographMeta.from_dict(info["meta"])
    return metas


def settle_report_interruption(out_dir: Path) -> bool:
    """Once a report is written: drop ``run_summary.json``'s note that the run was stopped while drawing its report.

    A run stopped (Ctrl-C, SIGTERM) while drawing its report records a note
    (:data:`lipoframe.runner.REPORT_INTERRUPTED`, kept by a later ``lipoframe
    plan`` in ``run_notes`` too) and ``interrupted: true``, although its
    picking is complete. The report written later by ``lipoframe report`` or
    ``lipoframe plan --report`` settles both. A run whose picking was
    interrupted (no such note, or micrographs not done) keeps its
    ``interrupted`` flag. After a ``lipoframe plan`` stopped in its binning
    or writers, whose outputs are incomplete, ``interrupted`` stays and the
    picking run's own flag (:data:`~lipoframe.runner.PICKING_INTERRUPTED`)
    is settled. Returns whether the file was rewritten.
    """
    from lipoframe.runner import PICKING_INTERRUPTED, RUN_NOTES, REPORT_INTERRUPTED

    path = Path(out_dir) / "run_summary.json"
    summary = _read_json(path)
    if not isinstance(summary, dict):
        return False
    lists = {key: summary[key] for key in ("notes", RUN_NOTES) if isinstance(summary.get(key), list)}
    kept = {key: [n for n in notes if not str(n).startswith(REPORT_INTERRUPTED)] for key, notes in lists.items()}
    if kept == lists:
        return False
    counts = summary.get("micrographs") if isinstance(summary.get("micrographs"), dict) else {}
    picked = not int(counts.get("not_done", 0) or 0)
    flag = PICKING_INTERRUPTED if PICKING_INTERRUPTED in summary else "interrupted"
    write_text(path, json.dumps({**summary, **kept, **({flag: False} if picked else {})}, indent=2))
    return True


def write_report_safely(out_dir: Path, *, cfg, stages, result) -> dict | None:
    """Write the report at the end of ``lipoframe run`` (or ``lipoframe plan --report``); log any error instead of raising.

    Returns the statistics of :func:`write_report` (``"report"`` is the
    page's path) and the ``"seconds"`` the whole report took, or None when it
    could not be written.
    """
    from lipoframe.runner import resolve_workers

    t0 = time.perf_counter()
    try:
        out_dir = Path(out_dir)
        metas = _load_metas(out_dir, [r.name for r in result.results if r.status in ("ok", "skipped")])
        if cfg.pixel_size is not None:  # every micrograph's (after `lipoframe plan pixel_size=` too)
            metas = {n: dataclasses.replace(m, pixel_size=cfg.pixel_size) for n, m in metas.items()}
        data = run_data_from_result(out_dir, cfg=cfg, stages=stages, result=result, metas=metas)
        stats = write_report(data, readers=ReaderChoice.from_stages(stages), workers=resolve_workers(cfg.runner.workers, len(metas) or 1),
                             progress=cfg.runner.progress)
    except Exception as exc:  # noqa: BLE001 - the report must never fail a run
        log.error("report: could not write %s: %s: %s", Path(out_dir) / REPORT_NAME, type(exc).__name__, exc)
        log.debug("report traceback", exc_info=True)
        drop_stale_report(out_dir)
        return None
    except KeyboardInterrupt:
        drop_stale_report(out_dir)
        raise
    try:
        settle_report_interruption(out_dir)
    except OSError as exc:
        log.error("report: could not update %s (%s); it still says the report was not written", out_dir / "run_summary.json", exc)
    return {**stats, "seconds": time.perf_counter() - t0}


def drop_stale_report(out_dir: Path) -> None:
    """Remove the ``report.html`` an earlier run left in ``out_dir``, when this
    run's could not be written: it would show other picks than the run's."""
    (Path(out_dir) / REPORT_NAME).unlink(missing_ok=True)


def drop_earlier_report(out_dir: Path) -> None:
    """Remove, with a warning, the ``report.html`` an earlier run left in ``out_dir`` when this run writes none.

    For ``runner.report=false`` (a run, a ``watch=true`` session, a merge):
    the earlier report would show other picks than this run's.
    """
    if (Path(out_dir) / REPORT_NAME).is_file():
        drop_stale_report(out_dir)
        log.warning("removed the report.html of an earlier run into %s (it showed that run's picks); "
                    "`lipoframe report %s` writes this run's", out_dir, shlex.quote(str(out_dir)))


def cmd_report(argv: list[str]) -> int:
    """``lipoframe report RUN_DIR``: (re)write overlays and report.html of an existing run."""
    import argparse

    from lipoframe.records import InputError
    from lipoframe.runner import LOCK_FILE, WORK_DIR, folder_lock, sigterm_as_interrupt

    ap = argparse.ArgumentParser(prog="lipoframe report", description="Write overlays and a self-contained report.html for a run folder.")
    ap.add_argument("run_dir", help="output folder of a lipoframe run")
    ap.add_argument("-j", "--workers", type=int, default=None, help="processes drawing overlays (default: the run's runner.workers; 0 = all cores)")
    ap.add_argument("--force", action="store_true", help="redraw every overlay, even unchanged ones")
    ap.add_argument("--no-overlays", action="store_true", help="only report.html with plots and tables (no micrograph is read)")
    ap.add_argument("--no-crops", action="store_true", help="skip the full-resolution crops of picks per bin")
    args = ap.parse_args(argv)
    if args.workers is not None and args.workers < 0:
        ap.error(f"--workers must be >= 0, got {args.workers}")
    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        print(f"lipoframe report: {run_dir}: no such folder", file=sys.stderr)
        return 2  # a usage error, as for plan, evaluate and merge: nothing was read or written
    # Outside the lock, on purpose (taking it would make a lock file, which kill -9 leaves, in a folder that is
    # not a run's), and harmless: it reads no run. With none of the three there, load_run finds no
    # micrographs/*.json and no run_summary.json and raises whatever else the folder holds: not a run folder
    # (exit 2). A lipoframe command that starts writing here meanwhile takes the lock before it makes
    # micrographs/ or run_summary.json (output_folder, folder_lock), so load_run can only see the first files
    # of a command that began after this check: whole files (temp file then rename) of which nothing is used
    # past this check. It then either raises (exit 2, the answer of a report a moment earlier, having written
    # nothing) or not, and folder_lock below refuses the folder; once that command is done, _report_command
    # reads the run anew under the lock.
    if not any((run_dir / f).exists() for f in (LOCK_FILE, WORK_DIR, "run_summary.json")):
        try:  # no lipoframe command wrote here: nothing to lock, and no lock file is left in someone else's folder
            load_run(run_dir)
        except FileNotFoundError as exc:
            print(f"lipoframe report: {exc}", file=sys.stderr)
            return 2
    try:  # before any overlay is drawn: a folder on a read-only mount would fail only at the end, with a traceback
        tempfile.TemporaryFile(dir=run_dir).close()
    except OSError as exc:
        print(f"lipoframe report: {run_dir}: cannot write into the run folder ({exc.strerror or exc})", file=sys.stderr)
        return 1
    with contextlib.ExitStack() as held:
        # As run, plan and merge do: a run or plan writing into the folder (or another report) would have
        # the report read half-written picks, and both rewrite the overlays, their index and run_summary.json.
        try:
            held.enter_context(folder_lock(run_dir, "report"))
        except InputError as exc:
            print(f"lipoframe report: {exc}", file=sys.stderr)
            return 1
        except OSError as exc:  # the lock file's few bytes on a full disk
            print(f"lipoframe report: {run_dir}: cannot write into the run folder ({exc.strerror or exc})", file=sys.stderr)
            return 1
        # SIGTERM (`kill`, the end of a batch job) stops it as Ctrl-C does: the overlays drawn so far stay recorded
        held.enter_context(sigterm_as_interrupt())
        return _report_command(run_dir, args)


def _report_command(run_dir: Path, args) -> int:
    """The rest of :func:`cmd_report`, with the run folder's lock held."""
    from concurrent.futures.process import BrokenProcessPool

    from lipoframe.runner import record_report_interrupted, resolve_workers

    try:
        data = load_run(run_dir)
    except FileNotFoundError as exc:
        print(f"lipoframe report: {exc}", file=sys.stderr)
        return 2
    runner_cfg = data.config.get("runner") if isinstance(data.config.get("runner"), dict) else {}
    workers = args.workers if args.workers is not None else int(runner_cfg.get("workers", 0) or 0)
    workers = resolve_workers(workers, max(1, len(data.metas)))
    readers = ReaderChoice.from_config(data.config, data.stage_names.get("reader"))
    try:
        stats = write_report(data, readers=readers, workers=workers, overlays=not args.no_overlays, crops=not args.no_crops,
                             force=args.force, progress=runner_cfg.get("progress", True) is not False)
    except OSError as exc:  # a full disk, a quota: each file is written atomically, so none is half-written
        print(f"lipoframe report: {run_dir}: cannot write the report ({exc.strerror or exc})", file=sys.stderr)
        return 1
    except BrokenProcessPool:  # a worker killed outright, by the out-of-memory killer say
        print(f"lipoframe report: {run_dir}: a process drawing the overlays ended abruptly (killed; out of memory?); the overlays "
              "drawn so far are recorded: run it again, with fewer workers (-j) if memory ran out", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        # Ctrl-C or SIGTERM: run_summary.json says the report is not written, and how far this one got, as for
        # a run stopped while drawing its report (still under the folder's lock, written atomically). Stopped
        # before (reading the run), the report had changed nothing: nothing to record.
        try:
            record_report_interrupted(run_dir, how_far=str(getattr(exc, "progress", "")))
        except (OSError, ValueError) as err:
            print(f"lipoframe report: {run_dir / 'run_summary.json'}: cannot record that the report was interrupted "
                  f"({getattr(err, 'strerror', None) or err})", file=sys.stderr)
        raise
    try:
        settle_report_interruption(run_dir)
    except OSError as exc:
        print(f"lipoframe report: {run_dir / 'run_summary.json'}: cannot update it ({exc.strerror or exc}); "
              "it still says the report was not written", file=sys.stderr)
        return 1
    print(f"report       {stats['report']}")
    if not args.no_overlays:
        timing = (f" in {stats['seconds']:.1f} s with {stats['workers']} worker(s) "
                  f"({stats['per_overlay']:.2f} s, {stats['cpu_per_overlay']:.2f} CPU s each)") if stats["rendered"] else ""
        print(f"overlays     {stats['rendered']} drawn{timing}, {stats['cached']} unchanged, {stats['failed']} failed")
        if stats["failed"]:
            # The report is written; the exit code says that some micrographs have no overlay in it.
            print(f"lipoframe report: {stats['failed']} overlay(s) failed (see the report's micrograph list and {run_dir / 'lipoframe.log'})",
                  file=sys.stderr)
            return 1
    return 0
