"""Writers: coordinates, layouts and round trips with the libraries real tools use.

The expected numbers in these tests come from the conventions in
docs/export.md (RELION: 0-based pixel centre, nearest pixel; TIFF rows flipped
as ``ny - 1 - y``; CBOX/EMAN: corner = centre - box / 2), not from running
the writers.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import starfile

from lipoframe import schema
from lipoframe.builtin.writers import (
    BoxWriter,
    CboxWriter,
    CryosparcWriter,
    CryosparcWriterParams,
    CsvWriter,
    CsvWriterParams,
    StarWriter,
    StarWriterParams,
    cryosparc_micrograph_names,
    export_view,
    file_stems,
    micrograph_fields,
)
from lipoframe.io import cryosparc as cs_io
from lipoframe.io import relion as relion_io
from lipoframe.io.coords import export_frame, nearest_pixel, on_pixel_centres
from lipoframe.io.star import quote
from lipoframe.plan import ExtractionPlan, SizeBin
from lipoframe.records import MicrographMeta, PickContext

GOLDEN = Path(__file__).parent / "golden"
NY, NX = 500, 640
PLAN = ExtractionPlan(
    policy="test",
    pixel_size=1.5,
    bins=(SizeBin(0, 100.0, 150.0, 1, 224, 300.0), SizeBin(1, 150.0, 200.0, 1, 320, 400.0)),
)
CTX = PickContext(dmin_px=100, dmax_px=200, pixel_size=1.5, seed=3)


def make_picks(rows: list[dict]) -> pd.DataFrame:
    """A finished pick table (what the runner hands to writers)."""
    base = {schema.SCORE: 1.0, schema.LEVEL: 0, schema.SIGMA: 10.0, schema.ACCEPTED: True, schema.REASON: ""}
    full = [{**base, **r} for r in rows]
    cols = [schema.MICROGRAPH, schema.X, schema.Y, schema.DIAMETER, schema.SCORE, schema.LEVEL, schema.SIGMA, schema.ACCEPTED, schema.REASON]
    extra = [c for r in full for c in r if c not in cols]
    df = pd.DataFrame(full, columns=cols + list(dict.fromkeys(extra)))
    if schema.SIZE_BIN not in df:
        d = df[schema.DIAMETER].to_numpy(dtype=float)
        df[schema.SIZE_BIN] = np.where(df[schema.ACCEPTED].to_numpy(dtype=bool), PLAN.assign(d), schema.REJECTED_BIN)
    return df


def meta(name: str, *, flip_y: bool = False, path: str | None = None, shape=(NY, NX)) -> MicrographMeta:
    return MicrographMeta(name=name, path=f"/data/mics/{name}.mrc" if path is None else path, shape=shape, pixel_size=1.5, flip_y=flip_y)


def write_all(picks, metas, out: Path, ctx=CTX, *, star=None, cs=None) -> list[Path]:
    written = []
    for w in (CsvWriter(), StarWriter(star or StarWriterParams()), CryosparcWriter(cs or CryosparcWriterParams()), CboxWriter(), BoxWriter()):
        written += w.write(picks, metas, PLAN, out, ctx)
    return written


def read_box(path: Path) -> np.ndarray:
    text = path.read_text()
    return np.array([[int(v) for v in line.split("\t")] for line in text.splitlines()], dtype=np.int64).reshape(-1, 4)


def relion_first_block(text: str) -> tuple[str, list[str], list[list[str]]]:
    """Read text the way RELION's MetaDataTable::readStar/readStarLoop does (no name given).

    First line containing ``data_`` is the block; after ``loop_``, labels are
    ``line[pos('_') + 1 : pos('#') - 1]``; rows until the first empty line;
    tokens split on blanks with '...' or "..." quoting.
    """
    assert "\r" not in text
    lines = text.split("\n")
    i = next(k for k, line in enumerate(lines) if "data_" in line)
    name = lines[i][lines[i].find("data_") + 5:]
    i = next(k for k in range(i + 1, len(lines)) if "loop_" in lines[k])
    labels, rows = [], []
    k = i + 1
    while k < len(lines):
        line = " ".join(lines[k].split())
        if line == "" or line[0] in "#;":
            if labels:
                break
            k += 1
            continue
        if line[0] != "_":
            break
        labels.append(line[line.find("_") + 1: line.find("#") - 1] if "#" in line else line[1:])
        k += 1
    while k < len(lines):
        line = " ".join(lines[k].split())
        if line == "":
            break
        rows.append(shlex.split(line))
        assert len(rows[-1]) == len(labels), f"row {line!r} has {len(rows[-1])} fields for {len(labels)} labels"
        k += 1
    return name, labels, rows


# ---------------------------------------------------------------------------
# The one convention test: a particle at a known pixel, in every format
# ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "x, y, flip, rx, ry",
    [
        # (x_px, y_px, TIFF?) -> RELION / EMAN centre pixel (nearest, halves up; TIFF row = 499 - y)
        (100.0, 60.0, False, 100, 60),
        (100.0, 60.0, True, 100, 439),
        (100.4, 59.6, False, 100, 60),
        (100.4, 59.6, True, 100, 439),  # 499 - 59.6 = 439.4
        (100.5, 59.5, False, 101, 60),
        (100.5, 59.5, True, 101, 440),  # 499 - 59.5 = 439.5 -> 440
        (0.0, 0.0, True, 0, 499),
    ],
)
def test_known_pixel_comes_out_right_in_every_format(tmp_path, x, y, flip, rx, ry):
    from cryosparc.dataset import Dataset

    ye = (NY - 1 - y) if flip else y  # the exported (sub-pixel) row
    picks = make_picks([{schema.MICROGRAPH: "m1", schema.X: x, schema.Y: y, schema.DIAMETER: 170.0, schema.SCORE: 0.75}])
    metas = {"m1": meta("m1", flip_y=flip)}
    out = tmp_path / "out"
    write_all(picks, metas, out)

    # csv keeps lipoframe's own frame
    csv = pd.read_csv(out / "picks.csv")
    assert csv[schema.X].iloc[0] == pytest.approx(x) and csv[schema.Y].iloc[0] == pytest.approx(y)

    # RELION: what Extract centres the box on is (long)rlnCoordinateX
    for folder in (out / "relion", out / "bins" / "bin2"):
        coords = starfile.read(folder / "coords" / "m1_autopick.star")
        assert int(coords["rlnCoordinateX"].iloc[0]) == rx and int(coords["rlnCoordinateY"].iloc[0]) == ry
        assert coords["rlnClassNumber"].iloc[0] == 2  # bin index 1 -> class 2
        assert coords["rlnLipoframeDiameterPix"].iloc[0] == pytest.approx(170.0)
        assert coords["rlnAutopickFigureOfMerit"].iloc[0] == pytest.approx(0.75)
    assert len(starfile.read(out / "bins" / "bin1" / "coords" / "m1_autopick.star")) == 0

    # EMAN .box: RELION and EMAN2 take corner + box / 2 (integers)
    for folder in (out / "box", out / "bins" / "bin2" / "box"):
        bx = read_box(folder / "m1.box")
        assert bx.shape == (1, 4) and bx[0, 2] == bx[0, 3] == 320
        assert bx[0, 0] + bx[0, 2] // 2 == rx and bx[0, 1] + bx[0, 3] // 2 == ry

    # CBOX: napari-boxmanager takes _CoordinateX + _Width / 2 (floats)
    cbox = starfile.read(out / "cbox" / "m1.cbox")["cryolo"]
    assert cbox["CoordinateX"].iloc[0] + cbox["Width"].iloc[0] / 2 == pytest.approx(x, abs=1e-3)
    assert cbox["CoordinateY"].iloc[0] + cbox["Height"].iloc[0] / 2 == pytest.approx(ye, abs=1e-3)
    assert cbox["Width"].iloc[0] == cbox["Height"].iloc[0] == 320
    assert cbox["EstWidth"].iloc[0] == cbox["EstHeight"].iloc[0] == pytest.approx(170.0)
    assert cbox["Confidence"].iloc[0] == pytest.approx(0.75)

    # cryoSPARC: fraction of [ny, nx], pixel centre, float32
    for folder in (out / "cryosparc", out / "bins" / "bin2" / "cryosparc"):
        d = Dataset.load(folder / "particles.cs")
        assert len(d) == 1
        assert d["location/micrograph_shape"][0].tolist() == [NY, NX]
        assert d["location/center_x_frac"][0] * NX == pytest.approx(x, abs=1e-3)
        assert d["location/center_y_frac"][0] * NY == pytest.approx(ye, abs=1e-3)
        assert d["pick_stats/template_idx"][0] == 1
        star = starfile.read(folder / "particles.star")
        assert star["rlnCoordinateX"].iloc[0] == pytest.approx(x, abs=1e-6)
        assert star["rlnCoordinateY"].iloc[0] == pytest.approx(ye, abs=1e-6)


@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize(
    "x, y, rx, ry",
    [
        # A centre may lie anywhere on the image, -0.5 to n - 0.5 (the pixels' extent); one on the
        # outer edge belongs to the edge pixel. Before, NX - 0.5 rounded half up to pixel NX, off the
        # image, and the float formats (CBOX, cryoSPARC) kept -0.5 and NX - 0.5, which a reader
        # that rounds (pyem: np.round of frac * nx) or truncates can take off the image too.
        (NX - 0.5, 60.0, NX - 1, 60),
        (-0.5, 60.0, 0, 60),
        (100.0, NY - 0.5, 100, NY - 1),
        (100.0, -0.5, 100, 0),
    ],
)
def test_a_pick_on_the_images_outer_edge_is_written_on_the_edge_pixel_in_every_format(tmp_path, x, y, rx, ry, flip):
    from cryosparc.dataset import Dataset

    if flip:
        ry = NY - 1 - ry
    picks = make_picks([{schema.MICROGRAPH: "m1", schema.X: x, schema.Y: y, schema.DIAMETER: 170.0,
                         schema.ACCEPTED: False, schema.REASON: "border"}])
    metas = {"m1": meta("m1", flip_y=flip)}
    out = tmp_path / "out"
    write_all(picks, metas, out, PickContext(dmin_px=100, dmax_px=200, pixel_size=1.5, seed=3, export_rejected=True))
    StarWriter(StarWriterParams(subpixel=True, per_bin=False)).write(
        picks, metas, PLAN, tmp_path / "subpixel", PickContext(dmin_px=100, dmax_px=200, pixel_size=1.5, seed=3, export_rejected=True))

    csv = pd.read_csv(out / "picks.csv")  # lipoframe's own table keeps the centre as found
    assert csv[schema.X].iloc[0] == x and csv[schema.Y].iloc[0] == y
    for folder in (out / "relion", tmp_path / "subpixel" / "relion"):  # RELION: (long)rlnCoordinateX
        coords = starfile.read(folder / "coords" / "m1_autopick.star")
        assert (int(coords["rlnCoordinateX"].iloc[0]), int(coords["rlnCoordinateY"].iloc[0])) == (rx, ry)
    bx = read_box(out / "box" / "m1.box")  # EMAN2 and RELION: corner + box / 2
    assert (bx[0, 0] + bx[0, 2] // 2, bx[0, 1] + bx[0, 3] // 2) == (rx, ry)
    cbox = starfile.read(out / "cbox" / "m1.cbox")["cryolo"]  # napari-boxmanager: corner + width / 2
    assert cbox["CoordinateX"].iloc[0] + cbox["Width"].iloc[0] / 2 == pytest.approx(rx, abs=1e-3)
    assert cbox["CoordinateY"].iloc[0] + cbox["Height"].iloc[0] / 2 == pytest.approx(ry, abs=1e-3)
    d = Dataset.load(out / "cryosparc" / "particles.cs")
    assert 0 <= d["location/center_x_frac"][0] < 1 and 0 <= d["location/center_y_frac"][0] < 1
    assert np.round(d["location/center_x_frac"][0] * NX) == rx and np.round(d["location/center_y_frac"][0] * NY) == ry
    star = starfile.read(out / "cryosparc" / "particles.star")
    assert (star["rlnCoordinateX"].iloc[0], star["rlnCoordinateY"].iloc[0]) == (rx, ry)


def test_subpixel_option_keeps_fraction_that_relion_truncates(tmp_path):
    picks = make_picks([{schema.MICROGRAPH: "m1", schema.X: 100.75, schema.Y: 20.25, schema.DIAMETER: 120.0}])
    StarWriter(StarWriterParams(subpixel=True, per_bin=False)).write(picks, {"m1": meta("m1")}, PLAN, tmp_path, CTX)
    coords = starfile.read(tmp_path / "relion" / "coords" / "m1_autopick.star")
    assert coords["rlnCoordinateX"].iloc[0] == pytest.approx(100.75)
    assert coords["rlnCoordinateY"].iloc[0] == pytest.approx(20.25)
    assert not (tmp_path / "bins").exists()


def test_export_frame_and_nearest_pixel():
    x, y = export_frame([1.0, 2.0, 3.0], [0.0, 10.25, 99.0], ny=[100, 100, 100], flip_y=[True, True, False])
    assert x.tolist() == [1.0, 2.0, 3.0]
    assert y.tolist() == [99.0, 88.75, 99.0]
    assert nearest_pixel([0.5, 1.5, 2.5, -0.5, 2.49]).tolist() == [1, 2, 3, 0, 2]
    assert on_pixel_centres([-0.5, -0.25, 0.0, 99.0, 99.25, 99.5], 100).tolist() == [0.0, 0.0, 0.0, 99.0, 99.0, 99.0]
    assert on_pixel_centres([9.5, 9.5], [10, 20]).tolist() == [9.0, 9.5]
    with pytest.raises(ValueError, match="n must be >= 1"):
        on_pixel_centres([0.0], 0)


def test_3d_picks_write_z(tmp_path):
    picks = make_picks([{schema.MICROGRAPH: "t1", schema.X: 50.0, schema.Y: 40.0, schema.Z: 12.6, schema.DIAMETER: 160.0}])
    metas = {"t1": meta("t1", shape=(64, 300, 400))}
    StarWriter(StarWriterParams(per_bin=False)).write(picks, metas, PLAN, tmp_path, CTX)
    CboxWriter().write(picks, metas, PLAN, tmp_path, CTX)
    coords = starfile.read(tmp_path / "relion" / "coords" / "t1_autopick.star")
    assert list(coords.columns[:3]) == ["rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ"]
    assert coords["rlnCoordinateZ"].iloc[0] == 13
    cbox = starfile.read(tmp_path / "cbox" / "t1.cbox")["cryolo"]
    assert cbox["CoordinateZ"].iloc[0] == pytest.approx(12.6)
    assert cbox["Depth"].iloc[0] == 320
    assert cbox["CoordinateY"].iloc[0] + cbox["Height"].iloc[0] / 2 == pytest.approx(40.0)


def test_a_pick_on_a_volumes_outer_plane_edge_is_written_on_that_plane(tmp_path):
    # z = nz - 0.5 rounded half up to plane nz, one past the last (as x and y above)
    picks = make_picks([{schema.MICROGRAPH: "t1", schema.X: 50.0, schema.Y: 40.0, schema.Z: 63.5, schema.DIAMETER: 160.0}])
    metas = {"t1": meta("t1", shape=(64, 300, 400))}
    StarWriter(StarWriterParams(per_bin=False)).write(picks, metas, PLAN, tmp_path, CTX)
    CboxWriter().write(picks, metas, PLAN, tmp_path, CTX)
    assert starfile.read(tmp_path / "relion" / "coords" / "t1_autopick.star")["rlnCoordinateZ"].iloc[0] == 63
    cbox = starfile.read(tmp_path / "cbox" / "t1.cbox")["cryolo"]
    assert cbox["CoordinateZ"].iloc[0] == pytest.approx(63.0)  # the slice centre


# ---------------------------------------------------------------------------
# Round trips and RELION's parser rules
# ---------------------------------------------------------------------------
def two_micrographs():
    picks = make_picks([
        {schema.MICROGRAPH: "mic.001", schema.X: 120.2, schema.Y: 80.7, schema.DIAMETER: 120.0, schema.SCORE: 2.5},
        {schema.MICROGRAPH: "mic.001", schema.X: 300.0, schema.Y: 250.5, schema.DIAMETER: 180.0, schema.SCORE: 1.25},
        {schema.MICROGRAPH: "mic.001", schema.X: 400.0, schema.Y: 100.0, schema.DIAMETER: 90.0, schema.SCORE: 0.5,
         schema.ACCEPTED: False, schema.REASON: "diameter_range"},
    ])
    metas = {"mic.001": meta("mic.001"), "empty": meta("empty")}
    return picks, metas


def test_relion_files_follow_relion_parser_rules(tmp_path):
    picks, metas = two_micrographs()
    StarWriter().write(picks, metas, PLAN, tmp_path, CTX)
    name, labels, rows = relion_first_block((tmp_path / "relion" / "coords" / "mic.001_autopick.star").read_text())
    assert name == ""
    assert labels == ["rlnCoordinateX", "rlnCoordinateY", "rlnClassNumber", "rlnAutopickFigureOfMerit", "rlnAnglePsi", "rlnLipoframeDiameterPix"]
    assert [(int(float(r[0])), int(float(r[1])), int(r[2])) for r in rows] == [(120, 81, 1), (300, 251, 2)]
    assert all(re.fullmatch(r"-?\d+(\.\d+)?", v) for r in rows for v in r)  # no NaN, <NA> or inf
    name, labels, rows = relion_first_block((tmp_path / "relion" / "autopick.star").read_text())
    assert name == "coordinate_files" and labels == ["rlnMicrographName", "rlnMicrographCoordinates"]
    assert [r[0] for r in rows] == ["/data/mics/mic.001.mrc", "/data/mics/empty.mrc"]
    for _, coord in rows:
        assert Path(coord).is_absolute() and Path(coord).is_file()


def test_star_round_trip_with_starfile(tmp_path):
    picks, metas = two_micrographs()
    StarWriter().write(picks, metas, PLAN, tmp_path, CTX)
    coords = starfile.read(tmp_path / "relion" / "coords" / "mic.001_autopick.star")
    assert coords["rlnClassNumber"].dtype.kind == "i"
    assert coords["rlnCoordinateX"].tolist() == [120.0, 300.0]
    assert coords["rlnLipoframeDiameterPix"].tolist() == [120.0, 180.0]
    lst = starfile.read(tmp_path / "relion" / "autopick.star", parse_as_string=["rlnMicrographName"])
    assert len(lst) == 2
    # per bin: bin1 holds the 120 px pick, bin2 the 180 px pick; both list every micrograph
    for k, expected_x in ((1, [120.0]), (2, [300.0])):
        folder = tmp_path / "bins" / f"bin{k}"
        assert len(starfile.read(folder / "autopick.star")) == 2
        assert starfile.read(folder / "coords" / "mic.001_autopick.star")["rlnCoordinateX"].tolist() == expected_x


def test_cbox_round_trip_with_starfile(tmp_path):
    picks, metas = two_micrographs()
    CboxWriter().write(picks, metas, PLAN, tmp_path, CTX)
    blocks = starfile.read(tmp_path / "cbox" / "mic.001.cbox", always_dict=True)
    assert list(blocks) == ["global", "cryolo", "cryolo_include"]
    assert float(blocks["global"]["cbox_format_version"]) == 1.0
    df = blocks["cryolo"]
    assert list(df.columns) == ["CoordinateX", "CoordinateY", "CoordinateZ", "Width", "Height", "Depth", "EstWidth", "EstHeight", "Confidence", "NumBoxes", "Angle"]
    assert df["Width"].tolist() == [224, 320]  # each pick's own bin box
    assert (df["CoordinateX"] + df["Width"] / 2).tolist() == pytest.approx([120.2, 300.0], abs=1e-3)
    assert df["EstWidth"].tolist() == pytest.approx([120.0, 180.0])
    assert df["Confidence"].tolist() == pytest.approx([2.5, 1.25])
    assert df["CoordinateZ"].isna().all()


def test_cbox_reads_in_pystardb_like_napari_boxmanager(tmp_path):
    """napari-boxmanager reads CBOX with pyStarDB (optional here: skipped when absent)."""
    star = pytest.importorskip("pyStarDB.sp_pystardb")
    picks, metas = two_micrographs()
    CboxWriter().write(picks, metas, PLAN, tmp_path, CTX)
    df = star.StarFile(str(tmp_path / "cbox" / "mic.001.cbox"))["cryolo"]
    assert (df["_CoordinateX"] + df["_Width"] / 2).tolist() == pytest.approx([120.2, 300.0], abs=1e-3)
    assert df["_EstWidth"].tolist() == pytest.approx([120.0, 180.0])
    assert len(star.StarFile(str(tmp_path / "cbox" / "empty.cbox"))["cryolo"]) == 0


def test_cryosparc_dtypes_match_cryosparc_tools(tmp_path):
    from cryosparc.dataset import Dataset

    picks, metas = two_micrographs()
    CryosparcWriter().write(picks, metas, PLAN, tmp_path, CTX)
    ours = Dataset.load(tmp_path / "cryosparc" / "particles.cs")
    # What cryosparc-tools itself writes for these slots (fixture of a real cryoSPARC file).
    fields = [
        ("location/micrograph_uid", "<u8"), ("location/exp_group_id", "<u4"), ("location/micrograph_path", "O"),
        ("location/micrograph_shape", "<u4", (2,)), ("location/micrograph_psize_A", "<f4"),
        ("location/center_x_frac", "<f4"), ("location/center_y_frac", "<f4"), ("location/min_dist_A", "<f4"),
        ("pick_stats/ncc_score", "<f4"), ("pick_stats/power", "<f4"), ("pick_stats/template_idx", "<u4"),
        ("pick_stats/angle_rad", "<f4"),
    ]
    ref_path = tmp_path / "ref.cs"
    Dataset.allocate(2, fields=fields).save(ref_path)
    ref = Dataset.load(ref_path)
    ours_descr = dict((f[0], f[1:]) for f in ours.descr())
    for f in ref.descr():
        assert ours_descr[f[0]] == f[1:], f[0]
    assert ours.fields()[0] == "uid" and len(set(ours["uid"].tolist())) == len(ours)
    assert set(ours.prefixes()) == {"location", "pick_stats", "lipoframe"}
    assert ours["lipoframe/diameter_px"].tolist() == pytest.approx([120.0, 180.0])
    assert ours["lipoframe/diameter_A"].tolist() == pytest.approx([180.0, 270.0])
    assert ours["location/micrograph_path"].tolist() == ["mic.001.mrc", "mic.001.mrc"]
    assert ours["location/micrograph_psize_A"].tolist() == pytest.approx([1.5, 1.5])
    # plain numpy reads it without pickle
    raw = np.load(tmp_path / "cryosparc" / "particles.cs", allow_pickle=False)
    assert raw.dtype["location/micrograph_path"].kind == "S"


def test_cryosparc_uids_are_shared_by_dataset_and_bin_sets(tmp_path):
    from cryosparc.dataset import Dataset

    picks, metas = two_micrographs()
    CryosparcWriter().write(picks, metas, PLAN, tmp_path, CTX)
    everything = Dataset.load(tmp_path / "cryosparc" / "particles.cs")
    by_uid = dict(zip(everything["uid"].tolist(), everything["lipoframe/size_bin"].tolist()))
    for k in (1, 2):
        part = Dataset.load(tmp_path / "bins" / f"bin{k}" / "cryosparc" / "particles.cs")
        assert len(part) == 1 and by_uid[int(part["uid"][0])] == k - 1


def test_cryosparc_invert_y_and_template(tmp_path):
    from cryosparc.dataset import Dataset

    picks = make_picks([{schema.MICROGRAPH: "m1", schema.X: 10.0, schema.Y: 100.0, schema.DIAMETER: 120.0}])
    metas = {"m1": meta("m1", path="/d/m1_denoised.mrc")}
    params = CryosparcWriterParams(invert_y=True, micrograph_name="J2/motioncorrected/{stem}.mrc", strip_suffix="_denoised", per_bin=False)
    CryosparcWriter(params).write(picks, metas, PLAN, tmp_path, CTX)
    d = Dataset.load(tmp_path / "cryosparc" / "particles.cs")
    assert d["location/center_y_frac"][0] * NY == pytest.approx(NY - 1 - 100.0, abs=1e-3)
    assert d["location/micrograph_path"][0] == "J2/motioncorrected/m1.mrc"
    # the STAR for Import Particle Stack stays in RELION's convention
    assert starfile.read(tmp_path / "cryosparc" / "particles.star")["rlnCoordinateY"].iloc[0] == pytest.approx(100.0)


def same_name_micrographs():
    """Two different micrographs named mic.mrc (keys as the runner makes them) and one c.mrc."""
    picks = make_picks([
        {schema.MICROGRAPH: "a-mic", schema.X: 10.0, schema.Y: 20.0, schema.DIAMETER: 120.0},
        {schema.MICROGRAPH: "b-mic", schema.X: 30.0, schema.Y: 40.0, schema.DIAMETER: 180.0},
        {schema.MICROGRAPH: "b-mic", schema.X: 50.0, schema.Y: 60.0, schema.DIAMETER: 120.0},
        {schema.MICROGRAPH: "c", schema.X: 70.0, schema.Y: 80.0, schema.DIAMETER: 120.0},
    ])
    metas = {
        "a-mic": meta("a-mic", path="/data/dup/a/mic.mrc"),
        "b-mic": meta("b-mic", path="/data/dup/b/mic.mrc"),
        "c": meta("c", path="/data/dup/b/c.mrc"),
    }
    return picks, metas


def test_cryosparc_keeps_micrographs_with_the_same_file_name_apart(tmp_path, caplog):
    from cryosparc.dataset import Dataset

    picks, metas = same_name_micrographs()
    with caplog.at_level(logging.WARNING, logger="lipoframe"):
        CryosparcWriter().write(picks, metas, PLAN, tmp_path, CTX)
    expected = ["a-mic.mrc", "b-mic.mrc", "b-mic.mrc", "c.mrc"]  # c.mrc clashes with nothing: unchanged
    for folder, rows in ((tmp_path / "cryosparc", [0, 1, 2, 3]), (tmp_path / "bins" / "bin1" / "cryosparc", [0, 2, 3])):
        d = Dataset.load(folder / "particles.cs")
        paths = d["location/micrograph_path"].tolist()
        assert paths == [expected[i] for i in rows]
        # one uid per micrograph, different micrographs never share one
        uid_of = dict(zip(d["location/micrograph_uid"].tolist(), paths))
        assert len(uid_of) == len(set(paths)) and sorted(uid_of.values()) == sorted(set(paths))
        star = starfile.read(folder / "particles.star")
        assert star["rlnMicrographName"].tolist() == paths
    # the same micrograph has the same uid in the dataset set and in a bin's set
    everything = Dataset.load(tmp_path / "cryosparc" / "particles.cs")
    part = Dataset.load(tmp_path / "bins" / "bin1" / "cryosparc" / "particles.cs")
    assert set(part["location/micrograph_uid"].tolist()) <= set(everything["location/micrograph_uid"].tolist())
    # one warning that names both clashing input files and what they are written as
    clash = [r.getMessage() for r in caplog.records if "same name" in r.getMessage()]
    assert len(clash) == 1
    assert "/data/dup/a/mic.mrc -> a-mic.mrc" in clash[0] and "/data/dup/b/mic.mrc -> b-mic.mrc" in clash[0]
    assert "/data/dup/b/c.mrc" not in clash[0]


def test_cryosparc_name_clashes_are_told_once_per_writer(caplog):
    """A watch session writes again every few micrographs: the same clash was warned at every update."""
    metas = {f"k{i}": meta(f"k{i}", path=p) for i, p in enumerate(["/d/a/m.mrc", "/d/b/m.mrc"])}
    told: set = set()
    with caplog.at_level("WARNING", logger="lipoframe"):
        for _ in range(3):
            cryosparc_micrograph_names(metas, "{name}", told=told)
        metas["k2"] = meta("k2", path="/d/c/m.mrc")  # a new clash is news
        cryosparc_micrograph_names(metas, "{name}", told=told)
        cryosparc_micrograph_names(metas, "{name}")  # without told: every call, as before
    clash = [r.getMessage() for r in caplog.records if "would get the same name" in r.getMessage()]
    assert len(clash) == 3 and "/d/c/m.mrc" in clash[1] and clash[1] == clash[2]


def test_cryosparc_names_of_micrographs_that_clash():
    def names(paths, template="{name}"):
        metas = {f"k{i}": meta(f"k{i}", path=p) for i, p in enumerate(paths)}
        return list(cryosparc_micrograph_names(metas, template).values())

    assert names(["/d/a/m.mrc", "/d/b/m.mrc", "/d/c/n.mrc"]) == ["a-m.mrc", "b-m.mrc", "n.mrc"]
    # the folders differ further up: the shortest tail that tells them apart
    assert names(["/x/a/run/m.mrc", "/x/b/run/m.mrc"]) == ["a-run-m.mrc", "b-run-m.mrc"]
    # only the file name changes; the template's folder stays
    assert names(["/d/a/m.mrc", "/d/b/m.mrc"], "J2/motioncorrected/{stem}_x.mrc") == [
        "J2/motioncorrected/a-m_x.mrc", "J2/motioncorrected/b-m_x.mrc"]
    # the same folder (m.mrc and m.tif as {stem}.mrc): the micrographs' own unique names
    assert names(["/d/m.mrc", "/d/m.tif"], "{stem}.mrc") == ["k0-m.mrc", "k1-m.mrc"]
    # a new name that is another micrograph's name is counted up, never shared
    out = names(["/d/a/m.mrc", "/d/b/m.mrc", "/d/x/a-m.mrc"])
    assert out[2] == "a-m.mrc" and len(set(out)) == 3
    # names that are already different are left alone, even with equal file names
    assert names(["/d/a/m.mrc", "/d/b/m.mrc"], "{path}") == ["/d/a/m.mrc", "/d/b/m.mrc"]


def test_cryosparc_warns_when_only_the_file_names_are_equal(tmp_path, caplog):
    picks, metas = same_name_micrographs()
    with caplog.at_level(logging.WARNING, logger="lipoframe"):
        CryosparcWriter(CryosparcWriterParams(micrograph_name="{path}", per_bin=False)).write(picks, metas, PLAN, tmp_path, CTX)
    star = starfile.read(tmp_path / "cryosparc" / "particles.star")
    assert star["rlnMicrographName"].tolist()[:2] == ["/data/dup/a/mic.mrc", "/data/dup/b/mic.mrc"]
    msgs = [r.getMessage() for r in caplog.records if "same file name" in r.getMessage()]
    assert len(msgs) == 1 and "/data/dup/a/mic.mrc" in msgs[0] and "/data/dup/b/mic.mrc" in msgs[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="lipoframe"):
        CryosparcWriter().write(*two_micrographs(), PLAN, tmp_path / "other", CTX)
    assert not [r for r in caplog.records if "name" in r.getMessage()]


def test_star_warns_when_micrographs_share_a_relion_name(tmp_path, caplog):
    """Extract maps each rlnMicrographName of the list to one coordinate file: a shared name loses picks silently."""
    picks, metas = same_name_micrographs()
    params = StarWriterParams(micrograph_name="MotionCorr/job002/Movies/{stem}.mrc")
    with caplog.at_level(logging.WARNING, logger="lipoframe"):
        StarWriter(params).write(picks, metas, PLAN, tmp_path, CTX)
    lst = starfile.read(tmp_path / "relion" / "autopick.star")
    assert lst["rlnMicrographName"].tolist() == ["MotionCorr/job002/Movies/mic.mrc"] * 2 + ["MotionCorr/job002/Movies/c.mrc"]
    msgs = [r.getMessage() for r in caplog.records if "rlnMicrographName" in r.getMessage()]
    assert len(msgs) == 1  # once per run, not once per set
    assert "MotionCorr/job002/Movies/mic.mrc" in msgs[0] and "/data/dup/a/mic.mrc" in msgs[0] and "/data/dup/b/mic.mrc" in msgs[0]
    # a watch session writes again with the same writer every few micrographs: the same clash is not told again
    writer = StarWriter(params)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="lipoframe"):
        writer.write(picks, metas, PLAN, tmp_path / "w1", CTX)
        writer.write(picks, metas, PLAN, tmp_path / "w2", CTX)
    assert len([r for r in caplog.records if "rlnMicrographName" in r.getMessage()]) == 1
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="lipoframe"):
        StarWriter().write(picks, metas, PLAN, tmp_path / "default", CTX)  # {path}: different names
    assert not [r for r in caplog.records if "rlnMicrographName" in r.getMessage()]


def test_cryosparc_unknown_pixel_size_is_reported_once(tmp_path, caplog):
    from cryosparc.dataset import Dataset

    picks, metas = same_name_micrographs()
    metas = {k: MicrographMeta(name=m.name, path=m.path, shape=m.shape, pixel_size=None) for k, m in metas.items()}
    ctx = PickContext(dmin_px=100, dmax_px=200, pixel_size=None, seed=3)
    with caplog.at_level(logging.WARNING, logger="lipoframe"):
        CryosparcWriter().write(picks, metas, PLAN, tmp_path, ctx)  # three sets: all picks, bin 1, bin 2
    msgs = [r.getMessage() for r in caplog.records if "pixel size unknown" in r.getMessage()]
    assert len(msgs) == 1 and "a-mic" in msgs[0] and "b-mic" in msgs[0]
    # The way to set it: a new plan of the run folder, not a run with pixel_size= (which picks every micrograph
    # again, as its settings changed)
    assert f"`lipoframe plan {tmp_path} pixel_size=<Å/px>` sets it without picking again" in msgs[0], msgs[0]
    assert Dataset.load(tmp_path / "cryosparc" / "particles.cs")["location/micrograph_psize_A"].tolist() == [0.0] * 4


def test_cryosparc_does_not_give_a_micrograph_without_pixel_size_another_ones(tmp_path, caplog):
    """A micrograph whose header has no pixel size gets 0 and the warning, not the dataset's median pixel size."""
    from cryosparc.dataset import Dataset

    picks, metas = same_name_micrographs()
    first = sorted(metas)[0]
    metas = {k: MicrographMeta(name=m.name, path=m.path, shape=m.shape, pixel_size=1.3 if k == first else None)
             for k, m in metas.items()}
    ctx = PickContext(dmin_px=100, dmax_px=200, pixel_size=1.3, seed=3)  # the dataset stage's median of the known ones
    with caplog.at_level(logging.WARNING, logger="lipoframe"):
        CryosparcWriter().write(picks, metas, PLAN, tmp_path, ctx)
    msgs = [r.getMessage() for r in caplog.records if "pixel size unknown" in r.getMessage()]
    assert len(msgs) == 1 and "2 micrograph" in msgs[0] and "b-mic" in msgs[0] and first not in msgs[0]
    cs = Dataset.load(tmp_path / "cryosparc" / "particles.cs")
    expected = [1.3 if m == first else 0.0 for m in picks[schema.MICROGRAPH]]  # every pick is accepted
    assert np.allclose(cs["location/micrograph_psize_A"], expected)


