"""The fast paths (issue 9) give the same results as the simple versions they replace.

Each test runs a straightforward reference implementation (the code before
the speed work, or the textbook version) next to the fast one: equal results,
or equal to float32 round-off where the arithmetic was reordered.
"""

from __future__ import annotations

import threading

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage as ndi
from scipy.spatial import cKDTree
from skimage.draw import disk

from lipoframe.algorithms import scale_space
from lipoframe.algorithms.nms import _overlap_with_kept, size_aware_nms
from lipoframe.algorithms.radial import (
    _edge_centroids,
    _ring_samples,
    bilinear,
    blocked_directions,
    polar_samples,
    refine_circles,
    sample_polar_grid,
)
from lipoframe.algorithms.scale_space import blob_responses, scale_space_maxima, transfer_functions


# -- transfer functions: the cache -----------------------------------------------------
@pytest.mark.parametrize("method", ["edge", "dog", "log"])
def test_cached_transfer_functions_equal_uncached(method):
    sigmas = np.array([3.0, 3.3, 3.63, 4.0])
    scale_space._transfer_cache.clear()
    first = transfer_functions((70, 64), sigmas, method=method)
    again = transfer_functions((70, 64), sigmas, method=method)
    assert again is first and not first.flags.writeable
    fresh = scale_space._compute_transfer_functions((70, 64), tuple(sigmas), method, 1.1, 0.12)
    np.testing.assert_array_equal(first, fresh)
    assert first.shape == (4, 70, 33) and first.dtype == np.float32


def test_blob_responses_equal_with_and_without_cached_transfer():
    img = np.random.default_rng(0).normal(size=(60, 50)).astype(np.float32)
    sigmas = np.array([2.0, 2.5, 3.0])
    scale_space._transfer_cache.clear()
    cold = blob_responses(img, sigmas, method="edge")
    warm = blob_responses(img, sigmas, method="edge")
    np.testing.assert_array_equal(cold, warm)


def test_blob_responses_match_exact_transfer_functions():
    """The tabulated |f| transfer functions equal exp/J1 evaluated on the 2D grid (to 1e-5 of the peak)."""
    from scipy import fft as sfft
    from scipy.special import j1

    img = np.random.default_rng(1).normal(size=(48, 40)).astype(np.float32)
    sigma = 3.0
    got = blob_responses(img, [sigma], method="edge")[0]
    pad = int(np.ceil(np.sqrt(2.0) * sigma * (1.0 + 3.0 * 0.12) + 2))
    padded = np.pad(img, pad, mode="symmetric")
    shape = tuple(sfft.next_fast_len(s, real=True) for s in padded.shape)
    f = np.sqrt(sfft.fftfreq(shape[0])[:, None] ** 2 + sfft.rfftfreq(shape[1])[None, :] ** 2)
    radius = np.sqrt(2.0) * sigma
    w = max(0.12 * radius, 0.7)
    transfer = radius * 2 * np.pi * f * j1(2 * np.pi * radius * f) * np.exp(-2 * np.pi**2 * w * w * f * f)
    want = sfft.irfft2(sfft.rfft2(padded, s=shape) * transfer, s=shape)[pad : pad + 48, pad : pad + 40]
    np.testing.assert_allclose(got, want, atol=1e-5 * np.abs(want).max())


def test_transfer_cache_is_bounded(monkeypatch):
    monkeypatch.setattr(scale_space, "TRANSFER_CACHE_BYTES", 3 * 40 * 21 * 4)  # three (40, 21) tables
    scale_space._transfer_cache.clear()
    for s in (2.0, 2.5, 3.0, 3.5, 4.0):
        transfer_functions((40, 40), [s], method="log")
    assert sum(v.nbytes for v in scale_space._transfer_cache.values()) <= scale_space.TRANSFER_CACHE_BYTES
    assert len(scale_space._transfer_cache) == 3  # the most recent ones
    big = transfer_functions((40, 40), [1.0, 2.0, 3.0, 4.0], method="log")  # larger than the whole cache
    assert big.shape == (4, 40, 21) and len(scale_space._transfer_cache) == 3
    scale_space._transfer_cache.clear()


