"""Bad input through the command line: one line naming the file and the problem,
the other micrographs complete, the summary lists the failures, exit code 1.

The tests of what a run prints with nothing else on stderr (no traceback, no
warning, one line) run ``lipoframe`` in a subprocess; the others in this
process (``run_cli``), which prints the same lines."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from scale_data import RUN_ARGS, cli, image, write_mrc, write_set

#: file name -> words its one-line message must contain
EXPECTED = {
    "truncated.mrc": "not a readable MRC",
    "corrupt.mrc": "not a readable MRC",
    "truncated.tif": "not a readable TIFF",
    "corrupt.tif": "not a readable TIFF",
    "stack.mrc": "3D stack",
    "nan.mrc": "NaN or infinite",
    "inf.mrc": "NaN or infinite",
    "constant.mrc": "constant",
    "small.mrc": "smaller than the largest diameter",
    "nopix.mrc": "pixel size is missing",
    "missing.mrc": "file not found",
}


def _truncate(path, fraction=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


@pytest.fixture(scope="module")
def bad_run(tmp_path_factory):
    """One run over good files, every kind of bad file, duplicate names, an unsafe name and an empty glob."""
    root = tmp_path_factory.mktemp("bad_input")
    write_set(root / "good", 2)
    bad = root / "bad"
    _truncate(write_mrc(bad / "truncated.mrc", image(5)))
    (bad / "corrupt.mrc").write_bytes(np.random.default_rng(0).bytes(5000))
    tifffile.imwrite(bad / "truncated.tif", image(6))
    _truncate(bad / "truncated.tif")
    (bad / "corrupt.tif").write_bytes(np.random.default_rng(1).bytes(5000))
    write_mrc(bad / "stack.mrc", np.stack([image(7)] * 3))
    with np.errstate(invalid="ignore"):
        img = image(8)
        img[10:20, 10:20] = np.nan
        with pytest.warns(RuntimeWarning):
            write_mrc(bad / "nan.mrc", img)
        img = image(9)
        img[100, 100] = np.inf
        with pytest.warns(RuntimeWarning):
            write_mrc(bad / "inf.mrc", img)
    write_mrc(bad / "constant.mrc", np.ones((384, 384), np.float32))
    write_mrc(bad / "small.mrc", image(10)[:64, :64])
    write_mrc(bad / "nopix.mrc", image(11), pixel_size=0)
    write_mrc(root / "dupA" / "mic_dup.mrc", image(12))
    write_mrc(root / "dupB" / "mic_dup.mrc", image(13))
    shutil.copyfile(root / "good" / "mic_000.mrc", root / "..mrc")  # stem '.': must not name a path
    out = root / "out"
    specs = ["good", "bad", "bad/missing.mrc", "'nomatch/*.mrc'", "dupA/mic_dup.mrc", "dupB/mic_dup.mrc", "..mrc"]
    proc = cli("run", f"input=[{','.join(specs)}]", f"output={out}", "runner.workers=2", *RUN_ARGS, cwd=root)
    return root, out, proc


def test_each_bad_file_gets_one_line_and_no_traceback(bad_run):
    root, out, proc = bad_run
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "Warning" not in proc.stderr
    assert "mic/s" not in proc.stderr  # no progress bar when stderr is not a terminal
    lines = proc.stderr.splitlines()
    for name, words in EXPECTED.items():
        hits = [ln for ln in lines if f"bad/{name}:" in ln and "results are named" not in ln]
        assert len(hits) == 1, (name, hits)
        assert words in hits[0], hits[0]


def test_good_micrographs_complete_and_summary_lists_failures(bad_run):
    root, out, proc = bad_run
    summary = json.loads((out / "run_summary.json").read_text())
    m = summary["micrographs"]
    assert m["failed"] == len(EXPECTED)
    assert m["ok"] == 5  # two good, two duplicates, the unsafe name
    failed = {os.path.basename(f["micrograph"]) for f in summary["failures"]}
    assert failed == set(EXPECTED)
    picks = pd.read_csv(out / "picks.csv")
    assert set(picks["micrograph"]) == {"mic_000", "mic_001", "dupA-mic_dup", "dupB-mic_dup", "micrograph"}
    # Each failure was named on stderr as it happened: the summary counts them rather than printing each again.
    assert f"FAILED {len(EXPECTED)} micrographs (named above; listed in run_summary.json)" in proc.stdout.splitlines()
    assert "bad/stack.mrc" not in proc.stdout


def test_each_failure_and_error_is_printed_once(bad_run):
    """A failed micrograph was printed twice: as it failed (stderr) and again in the summary's FAILED list
    (stdout), which both end up in one terminal or batch log; so were the run's errors (ERROR lines)."""
    root, out, proc = bad_run
    summary = json.loads((out / "run_summary.json").read_text())
    console = proc.stderr + proc.stdout
    for said in [f["error"] for f in summary["failures"]] + summary["errors"]:
        assert console.count(said) == 1, said
    assert f"lipoframe: {summary['errors'][0]}" in proc.stderr.splitlines()
    assert "ERROR  1 error (named above; listed in run_summary.json)" in proc.stdout.splitlines()


