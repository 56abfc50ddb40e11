"""``input=`` given a list of micrographs: a RELION micrographs STAR, or a text file with one path per line."""

from __future__ import annotations

import json
import os
import shlex
import types
from pathlib import Path

import pytest
from scale_data import RUN_ARGS, write_set

from lipoframe.inputlists import ListError, ListedPath, find_project, read_list, relion_project
from lipoframe.records import InputError
from lipoframe.runner import expand_inputs, extraction_micrographs_star, find_inputs, listed_pixel_size_notes, write_manifest
from lipoframe.watch import FolderWatcher, watched_specs

SUFFIXES = (".mrc", ".tif")

OPTICS = """
# version 30001

data_optics

loop_
_rlnOpticsGroupName #1
_rlnOpticsGroup #2
_rlnMicrographOriginalPixelSize #3
_rlnVoltage #4
_rlnMicrographPixelSize #5
opticsGroup1 1 0.5 300.0 {px1}
opticsGroup2 2 0.5 300.0 {px2}

"""


def micrographs_star(path: Path, names: list[str], *, groups: list[int] | None = None, px1: float = 2.0, px2: float = 3.0,
                     optics: bool = True) -> Path:
    """A RELION 3.1+ ``micrographs_ctf.star`` listing ``names`` (optics group 1 unless ``groups`` says)."""
    groups = groups or [1] * len(names)
    rows = "\n".join(f"{n} {g} CtfFind/job003/{Path(n).stem}.ctf:mrc" for n, g in zip(names, groups))
    text = (OPTICS.format(px1=px1, px2=px2) if optics else "") + (
        "# version 30001\n\ndata_micrographs\n\nloop_\n_rlnMicrographName #1\n_rlnOpticsGroup #2\n_rlnCtfImage #3\n" + rows + "\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def run_in(run_cli, monkeypatch):
    """``run_in(folder, *args)``: ``lipoframe ARGS`` in this process, from ``folder``; returns (exit code, stdout, stderr).

    For the commands whose process boundary is not what a test checks (``tests/test_cli.py`` runs one in its own
    process): the command line, relative paths and output streams are those of ``python -m lipoframe`` there.
    """
    def run(folder: Path, *args: str) -> tuple[int, str, str]:
        monkeypatch.chdir(folder)
        return run_cli(*args)

    return run


def project(tmp_path: Path, n: int = 2) -> tuple[Path, list[str]]:
    """A RELION project folder with ``n`` micrographs in ``MotionCorr/job002/Movies/``; returns it and their names."""
    proj = tmp_path / "proj"
    write_set(proj / "MotionCorr" / "job002" / "Movies", n)
    return proj, [f"MotionCorr/job002/Movies/mic_{i:03d}.mrc" for i in range(n)]


# -- RELION STAR ---------------------------------------------------------------
def test_a_star_lists_its_micrographs_from_the_project_with_the_optics_pixel_sizes(tmp_path, monkeypatch):
    proj, names = project(tmp_path)
    star = micrographs_star(proj / "CtfFind" / "job003" / "micrographs_ctf.star", names, groups=[1, 2])
    monkeypatch.chdir(tmp_path)
    listed = read_list("proj/CtfFind/job003/micrographs_ctf.star")
    # relative to the project (the STAR's grand-parent), shown from the current folder as the STAR was given
    assert listed.paths == [Path("proj", n) for n in names]
    assert listed.project == str(proj)
    assert listed.pixel_sizes == {str(proj / names[0]): 2.0, str(proj / names[1]): 3.0}
    # from inside the project, the paths are RELION's own names
    monkeypatch.chdir(proj)
    assert read_list("CtfFind/job003/micrographs_ctf.star").paths == [Path(n) for n in names]
    assert read_list(str(star)).paths == [proj / n for n in names]
    assert relion_project([str(star), "other/*.mrc"]) == str(proj)


def test_a_star_without_optics_group_column_takes_the_only_optics_group(tmp_path):
    proj, names = project(tmp_path, 1)
    star = proj / "Select" / "job009" / "micrographs.star"
    star.parent.mkdir(parents=True)
    star.write_text(OPTICS.format(px1=1.25, px2=9).replace("opticsGroup2 2 0.5 300.0 9\n", "")
                    + "data_micrographs\n\nloop_\n_rlnMicrographName #1\n" + names[0] + "\n")
    assert read_list(star).pixel_sizes == {str(proj / names[0]): 1.25}


def test_a_relion_30_star_gives_the_pixel_size_from_detector_and_magnification(tmp_path):
    proj, names = project(tmp_path, 1)
    star = proj / "CtfFind" / "job003" / "micrographs_ctf.star"
    star.parent.mkdir(parents=True)
    star.write_text("data_\n\nloop_\n_rlnMicrographName #1\n_rlnDetectorPixelSize #2\n_rlnMagnification #3\n"
                    f"{names[0]} 5.0 50000.0\n")
    listed = read_list(star)
    assert listed.paths == [proj / names[0]]
    assert listed.pixel_sizes[str(proj / names[0])] == pytest.approx(1.0)


def test_a_star_without_any_pixel_size_leaves_it_to_the_header(tmp_path):
    proj, names = project(tmp_path, 1)
    star = micrographs_star(proj / "CtfFind" / "job003" / "micrographs_ctf.star", names, optics=False)
    listed = read_list(star)
    assert listed.paths == [proj / names[0]] and listed.pixel_sizes == {}


def test_the_project_is_found_wherever_the_star_is(tmp_path, monkeypatch):
    proj, names = project(tmp_path, 1)
    # a STAR copied into the project folder itself
    assert read_list(micrographs_star(proj / "mics.star", names)).paths == [proj / names[0]]
    # a STAR outside the project: RELION resolves its paths from the folder it runs in
    monkeypatch.chdir(proj)
    assert read_list(micrographs_star(tmp_path / "elsewhere" / "mics.star", names)).paths == [proj / names[0]]
    assert read_list(os.path.relpath(tmp_path / "elsewhere" / "mics.star")).paths == [Path(names[0])]
    # nothing listed exists: the grand-parent of a jobNNN folder, else the STAR's own folder
    assert find_project(tmp_path / "p2" / "CtfFind" / "job004" / "m.star", ["gone.mrc"]) == str(tmp_path / "p2")
    assert find_project(tmp_path / "p3" / "lists" / "m.star", ["gone.mrc"]) == str(tmp_path / "p3" / "lists")


def test_listed_files_that_are_missing_are_kept_to_be_reported(tmp_path):
    proj, names = project(tmp_path, 1)
    star = micrographs_star(proj / "CtfFind" / "job003" / "micrographs_ctf.star", [*names, "MotionCorr/job002/Movies/gone.mrc"])
    paths, problems = find_inputs([str(star)], SUFFIXES)
    assert paths == [proj / names[0], proj / "MotionCorr/job002/Movies/gone.mrc"] and problems == []


@pytest.mark.parametrize("text, words", [
    ("data_movies\n\nloop_\n_rlnMicrographMovieName #1\nMovies/a.tiff\n", "a movies STAR (rlnMicrographMovieName)"),
    ("data_coordinate_files\n\nloop_\n_rlnMicrographName #1\n_rlnMicrographCoordinates #2\na.mrc a_autopick.star\n",
     "a RELION coordinate list (rlnMicrographCoordinates)"),
    ("data_\n\nloop_\n_rlnCoordinateX #1\n_rlnCoordinateY #2\n1 2\n", "no rlnMicrographName column"),
])
def test_a_star_that_lists_no_micrographs_is_one_line_naming_it(tmp_path, text, words):
    star = tmp_path / "x.star"
    star.write_text(text)
    with pytest.raises(ListError) as err:
        read_list(star)
    assert str(err.value).startswith(f"{star}: ") and words in str(err.value) and "\n" not in str(err.value)
    # a run reports it like an input that matched nothing, and goes on with the others
    mics = write_set(tmp_path / "mics", 1)
    paths, problems = find_inputs([str(star), str(mics[0])], SUFFIXES)
    assert paths == mics and len(problems) == 1 and problems[0].startswith(f"{star}: ")


def test_a_list_that_does_not_exist_or_is_empty_is_reported(tmp_path):
    (tmp_path / "empty.txt").write_text("# nothing yet\n\n")
    paths, problems = find_inputs([str(tmp_path / "nope.star"), str(tmp_path / "empty.txt")], SUFFIXES)
    assert paths == []
    assert problems == [f"{tmp_path / 'nope.star'}: micrograph list not found", f"{tmp_path / 'empty.txt'}: the list names no micrographs"]


# -- text lists --------------------------------------------------------------
def test_a_text_list_is_read_from_its_folder_without_comments_or_blank_lines(tmp_path, monkeypatch):
    mics = write_set(tmp_path / "data" / "mics", 3)
    monkeypatch.setenv("HOME", str(tmp_path))
    lst = tmp_path / "data" / "lists" / "good.txt"
    lst.parent.mkdir()
    lst.write_text(f"# micrographs that passed CTF\n../mics/mic_002.mrc\n\n   ../mics/mic_000.mrc  \r\n#../mics/mic_001.mrc\n"
                   f"{mics[1]}\n~/data/mics/mic_000.mrc\n")
    assert read_list(lst).paths == [lst.parent / "../mics/mic_002.mrc", lst.parent / "../mics/mic_000.mrc", mics[1],
                                    tmp_path / "data/mics/mic_000.mrc"]
    # the run takes each file once (the same file reached twice is told), in the list's order
    same: list = []
    assert expand_inputs([str(lst)], SUFFIXES, same_file=same) == read_list(lst).paths[:3]
    assert len(same) == 1
    monkeypatch.chdir(tmp_path / "data")
    assert read_list("lists/good.txt").paths[0] == Path("lists/../mics/mic_002.mrc")
    # .lst is the same
    (tmp_path / "data" / "mics.lst").write_text("mics/mic_001.mrc\n")
    assert expand_inputs(["mics.lst"], SUFFIXES) == [Path("mics/mic_001.mrc")]


def test_an_eman2_particle_list_is_refused(tmp_path):
    lst = tmp_path / "sets.lst"
    lst.write_text("#LSX\n# This file is in fast LST format.\n0\tparticles/a.hdf\n")
    with pytest.raises(ListError, match="EMAN2 particle list"):
        read_list(lst)


def test_a_list_is_read_again_when_it_changes(tmp_path):
    lst = tmp_path / "l.txt"
    lst.write_text("a.mrc\n")
    assert read_list(lst).paths == [tmp_path / "a.mrc"]
    lst.write_text("a.mrc\nbb.mrc\n")
    assert read_list(lst).paths == [tmp_path / "a.mrc", tmp_path / "bb.mrc"]


def test_watch_reads_a_list_once_and_refuses_a_bad_one(tmp_path):
    lst = tmp_path / "l.txt"
    lst.write_text("a.mrc\nb.mrc\n")
    told = []
    specs = watched_specs([str(lst), "more/"], SUFFIXES, told.append)
    assert specs == [str(tmp_path / "a.mrc"), str(tmp_path / "b.mrc"), "more/"]
    assert [isinstance(s, ListedPath) for s in specs] == [True, True, False]
    assert "read once" in told[0]
    (tmp_path / "bad.star").write_text("data_\n\nloop_\n_rlnCoordinateX #1\n1\n")
    with pytest.raises(InputError, match="no rlnMicrographName"):
        watched_specs([str(tmp_path / "bad.star")], SUFFIXES)


def test_listed_paths_are_literal_also_when_watched(tmp_path):
    """A listed name with glob characters is that file, not a pattern (mic[1].mrc would match mic1.mrc)."""
    odd = write_set(tmp_path / "mics", 1, prefix="mic[1]")[0]  # mics/mic[1]_000.mrc
    other = write_set(tmp_path / "mics", 1, prefix="mic1")[0]  # which the pattern mic[1]_000.mrc matches
    star_named = tmp_path / "mics" / "a*.mrc"
    star_named.write_bytes(odd.read_bytes())
    lst = tmp_path / "l.txt"
    lst.write_text(f"mics/{odd.name}\nmics/a*.mrc\n")
    listed = [odd, star_named]
    assert expand_inputs([str(lst)], SUFFIXES) == listed
    watcher = FolderWatcher(watched_specs([str(lst)], SUFFIXES, lambda _: None), SUFFIXES, stable_polls=1)
    assert watcher.poll() == listed and other not in watcher.present()


def test_a_path_given_as_input_is_read_as_written_not_as_a_listed_file(tmp_path):
    """Only a ListedPath is one file as it is: a Path given by a Python caller is a folder, pattern or list as a string is."""
    mics = write_set(tmp_path / "mics", 2)
    lst = tmp_path / "l.txt"
    lst.write_text("mics/mic_001.mrc\n")
    assert expand_inputs([tmp_path / "mics"], SUFFIXES) == mics
    assert expand_inputs([tmp_path / "mics" / "*.mrc"], SUFFIXES) == mics
    assert expand_inputs([lst], SUFFIXES) == [mics[1]]
    assert expand_inputs([ListedPath(tmp_path / "mics")], SUFFIXES) == [tmp_path / "mics"]


@pytest.mark.parametrize("inner", ["more.txt", "CtfFind/job004/micrographs_ctf.star", "sets.LST"])
def test_a_list_that_lists_another_list_is_refused_naming_both(tmp_path, inner):
    mics = write_set(tmp_path / "mics", 1)
    (tmp_path / inner).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / inner).write_text("mics/mic_000.mrc\n")
    lst = tmp_path / "l.txt"
    lst.write_text(f"mics/mic_000.mrc\n{inner}\n")
    paths, problems = find_inputs([str(lst), str(mics[0])], SUFFIXES)
    assert paths == mics  # the other inputs go on
    assert len(problems) == 1 and problems[0].startswith(f"{lst}: ") and str(tmp_path / inner) in problems[0]
    assert "list" in problems[0].split(": ", 1)[1] and "\n" not in problems[0]
    with pytest.raises(ListError) as err:
        watched_specs([str(lst)], SUFFIXES)
    assert str(err.value) == problems[0]
    # a reader that claims the suffix makes the listed file a micrograph
    assert find_inputs([str(lst)], (*SUFFIXES, Path(inner).suffix.lower()))[1] == []