# -- scale-space maxima ----------------------------------------------------------------
def maxima_reference(responses, threshold, exclude_border=0):
    """>= all 26 neighbours (edges repeated), above the threshold, on interior scales; by decreasing response."""
    S = responses.shape[0]
    thr = np.broadcast_to(np.asarray(threshold, np.float32), (S,))
    peak = (responses >= ndi.maximum_filter(responses, size=3, mode="nearest")) & (responses > thr[:, None, None])
    peak[[0, -1]] = False
    if exclude_border > 0:
        b = exclude_border
        peak[:, :b], peak[:, -b:], peak[:, :, :b], peak[:, :, -b:] = False, False, False, False
    s, r, c = np.nonzero(peak)
    order = np.argsort(-responses[s, r, c], kind="stable")
    return s[order], r[order], c[order]


@pytest.mark.parametrize("shape", [(3, 1, 5), (4, 6, 1), (5, 2, 2), (3, 1, 1), (5, 9, 11), (7, 40, 33)])
@pytest.mark.parametrize("exclude_border", [0, 1, 3])
def test_scale_space_maxima_match_maximum_filter(shape, exclude_border):
    rng = np.random.default_rng(shape[1] * 100 + shape[2])
    for trial in range(10):
        resp = rng.normal(size=shape).astype(np.float32)
        if trial % 2:
            resp = np.round(resp, 1)  # plateaus and ties
        resp[:, :1] += 0.7  # maxima on the border
        thr = -0.3 if trial % 3 else np.linspace(-1.0, 0.5, shape[0])
        got = scale_space_maxima(resp, thr, exclude_border=exclude_border)
        want = maxima_reference(resp, thr, exclude_border)
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w)


def test_scale_space_maxima_on_smooth_blobs():
    resp = ndi.gaussian_filter(np.random.default_rng(3).normal(size=(9, 80, 90)), (1, 3, 3)).astype(np.float32)
    got = scale_space_maxima(resp, 0.0)
    want = maxima_reference(resp, 0.0)
    assert len(got[0]) > 5
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


# -- bilinear sampling -----------------------------------------------------------------
@pytest.mark.parametrize("shape", [(40, 50), (1, 7), (7, 1), (1, 1), (2, 2)])
def test_bilinear_matches_map_coordinates(shape):
    rng = np.random.default_rng(0)
    im = rng.random(shape).astype(np.float32)
    # float32 positions (what bilinear computes with), so only the interpolation differs
    rr = np.r_[rng.uniform(-2, shape[0] + 1, 300), 0, shape[0] - 1, shape[0] - 1].astype(np.float32)
    cc = np.r_[rng.uniform(-2, shape[1] + 1, 300), 0, shape[1] - 1, 0].astype(np.float32)
    want = ndi.map_coordinates(im, [rr, cc], order=1, mode="nearest")
    got = bilinear(im, rr, cc)
    assert got.dtype == np.float32 and got.shape == rr.shape
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_polar_grid_subsets_and_per_centre_radii_are_exact():
    rng = np.random.default_rng(2)
    im = rng.random((80, 90)).astype(np.float32)
    rows, cols, radii = rng.uniform(10, 70, 5), rng.uniform(10, 80, 5), rng.uniform(5, 20, 5)
    full, theta, rho = polar_samples(im, rows, cols, radii, n_angles=12, n_radii=21, rho_max=1.6, rho_min=0.4)
    np.testing.assert_array_equal(sample_polar_grid(im, rows, cols, radii, theta, rho[5:14]), full[:, :, 5:14])
    idx = np.array([[0, 3, 20], [1, 2, 3], [7, 8, 9], [19, 20, 0], [4, 4, 4]])
    per_centre = sample_polar_grid(im, rows, cols, radii, theta, rho[idx])
    np.testing.assert_array_equal(per_centre, np.take_along_axis(full, idx[:, None, :], axis=2))


