"""Configuration: typed stage parameters, one-line errors naming the key, the packaged config tree."""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from pathlib import Path

import pytest

from conftest import TINY_RUN_ARGS
from lipoframe.app import prepare_hydra, sweep_jobs, validate_overrides
from lipoframe.config import ConfigError, LipoframeConfig, config_dir, to_run_config



def compose(*overrides: str):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    prepare_hydra()
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir()), job_name="test"):
        return to_run_config(hydra_compose("config", overrides=list(overrides)))


# ---------------------------------------------------------------------------
# Valid configs
# ---------------------------------------------------------------------------
def test_defaults_are_the_documented_ones():
    cfg = compose()
    assert isinstance(cfg, LipoframeConfig)
    assert (cfg.dmin, cfg.dmax, cfg.units, cfg.polarity) == (150.0, 500.0, "A", "dark")
    assert cfg.pixel_size is None and cfg.input == [] and cfg.output is None
    assert cfg.detector is not None and cfg.nms is not None and cfg.refiner is not None and cfg.binning is not None
    assert "csv" in cfg.writer  # picks.csv is always written by default


def test_stage_selection_and_typed_overrides():
    cfg = compose("detector=log", "nms=size_aware", "nms.beta=0.6", "detector.k=1.2", "pixel_size=1.06", "dmin=20", "dmax=60", "units=px", "polarity=bright")
    assert type(cfg.detector).__name__ == "LogParams" and cfg.detector.k == 1.2
    assert cfg.nms.beta == 0.6 and isinstance(cfg.nms.beta, float)
    assert (cfg.pixel_size, cfg.dmin, cfg.dmax, cfg.units, cfg.polarity) == (1.06, 20.0, 60.0, "px", "bright")


def test_issue_examples_work_with_the_default_stages():
    """The examples of the command-line contract (issue 2) work on top of the defaults."""
    cfg = compose("detector=log", "nms.beta=0.6")
    assert type(cfg.detector).__name__ == "LogParams" and cfg.nms.beta == 0.6
    for job in sweep_jobs(["nms.beta=0.6,0.8", "detector=dog,log"]):
        validate_overrides(job)


@pytest.mark.parametrize(
    "override, expected",
    [
        ("input=/data/mics", ["/data/mics"]),
        ("input=[a.mrc,b.mrc]", ["a.mrc", "b.mrc"]),
        ("input='/data/*.mrc'", ["/data/*.mrc"]),
    ],
)
def test_input_accepts_one_or_many(override, expected):
    assert compose(override).input == expected


def test_every_registered_stage_is_a_config_option():
    from hydra.core.config_store import ConfigStore

    _, registry = prepare_hydra()
    repo = ConfigStore.instance().repo
    for info in registry.stages():
        assert f"{info.name}.yaml" in repo[info.kind], info


