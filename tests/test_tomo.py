"""Tomograms: 3D scale-space detection, 3D NMS, radial-profile diameters, synthetic volumes."""

from __future__ import annotations

import math
import mrcfile
import numpy as np
import pandas as pd
import pytest
from scipy.spatial import cKDTree

from lipoframe.algorithms.nms import size_aware_nms
from lipoframe.algorithms.radial3d import edge_radius, match_centre, radial_profile, refine_diameters
from lipoframe.algorithms.scale_space3d import DIAMETER_PER_SIGMA_3D, blob_responses_3d, detect_blobs_3d
from lipoframe.synthetic3d import random_spheres, render_volume, tomogram_spheres, write_tomogram_dataset

SMALL = (64, 128, 128)
CLI_SHAPE = (48, 96, 96)
# 16, 24 and 36 px at 10 Å/px: three sizes that span the 15-50 nm range.
SIZES_A = (160.0, 240.0, 360.0)


def ball(shape, centre, radius, *, shell=0.0) -> np.ndarray:
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    dist = np.sqrt(sum((g - c) ** 2 for g, c in zip(grids, centre)))
    occ = np.clip(radius + 0.5 - dist, 0, 1)
    if shell:
        occ = occ * np.clip(dist - (radius - shell) + 0.5, 0, 1)
    return occ.astype(np.float32)


@pytest.mark.parametrize("radius", [6.0, 13.0])
@pytest.mark.parametrize("method", ["log", "dog"])
def test_ball_diameter_is_2_sqrt3_sigma(radius, method):
    """The normalised LoG of a ball peaks at sigma = R / sqrt(3) (checked numerically)."""
    assert DIAMETER_PER_SIGMA_3D == pytest.approx(2 * math.sqrt(3))
    n = int(5 * radius)
    c = (n / 2, n / 2 - 0.6, n / 2 + 0.6)
    vol = ball((n, n, n), c, radius)
    b = detect_blobs_3d(vol, dmin_px=1.2 * radius, dmax_px=3 * radius, method=method, threshold_method="absolute", threshold=0.05, min_sigma_binned=2)
    assert b["diameter_px"][0] == pytest.approx(2 * radius, rel=0.02)
    assert (b["z_px"][0], b["y_px"][0], b["x_px"][0]) == pytest.approx(c, abs=0.3)


def test_responses_peak_along_scale_at_the_ball_sigma():
    r = 8.0
    sig = np.array([3.0, r / math.sqrt(3), 7.0])
    resp = blob_responses_3d(ball((64, 64, 64), (32, 32, 32), r), sig, method="log")
    assert resp.shape == (3, 64, 64, 64)
    assert np.argmax(resp[:, 32, 32, 32]) == 1


def test_empty_and_bad_volumes():
    b = detect_blobs_3d(np.zeros((32, 32, 32), np.float32), dmin_px=6, dmax_px=20)
    assert all(len(v) == 0 for v in b.values()) and "z_px" in b
    with pytest.raises(ValueError, match="3D"):
        detect_blobs_3d(np.zeros((32, 32)), dmin_px=6, dmax_px=20)
    with pytest.raises(ValueError, match="dmin_px"):
        detect_blobs_3d(np.zeros((32, 32, 32)), dmin_px=20, dmax_px=6)


def test_size_aware_nms_in_3d_keeps_2d_behaviour():
    # Same (x, y), far apart in z: two particles in 3D, one in 2D.
    xyz = np.array([[50.0, 50.0, 10.0], [52.0, 50.0, 60.0]])
    r = np.array([10.0, 10.0])
    s = np.array([2.0, 1.0])
    assert size_aware_nms(xyz, r, s).tolist() == [True, True]
    assert size_aware_nms(xyz[:, :2], r, s).tolist() == [True, False]
    assert size_aware_nms(np.empty(0), np.empty(0), np.empty(0)).shape == (0,)


