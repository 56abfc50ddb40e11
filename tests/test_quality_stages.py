"""The picking-quality stages through the pipeline: NMS strategies, refiner, junk filters."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from skimage.draw import disk, polygon

from lipoframe import pick
from lipoframe.synthetic import random_particles, render


def dark_discs(shape, items, *, noise=0.1, seed=0, ring=None):
    img = np.zeros(shape, np.float32)
    for r, c, d in items:
        img[disk((r, c), d / 2, shape=shape)] = -1.0
        if ring is not None:
            img[disk((r, c), ring * d / 2, shape=shape)] = -0.3
    return img + np.random.default_rng(seed).normal(0, noise, shape).astype(np.float32)


def nearest(acc, r, c):
    d = np.hypot(acc["x_px"] - c, acc["y_px"] - r)
    return acc.iloc[int(np.argmin(d))], float(d.min())


def confident_circles(img, centres, *, diameter=40.0):
    """Confident accepted 40 px picks at ``centres`` (row, col) of ``img``, its micrograph and context, for a filter."""
    from lipoframe import schema
    from lipoframe.records import Micrograph, MicrographMeta, PickContext

    picks = pd.DataFrame({
        schema.X: [float(c) for _, c in centres], schema.Y: [float(r) for r, _ in centres],
        schema.DIAMETER: diameter, schema.SCORE: 8.0, schema.WEAK: False, schema.ACCEPTED: True, schema.REASON: "",
    })
    mic = Micrograph(meta=MicrographMeta(name="m", path="", shape=img.shape, pixel_size=1.0), image=img)
    return picks, mic, PickContext(dmin_px=0.75 * diameter, dmax_px=1.5 * diameter)


@pytest.mark.parametrize("nms", ["size_aware", "overlap", "nested"])
def test_touching_particles_each_get_one_pick(nms):
    items = [(150, 150, 100), (150, 250, 100), (236, 200, 100)]  # three mutually touching discs
    picks = pick(dark_discs((400, 400), items), dmin=60, dmax=160, units="px", nms=nms)
    acc = picks[picks["accepted"]]
    assert len(acc) == 3
    for r, c, d in items:
        p, dist = nearest(acc, r, c)
        assert dist < 0.05 * d and abs(p["diameter_px"] - d) / d < 0.05


def test_vesicle_with_inner_blob_nested_keeps_only_the_vesicle():
    # A thin-membrane vesicle with a dark object inside: nested keeps only the outer particle.
    img = np.zeros((400, 400), np.float32)
    rr, cc = disk((200, 200), 120, shape=img.shape)
    img[rr, cc] = -1.0
    rr, cc = disk((200, 200), 110, shape=img.shape)
    img[rr, cc] = 0.0
    img[disk((230, 180), 30, shape=img.shape)] = -1.0
    img += np.random.default_rng(1).normal(0, 0.05, img.shape).astype(np.float32)
    picks = pick(img, dmin=50, dmax=300, units="px", nms="nested")
    acc = picks[picks["accepted"]]
    assert len(acc) == 1
    assert abs(acc["diameter_px"].iloc[0] - 240) / 240 < 0.05


def test_refiner_adds_quality_columns_and_recovers_diameters():
    truth = random_particles((1024, 1024), [120, 180, 260], seed=4, margin=4)
    img = render((1024, 1024), truth, noise=0.15, seed=4)
    picks = pick(img, dmin=100, dmax=300, units="px")
    for col in ("diameter_detector_px", "refine_shift_px", "edge_contrast", "edge_coverage", "quality"):
        assert col in picks.columns
    acc = picks[picks["accepted"]]
    assert len(acc) == 3
    for _, t in truth.iterrows():
        p, dist = nearest(acc, t["y_px"], t["x_px"])
        assert dist < 3 and abs(p["diameter_px"] - t["diameter_px"]) / t["diameter_px"] < 0.04
    none = pick(img, dmin=100, dmax=300, units="px", refiner="none")
    # Without refinement the blob scale of a projected sphere underestimates its diameter.
    assert "edge_contrast" not in none.columns


def test_contamination_filter_rejects_ice_but_not_particles():
    items = [(120, 120, 90), (120, 380, 110), (380, 120, 100)]
    img = dark_discs((512, 512), items, noise=0.1, seed=2)
    rr, cc = polygon([330, 470, 480, 350], [330, 320, 470, 460], shape=img.shape)
    img[rr, cc] = -8.0  # an irregular, very dark ice blob
    picks = pick(img, dmin=60, dmax=200, units="px")
    acc = picks[picks["accepted"]]
    assert len(acc) == 3
    for r, c, d in items:
        assert nearest(acc, r, c)[1] < 0.05 * d
    rejected = picks[~picks["accepted"]]
    ice = rejected[(rejected["x_px"] > 300) & (rejected["y_px"] > 300)]
    assert set(ice["reject_reason"]) <= {"contamination", "no_edge", "diameter_range"}
    without = pick(img, dmin=60, dmax=200, units="px", filters=("diameter_range",))
    assert (without["accepted"] & (without["x_px"] > 300) & (without["y_px"] > 300)).any()


def test_carbon_edge_filter_flags_picks_on_a_film_edge():
    img = dark_discs((512, 512), [(256, 140, 100), (256, 380, 100)], noise=0.05, seed=3)
    img[:, 380:] -= 3.0  # thick carbon film covering the right particle's right half
    picks = pick(img, dmin=60, dmax=160, units="px", filters=("diameter_range", "carbon_edge"))
    left, _ = nearest(picks, 256, 140)
    right, _ = nearest(picks, 256, 380)
    assert bool(left["accepted"])
    assert not bool(right["accepted"]) and right["reject_reason"] in ("carbon_edge", "no_edge")


def test_strong_detections_need_only_the_relaxed_edge_test():
    from lipoframe.builtin.refiners import RadialProfileParams, RadialProfileRefiner
    from lipoframe.records import Micrograph, MicrographMeta, PickContext

    truth = pd.DataFrame({"x_px": [150.0, 370.0], "y_px": [256.0, 256.0], "diameter_px": [120.0, 120.0]})
    img = render((512, 512), truth, noise=0.15, seed=2)
    mic = Micrograph(meta=MicrographMeta(name="m", path="m", shape=img.shape, pixel_size=None), image=img, polarity="dark")
    ctx = PickContext(dmin_px=80, dmax_px=200, polarity="dark", pixel_size=None, seed=0, export_rejected=True)
    picks = truth.assign(score=[20.0, 5.0], sigma_px=truth["diameter_px"] / 2.83, pyramid_level=0)

    def accepted(**params) -> list[bool]:
        # (without the narrow second look, which judges failed picks by its own test)
        refined = RadialProfileRefiner(RadialProfileParams(narrow_search=0, **params)).refine(picks, mic, ctx)
        assert list(picks.columns) == list(truth.columns) + ["score", "sigma_px", "pyramid_level"]  # input untouched
        return refined["accepted"].tolist()

    # Both have clear edges: accepted under the defaults.
    assert accepted() == [True, True]
    # An edge test nobody passes, relaxed for strong detections only.
    assert accepted(min_contrast=1e9, strong_score=10, strong_min_contrast=0) == [True, False]
    assert accepted(min_contrast=1e9, strong_score=30, strong_min_contrast=0) == [False, False]
    assert accepted(min_contrast=0, min_coverage=0, strong_score=0, strong_min_contrast=1e9) == [False, False]
    # A weak candidate (e.g. a retried detection) never counts as strong, whatever its score.
    weak = picks.assign(weak=[True, False])
    refined = RadialProfileRefiner(RadialProfileParams(min_contrast=1e9, strong_score=10, strong_min_contrast=0, narrow_search=0)).refine(weak, mic, ctx)
    assert refined["accepted"].tolist() == [False, False]


@pytest.mark.parametrize("seed", [0, 5])
def test_particles_cut_by_the_border_are_judged_on_the_part_in_the_image(seed):
    """A particle 35 % cut off is picked on its visible rim; one whose centre is outside the image is not picked."""
    # Diameter 100; centres 15 px inside, 100 px inside and 15 px outside the left border.
    items = [(120.0, 15.0, 100.0), (250.0, 250.0, 100.0), (380.0, -15.0, 100.0)]
    picks = pick(dark_discs((512, 512), items, noise=0.15, seed=seed), dmin=60, dmax=160, units="px")
    acc = picks[picks["accepted"]]
    assert len(acc) == 2
    for r, c, d in items[:2]:
        p, dist = nearest(acc, r, c)
        assert dist < 3 and abs(p["diameter_px"] - d) / d < 0.05
    # The third is found, refined to a centre beyond the border, and rejected for it (at_border).
    out = picks[picks["reject_reason"] == "at_border"]
    assert len(out) == 1 and abs(out["y_px"].iloc[0] - 380) < 5
    # Coordinates stay on the image; the cut particle was judged on the directions inside it.
    assert picks["x_px"].between(0, 511).all() and picks["y_px"].between(0, 511).all()
    cut, _ = nearest(acc, 120, 15)
    assert 0.5 < cut["edge_directions_used"] < 0.75


@pytest.mark.parametrize("seed", [0, 3])
def test_a_cut_particle_is_refined_from_a_circle_containing_the_detectors(seed):
    """On a particle cut by the border the detector finds its visible part (smaller, further inside);
    the refiner searches the circles that contain it (refiner.border_search) and measures the particle."""
    from lipoframe.builtin.refiners import RadialProfileParams, RadialProfileRefiner
    from lipoframe.records import Micrograph, MicrographMeta, PickContext

    # 120 px spheres: one 25 px inside the bottom border (0.42 radii), one whole.
    truth = pd.DataFrame({"x_px": [200.0, 200.0], "y_px": [487.0, 200.0], "diameter_px": [120.0, 120.0]})
    img = render((512, 512), truth, noise=0.15, seed=seed)
    mic = Micrograph(meta=MicrographMeta(name="m", path="m", shape=img.shape, pixel_size=None), image=img, polarity="dark")
    ctx = PickContext(dmin_px=80, dmax_px=200, polarity="dark", pixel_size=None, seed=0, export_rejected=True)
    # As the suite's s10_border_cut gives them: the cut one 32 % small, 0.3 radii further inside.
    picks = pd.DataFrame({"x_px": [203.0, 200.0], "y_px": [469.0, 200.0], "diameter_px": [82.0, 118.0], "score": [6.0, 9.0],
                          "sigma_px": [29.0, 41.7], "pyramid_level": [0, 0]})
    refined = RadialProfileRefiner(RadialProfileParams(border_search=True)).refine(picks, mic, ctx)
    assert refined["accepted"].all()
    err = refined["diameter_px"].to_numpy() / 120 - 1
    off = np.hypot(refined["x_px"] - truth["x_px"], refined["y_px"] - truth["y_px"]).to_numpy() / 60
    assert np.all(np.abs(err) < 0.03) and np.all(off < 0.05)
    assert refined["diameter_detector_px"].tolist() == [82.0, 118.0]
    # From the detector's circle the edge search (+-25 %) stops short of the cut particle's rim.
    old = RadialProfileRefiner(RadialProfileParams()).refine(picks, mic, ctx)  # the default: off
    assert not RadialProfileParams().border_search
    assert old["diameter_px"].iloc[0] < 0.9 * 120 and abs(old["diameter_px"].iloc[1] / refined["diameter_px"].iloc[1] - 1) < 1e-9


@pytest.mark.parametrize("seed", [0, 5])
def test_a_particle_centred_on_the_border_is_rejected_unless_border_margin_is_0(seed):
    # Diameter 100, centre 3 px inside the top border (0.06 radii).
    img = dark_discs((400, 400), [(3.0, 200.0, 100.0), (220.0, 200.0, 100.0)], noise=0.15, seed=seed)
    picks = pick(img, dmin=60, dmax=160, units="px")
    assert picks.loc[picks["accepted"], "y_px"].between(150, 290).all() and picks["accepted"].sum() == 1
    half, _ = nearest(picks, 3, 200)
    assert half["reject_reason"] == "at_border"
    kept = pick(img, dmin=60, dmax=160, units="px", refiner_params={"border_margin": 0})
    half, dist = nearest(kept[kept["accepted"]], 3, 200)
    assert kept["accepted"].sum() == 2 and dist < 5


@pytest.mark.parametrize("centre", [504.0, 505.0, 506.0])
def test_border_margin_is_measured_from_the_micrographs_own_border(centre):
    """The refiner works on a binned copy that leaves out the rows not filling a whole block:
    its last row is not the micrograph's. A particle the same distance from the bottom border
    as its mirror image from the top one gets the same decision."""
    from lipoframe.builtin.refiners import RadialProfileParams, RadialProfileRefiner
    from lipoframe.records import Micrograph, MicrographMeta, PickContext

    m = 515  # the refiner bins by 4 here (dmin 128 px): 3 rows do not fill a block
    truth = pd.DataFrame({"x_px": [300.0, 300.0], "y_px": [centre, m - 1 - centre], "diameter_px": [160.0, 160.0]})
    img = render((m, 600), truth, noise=0.05, seed=1)
    mic = Micrograph(meta=MicrographMeta(name="m", path="m", shape=img.shape), image=img, polarity="dark")
    ctx = PickContext(dmin_px=128, dmax_px=200)
    picks = truth.assign(score=10.0, sigma_px=160 / 2.83, pyramid_level=0)
    out = RadialProfileRefiner(RadialProfileParams()).refine(picks, mic, ctx)
    # Centres 8.5-10.5 px inside the border, beyond border_margin (0.1 radii, 8 px).
    inset = np.minimum(out["y_px"] + 0.5, m - 0.5 - out["y_px"])
    assert (inset > 0.1 * out["diameter_px"] / 2).all()
    assert out["accepted"].tolist() == [True, True], out["reject_reason"].tolist()


def test_a_failed_pick_gets_a_second_look_on_the_detectors_own_radius():
    """A strong, one-sided structure just outside a particle wins the wide search and fails the edge test."""
    from lipoframe.builtin.refiners import RadialProfileParams, RadialProfileRefiner
    from lipoframe.records import Micrograph, MicrographMeta, PickContext

    y, x = np.mgrid[:400, :400]
    r, angle = np.hypot(x - 200, y - 200), np.arctan2(y - 200, x - 200)
    dark = np.zeros((400, 400), np.float32)
    dark[r <= 40] = 1.0  # the particle, 80 px
    dark[(r >= 52) & (r <= 58) & (np.abs(angle) < np.pi / 3)] = 8.0  # a dark arc beside it (a third of the directions)
    img = -(dark + np.random.default_rng(0).normal(0, 0.1, dark.shape).astype(np.float32))
    mic = Micrograph(meta=MicrographMeta(name="m", path="m", shape=img.shape, pixel_size=None), image=img, polarity="dark")
    ctx = PickContext(dmin_px=50, dmax_px=120, polarity="dark", pixel_size=None, seed=0, export_rejected=True)
    picks = pd.DataFrame({"x_px": [200.0], "y_px": [200.0], "diameter_px": [80.0], "score": [6.0], "sigma_px": [28.0], "pyramid_level": [0]})

    def refined(**params) -> pd.Series:
        return RadialProfileRefiner(RadialProfileParams(search=0.5, **params)).refine(picks, mic, ctx).iloc[0]

    once = refined(narrow_search=0)
    # The arc's outer edge is the steepest fall of the mean profile within +/- 50 %, but only a third of the directions have it.
    assert not once["accepted"] and once["reject_reason"] == "no_edge" and once["diameter_px"] > 105
    twice = refined()
    assert twice["accepted"] and twice["refined_narrow"]
    assert abs(twice["diameter_px"] - 80) < 2 and twice["edge_coverage"] == 1.0
    # The second look has a higher bar than the first.
    assert not refined(narrow_min_contrast=1e6)["accepted"]
    with pytest.raises(ValueError, match="refiner.narrow_search"):
        RadialProfileParams(search=0.2, narrow_search=0.2)


def test_refiner_range_search_measures_a_pick_below_the_range_again_at_its_lower_end():
    """A particle with a bright core: near the detector's (small) radius the core's edge is the steepest fall."""
    from lipoframe.builtin.refiners import RadialProfileParams, RadialProfileRefiner
    from lipoframe.records import Micrograph, MicrographMeta, PickContext

    y, x = np.mgrid[:400, :400]
    dark = np.zeros((400, 400), np.float32)
    r = np.hypot(x - 200, y - 200)
    dark[r <= 50] = 1.0  # the particle, 100 px
    dark[r <= 35] = 3.0  # its darker core, 70 px
    r2 = np.hypot(x - 200, y - 330)
    dark[r2 <= 35] = 3.0  # a 70 px blob with nothing around it
    img = -(dark + np.random.default_rng(0).normal(0, 0.1, dark.shape).astype(np.float32))
    mic = Micrograph(meta=MicrographMeta(name="m", path="m", shape=img.shape, pixel_size=None), image=img, polarity="dark")
    ctx = PickContext(dmin_px=96, dmax_px=200, polarity="dark", pixel_size=None, seed=0, export_rejected=True)
    # The detector's diameters, 24 % small: the first look (+/- 25 %) does not reach the particle's rim.
    picks = pd.DataFrame({"x_px": [200.0, 200.0], "y_px": [200.0, 330.0], "diameter_px": [76.0, 76.0], "score": [6.0, 6.0],
                          "sigma_px": [27.0, 27.0], "pyramid_level": [0, 0]})

    def refined(**params) -> pd.DataFrame:
        return RadialProfileRefiner(RadialProfileParams(**{"range_search": 0.1, **params})).refine(picks, mic, ctx)

    once = refined(range_search=0)  # the default
    assert (once["diameter_px"] < 75).all() and "refined_in_range" not in once
    out = refined()
    particle, blob = out.iloc[0], out.iloc[1]
    assert particle["refined_in_range"] and particle["accepted"] and abs(particle["diameter_px"] - 100) < 3, particle
    # The blob has no rim in the range: it keeps its own measurement (the diameter_range filter rejects it).
    assert not blob["refined_in_range"] and blob["diameter_px"] < 75
    # The look has its own bar.
    assert not refined(range_min_contrast=1e6)["refined_in_range"].any()
    assert refined(range_min_contrast=1e6)["diameter_px"].iloc[0] < 75


@pytest.mark.parametrize(
    "stage,params,message",
    [
        ("refiner", {"strong_min_coverage": 1.5}, "refiner.strong_min_coverage"),
        ("refiner", {"strong_score": -1}, "refiner.strong_score"),
        ("nms", {"max_containment": 0}, "nms.max_containment"),
        ("detector", {"range_margin": 0.7}, "detector.range_margin"),
        ("detector", {"edge_width": 0.9}, "detector.edge_width"),
        ("refiner", {"search": 1.5}, "refiner.search"),
        ("refiner", {"rim": "disc"}, "refiner.rim"),
        ("refiner", {"border_margin": 1.0}, "refiner.border_margin"),
        ("refiner", {"range_search": 0.5}, "refiner.range_search"),
        ("refiner", {"range_min_contrast": 0}, "refiner.range_min_contrast"),
    ],
)
def test_quality_params_are_validated(stage, params, message):
    from lipoframe import plugins

    _, registry, _ = plugins.load()
    name = {"nms": "size_aware", "detector": "edge", "refiner": "radial_profile"}[stage]
    with pytest.raises(ValueError, match=message):
        registry.get(stage, name).cls.Params(**params)


def test_lone_ice_ball_is_judged_against_the_datasets_particles(tmp_path, run_cli):
    """A micrograph with one ice ball and no particles has no typical particle of its own."""
    import json
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import TINY_ARGS, tiny_image, write_mrc

    for i in range(3):
        write_mrc(tmp_path / "in" / f"mic_{i}.mrc", tiny_image(seed=i)[0])
    ice = dark_discs((512, 512), [(256, 256, 100)], noise=0.2, seed=9)
    ice[disk((256, 256), 50, shape=ice.shape)] -= 9.0  # ten times as dark as the particles
    write_mrc(tmp_path / "in" / "ice.mrc", ice)
    # Alone, the ice ball is accepted: nothing to compare it with.
    alone = pick(ice, dmin=30, dmax=160, units="px")
    assert alone["accepted"].sum() == 1
    assert (alone["contamination_reference"] < 3).all()
    out = tmp_path / "out"
    code, _, err = run_cli("run", f"input={tmp_path / 'in'}", f"output={out}", "export_rejected=true", *TINY_ARGS)
    assert code == 0, err
    picks = pd.read_csv(out / "picks.csv")
    on_ice = picks[picks["micrograph"] == "ice"]
    assert len(on_ice) and not on_ice["accepted"].any()
    assert "contamination" in set(on_ice["reject_reason"])
    # The particles of the other micrographs are all still there.
    others = picks[(picks["micrograph"] != "ice") & picks["accepted"]]
    assert len(others) >= 3 * 4 - 1
    assert json.loads((out / "run_summary.json").read_text())["picks"]["rejected"].get("contamination", 0) >= 1


def draw_vesicle(img, centre):
    """Darken ``img`` in place by 2 on a 40 px vesicle's membrane (radii 16-20 px) around ``centre``; the lumen is background."""
    ring = np.zeros(img.shape, bool)
    ring[disk(centre, 20, shape=img.shape)] = True
    ring[disk(centre, 16, shape=img.shape)] = False
    img[ring] -= 2.0