def test_failures_name_each_file_as_the_input_spec_gave_it(bad_run):
    """Relative folders were given: the reader's, the runner's and the picking's messages all name
    the files relative, on the terminal, in the FAILED list, run_summary.json and lipoframe.log (the
    checks on the image, such as 'constant', named the absolute path the worker saves)."""
    root, out, proc = bad_run
    summary = json.loads((out / "run_summary.json").read_text())
    log_lines = [ln for ln in (out / "lipoframe.log").read_text().splitlines() if "[ERROR]" in ln]
    failed = [ln.removeprefix("FAILED ") for ln in proc.stdout.splitlines() if ln.startswith("FAILED ")]
    for name in EXPECTED:
        spec = f"bad/{name}"
        (entry,) = [f for f in summary["failures"] if f["micrograph"] == spec]
        assert entry["error"].startswith(f"{spec}: "), entry
        assert not [ln for ln in failed if spec in ln]  # named on stderr, counted in the summary
        assert [ln for ln in log_lines if spec in ln][0].endswith(f"] {entry['error']}")
        assert f"lipoframe: {entry['error']}" in proc.stderr
    assert str(root) not in "".join(failed) + proc.stderr + json.dumps(summary["failures"]) + "".join(log_lines)


def test_empty_glob_is_an_error_naming_the_pattern(bad_run):
    root, out, proc = bad_run
    assert "nomatch/*.mrc: no files match" in proc.stderr
    summary = json.loads((out / "run_summary.json").read_text())
    assert any("nomatch/*.mrc" in e for e in summary["errors"])


def test_duplicate_names_are_disambiguated_and_the_user_is_told(bad_run):
    root, out, proc = bad_run
    for folder in ("dupA", "dupB"):
        assert (out / "micrographs" / f"{folder}-mic_dup.json").is_file()
        assert f"{folder}/mic_dup.mrc: results are named '{folder}-mic_dup'" in proc.stderr
    summary = json.loads((out / "run_summary.json").read_text())
    assert sum("mic_dup" in n for n in summary["notes"]) == 2
    # truncated.mrc and truncated.tif share a stem in one folder: the suffix tells them apart
    assert any("'truncated_mrc'" in n for n in summary["notes"])


def test_name_that_would_escape_the_output_folder_stays_inside(bad_run):
    root, out, proc = bad_run
    files = {p.resolve() for p in root.rglob("*")} - {p.resolve() for p in out.rglob("*")}
    outside_new = [p for p in files if p.name.startswith("micrograph")]
    assert not outside_new
    assert (out / "micrographs" / "micrograph.json").is_file()
    assert "..mrc: results are named 'micrograph'" in proc.stderr


