"""Peeling (``peel``): the accepted particles replaced by background, and detection again."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lipoframe.algorithms.peel import disc_mask, replace_discs
from lipoframe.algorithms.pyramid import block_mean
from lipoframe.records import Micrograph, MicrographMeta
from lipoframe.runner import pick
from lipoframe.synthetic import render


def _particles(xy, d):
    return pd.DataFrame({"x_px": [p[0] for p in xy], "y_px": [p[1] for p in xy], "diameter_px": d})


# ---------------------------------------------------------------------------
# replace_discs
# ---------------------------------------------------------------------------
def test_disc_mask_marks_pixel_centres_within_the_radius():
    mask = disc_mask((9, 12), [4.0], [3.0], [2.0])
    yy, xx = np.mgrid[0:9, 0:12]
    assert np.array_equal(mask, (yy - 4) ** 2 + (xx - 3) ** 2 <= 4)
    assert not disc_mask((9, 12), [4.0], [50.0], [2.0]).any()  # a disc off the image marks nothing


def test_replace_discs_changes_the_discs_only_and_is_deterministic():
    rng = np.random.default_rng(3)
    image = rng.standard_normal((200, 300)).astype(np.float32)
    rows, cols, radii = np.array([50.0, 120.0]), np.array([80.0, 200.0]), np.array([20.0, 30.0])
    out = replace_discs(image, rows, cols, radii, seed=1)
    inside = disc_mask(image.shape, rows, cols, radii)
    assert out.dtype == np.float32 and out.shape == image.shape
    assert np.array_equal(out[~inside], image[~inside])
    assert not np.allclose(out[inside], image[inside])
    assert np.array_equal(out, replace_discs(image, rows, cols, radii, seed=1))
    assert not np.array_equal(out, replace_discs(image, rows, cols, radii, seed=2))
    assert np.array_equal(image, np.random.default_rng(3).standard_normal((200, 300)).astype(np.float32))  # input untouched


def test_replace_discs_removes_particles_and_keeps_the_noise():
    """Inside the removed particles: the background's level and the noise's spread and correlation."""
    truth = _particles([(150, 150), (400, 160), (260, 380), (420, 420)], 120.0)
    clean = render((560, 560), truth, contrast=1.0, noise=0.0, seed=0) + np.float32(5.0)
    noisy = render((560, 560), truth, contrast=1.0, noise=0.25, noise_corr_px=2.0, seed=0) + np.float32(5.0)
    rows, cols, radii = truth["y_px"].to_numpy(), truth["x_px"].to_numpy(), truth["diameter_px"].to_numpy() / 2 * 1.08
    inside = disc_mask(noisy.shape, rows, cols, radii)
    assert noisy[inside].mean() < 5.0 - 0.5  # the particles are dark
    out = replace_discs(noisy, rows, cols, radii, seed=0)
    noise_in, noise_out = out[inside] - 5.0, noisy[~inside] - clean[~inside] - 5.0
    assert abs(noise_in.mean()) < 0.05
    assert noise_in.std() == pytest.approx(noise_out.std(), rel=0.15)
    # the copied texture keeps the noise's correlation (neighbouring pixels alike)
    def lag1(a, m):
        both = m[:, 1:] & m[:, :-1]
        return np.corrcoef(a[:, 1:][both], a[:, :-1][both])[0, 1]
    assert lag1(out - 5.0, inside) == pytest.approx(lag1(noisy - clean - 5.0, ~inside), abs=0.1)


@pytest.mark.parametrize("shape, smooth", [((300, 410), 24.0), ((257, 199), 9.0), ((64, 64), 3.0)])
def test_background_on_a_coarse_grid_matches_the_exact_normalised_convolution(shape, smooth):
    from scipy import ndimage as ndi

    from lipoframe.algorithms.peel import _smooth_background

    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    image = (np.sin(xx / 40.0) + 0.01 * yy + 0.1 * rng.standard_normal(shape)).astype(np.float32)
    keep = rng.random(shape) > 0.4
    w = keep.astype(np.float32)
    exact = ndi.gaussian_filter(image * w, smooth) / ndi.gaussian_filter(w, smooth)
    got = _smooth_background(image, keep, smooth)
    assert got.shape == shape and got.dtype == np.float32
    inner = (slice(int(2 * smooth), -int(2 * smooth)),) * 2  # the borders differ by the block padding
    # (half a block of misalignment would give 0.8-2 % of the range inside)
    assert np.abs(got - exact)[inner].max() < 0.005 * float(np.ptp(exact))
    assert np.abs(got - exact).mean() < 0.002 * float(np.ptp(exact))


def test_replace_discs_leaves_an_image_without_discs_or_with_nothing_else_alone():
    image = np.arange(64, dtype=np.float32).reshape(8, 8)
    assert np.array_equal(replace_discs(image, [], [], []), image)
    assert np.array_equal(replace_discs(image, [4.0], [4.0], [100.0]), image)  # nothing outside to copy from


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(image=np.zeros((2, 8, 8))), "image must be 2D"),
        (dict(radii=[-1.0]), "radii must be >= 0"),
        (dict(max_offsets=0), "max_offsets must be >= 1"),
        (dict(smooth=0.0), "smooth must be > 0"),
    ],
)
def test_replace_discs_names_the_bad_parameter(kwargs, message):
    args = dict(image=np.zeros((8, 8)), rows=[4.0], cols=[4.0], radii=[2.0])
    args.update(kwargs)
    image = args.pop("image")
    with pytest.raises(ValueError, match=message):
        replace_discs(image, **args)


# ---------------------------------------------------------------------------
# Micrograph.with_transform (what detection after peeling works on)
# ---------------------------------------------------------------------------
def test_micrograph_with_transform_transforms_what_is_binned_from_the_image():
    image = np.random.default_rng(0).standard_normal((64, 96)).astype(np.float32)
    mic = Micrograph(meta=MicrographMeta("m", "", image.shape, 1.0), image=image, polarity="dark")
    calls = []

    def plus_factor(signal, factor):
        calls.append(factor)
        return signal + factor

    other = mic.with_transform(plus_factor)
    # signal() takes the image's typical level off (a median of its pixels)
    assert mic.level == pytest.approx(np.median(image), abs=0.05)
    np.testing.assert_allclose(other.signal(2), -(block_mean(image, 2) - mic.level) + 2, rtol=1e-6, atol=1e-6)
    # coarser: block means of the transformed finer level, not transformed again
    np.testing.assert_allclose(other.signal(8), -(block_mean(image, 8) - mic.level) + 2, rtol=1e-5, atol=1e-5)
    assert calls == [2]
    np.testing.assert_allclose(other.signal(3), -(block_mean(image, 3) - mic.level) + 3, rtol=1e-6, atol=1e-6)  # not a multiple of 2
    assert calls == [2, 3]
    np.testing.assert_allclose(mic.signal(2), -(block_mean(image, 2) - mic.level), rtol=1e-6, atol=1e-6)  # the original is untouched


def test_micrograph_signal_bins_from_the_full_resolution_copy():
    """A cached full-resolution signal is the source of coarser binnings (so a replaced one is used)."""
    image = np.random.default_rng(1).standard_normal((64, 64)).astype(np.float32)
    mic = Micrograph(meta=MicrographMeta("m", "", image.shape, 1.0), image=image, polarity="dark")
    mic.signal(1)
    np.testing.assert_allclose(mic.signal(4), -(block_mean(image, 4) - mic.level), rtol=1e-6, atol=1e-6)
    other = mic.with_transform(lambda signal, factor: np.zeros_like(signal))
    other.signal(1)
    assert np.array_equal(other.signal(4), np.zeros((16, 16)))


def test_micrograph_signal_is_the_same_whichever_level_was_asked_for_first(tmp_path):
    """In a run the image check bins the micrograph first (x2 here), and a detector's x4 came from that
    level; asked alone it came from the image, a few float32 digits apart: scores depended on what was
    asked before (the polarity check's, pick()'s, a new stage's). Also through the polarity check's
    negated copy, and from a memory-mapped file."""
    import mrcfile
    from conftest import write_mrc

    image = (1000.0 + 30.0 * np.random.default_rng(3).standard_normal((96, 160))).astype(np.float32)

    def fresh(polarity, data=image):
        return Micrograph(meta=MicrographMeta("m", "", image.shape, 1.0), image=data, polarity=polarity)

    for polarity in ("dark", "bright"):
        alone = {f: fresh(polarity).signal(f) for f in (1, 2, 3, 4, 6, 8, 16)}
        for order in ((2, 4, 8, 16), (4, 16, 2, 8), (1, 8, 3, 6), (2, 6, 3, 16), (16, 8, 4, 2)):
            mic = fresh(polarity)
            for f in order:
                assert np.array_equal(mic.signal(f), alone[f]), (polarity, order, f)
            flipped = mic.with_transform(lambda signal, factor: np.negative(signal))
            for f in order[::-1] + order:
                assert np.array_equal(flipped.signal(f), -alone[f]), (polarity, order, f)
    with mrcfile.mmap(str(write_mrc(tmp_path / "m.mrc", image)), mode="r") as m:
        mapped = fresh("bright", m.data)
        for f in (2, 8, 4, 16):
            assert np.array_equal(mapped.signal(f), alone[f]), f


# ---------------------------------------------------------------------------
# The pipeline
# ---------------------------------------------------------------------------
def _crowd(faint_contrast: float = 0.4, noise: float = 0.25, seed: int = 0, n: int = 1024, d: float = 110.0):
    """Touching particles on a hexagonal grid, a fifth of them faint."""
    rng = np.random.default_rng(seed)
    step = d + 6.0
    xy = [
        (x, y)
        for i, y in enumerate(np.arange(d / 2 + 20, n - d / 2 - 20, step * np.sqrt(3) / 2))
        for x in np.arange(d / 2 + 20 + (step / 2 if i % 2 else 0), n - d / 2 - 20, step)
    ]
    truth = _particles(xy, d * rng.uniform(0.95, 1.05, len(xy)))
    faint = np.zeros(len(truth), bool)
    faint[rng.choice(len(truth), len(truth) // 5, replace=False)] = True
    image = render((n, n), truth[~faint], contrast=1.0, noise=0.0, seed=seed)
    image += render((n, n), truth[faint], contrast=faint_contrast, noise=noise, seed=seed)
    return image, truth, faint


def _found(picks: pd.DataFrame, truth: pd.DataFrame) -> np.ndarray:
    ok = picks.loc[picks["accepted"]]
    d = np.hypot(truth["x_px"].to_numpy()[:, None] - ok["x_px"].to_numpy()[None], truth["y_px"].to_numpy()[:, None] - ok["y_px"].to_numpy()[None])
    return (d < 0.2 * truth["diameter_px"].to_numpy()[:, None]).any(axis=1)


def test_peeling_finds_faint_particles_hidden_by_their_neighbours():
    image, truth, faint = _crowd()
    kw = dict(dmin=80, dmax=160, units="px")
    first = pick(image, **kw)  # peel is off by default
    both = pick(image, peel=True, **kw)
    f1, f2 = _found(first, truth), _found(both, truth)
    assert f1[~faint].all() and f2[~faint].all()
    assert f1[faint].sum() <= 8 and f2[faint].sum() >= 11 and (f2 | ~f1).all()  # of 14; none lost
    assert both["accepted"].sum() == f2.sum()  # no false pick
    assert "peeled" not in first.columns
    new = both.loc[both["accepted"] & both["peeled"]]
    assert len(new) == f2.sum() - f1.sum()
    assert _found(new, truth[faint]).sum() == len(new)  # the new picks are the faint particles


def test_peeling_adds_nothing_to_isolated_clear_particles():
    truth = _particles([(200, 200), (600, 220), (400, 600), (800, 700)], 140.0)
    image = render((1000, 1000), truth, contrast=1.0, noise=0.2, seed=5)
    a = pick(image, dmin=100, dmax=200, units="px")
    b = pick(image, dmin=100, dmax=200, units="px", peel=True)
    assert int(b["accepted"].sum()) == int(a["accepted"].sum()) == 4
    assert not (b["accepted"] & b["peeled"]).any()


def test_peel_is_a_run_option(tiny_mrcs, tmp_path, run_cli):
    """``peel=true`` on the command line: the column, the summary count, and a different fingerprint."""
    from conftest import TINY_ARGS

    from lipoframe.config import LipoframeConfig

    assert LipoframeConfig().peel is False
    assert LipoframeConfig(peel=True).per_micrograph_fingerprint() != LipoframeConfig().per_micrograph_fingerprint()
    code, out, err = run_cli("run", f"input={tiny_mrcs[0]}", f"output={tmp_path / 'out'}", "peel=true", *TINY_ARGS)
    assert code == 0, err
    table = pd.read_csv(next((tmp_path / "out" / "micrographs").glob("*.csv")))
    assert "peeled" in table.columns