# ---------------------------------------------------------------------------
# Empty micrographs, rejected picks, unsafe names
# ---------------------------------------------------------------------------
def test_empty_micrograph_gets_valid_empty_entries(tmp_path):
    picks, metas = two_micrographs()
    write_all(picks, metas, tmp_path)
    coords = starfile.read(tmp_path / "relion" / "coords" / "empty_autopick.star")
    assert len(coords) == 0 and "rlnCoordinateX" in coords.columns
    _, labels, rows = relion_first_block((tmp_path / "relion" / "coords" / "empty_autopick.star").read_text())
    assert labels[:2] == ["rlnCoordinateX", "rlnCoordinateY"] and rows == []
    cbox = starfile.read(tmp_path / "cbox" / "empty.cbox", always_dict=True)
    assert len(cbox["cryolo"]) == 0
    assert (tmp_path / "box" / "empty.box").read_text() == ""
    assert (tmp_path / "csv" / "empty.csv").is_file()
    for k in (1, 2):
        lst = starfile.read(tmp_path / "bins" / f"bin{k}" / "autopick.star")
        assert all(Path(p).is_file() for p in lst["rlnMicrographCoordinates"])


def test_no_picks_at_all(tmp_path):
    from cryosparc.dataset import Dataset

    picks = make_picks([])
    metas = {"a": meta("a")}
    plan = ExtractionPlan(policy="test", pixel_size=1.5)
    for w in (StarWriter(), CryosparcWriter(), CboxWriter(), BoxWriter()):
        w.write(picks, metas, plan, tmp_path, CTX)
    assert len(Dataset.load(tmp_path / "cryosparc" / "particles.cs")) == 0
    assert len(starfile.read(tmp_path / "relion" / "autopick.star")) == 1
    assert not (tmp_path / "bins").exists()


