"""Mistakes plugin authors make: each gives one line naming the stage and the micrograph."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest

from conftest import TINY_ARGS

#: A plugin whose stages misbehave on request (``detector.bad=...``, ``filter.sloppy.bad=...``).
SLOPPY = """
    import math
    from dataclasses import dataclass

    import numpy as np
    import pandas as pd

    from lipoframe import hookimpl, schema
    from lipoframe.stages import Detector, Filter

    @dataclass
    class SloppyDetectorParams:
        bad: str = "none"

    class SloppyDetector(Detector):
        name = "sloppy"
        Params = SloppyDetectorParams

        def detect(self, mic, ctx):
            ny, nx = mic.shape[-2:]
            d = math.sqrt(ctx.dmin_px * ctx.dmax_px)
            x = [(nx - 1) / 2.0, nx / 4.0]
            if self.params.bad == "off_image":
                x[1] = nx + 40.0
            return pd.DataFrame({"x_px": x, "y_px": [(ny - 1) / 2.0, ny / 4.0], "diameter_px": [d, d],
                                 "score": [2.0, 1.0], "pyramid_level": [0, 0], "sigma_px": [d / 2.83, d / 2.83]})

    @dataclass
    class SloppyFilterParams:
        bad: str = "none"

    class SloppyFilter(Filter):
        name = "sloppy"
        Params = SloppyFilterParams
        reasons = ("sloppy",)

        def apply(self, picks, mic, ctx):
            if self.params.bad == "raise" and mic.name == "mic_1":
                return picks["quality"]
            if self.params.bad == "in_place":
                picks["note"] = "seen"
            if self.params.bad == "flag_in_place":
                picks.loc[picks["score"] < 1.5, "score"] = 0.0
                return schema.reject(picks, picks["score"].to_numpy() < 1.5, "sloppy")
            if self.params.bad == "drop":
                return schema.with_acceptance(picks.loc[picks["score"] >= 1.5])
            if self.params.bad == "drop_column":
                return schema.reject(picks, picks["score"].to_numpy() < 1.5, "sloppy").drop(columns=["accepted"])
            if self.params.bad == "undeclared":
                return schema.reject(picks, picks["score"].to_numpy() < 1.5, "slopy")
            return schema.reject(picks, picks["score"].to_numpy() < 1.5, "sloppy")

        def apply_dataset(self, picks, metas, ctx):
            if self.params.bad == "raise_dataset":
                raise RuntimeError("no dataset today")
            if self.params.bad == "nan_dataset":
                return picks.assign(score=np.nan)
            return picks

    @hookimpl
    def lipoframe_register_stages(registry):
        registry.add(SloppyDetector)
        registry.add(SloppyFilter)
