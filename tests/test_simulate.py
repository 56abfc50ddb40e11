"""Tests of the synthetic-scene generator and ``lipoframe simulate`` (small images only)."""

from __future__ import annotations

import shutil
import sys
from dataclasses import replace

import mrcfile
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage as ndi

from lipoframe.evaluate import evaluate
from lipoframe.simulate import main, mini_scenes, suite_scenes, write_scenes, write_suite
from lipoframe.synthetic import (
    Component,
    SceneSpec,
    place_particles,
    radial_profile,
    render_scene,
    write_demo_dataset,
)

SOLID = (("solid", 1.0),)


def small_scene(**kw) -> SceneSpec:
    base = dict(name="t", shape=(384, 512), pixel_size=4.0, components=(Component(200, 20, 1, SOLID),), coverage=0.2, seed=3)
    base.update(kw)
    return SceneSpec(**base)


def test_radial_profiles():
    rho = np.linspace(0, 1.2, 241)
    solid = radial_profile("solid", rho)
    shell = radial_profile("shell", rho, inner=0.7, core=0.2)
    ves = radial_profile("vesicle", rho, membrane=0.1)
    for prof in (solid, shell, ves):
        assert prof.max() == pytest.approx(1.0, abs=1e-3)
        assert np.all(prof[rho > 1] == 0)
    assert solid[0] == solid.max()
    assert shell[0] < 0.7 * shell.max()  # lighter core: a dark ring
    assert abs(rho[np.argmax(shell)] - 0.7) < 0.01
    assert ves[0] < 0.5 and rho[np.argmax(ves)] > 0.85  # membrane, empty interior
    with pytest.raises(ValueError, match="kind"):
        radial_profile("cube", rho)


def test_render_is_deterministic_and_seeded():
    a, ta = render_scene(small_scene())
    b, tb = render_scene(small_scene())
    c, _ = render_scene(small_scene(seed=4))
    assert a.dtype == np.float32 and a.shape == (384, 512)
    assert np.array_equal(a, b)
    pd.testing.assert_frame_equal(ta, tb)
    assert not np.array_equal(a, c)


def test_truth_is_inside_and_particles_are_dark():
    img, truth = render_scene(small_scene(noise=0.05, gradient=0, lowfreq=0, texture=0))
    assert len(truth) > 3 and set(truth["kind"]) == {"solid"}
    assert truth["x_px"].between(0, 511).all() and truth["y_px"].between(0, 383).all()
    d_A = truth["diameter_px"] * 4.0
    assert d_A.between(120, 280).all()
    yy, xx = np.mgrid[:384, :512]
    inside = np.zeros(img.shape, bool)
    for r in truth.itertuples():
        inside |= np.hypot(xx - r.x_px, yy - r.y_px) < 0.3 * r.diameter_px
    far = np.ones(img.shape, bool)
    for r in truth.itertuples():
        far &= np.hypot(xx - r.x_px, yy - r.y_px) > 0.7 * r.diameter_px
    assert img[inside].mean() < img[far].mean() - 1.0


def test_shells_and_vesicles_have_lighter_centres():
    for kind in ("shell", "vesicle"):
        spec = small_scene(components=(Component(320, 10, 1, ((kind, 1.0),)),), noise=0.02, gradient=0, lowfreq=0, texture=0, ellipticity=0)
        img, truth = render_scene(spec)
        r = truth.iloc[0]
        yy, xx = np.mgrid[: img.shape[0], : img.shape[1]]
        rho = np.hypot(xx - r.x_px, yy - r.y_px) / (r.diameter_px / 2)
        centre = img[rho < 0.15].mean()
        edge = min(img[(rho >= a) & (rho < a + 0.05)].mean() for a in np.arange(0.55, 0.95, 0.05))
        assert edge < centre - 0.3, kind


@pytest.mark.parametrize("kw, word", [
    ({"pixel_size": 0}, "pixel_size"),
    ({"coverage": 1.5}, "coverage"),
    ({"ellipticity": 2}, "ellipticity"),
    ({"components": (Component(200, 10, 1, (("cube", 1.0),)),)}, "kinds"),
    ({"size_range_A": (500, 150)}, "size_range_A"),
])
def test_scene_spec_checks_its_values(kw, word):
    with pytest.raises(ValueError, match=word):
        small_scene(**kw)