# ---------------------------------------------------------------------------
# Errors: one line that names the key, before any micrograph is read
# ---------------------------------------------------------------------------
BAD = [
    (["nms=size_aware", "nms.beta=abc"], "nms.beta", "could not be converted"),
    (["nms.typo=1"], "nms.typo", "not in"),
    (["typo=3"], "typo", "not in"),
    (["nms=size_aware", "nms.beta=0"], "nms.beta", "(0, 2]"),
    (["nms=size_aware", "nms.beta=-1"], "nms.beta", "(0, 2]"),
    (["nms.outrank_ratio=1"], "nms.outrank_ratio", "(0, 1)"),
    (["dmin=600", "dmax=500"], "dmin", "dmax"),
    (["dmin=0"], "dmin", "> 0"),
    # Before, each micrograph failed on its own ("the smallest diameter is 2 px, too small to pick") with exit code 1.
    (["units=px", "dmin=2", "dmax=100"], "dmin", "must be at least 3 px, got 2 px"),
    (["pixel_size=100"], "dmin", "must be at least 3 px, got 1.5 px (dmin=150 Å at pixel_size=100 Å/px)"),
    (["detector=nope"], "detector=nope", "available: dog"),
    (["nms=nope"], "nms=nope", "size_aware"),
    (["writer=[csv,nope]"], "writer=nope", "csv"),
    (["units=nm"], "units", "'nm'"),
    (["polarity=grey"], "polarity", "'grey'"),
    (["pixel_size=-1"], "pixel_size", "> 0"),
    (["pixel_size=inf"], "pixel_size", "finite"),
    (["dmax=inf"], "dmax", "finite"),
    (["input="], "input is empty", "leave input out to run the built-in demo"),
    (["input=[]"], "input is empty", "name a file, folder or glob"),
    (["+foo=1"], "foo", "not an option of lipoframe"),
    (["+nms.foo=1"], "nms.foo", "not an option of lipoframe"),
    (["filter=[carbon]", "+filter.carbon.typo=1"], "filter.carbon.typo", "not an option of lipoframe"),
    (["detector.k=abc"], "detector.k", "could not be converted"),
    (["detector.k=1"], "detector.k", "(1, 2]"),
    (["runner.workers=-2"], "runner.workers", ">= 0"),
    (["stream.idle_timeout=nan"], "stream.idle_timeout", "must be a number, got nan"),
    (["stream.poll_seconds=inf"], "stream.poll_seconds", "must be finite, got inf"),
    (["retry_suppressed=[no_edge,no_egde]"], "retry_suppressed", "'no_egde' is not a reject reason"),
    (["nms.rank_by=respnse"], "nms.rank_by='respnse'", "candidates of detector=edge; they have x_px, y_px, diameter_px, score, pyramid_level, sigma_px, response"),
    (["nms.outrank_by=qualty"], "nms.outrank_by='qualty'", "candidates of detector=edge"),
    (["nms=overlap", "nms.rank_by="], "nms.rank_by", "must name a column"),
    # Options of a filter or writer that is not in the list: Hydra's "Key 'score' is not in struct" said neither.
    (["filter.score.min_score=3"], "filter.score", "the filter 'score' is not selected, so it has no options; select it with 'filter=[...,score]'"),
    (["writer=[csv]", "writer.star.subpixel=true"], "writer.star", "the writer 'star' is not selected"),
    (["filter=[score]", "filter.score=3"], "filter.score", "set the options of the filter one by one (filter.score.<option>=value"),
    (["writer.csv=null"], "writer.csv", "got None"),
    (["filter.scor.min_score=3"], "filter.scor", "no filter stage named 'scor'; available: carbon,"),
    (["detector=heatmap", "nms=nested", "nms.rank_by=quality"], "nms.rank_by='quality'", "detector=heatmap; they have x_px, y_px, diameter_px, score, pyramid_level, sigma_px, size_px"),
]


#: NaN and inf in stage parameters: range checks such as ``x < 1`` let NaN through.
NONFINITE = [
    (["detector.threshold=nan"], "detector.threshold", "must be a number, got nan"),
    (["detector.octave_span=nan"], "detector.octave_span", "must be a number, got nan"),
    (["detector.min_sigma_binned=nan"], "detector.min_sigma_binned", "must be a number, got nan"),
    (["detector.threshold=inf"], "detector.threshold", "must be finite, got inf"),
    (["binning.smooth_sigma_bins=nan"], "binning.smooth_sigma_bins", "must be a number, got nan"),
    (["binning.bin_width_px=inf"], "binning.bin_width_px", "must be finite, got inf"),
    (["binning.extract_pixel_size=inf"], "binning.extract_pixel_size", "must be finite, got inf"),
    (["refiner.min_contrast=nan"], "refiner.min_contrast", "must be a number, got nan"),
    (["refiner.min_contrast=-1"], "refiner.min_contrast", "must be >= 0 and finite (or -inf: no contrast test), got -1.0"),
    (["refiner.min_contrast=inf"], "refiner.min_contrast", "must be >= 0 and finite"),
    (["refiner.strong_min_contrast=nan"], "refiner.strong_min_contrast", "must be a number, got nan"),
    (["refiner.strong_min_contrast=-1"], "refiner.strong_min_contrast", "must be >= 0 and finite"),
    (["refiner.strong_score=nan"], "refiner.strong_score", "must be a number, got nan"),
    (["filter=[score]", "filter.score.min_score=nan"], "filter.score.min_score", "must be a number, got nan"),
    (["writer.csv.float_format=abc"], "writer.csv.float_format", "must be a printf format of one number (e.g. %.3f), got 'abc'"),
    (["writer.csv.float_format=%.2fx"], "writer.csv.float_format", "got '%.2fx'"),
]


