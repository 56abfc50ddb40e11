"""Three touching virions on a real tomogram slice (``../shared``; skipped without it)."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lipoframe import pick

VIRIONS = Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "sarscov2_virions_tomoslice"
pytestmark = pytest.mark.skipif(not VIRIONS.is_dir(), reason="shared virion slice not available")


@pytest.fixture(scope="module")
def slice_and_reference():
    import tifffile

    image = tifffile.imread(VIRIONS / "TS_001.133.tif").astype(np.float32)
    ref = pd.read_csv(VIRIONS / "reference_virions_derived.csv")
    return image, ref


def _picks_per_virion(picks, ref):
    """For each virion: accepted picks inside its outline, and the diameter of the one on its centre."""
    acc = picks[picks["accepted"].astype(bool)]
    out = []
    for _, r in ref.iterrows():
        d = np.hypot(acc["x_px"] - r.x_px, acc["y_px"] - r.y_px).to_numpy()
        centre = d < 0.3 * r.diameter_px_watershed_equiv
        size = acc["diameter_px"].to_numpy()[centre] / r.diameter_px_watershed_equiv
        out.append((int((d < 0.5 * r.diameter_px_watershed_equiv).sum()), size.tolist()))
    return out


def test_defaults_with_a_range_near_their_size_give_one_pick_per_virion(slice_and_reference):
    image, ref = slice_and_reference
    picks = pick(image, units="px", dmin=100, dmax=250)
    assert int(picks["accepted"].sum()) == 3
    for inside, sizes in _picks_per_virion(picks, ref):
        assert inside == 1 and len(sizes) == 1 and 0.9 < sizes[0] < 1.12


def test_rank_by_score_keeps_small_picks_off_the_virions_with_a_wide_range(slice_and_reference):
    """dmin 40 px: the grains inside a virion lead it by response, not by score (docs/picking.md)."""
    image, ref = slice_and_reference
    by_score = _picks_per_virion(pick(image, units="px", dmin=40, dmax=250, nms_params={"rank_by": "score"}), ref)
    assert all(inside <= 1 for inside, _ in by_score)
    whole = [s for _, sizes in by_score for s in sizes if 0.9 < s < 1.12]
    assert len(whole) >= 2


def test_defaults_with_a_wide_range_still_give_one_pick_per_virion(slice_and_reference):
    """dmin 60 px: the virions outrank their grains by score once the refiner confirms them (docs/picking.md)."""
    image, ref = slice_and_reference
    for inside, sizes in _picks_per_virion(pick(image, units="px", dmin=60, dmax=400), ref):
        assert inside == 1 and len(sizes) == 1 and 0.9 < sizes[0] < 1.12
    # Without outranking the grains win and no virion gets its own pick.
    plain = _picks_per_virion(pick(image, units="px", dmin=60, dmax=400, nms_params={"outrank_by": ""}), ref)
    assert not any(len(sizes) == 1 and 0.9 < sizes[0] < 1.12 for _, sizes in plain)