def test_contamination_rejects_a_darkness_outlier_among_vesicles():
    """Vesicles (dark rim, lumen = ice) and two solid dark blobs of their size.

    The vesicles' contrast is about that of the ice inside them, so the ratio
    test stands at its floor of three background spreads, which a moderately
    dark blob stays under; the robust Z-score against the vesicles' darkness
    catches it.
    """
    from skimage.draw import disk as sk_disk

    from lipoframe import schema
    from lipoframe.builtin.junk import ContaminationFilter, ContaminationParams, high_outliers

    rng = np.random.default_rng(3)
    shape = (640, 640)
    img = rng.normal(0.0, 1.0, shape).astype(np.float32)
    centres = [(r, c) for r in range(60, 600, 105) for c in range(60, 600, 105)]  # 6 x 6 sites, 40 px objects
    blobs = {7, 22}
    for i, (r, c) in enumerate(centres):
        if i in blobs:
            img[sk_disk((r, c), 20, shape=shape)] -= 2.6  # solid blob, 2.6 noise units darker
        else:
            draw_vesicle(img, (r, c))
    picks, mic, ctx = confident_circles(img, centres)
    out = ContaminationFilter(ContaminationParams()).apply(picks, mic, ctx)
    rejected = set(np.flatnonzero(~out[schema.ACCEPTED].to_numpy()))
    assert rejected == blobs
    assert set(out.loc[list(blobs), schema.REASON]) == {"contamination"}
    # The ratio test alone keeps them: this is the outlier rules' work (a solid
    # blob's darkest tenth is darker than a rim as well, so the tail rule is off here).
    off = ContaminationFilter(ContaminationParams(max_darkness_z=0, max_tail_z=0)).apply(picks, mic, ctx)
    assert off[schema.ACCEPTED].all()
    # The Z-score needs a dark enough pick and enough reference picks.
    d = np.array([0.1, 0.2, 0.15, 0.12, 0.18, 0.11, 0.16, 0.14, 0.13, 0.17, 1.5, 2.5])
    ref = np.ones(12, bool)
    assert high_outliers(d, ref, z=5, minimum=2.0, min_reference=10).tolist() == [False] * 11 + [True]
    assert not high_outliers(d, ref, z=5, minimum=2.0, min_reference=13).any()
    with pytest.raises(ValueError, match="max_darkness_z"):
        ContaminationParams(max_darkness_z=-1)


