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
    max_containment: float = 1.0,
    second: np.ndarray | None = None,
    may_outrank: np.ndarray | None = None,
    inner_ratio: float = 0.7,
) -> np.ndarray:
    """Greedy, score-ordered suppression with a size-dependent exclusion radius.

    Candidates are visited by decreasing score. A candidate is rejected when
    its centre lies within ``beta * r_accepted`` of an accepted pick (the seed
    rule) or, with ``symmetric=True``, also when an accepted pick lies within
    ``beta * r_candidate`` of it, so a large spurious blob centred between
    several accepted small particles is rejected as well.

    Parameters
    ----------
    xy : (K, D) ndarray
        Centres (any consistent order of axes; D = 2 for micrographs, 3
        for tomograms).
    radius : (K,) ndarray
        Radii in the same units.
    score : (K,) ndarray
        Higher is better. Ties keep the input order.
    beta : float
        Exclusion radius as a fraction of the radius, > 0.
    symmetric : bool
        Also apply the candidate's own radius (see above).
    max_containment : float in (0, 1]
        Also reject a candidate when its intersection with an accepted pick
        covers more than this fraction of the smaller of the two circles
        (arcs of a larger particle's edge, picks inside a vesicle). 1 turns the
        test off. In 3D the circle formula is applied to the spheres' centre
        distance (a close, conservative approximation).
    second : (K,) ndarray, optional
        A second measure (higher is better) by which a larger candidate may
        outrank a smaller one inside it. When two candidates conflict, the
        smaller radius is at most ``inner_ratio`` of the larger and the
        larger is ahead on ``second`` (though behind on ``score``), the
        larger wins: a smaller candidate beats a larger one around it only
        by being ahead on both measures. (The dark grains or arcs of a large
        particle's rim, stronger than the particle by one measure, then do
        not cover it with small picks.) With such pairs the conflicts are
        resolved in rounds: every candidate that wins all its conflicts with
        the candidates still in play is kept and removes those it beats;
        where none does (a cycle of preferences) the first by ``score`` is
        kept. Without them this is the greedy pass, exactly.
    may_outrank : (K,) ndarray of bool, optional
        The candidates allowed to outrank by ``second`` (default: all).
    inner_ratio : float in (0, 1)
        See ``second``.

    Returns
    -------
    keep : (K,) ndarray of bool
    """
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if not 0 < max_containment <= 1:
        raise ValueError(f"max_containment must be in (0, 1], got {max_containment}")
    if not 0 < inner_ratio < 1:
        raise ValueError(f"inner_ratio must be in (0, 1), got {inner_ratio}")
    xy = _points(xy)
    radius = np.asarray(radius, dtype=float)
    score = np.asarray(score, dtype=float)
    n = len(xy)
    _check_lengths(n, radius=radius, score=score, second=second, may_outrank=may_outrank)
    if n == 0:
        return np.zeros(0, dtype=bool)
    order = np.argsort(-score, kind="stable")
    rank = np.empty(n, dtype=np.intp)
    rank[order] = np.arange(n)
    # Every pair close enough to conflict, as (later, earlier) in visiting order.
    rmax = float(radius.max())
    reach = max(beta, 2.0 if max_containment < 1 else 0.0) * rmax
    pairs = cKDTree(xy).query_pairs(reach, output_type="ndarray").reshape(-1, 2)
    swap = rank[pairs[:, 0]] < rank[pairs[:, 1]]
    later = np.where(swap, pairs[:, 1], pairs[:, 0])
    earlier = np.where(swap, pairs[:, 0], pairs[:, 1])
    outranked = False
    if second is not None and len(later):
        second = np.asarray(second, dtype=float)
        flip = (radius[earlier] <= inner_ratio * radius[later]) & (second[later] > second[earlier])
        if may_outrank is not None:
            flip &= np.asarray(may_outrank, dtype=bool)[later]
        if flip.any():
            outranked = True
            later[flip], earlier[flip] = earlier[flip], later[flip]
    diff = xy[later] - xy[earlier]
    d2 = diff[:, 0] * diff[:, 0]
    for axis in range(1, diff.shape[1]):
        d2 += diff[:, axis] * diff[:, axis]
    # The later one is rejected if the earlier one is kept and the later
    # centre lies within beta * r of it (the seed rule), or (symmetric) the
    # earlier centre within beta * r of the later one, or their circles
    # overlap by more than max_containment of the smaller one.
    conflict = d2 <= (beta * radius[earlier]) ** 2
    if symmetric:
        conflict |= d2 <= (beta * radius[later]) ** 2
    if max_containment < 1:
        touch = np.flatnonzero(~conflict & (d2 < (radius[later] + radius[earlier]) ** 2))
        rl, re = radius[later[touch]], radius[earlier[touch]]
        inter = circle_overlap(rl, re, np.sqrt(d2[touch]))
        conflict[touch] = inter / np.minimum(np.pi * rl**2, np.pi * re**2) > max_containment
    later, earlier = later[conflict], earlier[conflict]
    if outranked:
        return _resolve_in_rounds(n, earlier, later, order)
    # Greedy pass by decreasing score: a candidate without conflicts is kept;
    # the others look up the earlier candidates they conflict with (plain
    # Python lists: the look-ups are short).
    if len(later) == 0:
        return np.ones(n, dtype=bool)
    by_later = np.argsort(later, kind="stable")
    bounds = np.searchsorted(later[by_later], np.arange(n + 1)).tolist()
    earlier = earlier[by_later].tolist()
    kept = [True] * n
    for i in order[np.diff(bounds)[order] > 0].tolist():
        kept[i] = not any(kept[j] for j in earlier[bounds[i] : bounds[i + 1]])
    return np.array(kept, dtype=bool)


