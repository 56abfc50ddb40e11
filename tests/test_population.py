"""Weak candidates and the population filter (faint particles in crowded fields)."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage as ndi
from scipy.spatial import cKDTree
from skimage.draw import disk

from lipoframe import pick, schema
from lipoframe.algorithms.radial import blocked_directions
from lipoframe.builtin.filters import PopulationFilter, PopulationParams, same_size_medians, same_size_support
from lipoframe.builtin.nms import rank_values
from lipoframe.records import Micrograph, MicrographMeta, PickContext

SIZE = 1024
DIAMETER = 48.0


def _noise(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = ndi.gaussian_filter(rng.standard_normal((SIZE, SIZE)), 2.0)
    return (n / n.std()).astype(np.float32)


def lattice(contrast: float, *, seed: int = 0, every: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Dark discs on a jittered square lattice (pitch 1.25 diameters), every ``every``-th site."""
    rng = np.random.default_rng(seed)
    img = _noise(seed)
    pitch = DIAMETER * 1.25
    sites = np.arange(pitch / 2 + 4, SIZE - pitch / 2, pitch)
    centres = np.array([(r, c) for r in sites for c in sites]) + rng.uniform(-3, 3, (len(sites) ** 2, 2))
    centres = centres[::every]
    for r, c in centres:
        img[disk((r, c), DIAMETER / 2, shape=img.shape)] -= contrast
    return img, centres


def found(picks: pd.DataFrame, centres: np.ndarray) -> tuple[int, int]:
    """(true picks, false picks) among the accepted ones."""
    acc = picks[picks[schema.ACCEPTED]]
    d, _ = cKDTree(centres).query(acc[[schema.Y, schema.X]].to_numpy())
    return int(np.sum(d < 0.3 * DIAMETER)), int(np.sum(d >= 0.3 * DIAMETER))


def test_crowded_faint_field_gains_its_weak_particles():
    img, centres = lattice(1.3)
    # The weak tier on its own: peeling (peel, test_peel.py) finds
    # some of these faint particles too, with or without weak candidates.
    without = pick(img, units="px", dmin=40, dmax=60, detector_params={"weak_threshold": None}, peel=False)
    with_weak = pick(img, units="px", dmin=40, dmax=60, peel=False)
    tp0, fp0 = found(without, centres)
    tp1, fp1 = found(with_weak, centres)
    # The scenario is meaningful: many particles are below the threshold.
    assert tp0 < 0.6 * len(centres)
    assert tp1 > 0.8 * len(centres)
    assert fp1 <= fp0 + 0.02 * len(centres)
    acc = with_weak[with_weak[schema.ACCEPTED]]
    assert acc[schema.WEAK].sum() > 50
    assert (acc.loc[acc[schema.WEAK], schema.SCORE] < 5.3).all()
    # Confident picks are the same with and without weak candidates.
    conf = acc[~acc[schema.WEAK]]
    ref = without[without[schema.ACCEPTED]]
    assert len(conf) == len(ref)
    assert np.allclose(np.sort(conf[schema.X].to_numpy()), np.sort(ref[schema.X].to_numpy()))


@pytest.mark.parametrize("every", [1, 16])
def test_no_weak_pick_on_noise_or_in_a_sparse_field(every):
    # Pure noise: weak candidates exist but nothing vouches for them.
    noise = pick(_noise(3), units="px", dmin=40, dmax=60)
    assert noise[schema.WEAK].sum() > 20
    assert not (noise[schema.WEAK] & noise[schema.ACCEPTED]).any()
    # A sparse field of the same particles: the weak ones are not accepted.
    img, centres = lattice(1.3, every=every)
    picks = pick(img, units="px", dmin=40, dmax=60)
    acc = picks[picks[schema.ACCEPTED]]
    if every > 1:
        assert not acc[schema.WEAK].any()
        assert set(picks.loc[picks[schema.WEAK], schema.REASON]) <= {"weak_unsupported", "no_edge", "diameter_range", "contamination"}


