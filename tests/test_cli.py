"""The command line: `lipoframe run` end to end, inputs, bad files, multirun, `stages`, the README contract."""

from __future__ import annotations

import contextlib
import json
import logging
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import REPO, TINY_DMAX, TINY_DMIN, TINY_PIXEL_SIZE, TINY_RUN_ARGS, tiny_image, write_mrc

PICKS_COLUMNS = ["micrograph", "x_px", "y_px", "diameter_px", "score", "pyramid_level", "sigma_px"]


def picked(out_dir: Path) -> pd.DataFrame:
    picks = pd.read_csv(out_dir / "picks.csv")
    return picks[picks["accepted"]] if "accepted" in picks else picks


# ---------------------------------------------------------------------------
# Plain commands
# ---------------------------------------------------------------------------
def test_usage_version_and_unknown_command(run_cli):
    from lipoframe import __version__
    from lipoframe.cli import COMMANDS

    code, out, _ = run_cli()
    assert code == 0
    for name in COMMANDS:
        assert re.search(rf"^  {name}\s", out, re.M), name
    assert run_cli("--version")[1].strip() == f"lipoframe {__version__}"
    code, _, err = run_cli("pikc")
    assert code == 2 and "unknown command 'pikc'" in err


def test_lipoframe_watch_points_to_run_watch_true(run_cli):
    # Streaming is an option of `run`; `lipoframe watch` said only "unknown command 'watch'" and the usage,
    # which did not name watch=true.
    code, out, _ = run_cli()
    assert "`lipoframe run watch=true input=FOLDER output=DIR` picks micrographs as they are written." in out.splitlines()
    code, _, err = run_cli("watch", "input=incoming/")
    assert code == 2
    assert err.splitlines()[0] == ("lipoframe: unknown command 'watch': to pick micrographs as they are written, "
                                   "use `lipoframe run watch=true input=FOLDER output=DIR`")


@pytest.mark.parametrize("flag", ["--cfg", "--info"])
def test_multirun_with_a_show_flag_gives_one_line(run_cli, flag):
    code, _, err = run_cli("run", "-m", flag, *(["job"] if flag == "--cfg" else []), "nms.beta=0.6,0.8")
    assert code == 2
    assert err.strip().count("\n") == 0 and "cannot be combined with -m" in err and "Traceback" not in err


@pytest.mark.parametrize("flags", [["--cfg", "job"], ["-c", "job", "--resolve"], ["--cfg=job"], ["-cjob", "--res"]])
def test_show_flags_may_follow_the_overrides(run_cli, tmp_path, flags):
    # `lipoframe run input=... output=run1 --cfg job` ended in an argparse usage error about
    # `hydra.run.dir=run1`, a word the user never typed (appended after the flags)
    code, out, err = run_cli("run", "dmin=120", f"output={tmp_path / 'run1'}", *flags, "dmax=300")
    assert code == 0, err
    shown = yaml.safe_load(out)
    assert (shown["dmin"], shown["dmax"], shown["output"]) == (120.0, 300.0, str(tmp_path / "run1"))
    assert not (tmp_path / "run1").exists()


def test_every_spelling_hydra_reads_of_a_flag_is_written_out():
    # `--cfg=job`, `-cjob`, `--cf job`, `-mc job`: Hydra's argparse reads them as `--cfg job` (and -m), but
    # lipoframe looked for `--cfg`/`-c` words only: the run checked its config, made the output folder
    # (refused a folder with an earlier run) and `--cf job` was 'job: not a key=value override'
    import contextlib
    import io

    from hydra._internal.utils import get_args_parser

    from lipoframe.app import spelled_out_flags

    def hydra_reads(words):
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            try:
                return vars(get_args_parser().parse_args(words))
            except SystemExit as exc:
                return exc.code

    cases = {
        ("--cfg=job", "a=1"): ["--cfg", "job", "a=1"], ("-c=job",): ["--cfg", "job"], ("-cjob",): ["--cfg", "job"],
        ("--cf", "job"): ["--cfg", "job"], ("-mc", "job"): ["--multirun", "--cfg", "job"], ("-mcjob",): ["--multirun", "--cfg", "job"],
        ("--info=config",): ["--info", "config"], ("-iconfig",): ["--info", "config"], ("--inf", "defaults"): ["--info", "defaults"],
        ("--multi", "a=1"): ["--multirun", "a=1"], ("-cd=/x", "a=1"): ["--config-dir", "/x", "a=1"], ("-h",): ["--help"],
        ("--hydra-h",): ["--hydra-help"], ("--res", "-c", "hydra"): ["--resolve", "--cfg", "hydra"], ("-s",): ["--shell-completion"],
        ("--vers",): ["--version"], ("-p", "x", "-cnx"): ["--package", "x", "--cfg", "nx"],
    }
    for words, spelled in cases.items():
        assert spelled_out_flags(list(words)) == spelled, words
        assert hydra_reads(spelled) == hydra_reads(list(words)), words
    # Hydra refuses these (ambiguous, unknown, a value to a flag that takes none): left for Hydra to say so.
    for words in (["--c", "job"], ["--h"], ["-x"], ["--multirun=1"], ["a=1", "--", "-c", "job"]):
        assert spelled_out_flags(words) == words
    # --info's value is optional: without one of its values next, it shows all and the next word is an override
    assert spelled_out_flags(["--inf", "a=1"]) == spelled_out_flags(["a=1", "-i"])[1:] + ["a=1"] == ["--info", "all", "a=1"]


@pytest.mark.parametrize("flags", [["--info=config"], ["--inf"], ["-i"], ["--vers"]])
def test_a_show_flag_in_any_spelling_makes_no_output_folder(run_cli, tmp_path, flags):
    # `--info` after the overrides ended in an argparse usage error (put before them, it took `dmin=120` for its
    # value); `--info=config` and `--version` made the output folder
    code, out, err = run_cli("run", "dmin=120", f"output={tmp_path / 'run1'}", *flags)
    assert code == 0, err
    assert ("Hydra" in out or "Config search path" in out) and not (tmp_path / "run1").exists()


@pytest.mark.parametrize("flag", ["--hydra-help", "--hydra-h"])
def test_hydra_help_after_overrides_shows_the_help(run_cli, tmp_path, flag):
    # Hydra's help composes no primary config: `input=x` could not be applied and Hydra stopped with a traceback
    code, out, err = run_cli("run", "input=x", f"output={tmp_path / 'run1'}", "binning=hac", flag)
    assert code == 0, err
    assert "== Flags ==" in out and "--hydra-help : Hydra's help" in out and not (tmp_path / "run1").exists()
    assert err.splitlines() == [f"lipoframe: note: --hydra-help shows Hydra's own help, which takes no overrides: input=x "
                                f"output={tmp_path / 'run1'} binning=hac left out (lipoframe run --help shows lipoframe's options)"]
    # with --help too, Hydra shows lipoframe's help, with the overrides
    code, out, err = run_cli("run", "binning=hac", flag, "--help")
    assert code == 0 and re.search(r"^binning=hac$", out, re.M) and err == ""


