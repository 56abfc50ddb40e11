"""The membrane detector: thin-membrane vesicles found as circles lined with membrane."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage as ndi

from lipoframe import pick
from lipoframe.algorithms.membrane import find_rings, membrane_map
from lipoframe.builtin.detectors import MembraneDetector, MembraneParams
from lipoframe.records import Micrograph, MicrographMeta, PickContext

THICKNESS = 6.0  # px
VESICLES = [(300, 300, 400), (300, 900, 300), (800, 350, 500), (850, 950, 250), (1300, 500, 350), (1350, 1200, 450)]
MEMBRANE = dict(detector="membrane", detector_params={"thickness": THICKNESS, "units": "px"}, refiner="none",
                filters=("diameter_range", "contamination"))


def _shell(shape, centre, outer, inner):
    """Projected thickness of a spherical shell (outer and inner radius)."""
    rr = np.hypot(*(np.indices(shape) - np.array(centre)[:, None, None]))
    return np.sqrt(np.clip(outer**2 - rr**2, 0, None)) - np.sqrt(np.clip(inner**2 - rr**2, 0, None))


def thin_vesicles(shape=(1700, 1700), items=VESICLES, *, noise=0.3, seed=0, lines=()):
    """Dark thin-membrane vesicles (lumen as grey as the background) in correlated noise."""
    img = np.zeros(shape, np.float32)
    for y, x, d in items:
        img -= _shell(shape, (y, x), d / 2, d / 2 - THICKNESS) / np.sqrt(d * THICKNESS)
    for r0, c0, r1, c1 in lines:  # straight dark membranes (sheets seen edge-on)
        n = int(np.hypot(r1 - r0, c1 - c0))
        rr, cc = np.linspace(r0, r1, n).astype(int), np.linspace(c0, c1, n).astype(int)
        line = np.zeros(shape, np.float32)
        line[rr, cc] = 1.0
        img -= 1.5 * ndi.grey_dilation(line, size=(int(THICKNESS), int(THICKNESS)))
    img = ndi.gaussian_filter(img, 1.0)
    rng = np.random.default_rng(seed)
    return img + noise * ndi.gaussian_filter(rng.normal(size=shape), 1.0).astype(np.float32) / 0.28


def test_each_thin_vesicle_is_found_once_with_its_outer_diameter():
    picks = pick(thin_vesicles(), units="px", dmin=200, dmax=600, **MEMBRANE)
    acc = picks[picks["accepted"]]
    assert len(acc) == len(VESICLES)
    for y, x, d in VESICLES:
        dist = np.hypot(acc["x_px"] - x, acc["y_px"] - y)
        best = acc.iloc[int(np.argmin(dist))]
        assert dist.min() < 4.0
        assert abs(best["diameter_px"] - d) / d < 0.02
    assert (acc["membrane_coverage"] >= 0.7).all()


def test_no_rings_in_noise_or_on_straight_membranes():
    noise = thin_vesicles(items=[], seed=3)
    assert not pick(noise, units="px", dmin=200, dmax=600, **MEMBRANE)["accepted"].any()
    lines = thin_vesicles(items=[], seed=4, lines=[(100, 100, 1600, 1500), (1600, 200, 200, 1500), (850, 0, 850, 1699)])
    assert not pick(lines, units="px", dmin=200, dmax=600, **MEMBRANE)["accepted"].any()


def test_membrane_map_and_find_rings_check_their_arguments():
    ridge = membrane_map(-thin_vesicles(items=[(200, 200, 300)], shape=(400, 400)), thickness=THICKNESS)
    assert ridge.dtype == np.float32 and ridge.min() >= 0 and ridge.max() <= 4
    rings = find_rings(ridge, rmin=100, rmax=180)
    assert len(rings["row"]) == 1 and set(rings) == {"row", "col", "radius", "score", "coverage"}
    with pytest.raises(ValueError, match="thickness"):
        membrane_map(ridge, thickness=0.5)
    with pytest.raises(ValueError, match="rmin"):
        find_rings(ridge, rmin=50, rmax=40)
    with pytest.raises(ValueError, match="ratio"):
        find_rings(ridge, rmin=50, rmax=80, ratio=1.0)
    with pytest.raises(ValueError, match="min_coverage"):
        find_rings(ridge, rmin=50, rmax=80, min_coverage=1.5)


@pytest.mark.parametrize("transpose", [False, True])
def test_ring_scores_do_not_wrap_around_to_the_opposite_border(transpose):
    # Membrane rings cut by the left border (radii 20 and 50: searched at
    # full resolution and on the map binned by 2) and a carbon edge along it;
    # nothing on the right but faint noise. Filtered with an unpadded FFT the
    # circles wrapped around: circles centred on the right border scored
    # up to 120 on the left border's rings and line.
    rng = np.random.default_rng(0)
    m, n = 200, 400
    ridge = 0.3 * np.clip(rng.normal(size=(m, n)), 0, 4).astype(np.float32)
    rr, cc = np.indices((m, n))
    for radius in (20, 50):
        ridge[np.abs(np.hypot(rr - m / 2, cc) - radius) < 1.5] = 4.0
    ridge[:, 2:4] = 4.0
    if transpose:  # the same at the top border, nothing at the bottom
        ridge = ridge.T.copy()
    rings = find_rings(ridge, rmin=12, rmax=60, threshold=6.0, min_coverage=0.0)
    far = rings["row"] if transpose else rings["col"]
    assert len(far) and far.min() < 10  # the cut rings themselves are found ...
    assert far.max() < n / 2  # ... and nothing on the opposite half


@pytest.mark.parametrize(
    "params,message",
    [({"thickness": 0}, "detector.thickness"), ({"units": "nm"}, "detector.units"), ({"threshold": 0}, "detector.threshold"),
     ({"min_coverage": 2}, "detector.min_coverage"), ({"ratio": 1.0}, "detector.ratio")],
)
def test_membrane_params_are_validated(params, message):
    with pytest.raises(ValueError, match=message):
        MembraneParams(**params)


def test_thickness_in_angstrom_needs_a_pixel_size():
    img = thin_vesicles(items=[(200, 200, 300)], shape=(400, 400))
    mic = Micrograph(meta=MicrographMeta(name="m", path="m.mrc", shape=img.shape), image=img)
    with pytest.raises(ValueError, match=r"pixel size is unknown; .*detector\.units=px"):
        MembraneDetector(MembraneParams()).detect(mic, PickContext(dmin_px=100, dmax_px=400))
    found = MembraneDetector(MembraneParams(thickness=12.0)).detect(mic, PickContext(dmin_px=100, dmax_px=400, pixel_size=2.0))
    assert len(found) == 1 and abs(found["diameter_px"].iloc[0] - 300) < 6


def test_vesicles_preset_runs_from_the_command_line(tmp_path, run_cli):
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import write_mrc

    write_mrc(tmp_path / "in" / "ves.mrc", thin_vesicles(), pixel_size=1.5)
    out = tmp_path / "out"
    code, _, err = run_cli("run", "+experiment=vesicles", f"input={tmp_path / 'in'}", f"output={out}",
                           "dmin=300", "dmax=900", "detector.thickness=9", "runner.progress=false", "runner.report=false")
    assert code == 0, err
    picks = pd.read_csv(out / "picks.csv")
    assert len(picks) == len(VESICLES)
    assert np.allclose(np.sort(picks["diameter_A"]), np.sort([d * 1.5 for _, _, d in VESICLES]), rtol=0.02)


def test_small_vesicles_are_left_to_the_edge_detector():
    img = thin_vesicles(items=[(200, 200, 300)], shape=(400, 400))
    mic = Micrograph(meta=MicrographMeta(name="m", path="m.mrc", shape=img.shape), image=img)
    with pytest.raises(ValueError, match="use detector=edge"):
        MembraneDetector(MembraneParams(thickness=20, units="px")).detect(mic, PickContext(dmin_px=100, dmax_px=150))