def test_builtin_nms_uses_z():
    from lipoframe.builtin.nms import SizeAwareNms, SizeAwareParams
    from lipoframe.records import Micrograph, MicrographMeta, PickContext

    picks = pd.DataFrame({"x_px": [50.0, 52.0], "y_px": [50.0, 50.0], "z_px": [10.0, 60.0], "diameter_px": [20.0, 20.0],
                          "score": [2.0, 1.0], "pyramid_level": [0, 0], "sigma_px": [5.8, 5.8]})
    mic = Micrograph(meta=MicrographMeta(name="t", path="", shape=(80, 100, 100)), image=np.zeros((80, 100, 100), np.float32))
    ctx = PickContext(dmin_px=10, dmax_px=40)
    assert len(SizeAwareNms(SizeAwareParams()).suppress(picks, mic, ctx)) == 2
    assert len(SizeAwareNms(SizeAwareParams()).suppress(picks.drop(columns="z_px"), mic, ctx)) == 1


def test_radial_profile_and_edge():
    vol = ball((64, 64, 64), (30.3, 31.7, 32.2), 12.0)
    prof, count = radial_profile(vol, np.array([30.3, 31.7, 32.2]), 20)
    assert prof[0] == pytest.approx(1) and prof[-1] == pytest.approx(0)
    assert count[5] == pytest.approx(4 * np.pi * 5.5**2, rel=0.1)
    r, drop = edge_radius(prof, r_lo=6, r_hi=18)
    assert r == pytest.approx(12.0, abs=0.25) and drop > 0.5
    assert math.isnan(edge_radius(np.ones(20), r_lo=3, r_hi=15)[0])  # flat: no edge
    with pytest.raises(ValueError, match="centre"):
        radial_profile(vol, np.array([1.0, 2.0]), 5)


@pytest.mark.parametrize("shell", [0.0, 4.0])
def test_refine_diameters_solid_and_vesicle(shell):
    """Off-centre start and wrong diameter -> centre and diameter of spheres and vesicles."""
    true_c = np.array([40.0, 38.6, 41.3])
    vol = ball((80, 80, 80), true_c, 15.0, shell=shell)
    vol += 0.2 * np.random.default_rng(1).standard_normal(vol.shape).astype(np.float32)
    start = true_c + [1.8, -1.5, 1.2]
    d, drop, c = refine_diameters(vol, start[None], np.array([36.0]))
    assert d[0] == pytest.approx(30.0, rel=0.03)
    assert np.linalg.norm(c[0] - true_c) < 0.6
    assert np.linalg.norm(match_centre(vol, start, 15.0) - true_c) < 0.6


def test_refine_diameters_names_bad_rounds_and_centres():
    vol = ball((40, 40, 40), (20.0, 20.0, 20.0), 8.0)
    d, _, _ = refine_diameters(vol, np.zeros((0, 3)), np.zeros(0))
    assert d.shape == (0,)
    with pytest.raises(ValueError, match="rounds must be >= 1"):  # was UnboundLocalError ('dd')
        refine_diameters(vol, np.array([[20.0, 20.0, 20.0]]), np.array([16.0]), rounds=0)
    with pytest.raises(ValueError, match="centres must be"):  # the second centre was given a NaN diameter
        refine_diameters(vol, np.array([[20.0, 20.0, 20.0], [10.0, 10.0, 10.0]]), np.array([16.0]))
    with pytest.raises(ValueError, match="centres must be"):  # (x, y, z) of 2 picks were read as 3 (row, col) centres
        refine_diameters(vol[20], np.array([[20.0, 20.0, 20.0], [10.0, 10.0, 10.0]]), np.array([16.0, 16.0]))


def test_random_spheres_do_not_overlap_and_fit():
    sp = random_spheres((40, 80, 80), [20, 16, 12, 12], seed=3, gap=2)
    xyz = sp[["x_px", "y_px", "z_px"]].to_numpy()
    r = sp["diameter_px"].to_numpy() / 2
    for i in range(len(sp)):
        for j in range(i):
            assert np.linalg.norm(xyz[i] - xyz[j]) >= r[i] + r[j] + 2 - 1e-9
    assert np.all(xyz - r[:, None] >= 0) and np.all(xyz[:, 2] + r <= 39)