"""

#: Only the plugin's stages decide.
PLAIN = ["detector=sloppy", "refiner=none", "nms=none", "filter=[sloppy]", "binning=single", "writer=[csv,star]"]


@pytest.fixture
def sloppy(make_plugin):
    make_plugin("lipoframe-sloppy", SLOPPY, version="0.1")
    return "sloppy"


def test_the_sloppy_plugin_picks_when_it_behaves(sloppy, tiny_mrcs, tmp_path, run_cli):
    code, _, err = run_cli("run", *PLAIN, f"input={tiny_mrcs[0].parent}", f"output={tmp_path / 'out'}", *TINY_ARGS)
    assert code == 0, err
    picks = pd.read_csv(tmp_path / "out" / "picks.csv")
    assert len(picks) == 2 and picks["accepted"].all()  # one pick per micrograph; the weaker one rejected


def test_a_centre_off_the_micrograph_fails_that_micrograph_naming_the_stage(sloppy, tiny_mrcs, tmp_path, run_cli):
    # Before, a detector's centre 40 px right of the image was accepted and
    # exported to RELION, cryoSPARC and EMAN as it was.
    out = tmp_path / "out"
    code, stdout, err = run_cli("run", *PLAIN, "detector.bad=off_image", f"input={tiny_mrcs[0].parent}", f"output={out}", *TINY_ARGS)
    assert code == 1
    for mic in tiny_mrcs:
        line = next(ln for ln in err.splitlines() if str(mic) in ln)
        assert "stage 'detector/sloppy' returned 1 of 2 centres off the 512 x 512 px micrograph in column 'x_px' (e.g. 552" in line
    assert "failed 2" in stdout
    assert not list(out.glob("relion/coords/*.star"))  # nothing exported


def test_centres_on_the_pixels_extent_are_on_the_micrograph():
    from lipoframe import schema

    def table(x, y):
        return pd.DataFrame({schema.X: [x], schema.Y: [y], schema.DIAMETER: [10.0], schema.SCORE: [1.0],
                             schema.LEVEL: [0], schema.SIGMA: [3.0]})

    for x, y in [(-0.5, -0.5), (99.5, 49.5), (0.0, 0.0)]:
        schema.validate_detections(table(x, y), stage="detector/mine", shape=(50, 100))
    for x, y, col in [(-0.6, 0.0, "x_px"), (0.0, 49.6, "y_px"), (100.0, 0.0, "x_px")]:
        with pytest.raises(ValueError, match=f"stage 'detector/mine' returned 1 of 1 centres off the 100 x 50 px micrograph in column '{col}'"):
            schema.validate_detections(table(x, y), stage="detector/mine", shape=(50, 100))
    # A tomogram's z too.
    vol = table(5.0, 5.0).assign(**{schema.Z: [12.0]})
    with pytest.raises(ValueError, match="in column 'z_px'"):
        schema.validate_detections(vol, stage="detector/mine", shape=(10, 50, 100))


def test_a_run_end_hook_that_raises_is_named_and_the_others_still_run(sloppy, make_plugin, tiny_mrcs, tmp_path, run_cli):
    # Before, the exception went up through Hydra: a traceback, no summary,
    # no report, and the hooks of other plugins were not called.
    make_plugin(
        "lipoframe-notify",
        """
        from lipoframe import hookimpl

        @hookimpl
        def lipoframe_run_end(out_dir, summary):
            raise RuntimeError("webhook down")
        """,
        version="2.1",
    )
    make_plugin(
        "lipoframe-marker",
        """
        from lipoframe import hookimpl

        @hookimpl
        def lipoframe_run_end(out_dir):
            (out_dir / "marker.txt").write_text("done")
        """,
    )
    out = tmp_path / "out"
    code, stdout, err = run_cli("run", *PLAIN, f"input={tiny_mrcs[0].parent}", f"output={out}", *TINY_ARGS)
    message = "plugin lipoframe-notify 2.1 (notify) failed in lipoframe_run_end: RuntimeError: webhook down"
    assert code == 1
    assert f"lipoframe: {message}" in err.splitlines() and "Traceback" not in err
    assert message not in stdout and "micrographs  ok 2" in stdout  # named once, on stderr; counted in the summary
    assert "ERROR  1 error (named above; listed in run_summary.json)" in stdout.splitlines()
    assert (out / "marker.txt").read_text() == "done" and (out / "picks.csv").is_file()
    assert json.loads((out / "run_summary.json").read_text())["errors"] == [message]
    # lipoframe plan calls the hook too, and says so the same way.
    code, stdout, err = run_cli("plan", str(out))
    assert code == 1 and message in err


def test_an_exception_in_a_stage_names_the_stage_and_the_micrograph(sloppy, tiny_mrcs, tmp_path, run_cli):
    # Before: "mic_1.mrc: KeyError: 'quality'", with no word of which of the stages raised it.
    out = tmp_path / "out"
    code, stdout, err = run_cli("run", *PLAIN, "filter.sloppy.bad=raise", f"input={tiny_mrcs[0].parent}", f"output={out}", *TINY_ARGS)
    assert code == 1
    assert f"lipoframe: {tiny_mrcs[1]}: filter/sloppy: KeyError: 'quality'" in err.splitlines()
    assert "FAILED 1 micrograph (named above; listed in run_summary.json)" in stdout.splitlines()
    assert "ok 1" in stdout and list(pd.read_csv(out / "picks.csv")["micrograph"]) == ["mic_0"]  # the other one goes on
    code, stdout, err = run_cli("run", *PLAIN, "filter.sloppy.bad=raise_dataset", f"input={tiny_mrcs[0].parent}", f"output={tmp_path / 'out2'}", *TINY_ARGS)
    assert code == 1
    assert "lipoframe: dataset stage filter/sloppy failed: RuntimeError: no dataset today" in err.splitlines()
    # Before, NaN scores from a dataset filter went to every writer, each
    # warning "exported with score 0" without naming the stage.
    code, stdout, err = run_cli("run", *PLAIN, "filter.sloppy.bad=nan_dataset", f"input={tiny_mrcs[0].parent}", f"output={tmp_path / 'out3'}", *TINY_ARGS)
    assert code == 1
    # Before, "dataset stage failed: ValueError: stage 'filter/sloppy' returned ...": the stage named in the middle.
    assert "lipoframe: dataset stage filter/sloppy failed: it returned non-finite values in column 'score'" in err.splitlines()
    assert "non-finite score" not in stdout + err


@pytest.mark.parametrize(
    ("bad", "problem"),
    [
        ("in_place", "stage 'filter/sloppy' changed the table it was given (added column 'note'): work on a copy"),
        ("flag_in_place", "stage 'filter/sloppy' changed the table it was given (column 'score'): work on a copy"),
        ("drop", "stage 'filter/sloppy' returned 1 rows for the 2 it was given: reject picks with lipoframe.schema.reject"),
        # Before, a bare "KeyError: 'accepted'" later in the runner, naming no stage.
        ("drop_column", "stage 'filter/sloppy' returned a table without columns ['accepted'] that it was given"),
        # Before, retry_suppressed=[slopy] was refused as no stage's reason, while the run gave it.
        ("undeclared", "stage 'filter/sloppy' rejected picks with 'slopy', which its reasons ('sloppy',) do not declare"),
    ],
)
def test_a_filter_that_changes_its_input_or_drops_picks_is_named(sloppy, tiny_mrcs, tmp_path, run_cli, bad, problem):
    # Before, all three ran without a word: the dropped pick vanished from
    # every table, and the runner went on using the changed input (the
    # refined picks are filtered again after retries).
    out = tmp_path / "out"
    code, stdout, err = run_cli("run", *PLAIN, f"filter.sloppy.bad={bad}", f"input={tiny_mrcs[0].parent}", f"output={out}", *TINY_ARGS)
    assert code == 1
    for mic in tiny_mrcs:
        assert any(ln.startswith(f"lipoframe: {mic}: ValueError: {problem}") for ln in err.splitlines()), err


def test_call_table_stage_accepts_a_stage_that_returns_its_input_unchanged():
    from lipoframe.runner import call_table_stage

    table = pd.DataFrame({"x_px": [1.0, float("nan")], "reject_reason": ["", None], "accepted": [True, False]})
    assert call_table_stage(lambda t: t, table, stage="filter/mine", same_rows=True) is table
    assert len(call_table_stage(lambda t: t.iloc[:1], table, stage="nms/mine", same_rows=False)) == 1


@pytest.mark.parametrize(
    ("kind", "advice"),
    [
        ("nms", "return the kept rows as a new table (picks.loc[keep] is one)"),
        ("refiner", "work on a copy (picks.assign(...) and lipoframe.schema.reject return one)"),
        ("filter", "work on a copy (lipoframe.schema.reject returns one)"),
        ("binning", "work on a copy (picks.assign(size_bin=...) and lipoframe.schema.reject return one)"),
        ("writer", "a writer only reads it (to change values for the export, change a copy: picks.assign(...) or "
                   "picks.copy() returns one)"),
    ],
)
def test_a_stage_that_changes_its_input_gets_advice_for_its_kind(kind, advice):
    # Before, every kind was told "(lipoframe.schema.reject returns one)":
    # no advice for a writer, which rejects nothing, nor for an NMS, which drops rows.
    from lipoframe.runner import call_table_stage

    def in_place(t):
        t["x_px"] = 0.0
        return t

    table = pd.DataFrame({"x_px": [1.0, 2.0], "accepted": [True, True]})
    with pytest.raises(ValueError) as raised:
        call_table_stage(in_place, table, stage=f"{kind}/mine", same_rows=False)
    assert str(raised.value) == f"stage '{kind}/mine' changed the table it was given (column 'x_px'): {advice}" + (
        "" if kind == "writer" else " and leave the input as it is")


#: A writer of one .xyz file per micrograph that stops after its first file on request:
#: ``fail=disk_full`` (an OSError after a warning), ``fail=interrupt`` (what Ctrl-C or SIGTERM raises) or
#: ``fail=two_lines`` (an exception whose message goes on over a second line).
XYZ_WRITER = """
        import logging
        from dataclasses import dataclass

        from lipoframe import hookimpl
        from lipoframe.io.atomic import safe_child, write_text
        from lipoframe.stages import Writer

        @dataclass
        class XyzParams:
            fail: str = "none"

        class Xyz(Writer):
            name = "xyz"
            Params = XyzParams

            def write(self, picks, metas, plan, out_dir, ctx):
                written = []
                for name in metas:
                    if written and self.params.fail == "disk_full":
                        logging.getLogger("lipoframe").warning("xyz: giving up")  # lipoframe.log changes, and stays
                        raise OSError(28, "No space left on device")
                    if written and self.params.fail == "interrupt":
                        raise KeyboardInterrupt  # what sigterm_as_interrupt raises
                    if self.params.fail == "two_lines":
                        raise ValueError("cannot write xyz\\nthe second line says why")
                    written.append(write_text(safe_child(out_dir, "xyz", f"{name}.xyz"), "1 2 3\\n"))
                return written

        @hookimpl
        def lipoframe_register_stages(registry):
            registry.add(Xyz)
