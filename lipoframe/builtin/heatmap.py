"""The ``heatmap`` detector: picks from a neural network's per-micrograph output.

A segmentation or centre network writes one map per micrograph (MRC, TIFF or
NPY; the micrograph's grid or an integer downscale of it). This detector finds
that map by name, turns it into instances (see
:mod:`lipoframe.algorithms.heatmap`) and returns one pick per instance, so the
rest of lipoframe (size-aware NMS, refiners, filters, binning, writers) works
on a network's output exactly as on its own detections.
"""

from __future__ import annotations

import bisect
import fnmatch
import glob
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from lipoframe import schema
from lipoframe.algorithms.heatmap import PEAK_SOURCES, heatmap_picks, normalise_heatmap, scale_to_unit
from lipoframe.hookspecs import hookimpl
from lipoframe.records import COMPRESSION_SUFFIXES, InputError, Micrograph, PickContext, file_stem, file_suffix
from lipoframe.stages import Detector, check_finite

#: MRC suffixes a heatmap file may have, also compressed (``_prob.mrc.gz``, ``_prob.mrc.bz2``: the MRC reader reads them).
_MRC_MAP_SUFFIXES = (".mrc", ".mrcs", ".map", ".rec")
#: Suffixes a heatmap file may have (as :func:`~lipoframe.records.file_suffix` gives them).
MAP_SUFFIXES = (*_MRC_MAP_SUFFIXES, ".tif", ".tiff", ".npy", ".png",
                *(f"{s}{c}" for c in COMPRESSION_SUFFIXES for s in _MRC_MAP_SUFFIXES))

#: sigma_px reported for a heatmap pick: the blob-detector sigma of a disc/ball of that diameter.
_DIAMETER_PER_SIGMA = {2: 2.0 * math.sqrt(2.0), 3: 2.0 * math.sqrt(3.0)}


@dataclass
class HeatmapParams:
    """Read a network's probability (or centre) map per micrograph and pick its instances.

    folder: folder of the maps; empty = the micrograph's own folder.
    pattern: file name of the map: appended to the micrograph's file stem
        (``_prob.mrc`` -> ``<stem>_prob.mrc``; glob characters allowed), or
        a full name with ``{stem}`` in it (quote it on the command line).
    centre_pattern: optional second map with particle centres (CenterNet
        style); the probability map is then split by nearest centre.
    downscale: the maps are the micrograph binned by this integer factor;
        0 infers it from the two shapes.
    threshold: foreground is probability >= threshold.
    logits: the maps hold logits (a sigmoid is applied first).
    min_distance: minimum distance between two centres, full-resolution px;
        0 = half of the run's dmin.
    min_diameter: components/instances with a smaller equivalent diameter
        (full-resolution px) are removed; 0 = half of the run's dmin.
    peaks: without a centre map, centres are maxima of the ``distance`` to
        the background (segmentation masks) or of the ``probability``.
    centre_threshold: minimum value of a centre in the centre map.
    check_center: with a centre map, split a component only when it holds
        more than one centre and keep components without a centre.
    centre: report the ``centroid`` of each instance or its ``peak``.
    """

    folder: str = ""
    pattern: str = ".*"
    centre_pattern: str = ""
    downscale: int = 0
    threshold: float = 0.5
    logits: bool = False
    min_distance: float = 0.0
    min_diameter: float = 0.0
    peaks: str = "distance"
    centre_threshold: float = 0.5
    check_center: bool = False
    centre: str = "centroid"

    def __post_init__(self) -> None:
        check_finite(self, "detector")
        if not self.pattern:
            raise ValueError("detector.pattern must not be empty (e.g. _prob.mrc)")
        if self.downscale < 0:
            raise ValueError(f"detector.downscale must be >= 0 (0 = infer), got {self.downscale}")
        if not 0 < self.threshold <= 1:
            raise ValueError(f"detector.threshold must be in (0, 1], got {self.threshold}")
        if not 0 < self.centre_threshold <= 1:
            raise ValueError(f"detector.centre_threshold must be in (0, 1], got {self.centre_threshold}")
        if self.min_distance < 0:
            raise ValueError(f"detector.min_distance must be >= 0 (0 = dmin / 2), got {self.min_distance}")
        if self.min_diameter < 0:
            raise ValueError(f"detector.min_diameter must be >= 0 (0 = dmin / 2), got {self.min_diameter}")
        if self.peaks not in PEAK_SOURCES:
            raise ValueError(f"detector.peaks must be one of {PEAK_SOURCES}, got {self.peaks!r}")
        if self.centre not in ("centroid", "peak"):
            raise ValueError(f"detector.centre must be 'centroid' or 'peak', got {self.centre!r}")
        if self.folder and not Path(self.folder).expanduser().is_dir():
            raise ValueError(f"detector.folder must be an existing folder of maps (or empty: the micrograph's own folder), got {self.folder!r}")


