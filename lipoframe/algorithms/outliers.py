"""Isolated extreme pixels: the hot and dead pixels of a camera, found and replaced.

A hot pixel of a micrograph that was not denoised (or denoised badly) is
hundreds or thousands of robust standard deviations from the background; at
one pixel it rings through every scale of the detectors and into the radial
profiles of the particles around it. Nothing a micrograph shows is like that:
an ice ball or a carbon film can be far darker than the background, but over
hundreds of pixels, and a pixel at its rim is like its neighbours.
"""

from __future__ import annotations

import math

import numpy as np

from lipoframe.algorithms.stats import background_stats

#: Robust standard deviations (1.4826 MAD of the image's pixels) from the background, and from the median of the
#: pixel's neighbourhood, beyond which an isolated pixel is an outlier.
OUTLIER_SIGMAS = 20.0
#: Most pixels of a cluster of extreme pixels that is still isolated (one pixel, a pair, 2 x 2).
MAX_CLUSTER = 4
#: Half-width of the neighbourhood whose median an outlier is compared with and replaced by (5 x 5 pixels).
NEIGHBOURHOOD = 2


def _shifted(mask: np.ndarray, dr: int, dc: int) -> np.ndarray:
    """``mask`` (n, h, w) moved by ``dr`` rows and ``dc`` columns, filled with False."""
    out = np.zeros_like(mask)
    h, w = mask.shape[1:]
    out[:, max(dr, 0):h + min(dr, 0), max(dc, 0):w + min(dc, 0)] = mask[:, max(-dr, 0):h + min(-dr, 0), max(-dc, 0):w + min(-dc, 0)]
    return out


#: Pixels of the bands of rows that :func:`_candidates` looks at in turn (a quarter of a MiB for each boolean mask).
BAND_PIXELS = 1 << 18