def test_a_star_pixel_size_unlike_the_headers_is_one_warning_per_dataset(tmp_path, caplog):
    from lipoframe import plugins
    from lipoframe.merge import compose_config
    from lipoframe.runner import build_stages

    registry = plugins.load()[1]
    proj, names = project(tmp_path, 4)  # headers: 1 Å/px
    star = proj / "CtfFind" / "job003" / "micrographs_ctf.star"

    def notes(*overrides, **kw):
        micrographs_star(star, names, **kw)
        cfg = compose_config([f"input={star}", *overrides])[1]
        caplog.clear()
        with caplog.at_level("WARNING", logger="lipoframe"):
            out = listed_pixel_size_notes(build_stages(cfg, registry), cfg)
        assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == out
        return out

    # group 1 (three micrographs) disagrees, group 2 within 1 %: one warning, naming both values and the one used
    said = notes(groups=[1, 2, 1, 1], px1=2.0, px2=1.008)
    assert len(said) == 1 and said[0].startswith(f"{star}: ")
    assert "2 Å/px" in said[0] and "1 Å/px" in said[0] and str(proj / names[0]) in said[0] and "using the STAR's 2 Å/px" in said[0]
    assert "\n" not in said[0]
    assert notes(px1=1.008) == []
    assert len(notes(px1=0.98)) == 1
    assert notes("pixel_size=1.5", px1=2.0) == []  # pixel_size= wins over both: nothing to compare
    # the first micrograph of a group that cannot be read: the next one is asked
    (proj / names[0]).write_bytes(b"not an MRC file")
    assert len(notes(px1=2.0)) == 1


