"""Multi-scale blob detection (DoG / LoG) on an automatically chosen pyramid.

The detector looks for local maxima of a scale-normalised blob response in
(scale, row, col). Every scale is evaluated on a block-averaged copy of the
micrograph that is binned just enough that the Gaussian's sigma is a few
pixels there; all filtering is done with one forward FFT per pyramid level and
one inverse FFT per scale, so the cost does not grow with the particle size.

References
----------
.. [1] T. Lindeberg, "Feature detection with automatic scale selection",
       Int. J. Comput. Vis. 30 (1998) 79-116. doi:10.1023/A:1008045108935
.. [2] D. G. Lowe, "Distinctive image features from scale-invariant
       keypoints", Int. J. Comput. Vis. 60 (2004) 91-110.
       doi:10.1023/B:VISI.0000029664.99615.94
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
from scipy import fft as sfft
from scipy.special import j1

from lipoframe.algorithms.pyramid import pow2_floor
from lipoframe.algorithms.stats import constant_blocks, median, median_rows, parabola_offset

#: Response methods of :func:`blob_responses`.
METHODS = ("dog", "log", "edge")

#: diameter = DIAMETER_PER_SIGMA * sigma for a uniform disc (2D) at the LoG peak.
DIAMETER_PER_SIGMA = 2.0 * math.sqrt(2.0)


@dataclass(frozen=True)
class PyramidLevel:
    """One level of the detection pyramid.

    Attributes
    ----------
    factor : int
        Block-averaging factor of this level (1 = full resolution).
    sigmas : (S,) ndarray
        Full-resolution sigmas of the responses this level *reports*.
    pad_sigmas : (S + 2,) ndarray
        The same with one neighbouring scale on each side, needed to decide
        whether a response is a maximum along the scale axis.
    """

    factor: int
    sigmas: np.ndarray
    pad_sigmas: np.ndarray


def plan_levels(
    sigma_min: float,
    sigma_max: float,
    *,
    k: float = 1.1,
    min_sigma_binned: float = 3.0,
    octave_span: float = 4.0,
    max_factor: int | None = None,
) -> list[PyramidLevel]:
    """Choose pyramid levels so that every sigma is a few pixels where it is used.

    Parameters
    ----------
    sigma_min, sigma_max : float
        Full-resolution sigma range to cover (``sigma_max > sigma_min > 0``).
    k : float, optional
        Ratio between successive sigmas (> 1).
    min_sigma_binned : float, optional
        Smallest sigma, in binned pixels, that a level may use. Larger values
        bin less (slower, marginally more precise).
    octave_span : float, optional
        Ratio of the largest to the smallest sigma handled by one level.
    max_factor : int, optional
        Upper bound on the binning factor (e.g. so that a small image keeps a
        usable size).

    Returns
    -------
    levels : list of PyramidLevel
        Ordered from fine to coarse; their ``sigmas`` partition the geometric
        sequence ``sigma_min * k**i`` that covers ``[sigma_min, sigma_max]``.
    """
    if not sigma_min > 0:
        raise ValueError(f"sigma_min must be > 0, got {sigma_min}")
    if not sigma_max > sigma_min:
        raise ValueError(f"sigma_max ({sigma_max}) must be > sigma_min ({sigma_min})")
    if not k > 1:
        raise ValueError(f"k must be > 1, got {k}")
    if not min_sigma_binned > 0:
        raise ValueError(f"min_sigma_binned must be > 0, got {min_sigma_binned}")
    if not octave_span > k:
        raise ValueError(f"octave_span must be > k, got {octave_span}")
    n = int(math.ceil(math.log(sigma_max / sigma_min) / math.log(k) - 1e-9)) + 1
    all_sigmas = sigma_min * k ** np.arange(n)
    levels: list[PyramidLevel] = []
    i = 0
    while i < n:
        factor = pow2_floor(all_sigmas[i] / min_sigma_binned)
        if max_factor is not None:
            factor = max(1, min(factor, int(max_factor)))
        j = i
        while j + 1 < n and all_sigmas[j + 1] < all_sigmas[i] * octave_span:
            j += 1
        sig = all_sigmas[i : j + 1]
        pad = np.concatenate([[sig[0] / k], sig, [sig[-1] * k]])
        levels.append(PyramidLevel(factor=factor, sigmas=sig, pad_sigmas=pad))
        i = j + 1
    return levels


def _frequency_grid_sq(shape: tuple[int, int]) -> np.ndarray:
    fy = sfft.fftfreq(shape[0])[:, None]
    fx = sfft.rfftfreq(shape[1])[None, :]
    return (fy * fy + fx * fx).astype(np.float64)


#: Largest total size of the transfer functions kept by :func:`transfer_functions`.
TRANSFER_CACHE_BYTES = 64 * 2**20
_transfer_cache: OrderedDict[tuple, np.ndarray] = OrderedDict()


def _compute_transfer_functions(
    shape: tuple[int, int], sigmas: tuple[float, ...], method: str, k: float, edge_width: float
) -> np.ndarray:
    """Transfer functions of :func:`blob_responses` on an rfft2 grid of ``shape`` (no caching)."""
    # Every transfer function depends on |f| only: evaluate it on a fine 1D
    # table and interpolate onto the 2D grid (far cheaper than exp/J1 on
    # every frequency, and accurate to ~1e-6 of its peak).
    f_grid = np.sqrt(_frequency_grid_sq(shape))
    f_table = np.linspace(0.0, float(f_grid.max()) + 1e-6, 8193)
    f2t = f_table * f_table
    pos = f_grid / f_table[1]
    lo = np.minimum(pos.astype(np.intp), len(f_table) - 2)
    frac = (pos - lo).astype(np.float32)
    out = np.empty((len(sigmas), *f_grid.shape), dtype=np.float32)
    for i, s in enumerate(sigmas):
        table = transfer_of_f2(f2t, s, method=method, k=k, edge_width=edge_width).astype(np.float32)
        out[i] = table[lo] * (1 - frac) + table[lo + 1] * frac
    return out


def transfer_of_f2(f2: np.ndarray, sigma: float, *, method: str, k: float = 1.1, edge_width: float = 0.12) -> np.ndarray:
    """Transfer function of one scale as a function of the squared frequency.

    Shared by the 2D (:func:`blob_responses`, on a 1D table) and 3D
    (:func:`lipoframe.algorithms.scale_space3d.blob_responses_3d`, on the
    grid) detectors. The arithmetic follows the dtype of ``f2``.

    Parameters
    ----------
    f2 : ndarray
        Squared frequencies (cycles per pixel, squared), any shape.
    sigma : float
        Scale in pixels.
    method : {'dog', 'log', 'edge'}
        See :func:`blob_responses` (``'edge'`` is 2D only).
    k, edge_width : float
        As in :func:`blob_responses`.

    Returns
    -------
    transfer : ndarray, shape of ``f2``
    """
    two_pi2 = 2.0 * math.pi**2
    # In-place arithmetic: on a 3D grid each temporary is as large as the spectrum.
    if method == "log":
        out = np.multiply(f2, (sigma * sigma) * (4.0 * math.pi**2))
        gauss = np.multiply(f2, -two_pi2 * sigma * sigma)
        out *= np.exp(gauss, out=gauss)
        return out
    if method == "edge":
        # Mean inward flux of the gradient through a circle of radius
        # R = sqrt(2) sigma (divergence theorem: minus the integral of the
        # Laplacian over the disc, divided by the circumference), with the
        # edge blurred by a Gaussian of width edge_width * R. Transfer
        # function: 2 pi f J1(2 pi R f) exp(-2 pi^2 w^2 f^2), times R to make
        # it scale-normalised.
        radius = math.sqrt(2.0) * sigma
        w = max(edge_width * radius, 0.7)
        f = np.sqrt(f2)
        return radius * 2.0 * math.pi * f * j1(2.0 * math.pi * radius * f) * np.exp(-two_pi2 * w * w * f2)
    s0, s1 = sigma / math.sqrt(k), sigma * math.sqrt(k)
    out = np.multiply(f2, -two_pi2 * s0 * s0)
    np.exp(out, out=out)
    wide = np.multiply(f2, -two_pi2 * s1 * s1)
    out -= np.exp(wide, out=wide)
    del wide
    out /= k - 1.0
    return out


def transfer_functions(
    shape: tuple[int, int],
    sigmas,
    *,
    method: str = "dog",
    k: float = 1.1,
    edge_width: float = 0.12,
) -> np.ndarray:
    """Transfer functions of :func:`blob_responses` on the half-plane (rfft2) grid.

    They depend only on the FFT shape and the filter parameters, which are the
    same for every micrograph of a dataset, so they are kept in a
    least-recently-used cache of at most :data:`TRANSFER_CACHE_BYTES` bytes.

    Parameters
    ----------
    shape : (2,) tuple of int
        Real-space FFT shape ``(P, Q)``.
    sigmas : (S,) array_like
        Sigmas in pixels.
    method, k, edge_width
        As in :func:`blob_responses`.

    Returns
    -------
    transfer : (S, P, Q // 2 + 1) ndarray of float32
        Read-only (shared between calls).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    key = (tuple(int(s) for s in shape), tuple(float(s) for s in np.ravel(sigmas)), method, float(k), float(edge_width))
    hit = _transfer_cache.get(key)
    if hit is not None:
        _transfer_cache.move_to_end(key)
        return hit
    out = _compute_transfer_functions(*key)
    out.setflags(write=False)
    if out.nbytes <= TRANSFER_CACHE_BYTES:
        _transfer_cache[key] = out
        while sum(v.nbytes for v in _transfer_cache.values()) > TRANSFER_CACHE_BYTES:
            _transfer_cache.popitem(last=False)
    return out


def blob_responses(
    image: np.ndarray,
    sigmas: np.ndarray,
    *,
    method: str = "dog",
    k: float = 1.1,
    edge_width: float = 0.12,
    workers: int = 1,
) -> np.ndarray:
    """Scale-normalised blob responses of a 2D image, bright blobs positive.

    Parameters
    ----------
    image : (M, N) ndarray
        Image with the particles bright.
    sigmas : (S,) array_like
        Sigmas in pixels of ``image``.
    method : {'dog', 'log', 'edge'}
        ``'log'``: :math:`-\\sigma^2 \\nabla^2 G_\\sigma * I`.
        ``'edge'``: mean inward gradient flux through the circle of radius
        :math:`\\sqrt{2}\\sigma` (responds to the outer edge of discs, shells
        and vesicles alike, so a ring gives one maximum at its outer radius).
        ``'dog'``: :math:`(G_{\\sigma/\\sqrt{k}} - G_{\\sigma\\sqrt{k}}) * I / (k - 1)`,
        which approximates the same quantity [2]_.
    k : float
        Scale ratio used by the DoG.
    edge_width : float
        For ``'edge'``: width of the Gaussian that blurs the circle, as a
        fraction of its radius :math:`\\sqrt{2}\\sigma` (at least 0.7 pixel).
    workers : int
        Threads for the FFTs.

    Returns
    -------
    responses : (S, M, N) ndarray of float32

    Notes
    -----
    The image is mirror-padded by three times the largest sigma and filtered
    in the Fourier domain, so no kernel is ever built in real space. The
    transfer functions are cached (see :func:`transfer_functions`): every
    micrograph of a dataset has the same shape.
    """
    if image.ndim != 2:
        raise ValueError(f"image must be 2D, got {image.ndim}D")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    sigmas = np.asarray(sigmas, dtype=float)
    m, n = image.shape
    pad = int(math.ceil(3.0 * sigmas.max() * (math.sqrt(k) if method == "dog" else 1.0)))
    if method == "edge":
        pad = int(math.ceil(math.sqrt(2.0) * sigmas.max() * (1.0 + 3.0 * edge_width) + 2))
    pad_m = min(pad, m - 1)
    pad_n = min(pad, n - 1)
    padded = np.pad(image.astype(np.float32, copy=False), ((pad_m, pad_m), (pad_n, pad_n)), mode="symmetric")
    shape = (sfft.next_fast_len(padded.shape[0], real=True), sfft.next_fast_len(padded.shape[1], real=True))
    spectrum = sfft.rfft2(padded, s=shape, workers=workers)
    del padded
    transfer = transfer_functions(shape, sigmas, method=method, k=k, edge_width=edge_width)
    product = np.empty_like(spectrum)
    out = np.empty((len(sigmas), m, n), dtype=np.float32)
    for i in range(len(sigmas)):
        np.multiply(spectrum, transfer[i], out=product)
        resp = sfft.irfft2(product, s=shape, workers=workers)
        out[i] = resp[pad_m : pad_m + m, pad_n : pad_n + n]
    return out


def _tile_spreads(r: np.ndarray, tile: int) -> tuple[np.ndarray, int, int]:
    """1.4826 MAD of each ``tile`` x ``tile`` block of ``r`` (every third pixel).

    Returns
    -------
    spreads : (TY, TX) ndarray
    tile_rows, tile_cols : int
        The blocks' size (the image is split into whole blocks).
    """
    m, n = r.shape
    ty, tx = max(1, m // tile), max(1, n // tile)
    ty_size, tx_size = m // ty, n // tx
    tiles = r[: ty * ty_size, : tx * tx_size].reshape(ty, ty_size, tx, tx_size).transpose(0, 2, 1, 3)
    tiles = tiles.reshape(ty * tx, -1)[:, ::3]
    tile_med = median_rows(tiles)
    tile_mad = median_rows(np.abs(tiles - tile_med[:, None]))
    return 1.4826 * tile_mad.reshape(ty, tx), ty_size, tx_size


def _tile_size(sigma: float | None, tile_sigmas: float, shape: tuple[int, ...]) -> int:
    return int(max(8, round(tile_sigmas * sigma))) if sigma is not None else max(8, min(shape[-2:]) // 8)


def _measured_scales(n: int) -> list[int]:
    """The scales whose noise is measured: every third one and the last (the rest is interpolated)."""
    return sorted(set(range(0, n, 3)) | {n - 1})


def measure_tiles(
    responses: np.ndarray, sigmas: np.ndarray | None = None, *, tile_sigmas: float = 2.0, image: np.ndarray | None = None
) -> dict:
    """Tile spreads of the measured scales, shared by :func:`robust_noise` and :func:`crowding_correction`.

    Parameters
    ----------
    responses : (S, M, N) ndarray
    sigmas : (S,) ndarray, optional
    tile_sigmas : float
    image : (M, N) ndarray, optional
        The image filtered into ``responses``: its tiles that lie in a
        constant region (:func:`~lipoframe.algorithms.stats.constant_blocks`:
        zero padding, an area filled or masked out) get a NaN spread, which
        the noise estimates leave out. They hold no noise, only the tails of
        the filters; counted, they made the noise estimate fall towards zero
        once they were more than the quantile's share of the image, and every
        response looked significant.

    Returns
    -------
    tiles : dict
        Scale index -> ``(spreads, tile_rows, tile_cols)`` as returned by
        :func:`_tile_spreads`, for every third scale and the last.
    """
    out = {}
    for i in _measured_scales(responses.shape[0]):
        tile = _tile_size(None if sigmas is None else sigmas[i], tile_sigmas, responses.shape)
        spreads, ts_r, ts_c = _tile_spreads(responses[i], tile)
        if image is not None:
            spreads = np.where(constant_blocks(image, *spreads.shape), np.nan, spreads)
        out[i] = (spreads, ts_r, ts_c)
    return out


def robust_noise(
    responses: np.ndarray,
    sigmas: np.ndarray | None = None,
    *,
    tile_sigmas: float = 2.0,
    quantile: float = 0.35,
    tiles: dict | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-scale median and background noise of the responses.

    A global MAD is inflated in crowded micrographs, where particles cover most
    of the image, so the spread is measured in tiles of ``tile_sigmas * sigma``
    pixels and the ``quantile`` of the tiles' robust spreads (1.4826 MAD) is
    taken: the quieter tiles are background even when most are not. Tiles
    of a constant region (NaN spreads, :func:`measure_tiles` given the
    image) are left out.

    Parameters
    ----------
    responses : (S, M, N) ndarray
    sigmas : (S,) ndarray, optional
        Sigma of each scale in pixels of ``responses``; without it one tile
        size (1/8 of the image) is used.
    tile_sigmas : float
        Tile edge in units of sigma (at least 8 pixels).
    quantile : float
        Which tile spread to use (0.5 = the median tile).
    tiles : dict, optional
        The output of :func:`measure_tiles` with the same ``tile_sigmas``
        (computed here when not given).

    Returns
    -------
    median, scale : (S,) ndarrays
        ``scale`` is floored at a tiny fraction of the largest absolute
        response so a constant image yields no picks instead of a division by
        zero.

    See Also
    --------
    crowding_correction : the same measurement restricted to tiles away from
        candidate particles.
    """
    S = responses.shape[0]
    med = np.full(S, np.nan)
    scale = np.full(S, np.nan)
    # The noise changes smoothly with scale: measure every third scale (and the
    # last) and interpolate the rest in log-log.
    if tiles is None:
        tiles = measure_tiles(responses, sigmas, tile_sigmas=tile_sigmas)
    measured = _measured_scales(S)
    for i in measured:
        med[i] = float(median(responses[i, ::3, ::3]))
        spreads = tiles[i][0][np.isfinite(tiles[i][0])]  # not the tiles of a constant region (NaN)
        scale[i] = float(np.quantile(spreads, quantile)) if spreads.size else 0.0
    floor = 1e-6 * max(float(np.abs(responses[:, ::4, ::4]).max()), 1e-30)
    scale = np.maximum(scale, floor)
    x = np.log(np.asarray(sigmas, float)) if sigmas is not None else np.arange(S, dtype=float)
    med = np.interp(x, x[measured], med[measured])
    scale = np.exp(np.interp(x, x[measured], np.log(scale[measured])))
    return med, np.maximum(scale, floor)


def border_spread(responses: np.ndarray, reach: np.ndarray, *, min_samples: int = 64, settled: float = 1.05) -> list[np.ndarray]:
    """How much noisier each scale's response is at each distance from the image border.

    The image is mirror-padded before filtering (see :func:`blob_responses`),
    so a filter centred on or near the border sums part of the noise twice
    (it and its mirror image): the response there fluctuates up to
    :math:`\\sqrt{2}` times as much as inside, and noise maxima crowd onto
    the border. Dividing the deviations by this ratio gives every position
    the same false-alarm rate.

    Parameters
    ----------
    responses : (S, M, N) or (S, P, M, N) ndarray
        One response image (or volume) per scale.
    reach : (S,) array_like of int
        Largest distance from the border (pixels) to measure per scale.
    min_samples : int
        Distances whose frame of pixels is smaller than this are not
        measured (ratio 1).
    settled : float
        Going inwards, the first distance whose ratio is below this and all
        farther ones get ratio 1 (the excess fades monotonically; what is
        left is sampling noise of the MAD).

    Returns
    -------
    ratios : list of S (reach[s] + 1,) ndarrays
        ``ratios[s][d]``: robust spread (MAD) of scale ``s`` over the pixels
        ``d`` from one border (face, for a volume) and beyond the reach of
        the others, over its spread farther inside (every eighth row and
        column, and their mirror images); ``>= settled`` or exactly 1.
        For a filter symmetric under the mirror, about :math:`\\sqrt{2}` at
        ``d = 0``.

    Examples
    --------
    >>> from scipy import ndimage as ndi
    >>> rng = np.random.default_rng(0)
    >>> noise = ndi.gaussian_filter(rng.standard_normal((512, 512)), 2).astype(np.float32)
    >>> r = blob_responses(noise, np.array([6.0, 8.0, 10.0]), method="edge")
    >>> ratios = border_spread(r, np.array([10, 10, 10]))
    >>> bool(1.3 < ratios[1][0] < 1.6), bool(ratios[1][-1] == 1.0)
    (True, True)
    """
    return [border_ratio(plane, int(d), min_samples=min_samples, settled=settled) for plane, d in zip(responses, reach)]


def border_reach(sigmas, *, ndim: int) -> np.ndarray:
    """How far from the border (pixels) :func:`border_ratio` measures each scale.

    Half the radius a blob of scale ``sigma`` has in ``ndim`` dimensions
    (``sqrt(ndim) * sigma``), plus two pixels: the mirror's excess has
    faded well before (the ratio stops at ``settled`` anyway).
    """
    return np.ceil(0.5 * math.sqrt(ndim) * np.asarray(sigmas, dtype=float)).astype(int) + 2


def border_ratio(plane: np.ndarray, reach: int, *, min_samples: int = 64, settled: float = 1.05) -> np.ndarray:
    """:func:`border_spread` of one response image or volume (any number of dimensions).

    Returns
    -------
    ratio : (D + 1,) ndarray
        ``D = min(reach, (min(plane.shape) - 1) // 2 - 1)``, at least 0.
    """
    D = int(min(reach, (min(plane.shape) - 1) // 2 - 1))
    ratio = np.ones(max(D, 0) + 1)
    if D < 1:
        return ratio
    # Every eighth row and column, mirrored so that a flipped image gives the same sample.
    inner = plane[np.ix_(*(_mirrored_every(8, D + 1, n) for n in plane.shape))]
    if inner.size < min_samples:
        return ratio
    ref = _mad(inner.ravel())
    if not ref > 0:
        return ratio
    for d in range(D + 1):
        frame = np.concatenate([plane[sl].ravel() for sl in _face_slices(plane.shape, d, D)])
        if frame.size < min_samples:
            break
        r = _mad(frame) / ref
        if r < settled:
            break  # the doubling fades within a few pixels; farther in is sampling noise
        ratio[d] = r
    return ratio


def _mad(x: np.ndarray) -> float:
    x = np.asarray(x, dtype=np.float64)
    return float(median(np.abs(x - median(x))))


def _mirrored_every(step: int, start: int, n: int) -> np.ndarray:
    """Indices ``start, start + step, ...`` below ``n - start`` and their mirror images ``n - 1 - i``."""
    idx = np.arange(start, n - start, step)
    return np.union1d(idx, n - 1 - idx)


def _face_slices(shape: tuple[int, ...], d: int, reach: int) -> list[tuple]:
    """Index tuples of the pixels ``d`` from one border and farther than ``reach`` from all others.

    The middle of each side of a 2D image (each face of a volume): there the
    excess of one mirror alone is seen, which :func:`equalise_plane`
    multiplies where two borders are near.
    """
    out = []
    for a, n in enumerate(shape):
        others = [slice(reach + 1, m - 1 - reach) for m in shape]
        for i in (d, n - 1 - d):
            others[a] = i
            out.append(tuple(others))
    return out


def equalise_border(responses: np.ndarray, median_: np.ndarray, ratios: list[np.ndarray]) -> None:
    """Divide each scale's deviations from its median by :func:`border_spread`'s ratio, in place."""
    for plane, mid, ratio in zip(responses, np.asarray(median_, dtype=np.float32), ratios):
        equalise_plane(plane, float(mid), ratio)


def equalise_plane(plane: np.ndarray, median_: float, ratio: np.ndarray) -> None:
    """:func:`equalise_border` for one response image or volume, in place.

    The excess multiplies across axes (near a corner or an edge of a volume
    the noise is mirrored along each axis): the slab ``d`` from each face is
    divided by ``ratio[d]``, so a pixel ``d1`` from one border and ``d2``
    from another is divided by ``ratio[d1] * ratio[d2]``.
    """
    mid = np.float32(median_)
    for axis, n in enumerate(plane.shape):
        for d, r in enumerate(ratio):
            if r > 1.0:
                inv = np.float32(1.0 / r)
                for i in (d, n - 1 - d):
                    sl = (slice(None),) * axis + (i,)
                    plane[sl] = mid + (plane[sl] - mid) * inv


def crowding_correction(
    responses: np.ndarray,
    sigmas: np.ndarray,
    noise: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    radii: np.ndarray,
    *,
    tile_sigmas: float = 2.0,
    quantile: float = 0.35,
    min_tiles: int = 8,
    floor: float = 0.75,
    tiles: dict | None = None,
) -> np.ndarray:
    """Factor (<= 1) that removes the particles' share from a noise estimate.

    In a crowded micrograph hardly any tile is free of particles, so
    :func:`robust_noise` measures particle edges as noise and every score is
    compressed. Here the same tile measurement is repeated on the tiles that
    no candidate can influence: at scale ``sigma`` a particle of radius ``R``
    changes the response up to ``R + sqrt(2) sigma`` from its centre (where
    the circle of the edge filter touches its rim). On a sparse micrograph
    these are nearly all tiles and the factor is 1.

    Parameters
    ----------
    responses : (S, M, N) ndarray
    sigmas : (S,) ndarray
        Sigma of each scale in pixels of ``responses``.
    noise : (S,) ndarray
        The :func:`robust_noise` estimate (same ``tile_sigmas`` and ``quantile``).
    rows, cols, radii : (K,) ndarrays
        Candidate particles (e.g. maxima above a lower threshold), in pixels
        of ``responses``.
    tile_sigmas, quantile : float
        As in :func:`robust_noise`.
    min_tiles : int
        Least number of candidate-free tiles for a scale to be measured; the
        other scales take the factor of the nearest measured one.
    floor : float
        Smallest factor returned (candidates found above ``t0`` stay a
        superset of the final picks above ``t`` when ``floor >= t0 / t``).
    tiles : dict, optional
        The output of :func:`measure_tiles` (computed here when not given).

    Returns
    -------
    factor : (S,) ndarray
        In ``[floor, 1]``; all ones when no scale could be measured.
    """
    S = responses.shape[0]
    factor = np.full(S, np.nan)
    if len(rows) == 0:
        return np.ones(S)
    from scipy.spatial import cKDTree

    tree = cKDTree(np.c_[rows, cols])
    radii = np.asarray(radii, float)
    kk = min(4, len(rows))
    if tiles is None:
        tiles = measure_tiles(responses, sigmas, tile_sigmas=tile_sigmas)
    for i in _measured_scales(S):
        spreads, ts_r, ts_c = tiles[i]
        cr = (np.arange(spreads.shape[0]) + 0.5) * ts_r - 0.5
        cc = (np.arange(spreads.shape[1]) + 0.5) * ts_c - 0.5
        centres = np.stack(np.meshgrid(cr, cc, indexing="ij"), -1).reshape(-1, 2)
        dist, idx = tree.query(centres, k=kk)
        dist, idx = dist.reshape(len(centres), kk), idx.reshape(len(centres), kk)
        to_rim = np.min(dist - radii[idx], axis=1)
        free = (to_rim > math.sqrt(2.0) * sigmas[i] + 0.5 * math.hypot(ts_r, ts_c)) & np.isfinite(spreads.ravel())
        if free.sum() >= min_tiles:
            factor[i] = float(np.quantile(spreads.ravel()[free], quantile)) / noise[i]
    ok = np.isfinite(factor)
    if not ok.any():
        return np.ones(S)
    x = np.log(np.asarray(sigmas, float))
    return np.clip(np.interp(x, x[ok], factor[ok]), floor, 1.0)


#: Offsets (scale, row, col) of the 26 neighbours in the order
#: :func:`scale_space_maxima` tests them: the two in the same row first (on
#: whole arrays for interior pixels), then the rest of the same scale, which
#: reject most candidates, then the scales below and above.
_NEIGHBOURS = ((0, 0, -1), (0, 0, 1), (0, -1, 0), (0, 1, 0), (0, -1, -1), (0, -1, 1), (0, 1, -1), (0, 1, 1)) + tuple(
    (ds, dr, dc) for ds in (-1, 1) for dr in (-1, 0, 1) for dc in (-1, 0, 1)
)


def scale_space_maxima(
    responses: np.ndarray,
    threshold: np.ndarray | float,
    *,
    exclude_border: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Local maxima over 3x3x3 neighbourhoods in (scale, row, col).

    A maximum is not smaller than any of its neighbours, so equal
    neighbouring responses (a plateau) are each returned; the NMS that
    follows keeps one. Only interior scales (``1 .. S-2``) can hold a
    maximum: the first and last planes are there to be compared with.

    Parameters
    ----------
    responses : (S, M, N) ndarray
    threshold : float or (S,) array_like
        Minimum response for a maximum, per scale.
    exclude_border : int
        Ignore maxima closer than this many pixels to the image border.

    Returns
    -------
    s, r, c : (K,) ndarrays of int
        Scale, row and column indices of the maxima, ordered by decreasing
        response (stable for ties).
    """
    S = responses.shape[0]
    if S < 3:
        raise ValueError(f"responses must have at least 3 scales, got {S}")
    thr = np.broadcast_to(np.asarray(threshold, dtype=np.float32), (S,))
    _, m, n = responses.shape
    plane = m * n
    responses = np.ascontiguousarray(responses)
    flat = responses.reshape(-1)
    inner = responses[1:-1]
    above = inner > thr[1:-1, None, None]
    if exclude_border > 0:
        b = int(exclude_border)
        above[:, :b, :] = False
        above[:, -b:, :] = False
        above[:, :, :b] = False
        above[:, :, -b:] = False
    # Candidates on the image border are tested apart, with their neighbours'
    # rows and columns clipped (the border repeats, like mode="nearest").
    # Flat indices are shifted by one plane: candidates lie on scales 1 .. S-2.
    edge = np.zeros((m, n), dtype=bool)
    edge[[0, -1], :] = True
    edge[:, [0, -1]] = True
    es, ei = np.nonzero(above[:, edge])
    at_edge = (es + 1) * plane + np.flatnonzero(edge)[ei]
    above[:, edge] = False
    # Interior candidates: first against their same-row neighbours on the
    # whole (flattened) array, which removes most of them, then each survivor
    # against its other neighbours, dropping it as soon as one is larger.
    # Much cheaper than a 3D maximum filter.
    fa, fi = above.reshape(-1), inner.reshape(-1)
    np.logical_and(fa[1:], fi[1:] >= fi[:-1], out=fa[1:])
    np.logical_and(fa[:-1], fi[:-1] >= fi[1:], out=fa[:-1])
    idx = np.flatnonzero(fa) + plane
    value = flat[idx]
    for ds, dr, dc in _NEIGHBOURS[2:]:
        ok = value >= flat[idx + (ds * plane + dr * n + dc)]
        idx, value = idx[ok], value[ok]
    es, rem = np.divmod(at_edge, plane)
    er, ec = np.divmod(rem, n)
    value = flat[at_edge]
    for ds, dr, dc in _NEIGHBOURS:
        ok = value >= flat[(es + ds) * plane + np.clip(er + dr, 0, m - 1) * n + np.clip(ec + dc, 0, n - 1)]
        es, er, ec, value = es[ok], er[ok], ec[ok], value[ok]
    idx = np.sort(np.concatenate([idx, es * plane + er * n + ec]))  # C order, as np.nonzero
    s, rem = np.divmod(idx, plane)
    r, c = np.divmod(rem, n)
    order = np.argsort(-flat[idx], kind="stable")
    return s[order], r[order], c[order]


def quadratic_offsets(responses: np.ndarray, s: np.ndarray, r: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Sub-sample offsets of maxima from a 1D parabola fit along each axis.

    Returns
    -------
    offsets : (K, 3) ndarray
        Offsets in (scale, row, col), each clipped to [-0.5, 0.5].
    """
    out = np.zeros((len(s), 3))
    if len(s) == 0:
        return out
    shape = responses.shape
    centre = responses[s, r, c].astype(float)
    for axis, idx in enumerate((s, r, c)):
        lo = np.clip(idx - 1, 0, shape[axis] - 1)
        hi = np.clip(idx + 1, 0, shape[axis] - 1)
        coords_lo = [s, r, c]
        coords_hi = [s, r, c]
        coords_lo[axis] = lo
        coords_hi[axis] = hi
        f_lo = responses[tuple(coords_lo)].astype(float)
        f_hi = responses[tuple(coords_hi)].astype(float)
        valid = (idx > 0) & (idx < shape[axis] - 1)
        out[:, axis] = np.where(valid, parabola_offset(f_lo, centre, f_hi), 0.0)
    return out


def check_search(*, dmin_px: float, dmax_px: float, threshold_method: str, threshold: float) -> None:
    """Validate the arguments shared by the 2D and 3D scale-space searches.

    Raises
    ------
    ValueError
        Naming the bad argument.
    """
    if not (dmin_px > 0 and dmax_px > dmin_px):
        raise ValueError(f"need 0 < dmin_px < dmax_px, got dmin_px={dmin_px}, dmax_px={dmax_px}")
    if threshold_method not in ("mad", "percentile", "absolute"):
        raise ValueError(f"threshold_method must be 'mad', 'percentile' or 'absolute', got {threshold_method!r}")
    if threshold_method == "percentile" and not 0 <= threshold <= 100:
        raise ValueError(f"threshold must be in [0, 100] for percentile, got {threshold}")


def detect_blobs(
    image: np.ndarray | None,
    *,
    dmin_px: float,
    dmax_px: float,
    method: str = "dog",
    k: float = 1.1,
    threshold_method: str = "mad",
    threshold: float = 6.0,
    min_sigma_binned: float = 3.0,
    octave_span: float = 4.0,
    exclude_border_px: float = 0.0,
    edge_width: float = 0.12,
    crowding: bool = False,
    report_threshold: float | None = None,
    equalise_borders: bool = True,
    binned=None,
    workers: int = 1,
) -> dict[str, np.ndarray]:
    """Find bright blobs with diameters in ``[dmin_px, dmax_px]``.

    Parameters
    ----------
    image : (M, N) ndarray or None
        Full-resolution image, particles bright. May be None when ``binned``
        is given.
    dmin_px, dmax_px : float
        Diameter range in full-resolution pixels (``0 < dmin_px < dmax_px``).
    method : {'dog', 'log', 'edge'}
        Blob response, see :func:`blob_responses`.
    k : float
        Ratio between successive sigmas (> 1).
    threshold_method : {'mad', 'percentile', 'absolute'}
        ``'mad'``: keep maxima whose score (response minus the scale's median,
        in units of 1.4826 MAD) is at least ``threshold``; adapts to each
        micrograph. ``'percentile'``: keep maxima above the ``threshold``-th
        percentile of the level's responses (the seed rule). ``'absolute'``:
        keep maxima whose raw response is at least ``threshold``.
    threshold : float
        Value for ``threshold_method``.
    min_sigma_binned, octave_span : float
        Pyramid layout, see :func:`plan_levels`.
    exclude_border_px : float
        Ignore maxima closer than this to the border (full-resolution px).
    edge_width : float
        Blur of the ``'edge'`` response, see :func:`blob_responses`.
    crowding : bool
        With ``threshold_method='mad'``, measure the noise again away from the
        candidates (:func:`crowding_correction`), so that crowded micrographs
        are not judged against a noise level inflated by their particles.
    equalise_borders : bool
        Divide each scale's deviations from its median, near the border, by
        how much more they fluctuate there than inside
        (:func:`border_spread`): the mirror padding counts the noise near the
        border twice, which otherwise crowds noise maxima onto it.
    report_threshold : float, optional
        With ``threshold_method='mad'``, return maxima down to this score
        (below ``threshold``: weak candidates for a later test); the noise
        estimate and the crowding correction still use ``threshold``.
    binned : callable, optional
        ``binned(factor) -> (M // factor, N // factor) ndarray``, a cache of
        block-averaged copies of the image. Defaults to block-averaging
        ``image``.
    workers : int
        FFT threads.

    Returns
    -------
    blobs : dict of (K,) ndarrays
        ``x_px``, ``y_px`` (column, row; full-resolution pixel centres),
        ``diameter_px``, ``sigma_px``, ``score`` (normalised response),
        ``response`` (raw) and ``pyramid_level``; ordered by decreasing score.

    Examples
    --------
    >>> from skimage.draw import disk
    >>> img = np.zeros((256, 256), np.float32)
    >>> img[disk((128, 100), 30)] = 1
    >>> b = detect_blobs(img, dmin_px=30, dmax_px=120)
    >>> round(float(b["x_px"][0])), round(float(b["y_px"][0]))
    (100, 128)
    """
    from lipoframe.algorithms.pyramid import block_mean, to_full_resolution

    check_search(dmin_px=dmin_px, dmax_px=dmax_px, threshold_method=threshold_method, threshold=threshold)
    lowest = threshold
    if report_threshold is not None and threshold_method == "mad":
        if not report_threshold > 0:
            raise ValueError(f"report_threshold must be > 0, got {report_threshold}")
        lowest = min(threshold, report_threshold)
    if binned is None:
        if image is None:
            raise ValueError("image must be given when binned is None")
        # A level whose blocks are larger than the image has nothing to detect (skipped below).
        binned = lambda f: block_mean(image, f) if min(image.shape) >= f else np.zeros((0,) * image.ndim, np.float32)  # noqa: E731
    full_shape = None if image is None else image.shape
    levels = plan_levels(
        dmin_px / DIAMETER_PER_SIGMA,
        dmax_px / DIAMETER_PER_SIGMA,
        k=k,
        min_sigma_binned=min_sigma_binned,
        octave_span=octave_span,
    )
    cols: dict[str, list] = {n: [] for n in ("x_px", "y_px", "sigma_px", "score", "response", "pyramid_level")}
    for li, level in enumerate(levels):
        img = binned(level.factor)
        if full_shape is None:
            full_shape = tuple(s * level.factor for s in img.shape)
        if min(img.shape) < 8 or not float(np.ptp(img)) > 0:
            continue  # too small, or constant: nothing to detect
        sig_b = level.pad_sigmas / level.factor
        resp = blob_responses(img, sig_b, method=method, k=k, edge_width=edge_width, workers=workers)
        tiles = measure_tiles(resp, sig_b, image=img)
        med, noise = robust_noise(resp, sig_b, tiles=tiles)
        if equalise_borders:
            # Mirror padding counts the noise near the border twice: give the
            # border the false-alarm rate of the interior. (The noise level
            # comes from the quieter tiles, which the border ones are not.)
            equalise_border(resp, med, border_spread(resp, border_reach(sig_b, ndim=2)))
        border = int(math.ceil(exclude_border_px / level.factor))
        if threshold_method == "mad" and crowding:
            # Candidates above a lower threshold tell where particles may be;
            # the noise is measured again away from them (crowded fields).
            floor = 0.75
            s, r, c = scale_space_maxima(resp, med + min(floor * threshold, lowest) * noise, exclude_border=border)
            # Only confident candidates (above the threshold) are masked:
            # masking noise maxima too would leave only the quietest tiles.
            # A second round masks the candidates the first one uncovered.
            base = noise
            for _ in range(2):
                sure = resp[s, r, c] >= med[s] + threshold * noise[s]
                radii = math.sqrt(2.0) * sig_b[s[sure]] * 1.1
                noise = base * crowding_correction(resp, sig_b, base, r[sure], c[sure], radii, floor=floor, tiles=tiles)
            keep = resp[s, r, c] >= med[s] + lowest * noise[s]
            s, r, c = s[keep], r[keep], c[keep]
        else:
            if threshold_method == "mad":
                thr = med + lowest * noise
            elif threshold_method == "percentile":
                thr = np.full(len(sig_b), np.percentile(resp[1:-1, ::2, ::2], threshold))
            else:
                thr = np.full(len(sig_b), threshold)
            s, r, c = scale_space_maxima(resp, thr, exclude_border=border)
        if len(s) == 0:
            continue
        off = quadratic_offsets(resp, s, r, c)
        log_sigma = np.log(level.pad_sigmas[s]) + off[:, 0] * math.log(k)
        cols["x_px"].append(to_full_resolution(c + off[:, 2], level.factor))
        cols["y_px"].append(to_full_resolution(r + off[:, 1], level.factor))
        cols["sigma_px"].append(np.exp(log_sigma))
        cols["response"].append(resp[s, r, c].astype(float))
        cols["score"].append((resp[s, r, c] - med[s]) / noise[s])
        cols["pyramid_level"].append(np.full(len(s), li, dtype=np.int64))
    return collect_blobs(cols, full_shape, DIAMETER_PER_SIGMA)


def collect_blobs(cols: dict[str, list], full_shape: tuple[int, ...] | None, diameter_per_sigma: float) -> dict[str, np.ndarray]:
    """The blobs found level by level, as one table ordered by decreasing score.

    Parameters
    ----------
    cols : dict of lists of (K_i,) arrays
        ``x_px``, ``y_px`` (and ``z_px`` for volumes), ``sigma_px``,
        ``score``, ``response`` and ``pyramid_level``, one array per level.
    full_shape : tuple of int or None
        Full-resolution shape, (M, N) or (P, M, N); coordinates are clipped
        into it (a sub-pixel offset can step past the last pixel centre).
    diameter_per_sigma : float
        ``diameter_px = diameter_per_sigma * sigma_px``.

    Returns
    -------
    blobs : dict of (K,) ndarrays
        The columns above and ``diameter_px``; a stable sort by score.
    """
    out = {n: (np.concatenate(v) if v else np.empty(0)) for n, v in cols.items()}
    out["pyramid_level"] = out["pyramid_level"].astype(np.int64)
    if full_shape is not None and len(out["x_px"]):
        for name, axis in (("x_px", -1), ("y_px", -2), ("z_px", -3)):
            if name in out:
                out[name] = np.clip(out[name], 0, full_shape[axis] - 1)
    out["diameter_px"] = out["sigma_px"] * diameter_per_sigma
    order = np.argsort(-out["score"], kind="stable")
    return {n: v[order] for n, v in out.items()}
