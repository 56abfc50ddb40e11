"""Resume: a rerun skips complete, valid, up-to-date results and does the rest;
a run killed mid-way loses nothing that had finished."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scale_data import GATE_READER, RUN_ARGS, SHAPE, env_with_plugins, image, write_mrc, write_set, write_tiff

from lipoframe.merge import compose_config
from lipoframe.runner import run_pipeline


@pytest.fixture(autouse=True)
def _no_plugins(monkeypatch):
    monkeypatch.setenv("LIPOFRAME_LOAD_PLUGINS", "")


def run(folder, out, *overrides):
    _, cfg = compose_config([f"input={folder}", "runner.workers=1", *RUN_ARGS, *overrides])
    return run_pipeline(cfg, out)


def statuses(result):
    return {r.name: r.status for r in result.results}


def kill_when(proc: subprocess.Popen, done, what: str, *, seconds: float = 90) -> None:
    """SIGKILL ``proc`` as soon as ``done()`` holds; fail with ``what`` if it has not within ``seconds`` (or ``proc`` ended)."""
    deadline = time.monotonic() + seconds
    while not done():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, what
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stderr.close()


def gated_run(tmp_path, make_plugin, *, workers: int) -> tuple[list[str], Path, Path]:
    """The command of a run of three micrographs whose third waits for ``late.with_suffix('.go')``
    (the ``gate`` reader), the third micrograph and the output folder."""
    make_plugin("lipoframe-gate", GATE_READER)
    inp = tmp_path / "in"
    write_set(inp, 2)
    late = write_mrc(tmp_path / "late" / "mic_002.gate", image(2))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "lipoframe", "run", f"input=[{inp},{late}]", f"output={out}", f"runner.workers={workers}",
           *RUN_ARGS]
    return cmd, late, out


def test_killed_run_resumes_without_losing_finished_work(tmp_path, make_plugin, run_cli):
    """The third input is read only when the test lets it (the ``gate``
    reader), so the run waits there after two micrographs are done; it is
    killed with SIGKILL, then resumed (in this process: the kill is what needs one of its own)."""
    cmd, late, out = gated_run(tmp_path, make_plugin, workers=1)
    proc = subprocess.Popen(cmd, env=env_with_plugins(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    done_markers = [out / "micrographs" / f"mic_00{i}.json" for i in range(2)]
    kill_when(proc, lambda: all(p.exists() for p in done_markers), "the first micrographs were not done in time")
    saved = {p: p.read_bytes() for p in done_markers}
    assert not (out / "run_summary.json").exists()  # it really died mid-way

    late.with_suffix(".go").touch()
    # the same command again
    code, _, err = run_cli(*cmd[3:])
    assert code == 0, err
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["micrographs"] == {"total": 3, "ok": 1, "skipped": 2, "failed": 0, "not_done": 0}
    assert all(p.read_bytes() == b for p, b in saved.items())  # finished work untouched
    assert not list((out / "micrographs").glob(".*.tmp*"))

    fresh_cmd = [c if not c.startswith("output=") else f"output={tmp_path / 'fresh'}" for c in cmd]
    code, _, err = run_cli(*fresh_cmd[3:])
    assert code == 0, err
    assert (out / "picks.csv").read_bytes() == (tmp_path / "fresh" / "picks.csv").read_bytes()


def _processes_with(word: str) -> list[int]:
    """Pids of the processes whose command line holds ``word`` (Linux ``/proc``)."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if word.encode() in cmdline.read_bytes().split(b"\0"):
                pids.append(int(cmdline.parent.name))
        except OSError:
            continue
    return pids


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists() or sys.platform != "linux", reason="needs Linux /proc and fork")
def test_workers_of_a_run_killed_outright_let_go_of_the_folder_and_exit(tmp_path, make_plugin, run_cli):
    """A run with worker processes killed with SIGKILL (the out-of-memory killer, kill -9) left them behind:
    waiting for ever for their next micrograph, holding the output folder's lock, so the same command
    again was refused ('another lipoframe run (pid <the dead one>) is writing to this output folder'); a
    worker blocked in its micrograph would have written its result beside the new run's."""
    import fcntl

    cmd, late, out = gated_run(tmp_path, make_plugin, workers=2)
    proc = subprocess.Popen(cmd, env=env_with_plugins(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    done_markers = [out / "micrographs" / f"mic_00{i}.json" for i in range(2)]
    # the gated micrograph waits in a worker: the run is mid-way, with its worker processes
    kill_when(proc, lambda: all(p.exists() for p in done_markers), "the first micrographs were not done in time")
    assert not (out / "run_summary.json").exists()
    with open(out / ".lipoframe.lock", "a+") as lock:  # free as soon as the run is dead
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
    deadline = time.monotonic() + 60
    while _processes_with(f"output={out}"):
        assert time.monotonic() < deadline, f"worker processes left behind: {_processes_with(f'output={out}')}"
        time.sleep(0.1)
    assert not (out / "micrographs" / "mic_002.json").exists()

    late.with_suffix(".go").touch()
    code, _, err = run_cli(*cmd[3:])  # the same command again (in this process, with its two workers)
    assert code == 0, err
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["micrographs"] == {"total": 3, "ok": 1, "skipped": 2, "failed": 0, "not_done": 0}


@pytest.fixture
def done_run(tmp_path):
    inp = tmp_path / "in"
    write_set(inp, 3)
    out = tmp_path / "out"
    first = run(inp, out)
    assert set(statuses(first).values()) == {"ok"}
    return inp, out


def test_rerun_skips_everything_and_gives_the_same_outputs(done_run):
    inp, out = done_run
    before = (out / "picks.csv").read_bytes()
    again = run(inp, out)
    assert set(statuses(again).values()) == {"skipped"}
    assert (out / "picks.csv").read_bytes() == before
    assert json.loads((out / "run_summary.json").read_text())["micrographs"]["skipped"] == 3


def test_dataset_level_change_reuses_per_micrograph_results(done_run):
    inp, out = done_run
    again = run(inp, out, "binning.pad=1.6")
    assert set(statuses(again).values()) == {"skipped"}


def _star_rows_flipped(out) -> dict[str, bool]:
    """Per micrograph: whether ``relion/coords`` holds the rows of picks.csv counted from the bottom (else as they are)."""
    import numpy as np
    import pandas as pd
    import starfile

    picks = pd.read_csv(out / "picks.csv")
    out_flipped = {}
    for name, mine in picks[picks["accepted"]].groupby("micrograph"):
        star = starfile.read(out / "relion" / "coords" / f"{name}_autopick.star")
        y = np.sort(star["rlnCoordinateY"].to_numpy(float))
        if np.allclose(y, np.sort(np.round(mine["y_px"].to_numpy())), atol=0.5):
            out_flipped[name] = False
        else:
            assert np.allclose(y, np.sort(np.round(SHAPE[0] - 1 - mine["y_px"].to_numpy())), atol=0.5), name
            out_flipped[name] = True
    return out_flipped


def test_a_run_continued_with_another_flip_y_exports_every_micrograph_with_it_without_picking_again(tmp_path):
    # flip_y changes the exports, not the picks: the micrographs picked before keep their picks and are
    # exported in the new frame with those picked now (the saved records took the flip of the run that saved them)
    inp = tmp_path / "in"
    write_tiff(inp / "a.tif", image(0))
    out = tmp_path / "out"
    assert statuses(run(inp, out)) == {"a": "ok"}
    assert _star_rows_flipped(out) == {"a": True}
    write_tiff(inp / "b.tif", image(1))
    write_mrc(inp / "c.mrc", image(2))
    assert statuses(run(inp, out, "flip_y=false")) == {"a": "skipped", "b": "ok", "c": "ok"}
    assert _star_rows_flipped(out) == {"a": False, "b": False, "c": False}
    assert {json.loads((out / "micrographs" / f"{n}.json").read_text())["meta"]["flip_y"] for n in "abc"} == {False}
    assert set(statuses(run(inp, out)).values()) == {"skipped"}  # back to the default: TIFFs flipped, as the reader says
    assert _star_rows_flipped(out) == {"a": True, "b": True, "c": False}
    assert set(statuses(run(inp, out, "flip_y=true")).values()) == {"skipped"}
    assert _star_rows_flipped(out) == {"a": True, "b": True, "c": True}


def test_per_micrograph_change_redoes_everything(done_run):
    inp, out = done_run
    again = run(inp, out, "detector.threshold=7")
    assert set(statuses(again).values()) == {"ok"}


def test_resume_false_redoes_everything(done_run):
    inp, out = done_run
    again = run(inp, out, "runner.resume=false")
    assert set(statuses(again).values()) == {"ok"}


def test_damaged_or_stale_results_are_redone(done_run):
    inp, out = done_run
    work = out / "micrographs"
    csv = work / "mic_000.csv"
    csv.write_text(csv.read_text()[: len(csv.read_text()) // 2])  # half a table
    (work / "mic_001.json").write_text("{")  # an interrupted marker
    write_mrc(inp / "mic_002.mrc", image(42))  # the input was replaced
    stamp = os.stat(inp / "mic_002.mrc")
    os.utime(inp / "mic_002.mrc", (stamp.st_atime, stamp.st_mtime + 10))
    again = run(inp, out)
    assert statuses(again) == {"mic_000": "ok", "mic_001": "ok", "mic_002": "ok"}
    again = run(inp, out)
    assert set(statuses(again).values()) == {"skipped"}


def test_results_of_another_lipoframe_version_are_redone(done_run):
    inp, out = done_run
    marker = out / "micrographs" / "mic_001.json"
    info = json.loads(marker.read_text())
    info["lipoframe"] = "0.0.0-old"
    marker.write_text(json.dumps(info))
    again = run(inp, out)
    assert statuses(again) == {"mic_000": "skipped", "mic_001": "ok", "mic_002": "skipped"}


def test_a_named_input_that_was_deleted_fails_instead_of_resuming(tmp_path):
    import pandas as pd

    mine = tmp_path / "in"
    write_set(mine, 2)
    run_out = tmp_path / "out"
    spec = f"input=[{mine / 'mic_000.mrc'},{mine / 'mic_001.mrc'}]"
    first = run_pipeline(compose_config([spec, "runner.workers=1", *RUN_ARGS])[1], run_out)
    assert set(statuses(first).values()) == {"ok"}
    (mine / "mic_001.mrc").unlink()
    again = run_pipeline(compose_config([spec, "runner.workers=1", *RUN_ARGS])[1], run_out)
    assert statuses(again) == {"mic_000": "skipped", "mic_001": "failed"}
    assert "file not found" in next(r.error for r in again.results if r.name == "mic_001")
    assert set(pd.read_csv(run_out / "picks.csv")["micrograph"]) == {"mic_000"}


def test_a_replaced_heatmap_or_mask_redoes_its_micrograph(tmp_path):
    """The maps and masks a run reads are its input too: resume picks a micrograph again when its
    heatmap is replaced, or its mask is added, replaced or removed, and keeps the others."""
    import numpy as np

    inp = tmp_path / "in"
    write_set(inp, 2)
    maps = tmp_path / "maps"
    masks = tmp_path / "masks"
    maps.mkdir()
    masks.mkdir()
    yy, xx = np.mgrid[0:384, 0:384]
    disc = ((yy - 150) ** 2 + (xx - 200) ** 2 <= 40**2).astype(np.float32)
    for name in ("mic_000", "mic_001"):
        np.save(maps / f"{name}_prob.npy", disc)
    np.save(masks / "mic_000_mask.npy", np.zeros((384, 384), np.float32))

    def bump(path):  # as a file rewritten later: a newer modification time
        st = os.stat(path)
        os.utime(path, (st.st_atime, st.st_mtime + 10))

    args = ["detector=heatmap", f"detector.folder={maps}", "detector.pattern=_prob.npy", "refiner=none",
            "filter=[diameter_range,mask]", f"filter.mask.folder={masks}", "filter.mask.suffix=_mask.npy",
            "filter.mask.missing=keep"]
    first = run(inp, tmp_path / "out", *args)
    assert set(statuses(first).values()) == {"ok"}
    assert set(statuses(run(inp, tmp_path / "out", *args)).values()) == {"skipped"}

    np.save(maps / "mic_001_prob.npy", np.zeros_like(disc))  # the network's new output: nothing there
    bump(maps / "mic_001_prob.npy")
    again = run(inp, tmp_path / "out", *args)
    assert statuses(again) == {"mic_000": "skipped", "mic_001": "ok"}
    assert again.picks.groupby("micrograph").size().to_dict() == {"mic_000": 1}

    np.save(masks / "mic_000_mask.npy", np.ones((384, 384), np.float32))  # now all of it is bad
    bump(masks / "mic_000_mask.npy")
    np.save(masks / "mic_001_mask.npy", np.zeros((384, 384), np.float32))  # a mask where there was none
    again = run(inp, tmp_path / "out", *args)
    assert statuses(again) == {"mic_000": "ok", "mic_001": "ok"}
    assert int(again.picks["accepted"].sum()) == 0

    (masks / "mic_001_mask.npy").unlink()
    again = run(inp, tmp_path / "out", *args)
    assert statuses(again) == {"mic_000": "skipped", "mic_001": "ok"}


def test_another_order_of_the_same_filters_redoes_everything(done_run):
    """Filters run in the order given (the first reason is kept, neighbour_outlier counts the
    picks accepted so far): the same filters in another order are another setting."""
    inp, out = done_run
    first = run(inp, out, "filter=[diameter_range,edge,speck]")
    assert set(statuses(first).values()) == {"ok"}
    assert set(statuses(run(inp, out, "filter=[diameter_range,edge,speck]")).values()) == {"skipped"}
    again = run(inp, out, "filter=[diameter_range,speck,edge]")
    assert set(statuses(again).values()) == {"ok"}


def _same_second(*paths, when=1_700_000_000):
    """Give ``paths`` modification times within one whole second (as a copy, a tar extraction or a
    coarse file system gives files written in the same second)."""
    for i, p in enumerate(paths):
        os.utime(p, ns=(when * 10**9, when * 10**9 + 100_000_000 * (i + 1)))


def test_another_file_of_the_same_name_size_and_second_is_picked_again(tmp_path):
    """``da/x.mrc`` then ``db/x.mrc`` into one output: two different micrographs with the same name,
    size and whole-second modification time. Resume took da's saved picks as db's."""
    a = write_mrc(tmp_path / "da" / "x.mrc", image(1))
    b = write_mrc(tmp_path / "db" / "x.mrc", image(2))
    _same_second(a, b)
    assert a.stat().st_size == b.stat().st_size and int(a.stat().st_mtime) == int(b.stat().st_mtime)
    out = tmp_path / "out"
    assert statuses(run(a.parent, out)) == {"x": "ok"}
    again = run(b.parent, out)
    assert statuses(again) == {"x": "ok"}
    assert json.loads((out / "micrographs" / "x.json").read_text())["meta"]["path"] == str(b)
    run(b.parent, tmp_path / "fresh")
    assert (out / "picks.csv").read_bytes() == (tmp_path / "fresh" / "picks.csv").read_bytes()
    assert statuses(run(b.parent, out)) == {"x": "skipped"}


def test_a_moved_data_folder_resumes_and_its_exports_name_the_new_place(done_run):
    """Moving the data (a rename keeps the files' modification times) picks nothing again, and the
    exports name the micrographs where they are now, as a fresh run would."""
    inp, out = done_run
    moved = inp.rename(inp.parent / "moved")
    again = run(moved, out)
    assert set(statuses(again).values()) == {"skipped"}
    for js in (out / "micrographs").glob("*.json"):
        assert json.loads(js.read_text())["meta"]["path"] == str(moved / f"{js.stem}.mrc")
    fresh = out.parent / "fresh"
    run(moved, fresh)
    assert (out / "picks.csv").read_bytes() == (fresh / "picks.csv").read_bytes()
    star = (out / "relion" / "autopick.star").read_text()
    assert str(moved / "mic_000.mrc") in star and str(inp) + "/" not in star
    assert star.replace(str(out), str(fresh)) == (fresh / "relion" / "autopick.star").read_text()


def test_results_saved_without_a_content_digest_are_picked_again(done_run):
    """Results of a version that stamped an input by size and whole-second time only cannot tell
    another file of the same name from the one picked: they are picked again, once."""
    inp, out = done_run
    marker = out / "micrographs" / "mic_001.json"
    info = json.loads(marker.read_text())
    assert set(info["source"]) == {"size", "mtime", "digest"}
    info["source"] = {"size": info["source"]["size"], "mtime": info["source"]["mtime"]}
    marker.write_text(json.dumps(info))
    assert statuses(run(inp, out)) == {"mic_000": "skipped", "mic_001": "ok", "mic_002": "skipped"}
    assert set(statuses(run(inp, out)).values()) == {"skipped"}


def test_a_file_edited_in_place_is_picked_again(done_run):
    """An edit that keeps the size (and both ends of the file) still gives a new modification time."""
    inp, out = done_run
    path = inp / "mic_001.mrc"
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 4096] = bytes(4096)
    path.write_bytes(bytes(data))
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2 * 10**9))
    assert statuses(run(inp, out)) == {"mic_000": "skipped", "mic_001": "ok", "mic_002": "skipped"}


def _interrupted_after_one(monkeypatch):
    """Make the next run stop as Ctrl-C or SIGTERM would once its first micrograph is picked."""
    from lipoframe import runner

    def execute(todo, cfg, stages, workers, on_result, **kw):
        on_result(runner.run_job(todo[0], cfg, stages))
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "execute_jobs", execute)


