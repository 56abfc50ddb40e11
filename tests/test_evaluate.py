"""Tests of lipoframe.evaluate (matching, metrics, readers, CLI)."""

from __future__ import annotations

import json
import shlex
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import TINY_ARGS, tiny_truth

from lipoframe.evaluate import (
    EvaluationInputError,
    average_precision,
    circle_iou,
    evaluate,
    main,
    match,
    micrograph_key,
    read_picks,
    read_reference,
    same_name_in_folders,
    sphere_iou,
)

#: For the runs and sweeps whose tests read only their folders and picks (every run of this module): the polarity
#: check (picking a micrograph again in both polarities, ~0.2 CPU s per job) writes nothing these tests read.
NO_POLARITY_CHECK = ("runner.polarity_check=false",)

APO = Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "apoferritin_empiar10146_sample"


def table(rows, cols=("micrograph", "x_px", "y_px", "diameter_px")):
    return pd.DataFrame(rows, columns=list(cols))


def test_perfect_picks_score_one():
    ref = table([("a", 100, 100, 50), ("a", 300, 120, 80), ("b", 50, 60, 40)])
    res = evaluate(ref.assign(score=[3.0, 2.0, 1.0]), ref.assign(kind="solid"))
    s = res.summary
    assert (s["tp"], s["fp"], s["fn"]) == (3, 0, 0)
    assert s["precision"] == s["recall"] == s["f1"] == 1.0
    assert s["auprc"] == pytest.approx(1.0)
    assert s["duplicates"] == 0 and s["median_diameter_error"] == 0.0 and s["iou_rate"] == 1.0
    assert list(res.per_micrograph["micrograph"]) == ["a", "b"]


def test_hungarian_finds_the_one_to_one_assignment_greedy_misses():
    # Pick 0 is nearest to reference A, but only the assignment 0->B, 1->A matches both.
    ref = np.array([[0.0, 0.0], [10.0, 0.0]])
    picks = np.array([[4.0, 0.0], [-6.0, 0.0]])
    r, p = match(ref, np.array([40.0, 40.0]), picks, tolerance=0.3)
    assert sorted(zip(r.tolist(), p.tolist())) == [(0, 1), (1, 0)]


def test_tolerance_is_relative_to_the_reference_diameter():
    ref = table([("m", 100, 100, 100)])
    pick = table([("m", 135, 100, 100)])
    assert evaluate(pick, ref, tolerance=0.3).summary["tp"] == 0
    assert evaluate(pick, ref, tolerance=0.4).summary["tp"] == 1


def test_duplicates_inside_a_matched_particle_are_counted():
    ref = table([("m", 200, 200, 100), ("m", 600, 200, 100)])
    picks = table([("m", 201, 200, 100), ("m", 230, 210, 30), ("m", 180, 180, 30), ("m", 600, 200, 100), ("m", 900, 900, 60)])
    res = evaluate(picks, ref)
    s = res.summary
    assert s["tp"] == 2 and s["duplicates"] == 2 and s["duplicate_rate"] == pytest.approx(1.0)
    assert list(res.picks["status"]) == ["tp", "duplicate", "duplicate", "tp", "fp"]
    assert s["precision"] == pytest.approx(2 / 5)


def test_a_duplicate_inside_a_large_particle_counts_though_a_small_one_is_nearer():
    ref = table([("m", 100, 100, 200), ("m", 215, 100, 20)])
    picks = table([("m", 101, 100, 200), ("m", 215, 101, 20), ("m", 180, 100, 30)])  # the third: 80 px into the big one
    res = evaluate(picks, ref)
    assert list(res.picks["status"]) == ["tp", "tp", "duplicate"]


def test_picks_on_junk_are_reported_and_junk_is_not_a_target():
    ref = pd.DataFrame({
        "micrograph": ["m"] * 3, "x_px": [100.0, 500.0, 800.0], "y_px": [100.0, 500.0, 100.0],
        "diameter_px": [80.0, 300.0, 40.0], "kind": ["solid", "ice", "junk"],
    })
    picks = table([("m", 100, 100, 80), ("m", 550, 520, 90), ("m", 801, 99, 40)])
    s = evaluate(picks, ref).summary
    assert s["n_reference"] == 1 and s["n_junk_objects"] == 2
    assert s["tp"] == 1 and s["fn"] == 0 and s["junk_picks"] == 2 and s["fp"] == 2
    assert s["junk_picks_by_kind"] == {"ice": 1, "junk": 1}
    # a large pick whose circle covers a small blob is on it too; a small one beside it is not
    beside = table([("m", 830, 100, 80), ("m", 880, 100, 20)])
    assert list(evaluate(beside, ref).picks["status"]) == ["junk", "fp"]
    assert s["recall"] == 1.0


def test_rejected_picks_are_ignored_unless_asked():
    ref = table([("m", 100, 100, 80)])
    picks = table([("m", 100, 100, 80), ("m", 400, 400, 80)]).assign(accepted=[True, False])
    assert evaluate(picks, ref).summary["n_picks"] == 1
    assert evaluate(picks, ref, include_rejected=True).summary["n_picks"] == 2


def test_diameter_error_and_iou_rate():
    ref = table([("m", 100, 100, 100), ("m", 400, 100, 100)])
    picks = table([("m", 100, 100, 110), ("m", 400, 100, 60)])
    s = evaluate(picks, ref).summary
    assert s["median_diameter_error"] == pytest.approx(0.25)  # median of 0.1 and 0.4
    # IoU of concentric circles = (small/large)^2: 0.826 and 0.36
    assert s["iou_rate"] == pytest.approx(0.5)


def test_picks_without_a_diameter_value_leave_the_others_sizes_and_junk_intact():
    # Picks from several tools: one matched pick has no diameter, one unmatched sits on an ice ball.
    ref = table([("m", 100, 100, 50, "solid"), ("m", 300, 100, 50, "solid"), ("m", 600, 600, 200, "ice")],
                ("micrograph", "x_px", "y_px", "diameter_px", "kind"))
    picks = table([("m", 100, 100, 55.0), ("m", 300, 100, np.nan), ("m", 600, 600, np.nan)])
    res = evaluate(picks, ref)
    s = res.summary
    assert s["tp"] == 2
    assert s["median_diameter_error"] == pytest.approx(0.1)  # the one match with a diameter
    assert s["iou_rate"] == 1.0  # IoU 0.83; the match without a diameter has none
    assert s["per_kind"]["solid"]["median_diameter_error"] == pytest.approx(0.1)
    assert np.isnan(res.picks["iou"][1])
    assert list(res.picks["status"]) == ["tp", "tp", "junk"]  # its centre is inside the ice ball
    assert s["junk_picks"] == 1


def test_average_precision_by_hand():
    tp = np.array([True, False, True])
    score = np.array([0.9, 0.8, 0.7])
    # steps: (R=0.5, P=1), (0.5, 0.5), (1.0, 2/3)
    assert average_precision(tp, score, 2) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    # a false positive first: (R=0, P=0), (0.5, 0.5), (1.0, 2/3)
    assert average_precision(np.array([False, True, True]), score, 2) == pytest.approx(0.5 * 0.5 + 0.5 * 2 / 3)
    # tied scores form one step: (R=1, P=2/3)
    assert average_precision(tp, np.ones(3), 2) == pytest.approx(2 / 3)
    assert np.isnan(average_precision(tp, score, 0))


def test_auprc_of_tied_scores_does_not_depend_on_the_row_order():
    # Pick A (x=109) is within tolerance (12 px) of both particles, pick B (x=90) only of the first.
    # Taken one after the other, A first leaves B nothing; as one step they match both.
    ref = table([("m", 100, 100, 40), ("m", 120, 100, 40)])
    a, b = ("m", 109, 100, 40, 1.0), ("m", 90, 100, 40, 1.0)
    cols = ("micrograph", "x_px", "y_px", "diameter_px", "score")
    for rows in ([a, b], [b, a]):
        s = evaluate(table(rows, cols), ref).summary
        assert s["tp"] == 2
        assert s["auprc"] == pytest.approx(1.0)


def test_picks_without_a_score_are_one_last_step_of_the_curve():
    ref = table([("m", 100 * i, 100, 40) for i in range(1, 11)])
    hits = table([("m", 100 * i + 2, 100, 40) for i in range(1, 6)])
    misses = table([("m", 100 * i, 500, 40) for i in range(1, 6)])
    picks = pd.concat([hits, misses], ignore_index=True).assign(score=np.nan)
    # One step: R = 5/10, P = 5/10, whatever the order of the rows.
    for seed in range(4):
        s = evaluate(picks.sample(frac=1, random_state=seed), ref).summary
        assert s["auprc"] == pytest.approx(0.25)
    # The scored pick first, then the unscored ones as one step: (R 0.1, P 1), then (R 0.5, P 5/10).
    mixed = picks.assign(score=[1.0] + [np.nan] * 9)
    assert evaluate(mixed, ref).summary["auprc"] == pytest.approx(0.1 + 0.4 * 0.5)
    assert average_precision(np.array([False, True, True]), np.array([np.nan, 1.0, np.nan]), 2) == pytest.approx(0.5 + 0.5 * 2 / 3)


def test_auprc_rewards_ranking_true_picks_first():
    ref = table([("m", 100 * i, 100, 50) for i in range(1, 6)])
    fps = table([("m", 100 * i, 900, 50) for i in range(1, 6)])
    picks = pd.concat([ref, fps], ignore_index=True)
    good = evaluate(picks.assign(score=[10, 9, 8, 7, 6, 5, 4, 3, 2, 1]), ref).summary["auprc"]
    bad = evaluate(picks.assign(score=[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]), ref).summary["auprc"]
    assert good == pytest.approx(1.0) and bad < 0.5


def test_circle_and_sphere_iou_known_values():
    assert circle_iou(0.0, 5.0, 5.0) == pytest.approx(1.0)
    assert circle_iou(11.0, 5.0, 5.0) == 0.0
    assert circle_iou(0.0, 1.0, 2.0) == pytest.approx(0.25)
    assert sphere_iou(0.0, 1.0, 2.0) == pytest.approx(1 / 8)
    assert sphere_iou(20.0, 5.0, 5.0) == 0.0


def test_circle_iou_partial_overlap_matches_pixel_count():
    yy, xx = np.mgrid[-200:200, -200:200] + 0.5
    a = np.hypot(xx, yy) < 100
    b = np.hypot(xx - 70, yy) < 80
    expected = (a & b).sum() / (a | b).sum()
    assert circle_iou(70.0, 100.0, 80.0) == pytest.approx(expected, rel=5e-3)


def test_sphere_iou_partial_overlap_matches_voxel_count():
    zz, yy, xx = np.mgrid[-60:60, -60:60, -60:60] + 0.5
    a = np.sqrt(xx**2 + yy**2 + zz**2) < 40
    b = np.sqrt((xx - 30) ** 2 + yy**2 + zz**2) < 30
    expected = (a & b).sum() / (a | b).sum()
    assert sphere_iou(30.0, 40.0, 30.0) == pytest.approx(expected, rel=1e-2)


def test_3d_uses_z():
    ref = table([("t", 100, 100, 50, 100)], cols=("micrograph", "x_px", "y_px", "diameter_px", "z_px"))
    near = ref.assign(z_px=105.0)
    far = ref.assign(z_px=160.0)
    assert evaluate(near, ref).summary["tp"] == 1 and evaluate(near, ref).summary["dims"] == 3
    assert evaluate(far, ref).summary["tp"] == 0
    assert evaluate(far.drop(columns="z_px"), ref).summary["dims"] == 2


def test_micrograph_names_are_normalised():
    assert micrograph_key("data/May08_03.05.02.bin_avg.png") == "May08_03.05.02.bin_avg"
    assert micrograph_key("mic 01.mrc") == "mic_01"
    ref = table([("folder/mic_001.mrc", 100, 100, 50)])
    picks = table([("mic_001", 101, 100, 50)])
    assert evaluate(picks, ref).summary["tp"] == 1


def test_scope_decides_about_micrographs_without_reference():
    ref = table([("a", 100, 100, 50)])
    picks = table([("a", 100, 100, 50), ("empty", 300, 300, 50)])
    union = evaluate(picks, ref, micrographs=["a", "empty", "quiet"])
    assert union.summary["fp"] == 1 and union.summary["n_micrographs"] == 3
    row = union.per_micrograph.set_index("micrograph").loc["quiet"]
    assert row["n_picks"] == 0 and row["n_reference"] == 0
    assert evaluate(picks, ref, scope="reference").summary["fp"] == 0


def test_tables_without_micrograph_names():
    ref = table([("only", 100, 100, 50)])
    bare = ref.drop(columns="micrograph")
    assert evaluate(bare, ref).summary["tp"] == 1
    assert evaluate(ref, bare).summary["tp"] == 1
    two = table([("a", 100, 100, 50), ("b", 100, 100, 50)])
    with pytest.raises(ValueError, match="micrograph"):
        evaluate(bare, two)


def test_reference_without_diameter_needs_reference_diameter():
    ref = pd.DataFrame({"micrograph": ["m"], "x_px": [10.0], "y_px": [10.0]})
    with pytest.raises(ValueError, match="reference_diameter"):
        evaluate(ref, ref)
    assert evaluate(ref, ref, reference_diameter=20).summary["tp"] == 1


@pytest.mark.parametrize("diameter", [0.0, -50.0, np.inf])
def test_a_reference_diameter_that_is_not_positive_is_refused(diameter):
    # A zero or negative diameter made a tolerance of zero or less: the matching counted the pick
    # on it, the score-order labels did not (tp 2, AUPRC 0.25), and the size error divided by zero.
    ref = table([("m", 100, 100, diameter), ("m", 300, 100, 50.0)])
    picks = table([("m", 100, 100, 50.0), ("m", 300, 100, 50.0)]).assign(score=[2.0, 1.0])
    with pytest.raises(ValueError, match=r"reference diameter_px must be > 0 and finite; 1 row\(s\) are not \(first: m at x_px=100"):
        evaluate(picks, ref)


@pytest.mark.parametrize("kw, key", [
    ({"tolerance": 0}, "tolerance"), ({"iou_threshold": 2}, "iou_threshold"), ({"scope": "all"}, "scope"),
    # inf passed "> 0": every pick matched a particle anywhere on its micrograph (apoferritin: F1 0.966 -> 0.984)
    ({"tolerance": np.inf}, "tolerance must be a finite number > 0, got inf"),
    ({"reference_diameter": np.inf}, "reference_diameter must be a finite number > 0, got inf"),
])
def test_bad_options_name_the_key(kw, key):
    ref = table([("m", 1, 1, 1)])
    with pytest.raises(ValueError, match=key):
        evaluate(ref, ref, **kw)


def test_star_reference_and_run_folder(tmp_path):
    import starfile

    star = pd.DataFrame({"rlnMicrographName": ["mics/m1.mrc", "mics/m1.mrc"], "rlnCoordinateX": [100.0, 300.0], "rlnCoordinateY": [50.0, 60.0]})
    starfile.write({"particles": star}, tmp_path / "ref.star")
    ref = read_reference(tmp_path / "ref.star")
    assert list(ref["x_px"]) == [100.0, 300.0]
    # a folder of per-micrograph coordinate files next to a RELION list file
    coords = tmp_path / "relion"
    coords.mkdir()
    starfile.write({"coordinate_files": pd.DataFrame({"rlnMicrographName": ["m1.mrc"], "rlnMicrographCoordinates": ["m1_autopick.star"]})}, coords / "autopick.star")
    starfile.write({"": pd.DataFrame({"rlnCoordinateX": [101.0], "rlnCoordinateY": [50.0], "rlnAutopickFigureOfMerit": [2.0]})}, coords / "m1_autopick.star")
    # the folder and the list file itself: the coordinate files it names, with its micrograph names
    for where in (coords, coords / "autopick.star"):
        got = read_reference(where)
        assert list(got["micrograph"]) == ["m1.mrc"] and list(got["score"]) == [2.0] and list(got["x_px"]) == [101.0]
    assert micrograph_key("m1.mrc") == micrograph_key("m1")
    # without the list, the coordinate file's name without _autopick
    (coords / "autopick.star").unlink()
    assert list(read_reference(coords)["micrograph"]) == ["m1"]
    run = tmp_path / "run"
    (run / "micrographs").mkdir(parents=True)
    table([("m1", 101, 50, 40)]).assign(score=1.0, accepted=True).to_csv(run / "micrographs" / "m1.csv", index=False)
    (run / "micrographs" / "m1.json").write_text("{}")
    table([]).to_csv(run / "micrographs" / "m2.csv", index=False)
    (run / "micrographs" / "m2.json").write_text("{}")
    picks, names = read_picks(run)
    assert names == ["m1", "m2"] and len(picks) == 1
    res = evaluate(picks, ref, reference_diameter=40, micrographs=names)
    assert res.summary["tp"] == 1 and res.summary["fn"] == 1 and res.summary["n_micrographs"] == 2