# -- refinement ------------------------------------------------------------------------
def test_ring_samples_equal_the_full_grid():
    rng = np.random.default_rng(4)
    im = rng.random((120, 120)).astype(np.float32)
    rows, cols, radii = rng.uniform(30, 90, 6), rng.uniform(30, 90, 6), rng.uniform(8, 20, 6)
    theta = np.linspace(0, 2 * np.pi, 16, endpoint=False)
    rho = np.linspace(0.5, 1.5, 81)  # narrow: some picks need radii beyond it
    full = sample_polar_grid(im, rows, cols, radii, theta, rho)
    core = slice(18, 63)
    edge = np.array([0.74, 0.8, 1.0, 1.2, 1.26, 1.0])
    pos, ring = _ring_samples(im, rows, cols, radii, theta, rho, core, full[:, :, core], edge, 0.30)
    on_grid = (pos >= 0) & (pos < len(rho))
    assert on_grid.sum(axis=1).min() > 40 and (~on_grid).any()  # some columns fall off the grid
    want = np.take_along_axis(full, np.clip(pos, 0, len(rho) - 1)[:, None, :], axis=2)
    np.testing.assert_array_equal(np.where(on_grid[:, None, :], ring, 0), np.where(on_grid[:, None, :], want, 0))


def edge_centroids_reference(samples, rho, edge_rho, band):
    """The per-direction edge centroids on every radius (the code before the speed work)."""
    drho = rho[1] - rho[0]
    smooth = ndi.uniform_filter1d(samples, 5, axis=1, mode="wrap")
    per_grad = np.gradient(smooth, drho, axis=2)
    near = np.abs(rho[None, :] - edge_rho[:, None]) <= band
    w = np.where(near[:, None, :], np.clip(-per_grad, 0, None), 0.0)
    w_sum = w.sum(axis=2)
    return np.where(w_sum > 0, (w * rho[None, None, :]).sum(axis=2) / np.maximum(w_sum, 1e-12), edge_rho[:, None])


@pytest.mark.parametrize("band", [0.25, 0.12])
def test_edge_centroids_equal_the_full_computation(band):
    rng = np.random.default_rng(5)
    rho = np.linspace(0.4, 1.6, 97)
    k = 7
    # falling edges near each pick's edge, plus noise; edges near both ends of rho too
    edge = np.array([0.45, 0.6, 0.9, 1.0, 1.1, 1.45, 1.58])
    samples = (1.0 / (1.0 + np.exp((rho[None, None, :] - edge[:, None, None]) / 0.03))
               + rng.normal(0, 0.05, (k, 24, len(rho)))).astype(np.float32)
    want = edge_centroids_reference(samples, rho, edge, band)
    width = int(np.ceil(2.0 * band / (rho[1] - rho[0]))) + 5
    pos = (np.searchsorted(rho, edge - band) - 2)[:, None] + np.arange(width)[None, :]
    ring = np.take_along_axis(samples, np.clip(pos, 0, len(rho) - 1)[:, None, :], axis=2)
    got = _edge_centroids(ring, pos, rho, edge, band)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)  # float32 sums over fewer zeros


