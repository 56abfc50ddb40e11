"""The runner's execution: workers, names, progress, crashes of a worker, Ctrl-C, launchers."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from scale_data import GATE_READER, RUN_ARGS, cli, env, env_with_plugins, image, write_mrc, write_set

from lipoframe import plugins
from lipoframe.merge import compose_config
from lipoframe.records import InputError
from lipoframe.runner import (
    MicJob,
    build_stages,
    execute_jobs,
    find_inputs,
    micrograph_names,
    name_notes,
    output_folder,
    resolve_workers,
    run_pipeline,
    shard,
)


@pytest.fixture(autouse=True)
def _no_plugins(monkeypatch):
    monkeypatch.setenv("LIPOFRAME_LOAD_PLUGINS", "")


def config(folder, *overrides):
    return compose_config([f"input={folder}", *RUN_ARGS, *overrides])[1]


# -- inputs and names ---------------------------------------------------------
def test_names_keep_stems_and_tell_clashes_apart():
    paths = [Path("/d/s1/M/x.mrc"), Path("/d/s2/M/x.mrc"), Path("/d/s2/M/y.mrc"), Path("/d/t.mrc"), Path("/d/t.tif"), Path("/d/..mrc")]
    names = micrograph_names(paths)
    assert names == ["s1-M-x", "s2-M-x", "y", "t_mrc", "t_tif", "micrograph"]
    assert len(set(names)) == len(names)
    notes = name_notes(paths, names)
    assert len(notes) == 5 and not any("/d/s2/M/y.mrc" in n for n in notes)
    assert "another input has the same name" in notes[0] and "not safe" in notes[-1]


def test_names_of_clashing_stems_stay_apart_in_eman2():
    from lipoframe.io.eman import eman2_base_name

    # EMAN2 files the boxes of a/mic and a/img both under info/a_info.json if they are named a__mic, a__img
    paths = [Path("/d/a/mic.mrc"), Path("/d/b/mic.mrc"), Path("/d/a/img.mrc"), Path("/d/b/img.mrc")]
    names = micrograph_names(paths)
    assert names == ["a-mic", "b-mic", "a-img", "b-img"]
    assert len({eman2_base_name(n) for n in names}) == 4


def test_names_are_unique_even_when_a_new_name_is_taken():
    paths = [Path("/a/x.mrc"), Path("/b/x.mrc"), Path("/c/a-x.mrc")]
    names = micrograph_names(paths)
    assert len(set(names)) == 3
    # The file really named a-x keeps its name (it was renamed a-x_2, "the file name is not safe").
    assert names[2] == "a-x" and name_notes(paths, names)[2:] == []


def test_a_safe_name_renamed_by_the_counter_is_not_called_unsafe():
    notes = name_notes([Path("/d/mic_2.mrc")], ["mic_2_2"])
    assert notes == ["/d/mic_2.mrc: results are named 'mic_2_2' (another input's results take this name)"]


def test_shards_partition_the_inputs():
    items = list(range(11))
    parts = [shard(items, i, 4) for i in range(4)]
    assert sorted(sum(parts, [])) == items
    assert parts[1] == [1, 5, 9]


def test_find_inputs_reports_what_matched_nothing(tmp_path):
    write_set(tmp_path / "full", 2)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    paths, problems = find_inputs([str(tmp_path / "full"), str(tmp_path / "empty"), f"{tmp_path}/none*.mrc"], (".mrc",))
    assert [p.name for p in paths] == ["mic_000.mrc", "mic_001.mrc"]
    assert problems == [
        f"{tmp_path / 'empty'}: folder contains no micrographs (looked for .mrc)",
        f"{tmp_path}/none*.mrc: no files match this pattern",
    ]


def test_a_folder_whose_micrographs_are_in_subfolders_says_how_to_give_them(tmp_path):
    """EPU's layout (GridSquare_*/Data/*.mrc) given as its top folder said only 'folder contains no micrographs'."""
    write_set(tmp_path / "session" / "GridSquare_1" / "Data", 1)
    paths, problems = find_inputs([str(tmp_path / "session")], (".mrc",))
    assert paths == []
    assert problems == [f"{tmp_path / 'session'}: folder contains no micrographs (looked for .mrc); its subfolders do "
                        f"(such as {tmp_path / 'session' / 'GridSquare_1' / 'Data' / 'mic_000.mrc'}): "
                        f"give input='{tmp_path / 'session' / '**' / '*.mrc'}'"]
    assert [p.name for p in find_inputs([f"{tmp_path / 'session'}/**/*.mrc"], (".mrc",))[0]] == ["mic_000.mrc"]


def test_the_subfolder_hint_names_the_micrographs_not_epus_jpeg_thumbnails(tmp_path):
    """EPU keeps GridSquare_*.jpg beside FoilHoles/ and Data/ (and a .jpg of each micrograph in Data/):
    the first file found was a thumbnail, and the hint gave input='<session>/**/*.jpg'."""
    square = tmp_path / "session" / "Images-Disc1" / "GridSquare_1"
    write_set(square / "Data", 1)
    for jpg in (square / "GridSquare_1.jpg", square / "FoilHoles" / "FoilHole_1.jpg", square / "Data" / "mic_000.jpg"):
        jpg.parent.mkdir(parents=True, exist_ok=True)
        jpg.write_bytes(b"")
    _, problems = find_inputs([str(tmp_path / "session")], (".jpg", ".mrc", ".png"))
    assert len(problems) == 1 and problems[0].endswith(
        f"(such as {square / 'Data' / 'mic_000.mrc'}): give input='{tmp_path / 'session' / '**' / '*.mrc'}'"), problems
    (square / "Data" / "mic_000.mrc").unlink()  # pictures only: they are named
    _, problems = find_inputs([str(tmp_path / "session")], (".jpg", ".mrc", ".png"))
    assert problems[0].endswith(f"(such as {square / 'GridSquare_1.jpg'}): give input='{tmp_path / 'session' / '**' / '*.jpg'}'")


