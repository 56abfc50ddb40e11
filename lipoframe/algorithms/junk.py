"""Measurements that tell particles from ice contamination and carbon edges.

Both work on polar samples around each pick of a polarity-corrected image
(particles bright): ice contamination is far *brighter* there than any
particle and surrounds the pick (the pick's own neighbourhood is abnormal);
a carbon edge makes the background on one side of the pick differ from the
other side (a strong first angular harmonic outside the particle).
"""

from __future__ import annotations

import numpy as np
from scipy import fft as sfft

from lipoframe.algorithms.radial import bilinear, polar_samples
from lipoframe.algorithms.stats import median_rows


def _picks(rows, cols, diameters) -> int:
    """The number of picks, or a ValueError unless ``rows``, ``cols`` and ``diameters`` are 1D of one length."""
    shapes = [np.shape(v) for v in (rows, cols, diameters)]
    if any(len(sh) != 1 for sh in shapes) or len(set(shapes)) != 1:
        raise ValueError(f"rows, cols and diameters must be 1D of one length, got shapes {shapes[0]}, {shapes[1]} and {shapes[2]}")
    return shapes[0][0]


def neighbourhood_measures(
    image: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    diameters: np.ndarray,
    *,
    n_angles: int = 32,
) -> dict[str, np.ndarray]:
    """Inside/outside levels and background asymmetry around each pick.

    Parameters
    ----------
    image : (M, N) ndarray
        Particles bright.
    rows, cols, diameters : (K,) ndarrays
        Picks in pixels of ``image``.
    n_angles : int
        Directions sampled around each pick.

    Returns
    -------
    measures : dict of (K,) ndarrays
        ``inside`` (median over the inner 80 % of the disc), ``outside``
        (median of the annulus 1.15-1.6 radii), ``asymmetry`` (amplitude of
        the first angular harmonic of the annulus, i.e. half the difference
        between its two sides), all in image units.
    """
    k = _picks(rows, cols, diameters)
    if k == 0:
        e = np.empty(0)
        return {"inside": e, "outside": e.copy(), "asymmetry": e.copy()}
    samples, theta, rho = polar_samples(image, rows, cols, np.asarray(diameters, float) / 2, n_angles=n_angles, n_radii=33, rho_max=1.6)
    inner = rho <= 0.8
    outer = rho >= 1.15
    inside = median_rows(samples[:, :, inner].reshape(k, -1))
    ring = samples[:, :, outer].mean(axis=2)  # (K, A)
    outside = median_rows(ring)
    c, s = np.cos(theta), np.sin(theta)
    a = 2.0 * (ring * c).mean(axis=1)
    b = 2.0 * (ring * s).mean(axis=1)
    return {"inside": inside, "outside": outside, "asymmetry": np.hypot(a, b)}