def _refine_reference(image, rows, cols, diameters, *, search=0.25, iterations=3, max_shift=0.35, n_angles=48):
    """refine_circles before the speed work (all radii every round, float64 bilinear)."""

    def bilinear64(image, r, c):
        m, n = image.shape
        r = np.clip(np.asarray(r, np.float32), 0, m - 1)
        c = np.clip(np.asarray(c, np.float32), 0, n - 1)
        r0 = np.minimum(r.astype(np.intp), m - 2)
        c0 = np.minimum(c.astype(np.intp), n - 2)
        fr, fc = r - r0, c - c0
        flat = np.ascontiguousarray(image, dtype=np.float32).ravel()
        i = r0 * n + c0
        top = flat[i] * (1 - fc) + flat[i + 1] * fc
        bottom = flat[i + n] * (1 - fc) + flat[i + n + 1] * fc
        return (top * (1 - fr) + bottom * fr).astype(np.float32)

    def parabolic(values, idx):
        kk = np.arange(values.shape[0])
        lo, hi = np.clip(idx - 1, 0, values.shape[1] - 1), np.clip(idx + 1, 0, values.shape[1] - 1)
        f0, fl, fh = values[kk, idx], values[kk, lo], values[kk, hi]
        denom = fl - 2 * f0 + fh
        with np.errstate(divide="ignore", invalid="ignore"):
            off = np.where(np.abs(denom) > 1e-12, 0.5 * (fl - fh) / denom, 0.0)
        return idx + np.clip(off, -0.5, 0.5)

    rows, cols = np.asarray(rows, float).copy(), np.asarray(cols, float).copy()
    r0 = np.asarray(diameters, float) / 2.0
    k = len(rows)
    row_init, col_init = rows.copy(), cols.copy()
    rho_max, rho_min = 1.0 + search + 0.35, max(0.0, 1.0 - search - 0.35)
    n_radii = max(25, int(round((rho_max - rho_min) / 0.0125)) + 1)
    theta = np.linspace(0, 2 * np.pi, n_angles, endpoint=False)
    rho = np.linspace(rho_min, rho_max, n_radii)
    drho = rho[1] - rho[0]
    for it in range(iterations):
        rr = r0.astype(np.float32)[:, None, None] * rho.astype(np.float32)[None, None, :]
        samples = bilinear64(image, rows.astype(np.float32)[:, None, None] + rr * np.sin(theta).astype(np.float32)[None, :, None],
                             cols.astype(np.float32)[:, None, None] + rr * np.cos(theta).astype(np.float32)[None, :, None])
        grad = np.gradient(samples.mean(axis=1), drho, axis=1)
        masked = np.where(((rho >= 1 - search) & (rho <= 1 + search))[None, :], grad, np.inf)
        idx = np.argmin(masked, axis=1)
        edge_rho = rho[0] + parabolic(grad, idx) * drho
        per_r = edge_centroids_reference(samples, rho, edge_rho, 0.25 if it == 0 else 0.12) * r0[:, None]
        design = np.stack([np.ones(n_angles), np.cos(theta), np.sin(theta)], axis=1)
        weights = np.ones_like(per_r)
        for _ in range(2):
            wd = design[None] * weights[:, :, None]
            lhs = np.einsum("kai,kaj->kij", wd, design[None].repeat(k, 0))
            coef = np.linalg.solve(lhs + 1e-9 * np.eye(3)[None], np.einsum("kai,ka->ki", wd, per_r)[:, :, None])[:, :, 0]
            resid = per_r - np.einsum("ai,ki->ka", design, coef)
            weights = (np.abs(resid) <= 2.5 * 1.4826 * (np.median(np.abs(resid), axis=1, keepdims=True) + 1e-6)).astype(float)
        radius = edge_rho * r0
        if it < iterations - 1:
            cols, rows = cols + coef[:, 1], rows + coef[:, 2]
            too_far = np.hypot(rows - row_init, cols - col_init) > max_shift * r0
            rows[too_far], cols[too_far] = row_init[too_far], col_init[too_far]
    inner = ((rho >= edge_rho[:, None] - 0.30) & (rho <= edge_rho[:, None] - 0.06))[:, None, :].astype(np.float32)
    outer = ((rho >= edge_rho[:, None] + 0.06) & (rho <= edge_rho[:, None] + 0.30))[:, None, :].astype(np.float32)
    step = (samples * inner).sum(axis=2) / np.maximum(inner.sum(axis=2), 1) - (samples * outer).sum(axis=2) / np.maximum(outer.sum(axis=2), 1)
    return {"row": rows, "col": cols, "diameter": 2.0 * radius, "step_per_direction": step}


def test_refine_circles_equals_the_simple_version():
    shape = (300, 320)
    items = [(70.2, 80.7, 50.0), (150.0, 200.3, 70.0), (230.5, 90.1, 34.0), (60.0, 260.0, 44.0)]
    img = np.zeros(shape, np.float32)
    for r, c, d in items:
        img[disk((r, c), d / 2, shape=shape)] = 1.0
        img[disk((r, c), 0.35 * d, shape=shape)] = 0.4  # shells
    img = ndi.gaussian_filter(img, 1.0) + np.random.default_rng(6).normal(0, 0.15, shape).astype(np.float32)
    rows = np.array([r + 3 for r, _, _ in items] + [150.0])
    cols = np.array([c - 2 for _, c, _ in items] + [30.0])  # the last one is background
    d0 = np.array([d * 1.1 for _, _, d in items] + [40.0])
    got = refine_circles(img, rows, cols, d0, rim="steepest")
    want = _refine_reference(img, rows, cols, d0)
    for key in ("row", "col", "diameter"):
        np.testing.assert_allclose(got[key], want[key], rtol=0, atol=1e-3)
    np.testing.assert_allclose(got["step_per_direction"], want["step_per_direction"], rtol=0, atol=1e-4)