"""


def test_a_writer_that_fails_half_way_leaves_none_of_its_files(sloppy, make_plugin, tiny_mrcs, tmp_path, run_cli):
    # Before, the files it wrote before failing stayed (mic_0.xyz of two),
    # unlisted in written_files.json, so no later run removed them either,
    # and a folder import took them as the whole export.
    make_plugin("lipoframe-xyz", XYZ_WRITER)
    out = tmp_path / "out"
    args = [*PLAIN, "writer=[csv,xyz,star]", f"input={tiny_mrcs[0].parent}", f"output={out}", *TINY_ARGS]
    code, stdout, err = run_cli("run", *args, "writer.xyz.fail=disk_full")
    assert code == 1
    assert ("lipoframe: writer xyz failed: OSError: [Errno 28] No space left on device (removed the 1 file(s) it had written); "
            "its files are missing, the other exports and the extraction plan are written: once that is fixed, "
            f"`lipoframe plan {out}` writes them all without picking again") in err.splitlines()
    assert not (out / "xyz").exists()
    assert (out / "picks.csv").is_file() and len(list(out.glob("relion/coords/*.star"))) == 2  # the other writers' files
    assert "xyz: giving up" in (out / "lipoframe.log").read_text()
    code, _, err = run_cli("run", *args)
    assert code == 0, err
    assert sorted(p.name for p in (out / "xyz").iterdir()) == ["mic_0.xyz", "mic_1.xyz"]


def test_an_error_of_several_lines_is_printed_once(sloppy, make_plugin, tiny_mrcs, tmp_path, run_cli):
    """Before, a failure or error of more than one line (runner.verbose=true adds a traceback to each; a writer's
    exception may say more on a second line) was named on stderr as it happened and again, whole, in the summary:
    only the first line of what the console showed was matched against the summary's words."""
    make_plugin("lipoframe-xyz", XYZ_WRITER)
    out = tmp_path / "out"
    code, stdout, err = run_cli("run", *PLAIN, "filter.sloppy.bad=raise", "writer=[csv,xyz]", "writer.xyz.fail=two_lines",
                                "runner.verbose=true", f"input={tiny_mrcs[0].parent}", f"output={out}", *TINY_ARGS)
    assert code == 1
    summary = json.loads((out / "run_summary.json").read_text())
    (failure,), (error,) = [f["error"] for f in summary["failures"]], summary["errors"]
    assert failure == f"{tiny_mrcs[1]}: filter/sloppy: KeyError: 'quality'"
    assert error.startswith("writer xyz failed: ValueError: cannot write xyz\nthe second line says why; ")
    lines = err.splitlines()  # runner.verbose=true: each is followed by its traceback
    assert lines[lines.index(f"lipoframe: {failure}") + 1] == "Traceback (most recent call last):"
    assert lines[lines.index(error.splitlines()[-1]) + 1] == "Traceback (most recent call last):"
    console = stdout + err
    assert console.count(failure) == 1 and console.count(error) == 1
    assert "second line" not in stdout and "Traceback" not in stdout
    assert "FAILED 1 micrograph (named above; listed in run_summary.json)" in stdout.splitlines()
    assert "ERROR  1 error (named above; listed in run_summary.json)" in stdout.splitlines()