def test_contamination_rejects_a_cluster_of_dark_specks_among_vesicles():
    """Vesicles (dark rim, lumen = ice) and one circle drawn around a cluster of small, very dark specks.

    The specks cover a small part of the disc, so its median (the pick's
    darkness) and its surroundings are like a vesicle's, and no single
    speck holds enough of the disc's darkness for the ``speck`` filter; on
    the real liposome image ``Synergy-2-31`` such a cluster took three picks.
    The darkest tenth of the disc stands far above the surroundings, much
    further than a vesicle's rim does: the robust Z-score on that catches it.
    """
    from skimage.draw import disk as sk_disk

    from lipoframe import schema
    from lipoframe.builtin.junk import TAIL, ContaminationFilter, ContaminationParams, SpeckFilter

    rng = np.random.default_rng(5)
    shape = (640, 640)
    img = rng.normal(0.0, 1.0, shape).astype(np.float32)
    centres = [(r, c) for r in range(60, 600, 105) for c in range(60, 600, 105)]  # 6 x 6 sites, 40 px objects
    cluster = 14
    for i, (r, c) in enumerate(centres):
        if i == cluster:
            for dr, dc in [(-10, -6), (-4, 9), (3, -12), (9, 4), (-12, 8), (12, -4)]:
                img[sk_disk((r + dr, c + dc), 3, shape=shape)] -= 6.0  # specks, 6 noise units darker
        else:
            draw_vesicle(img, (r, c))
    picks, mic, ctx = confident_circles(img, centres)
    out = ContaminationFilter(ContaminationParams()).apply(picks, mic, ctx)
    assert np.flatnonzero(~out[schema.ACCEPTED].to_numpy()).tolist() == [cluster]
    assert out[schema.REASON].iloc[cluster] == "contamination"
    tail = out[TAIL].to_numpy()
    assert tail[cluster] > np.delete(tail, cluster).max() + 1.0
    # Without the tail rule nothing else in the filter rejects it, nor does the speck filter.
    off = ContaminationFilter(ContaminationParams(max_tail_z=0)).apply(picks, mic, ctx)
    assert off[schema.ACCEPTED].all() and TAIL not in off.columns
    assert SpeckFilter().apply(picks, mic, ctx)[schema.ACCEPTED].all()
    # Its floor: a tight reference alone does not make a pick junk.
    floor = ContaminationFilter(ContaminationParams(min_outlier_tail=float(tail[cluster]) + 0.1)).apply(picks, mic, ctx)
    assert floor[schema.ACCEPTED].all()
    with pytest.raises(ValueError, match="max_tail_z"):
        ContaminationParams(max_tail_z=-1)
    with pytest.raises(ValueError, match="min_outlier_tail"):
        ContaminationParams(min_outlier_tail=0)


