"""Score picks against reference coordinates: ``lipoframe evaluate``.

Matching is one-to-one (Hungarian, :func:`scipy.optimize.linear_sum_assignment`)
within each micrograph: a pick can match a reference particle when its centre
is within ``tolerance`` x the reference diameter of the particle's centre.
From the matches we report precision, recall and F1, the area under the
precision-recall curve over the score threshold (AUPRC: Topaz's sum over
score steps, with the picks labelled in score order as in object-detection
average precision), duplicate picks per particle ("peppering": extra picks whose
centre lies inside an already matched particle), the median relative diameter
error, the fraction of matches whose circle (sphere) IoU is at least
``iou_threshold``, and picks that sit on non-target objects (reference rows of
kind ``ice``/``junk``/``carbon``/``contamination``).

Tables are compared in lipoframe's frame (``x_px`` column, ``y_px`` row of the
array as read). STAR, EMAN ``.box`` and crYOLO ``.cbox`` files are in the
frame of RELION, EMAN2 and crYOLO, whose rows of a TIFF micrograph count from
the bottom; :func:`read_picks` and :func:`read_reference` turn them back,
learning each micrograph's height and format from a
:class:`MicrographCatalog` (run folders, folders of images).

Python::

    from lipoframe.evaluate import evaluate, read_picks, read_reference
    picks, processed = read_picks("run/")
    res = evaluate(picks, read_reference("truth.csv"), micrographs=processed)
    print(res.summary["f1"]); res.per_micrograph

Command line::

    lipoframe evaluate picks=run/ reference=truth.csv output=eval/
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import posixpath
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd

from lipoframe import schema
from lipoframe.config import override_key
from lipoframe.io.relion import DIAMETER_LABEL
from lipoframe.records import COMPRESSION_SUFFIXES, file_suffix

#: Reference ``kind`` values that are not particles: picks on them are errors.
JUNK_KINDS = ("ice", "junk", "carbon", "contamination")

#: File suffixes stripped from micrograph names before matching picks to references.
IMAGE_SUFFIXES = (".mrc", ".mrcs", ".rec", ".st", ".map", ".tif", ".tiff", ".png", ".jpg", ".jpeg", ".npy", ".star", ".csv", ".box", ".cbox", ".coords")

_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")


def micrograph_key(name: Any) -> str:
    """Normalise a micrograph name so picks and references agree.

    Drops folders and a known image suffix and applies the same character
    cleaning as the runner's output names, so ``data/May08.bin_avg.png``,
    ``May08.bin_avg`` and lipoframe's ``micrograph`` column all give
    ``May08.bin_avg``; a compressed micrograph (``mic.mrc.gz``) gives ``mic``
    as well.
    """
    s = str(name).replace("\\", "/").rsplit("/", 1)[-1]
    low = s.lower()
    for suf in COMPRESSION_SUFFIXES:
        if low.endswith(suf) and any(low[: -len(suf)].endswith(inner) for inner in IMAGE_SUFFIXES):
            s, low = s[: -len(suf)], low[: -len(suf)]
    for suf in IMAGE_SUFFIXES:
        if low.endswith(suf) and len(s) > len(suf):
            s = s[: -len(suf)]
            break
    return _UNSAFE.sub("_", s).strip("._") or "micrograph"


def same_name_in_folders(names) -> list[tuple[str, list[str]]]:
    """Micrograph names that :func:`micrograph_key` makes one although they lie in different folders.

    ``a/mic_001.mrc`` and ``b/mic_001.mrc`` are two micrographs to the user
    but one to the matching, which then pairs picks of one with particles of
    the other. A name without a folder is taken as any folder's.

    Returns
    -------
    list of (key, folders)
        Sorted by key; ``folders`` sorted.
    """
    folders: dict[str, set[str]] = {}
    for name in dict.fromkeys(str(n) for n in names):
        path = posixpath.normpath(name.replace("\\", "/"))  # ./day1/m.mrc and day1/m.mrc: one folder
        if "/" in path:
            folders.setdefault(micrograph_key(path), set()).add(path.rsplit("/", 1)[0])
    return [(k, sorted(f)) for k, f in sorted(folders.items()) if len(f) > 1]


def similar_micrograph_names(pick_names, reference_names) -> list[tuple[str, str]]:
    """Pick micrographs that miss their reference only by a name that differs at the end.

    A pick micrograph with no reference micrograph of the same name is
    reported when a reference micrograph *without picks of its own name* has
    a similar name: one name (after :func:`micrograph_key`) is a prefix of
    the other, as ``mic_001_dn`` and ``mic_001``. Such picks all count as
    false positives and the reference's particles as misses. Micrographs
    legitimately absent from the reference (a suite's empty micrograph)
    have no such partner and are not reported; nor is ``mic_10`` when
    ``mic_1`` has picks of its own.

    Parameters
    ----------
    pick_names, reference_names : iterable of str
        Micrograph names of the picks and of the reference.

    Returns
    -------
    pairs : list of (str, str)
        ``(pick micrograph, similar reference micrograph)`` by pick name;
        the longest similar name when there are several.
    """
    import bisect

    picks = {micrograph_key(n) for n in pick_names}
    refs = {micrograph_key(n) for n in reference_names}
    orphans = sorted(refs - picks)  # reference micrographs no pick micrograph is named after
    orphan_set = set(orphans)
    pairs = []
    for name in sorted(picks - refs):
        similar = [name[:k] for k in range(1, len(name)) if name[:k] in orphan_set]  # references that are a prefix
        i = bisect.bisect_left(orphans, name)
        while i < len(orphans) and orphans[i].startswith(name):  # references the pick name is a prefix of
            similar.append(orphans[i])
            i += 1
        if similar:
            pairs.append((name, max(similar, key=len)))
    return pairs


# ---------------------------------------------------------------------------
# Geometry
# ---------------------------------------------------------------------------
def circle_iou(d: np.ndarray, r1: np.ndarray, r2: np.ndarray) -> np.ndarray:
    """Intersection over union of two circles.

    Parameters
    ----------
    d : ndarray
        Distance between the centres.
    r1, r2 : ndarray
        Radii (broadcast against ``d``).

    Returns
    -------
    iou : ndarray of float in [0, 1]
    """
    d, r1, r2 = np.broadcast_arrays(*(np.asarray(a, dtype=float) for a in (d, r1, r2)))
    inter = np.zeros(d.shape)
    small, big = np.minimum(r1, r2), np.maximum(r1, r2)
    inside = d <= big - small
    inter[inside] = np.pi * small[inside] ** 2
    part = ~inside & (d < r1 + r2)
    if np.any(part):
        dd, a, b = d[part], r1[part], r2[part]
        c1 = np.clip((dd**2 + a**2 - b**2) / (2 * dd * a), -1, 1)
        c2 = np.clip((dd**2 + b**2 - a**2) / (2 * dd * b), -1, 1)
        k = (-dd + a + b) * (dd + a - b) * (dd - a + b) * (dd + a + b)
        inter[part] = a**2 * np.arccos(c1) + b**2 * np.arccos(c2) - 0.5 * np.sqrt(np.clip(k, 0, None))
    union = np.pi * (r1**2 + r2**2) - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def sphere_iou(d: np.ndarray, r1: np.ndarray, r2: np.ndarray) -> np.ndarray:
    """Intersection over union of two spheres (same arguments as :func:`circle_iou`)."""
    d, r1, r2 = np.broadcast_arrays(*(np.asarray(a, dtype=float) for a in (d, r1, r2)))
    inter = np.zeros(d.shape)
    small, big = np.minimum(r1, r2), np.maximum(r1, r2)
    inside = d <= big - small
    inter[inside] = 4 / 3 * np.pi * small[inside] ** 3
    part = ~inside & (d < r1 + r2)
    if np.any(part):
        dd, a, b = d[part], r1[part], r2[part]
        inter[part] = np.pi * (a + b - dd) ** 2 * (dd**2 + 2 * dd * b - 3 * b**2 + 2 * dd * a + 6 * b * a - 3 * a**2) / (12 * dd)
    union = 4 / 3 * np.pi * (r1**3 + r2**3) - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def match(
    ref_xyz: np.ndarray,
    ref_diameter: np.ndarray,
    pick_xyz: np.ndarray,
    *,
    tolerance: float = 0.3,
) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one matching of picks to reference particles (Hungarian).

    Parameters
    ----------
    ref_xyz : (N, D) ndarray
        Reference centres (``D`` = 2 or 3).
    ref_diameter : (N,) ndarray
        Reference diameters, same units.
    pick_xyz : (M, D) ndarray
        Pick centres.
    tolerance : float
        A pair may match when the centre distance is at most ``tolerance *
        ref_diameter``.

    Returns
    -------
    ref_index, pick_index : (K,) ndarray of int
        Matched pairs, minimising the sum of distances relative to the
        reference diameter among all maximum-cardinality-at-that-cost
        assignments (pairs outside the tolerance are never used).
    """
    from scipy.optimize import linear_sum_assignment
    from scipy.spatial import cKDTree

    n, m = len(ref_xyz), len(pick_xyz)
    if n == 0 or m == 0:
        return np.zeros(0, int), np.zeros(0, int)
    tree = cKDTree(pick_xyz)
    radius = tolerance * np.asarray(ref_diameter, dtype=float)
    cand = tree.query_ball_point(ref_xyz, r=radius)
    rows, cols = [], []
    for i, js in enumerate(cand):
        rows.extend([i] * len(js))
        cols.extend(js)
    if not rows:
        return np.zeros(0, int), np.zeros(0, int)
    rows_a, cols_a = np.asarray(rows), np.asarray(cols)
    # Solve only on the references and picks that have a candidate.
    ur, ri = np.unique(rows_a, return_inverse=True)
    uc, ci = np.unique(cols_a, return_inverse=True)
    dist = np.linalg.norm(ref_xyz[rows_a] - pick_xyz[cols_a], axis=1) / np.maximum(ref_diameter[rows_a], 1e-12)
    big = 1e6
    cost = np.full((len(ur), len(uc)), big)
    cost[ri, ci] = dist
    r, c = linear_sum_assignment(cost)
    ok = cost[r, c] < big
    return ur[r[ok]], uc[c[ok]]


def _tie_ends(sorted_score: np.ndarray) -> np.ndarray:
    """True at the last pick of each run of equal scores (scores sorted, NaN last; all NaN are one run)."""
    a, b = sorted_score[:-1], sorted_score[1:]
    return np.r_[(a != b) & ~(np.isnan(a) & np.isnan(b)), True]


def greedy_labels(
    ref_xyz: np.ndarray, ref_diameter: np.ndarray, pick_xyz: np.ndarray, score: np.ndarray, *, tolerance: float
) -> np.ndarray:
    """True-positive flags for picks taken in decreasing ``score`` order (for the PR curve).

    Each pick, best score first, takes the closest still-free reference within
    tolerance, as in object-detection average precision. Picks with the same
    score (and all picks without one, NaN, last) are one step of the curve
    and are taken together: they share the free references by :func:`match`
    (one-to-one, most matches), so the flags do not depend on the order of
    the rows.
    """
    from scipy.spatial import cKDTree

    tp = np.zeros(len(pick_xyz), bool)
    if len(ref_xyz) == 0 or len(pick_xyz) == 0:
        return tp
    tree = cKDTree(ref_xyz)
    free = np.ones(len(ref_xyz), bool)
    reach = tolerance * float(np.max(ref_diameter))
    cands = tree.query_ball_point(pick_xyz, r=reach)
    order = np.argsort(-score, kind="stable")
    sc = score[order]
    for group in np.split(order, np.flatnonzero(_tie_ends(sc)[:-1]) + 1):
        if len(group) > 1:  # tied scores: one-to-one among the group and the free references
            fi = np.flatnonzero(free)
            a, b = match(ref_xyz[fi], ref_diameter[fi], pick_xyz[group], tolerance=tolerance)
            free[fi[a]] = False
            tp[group[b]] = True
            continue
        j = group[0]
        best, best_d = -1, np.inf
        for i in cands[j]:
            if not free[i]:
                continue
            d = float(np.linalg.norm(ref_xyz[i] - pick_xyz[j])) / ref_diameter[i]
            if d <= tolerance and d < best_d:
                best, best_d = i, d
        if best >= 0:
            free[best] = False
            tp[j] = True
    return tp


def average_precision(tp: np.ndarray, score: np.ndarray, n_reference: int) -> float:
    """Area under the precision-recall curve over the score threshold.

    ``sum_k (R_k - R_{k-1}) P_k`` over picks sorted by decreasing score
    (no interpolation; tied scores form one step). Picks without a score
    (NaN) come last, all of them one step. Recall is relative to all
    ``n_reference`` particles, so particles never picked lower the area.
    """
    if n_reference == 0:
        return float("nan")
    if len(tp) == 0:
        return 0.0
    order = np.argsort(-score, kind="stable")
    tp_s, sc = tp[order].astype(float), score[order]
    ctp = np.cumsum(tp_s)
    k = np.arange(1, len(tp_s) + 1)
    last = _tie_ends(sc)  # end of each group of tied scores
    prec, rec = ctp[last] / k[last], ctp[last] / n_reference
    return float(np.sum(np.diff(np.r_[0.0, rec]) * prec))


# ---------------------------------------------------------------------------
# Reading tables
# ---------------------------------------------------------------------------
class EvaluationInputError(ValueError):
    """A picks or reference file cannot be used; the message names it."""


#: Image suffixes that RELION, Warp and napari-boxmanager read upside down
#: (used only for micrographs that no run record or image tells about).
TIFF_SUFFIXES = (".tif", ".tiff")


def is_run_folder(path: str | Path) -> bool:
    """True if ``path`` is a lipoframe run folder (it has ``micrographs/*.json`` records)."""
    work = Path(path) / "micrographs"
    return work.is_dir() and any(work.glob("*.json"))


def find_run_folder(path: str | Path, *, levels: int = 4) -> Path | None:
    """The lipoframe run folder ``path`` is, or lies in (at most ``levels`` folders up).

    ``run/``, ``run/picks.csv``, ``run/relion/coords`` and
    ``run/bins/bin1/coords/mic_autopick.star`` all give ``run/``.
    """
    path = Path(path)
    candidates = ([path] if path.is_dir() else []) + list(path.absolute().parents)[:levels]
    return next((c for c in candidates if is_run_folder(c)), None)


def run_metas(run_dir: str | Path) -> tuple[dict, dict]:
    """What a run recorded about each micrograph (``micrographs/<name>.json``).

    Returns
    -------
    metas : dict of str to :class:`~lipoframe.records.MicrographMeta`
        By :func:`micrograph_key` of the name; incomplete records are left out.
    images : dict of str to Path
        The input file of each micrograph whose record names one.
    """
    from lipoframe.records import MicrographMeta

    metas, images = {}, {}
    for js in sorted((Path(run_dir) / "micrographs").glob("*.json")):
        try:
            info = json.loads(js.read_text())["meta"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if not isinstance(info, dict):
            continue
        key = micrograph_key(info.get("name") or js.stem)
        if info.get("path"):
            images[key] = Path(info["path"])
        try:
            metas[key] = MicrographMeta.from_dict(info)
        except (KeyError, ValueError, TypeError):
            continue
    return metas, images


def _image_meta(path: Path):
    """Shape and ``flip_y`` of an image file, as the registered reader for its suffix sees it."""
    from lipoframe.plugins import read_file
    from lipoframe.records import InputError

    first = None
    for dims in (2, 3):
        try:
            return read_file(path, dims=dims).meta
        except InputError as exc:
            first = first or exc
    raise EvaluationInputError(str(first))


class MicrographCatalog:
    """What evaluate knows about the micrographs: shape, TIFF flip and image file.

    Parameters
    ----------
    sources : sequence of str or Path
        Searched in order, first match (by :func:`micrograph_key`) wins:
        lipoframe run folders (their per-micrograph records, exact) and
        folders or files of micrograph images (read through lipoframe's
        readers when first needed).

    Raises
    ------
    EvaluationInputError
        If a source does not exist or a folder holds neither run records nor images.
    """

    def __init__(self, sources=()):
        self._sources = [_Source(Path(src)) for src in sources]

    def with_first(self, source: str | Path | None) -> "MicrographCatalog":
        """A catalogue that searches ``source`` (a run folder or images) before this one's sources."""
        if source is None:
            return self
        source = Path(source)
        same = [s for s in self._sources if s.path.absolute() == source.absolute()]
        out = MicrographCatalog()
        out._sources = (same or [_Source(source)])[:1] + [s for s in self._sources if s not in same]
        return out

    def __bool__(self) -> bool:
        return bool(self._sources)

    def meta(self, name: Any):
        """The :class:`~lipoframe.records.MicrographMeta` of micrograph ``name``, or None if unknown.

        Raises
        ------
        EvaluationInputError
            If the micrograph's image has to be read and cannot be.
        """
        key = micrograph_key(name)
        return next((m for m in (s.meta(key) for s in self._sources) if m is not None), None)

    def image_path(self, name: Any) -> Path | None:
        """The image file of micrograph ``name``, or None if unknown."""
        key = micrograph_key(name)
        return next((s.images[key] for s in self._sources if key in s.images), None)


class _Source:
    """One entry of a :class:`MicrographCatalog`: a run folder or images, read when first needed."""

    def __init__(self, path: Path):
        from lipoframe.plugins import load

        self.path, self.is_run = path, is_run_folder(path)
        self._metas: dict | None = None
        self._images: dict | None = None
        if self.is_run:
            return
        suffixes = set(load()[1].readers_by_suffix())  # the same suffixes whatever the dims
        if path.is_file():
            files = {micrograph_key(path.name): path} if file_suffix(path) in suffixes else {}
        elif not path.is_dir():
            raise EvaluationInputError(f"micrographs: {path}: not found")
        else:
            files = {micrograph_key(p.name): p for p in sorted(path.iterdir())
                     if p.is_file() and file_suffix(p) in suffixes and not p.name.startswith(".")}
        if not files:
            raise EvaluationInputError(f"micrographs: {path}: neither a lipoframe run folder nor a folder of micrographs "
                                       f"({', '.join(sorted(suffixes))})")
        self._metas, self._images = {}, files

    @property
    def images(self) -> dict:
        if self._images is None:
            self._metas, self._images = run_metas(self.path)
        return self._images

    def meta(self, key: str):
        images = self.images  # loads a run's records
        if key not in self._metas and not self.is_run and key in images:
            self._metas[key] = _image_meta(images[key])  # read once
        return self._metas.get(key)


def _as_catalog(micrographs) -> MicrographCatalog:
    if isinstance(micrographs, MicrographCatalog):
        return micrographs
    if micrographs is None:
        return MicrographCatalog()
    if isinstance(micrographs, (str, Path)):
        return MicrographCatalog([micrographs])
    return MicrographCatalog(micrographs)


#: How the formats that count the rows of a TIFF micrograph from the bottom are named in messages.
FLIPPED_FORMATS = {
    ".star": ("STAR", "RELION reads TIFF upside down"),
    ".box": ("EMAN .box", "EMAN2, RELION and crYOLO read TIFF upside down"),
    ".cbox": ("crYOLO .cbox", "crYOLO and napari-boxmanager read TIFF upside down"),
}


def _to_lipoframe_frame(out: pd.DataFrame, names: pd.Series, path: Path, catalog: MicrographCatalog,
                        flip_y: bool | None) -> pd.DataFrame:
    """Undo the TIFF row flip (``y -> ny - 1 - y``) of RELION, EMAN and crYOLO files for the micrographs that need it.

    ``names`` are the micrograph names of the rows (``rlnMicrographName`` or
    the file stem). Per micrograph, whether it is flipped and its height come
    from ``catalog``; for micrographs it does not know, a ``.tif``/``.tiff``
    name is flipped, with the height of that file if it exists (as given, or
    next to the coordinate file). ``flip_y`` True/False overrides the decision.
    The format of ``path`` (:data:`FLIPPED_FORMATS`) names it in the error.
    """
    from lipoframe.io.coords import export_frame

    if flip_y is False or not len(out):
        return out
    y = out[schema.Y].to_numpy(float).copy()
    unknown = []
    for name, idx in names.groupby(names, sort=False).indices.items():
        meta = catalog.meta(name)
        if meta is None and (flip_y or Path(name).suffix.lower() in TIFF_SUFFIXES):
            named = next((p for p in (Path(name), path.parent / name) if p.is_file()), None)
            meta = _image_meta(named) if named is not None else None
        flip = True if flip_y else (meta.flip_y if meta is not None else Path(name).suffix.lower() in TIFF_SUFFIXES)
        if not flip:
            continue
        if meta is None:
            unknown.append(name)
            continue
        # export_frame is its own inverse: the same flip takes RELION's rows back to lipoframe's.
        y[idx] = export_frame(np.zeros(len(idx)), y[idx], ny=meta.shape[-2], flip_y=True)[1]
    if unknown:
        more = f" and {len(unknown) - 3} more" if len(unknown) > 3 else ""
        fmt, who = FLIPPED_FORMATS.get(path.suffix.lower(), FLIPPED_FORMATS[".star"])
        raise EvaluationInputError(
            f"{path}: {fmt} rows of TIFF micrograph(s) {', '.join(unknown[:3])}{more} count from the bottom row ({who}) "
            "and their height is unknown; give micrographs=<folder of the images or lipoframe run folder>, "
            "or flip_y=false to take the coordinates as they are")
    out[schema.Y] = y
    return out


def _star_blocks(path: Path) -> dict:
    """The data blocks of a STAR file; {} for a file whose only block is empty.

    RELION writes a micrograph without picks as ``data_`` and nothing else,
    which ``starfile`` cannot parse (it raises TypeError).
    """
    import starfile

    try:
        # Micrograph names stay text ("0001" is not the number 1).
        return starfile.read(path, always_dict=True, parse_as_string=["rlnMicrographName"])
    except TypeError:
        if "_rln" in path.read_text(errors="replace"):
            raise EvaluationInputError(f"{path}: cannot read (not a STAR file starfile can parse)") from None
        return {}


#: ``DataFrame.attrs`` key of a table read from coordinate files: the micrographs of those that hold no
#: row (a micrograph the picker found nothing on), which :func:`read_picks` returns as processed.
_EMPTY_FILES = "micrographs_of_empty_coordinate_files"


def _without_rows(table: pd.DataFrame, names) -> pd.DataFrame:
    """``table`` with ``names`` recorded as micrographs of coordinate files without a row (:data:`_EMPTY_FILES`)."""
    table.attrs[_EMPTY_FILES] = list(dict.fromkeys(str(n) for n in names))
    return table


def _empty_files_of(tables) -> list[str]:
    """The micrographs of coordinate files without a row that ``tables`` were read from."""
    return [n for t in tables for n in t.attrs.get(_EMPTY_FILES, [])]


def _read_star(path: Path, catalog: MicrographCatalog | None = None, flip_y: bool | None = None, *,
               micrograph: str | None = None) -> pd.DataFrame:
    """Coordinates of a STAR file, or of the coordinate files a RELION list file names.

    ``micrograph`` names the rows of a coordinate file without
    ``rlnMicrographName`` (the list file's name for it); such a file may be
    empty (a micrograph without picks).
    """
    data = _star_blocks(path)
    block = next((b for b in data.values() if isinstance(b, pd.DataFrame) and "rlnCoordinateX" in b.columns), None)
    if block is None:
        listing = next((b for b in data.values() if isinstance(b, pd.DataFrame) and "rlnMicrographCoordinates" in b.columns), None)
        if listing is not None and micrograph is None:
            return _read_coordinate_list(path, listing, catalog, flip_y)
        if (micrograph is not None and not any(isinstance(b, pd.DataFrame) and len(b) for b in data.values())) or not data:
            # RELION's coordinate file of a micrograph without picks (``data_`` alone), listed or not.
            return _without_rows(pd.DataFrame({schema.X: [], schema.Y: [], schema.MICROGRAPH: pd.Series([], dtype=object)}),
                                 [micrograph if micrograph is not None else _coordinate_file_micrograph(path)])
        if any(isinstance(b, pd.DataFrame) and "rlnCenteredCoordinateXAngst" in b.columns for b in data.values()):
            raise EvaluationInputError(
                f"{path}: a RELION 5 tomography table (rlnCenteredCoordinate*Angst: Å from each tomogram's centre) "
                "holds no voxel coordinates to compare; give the tomograms' coordinate files instead "
                "(of a lipoframe run: the run folder, relion/autopick.star or relion/coords/)")
        raise EvaluationInputError(f"{path}: no STAR block with rlnCoordinateX/rlnCoordinateY")
    if not len(block) and (micrograph is not None or "rlnMicrographName" not in block.columns):
        # A coordinate file with its labels and no row (lipoframe's own for a micrograph without picks): the same.
        return _without_rows(pd.DataFrame({schema.X: [], schema.Y: [], schema.MICROGRAPH: pd.Series([], dtype=object)}),
                             [micrograph if micrograph is not None else _coordinate_file_micrograph(path)])
    out = pd.DataFrame({schema.X: block["rlnCoordinateX"].astype(float), schema.Y: block["rlnCoordinateY"].astype(float)})
    if "rlnCoordinateZ" in block.columns:
        out[schema.Z] = block["rlnCoordinateZ"].astype(float)
    if "rlnMicrographName" in block.columns:
        out[schema.MICROGRAPH] = block["rlnMicrographName"].astype(str)
    elif micrograph is not None:
        out[schema.MICROGRAPH] = micrograph
    else:
        out[schema.MICROGRAPH] = _coordinate_file_micrograph(path)
    out = _to_lipoframe_frame(out, out[schema.MICROGRAPH], path, catalog or MicrographCatalog(), flip_y)
    if "rlnAutopickFigureOfMerit" in block.columns:
        out[schema.SCORE] = block["rlnAutopickFigureOfMerit"].astype(float)
    for col in (DIAMETER_LABEL, schema.DIAMETER):  # lipoframe's own STAR files carry the diameter
        if col in block.columns:
            out[schema.DIAMETER] = block[col].astype(float)
            break
    return out


def _coordinate_file_micrograph(path: Path) -> str:
    """The micrograph a coordinate file without ``rlnMicrographName`` is of: its stem, less a picker's suffix."""
    return re.sub(r"_(autopick|manualpick|pick|picks|coords)$", "", path.stem)


def _read_coordinate_list(path: Path, listing: pd.DataFrame, catalog: MicrographCatalog | None,
                          flip_y: bool | None) -> pd.DataFrame:
    """The coordinates of every file a RELION list file (``autopick.star``, ``manualpick.star``) names.

    RELION 4/5 pickers list ``rlnMicrographName`` and
    ``rlnMicrographCoordinates`` (a coordinate file) per micrograph, with
    paths relative to the RELION project. A relative path is looked for from
    the current folder and from each folder above the list file (the project
    holds the job folder the list lies in).
    """
    if "rlnMicrographName" not in listing.columns:
        raise EvaluationInputError(f"{path}: a coordinate list (rlnMicrographCoordinates) without rlnMicrographName")
    bases = [Path.cwd(), *Path(os.path.abspath(path)).parents]
    tables, missing = [], []
    for name, listed in zip(listing["rlnMicrographName"].astype(str), listing["rlnMicrographCoordinates"].astype(str)):
        p = Path(listed)
        found = next((c for c in ([p] if p.is_absolute() else [b / p for b in bases]) if c.is_file()), None)
        if found is None:
            missing.append(listed)
            continue
        tables.append(_read_star(found, catalog, flip_y, micrograph=name))
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise EvaluationInputError(
            f"{path}: coordinate file(s) it lists not found: {', '.join(missing[:3])}{more} (a RELION list names them from "
            "the RELION project: run lipoframe evaluate from the project folder)")
    if not tables:
        return pd.DataFrame({schema.X: [], schema.Y: [], schema.MICROGRAPH: pd.Series([], dtype=object)})
    non_empty = [t for t in tables if len(t)] or tables[:1]
    return _without_rows(pd.concat(non_empty, ignore_index=True), _empty_files_of(tables))


#: Per-micrograph box files (``writer=box,cbox``, EMAN2, crYOLO): the file's stem names the micrograph.
BOX_SUFFIXES = {".box": "EMAN .box", ".cbox": "crYOLO .cbox", ".coords": "crYOLO .coords"}

#: Every suffix evaluate reads, in a folder too.
TABLE_SUFFIXES = (".csv", ".star", *BOX_SUFFIXES)


def _read_box_file(path: Path, catalog: MicrographCatalog | None = None, flip_y: bool | None = None) -> pd.DataFrame:
    """Particles of an EMAN ``.box``, crYOLO ``.cbox`` or ``.coords`` file of one micrograph, in lipoframe's frame.

    The micrograph is the file's stem (``mic_0001.cbox`` -> ``mic_0001``).
    Centres are ``corner + box / 2``; rows of TIFF micrographs are turned back
    as for STAR files (:func:`_to_lipoframe_frame`). A ``.cbox`` gives
    ``diameter_px`` from ``_EstWidth/_EstHeight`` (NaN where unknown) and
    ``score`` from ``_Confidence`` when the file has them; a ``.box`` has
    neither. crYOLO's tomogram picks (a 3D ``.box`` or a ``.coords`` file:
    ``x y z`` centres, see :func:`lipoframe.io.eman.read_box`) give ``z_px``.
    """
    from lipoframe.io.cbox import read_cbox
    from lipoframe.io.eman import read_box

    suffix = path.suffix.lower()
    try:
        parts = read_cbox(path) if suffix == ".cbox" else read_box(path)
    except OSError as exc:
        raise EvaluationInputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise EvaluationInputError(f"{path}: cannot read as {BOX_SUFFIXES[suffix]} file: {exc}") from None
    if suffix == ".coords" and len(parts) and "z" not in parts.columns:
        raise EvaluationInputError(f"{path}: cannot read as {BOX_SUFFIXES[suffix]} file: expected three numbers per line (x y z centres)")
    out = pd.DataFrame({schema.X: parts["x"].to_numpy(float), schema.Y: parts["y"].to_numpy(float)})
    if "z" in parts.columns:
        out[schema.Z] = parts["z"].to_numpy(float)
    out[schema.MICROGRAPH] = pd.Series([path.stem] * len(out), dtype=object)
    out = _to_lipoframe_frame(out, out[schema.MICROGRAPH], path, catalog or MicrographCatalog(), flip_y)
    if "diameter" in parts.columns and parts["diameter"].notna().any():
        out[schema.DIAMETER] = parts["diameter"].to_numpy(float)
    if "confidence" in parts.columns and parts["confidence"].notna().any():  # all <NA>: no score, not one tied step
        out[schema.SCORE] = parts["confidence"].to_numpy(float)
    return _without_rows(out, [] if len(out) else [path.stem])


def _read_table(path: Path, catalog: MicrographCatalog | None = None, flip_y: bool | None = None) -> pd.DataFrame:
    suffix = path.suffix.lower()
    if suffix in BOX_SUFFIXES:
        return _read_box_file(path, catalog, flip_y)
    try:
        if suffix == ".star":
            return _read_star(path, catalog, flip_y)
        df = pd.read_csv(path, dtype={schema.MICROGRAPH: str}, keep_default_na=False, na_values=[""])
    except EvaluationInputError:
        raise
    except UnicodeDecodeError:
        if suffix == ".cs":  # lipoframe's cryosparc writer puts a STAR of the same picks beside its particles.cs
            raise EvaluationInputError(f"{path}: a cryoSPARC .cs dataset, which lipoframe evaluate does not read; give "
                                       f"the particles.star beside it (lipoframe's cryosparc writer writes one) or "
                                       f"the run folder, or a CSV, STAR, .box, .cbox or .coords file") from None
        raise EvaluationInputError(f"{path}: not a text table (an image or other binary file?); "
                                   "give a CSV, STAR, .box, .cbox or .coords file") from None
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise EvaluationInputError(f"{path}: cannot read ({exc})") from None
    _check_columns(df, str(path))
    for col in (schema.X, schema.Y, schema.Z):
        if col not in df.columns:
            continue
        values = pd.to_numeric(df[col], errors="coerce").to_numpy(float)
        bad = np.flatnonzero(~np.isfinite(values))
        if len(bad):
            raw = df[col].iloc[bad[0]]
            raw = "" if pd.isna(raw) else str(raw)
            lines = _csv_row_lines(path)
            where = f"line {lines[bad[0]]}" if lines is not None and len(lines) == len(df) else f"data row {bad[0] + 1}"
            raise EvaluationInputError(f"{path}: {col} must be a number on every row; {len(bad)} row(s) are not "
                                       f"(first: {where}: {raw!r})")
        df[col] = values
    return df


def _csv_row_lines(path: Path) -> list[int] | None:
    """The line of ``path`` (1-based) on which each data row of :func:`pandas.read_csv` starts; None if unreadable.

    pandas skips blank (and whitespace-only) lines, before the header too, and
    a quoted field may hold line breaks, so a row's position in the table
    does not give its line in the file.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError):
        return None
    # \r\n, \r and \n end a line, as for pandas (str.splitlines would also split on \f, \x1c, ...)
    physical = re.findall(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+$", text)
    starts = []
    reader = csv.reader(physical)
    try:
        while True:
            first = reader.line_num + 1
            try:
                next(reader)
            except StopIteration:
                break
            if reader.line_num > first or physical[first - 1].strip():  # a row over several lines is never blank
                starts.append(first)
    except csv.Error:
        return None
    return starts[1:]  # the first row is the header


def _read_many(path: Path, what: str, micrographs=None, flip_y: bool | None = None) -> pd.DataFrame:
    path = Path(path)
    catalog = None
    flippable = (".star", *BOX_SUFFIXES)
    if path.suffix.lower() in flippable or (path.is_dir() and any(p.suffix.lower() in flippable for p in path.iterdir())):
        # STAR and box files a lipoframe run wrote (run/relion/coords, run/cbox, ...) are read with that run's records first.
        catalog = _as_catalog(micrographs).with_first(find_run_folder(path))
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in TABLE_SUFFIXES and not p.name.startswith("."))
        if not files:
            jobs = sorted((p.name for p in path.iterdir() if is_run_folder(p)), key=lambda n: (len(n), n))
            if (path / "multirun.yaml").is_file() and jobs:  # `lipoframe run -m`'s folder: one run per job
                raise EvaluationInputError(f"{path}: a sweep folder (lipoframe run -m) of {len(jobs)} runs; read one job's "
                                           f"folder at a time: {path / jobs[0]}" + (f" ... {path / jobs[-1]}" if len(jobs) > 1 else "")
                                           + " (evaluate_sweep, or lipoframe evaluate picks=<sweep folder>, compares them all)")
            raise EvaluationInputError(f"{path}: no .csv, .star, .box, .cbox or .coords {what} files in this folder")
        lists = [p for p in files if p.suffix.lower() == ".star" and _is_coordinate_list(p)]
        if lists:  # a RELION job folder (or a run's relion/): its list files say which coordinate files count
            files = lists
        tables, skipped = [], []
        for p in files:
            try:
                one = _read_table(p, catalog, flip_y)
                if schema.MICROGRAPH not in one.columns:  # a folder of per-micrograph CSVs: named by their files
                    one[schema.MICROGRAPH] = p.stem
                tables.append(one)
            except EvaluationInputError as exc:  # e.g. a RELION list file next to the coordinate files
                if "rlnCoordinateX" not in str(exc):
                    raise
                skipped.append(p.name)
        if not tables:
            raise EvaluationInputError(f"{path}: none of its .csv/.star/.box/.cbox/.coords files has {what} coordinates ({', '.join(skipped)})")
        empty = _empty_files_of(tables)
        tables = [t for t in tables if len(t)] or tables[:1]
        return _without_rows(pd.concat(tables, ignore_index=True), empty)
    if not path.exists():
        raise EvaluationInputError(f"{path}: {what} file not found")
    return _read_table(path, catalog, flip_y)


def _is_coordinate_list(path: Path) -> bool:
    """True for a RELION list file (``rlnMicrographCoordinates``) among a folder's STAR files."""
    try:
        with open(path, errors="replace") as fh:
            return "_rlnMicrographCoordinates" in fh.read(65536)
    except OSError:
        return False


def _check_columns(df: pd.DataFrame, where: str) -> None:
    missing = [c for c in (schema.X, schema.Y) if c not in df.columns]
    if missing:
        raise EvaluationInputError(f"{where}: missing columns {missing} (need x_px, y_px; STAR: rlnCoordinateX/Y)")


def read_picks(path: str | Path, *, micrographs=None, flip_y: bool | None = None) -> tuple[pd.DataFrame, list[str]]:
    """Read picks from a lipoframe run folder, a CSV/STAR/.box/.cbox/.coords file or a folder of them.

    A run folder is read from its per-micrograph results
    (``micrographs/*.csv``), which keep the rejected picks (flagged) and also
    list micrographs that got no pick at all, with the dataset-level step's
    verdicts applied: its filters' rejections and the binning's size
    outliers (:func:`lipoframe.report.dataset_verdicts`).

    Parameters
    ----------
    path : str or Path
    micrographs : MicrographCatalog, str, Path or sequence of them, optional
        Where to learn each micrograph's height and whether RELION, EMAN2
        and crYOLO read it upside down (TIFF), for STAR, ``.box`` and
        ``.cbox`` files: lipoframe run folders and folders of micrograph
        images (see :class:`MicrographCatalog`). The run folder such a file
        lies in (``run/relion/coords``, ``run/cbox``) is searched first.
    flip_y : bool, optional
        STAR, ``.box`` and ``.cbox`` coordinates of TIFF micrographs count
        rows from the bottom (``ny - 1 - y``) and are turned back into
        lipoframe's ``y_px``. None (default): per micrograph, flipped if
        ``micrographs`` (or the run folder the file lies in) says it is a
        TIFF image, else if its ``rlnMicrographName`` ends in
        ``.tif``/``.tiff``. True: every such micrograph is flipped; False:
        none is. CSV tables are never changed.

    Notes
    -----
    A ``.box``/``.cbox`` file holds one micrograph, named by the file's stem
    (``mic_0001.cbox`` -> ``mic_0001``). Centres are ``corner + box / 2``.
    ``.cbox`` files (crYOLO >= 1.8 STAR layout, or the older whitespace
    columns) give ``diameter_px`` from ``_EstWidth/_EstHeight`` and
    ``score`` from ``_Confidence``; ``.box`` files have neither (picks
    without a diameter; a reference needs ``reference_diameter``).

    Returns
    -------
    picks : DataFrame
    micrographs : list of str
        Names of the micrographs the run processed; for coordinate files
        (STAR, ``.box``, ``.cbox``, ``.coords``), those of the files that
        hold no pick (the picker processed the micrograph and found
        nothing); [] for CSV tables.

    Raises
    ------
    EvaluationInputError
        If a file cannot be read, or STAR/box coordinates cannot be converted.
    """
    path = Path(path)
    if is_run_folder(path):
        from lipoframe.runner import run_results

        names, tables = [], []
        # not the saved results an earlier run with other inputs or other settings left
        infos = run_results(path)
        for name in infos:
            csv = path / "micrographs" / f"{name}.csv"
            if not csv.exists():
                continue
            names.append(name)
            tables.append(pd.read_csv(csv, dtype={schema.MICROGRAPH: str, schema.REASON: str}, keep_default_na=False, na_values=[""]))
        # (without a single pick, one empty table keeps the run's columns: score makes the AUPRC 0, not n/a)
        non_empty = [t for t in tables if len(t)] or tables[:1]
        picks = pd.concat(non_empty, ignore_index=True) if non_empty else pd.DataFrame(columns=[schema.MICROGRAPH, schema.X, schema.Y])
        if not len(picks):
            return picks, names
        from lipoframe.report import dataset_verdicts

        # The dataset step's verdicts too: its filters' rejections and the binning's size outliers.
        return dataset_verdicts(picks, path, infos=infos)[0], names
    if path.is_dir() and (path / "picks.csv").is_file():
        path = path / "picks.csv"
    df = _read_many(path, "picks", micrographs, flip_y)
    _check_columns(df, str(path))
    return df, df.attrs.pop(_EMPTY_FILES, [])


def read_reference(path: str | Path, *, micrographs=None, flip_y: bool | None = None) -> pd.DataFrame:
    """Read reference coordinates (CSV with ``micrograph,x_px,y_px[,diameter_px,kind]``, STAR, .box, .cbox, or a folder).

    A lipoframe run folder gives its accepted picks (read as :func:`read_picks` reads it), so two runs can be
    compared; another folder holding a ``picks.csv`` gives that file.

    Parameters
    ----------
    path : str or Path
    micrographs, flip_y
        How STAR, ``.box`` and ``.cbox`` coordinates of TIFF micrographs are
        turned back into lipoframe's ``y_px``, as in :func:`read_picks`
        (which also says how box files are read).

    Raises
    ------
    EvaluationInputError
        If a file cannot be read, or STAR/box coordinates cannot be converted.
    """
    path = Path(path)
    if is_run_folder(path):
        # Another run as the reference: its accepted picks, read as `picks=` reads a run folder. Read as a folder
        # of tables, its sizes.csv became a reference micrograph 'sizes' of particles without coordinates.
        picks, _ = read_picks(path)
        if schema.ACCEPTED in picks.columns:
            picks = picks.loc[schema.flags(picks[schema.ACCEPTED])].reset_index(drop=True)
        _check_columns(picks, str(path))
        return picks
    if path.is_dir() and (path / "picks.csv").is_file():
        path = path / "picks.csv"
    df = _read_many(path, "reference", micrographs, flip_y)
    df.attrs.pop(_EMPTY_FILES, None)
    _check_columns(df, str(path))
    return df


# ---------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------
@dataclass
class EvaluationResult:
    """What :func:`evaluate` returns.

    summary : dict
        Dataset-level numbers (see :func:`evaluate`).
    per_micrograph : DataFrame
        One row per micrograph with the same numbers.
    picks : DataFrame
        The evaluated picks with ``status`` (``tp``, ``duplicate``, ``junk``,
        ``fp``), ``junk_kind`` (kind of the object a ``junk`` pick sits on),
        ``ref_index`` of the matched reference row (-1) and ``iou``.
    reference : DataFrame
        The reference rows with ``matched`` and ``pick_index``.
    """

    summary: dict
    per_micrograph: pd.DataFrame
    picks: pd.DataFrame
    reference: pd.DataFrame


def _prf(tp: int, n_picks: int, n_ref: int) -> tuple[float, float, float]:
    p = tp / n_picks if n_picks else (float("nan") if n_ref == 0 else 0.0)
    r = tp / n_ref if n_ref else float("nan")
    if n_picks == 0 and n_ref == 0:
        return float("nan"), float("nan"), float("nan")
    f = 2 * tp / (n_picks + n_ref) if (n_picks + n_ref) else float("nan")
    return p, r, f


def _nan_to_none(o):
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {k: _nan_to_none(v) for k, v in o.items()}
    if isinstance(o, list):
        return [_nan_to_none(v) for v in o]
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return _nan_to_none(float(o))
    return o


#: Columns of :attr:`EvaluationResult.per_micrograph` after ``micrograph``.
PER_MICROGRAPH_COLUMNS = (
    "n_reference", "n_junk_objects", "n_picks", "tp", "fp", "fn", "precision", "recall", "f1", "auprc",
    "duplicates", "duplicate_rate", "junk_picks", "median_diameter_error", "median_signed_diameter_error", "iou_rate",
)


@dataclass
class _Labels:
    """Per-pick and per-reference outcome of the matching."""

    status: np.ndarray  # per pick: tp | duplicate | junk | fp
    ref_index: np.ndarray  # per pick: matched reference row or -1
    iou: np.ndarray  # per pick: IoU with the matched reference (NaN)
    junk_kind: np.ndarray  # per pick: kind of the non-target object it sits on ("")
    greedy_tp: np.ndarray  # per pick: true positive when taken in score order (for AUPRC)
    matched_ref: np.ndarray  # per reference row
    pick_of_ref: np.ndarray  # per reference row: matched pick row or -1

    @classmethod
    def empty(cls, n_picks: int, n_ref: int) -> "_Labels":
        return cls(np.full(n_picks, "fp", dtype=object), np.full(n_picks, -1, dtype=int), np.full(n_picks, np.nan),
                   np.full(n_picks, "", dtype=object), np.zeros(n_picks, bool), np.zeros(n_ref, bool), np.full(n_ref, -1, dtype=int))


def _label_micrograph(lab: _Labels, pk, ref, pi, ri, ji, *, coords, tolerance, iou_fn) -> None:
    """Match picks ``pi`` to particles ``ri`` of one micrograph; flag duplicates and picks on junk ``ji``."""
    from scipy.spatial import cKDTree

    dims = len(coords)
    pxyz = pk.loc[pi, coords].to_numpy(float) if len(pi) else np.zeros((0, dims))
    rxyz = ref.loc[ri, coords].to_numpy(float) if len(ri) else np.zeros((0, dims))
    rd = ref.loc[ri, schema.DIAMETER].to_numpy(float)
    a, b = match(rxyz, rd, pxyz, tolerance=tolerance)
    lab.status[pi[b]] = "tp"
    lab.ref_index[pi[b]] = ri[a]
    lab.matched_ref[ri[a]] = True
    lab.pick_of_ref[ri[a]] = pi[b]
    if len(a) and schema.DIAMETER in pk.columns:
        dist = np.linalg.norm(rxyz[a] - pxyz[b], axis=1)
        dpk = pk.loc[pi[b], schema.DIAMETER].to_numpy(float)
        known = np.isfinite(dpk)  # a pick without a diameter has no IoU (NaN), not 0
        lab.iou[pi[b[known]]] = iou_fn(dist[known], rd[a[known]] / 2, dpk[known] / 2)
    # Unmatched picks: duplicates (centre inside a matched particle), then picks on junk.
    un = np.setdiff1d(np.arange(len(pi)), b)
    if len(un) and len(a):
        # Inside any matched particle, not only the nearest centre (a small
        # particle's centre can be nearer than the large one the pick is in).
        radius = rd[a] / 2
        near = cKDTree(rxyz[a]).query_ball_point(pxyz[un], r=float(radius.max()))
        inside = np.array([any(np.linalg.norm(rxyz[a][j] - p) < radius[j] for j in js) for p, js in zip(pxyz[un], near)], dtype=bool)
        lab.status[pi[un[inside]]] = "duplicate"
        un = un[~inside]
    if len(un) and len(ji):
        jxyz = ref.loc[ji, coords].to_numpy(float)
        jr = ref.loc[ji, schema.DIAMETER].to_numpy(float) / 2
        # "on" an object: the pick's centre is inside the object, or the object's centre is inside the pick
        reach = jr[None, :]
        if schema.DIAMETER in pk.columns:  # (fmax: a pick without a diameter is "on" an object its centre is inside)
            reach = np.fmax(reach, pk.loc[pi[un], schema.DIAMETER].to_numpy(float)[:, None] / 2)
        d = np.linalg.norm(pxyz[un][:, None, :] - jxyz[None, :, :], axis=2) / reach
        on = np.any(d < 1, axis=1)
        lab.status[pi[un[on]]] = "junk"
        kinds = ref.loc[ji, "kind"].to_numpy(dtype=object)
        lab.junk_kind[pi[un[on]]] = kinds[np.argmin(d[on], axis=1)]
    if schema.SCORE in pk.columns and len(pi):
        lab.greedy_tp[pi] = greedy_labels(rxyz, rd, pxyz, pk.loc[pi, schema.SCORE].to_numpy(float), tolerance=tolerance)


def _metrics(lab: _Labels, pk, ref, pi, ri, n_junk: int, *, iou_threshold: float) -> dict:
    """The numbers of :data:`PER_MICROGRAPH_COLUMNS` for picks ``pi`` and particles ``ri``."""
    st = lab.status[pi]
    tp_rows = pi[st == "tp"]
    tp = len(tp_rows)
    p, r, f = _prf(tp, len(pi), len(ri))
    nan = float("nan")
    err = bias = iou_rate = nan
    if tp and schema.DIAMETER in pk.columns:
        # Over the matches whose pick has a diameter (picks from several tools may lack some).
        tp_d = tp_rows[np.isfinite(pk.loc[tp_rows, schema.DIAMETER].to_numpy(float))]
        if len(tp_d):
            dp = pk.loc[tp_d, schema.DIAMETER].to_numpy(float)
            dr = ref.loc[lab.ref_index[tp_d], schema.DIAMETER].to_numpy(float)
            rel = (dp - dr) / dr
            err, bias = float(np.median(np.abs(rel))), float(np.median(rel))
            iou_rate = float(np.mean(lab.iou[tp_d] >= iou_threshold))
    dups = int(np.sum(st == "duplicate"))
    ap = average_precision(lab.greedy_tp[pi], pk.loc[pi, schema.SCORE].to_numpy(float), len(ri)) if schema.SCORE in pk.columns else nan
    return {
        "n_reference": int(len(ri)), "n_junk_objects": n_junk, "n_picks": int(len(pi)),
        "tp": tp, "fp": int(len(pi) - tp), "fn": int(len(ri) - tp),
        "precision": p, "recall": r, "f1": f, "auprc": ap,
        "duplicates": dups, "duplicate_rate": dups / tp if tp else nan, "junk_picks": int(np.sum(st == "junk")),
        "median_diameter_error": err, "median_signed_diameter_error": bias, "iou_rate": iou_rate,
    }


def evaluate(
    picks: pd.DataFrame,
    reference: pd.DataFrame,
    *,
    tolerance: float = 0.3,
    iou_threshold: float = 0.6,
    include_rejected: bool = False,
    reference_diameter: float | None = None,
    micrographs: list[str] | None = None,
    scope: str = "union",
    sources: dict[str, str] | None = None,
) -> EvaluationResult:
    """Compare picks with reference particles, micrograph by micrograph.

    Parameters
    ----------
    picks : DataFrame
        ``micrograph``, ``x_px``, ``y_px`` and optionally ``diameter_px``,
        ``score``, ``accepted``, ``z_px``.
    reference : DataFrame
        ``micrograph``, ``x_px``, ``y_px``, ``diameter_px`` (or give
        ``reference_diameter``), optionally ``kind`` and ``z_px``. Rows whose
        kind is in :data:`JUNK_KINDS` are non-target objects.
    tolerance : float
        Maximum centre distance for a match, relative to the reference diameter.
    iou_threshold : float
        Matches with a circle (3D: sphere) IoU at least this count in ``iou_rate``.
    include_rejected : bool
        Also evaluate picks with ``accepted == False``.
    reference_diameter : float, optional
        Diameter (px) of reference rows without one.
    micrographs : list of str, optional
        With ``scope='union'``, micrographs to include even when they have
        neither picks nor references (e.g. every micrograph a run processed).
    scope : {'union', 'reference'}
        ``union``: every micrograph with picks or references, and those of
        ``micrographs`` (picks on a micrograph without references are false
        positives); ``reference``: only micrographs named in the reference
        (picks elsewhere, and ``micrographs``, are left out).
    sources : dict, optional
        The file each table was read from, by ``'picks'`` and
        ``'reference'``, named in error messages.

    Returns
    -------
    EvaluationResult
        ``summary`` keys: ``n_micrographs, n_reference, n_picks, tp, fp, fn,
        precision, recall, f1, auprc, duplicates, duplicate_rate, junk_picks,
        median_diameter_error, median_signed_diameter_error, iou_rate, dims,
        per_kind`` and the options used; ``unpicked_micrographs``: the
        reference micrographs with particles that ``picks`` has nothing for
        (no pick, not even a rejected one, and not in ``micrographs``),
        whose ``n_unpicked_reference`` particles are counted as misses in
        either scope; ``n_unpicked_micrographs``: how many.

    Raises
    ------
    ValueError
        For bad options (naming them) or missing columns.
    """
    if not (tolerance > 0 and math.isfinite(tolerance)):
        raise ValueError(f"tolerance must be a finite number > 0, got {tolerance}")
    if not 0 < iou_threshold <= 1:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
    if scope not in ("union", "reference"):
        raise ValueError(f"scope must be 'union' or 'reference', got {scope!r}")
    if reference_diameter is not None and not (reference_diameter > 0 and math.isfinite(reference_diameter)):
        raise ValueError(f"reference_diameter must be a finite number > 0, got {reference_diameter}")
    _check_columns(picks, "picks")
    _check_columns(reference, "reference")

    ref = reference.copy().reset_index(drop=True)
    pk = picks.copy().reset_index(drop=True)
    # A table without micrograph names belongs to the only micrograph of the other table.
    for df, other, what in ((ref, pk, "reference"), (pk, ref, "picks")):
        if schema.MICROGRAPH not in df.columns:
            names = other[schema.MICROGRAPH].unique() if schema.MICROGRAPH in other.columns else ["micrograph"]
            if len(names) > 1:
                where = f"{sources[what]}: " if sources and sources.get(what) else ""
                raise ValueError(f"{where}the {what} table has no micrograph column but the other one names {len(names)} "
                                 "micrographs; add a micrograph column")
            df[schema.MICROGRAPH] = names[0] if len(names) else "micrograph"
    if "kind" not in ref.columns:
        ref["kind"] = "particle"
    ref["kind"] = ref["kind"].fillna("particle").astype(str)
    if schema.DIAMETER not in ref.columns:
        ref[schema.DIAMETER] = np.nan
    ref[schema.DIAMETER] = ref[schema.DIAMETER].astype(float)
    if reference_diameter is not None:
        ref[schema.DIAMETER] = ref[schema.DIAMETER].fillna(float(reference_diameter))
    if ref[schema.DIAMETER].isna().any():
        where = f"{sources['reference']}: " if sources and sources.get("reference") else ""
        if schema.DIAMETER not in reference.columns:
            # A table with its diameter under another name (diameter_px_watershed_equiv, ...) says which it has.
            near = [str(c) for c in reference.columns if "diam" in str(c).lower()]
            fix = (f" (it has {', '.join(near)}): rename the one to use to diameter_px, or give reference_diameter=<px>"
                   if near else "; give reference_diameter=<px>")
            raise ValueError(f"{where}the reference has no diameter_px column{fix}")
        n = int(ref[schema.DIAMETER].isna().sum())
        raise ValueError(f"{where}{n} of {len(ref)} reference rows have no diameter_px; give reference_diameter=<px>")
    bad = ~(np.isfinite(ref[schema.DIAMETER].to_numpy(float)) & (ref[schema.DIAMETER].to_numpy(float) > 0))
    if bad.any():
        first = ref.loc[bad].iloc[0]
        raise ValueError(f"reference diameter_px must be > 0 and finite; {int(bad.sum())} row(s) are not (first: "
                         f"{first[schema.MICROGRAPH]} at x_px={first[schema.X]}, y_px={first[schema.Y]}: {first[schema.DIAMETER]})")
    ref["_key"] = ref[schema.MICROGRAPH].map(micrograph_key)

    pk["_key"] = pk[schema.MICROGRAPH].map(micrograph_key)
    # Micrographs the picks have results for: any pick, rejected ones too, and those a run processed without one.
    with_results = set(pk["_key"]) | {micrograph_key(m) for m in (micrographs or [])}
    if not include_rejected and schema.ACCEPTED in pk.columns:
        acc = pk[schema.ACCEPTED]
        if acc.dtype == object or str(acc.dtype) in ("str", "string"):
            acc = acc.astype(str).str.lower().isin(("true", "1", "yes"))
        pk = pk.loc[acc.astype(bool).to_numpy()].reset_index(drop=True)
    has_diam = schema.DIAMETER in pk.columns
    dims = 3 if (schema.Z in pk.columns and schema.Z in ref.columns) else 2
    coords = [schema.X, schema.Y] + ([schema.Z] if dims == 3 else [])
    iou_fn = sphere_iou if dims == 3 else circle_iou

    keys_ref = list(dict.fromkeys(ref["_key"]))
    if scope == "reference":
        keys = keys_ref
    else:
        extra = [micrograph_key(m) for m in (micrographs or [])]
        keys = list(dict.fromkeys(keys_ref + extra + list(pk["_key"])))
    keyset = set(keys)
    pk = pk.loc[pk["_key"].isin(keyset)].reset_index(drop=True)

    is_junk = ref["kind"].str.lower().isin(JUNK_KINDS).to_numpy()
    # Reference micrographs with particles that the picks have no results for at all (a partial run, another
    # run's folder): in either scope their particles count as misses, which the summary says.
    targets = ref.loc[~is_junk, "_key"]
    unpicked = [k for k in dict.fromkeys(targets) if k not in with_results]
    lab = _Labels.empty(len(pk), len(ref))
    pk_groups = pk.groupby("_key", sort=False).indices
    ref_groups = ref.groupby("_key", sort=False).indices
    for key in keys:
        ri = np.asarray(ref_groups.get(key, []), dtype=int)
        _label_micrograph(
            lab, pk, ref, np.asarray(pk_groups.get(key, []), dtype=int), ri[~is_junk[ri]], ri[is_junk[ri]],
            coords=coords, tolerance=tolerance, iou_fn=iou_fn,
        )

    def metrics(pi: np.ndarray, ri: np.ndarray) -> dict:
        return _metrics(lab, pk, ref, pi, ri[~is_junk[ri]], int(is_junk[ri].sum()), iou_threshold=iou_threshold)

    rows = [{"micrograph": key, **metrics(np.asarray(pk_groups.get(key, []), dtype=int), np.asarray(ref_groups.get(key, []), dtype=int))} for key in keys]
    per_mic = pd.DataFrame(rows, columns=["micrograph", *PER_MICROGRAPH_COLUMNS])
    summary = {"n_micrographs": len(keys), **metrics(np.arange(len(pk)), np.arange(len(ref))),
               "n_unpicked_micrographs": len(unpicked), "n_unpicked_reference": int(targets.isin(unpicked).sum()),
               "unpicked_micrographs": unpicked}
    per_kind = {}
    for kind, idx in ref.loc[~is_junk].groupby("kind", sort=True).indices.items():
        rows_k = np.flatnonzero(~is_junk)[idx]
        m = lab.matched_ref[rows_k]
        entry = {"n": int(len(rows_k)), "recall": float(m.mean())}
        if has_diam and m.any():
            dr = ref.loc[rows_k[m], schema.DIAMETER].to_numpy(float)
            dp = pk.loc[lab.pick_of_ref[rows_k[m]], schema.DIAMETER].to_numpy(float)
            if np.isfinite(dp).any():
                entry["median_diameter_error"] = float(np.nanmedian(np.abs(dp - dr) / dr))
        per_kind[kind] = entry
    summary.update(dims=dims, per_kind=per_kind, options={
        "tolerance": tolerance, "iou_threshold": iou_threshold, "include_rejected": include_rejected,
        "scope": scope, "reference_diameter": reference_diameter,
    })
    junk_counts = pd.Series(lab.junk_kind[lab.status == "junk"], dtype=object).value_counts()
    summary["junk_picks_by_kind"] = {str(k): int(junk_counts.get(k, 0)) for k in sorted(set(ref.loc[is_junk, "kind"]))}
    out_picks = pk.drop(columns="_key").assign(status=lab.status, junk_kind=lab.junk_kind, ref_index=lab.ref_index, iou=lab.iou)
    out_ref = ref.drop(columns="_key").assign(matched=lab.matched_ref, pick_index=lab.pick_of_ref)
    return EvaluationResult(summary=summary, per_micrograph=per_mic, picks=out_picks, reference=out_ref)


def format_summary(s: dict) -> str:
    """A short human-readable block of an evaluation summary."""
    def f(v, pct=False):
        if v is None or (isinstance(v, float) and not math.isfinite(v)):
            return "n/a"
        return f"{100 * v:.1f}%" if pct else f"{v:.3f}"

    lines = [
        f"micrographs {s['n_micrographs']}  reference particles {s['n_reference']}  picks {s['n_picks']}",
        f"precision {f(s['precision'])}  recall {f(s['recall'])}  F1 {f(s['f1'])}  AUPRC {f(s['auprc'])}",
        f"tp {s['tp']}  fp {s['fp']}  fn {s['fn']}  duplicates {s['duplicates']} ({f(s['duplicate_rate'], True)} of matched)"
        f"  picks on junk {s['junk_picks']}"
        + (" (" + ", ".join(f"{k} {v}" for k, v in s.get("junk_picks_by_kind", {}).items()) + ")" if s.get("junk_picks_by_kind") else ""),
        f"median |diameter error| {f(s['median_diameter_error'], True)} (median signed {f(s['median_signed_diameter_error'], True)})"
        f"  IoU>={s['options']['iou_threshold']} {f(s['iou_rate'], True)}",
    ]
    if s.get("n_unpicked_micrographs"):
        lines.insert(1, f"  {s['n_unpicked_micrographs']} reference micrograph(s) without a pick: their "
                        f"{s['n_unpicked_reference']} particle(s) count as misses")
    for kind, e in s.get("per_kind", {}).items():
        lines.append(f"  {kind:<10} n={e['n']:<6} recall {f(e['recall'])}  |d err| {f(e.get('median_diameter_error', float('nan')), True)}")
    return "\n".join(lines)


def format_per_micrograph(df: pd.DataFrame, *, limit: int = 30) -> str:
    """The per-micrograph table as aligned text (the ``limit`` lowest F1 first when longer)."""
    if len(df) > limit:
        df = df.sort_values("f1", kind="stable", na_position="first").head(limit)
    width = max([len("micrograph")] + [len(str(m)) for m in df["micrograph"]])

    def f(v, pct=False):
        if v is None or (isinstance(v, float) and not math.isfinite(v)):
            return "-"
        return f"{100 * v:.1f}%" if pct else f"{v:.2f}"

    lines = [f"{'micrograph':<{width}}  {'ref':>5} {'picks':>5} {'P':>5} {'R':>5} {'F1':>5} {'dup':>4} {'junk':>4} {'|d err|':>7}"]
    for r in df.itertuples():
        lines.append(
            f"{r.micrograph:<{width}}  {r.n_reference:>5} {r.n_picks:>5} {f(r.precision):>5} {f(r.recall):>5} {f(r.f1):>5} "
            f"{r.duplicates:>4} {r.junk_picks:>4} {f(r.median_diameter_error, True):>7}"
        )
    return "\n".join(lines)


def write_results(res: EvaluationResult, out_dir: str | Path) -> list[Path]:
    """Write ``evaluation.json``, ``per_micrograph.csv`` and ``picks_evaluated.csv`` atomically."""
    from lipoframe.io.atomic import atomic_path, safe_child, write_text

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [write_text(safe_child(out_dir, "evaluation.json"), json.dumps(_nan_to_none(res.summary), indent=2))]
    for name, df in (("per_micrograph.csv", res.per_micrograph), ("picks_evaluated.csv", res.picks)):
        p = safe_child(out_dir, name)
        with atomic_path(p) as tmp:
            df.to_csv(tmp, index=False, float_format="%.4f")
        paths.append(p)
    return paths


# ---------------------------------------------------------------------------
# Sweeps (lipoframe run -m): every job against the same reference
# ---------------------------------------------------------------------------
#: Columns of the comparison table of a sweep (:func:`evaluate_sweep`), in order.
SWEEP_COLUMNS = ("job", "overrides", "status", "n_picks", "precision", "recall", "f1", "auprc", "duplicates",
                 "median_diameter_error", "note")


def all_job_folders(path: str | Path) -> list[Path]:
    """Every job folder in a ``lipoframe run -m`` sweep folder, by job number, earlier sweeps' too; [] if ``path`` is not one.

    A sweep folder holds Hydra's ``multirun.yaml``; its jobs are the
    subfolders with a ``.hydra/overrides.yaml`` or a run's
    ``micrographs/*.json``, so a job that stopped before picking is one too;
    deeper ones when ``hydra.sweep.subdir`` nests them (:func:`lipoframe.sweepdir.job_folders`).
    """
    from lipoframe.sweepdir import job_folders

    path = Path(path)
    if not path.is_dir() or not (path / "multirun.yaml").is_file():
        return []
    return job_folders(path, lambda p: (p / ".hydra" / "overrides.yaml").is_file() or is_run_folder(p))


def stale_job_folders(path: str | Path) -> dict[Path, str]:
    """The job folders of ``path`` left by an earlier sweep into the same folder, each with why (:mod:`lipoframe.sweepdir`)."""
    from lipoframe.sweepdir import stale_jobs

    return stale_jobs(path, all_job_folders(path))


def sweep_job_folders(path: str | Path) -> list[Path]:
    """The job folders of the last sweep into a ``lipoframe run -m`` sweep folder, by job number; [] if ``path`` is not one.

    Hydra keeps the folders of an earlier sweep into the same folder (a sweep
    re-run with fewer jobs); those are left out (:func:`stale_job_folders`).
    """
    stale = stale_job_folders(path)
    return [f for f in all_job_folders(path) if f not in stale]


def sweep_keys(sweep: str | Path) -> list[str]:
    """The keys a sweep folder's ``multirun.yaml`` sweeps: its command line's ``key=a,b`` words and ``hydra.sweeper.params``.

    [] when the file cannot be read, or names no swept key (another
    sweeper's search space, an interval sweep).
    """
    from lipoframe.sweepdir import sweep_record

    record = sweep_record(sweep)
    if record is None:
        return []
    from hydra.core.override_parser.overrides_parser import OverridesParser

    keys = [str(k).lstrip("+~") for k in record.params] if record.params is not None else []
    parser = OverridesParser.create()
    for word in record.task:
        try:
            override = parser.parse_override(word)
        except Exception:  # noqa: BLE001 - Hydra raises several types for a word it cannot read
            continue
        if override.is_sweep_override():
            keys.append(override.get_key_element().lstrip("+~"))
    return list(dict.fromkeys(keys))


def swept_overrides(words: list[list[str]], keys: list[str] = ()) -> list[list[str]]:
    """Each job's words that the sweep varied.

    Those of the swept ``keys`` (:func:`sweep_keys`) if given; else the
    words not every job shares (``input=`` too, in a sweep over inputs).
    When nothing is left (a sweep of one job), each job keeps its other
    words but ``input=`` and ``output=``.
    """
    if keys:
        varied = [[w for w in ws if override_key(w) in keys] for ws in words]
    else:
        shared = set.intersection(*(set(ws) for ws in words)) if words else set()
        varied = [[w for w in ws if w not in shared] for ws in words]
    return varied if any(varied) else [[w for w in ws if override_key(w) not in ("input", "output")] for ws in words]


@dataclass
class SweepJob:
    """One job of a sweep as :func:`evaluate_sweep` scored it.

    job : str
        Hydra's job number (its folder's name, unless ``hydra.sweep.subdir``
        says otherwise; :func:`lipoframe.sweepdir.job_labels`).
    path : Path or None
        None for a job the sweep never started (no folder).
    overrides : list of str
        The words the sweep varied (:func:`swept_overrides`).
    all_overrides : list of str
        Every word of its ``.hydra/overrides.yaml``.
    status : str
        ``ok``; ``no picks`` (scored, with no pick to score); ``partial``
        (some micrographs failed, or the job was interrupted: scored as it
        is, the reference particles of the micrographs it did not pick
        counted as misses); ``failed`` (not scored: no results to read, or not
        run: the sweep stopped before it started).
    note : str
        Why, for any status but ``ok``.
    result : EvaluationResult or None
        None for a ``failed`` job.
    """

    job: str
    path: Optional[Path]
    overrides: list
    all_overrides: list
    status: str
    note: str
    result: Optional[EvaluationResult]

    def row(self) -> dict:
        """The job's row of the comparison table (:data:`SWEEP_COLUMNS`)."""
        s = self.result.summary if self.result is not None else {}
        nan = float("nan")
        return {"job": self.job, "overrides": " ".join(self.overrides), "status": self.status,
                "n_picks": s.get("n_picks"), "precision": s.get("precision", nan), "recall": s.get("recall", nan),
                "f1": s.get("f1", nan), "auprc": s.get("auprc", nan), "duplicates": s.get("duplicates"),
                "median_diameter_error": s.get("median_diameter_error", nan), "note": self.note}


def _count(n, word: str) -> str:
    """``1 job``, ``2 jobs``."""
    return f"{n} {word}" + ("" if n == 1 else "s")


def _job_state(job: Path) -> tuple[str, str]:
    """(status, note) of a job from its run_summary.json, before it is scored."""
    log = job / "lipoframe.log"
    see = f" (see {log})" if log.is_file() else ""
    try:
        summary = json.loads((job / "run_summary.json").read_text())
        mics = summary["micrographs"]
    except (OSError, ValueError, KeyError, TypeError):
        summary, mics = None, None
    if not is_run_folder(job):
        if summary is None:
            return "failed", f"no results: the job stopped before picking{see}"
        return "failed", f"no micrograph results{see}"
    if mics is None:
        return "partial", (f"no run_summary.json: the job did not finish; the micrographs it did not pick "
                           f"count as misses{see}")
    notes = []
    if mics.get("failed"):
        notes.append(f"{mics['failed']} of {mics.get('total', '?')} micrographs failed{see}")
    from lipoframe.runner import PLAN_INTERRUPTED, notes_beginning, picking_interrupted

    # A `lipoframe plan` of the job stopped in its binning or writers: its note says what to run again.
    plan_stopped = notes_beginning(summary.get("notes"), PLAN_INTERRUPTED)
    if mics.get("not_done") or picking_interrupted(summary):
        notes.append(f"interrupted: {_count(mics.get('not_done', 0), 'micrograph')} not picked")
    notes += plan_stopped
    return ("partial" if notes else "ok"), "; ".join(notes)


def evaluate_sweep(
    sweep: str | Path,
    reference: pd.DataFrame,
    *,
    micrographs=None,
    flip_y: bool | None = None,
    **options,
) -> list[SweepJob]:
    """Score every job of a ``lipoframe run -m`` sweep folder against the same reference.

    Parameters
    ----------
    sweep : str or Path
        The sweep folder (``multirun.yaml`` and one folder per job).
    reference : DataFrame
        From :func:`read_reference`.
    micrographs, flip_y
        As for :func:`read_picks` (each job's own run folder is searched after ``micrographs``).
    **options
        Passed to :func:`evaluate` (``tolerance``, ``iou_threshold``,
        ``include_rejected``, ``reference_diameter``, ``scope``).

    Returns
    -------
    list of SweepJob
        One per job folder of the last sweep, by job number; jobs that
        failed or have no picks are listed with the reason (``status``,
        ``note``). Folders an earlier sweep left (:func:`stale_job_folders`)
        are not scored.

    Raises
    ------
    EvaluationInputError
        If ``sweep`` is not a sweep folder with job folders of its last sweep.
    """
    from lipoframe.sweepdir import job_labels, job_overrides

    everything = all_job_folders(sweep)
    if not everything:
        raise EvaluationInputError(f"{sweep}: not a sweep folder of lipoframe run -m (no multirun.yaml with job folders)")
    stale = stale_job_folders(sweep)
    folders = [f for f in everything if f not in stale]
    if not folders:
        raise EvaluationInputError(f"{sweep}: none of its {_count(len(everything), 'job folder')} is of the last sweep "
                                   f"(multirun.yaml): {next(iter(stale.values()))}")
    words = [job_overrides(f) or [] for f in folders]  # [] when unreadable
    labels = job_labels(sweep, folders)
    unstarted = _unstarted_jobs(sweep, labels)
    varied = swept_overrides(words + [ws for _, ws in unstarted], sweep_keys(sweep))
    jobs = []
    for folder, label, all_words, shown in zip(folders, labels, words, varied):
        status, note = _job_state(folder)
        result = None
        if status != "failed":
            try:
                catalog = MicrographCatalog([m for m in (micrographs, folder) if m is not None])
                picks, processed = read_picks(folder, micrographs=catalog, flip_y=flip_y)
                result = evaluate(picks, reference, micrographs=processed, **options)
            except EvaluationInputError as exc:
                status, note = "failed", str(exc)
            else:
                if not result.summary["n_picks"] and status == "ok":
                    status, note = "no picks", ("no pick" if options.get("include_rejected") else "no accepted pick")
        jobs.append(SweepJob(label, folder, shown, all_words, status, note, result))
    for (num, all_words), shown in zip(unstarted, varied[len(folders):]):
        jobs.append(SweepJob(str(num), None, shown, all_words, "failed",
                             "not run: the sweep stopped before this job started (the same lipoframe run -m command "
                             "again runs it)", None))
    if unstarted:
        jobs.sort(key=lambda j: int(j.job))
    return jobs


def _unstarted_jobs(sweep: str | Path, labels: list[str]) -> list[tuple[int, list[str]]]:
    """(job number, overrides) of the jobs of the last sweep that left no folder: it was stopped before them.

    From ``multirun.yaml`` (:func:`lipoframe.sweepdir.last_sweep_jobs`);
    [] when it cannot be expanded here (another sweeper) or a job folder's
    label is not its number.
    """
    from lipoframe.sweepdir import last_sweep_jobs

    if not all(label.isdigit() for label in labels):
        return []
    expected = last_sweep_jobs(sweep)
    if expected is None:
        return []
    have = {int(label) for label in labels}
    return [(num, list(ws)) for num, ws in enumerate(expected) if num not in have]


def sweep_table(jobs: list[SweepJob]) -> pd.DataFrame:
    """The comparison table of :func:`evaluate_sweep`'s jobs, one row each (:data:`SWEEP_COLUMNS`)."""
    table = pd.DataFrame([j.row() for j in jobs], columns=list(SWEEP_COLUMNS))
    return table.astype({"n_picks": "Int64", "duplicates": "Int64"})  # counts stay integers beside a failed job's blanks


def format_sweep(jobs: list[SweepJob]) -> str:
    """The comparison table as aligned text, and the job with the best F1."""
    def f(v, pct=False):
        if v is None or (isinstance(v, float) and not math.isfinite(v)):
            return "-"
        return f"{100 * v:.1f}%" if pct else f"{v:.3f}"

    rows = [j.row() for j in jobs]
    w_job = max([3] + [len(r["job"]) for r in rows])
    w_ov = min(60, max([9] + [len(r["overrides"]) for r in rows]))
    lines = [f"{'job':<{w_job}}  {'overrides':<{w_ov}}  {'picks':>6} {'P':>6} {'R':>6} {'F1':>6} {'AUPRC':>6} {'dup':>5} {'|d err|':>7}  status"]
    for r in rows:
        # cut in the middle: the ends tell jobs apart (input=/long/path/a and input=/long/path/b)
        ov = r["overrides"] if len(r["overrides"]) <= w_ov else r["overrides"][: (w_ov - 3) // 2] + "..." + r["overrides"][-(w_ov - 3 - (w_ov - 3) // 2):]
        picks = "-" if r["n_picks"] is None else str(r["n_picks"])
        dup = "-" if r["duplicates"] is None else str(r["duplicates"])
        status = r["status"] + (f": {r['note']}" if r["note"] else "")
        lines.append(f"{r['job']:<{w_job}}  {ov:<{w_ov}}  {picks:>6} {f(r['precision']):>6} {f(r['recall']):>6} {f(r['f1']):>6} "
                     f"{f(r['auprc']):>6} {dup:>5} {f(r['median_diameter_error'], True):>7}  {status}")
    scored = [r for r in rows if isinstance(r["f1"], float) and math.isfinite(r["f1"])]
    if scored:
        best = max(scored, key=lambda r: r["f1"])
        lines += ["", f"best F1 {best['f1']:.3f}: job {best['job']}" + (f" ({best['overrides']})" if best["overrides"] else "")]
    return "\n".join(lines)


def write_sweep_results(jobs: list[SweepJob], out_dir: str | Path, *, sweep: str | Path, options: dict,
                        stale: Optional[dict] = None) -> list[Path]:
    """Write ``sweep_evaluation.csv``, ``sweep_evaluation.json`` and each scored job's results, atomically.

    Each job's ``evaluation.json``, ``per_micrograph.csv`` and
    ``picks_evaluated.csv`` go to ``out_dir/job_<job>/`` (:func:`write_results`),
    never into the job's own folder, even when ``out_dir`` is the sweep folder.
    ``stale`` (folder: reason, :func:`stale_job_folders`) is listed in the
    JSON as ``stale_jobs``.
    """
    from lipoframe.io.atomic import atomic_path, safe_child, write_text
    from lipoframe.sweepdir import job_path

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    table = safe_child(out_dir, "sweep_evaluation.csv")
    with atomic_path(table) as tmp:
        sweep_table(jobs).to_csv(tmp, index=False, float_format="%.4f")
    paths.append(table)
    doc = {
        "sweep": str(sweep),
        "options": options,
        "jobs": [{**j.row(), "overrides": j.overrides, "all_overrides": j.all_overrides,
                  "folder": str(j.path) if j.path is not None else None,
                  "summary": {k: v for k, v in j.result.summary.items() if k != "options"} if j.result is not None else None}
                 for j in jobs],
        "stale_jobs": [{"job": job_path(sweep, f), "folder": str(f), "reason": why} for f, why in (stale or {}).items()],
    }
    paths.append(write_text(safe_child(out_dir, "sweep_evaluation.json"), json.dumps(_nan_to_none(doc), indent=2)))
    for j in jobs:
        if j.result is not None:
            paths += write_results(j.result, safe_child(out_dir, f"job_{_UNSAFE.sub('_', j.job)}"))
    return paths


# ---------------------------------------------------------------------------
# Overlays
# ---------------------------------------------------------------------------
#: Colours of picks by ``status``.
STATUS_COLORS = {"tp": "cyan", "duplicate": "magenta", "junk": "red", "fp": "orange"}


#: The colour key of an evaluation overlay (:data:`STATUS_COLORS` for the picks).
OVERLAY_KEY = "reference: green matched, yellow missed, red junk; picks: cyan tp, magenta duplicate, red on junk, orange fp"


def overlay_title(title: str | None) -> str:
    """``title`` over the colour key, which every overlay shows."""
    return f"{title}\n{OVERLAY_KEY}" if title else OVERLAY_KEY


def plot_evaluation(
    image: np.ndarray,
    reference: pd.DataFrame,
    picks: pd.DataFrame,
    path: str | Path,
    *,
    title: str = "",
    crop: tuple[tuple[int, int], tuple[int, int]] | None = None,
    max_px: int = 1600,
) -> Path:
    """Save a PNG of a micrograph with its reference particles and evaluated picks.

    Reference particles: green (matched) or yellow dashed (missed);
    ice/junk/carbon: red (carbon faint). Picks by ``status``
    (:data:`STATUS_COLORS`): cyan matched, magenta duplicate, red on junk,
    orange other false positives.

    Parameters
    ----------
    image : (M, N) ndarray
        The micrograph; coordinates of both tables refer to it.
    reference, picks : DataFrame
        Rows of this micrograph from :attr:`EvaluationResult.reference` and
        :attr:`EvaluationResult.picks`.
    crop : ((row0, row1), (col0, col1)), optional
        Draw only this part.
    max_px : int
        Larger images are block-averaged for display.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Circle

    from lipoframe.algorithms.pyramid import block_mean
    from lipoframe.io.atomic import atomic_path

    (r0, r1), (c0, c1) = crop if crop is not None else ((0, image.shape[0]), (0, image.shape[1]))
    part = np.asarray(image[r0:r1, c0:c1])
    factor = max(1, int(math.ceil(max(part.shape) / max_px)))
    shown = block_mean(part, factor) if factor > 1 else part.astype(np.float32)
    lo, hi = np.percentile(shown, [0.5, 99.5])
    h, w = part.shape
    fig, ax = plt.subplots(figsize=(10, 10 * h / w))
    ax.imshow(shown, cmap="gray", vmin=lo, vmax=hi,
              extent=(c0 - 0.5, c0 + shown.shape[1] * factor - 0.5, r0 + shown.shape[0] * factor - 0.5, r0 - 0.5))
    for r in reference.itertuples():
        junk = str(r.kind).lower() in JUNK_KINDS
        matched = bool(getattr(r, "matched", True))
        ax.add_patch(Circle((r.x_px, r.y_px), r.diameter_px / 2, fill=False, lw=1.0,
                            color="red" if junk else ("lime" if matched else "yellow"),
                            alpha=0.25 if str(r.kind) == "carbon" else 1.0, ls="-" if matched or junk else "--"))
    for p in picks.itertuples():
        color = STATUS_COLORS.get(getattr(p, "status", "tp"), "orange")
        ax.plot(p.x_px, p.y_px, "+", color=color, ms=6, mew=1.2)
        if hasattr(p, "diameter_px"):
            ax.add_patch(Circle((p.x_px, p.y_px), p.diameter_px / 2, fill=False, color=color, lw=0.8, ls=":"))
    ax.set_xlim(c0 - 0.5, c1 - 0.5)
    ax.set_ylim(r1 - 0.5, r0 - 0.5)
    ax.set_axis_off()
    ax.set_title(overlay_title(title), fontsize=9)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    return path


def _read_image(path: Path, *, dims: int = 2) -> np.ndarray:
    """The ``dims``-dimensional image of ``path`` through lipoframe's readers (chosen by suffix)."""
    from lipoframe.plugins import read_array
    from lipoframe.records import InputError

    try:
        return read_array(path, dims=dims)
    except InputError as exc:
        raise EvaluationInputError(str(exc)) from None


def _slab_view(volume: np.ndarray, reference: pd.DataFrame, picks: pd.DataFrame) -> tuple[np.ndarray, pd.DataFrame, pd.DataFrame, str]:
    """A tomogram's slab at the median ``z_px`` of its reference, and the spheres that reach it.

    As in the run report (:func:`lipoframe.plots.volume_slab`): the mean of
    5 planes; each sphere is drawn as its largest cross-section within them
    (:func:`lipoframe.plots.slab_sections`), spheres that miss them are left
    out, and the note says how many of each table are drawn.
    """
    from lipoframe import plots

    zs = reference[schema.Z] if len(reference) else picks[schema.Z]
    zs = pd.to_numeric(zs, errors="coerce").dropna()
    plane, first, last = plots.volume_slab(volume, float(np.median(zs)) if len(zs) else volume.shape[0] // 2)

    def cut(t: pd.DataFrame) -> pd.DataFrame:
        z = pd.to_numeric(t[schema.Z], errors="coerce").to_numpy(float)
        d = (pd.to_numeric(t[schema.DIAMETER], errors="coerce").to_numpy(float) if schema.DIAMETER in t.columns
             else np.zeros(len(t)))
        section = plots.slab_sections(z, np.nan_to_num(d), first, last)
        inside = (z >= first - 0.5) & (z <= last + 0.5)  # a pick without a diameter: its marker where its centre is
        keep = (section > 0) | (inside & ~(d > 0))
        out = t.loc[keep].copy()
        if schema.DIAMETER in out.columns:
            out[schema.DIAMETER] = section[keep]
        return out

    ref, pk = cut(reference), cut(picks)
    note = (f"   (slab z={first}-{last}, spheres cut there: {len(ref)} of {len(reference)} reference, "
            f"{len(pk)} of {len(picks)} picks)")
    return plane, ref, pk, note


def no_image_line(names: list[str]) -> str:
    """The line that says which reference micrographs without picks get no overlay, their image not being known."""
    shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    return (f"{_count(len(names), 'reference micrograph')} without picks and without a known image (not in the run "
            f"folder or micrographs=): no overlay for {'it' if len(names) == 1 else 'them'} ({shown})")


def write_overlays(res: EvaluationResult, micrographs, out_dir: str | Path, *, n: int, label: str = "",
                   skipped: Optional[list] = None) -> tuple[list[Path], list[str]]:
    """Overlays of the ``n`` micrographs with the lowest F1 (recall, then name).

    Reference micrographs without picks whose image is not known (the
    reference covers micrographs the run never picked) are left out of the
    choice: one line says how many (:func:`no_image_line`), and they are not
    failures. A micrograph with picks whose image is unknown or unreadable is.

    Parameters
    ----------
    res : EvaluationResult
    micrographs : MicrographCatalog, str, Path or sequence of them
        Where the images are: a lipoframe run folder (through its
        ``micrographs/<name>.json``) and/or folders of images.
    out_dir : str or Path
        The PNGs go to ``out_dir/overlays/<micrograph>.png``.
    n : int
        Number of micrographs.
    label : str
        Put before each printed line (a sweep's ``job 1 (...)``).
    skipped : list, optional
        If given, the names of the reference micrographs left out for want
        of an image are appended to it instead of printed.

    Returns
    -------
    written : list of Path
    failed : list of str
        One line per micrograph whose image is unknown or cannot be read
        (printed, and skipped).
    """
    catalog, out_dir = _as_catalog(micrographs), Path(out_dir)
    dims = 3 if schema.Z in res.reference.columns and schema.Z in res.picks.columns else 2
    per = res.per_micrograph.copy()
    # A reference micrograph the run never picked (F1 0, the "worst") whose image nobody knows: said once, not drawn.
    no_image = (per["n_picks"] == 0) & per["micrograph"].map(lambda m: catalog.image_path(m) is None)
    if n and no_image.any():
        names = sorted(per.loc[no_image, "micrograph"])
        if skipped is not None:
            skipped.extend(names)
        else:
            print(f"lipoframe evaluate: {label + ': ' if label else ''}{no_image_line(names)}", file=sys.stderr)
    per = per[~no_image]
    per["_f1"] = per["f1"].fillna(1.0 if n else 0.0)
    worst = per.sort_values(["_f1", "recall", "micrograph"], kind="stable", na_position="last").head(n)
    written, failed = [], []
    for row in worst.itertuples():
        try:
            path = catalog.image_path(row.micrograph)
            if path is None:
                raise EvaluationInputError("image not known (not in the run folder or micrographs=)")
            image = _read_image(path, dims=dims)
        except (OSError, ValueError, EvaluationInputError) as exc:
            failed.append(f"no overlay for {row.micrograph}: {exc}")
            print(f"lipoframe evaluate: {label + ': ' if label else ''}{failed[-1]}", file=sys.stderr)
            continue
        ref = res.reference[res.reference[schema.MICROGRAPH].map(micrograph_key) == row.micrograph]
        picks = res.picks[res.picks[schema.MICROGRAPH].map(micrograph_key) == row.micrograph]
        title = f"{row.micrograph}: P {row.precision:.2f}  R {row.recall:.2f}  F1 {row.f1:.2f}" if row.n_reference else row.micrograph
        if dims == 3:
            image, ref, picks, note = _slab_view(image, ref, picks)
            title += note
        from lipoframe.io.atomic import safe_child

        written.append(plot_evaluation(image, ref, picks, safe_child(out_dir, "overlays", f"{row.micrograph}.png"), title=title))
    return written, failed


# ---------------------------------------------------------------------------
# key=value command lines (shared with ``lipoframe simulate``)
# ---------------------------------------------------------------------------
class ArgsError(ValueError):
    """A bad command-line key or value; one line naming the key."""


def parse_dotlist(schema_cls: type, argv: list[str]):
    """Build ``schema_cls`` (a dataclass) from ``key=value`` arguments via OmegaConf.

    Raises
    ------
    ArgsError
        One line naming the bad key (unknown key, wrong type, bad value).
    """
    import yaml
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    for a in argv:
        if "=" not in a:
            raise ArgsError(f"expected key=value, got {a!r}")
        key, value = a.split("=", 1)
        try:  # OmegaConf reads each value as YAML; a value it cannot parse (",,", "[a") raised a traceback
            OmegaConf.from_dotlist([a])
        except yaml.YAMLError as exc:
            reason = str(getattr(exc, "problem", None) or exc).splitlines()[0]
            raise ArgsError(f"{key}: cannot read the value {value!r} ({reason}; quote it, e.g. {key}=\"'{value}'\")") from None
        if re.search(r"(^|\s)#", value) and not value.lstrip().startswith(("'", '"')):
            # YAML drops a comment: `picks=/data/run #3/picks.csv` would read /data/run, `picks=#3.csv` nothing
            raise ArgsError(f"{key}: '#' at the start or after a blank starts a YAML comment, so the value {value!r} "
                            f"would be cut before it; quote it: {key}=\"'{value}'\"")
    try:
        base = OmegaConf.structured(schema_cls)
        merged = OmegaConf.merge(base, OmegaConf.from_dotlist(list(argv)))
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or getattr(exc, "key", None)
        msg = str(exc).splitlines()[0]
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, ValueError) and not isinstance(cause, OmegaConfBaseException):
            msg = str(cause).splitlines()[0]
        if "not in struct" in msg or "Key '" in msg and "not" in msg:
            return_msg = f"unknown key {key!r} (known: {', '.join(f.name for f in dataclasses.fields(schema_cls))})"
            raise ArgsError(return_msg) from None
        raise ArgsError(f"{key}: {msg}" if key else msg) from None
    except ValueError as exc:
        raise ArgsError(str(exc).splitlines()[0]) from None


def dataclass_help(prog: str, description: str, schema_cls: type, examples: tuple[str, ...] = ()) -> str:
    """``--help`` text listing each field with its type, default and doc line."""
    doc = schema_cls.__doc__ or ""
    notes = {}
    for line in doc.splitlines():
        m = re.match(r"\s*(\w+):\s*(.+)", line)
        if m:
            notes[m.group(1)] = m.group(2)
    lines = [f"usage: lipoframe {prog} key=value ...", "", description, "", "options:"]
    for f_ in dataclasses.fields(schema_cls):
        default = f_.default if f_.default is not dataclasses.MISSING else None
        shown = "(required)" if default == "???" else f"default {default!r}"
        tname = re.sub(r"^Optional\[(.*)\]$", r"\1", str(getattr(f_.type, "__name__", f_.type)).replace("typing.", ""))
        lines.append(f"  {f_.name + '=':<22} {tname:<8} {shown}")
        if f_.name in notes:
            lines.append(f"      {notes[f_.name]}")
    if examples:
        lines += ["", "examples:"] + [f"  {e}" for e in examples]
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------
@dataclass
class EvaluateArgs:
    """Options of ``lipoframe evaluate``.

    picks: lipoframe run folder, sweep folder of lipoframe run -m (every job scored, one table), picks CSV/STAR (a RELION list file such as autopick.star is followed), EMAN .box, crYOLO .cbox or .coords, or a folder of them
    reference: reference coordinates: CSV (micrograph,x_px,y_px,diameter_px,kind), STAR (or a RELION list file), .box, .cbox, crYOLO .coords, a folder, or a lipoframe run folder (its accepted picks)
    output: folder for evaluation.json, per_micrograph.csv, picks_evaluated.csv (a sweep: sweep_evaluation.csv/.json, job_<n>/) (optional)
    tolerance: max centre distance for a match, relative to the reference diameter
    iou_threshold: circle/sphere IoU counted in iou_rate
    include_rejected: also evaluate picks with accepted=False
    reference_diameter: diameter (px) for reference rows without one (e.g. STAR and .box files)
    scope: union (picks on unreferenced micrographs are false positives) or reference (only the reference's micrographs); in both, reference micrographs without picks are misses (with a warning)
    overlays: draw the N micrographs with the lowest F1 into output/overlays/ (images from the run folder or micrographs=)
    micrographs: folder of the micrograph images (or a lipoframe run folder): heights and TIFF flip for STAR/.box/.cbox files, images for overlays
    flip_y: STAR/.box/.cbox rows of TIFF micrographs count from the bottom; null (auto: run records, micrographs=, .tif names), true, false
    """

    picks: str = "???"
    reference: str = "???"
    output: Optional[str] = None
    tolerance: float = 0.3
    iou_threshold: float = 0.6
    include_rejected: bool = False
    reference_diameter: Optional[float] = None
    scope: str = "union"
    overlays: int = 0
    micrographs: Optional[str] = None
    flip_y: Optional[bool] = None

    def __post_init__(self) -> None:
        if self.overlays < 0:
            raise ValueError(f"overlays must be >= 0, got {self.overlays}")
        if self.overlays and not self.output:
            raise ValueError("overlays needs output=<folder>")
        if not (self.tolerance > 0 and math.isfinite(self.tolerance)):
            raise ValueError(f"tolerance must be a finite number > 0, got {self.tolerance}")
        if not 0 < self.iou_threshold <= 1:
            raise ValueError(f"iou_threshold must be in (0, 1], got {self.iou_threshold}")
        if self.scope not in ("union", "reference"):
            raise ValueError(f"scope must be 'union' or 'reference', got {self.scope!r}")
        if self.reference_diameter is not None and not (self.reference_diameter > 0 and math.isfinite(self.reference_diameter)):
            raise ValueError(f"reference_diameter must be a finite number > 0, got {self.reference_diameter}")


class _Stdout:
    """``print`` for the lines on stdout that a closed pipe (``| head``) cannot stop.

    Once stdout is closed, later lines go nowhere (stdout is pointed at
    ``os.devnull``, as ``lipoframe run`` does) and the command goes on: the
    files asked for with ``output=`` are written whatever happens to stdout.
    """

    def __init__(self) -> None:
        self.closed = False

    def __call__(self, *args) -> None:
        if self.closed:
            return
        try:
            print(*args, flush=True)
        except BrokenPipeError:
            self.closed = True
            try:
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            except (OSError, ValueError, AttributeError):  # stdout is not a file (captured)
                pass


def main(argv: list[str]) -> int:
    """``lipoframe evaluate picks=... reference=... [output=...]``."""
    if any(a in ("-h", "--help") for a in argv):
        print(dataclass_help("evaluate", "Score picks against reference coordinates (one-to-one Hungarian matching).", EvaluateArgs, (
            "lipoframe evaluate picks=run/ reference=sim/truth.csv output=eval/",
            "lipoframe evaluate picks=run/picks.csv reference=manual.star reference_diameter=180 include_rejected=true",
            "lipoframe evaluate picks=run/ reference=truth.csv output=eval/ overlays=5   # draw the 5 worst micrographs",
            "lipoframe evaluate picks=picks.csv reference=manualpick/ micrographs=tiffs/ reference_diameter=180   # STAR on TIFF",
            "lipoframe evaluate picks=cryolo_out/CBOX/ reference=truth.csv micrographs=mics/   # crYOLO's picks",
            "lipoframe evaluate picks=sweep/ reference=truth.csv output=sweep_eval/   # every job of lipoframe run -m, one table",
        )))
        return 0
    try:
        args = parse_dotlist(EvaluateArgs, argv)
    except ArgsError as exc:
        msg = str(exc)
        if "missing mandatory value" in msg.lower():
            msg = f"{msg.split(':')[0]} is required (e.g. lipoframe evaluate picks=run/ reference=truth.csv)"
        print(f"lipoframe evaluate: {msg}", file=sys.stderr)
        return 2
    # `output=~/eval` in sh or in quotes reaches us with its '~': expand it as the shell would (lipoframe run does too)
    args = dataclasses.replace(args, **{f: os.path.expanduser(v) for f in ("picks", "reference", "output", "micrographs")
                                        if isinstance(v := getattr(args, f), str)})
    from lipoframe.sweepdir import run_after_sweep

    last_run = run_after_sweep(args.picks)
    if last_run is not None:  # a run and a sweep into the same folder: the last one run there is evaluated
        print(f"lipoframe evaluate: {args.picks}: holds a sweep and a run of its own; evaluating the "
              + ("run, started after the sweep (its jobs are the numbered folders)" if last_run
                 else "sweep, started after the run"), file=sys.stderr)
    if all_job_folders(args.picks) and not last_run:
        return _main_sweep(args)
    try:
        # What is known about the micrographs: micrographs= first, then the run folder picks come from, then
        # the one reference comes from (another picker's .box/.cbox/STAR files scored against a run on TIFFs).
        picks_run, ref_run = find_run_folder(args.picks), find_run_folder(args.reference)
        catalog = MicrographCatalog([s for s in (args.micrographs, picks_run, ref_run) if s is not None])
        if args.overlays and not catalog:
            raise EvaluationInputError("overlays need the micrograph images: give picks=<lipoframe run folder> "
                                       "(or a file in one) or micrographs=<folder of the images>")
        picks, processed = read_picks(args.picks, micrographs=catalog, flip_y=args.flip_y)
        reference = read_reference(args.reference, micrographs=catalog, flip_y=args.flip_y)
        picks = _named_by_file(picks, args.picks, reference, "picks")
        reference = _named_by_file(reference, args.reference, picks, "reference")
        res = evaluate(
            picks, reference, tolerance=args.tolerance, iou_threshold=args.iou_threshold,
            include_rejected=args.include_rejected, reference_diameter=args.reference_diameter,
            micrographs=processed, scope=args.scope, sources={"picks": str(args.picks), "reference": str(args.reference)},
        )
    except ValueError as exc:
        print(f"lipoframe evaluate: {exc}", file=sys.stderr)
        return 2
    for w in evaluation_warnings(res, picks, reference):
        print(f"lipoframe evaluate: warning: {w}", file=sys.stderr)
    say = _Stdout()  # `| head` closing stdout must not stop the files of output= from being written
    say(format_per_micrograph(res.per_micrograph))
    say()
    say(format_summary(res.summary))
    if args.output:
        try:
            for p in write_results(res, args.output):
                say(f"wrote {p}")
            if args.overlays:
                drawn, failed = write_overlays(res, catalog, args.output, n=args.overlays)
                for p in drawn:
                    say(f"wrote {p}")
                if failed:  # the evaluation is written; the exit code says an overlay is missing, as lipoframe report's does
                    return 1
        except OSError as exc:
            print(f"lipoframe evaluate: {args.output}: cannot write ({exc.strerror or exc})", file=sys.stderr)
            return 1
    return 0


def _named_by_file(df: pd.DataFrame, path, other: pd.DataFrame, what: str) -> pd.DataFrame:
    """``df`` (read from ``path``) with the micrographs named, when it has no micrograph column and ``other`` names several.

    A table of one micrograph's picks named after it (a run's
    ``csv/<micrograph>.csv`` without its column, another picker's
    ``<micrograph>.csv``) is that micrograph when ``other`` names it;
    otherwise no micrograph can be told and the error names the file.
    Against a table of one micrograph (or none named), ``df`` is left to
    :func:`evaluate`, which gives it that micrograph.

    Raises
    ------
    EvaluationInputError
    """
    if schema.MICROGRAPH in df.columns or schema.MICROGRAPH not in other.columns:
        return df
    names = pd.unique(other[schema.MICROGRAPH].astype(str))
    if len(names) < 2:
        return df
    stem = Path(path).stem
    if stem in set(names):
        return df.assign(**{schema.MICROGRAPH: stem})
    raise EvaluationInputError(f"{path}: the {what} table has no micrograph column but the other one names {len(names)} "
                               f"micrographs, none of them {stem!r} like the file; add a micrograph column")


def _main_sweep(args: EvaluateArgs) -> int:
    """``lipoframe evaluate picks=<sweep folder>``: every job against the same reference, one comparison table."""
    stale = stale_job_folders(args.picks)
    folders = [f for f in all_job_folders(args.picks) if f not in stale]
    if _shards_of_one_run(folders):
        # each shard picked a part of the micrographs: scored alone, the others' particles are all misses
        print(f"lipoframe evaluate: {args.picks}: its jobs are the shards of one run (shard.count={_shard_counts(folders)[folders[0]]}), "
              "each with part of the micrographs, so they are not scored one by one; merge them and evaluate the merged "
              f"run: lipoframe merge {shlex.quote(str(args.picks))} output=<merged> && lipoframe evaluate picks=<merged> "
              f"{shlex.quote(f'reference={args.reference}')}",
              file=sys.stderr)
        return 2
    try:
        # STAR/box references are placed with micrographs= first, then the first job's run records.
        first_run = next((f for f in folders if is_run_folder(f)), None)
        catalog = MicrographCatalog([s for s in (args.micrographs, first_run) if s is not None])
        reference = read_reference(args.reference, micrographs=catalog, flip_y=args.flip_y)
        options = dict(tolerance=args.tolerance, iou_threshold=args.iou_threshold, include_rejected=args.include_rejected,
                       reference_diameter=args.reference_diameter, scope=args.scope)
        jobs = evaluate_sweep(args.picks, reference, micrographs=args.micrographs, flip_y=args.flip_y, **options)
    except ValueError as exc:
        print(f"lipoframe evaluate: {exc}", file=sys.stderr)
        return 2
    scored = [j for j in jobs if j.result is not None]
    # Each job's names (a sweep over input= picks other micrographs); a warning all jobs share is printed once.
    warnings: dict[str, list[SweepJob]] = {}
    for j in scored:
        for w in evaluation_warnings(j.result, j.result.picks, reference):
            warnings.setdefault(w, []).append(j)
    for w, which in warnings.items():
        print(f"lipoframe evaluate: warning: {w if len(which) == len(scored) else _job_label(which) + ': ' + w}", file=sys.stderr)
    if stale:  # Hydra keeps the job folders of an earlier sweep into the same folder: not scored, said in one line
        from lipoframe.sweepdir import stale_line

        print(f"lipoframe evaluate: {args.picks}: {stale_line(args.picks, stale)}", file=sys.stderr)
    say = _Stdout()  # `| head` closing stdout must not stop the files of output= from being written
    say(f"sweep {args.picks}: {_count(len(jobs), 'job')} against {args.reference}")
    say(format_sweep(jobs))
    code = 1 if any(j.status == "failed" for j in jobs) else 0
    if args.output:
        try:
            for p in write_sweep_results(jobs, args.output, sweep=args.picks, options={**options, "reference": str(args.reference)},
                                         stale=stale):
                say(f"wrote {p}")
            if args.overlays:
                from lipoframe.io.atomic import safe_child

                no_image: dict[tuple, list[SweepJob]] = {}
                for j in scored:
                    cat = MicrographCatalog([s for s in (args.micrographs, j.path) if s is not None])
                    skipped: list[str] = []
                    drawn, failed = write_overlays(j.result, cat, safe_child(args.output, f"job_{_UNSAFE.sub('_', j.job)}"),
                                                   n=args.overlays, label=_job_label([j]), skipped=skipped)
                    if skipped:
                        no_image.setdefault(tuple(skipped), []).append(j)
                    for p in drawn:
                        say(f"wrote {p}")
                    code = max(code, 1 if failed else 0)
                for names, which in no_image.items():  # once when every job lacks the same images
                    who = "" if len(which) == len(scored) else _job_label(which) + ": "
                    print(f"lipoframe evaluate: {who}{no_image_line(list(names))}", file=sys.stderr)
        except OSError as exc:
            print(f"lipoframe evaluate: {args.output}: cannot write ({exc.strerror or exc})", file=sys.stderr)
            return 1
    return code


def _shard_counts(folders: list[Path]) -> dict[Path, int]:
    """``shard.count`` of each job folder whose ``inputs.json`` records one."""
    counts = {}
    for folder in folders:
        try:
            counts[folder] = int(json.loads((folder / "inputs.json").read_text())["shard"]["count"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return counts


def _shards_of_one_run(folders: list[Path]) -> bool:
    """Whether the job folders are the shards of one run: all with the same ``shard.count`` > 1, and
    overrides (``.hydra/overrides.yaml``) that differ in ``shard.index`` only."""
    from lipoframe.sweepdir import job_overrides

    counts = _shard_counts(folders)
    if not folders or len(counts) != len(folders) or len(set(counts.values())) != 1 or counts[folders[0]] < 2:
        return False
    others = set()
    for folder in folders:
        words = job_overrides(folder)
        if words is None:
            return False
        others.add(tuple(sorted(w for w in words if not w.lstrip("+~").startswith("shard.index="))))
    return len(others) == 1


def _job_label(jobs: list[SweepJob]) -> str:
    """``job 1 (detector.threshold=6)``, or ``jobs 1, 3`` for several: how a sweep's lines name their jobs."""
    if len(jobs) == 1:
        j = jobs[0]
        return f"job {j.job}" + (f" ({' '.join(j.overrides)})" if j.overrides else "")
    return "jobs " + ", ".join(j.job for j in jobs)


def evaluation_warnings(res: EvaluationResult, picks: pd.DataFrame, reference: pd.DataFrame) -> list[str]:
    """The warnings of an evaluation of ``picks`` against ``reference`` (one line each; [] when none).

    :func:`name_warnings`, then :func:`unpicked_line` for the reference
    micrographs those do not already name as unmatched by name.
    """
    lines, explained = _name_findings(picks, reference)
    unpicked = unpicked_line(res, explained=explained)
    return lines + ([unpicked] if unpicked else [])


def unpicked_line(res: EvaluationResult, *, explained=()) -> str:
    """Which reference micrographs have no results in the picks (the summary's ``unpicked_micrographs``); "" if none.

    Their particles are all misses: the picks are of another run, or of a
    run that did not finish. ``explained`` (micrograph names) are left out.
    """
    explained = set(explained)
    names = [n for n in res.summary.get("unpicked_micrographs", []) if n not in explained]
    if not names:
        return ""
    n_particles = int(res.per_micrograph.set_index("micrograph")["n_reference"].reindex(names).fillna(0).sum())
    more = f" and {len(names) - 3} more" if len(names) > 3 else ""
    return (f"{_count(len(names), 'reference micrograph')} with particles {'has' if len(names) == 1 else 'have'} no results "
            f"in the picks (no pick, not even a rejected one): {', '.join(names[:3])}{more}; their {n_particles} particle(s) "
            "count as misses: are the picks of the right run (or file), and did the run finish?")


def name_warnings(picks: pd.DataFrame, reference: pd.DataFrame) -> list[str]:
    """Why the micrograph names of picks and reference do not pair up as they should (one line each; [] when they do)."""
    return _name_findings(picks, reference)[0]


def _name_findings(picks: pd.DataFrame, reference: pd.DataFrame) -> tuple[list[str], set[str]]:
    """:func:`name_warnings`, and the reference micrographs (keys) they say no pick micrograph is named after."""
    out, explained = [], set()
    pick_keys = set(picks[schema.MICROGRAPH].map(micrograph_key)) if schema.MICROGRAPH in picks.columns else set()
    ref_keys = set(reference[schema.MICROGRAPH].map(micrograph_key)) if schema.MICROGRAPH in reference.columns else set()
    if pick_keys and ref_keys and not pick_keys & ref_keys:
        explained |= ref_keys
        out.append(f"no micrograph name in common (picks: {', '.join(sorted(pick_keys)[:3])}, ...; "
                   f"reference: {', '.join(sorted(ref_keys)[:3])}, ...)")
    for side, table in (("picks", picks), ("reference", reference)):
        clashes = same_name_in_folders(table[schema.MICROGRAPH]) if schema.MICROGRAPH in table.columns else []
        if clashes:  # matched as one micrograph: picks of one paired with the particles of the other
            key, folders = clashes[0]
            more = f" (and {len(clashes) - 1} more name(s))" if len(clashes) > 1 else ""
            out.append(f"{side}: micrograph {key} is in {len(folders)} folders "
                       f"({', '.join(folders[:3])}){more}; names are matched after dropping folders, so these are scored as "
                       "one micrograph: evaluate each folder on its own")
    similar = similar_micrograph_names(pick_keys, ref_keys)
    explained |= {r for _, r in similar}
    if similar:  # a partial mismatch (mic_001_dn against mic_001) scored without a word: extra false positives and misses
        more = f" and {len(similar) - 3} more" if len(similar) > 3 else ""
        out.append(f"{len(similar)} pick micrograph(s) have no reference micrograph of the same name "
                   f"but one of a similar name: {', '.join(f'{p} (reference: {r})' for p, r in similar[:3])}{more}; their picks "
                   "count as false positives and those references' particles as misses; rename one side (names are matched "
                   "after dropping folders and an image suffix)")
    return out, explained