def test_shown_errors_takes_an_error_of_several_lines_only_when_all_were_shown():
    from lipoframe.logs import ShownErrors

    shown = ShownErrors()
    shown.add("a.mrc: boom\nTraceback (most recent call last):\n  ...")
    shown.add("writer x failed: first")
    assert "a.mrc: boom" in shown and "a.mrc: boom\nTraceback (most recent call last):\n  ..." in shown
    assert "a.mrc: bo" not in shown and "a.mrc: boom\nmore" not in shown
    assert "writer x failed: first" in shown and "writer x failed: first\nsecond" not in shown
    assert len(shown) == 2 and sorted(shown) == ["a.mrc: boom\nTraceback (most recent call last):\n  ...", "writer x failed: first"]


def test_check_declared_reasons_looks_only_at_what_the_stage_rejected():
    from lipoframe import schema
    from lipoframe.runner import check_declared_reasons

    before = schema.reject(pd.DataFrame({"x_px": [1.0, 2.0, 3.0]}), [True, False, False], "edge")
    # An earlier stage's reason stays; the stage's own is declared.
    check_declared_reasons(before, schema.reject(before, [False, True, False], "mine"), declared=("mine",), stage="filter/f")
    check_declared_reasons(before, schema.reject(before, [False, True, True], "other"), declared=None, stage="filter/f")
    with pytest.raises(ValueError, match=r"stage 'filter/f' rejected picks with 'other', which its reasons \('mine',\)"):
        check_declared_reasons(before, schema.reject(before, [False, True, False], "other"), declared=("mine",), stage="filter/f")
    silent = before.assign(accepted=[False, False, True])  # rejected without a reason
    with pytest.raises(ValueError, match=r"rejected picks with no reason, which its reasons \(\) do not declare"):
        check_declared_reasons(before, silent, declared=(), stage="refiner/r")