def test_contamination_judges_a_sparse_micrograph_by_its_distinct_particles_not_its_noise_picks():
    """Twelve dark particles and an ice ball among more noise maxima than particles (a sparse frame).

    The median contrast of all confident picks is a noise maximum's: against
    it every particle was far too dark (a K3 frame with 12 particles lost
    all 12 as contamination). The distinct picks (one background spread or
    more) are the typical particles; the ice ball stays far darker than they are.
    """
    from skimage.draw import disk as sk_disk

    from lipoframe import schema
    from lipoframe.builtin.junk import REFERENCE, ContaminationFilter, ContaminationParams, typical_particles

    rng = np.random.default_rng(4)
    shape = (900, 900)
    img = rng.normal(0.0, 1.0, shape).astype(np.float32)
    sites = [(r, c) for r in range(60, 900, 110) for c in range(60, 900, 110)]  # 8 x 8 sites, 40 px circles
    order = rng.permutation(len(sites))
    particles, ice, noise = order[:12], order[12], order[13:30]
    for i in particles:
        img[sk_disk(sites[i], 20, shape=shape)] -= 4.5
    img[sk_disk(sites[ice], 20, shape=shape)] -= 20.0
    chosen = np.r_[particles, ice, noise]
    picks, mic, ctx = confident_circles(img, [sites[i] for i in chosen])
    out = ContaminationFilter(ContaminationParams()).apply(picks, mic, ctx)
    accepted = out[schema.ACCEPTED].to_numpy()
    assert accepted[:12].all()
    assert not accepted[12] and out[schema.REASON].iloc[12] == "contamination"
    assert accepted[13:].all()  # noise maxima are not this filter's to reject
    assert (out[REFERENCE] == 13).all()
    # With fewer distinct picks than reliable_reference they cannot be told from a few ice balls: all picks are the reference.
    few = ContaminationFilter(ContaminationParams(reliable_reference=14)).apply(picks, mic, ctx)
    assert not few[schema.ACCEPTED].to_numpy()[:13].any()
    # Where the confident picks' median is a spread or more, they are the reference as they are.
    c = np.r_[np.full(17, 0.2), np.full(12, 4.5)]
    everything = np.ones(29, bool)
    assert typical_particles(c, everything, min_count=10, ratio=3.0).sum() == 12
    assert typical_particles(c + 1.0, everything, min_count=10, ratio=3.0).sum() == 29
    assert typical_particles(c, everything, min_count=13, ratio=3.0).sum() == 29
    # Faint particles whose contrast runs on over one or two spreads (vesicles) stay judged by them all.
    vesicles = np.r_[np.linspace(0.3, 0.95, 19), np.linspace(1.0, 2.3, 10)]
    assert typical_particles(vesicles, everything, min_count=10, ratio=3.0).sum() == 29


