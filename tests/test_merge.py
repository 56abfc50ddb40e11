"""Sharding + ``lipoframe merge``: merging the shards gives exactly what one run gives."""

from __future__ import annotations

import contextlib
import json
import logging
import re
from pathlib import Path

import pandas as pd
import pytest
from scale_data import RUN_ARGS, SHAPE, cli, image, write_set, write_tiff

import lipoframe
from lipoframe import app, merge


@pytest.fixture(autouse=True)
def _no_plugins(monkeypatch):
    monkeypatch.setenv("LIPOFRAME_LOAD_PLUGINS", "")


#: A merge draws its report as its shards did (those of ``sharded`` ran with runner.report=false, RUN_ARGS), or as
#: runner.report= on the merge command says; drawing it takes most of a merge's time. The tests that are not about
#: the report leave it out, and say so; the first one below, and the report tests, ask for it.
NO_REPORT = "runner.report=false"


def _same_result(a, b):
    """picks.csv, per-micrograph CSVs and extraction_plan.json of two output folders are identical."""
    assert (a / "picks.csv").read_bytes() == (b / "picks.csv").read_bytes()
    assert json.loads((a / "extraction_plan.json").read_text()) == json.loads((b / "extraction_plan.json").read_text())
    per_mic = sorted(p.name for p in (a / "csv").glob("*.csv"))
    assert per_mic == sorted(p.name for p in (b / "csv").glob("*.csv"))
    for name in per_mic:
        assert (a / "csv" / name).read_bytes() == (b / "csv" / name).read_bytes()


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    """Five micrographs in two folders, picked once as a whole and once in three shards."""
    root = tmp_path_factory.mktemp("merge")
    write_set(root / "in" / "a", 3, seed=0)
    write_set(root / "in" / "b", 2, seed=10, prefix="other")
    inp = f"input=['{root}/in/*/*.mrc']"
    args = [inp, "runner.workers=1", *RUN_ARGS]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LIPOFRAME_LOAD_PLUGINS", "")
        assert app.run([*args, f"output={root / 'single'}"]) == 0
        assert app.run(["-m", *args, f"output={root / 'shards'}", "shard.count=3", "shard.index=0,1,2"]) == 0
    return root


def test_merge_of_shards_equals_single_run(sharded, capsys):
    root = sharded
    shards = [root / "shards" / str(i) for i in range(3)]
    sizes = [len(json.loads((s / "run_summary.json").read_text())["failures"]) for s in shards]
    assert sizes == [0, 0, 0]
    assert [json.loads((s / "run_summary.json").read_text())["micrographs"]["ok"] for s in shards] == [2, 2, 1]
    # shards given in any order
    assert merge.main([str(shards[2]), str(shards[0]), str(shards[1]), f"output={root / 'merged'}", "runner.report=true"]) == 0
    assert "micrographs  ok 5" in capsys.readouterr().out
    _same_result(root / "single", root / "merged")
    assert (root / "merged" / "report.html").is_file()  # asked for, though the shards drew none


def test_a_merge_of_shards_that_drew_no_report_draws_none(sharded, capsys):
    """Every shard ran with runner.report=false, and the merge drew report.html all the same (most of its time)."""
    import yaml

    out = sharded / "merged_no_report"
    assert merge.main([str(sharded / "shards"), f"output={out}"]) == 0
    assert "report " not in capsys.readouterr().out
    assert (out / "picks.csv").is_file() and not (out / "report.html").exists()
    assert yaml.safe_load((out / "config.yaml").read_text())["runner"]["report"] is False  # what the merge did


def test_a_merge_draws_its_report_when_any_shard_drew_one(tmp_path):
    """Shards that disagree (one run again with runner.report=false): the report is drawn, as the default is."""
    for i, over in enumerate([["runner.report=false"], [], ["++runner.report=False"], ["runner.report=true"]]):
        (tmp_path / str(i) / ".hydra").mkdir(parents=True)
        (tmp_path / str(i) / ".hydra" / "config.yaml").write_text(f"runner:\n  report: {str(i != 0).lower()}\n")
    shards = [merge.Shard(tmp_path / str(i), {}, over)
              for i, over in enumerate([["runner.report=false"], [], ["++runner.report=False"], ["runner.report=true"]])]
    assert [s.report for s in shards] == [False, True, True, True]  # the runs' config.yaml
    (tmp_path / "2" / ".hydra" / "config.yaml").unlink()  # then the overrides recorded, then the default
    (tmp_path / "1" / ".hydra" / "config.yaml").unlink()
    assert [s.report for s in shards] == [False, True, False, True]
    assert merge.report_wanted(shards, [], True) is True
    assert merge.report_wanted([shards[0], shards[2]], [], True) is False
    # the merge command decides when it says
    assert merge.report_wanted([shards[0], shards[2]], ["runner.report=true"], True) is True
    assert merge.report_wanted(shards, ["binning.pad=1.6", "runner.report=false"], False) is False


def test_merge_output_under_home_is_made_there_not_in_a_folder_named_tilde(sharded, away_from_home):
    """`output=~/merged` (sh, a script, or a quoted word) made ./~/merged."""
    cwd, home = away_from_home
    assert merge.main([str(sharded / "shards"), "output=~/merged", NO_REPORT]) == 0
    assert (home / "merged" / "picks.csv").is_file()
    assert list(cwd.iterdir()) == []


def test_merge_keeps_a_log_in_the_merged_folder_as_a_run_does(sharded, capsys):
    # Before, a merged folder had no lipoframe.log: the notes and the
    # dataset step's messages went to the console only.
    root = sharded
    out = root / "merged_log"
    handlers = logging.getLogger().handlers[:]
    assert merge.main([str(root / "shards" / "0"), str(root / "shards" / "1"), str(root / "shards" / "2"), f"output={out}",
                       "binning.rounding=even", NO_REPORT]) == 0
    lines = (out / "lipoframe.log").read_text().splitlines()
    assert lines[0].endswith(f"[lipoframe][INFO] lipoframe {lipoframe.__version__}: merge {root / 'shards' / '0'} {root / 'shards' / '1'} "
                             f"{root / 'shards' / '2'} binning.rounding=even {NO_REPORT}")
    assert "INFO" not in capsys.readouterr().err  # the console shows warnings and errors only, as before
    assert logging.getLogger().handlers == handlers  # the log file's handler is gone with the command