# -- a run -------------------------------------------------------------------
def test_a_run_from_a_relion_star_picks_its_micrographs_and_exports_relion_names(tmp_path, run_in):
    import starfile

    proj, names = project(tmp_path, 2)
    names_listed = [*names, "MotionCorr/job002/Movies/gone.mrc"]
    # the headers say 1 Å/px, the STAR 2 Å/px: RELION's value is taken, so 30-140 Å is 15-70 px
    star = micrographs_star(proj / "CtfFind" / "job003" / "micrographs_ctf.star", names_listed, px1=2.0)
    out = proj / "External" / "lipoframe"
    code, stdout, stderr = run_in(proj, "run", "input=CtfFind/job003/micrographs_ctf.star", f"output={out}", *RUN_ARGS, "runner.workers=1")
    assert code != 0  # one listed micrograph is missing ...
    assert "MotionCorr/job002/Movies/gone.mrc: file not found" in stderr + stdout
    # one warning for the dataset, not one per micrograph (and a note in the summary)
    assert stderr.count("the STAR gives 2 Å/px") == 1 and stdout.count("the STAR gives 2 Å/px") == 1
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["micrographs"]["ok"] == 2 and summary["micrographs"]["failed"] == 1  # ... the others are picked
    for i in range(2):
        meta = json.loads((out / "micrographs" / f"mic_{i:03d}.json").read_text())["meta"]
        assert meta["name"] == f"mic_{i:03d}" and meta["pixel_size"] == 2.0
    assert json.loads((out / "inputs.json").read_text())["relion_project"] == str(proj)
    # RELION matches the coordinate list to the STAR by rlnMicrographName: the STAR's own names, paths from the project
    listing = starfile.read(out / "relion" / "autopick.star", parse_as_string=["rlnMicrographName"])
    assert listing["rlnMicrographName"].tolist() == names
    assert listing["rlnMicrographCoordinates"].tolist() == [f"External/lipoframe/relion/coords/mic_{i:03d}_autopick.star" for i in range(2)]
    assert "--coord_list External/lipoframe/bins/bin1/autopick.star" in (out / "extraction_plan.md").read_text()
    # `lipoframe plan` from another folder keeps them
    assert run_in(tmp_path, "plan", str(out), "binning=single")[0] == 0
    assert starfile.read(out / "relion" / "autopick.star")["rlnMicrographName"].tolist() == names
    # a corrected optics table picks again the micrographs it changes; pixel_size= wins over the STAR
    micrographs_star(star, names, px1=2.5)
    code, _, stderr = run_in(tmp_path, "run", f"input={star}", f"output={out}", *RUN_ARGS, "runner.workers=1")
    assert code == 0, stderr
    assert json.loads((out / "run_summary.json").read_text())["micrographs"]["ok"] == 2
    assert json.loads((out / "micrographs" / "mic_000.json").read_text())["meta"]["pixel_size"] == 2.5
    code, stdout, stderr = run_in(tmp_path, "run", f"input={star}", f"output={tmp_path / 'px'}", *RUN_ARGS, "pixel_size=1.0",
                                  "runner.workers=1")
    assert code == 0, stderr
    assert json.loads((tmp_path / "px" / "micrographs" / "mic_000.json").read_text())["meta"]["pixel_size"] == 1.0
    assert "the STAR gives" not in stderr + stdout


