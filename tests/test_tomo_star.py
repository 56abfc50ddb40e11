"""RELION 5 tomography-style export of 3D picks (rlnTomoName + centred coordinates in Å)."""

import numpy as np
import pandas as pd
import starfile

from lipoframe.builtin.writers import StarWriter, StarWriterParams
from lipoframe.plan import ExtractionPlan, SizeBin
from lipoframe.records import MicrographMeta, PickContext


def test_tomogram_picks_get_relion5_centred_coordinates(tmp_path):
    meta = MicrographMeta(name="TS_01", path=str(tmp_path / "TS_01.mrc"), shape=(200, 512, 480), pixel_size=10.0)
    picks = pd.DataFrame(
        {
            "micrograph": ["TS_01", "TS_01"],
            "x_px": [240.0, 10.0],
            "y_px": [256.0, 500.0],
            "z_px": [100.0, 30.0],
            "diameter_px": [40.0, 60.0],
            "score": [9.0, 7.0],
            "pyramid_level": [0, 0],
            "sigma_px": [10.0, 15.0],
            "accepted": [True, True],
            "reject_reason": ["", ""],
            "size_bin": [0, 0],
        }
    )
    plan = ExtractionPlan(policy="single", pixel_size=10.0, bins=(SizeBin(0, 40.0, 60.0, 2, 96),))
    ctx = PickContext(dmin_px=30, dmax_px=80, pixel_size=10.0)
    files = StarWriter(StarWriterParams()).write(picks, {"TS_01": meta}, plan, tmp_path, ctx)
    tomo = [f for f in files if f.name == "tomo_particles.star" and f.parent.name == "relion"]
    assert tomo, files
    df = starfile.read(tomo[0])
    assert list(df["rlnTomoName"]) == ["TS_01", "TS_01"]
    # Centre = size / 2 voxels: (240, 256, 100) is the centre of a 480 x 512 x 200 volume.
    np.testing.assert_allclose(df["rlnCenteredCoordinateXAngst"], [0.0, (10 - 240) * 10.0], atol=0.01)
    np.testing.assert_allclose(df["rlnCenteredCoordinateYAngst"], [0.0, (500 - 256) * 10.0], atol=0.01)
    np.testing.assert_allclose(df["rlnCenteredCoordinateZAngst"], [0.0, (30 - 100) * 10.0], atol=0.01)
    assert list(df["rlnClassNumber"]) == [1, 1]
    # The per-tomogram coordinate file keeps rlnCoordinateZ in voxels.
    coords = starfile.read(tmp_path / "relion" / "coords" / "TS_01_autopick.star")
    np.testing.assert_allclose(coords["rlnCoordinateZ"], [100, 30])