def _candidates(img: np.ndarray, lo: float, hi: float, max_cluster: int) -> np.ndarray:
    """Flat indices, ascending, of the pixels beyond ``lo`` or ``hi`` with fewer than ``max_cluster`` 8-neighbours beyond the same bound.

    A pixel with ``max_cluster`` or more such neighbours is in a cluster of
    more than ``max_cluster`` (its cluster holds them after the first step of
    growth), so it is never an isolated outlier: the test only spares
    :func:`isolated_outliers` the costly look at each pixel of a large
    extreme region (a zero border, an ice ball), where nearly every pixel has
    8. The image is looked at in bands of rows (:data:`BAND_PIXELS`) with
    slices, so the masks are small whatever the image's size.
    """
    ny, nx = img.shape
    step = max(1, BAND_PIXELS // nx)
    found = [np.zeros(0, np.intp)]
    for r0 in range(0, ny, step):
        r1 = min(r0 + step, ny)
        a, b = max(r0 - 1, 0), min(r1 + 1, ny)
        slab = img[a:b]  # the band with the row above and below it, where there are any
        keep = None
        for side in (slab > hi, slab < lo):
            if not side.any():
                continue
            m = np.zeros((b - a + 2, nx + 2), bool)  # a frame of False: outside the image is beyond no bound
            m[1:-1, 1:-1] = side
            o = r0 - a + 1  # the band's first row in m
            rows3 = m[o - 1:o + (r1 - r0) + 1]
            u = rows3.view(np.uint8)  # True is 1
            across = u[:, :-2] + u[:, 1:-1] + u[:, 2:]
            count = across[:-2] + across[1:-1] + across[2:]  # the 3 x 3 block, the pixel itself included
            k = m[o:o + (r1 - r0), 1:-1] & (count <= max_cluster)
            keep = k if keep is None else keep | k
        if keep is not None:
            found.append(np.flatnonzero(keep) + r0 * nx)
    return np.concatenate(found)


def isolated_outliers(
    image: np.ndarray, *, threshold: float = OUTLIER_SIGMAS, max_cluster: int = MAX_CLUSTER
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The isolated extreme pixels of a 2D image (hot or dead pixels) and what to put in their place.

    A pixel is one when all of these hold:

    * it is more than ``threshold`` robust standard deviations from the
      image's background (:func:`~lipoframe.algorithms.stats.background_stats`),
    * the pixels beyond that bound on the same side that touch it (8-connected,
      directly or through each other) are at most ``max_cluster`` with it,
    * it is more than ``threshold`` robust standard deviations from the median
      of its 5 x 5 neighbourhood less that cluster.

    So a dark ice ball or carbon film, however dark, is no outlier (its
    pixels form a large cluster, and a pixel at its rim is like the ones
    around it), and nor is a zero border. An image with NaN or infinite
    pixels has none (they are left for the caller to refuse), nor has a
    boolean image (a mask).

    Parameters
    ----------
    image : (M, N) array_like of real numbers
        Read, not modified (a memory map is read in full for its least and
        greatest value and, when one is beyond the bounds, once more in bands
        of rows, :data:`BAND_PIXELS` at a time).
    threshold : float
        Robust standard deviations (> 0).
    max_cluster : int
        Most pixels of an isolated cluster (>= 1).

    Returns
    -------
    rows, cols : ndarray of intp
        The outliers, in row-major order.
    values : ndarray of float64
        The median of each one's neighbourhood, less its cluster.

    Examples
    --------
    >>> img = np.random.default_rng(0).normal(size=(64, 64))
    >>> img[10, 20] = 1000.0
    >>> rows, cols, values = isolated_outliers(img)
    >>> rows.tolist(), cols.tolist(), bool(abs(values[0]) < 3)
    ([10], [20], True)
    """
    img = np.asarray(image)
    if img.ndim != 2:
        raise ValueError(f"image must be 2D, got shape {img.shape}")
    if not threshold > 0:
        raise ValueError(f"threshold must be > 0, got {threshold}")
    if isinstance(max_cluster, bool) or int(max_cluster) != max_cluster or max_cluster < 1:
        raise ValueError(f"max_cluster must be an integer >= 1, got {max_cluster}")
    max_cluster = int(max_cluster)
    none = np.zeros(0, np.intp), np.zeros(0, np.intp), np.zeros(0, np.float64)
    if img.dtype.kind not in "iuf" or img.size == 0:  # a boolean image (a mask) has no hot pixels
        return none
    level, spread = background_stats(img)
    lo, hi = level - threshold * spread, level + threshold * spread
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return none
    # An ordinary micrograph stops here: nothing is that far from its background. One with NaN or infinite
    # pixels too: they are no camera's defect to hide, and the runner refuses the micrograph, saying where they are.
    least, greatest = float(img.min()), float(img.max())
    if not (math.isfinite(least) and math.isfinite(greatest)) or not (least < lo or greatest > hi):
        return none
    ny, nx = img.shape
    # Inside a large dark (or bright) region, or a zero border, nearly every neighbour is as extreme: those pixels
    # are dropped here, band by band, before any costly look at a pixel's window.
    rows, cols = np.divmod(_candidates(img, lo, hi, max_cluster), nx)
    high = img[rows, cols] > hi

    def beyond(r: np.ndarray, c: np.ndarray, side: np.ndarray) -> np.ndarray:
        """Whether pixels (r, c), inside the image, are beyond the bound on ``side`` (True: above ``hi``)."""
        inside = (r >= 0) & (r < ny) & (c >= 0) & (c < nx)
        v = img[np.clip(r, 0, ny - 1), np.clip(c, 0, nx - 1)]
        return inside & np.where(side, v > hi, v < lo)

    if not rows.size:
        return none
    # The cluster of each: grown from the pixel through the extreme pixels of its side, max_cluster steps at most.
    k = max(max_cluster, NEIGHBOURHOOD)  # half-width of the window looked at
    d = np.arange(-k, k + 1)
    wr, wc = rows[:, None, None] + d[None, :, None], cols[:, None, None] + d[None, None, :]
    extreme = beyond(wr, wc, high[:, None, None])
    cluster = np.zeros_like(extreme)
    cluster[:, k, k] = True
    for _ in range(max_cluster):
        grown = cluster.copy()
        for dr in (-1, 0, 1):
            for dc in (-1, 0, 1):
                if dr or dc:
                    grown |= _shifted(cluster, dr, dc)
        cluster = grown & extreme
    small = cluster.reshape(len(rows), -1).sum(axis=1) <= max_cluster
    # Its neighbourhood less the cluster: an outlier stands far from it too (a pixel at an ice ball's rim does not).
    h = NEIGHBOURHOOD
    near = slice(k - h, k + h + 1)
    nr, nc = np.broadcast_arrays(wr[:, near], wc[:, :, near])
    values = img[np.clip(nr, 0, ny - 1), np.clip(nc, 0, nx - 1)].astype(np.float64)
    values[(nr < 0) | (nr >= ny) | (nc < 0) | (nc >= nx) | cluster[:, near, near]] = np.nan
    values = values.reshape(len(rows), -1)
    usable = small & (np.isfinite(values).sum(axis=1) > 0)
    local = np.full(len(rows), np.nan)
    if usable.any():
        local[usable] = np.nanmedian(values[usable], axis=1)
    centre = img[rows, cols].astype(np.float64)
    out = usable & (np.abs(centre - local) > threshold * spread)
    return rows[out], cols[out], local[out]


def replace_isolated_outliers(
    image: np.ndarray, *, threshold: float = OUTLIER_SIGMAS, max_cluster: int = MAX_CLUSTER
) -> tuple[np.ndarray, int]:
    """``image`` with its :func:`isolated_outliers` replaced by the median of their neighbourhoods.

    Parameters
    ----------
    image : (M, N) array_like of real numbers
        Not modified.
    threshold, max_cluster
        As for :func:`isolated_outliers`.

    Returns
    -------
    out : ndarray
        ``image`` itself (the same object) when it has no outliers; else a
        copy of the same dtype (integer values rounded) with them replaced.
    count : int
        Pixels replaced.
    """
    rows, cols, values = isolated_outliers(image, threshold=threshold, max_cluster=max_cluster)
    if not rows.size:
        return image, 0
    out = np.array(image, copy=True)
    if out.dtype.kind in "biu":
        info = np.iinfo(out.dtype)
        values = np.clip(np.rint(values), info.min, info.max)
    out[rows, cols] = values
    return out, int(rows.size)