def test_writer_star_project_dir_given_wins_over_the_stars(tmp_path, run_in):
    import starfile

    proj, names = project(tmp_path, 1)
    star = micrographs_star(proj / "CtfFind" / "job003" / "micrographs_ctf.star", names, px1=1.0)
    out = tmp_path / "run"
    code, _, stderr = run_in(tmp_path, "run", f"input={star}", f"output={out}", *RUN_ARGS, "runner.workers=1", "writer=[star]",
                             f"writer.star.project_dir={tmp_path}")
    assert code == 0, stderr
    assert starfile.read(out / "relion" / "autopick.star")["rlnMicrographName"].tolist() == [os.path.join("proj", names[0])]
    assert set(extract_inputs(out / "extraction_plan.md")) == {"proj/CtfFind/job003/micrographs_ctf.star"}


def extract_inputs(md_path: Path) -> list[str]:
    """The ``--i`` of each ``relion_preprocess`` command in ``extraction_plan.md``."""
    commands = [shlex.split(ln) for ln in md_path.read_text().splitlines() if ln.strip().startswith("relion_preprocess")]
    assert commands
    return [c[c.index("--i") + 1] for c in commands]


def test_the_extraction_commands_extract_from_the_star_given(tmp_path, run_in):
    proj, names = project(tmp_path, 2)
    star = micrographs_star(proj / "Select" / "job009" / "micrographs.star", names, px1=1.0)
    out = proj / "External" / "lipoframe"
    code, _, stderr = run_in(tmp_path, "run", "input=proj/Select/job009/micrographs.star", f"output={out}", *RUN_ARGS, "runner.workers=1")
    assert code == 0, stderr
    assert "the STAR gives" not in stderr  # STAR and headers agree: 1 Å/px
    # as RELION runs it, from the project: the STAR given, not CtfFind/job003/micrographs_ctf.star
    assert set(extract_inputs(out / "extraction_plan.md")) == {"Select/job009/micrographs.star"}
    assert json.loads((out / "inputs.json").read_text())["relion_micrographs_star"] == str(star)
    # `lipoframe plan` from another folder keeps it
    assert run_in(tmp_path / "proj" / "External", "plan", str(out), "binning=single")[0] == 0
    assert extract_inputs(out / "extraction_plan.md") == ["Select/job009/micrographs.star"]


