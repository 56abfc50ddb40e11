"""Heatmap post-processing: probability/centre maps -> one pick per particle."""

from __future__ import annotations

from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import tifffile
from scipy import ndimage as ndi
from skimage.draw import disk

from lipoframe.algorithms.heatmap import (
    cut_disc,
    equivalent_diameter,
    find_centres,
    fuse_instances,
    heatmap_picks,
    normalise_heatmap,
)
from lipoframe.algorithms.pyramid import block_mean
from lipoframe.builtin.heatmap import HeatmapDetector, HeatmapParams, infer_downscale
from lipoframe.records import InputError, Micrograph, MicrographMeta, PickContext

# (row, col, diameter): two overlapping discs (one component), and three apart.
DISCS = [(70, 80, 60), (70, 137, 60), (210, 230, 120), (240, 70, 30), (120, 300, 90)]
SHAPE = (320, 400)


def disc_map(shape=SHAPE, discs=DISCS, value=0.9) -> np.ndarray:
    hm = np.zeros(shape, np.float32)
    for r, c, d in discs:
        hm[disk((r, c), d / 2, shape=shape)] = value
    return hm


def match(picks: dict, discs=DISCS) -> tuple[np.ndarray, np.ndarray]:
    """For each disc: distance to the nearest pick and that pick's diameter ratio."""
    xy = np.c_[picks["x_px"], picks["y_px"]]
    dist, ratio = [], []
    for r, c, d in discs:
        e = np.hypot(xy[:, 0] - c, xy[:, 1] - r)
        i = int(np.argmin(e))
        dist.append(e[i])
        ratio.append(picks["diameter_px"][i] / d)
    return np.array(dist), np.array(ratio)


def test_discs_come_back_one_pick_each():
    p = heatmap_picks(disc_map(), min_distance=10, min_diameter=10)
    assert len(p["x_px"]) == len(DISCS)
    dist, ratio = match(p)
    assert dist.max() < 1.0
    assert np.all(np.abs(ratio - 1) < 0.03)
    assert np.allclose(p["score"], 0.9)



