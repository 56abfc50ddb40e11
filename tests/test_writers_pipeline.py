"""End to end: `writer=[csv,star,cryosparc,cbox,box]` through Hydra and the runner.

One synthetic particle per micrograph, written once as MRC and once as TIFF
(the same array): the exported RELION coordinate must be the particle's pixel
for the MRC and its row-flipped pixel for the TIFF.
"""

from __future__ import annotations

import json
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile
import tifffile

from lipoframe.synthetic import render

SHAPE = (384, 448)
TRUE_X, TRUE_Y, TRUE_D = 150.0, 110.0, 120.0


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from lipoframe.app import prepare_hydra
    from lipoframe.config import config_dir, to_run_config

    prepare_hydra()
    with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
        cfg = hydra_compose(config_name="config", overrides=overrides)
    return to_run_config(cfg)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """``one.mrc`` and ``two.tif``: the same array, one particle."""
    root = tmp_path_factory.mktemp("e2e")
    truth = pd.DataFrame({"x_px": [TRUE_X], "y_px": [TRUE_Y], "diameter_px": [TRUE_D]})
    img = render(SHAPE, truth, noise=0.05, seed=2).astype(np.float32)
    inp = root / "in"
    inp.mkdir()
    with mrcfile.new(inp / "one.mrc") as m:
        m.set_data(img)
        m.voxel_size = 2.0
    tifffile.imwrite(inp / "two.tif", img, resolution=(1e8 / 2.0, 1e8 / 2.0), resolutionunit="CENTIMETER")
    return inp


def run_on(inp: Path, out: Path, *overrides: str) -> Path:
    from lipoframe.runner import run_pipeline

    cfg = compose([
        f"input={inp}", f"output={out}", "dmin=160", "dmax=320", "units=A",
        "writer=[csv,star,cryosparc,cbox,box]", "runner.workers=1", "runner.progress=false", "runner.report=false", *overrides,
    ])
    result = run_pipeline(cfg, out)
    assert result.ok, result.summary()
    return out


@pytest.fixture(scope="module")
def run_dir(inputs):
    return run_on(inputs, inputs.parent / "out")


def test_all_writers_selected_at_once(run_dir: Path):
    for rel in ("picks.csv", "relion/autopick.star", "cryosparc/particles.cs", "cryosparc/particles.star",
                "cbox/one.cbox", "box/one.box", "bins/bin1/autopick.star", "bins/bin1/coords/two_autopick.star"):
        assert (run_dir / rel).is_file(), rel


def test_mrc_and_tiff_particle_at_the_right_pixel(run_dir: Path):
    picks = pd.read_csv(run_dir / "picks.csv")
    for name, expected_row in (("one", TRUE_Y), ("two", SHAPE[0] - 1 - TRUE_Y)):
        coords = starfile.read(run_dir / "relion" / "coords" / f"{name}_autopick.star")
        best = coords.sort_values("rlnAutopickFigureOfMerit", ascending=False).iloc[0]
        # the picker finds the particle within a pixel or two; the writer puts it in RELION's frame
        assert abs(best["rlnCoordinateX"] - TRUE_X) <= 2
        assert abs(best["rlnCoordinateY"] - expected_row) <= 2
        mine = picks[picks["micrograph"] == name].sort_values("score", ascending=False).iloc[0]
        assert best["rlnLipoframeDiameterPix"] == pytest.approx(mine["diameter_px"], abs=0.01)


def test_extraction_plan_gets_relion_command(run_dir: Path):
    md = run_dir / "extraction_plan.md"
    if not md.exists():
        pytest.skip("extraction_plan.md is not written by this build")
    text = md.read_text()
    assert "relion_preprocess" in text and "bins/bin1/autopick.star" in text


def test_cryosparc_keeps_same_named_micrographs_apart(tmp_path):
    """`dup/a/mic.mrc` and `dup/b/mic.mrc`: different micrographs, one file name."""
    from cryosparc.dataset import Dataset

    from lipoframe.runner import run_pipeline

    for sub, x in (("a", TRUE_X), ("b", TRUE_X + 150.0)):
        truth = pd.DataFrame({"x_px": [x], "y_px": [TRUE_Y], "diameter_px": [TRUE_D]})
        (tmp_path / "dup" / sub).mkdir(parents=True)
        with mrcfile.new(tmp_path / "dup" / sub / "mic.mrc") as m:
            m.set_data(render(SHAPE, truth, noise=0.05, seed=2).astype(np.float32))
            m.voxel_size = 2.0
    out = tmp_path / "out"
    cfg = compose([
        f"input={tmp_path / 'dup' / '*' / '*.mrc'}", f"output={out}", "dmin=160", "dmax=320", "units=A",
        "writer=[star,cryosparc,box]", "runner.workers=1", "runner.progress=false",
    ])
    result = run_pipeline(cfg, out)
    assert result.ok, result.summary()
    # the other writers name the results a-mic / b-mic; cryoSPARC gets the same names
    assert (out / "box" / "a-mic.box").is_file() and (out / "box" / "b-mic.box").is_file()
    d = Dataset.load(out / "cryosparc" / "particles.cs")
    paths = d["location/micrograph_path"].tolist()
    assert set(paths) == {"a-mic.mrc", "b-mic.mrc"}
    assert len(set(zip(paths, d["location/micrograph_uid"].tolist()))) == 2
    assert len(set(d["location/micrograph_uid"].tolist())) == 2
    # each micrograph's picks stay with it: its best pick is its own particle
    table = pd.DataFrame({
        "path": paths,
        "x": d["location/center_x_frac"] * d["location/micrograph_shape"][:, 1],
        "score": d["pick_stats/ncc_score"],
    })
    best = table.sort_values("score").groupby("path")["x"].last()
    assert abs(best["a-mic.mrc"] - TRUE_X) <= 2 and abs(best["b-mic.mrc"] - (TRUE_X + 150.0)) <= 2
    star = starfile.read(out / "cryosparc" / "particles.star")
    assert set(star["rlnMicrographName"]) == {"a-mic.mrc", "b-mic.mrc"}