def blocked_reference(centres, radii, theta, reach=1.15):
    blocked = np.zeros((len(centres), len(theta)), dtype=bool)
    if len(centres) < 2:
        return blocked
    for i, j in cKDTree(centres).query_pairs(reach * 2.0 * float(radii.max())):
        for a, b in ((i, j), (j, i)):
            d = np.hypot(*(centres[b] - centres[a]))
            if d <= 0 or d > reach * (radii[a] + radii[b]):
                continue
            phi = np.arctan2(centres[b][0] - centres[a][0], centres[b][1] - centres[a][1])
            half = np.arcsin(min(1.0, radii[b] / d))
            blocked[a] |= np.abs(np.angle(np.exp(1j * (theta - phi)))) <= half
    return blocked


@pytest.mark.parametrize("n", [0, 1, 2, 40])
def test_blocked_directions_equal_the_pair_loop(n):
    rng = np.random.default_rng(n)
    centres = rng.uniform(0, 200, (n, 2))
    if n > 2:
        centres[1] = centres[0]  # coincident centres are ignored
    radii = rng.uniform(8, 25, n)
    theta = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    np.testing.assert_array_equal(blocked_directions(centres, radii, theta), blocked_reference(centres, radii, theta))


# -- NMS -------------------------------------------------------------------------------
def size_aware_reference(xy, radius, score, *, beta=0.8, symmetric=True, max_containment=1.0):
    """The greedy loop before the speed work."""
    xy = np.asarray(xy, float)
    xy = xy.reshape(-1, 2) if xy.ndim != 2 else xy
    n = len(xy)
    keep = np.zeros(n, dtype=bool)
    if n == 0:
        return keep
    tree = cKDTree(xy)
    suppressed = np.zeros(n, dtype=bool)
    own = tree.query_ball_point(xy, beta * radius)
    rmax = float(radius.max())
    for i in np.argsort(-score, kind="stable"):
        if suppressed[i] or (symmetric and any(keep[j] for j in own[i])):
            continue
        if max_containment < 1:
            _, containment = _overlap_with_kept(i, xy, radius, keep, tree, rmax)
            if np.any(containment > max_containment):
                continue
        keep[i] = True
        suppressed[tree.query_ball_point(xy[i], beta * radius[i])] = True
    return keep


@pytest.mark.parametrize("dims", [2, 3])
def test_size_aware_nms_equals_the_greedy_loop(dims):
    rng = np.random.default_rng(dims)
    for trial in range(40):
        n = int(rng.integers(0, 60))
        xy = rng.uniform(0, 250, (n, dims))
        radius = rng.uniform(5, 40, n)
        score = np.round(rng.uniform(0, 3, n), 1)  # ties keep the input order
        if n > 3:
            xy[1] = xy[0]
        for beta in (0.5, 0.8, 1.3):
            for symmetric in (True, False):
                for mc in (1.0, 0.4, 0.1):
                    got = size_aware_nms(xy, radius, score, beta=beta, symmetric=symmetric, max_containment=mc)
                    want = size_aware_reference(xy, radius, score, beta=beta, symmetric=symmetric, max_containment=mc)
                    np.testing.assert_array_equal(got, want)