def test_crowded_placement_touches_but_never_overlaps():
    rng = np.random.default_rng(0)
    d = np.full(150, 40.0)
    xy = place_particles((512, 512), d, rng=rng, touching=0.8)
    ok = np.isfinite(xy[:, 0])
    assert ok.sum() > 60
    p = xy[ok]
    dist = np.hypot(p[:, None, 0] - p[None, :, 0], p[:, None, 1] - p[None, :, 1])
    np.fill_diagonal(dist, np.inf)
    assert dist.min() >= 40 * 0.995
    assert np.mean(dist.min(axis=1) < 41) > 0.3  # many touch a neighbour


def test_border_cut_particles():
    _, truth = render_scene(small_scene(border=1.0, coverage=0.1))
    edge_dist = np.minimum.reduce([truth.x_px, truth.y_px, 511 - truth.x_px, 383 - truth.y_px])
    assert (edge_dist < truth.diameter_px / 2).mean() > 0.5


def test_ice_junk_carbon_and_empty():
    spec = small_scene(shape=(512, 512), n_ice=2, n_junk=8, carbon=True, coverage=0.15)
    img, truth = render_scene(spec)
    assert (truth.kind == "ice").sum() >= 1 and (truth.kind == "junk").sum() == 8
    parts = truth[truth.kind == "solid"]
    ice = truth[truth.kind == "ice"]
    for r in ice.itertuples():  # no particle under the ice
        assert np.all(np.hypot(parts.x_px - r.x_px, parts.y_px - r.y_px) > r.diameter_px / 2)
    # the ice is far darker than anything else
    assert img.min() < np.median(img) - 3 * spec.contrast
    # carbon: a darker film, tiled by rows of kind "carbon"; particles stay off it
    # (the film is drawn first, so the same seed without particles shows it alone)
    film_only, t2 = render_scene(replace(spec, components=(), noise=0, gradient=0, lowfreq=0, n_ice=0, n_junk=0))
    film = film_only < -0.5 * spec.contrast
    carbon = truth[truth.kind == "carbon"]
    pd.testing.assert_frame_equal(carbon.reset_index(drop=True), t2[t2.kind == "carbon"].reset_index(drop=True))
    assert len(carbon) > 0 and 0.1 < film.mean() < 0.5
    assert np.mean([film[int(r.y_px), int(r.x_px)] for r in carbon.itertuples()]) > 0.9
    assert not any(film[int(r.y_px), int(r.x_px)] for r in parts.itertuples())
    empty_img, empty_truth = render_scene(small_scene(components=(), n_junk=3))
    assert set(empty_truth.kind) == {"junk"} and np.isfinite(empty_img).all()


def test_size_range_truncates_every_mode():
    from lipoframe.synthetic import _draw_sizes

    wide = small_scene(components=(Component(160, 30, 1, SOLID), Component(480, 40, 1, SOLID)), coverage=0.9, pixel_size=1.0, shape=(4096, 4096))
    d_free = _draw_sizes(wide, np.random.default_rng(0))[0]
    assert d_free.min() < 150 and d_free.max() > 500  # the scenario is meaningful
    d = _draw_sizes(replace(wide, size_range_A=(150.0, 500.0)), np.random.default_rng(0))[0]
    assert d.min() >= 150 and d.max() <= 500
    assert d.min() < 160 and d.max() > 470  # truncated, not moved: the tails reach the limits
    assert np.sum(d == 150) + np.sum(d == 500) <= 1  # drawn again, not piled up at the limits


def test_presets():
    suite = suite_scenes(0)
    assert all(s.size_range_A == (150.0, 500.0) for s in suite)
    assert len({s.name for s in suite}) == len(suite)
    square = [s for s in suite if s.shape == (4096, 4096) and s.pixel_size == 1.0 and s.components]
    assert len(square) >= 10
    assert any(s.shape == (4092, 5760) for s in suite)
    assert any(s.pixel_size == 2.0 for s in suite)
    assert any(not s.components for s in suite)
    diam = [c.diameter_A for s in suite for c in s.components]
    assert min(diam) <= 180 and max(diam) >= 450
    kinds = {k for s in suite for c in s.components for k, _ in c.kinds}
    assert kinds == {"solid", "shell", "vesicle"}
    assert [s.seed for s in suite_scenes(0)] == [s.seed for s in suite] != [s.seed for s in suite_scenes(1)]
    mini = mini_scenes(0)
    assert [s.name for s in mini] == [s.name for s in suite] and all(s.pixel_size >= 4 for s in mini)


