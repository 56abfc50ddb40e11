"""Box and mask sizes, the plan files, and ``lipoframe plan`` on run folders."""

from __future__ import annotations

import contextlib
import dataclasses
import html
import json
import logging
import math
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

import lipoframe
from lipoframe import schema
from lipoframe.builtin.binning import (
    BoxParams,
    HacBinner,
    HacParams,
    PeakValleyBinner,
    PeakValleyParams,
    make_bin,
)
from lipoframe.plan import COSINE_EDGE_WIDTH_PX, ExtractionPlan, SizeBin, format_range, is_fft_friendly, round_up_box
from lipoframe.planfiles import plan_markdown, size_histogram_table, write_plan_files
from lipoframe.plancmd import PIXEL_SIZE_PLAN_RULE
from lipoframe.records import MicrographMeta, PickContext

from conftest import TINY_ARGS, TINY_RUN_ARGS, as_watch_update_with_mic_1_not_finished  # noqa: E402

# ---------------------------------------------------------------------------
# Box rounding
# ---------------------------------------------------------------------------
def _prime_factors(n):
    return {p for p in range(2, n + 1) if n % p == 0 and all(p % q for q in range(2, p))}


@settings(max_examples=300, deadline=None)
@given(st.floats(min_value=0.5, max_value=4000, allow_nan=False))
def test_multiple32_rounds_up_to_the_next_multiple_without_a_large_prime_factor(size):
    box = round_up_box(size)
    assert box % 32 == 0 and box >= size and max(_prime_factors(box)) <= 13
    # no smaller multiple of 32 at least as large as size qualifies
    assert not any(max(_prime_factors(m)) <= 13 for m in range(32 * math.ceil(size / 32), box, 32))


def test_multiple32_skips_multiples_of_32_with_a_prime_factor_above_13():
    # 544 = 32 x 17, 608 = 32 x 19, 736 = 32 x 23, 928 = 32 x 29, 992 = 32 x 31 are poor FFT sizes;
    # 352 = 32 x 11 and 416 = 32 x 13 stay (both in EMAN2's measured good box sizes)
    assert [round_up_box(s) for s in (530, 600, 720, 900, 980, 1500)] == [576, 640, 768, 960, 1024, 1536]
    assert round_up_box(340) == 352 and round_up_box(400) == 416 and round_up_box(544.5) == 576


@settings(max_examples=300, deadline=None)
@given(st.floats(min_value=1.5, max_value=4000, allow_nan=False))
def test_fft_rounds_up_to_the_next_even_2_3_5_size(size):
    box = round_up_box(size, rounding="fft")
    assert box >= size and box % 2 == 0 and is_fft_friendly(box)
    assert not any(is_fft_friendly(n) for n in range(math.ceil(size), box))


def test_rounding_never_goes_down_on_exact_sizes():
    assert round_up_box(320) == 320 and round_up_box(320.01) == 352
    assert round_up_box(300, rounding="fft") == 300 and round_up_box(301, rounding="fft") == 320
    assert round_up_box(301, rounding="even") == 302


# ---------------------------------------------------------------------------
# Bins: box from pad * largest diameter, SIMPLE's mask rule, extraction pixel size
# ---------------------------------------------------------------------------
def test_box_is_pad_times_largest_diameter_rounded_up():
    b = make_bin(0, 200.0, 300.0, 10, BoxParams(pad=1.5), pixel_size=1.0)
    assert b.box_px == 480  # 450 -> next multiple of 32
    b = make_bin(0, 200.0, 300.0, 10, BoxParams(pad=1.5, rounding="fft"), pixel_size=1.0)
    assert b.box_px == 450  # 2 * 3^2 * 5^2
    b = make_bin(0, 200.0, 300.0, 10, BoxParams(pad=1.6), pixel_size=1.0)
    assert b.box_px == 480  # exactly 480


def test_mask_is_the_smaller_of_box_minus_edge_and_1_2_d_max_in_angstrom():
    # 1.2 * d_max wins: box 480 px at 2 Å/px leaves (480 - 6) * 2 = 948 Å; 1.2 * 300 px * 2 Å = 720 Å
    b = make_bin(0, 200.0, 300.0, 1, BoxParams(), pixel_size=2.0)
    assert b.mask_diameter_A == pytest.approx(720.0)
    # the box wins for tiny particles: d_max 20 px, pad 1.4, even box 28 -> (28 - 6) * 2 = 44 Å < 1.2 * 40 Å
    b = make_bin(0, 10.0, 20.0, 1, BoxParams(pad=1.4, rounding="even"), pixel_size=2.0)
    assert b.box_px == 28
    assert b.mask_diameter_A == pytest.approx((28 - COSINE_EDGE_WIDTH_PX) * 2.0)
    # no pixel size: no mask in Å
    assert make_bin(0, 200.0, 300.0, 1, BoxParams(), pixel_size=None).mask_diameter_A is None


def test_box_at_a_downscaled_extraction_pixel_size():
    b = make_bin(0, 200.0, 300.0, 1, BoxParams(extract_pixel_size=2.0), pixel_size=1.0)
    assert b.box_px == 480
    assert b.box_px_extract == 256  # 1.5 * 300 Å / 2 Å/px = 225 -> 256
    b = make_bin(0, 200.0, 300.0, 1, BoxParams(extract_pixel_size=4.0), pixel_size=1.0)
    assert b.box_px_extract == 128  # 112.5 -> 128
    # the mask must also fit the downscaled box: (128 - 6) * 4 = 488 Å > 360 Å, so 1.2 * d_max still wins
    assert b.mask_diameter_A == pytest.approx(360.0)
    b = make_bin(0, 20.0, 30.0, 1, BoxParams(pad=1.4, rounding="even", extract_pixel_size=3.0), pixel_size=1.0)
    assert b.box_px_extract == 14 and b.mask_diameter_A == pytest.approx((14 - COSINE_EDGE_WIDTH_PX) * 3.0)


def test_the_examples_of_make_bin_run():
    # make_bin is how a binning plugin makes its bins (docs/plugins.md); its examples are what the docs promise.
    import doctest

    tests = doctest.DocTestFinder().find(make_bin, "make_bin", globs={})
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for t in tests:
        runner.run(t)
    assert runner.summarize(verbose=False) == doctest.TestResults(failed=0, attempted=6)


@pytest.mark.parametrize(("lo", "hi"), [(220.0, 180.0), (0.0, 180.0), (180.0, float("nan")), (180.0, float("inf"))])
def test_make_bin_refuses_a_range_that_is_no_diameters(lo, hi):
    # Before, lo and hi swapped gave a bin whose range holds no diameter, and a NaN hi a message about a "size".
    with pytest.raises(ValueError, match=re.escape(f"make_bin needs diameters 0 < lo <= hi (px), got lo={lo}, hi={hi}")):
        make_bin(0, lo, hi, 1, BoxParams(), pixel_size=1.0)


def test_the_binning_policy_of_the_plugin_docs_runs(make_plugin, tiny_mrcs, tmp_path, run_cli):
    # docs/plugins.md, "A binning policy": the plugin as written there, through the runner's checks.
    docs = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"
    section = docs.read_text().split("### A binning policy", 1)[1].split("\n## ", 1)[0]
    source = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    make_plugin("lipoframe-edges", source)
    out = tmp_path / "out"
    code, text, err = run_cli("run", f"input={tiny_mrcs[0]}", f"output={out}", *TINY_RUN_ARGS, "binning=edges",
                              "binning.edges_px=[0,1000]", "writer=[csv]")
    assert code == 0, err
    plan = ExtractionPlan.from_dict(json.loads((out / "extraction_plan.json").read_text()))
    picks = pd.read_csv(out / "picks.csv")
    assert plan.policy == "edges" and plan.n_bins == 1 and plan.bins[0].count == int(picks["accepted"].sum()) > 0
    d = picks["diameter_px"]  # written with 2 decimals
    assert (plan.bins[0].d_min_px, plan.bins[0].d_max_px) == (pytest.approx(d.min(), abs=0.005), pytest.approx(d.max(), abs=0.005))
    assert plan.bins[0].box_px == make_bin(0, d.min(), d.max(), len(d), BoxParams(), plan.pixel_size).box_px
    # An edge below every pick: all of them outside every range, flagged, none dropped.
    cut = float(picks["diameter_px"].min()) / 2
    code, text, err = run_cli("plan", str(out), f"binning.edges_px=[0,{cut}]", "export_rejected=true")
    assert code == 0 and "policy edges: 0 picks in 0 bins" in text, err
    flagged = pd.read_csv(out / "picks.csv")
    assert (flagged["reject_reason"] == "binning_outlier").sum() == len(picks) and (flagged["size_bin"] == -1).all()
    code, _, err = run_cli("plan", str(out), "binning.edges_px=[0,100,90]")
    assert code == 2 and "binning.edges_px must be at least two ascending diameters, got [0.0, 100.0, 90.0]" in err


@pytest.mark.parametrize(
    ("pixel_size", "extract", "d_max", "box_extract", "cut"),
    [
        (1.0, 2.0, 300.0, 256, 512),   # 225 -> 256 at 2 Å/px; cut 512 (not the 480 box) to get 2 Å/px
        (2.0, 3.0, 100.0, 128, 192),   # 100 -> 128 at 3 Å/px; cut 192, not the 160 box: 160 -> 128 gives 2.5 Å/px
        (1.06, 2.0, 300.0, 256, 484),  # 238.5 -> 256; 256 * 2 / 1.06 = 483.0 -> 484 (even): 2.004 Å/px
        (1.0, 0.5, 100.0, 320, 160),   # upsampling: cut 160, rescale to 320
    ],
)
def test_the_rescaled_extraction_gives_the_asked_pixel_size(pixel_size, extract, d_max, box_extract, cut):
    b = make_bin(0, d_max / 2, d_max, 1, BoxParams(extract_pixel_size=extract), pixel_size=pixel_size)
    assert (b.box_px_extract, b.extract_size_px) == (box_extract, cut)
    got = b.rescaled_pixel_size(pixel_size)
    assert got == pytest.approx(extract, rel=1.0 / cut)  # off only by rounding the cut box to even
    # The cut box holds the padded particle, and the mask fits the rescaled box.
    assert cut >= 1.5 * d_max - 1
    assert b.mask_diameter_A <= (box_extract - COSINE_EDGE_WIDTH_PX) * got + 1e-9


# ---------------------------------------------------------------------------
# Plan object
# ---------------------------------------------------------------------------
def test_plan_round_trips_through_json_with_details():
    plan = ExtractionPlan(
        policy="hac", pixel_size=1.2,
        bins=(SizeBin(0, 100.0, 150.0, 5, 256, 180.0, 128), SizeBin(1, 170.0, 260.0, 9, 416, 374.4, 192)),
        accepted_range_px=(100.0, 260.0), extract_pixel_size=2.4, notes=("a note",),
        details={"clusters": [{"cluster": 1, "mean": np.float64(120.5)}], "n": np.int64(14), "arr": np.arange(3)},
    )
    back = ExtractionPlan.from_dict(json.loads(plan.to_json()))
    assert back.bins == plan.bins and back.accepted_range_px == plan.accepted_range_px
    assert back.notes == plan.notes and back.details["clusters"][0]["mean"] == 120.5 and back.details["arr"] == [0, 1, 2]
    assert back.assign([99, 100, 150, 160, 170, 260, 261]).tolist() == [-1, 0, 0, -1, 1, 1, -1]
    assert "box@2.4" in plan.format_table() and "170-260" in plan.format_table()


