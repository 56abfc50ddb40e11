"""Streaming with ``watch=true``: files are picked once completely written, the
dataset-level outputs are updated as it goes, and a stop file ends it cleanly."""

from __future__ import annotations

import json
import logging
import os
import threading
import time

import pandas as pd
import pytest
from scale_data import RUN_ARGS, write_set

from lipoframe.merge import compose_config
from lipoframe.runner import run_pipeline
from lipoframe.watch import FolderWatcher, assign_name


@pytest.fixture(autouse=True)
def _no_plugins(monkeypatch):
    monkeypatch.setenv("LIPOFRAME_LOAD_PLUGINS", "")


def watch_while(actor, watched, out, *, poll: float, stable_polls: int, update_every: int, overrides=()):
    """Run a ``watch=true`` session on ``watched`` while ``actor`` (which ends it) runs in a thread.

    An actor that raises ends the session with the stop file, and its error
    is raised here (the session would otherwise watch for ever).
    """
    _, cfg = compose_config([
        f"input={watched}", *RUN_ARGS, "runner.workers=1", "watch=true", *overrides,
        f"stream.poll_seconds={poll}", f"stream.stable_polls={stable_polls}", f"stream.update_every={update_every}",
    ])
    errors = []

    def guarded():
        try:
            actor()
        except BaseException as exc:  # noqa: BLE001 - raised again in the test's thread
            errors.append(exc)
            out.mkdir(parents=True, exist_ok=True)
            (out / "STOP").touch()

    thread = threading.Thread(target=guarded)
    thread.start()
    try:
        result = run_pipeline(cfg, out)
    finally:
        thread.join()
    if errors:
        raise errors[0]
    return result


def watch_command(inp, out, *overrides) -> list[str]:
    """The command line of `lipoframe run watch=true` on ``inp`` into ``out`` (one worker; ``overrides`` last)."""
    import sys

    return [sys.executable, "-m", "lipoframe", "run", f"input={inp}", f"output={out}", "watch=true", "runner.workers=1",
            *RUN_ARGS, *overrides]


def wait_until_saved(proc, out, names, timeout: float = 90) -> None:
    """Wait until the watch session ``proc`` (still running) has saved the results of the micrographs ``names``."""
    deadline = time.monotonic() + timeout
    while not all((out / "micrographs" / f"{name}.json").exists() for name in names):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.1)