#: folder -> (its modification time, its sorted file names): see :func:`_listing`.
_LISTINGS: dict[str, tuple[int, list[str]]] = {}


def _listing(folder: str) -> list[str] | None:
    """The sorted names in ``folder``, read again only when its modification time changes.

    For the resume check, which looks up every micrograph's maps in turn: a
    glob lists the whole folder each time (15 ms for 20 000 files).
    """
    try:
        mtime = os.stat(folder).st_mtime_ns
        cached = _LISTINGS.get(folder)
        if cached is None or cached[0] != mtime:
            if len(_LISTINGS) > 64:
                _LISTINGS.clear()
            cached = _LISTINGS[folder] = (mtime, sorted(os.listdir(folder)))
    except OSError:
        return None
    return cached[1]


def _glob_listed(spec: str) -> list[str]:
    """``glob.glob(spec)`` through :func:`_listing` when only the file name has wildcards."""
    folder, pattern = os.path.split(spec)
    names = None if glob.has_magic(folder) else _listing(folder or ".")
    if names is None:
        return glob.glob(spec)
    prefix = re.split(r"[*?[]", pattern, maxsplit=1)[0]
    found = []
    for i in range(bisect.bisect_left(names, prefix), len(names)):
        n = names[i]
        if not n.startswith(prefix):
            break
        if fnmatch.fnmatchcase(n, pattern) and (pattern.startswith(".") or not n.startswith(".")):
            found.append(os.path.join(folder, n))
    return found


def map_files(path: str | None, name: str, folder: str, pattern: str, *, listed: bool = False) -> tuple[str, list[Path]]:
    """The glob for the map of the micrograph in ``path`` (output name ``name``) and the files it matches.

    ``pattern`` without ``{stem}`` (or ``{name}``, lipoframe's output name of
    the micrograph) is appended to the micrograph's file stem; ``folder``
    empty is the micrograph's own folder. The micrograph itself and files
    without a map suffix never match. ``listed``: look the names up in a
    listing of the folder kept while it is unchanged (many look-ups in one
    folder, as the resume check makes) instead of globbing.

    Returns
    -------
    spec : str
        The glob looked for.
    found : list of Path
        The matching files, sorted.
    """
    src = Path(path) if path else None
    stem = file_stem(src) if src is not None else name
    base = Path(folder).expanduser() if folder else (src.parent if src is not None else Path("."))
    if "{stem}" not in pattern and "{name}" not in pattern:
        pattern = "{stem}" + pattern
    spec = str(base / pattern.replace("{stem}", glob.escape(stem)).replace("{name}", glob.escape(name)))
    own = src.resolve() if src is not None and src.exists() else None
    found = sorted(
        Path(p) for p in (_glob_listed(spec) if listed else glob.glob(spec))
        if file_suffix(p) in MAP_SUFFIXES and Path(p).is_file() and (own is None or Path(p).resolve() != own)
    )
    return spec, found


def find_map(mic: Micrograph, folder: str, pattern: str, *, key: str = "detector.pattern") -> Path:
    """The one map file of ``mic`` named by ``folder``/``pattern`` (see :func:`map_files`).

    ``key`` is the option that gave the pattern, named in the messages.

    Raises
    ------
    InputError
        Naming the micrograph and the pattern when no file or several match.
    """
    spec, found = map_files(mic.meta.path, mic.name, folder, pattern)
    where = mic.meta.path or mic.name
    if not found:
        raise InputError(f"{where}: no heatmap matches {spec} (set detector.folder / {key})")
    if len(found) > 1:
        names = ", ".join(p.name for p in found[:4]) + (" ..." if len(found) > 4 else "")
        raise InputError(f"{where}: {len(found)} heatmaps match {spec} ({names}); make {key} specific")
    return found[0]