def test_a_relion_list_file_is_followed_from_the_project(tmp_path, monkeypatch):
    # RELION 4/5's autopick.star names coordinate files from the project folder;
    # evaluate said 'no STAR block with rlnCoordinateX' for it and for its job folder
    import starfile

    job = tmp_path / "project" / "AutoPick" / "job006"
    (job / "Movies").mkdir(parents=True)
    listing = pd.DataFrame({"rlnMicrographName": ["MotionCorr/job002/Movies/m1.mrc", "MotionCorr/job002/Movies/m2.mrc"],
                            "rlnMicrographCoordinates": ["AutoPick/job006/Movies/m1_autopick.star",
                                                         "AutoPick/job006/Movies/m2_autopick.star"]})
    starfile.write({"coordinate_files": listing}, job / "autopick.star")
    starfile.write({"": pd.DataFrame({"rlnCoordinateX": [101.0, 300.0], "rlnCoordinateY": [50.0, 70.0],
                                      "rlnAutopickFigureOfMerit": [2.0, 1.0]})}, job / "Movies" / "m1_autopick.star")
    (job / "Movies" / "m2_autopick.star").write_text("# version 50001\n\ndata_\n\n")  # no picks, as RELION writes it
    monkeypatch.chdir(tmp_path)  # not the project: the list's folders are searched upwards
    for where in (job / "autopick.star", job):
        got, _ = read_picks(where)
        assert got["micrograph"].tolist() == ["MotionCorr/job002/Movies/m1.mrc"] * 2
        assert got["x_px"].tolist() == [101.0, 300.0] and got["score"].tolist() == [2.0, 1.0]
    ref = table([("m1", 100.0, 51.0, 40.0), ("m2", 200.0, 200.0, 40.0)])
    res = evaluate(got.assign(accepted=True), ref)
    assert (res.summary["tp"], res.summary["fp"], res.summary["fn"]) == (1, 1, 1)
    (job / "Movies" / "m1_autopick.star").unlink()
    with pytest.raises(ValueError, match=r"autopick.star: coordinate file\(s\) it lists not found: AutoPick/job006/Movies/m1_autopick.star"):
        read_picks(job)


def test_relion_coordinate_files_of_micrographs_without_picks_count_as_no_picks(tmp_path):
    # A folder of RELION coordinate files (no list file) or one file given alone: the
    # 'data_'-only file RELION writes for a micrograph without picks stopped evaluate
    # with 'no STAR block with rlnCoordinateX/rlnCoordinateY'.
    import starfile

    folder = tmp_path / "Movies"
    folder.mkdir()
    starfile.write({"": pd.DataFrame({"rlnCoordinateX": [101.0], "rlnCoordinateY": [50.0]})}, folder / "m1_autopick.star")
    (folder / "m2_autopick.star").write_text("# version 50001\n\ndata_\n\n")
    ref = table([("m1", 100.0, 51.0, 40.0), ("m2", 200.0, 200.0, 40.0)])
    got, _ = read_picks(folder)
    assert got["micrograph"].tolist() == ["m1"]
    s = evaluate(got.assign(accepted=True), ref).summary
    assert (s["tp"], s["fp"], s["fn"]) == (1, 0, 1)
    alone, _ = read_picks(folder / "m2_autopick.star")
    assert len(alone) == 0
    # A STAR file with blocks but no coordinates is still refused.
    starfile.write({"optics": pd.DataFrame({"rlnOpticsGroup": [1]})}, tmp_path / "other.star")
    with pytest.raises(ValueError, match="no STAR block with rlnCoordinateX/rlnCoordinateY"):
        read_picks(tmp_path / "other.star")
    # The RELION 5 tomography table the star writer makes for tomograms: Å from the centre, no voxels.
    # It was refused with the same 'no STAR block with rlnCoordinateX' as a file with no coordinates.
    starfile.write({"particles": pd.DataFrame({"rlnTomoName": ["t1"], "rlnCenteredCoordinateXAngst": [10.0],
                                               "rlnCenteredCoordinateYAngst": [0.0], "rlnCenteredCoordinateZAngst": [5.0]})},
                   tmp_path / "tomo_particles.star")
    with pytest.raises(ValueError, match=r"RELION 5 tomography table .* relion/autopick\.star or relion/coords/"):
        read_picks(tmp_path / "tomo_particles.star")


def test_a_runs_relion_folder_scores_like_the_run(tiny_run_folder):
    truth = pd.concat([tiny_truth(seed=i).assign(micrograph=f"mic_{i}") for i in range(2)], ignore_index=True)
    whole = evaluate(read_picks(tiny_run_folder)[0], truth).summary
    assert whole["tp"] >= 6
    for where in ("relion", "relion/autopick.star"):
        s = evaluate(read_picks(tiny_run_folder / where)[0], truth).summary
        assert (s["tp"], s["fp"], s["fn"]) == (whole["tp"], whole["fp"], whole["fn"])


def test_a_run_folder_as_the_reference_is_its_accepted_picks(tiny_run_folder, run_cli):
    # reference=<run folder> (comparing another picker, or another run, with a lipoframe run) read the folder's
    # tables: sizes.csv became a micrograph 'sizes' of reference particles without coordinates, so evaluate said
    # 'reference has rows without diameter_px; give reference_diameter=<px>', and with that given scored them as
    # misses (the real apoferritin run against another: a 5th micrograph 'sizes', 13 false misses)
    run = tiny_run_folder
    assert (run / "sizes.csv").is_file()
    picks, _ = read_picks(run)
    accepted = picks[picks["accepted"].astype(bool)]
    ref = read_reference(run)
    assert len(ref) == len(accepted) > 0 and set(ref["micrograph"]) == set(accepted["micrograph"])
    s = evaluate(picks, ref).summary
    assert (s["tp"], s["fp"], s["fn"]) == (len(accepted), 0, 0)
    assert len(read_reference(run / "picks.csv")) == len(read_reference(run))
    code, out, err = run_cli("evaluate", f"picks={run}", f"reference={run}")
    assert code == 0, err
    assert "sizes" not in out


def test_lipoframes_own_star_files_keep_their_diameters(tmp_path):
    """Evaluating a run's RELION coordinate files scores the diameters too."""
    from lipoframe.builtin.writers import StarWriter
    from lipoframe.plan import ExtractionPlan, SizeBin
    from lipoframe.records import MicrographMeta, PickContext

    picks = table([("0001", 120.0, 80.0, 120.0), ("0001", 300.0, 250.0, 180.0)]).assign(score=[2.0, 1.0], accepted=True, reject_reason="", size_bin=0)
    metas = {"0001": MicrographMeta(name="0001", path="/data/0001.mrc", shape=(512, 512), pixel_size=1.0)}
    plan = ExtractionPlan(policy="test", pixel_size=1.0, bins=(SizeBin(0, 100.0, 200.0, 2, 256, 256.0),))
    StarWriter().write(picks, metas, plan, tmp_path, PickContext(dmin_px=100, dmax_px=200, pixel_size=1.0))
    coords = tmp_path / "relion" / "coords"
    got, _ = read_picks(coords)
    assert got["micrograph"].tolist() == ["0001", "0001"]
    assert got["diameter_px"].tolist() == [120.0, 180.0]
    # A RELION list whose micrograph names look like numbers keeps them as text.
    import starfile

    starfile.write({"particles": pd.DataFrame({"rlnMicrographName": ["0001", "0001"], "rlnCoordinateX": [121.0, 300.0], "rlnCoordinateY": [80.0, 252.0]})}, tmp_path / "ref.star")
    ref = read_reference(tmp_path / "ref.star")
    assert ref["micrograph"].tolist() == ["0001", "0001"]
    res = evaluate(got.assign(accepted=True), ref, reference_diameter=150)
    assert res.summary["tp"] == 2 and res.summary["fn"] == 0


def test_cli_paths_under_home_are_read_and_written_there(away_from_home, capsys):
    """`picks=~/...`, `output=~/eval` (sh, a script, or a quoted word) read and wrote ./~/..., as `lipoframe run` did."""
    cwd, home = away_from_home
    table([("a", 100, 100, 50)]).to_csv(home / "truth.csv", index=False)
    table([("a", 102, 99, 52)]).assign(score=1.0, accepted=True).to_csv(home / "picks.csv", index=False)
    assert main(["picks=~/picks.csv", "reference=~/truth.csv", "output=~/eval"]) == 0
    assert json.loads((home / "eval" / "evaluation.json").read_text())["tp"] == 1
    assert list(cwd.iterdir()) == []


def test_cli_writes_outputs(tmp_path, capsys):
    ref = table([("a", 100, 100, 50), ("a", 300, 300, 50)]).assign(kind="shell")
    picks = table([("a", 102, 99, 52)]).assign(score=1.0, accepted=True)
    ref.to_csv(tmp_path / "truth.csv", index=False)
    picks.to_csv(tmp_path / "picks.csv", index=False)
    out = tmp_path / "eval"
    assert main([f"picks={tmp_path / 'picks.csv'}", f"reference={tmp_path / 'truth.csv'}", f"output={out}"]) == 0
    summary = json.loads((out / "evaluation.json").read_text())
    assert summary["tp"] == 1 and summary["recall"] == 0.5 and summary["per_kind"]["shell"]["n"] == 2
    per = pd.read_csv(out / "per_micrograph.csv")
    assert per.loc[0, "fn"] == 1
    assert set(pd.read_csv(out / "picks_evaluated.csv")["status"]) == {"tp"}
    assert "F1" in capsys.readouterr().out


# ---------------------------------------------------------------------------
# EMAN .box and crYOLO .cbox files (picks and references)
# ---------------------------------------------------------------------------
#: A crYOLO >= 1.8 CBOX as crYOLO writes it (two rows of a real file: sim-som/cryolo_cbox_utils).
CRYOLO_CBOX = """data_global

_cbox_format_version 1.0

data_cryolo

loop_
_CoordinateX #1
_CoordinateY #2
_CoordinateZ #3
_Width #4
_Height #5
_Depth #6
_EstWidth #7
_EstHeight #8
_Confidence #9
_NumBoxes #10
_Angle #11
4472.011260986328 3834.466156333685 <NA> 200.0 200.0 <NA> 208.0 203.0 0.14524617791175842 <NA> <NA>
2088.1497192382812 3783.207821071148 <NA> 200.0 200.0 <NA> 205.0 206.0 0.15951088070869446 <NA> <NA>

data_cryolo_include

loop_
_slice_index #1
"""


def test_cbox_files_give_centre_diameter_and_score(tmp_path):
    # They were refused ("crYOLO .cbox files are not read by lipoframe evaluate").
    (tmp_path / "FoilHole_1.cbox").write_text(CRYOLO_CBOX)
    got, _ = read_picks(tmp_path / "FoilHole_1.cbox")
    assert got["micrograph"].tolist() == ["FoilHole_1"] * 2  # the file's stem names the micrograph
    # centre = corner + box / 2 (napari-boxmanager's _CoordinateX + _Width / 2); no flip for an unknown (MRC) micrograph
    assert got["x_px"].tolist() == pytest.approx([4572.011260986328, 2188.1497192382812])
    assert got["y_px"].tolist() == pytest.approx([3934.466156333685, 3883.207821071148])
    assert got["diameter_px"].tolist() == [205.5, 205.5]  # mean of _EstWidth and _EstHeight
    assert got["score"].tolist() == pytest.approx([0.14524617791175842, 0.15951088070869446])
    assert "z_px" not in got.columns
    # crYOLO < 1.8 (and Scipion) wrote whitespace columns: x y w h confidence [est_w est_h]
    (tmp_path / "old7.cbox").write_text("100\t200\t64\t64\t0.9\t40\t44\n300.5\t50\t64\t64\t0.2\t50\t50\n")
    (tmp_path / "old5.cbox").write_text("100 200 64 64 0.9\n")
    old7, old5 = read_picks(tmp_path / "old7.cbox")[0], read_picks(tmp_path / "old5.cbox")[0]
    assert old7[["x_px", "y_px", "diameter_px", "score"]].values.tolist() == [[132, 232, 42, 0.9], [332.5, 82, 50, 0.2]]
    assert old5[["x_px", "y_px", "score"]].values.tolist() == [[132, 232, 0.9]] and "diameter_px" not in old5.columns


def test_cbox_without_estimates_or_confidence_has_no_diameter_and_no_score(tmp_path):
    # napari-boxmanager writes <NA> where it had no size or confidence: unknown, not a tied score
    text = CRYOLO_CBOX.replace("208.0 203.0 0.14524617791175842", "<NA> <NA> <NA>").replace("205.0 206.0 0.15951088070869446", "0 <NA> <NA>")
    (tmp_path / "m.cbox").write_text(text)
    got, _ = read_picks(tmp_path / "m.cbox")
    assert "diameter_px" not in got.columns and "score" not in got.columns
    ref = table([("m", 4572, 3934, 200), ("m", 2188, 3883, 200)])
    s = evaluate(got, ref).summary
    assert s["f1"] == 1.0 and np.isnan(s["auprc"]) and np.isnan(s["median_diameter_error"])
    # one row with an estimate: the other stays unknown
    (tmp_path / "m.cbox").write_text(CRYOLO_CBOX.replace("205.0 206.0", "<NA> <NA>"))
    assert read_picks(tmp_path / "m.cbox")[0]["diameter_px"].tolist()[0] == 205.5
    assert np.isnan(read_picks(tmp_path / "m.cbox")[0]["diameter_px"].tolist()[1])


def test_3d_cbox_gives_z(tmp_path):
    from lipoframe.io.cbox import cbox_text

    (tmp_path / "tomo.cbox").write_text(cbox_text([50.0, 80.0], [60.0, 90.0], z=[10.0, 20.0], box=[32, 32],
                                                  diameter=[20.0, 22.0], confidence=[1.0, 0.5]))
    got, _ = read_picks(tmp_path / "tomo.cbox")
    assert got[["x_px", "y_px", "z_px", "diameter_px"]].values.tolist() == [[50, 60, 10, 20], [80, 90, 20, 22]]


@pytest.mark.parametrize("suffix", [".box", ".coords"])
def test_cryolos_3d_box_and_coords_files_give_xyz_centres(tmp_path, suffix):
    # crYOLO's tomogram output (CoordsIO.write_eman_boxfile3d, write_coords_file): "x y z" centres, tab- or
    # blank-separated. A 3D .box was refused ("at least 4 numbers"), .coords was not read at all.
    sep = "\t" if suffix == ".box" else " "
    (tmp_path / f"tomo_01{suffix}").write_text(sep.join(["50.5", "60", "10"]) + "\n" + sep.join(["80", "90", "20"]) + "\n")
    got, _ = read_picks(tmp_path / f"tomo_01{suffix}")
    assert got["micrograph"].tolist() == ["tomo_01"] * 2
    assert got[["x_px", "y_px", "z_px"]].values.tolist() == [[50.5, 60, 10], [80, 90, 20]]
    # matched in 3D: the second reference particle is 40 voxels away in z only
    ref = table([("tomo_01", 50, 60, 20), ("tomo_01", 80, 90, 20)])
    ref["z_px"] = [10.0, 60.0]
    s = evaluate(got, ref).summary
    assert (s["tp"], s["fp"], s["fn"]) == (1, 1, 1)


