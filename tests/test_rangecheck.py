"""The note for clear particles refined beyond the diameter range (lipoframe.rangecheck)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from conftest import write_mrc
from lipoframe.rangecheck import MIN_CLEAR, range_notes


def _table(n_accepted: int, below: list[float], *, above: list[float] = (), quality_beyond: float = 30.0, mic: str = "m") -> pd.DataFrame:
    """Accepted picks of 80 px with quality 1..n, and diameter_range rejections at the given diameters."""
    acc = pd.DataFrame({
        "micrograph": mic, "diameter_px": 80.0, "accepted": True, "reject_reason": np.nan,
        "quality": np.arange(1.0, n_accepted + 1),
    })
    rej = pd.DataFrame({
        "micrograph": mic, "diameter_px": list(below) + list(above), "accepted": False,
        "reject_reason": "diameter_range", "quality": quality_beyond,
    })
    return pd.concat([acc, rej], ignore_index=True)


def test_clear_particles_below_dmin_give_one_note_with_a_suggestion():
    picks = _table(40, below=[31.0, 33.0, 34.0, 35.0, 36.0, 36.5, 37.0, 38.0])
    notes = range_notes(picks, {"m": (40.0, 400.0)}, dmin=40, dmax=400, units="px")
    assert len(notes) == 1
    note = notes[0]
    assert note.startswith("8 candidates") and "below dmin=40 px" in note
    assert "consider dmin=31" in note  # 5th percentile 31.7 px, rounded down


def test_faint_ones_and_few_ones_give_no_note():
    bounds = {"m": (40.0, 400.0)}
    # As many as before, but fainter than the median accepted pick (quality 20.5).
    faint = _table(40, below=[35.0] * 8, quality_beyond=5.0)
    assert range_notes(faint, bounds, dmin=40, dmax=400, units="px") == []
    # Clear, but fewer than MIN_CLEAR.
    few = _table(20, below=[35.0] * (MIN_CLEAR - 1))
    assert range_notes(few, bounds, dmin=40, dmax=400, units="px") == []
    # Clear and more than MIN_CLEAR, but under 15 % of the accepted picks (the suites' pile at dmin).
    crowd = _table(400, below=[35.0] * 30, quality_beyond=1000.0)
    assert range_notes(crowd, bounds, dmin=40, dmax=400, units="px") == []
    # Rejected for another reason.
    other = _table(40, below=[35.0] * 8).replace({"reject_reason": {"diameter_range": "no_edge"}})
    assert range_notes(other, bounds, dmin=40, dmax=400, units="px") == []


def test_no_quality_column_or_too_few_accepted_picks_give_no_note():
    picks = _table(40, below=[35.0] * 8)
    assert range_notes(picks.drop(columns="quality"), {"m": (40.0, 400.0)}, dmin=40, dmax=400, units="px") == []
    assert range_notes(_table(19, below=[35.0] * 8), {"m": (40.0, 400.0)}, dmin=40, dmax=400, units="px") == []


def test_above_dmax_is_quoted_in_angstrom_per_micrograph():
    # Two micrographs at 1 and 2 Å/px, a range of 100-300 Å: the same 360 Å particles are 360 and 180 px.
    a = _table(20, below=[], above=[360.0] * 4, mic="a")
    b = _table(20, below=[], above=[180.0] * 4, mic="b")
    picks = pd.concat([a, b], ignore_index=True)
    notes = range_notes(picks, {"a": (100.0, 300.0), "b": (50.0, 150.0)}, dmin=100, dmax=300, units="A")
    assert len(notes) == 1
    assert "refined to 360 Å, above dmax=300 Å" in notes[0] and "consider dmax=360" in notes[0]


def test_run_with_dmin_above_the_small_particles_says_so(tmp_path, run_cli):
    from lipoframe.synthetic import random_particles, render

    # 24 particles of 80 px and 16 of 50 px; dmin=58 px cuts the small ones off (the
    # refiner finds them at 50 px, the range filter rejects them).
    d = np.r_[np.full(24, 80.0), np.full(16, 50.0)]
    truth = random_particles((1024, 1024), d, seed=4, margin=10, gap=12)
    assert len(truth) == len(d)
    write_mrc(tmp_path / "mics" / "m.mrc", render((1024, 1024), truth, contrast=1.0, noise=0.15, seed=4))
    common = ["units=px", "dmax=120", "runner.workers=1", "runner.progress=false"]
    code, out, _ = run_cli("run", f"input={tmp_path / 'mics'}", f"output={tmp_path / 'out'}", "dmin=58", *common)
    assert code == 0
    notes = json.loads((tmp_path / "out" / "run_summary.json").read_text())["notes"]
    assert len(notes) == 1, notes
    assert "refined to 50 px, below dmin=58 px" in notes[0] and "consider dmin=49" in notes[0]
    assert "NOTE   " + notes[0] in out
    assert "<li>Note: 8 candidates with edges" in (tmp_path / "out" / "report.html").read_text()
    # `lipoframe plan` recomputes the plan from the saved picks and says it again
    code, out, _ = run_cli("plan", str(tmp_path / "out"), "binning=single")
    assert code == 0 and "NOTE " + notes[0] in out
    # With the small particles inside the range there is nothing to say.
    code, _, _ = run_cli("run", f"input={tmp_path / 'mics'}", f"output={tmp_path / 'out2'}", "dmin=36", *common, "runner.report=false")
    assert code == 0
    assert json.loads((tmp_path / "out2" / "run_summary.json").read_text())["notes"] == []


def test_size_outliers_of_the_binning_count_as_accepted():
    # The binning's size outliers were accepted by the picking: a plan that flags some (kmeans, hac) must give
    # the run's note, not one with another count beside it. Flag the 15 best accepted picks: the median
    # quality of the rest would drop below that of the candidates beyond the range (fainter than 30 -> 12.5).
    picks = _table(40, below=[31.0, 33.0, 34.0, 35.0, 36.0, 36.5, 37.0, 38.0], quality_beyond=18.0)
    bounds = {"m": (40.0, 400.0)}
    assert range_notes(picks, bounds, dmin=40, dmax=400, units="px") == []  # median accepted 20.5 > 18
    flagged = picks.copy()
    top = flagged.index[flagged["accepted"] & (flagged["quality"] > 25)]
    flagged.loc[top, "accepted"] = False
    flagged.loc[top, "reject_reason"] = "binning_outlier"
    assert range_notes(flagged, bounds, dmin=40, dmax=400, units="px") == []