def test_merge_leaves_no_console_handler_behind(sharded, monkeypatch, capsys):
    # In a process that set up no logging, merge adds a console handler on the sys.stderr
    # of that moment; before, it stayed on the root logger after merge.main returned.
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])
    assert merge.main([str(sharded / "shards"), f"output={sharded / 'merged_quiet'}", NO_REPORT]) == 0
    assert root.handlers == []


def test_a_lone_shard_beside_a_run_over_other_inputs_is_refused(sharded, capsys):
    """Shards are checked for completeness only when every run given lists the same inputs; beside a
    run over other inputs (another session, or the input folder grown between shard runs), shard 0 of 3
    was merged alone with only a note: 2 of its run's 5 micrographs, the other 3 dropped without a word."""
    root = sharded
    write_set(root / "more" / "c", 1, seed=20, prefix="third")  # not in in/: the other tests' runs read in/*/*.mrc
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LIPOFRAME_LOAD_PLUGINS", "")
        assert app.run([f"input={root / 'more' / 'c'}", "runner.workers=1", *RUN_ARGS, f"output={root / 'third'}"]) == 0
    capsys.readouterr()
    out = root / "lone"
    assert merge.main([str(root / "shards" / "0"), str(root / "third"), f"output={out}"]) == 1
    err = capsys.readouterr().err
    assert "shard(s) 1, 2 of 3 are missing" in err and f"{root / 'shards' / '0'}/inputs.json" in err, err
    assert not (out / "picks.csv").exists()
    # all three shards beside the other run: merged, the shards' micrographs in their input order
    assert merge.main([str(root / "shards" / "2"), str(root / "third"), str(root / "shards" / "0"), str(root / "shards" / "1"),
                       f"output={out}", NO_REPORT]) == 0
    names = [m["name"] for m in json.loads((out / "inputs.json").read_text())["micrographs"]]
    single = [m["name"] for m in json.loads((root / "single" / "inputs.json").read_text())["micrographs"]]
    assert names == single + ["third_000"]


def test_a_merge_again_with_other_settings_drops_the_earlier_merges_outputs_as_it_starts(sharded, monkeypatch, caplog):
    # As `lipoframe run` does (runner.drop_outputs_of_other_settings): before, the earlier merge's
    # picks.csv and exports stayed until the new merge's dataset step replaced them, and for ever
    # when it was interrupted or killed before, beside the new merge's inputs.json and config.yaml.
    import lipoframe.runner

    out = sharded / "merged_twice"
    assert merge.main([str(sharded / "shards"), f"output={out}", NO_REPORT]) == 0
    assert (out / "picks.csv").is_file() and (out / "relion" / "autopick.star").is_file()

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(lipoframe.runner, "finish_run", killed)
    with caplog.at_level(logging.WARNING, logger="lipoframe"), pytest.raises(KeyboardInterrupt):
        merge.main([str(sharded / "shards"), f"output={out}", "binning.rounding=even", NO_REPORT])
    assert "removed the dataset-level outputs of the earlier run" in caplog.text
    for name in ("picks.csv", "extraction_plan.json", "run_summary.json", "relion", "csv"):
        assert not (out / name).exists(), name
    assert json.loads((out / "written_files.json").read_text())["files"] == []
    assert sorted(p.name for p in (out / "micrographs").glob("*.json")) == [f"mic_{i:03d}.json" for i in range(3)] + [
        f"other_{i:03d}.json" for i in range(2)]  # the per-micrograph results stay, as in a run
    monkeypatch.undo()
    # the same settings again (a merge after more shards ran, or run again): the outputs stay until it rewrites them
    assert merge.main([str(sharded / "shards"), f"output={out}", "binning.rounding=even", NO_REPORT]) == 0
    monkeypatch.setattr(lipoframe.runner, "finish_run", killed)
    with pytest.raises(KeyboardInterrupt):
        merge.main([str(sharded / "shards"), f"output={out}", "binning.rounding=even", NO_REPORT])
    assert (out / "picks.csv").is_file()


@contextlib.contextmanager
def _merge_stopped_while_copying(monkeypatch):
    """Make a merge stop (SIGTERM) as it copies the second micrograph's result, after the first's."""
    import os
    import signal

    import lipoframe.runner

    load_work, calls = lipoframe.runner.load_work, []

    def sigterm_on_the_second(*args, **kwargs):
        calls.append(args)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return load_work(*args, **kwargs)

    def unhandled(signum, frame):  # in place of the default action, which would end the test session
        raise AssertionError("SIGTERM was not turned into an interruption")

    old = signal.signal(signal.SIGTERM, unhandled)
    try:
        with monkeypatch.context() as mp:
            mp.setattr(lipoframe.runner, "load_work", sigterm_on_the_second)
            yield
        assert signal.getsignal(signal.SIGTERM) is unhandled  # the merge put it back
    finally:
        signal.signal(signal.SIGTERM, old)