def test_a_bin_of_one_size_reads_as_one_number():
    assert format_range(79.2, 96.6) == "79-97" and format_range(107.6, 108.4) == "108"
    assert format_range(7.9, 8.04, sep="–", spec=".1f") == "7.9–8.0" and format_range(8.0, 8.04, spec=".1f") == "8.0"
    plan = ExtractionPlan(policy="peak_valley", pixel_size=1.0,
                          bins=(SizeBin(0, 79.2, 96.6, 70, 160, 120.0), SizeBin(1, 108.0, 108.0, 1, 192, 130.0)))
    rows = plan.format_table().splitlines()
    assert "79-97" in rows[1] and "108-108" not in rows[2] and rows[2].split()[1:3] == ["108", "108"]
    assert rows[1].index("-") == rows[2].index("108") + 3  # the single size sits where a range's dash ends
    md = plan_markdown(plan, {})
    assert "| 2 | 108 | 108 |" in md and "108–108" not in md


def test_a_plan_without_pixel_size_says_how_to_give_one_without_picking_again():
    # It said 'give pixel_size=...', which sent a user to a new run, and a run with another pixel_size picks
    # every micrograph again; a new plan of the folder sets it in seconds.
    plan = ExtractionPlan(policy="single", pixel_size=None, bins=(SizeBin(0, 79.2, 96.6, 70, 160, None),))
    md = plan_markdown(plan, {})
    assert "- Pixel size: unknown (no Å values; `lipoframe plan` of this folder with `pixel_size=<Å/px>` sets them" in md
    assert "- Pixel size: 1.5 Å/px" in plan_markdown(dataclasses.replace(plan, pixel_size=1.5), {})


# ---------------------------------------------------------------------------
# Plan files
# ---------------------------------------------------------------------------
def dataset(seed=0):
    """A binned trimodal dataset with a size-outlier population, over three micrographs."""
    rng = np.random.default_rng(seed)
    d = np.r_[rng.normal(170, 10, 300), rng.normal(250, 14, 500), rng.normal(380, 20, 200)]
    n = d.size
    picks = pd.DataFrame({
        schema.MICROGRAPH: [f"mic_{i % 3}" for i in range(n)], schema.X: rng.uniform(0, 4000, n),
        schema.Y: rng.uniform(0, 4000, n), schema.DIAMETER: d, schema.SCORE: rng.uniform(1, 5, n),
        schema.LEVEL: np.zeros(n, np.int64), schema.SIGMA: d / 2.8, schema.ACCEPTED: True, schema.REASON: "",
    })
    metas = {f"mic_{i}": MicrographMeta(f"mic_{i}", f"/data/mic_{i}.mrc", (4000, 4000), 1.1) for i in range(3)}
    return picks, metas


CTX = PickContext(dmin_px=100, dmax_px=600, polarity="dark", pixel_size=1.1, seed=0)


def test_plan_files_are_written_and_consistent(tmp_path):
    picks, metas = dataset()
    res = PeakValleyBinner(PeakValleyParams(extract_pixel_size=2.2)).assign(picks, metas, CTX)
    plan = res.plan
    assert plan.n_bins == 3
    # a writer's per-bin files (and one elsewhere, which is not a bin file)
    written = []
    for b in plan.bins:
        for f in (f"bins/{b.label}/autopick.star", f"bins/{b.label}/coords/mic_0_autopick.star"):
            p = tmp_path / f
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text("")
            written.append(p)
    written.append(tmp_path / "picks.csv")
    files = write_plan_files(plan, res.picks, tmp_path, metas=metas, written=written)
    assert [f.name for f in files] == ["sizes.csv", "size_histogram.png", "extraction_plan.json", "extraction_plan.md"]

    sizes = pd.read_csv(tmp_path / "sizes.csv")
    assert sizes["count"].sum() == len(picks)
    assert np.diff(sizes["d_lo_px"]) == pytest.approx(plan.details["histogram"]["bin_width_px"])
    assert sizes["d_lo_A"].to_numpy() == pytest.approx(sizes["d_lo_px"].to_numpy() * 1.1)
    for b in plan.bins:
        assert sizes[b.label].sum() == b.count
    assert (sizes[[b.label for b in plan.bins]].sum(axis=1) == sizes["count"]).all()

    import matplotlib.image as mpimg

    img = mpimg.imread(tmp_path / "size_histogram.png")
    assert img.ndim == 3 and img.shape[0] > 300 and img.shape[1] > 500

    doc = json.loads((tmp_path / "extraction_plan.json").read_text())
    assert ExtractionPlan.from_dict(doc).bins == plan.bins
    assert doc["coordinate_files"]["bin2"] == ["bins/bin2/autopick.star", "bins/bin2/coords/mic_0_autopick.star"]

    md = (tmp_path / "extraction_plan.md").read_text()
    for b in plan.bins:
        assert f"| {b.index + 1} | {b.d_min_px:.0f}–{b.d_max_px:.0f} |" in md
        assert f"**{b.box_px} px**" in md and f"**{b.box_px_extract} px** at 2.2 Å/px" in md
        assert f"`--extract_size {b.extract_size_px} --scale {b.box_px_extract}`" in md
        assert f"**{b.mask_diameter_A:.0f} Å**" in md
        assert f"`bins/{b.label}/autopick.star`" in md
    assert "none written per bin" not in md


def test_markdown_includes_the_relion_command_when_the_writer_provides_it(tmp_path, monkeypatch):
    import types

    picks, metas = dataset()
    plan = PeakValleyBinner(PeakValleyParams()).assign(picks, metas, CTX).plan
    files = {b.index: [f"bins/{b.label}/autopick.star"] for b in plan.bins}
    calls = []

    def fake(size_bin, coord_list_path, *, pixel_size, invert_contrast):
        calls.append((size_bin.label, str(coord_list_path), pixel_size))
        assert invert_contrast  # CTX: dark particles
        return f"relion_preprocess --coord_list {coord_list_path} --extract_size {size_bin.box_px}"

    monkeypatch.setitem(sys.modules, "lipoframe.io.relion", types.SimpleNamespace(extract_command=fake))
    md = plan_markdown(plan, files)
    assert calls == [(b.label, f"bins/{b.label}/autopick.star", 1.1) for b in plan.bins]
    for b in plan.bins:
        assert f"--coord_list bins/{b.label}/autopick.star --extract_size {b.box_px}" in md
    # absent writer: no command, no error
    monkeypatch.setitem(sys.modules, "lipoframe.io.relion", None)
    md = plan_markdown(plan, files)
    assert "relion_preprocess" not in md and "bins/bin1/autopick.star" in md


@pytest.mark.parametrize(("polarity", "inverted"), [("dark", True), ("bright", False)])
def test_extraction_inverts_the_contrast_of_dark_particles_only(polarity, inverted):
    """RELION extracts white particles: dark ones need --invert_contrast, bright ones must not get it."""
    import dataclasses

    picks, metas = dataset()
    plan = PeakValleyBinner(PeakValleyParams()).assign(picks, metas, dataclasses.replace(CTX, polarity=polarity)).plan
    assert plan.polarity == polarity
    assert ExtractionPlan.from_dict(json.loads(plan.to_json())).polarity == polarity
    md = plan_markdown(plan, {b.index: [f"bins/{b.label}/autopick.star"] for b in plan.bins})
    commands = [line for line in md.splitlines() if line.strip().startswith("relion_preprocess")]
    assert len(commands) == plan.n_bins
    assert all(("--invert_contrast" in c) == inverted for c in commands)
    assert ("extract with contrast inverted" in md) == inverted
    # A plan written before the field existed was made for dark particles.
    old = json.loads(plan.to_json())
    del old["polarity"]
    assert ExtractionPlan.from_dict(old).polarity == "dark"


def test_plan_files_for_an_empty_dataset(tmp_path):
    picks, metas = dataset()
    res = HacBinner(HacParams()).assign(picks.iloc[0:0], metas, CTX)
    files = write_plan_files(res.plan, res.picks, tmp_path, metas=metas, written=[])
    assert all(f.is_file() for f in files)
    assert "No size bins" in (tmp_path / "extraction_plan.md").read_text()
    assert "no accepted picks" in (tmp_path / "extraction_plan.md").read_text()
    assert len(pd.read_csv(tmp_path / "sizes.csv")) == 0


def test_size_outliers_are_counted_apart(tmp_path):
    picks, metas = dataset()
    extra = picks.iloc[:30].copy()
    extra[schema.DIAMETER] = np.linspace(900, 950, 30)
    res = HacBinner(HacParams()).assign(pd.concat([picks, extra], ignore_index=True), metas, CTX)
    t = size_histogram_table(res.plan, res.picks)
    assert t["outliers"].sum() == res.plan.details["n_outliers"] >= 30
    assert t["count"].sum() == res.plan.n_accepted


@pytest.mark.parametrize("stray", [450.0, 110.0])
def test_the_histogram_legend_does_not_cover_a_bin_label(stray):
    # a label at each end of the axis (a bin of one stray at the right): the legend goes between them
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from lipoframe.planfiles import plot_size_histogram

    rng = np.random.default_rng(0)
    d = np.r_[rng.normal(150, 8, 300), rng.normal(250, 8, 100), stray]
    picks = pd.DataFrame({schema.MICROGRAPH: "m", schema.X: 0.0, schema.Y: 0.0, schema.DIAMETER: d,
                          schema.ACCEPTED: True, schema.REASON: ""})
    res = PeakValleyBinner(PeakValleyParams()).assign(picks, {}, CTX)
    fig = plot_size_histogram(res.plan, res.picks)
    FigureCanvasAgg(fig).draw()
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    legend = ax.get_legend().get_window_extent(renderer)
    labels = [t.get_window_extent(renderer) for t in ax.texts if t.get_text().startswith("bin ")]
    assert len(labels) == res.plan.n_bins >= 2
    assert not any(legend.overlaps(b) for b in labels)
    assert ax.get_window_extent(renderer).contains(legend.x0, legend.y0) and ax.get_window_extent(renderer).contains(legend.x1, legend.y1)