@pytest.mark.parametrize("kind", ["star without micrographs", "empty folder", "empty glob", "missing file"])
def test_nothing_to_pick_gives_only_the_input_errors_and_writes_nothing(tmp_path, kind, run_cli):
    """A RELION autopick STAR given as input= said "no rlnMicrographName column", then
    "binning: no accepted picks: the plan has no bins", and wrote an empty dataset (plan,
    exports, report) into a new output folder. So did an empty folder or glob. (In this process:
    test_unwritable_output_folder runs such a one-line error in a process of its own.)"""
    star = tmp_path / "mic_autopick.star"
    star.write_text("data_\n\nloop_\n_rlnCoordinateX #1\n_rlnCoordinateY #2\n10 20\n")
    (tmp_path / "empty").mkdir()
    spec, error = {
        "star without micrographs": (star, f"{star}: no rlnMicrographName column"),
        "empty folder": (tmp_path / "empty", f"{tmp_path / 'empty'}: folder contains no micrographs"),
        "empty glob": (f"'{tmp_path}/*.mrc'", f"{tmp_path}/*.mrc: no files match this pattern"),
        "missing file": (tmp_path / "typo.mrc", f"{tmp_path / 'typo.mrc'}: file not found"),
    }[kind]
    out = tmp_path / "out"
    code, stdout, stderr = run_cli("run", f"input={spec}", f"output={out}", *RUN_ARGS)
    assert code == 1
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"lipoframe: {error}"), stderr
    assert stdout == "" and not out.exists()
    # The Python API stops there too: the errors are logged, no dataset step, no plan.
    from lipoframe.merge import compose_config
    from lipoframe.records import InputError
    from lipoframe.runner import NOTHING_TO_PICK, run_pipeline

    cfg = compose_config([f"input={spec}", *RUN_ARGS, "runner.workers=1"])[1]
    with pytest.raises(InputError, match=f"^{NOTHING_TO_PICK}$"):
        run_pipeline(cfg, out)
    assert not [p.name for p in out.iterdir() if p.name != ".lipoframe.lock"]


def test_unwritable_output_folder(tmp_path):
    write_set(tmp_path / "in", 1)
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    proc = cli("run", f"input={tmp_path / 'in'}", f"output={blocker / 'out'}", *RUN_ARGS)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    err = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(err) == 1 and str(blocker / "out") in err[0] and "output folder" in err[0]


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root can write anywhere")
def test_read_only_output_folder(tmp_path):
    write_set(tmp_path / "in", 1)
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o500)
    try:
        proc = cli("run", f"input={tmp_path / 'in'}", f"output={out}", *RUN_ARGS)
    finally:
        out.chmod(0o700)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert f"{out}: cannot create or write the output folder" in proc.stderr


def test_verbose_shows_a_traceback_for_unexpected_errors(tmp_path):
    """An error that is not a known input problem: one line, and a traceback with runner.verbose=true."""
    from lipoframe.runner import MicJob, run_job

    class Boom:
        name = "mrc"

        def read(self, path, *, pixel_size=None):
            raise RuntimeError("library exploded")

    class Stages:
        def read(self, path, *, pixel_size=None):
            return Boom().read(path, pixel_size=pixel_size)

    from lipoframe.config import LipoframeConfig

    job = MicJob(tmp_path / "x.mrc", "x", tmp_path, "fp", False, False)
    quiet = run_job(job, LipoframeConfig(), Stages())
    assert quiet.status == "failed"
    assert quiet.error == f"{tmp_path / 'x.mrc'}: RuntimeError: library exploded"
    job.verbose = True
    loud = run_job(job, LipoframeConfig(), Stages())
    assert loud.error.splitlines()[0] == quiet.error and "Traceback" in loud.error


