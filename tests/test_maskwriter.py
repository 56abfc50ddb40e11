"""The `mask` writer: uint16 instance labels + binary masks per micrograph."""

from __future__ import annotations

import math

import mrcfile
import numpy as np
import pandas as pd
import pytest
import tifffile

from lipoframe.algorithms.heatmap import heatmap_picks
from lipoframe.builtin.maskwriter import MaskWriter, MaskWriterParams, label_image
from lipoframe.records import MicrographMeta, PickContext

CTX = PickContext(dmin_px=20, dmax_px=120)


def picks_table() -> pd.DataFrame:
    return pd.DataFrame({
        "micrograph": ["a", "a", "a", "b"],
        "x_px": [60.0, 150.0, 200.0, 40.0],
        "y_px": [50.0, 120.0, 40.0, 40.0],
        "diameter_px": [60.0, 100.0, 30.0, 40.0],
        "score": [3.0, 2.0, 1.0, 5.0],
        "accepted": [True, True, False, True],
        "reject_reason": ["", "", "score", ""],
    })


def metas(shape=(200, 256), px=1.5) -> dict[str, MicrographMeta]:
    return {n: MicrographMeta(name=n, path=f"{n}.mrc", shape=shape, pixel_size=px) for n in ("a", "b", "c")}


def test_label_image_discs_ids_and_areas():
    lab = label_image((200, 256), np.array([[50.0, 60.0], [120.0, 150.0]]), np.array([60.0, 100.0]))
    assert lab.dtype == np.uint16
    assert set(np.unique(lab)) == {0, 1, 2}
    assert np.count_nonzero(lab == 1) == pytest.approx(math.pi * 30**2, rel=0.03)
    assert np.count_nonzero(lab == 2) == pytest.approx(math.pi * 50**2, rel=0.03)
    assert lab[50, 60] == 1 and lab[120, 150] == 2 and lab[0, 0] == 0


def test_overlap_goes_to_the_relatively_nearer_particle():
    # A small disc overlapping the rim of a big one keeps its own centre region.
    lab = label_image((120, 160), np.array([[60.0, 60.0], [60.0, 108.0]]), np.array([100.0, 30.0]))
    assert lab[60, 108] == 2 and lab[60, 100] == 2  # inside the big disc's rim, nearer the small centre
    assert lab[60, 60] == 1


def test_label_image_3d_balls():
    lab = label_image((40, 64, 64), np.array([[20.0, 30.0, 30.0]]), np.array([20.0]))
    assert np.count_nonzero(lab) == pytest.approx(4 / 3 * math.pi * 10**3, rel=0.04)


def test_writer_mrc_files_and_instances(tmp_path):
    files = MaskWriter(MaskWriterParams()).write(picks_table(), metas(), None, tmp_path, CTX)
    names = sorted(p.name for p in files)
    assert names == sorted(["a_labels.mrc", "a_mask.mrc", "b_labels.mrc", "b_mask.mrc", "c_labels.mrc", "c_mask.mrc", "instances.csv"])
    with mrcfile.open(tmp_path / "masks" / "a_labels.mrc") as m:
        lab = m.data.copy()
        assert lab.dtype == np.uint16 and lab.shape == (200, 256)
        assert float(m.voxel_size.x) == pytest.approx(1.5)
    assert lab.max() == 2  # the rejected pick is not drawn
    assert lab[40, 200] == 0
    with mrcfile.open(tmp_path / "masks" / "a_mask.mrc") as m:
        assert m.data.dtype == np.int8 and np.array_equal(m.data, (lab > 0).astype(np.int8))
    with mrcfile.open(tmp_path / "masks" / "c_labels.mrc") as m:
        assert m.data.max() == 0  # a micrograph without picks still gets an (empty) label image
    inst = pd.read_csv(tmp_path / "masks" / "instances.csv")
    assert inst[["micrograph", "instance_id"]].values.tolist() == [["a", 1], ["a", 2], ["b", 1]]
    # instance id -> the pick drawn there
    for row in inst[inst.micrograph == "a"].itertuples():
        assert lab[int(round(row.y_px)), int(round(row.x_px))] == row.instance_id
    assert not list(tmp_path.rglob("*.tmp*"))  # atomic writes leave no temporaries