def test_the_subfolder_hint_does_not_walk_a_large_tree_to_its_end(tmp_path, monkeypatch):
    """input=/data (a big tree, a network mount) with no micrographs anywhere walked every folder below it
    before saying 'folder contains no micrographs', which could take hours."""
    import lipoframe.runner as runner

    top = tmp_path / "data"
    for i in range(12):
        for j in range(12):
            for k in range(12):
                (top / f"d{i:02d}" / f"e{j:02d}" / f"f{k:02d}").mkdir(parents=True)
    deep = top / "a"
    for i in range(12):
        deep = deep / f"l{i}"
    deep.mkdir(parents=True)
    total = 1 + 12 + 12**2 + 12**3 + 12  # folders below (and including) data/
    real_walk, visited = os.walk, []

    def walk(folder, *args, **kwargs):
        for root, dirs, files in real_walk(folder, *args, **kwargs):
            visited.append(root)
            yield root, dirs, files

    monkeypatch.setattr(runner.os, "walk", walk)
    _, problems = find_inputs([str(top)], (".mrc",))
    assert problems == [f"{top}: folder contains no micrographs (looked for .mrc)"]
    assert 0 < len(visited) <= 1000 < total
    assert max(len(Path(v).relative_to(top).parts) for v in visited) <= 6  # a deep chain is not followed to its end
    # EPU's micrographs a few levels down, after many other folders, are still named.
    visited.clear()
    write_set(top / "zz_session" / "Images-Disc1" / "GridSquare_1" / "Data", 1)
    assert runner._first_micrograph_below(str(top), (".mrc",)) is None  # beyond the first 1000 folders
    assert runner._first_micrograph_below(str(top / "zz_session"), (".mrc",)) == (
        top / "zz_session" / "Images-Disc1" / "GridSquare_1" / "Data" / "mic_000.mrc")
    assert runner._first_micrograph_below(str(top), (".mrc",), max_folders=total + 5) is not None


def test_a_file_reached_again_through_a_link_is_picked_once_and_said(tmp_path):
    """RELION's Import folder links the movies' micrographs: giving both folders
    picked each file once without a word, and the count looked short."""
    write_set(tmp_path / "raw", 2)
    (tmp_path / "Import").mkdir()
    for p in sorted((tmp_path / "raw").glob("*.mrc")):
        (tmp_path / "Import" / f"imp_{p.name}").symlink_to(p)
    result = run_pipeline(config(tmp_path / "raw", f"input=[{tmp_path}/raw,{tmp_path}/Import]", "runner.workers=1"),
                          tmp_path / "out")
    assert sorted(r.name for r in result.results) == ["mic_000", "mic_001"]
    assert result.notes[:2] == [
        f"{tmp_path}/Import/imp_mic_000.mrc: the same file as {tmp_path}/raw/mic_000.mrc, picked once as 'mic_000'",
        f"{tmp_path}/Import/imp_mic_001.mrc: the same file as {tmp_path}/raw/mic_001.mrc, picked once as 'mic_001'",
    ]
    # The same path twice is no news.
    same: list = []
    find_inputs([str(tmp_path / "raw"), f"{tmp_path}/raw/*.mrc"], (".mrc",), same_file=same)
    assert same == []


def test_a_mask_beside_the_micrographs_is_picked_with_a_warning(tmp_path, caplog):
    """MicrographCleaner's contamination mask and a ground-truth mask in the input folder were
    picked as micrographs without a word."""
    import numpy as np

    write_set(tmp_path / "in", 1)
    mask = (image(5) < np.percentile(image(5), 10)).astype(np.float32)  # 0/1
    write_mrc(tmp_path / "in" / "mic_000_mask.mrc", mask)
    with caplog.at_level("WARNING", logger="lipoframe"):
        result = run_pipeline(config(tmp_path / "in", "runner.workers=1"), tmp_path / "out")
    assert sorted(r.status for r in result.results) == ["ok", "ok"]
    told = [r.getMessage() for r in caplog.records if "mask or label image" in r.getMessage()]
    assert len(told) == 1 and "mic_000_mask.mrc: holds only the values 0 and 1" in told[0]
    from lipoframe.runner import two_levels

    assert two_levels(image(0)) is None and two_levels(mask * 255) == (0.0, 255.0)
    edge = mask.copy()
    edge[0, 0] = 0.5  # a third value outside the centre patch
    assert two_levels(edge) is None


def test_a_probability_map_beside_the_micrographs_is_picked_with_a_warning(tmp_path, caplog):
    """MicrographCleaner's contamination map (float probabilities, not two values) in the input folder
    was picked as a micrograph without a word, as the two-valued mask was before. A micrograph
    normalised to [0, 1], or one whose name has a map word but not a map's values, is no map."""
    import numpy as np
    from scipy import ndimage

    write_set(tmp_path / "in", 1)
    mic = image(5)
    prob = ndimage.gaussian_filter((mic < np.percentile(mic, 10)).astype(np.float32), 8)  # many values in (0, 1)
    write_mrc(tmp_path / "in" / "mic_000_contamination_mask.mrc", prob)
    write_mrc(tmp_path / "in" / "mic_norm.mrc", ((mic - mic.min()) / np.ptp(mic)).astype(np.float32))
    write_mrc(tmp_path / "in" / "mic_mask_denoised.mrc", (mic - mic.mean()).astype(np.float32))  # zero mean
    with caplog.at_level("WARNING", logger="lipoframe"):
        result = run_pipeline(config(tmp_path / "in", "runner.workers=1"), tmp_path / "out")
    assert sorted(r.name for r in result.results if r.status == "ok") == [
        "mic_000", "mic_000_contamination_mask", "mic_mask_denoised", "mic_norm"]
    told = [r.getMessage() for r in caplog.records if "rather than a micrograph" in r.getMessage()]
    assert len(told) == 1 and told[0].startswith(f"{tmp_path / 'in' / 'mic_000_contamination_mask.mrc'}: values from ")
    assert "a probability map" in told[0] and "It is picked as given" in told[0]
    from lipoframe.runner import map_name, probability_map

    assert [map_name(n) for n in ("a_heatmap.tif", "aProb.npy", "a.probability.mrc", "a_masks.mrc", "masked.mrc",
                                  "problem.mrc", "a_DW.mrc", "/x/mask/a.mrc")] == [True] * 4 + [False] * 4
    assert probability_map(prob, "a_mask.mrc") == (float(prob.min()), float(prob.max()))
    assert probability_map(prob, "a.mrc") is None and probability_map(prob * 1.5, "a_mask.mrc") is None


def test_a_broken_link_in_an_input_folder_is_reported_not_skipped(tmp_path):
    write_set(tmp_path / "in", 1)
    (tmp_path / "in" / "gone.mrc").symlink_to(tmp_path / "elsewhere" / "gone.mrc")
    result = run_pipeline(config(tmp_path / "in", "runner.workers=1"), tmp_path / "out")
    assert {r.name: r.status for r in result.results} == {"mic_000": "ok", "gone": "failed"}
    assert "file not found" in next(r.error for r in result.results if r.name == "gone")


