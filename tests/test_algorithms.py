"""Unit tests of the pure detection algorithms (small synthetic images)."""

import numpy as np
import pytest
from skimage.draw import disk

from lipoframe.algorithms.junk import darkness_concentration, disc_quantile, neighbourhood_measures
from lipoframe.algorithms.nms import circle_overlap, contained_mask, overlap_nms, size_aware_nms
from lipoframe.algorithms.peel import disc_mask, replace_discs
from lipoframe.algorithms.pyramid import block_mean, to_binned, to_full_resolution
from lipoframe.algorithms.radial import bilinear, refine_circles
from lipoframe.algorithms.scale_space import DIAMETER_PER_SIGMA, blob_responses, detect_blobs, plan_levels


def discs(shape, items, *, value=1.0, noise=0.0, seed=0, ring=None):
    img = np.zeros(shape, np.float32)
    for r, c, d in items:
        img[disk((r, c), d / 2, shape=shape)] = value
        if ring is not None:
            img[disk((r, c), ring * d / 2, shape=shape)] = value * 0.2
    if noise:
        img += np.random.default_rng(seed).normal(0, noise, shape).astype(np.float32)
    return img


# -- pyramid -------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.uint16, np.int8])
def test_block_mean_matches_reshape_mean(dtype):
    rng = np.random.default_rng(1)
    a = (rng.random((37, 45)) * 100).astype(dtype)
    got = block_mean(a, 4)
    want = a[:36, :44].astype(np.float64).reshape(9, 4, 11, 4).mean(axis=(1, 3))
    assert got.dtype == np.float32 and got.shape == (9, 11)
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("shape", [(70, 99), (19, 35, 50)])
def test_block_mean_of_a_block_mean_by_a_power_of_two_is_the_block_mean_bit_for_bit(shape):
    """A level binned from a finer cached one (Micrograph.signal) is the one binned from the image: with sums of
    factor x factor pixels in float32, binning 4 then 2 differed from 8 in the last digits, and scores with it."""
    a = (1000.0 + 30.0 * np.random.default_rng(2).standard_normal(shape)).astype(np.float32)
    for factor, finer in ((4, 2), (8, 2), (8, 4), (16, 2), (6, 3), (12, 3), (12, 6), (8, 1), (6, 1)):
        direct = block_mean(a, factor, offset=1000.0)
        assert np.array_equal(block_mean(block_mean(a, finer, offset=1000.0), factor // finer), direct), (factor, finer)
        want = a[tuple(slice(0, s // factor * factor) for s in shape)].astype(np.float64) - 1000.0
        want = want.reshape([x for s in shape for x in (s // factor, factor)]).mean(axis=tuple(range(1, 2 * len(shape), 2)))
        np.testing.assert_allclose(direct, want, rtol=0, atol=1e-4)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.int16, np.uint16, np.uint8, np.int32, np.float64])
def test_block_mean_subtracts_the_level_as_the_exact_difference_rounded_once(dtype):
    """The level Micrograph.signal subtracts is a float32 number, so float32-exact pixels are offset in float32
    (3x faster than in float64) with the same result to the bit; other types (counts beyond float32's 24 bits,
    float64) and a level given by hand that is no float32 number go through float64."""
    from lipoframe.algorithms.pyramid import typical_level

    scale = 2.0**26 if dtype == np.int32 else 200.0
    a = (scale + scale / 20 * np.random.default_rng(3).standard_normal((64, 96))).astype(dtype)
    level = typical_level(a)
    assert float(np.float32(level)) == level
    for offset in (level, 0.1):
        exact_once = np.subtract(a, offset, dtype=np.float64).astype(np.float32)
        for factor in (1, 2, 3, 4):
            assert np.array_equal(block_mean(a, factor, offset=offset), block_mean(exact_once, factor)), (offset, factor)


def test_block_mean_rejects_bad_factor():
    with pytest.raises(ValueError, match="factor"):
        block_mean(np.zeros((4, 4)), 0)


@pytest.mark.parametrize("factor", [2.5, 0.5, 1.9999, float("nan"), float("inf"), "2"])
def test_a_factor_that_is_not_a_whole_number_is_refused_as_given(factor):
    """2.5 was read as 2 without a word (and 0.5 refused as 'got 0'): the coordinates then followed the wrong grid."""
    from lipoframe.algorithms.heatmap import heatmap_picks

    with pytest.raises(ValueError, match=f"factor must be a whole number >= 1, got {factor!r}"):
        block_mean(np.zeros((8, 8), np.float32), factor)
    with pytest.raises(ValueError, match=f"factor must be a whole number >= 1, got {factor!r}"):
        heatmap_picks(np.zeros((8, 8), np.float32), factor=factor)
    np.testing.assert_array_equal(block_mean(np.ones((8, 8)), 2.0), block_mean(np.ones((8, 8)), np.int64(2)))


def test_half_pixel_mapping_round_trips():
    # Block i of factor 4 covers pixels 4i..4i+3, whose centre is 4i + 1.5.
    assert to_full_resolution(0, 4) == pytest.approx(1.5)
    assert to_full_resolution(2, 4) == pytest.approx(9.5)
    np.testing.assert_allclose(to_binned(to_full_resolution([0.3, 7.0], 8), 8), [0.3, 7.0])


def test_plan_levels_cover_range_with_small_sigmas():
    levels = plan_levels(53.0, 177.0, k=1.1, min_sigma_binned=3.0)
    sig = np.concatenate([lv.sigmas for lv in levels])
    assert sig[0] == pytest.approx(53.0) and sig[-1] >= 177.0
    np.testing.assert_allclose(sig[1:] / sig[:-1], 1.1)
    for lv in levels:
        binned = lv.sigmas / lv.factor
        assert binned.min() >= 3.0 - 1e-9
        assert binned.max() < 3.0 * 4.0 * 1.1 + 1


def test_plan_levels_wide_range_uses_several_levels():
    levels = plan_levels(5.0, 180.0)
    assert len(levels) >= 3
    assert [lv.factor for lv in levels] == sorted(lv.factor for lv in levels)


@pytest.mark.parametrize("bad", [dict(sigma_min=0, sigma_max=2), dict(sigma_min=3, sigma_max=2), dict(sigma_min=1, sigma_max=2, k=1.0)])
def test_plan_levels_validates(bad):
    with pytest.raises(ValueError):
        plan_levels(**bad)


# -- responses and detection ------------------------------------------------------
@pytest.mark.parametrize("method", ["dog", "log", "edge"])
def test_response_peaks_at_disc_scale(method):
    img = discs((200, 200), [(100, 100, 60)])
    sigmas = (60 / DIAMETER_PER_SIGMA) * 1.1 ** np.arange(-6, 7)
    resp = blob_responses(img, sigmas, method=method)
    centre = resp[:, 100, 100]
    best = sigmas[np.argmax(centre)] * DIAMETER_PER_SIGMA
    assert abs(best - 60) / 60 < 0.12


@pytest.mark.parametrize("method", ["dog", "log"])
def test_one_pick_per_disc_with_diameter(method):
    items = [(150, 150, 60), (160, 420, 110), (420, 200, 160), (430, 440, 80)]
    img = discs((600, 600), items, noise=0.15, seed=2)
    b = detect_blobs(img, dmin_px=50, dmax_px=180, method=method, threshold=6)
    keep = size_aware_nms(np.c_[b["x_px"], b["y_px"]], b["diameter_px"] / 2, b["score"])
    xs, ys, ds = b["x_px"][keep], b["y_px"][keep], b["diameter_px"][keep]
    assert len(xs) == len(items)
    for r, c, d in items:
        j = np.argmin(np.hypot(xs - c, ys - r))
        assert np.hypot(xs[j] - c, ys[j] - r) < 0.1 * d
        assert abs(ds[j] - d) / d < 0.2


@pytest.mark.parametrize("detector", ["dog", "log", "edge"])
def test_pipeline_one_accepted_pick_per_disc(detector):
    from lipoframe import pick

    items = [(150, 150, 60), (160, 420, 110), (420, 200, 160), (430, 440, 80)]
    img = -discs((600, 600), items, noise=0.15, seed=2)  # dark particles
    picks = pick(img, dmin=50, dmax=180, units="px", detector=detector, refiner="radial_profile")
    acc = picks[picks["accepted"]]
    assert len(acc) == len(items)
    for r, c, d in items:
        j = np.argmin(np.hypot(acc["x_px"] - c, acc["y_px"] - r))
        assert np.hypot(acc["x_px"].iloc[j] - c, acc["y_px"].iloc[j] - r) < 0.05 * d
        assert abs(acc["diameter_px"].iloc[j] - d) / d < 0.05


@pytest.mark.parametrize("seed", range(4))
def test_noise_and_constant_images_give_no_accepted_pick(seed):
    from lipoframe import pick

    noise = np.random.default_rng(seed).normal(0, 1, (512, 512)).astype(np.float32)
    picks = pick(noise, dmin=40, dmax=120, units="px")
    assert int(picks["accepted"].sum()) == 0, picks[picks["accepted"]]
    assert len(detect_blobs(np.ones((256, 256), np.float32), dmin_px=40, dmax_px=120)["x_px"]) == 0


def test_rings_give_one_pick_at_outer_diameter():
    # Dark shells with a lighter core (LDL-/apoferritin-like): a plain blob
    # detector fires on the arcs; the default pipeline must give one pick per
    # ring with the outer diameter.
    from lipoframe import pick

    items = [(150, 150, 90), (170, 400, 140), (400, 260, 120)]
    img = -discs((560, 560), items, ring=0.6, noise=0.1, seed=3)
    picks = pick(img, dmin=60, dmax=180, units="px")
    acc = picks[picks["accepted"]]
    assert len(acc) == len(items)
    for r, c, d in items:
        j = np.argmin(np.hypot(acc["x_px"] - c, acc["y_px"] - r))
        assert np.hypot(acc["x_px"].iloc[j] - c, acc["y_px"].iloc[j] - r) < 0.05 * d
        assert abs(acc["diameter_px"].iloc[j] - d) / d < 0.05


def test_detect_blobs_validates_parameters():
    img = np.zeros((64, 64), np.float32)
    with pytest.raises(ValueError, match="dmin_px"):
        detect_blobs(img, dmin_px=50, dmax_px=20)
    with pytest.raises(ValueError, match="threshold_method"):
        detect_blobs(img, dmin_px=10, dmax_px=20, threshold_method="otsu")


def test_detection_is_deterministic():
    img = discs((300, 300), [(100, 100, 50), (200, 210, 70)], noise=0.3, seed=5)
    a = detect_blobs(img, dmin_px=30, dmax_px=100)
    b = detect_blobs(img, dmin_px=30, dmax_px=100)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


# -- NMS ---------------------------------------------------------------------------
def test_size_aware_nms_seed_rule():
    xy = np.array([[0.0, 0.0], [30.0, 0.0], [100.0, 0.0]])
    r = np.array([50.0, 10.0, 10.0])
    s = np.array([3.0, 2.0, 1.0])
    # 30 < 0.8 * 50: the small pick next to the big one goes; the far one stays.
    np.testing.assert_array_equal(size_aware_nms(xy, r, s, beta=0.8), [True, False, True])
    np.testing.assert_array_equal(size_aware_nms(xy, r, s, beta=0.5), [True, True, True])


def test_size_aware_nms_symmetric_removes_spanning_blob():
    # Two accepted small particles and a weaker big blob centred between them.
    xy = np.array([[0.0, 0.0], [40.0, 0.0], [20.0, 0.0]])
    r = np.array([18.0, 18.0, 45.0])
    s = np.array([5.0, 5.0, 4.0])
    assert size_aware_nms(xy, r, s, symmetric=False).tolist() == [True, True, True]
    assert size_aware_nms(xy, r, s, symmetric=True).tolist() == [True, True, False]


def test_overlap_nms_keeps_touching_removes_duplicates():
    xy = np.array([[0.0, 0.0], [40.0, 0.0], [3.0, 2.0]])
    r = np.array([20.0, 20.0, 18.0])
    s = np.array([3.0, 2.0, 1.0])
    assert overlap_nms(xy, r, s).tolist() == [True, True, False]


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda xy: size_aware_nms(xy, [10.0, 10.0, 100.0], [1.0, 2.0]), "radius"),  # the third radius was ignored without a word
        (lambda xy: size_aware_nms(xy, [10.0, 10.0], [1.0, 2.0, 3.0]), "score"),
        (lambda xy: size_aware_nms(xy, [10.0, 3.0], [2.0, 1.0], second=[1.0]), "second"),
        (lambda xy: size_aware_nms(xy, [10.0, 3.0], [2.0, 1.0], second=[1.0, 5.0], may_outrank=[True]), "may_outrank"),
        (lambda xy: overlap_nms(xy, [10.0], [1.0, 2.0]), "radius"),
        (lambda xy: overlap_nms(xy, [10.0, 10.0], [1.0]), "score"),
        (lambda xy: contained_mask(xy, [10.0, 10.0, 100.0]), "radius"),
    ],
)
def test_nms_names_an_array_of_another_length(call, name):
    with pytest.raises(ValueError, match=f"^{name} must have one value per centre \\(2\\)"):
        call(np.array([[0.0, 0.0], [5.0, 0.0]]))


def test_circle_overlap_limits():
    assert circle_overlap(1.0, 1.0, 3.0) == pytest.approx(0.0)
    assert circle_overlap(2.0, 1.0, 0.5) == pytest.approx(np.pi)
    assert circle_overlap(1.0, 1.0, 0.0) == pytest.approx(np.pi)


def test_contained_mask_marks_arcs_inside_ring_only():
    xy = np.array([[0.0, 0.0], [40.0, 0.0], [75.0, 0.0]])
    r = np.array([50.0, 10.0, 20.0])  # an arc inside, a neighbour touching outside
    assert contained_mask(xy, r).tolist() == [False, True, False]


# -- per-pick measures ----------------------------------------------------------------
@pytest.mark.parametrize(
    "call",
    [
        # Each was measured on broadcast or truncated arrays without a word: a single
        # column served both rows, a single diameter both picks, or a disc was dropped.
        lambda img: neighbourhood_measures(img, [20.0, 50.0], [30.0], [20.0, 20.0]),
        lambda img: darkness_concentration(img, [20.0, 50.0], [30.0, 40.0], [20.0]),
        lambda img: disc_quantile(img, [20.0, 50.0], [30.0, 40.0], [20.0]),
        lambda img: disc_mask(img.shape, [20.0, 50.0], [30.0], [5.0, 5.0]),
        lambda img: replace_discs(img, [20.0, 50.0], [30.0, 40.0], [5.0]),
    ],
)
def test_per_pick_arrays_of_unequal_length_are_refused(call):
    img = np.random.default_rng(0).normal(size=(80, 80)).astype(np.float32)
    with pytest.raises(ValueError, match=r"rows, cols and (diameters|radii) must be 1D of one length"):
        call(img)


def test_disc_quantile_weighs_the_disc_by_area():
    """A bright centre covering 4 % of a disc, a bright half: the 0.9 quantile sees the half, not the centre.

    A polar grid with evenly spaced radii puts a fifth of its samples in the
    inner fifth of the radius (4 % of the area): that spot would fill its top tenth.
    """
    img = np.zeros((200, 400), np.float32)
    img[disk((100, 100), 8, shape=img.shape)] = 1.0  # 4 % of the 40 px radius disc
    img[:, 300:] = 1.0  # the right half of the disc at column 300
    q90 = disc_quantile(img, [100.0, 100.0], [100.0, 300.0], [80.0, 80.0], q=0.9)
    assert q90.tolist() == pytest.approx([0.0, 1.0])
    assert disc_quantile(img, [100.0], [300.0], [80.0], q=0.3)[0] == pytest.approx(0.0)
    assert disc_quantile(img, [], [], []).shape == (0,)
    with pytest.raises(ValueError, match="q must"):
        disc_quantile(img, [100.0], [100.0], [80.0], q=1.0)
    assert disc_quantile(img, [100.0, 100.0], [100.0, 300.0], [80.0, 80.0], q=0.9, chunk=1).tolist() == q90.tolist()
    with pytest.raises(ValueError, match="n must"):
        disc_quantile(img, [100.0], [100.0], [80.0], n=3)
    with pytest.raises(ValueError, match="chunk must"):
        disc_quantile(img, [100.0], [100.0], [80.0], chunk=0)

# -- radial refinement ---------------------------------------------------------------
def test_bilinear_matches_scipy():
    from scipy import ndimage as ndi

    rng = np.random.default_rng(0)
    im = rng.random((40, 50)).astype(np.float32)
    rr, cc = rng.uniform(-2, 42, 500), rng.uniform(-2, 52, 500)
    np.testing.assert_allclose(bilinear(im, rr, cc), ndi.map_coordinates(im, [rr, cc], order=1, mode="nearest"), atol=1e-5)


def test_refine_circles_recovers_centre_and_diameter():
    items = [(100.3, 120.6, 80.0), (260.0, 300.2, 130.0)]
    img = discs((420, 420), [(int(round(r)), int(round(c)), d) for r, c, d in items])
    from scipy import ndimage as ndi

    img = ndi.gaussian_filter(img, 1.0)
    rows = np.array([r + 5 for r, _, _ in items])
    cols = np.array([c - 4 for _, c, _ in items])
    d0 = np.array([d * 1.15 for _, _, d in items])
    res = refine_circles(img, rows, cols, d0)
    for i, (r, c, d) in enumerate(items):
        assert abs(res["diameter"][i] - d) / d < 0.03
        assert np.hypot(res["row"][i] - round(r), res["col"][i] - round(c)) < 1.5
    assert res["edge_found"].all() and (res["edge_coverage"] > 0.9).all()


def test_refine_circles_measures_a_cut_particle_on_the_part_in_the_image():
    """A disc cut by the border: centre, diameter and edge come from the directions inside the image."""
    from scipy import ndimage as ndi

    # Centres 12 px and 30 px inside the left border: 62 % and 80 % of the
    # rim in the image; one disc well inside for comparison.
    items = [(100.0, 12.0, 80.0), (260.0, 30.0, 80.0), (180.0, 200.0, 80.0)]
    img = ndi.gaussian_filter(discs((360, 300), [(int(r), int(c), d) for r, c, d in items], noise=0.1, seed=3), 1.0)
    rows = np.array([r + 3 for r, _, _ in items])
    cols = np.array([c + 4 for _, c, _ in items])
    res = refine_circles(img, rows, cols, np.full(3, 88.0))
    assert res["inside"][:2].mean(axis=1).max() < 0.85 and res["inside"][2].all()
    for i, (r, c, d) in enumerate(items):
        assert abs(res["diameter"][i] - d) / d < 0.03
        assert np.hypot(res["row"][i] - r, res["col"][i] - c) < 1.5
        # The edge in every direction that is in the image (a clear, full edge).
        assert res["edge_coverage"][i] > 0.95 and res["edge_contrast"][i] > 20


def test_inside_directions():
    from lipoframe.algorithms.radial import inside_directions

    theta = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    got = inside_directions((100, 100), np.array([50.0, 50.0, 50.0]), np.array([50.0, 0.0, -30.0]), np.array([20.0, 20.0, 20.0]), theta)
    assert got[0].all()
    # Centre on the left border: the right half (cos theta >= 0, to round-off) is in the image.
    np.testing.assert_array_equal(got[1], np.cos(theta) * 20 >= -0.5)
    # Less than a third inside: all directions count.
    assert got[2].all()


def _bright_spheres(shape, items, *, noise=0.15, seed=0):
    """Projected spheres (row, col, diameter), bright, with correlated noise (as the simulated suite's)."""
    import pandas as pd

    from lipoframe.synthetic import render

    truth = pd.DataFrame({"y_px": [r for r, _, _ in items], "x_px": [c for _, c, _ in items], "diameter_px": [d for _, _, d in items]})
    return -render(shape, truth, noise=noise, seed=seed)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cut_circle_starts_finds_a_cut_particle_from_the_circle_of_its_visible_part(seed):
    """The detector's circle on a particle cut by the border is its visible part: smaller, further inside.
    The start found contains it and lies on the particle; refine_circles then measures the particle."""
    from lipoframe.algorithms.radial import cut_circle_starts

    # A 120 px sphere 25 px inside the left border (0.42 radii: 29 % of its rim beyond it) and a whole one.
    items = [(150.0, 25.0, 120.0), (150.0, 280.0, 120.0)]
    img = _bright_spheres((300, 400), items, seed=seed)
    # As the detector finds it: 32 % small, its centre 0.3 radii further inside (cf. the suite's s10_border_cut).
    rows, cols, radii = np.array([153.0, 150.0]), np.array([43.0, 280.0]), np.array([41.0, 60.0])
    r2, c2, rad2, moved = cut_circle_starts(img, rows, cols, radii)
    assert moved.tolist() == [True, False]
    assert (r2[1], c2[1], rad2[1]) == (150.0, 280.0, 60.0)  # 4.7 radii from the border: not searched
    assert abs(rad2[0] / 60 - 1) < 0.12 and np.hypot(r2[0] - 150, c2[0] - 25) < 0.15 * 60
    # refine_circles from the detector's circle stops short (the edge is beyond its +-25 % search) ...
    before = refine_circles(img, rows[:1], cols[:1], 2 * radii[:1])
    assert before["diameter"][0] < 0.9 * 120
    # ... and measures the particle from the start found.
    after = refine_circles(img, r2[:1], c2[:1], 2 * rad2[:1])
    assert abs(after["diameter"][0] / 120 - 1) < 0.03
    assert np.hypot(after["row"][0] - 150, after["col"][0] - 25) < 0.05 * 60


def test_cut_circle_starts_keeps_circles_the_cut_does_not_explain():
    """A whole particle near the border, measured well or too large by the detector, keeps the detector's circle."""
    from lipoframe.algorithms.radial import cut_circle_starts

    # Whole spheres 8 and 40 px from the top border; starts exact and 15 % too large (shifted 0.25 radii outwards).
    items = [(58.0, 100.0, 100.0), (90.0, 300.0, 100.0)]
    img = _bright_spheres((300, 400), items, seed=4)
    rows, cols, radii = np.array([58.0, 77.5]), np.array([100.0, 300.0]), np.array([50.0, 57.5])
    r2, c2, rad2, moved = cut_circle_starts(img, rows, cols, radii)
    assert not moved.any()
    np.testing.assert_array_equal(np.c_[r2, c2, rad2], np.c_[rows, cols, radii])


@pytest.mark.parametrize(
    "kw, message",
    [({"reach": 0}, "reach"), ({"max_shift": -0.1}, "max_shift"), ({"scales": (1.2, 1.1)}, "scales"),
     ({"slack": -1}, "slack"), ({"n_angles": 2}, "n_angles")],
)
def test_cut_circle_starts_rejects_bad_options(kw, message):
    from lipoframe.algorithms.radial import cut_circle_starts

    with pytest.raises(ValueError, match=message):
        cut_circle_starts(np.zeros((50, 50)), [10.0], [10.0], [5.0], **kw)


def test_refine_circles_flags_background():
    rng = np.random.default_rng(1)
    img = rng.normal(0, 1, (200, 200)).astype(np.float32)
    res = refine_circles(img, np.array([100.0]), np.array([100.0]), np.array([60.0]))
    assert res["edge_contrast"][0] < 3.0


def test_refine_circles_gives_every_key_for_no_picks():
    """No picks: the same keys as for one pick, each with zero rows (``inside`` was missing)."""
    img = np.zeros((64, 64), np.float32)
    one = refine_circles(img, np.array([32.0]), np.array([32.0]), np.array([20.0]), n_angles=24)
    none = refine_circles(img, np.zeros(0), np.zeros(0), np.zeros(0), n_angles=24)
    assert sorted(none) == sorted(one)
    for key, value in one.items():
        want = value.shape if key == "theta" else (0,) + value.shape[1:]
        assert none[key].shape == want, key
        assert none[key].dtype.kind == value.dtype.kind, key


def test_refine_circles_validates():
    with pytest.raises(ValueError, match="search"):
        refine_circles(np.zeros((10, 10)), np.zeros(1), np.zeros(1), np.ones(1), search=1.5)
    with pytest.raises(ValueError, match="rim"):
        refine_circles(np.zeros((10, 10)), np.zeros(1), np.zeros(1), np.ones(1), rim="disc")


@pytest.mark.parametrize(
    "rows, cols, diameters, kw, match",
    [
        ([5.0], [5.0], [np.nan], {}, "diameters must be finite and > 0, got nan"),  # was an IndexError
        ([5.0], [5.0], [0.0], {}, "diameters must be finite and > 0, got 0.0"),  # was a RuntimeWarning and diameter 0
        ([5.0], [5.0], [-8.0], {}, "diameters must be finite and > 0, got -8.0"),  # was a diameter of -7.4
        ([5.0, 6.0], [5.0], [4.0, 4.0], {}, "rows, cols and diameters"),  # was an IndexError
        ([np.inf], [5.0], [4.0], {}, "rows and cols must be finite"),  # was a diameter from samples clipped to the border
        ([5.0], [5.0], [4.0], {"n_angles": 0}, "n_angles must be >= 3"),  # was 'a must be a 2D float array'
        ([5.0], [5.0], [4.0], {"n_angles": 2}, "n_angles must be >= 3"),  # was a diameter from two directions
    ],
)
def test_refine_circles_names_a_bad_pick_or_parameter(rows, cols, diameters, kw, match):
    img = np.random.default_rng(0).normal(size=(40, 40)).astype(np.float32)
    with pytest.raises(ValueError, match=match):
        refine_circles(img, np.array(rows), np.array(cols), np.array(diameters), **kw)


@pytest.mark.parametrize("kind", ["solid", "shell", "vesicle"])
@pytest.mark.parametrize("blur", [1.0, 2.5])
def test_sphere_rim_gives_unbiased_diameters_of_projected_spheres(kind, blur):
    """Projected spheres, shells and vesicles: the steepest fall lies inside the rim, the sphere rim does not."""
    from scipy import ndimage as ndi

    from lipoframe.synthetic import radial_profile

    shape = (520, 520)
    items = [(130.3, 140.6, 90.0), (330.0, 320.2, 160.0), (140.0, 400.0, 60.0)]
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(np.float32)
    img = np.zeros(shape, np.float32)
    for r, c, d in items:
        kw = {"shell": {"inner": 0.75, "core": 0.2}, "vesicle": {"membrane": 0.3}}.get(kind, {})
        img += radial_profile(kind, np.hypot(yy - r, xx - c) / (d / 2), **kw).astype(np.float32)
    img = ndi.gaussian_filter(img, blur)
    rows, cols = np.array([r + 3 for r, _, _ in items]), np.array([c - 2 for _, c, _ in items])
    d0 = np.array([d * 1.1 for _, _, d in items])
    truth = np.array([d for _, _, d in items])
    sphere = refine_circles(img, rows, cols, d0)["diameter"] / truth - 1
    steepest = refine_circles(img, rows, cols, d0, rim="steepest")["diameter"] / truth - 1
    assert np.all(np.abs(sphere) < 0.006)
    # The steepest fall is inside the rim, by about 0.77 blur widths (1.5 blur widths in diameter).
    assert np.all(steepest < -0.5 * blur / truth)
    assert np.all(np.abs(sphere) < np.abs(steepest))


def test_blocked_directions_point_at_touching_neighbours():
    from lipoframe.algorithms.radial import blocked_directions

    theta = np.linspace(0, 2 * np.pi, 8, endpoint=False)  # 0 = +col, pi/2 = +row
    centres = np.array([[100.0, 100.0], [100.0, 140.0], [300.0, 300.0]])  # (row, col)
    radii = np.array([20.0, 20.0, 20.0])
    blocked = blocked_directions(centres, radii, theta)
    assert blocked[0, 0] and not blocked[0, 4]  # first circle: neighbour on its +col side
    assert blocked[1, 4] and not blocked[1, 0]  # second: neighbour on its -col side
    assert not blocked[2].any()  # isolated


def test_edge_quality_ignores_blocked_directions():
    from lipoframe.algorithms.radial import edge_quality

    step = np.ones((1, 8))
    step[0, :2] = -3.0  # a neighbour darkens two directions
    c_all, cov_all = edge_quality(step)
    valid = np.ones((1, 8), bool)
    valid[0, :2] = False
    c_vis, cov_vis = edge_quality(step + np.linspace(0, 0.1, 8), valid)
    assert cov_all[0] == pytest.approx(0.75) and cov_vis[0] == pytest.approx(1.0)
    assert c_vis[0] > c_all[0]


def test_parabola_offset_finds_the_vertex_of_a_sampled_maximum():
    from lipoframe.algorithms.stats import parabola_offset

    f = lambda x: -((x - 0.3) ** 2)  # noqa: E731 - a parabola peaking at +0.3
    assert parabola_offset(np.array([f(-1.0)]), np.array([f(0.0)]), np.array([f(1.0)]))[0] == pytest.approx(0.3)
    # Not curving down (flat or a minimum): no offset; far vertices are clipped to half a sample.
    assert parabola_offset(np.array([1.0, 0.0]), np.array([1.0, 1.0]), np.array([1.0, 0.0]))[0] == 0.0
    assert parabola_offset(np.array([0.0]), np.array([-1.0]), np.array([0.0]))[0] == 0.0
    assert parabola_offset(np.array([0.0]), np.array([1.0]), np.array([1.5]))[0] == 0.5  # vertex at +1.5


@pytest.mark.parametrize("shape", [(1, 256), (256, 1), (40, 40), (5, 300)])
def test_detect_blobs_on_an_image_smaller_than_its_coarse_levels_finds_nothing_there(shape):
    """A level whose blocks do not fit in the image is skipped like one under 8 pixels
    (block_mean refused it: 'smaller than one block'), and the finer levels still run."""
    from lipoframe.algorithms.scale_space import detect_blobs
    from lipoframe.algorithms.scale_space3d import detect_blobs_3d

    img = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    b = detect_blobs(img, dmin_px=20, dmax_px=600)
    assert np.all((b["y_px"] >= 0) & (b["y_px"] <= shape[0] - 1) & (b["x_px"] >= 0) & (b["x_px"] <= shape[1] - 1))
    vol = np.random.default_rng(0).normal(size=(4,) + shape).astype(np.float32)
    b = detect_blobs_3d(vol, dmin_px=20, dmax_px=600)
    assert np.all((b["z_px"] >= 0) & (b["z_px"] <= 3))
    # A disc in a strip 40 px high, searched up to 600 px: the levels that fit find it.
    strip = np.zeros((48, 400), np.float32)
    yy, xx = np.mgrid[:48, :400]
    strip[(yy - 24) ** 2 + (xx - 200) ** 2 <= 15**2] = 1.0
    b = detect_blobs(strip, dmin_px=20, dmax_px=600, method="edge")
    assert abs(b["x_px"][0] - 200) < 1 and abs(b["y_px"][0] - 24) < 1


# -- hot and dead pixels -----------------------------------------------------------
def test_isolated_outliers_are_hot_and_dead_pixels_not_dark_regions():
    """Single pixels and clusters of up to four far from the background and from their neighbours are outliers;
    a 3 x 3 cluster, a dark disc of any depth, a ring whose rim is near the bound, a zero border and a line are not."""
    from lipoframe.algorithms.outliers import isolated_outliers

    rng = np.random.default_rng(3)
    img = rng.normal(0.0, 1.0, (200, 220)).astype(np.float32)
    expected = {(10, 20), (150, 30), (60, 100), (61, 100), (90, 150), (90, 151), (91, 150), (91, 151), (0, 219)}
    img[10, 20], img[150, 30], img[0, 219] = 1000.0, -1000.0, -50.0  # hot, dead, a corner
    img[60:62, 100] = 800.0  # a pair
    img[90:92, 150:152] = -600.0  # 2 x 2
    img[20:23, 180:183] = 1000.0  # 3 x 3: too large for a defect
    yy, xx = np.mgrid[:200, :220]
    d = np.hypot(yy - 150, xx - 120)
    img[d < 12] -= 1000.0  # a deep dark disc, 450 pixels
    img -= (21.0 / (1.0 + np.exp((np.hypot(yy - 60, xx - 40) - 15.0) / 1.5))).astype(np.float32)  # soft, just past the bound
    img[199, :] = -100.0  # a dark bottom row
    img[120, 60:70] = 500.0  # a line
    rows, cols, values = isolated_outliers(img)
    assert set(zip(rows.tolist(), cols.tolist())) == expected
    assert np.all(np.abs(values) < 3.0)  # the background's level, not the cluster's
    rows, cols, _ = isolated_outliers(img, max_cluster=1)
    assert set(zip(rows.tolist(), cols.tolist())) == {(10, 20), (150, 30), (0, 219)}
    img[5, 5] = np.inf  # not a number to replace: the runner refuses such a micrograph, saying where
    assert isolated_outliers(img)[0].size == 0


def test_replace_isolated_outliers_returns_an_ordinary_image_itself():
    from lipoframe.algorithms.outliers import replace_isolated_outliers

    img = np.random.default_rng(0).normal(100.0, 5.0, (64, 64)).astype(np.uint16)
    out, n = replace_isolated_outliers(img)
    assert out is img and n == 0
    img[30, 30] = 60000
    out, n = replace_isolated_outliers(img)
    assert n == 1 and out.dtype == np.uint16 and img[30, 30] == 60000  # a copy: the input is not modified
    assert abs(int(out[30, 30]) - 100) < 10 and np.array_equal(np.delete(out.ravel(), 30 * 64 + 30), np.delete(img.ravel(), 30 * 64 + 30))


@pytest.mark.parametrize("shape", ["T", "L", "S", "line", "square"])
def test_every_pixel_of_a_cluster_of_four_is_an_outlier(shape):
    """The centre of a T of four hot pixels has three of them beside it: it was dropped as inside a large region,
    and stayed hot while the other three were replaced."""
    from lipoframe.algorithms.outliers import isolated_outliers, replace_isolated_outliers

    cells = {"T": [(0, 0), (0, 1), (0, 2), (1, 1)], "L": [(0, 0), (1, 0), (2, 0), (2, 1)], "S": [(0, 1), (0, 2), (1, 0), (1, 1)],
             "line": [(0, 0), (0, 1), (0, 2), (0, 3)], "square": [(0, 0), (0, 1), (1, 0), (1, 1)]}[shape]
    img = np.random.default_rng(0).normal(size=(64, 64))
    for r, c in cells:
        img[30 + r, 30 + c] = 1000.0
    rows, cols, _ = isolated_outliers(img)
    assert sorted(zip(rows.tolist(), cols.tolist())) == sorted((30 + r, 30 + c) for r, c in cells)
    out, n = replace_isolated_outliers(img)
    assert n == 4 and out.max() < 10
    img[29:32, 31] = 1000.0  # a plus of five (with the T's cells): no defect
    if shape == "T":
        assert isolated_outliers(img)[0].size == 0


def test_a_zero_border_costs_no_more_than_a_small_band_of_masks():
    """A zero border is far below a micrograph's background: every pixel of it was looked at as a candidate
    (a 2048² float32 micrograph with a 100 px border allocated 47 MiB, about three copies of itself, and took
    ten times as long as without the border). It is dropped band by band now, before any look at a window."""
    import tracemalloc

    from lipoframe.algorithms.outliers import isolated_outliers

    img = np.random.default_rng(0).normal(50.0, 1.0, (2048, 2048)).astype(np.float32)
    img[:100] = img[-100:] = 0.0
    img[:, :100] = img[:, -100:] = 0.0
    img[500, 600] = 5000.0
    img[1500, 1000:1002] = -4000.0
    isolated_outliers(img)  # warm-up
    tracemalloc.start()
    try:
        rows, cols, _ = isolated_outliers(img)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert list(zip(rows.tolist(), cols.tolist())) == [(500, 600), (1500, 1000), (1500, 1001)]
    assert peak < img.nbytes / 4, f"{peak / 2**20:.1f} MiB allocated for a {img.nbytes / 2**20:.0f} MiB image"


@pytest.mark.parametrize("band", [1, 150, 10**9])
def test_outliers_do_not_depend_on_the_bands_the_image_is_looked_at_in(monkeypatch, band):
    """Bands of one row, of a few rows and the whole image find the same pixels: hot pixels and clusters on the
    rows where bands meet, at the image's corners and edges, beside and inside a zero border, and an L of four
    whose corner pixel has three of the others among its eight neighbours."""
    from lipoframe.algorithms import outliers

    img = np.random.default_rng(5).normal(0.0, 1.0, (61, 75))
    img[:4] = img[:, -3:] = -300.0  # a border on two sides, far below the background
    cells = [(0, 0), (60, 74), (60, 0), (5, 30), (6, 31), (9, 4), (10, 4), (11, 4), (11, 5), (30, 71), (40, 40), (41, 41)]
    for i, (r, c) in enumerate(cells):
        img[r, c] = 900.0 if i % 3 else -900.0
    img[20:23, 10:13] = 700.0  # 3 x 3: no defect
    monkeypatch.setattr(outliers, "BAND_PIXELS", band * 75, raising=False)
    rows, cols, values = outliers.isolated_outliers(img)
    monkeypatch.setattr(outliers, "BAND_PIXELS", 10**12, raising=False)
    whole = outliers.isolated_outliers(img)
    assert all(np.array_equal(a, b) for a, b in zip((rows, cols, values), whole))
    found = set(zip(rows.tolist(), cols.tolist()))
    # (0, 0) is in the border, dark as it is; (30, 71) beside it is hot, but its neighbourhood's median is the border's
    assert found == {(60, 0), (60, 74), (5, 30), (6, 31), (9, 4), (10, 4), (11, 4), (11, 5), (40, 40), (41, 41)}


def test_a_boolean_image_has_no_outliers():
    """A mask given as a micrograph (a bool .npy; pick() of a bool array) is picked as given, with a note;
    replacing its isolated True pixels failed with "ValueError: Invalid integer data type 'b'"."""
    import lipoframe
    from lipoframe.algorithms.outliers import isolated_outliers, replace_isolated_outliers

    img = np.zeros((128, 128), bool)
    img[10, 10] = img[40, 40] = True
    assert isolated_outliers(img)[0].size == 0
    out, n = replace_isolated_outliers(img)
    assert out is img and n == 0
    lipoframe.pick(img, dmin=10, dmax=30, units="px")  # raised ValueError


@pytest.mark.parametrize("bad", [dict(threshold=0), dict(max_cluster=0), dict(max_cluster=1.5)])
def test_isolated_outliers_validates(bad):
    from lipoframe.algorithms.outliers import isolated_outliers

    with pytest.raises(ValueError, match=next(iter(bad))):
        isolated_outliers(np.zeros((8, 8)), **bad)


# -- docstrings ------------------------------------------------------------------------
ALGORITHM_MODULES = ("binning", "heatmap", "junk", "membrane", "nms", "outliers", "peel", "pyramid", "radial", "radial3d", "regions", "scale_space", "scale_space3d", "stats")


def _documented_parameters(doc: str) -> set[str]:
    """Names in the numpydoc ``Parameters`` section of ``doc`` (``a, b : type`` lines)."""
    import re

    section = re.split(r"\n(?:Returns|Yields|Raises|Notes|Examples|See Also|References)\n", doc.split("Parameters\n----------\n", 1)[1])[0]
    return {name.strip() for line in section.splitlines() if line and not line.startswith(" ") for name in line.split(" : ")[0].split(",")}


@pytest.mark.parametrize("module", ALGORITHM_MODULES)
def test_a_parameters_section_names_every_parameter(module):
    """A public function whose docstring has a Parameters section documents each of its parameters there."""
    import importlib
    import inspect

    mod = importlib.import_module(f"lipoframe.algorithms.{module}")
    undocumented = {}
    for name, func in vars(mod).items():
        if name.startswith("_") or not inspect.isfunction(func) or func.__module__ != mod.__name__:
            continue
        doc = inspect.getdoc(func) or ""
        if "Parameters\n----------\n" in doc:
            missing = [p for p in inspect.signature(func).parameters if p not in _documented_parameters(doc)]
            if missing:
                undocumented[name] = missing
    assert undocumented == {}
