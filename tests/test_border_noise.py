"""Noise near the micrograph border: the mirror padding must not crowd noise maxima onto it."""

import numpy as np
from scipy import ndimage as ndi
from skimage.draw import disk

from lipoframe.algorithms.scale_space import (
    blob_responses,
    border_ratio,
    border_spread,
    detect_blobs,
    equalise_border,
    equalise_plane,
)
from lipoframe.algorithms.scale_space3d import blob_responses_3d, detect_blobs_3d


def _noise(seed: int, shape=(1024, 1024)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return ndi.gaussian_filter(rng.standard_normal(shape), 2.0).astype(np.float32)


def test_border_spread_measures_the_doubled_noise_at_the_border():
    r = blob_responses(_noise(0, (768, 512)), np.array([6.0, 8.0, 10.0]), method="edge")
    ratios = border_spread(r, np.array([12, 12, 12]))
    for ratio in ratios:
        # A filter centred on the border sums its noise and the mirror image of it.
        assert 1.3 < ratio[0] < 1.6
        assert ratio[0] > ratio[1] > 1.0
        assert np.all(ratio[6:] == 1.0)  # the excess fades within a few pixels
    # Equalising leaves the interior alone and brings the border frame to the inside's spread.
    centre = np.median(r, axis=(1, 2))
    eq = r.copy()
    equalise_border(eq, centre, ratios)
    assert np.array_equal(eq[:, 20:-20, 20:-20], r[:, 20:-20, 20:-20])
    again = border_spread(eq, np.array([12, 12, 12]))
    assert all(a[0] < 1.1 for a in again)


def test_noise_maxima_do_not_crowd_onto_the_border():
    def border_fraction(equalise: bool) -> tuple[float, float]:
        near, area = [], []
        for seed in range(3):
            b = detect_blobs(_noise(seed), dmin_px=40, dmax_px=120, method="edge", threshold=5.3, report_threshold=3.0,
                             equalise_borders=equalise)
            d = np.minimum.reduce([b["x_px"], 1023 - b["x_px"], b["y_px"], 1023 - b["y_px"]])
            band = 0.125 * b["diameter_px"]  # a quarter radius
            near.append(d < band)
            area.append(1 - (1 - 2 * band / 1024) ** 2)  # the band's share of the image
        return float(np.mean(np.concatenate(near))), float(np.mean(np.concatenate(area)))

    crowded, share = border_fraction(False)
    even, share_eq = border_fraction(True)
    assert crowded > 1.8 * share  # without it, noise maxima pile up on the border
    assert even < 1.4 * share_eq  # about 1.15 (maxima are a little likelier where the image ends)


def test_equalising_borders_does_not_change_a_particle_inside():
    img = _noise(5) * 0.3
    img[disk((512, 480), 40, shape=img.shape)] += 1.0
    a = detect_blobs(img, dmin_px=40, dmax_px=120, method="edge", threshold=5.3)
    b = detect_blobs(img, dmin_px=40, dmax_px=120, method="edge", threshold=5.3, equalise_borders=False)
    ia, ib = np.argmax(a["score"]), np.argmax(b["score"])
    assert (round(a["x_px"][ia]), round(a["y_px"][ia])) == (480, 512)
    assert a["score"][ia] == b["score"][ib]
    assert a["diameter_px"][ia] == b["diameter_px"][ib]


def _mad(x: np.ndarray) -> float:
    return float(np.median(np.abs(x - np.median(x))))


def _noise3d(seed: int, shape=(64, 128, 128)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return ndi.gaussian_filter(rng.standard_normal(shape), 1.5).astype(np.float32)


def test_volume_faces_and_edges_are_equalised():
    r = blob_responses_3d(_noise3d(0), np.array([4.0]))[0]
    ratio = border_ratio(r, 8)
    assert 1.25 < ratio[0] < 1.6 and ratio[0] > ratio[1] and np.all(ratio[5:] == 1.0)
    inside = _mad(r[20:-20, 20:-20, 20:-20])

    def spread(v):
        face, edge = v[0, 20:-20, 20:-20], v[0, 0, 20:-20]  # one mirror; two mirrors (where two faces meet)
        return _mad(face) / inside, _mad(edge) / inside

    face, edge = spread(r)
    assert face > 1.25 and edge > 1.9
    eq = r.copy()
    equalise_plane(eq, float(np.median(r)), ratio)
    face, edge = spread(eq)
    assert 0.85 < face < 1.1
    assert edge < 1.35  # the ratios multiply where two faces meet
    assert np.array_equal(eq[10:-10, 10:-10, 10:-10], r[10:-10, 10:-10, 10:-10])


def test_noise_maxima_do_not_crowd_onto_the_faces_of_a_volume():
    shape = (64, 128, 128)

    def face_fraction(equalise: bool) -> float:
        near, share = [], []
        for seed in range(2):
            b = detect_blobs_3d(_noise3d(seed, shape), dmin_px=10, dmax_px=30, threshold=2.0, equalise_borders=equalise)
            pos = np.stack([b["z_px"], b["y_px"], b["x_px"]], axis=1)
            d = np.minimum(pos, np.array(shape) - 1 - pos).min(axis=1)
            band = 0.125 * b["diameter_px"]
            near.append(d < band)
            share.append(1 - np.prod([1 - 2 * band / n for n in shape], axis=0))
        return float(np.mean(np.concatenate(near)) / np.mean(np.concatenate(share)))

    assert face_fraction(False) > 4.0  # the mirror padding puts most noise maxima on the faces
    assert face_fraction(True) < 1.6