# -- dataset level ---------------------------------------------------------------------
def _saved_run(tmp_path, names_rows):
    from lipoframe.records import MicrographMeta
    from lipoframe.runner import save_work

    rng = np.random.default_rng(7)
    for name, n in names_rows:
        picks = pd.DataFrame({
            "micrograph": name,
            "x_px": rng.uniform(0, 500, n), "y_px": rng.uniform(0, 500, n), "diameter_px": rng.uniform(50, 90, n),
            "score": rng.uniform(5, 9, n), "pyramid_level": rng.integers(0, 2, n), "sigma_px": rng.uniform(20, 30, n),
            "accepted": rng.random(n) > 0.3, "reject_reason": np.where(rng.random(n) > 0.5, "", "no_edge"),
            "edge_contrast": np.where(rng.random(n) > 0.8, np.nan, rng.normal(size=n)),
        })
        save_work(tmp_path, MicrographMeta(name, f"/in/{name}.mrc", (500, 500), 1.5), picks, "fp", 0.1)


def _collect_one_by_one(out_dir, names):
    from lipoframe import runner

    saved = runner._collect_work_at_once
    try:
        runner._collect_work_at_once = lambda *a: None
        return runner.collect_work(out_dir, names)
    finally:
        runner._collect_work_at_once = saved


@pytest.mark.parametrize("rows", [[5, 0, 7, 1], [0, 0], [3]])
def test_collect_work_at_once_equals_one_by_one(tmp_path, rows):
    from lipoframe.runner import _collect_work_at_once, collect_work

    names = [f"mic_{i}" for i in range(len(rows))]
    _saved_run(tmp_path, zip(names, rows))
    assert _collect_work_at_once(tmp_path, names) is not None
    got, metas = collect_work(tmp_path, names)
    want, want_metas = _collect_one_by_one(tmp_path, names)
    pd.testing.assert_frame_equal(got, want)
    assert metas == want_metas


def test_collect_work_falls_back_for_quoted_missing_and_incomplete_files(tmp_path):
    from lipoframe.runner import _collect_work_at_once, collect_work

    _saved_run(tmp_path, [("a", 4), ("b,quoted", 3), ("c", 2)])
    names = ["a", "b,quoted", "c", "missing"]
    assert _collect_work_at_once(tmp_path, names) is None
    got, metas = collect_work(tmp_path, names)
    assert list(metas) == ["a", "b,quoted", "c"] and len(got) == 9
    csv_c = tmp_path / "micrographs" / "c.csv"
    csv_c.write_text("\n".join(csv_c.read_text().splitlines()[:-1]) + "\n")  # one row lost
    assert _collect_work_at_once(tmp_path, ["a", "c"]) is None
    got, metas = collect_work(tmp_path, ["a", "c"])
    assert list(metas) == ["a"] and len(got) == 4


def test_csv_writer_files_equal_to_csv_of_each_micrograph(tmp_path):
    from lipoframe.builtin.writers import CsvWriter, CsvWriterParams, exported, file_stems
    from lipoframe.records import PickContext
    from lipoframe.runner import collect_work

    names = ["m1", "m 2", "empty", "m3"]
    _saved_run(tmp_path, zip(names, [4, 3, 0, 5]))
    picks, metas = collect_work(tmp_path, names)
    ctx = PickContext(dmin_px=40, dmax_px=100, pixel_size=1.5)
    files = CsvWriter(CsvWriterParams()).write(picks, metas, None, tmp_path / "out", ctx)
    table = exported(picks, ctx)
    assert files[0].read_text() == table.to_csv(index=False, float_format="%.2f")
    stems = file_stems(metas)
    for name in names:
        sub = table[table["micrograph"] == name]
        assert (tmp_path / "out" / "csv" / f"{stems[name]}.csv").read_bytes() == sub.to_csv(index=False, float_format="%.2f").encode()


# -- runner: imports for the dataset level while the workers pick -----------------------
def test_prefetch_thread_imports_and_is_joined(tmp_path, monkeypatch):
    import sys

    from scale_data import RUN_ARGS, write_set

    from lipoframe.merge import compose_config
    from lipoframe.runner import run_pipeline

    monkeypatch.setenv("LIPOFRAME_LOAD_PLUGINS", "")
    write_set(tmp_path / "in", 3)
    cfg = compose_config([f"input={tmp_path / 'in'}", *RUN_ARGS, "runner.workers=2"])[1]
    result = run_pipeline(cfg, tmp_path / "out")
    assert result.ok and result.workers == 2
    assert "matplotlib.figure" in sys.modules
    assert not any(t.name == "lipoframe-prefetch" for t in threading.enumerate())