@pytest.mark.parametrize("overrides, key, detail", BAD + NONFINITE, ids=[" ".join(b[0]) for b in BAD + NONFINITE])
def test_config_error_is_one_line_naming_the_key(overrides, key, detail):
    with pytest.raises(ConfigError) as err:
        validate_overrides(overrides)
    msg = str(err.value)
    assert "\n" not in msg
    assert key in msg and detail in msg


@pytest.mark.parametrize(
    "override, hint",
    [
        ("workers=1", "did you mean runner.workers?"),  # a key of a section, given at the top
        ("progres=false", "did you mean runner.progress?"),  # ... and misspelt
        ("detector.treshold=5", "did you mean detector.threshold?"),  # misspelt in its section
        ("dmni=40", "did you mean dmin?"),
        ("detecter=dog", "did you mean detector?"),
        ("min_score=2", "did you mean filter.score.min_score?"),  # a stage parameter, given at the top
        ("nms.bta=0.5", "did you mean nms.beta?"),
        ("stream.poll=1", "did you mean stream.poll_seconds?"),  # the start of a key: nothing spelt alike
        ("stream.idle=60", "did you mean stream.idle_timeout?"),
        ("poll=1", "did you mean stream.poll_seconds?"),  # ... given at the top
    ],
)
def test_unknown_key_error_suggests_the_key_meant(override, hint):
    with pytest.raises(ConfigError) as err:
        validate_overrides([override])
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(override.split("=")[0] + ":")
    assert msg.endswith("; " + hint)


@pytest.mark.parametrize("override", ["peel=maybe", "nms.beta=abc", "dmin=abc", "runner.workers=x"])
def test_a_bad_value_of_a_known_key_gets_no_suggestion(override):
    with pytest.raises(ConfigError) as err:
        validate_overrides([override])
    assert str(err.value).startswith(override.split("=")[0] + ":") and "did you mean" not in str(err.value)


def _float_parameters():
    """(Params class, key, field) for every float parameter of every built-in stage."""
    from lipoframe import plugins
    from lipoframe.stages import MULTI_KINDS

    cases = []
    for info in plugins.load()[1].stages():
        if not info.cls.__module__.startswith("lipoframe."):
            continue
        section = f"{info.kind}.{info.name}" if info.kind in MULTI_KINDS else info.kind
        hints = typing.get_type_hints(info.params)
        for f in dataclasses.fields(info.params):
            if float in (hints[f.name], *typing.get_args(hints[f.name])):  # float, Optional[float]
                cases.append(pytest.param(info.params, f"{section}.{f.name}", f.name, id=f"{info.kind}/{info.name}.{f.name}"))
    return cases


FLOAT_PARAMETERS = _float_parameters()
#: Parameters for which an infinity means something.
INFINITE_OK = {("refiner.strong_score", math.inf), ("refiner.min_contrast", -math.inf), ("refiner.strong_min_contrast", -math.inf)}


def test_the_float_parameters_are_found():
    keys = {p.values[1] for p in FLOAT_PARAMETERS}
    assert {"detector.threshold", "refiner.min_contrast", "binning.extract_pixel_size", "filter.score.min_score", "writer.mask.scale"} <= keys
    assert len(FLOAT_PARAMETERS) > 80


@pytest.mark.parametrize("params, key, name", FLOAT_PARAMETERS)
def test_every_float_parameter_of_the_built_in_stages_refuses_nan(params, key, name):
    with pytest.raises(ValueError, match=f"^{re.escape(key)} must be a number, got nan$"):
        params(**{name: math.nan})


@pytest.mark.parametrize("value", [math.inf, -math.inf])
@pytest.mark.parametrize("params, key, name", FLOAT_PARAMETERS)
def test_every_float_parameter_of_the_built_in_stages_refuses_infinity_unless_it_means_something(params, key, name, value):
    if (key, value) in INFINITE_OK:
        assert getattr(params(**{name: value}), name) == value
    else:
        with pytest.raises(ValueError, match=f"^{re.escape(key)} must be "):
            params(**{name: value})


def test_unknown_key_without_a_likely_meaning_gets_no_suggestion():
    with pytest.raises(ConfigError) as err:
        validate_overrides(["zzz=1"])
    assert "did you mean" not in str(err.value)