def test_rejected_picks_only_with_export_rejected(tmp_path):
    from cryosparc.dataset import Dataset

    picks, metas = two_micrographs()
    write_all(picks, metas, tmp_path / "a")
    assert len(starfile.read(tmp_path / "a" / "relion" / "coords" / "mic.001_autopick.star")) == 2
    assert len(read_box(tmp_path / "a" / "box" / "mic.001.box")) == 2
    ctx = PickContext(dmin_px=100, dmax_px=200, pixel_size=1.5, seed=3, export_rejected=True)
    write_all(picks, metas, tmp_path / "b", ctx)
    coords = starfile.read(tmp_path / "b" / "relion" / "coords" / "mic.001_autopick.star")
    assert coords["rlnClassNumber"].tolist() == [1, 2, 0]  # rejected: no bin -> class 0
    d = Dataset.load(tmp_path / "b" / "cryosparc" / "particles.cs")
    assert d["pick_stats/template_idx"].tolist() == [0, 1, cs_io.NO_TEMPLATE]
    assert d["lipoframe/size_bin"].tolist() == [0, 1, -1]
    assert read_box(tmp_path / "b" / "box" / "mic.001.box")[2, 2] == 224  # nearest bin's box
    # per-bin extraction sets never contain rejected picks
    assert len(starfile.read(tmp_path / "b" / "bins" / "bin1" / "coords" / "mic.001_autopick.star")) == 1