def test_stages_lists_every_parameter_with_type_and_default(run_cli):
    from lipoframe import plugins
    from lipoframe.registry import describe_params
    from lipoframe.stages import KINDS

    code, out, _ = run_cli("stages")
    assert code == 0
    _, registry, _ = plugins.load()
    for kind in KINDS:
        assert f"[{kind}]" in out
    for info in registry.stages():
        assert re.search(rf"^  {info.name}  - ", out, re.M), info
        section = f"{info.kind}.{info.name}" if info.kind in ("filter", "writer") else info.kind
        for name, tname, default, _ in describe_params(info.params):
            assert re.search(rf"^\s+{re.escape(section)}\.{re.escape(name)}:\s+{re.escape(tname)}\s+= {re.escape(repr(default))}$", out, re.M), (info.name, name)


def test_the_keys_lipoframe_stages_prints_are_the_keys_to_set(run_cli):
    from lipoframe.app import validate_overrides

    code, out, _ = run_cli("stages", "filter")
    keys = re.findall(r"^\s+(filter\.\w+\.\w+):", out, re.M)
    assert "filter.diameter_range.tolerance" in keys
    for key in ("filter.diameter_range.tolerance", "filter.population.min_support"):
        stage = key.split(".")[1]
        validate_overrides([f"filter=[{stage}]", f"{key}={re.search(rf'{re.escape(key)}:.*= (.*)$', out, re.M).group(1)}"])


def test_stages_shows_whole_types_however_they_are_spelled(run_cli):
    # Optional[float] showed as "Optional" and list[float] as "list" (their __name__); float | None in full
    import dataclasses
    import typing

    from lipoframe.registry import describe_params

    fields = [("a", typing.Optional[float], None), ("b", float | None, None), ("c", list[float], dataclasses.field(default_factory=list)),
              ("d", typing.List[int], dataclasses.field(default_factory=list)), ("e", typing.Optional[typing.List[str]], None),
              ("f", dict[str, float], dataclasses.field(default_factory=dict)), ("g", int, 1)]
    params = dataclasses.make_dataclass("P", fields)
    shown = {name: tname for name, tname, _, _ in describe_params(params)}
    assert shown == {"a": "float | None", "b": "float | None", "c": "list[float]", "d": "list[int]",
                     "e": "list[str] | None", "f": "dict[str, float]", "g": "int"}
    code, out, _ = run_cli("stages", "detector")
    assert code == 0
    assert re.search(r"^\s+detector\.weak_threshold:\s+float \| None\s+= None$", out, re.M)
    assert "Optional" not in out


def test_stages_line_up_the_defaults_of_a_kind_whatever_its_types(run_cli, monkeypatch):
    # Types were padded to 14 characters: a plugin's longer one (list[float] | None) pushed its row's '=' out of line.
    import dataclasses

    from lipoframe import plugins
    from lipoframe.builtin.nms import SizeAwareNms
    from lipoframe.registry import StageRegistry
    from lipoframe.stages import Suppressor

    @dataclasses.dataclass
    class WideParams:
        radii_weights: list[float] | None = None
        scale: dict[str, float] = dataclasses.field(default_factory=dict)
        n: int = 1

    class Wide(Suppressor):
        name = "wide"
        Params = WideParams
        summary = "a plugin's stage with long types"

        def suppress(self, picks, mic, ctx):
            return picks

    registry = StageRegistry()
    registry.add(SizeAwareNms)
    registry.add(Wide)
    pm, _, infos = plugins.load()
    monkeypatch.setattr(plugins, "load", lambda **_: (pm, registry, infos))
    code, out, _ = run_cli("stages", "nms")
    assert code == 0
    rows = [line for line in out.splitlines() if line.startswith("      nms.")]
    assert len(rows) == 3 + len(dataclasses.fields(SizeAwareNms.Params)), out
    assert re.search(r"^      nms\.radii_weights:\s+list\[float\] \| None = None$", out, re.M), out
    assert len({line.index(" = ") for line in rows}) == 1, out  # one '=' column for both stages
    assert len({re.search(r":\s+", line).end() for line in rows}) == 1, out  # one column of types


def test_stages_of_one_kind(run_cli):
    code, out, _ = run_cli("stages", "nms")
    assert code == 0
    assert "[nms]" in out and "[detector]" not in out
    assert re.search(r"nms\.beta:\s+float\s+= 0\.8$", out, re.M)
    code, _, err = run_cli("stages", "detectr")
    assert code == 2 and "invalid choice: 'detectr'" in err


def test_run_help_lists_the_stage_groups(run_cli):
    code, out, _ = run_cli("run", "--help")
    assert code == 0
    assert re.search(r"^detector: .*\bdog\b.*\blog\b", out, re.M)
    assert re.search(r"^nms: .*\bsize_aware\b", out, re.M)


def test_run_help_names_the_stages_it_would_run(run_cli):
    # docs/configuration.md sends the reader to `lipoframe run --help` for each kind's
    # default stage, but the help showed the stages' parameters without their names:
    # nothing in it said that the detector was `edge`.
    code, out, _ = run_cli("run", "--help")
    assert code == 0
    shown = dict(re.findall(r"^(reader|detector|nms|refiner|filter|binning|writer)=(\S+)$", out, re.M))
    assert shown == {"reader": "auto", "detector": "edge", "nms": "size_aware", "refiner": "radial_profile",
                     "filter": "[diameter_range,contamination,carbon,speck,population]", "binning": "peak_valley",
                     "writer": "[csv,star]"}
    # With overrides (and a preset) it names what this command would run.
    code, out, _ = run_cli("run", "+experiment=vesicles", "binning=hac", "writer=[csv,cbox]", "--help")
    assert code == 0
    shown = dict(re.findall(r"^(detector|refiner|filter|binning|writer)=(\S+)$", out, re.M))
    assert shown == {"detector": "membrane", "refiner": "none", "filter": "[diameter_range,contamination]",
                     "binning": "hac", "writer": "[csv,cbox]"}