def test_write_scenes_files_and_truth(tmp_path):
    scenes = [small_scene(name="one"), small_scene(name="two", pixel_size=2.0, seed=9), small_scene(name="none", components=())]
    info = write_scenes(tmp_path, scenes)
    assert [p.name for p in info.paths] == ["one.mrc", "two.mrc", "none.mrc"]
    with mrcfile.open(info.paths[1], permissive=True) as m:
        assert m.data.dtype == np.float32 and m.data.shape == (384, 512)
        assert float(m.voxel_size.x) == pytest.approx(2.0)
    truth = info.truth()
    assert list(truth.columns) == ["micrograph", "x_px", "y_px", "diameter_px", "kind"]
    assert set(truth.micrograph) == {"one", "two"}
    mics = pd.read_csv(info.micrographs_csv)
    assert list(mics.micrograph) == ["one", "two", "none"] and mics.loc[2, "n_particles"] == 0
    # the truth scored against itself is perfect (simulate and evaluate agree on names)
    s = evaluate(truth, truth).summary
    assert s["f1"] == 1.0 and s["junk_picks"] == 0


def test_writing_some_scenes_again_keeps_the_truth_of_the_others(tmp_path):
    """`only=` into a suite's folder rewrote truth.csv and micrographs.csv with the scenes just written: the rest was lost."""
    scenes = [small_scene(name="one"), small_scene(name="two", seed=9), small_scene(name="none", components=()),
              small_scene(name="three", seed=11)]
    first = write_scenes(tmp_path, scenes)
    truth0, mics0 = first.truth(), pd.read_csv(first.micrographs_csv)
    text0 = {name: (tmp_path / name).read_text().splitlines() for name in ("truth.csv", "micrographs.csv")}
    (tmp_path / "three.mrc").unlink()  # gone: its rows go too
    again = write_scenes(tmp_path, [small_scene(name="two", seed=10), small_scene(name="four", seed=12)])
    assert [p.name for p in again.paths] == ["two.mrc", "four.mrc"] and again.kept == ["one", "none"]
    truth, mics = again.truth(), pd.read_csv(again.micrographs_csv)
    # the others' rows as they were, in their place; two's rows are the new ones; four comes last
    assert list(mics.micrograph) == ["one", "two", "none", "four"]
    pd.testing.assert_frame_equal(mics.iloc[[0, 2]].reset_index(drop=True), mics0.iloc[[0, 2]].reset_index(drop=True))
    assert list(dict.fromkeys(truth.micrograph)) == ["one", "two", "four"]
    pd.testing.assert_frame_equal(truth[truth.micrograph == "one"], truth0[truth0.micrograph == "one"])
    _, two = render_scene(small_scene(name="two", seed=10))
    np.testing.assert_allclose(truth.loc[truth.micrograph == "two", ["x_px", "y_px"]].to_numpy(), two[["x_px", "y_px"]].to_numpy(), atol=0.005)
    assert not truth0.loc[truth0.micrograph == "two", "x_px"].reset_index(drop=True).equals(
        truth.loc[truth.micrograph == "two", "x_px"].reset_index(drop=True))
    # the kept rows are written back as they were read
    for name, lines in text0.items():
        text = (tmp_path / name).read_text().splitlines()
        assert [ln for ln in text if ln.startswith(("one,", "none,"))] == [ln for ln in lines if ln.startswith(("one,", "none,"))]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temporary file left
    # written over in full (nothing kept), the folder holds what a fresh one would, in the order written
    every = [small_scene(name="four", seed=12), *scenes]
    write_scenes(tmp_path, every)
    fresh = write_scenes(tmp_path / "fresh", every)
    for name in ("truth.csv", "micrographs.csv"):
        assert (tmp_path / name).read_bytes() == (fresh.folder / name).read_bytes(), name


