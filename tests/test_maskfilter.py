"""The ``mask`` filter: picks in regions a per-micrograph mask marks as bad are rejected."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import TINY_ARGS, TINY_SHAPE, tiny_image, write_mrc
from lipoframe import schema
from lipoframe.builtin.maskfilter import MASK_VALUE, MaskFilter, MaskParams, disc_offsets, mean_in_discs
from lipoframe.records import InputError, Micrograph, MicrographMeta, PickContext

MCL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "micrographcleaner_testmic"


def half_plane(shape=(200, 300), col=150) -> np.ndarray:
    """1 (bad) from column ``col`` on, 0 before."""
    mask = np.zeros(shape, np.float32)
    mask[:, col:] = 1
    return mask


def test_disc_lattice_is_inside_the_unit_disc_centre_first_and_symmetric():
    for ndim in (2, 3):
        off = disc_offsets(ndim)
        assert off.shape[1] == ndim and np.all(off[0] == 0)
        assert np.all(np.linalg.norm(off, axis=1) <= 1 + 1e-9)
        np.testing.assert_allclose(off.mean(axis=0), 0, atol=1e-12)  # no side preferred
    # The lattice fills the disc: one point per unit cell, pi * n^2 points for n per radius.
    assert abs(len(disc_offsets(2, points_per_radius=20)) / (np.pi * 20**2) - 1) < 0.01
    with pytest.raises(ValueError, match="ndim"):
        disc_offsets(4)


def test_mean_in_discs_is_the_bad_share_of_each_disc_also_on_a_binned_mask():
    mask = half_plane()
    centres = np.array([[100, 60], [100, 240], [100, 149.5]])  # clean, bad, on the boundary (row, col)
    radii = np.array([20.0, 20.0, 30.0])
    np.testing.assert_allclose(mean_in_discs(mask, centres, radii), [0, 1, 0.5], atol=0.03)
    # The same mask made on the micrograph binned by 2: the same means.
    binned = mask.reshape(100, 2, 150, 2).mean(axis=(1, 3))
    np.testing.assert_allclose(mean_in_discs(binned, centres, radii, scale=np.array([0.5, 0.5])), [0, 1, 0.5], atol=0.03)
    assert mean_in_discs(mask, np.zeros((0, 2)), np.zeros(0)).shape == (0,)
    # Tomograms: balls in a volume whose planes are the same half-plane mask.
    vol = np.repeat(mask[None], 60, axis=0)
    np.testing.assert_allclose(mean_in_discs(vol, np.array([[30, 100, 60], [30, 100, 240]]), np.array([20.0, 20.0])), [0, 1], atol=1e-6)
    with pytest.raises(ValueError, match="radii"):
        mean_in_discs(mask, centres, radii[:2])


def _mic(path: Path, shape=(200, 300)) -> Micrograph:
    return Micrograph(meta=MicrographMeta(name=path.stem, path=str(path), shape=shape, pixel_size=1.0), image=np.zeros(shape, np.float32))


def _picks() -> pd.DataFrame:
    # clean; bad; 4.5 px (0.15 radius) short of the boundary at 149.5, so 40 % of it lies in the bad region
    return pd.DataFrame({schema.X: [60.0, 240.0, 145.0], schema.Y: [100.0, 100.0, 100.0], schema.DIAMETER: [40.0, 40.0, 60.0], schema.SCORE: [9.0, 9.0, 9.0]})


CTX = PickContext(dmin_px=30, dmax_px=80)


def test_picks_on_the_bad_side_are_rejected_and_the_input_is_not_changed(tmp_path):
    write_mrc(tmp_path / "masks" / "mic.mrc", half_plane(), pixel_size=None)
    picks = _picks()
    before = picks.copy()
    out = MaskFilter(MaskParams(folder=str(tmp_path / "masks"))).apply(picks, _mic(tmp_path / "mics" / "mic.mrc"), CTX)
    pd.testing.assert_frame_equal(picks, before)
    assert out[schema.ACCEPTED].tolist() == [True, False, True]  # 40 % bad: kept at threshold 0.5
    assert out[schema.REASON].tolist() == ["", "mask", ""]
    h = 0.15  # the circular segment beyond 0.15 radius from the centre, to the lattice's resolution (1/8 radius)
    np.testing.assert_allclose(out[MASK_VALUE], [0, 1, (np.arccos(h) - h * np.sqrt(1 - h * h)) / np.pi], atol=0.04)
    strict = MaskFilter(MaskParams(folder=str(tmp_path / "masks"), threshold=0.2)).apply(picks, _mic(tmp_path / "mics" / "mic.mrc"), CTX)
    assert strict[schema.ACCEPTED].tolist() == [True, False, False]
    empty = MaskFilter(MaskParams(folder=str(tmp_path / "masks"))).apply(picks.iloc[:0], _mic(tmp_path / "mics" / "mic.mrc"), CTX)
    assert len(empty) == 0 and MASK_VALUE in empty.columns


@pytest.mark.parametrize("kind", ["gz", "bz2"])
def test_compressed_mrc_masks_are_read(tmp_path, kind):
    """A mask saved as a gzip- or bzip2-compressed MRC (``filter.mask.suffix=_mask.mrc.gz``) is read as the MRC."""
    import bz2
    import gzip

    plain = write_mrc(tmp_path / "plain.mrc", half_plane(), pixel_size=None)
    (tmp_path / "masks").mkdir()
    (tmp_path / "masks" / f"mic_mask.mrc.{kind}").write_bytes({"gz": gzip, "bz2": bz2}[kind].compress(plain.read_bytes()))
    f = MaskFilter(MaskParams(folder=str(tmp_path / "masks"), suffix=f"_mask.mrc.{kind}"))
    out = f.apply(_picks(), _mic(tmp_path / "mics" / "mic.mrc.bz2"), CTX)  # the micrograph compressed too: its stem
    assert out[schema.ACCEPTED].tolist() == [True, False, True]
    (tmp_path / "masks" / f"mic_mask.mrc.{kind}").write_bytes(b"BZh9" if kind == "bz2" else b"\x1f\x8b\x08")
    f = MaskFilter(MaskParams(folder=str(tmp_path / "masks"), suffix=f"_mask.mrc.{kind}"))
    with pytest.raises(InputError, match=rf"mic_mask\.mrc\.{kind}: not a readable \w+-compressed MRC file \(.*truncated or corrupt\)$"):
        f.apply(_picks(), _mic(tmp_path / "mics" / "mic.mrc.bz2"), CTX)


def test_binned_inverted_integer_masks_in_tiff_or_png(tmp_path):
    import tifffile
    from PIL import Image

    binned = half_plane((50, 75), col=38)  # binned by 4, bad from column 152 on
    keep = ((1 - binned) * 255).astype(np.uint8)  # a hand-drawn "keep" selection, 0/255
    tifffile.imwrite(tmp_path / "mic_keep.tif", keep)
    Image.fromarray(keep).save(tmp_path / "mic_keep.png")
    for suffix in ("_keep.tif", "_keep.png"):
        f = MaskFilter(MaskParams(folder=str(tmp_path), suffix=suffix, invert=True))
        out = f.apply(_picks(), _mic(tmp_path / "mic.mrc"), CTX)
        assert out[schema.ACCEPTED].tolist() == [True, False, True], suffix


def test_colour_png_and_tiff_masks_are_read_as_their_8_bit_values(tmp_path):
    """A selection drawn in an image editor is often saved as RGB(A): the readers average its
    colours into floating point, and the mask was refused as 'a floating-point mask ... found
    0 to 255'. White-on-black, red-on-black and a colour TIFF all read as the 0/1 mask they draw."""
    import tifffile
    from PIL import Image

    from lipoframe.builtin.maskfilter import read_mask

    binned = half_plane((50, 75), col=38)
    white = (binned * 255).astype(np.uint8)
    rgb = np.stack([white] * 3, axis=-1)
    Image.fromarray(rgb).save(tmp_path / "mic_rgb.png")
    Image.fromarray(np.dstack([rgb, np.full(white.shape, 255, np.uint8)])).save(tmp_path / "mic_rgba.png")
    red = np.zeros_like(rgb)
    red[..., 0] = white
    Image.fromarray(red).save(tmp_path / "mic_red.png")
    tifffile.imwrite(tmp_path / "mic_rgb.tif", rgb, photometric="rgb")
    # grey + alpha (an editor's selection on a transparent layer): the grey sample, not its mean with
    # the alpha (0.5 and 1 before, which no threshold but 0.5 reads right)
    tifffile.imwrite(tmp_path / "mic_ga.tif", np.dstack([white, np.full(white.shape, 255, np.uint8)]),
                     photometric="minisblack", planarconfig="contig", extrasamples=["unassalpha"])
    Image.fromarray(np.dstack([white, np.full(white.shape, 255, np.uint8)]), mode="LA").save(tmp_path / "mic_ga.png")
    for suffix in ("_rgb.png", "_rgba.png", "_red.png", "_rgb.tif", "_ga.tif", "_ga.png"):
        np.testing.assert_array_equal(read_mask(tmp_path / f"mic{suffix}", ndim=2), binned, err_msg=suffix)
        out = MaskFilter(MaskParams(folder=str(tmp_path), suffix=suffix)).apply(_picks(), _mic(tmp_path / "mic.mrc"), CTX)
        assert out[schema.ACCEPTED].tolist() == [True, False, True], suffix
    graded = np.stack([(binned * 100).astype(np.uint8)] * 2 + [(binned * 40).astype(np.uint8)], axis=-1)
    graded[:, 60:, 0] = 10  # a colour map with several levels: graded 8 bits, 255 = 1
    Image.fromarray(graded).save(tmp_path / "mic_graded.png")
    np.testing.assert_allclose(read_mask(tmp_path / "mic_graded.png", ndim=2), graded.astype(np.float32).mean(axis=-1) / 255, rtol=1e-6)