@pytest.mark.parametrize("table", [
    pd.DataFrame({"x_px": [1.0, 2.0, 3.0]}),  # neither column
    pd.DataFrame({"x_px": [1.0, 2.0, 3.0], "accepted": [True, False, True], "reject_reason": ["", "edge", ""]}),
    pd.DataFrame({"accepted": [1, 0, 1], "reject_reason": [None, "edge", np.nan]}),  # numbers, missing reasons
    pd.DataFrame({"accepted": pd.array([True, False, True], dtype="boolean"), "reject_reason": pd.array(["", "edge", None], dtype="string")}),
    pd.DataFrame({"accepted": [np.nan, 0.0, 1.0], "reject_reason": ["", "edge", ""]}),  # NaN counts as True, as in astype(bool)
    pd.DataFrame({"accepted": pd.Series([], dtype=bool)}),
], ids=["none", "plain", "numbers", "extension", "floats", "empty"])
def test_acceptance_is_what_with_acceptance_gives(table):
    # check_declared_reasons reads the two columns without copying the tables: the same values as the copies had.
    from lipoframe import schema

    accepted, reasons = schema.acceptance(table)
    full = schema.with_acceptance(table)
    assert accepted.dtype == bool and reasons.dtype == object
    assert accepted.tolist() == full["accepted"].to_numpy(dtype=bool).tolist()
    assert reasons.tolist() == full["reject_reason"].to_numpy(dtype=object).tolist()
    assert full["accepted"].dtype == bool and full["reject_reason"].dtype == object and not full["reject_reason"].isna().any()


def test_a_writer_interrupted_half_way_leaves_none_of_its_files(sloppy, make_plugin, tiny_mrcs, tmp_path, run_cli):
    # Ctrl-C or SIGTERM (the end of a SLURM job) while a writer ran left the files
    # it had written (mic_0.xyz of two): an export folder with part of the micrographs.
    make_plugin("lipoframe-xyz", XYZ_WRITER)
    out = tmp_path / "out"
    code, _, err = run_cli("run", *PLAIN, "writer=[csv,xyz]", "writer.xyz.fail=interrupt", f"input={tiny_mrcs[0].parent}", f"output={out}", *TINY_ARGS)
    assert code == 130 and "interrupted" in err, err
    assert not (out / "xyz").exists()
    assert (out / "picks.csv").is_file()  # the writer before it finished


def test_a_run_interrupted_in_its_writers_says_so_in_run_summary(sloppy, make_plugin, tiny_mrcs, tmp_path, run_cli):
    # run_summary.json was written only after the writers: the one of an earlier
    # complete run stayed and said 'interrupted: false', all micrographs ok.
    import json

    make_plugin("lipoframe-xyz", XYZ_WRITER)
    out = tmp_path / "out"
    args = [*PLAIN, f"input={tiny_mrcs[0].parent}", f"output={out}", *TINY_ARGS]
    code, _, err = run_cli("run", *args, "writer=[csv]")
    assert code == 0, err
    code, _, err = run_cli("run", *args, "writer=[csv,xyz]", "writer.xyz.fail=interrupt")
    assert code == 130 and "interrupted" in err, err
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["interrupted"] is True and summary["micrographs"]["total"] == 2


#: A binning stage and a writer that misbehave on request (``binning.bad=...``, ``writer.tamper.bad=...``).
TAMPERING = """
        from dataclasses import dataclass

        import numpy as np

        from lipoframe import hookimpl, schema
        from lipoframe.io.atomic import safe_child, write_text
        from lipoframe.plan import ExtractionPlan, SizeBin
        from lipoframe.stages import Binner, BinningResult, Writer

        @dataclass
        class OneBinParams:
            bad: str = "none"

        class OneBin(Binner):
            name = "onebin"
            Params = OneBinParams

            def assign(self, picks, metas, ctx):
                bad = self.params.bad
                if bad == "raise":
                    raise ValueError(f"binning.bad is {bad!r}")
                if bad == "in_place":
                    picks["diameter_px"] = 1.0
                out = schema.with_acceptance(picks)
                d = out["diameter_px"].to_numpy(float)
                plan = ExtractionPlan(policy=self.name, pixel_size=ctx.pixel_size,
                                      bins=(SizeBin(0, float(d.min()), float(d.max()), len(d), 64),))
                if bad == "no_size_bin":
                    return BinningResult(out, plan)
                out["size_bin"] = np.full(len(out), 3 if bad == "unknown_bin" else 0, dtype=np.int64)
                if bad == "drop":
                    out = out.iloc[:1]
                if bad == "no_result":
                    return out
                return BinningResult(out, plan)

        @dataclass
        class TamperParams:
            bad: str = "none"

        class Tamper(Writer):
            name = "tamper"
            Params = TamperParams

            def write(self, picks, metas, plan, out_dir, ctx):
                if self.params.bad == "in_place":
                    picks["x_px"] = 0.0
                if self.params.bad == "values":
                    picks.loc[:, "size_bin"] = 7
                written = [write_text(safe_child(out_dir, "tamper", f"{name}.txt"), "x") for name in metas]
                if self.params.bad == "outside":
                    written.append(write_text(out_dir.parent / "tamper_outside.txt", "x"))
                if self.params.bad == "link":  # a link inside out_dir to each micrograph, which is outside
                    for name, meta in metas.items():
                        link = out_dir / "tamper" / f"{name}.mrc"
                        link.symlink_to(meta.path)
                        written.append(link)
                if self.params.bad == "none_returned":
                    return None
                return written

        @hookimpl
        def lipoframe_register_stages(registry):
            registry.add(OneBin)
            registry.add(Tamper)
"""