def test_a_broken_link_matched_by_a_glob_is_reported_not_skipped(tmp_path):
    """A glob dropped the link without a word (os.path.isfile is False for it) while a folder input reported it."""
    write_set(tmp_path / "in", 1)
    link = tmp_path / "in" / "gone.mrc"
    link.symlink_to(tmp_path / "elsewhere" / "gone.mrc")
    (tmp_path / "in" / "gone.tif.bak").symlink_to(tmp_path / "elsewhere" / "x")  # not a micrograph suffix: not taken
    for spec in (f"{tmp_path}/in/*.mrc", f"{tmp_path}/in/*", f"{tmp_path}/**/gone.mrc"):
        paths, problems = find_inputs([spec], (".mrc",))
        assert [p.name for p in paths] == (["gone.mrc"] if "gone" in spec else ["gone.mrc", "mic_000.mrc"]) and problems == [], spec
    result = run_pipeline(config(f"'{tmp_path}/in/*.mrc'", "runner.workers=1"), tmp_path / "out")
    assert {r.name: r.status for r in result.results} == {"mic_000": "ok", "gone": "failed"}
    assert next(r.error for r in result.results if r.name == "gone") == f"{link}: file not found"
    assert not result.ok


def test_a_glob_takes_only_micrograph_files(tmp_path):
    write_set(tmp_path / "mics", 2)
    (tmp_path / "mics" / "truth.csv").write_text("x_px,y_px\n")
    (tmp_path / "mics" / "notes.json").write_text("{}")
    paths, problems = find_inputs([f"{tmp_path}/mics/*"], (".mrc",))
    assert [p.name for p in paths] == ["mic_000.mrc", "mic_001.mrc"] and problems == []
    # A file named on its own is kept whatever it is: its reader says what is wrong with it.
    assert [p.name for p in find_inputs([f"{tmp_path}/mics/truth.csv"], (".mrc",))[0]] == ["truth.csv"]


def test_a_run_never_takes_its_own_outputs_as_input(tmp_path):
    """The output folder inside the input tree: a recursive glob would find the
    run's masks (MRC) and overlays (PNG) on the next run."""
    write_set(tmp_path / "data", 2)
    spec = f"input='{tmp_path}/data/**/*.mrc'"
    for _ in range(2):
        result = run_pipeline(compose_config([spec, *RUN_ARGS, "writer=[csv,mask]"])[1], tmp_path / "data" / "run")
        assert not result.errors
        assert sorted(r.name for r in result.results) == ["mic_000", "mic_001"]
    assert any((tmp_path / "data" / "run" / "masks").glob("*.mrc"))  # there was something to take
    manifest = json.loads((tmp_path / "data" / "run" / "inputs.json").read_text())
    assert [m["name"] for m in manifest["micrographs"]] == ["mic_000", "mic_001"]


def test_a_run_into_a_used_folder_removes_the_files_it_no_longer_writes(tmp_path):
    """Coordinate folders are imported whole (relion/coords, bins/bin3/box/*.box):
    files of micrographs or bins that are no longer part of the run must go."""
    write_set(tmp_path / "mics", 3)
    out = tmp_path / "run"
    (out / "relion").mkdir(parents=True)
    (out / "relion" / "mine.txt").write_text("a user's file")  # never written by lipoframe: kept
    run_pipeline(config(tmp_path / "mics", "writer=[csv,star,box]", "binning=quantile", "binning.n_bins=3"), out)
    bins = sorted(p.name for p in (out / "bins").iterdir())
    assert len(bins) >= 2 and (out / "box" / "mic_002.box").is_file()
    spec = f"input='{tmp_path}/mics/mic_00[01].mrc'"
    result = run_pipeline(compose_config([spec, *RUN_ARGS, "writer=[csv,star,box]", "binning=single"])[1], out)
    assert not result.errors and sorted(p.name for p in (out / "bins").iterdir()) == ["bin1"]
    for folder, pattern in (("box", "*.box"), ("relion/coords", "*.star"), ("bins/bin1/box", "*.box"), ("csv", "*.csv")):
        assert sorted(p.name.split("_autopick")[0].split(".")[0] for p in (out / folder).glob(pattern)) == ["mic_000", "mic_001"], folder
    assert (out / "relion" / "mine.txt").is_file()
    recorded = json.loads((out / "written_files.json").read_text())["files"]
    assert "box/mic_000.box" in recorded and not any("mic_002" in f for f in recorded)


def _stale_links_setup(tmp_path):
    """An output folder whose earlier run made links to a file and a folder outside, to a file inside, and files."""
    from lipoframe.runner import remove_stale_outputs

    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    (out / "sub").mkdir(parents=True)
    (elsewhere / "folder").mkdir(parents=True)
    (elsewhere / "data.mrc").write_text("data")
    (out / "kept.txt").write_text("inside")
    (out / "sub" / "a.txt").write_text("a")
    links = {"sub/out_file.mrc": elsewhere / "data.mrc", "sub/out_folder": elsewhere / "folder", "in.txt": out / "kept.txt",
             "sub/dangling": tmp_path / "nowhere"}
    for rel, target in links.items():
        (out / rel).symlink_to(target)
    remove_stale_outputs(out, [out / "sub" / "a.txt", out / "kept.txt", *(out / rel for rel in links)])
    return out, elsewhere, sorted(links)


def test_the_links_a_run_made_are_recorded_and_removed_as_links(tmp_path):
    # Paths were resolved to their targets: a link to outside was not recorded (so never removed), one to a file
    # inside recorded that file (so a later run removed the target and left the link).
    from lipoframe.runner import remove_stale_outputs

    out, elsewhere, links = _stale_links_setup(tmp_path)
    record = json.loads((out / "written_files.json").read_text())
    assert record["links"] == links and record["files"] == ["kept.txt", "sub/a.txt"]
    removed = remove_stale_outputs(out, [out / "kept.txt"])
    assert sorted(p.relative_to(out.resolve()).as_posix() for p in removed) == sorted([*links, "sub/a.txt"])
    assert sorted(p.name for p in out.iterdir()) == ["kept.txt", "written_files.json"]  # sub/ was left empty: gone
    assert (elsewhere / "data.mrc").read_text() == "data" and (elsewhere / "folder").is_dir()
    assert json.loads((out / "written_files.json").read_text()) == {"files": ["kept.txt"]}