def test_missing_or_misfit_masks_name_the_file(tmp_path):
    mic = _mic(tmp_path / "mics" / "mic_a.mrc")
    with pytest.raises(InputError, match=r"mic_a\.mrc: no mask .*mic_a_mask\.mrc"):
        MaskFilter(MaskParams(folder=str(tmp_path), suffix="_mask.mrc")).apply(_picks(), mic, CTX)
    kept = MaskFilter(MaskParams(folder=str(tmp_path), suffix="_mask.mrc", missing="keep")).apply(_picks(), mic, CTX)
    assert kept[schema.ACCEPTED].all() and kept[MASK_VALUE].isna().all()
    write_mrc(tmp_path / "mic_a_mask.mrc", np.zeros((100, 100), np.float32), pixel_size=None)  # square mask, 200x300 micrograph
    with pytest.raises(InputError, match=r"mic_a_mask\.mrc: mask of shape \(100, 100\) does not fit"):
        MaskFilter(MaskParams(folder=str(tmp_path), suffix="_mask.mrc")).apply(_picks(), mic, CTX)
    write_mrc(tmp_path / "mic_a_pct.mrc", 100 * half_plane(), pixel_size=None)  # a float mask in percent
    with pytest.raises(InputError, match=r"mic_a_pct\.mrc: a floating-point mask must hold values in \[0, 1\].*0 to 100"):
        MaskFilter(MaskParams(folder=str(tmp_path), suffix="_pct.mrc")).apply(_picks(), mic, CTX)
    (tmp_path / "mic_a.weird").write_text("x")
    with pytest.raises(InputError, match=r"mic_a\.weird: no reader for 2D files ending in .\.weird."):
        MaskFilter(MaskParams(folder=str(tmp_path), suffix=".weird")).apply(_picks(), mic, CTX)


