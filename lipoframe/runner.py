"""The runner: per micrograph read -> detect -> nms -> refine -> filters, then
over the dataset binning -> writers.

Nothing here knows about Hydra: :func:`run_pipeline` takes a validated
:class:`~lipoframe.config.LipoframeConfig`, and :func:`pick` runs the
per-micrograph part on an array from Python.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import io
import json
import logging
import math
import os
import re
import shlex
import stat
import sys
import time
import traceback
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Collection

import numpy as np
import pandas as pd

from lipoframe import schema
from lipoframe.config import MIN_DIAMETER_PX, RETRY_SUPPRESSED, ConfigError, LipoframeConfig, pasteable_override, settings_fingerprint
from lipoframe.algorithms.outliers import MAX_CLUSTER, OUTLIER_SIGMAS, replace_isolated_outliers
from lipoframe.algorithms.pyramid import pow2_floor, to_binned
from lipoframe.inputlists import ListedPath, is_list_spec, list_paths, listed_pixel_size, relion_project, relion_star
from lipoframe.io.atomic import resolve_all, safe_child, write_text
from lipoframe.plan import ExtractionPlan, format_range
from lipoframe.records import (COMPRESSION_TOOLS, InputError, Micrograph, MicrographMeta, PickContext, SettingsError, file_stem,
                               file_suffix, refuse_special_file)
from lipoframe.registry import StageRegistry
from lipoframe.stages import BinningResult, Stage

log = logging.getLogger("lipoframe")

#: Folder (below the output) with the per-micrograph results used for resume and merge.
WORK_DIR = "micrographs"
#: Every input of a run in order, with its output name, shard and settings fingerprint (read by merge).
MANIFEST = "inputs.json"
#: Picks that the dataset-level filters rejected (``micrograph``, ``row`` in
#: that micrograph's saved table, ``reject_reason``): the saved per-micrograph
#: tables hold the decisions made one micrograph at a time.
DATASET_REJECTIONS = "dataset_rejections.csv"
#: The files the last dataset step wrote (writers and plan files), relative to the run folder.
WRITTEN = "written_files.json"
#: Longest list of notes or failures printed (all are in run_summary.json).
MAX_LISTED = 20
#: printf format of the floating-point columns of a saved per-micrograph table (:func:`save_work`).
WORK_FLOAT_FORMAT = "%.4f"
#: Key of a saved result's JSON: the reader's ``flip_y`` (TIFF), which the run's ``flip_y=null`` exports with.
READ_FLIP_Y = "read_flip_y"
#: Key of a saved result's JSON, true when its pixel size is the one a micrographs STAR among the inputs gave
#: (:func:`pixel_size_listed`): a run without that STAR reads the header's instead (:func:`pixel_size_source_changed`).
LISTED_PIXEL_SIZE = "listed_pixel_size"
#: How the note on the row flip of TIFF micrographs begins (:func:`tiff_rows_notes`; a plan makes its own).
TIFF_ROWS = "the exports flip the rows of"


# ---------------------------------------------------------------------------
# Stages
# ---------------------------------------------------------------------------
@dataclass
class StageSet:
    """The stages of one run, built from their validated parameters."""

    reader: Stage
    detector: Stage
    nms: Stage
    refiner: Stage
    filters: list[Stage]
    binner: Stage
    writers: list[Stage]
    readers_by_suffix: dict[str, Stage] = field(default_factory=dict)
    #: Reject reasons after which the detections NMS suppressed at that place are tried.
    retry_suppressed: tuple[str, ...] = ()
    #: Detect again with the accepted particles replaced by background (:func:`peel_again`).
    peel: bool = False
    #: lipoframe's version and those of the plugin distributions whose
    #: per-micrograph stages (reader, detector, NMS, refiner, filters) are
    #: used: ``"0.1.0; lipoframe-foo 1.2"``. A saved result made by another
    #: code version is picked again on resume.
    code_version: str = ""
    #: The micrograph lists among the inputs (``input=micrographs_ctf.star``, ``mics.txt``): a STAR's optics
    #: give the pixel size of the micrographs it lists (see :meth:`listed_pixel_size`).
    input_lists: tuple[str, ...] = ()

    def listed_pixel_size(self, path: str | os.PathLike) -> float | None:
        """Å/px that a RELION micrographs STAR among the inputs gives ``path``; None when none does."""
        if not self.input_lists:
            return None
        return listed_pixel_size(self.input_lists, path)

    def reader_for(self, path: Path) -> Stage:
        if self.reader.name != "auto":
            return self.reader
        suffix = file_suffix(path)
        try:
            return self.readers_by_suffix[suffix]
        except KeyError:
            if not path.exists():
                raise InputError(f"{path}: file not found") from None
            known = ", ".join(sorted(self.readers_by_suffix))
            movie = "; an EER file is a movie (electron events): give motion-corrected micrographs" if suffix == ".eer" else ""
            packed = next((c for c in COMPRESSION_TOOLS if suffix != c and suffix.endswith(c)), None)
            if packed and not movie:
                movie = f"; decompress it first ({COMPRESSION_TOOLS[packed]})"
            raise InputError(f"{path}: no reader for files ending in {suffix!r} (known: {known}){movie}") from None

    def picking_stages(self) -> list[Stage]:
        """The per-micrograph stages: reader, detector, NMS, refiner and filters."""
        return [self.reader, self.detector, self.nms, self.refiner, *self.filters]

    def extra_inputs(self, path: Path, name: str) -> list[Path]:
        """Files besides ``path`` that the per-micrograph stages read for it (see :meth:`Stage.extra_inputs`)."""
        # getattr: a stage object that does not derive from Stage reads nothing else
        return [f for stage in self.picking_stages() for f in getattr(stage, "extra_inputs", lambda *_: [])(Path(path), name)]

    def read(self, path: Path, *, pixel_size: float | None) -> Micrograph:
        """Read ``path`` with :meth:`reader_for`'s reader.

        When a reader chosen by name (``reader=npy``) fails on a file whose
        suffix it does not handle, the message says so.
        """
        refuse_special_file(path)
        reader = self.reader_for(path)
        if pixel_size is None:  # pixel_size= given on the command line wins over the STAR's, the STAR's over the header
            pixel_size = self.listed_pixel_size(path)
        try:
            return reader.read(path, pixel_size=pixel_size)
        except InputError as exc:
            suffixes = tuple(getattr(reader, "suffixes", ()))
            if self.reader.name == "auto" or not suffixes or file_suffix(path) in suffixes:
                raise
            raise InputError(f"{exc}; reader={reader.name} reads {' '.join(suffixes)} files "
                             "(leave reader=auto to choose the reader by each file's suffix)") from None


def check_ranking_columns(cfg: LipoframeConfig, registry: StageRegistry) -> None:
    """Check the columns the NMS ranks by against those the detector declares.

    Raises
    ------
    ConfigError
        Naming the option (``nms.rank_by``) and the columns the detector's
        candidates have, when the detector declares them
        (:attr:`~lipoframe.stages.Detector.columns`) and the column is not
        one of them. ``response`` is always accepted: a detector without it
        is ranked by ``score``.
    """
    if cfg.detector is None or cfg.nms is None:
        return
    detector = registry.for_params(cfg.detector).cls
    declared = getattr(detector, "columns", None)
    if declared is None:
        return
    have = [*schema.DETECTOR_COLUMNS, *declared]
    # A tomogram's candidates carry z_px as well.
    for option, column in registry.build(cfg.nms).ranked_by().items():
        if column not in have and column not in ("response", schema.Z):
            raise ConfigError(f"{option}={column!r} is not a column of the candidates of detector={detector.name}; "
                              f"they have {', '.join(have)}")


def check_retry_suppressed(reasons, registry: StageRegistry) -> None:
    """Check ``retry_suppressed`` against the reasons the registered stages give.

    Raises
    ------
    ConfigError
        Naming a reason that no registered refiner or filter gives, when
        every one of them declares its reasons (:attr:`Stage.reasons`);
        with stages that declare none, a warning is logged instead.
    """
    known, undeclared = registry.reject_reasons()
    unknown = [r for r in reasons if r not in known]
    if not unknown:
        return
    what = ", ".join(repr(r) for r in unknown)
    if undeclared:
        log.warning("retry_suppressed: %s is no reject reason that a refiner or filter declares; "
                    "only a stage that declares none could give it (%s)", what, ", ".join(undeclared))
        return
    raise ConfigError(f"retry_suppressed: {what} is not a reject reason of any refiner or filter "
                      f"(they give: {', '.join(sorted(known))})")


def build_stages(cfg: LipoframeConfig, registry: StageRegistry) -> StageSet:
    """Instantiate the configured stages (errors name the stage kind)."""
    check_retry_suppressed(cfg.retry_suppressed, registry)
    check_ranking_columns(cfg, registry)

    def one(kind: str, params: Any) -> Stage:
        if params is None:
            raise ValueError(f"no {kind} stage is selected (set {kind}=<name>)")
        stage = registry.build(params)
        if stage.kind != kind:
            raise ValueError(f"{kind}: stage {stage.name!r} is a {stage.kind}")
        return stage

    from lipoframe import __version__

    stages = StageSet(
        reader=one("reader", cfg.reader),
        detector=one("detector", cfg.detector),
        nms=one("nms", cfg.nms),
        refiner=one("refiner", cfg.refiner),
        filters=[one("filter", p) for p in cfg.filter.values()],
        binner=one("binning", cfg.binning),
        writers=[one("writer", p) for p in cfg.writer.values()],
        readers_by_suffix=registry.readers_by_suffix(dims=getattr(cfg.reader, "dims", 2)),
        retry_suppressed=tuple(cfg.retry_suppressed),
        peel=cfg.peel,
    )
    stages.input_lists = tuple(str(s) for s in cfg.input if is_list_spec(s, tuple(stages.readers_by_suffix)))
    used = [*stages.picking_stages(), *stages.readers_by_suffix.values()]
    dists = sorted({registry.get(st.kind, st.name).distribution for st in used} - {""})
    stages.code_version = "; ".join([__version__, *dists])
    return stages


# ---------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------


def _file_or_broken_link(path: Path) -> bool:
    """Whether a folder's or a glob's match is taken: a file, or a symbolic link whose target is missing (kept
    so that it is reported, 'file not found', rather than left out unseen)."""
    return path.is_file() or (path.is_symlink() and not path.exists())


def expand_inputs(specs: list[str | Path], suffixes: tuple[str, ...], *, same_file: list | None = None) -> list[Path]:
    """Files named by ``specs`` (files, folders, globs or lists), sorted, without repeats.

    Folders and globs contribute the files whose suffix is in ``suffixes``
    (a glob such as ``mics/*`` also matches the tables beside the
    micrographs), and symbolic links among them whose target is missing
    (reported as not found). A micrograph list (a RELION micrographs STAR, a ``.txt`` or
    ``.lst`` file; see :mod:`lipoframe.inputlists`) contributes the files it
    lists, in its order; one that cannot be read contributes none
    (:func:`find_inputs` says why). A named file that does not exist is kept, so it is
    reported as a failure; a named file of another type is kept too, and
    its reader says what is wrong with it. A file reached again under
    another path (a symbolic link, RELION's ``Import/`` folder) is left
    out; ``same_file``, when given, receives a ``(left_out, kept)`` pair
    of paths for each.

    A spec that is a :class:`~lipoframe.inputlists.ListedPath` names one
    file as it is: never a folder's files, a pattern or a list (``watch``
    passes the files a list names so, see :func:`lipoframe.watch.watched_specs`).
    """
    out: list[Path] = []
    seen: dict[str, Path] = {}
    for spec in specs:
        if isinstance(spec, ListedPath):
            found = [Path(spec)]
        elif os.path.isdir(spec := os.path.expanduser(str(spec))):
            found = sorted(p for p in Path(spec).iterdir() if _file_or_broken_link(p)
                           and file_suffix(p) in suffixes and not p.name.startswith("."))
        elif is_list_spec(spec, suffixes):
            try:
                found = list_paths(spec, suffixes)
            except InputError:
                found = []
        elif glob.has_magic(spec):
            found = sorted(Path(p) for p in glob.glob(spec, recursive=True) if _file_or_broken_link(Path(p)) and file_suffix(p) in suffixes)
        else:
            found = [Path(spec)]
        for p in found:
            key = str(p.resolve()) if p.exists() else str(p)
            if key not in seen:
                seen[key] = p
                out.append(p)
            elif same_file is not None and p != seen[key] and (p, seen[key]) not in same_file:
                same_file.append((p, seen[key]))
    return out


_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")

#: Joins the folder prefix and the file stem of inputs that share a stem
#: (``a/mic.mrc``, ``b/mic.mrc`` -> ``a-mic``, ``b-mic``). Not ``__``: EMAN2's
#: ``base_name()`` (libpyEM/EMAN2.py) keeps only the text before the first
#: ``__`` ("double underscore is used to mark tags added to micrograph
#: names"), and ``info_name()``, ``e2import.py --import_boxes`` and
#: ``e2boxer.py`` key a micrograph's boxes by that base name, so ``a__mic``
#: and ``a__img`` would share ``info/a_info.json``.
NAME_SEP = "-"


def safe_name(name: str) -> str:
    """A file-name-safe version of ``name`` (never empty, never starting with a dot)."""
    cleaned = _UNSAFE.sub("_", name).strip("._") or "micrograph"
    return cleaned


def micrograph_names(paths: list[Path]) -> list[str]:
    """Unique, safe output names: the file stem, made unique only where stems clash.

    Inputs that share a stem are told apart by the shortest tail of their
    parent folders and/or their suffix (``a/mic.mrc``, ``b/mic.mrc`` ->
    ``a-mic``, ``b-mic``, joined with :data:`NAME_SEP`; ``mic.mrc``,
    ``mic.tif`` -> ``mic_mrc``, ``mic_tif``); a counter is the last resort.
    :func:`name_notes` lists the renamed inputs for the user.
    """
    names = [safe_name(file_stem(p)) for p in paths]
    groups: dict[str, list[int]] = {}
    for i, nm in enumerate(names):
        groups.setdefault(nm, []).append(i)
    unique = {nm for nm, idx in groups.items() if len(idx) == 1}  # names a new name must not take
    for idx in groups.values():
        if len(idx) < 2:
            continue
        parents = [paths[i].resolve().parent.parts for i in idx]
        deepest = max(len(pp) for pp in parents)
        for depth in range(deepest + 1):
            for with_suffix in (False, True):
                if depth == 0 and not with_suffix:
                    continue
                cand = []
                for k, i in enumerate(idx):
                    parts = [*parents[k][len(parents[k]) - depth:]] if depth else []
                    stem = file_stem(paths[i]) + (f"_{file_suffix(paths[i]).lstrip('.').replace('.', '_')}" if with_suffix else "")
                    cand.append(safe_name(NAME_SEP.join([*parts, stem])))
                if len(set(cand)) == len(cand) and not unique & set(cand):
                    break
            else:
                continue
            break
        for k, i in enumerate(idx):
            names[i] = cand[k]
    seen: dict[str, int] = {}
    for i, nm in enumerate(names):  # a new name may equal another file's stem
        seen[nm] = seen.get(nm, 0) + 1
        if seen[nm] > 1:
            names[i] = f"{nm}_{seen[nm]}"
    return names


def shard(items: list, index: int, count: int) -> list:
    """Every ``count``-th item starting at ``index`` (deterministic for a sorted input)."""
    return items[index::count]


# ---------------------------------------------------------------------------
# Per micrograph
# ---------------------------------------------------------------------------
def pick_context(meta: MicrographMeta, cfg: LipoframeConfig) -> PickContext:
    """Diameter range in pixels of this micrograph."""
    if cfg.units == "px":
        dmin, dmax = cfg.dmin, cfg.dmax
    else:
        if meta.pixel_size is None or not meta.pixel_size > 0:
            raise SettingsError(meta.path or meta.name, "pixel size is missing from the header; give pixel_size=<Å/px> or use units=px")
        dmin, dmax = cfg.dmin / meta.pixel_size, cfg.dmax / meta.pixel_size
    if dmin < MIN_DIAMETER_PX:
        px = f" at {meta.pixel_size:g} Å/px" if cfg.units != "px" else ""
        raise SettingsError(meta.path or meta.name, f"the smallest diameter is {dmin:.3g} px{px}, too small to pick "
                            f"(at least {MIN_DIAMETER_PX} px); check the pixel size or dmin")
    return PickContext(dmin_px=dmin, dmax_px=dmax, polarity=cfg.polarity, pixel_size=meta.pixel_size, seed=cfg.seed, export_rejected=cfg.export_rejected)


def check_image(mic: Micrograph, ctx: PickContext) -> None:
    """Reject images that cannot be picked, with a message naming the file."""
    where = mic.meta.path or mic.name
    spatial = mic.shape[-2:]
    if min(spatial) < ctx.dmax_px:
        raise SettingsError(where, f"image of {spatial[1]}x{spatial[0]} px is smaller than the largest diameter "
                                   f"({ctx.dmax_px:.0f} px); lower dmax or check pixel_size")
    if mic.image.ndim == 3 and mic.shape[0] < ctx.dmax_px:
        # No thickness is refused here: spheres cut by the faces are found by their in-plane contrast
        # (all 20- and 30-voxel spheres in volumes of 0.25 their diameter at noise 0.2, of 0.125 at
        # 0.2-0.3: benchmarks/thin_volumes.py, docs/tomograms.md, Limits); what thinness costs is the
        # small, faint ones. A volume too thin for the detector's binning is refused by the detector.
        nz = mic.shape[0]
        log.warning("%s: volume of %d planes is thinner than the largest diameter (%.0f px): particles over %d px are "
                    "cut by its top and bottom and score lower; large ones are still found, small faint ones are lost "
                    "first (10-px spheres at noise 0.2: 32 of 36 in 10 planes, 17 in 8, 3 in 2; docs/tomograms.md, Limits)",
                    where, nz, ctx.dmax_px, nz)
    # The finest power-of-two level the built-in stages use (the refiner's);
    # every coarser level is then averaged from it, so the file is read once.
    factor = pow2_floor(ctx.dmin_px / 32.0)
    if mic.image.ndim == 3:
        factor = min(factor, pow2_floor(mic.shape[0]))  # a volume of fewer planes than one block (the detector says so)
    small = mic.signal(factor)
    # The rows and columns that do not fill a whole block are not in `small`.
    edges = [mic.image[(slice(None),) * axis + (slice(size // factor * factor, None),)] for axis, size in enumerate(mic.shape)]
    if not np.all(np.isfinite(small)) or not all(np.all(np.isfinite(e)) for e in edges if e.size):
        raise InputError(f"{where}: image contains NaN or infinite pixels: {not_finite_pixels(np.asarray(mic.image))}")
    if float(small.std()) == 0.0 and float(np.ptp(np.asarray(mic.image[:64, :64], dtype=np.float32))) == 0.0:
        raise InputError(f"{where}: image is constant (no contrast)")
    # A mask, label image or network's map beside the micrographs (input=<folder>) was picked like one, without
    # a word. It is still picked (a micrograph is never left out on a guess), with a warning. Maps that
    # detector=heatmap or filter=[...,mask] read are left out of the inputs before (read_for_others).
    levels = two_levels(mic.image)
    if levels is not None:
        log.warning("%s: holds only the values %g and %g: a mask or label image rather than a micrograph? "
                    "It is picked as given; leave it out of input= (or read it with filter=[...,mask] or detector=heatmap)",
                    where, *levels)
    elif (span := probability_map(mic.image, str(where))) is not None:
        log.warning("%s: values from %g to %g and a name that says mask, heatmap or probability: a probability map "
                    "(MicrographCleaner, crYOLO, Topaz) rather than a micrograph? It is picked as given; leave it out of "
                    "input= (or read it with filter=[...,mask] or detector=heatmap)", where, *span)


def not_finite_pixels(image: np.ndarray) -> str:
    """Which of an image's pixels are NaN or infinite, for the message that refuses it.

    Their number and share, and where they are when that is a border (whole
    rows and columns at the image's edges, as a motion correction or a
    stitching leaves where no frame reached), with what to do.
    """
    bad = ~np.isfinite(image)
    n, nan = int(bad.sum()), int(np.isnan(image).sum())
    kinds = " and ".join(f"{k} {w}" for k, w in ((nan, "NaN"), (n - nan, "infinite")) if k)
    if n == bad.size:
        return f"all of them ({kinds}); nothing to pick"
    plane = bad.reshape(-1, *bad.shape[-2:]).all(axis=0) if bad.ndim == 3 else bad  # a volume: bad in every plane
    full_rows, full_cols = plane.all(axis=1), plane.all(axis=0)

    def run(flags: np.ndarray) -> tuple[int, int]:  # lengths of the runs of True at the start and at the end
        false = np.flatnonzero(~flags)
        return (int(false[0]), int(flags.size - 1 - false[-1])) if false.size else (flags.size, 0)

    (top, bottom), (left, right) = run(full_rows), run(full_cols)
    edges = [f"{k} {w}" for k, w in ((top, "rows at the top"), (bottom, "rows at the bottom"),
                                      (left, "columns at the left"), (right, "columns at the right")) if k]
    edges = ", ".join(edges[:-1]) + " and " + edges[-1] if len(edges) > 1 else "".join(edges)
    share = f"{100 * n / bad.size:.2g} % of the image"
    inner = plane[top:plane.shape[0] - bottom, left:plane.shape[1] - right]
    if edges and not inner.any() and (bad.ndim == 2 or np.array_equal(bad, np.broadcast_to(plane, bad.shape))):
        return f"a border of {edges} ({kinds}, {share}); crop it, or fill it with the image's mean, before picking"
    return f"{kinds} ({share}); replace them (with the image's mean, say) before picking"


def two_levels(image: np.ndarray) -> tuple[float, float] | None:
    """The two values of an image that holds no others (a mask, labels); None otherwise.

    A 256 x 256 patch from the centre is looked at first, so a micrograph
    (thousands of grey levels there) costs next to nothing.
    """
    plane = image[image.shape[0] // 2] if image.ndim == 3 else image
    r, c = plane.shape[0] // 2, plane.shape[1] // 2
    if np.unique(np.asarray(plane[max(0, r - 128):r + 128, max(0, c - 128):c + 128])).size > 2:
        return None
    values = np.asarray(image)
    lo, hi = float(values.min()), float(values.max())
    if lo == hi or np.count_nonzero((values != lo) & (values != hi)):
        return None
    return lo, hi


#: Words of a file name that say it holds a mask or a network's map (its probabilities) rather than a micrograph.
MAP_WORDS = frozenset({"mask", "masks", "heatmap", "heatmaps", "prob", "probs", "probability", "probabilities", "probmap"})


def map_name(path: str) -> bool:
    """Whether the file name ``path`` has one of :data:`MAP_WORDS` as a word
    (``mic_contamination_mask.mrc``, ``mic-heatmap.tif``, ``micProb.npy``)."""
    words = re.split(r"[^a-z0-9]+", re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", Path(path).name).lower())
    return not MAP_WORDS.isdisjoint(words)


def probability_map(image: np.ndarray, path: str) -> tuple[float, float] | None:
    """The least and greatest values of an image that looks like a probability
    map (MicrographCleaner's, a crYOLO or Topaz heatmap); None otherwise.

    Both must hold: every value lies within [0, 1], and the file name says
    so (:func:`map_name`). A micrograph normalised to [0, 1] without such a
    name is not one. The name is looked at first, so a micrograph costs
    nothing.
    """
    if not map_name(path):
        return None
    values = np.asarray(image)
    lo, hi = float(values.min()), float(values.max())
    return (lo, hi) if 0.0 <= lo < hi <= 1.0 else None


def process_micrograph(mic: Micrograph, stages: StageSet, ctx: PickContext) -> pd.DataFrame:
    """Detect, suppress, refine and filter the picks of one micrograph.

    A candidate that NMS kept by outranking smaller ones inside it stands
    only if refinement and the filters accept it (:func:`_pick_confirmed`).
    Where refinement or a filter rejects a pick for a reason listed in
    ``stages.retry_suppressed``, the detections that NMS suppressed in its
    favour at the same place get their turn (see :func:`retry_candidates`),
    as weak candidates (``weak=True``, ``retried=True``). With
    ``stages.peel``, the micrograph is then searched again with the
    accepted particles replaced by background (:func:`peel_again`).

    Returns
    -------
    picks : DataFrame
        ``micrograph`` first, then the detector columns, stage columns,
        ``accepted``/``reject_reason`` and ``diameter_A``.
    """
    check_image(mic, ctx)
    detections = schema.validate_detections(stages.detector.detect(mic, ctx), stage=f"detector/{stages.detector.name}", shape=mic.shape)
    detections[_CANDIDATE] = np.arange(len(detections))
    detections, kept, refined, picks, overruled = _pick_confirmed(detections, mic, stages, ctx)
    if stages.retry_suppressed:
        failed = ~picks[schema.ACCEPTED].to_numpy(dtype=bool) & picks[schema.REASON].isin(stages.retry_suppressed).to_numpy()
        # The candidates NMS no longer keeps after their outranking failed (overruled) were refined and
        # filtered already and stay in the table as rejected: they are not tried a second time.
        tried = detections.loc[detections[_CANDIDATE].isin(overruled[_CANDIDATE])] if len(overruled) else kept.iloc[:0]
        retry = retry_candidates(detections, pd.concat([kept, tried], ignore_index=True), picks.loc[failed], picks.loc[~failed],
                                 mic, stages, ctx)
        if len(retry):
            # A detection that lost to a pick that then failed is no more
            # than a weak candidate: it counts where the population filter
            # vouches for it (a crowd of confident picks of its size). It is
            # refined on its own, then filtered together with the picks that
            # stand (the population changes); the failed picks keep their
            # first verdict.
            retry = retry.assign(**{schema.WEAK: True, schema.RETRIED: True})
            standing = refined.loc[~refined[_CANDIDATE].isin(picks.loc[failed, _CANDIDATE])]
            merged = pd.concat([standing, _refine(retry, mic, stages, ctx)], ignore_index=True)
            picks = pd.concat([_filter(merged, mic, stages, ctx), picks.loc[failed]], ignore_index=True)
            picks[schema.WEAK] = schema.weak_mask(picks)
        picks[schema.RETRIED] = schema.flags(picks[schema.RETRIED]) if schema.RETRIED in picks else False
    if stages.peel and mic.image.ndim == 2:
        picks = peel_again(picks, detections, mic, stages, ctx)
    if len(overruled):
        picks = pd.concat([picks, overruled], ignore_index=True)
    picks = picks.drop(columns=[_CANDIDATE, schema.OUTRANK_FAILED], errors="ignore")
    if schema.WEAK in picks.columns and schema.SUPPORT not in picks.columns:
        # Weak candidates need a stage that vouches for them (the population filter).
        picks = schema.reject(picks, schema.weak_mask(picks), "weak")
    # Duplicates are resolved last, among the picks that survived refinement
    # and the filters.
    picks = _suppress_again(picks, mic, stages, ctx).reset_index(drop=True)
    picks.insert(0, schema.MICROGRAPH, mic.name)
    px = mic.meta.pixel_size
    picks[schema.DIAMETER_A] = picks[schema.DIAMETER] * px if px else np.nan
    return picks


#: Temporary column: each detection's row number, to follow it through the stages.
_CANDIDATE = "_candidate"


#: Rounds of :func:`_pick_confirmed` that may take outranking away from rejected candidates.
OUTRANK_ROUNDS = 3


def _pick_confirmed(
    detections: pd.DataFrame, mic: Micrograph, stages: StageSet, ctx: PickContext
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """NMS, refinement and filters; a candidate kept by outranking smaller ones stands only if it is accepted.

    An NMS strategy may let a larger candidate win over smaller, stronger
    ones inside it (``size_aware``'s ``outrank_by``): a large particle over
    its own grains or the arcs of its rim. That is a claim about one place,
    which refinement and the filters check. A candidate kept only thanks to
    it (kept, and not kept by the same NMS without outranking) and then
    rejected is flagged ``schema.OUTRANK_FAILED`` and NMS runs again, so
    the smaller candidates get back the place they had without it (at most
    ``OUTRANK_ROUNDS`` times; the last round's result stands).

    Returns
    -------
    detections : DataFrame
        The detections, with the flag where it was set.
    kept : DataFrame
        The detections NMS kept.
    refined : DataFrame
        ``kept`` refined.
    picks : DataFrame
        ``refined`` filtered.
    overruled : DataFrame
        The flagged candidates NMS no longer keeps, as they were rejected:
        they stay in the pick table like every rejected candidate.
    """

    def suppress(detections):
        stage = f"nms/{stages.nms.name}"
        kept = call_table_stage(lambda t: stages.nms.suppress(t, mic, ctx), detections, stage=stage, same_rows=False)
        return schema.validate_detections(kept, stage=stage, shape=mic.shape)

    def refine_and_filter(kept):
        refined = _refine(kept, mic, stages, ctx)
        return refined, _filter(refined, mic, stages, ctx)

    kept = suppress(detections)
    refined, picks = refine_and_filter(kept)
    plain = stages.nms.suppress(detections.assign(**{schema.OUTRANK_FAILED: True}), mic, ctx)[_CANDIDATE]
    flagged = np.zeros(len(detections), dtype=bool)
    overruled = [picks.iloc[:0]]
    for _ in range(OUTRANK_ROUNDS):
        failed = picks.loc[~picks[schema.ACCEPTED].to_numpy(dtype=bool) & ~picks[_CANDIDATE].isin(plain).to_numpy()]
        failed = failed.loc[~failed[_CANDIDATE].isin(detections.loc[flagged, _CANDIDATE])]
        if not len(failed):
            break
        overruled.append(failed)
        flagged |= detections[_CANDIDATE].isin(failed[_CANDIDATE]).to_numpy()
        detections = detections.assign(**{schema.OUTRANK_FAILED: flagged})
        again = suppress(detections)
        if set(again[_CANDIDATE]) == set(kept[_CANDIDATE]):
            # The failed candidates had won nothing by outranking (they only
            # stood because a candidate that outranked theirs had): same picks.
            break
        kept = again
        refined, picks = refine_and_filter(kept)
    overruled = pd.concat(overruled, ignore_index=True)
    return detections, kept, refined, picks, overruled.loc[~overruled[_CANDIDATE].isin(kept[_CANDIDATE])]


#: What a stage of each kind that changed its input should do instead, for the message (a writer only reads the
#: table: lipoframe.schema.reject, the advice to a filter, is none for it).
COPY_ADVICE = {
    "nms": "return the kept rows as a new table (picks.loc[keep] is one) and leave the input as it is",
    "refiner": "work on a copy (picks.assign(...) and lipoframe.schema.reject return one) and leave the input as it is",
    "filter": "work on a copy (lipoframe.schema.reject returns one) and leave the input as it is",
    "binning": "work on a copy (picks.assign(size_bin=...) and lipoframe.schema.reject return one) "
               "and leave the input as it is",
    "writer": "a writer only reads it (to change values for the export, change a copy: "
              "picks.assign(...) or picks.copy() returns one)",
    "": "work on a copy and leave the input as it is",
}


def call_table_stage(method: Callable[[pd.DataFrame], pd.DataFrame], picks: pd.DataFrame, *, stage: str, same_rows: bool) -> pd.DataFrame:
    """``method(picks)``, checked: the stage left ``picks`` as it was, and kept every row if ``same_rows``.

    Stages never mutate their input: the runner goes on using the tables
    it passed (the refined picks once more after retries, the detections
    for every NMS round), so a change in place would alter those results
    behind its back. Refiners and filters reject picks by flagging them and
    never drop one. Checked: the input's columns, rows and the values of
    the columns stages decide on (centre, diameter, score, verdict).

    Parameters
    ----------
    method : callable
        The stage's method with every argument but the table bound.
    picks : DataFrame
        The table given to the stage.
    stage : str
        ``kind/name`` of the stage, for the message.
    same_rows : bool
        The stage must return as many rows as it was given.

    Raises
    ------
    ValueError
        Naming the stage and what it changed or dropped.
    """
    columns, index = tuple(picks.columns), picks.index.copy()
    watched = {c: picks[c].to_numpy(copy=True)
               for c in (schema.X, schema.Y, schema.DIAMETER, schema.SCORE, schema.ACCEPTED, schema.REASON, schema.SIZE_BIN)
               if c in picks.columns}
    out = method(picks)
    changed = ""
    if tuple(picks.columns) != columns:
        added, removed = [c for c in picks.columns if c not in columns], [c for c in columns if c not in picks.columns]
        changed = ", ".join([f"added column {c!r}" for c in added] + [f"removed column {c!r}" for c in removed]) or "reordered its columns"
    elif len(picks) != len(index) or not picks.index.equals(index):
        changed = f"its rows ({len(index)} before, {len(picks)} after)"
    else:
        for c, before in watched.items():
            now = picks[c].to_numpy()
            same = np.array_equal(before, now, equal_nan=True) if before.dtype.kind == "f" else pd.Series(before).equals(pd.Series(now))
            if not same:
                changed = f"column {c!r}"
                break
    if changed:
        raise ValueError(f"stage {stage!r} changed the table it was given ({changed}): "
                         f"{COPY_ADVICE.get(stage.partition('/')[0], COPY_ADVICE[''])}")
    if same_rows and isinstance(out, pd.DataFrame):
        check_row_count(picks, out, stage=stage)
    return out


def check_row_count(picks: pd.DataFrame, out: pd.DataFrame, *, stage: str) -> None:
    """Raise a ValueError naming ``stage`` when it returned another number of rows than it was given."""
    if len(out) != len(picks):
        raise ValueError(f"stage {stage!r} returned {len(out)} rows for the {len(picks)} it was given: "
                         "reject picks with lipoframe.schema.reject(picks, mask, reason) instead of dropping them")


def stage_copy(table: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``table`` for a stage, whose changes in place cannot reach ``table``.

    Binning and writers get the whole dataset's table, which the runner
    goes on using (the next writer, the plan files, ``run_summary.json``).
    With pandas' copy-on-write (pandas 3, or the option set in pandas 2) a
    shallow copy is enough and costs nothing; without it, a value set in
    place through ``.loc`` would reach ``table``, so the copy is deep.
    """
    cow = int(pd.__version__.split(".")[0]) >= 3
    if not cow:
        try:
            cow = pd.get_option("mode.copy_on_write") is True
        except (KeyError, pd.errors.OptionError):  # pragma: no cover - an option pandas no longer has
            cow = False
    return table.copy(deep=not cow)


def check_binning_result(picks: pd.DataFrame, result: Any, *, stage: str) -> None:
    """Check what a binning stage returned: a :class:`~lipoframe.stages.BinningResult` whose
    table has every row and column it was given and a ``size_bin`` of the plan's bins (or -1).

    Raises
    ------
    ValueError
        Naming the stage and what is wrong; before, a table without
        ``size_bin`` or a plan without bins went to every writer and the run
        ended with exit code 0 ("0 picks in 0 size bins" for accepted picks).
    """
    if not isinstance(result, BinningResult) or not isinstance(result.picks, pd.DataFrame) \
            or not isinstance(result.plan, ExtractionPlan):
        raise ValueError(f"stage {stage!r} returned {type(result).__name__}, not a lipoframe.stages.BinningResult"
                         " (picks=<DataFrame>, plan=<lipoframe.plan.ExtractionPlan>)")
    out = result.picks
    check_row_count(picks, out, stage=stage)
    check_kept_columns(picks, out, stage=stage)
    if schema.SIZE_BIN not in out.columns:
        raise ValueError(f"stage {stage!r} returned a table without the column {schema.SIZE_BIN!r} "
                         f"(the index of each pick's bin in the plan, {schema.REJECTED_BIN} for none)")
    values = out[schema.SIZE_BIN].to_numpy()
    if values.dtype.kind not in "iu":
        raise ValueError(f"stage {stage!r} returned a {schema.SIZE_BIN!r} of {values.dtype}, not integers")
    known = {b.index for b in result.plan.bins} | {schema.REJECTED_BIN}
    unknown = sorted(set(np.unique(values).tolist()) - known)
    if unknown:
        raise ValueError(f"stage {stage!r} put picks in size_bin {unknown[:5]}, which its plan does not have "
                         f"(its bins: {sorted(known - {schema.REJECTED_BIN}) or 'none'})")


def check_written_inside(paths: Any, out_dir: Path, *, stage: str) -> list[Path]:
    """The files a writer returned as written (a list), checked to be all inside ``out_dir``.

    Only inside the output folder can the runner remove what a failed or
    interrupted writer left, and a later run what this one wrote and it does
    not write again (``written_files.json``). A writer that writes elsewhere
    is caught by the paths it returns (a file it wrote and did not return is
    not seen); the check resolves one folder per file at most. A path is
    judged by the folder it is in, not by where a symbolic link it names
    points: a link the writer made inside ``out_dir`` (to a micrograph, say)
    is a file inside, which the runner can remove.

    Raises
    ------
    ValueError
        Naming the stage and a file outside (which is left as it is: the
        runner removes nothing outside the output folder).
    """
    listed = list(paths) if not isinstance(paths, (str, bytes, os.PathLike)) and hasattr(paths, "__iter__") else None
    if listed is None or not all(isinstance(f, (str, os.PathLike)) for f in listed):
        raise ValueError(f"stage {stage!r} returned {type(paths).__name__}, not the list of the paths it wrote")
    root = Path(out_dir).resolve()
    # A link the writer made is where it is, not where it points.
    outside = [f for f in resolve_all(listed, follow_links=False) if not f.is_relative_to(root)]
    if outside:
        raise ValueError(f"stage {stage!r} wrote {len(outside)} file(s) outside the output folder {root} (e.g. {outside[0]}), "
                         "which lipoframe leaves as they are: write only inside out_dir "
                         "(lipoframe.io.atomic.safe_child(out_dir, ...) refuses any other path)")
    return listed


def check_declared_reasons(before: pd.DataFrame, after: pd.DataFrame, *, declared: tuple[str, ...] | None, stage: str) -> None:
    """Check that a refiner or filter rejected picks only for the reasons it declares.

    ``retry_suppressed`` and the run's reason counts are checked against the
    declared reasons (:attr:`~lipoframe.stages.Stage.reasons`), so a stage
    that gives another one would make a correct ``retry_suppressed`` an
    error and a misspelt one silently match nothing.

    Parameters
    ----------
    before, after : DataFrame
        The table given to the stage and the one it returned, row for row.
    declared : tuple of str or None
        The stage's ``reasons``; ``None`` (not declared) checks nothing.
    stage : str
        ``kind/name`` of the stage, for the message.

    Raises
    ------
    ValueError
        Naming the stage and the reasons it gave but does not declare.
    """
    if declared is None or not len(after):
        return
    was_accepted, old_reason = schema.acceptance(before)  # the two columns only: copying both tables cost more than the check
    now_accepted, new_reason = schema.acceptance(after)
    newly = ~now_accepted & (was_accepted | (old_reason != new_reason))
    given = sorted(set(new_reason[newly].tolist()) - set(declared), key=str)
    if given:
        names = ", ".join("no reason" if r == "" else repr(r) for r in given)
        raise ValueError(f"stage {stage!r} rejected picks with {names}, which its reasons {tuple(declared)} do not declare: "
                         "declare every reason it gives (retry_suppressed and the reports rely on them)")


def check_kept_columns(before: pd.DataFrame, after: pd.DataFrame, *, stage: str) -> None:
    """Check that a filter returned every column it was given (it may add columns, never remove them).

    Raises
    ------
    ValueError
        Naming the stage and the columns it removed (``accepted`` would
        otherwise fail later with a bare ``KeyError``, and another stage's
        column would vanish from every output).
    """
    lost = [c for c in before.columns if c not in after.columns]
    if lost:
        raise ValueError(f"stage {stage!r} returned a table without columns {lost} that it was given: "
                         "a stage adds columns, never removes them")


def _refine(picks: pd.DataFrame, mic: Micrograph, stages: StageSet, ctx: PickContext) -> pd.DataFrame:
    stage = f"refiner/{stages.refiner.name}"
    out = call_table_stage(lambda t: stages.refiner.refine(t, mic, ctx), picks, stage=stage, same_rows=True)
    out = schema.with_acceptance(schema.validate_detections(out, stage=stage, shape=mic.shape))
    check_declared_reasons(picks, out, declared=stages.refiner.reasons, stage=stage)
    return out


def _filter(picks: pd.DataFrame, mic: Micrograph, stages: StageSet, ctx: PickContext) -> pd.DataFrame:
    for f in stages.filters:
        stage = f"filter/{f.name}"
        out = call_table_stage(lambda t: f.apply(t, mic, ctx), picks, stage=stage, same_rows=True)
        out = schema.validate_detections(out, stage=stage, shape=mic.shape)
        check_kept_columns(picks, out, stage=stage)
        check_declared_reasons(picks, out, declared=f.reasons, stage=stage)
        picks = out
    return picks


def retry_candidates(
    detections: pd.DataFrame,
    kept: pd.DataFrame,
    failed: pd.DataFrame,
    others: pd.DataFrame,
    mic: Micrograph,
    stages: StageSet,
    ctx: PickContext,
) -> pd.DataFrame:
    """Suppressed detections that may take the place of picks rejected on their own measurement.

    NMS chooses among overlapping detections by the detector's response
    alone. When the winner then fails on what refinement measures (no edge
    where the detector saw one, a diameter outside the range: e.g. the dark
    interior of a particle, which outscored the particle's own outline),
    the detections it suppressed are the other explanations of that place.

    Parameters
    ----------
    detections : DataFrame
        Every detection, with the ``_candidate`` row numbers.
    kept : DataFrame
        The detections NMS kept (detector columns and centres).
    failed : DataFrame
        The kept picks rejected for a reason in ``stages.retry_suppressed``.
    others : DataFrame
        The other kept picks (accepted, or rejected for another reason:
        junk, population).

    Returns
    -------
    retry : DataFrame
        Detections not kept whose circle contains a failed pick's detected
        centre, or whose centre lies inside a failed pick's detected circle;
        that NMS would not suppress by one of ``others``; and that survive
        NMS among themselves (rows of ``detections``).
    """
    rest = detections.loc[~detections[_CANDIDATE].isin(kept[_CANDIDATE])]
    if not len(failed) or not len(rest):
        return rest.iloc[:0]
    from lipoframe.builtin.filters import centres

    # Where the failed picks were detected (refinement may have moved them).
    at = kept.set_index(_CANDIDATE).loc[failed[_CANDIDATE].to_numpy()]
    fxy, fr = centres(at), at[schema.DIAMETER].to_numpy(dtype=float) / 2.0
    cxy, cr = centres(rest), rest[schema.DIAMETER].to_numpy(dtype=float) / 2.0
    same_place = np.zeros(len(rest), dtype=bool)
    for xy, r in zip(fxy, fr):
        same_place |= np.linalg.norm(cxy - xy, axis=1) < np.maximum(cr, r)
    rest = rest.loc[same_place]
    if not len(rest):
        return rest
    # The standing picks go first: a retried detection never displaces one.
    standing = kept.loc[kept[_CANDIDATE].isin(others[_CANDIDATE])]
    return _not_suppressed_by(rest, standing, mic, stages, ctx, above=detections)


def _not_suppressed_by(
    candidates: pd.DataFrame, standing: pd.DataFrame, mic: Micrograph, stages: StageSet, ctx: PickContext, *, above: pd.DataFrame
) -> pd.DataFrame:
    """The ``candidates`` that NMS keeps next to ``standing`` picks that always win.

    The standing picks (their detector columns) are given a ``response`` and
    ``score`` above every value of ``above`` and are never weak, so a
    candidate never displaces or duplicates one. Rows of ``candidates``
    (with ``_candidate`` numbers), reindexed.
    """
    standing = standing[[c for c in standing.columns if c in candidates.columns]].copy()
    for col in ("response", schema.SCORE):
        if col in standing.columns:
            standing[col] = float(np.abs(above[col].to_numpy(dtype=float)).max()) * 2.0 + 1.0
    if schema.WEAK in standing.columns:
        standing[schema.WEAK] = False
    survivors = stages.nms.suppress(pd.concat([standing, candidates], ignore_index=True), mic, ctx)
    keep = candidates[_CANDIDATE].isin(survivors[_CANDIDATE]) & ~candidates[_CANDIDATE].isin(standing[_CANDIDATE])
    return candidates.loc[keep].reset_index(drop=True)


#: Column: True for picks found after peeling (:func:`peel_again`).
PEELED = "peeled"
#: How far (fraction of its own radius) a pick found after peeling may reach into an accepted particle.
PEEL_OVERLAP = 0.15
#: Radius (fraction) of the accepted particles replaced by background: their blurred rims too.
PEEL_GROW = 1.08
#: A detection after peeling where the first pass had one is new only if peeling raised its score by this factor.
PEEL_GAIN = 1.1


def peel_again(picks: pd.DataFrame, detections: pd.DataFrame, mic: Micrograph, stages: StageSet, ctx: PickContext) -> pd.DataFrame:
    """Detect again with the accepted particles replaced by background.

    A faint particle touching strong ones loses part of its edge to their
    darkness, and the particles raise the noise level its score is measured
    against. With the accepted particles replaced by background
    (:func:`lipoframe.algorithms.peel.replace_discs`, at the finest binning
    the detector works at) both are gone. The new detections are refined on
    the micrograph itself and filtered together with the picks that stand.

    * A detection whose centre lies in an accepted particle, or that reaches
      into one by more than ``PEEL_OVERLAP`` of its radius (before and after
      refinement: ``peel_overlap``), is not a new particle: part of its
      evidence would be the background put there.
    * Scores are put back on the first pass's scale: removing particles
      also lowers the detector's noise estimate, which raises every score,
      noise included. The factor is the median ratio of the two passes'
      scores at the same places away from the accepted particles (at least
      10 such places; otherwise 1); a detection is weak or dropped against
      the detector's own ``threshold``/``weak_threshold`` on that scale.
    * A detection at the place and size of a first-pass detection counts
      only if peeling raised its score by more than ``PEEL_GAIN``; it then
      replaces that detection's (rejected) first-pass pick
      (:func:`_changed_by_peeling`).
    * NMS runs among the new detections, then against the accepted picks,
      which always win.

    Returns
    -------
    picks : DataFrame
        ``picks`` and the new picks (column ``peeled``), filtered again
        together; a pick rejected before stays rejected.
    """
    from lipoframe.algorithms.peel import replace_discs

    picks = picks.assign(**{PEELED: False})
    acc = picks.loc[picks[schema.ACCEPTED].to_numpy(dtype=bool)]
    if not len(acc):
        return picks
    ax, ay, ar = acc[schema.X].to_numpy(float), acc[schema.Y].to_numpy(float), acc[schema.DIAMETER].to_numpy(float) / 2.0

    def peel(signal: np.ndarray, factor: int) -> np.ndarray:
        # At the finest binning the detector asks for; coarser levels are
        # block means of it (Micrograph.signal).
        return replace_discs(signal, to_binned(ay, factor), to_binned(ax, factor), ar * PEEL_GROW / factor, seed=ctx.seed)

    peeled = mic.with_transform(peel)
    new = schema.validate_detections(stages.detector.detect(peeled, ctx), stage=f"detector/{stages.detector.name} (peel)", shape=mic.shape)
    if not len(new):
        return picks
    new = _on_first_pass_scale(new, detections, ax, ay, ar, stages.detector)
    new = new.loc[~_reaches_into(new, ax, ay, ar)].reset_index(drop=True)
    new, judged_again = _changed_by_peeling(new, detections, picks)
    if not len(new):
        return picks
    picks = picks.loc[~picks[_CANDIDATE].isin(judged_again)]
    new[_CANDIDATE] = np.arange(len(new)) + int(detections[_CANDIDATE].max()) + 1
    # No outranking among them: nothing here would confirm such a win (_pick_confirmed).
    new[schema.OUTRANK_FAILED] = True
    new = _not_suppressed_by(stages.nms.suppress(new, mic, ctx), acc, mic, stages, ctx, above=new)
    if not len(new):
        return picks
    new = _refine(new, mic, stages, ctx)
    new = schema.reject(new, _reaches_into(new, ax, ay, ar), "peel_overlap")
    new[PEELED] = True
    if schema.RETRIED in picks.columns:
        new[schema.RETRIED] = False
    out = _filter(pd.concat([picks, new], ignore_index=True), mic, stages, ctx)
    if schema.WEAK in out.columns:
        out[schema.WEAK] = schema.weak_mask(out)
    return out


def _changed_by_peeling(new: pd.DataFrame, first: pd.DataFrame, picks: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
    """The detections after peeling that are new, and the first-pass picks they replace.

    A detection at the place and size of a first-pass detection (centres
    within 0.25 diameters, diameters within 20 %) is only new if peeling
    raised its score by more than ``PEEL_GAIN``: elsewhere the first pass has
    already judged it. When it did, it replaces the first-pass pick of that
    detection (which was rejected: accepted picks were peeled), so the
    place is judged once, on the new evidence.

    Returns
    -------
    new : DataFrame
        The detections kept.
    replaced : ndarray
        ``_candidate`` numbers of the first-pass picks they replace.
    """
    if not len(first) or not len(new):
        return new, np.empty(0, dtype=np.int64)
    j, same = _at_first_pass_detection(new, first, place=0.25, size=0.2)
    gained = new[schema.SCORE].to_numpy(float) > PEEL_GAIN * first[schema.SCORE].to_numpy(float)[j]
    keep = ~same | gained
    replaced = first[_CANDIDATE].to_numpy()[j[same & gained]]
    replaced = replaced[np.isin(replaced, picks[_CANDIDATE].to_numpy())]
    return new.loc[keep].reset_index(drop=True), replaced


def _at_first_pass_detection(new: pd.DataFrame, first: pd.DataFrame, *, place: float, size: float) -> tuple[np.ndarray, np.ndarray]:
    """For each of ``new``: the row of the nearest ``first`` detection, and whether it is the same one.

    The same: centres within ``place`` of the first detection's diameter and
    diameters within ``size`` (relative). ``first`` must not be empty.
    """
    from scipy.spatial import cKDTree

    d = new[schema.DIAMETER].to_numpy(float)
    dist, j = cKDTree(first[[schema.X, schema.Y]].to_numpy(float)).query(new[[schema.X, schema.Y]].to_numpy(float))
    d1 = first[schema.DIAMETER].to_numpy(float)[j]
    return j, (dist < place * d1) & (np.abs(d / d1 - 1.0) < size)


def _reaches_into(df: pd.DataFrame, ax: np.ndarray, ay: np.ndarray, ar: np.ndarray) -> np.ndarray:
    """Circles whose centre lies in an accepted particle or that reach into one by more than PEEL_OVERLAP of their radius."""
    x, y, r = df[schema.X].to_numpy(float), df[schema.Y].to_numpy(float), df[schema.DIAMETER].to_numpy(float) / 2.0
    dist = np.hypot(x[:, None] - ax[None, :], y[:, None] - ay[None, :])
    inside = dist < ar[None, :]
    reach = dist - ar[None, :] - r[:, None] < -PEEL_OVERLAP * r[:, None]
    return (inside | reach).any(axis=1)


def _on_first_pass_scale(new: pd.DataFrame, first: pd.DataFrame, ax, ay, ar, detector: Stage) -> pd.DataFrame:
    """``new`` detections with their scores divided by how much peeling raised them (see :func:`peel_again`)."""
    x, y, d = new[schema.X].to_numpy(float), new[schema.Y].to_numpy(float), new[schema.DIAMETER].to_numpy(float)
    far = (np.hypot(x[:, None] - ax[None, :], y[:, None] - ay[None, :]) > 1.5 * (ar[None, :] + d[:, None] / 2.0)).all(axis=1)
    ratio = 1.0
    if len(first):
        j, same = _at_first_pass_detection(new, first, place=0.05, size=0.1)
        same &= far
        if same.sum() >= 10:
            s1 = first[schema.SCORE].to_numpy(float)[j[same]]
            ratio = max(1.0, float(np.median(new[schema.SCORE].to_numpy(float)[same] / s1)))
    out = new.assign(**{schema.SCORE: new[schema.SCORE].to_numpy(float) / ratio})
    params = getattr(detector, "params", None)
    threshold = getattr(params, "threshold", None)
    if getattr(params, "threshold_method", None) == "mad" and threshold is not None:
        score = out[schema.SCORE].to_numpy(float)
        weak_threshold = getattr(params, "weak_threshold", None)
        keep_below = weak_threshold if weak_threshold is not None and weak_threshold < threshold else threshold
        if schema.WEAK in out.columns or keep_below < threshold:
            out[schema.WEAK] = score < threshold
        out = out.loc[score >= keep_below].reset_index(drop=True)
    return out


def _suppress_again(picks: pd.DataFrame, mic: Micrograph, stages: StageSet, ctx: PickContext) -> pd.DataFrame:
    """Run the NMS stage once more on the accepted picks after refinement.

    Refinement moves centres and changes diameters, so two picks that were
    apart can become duplicates of one particle. Rejected picks are kept as
    they are (flagged, never dropped).
    """
    ok = picks[schema.ACCEPTED].to_numpy(dtype=bool)
    if ok.sum() < 2:
        return picks
    kept = stages.nms.suppress(picks.loc[ok].reset_index(drop=True), mic, ctx)
    return pd.concat([kept, picks.loc[~ok]], ignore_index=True)


@dataclass
class MicJob:
    """One micrograph to pick: its input file, output name and settings fingerprint."""

    path: Path
    name: str
    out_dir: Path
    fingerprint: str
    resume: bool
    verbose: bool


@dataclass
class MicResult:
    """What happened to one micrograph (``status`` is ``ok``, ``skipped`` or ``failed``)."""

    name: str
    path: str
    status: str  # ok | skipped | failed
    n_picks: int = 0
    n_accepted: int = 0
    seconds: float = 0.0
    error: str = ""
    #: Peak resident memory of the process that picked it (MiB; 0 when not measured).
    peak_rss_mb: float = 0.0
    #: Hot or dead pixels replaced before picking (:func:`without_outlier_pixels`).
    replaced_pixels: int = 0
    #: A micrograph that failed on the settings (:class:`~lipoframe.records.SettingsError`, read whole): the problem,
    #: without the file; "" otherwise. A ``watch=true`` session counts it as failed at once.
    settings: str = ""


def _work_paths(out_dir: Path, name: str) -> tuple[Path, Path]:
    return safe_child(out_dir, WORK_DIR, f"{name}.csv"), safe_child(out_dir, WORK_DIR, f"{name}.json")


#: Bytes read at each end of an input file for its content digest (:func:`content_digest`).
DIGEST_BYTES = 64 * 1024


def content_digest(path: str | os.PathLike, size: int) -> str:
    """A cheap digest of a file's content: blake2b of its size and its first and last :data:`DIGEST_BYTES`.

    Two reads of 64 KiB whatever the file's size (a 4096² float32 MRC file
    is 64 MiB): it tells apart two micrographs of the same name, size and
    modification second (``da/x.mrc``, ``db/x.mrc``; the MRC header with its
    statistics and the first and last rows differ), and it stays the same
    when the file is moved or copied.
    """
    h = hashlib.blake2b(str(int(size)).encode(), digest_size=16)
    with open(path, "rb") as f:
        h.update(f.read(DIGEST_BYTES))
        if size > DIGEST_BYTES:
            f.seek(max(DIGEST_BYTES, size - DIGEST_BYTES))
            h.update(f.read(DIGEST_BYTES))
    return h.hexdigest()


def source_stamp(path: str | os.PathLike, *, digest: bool = True) -> dict | None:
    """Identity of an input file: its size, modification time (whole seconds) and
    :func:`content_digest`; None if it is not a regular file that can be read.

    Saved with each result, so that resume redoes a micrograph whose input
    file is another file or was changed: the digest tells apart files of the
    same size and second, the time an edit that leaves both ends of the file
    as they were. No path: a data folder moved (or copied keeping the times,
    ``cp -p``, ``rsync -a``) resumes. ``digest=False``: size and time only,
    without reading the file (for a check repeated often, see
    :mod:`lipoframe.watch`).
    """
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):  # a named pipe would block in open(); the reader refuses it
            return None
        stamp = {"size": int(st.st_size), "mtime": int(st.st_mtime)}
        if digest:
            stamp["digest"] = content_digest(path, st.st_size)
    except OSError:
        return None
    return stamp


def input_stamp(path: str | os.PathLike, name: str, stages: StageSet, *, digest: bool = True) -> dict | None:
    """:func:`source_stamp` of an input file, with that of every file the stages read for it.

    The files a stage reads besides the micrograph (a heatmap, a mask; see
    :meth:`~lipoframe.stages.Stage.extra_inputs`) are under ``extra``, by
    absolute path (None for one that is missing), so that resume redoes a
    micrograph whose map or mask was replaced, added or removed.
    """
    stamp = source_stamp(path, digest=digest)
    if stamp is None:
        return None
    extra = {os.path.abspath(f): source_stamp(f, digest=digest) for f in stages.extra_inputs(Path(path), name)}
    return {**stamp, "extra": extra} if extra else stamp


def input_stamps(items: list[tuple[str | os.PathLike, str]], stages: StageSet) -> list[dict | None]:
    """:func:`input_stamp` of each ``(path, name)``, read by a few threads when there are many.

    The resume check of a run started again stamps every input: two reads
    of 64 KiB each, which on a network file system wait on the server more
    than they use the CPU (and blake2b releases the GIL).
    """
    if len(items) < 64:
        return [input_stamp(path, name, stages) for path, name in items]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(lambda item: input_stamp(item[0], item[1], stages), items))


def load_work(
    out_dir: Path, name: str, fingerprint: str | None = None, *, source: dict | None = None, version: str | None = None,
    info: dict | None = None,
) -> tuple[MicrographMeta, pd.DataFrame] | None:
    """The saved result of one micrograph, or None if absent, incomplete or stale.

    Stale means: made with other per-micrograph settings (``fingerprint``),
    from another input file or one that has changed since (``source``, see
    :func:`input_stamp`), or by another code ``version`` (lipoframe's and
    its plugins', :attr:`StageSet.code_version`). ``info`` is its JSON when
    the caller has read it already (:func:`run_results`), else it is read.
    """
    try:
        csv_path, json_path = _work_paths(out_dir, name)
        if info is None:
            info = json.loads(json_path.read_text())
        if not _work_info_matches(info, fingerprint, source, version):
            return None
        picks = _read_work_csv(csv_path)
        if len(picks) != int(info["n_picks"]):
            return None
        return MicrographMeta.from_dict(info["meta"]), picks
    except (OSError, ValueError, KeyError, TypeError, pd.errors.ParserError):
        return None


def _work_info_matches(info: dict, fingerprint: str | None, source: dict | None, version: str | None) -> bool:
    """Whether a saved result's JSON was made with ``fingerprint``, from ``source`` and by ``version`` (None: any)."""
    if fingerprint is not None and info.get("fingerprint") != fingerprint:
        return False
    # A saved stamp of another form never matches: one without a content digest (an earlier
    # version's: size and whole second only) or none at all cannot tell another file of the
    # same name from the one picked, so that result is picked again.
    if source is not None and info.get("source") != source:
        return False
    return version is None or info.get("lipoframe") == version


def result_identity(info: dict | None) -> str | None:
    """A digest of what one saved result was made from: settings, input file, code version, pixel size, row count.

    From the result's JSON (:func:`save_work`): its ``fingerprint``,
    ``source`` stamp, ``lipoframe`` version, ``n_picks`` and metadata but
    the path. Picking is deterministic, so two saves with the same identity
    hold the same picks (a micrograph picked again with ``runner.resume=false``,
    or whose data folder moved, keeps it); a changed input file or pixel
    size gives another. None for JSON that is no saved result's.
    """
    if not isinstance(info, dict) or not isinstance(info.get("meta"), dict):
        return None
    payload = {k: info.get(k) for k in ("fingerprint", "source", "lipoframe", "n_picks")}
    payload["meta"] = {k: v for k, v in info["meta"].items() if k != "path"}
    return hashlib.blake2b(json.dumps(payload, sort_keys=True, default=str).encode(), digest_size=8).hexdigest()


def read_infos(out_dir: Path, names: list[str]) -> dict[str, dict | None]:
    """The JSON of the saved result of each of ``names`` (None where it is missing or unreadable)."""
    infos: dict[str, dict | None] = {}
    for name in names:
        try:
            info = json.loads(_work_paths(Path(out_dir), name)[1].read_text())
        except (OSError, ValueError):
            info = None
        infos[name] = info if isinstance(info, dict) else None
    return infos


def saved_counts(
    out_dir: Path, wanted: dict[str, dict | None], fingerprint: str | None = None, *, version: str | None = None,
    infos: dict[str, dict | None] | None = None,
) -> dict[str, tuple[MicrographMeta, int, int]]:
    """Metadata, rows and accepted rows of the saved results :func:`load_work` would return.

    ``wanted`` maps each name to the source stamp to check (see
    :func:`load_work`); the names whose result it would refuse are not in
    the answer. The tables are parsed in one go (:func:`_read_work_at_once`)
    where they allow it, else one by one with :func:`load_work`: on resume,
    a parse per saved micrograph cost more than the dataset step itself.
    ``infos``: the JSON of each of ``wanted`` when read already (:func:`read_infos`).
    """
    # the JSON of each result to read, read once
    infos = read_infos(out_dir, list(wanted)) if infos is None else infos
    infos = {name: info for name, info in infos.items()
             if name in wanted and info is not None and _work_info_matches(info, fingerprint, wanted[name], version)}
    names = list(infos)
    at_once = _read_work_at_once(out_dir, names, infos=infos) if names else None
    if at_once is not None and at_once[0][schema.ACCEPTED].dtype == bool:
        picks, metas, rows = at_once
        ends = np.cumsum(rows)
        accepted = np.concatenate([[0], np.cumsum(picks[schema.ACCEPTED].to_numpy())])
        return {n: (metas[n], int(r), int(accepted[e] - accepted[e - r])) for n, r, e in zip(names, rows, ends)}
    counts = {}
    for name in names:
        done = load_work(out_dir, name, fingerprint, source=wanted[name], version=version, info=infos[name])
        if done is not None:
            meta, picks = done
            counts[name] = (meta, len(picks), int(picks[schema.ACCEPTED].sum()) if len(picks) else 0)
    return counts


def _read_work_csv(source) -> pd.DataFrame:
    """Parse a per-micrograph table written by :func:`save_work` (a path or a text buffer)."""
    picks = pd.read_csv(source, keep_default_na=False, na_values=[""], dtype={schema.MICROGRAPH: str, schema.REASON: str})
    picks[schema.REASON] = picks[schema.REASON].fillna("").astype(object)
    picks[schema.MICROGRAPH] = picks[schema.MICROGRAPH].astype(object)
    return picks


def save_work(
    out_dir: Path, meta: MicrographMeta, picks: pd.DataFrame, fingerprint: str, seconds: float, *, source: dict | None = None,
    version: str | None = None, read_flip_y: bool | None = None, replaced_pixels: int = 0, listed: bool = False,
) -> None:
    """Write one micrograph's result: the CSV first, then the JSON that marks it complete.

    ``version`` is the code that made it (:attr:`StageSet.code_version`;
    default: lipoframe's version). ``read_flip_y``: the reader's ``flip_y``
    (:data:`READ_FLIP_Y`; ``meta.flip_y`` is the run's, :func:`flip_y_for`).
    ``replaced_pixels``: the hot or dead pixels replaced before picking
    (:data:`REPLACED_PIXELS`, recorded when there were any). ``listed``: the
    pixel size is a micrographs STAR's (:data:`LISTED_PIXEL_SIZE`, recorded when it is).
    """
    from lipoframe import __version__
    from lipoframe.builtin.writers import write_csv

    csv_path, json_path = _work_paths(out_dir, meta.name)
    write_csv(picks, csv_path, float_format=WORK_FLOAT_FORMAT)
    info = {
        "meta": meta.to_dict(),
        "fingerprint": fingerprint,
        "n_picks": int(len(picks)),
        "seconds": round(seconds, 4),
        "source": source,
        "lipoframe": version or __version__,
        **({READ_FLIP_Y: bool(read_flip_y)} if read_flip_y is not None else {}),
        **({REPLACED_PIXELS: int(replaced_pixels)} if replaced_pixels else {}),
        **({LISTED_PIXEL_SIZE: True} if listed else {}),
    }
    write_text(json_path, json.dumps(info, indent=1))


def repoint_work(out_dir: Path, meta: MicrographMeta, path: str | os.PathLike) -> bool:
    """Record ``path`` as the input of a saved result that resume takes for it; whether it was another.

    Resume knows a file by its content (:func:`source_stamp`), not by its
    path, so a moved data folder resumes; the result then names the file
    where it is now, as the exports (a STAR file's micrograph names), the
    report and ``watch`` read it.
    """
    where = os.path.abspath(path)
    if meta.path == where:
        return False
    json_path = _work_paths(out_dir, meta.name)[1]
    try:
        info = json.loads(json_path.read_text())
        info["meta"]["path"] = where
    except (OSError, ValueError, KeyError, TypeError):
        return False
    write_text(json_path, json.dumps(info, indent=1))
    return True


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (0 where unsupported)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return 0.0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0


_WORKER_STATE: dict[str, Any] = {}


def _init_worker(cfg: LipoframeConfig, stages: StageSet) -> None:
    import signal

    # Ctrl-C is handled by the main process, which lets the micrographs in
    # progress finish (and be saved) before it stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _WORKER_STATE["cfg"] = cfg
    _WORKER_STATE["stages"] = stages
    exit_with_parent()


#: Seconds between a worker's checks that the process that started it is still there.
PARENT_CHECK_SECONDS = 1.0


def exit_with_parent() -> None:
    """End this worker process once the process that started it is gone.

    A run killed outright (SIGKILL, the out-of-memory killer) leaves its
    worker processes behind: a forked worker waits for its next micrograph
    on a pipe whose other end it holds itself, so it would wait for ever
    (and a blocked one would write its micrograph's result into the folder
    a new run is writing). A daemon thread watches the parent's pid.
    """
    import threading

    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_CHECK_SECONDS)
        os._exit(1)

    threading.Thread(target=watch, name="lipoframe-parent-watch", daemon=True).start()


def failing_stage(tb) -> str:
    """``kind/name`` of the stage whose method raised, from a traceback, or ``""``.

    The outermost frame of a :class:`~lipoframe.stages.Stage` method is the
    stage the runner called (a stage that calls another one inside is the
    one named).

    Parameters
    ----------
    tb : traceback or None
        ``exc.__traceback__``.
    """
    while tb is not None:
        owner = tb.tb_frame.f_locals.get("self")
        if isinstance(owner, Stage) and owner.kind and owner.name:
            return f"{owner.kind}/{owner.name}"
        tb = tb.tb_next
    return ""


def _failure(job: MicJob, message: str, seconds: float = 0.0) -> MicResult:
    return MicResult(job.name, str(job.path), "failed", seconds=seconds, error=message)


def pixel_size_listed(path: str | os.PathLike, cfg: LipoframeConfig, stages: StageSet) -> bool:
    """Whether this run reads micrograph ``path`` at the pixel size a micrographs STAR among its inputs gives it
    (``pixel_size=`` not given: :meth:`StageSet.read`)."""
    return cfg.pixel_size is None and stages.listed_pixel_size(path) is not None


def pixel_size_source_changed(meta: MicrographMeta, info: dict | None, path: str | os.PathLike, cfg: LipoframeConfig,
                              stages: StageSet) -> bool:
    """Whether a saved result (metadata ``meta``, JSON ``info``) may have been picked at another pixel size than this run
    reads ``path`` at, though made with the same settings: for :func:`reused_at_pixel_size` to settle.

    Neither a micrographs STAR's pixel size nor the header's is a setting of
    the run's fingerprint. A result picked at another pixel size than the
    STAR now gives (an optics table corrected since), and one picked at a
    STAR's (:data:`LISTED_PIXEL_SIZE`) by a run whose inputs give it none
    from a STAR now (the same files given as a folder or a glob: their
    headers' then, as a new run's), are.
    """
    listed = stages.listed_pixel_size(path) if cfg.pixel_size is None else None  # given: it is in the fingerprint
    if listed is None:
        return listed_pixel_size_dropped(info, path, cfg, stages)
    return not math.isclose(meta.pixel_size or 0.0, listed, rel_tol=1e-6)


def listed_pixel_size_dropped(info: dict | None, path: str | os.PathLike, cfg: LipoframeConfig, stages: StageSet) -> bool:
    """Whether a saved result (JSON ``info``) was picked at a micrographs STAR's pixel size (:data:`LISTED_PIXEL_SIZE`)
    that this run does not read ``path`` at: ``pixel_size=`` not given, and no STAR among its inputs lists it (the same
    file given as a folder or a glob), so its header's is read, as a new run's."""
    return (bool(isinstance(info, dict) and info.get(LISTED_PIXEL_SIZE)) and cfg.pixel_size is None
            and stages.listed_pixel_size(path) is None)


def angstrom_lengths(cfg: LipoframeConfig) -> list[str]:
    """The per-micrograph settings of ``cfg`` converted from Å to pixels with the pixel size, as ``lipoframe plan`` names them.

    ``dmin``/``dmax`` with ``units=A``, and each stage option in Å (``units: A``,
    e.g. ``detector=membrane``'s thickness); see
    :func:`lipoframe.plancmd.lengths_in_angstrom`.
    """
    from lipoframe.plancmd import lengths_in_angstrom

    settings = cfg.per_micrograph_settings()
    return lengths_in_angstrom({**settings, "filter": dict(settings["filter"])})


def pixel_size_dependence(cfg: LipoframeConfig, stages: StageSet, path: str | os.PathLike) -> str:
    """Why the picks of micrograph ``path`` may depend on its pixel size; ``""`` when they cannot.

    They do when a length is converted from Å to pixels with it: the
    diameter range with ``units=A``, or a stage option in Å
    (:func:`angstrom_lengths`). lipoframe's own per-micrograph stages use
    the pixel size for nothing else (with ``units=px`` their picks,
    positions, diameters in pixels and scores, are the same at any pixel
    size); a plugin's stage is given it (``ctx.pixel_size``,
    ``mic.meta.pixel_size``) and may use it, so its picks are taken to
    depend on it.
    """
    in_angstrom = angstrom_lengths(cfg)
    if in_angstrom:
        return f"{'; '.join(in_angstrom)}: lengths in Å, converted to pixels with it"
    try:
        reader = stages.reader_for(Path(path))
    except InputError:  # picking says why
        reader = stages.reader
    for stage in (reader, *stages.picking_stages()[1:]):
        if why := plugin_stage_why(stage.kind, stage.name, type(stage)):
            return why
    return ""


def plugin_stage_why(kind: str, name: str, cls: type) -> str:
    """Why stage ``name`` of ``kind`` (class ``cls``) may use the pixel size: a plugin's is given it; ``""`` for lipoframe's own."""
    return "" if cls.__module__.startswith("lipoframe.") else f"the {kind} {name!r} is a plugin's, which may use it"


def run_pixel_size(path: str | os.PathLike, cfg: LipoframeConfig, stages: StageSet) -> float | None | bool:
    """The pixel size this run reads micrograph ``path`` at (:func:`read_named`), without reading the image when it can.

    ``pixel_size=``, else the one a micrographs STAR among the inputs gives
    it, else its header's (None when it gives none; False when it cannot be
    read, see :func:`header_pixel_size`).
    """
    if cfg.pixel_size is not None:
        return float(cfg.pixel_size)
    listed = stages.listed_pixel_size(path)
    return listed if listed is not None else header_pixel_size(path, stages)


@dataclass
class PixelSizeReuse:
    """A saved result made with this run's per-micrograph settings but at another pixel size (:func:`reused_at_pixel_size`)."""

    #: The pixel size it was picked at, and this run's (Å/px; None: unknown).
    old: float | None
    new: float | None
    #: Why it is picked again (:func:`pixel_size_dependence`); ``""`` when it is re-used.
    why: str = ""
    #: When re-used: its metadata and picks at the new pixel size, as saved again.
    meta: MicrographMeta | None = None
    picks: pd.DataFrame | None = None
    #: Its pixel size was a micrographs STAR's, and this run's inputs give it none from a STAR: the header's is used.
    star_dropped: bool = False


def with_diameter_A(picks: pd.DataFrame, pixel_size: float | None) -> pd.DataFrame:
    """``picks`` with ``diameter_A``: ``diameter_px`` as a saved table holds it times ``pixel_size`` (NaN when None).

    From the diameter as saved (:data:`WORK_FLOAT_FORMAT`), not the one
    before that rounding, so that a result re-used at another pixel size
    (:func:`reused_at_pixel_size`, ``lipoframe plan pixel_size=``) has the
    column of one picked at it. ``picks`` is not changed.
    """
    saved = np.array([float(WORK_FLOAT_FORMAT % v) for v in picks[schema.DIAMETER].to_numpy(dtype=float).tolist()], dtype=float)
    return picks.assign(**{schema.DIAMETER_A: saved * float(pixel_size) if pixel_size else np.nan})


class PixelSizeResume:
    """What :func:`reused_at_pixel_size` needs of a run, worked out once for all its micrographs.

    The run's per-micrograph settings and their fingerprint at each pixel
    size a saved result was picked at, and why picks may depend on the
    pixel size (:func:`pixel_size_dependence`, which depends on a
    micrograph only through the reader its suffix chooses).
    """

    def __init__(self, cfg: LipoframeConfig, stages: StageSet) -> None:
        self.cfg, self.stages = cfg, stages
        self._settings: dict | None = None
        self._fingerprints: dict[float | None, str] = {}
        self._why: dict[str, str] = {}

    def fingerprints(self, pixel_size: float | None) -> set[str]:
        """The fingerprints a result saved at ``pixel_size`` has when made with this run's settings but ``pixel_size=``:
        not given, or given as that pixel size."""
        if self._settings is None:
            self._settings = self.cfg.per_micrograph_settings()
        for p in (None, pixel_size):
            if p not in self._fingerprints:
                self._fingerprints[p] = settings_fingerprint({**self._settings, "pixel_size": p})
        return {self._fingerprints[None], self._fingerprints[pixel_size]}

    def why(self, path: str | os.PathLike) -> str:
        """:func:`pixel_size_dependence` of micrograph ``path``."""
        key = file_suffix(path)
        if key not in self._why:
            self._why[key] = pixel_size_dependence(self.cfg, self.stages, path)
        return self._why[key]

    def saved_meta(self, info: dict | None, fingerprint: str, *, source: dict | None, version: str | None) -> MicrographMeta | None:
        """The metadata of a saved result (its JSON, ``info``) that differs from this run's (``fingerprint``) only by the
        pixel size, as :func:`reused_at_pixel_size` takes them; None for any other (or none)."""
        try:
            meta = MicrographMeta.from_dict(info["meta"])
        except (ValueError, KeyError, TypeError, AttributeError):
            return None
        if not _work_info_matches(info, None, source, version):
            return None
        if info.get("fingerprint") != fingerprint and info.get("fingerprint") not in self.fingerprints(meta.pixel_size):
            return None
        return meta


def reused_at_pixel_size(
    out_dir: Path, name: str, path: str | os.PathLike, fingerprint: str, *, source: dict | None, version: str | None,
    cfg: LipoframeConfig, stages: StageSet, info: dict | None = None, resume: PixelSizeResume | None = None,
) -> PixelSizeReuse | None:
    """The saved result of ``name`` when it differs from this run's only by the pixel size; re-used when that cannot matter.

    Such a result has this run's per-micrograph settings but ``pixel_size=``
    (given at the pixel size it was picked at, or not given) or the pixel
    size a micrographs STAR gives or gave (:func:`pixel_size_source_changed`),
    and the same input file and code version. Where the picks do not depend on
    the pixel size (:func:`pixel_size_dependence`; or it is the same) it is
    saved again at this run's: its ``diameter_A`` (:func:`with_diameter_A`),
    its metadata and this run's ``fingerprint``, as picking it again would
    (the earlier JSON removed, the CSV, then the JSON that marks it complete:
    stopped half-way, it is picked again). Else it is left for picking
    again, with the reason.
    None for any other result (or none). ``info``: its JSON when read
    already (:func:`read_infos`); ``resume``: what the run's other
    micrographs worked out already (its settings' fingerprints).
    """
    resume = resume or PixelSizeResume(cfg, stages)
    csv_path, json_path = _work_paths(out_dir, name)
    try:
        info = json.loads(json_path.read_text()) if info is None else info
    except (OSError, ValueError):
        return None
    meta = resume.saved_meta(info, fingerprint, source=source, version=version)
    if meta is None:
        return None
    new = run_pixel_size(path, cfg, stages)
    if new is False:  # unreadable: picking it says why
        return None
    listed = pixel_size_listed(path, cfg, stages)
    star_dropped = listed_pixel_size_dropped(info, path, cfg, stages)
    same = new == meta.pixel_size
    why = "" if same else resume.why(path)
    if why:
        return PixelSizeReuse(meta.pixel_size, new, why, star_dropped=star_dropped)
    done = load_work(out_dir, name, info=info)
    if done is None:
        return None
    picks = done[1] if same else with_diameter_A(done[1], new)
    meta = replace(meta, pixel_size=new)
    if not same:
        from lipoframe.builtin.writers import write_csv

        # The earlier JSON goes first: left beside the new table by a run stopped before the new JSON, it would
        # mark complete, at the earlier pixel size, a table of this one's diameter_A (the row count matches).
        json_path.unlink(missing_ok=True)
        write_csv(picks, csv_path, float_format=WORK_FLOAT_FORMAT)
    info = {k: v for k, v in info.items() if k != LISTED_PIXEL_SIZE}
    write_text(json_path, json.dumps({**info, "meta": meta.to_dict(), "fingerprint": fingerprint,
                                      **({LISTED_PIXEL_SIZE: True} if listed else {})}, indent=1))
    return PixelSizeReuse(done[0].pixel_size, new, meta=meta, picks=picks, star_dropped=star_dropped)


def pixel_size_change_notes(changed: list[PixelSizeReuse]) -> list[str]:
    """What a run did with the micrographs picked before at another pixel size (logged): re-used, or picked again and why.

    When that pixel size was a micrographs STAR's and this run's inputs give
    them none from a STAR (the same files given as a folder or a glob), a
    warning more says so, and how to keep the STAR's: the headers' is used
    now, as a new run from these inputs would.
    """

    def sizes(values) -> str:
        shown = sorted({"none" if v is None else f"{v:g}" for v in values})
        return shown[0] if len(shown) == 1 else "{" + ", ".join(shown) + "}"

    notes = []
    reused = [c for c in changed if not c.why and c.old != c.new]
    if reused:
        notes.append(f"pixel size changed ({sizes(c.old for c in reused)} -> {sizes(c.new for c in reused)} Å/px) for "
                     f"{len(reused)} micrograph(s) picked before: their picks are re-used, as picking in pixels (units=px) "
                     "does not depend on it; diameter_A and everything in Å (exports, plan, report) are recomputed")
    by_why: dict[str, list[PixelSizeReuse]] = {}
    for c in changed:
        if c.why:
            by_why.setdefault(c.why, []).append(c)
    for why, again in by_why.items():
        notes.append(f"pixel size changed ({sizes(c.old for c in again)} -> {sizes(c.new for c in again)} Å/px) for "
                     f"{len(again)} micrograph(s) picked before: they are picked again, as their picks depend on it ({why})")
    for note in notes:
        log.info(note)
    dropped = [c for c in changed if c.star_dropped and c.old != c.new]
    if dropped:
        notes.append(f"{len(dropped)} micrograph(s) picked before at the pixel size a micrographs STAR gave them "
                     f"({sizes(c.old for c in dropped)} Å/px) are now at their headers' ({sizes(c.new for c in dropped)} Å/px), "
                     "as no STAR among this run's inputs lists them: to keep the STAR's, give the STAR as input= "
                     "(or pixel_size=<Å/px>)")
        log.warning(notes[-1])
    return notes


#: Micrographs of one STAR pixel size whose header :func:`listed_pixel_size_notes` tries before it gives up.
_HEADER_TRIES = 3


def header_pixel_size(path: str | os.PathLike, stages: StageSet) -> float | None | bool:
    """The pixel size (Å/px) the header of micrograph ``path`` gives, None if it gives none; False if it cannot be read.

    Read quietly with the run's reader for it (its own warnings come when the
    micrograph is picked), for the notes that compare it with a pixel size
    given otherwise; a micrograph that cannot be read fails when it is picked.
    """
    from lipoframe.polaritycheck import quiet

    try:
        refuse_special_file(path)
        with quiet():
            return stages.reader_for(Path(path)).read(Path(path), pixel_size=None).meta.pixel_size
    except Exception:  # noqa: BLE001 - reported when the micrograph is picked
        return False


def listed_pixel_size_notes(stages: StageSet, cfg: LipoframeConfig) -> list[str]:
    """A warning per micrographs STAR (and pixel size it gives) that disagrees with the micrographs' headers.

    The STAR's pixel size is used (:meth:`StageSet.read`), as RELION's jobs
    use it; a header that says otherwise by more than 1 % may mean a wrong
    optics table, or micrographs rewritten since. For each pixel size a STAR
    among the inputs gives, the header of the first listed micrograph that
    can be read is compared (one read, not one per micrograph, and one line
    for the dataset); a header without a pixel size is not compared. Nothing
    is said when ``pixel_size=`` is given, which wins over both. Each line is
    logged as a warning.
    """
    from lipoframe.inputlists import read_list

    if cfg.pixel_size is not None:
        return []
    notes = []
    for spec in stages.input_lists:
        try:
            listed = read_list(spec)
        except InputError:  # reported with the inputs
            continue
        tries: dict[float, int] = {}
        for path in listed.paths:
            px = listed.pixel_sizes.get(os.path.abspath(path))
            if px is None or tries.get(px, 0) >= _HEADER_TRIES or not os.path.isfile(path):
                continue
            tries[px] = tries.get(px, 0) + 1
            header = header_pixel_size(path, stages)
            if header is False:
                continue
            tries[px] = _HEADER_TRIES
            if header and abs(header - px) > 0.01 * px:
                notes.append(f"{spec}: the STAR gives {px:g} Å/px but the header of {path} gives {header:g} Å/px; using the "
                             f"STAR's {px:g} Å/px, as RELION does (give pixel_size=<Å/px> to use another)")
                log.warning(notes[-1])
    return notes


def flip_y_for(setting: bool | None, read_flip_y: bool) -> bool:
    """Whether the exports flip a micrograph's rows: the run's ``flip_y`` setting, or the reader's (TIFF) when it is None."""
    return bool(read_flip_y) if setting is None else bool(setting)


def with_flip_y(out_dir: Path, metas: dict[str, MicrographMeta], infos: dict[str, dict | None],
                setting: bool | None) -> dict[str, MicrographMeta]:
    """``metas`` with the ``flip_y`` of the run's ``setting``; the saved results that said otherwise are rewritten.

    ``flip_y`` changes the exports, not the picks: a run continued, a plan or
    a merge with another value keeps the saved picks and exports every
    micrograph in the one frame. Each saved result records the exports'
    value (``meta.flip_y``, which ``lipoframe evaluate`` reads) and the
    reader's (:data:`READ_FLIP_Y`; a result saved before it existed has the
    reader's as ``meta.flip_y``). ``infos``: the results' JSON (:func:`read_infos`).
    """
    out = {}
    for name, meta in metas.items():
        info = infos.get(name)
        read = bool(info.get(READ_FLIP_Y, meta.flip_y)) if isinstance(info, dict) else meta.flip_y
        want = flip_y_for(setting, read)
        if want != meta.flip_y and isinstance(info, dict) and isinstance(info.get("meta"), dict):
            info["meta"]["flip_y"], info[READ_FLIP_Y] = want, read
            write_text(_work_paths(out_dir, name)[1], json.dumps(info, indent=1))
        out[name] = replace(meta, flip_y=want)
    return out


def tiff_rows_notes(metas: dict[str, MicrographMeta], cfg: LipoframeConfig, out_dir: Path, *,
                    told: set[str] | None = None) -> list[str]:
    """One note (logged) when ``flip_y`` is null and the exports flip the rows of some micrographs (TIFF inputs).

    ``told``: the kinds of note a ``watch=true`` session has logged already
    (:data:`TIFF_ROWS` once this one is): the note is logged once per session,
    not at every update of its outputs; it is returned every time.
    """
    n = sum(m.flip_y for m in metas.values())
    if cfg.flip_y is not None or not n:
        return []
    note = (f"{TIFF_ROWS} the {n} TIFF micrograph(s) (y -> ny-1-y), as RELION reads TIFF files; if the particles will be "
            "extracted from micrographs stored unflipped (e.g. the MRC originals of TIFFs written by topaz denoise), "
            f"use flip_y=false (`lipoframe plan {shlex.quote(str(out_dir))} flip_y=false` re-exports without picking again)")
    if told is None or TIFF_ROWS not in told:
        log.info(note)
    if told is not None:
        told.add(TIFF_ROWS)
    return [note]


def given_pixel_size_notes(paths: list[Path], stages: StageSet, cfg: LipoframeConfig) -> list[str]:
    """A warning when ``pixel_size=`` differs from the pixel size the micrographs' headers give.

    The given pixel size is used, as documented; a header that says
    otherwise by more than 1 % may mean micrographs binned since the pixel
    size was noted (a denoiser's or MotionCorr's output at bin 2), which
    puts every diameter and box off by that factor without any other sign.
    The header of the first of the first :data:`_HEADER_TRIES` micrographs
    that can be read and gives a pixel size is compared (one read for the
    dataset); a header without one, or with the placeholder 1 Å/px
    (:func:`placeholder_pixel_size_notes`), is not compared. Logged as a
    warning.
    """
    if cfg.pixel_size is None:
        return []
    for path in paths[:_HEADER_TRIES]:
        header = header_pixel_size(path, stages)
        if header is False or header is None:
            continue
        if header == 1.0 or abs(header - cfg.pixel_size) <= 0.01 * cfg.pixel_size:
            return []
        ratio = header / cfg.pixel_size
        why = ": micrographs binned since?" if ratio > 1.5 else ""
        note = (f"pixel_size={cfg.pixel_size:g} Å/px was given, but the header of {path} gives {header:g} Å/px "
                f"({ratio:.3g} times the given one{why}); the given {cfg.pixel_size:g} Å/px is used: if the header is "
                "right, run again without pixel_size=")
        log.warning(note)
        return [note]
    return []


def read_named(path: str | os.PathLike, name: str, cfg: LipoframeConfig, stages: StageSet) -> Micrograph:
    """Micrograph ``path`` read for picking under its run name ``name``, in the run's polarity.

    While picking, the file is named as the input spec gave it (relative
    for a relative folder or glob), as the reader and the runner name it in
    their messages; the saved result has the absolute path (``lipoframe
    plan/report/merge`` may run from another folder).
    """
    mic = stages.read(Path(path), pixel_size=cfg.pixel_size)
    meta = MicrographMeta(name=name, path=str(path), shape=mic.meta.shape, pixel_size=mic.meta.pixel_size, flip_y=mic.meta.flip_y)
    return Micrograph(meta=meta, image=mic.image, polarity=cfg.polarity)


#: Key of a saved result's JSON: the hot or dead pixels replaced before picking (:func:`without_outlier_pixels`).
REPLACED_PIXELS = "replaced_pixels"


def without_outlier_pixels(mic: Micrograph) -> tuple[Micrograph, int]:
    """``mic`` with its hot and dead pixels replaced, and how many they were (a warning names the file).

    :func:`lipoframe.algorithms.outliers.replace_isolated_outliers`: isolated
    pixels (clusters of at most :data:`~lipoframe.algorithms.outliers.MAX_CLUSTER`)
    more than :data:`~lipoframe.algorithms.outliers.OUTLIER_SIGMAS` robust
    standard deviations from the background and from their neighbourhood
    take the median of their 5 x 5 neighbourhood. A micrograph without
    any is returned as it is (the same object: its picks do not change);
    a volume too.
    """
    if mic.image.ndim != 2:
        return mic, 0
    image, n = replace_isolated_outliers(mic.image)
    if not n:
        return mic, 0
    log.warning("%s: %d hot or dead pixel(s) replaced by the median of their neighbourhood before picking (isolated "
                "pixels, or clusters of up to %d, more than %g robust standard deviations from the background and "
                "from the pixels around them)", mic.meta.path or mic.name, n, MAX_CLUSTER, OUTLIER_SIGMAS)
    return Micrograph(meta=mic.meta, image=image, polarity=mic.polarity), n


def run_job(job: MicJob, cfg: LipoframeConfig | None = None, stages: StageSet | None = None) -> MicResult:
    """Read, pick and save one micrograph; never raises for bad input."""
    cfg = cfg or _WORKER_STATE["cfg"]
    stages = stages or _WORKER_STATE["stages"]
    t0 = time.perf_counter()
    source = input_stamp(job.path, job.name, stages)
    try:
        if job.resume and source is not None:  # a missing input is read (and fails), never resumed
            version = stages.code_version or None
            info = read_infos(job.out_dir, [job.name])[job.name]
            done = None if info is None else load_work(job.out_dir, job.name, job.fingerprint, source=source, version=version,
                                                       info=info)
            if done is not None and pixel_size_source_changed(done[0], info, job.path, cfg, stages):
                done = None
            if done is None and info is not None:  # one picked at another pixel size, re-used where that cannot change its picks
                again = reused_at_pixel_size(job.out_dir, job.name, job.path, job.fingerprint, source=source, version=version,
                                             cfg=cfg, stages=stages, info=info)
                done = None if again is None or again.meta is None else (again.meta, again.picks)
            if done is not None:
                repoint_work(job.out_dir, done[0], job.path)
                picks = done[1]
                return MicResult(job.name, str(job.path), "skipped", len(picks), int(picks[schema.ACCEPTED].sum()) if len(picks) else 0)
        mic, replaced = without_outlier_pixels(read_named(job.path, job.name, cfg, stages))
        meta = mic.meta
        ctx = pick_context(meta, cfg)
        # diameter_A again, from diameter_px as saved: as a result re-used at another pixel size has it
        # (lipoframe.pick keeps the unrounded product).
        picks = with_diameter_A(process_micrograph(mic, stages, ctx), meta.pixel_size)
        del mic  # release the memory map / image before saving
        seconds = time.perf_counter() - t0
        read_flip_y = meta.flip_y
        meta = replace(meta, path=os.path.abspath(job.path), flip_y=flip_y_for(cfg.flip_y, read_flip_y))
        save_work(job.out_dir, meta, picks, job.fingerprint, seconds, source=source, version=stages.code_version or None,
                  read_flip_y=read_flip_y, replaced_pixels=replaced, listed=pixel_size_listed(job.path, cfg, stages))
        return MicResult(job.name, str(job.path), "ok", len(picks), int(picks[schema.ACCEPTED].sum()), seconds, peak_rss_mb=peak_rss_mb(),
                         replaced_pixels=replaced)
    except SettingsError as exc:
        return replace(_failure(job, str(exc), time.perf_counter() - t0), settings=exc.problem)
    except InputError as exc:
        return _failure(job, str(exc), time.perf_counter() - t0)
    except MemoryError:
        return _failure(job, f"{job.path}: out of memory (use fewer runner.workers)", time.perf_counter() - t0)
    except Exception as exc:  # noqa: BLE001 - one bad micrograph must not stop the run
        first = str(exc).splitlines()[0] if str(exc) else ""
        stage = failing_stage(exc.__traceback__)
        # A message that already names the file (e.g. a stage's ValueError) is not prefixed twice.
        msg = first if first.startswith(f"{job.path}: ") else f"{job.path}: {stage + ': ' if stage else ''}{type(exc).__name__}: {first}"
        if job.verbose:
            msg += "\n" + traceback.format_exc()
        return _failure(job, msg, time.perf_counter() - t0)


def _start_method() -> str:
    """``fork`` (fast, no re-imports) unless other threads are running, where fork is unsafe."""
    import multiprocessing as mp
    import threading

    methods = mp.get_all_start_methods()
    if "fork" in methods and threading.active_count() == 1:
        return "fork"
    return "forkserver" if "forkserver" in methods else "spawn"


#: Modules the dataset-level stage imports after picking (matplotlib alone
#: takes ~0.3 s). While worker processes pick, the parent process is idle: it
#: imports them then, in a background thread (see :func:`execute_jobs`).
DATASET_MODULES = ("matplotlib.figure", "matplotlib.backends.backend_agg", "lipoframe.planfiles")


def _import_in_background(names: tuple[str, ...]):
    """Start a daemon thread that imports ``names``; returns it (join before importing them elsewhere).

    Errors are ignored here: the stage that needs a module imports it again
    and reports the error there.
    """
    import importlib
    import threading

    def run() -> None:
        for name in names:
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001 - reported by the real import later
                pass

    thread = threading.Thread(target=run, name="lipoframe-prefetch", daemon=True)
    thread.start()
    return thread


@contextlib.contextmanager
def _finish_current_on_interrupt():
    """While picking in this process: the first Ctrl-C or SIGTERM lets the micrograph in
    progress finish (the caller checks the yielded list, true once asked to stop), as
    worker processes do; a second one stops at once. Only in the main thread."""
    import signal
    import threading

    asked: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield asked
        return

    def handler(signum, frame):
        if asked:
            raise KeyboardInterrupt
        asked.append(signum)
        log.warning("interrupted: finishing the micrograph in progress (again to stop at once)")

    # A signal ignored (a run started with & from a script ignores Ctrl-C) stays ignored.
    sigs = [sig for sig in (signal.SIGINT, signal.SIGTERM) if signal.getsignal(sig) not in (signal.SIG_IGN, None)]
    old = {sig: signal.signal(sig, handler) for sig in sigs}
    try:
        yield asked
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


def execute_jobs(
    jobs: list[MicJob],
    cfg: LipoframeConfig,
    stages: StageSet,
    workers: int,
    on_result: Callable[[MicResult], None],
    *,
    prefetch: tuple[str, ...] = DATASET_MODULES,
) -> None:
    """Run ``jobs`` in ``workers`` processes, calling ``on_result`` in this process as each ends.

    At most ``workers`` micrographs are in flight, so memory is bounded by
    ``workers`` times the cost of one micrograph. If a worker process dies
    (killed, out of memory, a crash in a library), the micrographs it may
    have been picking are retried one at a time in a fresh process, so only
    the culprit fails. On Ctrl-C the micrographs in progress are finished
    and reported, the rest are not started, and KeyboardInterrupt is re-raised.

    With worker processes, this process imports the ``prefetch`` modules
    (those the dataset-level stage will need) in a background thread while
    the workers pick, once they have been started; it is joined before
    returning. Picking in this process (``workers <= 1``) prefetches nothing:
    the thread would compete with picking for the interpreter lock.
    """
    if workers <= 1 or len(jobs) <= 1:
        with _finish_current_on_interrupt() as stop:
            for job in jobs:
                on_result(run_job(job, cfg, stages))
                if stop:
                    raise KeyboardInterrupt
        return
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, wait
    from concurrent.futures.process import BrokenProcessPool

    queue: deque[MicJob] = deque(jobs)
    suspects: deque[MicJob] = deque()
    prefetching = None
    while queue or suspects:
        isolate = bool(suspects)
        source = suspects if isolate else queue
        n = 1 if isolate else min(workers, len(queue))
        ex = ProcessPoolExecutor(max_workers=n, mp_context=mp.get_context(_start_method()), initializer=_init_worker, initargs=(cfg, stages))
        running: dict[Any, MicJob] = {}
        broken: list[MicJob] = []
        interrupted = False
        try:
            while (source or running) and not broken:
                while source and len(running) < n:
                    job = source.popleft()
                    try:
                        running[ex.submit(run_job, job)] = job
                    except BrokenProcessPool:
                        source.appendleft(job)
                        break
                if prefetching is None and prefetch and running:
                    # The first submit has started the workers (forked them, with fork):
                    # a thread in this process is safe from here on.
                    prefetching = _import_in_background(prefetch)
                if not running:
                    broken.append(source.popleft())
                    break
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in finished:
                    job = running.pop(fut)
                    exc = fut.exception()
                    if exc is None:
                        on_result(fut.result())
                    elif isinstance(exc, BrokenProcessPool):
                        broken.append(job)
                    else:  # e.g. the job could not be sent to the worker
                        on_result(_failure(job, f"{job.path}: {type(exc).__name__}: {exc}"))
        except KeyboardInterrupt:
            interrupted = True
            log.warning("interrupted: finishing the %d micrograph(s) in progress", len(running))
            for fut in running:
                fut.cancel()
            for fut, job in running.items():
                if not fut.cancelled() and fut.exception() is None:
                    on_result(fut.result())
            raise
        finally:
            ex.shutdown(wait=not interrupted, cancel_futures=True)
        if broken:
            broken.extend(running.values())
            if isolate:
                for job in broken:
                    on_result(_failure(job, f"{job.path}: the worker process died while picking it (out of memory, killed, or a crash in a library)"))
            else:
                log.warning("a worker process died; retrying the %d micrograph(s) it may have been picking one at a time", len(broken))
                suspects.extend(broken)
    if prefetching is not None:
        prefetching.join()


def _progress(total: int, enabled: bool, *, initial: int = 0):
    """A tqdm bar on stderr (done/total, rate, ETA), silent unless stderr is a terminal."""
    from tqdm import tqdm

    class Bar(tqdm):
        monitor_interval = 0  # no monitor thread: worker processes are forked

    return Bar(
        total=total,
        initial=initial,
        unit="mic",
        desc="picking",
        disable=not enabled or not sys.stderr.isatty(),
        file=sys.stderr,
        dynamic_ncols=True,
        smoothing=0.1,
    )


#: Seconds between two progress lines of a run without a terminal (:class:`ProgressLines`).
PROGRESS_LINE_SECONDS = 60.0


def print_timed(msg: str) -> None:
    """``lipoframe: HH:MM:SS msg`` on stderr, at once: a progress line that a log file keeps readable."""
    print(f"lipoframe: {time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)


def format_rate(per_s: float) -> str:
    """A picking rate as people read it: ``'2.4 micrographs/s'``, or ``'41 s per micrograph'`` below one a second."""
    if per_s >= 1:
        return f"{per_s:.1f} micrographs/s"
    if not per_s > 0:
        return "no micrograph picked"
    seconds = 1 / per_s
    return f"{seconds:.3g} s per micrograph" if seconds < 100 else f"{seconds:.0f} s per micrograph"  # not 1.23e+03


class ProgressLines:
    """The progress of a run on stderr when it has no terminal (so no bar): a timed line every
    :data:`PROGRESS_LINE_SECONDS` at most, and one for the last micrograph, e.g.
    ``lipoframe: 14:02:31 picked 118 of 1000 micrographs, 2 failed, picking 1.9 micrographs/s, about 8 min left``
    (120 done: the failed ones are not counted as picked, as in the watch session's status lines).

    The rate is the picking's (the micrographs read so far, failed ones too, over the time since picking
    began), from which the time left follows; the summary's (:func:`format_summary`) is that of the
    micrographs picked over the whole run, its dataset-level outputs included, and says so.
    ``initial``: micrographs done before (a resumed run), counted as done but not in the rate.
    """

    def __init__(self, total: int, *, initial: int = 0):
        self.total, self.done, self.initial = total, initial, initial
        self.start = self.last = time.monotonic()

    def update(self, failed: int) -> None:
        self.done += 1
        now = time.monotonic()
        if now - self.last < PROGRESS_LINE_SECONDS and self.done < self.total:
            return
        self.last = now
        per_s = (self.done - self.initial) / max(now - self.start, 1e-9)
        left = ""
        if self.done < self.total and per_s > 0:
            minutes = (self.total - self.done) / per_s / 60
            left = f", about {minutes:.0f} min left" if minutes >= 1 else ", less than a minute left"
        # picked: the micrographs done less those that failed (those done before, of a resumed run, were picked)
        failures = f", {failed} failed" if failed else ""
        print_timed(f"picked {self.done - failed} of {self.total} micrographs{failures}, picking {format_rate(per_s)}{left}")


@contextlib.contextmanager
def output_folder(out_dir: Path, command: str = "run"):
    """Check ``out_dir`` is writable and hold a lock on it for the duration of a run.

    The lock is :func:`folder_lock`'s, removed as the run ends (whether it
    succeeded, failed or was interrupted). Also removes temporary files an
    interrupted run left behind in the per-micrograph folder. ``command``: the
    lipoframe command that writes (``run``, ``plan``, ``merge``), named to
    another that finds the folder locked.

    Raises
    ------
    InputError
        If the folder cannot be created or written, or another run holds it.
    """
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / f".lipoframe-write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise InputError(f"{out_dir}: output folder is not writable ({exc.strerror or exc})") from None
    work = out_dir / WORK_DIR
    if work.is_symlink() or (work.exists() and not work.is_dir()):
        # each micrograph would fail on its own (FileExistsError), or write outside the output folder
        what = "a symbolic link" if work.is_symlink() else "not a folder"
        raise InputError(f"{work}: {what}; lipoframe keeps each micrograph's saved picks in this folder: "
                         "move it away or choose another output")
    with folder_lock(out_dir, command):
        for stale in (out_dir / WORK_DIR).glob(".*.tmp*"):
            with contextlib.suppress(OSError):
                stale.unlink()
        yield out_dir


#: The lock file of an output folder (:func:`folder_lock`).
LOCK_FILE = ".lipoframe.lock"


@contextlib.contextmanager
def folder_lock(out_dir: Path, command: str = "run"):
    """Hold ``out_dir``'s lock (an flock on :data:`LOCK_FILE`) while a command writes into the folder.

    ``lipoframe run``, ``plan``, ``merge`` and ``report`` take it, so that
    no two of them write into one folder at once. The lock file holds the
    pid and ``command`` of its holder, which the refusal names.

    Raises
    ------
    InputError
        If another process holds the lock: ``<folder>: another lipoframe
        <command> (pid <pid>) is writing to this output folder``.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no lock
        fcntl = None
    path = out_dir / LOCK_FILE
    while True:
        lock = open(path, "a+")
        if fcntl is None:
            break
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.seek(0)
            # "<pid> <command>"; a lipoframe from before the command was recorded wrote its pid only
            pid, _, other = lock.read().strip().partition(" ")
            lock.close()
            raise InputError(f"{out_dir}: another lipoframe {other or 'run'} (pid {pid or '?'}) "
                             "is writing to this output folder") from None
        # The holder removes the file as it ends: a lock taken on the file opened before is on a file
        # no longer there, which another process may have made anew and locked. Take the one there now.
        try:
            same = os.path.samestat(os.fstat(lock.fileno()), os.stat(path))
        except OSError:
            same = False
        if same:
            break
        lock.close()
    with lock:
        if fcntl is not None:
            lock.seek(0)
            lock.truncate()
            lock.write(f"{os.getpid()} {command}")
            lock.flush()
        _HELD_LOCKS.add(lock.fileno())
        try:
            yield
        finally:
            _HELD_LOCKS.discard(lock.fileno())
            # Removed while still locked (a finished output folder holds no lock file); a run killed outright
            # (kill -9) leaves it, with nobody's lock on it: the next run takes it as it is.
            with contextlib.suppress(OSError):
                path.unlink()


#: File descriptors of the output-folder locks this process holds (:func:`output_folder`).
_HELD_LOCKS: set[int] = set()


def _drop_held_locks_in_child() -> None:
    """In a forked child (a worker process): let go of the parent's output-folder locks.

    An flock belongs to the open file, which a fork shares: a worker that
    outlived a run killed outright kept its folder locked, and the next run
    into it was refused ("another lipoframe run (pid <the dead one>) is
    writing"). The descriptor is pointed at /dev/null rather than closed, so
    its number is never reused under the parent's file object.
    """
    if not _HELD_LOCKS:
        return
    null = os.open(os.devnull, os.O_RDONLY)
    try:
        for fd in _HELD_LOCKS:
            with contextlib.suppress(OSError):
                os.dup2(null, fd, inheritable=False)
    finally:
        os.close(null)
    _HELD_LOCKS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_drop_held_locks_in_child)


#: The log a run keeps in its folder (Hydra's file handler, conf/hydra/job_logging/lipoframe.yaml).
LOG_FILE = "lipoframe.log"


@contextlib.contextmanager
def folder_log(out_dir: Path, command: str):
    """Append the log of a command that runs without Hydra (``merge``, ``plan``) to ``out_dir/lipoframe.log``.

    The file gets INFO and above in the run's format, headed by
    ``command``; what the console shows is unchanged (warnings and
    errors). Everything is restored on exit.

    Parameters
    ----------
    out_dir : Path
        An existing output folder.
    command : str
        The command and its arguments, for the first line
        (``lipoframe 0.1.0: merge shards/ output=all``).
    """
    from lipoframe import __version__

    root = logging.getLogger()
    handler = logging.FileHandler(Path(out_dir) / LOG_FILE, encoding="utf-8")
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] %(message)s"))
    handler.setLevel(logging.INFO)
    # The console handlers keep the threshold the root logger gave them.
    quiet = [h for h in root.handlers if h.level == logging.NOTSET]
    level = root.level
    for h in quiet:
        h.setLevel(level)
    root.addHandler(handler)
    root.setLevel(min(level, logging.INFO) if level != logging.NOTSET else logging.INFO)
    try:
        log.info("lipoframe %s: %s", __version__, command)
        yield
    finally:
        root.removeHandler(handler)
        handler.close()
        root.setLevel(level)
        for h in quiet:
            h.setLevel(logging.NOTSET)


def outside_output(paths: list[Path], out_dir: Path, *, keep: Path | None = None) -> tuple[list[Path], int]:
    """``paths`` without the files inside ``out_dir`` (a run's own overlays,
    histograms and masks are never its input), except those inside ``keep``;
    and how many were left out."""
    out_dir = Path(out_dir).resolve()
    keep = Path(keep).resolve() if keep is not None else None

    def ours(p: Path) -> bool:
        r = p.resolve()
        return r.is_relative_to(out_dir) and not (keep is not None and r.is_relative_to(keep))

    kept = [p for p in paths if not ours(p)]
    return kept, len(paths) - len(kept)


def read_for_others(paths: list[Path], stages: StageSet) -> list[Path]:
    """The files of ``paths`` that the stages read for another file of ``paths``.

    A folder holding the micrographs and their heatmaps (``detector.folder``
    empty: the maps next to the micrographs) or masks gives both to ``input=``;
    the maps are not micrographs (see :meth:`~lipoframe.stages.Stage.extra_inputs`).
    """
    names = micrograph_names(paths)
    needs = {os.path.abspath(p): {os.path.abspath(f) for f in stages.extra_inputs(p, n) if os.path.isfile(f)} for p, n in zip(paths, names)}
    claimed = set().union(*needs.values())
    # A file with maps of its own is a micrograph, even if another file's pattern also takes it
    # (a.mrc and a.tif with detector.pattern=.*): those are left to fail as before, not both dropped.
    return [p for p in paths if os.path.abspath(p) in claimed and not needs[os.path.abspath(p)]]


#: Suffixes of pictures (thumbnails) rather than micrographs, when a folder holds both kinds.
_PICTURES = (".png", ".jpg", ".jpeg")


def _first_micrograph_below(
    folder: str, suffixes: tuple[str, ...], *, look_on: int = 100, max_folders: int = 1000, max_depth: int = 6,
) -> Path | None:
    """A file with one of ``suffixes`` in a subfolder of ``folder`` (EPU's ``GridSquare_*/Data/``), or None.

    Only a hint for an error message: at most ``max_folders`` folders are
    listed, none more than ``max_depth`` levels below ``folder``, so a
    large tree with nothing to find (``input=/data``, a network mount) is
    not walked to its end. Folders are taken depth first in sorted order,
    which reaches EPU's first ``Images-Disc1/GridSquare_*/Data/`` within a
    few folders. A PNG or JPEG is named only when no other kind is found in
    the next ``look_on`` folders: EPU keeps JPEG thumbnails of each grid
    square and foil hole beside, and above, its MRC or TIFF micrographs.
    """
    picture = None
    for n, (root, dirs, files) in enumerate(os.walk(folder)):
        depth = len(Path(root).relative_to(folder).parts)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if depth < max_depth else []
        found = sorted(f for f in files if file_suffix(f) in suffixes and not f.startswith("."))
        other = [f for f in found if file_suffix(f) not in _PICTURES]
        if other:
            return Path(root, other[0])
        if found and picture is None:
            picture, seen = Path(root, found[0]), n
        if (picture is not None and n - seen >= look_on) or n + 1 >= max_folders:
            break
    return picture


def find_inputs(specs: list[str], suffixes: tuple[str, ...], *, same_file: list | None = None) -> tuple[list[Path], list[str]]:
    """Input files of ``specs`` (see :func:`expand_inputs`) and a message for each spec that matched nothing."""
    paths = expand_inputs(specs, suffixes, same_file=same_file)
    problems = []
    for spec in specs:
        spec_s = os.path.expanduser(str(spec))
        if is_list_spec(spec_s, suffixes):
            try:
                if not list_paths(spec_s, suffixes):
                    problems.append(f"{spec}: the list names no micrographs")
            except InputError as exc:
                problems.append(str(exc))
        elif os.path.isdir(spec_s) and not expand_inputs([spec_s], suffixes):
            below = _first_micrograph_below(spec_s, suffixes)
            # One word to paste into a shell that Hydra reads back as the glob: quoted for both where the folder's name needs it.
            hint = (f"; its subfolders do (such as {below}): give {pasteable_override('input', os.path.join(str(spec), '**', '*' + file_suffix(below)))}"
                    if below else "")
            problems.append(f"{spec}: folder contains no micrographs (looked for {', '.join(sorted(suffixes))}){hint}")
        elif glob.has_magic(spec_s) and not os.path.isdir(spec_s) and not expand_inputs([spec_s], suffixes):
            problems.append(f"{spec}: no files match this pattern")
    return paths, problems


def name_notes(paths: list[Path], names: list[str]) -> list[str]:
    """One line per micrograph whose output name is not its file stem (duplicates, unsafe names)."""
    stems: dict[str, int] = {}
    for p in paths:
        stems[file_stem(p)] = stems.get(file_stem(p), 0) + 1
    notes = []
    for p, n in zip(paths, names):
        stem = file_stem(p)
        if n == stem:
            continue
        why = ("another input has the same name" if stems[stem] > 1
               else "the file name is not safe for output files" if safe_name(stem) != stem
               else "another input's results take this name")
        notes.append(f"{p}: results are named {n!r} ({why})")
    return notes


def run_inputs(specs: list[str], stages: StageSet, exclude: Path, *, keep: Path | None = None):
    """The micrographs of a run: :func:`find_inputs` without the files inside ``exclude`` (except ``keep``) and
    those the stages read for other micrographs (:func:`read_for_others`).

    Returns
    -------
    paths, errors, same_file, n_ours, theirs
        The inputs; a message per spec that matched nothing; the
        ``(left_out, kept)`` pairs of files reached twice; how many files
        inside ``exclude`` were left out; the files read for others.
    """
    same_file: list[tuple[Path, Path]] = []
    paths, errors = find_inputs(specs, tuple(stages.readers_by_suffix), same_file=same_file)
    paths, n_ours = outside_output(paths, exclude, keep=keep)
    theirs = read_for_others(paths, stages)
    if theirs:
        paths = [p for p in paths if p not in set(theirs)]
    return paths, errors, same_file, n_ours, theirs


def no_match_message(specs: list[str], n_ours: int) -> str:
    return f"no input files match {', '.join(map(str, specs))}" + (" outside the output folder" if n_ours else "")


def nothing_to_pick(paths: list[Path]) -> bool:
    """Whether a run has no micrograph to read: none of ``paths`` exists (no input matched, a micrograph list
    could not be used, a mistyped glob or file name). Such a run is refused before its dataset step."""
    return not any(os.path.exists(p) for p in paths)


def earlier_run_message(out_dir: Path) -> str:
    return f"no micrograph to pick, so nothing was written: the earlier run's outputs in {out_dir} are as they were"


#: Why :func:`run_pipeline` stops when there is nothing to pick and no earlier run in the output folder.
NOTHING_TO_PICK = "no micrograph to pick: no picks, plan or exports were written"


def every_micrograph_failed(out_dir: Path, results: list[MicResult]) -> list[str]:
    """The error (logged) of a run that picked no micrograph at all: it had some, and every one failed (files
    in a format no reader takes, corrupt data, a stage that fails on each); [] otherwise. Such a run makes no
    dataset: there is nothing to plan or export, and empty picks, STAR files and plan would look like
    micrographs without particles (:func:`every_micrograph_failed_message`)."""
    if not results or any(r.status != "failed" for r in results):
        return []
    said = every_micrograph_failed_message(out_dir, len(results))
    log.error(said)
    return [said]


def every_micrograph_failed_message(out_dir: Path, n: int) -> str:
    """The error of a run in which every micrograph failed (:func:`every_micrograph_failed`)."""
    said = f"every micrograph failed ({n} of {n}): no picks, plan or exports were written"
    if _written_record(out_dir).get("files"):  # an earlier run's (not those of other settings this run removed)
        said += f"; the earlier run's in {out_dir} are as they were"
    return said


def nothing_to_pick_messages(cfg: LipoframeConfig, out_dir: str | os.PathLike, registry: StageRegistry) -> list[str]:
    """The messages of a run that would find no micrograph to pick (see :func:`nothing_to_pick`); [] otherwise.

    The input errors (a glob that matches nothing, a list that cannot be
    used, a named file that does not exist), and, when ``out_dir`` holds an
    earlier run, that its outputs are left as they were. :func:`run_pipeline`
    refuses such a run itself; ``lipoframe run`` asks first, before it makes
    the output folder and before Hydra writes the new settings over an
    earlier run's ``.hydra/`` record (read by ``lipoframe plan``, ``report``
    and ``merge``). No input (the demo set) and ``watch=true`` (which waits
    for files) are never refused.
    """
    out_dir = Path(out_dir)
    specs = list(cfg.input)
    if not specs or cfg.watch:
        return []
    paths, errors, _, n_ours, _ = run_inputs(specs, build_stages(cfg, registry), out_dir)
    if not nothing_to_pick(paths):
        return []
    missing = [f"{p}: file not found" for p in paths]  # named files that do not exist
    earlier = [earlier_run_message(out_dir)] if (out_dir / MANIFEST).is_file() else []
    return [*errors, *missing, *([] if errors or missing else [no_match_message(specs, n_ours)]), *earlier]


def same_file_notes(same_file: list[tuple[Path, Path]], paths: list[Path], names: list[str]) -> list[str]:
    """One line per input left out because it is the same file as a kept input (see :func:`expand_inputs`)."""
    name_of = dict(zip(paths, names))
    return [f"{dropped}: the same file as {kept}, picked once as {name_of[kept]!r}"
            for dropped, kept in same_file if kept in name_of]


def run_manifest(run_dir: str | os.PathLike) -> tuple[list[tuple[str, str]] | None, str | None]:
    """What a run folder's ``inputs.json`` records of its micrographs, read once: those it lists, and their settings.

    The saved results in ``micrographs/`` may hold more: an earlier run into
    the same folder with other inputs leaves its results there for resume,
    but the run's dataset (``picks.csv``, the plan, the exports) is made of
    the listed micrographs only, and so are ``lipoframe plan``, ``report``
    and ``evaluate`` on the folder.

    Returns
    -------
    listed : list of (str, str) or None
        ``(name, path)`` of the micrographs listed for the run's shard, in
        run order; None when the folder has no readable ``inputs.json`` (a
        run of an older version, or a bare results folder).
    fingerprint : str or None
        The per-micrograph settings fingerprint it records; None when none.
    """
    manifest = read_manifest(run_dir)
    try:
        i, count = int(manifest["shard"]["index"]), int(manifest["shard"]["count"])
        listed = [(str(m["name"]), str(m["path"])) for m in manifest["micrographs"][i::count]]
    except (ValueError, KeyError, TypeError):
        listed = None
    fingerprint = manifest.get("fingerprint")
    return listed, (str(fingerprint) if fingerprint else None)


def read_manifest(run_dir: str | os.PathLike) -> dict:
    """A run folder's ``inputs.json`` ({} when there is none, or it cannot be read or is not a mapping)."""
    try:
        manifest = json.loads((Path(run_dir) / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    return manifest if isinstance(manifest, dict) else {}


def run_results(run_dir: str | os.PathLike) -> dict[str, dict | None]:
    """The saved results in ``micrographs/`` that are the run's own, sorted by name, each with its JSON.

    Those of the micrographs ``inputs.json`` lists, made with the settings
    it records (:func:`run_manifest`). A run stopped early with other
    settings than the last one into the folder leaves that run's results
    for the micrographs it did not reach: they are other picks, so
    ``lipoframe plan``, ``report`` and ``evaluate`` do not take them as this
    run's. Without ``inputs.json``, every saved result.

    Each name maps to its result's JSON as read to check its settings, for
    :func:`collect_work` (``infos``) not to read it again; None when
    ``inputs.json`` records no settings (nothing was checked or read).
    """
    work = Path(run_dir) / WORK_DIR
    saved = sorted(p.stem for p in work.glob("*.json") if not p.name.startswith(".")) if work.is_dir() else []
    listed, fingerprint = run_manifest(run_dir)
    if listed is not None:
        names = {n for n, _ in listed}
        saved = [n for n in saved if n in names]
    if fingerprint is None:
        return dict.fromkeys(saved)
    return {name: info for name, info in read_infos(Path(run_dir), saved).items()
            if info is not None and _work_info_matches(info, fingerprint, None, None)}


def run_result_names(run_dir: str | os.PathLike) -> list[str]:
    """Names of the saved results in ``micrographs/`` that are the run's own, sorted (:func:`run_results`)."""
    return list(run_results(run_dir))


def write_manifest(out_dir: Path, specs: list[str], paths: list[Path], names: list[str], cfg: LipoframeConfig, fingerprint: str,
                   *, project: str | None = None, micrographs_star: str | None = None, stages: StageSet | None = None) -> None:
    """``inputs.json``: every input in order with its output name, the shard and the fingerprint (used by merge).

    With ``stages``, also the name of each stage the run (merge) uses, by
    kind (:func:`stage_names`): the folder's one record of them when Hydra
    keeps no ``.hydra/hydra.yaml`` (``hydra.output_subdir=null``, a merge),
    which ``lipoframe plan`` and the report read (:func:`recorded_stages`).
    Without, ``"stages": null``: a merge records them with
    :func:`record_started_stages` once its ``config.yaml`` is written.

    With a RELION micrographs STAR among ``specs`` it also records the
    RELION project folder found for it (``relion_project``, or ``project``
    when given: a merge passes on its shards'), which the ``star`` writer
    takes when ``writer.star.project_dir`` is not set (see :func:`star_project_dir`);
    and, when it is the only STAR, its absolute path (``relion_micrographs_star``,
    or ``micrographs_star`` when given), the ``--i`` of the extraction
    commands (see :func:`extraction_micrographs_star`).
    """
    info = {
        "inputs": [str(s) for s in specs],
        "micrographs": [{"name": n, "path": str(p)} for p, n in zip(paths, names)],
        "shard": {"index": cfg.shard.index, "count": cfg.shard.count},
        "fingerprint": fingerprint,
    }
    project = project or relion_project(specs)
    if project:
        info["relion_project"] = project
    micrographs_star = micrographs_star or relion_star(specs)
    if micrographs_star:
        info["relion_micrographs_star"] = micrographs_star
    # Without stages, "stages": null: they are recorded once the caller's config.yaml is written (record_started_stages).
    info["stages"] = None if stages is None else stage_names(stages)
    write_text(out_dir / MANIFEST, json.dumps(info, indent=1))


def stage_names(stages: StageSet) -> dict[str, str | list[str]]:
    """The name of each of a run's stages by kind; ``filter`` and ``writer`` list theirs in order."""
    return {"reader": stages.reader.name, "detector": stages.detector.name, "nms": stages.nms.name,
            "refiner": stages.refiner.name, "filter": [f.name for f in stages.filters], "binning": stages.binner.name,
            "writer": [w.name for w in stages.writers]}


#: The kinds of stage of which one is chosen (Hydra's group choices), as :func:`recorded_stages` reads them.
CHOSEN_KINDS = ("reader", "detector", "nms", "refiner", "binning")
#: The kinds of stage of which a run uses a list, in order (:func:`stage_names`).
LISTED_KINDS = ("filter", "writer")


def recorded_stages(out_dir: Path) -> dict[str, str]:
    """The names of the reader, detector, NMS, refiner and binning the run (merge) into ``out_dir`` recorded in
    ``inputs.json`` (:func:`write_manifest`, :func:`record_started_stages`), as Hydra's group choices give them;
    ``{}`` when it recorded none (a folder made before they were recorded, one whose run stopped before recording
    them (:func:`stages_not_recorded`), or none at all)."""
    recorded = read_manifest(out_dir).get("stages")
    if not isinstance(recorded, dict):
        return {}
    return {k: v for k, v in recorded.items() if k in CHOSEN_KINDS and isinstance(v, str)}


def stages_not_recorded(out_dir: Path) -> str:
    """Why ``out_dir`` records no stages in ``inputs.json`` (:func:`recorded_stages` is ``{}``), as words that
    follow "no .hydra/hydra.yaml, " in a message.

    ``inputs.json`` is missing (removed, or a lipoframe from before it was
    written), unreadable, records ``"stages": null`` (a run or merge stopped
    between removing the earlier run's stages and recording its own,
    :func:`record_started_stages`) or has no ``stages`` (written by a
    lipoframe from before they were recorded).
    """
    if not (Path(out_dir) / MANIFEST).is_file():
        return f"and no {MANIFEST}"
    manifest = read_manifest(out_dir)
    if not manifest:
        return f"and an unreadable {MANIFEST}"
    if "stages" in manifest and manifest["stages"] is None:
        return f"and the last run or merge into it stopped before recording its stages in {MANIFEST}"
    return f"and an {MANIFEST} of a lipoframe that did not record it"


def record_started_stages(out_dir: Path, choices: dict | None) -> None:
    """Replace the ``stages`` an earlier run recorded in ``out_dir``'s ``inputs.json`` with ``choices``.

    For a run Hydra keeps no ``.hydra/`` record of (``hydra.output_subdir=null``),
    whose ``config.yaml`` is written as it starts: until the run writes its
    own ``inputs.json`` (:func:`write_manifest`, after its inputs are listed),
    the earlier run's stages would go with this run's settings, and
    ``lipoframe plan`` would re-plan with the earlier run's binning policy if
    the run stopped before then. Called with None before ``config.yaml`` is
    written (the record becomes ``"stages": null``, which says the run stopped
    before recording its own: :func:`stages_not_recorded`), and after it with
    the run's Hydra choices (those of :data:`CHOSEN_KINDS`). A merge, which
    writes its ``inputs.json`` with ``"stages": null`` before its
    ``config.yaml``, calls it after with :func:`stage_names` (those of
    :data:`LISTED_KINDS` are kept too). Whenever the
    run stops, the folder holds the earlier run's settings and stages, either
    run's settings and none, or this run's settings and stages. Each is one
    atomic write of ``inputs.json``; a folder without a readable one is left
    as it is.
    """
    manifest = read_manifest(out_dir)
    if not manifest:
        return
    chosen = {k: v for k, v in (choices or {}).items()
              if k in CHOSEN_KINDS and isinstance(v, str)
              or k in LISTED_KINDS and isinstance(v, list) and all(isinstance(n, str) for n in v)}
    manifest.pop("stages", None)  # the record keeps its place last, as write_manifest puts it
    manifest["stages"] = chosen or None
    write_text(Path(out_dir) / MANIFEST, json.dumps(manifest, indent=1))


# ---------------------------------------------------------------------------
# Dataset level
# ---------------------------------------------------------------------------
def dataset_context(metas: dict[str, MicrographMeta], cfg: LipoframeConfig) -> PickContext:
    """Context for binning and writers: the dataset's (median) pixel size."""
    sizes = [m.pixel_size for m in metas.values() if m.pixel_size]
    px = float(np.median(sizes)) if sizes else cfg.pixel_size
    if cfg.units == "px" or not px:
        dmin, dmax = cfg.dmin, cfg.dmax
    else:
        dmin, dmax = cfg.dmin / px, cfg.dmax / px
    return PickContext(dmin_px=dmin, dmax_px=dmax, polarity=cfg.polarity, pixel_size=px, seed=cfg.seed, export_rejected=cfg.export_rejected)


def pixel_size_notes(metas: dict[str, MicrographMeta]) -> list[str]:
    """A note when the micrographs' pixel sizes differ by more than 1 %: the plan's bins and boxes are in pixels."""
    sizes = sorted({round(float(m.pixel_size), 4) for m in metas.values() if m.pixel_size})
    if len(sizes) < 2 or sizes[-1] <= 1.01 * sizes[0]:
        return []
    med = float(np.median([m.pixel_size for m in metas.values() if m.pixel_size]))
    listed = ", ".join(f"{v:g}" for v in sizes[:6]) + (", ..." if len(sizes) > 6 else "")
    note = (f"the micrographs have different pixel sizes ({listed} Å/px): the size bins and boxes are in pixels, "
            f"so one particle size falls into different bins, and the plan's Å values and masks use the median, {med:g} Å/px; "
            "run each pixel size into its own output folder to plan it")
    log.info(note)
    return [note]


def placeholder_pixel_size_notes(metas: dict[str, MicrographMeta], cfg: LipoframeConfig, *,
                                  out_dir: Path | None = None, stages: StageSet | None = None) -> list[str]:
    """A note when headers give exactly 1 Å/px and no ``pixel_size`` was given.

    1.0 is what many programs write when they do not know the pixel size
    (and what an MRC header with a cell equal to its size means); a
    diameter range in Å converted with it may be off by the true pixel size
    without any other sign. With the range in pixels (``units=px``) the
    picks are not affected, but ``diameter_A``, the sizes in nm and the
    exports' pixel size are (``lipoframe plan pixel_size=`` sets it), unless
    a stage's option is a length in Å (``detector=membrane``'s thickness).
    ``out_dir``, the run folder, is named in that command so that it can be
    pasted (``<output folder>`` without it); ``lipoframe plan`` and
    ``lipoframe report`` of the folder copied or moved name the copy
    (:func:`picking_named_here`). With the run's ``stages``, a plugin's
    reader or picking stage (:func:`pixel_size_dependence`), which a plan's
    ``pixel_size=`` refuses too, gets "run again" instead.
    """
    if cfg.pixel_size is not None:
        return []
    ones = sorted(n for n, m in metas.items() if m.pixel_size == 1.0)
    if not ones:
        return []
    which = "every micrograph" if len(ones) == len(metas) else f"{len(ones)} of {len(metas)} micrographs (e.g. {ones[0]})"
    said = f"the header of {which} gives exactly 1 Å/px, which many programs write when they do not know the pixel size; "
    in_angstrom = angstrom_lengths(cfg)  # as lipoframe plan tells it
    if cfg.units == "A":
        note = (said + f"dmin={cfg.dmin:g} and dmax={cfg.dmax:g} Å were converted with it: if that is not your pixel size, "
                "run again with pixel_size=<Å/px> (or give the range in pixels with units=px)")
    elif in_angstrom:  # a stage's length in Å: `lipoframe plan pixel_size=` refuses such a run
        note = (said + f"{', '.join(in_angstrom)} converted a length in Å with it: if that is not your pixel size, "
                "run again with pixel_size=<Å/px>")
    elif stages is not None and (why := pixel_size_dependence(cfg, stages, metas[ones[0]].path)):  # refused as well
        note = said + f"{why}: if that is not your pixel size, run again with pixel_size=<Å/px>"
    else:
        note = (said + "the picks (in pixels) do not depend on it, but diameter_A, the sizes in nm and the exports' "
                f"pixel size do: if that is not your pixel size, `lipoframe plan {shlex.quote(str(out_dir)) if out_dir else '<output folder>'} pixel_size=<Å/px>` "
                "sets it without picking again")
    log.info(note)
    return [note]


def replaced_pixels_notes(infos: dict[str, dict | None]) -> list[str]:
    """A note naming the micrographs whose hot or dead pixels were replaced before picking (:func:`without_outlier_pixels`)."""
    counts = {name: int(info.get(REPLACED_PIXELS, 0) or 0) for name, info in infos.items() if isinstance(info, dict)}
    counts = {name: n for name, n in counts.items() if n > 0}
    if not counts:
        return []
    listed = ", ".join(f"{name} ({n})" for name, n in list(counts.items())[:MAX_LISTED])
    more = f" and {len(counts) - MAX_LISTED} more" if len(counts) > MAX_LISTED else ""
    note = (f"{len(counts)} micrograph(s) had hot or dead pixels, replaced by the median of their neighbourhood before "
            f"picking (pixels): {listed}{more}; the micrograph files are unchanged, and their hot pixels disturb the "
            "extracted particles too unless extraction removes them (RELION: the stddev for white/black dust removal)")
    log.info(note)
    return [note]


def range_notes_for(picks: pd.DataFrame, metas: dict[str, MicrographMeta], cfg: LipoframeConfig) -> list[str]:
    """:func:`lipoframe.rangecheck.range_notes` for a run (logged; the summary prints them)."""
    from lipoframe.rangecheck import range_notes

    bounds = {}
    for name, meta in metas.items():
        with contextlib.suppress(InputError):  # no pixel size: that micrograph failed and has no picks
            ctx = pick_context(meta, cfg)
            bounds[name] = (ctx.dmin_px, ctx.dmax_px)
    notes = range_notes(picks, bounds, dmin=cfg.dmin, dmax=cfg.dmax, units=cfg.units)
    for n in notes:
        log.info(n)
    return notes


#: The polarity check's verdict and the saved results it was made from (:func:`polarity_check_for`).
POLARITY_RECORD = "polarity_check.json"


def earlier_polarity_verdict(out_dir: Path, done: list[str]):
    """The :class:`~lipoframe.polaritycheck.Verdict` an earlier run into ``out_dir`` recorded, if it holds for ``done``.

    It holds when the micrographs it checked are the first of ``done`` (the
    run's picked micrographs, in its order), each with the saved result it
    was made from (:func:`result_identity`: the same settings, input file,
    pixel size and code), and, if it checked all the micrographs that
    run had, ``done`` has no more. Else None.
    """
    from lipoframe.polaritycheck import Verdict

    try:
        record = json.loads((Path(out_dir) / POLARITY_RECORD).read_text())
        verdict = Verdict.from_dict(record["verdict"])
        made_from = {str(k): v for k, v in record["results"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError):
        return None
    n = len(verdict.checked)
    if not n or list(verdict.checked) != done[:n] or (not verdict.final and len(done) != n):
        return None
    infos = read_infos(Path(out_dir), list(verdict.checked))
    if any(made_from.get(name) is None or made_from.get(name) != result_identity(infos[name]) for name in verdict.checked):
        return None
    return verdict


def polarity_check_for(results: list[MicResult], names: list[str], stages: StageSet, cfg: LipoframeConfig,
                       out_dir: Path) -> dict | None:
    """:func:`lipoframe.polaritycheck.polarity_verdict` on the first micrographs picked, for ``run_summary.json``.

    The micrographs are read again, in the run's order; a micrograph that
    cannot be read or a stage that fails leaves the run without the check
    (None). The verdict is kept in :data:`POLARITY_RECORD` with the saved
    results it was made from, and taken again, without reading or picking,
    by a later run whose first micrographs have the same saved results
    (:func:`earlier_polarity_verdict`: a resumed run). Returns the
    micrographs ``checked``, the ``notes`` (logged; the summary prints them)
    and whether the verdict was ``reused``.
    """
    from lipoframe.polaritycheck import polarity_verdict, quiet

    order = {n: i for i, n in enumerate(names)}
    done = sorted((r for r in results if r.status in ("ok", "skipped")), key=lambda r: order.get(r.name, len(order)))
    verdict = earlier_polarity_verdict(out_dir, [r.name for r in done])
    reused = verdict is not None
    if reused:
        log.info("polarity check: the verdict of the earlier run on the same %d micrograph(s) with the same settings (%s): %s",
                 len(verdict.checked), POLARITY_RECORD, verdict.describe(cfg.polarity))
    else:
        def micrographs():
            for r in done:
                with quiet():  # the reader's warnings were given when the micrograph was picked
                    mic, _ = without_outlier_pixels(read_named(r.path, r.name, cfg, stages))
                yield mic, pick_context(mic.meta, cfg)

        try:
            verdict = polarity_verdict(micrographs(), stages, cfg.polarity)
        except Exception as exc:  # noqa: BLE001 - only advice: the picks are saved whatever happens here
            log.debug("polarity check skipped: %s: %s", type(exc).__name__, exc)
            return None
        if not verdict.checked:
            return None
        made_from = {name: result_identity(info) for name, info in read_infos(out_dir, list(verdict.checked)).items()}
        if all(made_from.values()):
            write_text(out_dir / POLARITY_RECORD, json.dumps({"verdict": verdict.to_dict(), "results": made_from}, indent=1))
    for n in verdict.notes:
        log.info(n)
    return {"checked": list(verdict.checked), "notes": list(verdict.notes), "reused": reused}


def finalize_dataset(
    picks: pd.DataFrame,
    metas: dict[str, MicrographMeta],
    stages: StageSet,
    cfg: LipoframeConfig,
    out_dir: Path,
    *,
    made_from: dict[str, str | None] | None = None,
) -> tuple[pd.DataFrame, ExtractionPlan, list[Path]]:
    """Binning and writers over all micrographs; returns the binned table, plan and files.

    ``made_from``: the :func:`result_identity` of each micrograph's saved
    result, recorded in ``written_files.json`` (see :func:`unseen_by_dataset_step`).
    """
    from lipoframe.planfiles import write_plan_files

    ctx = dataset_context(metas, cfg)
    before = schema.with_acceptance(picks)[schema.ACCEPTED].to_numpy(dtype=bool)
    for f in stages.filters:
        stage = f"filter/{f.name}"
        try:
            out = schema.validate_detections(call_table_stage(lambda t: f.apply_dataset(t, metas, ctx), picks, stage=stage,
                                                              same_rows=True), stage=stage)
            check_kept_columns(picks, out, stage=stage)
            check_declared_reasons(picks, out, declared=f.reasons, stage=stage)
        except Exception as exc:
            raise DatasetStageError(stage, exc) from exc
        picks = out
    write_text(out_dir / DATASET_REJECTIONS, dataset_rejections(picks, before).to_csv(index=False))
    # Binning and writers are held to the rules of the other stages: they leave the table they are given as it
    # is (each gets a copy: a writer that changed it in place would change what the next writers and the plan files
    # see), and binning returns every pick with the bin it is in.
    stage = f"binning/{stages.binner.name}"
    try:
        result = call_table_stage(lambda t: stages.binner.assign(t, metas, ctx), stage_copy(picks), stage=stage, same_rows=False)
        check_binning_result(picks, result, stage=stage)
    except Exception as exc:
        raise DatasetStageError(stage, exc) from exc
    binned = result.picks
    written: list[Path] = []
    failed: list[str] = []
    star_project_dir(stages, out_dir)
    for w in stages.writers:
        # One writer that fails (a full disk, a folder in the way) does not stop the others.
        before = file_inodes(out_dir)
        try:
            paths = call_table_stage(lambda t: w.write(t, metas, result.plan, out_dir, ctx), stage_copy(binned),
                                     stage=f"writer/{w.name}", same_rows=False)
            written.extend(check_written_inside(paths, out_dir, stage=f"writer/{w.name}"))
        except Exception as exc:  # noqa: BLE001 - reported, and the run's exit code says so
            # No partial export: what it wrote before failing would be
            # imported as if it were all (a folder of coordinate files).
            partial = remove_new_files(out_dir, before)
            # What is left, and how to finish it: the same words for a run, a merge and a plan.
            failed.append(f"writer {w.name} failed: {stage_failure_why(f'writer/{w.name}', exc)}"
                          + (f" (removed the {len(partial)} file(s) it had written)" if partial else "")
                          + f"; its files are missing, the other exports and the extraction plan are written: once that is "
                          f"fixed, `lipoframe plan {shlex.quote(str(out_dir))}` writes them all without picking again")
            log.error("%s%s", failed[-1], "\n" + traceback.format_exc() if cfg.runner.verbose else "")
        except BaseException:
            # Ctrl-C or SIGTERM: no partial export either; the run is continued by running it again.
            remove_new_files(out_dir, before)
            raise
    # Plan files last, so extraction_plan.md can point at the files writers made.
    project_dir = next((str(getattr(w.params, "project_dir", "") or "") for w in stages.writers if w.name == "star"), "")
    written.extend(write_plan_files(result.plan, binned, out_dir, metas=metas, written=written, project_dir=project_dir,
                                    micrographs_star=extraction_micrographs_star(out_dir, project_dir)))
    removed = remove_stale_outputs(out_dir, written, settings=cfg.dataset_fingerprint(), made_from=made_from)
    if removed:
        log.info("removed %d file(s) an earlier run wrote into %s that this run did not write again", len(removed), out_dir)
    if failed:
        raise WriterError(failed, binned, result.plan, written)
    return binned, result.plan, written


def star_project_dir(stages: StageSet, out_dir: Path) -> str:
    """The ``star`` writer's ``project_dir``: as given, else the RELION project of the run's micrographs STAR.

    A run from ``input=CtfFind/job003/micrographs_ctf.star`` records the
    project folder found for the STAR in ``inputs.json`` (see
    :func:`write_manifest`); when ``writer.star.project_dir`` is not set, the
    writer takes it, so that the default ``rlnMicrographName`` (``{path}``)
    is the name the STAR gives each micrograph, and the list file's paths are
    relative to the project, as RELION writes its own.
    """
    star = [w for w in stages.writers if w.name == "star" and hasattr(getattr(w, "params", None), "project_dir")]
    given = next((str(w.params.project_dir or "") for w in star), "")
    if given or not star:
        return given
    project = read_manifest(out_dir).get("relion_project")
    if not project or not os.path.isdir(project):
        return ""
    for w in star:  # a copy: the stage's parameters may be the configuration's own, whose fingerprint records the settings
        w.params = replace(w.params, project_dir=str(project))
    log.info("writer star: micrograph and coordinate paths are relative to the RELION project %s, the micrographs STAR's "
             "(set writer.star.project_dir to choose another)", project)
    return str(project)


def extraction_micrographs_star(out_dir: str | os.PathLike, project_dir: str = "") -> str:
    """``--i`` of the RELION extraction commands: the run's micrographs STAR as seen from the RELION project.

    A run from one RELION micrographs STAR records it in ``inputs.json``
    (:func:`write_manifest`); Extract must read that STAR, whose
    ``rlnMicrographName`` the coordinate lists repeat. Its path is relative
    to ``project_dir`` (the ``star`` writer's), else to the project recorded
    for the STAR, as the commands run from the project. ``""`` when the run
    had no STAR, or several (the commands keep their default).
    """
    manifest = read_manifest(out_dir)
    star = manifest.get("relion_micrographs_star")
    if not isinstance(star, str) or not star:
        return ""
    base = project_dir or manifest.get("relion_project")
    if not isinstance(base, str) or not base:
        return star
    base = os.path.abspath(os.path.expanduser(base))
    rel = os.path.relpath(star, base)
    if rel.startswith(os.pardir):  # one of them reached through a symbolic link: compare where they are
        resolved = os.path.relpath(os.path.realpath(star), os.path.realpath(base))
        rel = rel if resolved.startswith(os.pardir) else resolved
    return Path(rel).as_posix()


class DatasetStageError(RuntimeError):
    """A dataset-level stage (a filter's ``apply_dataset``, the binning policy) failed: one message saying which and why.

    The message names the stage once: ``binning policy 'mine' failed: <why>``
    or ``dataset stage filter/mine failed: <why>``, where ``why`` is the
    stage's own exception (``ValueError: ...``) or, for a rule the runner
    checks (a changed input, a result without ``size_bin``, dropped rows), what
    the stage did (``it changed the table it was given ...``). Before, such a
    check read ``dataset stage failed: ValueError: stage 'binning/mine' ...``.
    """

    def __init__(self, stage: str, exc: BaseException):
        kind, _, name = stage.partition("/")
        who = f"binning policy {name!r}" if kind == "binning" else f"dataset stage {stage}"
        super().__init__(f"{who} failed: {stage_failure_why(stage, exc)}")
        self.stage = stage


def stage_failure_why(stage: str, exc: BaseException) -> str:
    """Why ``stage`` (``kind/name``) failed, for a message that has named it already.

    A rule the runner checks on what the stage returned or did (its
    ``ValueError`` starts ``stage 'kind/name' ``) is told as what the stage
    did: ``it changed the table it was given ...``. Anything the stage
    raised itself is ``ValueError: <its message>``. Used by
    :class:`DatasetStageError` and for writers (``writer x failed: <why>``),
    which before named the stage twice (``writer x failed: ValueError:
    stage 'writer/x' wrote 1 file(s) outside ...``).
    """
    text = str(exc)
    prefix = f"stage {stage!r} "
    if isinstance(exc, ValueError) and text.startswith(prefix) and not failing_stage(exc.__traceback__):
        return "it " + text[len(prefix):]  # the runner's check of what the stage returned, which names it
    return f"{type(exc).__name__}: {text}"


class WriterError(RuntimeError):
    """Some writers failed; the others' files and the plan were written (``picks``, ``plan``, ``files``)."""

    def __init__(self, failures: list[str], picks: pd.DataFrame, plan: ExtractionPlan, files: list[Path]):
        super().__init__("; ".join(failures))
        self.failures, self.picks, self.plan, self.files = failures, picks, plan, files


def file_inodes(out_dir: Path) -> dict[str, int]:
    """Inode of every file below ``out_dir``, but the saved micrographs' tables.

    Compared after a writer ran, they tell the files it created or replaced
    (an atomic write gives the file a new inode). Read from the directory
    entries, without a ``stat`` per file: this runs before every writer.
    """
    inodes: dict[str, int] = {}
    skip = os.path.join(str(out_dir), WORK_DIR)
    folders = [str(out_dir)]
    while folders:
        folder = folders.pop()
        with contextlib.suppress(OSError), os.scandir(folder) as entries:
            for e in entries:
                if e.is_dir(follow_symlinks=False):
                    if e.path != skip:
                        folders.append(e.path)
                else:
                    inodes[e.path] = e.inode()
    return inodes


def remove_new_files(out_dir: Path, before: dict[str, int]) -> list[Path]:
    """Delete the files below ``out_dir`` created or replaced since :func:`file_inodes` gave ``before``.

    A file changed in place (``lipoframe.log``, appended to) stays. Folders
    left empty go too. Returns the paths removed.
    """
    removed = []
    root = Path(out_dir).resolve()
    for path, inode in sorted(file_inodes(out_dir).items()):
        if before.get(path) == inode:
            continue
        p = Path(path)
        with contextlib.suppress(OSError):
            p.unlink()
            removed.append(p)
            parent = p.parent.resolve()
            while parent != root and parent.is_relative_to(root) and not any(parent.iterdir()):
                parent.rmdir()
                parent = parent.parent
    return removed


def remove_stale_outputs(
    out_dir: Path, written: list[Path], *, settings: str | None = None, made_from: dict[str, str | None] | None = None
) -> list[Path]:
    """Delete the files the previous dataset step of ``out_dir`` wrote and this one did not, and record this one's.

    A run into a folder that already holds results (other micrographs,
    another binning) would otherwise leave coordinate files that no longer
    belong to the run, and a folder import (``relion/coords``,
    ``bins/bin3/box/*.box``) would take them. Only files listed in
    ``written_files.json`` by an earlier run are ever deleted; folders left
    empty go too. A symbolic link a writer made (and returned) is recorded
    as the link (``links``: its folder resolved, plus its own name), not as
    what it points to, and a stale one is unlinked, its target never
    touched (see :func:`_remove_listed`). ``settings``: the
    :meth:`~lipoframe.config.LipoframeConfig.dataset_fingerprint` the files
    were made with, recorded for :func:`drop_outputs_of_other_settings`;
    ``made_from``: the identity of each micrograph's saved result they were
    made from, recorded (as ``results``) for :func:`unseen_by_dataset_step`.
    """
    out_dir = Path(out_dir)
    root = out_dir.resolve()
    files: set[str] = set()
    links: set[str] = set()
    for p in resolve_all(written, follow_links=False):  # a link is where it is, not where it points
        if p != root and p.is_relative_to(root):
            (links if p.is_symlink() else files).add(p.relative_to(root).as_posix())
    record = _written_record(out_dir)
    now = files | links
    removed = _remove_listed(out_dir, sorted(set(record.get("files", [])) - now), links=sorted(set(record.get("links", [])) - now))
    record = {"files": sorted(files), **({"links": sorted(links)} if links else {}),
              **({"settings": settings} if settings else {}), **({"results": made_from} if made_from is not None else {})}
    write_text(out_dir / WRITTEN, json.dumps(record, indent=1))
    return removed


def unseen_by_dataset_step(out_dir: Path, names, infos: dict[str, dict | None] | None = None) -> set[str]:
    """Which of ``names`` the last dataset step of ``out_dir`` did not see as their saved result is now.

    Their saved result is another (the micrograph was picked again from a
    changed file by a run that was stopped before its dataset step) or new
    (a micrograph added): the verdicts of ``picks.csv`` and
    ``dataset_rejections.csv`` are not theirs. Empty for a folder whose
    ``written_files.json`` does not record the results (an earlier version's).
    ``infos``: the results' JSON already read (:func:`run_results`); the
    others are read here.
    """
    made_from = _written_record(out_dir).get("results")
    if not isinstance(made_from, dict):
        return set()
    names = [str(n) for n in names]
    infos = infos or {}
    missing = [n for n in names if infos.get(n) is None]
    infos = {**infos, **read_infos(Path(out_dir), missing)}
    return {n for n in names if made_from.get(n) is None or made_from.get(n) != result_identity(infos.get(n))}


def _written_record(out_dir: Path) -> dict:
    """``written_files.json`` of ``out_dir`` ({} when there is none or it cannot be read)."""
    try:
        record = json.loads((Path(out_dir) / WRITTEN).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(record, dict) or not all(isinstance(record.get(k, []), list) for k in ("files", "links")):
        return {}
    return record


def _remove_listed(out_dir: Path, rels: list[str], *, links: Collection[str] = ()) -> list[Path]:
    """Delete the files of ``rels`` and the symbolic links of ``links`` (paths relative to ``out_dir``), and the
    folders they leave empty; nothing outside ``out_dir``, and nothing that is no longer what was recorded.

    Each is removed only where it was recorded (a path without ``..``, whose
    folders are still real folders inside ``out_dir``: one that became a link
    to elsewhere is not followed) and only while it is still of its kind: a
    regular file of ``rels``, a link of ``links``, which is unlinked, never
    followed (its target stays, inside ``out_dir`` or not). Anything else at
    the path (a folder, a link where a file was written, a file where a link
    was) was put there by someone else and stays.
    """
    root = Path(out_dir).resolve()
    folders: dict[Path, bool] = {}
    removed = []
    for rel, link in [*((r, False) for r in rels), *((r, True) for r in links)]:
        names = rel.split("/") if isinstance(rel, str) else [""]
        if any(n in ("", ".", "..") for n in names):
            continue  # not a path the runner records (absolute, '..', empty)
        p = root.joinpath(*names)
        if p.parent not in folders:
            folders[p.parent] = p.parent.resolve() == p.parent  # no link on the way: the folder is where it was
        try:
            mode = os.lstat(p).st_mode if folders[p.parent] else None
        except OSError:
            continue
        if mode is None or not (stat.S_ISLNK(mode) if link else stat.S_ISREG(mode)):
            continue
        os.unlink(p)
        removed.append(p)
        parent = p.parent
        while parent != root and not any(parent.iterdir()):
            parent.rmdir()
            folders.pop(parent, None)
            parent = parent.parent
    return removed


def record_written(out_dir: Path, path: Path) -> None:
    """Add ``path`` (inside ``out_dir``) to the files ``written_files.json`` lists, when there is that record.

    For a file written after the dataset step (``lipoframe plan``'s
    ``plan_config.yaml``): the next dataset step that does not write it
    removes it as it removes the other files of the previous one.
    """
    record = _written_record(out_dir)
    if not record:
        return
    rel = Path(path).resolve().relative_to(Path(out_dir).resolve()).as_posix()
    record["files"] = sorted({*record.get("files", []), rel})
    write_text(Path(out_dir) / WRITTEN, json.dumps(record, indent=1))


def drop_outputs_of_other_settings(out_dir: Path, cfg: LipoframeConfig) -> str | None:
    """Remove, as a run starts, the dataset-level outputs an earlier run made in ``out_dir`` with other settings.

    ``picks.csv``, the writers' files, the plan files (those
    ``written_files.json`` lists), ``report.html``, ``dataset_rejections.csv``
    and ``run_summary.json``: a run with other settings rewrites them at its
    end, and until then (or for ever, if it is interrupted or killed) they
    would show the earlier run's picks under this run's ``.hydra/`` record.
    Settings are those of :meth:`~lipoframe.config.LipoframeConfig.dataset_fingerprint`,
    as ``written_files.json`` records them; for a record without them (an
    earlier version's), the per-micrograph fingerprint of the earlier run's
    ``inputs.json`` (call this before writing the new one). A run with the
    same settings (resume, more input files, ``watch``) keeps them. The
    per-micrograph results in ``micrographs/`` are never touched. Each file
    goes whole (an unlink), and ``written_files.json`` is rewritten last, so
    an interruption here leaves files that the next run removes.

    Returns a note for the user when something was removed, else None.
    """
    from lipoframe.report import REPORT_NAME

    record = _written_record(out_dir)
    files = [str(f) for f in record.get("files", [])]
    links = [str(f) for f in record.get("links", [])]
    if "settings" in record:
        other = record["settings"] != cfg.dataset_fingerprint()
    else:
        earlier = run_manifest(out_dir)[1]
        other = bool(files or links) and earlier is not None and earlier != cfg.per_micrograph_fingerprint()
    if not other:
        return None
    extra = [f for f in (REPORT_NAME, DATASET_REJECTIONS, "run_summary.json") if (Path(out_dir) / f).is_file()]
    removed = _remove_listed(out_dir, [*extra, *files], links=links)
    write_text(Path(out_dir) / WRITTEN, json.dumps({"files": []}, indent=1))
    if not removed:
        return None
    shown = [f for f in ("picks.csv", "extraction_plan.json", REPORT_NAME) if f in extra or f in files]
    report = "" if cfg.runner.report or REPORT_NAME not in extra else f" (`lipoframe report {shlex.quote(str(out_dir))}` writes this run's report.html)"
    return (f"removed the dataset-level outputs of the earlier run into {out_dir}, made with other settings "
            f"({', '.join(shown) or 'its files'}: {len(removed)} file(s) in all), so that they are not taken for this run's; "
            f"this run writes its own once it has picked every micrograph{report}")


def dataset_rejections(picks: pd.DataFrame, before: np.ndarray) -> pd.DataFrame:
    """The picks accepted in ``before`` and rejected in ``picks``, by micrograph and row.

    ``row`` counts from 0 within each micrograph's rows (the order of its
    saved table, which :func:`collect_work` keeps).
    """
    picks = schema.with_acceptance(picks)
    row = picks.groupby(schema.MICROGRAPH, sort=False).cumcount().to_numpy()
    changed = np.asarray(before, dtype=bool) & ~picks[schema.ACCEPTED].to_numpy(dtype=bool)
    return pd.DataFrame({
        schema.MICROGRAPH: picks[schema.MICROGRAPH].to_numpy()[changed],
        "row": row[changed],
        schema.REASON: picks[schema.REASON].to_numpy()[changed],
    })


def apply_dataset_rejections(picks: pd.DataFrame, out_dir: Path, *, skip: Collection[str] = ()) -> pd.DataFrame:
    """Flag in ``picks`` (the run's saved per-micrograph tables, in :func:`collect_work`
    order) the picks its dataset-level filters rejected (:data:`DATASET_REJECTIONS`),
    but in the micrographs of ``skip`` (:func:`unseen_by_dataset_step`)."""
    path = Path(out_dir) / DATASET_REJECTIONS
    if not path.is_file() or not len(picks) or schema.ACCEPTED not in picks.columns:
        return picks
    rejected = pd.read_csv(path, dtype={schema.MICROGRAPH: str, schema.REASON: str}, keep_default_na=False)
    if skip:
        rejected = rejected[~rejected[schema.MICROGRAPH].isin(list(skip))]
    if not len(rejected):
        return picks
    out = picks.copy()
    key = pd.MultiIndex.from_arrays([out[schema.MICROGRAPH].astype(str), out.groupby(schema.MICROGRAPH, sort=False).cumcount()])
    reasons = pd.Series(rejected[schema.REASON].to_numpy(), index=pd.MultiIndex.from_arrays([rejected[schema.MICROGRAPH], rejected["row"]]))
    hit = key.isin(reasons.index)
    out[schema.ACCEPTED] = out[schema.ACCEPTED].astype(bool) & ~hit
    out.loc[hit, schema.REASON] = reasons.reindex(key[hit]).to_numpy()
    return out


def collect_work(
    out_dir: Path, names: list[str], *, infos: dict[str, dict | None] | None = None
) -> tuple[pd.DataFrame, dict[str, MicrographMeta]]:
    """Concatenate the saved per-micrograph tables (in ``names`` order).

    Results that are missing or incomplete are left out (see :func:`load_work`).
    ``infos`` holds the JSON of the results the caller has read already
    (:func:`run_results`); the others are read here.
    """
    at_once = _collect_work_at_once(out_dir, names, infos)
    if at_once is not None:
        return at_once
    infos = infos or {}
    tables, metas = [], {}
    for name in names:
        done = load_work(out_dir, name, info=infos.get(name))
        if done is None:
            continue
        meta, picks = done
        metas[name] = meta
        tables.append(picks)
    if tables:
        non_empty = [t for t in tables if len(t)]
        picks = pd.concat(non_empty, ignore_index=True) if non_empty else tables[0].iloc[0:0].copy()
    else:
        picks = schema.with_acceptance(schema.empty_picks())
        picks.insert(0, schema.MICROGRAPH, pd.Series(dtype=object))
        picks[schema.DIAMETER_A] = pd.Series(dtype=float)
    return picks, metas


def _collect_work_at_once(
    out_dir: Path, names: list[str], infos: dict[str, dict | None] | None = None
) -> tuple[pd.DataFrame, dict[str, MicrographMeta]] | None:
    """:func:`collect_work` with one CSV parse for all micrographs (pandas' fixed
    cost per file dominates small tables), or None to take the file-by-file path.

    See :func:`_read_work_at_once`.
    """
    at_once = _read_work_at_once(out_dir, names, infos=infos)
    return None if at_once is None else at_once[:2]


def _read_work_at_once(
    out_dir: Path, names: list[str], *, infos: dict[str, dict | None] | None = None
) -> tuple[pd.DataFrame, dict[str, MicrographMeta], list[int]] | None:
    """The saved tables of ``names`` in one CSV parse, their metadata and each one's row count, or None.

    The result is the same table: the files share one header and are joined
    below it, so the same parser reads the same text with the same options,
    and empty files add no rows. Any file that is missing, incomplete or not
    plain (another header, quoted fields, a row count other than its JSON
    says) sends the whole collection to the file-by-file path. ``infos``:
    the JSON of results already read (see :func:`collect_work`).
    """
    metas: dict[str, MicrographMeta] = {}
    header, bodies, rows = None, [], []
    for name in names:
        csv_path, json_path = _work_paths(out_dir, name)
        try:
            info = infos.get(name) if infos else None
            if info is None:
                info = json.loads(json_path.read_text())
            n_picks = int(info["n_picks"])
            meta = MicrographMeta.from_dict(info["meta"])
            text = csv_path.read_text()
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None
        head, _, body = text.partition("\n")
        if '"' in text or "\r" in text or (header is not None and head != header) or body.count("\n") != n_picks:
            return None
        if body and (not body.endswith("\n") or "\n\n" in body):
            return None
        header = head
        bodies.append(body)
        metas[name] = meta
        rows.append(n_picks)
    if header is None:
        return None
    try:
        picks = _read_work_csv(io.StringIO(header + "\n" + "".join(bodies)))
    except (ValueError, TypeError, pd.errors.ParserError):
        return None
    return (picks, metas, rows) if len(picks) == sum(rows) else None


@dataclass
class RunResult:
    out_dir: Path
    results: list[MicResult]
    picks: pd.DataFrame
    plan: ExtractionPlan | None
    files: list[Path]
    seconds: float
    errors: list[str] = field(default_factory=list)
    #: Things the user should know that are not failures (renamed micrographs, ...).
    notes: list[str] = field(default_factory=list)
    interrupted: bool = False
    workers: int = 1
    #: Micrographs of the run, including those an interruption left undone (default: ``len(results)``).
    n_micrographs: int | None = None
    #: The polarity check (:func:`polarity_check_for`), when it ran: its notes are among ``notes``.
    polarity_check: dict | None = None
    #: The report drawn after the dataset-level outputs (:func:`report_summary`), when it was: its time is
    #: not in ``seconds``. Printed by :func:`format_summary`; not in ``run_summary.json``, written before it.
    report: dict | None = None
    #: A ``watch=true`` session: ``seconds`` is the session's, waiting for files included, so no rate is
    #: made of it (a session that waited an hour for ten files did not pick at six minutes a micrograph).
    watched: bool = False
    #: Names of the micrographs of a ``watch=true`` session, at an update while it runs, whose file failed but may
    #: be a copy still being written: kept apart from :attr:`failed` (``not_finished`` in ``run_summary.json``)
    #: until the session stops and they still fail.
    not_finished: frozenset[str] = frozenset()

    @property
    def failed(self) -> list[MicResult]:
        return [r for r in self.results if r.status == "failed" and r.name not in self.not_finished]

    @property
    def unfinished(self) -> list[MicResult]:
        """The failed micrographs of :attr:`not_finished`."""
        return [r for r in self.results if r.status == "failed" and r.name in self.not_finished]

    @property
    def ok(self) -> bool:
        return not self.failed and not self.errors and not self.interrupted

    def _rejected_by_reason(self) -> dict[str, int]:
        """Rejected candidates per ``reject_reason``, most frequent first (ties by name)."""
        if not len(self.picks) or schema.REASON not in self.picks.columns:
            return {}
        counts = schema.rejection_reasons(self.picks).value_counts()
        return {k: int(counts[k]) for k in sorted(counts.index, key=lambda k: (-counts[k], k))}

    def _accepted_with(self, column: str) -> int:
        """Accepted picks flagged in ``column`` (``retried``, ``peeled``)."""
        if not len(self.picks) or column not in self.picks.columns:
            return 0
        flagged = schema.flags(self.picks[column])
        return int((flagged & self.picks[schema.ACCEPTED].to_numpy(dtype=bool)).sum())

    def summary(self) -> dict:
        acc = int(self.picks[schema.ACCEPTED].sum()) if len(self.picks) else 0
        picked = [r for r in self.results if r.status == "ok"]
        return {
            "out_dir": str(self.out_dir),
            "micrographs": {
                "total": max(len(self.results), self.n_micrographs or 0),
                "ok": len(picked),
                "skipped": sum(r.status == "skipped" for r in self.results),
                "failed": len(self.failed),
                "not_done": max(0, (self.n_micrographs or 0) - len(self.results)),
                **({"not_finished": len(self.unfinished)} if self.watched or self.unfinished else {}),
            },
            "picks": {"total": int(len(self.picks)), "accepted": acc, "rejected": self._rejected_by_reason(),
                      "retried_accepted": self._accepted_with(schema.RETRIED),
                      "peeled_accepted": self._accepted_with(PEELED)},
            "bins": [] if self.plan is None else [
                # 4 decimals as extraction_plan.json: rounded to 1, 108.54 became 108.5 and the console said 108 where the plan says 109
                {"bin": b.index + 1, "d_min_px": round(b.d_min_px, 4), "d_max_px": round(b.d_max_px, 4), "count": b.count, "box_px": b.box_px}
                for b in self.plan.bins
            ],
            "failures": [{"micrograph": r.path, "error": r.error.splitlines()[0]} for r in self.failed],
            # A watch session's files that failed but may still be being written: not failures (yet); also those of a
            # merge of its folder.
            **({"not_finished": [{"micrograph": r.path, "error": r.error.splitlines()[0]} for r in self.unfinished]}
               if self.watched or self.unfinished else {}),
            "errors": self.errors,
            "notes": self.notes,
            **({"polarity_check": self.polarity_check} if self.polarity_check is not None else {}),
            "interrupted": self.interrupted,
            "workers": self.workers,
            "peak_rss_mb": round(max((r.peak_rss_mb for r in picked), default=0.0), 1),
            "micrographs_per_s": float(f"{len(picked) / self.seconds:.4g}")
            if self.seconds > 0 and any(r.seconds > 0 for r in picked) and not self.watched else None,
            **({"watch": True} if self.watched else {}),
            "seconds": round(self.seconds, 3),
            **({"report": self.report} if self.report is not None else {}),
        }


def report_summary(stats: dict | None) -> dict | None:
    """What the console summary says of a report: ``stats`` of :func:`lipoframe.report.write_report_safely`
    (None: not written), with the ``seconds`` the whole report took (overlays, plots and the page)."""
    if stats is None:
        return None
    return {"seconds": round(stats["seconds"], 3), "overlays_drawn": int(stats.get("rendered", 0)),
            "overlays_reused": int(stats.get("cached", 0)), "overlays_failed": int(stats.get("failed", 0)),
            "workers": int(stats.get("workers", 0))}


def write_run_report(out_dir: Path, *, cfg: LipoframeConfig, stages: StageSet, result: "RunResult") -> None:
    """Draw the report of a run, ``watch=true`` session or merge whose dataset-level outputs are written, into ``result.report``.

    :func:`lipoframe.report.write_report_safely`, summed up by
    :func:`report_summary` for the console (how long the overlays took,
    apart from the picking). Ctrl-C or SIGTERM while drawing it
    (:class:`KeyboardInterrupt`, re-raised): the picks, exports and plan are
    complete, and ``run_summary.json`` is made to say the report is not, and
    how far it got (:func:`record_report_interrupted`).
    """
    from lipoframe.report import write_report_safely

    try:
        result.report = report_summary(write_report_safely(out_dir, cfg=cfg, stages=stages, result=result))
    except KeyboardInterrupt as exc:
        record_report_interrupted(out_dir, how_far=str(getattr(exc, "progress", "")))
        raise


def resolve_workers(requested: int, n_jobs: int) -> int:
    """Worker processes to use: ``requested`` (0 = the CPUs this process may use), at most ``n_jobs``."""
    if requested <= 0:
        try:
            requested = len(os.sched_getaffinity(0))  # respects SLURM/cgroup CPU limits
        except (AttributeError, OSError):
            requested = os.cpu_count() or 1
    return max(1, min(requested, n_jobs))


def run_jobs(
    jobs: list[MicJob], cfg: LipoframeConfig, stages: StageSet, *, progress: bool = True, notes: list[str] | None = None,
    tell_failure: Callable[[MicResult], None] | None = None,
) -> tuple[list[MicResult], bool]:
    """Pick ``jobs`` (skipping those already done when resuming) with a progress bar.

    Returns the results (in completion order) and whether Ctrl-C interrupted
    the run. ``notes``, when given, gets the notes on the micrographs picked
    before at another pixel size (:func:`pixel_size_change_notes`: re-used,
    or picked again and why), for ``run_summary.json`` and the report.
    Each micrograph that fails is told as it fails: its error is logged, or
    given to ``tell_failure`` when given (a ``watch=true`` session tells a
    file that may still be being written otherwise).
    """
    from lipoframe import __version__

    version = stages.code_version or __version__

    resume = PixelSizeResume(cfg, stages)  # the run's settings' fingerprints, worked out once

    def saved(jobs: list[MicJob], status: str) -> dict[str, MicResult]:
        """The jobs' current saved results (same settings, input files and code version), by name."""
        found: dict[str, MicResult] = {}
        by_run: dict[tuple[Path, str], dict[str, MicJob]] = {}
        for job in jobs:
            by_run.setdefault((job.out_dir, job.fingerprint), {})[job.name] = job
        for (out_dir, fingerprint), named in by_run.items():
            stamps = dict(zip(named, input_stamps([(job.path, name) for name, job in named.items()], stages)))
            wanted = {name: stamp for name, stamp in stamps.items() if stamp is not None}
            moved = 0
            infos = read_infos(out_dir, list(wanted))
            counts = saved_counts(out_dir, wanted, fingerprint, version=version, infos=infos)
            for name in wanted:
                if name in counts and not pixel_size_source_changed(counts[name][0], infos[name], named[name].path, cfg, stages):
                    meta, n, n_acc = counts[name]
                elif infos[name] is None:  # no saved result (a new micrograph), or one unreadable: picked
                    continue
                else:  # one picked at another pixel size, re-used where that cannot change its picks
                    again = reused_at_pixel_size(out_dir, name, named[name].path, fingerprint, source=wanted[name],
                                                 version=version, cfg=cfg, stages=stages, info=infos[name], resume=resume)
                    if again is None:
                        continue
                    changed.append(again)
                    if again.meta is None:
                        continue
                    meta, n = again.meta, len(again.picks)
                    n_acc = int(again.picks[schema.ACCEPTED].sum()) if n else 0
                found[name] = MicResult(name, str(named[name].path), status, n, n_acc)
                moved += repoint_work(out_dir, meta, named[name].path)
            if moved:
                log.info("%d micrograph(s) are the same files as picked before at another path (a moved data folder): "
                         "their saved results now name the new path", moved)
        return found

    results: list[MicResult] = []
    todo: list[MicJob] = []
    changed: list[PixelSizeReuse] = []  # results picked before at another pixel size
    done_before = saved([job for job in jobs if job.resume], "skipped")
    said = pixel_size_change_notes(changed)
    if notes is not None:
        notes.extend(said)
    for job in jobs:
        if job.name in done_before:
            results.append(done_before[job.name])
            continue
        todo.append(MicJob(job.path, job.name, job.out_dir, job.fingerprint, False, job.verbose))
    if results:
        log.info("resuming: %d of %d micrographs are already done", len(results), len(jobs))
    workers = resolve_workers(cfg.runner.workers, len(todo))
    interrupted = False
    with _progress(len(jobs), cfg.runner.progress and progress, initial=len(results)) as bar:
        redirect = contextlib.nullcontext()
        if not bar.disable:
            from tqdm.contrib.logging import logging_redirect_tqdm

            redirect = logging_redirect_tqdm(tqdm_class=type(bar))  # log lines above the bar, not through it
        # Without a terminal (a batch job's log, nohup, a pipe) the bar is silent: a line now and then instead.
        lines = ProgressLines(len(jobs), initial=len(results)) if bar.disable and cfg.runner.progress and progress else None
        failed = 0

        def done(res: MicResult) -> None:
            nonlocal failed
            results.append(res)
            if res.status == "failed":
                failed += 1
                if tell_failure is None:
                    log.error(res.error)
                else:
                    tell_failure(res)
                bar.set_postfix_str(f"{failed} failed", refresh=False)
            bar.update(1)
            if lines is not None:
                lines.update(failed)

        with redirect:
            try:
                execute_jobs(todo, cfg, stages, workers, done)
            except KeyboardInterrupt:
                interrupted = True
    if interrupted:
        # A micrograph whose result was saved just before Ctrl-C/SIGTERM, but
        # not yet reported back, is done: count it (the dataset outputs use it).
        seen = {r.name for r in results}
        late = saved([job for job in todo if job.name not in seen], "ok")
        results.extend(late[job.name] for job in todo if job.name in late)
    return results, interrupted


#: Key of the run_summary.json of a folder copied or moved since it was made, and planned there: where it was made.
MADE_IN = "made_in"
#: Keys of ``run_summary.json`` that describe the picking, kept by ``lipoframe plan``.
PICKING_SUMMARY = ("out_dir", MADE_IN, "micrographs", "failures", "not_finished", "polarity_check", "interrupted", "workers", "peak_rss_mb",
                   "micrographs_per_s", "watch", "seconds", "run_notes", "run_pixel_size_notes")
#: Keys of run_summary.json: the notes of the run that picked, and those of them on the pixel size it used.
RUN_NOTES, RUN_PIXEL_SIZE_NOTES = PICKING_SUMMARY[-2:]
#: How the note of a run stopped while drawing its report (its picking complete) begins; a report written later drops it.
REPORT_INTERRUPTED = "interrupted while writing the report"
#: How the note of a ``lipoframe plan`` stopped in its binning or writers begins; a plan that finishes drops it.
PLAN_INTERRUPTED = "interrupted while making the plan"
#: Key of the run_summary.json of a ``lipoframe plan`` stopped so (``interrupted`` is then true): the
#: ``interrupted`` flag of the run that picked, which the plan that finishes restores.
PICKING_INTERRUPTED = "picking_interrupted"


def recorded_failures(summary: Any) -> tuple[dict[str, str], dict[str, str]]:
    """The micrographs a ``run_summary.json`` (``summary``, as read) lists as failed, and as not finished.

    Each is a dict of the micrograph's path to its error, in the order listed:
    ``failures``, and ``not_finished``, the files of a ``watch=true``
    session's update that failed but may be copies still being written
    (:attr:`RunResult.not_finished`). Entries without a micrograph, and a
    summary that is no dict (unreadable, or none), list none.
    """
    listed = []
    for key in ("failures", "not_finished"):
        entries = summary.get(key) if isinstance(summary, dict) else None
        listed.append({str(f["micrograph"]): str(f.get("error", "")) for f in entries if isinstance(f, dict) and "micrograph" in f}
                      if isinstance(entries, list) else {})
    failures, not_finished = listed
    return failures, not_finished


def notes_beginning(notes, prefix: str) -> list[str]:
    """The notes of ``notes`` (a ``run_summary.json`` list; anything else holds none) that begin with ``prefix``
    (:data:`REPORT_INTERRUPTED`, :data:`PLAN_INTERRUPTED`)."""
    return [str(n) for n in notes if str(n).startswith(prefix)] if isinstance(notes, list) else []


def picking_interrupted(picking: dict) -> bool:
    """Whether the run that picked (its ``run_summary.json``, ``picking``) was interrupted, not a plan made of it since."""
    return bool(picking.get(PICKING_INTERRUPTED, picking.get("interrupted", False)))


def picking_complete(picking: dict, names: list[str], results: list[MicResult]) -> bool:
    """Whether every micrograph of ``names`` has saved picks or failed in the run that picked them (its ``run_summary.json``, ``picking``).

    ``results``: the plan's (:func:`lipoframe.plancmd.run_micrographs`). False
    when micrographs were not done (``micrographs.not_done``: stopped while
    picking or copying; the counts not recorded), when one without saved
    picks is not among the run's ``failures``, and for a run stopped while
    drawing its report (:data:`REPORT_INTERRUPTED`: the report, not a plan,
    settles that).
    """
    counts = picking.get("micrographs")
    if not isinstance(counts, dict) or "not_done" not in counts:
        return False
    try:
        not_done = int(counts.get("not_done") or 0)
    except (TypeError, ValueError):
        return False
    failures = picking.get("failures") if isinstance(picking.get("failures"), list) else []
    failed = {str(f.get("micrograph")) for f in failures if isinstance(f, dict)}
    saved = {r.name for r in results if r.status in ("ok", "skipped") or (r.status == "failed" and str(r.path) in failed)}
    report_stopped = any(notes_beginning(picking.get(key), REPORT_INTERRUPTED) for key in ("notes", RUN_NOTES))
    return not_done == 0 and all(n in saved for n in names) and not report_stopped


def record_report_interrupted(out_dir: Path, *, how_far: str = "") -> None:
    """Record in ``out_dir``'s ``run_summary.json`` (and log) that the report was not written: Ctrl-C or SIGTERM while drawing it.

    The picks, exports and extraction plan are complete, but the summary must
    not say the run (or ``lipoframe plan --report``) finished: it says
    ``interrupted`` and gets a note (:data:`REPORT_INTERRUPTED`, with
    ``how_far``, :class:`lipoframe.report.ReportProgress`, when given), in
    :data:`RUN_NOTES` too for a plan made later. A report stopped again (a
    ``lipoframe report`` of the folder) puts how far it got in place of the
    note there. The report written later (``lipoframe report``, ``lipoframe
    plan --report``) settles both
    (:func:`lipoframe.report.settle_report_interruption`). A summary that
    already says ``interrupted`` for another reason (the plan of a run
    stopped before it finished) is left as it is: a report must not settle
    that; so is a folder without ``run_summary.json`` (a run killed outright).
    """
    summary_path = out_dir / "run_summary.json"
    stopped = f"interrupted while writing the report{f' ({how_far})' if how_far else ''}"
    try:
        summary = json.loads(summary_path.read_text())
    except FileNotFoundError:
        summary = None
    notes = summary.get("notes") if isinstance(summary, dict) and isinstance(summary.get("notes"), list) else []
    # The picks, exports and plan are complete unless the summary says otherwise (not for a report stopped before).
    complete = isinstance(summary, dict) and (bool(notes_beginning(notes, REPORT_INTERRUPTED)) or not summary.get("interrupted"))
    if not complete:
        log.warning("%s; `lipoframe report %s` writes it", stopped, shlex.quote(str(out_dir)))
        return
    log.warning("%s; the picks, exports and extraction plan are complete: `lipoframe report %s` (or the same command again) "
                "writes it", stopped, shlex.quote(str(out_dir)))
    said = f"{stopped}: the picks, exports and extraction plan are complete; `lipoframe report {shlex.quote(str(out_dir))}` writes it"
    run_notes = summary.get(RUN_NOTES) if isinstance(summary.get(RUN_NOTES), list) else []
    if notes_beginning(notes, REPORT_INTERRUPTED):  # stopped so before (a plan of it carries the run's note, and its flag)

        def now(ns: list) -> list:
            return [said if str(n).startswith(REPORT_INTERRUPTED) else n for n in ns]

        updated = {**summary, "notes": now(notes), **({RUN_NOTES: now(run_notes)} if RUN_NOTES in summary else {})}
    else:
        # RUN_NOTES: for a plan made later, as the report reads it
        updated = {**summary, "interrupted": True, "notes": [*notes, said], RUN_NOTES: [*run_notes, said]}
    if updated != summary:
        write_text(summary_path, json.dumps(updated, indent=2))


def picking_named_here(picking: dict, out_dir: Path) -> dict:
    """The ``run_summary.json`` of the run that picked (``picking``), saying of ``out_dir`` what it says of the run's folder.

    The run's notes name the folder it was made in (its ``out_dir``): the
    commands to paste (```lipoframe plan FOLDER pixel_size=<Å/px>``` of the
    1 Å/px note, ```lipoframe report FOLDER```) and what was done there. After
    the folder is copied or moved, ``lipoframe plan`` of the copy says them
    of the copy: each mention of that folder as a whole path (not a longer
    path it begins) in ``out_dir``, ``notes`` and the run's notes
    (:data:`RUN_NOTES`, :data:`RUN_PIXEL_SIZE_NOTES`) becomes ``out_dir``'s
    absolute path, so that a copy of the copy is renamed as well. The folder
    it was made in is kept as :data:`MADE_IN` (that of the first copy's
    summary, for a copy of a copy): ``lipoframe report`` says the folder was
    copied or moved when nothing else records where (a merge's or a
    ``hydra.output_subdir=null`` run's ``output`` given relative). Unchanged
    when ``out_dir`` is that folder (however spelled) or the summary names
    none, or names it by a relative path (``run_pipeline(cfg, "out")``).
    """
    recorded = picking.get("out_dir")
    if not isinstance(recorded, str) or not os.path.isabs(recorded):
        # None, or relative (run_pipeline(cfg, "out")) to a working folder not recorded: not to be told from this
        # folder, and as a bare word ("out") it is found in the notes where it is no folder ("leave it out of").
        return picking
    here = Path(out_dir).absolute()
    try:
        if Path(recorded).resolve() == here.resolve():
            return picking
    except (OSError, RuntimeError):  # a symbolic link loop: not this folder
        pass
    # Not inside a longer path or name: "/data/run1" neither in "/data/run1/mics/a.mrc" nor in "/data/run1.bak".
    # Quoted for the shell in a command to paste ('/data/my run'): the copy's name is, too.
    quoted = shlex.quote(recorded)
    whole = re.compile(r"(?<![^\s`'\"(])(?:" + (f"(?P<quoted>{re.escape(quoted)})|" if quoted != recorded else "")
                       + re.escape(recorded) + r")(?![^\s`'\"),;:])")

    def here_as(m: re.Match) -> str:
        in_command = m.groupdict().get("quoted") or re.search(r"`lipoframe [a-z]+ $", m.string[:m.start()])
        return shlex.quote(str(here)) if in_command else str(here)

    def named_here(notes):
        if not isinstance(notes, list):
            return notes
        return [whole.sub(here_as, n) if isinstance(n, str) else n for n in notes]

    made_in = picking.get(MADE_IN)
    return {**picking, "out_dir": str(here), MADE_IN: made_in if isinstance(made_in, str) and os.path.isabs(made_in) else recorded,
            **{key: named_here(picking[key]) for key in ("notes", RUN_NOTES, RUN_PIXEL_SIZE_NOTES) if key in picking}}


def replanned_notes(picking: dict, pixel_size: float | None) -> tuple[list[str], list[str]] | None:
    """The notes of the run that picked (its ``run_summary.json``, ``picking``) that a new plan keeps, and those on the pixel size.

    A plan changes neither the picks, the diameter range, the filters nor
    the inputs, so the run's notes on them (renamed or repeated inputs,
    particles just outside the range, the polarity check, an earlier run's
    outputs removed, a report the run could not draw) still apply. Its notes
    on the pixel size it used (a STAR and a header that disagree, a header
    that gives a placeholder 1 Å/px, micrographs of different pixel sizes)
    apply unless the plan gives every micrograph a ``pixel_size`` of its own:
    then there is nothing left to say about them. None for a folder from
    before the run's notes were recorded (the plan then makes its own notes).
    """
    notes, on_pixel = picking.get(RUN_NOTES), picking.get(RUN_PIXEL_SIZE_NOTES)
    if not isinstance(notes, list):
        return None
    on_pixel = [str(n) for n in on_pixel] if isinstance(on_pixel, list) else []
    drop = set(on_pixel) if pixel_size is not None else set()
    return [str(n) for n in notes if str(n) not in drop], ([] if pixel_size is not None else on_pixel)


def with_pixel_size(picks: pd.DataFrame, metas: dict[str, MicrographMeta],
                    pixel_size: float) -> tuple[pd.DataFrame, dict[str, MicrographMeta]]:
    """``picks`` and ``metas`` with every micrograph at ``pixel_size`` Å/px (new ``diameter_A``, :func:`with_diameter_A`; the inputs are not changed)."""
    metas = {n: replace(m, pixel_size=float(pixel_size)) for n, m in metas.items()}
    return with_diameter_A(picks, pixel_size), metas


def finish_run(
    out_dir: Path,
    names: list[str],
    results: list[MicResult],
    stages: StageSet,
    cfg: LipoframeConfig,
    *,
    pm=None,
    t0: float,
    errors: list[str],
    notes: list[str],
    interrupted: bool = False,
    workers: int = 1,
    finalize: bool = True,
    picking: dict | None = None,
    pixel_size: float | None = None,
    polarity: dict | None = None,
    listed_notes: list[str] = (),
    replan: str = "",
    told: set[str] | None = None,
    watched: bool = False,
    not_finished: Collection[str] = (),
) -> RunResult:
    """Collect the saved per-micrograph results of ``names``, run the dataset-level
    stages (unless ``finalize`` is false) and write ``run_summary.json``.

    ``picking``: the ``run_summary.json`` of the run that picked the
    micrographs, when only the dataset-level stages run again
    (``lipoframe plan``): its micrograph counts, timings and folder are kept,
    and its notes (:func:`replanned_notes`); of a folder copied or moved since,
    they name ``out_dir`` (:func:`picking_named_here`). ``polarity``: the polarity check of
    this run (:func:`polarity_check_for`), whose notes follow ``notes``.
    ``pixel_size``: every micrograph's pixel size instead of the saved one
    (``lipoframe plan pixel_size=`` of a run picked in pixels; ``diameter_A``
    follows). ``listed_notes``: those of ``notes`` that
    :func:`listed_pixel_size_notes` and :func:`given_pixel_size_notes`
    made, and those on the micrographs picked before at another pixel size
    (:func:`pixel_size_change_notes`), recorded as notes on the pixel
    size, which a plan that gives one drops. ``replan``: the ``lipoframe
    plan`` command (with ``picking``), which the note of a plan stopped in
    its binning or writers (Ctrl-C, SIGTERM) asks to run again; its
    ``run_summary.json`` then says ``interrupted`` and records the picking
    run's own flag (:data:`PICKING_INTERRUPTED`), which a plan that
    finishes restores, or clears when the run's picking is complete
    (:func:`picking_complete`: a run or merge stopped in its own binning or
    writers, whose outputs this plan has made). ``told``: the notes a
    ``watch=true`` session has logged at its earlier updates, logged once
    (:func:`tiff_rows_notes`). ``watched``: a ``watch=true`` session, whose
    time (``t0`` on) includes waiting for files (:attr:`RunResult.watched`),
    and ``not_finished`` the names of its failed micrographs not counted as
    failed yet (:attr:`RunResult.not_finished`).
    """
    if isinstance(picking, dict):  # made elsewhere (a copied or moved folder): its notes name this folder
        picking = picking_named_here(picking, out_dir)
    if polarity is None and isinstance(picking, dict) and isinstance(picking.get("polarity_check"), dict):
        polarity = picking["polarity_check"]
    kept = replanned_notes(picking, pixel_size) if isinstance(picking, dict) else None
    if kept is not None:  # lipoframe plan: the picking run's notes that still apply (its polarity check's among them)
        notes = notes + [n for n in kept[0] if n not in notes and not n.startswith(TIFF_ROWS)]  # the plan's flip_y says
    elif polarity is not None:
        notes = notes + [str(n) for n in polarity.get("notes", [])]
    on_pixel_size = list(listed_notes) if kept is None else kept[1]
    order = {n: i for i, n in enumerate(names)}
    results.sort(key=lambda r: order.get(r.name, len(order)))
    good = [r.name for r in results if r.status in ("ok", "skipped")]
    infos = read_infos(out_dir, good)
    picks, metas = collect_work(out_dir, good, infos=infos)
    metas = with_flip_y(out_dir, metas, infos, cfg.flip_y)
    if pixel_size is not None:
        picks, metas = with_pixel_size(picks, metas, pixel_size)
    plan = None
    files: list[Path] = []
    stopped = False
    if finalize:
        # An earlier run's, rewritten by the dataset-level filters; an interrupted run (no finalize) keeps it with
        # the earlier outputs of the same settings (drop_outputs_of_other_settings removed those of other settings).
        (out_dir / DATASET_REJECTIONS).unlink(missing_ok=True)
        try:
            picks, plan, files = finalize_dataset(picks, metas, stages, cfg, out_dir,
                                                  made_from={n: result_identity(infos.get(n)) for n in metas})
        except WriterError as exc:  # logged by finalize_dataset; the other writers and the plan are written
            picks, plan, files = exc.picks, exc.plan, exc.files
            errors.extend(exc.failures)
        except Exception as exc:  # noqa: BLE001 - the per-micrograph results are saved; report and go on
            if isinstance(exc, DatasetStageError):  # says which stage and why
                msg = str(exc)
            else:
                stage = failing_stage(exc.__traceback__)
                msg = f"dataset stage {stage + ' ' if stage else ''}failed: {type(exc).__name__}: {exc}"
            if cfg.runner.verbose:
                msg += "\n" + traceback.format_exc()
            errors.append(msg.splitlines()[0])
            log.error(msg)
        except KeyboardInterrupt:
            # Ctrl-C or SIGTERM in binning or a writer: run_summary.json says so below
            # (an earlier run's would stay and say the outputs are complete).
            stopped = interrupted = True
        if not stopped and kept is None:
            on_pixel = placeholder_pixel_size_notes(metas, cfg, out_dir=out_dir, stages=stages) + pixel_size_notes(metas)
            notes = notes + on_pixel + range_notes_for(picks, metas, cfg) + replaced_pixels_notes(infos)
            on_pixel_size += on_pixel
        elif not stopped:
            # A plan's, from the picks and pixel sizes (the same as the run's when it made them; those of a run
            # stopped before its dataset step come now). Not the 1 Å/px note: it names the run's picking settings
            # in Å, which the plan's config does not hold; the run's is kept.
            notes = notes + [n for n in pixel_size_notes(metas) + range_notes_for(picks, metas, cfg) if n not in notes]
        if not stopped:
            notes = notes + tiff_rows_notes(metas, cfg, out_dir, told=told)
    if stopped and picking:
        said = (f"{PLAN_INTERRUPTED}: its exports and extraction plan files are incomplete; "
                f"run `{replan or 'lipoframe plan ' + shlex.quote(str(out_dir))}` again")
        notes = notes + [said]
        log.warning(said)
    result = RunResult(out_dir, results, picks, plan, files, time.perf_counter() - t0, errors, notes, interrupted, workers,
                       n_micrographs=len(names), polarity_check=polarity, watched=watched, not_finished=frozenset(not_finished))
    summary = result.summary()
    if picking:
        carried = {k: picking[k] for k in PICKING_SUMMARY if k in picking}
        # The picking run's flag, not that of a plan stopped since; a plan stopped now says so, keeping the run's.
        own = picking_interrupted(picking)
        if own and not stopped and finalize and picking_complete(picking, names, results):
            # A run (or merge) stopped in its binning or a writer, after every micrograph was picked: this plan
            # has made the outputs it did not, so nothing is left for the same command again to do.
            own = False
        carried["interrupted"] = own
        summary = {**summary, **carried, "replanned_seconds": summary["seconds"]}
        if stopped:
            summary = {**summary, "interrupted": True, PICKING_INTERRUPTED: own}
    if kept is None and not picking:  # the run that picked: its notes, for the plans made of it later
        summary = {**summary, RUN_NOTES: list(notes), RUN_PIXEL_SIZE_NOTES: [n for n in on_pixel_size if n in notes]}
    write_text(out_dir / "run_summary.json", json.dumps(summary, indent=2))
    if stopped:
        raise KeyboardInterrupt
    if pm is not None and finalize:
        from lipoframe.plugins import call_run_end

        failed = call_run_end(pm, out_dir=out_dir, summary=summary)
        for msg in failed:
            log.error(msg)
        if failed:
            # The outputs are complete; the exit code and run_summary.json say what did not run.
            result.errors.extend(failed)
            write_text(out_dir / "run_summary.json", json.dumps({**summary, "errors": list(result.errors)}, indent=2))
    return result


@contextlib.contextmanager
def sigterm_as_interrupt():
    """Turn SIGTERM (``kill``, the end of a SLURM job) into Ctrl-C while a run
    lasts, so it stops cleanly: the micrographs in progress are finished and
    ``run_summary.json`` records the interruption. Only in the main thread
    (signal handlers can be set nowhere else)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def run_pipeline(
    cfg: LipoframeConfig,
    out_dir: str | os.PathLike,
    *,
    registry: StageRegistry | None = None,
    pm=None,
    exclude: str | os.PathLike | None = None,
) -> RunResult:
    """Run lipoframe on ``cfg.input`` and write everything below ``out_dir``.

    Files inside ``exclude`` (default ``out_dir``; a sweep's job gives the
    sweep folder, which holds the other jobs' outputs) are never inputs.

    Bad inputs are reported (one line each, naming the file) and skipped; the
    other micrographs are processed. Check :attr:`RunResult.ok`. Micrographs
    already done by an earlier run with the same settings are skipped
    (``runner.resume``). With ``cfg.watch`` it keeps running
    (:func:`lipoframe.watch.watch_pipeline`).

    Raises
    ------
    InputError
        If the output folder cannot be written, or there is no micrograph to
        pick (:func:`nothing_to_pick`; the input errors are logged, and no
        dataset is made: an earlier run's outputs are left alone).
        A run in which every micrograph fails returns its result (not ``ok``)
        with an error saying so, and makes no dataset either
        (:func:`every_micrograph_failed`).
    KeyboardInterrupt
        After Ctrl-C, once the micrographs in progress are saved and
        ``run_summary.json`` records the interruption.
    """
    from lipoframe import plugins

    t0 = time.perf_counter()
    if registry is None or pm is None:
        pm, registry, _ = plugins.load()
    if cfg.watch:
        from lipoframe.watch import watch_pipeline

        return watch_pipeline(cfg, out_dir, registry=registry, pm=pm, exclude=exclude)
    out_dir = Path(out_dir)
    exclude = Path(exclude) if exclude is not None else out_dir
    with output_folder(out_dir), sigterm_as_interrupt():
        stages = build_stages(cfg, registry)
        specs = list(cfg.input)
        demo = None
        if not specs:
            from lipoframe.synthetic import write_demo_dataset

            log.info("no input given: running on the built-in demo set")
            demo = out_dir / "demo_input"
            if not (demo / "truth.csv").is_file():  # keep it, so resume works
                write_demo_dataset(demo)
            specs = [str(demo)]
        paths, errors, same_file, n_ours, theirs = run_inputs(specs, stages, exclude, keep=demo)
        if theirs:
            log.warning("left out %d input file(s) that the stages read for other micrographs (heatmaps or masks), e.g. %s",
                        len(theirs), theirs[0])
        from lipoframe import __version__

        log.info("lipoframe %s: %d micrograph(s) from %s into %s", __version__, len(paths), ", ".join(map(str, specs)), out_dir)
        if n_ours:
            log.warning("left out %d file(s) inside the output folder %s (a run's outputs are not its input)", n_ours, exclude)
        if not paths and not errors:
            errors.append(no_match_message(specs, n_ours))
        for e in errors:
            log.error(e)
        if nothing_to_pick(paths):
            # Every input failed before a micrograph was read (a mistyped glob or file name, a list that cannot be
            # used): the errors say all there is, and no empty dataset (plan, exports) is made, nor does one replace
            # an earlier run's.
            for p in paths:
                log.error("%s: file not found", p)
            raise InputError(earlier_run_message(out_dir) if (out_dir / MANIFEST).is_file() else NOTHING_TO_PICK)
        names = micrograph_names(paths)
        notes = same_file_notes(same_file, paths, names) + name_notes(paths, names)
        for n in notes[:MAX_LISTED]:
            log.warning(n)
        if len(notes) > MAX_LISTED:
            log.warning("... and %d more notes on the inputs (see run_summary.json)", len(notes) - MAX_LISTED)
        listed = listed_pixel_size_notes(stages, cfg) + given_pixel_size_notes(paths, stages, cfg)
        notes += listed
        dropped = drop_outputs_of_other_settings(out_dir, cfg)  # before write_manifest: it may read the earlier inputs.json
        if dropped:
            log.warning(dropped)
            notes.append(dropped)
        fingerprint = cfg.per_micrograph_fingerprint()
        write_manifest(out_dir, specs, paths, names, cfg, fingerprint, stages=stages)
        pairs = shard(list(zip(paths, names)), cfg.shard.index, cfg.shard.count)
        jobs = [MicJob(p, n, out_dir, fingerprint, cfg.runner.resume, cfg.runner.verbose) for p, n in pairs]
        workers = resolve_workers(cfg.runner.workers, len(jobs))
        resized: list[str] = []  # micrographs picked before at another pixel size: re-used, or picked again and why
        results, interrupted = run_jobs(jobs, cfg, stages, notes=resized)
        notes += resized
        none_picked = [] if interrupted else every_micrograph_failed(out_dir, results)
        errors.extend(none_picked)
        polarity = None
        if not interrupted and not none_picked and cfg.runner.polarity_check:
            try:
                polarity = polarity_check_for(results, [n for _, n in pairs], stages, cfg, out_dir)
            except KeyboardInterrupt:  # every micrograph is saved: the same command again finishes the run
                interrupted = True
        result = finish_run(
            out_dir, [n for _, n in pairs], results, stages, cfg, pm=pm, t0=t0,
            errors=errors, notes=notes, interrupted=interrupted, workers=workers, finalize=not interrupted and not none_picked,
            polarity=polarity, listed_notes=listed + resized,
        )
        if not interrupted and not none_picked:
            from lipoframe.merge import drop_merge_record

            drop_merge_record(out_dir)  # its results are in place: the folder is this run's, not an earlier merge's
        if none_picked:
            pass  # no report either: an earlier run's stays with its outputs
        elif cfg.runner.report and not interrupted:
            # Drawing the overlays can take longer than the picking: the console says how long, apart from it.
            write_run_report(out_dir, cfg=cfg, stages=stages, result=result)
        elif not interrupted:
            from lipoframe.report import drop_earlier_report

            drop_earlier_report(out_dir)
    if interrupted:
        done = sum(r.status != "failed" for r in results)
        log.warning("interrupted: %d of %d micrographs are done and saved; run the same command again to continue", done, len(jobs))
        raise KeyboardInterrupt
    return result


def _rejected_note(rejected: dict[str, int], most: int = 3) -> str:
    """`` (rejected: 250 weak_unsupported, 60 no_edge, 40 diameter_range, 11 for 2 other reasons)`` for the summary line.

    The first ``most`` reasons are named; a single reason beyond them is named too.
    """
    if not rejected:
        return ""
    items = list(rejected.items())
    if len(items) <= most + 1:
        return f" (rejected: {', '.join(f'{n} {reason}' for reason, n in items)})"
    text = ", ".join(f"{n} {reason}" for reason, n in items[:most])
    rest = sum(n for _, n in items[most:])
    return f" (rejected: {text}, {rest} for {len(items) - most} other reasons)"


def format_summary(summary: dict, *, shown: Collection[str] = ()) -> str:
    """A short human-readable table of a run summary.

    ``shown``: the failures and errors the console has already shown, as they
    happened (:func:`lipoframe.logs.logged_errors`): they are counted, in one
    line, rather than printed a second time.
    """
    m = summary["micrographs"]
    lines = [
        f"micrographs  ok {m['ok']}  skipped {m['skipped']}  failed {m['failed']}"
        + (f"  not finished {n}" if (n := m.get("not_finished", 0)) else "") + f"  (total {m['total']})",
        f"picks        {summary['picks']['accepted']} accepted of {summary['picks']['total']}"
        + (f" ({n} retried)" if (n := summary["picks"].get("retried_accepted", 0)) else "")
        + (f" ({n} found after peeling)" if (n := summary["picks"].get("peeled_accepted", 0)) else "")
        + _rejected_note(summary["picks"].get("rejected", {})),
    ]
    for b in summary["bins"]:
        lines.append(f"  bin {b['bin']}: {format_range(b['d_min_px'], b['d_max_px'])} px, {b['count']} pick{'' if b['count'] == 1 else 's'}, "
                     f"box {b['box_px']} px")
    notes, failures = summary.get("notes", []), summary["failures"]
    for note in notes[:MAX_LISTED]:
        lines.append(f"NOTE   {note}")
    if len(notes) > MAX_LISTED:
        lines.append(f"NOTE   ... and {len(notes) - MAX_LISTED} more (see run_summary.json)")
    said = [f for f in failures if f["error"] in shown]
    if said:
        lines.append(f"FAILED {len(said)} micrograph{'' if len(said) == 1 else 's'} (named above; listed in run_summary.json)")
    failures = [f for f in failures if f["error"] not in shown]
    for f in failures[:MAX_LISTED]:
        lines.append(f"FAILED {f['error']}")
    if len(failures) > MAX_LISTED:
        lines.append(f"FAILED ... and {len(failures) - MAX_LISTED} more (see run_summary.json)")
    unfinished = summary.get("not_finished") or []  # a watch session's, at an update; a merge of its folder's
    for f in unfinished[:MAX_LISTED]:
        lines.append(f"NOT FINISHED {f['error']}")
    if len(unfinished) > MAX_LISTED:
        lines.append(f"NOT FINISHED ... and {len(unfinished) - MAX_LISTED} more (see run_summary.json)")
    if summary.get("interrupted"):
        lines.append("INTERRUPTED: run the same command again to continue")
    errors = [e for e in summary["errors"] if e not in shown]
    if len(errors) < len(summary["errors"]):
        n = len(summary["errors"]) - len(errors)
        lines.append(f"ERROR  {n} error{'' if n == 1 else 's'} (named above; listed in run_summary.json)")
    for e in errors:
        lines.append(f"ERROR  {e}")
    speed = ""
    if summary.get("watch"):
        # The session's time, waiting for files included: no rate (see RunResult.watched).
        speed = f"  (watching, waiting for files included; {summary.get('workers', 1)} worker(s)"
        speed += f", peak {summary['peak_rss_mb']:.0f} MiB per worker)" if summary.get("peak_rss_mb") else ")"
    elif summary.get("micrographs_per_s"):
        # Not the progress lines' picking rate: the micrographs picked over the whole run (its dataset-level outputs too).
        speed = f"  ({format_rate(summary['micrographs_per_s'])} over the whole run, {summary.get('workers', 1)} worker(s)"
        speed += f", peak {summary['peak_rss_mb']:.0f} MiB per worker)" if summary.get("peak_rss_mb") else ")"
    lines.append(f"time         {summary['seconds']:.1f} s{speed}")
    report = summary.get("report")
    if report:
        drawn = [f"{report['overlays_drawn']} overlay{'' if report['overlays_drawn'] == 1 else 's'} drawn"]
        if report.get("overlays_reused"):
            drawn.append(f"{report['overlays_reused']} unchanged")
        if report.get("overlays_failed"):
            drawn.append(f"{report['overlays_failed']} failed")
        workers = f" with {report['workers']} worker(s)" if report.get("workers") else ""
        lines.append(f"report       {report['seconds']:.1f} s more: {', '.join(drawn)}{workers}; runner.report=false leaves it out")
    lines.append(f"outputs      {summary['out_dir']}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# Python API
# ---------------------------------------------------------------------------
def _params(registry: StageRegistry, kind: str, spec: Any, overrides: dict | None) -> Any:
    """The Params of the ``kind`` stage ``spec`` (a name, or Params already made).

    ``overrides`` are checked as the command line checks ``kind.key=value``:
    a misspelt key or a value of the wrong type is a :class:`ConfigError`
    naming ``kind.key``.
    """
    from lipoframe.registry import RegistryError

    if not isinstance(spec, str):
        try:
            info = registry.for_params(spec)
        except RegistryError:
            raise ValueError(f"{kind}: give a stage name or the Params of a {kind} stage, got {spec!r}") from None
        if info.kind != kind:
            raise ValueError(f"{kind}: {type(spec).__name__} are the parameters of {info.kind}/{info.name}, not of a {kind}")
        if overrides:
            raise ValueError(f"{kind}_params: {kind} is given as {type(spec).__name__}, which already holds every "
                             f"parameter; give {kind}={info.name!r} with {kind}_params, or set them in the Params")
        return spec
    try:
        cls = registry.get(kind, spec).cls.Params
    except RegistryError as exc:
        raise ConfigError(f"{kind}: {exc}") from None
    if not overrides:
        return cls()
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(cls), dict(overrides)))
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", "") or ""
        raise ConfigError(f"{kind}.{key}: {str(exc).splitlines()[0]}" if key else f"{kind}: {exc}") from None


def _as_names(value: Any) -> tuple:
    """``"speck"`` as ``("speck",)``: one name is not a sequence of letters; ``None`` as none."""
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


def pick(
    image: np.ndarray,
    *,
    pixel_size: float | None = None,
    dmin: float = 150.0,
    dmax: float = 500.0,
    units: str = "A",
    polarity: str = "dark",
    detector: Any = "edge",
    nms: Any = "size_aware",
    refiner: Any = "radial_profile",
    filters: tuple = ("diameter_range", "contamination", "carbon", "speck", "population"),
    detector_params: dict | None = None,
    nms_params: dict | None = None,
    refiner_params: dict | None = None,
    retry_suppressed: tuple = RETRY_SUPPRESSED,
    peel: bool = False,
    name: str = "image",
) -> pd.DataFrame:
    """Pick one micrograph given as an array.

    Parameters
    ----------
    image : (M, N) or (Z, M, N) array_like of real numbers
        The micrograph, row 0 first (any real dtype and memory layout; it is
        not modified); a (1, M, N) stack is taken as its one section. A
        volume needs the stages of ``+experiment=tomo`` (docs/tomograms.md):
        ``detector="dog", refiner="radial_profile_3d",
        filters=["diameter_range"]``.
    pixel_size : float, optional
        Å/px; required when ``units='A'``. With ``units='px'`` it only fills
        ``diameter_A``.
    dmin, dmax : float
        Diameter range in ``units``.
    units : {'A', 'px'}
        Unit of ``dmin`` and ``dmax``: Ångström or pixels.
    polarity : {'dark', 'bright'}
        Dark particles on a light background (cryo-EM), or bright ones.
    detector, nms, refiner : str or Params instance
        Stage names (or their parameter dataclasses).
    filters : sequence of str or Params, or None
        The filters, applied in this order (one name is taken as a list of
        one, ``None`` or ``[]`` as none); a filter's parameters are given as
        its Params instance.
    detector_params, nms_params, refiner_params : dict, optional
        Parameters for stages given by name, checked as on the command line.
    retry_suppressed : sequence of str
        Reject reasons after which the detections NMS suppressed at that
        place are tried (see :func:`retry_candidates`); empty turns it off.
    peel : bool
        Detect again with the accepted particles replaced by background
        (see :func:`peel_again`).
    name : str
        Value of the ``micrograph`` column.

    Returns
    -------
    picks : DataFrame
        One row per candidate, rejected ones included: ``x_px`` (column),
        ``y_px`` (row), ``diameter_px``, ``score``, ... with
        ``accepted``/``reject_reason`` (docs/conventions.md).
        ``picks.attrs["replaced_pixels"]`` is the number of hot or dead
        pixels replaced by the median of their neighbourhood before
        picking (:func:`without_outlier_pixels`; 0 when there were none,
        and for a volume, which is not searched), as a run records it in
        ``micrographs/<name>.json``; a warning says it too.

    Raises
    ------
    ValueError
        A bad value of an argument, in one line naming it (``dmin``,
        ``units``, ``detector.threshold``, ...; often its subclass
        :class:`~lipoframe.config.ConfigError`), or an image that is not 2D
        or 3D real numbers.
    lipoframe.records.InputError
        An image that cannot be picked: smaller than ``dmax``, constant,
        with NaN or infinite pixels, or a volume with fewer planes than the
        detector bins the smallest diameter by (not a ValueError, as for a bad file in
        ``lipoframe run``).

    Examples
    --------
    >>> from lipoframe.synthetic import render, random_particles
    >>> truth = random_particles((1024, 1024), [100, 160, 220], seed=1)
    >>> img = render((1024, 1024), truth, seed=1)
    >>> picks = pick(img, dmin=80, dmax=260, units="px")
    >>> int(picks["accepted"].sum())
    3
    """
    from lipoframe import plugins

    _, registry, _ = plugins.load()
    image = np.asarray(image)
    if image.dtype.kind not in "biuf":
        raise ValueError(f"image must hold real numbers, got dtype {image.dtype}")
    if image.ndim == 3 and image.shape[0] == 1:
        image = image[0]  # one section, as the MRC reader takes it
    if image.ndim not in (2, 3):
        raise ValueError(f"image must be a 2D micrograph (M, N) or a 3D volume, got shape {image.shape}")
    for arg, value in (("pixel_size", pixel_size), ("dmin", dmin), ("dmax", dmax)):
        # a string ("40", from a text field or argv) failed in a comparison deep inside, naming nothing
        if value is not None and (isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating))):
            raise ValueError(f"{arg} must be a number, got {value!r}")
    dmin, dmax = float(dmin), float(dmax)  # a numpy float32 would carry its precision into every conversion
    pixel_size = None if pixel_size is None else float(pixel_size)
    if units == "A" and pixel_size is None:
        raise ValueError("pixel_size (Å/px) is needed with units='A'; or give dmin and dmax in pixels with units='px'")
    filters, retry_suppressed = _as_names(filters), _as_names(retry_suppressed)
    check_retry_suppressed(retry_suppressed, registry)
    cfg = LipoframeConfig(pixel_size=pixel_size, dmin=dmin, dmax=dmax, units=units, polarity=polarity)
    stages = StageSet(
        reader=registry.build(registry.get("reader", "auto").cls.Params()),
        detector=registry.build(_params(registry, "detector", detector, detector_params)),
        nms=registry.build(_params(registry, "nms", nms, nms_params)),
        refiner=registry.build(_params(registry, "refiner", refiner, refiner_params)),
        filters=[registry.build(_params(registry, "filter", f, None)) for f in filters],
        binner=None,  # type: ignore[arg-type]
        writers=[],
        retry_suppressed=tuple(retry_suppressed),
        peel=bool(peel),
    )
    meta = MicrographMeta(name=name, path="", shape=image.shape, pixel_size=pixel_size)
    mic, replaced = without_outlier_pixels(Micrograph(meta=meta, image=image, polarity=polarity))
    picks = process_micrograph(mic, stages, pick_context(meta, cfg))
    picks.attrs[REPLACED_PIXELS] = int(replaced)  # as a run's micrographs/<name>.json records it
    return picks