@pytest.mark.parametrize("name", ["../../escape", "..", "a b.c", ".hidden", "x/../../y", "mic.001.final", "/abs/path"])
def test_unsafe_micrograph_names_stay_inside_output(tmp_path, name):
    out = tmp_path / "deep" / "out"
    picks = make_picks([{schema.MICROGRAPH: name, schema.X: 30.0, schema.Y: 40.0, schema.DIAMETER: 120.0}])
    metas = {name: MicrographMeta(name=name, path=f"/data/my mics/{name} x.mrc", shape=(NY, NX), pixel_size=1.5)}
    written = write_all(picks, metas, out)
    root = out.resolve()
    for p in written:
        assert root in Path(p).resolve().parents
    outside = [p for p in tmp_path.rglob("*") if p.is_file() and root not in p.resolve().parents]
    assert outside == []
    assert not any(part.startswith(".") for p in written for part in Path(p).relative_to(root).parts)
    lst = starfile.read(out / "relion" / "autopick.star", parse_as_string=["rlnMicrographName"])
    assert " " in lst["rlnMicrographName"].iloc[0]  # quoted in the file, read back whole
    assert len(starfile.read(Path(lst["rlnMicrographCoordinates"].iloc[0]))) == 1


def test_file_stems_unique_and_safe():
    stems = file_stems(["a b", "a_b", "../x", "..", "A_B"])
    assert len(set(s.lower() for s in stems.values())) == 5
    assert all("/" not in s and not s.startswith(".") for s in stems.values())