def test_an_empty_box_file_is_2d(tmp_path):
    # it came back with a z column (an empty table of three columns was taken as crYOLO's 3D x y z)
    from lipoframe.io.eman import read_box

    for text in ("", "# no picks\n"):
        (tmp_path / "m.box").write_text(text)
        assert read_box(tmp_path / "m.box").columns.tolist() == ["x", "y", "width", "height"]


def test_box_files_give_centres_without_diameter_or_score(tmp_path):
    # They were refused ("EMAN .box files are not read by lipoframe evaluate").
    # e2boxer writes integers and tabs; napari-boxmanager float corners and blanks; a fifth column is ignored
    (tmp_path / "mic_0001.box").write_text("68\t68\t64\t64\n\n100.5 20 64 32 -3\n")
    got, _ = read_picks(tmp_path / "mic_0001.box")
    assert got["micrograph"].tolist() == ["mic_0001"] * 2
    assert got[["x_px", "y_px"]].values.tolist() == [[100, 100], [132.5, 36]]
    assert "diameter_px" not in got.columns and "score" not in got.columns
    # as a reference it needs reference_diameter, as STAR files do
    ref = read_reference(tmp_path / "mic_0001.box")
    with pytest.raises(ValueError, match="reference_diameter"):
        evaluate(got, ref)
    assert evaluate(got, ref, reference_diameter=50).summary["f1"] == 1.0
    (tmp_path / "empty.box").write_text("")  # a micrograph without picks
    assert len(read_picks(tmp_path / "empty.box")[0]) == 0


def test_folders_of_box_and_cbox_files_name_each_micrograph_by_its_file(tmp_path):
    from lipoframe.io.cbox import cbox_text
    from lipoframe.io.eman import box_text

    (tmp_path / "CBOX").mkdir()
    (tmp_path / "EMAN").mkdir()
    for name, x in (("mic_a", 100.0), ("mic_b", 300.0)):
        (tmp_path / "CBOX" / f"{name}.cbox").write_text(cbox_text([x, x + 150], [80.0, 200.0], box=[64, 64],
                                                                  diameter=[40.0, 40.0], confidence=[0.9, 0.1]))
        (tmp_path / "EMAN" / f"{name}.box").write_text(box_text([x, x + 150], [80.0, 200.0], box=[64, 64]))
    (tmp_path / "CBOX" / "mic_c.cbox").write_text(cbox_text([], [], box=[], diameter=[], confidence=[]))
    ref = table([("mic_a", 100, 80, 40), ("mic_a", 250, 200, 40), ("mic_b", 300, 80, 40), ("mic_b", 900, 900, 40)])
    ref.to_csv(tmp_path / "truth.csv", index=False)
    cbox = read_picks(tmp_path / "CBOX")[0]
    assert sorted(set(cbox["micrograph"])) == ["mic_a", "mic_b"] and len(cbox) == 4
    s = evaluate(cbox, ref).summary
    assert (s["tp"], s["fp"], s["fn"]) == (3, 1, 1) and s["median_diameter_error"] == 0.0
    # the command line, with a folder as picks and as reference
    out = tmp_path / "eval"
    assert main([f"picks={tmp_path / 'EMAN'}", f"reference={tmp_path / 'truth.csv'}", f"output={out}"]) == 0
    assert json.loads((out / "evaluation.json").read_text())["tp"] == 3
    assert main([f"picks={tmp_path / 'truth.csv'}", f"reference={tmp_path / 'CBOX'}", f"output={out}"]) == 0
    assert json.loads((out / "evaluation.json").read_text())["tp"] == 3


@pytest.mark.parametrize("name, text, words", [
    ("m.box", "68 68 64\n1 2 64 64\n", ["m.box", "EMAN .box", "line 2", "4 numbers where other lines have 3"]),
    # a 2D file with one cut line: that line is named, not line 1 as '4 numbers where other lines have 3'
    ("m.box", "1 2 64 64\n5 6 64 64\n68 68 64\n", ["m.box", "EMAN .box", "line 3", "at least 4 numbers", "'68 68 64'"]),
    ("m.box", "68 68\n", ["m.box", "EMAN .box", "line 1", "at least 3 numbers"]),
    ("m.coords", "68 68 64 64\n", ["m.coords", "crYOLO .coords", "three numbers per line"]),
    ("m.box", "68 68 64 64\nx 1 2 3\n", ["m.box", "line 2", "expected numbers"]),
    ("m.box", "10 10 0 0\n", ["m.box", "box > 0"]),
    ("m.box", "#micrograph: m.mrc\n#helix: (1, 2),(3, 4),64\n1 2\n", ["m.box", "helicon filament"]),
    ("m.box", "1 2 64 64 -1\n9 9 64 64 -2\n", ["m.box", "filament start/end"]),
    ("m.cbox", CRYOLO_CBOX.replace("_Width #4", "_Wide #4"), ["m.cbox", "crYOLO .cbox", "_Width"]),
    ("m.cbox", "data_other\n\nloop_\n_a #1\n1\n", ["m.cbox", "no data_cryolo block"]),
    ("m.cbox", "1 2 3\n", ["m.cbox", "at least 4 numbers"]),
], ids=["box-3-and-4-columns", "box-cut-line", "box-2-columns", "coords-4-columns", "box-not-a-number", "box-zero-box", "box-helicon", "box-filament-ends", "cbox-no-width",
        "cbox-no-cryolo-block", "cbox-old-3-columns"])