def test_write_tomogram_dataset(tmp_path):
    paths = write_tomogram_dataset(tmp_path, n=2, seed=4, shape=(48, 96, 96), pixel_size=12.0, diameters_A=(150, 250), counts=(2, 1), kinds=("sphere", "vesicle"))
    assert [p.name for p in paths] == ["tomo_001.mrc", "tomo_002.mrc"]
    with mrcfile.open(paths[0]) as m:
        assert m.data.shape == (48, 96, 96) and m.data.dtype == np.float32
        assert float(m.voxel_size.x) == pytest.approx(12.0)
    truth = pd.read_csv(tmp_path / "truth.csv")
    assert list(truth.columns) == ["micrograph", "x_px", "y_px", "z_px", "diameter_px", "kind"]
    assert len(truth) == 6 and set(truth["kind"]) == {"sphere", "vesicle"}
    again = tomogram_spheres(0, seed=4, shape=(48, 96, 96), pixel_size=12.0, diameters_A=(150, 250), counts=(2, 1), kinds=("sphere", "vesicle"))
    first = truth[truth.micrograph == "tomo_001"].reset_index(drop=True)
    assert np.allclose(first[["x_px", "y_px", "z_px", "diameter_px"]], again[["x_px", "y_px", "z_px", "diameter_px"]], atol=0.01)
    with pytest.raises(ValueError, match="kinds"):
        tomogram_spheres(0, kinds=("cube",))


def test_write_tomogram_dataset_keeps_other_tomograms_truth_and_refuses_a_2d_one(tmp_path):
    """It overwrote truth.csv whole: a 2D simulated set's truth was lost, and so were the rows of tomograms it did not write again."""
    small = dict(shape=(32, 64, 64), pixel_size=12.0, diameters_A=(150,), counts=(2,))
    write_tomogram_dataset(tmp_path, n=3, seed=1, **small)
    lines0 = (tmp_path / "truth.csv").read_text().splitlines()
    write_tomogram_dataset(tmp_path, n=2, seed=2, **small)
    truth = pd.read_csv(tmp_path / "truth.csv")
    assert list(dict.fromkeys(truth.micrograph)) == ["tomo_001", "tomo_002", "tomo_003"]
    lines = (tmp_path / "truth.csv").read_text().splitlines()
    assert [ln for ln in lines if ln.startswith("tomo_003,")] == [ln for ln in lines0 if ln.startswith("tomo_003,")]
    new = tomogram_spheres(0, seed=2, **small)
    assert np.allclose(truth.loc[truth.micrograph == "tomo_001", ["x_px", "y_px", "z_px"]], new[["x_px", "y_px", "z_px"]], atol=0.01)
    (tmp_path / "tomo_003.mrc").unlink()  # gone: its rows go too
    write_tomogram_dataset(tmp_path, n=1, seed=2, **small)
    assert set(pd.read_csv(tmp_path / "truth.csv").micrograph) == {"tomo_001", "tomo_002"}
    # a 2D simulated set's truth.csv (no z_px) or one's own is not written over, and nothing is written
    for text in ("micrograph,x_px,y_px,diameter_px,kind\none,10.00,20.00,30.00,solid\n", "micrograph,x_px,y_px,z_px\nmine,1,2,3\n"):
        folder = tmp_path / f"other{len(text)}"
        folder.mkdir()
        (folder / "truth.csv").write_text(text)
        with pytest.raises(ValueError, match=r"truth.csv: not the truth.csv of a set of tomograms lipoframe simulate dims=3 wrote"):
            write_tomogram_dataset(folder, n=1, **small)
        assert [p.name for p in folder.iterdir()] == ["truth.csv"] and (folder / "truth.csv").read_text() == text


