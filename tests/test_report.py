"""The run report: overlays put circles on the picks, report.html is one valid,
self-contained page, ``lipoframe report`` rebuilds it from a run folder, and a
broken report never fails a run."""

from __future__ import annotations

import base64
import io
import json
import logging
import multiprocessing
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
import pandas as pd
import pytest
from conftest import TINY_DMAX, TINY_DMIN, tiny_image, write_mrc
from PIL import Image

from lipoframe import plots, report, schema
from lipoframe.plan import ExtractionPlan, SizeBin

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


# ---------------------------------------------------------------------------
# A small run: 3 micrographs, one unreadable file, score rejections, 2 size bins
# ---------------------------------------------------------------------------
RUN_OVERRIDES = [
    f"dmin={TINY_DMIN:g}", f"dmax={TINY_DMAX:g}", "units=px", "runner.workers=1", "runner.progress=false",
    "binning=quantile", "binning.n_bins=2", "filter=[diameter_range,score]", "filter.score.min_score=12", "writer=[csv]",
]


def make_run(root: Path):
    from hydra.core.global_hydra import GlobalHydra

    from lipoframe.merge import compose_config
    from lipoframe.runner import run_pipeline

    for i in range(3):
        write_mrc(root / "mics" / f"mic_{i}.mrc", tiny_image(seed=i)[0])
    (root / "mics" / "broken.mrc").write_bytes(b"not an mrc file")
    try:
        _, cfg = compose_config([f"input={root / 'mics'}", *RUN_OVERRIDES])
    finally:
        GlobalHydra.instance().clear()
    return cfg, run_pipeline(cfg, root / "out")


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    """(cfg, RunResult) of one run with the report on (the default)."""
    return make_run(tmp_path_factory.mktemp("report_run"))


@pytest.fixture
def run_copy(done, tmp_path) -> Path:
    """A private copy of the run folder (inputs stay where they are)."""
    dst = tmp_path / "run"
    shutil.copytree(done[1].out_dir, dst)
    return dst


class Page(HTMLParser):
    """Collects <img> sources, <a> targets, ids and the text of a page."""

    def __init__(self):
        super().__init__()
        self.imgs, self.links, self.ids, self.text = [], [], [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a.get("src", ""))
        if tag == "a" and "href" in a:
            self.links.append(a["href"])
        if "id" in a:
            self.ids.append(a["id"])

    def handle_data(self, data):
        self.text.append(data)