def test_a_merge_stopped_while_copying_or_in_a_writer_says_so(sharded, monkeypatch, caplog):
    # Stopped while copying the shards' results into a folder holding an earlier merge with the same settings,
    # run_summary.json stayed the earlier merge's ('interrupted: false'), and SIGTERM ended the merge outright.
    from lipoframe.builtin.writers import StarWriter
    from lipoframe.cli import main

    out = sharded / "merged_stopped"
    merge_it = [str(sharded / "shards"), f"output={out}", NO_REPORT]
    assert merge.main(merge_it) == 0
    with _merge_stopped_while_copying(monkeypatch), caplog.at_level(logging.WARNING, logger="lipoframe"):
        assert main(["merge", *merge_it]) == 130
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["interrupted"] is True
    assert summary["micrographs"] == {"total": 5, "ok": 1, "skipped": 0, "failed": 0, "not_done": 4}
    assert "interrupted: 1 of 5 micrographs are copied; run the same `lipoframe merge` command again to finish it" in caplog.messages
    caplog.clear()
    with monkeypatch.context() as mp, caplog.at_level(logging.WARNING, logger="lipoframe"):
        def ctrl_c(*args, **kwargs):
            raise KeyboardInterrupt

        mp.setattr(StarWriter, "write", ctrl_c)
        assert main(["merge", *merge_it]) == 130
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["interrupted"] is True and summary["micrographs"]["not_done"] == 0
    assert ("interrupted while writing the exports and the extraction plan (every micrograph is copied): "
            "run the same `lipoframe merge` command again to finish it") in caplog.messages
    assert merge.main(merge_it) == 0
    assert json.loads((out / "run_summary.json").read_text())["interrupted"] is False


def test_a_merge_whose_writer_fails_says_what_is_left_and_how_to_finish(sharded, capsys):
    """A writer that failed in a merge (a file where its folder goes) was named with its error only: nothing said
    that the other exports and the plan were written, nor how to write the missing export once fixed."""
    from lipoframe import plancmd

    out = sharded / "merged_writer_failed"
    out.mkdir()
    (out / "relion").write_text("in the way")
    assert merge.main([str(sharded / "shards"), f"output={out}", NO_REPORT]) == 1
    console = "".join(capsys.readouterr())
    (error,) = json.loads((out / "run_summary.json").read_text())["errors"]
    assert error.startswith("writer star failed: NotADirectoryError: ")
    assert error.endswith("; its files are missing, the other exports and the extraction plan are written: once that is "
                          f"fixed, `lipoframe plan {out.absolute()}` writes them all without picking again")
    assert console.count(error) == 1
    assert (out / "picks.csv").is_file() and (out / "extraction_plan.json").is_file()
    (out / "relion").unlink()
    assert plancmd.main([str(out.absolute())]) == 0  # as the message says
    assert len(list((out / "relion" / "coords").glob("*.star"))) == 5


def test_plan_and_report_of_a_merge_stopped_while_copying_name_the_merge(sharded, monkeypatch, capsys):
    # They said to run the same `lipoframe run` command again and called the micrographs not copied yet
    # "not picked yet": the merge again finishes it (they are picked, in their shards).
    import html

    from lipoframe import plancmd, report

    out = sharded / "merged_stopped_plan"
    merge_it = [str(sharded / "shards"), f"output={out}", NO_REPORT]
    assert merge.main(merge_it) == 0
    for p in (out / "micrographs").iterdir():  # results the earlier merge did not have (a shard finished them since)
        p.unlink()
    with _merge_stopped_while_copying(monkeypatch):
        with pytest.raises(KeyboardInterrupt):
            merge.merge_runs(merge_it[:1], out, [NO_REPORT])
    capsys.readouterr()
    assert plancmd.main([str(out)]) == 0
    assert ("lipoframe plan: 4 of 5 micrograph(s) have no saved picks and are not in the plan; the merge was interrupted: "
            "run the same `lipoframe merge` command again to finish it") in capsys.readouterr().err.splitlines()
    assert report.cmd_report([str(out), "--no-overlays"]) == 0
    page = " ".join(html.unescape(re.sub(r"<[^>]+>", " ", (out / "report.html").read_text())).split())
    assert "Interrupted : 4 of 5 micrographs not copied yet; run the same command again to continue" in page, page[:3000]


def test_a_merge_stopped_while_writing_its_config_leaves_no_other_binning_with_the_earlier_one(sharded, monkeypatch, caplog):
    # A merge wrote inputs.json, with its `stages`, before config.yaml: stopped in between (Ctrl-C, SIGTERM),
    # the folder held the earlier merge's settings (peak_valley's options) with this merge's policy (single),
    # and `lipoframe plan` re-planned those settings with single.
    from lipoframe import plancmd
    from lipoframe.io import atomic
    from lipoframe.runner import recorded_stages

    out = sharded / "merged_config_stopped"
    assert merge.main([str(sharded / "shards"), f"output={out}", NO_REPORT]) == 0
    earlier = (out / "config.yaml").read_text()
    assert recorded_stages(out)["binning"] == "peak_valley" and "stray_gap" in plancmd.load_saved_config(out)[0]["binning"]

    def config_interrupted(path, text, write_text=atomic.write_text):
        if Path(path).name == "config.yaml":
            raise KeyboardInterrupt
        return write_text(path, text)

    with monkeypatch.context() as m:
        m.setattr(atomic, "write_text", config_interrupted)
        with pytest.raises(KeyboardInterrupt):
            merge.main([str(sharded / "shards"), f"output={out}", "binning=single", NO_REPORT])
    assert (out / "config.yaml").read_text() == earlier
    assert json.loads((out / "inputs.json").read_text())["stages"] is None and recorded_stages(out) == {}
    with caplog.at_level(logging.WARNING, logger="lipoframe"):
        assert plancmd.main([str(out)]) == 0
    assert any(f"{out} records no binning policy (no .hydra/hydra.yaml, and the last run or merge into it stopped before "
               "recording its stages in inputs.json): taken to be peak_valley" in r.getMessage() for r in caplog.records)
    assert json.loads((out / "extraction_plan.json").read_text())["policy"] == "peak_valley"
    # the merge again: its config.yaml, then its stages, all of them, as a merge recorded them before
    assert merge.main([str(sharded / "shards"), f"output={out}", "binning=single", NO_REPORT]) == 0
    shard_stages = json.loads((sharded / "shards" / "0" / "inputs.json").read_text())["stages"]
    assert shard_stages["writer"] and shard_stages["filter"]  # the lists of a run's record (runner.stage_names)
    assert json.loads((out / "inputs.json").read_text())["stages"] == {**shard_stages, "binning": "single"}
    assert "stray_gap" not in plancmd.load_saved_config(out)[0]["binning"]  # single's options