@pytest.mark.parametrize(
    ("bad", "problem"),
    [
        ("in_place", "changed the table it was given (column 'x_px'): a writer only reads it"),
        ("values", "changed the table it was given (column 'size_bin'): a writer only reads it"),
    ],
)
def test_a_writer_that_changes_the_table_fails_and_the_others_get_it_as_it_was(sloppy, make_plugin, tiny_mrcs, tmp_path,
                                                                              run_cli, bad, problem):
    # Before, a writer that set x_px (or size_bin) in place ran without a
    # word (exit code 0), and every writer after it and picks.csv got its
    # table: every x_px 0.
    make_plugin("lipoframe-tamper", TAMPERING)
    out = tmp_path / "out"
    code, stdout, err = run_cli("run", *PLAIN, "writer=[tamper,csv,star]", f"writer.tamper.bad={bad}",
                                f"input={tiny_mrcs[0].parent}", f"output={out}", *TINY_ARGS)
    assert code == 1
    # The writer is named once (before: 'writer tamper failed: ValueError: stage 'writer/tamper' changed ...').
    assert any(ln.startswith(f"lipoframe: writer tamper failed: it {problem}") for ln in err.splitlines()), err
    assert not (out / "tamper").exists()
    picks = pd.read_csv(out / "picks.csv")
    assert len(picks) == 2 and (picks["x_px"] > 0).all() and (picks["size_bin"] == 0).all()
    assert json.loads((out / "run_summary.json").read_text())["picks"]["accepted"] == 2
    code, _, err = run_cli("run", *PLAIN, "writer=[tamper,csv,star]", f"input={tiny_mrcs[0].parent}", f"output={out}", *TINY_ARGS)
    assert code == 0, err
    assert sorted(p.name for p in (out / "tamper").iterdir()) == ["mic_0.txt", "mic_1.txt"]


def test_a_writer_that_writes_outside_the_output_folder_fails(sloppy, make_plugin, tiny_mrcs, tmp_path, run_cli):
    # Before, a writer's file beside the output folder was counted among the run's files (exit code 0), though
    # nothing removes it: not when the writer fails, nor when a later run no longer writes it.
    make_plugin("lipoframe-tamper", TAMPERING)
    out = tmp_path / "out"
    args = [*PLAIN, "writer=[tamper,csv,star]", f"input={tiny_mrcs[0].parent}", f"output={out}", *TINY_ARGS]
    code, stdout, err = run_cli("run", *args, "writer.tamper.bad=outside")
    assert code == 1
    said = (f"lipoframe: writer tamper failed: it wrote 1 file(s) outside the output folder "
            f"{out.resolve()} (e.g. {(tmp_path / 'tamper_outside.txt').resolve()}), which lipoframe leaves as they are: "
            "write only inside out_dir")
    assert any(ln.startswith(said) for ln in err.splitlines()), err
    assert not (out / "tamper").exists()  # its files inside are removed, as for any writer that fails
    assert (tmp_path / "tamper_outside.txt").is_file()  # and nothing outside is
    assert len(pd.read_csv(out / "picks.csv")) == 2 and list(out.glob("relion/coords/*.star"))
    code, _, err = run_cli("run", *args, "writer.tamper.bad=none_returned")
    assert code == 1
    assert "lipoframe: writer tamper failed: it returned NoneType, not the list of the paths it wrote" in err
    code, _, err = run_cli("run", *args)
    assert code == 0, err


