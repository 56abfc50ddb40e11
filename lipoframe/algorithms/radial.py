"""Radial-profile refinement of circular picks: diameter, sub-pixel centre, edge quality.

For every pick the image is sampled on a polar grid around the centre; the
edge of the particle is where the angular mean of the profile falls most
steeply (particles bright, so the outer edge is the strongest *negative*
radial gradient) inside a window around the detector's radius. A circle fitted
to the per-angle edge positions recentres the pick; repeating this converges
in two or three rounds. Everything is vectorised over picks: one bilinear
sampling per round covers all of them (the search window for the mean
profile, then only the radii around each pick's edge that it did not cover).

References
----------
.. [1] RELION's LoG picker and lipopick refine with radial averages; the
       per-angle circle fit is the standard algebraic (Kasa) fit linearised for
       small offsets: r(theta) ~ R + dx cos(theta) + dy sin(theta).
       I. Kasa, IEEE Trans. Instrum. Meas. 25 (1976) 8-14. doi:10.1109/TIM.1976.6312298
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi

from lipoframe.algorithms.stats import median_rows


def polar_samples(
    image: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    radii: np.ndarray,
    *,
    n_angles: int = 48,
    n_radii: int = 49,
    rho_max: float = 1.6,
    rho_min: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sample ``image`` on polar grids around many centres at once.

    Parameters
    ----------
    image : (M, N) ndarray
    rows, cols : (K,) ndarrays
        Centres in pixels of ``image``.
    radii : (K,) ndarray
        Radius used to scale each grid: samples run from 0 to
        ``rho_max * radius``.
    n_angles, n_radii : int
        Grid size.
    rho_max, rho_min : float
        Outer and inner end of the grid in units of ``radius``.

    Returns
    -------
    samples : (K, n_angles, n_radii) ndarray of float32
        Bilinear samples (edge pixels repeated outside the image).
    theta : (n_angles,) ndarray
    rho : (n_radii,) ndarray
        Radial positions in units of ``radius``.
    """
    theta = np.linspace(0, 2 * np.pi, n_angles, endpoint=False)
    rho = np.linspace(rho_min, rho_max, n_radii)
    return sample_polar_grid(image, rows, cols, radii, theta, rho), theta, rho


def sample_polar_grid(
    image: np.ndarray, rows: np.ndarray, cols: np.ndarray, radii: np.ndarray, theta: np.ndarray, rho: np.ndarray
) -> np.ndarray:
    """Bilinear samples of ``image`` at ``centre + rho * radius * (sin theta, cos theta)``.

    The grid of :func:`polar_samples` with explicit angles and radial
    positions (e.g. a subrange of its ``rho``).

    Parameters
    ----------
    image : (M, N) ndarray
    rows, cols, radii : (K,) ndarrays
        Centres and radii in pixels of ``image``.
    theta : (A,) ndarray
        Angles in radians (from the column axis towards rows).
    rho : (R,) or (K, R) ndarray
        Radial positions in units of each radius (or of each centre's own).

    Returns
    -------
    samples : (K, A, R) ndarray of float32
    """
    # float32 grids: half the memory traffic of float64, ample precision for pixels.
    rho = np.asarray(rho).astype(np.float32)
    r = np.asarray(radii, np.float32)[:, None, None] * rho[..., None, :]
    shape = (len(r), len(theta), rho.shape[-1])
    yy = np.multiply(r, np.sin(theta).astype(np.float32)[None, :, None], out=np.empty(shape, np.float32))
    yy += np.asarray(rows, np.float32)[:, None, None]
    xx = np.multiply(r, np.cos(theta).astype(np.float32)[None, :, None], out=np.empty(shape, np.float32))
    xx += np.asarray(cols, np.float32)[:, None, None]
    return _bilinear_inplace(np.ascontiguousarray(image, dtype=np.float32), yy, xx)


