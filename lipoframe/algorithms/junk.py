"""Measurements that tell particles from ice contamination and carbon edges.

Both work on polar samples around each pick of a polarity-corrected image
(particles bright): ice contamination is far *brighter* there than any
particle and surrounds the pick (the pick's own neighbourhood is abnormal);
a carbon edge makes the background on one side of the pick differ from the
other side (a strong first angular harmonic outside the particle).
"""

from __future__ import annotations

import numpy as np

from lipoframe.algorithms.radial import polar_samples
from lipoframe.algorithms.stats import median_rows


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

    Returns
    -------
    measures : dict of (K,) ndarrays
        ``inside`` (median over the inner 80 % of the disc), ``outside``
        (median of the annulus 1.15-1.6 radii), ``asymmetry`` (amplitude of
        the first angular harmonic of the annulus, i.e. half the difference
        between its two sides), all in image units.
    """
    k = len(rows)
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
