"""The note for particles far clearer with the other polarity (lipoframe.polaritycheck)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from conftest import write_mrc
from lipoframe.polaritycheck import MIN_PICKS, RATIO, Evidence, polarity_evidence, polarity_note, polarity_verdict

SHAPE = (512, 512)
RANGE = {"units": "px", "dmin": 30.0, "dmax": 80.0}


@pytest.fixture(scope="module")
def image():
    """40 dark projected spheres of 40-70 px in correlated noise (particles darker than the background)."""
    from lipoframe.synthetic import random_particles, render

    rng = np.random.default_rng(1)
    truth = random_particles(SHAPE, rng.uniform(40, 70, 40), seed=1, margin=5, gap=6)
    assert len(truth) >= 30
    return render(SHAPE, truth, contrast=1.0, noise=0.2, seed=1)


@pytest.fixture(scope="module")
def stages():
    """The default stages, as `lipoframe run` builds them."""
    from lipoframe import plugins
    from lipoframe.merge import compose_config
    from lipoframe.runner import build_stages

    _, registry, _ = plugins.load()
    _, cfg = compose_config([f"{k}={v}" for k, v in RANGE.items()])
    return build_stages(cfg, registry)


def _check(img, polarity, stages):
    """The evidence of both polarities and the note of a run with ``polarity`` on ``img``."""
    from lipoframe.config import LipoframeConfig
    from lipoframe.records import Micrograph, MicrographMeta
    from lipoframe.runner import pick_context

    meta = MicrographMeta(name="m", path="", shape=img.shape, pixel_size=None)
    ctx = pick_context(meta, LipoframeConfig(polarity=polarity, **RANGE))
    mic = Micrograph(meta=meta, image=img, polarity=polarity)
    return polarity_evidence(mic, stages, ctx), list(polarity_verdict([(mic, ctx)], stages, polarity).notes)


def test_dark_particles_inverted_and_run_dark_give_the_note(image, stages):
    (own, other), notes = _check(-image, "dark", stages)
    assert other.picks >= MIN_PICKS and other.quality >= RATIO * own.quality
    assert len(notes) == 1
    assert notes[0].startswith("the particles may be bright, not dark") and "try polarity=bright" in notes[0]


def test_dark_particles_run_dark_give_no_note(image, stages):
    (own, other), notes = _check(image, "dark", stages)
    assert own.picks >= MIN_PICKS and other.quality < own.quality / RATIO
    assert notes == []


def test_the_reverse_dark_particles_run_bright_give_the_note_and_bright_ones_run_bright_none(image, stages):
    _, notes = _check(image, "bright", stages)
    assert len(notes) == 1 and notes[0].startswith("the particles may be dark, not bright")
    assert _check(-image, "bright", stages)[1] == []


def test_noise_alone_gives_no_note(stages):
    from lipoframe.synthetic import render

    noise = render(SHAPE, pd.DataFrame(columns=["x_px", "y_px", "diameter_px"]), noise=0.2, seed=3)
    for polarity in ("dark", "bright"):
        assert _check(noise, polarity, stages)[1] == []


def test_the_evidence_does_not_depend_on_what_picking_binned_first(image, stages):
    """The check reads a micrograph again and its detector asks for its finest level first; when it
    was picked, the image check had binned it finer (x2 for dmin=64 px) and the detector's level came
    from that one. The two differed in float32's last digits, and the evidence with them (so the run's
    own detections could not stand in for the check's)."""
    from lipoframe.config import LipoframeConfig
    from lipoframe.polaritycheck import edge_evidence
    from lipoframe.records import Micrograph, MicrographMeta
    from lipoframe.runner import check_image, pick_context

    meta = MicrographMeta(name="m", path="", shape=image.shape, pixel_size=None)
    ctx = pick_context(meta, LipoframeConfig(units="px", dmin=64.0, dmax=120.0))
    fresh, picked = Micrograph(meta=meta, image=image), Micrograph(meta=meta, image=image)
    check_image(picked, ctx)
    assert sorted(picked._cache) == [2]
    pd.testing.assert_frame_equal(stages.detector.detect(fresh, ctx), stages.detector.detect(picked, ctx), check_exact=True)
    evidence = edge_evidence(fresh, stages, ctx)
    assert evidence.picks > 0 and evidence == edge_evidence(picked, stages, ctx)