@pytest.mark.parametrize("overrides, key, detail", BAD[:8] + NONFINITE[:1], ids=[" ".join(b[0]) for b in BAD[:8] + NONFINITE[:1]])
def test_cli_config_error_before_any_micrograph_is_read(overrides, key, detail, tiny_mrcs, tmp_path, run_cli, monkeypatch):
    import lipoframe.runner

    def must_not_run(*a, **k):
        raise AssertionError("the pipeline started despite a config error")

    monkeypatch.setattr(lipoframe.runner, "run_pipeline", must_not_run)
    out_dir = tmp_path / "out"
    code, out, err = run_cli("run", f"input={tiny_mrcs[0]}", f"output={out_dir}", *overrides)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("lipoframe: config error: ") and key in lines[0] and detail in lines[0]
    assert not (out_dir / "micrographs").exists()


@pytest.mark.parametrize("overrides", [
    ["nms.rank_by=score", "nms.outrank_by=response"],
    ["detector=heatmap", "nms.rank_by=size_px"],
    ["detector=heatmap"],  # ranks by response, which falls back to score
    ["detector=membrane", "nms=overlap", "nms.rank_by=membrane_coverage"],
    ["detector=dog", "nms.rank_by=z_px"],  # a tomogram's candidates have it
])
def test_the_columns_a_detector_writes_may_rank_candidates(overrides):
    assert validate_overrides(overrides) is not None


def test_a_plugin_detector_that_does_not_declare_its_columns_is_checked_on_each_micrograph(fake_plugin, tiny_mrcs, tmp_path, run_cli):
    assert validate_overrides([f"detector={fake_plugin}", "nms.rank_by=nope"]) is not None
    code, _, err = run_cli("run", f"input={tiny_mrcs[0]}", f"output={tmp_path / 'out'}", f"detector={fake_plugin}", "nms.rank_by=nope", *TINY_RUN_ARGS)
    assert code == 1 and "nms.rank_by='nope' is not a column of the detections; they have x_px, y_px" in err


def test_multirun_checks_every_job_before_the_first_starts(tiny_mrcs, tmp_path, run_cli):
    out_dir = tmp_path / "sweep"
    code, out, err = run_cli("run", "-m", "nms=size_aware", "nms.beta=0.6,0", "detector=dog,log", f"input={tiny_mrcs[0]}", f"output={out_dir}", *TINY_RUN_ARGS)
    assert code == 2
    assert err.count("\n") == 1 and "nms.beta must be in (0, 2], got 0.0" in err and "(job nms=size_aware nms.beta=0 detector=dog" in err
    assert not list(out_dir.glob("*/picks.csv"))


def test_multirun_with_a_glob_checks_every_job_before_the_first_starts(tiny_mrcs, tmp_path, run_cli):
    out_dir = tmp_path / "sweep"
    code, _, err = run_cli("run", "-m", "detector=glob(*og)", "nms.beta=0.6,0", f"input={tiny_mrcs[0]}", f"output={out_dir}", *TINY_RUN_ARGS)
    assert code == 2
    assert "nms.beta must be in (0, 2], got 0.0" in err and "(job detector=dog nms.beta=0" in err
    assert not list(out_dir.glob("*/picks.csv"))
    assert sweep_jobs(["detector=glob(*og)"]) == [["detector=dog"], ["detector=log"]]
    assert sweep_jobs(["+mine=glob(*)"]) is None  # a group of the user's own presets (-cd): Hydra expands it


def test_sweep_jobs_is_the_cartesian_product():
    jobs = sweep_jobs(["nms.beta=0.6,0.8", "detector=dog,log", "output=x"])
    assert jobs == [
        ["nms.beta=0.6", "detector=dog", "output=x"],
        ["nms.beta=0.6", "detector=log", "output=x"],
        ["nms.beta=0.8", "detector=dog", "output=x"],
        ["nms.beta=0.8", "detector=log", "output=x"],
    ]


def test_a_dmin_under_3_px_in_pixels_is_a_config_error_before_any_micrograph_is_read(tiny_mrcs, tmp_path, run_cli):
    code, _, err = run_cli("run", f"input={tiny_mrcs[0]}", f"output={tmp_path / 'out'}", "units=px", "dmin=1", "dmax=100")
    assert code == 2
    assert err.strip() == "lipoframe: config error: dmin must be at least 3 px, got 1 px"
    assert not (tmp_path / "out" / "micrographs").exists()
    # in Å without a pixel size it depends on each file's header: checked per micrograph
    LipoframeConfig(dmin=1, dmax=100)