def _slow_copy(src, dst, *, pause):
    """Copy in two halves with a pause, as a transfer over the network would."""
    data = src.read_bytes()
    with open(dst, "wb") as f:
        f.write(data[: len(data) // 2])
        f.flush()
        time.sleep(pause)
        f.write(data[len(data) // 2 :])


def test_watch_picks_files_as_they_arrive_and_stops_on_the_stop_file(tmp_path):
    sources = write_set(tmp_path / "source", 4)
    watched = tmp_path / "incoming"
    watched.mkdir()
    out = tmp_path / "out"
    stop = out / "STOP"
    poll = 0.25
    seen = {}

    def microscope():
        time.sleep(2 * poll)
        for i, src in enumerate(sources):
            # the last copy stalls for longer than the stability window: it may be
            # read half-written once, and must then be picked again when complete
            _slow_copy(src, watched / src.name, pause=0.05 if i < 3 else 4 * poll)
            time.sleep(poll)
        # with update_every=2 the plan is written while watching, before any stop
        deadline = time.monotonic() + 60
        while not (out / "extraction_plan.json").exists() and time.monotonic() < deadline:
            time.sleep(poll)
        seen["plan_before_stop"] = (out / "extraction_plan.json").exists()
        stop.parent.mkdir(parents=True, exist_ok=True)
        stop.touch()

    result = watch_while(microscope, watched, out, poll=poll, stable_polls=2, update_every=2)
    assert seen["plan_before_stop"]
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["micrographs"]["ok"] + summary["micrographs"]["skipped"] == 4
    assert summary["micrographs"]["failed"] == 0, summary["failures"]
    assert result.ok

    # the same as a batch run over the finished folder
    _, batch_cfg = compose_config([f"input={watched}", *RUN_ARGS, "runner.workers=1"])
    run_pipeline(batch_cfg, tmp_path / "batch")
    assert (out / "picks.csv").read_bytes() == (tmp_path / "batch" / "picks.csv").read_bytes()
    assert json.loads((out / "extraction_plan.json").read_text()) == json.loads((tmp_path / "batch" / "extraction_plan.json").read_text())


def test_watcher_waits_until_a_file_stops_changing(tmp_path):
    w = FolderWatcher([str(tmp_path)], (".mrc",), stable_polls=2)
    f = tmp_path / "a.mrc"
    f.write_bytes(b"x" * 10)
    assert w.poll() == [] and w.unsettled() == 1
    with open(f, "ab") as fh:
        fh.write(b"y" * 10)  # still growing
    assert w.poll() == []
    assert w.poll() == [f]  # unchanged over two scans
    assert w.poll() == [] and w.unsettled() == 0  # handed out once
    with open(f, "ab") as fh:
        fh.write(b"z")  # replaced or completed after a failed read: handed out again once stable
    assert w.poll() == [] and w.unsettled() == 1
    assert w.poll() == [f]
    (tmp_path / ".a.mrc.part").write_bytes(b"z")  # hidden temporary files are ignored
    assert w.poll() == [] and w.unsettled() == 0


def test_watch_names_never_change_for_files_already_named(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = assign_name(tmp_path / "a" / "mic.mrc", set())
    second = assign_name(tmp_path / "b" / "mic.mrc", {first})
    assert first == "mic" and second == "b-mic"
    third = assign_name(tmp_path / "b" / "img.mrc", {"img", "a-img"})
    assert third == "b-img" and "__" not in second + third  # EMAN2 drops what follows __ (see test_runner)
    assert assign_name(tmp_path / "b" / "mic.mrc", {first, second}) not in {first, second}


def test_watch_needs_an_input(tmp_path):
    from lipoframe.records import InputError

    _, cfg = compose_config([*RUN_ARGS, "watch=true"])
    with pytest.raises(InputError, match="watch=true needs input"):
        run_pipeline(cfg, tmp_path / "out")


def test_watch_stops_after_idle_timeout(tmp_path):
    write_set(tmp_path / "in", 1)
    _, cfg = compose_config([
        f"input={tmp_path / 'in'}", *RUN_ARGS, "runner.workers=1", "watch=true",
        "stream.poll_seconds=0.1", "stream.stable_polls=1", "stream.idle_timeout=0.5",
    ])
    result = run_pipeline(cfg, tmp_path / "out")
    assert [r.status for r in result.results] == ["ok"]
    assert (tmp_path / "out" / "picks.csv").is_file()


def test_a_stop_file_left_by_an_earlier_session_is_told_at_the_start(tmp_path, caplog):
    # The session picks what is there and ends at once: on no terminal (a batch job) this was said nowhere
    # but in lipoframe.log, and a session meant to watch for hours ended after its first scan.
    write_set(tmp_path / "in", 1)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "STOP").touch()
    _, cfg = compose_config([
        f"input={tmp_path / 'in'}", *RUN_ARGS, "runner.workers=1", "watch=true",
        "stream.poll_seconds=0.1", "stream.stable_polls=1",
    ])
    with caplog.at_level("WARNING", logger="lipoframe"):
        result = run_pipeline(cfg, tmp_path / "out")
    assert [r.status for r in result.results] == ["ok"]
    told = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "stop file" in r.getMessage()]
    assert told == [f"the stop file {tmp_path / 'out' / 'STOP'} is already there (an earlier session's?): this session "
                    "picks the files in the input now and stops; remove it to keep watching"]


def test_a_watch_session_without_report_removes_an_earlier_runs_report(tmp_path, caplog):
    # as a batch run with runner.report=false does: the earlier report showed other picks
    write_set(tmp_path / "in", 1)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "report.html").write_text("<html>an earlier run</html>")
    _, cfg = compose_config([
        f"input={tmp_path / 'in'}", *RUN_ARGS, "runner.workers=1", "watch=true",
        "stream.poll_seconds=0.1", "stream.stable_polls=1", "stream.idle_timeout=0.5",
    ])
    with caplog.at_level("WARNING", logger="lipoframe"):
        run_pipeline(cfg, tmp_path / "out")
    assert not (tmp_path / "out" / "report.html").exists()
    assert f"`lipoframe report {tmp_path / 'out'}` writes this run's" in caplog.text


def test_a_second_watch_session_over_a_relative_folder_resumes_with_the_same_names(tmp_path, monkeypatch):
    write_set(tmp_path / "in" / "a", 1, prefix="mic")
    write_set(tmp_path / "in" / "b", 1, prefix="mic")
    monkeypatch.chdir(tmp_path)
    args = ["input=[in/a,in/b]", *RUN_ARGS, "runner.workers=1", "watch=true",
            "stream.poll_seconds=0.1", "stream.stable_polls=1", "stream.idle_timeout=0.5"]
    first = run_pipeline(compose_config(args)[1], tmp_path / "out")
    names = sorted(r.name for r in first.results)
    assert len(names) == 2 and [r.status for r in first.results] == ["ok", "ok"]
    again = run_pipeline(compose_config(args)[1], tmp_path / "out")
    assert sorted(r.name for r in again.results) == names
    assert {r.status for r in again.results} == {"skipped"}


def test_a_restarted_watch_session_says_it_kept_the_earlier_sessions_micrographs_rather_than_picked_them(tmp_path, caplog):
    """The first round of a restarted session said `picked 2 micrograph(s)` of the two an earlier session
    had picked, though it only took their saved results (the summary counts them as skipped)."""
    write_set(tmp_path / "in", 2)
    args = [f"input={tmp_path / 'in'}", *RUN_ARGS, "runner.workers=1", "watch=true",
            "stream.poll_seconds=0.1", "stream.stable_polls=1", "stream.idle_timeout=0.5"]
    run_pipeline(compose_config(args)[1], tmp_path / "out")
    write_set(tmp_path / "in", 1, seed=5, prefix="new")  # arrived while no session watched
    with caplog.at_level("INFO", logger="lipoframe"):
        again = run_pipeline(compose_config(args)[1], tmp_path / "out")
    assert sorted(r.status for r in again.results) == ["ok", "skipped", "skipped"]
    rounds = [r.getMessage() for r in caplog.records if r.getMessage().startswith("picked ")]
    assert rounds == ["picked 1 micrograph(s), kept 2 done before; 3 seen, 0 failed"], rounds


def test_a_watch_sessions_summary_says_how_long_its_report_took(tmp_path):
    """A batch run's summary ends with `report  ... s more: N overlays drawn`; a watch session drew its
    report after printing the summary without a word, so the command seemed to hang once it had said
    it was done (about 10 s for six 1024² micrographs)."""
    from lipoframe.runner import format_summary

    write_set(tmp_path / "in", 2)
    args = [f"input={tmp_path / 'in'}", *RUN_ARGS, "runner.workers=1", "watch=true", "runner.report=true",
            "stream.poll_seconds=0.1", "stream.stable_polls=1", "stream.idle_timeout=0.5"]
    result = run_pipeline(compose_config(args)[1], tmp_path / "out")
    assert (tmp_path / "out" / "report.html").is_file()
    assert result.summary()["report"]["overlays_drawn"] == 2
    assert "\nreport       " in format_summary(result.summary())


def test_a_watch_session_stopped_while_drawing_its_report_says_so_in_run_summary(tmp_path, monkeypatch):
    # as a batch run's: the picks, exports and plan are complete, but run_summary.json must not say the session
    # ended with its report
    import json

    from lipoframe import report

    def ctrl_c(job, readers=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(report, "render_job", ctrl_c)
    write_set(tmp_path / "in", 2)
    args = [f"input={tmp_path / 'in'}", *RUN_ARGS, "runner.workers=1", "watch=true", "runner.report=true",
            "stream.poll_seconds=0.1", "stream.stable_polls=1", "stream.idle_timeout=0.5"]
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(compose_config(args)[1], tmp_path / "out")
    summary = json.loads((tmp_path / "out" / "run_summary.json").read_text())
    assert summary["interrupted"] is True and summary["micrographs"]["ok"] == 2
    said = [n for n in summary["notes"] if n.startswith("interrupted while writing the report (0 of 2 overlays drawn)")]
    assert said == [f"interrupted while writing the report (0 of 2 overlays drawn): the picks, exports and extraction "
                    f"plan are complete; `lipoframe report {tmp_path / 'out'}` writes it"], summary["notes"]


def test_a_watch_session_gives_no_picking_rate_made_of_its_waiting_time(tmp_path):
    """The summary said `(8.57 s per micrograph over the whole run ...)` of a session that picked two 1024²
    micrographs in about a second each and waited for files the rest of its 17 s; report.html likewise
    divided the session's time by the micrographs picked."""
    from lipoframe.runner import format_summary

    write_set(tmp_path / "in", 1)
    args = [f"input={tmp_path / 'in'}", *RUN_ARGS, "runner.workers=1", "watch=true", "runner.report=true",
            "stream.poll_seconds=0.1", "stream.stable_polls=1", "stream.idle_timeout=1.5"]
    result = run_pipeline(compose_config(args)[1], tmp_path / "out")
    saved = json.loads((tmp_path / "out" / "run_summary.json").read_text())
    assert saved["watch"] is True and saved["micrographs_per_s"] is None and saved["seconds"] > 1.5
    text = format_summary(result.summary())
    assert "over the whole run" not in text and "per micrograph" not in text
    assert "watching, waiting for files included" in text
    page = (tmp_path / "out" / "report.html").read_text()
    assert "per micrograph picked" not in page and "waiting for files included" in page


def test_watch_stops_cleanly_on_sigterm(tmp_path):
    """SIGTERM (as at the end of a SLURM job, like Ctrl-C) ends a watch with final outputs and exit code 0."""
    import signal
    import subprocess

    from scale_data import env

    write_set(tmp_path / "in", 2)
    out = tmp_path / "out"
    cmd = watch_command(tmp_path / "in", out, "stream.poll_seconds=0.2")
    proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until_saved(proc, out, ["mic_000", "mic_001"])
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert "micrographs  ok 2" in stdout
    assert (out / "picks.csv").is_file() and (out / "extraction_plan.json").is_file()


def test_watch_without_a_terminal_logs_one_line_per_round(tmp_path):
    """Under nohup or a batch system (stderr a file, not a terminal) a watch session printed nothing until it
    ended: a user tailing the log could not tell it was watching, nor what it had picked. Now it prints
    what it does, as on a terminal: one line as it starts, one per round of picks, one as it stops,
    and none per scan of the folder (a scan every 0.2 s here)."""
    import re
    import subprocess

    from scale_data import env

    write_set(tmp_path / "in", 2)
    out = tmp_path / "out"
    cmd = watch_command(tmp_path / "in", out, "stream.poll_seconds=0.2", "runner.progress=true")
    with open(tmp_path / "log", "w") as log_file:
        proc = subprocess.Popen(cmd, env=env(), stdout=log_file, stderr=subprocess.STDOUT, text=True)
        wait_until_saved(proc, out, ["mic_000", "mic_001"])
        time.sleep(1.0)  # a few more scans with nothing new
        (out / "STOP").touch()
        assert proc.wait(timeout=60) == 0
    lines = (tmp_path / "log").read_text().splitlines()
    said = [re.sub(r"^lipoframe: \d\d:\d\d:\d\d ", "", ln) for ln in lines if re.match(r"lipoframe: \d\d:\d\d:\d\d ", ln)]
    assert said[0] == f"watching {tmp_path / 'in'} (stop with Ctrl-C or by creating {out / 'STOP'})", lines
    rounds = [ln for ln in said if ln.startswith("picked ")]
    assert 1 <= len(rounds) <= 2 and rounds[-1] == "picked 1 micrograph(s); 2 seen, 0 failed" or rounds == [
        "picked 2 micrograph(s); 2 seen, 0 failed"], lines
    assert said[1:] == [*rounds, f"stopping (found the stop file {out / 'STOP'}); writing the dataset-level outputs"], lines
    assert any(ln.startswith("micrographs  ok 2") for ln in lines)


def test_watch_with_runner_progress_false_prints_only_the_summary(tmp_path, run_cli):
    # in this process: its stderr is pytest's capture, not a terminal, as the test above's log file
    import re

    write_set(tmp_path / "in", 1)
    out = tmp_path / "out"
    (out).mkdir()
    (out / "STOP").touch()  # picks what is there and stops
    code, stdout, stderr = run_cli(*watch_command(tmp_path / "in", out, "stream.poll_seconds=0.2", "runner.progress=false")[3:])
    assert code == 0, stderr
    assert not re.search(r"^lipoframe: \d\d:\d\d:\d\d ", stderr, flags=re.M), stderr  # no progress lines
    assert "micrographs  ok 1" in stdout


def test_watch_stopped_by_sigterm_names_the_files_it_did_not_pick(tmp_path):
    """A file copied in just before SIGTERM (not yet unchanged over stream.stable_polls scans) was left
    out of the final outputs without a word, exit code 0: the session looked complete."""
    import signal
    import subprocess

    from scale_data import env, image
    from conftest import write_mrc

    write_set(tmp_path / "in", 1)
    out = tmp_path / "out"
    # Scans 5 s apart: the file written below is not seen by a scan before the SIGTERM. A file is ready at the
    # first scan that sees it (stream.stable_polls=1), so mic_000 is picked without waiting for a second scan.
    cmd = watch_command(tmp_path / "in", out, "stream.poll_seconds=5", "stream.stable_polls=1")
    proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until_saved(proc, out, ["mic_000"])
    late = write_mrc(tmp_path / "in" / "mic_001.mrc", image(1))
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert "micrographs  ok 1" in stdout
    notes = json.loads((out / "run_summary.json").read_text())["notes"]
    said = [n for n in notes if "not picked" in n]
    assert len(said) == 1 and said[0].startswith("1 file(s) of the input were not picked") and str(late) in said[0]
    assert "NOTE   " + said[0] in stdout


def test_watch_stopped_by_sigterm_names_the_ready_files_its_last_round_did_not_start(tmp_path):
    """A session started on a folder of finished micrographs hands them out in one round; stopped during
    it, the summary said `ok 1 ... (total 8)` and nothing of the other files: only files still being
    written were named as not picked."""
    import signal
    import subprocess

    from scale_data import env

    write_set(tmp_path / "in", 8)
    out = tmp_path / "out"
    proc = subprocess.Popen(watch_command(tmp_path / "in", out, "stream.poll_seconds=0.2"), env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until_saved(proc, out, ["mic_000"])
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    summary = json.loads((out / "run_summary.json").read_text())
    picked = sorted(p.stem for p in (out / "micrographs").glob("*.json"))
    left = 8 - len(picked)
    assert summary["micrographs"]["ok"] == len(picked) and 0 < left, (picked, stdout)
    said = [n for n in summary["notes"] if "not picked" in n]
    assert len(said) == 1 and said[0].startswith(f"{left} file(s) of the input were not picked"), summary["notes"]
    first = next(f"mic_{i:03d}" for i in range(8) if f"mic_{i:03d}" not in picked)
    assert str(tmp_path / "in" / f"{first}.mrc") in said[0]
    assert "NOTE   " + said[0] in stdout


def test_watcher_pending_lists_new_and_changed_files_without_handing_them_out(tmp_path):
    a, b = tmp_path / "a.mrc", tmp_path / "b.mrc"
    a.write_bytes(b"x" * 10)
    w = FolderWatcher([str(tmp_path)], (".mrc",), stable_polls=2)
    assert w.poll() == []
    assert w.pending() == [a]  # seen once, not ready
    assert w.poll() == [a]
    assert w.pending() == []
    b.write_bytes(b"y" * 10)  # written after the last scan
    assert w.pending() == [b]
    a.write_bytes(b"x" * 20)  # changed since it was handed out
    assert w.pending() == [a, b]
    assert w.poll() == [] and w.poll() == [a, b]  # pending() changed nothing


def test_watcher_tells_once_of_a_file_reached_again_through_a_link(tmp_path, caplog):
    """A watched RELION Import/ folder beside the originals: the link was dropped without a word
    (a batch run warns; README)."""
    (tmp_path / "raw").mkdir()
    (tmp_path / "Import").mkdir()
    f = tmp_path / "raw" / "a.mrc"
    f.write_bytes(b"x" * 10)
    (tmp_path / "Import" / "a.mrc").symlink_to(f)
    w = FolderWatcher([str(tmp_path / "raw"), str(tmp_path / "Import")], (".mrc",), stable_polls=1)
    with caplog.at_level(logging.WARNING, logger="lipoframe"):
        assert w.poll() == [f]
        assert w.poll() == []
    told = [r.getMessage() for r in caplog.records if "the same file as" in r.getMessage()]
    assert told == [f"{tmp_path}/Import/a.mrc: the same file as {f}, picked once"]


def test_a_link_appearing_later_to_a_picked_file_leaves_it_picked_under_its_name(tmp_path, caplog):
    """A second path to a file already picked (a link that sorts first, here made twice) took its
    place: the file was reported 'no longer in the input (deleted or renamed); its picks are left
    out' although it was still there, and picked again under the link's name."""
    import logging

    f = tmp_path / "m3.mrc"
    f.write_bytes(b"x" * 10)
    w = FolderWatcher([str(tmp_path)], (".mrc",), stable_polls=1)
    assert w.poll() == [f]
    (tmp_path / "link3.mrc").symlink_to("m3.mrc")
    (tmp_path / "link3b.mrc").symlink_to(f)
    with caplog.at_level(logging.WARNING, logger="lipoframe"):
        assert w.poll() == [] and w.gone == []
        assert w.poll() == [] and w.gone == []
    assert w.present() == [f]
    told = sorted(r.getMessage() for r in caplog.records if "the same file as" in r.getMessage())
    assert told == [f"{tmp_path}/link3.mrc: the same file as {f}, picked once",
                    f"{tmp_path}/link3b.mrc: the same file as {f}, picked once"]


def test_watcher_reports_files_that_are_gone_and_hands_them_out_again_when_back(tmp_path):
    w = FolderWatcher([str(tmp_path)], (".mrc",), stable_polls=1)
    f = tmp_path / "a.mrc"
    f.write_bytes(b"x" * 10)
    assert w.poll() == [f] and w.gone == []
    f.rename(tmp_path / "a.keep")
    assert w.poll() == [] and w.gone == [f]
    assert w.poll() == [] and w.gone == []  # reported once
    (tmp_path / "a.keep").rename(f)  # back, unchanged (a rename keeps the mtime)
    assert w.poll() == [f]


def test_a_renamed_or_deleted_file_leaves_the_watched_dataset(tmp_path):
    """A file renamed while watching is picked under its new name and its old picks are not
    exported too; a deleted file's picks are left out: the session ends as a batch run over
    the finished folder would."""
    watched = tmp_path / "incoming"
    sources = write_set(watched, 3)
    out = tmp_path / "out"
    poll = 0.2
    seen = {}

    def user():
        deadline = time.monotonic() + 90
        while not all((out / "micrographs" / f"{s.stem}.json").exists() for s in sources) and time.monotonic() < deadline:
            time.sleep(poll)
        sources[1].rename(watched / "renamed.mrc")
        sources[2].unlink()
        while not (out / "micrographs" / "renamed.json").exists() and time.monotonic() < deadline:
            time.sleep(poll)
        seen["renamed"] = (out / "micrographs" / "renamed.json").exists()
        time.sleep(3 * poll)
        (out / "STOP").touch()

    result = watch_while(user, watched, out, poll=poll, stable_polls=1, update_every=1)
    assert seen["renamed"]
    assert sorted(r.name for r in result.results) == ["mic_000", "renamed"]
    _, batch_cfg = compose_config([f"input={watched}", *RUN_ARGS, "runner.workers=1"])
    run_pipeline(batch_cfg, tmp_path / "batch")
    assert (out / "picks.csv").read_bytes() == (tmp_path / "batch" / "picks.csv").read_bytes()
    coords = sorted(p.name for p in (out / "relion" / "coords").iterdir())
    assert coords == ["mic_000_autopick.star", "renamed_autopick.star"]


def _one_micrograph_and_its_maps_folder(tmp_path):
    """A watched folder with one 384 x 384 micrograph (its path), an empty maps folder, the output folder,
    and the heatmap-detector overrides that read the maps."""
    watched = tmp_path / "incoming"
    (src,) = write_set(watched, 1)
    maps = tmp_path / "maps"
    maps.mkdir()
    overrides = ["detector=heatmap", f"detector.folder={maps}", "detector.pattern=_prob.npy", "refiner=none", "filter=[diameter_range]"]
    return src, maps, tmp_path / "out", overrides


def _disc_map(row: int, col: int):
    """A 384 x 384 probability map: 1 on a disc of radius 40 px centred on (row, col)."""
    import numpy as np

    yy, xx = np.mgrid[0:384, 0:384]
    return ((yy - row) ** 2 + (xx - col) ** 2 <= 40**2).astype(np.float32)


def test_a_micrograph_whose_heatmap_comes_later_is_picked_when_it_comes(tmp_path, monkeypatch):
    """Streaming with a network: the map is written after its micrograph. The micrograph fails
    while its map is missing and is picked once the map is there, without being touched.

    The network waits on the session's picks, not on the clock: before, it polled the log and
    the output folder with one 90 s deadline for both waits, and touched the stop file when that
    ran out; on a loaded machine the session stopped with the micrograph still failed. It
    also wrote the map in place, so a scan could pick with a half-written map once more."""
    import numpy as np

    import lipoframe.runner

    src, maps, out, overrides = _one_micrograph_and_its_maps_folder(tmp_path)
    attempts = []  # (status, error) of every pick of the session, in order
    picked = threading.Condition()
    run_jobs = lipoframe.runner.run_jobs

    def recording_run_jobs(*args, **kwargs):
        done, interrupted = run_jobs(*args, **kwargs)
        with picked:
            attempts.extend((r.status, r.error) for r in done)
            picked.notify_all()
        return done, interrupted

    monkeypatch.setattr(lipoframe.runner, "run_jobs", recording_run_jobs)

    def network():
        timeout = 240  # a guard against a hang on a loaded machine, not a timing check
        with picked:
            assert picked.wait_for(lambda: attempts, timeout=timeout), "the micrograph was never picked"
        part = maps / "mic_000_prob.part"  # written in full, then renamed in as the map
        with open(part, "wb") as f:
            np.save(f, _disc_map(150, 200))
        os.replace(part, maps / "mic_000_prob.npy")
        with picked:
            assert picked.wait_for(lambda: len(attempts) > 1, timeout=timeout), "not picked again when its map came"
        (out / "STOP").touch()

    result = watch_while(network, src.parent, out, poll=0.2, stable_polls=1, update_every=1, overrides=overrides)
    assert [status for status, _ in attempts] == ["failed", "ok"], attempts
    assert "no heatmap matches" in attempts[0][1]
    assert [r.status for r in result.results] == ["ok"], [r.error for r in result.results]
    assert len(result.picks) == 1 and src.exists()


def test_a_picked_micrograph_is_picked_again_when_its_heatmap_is_replaced(tmp_path):
    """A network re-run (a better model) writes new maps during the session. Before, the
    micrographs picked with the old maps kept those picks until a resume."""
    import numpy as np

    src, maps, out, overrides = _one_micrograph_and_its_maps_folder(tmp_path)
    poll = 0.2
    seen = {}
    np.save(maps / "mic_000_prob.npy", _disc_map(150, 200))
    # The first map was written a while ago: input stamps (as resume's) hold whole seconds, and a
    # map of the same size rewritten within the second it was written cannot be told apart.
    old = time.time() - 60
    os.utime(maps / "mic_000_prob.npy", (old, old))
    table = out / "micrographs" / "mic_000.csv"

    def network():
        deadline = time.monotonic() + 240  # a guard against a hang on a loaded machine, not a timing check
        while not table.exists() and time.monotonic() < deadline:
            time.sleep(poll)
        seen["first"] = pd.read_csv(table)[["x_px", "y_px"]].round().values.tolist()
        np.save(maps / "mic_000_prob.npy", _disc_map(250, 100))
        while time.monotonic() < deadline and pd.read_csv(table)[["x_px", "y_px"]].round().values.tolist() == seen["first"]:
            time.sleep(poll)
        (out / "STOP").touch()

    result = watch_while(network, src.parent, out, poll=poll, stable_polls=1, update_every=1, overrides=overrides)
    assert seen["first"] == [[200.0, 150.0]]
    assert [r.status for r in result.results] == ["ok"] and src.exists(), [r.error for r in result.results]
    assert pd.read_csv(out / "picks.csv")[["x_px", "y_px"]].round().values.tolist() == [[100.0, 250.0]]


def test_heatmaps_in_the_watched_folder_are_not_picked_as_micrographs(tmp_path):
    """Maps written next to the micrographs (detector.folder empty), even one that arrives before
    its micrograph, end up as maps and not as micrographs of their own."""
    import numpy as np

    sources = write_set(tmp_path / "source", 2)
    watched = tmp_path / "incoming"
    watched.mkdir()
    out = tmp_path / "out"
    poll = 0.2
    yy, xx = np.mgrid[0:384, 0:384]
    disc = ((yy - 150) ** 2 + (xx - 200) ** 2 <= 40**2).astype(np.float32)
    np.save(watched / "mic_000_prob.npy", disc)
    (watched / "mic_000.mrc").write_bytes(sources[0].read_bytes())
    np.save(watched / "mic_001_prob.npy", disc)  # its micrograph comes later

    def microscope():
        deadline = time.monotonic() + 90
        while not (out / "micrographs" / "mic_000.json").exists() and time.monotonic() < deadline:
            time.sleep(poll)
        time.sleep(3 * poll)
        (watched / "mic_001.mrc").write_bytes(sources[1].read_bytes())
        while not (out / "micrographs" / "mic_001.json").exists() and time.monotonic() < deadline:
            time.sleep(poll)
        time.sleep(3 * poll)
        (out / "STOP").touch()

    result = watch_while(microscope, watched, out, poll=poll, stable_polls=1, update_every=1,
                         overrides=["detector=heatmap", "detector.pattern=_prob.npy", "refiner=none",
                                    "filter=[diameter_range]", "units=px"])
    assert sorted((r.name, r.status) for r in result.results) == [("mic_000", "ok"), ("mic_001", "ok")]
    assert result.ok and len(result.picks) == 2


def test_a_failed_file_that_changes_again_waits_until_it_is_stable(tmp_path, monkeypatch, caplog):
    """A copy that stalled for longer than the stability window fails once (truncated); when the
    copy goes on, the file is read again only after stable_polls unchanged scans, like any new
    file. Before, the check for a failed micrograph's heatmap or mask also compared the
    micrograph's own size and time, so the file was read at the first scan that saw it change,
    while it could still be being written."""
    import lipoframe.runner
    from lipoframe import watch

    watched = tmp_path / "incoming"
    watched.mkdir()
    (src,) = write_set(tmp_path / "source", 1)
    target = watched / src.name
    out = tmp_path / "out"
    stable_polls = 2
    watchers, counts = [], []
    poll = watch.FolderWatcher.poll
    monkeypatch.setattr(watch.FolderWatcher, "poll", lambda self: watchers.append(self) or poll(self))
    run_jobs = lipoframe.runner.run_jobs

    def counting_run_jobs(jobs, *args, **kwargs):
        # how many consecutive scans had seen each handed-out file unchanged
        counts.extend(watchers[-1]._seen[str(job.path)][1] for job in jobs)
        return run_jobs(jobs, *args, **kwargs)

    monkeypatch.setattr(lipoframe.runner, "run_jobs", counting_run_jobs)
    data = src.read_bytes()

    def transfer():
        deadline = time.monotonic() + 90  # a guard against a hang, not a timing check
        target.write_bytes(data[: len(data) // 2])  # stalls: read, and fails, once stable
        while "not a readable MRC file" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.1)
        part = watched / f".{src.name}.part"  # the rest arrives at once (a hidden file renamed in)
        part.write_bytes(data)
        os.replace(part, target)
        while not (out / "micrographs" / f"{src.stem}.json").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        (out / "STOP").touch()

    result = watch_while(transfer, watched, out, poll=0.2, stable_polls=stable_polls, update_every=1)
    assert [r.status for r in result.results] == ["ok"]
    assert len(counts) == 2 and min(counts) >= stable_polls, counts


@pytest.mark.parametrize("spec", ["Import", "Import/*.mrc", "**/a.mrc"])
def test_watcher_hands_out_a_dangling_link_once_and_again_when_its_target_is_back(tmp_path, spec):
    """A link whose file was deleted was dropped without a word at every scan (a batch run reports it);
    matched by a glob, it still was."""
    (tmp_path / "raw").mkdir()
    (tmp_path / "Import").mkdir()
    f = tmp_path / "raw" / "a.mrc"
    link = tmp_path / "Import" / "a.mrc"
    link.symlink_to(f)  # its target is not there (yet)
    w = FolderWatcher([str(tmp_path / spec)], (".mrc",), stable_polls=1)
    assert w.poll() == [link] and w.gone == []
    assert w.poll() == [] and w.gone == [] and w.unsettled() == 0  # once
    f.write_bytes(b"x" * 10)
    assert w.poll() == [link]  # the file is there: picked
    f.unlink()
    assert w.poll() == [link] and w.gone == []  # left dangling again: reported again, not gone
    assert w.poll() == []


@pytest.mark.parametrize("by", ["folder", "glob"])
def test_a_watch_session_reports_links_left_dangling_as_a_batch_run_does(tmp_path, caplog, by):
    """A watched RELION Import/ folder of links to the micrographs: one link's file was deleted
    before the session, another's after it was picked. Both are 'file not found', once each,
    and failures of the session as of a batch run over the folder. A glob over the folder
    dropped both without a word."""
    raw = tmp_path / "raw"
    sources = write_set(raw, 3)
    watched = tmp_path / "Import"
    watched.mkdir()
    for src in sources:
        (watched / src.name).symlink_to(src)
    sources[1].unlink()
    out = tmp_path / "out"
    poll = 0.2
    spec = watched if by == "folder" else f"'{watched}/*.mrc'"

    def user():
        deadline = time.monotonic() + 90
        picked = [out / "micrographs" / f"{s.stem}.json" for s in (sources[0], sources[2])]
        while not all(p.exists() for p in picked) and time.monotonic() < deadline:
            time.sleep(poll)
        sources[2].unlink()
        time.sleep(8 * poll)
        (out / "STOP").touch()

    with caplog.at_level(logging.ERROR, logger="lipoframe"):
        result = watch_while(user, spec, out, poll=poll, stable_polls=1, update_every=1)
    failed = {r.name: r.error for r in result.results if r.status == "failed"}
    assert failed == {"mic_001": f"{watched / 'mic_001.mrc'}: file not found", "mic_002": f"{watched / 'mic_002.mrc'}: file not found"}
    for name in ("mic_001", "mic_002"):
        assert sum(f"{watched / name}.mrc: file not found" in r.getMessage() for r in caplog.records) == 1
    assert not result.ok
    summary = json.loads((out / "run_summary.json").read_text())
    _, batch_cfg = compose_config([f"input={spec}", *RUN_ARGS, "runner.workers=1"])
    batch = run_pipeline(batch_cfg, tmp_path / "batch")
    assert summary["failures"] == batch.summary()["failures"]
    assert (out / "picks.csv").read_bytes() == (tmp_path / "batch" / "picks.csv").read_bytes()


def test_a_watch_session_with_other_settings_starts_without_the_earlier_outputs(tmp_path):
    """Until its first update, a session with other settings left an earlier run's picks.csv and
    exports in the folder under its own .hydra/ record; a session with the same settings keeps them."""
    watched = tmp_path / "incoming"
    write_set(watched, 2)
    out = tmp_path / "out"
    _, batch_cfg = compose_config([f"input={watched}", *RUN_ARGS, "runner.workers=1"])
    run_pipeline(batch_cfg, out)
    fingerprint = json.loads((out / "inputs.json").read_text())["fingerprint"]
    seen = {}

    def look(key):
        def user():
            deadline = time.monotonic() + 90
            markers = [out / "micrographs" / f"mic_00{i}.json" for i in range(2)]
            while time.monotonic() < deadline:
                try:
                    if all(json.loads(m.read_text())["fingerprint"] != fingerprint for m in markers) or key == "same":
                        break
                except (OSError, ValueError):
                    pass
                time.sleep(0.1)
            time.sleep(0.5)
            seen[key] = (out / "picks.csv").is_file(), (out / "relion" / "autopick.star").is_file()
            (out / "STOP").touch()
        return user

    watch_while(look("same"), watched, out, poll=0.2, stable_polls=1, update_every=100)
    (out / "STOP").unlink()
    assert seen["same"] == (True, True)
    result = watch_while(look("other"), watched, out, poll=0.2, stable_polls=1, update_every=100, overrides=["detector.threshold=7"])
    (out / "STOP").unlink()
    assert seen["other"] == (False, False)
    assert {r.status for r in result.results} == {"ok"} and (out / "picks.csv").is_file()  # written at the end


def test_a_given_pixel_size_the_headers_contradict_is_warned_about_in_a_watch_session(tmp_path, caplog):
    """A batch run warned when pixel_size= differs from the micrographs' headers (binned since?); a watch
    session, which sees its micrographs arrive, said nothing. It checks the first files it picks."""
    from scale_data import image, write_mrc

    write_mrc(tmp_path / "in" / "mic_000.mrc", image(0), pixel_size=3.0)
    _, cfg = compose_config([
        f"input={tmp_path / 'in'}", *RUN_ARGS, "runner.workers=1", "watch=true", "pixel_size=1.5", "units=px",
        "stream.poll_seconds=0.1", "stream.stable_polls=1", "stream.idle_timeout=0.5",
    ])
    with caplog.at_level("WARNING", logger="lipoframe"):
        result = run_pipeline(cfg, tmp_path / "out")
    assert [r.status for r in result.results] == ["ok"]
    expected = (f"pixel_size=1.5 Å/px was given, but the header of {tmp_path / 'in' / 'mic_000.mrc'} gives 3 Å/px (2 "
                "times the given one: micrographs binned since?); the given 1.5 Å/px is used: if the header is right, "
                "run again without pixel_size=")
    assert [r.getMessage() for r in caplog.records if "was given" in r.getMessage()] == [expected]
    summary = json.loads((tmp_path / "out" / "run_summary.json").read_text())
    assert [n for n in summary["notes"] if "was given" in n] == [expected]
    assert summary["run_pixel_size_notes"] == [expected]  # dropped by a `lipoframe plan pixel_size=` as a batch run's


def test_a_watch_session_at_another_pixel_size_keeps_its_note_on_the_picks_it_reused(tmp_path):
    """A batch run keeps in run_summary.json what it did with micrographs picked before at another pixel size; a
    watch session over them only logged it."""
    from scale_data import image, write_mrc

    write_mrc(tmp_path / "in" / "mic_000.mrc", image(0), pixel_size=1.0)
    common = [f"input={tmp_path / 'in'}", *RUN_ARGS, "runner.workers=1", "units=px"]
    _, cfg = compose_config([*common, "pixel_size=1.0"])
    run_pipeline(cfg, tmp_path / "out")
    _, cfg = compose_config([*common, "pixel_size=2", "watch=true", "stream.poll_seconds=0.1", "stream.stable_polls=1",
                             "stream.idle_timeout=0.5"])
    result = run_pipeline(cfg, tmp_path / "out")
    assert [r.status for r in result.results] == ["skipped"]
    expected = ("pixel size changed (1 -> 2 Å/px) for 1 micrograph(s) picked before: their picks are re-used, as picking "
                "in pixels (units=px) does not depend on it; diameter_A and everything in Å (exports, plan, report) are "
                "recomputed")
    summary = json.loads((tmp_path / "out" / "run_summary.json").read_text())
    assert [n for n in summary["notes"] if n.startswith("pixel size changed")] == [expected]
    assert expected in summary["run_pixel_size_notes"]

def test_the_tiff_row_note_is_logged_once_per_watch_session(tmp_path, caplog):
    """With TIFF inputs the note on the exports' row flip was logged at every update of the outputs
    (lipoframe.log: once per update, with the count of the moment); once per session is enough.
    run_summary.json still carries it, with the session's count."""
    from scale_data import image, write_tiff

    from lipoframe.runner import TIFF_ROWS

    watched = tmp_path / "incoming"
    watched.mkdir()
    out = tmp_path / "out"

    def updated_with(n):
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if json.loads((out / "run_summary.json").read_text())["micrographs"]["total"] == n:
                    return
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.1)
        raise AssertionError(f"no update with {n} micrograph(s)")

    def microscope():
        for i in range(3):
            write_tiff(tmp_path / f"mic_{i}.tif", image(i)).rename(watched / f"mic_{i}.tif")
            updated_with(i + 1)
        (out / "STOP").touch()

    with caplog.at_level(logging.INFO, logger="lipoframe"):
        watch_while(microscope, watched, out, poll=0.2, stable_polls=1, update_every=1)
    told = [m for m in caplog.messages if m.startswith(TIFF_ROWS)]
    assert len(told) == 1 and told[0].startswith(f"{TIFF_ROWS} the 1 TIFF micrograph(s)"), told
    notes = json.loads((out / "run_summary.json").read_text())["notes"]
    assert [n for n in notes if n.startswith(TIFF_ROWS)] == [f"{TIFF_ROWS} the 3 TIFF micrograph(s)" + told[0].split("micrograph(s)", 1)[1]]


@pytest.mark.parametrize("report", [False, True])
def test_a_watch_session_in_which_every_micrograph_fails_writes_no_dataset(tmp_path, caplog, report):
    """As a batch run: a session whose files all failed wrote an empty picks.csv, STAR files, plan (and
    report), as if its micrographs held no particles, over an earlier session's outputs."""
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.mrc").write_bytes(b"not an mrc file")
    (tmp_path / "bad" / "b.mrc").write_bytes(b"nor this one")
    dataset = ["picks.csv", "extraction_plan.json", "extraction_plan.md", "sizes.csv", "relion/autopick.star", "report.html"]
    args = [*RUN_ARGS, "runner.workers=1", "watch=true", f"runner.report={str(report).lower()}",
            "stream.poll_seconds=0.1", "stream.stable_polls=1", "stream.idle_timeout=0.5"]
    said = "every micrograph failed (2 of 2): no picks, plan or exports were written"

    fresh = tmp_path / "fresh"
    result = run_pipeline(compose_config([f"input={tmp_path / 'bad'}", *args])[1], fresh)
    assert [r.status for r in result.results] == ["failed", "failed"] and not result.ok
    assert result.errors == [said]
    assert not [f for f in dataset if (fresh / f).exists()]
    assert json.loads((fresh / "run_summary.json").read_text())["errors"] == [said]

    earlier = tmp_path / "earlier"
    write_set(tmp_path / "good", 1)
    first = run_pipeline(compose_config([f"input={tmp_path / 'good'}", *args])[1], earlier)
    assert [r.status for r in first.results] == ["ok"]
    kept = {f: (earlier / f).read_bytes() for f in dataset if f != "report.html" or report}
    with caplog.at_level("ERROR", logger="lipoframe"):
        result = run_pipeline(compose_config([f"input={tmp_path / 'bad'}", *args])[1], earlier)
    assert result.errors == [f"{said}; the earlier run's in {earlier} are as they were"]
    assert result.errors[0] in caplog.text
    assert {f: (earlier / f).read_bytes() for f in dataset if f != "report.html" or report} == kept


def test_a_watch_session_logs_each_warning_and_note_of_its_updates_once(tmp_path, caplog):
    """The dataset-level outputs are written again at each update, and their warnings and notes were logged
    again each time (console and lipoframe.log): the binning's 'fewer than binning.min_picks' and the note on a
    header's 1 Å/px at each update and again as the session stopped; 'every micrograph failed' at each update
    after the micrographs that did not fail were deleted, and again as the session stopped. Each is logged
    once per session now, and again only when its words change; run_summary.json still has them."""
    sources = write_set(tmp_path / "source", 2)

    def summary_with(out, total):
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if json.loads((out / "run_summary.json").read_text())["micrographs"]["total"] == total:
                    return
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.1)
        raise AssertionError(f"no update with {total} micrograph(s)")

    def session(watched, out, user):
        watched.mkdir(exist_ok=True)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="lipoframe"):
            result = watch_while(user, watched, out, poll=0.2, stable_polls=1, update_every=1)
        return result, caplog.messages  # what the console and lipoframe.log are given: the lipoframe logger's records

    def microscope():  # an update with one micrograph, one with two, and the last (the same two)
        for i, src in enumerate(sources):
            (tmp_path / "grown" / src.name).write_bytes(src.read_bytes())
            summary_with(tmp_path / "out", i + 1)
        (tmp_path / "out" / "STOP").touch()

    result, messages = session(tmp_path / "grown", tmp_path / "out", microscope)
    assert result.ok
    binning = [m for m in messages if "fewer than binning.min_picks" in m]
    assert len(binning) == 2 and binning[0] != binning[1], binning  # once for each count of picks
    assert binning[1].split("binning: ")[1] in json.loads((tmp_path / "out" / "extraction_plan.json").read_text())["notes"]
    one = [m for m in messages if "gives exactly 1 Å/px" in m]
    assert len(one) == 1, one
    assert one[0] in json.loads((tmp_path / "out" / "run_summary.json").read_text())["notes"]

    def user():  # one good micrograph, deleted after the first update: then every micrograph left has failed
        summary_with(tmp_path / "out2", 2)
        (tmp_path / "failing" / sources[0].name).unlink()
        summary_with(tmp_path / "out2", 1)
        (tmp_path / "out2" / "STOP").touch()

    (tmp_path / "failing").mkdir()
    (tmp_path / "failing" / sources[0].name).write_bytes(sources[0].read_bytes())
    (tmp_path / "failing" / "bad.mrc").write_bytes(b"not an mrc file")
    result, messages = session(tmp_path / "failing", tmp_path / "out2", user)
    assert len(result.errors) == 1 and result.errors[0].startswith("every micrograph failed (1 of 1): ")
    assert [m for m in messages if m.startswith("every micrograph failed")] == result.errors


NOT_YET = "not counted as failed yet"


def test_a_copy_stalled_longer_than_the_stability_window_is_not_reported_failed_before_it_is_picked(tmp_path, caplog):
    """A copy that stalls half-written for longer than stable_polls scans is read, and fails. It was
    logged as an error and counted among the failures ('1 seen, 1 failed') although the session then
    picked it once the copy went on. It is told once as maybe not finished (a warning), not counted as
    failed, and picked again when it changes; nothing calls it a failure."""
    watched = tmp_path / "incoming"
    watched.mkdir()
    (src,) = write_set(tmp_path / "source", 1)
    target = watched / src.name
    out = tmp_path / "out"
    poll = 0.2
    data = src.read_bytes()

    def transfer():
        deadline = time.monotonic() + 90  # a guard against a hang, not a timing check
        target.write_bytes(data[: len(data) // 2])  # stalls: read, and fails, once stable
        while NOT_YET not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(4 * poll)  # more scans of the same unchanged file: told once
        with open(target, "ab") as f:  # the copy goes on
            f.write(data[len(data) // 2 :])
        while not (out / "micrographs" / f"{src.stem}.json").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        (out / "STOP").touch()

    with caplog.at_level(logging.INFO, logger="lipoframe"):
        result = watch_while(transfer, watched, out, poll=poll, stable_polls=2, update_every=1)
    assert [r.status for r in result.results] == ["ok"] and result.ok
    told = [r for r in caplog.records if NOT_YET in r.getMessage()]
    assert len(told) == 1 and told[0].levelno == logging.WARNING and told[0].getMessage().startswith(f"{target}: ")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    assert any(m.endswith("; 1 seen, 0 failed, 1 not finished yet? (picked again when changed)") for m in caplog.messages)
    assert json.loads((out / "run_summary.json").read_text())["micrographs"]["failed"] == 0


def test_a_file_that_still_fails_when_the_session_stops_is_a_failure_then(tmp_path, caplog):
    """A file that never becomes readable is told once as maybe not finished while watching, and is a
    failure of the session (its error logged once, as a batch run logs it) when the session stops."""
    watched = tmp_path / "incoming"
    write_set(watched, 1)
    bad = watched / "bad.mrc"
    bad.write_bytes(b"not an mrc file")
    out = tmp_path / "out"
    _, cfg = compose_config([f"input={watched}", *RUN_ARGS, "runner.workers=1", "watch=true", "stream.poll_seconds=0.1",
                             "stream.stable_polls=1", "stream.idle_timeout=0.6"])
    with caplog.at_level(logging.INFO, logger="lipoframe"):
        result = run_pipeline(cfg, out)
    assert sorted((r.name, r.status) for r in result.results) == [("bad", "failed"), ("mic_000", "ok")] and not result.ok
    (error,) = [r for r in result.results if r.status == "failed"]
    said = [(r.levelno, r.getMessage()) for r in caplog.records if r.getMessage().startswith(f"{bad}: ")]
    assert said == [(logging.WARNING, said[0][1]), (logging.ERROR, error.error)], said
    assert said[0][1].startswith(f"{error.error}; {NOT_YET}")
    stopping = next(i for i, m in enumerate(caplog.messages) if m.startswith("stopping ("))
    assert caplog.messages.index(error.error) < stopping  # told before the final outputs, as it stopped
    assert any(m.endswith("; 2 seen, 0 failed, 1 not finished yet? (picked again when changed)") for m in caplog.messages)
    assert json.loads((out / "run_summary.json").read_text())["micrographs"]["failed"] == 1


def test_a_child_loggers_message_is_logged_once_per_watch_session_too(caplog):
    """logs.once_each (a watch session's updates: each message once per session) filtered the lipoframe
    logger only: a logger's filter does not see the records its child loggers pass up, so a message of
    lipoframe.polaritycheck (or any module's getLogger(__name__) under lipoframe) was logged at every
    update. A watch session's updates log none today (the polarity check runs in batch runs only).
    Then it filtered lipoframe's loggers only: a plugin writer's warning was logged at every update."""
    import importlib

    from lipoframe.logs import once_each

    importlib.import_module("lipoframe.polaritycheck")  # its module logger exists, as in a session

    said: set = set()
    child = logging.getLogger("lipoframe.polaritycheck")
    plugin = logging.getLogger("lipoframe_plugin_test.writers")  # a plugin's stage, outside lipoframe's loggers
    with caplog.at_level(logging.INFO):
        for _ in range(3):  # three updates of one session
            with once_each(said):
                child.warning("polarity check: the same words")
                logging.getLogger("lipoframe").warning("the runner's own words")
                plugin.warning("a plugin's words")
                logging.warning("words on the root logger")
        child.warning("polarity check: the same words")  # outside the updates: as before
        plugin.warning("a plugin's words")
    assert caplog.messages == ["polarity check: the same words", "the runner's own words", "a plugin's words",
                               "words on the root logger", "polarity check: the same words", "a plugin's words"]
    assert not any(lg.filters for lg in (child, plugin, logging.getLogger("lipoframe"), logging.getLogger()))


def test_an_update_while_watching_lists_a_file_not_finished_apart_from_the_failures(tmp_path):
    """The run_summary.json of an update listed a file told as maybe not finished ('1 not finished yet?' in
    its round's line) among the failures so far. It lists it apart (not_finished) until the session stops,
    when it is a failure if it still fails."""
    watched = tmp_path / "incoming"
    write_set(watched, 1)
    bad = watched / "bad.mrc"
    bad.write_bytes(b"not an mrc file")  # a copy that stalled half-written, as it looks to the session
    out = tmp_path / "out"
    seen = {}

    def user():
        deadline = time.monotonic() + 60  # a guard against a hang, not a timing check
        while time.monotonic() < deadline:
            try:
                summary = json.loads((out / "run_summary.json").read_text())
            except (OSError, ValueError):
                summary = {}
            if summary.get("micrographs", {}).get("total") == 2:
                seen["update"] = summary
                break
            time.sleep(0.1)
        (out / "STOP").touch()

    result = watch_while(user, watched, out, poll=0.1, stable_polls=1, update_every=1)
    update = seen["update"]
    assert update["failures"] == [] and update["micrographs"]["failed"] == 0
    assert [f["micrograph"] for f in update["not_finished"]] == [str(bad)]
    assert update["not_finished"][0]["error"].startswith(f"{bad}: not a readable MRC file")
    assert update["micrographs"]["not_finished"] == 1 and update["micrographs"]["ok"] == 1
    final = json.loads((out / "run_summary.json").read_text())  # stopped, and it still fails: a failure now
    assert [f["micrograph"] for f in final["failures"]] == [str(bad)] and final["not_finished"] == []
    assert final["micrographs"]["failed"] == 1 and final["micrographs"]["not_finished"] == 0
    assert not result.ok


def _without_pixel_size(folder, n, *, seed=10):
    """``n`` micrographs whose headers give no pixel size (picked in Å, they fail on the settings)."""
    from scale_data import image, write_mrc

    return [write_mrc(folder / f"nopx_{i}.mrc", image(seed + i), pixel_size=None) for i in range(n)]


def test_a_file_that_fails_on_the_settings_is_a_failure_at_once(tmp_path, caplog):
    """A file read whole that fails on the settings (a diameter in Å and no pixel size in its header) was only
    warned about as maybe not finished until the session stopped: a user who walked away learned nothing. No
    copy still being written fails so: its error is logged as it fails and its round counts it as failed."""
    watched = tmp_path / "incoming"
    write_set(watched, 1)
    (bad,) = _without_pixel_size(watched, 1)
    out = tmp_path / "out"
    _, cfg = compose_config([f"input={watched}", *RUN_ARGS, "runner.workers=1", "watch=true", "stream.poll_seconds=0.1",
                             "stream.stable_polls=1", "stream.idle_timeout=0.6"])
    with caplog.at_level(logging.INFO, logger="lipoframe"):
        result = run_pipeline(cfg, out)
    (failed,) = [r for r in result.results if r.status == "failed"]
    assert failed.path == str(bad) and "pixel size is missing from the header" in failed.error
    said = [(r.levelno, r.getMessage()) for r in caplog.records if r.getMessage().startswith(f"{bad}: ")]
    assert said == [(logging.ERROR, failed.error)], said  # once, as it failed; no 'not counted as failed yet'
    picked = next(i for i, m in enumerate(caplog.messages) if m.startswith("picked "))
    assert caplog.messages.index(failed.error) < picked and caplog.messages[picked].endswith("; 2 seen, 1 failed")
    assert not result.errors  # a micrograph was picked: the session went on until it stopped as asked


def test_a_session_whose_settings_can_pick_none_of_its_files_stops_with_an_error(tmp_path, caplog):
    """Every file failed on the settings and the session kept watching, for files it could never pick; it
    stops once stream.stop_after_settings_errors of them failed with the same problem, with an error (exit code 1:
    the result is not ok)."""
    watched = tmp_path / "incoming"
    _without_pixel_size(watched, 3)
    out = tmp_path / "out"
    # idle_timeout: a guard against a session that would watch for ever, not a timing check
    _, cfg = compose_config([f"input={watched}", *RUN_ARGS, "runner.workers=1", "watch=true", "stream.poll_seconds=0.1",
                             "stream.stable_polls=1", "stream.idle_timeout=30"])
    with caplog.at_level(logging.INFO, logger="lipoframe"):
        result = run_pipeline(cfg, out)
    stop = ("3 micrographs failed on the settings (pixel size is missing from the header; give pixel_size=<Å/px> or use "
            "units=px) and none was picked: nothing can be picked with these settings, so the session stops "
            "(stream.stop_after_settings_errors=3); change them and start it again")
    assert stop in result.errors and not result.ok
    summary = json.loads((out / "run_summary.json").read_text())
    assert stop in summary["errors"] and summary["micrographs"]["failed"] == 3
    told = [r for r in caplog.records if r.getMessage() == stop]
    assert len(told) == 1 and told[0].levelno == logging.ERROR
    assert caplog.messages.index(stop) < next(i for i, m in enumerate(caplog.messages) if m.startswith("stopping ("))


def test_nothing_can_be_picked_only_when_every_micrograph_so_far_failed_on_the_same_settings():
    from lipoframe.runner import MicResult
    from lipoframe.watch import nothing_can_be_picked

    def on(problem, i):
        return MicResult(f"m{i}", f"m{i}.mrc", "failed", error=f"m{i}.mrc: {problem}", settings=problem)

    same = [on("no pixel size", i) for i in range(3)]
    assert nothing_can_be_picked(same, after=3).startswith("3 micrographs failed on the settings (no pixel size)")
    assert nothing_can_be_picked(same, after=4) == nothing_can_be_picked(same, after=0) == ""
    unfinished = MicResult("x", "x.mrc", "failed", error="x.mrc: not a readable MRC file")  # maybe half-written
    assert nothing_can_be_picked([*same, unfinished], after=3).startswith("3 micrographs")
    assert nothing_can_be_picked([*same[:2], unfinished], after=3) == ""
    assert nothing_can_be_picked([*same, MicResult("k", "k.mrc", "skipped")], after=3) == ""  # kept from before
    assert nothing_can_be_picked([*same, on("image too small", 3)], after=3) == ""  # not one problem


def test_a_watch_session_into_a_merged_folder_drops_the_merges_record(tmp_path):
    # As a batch run does once its results are in place: merged_from.json stayed, and the folder was still a merge's
    # (is_merged_folder) to plan and report.
    from lipoframe.merge import MERGED_FROM, is_merged_folder

    write_set(tmp_path / "in", 1)
    out = tmp_path / "out"
    out.mkdir()
    (out / MERGED_FROM).write_text(json.dumps([str(tmp_path / "shards" / "0")]))
    (out / "STOP").touch()  # picks what is there and stops
    assert is_merged_folder(out)
    _, cfg = compose_config([
        f"input={tmp_path / 'in'}", *RUN_ARGS, "runner.workers=1", "watch=true",
        "stream.poll_seconds=0.1", "stream.stable_polls=1",
    ])
    result = run_pipeline(cfg, out)
    assert [r.status for r in result.results] == ["ok"] and (out / "picks.csv").is_file()
    assert not is_merged_folder(out) and not (out / MERGED_FROM).exists()