def _pick_volume(seed: int):
    from lipoframe.runner import pick

    truth = tomogram_spheres(0, seed=seed, shape=SMALL, pixel_size=10.0, diameters_A=SIZES_A, counts=(3, 2, 2))
    vol = render_volume(SMALL, truth, noise=0.3, seed=seed)
    picks = pick(vol, dmin=12, dmax=45, units="px", detector="dog", detector_params={"min_sigma_binned": 2.0},
                 refiner="radial_profile_3d", filters=("diameter_range",))
    return truth, picks


@pytest.mark.parametrize("seed", [0, 3])
def test_three_sizes_one_pick_per_sphere(seed):
    """Done-when of issue 8: spheres of 3 sizes -> one pick each, diameters within 10 %."""
    truth, picks = _pick_volume(seed)
    acc = picks[picks["accepted"]]
    sizes = np.argmin(np.abs(truth["diameter_px"].to_numpy()[:, None] - np.array(SIZES_A) / 10.0), axis=1)
    assert len(truth) == 7 and set(sizes) == {0, 1, 2}
    assert len(acc) == len(truth)  # no false positives, no duplicates
    tree = cKDTree(acc[["x_px", "y_px", "z_px"]].to_numpy())
    dist, idx = tree.query(truth[["x_px", "y_px", "z_px"]].to_numpy())
    assert len(set(idx)) == len(truth)  # each sphere its own pick
    assert np.all(dist < 0.1 * truth["diameter_px"].to_numpy())
    ratio = acc["diameter_px"].to_numpy()[idx] / truth["diameter_px"].to_numpy()
    assert np.all(np.abs(ratio - 1) < 0.10)
    assert acc["radial_edge_found"].all()


def test_refiner_params_and_2d_input():
    from lipoframe.builtin.tomo import RadialProfile3dParams, RadialProfile3dRefiner
    from lipoframe.records import Micrograph, MicrographMeta, PickContext

    with pytest.raises(ValueError, match="refiner.search"):
        RadialProfile3dParams(search=1.0)
    with pytest.raises(ValueError, match="refiner.min_radius_binned"):
        RadialProfile3dParams(min_radius_binned=1)
    vol = -ball((48, 64, 64), (24, 30, 33), 10)  # dark particle, polarity 'dark'
    mic = Micrograph(meta=MicrographMeta(name="v", path="", shape=vol.shape), image=vol)
    picks = pd.DataFrame({"x_px": [33.0], "y_px": [30.0], "diameter_px": [20.0], "score": [1.0], "pyramid_level": [0], "sigma_px": [5.8]})
    with pytest.raises(ValueError, match="z_px"):
        RadialProfile3dRefiner(RadialProfile3dParams()).refine(picks, mic, PickContext(dmin_px=10, dmax_px=40))
    out = RadialProfile3dRefiner(RadialProfile3dParams()).refine(picks.assign(z_px=24.0, diameter_px=25.0), mic, PickContext(dmin_px=10, dmax_px=40))
    assert out["diameter_px"].iloc[0] == pytest.approx(20.0, rel=0.03)
    assert out["diameter_initial_px"].iloc[0] == 25.0
    empty = RadialProfile3dRefiner(RadialProfile3dParams()).refine(picks.iloc[0:0], mic, PickContext(dmin_px=10, dmax_px=40))
    assert len(empty) == 0


def test_cli_tomo_preset(tmp_path, run_cli):
    """`lipoframe run +experiment=tomo` on an MRC tomogram: csv with z_px, masks in 3D."""
    write_tomogram_dataset(tmp_path / "in", n=1, seed=1, shape=CLI_SHAPE, pixel_size=10.0, diameters_A=SIZES_A, counts=(2, 1, 1))
    out = tmp_path / "out"
    code, stdout, stderr = run_cli("run", "+experiment=tomo", f"input={tmp_path / 'in'}", f"output={out}", "dmin=120", "dmax=450",
                                   "writer=[csv,mask]", "runner.workers=1", "runner.progress=false", "runner.report=false")
    assert code == 0, stderr[-2000:]
    picks = pd.read_csv(out / "picks.csv")
    truth = pd.read_csv(tmp_path / "in" / "truth.csv")
    assert "z_px" in picks.columns and len(picks) == len(truth)
    assert np.allclose(np.sort(picks["diameter_A"]), np.sort(truth["diameter_px"] * 10.0), rtol=0.1)
    with mrcfile.open(out / "masks" / "tomo_001_labels.mrc") as m:
        assert m.data.shape == CLI_SHAPE and m.data.max() == len(truth)