def test_python_config_objects_validate_too():
    with pytest.raises(ConfigError, match="^dmin must be < dmax"):
        LipoframeConfig(dmin=500, dmax=150)
    with pytest.raises(ConfigError, match="^units must be one of"):
        LipoframeConfig(units="nm")


# ---------------------------------------------------------------------------
# The config tree (the wheel's copy is tested in test_packaging.py)
# ---------------------------------------------------------------------------
def test_config_tree_is_found():
    d = config_dir()
    assert (d / "config.yaml").is_file()
    assert (d / "hydra" / "job_logging" / "lipoframe.yaml").is_file()


def test_own_config_folder_with_hydra_flags(tiny_mrcs, tmp_path, run_cli):
    """`-cd DIR +group=option` adds the user's presets; flag values are not mistaken for overrides."""
    from lipoframe.app import split_argv

    assert split_argv(["-cd", "/x", "--info", "defaults", "-m", "a=1"]) == (["-cd", "/x", "--info", "defaults", "-m"], ["a=1"])
    presets = tmp_path / "presets" / "lab"
    presets.mkdir(parents=True)
    (presets / "small.yaml").write_text("# @package _global_\ndefaults:\n  - override /nms: size_aware\ndmin: 35\nnms:\n  beta: 0.7\n")
    out_dir = tmp_path / "out"
    code, _, err = run_cli("run", "-cd", str(tmp_path / "presets"), "+lab=small", f"input={tiny_mrcs[0]}", f"output={out_dir}", *[a for a in TINY_RUN_ARGS if not a.startswith("dmin=")])
    assert code == 0, err
    saved = (out_dir / ".hydra" / "config.yaml").read_text()
    assert "dmin: 35.0" in saved and "beta: 0.7" in saved
    code, _, err = run_cli("run", "-cd", str(tmp_path / "presets"), "+lab=small", "nms.beta=0", f"input={tiny_mrcs[0]}", f"output={tmp_path / 'bad'}", *TINY_RUN_ARGS)
    assert code == 2 and "nms.beta must be in (0, 2]" in err


@pytest.mark.parametrize("multirun", [False, True])
@pytest.mark.parametrize(
    ("word", "message"),
    [
        ("writer.star.micrograph_name=MotionCorr/{stem}.mrc",
         "writer.star.micrograph_name: cannot read 'writer.star.micrograph_name=MotionCorr/{stem}.mrc' (mismatched input '{' "
         "expecting <EOF>); quote the value for Hydra too: \"writer.star.micrograph_name='MotionCorr/{stem}.mrc'\""),
        ("writer=[csv,star", "writer: cannot read 'writer=[csv,star' (no viable alternative at input '[csv,star')"),
        ("dmin:3", "dmin:3: not a key=value override"),
    ],
)
def test_a_word_hydra_cannot_parse_is_one_line_naming_the_key(tiny_mrcs, tmp_path, run_cli, word, message, multirun):
    # a template typed with shell quotes only (writer.star.micrograph_name='{stem}.mrc' reaches Hydra unquoted)
    # gave "no viable alternative at input '{stem}'" naming no key, and in a sweep Hydra's many-line error, exit code 1
    out_dir = tmp_path / "out"
    code, _, err = run_cli("run", *(["-m", "detector=dog,log"] if multirun else []), word,
                           f"input={tiny_mrcs[0]}", f"output={out_dir}", *TINY_RUN_ARGS)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith(f"lipoframe: config error: {message}"), err
    assert not out_dir.exists() or not any(out_dir.rglob("picks.csv"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["+lab=small", "nms.bta=1"], "nms.bta: Key 'bta' not in 'SizeAwareParams'; did you mean nms.beta?"),
        (["+lab=small", "dmin=abc"], "dmin: Value 'abc' of type 'str' could not be converted to Float"),
        (["+lab=small", "detector=nope"], "detector=nope: no detector stage named 'nope'"),
        (["+lab=big"], "lab=big: no such option; available: small"),
        (["-m", "+lab=small", "nms.beta=0.6,3"], "nms.beta must be in (0, 2], got 3.0 (job +lab=small nms.beta=3"),
    ],
)
def test_config_errors_with_own_presets_are_one_line(tiny_mrcs, tmp_path, run_cli, args, message):
    # with -cd DIR nothing was checked before Hydra ran: a typo gave Hydra's many-line error
    # and exit code 1 (and a sweep started its jobs before a bad one failed)
    presets = tmp_path / "presets" / "lab"
    presets.mkdir(parents=True)
    (presets / "small.yaml").write_text("# @package _global_\ndefaults:\n  - override /nms: size_aware\ndmin: 35\n")
    out_dir = tmp_path / "out"
    flags = [a for a in args if a == "-m"]
    overrides = [a for a in args if a != "-m"]
    code, _, err = run_cli("run", *flags, "-cd", tmp_path / "presets", *overrides, f"input={tiny_mrcs[0]}", f"output={out_dir}")
    assert code == 2
    assert err.count("\n") == 1 and err.startswith(f"lipoframe: config error: {message}"), err
    assert not out_dir.exists() or not any(out_dir.rglob("picks.csv"))
    code, _, err = run_cli("run", f"--config-dir={tmp_path / 'nowhere'}", "+lab=small", f"input={tiny_mrcs[0]}", f"output={out_dir}")
    assert code == 2 and err == f"lipoframe: config error: --config-dir: {tmp_path / 'nowhere'}: no such folder\n"