def test_a_merge_killed_before_writing_its_config_is_named_unfinished_and_finished_by_running_it_again(sharded, monkeypatch,
                                                                                                       capsys):
    """A merge into a new folder killed after its inputs.json and before its config.yaml (no run_summary.json: kill -9)
    left a folder of which `lipoframe plan` said "no .hydra/config.yaml or config.yaml (is this a lipoframe run
    folder?)", and whose report showed the picks as those of a finished run, without a word of the merge."""
    import html

    from lipoframe import plancmd, report
    from lipoframe.io import atomic

    class Killed(BaseException):  # as kill -9: no handler runs, no run_summary.json
        pass

    def killed_at_the_config(path, text, write_text=atomic.write_text):
        if Path(path).name == "config.yaml":
            raise Killed
        return write_text(path, text)

    out = sharded / "merged_killed"
    merge_it = [str(sharded / "shards"), f"output={out}", NO_REPORT]
    with monkeypatch.context() as m:
        m.setattr(atomic, "write_text", killed_at_the_config)
        with pytest.raises(Killed):
            merge.main(merge_it)
    assert (out / "inputs.json").is_file() and not (out / "config.yaml").exists() and not (out / "run_summary.json").exists()
    capsys.readouterr()
    assert plancmd.main([str(out)]) == 2
    assert capsys.readouterr().err.strip() == (f"lipoframe plan: {out}: the lipoframe merge into this folder did not finish (it "
                                               "stopped before writing its config.yaml): run the same `lipoframe merge` command "
                                               "again to finish it")
    assert report.cmd_report([str(out), "--no-overlays"]) == 0
    page = " ".join(html.unescape(re.sub(r"<[^>]+>", " ", (out / "report.html").read_text())).split())
    assert ("Interrupted : the merge did not finish (it stopped before writing its config.yaml): run the same "
            "`lipoframe merge` command again to finish it") in page, page[:3000]
    # as it says: the merge again finishes it
    assert merge.main(merge_it) == 0
    assert not merge.merge_unfinished(out) and (out / "config.yaml").is_file()
    _same_result(sharded / "single", out)
    capsys.readouterr()
    assert plancmd.main([str(out)]) == 0
    assert report.cmd_report([str(out), "--no-overlays"]) == 0
    assert "did not finish" not in (out / "report.html").read_text()


def test_a_merge_into_a_new_folder_stopped_while_copying_is_named_a_merge(sharded, monkeypatch, capsys):
    # merged_from.json was written after the copying: plan and the report of a new folder stopped while copying
    # said to run the same `lipoframe run` command again, and called the micrographs left "not picked yet".
    from lipoframe import plancmd

    out = sharded / "merged_new_stopped"
    with _merge_stopped_while_copying(monkeypatch):
        with pytest.raises(KeyboardInterrupt):
            merge.merge_runs([sharded / "shards"], out, [NO_REPORT])
    assert merge.is_merged_folder(out) and merge.merge_unfinished(out)
    capsys.readouterr()
    assert plancmd.main([str(out)]) == 2
    assert "run the same `lipoframe merge` command again to finish it" in capsys.readouterr().err


def test_merge_accepts_the_sweep_folder(sharded):
    root = sharded
    assert merge.main([str(root / "shards"), f"output={root / 'merged_sweep'}", NO_REPORT]) == 0
    _same_result(root / "single", root / "merged_sweep")
    summary = json.loads((root / "merged_sweep" / "run_summary.json").read_text())
    assert summary["micrographs"] == {"total": 5, "ok": 5, "skipped": 0, "failed": 0, "not_done": 0}


def test_merge_accepts_a_folder_of_links_to_the_shards(sharded, tmp_path):
    # shards run on other nodes' scratch, gathered as links in one folder: merged until sweepdir.job_folders
    # (1c6bcbf), which left out linked folders ('not a lipoframe run folder ... and has none inside')
    gathered = tmp_path / "gathered"
    gathered.mkdir()
    for i in range(3):
        (gathered / f"node{i}").symlink_to(sharded / "shards" / str(i), target_is_directory=True)
    assert merge.main([str(gathered), f"output={tmp_path / 'merged'}", NO_REPORT]) == 0
    _same_result(sharded / "single", tmp_path / "merged")


def test_a_merge_without_report_removes_an_earlier_report(sharded, caplog):
    # a report.html left in the output folder by an earlier merge or run showed other picks
    # (a run with runner.report=false already removed it)
    out = sharded / "merged_again"
    out.mkdir()
    (out / "report.html").write_text("<html>an earlier run</html>")
    with caplog.at_level("WARNING", logger="lipoframe"):
        assert merge.main([str(sharded / "shards"), f"output={out}", "runner.report=false"]) == 0
    assert not (out / "report.html").exists()
    assert f"`lipoframe report {out}` writes this run's" in caplog.text


def test_merge_with_a_dataset_level_override(sharded):
    root = sharded
    assert merge.main([str(root / "shards"), f"output={root / 'merged_fft'}", "binning.rounding=even", NO_REPORT]) == 0
    plan = json.loads((root / "merged_fft" / "extraction_plan.json").read_text())
    assert all(b["box_px"] % 2 == 0 for b in plan["bins"])
    pd.testing.assert_frame_equal(
        pd.read_csv(root / "merged_fft" / "picks.csv")[["micrograph", "x_px", "y_px", "diameter_px"]],
        pd.read_csv(root / "single" / "picks.csv")[["micrograph", "x_px", "y_px", "diameter_px"]],
    )