def test_same_size_support_counts_like_brute_force():
    rng = np.random.default_rng(0)
    d = rng.uniform(20, 200, 300)
    ref = rng.uniform(20, 200, 120)
    expected = [int(np.sum(np.abs(ref / x - 1) < 0.1)) for x in d]
    assert same_size_support(d, ref, tolerance=0.1).tolist() == expected
    assert same_size_support(d, np.empty(0), tolerance=0.1).tolist() == [0] * 300


def test_same_size_medians_are_brute_force_medians():
    rng = np.random.default_rng(1)
    d = rng.uniform(20, 200, 200)
    ref = rng.uniform(20, 200, 150)
    vals = rng.normal(size=(150, 2))
    vals[::7, 1] = np.nan
    out = same_size_medians(d, ref, vals, tolerance=0.1, min_count=3)
    for i, x in enumerate(d):
        near = np.abs(ref / x - 1) < 0.1
        for j in range(2):
            v = vals[near, j][np.isfinite(vals[near, j])]
            expected = np.median(v) if len(v) >= 3 else np.nan
            np.testing.assert_equal(out[i, j], expected)
    assert np.isnan(same_size_medians(d, np.empty(0), np.empty((0, 2)), tolerance=0.1, min_count=1)).all()


def _medians_one_by_one(d, ref, vals, *, tolerance, min_count):
    """same_size_medians as its definition says it: per diameter and measure, np.median of the finite values of the
    reference diameters strictly within ``tolerance`` of it."""
    vals = vals[:, None] if vals.ndim == 1 else vals
    out = np.full((len(d), vals.shape[1]), np.nan)
    for i, x in enumerate(d):
        near = (ref > x * (1 - tolerance)) & (ref < x * (1 + tolerance))
        for j in range(vals.shape[1]):
            v = vals[near, j][np.isfinite(vals[near, j])]
            if len(v) >= min_count:
                out[i, j] = np.median(v)
    return out


@pytest.mark.parametrize("seed", range(12))
def test_same_size_medians_equal_a_median_per_pick_and_measure(seed, monkeypatch):
    """The medians taken a window of sizes at a time (sorted rows, padded) are those of np.median pick by pick, to the
    bit: ties of sizes, odd and even counts, NaN and inf values, windows of every width, in chunks of any size."""
    from lipoframe.builtin import filters

    rng = np.random.default_rng(seed)
    monkeypatch.setattr(filters, "_MEDIAN_CHUNK", int(rng.choice([1, 7, 64, 1 << 20])))
    n, n_ref = int(rng.integers(0, 120)), int(rng.integers(0, 90))
    d = np.round(rng.uniform(20, 60, n), int(rng.integers(0, 2)))  # sizes that tie, as rounded diameters do
    ref = np.round(rng.uniform(20, 60, n_ref), int(rng.integers(0, 2)))
    vals = rng.normal(size=(n_ref, int(rng.integers(1, 4)))) * 10.0 ** rng.integers(-3, 4)
    vals[rng.random(vals.shape) < 0.1] = np.nan
    vals[rng.random(vals.shape) < 0.05] = rng.choice([np.inf, -np.inf])
    tolerance, min_count = float(rng.uniform(0.02, 0.4)), int(rng.integers(1, 6))
    for values in (vals, vals[:, 0]):
        got = same_size_medians(d, ref, values, tolerance=tolerance, min_count=min_count)
        np.testing.assert_array_equal(got, _medians_one_by_one(d, ref, values, tolerance=tolerance, min_count=min_count))


def _table(diameters, weak, accepted=None):
    n = len(diameters)
    df = pd.DataFrame(index=range(n))
    df[schema.X] = np.arange(n, dtype=float) * 10
    df[schema.Y] = 5.0
    df[schema.DIAMETER] = np.asarray(diameters, float)
    df[schema.SCORE] = np.where(weak, 4.5, 8.0)
    df[schema.LEVEL] = 0
    df[schema.SIGMA] = df[schema.DIAMETER] / 2.8
    df[schema.WEAK] = np.asarray(weak, bool)
    df[schema.ACCEPTED] = np.ones(n, bool) if accepted is None else np.asarray(accepted, bool)
    df[schema.REASON] = np.where(df[schema.ACCEPTED], "", "other")
    return df


def _mic(shape):
    return Micrograph(meta=MicrographMeta(name="t", path="", shape=shape, pixel_size=1.0), image=np.zeros(shape, np.float32))


