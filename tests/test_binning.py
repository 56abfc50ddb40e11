"""Binning policies: peak/valley, quantile, k-means and HAC with SIMPLE's Z-score filtering.

Constructed diameter sets (seeded) with a known answer: a bimodal set with a
clear valley, a broad unimodal set, an outlier population, equal cluster
populations, and empty or near-empty sets.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.stats import norm

from lipoframe import schema
from lipoframe.algorithms import binning as algo
from lipoframe.builtin.binning import (
    HacBinner,
    HacParams,
    KMeansBinner,
    KMeansParams,
    PeakValleyBinner,
    PeakValleyParams,
    QuantileBinner,
    QuantileParams,
    SingleBinner,
    auto_bin_width,
)
from lipoframe.plan import OUTLIER_REASON, round_up_box
from lipoframe.records import PickContext

PX = 1.0


def ctx(pixel_size=PX) -> PickContext:
    return PickContext(dmin_px=100, dmax_px=600, polarity="dark", pixel_size=pixel_size, seed=0)


def picks_of(diameters, *, rejected=None) -> pd.DataFrame:
    """A dataset-level pick table with the given diameters (px)."""
    d = np.asarray(diameters, dtype=float)
    n = d.size
    df = pd.DataFrame({
        schema.MICROGRAPH: [f"mic_{i % 3}" for i in range(n)],
        schema.X: np.arange(n, dtype=float),
        schema.Y: np.arange(n, dtype=float),
        schema.DIAMETER: d,
        schema.SCORE: np.ones(n),
        schema.LEVEL: np.zeros(n, dtype=np.int64),
        schema.SIGMA: d / 2.8,
        schema.ACCEPTED: True,
        schema.REASON: "",
    })
    if rejected is not None:
        df = schema.reject(df, rejected, "score")
    return df


def bimodal(seed=1):
    rng = np.random.default_rng(seed)
    return np.r_[rng.normal(180, 12, 400), rng.normal(300, 15, 400)]


# ---------------------------------------------------------------------------
# peak_valley
# ---------------------------------------------------------------------------
def test_small_particles_two_modes_are_resolved_by_the_automatic_bar():
    # 50 and 80 px (40 / 60 %): 2.5 bars of 12 px apart, so a fixed 12 px bar
    # sees one broad mode (and splits it as one).
    rng = np.random.default_rng(0)
    d = np.r_[rng.normal(50, 3, 40), rng.normal(80, 4, 60)]
    assert auto_bin_width(d) == pytest.approx(0.06 * np.median(d))
    plan = PeakValleyBinner(PeakValleyParams()).assign(picks_of(d), {}, ctx()).plan
    assert plan.n_bins == 2
    assert plan.bins[0].count == 40 and plan.bins[0].d_max_px < 65 < plan.bins[1].d_min_px
    fixed = PeakValleyBinner(PeakValleyParams(bin_width_px=12.0)).assign(picks_of(d), {}, ctx()).plan
    assert fixed.details["modes_px"] and len(fixed.details["modes_px"]) == 1


def test_automatic_bar_is_capped_at_12_px():
    assert auto_bin_width(np.array([400.0, 500.0])) == 12.0
    assert auto_bin_width(np.array([100.0])) == pytest.approx(6.0)


def test_bimodal_with_clear_valley_gives_two_bins_split_at_the_valley():
    d = bimodal()
    res = PeakValleyBinner(PeakValleyParams()).assign(picks_of(d), {}, ctx())
    plan = res.plan
    assert plan.n_bins == 2
    # where the mixture density is lowest between the modes
    x = np.linspace(180, 300, 2401)
    valley = x[np.argmin(norm.pdf(x, 180, 12) + norm.pdf(x, 300, 15))]
    cut = plan.details["valleys_px"][0]
    assert abs(cut - valley) <= plan.details["histogram"]["bin_width_px"] == 12.0  # 6 % of 240 px, capped
    lo, hi = plan.bins
    assert lo.d_max_px < cut <= hi.d_min_px
    assert lo.count == int((d < cut).sum()) and hi.count == int((d >= cut).sum())
    sb = res.picks[schema.SIZE_BIN].to_numpy()
    assert np.array_equal(sb, np.where(d < cut, 0, 1))
    # the box comes from the largest diameter of each bin, rounded up to 32
    for b in plan.bins:
        assert b.box_px == round_up_box(1.5 * b.d_max_px)
        assert b.box_px % 32 == 0 and b.box_px >= 1.5 * b.d_max_px


def test_broad_unimodal_gives_three_quantile_bins():
    d = np.random.default_rng(2).normal(300, 50, 900)
    res = PeakValleyBinner(PeakValleyParams(broad_split="quantile")).assign(picks_of(d), {}, ctx())
    plan = res.plan
    assert plan.n_bins == 3
    assert plan.details["modes_px"] and len(plan.details["modes_px"]) == 1
    counts = [b.count for b in plan.bins]
    assert sum(counts) == d.size and max(counts) - min(counts) <= 1
    edges = np.quantile(d, [1 / 3, 2 / 3])
    assert plan.bins[0].d_max_px < edges[0] <= plan.bins[1].d_min_px
    assert plan.bins[1].d_max_px < edges[1] <= plan.bins[2].d_min_px


def test_broad_unimodal_default_split_extracts_fewer_pixels_than_equal_counts():
    d = np.random.default_rng(2).normal(300, 50, 900)
    plans = {split: PeakValleyBinner(PeakValleyParams(broad_split=split)).assign(picks_of(d), {}, ctx()).plan
             for split in ("min_waste", "quantile")}
    assert PeakValleyParams().broad_split == "min_waste"
    px = {k: sum(b.count * b.box_px**2 for b in p.bins) for k, p in plans.items()}
    waste = plans["min_waste"]
    assert waste.n_bins == 3 and px["min_waste"] < px["quantile"]
    assert min(b.count for b in waste.bins) >= PeakValleyParams().min_bin_picks
    assert "fewest-pixel" in " ".join(waste.notes)


def test_narrow_unimodal_gives_one_bin():
    d = np.random.default_rng(3).normal(300, 12, 500)
    plan = PeakValleyBinner(PeakValleyParams()).assign(picks_of(d), {}, ctx()).plan
    assert plan.n_bins == 1
    assert plan.bins[0].d_min_px == d.min() and plan.bins[0].d_max_px == d.max()


def test_trimodal_gives_three_bins_and_max_bins_caps_them():
    rng = np.random.default_rng(4)
    d = np.r_[rng.normal(170, 10, 300), rng.normal(250, 14, 500), rng.normal(380, 20, 200)]
    plan = PeakValleyBinner(PeakValleyParams()).assign(picks_of(d), {}, ctx()).plan
    assert plan.n_bins == 3
    assert [b.count for b in plan.bins] == [int(v) for v in np.bincount(np.digitize(d, plan.details["valleys_px"]))]
    capped = PeakValleyBinner(PeakValleyParams(max_bins=2)).assign(picks_of(d), {}, ctx()).plan
    assert capped.n_bins == 2
    # the shallower valley (between the two closer modes, 170 and 250) is the one removed
    assert 250 < capped.details["valleys_px"][0] < 380


def test_noise_does_not_make_modes_in_a_small_unimodal_set():
    false = sum(
        algo.peak_valley_edges(np.random.default_rng(s).normal(300, 40, 60)).n_modes > 1 for s in range(40)
    )
    assert false <= 2


@pytest.mark.parametrize("values, width", [
    ([73.2, 148.2, 27.299999999999997], 0.3),  # 27.299999999999997 / 0.3 rounds to 91.0, and 91 * 0.3 > it
    ([25.799999999999997, 58.8, 113.10000000000001], 0.3),
    ([33.3, 42.3, 138.89999999999998], 0.3),  # the last edge as computed equals the largest value
    ([48.8, 39.18, 24.05], 0.1),
    ([29.5, 34.6, 45.1], 1.1),
])
def test_histogram_edges_cover_every_value_despite_rounding(values, width):
    """Diameters read back from a table rounded to a decimal often sit on a multiple of the bar
    in exact arithmetic; the computed edges must still hold them, and every value is counted."""
    edges = algo.histogram_edges(values, bin_width=width)
    assert edges[0] <= min(values) and edges[-1] > max(values)
    assert np.histogram(values, bins=edges)[0].sum() == len(values)
    assert np.allclose(np.diff(edges), width)


# ---------------------------------------------------------------------------
# quantile
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("n_bins", [1, 2, 4, 7])
def test_quantile_makes_equal_count_bins(n_bins):
    d = np.random.default_rng(5).gamma(4, 60, 1001) + 100
    res = QuantileBinner(QuantileParams(n_bins=n_bins)).assign(picks_of(d), {}, ctx())
    counts = [b.count for b in res.plan.bins]
    assert len(counts) == n_bins and sum(counts) == d.size
    assert max(counts) - min(counts) <= 1
    # bins are ordered and disjoint
    for a, b in zip(res.plan.bins, res.plan.bins[1:]):
        assert a.d_max_px < b.d_min_px


def test_quantile_with_many_equal_diameters_gives_fewer_bins_and_says_so():
    d = np.r_[np.full(90, 200.0), np.linspace(250, 300, 10)]
    plan = QuantileBinner(QuantileParams(n_bins=3)).assign(picks_of(d), {}, ctx()).plan
    assert plan.n_bins < 3
    assert sum(b.count for b in plan.bins) == 100
    assert any("distinct quantile" in n for n in plan.notes)


@pytest.mark.parametrize("n_bins", [2, 3, 5])
def test_quantile_keeps_a_group_of_equal_diameters_apart_from_the_larger_ones(n_bins):
    # Before, with 3 or more bins the quantiles fell on 100 twice and on 300 twice, the
    # repeated edges were merged and one bin of 100-300 px came back, its box (480 px) for
    # the 100 px particles too, while n_bins=2 gave the two bins.
    d = np.r_[np.full(100, 100.0), np.full(100, 300.0)]
    plan = QuantileBinner(QuantileParams(n_bins=n_bins)).assign(picks_of(d), {}, ctx()).plan
    assert [(b.d_min_px, b.d_max_px, b.count) for b in plan.bins] == [(100.0, 100.0, 100), (300.0, 300.0, 100)]
    # the note counts the bins that came back: an empty bin between the two groups was counted (3 of 3: no
    # note; 3 of 5)
    fewer = [n for n in plan.notes if "distinct quantile" in n]
    assert fewer == ([f"only 2 distinct quantile bin(s) of the {n_bins} asked (many equal diameters or few picks)"]
                     if n_bins > 2 else []), plan.notes
    # 90 equal diameters and 10 larger ones: the 90 get their own (smaller) box
    d = np.r_[np.full(90, 200.0), np.linspace(250, 300, 10)]
    plan = QuantileBinner(QuantileParams(n_bins=3)).assign(picks_of(d), {}, ctx()).plan
    assert [(b.d_min_px, b.count) for b in plan.bins] == [(200.0, 90), (250.0, 10)]
    assert plan.bins[0].box_px < plan.bins[1].box_px


# ---------------------------------------------------------------------------
# Z-score filtering (SIMPLE segdiampick)
# ---------------------------------------------------------------------------
def clusters(spec):
    """Diameters and labels: one tight cluster (evenly spread over +-3 px) per (mean, population)."""
    d = np.concatenate([m + np.linspace(-3, 3, n) if n > 1 else np.array([float(m)]) for m, n in spec])
    lab = np.concatenate([np.full(n, i) for i, (_, n) in enumerate(spec)])
    return d, lab


def test_outlier_cluster_is_rejected_by_the_mean_z_test():
    rng = np.random.default_rng(6)
    main = rng.normal(250, 15, 300)
    outlier = rng.normal(600, 10, 40)
    d = np.r_[main, outlier]
    res = HacBinner(HacParams()).assign(picks_of(d), {}, ctx())
    cl = res.plan.details["clusters"]
    assert len(cl) == 2
    assert cl[0]["accepted"] and not cl[1]["accepted"]
    assert cl[1]["rejected_by"] == "mean Z" and cl[1]["mean_z"] >= 2.0
    # flagged, never dropped
    out = res.picks
    assert len(out) == d.size
    flagged = ~out[schema.ACCEPTED].to_numpy()
    assert np.array_equal(flagged, d > main.max())
    assert set(out.loc[flagged, schema.REASON]) == {OUTLIER_REASON}
    assert (out.loc[flagged, schema.SIZE_BIN] == schema.REJECTED_BIN).all()
    assert res.plan.accepted_range_px == (main.min(), main.max())
    assert res.plan.n_bins == 1 and res.plan.bins[0].count == main.size
    assert res.plan.details["n_outliers"] == outlier.size


def test_sparse_cluster_is_rejected_by_the_population_z_test():
    d, lab = clusters([(240, 100), (250, 98), (255, 5), (260, 102)])
    f = algo.zscore_filter(d, lab)
    assert not f.pop_test_suppressed
    # (median(pops) - pop) / (1.4826 MAD(pops)) for the population of 5
    pops = np.array([100, 98, 5, 102])
    expected = (np.median(pops) - 5) / (1.4826 * np.median(np.abs(pops - np.median(pops))))
    assert f.pop_z[2] == pytest.approx(expected)
    assert f.accepted.tolist() == [True, True, False, True]
    assert f.rows()[2]["rejected_by"] == "population Z"
    assert (f.mean_z < 2).all()


def test_both_z_tests_must_pass():
    # far and sparse: fails both; near but sparse: fails the population test only
    d, lab = clusters([(250, 100), (258, 101), (242, 99), (400, 4), (251, 3)])
    f = algo.zscore_filter(d, lab)
    spec = np.array([250, 258, 242, 400, 251])
    by_mean = {int(spec[np.argmin(np.abs(spec - m))]): (a, r["rejected_by"]) for m, a, r in zip(f.mean, f.accepted, f.rows())}
    assert len(by_mean) == 5
    assert by_mean[400] == (False, "mean Z, population Z")
    assert not by_mean[251][0] and by_mean[251][1] == "population Z"
    assert all(by_mean[m][0] for m in (242, 250, 258))


def test_equal_populations_suppress_the_population_test():
    d, lab = clusters([(240, 50), (250, 50), (262, 50)])
    f = algo.zscore_filter(d, lab)
    assert f.pop_mad_gau == 0.0 and f.pop_test_suppressed
    assert (f.pop_z == 0).all() and f.accepted.all()
    res = HacBinner(HacParams(threshold_px=5.0)).assign(picks_of(d), {}, ctx())
    assert res.plan.details["pop_test_suppressed"] is True
    assert any("population Z-score test suppressed" in n for n in res.plan.notes)


def test_population_test_is_suppressed_only_when_the_mad_is_exactly_zero():
    # pops [50, 50, 5]: deviations from the median 0, 0, 45 -> MAD 0 -> suppressed, the 5 passes
    d, lab = clusters([(245, 50), (250, 50), (255, 5)])
    f = algo.zscore_filter(d, lab)
    assert f.pop_test_suppressed and f.accepted.all()
    # pops [50, 51, 5]: MAD 1 -> the test runs and rejects the 5
    d, lab = clusters([(245, 50), (250, 51), (255, 5)])
    f = algo.zscore_filter(d, lab)
    assert not f.pop_test_suppressed and f.pop_mad_gau == pytest.approx(1.4826)
    assert f.accepted.tolist() == [True, True, False]


def test_kmeans_always_excludes_the_first_and_last_cluster():
    d = np.random.default_rng(7).normal(250, 20, 600)
    res = KMeansBinner(KMeansParams()).assign(picks_of(d), {}, ctx())
    cl = res.plan.details["clusters"]
    assert len(cl) == 10
    assert [c["rejected_by"].startswith("edge cluster") for c in cl] == [True] + [False] * 8 + [True]
    assert all(c["accepted"] for c in cl[1:-1])
    lo, hi = res.plan.accepted_range_px
    assert lo == pytest.approx(cl[1]["min"], abs=1e-3) and hi == pytest.approx(cl[-2]["max"], abs=1e-3)
    flagged = ~res.picks[schema.ACCEPTED].to_numpy()
    assert np.array_equal(flagged, (d < lo) | (d > hi))
    assert flagged.sum() == cl[0]["count"] + cl[-1]["count"]
    # SIMPLE's single box by default; more bins when asked
    assert res.plan.n_bins == 1
    more = KMeansBinner(KMeansParams(max_bins=3)).assign(picks_of(d), {}, ctx()).plan
    assert 2 <= more.n_bins <= 3
    assert len({b.box_px for b in more.bins}) == more.n_bins


def test_hac_makes_one_bin_per_accepted_population():
    rng = np.random.default_rng(8)
    d = np.r_[rng.normal(200, 8, 300), rng.normal(260, 10, 300)]
    plan = HacBinner(HacParams()).assign(picks_of(d), {}, ctx()).plan
    assert plan.details["n_clusters"] == 2
    assert plan.n_bins == 2 and sum(b.count for b in plan.bins) == d.size
    assert plan.bins[0].d_max_px < 232 < plan.bins[1].d_min_px
    one = HacBinner(HacParams(max_bins=1)).assign(picks_of(d), {}, ctx()).plan
    assert one.n_bins == 1 and one.bins[0].count == d.size


def test_hac_merges_bins_that_would_share_a_box():
    # two populations close enough that both get a 352 px box: one bin
    d, _ = clusters([(218, 200), (230, 200)])
    p = HacParams(threshold_px=5.0)
    res = HacBinner(p).assign(picks_of(d), {}, ctx())
    assert res.plan.details["n_clusters"] == 2
    assert round_up_box(1.5 * d[:200].max()) == round_up_box(1.5 * d.max())
    assert res.plan.n_bins == 1
    split = HacBinner(HacParams(threshold_px=5.0, merge_same_box=False)).assign(picks_of(d), {}, ctx()).plan
    assert split.n_bins == 2


# ---------------------------------------------------------------------------
# Clustering primitives
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(10))
def test_hac_1d_matches_scipy_centroid_linkage(seed):
    rng = np.random.default_rng(seed)
    x = np.r_[rng.normal(100, 5, 25), rng.normal(140, 8, 20), rng.uniform(50, 250, 15)]
    thr = float(x.std() / 2)
    labels, cents = algo.hac_1d(x, thr)
    ref = fcluster(linkage(x[:, None], method="centroid"), t=thr, criterion="distance")
    # same partition (label names differ)
    pairs = set(zip(labels.tolist(), ref.tolist()))
    assert len(pairs) == len(set(labels.tolist())) == len(set(ref.tolist()))
    assert np.all(np.diff(cents) > 0)
    assert np.allclose(cents, [x[labels == k].mean() for k in range(cents.size)])


def test_kmeans_1d_converges_to_a_lloyd_fixed_point():
    x = np.random.default_rng(10).gamma(3, 50, 2000)
    labels, centers = algo.kmeans_1d(x, 10)
    assert np.all(np.diff(centers) > 0)
    assert np.allclose(centers, [x[labels == k].mean() for k in range(10)])
    nearest = np.argmin(np.abs(x[:, None] - centers[None, :]), axis=1)
    assert np.array_equal(nearest, labels)
    again = algo.kmeans_1d(x, 10)
    assert np.array_equal(again[0], labels)


def test_merge_bins_merges_the_cheapest_neighbours():
    box = lambda h: round_up_box(1.5 * h)  # noqa: E731
    lo, hi, c = algo.merge_bins([100, 150, 300], [120, 200, 350], [10, 500, 10], box, max_bins=2, merge_same_box=True)
    # merging the 10 small ones into the 500 costs least
    assert lo.tolist() == [100, 300] and hi.tolist() == [200, 350] and c.tolist() == [510, 10]


# ---------------------------------------------------------------------------
# Empty, near-empty, rejected-upstream
# ---------------------------------------------------------------------------
ALL = [
    (SingleBinner, None), (PeakValleyBinner, PeakValleyParams()), (QuantileBinner, QuantileParams()),
    (KMeansBinner, KMeansParams()), (HacBinner, HacParams()),
]


@pytest.mark.parametrize("cls,params", ALL)
def test_empty_set_gives_a_plan_with_no_bins_and_a_note(cls, params, caplog):
    res = cls(params).assign(picks_of([]), {}, ctx())
    assert res.plan.n_bins == 0 and res.plan.bins == ()
    assert any("no accepted picks" in n for n in res.plan.notes)
    assert schema.SIZE_BIN in res.picks.columns and len(res.picks) == 0
    assert "no accepted picks" in caplog.text


@pytest.mark.parametrize("cls,params", ALL)
def test_all_picks_rejected_upstream_keep_their_reason(cls, params):
    d = np.linspace(200, 300, 50)
    res = cls(params).assign(picks_of(d, rejected=np.ones(50, bool)), {}, ctx())
    assert res.plan.n_bins == 0
    assert (res.picks[schema.REASON] == "score").all()
    assert (res.picks[schema.SIZE_BIN] == schema.REJECTED_BIN).all()


@pytest.mark.parametrize("cls,params", ALL)
def test_near_empty_set_gives_one_bin_and_a_note(cls, params):
    d = [210.0, 250.0, 233.0]
    res = cls(params).assign(picks_of(d), {}, ctx())
    assert sum(b.count for b in res.plan.bins) == 3
    assert res.picks[schema.ACCEPTED].all()
    if cls in (PeakValleyBinner, KMeansBinner, HacBinner):
        assert res.plan.n_bins == 1
        assert any("min_picks" in n for n in res.plan.notes)


@pytest.mark.parametrize("cls,params", ALL)
def test_policies_do_not_mutate_their_input_and_keep_every_row(cls, params):
    rng = np.random.default_rng(11)
    d = np.r_[rng.normal(200, 10, 200), rng.normal(320, 12, 150), [700.0]]
    rejected = np.zeros(d.size, bool)
    rejected[:5] = True
    picks = picks_of(d, rejected=rejected)
    before = picks.copy()
    res = cls(params).assign(picks, {}, ctx())
    pd.testing.assert_frame_equal(picks, before)
    assert len(res.picks) == len(picks)
    assert (res.picks[schema.REASON].iloc[:5] == "score").all()
    sb = res.picks[schema.SIZE_BIN].to_numpy()
    acc = res.picks[schema.ACCEPTED].to_numpy()
    assert ((sb >= 0) == acc).all()
    assert np.array_equal(res.plan.assign(d[acc]), sb[acc])
    assert sum(b.count for b in res.plan.bins) == acc.sum()


def test_mean_test_is_suppressed_when_most_diameters_are_equal():
    d = np.r_[np.full(60, 250.0), np.linspace(200, 300, 40)]
    f = algo.zscore_filter(d, algo.hac_1d(d, 10.0)[0])
    assert f.mad_gau == 0.0 and f.mean_test_suppressed and (f.mean_z == 0).all()


# ---------------------------------------------------------------------------
# Parameters and configuration
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("cls,kwargs,key", [
    (PeakValleyParams, {"pad": 1.7}, "binning.pad"),
    (PeakValleyParams, {"bin_width_px": 0}, "binning.bin_width_px"),
    (PeakValleyParams, {"min_dip": 1.0}, "binning.min_dip"),
    (PeakValleyParams, {"max_bins": 0}, "binning.max_bins"),
    (PeakValleyParams, {"stray_gap": 0}, "binning.stray_gap"),
    (QuantileParams, {"n_bins": 0}, "binning.n_bins"),
    (KMeansParams, {"n_clusters": 2}, "binning.n_clusters"),
    (KMeansParams, {"sigma_crit": 0}, "binning.sigma_crit"),
    (HacParams, {"threshold_px": -1.0}, "binning.threshold_px"),
    (HacParams, {"rounding": "pow2"}, "binning.rounding"),
])
def test_bad_parameters_name_the_key(cls, kwargs, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        cls(**kwargs)


def test_policies_are_selectable_from_hydra_and_peak_valley_is_the_default():
    from hydra import compose, initialize_config_dir

    from lipoframe.app import prepare_hydra
    from lipoframe.config import config_dir, to_run_config

    prepare_hydra()
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir()), job_name="t"):
        assert isinstance(to_run_config(compose("config")).binning, PeakValleyParams)
        cfg = to_run_config(compose("config", overrides=["binning=hac", "binning.sigma_crit=3", "binning.threshold_px=20"]))
        assert isinstance(cfg.binning, HacParams) and cfg.binning.sigma_crit == 3 and cfg.binning.threshold_px == 20
        assert isinstance(to_run_config(compose("config", overrides=["binning=kmeans"])).binning, KMeansParams)
        assert isinstance(to_run_config(compose("config", overrides=["binning=quantile"])).binning, QuantileParams)


# ---------------------------------------------------------------------------
# Invariants on arbitrary diameter sets
# ---------------------------------------------------------------------------
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(st.floats(min_value=20, max_value=800, allow_nan=False), min_size=0, max_size=300),
    st.sampled_from(ALL),
)
def test_every_policy_keeps_its_invariants(diameters, policy):
    cls, params = policy
    d = np.asarray(diameters, dtype=float)
    res = cls(params).assign(picks_of(d), {}, ctx())
    out, plan = res.picks, res.plan
    assert len(out) == d.size
    acc = out[schema.ACCEPTED].to_numpy()
    sb = out[schema.SIZE_BIN].to_numpy()
    assert ((sb >= 0) == acc).all()
    assert set(out.loc[~acc, schema.REASON]) <= {OUTLIER_REASON}
    assert sum(b.count for b in plan.bins) == acc.sum()
    for b in plan.bins:
        members = d[sb == b.index]
        assert members.size == b.count > 0
        assert members.min() == b.d_min_px and members.max() == b.d_max_px
        assert b.box_px % 32 == 0 and b.box_px >= 1.5 * b.d_max_px
        assert b.mask_diameter_A == pytest.approx(min((b.box_px - 6) * PX, 1.2 * b.d_max_px * PX))
    for a, b in zip(plan.bins, plan.bins[1:]):
        assert a.d_max_px < b.d_min_px
    if plan.accepted_range_px is not None:
        lo, hi = plan.accepted_range_px
        assert np.array_equal(~acc, (d < lo) | (d > hi))
    json.loads(plan.to_json())


def _pixels(x, edges, box):
    lab = algo.assign_to_edges(x, edges)
    return sum((lab == j).sum() * box(x[lab == j].max()) ** 2 for j in np.unique(lab))


@pytest.mark.parametrize("seed", range(40))
def test_min_waste_edges_find_the_cheapest_partition(seed):
    import itertools

    box = lambda v: round_up_box(1.5 * v)  # noqa: E731
    rng = np.random.default_rng(seed)
    x = np.sort(rng.gamma(2, 40, int(rng.integers(3, 16))) + 15)
    min_count = 1 if seed < 12 else int(rng.integers(2, 7))
    for k in (1, 2, 3, 4):
        edges = algo.min_waste_edges(x, k, box, min_count=min_count)
        assert len(edges) - 1 <= k and edges[0] == x.min() and edges[-1] == x.max()
        counts = np.bincount(algo.assign_to_edges(x, edges))
        assert counts.min() >= min(min_count, x.size)
        splits = [np.split(np.arange(x.size), list(cuts))
                  for m in range(1, k + 1) for cuts in itertools.combinations(range(1, x.size), m - 1)]
        brute = min(sum(len(s) * box(x[s].max()) ** 2 for s in parts)
                    for parts in splits if min(map(len, parts)) >= min(min_count, x.size))
        assert _pixels(x, edges, box) == pytest.approx(brute)


def test_min_waste_edges_rejects_a_bad_min_count():
    with pytest.raises(ValueError, match="min_count"):
        algo.min_waste_edges([1.0, 2.0], 2, lambda v: v, min_count=0)
    with pytest.raises(ValueError, match="binning.min_bin_picks"):
        PeakValleyParams(min_bin_picks=0)


def test_a_long_tailed_mode_among_several_is_split_and_the_valley_kept():
    # small particles (60 px) and a separate population of vesicles with a long tail
    rng = np.random.default_rng(6)
    d = np.r_[rng.normal(60, 3, 300), 120 + rng.gamma(1.3, 30, 200)]
    plan = PeakValleyBinner(PeakValleyParams()).assign(picks_of(d), {}, ctx()).plan
    assert len(plan.details["modes_px"]) == 2
    valley = plan.details["valleys_px"][0]
    assert plan.bins[0].d_max_px < valley <= plan.bins[1].d_min_px and plan.bins[0].count == 300
    assert 3 <= plan.n_bins <= PeakValleyParams().max_bins
    (split,) = plan.details["broad_mode_splits"]
    assert split["bins"] == plan.n_bins - 1 and split["pixels_saved_fraction"] > 0.2
    assert any("is broad" in n for n in plan.notes)
    assert min(b.count for b in plan.bins) >= PeakValleyParams().min_bin_picks
    boxes = [b.box_px for b in plan.bins]
    assert boxes == sorted(boxes) and len(set(boxes)) == len(boxes)
    # the unsplit plan puts every vesicle in the largest one's box
    whole = PeakValleyBinner(PeakValleyParams(max_bins=2)).assign(picks_of(d), {}, ctx()).plan
    assert whole.n_bins == 2 and "broad_mode_splits" not in whole.details
    px = lambda p: sum(b.count * b.box_px**2 for b in p.bins)  # noqa: E731
    assert px(plan) == pytest.approx(px(whole) - split["pixels_saved_fraction"] * whole.bins[1].count * whole.bins[1].box_px**2, rel=5e-3)


def test_narrow_modes_among_several_are_not_split():
    rng = np.random.default_rng(6)
    d = np.r_[rng.normal(80, 3, 200), rng.normal(150, 4, 200), rng.normal(215, 4, 150)]
    plan = PeakValleyBinner(PeakValleyParams()).assign(picks_of(d), {}, ctx()).plan
    assert plan.n_bins == 3 and "broad_mode_splits" not in plan.details


def test_long_tail_min_waste_gives_the_tail_its_own_bins_and_same_boxes_merge():
    # many small vesicles and a long tail of large ones (like real liposome preparations)
    rng = np.random.default_rng(12)
    d = np.r_[rng.lognormal(np.log(30), 0.3, 400), rng.uniform(60, 280, 40)]
    q = PeakValleyBinner(PeakValleyParams(merge_same_box=False, broad_split="quantile")).assign(picks_of(d), {}, ctx()).plan
    merged = PeakValleyBinner(PeakValleyParams(broad_split="quantile")).assign(picks_of(d), {}, ctx()).plan
    waste = PeakValleyBinner(PeakValleyParams()).assign(picks_of(d), {}, ctx()).plan
    assert q.n_bins == 3
    # equal-count bins of mostly small particles share a box: merged into one
    boxes = [b.box_px for b in q.bins]
    assert len(set(boxes)) < len(boxes) and merged.n_bins == len(set(boxes))
    assert len({b.box_px for b in merged.bins}) == merged.n_bins
    box = lambda v: round_up_box(1.5 * v)  # noqa: E731
    px = {name: sum(b.count * b.box_px**2 for b in p.bins) for name, p in (("q", q), ("waste", waste))}
    assert px["waste"] < 0.6 * px["q"]
    assert waste.n_bins == 3 and waste.bins[-1].d_min_px > 60
    assert _pixels(d, np.r_[d.min(), [0.5 * (a.d_max_px + b.d_min_px) for a, b in zip(waste.bins, waste.bins[1:])], d.max()], box) == px["waste"]


# ---------------------------------------------------------------------------
# stray picks
# ---------------------------------------------------------------------------
def test_a_stray_pick_gets_its_own_bin_instead_of_setting_everyones_box():
    # 500 particles of ~150 px and one pick of 450 px (an ice ball that passed the filters, say)
    rng = np.random.default_rng(0)
    d = np.r_[rng.normal(150, 8, 500), 450.0]
    plan = PeakValleyBinner(PeakValleyParams()).assign(picks_of(d), {}, ctx()).plan
    assert [b.count for b in plan.bins] == [500, 1]
    assert plan.bins[0].d_max_px == d[:500].max() and plan.bins[0].box_px == round_up_box(1.5 * d[:500].max())
    assert plan.bins[1].box_px == round_up_box(1.5 * 450) > 2 * plan.bins[0].box_px
    (move,) = plan.details["strays"]
    assert move["action"] == "own_bin" and move["picks"] == 1 and move["box_px_before"] == plan.bins[1].box_px
    assert any(n.startswith("stray pick: 1 pick of 450 px") for n in plan.notes)
    # turned off: one bin, every pick in the stray's box
    off = PeakValleyBinner(PeakValleyParams(stray_gap=None)).assign(picks_of(d), {}, ctx()).plan
    assert off.n_bins == 1 and off.bins[0].box_px == plan.bins[1].box_px and "strays" not in off.details


def test_strays_between_two_modes_join_the_next_bin_without_changing_its_box():
    rng = np.random.default_rng(0)
    d = np.r_[rng.normal(150, 8, 500), rng.normal(400, 10, 200), [240.0, 245.0]]
    plan = PeakValleyBinner(PeakValleyParams()).assign(picks_of(d), {}, ctx()).plan
    off = PeakValleyBinner(PeakValleyParams(stray_gap=None)).assign(picks_of(d), {}, ctx()).plan
    assert [b.count for b in off.bins] == [502, 200] and [b.count for b in plan.bins] == [500, 202]
    assert plan.bins[0].box_px < off.bins[0].box_px and plan.bins[1].box_px == off.bins[1].box_px
    assert plan.bins[1].d_min_px == 240.0 and plan.details["strays"][0]["action"] == "next_bin"


def test_a_stray_with_no_bin_left_stays_and_the_plan_says_so():
    rng = np.random.default_rng(0)
    d = np.r_[rng.normal(100, 3, 300), rng.normal(150, 4, 300), rng.normal(220, 5, 300), rng.normal(320, 6, 300), 480.0]
    plan = PeakValleyBinner(PeakValleyParams()).assign(picks_of(d), {}, ctx()).plan
    assert plan.n_bins == 4 and plan.bins[-1].count == 301 and plan.bins[-1].d_max_px == 480.0
    assert plan.details["strays"][0]["action"] == "none"
    assert any("no bin left (binning.max_bins=4)" in n for n in plan.notes)
    five = PeakValleyBinner(PeakValleyParams(max_bins=5)).assign(picks_of(d), {}, ctx()).plan
    assert [b.count for b in five.bins] == [300, 300, 300, 300, 1]


@pytest.mark.parametrize("seed", range(20))
def test_a_continuous_mode_has_no_strays(seed):
    # the largest of many normal diameters is never 30 % above the next
    d = np.random.default_rng(seed).normal(200, 25, 400)
    plan = PeakValleyBinner(PeakValleyParams()).assign(picks_of(d), {}, ctx()).plan
    assert "strays" not in plan.details


def test_stray_edges_take_the_cheapest_tail_and_leave_small_bins_alone():
    box = lambda v: round_up_box(1.5 * v)  # noqa: E731
    # nine vesicles of 74-124 px and one of 248 px: the 248 alone is cheaper than the four from 113 up
    d = np.array([74, 75, 82, 85, 86, 89, 113, 115, 124, 248.0])
    edges, (move,) = algo.stray_edges(d, np.array([74, 248.0]), box, gap=0.3, max_count=9, max_bins=4)
    assert move["picks"] == 1 and edges.tolist() == [74, 186, 248]
    # the strays must be fewer than the others
    edges, moves = algo.stray_edges(np.array([100, 101, 300, 310.0]), np.array([100, 310.0]), box, gap=0.3, max_count=9, max_bins=4)
    assert moves == [] and edges.tolist() == [100, 310]
    with pytest.raises(ValueError, match="gap"):
        algo.stray_edges(d, np.array([74, 248.0]), box, gap=0, max_count=9, max_bins=4)



def test_neighbouring_bins_with_the_same_box_get_a_note():
    from lipoframe.builtin.binning import QuantileBinner, QuantileParams
    from lipoframe.records import PickContext

    d = np.random.default_rng(0).uniform(40, 62, 300)  # every bin's box is 96 px
    picks = pd.DataFrame({schema.X: 0.0, schema.Y: 0.0, schema.DIAMETER: d, schema.SCORE: 1.0, schema.LEVEL: 0, schema.SIGMA: 1.0})
    ctx = PickContext(dmin_px=30, dmax_px=80, polarity="dark", pixel_size=1.0, seed=0)
    plan = QuantileBinner(QuantileParams(n_bins=3)).assign(picks, {}, ctx).plan
    assert [b.box_px for b in plan.bins] == [96, 96, 96]
    assert any(n.startswith("bins 1 and 2 (96 px), 2 and 3 (96 px) get the same box") for n in plan.notes)
    # n_bins near the number of picks: five pairs are named, not 39 on one line
    many = QuantileBinner(QuantileParams(n_bins=40)).assign(picks, {}, ctx).plan
    note = next(n for n in many.notes if "get the same box" in n)
    pairs = sum(a.box_px == b.box_px for a, b in zip(many.bins, many.bins[1:]))
    assert pairs > 20 and note.split(" more pairs")[0].count(" and ") == 5 and f"px), {pairs - 5} more pairs get the same box" in note, note
    wide = pd.concat([picks, picks.assign(**{schema.DIAMETER: d * 3})], ignore_index=True)
    plan = QuantileBinner(QuantileParams(n_bins=2)).assign(wide, {}, ctx).plan
    assert plan.bins[0].box_px != plan.bins[1].box_px and not any("same box" in n for n in plan.notes)


@pytest.mark.parametrize("max_bins", [1, 2])
def test_broad_single_mode_never_gets_more_bins_than_max_bins(max_bins):
    # one broad mode used to be split into broad_bins (3) bins whatever
    # max_bins said: max_bins=1 gave three bins
    d = np.random.default_rng(2).normal(300, 50, 900)
    plan = PeakValleyBinner(PeakValleyParams(max_bins=max_bins)).assign(picks_of(d), {}, ctx()).plan
    assert plan.n_bins == max_bins
    assert sum(b.count for b in plan.bins) == d.size
    assert any("one mode, broad" in n for n in plan.notes)


@pytest.mark.parametrize("kw", [{"broad_bins": 1}, {"max_bins": 1}])
def test_broad_mode_kept_whole_is_not_called_narrow(kw):
    # broad_bins=1 said 'one mode, narrow (p95/p5 = 1.73 <= 1.3)'
    d = np.random.default_rng(2).normal(300, 50, 900)
    plan = PeakValleyBinner(PeakValleyParams(**kw)).assign(picks_of(d), {}, ctx()).plan
    assert plan.n_bins == 1
    assert not any("narrow" in n for n in plan.notes)
    (note,) = [n for n in plan.notes if n.startswith("one mode")]
    assert "broad" in note and f"binning.{next(iter(kw))}=1" in note


@pytest.mark.parametrize("binner", [PeakValleyBinner(PeakValleyParams(extract_pixel_size=2.0)),
                                    HacBinner(HacParams(extract_pixel_size=2.0, threshold_px=5.0))])
def test_bins_with_the_same_box_at_the_extraction_pixel_size_are_merged(binner):
    # 58-62 px and 78-82 px need 96 and 128 px boxes at 1 A/px, but both come
    # out in a 64 px box at 2 A/px (cut 128, rescale to 64): two identical
    # extraction jobs, which merge_same_box is there to avoid
    rng = np.random.default_rng(4)
    d = np.r_[rng.uniform(58, 62, 300), rng.uniform(78, 82, 300)]
    apart = type(binner)(dataclasses.replace(binner.params, extract_pixel_size=None)).assign(picks_of(d), {}, ctx()).plan
    assert [b.box_px for b in apart.bins] == [96, 128]
    plan = binner.assign(picks_of(d), {}, ctx()).plan
    assert plan.n_bins == 1
    (b,) = plan.bins
    assert (b.box_px, b.box_px_extract, b.extract_size_px, b.count) == (128, 64, 128, 600)


def test_same_box_note_compares_the_boxes_at_the_extraction_pixel_size():
    rng = np.random.default_rng(4)
    d = np.r_[rng.uniform(58, 62, 300), rng.uniform(78, 82, 300)]
    plan = QuantileBinner(QuantileParams(n_bins=2, extract_pixel_size=2.0)).assign(picks_of(d), {}, ctx()).plan
    assert [b.box_px for b in plan.bins] == [96, 128]
    assert any("bins 1 and 2 (64 px at 2 Å/px) get the same box" in n for n in plan.notes)


def test_min_waste_split_counts_the_pixels_at_the_extraction_pixel_size():
    # the broad mode's split was chosen for the boxes at 1 A/px, so at 3 A/px
    # it extracted 15.1 M pixels where another split needs 12.4 M (boxes below
    # 544 px: the same with or without multiple32 skipping 32 x 17 and the like)
    d = np.random.default_rng(0).normal(200, 33, 900)
    params = PeakValleyParams(extract_pixel_size=3.0, merge_same_box=False)
    plan = PeakValleyBinner(params).assign(picks_of(d), {}, ctx(1.0)).plan
    full_res = PeakValleyBinner(dataclasses.replace(params, extract_pixel_size=None)).assign(picks_of(d), {}, ctx(1.0)).plan
    assert plan.n_bins == full_res.n_bins == 3

    def pixels_at_3A(p):
        return sum(b.count * round_up_box(params.pad * b.d_max_px / 3.0, rounding=params.rounding) ** 2 for b in p.bins)

    assert pixels_at_3A(plan) == sum(b.count * b.box_px_extract**2 for b in plan.bins)
    assert pixels_at_3A(plan) < 0.95 * pixels_at_3A(full_res)


# ---------------------------------------------------------------------------
# notes that say what the user's limits did
# ---------------------------------------------------------------------------
def test_max_bins_1_on_two_populations_says_the_cap_put_them_in_one_bin():
    # said 'one mode, broad (p95/p5 = 1.89 > 1.3): one bin (binning.max_bins=1)' of two clear modes
    plan = PeakValleyBinner(PeakValleyParams(max_bins=1)).assign(picks_of(bimodal()), {}, ctx()).plan
    assert plan.n_bins == 1
    assert not any("one mode" in n for n in plan.notes), plan.notes
    (note,) = [n for n in plan.notes if "populations" in n]
    assert note.startswith("2 size populations (modes at ")
    assert f"binning.max_bins=1 puts them in one bin with a {plan.bins[0].box_px} px box" in note
    assert "binning.max_bins=2 gives each its own box" in note
    assert plan.details["clear_modes_px"] and len(plan.details["clear_modes_px"]) == 2


def test_max_bins_below_the_number_of_modes_says_which_modes_share_a_bin():
    rng = np.random.default_rng(4)
    d = np.r_[rng.normal(170, 10, 300), rng.normal(250, 14, 500), rng.normal(380, 20, 200)]
    plan = PeakValleyBinner(PeakValleyParams(max_bins=2)).assign(picks_of(d), {}, ctx()).plan
    m = plan.details["clear_modes_px"]
    (note,) = [n for n in plan.notes if "modes at" in n]
    assert note.startswith("3 modes at ") and "binning.max_bins=2" in note
    assert f"the modes at {m[0]:.0f} and {m[1]:.0f} px share a bin" in note and "binning.max_bins=3 gives each mode" in note
    full = PeakValleyBinner(PeakValleyParams()).assign(picks_of(d), {}, ctx()).plan
    assert "clear_modes_px" not in full.details
    assert any(n.startswith("3 modes at ") and "bin edges at the valleys" in n for n in full.notes)
    two = PeakValleyBinner(PeakValleyParams()).assign(picks_of(bimodal()), {}, ctx()).plan
    assert any("; bin edge at the valley " in n for n in two.notes), two.notes


def test_max_bins_notes_do_not_promise_bins_that_the_same_box_merges_again():
    # At 2 A/px the 60 and 80 px populations come out in the same 64 px box: with
    # max_bins=1 the note said 'binning.max_bins=2 gives each its own box' (and with
    # 3 modes and max_bins=2, 'binning.max_bins=3 gives each mode its own bin'),
    # where that gives the very same bins (merge_same_box merges them back).
    rng = np.random.default_rng(4)
    two = np.r_[rng.uniform(58, 62, 300), rng.uniform(78, 82, 300)]
    params = PeakValleyParams(max_bins=1, extract_pixel_size=2.0)
    one = PeakValleyBinner(params).assign(picks_of(two), {}, ctx()).plan
    (note,) = [n for n in one.notes if "populations" in n]
    assert "gives each its own box" not in note, note
    assert "in one bin: they all come out in a 64 px box at 2 Å/px, whatever binning.max_bins" in note, note
    uncapped = PeakValleyBinner(dataclasses.replace(params, max_bins=2)).assign(picks_of(two), {}, ctx()).plan
    assert uncapped.n_bins == 1  # what the note says
    three = np.r_[two, rng.uniform(158, 162, 300)]
    capped = PeakValleyBinner(dataclasses.replace(params, max_bins=2)).assign(picks_of(three), {}, ctx()).plan
    (note,) = [n for n in capped.notes if "modes at" in n]
    assert "gives each mode its own bin" not in note, note
    assert "binning.max_bins=3 gives 2 boxes (modes with the same box share a bin)" in note, note
    assert PeakValleyBinner(dataclasses.replace(params, max_bins=3)).assign(picks_of(three), {}, ctx()).plan.n_bins == 2
    # without the extraction pixel size the boxes differ: as before
    apart = PeakValleyBinner(dataclasses.replace(params, extract_pixel_size=None)).assign(picks_of(two), {}, ctx()).plan
    assert any("binning.max_bins=2 gives each its own box" in n for n in apart.notes), apart.notes


@pytest.mark.parametrize("merge", [True, False])
def test_a_stray_in_the_same_box_at_the_extraction_pixel_size_is_no_stray(merge):
    # At 8 A/px the 175 px picks and the 260 px one come out in the same 64 px box: the
    # stray rule (comparing the boxes at 1 A/px) gave the 260 px pick a bin of its own
    # "so the others get a 288 px box", and then merge_same_box merged it back (or
    # the same-box note said the two bins gain nothing): two notes that contradict each other.
    rng = np.random.default_rng(0)
    d = np.r_[rng.normal(150, 8, 500), 260.0]
    params = PeakValleyParams(extract_pixel_size=8.0, merge_same_box=merge)
    plan = PeakValleyBinner(params).assign(picks_of(d), {}, ctx()).plan
    assert plan.n_bins == 1 and "strays" not in plan.details
    assert not any("stray" in n or "same box" in n for n in plan.notes), plan.notes
    # at 4 A/px the boxes differ (96 and 128 px): a stray, and the note gives the boxes it comes out in
    at4 = PeakValleyBinner(dataclasses.replace(params, extract_pixel_size=4.0)).assign(picks_of(d), {}, ctx()).plan
    assert [b.count for b in at4.bins] == [500, 1] and [b.box_px_extract for b in at4.bins] == [96, 128]
    (note,) = [n for n in at4.notes if n.startswith("stray")]
    assert "so the others get a 96 px box at 4 Å/px instead of 128 px" in note
    assert not any("same box" in n for n in at4.notes), at4.notes


def test_cluster_bins_merged_by_max_bins_or_the_same_box_are_said():
    d = bimodal()
    one = HacBinner(HacParams(max_bins=1)).assign(picks_of(d), {}, ctx()).plan
    two = HacBinner(HacParams()).assign(picks_of(d), {}, ctx()).plan
    assert two.n_bins == 2 and one.n_bins == 1
    (note,) = [n for n in one.notes if "clusters accepted" in n]
    assert note.endswith(", in 1 bin: binning.max_bins=1 merged 2 into one (binning.max_bins=2 keeps them apart)"), note
    assert [n for n in two.notes if "clusters accepted" in n] == ["2 of 2 clusters accepted (sigma_crit=2)"]
    # 58-62 and 78-82 px: one 64 px box at 2 A/px
    rng = np.random.default_rng(4)
    d = np.r_[rng.uniform(58, 62, 300), rng.uniform(78, 82, 300)]
    plan = HacBinner(HacParams(extract_pixel_size=2.0, threshold_px=5.0)).assign(picks_of(d), {}, ctx()).plan
    assert plan.n_bins == 1
    assert any(n.endswith(", in 1 bin: 1 joined a neighbour with the same box at 2 Å/px") for n in plan.notes), plan.notes


def test_the_broad_mode_note_gives_the_mode_range_as_the_table_does():
    # the note rounded the record's 119.5 (119.4981 rounded to 2 decimals) to 120 px, the table 119.4981 to 119
    rng = np.random.default_rng(6)
    v = 120 + rng.gamma(1.3, 30, 200)
    v[np.argmin(v)] = 119.4981
    d = np.r_[rng.normal(60, 3, 300), v]
    plan = PeakValleyBinner(PeakValleyParams()).assign(picks_of(d), {}, ctx()).plan
    (note,) = [n for n in plan.notes if "is broad" in n]
    assert plan.bins[1].d_min_px == 119.4981
    assert note.startswith(f"the mode of 119-{v.max():.0f} px is broad"), note


@pytest.mark.parametrize("binner, d, n_bins", [
    # 55-66 px (a 32 px box at 4 A/px) and 120-130 px (64 px) are accepted; the
    # sparse 87-99 px cluster between them fails the population test, and its
    # picks below the 93 px edge joined the first bin after the merges were
    # decided, raising its box to 64 px: two bins, one box
    (HacBinner(HacParams(threshold_px=15.0, max_bins=2, extract_pixel_size=4.0)),
     np.r_[np.linspace(55, 66, 172), np.linspace(87, 99, 74), np.linspace(120, 130, 203)], 1),
    # the same through k-means: the sparse interior cluster of 63-69 px joined
    # the bin of 56-63 px (32 px box at 3 A/px) and gave it the 64 px box of the next
    (KMeansBinner(KMeansParams(max_bins=2, extract_pixel_size=3.0)),
     (lambda rng: np.r_[rng.normal(59, 3, 260), rng.normal(112, 8, 250)])(np.random.default_rng(5)), 2),
])
def test_cluster_bins_with_the_same_box_after_the_rejected_clusters_join_are_merged(binner, d, n_bins):
    plan = binner.assign(picks_of(d), {}, ctx()).plan
    boxes = [b.box_px_extract for b in plan.bins]
    assert all(a != b for a, b in zip(boxes, boxes[1:])), (boxes, plan.notes)
    assert plan.n_bins == n_bins and not any("get the same box" in n for n in plan.notes), plan.notes
    (note,) = [n for n in plan.notes if "clusters accepted" in n]
    assert f", in {n_bins} bin" in note and "joined a neighbour with the same box at " in note, note


def test_cluster_bins_kept_apart_without_merge_same_box_are_said_to_share_a_box():
    d = np.r_[np.linspace(55, 66, 172), np.linspace(87, 99, 74), np.linspace(120, 130, 203)]
    p = HacParams(threshold_px=15.0, max_bins=2, extract_pixel_size=4.0, merge_same_box=False)
    plan = HacBinner(p).assign(picks_of(d), {}, ctx()).plan
    assert [b.box_px_extract for b in plan.bins] == [64, 64]
    assert any("bins 1 and 2 (64 px at 4 Å/px) get the same box" in n for n in plan.notes), plan.notes