def test_what_replaced_a_recorded_file_or_link_stays(tmp_path):
    # Only what the run wrote goes, only inside the output folder: a file where its link was (or a link where
    # its file was: the link is not followed), and a path whose folder is now a link (to elsewhere, or to another
    # folder inside) are someone else's.
    from lipoframe.runner import remove_stale_outputs

    out, elsewhere, _ = _stale_links_setup(tmp_path)
    (out / "sub" / "out_file.mrc").unlink()
    (out / "sub" / "out_file.mrc").write_text("the user's copy")
    (out / "sub" / "a.txt").unlink()
    (out / "sub" / "a.txt").symlink_to(elsewhere / "data.mrc")
    (out / "in.txt").unlink()
    (out / "in.txt").mkdir()
    remove_stale_outputs(out, [out / "kept.txt"])
    assert (out / "sub" / "out_file.mrc").read_text() == "the user's copy" and (out / "in.txt").is_dir()
    assert (out / "sub" / "a.txt").is_symlink() and (elsewhere / "data.mrc").read_text() == "data"
    assert not (out / "sub" / "out_folder").exists() and not (out / "sub" / "dangling").is_symlink()  # those were links
    # A recorded folder that is now a link: to elsewhere, or to a folder inside.
    for target in (elsewhere, out / "other"):
        target.mkdir(exist_ok=True)
        (target / "f.txt").write_text("f")
        (target / "l").symlink_to(elsewhere / "data.mrc")
        (out / "lnk").mkdir()
        (out / "lnk" / "f.txt").write_text("ours")
        (out / "lnk" / "l").symlink_to(elsewhere / "data.mrc")
        remove_stale_outputs(out, [out / "kept.txt", out / "lnk" / "f.txt", out / "lnk" / "l"])
        (out / "lnk" / "f.txt").unlink()
        (out / "lnk" / "l").unlink()
        (out / "lnk").rmdir()
        (out / "lnk").symlink_to(target, target_is_directory=True)
        assert remove_stale_outputs(out, [out / "kept.txt"]) == []
        assert (target / "f.txt").read_text() == "f" and (target / "l").is_symlink(), target
        (out / "lnk").unlink()


def test_a_record_naming_paths_outside_the_output_folder_removes_none_of_them(tmp_path):
    # written_files.json is a file anyone can edit (or an older version wrote): '..', absolute paths, the folder
    # itself, and links to outside are never followed out of the output folder.
    from lipoframe.runner import WRITTEN, remove_stale_outputs

    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    (tmp_path / "victim.txt").write_text("v")
    (out / "up").symlink_to(tmp_path, target_is_directory=True)
    listed = ["../victim.txt", "sub/../../victim.txt", str(tmp_path / "victim.txt"), "up/victim.txt", ".", "", "sub",
              "sub/", "./sub/../../victim.txt"]
    (out / WRITTEN).write_text(json.dumps({"files": listed, "links": [*listed, "up/../victim.txt"]}))
    assert remove_stale_outputs(out, []) == []
    assert (tmp_path / "victim.txt").read_text() == "v" and (out / "sub").is_dir() and (out / "up").is_symlink()


def test_a_relative_input_is_recorded_absolute_so_plan_and_report_work_from_anywhere(tmp_path, monkeypatch, run_cli):
    import starfile

    write_set(tmp_path / "data" / "mics", 1)
    out = tmp_path / "run"
    monkeypatch.chdir(tmp_path / "data")
    code, _, err = run_cli("run", "input=mics", f"output={out}", *RUN_ARGS, "runner.workers=1", "writer=[star]")
    assert code == 0, err
    mic = str(tmp_path / "data" / "mics" / "mic_000.mrc")
    assert json.loads((out / "micrographs" / "mic_000.json").read_text())["meta"]["path"] == mic
    # `lipoframe plan` and `report` from another folder
    monkeypatch.chdir(tmp_path)
    assert run_cli("plan", str(out), "binning=single")[0] == 0
    names = starfile.read(out / "relion" / "autopick.star")["rlnMicrographName"].tolist()
    assert names == [mic]
    code, stdout, err = run_cli("report", str(out), "--force")
    assert code == 0 and "1 drawn" in stdout, err


def test_a_failing_writer_does_not_stop_the_others_or_the_plan(tmp_path):
    write_set(tmp_path / "mics", 2)
    out = tmp_path / "run"
    out.mkdir()
    (out / "relion").write_text("a file where the STAR writer wants its folder")
    result = run_pipeline(config(tmp_path / "mics", "writer=[csv,star,box]"), out)
    assert len(result.errors) == 1 and result.errors[0].startswith("writer star failed: ")
    assert (out / "box" / "mic_000.box").is_file() and (out / "extraction_plan.md").is_file()
    assert result.plan is not None and result.plan.n_bins >= 1
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["errors"] == result.errors and summary["bins"]


def test_mixed_pixel_sizes_get_a_note():
    from lipoframe.records import MicrographMeta
    from lipoframe.runner import pixel_size_notes

    def metas(*sizes):
        return {f"m{i}": MicrographMeta(f"m{i}", "", (64, 64), px) for i, px in enumerate(sizes)}

    assert pixel_size_notes(metas(1.0, 1.005, None)) == []  # within 1 %, or unknown
    (note,) = pixel_size_notes(metas(4.0, 4.24, 8.0))
    assert "(4, 4.24, 8 Å/px)" in note and "the median, 4.24 Å/px" in note and "its own output folder" in note