def parse(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    return page


def decode_data_uri(src: str) -> Image.Image:
    m = re.fullmatch(r"data:image/(png|jpeg);base64,([A-Za-z0-9+/=]+)", src)
    assert m, f"not an embedded image: {src[:60]}"
    img = Image.open(io.BytesIO(base64.b64decode(m.group(2), validate=True)))
    img.load()
    return img


# ---------------------------------------------------------------------------
# Pure drawing functions
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("factor", [1, 3, 4, 0.5])
def test_overlay_circle_is_centred_on_the_pick_after_downsampling(factor):
    # A non-square image and an off-grid pick: a swapped x/y, a missing
    # half-pixel or a block-corner mapping would move the circle.
    m, n = 120, 200
    x, y, d = 0.61 * n * factor + 0.3, 0.43 * m * factor + 0.7, 0.4 * m * factor  # full-resolution column, row, diameter
    display = np.full((m, n), 100, dtype=np.uint8)
    rgb = plots.overlay(display, factor=factor, x=[x], y=[y], diameter=[d], colors=["#00ff00"], dashed=[False])
    assert rgb.shape == (m, n, 3)
    ink = np.clip(rgb[..., 1].astype(float) - rgb[..., 0], 0, None)  # green minus grey: antialiased coverage
    rows, cols = np.mgrid[:m, :n]
    # Display pixel j is the block of full-resolution pixels [j*f, (j+1)*f): its centre is (j + 0.5) * f - 0.5.
    exp_col, exp_row = (x + 0.5) / factor - 0.5, (y + 0.5) / factor - 0.5
    assert abs((ink * cols).sum() / ink.sum() - exp_col) < 0.05
    assert abs((ink * rows).sum() / ink.sum() - exp_row) < 0.05
    radius = (ink * np.hypot(cols - exp_col, rows - exp_row)).sum() / ink.sum()
    assert abs(radius - d / 2 / factor) < 0.5


def test_overlay_puts_title_and_legend_above_the_image():
    display = np.full((300, 400), 90, dtype=np.uint8)
    rgb = plots.overlay(display, factor=2, x=[], y=[], diameter=[], colors=[], dashed=[],
                        legend=[("bin 1", plots.bin_color(0), False), ("rejected", plots.REJECTED_COLOR, True)], title="mic")
    band = rgb.shape[0] - 300
    assert band > 10 and rgb.shape[1] == 400
    assert np.array_equal(rgb[band:, :, 0], display), "the image itself must be untouched without picks"
    assert rgb[:band].max() > 200, "title/legend text is drawn in the band"


@pytest.mark.parametrize("width", [1280, 640])
def test_a_long_legend_entry_is_wrapped_not_cut_off(width):
    # the rejected entry lists every reason; on the real liposome image Fusion-G-87 (1280 px) it ran
    # past the right edge of the overlay ("... contamination 6, faint_unsup")
    display = np.full((width, width), 90, dtype=np.uint8)
    legend = [("bin 1: 14–43 px, box 64 px  [535]", plots.bin_color(0), False),
              ("bin 2: 43–63 px, box 96 px  [34]", plots.bin_color(1), False),
              ("bin 3: 64–75 px, box 128 px  [0]", plots.bin_color(2), False),
              ("bin 4: 109 px, box 192 px  [1]", plots.bin_color(3), False),
              ("rejected  [2444: no_edge 944, weak_unsupported 771, diameter_range 699, at_border 17, contamination 6, "
               "faint_unsupported 4, speck 2, lonely 1]", plots.REJECTED_COLOR, True)]
    rgb = plots.overlay(display, factor=1, x=[], y=[], diameter=[], colors=[], dashed=[], legend=legend,
                        title="Fusion-G-87 · 570 accepted of 3014 picks")
    band = rgb.shape[0] - width
    assert np.array_equal(rgb[band:, :, 0], display), "the legend must stay in the band above the image"
    assert rgb[:band, -4:].max() < 60, "no legend text may reach the right edge (it would be cut off)"
    assert rgb[:band, : width // 2].max() > 200


def test_dashed_rejected_and_solid_accepted_circles_use_their_colours():
    display = np.zeros((200, 200), dtype=np.uint8)
    rgb = plots.overlay(display, factor=1, x=[50, 150], y=[100, 100], diameter=[60, 60],
                        colors=["#ff0000", plots.REJECTED_COLOR], dashed=[False, True])
    left, right = rgb[:, :100], rgb[:, 100:]
    assert (left[..., 0] > 200).sum() > 100 and (left[..., 1] > 100).sum() == 0
    grey_right = (right[..., 0] > 100) & (np.ptp(right.astype(int), axis=2) < 10)
    solid = int((left[..., 0] > 100).sum())
    assert 0 < grey_right.sum() < 0.9 * solid, "a dashed circle has gaps"


def test_display_image_bins_to_at_most_max_size_and_keeps_contrast():
    img = np.zeros((3000, 4000), dtype=np.float32)
    img[1000:1300, 2000:2300] = 5.0  # a bright square stays bright
    disp, f = plots.display_image(img, max_size=1600)
    assert f == 3 and disp.shape == (1000, 1333) and disp.dtype == np.uint8
    assert disp[350, 700] == 255 and disp[10, 10] == 0
    with pytest.raises(ValueError, match="clip_percentiles"):
        plots.display_image(img, clip_percentiles=(50, 10))
    tiny, f = plots.display_image(img[:150, :200], min_size=640)  # small images are enlarged, legends stay readable
    assert f == 1 / 3 and tiny.shape == (450, 600)


def test_palette_png_is_faithful():
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (64, 80), dtype=np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    rgb[10, :] = (230, 159, 0)
    rgb[20, :] = (86, 180, 233)
    with Image.open(io.BytesIO(plots.encode(rgb, "png", palette=True))) as im:
        back = np.asarray(im.convert("RGB")).astype(int)
    assert np.abs(back[10] - (230, 159, 0)).max() == 0 and np.abs(back[20] - (86, 180, 233)).max() == 0
    plain = np.ones(64, bool)
    plain[[10, 20]] = False
    assert np.abs(back[plain] - rgb[plain]).max() <= 1


def test_palette_png_is_written_at_a_fast_zlib_level():
    # zlib level 6 spent 0.068 CPU s per overlay where level 3 spends 0.038 s for a file no larger;
    # the zlib header of the image data says which (FLEVEL 1: levels 2-5, 2: level 6).
    rng = np.random.default_rng(1)
    rgb = np.repeat(rng.integers(0, 256, (64, 80, 1), dtype=np.uint8), 3, axis=2)
    png = plots.encode(rgb, "png", palette=True)
    idat = png.index(b"IDAT") + 4
    assert png[idat + 1] >> 6 == 1
    with Image.open(io.BytesIO(png)) as im:
        assert np.array_equal(np.asarray(im.convert("RGB")), (rgb // 2) * 2 + 1)


def test_text_widths_are_textpaths_measured_once_per_glyph(monkeypatch):
    # The overlay legend and title are laid out with text widths; measuring each as a whole TextPath
    # (exact extents of every Bezier curve of the text) took 0.36 CPU s per overlay, half its time.
    # The widths are the same to the bit, without building a TextPath for the text.
    import matplotlib.textpath
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import TextPath

    texts = ["bin 1: 143–192 px (14–19 nm), box 288 px  [32]",
             "rejected  [144: diameter_range 48, weak_unsupported 38,\n  no_edge 20, carbon 15, at_border 4]",
             "FoilHole_0011_K3 · 78 accepted of 222 picks · 1 Å/px   (binned x4 for display)", " x ", "AV To Wa"]
    props = [FontProperties(size=size, weight=weight) for size in (7.0, 10.3) for weight in ("normal", "bold")]
    expected = [max(TextPath((0, 0), line, prop=prop).get_extents().width for line in text.split("\n")) * 100 / 72
                for prop in props for text in texts]

    def no_textpath(*args, **kwargs):
        raise AssertionError("a TextPath was built")

    monkeypatch.setattr(matplotlib.textpath, "TextPath", no_textpath)
    assert [plots._text_px(text, prop) for prop in props for text in texts] == expected


def _rgb8(color):
    from matplotlib.colors import to_rgb

    return tuple(int(round(255 * v)) for v in to_rgb(color))


def test_palette_png_keeps_the_bin_colours_exact_among_many_others():
    # A micrograph full of one bin's anti-aliased circles and a legend marker of another bin:
    # the quantiser must not merge the rare bin colour into the common ones (bin 3's yellow
    # came out orange on a real overlay with hundreds of bin-1 picks).
    rng = np.random.default_rng(1)
    grey = rng.integers(0, 256, (200, 300), dtype=np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    w = rng.random((150, 300, 1))  # bin 1's orange blended with the grey below: thousands of distinct colours
    rgb[:150] = np.round(w * np.array(_rgb8(plots.bin_color(0))) + (1 - w) * rgb[:150]).astype(np.uint8)
    rgb[:100, ::2] = _rgb8(plots.bin_color(0))
    for k in range(len(plots.BIN_COLORS)):
        rgb[160 + 5 * k, 10:14] = _rgb8(plots.bin_color(k))  # a few pixels each
    with Image.open(io.BytesIO(plots.encode(rgb, "png", palette=True))) as im:
        back = np.asarray(im.convert("RGB")).astype(int)
    for k in range(len(plots.BIN_COLORS)):
        assert (back[160 + 5 * k, 10:14] == _rgb8(plots.bin_color(k))).all(), plots.bin_color(k)
    assert (back[:100, ::2] == _rgb8(plots.bin_color(0))).all()


def test_crop_picture_is_the_box_with_the_circle_in_the_middle():
    img = np.zeros((300, 300), dtype=np.float32)
    pic = plots.crop_picture(img, x=150.0, y=120.0, diameter=60.0, box=96, color="#ff0000", max_size=256)
    assert pic.shape == (96, 96, 3)
    rows, cols = np.nonzero(pic[..., 0].astype(int) - pic[..., 1] > 100)
    assert abs(rows.mean() - 48) < 1.0 and abs(cols.mean() - 48) < 1.0
    edge = plots.crop(img + 1, x=2.0, y=2.0, box=32)  # partly outside: filled, never fails
    assert edge.shape == (32, 32) and np.all(edge == 1)


def test_dataset_plots_are_pngs_even_without_picks():
    plan = ExtractionPlan.from_dict({"policy": "single", "pixel_size": 2.0, "bins": [
        {"index": 0, "d_min_px": 50, "d_max_px": 80, "count": 3, "box_px": 128}]})
    d = np.array([55.0, 60.0, 75.0, 20.0])
    acc = np.array([True, True, True, False])
    made = [
        plots.size_histogram(d, acc, plan=plan, pixel_size=2.0),
        plots.size_histogram(np.zeros(0), np.zeros(0, bool)),
        plots.picks_per_micrograph(["a", "b"], np.array([3, 0]), np.array([1, 0])),
        plots.picks_per_micrograph([f"m{i}" for i in range(200)], np.arange(200), np.zeros(200, int)),
        plots.score_distribution(np.array([5.0, 9, 12, 2]), acc, thresholds=[("detector.threshold", 6.0)]),
        plots.score_distribution(np.zeros(0), np.zeros(0, bool)),
        plots.diameter_vs_score(d, np.array([5.0, 9, 12, 2]), np.array([0, 0, 0, -1]), acc, plan=plan, pixel_size=2.0),
        plots.diameter_vs_score(np.zeros(0), np.zeros(0), np.zeros(0, int), np.zeros(0, bool)),
    ]
    for png in made:
        img = Image.open(io.BytesIO(png))
        assert img.format == "PNG" and min(img.size) > 100


@pytest.mark.parametrize("detector", ["edge", "dog"])
def test_score_plot_marks_the_detector_thresholds_of_every_scale_space_detector(detector):
    # the default detector, edge, scores in the same MAD units as dog/log, but its threshold and
    # weak_threshold (the weak candidates the population filter may accept) were not marked
    from lipoframe.builtin.detectors import DogParams, EdgeParams

    params = {"edge": EdgeParams(), "dog": DogParams(weak_threshold=4.5)}[detector]
    config = {"detector": {"threshold_method": "mad", "threshold": params.threshold,
                           "weak_threshold": params.weak_threshold},
              "filter": {"score": {"min_score": 9.0}}}
    assert report._thresholds(config, {"detector": detector}) == [
        ("detector.threshold", params.threshold), ("detector.weak_threshold", params.weak_threshold),
        ("filter.score.min_score", 9.0)]
    # not in score units: a percentile threshold, or another detector's threshold
    config["detector"]["threshold_method"] = "percentile"
    assert report._thresholds(config, {"detector": detector}) == [("filter.score.min_score", 9.0)]
    config["detector"]["threshold_method"] = "mad"
    assert report._thresholds(config, {"detector": "membrane"}) == [("filter.score.min_score", 9.0)]


# ---------------------------------------------------------------------------
# The report of a run
# ---------------------------------------------------------------------------
def test_run_writes_overlays_for_every_picked_micrograph(done):
    _, result = done
    out = result.out_dir
    names = sorted(r.name for r in result.results if r.status == "ok")
    assert names == ["mic_0", "mic_1", "mic_2"]
    for name in names:
        with Image.open(out / "overlays" / f"{name}_picks.png") as png:
            png.load()
            assert png.format == "PNG" and png.size[0] == 512 and png.size[1] > 512  # 512 px image + legend band
        with Image.open(out / "overlays" / "thumbs" / f"{name}.jpg") as thumb:
            thumb.load()
            assert thumb.format == "JPEG" and max(thumb.size) <= report.THUMB_SIZE
    assert not (out / "overlays" / "broken_picks.png").exists()
    index = json.loads((out / "overlays" / "index.json").read_text())
    assert set(index) == {"render_version", *names} and all(index[n]["seconds"] > 0 for n in names)


def test_report_html_is_self_contained_and_complete(done):
    cfg, result = done
    out = result.out_dir
    path = out / "report.html"
    page = parse(path)
    text = " ".join(page.text)
    # Every image is embedded and decodes; nothing is fetched from anywhere.
    assert page.imgs and all(src.startswith("data:image/") for src in page.imgs)
    for src in page.imgs:
        assert min(decode_data_uri(src).size) > 20
    raw = path.read_text()
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", raw) and "<script" not in raw
    # 4 dataset plots + 1 thumbnail per picked micrograph + crops per bin.
    n_crops = sum(1 for src in page.imgs if src.startswith("data:image/jpeg")) - 3
    assert len([s for s in page.imgs if s.startswith("data:image/png")]) == 4 and n_crops >= 2
    # Thumbnails link to the overlays, which exist.
    overlay_links = [h for h in page.links if h.startswith("overlays/")]
    assert sorted(overlay_links) == sorted([f"overlays/mic_{i}_picks.png" for i in range(3)] * 2)  # gallery + table
    assert all((out / h).is_file() for h in overlay_links)
    assert {"summary", "plots", "plan", "micrographs", "config"} <= set(page.ids)
    # Summary numbers, the plan's box sizes and the configuration are on the page.
    plan = json.loads((out / "extraction_plan.json").read_text())
    for b in plan["bins"]:
        assert str(b["box_px"]) in text
    assert f"{int(result.picks[schema.ACCEPTED].sum())}" in text and "min_score: 12" in text
    assert "broken.mrc" in text and "not a readable MRC file" in text


def test_gallery_is_sorted_worst_first(done):
    _, result = done
    raw = (result.out_dir / "report.html").read_text()
    gallery = raw[raw.index('<div class="gallery">'):]
    order = re.findall(r'<div class="n">([^<]+)</div>', gallery)
    picks = result.picks
    acc = picks[picks[schema.ACCEPTED]].groupby(schema.MICROGRAPH).size()
    rej = picks[~picks[schema.ACCEPTED]].groupby(schema.MICROGRAPH).size()
    ok = sorted(acc.index, key=lambda n: (acc.get(n, 0), -rej.get(n, 0) / (acc.get(n, 0) + rej.get(n, 0)), n))
    assert order == ["broken", *ok]


def test_report_command_rebuilds_the_same_report_from_the_folder(done, run_copy, run_cli):
    _, result = done
    (run_copy / "report.html").unlink()
    code, out, err = run_cli("report", run_copy)
    assert code == 0, err
    assert "report.html" in out and "3 unchanged" in out  # same picks and plan: overlays reused
    # nothing drawn: no "with 0 worker(s) (0.00 s, 0.00 CPU s each)" timing of nothing
    assert re.search(r"^overlays +0 drawn, 3 unchanged, 0 failed$", out, re.M), out
    html = " ".join(" ".join(parse(run_copy / "report.html").text).split())
    assert "0 overlays drawn, 3 unchanged and reused, 0 failed" in html
    page = parse(run_copy / "report.html")
    assert len(page.imgs) == len(parse(result.out_dir / "report.html").imgs)
    # The folder holds accepted picks in picks.csv and every pick in micrographs/:
    # the report recovers the run's table, rejected picks and bins included.
    loaded = report.load_run(run_copy).picks
    cols = [schema.MICROGRAPH, schema.ACCEPTED, schema.SIZE_BIN, schema.REASON]
    a = result.picks.sort_values([schema.MICROGRAPH, schema.X, schema.Y], kind="stable")[cols].reset_index(drop=True)
    b = loaded.sort_values([schema.MICROGRAPH, schema.X, schema.Y], kind="stable")[cols].reset_index(drop=True)
    pd.testing.assert_frame_equal(a.astype(str), b.astype(str))
    assert (~a[schema.ACCEPTED]).sum() > 0


def test_a_rejected_pick_beside_an_accepted_one_stays_rejected_in_the_report():
    # On the real liposome image Synergy-2-31 a no_edge candidate lies 0.3 px from an accepted pick
    # of nearly the same size; matched to picks.csv by centre, it was counted as accepted too: the
    # report said 879 accepted picks (picks.csv: 878) and drew it as a second solid circle.
    work = pd.DataFrame({schema.MICROGRAPH: "m", schema.X: [100.0, 100.3, 300.0], schema.Y: [100.0, 100.1, 50.0],
                         schema.DIAMETER: [40.0, 39.7, 41.0], schema.ACCEPTED: [True, False, True],
                         schema.REASON: ["", "no_edge", ""]})
    for rejected_first in (False, True):
        w = work.iloc[[1, 0, 2] if rejected_first else [0, 1, 2]].reset_index(drop=True)
        exported = work[work[schema.ACCEPTED]].assign(**{schema.SIZE_BIN: [0, 1]}).reset_index(drop=True)
        out = report._with_bins(w, exported, None)
        assert int(out[schema.ACCEPTED].sum()) == 2
        rejected = out[out[schema.REASON] == "no_edge"]
        assert len(rejected) == 1 and not rejected[schema.ACCEPTED].any()
        assert rejected[schema.SIZE_BIN].tolist() == [schema.REJECTED_BIN]
        assert sorted(out.loc[out[schema.ACCEPTED], schema.SIZE_BIN]) == [0, 1]


def test_plan_report_gives_the_picking_run_time_not_the_plans(run_copy, run_cli, monkeypatch):
    # `lipoframe plan RUN --report` showed its own few seconds as the run's "run time" (and per
    # micrograph), while run_summary.json and `lipoframe report RUN` keep the picking run's
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from lipoframe.merge import compose_config

    try:
        composed, _ = compose_config(RUN_OVERRIDES)
    finally:
        GlobalHydra.instance().clear()
    (run_copy / "config.yaml").write_text(OmegaConf.to_yaml(composed))  # the run's configuration, as lipoframe run saves it
    summary_path = run_copy / "run_summary.json"
    summary = json.loads(summary_path.read_text())
    summary["seconds"] = 1234.5  # as after a long picking run
    summary_path.write_text(json.dumps(summary))
    monkeypatch.chdir(run_copy.parent)  # the folder named relative to here, as users type it
    code, out, err = run_cli("plan", run_copy.name, "binning.n_bins=3", "--report")
    assert code == 0, err
    # it said nothing of the report it wrote, then a path relative to the shell's folder where
    # `lipoframe report` prints an absolute one
    assert f"report       {run_copy.resolve() / 'report.html'}" in out.splitlines()
    assert json.loads(summary_path.read_text())["seconds"] == 1234.5
    text = " ".join(" ".join(parse(run_copy / "report.html").text).split())
    assert "run time 1,234.5 s" in text, text[text.find("run time") - 20:text.find("run time") + 80]
    assert json.loads((run_copy / "extraction_plan.json").read_text())["policy"] == "quantile"
    assert len(json.loads((run_copy / "extraction_plan.json").read_text())["bins"]) == 3


def test_run_time_per_micrograph_counts_the_micrographs_the_run_picked(run_copy, run_cli):
    # It divided by every micrograph listed, failed and skipped (resumed) ones included: 0.12 s per
    # micrograph for a resumed run that picked none, while run_summary.json had no speed at all.
    summary_path = run_copy / "run_summary.json"
    summary = json.loads(summary_path.read_text())
    assert summary["micrographs"]["ok"] == 3 and summary["micrographs"]["failed"] == 1
    summary.update(seconds=12.0, micrographs_per_s=0.25)
    summary_path.write_text(json.dumps(summary))
    code, _, err = run_cli("report", run_copy, "-j", "1", "--no-overlays")
    assert code == 0, err
    text = " ".join(" ".join(parse(run_copy / "report.html").text).split())
    assert "run time 12.0 s 4.00 s per micrograph picked" in text, text[text.find("run time"):text.find("run time") + 80]
    summary["micrographs"].update(ok=0, skipped=3)  # a resumed run: everything picked before
    summary.update(seconds=0.6, micrographs_per_s=None)
    summary_path.write_text(json.dumps(summary))
    code, _, err = run_cli("report", run_copy, "-j", "1", "--no-overlays")
    assert code == 0, err
    text = " ".join(" ".join(parse(run_copy / "report.html").text).split())
    assert "run time 0.6 s no micrograph picked by this run" in text, text[text.find("run time"):text.find("run time") + 80]


def _report_of_summary(run_copy, run_cli, change) -> tuple[dict, str]:
    """The run_summary.json of ``run_copy`` after ``change`` (which edits it in place), and the text of the
    report `lipoframe report` then draws of the folder (no overlays)."""
    summary_path = run_copy / "run_summary.json"
    summary = json.loads(summary_path.read_text())
    change(summary)
    summary_path.write_text(json.dumps(summary))
    code, _, err = run_cli("report", run_copy, "-j", "1", "--no-overlays")
    assert code == 0, err
    return summary, " ".join(" ".join(parse(run_copy / "report.html").text).split())


def test_report_of_an_interrupted_run_says_so(run_copy, run_cli):
    # `lipoframe report` of a run stopped with Ctrl-C said "3 picked" and nothing else, as if the
    # run were complete; the console summary says INTERRUPTED.
    def interrupted(summary):
        summary["micrographs"].update(total=9, not_done=5)
        summary["interrupted"] = True

    _, text = _report_of_summary(run_copy, run_cli, interrupted)
    assert "micrographs 3 picked · 1 failed · 5 not done" in text
    assert "Interrupted : 5 of 9 micrographs not picked yet; run the same command again to continue" in text


def test_report_of_a_watch_session_while_it_runs_shows_files_not_finished_apart(run_copy, run_cli):
    # The run_summary.json of a watch=true session's update lists a file that failed but may be a copy still
    # being written under not_finished, not among the failures: `lipoframe report` left it out altogether.
    def at_an_update(summary):
        summary["not_finished"], summary["failures"] = summary["failures"], []
        summary["micrographs"].update(failed=0, not_finished=1)
        summary["watch"] = True

    summary, text = _report_of_summary(run_copy, run_cli, at_an_update)
    assert "micrographs 3 picked · 1 not finished yet" in text
    (error,) = [f["error"] for f in summary["not_finished"]]
    assert f"broken not finished {error}" in text  # its card in the gallery
    assert f"broken not finished 0 0 {error}" in text  # its row of the table
    assert " 1 failed" not in text


def test_console_summary_times_the_report_apart_from_the_picking(done):
    # The report's overlays can take longer than the picking (32 K3 and 4096² micrographs: 24 s
    # of a 45 s run, after "time 16.6 s"); the console said nothing of them.
    from lipoframe.runner import format_summary

    _, result = done
    summary = result.summary()
    report = summary["report"]
    assert (report["overlays_drawn"], report["overlays_reused"], report["overlays_failed"]) == (3, 0, 0)
    assert report["seconds"] > 0
    lines = format_summary(summary).splitlines()
    said = [line for line in lines if line.startswith("report ")]
    assert said == [f"report       {report['seconds']:.1f} s more: 3 overlays drawn with 1 worker(s); "
                    "runner.report=false leaves it out"]
    assert lines.index(said[0]) == lines.index(next(line for line in lines if line.startswith("time "))) + 1
    # run_summary.json is written before the report: it holds the picking's time only
    assert "report" not in json.loads((result.out_dir / "run_summary.json").read_text())


def test_console_summary_has_no_report_line_without_a_report(done):
    from lipoframe.runner import format_summary

    _, result = done
    summary = {k: v for k, v in result.summary().items() if k != "report"}
    assert not [line for line in format_summary(summary).splitlines() if line.startswith("report ")]


def test_report_lists_as_many_notes_as_the_console_summary(run_copy, run_cli):
    from lipoframe.runner import MAX_LISTED, format_summary

    summary_path = run_copy / "run_summary.json"
    summary = json.loads(summary_path.read_text())
    summary["notes"] = [f"note number {i}." for i in range(MAX_LISTED + 5)]
    summary_path.write_text(json.dumps(summary))
    code, _, err = run_cli("report", run_copy, "-j", "1", "--no-crops")
    assert code == 0, err
    text = " ".join(parse(run_copy / "report.html").text)
    console = format_summary(summary)
    for i in range(MAX_LISTED + 5):
        shown = f"note number {i}." in text
        assert shown == (i < MAX_LISTED) == (f"NOTE   note number {i}." in console)
    assert "and 5 more notes" in text and "and 5 more" in console


def test_every_link_of_the_report_still_resolves_after_the_run_folder_moves(done, run_copy, run_cli, tmp_path):
    # Copying or moving the whole folder (to a laptop, a web share) keeps the report whole:
    # images are embedded and every link is a URL relative to the folder, escaped as a URL
    # (a file name with '#', '%' or a blank is one path, not a path and a fragment).
    (run_copy / "notes #1 100%.txt").write_text("the user's own notes\n")
    code, _, err = run_cli("report", run_copy)
    assert code == 0, err
    moved = tmp_path / "laptop" / "run copy"
    moved.parent.mkdir()
    run_copy.rename(moved)
    page = parse(moved / "report.html")
    assert page.imgs and all(src.startswith("data:image/") for src in page.imgs)
    targets = [h for h in page.links if not h.startswith("#")]
    paths = set()
    for href in targets:
        url = urlsplit(href)
        assert not (url.scheme or url.netloc or url.query or url.fragment) and not url.path.startswith("/"), href
        paths.add(unquote(url.path))
        assert (moved / unquote(url.path)).is_file(), href
    assert {"notes #1 100%.txt", "picks.csv", "extraction_plan.json", *(f"overlays/mic_{i}_picks.png" for i in range(3))} <= paths
    assert str(done[1].out_dir) not in " ".join(targets)


def test_report_without_picks_csv_uses_the_per_micrograph_tables(done, run_copy):
    _, result = done
    (run_copy / "picks.csv").unlink()
    loaded = report.load_run(run_copy).picks
    assert len(loaded) == len(result.picks)
    merged = loaded.merge(result.picks, on=[schema.MICROGRAPH, schema.X, schema.Y], suffixes=("", "_run"))
    assert len(merged) == len(loaded)
    assert (merged[schema.SIZE_BIN] == merged[f"{schema.SIZE_BIN}_run"]).all()
    assert (merged[schema.ACCEPTED] == merged[f"{schema.ACCEPTED}_run"]).all()


def test_force_redraws_and_a_changed_plan_redraws(run_copy, run_cli):
    code, out, _ = run_cli("report", run_copy, "--force", "-j", "1")
    assert code == 0 and "3 drawn" in out
    plan = json.loads((run_copy / "extraction_plan.json").read_text())
    plan["bins"][0]["box_px"] += 32
    (run_copy / "extraction_plan.json").write_text(json.dumps(plan))
    code, out, _ = run_cli("report", run_copy, "-j", "1", "--no-crops")
    assert code == 0 and "3 drawn" in out, "the legend shows box sizes, so every overlay changes"


def _interrupted_on_the_third_overlay(run_copy, run_cli, monkeypatch, *, killed: bool):
    """Change every overlay (a new box in the legend), then stop the report as it starts drawing the third
    (Ctrl-C, or, ``killed``, kill -9: only what the index held on disk then counts). The same report again."""
    plan = json.loads((run_copy / "extraction_plan.json").read_text())
    plan["bins"][0]["box_px"] += 32
    (run_copy / "extraction_plan.json").write_text(json.dumps(plan))
    index = run_copy / "overlays" / "index.json"
    drawn, on_disk = [], {}
    real = report.render_job

    def render_two(job, readers=None):
        if len(drawn) == 2:
            on_disk["index"] = index.read_text()
            raise KeyboardInterrupt
        drawn.append(job.name)
        return real(job, readers)

    monkeypatch.setattr(report, "render_job", render_two)
    code, _, err = run_cli("report", run_copy, "-j", "1")
    assert code == 130 and len(drawn) == 2, err
    if killed:
        index.write_text(on_disk["index"])  # what kill -9 leaves: no handler runs
    monkeypatch.setattr(report, "render_job", real)
    return drawn


@pytest.mark.parametrize("killed", [False, True], ids=["Ctrl-C", "kill -9"])
def test_a_report_stopped_while_drawing_redraws_only_the_rest(run_copy, run_cli, monkeypatch, killed):
    """overlays/index.json was written only at the end: a report stopped on the way redrew every overlay."""
    # kill -9: the index is rewritten after each overlay here (at most every INDEX_SAVE_SECONDS otherwise)
    monkeypatch.setattr(report, "INDEX_SAVE_SECONDS", 0.0 if killed else 1e9)
    monkeypatch.setattr(report, "INDEX_SAVE_SHARE", float("inf"))
    drawn = _interrupted_on_the_third_overlay(run_copy, run_cli, monkeypatch, killed=killed)
    index = json.loads((run_copy / "overlays" / "index.json").read_text())
    assert set(index) == {"render_version", "mic_0", "mic_1", "mic_2"}  # the one not drawn keeps its entry
    code, out, err = run_cli("report", run_copy, "-j", "1")
    assert code == 0 and "1 drawn" in out and "2 unchanged" in out, out + err
    # the same overlays and index as a report drawn in one go
    resumed = {p.name: p.read_bytes() for p in (run_copy / "overlays").rglob("*") if p.is_file() and p.name != "index.json"}
    keys = {n: (e["key"], e["crops"]) for n, e in json.loads((run_copy / "overlays" / "index.json").read_text()).items()
            if isinstance(e, dict)}
    code, out, _ = run_cli("report", run_copy, "-j", "1", "--force")
    assert code == 0 and "3 drawn" in out
    assert resumed == {p.name: p.read_bytes() for p in (run_copy / "overlays").rglob("*") if p.is_file() and p.name != "index.json"}
    assert keys == {n: (e["key"], e["crops"]) for n, e in json.loads((run_copy / "overlays" / "index.json").read_text()).items()
                    if isinstance(e, dict)}
    assert len(drawn) == 2


def test_a_report_killed_before_its_first_save_redraws_everything_it_changed(run_copy, run_cli, monkeypatch):
    """The index on disk never records an overlay that was not drawn with its new inputs."""
    monkeypatch.setattr(report, "INDEX_SAVE_SECONDS", 1e9)
    _interrupted_on_the_third_overlay(run_copy, run_cli, monkeypatch, killed=True)
    code, out, err = run_cli("report", run_copy, "-j", "1")
    assert code == 0 and "3 drawn" in out, out + err


def test_a_report_command_stopped_while_drawing_says_so_in_run_summary(run_copy, run_cli, monkeypatch):
    """`lipoframe report` stopped by Ctrl-C or SIGTERM (exit 130) recorded nothing in run_summary.json, which
    still said the run was done with its report, as a run stopped while drawing its report does not."""
    path = run_copy / "run_summary.json"
    before = json.loads(path.read_text())
    assert before["interrupted"] is False
    _interrupted_on_the_third_overlay(run_copy, run_cli, monkeypatch, killed=False)
    again = f"the picks, exports and extraction plan are complete; `lipoframe report {run_copy}` writes it"
    said = f"interrupted while writing the report (2 of 3 overlays drawn): {again}"
    assert json.loads(path.read_text()) == {**before, "interrupted": True, "notes": [*before["notes"], said],
                                            "run_notes": [*before["run_notes"], said]}
    # Stopped again before drawing the last one: the note says how far this report got, once.
    real = report.render_job

    def stop(job, readers=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(report, "render_job", stop)
    code, _, err = run_cli("report", run_copy, "-j", "1")
    assert code == 130, err
    said = f"interrupted while writing the report (0 of 1 overlay drawn, 2 unchanged): {again}"
    assert json.loads(path.read_text()) == {**before, "interrupted": True, "notes": [*before["notes"], said],
                                            "run_notes": [*before["run_notes"], said]}
    monkeypatch.setattr(report, "render_job", real)
    code, out, err = run_cli("report", run_copy, "-j", "1")
    assert code == 0 and "1 drawn" in out, out + err
    assert json.loads(path.read_text()) == before  # the report written settles both


def test_a_report_command_stopped_on_a_run_stopped_while_picking_leaves_its_summary(run_copy, run_cli, monkeypatch, caplog):
    """The run is not complete: its summary says so already, and the warning must not call its picks complete."""
    path = run_copy / "run_summary.json"
    summary = json.loads(path.read_text())
    summary["micrographs"].update(total=9, not_done=5)
    summary["interrupted"] = True
    path.write_text(json.dumps(summary))

    def stop(job, readers=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(report, "render_job", stop)
    with caplog.at_level(logging.WARNING, logger="lipoframe"):
        code, _, err = run_cli("report", run_copy, "-j", "1", "--force")
    assert code == 130, err
    assert json.loads(path.read_text()) == summary
    said = [r.getMessage() for r in caplog.records if "interrupted while writing the report" in r.getMessage()]
    assert said == [f"interrupted while writing the report (0 of 3 overlays drawn); `lipoframe report {run_copy}` writes it"]


_SIGTERM_SCRIPT = """
import os, signal, sys
from lipoframe import report
real = report.render_job
def render(job, readers=None):
    if job.name == "mic_1":  # `kill` as the second overlay starts
        os.kill(os.getpid(), signal.SIGTERM)
    return real(job, readers)
report.render_job = render
from lipoframe.cli import main
sys.exit(main(["report", sys.argv[1], "-j", "1", "--force"]))
"""


def test_a_report_command_stopped_by_sigterm_says_so_in_run_summary(run_copy):
    import sys

    root = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    before = json.loads((run_copy / "run_summary.json").read_text())
    done = subprocess.run([sys.executable, "-c", _SIGTERM_SCRIPT, str(run_copy)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 130, done.stderr
    summary = json.loads((run_copy / "run_summary.json").read_text())
    assert summary["interrupted"] is True and summary["notes"] == [
        *before["notes"], f"interrupted while writing the report (1 of 3 overlays drawn): the picks, exports and extraction plan are "
                          f"complete; `lipoframe report {run_copy}` writes it"]
    assert not (run_copy / ".lipoframe.lock").exists() and not list(run_copy.glob(".*.tmp*"))


_WORKERS_STOPPED_SCRIPT = """
import os, signal, sys, time
from lipoframe import report
signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, also under a runner that ignores Ctrl-C
real_init, real = report._init_worker, report.render_job
def init(readers):  # the second worker sets itself up only after the stop: Ctrl-C must not kill it before
    try:
        os.close(os.open(sys.argv[2] + ".first", os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        while not os.path.exists(sys.argv[2] + ".stopped"):
            time.sleep(0.01)
    real_init(readers)
def render(job, readers=None):  # in a worker process (forked: it sees this module's render_job)
    if job.name == "mic_0":  # as the first overlay starts: Ctrl-C (the whole process group), or `kill` of lipoframe
        if sys.argv[3] == "ctrl-c":
            os.killpg(os.getpgid(0), signal.SIGINT)
        else:
            os.kill(os.getppid(), signal.SIGTERM)
        open(sys.argv[2] + ".stopped", "w").close()
    res = real(job, readers)
    if res.ok:  # its files are all written
        with open(sys.argv[2], "a") as f:
            f.write(job.name + "\\n")
    return res
report._init_worker, report.render_job = init, render
if sys.argv[3] == "sigterm-while-handing-out":  # the stop arrives before the first job's submit() has returned
    from concurrent.futures import ProcessPoolExecutor
    real_submit = ProcessPoolExecutor.submit
    def submit(self, fn, job, *args, **kwargs):
        fut = real_submit(self, fn, job, *args, **kwargs)
        if job.name == "mic_0":
            t0 = time.monotonic()
            while not os.path.exists(sys.argv[2] + ".stopped") and time.monotonic() - t0 < 60:
                time.sleep(0.01)
            time.sleep(0.2)
        return fut
    ProcessPoolExecutor.submit = submit
from lipoframe.runner import _start_method
if _start_method() != "fork":  # decided in this process (not in pytest's, whose other tests may have left threads)
    sys.exit("the report's workers would not be forked: " + _start_method())
from lipoframe.cli import main
sys.exit(main(["report", sys.argv[1], "-j", "2"]))
"""


@pytest.fixture(scope="module")
def six_mics(tmp_path_factory) -> Path:
    """A run folder of 6 micrographs, without a report."""
    from hydra.core.global_hydra import GlobalHydra

    from lipoframe.merge import compose_config
    from lipoframe.runner import run_pipeline

    root = tmp_path_factory.mktemp("six_mics")
    for i in range(6):
        write_mrc(root / "mics" / f"mic_{i}.mrc", tiny_image(seed=i % 3)[0])
    try:
        _, cfg = compose_config([f"input={root / 'mics'}", *RUN_OVERRIDES, "runner.report=false"])
    finally:
        GlobalHydra.instance().clear()
    return run_pipeline(cfg, root / "out").out_dir


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(),
                    reason="needs fork (the workers see the test's render_job)")
@pytest.mark.parametrize("how", ["ctrl-c", "sigterm", "sigterm-while-handing-out"])
def test_a_report_stopped_with_several_workers_records_the_overlays_they_finish(six_mics, run_cli, tmp_path, how):
    """With -j 2, Ctrl-C or SIGTERM let the workers finish the overlays handed out to them (about two each), but
    overlays/index.json recorded none of them: the next report drew them again, and the note did not count them.
    Ctrl-C also reached the workers: the overlay in progress stopped half-drawn, and a worker still starting died
    (BrokenProcessPool). A SIGTERM that came while the jobs were handed out (a worker had started the first one
    before submit() returned its future) lost that future: its overlay was drawn, and the index was not written."""
    import sys

    run = tmp_path / "run"
    shutil.copytree(six_mics, run)
    root = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    finished = tmp_path / "finished.txt"
    done = subprocess.run([sys.executable, "-c", _WORKERS_STOPPED_SCRIPT, str(run), str(finished), how], env=env,
                          capture_output=True, text=True, timeout=300, start_new_session=True)
    assert done.returncode == 130, done.stderr
    drawn = finished.read_text().split() if finished.exists() else []
    assert "mic_0" in drawn and len(drawn) == len(set(drawn)), drawn
    index = json.loads((run / "overlays" / "index.json").read_text())
    assert sorted(n for n in index if n != "render_version") == sorted(drawn)
    summary = json.loads((run / "run_summary.json").read_text())
    assert summary["interrupted"] is True and summary["notes"][-1].startswith(
        f"interrupted while writing the report ({len(drawn)} of 6 overlays drawn): "), summary["notes"]
    code, out, err = run_cli("report", run, "-j", "1")
    assert code == 0 and f"{6 - len(drawn)} drawn" in out and f"{len(drawn)} unchanged" in out, out + err


def test_a_report_whose_overlay_worker_is_killed_keeps_the_overlays_drawn(run_copy, run_cli, monkeypatch):
    """A process drawing overlays killed outright (the out-of-memory killer) ended `lipoframe report` with a
    BrokenProcessPool traceback, and the overlays drawn before it were drawn again by the next report."""
    from concurrent.futures.process import BrokenProcessPool

    monkeypatch.setattr(report, "INDEX_SAVE_SECONDS", 1e9)
    plan = json.loads((run_copy / "extraction_plan.json").read_text())
    plan["bins"][0]["box_px"] += 32  # every overlay changes
    (run_copy / "extraction_plan.json").write_text(json.dumps(plan))

    def third_worker_killed(jobs, readers, *, workers=1, progress=False, on_result=None):
        for job in jobs[:2]:
            on_result(report.render_job(job, readers))
        raise BrokenProcessPool("A process in the process pool was terminated abruptly while the future was running or pending.")

    monkeypatch.setattr(report, "render_overlays", third_worker_killed)
    code, out, err = run_cli("report", run_copy, "-j", "2")
    assert code == 1 and out == "" and err.count("\n") == 1, err
    assert err.startswith(f"lipoframe report: {run_copy}: a process drawing the overlays ended abruptly"), err
    monkeypatch.undo()
    code, out, err = run_cli("report", run_copy, "-j", "1")
    assert code == 0 and "1 drawn" in out and "2 unchanged" in out, out + err


def test_missing_micrograph_file_gives_a_report_without_its_overlay(done, run_copy, run_cli, tmp_path):
    # Point one micrograph at a file that no longer exists.
    meta_file = run_copy / "micrographs" / "mic_1.json"
    info = json.loads(meta_file.read_text())
    info["meta"]["path"] = str(tmp_path / "moved_away.mrc")
    meta_file.write_text(json.dumps(info))
    code, out, err = run_cli("report", run_copy, "-j", "1")
    # The report is written, and the exit code says that an overlay failed.
    assert code == 1 and "1 failed" in out and "1 overlay(s) failed" in err
    assert "0 drawn" in out and "2 unchanged" in out  # the failed one is not counted as reused (it said 3)
    text = " ".join(parse(run_copy / "report.html").text)
    assert "moved_away.mrc" in text
    # the path once, then the problem: it was "path: InputError: path: file not found"
    assert "moved_away.mrc: file not found" in text and "moved_away.mrc: InputError" not in text, text
    assert "mic_0" in text and "mic_2" in text
    # Its last good overlay stays on disk (a moved project gets its images back), unlinked from the report.
    assert (run_copy / "overlays" / "mic_1_picks.png").is_file() and "mic_1_picks.png" not in (run_copy / "report.html").read_text()
    assert (run_copy / "overlays" / "mic_0_picks.png").is_file()
    # Put the path back: the overlay is reused, not drawn again.
    info["meta"]["path"] = str(done[1].out_dir.parent / "mics" / "mic_1.mrc")
    meta_file.write_text(json.dumps(info))
    code, out, err = run_cli("report", run_copy, "-j", "1")
    assert code == 0 and "0 drawn" in out, out + err


def test_a_rerun_without_a_micrograph_removes_its_overlay(done, run_copy):
    from hydra.core.global_hydra import GlobalHydra

    from lipoframe.merge import compose_config
    from lipoframe.runner import run_pipeline

    cfg, _ = done
    ov = run_copy / "overlays"
    old = json.loads((ov / "index.json").read_text())
    assert (ov / "mic_2_picks.png").is_file() and (ov / "thumbs" / "mic_2.jpg").is_file()
    crops_2 = set(old["mic_2"]["crops"])
    assert crops_2 and all((ov / "crops" / c).is_file() for c in crops_2)
    mics = Path(cfg.input[0])
    try:
        _, again = compose_config([f"input=[{mics / 'mic_0.mrc'},{mics / 'mic_1.mrc'}]", *RUN_OVERRIDES])
    finally:
        GlobalHydra.instance().clear()
    run_pipeline(again, run_copy)
    index = json.loads((ov / "index.json").read_text())
    assert set(index) == {"render_version", "mic_0", "mic_1"}
    assert not (ov / "mic_2_picks.png").exists() and not (ov / "thumbs" / "mic_2.jpg").exists()
    kept = {c for n in ("mic_0", "mic_1") for c in index[n]["crops"]}
    assert all((ov / "crops" / c).is_file() for c in kept)
    assert sorted(p.name for p in (ov / "crops").iterdir()) == sorted(kept)
    for name in ("mic_0", "mic_1"):
        assert (ov / f"{name}_picks.png").is_file() and (ov / "thumbs" / f"{name}.jpg").is_file()


@pytest.mark.parametrize(("shape", "problem"), [
    ("list", "a JSON list, not an object"),
    ("entry", "the entry 'mic_1' is a JSON int, not an object"),
    ("crops", "the crops of 'mic_1' are not a list of file names"),
])
def test_an_overlay_index_that_is_json_of_another_shape_is_redrawn_with_a_warning(run_copy, run_cli, caplog, shape, problem):
    # Before, valid JSON that was no object of entries (a list, an entry that is a number, crops that are a
    # number) made lipoframe report crash (AttributeError/TypeError), where a file that is not JSON is redrawn.
    index = run_copy / "overlays" / "index.json"
    good = json.loads(index.read_text())
    bad = {"list": [1, 2], "entry": {**good, "mic_1": 5}, "crops": {**good, "mic_1": {**good["mic_1"], "crops": 3}}}
    index.write_text(json.dumps(bad[shape]))
    with caplog.at_level(logging.WARNING, logger="lipoframe"):
        code, out, err = run_cli("report", run_copy)
    assert code == 0, err
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert f"report: cannot use {index} ({problem}): every overlay is drawn again" in said
    assert re.search(r"^overlays +3 drawn in .*, 0 unchanged, 0 failed$", out, re.M), out
    again = json.loads(index.read_text())
    assert set(again) == {"render_version", "mic_0", "mic_1", "mic_2"}
    assert all(isinstance(again[n]["crops"], list) for n in ("mic_0", "mic_1", "mic_2"))


def test_no_overlays_option_reads_no_micrograph(run_copy, run_cli):
    shutil.rmtree(run_copy / "overlays")
    code, out, _ = run_cli("report", run_copy, "--no-overlays")
    assert code == 0
    assert not (run_copy / "overlays").exists()
    page = parse(run_copy / "report.html")
    assert len(page.imgs) == 4  # the dataset plots only
    # Each card says why it has no picture, not "no overlay" as if drawing had failed.
    text = (run_copy / "report.html").read_text()
    assert "no overlay" not in text and text.count("overlay not drawn (--no-overlays)") == 3
    assert "Overlays were not drawn (lipoframe report --no-overlays)" in text and "0 overlays drawn" not in text


def test_report_command_rejects_a_folder_that_is_not_a_run(tmp_path, run_cli):
    code, _, err = run_cli("report", tmp_path)
    # A usage error (2), as for plan, evaluate and merge; 1 is kept for overlays that failed.
    assert code == 2 and str(tmp_path) in err and "not a lipoframe run folder" in err
    assert not list(tmp_path.iterdir()), "no lock file left in a folder lipoframe never wrote"
    code, _, err = run_cli("report", tmp_path / "nope")
    assert code == 2 and "no such folder" in err


@pytest.mark.parametrize("holder", ["run", "plan", "report"])
def test_report_command_refuses_a_folder_another_command_is_writing(run_copy, run_cli, holder):
    """`lipoframe report` took no lock: two reports at once, or one while a run or plan wrote into the
    folder, both rewrote the overlays, overlays/index.json, report.html and run_summary.json."""
    from lipoframe.runner import folder_lock

    before = {p: p.read_bytes() for p in run_copy.rglob("*") if p.is_file() and p.name != ".lipoframe.lock"}
    with folder_lock(run_copy, holder):  # another open file: flock refuses it in this process too
        code, out, err = run_cli("report", run_copy, "--force", "-j", "1")
    assert code == 1 and out == ""
    assert err.strip().splitlines() == [f"lipoframe report: {run_copy}: another lipoframe {holder} (pid {os.getpid()}) "
                                        "is writing to this output folder"]
    assert {p: p.read_bytes() for p in run_copy.rglob("*") if p.is_file() and p.name != ".lipoframe.lock"} == before
    code, out, _ = run_cli("report", run_copy, "-j", "1")  # released
    assert code == 0 and "report" in out


def test_a_report_holds_the_folder_against_a_run(run_copy):
    from lipoframe.records import InputError
    from lipoframe.runner import folder_lock, output_folder

    with folder_lock(run_copy, "report"):
        with pytest.raises(InputError, match=rf"another lipoframe report \(pid {os.getpid()}\) is writing"):
            with output_folder(run_copy, "plan"):
                pass


@pytest.mark.parametrize("read_only", [True, False], ids=["read-only mount", "disk full"])
def test_report_command_into_a_folder_it_cannot_write_says_so_in_one_line(run_copy, run_cli, monkeypatch, read_only):
    """A run folder on a read-only mount (or a full disk) ended `lipoframe report` with an OSError traceback."""
    import errno
    import types

    from lipoframe.io import atomic

    error = OSError(errno.EROFS if read_only else errno.ENOSPC, os.strerror(errno.EROFS if read_only else errno.ENOSPC))

    def refuse(*args, **kwargs):
        raise error

    # (the lock file holds the pid and command of the process that holds the folder, the report's now)
    before = {p: p.read_bytes() for p in run_copy.rglob("*") if p.is_file() and p.name != ".lipoframe.lock"}
    monkeypatch.setattr(atomic, "tempfile", types.SimpleNamespace(mkstemp=refuse))  # every file the report writes
    if read_only:
        monkeypatch.setattr(report, "tempfile", types.SimpleNamespace(TemporaryFile=refuse))
    code, _, err = run_cli("report", run_copy)  # the overlays are unchanged: the first write is the report's own
    assert code == 1
    assert err.strip().splitlines() == [(f"lipoframe report: {run_copy}: cannot write "
                                         f"{'into the run folder' if read_only else 'the report'} ({error.strerror})")]
    assert {p: p.read_bytes() for p in run_copy.rglob("*") if p.is_file() and p.name != ".lipoframe.lock"} == before  # nothing half-written


@pytest.fixture(scope="module")
def one_mic_run(tmp_path_factory):
    """(cfg, folder) of a run of one micrograph (``mic_0``) with its report, the first of :func:`_run_twice_second_report_raising`."""
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from lipoframe.merge import compose_config
    from lipoframe.runner import run_pipeline

    root = tmp_path_factory.mktemp("one_mic_run")
    write_mrc(root / "mics" / "mic_0.mrc", tiny_image(seed=0)[0])
    try:
        composed, cfg = compose_config([f"input={root / 'mics'}", *RUN_OVERRIDES])
    finally:
        GlobalHydra.instance().clear()
    assert run_pipeline(cfg, root / "out").ok and (root / "out" / "report.html").is_file()
    (root / "out" / "config.yaml").write_text(OmegaConf.to_yaml(composed))  # the run's settings, as `lipoframe run` records them
    return cfg, root / "out"


def _run_twice_second_report_raising(one_mic_run, tmp_path, monkeypatch, error):
    """Run into one folder twice: the first writes its report (a copy of ``one_mic_run`` in ``tmp_path / "out"``),
    the second's report raises ``error``."""
    from lipoframe.runner import run_pipeline

    cfg, first = one_mic_run
    shutil.copytree(first, tmp_path / "out")

    def boom(*args, **kwargs):
        raise error

    monkeypatch.setattr(report, "write_report", boom)
    return lambda: run_pipeline(cfg, tmp_path / "out")


def test_a_failing_report_is_logged_and_never_fails_the_run(one_mic_run, tmp_path, monkeypatch, caplog):
    again = _run_twice_second_report_raising(one_mic_run, tmp_path, monkeypatch, RuntimeError("disk on fire"))
    with caplog.at_level(logging.ERROR, logger="lipoframe"):
        result = again()
    assert result.ok and (tmp_path / "out" / "run_summary.json").is_file()
    # The first run's report would show this run as if it were that one.
    assert not (tmp_path / "out" / "report.html").exists()
    assert any("disk on fire" in r.getMessage() and "report.html" in r.getMessage() for r in caplog.records)


def test_a_run_interrupted_while_writing_its_report_says_so(one_mic_run, tmp_path, monkeypatch, capsys):
    # Ctrl-C or SIGTERM during the report: run_summary.json said 'interrupted: false'
    # and the earlier run's report.html stayed.
    again = _run_twice_second_report_raising(one_mic_run, tmp_path, monkeypatch, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        again()
    out = tmp_path / "out"
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["interrupted"] is True
    assert f"interrupted while writing the report: the picks, exports and extraction plan are complete; `lipoframe report {out}` writes it" in summary["notes"]
    assert not (out / "report.html").exists()
    assert (out / "picks.csv").is_file() and (out / "extraction_plan.json").is_file()
    # `lipoframe report OUT` or `lipoframe plan OUT --report` then writes the report: a page that calls the picking
    # neither unfinished (it is complete) nor its report missing, and run_summary.json drops the flag and the note
    # (they stayed, and a plan repeated the note)
    from lipoframe.plancmd import main as plan_main
    from lipoframe.report import cmd_report

    monkeypatch.undo()
    stopped = (out / "run_summary.json").read_text()
    for write in (lambda: cmd_report([str(out), "--no-overlays"]), lambda: plan_main([str(out), "--report"])):
        (out / "run_summary.json").write_text(stopped)
        capsys.readouterr()
        assert write() == 0
        assert "interrupted while writing the report" not in capsys.readouterr().out
        text = " ".join(" ".join(parse(out / "report.html").text).split())
        assert "interrupted while writing the report" not in text and "Interrupted" not in text, text[:3000]
        summary = json.loads((out / "run_summary.json").read_text())
        assert summary["interrupted"] is False and summary["micrographs"]["total"] == 1
        assert not any("interrupted" in n for n in summary["notes"] + summary["run_notes"]), summary
    # a plan made later keeps none of it
    assert plan_main([str(out)]) == 0 and "interrupted while writing" not in capsys.readouterr().out


def test_a_run_stopped_while_drawing_its_report_says_how_far_it_got(tmp_path, monkeypatch):
    from hydra.core.global_hydra import GlobalHydra

    from lipoframe.merge import compose_config
    from lipoframe.runner import run_pipeline

    for i in range(2):
        write_mrc(tmp_path / "mics" / f"mic_{i}.mrc", tiny_image(seed=i)[0])
    try:
        _, cfg = compose_config([f"input={tmp_path / 'mics'}", *RUN_OVERRIDES])
    finally:
        GlobalHydra.instance().clear()
    real = report.render_job

    def stop_at_the_second(job, readers=None):
        if job.name == "mic_1":
            raise KeyboardInterrupt
        return real(job, readers)

    monkeypatch.setattr(report, "render_job", stop_at_the_second)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(cfg, tmp_path / "out")
    summary = json.loads((tmp_path / "out" / "run_summary.json").read_text())
    said = (f"interrupted while writing the report (1 of 2 overlays drawn): the picks, exports and extraction plan are "
            f"complete; `lipoframe report {tmp_path / 'out'}` writes it")
    assert summary["interrupted"] is True and summary["notes"] == [said] and summary["run_notes"] == [said]


def test_a_report_written_later_keeps_the_flag_of_a_run_whose_picking_was_interrupted(tmp_path):
    summary = {"interrupted": True, "micrographs": {"total": 3, "ok": 1, "skipped": 0, "failed": 0, "not_done": 2},
               "notes": ["mic_9.mrc: listed twice"], "run_notes": ["mic_9.mrc: listed twice"]}
    (tmp_path / "run_summary.json").write_text(json.dumps(summary))
    assert not report.settle_report_interruption(tmp_path)
    assert json.loads((tmp_path / "run_summary.json").read_text()) == summary
    # stopped while drawing its report, then (a killed `lipoframe run` again, as plan reads it) micrographs not done:
    # the note goes, the flag stays
    said = "interrupted while writing the report: the picks, exports and extraction plan are complete; ..."
    (tmp_path / "run_summary.json").write_text(json.dumps({**summary, "run_notes": [said, *summary["run_notes"]]}))
    assert report.settle_report_interruption(tmp_path)
    assert json.loads((tmp_path / "run_summary.json").read_text()) == summary
    (tmp_path / "run_summary.json").write_text(json.dumps({**summary, "notes": [said], "micrographs": {"total": 1, "ok": 1}}))
    assert report.settle_report_interruption(tmp_path)
    assert json.loads((tmp_path / "run_summary.json").read_text()) == {**summary, "notes": [], "micrographs": {"total": 1, "ok": 1},
                                                                         "interrupted": False}


def test_a_report_written_after_a_stopped_plan_leaves_the_plan_interrupted(tmp_path):
    # A run stopped while drawing its report, then a `lipoframe plan` of it stopped in a writer: the report written
    # then said 'interrupted: false' although the plan's exports were incomplete. It settles the run's flag only.
    from lipoframe.runner import picking_interrupted

    report_note = "interrupted while writing the report: the picks, exports and extraction plan are complete; ..."
    plan_note = "interrupted while making the plan: its exports and extraction plan files are incomplete; run `lipoframe plan x` again"
    summary = {"interrupted": True, "picking_interrupted": True, "micrographs": {"total": 1, "ok": 1, "not_done": 0},
               "notes": [report_note, plan_note], "run_notes": [report_note]}
    (tmp_path / "run_summary.json").write_text(json.dumps(summary))
    assert report.settle_report_interruption(tmp_path)
    settled = json.loads((tmp_path / "run_summary.json").read_text())
    assert settled == {**summary, "picking_interrupted": False, "notes": [plan_note], "run_notes": []}
    assert not picking_interrupted(settled)  # what a plan that finishes says


def test_volume_overlay_shows_the_central_slab_and_its_picks(tmp_path):
    from lipoframe.records import Micrograph, MicrographMeta

    vol = np.zeros((40, 64, 96), dtype=np.float32)
    vol[18:23, 20:40, 50:70] = 1.0

    class Readers:
        def read(self, path):
            return Micrograph(MicrographMeta("v", str(path), vol.shape), vol)

    job = report.OverlayJob(
        name="v", path=str(tmp_path / "v.mrc"), x=np.array([60.0, 10.0]), y=np.array([30.0, 10.0]), z=np.array([20.0, 2.0]),
        diameter=np.array([20.0, 8.0]), colors=["#ff0000", "#ff0000"], dashed=np.array([False, False]), legend=[], title="v",
        png=tmp_path / "v_picks.png", thumb=tmp_path / "v.jpg", crops=[], crop_dir=tmp_path / "crops",
    )
    res = report.render_job(job, Readers())
    assert res.ok, res.error
    with Image.open(job.png) as im:
        rgb = np.asarray(im.convert("RGB")).astype(int)
    zoom = rgb.shape[1] // 96  # small images are enlarged for display
    img = rgb[rgb.shape[0] - 64 * zoom:]
    red = (img[..., 0] - img[..., 1]) > 100
    assert red[:, 40 * zoom:].any() and not red[:, :25 * zoom].any(), "only the pick near the displayed slab is drawn"


def test_volume_overlay_draws_each_sphere_as_its_cross_section_at_the_slab(tmp_path):
    """A pick whose sphere only grazes the shown slab is drawn as its cut there, not its full diameter."""
    from lipoframe.records import Micrograph, MicrographMeta

    vol = np.zeros((40, 64, 96), dtype=np.float32)

    class Readers:
        def read(self, path):
            return Micrograph(MicrographMeta("v", str(path), vol.shape), vol)

    # median z = 20: the slab is planes 18-22; the sphere at z = 28 (r = 10) is 6 planes
    # from it, a circle of diameter 2 * sqrt(10**2 - 6**2) = 16; the one at z = 35 (r = 4) misses it
    job = report.OverlayJob(
        name="v", path=str(tmp_path / "v.mrc"), x=np.array([15.0, 15.0, 15.0, 60.0, 85.0]), y=np.array([12.0, 30.0, 50.0, 30.0, 30.0]),
        z=np.array([20.0, 20.0, 20.0, 28.0, 35.0]), diameter=np.array([8.0, 8.0, 8.0, 20.0, 8.0]), colors=["#ff0000"] * 5,
        dashed=np.zeros(5, dtype=bool), legend=[], title="v", png=tmp_path / "v_picks.png", thumb=tmp_path / "v.jpg",
        crops=[], crop_dir=tmp_path / "crops",
    )
    res = report.render_job(job, Readers())
    assert res.ok, res.error
    with Image.open(job.png) as im:
        rgb = np.asarray(im.convert("RGB")).astype(int)
    zoom = rgb.shape[1] // 96
    img = rgb[rgb.shape[0] - 64 * zoom:]
    red = (img[..., 0] - img[..., 1]) > 100
    cols = np.flatnonzero(red[:, 40 * zoom : 78 * zoom].any(axis=0)) / zoom + 40
    assert 51.0 <= cols.min() <= 53.0 and 67.0 <= cols.max() <= 69.5, (cols.min(), cols.max())  # 52-68, not 50-70
    assert not red[:, 78 * zoom :].any(), "a sphere that does not reach the slab is not drawn"
    np.testing.assert_allclose(plots.slab_sections([20, 28, 35, 24.5], [8, 20, 8, 10], 18, 22), [8, 16, 0, 2 * np.sqrt(25 - 6.25)])


@pytest.mark.parametrize("width", [96, 400])
def test_a_small_tomograms_overlay_title_is_wrapped_not_cut_at_the_right_edge(tmp_path, width):
    """On a 400 px wide tomogram the title ran past the right edge: '(slab z=18-22: 1 of 1 picks cr'."""
    from lipoframe.records import Micrograph, MicrographMeta

    vol = np.random.default_rng(0).normal(size=(40, 64, width)).astype(np.float32)

    class Readers:
        def read(self, path):
            return Micrograph(MicrographMeta("tomo_001", str(path), vol.shape), vol)

    title = "tomo_001 · 1 accepted of 1 picks · 10 Å/px"
    job = report.OverlayJob(
        name="v", path=str(tmp_path / "v.mrc"), x=np.array([30.0]), y=np.array([30.0]), z=np.array([20.0]), diameter=np.array([10.0]),
        colors=["#ff0000"], dashed=np.array([False]), legend=[], title=title, png=tmp_path / "v_picks.png", thumb=tmp_path / "v.jpg",
        crops=[], crop_dir=tmp_path / "crops",
    )
    assert report.render_job(job, Readers()).ok
    with Image.open(job.png) as im:
        rgb = np.asarray(im.convert("RGB")).astype(int)
    n = rgb.shape[1]
    band = rgb[: rgb.shape[0] - 64 * max(1, n // width)]
    text = band.min(axis=2) > 128
    assert not text[:, n - 4 :].any(), "the title reaches the right edge"
    rows = np.flatnonzero(text.any(axis=1))
    assert np.diff(rows).max() > 3, "the title is on two lines"  # a gap between them
    fontsize = float(np.clip(n / 110.0, 7.0, 11.0))
    lines = plots.title_lines(title + ("   (enlarged x6 for display)" if n > width else "") + "   (slab z=18-22: 1 of 1 picks cross it)",
                              width_px=n - 12.0, fontsize=fontsize)
    assert lines[-1].endswith("1 of 1 picks cross it)") and len(lines) >= 2, lines
    assert plots.title_lines("m · 3 picks", width_px=n - 12.0, fontsize=fontsize) == ["m · 3 picks"]
    assert plots.title_lines("", width_px=100, fontsize=7) == []


def test_volume_slab_is_centred_on_the_nearest_plane():
    """The slab at z = 24.9 was planes 22-26 (int(z) = 24), though plane 25 holds that z; the
    report and evaluate's overlays both take it from volume_slab, so they show the same planes."""
    import lipoframe.evaluate as ev

    vol = np.arange(40, dtype=np.float32)[:, None, None] * np.ones((1, 8, 8), np.float32)
    for z, (first, last) in ((24.9, (23, 27)), (24.5, (23, 27)), (24.4, (22, 26)), (-0.6, (0, 2)), (0.2, (0, 2)), (39.7, (37, 39))):
        plane, a, b = plots.volume_slab(vol, z)
        assert (a, b) == (first, last), z
        assert plane[0, 0] == pytest.approx((first + last) / 2)
    job = report.OverlayJob(
        name="v", path="v.mrc", x=np.array([4.0, 4.0]), y=np.array([4.0, 4.0]), z=np.array([24.8, 25.0]), diameter=np.array([4.0, 4.0]),
        colors=["#ff0000"] * 2, dashed=np.zeros(2, dtype=bool), legend=[], title="v", png=Path("v.png"), thumb=Path("v.jpg"), crops=[],
        crop_dir=Path("crops"),
    )
    assert "slab z=23-27" in report._display_plane(vol, job)[2]
    assert report._slab(vol, 24.9)[1] == 25
    t = pd.DataFrame({schema.MICROGRAPH: "v", schema.X: [4.0, 4.0], schema.Y: [4.0, 4.0], schema.Z: [24.8, 25.0], schema.DIAMETER: [4.0, 4.0]})
    assert "slab z=23-27" in ev._slab_view(vol, t, t)[3]


def test_volume_crop_is_taken_at_the_picks_own_z(tmp_path):
    """A tomogram's crop shows its pick's slab, not the overview's slab at the median z of all picks."""
    from lipoframe.records import Micrograph, MicrographMeta

    vol = np.zeros((40, 64, 96), dtype=np.float32)
    vol[28:33, 22:38, 52:68] = 1.0  # the particle of the cropped pick, far from the other picks' z

    class Readers:
        def read(self, path):
            return Micrograph(MicrographMeta("v", str(path), vol.shape), vol)

    picks = pd.DataFrame({schema.MICROGRAPH: "v", schema.X: [60.0, 10.0, 20.0], schema.Y: [30.0, 10.0, 50.0],
                          schema.Z: [30.0, 5.0, 6.0], schema.DIAMETER: [16.0, 8.0, 8.0], schema.ACCEPTED: True,
                          schema.SIZE_BIN: [0, -1, -1]})
    plan = ExtractionPlan(policy="fixed", pixel_size=None, bins=(SizeBin(index=0, d_min_px=15, d_max_px=17, count=1, box_px=32),))
    [(_, crop)] = report.choose_crops(picks, {"v": MicrographMeta("v", str(tmp_path / "v.mrc"), vol.shape)}, plan)
    job = report.OverlayJob(
        name="v", path=str(tmp_path / "v.mrc"), x=picks[schema.X].to_numpy(), y=picks[schema.Y].to_numpy(),
        z=picks[schema.Z].to_numpy(), diameter=picks[schema.DIAMETER].to_numpy(), colors=["#ff0000"] * 3,
        dashed=np.zeros(3, dtype=bool), legend=[], title="v", png=tmp_path / "v_picks.png", thumb=tmp_path / "v.jpg",
        crops=[crop], crop_dir=tmp_path / "crops",
    )
    res = report.render_job(job, Readers())
    assert res.ok, res.error
    with Image.open(tmp_path / "crops" / crop.key) as im:
        grey = np.asarray(im.convert("L")).astype(float)
    n = grey.shape[0]
    centre, corner = grey[n // 2 - 3 : n // 2 + 3, n // 2 - 3 : n // 2 + 3].mean(), grey[:4, :4].mean()
    assert centre - corner > 100, "the particle at the pick's z is in its crop"


# ---------------------------------------------------------------------------
# Headless browser
# ---------------------------------------------------------------------------
PROBE = """<script>window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var bad = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); }).map(function (i) { return i.alt; });
  document.body.setAttribute('data-images', imgs.length);
  document.body.setAttribute('data-broken', JSON.stringify(bad));
});</script>"""


def chromium_images(html_file: Path, profile: Path) -> tuple[int, list[str]]:
    """(number of <img>, alt texts of those that did not load) as Chromium sees the page."""
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
           "--virtual-time-budget=10000", "--dump-dom", html_file.as_uri()]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
    m = re.search(r'<body[^>]*data-images="(\d+)"[^>]*data-broken="([^"]*)"', dom)
    assert m, f"Chromium did not run the probe; DOM starts {dom[:300]!r}"
    return int(m.group(1)), json.loads(m.group(2).replace("&quot;", '"'))


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian package `chromium`)")
def test_every_image_of_the_report_loads_in_headless_chromium(done, tmp_path):
    _, result = done
    page = result.out_dir / "report.html"
    probe = tmp_path / "report_probe.html"
    probe.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    n, broken = chromium_images(probe, tmp_path / "profile")
    assert n == len(parse(page).imgs) and n > 4
    assert broken == []
    # The probe does notice a broken image.
    spoiled = tmp_path / "spoiled.html"
    spoiled.write_text(probe.read_text().replace('src="data:image/png;base64,iVBOR', 'src="data:image/png;base64,AAAA', 1))
    n2, broken2 = chromium_images(spoiled, tmp_path / "profile2")
    assert n2 == n and len(broken2) == 1


def test_overlay_legend_gives_small_bins_in_tenths_of_a_nanometre():
    # 38-43 px at 1 A/px read '(4 nm)' next to 43-64 px '(4–6 nm)'
    def label(lo, hi, px):
        return report._bin_label(SizeBin(index=0, d_min_px=lo, d_max_px=hi, count=5, box_px=96), px)

    assert label(38, 43, 1.0) == "bin 1: 38–43 px (3.8–4.3 nm), box 96 px"
    assert label(43, 64, 1.0) == "bin 1: 43–64 px (4.3–6.4 nm), box 96 px"
    assert label(79, 97, 2.0) == "bin 1: 79–97 px (16–19 nm), box 96 px"
    assert label(79, 97, None) == "bin 1: 79–97 px, box 96 px"


def test_a_reader_warning_is_not_repeated_when_the_overlay_reads_the_file(tmp_path, caplog):
    # Every reader warning (x and y pixel sizes that differ, ...) came twice: once
    # when the run picked the micrograph, once more when the report drew it.
    from lipoframe.builtin.readers import MrcReader

    path = write_mrc(tmp_path / "aniso.mrc", np.zeros((32, 48)), pixel_size=(4.0, 2.0, 1.0))
    with caplog.at_level("WARNING", logger="lipoframe"):
        MrcReader().read(path, pixel_size=None)
        assert caplog.text.count("pixel sizes differ") == 1
        mic = report.ReaderChoice(None, {".mrc": MrcReader()}).read(path)
    assert mic.image.shape == (32, 48)
    assert caplog.text.count("pixel sizes differ") == 1
    with caplog.at_level("WARNING", logger="lipoframe"):
        logging.getLogger("lipoframe").warning("still heard")
    assert "still heard" in caplog.text


def _rerun_without_report(run_copy: Path, done, caplog, *overrides: str) -> None:
    """Run the ``done`` run's micrographs again into ``run_copy`` (which has a report) with ``runner.report=false``
    and ``overrides``, in this process, its warnings in ``caplog``."""
    from hydra.core.global_hydra import GlobalHydra

    from lipoframe.merge import compose_config
    from lipoframe.runner import run_pipeline

    assert (run_copy / "report.html").is_file()
    try:
        _, cfg = compose_config([f"input={done[0].input[0]}", *RUN_OVERRIDES, *overrides, "runner.report=false"])
    finally:
        GlobalHydra.instance().clear()
    with caplog.at_level("WARNING", logger="lipoframe"):
        run_pipeline(cfg, run_copy)


def test_a_run_without_report_removes_an_earlier_runs_report(run_copy, done, caplog):
    # A re-run into a folder with other settings and runner.report=false left the earlier run's report.html,
    # which showed that run's picks (another binning here: 2 quantile bins -> 3; the micrographs' picks are resumed).
    _rerun_without_report(run_copy, done, caplog, "binning.n_bins=3")
    assert not (run_copy / "report.html").exists()
    assert f"`lipoframe report {run_copy}` writes this run's" in caplog.text
    assert (run_copy / "picks.csv").is_file()


def test_a_run_with_the_same_settings_without_report_removes_the_earlier_report(run_copy, done, caplog):
    # The same settings again, with runner.report=false: nothing of the earlier run's outputs is dropped as made with
    # other settings, so only drop_earlier_report removes its report.html (which would outlive this run's picks).
    _rerun_without_report(run_copy, done, caplog)
    assert not (run_copy / "report.html").exists()
    assert f"removed the report.html of an earlier run into {run_copy} (it showed that run's picks)" in caplog.text
    assert (run_copy / "picks.csv").is_file()


def test_overlay_legend_gives_each_micrographs_nm_at_its_own_pixel_size(tmp_path, run_cli, monkeypatch):
    # A run of micrographs at 2 and 4 Å/px: every overlay's legend gave the bins' nm at the plan's
    # (median) pixel size, so the 2 Å/px micrograph's title said '2 Å/px' above bins in nm at 3 Å/px.
    from conftest import TINY_ARGS

    for i, px in enumerate((2.0, 4.0)):
        write_mrc(tmp_path / "mics" / f"mic_{i}.mrc", tiny_image(seed=i)[0], pixel_size=px)
    run = tmp_path / "run"
    code, _, err = run_cli("run", f"input={tmp_path / 'mics'}", f"output={run}", *TINY_ARGS)
    assert code == 0, err
    jobs = {}
    monkeypatch.setattr(report, "render_overlays", lambda js, *a, **k: jobs.update({j.name: j for j in js}) or [])
    code, _, err = run_cli("report", str(run))
    assert code == 0, err
    plan = json.loads((run / "extraction_plan.json").read_text())
    b = plan["bins"][0]
    for name, px in (("mic_0", 2.0), ("mic_1", 4.0)):
        want = report._bin_label(SizeBin(index=0, d_min_px=b["d_min_px"], d_max_px=b["d_max_px"], count=1, box_px=b["box_px"]), px)
        assert jobs[name].legend[0][0].startswith(want + "  ["), (name, jobs[name].legend[0][0], want)


_ORPHAN_SCRIPT = """
import os, sys
from concurrent.futures import ProcessPoolExecutor
import multiprocessing as mp
from lipoframe import report
from lipoframe.runner import _start_method

ex = ProcessPoolExecutor(max_workers=2, mp_context=mp.get_context(_start_method()), initializer=report._init_worker,
                         initargs=(None,))
ran = {f.result() for f in [ex.submit(os.getpid) for _ in range(8)]}
pids = sorted(ran | set(ex._processes))  # every worker the pool started, also one that got no task
with open(sys.argv[1], "w") as f:
    f.write(" ".join(str(p) for p in pids))
os._exit(0)  # as a run killed outright (SIGKILL) goes: no pool shutdown
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_overlay_workers_exit_when_the_run_is_killed_outright(tmp_path):
    """A run killed outright (kill -9, the out-of-memory killer) while drawing its report left its overlay
    worker processes behind, waiting for ever for work, holding the run's output folder."""
    import signal
    import sys
    import time

    root = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    # files, not pipes: workers left behind would hold a pipe open
    with open(tmp_path / "err.txt", "w") as err:
        done = subprocess.run([sys.executable, "-c", _ORPHAN_SCRIPT, str(tmp_path / "pids.txt")], env=env,
                              stdout=subprocess.DEVNULL, stderr=err, timeout=120)
    assert done.returncode == 0, (tmp_path / "err.txt").read_text()
    pids = [int(p) for p in (tmp_path / "pids.txt").read_text().split()]
    assert pids and os.getpid() not in pids

    def alive():
        out = []
        for pid in pids:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                continue
            out.append(pid)
        return out

    deadline = time.monotonic() + 60
    try:
        while alive():
            assert time.monotonic() < deadline, f"overlay workers left behind: {alive()}"
            time.sleep(0.1)
    finally:
        for pid in alive():  # this test's own processes
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("stop", ["thumbnail", "index"], ids=["between PNG and thumbnail", "before the index"])
def test_an_overlay_stopped_after_its_png_is_written_is_not_reused(run_copy, run_cli, monkeypatch, stop):
    """overlays/index.json kept the previous entry of an overlay stopped once its PNG was rewritten (Ctrl-C
    before its thumbnail; kill -9 before the index was saved): a report whose inputs were that entry's again
    (the plan changed back) reused the PNG of the other picks beside the old thumbnail."""
    ov = run_copy / "overlays"
    before = {p: p.read_bytes() for p in (ov / "mic_0_picks.png", ov / "thumbs" / "mic_0.jpg")}
    index_before = (ov / "index.json").read_text()
    original = (run_copy / "extraction_plan.json").read_text()
    plan = json.loads(original)
    plan["bins"][0]["box_px"] += 32  # a new legend: every overlay changes
    (run_copy / "extraction_plan.json").write_text(json.dumps(plan))
    real_write, real_render = report.write_bytes, report.render_job
    drawn = []

    def stop_at_thumbnail(path, data):
        if Path(path).parent.name == "thumbs":
            raise KeyboardInterrupt
        return real_write(path, data)

    def stop_after_one(job, readers=None):
        if drawn:
            raise KeyboardInterrupt
        drawn.append(job.name)
        return real_render(job, readers)

    if stop == "thumbnail":
        monkeypatch.setattr(report, "write_bytes", stop_at_thumbnail)
    else:
        monkeypatch.setattr(report, "INDEX_SAVE_SECONDS", 1e9)
        monkeypatch.setattr(report, "render_job", stop_after_one)
    code, _, err = run_cli("report", run_copy, "-j", "1")
    assert code == 130, err
    if stop == "index":
        (ov / "index.json").write_text(index_before)  # what kill -9 leaves: no handler runs
    assert (ov / "mic_0_picks.png").read_bytes() != before[ov / "mic_0_picks.png"]  # the new picture is in place
    monkeypatch.setattr(report, "write_bytes", real_write)
    monkeypatch.setattr(report, "render_job", real_render)
    (run_copy / "extraction_plan.json").write_text(original)
    code, out, err = run_cli("report", run_copy, "-j", "1")
    assert code == 0 and "1 drawn" in out and "2 unchanged" in out, out + err
    assert {p: p.read_bytes() for p in before} == before


def test_the_report_of_a_copied_run_folder_gives_where_it_is_now_as_its_output(tiny_run_folder, tmp_path, monkeypatch, run_cli):
    """`cp -r run newplace; lipoframe report newplace`: the configuration showed `output:` the folder the run was made in,
    where the notes of a copied folder already name the copy."""
    import html
    import re
    import shutil

    import yaml

    monkeypatch.chdir(tmp_path)
    shutil.copytree(tiny_run_folder, tmp_path / "newplace")
    code, _, err = run_cli("report", "newplace", "--no-overlays", "--no-crops")
    assert code == 0, err
    page = (tmp_path / "newplace" / "report.html").read_text()
    config = html.unescape(re.search(r'<h2 id="config">Configuration</h2>\s*<pre>(.*?)</pre>', page, re.S).group(1))
    assert f"\n# this run folder is now {tmp_path / 'newplace'}; it was made as {tiny_run_folder} (copied or moved since)\n" \
           f"output: {tmp_path / 'newplace'}\n" in config
    assert yaml.safe_load(config)["output"] == str(tmp_path / "newplace")  # still the run's YAML
    # where it was made: the configuration as recorded (read, not written: the shared folder stays as it is)
    from lipoframe.report import load_run

    data = load_run(tiny_run_folder)
    assert f"output: {tiny_run_folder}\n" in data.config_text and "copied or moved since" not in data.config_text


def test_a_copied_folder_is_told_from_a_sweeps_job_and_from_an_output_given_relative(tmp_path):
    from lipoframe.report import _named_here

    text = "input: mics\noutput: run1\nseed: 0\n"
    config = {"input": "mics", "output": "run1", "seed": 0}
    here = tmp_path / "copy"
    # output=run1 given relative, run in /data: the run's summary names /data/run1
    named, said = _named_here(here, config, text, made_in=[None, "/data/run1", "run1"])
    assert said == f"input: mics\n# this run folder is now {here}; it was made as /data/run1 (copied or moved since)\noutput: {here}\nseed: 0\n"
    assert named["output"] == str(here) and config["output"] == "run1"
    # a sweep's job folder in place: output= is the sweep's folder above it
    job = tmp_path / "sweep" / "0"
    sweep_text = f"output: {tmp_path / 'sweep'}\n"
    assert _named_here(job, {"output": str(tmp_path / "sweep")}, sweep_text, made_in=[None, None, str(tmp_path / "sweep")]) \
        == ({"output": str(tmp_path / "sweep")}, sweep_text)
    # that job folder copied: output= stays the sweep's, and the comment says where the folder is
    named, said = _named_here(here, {"output": str(tmp_path / "sweep")}, sweep_text, made_in=[str(job), None, str(tmp_path / "sweep")])
    assert said == f"# this run folder is now {here}; it was made as {job} (copied or moved since)\n{sweep_text}"
    # nothing absolute recorded: nothing to tell
    assert _named_here(here, config, text, made_in=[None, "run1", "run1"]) == (config, text)


@pytest.mark.parametrize("name", ["cost $5 ${x}", "back\\${x}", "two\\\\${x}"])
def test_the_report_shows_a_folder_named_with_dollar_brace_as_it_is(tmp_path, run_cli, name):
    """A folder whose name has ${, given as the subfolder hint says (quoted for the shell and Hydra, its ${ escaped for
    OmegaConf): the run reads the folder, but the report's configuration showed the escape (`cost $5 \\${x}`), as the run's
    config.yaml keeps it, not the folder's name."""
    import html
    import shlex

    import yaml
    from conftest import TINY_ARGS

    from lipoframe.runner import find_inputs

    folder = tmp_path / name
    for i in range(2):
        write_mrc(folder / "GridSquare_1" / "Data" / f"mic_{i}.mrc", tiny_image(seed=i)[0])
    _, problems = find_inputs([str(folder)], (".mrc",))
    (word,) = shlex.split(problems[0].rsplit(" give ", 1)[1])
    glob = str(folder / "**" / "*.mrc")
    out = tmp_path / "run"
    code, _, err = run_cli("run", word, f"output={out}", *TINY_ARGS)
    assert code == 0, err
    assert json.loads((out / "inputs.json").read_text())["inputs"] == [glob]  # the run read the folder
    code, _, err = run_cli("report", out, "--no-overlays", "--no-crops")
    assert code == 0, err
    page = (out / "report.html").read_text()
    config = html.unescape(re.search(r'<h2 id="config">Configuration</h2>\s*<pre>(.*?)</pre>', page, re.S).group(1))
    assert yaml.safe_load(config)["input"] == glob  # as typed: one glob, not a list
    assert report.load_run(out).config["input"] == glob