def test_the_histogram_note_of_an_unknown_pixel_size_covers_nothing():
    # without a pixel size the note 'pixel size unknown: no nm axis' sat in the axes' top right corner, where the
    # legend goes when the widest gap is right of the last bin label: on the real liposome images (units=px
    # dmin=20 dmax=400, no pixel size in the JPEGs) it was printed over the legend's 'smoothed'
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from lipoframe.planfiles import plot_size_histogram

    rng = np.random.default_rng(0)
    d = np.r_[rng.gamma(4, 6, 600) + 19, rng.normal(70, 4, 12)]
    picks = pd.DataFrame({schema.MICROGRAPH: "m", schema.X: 0.0, schema.Y: 0.0, schema.DIAMETER: d,
                          schema.ACCEPTED: True, schema.REASON: ""})
    ctx = PickContext(dmin_px=15, dmax_px=400, polarity="dark", pixel_size=None, seed=0)
    res = PeakValleyBinner(PeakValleyParams()).assign(picks, {}, ctx)
    assert res.plan.pixel_size is None
    fig = plot_size_histogram(res.plan, res.picks)
    FigureCanvasAgg(fig).draw()
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    assert ax.get_legend()._loc == 1  # upper right: the corner the note was drawn in
    (note,) = [t for t in ax.texts if "pixel size unknown" in t.get_text()]
    box = note.get_window_extent(renderer)
    others = [ax.get_legend().get_window_extent(renderer), ax.title.get_window_extent(renderer)]
    others += [t.get_window_extent(renderer) for t in ax.texts if t.get_text().startswith("bin ")]
    assert not any(box.overlaps(o) for o in others)
    assert fig.bbox.contains(box.x0, box.y0) and fig.bbox.contains(box.x1, box.y1)


def test_the_histogram_colours_every_bin_as_the_overlays_do():
    # past the seven Okabe-Ito colours the overlays, crops and scatter plot go on with tab20
    # (plots.bin_color); the histogram started the palette again, so bin 8 was bin 1's orange
    from matplotlib.colors import to_hex

    from lipoframe.builtin.binning import QuantileBinner, QuantileParams
    from lipoframe.planfiles import plot_size_histogram
    from lipoframe.plots import BIN_COLORS, bin_color

    d = np.linspace(100, 500, 450)
    picks = pd.DataFrame({schema.MICROGRAPH: "m", schema.X: 0.0, schema.Y: 0.0, schema.DIAMETER: d,
                          schema.ACCEPTED: True, schema.REASON: ""})
    res = QuantileBinner(QuantileParams(n_bins=9)).assign(picks, {}, CTX)
    assert res.plan.n_bins == 9 > len(BIN_COLORS)
    ax = plot_size_histogram(res.plan, res.picks).axes[0]
    labels = {t.get_text().split("\n")[0]: to_hex(t.get_bbox_patch().get_edgecolor()) for t in ax.texts
              if t.get_text().startswith("bin ")}
    assert labels == {f"bin {b.index + 1}": to_hex(bin_color(b.index)) for b in res.plan.bins}
    bars = {to_hex(p.get_facecolor(), keep_alpha=False) for c in ax.containers for p in c}
    assert bars == {to_hex(bin_color(b.index)) for b in res.plan.bins}


def _contrast_on_white(color) -> float:
    """WCAG contrast ratio of ``color`` on white (1 = invisible, 4.5 = readable small text)."""
    from matplotlib.colors import to_rgb

    c = np.array(to_rgb(color))
    lum = float(np.dot([0.2126, 0.7152, 0.0722], np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)))
    return 1.05 / (lum + 0.05)


def test_the_histogram_bin_labels_are_readable_on_white():
    # the labels were written in the bin's own colour: bin 3's Okabe-Ito yellow on the white axes
    # (contrast 1.3) could not be read; the colour now frames the label
    from matplotlib.colors import to_hex

    from lipoframe.builtin.binning import QuantileBinner, QuantileParams
    from lipoframe.planfiles import plot_size_histogram
    from lipoframe.plots import bin_color

    d = np.linspace(100, 500, 300)
    picks = pd.DataFrame({schema.MICROGRAPH: "m", schema.X: 0.0, schema.Y: 0.0, schema.DIAMETER: d,
                          schema.ACCEPTED: True, schema.REASON: ""})
    res = QuantileBinner(QuantileParams(n_bins=3)).assign(picks, {}, CTX)
    ax = plot_size_histogram(res.plan, res.picks).axes[0]
    labels = [t for t in ax.texts if t.get_text().startswith("bin ")]
    assert len(labels) == 3
    for b, t in zip(res.plan.bins, labels):
        assert _contrast_on_white(t.get_color()) >= 4.5, t.get_text()
        assert to_hex(t.get_bbox_patch().get_edgecolor()) == to_hex(bin_color(b.index))


# ---------------------------------------------------------------------------
# lipoframe plan
# ---------------------------------------------------------------------------
def fabricated_run(folder: Path, picks: pd.DataFrame, metas, *, binning: dict | None = None, settings: dict | None = None) -> Path:
    """A run folder as `lipoframe merge` leaves it: saved picks + config.yaml (no .hydra)."""
    from omegaconf import OmegaConf

    from lipoframe.runner import save_work

    for name, meta in metas.items():
        sub = picks[picks[schema.MICROGRAPH] == name].reset_index(drop=True)
        sub = sub.assign(**{schema.DIAMETER_A: sub[schema.DIAMETER] * (meta.pixel_size or np.nan)})
        save_work(folder, meta, sub, "fp", 0.1)
    cfg = {"pixel_size": None, "dmin": 100.0, "dmax": 600.0, "units": "px", "polarity": "dark", "seed": 0,
           "export_rejected": False, "binning": binning or {"pad": 1.5, "rounding": "multiple32", "extract_pixel_size": None},
           "writer": {"csv": {"per_micrograph": True, "float_format": "%.2f"}}, **(settings or {})}
    (folder / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(cfg)))
    return folder


def test_plan_command_recomputes_from_saved_picks(tmp_path, run_cli):
    picks, metas = dataset()
    run = fabricated_run(tmp_path / "run", picks, metas)
    # the saved binning (pad/rounding/extract_pixel_size only) is `single`
    code, out, err = run_cli("plan", run)
    assert code == 0, err
    assert "policy single: 1000 picks in 1 bin" in out
    code, out, err = run_cli("plan", run, "binning=peak_valley", "binning.pad=1.6")
    assert code == 0, err
    # The run folder's log has both plans (before, plan wrote no log).
    log_lines = [ln for ln in (run / "lipoframe.log").read_text().splitlines() if ": plan " in ln]
    assert [ln.split("[INFO] ")[1] for ln in log_lines] == [f"lipoframe {lipoframe.__version__}: plan {run}",
                                                            f"lipoframe {lipoframe.__version__}: plan {run} binning=peak_valley binning.pad=1.6"]
    plan = ExtractionPlan.from_dict(json.loads((run / "extraction_plan.json").read_text()))
    assert plan.policy == "peak_valley" and plan.n_bins == 3
    assert all(b.box_px == round_up_box(1.6 * b.d_max_px) for b in plan.bins)
    for b in plan.bins:
        assert f"{b.d_min_px:.0f}-{b.d_max_px:.0f}" in out and f"{b.box_px}" in out
    for name in ("sizes.csv", "size_histogram.png", "extraction_plan.md", "picks.csv", "run_summary.json"):
        assert (run / name).is_file()
    summary = json.loads((run / "run_summary.json").read_text())
    assert [b["box_px"] for b in summary["bins"]] == [b.box_px for b in plan.bins]
    table = pd.read_csv(run / "picks.csv")
    assert len(table) == 1000 and sorted(table[schema.SIZE_BIN].unique()) == [0, 1, 2]
    code, out, _ = run_cli("plan", run, "binning=kmeans", "--json")
    assert code == 0 and json.loads(out)["policy"] == "kmeans"
    code, out, _ = run_cli("plan", run, "--json", "binning=quantile")  # options before the overrides too
    assert code == 0 and json.loads(out)["policy"] == "quantile"


def test_plan_leaves_no_console_handler_behind(tmp_path, run_cli, monkeypatch):
    # In a process that set up no logging, plan adds a console handler on the sys.stderr of
    # that moment (here pytest's capture, closed after the test); before, it stayed on the root logger.
    picks, metas = dataset()
    run = fabricated_run(tmp_path / "run", picks, metas)
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])
    code, _, err = run_cli("plan", run)
    assert code == 0, err
    assert root.handlers == []


def test_plan_with_another_policy_keeps_the_runs_box_settings(tmp_path, run_cli):
    # pad, rounding and extract_pixel_size are shared by every policy: a run made with
    # them and re-planned with another policy keeps them (its own parameters do not carry over)
    picks, metas = dataset()
    saved = {**dataclasses.asdict(PeakValleyParams()), "pad": 1.6, "rounding": "fft", "extract_pixel_size": 2.2,
             "max_bins": 3}
    run = fabricated_run(tmp_path / "run", picks, metas, binning=saved)
    code, out, err = run_cli("plan", run, "binning=kmeans", "--json")
    assert code == 0, err
    plan = ExtractionPlan.from_dict(json.loads(out))
    assert plan.policy == "kmeans" and plan.extract_pixel_size == 2.2
    assert plan.details["params"]["max_bins"] == 1  # kmeans' own default, not peak_valley's saved 3
    for b in plan.bins:
        assert b.box_px == round_up_box(1.6 * b.d_max_px, rounding="fft")
        assert b.box_px_extract == round_up_box(1.6 * b.d_max_px * 1.1 / 2.2, rounding="fft")
    code, out, err = run_cli("plan", run, "binning=hac", "binning.rounding=even", "--json")
    assert code == 0, err
    plan = ExtractionPlan.from_dict(json.loads(out))  # what is given wins
    assert plan.details["params"]["rounding"] == "even" and plan.details["params"]["pad"] == 1.6


def test_plan_command_refuses_picking_options_and_bad_folders(tmp_path, run_cli):
    picks, metas = dataset()
    run = fabricated_run(tmp_path / "run", picks, metas)
    code, _, err = run_cli("plan", run, "detector.threshold=3")
    assert code == 2 and "detector.threshold=3" in err and "lipoframe run" in err
    code, _, err = run_cli("plan", run, "binning.no_such=1")
    assert code == 2 and "no_such" in err
    # a typo is named as one, not as a picking option
    code, _, err = run_cli("plan", run, "binnin=kmeans")
    assert code == 2 and "binnin: not an option of lipoframe; did you mean binning?" in err
    assert "picking options" not in err
    code, _, err = run_cli("plan", run, "writr.box.per_bin=false")
    assert code == 2 and "did you mean writer.box.per_bin?" in err
    code, _, err = run_cli("plan", run, "zzz=1")
    assert code == 2 and "zzz: not an option of lipoframe" in err and "did you mean" not in err
    # the suggestions of `lipoframe run` (one function): a section's key given at the top level
    code, _, err = run_cli("plan", run, "n_bins=3")
    assert code == 2 and "n_bins: not an option of lipoframe; did you mean binning.n_bins?" in err, err
    code, _, err = run_cli("plan", tmp_path / "nothing")
    assert code == 2 and "no such folder" in err
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli("plan", tmp_path / "empty")
    assert code == 2 and "config.yaml" in err