def test_a_header_pixel_size_of_exactly_one_angstrom_gets_a_note(tmp_path):
    # The MicrographCleaner test image says 1 Å/px in its header; its one pick was taken at face value.
    from lipoframe.records import MicrographMeta
    from lipoframe.runner import placeholder_pixel_size_notes

    def metas(*sizes):
        return {f"m{i}": MicrographMeta(f"m{i}", "", (64, 64), px) for i, px in enumerate(sizes)}

    cfg = config(tmp_path, "dmin=150", "dmax=500")
    (note,) = placeholder_pixel_size_notes(metas(1.0, 1.0), cfg)
    assert note.startswith("the header of every micrograph gives exactly 1 Å/px") and "dmin=150 and dmax=500 Å" in note
    (note,) = placeholder_pixel_size_notes(metas(1.06, 1.0, None), cfg)
    assert note.startswith("the header of 1 of 3 micrographs (e.g. m1) gives exactly 1 Å/px") and "pixel_size=<Å/px>" in note
    assert placeholder_pixel_size_notes(metas(1.06, 0.83, None), cfg) == []
    # A pixel size given by the user does not depend on the header.
    assert placeholder_pixel_size_notes(metas(1.0), config(tmp_path, "pixel_size=1.0")) == []
    # A range in pixels does not either, but the Å and nm values and the exports' pixel size do.
    (note,) = placeholder_pixel_size_notes(metas(1.0), config(tmp_path, "units=px", "dmin=100", "dmax=300"))
    assert "the picks (in pixels) do not depend on it, but diameter_A" in note
    assert "`lipoframe plan <output folder> pixel_size=<Å/px>` sets it without picking again" in note
    # A run names its own folder there, so the command can be pasted (as the TIFF rows note does)
    (note,) = placeholder_pixel_size_notes(metas(1.0), config(tmp_path, "units=px", "dmin=100", "dmax=300"),
                                           out_dir=tmp_path / "run1")
    assert f"`lipoframe plan {tmp_path / 'run1'} pixel_size=<Å/px>` sets it without picking again" in note, note
    # ... unless a stage converted a length in Å with it (the membrane detector's thickness): lipoframe plan
    # refuses a new pixel size for such a run, so the note must not send the user there
    (note,) = placeholder_pixel_size_notes(metas(1.0), config(tmp_path, "units=px", "dmin=100", "dmax=300", "detector=membrane"))
    assert "lipoframe plan" not in note and "do not depend on it" not in note, note
    assert "detector.units=A" in note and "run again with pixel_size=<Å/px>" in note, note


def test_resolve_workers():
    assert resolve_workers(3, 2) == 2
    assert resolve_workers(1, 0) == 1
    assert 1 <= resolve_workers(0, 1000) <= (os.cpu_count() or 1)


# -- parallel execution ---------------------------------------------------------
def test_two_workers_give_the_same_result_as_one(tmp_path):
    write_set(tmp_path / "in", 4)
    one = run_pipeline(config(tmp_path / "in", "runner.workers=1"), tmp_path / "w1")
    two = run_pipeline(config(tmp_path / "in", "runner.workers=2"), tmp_path / "w2")
    assert two.workers == 2 and one.ok and two.ok
    assert (tmp_path / "w1" / "picks.csv").read_bytes() == (tmp_path / "w2" / "picks.csv").read_bytes()
    summary = json.loads((tmp_path / "w2" / "run_summary.json").read_text())
    assert summary["micrographs"]["ok"] == 4 and summary["peak_rss_mb"] > 0


class _KillerReader:
    """Reads MRC files, but the worker process dies on files named ``*kill*``."""

    name = "mrc"

    def read(self, path, *, pixel_size=None):
        if "kill" in Path(path).name:
            os.kill(os.getpid(), signal.SIGKILL)
        from lipoframe.builtin.readers import MrcReader

        return MrcReader().read(path, pixel_size=pixel_size)


def _jobs_reading_with(reader, cfg, tmp_path, *, resume: bool):
    """The stages of ``cfg`` with ``reader`` for every MRC, and one job per ``tmp_path/in/*.mrc`` into ``tmp_path/out``."""
    stages = build_stages(cfg, plugins.load()[1])
    stages.reader = reader
    stages.readers_by_suffix = {".mrc": reader}
    fp = cfg.per_micrograph_fingerprint()
    jobs = [MicJob(p, p.stem, tmp_path / "out", fp, resume, False) for p in sorted((tmp_path / "in").glob("*.mrc"))]
    (tmp_path / "out").mkdir()
    return stages, jobs


def test_a_dying_worker_fails_only_its_micrograph(tmp_path):
    write_set(tmp_path / "in", 4)
    (tmp_path / "in" / "mic_001.mrc").rename(tmp_path / "in" / "mic_001_kill.mrc")
    cfg = config(tmp_path / "in")
    stages, jobs = _jobs_reading_with(_KillerReader(), cfg, tmp_path, resume=False)
    results = []
    execute_jobs(jobs, cfg, stages, 2, results.append)
    status = {r.name: r.status for r in results}
    assert status == {"mic_000": "ok", "mic_001_kill": "failed", "mic_002": "ok", "mic_003": "ok"}
    failed = [r for r in results if r.status == "failed"][0]
    assert failed.error.startswith(f"{tmp_path / 'in' / 'mic_001_kill.mrc'}: the worker process died")


def test_one_run_at_a_time_per_output_folder(tmp_path):
    with output_folder(tmp_path / "out"):
        with pytest.raises(InputError, match="another lipoframe run"):
            with output_folder(tmp_path / "out"):
                pass
    with output_folder(tmp_path / "out"):  # released
        pass


@pytest.mark.parametrize("ending", ["done", "error", "interrupted"])
def test_the_lock_file_goes_when_the_run_ends(tmp_path, ending):
    """.lipoframe.lock stayed in every finished output folder (copied along with the results, listed with them)."""
    out = tmp_path / "out"
    with contextlib.suppress(InputError, KeyboardInterrupt):
        with output_folder(out):
            assert (out / ".lipoframe.lock").read_text() == f"{os.getpid()} run"
            if ending == "error":
                raise InputError("a failure")
            if ending == "interrupted":
                raise KeyboardInterrupt
    assert not (out / ".lipoframe.lock").exists()