def test_the_extraction_star_is_recorded_for_one_star_only(tmp_path):
    cfg = types.SimpleNamespace(shard=types.SimpleNamespace(index=0, count=1))
    proj, names = project(tmp_path, 1)
    star = micrographs_star(proj / "CtfFind" / "job007" / "micrographs_ctf.star", names)
    lst = tmp_path / "l.txt"
    lst.write_text(f"{proj / names[0]}\n")
    out = tmp_path / "out"
    out.mkdir()
    write_manifest(out, [str(star)], [], [], cfg, "f")
    assert extraction_micrographs_star(out, "") == "CtfFind/job007/micrographs_ctf.star"
    assert extraction_micrographs_star(out, str(tmp_path)) == "proj/CtfFind/job007/micrographs_ctf.star"
    # a merge passes its shards' on
    write_manifest(out, ["other/relative/spec.star"], [], [], cfg, "f", project=str(proj), micrographs_star=str(star))
    assert extraction_micrographs_star(out, "") == "CtfFind/job007/micrographs_ctf.star"
    # not a STAR, or two of them: the command keeps its default --i
    for specs in ([str(lst)], [str(proj / names[0])], [str(star), str(micrographs_star(proj / "Select" / "job9" / "m.star", names))]):
        write_manifest(out, specs, [], [], cfg, "f")
        assert extraction_micrographs_star(out, "") == ""