@pytest.mark.parametrize(
    ("overrides", "noted"),
    [
        (["nms.beta=0.6"], True),  # containment 0.4 already suppresses within 0.98 radii
        (["nms.beta=1.2"], False),
        (["nms.beta=0.6", "nms.max_containment=1"], False),  # the plain beta rule
        (["nms.max_containment=0.3"], False),  # beta not set by the user
        (["nms=overlap"], False),
    ],
)
def test_a_beta_that_cannot_change_the_result_gets_a_note(overrides, noted):
    from lipoframe.app import override_notes

    notes = override_notes(validate_overrides(overrides), overrides)
    assert bool(notes) == noted
    if noted:
        assert notes[0].startswith("nms.beta=0.6 changes nothing while nms.max_containment=0.4")


def _sweep_preset(tmp_path, name: str, params: str) -> Path:
    presets = tmp_path / "presets" / "lab"
    presets.mkdir(parents=True, exist_ok=True)
    (presets / f"{name}.yaml").write_text(f"# @package _global_\nhydra:\n  sweeper:\n    params:\n{params}")
    return tmp_path / "presets"


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ("      nms.bta: 0.6,0.8\n", "nms.bta: Key 'bta' not in 'SizeAwareParams'; did you mean nms.beta? (job nms.bta=0.6 +lab=sweep"),
        ("      nms.beta: 0.6,0\n", "nms.beta must be in (0, 2], got 0.0 (job nms.beta=0 +lab=sweep"),
        ("      detector: dog,nope\n", "detector=nope: no detector stage named 'nope'"),
    ],
)
def test_a_typo_in_a_presets_sweeper_params_is_a_config_error_before_any_job_runs(tiny_mrcs, tmp_path, run_cli, params, message):
    # Hydra found the typo only as it composed the jobs: its many-line error and exit code 1,
    # or (a bad value) job 0 ran and job 1 failed
    presets = _sweep_preset(tmp_path, "sweep", params)
    out_dir = tmp_path / "out"
    code, _, err = run_cli("run", "-m", "-cd", presets, "+lab=sweep", f"input={tiny_mrcs[0]}", f"output={out_dir}", *TINY_RUN_ARGS)
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith(f"lipoframe: config error: {message}"), err
    # with a sweep on the command line too (its jobs were checked, the preset's keys were not)
    code, _, err = run_cli("run", "-m", "-cd", presets, "+lab=sweep", "dmin=30,31", f"input={tiny_mrcs[0]}", f"output={out_dir}",
                           *TINY_RUN_ARGS[1:])
    assert code == 2 and err.count("\n") == 1 and "it is swept by hydra.sweeper.params in a preset" in err, err
    assert err.rstrip().endswith("; it is swept by hydra.sweeper.params in a preset"), err
    assert not out_dir.exists() or not any(out_dir.rglob("picks.csv"))


