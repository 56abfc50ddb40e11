"""The speck filter: circles drawn around a small dark spot are not particles."""

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage as ndi
from skimage.draw import disk

from lipoframe.algorithms.junk import darkness_concentration
from lipoframe.builtin.junk import CONCENTRATION, SpeckFilter, SpeckParams
from lipoframe.records import Micrograph, MicrographMeta, PickContext

R = 40  # radius of every test object's circle, px


def sphere(shape, centre, radius):
    """Projected thickness of a solid sphere (particles bright)."""
    yy, xx = np.indices(shape)
    rho2 = ((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2) / radius**2
    return np.sqrt(np.clip(1 - rho2, 0, None)).astype(np.float32)


def scene(seed=0):
    """Bright objects, each inside a circle of radius R: sphere, shell, vesicle, speck, noise."""
    shape = (200, 1000)
    img = np.zeros(shape, np.float32)
    img += sphere(shape, (100, 100), R)  # solid sphere
    img += sphere(shape, (100, 300), R) - 0.8 * sphere(shape, (100, 300), 0.7 * R)  # dense shell, lighter core
    img += sphere(shape, (100, 500), R) - sphere(shape, (100, 500), 0.9 * R)  # thin membrane
    img[disk((115, 712), 7, shape=shape)] += 3.0  # a small speck off the circle's centre
    img = ndi.gaussian_filter(img, 1.5)
    rng = np.random.default_rng(seed)
    img += 0.05 * ndi.gaussian_filter(rng.normal(size=shape), 2).astype(np.float32)
    centres = np.array([[100, 100], [100, 300], [100, 500], [100, 700], [100, 900]], float)
    return img, centres


def test_particles_spread_their_signal_and_specks_concentrate_it():
    img, c = scene()
    conc = darkness_concentration(img, c[:, 0], c[:, 1], np.full(len(c), 2.0 * R))
    sphere_, shell, vesicle, speck, noise = conc
    # A sphere's excess sits at its centre (about 0.21 noise-free); rims spread it further.
    assert sphere_ < 0.25 and max(shell, vesicle) < 0.15
    assert max(sphere_, shell, vesicle) < SpeckParams().max_concentration < speck
    assert speck > 0.5
    assert noise < 0.3  # noise spreads too: the filter is for spots, not for every false pick
    assert np.all((conc >= 0) & (conc <= 1))


def test_concentration_does_not_depend_on_the_neighbours():
    # The pick's own median is the level: a dark crowd around a particle changes nothing.
    img, c = scene()
    crowded = img.copy()
    yy, xx = np.indices(img.shape)
    ring = (np.hypot(yy - 100, xx - 100) > 1.1 * R) & (np.hypot(yy - 100, xx - 100) < 1.5 * R)
    crowded[ring] += 0.7
    a = darkness_concentration(img, c[:1, 0], c[:1, 1], [2.0 * R])
    b = darkness_concentration(crowded, c[:1, 0], c[:1, 1], [2.0 * R])
    assert a[0] == pytest.approx(b[0], abs=0.01)


def test_too_small_to_measure_is_nan_and_bad_options_name_themselves():
    img, c = scene()
    out = darkness_concentration(img, c[:2, 0], c[:2, 1], [2.0 * R, 12.0], core=0.25)  # second spot: 1.5 px
    assert np.isfinite(out[0]) and np.isnan(out[1])
    assert darkness_concentration(img, [], [], []).shape == (0,)
    with pytest.raises(ValueError, match="core"):
        darkness_concentration(img, c[:, 0], c[:, 1], np.full(len(c), 80.0), core=1.0)
    with pytest.raises(ValueError, match="n must"):
        darkness_concentration(img, c[:, 0], c[:, 1], np.full(len(c), 80.0), n=2)
    with pytest.raises(ValueError, match="filter.speck.max_concentration"):
        SpeckParams(max_concentration=0)
    with pytest.raises(ValueError, match="filter.speck.core"):
        SpeckParams(core=0)


def test_speck_filter_flags_only_the_speck_and_leaves_its_input_alone():
    img, c = scene(seed=1)
    mic = Micrograph(meta=MicrographMeta(name="m", path="m.mrc", shape=img.shape), image=-img, polarity="dark")
    ctx = PickContext(dmin_px=40, dmax_px=120, polarity="dark")
    picks = pd.DataFrame({"x_px": c[:, 1], "y_px": c[:, 0], "diameter_px": 2.0 * R})
    picks["accepted"] = [True, True, True, True, False]
    picks["reject_reason"] = ["", "", "", "", "no_edge"]
    before = picks.copy()
    out = SpeckFilter(SpeckParams()).apply(picks, mic, ctx)
    pd.testing.assert_frame_equal(picks, before)
    assert out["accepted"].tolist() == [True, True, True, False, False]
    assert out["reject_reason"].tolist() == ["", "", "", "speck", "no_edge"]
    assert np.isnan(out[CONCENTRATION].iloc[4])  # decided already: not measured
    assert out[CONCENTRATION].iloc[3] > SpeckParams().max_concentration


def test_speck_filter_asks_for_the_tomo_preset_on_volumes():
    vol = np.zeros((8, 64, 64), np.float32)
    mic = Micrograph(meta=MicrographMeta(name="v", path="v.mrc", shape=vol.shape), image=vol)
    picks = pd.DataFrame({"x_px": [32.0], "y_px": [32.0], "z_px": [4.0], "diameter_px": [20.0]})
    with pytest.raises(ValueError, match="speck filter works on 2D micrographs") as err:
        SpeckFilter(SpeckParams()).apply(picks, mic, PickContext(dmin_px=10, dmax_px=40))
    # The way out works with every detector: +experiment=tomo alone does not combine with detector=heatmap
    # (a config error), so the message names the filters to give.
    assert "filter=[diameter_range,edge]" in str(err.value)
