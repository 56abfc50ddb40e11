"""Tests of the example plugin's threshold detector (run: python -m pytest plugins/lipoframe-example/tests)."""

from __future__ import annotations

import sys
from pathlib import Path

try:
    import lipoframe_example  # noqa: F401 - installed: test that copy
except ImportError:  # a checkout: test the source
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import numpy as np
import pandas as pd
import pytest

from lipoframe.records import Micrograph, MicrographMeta, PickContext
from lipoframe.synthetic import render
from lipoframe_example import ThresholdDetector, ThresholdParams, lipoframe_register_stages, threshold_regions


def disc_image(shape, discs, value=1.0):
    yy, xx = np.indices(shape)
    img = np.zeros(shape, np.float32)
    for x, y, d in discs:
        img[(xx - x) ** 2 + (yy - y) ** 2 <= (d / 2) ** 2] = value
    return img


def test_regions_of_clean_discs_are_exact():
    discs = [(60.0, 40.0, 30.0), (150.0, 120.0, 50.0)]
    img = disc_image((200, 220), discs)
    img += np.random.default_rng(0).normal(0, 0.05, img.shape).astype(np.float32)
    r = threshold_regions(img, threshold=5, low_threshold=2, smooth_px=0)
    assert len(r["row"]) == 2
    got = sorted(zip(r["col"], r["row"], r["diameter"]))
    for (x, y, d), (gx, gy, gd) in zip(sorted(discs), got):
        assert gx == pytest.approx(x, abs=0.2) and gy == pytest.approx(y, abs=0.2)
        assert gd == pytest.approx(d, rel=0.03)


def test_a_vesicle_rim_becomes_one_filled_disc():
    yy, xx = np.indices((200, 200))
    r = np.hypot(xx - 100, yy - 90)
    img = ((r > 36) & (r <= 40)).astype(np.float32)  # a bright ring of outer diameter 80
    found = threshold_regions(img + 0.01 * np.random.default_rng(1).standard_normal(img.shape).astype(np.float32),
                              threshold=5, low_threshold=2, smooth_px=0)
    assert len(found["row"]) == 1
    assert found["diameter"][0] == pytest.approx(80, rel=0.03)
    hollow = threshold_regions(img, threshold=5, low_threshold=2, smooth_px=0, fill_holes=False)
    assert hollow["diameter"][0] < 0.6 * 80  # without filling, only the rim's area counts


def test_detector_maps_binned_centroids_to_full_resolution():
    truth = pd.DataFrame({"x_px": [300.0, 700.0], "y_px": [250.0, 500.0], "diameter_px": [160.0, 240.0]})
    img = render((800, 1000), truth, noise=0.05, seed=0)
    mic = Micrograph(MicrographMeta("m", "", img.shape), img, polarity="dark")
    det = ThresholdDetector(ThresholdParams())
    picks = det.detect(mic, PickContext(dmin_px=120, dmax_px=300))
    assert picks["bin_factor"].iloc[0] == 5  # 120 px / 24 binned px
    picks = picks.sort_values("x_px").reset_index(drop=True)
    np.testing.assert_allclose(picks["x_px"], truth["x_px"], atol=1.0)
    np.testing.assert_allclose(picks["y_px"], truth["y_px"], atol=1.0)
    np.testing.assert_allclose(picks["diameter_px"], truth["diameter_px"], rtol=0.06)
    np.testing.assert_array_equal(img, render((800, 1000), truth, noise=0.05, seed=0))  # input untouched


def test_parameters_are_checked_with_the_key_in_the_message():
    with pytest.raises(ValueError, match=r"^detector\.threshold must be > 0"):
        ThresholdParams(threshold=-1)
    with pytest.raises(ValueError, match=r"^detector\.min_size must be in \[0, 1\)"):
        ThresholdParams(min_size=1)


def test_registers_one_detector():
    from lipoframe.registry import StageRegistry

    reg = StageRegistry()
    lipoframe_register_stages(registry=reg)
    assert [(s.kind, s.name) for s in reg.stages()] == [("detector", "threshold")]