def test_a_corrected_optics_table_of_a_run_in_pixels_keeps_its_picks(tmp_path, monkeypatch):
    # units=px: the picks do not depend on the pixel size; the saved results take the STAR's new one, as a fresh run's
    import pandas as pd

    from lipoframe.merge import compose_config
    from lipoframe.runner import run_pipeline

    monkeypatch.setenv("LIPOFRAME_LOAD_PLUGINS", "")
    proj, names = project(tmp_path, 2)
    star = micrographs_star(proj / "CtfFind" / "job003" / "micrographs_ctf.star", names, px1=2.0)

    def run(out):
        result = run_pipeline(compose_config([f"input={star}", "units=px", "runner.workers=1", *RUN_ARGS])[1], out)
        return {r.name: r.status for r in result.results}

    assert set(run(tmp_path / "out").values()) == {"ok"}
    micrographs_star(star, names, px1=2.5)
    assert set(run(tmp_path / "out").values()) == {"skipped"}
    assert set(run(tmp_path / "fresh").values()) == {"ok"}
    for name in ("mic_000", "mic_001"):
        saved = [json.loads((tmp_path / out / "micrographs" / f"{name}.json").read_text()) for out in ("out", "fresh")]
        assert saved[0]["meta"]["pixel_size"] == saved[1]["meta"]["pixel_size"] == 2.5
    assert (tmp_path / "out" / "picks.csv").read_bytes() == (tmp_path / "fresh" / "picks.csv").read_bytes()
    picks = pd.read_csv(tmp_path / "out" / "micrographs" / "mic_000.csv")  # 4 decimals
    assert len(picks) and (picks["diameter_A"] - 2.5 * picks["diameter_px"]).abs().max() <= 0.00005 + 1e-9