def test_a_few_ice_balls_do_not_make_each_other_typical():
    """Three confident picks, all ice: the micrograph's own test passes them; the dataset's does not."""
    from lipoframe import schema
    from lipoframe.builtin.junk import DARKNESS, REFERENCE, ContaminationFilter, ContaminationParams
    from lipoframe.records import PickContext

    rng = np.random.default_rng(0)
    names = ["a"] * 20 + ["b"] * 20 + ["ice"] * 3
    picks = pd.DataFrame({
        schema.MICROGRAPH: names,
        schema.X: 100.0, schema.Y: 100.0, schema.DIAMETER: 200.0, schema.SCORE: 8.0,
        schema.WEAK: False, schema.ACCEPTED: True, schema.REASON: "",
        DARKNESS: np.r_[rng.normal(0.8, 0.2, 40), [5.5, 5.9, 6.4]],
        REFERENCE: [20] * 40 + [3] * 3,
    })
    ctx = PickContext(dmin_px=150, dmax_px=500)
    out = ContaminationFilter(ContaminationParams()).apply_dataset(picks, {}, ctx)
    assert not out[schema.ACCEPTED].iloc[40:].any()
    assert set(out[schema.REASON].iloc[40:]) == {"contamination"}
    assert out[schema.ACCEPTED].iloc[:40].all()
    # A micrograph whose own picks are a reliable reference is left to its own test.
    trusted = ContaminationFilter(ContaminationParams(reliable_reference=3)).apply_dataset(picks, {}, ctx)
    assert trusted[schema.ACCEPTED].all()