def test_the_decision():
    clear = Evidence(quality=300.0, picks=60)
    assert polarity_note(Evidence(10.0, 15), clear, "dark") is not None
    assert polarity_note(Evidence(0.0, 0), clear, "dark") is not None  # nothing at all with the run's polarity
    # Not much clearer, or too few picks: nothing to say.
    assert polarity_note(Evidence(300.0 / RATIO + 1, 60), clear, "dark") is None
    assert polarity_note(Evidence(1.0, 5), Evidence(300.0, MIN_PICKS - 1), "dark") is None
    note = polarity_note(Evidence(100.0, 40), clear, "bright", checked=2)
    assert note.startswith("the particles may be dark, not bright: on the first 2 micrographs")
    assert "3.0 times as clear as those found with polarity=bright" in note


def test_run_of_inverted_particles_notes_it_and_keeps_its_picks(tmp_path, run_cli, image, monkeypatch):
    write_mrc(tmp_path / "dark" / "m.mrc", image)
    write_mrc(tmp_path / "bright" / "m.mrc", -image)
    common = ["units=px", "dmin=30", "dmax=80", "runner.workers=1", "runner.progress=false", "runner.report=false"]
    code, out, _ = run_cli("run", f"input={tmp_path / 'bright'}", f"output={tmp_path / 'out'}", *common)
    assert code == 0
    notes = json.loads((tmp_path / "out" / "run_summary.json").read_text())["notes"]
    assert len(notes) == 1 and notes[0].startswith("the particles may be bright, not dark"), notes
    assert "NOTE   " + notes[0] in out
    # The note only informs: the picks are those of the run without the check.
    import lipoframe.polaritycheck as pc

    monkeypatch.setattr(pc, "polarity_verdict", lambda *a, **k: pc.Verdict())
    code, _, _ = run_cli("run", f"input={tmp_path / 'bright'}", f"output={tmp_path / 'unchecked'}", *common)
    assert code == 0
    assert json.loads((tmp_path / "unchecked" / "run_summary.json").read_text())["notes"] == []
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "out" / "picks.csv"), pd.read_csv(tmp_path / "unchecked" / "picks.csv"))
    monkeypatch.undo()
    # runner.polarity_check=false leaves the check out (same picks, no note).
    code, _, _ = run_cli("run", f"input={tmp_path / 'bright'}", f"output={tmp_path / 'off'}", *common, "runner.polarity_check=false")
    assert code == 0
    assert json.loads((tmp_path / "off" / "run_summary.json").read_text())["notes"] == []
    assert "polarity check" not in (tmp_path / "off" / "lipoframe.log").read_text()
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "out" / "picks.csv"), pd.read_csv(tmp_path / "off" / "picks.csv"))
    # Dark particles run with the default polarity: no note.
    code, _, _ = run_cli("run", f"input={tmp_path / 'dark'}", f"output={tmp_path / 'right'}", *common)
    assert code == 0
    assert json.loads((tmp_path / "right" / "run_summary.json").read_text())["notes"] == []


def test_the_check_does_not_repeat_the_readers_warnings(tmp_path, run_cli, image):
    # The check reads the first micrograph again: its header warning is given once, when it is picked.
    write_mrc(tmp_path / "mics" / "m.mrc", image, pixel_size=(1.0, 1.2, 1.0))
    code, out, err = run_cli("run", f"input={tmp_path / 'mics'}", f"output={tmp_path / 'out'}", "polarity=bright", "units=px", "dmin=30",
                             "dmax=80", "runner.workers=1", "runner.progress=false", "runner.report=false")
    assert code == 0
    assert (out + err).count("the header's pixel sizes differ") == 1, out + err
    assert "NOTE   the particles may be dark, not bright" in out


def _counting_checks(monkeypatch):
    """The names of the micrographs the polarity check picks again, in order, from here on."""
    import lipoframe.polaritycheck as pc

    real, seen = pc.polarity_evidence, []

    def counting(mic, *args):
        seen.append(mic.name)
        return real(mic, *args)

    monkeypatch.setattr(pc, "polarity_evidence", counting)
    return seen