@pytest.mark.parametrize("flag", ["--help", "-h", "--hydra-help"])
def test_run_help_lists_the_groups_without_copying_the_config_store_for_each(run_cli, monkeypatch, flag):
    """Hydra's help lists the config groups with one call per group and kind (89), and each deep-copied the
    config repository with the whole ConfigStore: about half the help's time (3.1-3.5 s, now 1.5-1.9 s).
    The copies made while the help is shown share the store; the help is the same; afterwards they copy it again."""
    from hydra._internal import config_repository
    from hydra.core.config_store import ConfigStore

    from lipoframe import app

    shared = []  # for each copy of the structured config source: does it share the process's ConfigStore?
    init = config_repository.CachingConfigRepository.__init__

    def spy(self, delegate):
        init(self, delegate)
        shared.extend(s.store is ConfigStore.instance() for s in self.delegate.sources if hasattr(s, "store"))

    monkeypatch.setattr(config_repository.CachingConfigRepository, "__init__", spy)
    code, out, _ = run_cli("run", flag)
    assert code == 0 and ("== Flags ==" if flag == "--hydra-help" else "== Stages ==") in out
    # all but one: lipoframe's own compose of the words before Hydra runs (is it a sweep?) copies it whole
    assert len(shared) > 50 and shared.count(False) <= 1, (len(shared), sum(shared))
    with monkeypatch.context() as m:  # the same help with every copy whole
        m.setattr(app, "_store_shared_by_copies", contextlib.nullcontext)
        assert run_cli("run", flag) == (0, out, "")
    shared.clear()
    assert run_cli("run", "--cfg", "job")[0] == 0  # no help: the copies are Hydra's own again
    assert shared and not any(shared)


# ---------------------------------------------------------------------------
# lipoframe run
# ---------------------------------------------------------------------------
def test_run_writes_picks_per_micrograph_files_and_config(tiny_mrcs, tmp_path, run_cli):
    out_dir = tmp_path / "out"
    code, out, err = run_cli("run", f"input={tiny_mrcs[0].parent}", f"output={out_dir}", "nms=size_aware", "nms.beta=0.7", *TINY_RUN_ARGS)
    assert code == 0, err
    picks = pd.read_csv(out_dir / "picks.csv")
    assert list(picks.columns[: len(PICKS_COLUMNS)]) == PICKS_COLUMNS
    assert set(picks["micrograph"]) == {"mic_0", "mic_1"}
    for name in ("mic_0", "mic_1"):
        sub = pd.read_csv(out_dir / "csv" / f"{name}.csv")
        assert len(sub) == int((picks["micrograph"] == name).sum()) > 0
    saved = yaml.safe_load((out_dir / ".hydra" / "config.yaml").read_text())
    assert saved["nms"]["beta"] == 0.7 and saved["units"] == "px"
    summary = json.loads((out_dir / "run_summary.json").read_text())
    assert summary["micrographs"]["ok"] == 2 and summary["picks"]["accepted"] == len(picked(out_dir))
    # The summary printed at the end says where the outputs are and how many were picked.
    assert str(out_dir) in out and f"{len(picked(out_dir))} accepted" in out


def test_an_in_process_run_leaves_the_logging_set_up_as_it_found_it(tiny_mrcs, tmp_path, run_cli, capsys):
    # Before, Hydra's console handler (on the sys.stderr of the run: pytest's capture,
    # closed after the test) and its file handler stayed on the root logger: a later
    # test's warning printed "--- Logging error ---", and every later message of the
    # process went into the first run's lipoframe.log.
    root = logging.getLogger()
    before = (root.handlers[:], root.level)
    for name in ("first", "second"):
        code, _, err = run_cli("run", f"input={tiny_mrcs[0].parent}", f"output={tmp_path / name}", *TINY_RUN_ARGS)
        assert code == 0, err
        assert (root.handlers, root.level) == before
    assert "2 micrograph(s) from" in (tmp_path / "first" / "lipoframe.log").read_text()
    logging.getLogger("lipoframe").warning("a message after the runs")
    for name in ("first", "second"):
        assert "after the runs" not in (tmp_path / name / "lipoframe.log").read_text()


@pytest.mark.parametrize("subdir", ["null", ".meta"])
def test_a_run_without_a_hydra_record_replaces_the_earlier_runs(tiny_mrcs, tmp_path, run_cli, monkeypatch, subdir):
    # With hydra.output_subdir=null Hydra writes no .hydra/: the earlier run's .hydra/config.yaml (and its group
    # choices in hydra.yaml) stayed, and plan, report, merge and evaluate read it as this run's settings; this
    # run's config.yaml was written only after the picking, and not at all next to an earlier record.
    from lipoframe import runner
    from lipoframe.plancmd import load_saved_config
    from lipoframe.records import InputError

    out_dir = tmp_path / "out"
    (out_dir / ".hydra").mkdir(parents=True)
    (out_dir / ".hydra" / "config.yaml").write_text("nms:\n  beta: 0.6\n")
    (out_dir / ".hydra" / "hydra.yaml").write_text("hydra:\n  runtime:\n    choices:\n      detector: log\n")
    (out_dir / ".hydra" / "overrides.yaml").write_text("- nms.beta=0.6\n")

    def stopped(cfg, out_dir, **kwargs):
        raise InputError("stopped before any work")

    monkeypatch.setattr(runner, "run_pipeline", stopped)  # the record is replaced before any work
    code, _, err = run_cli("run", f"input={tiny_mrcs[0]}", f"output={out_dir}", f"hydra.output_subdir={subdir}", "nms.beta=0.9", *TINY_RUN_ARGS)
    assert code == 1 and "stopped before any work" in err
    assert not (out_dir / ".hydra").exists()
    saved, choices = load_saved_config(out_dir)
    assert saved["nms"]["beta"] == 0.9 and choices == {}


def test_caplog_sees_the_messages_of_an_in_process_run(tiny_mrcs, tmp_path, run_cli, monkeypatch, caplog):
    # Hydra's logging config replaces the root logger's handlers for the run, caplog's too: records logged
    # inside app.run reached Hydra's console and file handlers only. Hydra's handlers still end with the run.
    from lipoframe import runner
    from lipoframe.records import InputError

    def logs(cfg, out_dir, **kwargs):
        logging.getLogger("lipoframe.runner").warning("a message of the run")
        raise InputError("stopped")

    monkeypatch.setattr(runner, "run_pipeline", logs)
    root = logging.getLogger()
    before = (root.handlers[:], root.level)
    with caplog.at_level(logging.INFO, logger="lipoframe"):
        code, _, err = run_cli("run", f"input={tiny_mrcs[0]}", f"output={tmp_path / 'out'}", *TINY_RUN_ARGS)
    assert code == 1 and "lipoframe: a message of the run" in err  # Hydra's console handler, as before
    assert [(r.name, r.levelno) for r in caplog.records if r.getMessage() == "a message of the run"] == [("lipoframe.runner", logging.WARNING)]
    assert "a message of the run" in (tmp_path / "out" / "lipoframe.log").read_text()
    assert (root.handlers, root.level) == before


