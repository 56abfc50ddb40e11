"""The noise estimate of crowded micrographs (scale_space.crowding_correction)."""

import numpy as np
from scipy import ndimage as ndi
from skimage.draw import disk

from lipoframe.algorithms.scale_space import blob_responses, crowding_correction, detect_blobs, measure_tiles, robust_noise

SIZE = 1024
DIAMETER = 40.0
SIGMAS = np.array([10.0, 11.0, 12.1, 13.3, 14.6, 16.1, 17.7])


def _noise(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = ndi.gaussian_filter(rng.standard_normal((SIZE, SIZE)), 1.5)
    return (n / n.std()).astype(np.float32)


def _crowded(contrast: float, seed: int = 0, free_cols: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Touching discs on a square lattice over all but the last ``free_cols`` columns."""
    img = np.zeros((SIZE, SIZE), np.float32)
    pitch = DIAMETER + 2
    centres = [
        (r, c)
        for r in np.arange(pitch / 2, SIZE - pitch / 2, pitch)
        for c in np.arange(pitch / 2, SIZE - free_cols - pitch / 2, pitch)
    ]
    for r, c in centres:
        img[disk((r, c), DIAMETER / 2, shape=img.shape)] += contrast
    return img + _noise(seed), np.array(centres)


def test_no_candidates_or_sparse_field_leave_the_noise_alone():
    resp = blob_responses(_noise(1), SIGMAS, method="edge")
    _, noise = robust_noise(resp, SIGMAS)
    assert np.all(crowding_correction(resp, SIGMAS, noise, np.empty(0), np.empty(0), np.empty(0)) == 1)
    # A few discs: most tiles are background anyway.
    img = _noise(1)
    centres = np.array([(200.0, 200.0), (600.0, 500.0), (800.0, 850.0)])
    for r, c in centres:
        img[disk((r, c), DIAMETER / 2, shape=img.shape)] += 3
    resp = blob_responses(img, SIGMAS, method="edge")
    _, noise = robust_noise(resp, SIGMAS)
    f = crowding_correction(resp, SIGMAS, noise, centres[:, 0], centres[:, 1], np.full(3, DIAMETER / 2 * 1.1))
    assert np.all(f > 0.95)


def test_correction_removes_the_particles_share_in_a_crowded_field():
    img, centres = _crowded(contrast=2.5)
    resp = blob_responses(img, SIGMAS, method="edge")
    _, noise = robust_noise(resp, SIGMAS)
    _, truth = robust_noise(blob_responses(_noise(0), SIGMAS, method="edge"), SIGMAS)
    # The scenario is meaningful: the tile estimate is inflated by the particles.
    assert np.median(noise / truth) > 1.2
    radii = np.full(len(centres), DIAMETER / 2 * 1.1)
    f = crowding_correction(resp, SIGMAS, noise, centres[:, 0], centres[:, 1], radii, floor=0.5)
    assert np.all((f > 0.5) & (f <= 1))
    assert np.all(np.abs(noise * f / truth - 1) < 0.05)


def test_floor_bounds_the_factor():
    img, centres = _crowded(contrast=1.5)
    resp = blob_responses(img, SIGMAS, method="edge")
    _, noise = robust_noise(resp, SIGMAS)
    radii = np.full(len(centres), DIAMETER / 2 * 1.1)
    f = crowding_correction(resp, SIGMAS, noise * 3, centres[:, 0], centres[:, 1], radii, floor=0.75)
    assert np.allclose(f, 0.75)


def test_crowding_finds_more_faint_particles_without_more_noise_picks():
    img, centres = _crowded(contrast=1.4, seed=3)
    kw = dict(dmin_px=30, dmax_px=56, method="edge", threshold=5.6, min_sigma_binned=3)

    def found(crowding: bool) -> tuple[int, int]:
        b = detect_blobs(img, crowding=crowding, **kw)
        pts = np.c_[b["y_px"], b["x_px"]]
        d = np.hypot(*(pts[:, None, :] - centres[None, :, :]).transpose(2, 0, 1))
        near = d.min(axis=1) < 0.3 * DIAMETER
        in_free = b["x_px"] > SIZE - 256 + DIAMETER
        return len({int(i) for i in d.argmin(axis=1)[near]}), int(np.sum(in_free & ~near))

    hits_off, noise_off = found(False)
    hits_on, noise_on = found(True)
    assert hits_on > 1.5 * hits_off
    assert noise_on <= noise_off + 2
    # On pure noise the correction adds nothing.
    on, off = (len(detect_blobs(_noise(5), crowding=c, **kw)["x_px"]) for c in (True, False))
    assert on <= off <= 5


def test_a_constant_region_is_not_taken_for_quiet_background():
    """Zero padding, an area filled with the mean or masked out: its tiles spread by float rounding only.
    Once such a region covered more than the 35 % quantile's share of the image, the noise estimate fell to
    that rounding and every response looked significant: on a 512 px micrograph with 12 particles and its
    left 40 % filled with the mean, 117 false picks and none of the particles."""
    img = _noise(2)
    centres = np.array([(200.0, 700.0), (600.0, 800.0), (850.0, 650.0)])
    for r, c in centres:
        img[disk((r, c), DIAMETER / 2, shape=img.shape)] += 3
    resp = blob_responses(img, SIGMAS, method="edge")
    _, truth = robust_noise(resp, SIGMAS)
    filled = img.copy()
    filled[:, :450] = filled.mean()  # 44 % of the image
    resp = blob_responses(filled, SIGMAS, method="edge")
    tiles = measure_tiles(resp, SIGMAS, image=filled)
    spreads, _, cols = tiles[0]
    assert np.isnan(spreads[:, : 450 // cols]).all() and np.isfinite(spreads[:, 450 // cols + 1 :]).all()  # the filled tiles
    _, noise = robust_noise(resp, SIGMAS, tiles=tiles)
    assert np.all(np.abs(noise / truth - 1) < 0.2)
    f = crowding_correction(resp, SIGMAS, noise, centres[:, 0], centres[:, 1], np.full(3, DIAMETER / 2 * 1.1), tiles=tiles)
    assert np.all(f > 0.95)  # the filled tiles are not candidate-free background either
    kw = dict(dmin_px=30, dmax_px=56, method="edge", threshold=5.6, min_sigma_binned=3, crowding=True)
    for image in (img, filled):
        b = detect_blobs(image, **kw)
        d = np.hypot(b["y_px"][:, None] - centres[None, :, 0], b["x_px"][:, None] - centres[None, :, 1])
        near = d.min(axis=1) < 0.3 * DIAMETER
        assert len(set(d.argmin(axis=1)[near])) == 3
        assert np.sum(~near & (b["x_px"] > 450 + DIAMETER)) <= 5  # noise maxima where the image holds noise