@pytest.mark.parametrize("units", ["px", "A"])
def test_a_star_run_continued_from_the_folder_takes_the_headers_pixel_size_as_a_new_run(tmp_path, monkeypatch, caplog, units):
    # picked from a STAR (2 Å/px), then the same micrographs given as their folder (headers: 1 Å/px): the resumed
    # micrographs kept the STAR's 2 Å/px, where a new run from the folder picks at 1 Å/px
    from lipoframe import plugins
    from lipoframe.merge import compose_config
    from lipoframe.runner import MicJob, build_stages, run_job, run_pipeline

    monkeypatch.setenv("LIPOFRAME_LOAD_PLUGINS", "")
    proj, names = project(tmp_path, 2)
    folder = proj / "MotionCorr" / "job002" / "Movies"
    star = micrographs_star(proj / "CtfFind" / "job003" / "micrographs_ctf.star", names, px1=2.0)

    def config(inp, *overrides):
        return compose_config([f"input={inp}", f"units={units}", "runner.workers=1", *RUN_ARGS, *overrides])[1]

    def run(inp, out):
        caplog.clear()
        with caplog.at_level("INFO", logger="lipoframe"):
            result = run_pipeline(config(inp), out)
        return {r.name: r.status for r in result.results}

    def saved(out):
        return [json.loads((out / "micrographs" / f"mic_00{i}.json").read_text())["meta"]["pixel_size"] for i in range(2)]

    def told():
        return [r.getMessage() for r in caplog.records if "micrographs STAR gave" in r.getMessage()]

    out, fresh = tmp_path / "out", tmp_path / "fresh"
    assert set(run(star, out).values()) == {"ok"} and saved(out) == [2.0, 2.0]
    # picked again where the picks depend on the pixel size (units=A), else re-used at the headers' pixel size
    assert set(run(folder, out).values()) == {"ok" if units == "A" else "skipped"}
    assert told() == ["2 micrograph(s) picked before at the pixel size a micrographs STAR gave them (2 Å/px) are now at their "
                      "headers' (1 Å/px), as no STAR among this run's inputs lists them: to keep the STAR's, give the STAR as "
                      "input= (or pixel_size=<Å/px>)"]
    assert set(run(folder, fresh).values()) == {"ok"}
    assert saved(out) == saved(fresh) == [1.0, 1.0]
    assert (out / "picks.csv").read_bytes() == (fresh / "picks.csv").read_bytes()
    # the next run from the folder has nothing to change or say; the STAR again gives its pixel size back
    assert set(run(folder, out).values()) == {"skipped"} and not told()
    assert set(run(star, out).values()) == {"ok" if units == "A" else "skipped"} and saved(out) == [2.0, 2.0]
    # a job resumed on its own (run_job) is picked at the headers' pixel size as well
    registry = plugins.load()[1]
    cfg = config(folder)
    job = MicJob(folder / "mic_000.mrc", "mic_000", out, cfg.per_micrograph_fingerprint(), True, False)
    assert run_job(job, cfg, build_stages(cfg, registry)).status == ("ok" if units == "A" else "skipped")
    assert saved(out)[0] == 1.0