def test_tomogram_masks_judge_balls_in_the_volume(tmp_path):
    vol = np.zeros((60, 200, 300), np.float32)
    vol[:30] = 1  # the upper half of the volume is bad
    np.save(tmp_path / "tomo.npy", vol[:, ::2, ::2].copy())  # a mask at bin 2 in y and x, full in z: refused
    mic = Micrograph(meta=MicrographMeta(name="tomo", path=str(tmp_path / "t" / "tomo.mrc"), shape=vol.shape, pixel_size=1.0), image=vol)
    picks = pd.DataFrame({schema.X: [150.0, 150.0], schema.Y: [100.0, 100.0], schema.Z: [15.0, 45.0], schema.DIAMETER: [20.0, 20.0], schema.SCORE: [5.0, 5.0]})
    with pytest.raises(InputError, match="does not fit"):
        MaskFilter(MaskParams(folder=str(tmp_path), suffix=".npy")).apply(picks, mic, CTX)
    np.save(tmp_path / "tomo.npy", vol[::2, ::2, ::2].copy())
    out = MaskFilter(MaskParams(folder=str(tmp_path), suffix=".npy")).apply(picks, mic, CTX)
    assert out[schema.ACCEPTED].tolist() == [False, True]
    from PIL import Image

    Image.fromarray((255 * vol[0]).astype(np.uint8)).save(tmp_path / "tomo.png")  # a picture where a volume is expected
    with pytest.raises(InputError, match=r"tomo\.png: a 2D array where a 3D one is expected"):
        MaskFilter(MaskParams(folder=str(tmp_path), suffix=".png")).apply(picks, mic, CTX)