def test_quote_refuses_untokenisable_values():
    assert quote("a b") == '"a b"'
    assert quote("plain.mrc") == "plain.mrc"
    assert quote('say"cheese') == 'say"cheese'  # a quote inside a token is just a character
    assert quote('"x') == "'\"x'"  # a leading one is not: RELION's nextTokenInSTAR takes either quote
    assert quote("_x") == '"_x"' and quote("data_1") == '"data_1"'  # would read as a label or a block
    with pytest.raises(ValueError):
        quote("")
    with pytest.raises(ValueError):
        quote('a "b" c')


# ---------------------------------------------------------------------------
# RELION project paths
# ---------------------------------------------------------------------------
def test_list_file_paths_for_a_relion_project(tmp_path):
    project = tmp_path / "project"
    out = project / "External" / "lipoframe"
    picks = make_picks([{schema.MICROGRAPH: "m1_denoised", schema.X: 30.0, schema.Y: 40.0, schema.DIAMETER: 120.0}])
    metas = {"m1_denoised": meta("m1_denoised", path=str(project / "Denoise" / "job004" / "Movies" / "m1_denoised.mrc"))}
    params = StarWriterParams(micrograph_name="MotionCorr/job002/Movies/{stem}.mrc", strip_suffix="_denoised", project_dir=str(project))
    StarWriter(params).write(picks, metas, PLAN, out, CTX)
    lst = starfile.read(out / "relion" / "autopick.star")
    assert lst["rlnMicrographName"].iloc[0] == "MotionCorr/job002/Movies/m1.mrc"
    assert lst["rlnMicrographCoordinates"].iloc[0] == "External/lipoframe/relion/coords/m1_denoised_autopick.star"
    assert (project / lst["rlnMicrographCoordinates"].iloc[0]).is_file()
    fields = micrograph_fields(metas["m1_denoised"], strip_suffix="_denoised", project_dir=str(project))
    assert fields == {"path": "Denoise/job004/Movies/m1.mrc", "dir": "Denoise/job004/Movies", "name": "m1.mrc", "stem": "m1", "ext": ".mrc"}