@pytest.mark.skipif(sys.platform == "win32", reason="flock")
def test_a_lock_taken_on_a_lock_file_removed_meanwhile_is_not_the_folders(tmp_path, monkeypatch):
    """The run that holds the folder removes the lock file as it ends. A run that opened that file just before
    then gets its flock, on a file no longer there, while a third run may have made the file anew and
    locked it: both would write. The lock must be the one on the file there now."""
    import fcntl

    from lipoframe import runner

    out = tmp_path / "out"
    out.mkdir()
    path = out / ".lipoframe.lock"
    path.write_text("1")
    third = []

    def opened_before_the_holder_ended(name, mode="r", *args, **kwargs):
        f = open(name, mode, *args, **kwargs)
        if not third:  # the holder ends: removes the file; the third run makes it anew and locks it
            os.unlink(name)
            third.append(open(name, "a+"))
            fcntl.flock(third[0].fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            third[0].write("4242")
            third[0].flush()
        return f

    monkeypatch.setattr(runner, "open", opened_before_the_holder_ended, raising=False)
    try:
        with pytest.raises(InputError, match=r"another lipoframe run \(pid 4242\)"):
            with output_folder(out):
                pass
    finally:
        third[0].close()
    assert path.read_text() == "4242"  # the third run's, still there


@pytest.mark.parametrize("kind", ["file", "symlink"])
def test_a_file_or_link_named_micrographs_in_the_output_folder_is_one_error(tmp_path, kind):
    # A file there made every micrograph fail on its own (FileExistsError, once per file); a link to a
    # data folder would have received lipoframe's work files (or failed each micrograph outside the folder).
    out = tmp_path / "out"
    out.mkdir()
    if kind == "file":
        (out / "micrographs").write_text("notes")
    else:
        (tmp_path / "data").mkdir()
        (out / "micrographs").symlink_to(tmp_path / "data")
    with pytest.raises(InputError, match=f"{out / 'micrographs'}: {'not a folder' if kind == 'file' else 'a symbolic link'}"):
        with output_folder(out):
            pass
    if kind == "file":
        assert (out / "micrographs").read_text() == "notes"
    else:
        assert list((tmp_path / "data").iterdir()) == []


# -- progress -------------------------------------------------------------------
def _stderr_of_run_in_a_terminal(tmp_path, *args):
    """Run ``lipoframe run`` with stderr on a pseudo-terminal; returns what it printed there."""
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a 100-column terminal
    cmd = [sys.executable, "-m", "lipoframe", "run", f"input={tmp_path / 'in'}", "dmin=30", "dmax=140", "runner.report=false",
           "runner.polarity_check=false", "runner.workers=1", *args]
    proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=120)
    os.close(master)
    assert proc.returncode == 0
    return b"".join(chunks).decode(errors="replace")


@pytest.mark.skipif(sys.platform == "win32", reason="needs a pseudo-terminal")
def test_progress_bar_on_a_terminal_only(tmp_path):
    write_set(tmp_path / "in", 3)
    shown = _stderr_of_run_in_a_terminal(tmp_path, f"output={tmp_path / 'a'}")
    assert "3/3" in shown and "mic/s" in shown and "picking" in shown
    hidden = _stderr_of_run_in_a_terminal(tmp_path, f"output={tmp_path / 'b'}", "runner.progress=false")
    assert "mic/s" not in hidden


def test_a_run_without_a_terminal_prints_timed_progress_lines(tmp_path, monkeypatch, capsys):
    """The bar is silent without a terminal (a batch job's log, nohup, a pipe), where a user
    tailing the log saw nothing until the summary; lines say how far the run is instead."""
    from lipoframe import runner

    monkeypatch.setattr(runner, "PROGRESS_LINE_SECONDS", 0.0)  # a line for each micrograph
    write_set(tmp_path / "in", 3)
    run_pipeline(config(tmp_path / "in", "runner.workers=1", "runner.progress=true"), tmp_path / "out")
    lines = [ln for ln in capsys.readouterr().err.splitlines() if " picked " in ln]
    assert [ln.split(" picked ", 1)[1].split(",")[0] for ln in lines] == [f"{i} of 3 micrographs" for i in (1, 2, 3)], lines
    # The picking's rate, said to be so: the summary's (micrographs picked over the whole run) is another.
    assert all(ln.startswith("lipoframe: ") and re.search(r", picking [0-9.]+ (micrographs/s|s per micrograph)", ln) for ln in lines), lines
    write_set(tmp_path / "in2", 2)
    run_pipeline(config(tmp_path / "in2", "runner.workers=1", "runner.progress=false"), tmp_path / "out2")
    assert " picked " not in capsys.readouterr().err
    # failed micrographs are not counted as picked (the line said "picked 2 of 2 micrographs (2 failed)")
    (tmp_path / "bad").mkdir()
    for name in ("a.mrc", "b.mrc"):
        (tmp_path / "bad" / name).write_bytes(b"not an MRC file")
    run_pipeline(config(tmp_path / "bad", "runner.workers=1", "runner.progress=true"), tmp_path / "out3")
    lines = [ln for ln in capsys.readouterr().err.splitlines() if " picked " in ln]
    assert [ln.split(" picked ", 1)[1].split(", picking")[0] for ln in lines] == [
        "0 of 2 micrographs, 1 failed", "0 of 2 micrographs, 2 failed"], lines


def test_progress_lines_wait_their_interval_and_always_tell_the_end(monkeypatch, capsys):
    from lipoframe import runner

    monkeypatch.setattr(runner, "PROGRESS_LINE_SECONDS", 3600.0)
    lines = runner.ProgressLines(4, initial=1)  # a resumed run: one done before
    for _ in range(3):
        lines.update(failed=1)
    err = capsys.readouterr().err.splitlines()
    # 4 done, 1 of them failed: 3 picked (the line said "picked 4 of 4 micrographs (1 failed)")
    assert len(err) == 1 and " picked 3 of 4 micrographs, 1 failed, picking " in err[0], err


def test_the_summary_says_its_rate_is_over_the_whole_run():
    """The progress lines gave the picking's rate and the summary the whole run's (its dataset-level outputs
    too, failed micrographs not counted), both as 'N micrographs/s': a user comparing them saw two speeds."""
    from lipoframe.runner import format_summary

    summary = {"micrographs": {"ok": 8, "skipped": 0, "failed": 0, "total": 8}, "picks": {"total": 0, "accepted": 0},
               "bins": [], "failures": [], "errors": [], "seconds": 4.0, "micrographs_per_s": 2.0, "workers": 2,
               "out_dir": "out"}
    assert "time         4.0 s  (2.0 micrographs/s over the whole run, 2 worker(s))" in format_summary(summary).splitlines()
    summary.update(micrographs_per_s=0.25)
    assert "time         4.0 s  (4 s per micrograph over the whole run, 2 worker(s))" in format_summary(summary).splitlines()


@pytest.mark.parametrize("per_s, text", [(2.345, "2.3 micrographs/s"), (1.0, "1.0 micrographs/s"),
                                         (0.25, "4 s per micrograph"), (1 / 487, "487 s per micrograph"),
                                         (1 / 1234, "1234 s per micrograph"), (1 / 86400, "86400 s per micrograph"),
                                         (0.0, "no micrograph picked")])