def _resolve_in_rounds(n: int, winner: np.ndarray, loser: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Keep candidates that win every conflict still in play, round by round (see :func:`size_aware_nms`)."""
    kept = np.zeros(n, dtype=bool)
    alive = np.ones(n, dtype=bool)
    while alive.any():
        live = alive[winner] & alive[loser]
        winner, loser = winner[live], loser[live]
        top = alive.copy()
        top[loser] = False
        if not top.any():
            # A cycle of preferences: the first alive candidate by score goes first.
            first = order[alive[order]][0]
            top[first] = True
            beaten = np.concatenate([loser[winner == first], winner[loser == first]])
        else:
            beaten = loser[top[winner]]
        kept |= top
        alive &= ~top
        alive[beaten] = False
    return kept


def _check_lengths(n: int, **arrays) -> None:
    """Raise a ValueError naming the first of ``arrays`` (None: not given) that is not (n,)."""
    for name, values in arrays.items():
        if values is not None and np.shape(values) != (n,):
            raise ValueError(f"{name} must have one value per centre ({n}), got shape {np.shape(values)}")


def _points(xy) -> np.ndarray:
    """(K, D) float centres: 2D picks or (x, y, z) in tomograms; a flat array is read as 2D."""
    xy = np.asarray(xy, dtype=float)
    return xy.reshape(-1, 2) if xy.ndim != 2 else xy


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


def containment_distance(max_containment: float) -> float:
    """Centre distance, in units of the larger radius, within which two
    circles always overlap by more than ``max_containment`` of the smaller.

    Equal circles are the worst case for a circle whose centre lies inside
    the other (the share of it covered only grows as it shrinks), so the
    distance is the equal circles' one, at most 1 (beyond, a small enough
    circle is not covered at all). With ``max_containment`` < 1 in
    :func:`size_aware_nms`, a ``beta`` below this distance suppresses
    nothing the containment test does not (0.984 for the default 0.4);
    with ``max_containment=1`` it is 0.

    Examples
    --------
    >>> round(containment_distance(0.4), 3)
    0.984
    """
    if not 0 < max_containment <= 1:
        raise ValueError(f"max_containment must be in (0, 1], got {max_containment}")
    if max_containment == 1:
        return 0.0
    lo, hi = 0.0, 2.0  # the equal circles' shared fraction falls from 1 to 0 over [0, 2]
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if circle_overlap(1.0, 1.0, mid) / np.pi > max_containment:
            lo = mid
        else:
            hi = mid
    return min(lo, 1.0)


def overlap_nms(
    xy: np.ndarray,
    radius: np.ndarray,
    score: np.ndarray,
    *,
    max_iou: float = 0.2,
    max_containment: float = 0.4,
) -> np.ndarray:
    """Greedy suppression by circle overlap, for touching particles.

    A candidate is rejected when, against an already accepted pick, the
    circles' intersection-over-union exceeds ``max_iou`` or the intersection
    covers more than ``max_containment`` of the smaller circle. Touching
    circles (IoU ~ 0) are both kept.

    Parameters
    ----------
    xy : (K, D) ndarray
    radius, score : (K,) ndarrays
    max_iou : float in (0, 1]
    max_containment : float in (0, 1]

    Returns
    -------
    keep : (K,) ndarray of bool
    """
    if not 0 < max_iou <= 1:
        raise ValueError(f"max_iou must be in (0, 1], got {max_iou}")
    if not 0 < max_containment <= 1:
        raise ValueError(f"max_containment must be in (0, 1], got {max_containment}")
    xy = _points(xy)
    radius = np.asarray(radius, dtype=float)
    n = len(xy)
    _check_lengths(n, radius=radius, score=score)
    keep = np.zeros(n, dtype=bool)
    if n == 0:
        return keep
    tree = cKDTree(xy)
    order = np.argsort(-np.asarray(score, dtype=float), kind="stable")
    rmax = float(radius.max())
    for i in order:
        iou, containment = _overlap_with_kept(i, xy, radius, keep, tree, rmax)
        if np.any(iou > max_iou) or np.any(containment > max_containment):
            continue
        keep[i] = True
    return keep


def _overlap_with_kept(i, xy, radius, keep, tree, rmax) -> tuple[np.ndarray, np.ndarray]:
    """IoU and containment (intersection / smaller area) of circle ``i`` with every kept circle it touches."""
    near = np.asarray([j for j in tree.query_ball_point(xy[i], radius[i] + rmax) if keep[j]], dtype=np.intp)
    if len(near) == 0:
        return np.empty(0), np.empty(0)
    inter = circle_overlap(radius[i], radius[near], np.linalg.norm(xy[near] - xy[i], axis=1))
    a_i, a_j = np.pi * radius[i] ** 2, np.pi * radius[near] ** 2
    return inter / (a_i + a_j - inter), inter / np.minimum(a_i, a_j)


def contained_mask(
    xy: np.ndarray,
    radius: np.ndarray,
    *,
    tolerance: float = 0.1,
    max_ratio: float = 0.75,
) -> np.ndarray:
    """Picks that sit inside a larger pick (arcs of a ring, texture inside a vesicle).

    Larger picks are visited first; a pick ``j`` is marked when a larger,
    unmarked pick ``i`` satisfies ``dist(i, j) + r_j <= (1 + tolerance) * r_i``
    and ``r_j <= max_ratio * r_i``.

    Returns
    -------
    inside : (K,) ndarray of bool
    """
    xy = _points(xy)
    radius = np.asarray(radius, dtype=float)
    n = len(xy)
    _check_lengths(n, radius=radius)
    inside = np.zeros(n, dtype=bool)
    if n == 0:
        return inside
    tree = cKDTree(xy)
    for i in np.argsort(-radius, kind="stable"):
        if inside[i]:
            continue
        for j in tree.query_ball_point(xy[i], (1 + tolerance) * radius[i]):
            if j == i or inside[j] or radius[j] > max_ratio * radius[i]:
                continue
            if np.linalg.norm(xy[j] - xy[i]) + radius[j] <= (1 + tolerance) * radius[i]:
                inside[j] = True
    return inside