@pytest.mark.parametrize("planes", [15, 8, 4])
def test_a_sphere_in_a_volume_thinner_than_8_binned_planes_is_detected(planes):
    """A pyramid level with fewer than 8 planes was skipped: a 30-voxel sphere in 15 planes (binned x2
    for its scale: 7 planes) gave no detection at all, though its in-plane contrast is plain."""
    spheres = pd.DataFrame({"x_px": [40.0, 100.0], "y_px": [45.0, 90.0], "z_px": [(planes - 1) / 2] * 2, "diameter_px": [30.0, 30.0]})
    vol = -render_volume((planes, 140, 140), spheres, noise=0.2, seed=1)
    b = detect_blobs_3d(vol, dmin_px=16.8, dmax_px=50.4, min_sigma_binned=2.0)
    # Each sphere is found (in a few planes the response is flat in z, so one may be found at both
    # faces: NMS keeps one), and nothing else.
    dist = np.hypot(np.asarray(b["x_px"])[:, None] - spheres["x_px"].to_numpy(), np.asarray(b["y_px"])[:, None] - spheres["y_px"].to_numpy())
    assert set(dist.argmin(axis=1)) == {0, 1} and np.all(dist.min(axis=1) < 1.5), b
    assert np.all((np.asarray(b["z_px"]) >= -0.5) & (np.asarray(b["z_px"]) <= planes - 0.5))
    assert np.allclose(np.asarray(b["sigma_px"]) * DIAMETER_PER_SIGMA_3D, 30, rtol=0.3)


def test_a_volume_thinner_than_the_diameter_range_is_picked_and_one_too_thin_to_search_is_named(tmp_path, run_cli):
    """A volume with fewer planes than dmin was refused, though spheres cut by its faces are found by their
    in-plane contrast (benchmarks/thin_volumes.py); only a volume with fewer planes than the detector's
    binning of the smallest diameter cannot be searched (it failed with 'image of shape (2, 96, 96) is
    smaller than one block of 4')."""
    from lipoframe.synthetic import write_mrc

    (tmp_path / "in").mkdir()
    spheres = pd.DataFrame({"x_px": [48.0], "y_px": [46.0], "z_px": [3.5], "diameter_px": [48.0]})
    write_mrc(tmp_path / "in" / "thin.mrc", render_volume((8, 96, 96), spheres, noise=0.3, seed=0), 10.0)
    write_mrc(tmp_path / "in" / "flat.mrc", render_volume((2, 96, 96), spheres.assign(z_px=0.5), noise=0.3, seed=0), 10.0)
    code, _, stderr = run_cli("run", "+experiment=tomo", f"input={tmp_path / 'in'}", f"output={tmp_path / 'out'}", "units=px",
                              "dmin=40", "dmax=60", "writer=[csv]", "runner.workers=1", "runner.progress=false", "runner.report=false")
    assert code == 1, stderr[-2000:]
    assert (f"{tmp_path / 'in' / 'flat.mrc'}: volume of 2 planes is too thin to search: the smallest diameter (40 px) is "
            "searched binned x4, which needs at least 4 planes; raise detector.min_sigma_binned (now 2) or lower dmin") in stderr
    assert f"{tmp_path / 'in' / 'thin.mrc'}: volume of 8 planes is thinner than the largest diameter (60 px)" in stderr
    assert "thinner than the smallest diameter" not in stderr
    picks = pd.read_csv(tmp_path / "out" / "picks.csv")
    assert len(picks) == 1 and picks["micrograph"].iloc[0] == "thin"
    assert np.allclose(picks[["x_px", "y_px"]], [[48, 46]], atol=1.0) and picks["diameter_px"].iloc[0] == pytest.approx(48, rel=0.05)