def test_an_in_process_sweep_runs_its_jobs_in_other_processes_with_logging_set_up(tiny_mrcs, tmp_path, run_cli):
    # The job function held the root logger's earlier handlers (pytest's here, a program's own logging
    # elsewhere) to add them back as each job starts; joblib pickles it for its worker processes, and
    # a handler cannot be pickled: 'Could not pickle the task to send it to the workers', exit 1.
    assert logging.getLogger().handlers  # pytest's, as a program's own would be
    sweep = tmp_path / "sweep"
    try:
        code, out, err = run_cli("run", "-m", f"input={tiny_mrcs[0]}", f"output={sweep}", *TINY_RUN_ARGS, "nms.beta=0.6,0.7",
                                 "hydra/launcher=joblib", "hydra.launcher.n_jobs=2")
    finally:
        # joblib keeps its worker processes, and the threads that manage them, for the next call: left running,
        # every later test in this process would see lipoframe use forkserver, not fork (another thread alive).
        from joblib.externals.loky import get_reusable_executor

        get_reusable_executor().shutdown(wait=True)
    assert code == 0, err
    for job in ("0", "1"):
        assert json.loads((sweep / job / "run_summary.json").read_text())["micrographs"]["ok"] == 1


def test_pixel_size_from_header_and_override(tmp_path, run_cli):
    image, truth = tiny_image(seed=0)
    write_mrc(tmp_path / "mics" / "a.mrc", image, pixel_size=TINY_PIXEL_SIZE)
    angstrom = [f"dmin={TINY_DMIN * TINY_PIXEL_SIZE:g}", f"dmax={TINY_DMAX * TINY_PIXEL_SIZE:g}", "units=A"]
    rest = [a for a in TINY_RUN_ARGS if not a.startswith(("dmin=", "dmax=", "units="))]
    code, _, err = run_cli("run", f"input={tmp_path / 'mics'}", f"output={tmp_path / 'hdr'}", *angstrom, *rest)
    assert code == 0, err
    hdr = picked(tmp_path / "hdr")
    np.testing.assert_allclose(hdr["diameter_A"], hdr["diameter_px"] * TINY_PIXEL_SIZE, rtol=1e-3)
    # The same range in Å at a twice larger pixel size is half the range in pixels.
    code, _, err = run_cli("run", f"input={tmp_path / 'mics'}", f"output={tmp_path / 'ovr'}", "pixel_size=3.0", *angstrom, *rest)
    assert code == 0, err
    ovr = picked(tmp_path / "ovr")
    np.testing.assert_allclose(ovr["diameter_A"], ovr["diameter_px"] * 3.0, rtol=1e-3)
    assert ovr["diameter_px"].max() < TINY_DMAX / 2 * 1.1


def test_missing_pixel_size_is_one_clear_message(tmp_path, run_cli):
    write_mrc(tmp_path / "mics" / "nopix.mrc", tiny_image(seed=0)[0], pixel_size=None)
    rest = [a for a in TINY_RUN_ARGS if not a.startswith(("dmin=", "dmax=", "units="))]
    code, out, err = run_cli("run", f"input={tmp_path / 'mics'}", f"output={tmp_path / 'out'}", *rest)
    assert code == 1
    assert "nopix.mrc" in err and "pixel_size=" in err