@pytest.mark.parametrize("out_through_link", [True, False])
def test_list_file_paths_open_from_a_project_reached_through_a_symlink(tmp_path, monkeypatch, out_through_link):
    """RELION opens rlnMicrographCoordinates (and --coord_list) from the project folder, its working directory.

    Projects are often reached through a link (``/data/proj`` -> a disk
    folder at another depth); the system follows ``..`` from the real folder,
    so the paths must be made between resolved folders.
    """
    from lipoframe.planfiles import write_plan_files

    real = tmp_path / "disk" / "groups" / "lab" / "project"
    (real / "Denoise").mkdir(parents=True)
    project = tmp_path / "project"
    project.symlink_to(real, target_is_directory=True)
    out = (project if out_through_link else real) / "External" / "lipoframe"
    picks = make_picks([{schema.MICROGRAPH: "m1", schema.X: 30.0, schema.Y: 40.0, schema.DIAMETER: 120.0}])
    metas = {"m1": meta("m1", path=str(project / "Denoise" / "m1.mrc"))}
    written = StarWriter(StarWriterParams(project_dir=str(project))).write(picks, metas, PLAN, out, CTX)
    write_plan_files(PLAN, picks, out, metas=metas, written=written, project_dir=str(project))
    listed = starfile.read(out / "relion" / "autopick.star")["rlnMicrographCoordinates"].iloc[0]
    bin_list = starfile.read(out / "bins" / "bin1" / "autopick.star")["rlnMicrographCoordinates"].iloc[0]
    coord_list = re.search(r"--coord_list (\S+)", (out / "extraction_plan.md").read_text()).group(1)
    monkeypatch.chdir(project)  # where RELION runs
    assert listed == "External/lipoframe/relion/coords/m1_autopick.star"
    assert Path(listed).is_file() and Path(bin_list).is_file()
    assert coord_list == "External/lipoframe/bins/bin1/autopick.star"
    assert Path(coord_list).is_file()