def test_diameters_whose_binning_a_thin_volume_cannot_fill_are_named(caplog):
    """The coarse pyramid levels of a wide range bin a 3-plane volume x4: binning failed ('smaller than one
    block of 4') and the whole volume with it; those diameters are now left out with a warning."""
    from lipoframe.runner import pick

    spheres = pd.DataFrame({"x_px": [40.0], "y_px": [40.0], "z_px": [1.0], "diameter_px": [16.0]})
    vol = render_volume((3, 96, 96), spheres, noise=0.2, seed=0)
    with caplog.at_level("WARNING", logger="lipoframe"):
        picks = pick(vol, dmin=12, dmax=60, units="px", detector="dog", detector_params={"min_sigma_binned": 2.0},
                     refiner="radial_profile_3d", filters=("diameter_range",))
    assert np.allclose(picks.loc[picks["accepted"], ["x_px", "y_px"]], [[40, 40]], atol=1.0)
    text = caplog.text
    assert "image: volume of 3 planes is too thin for the search of diameters over " in text and "(binned x4, which needs 4 planes)" in text


def test_particles_thicker_than_the_volume_are_picked_and_the_warning_says_they_score_lower(tmp_path, run_cli):
    """The warning said particles thicker than the volume 'cannot be picked'; spheres of 14 and 16
    voxels cut by the faces of a 12-plane volume are picked with their diameters."""
    from lipoframe.synthetic import write_mrc
    from lipoframe.synthetic3d import render_volume

    spheres = pd.DataFrame({"x_px": [30.0, 66.0], "y_px": [40.0, 56.0], "z_px": [5.5, 5.5], "diameter_px": [14.0, 16.0]})
    (tmp_path / "in").mkdir()
    write_mrc(tmp_path / "in" / "lamella.mrc", render_volume((12, 96, 96), spheres, noise=0.2, seed=0), 10.0)
    code, _, stderr = run_cli("run", "+experiment=tomo", f"input={tmp_path / 'in'}", f"output={tmp_path / 'out'}", "units=px",
                              "dmin=6", "dmax=20", "writer=[csv]", "runner.workers=1", "runner.progress=false", "runner.report=false")
    assert code == 0, stderr[-2000:]
    picks = pd.read_csv(tmp_path / "out" / "picks.csv").sort_values("x_px")
    assert np.allclose(picks[["x_px", "y_px", "z_px"]], [[30, 40, 5.5], [66, 56, 5.5]], atol=0.5)
    assert np.allclose(picks["diameter_px"], [14, 16], rtol=0.05)
    line = next(ln for ln in stderr.splitlines() if "lamella.mrc: volume of 12 planes is thinner than the largest diameter (20 px)" in ln)
    assert "cannot be picked" not in line and "cut by its top and bottom and score lower" in line, line


def test_2d_refiner_on_a_volume_names_the_refiners_that_work_with_any_detector():
    """detector=heatmap on a tomogram keeps the default 2D refiner; the message pointed only to
    +experiment=tomo, which does not combine with detector=heatmap (a config error)."""
    from lipoframe.builtin.refiners import RadialProfileParams, RadialProfileRefiner
    from lipoframe.records import Micrograph, MicrographMeta, PickContext

    vol = np.zeros((8, 64, 64), np.float32)
    mic = Micrograph(meta=MicrographMeta(name="v", path="v.mrc", shape=vol.shape), image=vol)
    picks = pd.DataFrame({"x_px": [32.0], "y_px": [32.0], "z_px": [4.0], "diameter_px": [20.0], "score": [1.0], "sigma_px": [5.0]})
    with pytest.raises(ValueError, match=r"refiner=radial_profile_3d or refiner=none"):
        RadialProfileRefiner(RadialProfileParams()).refine(picks, mic, PickContext(dmin_px=10, dmax_px=40))