def _dataset_outputs(out):
    """The files of ``out`` but its per-micrograph results, the log, the lock and the run records (the polarity
    check's verdict is kept with the saved results it was made from, as they are)."""
    keep = {"lipoframe.log", ".lipoframe.lock", "inputs.json", "written_files.json", "run_summary.json", "polarity_check.json"}
    return sorted(p.relative_to(out).as_posix() for p in out.rglob("*")
                  if p.is_file() and p.parts[len(out.parts)] not in ("micrographs", "overlays") and p.name not in keep)


def test_an_interrupted_rerun_with_other_settings_leaves_no_outputs_of_the_earlier_settings(done_run, monkeypatch):
    """A rerun with other settings stopped half-way left picks.csv, the exports, the plan and report.html
    of the earlier, complete run, under the new run's .hydra/ and run_summary.json: taken for the new
    picks (a RELION import of relion/coords). They are removed as the rerun starts; it writes its own."""
    inp, out = done_run
    run(inp, out, "runner.report=true")
    earlier = _dataset_outputs(out)
    assert {"picks.csv", "relion/autopick.star", "extraction_plan.json", "report.html", "dataset_rejections.csv"} <= set(earlier)
    _interrupted_after_one(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        run(inp, out, "detector.threshold=7", "runner.report=true")
    assert _dataset_outputs(out) == []
    assert json.loads((out / "written_files.json").read_text()) == {"files": []}
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["interrupted"] and summary["micrographs"]["not_done"] == 2
    assert any(n.startswith(f"removed the dataset-level outputs of the earlier run into {out}") for n in summary["notes"])
    # the earlier settings' results of the micrographs not reached are kept (the earlier command resumes them)
    monkeypatch.undo()
    assert statuses(run(inp, out)) == {"mic_000": "ok", "mic_001": "skipped", "mic_002": "skipped"}
    assert _dataset_outputs(out) == [f for f in earlier if f != "report.html"]


def test_an_interrupted_rerun_with_the_same_settings_keeps_the_earlier_outputs(done_run, monkeypatch):
    """Resuming (here with a micrograph added to the input) keeps the earlier run's outputs until it has
    new ones: they are the same settings' picks; so does a change of runner options."""
    inp, out = done_run
    before = {p: (out / p).read_bytes() for p in _dataset_outputs(out)}
    write_mrc(inp / "mic_003.mrc", image(3))
    _interrupted_after_one(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        run(inp, out, "runner.workers=2", "runner.resume=false")
    assert {p: (out / p).read_bytes() for p in _dataset_outputs(out)} == before
    assert json.loads((out / "written_files.json").read_text())["files"]


def test_a_rerun_with_other_dataset_settings_replaces_the_outputs(done_run):
    inp, out = done_run
    run(inp, out, "writer=[csv,box]")
    assert not (out / "relion").exists() and (out / "box").is_dir()
    record = json.loads((out / "written_files.json").read_text())
    again = run(inp, out)  # back to the defaults: star, not box
    assert set(statuses(again).values()) == {"skipped"}
    assert (out / "relion").is_dir() and not (out / "box").exists()
    assert json.loads((out / "written_files.json").read_text())["settings"] != record["settings"]


def test_a_killed_rerun_with_other_settings_leaves_neither_the_earlier_outputs_nor_their_summary(tmp_path, make_plugin,
                                                                                                 run_cli):
    """`lipoframe run` with other settings into a finished run's folder, killed outright (SIGKILL, a
    hard time limit) half-way: the earlier run's picks.csv, exports, plan and run_summary.json stayed,
    beside the new .hydra/ record, and `lipoframe plan` took the run as finished. (Only the killed run
    needs a process of its own; the others run in this one.)"""
    cmd, late, out = gated_run(tmp_path, make_plugin, workers=1)
    cmd.append("runner.polarity_check=true")  # its verdict, kept with the saved results, is left too
    go = late.with_suffix(".go")
    go.touch()
    code, _, err = run_cli(*cmd[3:])
    assert code == 0, err
    assert (out / "picks.csv").is_file() and (out / "relion" / "autopick.star").is_file()
    fingerprint = json.loads((out / "inputs.json").read_text())["fingerprint"]

    go.unlink()  # the rerun waits at the third micrograph
    proc = subprocess.Popen([*cmd, "detector.threshold=7"], env=env_with_plugins(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    markers = [out / "micrographs" / f"mic_00{i}.json" for i in range(2)]

    def redone(marker):
        try:
            return json.loads(marker.read_text())["fingerprint"] != fingerprint
        except (OSError, ValueError, KeyError):
            return False

    kill_when(proc, lambda: all(redone(m) for m in markers), "the rerun did not pick the first micrographs in time")
    assert "detector.threshold=7" in (out / ".hydra" / "overrides.yaml").read_text()
    left = sorted(p.name for p in out.iterdir() if p.is_file())
    assert left == [".lipoframe.lock", "inputs.json", "lipoframe.log", "polarity_check.json", "written_files.json"]
    assert not (out / "relion").exists()
    _, _, err = run_cli("plan", out)
    assert "the run was interrupted: run the same `lipoframe run` command again to finish it" in err, err


def test_a_mistyped_input_with_other_settings_still_leaves_the_earlier_run_as_it_was(done_run):
    from lipoframe.records import InputError

    inp, out = done_run
    before = {p: (out / p).read_bytes() for p in [*_dataset_outputs(out), "run_summary.json", "written_files.json"]}
    with pytest.raises(InputError, match="nothing was written"):
        run(f"'{inp}/*.mcr'", out, "detector.threshold=7")
    assert {p: (out / p).read_bytes() for p in before} == before


def test_an_interrupted_rerun_does_not_give_its_new_picks_the_earlier_runs_dataset_verdicts(done_run, monkeypatch):
    """The first micrograph replaced, a rerun with the same settings stopped after picking it again: the earlier
    run's picks.csv and dataset_rejections.csv stay (the same settings' outputs, test above), and `lipoframe
    report`/`evaluate` took their verdicts for the new picks (its accepted picks became binning outliers)."""
    import pandas as pd

    from lipoframe.evaluate import read_picks
    from lipoframe.report import load_run

    inp, out = done_run
    before = load_run(out).picks
    write_mrc(inp / "mic_000.mrc", image(42))
    _interrupted_after_one(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        run(inp, out)
    saved = pd.read_csv(out / "micrographs" / "mic_000.csv", keep_default_na=False, na_values=[""])
    # Its own verdicts, and the earlier plan's size range (as for a run without picks.csv): the dataset step has not seen it.
    outside = saved["accepted"].to_numpy() & (load_run(out).plan.assign(saved["diameter_px"].to_numpy()) < 0)
    accepted = saved["accepted"].to_numpy() & ~outside
    assert accepted.any()
    reasons = saved["reject_reason"].fillna("").where(~outside, "binning_outlier").tolist()
    for picks in (load_run(out).picks, read_picks(out)[0]):
        new = picks[picks["micrograph"] == "mic_000"].reset_index(drop=True)
        assert new["accepted"].tolist() == accepted.tolist()
        assert new["reject_reason"].tolist() == reasons
        # the micrographs the rerun did not reach keep the earlier dataset step's verdicts
        cols = ["micrograph", "x_px", "y_px", "accepted", "reject_reason"]
        pd.testing.assert_frame_equal(picks.loc[picks["micrograph"] != "mic_000", cols].reset_index(drop=True),
                                      before.loc[before["micrograph"] != "mic_000", cols].reset_index(drop=True), check_dtype=False)


#: Writers and a plan whose files hold the pixel size or lengths in Å (besides picks.csv's diameter_A).
ANGSTROM_OUTPUTS = ("writer=[csv,star,cryosparc,cbox,box]", "binning.extract_pixel_size=4")


def outputs(out: Path) -> dict[str, bytes | dict]:
    """Every file a run wrote into ``out``, by path, but its log, records of time and config: the saved results'
    JSON without their timing, the others as bytes with the folder's own path replaced."""
    found: dict[str, bytes | dict] = {}
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        rel = path.relative_to(out).as_posix()
        if rel.startswith(".hydra/") or rel in ("lipoframe.log", "run_summary.json"):
            continue
        if rel.startswith("micrographs/") and rel.endswith(".json"):
            info = json.loads(path.read_text())
            info.pop("seconds")
            found[rel] = info
        else:
            found[rel] = path.read_bytes().replace(str(out).encode(), b"<run>")
    return found


def test_a_pixel_size_change_of_a_run_in_pixels_reuses_the_picks_and_gives_a_fresh_runs_outputs(tmp_path, caplog):
    # units=px: the picks (positions, diameters in px, scores) do not depend on the pixel size, only diameter_A,
    # the exports and the plan do; every micrograph used to be picked again
    inp = tmp_path / "in"
    write_set(inp, 2)
    out = tmp_path / "out"
    assert set(statuses(run(inp, out, "units=px", "pixel_size=1.0", *ANGSTROM_OUTPUTS)).values()) == {"ok"}
    with caplog.at_level("INFO", logger="lipoframe"):
        again = run(inp, out, "units=px", "pixel_size=3.37", *ANGSTROM_OUTPUTS)
    assert set(statuses(again).values()) == {"skipped"}
    told = [r.getMessage() for r in caplog.records if r.getMessage().startswith("pixel size changed")]
    assert told == ["pixel size changed (1 -> 3.37 Å/px) for 2 micrograph(s) picked before: their picks are re-used, as "
                    "picking in pixels (units=px) does not depend on it; diameter_A and everything in Å (exports, plan, "
                    "report) are recomputed"]
    fresh = tmp_path / "fresh"
    assert set(statuses(run(inp, fresh, "units=px", "pixel_size=3.37", *ANGSTROM_OUTPUTS)).values()) == {"ok"}
    assert outputs(out) == outputs(fresh)  # picks.csv, the per-micrograph tables, exports, plan files, records
    # without pixel_size= the headers' (1 Å/px) again, also without picking
    assert set(statuses(run(inp, out, "units=px", *ANGSTROM_OUTPUTS)).values()) == {"skipped"}
    assert set(statuses(run(inp, fresh, "units=px", "runner.resume=false", *ANGSTROM_OUTPUTS)).values()) == {"ok"}
    assert outputs(out) == outputs(fresh)


def test_a_pixel_size_change_picks_again_where_the_picks_depend_on_it(tmp_path, caplog):
    # units=A: dmin and dmax in pixels are dmin/dmax over the pixel size; with units=px a stage option in Å does the same
    inp = tmp_path / "in"
    write_set(inp, 1)
    angstrom_filter = ("units=px", "filter=[diameter_range,min_size]", "filter.min_size.units=A", "filter.min_size.min_diameter=60")
    for i, settings in enumerate([(), angstrom_filter]):
        out = tmp_path / f"out{i}"
        assert set(statuses(run(inp, out, *settings)).values()) == {"ok"}
        caplog.clear()
        with caplog.at_level("INFO", logger="lipoframe"):
            assert set(statuses(run(inp, out, "pixel_size=2", *settings)).values()) == {"ok"}
        why = ("dmin=30.0, dmax=140.0 (units=A)" if not settings else "filter.min_size.units=A")
        assert [r.getMessage() for r in caplog.records if r.getMessage().startswith("pixel size changed")] == [
            f"pixel size changed (1 -> 2 Å/px) for 1 micrograph(s) picked before: they are picked again, as their picks "
            f"depend on it ({why}: lengths in Å, converted to pixels with it)"]
        fresh = tmp_path / f"fresh{i}"
        run(inp, fresh, "pixel_size=2", *settings)
        assert outputs(out) == outputs(fresh)
        # the same pixel size spelt otherwise (given as the headers give it) picks the same: kept
        assert set(statuses(run(inp, out, "pixel_size=1", *settings)).values()) == {"ok"}
        assert set(statuses(run(inp, out, *settings)).values()) == {"skipped"}


PIXEL_FILTER = """
    from dataclasses import dataclass

    from lipoframe import hookimpl, schema
    from lipoframe.stages import Filter

    @dataclass
    class SmallParams:
        pass

    class Small(Filter):
        name = "small_in_angstrom"
        Params = SmallParams

        def apply(self, picks, mic, ctx):
            return schema.reject(picks, picks["diameter_px"] * mic.meta.pixel_size > 150, "large")

    @hookimpl
    def lipoframe_register_stages(registry):
        registry.add(Small)
"""


def test_a_pixel_size_change_picks_again_with_a_plugins_stage(tmp_path, make_plugin, caplog):
    # a plugin's stage is given the pixel size and may use it (this one rejects picks over 150 Å)
    from lipoframe import plugins

    make_plugin("lipoframe-small", PIXEL_FILTER)
    plugins._CACHE.clear()
    inp = tmp_path / "in"
    write_set(inp, 2)
    out = tmp_path / "out"
    settings = ("units=px", "filter=[diameter_range,small_in_angstrom]")
    first = run(inp, out, *settings)
    assert set(statuses(first).values()) == {"ok"}
    with caplog.at_level("INFO", logger="lipoframe"):
        again = run(inp, out, "pixel_size=2", *settings)
    assert set(statuses(again).values()) == {"ok"}
    assert sum(r.n_accepted for r in again.results) < sum(r.n_accepted for r in first.results)  # it did depend on it
    assert any("they are picked again, as their picks depend on it (the filter 'small_in_angstrom' is a plugin's, "
               "which may use it)" in r.getMessage() for r in caplog.records)
    fresh = tmp_path / "fresh"
    run(inp, fresh, "pixel_size=2", *settings)
    assert outputs(out) == outputs(fresh)


class _Killed(BaseException):
    """A run killed outright (SIGKILL) at a chosen point: nothing catches it."""


def test_a_run_killed_while_reusing_picks_at_another_pixel_size_leaves_no_result_of_one_size_with_the_others_diameters(
        tmp_path, monkeypatch):
    # the re-use rewrites the table (diameter_A at the new pixel size), then the JSON (the new pixel size and
    # settings); killed between the two, the earlier JSON, complete for the earlier pixel size, went with a table
    # of the new one's diameter_A, and a run at the earlier pixel size kept it: picks.csv with diameters 3x too large
    import lipoframe.runner as runner

    inp = tmp_path / "in"
    write_set(inp, 2)
    out = tmp_path / "out"
    assert set(statuses(run(inp, out, "units=px", "pixel_size=1.0")).values()) == {"ok"}
    real = runner.write_text

    def killed_at_the_json(path, text):
        if Path(path).parent.name == runner.WORK_DIR and Path(path).suffix == ".json":
            raise _Killed
        return real(path, text)

    monkeypatch.setattr(runner, "write_text", killed_at_the_json)
    with pytest.raises(_Killed):
        run(inp, out, "units=px", "pixel_size=3")
    monkeypatch.setattr(runner, "write_text", real)
    run(inp, out, "units=px", "pixel_size=1.0")
    picks = pd.read_csv(out / "picks.csv")
    assert len(picks)
    assert np.allclose(picks["diameter_A"], picks["diameter_px"], atol=1e-3)


def test_a_run_resumed_at_another_pixel_size_keeps_what_it_did_in_its_summary_and_report(tmp_path, run_cli):
    # the notes (re-used, or picked again and why) were only logged: run_summary.json and report.html said nothing
    import html

    inp = tmp_path / "in"
    write_set(inp, 2)
    out = tmp_path / "out"
    for settings in (["pixel_size=1.0"], ["pixel_size=3", "runner.report=true"]):  # a folder `lipoframe plan` takes
        assert run_cli("run", f"input={inp}", f"output={out}", "runner.workers=1", *RUN_ARGS, "units=px", *settings)[0] == 0
    summary = json.loads((out / "run_summary.json").read_text())
    reused = ("pixel size changed (1 -> 3 Å/px) for 2 micrograph(s) picked before: their picks are re-used, as picking in "
              "pixels (units=px) does not depend on it; diameter_A and everything in Å (exports, plan, report) are recomputed")
    assert [n for n in summary["notes"] if n.startswith("pixel size changed")] == [reused]
    assert reused in summary["run_notes"] and reused in summary["run_pixel_size_notes"]
    assert f"<li>Note: {html.escape(reused)}</li>" in (out / "report.html").read_text()
    # a note on the pixel size the run used: a plan at a pixel size of its own drops it, one without brings it back
    assert run_cli("plan", out, "pixel_size=2")[0] == 0
    assert reused not in json.loads((out / "run_summary.json").read_text())["notes"]
    assert run_cli("plan", out)[0] == 0
    assert reused in json.loads((out / "run_summary.json").read_text())["notes"]
    # back at the headers' pixel size, with two workers
    run(inp, out, "units=px", "runner.workers=2")
    assert [n for n in json.loads((out / "run_summary.json").read_text())["notes"] if n.startswith("pixel size changed")] == [
        reused.replace("(1 -> 3 Å/px)", "(3 -> 1 Å/px)")]
    # picked again, with the reason (units=A)
    out = tmp_path / "in_A"
    run(inp, out)
    run(inp, out, "pixel_size=2")
    summary = json.loads((out / "run_summary.json").read_text())
    assert [n for n in summary["notes"] if n.startswith("pixel size changed")] == [
        "pixel size changed (1 -> 2 Å/px) for 2 micrograph(s) picked before: they are picked again, as their picks depend on "
        "it (dmin=30.0, dmax=140.0 (units=A): lengths in Å, converted to pixels with it)"]
    # the run after it did nothing of the kind: its summary says nothing of it
    run(inp, out, "pixel_size=2")
    assert not [n for n in json.loads((out / "run_summary.json").read_text())["notes"] if n.startswith("pixel size changed")]