@pytest.mark.parametrize(
    "spec, expected",
    [
        (["mic_1.mrc"], ["mic_1"]),
        (["."], ["mic_0", "mic_1", "mic_2"]),  # a folder: its micrographs, not notes.txt
        (["mic_[02].mrc"], ["mic_0", "mic_2"]),  # a glob
        (["**/*.mrc"], ["mic_0", "mic_1", "mic_2", "sub/mic_9"]),  # recursive glob
        (["mic_2.mrc", "mic_0.mrc", "mic_2.mrc"], ["mic_0", "mic_2"]),  # no repeats
        (["missing.mrc"], ["missing"]),  # kept, so it is reported as a failure
    ],
)
def test_expand_inputs(spec, expected, tmp_path, monkeypatch):
    from lipoframe.runner import expand_inputs

    for name in ("mic_0.mrc", "mic_1.mrc", "mic_2.mrc", "notes.txt", "sub/mic_9.mrc"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    found = expand_inputs(spec, (".mrc",))
    assert sorted(p.with_suffix("").as_posix() for p in found) == expected


def test_inputs_as_file_folder_and_glob_in_one_run(tmp_path, run_cli):
    for i in range(3):
        write_mrc(tmp_path / "a" / f"mic_{i}.mrc", tiny_image(seed=i)[0])
    write_mrc(tmp_path / "b" / "other.mrc", tiny_image(seed=5)[0])
    (tmp_path / "b" / "notes.txt").write_text("not a micrograph")
    spec = f"input=[{tmp_path / 'a' / 'mic_1.mrc'},{tmp_path / 'b'},'{tmp_path}/a/mic_[02].mrc']"
    out_dir = tmp_path / "out"
    code, _, err = run_cli("run", spec, f"output={out_dir}", *TINY_RUN_ARGS)
    assert code == 0, err
    summary = json.loads((out_dir / "run_summary.json").read_text())
    assert summary["micrographs"]["total"] == 4 and summary["micrographs"]["ok"] == 4
    assert set(picked(out_dir)["micrograph"]) == {"mic_0", "mic_1", "mic_2", "other"}


def test_a_glob_with_a_character_class_needs_no_hydra_quotes(tmp_path, run_cli):
    from lipoframe.app import quote_input_glob

    for i in range(3):
        write_mrc(tmp_path / "a" / f"mic_{i}.mrc", tiny_image(seed=i)[0])
    # What the shell passes for input='/data/mic_[02].mrc': Hydra alone reads a list in it.
    code, _, err = run_cli("run", f"input={tmp_path}/a/mic_[02].mrc", f"output={tmp_path / 'out'}", *TINY_RUN_ARGS)
    assert code == 0, err
    assert set(picked(tmp_path / "out")["micrograph"]) == {"mic_0", "mic_2"}
    # Lists, sweeps and values quoted for Hydra are left as they are.
    for kept in ("input=[a.mrc,b.mrc]", "input=a_[0].mrc,b.mrc", "input='a_[0].mrc'", "dmin=[1]", "input=a.mrc", "input=a.mrc,b.mrc"):
        assert quote_input_glob(kept) == kept
    # A comma separates a sweep's values, unless it is in the name of a file or folder that exists.
    assert quote_input_glob("output=a,b") == "output=a,b"
    (tmp_path / "x,y").mkdir()
    assert quote_input_glob(f"output={tmp_path}/x,y") == f"output='{tmp_path}/x,y'"
    assert quote_input_glob("+input=d/m_[0-9].mrc") == "+input='d/m_[0-9].mrc'"


@pytest.mark.parametrize("name", ["mïc_ü.mrc", "mic (1)#2=b.mrc", "it's~1.mrc", "mic,1.mrc"])
def test_a_file_name_hydra_cannot_read_unquoted_needs_no_hydra_quotes(tmp_path, run_cli, name):
    # Such a path, in input= or output=, failed with 'config error:
    # LexerNoViableAltException: input=...; ^' (exit 2) unless quoted for Hydra too.
    write_mrc(tmp_path / name, tiny_image(seed=0)[0])
    out_dir = tmp_path / f"out {name[:-4]}"
    if "," in name:  # a new output folder's comma separates a sweep's values (refused); one that exists is taken
        out_dir.mkdir()
    code, _, err = run_cli("run", f"input={tmp_path / name}", f"output={out_dir}", *TINY_RUN_ARGS)
    assert code == 0, err
    assert "config error" not in err
    assert len(picked(out_dir)) > 0


def test_a_glob_in_a_folder_with_a_comma_needs_no_hydra_quotes(tmp_path, run_cli):
    """`input=/data/grid1,2/*.mrc` failed with Hydra's 'Ambiguous value ... use key=[value1,value2]'
    (exit 2): only a path that exists was quoted, and a pattern never does."""
    for i in range(2):
        write_mrc(tmp_path / "grid1,2" / f"mic_{i}.mrc", tiny_image(seed=i)[0])
    code, _, err = run_cli("run", f"input={tmp_path}/grid1,2/*.mrc", f"output={tmp_path / 'out'}", *TINY_RUN_ARGS)
    assert code == 0, err
    assert set(picked(tmp_path / "out")["micrograph"]) == {"mic_0", "mic_1"}


def test_a_list_of_paths_hydra_cannot_read_gives_the_quoted_list_to_type(tmp_path, run_cli):
    """The items of a list are not quoted by lipoframe; the message gave Hydra's lexer error and no fix,
    although docs/configuration.md promises 'the quoted form to type'."""
    a, b = tmp_path / "a=b" / "x=1.mrc", tmp_path / "mïc.mrc"
    code, _, err = run_cli("run", f"input=[{a},{b}]", f"output={tmp_path / 'out'}", *TINY_RUN_ARGS)
    assert code == 2 and len(err.strip().splitlines()) == 1
    quoted = f"\"input=['{a}','{b}']\""
    assert err.startswith("lipoframe: config error: input: cannot read") and f"quote each path for Hydra: {quoted}" in err
    for i, p in enumerate((a, b)):
        write_mrc(p, tiny_image(seed=i)[0])
    code, _, err = run_cli("run", quoted.strip('"'), f"output={tmp_path / 'out'}", *TINY_RUN_ARGS)  # what the user then types
    assert code == 0, err
    assert set(picked(tmp_path / "out")["micrograph"]) == {"x_1", "m_c"}


@pytest.mark.parametrize(("typed", "hint"), [
    ("[{a}, {b}]", "['{a}','{b}']"),  # a space after the comma: Hydra strips it, the hint must too
    ("['{c}',{b}]", "['{c}','{b}']"),  # a quoted item with a comma in it is one item
    ("[{d},{b}]", "[\\\"{d}\\\",'{b}']"),  # an item with a single quote goes in double quotes
])
def test_the_quoted_list_to_type_reads_every_item_as_typed(tmp_path, run_cli, typed, hint):
    """The hint split the list at every comma and kept the spaces: "input=['a',' b']" named a file
    ' b' that does not exist, a quoted 'x,y.mrc' became 'x,'y.mrc'', and 'it's.mrc' was not Hydra's."""
    paths = {"a": tmp_path / "a=b" / "x.mrc", "b": tmp_path / "mïc.mrc", "c": tmp_path / "x,y(.mrc", "d": tmp_path / "it's.mrc"}
    code, _, err = run_cli("run", "input=" + typed.format(**paths), f"output={tmp_path / 'out'}", *TINY_RUN_ARGS)
    assert code == 2
    assert f'quote each path for Hydra: "input={hint.format(**paths)}"' in err, err
    for i, p in enumerate(paths.values()):
        write_mrc(p, tiny_image(seed=i)[0])
    typed_next = hint.format(**paths).replace('\\"', '"')  # what the shell hands over
    code, _, err = run_cli("run", f"input={typed_next}", f"output={tmp_path / 'out'}", *TINY_RUN_ARGS)
    assert code == 0, err
    assert len(set(picked(tmp_path / "out")["micrograph"])) == 2


@pytest.mark.parametrize("how", ["quoted", "interpolated"])
def test_an_output_folder_given_quoted_or_interpolated_leaves_no_stray_folder(tiny_mrcs, tmp_path, run_cli, monkeypatch, how):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("LIPOFRAME_TEST_ROOT", str(tmp_path))
    out = tmp_path / ("out dir ü" if how == "quoted" else "out_env")
    spec = f"output='{out}'" if how == "quoted" else "output=${oc.env:LIPOFRAME_TEST_ROOT}/out_env"
    code, _, err = run_cli("run", f"input={tiny_mrcs[0]}", spec, *TINY_RUN_ARGS)
    assert code == 0, err
    assert (out / "picks.csv").is_file()
    assert list(cwd.iterdir()) == []  # the write check used the folder Hydra makes, not the raw text


@pytest.mark.parametrize("spec", ["output=~/picks", "output='~/picks'"])
def test_an_output_folder_under_home_is_made_there_not_in_a_folder_named_tilde(tiny_mrcs, run_cli, away_from_home, spec):
    """`output=~/picks` (sh, a script, or bash with the word quoted) made ./~/picks, while input=~/... reads the home folder."""
    cwd, home = away_from_home
    code, out, err = run_cli("run", f"input={tiny_mrcs[0]}", spec, *TINY_RUN_ARGS)
    assert code == 0, err
    assert (home / "picks" / "picks.csv").is_file() and str(home / "picks") in out
    assert list(cwd.iterdir()) == []


@pytest.mark.parametrize("words", [
    ["-m", "output=~/a,~/b"],  # sh, a script, or the word quoted
    ["-m", "output={home}/a,~/b"],  # bash writes out the first ~ only
    ["-m", "output={home}/a,{home}/b"],
    ["-m", "output=choice(~/a,{home}/b)"],
    ["hydra.mode=MULTIRUN", "output=~/a,~/b"],
    ["-m", "-cd", "{home}/../presets", "+lab=outputs"],  # a preset's hydra.sweeper.params
])
def test_an_output_folder_cannot_be_swept_and_says_so(tiny_mrcs, run_cli, away_from_home, words):
    """`-m output=~/a,~/b` expanded only the first ~ and failed as 'cannot read output=/home/a,~/b'; with every
    folder written out Hydra refused it ('Sweeping over Hydra's configuration is not supported') after
    making the first folder. A sweep has one output folder, its jobs' folders below it."""
    cwd, home = away_from_home
    preset = home.parent / "presets" / "lab" / "outputs.yaml"
    preset.parent.mkdir(parents=True)
    preset.write_text(f"# @package _global_\nhydra:\n  sweeper:\n    params:\n      output: {home}/a,{home}/b\n")
    code, out, err = run_cli("run", *[w.format(home=home) for w in words], f"input={tiny_mrcs[0]}", *TINY_RUN_ARGS)
    assert code == 2, err
    assert err.strip() == (f"lipoframe: config error: output: a sweep writes into one folder, its jobs into <output>/0, "
                           f"<output>/1, ...: give one output folder, not several ({home / 'a'}, {home / 'b'}), "
                           "or run once per output folder" + ("; it is swept by hydra.sweeper.params in a preset" if "-cd" in words else ""))
    assert list(home.iterdir()) == [] and list(cwd.iterdir()) == []


def test_a_run_into_a_sweep_of_output_folders_says_give_one(tmp_path, run_cli):
    # Without -m, output=a,b (and choice(a,b), range(1,3), ...) made one folder named 'a,b' ('choice(a,b)') and ran
    # into it; range(3) was refused as 'a sweep writes into one folder', for a command with no sweep
    from lipoframe.app import check_output_not_swept
    from lipoframe.config import ConfigError

    code, out, err = run_cli("run", f"output={tmp_path}/a,{tmp_path}/b", "input=/no/such.mrc", *TINY_RUN_ARGS)
    assert code == 2 and err.strip() == (
        f"lipoframe: config error: output: {tmp_path}/a,{tmp_path}/b is a sweep of the folders {tmp_path}/a, {tmp_path}/b, "
        "and a run writes into one folder: give one output folder (a sweep, -m, too: its jobs go into <output>/0, <output>/1, "
        f"...); a folder whose name has a comma: quote it for Hydra, \"output='{tmp_path}/a,{tmp_path}/b'\"")
    assert list(tmp_path.iterdir()) == []
    for word, folders in (("output=a,b", " of the folders a, b"), ("output=choice(a,b)", " of the folders a, b"),
                          ("output=range(1,3)", " of the folders 1, 2"), ("output=range(3)", " of the folders 0, 1, 2"),
                          ("output=interval(0,1)", "")):
        with pytest.raises(ConfigError) as exc:
            check_output_not_swept([word], multirun=False)
        value = word.partition("=")[2]
        assert str(exc.value).startswith(f"output: {value} is a sweep{folders}, and a run writes into one folder: give one "
                                         "output folder (a sweep, -m, too: its jobs go into <output>/0, <output>/1, ...)"), word
        assert ("quote it for Hydra" in str(exc.value)) == (word == "output=a,b"), word
    for one in ("output=a", "output='a,b'", "input=a,b"):
        check_output_not_swept([one], multirun=False)


@pytest.mark.parametrize("multirun", [False, True])
def test_the_folders_of_a_sweep_of_output_are_named_as_typed(multirun):
    # They were named as Hydra escapes them for a command line: '/data/run\ 1, /data/run\ 2'
    from lipoframe.app import check_output_not_swept
    from lipoframe.config import ConfigError

    for word, folders in (("output=/data/run 1,/data/run 2", "/data/run 1, /data/run 2"),
                          ("output=choice(/data/${oc.env:USER}/a,b)", "/data/${oc.env:USER}/a, b")):
        with pytest.raises(ConfigError) as exc:
            check_output_not_swept([word], multirun=multirun)
        assert (f"of the folders {folders}, and" if not multirun else f"not several ({folders})") in str(exc.value), exc.value


def test_expand_output_home_writes_out_every_folder_of_a_sweep(away_from_home):
    from lipoframe.app import expand_output_home

    _, home = away_from_home
    assert expand_output_home("output=~/a,~/b", sweep=True) == f"output={home}/a,{home}/b"
    assert expand_output_home("output=/x/a,~/b", sweep=True) == f"output=/x/a,{home}/b"
    assert expand_output_home("output=choice(~/a,~/b)", sweep=True) == f"output=choice({home}/a,{home}/b)"
    # One folder: a ~ after a comma is part of its name (the comma is quoted for Hydra).
    assert expand_output_home("output=~/a,~/b") == f"output={home}/a,~/b"
    assert expand_output_home("output='~/a,~/b'", sweep=True) == f"output='{home}/a,~/b'"
    assert expand_output_home("output=/x/a~,b", sweep=True) == "output=/x/a~,b"


def test_unreadable_files_give_one_message_each_and_the_run_goes_on(tiny_mrcs, tmp_path, run_cli):
    import tifffile

    folder = tiny_mrcs[0].parent
    tiny_mrcs[1].unlink()  # one micrograph to pick beside the two bad files
    (folder / "corrupt.mrc").write_bytes(b"this is not an MRC file")
    tifffile.imwrite(folder / "stack.tif", np.zeros((3, 64, 64), np.float32), photometric="minisblack")
    out_dir = tmp_path / "out"
    code, out, err = run_cli("run", f"input={folder}", f"output={out_dir}", *TINY_RUN_ARGS)
    assert code == 1  # something failed, and the run says so
    for bad in ("corrupt.mrc", "stack.tif"):
        lines = [ln for ln in err.splitlines() if bad in ln]
        assert len(lines) == 1, err
        assert "Traceback" not in err
    assert re.search(r"corrupt\.mrc: .*MRC", err) and re.search(r"stack\.tif: .*3D", err)
    assert set(picked(out_dir)["micrograph"]) == {"mic_0"}
    summary = json.loads((out_dir / "run_summary.json").read_text())
    assert summary["micrographs"]["ok"] == 1 and summary["micrographs"]["failed"] == 2


def test_nothing_matches_is_a_clear_error(tmp_path, run_cli):
    code, out, err = run_cli("run", f"input='{tmp_path}/*.mrc'", f"output={tmp_path / 'out'}", *TINY_RUN_ARGS)
    assert code == 1
    assert re.search(r"\*\.mrc: no files match", err), err


def test_a_mistyped_glob_leaves_an_earlier_run_as_it_was(tiny_run_folder, tmp_path, run_cli):
    """Rerunning into a run's folder with a pattern that matches nothing wrote an
    empty dataset over its picks.csv, exports and plan."""
    out_dir, mics = tmp_path / "out", tiny_run_folder.parent / "mics"
    shutil.copytree(tiny_run_folder, out_dir)  # the earlier run
    before = {p.name: p.read_bytes() for p in out_dir.iterdir() if p.is_file() and p.suffix in (".csv", ".json", ".star")}
    assert "picks.csv" in before and "inputs.json" in before
    code, _, err = run_cli("run", f"input='{mics}/*.mcr'", f"output={out_dir}", *TINY_RUN_ARGS)
    assert code == 1
    assert re.search(r"\*\.mcr: no files match", err) and "nothing was written" in err and "Traceback" not in err
    assert {p: (out_dir / p).read_bytes() for p in before} == before
    # A mistyped file name, too (a named file is kept so that it is reported; here it is all there is).
    typo = mics / "typo.mrc"
    code, _, err = run_cli("run", f"input={typo}", f"output={out_dir}", *TINY_RUN_ARGS)
    assert code == 1
    assert f"{typo}: file not found" in err and "nothing was written" in err and "Traceback" not in err
    assert {p: (out_dir / p).read_bytes() for p in before} == before


def test_plan_report_and_evaluate_read_the_runs_micrographs_not_an_earlier_runs(tiny_run_folder, tmp_path, run_cli):
    """A rerun into the same folder with fewer inputs: picks.csv held its micrographs, but `plan`,
    `report` and `evaluate` also read the saved result of the one left out (kept for resume)."""
    import pandas as pd

    out_dir = tmp_path / "out"
    shutil.copytree(tiny_run_folder, out_dir)  # the earlier run, of mic_0 and mic_1
    code, _, err = run_cli("run", f"input={tiny_run_folder.parent / 'mics' / 'mic_1.mrc'}", f"output={out_dir}", *TINY_RUN_ARGS)
    assert code == 0, err
    assert (out_dir / "micrographs" / "mic_0.json").is_file()  # still there, for resume
    picks = pd.read_csv(out_dir / "picks.csv")
    assert set(picks["micrograph"]) == {"mic_1"}
    code, out, err = run_cli("plan", str(out_dir), "--report")
    assert code == 0, err
    assert f"{len(picks)} picks in" in out
    assert set(pd.read_csv(out_dir / "picks.csv")["micrograph"]) == {"mic_1"}
    assert "mic_0" not in (out_dir / "report.html").read_text()
    from lipoframe.evaluate import read_picks

    evaluated, names = read_picks(out_dir)
    assert names == ["mic_1"] and set(evaluated["micrograph"]) == {"mic_1"}


def test_plan_report_and_evaluate_leave_out_an_earlier_runs_results_made_with_other_settings(tiny_run_folder, tmp_path, run_cli):
    """A rerun with other settings stopped (SIGTERM) before it reached mic_0 left the earlier run's
    mic_0 result in micrographs/ (other picks, kept for resume); `plan`, `report` and `evaluate`
    took it as this run's, mixing two settings' picks (a threshold-4 run redone at 7 and stopped after
    3 of 12 micrographs: plan 1224 picks, evaluate 951, where run_summary.json said 33)."""
    import json

    import pandas as pd

    out_dir = tmp_path / "out"
    shutil.copytree(tiny_run_folder, out_dir)  # the earlier run, with nms.beta's default 0.8
    earlier = tmp_path / "earlier"
    shutil.copytree(out_dir / "micrographs", earlier)
    code, _, err = run_cli("run", f"input={tiny_run_folder.parent / 'mics'}", f"output={out_dir}", *TINY_RUN_ARGS, "nms.beta=0.6")
    assert code == 0, err
    # as the second run leaves the folder when stopped before mic_0: the earlier run's result is still there
    for suffix in (".csv", ".json"):
        shutil.copy(earlier / f"mic_0{suffix}", out_dir / "micrographs" / f"mic_0{suffix}")
    fingerprint = json.loads((out_dir / "inputs.json").read_text())["fingerprint"]
    assert json.loads((out_dir / "micrographs" / "mic_0.json").read_text())["fingerprint"] != fingerprint
    code, out, err = run_cli("plan", str(out_dir), "--report")
    assert "1 of 2 micrograph(s) have no saved picks" in err  # none of this run's settings
    assert set(pd.read_csv(out_dir / "picks.csv")["micrograph"]) == {"mic_1"}
    assert "mic_0_picks" not in (out_dir / "report.html").read_text()
    from lipoframe.evaluate import read_picks

    evaluated, names = read_picks(out_dir)
    assert names == ["mic_1"] and set(evaluated["micrograph"]) == {"mic_1"}


def test_a_mistyped_glob_leaves_the_earlier_runs_settings_record_too(tiny_run_folder, tmp_path, run_cli):
    """The refused run still let Hydra write its settings into .hydra/ over the earlier run's,
    so `lipoframe plan`, `report` and `merge` then read the mistyped run's settings (here dmin=40)."""
    out_dir, mics = tmp_path / "out", tiny_run_folder.parent / "mics"
    shutil.copytree(tiny_run_folder, out_dir)  # the earlier run
    before = {p: p.read_bytes() for p in [*(out_dir / ".hydra").iterdir(), out_dir / "lipoframe.log"]}
    assert len(before) == 4
    code, _, err = run_cli("run", f"input='{mics}/*.mcr'", f"output={out_dir}", *TINY_RUN_ARGS, "dmin=40")
    assert code == 1
    assert re.search(r"\*\.mcr: no files match", err) and "nothing was written" in err and "Traceback" not in err
    assert {p: p.read_bytes() for p in before} == before
    # Without an earlier run, nothing is made either (it was an empty run, its plan and exports):
    # the input errors are all there is to say.
    code, _, err = run_cli("run", f"input='{mics}/*.mcr'", f"output={tmp_path / 'new'}", *TINY_RUN_ARGS)
    assert code == 1 and re.search(r"\*\.mcr: no files match", err) and "nothing was written" not in err
    assert not (tmp_path / "new").exists()


def test_multirun_four_jobs_each_with_its_folder_and_config(tiny_mrcs, tmp_path, run_cli):
    """The command-line contract of issue 2, verbatim: `lipoframe run -m nms.beta=0.6,0.8 detector=dog,log`."""
    out_dir = tmp_path / "sweep"
    code, out, err = run_cli("run", "-m", "nms.beta=0.6,0.8", "detector=dog,log", f"input={tiny_mrcs[0]}", f"output={out_dir}", *TINY_RUN_ARGS)
    assert code == 0, err
    seen = set()
    jobs = sorted(p for p in out_dir.iterdir() if p.is_dir())
    assert len(jobs) == 4
    for job in jobs:
        cfg = yaml.safe_load((job / ".hydra" / "config.yaml").read_text())
        overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
        beta = cfg["nms"]["beta"]
        detector = next(o.split("=")[1] for o in overrides if o.startswith("detector="))
        seen.add((beta, detector))
        assert f"nms.beta={beta}" in overrides
        assert set(picked(job)["micrograph"]) == {"mic_0"}
    assert seen == {(0.6, "dog"), (0.6, "log"), (0.8, "dog"), (0.8, "log")}


def test_multirun_jobs_do_not_read_each_others_outputs(tiny_mrcs, tmp_path, run_cli):
    """A sweep inside the input folder: a later job does not pick an earlier job's masks (files inside `output` are never inputs)."""
    mics = tiny_mrcs[0].parent
    out_dir = mics / "sweep"
    code, _, err = run_cli("run", "-m", "detector=dog,log", f"input={mics}/**/*.mrc", f"output={out_dir}",
                           "writer=[csv,mask]", *TINY_RUN_ARGS)
    assert code == 0, err
    for job in ("0", "1"):
        summary = json.loads((out_dir / job / "run_summary.json").read_text())
        assert summary["micrographs"]["total"] == 2, (job, summary["micrographs"])
    assert any((out_dir / "0").rglob("*.mrc"))  # job 0's masks were there for job 1 to find


# ---------------------------------------------------------------------------
# README and CI agree
# ---------------------------------------------------------------------------
def quickstart_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```(?:bash|sh)?\n(.*?)```", section, re.S).group(1)
    return [ln.strip() for ln in block.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def test_readme_quickstart_is_two_commands_and_ci_runs_the_test_one():
    commands = quickstart_commands()
    assert len(commands) == 2, commands
    demo, tests = commands
    assert "pip install" in demo and "lipoframe run" in demo
    assert "pip install" in tests and "pytest" in tests
    ci = (REPO / ".ci" / "run").read_text()
    assert tests in ci.splitlines(), "the README's test command must appear verbatim in .ci/run"


def test_summary_counts_rejected_candidates_by_reason():
    from lipoframe.runner import _rejected_note, format_summary

    assert _rejected_note({}) == ""
    assert _rejected_note({"no_edge": 5, "weak_unsupported": 3, "edge": 1, "contamination": 1}) == (
        " (rejected: 5 no_edge, 3 weak_unsupported, 1 edge, 1 contamination)"
    )
    assert _rejected_note({"no_edge": 5, "weak_unsupported": 3, "edge": 2, "contamination": 1, "carbon": 1}) == (
        " (rejected: 5 no_edge, 3 weak_unsupported, 2 edge, 2 for 2 other reasons)"
    )
    summary = {
        "micrographs": {"ok": 1, "skipped": 0, "failed": 0, "total": 1},
        "picks": {"total": 9, "accepted": 4, "rejected": {"no_edge": 5}},
        "bins": [],
        "failures": [],
        "errors": [],
        "seconds": 1.0,
        "micrographs_per_s": 1.0,
        "out_dir": "out",
    }
    assert "picks        4 accepted of 9 (rejected: 5 no_edge)" in format_summary(summary)
    summary["picks"]["retried_accepted"] = 2
    assert "picks        4 accepted of 9 (2 retried) (rejected: 5 no_edge)" in format_summary(summary)
    summary["picks"]["peeled_accepted"] = 1
    assert "picks        4 accepted of 9 (2 retried) (1 found after peeling) (rejected: 5 no_edge)" in format_summary(summary)


def test_a_rejection_without_a_reason_is_counted_as_unspecified():
    from pathlib import Path

    from lipoframe.runner import RunResult

    picks = pd.DataFrame({"accepted": [True, False, False], "reject_reason": ["", "", "no_edge"]})
    result = RunResult(Path("out"), [], picks, None, [], 1.0)
    assert result.summary()["picks"]["rejected"] == {"no_edge": 1, "unspecified": 1}


def test_run_summary_json_has_rejected_reasons(tiny_run_folder):
    out_dir = tiny_run_folder
    picks = json.loads((out_dir / "run_summary.json").read_text())["picks"]
    assert sum(picks["rejected"].values()) == picks["total"] - picks["accepted"]
    counts = list(picks["rejected"].values())
    assert counts == sorted(counts, reverse=True)
    table = pd.read_csv(out_dir / "picks.csv") if (out_dir / "picks.csv").is_file() else None
    assert 0 <= picks["retried_accepted"] <= picks["accepted"]
    if table is not None and "retried" in table.columns:
        assert picks["retried_accepted"] == int((table["retried"].astype(bool) & table["accepted"].astype(bool)).sum())
    assert 0 <= picks["peeled_accepted"] <= picks["accepted"]
    if table is not None and "peeled" in table.columns:
        assert picks["peeled_accepted"] == int((table["peeled"].astype(bool) & table["accepted"].astype(bool)).sum())


def test_a_run_piped_into_a_command_that_stops_reading_ends_cleanly(tiny_mrcs, tmp_path):
    # `lipoframe run ... | head` (or `| true`): the summary's print met a closed pipe inside
    # Hydra's job, which printed "Error executing job ... BrokenPipeError" and exit code 1.
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-m", "lipoframe", "run", f"input={tiny_mrcs[0]}", f"output={tmp_path / 'out'}",
                             *TINY_RUN_ARGS], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    proc.stdout.close()  # the reader is gone before the run prints anything
    with proc.stderr:
        err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0, err
    assert "BrokenPipeError" not in err and "Error executing job" not in err
    assert (tmp_path / "out" / "picks.csv").is_file()


def test_summary_bin_range_reads_as_the_extraction_plan():
    """The console's bin range is the plan's (extraction_plan.md, the overlay legend), not a rounding of a rounding.

    On the real liposome image Fusion-G-87 (units=px dmin=20 dmax=400) the largest bin ended at 108.54 px:
    the plan and the overlays said 64-109 px, the console 64-108 px (108.54 was stored as 108.5, which
    '.0f' rounds to even, 108).
    """
    from pathlib import Path

    import pandas as pd

    from lipoframe.plan import ExtractionPlan, SizeBin, format_range
    from lipoframe.runner import RunResult, format_summary

    b = SizeBin(index=2, d_min_px=64.3457, d_max_px=108.5385, count=12, box_px=192)
    res = RunResult(out_dir=Path("out"), results=[], picks=pd.DataFrame(), plan=ExtractionPlan("peak_valley", None, (b,)),
                    files=[], seconds=1.0)
    assert format_range(b.d_min_px, b.d_max_px) == "64-109"
    assert "  bin 3: 64-109 px, 12 picks, box 192 px" in format_summary(res.summary()).splitlines()


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("failing", [False, True])
def test_a_signal_after_the_summary_exits_with_the_runs_own_code(tmp_path, failing, sig):
    """A SIGTERM just after the summary was printed (a batch job's time limit, `scancel`) made the finished
    run exit as killed (-15), so the batch system recorded a failure; it now exits with the run's own code
    (0, or 1 with a failed micrograph). So does a Ctrl-C (SIGINT) then, which made it exit as interrupted
    (130, or -2 once the interpreter was exiting)."""
    import signal
    import subprocess
    import sys

    from scale_data import RUN_ARGS, env, write_set

    write_set(tmp_path / "in", 1)
    if failing:
        (tmp_path / "in" / "broken.mrc").write_bytes(b"not an MRC file")
    cmd = [sys.executable, "-m", "lipoframe", "run", f"input={tmp_path / 'in'}", f"output={tmp_path / 'out'}",
           "runner.workers=1", *RUN_ARGS]
    # Ctrl-C as at a terminal, whatever the test runner inherited (a background job ignores SIGINT).
    proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    for line in proc.stdout:
        if line.startswith("outputs "):
            proc.send_signal(getattr(signal, sig))  # the summary's last line: the run is over
            break
    proc.stdout.close()
    code = proc.wait(timeout=60)
    assert code == (1 if failing else 0), code