def exported_rows(run: Path, name: str) -> dict[str, np.ndarray]:
    """The rows every writer but csv exported for micrograph ``name``, sorted, by format (box corners as written)."""
    from cryosparc.dataset import Dataset

    d = Dataset.load(run / "cryosparc" / "particles.cs")
    mine = np.array([p.startswith(name + ".") for p in d["location/micrograph_path"].tolist()])
    return {
        "star": np.sort(starfile.read(run / "relion" / "coords" / f"{name}_autopick.star")["rlnCoordinateY"].to_numpy(float)),
        "box": np.sort(np.loadtxt(run / "box" / f"{name}.box", ndmin=2)[:, 1]),
        "cbox": np.sort(starfile.read(run / "cbox" / f"{name}.cbox")["cryolo"]["CoordinateY"].to_numpy(float)),
        "cryosparc": np.sort(d["location/center_y_frac"][mine] * SHAPE[0]),
    }


@pytest.fixture(scope="module")
def flip_runs(inputs, run_dir):
    """The run on one.mrc + two.tif with each flip_y (None: the default)."""
    runs = {None: run_dir}
    for flip in (False, True):
        runs[flip] = run_on(inputs, inputs.parent / f"out_flip_{flip}", f"flip_y={str(flip).lower()}")
    picks = {k: pd.read_csv(r / "picks.csv") for k, r in runs.items()}
    for k in runs:  # the setting changes the exports only; one.mrc and two.tif are picked alike
        assert picks[k][["x_px", "y_px"]].equals(picks[None][["x_px", "y_px"]])
        one, two = (picks[k][picks[k]["micrograph"] == n][["x_px", "y_px"]].reset_index(drop=True) for n in ("one", "two"))
        assert one.equals(two) and len(one)
    return runs


@pytest.mark.parametrize("fmt", ["star", "box", "cbox", "cryosparc"])
def test_flip_y_decides_which_micrographs_every_writer_flips(flip_runs, fmt):
    mrc = exported_rows(flip_runs[None], "one")[fmt]  # the default: the MRC's rows as they are, the TIFF's flipped
    tiff = exported_rows(flip_runs[None], "two")[fmt]
    assert not np.allclose(mrc, tiff, atol=1)
    # false: the TIFF's rows as the MRC's (particles extracted from the unflipped originals)
    assert np.array_equal(exported_rows(flip_runs[False], "two")[fmt], mrc)
    assert np.array_equal(exported_rows(flip_runs[False], "one")[fmt], mrc)
    # true: the MRC flipped as the TIFF is by default
    assert np.array_equal(exported_rows(flip_runs[True], "one")[fmt], tiff)
    assert np.array_equal(exported_rows(flip_runs[True], "two")[fmt], tiff)


def test_the_csv_writer_never_flips(flip_runs):
    tables = [pd.read_csv(r / "csv" / "two.csv") for r in flip_runs.values()]
    assert all(t.equals(tables[0]) for t in tables)


def test_a_run_with_tiff_inputs_notes_once_that_their_rows_are_flipped(flip_runs, inputs, tmp_path, caplog):
    from lipoframe.runner import TIFF_ROWS

    def said(notes):
        return [n for n in notes if str(n).startswith(TIFF_ROWS)]

    notes = json.loads((flip_runs[None] / "run_summary.json").read_text())["notes"]
    assert len(said(notes)) == 1 and "flip_y=false" in said(notes)[0] and "1 TIFF micrograph" in said(notes)[0]
    for flip in (False, True):  # chosen: nothing to say
        assert not said(json.loads((flip_runs[flip] / "run_summary.json").read_text())["notes"])
    with caplog.at_level("INFO", logger="lipoframe"):
        run_on(inputs, tmp_path / "again")
    assert len(said(r.getMessage() for r in caplog.records)) == 1
    caplog.clear()
    with caplog.at_level("INFO", logger="lipoframe"):
        mrc_only = run_on(inputs / "one.mrc", tmp_path / "mrc")
    assert not said(r.getMessage() for r in caplog.records)
    assert not said(json.loads((mrc_only / "run_summary.json").read_text())["notes"])
