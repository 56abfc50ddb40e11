"""Small statistics helpers."""

from __future__ import annotations

import math

import numpy as np


def median(a) -> np.floating:
    """Median of all elements of ``a``: the same value and type as :func:`numpy.median`.

    NumPy partitions around two positions for an even count, which falls back
    from its vectorised selection to a slower one; here the array is
    partitioned around the upper middle only (:func:`median_rows` on one row;
    about 1.6x faster on a 512² float32 image).

    Parameters
    ----------
    a : array_like
        Any shape; read, not modified. Other than floating-point input is
        left to :func:`numpy.median`.

    Returns
    -------
    median : NumPy scalar
        NaN if ``a`` contains NaN (as :func:`numpy.median`).

    Examples
    --------
    >>> median(np.array([[4.0, 1.0], [3.0, 2.0]]))
    np.float64(2.5)
    """
    x = np.asarray(a).reshape(1, -1)
    if x.size == 0 or x.dtype.kind != "f":
        return np.median(a)
    return median_rows(x)[0]


def median_rows(a: np.ndarray) -> np.ndarray:
    """Median of each row of a 2D float array: the values of ``numpy.median(a, axis=1)``.

    One partition around the upper middle of every row; for an even row
    length the lower middle is the largest value below it. About 5x faster
    than :func:`numpy.median` with ``axis=1`` on the tile arrays of the noise
    estimate, with identical results.

    Parameters
    ----------
    a : (R, C) ndarray of float, C >= 1
        Read, not modified. Rows with NaN give NaN (as NumPy).

    Returns
    -------
    medians : (R,) ndarray, dtype of ``a``
    """
    x = np.array(a, copy=True)
    if x.ndim != 2 or x.shape[1] == 0 or x.dtype.kind != "f":
        raise ValueError(f"a must be a 2D float array with at least one column, got shape {x.shape} and dtype {x.dtype}")
    if np.isnan(x).any():
        return np.median(a, axis=1)
    h = x.shape[1] // 2
    x.partition(h, axis=1)
    upper = x[:, h]
    if x.shape[1] % 2:
        return upper.copy()
    return (x[:, :h].max(axis=1) + upper) / x.dtype.type(2)


def parabola_offset(f_lo: np.ndarray, f0: np.ndarray, f_hi: np.ndarray) -> np.ndarray:
    """Sub-sample position of a maximum from its value and its two neighbours.

    Parameters
    ----------
    f_lo, f0, f_hi : ndarrays of one shape
        Values at -1, 0 and +1 samples.

    Returns
    -------
    offset : ndarray
        Vertex of the parabola through the three values, clipped to
        [-0.5, 0.5]; 0 where they do not curve downwards.
    """
    denom = f_lo - 2.0 * f0 + f_hi
    with np.errstate(divide="ignore", invalid="ignore"):
        off = np.where(denom < 0, 0.5 * (f_lo - f_hi) / denom, 0.0)
    return np.clip(off, -0.5, 0.5)


def background_stats(image: np.ndarray, *, samples: int = 65536) -> tuple[float, float]:
    """Robust level and spread of a 2D image: median and 1.4826 MAD of a regular subsample.

    Every ``s``-th pixel along both axes is used, with ``s`` the largest
    stride (at least 2) that leaves about ``samples`` pixels: the standard
    error of the median is then ~0.5 % of the spread, and a 1024² image
    costs no more than a 512² one.

    When more than half the pixels sampled are equal (a noise-free image,
    or an integer image whose noise is under one grey level) the MAD is 0
    and says nothing about the others: the standard deviation of the sample
    is the spread then.

    Returns
    -------
    level, spread : float
        ``spread`` is at least 1e-12 (a constant image gives no division by
        zero). Both are NaN when a sampled pixel is NaN (the runner refuses
        such a micrograph before any stage sees it).
    """
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    stride = max(2, int(math.sqrt(image.shape[0] * image.shape[1] / samples)))
    sub = np.asarray(image[::stride, ::stride], dtype=np.float64)
    med = float(median(sub))
    spread = 1.4826 * float(median(np.abs(sub - med)))
    if not spread > 0:
        spread = float(np.std(sub))
    return med, max(spread, 1e-12)