@pytest.mark.parametrize("name, text", [
    ("truth.csv", "micrograph,x_px,y_px\nmine,1,2\n"),  # someone's own reference
    ("truth.csv", "micrograph,x_px,y_px,z_px,diameter_px,kind\ntomo_001,1,2,3,40,vesicle\n"),  # simulate dims=3's
    ("micrographs.csv", "name,path\nmine,/data/mine.mrc\n"),
])
def test_a_table_simulate_did_not_write_is_not_overwritten(tmp_path, capsys, name, text):
    (tmp_path / name).write_text(text)
    with pytest.raises(ValueError, match=rf"{name}: not the {name} of a set of micrographs lipoframe simulate wrote"):
        write_scenes(tmp_path, [small_scene(name="one")])
    assert main([f"output={tmp_path}", "preset=mini", "only=empty"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(tmp_path / name) in err
    assert [p.name for p in tmp_path.iterdir()] == [name] and (tmp_path / name).read_text() == text


def test_cli_mini_then_reuse(tmp_path, capsys):
    out = tmp_path / "sim"
    assert main([f"output={out}", "preset=mini", "seed=1", "only=k3_mixed,empty"]) == 0
    assert "wrote 2 micrographs" in capsys.readouterr().out
    with mrcfile.open(out / "k3_mixed.mrc", permissive=True) as m:
        assert m.data.shape == (1023, 1440) and float(m.voxel_size.x) == pytest.approx(4.24, abs=1e-3)
    assert set(pd.read_csv(out / "truth.csv").micrograph) == {"k3_mixed", "empty"}
    before = (out / "empty.mrc").stat().st_mtime_ns
    info = write_suite(out, preset="mini", seed=1, only=["k3_mixed", "empty"])
    assert info.reused and (out / "empty.mrc").stat().st_mtime_ns == before
    k3_truth = pd.read_csv(out / "truth.csv").query("micrograph == 'k3_mixed'")
    assert not write_suite(out, preset="mini", seed=2, only=["empty"]).reused
    capsys.readouterr()
    # A subset written again into the folder: the others' truth is kept, and said so.
    assert main([f"output={out}", "preset=mini", "seed=1", "only=empty"]) == 0
    captured = capsys.readouterr()
    truth = pd.read_csv(out / "truth.csv")
    pd.testing.assert_frame_equal(truth.query("micrograph == 'k3_mixed'"), k3_truth)
    assert list(dict.fromkeys(truth.micrograph)) == ["k3_mixed", "empty"]
    assert f"truth:   {out / 'truth.csv'} (also holds the 1 other micrograph(s) written there before)" in captured.out.splitlines()
    assert captured.err == ""
    # .mrc files that are not in truth.csv are named
    shutil.copy(out / "empty.mrc", out / "mine.mrc")
    assert main([f"output={out}", "preset=mini", "seed=1", "only=empty"]) == 0
    err = capsys.readouterr().err
    assert "1 other .mrc file(s)" in err and "mine.mrc" in err and "k3_mixed" not in err


def test_output_under_home_is_written_there(away_from_home, capsys):
    """`output=~/sim` wrote the micrographs into ./~/sim, then failed reading ~/sim/truth.csv with a traceback."""
    cwd, home = away_from_home
    assert main(["output=~/sim", "preset=mini", "only=empty"]) == 0
    assert (home / "sim" / "empty.mrc").is_file() and (home / "sim" / "truth.csv").is_file()
    assert list(cwd.iterdir()) == []


def test_noise_scale_scales_only_the_residual_noise(tmp_path, capsys):
    images = {}
    for scale in (0.0, 0.5, 1.0):
        out = tmp_path / f"sim{scale:g}"
        assert main([f"output={out}", "preset=mini", "only=s05_small_rings_crowded", f"noise_scale={scale:g}"]) == 0
        images[scale] = mrcfile.read(out / "s05_small_rings_crowded.mrc").astype(np.float64)
        truth = pd.read_csv(out / "truth.csv")
        if scale == 0.0:
            truth0 = truth
        pd.testing.assert_frame_equal(truth, truth0)  # the same particles
    # The noise enters linearly (the final blur is linear; the median shift is a constant).
    full, half = images[1.0] - images[0.0], images[0.5] - images[0.0]
    np.testing.assert_allclose(half - half.mean(), 0.5 * (full - full.mean()), atol=1e-4 * full.std())
    assert full.std() > 0.1
    # A set with another noise scale is not mistaken for the cached one.
    assert not write_suite(tmp_path / "sim1", preset="mini", only=["s05_small_rings_crowded"], noise_scale=0.5).reused
    assert main([f"output={tmp_path / 'x'}", "noise_scale=-1"]) == 2
    assert "noise_scale" in capsys.readouterr().err
    with pytest.raises(ValueError, match="noise_scale must be a finite number >= 0, got inf"):
        write_suite(tmp_path / "inf", preset="mini", only=["empty"], noise_scale=float("inf"))


def test_rim_blur_softens_the_objects_and_keeps_them(tmp_path, capsys):
    images = {}
    for blur in (0.0, 12.0):
        out = tmp_path / f"rim{blur:g}"
        argv = [f"output={out}", "preset=mini", "only=s05_small_rings_crowded", "noise_scale=0", f"rim_blur_A={blur:g}"]
        assert main(argv) == 0
        images[blur] = mrcfile.read(out / "s05_small_rings_crowded.mrc").astype(np.float64)
        truth = pd.read_csv(out / "truth.csv")
        if blur == 0.0:
            truth0 = truth
        pd.testing.assert_frame_equal(truth, truth0)  # the same objects
    sharp, soft = (np.hypot(*np.gradient(images[b])) for b in (0.0, 12.0))
    # 12 Å is 3 px at the mini preset's 4 Å/px: the steepest rims lose much of their slope ...
    assert np.percentile(soft, 99.9) < 0.7 * np.percentile(sharp, 99.9)
    # ... and the soft image is the sharp one blurred by 3 px (the fringe, the
    # final blur and the smooth background commute with it), up to the median
    # subtracted at the end and the borders.
    expected = ndi.gaussian_filter(images[0.0], 3.0, truncate=3.0)
    diff = (images[12.0] - images[12.0].mean()) - (expected - expected.mean())
    assert np.abs(diff[20:-20, 20:-20]).max() < 0.01 * images[0.0].std()
    assert not write_suite(tmp_path / "rim0", preset="mini", only=["s05_small_rings_crowded"], noise_scale=0,
                           rim_blur_A=4.0).reused
    assert main([f"output={tmp_path / 'x'}", "rim_blur_A=-1"]) == 2
    assert "rim_blur_A" in capsys.readouterr().err


@pytest.mark.parametrize("argv, word", [
    (["output=x", "bogus=1"], "bogus"),
    (["output=x", "preset=huge"], "preset"),
    (["output=x", "seed=abc"], "seed"),
    (["output=x", "dims=4"], "dims"),
    (["output=x", "noise_scale=inf"], "noise_scale must be a finite number >= 0, got inf"),
    (["output=x", "only=,,"], "only: cannot read the value ',,'"),  # a YAML error: was a traceback
    ([], "output"),
    (["output"], "key=value"),
    (["output=x", "preset=mini", "only=s99_nothing"], "s99_nothing"),
    (["output=x", "dims=3", "noise_scale=0.5", "preset=mini"], "dims=3 takes output, n and seed only; preset, noise_scale are for micrographs"),
])
def test_cli_errors_name_the_key(argv, word, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert word in err and len(err.splitlines()) == 1


def test_dims3_without_synthetic3d_is_a_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "lipoframe.synthetic3d", None)
    assert main([f"output={tmp_path}", "dims=3"]) == 2
    assert "synthetic3d" in capsys.readouterr().err


def test_dims3_into_a_2d_set_keeps_its_truth(tmp_path, capsys, monkeypatch):
    """dims=3 into a folder of a 2D simulated set overwrote its truth.csv with the tomograms' (and a ValueError was a traceback)."""
    from lipoframe import synthetic3d

    for key, value in (("shape", (32, 64, 64)), ("diameters_A", (150.0,)), ("counts", (2,))):  # fast, fixed or not
        monkeypatch.setitem(synthetic3d.write_tomogram_dataset.__kwdefaults__, key, value)
    write_scenes(tmp_path, [small_scene(name="one")])
    text = (tmp_path / "truth.csv").read_text()
    assert main([f"output={tmp_path}", "dims=3", "n=1"]) == 2
    captured = capsys.readouterr()
    assert len(captured.err.strip().splitlines()) == 1 and f"{tmp_path / 'truth.csv'}: not the truth.csv of a set of tomograms" in captured.err
    assert (tmp_path / "truth.csv").read_text() == text and not list(tmp_path.glob("tomo_*"))
    # into a tomogram set's folder, with fewer tomograms: the other's truth is kept, and said so
    tomos = tmp_path / "tomos"
    assert main([f"output={tomos}", "dims=3", "n=2"]) == 0
    assert main([f"output={tomos}", "dims=3", "n=1", "seed=3"]) == 0
    out = capsys.readouterr().out
    assert f"truth:   {tomos / 'truth.csv'} (also holds the 1 other tomogram(s) written there before)" in out.splitlines()
    assert set(pd.read_csv(tomos / "truth.csv").micrograph) == {"tomo_001", "tomo_002"}


def test_dims3_delegates(tmp_path, capsys, monkeypatch):
    import types

    calls = {}
    fake = types.ModuleType("lipoframe.synthetic3d")

    def write_tomogram_dataset(folder, *, n, seed):
        calls.update(folder=folder, n=n, seed=seed)
        return [folder / "t.mrc"]

    fake.write_tomogram_dataset = write_tomogram_dataset
    monkeypatch.setitem(sys.modules, "lipoframe.synthetic3d", fake)
    assert main([f"output={tmp_path}", "dims=3", "n=3", "seed=5"]) == 0
    assert calls == {"folder": tmp_path, "n": 3, "seed": 5}
    assert f"next:    lipoframe run +experiment=tomo input={tmp_path} " in capsys.readouterr().out  # a command that works on volumes


def test_the_same_seed_gives_byte_identical_files(tmp_path):
    import time

    scenes = [small_scene(name="one")]
    a = write_scenes(tmp_path / "a", scenes)
    time.sleep(1.1)  # mrcfile's default label holds the creation time
    b = write_scenes(tmp_path / "b", scenes)
    for name in ("one.mrc", "truth.csv", "micrographs.csv"):
        assert (a.folder / name).read_bytes() == (b.folder / name).read_bytes(), name


def test_demo_dataset_still_works(tmp_path):
    paths = write_demo_dataset(tmp_path, n=1)
    truth = pd.read_csv(tmp_path / "truth.csv")
    assert [p.name for p in paths] == ["demo_001.mrc"] and len(truth) > 10



def test_registered_as_lipoframe_commands(capsys):
    from lipoframe.cli import main as cli_main

    assert cli_main(["simulate", "--help"]) == 0
    assert "preset=" in capsys.readouterr().out
    assert cli_main(["evaluate", "--help"]) == 0
    assert "tolerance=" in capsys.readouterr().out


def test_defocus_fringe_gives_a_bright_halo():
    def halo(fringe):
        spec = small_scene(shape=(512, 512), components=(Component(400, 10, 1, SOLID),), coverage=0.1,
                           noise=0.0, gradient=0, lowfreq=0, texture=0, ellipticity=0, fringe=fringe)
        img, truth = render_scene(spec)
        yy, xx = np.mgrid[:512, :512]
        rho = np.min([np.hypot(xx - r.x_px, yy - r.y_px) / (r.diameter_px / 2) for r in truth.itertuples()], axis=0)
        return img[(rho > 1.02) & (rho < 1.12)].mean() - img[rho > 2.5].mean()

    assert halo(0.0) == pytest.approx(0.0, abs=0.02)
    assert halo(1.0) > 0.1


def test_ice_balls_and_nested_vesicles():
    _, truth = render_scene(small_scene(shape=(1024, 1024), n_ice=2, coverage=0.05))
    ice = truth[truth.kind == "ice"].reset_index(drop=True)
    assert len(ice) == 2
    assert 150 <= ice.loc[1, "diameter_px"] * 4.0 <= 450  # the second one is a round ball
    ves = (("vesicle", 1.0),)

    def vesicles(nested):
        return render_scene(small_scene(components=(Component(480, 5, 1, ves),), nested=nested, noise=0, fringe=0,
                                        gradient=0, lowfreq=0, texture=0))

    plain, t0 = vesicles(0.0)
    nested, t1 = vesicles(1.0)
    pd.testing.assert_frame_equal(t0, t1)  # same particles; the truth holds the outer vesicle only
    yy, xx = np.mgrid[: plain.shape[0], : plain.shape[1]]
    inside = np.zeros(plain.shape, bool)
    for r in t0.itertuples():
        inside |= np.hypot(xx - r.x_px, yy - r.y_px) < 0.9 * r.diameter_px / 2
    assert nested[inside].mean() < plain[inside].mean() - 0.2  # a second membrane inside