def test_local_maxima_equal_scipy_find_peaks():
    from scipy.signal import find_peaks

    from lipoframe.algorithms.binning import local_maxima

    rng = np.random.default_rng(8)
    for trial in range(500):
        n = int(rng.integers(0, 30))
        x = rng.integers(0, 4, n).astype(float) if trial % 2 else rng.normal(size=n)  # plateaus / distinct values
        np.testing.assert_array_equal(local_maxima(x), find_peaks(x)[0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cols", [1, 2, 3, 20, 21, 48, 341, 1364])
def test_median_rows_equals_numpy_median(dtype, cols):
    from lipoframe.algorithms.stats import median_rows

    rng = np.random.default_rng(cols)
    a = (rng.standard_normal((40, cols)) * 100).astype(dtype)
    a[::5] = np.round(a[::5])  # ties
    before = a.copy()
    got = median_rows(a)
    want = np.median(a, axis=1)
    assert got.dtype == want.dtype
    assert np.array_equal(got, want)
    assert np.array_equal(a, before)  # not modified
    a[3, 0] = np.nan
    assert np.array_equal(median_rows(a), np.median(a, axis=1), equal_nan=True)


def test_median_rows_rejects_bad_input():
    from lipoframe.algorithms.stats import median_rows

    with pytest.raises(ValueError, match="2D float array"):
        median_rows(np.zeros((3, 0)))
    with pytest.raises(ValueError, match="2D float array"):
        median_rows(np.zeros(5))


def test_background_stats_subsample_keeps_the_estimate():
    from lipoframe.algorithms.stats import background_stats

    rng = np.random.default_rng(0)
    img = (3.0 + 2.0 * rng.standard_normal((1024, 1024))).astype(np.float32)
    med, spread = background_stats(img)  # stride 4
    med2, spread2 = background_stats(img, samples=img.size // 4)  # stride 2, as before
    assert abs(med - 3.0) < 0.02 and abs(spread - 2.0) < 0.02
    assert abs(med - med2) < 0.02 and abs(spread / spread2 - 1) < 0.01
    with pytest.raises(ValueError, match="samples"):
        background_stats(img, samples=0)


@pytest.mark.parametrize("fill", [0.0, 3.0, 30.0])
def test_background_stats_leave_out_a_constant_region(fill):
    """Zero padding or an area filled with one value, 45 % of the image: the MAD fell towards 0 (the filled
    pixels are all equal) or the median towards the fill, and every spread-scaled measure (the refiner's
    edge SNR, the contamination filter's darkness) with them."""
    from lipoframe.algorithms.stats import background_stats, constant_blocks, constant_pixels

    rng = np.random.default_rng(1)
    img = (3.0 + 2.0 * rng.standard_normal((1024, 1024))).astype(np.float32)
    img[:, :460] = fill
    med, spread = background_stats(img)
    assert abs(med - 3.0) < 0.05 and abs(spread - 2.0) < 0.05
    flat = constant_blocks(img, 16, 16)  # blocks of 64 px: columns 0-447 are filled whole
    assert flat[:, :7].all() and not flat[:, 7:].any()
    inside = constant_pixels(img, 16, 16)
    assert inside[:, :460].all() and not inside[:, 460:].any()  # also in the blocks across the edge
    img[900, 900] = fill  # a pixel of the fill's value far from the region is data
    assert not constant_pixels(img, 16, 16)[900, 900]
    # A quantised image whose noise is under one grey level: blocks of one value are data.
    grey = np.round(100 + 0.2 * rng.standard_normal((256, 256)) + np.linspace(0, 3, 256)).astype(np.uint8)
    assert not constant_blocks(grey, 32, 32).any() and not constant_pixels(grey, 32, 32).any()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1,), (2,), (7,), (64, 65), (3, 4, 5)])
def test_median_equals_numpy_median(dtype, shape):
    from lipoframe.algorithms.stats import median

    rng = np.random.default_rng(sum(shape))
    a = (rng.standard_normal(shape) * 10).astype(dtype)
    got, want = median(a), np.median(a)
    assert type(got) is type(want) and got == want
    a.flat[0] = np.nan
    assert np.isnan(median(a))
    assert median(np.arange(5)) == np.median(np.arange(5))  # integers: numpy's own