def test_a_presets_sweeper_params_join_the_command_lines_sweep(tmp_path):
    from lipoframe.app import preset_sweep_params

    presets = _sweep_preset(tmp_path, "sweep", "      nms.beta: 0.6,0.8\n      detector: dog,log\n")
    params = preset_sweep_params(["+lab=sweep", "nms.max_containment=0.3"], config_dirs=[str(presets)])
    assert params == ["nms.beta=0.6,0.8", "detector=dog,log"]
    # also when the command line sweeps too (composing the sweep words failed: the preset's sweep went unchecked)
    assert preset_sweep_params(["+lab=sweep", "nms.max_containment=0.3,0.5"], config_dirs=[str(presets)]) == params
    assert preset_sweep_params(["nms.beta=0.6"]) == []  # lipoframe's own config sweeps nothing
    assert preset_sweep_params(["+lab=nope"], config_dirs=[str(presets)]) == []  # validate_overrides says why
    # the command line wins for the same key, which keeps its place (Hydra's basic sweeper)
    assert sweep_jobs([*params, "detector=log", "dmin=35"]) == [
        ["nms.beta=0.6", "detector=log", "dmin=35"],
        ["nms.beta=0.8", "detector=log", "dmin=35"],
    ]


@pytest.mark.parametrize("multirun", [True, False])
@pytest.mark.parametrize(
    "word",
    [
        "hydra.sweeper.params={nms.beta:0.6,0.8}",
        "hydra.sweeper.params={nms.beta:'0.6,0.8'}",
        "+hydra.sweeper.params={nms.beta:'0.6,0.8'}",
        "++hydra.sweeper.params={nms.beta:'0.6,0.8'}",
        "hydra.sweeper.params.nms.beta=0.6,0.8",
        "+hydra.sweeper.params.detector='dog,log'",
        "~hydra.sweeper.params",
    ],
)
def test_hydra_sweeper_params_on_the_command_line_is_a_config_error_saying_how_to_sweep(tiny_mrcs, tmp_path, run_cli, word, multirun):
    # gave a traceback (merging into its null default), a parse error or "Sweeping over Hydra's configuration
    # is not supported", with exit code 1
    out_dir = tmp_path / "out"
    code, _, err = run_cli("run", *(["-m"] if multirun else []), word, f"input={tiny_mrcs[0]}", f"output={out_dir}", *TINY_RUN_ARGS)
    assert code == 2
    assert err == ("lipoframe: config error: hydra.sweeper.params: cannot be set on the command line; sweep with key=values "
                   "words instead (lipoframe run -m nms.beta=0.6,0.8 detector=dog,log), or put hydra.sweeper.params in a "
                   "preset (hydra.sweeper.params=null drops a preset's sweep; docs/configuration.md, Multirun)\n"), err
    assert not out_dir.exists()


def test_hydra_sweeper_params_null_drops_a_presets_sweep(tmp_path):
    from lipoframe.app import check_sweeper_params_override, preset_sweep_params

    presets = _sweep_preset(tmp_path, "sweep", "      nms.bta: 0.6,0.8\n")
    check_sweeper_params_override(["hydra.sweeper.params=null"])
    assert preset_sweep_params(["+lab=sweep", "hydra.sweeper.params=null"], config_dirs=[str(presets)]) == []