def test_writer_tiff_and_binning(tmp_path):
    MaskWriter(MaskWriterParams(format="tiff", bin=2)).write(picks_table(), metas(), None, tmp_path, CTX)
    lab = tifffile.imread(tmp_path / "masks" / "a_labels.tif")
    assert lab.dtype == np.uint16 and lab.shape == (100, 128)
    assert tifffile.imread(tmp_path / "masks" / "a_mask.tif").dtype == np.uint8
    assert np.count_nonzero(lab == 2) == pytest.approx(math.pi * 25**2, rel=0.04)


def test_labels_round_trip_through_the_heatmap_detector(tmp_path):
    """Pseudo-labels written by lipoframe give the same picks back when read as a heatmap."""
    MaskWriter(MaskWriterParams()).write(picks_table(), metas(), None, tmp_path, CTX)
    with mrcfile.open(tmp_path / "masks" / "a_mask.mrc") as m:
        back = heatmap_picks(m.data.astype(np.float32), min_distance=10, min_diameter=10)
    acc = picks_table().query("micrograph == 'a' and accepted")
    assert len(back["x_px"]) == len(acc)
    order = np.argsort(back["diameter_px"])
    assert np.allclose(back["diameter_px"][order], np.sort(acc["diameter_px"]), rtol=0.03)
    assert np.allclose(np.sort(back["x_px"]), np.sort(acc["x_px"]), atol=0.5)


def test_3d_picks_need_z(tmp_path):
    m = {"t": MicrographMeta(name="t", path="t.mrc", shape=(32, 64, 64), pixel_size=10.0)}
    p = pd.DataFrame({"micrograph": ["t"], "x_px": [30.0], "y_px": [30.0], "z_px": [16.0], "diameter_px": [12.0], "score": [1.0], "accepted": [True]})
    MaskWriter(MaskWriterParams()).write(p, m, None, tmp_path, CTX)
    with mrcfile.open(tmp_path / "masks" / "t_labels.mrc") as f:
        assert f.data.shape == (32, 64, 64) and f.data[16, 30, 30] == 1
    with pytest.raises(ValueError, match="z_px"):
        MaskWriter(MaskWriterParams()).write(p.drop(columns="z_px"), m, None, tmp_path, CTX)


def test_never_writes_outside_the_output_folder(tmp_path):
    with pytest.raises(ValueError, match="outside the output folder"):
        MaskWriter(MaskWriterParams(folder="../elsewhere")).write(picks_table(), metas(), None, tmp_path / "out", CTX)
    assert not (tmp_path / "elsewhere").exists()


@pytest.mark.parametrize("kwargs, key", [(dict(format="png"), "writer.mask.format"), (dict(bin=0), "writer.mask.bin"),
                                         (dict(scale=0), "writer.mask.scale"), (dict(folder=""), "writer.mask.folder")])
def test_params_name_the_key(kwargs, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        MaskWriterParams(**kwargs)


@pytest.mark.parametrize("folder", ["../elsewhere", "/tmp/masks", "masks/../../up"])
def test_a_folder_outside_the_output_folder_is_a_config_error(tmp_path, folder):
    # writer.mask.folder=../x passed the check, the dataset was picked, and only then did the
    # writer refuse it (writer failure, exit code 1)
    with pytest.raises(ValueError, match=r"^writer\.mask\.folder must be a subfolder of the output folder"):
        MaskWriterParams(folder=folder)
    assert MaskWriterParams(folder="masks/train").folder == "masks/train"
    # the writer still refuses on its own (params built without the check)
    params = MaskWriterParams()
    params.folder = folder
    with pytest.raises(ValueError, match="outside the output folder"):
        MaskWriter(params).write(picks_table(), metas(), None, tmp_path / "out", CTX)