def test_median_and_mean_over_directions_equal_numpy_on_the_directions_inside():
    from lipoframe.algorithms.radial import _mean_over_directions, _median_over_directions

    rng = np.random.default_rng(11)
    values = rng.normal(size=(300, 48)).astype(np.float32)
    inside = rng.random((300, 48)) > 0.5
    inside[:100] = True  # whole circles take the fast path
    inside[100:110, :] = False
    inside[100:110, :3] = True  # odd and even counts
    inside[110:120, :4] = True
    want_median = np.array([np.median(v[m]) for v, m in zip(values, inside)])
    want_mean = np.array([v[m].mean() for v, m in zip(values, inside)])
    np.testing.assert_array_equal(_median_over_directions(values, inside), want_median.astype(np.float32))
    np.testing.assert_allclose(_mean_over_directions(values, inside), want_mean, rtol=0, atol=1e-6)
    # (K, A, R) samples: the mean over directions, per radius.
    samples = rng.normal(size=(300, 48, 5)).astype(np.float32)
    want = np.stack([s[m].mean(axis=0) for s, m in zip(samples, inside)])
    np.testing.assert_allclose(_mean_over_directions(samples, inside), want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("float_format", ["%.2f", "%.4f", "%.3g", "%10.3e"])
def test_floats_formatted_gives_pandas_csv_text(float_format):
    from lipoframe.builtin.writers import floats_formatted

    rng = np.random.default_rng(1)
    n = 400
    df = pd.DataFrame({
        "micrograph": rng.choice(["a", "b,c", "d e"], n), "x": rng.normal(0, 1e3, n),
        "f32": rng.normal(size=n).astype(np.float32), "i": rng.integers(0, 9, n), "ok": rng.random(n) > 0.5,
        "reason": rng.choice(["", "no_edge"], n), "tiny": rng.normal(0, 1e-9, n),
    })
    df.loc[rng.random(n) < 0.1, "x"] = np.nan
    df.loc[:5, "x"] = [np.inf, -np.inf, -0.0, 1e300, -1e-300, 0.005]
    df.loc[rng.random(n) < 0.1, "f32"] = np.nan
    assert floats_formatted(df, float_format).to_csv(index=False) == df.to_csv(index=False, float_format=float_format)


@pytest.mark.parametrize("k, size, c", [(1, 51, 12), (37, 51, 15), (5, 9, 0), (10, 41, 20)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_convolve_same_is_fftconvolve(k, size, c, dtype):
    from scipy.signal import fftconvolve

    from lipoframe.algorithms.junk import _convolve_same

    rng = np.random.default_rng(k)
    images = np.clip(rng.normal(size=(k, size, size)), 0, None).astype(dtype)
    dy, dx = np.mgrid[-c : c + 1, -c : c + 1]
    spot = (dy**2 + dx**2 <= c * c).astype(np.float32)
    want = fftconvolve(images, spot[None], mode="same", axes=(1, 2))
    got = _convolve_same(images, spot)
    assert got.dtype == want.dtype and got.tobytes() == np.ascontiguousarray(want).tobytes()


def test_resolve_all_is_resolve(tmp_path, monkeypatch):
    from pathlib import Path

    from lipoframe.io.atomic import resolve_all

    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "f").write_text("x")
    (tmp_path / "a" / "b" / "g").write_text("y")
    (tmp_path / "a" / "link").symlink_to(tmp_path / "real")
    (tmp_path / "a" / "flink").symlink_to(tmp_path / "a" / "b" / "g")
    (tmp_path / "a" / "dangling").symlink_to(tmp_path / "nowhere")
    monkeypatch.chdir(tmp_path / "a")
    paths = ["b/g", "link/f", "flink", "dangling", "../a/b/g", ".", "..", "b/..", "b/missing", "nodir/x",
             str(tmp_path / "a" / "link" / "f"), tmp_path / "a" / "b" / "g", "link/../b/g"]
    assert resolve_all(paths) == [Path(p).resolve() for p in paths]