def test_contamination_rejects_a_pick_whose_surroundings_are_far_darker():
    """Particles on ice, and one circle on a carbon film (darker all around it)."""
    from skimage.draw import disk as sk_disk

    from lipoframe import schema
    from lipoframe.builtin.junk import SURROUND, ContaminationFilter, ContaminationParams

    rng = np.random.default_rng(4)
    shape = (700, 700)
    img = rng.normal(0.0, 1.0, shape).astype(np.float32)
    img[:, 560:] -= 1.8  # a film covering the right edge, 1.8 noise units darker
    centres = [(r, c) for r in range(60, 660, 100) for c in range(60, 460, 100)] + [(350, 630)]  # 24 on ice, 1 on the film
    for r, c in centres[:-1]:
        img[sk_disk((r, c), 20, shape=shape)] -= 2.0
    img[sk_disk(centres[-1], 20, shape=shape)] -= 0.8  # a faint blob on the film
    picks, mic, ctx = confident_circles(img, centres)
    out = ContaminationFilter(ContaminationParams()).apply(picks, mic, ctx)
    assert out[schema.ACCEPTED].tolist() == [True] * 24 + [False]
    assert out[schema.REASON].iloc[-1] == "contamination"
    assert 1.0 < out[SURROUND].iloc[-1] < 3.0  # under the absolute max_surround (3): the outlier rule's work
    assert out[schema.ACCEPTED].iloc[:24].all()
    assert ContaminationFilter(ContaminationParams(max_surround_z=0)).apply(picks, mic, ctx)[schema.ACCEPTED].all()