def test_a_stage_error_that_names_the_file_names_it_once(tmp_path):
    """A stage's ValueError already says which file and which option: no second prefix."""
    from lipoframe import plugins
    from lipoframe.merge import compose_config
    from lipoframe.runner import MicJob, build_stages, run_job

    path = tmp_path / "x.tif"  # a TIFF has no pixel size
    tifffile.imwrite(path, image(3))
    _, registry, _ = plugins.load()
    _, cfg = compose_config(["units=px", "dmin=30", "dmax=140", "filter=[min_size]",
                             "filter.min_size.min_diameter=50", "filter.min_size.units=A"])
    res = run_job(MicJob(path, "x", tmp_path, "fp", False, False), cfg, build_stages(cfg, registry))
    assert res.status == "failed"
    assert res.error.startswith(f"{path}: filter.min_size.min_diameter is in Å but the pixel size is unknown"), res.error
    assert res.error.count(str(path)) == 1 and "filter.min_size.units=px" in res.error, res.error


@pytest.mark.parametrize("where", ["last_row", "last_column", "inside"])
def test_a_nan_in_rows_or_columns_left_out_of_the_binning_is_found(where):
    from lipoframe.records import InputError, Micrograph, MicrographMeta, PickContext
    from lipoframe.runner import check_image

    img = image(3)[:383, :381].copy()  # not a multiple of the check's binning (4 here)
    spot = {"last_row": (382, 50), "last_column": (50, 380), "inside": (50, 50)}[where]
    img[spot] = np.nan
    mic = Micrograph(meta=MicrographMeta("m", "m.mrc", img.shape, 1.0), image=img)
    ctx = PickContext(dmin_px=128, dmax_px=300, polarity="dark", pixel_size=1.0, seed=0)
    with pytest.raises(InputError, match="NaN or infinite"):
        check_image(mic, ctx)


def test_a_pixel_size_that_makes_the_particles_vanish_is_named():
    from lipoframe.config import LipoframeConfig
    from lipoframe.records import InputError, MicrographMeta
    from lipoframe.runner import pick_context

    meta = MicrographMeta("m", "/data/m.mrc", (4096, 4096), 1e6)  # a header in nm or m, say
    with pytest.raises(InputError, match=r"^/data/m.mrc: the smallest diameter is 0.00015 px at 1e\+06 Å/px, too small to pick"):
        pick_context(meta, LipoframeConfig())
    assert pick_context(MicrographMeta("m", "/data/m.mrc", (4096, 4096), 1.0), LipoframeConfig()).dmin_px == 150


@pytest.mark.parametrize(("spoil", "said"), [
    (lambda a: (a.__setitem__((slice(0, 20),), np.nan), a.__setitem__((slice(None), slice(-16, None)), np.nan)),
     "a border of 20 rows at the top and 16 columns at the right (13504 NaN, 9.2 % of the image); crop it, or fill it "
     "with the image's mean, before picking"),
    (lambda a: a.__setitem__((slice(None), slice(0, 3)), -np.inf),
     "a border of 3 columns at the left (1152 infinite, 0.78 % of the image); crop it, or fill it with the image's "
     "mean, before picking"),
    (lambda a: (a.__setitem__((50, 50), np.nan), a.__setitem__((60, 60), np.inf)),
     "1 NaN and 1 infinite (0.0014 % of the image); replace them (with the image's mean, say) before picking"),
    (lambda a: (a.__setitem__((slice(0, 20),), np.nan), a.__setitem__((200, 200), np.nan)),
     "7681 NaN (5.2 % of the image); replace them (with the image's mean, say) before picking"),  # not only a border
    (lambda a: a.__setitem__(..., np.nan), "all of them (147456 NaN); nothing to pick"),
])
def test_nan_or_infinite_pixels_are_counted_and_a_border_of_them_is_named(spoil, said):
    """'image contains NaN or infinite pixels' said neither how many nor where: a border that a motion correction or
    a stitching left where no frame reached (to crop or fill) was told apart from nothing."""
    from lipoframe.records import InputError, Micrograph, MicrographMeta, PickContext
    from lipoframe.runner import check_image

    img = image(3)
    spoil(img)
    mic = Micrograph(meta=MicrographMeta("m", "m.mrc", img.shape, 1.0), image=img)
    ctx = PickContext(dmin_px=30, dmax_px=140, polarity="dark", pixel_size=1.0, seed=0)
    with pytest.raises(InputError) as caught:
        check_image(mic, ctx)
    assert str(caught.value) == f"m.mrc: image contains NaN or infinite pixels: {said}"