def test_population_filter_needs_enough_confident_picks_of_the_same_size():
    ctx = PickContext(dmin_px=10, dmax_px=200)
    # 30 confident picks of 50 px cover 30 * 1963 / 500**2 = 24 % of a 500² image.
    conf = [50.0] * 30
    picks = _table(conf + [51.0, 80.0, 50.0], [False] * 30 + [True, True, True], accepted=[True] * 32 + [False])
    picks.loc[30:, schema.Y] = 300.0  # clear of the confident row (weak picks overlapping one are another rule)
    before = picks.copy()
    out = PopulationFilter(PopulationParams(min_occupancy=0.08, min_support=20)).apply(picks, _mic((500, 500)), ctx)
    pd.testing.assert_frame_equal(picks, before)  # the input is not changed
    assert out[schema.ACCEPTED].tolist() == [True] * 31 + [False, False]
    assert out[schema.REASON].tolist()[-2:] == ["weak_unsupported", "other"]
    assert out[schema.SUPPORT].tolist()[30:] == [30, 0, 30]
    # The same picks on a 4x larger image are not crowded: the weak ones go.
    big = PopulationFilter(PopulationParams(min_occupancy=0.08, min_support=20)).apply(picks, _mic((2000, 2000)), ctx)
    assert not big[schema.ACCEPTED].iloc[30:].any()
    # ... and with too few confident picks neither.
    few = PopulationFilter(PopulationParams(min_occupancy=0.0, min_support=31)).apply(picks, _mic((500, 500)), ctx)
    assert not few[schema.ACCEPTED].iloc[30:].any()
    assert few[schema.ACCEPTED].iloc[:30].all()  # confident picks are never touched


def test_a_nearly_confident_weak_pick_with_a_clear_edge_needs_only_a_few_picks_of_its_size():
    ctx = PickContext(dmin_px=10, dmax_px=200)
    # 10 confident picks of 50 px on a 2000² image cover 0.5 %: no crowd for an ordinary weak pick.
    conf = [50.0] * 10
    picks = _table(conf + [50.0] * 4 + [80.0], [False] * 10 + [True] * 5)
    picks.loc[10:, schema.Y] = 300.0  # clear of the confident row
    picks[schema.QUALITY] = 8.0
    picks.loc[10:, schema.SCORE] = [5.0, 4.5, 5.0, 4.8, 5.0]
    picks.loc[10:, schema.QUALITY] = [6.0, 6.0, 4.0, 5.0, 6.0]
    out = PopulationFilter(PopulationParams()).apply(picks, _mic((2000, 2000)), ctx)
    # Nearly confident with a clear edge, among 10 of its size: kept; a lower score or a fainter edge, or no picks
    # of its size (80 px): not.
    assert out[schema.ACCEPTED].tolist()[10:] == [True, False, False, True, False]
    assert (out[schema.REASON].iloc[[11, 12, 14]] == "weak_unsupported").all()
    assert not PopulationFilter(PopulationParams(near_min_support=11)).apply(picks, _mic((2000, 2000)), ctx)[schema.ACCEPTED].iloc[10:].any()
    assert not PopulationFilter(PopulationParams(near_min_support=0)).apply(picks, _mic((2000, 2000)), ctx)[schema.ACCEPTED].iloc[10:].any()
    # Without the refiner's quality column the rule has nothing to go on.
    assert not PopulationFilter(PopulationParams()).apply(picks.drop(columns=schema.QUALITY), _mic((2000, 2000)), ctx)[schema.ACCEPTED].iloc[10:].any()


def test_weak_candidates_without_a_population_filter_are_rejected():
    img, _ = lattice(1.3)
    picks = pick(img, units="px", dmin=40, dmax=60, filters=("diameter_range",))
    weak = picks[schema.WEAK].to_numpy(bool)
    assert weak.any()
    assert not picks.loc[weak, schema.ACCEPTED].any()
    assert set(picks.loc[weak, schema.REASON]) <= {"weak", "no_edge", "at_border", "diameter_range"}