def test_a_rerun_of_the_same_micrographs_and_settings_reuses_the_verdict(tmp_path, run_cli, image, monkeypatch):
    # A fully resumed rerun picked the first micrograph again in both polarities, up to its picking time for nothing.
    write_mrc(tmp_path / "in" / "a.mrc", -image)
    write_mrc(tmp_path / "in" / "b.mrc", -image[::-1])
    common = [f"input={tmp_path / 'in'}", f"output={tmp_path / 'out'}", "units=px", "dmin=30", "dmax=80", "runner.workers=1",
              "runner.progress=false", "runner.report=false"]
    checked = _counting_checks(monkeypatch)
    code, out, _ = run_cli("run", *common)
    assert code == 0 and checked and checked[0] == "a"
    note = json.loads((tmp_path / "out" / "run_summary.json").read_text())["notes"]
    assert len(note) == 1 and note[0].startswith("the particles may be bright, not dark")
    first = list(checked)
    for again in ([], ["binning.pad=1.6"]):  # every result resumed; dataset-level settings are not the check's
        checked.clear()
        code, out, _ = run_cli("run", *common, *again)
        assert code == 0 and checked == []
        summary = json.loads((tmp_path / "out" / "run_summary.json").read_text())
        assert summary["notes"][-1:] == note and summary["polarity_check"] == {"checked": first, "notes": note, "reused": True}
        assert "NOTE   " + note[0] in out
    assert "polarity check: the verdict of the earlier run" in (tmp_path / "out" / "lipoframe.log").read_text()
    # Other picking settings, or another first micrograph: checked again.
    checked.clear()
    code, _, _ = run_cli("run", *common, "refiner.min_contrast=3.4")
    assert code == 0 and checked == first
    checked.clear()
    write_mrc(tmp_path / "in" / "a.mrc", image)  # now dark particles: no note
    code, _, _ = run_cli("run", *common, "refiner.min_contrast=3.4")
    assert code == 0 and checked and checked[0] == "a"
    assert json.loads((tmp_path / "out" / "run_summary.json").read_text())["notes"] == []
    checked.clear()
    code, _, _ = run_cli("run", *common, "refiner.min_contrast=3.4")
    assert code == 0 and checked == []
    assert json.loads((tmp_path / "out" / "run_summary.json").read_text())["notes"] == []


def test_plan_keeps_the_runs_polarity_note(tmp_path, run_cli, image):
    # `lipoframe plan` rewrote run_summary.json (and the report) without it.
    write_mrc(tmp_path / "in" / "m.mrc", -image)
    out_dir = tmp_path / "out"
    code, _, _ = run_cli("run", f"input={tmp_path / 'in'}", f"output={out_dir}", "units=px", "dmin=30", "dmax=80", "runner.workers=1",
                         "runner.progress=false", "runner.report=false")
    assert code == 0
    note = json.loads((out_dir / "run_summary.json").read_text())["notes"]
    assert len(note) == 1 and note[0].startswith("the particles may be bright, not dark")
    for overrides in ([], ["binning=kmeans"]):
        code, out, err = run_cli("plan", out_dir, *overrides)
        assert code == 0, err
        assert json.loads((out_dir / "run_summary.json").read_text())["notes"] == note
        assert f"NOTE {note[0]}" in out
    # A rerun that leaves the check out says nothing of the polarity; nor does the plan then.
    code, _, _ = run_cli("run", f"input={tmp_path / 'in'}", f"output={out_dir}", "units=px", "dmin=30", "dmax=80", "runner.workers=1",
                         "runner.progress=false", "runner.report=false", "runner.polarity_check=false")
    assert code == 0
    summary = json.loads((out_dir / "run_summary.json").read_text())
    assert note[0] not in summary["notes"] and "polarity_check" not in summary
    code, out, err = run_cli("plan", out_dir)
    assert code == 0 and note[0] not in json.loads((out_dir / "run_summary.json").read_text())["notes"] and note[0] not in out