def test_a_writer_that_links_to_files_outside_from_inside_the_output_folder_does_not_fail(sloppy, make_plugin, tiny_mrcs,
                                                                                          tmp_path, run_cli):
    # A symbolic link the writer made inside out_dir is a file inside (the runner can remove it), wherever it
    # points. Before, the check resolved the link itself and failed the writer: "it wrote 2 file(s) outside the
    # output folder ... (e.g. <the micrograph>)", though it wrote nothing there.
    make_plugin("lipoframe-tamper", TAMPERING)
    out = tmp_path / "out"
    args = [*PLAIN, "writer=[tamper,csv]", f"input={tiny_mrcs[0].parent}", f"output={out}", *TINY_ARGS]
    code, _, err = run_cli("run", *args, "writer.tamper.bad=link")
    assert code == 0, err
    assert "outside" not in err
    links = sorted((out / "tamper").glob("*.mrc"))
    assert len(links) == 2 and all(p.is_symlink() and p.resolve() in {m.resolve() for m in tiny_mrcs} for p in links)


#: A writer that links ``linked/<name>.mrc`` to each micrograph (outside the output folder), or to
#: ``picks.csv`` (inside), getting each link's path from safe_child (``replace_link`` as given).
LINKER = """
        import os
        from dataclasses import dataclass

        from lipoframe import hookimpl
        from lipoframe.io.atomic import safe_child
        from lipoframe.stages import Writer

        @dataclass
        class LinkParams:
            to: str = "micrograph"
            replace: bool = True

        class Link(Writer):
            name = "link"
            Params = LinkParams

            def write(self, picks, metas, plan, out_dir, ctx):
                written = []
                for name, meta in metas.items():
                    link = safe_child(out_dir, "linked", f"{name}.mrc", replace_link=self.params.replace)
                    link.parent.mkdir(exist_ok=True)
                    link.symlink_to(meta.path if self.params.to == "micrograph" else out_dir / "picks.csv")
                    written.append(link)
                return written

        @hookimpl
        def lipoframe_register_stages(registry):
            registry.add(Link)
"""


@pytest.mark.parametrize("to", ["micrograph", "picks"])
def test_a_link_a_writer_no_longer_makes_is_removed_and_its_target_kept(sloppy, make_plugin, tiny_mrcs, tmp_path, run_cli, to):
    # written_files.json recorded where a writer's link pointed, not the link: a link to a micrograph (outside)
    # was not recorded at all, one to picks.csv recorded picks.csv, so a later run that made no such link left it.
    make_plugin("lipoframe-link", LINKER)
    out = tmp_path / "out"
    args = [*PLAIN, "writer=[csv,link]", f"writer.link.to={to}", f"output={out}", *TINY_ARGS]
    code, _, err = run_cli("run", *args, f"input={tiny_mrcs[0].parent}")
    assert code == 0, err
    record = json.loads((out / "written_files.json").read_text())
    assert record["links"] == ["linked/mic_0.mrc", "linked/mic_1.mrc"] and not any("linked" in f for f in record["files"])
    # The same settings with one micrograph: the other's link goes (the link, not its target); the kept
    # micrograph's link is made again over the earlier one (safe_child(..., replace_link=True)).
    code, _, err = run_cli("run", *args, f"input={tiny_mrcs[0]}")
    assert code == 0, err
    assert sorted(p.name for p in (out / "linked").iterdir()) == ["mic_0.mrc"] and (out / "linked" / "mic_0.mrc").is_symlink()
    assert all(m.is_file() for m in tiny_mrcs) and (out / "picks.csv").is_file()
    assert json.loads((out / "written_files.json").read_text())["links"] == ["linked/mic_0.mrc"]
    # Other settings (no link writer): the earlier run's links go as the run starts, their targets stay.
    code, _, err = run_cli("run", *[a for a in args if not a.startswith("writer")], "writer=[csv]", f"input={tiny_mrcs[0]}")
    assert code == 0, err
    assert not (out / "linked").exists() and all(m.is_file() for m in tiny_mrcs)
    assert "links" not in json.loads((out / "written_files.json").read_text())


def test_a_writer_that_makes_its_link_again_without_replace_link_is_told_what_to_do(sloppy, make_plugin, tiny_mrcs,
                                                                                   tmp_path, run_cli):
    # safe_child refuses the earlier run's link to a micrograph (a plain open() of it would write the micrograph);
    # before, its message said only "refusing to write <the micrograph>: outside the output folder".
    make_plugin("lipoframe-link", LINKER)
    out = tmp_path / "out"
    args = [*PLAIN, "writer=[csv,link]", "writer.link.replace=false", f"input={tiny_mrcs[0]}", f"output={out}", *TINY_ARGS]
    code, _, err = run_cli("run", *args)
    assert code == 0, err
    code, _, err = run_cli("run", *args)
    assert code == 1
    link = out.resolve() / "linked" / "mic_0.mrc"
    assert (f"lipoframe: writer link failed: ValueError: refusing to write {link}: it is a symbolic link to "
            f"{tiny_mrcs[0].resolve()}, outside the output folder {out.resolve()} (an earlier run's?), and writing it would "
            "write there; remove the link (os.unlink, which leaves its target) or get the path with "
            "safe_child(..., replace_link=True), which does") in err, err
    assert tiny_mrcs[0].is_file()


