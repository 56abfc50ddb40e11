"""lipoframe-example: a threshold + connected-components detector.

This module is a complete lipoframe plugin (see ``docs/plugins.md``). The
distribution's ``pyproject.toml`` declares it in the entry-point group
``lipoframe``; lipoframe imports it and calls :func:`lipoframe_register_stages`,
exactly as it does for its own built-in stages.

The detector ``threshold`` suits clean, well-separated particles: each
connected bright region (after polarity correction) is one particle, whose
centre is the region's centroid and whose diameter is the diameter of the disc
of equal area. It needs no scale space, so it is very fast, and it measures
non-round particles by their area. Touching particles merge into one region:
use ``dog``/``log`` for crowded micrographs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from lipoframe import hookimpl
from lipoframe.stages import Detector

__version__ = "0.1.0"

#: Diameter of a Gaussian blob per sigma (lipoframe's convention, for ``sigma_px``).
DIAMETER_PER_SIGMA = 2.0 * math.sqrt(2.0)


def _key(name: str) -> str:
    return f"detector.{name}"


@dataclass
class ThresholdParams:
    """Parameters of the ``threshold`` detector (all keys are ``detector.<name>``).

    threshold: a region must reach median + threshold * robust sigma (1.4826 MAD).
    low_threshold: a region extends down to median + low_threshold * robust sigma
        (hysteresis; lower values put the edge closer to the true rim).
    binned_dmin_px: the image is block-averaged so that dmin spans about this
        many binned pixels (more = more exact diameters, slower).
    smooth_px: Gaussian smoothing (binned pixels) before thresholding; 0 = none.
    background: remove a background smoothed with sigma = background * dmax;
        0 = subtract only the median.
    fill_holes: fill enclosed holes, so a vesicle's bright rim becomes a disc.
    min_size: drop regions whose diameter is below min_size * dmin (noise specks).
    """

    threshold: float = field(default=5.0, metadata={"help": "seed level, robust sigmas above the median"})
    low_threshold: float = field(default=1.5, metadata={"help": "extent level, robust sigmas above the median"})
    binned_dmin_px: float = field(default=24.0, metadata={"help": "binned pixels across the smallest diameter"})
    smooth_px: float = field(default=0.0, metadata={"help": "Gaussian sigma before thresholding, binned px"})
    background: float = field(default=2.0, metadata={"help": "background sigma in units of dmax; 0 = median only"})
    fill_holes: bool = field(default=True, metadata={"help": "fill holes (vesicle rims become discs)"})
    min_size: float = field(default=0.3, metadata={"help": "drop regions smaller than min_size * dmin"})

    def __post_init__(self) -> None:
        if not self.threshold > 0:
            raise ValueError(f"{_key('threshold')} must be > 0, got {self.threshold}")
        if not 0 <= self.low_threshold <= self.threshold:
            raise ValueError(
                f"{_key('low_threshold')} must be in [0, detector.threshold={self.threshold}], got {self.low_threshold}"
            )
        if not self.binned_dmin_px >= 4:
            raise ValueError(f"{_key('binned_dmin_px')} must be >= 4, got {self.binned_dmin_px}")
        if not self.smooth_px >= 0:
            raise ValueError(f"{_key('smooth_px')} must be >= 0, got {self.smooth_px}")
        if not self.background >= 0:
            raise ValueError(f"{_key('background')} must be >= 0, got {self.background}")
        if not 0 <= self.min_size < 1:
            raise ValueError(f"{_key('min_size')} must be in [0, 1), got {self.min_size}")


def _smooth_background(img: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian background of ``img`` (sigma in pixels), computed on a coarse grid.

    The image is block-averaged by ``c ~ sigma / 4`` first, so the cost does not
    grow with sigma; the smooth result is interpolated back (linear) with the
    block-centre mapping ``coarse = (i + 0.5) / c - 0.5``.
    """
    from lipoframe.algorithms.pyramid import block_mean, to_binned

    c = max(1, min(int(sigma // 4), min(img.shape) // 4))
    coarse = ndi.gaussian_filter(block_mean(img, c), sigma / c, mode="reflect")
    rows = to_binned(np.arange(img.shape[0]), c)
    cols = to_binned(np.arange(img.shape[1]), c)
    rr, cc = np.meshgrid(rows, cols, indexing="ij")
    return ndi.map_coordinates(coarse, [rr, cc], order=1, mode="nearest").astype(np.float32)


def threshold_regions(
    img: np.ndarray,
    *,
    threshold: float,
    low_threshold: float,
    smooth_px: float = 1.0,
    background_sigma: float = 0.0,
    fill_holes: bool = True,
    min_diameter: float = 0.0,
) -> dict[str, np.ndarray]:
    """Bright connected regions of an image, by hysteresis thresholding.

    Parameters
    ----------
    img : (M, N) ndarray
        Particles bright.
    threshold, low_threshold : float
        Seed and extent levels, in robust sigmas above the median.
    smooth_px : float
        Gaussian sigma applied first (pixels); 0 for none.
    background_sigma : float
        Subtract a Gaussian background of this sigma (pixels); 0 for none.
    fill_holes : bool
        Fill enclosed holes of the mask.
    min_diameter : float
        Drop regions whose equal-area diameter (pixels) is smaller.

    Returns
    -------
    regions : dict of (K,) ndarrays
        ``row``, ``col`` (centroid, pixel-centre coordinates of ``img``),
        ``diameter`` (of the disc of equal area) and ``score`` (peak level in
        robust sigmas), ordered by decreasing score (stable).
    """
    work = np.asarray(img, dtype=np.float32)
    if smooth_px > 0:
        work = ndi.gaussian_filter(work, smooth_px)
    if background_sigma > 0:
        work = work - _smooth_background(work, background_sigma)
    med = float(np.median(work))
    sigma = 1.4826 * float(np.median(np.abs(work - med)))
    if not sigma > 0:
        sigma = float(work.std()) or 1.0
    level = (work - med) / sigma
    low = level >= low_threshold
    if fill_holes:
        low = ndi.binary_fill_holes(low)
    labels, n = ndi.label(low)
    empty = {k: np.zeros(0) for k in ("row", "col", "diameter", "score")}
    if n == 0:
        return empty
    idx = np.arange(1, n + 1)
    peak = np.asarray(ndi.maximum(level, labels, idx), dtype=float)
    flat = labels.ravel()
    area = np.bincount(flat, minlength=n + 1)[1:].astype(float)
    rows, cols = np.indices(labels.shape)
    row = np.bincount(flat, weights=rows.ravel(), minlength=n + 1)[1:] / area
    col = np.bincount(flat, weights=cols.ravel(), minlength=n + 1)[1:] / area
    diameter = 2.0 * np.sqrt(area / np.pi)
    keep = (peak >= threshold) & (diameter >= min_diameter)
    order = np.argsort(-peak[keep], kind="stable")
    return {
        "row": row[keep][order],
        "col": col[keep][order],
        "diameter": diameter[keep][order],
        "score": peak[keep][order],
    }


class ThresholdDetector(Detector):
    """Threshold + connected components on the binned micrograph."""

    name = "threshold"
    Params = ThresholdParams
    summary = "hysteresis threshold + connected components; one pick per bright region (example plugin)"

    def detect(self, mic, ctx) -> pd.DataFrame:
        from lipoframe.algorithms.pyramid import to_full_resolution

        p = self.params
        factor = max(1, int(ctx.dmin_px // p.binned_dmin_px))
        img = mic.signal(factor)  # cached, particles bright, read-only
        found = threshold_regions(
            img,
            threshold=p.threshold,
            low_threshold=p.low_threshold,
            smooth_px=p.smooth_px,
            background_sigma=p.background * ctx.dmax_px / factor,
            fill_holes=p.fill_holes,
            min_diameter=p.min_size * ctx.dmin_px / factor,
        )
        diameter = found["diameter"] * factor
        return pd.DataFrame(
            {
                # Block i of a factor-binned grid is centred on full-resolution
                # pixel (i + 0.5) * factor - 0.5 (docs/conventions.md).
                "x_px": to_full_resolution(found["col"], factor),
                "y_px": to_full_resolution(found["row"], factor),
                "diameter_px": diameter,
                "score": found["score"],
                "pyramid_level": np.zeros(len(diameter), dtype=np.int64),
                "sigma_px": diameter / DIAMETER_PER_SIGMA,
                "bin_factor": np.full(len(diameter), factor, dtype=np.int64),
            }
        )


@hookimpl
def lipoframe_register_stages(registry):
    """Add this plugin's stages (called once per process by lipoframe)."""
    registry.add(ThresholdDetector)