def test_plan_help_names_every_option_the_plan_takes(tmp_path, run_cli):
    # `lipoframe plan --help` and the refusal of a picking option list the same
    # dataset-level options; export_rejected was missing from the help.
    picks, metas = dataset()
    run = fabricated_run(tmp_path / "run", picks, metas)
    code, _, refusal = run_cli("plan", run, "detector.threshold=3")
    assert code == 2
    code, out, _ = run_cli("plan", "--help")
    assert code == 0
    help_text = " ".join(out.split())
    for key in ("binning=", "binning.<param>=", "writer=", "export_rejected=", "flip_y=", "pixel_size="):
        assert key in refusal and key in help_text, key
    code, _, err = run_cli("plan", run, "export_rejected=true")
    assert code == 0, err


def test_plan_gives_a_run_picked_in_pixels_a_pixel_size(tmp_path, run_cli):
    # A run without a pixel size in the headers, picked in pixels: the plan can
    # give it one (Å values, masks, extraction boxes); pixel_size= was refused.
    picks, metas = dataset()
    metas = {n: dataclasses.replace(m, pixel_size=None) for n, m in metas.items()}
    run = fabricated_run(tmp_path / "run", picks, metas)  # units=px
    code, out, err = run_cli("plan", run, "--json")
    assert code == 0, err
    assert ExtractionPlan.from_dict(json.loads(out)).pixel_size is None
    code, out, err = run_cli("plan", run, "pixel_size=2.0", "binning.extract_pixel_size=4", "--json")
    assert code == 0, err
    plan = ExtractionPlan.from_dict(json.loads(out))
    assert plan.pixel_size == 2.0 and plan.extract_pixel_size == 4
    for b in plan.bins:
        assert b.mask_diameter_A == pytest.approx(min((b.box_px - COSINE_EDGE_WIDTH_PX) * 2.0, 1.2 * b.d_max_px * 2.0,
                                                      (b.box_px_extract - COSINE_EDGE_WIDTH_PX) * 2.0 * b.extract_size_px / b.box_px_extract))
        assert b.box_px_extract == round_up_box(1.5 * b.d_max_px * 2.0 / 4.0)
    table = pd.read_csv(run / "picks.csv")
    assert np.allclose(table[schema.DIAMETER_A], 2.0 * table[schema.DIAMETER], atol=0.03)  # written with %.2f
    assert "pixel_size: 2.0" in (run / "plan_config.yaml").read_text()
    code, out, err = run_cli("plan", run, "pixel_size=2.0")
    assert code == 0 and "pixel size 2 Å/px" in out and "diameter Å" in out
    # like any plan option it holds for that plan: without it, the run's own (none)
    code, out, err = run_cli("plan", run, "--json")
    assert code == 0 and ExtractionPlan.from_dict(json.loads(out)).pixel_size is None


def test_report_of_a_folder_takes_the_pixel_size_of_its_plan(tmp_path, run_cli):
    # `lipoframe report RUN` after `lipoframe plan RUN pixel_size=2`: the overlays' titles
    # (the micrographs' pixel size) said the headers' 1.1 Å/px beside a plan and legend at 2.
    from lipoframe.report import load_run

    picks, metas = dataset()
    run = fabricated_run(tmp_path / "run", picks, metas)  # units=px, headers at 1.1 Å/px
    code, _, err = run_cli("plan", run, "pixel_size=2")
    assert code == 0, err
    data = load_run(run)
    assert data.plan.pixel_size == 2.0
    assert {m.pixel_size for m in data.metas.values()} == {2.0}
    code, _, err = run_cli("plan", run)  # back to the run's own
    assert code == 0, err
    assert {m.pixel_size for m in load_run(run).metas.values()} == {1.1}


@pytest.mark.parametrize("settings, named", [
    ({"units": "A", "dmin": 150.0, "dmax": 500.0}, "dmin=150.0, dmax=500.0 (units=A)"),
    ({"filter": {"min_size": {"min_diameter": 120.0, "units": "A"}}}, "filter.min_size.units=A"),
])
def test_plan_refuses_a_pixel_size_the_runs_picks_depend_on(tmp_path, run_cli, settings, named):
    # Lengths in Å were converted to pixels with the pixel size the run picked at:
    # another pixel size in the plan would mix the picks of one with the Å of the other.
    picks, metas = dataset()
    run = fabricated_run(tmp_path / "run", picks, metas, settings={"pixel_size": 1.1, **settings})
    before = (run / "config.yaml").read_text()
    code, _, err = run_cli("plan", run, "pixel_size=2")
    assert code == 2 and named in err and "pick again with `lipoframe run ... pixel_size=2`" in err, err
    assert PIXEL_SIZE_PLAN_RULE in err  # the same rule as the refusal for a plugin's stage says
    assert not (run / "extraction_plan.json").exists() and (run / "config.yaml").read_text() == before
    code, out, err = run_cli("plan", run, "pixel_size=1.1", "--json")  # the one it picked at
    assert code == 0, err
    assert ExtractionPlan.from_dict(json.loads(out)).pixel_size == 1.1


@pytest.mark.parametrize("value", ["0", "-1", "nan", "null", "abc"])
def test_plan_refuses_a_pixel_size_that_is_none(tmp_path, run_cli, value):
    picks, metas = dataset()
    run = fabricated_run(tmp_path / "run", picks, metas)
    code, _, err = run_cli("plan", run, f"pixel_size={value}")
    assert code == 2 and f"pixel_size={value}: give the micrographs' pixel size in Å/px" in err, err


def test_plan_exports_with_another_flip_y_without_picking_again(tmp_path, run_cli):
    # A run on TIFFs whose particles are extracted from the unflipped MRC originals: `plan RUN flip_y=false`
    # re-exports them in those rows. The saved results are those of a run from before flip_y (the reader's
    # flip as meta.flip_y), so a later plan with the run's own setting finds the TIFFs again.
    import starfile

    from lipoframe.runner import TIFF_ROWS

    picks, metas = dataset()
    metas = {n: dataclasses.replace(m, path=m.path.replace(".mrc", ".tif"), flip_y=True) for n, m in metas.items()}
    run = fabricated_run(tmp_path / "run", picks, metas, settings={"writer": {"star": {}}})

    def star_rows(name):
        return np.sort(starfile.read(run / "relion" / "coords" / f"{name}_autopick.star")["rlnCoordinateY"].to_numpy(float))

    ny = metas["mic_0"].shape[0]
    rows = np.sort(np.round(picks.loc[picks[schema.MICROGRAPH] == "mic_0", schema.Y].to_numpy()))
    code, out, err = run_cli("plan", run)
    assert code == 0, err
    assert np.array_equal(star_rows("mic_0"), np.sort(np.round(ny - 1 - rows)))
    assert sum(TIFF_ROWS in line for line in out.splitlines()) == 1
    saved = (run / "micrographs" / "mic_0.csv").read_bytes()
    code, out, err = run_cli("plan", run, "flip_y=false")
    assert code == 0, err
    assert np.array_equal(star_rows("mic_0"), rows)
    assert TIFF_ROWS not in out and not any(TIFF_ROWS in n for n in json.loads((run / "run_summary.json").read_text())["notes"])
    assert (run / "micrographs" / "mic_0.csv").read_bytes() == saved  # the picks are not touched
    assert json.loads((run / "micrographs" / "mic_0.json").read_text())["meta"]["flip_y"] is False  # as evaluate reads it
    assert "flip_y: false" in (run / "plan_config.yaml").read_text()
    from lipoframe.report import _config_from_folder

    assert _config_from_folder(run)[0]["flip_y"] is False  # the report shows the plan's
    code, out, err = run_cli("plan", run)  # like any plan option it holds for that plan: without it, the run's own
    assert code == 0, err
    assert np.array_equal(star_rows("mic_0"), np.sort(np.round(ny - 1 - rows)))
    assert sum(TIFF_ROWS in line for line in out.splitlines()) == 1


def test_plan_and_report_given_a_sweep_folder_name_its_jobs(tmp_path, run_cli):
    # `lipoframe run -m ... output=sweep` leaves multirun.yaml and one folder per job
    sweep = tmp_path / "sweep"
    for job in ("0", "1", "2"):
        (sweep / job / ".hydra").mkdir(parents=True)
        (sweep / job / ".hydra" / "overrides.yaml").write_text(f"- nms.beta=0.{job}\n")
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    for command in ("plan", "report"):
        code, _, err = run_cli(command, sweep)
        assert code == 2, command
        assert f"a sweep folder (lipoframe run -m) of 3 job(s): give one job's folder, {sweep / '0'} ... {sweep / '2'}" in err
        assert len(err.strip().splitlines()) == 1
    (tmp_path / "plain").mkdir()
    for command in ("plan", "report"):
        code, _, err = run_cli(command, tmp_path / "plain")
        assert code == 2 and "sweep" not in err


def test_plan_and_report_given_a_sweep_folder_of_the_users_subdir_name_its_jobs_by_number(tmp_path, run_cli):
    # hydra.sweep.subdir=${hydra.job.num}_${nms.beta} names the jobs 0_0.3, 1_10.0, 2_4.0, and
    # ${hydra.job.override_dirname} with a path in it nests them (input=/data/mics,...): the hint took the
    # children by name length (2_4.0 ... 1_10.0) and found none of the nested ones (no hint at all)
    def job(folder, num):
        (folder / ".hydra").mkdir(parents=True)
        (folder / ".hydra" / "overrides.yaml").write_text(f"- nms.beta={num}\n")
        (folder / ".hydra" / "hydra.yaml").write_text(f"hydra:\n  job:\n    num: {num}\n")

    named = tmp_path / "named"
    for num, name in ((0, "0_0.3"), (1, "1_10.0"), (2, "2_4.0")):
        job(named / name, num)
    nested = tmp_path / "nested"
    for num in (0, 1):
        job(nested / "input=" / "data" / f"mics,nms.beta={num}", num)
    for sweep, first, last in ((named, "0_0.3", "2_4.0"), (nested, "input=/data/mics,nms.beta=0", "input=/data/mics,nms.beta=1")):
        (sweep / "multirun.yaml").write_text("hydra: {}\n")
        n = len(list(sweep.rglob("overrides.yaml")))
        for command in ("plan", "report"):
            code, _, err = run_cli(command, sweep)
            assert code == 2, command
            assert (f"a sweep folder (lipoframe run -m) of {n} job(s): give one job's folder, {sweep / first} ... "
                    f"{sweep / last}") in err, err


