"""Thin-membrane vesicles: a membrane (ridge) map and a circular Hough search on it.

The ``edge`` detector and the radial refiner look for a *step*: a particle
darker inside than outside. A large liposome is a thin dark line on a circle
whose lumen is as grey as the background: there is no step, and an edge
blurred over ``0.12 R`` averages the line away. These functions find such
vesicles the way one sees them, as closed thin lines:

1. :func:`membrane_map` keeps thin bright (polarity-corrected) lines: a
   difference of Gaussians at the membrane's own width, positive part, in
   units of its noise.
2. :func:`find_rings` averages that map along circles of many radii (one FFT
   per radius: the transfer function of a circle's mean is ``J0(2 pi R f)``),
   minus its average on the circles at 0.8 and 1.2 radii (so a textured area
   or a straight membrane crossing the circle scores less than a ring), and
   keeps local maxima in (x, y, radius) whose circle is lined with membrane
   in most directions (``coverage``): arcs of neighbouring vesicles that
   happen to lie on one circle do not close it.

References
----------
.. [1] Duda, R. O. and Hart, P. E. (1972). Use of the Hough transformation to
       detect lines and curves in pictures. Comm. ACM 15, 11-15.
"""

from __future__ import annotations

import numpy as np
from scipy import fft as sfft
from scipy import ndimage as ndi
from scipy.special import j0

from lipoframe.algorithms.pyramid import block_mean
from lipoframe.algorithms.radial import sample_polar_grid
from lipoframe.algorithms.stats import background_stats, parabola_offset

#: Frequency samples per cycle/pixel of the tabulated transfer functions.
_F_STEPS = 4096


def membrane_map(image: np.ndarray, *, thickness: float) -> np.ndarray:
    """Strength of thin bright lines of width ``thickness``, in noise units.

    Parameters
    ----------
    image : (M, N) ndarray
        Membranes bright (polarity already corrected).
    thickness : float
        Membrane width in pixels of ``image`` (>= 1).

    Returns
    -------
    ridge : (M, N) ndarray of float32
        Difference of Gaussians (``thickness / 2`` and four times that),
        divided by its robust spread and clipped to [0, 4]: lines bright, the
        rest 0; the cap keeps one very strong edge (ice, carbon) from
        outweighing a whole circle of membrane.
    """
    if not thickness >= 1:
        raise ValueError(f"thickness must be >= 1 pixel, got {thickness}")
    img = np.asarray(image, dtype=np.float32)
    s = thickness / 2.0
    dog = ndi.gaussian_filter(img, s) - ndi.gaussian_filter(img, 4.0 * s)
    med, spread = background_stats(dog)
    return np.clip((dog - med) / max(spread, 1e-12), 0.0, 4.0).astype(np.float32)