def test_weak_candidates_rank_after_confident_ones_in_nms():
    df = pd.DataFrame({schema.SCORE: [6.0, 4.5, 5.5], "response": [1.0, 9.0, 2.0], schema.WEAK: [False, True, False]})
    r = rank_values(df, "response")
    assert r[1] < min(r[0], r[2])
    assert r[2] > r[0]  # confident order kept
    assert rank_values(df.drop(columns=schema.WEAK), "response").tolist() == [1.0, 9.0, 2.0]


def test_blocked_directions_only_by_blockers():
    centres = np.array([[100.0, 100.0], [100.0, 140.0]])
    theta = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    both = blocked_directions(centres, np.array([20.0, 20.0]), theta)
    assert both[0].any() and both[1].any()
    only = blocked_directions(centres, np.array([20.0, 20.0]), theta, blockers=np.array([True, False]))
    assert not only[0].any() and only[1].any()


@pytest.mark.parametrize(
    "params, message",
    [
        (dict(min_occupancy=1.5), "filter.population.min_occupancy"),
        (dict(min_support=0), "filter.population.min_support"),
        (dict(size_tolerance=0), "filter.population.size_tolerance"),
        (dict(near_min_support=-1), "filter.population.near_min_support"),
        (dict(near_score=0), "filter.population.near_score"),
        (dict(near_quality=-1.0), "filter.population.near_quality"),
        (dict(blank_contrast=1.0), "filter.population.blank_contrast"),
        (dict(blank_contrast=-0.1), "filter.population.blank_contrast"),
        (dict(blank_strength=0), "filter.population.blank_strength"),
        (dict(blank_min_contrast=0), "filter.population.blank_min_contrast"),
        (dict(blank_min_support=0), "filter.population.blank_min_support"),
    ],
)
def test_population_params_are_validated(params, message):
    with pytest.raises(ValueError, match=message):
        PopulationParams(**params)


def test_weak_threshold_is_validated():
    from lipoframe.builtin.detectors import EdgeParams

    with pytest.raises(ValueError, match="detector.weak_threshold"):
        EdgeParams(weak_threshold=-1.0)
    assert EdgeParams(weak_threshold=None).weak_threshold is None


LIPOSOMES = Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "liposomes_cryotem_nanorange"


@pytest.mark.skipif(not LIPOSOMES.is_dir(), reason="shared liposome images not available")
@pytest.mark.parametrize("name, dmax", [("Fusion-G-87.jpg", 260), ("Synergy-2-31.jpg", 400)])
def test_real_polydisperse_liposomes_get_few_weak_picks(name, dmax):
    """Real polydisperse vesicles: hundreds of weak candidates, no size crowds the image; only a few nearly
    confident ones with a clear edge are accepted (filter.population.near_*), none without that rule."""
    from PIL import Image

    img = np.asarray(Image.open(LIPOSOMES / name).convert("L")).astype(np.float32)
    picks = pick(img, units="px", dmin=20, dmax=dmax)
    weak = picks[schema.WEAK].to_numpy(bool)
    assert weak.sum() > 100
    assert picks.loc[weak, "support_occupancy"].max() < 0.08
    kept = picks[weak & picks[schema.ACCEPTED].to_numpy(bool)]
    p = PopulationParams()
    assert ((kept[schema.SCORE] >= p.near_score) & (kept[schema.QUALITY] >= p.near_quality) & (kept["support"] >= p.near_min_support)).all()
    assert len(kept) <= 0.03 * picks[schema.ACCEPTED].sum(), len(kept)
    filters = ("diameter_range", "contamination", "carbon", "speck", PopulationParams(near_min_support=0))
    without = pick(img, units="px", dmin=20, dmax=dmax, filters=filters)
    assert not without.loc[without[schema.WEAK].to_numpy(bool), schema.ACCEPTED].any()


def _dataset(quality_a, quality_b, *, weak_b=None):
    """Two micrographs' picks, ``a`` with many confident picks and ``b`` with few."""
    a = _table([50.0] * len(quality_a), [False] * len(quality_a))
    a[schema.MICROGRAPH] = "a"
    b = _table([50.0] * len(quality_b), weak_b if weak_b is not None else [False] * len(quality_b))
    b[schema.MICROGRAPH] = "b"
    picks = pd.concat([a, b], ignore_index=True)
    picks["quality"] = list(quality_a) + list(quality_b)
    return picks


