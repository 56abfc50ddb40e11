"""The ``mask`` filter: reject picks in regions a mask marks as bad.

Carbon film, thick or crystalline ice and contamination are better told from
particles by a model made for it (MicrographCleaner [1]_, cryoSPARC's
micrograph junk detector) or by hand than by a blob picker. This filter reads
one mask per micrograph and rejects picks whose disc lies mostly in the bad
region, as MicrographCleaner does with its ``--deepThr``.

References
----------
.. [1] Sanchez-Garcia R, et al. (2020) MicrographCleaner: A python package for
   cryo-EM micrograph cleaning using deep learning. J Struct Biol 210:107498.
   doi:10.1016/j.jsb.2020.107498
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from lipoframe import schema
from lipoframe.hookspecs import hookimpl
from lipoframe.records import InputError, Micrograph, PickContext, file_stem
from lipoframe.algorithms.heatmap import scale_to_unit
from lipoframe.builtin.readers import colour_bits
from lipoframe.stages import Filter, check_finite

log = logging.getLogger("lipoframe")

#: Column of the mask filter: mean "bad" value of the mask over the pick's disc (0 clean ... 1 bad).
MASK_VALUE = "mask_value"
MISSING_POLICIES = ("error", "keep")
#: Largest relative difference of the row and column scale factors between a
#: mask and its micrograph (a mask binned by 2 from an odd size is 0.1 % off).
ASPECT_TOLERANCE = 0.02


def disc_offsets(ndim: int, *, points_per_radius: int = 8) -> np.ndarray:
    """Offsets, in radii, of a regular lattice of points inside the unit disc (ball).

    Parameters
    ----------
    ndim : {2, 3}
    points_per_radius : int
        Lattice points from the centre to the rim along an axis.

    Returns
    -------
    offsets : (K, ndim) ndarray
        (row, col) or (plane, row, col) offsets with norm <= 1, the centre first.
    """
    if ndim not in (2, 3):
        raise ValueError(f"ndim must be 2 or 3, got {ndim}")
    if points_per_radius < 1:
        raise ValueError(f"points_per_radius must be >= 1, got {points_per_radius}")
    axis = np.arange(-points_per_radius, points_per_radius + 1) / points_per_radius
    grid = np.stack(np.meshgrid(*([axis] * ndim), indexing="ij"), axis=-1).reshape(-1, ndim)
    inside = grid[np.einsum("ij,ij->i", grid, grid) <= 1.0 + 1e-9]
    order = np.argsort(np.einsum("ij,ij->i", inside, inside), kind="stable")
    return inside[order]


def mean_in_discs(mask: np.ndarray, centres: np.ndarray, radii: np.ndarray, *, scale: np.ndarray | None = None) -> np.ndarray:
    """Mean of ``mask`` over discs (balls), sampled on a lattice with linear interpolation.

    Parameters
    ----------
    mask : (M, N) or (P, M, N) ndarray
        Values to average; outside the array the nearest edge value is used.
    centres : (K, ndim) ndarray
        Disc centres as (row, col) or (plane, row, col) in the pixel frame of
        the micrograph (0-indexed pixel centres).
    radii : (K,) ndarray
        Radii in micrograph pixels.
    scale : (ndim,) ndarray, optional
        Mask pixels per micrograph pixel along each axis (a mask made on a
        binned micrograph: 0.25 for binning by 4); default 1.

    Returns
    -------
    means : (K,) ndarray of float64
    """
    mask = np.asarray(mask)
    centres = np.asarray(centres, dtype=float).reshape(-1, mask.ndim)
    radii = np.asarray(radii, dtype=float)
    if len(radii) != len(centres):
        raise ValueError(f"radii: expected {len(centres)} values (one per centre), got {len(radii)}")
    if len(centres) == 0:
        return np.zeros(0)
    scale = np.ones(mask.ndim) if scale is None else np.asarray(scale, dtype=float)
    offsets = disc_offsets(mask.ndim)
    points = centres[:, None, :] + radii[:, None, None] * offsets[None, :, :]  # (K, L, ndim)
    # Pixel centres map onto pixel centres: mask index = (index + 0.5) * scale - 0.5.
    coords = (points + 0.5) * scale - 0.5
    values = ndi.map_coordinates(np.asarray(mask, dtype=np.float32), coords.reshape(-1, mask.ndim).T, order=1, mode="nearest")
    return values.reshape(len(centres), len(offsets)).mean(axis=1).astype(float)


@dataclass
class MaskParams:
    """Reject picks in regions a per-micrograph mask marks as bad (carbon, ice, contamination).

    folder: folder holding one mask per micrograph (MRC, TIFF, PNG or .npy),
        e.g. MicrographCleaner's ``--predictedMaskDir``. Required.
    suffix: the mask of micrograph ``name.mrc`` (or ``name.tif``, ...) is
        ``folder/name`` followed by this, e.g. ``_mask.tif``.
    threshold: reject a pick whose mean mask value over its disc is above this
        (MicrographCleaner's ``--deepThr``; its masks run from 0 = clean to 1 = bad).
        Integer masks are scaled to [0, 1] (see :func:`read_mask`).
    invert: the mask marks the good region instead (1 = keep), as a hand-drawn
        selection usually does.
    missing: what a micrograph without a mask gets: ``error`` (it fails, with a
        message naming the file looked for) or ``keep`` (its picks stay, with a warning).
    """

    folder: str = ""
    suffix: str = ".mrc"
    threshold: float = 0.5
    invert: bool = False
    missing: str = "error"

    def __post_init__(self) -> None:
        check_finite(self, "filter.mask")
        if not self.folder:
            raise ValueError("filter.mask.folder must name the folder of the masks (filter.mask.folder=path/to/masks)")
        if not self.suffix or "/" in self.suffix or "\\" in self.suffix:
            raise ValueError(f"filter.mask.suffix must be the end of a file name (e.g. .mrc or _mask.tif), got {self.suffix!r}")
        if not 0 <= self.threshold <= 1:
            raise ValueError(f"filter.mask.threshold must be in [0, 1], got {self.threshold}")
        if self.missing not in MISSING_POLICIES:
            raise ValueError(f"filter.mask.missing must be one of {MISSING_POLICIES}, got {self.missing!r}")
        # A wrong folder is the run's mistake, not each micrograph's: say so once, before picking.
        if not Path(self.folder).expanduser().is_dir():
            raise ValueError(f"filter.mask.folder must be an existing folder of masks, got {self.folder!r}")


def read_mask(path: Path, *, ndim: int) -> np.ndarray:
    """The mask in ``path`` as float32 in [0, 1] (raises InputError).

    Integer masks holding only 0 and one other value (0/1, 0/255, a
    hand-drawn selection) are divided by that value; other ``uint8`` masks
    are graded 8-bit maps, 255 = 1; other integer masks are divided by their
    largest value. Colour PNG, JPEG and TIFF images (a selection drawn in an
    image editor is often saved as RGB) are read as the mean of their
    colour samples and scaled by the same rules.
    """
    from lipoframe.plugins import read_array

    data = read_array(path, dims=ndim)
    bits = colour_bits(path) if ndim == 2 and np.issubdtype(data.dtype, np.floating) else None
    if bits or np.issubdtype(data.dtype, np.integer) or data.dtype == bool:
        return scale_to_unit(data, eight_bit=data.dtype == np.uint8 or bits == 8)
    out = np.asarray(data, dtype=np.float32)
    if not np.all(np.isfinite(out)):
        raise InputError(f"{path}: mask contains NaN or infinite values")
    lo, hi = (float(out.min()), float(out.max())) if out.size else (0.0, 0.0)
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise InputError(f"{path}: a floating-point mask must hold values in [0, 1] (0 clean, 1 bad), found {lo:g} to {hi:g}")
    return out


class MaskFilter(Filter):
    name = "mask"
    Params = MaskParams
    summary = "reject picks in regions a mask per micrograph marks as bad (MicrographCleaner, hand-drawn)"
    reasons = ("mask",)

    def __init__(self, params: MaskParams | None = None) -> None:
        super().__init__(params)
        self._cached: tuple[str, int, np.ndarray] | None = None  # (path, mtime, mask): the filter runs again on retried picks

    def mask_path(self, mic: Micrograph) -> Path:
        return self._mask_file(mic.meta.path, mic.name)

    def _mask_file(self, path: str | None, name: str) -> Path:
        stem = file_stem(path) if path else name
        return Path(self.params.folder) / f"{stem}{self.params.suffix}"

    def extra_inputs(self, path: Path, name: str) -> list[Path]:
        """The mask of the micrograph in ``path`` (present or not): resume picks it again when it changes."""
        return [self._mask_file(str(path), name)]

    def _mask(self, path: Path, ndim: int) -> np.ndarray:
        key = (str(path), os.stat(path).st_mtime_ns)
        if self._cached is None or self._cached[:2] != key:
            self._cached = (*key, read_mask(path, ndim=ndim))
        return self._cached[2]

    def apply(self, picks: pd.DataFrame, mic: Micrograph, ctx: PickContext) -> pd.DataFrame:
        out = schema.with_acceptance(picks)
        path = self.mask_path(mic)
        if not path.is_file():
            if self.params.missing == "keep":
                log.warning("%s: no mask %s; its picks are kept (filter.mask.missing=keep)", mic.meta.path or mic.name, path)
                out[MASK_VALUE] = np.nan
                return out
            raise InputError(f"{mic.meta.path or mic.name}: no mask {path} (filter.mask.folder / filter.mask.suffix; "
                             "filter.mask.missing=keep keeps the picks of micrographs without one)")
        ndim = mic.image.ndim
        mask = self._mask(path, ndim)
        shape = np.asarray(mic.image.shape, dtype=float)
        scale = np.asarray(mask.shape, dtype=float) / shape
        if np.ptp(scale) > ASPECT_TOLERANCE * scale.max():
            raise InputError(f"{path}: mask of shape {mask.shape} does not fit micrograph {mic.meta.path or mic.name} "
                             f"of shape {tuple(mic.image.shape)} (different aspect ratio)")
        if self.params.invert:
            mask = 1.0 - mask
        cols = [schema.Z, schema.Y, schema.X][3 - ndim:]
        centres = out[cols].to_numpy(dtype=float)
        values = mean_in_discs(mask, centres, out[schema.DIAMETER].to_numpy(dtype=float) / 2.0, scale=scale)
        out[MASK_VALUE] = values
        return schema.reject(out, values > self.params.threshold, "mask")


@hookimpl
def lipoframe_register_stages(registry):
    registry.add(MaskFilter)