def test_shards_run_with_another_flip_y_are_merged_in_one_frame(tmp_path, capsys):
    # flip_y changes the exports, not the picks: shards that differ in it are merged (with the note on their
    # other overrides) and every micrograph is exported with the merge's value, not with that of its shard
    import numpy as np
    import starfile

    for i in range(2):
        write_tiff(tmp_path / "in" / f"mic_{i}.tif", image(i))
    args = [f"input={tmp_path / 'in'}", "runner.workers=1", *RUN_ARGS, "shard.count=2"]
    assert app.run([*args, f"output={tmp_path / 's0'}", "shard.index=0"]) == 0
    assert app.run([*args, f"output={tmp_path / 's1'}", "shard.index=1", "flip_y=false"]) == 0

    def flipped(folder):
        picks = pd.read_csv(folder / "picks.csv")
        out = {}
        for name, mine in picks[picks["accepted"]].groupby("micrograph"):
            y = np.sort(starfile.read(folder / "relion" / "coords" / f"{name}_autopick.star")["rlnCoordinateY"].to_numpy(float))
            out[name] = bool(np.allclose(y, np.sort(np.round(SHAPE[0] - 1 - mine["y_px"].to_numpy())), atol=0.5))
            assert out[name] or np.allclose(y, np.sort(np.round(mine["y_px"].to_numpy())), atol=0.5)
        return out

    assert flipped(tmp_path / "s0") == {"mic_0": True} and flipped(tmp_path / "s1") == {"mic_1": False}
    capsys.readouterr()
    assert merge.main([str(tmp_path / "s0"), str(tmp_path / "s1"), f"output={tmp_path / 'm'}", NO_REPORT]) == 0
    assert f"{tmp_path / 's1'} was run with other overrides than {tmp_path / 's0'}" in capsys.readouterr().out
    assert flipped(tmp_path / "m") == {"mic_0": True, "mic_1": True}
    assert merge.main([str(tmp_path / "s0"), str(tmp_path / "s1"), f"output={tmp_path / 'm'}", "flip_y=false", NO_REPORT]) == 0
    assert flipped(tmp_path / "m") == {"mic_0": False, "mic_1": False}
    assert [json.loads((tmp_path / "m" / "micrographs" / f"mic_{i}.json").read_text())["meta"]["flip_y"] for i in range(2)] \
        == [False, False]
    # the shards' own records are not touched
    assert json.loads((tmp_path / "s0" / "micrographs" / "mic_0.json").read_text())["meta"]["flip_y"] is True


def test_merge_refuses_a_per_micrograph_override(sharded, capsys):
    root = sharded
    assert merge.main([str(root / "shards"), f"output={root / 'bad'}", "detector.threshold=9"]) == 2
    assert "per-micrograph options" in capsys.readouterr().err


def test_merge_refuses_a_missing_shard(sharded, capsys):
    root = sharded
    code = merge.main([str(root / "shards" / "0"), str(root / "shards" / "2"), f"output={root / 'bad'}"])
    assert code == 1
    assert "shard(s) 1 of 3 are missing" in capsys.readouterr().err


@pytest.mark.parametrize("twice", [("0", "0"), ("", "1")])
def test_merge_refuses_a_shard_given_twice(sharded, capsys, twice):
    # the duplicate was dropped without a word, and the merge then said a shard was missing
    root = sharded
    folders = [str(root / "shards" / t) if t else str(root / "shards") for t in twice]
    assert merge.main([*folders, f"output={root / 'bad'}"]) == 1
    err = capsys.readouterr().err
    assert "the same run folder is given twice" in err and "missing" not in err


@pytest.fixture(scope="module")
def other_shard(sharded) -> Path:
    """Shard 1 of 3 of ``sharded``'s inputs picked with other per-micrograph settings (detector.threshold=9)."""
    other = sharded / "other_shard"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LIPOFRAME_LOAD_PLUGINS", "")
        assert app.run([f"input=['{sharded}/in/*/*.mrc']", "runner.workers=1", *RUN_ARGS, "detector.threshold=9",
                        f"output={other}", "shard.count=3", "shard.index=1"]) == 0
    return other


def test_merge_refuses_shards_with_other_settings(sharded, other_shard, tmp_path, capsys):
    root, other = sharded, other_shard
    capsys.readouterr()
    code = merge.main([str(root / "shards" / "0"), str(other), str(root / "shards" / "2"), f"output={tmp_path / 'm'}"])
    assert code == 1
    assert "different per-micrograph settings" in capsys.readouterr().err


def test_merge_of_a_parameter_sweep_says_to_compare_its_jobs_with_evaluate(sharded, other_shard, tmp_path, capsys):
    """`lipoframe merge sweep/ ...` of a sweep over nms.max_containment said only `merge only shards of one
    run`; a new user who reached for merge to put the jobs side by side was not told what does that."""
    root = sharded
    sweep = tmp_path / "sweep"
    # one micrograph: the merge is refused before it reads any result
    assert app.run(["-m", f"input={root / 'in' / 'b' / 'other_000.mrc'}", "runner.workers=1", *RUN_ARGS, f"output={sweep}",
                    "nms.max_containment=0.3,0.5"]) == 0
    capsys.readouterr()
    assert merge.main([str(sweep), f"output={tmp_path / 'm'}"]) == 1
    err = capsys.readouterr().err
    assert "different per-micrograph settings" in err
    assert f"the jobs of the sweep {sweep} are compared, not merged: `lipoframe evaluate picks={sweep} " in err, err
    # run folders of one run's shards given by hand, and other runs, are not called a sweep
    capsys.readouterr()
    assert merge.main([str(root / "shards" / "0"), str(other_shard), f"output={tmp_path / 'm2'}"]) == 1
    assert "compared, not merged" not in capsys.readouterr().err