def find_rings(
    ridge: np.ndarray,
    *,
    rmin: float,
    rmax: float,
    ratio: float = 1.04,
    threshold: float = 6.0,
    min_coverage: float = 0.7,
    line_level: float = 1.0,
    n_angles: int = 64,
) -> dict[str, np.ndarray]:
    """Circles lined with membrane: local maxima of the mean ridge along circles.

    Parameters
    ----------
    ridge : (M, N) ndarray
        :func:`membrane_map`.
    rmin, rmax : float
        Radii searched, pixels of ``ridge`` (the membrane's centre line).
    ratio : float
        Ratio of successive radii (> 1).
    threshold : float
        Smallest score: the circle's mean ridge minus that of the circles at
        0.8 and 1.2 radii, over the robust spread of that difference across
        the image (noise units).
    min_coverage : float
        Smallest fraction of directions in which the ridge (its largest value
        within one pixel of the circle) reaches ``line_level``.
    line_level : float
        Ridge value (noise units) that counts as membrane.
    n_angles : int
        Directions sampled for ``coverage``.

    Returns
    -------
    rings : dict of (K,) ndarrays
        ``row``, ``col``, ``radius`` (parabolic in log-radius between the
        searched radii), ``score`` and ``coverage``, strongest first.

    Notes
    -----
    The circle means are computed by FFT with zero padding (of the map less
    its mean): the part of a circle beyond the border sees the map's mean,
    never the opposite border.
    """
    if not 0 < rmin < rmax:
        raise ValueError(f"need 0 < rmin < rmax, got rmin={rmin}, rmax={rmax}")
    if not ratio > 1:
        raise ValueError(f"ratio must be > 1, got {ratio}")
    if not 0 <= min_coverage <= 1:
        raise ValueError(f"min_coverage must be in [0, 1], got {min_coverage}")
    ridge = np.asarray(ridge, dtype=np.float32)
    radii = rmin * ratio ** np.arange(int(np.floor(np.log(rmax / rmin) / np.log(ratio))) + 2)
    # Large circles are searched on a block-averaged map (the radius stays
    # 16-32 of its pixels): a circle's mean does not need every pixel, and
    # the cost per radius falls fourfold per octave.
    levels = np.maximum(0, np.floor(np.log2(radii / 16.0))).astype(int)
    spectra: dict[int, tuple] = {}

    def score_map(i: int) -> np.ndarray:
        lev = int(levels[i])
        if lev not in spectra:
            img = block_mean(ridge, 2**lev) if lev else ridge
            # Linear, not circular, filtering: the map (less its mean) is
            # zero-padded by the widest kernel's reach at this level (1.2
            # radii plus the 1 px blur) to a fast FFT size, so a membrane or
            # a carbon edge at one border does not score circles at the
            # opposite one. Outside the micrograph the circles see the map's
            # mean: no membrane, and no mirrored copy of what is inside
            # (the filter ignores the mean: its response to a constant is 0).
            reach = int(np.ceil(1.2 * radii[levels == lev].max() / 2**lev + 4.0))
            fshape = tuple(sfft.next_fast_len(n + reach, real=True) for n in img.shape)
            fy = sfft.fftfreq(fshape[0])[:, None]
            fx = sfft.rfftfreq(fshape[1])[None, :]
            # Transfer functions depend on |f| only: tabulate them on a fine
            # 1D grid and gather (J0 on every frequency is the slow part).
            f_bin = np.rint(np.hypot(fy, fx) * _F_STEPS).astype(np.int32)
            spectra[lev] = (sfft.rfft2(img - np.float32(img.mean(dtype=np.float64)), s=fshape), f_bin, img.shape, fshape)
        spectrum, f_bin, shape, fshape = spectra[lev]
        r = radii[i] / 2**lev
        f = np.arange(int(_F_STEPS * np.sqrt(0.5)) + 2) / _F_STEPS
        h = (j0(2 * np.pi * r * f) - 0.5 * (j0(1.6 * np.pi * r * f) + j0(2.4 * np.pi * r * f))) * np.exp(-2.0 * np.pi**2 * f**2)
        resp = sfft.irfft2(spectrum * h.astype(np.float32)[f_bin], s=fshape)[: shape[0], : shape[1]]
        med, spread = background_stats(resp, samples=max(1, resp.size // 4))  # every other pixel
        out = ((resp - med) / spread).astype(np.float32)
        if lev:  # back onto the grid of ``ridge`` (bilinear, block centres aligned)
            out = ndi.zoom(out, 2**lev, order=1, mode="nearest", grid_mode=True)
            out = np.pad(out, [(0, ridge.shape[0] - out.shape[0]), (0, ridge.shape[1] - out.shape[1])], mode="edge")
        return out

    # Local maxima in (radius, row, col): over three radii, and in space over
    # a window that grows with the radius (one ring, one maximum). Three
    # score maps are held at a time.
    rows, cols, idx, vals, los, his = [], [], [], [], [], []
    prev, cur = None, score_map(0)
    for i, r in enumerate(radii):
        nxt = score_map(i + 1) if i + 1 < len(radii) else None
        best = cur
        for other in (prev, nxt):
            if other is not None:
                best = np.maximum(best, other)
        y, x = np.nonzero((cur >= threshold) & (cur >= best))
        # ... and the largest within 0.15 radii in space (checked on the few
        # candidates only).
        h = max(1, int(round(0.15 * r)))
        top = np.array([cur[max(a - h, 0) : a + h + 1, max(b - h, 0) : b + h + 1].max() for a, b in zip(y, x)])
        if len(y):
            y, x = y[cur[y, x] >= top], x[cur[y, x] >= top]
        rows.append(y)
        cols.append(x)
        idx.append(np.full(len(y), i))
        vals.append(cur[y, x])
        los.append(prev[y, x] if prev is not None else cur[y, x])
        his.append(nxt[y, x] if nxt is not None else cur[y, x])
        prev, cur = cur, nxt
    row = np.concatenate(rows).astype(float)
    col = np.concatenate(cols).astype(float)
    ri = np.concatenate(idx)
    score = np.concatenate(vals).astype(float)
    # Sub-step radius: parabola through the scores at the neighbouring radii.
    lo = np.concatenate(los).astype(float)
    hi = np.concatenate(his).astype(float)
    off = np.where((ri > 0) & (ri < len(radii) - 1), parabola_offset(lo, score, hi), 0.0)
    radius = radii[ri] * ratio**off
    # Coverage: membrane in most directions around the circle.
    theta = np.linspace(0, 2 * np.pi, n_angles, endpoint=False)
    coverage = np.zeros(len(row))
    if len(row):
        rho = 1.0 + np.array([-1.0, 0.0, 1.0])[None, :] / radius[:, None]
        ring = sample_polar_grid(ridge, row, col, radius, theta, rho).max(axis=2)
        coverage = (ring >= line_level).mean(axis=1)
    keep = coverage >= min_coverage
    order = np.argsort(-score[keep], kind="stable")
    return {
        "row": row[keep][order],
        "col": col[keep][order],
        "radius": radius[keep][order],
        "score": score[keep][order],
        "coverage": coverage[keep][order],
    }