@pytest.mark.parametrize(
    "make",
    [
        lambda: StarWriterParams(micrograph_name="{nope}.mrc"),
        lambda: StarWriterParams(micrograph_name="{stem"),
        lambda: StarWriterParams(strip_suffix="a/b"),
        lambda: CryosparcWriterParams(micrograph_name="{0}"),
        lambda: CryosparcWriterParams(exp_group_id=-1),
        # an empty name (or a line break) cannot be written as a STAR value: the writer failed after picking
        lambda: StarWriterParams(micrograph_name=""),
        lambda: StarWriterParams(micrograph_name="  "),
        lambda: StarWriterParams(micrograph_name="Movies/\n{stem}.mrc"),
        lambda: CryosparcWriterParams(micrograph_name=""),
    ],
)
def test_params_validation_names_the_key(make):
    with pytest.raises(ValueError, match=r"writer\.(star|cryosparc)\."):
        make()


# ---------------------------------------------------------------------------
# Extraction command
# ---------------------------------------------------------------------------
def test_extract_command_per_bin(tmp_path):
    b = SizeBin(1, 150.0, 200.0, 10, 320, 400.0)
    cmd = relion_io.extract_command(b, relion_io.list_path("out", b), pixel_size=1.5)
    args = shlex.split(cmd)
    assert args[0] == "relion_preprocess"
    opt = {args[i]: args[i + 1] for i in range(1, len(args) - 1) if args[i].startswith("--") and not args[i + 1].startswith("--")}
    assert opt["--extract_size"] == "320"
    assert opt["--coord_list"] == os.path.join("out", "bins", "bin2", "autopick.star")
    assert opt["--bg_radius"] == "120"  # RELION's default: 0.375 * box
    # The GUI truncates 0.375 * box ((int) in pipeline_jobs.cpp): 37.5 -> 37, 31.5 -> 31, 41.25 -> 41.
    assert [relion_io.background_radius(box) for box in (100, 84, 110, 320)] == [37, 31, 41, 120]
    odd = shlex.split(relion_io.extract_command(SizeBin(0, 50.0, 60.0, 3, 100), "x", pixel_size=1.0))
    assert odd[odd.index("--bg_radius") + 1] == "37"
    assert "--extract" in args and "--norm" in args and "--invert_contrast" in args and "--scale" not in args
    scaled = SizeBin(1, 150.0, 200.0, 10, 320, 400.0, box_px_extract=160, extract_size_px=336)
    args = shlex.split(relion_io.extract_command(scaled, "my list.star", pixel_size=1.5, output_dir="Extract/job020"))
    assert args[args.index("--scale") + 1] == "160" and args[args.index("--bg_radius") + 1] == "60"
    assert args[args.index("--extract_size") + 1] == "336"  # the box that rescales to 160 at the asked Å/px
    # A plan written before extract_size_px existed keeps its old command.
    old = SizeBin(1, 150.0, 200.0, 10, 320, 400.0, box_px_extract=160)
    old_args = shlex.split(relion_io.extract_command(old, "x", pixel_size=1.5))
    assert old_args[old_args.index("--extract_size") + 1] == "320"
    with pytest.raises(ValueError, match="extract_size_px must be even"):
        relion_io.extract_command(SizeBin(1, 150.0, 200.0, 10, 320, 400.0, box_px_extract=160, extract_size_px=335), "x", pixel_size=1.5)
    assert args[args.index("--coord_list") + 1] == "my list.star"
    assert args[args.index("--part_dir") + 1] == "Extract/job020/"
    with pytest.raises(ValueError, match="even"):
        relion_io.extract_command(SizeBin(0, 1, 2, 1, 225), "x", pixel_size=1.0)
    with pytest.raises(ValueError, match="pixel_size"):
        relion_io.extract_command(b, "x", pixel_size=0.0)


def test_export_view_requires_metadata():
    picks = make_picks([{schema.MICROGRAPH: "ghost", schema.X: 1.0, schema.Y: 1.0, schema.DIAMETER: 120.0}])
    with pytest.raises(ValueError, match="ghost"):
        export_view(picks, {}, PLAN)