def test_merge_prints_the_absolute_output_folder_as_run_does(sharded, tmp_path, monkeypatch, capsys):
    # Before, 'outputs' and run_summary.json's out_dir were output= as typed ('m'), where a run gives the absolute folder.
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert merge.main([str(sharded / "shards"), "output=m", NO_REPORT]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"outputs      {tmp_path / 'm'}"
    assert json.loads((tmp_path / "m" / "run_summary.json").read_text())["out_dir"] == str(tmp_path / "m")


def test_merge_needs_output_and_run_folders(tmp_path, capsys):
    assert merge.main([str(tmp_path)]) == 2
    assert "output=DIR is required" in capsys.readouterr().err
    # A folder that is not a run, or is missing, is a usage error (2), as for plan, report and evaluate.
    assert merge.main([str(tmp_path), f"output={tmp_path / 'o'}"]) == 2
    assert "not a lipoframe run folder" in capsys.readouterr().err
    assert merge.main([str(tmp_path / "nope"), f"output={tmp_path / 'o'}"]) == 2
    assert "no such folder" in capsys.readouterr().err


@pytest.mark.slow
def test_submitit_local_launcher_shards_then_merge(sharded, tmp_path):
    """The real launcher path: each shard is a separate submitit job process. Merged, they equal the single run
    of the same inputs and settings (``sharded``'s)."""
    root = sharded
    proc = cli(
        "run", "-m", f"input=['{root}/in/*/*.mrc']", "runner.workers=1", *RUN_ARGS,
        f"output={tmp_path / 'sweep'}", "shard.count=2", "shard.index=0,1", "hydra/launcher=submitit_local",
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    for i in range(2):
        summary = json.loads((tmp_path / "sweep" / str(i) / "run_summary.json").read_text())
        assert summary["micrographs"]["failed"] == 0 and summary["micrographs"]["ok"] >= 2
    assert merge.main([str(tmp_path / "sweep"), f"output={tmp_path / 'merged'}", NO_REPORT]) == 0
    _same_result(root / "single", tmp_path / "merged")


def test_merge_lists_the_shards_failures(tmp_path, capsys):
    write_set(tmp_path / "in", 2)
    (tmp_path / "in" / "mic_broken.mrc").write_bytes(b"not an mrc file" * 20)
    args = [f"input={tmp_path / 'in'}", "runner.workers=1", *RUN_ARGS, f"output={tmp_path / 'shards'}"]
    assert app.run(["-m", *args, "shard.count=2", "shard.index=0,1"]) == 1  # one shard failed a micrograph
    capsys.readouterr()
    assert merge.main([str(tmp_path / "shards"), f"output={tmp_path / 'merged'}", NO_REPORT]) == 1
    out = capsys.readouterr().out
    assert "micrographs  ok 2  skipped 0  failed 1" in out
    summary = json.loads((tmp_path / "merged" / "run_summary.json").read_text())
    assert [f["micrograph"] for f in summary["failures"]] == [str(tmp_path / "in" / "mic_broken.mrc")]
    assert "not a readable MRC file" in summary["failures"][0]["error"]
    assert set(pd.read_csv(tmp_path / "merged" / "picks.csv")["micrograph"]) == {"mic_000", "mic_001"}


def test_merge_keeps_a_shards_files_not_finished_apart_with_their_errors(tiny_shard_sweep, tmp_path, capsys):
    """A shard folder of a watch=true session's last update (the session killed since) lists a file that failed but
    may be a copy still being written under not_finished. The merge read only the failures: the micrograph got a
    generic 'no complete result' failure, not the session's error, and counted as failed, not as not finished."""
    import shutil

    from conftest import as_watch_update_with_mic_1_not_finished

    shards = tmp_path / "shards"
    shutil.copytree(tiny_shard_sweep, shards)
    mic_1, error = as_watch_update_with_mic_1_not_finished(shards / "1", tiny_shard_sweep.parent / "mics", ok=0)  # mic_1's shard
    capsys.readouterr()
    assert merge.main([str(shards), f"output={tmp_path / 'merged'}", NO_REPORT]) == 1  # mic_1 is not in the merge
    out = capsys.readouterr().out
    assert "micrographs  ok 1  skipped 0  failed 0  not finished 1  (total 2)" in out and f"NOT FINISHED {error}" in out
    merged = json.loads((tmp_path / "merged" / "run_summary.json").read_text())
    assert merged["not_finished"] == [{"micrograph": mic_1, "error": error}] and merged["failures"] == []
    assert merged["micrographs"]["not_finished"] == 1 and merged["micrographs"]["failed"] == 0


def test_merge_of_runs_over_different_inputs_equals_one_run_over_both(sharded, tmp_path, capsys):
    """Two sessions picked separately, merged: the same as picking both at once."""
    root = sharded
    runs = []
    for name in ("a", "b"):
        out = tmp_path / name
        assert app.run([f"input=['{root}/in/{name}/*.mrc']", "runner.workers=1", *RUN_ARGS, f"output={out}"]) == 0
        runs.append(out)
    capsys.readouterr()
    assert merge.main([*map(str, runs), f"output={tmp_path / 'merged'}", NO_REPORT]) == 0
    assert "different inputs" in capsys.readouterr().out
    _same_result(root / "single", tmp_path / "merged")
    # A third session that picked one of the first session's micrographs again: the names clash.
    again = sorted((root / "in" / "a").glob("*.mrc"))[0]
    out = tmp_path / "again"
    assert app.run([f"input=['{again}','{root}/in/b/*.mrc']", "runner.workers=1", *RUN_ARGS, f"output={out}"]) == 0
    capsys.readouterr()
    assert merge.main([str(runs[0]), str(out), f"output={tmp_path / 'clash'}"]) == 1
    assert f"micrograph name {again.stem!r} is in both" in capsys.readouterr().err


def test_a_refused_merge_override_names_the_settings_it_changes(sharded, capsys):
    root = sharded
    assert merge.main([str(root / "shards"), f"output={root / 'bad2'}", "dmin=35", "nms.beta=0.5", "binning.pad=1.6"]) == 2
    err = capsys.readouterr().err
    assert "per-micrograph options (dmin, nms)" in err and not (root / "bad2").exists()


def test_merge_of_a_sweep_folder_leaves_out_an_earlier_sweeps_job_folders(sharded, tmp_path, caplog):
    """A sweep of 4 shards re-run as 3 into the same folder keeps folder 3 (Hydra deletes nothing): merge refused the
    folder ('the runs split the inputs differently (shard.count [3, 4])') instead of merging the last sweep's shards."""
    import shutil

    import yaml

    sweep = tmp_path / "shards"
    shutil.copytree(sharded / "shards", sweep)  # copy2: the file times stay
    stale = sweep / "3"
    shutil.copytree(sweep / "2", stale)
    manifest = json.loads((stale / "inputs.json").read_text())
    manifest["shard"] = {"index": 3, "count": 4}
    (stale / "inputs.json").write_text(json.dumps(manifest))
    words = [w.replace("shard.index=2", "shard.index=3").replace("shard.count=3", "shard.count=4")
             for w in yaml.safe_load((stale / ".hydra" / "overrides.yaml").read_text())]
    (stale / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(words))
    (stale / ".hydra" / "hydra.yaml").write_text((stale / ".hydra" / "hydra.yaml").read_text().replace("num: 2", "num: 3"))
    with caplog.at_level(logging.WARNING, logger="lipoframe"):
        assert merge.main([str(sweep), f"output={tmp_path / 'merged'}", NO_REPORT]) == 0
    _same_result(sharded / "single", tmp_path / "merged")
    assert f"{sweep}: 1 stale job folder left out (an earlier sweep's; multirun.yaml records the last): " \
           "3 (numbered past the last sweep's 3 jobs)" in caplog.text
    assert json.loads((tmp_path / "merged" / "merged_from.json").read_text()) == [str(sweep / str(i)) for i in range(3)]


def test_plan_and_report_of_a_merge_into_an_earlier_runs_folder_use_the_merges_settings(sharded, tmp_path, capsys):
    """A merge into a folder that held a `lipoframe run` left that run's `.hydra/` behind, and `lipoframe plan`
    and `report` read `.hydra/config.yaml` before the merge's `config.yaml`: `lipoframe plan out` re-planned the
    merge with the earlier run's binning (boxes of multiples of 32 instead of the merge's even sizes)."""
    import shutil

    from lipoframe import plancmd, report

    out = tmp_path / "out"
    shutil.copytree(sharded / "single", out)
    assert (out / ".hydra" / "config.yaml").is_file()
    assert merge.main([str(sharded / "shards"), f"output={out}", "binning.rounding=even", "writer=[csv]", NO_REPORT]) == 0
    merged_plan = json.loads((out / "extraction_plan.json").read_text())
    assert any(b["box_px"] % 32 for b in merged_plan["bins"])  # else the check below could not tell the settings apart
    config, text, names = report._config_from_folder(out)
    assert config["binning"]["rounding"] == "even" and list(config["writer"]) == ["csv"], text
    assert names["writer"] == ["csv"]
    capsys.readouterr()
    assert plancmd.main([str(out)]) == 0  # the merged folder re-planned with its own settings
    assert json.loads((out / "extraction_plan.json").read_text())["bins"] == merged_plan["bins"]
    assert not (out / "relion").exists()  # only the merge's writer
    # Nor is the merged folder taken for a run of the earlier run's overrides.
    assert merge.main([str(out), f"output={tmp_path / 'again'}"]) == 2
    assert "no .hydra/overrides.yaml" in capsys.readouterr().err


@pytest.mark.parametrize("killed_in", ["merged_from.json", "copying"])
def test_a_merge_into_an_earlier_runs_folder_killed_as_it_starts_is_named_an_unfinished_merge(sharded, tmp_path, monkeypatch,
                                                                                            capsys, killed_in):
    """A merge into a run's folder wrote merged_from.json as it started and removed the run's `.hydra/` only before
    writing its config.yaml: killed in between (kill -9), the folder was the earlier run's to `lipoframe plan` and
    `report` (they read `.hydra/config.yaml` first), and merge_unfinished() said no merge was left unfinished."""
    import html
    import shutil

    import lipoframe.runner
    from lipoframe import plancmd, report
    from lipoframe.io import atomic

    class Killed(BaseException):  # as kill -9: no handler runs, no run_summary.json
        pass

    def killed_at_the_list(path, text, write_text=atomic.write_text):
        if Path(path).name == merge.MERGED_FROM:
            raise Killed
        return write_text(path, text)

    def killed(*args, **kwargs):
        raise Killed

    out = tmp_path / "out"
    shutil.copytree(sharded / "single", out)
    assert (out / ".hydra" / "config.yaml").is_file() and not merge.is_merged_folder(out)
    merge_it = [str(sharded / "shards"), f"output={out}", "binning.rounding=even", NO_REPORT]
    with monkeypatch.context() as m:
        if killed_in == "copying":
            m.setattr(lipoframe.runner, "load_work", killed)
        else:
            m.setattr(atomic, "write_text", killed_at_the_list)
        with pytest.raises(Killed):
            merge.main(merge_it)
    assert (out / merge.MERGED_FROM).is_file() == (killed_in == "copying")
    assert merge.is_merged_folder(out) and merge.merge_unfinished(out)
    capsys.readouterr()
    assert plancmd.main([str(out)]) == 2
    assert capsys.readouterr().err.strip() == f"lipoframe plan: {out}: {merge.MERGE_UNFINISHED}"
    assert report.cmd_report([str(out), "--no-overlays"]) == 0
    page = " ".join(html.unescape(re.sub(r"<[^>]+>", " ", (out / "report.html").read_text())).split())
    assert "Interrupted : the merge did not finish" in page, page[:3000]
    # as it says: the merge again finishes it, and leaves nothing of the earlier run's record
    assert merge.main(merge_it) == 0
    assert not merge.merge_unfinished(out) and merge.is_merged_folder(out)
    assert sorted(p.name for p in out.glob(".hydra*")) == []
    assert plancmd.load_saved_config(out)[0]["binning"]["rounding"] == "even"


@pytest.mark.parametrize("record", ["hydra.output_subdir=null", "hydra.output_subdir=.hydra"])
def test_a_run_into_a_merged_folder_drops_the_merges_record_once_its_results_are_in(sharded, tmp_path, record):
    """A run into a merged folder left merged_from.json: with hydra.output_subdir=null (no `.hydra/` record) the folder
    stayed a merge's to plan and report (is_merged_folder) although the run had replaced its results."""
    out = tmp_path / "out"
    assert merge.main([str(sharded / "shards"), f"output={out}", NO_REPORT]) == 0
    merged_picks = (out / "picks.csv").read_bytes()
    run_it = [f"output={out}", "runner.workers=1", *RUN_ARGS, record]
    # A run that makes no dataset (its only micrograph fails): the merge's outputs stay, and so does its record.
    (tmp_path / "bad.mrc").write_bytes(b"not a micrograph")
    assert app.run([f"input={tmp_path / 'bad.mrc'}", *run_it]) == 1
    assert (out / "picks.csv").read_bytes() == merged_picks and (out / merge.MERGED_FROM).is_file()
    # Once a run's results are in place the folder is the run's.
    assert app.run([f"input={sharded / 'in' / 'a' / 'mic_000.mrc'}", *run_it]) == 0
    assert (out / "picks.csv").read_bytes() != merged_picks
    assert not merge.is_merged_folder(out) and not (out / merge.MERGED_FROM).exists()


def test_the_report_of_a_copied_merge_says_where_it_was_made_also_after_a_plan_of_the_copy(sharded, tmp_path, monkeypatch,
                                                                                         capsys):
    """`lipoframe merge ... output=merged` (relative), `cp -r merged copy`, `lipoframe plan copy`: the plan wrote the copy
    into run_summary.json's out_dir, the only absolute record of where the merge was made (no `.hydra/`, and its
    config.yaml says `output: merged`), and the report of the copy no longer said it was copied or moved."""
    import shutil

    from lipoframe import plancmd, report

    monkeypatch.chdir(tmp_path)
    assert merge.main([str(sharded / "shards"), "output=merged", NO_REPORT]) == 0
    shutil.copytree(tmp_path / "merged", tmp_path / "copy")
    said = f"# this run folder is now {tmp_path / 'copy'}; it was made as {tmp_path / 'merged'} (copied or moved since)"
    assert said in report.load_run(tmp_path / "copy").config_text  # as before the plan
    assert plancmd.main(["copy"]) == 0
    summary = json.loads((tmp_path / "copy" / "run_summary.json").read_text())
    assert summary["out_dir"] == str(tmp_path / "copy")  # as the copy's notes name it
    assert said in report.load_run(tmp_path / "copy").config_text
    # a copy of the copy, planned again: made where the merge was
    shutil.copytree(tmp_path / "copy", tmp_path / "copy2")
    assert plancmd.main(["copy2"]) == 0
    assert said.replace("copy", "copy2") in report.load_run(tmp_path / "copy2").config_text
    # planned where it was made: nothing to say
    assert plancmd.main(["merged"]) == 0
    assert "copied or moved" not in report.load_run(tmp_path / "merged").config_text
    capsys.readouterr()


def test_merge_finds_the_shards_of_a_sweep_into_subfolders_of_the_users_interpolation(tmp_path, capsys):
    """hydra.sweep.subdir=${hydra.job.override_dirname}: each shard's folder is named by its overrides, input=/... and
    output=/... among them, so it is nested under input=/: merge found no run folder in the sweep folder."""
    write_set(tmp_path / "in", 3)
    (tmp_path / "in" / "mic_001.mrc").write_bytes(b"not an mrc file" * 20)
    sweep = tmp_path / "shards"
    args = [f"input={tmp_path / 'in'}", "runner.workers=1", *RUN_ARGS, f"output={sweep}"]
    # the exit code says a shard failed a micrograph, as for shards in the sweep folder's children
    assert app.run(["-m", *args, "shard.count=2", "shard.index=0,1", "hydra.sweep.subdir=${hydra.job.override_dirname}"]) == 1
    assert not any((p / "inputs.json").is_file() for p in sweep.iterdir())
    assert app._sweep_failed(sweep) == 1  # what a launcher's jobs in other processes (submitit) report by
    capsys.readouterr()
    assert merge.main([str(sweep), f"output={tmp_path / 'merged'}", NO_REPORT]) == 1
    assert "micrographs  ok 2  skipped 0  failed 1" in capsys.readouterr().out
    shards = json.loads((tmp_path / "merged" / "merged_from.json").read_text())
    assert [json.loads((Path(s) / "inputs.json").read_text())["shard"]["index"] for s in shards] == [0, 1]
    assert all("shard.index=" in s for s in shards)


def test_a_merge_stopped_while_drawing_its_report_says_so_in_run_summary(sharded, monkeypatch):
    # As a run's: the picks, exports and plan are complete, but run_summary.json said the merge was done with its
    # report (interrupted: false), and nothing said `lipoframe report` writes it
    from lipoframe import report
    from lipoframe.cli import main

    out = sharded / "merged_report_stopped"

    def ctrl_c(job, readers=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(report, "render_job", ctrl_c)
    assert main(["merge", str(sharded / "shards"), f"output={out}", "runner.workers=1", "runner.report=true"]) == 130
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["interrupted"] is True
    said = [n for n in summary["notes"] if n.startswith("interrupted while writing the report")]
    assert len(said) == 1 and f"`lipoframe report {out}` writes it" in said[0], summary["notes"]
