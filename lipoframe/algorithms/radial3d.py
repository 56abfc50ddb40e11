"""Particle diameters from radial profiles around a centre (3D shells, or 2D rings).

The radial profile is the mean intensity in concentric shells of width one
voxel around a (sub-voxel) centre. With the particle bright, its outer
boundary is where the profile falls fastest: for a solid sphere and for a
membrane shell (vesicle) alike, and for any blur that is symmetric about the
boundary. :func:`edge_radius` finds that radius with sub-voxel precision.
An off-centre profile blurs the edge, so :func:`refine_diameters` alternates
it with :func:`match_centre`, a matched filter for a sharp-edged ball.
"""

from __future__ import annotations

import numpy as np


def radial_profile(
    image: np.ndarray,
    centre: np.ndarray,
    rmax: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Mean intensity in shells ``[i, i + 1)`` of distance from ``centre``.

    Parameters
    ----------
    image : (M, N) or (P, M, N) ndarray
    centre : (ndim,) array_like
        Centre in (plane,) row, col order (sub-pixel).
    rmax : float
        Largest distance to include.

    Returns
    -------
    mean : (B,) ndarray
        ``mean[i]`` is the average over voxels with ``i <= distance < i + 1``
        inside the image (NaN for a shell with no voxel inside).
    count : (B,) ndarray of int
        Voxels in each shell.
    """
    image = np.asarray(image)
    centre = np.asarray(centre, dtype=float)
    if centre.shape != (image.ndim,):
        raise ValueError(f"centre must have {image.ndim} coordinates, got shape {centre.shape}")
    if not rmax > 0:
        raise ValueError(f"rmax must be > 0, got {rmax}")
    nb = int(np.floor(rmax)) + 1
    lo = [max(0, int(np.floor(c - rmax))) for c in centre]
    hi = [min(n, int(np.ceil(c + rmax)) + 1) for c, n in zip(centre, image.shape)]
    if any(h <= l for l, h in zip(lo, hi)):
        return np.full(nb, np.nan), np.zeros(nb, dtype=np.int64)
    sl = tuple(slice(l, h) for l, h in zip(lo, hi))
    grids = np.ogrid[sl]
    dist = np.sqrt(sum((g - c) ** 2 for g, c in zip(grids, centre)))
    b = np.floor(dist).astype(np.intp).ravel()
    inside = b < nb
    vals = np.asarray(image[sl], dtype=float).ravel()[inside]
    b = b[inside]
    count = np.bincount(b, minlength=nb)
    total = np.bincount(b, weights=vals, minlength=nb)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return mean, count


def edge_radius(
    profile: np.ndarray,
    *,
    r_lo: float,
    r_hi: float,
) -> tuple[float, float]:
    """Radius where a radial profile falls fastest, within ``[r_lo, r_hi]``.

    Parameters
    ----------
    profile : (B,) ndarray
        From :func:`radial_profile` (bin ``i`` centred at ``i + 0.5``).
    r_lo, r_hi : float
        Search range of the radius.

    Returns
    -------
    radius : float
        Sub-voxel radius of the steepest fall (parabola through the three
        differences around the steepest one); NaN when the steepest fall is
        at an end of the range (no edge inside it) or the profile never falls.
    drop : float
        The fall per voxel there (positive), for a contrast score.
    """
    p = np.asarray(profile, dtype=float)
    diff = np.diff(p)  # diff[i] = p[i+1] - p[i], located at radius i + 1
    radii = np.arange(1, len(p), dtype=float)
    ok = np.isfinite(diff) & (radii >= r_lo) & (radii <= r_hi)
    if ok.sum() < 3:
        return float("nan"), 0.0
    idx = np.nonzero(ok)[0]
    i = idx[np.argmin(diff[idx])]
    if diff[i] >= 0 or i in (idx[0], idx[-1]):
        return float("nan"), max(0.0, -float(diff[i]))
    a, b, c = diff[i - 1], diff[i], diff[i + 1]
    denom = a - 2.0 * b + c
    off = 0.5 * (a - c) / denom if denom > 0 else 0.0
    return float(radii[i] + np.clip(off, -0.5, 0.5)), -float(b)


def match_centre(
    image: np.ndarray,
    centre: np.ndarray,
    radius: float,
    *,
    max_shift: float | None = None,
) -> np.ndarray:
    """Move a centre to the best match of a sharp ball-in-shell template.

    The template is a ball of ``radius`` (partial-volume edge) minus the
    shell ``[radius, 1.5 * radius]``, each normalised to unit sum, so it has
    zero mean and ignores a constant background. Its correlation with the
    image around ``centre`` peaks where a particle's edge lines up with the
    ball's edge; the peak is refined to sub-voxel precision with a parabola
    per axis. Solid particles and shells (vesicles) are both symmetric about
    their centre, so both are centred.

    Parameters
    ----------
    image : (M, N) or (P, M, N) ndarray
        Particles bright.
    centre : (ndim,) array_like
        Start, in (plane,) row, col order.
    radius : float
        Radius of the template, in pixels.
    max_shift : float, optional
        Largest move; default ``radius / 2``.

    Returns
    -------
    centre : (ndim,) ndarray
        The start unchanged if the patch leaves the image too much to match.
    """
    from scipy.signal import fftconvolve

    image = np.asarray(image)
    c = np.asarray(centre, dtype=float)
    ndim = image.ndim
    shift = 0.5 * radius if max_shift is None else float(max_shift)
    kr = int(np.ceil(1.5 * radius + 1))
    h = kr + int(np.ceil(shift)) + 1
    base = np.round(c).astype(int)
    lo = base - h
    hi = base + h + 1
    shape = np.array(image.shape)
    lo_c, hi_c = np.maximum(lo, 0), np.minimum(hi, shape)
    if np.any(hi_c - lo_c < 3):
        return c
    patch = np.asarray(image[tuple(slice(a, b) for a, b in zip(lo_c, hi_c))], dtype=np.float32)
    if np.any(lo_c != lo) or np.any(hi_c != hi):
        # Outside the image counts as background (the patch median), so the
        # template never matches the border itself.
        patch = np.pad(patch, [(int(a), int(b)) for a, b in zip(lo_c - lo, hi - hi_c)], constant_values=float(np.median(patch)))
    grids = np.ogrid[tuple(slice(-kr, kr + 1) for _ in range(ndim))]
    dist = np.sqrt(sum(g.astype(float) ** 2 for g in grids))
    ball = np.clip(radius + 0.5 - dist, 0.0, 1.0)
    shell = np.clip(dist - radius + 0.5, 0.0, 1.0) * np.clip(1.5 * radius + 0.5 - dist, 0.0, 1.0)
    kernel = (ball / ball.sum() - shell / max(shell.sum(), 1e-12)).astype(np.float32)
    score = fftconvolve(patch, kernel[(slice(None, None, -1),) * ndim], mode="same")
    grids_p = np.ogrid[tuple(slice(a, b) for a, b in zip(lo, hi))]
    far = np.sqrt(sum((g - ci) ** 2 for g, ci in zip(grids_p, c))) > shift
    inside = np.ones(score.shape, dtype=bool)
    for a, g in enumerate(grids_p):
        inside &= (g >= 0) & (g < shape[a])
    score = np.where(far | ~inside, -np.inf, score)
    best = np.unravel_index(int(np.argmax(score)), score.shape)
    if not np.isfinite(score[best]):
        return c
    out = np.array(best, dtype=float)
    for a in range(ndim):
        if 0 < best[a] < score.shape[a] - 1:
            lo_i = list(best)
            hi_i = list(best)
            lo_i[a] -= 1
            hi_i[a] += 1
            f0, fl, fh = score[best], score[tuple(lo_i)], score[tuple(hi_i)]
            denom = fl - 2.0 * f0 + fh
            if np.isfinite(fl) and np.isfinite(fh) and denom < 0:
                out[a] += float(np.clip(0.5 * (fl - fh) / denom, -0.5, 0.5))
    return out + lo


def refine_diameters(
    image: np.ndarray,
    centres: np.ndarray,
    diameters: np.ndarray,
    *,
    search: float = 0.4,
    recentre: bool = True,
    rounds: int = 2,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centres and diameters from the steepest fall of each particle's radial profile.

    Parameters
    ----------
    image : (M, N) or (P, M, N) ndarray
        Particles bright.
    centres : (K, ndim) ndarray
        Centres in (plane,) row, col order, in pixels of ``image``.
    diameters : (K,) ndarray
        Initial diameters (pixels of ``image``); the edge is searched within
        ``(1 +- search)`` times the initial radius.
    search : float
        Relative half-width of the search range, in (0, 1).
    recentre : bool
        Also try moving the centre: ``rounds`` times :func:`match_centre`
        with the current radius then the edge again, starting once from the
        given radius and once from the first edge radius; the result with
        the sharpest edge (best-centred profile) wins.
    rounds : int
        Centre/radius rounds when ``recentre`` (>= 1).

    Returns
    -------
    diameters : (K,) ndarray
        Refined diameters; NaN where no edge was found in the range.
    drop : (K,) ndarray
        Steepness of the edge (intensity fall per pixel).
    centres : (K, ndim) ndarray
        The centres the profiles were taken around.
    """
    if not 0 < search < 1:
        raise ValueError(f"search must be in (0, 1), got {search}")
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    image = np.asarray(image)
    centres = np.asarray(centres, dtype=float)
    if centres.size == 0:
        centres = centres.reshape(0, image.ndim)
    diameters = np.asarray(diameters, dtype=float).reshape(-1)
    if centres.ndim != 2 or centres.shape != (len(diameters), image.ndim):
        raise ValueError(f"centres must be ({len(diameters)}, {image.ndim}) for {len(diameters)} diameters "
                         f"and a {image.ndim}D image, got shape {centres.shape}")
    out = np.full(len(centres), np.nan)
    drop = np.zeros(len(centres))
    moved = centres.copy()
    for k, (c, d) in enumerate(zip(centres, diameters)):
        r0 = d / 2.0
        if not r0 > 0:
            continue
        r_lo, r_hi = (1.0 - search) * r0, (1.0 + search) * r0

        def edge_at(centre):
            return edge_radius(radial_profile(image, centre, r_hi + 2.0)[0], r_lo=r_lo, r_hi=r_hi)

        r_edge, dr = edge_at(c)
        best = (dr if np.isfinite(r_edge) else -np.inf, c, r_edge)
        if recentre:
            # The template needs a good radius (a ball too large or too small
            # fits in many places). Start from the detector's radius and from
            # the first edge radius; keep the result with the sharpest edge,
            # which is the best-centred profile.
            for r_start in (r0, r_edge):
                if not np.isfinite(r_start):
                    continue
                cc, rr = c, r_start
                for _ in range(rounds):
                    cc = match_centre(image, cc, rr)
                    rr, dd = edge_at(cc)
                    if not np.isfinite(rr):
                        break
                if np.isfinite(rr) and dd > best[0]:
                    best = (dd, cc, rr)
        moved[k] = best[1]
        out[k] = 2.0 * best[2]
        drop[k] = max(best[0], 0.0)
    return out, drop, moved
