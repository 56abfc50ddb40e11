"""Peeling: a micrograph with the particles already found replaced by background.

In a crowded field a faint particle touching strong ones is hidden twice:
its neighbours' darkness fills the outside of its edge, so the edge the
detector measures is weaker, and the particles inflate the noise level the
detector measures its scores against. Replacing the particles already
accepted by background and detecting again removes both, as CLEAN removes
the sources it has found from a radio image before it looks for fainter
ones (Högbom 1974).

References
----------
.. [1] J. A. Högbom, "Aperture synthesis with a non-regular distribution of
   interferometer baselines", Astron. Astrophys. Suppl. 15, 417-426 (1974).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def disc_mask(shape: tuple[int, int], rows: np.ndarray, cols: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Pixels whose centre lies within any of the discs.

    Parameters
    ----------
    shape : (int, int)
        Image shape (rows, columns).
    rows, cols, radii : (K,) array_like
        Disc centres and radii, pixels.

    Returns
    -------
    mask : (M, N) ndarray of bool
    """
    m, n = shape
    rows, cols, radii = (np.asarray(v, dtype=float) for v in (rows, cols, radii))
    if not rows.ndim == cols.ndim == radii.ndim == 1 or not len(rows) == len(cols) == len(radii):
        raise ValueError(f"rows, cols and radii must be 1D of one length, got shapes {rows.shape}, {cols.shape} and {radii.shape}")
    mask = np.zeros((m, n), dtype=bool)
    for r, c, rad in zip(rows, cols, radii):
        r0, r1 = max(0, int(np.floor(r - rad))), min(m, int(np.ceil(r + rad)) + 1)
        c0, c1 = max(0, int(np.floor(c - rad))), min(n, int(np.ceil(c + rad)) + 1)
        if r0 >= r1 or c0 >= c1:
            continue
        yy, xx = np.ogrid[r0:r1, c0:c1]
        mask[r0:r1, c0:c1] |= (yy - r) ** 2 + (xx - c) ** 2 <= rad * rad
    return mask


def replace_discs(
    image: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    radii: np.ndarray,
    *,
    smooth: float | None = None,
    seed: int = 0,
    max_offsets: int = 200,
) -> np.ndarray:
    """Replace discs of an image by background that looks like the rest of it.

    Inside the discs the image becomes a smooth background estimate plus
    the image's own residual texture (image minus background) copied from
    outside the discs, so the noise keeps its level and its correlation and
    the detector's noise estimate is not lowered by flat patches.

    Parameters
    ----------
    image : (M, N) ndarray
    rows, cols, radii : (K,) array_like
        Disc centres and radii, pixels of ``image``.
    smooth : float, optional
        Standard deviation (pixels) of the Gaussian of the background
        estimate; default: the median diameter (at least 4), so the
        background does not follow structure of the particles' size.
    seed : int
        Seed of the offsets the texture is copied from.
    max_offsets : int
        Offsets tried; pixels still without texture after them get the
        background alone.

    Returns
    -------
    out : (M, N) ndarray of float32
        ``image`` outside the discs, unchanged; background inside.

    Notes
    -----
    The background is a normalised convolution: ``G * (image w) / G * w``
    with ``w`` zero inside the discs, so the particles do not darken it
    (computed on a grid binned to about a quarter of ``smooth`` and
    interpolated back: it is smooth on that scale).
    The texture of a disc pixel ``p`` is the residual at ``p + o`` (wrapped
    around the image) for the first of a seeded sequence of offsets ``o``
    that lands outside every disc; neighbouring pixels mostly share an
    offset, so the copied texture is contiguous except at seams.
    """
    img = np.asarray(image, dtype=np.float32)
    if img.ndim != 2:
        raise ValueError(f"image must be 2D, got shape {img.shape}")
    radii = np.asarray(radii, dtype=float)
    if np.any(radii < 0):
        raise ValueError("radii must be >= 0")
    if max_offsets < 1:
        raise ValueError(f"max_offsets must be >= 1, got {max_offsets}")
    inside = disc_mask(img.shape, rows, cols, radii)
    if not inside.any() or inside.all():
        return img.copy()
    if smooth is None:
        smooth = max(2.0 * float(np.median(radii)), 4.0)
    if not smooth > 0:
        raise ValueError(f"smooth must be > 0, got {smooth}")
    background = _smooth_background(img, ~inside, smooth)
    residual = img - background
    out = img.copy()
    m, n = img.shape
    ys, xs = np.nonzero(inside)
    out[ys, xs] = background[ys, xs]
    rng = np.random.default_rng(seed)
    for _ in range(max_offsets):
        if not len(ys):
            break
        dy, dx = int(rng.integers(m)), int(rng.integers(n))
        y2, x2 = (ys + dy) % m, (xs + dx) % n
        ok = ~inside[y2, x2]
        out[ys[ok], xs[ok]] += residual[y2[ok], x2[ok]]
        ys, xs = ys[~ok], xs[~ok]
    return out


def _smooth_background(image: np.ndarray, weight: np.ndarray, smooth: float) -> np.ndarray:
    """Normalised convolution ``G * (image w) / G * w`` (Gaussian ``smooth``), on a coarse grid.

    The image and the weights are block-summed by ``b ~ smooth / 4`` (the
    last partial blocks included), filtered with ``smooth / b`` and
    interpolated back to every pixel (linear, block centres).
    """
    m, n = image.shape
    b = max(1, int(smooth // 4))
    w = weight.astype(np.float32)
    if b == 1:
        num, den = ndi.gaussian_filter(image * w, smooth), ndi.gaussian_filter(w, smooth)
        return num / np.maximum(den, 1e-6)
    mb, nb = -(-m // b), -(-n // b)
    pad = ((0, mb * b - m), (0, nb * b - n))
    iw = np.pad(image * w, pad).reshape(mb, b, nb, b).sum(axis=(1, 3))
    ws = np.pad(w, pad).reshape(mb, b, nb, b).sum(axis=(1, 3))
    coarse = ndi.gaussian_filter(iw, smooth / b) / np.maximum(ndi.gaussian_filter(ws, smooth / b), 1e-6)
    # Block i covers pixels i*b .. i*b+b-1: its centre is at (i + 0.5) b - 0.5.
    rows = np.clip((np.arange(m) + 0.5) / b - 0.5, 0, mb - 1)
    cols = np.clip((np.arange(n) + 0.5) / b - 0.5, 0, nb - 1)
    return ndi.map_coordinates(coarse, np.meshgrid(rows, cols, indexing="ij"), order=1, mode="nearest").astype(np.float32)