def test_plan_after_a_real_run_replaces_the_per_bin_files(tiny_mrcs, tmp_path, run_cli):
    out = tmp_path / "out"
    code, _, err = run_cli("run", f"input={tiny_mrcs[0]}", f"output={out}", *TINY_RUN_ARGS,
                           "binning=quantile", "binning.n_bins=2", "writer=[csv,star]")
    assert code == 0, err
    first = json.loads((out / "extraction_plan.json").read_text())
    assert first["policy"] == "quantile" and len(first["bins"]) == 2
    assert (out / "bins" / "bin2").is_dir()
    picked = json.loads((out / "run_summary.json").read_text())
    # the run's own settings come back from .hydra: same plan
    code, stdout, err = run_cli("plan", out)
    assert code == 0, err
    assert json.loads((out / "extraction_plan.json").read_text())["bins"] == first["bins"]
    # one bin now: bin2's coordinate files of the previous plan are gone
    code, stdout, err = run_cli("plan", out, "binning=single")
    assert code == 0, err
    assert "policy single" in stdout
    assert not (out / "bins" / "bin2").exists()
    md = (out / "extraction_plan.md").read_text()
    assert "bin 2" not in md and "`single`" in md
    # run_summary.json still describes the picking (not "skipped" micrographs and no timing), with the new bins
    replanned = json.loads((out / "run_summary.json").read_text())
    for key in ("out_dir", "micrographs", "workers", "peak_rss_mb", "micrographs_per_s", "seconds"):
        assert replanned[key] == picked[key], key
    assert picked["micrographs"]["ok"] == 1 and picked["micrographs"]["not_done"] == 0
    assert len(replanned["bins"]) == 1 and replanned["replanned_seconds"] > 0


def test_plan_removes_the_previous_plans_bin_files_but_not_the_users(tmp_path, run_cli):
    # It deleted every file under bins/ that the new plan did not write: notes or an
    # extraction kept next to a bin's coordinates went with the stale coordinate files.
    picks, metas = dataset()
    run = fabricated_run(tmp_path / "run", picks, metas)
    code, _, err = run_cli("plan", run, "binning=quantile", "binning.n_bins=3", "writer=[csv,star]")
    assert code == 0, err
    assert (run / "bins" / "bin3" / "autopick.star").is_file()
    mine = [run / "bins" / "bin1" / "NOTES.txt", run / "bins" / "bin3" / "extract" / "particles.star"]
    for p in mine:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("the user's own file\n")
    code, _, err = run_cli("plan", run, "binning=quantile", "binning.n_bins=2", "writer=[csv,star]")
    assert code == 0, err
    assert not (run / "bins" / "bin3" / "autopick.star").exists()
    assert not (run / "bins" / "bin3" / "coords").exists()
    assert all(p.read_text() == "the user's own file\n" for p in mine)


def test_plan_says_the_report_is_out_of_date_only_when_it_shows_another_plan(tiny_mrcs, tmp_path, run_cli):
    # It said 'report.html still shows the previous plan' after every plan, also one the same as the report's.
    out = tmp_path / "out"
    stale = "report.html still shows the previous plan"
    args = [a for a in TINY_RUN_ARGS if a != "runner.report=false"]
    code, _, err = run_cli("run", f"input={tiny_mrcs[0]}", f"output={out}", *args, "binning=quantile", "binning.n_bins=2")
    assert code == 0, err
    code, stdout, err = run_cli("plan", out)  # the run's own settings: the plan the report shows
    assert code == 0 and stale not in stdout, (err, stdout)
    code, stdout, err = run_cli("plan", out, "writer=[csv]")  # other files, the same plan
    assert code == 0 and stale not in stdout, (err, stdout)
    for _ in range(2):  # another plan: said until the report is drawn again
        code, stdout, err = run_cli("plan", out, "binning=single")
        assert code == 0 and stale in stdout, (err, stdout)
    before = (out / "report.html").stat().st_mtime_ns
    code, stdout, err = run_cli("plan", out, "binning=single", "--report")  # redraws it
    assert code == 0 and stale not in stdout and "report " in stdout, (err, stdout)
    assert (out / "report.html").stat().st_mtime_ns != before and "policy <b>single</b>" in (out / "report.html").read_text()
    code, stdout, err = run_cli("plan", out, "binning=single")
    assert code == 0 and stale not in stdout, (err, stdout)
    code, stdout, err = run_cli("report", out, "--no-overlays")  # drawn from extraction_plan.json: the same plan
    assert code == 0, err
    code, stdout, err = run_cli("plan", out, "binning=single")
    assert code == 0 and stale not in stdout, (err, stdout)
    code, stdout, err = run_cli("plan", out, "binning=quantile", "binning.n_bins=2")
    assert code == 0 and stale in stdout, (err, stdout)


def test_a_run_without_writers_points_to_a_plan_that_writes_them(tiny_mrcs, tmp_path, run_cli):
    # With writer=[] the plan sent the user to the rows of a picks.csv that was not written.
    out = tmp_path / "out"
    code, _, err = run_cli("run", f"input={tiny_mrcs[0]}", f"output={out}", *TINY_RUN_ARGS, "writer=[]")
    assert code == 0, err
    assert not (out / "picks.csv").exists()
    md = (out / "extraction_plan.md").read_text()
    assert "picks.csv` with" not in md
    assert "- Coordinate files: none written (no per-bin sets and no `picks.csv`); " \
           "`lipoframe plan <this folder> 'writer=[csv,star]'` writes them without picking again." in md
    code, _, err = run_cli("plan", out, "writer=[csv]")
    assert code == 0, err
    assert (out / "picks.csv").is_file() and "use the rows of `picks.csv` with `size_bin == 0`" in (out / "extraction_plan.md").read_text()


@pytest.mark.parametrize(("extract", "warned"), [(2.2, False), (1.0, False), (0.011, True)])
def test_a_far_finer_extraction_pixel_size_is_a_warning_with_its_factor(caplog, extract, warned):
    picks, metas = dataset()
    with caplog.at_level("WARNING", logger="lipoframe"):
        plan = PeakValleyBinner(PeakValleyParams(extract_pixel_size=extract)).assign(picks, metas, CTX).plan
    notes = [n for n in plan.notes if "upsamples" in n]
    if extract >= 1.1:
        assert notes == [] and caplog.text == ""
        return
    assert notes == [f"binning.extract_pixel_size={extract:g} Å/px is finer than the micrographs (1.1 Å/px): "
                     f"that upsamples {1.1 / extract:.3g}x" + ("; check the value (the extraction boxes grow as much)" if warned else "")]
    assert ("check the value" in caplog.text) == warned


@pytest.mark.parametrize(("extract", "crop"), [(2.0, True), (0.5, False)])
def test_cryosparc_is_not_told_to_fourier_crop_to_a_larger_box(extract, crop):
    # at 0.5 A/px from 1 A/px the plan said 'cryoSPARC: extraction box 96,
    # Fourier-crop to 192': a Fourier crop only makes a box smaller
    b = make_bin(0, 50, 64, 10, BoxParams(extract_pixel_size=extract), 1.0)
    plan = ExtractionPlan(policy="single", pixel_size=1.0, bins=(b,), extract_pixel_size=extract)
    md = plan_markdown(plan, {})
    assert (f"Fourier-crop to {b.box_px_extract}" in md) == crop
    if not crop:
        assert b.box_px_extract > b.extract_size_px
        assert f"its Fourier crop cannot enlarge it to {b.box_px_extract}" in md


def test_relion_command_names_the_coordinate_list_from_the_project(tmp_path, run_cli):
    # with writer.star.project_dir the list files name their coordinate files
    # from the project, but the command said '--coord_list bins/bin1/autopick.star',
    # which RELION, run from the project, does not find
    picks, metas = dataset()
    project = tmp_path / "project"
    run = fabricated_run(project / "External" / "lipoframe", picks, metas)
    code, _, err = run_cli("plan", run, "writer=[csv,star]", f"writer.star.project_dir={project}")
    assert code == 0, err
    md = (run / "extraction_plan.md").read_text()
    assert "--coord_list External/lipoframe/bins/bin1/autopick.star " in md
    listed = (project / "External/lipoframe/bins/bin1/autopick.star").read_text()
    assert "External/lipoframe/bins/bin1/coords/" in listed
    code, _, err = run_cli("plan", run, "writer=[csv,star]", "writer.star.project_dir=")
    assert code == 0, err
    assert "--coord_list bins/bin1/autopick.star " in (run / "extraction_plan.md").read_text()


GATE_FILTER = """
    from dataclasses import dataclass

    from lipoframe import hookimpl, schema
    from lipoframe.stages import Filter

    @dataclass
    class GateParams:
        close: bool = False

    class Gate(Filter):
        name = "gate"
        Params = GateParams
        reasons = ("gate_closed",)

        def apply(self, picks, mic, ctx):
            return schema.with_acceptance(picks)

        def apply_dataset(self, picks, metas, ctx):
            if not self.params.close:
                return picks
            return schema.reject(picks, [True] * len(picks), "gate_closed")

    @hookimpl
    def lipoframe_register_stages(registry):
        registry.add(Gate)
"""


def test_plan_runs_the_dataset_step_of_the_runs_own_filters(make_plugin, tiny_mrcs, tmp_path, run_cli):
    # Before, `lipoframe plan RUN` ran the dataset-level step of the default
    # filters with their default values, whatever the run had chosen: here
    # the run's own filter's rejections were undone (and a run with
    # filter.population.lonely_below=0 got `lonely` rejections at plan time).
    make_plugin("lipoframe-gate", GATE_FILTER)
    out = tmp_path / "out"
    code, _, err = run_cli("run", f"input={tiny_mrcs[0]}", f"output={out}", *TINY_RUN_ARGS,
                           "filter=[diameter_range,gate]", "filter.gate.close=true", "binning=single")
    assert code == 0, err
    picked = json.loads((out / "run_summary.json").read_text())["picks"]
    assert picked["accepted"] == 0 and picked["rejected"]["gate_closed"] > 0
    code, _, err = run_cli("plan", out)
    assert code == 0, err
    assert json.loads((out / "run_summary.json").read_text())["picks"] == picked


TXT_WRITER = """
    from dataclasses import dataclass

    from lipoframe import hookimpl
    from lipoframe.builtin.writers import exported
    from lipoframe.io.atomic import safe_child, write_text
    from lipoframe.stages import Writer

    @dataclass
    class TxtParams:
        pass

    class Txt(Writer):
        name = "txt"
        Params = TxtParams

        def write(self, picks, metas, plan, out_dir, ctx):
            table = exported(picks, ctx)
            return [write_text(safe_child(out_dir, "txt", f"{name}.txt"), str(int((table["micrograph"] == name).sum())))
                    for name in metas]

    @hookimpl
    def lipoframe_register_stages(registry):
        registry.add(Txt)
"""