# ---------------------------------------------------------------------------
# Golden files: exact text of every format
# ---------------------------------------------------------------------------
def golden_outputs(tmp_path) -> dict[str, str]:
    project = tmp_path / "project"
    out = project / "lipoframe"
    picks = make_picks([
        {schema.MICROGRAPH: "mic.001", schema.X: 120.2, schema.Y: 80.7, schema.DIAMETER: 120.0, schema.SCORE: 2.5},
        {schema.MICROGRAPH: "mic.001", schema.X: 300.0, schema.Y: 250.5, schema.DIAMETER: 180.0, schema.SCORE: 1.25},
        {schema.MICROGRAPH: "tif_02", schema.X: 10.5, schema.Y: 20.5, schema.DIAMETER: 149.99, schema.SCORE: -0.5},
    ])
    metas = {
        "mic.001": meta("mic.001", path=str(project / "Denoised" / "mic.001.mrc")),
        "tif_02": meta("tif_02", flip_y=True, path=str(project / "Denoised" / "tif 02.tif")),
        "empty": meta("empty", path=str(project / "Denoised" / "empty.mrc")),
    }
    star = StarWriterParams(micrograph_name="MotionCorr/job002/Movies/{stem}.mrc", project_dir=str(project))
    write_all(picks, metas, out, star=star)
    from cryosparc.dataset import Dataset

    d = Dataset.load(out / "cryosparc" / "particles.cs")
    dump = [repr(d.descr())] + [f"{f} {np.asarray(d[f]).tolist()!r}" for f in d.fields()]
    return {
        "relion_autopick.star": (out / "relion" / "autopick.star").read_text(),
        "relion_mic.001_autopick.star": (out / "relion" / "coords" / "mic.001_autopick.star").read_text(),
        "relion_tif_02_autopick.star": (out / "relion" / "coords" / "tif_02_autopick.star").read_text(),
        "relion_empty_autopick.star": (out / "relion" / "coords" / "empty_autopick.star").read_text(),
        "relion_bin2_autopick.star": (out / "bins" / "bin2" / "autopick.star").read_text(),
        "cryosparc_particles.star": (out / "cryosparc" / "particles.star").read_text(),
        "cryosparc_particles_cs.txt": "\n".join(dump) + "\n",
        "cbox_mic.001.cbox": (out / "cbox" / "mic.001.cbox").read_text(),
        "cbox_empty.cbox": (out / "cbox" / "empty.cbox").read_text(),
        "box_mic.001.box": (out / "box" / "mic.001.box").read_text(),
        "box_tif_02.box": (out / "box" / "tif_02.box").read_text(),
    }


def test_golden_files(tmp_path):
    outputs = golden_outputs(tmp_path)
    if os.environ.get("LIPOFRAME_UPDATE_GOLDEN") == "1":
        GOLDEN.mkdir(exist_ok=True)
        for name, text in outputs.items():
            (GOLDEN / name).write_text(text)
    for name, text in outputs.items():
        assert text == (GOLDEN / name).read_text(), f"{name} differs from tests/golden/{name}"



@pytest.mark.parametrize(("fmt", "text"), [("%.3e", "1.500e+00"), ("%d", "1"), ("{:.1f}", "1.5")])
def test_csv_float_format_takes_any_format_that_writes_a_number(fmt, text):
    params = CsvWriterParams(float_format=fmt)
    assert pd.DataFrame({"x": [1.5]}).to_csv(index=False, header=False, float_format=params.float_format).strip() == text


@pytest.mark.parametrize("fmt", ["abc", "%.2f%%", "", "%.2f %.2f"])
def test_csv_float_format_that_does_not_write_a_number_is_refused(fmt):
    with pytest.raises(ValueError, match=f"^writer.csv.float_format must be a printf format of one number .*, got {re.escape(repr(fmt))}$"):
        CsvWriterParams(float_format=fmt)


def test_eman2_base_name_is_what_eman2_files_the_boxes_under():
    # EMAN2's base_name(nodir=True), libpyEM/EMAN2.py: no folder, no last extension,
    # cut before the first '__', every '_ptcls' and '_info' removed.
    from lipoframe.io.eman import eman2_base_name, eman2_name_clashes

    assert eman2_base_name("out/bins/bin1/box/grid1__sq2.box") == "grid1"
    assert eman2_base_name("grid1__sq2__x.box") == "grid1"
    assert eman2_base_name("mic.001.box") == "mic.001"
    assert eman2_base_name("FoilHole_123_Data_456_789_20231010_123456_fractions.box") == \
        "FoilHole_123_Data_456_789_20231010_123456_fractions"  # EPU: single underscores, kept whole
    assert eman2_base_name("x_ptcls.box") == "x" and eman2_base_name("run_info_3.box") == "run_3"
    assert eman2_name_clashes(["a__1.box", "b.box", "a__2.box", "c_ptcls.box", "c.box"]) == \
        {"a": ["a__1.box", "a__2.box"], "c": ["c_ptcls.box", "c.box"]}
    assert eman2_name_clashes(["grid1__sq2.box", "grid2__sq2.box"]) == {}


def test_box_writer_warns_once_naming_the_micrographs_eman2_would_merge(tmp_path, caplog):
    picks = make_picks([
        {schema.MICROGRAPH: n, schema.X: 100.0, schema.Y: 120.0, schema.DIAMETER: 120.0}
        for n in ("grid1__sq2", "grid1__sq3", "x_ptcls", "x", "grid2__sq2")
    ])
    metas = {n: meta(n) for n in ("grid1__sq2", "grid1__sq3", "x_ptcls", "x", "grid2__sq2")}
    writer = BoxWriter()
    with caplog.at_level(logging.WARNING, logger="lipoframe"):
        writer.write(picks, metas, PLAN, tmp_path, CTX)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings  # one warning for the set and its per-bin copies
    msg = warnings[0]
    for f in ("grid1__sq2.box (/data/mics/grid1__sq2.mrc)", "grid1__sq3.box (/data/mics/grid1__sq3.mrc)",
              "x_ptcls.box (/data/mics/x_ptcls.mrc)", "x.box (/data/mics/x.mrc)"):
        assert f in msg, msg
    assert "'grid1' <- " in msg and "'x' <- " in msg and "grid2__sq2" not in msg  # alone under 'grid2': EMAN2 matches it
    # The files are written as named all the same (the micrographs' names are theirs to change).
    assert len(read_box(tmp_path / "box" / "grid1__sq3.box")) == 1 and (tmp_path / "bins" / "bin1" / "box" / "x.box").is_file()
    # A watch session writes again every few micrographs: the same clash is not told again.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="lipoframe"):
        writer.write(picks, metas, PLAN, tmp_path, CTX)
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


def test_box_writer_says_nothing_when_eman2_tells_every_micrograph_apart(tmp_path, caplog):
    picks, metas = two_micrographs()
    with caplog.at_level(logging.WARNING, logger="lipoframe"):
        BoxWriter().write(picks, metas, PLAN, tmp_path, CTX)
    assert not [r for r in caplog.records if "EMAN2" in r.getMessage()]