@pytest.mark.parametrize("kw, name", [
    ({}, "filter.mask.folder"),
    ({"folder": "m", "threshold": 1.5}, "filter.mask.threshold"),
    ({"folder": "m", "suffix": ""}, "filter.mask.suffix"),
    ({"folder": "m", "suffix": "a/b.mrc"}, "filter.mask.suffix"),
    ({"folder": "m", "missing": "skip"}, "filter.mask.missing"),
])
def test_bad_parameters_name_themselves(kw, name):
    with pytest.raises(ValueError, match=name.replace(".", r"\.")):
        MaskParams(**kw)


def test_a_missing_mask_folder_stops_the_run_before_picking(tmp_path, run_cli):
    mics = tmp_path / "mics"
    write_mrc(mics / "mic_0.mrc", tiny_image(seed=0)[0])
    out_dir = tmp_path / "out"
    code, _, err = run_cli("run", f"input={mics}", f"output={out_dir}", "filter=[diameter_range,mask]",
                           f"filter.mask.folder={tmp_path / 'no_such_masks'}", *TINY_ARGS)
    assert code == 2
    lines = [ln for ln in err.splitlines() if "filter.mask.folder" in ln]
    assert len(lines) == 1 and "no_such_masks" in lines[0] and "Traceback" not in err
    assert not (out_dir / "picks.csv").exists()