def test_picks_of_a_nearly_empty_micrograph_must_look_like_the_datasets_particles():
    ctx = PickContext(dmin_px=10, dmax_px=200)
    quality_a = np.linspace(4.0, 14.0, 25)  # median 9
    picks = _dataset(quality_a, [20.0, 8.0])  # b: a clear particle and a noise-like pick
    before = picks.copy()
    out = PopulationFilter(PopulationParams()).apply_dataset(picks, {}, ctx)
    pd.testing.assert_frame_equal(picks, before)
    assert out[schema.ACCEPTED].tolist() == [True] * 25 + [True, False]
    assert out[schema.REASON].iloc[-1] == "lonely"
    # Off, or without enough particles elsewhere to say what is typical: unchanged.
    off = PopulationFilter(PopulationParams(lonely_below=0)).apply_dataset(picks, {}, ctx)
    assert off[schema.ACCEPTED].all()
    few = PopulationFilter(PopulationParams(min_support=26)).apply_dataset(picks, {}, ctx)
    assert few[schema.ACCEPTED].all()
    # b with three confident picks has particles of its own: nothing changes.
    three = _dataset(quality_a, [20.0, 8.0, 1.0])
    assert PopulationFilter(PopulationParams()).apply_dataset(three, {}, ctx)[schema.ACCEPTED].all()
    # Where most micrographs are sparse, few picks are the norm: nothing changes.
    sparse = {name: None for name in ("a", "b", "c", "d")}  # metas of four micrographs, c and d without picks
    assert PopulationFilter(PopulationParams()).apply_dataset(picks, sparse, ctx)[schema.ACCEPTED].all()
    assert not PopulationFilter(PopulationParams()).apply_dataset(picks, {"a": None, "b": None}, ctx)[schema.ACCEPTED].all()
    # Weak picks do not count as b's particles, and without the refiner's quality there is no test.
    weak = _dataset(quality_a, [20.0, 8.0, 30.0, 30.0], weak_b=[False, False, True, True])
    assert PopulationFilter(PopulationParams()).apply_dataset(weak, {}, ctx)[schema.ACCEPTED].tolist()[-4:] == [True, False, True, True]
    assert PopulationFilter(PopulationParams()).apply_dataset(picks.drop(columns="quality"), {}, ctx)[schema.ACCEPTED].all()
    with pytest.raises(ValueError, match="filter.population.lonely_below"):
        PopulationParams(lonely_below=-1)


def test_dataset_rejections_reach_the_run_folder_and_evaluate(tmp_path, run_cli):
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import TINY_ARGS, tiny_image, write_mrc

    from lipoframe.evaluate import read_picks
    from lipoframe.synthetic import render

    for i in range(3):
        write_mrc(tmp_path / "in" / f"mic_{i}.mrc", tiny_image(seed=i)[0])
    # One faint particle alone on its micrograph: below the dataset's typical quality.
    faint = pd.DataFrame({"x_px": [256.0], "y_px": [256.0], "diameter_px": [90.0]})
    write_mrc(tmp_path / "in" / "lone.mrc", render((512, 512), faint, contrast=0.45, noise=0.2, seed=7))
    out = tmp_path / "out"
    args = ["filter.population.min_support=5", *TINY_ARGS]
    code, _, err = run_cli("run", f"input={tmp_path / 'in'}", f"output={out}", *args)
    assert code == 0, err
    lone_alone = pick(render((512, 512), faint, contrast=0.45, noise=0.2, seed=7), units="px", dmin=30, dmax=160)
    assert lone_alone[schema.ACCEPTED].sum() == 1  # found when picked alone
    exported = pd.read_csv(out / "picks.csv")
    assert "lone" not in set(exported["micrograph"])
    assert len(exported) >= 3 * 4 - 1  # the particles of the other micrographs stay
    decided = pd.read_csv(out / "dataset_rejections.csv")
    assert decided.to_dict("records") == [{"micrograph": "lone", "row": 0, "reject_reason": "lonely"}]
    picks, names = read_picks(out)
    lone = picks[picks["micrograph"] == "lone"]
    assert "lone" in names and len(lone) >= 1
    assert not lone["accepted"].any() and "lonely" in set(lone["reject_reason"])
    # The report read back from the folder tells the same story.
    from lipoframe.report import load_run

    shown = load_run(out).picks
    assert set(shown.loc[shown["micrograph"] == "lone", "reject_reason"]) == set(lone["reject_reason"])
    # Turned off, the lone particle is exported and nothing is listed.
    out2 = tmp_path / "out2"
    code, _, err = run_cli("run", f"input={tmp_path / 'in'}", f"output={out2}", "filter.population.lonely_below=0", *args)
    assert code == 0, err
    assert "lone" in set(pd.read_csv(out2 / "picks.csv")["micrograph"])
    assert len(pd.read_csv(out2 / "dataset_rejections.csv")) == 0