def bilinear(image: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Bilinear interpolation of a 2D image at arbitrary points (edge values outside).

    Equivalent to ``scipy.ndimage.map_coordinates(image, [rows, cols],
    order=1, mode='nearest')`` (to float32 round-off) but several times faster
    for millions of points.

    Returns
    -------
    values : ndarray of float32, shape of ``rows``
    """
    rows, cols = np.broadcast_arrays(np.asarray(rows, dtype=np.float32), np.asarray(cols, dtype=np.float32))
    # Copies: the work is done in place.
    return _bilinear_inplace(np.ascontiguousarray(image, dtype=np.float32), np.array(rows), np.array(cols))


def _bilinear_inplace(image: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """:func:`bilinear` of a C-contiguous float32 ``image`` that overwrites
    ``rows`` and ``cols`` (float32 arrays of one shape) and returns ``rows``.

    Everything is float32 and done in place: the cost is memory traffic over
    the sample points (four gathers and a few passes).
    """
    m, n = image.shape
    flat = image.ravel()
    r = np.clip(rows, 0, m - 1, out=rows)
    c = np.clip(cols, 0, n - 1, out=cols)
    # Top-left neighbour (the last full cell at the far edges) and the
    # fractional parts, which are exact in float32.
    r0 = np.floor(r)
    c0 = np.floor(c)
    if m > 1:
        np.minimum(r0, m - 2, out=r0)
    if n > 1:
        np.minimum(c0, n - 2, out=c0)
    r -= r0
    c -= c0
    idx = r0.astype(np.intp)
    idx *= n
    idx += c0.astype(np.intp)
    del r0, c0
    step_c = 1 if n > 1 else 0
    step_r = n if m > 1 else 0
    # Four gathers into two buffers, moving the index in place (no temporaries).
    top = flat.take(idx)  # v00
    idx += step_c
    right = flat.take(idx)  # v01
    right -= top
    right *= c
    top += right  # v00 + (v01 - v00) * fc
    idx += step_r
    bottom = flat.take(idx)  # v11
    idx -= step_c
    flat.take(idx, out=right)  # v10
    bottom -= right
    bottom *= c
    bottom += right  # v10 + (v11 - v10) * fc
    bottom -= top
    bottom *= r
    top += bottom
    return top


def _parabolic_peak(values: np.ndarray, idx: np.ndarray, shift: int = 0) -> np.ndarray:
    """Sub-sample position of extrema at ``idx`` along the last axis of ``values`` (K, L), plus ``shift``."""
    k = np.arange(values.shape[0])
    lo = np.clip(idx - 1, 0, values.shape[1] - 1)
    hi = np.clip(idx + 1, 0, values.shape[1] - 1)
    f0, fl, fh = values[k, idx], values[k, lo], values[k, hi]
    denom = fl - 2 * f0 + fh
    with np.errstate(divide="ignore", invalid="ignore"):
        off = np.where(np.abs(denom) > 1e-12, 0.5 * (fl - fh) / denom, 0.0)
    return (idx + shift) + np.clip(off, -0.5, 0.5)


def refine_circles(
    image: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    diameters: np.ndarray,
    *,
    search: float = 0.25,
    iterations: int = 3,
    max_shift: float = 0.35,
    n_angles: int = 48,
    rim: str = "sphere",
) -> dict[str, np.ndarray]:
    """Refine centres and diameters of bright circular particles from radial profiles.

    Parameters
    ----------
    image : (M, N) ndarray
        Particles bright (polarity already corrected), in any binning.
    rows, cols : (K,) ndarrays
        Initial centres, pixels of ``image``.
    diameters : (K,) ndarray
        Initial diameters, pixels of ``image`` (finite, > 0).
    search : float
        The edge is searched within ``(1 +/- search) * radius`` of the
        *initial* radius.
    iterations : int
        Rounds of resampling (>= 1). Every round but the last moves the
        centres to its circle fit, so ``iterations=1`` measures at the
        initial centres (``shift`` is then 0).
    max_shift : float
        Largest total recentring, as a fraction of the initial radius; a pick
        that would move further is put back at its initial centre (no flag
        says so; later rounds may move it again).
    n_angles : int
        Angular samples per profile (>= 3).
    rim : {'sphere', 'steepest'}
        Where the particle ends. ``'steepest'``: at the steepest fall of the
        mean radial profile. ``'sphere'`` (default): at the rim of a
        projected sphere (or spherical shell or vesicle), whose thickness
        falls as ``sqrt(R - r)`` at the rim; blurred by a Gaussian of width
        ``s`` (the image's own blur, the binning, the interpolation) its
        steepest fall lies ``0.765 s`` *inside* the rim and the gradient is
        back to half its peak ``1.463 s`` beyond the steepest point. The
        rim is therefore placed ``0.523`` times that outer half-width beyond
        the steepest point, with ``s`` measured on each pick's profile (see
        Notes). The edge-quality bands stay at the steepest point.

    Returns
    -------
    result : dict of ndarrays
        Per pick, (K,): ``row``, ``col``, ``diameter`` (refined; see
        ``rim``), ``diameter_steepest`` (at the steepest fall),
        ``edge_contrast`` (edge signal-to-noise: mean brightness step across
        the edge over its standard error around the circle),
        ``edge_coverage`` (fraction of directions in which the inside is
        brighter than the outside), ``edge_found`` (bool: a falling edge
        exists in the window), ``edge_width`` (step height over steepest
        slope, pixels of ``image``; inf where the profile does not fall),
        ``edge_step`` (median brightness step across the edge),
        ``roundness`` (robust spread of the per-direction edge about the
        fitted circle, over the radius) and ``shift`` (recentring distance,
        pixels of ``image``). Per pick and direction, (K, n_angles):
        ``step_per_direction`` (the step in each direction) and ``inside``
        (bool, the directions measured; see Notes). ``theta``
        (n_angles,): the directions (radians, from the column axis towards
        rows). With K = 0 every key is there, with zero rows.

    Notes
    -----
    Each round samples the radii the mean profile needs (the search window
    and two radii either side) for every pick, then, around each pick's edge,
    the radii its per-direction edges (and, in the last round, the quality
    bands) need and the first sampling did not cover. The per-direction
    smoothing and gradient are computed on those radii only. The results are
    those of sampling and processing the whole radial grid, to float32
    round-off.

    A particle cut by the image border is measured on the directions that
    stay inside the image (``inside``, see :func:`inside_directions`): the
    mean profile, the circle fit and the edge quality leave out the
    directions whose edge (for the quality: whose outer quality band) lies
    beyond the border, where the samples repeat the border pixels and no
    edge can be seen. A pick with fewer than a third of its directions
    inside is measured on all of them, as one inside the image is. The
    refined centre may then lie outside the image (``row``, ``col`` are not
    clipped): less than half of the particle is in it.
    """
    if not 0 < search < 1:
        raise ValueError(f"search must be in (0, 1), got {search}")
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    if rim not in RIMS:
        raise ValueError(f"rim must be one of {RIMS}, got {rim!r}")
    if n_angles < 3:
        raise ValueError(f"n_angles must be >= 3 (the circle fit has three parameters), got {n_angles}")
    rows = np.asarray(rows, dtype=float).copy()
    cols = np.asarray(cols, dtype=float).copy()
    r0 = np.asarray(diameters, dtype=float) / 2.0
    if not rows.ndim == cols.ndim == r0.ndim == 1 or not len(rows) == len(cols) == len(r0):
        raise ValueError(f"rows, cols and diameters must be 1D of one length, got shapes {rows.shape}, {cols.shape} and {r0.shape}")
    if not (np.all(np.isfinite(rows)) and np.all(np.isfinite(cols))):
        raise ValueError("rows and cols must be finite")
    if not np.all(r0 > 0) or not np.all(np.isfinite(r0)):
        bad = 2.0 * r0[~((r0 > 0) & np.isfinite(r0))][0]
        raise ValueError(f"diameters must be finite and > 0, got {bad}")
    k = len(rows)
    empty = np.empty(0)
    if k == 0:
        names = ("row", "col", "diameter", "diameter_steepest", "edge_contrast", "edge_coverage", "edge_width", "edge_step", "roundness", "shift")
        return {n: empty.copy() for n in names} | {
            "edge_found": np.empty(0, bool),
            "step_per_direction": np.empty((0, n_angles)),
            "inside": np.empty((0, n_angles), bool),
            "theta": np.linspace(0, 2 * np.pi, n_angles, endpoint=False),
        }
    row_init, col_init = rows.copy(), cols.copy()
    image = np.ascontiguousarray(image, dtype=np.float32)
    theta = np.linspace(0, 2 * np.pi, n_angles, endpoint=False)
    # Radial positions (units of the initial radius) around the searched
    # edge; the quality bands reach 0.35 radii beyond the search window.
    rho_max = 1.0 + search + 0.35
    rho_min = max(0.0, 1.0 - search - 0.35)
    n_radii = max(25, int(round((rho_max - rho_min) / 0.0125)) + 1)
    rho = np.linspace(rho_min, rho_max, n_radii)
    drho = rho[1] - rho[0]
    window = np.flatnonzero((rho >= 1.0 - search) & (rho <= 1.0 + search))
    # The mean profile needs the search window and two radii either side
    # (its gradient, and the parabolic peak one beyond the window).
    core = slice(max(0, window[0] - 2), min(n_radii, window[-1] + 3))
    window = window - core.start
    c, s = np.cos(theta), np.sin(theta)
    design = np.stack([np.ones_like(c), c, s], axis=1)  # (A, 3)
    outer_products = (design[:, :, None] * design[:, None, :]).reshape(n_angles, 9)
    for it in range(iterations):
        last = it == iterations - 1
        band = 0.25 if it == 0 else 0.12
        # The edge of the mean profile (over the directions whose nominal
        # edge is in the image) ...
        samples = sample_polar_grid(image, rows, cols, r0, theta, rho[core])
        mean_prof = _mean_over_directions(samples, inside_directions(image.shape, rows, cols, r0, theta))
        grad = np.gradient(mean_prof, drho, axis=1)
        masked = np.full(grad.shape, np.inf, dtype=grad.dtype)
        masked[:, window] = grad[:, window]
        idx = np.argmin(masked, axis=1)
        edge_rho = rho[0] + _parabolic_peak(grad, idx, shift=core.start) * drho
        # ... then, on the radii around it (the band, and in the last round
        # the quality bands), per-angle edges and a linearised circle fit.
        ring_pos, ring = _ring_samples(image, rows, cols, r0, theta, rho, core, samples, edge_rho, max(band, 0.30) if last else band)
        per_rho = _edge_centroids(ring, ring_pos, rho, edge_rho, band)
        per_r = per_rho * r0[:, None]
        # Directions whose edge lies beyond the border carry no edge.
        fit_inside = inside_directions(image.shape, rows, cols, edge_rho * r0, theta)
        weights = fit_inside.astype(float)
        coef = np.zeros((k, 3))
        for _ in range(2):
            lhs = (weights @ outer_products).reshape(k, 3, 3)
            rhs = (weights * per_r) @ design
            coef = np.linalg.solve(lhs + 1e-9 * np.eye(3)[None], rhs[:, :, None])[:, :, 0]
            resid = per_r - coef @ design.T
            mad = _median_over_directions(np.abs(resid), fit_inside)[:, None] + 1e-6
            weights = ((np.abs(resid) <= 2.5 * 1.4826 * mad) & fit_inside).astype(float)
        if not last:
            cols = cols + coef[:, 1]
            rows = rows + coef[:, 2]
            shift = np.hypot(rows - row_init, cols - col_init)
            too_far = shift > max_shift * r0
            rows[too_far] = row_init[too_far]
            cols[too_far] = col_init[too_far]
    # Diameter, roundness and quality from the final round, on the
    # directions whose outer quality band is in the image.
    inside = inside_directions(image.shape, rows, cols, (edge_rho + 0.30) * r0, theta)
    rim_rho = edge_rho + _sphere_rim_offset(ring, ring_pos, rho, edge_rho, inside) if rim == "sphere" else edge_rho
    radius = rim_rho * r0
    resid_rms = 1.4826 * _median_over_directions(np.abs(resid), fit_inside)
    ring_rho = rho[np.clip(ring_pos, 0, n_radii - 1)]
    on_grid = (ring_pos >= 0) & (ring_pos < n_radii)
    inner = on_grid & (ring_rho >= edge_rho[:, None] - 0.30) & (ring_rho <= edge_rho[:, None] - 0.06)
    outer = on_grid & (ring_rho >= edge_rho[:, None] + 0.06) & (ring_rho <= edge_rho[:, None] + 0.30)
    inner_ang = _masked_mean(ring, inner)
    outer_ang = _masked_mean(ring, outer)
    step_ang = inner_ang - outer_ang  # (K, A)
    step = _median_over_directions(step_ang, inside)
    contrast, coverage = edge_quality(step_ang, inside, directions=inside.sum(axis=1))
    mean_step = _mean_over_directions(step_ang, inside)
    # Sharpness: width of the edge = step height / steepest slope (pixels of
    # ``image``). Particles have sharp edges; blobs of ice texture soft ones.
    k_idx = np.arange(k)
    slope = -grad[k_idx, idx] / r0
    edge_width = np.where(slope > 0, np.maximum(mean_step, 0) / np.maximum(slope, 1e-12), np.inf)
    edge_found = (step > 0) & np.isfinite(edge_rho) & (np.min(masked, axis=1) < 0)
    shift = np.hypot(rows - row_init, cols - col_init)
    return {
        "row": rows,
        "col": cols,
        "diameter": 2.0 * radius,
        "diameter_steepest": 2.0 * edge_rho * r0,
        "edge_contrast": contrast,
        "edge_coverage": coverage,
        "edge_found": edge_found,
        "edge_width": edge_width,
        "edge_step": step,
        "step_per_direction": step_ang,
        "inside": inside,
        "theta": theta,
        "roundness": resid_rms / np.maximum(radius, 1e-12),
        "shift": shift,
    }


def cut_circle_starts(
    image: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    radii: np.ndarray,
    *,
    reach: float = 1.5,
    max_shift: float = 0.6,
    scales: tuple[float, float] = (0.75, 2.2),
    slack: float = 0.05,
    n_angles: int = 64,
    blockers: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Starting circles for particles cut by the image border, from the edge in view.

    On a particle cut by the border a blob detector finds the part in the
    image: its maximum lies inwards (near the centroid of the visible part)
    at a smaller scale. The true circle is larger and its centre lies
    towards the border, often beyond the reach of :func:`refine_circles`
    (which searches the edge within a fraction of the starting radius). For
    every circle whose ``reach`` times larger circle crosses the border, this
    searches the circles whose centre lies within ``max_shift`` radii of the
    given one and whose radius is ``scales`` times the given one for the
    one the image falls most clearly across, on its directions inside the
    image: for each direction, the brightness just inside the circle (at
    0.94 of its radius) less that just outside (at 1.06); the score is the
    mean of these steps less its standard error (over half the directions,
    neighbouring ones being correlated), so a circle judged on a short arc
    needs a clearer edge. Two families of circles compete: those near the
    given one (centre within 0.35 radii, radius within 25 %: what
    :func:`refine_circles` reaches from it anyway), and those that contain
    it, to ``slack`` of its radius (a circle whose centre moves ``t`` radii
    has a radius of at least ``1 + t - slack``): the detector's blob lies
    within the particle. Without that rule a circle that leaves the blob to
    skirt a touching neighbour can score best. Circles with fewer than a
    third of their directions in the image are not considered. A coarse
    grid (0.1 radii, 0.05 in scale) is followed by a finer one (0.025,
    0.0125) around the best circle. Where the best is near the given
    circle and no larger, the given circle is kept: a cut makes the
    detector's circle smaller, not larger, and from nearby the refinement
    finds the edge itself. The result is a start for
    :func:`refine_circles`, not a measurement.

    Parameters
    ----------
    image : (M, N) ndarray
        Particles bright.
    rows, cols, radii : (K,) ndarrays
        Circles (pixels of ``image``; radii > 0).
    reach : float
        Circles whose ``reach * radius`` circle lies in the image are left
        as they are.
    max_shift : float
        Largest move of the centre, in radii.
    scales : (float, float)
        Range of radii searched, in units of the given radius.
    slack : float
        How far (in radii) the given circle may reach out of a searched one.
    n_angles : int
        Directions sampled.
    blockers : (K,) ndarray of bool, optional
        The circles that count as neighbours (default: all). A searched
        circle may not come closer to a neighbour's centre than its own
        radius plus half the neighbour's: particles do not overlap, and a
        large circle through the gaps of a crowd at the border would
        otherwise enclose some of it.

    Returns
    -------
    rows, cols, radii : (K,) ndarrays
        The starting circles (copies).
    moved : (K,) ndarray of bool
        The circles replaced by a containing one.
    """
    if not reach > 0:
        raise ValueError(f"reach must be > 0, got {reach}")
    if not max_shift >= 0:
        raise ValueError(f"max_shift must be >= 0, got {max_shift}")
    if not 0 < scales[0] <= scales[1]:
        raise ValueError(f"scales must be (low, high) with 0 < low <= high, got {scales}")
    if not slack >= 0:
        raise ValueError(f"slack must be >= 0, got {slack}")
    if n_angles < 3:
        raise ValueError(f"n_angles must be >= 3, got {n_angles}")
    image = np.ascontiguousarray(image, dtype=np.float32)
    m, n = image.shape
    rows = np.array(rows, dtype=float)
    cols = np.array(cols, dtype=float)
    radii = np.array(radii, dtype=float)
    theta = np.linspace(0, 2 * np.pi, n_angles, endpoint=False)
    inset = np.minimum.reduce([rows + 0.5, m - 0.5 - rows, cols + 0.5, n - 0.5 - cols])
    searched = inset < reach * radii
    coarse = np.arange(-max_shift, max_shift + 1e-9, 0.1)
    dy0, dx0 = (a.ravel() for a in np.meshgrid(coarse, coarse, indexing="ij"))
    disk = np.hypot(dy0, dx0) <= max_shift + 1e-9
    dy0, dx0 = dy0[disk], dx0[disk]
    s0 = np.arange(scales[0], scales[1] + 1e-9, 0.05)
    fine = np.arange(-0.075, 0.076, 0.025)
    fy, fx = (a.ravel() for a in np.meshgrid(fine, fine, indexing="ij"))
    moved = np.zeros(len(rows), dtype=bool)
    blockers = np.ones(len(rows), dtype=bool) if blockers is None else np.asarray(blockers, dtype=bool)
    given_rows, given_cols = rows.copy(), cols.copy()
    for k in np.flatnonzero(searched):
        r, y, x = radii[k], rows[k], cols[k]
        others = blockers.copy()
        others[k] = False
        others &= np.hypot(given_rows - y, given_cols - x) < (max_shift + scales[1]) * r + radii
        others = np.flatnonzero(others)
        neighbours = (given_rows[others], given_cols[others], radii[others])
        best = _best_circle(image, y, x, r, dy0, dx0, s0, theta, slack, neighbours)
        if best is None:
            continue
        by, bx, bs, _ = best
        s1 = bs + np.arange(-0.05, 0.051, 0.0125)
        best = _best_circle(image, y, x, r, by + fy, bx + fx, s1[s1 > 0], theta, slack, neighbours)
        if best is not None and (best[2] > 1.0 or not best[3]):
            rows[k], cols[k], radii[k] = y + best[0] * r, x + best[1] * r, best[2] * r
            moved[k] = True
    return rows, cols, radii, moved


def _best_circle(image, y, x, r, dy, dx, scales, theta, slack, neighbours):
    """The best-scoring circle among centres ``(y, x) + (dy, dx) * r`` (C,) and radii ``scales * r`` (Z,).

    Considered are the circles near the given one (what :func:`refine_circles`
    reaches from it anyway with its defaults: centre within 0.35 radii,
    radius within 25 %) and those that contain it to ``slack``, in both cases
    with no neighbour's centre (``neighbours``: rows, cols, radii) closer
    than the circle's radius plus half the neighbour's. Returns ``(dy, dx,
    scale, near)`` of the best, or None.
    """
    shift = np.hypot(dy, dx)[:, None]
    near = (shift <= 0.35 + 1e-9) & (np.abs(scales[None, :] - 1.0) <= 0.25 + 1e-9)
    allowed = near | (scales[None, :] >= 1.0 - slack + shift)
    ci, zi = np.nonzero(allowed)
    cy, cx, rad = y + dy[ci] * r, x + dx[ci] * r, scales[zi] * r
    n_rows, n_cols, n_radii = neighbours
    if len(n_rows):
        d = np.hypot(cy[:, None] - n_rows[None, :], cx[:, None] - n_cols[None, :])
        free = ~np.any(d < rad[:, None] + 0.5 * n_radii[None, :], axis=1)
        ci, zi, cy, cx, rad = ci[free], zi[free], cy[free], cx[free], rad[free]
    if not len(ci):
        return None
    score = _arc_score(image, cy, cx, rad, theta, min_visible=1.0 / 3.0)
    b = int(np.argmax(score))
    if not np.isfinite(score[b]):
        return None
    return dy[ci[b]], dx[ci[b]], scales[zi[b]], bool(near[ci[b], zi[b]])


def _arc_score(image: np.ndarray, cy: np.ndarray, cx: np.ndarray, radii: np.ndarray, theta: np.ndarray, *, min_visible: float) -> np.ndarray:
    """Edge score of the circles (centres ``cy``, ``cx`` and ``radii``, (N,)): (N,); see :func:`cut_circle_starts`."""
    m, n = image.shape
    s, c = np.sin(theta)[None, :], np.cos(theta)[None, :]
    r = radii[:, None]
    y_in, x_in = cy[:, None] + 0.94 * r * s, cx[:, None] + 0.94 * r * c
    y_out, x_out = cy[:, None] + 1.06 * r * s, cx[:, None] + 1.06 * r * c
    # In view: both samples in the image.
    vis = (y_out >= 0) & (y_out <= m - 1) & (x_out >= 0) & (x_out <= n - 1) & (y_in >= 0) & (y_in <= m - 1) & (x_in >= 0) & (x_in <= n - 1)
    step = bilinear(image, y_in, x_in) - bilinear(image, y_out, x_out)
    n_vis = vis.sum(axis=1)
    nv = np.maximum(n_vis, 1)
    mean = np.where(vis, step, 0.0).sum(axis=1) / nv
    var = np.where(vis, (step - mean[:, None]) ** 2, 0.0).sum(axis=1) / nv
    score = mean - np.sqrt(var / (nv / 2.0))
    score[n_vis < min_visible * len(theta)] = -np.inf
    return score


def inside_directions(shape: tuple[int, int], rows: np.ndarray, cols: np.ndarray, radii: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """Directions of each circle whose point at ``radii`` lies inside the image.

    Parameters
    ----------
    shape : (int, int)
        Image shape (rows, columns).
    rows, cols, radii : (K,) ndarrays
        Centres and radii, pixels of the image.
    theta : (A,) ndarray
        Directions (radians, from the column axis towards rows).

    Returns
    -------
    inside : (K, A) ndarray of bool
        True where ``centre + radius * (sin theta, cos theta)`` is within the
        image's pixels (-0.5 to size - 0.5). A circle with fewer than a third
        of its directions inside gets all of them: too little of it is in
        the image to judge it on that part alone.
    """
    m, n = shape
    r = np.asarray(radii, dtype=float)[:, None]
    yy = np.asarray(rows, dtype=float)[:, None] + r * np.sin(theta)[None, :]
    xx = np.asarray(cols, dtype=float)[:, None] + r * np.cos(theta)[None, :]
    inside = (yy >= -0.5) & (yy <= m - 0.5) & (xx >= -0.5) & (xx <= n - 0.5)
    inside[inside.sum(axis=1) < len(theta) / 3] = True
    return inside


def _mean_over_directions(values: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """Mean over axis 1 of ``values`` (K, A[, R]) on the directions ``inside`` (K, A).

    Rows with every direction inside take the plain mean.
    """
    out = values.mean(axis=1)
    partial = np.flatnonzero(~inside.all(axis=1))
    if len(partial):
        w = inside[partial].astype(values.dtype)
        w = w.reshape(w.shape + (1,) * (values.ndim - 2))
        out[partial] = (values[partial] * w).sum(axis=1) / w.sum(axis=1)
    return out


def _median_over_directions(values: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """Median of each row of ``values`` (K, A) on the directions ``inside`` (K, A) (as :func:`numpy.median`)."""
    out = median_rows(values)
    partial = np.flatnonzero(~inside.all(axis=1))
    if len(partial):
        # The directions outside sort last; the median is the middle of the
        # first n (the mean of the two middle values when n is even).
        ranked = np.sort(np.where(inside[partial], values[partial], np.inf), axis=1)
        n = inside[partial].sum(axis=1)
        k = np.arange(len(partial))
        out[partial] = 0.5 * (ranked[k, (n - 1) // 2] + ranked[k, n // 2])
    return out


#: Choices of ``refine_circles(rim=...)``.
RIMS = ("sphere", "steepest")

#: A projected sphere's rim, ``sqrt(max(-u, 0))`` blurred by a unit Gaussian:
#: its steepest fall is at ``u = -0.765``, and the gradient is back to half
#: that peak at ``u = +0.698``, 1.463 beyond it; the rim (``u = 0``) is thus
#: 0.765 / 1.463 = 0.523 of the outer half-width beyond the steepest point
#: (numerical integration on a 0.001 grid).
SPHERE_RIM_RATIO = 0.523


def _sphere_rim_offset(ring: np.ndarray, pos: np.ndarray, rho: np.ndarray, edge_rho: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """Distance (units of the radius) from the steepest fall to the rim of a blurred projected sphere.

    Parameters
    ----------
    ring : (K, A, W) ndarray
        Polar samples at radial positions ``rho[pos]`` (consecutive indices).
    pos : (K, W) ndarray of int
    rho : (R,) ndarray
        The radial grid (evenly spaced).
    edge_rho : (K,) ndarray
        Steepest fall of each pick's mean profile.
    inside : (K, A) ndarray of bool
        Directions to average over.

    Returns
    -------
    offset : (K,) ndarray
        ``SPHERE_RIM_RATIO`` times the distance from ``edge_rho`` to where the
        gradient of the mean profile (over directions) rises back to half
        its value at ``edge_rho``, outwards; 0 where it does not within the
        samples (then the steepest point is kept).
    """
    drho = float(rho[1] - rho[0])
    prof = _mean_over_directions(ring, inside)  # (K, W)
    grad = np.gradient(prof, drho, axis=1)
    on_grid = (pos >= 0) & (pos < len(rho))
    # Position of the edge in the columns of ``ring`` (fractional).
    e = (edge_rho - rho[0]) / drho - pos[:, 0]
    w = np.arange(prof.shape[1])[None, :]
    k = np.arange(len(e))
    ie = np.clip(np.round(e).astype(int), 0, prof.shape[1] - 1)
    peak = grad[k, ie]
    rising = on_grid & (w > e[:, None]) & (grad > 0.5 * peak[:, None])
    found = rising.any(axis=1) & (peak < 0)
    j = np.argmax(rising, axis=1)
    j = np.maximum(j, 1)
    g0, g1 = grad[k, j - 1], grad[k, j]
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = np.where(g1 != g0, (0.5 * peak - g0) / (g1 - g0), 0.0)
    half = (j - 1) + np.clip(frac, 0.0, 1.0)
    width = np.clip(half - e, 0.0, None) * drho
    return np.where(found, SPHERE_RIM_RATIO * width, 0.0)


def _ring_samples(
    image: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    radii: np.ndarray,
    theta: np.ndarray,
    rho: np.ndarray,
    core: slice,
    core_samples: np.ndarray,
    edge_rho: np.ndarray,
    reach: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Polar samples of each pick on the radii within ``reach`` of its edge (and two more either side).

    Radii of the grid ``rho`` already sampled (``core_samples`` on
    ``rho[core]``) are reused; only the others are sampled, pick by pick.

    Returns
    -------
    pos : (K, W) ndarray of int
        Index into ``rho`` of each column; columns outside ``0 .. len(rho) - 1``
        hold no sample.
    ring : (K, A, W) ndarray of float32
        The samples.
    """
    k, n_angles, n_core = core_samples.shape
    width = int(math.ceil(2.0 * reach / float(rho[1] - rho[0]))) + 5
    pos = (np.searchsorted(rho, edge_rho - reach) - 2)[:, None] + np.arange(width)[None, :]
    # From the core: one gather on the flattened (K * A, n_core) samples.
    col = np.clip(pos - core.start, 0, n_core - 1)
    rows_ka = (np.arange(k)[:, None] * n_angles + np.arange(n_angles)[None, :]) * n_core  # (K, A)
    ring = core_samples.reshape(-1).take(rows_ka[:, :, None] + col[:, None, :])
    # The rest, sampled only where a pick needs them.
    pk, pw = np.nonzero((pos >= 0) & (pos < len(rho)) & ((pos < core.start) | (pos >= core.stop)))
    if len(pk):
        extra = sample_polar_grid(image, rows[pk], cols[pk], radii[pk], theta, rho[pos[pk, pw]][:, None])
        ring[pk, :, pw] = extra[:, :, 0]
    return pos, ring


def _edge_centroids(ring: np.ndarray, pos: np.ndarray, rho: np.ndarray, edge_rho: np.ndarray, band: float) -> np.ndarray:
    """Per-direction edge positions: centroids of the falling edge within ``band`` of ``edge_rho``.

    Parameters
    ----------
    ring : (K, A, W) ndarray
        Polar samples of each pick at radial positions ``rho[pos]``.
    pos : (K, W) ndarray of int
        Consecutive indices into ``rho`` (evenly spaced); those outside
        ``rho`` are ignored. They must cover the band and one more radius
        either side.
    edge_rho : (K,) ndarray
        Edge of each mean profile, in units of the radius.
    band : float
        Half-width of the band around the edge.

    Returns
    -------
    per_rho : (K, A) ndarray
        Centroid of ``max(-d/drho smooth, 0)`` over the radii with
        ``|rho - edge_rho| <= band``, where ``smooth`` is ``ring`` averaged
        over 5 neighbouring directions (circularly), differentiated as
        :func:`numpy.gradient` does on the whole of ``rho``; ``edge_rho``
        where the profile does not fall in the band.
    """
    n_r = len(rho)
    drho = rho[1] - rho[0]
    smooth = ndi.uniform_filter1d(ring, 5, axis=1, mode="wrap")
    # Central differences inside rho, one-sided at its ends (as np.gradient).
    grad = (smooth[:, :, 2:] - smooth[:, :, :-2]) / (2.0 * drho)
    centre = pos[:, 1:-1]
    at_start, at_end = centre == 0, centre == n_r - 1
    if at_start.any() or at_end.any():
        first = (smooth[:, :, 2:] - smooth[:, :, 1:-1]) / drho
        last = (smooth[:, :, 1:-1] - smooth[:, :, :-2]) / drho
        grad = np.where(at_start[:, None, :], first, np.where(at_end[:, None, :], last, grad))
    grad = grad.astype(ring.dtype, copy=False)
    rho_band = rho[np.clip(centre, 0, n_r - 1)]
    near = (np.abs(rho_band - edge_rho[:, None]) <= band) & (centre >= 0) & (centre < n_r)
    w = np.where(near[:, None, :], np.clip(-grad, 0, None), 0.0)
    w_sum = w.sum(axis=2)
    w_rho = np.einsum("kaw,kw->ka", w, rho_band)
    return np.where(w_sum > 0, w_rho / np.maximum(w_sum, 1e-12), edge_rho[:, None])


def edge_quality(
    step_per_direction: np.ndarray, valid: np.ndarray | None = None, *, directions: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Edge SNR and coverage from the brightness step across the edge in each direction.

    Parameters
    ----------
    step_per_direction : (K, A) ndarray
        Inside-minus-outside brightness just across the edge, per direction.
    valid : (K, A) ndarray of bool, optional
        Directions to use (e.g. not blocked by a touching neighbour).
    directions : (K,) ndarray, optional
        Number of directions the t-statistic is scaled to (default: all
        ``A``). The directions beyond the image border are not part of the
        particle's visible edge: a cut particle is scaled to those inside,
        so it needs a clearer edge than one whose edge is all in view.

    Returns
    -------
    contrast : (K,) ndarray
        Mean step over its standard deviation across the valid directions,
        scaled by ``sqrt(A / 2)`` for all ``A`` directions (or
        ``sqrt(directions / 2)``; a t-statistic for
        the whole circle; neighbouring directions are correlated, so only
        every second one counts as independent). Leaving blocked directions
        out thus measures how consistent the visible edge is without
        penalising a pick for its neighbours.
    coverage : (K,) ndarray
        Fraction of valid directions in which the inside is brighter.
    """
    step = np.asarray(step_per_direction, dtype=float)
    valid = np.ones(step.shape, dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    n = np.maximum(valid.sum(axis=1), 1)
    mean = np.where(valid, step, 0.0).sum(axis=1) / n
    var = np.where(valid, (step - mean[:, None]) ** 2, 0.0).sum(axis=1) / n
    sd = np.sqrt(var) + 1e-12 * (np.abs(mean) + 1e-12)
    n_scale = step.shape[1] if directions is None else np.asarray(directions, dtype=float)
    contrast = mean / sd * np.sqrt(n_scale / 2.0)
    coverage = np.where(valid, step > 0, False).sum(axis=1) / n
    return contrast, coverage


def blocked_directions(
    centres: np.ndarray, radii: np.ndarray, theta: np.ndarray, *, reach: float = 1.15, blockers: np.ndarray | None = None
) -> np.ndarray:
    """Directions of each circle that point into a touching or overlapping neighbour.

    Parameters
    ----------
    centres : (K, 2) ndarray
        (row, col) centres.
    radii : (K,) ndarray
    theta : (A,) ndarray
        Directions (radians, measured from the column axis towards rows).
    reach : float
        Neighbours whose centre is closer than ``reach * (r_i + r_j)`` count.
    blockers : (K,) ndarray of bool, optional
        Only these circles count as neighbours (default: all).

    Returns
    -------
    blocked : (K, A) ndarray of bool
        Direction ``a`` of circle ``i`` is blocked when it points within the
        angular half-width ``arcsin(min(1, r_j / d_ij))`` of neighbour ``j``.
    """
    from scipy.spatial import cKDTree

    centres = np.asarray(centres, dtype=float).reshape(-1, 2)
    radii = np.asarray(radii, dtype=float)
    k = len(centres)
    blocked = np.zeros((k, len(theta)), dtype=bool)
    if k < 2:
        return blocked
    pairs = cKDTree(centres).query_pairs(reach * 2.0 * float(radii.max()), output_type="ndarray")
    if len(pairs) == 0:
        return blocked
    # Both directions of every close pair: circle a, neighbour b.
    a = np.concatenate([pairs[:, 0], pairs[:, 1]])
    b = np.concatenate([pairs[:, 1], pairs[:, 0]])
    dy, dx = (centres[b] - centres[a]).T
    d = np.hypot(dy, dx)
    close = (d > 0) & (d <= reach * (radii[a] + radii[b]))
    if blockers is not None:
        close &= np.asarray(blockers, dtype=bool)[b]
    a, b, dy, dx, d = a[close], b[close], dy[close], dx[close], d[close]
    phi = np.arctan2(dy, dx)
    half = np.arcsin(np.minimum(1.0, radii[b] / d))
    diff = np.angle(np.exp(1j * (theta[None, :] - phi[:, None])))
    np.logical_or.at(blocked, a, np.abs(diff) <= half[:, None])
    return blocked


def _masked_mean(samples: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean over the radial axis of ``samples`` (K, A, R) where ``mask`` (K, R) is True."""
    m = mask[:, None, :].astype(np.float32)
    total = (samples * m).sum(axis=2)
    count = np.maximum(m.sum(axis=2), 1.0)
    return total / count