def test_rates_below_one_a_second_are_given_as_seconds_per_micrograph(per_s, text):
    """A slow run (tomograms) printed '0.00 micrographs/s'."""
    from lipoframe.runner import format_rate

    assert format_rate(per_s) == text


# -- Ctrl-C ---------------------------------------------------------------------
@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_ctrl_c_keeps_finished_work_and_says_how_to_continue(tmp_path, sig, make_plugin):
    """The third input is a micrograph that is read only when the test lets it
    (the ``gate`` reader), so the run waits there; Ctrl-C (or SIGTERM: `kill`,
    the end of a SLURM job) asks it to finish that micrograph, and a second one
    stops it at once, cleanly."""
    make_plugin("lipoframe-gate", GATE_READER)
    sig = getattr(signal, sig)
    write_set(tmp_path / "in", 2)
    late = write_mrc(tmp_path / "late.gate", image(2))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "lipoframe", "run", f"input=[{tmp_path / 'in'},{late}]", f"output={out}", "runner.workers=1", *RUN_ARGS]
    # A shell without job control starts background commands with SIGINT
    # ignored, and Python keeps an ignored SIGINT ignored (as it should: that
    # is how `nohup` and `cmd &` in scripts protect a job). The test is about
    # Ctrl-C at a terminal, so the child starts with SIGINT's default action
    # whatever the test runner inherited.
    proc = subprocess.Popen(cmd, env=env_with_plugins(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 90
    while not all((out / "micrographs" / f"mic_00{i}.json").exists() for i in (0, 1)):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.2)
    proc.send_signal(sig)
    time.sleep(1.0)
    assert proc.poll() is None  # finishing the micrograph in progress, which waits at its gate
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err
    assert "interrupted: finishing the micrograph in progress (again to stop at once)" in err
    assert "2 of 3 micrographs are done and saved; run the same command again to continue" in err
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["interrupted"] is True and summary["micrographs"]["ok"] == 2
    assert summary["micrographs"]["total"] == 3 and summary["micrographs"]["not_done"] == 1
    assert not (out / "picks.csv").exists()  # no dataset-level outputs from a partial run


def test_a_named_pipe_is_refused_by_name_not_waited_for(tmp_path):
    """Opening a named pipe blocks until something writes to it: given by name,
    it fails at once in one line, and the other micrographs go on."""
    if not hasattr(os, "mkfifo"):
        pytest.skip("needs a named pipe")
    write_set(tmp_path / "in", 1)
    fifo = tmp_path / "pipe.mrc"
    os.mkfifo(fifo)
    proc = cli("run", f"input=[{tmp_path / 'in'},{fifo}]", f"output={tmp_path / 'out'}", "runner.workers=1", *RUN_ARGS, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert f"{fifo}: not a regular file but a named pipe; give each micrograph as a file" in proc.stderr
    summary = json.loads((tmp_path / "out" / "run_summary.json").read_text())
    assert summary["micrographs"]["ok"] == 1 and summary["micrographs"]["failed"] == 1


def test_a_result_saved_just_before_an_interrupt_counts(tmp_path, monkeypatch):
    """Ctrl-C/SIGTERM between saving a micrograph and reporting it back: the saved result is not lost."""
    from lipoframe import runner

    write_set(tmp_path / "in", 2)
    cfg = config(tmp_path / "in", "runner.workers=1")
    _, registry, _ = plugins.load()
    stages = build_stages(cfg, registry)
    paths = sorted((tmp_path / "in").glob("*.mrc"))
    fp = cfg.per_micrograph_fingerprint()
    jobs = [MicJob(p, p.stem, tmp_path / "out", fp, False, False) for p in paths]

    def interrupted_after_first_save(todo, cfg, stages, workers, on_result, **kw):
        on_result(runner.run_job(todo[0], cfg, stages))
        runner.run_job(todo[1], cfg, stages)  # saved, but the interrupt comes before it is reported
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "execute_jobs", interrupted_after_first_save)
    results, interrupted = runner.run_jobs(jobs, cfg, stages, progress=False)
    assert interrupted
    assert sorted(r.name for r in results) == [p.stem for p in paths]
    assert all(r.status == "ok" and r.n_picks > 0 for r in results)


# -- Hydra launchers --------------------------------------------------------------
@pytest.mark.slow
def test_joblib_launcher_sweep_with_stage_options(tmp_path):
    """Stage options come from the ConfigStore, which joblib ships to its worker processes."""
    write_set(tmp_path / "in", 2)
    proc = cli(
        "run", "-m", f"input={tmp_path / 'in'}", *RUN_ARGS, "runner.workers=1", f"output={tmp_path / 'sweep'}",
        "detector=dog,log", "nms.beta=0.7", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    for i, det in enumerate(("dog", "log")):
        job = tmp_path / "sweep" / str(i)
        assert f"detector={det}" in (job / ".hydra" / "overrides.yaml").read_text()
        assert json.loads((job / "run_summary.json").read_text())["micrographs"]["ok"] == 2
    assert proc.stdout.count("micrographs  ok 2") == 2


def test_failed_sweep_job_gives_a_non_zero_exit(tmp_path):
    from lipoframe import app

    write_set(tmp_path / "in", 1)
    write_mrc(tmp_path / "in" / "zzz_small.mrc", image(3)[:32, :32])
    code = app.run(["-m", f"input={tmp_path / 'in'}", *RUN_ARGS, "runner.workers=1", f"output={tmp_path / 'sweep'}", "shard.count=2", "shard.index=0,1"])
    assert code == 1


@pytest.mark.slow
def test_failed_job_in_other_process_gives_a_non_zero_exit_with_a_quoted_output(tmp_path):
    """joblib's jobs run elsewhere: the failure is read from the sweep folder, which lipoframe quoted for Hydra."""
    write_set(tmp_path / "in", 1)
    write_mrc(tmp_path / "in" / "zzz_small.mrc", image(3)[:32, :32])
    proc = cli(
        "run", "-m", f"input={tmp_path / 'in'}", *RUN_ARGS, "runner.workers=1", f"output={tmp_path / 'sweep (1)'}",
        "shard.count=2", "shard.index=0,1", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
        timeout=300,
    )
    assert (tmp_path / "sweep (1)" / "1" / "run_summary.json").is_file(), proc.stderr
    assert proc.returncode == 1, proc.stderr


def test_picking_allocates_at_most_a_few_copies_of_the_micrograph(tmp_path):
    """Memory per worker is bounded: a 2048² float32 micrograph (16 MiB, memory-mapped)
    must not cost more than two copies of itself in allocations while it is picked."""
    import tracemalloc

    from lipoframe.synthetic import random_particles, render

    shape = (2048, 2048)
    img = render(shape, random_particles(shape, [160, 250, 400], seed=1, margin=4), seed=1)
    path = write_mrc(tmp_path / "big.mrc", img)
    del img
    cfg = compose_config([f"input={path}", "dmin=150", "dmax=500", "runner.progress=false", "runner.report=false"])[1]
    stages = build_stages(cfg, plugins.load()[1])
    job = MicJob(path, "big", tmp_path / "out", cfg.per_micrograph_fingerprint(), False, True)
    from lipoframe.runner import run_job

    assert run_job(job, cfg, stages).status == "ok"  # warm-up (imports, caches)
    tracemalloc.start()
    try:
        result = run_job(job, cfg, stages)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.status == "ok", result.error
    assert peak < 2 * 2048 * 2048 * 4, f"picking allocated {peak / 2**20:.0f} MiB for a 16 MiB micrograph"


def test_workers_start_safely_while_other_threads_run(tmp_path):
    """fork() with other threads alive can deadlock: the runner then uses forkserver/spawn."""
    import threading

    from lipoframe.runner import _start_method

    write_set(tmp_path / "in", 3)
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    try:
        assert _start_method() != "fork"
        result = run_pipeline(config(tmp_path / "in", "runner.workers=2"), tmp_path / "out")
    finally:
        stop.set()
        thread.join()
    assert result.workers == 2
    assert [r.status for r in result.results] == ["ok"] * 3


def test_heatmaps_next_to_the_micrographs_are_not_inputs(tmp_path):
    """detector.folder empty reads the maps next to the micrographs; input=<that folder> must not
    pick the maps as micrographs too (they failed: no pixel size, no heatmap of their own)."""
    import numpy as np

    write_set(tmp_path / "in", 2)
    yy, xx = np.mgrid[0:384, 0:384]
    disc = ((yy - 150) ** 2 + (xx - 200) ** 2 <= 40**2).astype(np.float32)
    for i in range(2):
        np.save(tmp_path / "in" / f"mic_00{i}_prob.npy", disc)
    cfg = config(tmp_path / "in", "detector=heatmap", "detector.pattern=_prob.npy", "refiner=none", "filter=[diameter_range]")
    result = run_pipeline(cfg, tmp_path / "out")
    assert result.ok, result.summary()
    assert sorted(r.name for r in result.results) == ["mic_000", "mic_001"]
    assert len(result.picks) == 2


def test_micrographs_that_claim_each_other_as_maps_are_both_kept(tmp_path):
    """a.mrc and a.tif with detector.pattern=.* take each other as heatmap: neither is left out
    of the inputs as a map (the run would have no input at all)."""
    from lipoframe.runner import read_for_others

    write_set(tmp_path / "in", 1, prefix="a")
    (tmp_path / "in" / "a_000.npy").write_bytes(b"")  # a sibling that the default pattern matches
    cfg = config(tmp_path / "in", "detector=heatmap", "refiner=none", "filter=[diameter_range]")
    stages = build_stages(cfg, plugins.load()[1])
    paths = sorted((tmp_path / "in").iterdir())
    assert read_for_others(paths, stages) == []


class _InterruptingReader:
    """Reads MRC files; Ctrl-C arrives while it reads the first one."""

    name = "mrc"

    def __init__(self):
        self.calls = 0

    def read(self, path, *, pixel_size=None):
        from lipoframe.builtin.readers import MrcReader

        self.calls += 1
        if self.calls == 1:
            os.kill(os.getpid(), signal.SIGINT)
        return MrcReader().read(path, pixel_size=pixel_size)


def test_ctrl_c_with_one_worker_finishes_the_micrograph_in_progress(tmp_path):
    """Picking in this process (runner.workers=1), Ctrl-C lets the micrograph in progress finish
    and be saved, as worker processes do, and starts no other (it was lost and picked again)."""
    from lipoframe.runner import run_jobs

    write_set(tmp_path / "in", 3)
    cfg = config(tmp_path / "in", "runner.workers=1")
    stages, jobs = _jobs_reading_with(_InterruptingReader(), cfg, tmp_path, resume=True)
    # Ctrl-C as in a terminal: a test run started in the background (`&`, nohup) ignores SIGINT,
    # and lipoframe leaves an ignored signal ignored
    outer = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        results, interrupted = run_jobs(jobs, cfg, stages, progress=False)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, outer)
    assert interrupted
    assert [(r.name, r.status) for r in results] == [("mic_000", "ok")]
    assert (tmp_path / "out" / "micrographs" / "mic_000.json").is_file()
    assert stages.reader.calls == 1


@pytest.mark.parametrize(("header", "warned"), [(3.0, True), (1.0, False), (1.51, False), (None, False)])
def test_a_given_pixel_size_the_headers_contradict_is_warned_about(tmp_path, caplog, header, warned):
    """pixel_size=1.5 on micrographs whose headers say 3 Å/px (binned by the denoiser or MotionCorr since the
    pixel size was noted) put every diameter and box off by 2 without a word. A header of exactly 1 Å/px is
    the placeholder many programs write, one within 1 % agrees, and none is none: nothing to say."""
    write_mrc(tmp_path / "in" / "mic_000.mrc", image(0), pixel_size=header)
    with caplog.at_level("WARNING", logger="lipoframe"):
        result = run_pipeline(config(tmp_path / "in", "runner.workers=1", "pixel_size=1.5", "units=px"), tmp_path / "out")
    assert [r.status for r in result.results] == ["ok"]
    assert (result.picks["diameter_A"] / result.picks["diameter_px"]).round(3).eq(1.5).all()  # the given one is used
    said = [n for n in result.notes if n.startswith("pixel_size=1.5 Å/px was given")]
    told = [r.getMessage() for r in caplog.records if r.getMessage().startswith("pixel_size=1.5 Å/px was given")]
    if warned:
        expected = (f"pixel_size=1.5 Å/px was given, but the header of {tmp_path / 'in' / 'mic_000.mrc'} gives 3 Å/px (2 "
                    "times the given one: micrographs binned since?); the given 1.5 Å/px is used: if the header is right, "
                    "run again without pixel_size=")
        assert said == told == [expected]
        assert expected in json.loads((tmp_path / "out" / "run_summary.json").read_text())["notes"]
    else:
        assert said == told == []