def test_nearest_separation_is_one_where_circles_touch():
    from lipoframe.builtin.filters import nearest_separation

    ref = np.array([[0.0, 0.0], [100.0, 0.0]])
    sep = nearest_separation(np.array([[50.0, 0.0], [0.0, 30.0], [500.0, 500.0]]), np.array([25.0, 10.0, 5.0]), ref, np.array([25.0, 20.0]))
    assert sep[0] == pytest.approx(1.0)  # touches the first circle exactly
    assert sep[1] == pytest.approx(30.0 / 35.0)  # overlaps the first one
    assert np.isinf(sep[2])  # nothing within reach
    assert np.isinf(nearest_separation(ref, np.array([1.0, 1.0]), np.empty((0, 2)), np.empty(0))).all()


def test_weak_picks_overlapping_a_confident_particle_are_rejected():
    ctx = PickContext(dmin_px=10, dmax_px=200)
    picks = _table([50.0] * 30 + [50.0, 50.0], [False] * 30 + [True, True])
    # The confident picks sit 10 px apart on a row; move the two weak ones off it:
    # one overlapping confident pick 0 (centre 30 px away, radii sum 50), one touching pick 29.
    picks.loc[30, [schema.X, schema.Y]] = [0.0, 35.0]
    picks.loc[31, [schema.X, schema.Y]] = [290.0, 56.0]
    out = PopulationFilter(PopulationParams(min_occupancy=0.0, min_support=20)).apply(picks, _mic((500, 500)), ctx)
    assert out[schema.ACCEPTED].tolist()[30:] == [False, True]
    assert out[schema.REASON].iloc[30] == "weak_overlap"
    off = PopulationFilter(PopulationParams(min_occupancy=0.0, min_support=20, weak_min_separation=0)).apply(picks, _mic((500, 500)), ctx)
    assert off[schema.ACCEPTED].tolist()[30:] == [True, True]
    with pytest.raises(ValueError, match="filter.population.weak_min_separation"):
        PopulationParams(weak_min_separation=1.5)


def test_confident_picks_with_a_faint_edge_need_company_of_their_size():
    ctx = PickContext(dmin_px=10, dmax_px=200)
    # Ten clear 50-px particles, then: a faint 100-px pick alone (one 100-px disc
    # covers 0.8 % of the 1000² image: below 1 %), a
    # clear 80-px pick alone, a faint 50-px pick among the ten, and a faint 120-px
    # pick (1.1 %: enough alone).
    diameters = [50.0] * 10 + [100.0, 80.0, 50.0, 120.0]
    picks = _table(diameters, [False] * 14)
    picks[schema.Y] = [5.0] * 10 + [300.0, 600.0, 900.0, 800.0]
    picks["quality"] = [8.0] * 10 + [3.0, 6.0, 3.0, 3.0]
    before = picks.copy()
    out = PopulationFilter(PopulationParams()).apply(picks, _mic((1000, 1000)), ctx)
    pd.testing.assert_frame_equal(picks, before)
    assert out[schema.ACCEPTED].tolist() == [True] * 10 + [False, True, True, True]
    assert out[schema.REASON].iloc[10] == "faint_unsupported"
    # A stricter occupancy also rejects the 120-px one; 0 turns the rule off.
    strict = PopulationFilter(PopulationParams(faint_min_occupancy=0.02)).apply(picks, _mic((1000, 1000)), ctx)
    assert strict[schema.ACCEPTED].tolist()[10:] == [False, True, True, False]
    off = PopulationFilter(PopulationParams(faint_quality=0)).apply(picks, _mic((1000, 1000)), ctx)
    assert off[schema.ACCEPTED].all()
    # Weak picks are judged by the weak rules, and rejected picks keep their reason.
    picks.loc[10, schema.WEAK] = True
    picks.loc[11, [schema.ACCEPTED, schema.REASON]] = [False, "other"]
    picks.loc[11, "quality"] = 1.0
    out = PopulationFilter(PopulationParams()).apply(picks, _mic((1000, 1000)), ctx)
    assert out[schema.REASON].tolist()[10:12] == ["weak_unsupported", "other"]
    with pytest.raises(ValueError, match="filter.population.faint_quality"):
        PopulationParams(faint_quality=-1)
    with pytest.raises(ValueError, match="filter.population.faint_min_occupancy"):
        PopulationParams(faint_min_occupancy=1.5)