def test_safe_child_replaces_a_link_only_when_asked_and_never_its_target(tmp_path):
    from lipoframe.io.atomic import safe_child

    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    (out / "sub").mkdir(parents=True)
    elsewhere.mkdir()
    (elsewhere / "data.mrc").write_text("data")
    (out / "inside.txt").write_text("inside")
    (out / "sub" / "to_out").symlink_to(elsewhere / "data.mrc")
    (out / "sub" / "to_in").symlink_to(out / "inside.txt")
    (out / "sub" / "to_dir").symlink_to(elsewhere, target_is_directory=True)
    (out / "up").symlink_to(elsewhere, target_is_directory=True)
    root = out.resolve()
    # Without replace_link a link is followed: to inside, its target; to outside, refused, and left as it is.
    assert safe_child(out, "sub", "to_in") == root / "inside.txt" and (out / "sub" / "to_in").is_symlink()
    for name in ("to_out", "to_dir"):
        with pytest.raises(ValueError, match=f"refusing to write {root / 'sub' / name}: it is a symbolic link to "):
            safe_child(out, "sub", name)
        assert (out / "sub" / name).is_symlink()
    # With it, the link goes (the link only) and its own path is returned, free.
    for name in ("to_out", "to_in", "to_dir"):
        assert safe_child(out, "sub", name, replace_link=True) == root / "sub" / name
        assert not os.path.lexists(out / "sub" / name)
    assert (elsewhere / "data.mrc").read_text() == "data" and (out / "inside.txt").read_text() == "inside"
    assert sorted(p.name for p in elsewhere.iterdir()) == ["data.mrc"]
    # A folder on the way that leads outside, and '..', are refused either way; nothing is removed there.
    for parts in (("up", "data.mrc"), ("sub", "..", "..", "elsewhere", "data.mrc"), ("..",)):
        with pytest.raises(ValueError, match="outside the output folder"):
            safe_child(out, *parts, replace_link=True)
    assert (elsewhere / "data.mrc").read_text() == "data" and (out / "up").is_symlink()
    assert safe_child(out, "sub", "new.txt", replace_link=True) == root / "sub" / "new.txt"  # nothing there: as without


@pytest.mark.parametrize(
    ("bad", "problem"),
    [
        ("in_place", "it changed the table it was given (column 'diameter_px')"),
        ("no_size_bin", "it returned a table without the column 'size_bin'"),
        ("unknown_bin", "it put picks in size_bin [3], which its plan does not have (its bins: [0])"),
        ("drop", "it returned 1 rows for the 4 it was given"),
        ("no_result", "it returned DataFrame, not a lipoframe.stages.BinningResult"),
        ("raise", "ValueError: binning.bad is 'raise'"),
    ],
)
def test_a_binning_stage_that_changes_its_input_or_returns_no_bins_is_named(sloppy, make_plugin, tiny_mrcs, tmp_path,
                                                                            run_cli, bad, problem):
    # Before, a binning stage that set diameter_px in place, or returned no
    # size_bin, ran with exit code 0: picks.csv with diameters of 1 px next to
    # diameter_A of the real ones, or "0 picks in 0 size bins" for 2 accepted picks.
    make_plugin("lipoframe-tamper", TAMPERING)
    out = tmp_path / "out"
    args = [a for a in PLAIN if not a.startswith("binning=")]
    code, _, err = run_cli("run", *args, "binning=onebin", f"input={tiny_mrcs[0].parent}", f"output={out}", *TINY_ARGS)
    assert code == 0, err
    assert (pd.read_csv(out / "picks.csv")["size_bin"] == 0).all()
    code, stdout, err = run_cli("run", *args, "binning=onebin", f"binning.bad={bad}", f"input={tiny_mrcs[0].parent}",
                                f"output={tmp_path / bad}", *TINY_ARGS)
    assert code == 1
    # Before, "dataset stage failed: ValueError: stage 'binning/onebin' ...": which policy, in the middle of the line.
    assert any(ln.startswith(f"lipoframe: binning policy 'onebin' failed: {problem}") for ln in err.splitlines()), err
    assert "dataset stage" not in err
    assert not (tmp_path / bad / "relion").exists()