@pytest.mark.parametrize("centre", [(40.5, 50.5), (40.5, 50.0), (40.0, 50.0)])
def test_a_disc_of_even_width_is_one_pick_at_any_min_distance(centre):
    """The distance map of a disc centred between pixels peaks on 2 or 4 equal pixels: one
    maximum, not four quarter-discs (the default min_distance of 1 split it into 4 picks of
    half the diameter). Two such discs touching stay two."""
    yy, xx = np.mgrid[:128, :160]
    one = ((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= 400).astype(np.float32)
    for peaks in ("distance", "probability"):
        p = heatmap_picks(0.9 * one, peaks=peaks)
        assert len(p["x_px"]) == 1
        assert abs(p["x_px"][0] - centre[1]) < 0.01 and abs(p["y_px"][0] - centre[0]) < 0.01
        assert abs(p["diameter_px"][0] - 40) < 1
    two = one + ((yy - centre[0]) ** 2 + (xx - centre[1] - 40) ** 2 <= 400)
    p = heatmap_picks(0.9 * np.minimum(two, 1).astype(np.float32))
    assert sorted(np.round(p["x_px"], 1)) == [centre[1], centre[1] + 40]
    # The centres themselves: one per plateau, the pixel nearest its middle.
    assert len(find_centres(ndi.distance_transform_edt(one), threshold=0.5)) == 1
    ball = (np.sum((np.indices((40, 40, 40)) - 19.5) ** 2, axis=0) <= 100).astype(np.float32)
    assert len(heatmap_picks(ball)["x_px"]) == 1

def test_soft_map_and_uint8_mask_give_the_same_discs():
    soft = ndi.gaussian_filter(disc_map(value=1.0), 2.0)  # 0.5 contour stays on the disc edge
    p = heatmap_picks(soft, min_distance=10, min_diameter=10)
    assert len(p["x_px"]) == len(DISCS)
    dist, ratio = match(p)
    assert dist.max() < 1.0 and np.all(np.abs(ratio - 1) < 0.04)
    mask255 = (disc_map() > 0).astype(np.uint8) * 255
    q = heatmap_picks(normalise_heatmap(mask255), min_distance=10, min_diameter=10)
    assert len(q["x_px"]) == len(DISCS)
    assert np.allclose(np.sort(q["diameter_px"]), np.sort(p["diameter_px"]), rtol=0.04)


@pytest.mark.parametrize("factor", [2, 4])
def test_downscaled_heatmap_maps_back_to_full_resolution(factor):
    # A network that works on a binned micrograph: block means of the full-size map.
    hm = block_mean(disc_map(), factor)
    p = heatmap_picks(hm, factor=factor, min_distance=10 // factor, min_diameter=10 / factor)
    assert len(p["x_px"]) == len(DISCS)
    dist, ratio = match(p)
    assert dist.max() < 0.5 * factor + 0.5
    assert np.all(np.abs(ratio - 1) < 0.06)


# (row, col, diameter) of discs cut by the border of SHAPE: through their
# centre, 0.25 and 0.75 radii inside, and into the bottom-right corner.
CUT = [(100, 0, 80), (200, 10, 80), (160, 370, 80), (300, 380, 100)]


@pytest.mark.parametrize("peaks", ["distance", "probability"])
def test_a_particle_cut_by_the_border_keeps_its_centre_and_diameter(peaks):
    """The part of a cut disc in the image has its centroid inward and too small an
    area: a disc cut through its centre came back 0.42 radii inward and 0.71 of its
    diameter (in the simulated border-cut scene up to 26 % small and 0.39 radii off;
    the radial refiner, started there, accepted one 0.19 radii off and 14 % small and
    rejected others as too small instead of at the border)."""
    p = heatmap_picks(disc_map(discs=CUT), min_distance=10, min_diameter=10, peaks=peaks)
    assert len(p["x_px"]) == len(CUT)
    dist, ratio = match(p, CUT)
    assert dist.max() < 1.5
    assert np.all(np.abs(ratio - 1) < 0.03)
    # centre='peak' keeps the seed, but the diameter is the whole disc's too.
    q = heatmap_picks(disc_map(discs=CUT), min_distance=10, min_diameter=10, peaks=peaks, centre="peak")
    assert np.all(np.abs(match(q, CUT)[1] - 1) < 0.03)


def test_a_cut_particle_centred_beyond_the_border_is_reported_on_it():
    p = heatmap_picks(disc_map(discs=[(150, -20, 100)]), min_distance=10, min_diameter=10)
    assert len(p["x_px"]) == 1
    assert p["x_px"][0] == 0.0 and abs(p["y_px"][0] - 150) < 1
    assert abs(p["diameter_px"][0] - 100) < 3


def test_the_micrograph_border_counts_when_the_map_reaches_past_it():
    """A map of a padded network input (ceil(size / factor)) is background past the
    micrograph's last column: a particle cut there does not touch the map's border."""
    mic_shape = (SHAPE[0], SHAPE[1] - 6)
    hm = disc_map(discs=[(150, mic_shape[1] - 1 - 10, 80)])
    hm[:, mic_shape[1]:] = 0
    p = heatmap_picks(hm, min_distance=10, min_diameter=10, image_shape=mic_shape)
    assert abs(p["x_px"][0] - (mic_shape[1] - 11)) < 1.5 and abs(p["diameter_px"][0] - 80) < 2.5
    q = heatmap_picks(hm, min_distance=10, min_diameter=10)  # the map's border is further out
    assert q["diameter_px"][0] < 75


def test_cut_disc_inverts_the_visible_part():
    yy, xx = np.indices((200, 300))
    for cy, cx, r in [(100, 0.0, 40.0), (100, 12.5, 40.0), (100, -25.0, 40.0), (5.0, 290.0, 50.0)]:
        part = np.hypot(yy - cy, xx - cx) <= r
        centre, radius = cut_disc(part.sum(), (yy[part].mean(), xx[part].mean()), (-0.5, -0.5), (199.5, 299.5))
        assert np.hypot(*(centre - (cy, cx))) < 1.0 and abs(radius - r) < 1.0
    # Not cut: the equivalent disc at the centroid.
    centre, radius = cut_disc(100 * np.pi, (100.0, 100.0), (-0.5, -0.5), (199.5, 299.5))
    assert np.allclose(centre, (100, 100)) and radius == pytest.approx(10.0)
    with pytest.raises(ValueError, match="area"):
        cut_disc(0, (10.0, 10.0), (-0.5, -0.5), (99.5, 99.5))


def test_components_below_min_diameter_are_removed():
    hm = disc_map(discs=DISCS + [(20, 380, 8)])
    kept = heatmap_picks(hm, min_distance=10, min_diameter=20)
    assert len(kept["x_px"]) == len(DISCS)
    allp = heatmap_picks(hm, min_distance=3, min_diameter=0)
    assert len(allp["x_px"]) == len(DISCS) + 1


def test_probability_peaks_with_min_distance():
    # Centre-style map: Gaussian bumps; two of them 12 px apart merge under min_distance=20.
    cmap = np.zeros((100, 100), np.float32)
    for r, c, a in [(30, 30, 1.0), (30, 42, 0.8), (70, 70, 0.9)]:
        bump = np.zeros_like(cmap)
        bump[r, c] = 1
        bump = ndi.gaussian_filter(bump, 3)
        cmap = np.maximum(cmap, a * bump / bump.max())
    far = find_centres(cmap, threshold=0.5, min_distance=20)
    near = find_centres(cmap, threshold=0.5, min_distance=5)
    assert len(far) == 2 and len(near) == 3
    assert tuple(far[0]) == (30, 30)  # the higher of the merged pair, first by value


def test_fuse_instances_nearest_centre_and_check_center():
    mask = disc_map() > 0
    centres = np.array([[70, 80], [70, 137], [210, 230]])  # no centre for two discs
    labels, seeds = fuse_instances(mask, centres, check_center=False)
    assert labels.max() == 3  # discs without a centre are background
    assert labels[240, 70] == 0
    # the touching pair is split at the middle
    assert labels[70, 105] != labels[70, 115] and labels[70, 105] > 0 and labels[70, 115] > 0
    areas = np.bincount(labels.ravel())[1:]
    assert np.allclose(equivalent_diameter(areas[:2], 2), 60, rtol=0.03)
    labels_c, seeds_c = fuse_instances(mask, centres, check_center=True)
    assert labels_c.max() == 5  # centre-less discs kept whole
    assert np.isnan(seeds_c).any(axis=1).sum() == 2
    # a component with a single centre is not split in either mode
    one = fuse_instances(mask, np.array([[70, 80]]), check_center=True)[0]
    assert len(np.unique(one[mask & (np.abs(np.arange(SHAPE[1]) - 110) < 45)[None, :] & (np.abs(np.arange(SHAPE[0]) - 70) < 35)[:, None]])) == 1


def test_mask_plus_centre_map_splits_merged_particles():
    mask = disc_map(discs=[(50, 50, 50), (50, 95, 50)])  # merged into one component
    assert ndi.label(mask > 0.5)[1] == 1
    cmap = np.zeros_like(mask)
    cmap[50, 50] = cmap[50, 95] = 1.0
    p = heatmap_picks(mask, centre_map=cmap, min_distance=5, check_center=True)
    assert len(p["x_px"]) == 2
    assert np.allclose(np.sort(p["x_px"]), [50, 95], atol=1.5)
    assert np.allclose(p["diameter_px"], 50, rtol=0.06)


def test_3d_probability_volume():
    z, y, x = np.ogrid[:48, :64, :64]
    vol = np.zeros((48, 64, 64), np.float32)
    for c, r in [((20, 20, 20), 8), ((28, 40, 44), 12)]:
        vol[(z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 <= r * r] = 0.8
    p = heatmap_picks(vol, min_distance=4, min_diameter=4)
    assert len(p["x_px"]) == 2
    order = np.argsort(p["diameter_px"])
    assert np.allclose(p["z_px"][order], [20, 28], atol=0.5)
    assert np.allclose(p["diameter_px"][order], [16, 24], rtol=0.06)


def test_logits_and_bad_inputs():
    lg = np.where(disc_map() > 0, 4.0, -4.0).astype(np.float32)
    assert np.all((normalise_heatmap(lg, logits=True) > 0.5) == (disc_map() > 0))
    with pytest.raises(ValueError, match="2D or 3D"):
        normalise_heatmap(np.zeros(5))
    with pytest.raises(ValueError, match="NaN"):
        normalise_heatmap(np.full((4, 4), np.nan))
    with pytest.raises(ValueError, match="threshold"):
        heatmap_picks(disc_map(), threshold=0)


def test_infer_downscale():
    assert infer_downscale((4096, 4096), (4096, 4096)) == 1
    assert infer_downscale((4092, 5760), (1023, 1440)) == 4
    assert infer_downscale((4093, 5761), (1024, 1441)) == 4  # ceil per axis (padded network input)
    with pytest.raises(ValueError, match="integer downscale"):
        infer_downscale((1000, 1000), (300, 300))
    with pytest.raises(ValueError, match="downscale=2"):
        infer_downscale((1000, 1000), (250, 250), factor=2)


@pytest.mark.parametrize("params", [dict(threshold=0), dict(peaks="maxima"), dict(downscale=-1), dict(pattern="")])
def test_params_are_checked(params):
    with pytest.raises(ValueError, match="detector\\."):
        HeatmapParams(**params)


# ---------------------------------------------------------------------------
# The detector stage: maps found by name next to or away from the micrographs
# ---------------------------------------------------------------------------
def _mic(path: Path, shape=SHAPE) -> Micrograph:
    img = np.zeros(shape, np.float32)
    np.save(path, img)
    return Micrograph(meta=MicrographMeta(name=path.stem, path=str(path), shape=shape), image=img)


CTX = PickContext(dmin_px=25, dmax_px=130)


@pytest.mark.parametrize("suffix", [".npy", ".mrc", ".tif", ".png", ".mrc.gz", ".mrc.bz2"])
def test_detector_reads_maps_by_name(tmp_path, suffix):
    # .png: an 8-bit PNG map was not looked at ('no heatmap matches .../mic_01_prob.png', the file being there);
    # .mrc.gz, .mrc.bz2: a compressed MRC map neither (its last suffix, .gz, is no map's), though the reader reads it
    mic = _mic(tmp_path / "mic_01.npy")
    maps = tmp_path / "maps"
    maps.mkdir()
    hm = block_mean(disc_map(), 2)
    target = maps / f"mic_01_prob{suffix}"
    if suffix == ".npy":
        np.save(target, hm)
    elif suffix.startswith(".mrc"):
        with mrcfile.new(str(maps / "plain.mrc")) as m:
            m.set_data(hm)
        packed = (maps / "plain.mrc").read_bytes()
        if suffix != ".mrc":
            import bz2
            import gzip

            packed = (gzip if suffix.endswith(".gz") else bz2).compress(packed)
        (maps / "plain.mrc").unlink()
        target.write_bytes(packed)
    elif suffix == ".png":
        from PIL import Image

        Image.fromarray(np.round(hm * 255).astype(np.uint8)).save(target)
    else:
        tifffile.imwrite(str(target), hm)
    np.save(maps / "mic_010_prob.npy", hm)  # a name that a loose pattern would also match
    det = HeatmapDetector(HeatmapParams(folder=str(maps), pattern="_prob.*"))
    df = det.detect(mic, CTX)
    assert len(df) == len(DISCS)
    assert {"x_px", "y_px", "diameter_px", "score", "size_px"} <= set(df.columns)
    dist, ratio = match({c: df[c].to_numpy() for c in df.columns})
    assert dist.max() < 1.5 and np.all(np.abs(ratio - 1) < 0.06)


def test_detector_fits_particles_cut_by_the_micrograph_border_of_a_padded_map(tmp_path):
    # 397 columns binned by 2 into 199: the map's last column is half outside
    # the micrograph (background there), so the cut particle stops one column
    # before the map's border.
    mic = _mic(tmp_path / "mic.npy", shape=(SHAPE[0], 397))
    full = disc_map(shape=(SHAPE[0], 398), discs=[(150, 386, 80), (100, 6, 60), (200, 200, 60)])
    full[:, 397:] = 0
    (tmp_path / "maps").mkdir()
    np.save(tmp_path / "maps" / "mic.npy", block_mean(full, 2))
    df = HeatmapDetector(HeatmapParams(folder=str(tmp_path / "maps"), pattern=".npy")).detect(mic, CTX)
    truth = [(150, 386, 80), (100, 6, 60), (200, 200, 60)]
    dist, ratio = match({c: df[c].to_numpy() for c in df.columns}, truth)
    assert len(df) == 3 and dist.max() < 2.0 and np.all(np.abs(ratio - 1) < 0.04)


def test_detector_errors_name_the_micrograph(tmp_path):
    mic = _mic(tmp_path / "a.npy")
    # A folder that does not exist is the run's mistake: the parameters say so, before any micrograph.
    with pytest.raises(ValueError, match=r"detector\.folder.*maps"):
        HeatmapParams(folder=str(tmp_path / "maps"), pattern=".npy")
    (tmp_path / "maps").mkdir()
    det = HeatmapDetector(HeatmapParams(folder=str(tmp_path / "maps"), pattern=".npy"))
    with pytest.raises(InputError, match=r"a\.npy.*no heatmap"):
        det.detect(mic, CTX)
    np.save(tmp_path / "maps" / "a.npy", np.zeros((100, 100), np.float32))
    with pytest.raises(InputError, match="integer downscale"):
        det.detect(mic, CTX)
    np.save(tmp_path / "maps" / "a_x.npy", np.zeros(SHAPE, np.float32))
    loose = HeatmapDetector(HeatmapParams(folder=str(tmp_path / "maps"), pattern="{stem}*"))
    with pytest.raises(InputError, match="2 heatmaps match"):
        loose.detect(mic, CTX)


def test_pipeline_with_heatmap_detector_and_filters(tmp_path):
    """Micrographs + maps -> lipoframe run: heatmap picks go through NMS, filters and writers."""
    from lipoframe import plugins
    from lipoframe.builtin.binning import SingleParams
    from lipoframe.builtin.filters import EdgeParams
    from lipoframe.builtin.nms import SizeAwareParams
    from lipoframe.builtin.readers import AutoReaderParams
    from lipoframe.builtin.refiners import NoRefinerParams
    from lipoframe.builtin.writers import CsvWriterParams
    from lipoframe.config import LipoframeConfig
    from lipoframe.runner import run_pipeline

    mics = tmp_path / "mics"
    maps = tmp_path / "maps"
    mics.mkdir()
    maps.mkdir()
    discs = DISCS + [(300, 200, 60)]  # the last one is cut by the bottom border
    for i in range(2):
        with mrcfile.new(str(mics / f"m{i}.mrc")) as m:
            m.set_data(np.random.default_rng(i).normal(size=SHAPE).astype(np.float32))
            m.voxel_size = 2.0
        np.save(maps / f"m{i}.npy", disc_map(discs=discs))
    _, registry, _ = plugins.load()
    cfg = LipoframeConfig(
        input=[str(mics)], dmin=40, dmax=260, units="A",
        reader=AutoReaderParams(), detector=HeatmapParams(folder=str(maps)), nms=SizeAwareParams(),
        refiner=NoRefinerParams(), filter={"edge": EdgeParams()}, binning=SingleParams(),
        writer={"csv": CsvWriterParams()},
    )
    cfg.runner.workers = 1
    cfg.runner.progress = False
    cfg.runner.report = False
    res = run_pipeline(cfg, tmp_path / "out", registry=registry)
    assert res.ok, res.summary()
    picks = pd.read_csv(tmp_path / "out" / "picks.csv")
    assert len(picks) == 2 * len(DISCS)  # the border disc is flagged and not exported
    all_picks = res.picks
    edge = all_picks[all_picks["reject_reason"] == "edge"]
    assert len(edge) == 2 and np.allclose(edge["x_px"], 200, atol=1)


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, bool])
def test_zero_one_masks_of_any_type_are_foreground(dtype):
    """A 0/1 mask is a mask whatever its type: the mask writer's TIFF masks are uint8 0/1."""
    mask = (disc_map() > 0).astype(dtype)
    prob = normalise_heatmap(mask)
    assert prob.dtype == np.float32
    assert np.array_equal(prob, (disc_map() > 0).astype(np.float32))
    p = heatmap_picks(prob, min_distance=10, min_diameter=10)
    assert len(p["x_px"]) == len(DISCS)
    # A scaled uint8 map is still divided by 255, not by its largest value.
    assert np.allclose(normalise_heatmap(np.array([[0, 100], [200, 255]], np.uint8)), np.array([[0, 100], [200, 255]]) / 255.0)
    # A two-valued map (0 and one other value) reads as a 0/1 mask, in grey as the mask filter and colour maps read it.
    assert np.array_equal(normalise_heatmap(np.array([[0, 200], [200, 0]], np.uint8)), np.array([[0, 1], [1, 0]], np.float32))
    assert np.array_equal(normalise_heatmap(np.array([[0, 7], [7, 0]], np.uint16)), np.array([[0, 1], [1, 0]], np.float32))


def test_tiff_label_masks_read_back_through_the_detector(tmp_path):
    """writer.mask.format=tiff writes uint8 0/1 masks; the heatmap detector picks them again."""
    from lipoframe.builtin.maskwriter import MaskWriter, MaskWriterParams

    mic = _mic(tmp_path / "mic.npy")
    xy = np.array([[c, r] for r, c, _ in DISCS], float)
    picks = pd.DataFrame({"micrograph": "mic", "x_px": xy[:, 0], "y_px": xy[:, 1],
                          "diameter_px": [d for *_, d in DISCS], "score": 1.0})
    MaskWriter(MaskWriterParams(format="tiff")).write(picks, {"mic": mic.meta}, None, tmp_path / "out", CTX)
    assert tifffile.imread(tmp_path / "out" / "masks" / "mic_mask.tif").dtype == np.uint8
    det = HeatmapDetector(HeatmapParams(folder=str(tmp_path / "out" / "masks"), pattern="_mask.tif"))
    df = det.detect(mic, CTX)
    assert len(df) == len(DISCS)
    dist, ratio = match({c: df[c].to_numpy() for c in df.columns})
    assert dist.max() < 1.0 and np.all(np.abs(ratio - 1) < 0.03)


def test_map_errors_name_the_micrograph_the_map_and_the_key(tmp_path):
    """A map that cannot be used fails its micrograph in one line naming both files; a missing
    centre map names detector.centre_pattern, not detector.pattern."""
    mic = _mic(tmp_path / "a.npy")
    maps = tmp_path / "maps"
    maps.mkdir()
    np.save(maps / "a_prob.npy", np.zeros((2, *SHAPE), np.float32))  # a stack, not a 2D map
    det = HeatmapDetector(HeatmapParams(folder=str(maps), pattern="_prob.npy"))
    with pytest.raises(InputError, match=r"a\.npy: heatmap .*a_prob\.npy: a 3D"):
        det.detect(mic, CTX)
    np.save(maps / "a_prob.npy", disc_map())
    det = HeatmapDetector(HeatmapParams(folder=str(maps), pattern="_prob.npy", centre_pattern="_ctr.npy"))
    with pytest.raises(InputError, match=r"a\.npy: no heatmap matches .*a_ctr\.npy \(set detector\.folder / detector\.centre_pattern\)"):
        det.detect(mic, CTX)


def test_listed_look_up_finds_what_a_glob_finds_and_sees_new_files(tmp_path):
    """The resume check looks maps up in a folder listing kept while the folder is unchanged."""
    from lipoframe.builtin.heatmap import map_files

    for n in ("a_prob.npy", "a_prob.mrc", "ab_prob.npy", "b[1]_prob.npy", ".a_prob.npy", "a_prob.txt", "c.mrc"):
        (tmp_path / n).touch()
    for stem in ("a", "ab", "b[1]", "c", "none"):
        for pattern in (".*", "_prob.*", "*", "_prob.npy", "{stem}*"):
            mic = str(tmp_path / f"{stem}.mrc")
            assert map_files(mic, stem, "", pattern, listed=True) == map_files(mic, stem, "", pattern), (stem, pattern)
    assert map_files(str(tmp_path / "d.mrc"), "d", str(tmp_path), "_prob.npy", listed=True)[1] == []
    (tmp_path / "d_prob.npy").touch()  # a new file changes the folder's modification time
    assert map_files(str(tmp_path / "d.mrc"), "d", str(tmp_path), "_prob.npy", listed=True)[1] == [tmp_path / "d_prob.npy"]


def test_a_float_map_that_is_not_probabilities_is_refused_naming_the_fix():
    """A float map scaled to 0..255, or logits without detector.logits, was thresholded at 0.5
    as it was (F1 0.83 instead of 1 on the example); a small resampling overshoot is fine."""
    soft = ndi.gaussian_filter(disc_map(value=1.0), 2.0)
    with pytest.raises(ValueError, match=r"from 0 to 255.*detector\.logits=true.*scale the map"):
        normalise_heatmap(soft * np.float32(255))
    logit = np.where(disc_map() > 0, 6.0, -6.0).astype(np.float32)
    with pytest.raises(ValueError, match="not probabilities"):
        normalise_heatmap(logit)
    assert np.all((normalise_heatmap(logit, logits=True) > 0.5) == (disc_map() > 0))
    overshoot = soft * np.float32(1.05) - np.float32(0.02)
    assert np.array_equal(normalise_heatmap(overshoot), overshoot)


@pytest.mark.parametrize("kind", ["grey_rgb.png", "grey_rgba.png", "red.png", "grey_rgb.tif"])
def test_colour_png_and_tiff_maps_are_read_as_the_map_they_draw(tmp_path, kind):
    """An RGB/RGBA map (a grey map saved in colour, a selection drawn in red) failed its micrograph
    with 'heatmap values run from 0 to 255, not probabilities': the readers average the colours
    into floats. As in the mask filter, the file's bit depth says how to scale them."""
    from PIL import Image

    mic = _mic(tmp_path / "a.npy")
    maps = tmp_path / "maps"
    maps.mkdir()
    grey = np.round(block_mean(disc_map(value=1.0), 2) * 230).astype(np.uint8)  # a graded 8-bit map, 0.9 inside
    rgb = np.stack([grey] * 3, axis=-1)
    target = maps / f"a_{kind}"
    if kind == "grey_rgb.png":
        Image.fromarray(rgb).save(target)
    elif kind == "grey_rgba.png":
        Image.fromarray(np.dstack([rgb, np.full(grey.shape, 255, np.uint8)])).save(target)
    elif kind == "red.png":
        red = np.zeros_like(rgb)
        red[..., 0] = np.where(grey > 115, 255, 0)
        Image.fromarray(red).save(target)
    else:
        tifffile.imwrite(target, rgb, photometric="rgb")
    df = HeatmapDetector(HeatmapParams(folder=str(maps), pattern=f"_{kind}")).detect(mic, CTX)
    assert len(df) == len(DISCS)
    dist, ratio = match({c: df[c].to_numpy() for c in df.columns})
    assert dist.max() < 1.5 and np.all(np.abs(ratio - 1) < 0.06)
    assert df["score"].max() <= 1.0


def test_map_errors_name_the_map_with_its_folder_and_the_centre_map_as_itself(tmp_path):
    """Errors named the map by its file name only ('a_prob.npy: ...'), and a bad centre map by the heatmap's name."""
    mic = _mic(tmp_path / "a.npy")
    for sub in ("net1", "net2"):
        (tmp_path / sub).mkdir()
    np.save(tmp_path / "net1" / "a_prob.npy", disc_map() * np.float32(255))
    det = HeatmapDetector(HeatmapParams(folder=str(tmp_path / "net1"), pattern="_prob.npy"))
    with pytest.raises(InputError, match=r"a\.npy: " + str(tmp_path / "net1" / "a_prob.npy") + ": heatmap values run from 0 to 229"):
        det.detect(mic, CTX)
    np.save(tmp_path / "net2" / "a_prob.npy", disc_map())
    np.save(tmp_path / "net2" / "a_ctr.npy", disc_map() * np.float32(255))
    det = HeatmapDetector(HeatmapParams(folder=str(tmp_path / "net2"), pattern="_prob.npy", centre_pattern="_ctr.npy"))
    with pytest.raises(InputError, match=str(tmp_path / "net2" / "a_ctr.npy") + ": heatmap values run"):
        det.detect(mic, CTX)


def test_signed_integer_maps_are_refused_and_integer_logits_are_not_rescaled():
    """An int8 map of -1/1 was used as it was (probabilities -1 and 1); a signed 8-bit map
    (-128..127) was divided by its largest value, leaving negative 'probabilities'. With
    detector.logits=true, integer logits were divided by their largest value before the sigmoid."""
    inside = disc_map() > 0
    labels = np.where(inside, 1, -1).astype(np.int8)
    with pytest.raises(ValueError, match=r"negative integers \(-1 to 1\).*background to 0.*detector\.logits=true"):
        normalise_heatmap(labels)
    with pytest.raises(ValueError, match="negative integers"):
        normalise_heatmap(np.where(inside, 100, -100).astype(np.int8))
    logit = np.where(inside, 3, -3).astype(np.int8)
    prob = normalise_heatmap(logit, logits=True)
    assert np.allclose(prob[inside], 1 / (1 + np.exp(-3.0))) and np.all((prob > 0.5) == inside)
    assert np.array_equal(normalise_heatmap(np.where(inside, 1, 0).astype(np.int8)), inside.astype(np.float32))