def test_broken_box_and_cbox_files_are_refused_naming_file_and_problem(tmp_path, capsys, name, text, words):
    (tmp_path / name).write_text(text)
    (tmp_path / "ref.csv").write_text("micrograph,x_px,y_px,diameter_px\nm,100,100,50\n")
    assert main([f"picks={tmp_path / name}", f"reference={tmp_path / 'ref.csv'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert all(w in err for w in words), err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_box_and_cbox_rows_of_tiff_micrographs_are_flipped_back(tmp_path, capsys):
    import tifffile

    from lipoframe.evaluate import EvaluationInputError
    from lipoframe.io.cbox import cbox_text
    from lipoframe.io.eman import box_text

    ny = 300
    mics = tmp_path / "mics"
    mics.mkdir()
    tifffile.imwrite(mics / "a.tif", np.zeros((ny, 200), np.float32))
    x, y = np.array([50.0, 150.0]), np.array([40.0, 100.0])
    flipped = ny - 1 - y  # what crYOLO, EMAN2 and lipoframe's writers store for a TIFF
    (tmp_path / "picks").mkdir()
    (tmp_path / "picks" / "a.cbox").write_text(cbox_text(x, flipped, box=[64, 64], diameter=[60, 60], confidence=[1, 2]))
    (tmp_path / "picks" / "a.box").write_text(box_text(x, flipped, box=[64, 64]))
    for f in ("a.cbox", "a.box"):
        assert read_picks(tmp_path / "picks" / f, micrographs=mics)[0]["y_px"].tolist() == y.tolist()
        assert read_reference(tmp_path / "picks" / f, micrographs=mics)["y_px"].tolist() == y.tolist()
        with pytest.raises(EvaluationInputError, match=r"a\.\w*box: .* rows of TIFF micrograph\(s\) a count from the bottom.*micrographs="):
            read_picks(tmp_path / "picks" / f, flip_y=True)
    table([("a", 50, 40, 60), ("a", 150, 100, 60)]).to_csv(tmp_path / "truth.csv", index=False)
    argv = [f"picks={tmp_path / 'picks' / 'a.cbox'}", f"reference={tmp_path / 'truth.csv'}", f"output={tmp_path / 'eval'}"]
    assert main(argv + [f"micrographs={mics}"]) == 0
    assert json.loads((tmp_path / "eval" / "evaluation.json").read_text())["f1"] == 1.0
    assert main(argv + ["flip_y=true"]) == 2
    err = capsys.readouterr().err
    assert "crYOLO .cbox rows of TIFF micrograph(s) a" in err and "micrographs=" in err


@pytest.fixture(scope="module")
def every_writer_run(tmp_path_factory):
    """``run(suffix, *overrides)``: lipoframe run on three tiny micrographs (MRC or TIFF), writer=[csv,star,cbox,box];
    returns the run folder and its truth. A run of the same suffix and overrides is made once per module: the tests
    only read it (they write their evaluations in their own ``tmp_path``)."""
    import tifffile

    from conftest import tiny_image, write_mrc

    from lipoframe.cli import main as lipoframe_main

    made: dict[tuple[str, ...], tuple[Path, pd.DataFrame]] = {}

    def run_with_every_writer(suffix: str, *overrides: str) -> tuple[Path, pd.DataFrame]:
        key = (suffix, *overrides)
        if key not in made:
            root = tmp_path_factory.mktemp("every_writer")
            truths = []
            for i in range(3):
                image, truth = tiny_image(seed=i)
                path = root / "mics" / f"mic_{i}{suffix}"
                if suffix == ".mrc":
                    write_mrc(path, image)
                else:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    tifffile.imwrite(path, image.astype(np.float32))
                truths.append(truth.assign(micrograph=f"mic_{i}"))
            run = root / "run"
            with pytest.MonkeyPatch.context() as mp:
                mp.setenv("LIPOFRAME_LOAD_PLUGINS", "")
                assert lipoframe_main(["run", f"input={root / 'mics'}", f"output={run}", *TINY_ARGS, *NO_POLARITY_CHECK,
                                       "writer=[csv,star,cbox,box]", *overrides]) == 0
            made[key] = run, pd.concat(truths, ignore_index=True)
        return made[key]

    return run_with_every_writer


@pytest.mark.parametrize("suffix", [".mrc", ".tif"])
def test_a_runs_cbox_and_box_exports_score_as_its_csv(tmp_path, every_writer_run, suffix):
    """Round trip: lipoframe's cbox/ and box/ folders, read back, score as its picks.csv (TIFF: rows flipped back)."""
    run, truth = every_writer_run(suffix)
    csv = read_picks(run / "picks.csv")[0]
    accepted = csv[csv["accepted"].astype(bool)] if "accepted" in csv.columns else csv
    cols = ["micrograph", "x_px", "y_px"]
    cbox = read_picks(run / "cbox")[0].sort_values(cols, ignore_index=True)
    box = read_picks(run / "box")[0].sort_values(cols, ignore_index=True)
    mine = accepted.sort_values(cols, ignore_index=True)
    raw = read_picks(run / "cbox", flip_y=False)[0].sort_values(cols[:2], ignore_index=True)
    flipped = np.abs(raw["y_px"].to_numpy() - mine.sort_values(cols[:2], ignore_index=True)["y_px"].to_numpy()) > 1
    assert flipped.all() if suffix == ".tif" else not flipped.any()  # the exports of a TIFF count rows from the bottom
    assert len(cbox) == len(box) == len(mine) > 0
    assert cbox["micrograph"].tolist() == mine["micrograph"].tolist() == box["micrograph"].tolist()
    # picks.csv has 2 decimals, the CBOX 3: they agree to 0.01 px; EMAN .box centres are the nearest pixel
    for col in ("x_px", "y_px", "diameter_px", "score"):
        assert np.abs(cbox[col].to_numpy() - mine[col].to_numpy()).max() <= 0.01, col
    assert np.abs(box[["x_px", "y_px"]].to_numpy() - mine[["x_px", "y_px"]].to_numpy()).max() <= 0.51
    # against a reference that misses one particle of each micrograph and has one no pick finds
    ref = pd.concat([truth.groupby("micrograph").tail(-1), table([("mic_0", 20, 20, 60)])], ignore_index=True)
    ref.to_csv(tmp_path / "ref.csv", index=False)
    want = evaluate(mine, ref).summary
    assert want["fp"] >= 3 and want["fn"] >= 1 and 0 < want["auprc"] < 1
    figures = ("n_picks", "tp", "fp", "fn", "precision", "recall", "f1", "duplicates", "junk_picks")
    for folder, has_size in (("cbox", True), ("box", False)):
        out = tmp_path / "eval" / folder
        assert main([f"picks={run / folder}", f"reference={tmp_path / 'ref.csv'}", f"output={out}"]) == 0
        got = json.loads((out / "evaluation.json").read_text())
        assert {k: got[k] for k in figures} == pytest.approx({k: want[k] for k in figures}), folder
        if has_size:
            assert got["auprc"] == pytest.approx(want["auprc"], abs=1e-9)
            assert got["median_diameter_error"] == pytest.approx(want["median_diameter_error"], abs=1e-3)
            assert got["iou_rate"] == pytest.approx(want["iou_rate"])
        else:  # no score, no size in an EMAN .box
            assert got["auprc"] is None and got["median_diameter_error"] is None
    # and as the reference: the run's CSV against its own exports is a perfect score
    for folder, extra in (("cbox", []), ("box", ["reference_diameter=60"])):
        out = tmp_path / "eval" / f"ref_{folder}"
        assert main([f"picks={run / 'picks.csv'}", f"reference={run / folder}", f"output={out}", *extra]) == 0
        got = json.loads((out / "evaluation.json").read_text())
        assert (got["f1"], got["n_reference"]) == (1.0, len(mine))
        if folder == "cbox":
            assert got["median_diameter_error"] == pytest.approx(0.0, abs=1e-3)


@pytest.mark.parametrize("suffix, flip_y", [(".tif", False), (".mrc", True)])
def test_a_runs_star_exports_read_with_its_flip_y_give_back_its_picks(tmp_path, every_writer_run, suffix, flip_y):
    """A run with flip_y=false (TIFFs extracted from unflipped originals) or true: its STAR files, read with the
    same flip_y or with none (the run's records say it), are its picks; taken as they are, they are flipped or not."""
    run, _ = every_writer_run(suffix, f"flip_y={str(flip_y).lower()}")
    cols = ["micrograph", "x_px", "y_px"]
    csv = read_picks(run / "picks.csv")[0]
    mine = csv[csv["accepted"].astype(bool)].sort_values(cols, ignore_index=True)
    for given in (flip_y, None):
        back = read_picks(run / "relion" / "coords", flip_y=given)[0].sort_values(cols, ignore_index=True)
        assert back["micrograph"].tolist() == mine["micrograph"].tolist()
        # RELION's coordinates are the nearest pixel
        assert np.abs(back[["x_px", "y_px"]].to_numpy() - mine[["x_px", "y_px"]].to_numpy()).max() <= 0.51, given
    raw = read_picks(run / "relion" / "coords", flip_y=False)[0].sort_values(cols[:2], ignore_index=True)
    flipped = np.abs(raw["y_px"].to_numpy() - mine.sort_values(cols[:2], ignore_index=True)["y_px"].to_numpy()) > 1
    assert flipped.all() if flip_y else not flipped.any()
    out = tmp_path / "eval"
    assert main([f"picks={run / 'relion' / 'coords'}", f"reference={run}", f"output={out}"]) == 0
    assert json.loads((out / "evaluation.json").read_text())["f1"] == 1.0


def test_another_pickers_files_of_tiff_micrographs_are_placed_by_the_run_given_as_reference(tmp_path, every_writer_run):
    """`picks=<another picker's .box/.cbox/STAR> reference=<run folder>` (docs: "another picker with a run"):
    the run knows its TIFFs, so their rows are flipped back without micrographs= (they were taken as MRC rows)."""
    run, _ = every_writer_run(".tif")  # test_a_runs_cbox_and_box_exports_score_as_its_csv's
    elsewhere = tmp_path / "other_picker"
    shutil.copytree(run / "cbox", elsewhere / "CBOX")
    shutil.copytree(run / "box", elsewhere / "EMAN")
    for folder in ("CBOX", "EMAN"):
        out = tmp_path / "eval" / folder
        assert main([f"picks={elsewhere / folder}", f"reference={run}", f"output={out}"]) == 0
        assert json.loads((out / "evaluation.json").read_text())["f1"] == 1.0, folder


def test_cli_warns_when_no_micrograph_names_match(tmp_path, capsys):
    table([("mic_a", 1, 1, 10)]).to_csv(tmp_path / "p.csv", index=False)
    table([("other", 1, 1, 10)]).to_csv(tmp_path / "r.csv", index=False)
    assert main([f"picks={tmp_path / 'p.csv'}", f"reference={tmp_path / 'r.csv'}"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    # the one line says it all: the reference's micrographs without picks are not listed again
    assert len(err) == 1 and "no micrograph name in common" in err[0]


def test_cli_warns_when_pick_micrographs_have_only_a_similar_name_in_the_reference(tmp_path, capsys):
    # Picks of denoised copies (mic_00k_dn) against a reference of the originals (mic_00k): each scored as
    # false positives plus misses, without a word while one name (mic_005) matched.
    picks = [(f"mic_00{k}_dn", 100, 100, 50) for k in range(1, 5)] + [("mic_005", 100, 100, 50), ("empty", 300, 300, 50)]
    ref = [(f"mic_00{k}", 100, 100, 50) for k in range(1, 6)]
    table(picks).to_csv(tmp_path / "p.csv", index=False)
    table(ref).to_csv(tmp_path / "r.csv", index=False)
    assert main([f"picks={tmp_path / 'p.csv'}", f"reference={tmp_path / 'r.csv'}"]) == 0
    err = capsys.readouterr().err
    assert "4 pick micrograph(s) have no reference micrograph of the same name but one of a similar name" in err
    assert "mic_001_dn (reference: mic_001), mic_002_dn (reference: mic_002), mic_003_dn (reference: mic_003) and 1 more" in err
    assert "empty" not in err  # a micrograph legitimately absent from the reference
    assert "no micrograph name in common" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("picks, ref", [
    (["s01", "s02", "empty"], ["s01", "s02"]),  # a suite's empty micrograph: no reference, nothing similar
    (["mic_1", "mic_10"], ["mic_1"]),  # mic_1 has its own picks: mic_10 is another micrograph
    (["mic_001_dn.mrc"], ["Movies/mic_001_dn.tif"]),  # the same name after dropping folders and suffixes
])
def test_no_similar_name_warning_for_micrographs_legitimately_absent(tmp_path, capsys, picks, ref):
    table([(n, 100, 100, 50) for n in picks]).to_csv(tmp_path / "p.csv", index=False)
    table([(n, 100, 100, 50) for n in ref]).to_csv(tmp_path / "r.csv", index=False)
    assert main([f"picks={tmp_path / 'p.csv'}", f"reference={tmp_path / 'r.csv'}"]) == 0
    assert "similar name" not in capsys.readouterr().err


def test_similar_micrograph_names_pairs_each_pick_name_with_its_reference():
    from lipoframe.evaluate import similar_micrograph_names

    assert similar_micrograph_names(["mic_001_dn.mrc", "mic_002", "x"], ["mic_001", "mic_002_full.tif", "y"]) == [
        ("mic_001_dn", "mic_001"), ("mic_002", "mic_002_full")]
    assert similar_micrograph_names(["a_1_dn", "a_1"], ["a_1"]) == []  # a_1 is matched by its own name
    assert similar_micrograph_names(["mic_1_dn"], ["mic", "mic_1"]) == [("mic_1_dn", "mic_1")]  # the longest


@pytest.mark.parametrize("argv, word", [
    (["picks=a.csv", "reference=b.csv", "bogus=1"], "bogus"),
    (["picks=a.csv", "reference=b.csv", "tolerance=abc"], "tolerance"),
    (["picks=a.csv", "reference=b.csv", "tolerance=-1"], "tolerance"),
    (["picks=a.csv", "reference=b.csv", "tolerance=inf"], "tolerance must be a finite number > 0, got inf"),
    (["picks=[a.csv", "reference=b.csv"], "picks: cannot read the value '[a.csv'"),  # a YAML error: was a traceback
    (["picks=a.csv"], "reference"),
    (["picks=missing.csv", "reference=missing.csv"], "missing.csv"),
])
def test_cli_errors_are_one_line_naming_the_problem(argv, word, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert word in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("which", ["picks", "reference"])
@pytest.mark.parametrize("bad, expected", [
    ("", "p.csv: x_px must be a number on every row; 1 row(s) are not (first: line 3: '')"),
    ("abc", "p.csv: x_px must be a number on every row; 1 row(s) are not (first: line 3: 'abc')"),
    ("inf", "p.csv: x_px must be a number on every row; 1 row(s) are not (first: line 3: 'inf')"),
])
def test_cli_a_table_with_a_bad_coordinate_is_one_line_naming_the_file_and_row(tmp_path, capsys, which, bad, expected):
    # was "data must be finite, check for nan or inf values" or "could not convert string to float: 'abc'"
    (tmp_path / "p.csv").write_text(f"micrograph,x_px,y_px,diameter_px\nm,100,100,50\nm,{bad},200,50\n")
    table([("m", 100, 100, 50)]).to_csv(tmp_path / "r.csv", index=False)
    other = "reference" if which == "picks" else "picks"
    assert main([f"{which}={tmp_path / 'p.csv'}", f"{other}={tmp_path / 'r.csv'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("text, line", [
    # blank and whitespace-only lines, which pandas skips, before the header and between the rows
    ("\n\nmicrograph,x_px,y_px,diameter_px\n\nm,100,100,50\n  \n\nm,abc,200,50\n", 8),
    # Windows line ends, a quoted name over two lines, an all-empty row (a row, not a blank line)
    ('micrograph,x_px,y_px,diameter_px\r\n\r\n"m\r\nn",100,100,50\r\nm,1,1,50\r\n\r\nm,1e999,200,50\r\n', 7),
    ("micrograph,x_px,y_px,diameter_px\nm,100,100,50\n\n,,,\n", 4),
])
def test_a_bad_coordinate_is_reported_at_its_line_in_the_file(tmp_path, text, line):
    """The line was the row's position in pandas' table + 2, which ignores the blank lines pandas skips."""
    path = tmp_path / "p.csv"
    path.write_bytes(text.encode())
    with pytest.raises(EvaluationInputError, match=rf"p\.csv: x_px must be a number on every row; 1 row\(s\) are not \(first: line {line}: "):
        read_reference(path)


def test_cli_a_folder_with_a_csv_without_coordinates_reads_the_tables_with_them(tmp_path, capsys):
    # `lipoframe simulate`'s folder: truth.csv and micrographs.csv (no x_px) side by side; the
    # second was concatenated as picks without coordinates: "data must be finite, ..."
    table([("m", 100, 100, 50), ("m", 300, 300, 50)]).to_csv(tmp_path / "truth.csv", index=False)
    (tmp_path / "micrographs.csv").write_text("micrograph,file,width_px\nm,m.mrc,512\n")
    assert main([f"picks={tmp_path}", f"reference={tmp_path / 'truth.csv'}"]) == 0
    assert "picks 2" in capsys.readouterr().out
    (tmp_path / "truth.csv").unlink()
    assert main([f"picks={tmp_path}", f"reference={tmp_path / 'micrographs.csv'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "has picks coordinates (micrographs.csv)" in err and len(err.splitlines()) == 1


def test_cli_a_csv_without_micrograph_column_is_the_other_tables_only_micrograph(tmp_path, capsys):
    # like ../shared's reference_virions_derived.csv: one micrograph's particles, no micrograph column.
    # It was named after its file ('ref') and matched nothing: F1 0 and "no micrograph name in common".
    (tmp_path / "ref.csv").write_text("x_px,y_px,diameter_px\n100,100,50\n300,300,50\n")
    table([("TS_001.133", 101, 99, 50), ("TS_001.133", 300, 302, 50)]).to_csv(tmp_path / "p.csv", index=False)
    assert main([f"picks={tmp_path / 'p.csv'}", f"reference={tmp_path / 'ref.csv'}"]) == 0
    out, err = capsys.readouterr()
    assert "F1 1.000" in out and "TS_001.133" in out and "in common" not in err
    # against picks on two micrographs it cannot say which: one line, exit 2
    table([("a", 100, 100, 50), ("b", 300, 300, 50)]).to_csv(tmp_path / "p2.csv", index=False)
    assert main([f"picks={tmp_path / 'p2.csv'}", f"reference={tmp_path / 'ref.csv'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert f"{tmp_path / 'ref.csv'}: the reference table has no micrograph column but the other one names 2 micrographs" in err
    assert len(err.splitlines()) == 1
    assert err.startswith(f"lipoframe evaluate: {tmp_path / 'ref.csv'}: ")  # the file it means


@pytest.mark.parametrize("side", ["picks", "reference"])
def test_cli_a_csv_without_micrograph_column_named_like_one_of_the_other_tables_is_that_one(tmp_path, capsys, side):
    # One micrograph's CSV named after it (another picker's b.csv) against a table of several
    # micrographs: named by its file, it was scored as micrograph b; it became 'add a micrograph column'.
    (tmp_path / "b.csv").write_text("x_px,y_px,diameter_px\n300,300,50\n")
    table([("a", 100, 100, 50), ("b", 301, 299, 50)]).to_csv(tmp_path / "all.csv", index=False)
    one, other = tmp_path / "b.csv", tmp_path / "all.csv"
    picks, ref = (one, other) if side == "picks" else (other, one)
    assert main([f"picks={picks}", f"reference={ref}"]) == 0, capsys.readouterr().err
    out, _ = capsys.readouterr()
    line = next(ln for ln in out.splitlines() if ln.startswith("b "))
    assert line.split()[1:3] == ["1", "1"], out  # 1 reference particle, 1 pick, on b


def test_cli_an_image_given_as_a_table_says_so(tmp_path, capsys):
    import mrcfile

    with mrcfile.new(tmp_path / "mic.mrc") as m:
        m.set_data(np.zeros((16, 16), np.float32))
    table([("m", 100, 100, 50)]).to_csv(tmp_path / "r.csv", index=False)
    assert main([f"picks={tmp_path / 'r.csv'}", f"reference={tmp_path / 'mic.mrc'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "mic.mrc: not a text table (an image or other binary file?); give a CSV, STAR, .box, .cbox or .coords file" in err
    assert len(err.splitlines()) == 1


def test_cli_a_cryosparc_dataset_says_what_to_give_instead(tmp_path, capsys):
    # picks=run/cryosparc/particles.cs (lipoframe's own export) said 'not a text table (an image or other binary
    # file?)': the user had given picks, in a format evaluate does not read, with a STAR of them beside it
    from lipoframe.builtin.writers import CryosparcWriter
    from lipoframe.plan import ExtractionPlan, SizeBin
    from lipoframe.records import MicrographMeta, PickContext

    picks = table([("m", 100.0, 100.0, 50.0)]).assign(score=2.0, accepted=True, reject_reason="", size_bin=0)
    metas = {"m": MicrographMeta(name="m", path=str(tmp_path / "m.mrc"), shape=(512, 512), pixel_size=1.0)}
    plan = ExtractionPlan(policy="test", pixel_size=1.0, bins=(SizeBin(0, 40.0, 60.0, 1, 96, 60.0),))
    CryosparcWriter().write(picks, metas, plan, tmp_path, PickContext(dmin_px=40, dmax_px=60, pixel_size=1.0))
    table([("m", 100, 100, 50)]).to_csv(tmp_path / "r.csv", index=False)
    assert main([f"picks={tmp_path / 'cryosparc' / 'particles.cs'}", f"reference={tmp_path / 'r.csv'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "particles.cs: a cryoSPARC .cs dataset, which lipoframe evaluate does not read; give the particles.star" in err
    assert len(err.splitlines()) == 1
    # ... and the STAR it points to is read: the same pick
    assert main([f"picks={tmp_path / 'cryosparc' / 'particles.star'}", f"reference={tmp_path / 'r.csv'}"]) == 0


@pytest.mark.skipif(not APO.is_dir(), reason="shared apoferritin sample not available")
def test_apoferritin_reference_names_match_the_png_stems():
    ref = read_reference(APO / "reference_coords_derived.csv")
    stems = {p.stem for p in (APO / "micrographs_filtered").glob("*.png")}
    assert set(ref["micrograph"].map(micrograph_key)) <= stems
    # the reference against itself is a perfect score, whatever its kinds are called
    s = evaluate(ref, ref).summary
    assert s["f1"] == 1.0 and s["n_reference"] == len(ref)


@pytest.mark.skipif(not APO.is_dir(), reason="shared apoferritin sample not available")
def test_apoferritin_run_folder_is_matched_to_the_reference_by_name(tmp_path):
    """A real run folder and the real reference agree on micrograph names (PNG stems)."""
    from lipoframe.cli import main as cli_main

    mic = sorted((APO / "micrographs_filtered").glob("*.png"))[0]
    argv = ["run", f"input={mic}", f"output={tmp_path / 'run'}", "units=px", "dmin=40", "dmax=90",
            "runner.workers=1", "runner.progress=false", "runner.report=false"]
    assert cli_main(argv) == 0
    picks, names = read_picks(tmp_path / "run")
    ref = read_reference(APO / "reference_coords_derived.csv")
    res = evaluate(picks, ref, micrographs=names, scope="reference")
    row = res.per_micrograph.set_index("micrograph").loc[mic.stem]
    assert row["n_reference"] == (ref["micrograph"] == mic.name).sum() > 100
    assert row["n_picks"] == int(picks["accepted"].sum()) > 0
    # with scope=union nothing is added: the run's name is the reference's name
    assert evaluate(picks, ref, micrographs=names).summary["n_micrographs"] == ref["micrograph"].nunique()


def test_cli_overlays_of_the_worst_micrographs(tmp_path, capsys):
    from lipoframe.synthetic import write_mrc

    run = tmp_path / "run"
    (run / "micrographs").mkdir(parents=True)
    ref_rows = []
    for name, ok in (("good", True), ("bad", False)):
        image = np.zeros((64, 96), np.float32)
        write_mrc(tmp_path / f"{name}.mrc", image, 2.0)
        (run / "micrographs" / f"{name}.json").write_text(json.dumps({"meta": {"path": str(tmp_path / f"{name}.mrc")}}))
        x = 30.0 if ok else 80.0
        table([(name, x, 30, 20)]).assign(score=1.0, accepted=True).to_csv(run / "micrographs" / f"{name}.csv", index=False)
        ref_rows.append((name, 30, 30, 20))
    table(ref_rows).to_csv(tmp_path / "truth.csv", index=False)
    out = tmp_path / "eval"
    assert main([f"picks={run}", f"reference={tmp_path / 'truth.csv'}", f"output={out}", "overlays=1"]) == 0
    assert [p.name for p in (out / "overlays").iterdir()] == ["bad.png"]
    assert main([f"picks={run}", f"reference={tmp_path / 'truth.csv'}", "overlays=1"]) == 2
    assert "output" in capsys.readouterr().err
    # A micrograph moved away since the run: one message, no overlay, the scores are still written,
    # and the exit code says an overlay is missing, as lipoframe report's does (it was 0).
    (tmp_path / "bad.mrc").unlink()
    assert main([f"picks={run}", f"reference={tmp_path / 'truth.csv'}", f"output={tmp_path / 'eval2'}", "overlays=1"]) == 1
    err = capsys.readouterr().err
    assert "no overlay for bad" in err and "bad.mrc: file not found" in err and "Traceback" not in err
    assert not (tmp_path / "eval2" / "overlays" / "bad.png").exists() and any((tmp_path / "eval2").iterdir())


# ---------------------------------------------------------------------------
# TIFF micrographs: RELION STAR coordinates count rows from the bottom
# ---------------------------------------------------------------------------
def _tiff_run(tmp_path, *, ny=400, nx=300):
    """A run folder of one TIFF micrograph "m1" (flip_y recorded) with its RELION files."""
    from lipoframe.builtin.writers import StarWriter
    from lipoframe.plan import ExtractionPlan, SizeBin
    from lipoframe.records import MicrographMeta, PickContext

    run = tmp_path / "run"
    (run / "micrographs").mkdir(parents=True)
    picks = table([("m1", 100.0, 50.0, 120.0), ("m1", 200.0, 120.0, 150.0)]).assign(score=[2.0, 1.0], accepted=True, reject_reason="", size_bin=0)
    meta = MicrographMeta(name="m1", path=str(tmp_path / "m1.tif"), shape=(ny, nx), pixel_size=1.0, flip_y=True)
    picks.to_csv(run / "micrographs" / "m1.csv", index=False)
    (run / "micrographs" / "m1.json").write_text(json.dumps({"meta": meta.to_dict(), "n_picks": 2}))
    picks.to_csv(run / "picks.csv", index=False)
    plan = ExtractionPlan(policy="test", pixel_size=1.0, bins=(SizeBin(0, 100.0, 200.0, 2, 256, 256.0),))
    StarWriter().write(picks, {"m1": meta}, plan, run, PickContext(dmin_px=100, dmax_px=200, pixel_size=1.0))
    return run, picks


def test_star_files_of_a_tiff_run_are_read_in_lipoframes_frame(tmp_path):
    run, picks = _tiff_run(tmp_path)
    import starfile

    stored = starfile.read(run / "relion" / "coords" / "m1_autopick.star")
    assert stored["rlnCoordinateY"].tolist() == [349.0, 279.0]  # the writer flipped the rows (ny - 1 - y)
    for folder in (run / "relion" / "coords", run / "bins" / "bin1" / "coords"):
        got, _ = read_picks(folder)
        assert got["y_px"].tolist() == [50.0, 120.0] and got["x_px"].tolist() == [100.0, 200.0]
    assert read_reference(run / "relion" / "coords" / "m1_autopick.star", flip_y=False)["y_px"].tolist() == [349.0, 279.0]
    # the reported case: a run scored against its own RELION files
    out = tmp_path / "eval"
    assert main([f"picks={run}", f"reference={run / 'relion' / 'coords'}", f"output={out}"]) == 0
    assert json.loads((out / "evaluation.json").read_text())["f1"] == 1.0


def _relion_star(path, name, x, y):
    import starfile

    cols = {"rlnCoordinateX": np.asarray(x, float), "rlnCoordinateY": np.asarray(y, float)}
    if name is not None:
        cols = {"rlnMicrographName": [name] * len(cols["rlnCoordinateX"]), **cols}
    path.parent.mkdir(parents=True, exist_ok=True)
    starfile.write({"particles" if name is not None else "": pd.DataFrame(cols)}, path)
    return path


def test_star_reference_of_tiff_micrographs_without_a_run(tmp_path, capsys):
    import tifffile

    from lipoframe.evaluate import EvaluationInputError
    from lipoframe.synthetic import write_mrc

    ny = 300
    mics = tmp_path / "mics"
    mics.mkdir()
    tifffile.imwrite(mics / "a.tif", np.zeros((ny, 200), np.float32))
    write_mrc(mics / "b.mrc", np.zeros((ny, 200), np.float32), 1.0)
    y = np.array([40.0, 100.0])
    flipped = ny - 1 - y
    # RELION manual picks with the micrograph's name: found next to the STAR file
    star = _relion_star(tmp_path / "manual.star", "mics/a.tif", [50, 150], flipped)
    assert read_reference(star)["y_px"].tolist() == y.tolist()
    assert read_reference(star, flip_y=False)["y_px"].tolist() == flipped.tolist()
    # ... elsewhere, where the image cannot be found: one clear error, unless micrographs= says
    moved = _relion_star(tmp_path / "elsewhere" / "manual.star", "mics/a.tif", [50, 150], flipped)
    with pytest.raises(EvaluationInputError, match="micrographs="):
        read_reference(moved)
    assert read_reference(moved, micrographs=mics)["y_px"].tolist() == y.tolist()
    # per-micrograph coordinate files carry no name: the images decide (TIFF flipped, MRC not)
    coords = tmp_path / "ManualPick"
    _relion_star(coords / "a_manualpick.star", None, [50, 150], flipped)
    _relion_star(coords / "b_manualpick.star", None, [50, 150], y)
    ref = read_reference(coords, micrographs=mics)
    assert ref.groupby("micrograph")["y_px"].apply(list).to_dict() == {"a": y.tolist(), "b": y.tolist()}
    assert read_reference(coords, micrographs=mics, flip_y=True).query("micrograph == 'b'")["y_px"].tolist() == flipped.tolist()
    # the command line: lipoframe CSV picks against the RELION files
    table([("a", 50, 40, 60), ("a", 150, 100, 60), ("b", 50, 40, 60), ("b", 150, 100, 60)]).to_csv(tmp_path / "picks.csv", index=False)
    argv = [f"picks={tmp_path / 'picks.csv'}", f"reference={coords}", "reference_diameter=60", f"output={tmp_path / 'eval'}"]
    assert main(argv + [f"micrographs={mics}"]) == 0
    assert json.loads((tmp_path / "eval" / "evaluation.json").read_text())["f1"] == 1.0
    assert main([f"picks={tmp_path / 'picks.csv'}", f"reference={moved}", "reference_diameter=60"]) == 2
    assert "micrographs=" in capsys.readouterr().err
    assert main(argv + [f"micrographs={tmp_path / 'nowhere'}"]) == 2
    assert "nowhere: not found" in capsys.readouterr().err


# ---------------------------------------------------------------------------
# scope=reference with a run folder; overlays without a run folder
# ---------------------------------------------------------------------------
def _mrc_run(tmp_path, names=("a", "b", "c")):
    """A run folder whose micrographs each have one pick at (30, 30), images in tmp_path."""
    from lipoframe.records import MicrographMeta
    from lipoframe.synthetic import write_mrc

    run = tmp_path / "run"
    (run / "micrographs").mkdir(parents=True)
    for name in names:
        write_mrc(tmp_path / f"{name}.mrc", np.zeros((64, 96), np.float32), 2.0)
        meta = MicrographMeta(name=name, path=str(tmp_path / f"{name}.mrc"), shape=(64, 96), pixel_size=2.0)
        (run / "micrographs" / f"{name}.json").write_text(json.dumps({"meta": meta.to_dict(), "n_picks": 1}))
        table([(name, 30, 30, 20)]).assign(score=1.0, accepted=True).to_csv(run / "micrographs" / f"{name}.csv", index=False)
    pd.concat([table([(n, 30, 30, 20)]) for n in names]).assign(score=1.0, accepted=True).to_csv(run / "picks.csv", index=False)
    return run


def test_reference_micrographs_without_results_are_counted_in_the_summary():
    """Reference micrographs the picks have nothing for were misses without a word, whatever the scope."""
    ref = table([("a", 30, 30, 20), ("b", 30, 30, 20), ("c", 30, 30, 20), ("c", 80, 30, 20), ("d", 30, 30, 20),
                 ("e", 30, 30, 20), ("j", 30, 30, 20)]).assign(kind=["solid"] * 6 + ["ice"])
    # a: picked; b: processed, no pick; e: a rejected pick only; j: junk only (nothing to miss); c and d: nothing
    picks = table([("a", 30, 30, 20), ("e", 90, 50, 20)]).assign(accepted=[True, False])
    for scope in ("union", "reference"):
        s = evaluate(picks, ref, micrographs=["a", "b"], scope=scope).summary
        assert (s["n_unpicked_micrographs"], s["n_unpicked_reference"], s["unpicked_micrographs"]) == (2, 3, ["c", "d"]), scope
        assert s["fn"] == 5  # counted as misses as before: b, c (2), d, e
    s = evaluate(ref, ref).summary
    assert (s["n_unpicked_micrographs"], s["n_unpicked_reference"], s["unpicked_micrographs"]) == (0, 0, [])


@pytest.mark.parametrize("scope", ["union", "reference"])
def test_cli_warns_once_about_reference_micrographs_the_run_never_picked(tmp_path, capsys, scope):
    run = _mrc_run(tmp_path, names=("a", "b"))
    names = ("a", "b", "w", "x", "y", "z")
    table([(n, 30, 30, 20) for n in names] + [("z", 60, 30, 20)]).to_csv(tmp_path / "truth.csv", index=False)
    out = tmp_path / "eval"
    assert main([f"picks={run}", f"reference={tmp_path / 'truth.csv'}", f"scope={scope}", f"output={out}"]) == 0
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines() == [
        "lipoframe evaluate: warning: 4 reference micrographs with particles have no results in the picks (no pick, not even "
        "a rejected one): w, x, y and 1 more; their 5 particle(s) count as misses: are the picks of the right run (or file), "
        "and did the run finish?"]
    assert "  4 reference micrograph(s) without a pick: their 5 particle(s) count as misses" in captured.out.splitlines()
    doc = json.loads((out / "evaluation.json").read_text())
    assert (doc["n_unpicked_micrographs"], doc["n_unpicked_reference"], doc["fn"]) == (4, 5, 5)
    assert doc["unpicked_micrographs"] == ["w", "x", "y", "z"]



def test_an_empty_coordinate_file_is_a_micrograph_the_picker_processed(tmp_path, capsys, monkeypatch):
    """RELION's 'data_'-only file and an empty .box/.cbox are a micrograph picked without a pick: evaluate warned that the
    picks had no results for it ('are the picks of the right run, and did the run finish?'), as for one never picked."""
    import starfile

    from lipoframe.io.cbox import cbox_text

    ref = tmp_path / "truth.csv"
    table([("m1", 100, 51, 40), ("m2", 200, 200, 40), ("m3", 90, 90, 40)]).to_csv(ref, index=False)
    relion = tmp_path / "project" / "AutoPick" / "job006"
    (relion / "Movies").mkdir(parents=True)
    starfile.write({"": pd.DataFrame({"rlnCoordinateX": [101.0], "rlnCoordinateY": [50.0]})}, relion / "Movies" / "m1_autopick.star")
    (relion / "Movies" / "m2_autopick.star").write_text("# version 50001\n\ndata_\n\n")
    (relion / "Movies" / "m4_autopick.star").write_text("# version 50001\n\ndata_\n\n")  # not in the reference
    listing = pd.DataFrame({"rlnMicrographName": [f"m{i}.mrc" for i in (1, 2, 4)],
                            "rlnMicrographCoordinates": [f"AutoPick/job006/Movies/m{i}_autopick.star" for i in (1, 2, 4)]})
    starfile.write({"coordinate_files": listing}, relion / "autopick.star")
    (tmp_path / "CBOX").mkdir()
    (tmp_path / "CBOX" / "m1.cbox").write_text(cbox_text([101.0], [50.0], box=[40], diameter=[40.0], confidence=[0.9]))
    (tmp_path / "CBOX" / "m2.cbox").write_text("")
    (tmp_path / "CBOX" / "m4.cbox").write_text("")
    monkeypatch.chdir(tmp_path / "project")
    for picks in (relion / "Movies", relion, relion / "autopick.star", tmp_path / "CBOX"):
        got, processed = read_picks(picks)
        assert sorted(processed) == (["m2.mrc", "m4.mrc"] if "job006" in str(picks) and picks.name != "Movies" else ["m2", "m4"])
        assert not got.attrs, picks
        out = tmp_path / f"eval_{picks.name}"
        assert main([f"picks={picks}", f"reference={ref}", f"output={out}"]) == 0
        err = capsys.readouterr().err.strip().splitlines()
        # m3 alone has no results: m2 and m4 were picked, without a pick
        assert err == ["lipoframe evaluate: warning: 1 reference micrograph with particles has no results in the picks (no pick, "
                       "not even a rejected one): m3; their 1 particle(s) count as misses: are the picks of the right run (or file), "
                       "and did the run finish?"], (picks, err)
        doc = json.loads((out / "evaluation.json").read_text())
        assert (doc["unpicked_micrographs"], doc["tp"], doc["fn"], doc["n_micrographs"]) == (["m3"], 1, 2, 4), picks
    assert read_picks(tmp_path / "CBOX" / "m2.cbox")[1] == ["m2"]
    assert not read_reference(tmp_path / "CBOX").attrs

def test_a_coordinate_star_with_labels_and_no_row_is_a_micrograph_the_picker_processed(tmp_path, capsys, monkeypatch):
    """lipoframe's own coordinate file of a micrograph without picks (the labels, no row) was read as a table of no
    micrograph: evaluate of a run's relion/coords or relion/autopick.star warned that the picks had no results for it."""
    from lipoframe.io.relion import coordinate_list_star, coordinate_star

    coords = tmp_path / "relion" / "coords"
    coords.mkdir(parents=True)
    (coords / "m1_autopick.star").write_text(coordinate_star([101.0], [50.0], class_number=[1], fom=[2.0], diameter_px=[40.0]))
    (coords / "m2_autopick.star").write_text(coordinate_star([], [], class_number=[], fom=[], diameter_px=[]))
    (tmp_path / "relion" / "autopick.star").write_text(coordinate_list_star(
        ["m1.mrc", "m2.mrc"], [str(coords / "m1_autopick.star"), str(coords / "m2_autopick.star")]))
    ref = tmp_path / "truth.csv"
    table([("m1", 100, 51, 40), ("m2", 200, 200, 40)]).to_csv(ref, index=False)
    monkeypatch.chdir(tmp_path)
    for picks, expected in ((coords, ["m2"]), (tmp_path / "relion" / "autopick.star", ["m2.mrc"]),
                            (coords / "m2_autopick.star", ["m2"])):
        got, processed = read_picks(picks)
        assert processed == expected and not got.attrs, picks
    assert main([f"picks={coords}", f"reference={ref}", f"output={tmp_path / 'ev'}"]) == 0
    assert "no results in the picks" not in capsys.readouterr().err
    doc = json.loads((tmp_path / "ev" / "evaluation.json").read_text())
    assert (doc["unpicked_micrographs"], doc["tp"], doc["fn"], doc["n_micrographs"]) == ([], 1, 1, 2)


def test_scope_reference_leaves_out_the_runs_other_micrographs(tmp_path):
    ref = table([("a", 30, 30, 20)])
    assert evaluate(ref, ref, micrographs=["a", "b", "c"], scope="reference").summary["n_micrographs"] == 1
    run = _mrc_run(tmp_path)
    ref.to_csv(tmp_path / "subset.csv", index=False)
    for scope, n, fp in (("reference", 1, 0), ("union", 3, 2)):
        out = tmp_path / f"eval_{scope}"
        assert main([f"picks={run}", f"reference={tmp_path / 'subset.csv'}", f"scope={scope}", f"output={out}"]) == 0
        s = json.loads((out / "evaluation.json").read_text())
        assert (s["n_micrographs"], s["fp"], s["n_picks"]) == (n, fp, n)
        assert pd.read_csv(out / "per_micrograph.csv")["micrograph"].tolist() == ["a", "b", "c"][:n]


def test_a_run_without_any_pick_scores_auprc_zero_like_an_empty_picks_table(tmp_path):
    # The run's per-micrograph tables all empty: its columns (score among them) were dropped,
    # so the AUPRC came out n/a, while the same empty table given as a CSV scored 0.
    header = "micrograph,x_px,y_px,diameter_px,score,accepted\n"
    (tmp_path / "run" / "micrographs").mkdir(parents=True)
    for name in ("a", "b"):
        (tmp_path / "run" / "micrographs" / f"{name}.json").write_text(json.dumps({"meta": {"name": name}}))
        (tmp_path / "run" / "micrographs" / f"{name}.csv").write_text(header)
    (tmp_path / "picks.csv").write_text(header)
    ref = table([("a", 100, 100, 50), ("b", 100, 100, 50)])
    picks, names = read_picks(tmp_path / "run")
    assert names == ["a", "b"] and len(picks) == 0
    from_run = evaluate(picks, ref, micrographs=names).summary
    from_csv = evaluate(read_picks(tmp_path / "picks.csv")[0], ref).summary
    assert from_run["auprc"] == from_csv["auprc"] == 0.0
    assert (from_run["tp"], from_run["fn"], from_run["f1"]) == (0, 2, 0.0)


def test_a_run_folder_is_scored_with_the_binnings_outliers_rejected(tmp_path):
    """picks.csv (after the run or `lipoframe plan binning=kmeans`) drops size outliers the per-micrograph tables accept."""
    run = _mrc_run(tmp_path, names=("a", "b"))
    table([("a", 30, 30, 20)]).assign(score=1.0, accepted=True, size_bin=0).to_csv(run / "picks.csv", index=False)
    picks, names = read_picks(run)
    assert names == ["a", "b"]
    assert picks.set_index("micrograph")["accepted"].to_dict() == {"a": True, "b": False}
    assert picks.set_index("micrograph").loc["b", "reject_reason"] == "binning_outlier"
    ref = table([("a", 30, 30, 20), ("b", 30, 30, 20)])
    res = evaluate(picks, ref, micrographs=names)
    assert (res.summary["n_picks"], res.summary["tp"], res.summary["fn"]) == (1, 1, 1)


def test_overlays_find_the_images_or_say_once_why_not(tmp_path, capsys):
    run = _mrc_run(tmp_path, names=("a", "b"))
    table([("a", 30, 30, 20), ("b", 80, 30, 20)]).to_csv(tmp_path / "truth.csv", index=False)
    truth = f"reference={tmp_path / 'truth.csv'}"
    # picks.csv of a run: the run folder it lies in knows the images
    assert main([f"picks={run / 'picks.csv'}", truth, f"output={tmp_path / 'e1'}", "overlays=1"]) == 0
    assert [p.name for p in (tmp_path / "e1" / "overlays").iterdir()] == ["b.png"]
    assert "Errno" not in capsys.readouterr().err
    # a picks table outside any run: one line, exit 2, nothing written
    loose = tmp_path / "elsewhere" / "picks.csv"
    loose.parent.mkdir()
    loose.write_text((run / "picks.csv").read_text())
    assert main([f"picks={loose}", truth, f"output={tmp_path / 'e2'}", "overlays=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "overlays need the micrograph images" in err and "micrographs=" in err
    assert not (tmp_path / "e2").exists()
    # ... or with the images given
    assert main([f"picks={loose}", truth, f"output={tmp_path / 'e3'}", "overlays=1", f"micrographs={tmp_path}"]) == 0
    assert [p.name for p in (tmp_path / "e3" / "overlays").iterdir()] == ["b.png"]


UNPICKED_XY = ("lipoframe evaluate: warning: 2 reference micrographs with particles have no results in the picks (no pick, "
               "not even a rejected one): x, y; their 2 particle(s) count as misses: are the picks of the right run (or file), "
               "and did the run finish?")


def test_overlays_leave_out_reference_micrographs_never_picked_whose_image_is_unknown(tmp_path, capsys):
    """A reference over more micrographs than the run picked: those were the 'worst' (F1 0), had no image, exit 1."""
    run = _mrc_run(tmp_path, names=("a", "b"))
    table([("a", 30, 30, 20), ("b", 80, 30, 20), ("x", 30, 30, 20), ("y", 30, 30, 20)]).to_csv(tmp_path / "truth.csv", index=False)
    truth = f"reference={tmp_path / 'truth.csv'}"
    assert main([f"picks={run}", truth, f"output={tmp_path / 'e1'}", "overlays=2"]) == 0
    assert sorted(p.name for p in (tmp_path / "e1" / "overlays").iterdir()) == ["a.png", "b.png"]
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [UNPICKED_XY, "lipoframe evaluate: 2 reference micrographs without picks and without a known image (not in the run "
                   "folder or micrographs=): no overlay for them (x, y)"], err
    # they are still scored: all misses
    assert pd.read_csv(tmp_path / "e1" / "per_micrograph.csv").set_index("micrograph").loc[["x", "y"], "fn"].tolist() == [1, 1]
    # a micrograph that was picked still needs its image: its overlay missing is a failure
    (tmp_path / "b.mrc").unlink()
    assert main([f"picks={run}", truth, f"output={tmp_path / 'e2'}", "overlays=1"]) == 1
    err = capsys.readouterr().err
    assert "no overlay for b" in err and "(x, y)" in err
    # a sweep: the line is printed once when every job lacks the same images
    (tmp_path / "b.mrc").write_bytes((tmp_path / "a.mrc").read_bytes())
    sweep = _fake_sweep(tmp_path)
    code = main([f"picks={sweep}", truth, f"output={tmp_path / 'e3'}", "overlays=1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 0 and err == [UNPICKED_XY, "lipoframe evaluate: 2 reference micrographs without picks and without a known image "
                                 "(not in the run folder or micrographs=): no overlay for them (x, y)"], err
    for job in ("0", "1"):
        assert [p.name for p in (tmp_path / "e3" / f"job_{job}" / "overlays").iterdir()] == ["b.png"]


def test_overlays_of_a_tomogram_show_a_slab_with_each_sphere_cut_there(tmp_path, capsys, monkeypatch):
    """overlays=N on tomograms drew nothing and exited 1 ('a 3D stack ... where a 2D micrograph is expected')."""
    import lipoframe.evaluate as ev
    from conftest import write_mrc

    vol = np.zeros((40, 64, 96), dtype=np.float32)
    write_mrc(tmp_path / "mics" / "t.mrc", vol, pixel_size=(10.0, 10.0, 10.0))
    cols = ("micrograph", "x_px", "y_px", "z_px", "diameter_px")
    # median z 20: slab 18-22; the sphere at z 28 (r 10) is cut in a 16 px circle, the one at z 35 (r 4) misses it
    ref = table([("t", 15, 10, 20, 8), ("t", 15, 30, 20, 8), ("t", 15, 50, 20, 8), ("t", 60, 30, 28, 20), ("t", 85, 30, 35, 8)], cols)
    ref.to_csv(tmp_path / "truth.csv", index=False)
    ref.assign(score=1.0).to_csv(tmp_path / "picks.csv", index=False)
    drawn = []
    real = ev.plot_evaluation
    monkeypatch.setattr(ev, "plot_evaluation", lambda image, r, p, path, **kw: drawn.append((image, r, p, kw)) or real(image, r, p, path, **kw))
    assert main([f"picks={tmp_path / 'picks.csv'}", f"reference={tmp_path / 'truth.csv'}", f"output={tmp_path / 'e'}",
                 "overlays=1", f"micrographs={tmp_path / 'mics'}"]) == 0, capsys.readouterr().err
    assert (tmp_path / "e" / "overlays" / "t.png").is_file()
    [(image, r, p, kw)] = drawn
    assert image.shape == (64, 96)
    for t in (r, p):
        assert t["z_px"].tolist() == [20, 20, 20, 28] and t["diameter_px"].tolist() == pytest.approx([8, 8, 8, 16])
    assert "slab z=18-22" in kw["title"] and "4 of 5 reference" in kw["title"]


def test_every_evaluation_overlay_shows_the_whole_colour_key():
    from lipoframe.evaluate import STATUS_COLORS, overlay_title

    assert STATUS_COLORS["junk"] == "red"
    for title in (None, "m1: P 1.00  R 0.50  F1 0.67"):
        text = overlay_title(title)
        assert "red on junk" in text and "magenta duplicate" in text and "orange fp" in text
        assert title is None or text.startswith(title)


def _closed_stdout(monkeypatch):
    """Make every print to stdout meet a pipe closed by `| head` (BrokenPipeError), as a long table does."""
    import builtins

    real_print = builtins.print

    def closed_pipe(*args, **kwargs):
        if kwargs.get("file") in (None, sys.stdout):
            raise BrokenPipeError(32, "Broken pipe")
        return real_print(*args, **kwargs)

    monkeypatch.setattr(builtins, "print", closed_pipe)


def _fake_sweep(tmp_path) -> Path:
    """A sweep folder (multirun.yaml) of two jobs, each a run folder of micrographs a, b, c."""
    sweep = tmp_path / "sweep"
    for job in ("0", "1"):
        run = _mrc_run(tmp_path / f"mics_{job}")
        (sweep / job).parent.mkdir(parents=True, exist_ok=True)
        run.rename(sweep / job)
        (sweep / job / ".hydra").mkdir()
        (sweep / job / ".hydra" / "overrides.yaml").write_text(f"- dmin={30 + int(job)}\n")
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    return sweep


def test_a_closed_stdout_does_not_stop_the_output_files(tmp_path, monkeypatch, capsys):
    """`evaluate ... output=X | head` wrote nothing when the pipe closed before the files were written."""
    rows = [("m", 100 + 50 * i, 100, 40) for i in range(3)]
    table(rows).to_csv(tmp_path / "ref.csv", index=False)
    table(rows).assign(score=1.0).to_csv(tmp_path / "picks.csv", index=False)
    _closed_stdout(monkeypatch)
    # the per-micrograph table, printed first, met the closed pipe: BrokenPipeError, and no file written
    assert main([f"picks={tmp_path / 'picks.csv'}", f"reference={tmp_path / 'ref.csv'}", f"output={tmp_path / 'out'}"]) == 0
    assert json.loads((tmp_path / "out" / "evaluation.json").read_text())["f1"] == 1.0
    assert (tmp_path / "out" / "per_micrograph.csv").is_file() and (tmp_path / "out" / "picks_evaluated.csv").is_file()
    assert "cannot write" not in capsys.readouterr().err
    # a sweep, with overlays: every file is written, the exit code is the evaluation's own
    sweep = _fake_sweep(tmp_path)
    table([("a", 30, 30, 20), ("b", 80, 30, 20)]).to_csv(tmp_path / "truth.csv", index=False)
    out = tmp_path / "sweep_eval"
    assert main([f"picks={sweep}", f"reference={tmp_path / 'truth.csv'}", f"output={out}", "overlays=1"]) == 0
    assert (out / "sweep_evaluation.csv").is_file() and (out / "sweep_evaluation.json").is_file()
    for job in ("0", "1"):
        assert (out / f"job_{job}" / "evaluation.json").is_file()
        assert [p.name for p in (out / f"job_{job}" / "overlays").iterdir()] == ["b.png"]
    assert "cannot write" not in capsys.readouterr().err


def test_the_header_of_a_sweep_of_one_job_says_1_job(tmp_path, capsys):
    sweep = _fake_sweep(tmp_path)
    shutil.rmtree(sweep / "1")
    table([("a", 30, 30, 20)]).to_csv(tmp_path / "truth.csv", index=False)
    assert main([f"picks={sweep}", f"reference={tmp_path / 'truth.csv'}"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == f"sweep {sweep}: 1 job against {tmp_path / 'truth.csv'}"  # "1 jobs"


def test_evaluate_piped_into_a_reader_that_is_gone_writes_its_files(tmp_path):
    import os
    import subprocess

    rows = [("m", 100 + 50 * i, 100, 40) for i in range(3)]
    table(rows).to_csv(tmp_path / "ref.csv", index=False)
    table(rows).assign(score=1.0).to_csv(tmp_path / "picks.csv", index=False)
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-m", "lipoframe", "evaluate", f"picks={tmp_path / 'picks.csv'}",
                             f"reference={tmp_path / 'ref.csv'}", f"output={tmp_path / 'out'}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    proc.stdout.close()  # `| head` that has read enough before evaluate prints anything
    with proc.stderr:
        err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0, err
    assert "BrokenPipeError" not in err and "Exception ignored" not in err, err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["evaluation.json", "per_micrograph.csv", "picks_evaluated.csv"]


def test_a_path_with_space_hash_is_refused_unquoted_and_read_quoted(tmp_path, capsys):
    # OmegaConf reads each value as YAML, where " #" starts a comment: picks=/data/run #3/picks.csv was read
    # as "/data/run" and ended in "picks file not found" for a file that exists.
    folder = tmp_path / "run #3"
    folder.mkdir()
    table([("m", 100, 100, 50)]).to_csv(folder / "picks.csv", index=False)
    table([("m", 100, 100, 50)]).to_csv(tmp_path / "ref.csv", index=False)
    assert main([f"picks={folder / 'picks.csv'}", f"reference={tmp_path / 'ref.csv'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "picks: '#' at the start or after a blank starts a YAML comment" in err and f"picks=\"'{folder / 'picks.csv'}'\"" in err, err
    # a value starting with '#' was read as no value at all ("Incompatible value 'None' for field of type 'str'")
    assert main(["picks=#3.csv", f"reference={tmp_path / 'ref.csv'}"]) == 2
    assert "picks: '#' at the start or after a blank starts a YAML comment, so the value '#3.csv'" in capsys.readouterr().err
    out = tmp_path / "eval"
    assert main([f"picks='{folder / 'picks.csv'}'", f"reference={tmp_path / 'ref.csv'}", f"output={out}"]) == 0
    assert json.loads((out / "evaluation.json").read_text())["tp"] == 1


def test_the_same_micrograph_name_in_two_folders_is_warned(tmp_path, capsys):
    # Names are matched after dropping folders, so day1/mic_001.mrc and day2/mic_001.mrc were scored as one
    # micrograph without a word: picks of one paired with the particles of the other.
    rows = [("day1/mic_001.mrc", 100, 100, 50), ("day2/mic_001.mrc", 400, 400, 50), ("day1/mic_002.mrc", 50, 50, 50)]
    table(rows).to_csv(tmp_path / "ref.csv", index=False)
    table([("mic_001", 100, 100, 50), ("mic_002", 50, 50, 50)]).to_csv(tmp_path / "picks.csv", index=False)
    assert main([f"picks={tmp_path / 'picks.csv'}", f"reference={tmp_path / 'ref.csv'}"]) == 0
    err = capsys.readouterr().err
    assert "warning: reference: micrograph mic_001 is in 2 folders (day1, day2)" in err, err
    assert "warning: picks:" not in err  # the picks' names have no folder: nothing to warn about
    assert same_name_in_folders(["day1/mic_001.mrc", "day1/mic_001", "mic_001.tif", "./day1/mic_001.mrc", "day1//mic_001"]) == []


def test_help_names_every_file_kind_evaluate_reads_for_picks_and_reference(capsys):
    # .coords was added to the reference's line only, while picks read it too
    assert main(["--help"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for key in ("picks=", "reference="):
        text = lines[next(i for i, line in enumerate(lines) if line.strip().startswith(key)) + 1]
        assert all(s in text for s in (".box", ".cbox", ".coords")), text


def test_a_sweep_folder_is_refused_by_the_reader_naming_its_jobs(tmp_path):
    """`lipoframe run -m`'s folder holds one run per job, not picks: read_picks names the job folders to give."""
    sweep = tmp_path / "sweep"
    for job in ("0", "1", "10"):
        (sweep / job / "micrographs").mkdir(parents=True)
        (sweep / job / "micrographs" / "mic.json").write_text("{}")
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    with pytest.raises(ValueError, match="a sweep folder \\(lipoframe run -m\\) of 3 runs; read one job's folder at a time: "):
        read_picks(sweep)


@pytest.fixture(scope="module")
def log_sweep(tmp_path_factory) -> tuple[Path, Path]:
    """``(sweep, mics)``: ``lipoframe run -m detector=log detector.threshold=3,1000,4`` over two tiny micrographs.

    Job 0 picks, job 1 (threshold 1000) accepts no pick, job 2 picks. Shared by the sweep tests of this module, which
    read it where it is or, to change it, copy it with :func:`copy_of`; the micrographs are those the sweep recorded.
    """
    from conftest import tiny_image, write_mrc

    from lipoframe.cli import main as lipoframe_main

    root = tmp_path_factory.mktemp("log_sweep")
    for i in range(2):
        write_mrc(root / "mics" / f"mic_{i}.mrc", tiny_image(seed=i)[0])
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LIPOFRAME_LOAD_PLUGINS", "")
        assert lipoframe_main(["run", "-m", "detector=log", "detector.threshold=3,1000,4", f"input={root / 'mics'}",
                               f"output={root / 'sweep'}", *TINY_ARGS, *NO_POLARITY_CHECK]) == 0
    return root / "sweep", root / "mics"


def copy_of(folder: Path, to: Path) -> Path:
    """A copy of ``folder`` at ``to``, file times kept (a sweep tells its stale jobs by them); returns ``to``."""
    shutil.copytree(folder, to)
    return to


def test_evaluate_on_a_sweep_folder_compares_every_job(log_sweep, tmp_path, run_cli):
    """A sweep is scored job by job against one reference: one table, with failed and empty jobs listed, not dropped."""
    # evaluate refused the sweep folder and named its job folders, to be evaluated one at a time
    sweep = copy_of(log_sweep[0], tmp_path / "sweep")
    for p in (sweep / "2").iterdir():  # a job that stopped before picking: Hydra made its folder and .hydra/
        if p.name != ".hydra":
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    truth = pd.concat([tiny_truth(i).assign(micrograph=f"mic_{i}") for i in range(2)])
    truth.to_csv(tmp_path / "truth.csv", index=False)
    before = {p: p.stat().st_mtime_ns for p in sweep.rglob("*")}

    code, out, err = run_cli("evaluate", f"picks={sweep}", f"reference={tmp_path / 'truth.csv'}", f"output={sweep}")
    assert code == 1, err  # a job could not be scored
    lines = out.splitlines()
    assert lines[1].split() == ["job", "overrides", "picks", "P", "R", "F1", "AUPRC", "dup", "|d", "err|", "status"]
    assert lines[2].split()[:2] == ["0", "detector.threshold=3"] and lines[2].endswith("  ok")
    assert lines[3].split()[:3] == ["1", "detector.threshold=1000", "0"] and lines[3].endswith("no picks: no accepted pick")
    assert lines[4].split()[:2] == ["2", "detector.threshold=4"] and lines[4].endswith("failed: no results: the job stopped before picking")
    assert "best F1" in out and "job 0 (detector.threshold=3)" in out

    table = pd.read_csv(sweep / "sweep_evaluation.csv", dtype={"job": str}, keep_default_na=False, na_values=[""])
    assert list(table.columns) == ["job", "overrides", "status", "n_picks", "precision", "recall", "f1", "auprc",
                                   "duplicates", "median_diameter_error", "note"]
    assert list(table["job"]) == ["0", "1", "2"] and list(table["status"]) == ["ok", "no picks", "failed"]
    picks0, processed0 = read_picks(sweep / "0")
    single = evaluate(picks0, truth, micrographs=processed0).summary
    assert table.loc[0, "f1"] == pytest.approx(single["f1"], abs=1e-4) and table.loc[0, "n_picks"] == single["n_picks"]
    assert table.loc[1, "n_picks"] == 0 and table.loc[1, "recall"] == 0
    assert pd.isna(table.loc[2, "f1"]) and pd.isna(table.loc[2, "n_picks"])
    doc = json.loads((sweep / "sweep_evaluation.json").read_text())
    assert doc["options"]["tolerance"] == 0.3 and doc["options"]["reference"] == str(tmp_path / "truth.csv")
    assert doc["jobs"][0]["overrides"] == ["detector.threshold=3"] and f"output={log_sweep[0]}" in doc["jobs"][0]["all_overrides"]
    assert doc["jobs"][0]["summary"]["tp"] == single["tp"] and doc["jobs"][2]["summary"] is None
    # each scored job's own evaluation beside the table, never in the job's folder (here the output folder is the sweep's)
    assert json.loads((sweep / "job_0" / "evaluation.json").read_text())["f1"] == pytest.approx(single["f1"])
    assert (sweep / "job_1" / "per_micrograph.csv").is_file() and not (sweep / "job_2").exists()
    assert not any((sweep / j / "evaluation.json").exists() for j in ("0", "1", "2"))
    assert all(p.stat().st_mtime_ns == t for p, t in before.items())
    assert not list(sweep.glob("**/.*.tmp*"))


def test_a_sweep_over_inputs_shows_the_input_of_each_job():
    """input= was always left out of the overrides column, so a sweep over inputs showed every job's shared words."""
    from lipoframe.evaluate import SweepJob, format_sweep, swept_overrides

    words = [["input=/data/long/folder/name/of/the/first/set", "dmin=30", "output=sw"],
             ["input=/data/long/folder/name/of/the/second/set", "dmin=30", "output=sw"]]
    assert swept_overrides(words, ["input"]) == [[words[0][0]], [words[1][0]]]
    assert swept_overrides(words) == [[words[0][0]], [words[1][0]]]  # no multirun.yaml to read: the words that differ
    assert swept_overrides([["input=a", "dmin=30", "output=sw"]]) == [["dmin=30"]]  # one job: its words but input/output
    long = [["input=/" + "x" * 80 + "/first"], ["input=/" + "x" * 80 + "/second"]]
    rows = format_sweep([SweepJob(str(i), Path("."), w, w, "failed", "", None) for i, w in enumerate(long)]).splitlines()
    shown = [r.split()[1] for r in rows[1:3]]
    assert shown[0].endswith("/first") and shown[1].endswith("/second") and "..." in shown[0], rows  # cut in the middle


def _truth_csv(tmp_path) -> Path:
    truth = pd.concat([tiny_truth(i).assign(micrograph=f"mic_{i}") for i in range(2)])
    truth.to_csv(tmp_path / "truth.csv", index=False)
    return tmp_path / "truth.csv"


def test_a_sweep_scores_partial_jobs_and_warns_about_names_for_every_job(tiny_mrcs, tmp_path, run_cli):
    """Jobs with failed micrographs or interrupted are 'partial'; a name warning of any job is printed, naming it."""
    import shutil

    from conftest import write_mrc

    mics = tiny_mrcs[0].parent
    write_mrc(mics / "flat.mrc", np.ones((256, 256), np.float32))  # fails in every job: image is constant
    renamed = tmp_path / "renamed"
    renamed.mkdir()
    for p in tiny_mrcs:
        shutil.copyfile(p, renamed / f"{p.stem}_dn.mrc")
    sweep = tmp_path / "sweep"
    code, _, err = run_cli("run", "-m", f"input={mics},{renamed}", f"output={sweep}", *TINY_ARGS, *NO_POLARITY_CHECK)
    assert code == 1, err  # job 0 has a failed micrograph
    summary = json.loads((sweep / "1" / "run_summary.json").read_text())
    summary["interrupted"], summary["micrographs"]["not_done"] = True, 1
    (sweep / "1" / "run_summary.json").write_text(json.dumps(summary))

    code, out, err = run_cli("evaluate", f"picks={sweep}", f"reference={_truth_csv(tmp_path)}")
    assert code == 0, err
    lines = out.splitlines()
    # the overrides column tells the jobs apart: the swept input= (it showed the words every job shares), cut in the middle
    assert lines[2].split()[1].startswith("input=/") and lines[2].split()[1].endswith("/mics"), out
    assert lines[3].split()[1].startswith("input=/") and lines[3].split()[1].endswith("/renamed"), out
    assert lines[2].endswith(f"partial: 1 of 3 micrographs failed (see {sweep / '0' / 'lipoframe.log'})"), out
    assert lines[3].endswith("partial: interrupted: 1 micrograph not picked"), out  # it said "1 micrographs"
    # only job 1 picked micrographs named mic_0_dn, mic_1_dn: its warning was dropped (only job 0's names were checked)
    warned = [ln for ln in err.splitlines() if "similar name" in ln]
    assert len(warned) == 1 and warned[0].startswith(f"lipoframe evaluate: warning: job 1 (input={renamed}): 2 pick micrograph(s)"), err
    # a job's numbers are those of evaluating its folder alone
    for job in ("0", "1"):
        code, single, _ = run_cli("evaluate", f"picks={sweep / job}", f"reference={tmp_path / 'truth.csv'}")
        assert code == 0
        f1 = next(ln for ln in single.splitlines() if ln.startswith("precision")).split()[5]
        assert lines[2 + int(job)].split()[6] == f1, (out, single)
    # a job killed outright (no run_summary.json) is scored as it is: it said "scored on the micrographs it
    # picked", but the reference particles of those it did not pick count as misses, as for an interrupted job
    (sweep / "1" / "run_summary.json").unlink()
    code, out, err = run_cli("evaluate", f"picks={sweep}", f"reference={_truth_csv(tmp_path)}", "output=" + str(tmp_path / "ev"))
    assert code == 0, err
    job1 = json.loads((tmp_path / "ev" / "sweep_evaluation.json").read_text())["jobs"][1]
    assert job1["status"] == "partial"
    assert job1["note"] == f"no run_summary.json: the job did not finish; the micrographs it did not pick count as misses (see {sweep / '1' / 'lipoframe.log'})"


def test_a_sweep_draws_overlays_for_each_job(log_sweep, tmp_path, run_cli):
    sweep, mics = log_sweep  # read where it is: the overlays find the micrographs the sweep recorded
    truth = _truth_csv(tmp_path)
    code, out, err = run_cli("evaluate", f"picks={sweep}", f"reference={truth}", f"output={tmp_path / 'eval'}", "overlays=1")
    assert code == 0, err
    assert out.splitlines()[0] == f"sweep {sweep}: 3 jobs against {truth}"
    for job in ("0", "1", "2"):
        drawn = list((tmp_path / "eval" / f"job_{job}" / "overlays").glob("*.png"))
        assert len(drawn) == 1 and f"wrote {drawn[0]}" in out
    # an image that cannot be found: each job's line says which job it is
    moved = [p.rename(p.with_suffix(".moved")) for p in sorted(mics.glob("*.mrc"))]
    try:
        code, out, err = run_cli("evaluate", f"picks={sweep}", f"reference={truth}", f"output={tmp_path / 'eval2'}", "overlays=1")
    finally:  # the other tests read the sweep's micrographs
        for p in moved:
            p.rename(p.with_suffix(".mrc"))
    assert len(moved) == 2
    assert code == 1, err  # the evaluation is written; an overlay is missing
    missing = [ln for ln in err.splitlines() if "no overlay" in ln]
    assert [ln.split(":")[1].strip() for ln in missing] == ["job 0 (detector.threshold=3)", "job 1 (detector.threshold=1000)",
                                                             "job 2 (detector.threshold=4)"], err
    assert (tmp_path / "eval2" / "sweep_evaluation.csv").is_file()


def test_a_folder_holding_a_sweep_and_a_run_is_read_as_the_last_one_run_there(log_sweep, tmp_path, run_cli):
    """`run output=F` after `run -m output=F` (or the other way round) leaves both in F; evaluate always
    scored the sweep's jobs and merge always took the run, so after a single run into a sweep folder
    evaluate showed the old sweep's table, and after a sweep into a run folder merge merged the old run."""
    import os

    mics, truth = log_sweep[1], _truth_csv(tmp_path)
    both = copy_of(log_sweep[0], tmp_path / "both")  # a sweep of 3 jobs
    code, _, err = run_cli("run", f"input={mics}", f"output={both}", "detector.threshold=40", *TINY_ARGS, *NO_POLARITY_CHECK)
    assert code == 0, err
    sweep_time = (both / "multirun.yaml").stat().st_mtime_ns
    os.utime(both / "inputs.json", ns=(sweep_time + 10**9, sweep_time + 10**9))  # coarse file times: one second later
    code, out, err = run_cli("evaluate", f"picks={both}", f"reference={truth}")
    assert code == 0 and not out.startswith("sweep"), (out, err)
    assert "evaluating the run, started after the sweep" in err, err
    assert "picks 0" in out  # the run's: threshold 40 picks nothing
    code, out, err = run_cli("merge", str(both), f"output={tmp_path / 'merged'}", "runner.report=false")
    assert code == 0, err
    assert json.loads((tmp_path / "merged" / "run_summary.json").read_text())["picks"]["accepted"] == 0
    # a sweep after the run: the sweep is evaluated and merged (here refused: its jobs have other settings)
    os.utime(both / "inputs.json", ns=(sweep_time - 10**9, sweep_time - 10**9))
    code, out, err = run_cli("evaluate", f"picks={both}", f"reference={truth}")
    assert code == 0 and out.startswith(f"sweep {both}: 3 jobs"), (out, err)
    code, out, err = run_cli("merge", str(both), f"output={tmp_path / 'merged2'}", "runner.report=false")
    assert code != 0 and "different per-micrograph settings" in err, err


def test_a_run_that_accepted_no_pick_is_evaluated_and_reported(tiny_mrcs, tmp_path, run_cli):
    """A run whose candidates were all rejected (detector.threshold=40: picks.csv without rows) made
    `lipoframe evaluate picks=<run>` and `lipoframe report <run>` stop with a traceback
    ('IndexError: index 0 is out of bounds for axis 0 with size 0' in report._with_bins)."""
    out_dir, truth = tmp_path / "none", _truth_csv(tmp_path)
    code, _, err = run_cli("run", f"input={tiny_mrcs[0].parent}", f"output={out_dir}", "detector.threshold=40", *TINY_ARGS, *NO_POLARITY_CHECK)
    assert code == 0, err
    assert len(pd.read_csv(out_dir / "picks.csv")) == 0
    work = pd.concat([pd.read_csv(p) for p in (out_dir / "micrographs").glob("*.csv")])
    assert len(work) and not work["accepted"].any()  # rejected candidates, none accepted
    code, out, err = run_cli("evaluate", f"picks={out_dir}", f"reference={truth}")
    assert code == 0 and "picks 0" in out, (out, err)
    code, out, err = run_cli("evaluate", f"picks={out_dir}", f"reference={truth}", "include_rejected=true")
    assert code == 0 and f"picks {len(work)}" in out, (out, err)
    code, out, err = run_cli("report", str(out_dir))
    assert code == 0, err


def test_a_sweep_of_the_shards_of_one_run_is_not_scored_shard_by_shard(tiny_shard_sweep, tmp_path, run_cli):
    """The shards of `run -m shard.count=2 shard.index=0,1` were scored as jobs, each against the whole
    reference: the other shard's particles were all misses (F1 0.35 and 0.83 for a run of 0.93) and
    'best F1: job 1 (shard.index=1)' named a shard. Evaluate says to merge them; a sweep over settings
    and shards (whose shards merge runs refuse to mix) is still scored job by job."""
    sweep, mics = tiny_shard_sweep, tiny_shard_sweep.parent / "mics"  # read where it is: merge writes elsewhere
    truth = _truth_csv(tmp_path)
    code, out, err = run_cli("evaluate", f"picks={sweep}", f"reference={truth}")
    assert code == 2 and out == "", (out, err)
    assert "its jobs are the shards of one run (shard.count=2)" in err and f"lipoframe merge {shlex.quote(str(sweep))} output=" in err, err
    merged = tmp_path / "merged"
    code, _, err = run_cli("merge", str(sweep), f"output={merged}", "runner.report=false")
    assert code == 0, err
    code, out, err = run_cli("evaluate", f"picks={merged}", f"reference={truth}")
    assert code == 0, err
    mixed = tmp_path / "mixed"
    code, _, err = run_cli("run", "-m", f"input={mics}", f"output={mixed}", "shard.count=2", "shard.index=0,1",
                           "detector.threshold=5,6", *TINY_ARGS, *NO_POLARITY_CHECK)
    assert code == 0, err
    code, out, err = run_cli("evaluate", f"picks={mixed}", f"reference={truth}")
    assert code == 0 and out.splitlines()[0] == f"sweep {mixed}: 4 jobs against {truth}", (out, err)


def test_a_sweep_rerun_with_fewer_jobs_scores_only_the_last_sweeps_jobs(log_sweep, tmp_path, run_cli):
    """Hydra keeps the job folders of an earlier sweep into the same folder: they were scored as jobs of this one."""
    import os

    sweep, mics = copy_of(log_sweep[0], tmp_path / "sweep"), log_sweep[1]  # the earlier sweep: detector.threshold=3,1000,4
    code, _, err = run_cli("run", "-m", "detector=log", "detector.threshold=3,6", f"input={mics}", f"output={sweep}", *TINY_ARGS,
                           *NO_POLARITY_CHECK)
    assert code == 0, err
    truth = _truth_csv(tmp_path)
    code, out, err = run_cli("evaluate", f"picks={sweep}", f"reference={truth}", f"output={tmp_path / 'eval'}")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == f"sweep {sweep}: 2 jobs against {truth}"
    assert [ln.split()[:2] for ln in lines[2:4]] == [["0", "detector.threshold=3"], ["1", "detector.threshold=6"]]
    assert lines[4] == "" and lines[5].startswith("best F1") and "threshold=4" not in out
    assert err.strip().splitlines() == [f"lipoframe evaluate: {sweep}: 1 stale job folder left out (an earlier sweep's; "
                                        "multirun.yaml records the last): 2 (numbered past the last sweep's 2 jobs)"], err
    doc = json.loads((tmp_path / "eval" / "sweep_evaluation.json").read_text())
    assert [j["job"] for j in doc["jobs"]] == ["0", "1"] and [j["job"] for j in doc["stale_jobs"]] == ["2"]
    assert not (tmp_path / "eval" / "job_2").exists()
    # a re-run stopped before its job 1: the folder 1 an earlier sweep left holds other overrides; the job
    # itself is listed as not run (exit code 1: not every job is scored)
    (sweep / "1" / ".hydra" / "overrides.yaml").write_text((sweep / "2" / ".hydra" / "overrides.yaml").read_text())
    code, out, err = run_cli("evaluate", f"picks={sweep}", f"reference={truth}")
    assert code == 1 and out.splitlines()[0] == f"sweep {sweep}: 2 jobs against {truth}", (out, err)
    assert out.splitlines()[3].split()[:3] == ["1", "detector.threshold=6", "-"] and "failed: not run:" in out.splitlines()[3]
    assert "1 (its overrides are not those of the last sweep's job 1); 2 (numbered past" in err, err
    # another sweeper (not expanded here): the file times tell; a job's .hydra older than multirun.yaml is stale
    started = (sweep / "multirun.yaml").stat()
    text = (sweep / "multirun.yaml").read_text().replace("hydra._internal.core_plugins.basic_sweeper.BasicSweeper", "other.Sweeper")
    (sweep / "multirun.yaml").write_text(text)
    os.utime(sweep / "multirun.yaml", ns=(started.st_atime_ns, started.st_mtime_ns))  # as the sweep wrote it
    old = started.st_mtime - 3600
    os.utime(sweep / "2" / ".hydra" / "overrides.yaml", (old, old))
    code, out, err = run_cli("evaluate", f"picks={sweep}", f"reference={truth}")
    assert code == 0 and out.splitlines()[0] == f"sweep {sweep}: 2 jobs against {truth}", (out, err)
    assert "2 (older than the last sweep's multirun.yaml)" in err, err


def test_the_jobs_an_interrupted_sweep_never_started_are_listed_as_not_run(log_sweep, tmp_path, run_cli):
    """A sweep stopped (Ctrl-C) during its first job leaves no folder for the others: the table listed one job,
    'sweep ...: 1 job', exit code 0, as if the sweep had been of that job alone."""
    sweep = copy_of(log_sweep[0], tmp_path / "sweep")  # detector.threshold=3,1000,4
    for job in ("1", "2"):  # as Hydra leaves it when the sweep is stopped in job 0
        shutil.rmtree(sweep / job)
    truth = _truth_csv(tmp_path)
    code, out, err = run_cli("evaluate", f"picks={sweep}", f"reference={truth}", f"output={tmp_path / 'eval'}")
    assert code == 1, (out, err)
    lines = out.splitlines()
    assert lines[0] == f"sweep {sweep}: 3 jobs against {truth}"
    assert lines[2].split()[:2] == ["0", "detector.threshold=3"] and lines[2].endswith("  ok")
    said = "failed: not run: the sweep stopped before this job started (the same lipoframe run -m command again runs it)"
    for line, (job, value) in zip(lines[3:5], (("1", "1000"), ("2", "4"))):
        assert line.split()[:3] == [job, f"detector.threshold={value}", "-"] and line.endswith(said)
    assert "job 0 (detector.threshold=3)" in lines[6]
    doc = json.loads((tmp_path / "eval" / "sweep_evaluation.json").read_text())
    assert [(j["job"], j["status"], j["folder"], j["summary"]) for j in doc["jobs"][1:]] == [("1", "failed", None, None),
                                                                                          ("2", "failed", None, None)]
    assert f"output={log_sweep[0]}" in doc["jobs"][2]["all_overrides"] and doc["stale_jobs"] == []
    assert not (tmp_path / "eval" / "job_1").exists()


def test_a_sweep_into_folders_of_the_users_interpolations_finds_its_jobs_by_number(tiny_mrcs, tmp_path, run_cli, monkeypatch):
    """hydra.sweep.dir and .subdir with interpolations: jobs named ``<num>_<value>`` were ordered by their folder names'
    lengths (job 1, 1_10.0, after job 2, 2_4.0) and labelled by them; a subdir of ``${hydra.job.override_dirname}`` with
    an input path in it nests each job's folder under input=/... : evaluate found no job there (no picks files)."""
    monkeypatch.chdir(tmp_path)
    # one micrograph per job: the jobs' folders, not their picks, are what is checked
    mics, truth = tiny_mrcs[0], tmp_path / "truth_mic_0.csv"
    tiny_truth(0).assign(micrograph="mic_0").to_csv(truth, index=False)
    code, _, err = run_cli("run", "-m", "detector=log", "detector.threshold=3,10,4", f"input={mics}", *TINY_ARGS,
                           *NO_POLARITY_CHECK, "hydra.sweep.dir=runs/${now:%Y-%m-%d}/${hydra.runtime.choices.detector}",
                           "hydra.sweep.subdir=${hydra.job.num}_${detector.threshold}")
    assert code == 0, err
    [sweep] = (tmp_path / "runs").glob("*/log")
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0_3.0", "1_10.0", "2_4.0"]
    code, out, err = run_cli("evaluate", f"picks={sweep}", f"reference={truth}", f"output={tmp_path / 'eval'}")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == f"sweep {sweep}: 3 jobs against {truth}"
    assert [ln.split()[:2] for ln in lines[2:5]] == [["0", "detector.threshold=3"], ["1", "detector.threshold=10"],
                                                     ["2", "detector.threshold=4"]], out
    doc = json.loads((tmp_path / "eval" / "sweep_evaluation.json").read_text())
    assert [(j["job"], Path(j["folder"]).name) for j in doc["jobs"]] == [("0", "0_3.0"), ("1", "1_10.0"), ("2", "2_4.0")]
    assert sorted(p.name for p in (tmp_path / "eval").glob("job_*")) == ["job_0", "job_1", "job_2"]

    nested = tmp_path / "nested"
    code, _, err = run_cli("run", "-m", "detector=log", "detector.threshold=3,4", f"input={mics}", *TINY_ARGS,
                           *NO_POLARITY_CHECK, f"hydra.sweep.dir={nested}", "hydra.sweep.subdir=${hydra.job.override_dirname}")
    assert code == 0, err
    assert not any((p / ".hydra").is_dir() for p in nested.iterdir())  # each job is in input=/.../mic_0.mrc,...
    code, out, err = run_cli("evaluate", f"picks={nested}", f"reference={truth}")
    assert code == 0, err
    assert [ln.split()[:2] for ln in out.splitlines()[2:4]] == [["0", "detector.threshold=3"], ["1", "detector.threshold=4"]], out
    assert out.splitlines()[0] == f"sweep {nested}: 2 jobs against {truth}" and not err, err


def test_a_glob_sweep_over_presets_of_a_config_dir_is_not_taken_for_stale(tmp_path):
    # `lipoframe run -m -cd mine +experiment=glob(*)`: glob() also lists the -cd folder's presets. Expanded
    # with lipoframe's own config only (tomo, vesicles), the sweep had 2 jobs where it ran 3, and all 3 of its
    # job folders were called stale: evaluate and merge refused the sweep ('none of its 3 job folders is of
    # the last sweep'). A glob() is not expanded; the file times decide, as for other sweeps it cannot expand.
    import yaml

    from lipoframe.sweepdir import BASIC_SWEEPER, stale_jobs

    sweep = tmp_path / "sw"
    sweep.mkdir()
    (sweep / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {
        "sweeper": {"_target_": BASIC_SWEEPER, "params": None},
        "overrides": {"task": ["dmin=30", "+experiment=glob(*)"]}}}))
    jobs = []
    for num, preset in enumerate(["mine", "tomo", "vesicles"]):
        job = sweep / str(num)
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"job": {"num": num}}}))
        (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["dmin=30", f"+experiment={preset}"]))
        jobs.append(job)
    assert stale_jobs(sweep, jobs) == {}


def test_stale_nested_job_folders_are_named_by_their_path_in_the_sweep(tmp_path):
    # hydra.sweep.subdir=${hydra.job.override_dirname} nests a job of input=/data/g1/mics in input=/data/g1/mics/:
    # the stale line (evaluate, merge) and sweep_evaluation.json's stale_jobs named both jobs below 'mics'
    import json

    from lipoframe.evaluate import write_sweep_results
    from lipoframe.sweepdir import stale_line

    sweep = tmp_path / "sw"
    why = "numbered past the last sweep's 1 job"
    stale = {sweep / "input=" / "data" / g / "mics": why for g in ("g1", "g2")}
    write_sweep_results([], tmp_path / "eval", sweep=sweep, options={}, stale=stale)
    doc = json.loads((tmp_path / "eval" / "sweep_evaluation.json").read_text())
    assert [j["job"] for j in doc["stale_jobs"]] == ["input=/data/g1/mics", "input=/data/g2/mics"]
    assert stale_line(sweep, stale) == ("2 stale job folders left out (an earlier sweep's; multirun.yaml records the last): "
                                        f"input=/data/g1/mics, input=/data/g2/mics ({why})")


def test_one_reader_of_hydras_records_for_evaluate_and_merge(tmp_path):
    # evaluate (sweep keys, job words, the shard check), the stale-job check and merge read multirun.yaml
    # and .hydra/overrides.yaml with sweepdir.sweep_record and sweepdir.job_overrides
    import yaml

    from lipoframe.evaluate import sweep_keys
    from lipoframe.merge import MergeError, NotARunFolder, load_shard
    from lipoframe.sweepdir import BASIC_SWEEPER, job_overrides, sweep_record

    (tmp_path / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {
        "sweeper": {"_target_": BASIC_SWEEPER, "params": {"nms.beta": "0.6,0.8"}}, "overrides": {"task": ["dmin=30,31"]}}}))
    assert sweep_record(tmp_path) == (BASIC_SWEEPER, ["dmin=30,31"], {"nms.beta": "0.6,0.8"})
    assert sweep_keys(tmp_path) == ["nms.beta", "dmin"]
    assert sweep_record(tmp_path / "none") is None and sweep_keys(tmp_path / "none") == []
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / "inputs.json").write_text(json.dumps({"micrographs": [], "shard": {"index": 0, "count": 1}, "fingerprint": "f"}))
    with pytest.raises(NotARunFolder, match="no .hydra/overrides.yaml"):
        load_shard(run)
    assert job_overrides(run) is None
    for text in ("- [\n", "", "a: 1\n"):  # unparseable, empty, not a list
        (run / ".hydra" / "overrides.yaml").write_text(text)
        assert job_overrides(run) is None
        with pytest.raises(MergeError, match="overrides.yaml: unreadable"):
            load_shard(run)
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["dmin=30", "shard.index=0"]))
    assert job_overrides(run) == load_shard(run).overrides == ["dmin=30", "shard.index=0"]


def test_a_sweep_folder_holding_a_large_tree_is_not_walked_to_its_end(tmp_path, monkeypatch):
    # `lipoframe run -m ... output=.` in a project folder: its data tree sits beside the job folders. The jobs
    # are found (also nested ones) without listing every folder of the tree; evaluate, merge and the sweep's exit
    # code walked all of it (a network mount with thousands of EPU folders: minutes).
    import os

    from lipoframe import sweepdir

    sweep = tmp_path / "sweep"
    (sweep / "multirun.yaml").parent.mkdir()
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    for job in (sweep / "0", sweep / "1", sweep / "input=" / "data" / "mics,x=2"):
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text("- x=1\n")
    for a in range(60):  # EPU's: each grid square's folder holds its files and its foil holes'
        for b in range(60):
            (sweep / "data" / f"GridSquare_{a}" / f"FoilHole_{b}").mkdir(parents=True)
            (sweep / "data" / f"GridSquare_{a}" / f"FoilHole_{b}" / "FoilHole.mrc").touch()
        (sweep / "data" / f"GridSquare_{a}" / "GridSquare.xml").touch()
    listed = []
    for name in ("listdir", "scandir"):
        real = getattr(os, name)
        monkeypatch.setattr(os, name, lambda path=".", real=real: listed.append(path) or real(path))
    jobs = sweepdir.job_folders(sweep, lambda p: (p / ".hydra" / "overrides.yaml").is_file())
    assert [j.relative_to(sweep).as_posix() for j in jobs] == ["0", "1", "input=/data/mics,x=2"]
    assert len(listed) < 100, len(listed)  # the sweep, data/, its 60 grid squares, input=/ and input=/data/


def test_job_folders_takes_only_folders(tmp_path):
    # a file beside the jobs (multirun.yaml, a user's notes) is no job, whatever is_job says of it
    from lipoframe import sweepdir

    (tmp_path / "multirun.yaml").write_text("hydra: {}\n")
    (tmp_path / "0").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    assert sweepdir.job_folders(tmp_path, lambda p: True) == [tmp_path / "0"]


def test_a_reference_without_a_diameter_column_says_so_and_names_its_diameter_columns():
    # The real virion reference (x_px, y_px, diameter_px_watershed_equiv, diameter_px_inscribed) was refused with
    # 'reference has rows without diameter_px', which read as if some rows were empty and named neither the file
    # nor the columns it does have.
    picks = table([("m", 100.0, 100.0, 50.0)])
    ref = pd.DataFrame({"x_px": [100.0], "y_px": [100.0], "diameter_px_watershed_equiv": [50.0], "diameter_px_inscribed": [45.0]})
    with pytest.raises(ValueError) as err:
        evaluate(picks, ref, sources={"picks": "run", "reference": "virions.csv"})
    assert str(err.value) == ("virions.csv: the reference has no diameter_px column (it has diameter_px_watershed_equiv, "
                              "diameter_px_inscribed): rename the one to use to diameter_px, or give reference_diameter=<px>")
    with pytest.raises(ValueError, match=r"^the reference has no diameter_px column; give reference_diameter=<px>$"):
        evaluate(picks, ref[["x_px", "y_px"]])
    some = pd.DataFrame({"micrograph": ["m", "m"], "x_px": [100.0, 300.0], "y_px": [100.0, 300.0], "diameter_px": [50.0, np.nan]})
    with pytest.raises(ValueError, match=r"^1 of 2 reference rows have no diameter_px; give reference_diameter=<px>$"):
        evaluate(picks, some)
    assert evaluate(picks, some, reference_diameter=40).summary["tp"] == 1