def test_contamination_keeps_crowded_particles_of_an_image_quantised_below_its_noise():
    """An 8-bit image whose noise is a third of a grey level: most background pixels are equal,
    the background's MAD is 0, and the spread was floored at 1e-12, so a pick with a neighbour
    in its surroundings had them 1e10 spreads darker and was rejected (36 of 150)."""
    from lipoframe import schema
    from lipoframe.algorithms.stats import background_stats
    from lipoframe.builtin.junk import ContaminationFilter
    from lipoframe.records import Micrograph, MicrographMeta, PickContext

    truth = random_particles((1024, 1024), np.random.default_rng(3).uniform(40, 60, 150), seed=4, gap=3)
    u8 = np.clip(np.round(128 + 60 * render((1024, 1024), truth, noise=0.006, seed=4)), 0, 255).astype(np.uint8)
    level, spread = background_stats(u8)
    assert level == 128 and spread > 0.1
    picks = truth.assign(**{schema.SCORE: 8.0, schema.WEAK: False, schema.ACCEPTED: True, schema.REASON: ""})
    mic = Micrograph(meta=MicrographMeta(name="m", path="", shape=u8.shape), image=u8)
    out = ContaminationFilter().apply(picks, mic, PickContext(dmin_px=30, dmax_px=70))
    assert out[schema.ACCEPTED].all(), out[schema.REASON].value_counts().to_dict()