def test_plan_refuses_a_run_whose_writer_or_filter_is_no_longer_installed(make_plugin, tiny_mrcs, tmp_path, run_cli, monkeypatch):
    # Before, the uninstalled plugin's writer was silently left out and its
    # files deleted as stale (exit 0); its filter made a config error.
    make_plugin("lipoframe-txt", TXT_WRITER)
    make_plugin("lipoframe-gate", GATE_FILTER)
    out = tmp_path / "out"
    code, _, err = run_cli("run", f"input={tiny_mrcs[0]}", f"output={out}", *TINY_RUN_ARGS,
                           "filter=[diameter_range,gate]", "writer=[csv,txt]", "binning=single")
    assert code == 0, err
    written = sorted(p.name for p in (out / "txt").iterdir())
    assert written == ["mic_0.txt"]
    monkeypatch.setenv("LIPOFRAME_LOAD_PLUGINS", "lipoframe-gate")  # lipoframe-txt uninstalled
    code, _, err = run_cli("plan", str(out))
    assert code == 2
    assert err.strip() == (f"lipoframe plan: {out} was made with writer txt, which no installed plugin provides now (uninstalled?): "
                           "install it again to re-plan this run; or choose other writers with writer=[...] "
                           "(the files of a writer left out are removed)")
    assert sorted(p.name for p in (out / "txt").iterdir()) == written
    code, _, err = run_cli("plan", str(out), "writer=[csv]")  # the user's choice: txt's files go
    assert code == 0, err
    assert not (out / "txt").exists()
    monkeypatch.setenv("LIPOFRAME_LOAD_PLUGINS", "")  # both uninstalled: the filter cannot be chosen away
    code, _, err = run_cli("plan", str(out), "writer=[csv]")
    assert code == 2 and "was made with filter gate, which no installed plugin provides now" in err


def test_plan_refuses_a_run_whose_binning_is_no_longer_installed(make_plugin, tiny_mrcs, tmp_path, run_cli, monkeypatch):
    # Before, the default binning (peak_valley) was used without a word.
    make_plugin("lipoframe-onebin", """
        from dataclasses import dataclass

        from lipoframe import hookimpl
        from lipoframe.builtin.binning import SingleBinner, SingleParams

        @dataclass
        class OneBinParams(SingleParams):
            pass

        class OneBin(SingleBinner):
            name = "one_bin"
            Params = OneBinParams

        @hookimpl
        def lipoframe_register_stages(registry):
            registry.add(OneBin)
    """)
    out = tmp_path / "out"
    code, _, err = run_cli("run", f"input={tiny_mrcs[0]}", f"output={out}", *TINY_RUN_ARGS, "binning=one_bin")
    assert code == 0, err
    monkeypatch.setenv("LIPOFRAME_LOAD_PLUGINS", "")
    code, _, err = run_cli("plan", str(out))
    assert code == 2 and "was made with binning=one_bin, which no installed plugin provides now" in err
    assert "or choose another binning=..." in err
    code, out_text, err = run_cli("plan", str(out), "binning=single")
    assert code == 0 and "policy single" in out_text, err


#: A plugin policy with the options of ``single`` (pad, rounding, extract_pixel_size) and no more.
ONE_BIN_PLUGIN = """
    from dataclasses import dataclass

    from lipoframe import hookimpl
    from lipoframe.builtin.binning import SingleBinner, SingleParams

    @dataclass
    class OneBinParams(SingleParams):
        pass

    class OneBin(SingleBinner):
        name = "one_bin"
        Params = OneBinParams

    @hookimpl
    def lipoframe_register_stages(registry):
        registry.add(OneBin)
"""


def test_plan_of_a_run_without_a_hydra_record_uses_the_runs_binning(make_plugin, tiny_mrcs, tmp_path, run_cli):
    # With hydra.output_subdir=null the run's binning was guessed from its options: `single` and a plugin's
    # policy with the same options matched both, and the plan used the default, peak_valley, without a word.
    from lipoframe.report import load_run

    make_plugin("lipoframe-onebin", ONE_BIN_PLUGIN)
    out = tmp_path / "out"
    for policy in ("one_bin", "single"):
        code, _, err = run_cli("run", f"input={tiny_mrcs[0]}", f"output={out}", *TINY_RUN_ARGS, f"binning={policy}",
                               "hydra.output_subdir=null")
        assert code == 0, err
        assert not (out / ".hydra").exists()
        code, text, err = run_cli("plan", str(out))
        assert code == 0 and f"policy {policy}:" in text, err
        assert json.loads((out / "inputs.json").read_text())["stages"]["binning"] == policy
        assert json.loads((out / "extraction_plan.json").read_text())["policy"] == policy
    # The report of the folder names the run's stages too (before, none but binning, filters and writers).
    assert load_run(out).stage_names["detector"] == "edge"  # the default


@pytest.mark.parametrize("stop", ["run", "config"])
def test_a_run_without_a_hydra_record_stopped_early_leaves_no_earlier_binning(make_plugin, tiny_mrcs, tmp_path, run_cli,
                                                                             monkeypatch, stop):
    # A run with hydra.output_subdir=null writes config.yaml as it starts and inputs.json once its inputs are
    # listed: stopped in between (an error, Ctrl-C), the earlier run's `stages` stayed in inputs.json, and
    # `lipoframe plan` re-planned this run's settings with the earlier run's binning policy (one_bin for single).
    from lipoframe import runner
    from lipoframe.io import atomic
    from lipoframe.plancmd import load_saved_config

    make_plugin("lipoframe-onebin", ONE_BIN_PLUGIN)
    out = tmp_path / "out"
    args = ["run", f"input={tiny_mrcs[0]}", f"output={out}", *TINY_RUN_ARGS, "hydra.output_subdir=null"]
    code, _, err = run_cli(*args, "binning=one_bin")
    assert code == 0, err
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    def config_interrupted(path, text, write_text=atomic.write_text):
        return interrupted() if Path(path).name == "config.yaml" else write_text(path, text)

    with monkeypatch.context() as m:
        if stop == "run":  # stopped after config.yaml, before the run lists its inputs
            m.setattr(runner, "run_pipeline", interrupted)
        else:  # stopped while config.yaml is written: the earlier one stays, and neither run's stages are recorded
            m.setattr(atomic, "write_text", config_interrupted)
        code, _, err = run_cli(*args, "binning=single", "binning.pad=1.4")
    assert code == 130 and "lipoframe: interrupted" in err, err
    saved, choices = load_saved_config(out)
    manifest = json.loads((out / "inputs.json").read_text())
    assert manifest["micrographs"] and manifest["fingerprint"]  # the rest of the earlier run's record is as it was
    if stop == "run":
        assert saved["binning"]["pad"] == 1.4 and choices["binning"] == "single"
        code, text, err = run_cli("plan", str(out))
        assert code == 0 and "policy single:" in text, err
    else:
        assert saved["binning"]["pad"] != 1.4 and manifest["stages"] is None  # none recorded, and the folder says so
        code, _, err = run_cli("plan", str(out))  # one_bin and single have the same options: the user chooses
        assert code == 2 and "choose one with binning=<name>" in err
        # not "an inputs.json of a lipoframe that did not record it", which a folder of an older lipoframe has
        assert (f"{out} records no binning policy (no .hydra/hydra.yaml, and the last run or merge into it stopped before "
                "recording its stages in inputs.json) and its options") in err, err


def test_plan_of_an_older_folder_says_which_binning_it_took_or_asks(make_plugin, tiny_mrcs, tmp_path, run_cli, caplog):
    # A folder without .hydra/hydra.yaml whose inputs.json records no stages (made before they were recorded):
    # the one installed policy with its options is taken with a warning; when several have them, the user chooses.
    out = tmp_path / "out"
    code, _, err = run_cli("run", f"input={tiny_mrcs[0]}", f"output={out}", *TINY_RUN_ARGS, "binning=single",
                           "hydra.output_subdir=null")
    assert code == 0, err
    manifest = json.loads((out / "inputs.json").read_text())
    manifest.pop("stages", None)
    (out / "inputs.json").write_text(json.dumps(manifest))
    with caplog.at_level(logging.WARNING, logger="lipoframe"):
        code, text, err = run_cli("plan", str(out))
    assert code == 0 and "policy single:" in text, err
    assert any("records no binning policy" in r.getMessage() and "taken to be single, the only installed policy with its "
               "options (extract_pixel_size, pad, rounding)" in r.getMessage() for r in caplog.records)
    make_plugin("lipoframe-onebin", ONE_BIN_PLUGIN)
    code, _, err = run_cli("plan", str(out))
    assert code == 2
    assert ("records no binning policy (no .hydra/hydra.yaml, and an inputs.json of a lipoframe that did not record it) and "
            "its options (extract_pixel_size, pad, rounding) fit the policies one_bin, single: choose one with binning=<name>") in err
    assert json.loads((out / "extraction_plan.json").read_text())["policy"] == "single"  # as it was
    code, text, err = run_cli("plan", str(out), "binning=one_bin")
    assert code == 0 and "policy one_bin:" in text, err
    (out / "inputs.json").unlink()  # nor an inputs.json that could record it: said as it is
    code, _, err = run_cli("plan", str(out))
    assert code == 2 and f"{out} records no binning policy (no .hydra/hydra.yaml, and no inputs.json) and its options" in err, err


def test_plan_of_an_older_folder_takes_the_policy_that_gained_options_since(tiny_mrcs, tmp_path, run_cli, caplog):
    # A folder made without a Hydra record (hydra.output_subdir=null, any merge) by a lipoframe from before
    # peak_valley gained stray_gap and min_bin_picks: no installed policy had exactly its options, so plan refused
    # (exit 2, 'no installed policy has its options'), where it had used peak_valley, the run's own, before.
    out = tmp_path / "out"
    code, _, err = run_cli("run", f"input={tiny_mrcs[0]}", f"output={out}", *TINY_RUN_ARGS, "hydra.output_subdir=null")
    assert code == 0, err
    manifest = json.loads((out / "inputs.json").read_text())
    assert manifest.pop("stages")["binning"] == "peak_valley"
    (out / "inputs.json").write_text(json.dumps(manifest))
    config = yaml.safe_load((out / "config.yaml").read_text())
    for option in ("stray_gap", "min_bin_picks"):  # as that lipoframe wrote it
        del config["binning"][option]
    (out / "config.yaml").write_text(yaml.safe_dump(config))
    with caplog.at_level(logging.WARNING, logger="lipoframe"):
        code, text, err = run_cli("plan", str(out))
    assert code == 0 and "policy peak_valley:" in text, err
    assert any("taken to be peak_valley, the only installed policy with its options (" in r.getMessage()
               and "and options added since (min_bin_picks, stray_gap), which take their defaults" in r.getMessage()
               for r in caplog.records)
    # Options that several policies have and more (single's before extract_pixel_size): the user chooses.
    config["binning"] = {"pad": 1.6, "rounding": "multiple32"}
    (out / "config.yaml").write_text(yaml.safe_dump(config))
    code, _, err = run_cli("plan", str(out))
    assert code == 2 and "its options (pad, rounding) fit the policies " in err and "choose one with binning=<name>" in err


def _tiny_run_copy(tiny_run_folder: Path, tmp_path: Path) -> Path:
    """``tmp_path / "out"``: a copy of conftest's finished run of the two tiny micrographs with TINY_ARGS."""
    out = tmp_path / "out"
    shutil.copytree(tiny_run_folder, out)
    return out


