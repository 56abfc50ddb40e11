"""Block averaging and the coordinate mapping between pyramid levels."""

from __future__ import annotations

import math

import numpy as np


def block_mean(image: np.ndarray, factor: int, *, offset: float = 0.0) -> np.ndarray:
    """Average non-overlapping ``factor``-sized blocks of an image or volume.

    Parameters
    ----------
    image : (M, N) or (P, M, N) ndarray
        Any real dtype, including a read-only memory map; it is read once,
        in row chunks, and never copied whole.
    factor : int
        Block edge length (>= 1). Trailing rows/columns that do not fill a
        whole block are dropped.
    offset : float
        Subtracted from every pixel before the float32 sums: with the
        image's typical level, a large constant level (integer counts, an
        offset detector) does not eat float32's precision. The difference
        is each pixel's exact difference rounded to float32: worked out in
        float32 when the pixels and ``offset`` are float32 numbers (a
        float32, float16 or 8- and 16-bit integer image and a level from
        :func:`typical_level`), which IEEE subtraction rounds correctly,
        and in float64 otherwise (three times slower).

    Returns
    -------
    out : ndarray of float32
        Shape ``image.shape // factor``. Element ``i`` along an axis covers
        input indices ``[i * factor, (i + 1) * factor)``, so its centre lies
        at input coordinate ``(i + 0.5) * factor - 0.5`` (see
        :func:`to_full_resolution`).

    Notes
    -----
    A factor ``m * 2**k`` (``m`` odd) is averaged as the ``m``-sized blocks'
    means halved ``k`` times (2 x 2 blocks, or 2 x 2 x 2), in float32: so
    ``block_mean(block_mean(a, g), factor // g)`` is ``block_mean(a, factor)``
    bit for bit when ``factor // g`` is a power of two (for ``g = 1`` and
    any ``factor`` too). A level binned from a finer one is then the same
    as one binned from the image, whichever was binned first.

    Examples
    --------
    >>> block_mean(np.arange(16, dtype=np.float32).reshape(4, 4), 2)
    array([[ 2.5,  4.5],
           [10.5, 12.5]], dtype=float32)
    """
    factor = check_factor(factor)
    if image.ndim not in (2, 3):
        raise ValueError(f"image must be 2D or 3D, got {image.ndim}D")
    if factor == 1:
        if offset:
            return _minus(image, offset)
        return np.array(image, dtype=np.float32, copy=True)
    out_shape = tuple(s // factor for s in image.shape)
    if min(out_shape) < 1:
        raise ValueError(f"image of shape {image.shape} is smaller than one block of {factor}")
    odd, halvings = factor, 0
    while odd % 2 == 0:
        odd, halvings = odd // 2, halvings + 1
    if image.ndim == 3:
        return np.stack([_plane_mean(image, odd, halvings, p, offset) for p in range(out_shape[0])])
    mb, nb = out_shape
    out = np.empty((mb, nb), dtype=np.float32)
    # Process bands of rows so a memory-mapped file is streamed, and float16 or
    # integer inputs are widened one band at a time. Bands of ~2**20 input
    # pixels (4 MiB of float32) stay in the CPU cache for the strided adds.
    band = max(1, (1 << 20) // max(1, nb * factor * factor))
    for r0 in range(0, mb, band):
        r1 = min(mb, r0 + band)
        block = image[r0 * factor : r1 * factor, : nb * factor]
        block = _minus(block, offset) if offset else np.asarray(block, dtype=np.float32)
        if odd > 1:
            block = _sum_blocks(block, odd)
            block *= np.float32(1.0 / (odd * odd))
        for _ in range(halvings):
            block = _sum_blocks(block, 2)
            block *= np.float32(0.25)
        out[r0:r1] = block
    return out


#: Pixel types whose every value is a float32 number.
_FLOAT32_EXACT = (np.float32, np.float16, np.int8, np.uint8, np.int16, np.uint16, np.bool_)


def _minus(a: np.ndarray, offset: float) -> np.ndarray:
    """``a - offset`` as float32, each value the exact difference rounded once (a new array)."""
    if a.dtype.type in _FLOAT32_EXACT and float(np.float32(offset)) == offset:
        return np.subtract(a, np.float32(offset), dtype=np.float32)
    return np.subtract(a, offset, dtype=np.float64).astype(np.float32)


def _sum_blocks(a: np.ndarray, f: int) -> np.ndarray:
    """Sums of the ``f`` x ``f`` blocks (``f >= 2``) of a 2-D float32 array whose sides are multiples of ``f`` (a new array)."""
    # Adding the `f` strided slices is ~4x faster than a reshape-sum over a
    # short inner axis (numpy vectorises the elementwise adds). The first two
    # are added into a new array rather than copied and then added to: the
    # same sums, one pass fewer over the data (a 4096² image binned by 4 in
    # 10 ms instead of 20).
    cols = np.add(a[:, 0::f], a[:, 1::f])
    for j in range(2, f):
        cols += a[:, j::f]
    rows = np.add(cols[0::f], cols[1::f])
    for i in range(2, f):
        rows += cols[i::f]
    return rows


def _plane_mean(volume: np.ndarray, odd: int, halvings: int, p: int, offset: float) -> np.ndarray:
    """Plane ``p`` of :func:`block_mean` of a volume by ``odd * 2**halvings``,
    reading only the planes it covers: the mean of ``odd`` planes binned by
    ``odd``, then of two such planes of the level below, ``halvings`` times."""
    if halvings == 0:
        total = block_mean(volume[p * odd], odd, offset=offset)
        for q in range(1, odd):
            total += block_mean(volume[p * odd + q], odd, offset=offset)
        return total * np.float32(1.0 / odd) if odd > 1 else total
    pair = _plane_mean(volume, odd, halvings - 1, 2 * p, offset)
    pair += _plane_mean(volume, odd, halvings - 1, 2 * p + 1, offset)
    ny, nx = (s // 2 for s in pair.shape)
    out = _sum_blocks(pair[: 2 * ny, : 2 * nx], 2)
    out *= np.float32(0.125)
    return out


def check_factor(factor) -> int:
    """A binning factor as an int: 2 or 2.0 give 2.

    Raises
    ------
    ValueError
        Naming ``factor`` as given unless it is a whole number >= 1 (2.5 is
        refused, not read as 2).
    """
    try:
        whole = int(factor)
        exact = whole == factor
    except (TypeError, ValueError, OverflowError):
        whole, exact = 0, False
    if not exact or whole < 1:
        raise ValueError(f"factor must be a whole number >= 1, got {factor!r}")
    return whole


def typical_level(image: np.ndarray, *, samples: int = 1 << 16) -> float:
    """The median of about ``samples`` pixels of ``image`` on a regular grid, rounded to a float32 number.

    A level to subtract before float32 arithmetic (see :func:`block_mean`,
    which subtracts a float32 level from float32 pixels in float32, three
    times faster than in float64); reads only the sampled rows of a
    memory-mapped file. 0.0 for an image whose sampled pixels are not all
    finite (the runner reports those).
    """
    steps = [max(1, int(round((np.prod(image.shape) / samples) ** (1.0 / image.ndim))))] * image.ndim
    sample = np.asarray(image[tuple(slice(None, None, s) for s in steps)], dtype=np.float64)
    level = float(np.float32(np.median(sample))) if sample.size else 0.0
    return level if math.isfinite(level) else 0.0


def pow2_floor(x: float) -> int:
    """Largest power of two <= ``x`` (1 for ``x < 2``).

    Stages choose binning factors as powers of two so that every coarser level
    can be averaged from a finer one instead of from the full-size file.
    """
    return 1 << max(0, int(math.floor(math.log2(x)))) if x >= 2 else 1


def to_full_resolution(coord, factor: int):
    """Map a coordinate on a ``factor``-binned grid to the full-resolution grid.

    Block ``i`` covers full-resolution pixels ``i*factor ... (i+1)*factor-1``,
    whose centre is ``(i + 0.5) * factor - 0.5``. Mapping with ``i * factor``
    instead would shift every pick by ``(factor - 1) / 2`` pixels.
    """
    return (np.asarray(coord, dtype=float) + 0.5) * factor - 0.5


def to_binned(coord, factor: int):
    """Inverse of :func:`to_full_resolution`."""
    return (np.asarray(coord, dtype=float) + 0.5) / factor - 0.5