def test_contamination_on_the_bright_side_of_an_illumination_gradient():
    """An ice ball where the illumination is brighter: hardly darker than the micrograph's
    median (the global test and the outlier rule keep it), far darker than its own surroundings."""
    from skimage.draw import disk as sk_disk

    from lipoframe import schema
    from lipoframe.builtin.junk import DARKNESS, SURROUND, ContaminationFilter, ContaminationParams

    rng = np.random.default_rng(0)
    shape = (700, 700)
    img = rng.normal(0.0, 1.0, shape).astype(np.float32)
    img += (4.0 * np.exp(-np.arange(shape[1]) / 80.0)).astype(np.float32)[None, :]  # brighter along the left edge
    centres = [(r, c) for r in range(60, 660, 100) for c in range(250, 660, 100)] + [(350, 40)]  # 30 particles, 1 ice ball
    for r, c in centres[:-1]:
        img[sk_disk((r, c), 20, shape=shape)] -= 1.0
    img[sk_disk(centres[-1], 20, shape=shape)] -= 4.2
    picks, mic, ctx = confident_circles(img, centres)
    out = ContaminationFilter(ContaminationParams()).apply(picks, mic, ctx)
    assert out[schema.ACCEPTED].tolist() == [True] * 30 + [False]
    assert out[schema.REASON].iloc[-1] == "contamination"
    # Against the whole micrograph it is under both the ratio limit (3 spreads)
    # and the outlier rule's floor (2 spreads); against its surroundings it is over 3.
    darkness, local = out[DARKNESS].iloc[-1], out[DARKNESS].iloc[-1] - out[SURROUND].iloc[-1]
    assert darkness < 2.0 and local > 3.0