def _run_interrupted_before_mic_1(tiny_run_folder, tmp_path) -> Path:
    """The folder of a run of the tiny micrographs as left when interrupted before it picked mic_1."""
    out = _tiny_run_copy(tiny_run_folder, tmp_path)
    for suffix in (".json", ".csv"):
        (out / "micrographs" / f"mic_1{suffix}").unlink()
    summary = json.loads((out / "run_summary.json").read_text())
    (out / "run_summary.json").write_text(json.dumps({**summary, "interrupted": True}))
    return out


def test_plan_of_an_interrupted_run_says_which_micrographs_it_leaves_out(tiny_run_folder, tmp_path, run_cli):
    # Before, `lipoframe plan` on the folder of an interrupted run wrote picks.csv, the plan and the
    # writers' files from the micrographs picked so far without a word, while the run itself
    # writes no dataset-level outputs from a partial dataset.
    out = _run_interrupted_before_mic_1(tiny_run_folder, tmp_path)
    code, _, err = run_cli("plan", str(out))
    assert ("lipoframe plan: 1 of 2 micrograph(s) have no saved picks and are not in the plan; the run was interrupted: "
            "run the same `lipoframe run` command again to finish it") in err.splitlines()
    assert set(pd.read_csv(out / "picks.csv")["micrograph"]) == {"mic_0"}


def test_plan_of_a_killed_run_calls_its_unpicked_micrographs_not_done_not_failed(tiny_run_folder, tmp_path, run_cli):
    """A run killed outright (SIGKILL, the out-of-memory killer, a hard time limit) writes no
    run_summary.json; `lipoframe plan` then said the micrographs it had not reached 'failed in the
    run' and wrote a run_summary.json listing each as a failure ('no complete saved result'), which
    the report, evaluate and merge repeated. They were not picked: the run is recorded as interrupted."""
    out = _tiny_run_copy(tiny_run_folder, tmp_path)
    for suffix in (".json", ".csv"):  # mic_1 not reached when the run was killed
        (out / "micrographs" / f"mic_1{suffix}").unlink()
    (out / "run_summary.json").unlink()  # written at a run's end only
    code, _, err = run_cli("plan", str(out))
    assert code == 0, err
    assert ("lipoframe plan: 1 of 2 micrograph(s) have no saved picks and are not in the plan; the run was interrupted: "
            "run the same `lipoframe run` command again to finish it") in err.splitlines(), err
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["interrupted"] is True and summary["failures"] == []
    assert summary["micrographs"]["failed"] == 0 and summary["micrographs"]["not_done"] == 1
    code, _, err = run_cli("plan", str(out))  # and again, now from the run_summary.json plan wrote
    assert "the run was interrupted" in err, err


def test_plan_of_a_watch_session_keeps_its_files_not_finished_apart_with_their_errors(tiny_run_folder, tmp_path, run_cli):
    """The run_summary.json of a watch=true session's last update (the session killed since) lists a file that
    failed but may be a copy still being written under not_finished. `lipoframe plan` read only the failures: it
    said the file 'failed in the run', and its run_summary.json listed it as neither, so its report left it out."""
    out = _tiny_run_copy(tiny_run_folder, tmp_path)
    mic_1, error = as_watch_update_with_mic_1_not_finished(out, tiny_run_folder.parent / "mics", ok=1)
    code, _, err = run_cli("plan", str(out))
    assert code == 0, err
    assert ("lipoframe plan: 1 of 2 micrograph(s) have no saved picks and are not in the plan "
            "(1 not finished yet in the watch session)") in err.splitlines(), err
    planned = json.loads((out / "run_summary.json").read_text())
    assert planned["not_finished"] == [{"micrograph": mic_1, "error": error}] and planned["failures"] == []
    assert planned["micrographs"]["not_finished"] == 1 and planned["micrographs"]["failed"] == 0
    code, _, err = run_cli("report", str(out), "-j", "1", "--no-overlays")
    assert code == 0, err
    text = " ".join((out / "report.html").read_text().split())
    assert "1 not finished yet" in text and "(the session&#x27;s own words)" in text


@contextlib.contextmanager
def _plan_stopped_in(where: str, monkeypatch):
    """Make a plan stop in its binning (Ctrl-C), in the star writer, after the csv writer's files (SIGTERM), or
    while drawing its report (SIGTERM), after its exports and plan files."""
    import os
    import signal

    from lipoframe import report
    from lipoframe.builtin.binning import PeakValleyBinner
    from lipoframe.builtin.writers import StarWriter

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    def sigterm(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)

    def unhandled(signum, frame):  # in place of the default action, which would end the test session
        raise AssertionError("SIGTERM was not turned into an interruption")

    if where == "binning":
        with monkeypatch.context() as mp:
            mp.setattr(PeakValleyBinner, "assign", ctrl_c)
            yield
        return
    old = signal.signal(signal.SIGTERM, unhandled)
    try:
        with monkeypatch.context() as mp:
            if where == "report":
                mp.setattr(report, "write_report", sigterm)
            else:
                mp.setattr(StarWriter, "write", sigterm)
            yield
        assert signal.getsignal(signal.SIGTERM) is unhandled  # the plan put it back
    finally:
        signal.signal(signal.SIGTERM, old)


@pytest.mark.parametrize("where", ["binning", "writer"])
def test_a_plan_stopped_in_its_binning_or_a_writer_says_so_until_a_plan_finishes(tiny_run_folder, tmp_path, run_cli, monkeypatch,
                                                                                  caplog, where):
    # run_summary.json said 'interrupted: false' (the picking run's flag, carried over), exit code 130 without a word
    # on what to do, and SIGTERM ended the plan outright; its exports and plan files are a mix of the two plans'.
    out = _tiny_run_copy(tiny_run_folder, tmp_path)
    with _plan_stopped_in(where, monkeypatch), caplog.at_level(logging.WARNING, logger="lipoframe"):
        code, _, err = run_cli("plan", str(out), "binning.rounding=even")
    said = ("interrupted while making the plan: its exports and extraction plan files are incomplete; "
            f"run `lipoframe plan {out} binning.rounding=even` again")
    assert code == 130 and err == "lipoframe: interrupted\n", err
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["interrupted"] is True and summary["picking_interrupted"] is False
    assert said in caplog.messages
    assert said in summary["notes"] and said not in summary["run_notes"]
    assert summary["micrographs"] == {"total": 2, "ok": 2, "skipped": 0, "failed": 0, "not_done": 0}  # the run's
    assert f"[WARNING] {said}" in (out / "lipoframe.log").read_text()
    if where == "writer":
        # the report and evaluate's sweep table say the plan stopped, not that the run did not finish (every micrograph is picked)
        code, _, err = run_cli("report", str(out), "--no-overlays")
        assert code == 0, err
        page = " ".join(html.unescape(re.sub(r"<[^>]+>", " ", (out / "report.html").read_text())).split())
        assert f"Interrupted {said[len('interrupted '):]}" in page and "the run did not finish" not in page
        assert json.loads((out / "run_summary.json").read_text())["interrupted"] is True  # the report leaves it
        from lipoframe.evaluate import _job_state

        assert _job_state(out) == ("partial", said)
    # the plan again, finished: neither flag nor note
    code, _, err = run_cli("plan", str(out), "binning.rounding=even")
    assert code == 0, err
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["interrupted"] is False and "picking_interrupted" not in summary
    assert not any("interrupted" in n for n in summary["notes"]), summary["notes"]


def test_a_finished_plan_keeps_the_flag_of_a_run_whose_picking_was_interrupted(tiny_run_folder, tmp_path, run_cli, monkeypatch):
    out = _run_interrupted_before_mic_1(tiny_run_folder, tmp_path)
    with _plan_stopped_in("binning", monkeypatch):
        assert run_cli("plan", str(out))[0] == 130
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["interrupted"] is True and summary["picking_interrupted"] is True
    assert run_cli("plan", str(out))[0] == 0
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["interrupted"] is True and "picking_interrupted" not in summary
    assert not any("interrupted while making the plan" in n for n in summary["notes"])


@pytest.mark.parametrize("where", ["binning", "writer"])
def test_a_finished_plan_clears_the_flag_of_a_run_stopped_in_its_binning_or_a_writer(tiny_mrcs, tmp_path, run_cli, monkeypatch,
                                                                                        where):
    # A run stopped after every micrograph was picked, in its binning or a writer: the plan that then finished
    # made complete outputs from complete picks, but run_summary.json kept 'interrupted: true' (the run's own
    # flag), and the report still said the run did not finish and to run the same command again.
    out = tmp_path / "out"
    with _plan_stopped_in(where, monkeypatch):
        code, _, err = run_cli("run", f"input={tiny_mrcs[0]}", f"output={out}", *TINY_ARGS)
    assert code == 130, err
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["interrupted"] is True and summary["micrographs"]["not_done"] == 0
    code, _, err = run_cli("plan", str(out))
    assert code == 0 and "interrupted" not in err, err
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["interrupted"] is False and "picking_interrupted" not in summary
    assert not any("interrupted" in n for n in summary["notes"] + summary["run_notes"]), summary
    code, _, err = run_cli("report", str(out), "--no-overlays")
    assert code == 0, err
    page = " ".join(html.unescape(re.sub(r"<[^>]+>", " ", (out / "report.html").read_text())).split())
    assert "Interrupted" not in page and "run the same command again" not in page


def test_a_plan_stopped_while_drawing_its_report_says_so_until_a_report_is_written(tiny_run_folder, tmp_path, run_cli, monkeypatch):
    # `lipoframe plan RUN --report` stopped while drawing the report: report.html was removed, but run_summary.json
    # said 'interrupted: false' with no note, as if the plan had written it (a run stopped so says so).
    out = _tiny_run_copy(tiny_run_folder, tmp_path)
    assert run_cli("report", str(out), "--no-overlays")[0] == 0  # the earlier report, which goes
    with _plan_stopped_in("report", monkeypatch):
        code, _, err = run_cli("plan", str(out), "binning.rounding=even", "--report")
    assert code == 130 and err == "lipoframe: interrupted\n", err
    assert not (out / "report.html").exists()
    assert json.loads((out / "extraction_plan.json").read_text())["policy"]  # the plan's outputs are complete
    summary = json.loads((out / "run_summary.json").read_text())
    said = f"interrupted while writing the report: the picks, exports and extraction plan are complete; `lipoframe report {out}` writes it"
    assert summary["interrupted"] is True and "picking_interrupted" not in summary
    assert said in summary["notes"] and said in summary["run_notes"]
    # a plan made meanwhile keeps it; the report written later drops the flag and the note, as after a run stopped so
    assert run_cli("plan", str(out), "binning.rounding=even")[0] == 0
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["interrupted"] is True and summary["notes"].count(said) == 1
    code, _, err = run_cli("report", str(out), "--no-overlays")
    assert code == 0, err
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["interrupted"] is False
    assert not any("interrupted" in n for n in summary["notes"] + summary["run_notes"]), summary