def test_a_plain_run_composes_its_config_once_before_hydra_does(tiny_mrcs, tmp_path, run_cli, monkeypatch):
    # lipoframe composed a plain run's config twice before Hydra's own composes: once to tell it from a sweep
    # (hydra.mode=MULTIRUN in a preset, hydra_settings), then to check it (~0.2 s of every run); the check tells it now.
    # Hydra composed it twice too: once only to read its hydra.mode (get_mode), which the check has read already.
    import traceback

    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.hydra import Hydra
    from hydra.types import RunMode

    ours, hydras = [], []
    load = ConfigLoaderImpl.load_configuration
    get_mode = Hydra.get_mode

    def counted(self, *args, **kwargs):
        inside_hydra = any(f.name == "_run_hydra" for f in traceback.extract_stack())  # Hydra's own, for the run
        (hydras if inside_hydra else ours).append(kwargs.get("run_mode"))
        return load(self, *args, **kwargs)

    monkeypatch.setattr(ConfigLoaderImpl, "load_configuration", counted)
    code, _, err = run_cli("run", f"input={tiny_mrcs[0]}", f"output={tmp_path / 'out'}", *TINY_RUN_ARGS)
    assert code == 0, err
    assert (tmp_path / "out" / "picks.csv").is_file()
    assert len(ours) == 1, ours
    assert len(hydras) == 1, hydras
    assert Hydra.get_mode is get_mode  # Hydra's own again after the run
    # hydra.mode=RUN set in a preset: a plain run, told so to Hydra
    presets = tmp_path / "presets" / "lab"
    presets.mkdir(parents=True)
    (presets / "once.yaml").write_text("# @package _global_\nhydra:\n  mode: RUN\n")
    hydras.clear()
    code, _, err = run_cli("run", "-cd", tmp_path / "presets", "+lab=once", f"input={tiny_mrcs[0]}",
                           f"output={tmp_path / 'preset'}", *TINY_RUN_ARGS)
    assert code == 0, err
    assert (tmp_path / "preset" / "picks.csv").is_file() and not (tmp_path / "preset" / "multirun.yaml").exists()
    assert len(hydras) == 1, hydras
    assert Hydra.get_mode is get_mode
    # a sweep: its hydra.mode (None, -m; MULTIRUN, set in a preset) is read with its preset's sweeper params, so
    # Hydra composes the sweep's config once (then each job's, twice: its sweeper checks the batch, its launcher
    # runs it), not once more before to read the mode
    (presets / "multi.yaml").write_text("# @package _global_\nhydra:\n  mode: MULTIRUN\n")
    for sweep, words in (("dash_m", ["-m"]), ("preset", ["-cd", tmp_path / "presets", "+lab=multi"])):
        hydras.clear()
        code, _, err = run_cli("run", *words, "nms.beta=0.6,0.8", f"input={tiny_mrcs[0]}", f"output={tmp_path / sweep}",
                               *TINY_RUN_ARGS)
        assert code == 0, err
        assert all((tmp_path / sweep / job / "picks.csv").is_file() for job in ("0", "1")), sweep
        assert hydras.count(RunMode.MULTIRUN) == 1 and len(hydras) == 1 + 2 * 2, (sweep, hydras)
        assert Hydra.get_mode is get_mode
    # a config error is still told in one line, by the same check
    ours.clear()
    code, _, err = run_cli("run", f"input={tiny_mrcs[0]}", f"output={tmp_path / 'bad'}", *TINY_RUN_ARGS, "nms.bta=1")
    assert code == 2 and err.count("\n") == 1 and "nms.bta" in err, err


def test_hydra_mode_multirun_is_a_sweep_as_with_dash_m(tiny_mrcs, tmp_path, run_cli):
    # hydra.mode=MULTIRUN without -m: Hydra swept, but lipoframe checked the words as one run's
    # ('Ambiguous value for argument detector.threshold=3,4', exit code 2) and did not put the sweep in output=
    # (one micrograph per job: the sweep, not the picking, is checked)
    out_dir = tmp_path / "sweep"
    code, _, err = run_cli("run", "detector=log", "detector.threshold=3,4", "hydra.mode=MULTIRUN",
                           f"input={tiny_mrcs[0]}", f"output={out_dir}", *TINY_RUN_ARGS)
    assert code == 0, err
    assert (out_dir / "multirun.yaml").is_file() and all((out_dir / j / "picks.csv").is_file() for j in ("0", "1"))
    # every job is checked before the first starts, as with -m
    code, _, err = run_cli("run", "detector=log", "detector.threshold=3,nope", "hydra.mode=MULTIRUN",
                           f"input={tiny_mrcs[0]}", f"output={tmp_path / 'bad'}", *TINY_RUN_ARGS)
    assert code == 2 and err.count("\n") == 1 and "(job " in err and "detector.threshold=nope" in err, err
    assert not (tmp_path / "bad").exists() or not any((tmp_path / "bad").rglob("picks.csv"))
    # a preset that sets it
    presets = tmp_path / "presets" / "lab"
    presets.mkdir(parents=True)
    (presets / "multi.yaml").write_text("# @package _global_\nhydra:\n  mode: MULTIRUN\n  sweeper:\n    params:\n      dmin: 30,31\n")
    code, _, err = run_cli("run", "-cd", tmp_path / "presets", "+lab=multi", f"input={tiny_mrcs[0]}",
                           f"output={tmp_path / 'preset'}", *TINY_RUN_ARGS[1:])
    assert code == 0, err
    assert (tmp_path / "preset" / "multirun.yaml").is_file() and (tmp_path / "preset" / "1" / "picks.csv").is_file()