def _with_hot_pixels(img: np.ndarray, seed: int) -> np.ndarray:
    """``img`` with a hot pixel just outside each particle's rim and a dead one inside (1000 robust standard deviations)."""
    from lipoframe.synthetic import random_particles

    level = float(np.median(img))
    spread = 1.4826 * float(np.median(np.abs(img - level)))
    out = img.copy()
    for _, t in random_particles(img.shape, [45, 70, 100], seed=seed, margin=4).iterrows():
        out[int(t.y_px), min(int(t.x_px + 0.6 * t.diameter_px), img.shape[1] - 1)] = level + 1000 * spread
        out[int(t.y_px + 0.2 * t.diameter_px), int(t.x_px)] = level - 1000 * spread
    return out


def test_hot_and_dead_pixels_do_not_change_the_picks():
    """A few hot and dead pixels (a micrograph not denoised, or denoised badly) took the picks of the particles
    beside them: of three particles, two were picked, at other places and sizes. They are replaced before picking."""
    import lipoframe

    clean = image(0)
    picks = [lipoframe.pick(img, pixel_size=1.0, dmin=30, dmax=140) for img in (clean, _with_hot_pixels(clean, 0))]
    a, b = (p.loc[p["accepted"], ["x_px", "y_px", "diameter_px"]].sort_values("x_px").to_numpy() for p in picks)
    assert len(a) == 3 and a.shape == b.shape
    np.testing.assert_allclose(b, a, atol=0.5)
    # pick() said how many only in a warning: API users get the count as a run's micrographs/<name>.json records it
    assert [p.attrs["replaced_pixels"] for p in picks] == [0, 6]


def test_replaced_hot_pixels_are_told_and_recorded(tmp_path, run_cli):
    write_mrc(tmp_path / "in" / "hot.mrc", _with_hot_pixels(image(0), 0))
    write_mrc(tmp_path / "in" / "clean.mrc", image(1))
    out = tmp_path / "out"
    code, _, err = run_cli("run", f"input={tmp_path / 'in'}", f"output={out}", "runner.workers=1", *RUN_ARGS)
    assert code == 0, err
    assert f"{tmp_path / 'in' / 'hot.mrc'}: 6 hot or dead pixel(s) replaced by the median of their neighbourhood" in err
    assert "clean.mrc: " not in err
    infos = {name: json.loads((out / "micrographs" / f"{name}.json").read_text()) for name in ("hot", "clean")}
    assert infos["hot"]["replaced_pixels"] == 6 and "replaced_pixels" not in infos["clean"]
    notes = json.loads((out / "run_summary.json").read_text())["notes"]
    assert [n for n in notes if "hot or dead pixels" in n] == [
        n for n in notes if n.startswith("1 micrograph(s) had hot or dead pixels, replaced by the median of their "
                                         "neighbourhood before picking (pixels): hot (6);")]
    assert len([n for n in notes if "hot or dead pixels" in n]) == 1


@pytest.mark.parametrize("kind", ["gz", "bz2"])
def test_compressed_micrographs_are_picked_under_their_stem_and_exported_by_their_file_name(tmp_path, kind, run_cli):
    """'.mrc.gz' files were not found in a folder, and given by name got 'no reader for files ending in '.gz''
    ('.mrc.bz2' files too, later). Their results are named without '.mrc.gz'; the exports name the file as it is."""
    import bz2
    import gzip

    plain = write_mrc(tmp_path / "in" / "mic_a.mrc", image(0))
    packed = tmp_path / "in" / f"mic_a.mrc.{kind}"
    packed.write_bytes({"gz": gzip, "bz2": bz2}[kind].compress(plain.read_bytes()))
    plain.unlink()
    write_mrc(tmp_path / "in" / "mic_b.mrc", image(1))
    out = tmp_path / "out"
    code, _, err = run_cli("run", f"input={tmp_path / 'in'}", f"output={out}", "runner.workers=1", "writer=[csv,star,cbox]", *RUN_ARGS)
    assert code == 0, err
    assert sorted(p.name for p in (out / "micrographs").glob("*.csv")) == ["mic_a.csv", "mic_b.csv"]
    assert (out / "cbox" / "mic_a.cbox").is_file()
    import starfile

    table = starfile.read(out / "relion" / "autopick.star")
    assert sorted(Path(p).name for p in table["rlnMicrographName"]) == [f"mic_a.mrc.{kind}", "mic_b.mrc"]