def test_a_micrograph_with_few_picks_for_its_dataset_counts_as_nearly_empty():
    ctx = PickContext(dmin_px=10, dmax_px=200)
    parts = []
    for name in ("a1", "a2", "a3"):  # 25 confident picks each, median quality 9
        t = _table([50.0] * 25, [False] * 25)
        t[schema.MICROGRAPH] = name
        t["quality"] = np.linspace(4.0, 14.0, 25)
        parts.append(t)
    b = _table([50.0] * 4, [False] * 4)  # four picks where the others have 25: below 0.2 x 25
    b[schema.MICROGRAPH] = "b"
    b["quality"] = [20.0, 8.0, 8.5, 5.0]
    picks = pd.concat(parts + [b], ignore_index=True)
    out = PopulationFilter(PopulationParams()).apply_dataset(picks, {}, ctx)
    assert out[schema.ACCEPTED].tolist()[-4:] == [True, False, False, False]
    assert set(out[schema.REASON].iloc[-3:]) == {"lonely"}
    assert out[schema.ACCEPTED].iloc[:75].all()
    # With the fraction off only the absolute count (3) decides, and four picks are more.
    off = PopulationFilter(PopulationParams(lonely_fraction=0)).apply_dataset(picks, {}, ctx)
    assert off[schema.ACCEPTED].all()
    # Micrographs without picks count as 0 in the median: with four more of them
    # the median micrograph has 0 picks and b is not unusual (nor are most micrographs full).
    empty = {n: None for n in ("a1", "a2", "a3", "b", "c", "d", "e", "f")}
    assert PopulationFilter(PopulationParams()).apply_dataset(picks, empty, ctx)[schema.ACCEPTED].all()
    with pytest.raises(ValueError, match="filter.population.lonely_fraction"):
        PopulationParams(lonely_fraction=1.0)


def _clear_population():
    """Ten clear 50-px particles (4 spreads darker than their surroundings, score 14,
    quality 12), then the picks under test."""
    ctx = PickContext(dmin_px=10, dmax_px=200)
    # 10: weak on every measure (a circle on background at the threshold);
    # 11: a vesicle: no contrast, a modest edge quality, but a particle's score;
    # 12: half the typical contrast; 13: a lone 80-px circle (no population of its size);
    # 14: like 10 but rejected before.
    diameters = [50.0] * 10 + [50.0, 50.0, 50.0, 80.0, 50.0]
    picks = _table(diameters, [False] * 15)
    picks[schema.Y] = [5.0] * 10 + [300.0, 400.0, 500.0, 600.0, 700.0]
    picks[schema.SCORE] = [14.0] * 10 + [5.4, 14.0, 5.4, 5.4, 5.4]
    picks["quality"] = [12.0] * 10 + [4.5, 5.0, 4.5, 4.5, 4.5]
    picks["darkness"] = [4.0] * 10 + [0.2, 0.0, 2.0, 0.2, 0.2]
    picks["surround_darkness"] = 0.0
    picks.loc[14, [schema.ACCEPTED, schema.REASON]] = [False, "other"]
    return picks, ctx