def infer_downscale(mic_shape: tuple[int, ...], map_shape: tuple[int, ...], *, factor: int = 0) -> int:
    """The integer factor that bins ``mic_shape`` to ``map_shape`` (floor or ceil per axis).

    Raises
    ------
    ValueError
        If the shapes do not fit any (or the given) factor.
    """
    if len(mic_shape) != len(map_shape):
        raise ValueError(f"heatmap has {len(map_shape)} dimensions, the micrograph {len(mic_shape)}")

    def fits(f: int) -> bool:
        return all(s in (m // f, -(-m // f)) for m, s in zip(mic_shape, map_shape))

    if factor:
        if not fits(factor):
            raise ValueError(f"heatmap shape {tuple(map_shape)} is not the micrograph shape {tuple(mic_shape)} binned by detector.downscale={factor}")
        return factor
    if tuple(mic_shape) == tuple(map_shape):
        return 1
    guess = max(1, round(mic_shape[-1] / max(map_shape[-1], 1)))
    for f in (guess, guess - 1, guess + 1):
        if f >= 1 and fits(f):
            return f
    raise ValueError(
        f"heatmap shape {tuple(map_shape)} is not the micrograph shape {tuple(mic_shape)} or an integer downscale of it"
    )


def _read_map(path: Path, ndim: int, where: str) -> np.ndarray:
    """The array of map ``path``; a file that cannot be read fails naming the micrograph too.

    A colour PNG, JPEG or TIFF (the readers average its colour samples into
    floating point) is scaled to [0, 1] from the bit depth in its header:
    a map holding 0 and one other value (a selection drawn in colour) is
    divided by that value, other 8-bit maps by 255 (a grey map saved as
    RGB), deeper ones by their largest value.
    """
    from lipoframe.builtin.readers import colour_bits
    from lipoframe.plugins import read_array  # the readers a run's inputs get

    try:
        data = read_array(path, dims=ndim)
    except InputError as exc:
        raise InputError(f"{where}: heatmap {exc}") from None
    bits = colour_bits(path) if ndim == 2 and np.issubdtype(data.dtype, np.floating) else None
    return scale_to_unit(data, eight_bit=bits == 8) if bits else data


class HeatmapDetector(Detector):
    name = "heatmap"
    Params = HeatmapParams
    columns = ("size_px",)
    summary = "picks from a network's probability/centre map per micrograph (threshold, peaks, instances)"

    def extra_inputs(self, path: Path, name: str) -> list[Path]:
        """The maps (and centre maps) of the micrograph in ``path``: resume picks it again when they change."""
        p = self.params
        patterns = [p.pattern] + ([p.centre_pattern] if p.centre_pattern else [])
        return [f for pattern in patterns for f in map_files(str(path), name, p.folder, pattern, listed=True)[1]]

    def detect(self, mic: Micrograph, ctx: PickContext) -> pd.DataFrame:
        p = self.params
        ndim = mic.image.ndim
        where = mic.meta.path or mic.name
        path = find_map(mic, p.folder, p.pattern)
        hm = _read_map(path, ndim, where)
        # Errors name the map with its folder as given (detector.folder), as the user can find it.
        try:
            factor = infer_downscale(mic.shape, hm.shape, factor=p.downscale)
            prob = normalise_heatmap(hm, logits=p.logits)
        except ValueError as exc:
            raise InputError(f"{where}: {path}: {exc}") from None
        cmap = None
        if p.centre_pattern:
            cpath = find_map(mic, p.folder, p.centre_pattern, key="detector.centre_pattern")
            try:
                cmap = normalise_heatmap(_read_map(cpath, ndim, where), logits=p.logits)
                if cmap.shape != prob.shape:
                    raise ValueError(f"centre map of shape {cmap.shape}, the heatmap {path} {prob.shape}")
            except ValueError as exc:
                raise InputError(f"{where}: {cpath}: {exc}") from None
        min_distance = p.min_distance or ctx.dmin_px / 2.0
        min_diameter = p.min_diameter or ctx.dmin_px / 2.0
        picks = heatmap_picks(
            prob,
            factor=factor,
            threshold=p.threshold,
            min_distance=max(1, int(round(min_distance / factor))),
            min_diameter=min_diameter / factor,
            peaks=p.peaks,
            centre_map=cmap,
            centre_threshold=p.centre_threshold,
            check_center=p.check_center,
            centre=p.centre,
            image_shape=mic.shape,
        )
        d = picks["diameter_px"]
        df = pd.DataFrame({
            schema.X: picks["x_px"],
            schema.Y: picks["y_px"],
            schema.DIAMETER: d,
            schema.SCORE: picks["score"],
            schema.LEVEL: np.zeros(len(d), dtype=np.int64),
            schema.SIGMA: d / _DIAMETER_PER_SIGMA[ndim],
        })
        if ndim == 3:
            df[schema.Z] = picks["z_px"]
        df["size_px"] = picks["size_px"]
        return df


@hookimpl
def lipoframe_register_stages(registry):
    registry.add(HeatmapDetector)
