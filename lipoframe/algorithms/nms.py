"""Non-maximum suppression of circular picks."""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree


def size_aware_nms(
    xy: np.ndarray,
    radius: np.ndarray,
    score: np.ndarray,
    *,
    beta: float = 0.8,
    symmetric: bool = True,
) -> np.ndarray:
    """Greedy, score-ordered suppression with a size-dependent exclusion radius.

    Candidates are visited by decreasing score. A candidate is rejected when
    its centre lies within ``beta * r_accepted`` of an accepted pick (the seed
    rule) or, with ``symmetric=True``, also when an accepted pick lies within
    ``beta * r_candidate`` of it, so a large spurious blob centred between
    several accepted small particles is rejected as well.

    Parameters
    ----------
    xy : (K, 2) ndarray
        Centres (any consistent order of axes).
    radius : (K,) ndarray
        Radii in the same units.
    score : (K,) ndarray
        Higher is better. Ties keep the input order.
    beta : float
        Exclusion radius as a fraction of the radius, > 0.
    symmetric : bool
        Also apply the candidate's own radius (see above).

    Returns
    -------
    keep : (K,) ndarray of bool
    """
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    xy = np.asarray(xy, dtype=float).reshape(-1, 2)
    radius = np.asarray(radius, dtype=float)
    score = np.asarray(score, dtype=float)
    n = len(xy)
    keep = np.zeros(n, dtype=bool)
    if n == 0:
        return keep
    tree = cKDTree(xy)
    order = np.argsort(-score, kind="stable")
    suppressed = np.zeros(n, dtype=bool)
    own = tree.query_ball_point(xy, beta * radius) if symmetric else None
    for i in order:
        if suppressed[i]:
            continue
        if symmetric and any(keep[j] for j in own[i]):
            continue
        keep[i] = True
        suppressed[tree.query_ball_point(xy[i], beta * radius[i])] = True
    return keep


def circle_overlap(r1: np.ndarray, r2: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Intersection area of circles with radii ``r1``, ``r2`` and centre distance ``d``."""
    r1, r2, d = np.broadcast_arrays(np.asarray(r1, float), np.asarray(r2, float), np.asarray(d, float))
    out = np.zeros(r1.shape)
    inside = d <= np.abs(r1 - r2)
    out[inside] = np.pi * np.minimum(r1, r2)[inside] ** 2
    part = (~inside) & (d < r1 + r2)
    if part.any():
        a, b, c = r1[part], r2[part], d[part]
        alpha = np.arccos(np.clip((c * c + a * a - b * b) / (2 * c * a), -1, 1))
        beta = np.arccos(np.clip((c * c + b * b - a * a) / (2 * c * b), -1, 1))
        out[part] = a * a * alpha + b * b * beta - 0.5 * np.sqrt(
            np.clip((-c + a + b) * (c + a - b) * (c - a + b) * (c + a + b), 0, None)
        )
    return out
