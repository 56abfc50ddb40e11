"""Post-processing of neural-network heatmaps into one pick per particle.

Segmentation networks (U-Net style) output a per-pixel probability that a
pixel belongs to a particle; centre networks (CenterNet style) output a map
that peaks at particle centres. This module turns either, or a mask map
combined with a centre map, into instances (one integer label per particle)
and then into picks with a centre and an equivalent diameter.

All functions work on 2D images ``(M, N)`` and on 3D volumes ``(P, M, N)``.

References
----------
.. [1] O. Ronneberger, P. Fischer, T. Brox, "U-Net: convolutional networks for
       biomedical image segmentation", MICCAI 2015. doi:10.1007/978-3-319-24574-4_28
.. [2] X. Zhou, D. Wang, P. Krähenbühl, "Objects as points",
       arXiv:1904.07850 (2019).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi

PEAK_SOURCES = ("distance", "probability")
#: How far a float map may stray outside [0, 1] (resampling overshoot) and still be probabilities.
FLOAT_SLACK = 0.1


def scale_to_unit(data: np.ndarray, *, eight_bit: bool) -> np.ndarray:
    """Scale an integer-valued map to float32 in [0, 1].

    Parameters
    ----------
    data : ndarray
        A map of non-negative integer values (of any dtype, or colour
        samples averaged by a reader).
    eight_bit : bool
        The map was stored in 8 bits.

    Returns
    -------
    scaled : ndarray of float32, same shape
        A map holding only 0 and one other value (0/1, 0/255, a selection
        drawn in colour) divided by that value; other ``eight_bit`` maps
        (graded 8-bit probabilities) by 255; deeper ones by their largest
        value. The ``mask`` filter and the ``heatmap`` detector both scale
        with it, so a mask and a map saved alike read alike.
    """
    top = float(np.max(data)) if data.size else 0.0
    if top > 1 and eight_bit and np.any((data != 0) & (data != top)):
        top = 255.0  # a probability map stored in 8 bits: its largest value is not 1
    return np.asarray(data, dtype=np.float32) / np.float32(top if top > 1 else 1.0)


def normalise_heatmap(heatmap: np.ndarray, *, logits: bool = False) -> np.ndarray:
    """Return a heatmap as float32 probabilities.

    Parameters
    ----------
    heatmap : (M, N) or (P, M, N) ndarray
        Network output. Integer maps are scaled by :func:`scale_to_unit`:
        a map holding only 0 and one other value (a 0/1 mask of any type,
        such as the ``mask`` writer's uint8 TIFF, 0/255, 0/200) is divided
        by that value; other ``uint8`` maps by 255 and other integer maps
        by their largest value. Boolean maps become 0/1. Float maps are used as they are and must hold
        probabilities: values below -0.1 or above 1.1 (a map scaled to
        0..255, logits) are refused, as no threshold in (0, 1] would read
        them right. Integer maps with negative values (-1/1 labels, a
        signed 8-bit map) are refused for the same reason.
    logits : bool, optional
        The map holds logits: apply the logistic function to its values as
        they are (integer maps are not scaled first).

    Raises
    ------
    ValueError
        For a map that is not 2D or 3D, not real-valued, not finite, a
        float map outside [-0.1, 1.1] or an integer map with negative
        values without ``logits``.

    Returns
    -------
    prob : ndarray of float32, same shape
    """
    hm = np.asarray(heatmap)
    if hm.ndim not in (2, 3):
        raise ValueError(f"heatmap must be 2D or 3D, got {hm.ndim}D")
    if hm.dtype != bool and (np.iscomplexobj(hm) or not np.issubdtype(hm.dtype, np.number)):
        raise ValueError(f"heatmap must be real-valued, got dtype {hm.dtype}")
    out = hm.astype(np.float32, copy=True)
    if not logits and np.issubdtype(hm.dtype, np.integer) and out.size and float(out.min()) < 0.0:
        # -1/1 labels, a signed 8-bit map: no threshold in (0, 1] reads them as probabilities.
        raise ValueError(f"heatmap holds negative integers ({out.min():.0f} to {out.max():.0f}), not probabilities "
                         "or a 0/1 mask: map the background to 0 (e.g. -1 to 0), or set detector.logits=true "
                         "for integer logits")
    if not logits and np.issubdtype(hm.dtype, np.integer):
        out = scale_to_unit(hm, eight_bit=hm.dtype == np.uint8)
    if not logits and np.issubdtype(hm.dtype, np.floating) and out.size and np.all(np.isfinite(out)):
        lo, hi = float(out.min()), float(out.max())
        if lo < -FLOAT_SLACK or hi > 1.0 + FLOAT_SLACK:
            raise ValueError(f"heatmap values run from {lo:.4g} to {hi:.4g}, not probabilities in [0, 1]: "
                             "set detector.logits=true for logits, or scale the map to [0, 1]")
    if logits:
        with np.errstate(over="ignore"):
            out = (1.0 / (1.0 + np.exp(-out))).astype(np.float32)
    if not np.all(np.isfinite(out)):
        raise ValueError("heatmap contains NaN or infinite values")
    return out


def equivalent_diameter(size: np.ndarray, ndim: int) -> np.ndarray:
    """Diameter of the disc (2D) or ball (3D) with the given area or volume."""
    size = np.asarray(size, dtype=float)
    if ndim == 2:
        return 2.0 * np.sqrt(size / math.pi)
    if ndim == 3:
        return 2.0 * np.cbrt(3.0 * size / (4.0 * math.pi))
    raise ValueError(f"ndim must be 2 or 3, got {ndim}")


def _structure(ndim: int) -> np.ndarray:
    # Face connectivity (4 in 2D, 6 in 3D): diagonal contacts do not merge particles.
    return ndi.generate_binary_structure(ndim, 1)


def remove_small(mask: np.ndarray, *, min_diameter: float) -> np.ndarray:
    """Drop connected components whose equivalent diameter is below ``min_diameter``.

    Parameters
    ----------
    mask : (M, N) or (P, M, N) ndarray of bool
    min_diameter : float
        In pixels of ``mask``.

    Returns
    -------
    kept : ndarray of bool, same shape
    """
    mask = np.asarray(mask, dtype=bool)
    if min_diameter <= 0:
        return mask.copy()
    labels, n = ndi.label(mask, structure=_structure(mask.ndim))
    if n == 0:
        return mask.copy()
    counts = np.bincount(labels.ravel(), minlength=n + 1)
    big = equivalent_diameter(counts, mask.ndim) >= min_diameter
    big[0] = False
    return big[labels]


def find_centres(
    centre_map: np.ndarray,
    *,
    threshold: float = 0.5,
    min_distance: int = 1,
    labels: np.ndarray | None = None,
) -> np.ndarray:
    """Local maxima of a centre map at least ``min_distance`` apart.

    Parameters
    ----------
    centre_map : (M, N) or (P, M, N) ndarray
    threshold : float
        Minimum value of a maximum.
    min_distance : int
        Minimum separation of two maxima (Chebyshev distance, pixels);
        of two closer maxima the higher one is kept.
    labels : ndarray of int, optional
        Look for maxima in each labelled region separately (every region
        yields at least one maximum if any pixel passes the threshold).

    Returns
    -------
    centres : (K, ndim) ndarray of int
        Indices of the maxima, by decreasing value (stable). A maximum that
        is a plateau (neighbouring pixels of equal value: the centre of the
        distance map of a disc of even width, a saturated probability) is
        one maximum: its pixel nearest the plateau's centroid.
    """
    from skimage.feature import peak_local_max

    if min_distance < 1:
        raise ValueError(f"min_distance must be >= 1, got {min_distance}")
    cmap = np.asarray(centre_map, dtype=np.float32)
    if not (cmap >= threshold).any():
        return np.empty((0, cmap.ndim), dtype=np.intp)
    peaks = peak_local_max(
        cmap,
        min_distance=int(min_distance),
        threshold_abs=float(threshold),
        exclude_border=False,
        labels=labels,
    )
    peaks = np.asarray(peaks, dtype=np.intp).reshape(-1, cmap.ndim)
    peaks = _one_per_plateau(cmap, peaks, labels)
    order = np.argsort(-cmap[tuple(peaks.T)], kind="stable")
    return peaks[order]


def _one_per_plateau(cmap: np.ndarray, peaks: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
    """``peaks`` with one pixel per plateau: the one nearest the plateau's centroid (the first on a tie).

    A plateau is a connected (8- or 26-connected) set of pixels none of
    which has a larger neighbour (with ``labels``: in its own region, and
    the plateau stays in one region): neighbours in it are equal, so it is
    one maximum however many of its pixels the peak search returned.
    """
    if len(peaks) < 2:
        return peaks
    full = np.ones((3,) * cmap.ndim, dtype=bool)
    if labels is None:
        top = cmap >= ndi.maximum_filter(cmap, footprint=full, mode="nearest")
    else:
        region = np.asarray(labels)
        top = region > 0
        for shift in np.argwhere(full) - 1:
            if not shift.any():
                continue
            src = tuple(slice(max(0, -d), n - max(0, d)) for d, n in zip(shift, cmap.shape))
            dst = tuple(slice(max(0, d), n - max(0, -d)) for d, n in zip(shift, cmap.shape))
            top[dst] &= (region[dst] != region[src]) | (cmap[dst] >= cmap[src])
    plateau = ndi.label(top, structure=full)[0].astype(np.int64)
    if labels is not None:  # a plateau that touches two regions is one per region
        plateau = np.where(top, plateau * (int(region.max()) + 1) + region, 0)
    ids = plateau[tuple(peaks.T)]
    ids = np.where(ids > 0, ids, -1 - np.arange(len(ids)))  # a peak off every plateau stands alone
    uniq, first, counts = np.unique(ids, return_index=True, return_counts=True)
    if len(uniq) == len(ids):
        return peaks
    shared = uniq[counts > 1]
    # Centroids of the plateaus that hold several peaks.
    where = np.nonzero(np.isin(plateau, shared))
    inv = np.searchsorted(shared, plateau[where])
    size = np.bincount(inv, minlength=len(shared)).astype(float)
    centroid = np.stack([np.bincount(inv, weights=w.astype(float), minlength=len(shared)) for w in where], axis=1) / size[:, None]
    keep = list(first[counts == 1])
    for j, pid in enumerate(shared):
        members = np.flatnonzero(ids == pid)
        dist = np.sum((peaks[members] - centroid[j]) ** 2, axis=1)
        keep.append(members[int(np.argmin(dist))])
    return peaks[np.sort(np.asarray(keep))]


def fuse_instances(
    mask: np.ndarray,
    centres: np.ndarray,
    *,
    check_center: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Split a foreground mask into instances, one per centre.

    Every foreground pixel is given to the nearest centre in its own connected
    component (a Voronoi split restricted to the component, computed with one
    Euclidean distance transform per component that holds several centres).

    Parameters
    ----------
    mask : (M, N) or (P, M, N) ndarray of bool
        Foreground (thresholded probability map).
    centres : (K, ndim) array_like of int
        Centre indices (e.g. peaks of a centre map). Centres on background
        pixels are ignored.
    check_center : bool, optional
        ``False``: an instance exists only where a centre is; components that
        hold no centre are background. ``True``: the mask decides what is a
        particle; a component is split only when it holds more than one
        centre, and a component without a centre is kept as one instance.

    Returns
    -------
    labels : ndarray of int32, same shape as ``mask``
        0 for background, 1..L for instances.
    seeds : (L, ndim) ndarray of float
        For instance ``i`` (row ``i - 1``) the centre that made it, or NaN
        for a component kept without a centre (``check_center=True``).
    """
    mask = np.asarray(mask, dtype=bool)
    ndim = mask.ndim
    centres = np.asarray(centres, dtype=np.intp).reshape(-1, ndim)
    if len(centres):
        inside = np.all((centres >= 0) & (centres < np.array(mask.shape)), axis=1)
        centres = centres[inside]
        centres = centres[mask[tuple(centres.T)]]
    comp, n = ndi.label(mask, structure=_structure(ndim))
    out = np.zeros(mask.shape, dtype=np.int32)
    seeds: list[np.ndarray] = []
    if n == 0:
        return out, np.empty((0, ndim))
    comp_of_centre = comp[tuple(centres.T)] if len(centres) else np.empty(0, dtype=np.int32)
    by_comp: dict[int, list[int]] = {}
    for i, c in enumerate(comp_of_centre):
        by_comp.setdefault(int(c), []).append(i)
    next_id = 1
    for ci, sl in enumerate(ndi.find_objects(comp), start=1):
        if sl is None:
            continue
        members = by_comp.get(ci, [])
        region = comp[sl] == ci
        view = out[sl]
        if not members:
            if check_center:
                view[region] = next_id
                seeds.append(np.full(ndim, np.nan))
                next_id += 1
            continue
        if len(members) == 1:
            view[region] = next_id
            seeds.append(centres[members[0]].astype(float))
            next_id += 1
            continue
        # Several centres in one component: nearest-centre split via the
        # distance transform's nearest-seed indices.
        offset = np.array([s.start for s in sl])
        local = centres[members] - offset
        seed_img = np.ones(region.shape, dtype=bool)
        seed_img[tuple(local.T)] = False
        idx = ndi.distance_transform_edt(seed_img, return_distances=False, return_indices=True)
        owner = np.full(region.shape, -1, dtype=np.int64)
        owner[tuple(local.T)] = np.arange(len(members))
        nearest = owner[tuple(idx)]
        ids = next_id + np.arange(len(members), dtype=np.int32)
        view[region] = ids[nearest[region]]
        seeds.extend(centres[m].astype(float) for m in members)
        next_id += len(members)
    return out, (np.array(seeds, dtype=float).reshape(-1, ndim))


def _clipped_disc_moments(cy: float, cx: float, r: float, lo: tuple, hi: tuple) -> tuple[float, float, float]:
    """Area and centroid (row, col) of the disc ``(cy, cx, r)`` inside the box ``[lo, hi]`` (row, col bounds).

    Integrated over the columns with ``x = cx + r sin(t)`` (the chord's
    half-length ``r cos(t)`` is smooth in ``t``), split where the chord's ends
    cross the box's rows, so Gauss-Legendre is exact to round-off.
    """
    (ylo, xlo), (yhi, xhi) = lo, hi
    t1 = math.asin(min(max((xlo - cx) / r, -1.0), 1.0))
    t2 = math.asin(min(max((xhi - cx) / r, -1.0), 1.0))
    cuts = [t1, t2]
    for d in (abs(cy - ylo), abs(yhi - cy)):
        if d < r:
            cuts += [math.acos(d / r), -math.acos(d / r)]
    cuts = sorted(t for t in set(cuts) if t1 <= t <= t2)
    u, w = np.polynomial.legendre.leggauss(12)
    area = my = mx = 0.0
    for a, b in zip(cuts[:-1], cuts[1:]):
        t = 0.5 * (a + b) + 0.5 * (b - a) * u
        half = r * np.cos(t)
        y0, y1 = np.maximum(cy - half, ylo), np.minimum(cy + half, yhi)
        da = np.clip(y1 - y0, 0.0, None) * half * (0.5 * (b - a) * w)  # chord length * dx
        area += float(da.sum())
        my += float((0.5 * (y0 + y1) * da).sum())
        mx += float(((cx + r * np.sin(t)) * da).sum())
    if area <= 0:
        return 0.0, cy, cx
    return area, my / area, mx / area


def cut_disc(area: float, centroid, lo, hi) -> tuple[np.ndarray, float] | None:
    """The disc whose part inside a box has the given area and centroid.

    A particle cut by the image border shows only its part inside: that
    part's centroid lies inward of the particle's centre and its equivalent
    diameter is too small (a disc cut through its centre: 0.42 radii inward,
    0.71 of the diameter). The disc matching both is the particle.

    Parameters
    ----------
    area : float
        Pixel count of the visible part.
    centroid : (2,) array_like
        Its centroid (row, col).
    lo, hi : (2,) array_like
        The box: the image spans ``lo[a] <= coordinate <= hi[a]`` along axis
        ``a`` (pixel edges, e.g. ``-0.5`` and ``size - 0.5``).

    Returns
    -------
    centre, radius : (2,) ndarray and float, or None
        The disc (its centre may lie outside the box); the equivalent disc
        at the centroid when that does not reach past the box; None when no
        disc matches (the fit did not converge).
    """
    from scipy.optimize import least_squares

    if not area > 0:
        raise ValueError(f"area must be > 0, got {area}")
    g = np.asarray(centroid, dtype=float)
    r0 = math.sqrt(area / math.pi)
    lo, hi = tuple(map(float, lo)), tuple(map(float, hi))
    if np.all(g - r0 >= np.asarray(lo)) and np.all(g + r0 <= np.asarray(hi)):
        return g, r0

    def residual(p):
        a, y, x = _clipped_disc_moments(p[0], p[1], math.exp(p[2]), lo, hi)
        return [a / area - 1.0, (y - g[0]) / r0, (x - g[1]) / r0]

    fit = least_squares(residual, [g[0], g[1], math.log(r0)], xtol=1e-10, ftol=1e-10, gtol=1e-10)
    if not fit.success or np.max(np.abs(fit.fun)) > 1e-4:
        return None
    return np.asarray(fit.x[:2], dtype=float), float(math.exp(fit.x[2]))


def instance_table(
    labels: np.ndarray,
    prob: np.ndarray,
    *,
    seeds: np.ndarray | None = None,
    centre: str = "centroid",
    extent: tuple[float, float] | None = None,
) -> dict[str, np.ndarray]:
    """Centre, size and score of every instance of a label image.

    Parameters
    ----------
    labels : (M, N) or (P, M, N) ndarray of int
        0 = background, instances 1..L.
    prob : ndarray, same shape
        Probabilities; the score of an instance is its largest value.
    seeds : (L, ndim) ndarray, optional
        Centres from :func:`fuse_instances`, used with ``centre='peak'``
        (rows of NaN fall back to the centroid).
    centre : {'centroid', 'peak'}
        Report the centroid of the instance's pixels (sub-pixel, robust for
        masks) or the seed that made it (for centre networks).
    extent : (2,) tuple of float, optional
        2D only: the image's size (rows, cols) in pixels of ``labels``
        (default ``labels.shape``; less when the map reaches past the
        image). An instance with pixels on its border is cut by it: its
        ``diameter``, and with ``centre='centroid'`` its centre, are those
        of the disc whose part inside the image has the instance's area and
        centroid (:func:`cut_disc`); the centre may then lie outside the
        image. Volumes keep the equivalent diameter and centroid.

    Returns
    -------
    table : dict of (L,) ndarrays
        ``coords`` (L, ndim) in (plane,) row, col order; ``size`` (pixel
        count); ``diameter`` (equivalent diameter, or that of the cut disc);
        ``score``; ``label``; ``cut`` (bool: a disc fitted to an instance
        cut by the border). Instances without pixels are left out.
    """
    if centre not in ("centroid", "peak"):
        raise ValueError(f"centre must be 'centroid' or 'peak', got {centre!r}")
    labels = np.asarray(labels)
    ndim = labels.ndim
    n = int(labels.max(initial=0))
    fg = np.nonzero(labels)
    lab = labels[fg].astype(np.intp)
    size = np.bincount(lab, minlength=n + 1).astype(float)
    coords = np.zeros((n + 1, ndim))
    with np.errstate(invalid="ignore", divide="ignore"):
        for a in range(ndim):
            coords[:, a] = np.bincount(lab, weights=fg[a].astype(float), minlength=n + 1) / size
    score = np.zeros(n + 1)
    if n:
        np.maximum.at(score, lab, np.asarray(prob, dtype=float)[fg])
    ids = np.nonzero(size)[0]
    ids = ids[ids > 0]
    coords = coords[ids]
    diameter = equivalent_diameter(size[ids], ndim)
    cut = np.zeros(len(ids), dtype=bool)
    if ndim == 2 and len(ids):
        bounds = np.minimum(labels.shape, labels.shape if extent is None else np.asarray(extent, dtype=float))
        # Instances with a pixel on the image's border: the first or last row
        # or column. The last pixel of a map that reaches past the image is
        # only partly in it and may be background: then the one before it
        # counts, and the instance's own edge is the border seen in the map.
        first = np.full((n + 1, 2), np.inf)
        last = np.full((n + 1, 2), -np.inf)
        for a in range(2):
            np.minimum.at(first[:, a], lab, fg[a])
            np.maximum.at(last[:, a], lab, fg[a])
        at_end = last[ids] >= bounds - 1.5
        touch = np.any((first[ids] <= 0) | at_end, axis=1)
        for j in np.flatnonzero(touch):
            hi = np.where(at_end[j], last[ids[j]] + 0.5, bounds - 0.5)
            disc = cut_disc(size[ids[j]], coords[j], (-0.5, -0.5), tuple(hi))
            if disc is not None:
                if centre == "centroid":
                    coords[j] = disc[0]
                diameter[j] = 2.0 * disc[1]
                cut[j] = bool(np.any(disc[0] - disc[1] < -0.5) or np.any(disc[0] + disc[1] > hi))
    if centre == "peak" and seeds is not None and len(seeds):
        s = np.asarray(seeds, dtype=float)[ids - 1]
        ok = np.all(np.isfinite(s), axis=1)
        coords[ok] = s[ok]
    return {
        "label": ids.astype(np.int64),
        "coords": coords,
        "size": size[ids],
        "diameter": diameter,
        "score": score[ids],
        "cut": cut,
    }


def heatmap_instances(
    heatmap: np.ndarray,
    *,
    threshold: float = 0.5,
    min_distance: int = 1,
    min_diameter: float = 0.0,
    peaks: str = "distance",
    centre_map: np.ndarray | None = None,
    centre_threshold: float = 0.5,
    check_center: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Instances of a probability map (optionally with a centre map).

    Parameters
    ----------
    heatmap : (M, N) or (P, M, N) ndarray
        Probabilities in [0, 1] (see :func:`normalise_heatmap`).
    threshold : float
        Foreground is ``heatmap >= threshold``.
    min_distance : int
        Minimum distance between two centres, in heatmap pixels.
    min_diameter : float
        Components and instances whose equivalent diameter (heatmap pixels)
        is smaller are removed.
    peaks : {'distance', 'probability'}
        Without a centre map, where the centres come from: maxima of the
        Euclidean distance to the background (works for flat segmentation
        masks and soft maps alike; touching round particles give one maximum
        each), or maxima of the probability itself (centre-style heatmaps).
        A component is split only when it holds several centres.
    centre_map : ndarray, optional
        A second map (same shape) whose maxima above ``centre_threshold`` are
        the centres; the foreground is split by :func:`fuse_instances`.
    centre_threshold : float
        Minimum value of a centre in ``centre_map``.
    check_center : bool
        With ``centre_map``: see :func:`fuse_instances`.

    Returns
    -------
    labels : ndarray of int32
        Instance labels (0 = background).
    seeds : (L, ndim) ndarray of float
        The centre that made each instance (NaN if none).
    """
    if peaks not in PEAK_SOURCES:
        raise ValueError(f"peaks must be one of {PEAK_SOURCES}, got {peaks!r}")
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    prob = np.asarray(heatmap, dtype=np.float32)
    fg = remove_small(prob >= threshold, min_diameter=min_diameter)
    if centre_map is not None:
        cmap = np.asarray(centre_map, dtype=np.float32)
        if cmap.shape != prob.shape:
            raise ValueError(f"centre_map shape {cmap.shape} differs from heatmap shape {prob.shape}")
        centres = find_centres(cmap, threshold=centre_threshold, min_distance=min_distance)
        labels, seeds = fuse_instances(fg, centres, check_center=check_center)
    else:
        comp, _ = ndi.label(fg, structure=_structure(fg.ndim))
        source = ndi.distance_transform_edt(fg).astype(np.float32) if peaks == "distance" else np.where(fg, prob, 0)
        floor = 0.5 if peaks == "distance" else threshold
        centres = find_centres(source, threshold=floor, min_distance=min_distance, labels=comp)
        labels, seeds = fuse_instances(fg, centres, check_center=True)
    if min_diameter > 0 and labels.max(initial=0) > 0:
        counts = np.bincount(labels.ravel())
        small = equivalent_diameter(counts, labels.ndim) < min_diameter
        small[0] = False
        if small.any():
            keep_ids = np.nonzero(~small)[0]
            keep_ids = keep_ids[keep_ids > 0]
            remap = np.zeros(len(counts), dtype=np.int32)
            remap[keep_ids] = np.arange(1, len(keep_ids) + 1, dtype=np.int32)
            labels = remap[labels]
            seeds = seeds[keep_ids - 1]
    return labels, seeds


def heatmap_picks(
    heatmap: np.ndarray,
    *,
    factor: int = 1,
    threshold: float = 0.5,
    min_distance: int = 1,
    min_diameter: float = 0.0,
    peaks: str = "distance",
    centre_map: np.ndarray | None = None,
    centre_threshold: float = 0.5,
    check_center: bool = False,
    centre: str = "centroid",
    image_shape: tuple[int, ...] | None = None,
) -> dict[str, np.ndarray]:
    """One pick per instance of a heatmap, in full-resolution coordinates.

    Parameters
    ----------
    heatmap : (M, N) or (P, M, N) ndarray
        Probabilities in [0, 1], on the micrograph's grid binned by ``factor``.
    factor : int
        The heatmap's pixel ``i`` covers micrograph pixels
        ``[i * factor, (i + 1) * factor)`` along every axis.
    threshold, min_distance, min_diameter, peaks, centre_map, centre_threshold, check_center
        See :func:`heatmap_instances` (distances in heatmap pixels).
    centre : {'centroid', 'peak'}
        See :func:`instance_table`.
    image_shape : tuple of int, optional
        The micrograph's full-resolution shape (default: the heatmap's
        shape times ``factor``). 2D: an instance on the micrograph's border
        is a particle cut by it, reported as the disc whose part inside has
        the instance's area and centroid (:func:`cut_disc`), its centre
        clipped to the micrograph (a particle more than half cut off is
        reported on the border).

    Returns
    -------
    picks : dict of (L,) ndarrays
        ``x_px`` (column), ``y_px`` (row), ``z_px`` (plane; 3D only),
        ``diameter_px`` (equivalent diameter; of the whole disc for an
        instance cut by the border), ``score`` (largest probability),
        ``size_px`` (pixel or voxel count), all on the full-resolution
        grid; ordered by decreasing score (stable).

    Examples
    --------
    >>> from skimage.draw import disk
    >>> hm = np.zeros((128, 128), np.float32)
    >>> hm[disk((40, 50), 20)] = 0.9
    >>> p = heatmap_picks(hm)
    >>> round(float(p["x_px"][0])), round(float(p["y_px"][0])), round(float(p["diameter_px"][0]))
    (50, 40, 40)
    """
    from lipoframe.algorithms.pyramid import check_factor, to_full_resolution

    factor = check_factor(factor)
    prob = np.asarray(heatmap, dtype=np.float32)
    labels, seeds = heatmap_instances(
        prob,
        threshold=threshold,
        min_distance=min_distance,
        min_diameter=min_diameter,
        peaks=peaks,
        centre_map=centre_map,
        centre_threshold=centre_threshold,
        check_center=check_center,
    )
    full = np.asarray(prob.shape) * factor if image_shape is None else np.asarray(image_shape[-prob.ndim:], dtype=float)
    t = instance_table(labels, prob, seeds=seeds, centre=centre, extent=tuple(full[-2:] / factor) if prob.ndim == 2 else None)
    coords = to_full_resolution(t["coords"], factor) if len(t["coords"]) else t["coords"]
    if len(coords) and t["cut"].any():  # a cut disc's centre may lie beyond the border
        coords = np.clip(coords, 0.0, full - 1.0)
    out = {
        "x_px": coords[:, -1].copy(),
        "y_px": coords[:, -2].copy(),
        "diameter_px": t["diameter"] * factor,
        "score": t["score"],
        "size_px": t["size"] * factor**prob.ndim,
    }
    if prob.ndim == 3:
        out["z_px"] = coords[:, 0].copy()
    order = np.argsort(-out["score"], kind="stable")
    return {k: v[order] for k, v in out.items()}