def test_a_run_in_which_every_micrograph_fails_writes_no_dataset(tmp_path, run_cli):
    """A run whose inputs all failed when read (an unsupported .hdf, a corrupt MRC) wrote an empty picks.csv,
    STAR files and extraction plan, as if its micrographs had no particles. It writes none now, says so and
    exits with 1; an earlier run's outputs in the folder stay. A micrograph read fine without a single pick
    still gets its (empty) outputs."""
    noise = write_mrc(tmp_path / "in" / "noise.mrc", np.random.default_rng(0).normal(size=(384, 384)).astype(np.float32))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.hdf").write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(100))
    (tmp_path / "bad" / "corrupt.mrc").write_bytes(np.random.default_rng(1).bytes(5000))
    bad = f"input=[{tmp_path / 'bad' / 'x.hdf'},{tmp_path / 'bad' / 'corrupt.mrc'}]"
    dataset = ["picks.csv", "extraction_plan.json", "extraction_plan.md", "sizes.csv", "relion/autopick.star"]

    fresh = tmp_path / "fresh"
    code, stdout, err = run_cli("run", bad, f"output={fresh}", "runner.workers=1", *RUN_ARGS)
    assert code == 1
    said = "every micrograph failed (2 of 2): no picks, plan or exports were written"
    assert f"lipoframe: {said}" in err.splitlines()  # once: the summary counts it (logs.logged_errors)
    assert "ERROR  1 error (named above; listed in run_summary.json)" in stdout.splitlines() and said not in stdout
    assert not [f for f in dataset if (fresh / f).exists()]
    summary = json.loads((fresh / "run_summary.json").read_text())
    assert summary["micrographs"]["failed"] == 2 and summary["errors"] == [said]

    earlier = tmp_path / "earlier"
    code, _, err = run_cli("run", f"input={noise}", f"output={earlier}", "runner.workers=1", *RUN_ARGS)
    assert code == 0, err
    assert json.loads((earlier / "run_summary.json").read_text())["picks"]["accepted"] == 0
    kept = {f: (earlier / f).read_bytes() for f in dataset}  # no particle: the outputs are written all the same
    assert len(pd.read_csv(earlier / "picks.csv")) == 0
    code, _, err = run_cli("run", bad, f"output={earlier}", "runner.workers=1", *RUN_ARGS)
    assert code == 1
    assert f"lipoframe: {said}; the earlier run's in {earlier} are as they were" in err.splitlines()
    assert {f: (earlier / f).read_bytes() for f in dataset} == kept


def test_every_micrograph_failed_says_earlier_outputs_stay_only_when_there_are_some(tmp_path):
    """A run with other settings removes the earlier run's outputs as it starts (written_files.json then lists
    none); when its micrographs all failed, the error said 'the earlier run's in <folder> are as they were'."""
    from lipoframe.runner import WRITTEN, every_micrograph_failed_message

    said = "every micrograph failed (2 of 2): no picks, plan or exports were written"
    assert every_micrograph_failed_message(tmp_path, 2) == said
    (tmp_path / WRITTEN).write_text(json.dumps({"files": []}))  # as drop_outputs_of_other_settings leaves it
    assert every_micrograph_failed_message(tmp_path, 2) == said
    (tmp_path / WRITTEN).write_text(json.dumps({"files": ["picks.csv"]}))
    assert every_micrograph_failed_message(tmp_path, 2) == f"{said}; the earlier run's in {tmp_path} are as they were"