def test_blank_picks_among_clear_particles_of_their_size_are_rejected():
    picks, ctx = _clear_population()
    before = picks.copy()
    out = PopulationFilter(PopulationParams()).apply(picks, _mic((1000, 1000)), ctx)
    pd.testing.assert_frame_equal(picks, before)
    assert out[schema.ACCEPTED].tolist() == [True] * 10 + [False, True, True, True, False]
    assert out[schema.REASON].tolist()[10:] == ["blank", "", "", "", "other"]
    # Against the surroundings, not the micrograph's background: on the bright
    # side of a gradient a particle's darkness is low, its surroundings' too.
    shifted = picks.assign(darkness=picks["darkness"] - 2.0, surround_darkness=-2.0)
    assert PopulationFilter(PopulationParams()).apply(shifted, _mic((1000, 1000)), ctx)[schema.REASON].tolist()[10:12] == ["blank", ""]
    # Each measure saves a pick: a particle's score, or its edge quality.
    for column, value in ((schema.SCORE, 7.5), ("quality", 6.5), ("darkness", 1.5)):
        saved = picks.copy()
        saved.loc[10, column] = value
        assert PopulationFilter(PopulationParams()).apply(saved, _mic((1000, 1000)), ctx)[schema.ACCEPTED].iloc[10]
    # No clearly visible typical particle (below one spread: the simulated
    # suite's particles, real liposomes, apoferritin), too few of them (13 of
    # its size here, 14 asked), off, or no contamination columns.
    faint = picks.assign(darkness=picks["darkness"] / 4.5)
    for table, params in ((faint, PopulationParams()), (picks, PopulationParams(blank_min_support=14)),
                          (picks, PopulationParams(blank_contrast=0)), (picks.drop(columns="darkness"), PopulationParams())):
        assert PopulationFilter(params).apply(table, _mic((1000, 1000)), ctx)[schema.ACCEPTED].tolist()[10:] == [True] * 4 + [False]
    # Weak picks in a crowded field of clear particles are judged the same way.
    weak = picks.copy()
    weak.loc[10, schema.WEAK] = True
    out = PopulationFilter(PopulationParams(min_support=5, min_occupancy=0.0)).apply(weak, _mic((1000, 1000)), ctx)
    assert out[schema.REASON].iloc[10] == "blank"


def test_a_faint_flat_disc_among_clear_particles_is_blank_a_thin_ring_is_not():
    """Seven clear 80-px projected spheres (2 Å/px, as the demo); at the other two
    sites of the grid a flat disc a fifth as dark (a circle the detector barely
    finds, with nothing inside it) and a thin ring, a vesicle whose lumen is ice."""
    from lipoframe.synthetic import render

    sites = [(170 + 340 * i, 170 + 340 * j) for i in range(3) for j in range(3)]
    flat, ring = sites[4], sites[8]
    clear = pd.DataFrame([(c, r, 80.0) for r, c in sites if (r, c) not in (flat, ring)], columns=[schema.X, schema.Y, schema.DIAMETER])
    img = render((1024, 1024), clear, contrast=1.0, noise=0.25, seed=3)
    yy, xx = np.mgrid[:1024, :1024]
    img -= np.float32(0.2) * (np.hypot(yy - flat[0], xx - flat[1]) <= 40)
    r = np.hypot(yy - ring[0], xx - ring[1])
    img -= np.float32(0.6) * ((r <= 40) & (r >= 34))

    def at(picks, site):
        near = np.hypot(picks[schema.Y] - site[0], picks[schema.X] - site[1]) < 10
        assert near.sum() == 1
        return picks[near].iloc[0]

    picks = pick(img, pixel_size=2.0, dmin=120, dmax=400)
    assert at(picks, flat)[schema.REASON] == "blank" and not at(picks, flat)[schema.WEAK]
    assert at(picks, ring)[schema.ACCEPTED]
    acc = picks[picks[schema.ACCEPTED]]
    assert len(acc) == 8 and (acc["darkness"] - acc["surround_darkness"]).median() > 3
    off = pick(img, pixel_size=2.0, dmin=120, dmax=400,
               filters=("diameter_range", "contamination", "carbon", "speck", PopulationParams(blank_contrast=0)))
    assert at(off, flat)[schema.ACCEPTED]