def test_run_with_masks_rejects_masked_picks_and_a_micrograph_without_one_fails_alone(tmp_path, run_cli):
    mics, masks = tmp_path / "mics", tmp_path / "masks"
    truths = {}
    for i in range(3):
        img, truths[f"mic_{i}"] = tiny_image(seed=i)
        write_mrc(mics / f"mic_{i}.mrc", img)
    # mic_0: the regions of its two largest particles are bad; mic_1: nothing is bad; mic_2: no mask.
    bad = truths["mic_0"].nlargest(2, "diameter_px")
    rows, cols = np.indices(TINY_SHAPE)
    mask0 = np.zeros(TINY_SHAPE, np.float32)
    for t in bad.itertuples():
        mask0[np.hypot(cols - t.x_px, rows - t.y_px) < 0.7 * t.diameter_px] = 1
    write_mrc(masks / "mic_0.mrc", mask0, pixel_size=None)
    write_mrc(masks / "mic_1.mrc", np.zeros(TINY_SHAPE, np.float32), pixel_size=None)
    out_dir = tmp_path / "out"
    code, out, err = run_cli("run", f"input={mics}", f"output={out_dir}", "filter=[diameter_range,mask]", f"filter.mask.folder={masks}", *TINY_ARGS)
    assert code == 1  # mic_2 failed, and the exit code says so
    assert len([ln for ln in err.splitlines() if "mic_2.mrc: no mask" in ln]) == 1 and "Traceback" not in err
    picks = pd.read_csv(out_dir / "picks.csv")
    assert set(picks["micrograph"]) == {"mic_0", "mic_1"}
    p0 = picks[picks["micrograph"] == "mic_0"]
    kept = truths["mic_0"].drop(bad.index)
    # Each particle outside the bad regions is picked once; none inside is.
    assert len(p0) == len(kept)
    for t in kept.itertuples():
        assert (np.hypot(p0["x_px"] - t.x_px, p0["y_px"] - t.y_px) < 0.2 * t.diameter_px).sum() == 1
    assert len(picks[picks["micrograph"] == "mic_1"]) == len(truths["mic_1"])
    summary = json.loads((out_dir / "run_summary.json").read_text())
    assert summary["micrographs"]["failed"] == 1 and summary["picks"]["rejected"]["mask"] >= len(bad)


@pytest.mark.skipif(not MCL.is_dir(), reason="shared MicrographCleaner test micrograph not available")
def test_micrographcleaner_mask_rejects_the_ice_ball(tmp_path, run_cli):
    # Alone, the micrograph's 400 px ice ball is picked (nothing to compare it with); its
    # MicrographCleaner mask (0 clean ... 1 bad) rejects it.
    mic = MCL / "Ucsf_stack_1142_DW.mrc"
    base = ["runner.workers=1", "runner.progress=false", "runner.report=false"]
    code, _, err = run_cli("run", f"input={mic}", f"output={tmp_path / 'plain'}", *base)
    assert code == 0, err
    plain = pd.read_csv(tmp_path / "plain" / "picks.csv")
    assert len(plain) == 1 and plain["diameter_px"].iloc[0] > 300
    code, _, err = run_cli("run", f"input={mic}", f"output={tmp_path / 'masked'}", "filter=[diameter_range,contamination,speck,population,mask]",
                           f"filter.mask.folder={MCL}", "filter.mask.suffix=_contamination_mask.mrc", *base)
    assert code == 0, err
    assert len(pd.read_csv(tmp_path / "masked" / "picks.csv")) == 0


def test_a_graded_8_bit_mask_is_read_on_its_own_scale(tmp_path):
    """A probability mask stored as 8 bits (255 = certainly bad) on a clean micrograph: its largest
    value, 40 (0.16), is not 'bad'; dividing by it rejected every pick above 0.08. A two-valued
    0/N mask is still a binary mask whatever N."""
    import tifffile

    from lipoframe.builtin.maskfilter import read_mask

    graded = np.zeros((50, 75), np.uint8)
    graded[:, 38:] = 40
    graded[:, 60:] = 20
    tifffile.imwrite(tmp_path / "mic_mask.tif", graded)
    assert np.allclose(read_mask(tmp_path / "mic_mask.tif", ndim=2), graded / 255.0)
    f = MaskFilter(MaskParams(folder=str(tmp_path), suffix="_mask.tif"))
    out = f.apply(_picks(), _mic(tmp_path / "mic.mrc"), CTX)
    assert out[schema.ACCEPTED].all()
    binary = (half_plane((50, 75), col=38) * 128).astype(np.uint8)
    tifffile.imwrite(tmp_path / "mic_bin.tif", binary)
    assert np.array_equal(read_mask(tmp_path / "mic_bin.tif", ndim=2), binary / np.float32(128))
