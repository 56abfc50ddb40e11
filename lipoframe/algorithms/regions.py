"""Large dense regions with a sharp edge: carbon film, ice sheets, contamination.

A carbon film (the edge of a hole, a strip of lacey carbon) or a sheet of
thick ice is a large region of a micrograph that is denser than the ice the
particles sit in, with a sharp edge. Its grain has the particles' scale, so a
picker judging one pick at a time takes grain for particles (the cleaner the
image, the more of them). Seen as a whole, the region is plain: the level of
the micrograph, measured away from the particles, steps up across one long
edge and stays up. An ice-thickness gradient or a patchy background also
changes the level, but smoothly: what is left of the step once the level's
smooth part is taken away is small.

Functions here work on a *level map*: the micrograph averaged over square
cells with the particles left out (:func:`level_map`), in which
:func:`dense_regions` looks for such regions.
"""

from __future__ import annotations

import warnings

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu

from lipoframe.algorithms.stats import constant_pixels


def level_map(image: np.ndarray, cell: int, *, exclude: np.ndarray | None = None, min_coverage: float = 0.25) -> np.ndarray:
    """Mean level of ``image`` in square cells, leaving out excluded pixels.

    Parameters
    ----------
    image : (M, N) ndarray
    cell : int
        Cell size in pixels of ``image``; the last ``M % cell`` rows and
        ``N % cell`` columns are left out.
    exclude : (M, N) ndarray of bool, optional
        Pixels to leave out (the particles already found).
    min_coverage : float
        A cell with a smaller share of pixels left is NaN.

    Returns
    -------
    level : (M // cell, N // cell) ndarray of float64
        The median over each cell and its eight neighbours of the cells'
        means (NaN cells ignored; NaN where all nine are NaN). The median
        keeps a straight edge sharp and removes what fills one or two cells.
    """
    if cell < 1:
        raise ValueError(f"cell must be >= 1, got {cell}")
    if not 0 < min_coverage <= 1:
        raise ValueError(f"min_coverage must be in (0, 1], got {min_coverage}")
    image = np.asarray(image, dtype=np.float64)
    h, w = image.shape[0] // cell, image.shape[1] // cell
    if h == 0 or w == 0:
        return np.full((h, w), np.nan)
    part = image[: h * cell, : w * cell]
    keep = np.ones(part.shape, dtype=bool) if exclude is None else ~np.asarray(exclude, dtype=bool)[: h * cell, : w * cell]
    sums = np.where(keep, part, 0.0).reshape(h, cell, w, cell).sum(axis=(1, 3))
    counts = keep.reshape(h, cell, w, cell).sum(axis=(1, 3))
    means = np.where(counts >= min_coverage * cell * cell, sums / np.maximum(counts, 1), np.nan)
    windows = sliding_window_view(np.pad(means, 1, constant_values=np.nan), (3, 3)).reshape(h, w, 9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all nine cells NaN
        return np.nanmedian(windows, axis=2)


def constant_cells(image: np.ndarray, cell: int) -> np.ndarray:
    """Pixels of ``image`` in a constant region (zero padding, an area filled with the mean or masked out).

    :func:`~lipoframe.algorithms.stats.constant_pixels` on blocks of about
    ``cell`` pixels, the cells :func:`level_map` averages. Left out of the
    level map (``exclude``), the region's cells are NaN and those across its
    edge hold the data's level only; otherwise the edge is a step as sharp
    as a carbon film's.

    Returns
    -------
    mask : (M, N) ndarray of bool
    """
    if cell < 1:
        raise ValueError(f"cell must be >= 1, got {cell}")
    image = np.asarray(image)
    h, w = image.shape[0] // cell, image.shape[1] // cell
    if not (h and w):
        return np.zeros(image.shape, dtype=bool)
    return constant_pixels(image, h, w)


def cell_noise(level: np.ndarray) -> float:
    """Robust standard deviation of the level map's cell-to-cell variation.

    1.4826 times the median absolute deviation of the differences between
    neighbouring cells (rows and columns), divided by sqrt(2): the spread of
    one cell's level about its neighbours', which an edge affects only along
    its length.

    When more than half the differences are equal (a noise-free image, or
    one quantised so coarsely that most neighbouring cells have the same
    level) the MAD is 0 and says nothing about the rest: the standard
    deviation of the differences is used instead. 0 only for a map without
    any variation (or without two finite neighbours).
    """
    diffs = np.concatenate([np.diff(level, axis=0).ravel(), np.diff(level, axis=1).ravel()])
    diffs = diffs[np.isfinite(diffs)]
    if len(diffs) == 0:
        return 0.0
    spread = 1.4826 * np.median(np.abs(diffs - np.median(diffs)))
    if not spread > 0:
        spread = np.std(diffs)
    return float(spread / np.sqrt(2.0))


def smooth_nan(level: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing that ignores NaN cells (normalised convolution).

    Parameters
    ----------
    level : (H, W) ndarray
    sigma : float
        Standard deviation of the Gaussian, in cells.

    Returns
    -------
    smoothed : (H, W) ndarray
        NaN only where no finite cell is within reach.
    """
    finite = np.isfinite(level)
    values = ndi.gaussian_filter(np.where(finite, level, 0.0), sigma, mode="nearest")
    weights = ndi.gaussian_filter(finite.astype(np.float64), sigma, mode="nearest")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(weights > 1e-6, values / weights, np.nan)


def _across(values: np.ndarray, inner: np.ndarray, outer: np.ndarray) -> float:
    """Median of ``values`` over ``inner`` minus that over ``outer`` (NaN with fewer than 5 finite cells on a side)."""
    a, b = values[inner], values[outer]
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if len(a) < 5 or len(b) < 5:
        return np.nan
    return float(np.median(a) - np.median(b))


def dense_regions(
    level: np.ndarray,
    *,
    min_cells: float,
    min_step: float = 5.0,
    min_sharpness: float = 0.35,
    smooth: float = 3.0,
    band: float = 2.0,
    clearance: float = 2.0,
    max_rounds: int = 4,
    levels: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95),
) -> tuple[np.ndarray, list[dict]]:
    """Find large regions of a level map that are denser than the rest, behind a sharp edge.

    Each round splits the cells not yet assigned in two by Otsu's threshold
    [1]_ and judges every connected part of the upper class of at least
    ``min_cells`` cells by the level across its boundary, in the ``band``
    cells on either side:

    * ``step``: the median level inside minus the median level outside;
    * ``edge``: the same for the level minus its Gaussian smoothing over
      ``smooth`` cells. Smoothing keeps a linear gradient exactly and a
      gently curved background nearly so, which leave no edge; a step keeps
      about half of its height.

    Cells within ``2 * smooth`` of the map's border are left out of the
    bands: the smoothing is one-sided there, and a gradient towards the
    border would leave an edge of its own. So are cells within
    ``clearance`` of a NaN cell (the particles left out of the map): a
    particle's fringe (the bright Fresnel or CTF halo around it) changes the
    level just beyond its disc, and in a crowded field the gaps between the
    particles, away from their fringes, are then denser than the cells
    beside them, with a step as sharp as a film's. A part is a region when its
    ``edge`` is at least ``min_step`` times the
    map's cell-to-cell noise (:func:`cell_noise`) and at least
    ``min_sharpness`` of its ``step`` (a smooth background seen without
    noise gives a small share, 0.1-0.2), but not more than the ``step``:
    a step keeps less than its height (the films of the simulated suites
    0.6-0.8 of it), and an ``edge`` above the ``step`` comes from the
    smoothing of something far denser beside the boundary (a small ice
    contamination on the rim of a faint patch), not from the part's own
    level. The next round leaves the regions
    (and two cells around them) out, so that a carbon film beside a far
    denser ice contamination is found in the round after the ice; it
    measures edges only farther than ``2 * smooth`` from them, beyond the
    reach of the smoothing, which spreads the ice over the cells around it
    and hides a film edge the ice lies across. When
    Otsu's split finds no region, the cells are split again at each of
    ``levels`` (quantiles of the cells' levels) and, of the parts that pass
    and run along the map's border, the one with the strongest edge is the
    round's region: a low-frequency background (brighter illumination or
    thinner ice on one side) puts Otsu's threshold across the background's
    slope, and a film in the bright corner is then only a part of the upper
    class, whose boundary is mostly not the film's edge. A film's edge
    crosses the field, so the film runs along the border at least as far
    as the straight side of a half-disc of ``min_cells``; a cluster of
    large particles inside the field, or a small contamination near the
    border with the cells that connect it to the border, which these extra
    splits can isolate too, does not. The rounds stop when none is found.

    Parameters
    ----------
    level : (H, W) ndarray
        Level map, denser = higher (:func:`level_map` of a polarity-corrected
        image); NaN cells are ignored.
    min_cells : float
        Smallest region, in cells.
    min_step : float
        Smallest edge, in units of the cell-to-cell noise.
    min_sharpness : float
        Smallest ratio of edge to step, in (0, 1].
    smooth : float
        Gaussian smoothing, cells.
    band : float
        Width of the bands on either side of the boundary, cells.
    clearance : float
        Cells closer than this to a NaN cell are left out of the bands;
        0 keeps them.
    max_rounds : int
    levels : tuple of float
        Quantiles in (0, 1) of the cells' levels tried when Otsu's
        threshold finds no region (for regions along the border);
        ``()`` keeps Otsu's threshold only.

    Returns
    -------
    regions : (H, W) ndarray of bool
    found : list of dict
        One entry per region: ``round``, ``cells``, ``edge`` (in cell
        noise), ``sharpness`` (edge / step) and ``split`` (``"otsu"`` or
        the quantile the region was found at).

    References
    ----------
    .. [1] N. Otsu, "A threshold selection method from gray-level
       histograms", IEEE Trans. Syst. Man Cybern. 9, 62-66 (1979).
    """
    if min_cells <= 0:
        raise ValueError(f"min_cells must be > 0, got {min_cells}")
    if min_step <= 0:
        raise ValueError(f"min_step must be > 0, got {min_step}")
    if not 0 < min_sharpness <= 1:
        raise ValueError(f"min_sharpness must be in (0, 1], got {min_sharpness}")
    if smooth <= 0:
        raise ValueError(f"smooth must be > 0, got {smooth}")
    if band < 1:
        raise ValueError(f"band must be >= 1, got {band}")
    if clearance < 0:
        raise ValueError(f"clearance must be >= 0, got {clearance}")
    if any(not 0 < q < 1 for q in levels):
        raise ValueError(f"levels must be quantiles in (0, 1), got {levels}")
    level = np.asarray(level, dtype=np.float64)
    valid = np.isfinite(level)
    noise = cell_noise(level)
    scale = noise if noise > 0 else np.finfo(float).tiny
    high = level - smooth_nan(level, smooth)
    # The smoothing is one-sided near the map's border, where a gradient
    # would leave an edge of its own: the bands leave those cells out.
    margin = int(np.ceil(2 * smooth))
    interior = np.zeros(level.shape, dtype=bool)
    interior[margin:-margin or None, margin:-margin or None] = True
    if clearance > 0 and not valid.all():
        interior &= ndi.distance_transform_edt(valid) > clearance

    def passing(todo: np.ndarray, t: float, split, measured: np.ndarray) -> list[tuple[float, np.ndarray, dict]]:
        """The parts of ``todo`` above ``t`` that are regions: (edge, part, description)."""
        upper, lower = todo & (level > t), todo & (level <= t)
        labels, n = ndi.label(upper)
        sizes = np.bincount(labels.ravel(), minlength=n + 1)
        out = []
        for k in np.flatnonzero(sizes[1:] >= min_cells) + 1:
            part = labels == k
            inner = measured & part & (ndi.distance_transform_edt(part) <= band)
            outer = measured & lower & (ndi.distance_transform_edt(~part) <= band)
            step = _across(level, inner, outer)
            edge = _across(high, inner, outer)
            if edge >= min_step * scale and min_sharpness * step <= edge <= step:
                out.append((edge, part, {"cells": int(part.sum()), "edge": round(edge / scale, 1),
                                         "sharpness": round(edge / step, 2), "split": split}))
        return out

    rim = np.ones(level.shape, dtype=bool)  # the map's outermost cells
    rim[1:-1, 1:-1] = False
    reach = 2.0 * np.sqrt(2.0 * min_cells / np.pi)  # the straight side of a half-disc of min_cells
    regions = np.zeros(level.shape, dtype=bool)
    found: list[dict] = []
    for rnd in range(max_rounds):
        todo = valid & ~ndi.binary_dilation(regions, iterations=2)
        values = level[todo]
        if len(values) < 2 * min_cells or np.ptp(values) == 0:
            break
        # The smoothing spreads a region set aside (a far denser ice
        # contamination) over the cells around it: the next rounds measure
        # edges farther from it than that.
        measured = interior & (ndi.distance_transform_edt(~regions) > margin) if regions.any() else interior
        new = passing(todo, threshold_otsu(values), "otsu", measured)
        if not new:
            tried = [r for q in levels for r in passing(todo, float(np.quantile(values, q)), q, measured) if (r[1] & rim).sum() >= reach]
            new = [max(tried, key=lambda r: r[0])] if tried else []
        if not new:
            break
        for _, part, info in new:
            regions |= part
            found.append({"round": rnd, **info})
    return regions, found