def _convolve_same(images: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Each image of ``images`` (K, M, N) convolved with ``kernel`` (odd, square), cropped to (M, N).

    The numbers of ``scipy.signal.fftconvolve(images, kernel[None],
    mode="same", axes=(1, 2))``, computed the same way (real FFTs padded to
    the next fast length, product, inverse, centred crop), without importing
    :mod:`scipy.signal`, which brings :mod:`scipy.stats` with it: about
    0.5 s at the start of every command, since the filters are loaded
    with the plugins.
    """
    _, m, n = images.shape
    km, kn = kernel.shape
    if km == 1 and kn == 1:  # fftconvolve skips the FFT along axes of length 1
        return images * kernel[None]
    full = (m + km - 1, n + kn - 1)
    fshape = [sfft.next_fast_len(size, True) for size in full]
    product = sfft.rfftn(images, fshape, axes=(1, 2)) * sfft.rfftn(kernel[None], fshape, axes=(1, 2))
    conv = sfft.irfftn(product, fshape, axes=(1, 2))
    y0, x0 = (full[0] - m) // 2, (full[1] - n) // 2
    return conv[:, y0 : y0 + m, x0 : x0 + n]


def _disc_grid(image: np.ndarray, rows, cols, diameters, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear samples of ``image`` on a Cartesian grid of ``n`` samples per radius around each pick.

    Returns the samples (K, 2n+1, 2n+1), float32, and the (2n+1, 2n+1) mask
    of the grid points inside the disc. The grid is regular, so each sample
    stands for the same area (a polar grid crowds its samples at the centre).
    """
    u = np.arange(-n, n + 1, dtype=np.float32) / n  # in radii
    uy, ux = np.meshgrid(u, u, indexing="ij")
    radius = np.asarray(diameters, np.float32)[:, None, None] / 2
    samples = bilinear(
        image,
        np.asarray(rows, np.float32)[:, None, None] + radius * uy,
        np.asarray(cols, np.float32)[:, None, None] + radius * ux,
    )  # (K, G, G)
    return samples, np.hypot(uy, ux) <= 1.0


def disc_quantile(
    image: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    diameters: np.ndarray,
    *,
    q: float = 0.9,
    n: int = 16,
    chunk: int = 256,
) -> np.ndarray:
    """The ``q`` quantile of each pick's disc, area-weighted.

    With particles bright, ``q=0.9`` is the level the brightest tenth of the
    disc reaches: the densest part of a particle (its rim, its shell, its
    centre), or a few very dense specks that hardly move the disc's median.

    Parameters
    ----------
    image : (M, N) ndarray
        Particles bright.
    rows, cols, diameters : (K,) ndarrays
        Picks in pixels of ``image``.
    q : float
        Quantile in (0, 1).
    n : int
        Samples per radius of the Cartesian grid each disc is resampled on
        (16: about 800 samples in a disc, 1/16 radius apart; the sampling
        costs more than the quantile).
    chunk : int
        Picks resampled at once (memory, not the result).

    Returns
    -------
    level : (K,) ndarray of float
        In image units.
    """
    if not 0 < q < 1:
        raise ValueError(f"q must be in (0, 1), got {q}")
    if n < 4:
        raise ValueError(f"n must be >= 4, got {n}")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    k = _picks(rows, cols, diameters)
    if k == 0:
        return np.empty(0)
    rows, cols, diameters = (np.asarray(v, float) for v in (rows, cols, diameters))
    out = np.empty(k)
    for i in range(0, k, chunk):  # bounded memory: a chunk's grids are chunk x (2n+1)^2 samples
        part = slice(i, i + chunk)
        samples, inside = _disc_grid(image, rows[part], cols[part], diameters[part], n)
        out[part] = np.quantile(samples[:, inside], q, axis=1)
    return out


def darkness_concentration(
    image: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    diameters: np.ndarray,
    *,
    core: float = 0.25,
    n: int = 25,
    min_spot_px: float = 2.0,
) -> np.ndarray:
    """How much of each pick's excess signal sits in one small spot.

    The signal above the pick's own median is summed over its disc; the
    result is the largest share of it found inside any disc of ``core``
    radii. Particles spread their signal over the disc or its rim: a
    noise-free projected sphere gives 0.21 (its excess sits at the centre),
    shells and vesicles about 0.1. A circle drawn around a small speck holds
    most of its signal in the speck: 0.3-0.5. The pick's own median, not
    its surroundings, sets the level, so a crowd of neighbours does not
    change the measure.

    Parameters
    ----------
    image : (M, N) ndarray
        Particles bright.
    rows, cols, diameters : (K,) ndarrays
        Picks in pixels of ``image``.
    core : float
        Radius of the spot, in units of the pick's radius.
    n : int
        Samples per radius of the Cartesian grid each pick is resampled on.
    min_spot_px : float
        Picks whose spot (``core`` radii) is smaller than this many pixels of
        ``image`` are not measured (NaN): a spot of a pixel or two holds
        pixel noise, not an object.

    Returns
    -------
    concentration : (K,) ndarray of float
        In [0, 1]; 0 when nothing inside stands above the pick's median;
        NaN for picks too small to measure.
    """
    if not 0 < core < 1:
        raise ValueError(f"core must be in (0, 1), got {core}")
    if n < 4:
        raise ValueError(f"n must be >= 4, got {n}")
    k = _picks(rows, cols, diameters)
    if k == 0:
        return np.empty(0)
    samples, inside = _disc_grid(image, rows, cols, diameters, n)
    radius = np.asarray(diameters, np.float32)[:, None, None] / 2
    # The pick's own median, not its surroundings: in a crowded field the
    # annulus lies on the neighbours, and only the darkest part of a
    # particle would stand above it.
    level = median_rows(samples[:, inside])
    excess = np.clip(samples - level[:, None, None], 0, None) * inside
    total = excess.sum(axis=(1, 2))
    c = int(round(core * n))
    dy, dx = np.mgrid[-c : c + 1, -c : c + 1]
    spot = (dy**2 + dx**2 <= c * c).astype(np.float32)
    # FFT convolution: 3-4x faster than direct for these grids (K x 51 x 51).
    best = _convolve_same(excess, spot).max(axis=(1, 2))
    share = np.where(total > 0, best / np.maximum(total, 1e-30), 0.0)
    return np.where(core * radius[:, 0, 0] >= min_spot_px, share, np.nan)