def test_a_rerun_of_the_run_removes_the_last_plans_settings(tiny_mrcs, tmp_path, run_cli):
    # plan_config.yaml said binning=single after `lipoframe run` had replanned the folder with the run's own quantile binning.
    out = tmp_path / "out"
    run = ["run", f"input={tiny_mrcs[0]}", f"output={out}", *TINY_RUN_ARGS, "binning=quantile", "binning.n_bins=2"]
    code, _, err = run_cli(*run)
    assert code == 0, err
    assert not (out / "plan_config.yaml").exists()
    code, _, err = run_cli("plan", out, "binning=single")
    assert code == 0, err
    assert "overrides:\n- binning=single" in (out / "plan_config.yaml").read_text()
    code, _, err = run_cli(*run)  # every micrograph resumed: the outputs of the plan's other settings go, the run writes its own
    assert code == 0, err
    assert json.loads((out / "extraction_plan.json").read_text())["policy"] == "quantile"
    assert not (out / "plan_config.yaml").exists()
    code, _, err = run_cli("plan", out)  # the run's own settings
    assert code == 0 and (out / "plan_config.yaml").is_file(), err
    code, _, err = run_cli(*run)  # the same settings: its dataset step replaces the plan's outputs
    assert code == 0, err
    assert not (out / "plan_config.yaml").exists()
    code, _, err = run_cli("plan", out, "binning=single")
    assert code == 0 and (out / "plan_config.yaml").is_file(), err
    code, _, err = run_cli(*run, "binning.n_bins=3")  # other settings: the earlier outputs go as the run starts
    assert code == 0, err
    assert not (out / "plan_config.yaml").exists()


def test_the_report_after_a_plan_shows_the_plans_settings(tmp_path, run_cli):
    # The report's configuration was the picking run's config.yaml: its binning
    # (single) beside a kmeans plan, and the stages line said binning single.
    import html
    import re

    from lipoframe.report import load_run

    picks, metas = dataset()
    run = fabricated_run(tmp_path / "run", picks, metas)  # saved binning: single
    code, _, err = run_cli("plan", run, "binning=kmeans", "binning.max_bins=2", "--report")
    assert code == 0, err
    page = (run / "report.html").read_text()
    shown = html.unescape(re.search(r'<h2 id="config">Configuration</h2>\s*<pre>(.*?)</pre>', page, re.S).group(1))
    assert "binning=kmeans binning.max_bins=2; plan_config.yaml" in shown.splitlines()[0]
    binning = re.search(r"\nbinning:\n((?:  .*\n)+)", shown).group(1)
    assert "  n_clusters: 10\n" in binning and "  max_bins: 2\n" in binning and "dmin: 100.0" in shown
    data = load_run(run)  # `lipoframe report` of the folder: the same
    assert data.config["binning"]["n_clusters"] == 10 and data.stage_names["binning"] == "kmeans"
    assert data.config_text.split("\n", 1)[1] == shown.split("\n", 1)[1]


def test_plan_keeps_the_runs_notes_that_still_apply(tmp_path, run_cli):
    # A plan kept only the polarity check's notes of the run: the renamed
    # micrographs' went (picks.csv still names them so), and so did a note the
    # plan cannot recompute. Those on the pixel size go only with a plan that gives one.
    from conftest import tiny_image, write_mrc

    for folder, seed in (("a", 0), ("b", 1)):  # the same file name twice: both are renamed
        write_mrc(tmp_path / folder / "mic.mrc", tiny_image(seed=seed)[0], pixel_size=1.0)
    out = tmp_path / "out"
    code, _, err = run_cli("run", f"input=[{tmp_path / 'a'},{tmp_path / 'b'}]", f"output={out}", *TINY_ARGS)
    assert code == 0, err

    def notes():
        return json.loads((out / "run_summary.json").read_text())["notes"]

    run_notes = notes()
    renamed = [n for n in run_notes if "results are named" in n]
    one_a = [n for n in run_notes if "gives exactly 1 Å/px" in n]
    assert len(renamed) == 2 and len(one_a) == 1, run_notes
    assert f"`lipoframe plan {out} pixel_size=<Å/px>`" in one_a[0], one_a  # the run's folder, ready to paste
    code, stdout, err = run_cli("plan", out, "binning=single")
    assert code == 0, err
    assert notes() == run_notes and all(f"NOTE {n}" in stdout for n in renamed)
    code, _, err = run_cli("plan", out, "pixel_size=2")  # the 1 Å/px is no more: its note goes
    assert code == 0, err
    assert notes() == [n for n in run_notes if n not in one_a]
    code, _, err = run_cli("plan", out)  # the run's own settings again: the run's notes
    assert code == 0, err
    assert notes() == run_notes


def test_a_plan_of_a_copied_or_moved_run_folder_names_that_folder_in_the_runs_notes(tmp_path, run_cli):
    # The 1 Å/px note gives `lipoframe plan <folder> pixel_size=<Å/px>` to paste; after the run folder was copied
    # or moved, a plan of it (and its run_summary.json, and a report of it) still named the folder the run was made in.
    from conftest import tiny_image, write_mrc

    from lipoframe.runner import MADE_IN

    write_mrc(tmp_path / "mics" / "mic_0.mrc", tiny_image(seed=0)[0], pixel_size=1.0)  # one micrograph is enough
    out = tmp_path / "out"
    code, _, err = run_cli("run", f"input={tmp_path / 'mics'}", f"output={out}", *TINY_ARGS)
    assert code == 0, err
    picked = json.loads((out / "run_summary.json").read_text())
    (note,) = picked["notes"]
    assert f"`lipoframe plan {out} pixel_size=<Å/px>`" in note and picked["out_dir"] == str(out)
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)

    def said(folder):
        return note.replace(f"`lipoframe plan {out} ", f"`lipoframe plan {folder} ")

    # a report of the copy, before any plan of it
    code, _, err = run_cli("report", copy, "--no-overlays")
    assert code == 0, err
    page = html.unescape((copy / "report.html").read_text())
    assert re.findall(r"<li>Note: (.*?)</li>", page) == [said(copy)]  # (its configuration says where the run wrote)
    code, stdout, err = run_cli("plan", copy, "binning=single")
    assert code == 0, err
    summary = json.loads((copy / "run_summary.json").read_text())
    assert summary["notes"] == summary["run_notes"] == summary["run_pixel_size_notes"] == [said(copy)]
    assert summary["out_dir"] == str(copy) and f"NOTE {said(copy)}" in stdout
    assert not [f for f in copy.rglob("*") if f.is_file() and f.suffix in (".json", ".md", ".csv", ".star")
                and f.name != "run_summary.json" and str(out) in f.read_text(errors="replace")]
    # the summary names the run's folder only as where it was made (the report says the folder was copied or moved)
    assert summary[MADE_IN] == str(out) and str(out) not in json.dumps({k: v for k, v in summary.items() if k != MADE_IN})
    # moved on: still a note on the pixel size (a plan that gives one drops it), and the next plan names the new place
    moved = tmp_path / "moved"
    copy.rename(moved)
    code, _, err = run_cli("plan", moved, "pixel_size=2")
    assert code == 0, err
    assert json.loads((moved / "run_summary.json").read_text())["notes"] == []
    code, _, err = run_cli("plan", moved)
    assert code == 0, err
    assert json.loads((moved / "run_summary.json").read_text())["notes"] == [said(moved)]
    assert json.loads((moved / "run_summary.json").read_text())[MADE_IN] == str(out)
    # the folder it was made in is as it was: named as before
    code, _, err = run_cli("plan", out)
    assert code == 0, err
    assert json.loads((out / "run_summary.json").read_text())["notes"] == [note]


def test_the_runs_folder_is_renamed_in_its_notes_only_as_a_whole_path(tmp_path):
    from lipoframe.runner import MADE_IN, RUN_NOTES, RUN_PIXEL_SIZE_NOTES, picking_named_here

    old = str(tmp_path / "run1")
    notes = [f"`lipoframe plan {old} pixel_size=<Å/px>`", f"removed the outputs of the earlier run into {old}, made with",
             f"`lipoframe report {old}` writes it", f"{old}/micrographs/a.json and {old}.bak and {old}2 stay"]
    picking = {"out_dir": old, "notes": notes, RUN_NOTES: notes, RUN_PIXEL_SIZE_NOTES: notes[:1], "seconds": 3.0}
    new = tmp_path / "copy"
    moved = picking_named_here(picking, new)
    renamed = [n.replace(old, str(new)) for n in notes[:3]] + notes[3:]
    assert moved == {"out_dir": str(new), MADE_IN: old, "notes": renamed, RUN_NOTES: renamed, RUN_PIXEL_SIZE_NOTES: renamed[:1],
                     "seconds": 3.0}
    # copied on: where it was made stays
    assert picking_named_here(moved, tmp_path / "copy2")[MADE_IN] == old
    assert picking["notes"] == notes  # not changed in place
    # the same folder, however spelled: as it was
    (tmp_path / "run1").mkdir()
    assert picking_named_here(picking, tmp_path / "x" / ".." / "run1") is picking
    assert picking_named_here({"notes": notes}, new) == {"notes": notes}  # no folder recorded


def test_a_folder_recorded_as_a_relative_path_is_not_renamed_in_its_notes(tmp_path):
    # run_pipeline(cfg, "out") records out_dir "out": relative to a working folder no longer known, it cannot be told
    # from the folder given now, and each word "out" of the notes ("leave it out of input=") became that folder's path
    from lipoframe.runner import RUN_NOTES, picking_named_here

    notes = ["a.mrc: leave it out of input= (or read it with filter=[...,mask])", "`lipoframe report out` writes it"]
    picking = {"out_dir": "out", "notes": notes, RUN_NOTES: notes}
    assert picking_named_here(picking, tmp_path / "elsewhere" / "out") is picking


def test_plan_keeps_the_runs_1_angstrom_note_made_with_its_picking_settings(tmp_path, run_cli):
    # The plan made the note again from its own config, which holds no picking
    # stage: for a membrane run (thickness in Å) it said the picks do not depend
    # on the 1 Å/px and sent the user to `lipoframe plan pixel_size=`, which refuses this run.
    from conftest import tiny_image, write_mrc

    write_mrc(tmp_path / "mics" / "mic_0.mrc", tiny_image(seed=0)[0], pixel_size=1.0)  # one micrograph is enough
    out = tmp_path / "out"
    code, _, err = run_cli("run", f"input={tmp_path / 'mics'}", f"output={out}", *TINY_ARGS, "detector=membrane", "detector.thickness=10")
    assert code == 0, err
    (note,) = json.loads((out / "run_summary.json").read_text())["notes"]
    assert "detector.units=A converted a length in Å" in note
    code, stdout, err = run_cli("plan", out, "binning=single")
    assert code == 0, err
    assert json.loads((out / "run_summary.json").read_text())["notes"] == [note]
    assert [ln for ln in stdout.splitlines() if ln.startswith("NOTE")] == [f"NOTE {note}"]
    code, _, err = run_cli("plan", out, "pixel_size=2")
    assert code == 2 and "detector.units=A" in err
