"""Plugin system: built-ins and third-party plugins share one hook; errors are loud and named."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import EXAMPLE_PLUGIN, FAKE_DIST, TINY_ARGS, TINY_DMAX, TINY_DMIN, tiny_image, write_mrc
import lipoframe
from lipoframe import plugins
from lipoframe.plugins import DEFAULT_PLUGINS, PluginError

DUPLICATE_DOG = """
    from dataclasses import dataclass
    from lipoframe import hookimpl
    from lipoframe.stages import Detector

    @dataclass
    class DogAgainParams:
        pass

    class DogAgain(Detector):
        name = "dog"
        Params = DogAgainParams

    @hookimpl
    def lipoframe_register_stages(registry):
        registry.add(DogAgain)
"""


def twin_detector(cls_name: str) -> str:
    return f"""
    from dataclasses import dataclass
    from lipoframe import hookimpl
    from lipoframe.stages import Detector

    @dataclass
    class {cls_name}Params:
        pass

    class {cls_name}(Detector):
        name = "twin"
        Params = {cls_name}Params

    @hookimpl
    def lipoframe_register_stages(registry):
        registry.add({cls_name})
    """


# ---------------------------------------------------------------------------
# Built-ins use the same hook as third-party plugins
# ---------------------------------------------------------------------------
def test_builtins_register_through_the_public_hook():
    pm, infos = plugins.make_plugin_manager(load_entrypoints=False)
    impls = pm.hook.lipoframe_register_stages.get_hookimpls()
    assert sorted(i.plugin_name for i in impls) == sorted(DEFAULT_PLUGINS)
    registry = plugins.build_registry(pm, infos)
    # Every built-in stage was added by one of those hook calls, which recorded its provider.
    for info in registry.stages():
        module = info.provider.split("(")[-1].rstrip(")")
        assert module in DEFAULT_PLUGINS, info
        assert info.cls.__module__ == module
    by_module = {i.module: set(i.stages) for i in infos}
    for kind, name in [("reader", "mrc"), ("detector", "dog"), ("detector", "log"), ("nms", "size_aware"), ("writer", "csv")]:
        assert (kind, name) in registry
        assert f"{kind}/{name}" in set().union(*by_module.values())


def test_third_party_stage_is_called_through_the_same_hook(fake_plugin):
    pm, registry, infos = plugins.load(refresh=True)
    names = [i.plugin_name for i in pm.hook.lipoframe_register_stages.get_hookimpls()]
    assert "fake" in names and set(DEFAULT_PLUGINS) <= set(names)
    info = registry.get("detector", fake_plugin)
    assert info.provider.startswith(f"{FAKE_DIST} 0.3.0")
    assert ("detector", "dog") in registry  # built-ins are still there


def test_registry_refuses_non_stages_and_bad_names():
    from dataclasses import dataclass

    from lipoframe.registry import RegistryError, StageRegistry
    from lipoframe.stages import Detector

    @dataclass
    class P:
        pass

    class BadName(Detector):
        name = "Bad Name"
        Params = P

    class Upper(Detector):
        name = "Dog"
        Params = P

    class NoParams(Detector):
        name = "no_params"

    reg = StageRegistry()
    with pytest.raises(RegistryError, match="not a lipoframe Stage"):
        reg.add(object)
    for bad in (BadName, Upper):
        with pytest.raises(RegistryError, match="snake_case"):
            reg.add(bad)
    with pytest.raises(RegistryError, match="own Params"):
        reg.add(NoParams)
    assert len(reg) == 0


# ---------------------------------------------------------------------------
# Conflicts and misspellings fail loudly
# ---------------------------------------------------------------------------
def test_duplicate_of_a_builtin_names_both_providers(make_plugin, run_cli):
    make_plugin("lipoframe-dupe", DUPLICATE_DOG, version="2.0")
    with pytest.raises(PluginError) as err:
        plugins.load(refresh=True)
    msg = str(err.value)
    assert "two detector stages are named 'dog'" in msg
    assert f"lipoframe {lipoframe.__version__}" in msg and "lipoframe.builtin.detectors" in msg
    assert "lipoframe-dupe 2.0" in msg and "DogAgain" in msg
    code, out, stderr = run_cli("stages")
    assert code == 2
    assert stderr.strip().count("\n") == 0 and "lipoframe-dupe 2.0" in stderr


def test_duplicate_between_two_plugins_names_both(make_plugin):
    make_plugin("lipoframe-one", twin_detector("TwinOne"), version="1.1")
    make_plugin("lipoframe-two", twin_detector("TwinTwo"), version="2.2")
    with pytest.raises(PluginError) as err:
        plugins.load(refresh=True)
    msg = str(err.value)
    assert "two detector stages are named 'twin'" in msg
    assert "lipoframe-one 1.1" in msg and "lipoframe-two 2.2" in msg


def test_two_distributions_with_the_same_entry_point_name_both_load(make_plugin):
    one = twin_detector("SameOne").replace('name = "twin"', 'name = "same_one"')
    two = twin_detector("SameTwo").replace('name = "twin"', 'name = "same_two"')
    make_plugin("lipoframe-same-one", one, entry_point="same")
    make_plugin("lipoframe-same-two", two, entry_point="same")
    _, registry, infos = plugins.load(refresh=True)
    assert ("detector", "same_one") in registry and ("detector", "same_two") in registry
    assert {i.distribution for i in infos if i.stages and i.distribution != "lipoframe"} == {"lipoframe-same-one", "lipoframe-same-two"}


@pytest.mark.parametrize(
    "source",
    [
        # marked, misspelled
        """
        from lipoframe import hookimpl

        @hookimpl
        def lipoframe_register_stage(registry):
            pass
        """,
        # unmarked, misspelled: still recognised by its lipoframe_ prefix
        """
        def lipoframe_regsiter_stages(registry):
            pass
        """,
    ],
    ids=["marked", "unmarked"],
)
def test_misspelled_hook_implementation_fails_loudly(make_plugin, run_cli, source):
    make_plugin("lipoframe-typo", source, version="0.9")
    with pytest.raises(PluginError) as err:
        plugins.load(refresh=True)
    msg = str(err.value)
    assert "unknown hook 'lipoframe_reg" in msg
    assert "lipoframe-typo 0.9" in msg
    assert "lipoframe_register_stages" in msg  # the known hooks are listed
    assert msg.endswith("(to run without it: LIPOFRAME_BLOCK_PLUGINS=typo, or pip uninstall lipoframe-typo; see docs/plugins.md)")
    code, _, stderr = run_cli("plugins")
    assert code == 2 and "unknown hook" in stderr


def test_misspelled_hook_argument_fails_loudly(make_plugin):
    make_plugin(
        "lipoframe-argtypo",
        """
        from lipoframe import hookimpl

        @hookimpl
        def lipoframe_register_stages(regsitry):
            pass
        """,
    )
    with pytest.raises(PluginError, match=r"lipoframe-argtypo 1\.0 is invalid.*regsitry.*"
                                          r"\(to run without it: LIPOFRAME_BLOCK_PLUGINS=argtypo, or pip uninstall lipoframe-argtypo;"):
        plugins.load(refresh=True)


def test_plugin_that_cannot_be_imported_names_its_distribution(make_plugin, monkeypatch):
    make_plugin("lipoframe-broken", "import lipoframe_module_that_does_not_exist\n", version="3.1")
    with pytest.raises(PluginError, match=r"error importing plugin 'broken'.*lipoframe-broken 3\.1.*ModuleNotFoundError") as caught:
        plugins.load(refresh=True)
    # Every command stopped, with no word of how to go on without the plugin.
    assert str(caught.value).endswith("(to run without it: LIPOFRAME_BLOCK_PLUGINS=broken, or pip uninstall lipoframe-broken; "
                                      "see docs/plugins.md)")
    monkeypatch.setenv("LIPOFRAME_BLOCK_PLUGINS", "broken")
    _, registry, infos = plugins.load(refresh=True)
    assert ("detector", "dog") in registry and not any(i.distribution == "lipoframe-broken" for i in infos)


def test_plugin_whose_hook_raises_is_named(make_plugin):
    make_plugin(
        "lipoframe-raises",
        """
        from lipoframe import hookimpl

        @hookimpl
        def lipoframe_register_stages(registry):
            raise RuntimeError("boom")
        """,
    )
    with pytest.raises(PluginError, match=r"lipoframe-raises 1\.0.*RuntimeError: boom \(to run without it: LIPOFRAME_BLOCK_PLUGINS=raises,"):
        plugins.load(refresh=True)


PARAMS_READER = """
    from dataclasses import dataclass, field
    {imports}
    from lipoframe import hookimpl
    from lipoframe.stages import Reader

    @dataclass
    class OddParams:
        {field}

    class OddReader(Reader):
        name = "odd"
        Params = OddParams
        suffixes = (".odd",)

    @hookimpl
    def lipoframe_register_stages(registry):
        registry.add(OddReader)
"""


@pytest.mark.parametrize(
    "imports, field, problem",
    [
        ("", "scale: float", "reader.scale has no default"),
        ("import numpy as np", "scale: np.ndarray = field(default_factory=lambda: np.ones(2))", "reader.scale: Unexpected type annotation: ndarray"),
        ("from typing import Literal", 'mode: Literal["a", "b"] = "a"', "reader.mode: Unexpected type annotation"),
    ],
    ids=["no-default", "ndarray", "literal"],
)
def test_params_the_config_cannot_hold_are_refused_naming_the_option(make_plugin, run_cli, imports, field, problem):
    # Without the check every command failed with a traceback (Hydra stores
    # every stage's Params; a reader is built with Params() for its suffix),
    # even when the stage was not selected.
    make_plugin("lipoframe-odd", PARAMS_READER.format(imports=imports, field=field), version="0.4")
    with pytest.raises(PluginError) as err:
        plugins.load(refresh=True)
    msg = str(err.value)
    assert "lipoframe-odd 0.4" in msg and "reader/odd" in msg and problem in msg
    code, _, stderr = run_cli("run", "--help")
    assert code == 2 and stderr.count("\n") == 1 and problem in stderr


def test_params_with_lists_and_optionals_are_accepted(make_plugin):
    source = PARAMS_READER.format(imports="from typing import Optional", field="sizes: list = field(default_factory=lambda: [1, 2])")
    source = source.replace("        sizes:", "        limit: Optional[float] = None\n        label: str | None = None\n        sizes:")
    make_plugin("lipoframe-rich", source)
    _, registry, _ = plugins.load(refresh=True)
    assert ("reader", "odd") in registry


def test_hook_implementation_may_take_fewer_arguments(make_plugin):
    make_plugin(
        "lipoframe-noargs",
        """
        from lipoframe import hookimpl

        CALLED = []

        @hookimpl
        def lipoframe_register_stages():
            CALLED.append(True)
        """,
    )
    _, _, infos = plugins.load(refresh=True)
    assert sys.modules["lipoframe_noargs"].CALLED == [True]
    assert any(i.distribution == "lipoframe-noargs" for i in infos)


# ---------------------------------------------------------------------------
# The committed fake installed plugin (tests/fake_site)
# ---------------------------------------------------------------------------
def test_plugins_are_off_when_disabled_or_blocked(fake_plugin, monkeypatch):
    _, registry, infos = plugins.load(refresh=True)
    assert ("detector", fake_plugin) in registry
    monkeypatch.setenv("LIPOFRAME_BLOCK_PLUGINS", "fake")
    _, registry, infos = plugins.load()
    assert ("detector", fake_plugin) not in registry
    monkeypatch.delenv("LIPOFRAME_BLOCK_PLUGINS")
    monkeypatch.setenv("LIPOFRAME_LOAD_PLUGINS", "")
    _, registry, infos = plugins.load()
    assert ("detector", fake_plugin) not in registry
    assert all(i.distribution == "lipoframe" for i in infos)


def test_lipoframe_plugins_says_when_loading_is_off(run_cli):
    code, out, _ = run_cli("plugins")
    assert code == 0 and "no third-party plugins loaded (LIPOFRAME_LOAD_PLUGINS='')" in out


def test_lipoframe_plugins_does_not_call_a_blocked_plugin_not_installed(fake_plugin, run_cli, monkeypatch):
    # With the only plugin blocked, `lipoframe plugins` said "no third-party
    # plugins installed" although it is installed: the block hid it.
    code, out, _ = run_cli("plugins")
    assert code == 0 and "lipoframe-fake" in out
    monkeypatch.delenv("LIPOFRAME_LOAD_PLUGINS")
    # Blocked too: the plugins installed where the tests run (the example
    # plugin, as docs/plugins.md suggests installing), so that the fake one is the only plugin.
    from importlib.metadata import entry_points

    blocked = ",".join(["fake", *sorted({ep.name for ep in entry_points(group="lipoframe")} - {"fake"})])
    monkeypatch.setenv("LIPOFRAME_BLOCK_PLUGINS", blocked)
    code, out, _ = run_cli("plugins")
    assert code == 0 and "lipoframe-fake" not in out
    assert f"no third-party plugins loaded (LIPOFRAME_BLOCK_PLUGINS={blocked!r})" in out and "installed" not in out


def test_lipoframe_plugins_lists_distribution_version_and_stages(fake_plugin, run_cli):
    code, out, _ = run_cli("plugins")
    assert code == 0
    lines = out.splitlines()
    head = next(i for i, ln in enumerate(lines) if ln.startswith(f"{FAKE_DIST} 0.3.0"))
    assert "lipoframe_fake" in lines[head]
    assert lines[head + 1].strip() == f"detector/{fake_plugin}"
    assert not any(ln.startswith(f"lipoframe {lipoframe.__version__}") for ln in lines)  # built-ins only with --all
    code, out, _ = run_cli("plugins", "--json")
    listed = {p["distribution"]: p for p in json.loads(out)}
    assert listed[FAKE_DIST]["version"] == "0.3.0"
    assert listed[FAKE_DIST]["stages"] == [f"detector/{fake_plugin}"]
    code, out, _ = run_cli("plugins", "--all")
    assert f"lipoframe {lipoframe.__version__}" in out and "detector/dog" in out and f"detector/{fake_plugin}" in out


def test_lipoframe_stages_shows_the_plugin_stage(fake_plugin, run_cli):
    code, out, _ = run_cli("stages", "detector")
    assert code == 0
    assert f"  {fake_plugin}  - one pick at the image centre" in out
    assert f"provided by {FAKE_DIST} 0.3.0" in out
    assert "detector.score:" in out


def test_fake_plugin_detector_runs_end_to_end(fake_plugin, tiny_mrcs, tmp_path, run_cli):
    out_dir = tmp_path / "out"
    # Only the plugin's detector decides: no refiner, no filter that could move or reject its pick.
    stages = ["refiner=none", "nms=none", "filter=[diameter_range]"]
    code, stdout, stderr = run_cli("run", f"detector={fake_plugin}", "detector.score=2.5", *stages, f"input={tiny_mrcs[0].parent}", f"output={out_dir}", *TINY_ARGS)
    assert code == 0, stderr
    picks = pd.read_csv(out_dir / "picks.csv")
    assert sorted(picks["micrograph"]) == ["mic_0", "mic_1"]
    d = math.sqrt(TINY_DMIN * TINY_DMAX)
    for _, row in picks.iterrows():
        assert row["x_px"] == pytest.approx(255.5, abs=0.01) and row["y_px"] == pytest.approx(255.5, abs=0.01)
        assert row["diameter_px"] == pytest.approx(d, abs=0.01)
        assert row["score"] == pytest.approx(2.5)
    # The plugin's lipoframe_run_end hook ran too.
    assert json.loads((out_dir / "fake_plugin_run_end.json").read_text())["accepted"] == 2
    assert "2 accepted" in stdout


def test_fake_plugin_is_discovered_in_a_fresh_process(fake_plugin, tmp_path):
    env = dict(os.environ, LIPOFRAME_LOAD_PLUGINS=FAKE_DIST)
    res = subprocess.run([sys.executable, "-m", "lipoframe", "plugins"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert res.returncode == 0, res.stderr
    assert f"{FAKE_DIST} 0.3.0" in res.stdout and f"detector/{fake_plugin}" in res.stdout


# ---------------------------------------------------------------------------
# The real example distribution (plugins/lipoframe-example)
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def example_site(tmp_path_factory) -> Path:
    """plugins/lipoframe-example installed with pip into a fresh target folder."""
    pytest.importorskip("hatchling", reason="the example plugin is built with hatchling (pip install '.[test]')")
    work = tmp_path_factory.mktemp("example")
    src = work / "src"
    shutil.copytree(EXAMPLE_PLUGIN, src, ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info"))
    site = work / "site"
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index", "--target", str(site), str(src)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert (site / "lipoframe_example" / "__init__.py").is_file()
    return site


@pytest.mark.slow
def test_example_plugin_installs_lists_and_picks(example_site, tmp_path, monkeypatch, run_cli):
    # pip put the package and its dist-info (with the entry point) in example_site:
    # on sys.path that is an installed distribution like any other.
    monkeypatch.syspath_prepend(str(example_site))
    monkeypatch.setenv("LIPOFRAME_LOAD_PLUGINS", "lipoframe-example")
    image, truth = tiny_image(seed=3)
    write_mrc(tmp_path / "mics" / "one.mrc", image)
    code, out, err = run_cli("plugins")
    assert code == 0, err
    assert "lipoframe-example 0.1.0" in out and "detector/threshold" in out
    code, out, err = run_cli("stages", "detector")
    assert "detector.low_threshold:" in out and "provided by lipoframe-example 0.1.0" in out
    # refiner=none: the centres and diameters checked below are the plugin detector's own.
    code, out, err = run_cli("run", "detector=threshold", "refiner=none", f"input={tmp_path / 'mics'}", f"output={tmp_path / 'out'}", *TINY_ARGS)
    assert code == 0, err
    picks = pd.read_csv(tmp_path / "out" / "picks.csv")
    picks = picks[picks["accepted"]]
    assert "bin_factor" in picks.columns  # the stage's own column survives to the output
    assert len(picks) == len(truth)
    for _, t in truth.iterrows():
        dist = ((picks["x_px"] - t["x_px"]) ** 2 + (picks["y_px"] - t["y_px"]) ** 2) ** 0.5
        near = picks[dist < t["diameter_px"] / 4]
        assert len(near) == 1, t.to_dict()
        assert near["diameter_px"].iloc[0] == pytest.approx(t["diameter_px"], rel=0.10)
    sys.modules.pop("lipoframe_example", None)


def test_example_plugin_validates_its_parameters(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLE_PLUGIN / "src"))
    from lipoframe_example import ThresholdParams

    with pytest.raises(ValueError, match=r"^detector\.low_threshold must be in \[0, detector\.threshold=5\.0\]"):
        ThresholdParams(low_threshold=6)
    with pytest.raises(ValueError, match=r"^detector\.threshold must be > 0"):
        ThresholdParams(threshold=0)
    sys.modules.pop("lipoframe_example", None)


@pytest.mark.parametrize(
    ("column", "values", "problem"),
    [
        ("x_px", ["a", "b"], "values that are not numbers in column 'x_px'"),
        ("y_px", [1.0, float("nan")], "non-finite values in column 'y_px'"),
        ("diameter_px", [40.0, -3.0], "diameters <= 0 in column 'diameter_px'"),
        # NMS sorts and compares scores: strings failed later with a TypeError naming no stage.
        ("score", ["0.5", "10"], "values that are not numbers in column 'score'"),
        ("sigma_px", [None, None], "values that are not numbers in column 'sigma_px'"),
        ("pyramid_level", [True, False], "values that are not numbers in column 'pyramid_level'"),
        # A NaN score has no rank in NMS; it was exported as score 0 with a warning naming no stage.
        ("score", [1.0, float("nan")], "non-finite values in column 'score'"),
        ("sigma_px", [float("inf"), 1.0], "non-finite values in column 'sigma_px'"),
        # Levels index the pyramid's factors: 1.5 or -1 was accepted and exported.
        ("pyramid_level", [0.0, 1.5], r"pyramid levels that are not whole numbers >= 0 in column 'pyramid_level' \(e.g. 1.5\)"),
        ("pyramid_level", [-1, 0], r"pyramid levels that are not whole numbers >= 0 in column 'pyramid_level' \(e.g. -1\)"),
    ],
)
def test_a_detector_table_with_bad_values_names_the_stage(column, values, problem):
    import pandas as pd

    from lipoframe import schema

    table = pd.DataFrame({schema.X: [10.0, 20.0], schema.Y: [5.0, 6.0], schema.DIAMETER: [40.0, 50.0],
                          schema.SCORE: [1.0, 2.0], schema.LEVEL: [0, 0], schema.SIGMA: [1.0, 1.0]})
    table[column] = values
    with pytest.raises(ValueError, match=f"stage 'detector/mine' returned {problem}"):
        schema.validate_detections(table, stage="detector/mine")
    assert schema.validate_detections(table.iloc[:0], stage="detector/mine").empty


TAG_STAGES = """
    from dataclasses import dataclass

    from lipoframe import hookimpl, schema
    from lipoframe.builtin.writers import exported
    from lipoframe.io.atomic import safe_child, write_text
    from lipoframe.stages import Filter, Writer

    @dataclass
    class TagParams:
        pass

    class Tag(Filter):
        name = "tag"
        Params = TagParams

        def apply(self, picks, mic, ctx):
            return schema.with_acceptance(picks)

    @dataclass
    class CountParams:
        pass

    class Count(Writer):
        name = "count"
        Params = CountParams

        def write(self, picks, metas, plan, out_dir, ctx):
            return [write_text(safe_child(out_dir, "count.txt"), str(len(exported(picks, ctx))))]

    @hookimpl
    def lipoframe_register_stages(registry):
        registry.add(Tag)
        registry.add(Count)
"""


def _upgrade(site, dist: str, old: str, new: str) -> None:
    module = dist.replace("-", "_")
    info = site / f"{module}-{old}.dist-info"
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {new}\n")
    info.rename(site / f"{module}-{new}.dist-info")


def test_resume_picks_again_after_an_upgrade_of_a_plugin_whose_stage_picks(make_plugin, tiny_mrcs, tmp_path, run_cli):
    # only lipoframe's own version was checked: a run resumed after the
    # plugin providing its filter was upgraded kept every old result
    from lipoframe import plugins

    make_plugin("lipoframe-tag", TAG_STAGES, version="1.0")
    out = tmp_path / "out"
    args = ("run", f"input={tiny_mrcs[0].parent}", f"output={out}", *TINY_ARGS)

    def summary(*extra):
        plugins._CACHE.clear()
        code, _, err = run_cli(*args, *extra)
        assert code == 0, err
        return json.loads((out / "run_summary.json").read_text())["micrographs"]

    assert summary("filter=[diameter_range,tag]", "writer=[csv,count]")["ok"] == 2
    saved = json.loads((out / "micrographs" / "mic_0.json").read_text())
    assert saved["lipoframe"].endswith("; lipoframe-tag 1.0")
    assert summary("filter=[diameter_range,tag]", "writer=[csv,count]")["skipped"] == 2
    _upgrade(tmp_path / "site", "lipoframe-tag", "1.0", "1.1")
    assert summary("filter=[diameter_range,tag]", "writer=[csv,count]")["ok"] == 2
    # a writer does not pick: its upgrade only writes the exports again
    assert summary("writer=[csv,count]")["ok"] == 2  # another filter list: other settings
    _upgrade(tmp_path / "site", "lipoframe-tag", "1.1", "1.2")
    assert summary("writer=[csv,count]")["skipped"] == 2


def test_lipoframe_stages_shows_a_plugin_parameters_help_and_the_values_of_an_enum(make_plugin, run_cli):
    # Before, the metadata={"help": ...} that docs/plugins.md asks a plugin to
    # write was shown nowhere, and an Enum parameter was listed with the
    # default <Shape.round: 'round'>, which is not what is typed, and no word of its values.
    make_plugin(
        "lipoframe-helpful",
        """
        import enum
        from dataclasses import dataclass, field

        from lipoframe import hookimpl
        from lipoframe.stages import Detector

        class Shape(enum.Enum):
            round = "round"
            oval = "oval"

        @dataclass
        class HelpfulParams:
            level: float = field(default=2.0, metadata={"help": "robust sigmas above the median"})
            shape: Shape = field(default=Shape.round, metadata={"help": "what to look for"})
            plain: Shape = Shape.oval
            count: int = 3

        class Helpful(Detector):
            name = "helpful"
            Params = HelpfulParams

        @hookimpl
        def lipoframe_register_stages(registry):
            registry.add(Helpful)
        """,
    )
    code, out, _ = run_cli("stages", "detector")
    assert code == 0
    lines = [ln.split(None, 1) for ln in out.splitlines() if ln.strip().startswith("detector.")]
    shown = {key: rest.split() for key, rest in lines}
    assert " ".join(shown["detector.level:"]) == "float = 2.0 # robust sigmas above the median"
    assert " ".join(shown["detector.shape:"]) == "Shape = 'round' # one of round, oval; what to look for"
    assert " ".join(shown["detector.plain:"]) == "Shape = 'oval' # one of round, oval"
    assert " ".join(shown["detector.count:"]) == "int = 3"
    # What it shows is what the command line takes.
    from lipoframe.app import validate_overrides

    cfg = validate_overrides(["detector=helpful", "detector.shape=oval"])
    assert cfg.detector.shape.name == "oval"


def test_the_run_end_hook_of_the_plugin_docs_writes_atomically_and_is_not_tracked(make_plugin, tiny_mrcs, tmp_path,
                                                                                   run_cli, monkeypatch):
    # docs/plugins.md, "lipoframe_run_end": the example as written there. Before, it wrote done.txt with
    # Path.write_text (a reader could see half a file), and the docs did not say that lipoframe leaves it alone.
    import re

    docs = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"
    section = docs.read_text().split("### `lipoframe_run_end(out_dir, summary)`", 1)[1].split("\n### ", 1)[0]
    make_plugin("lipoframe-done", re.search(r"```python\n(.*?)```", section, re.S).group(1))
    out = tmp_path / "out"
    replaced = []
    real_replace = os.replace

    def spy(src, dst, *a, **k):
        replaced.append((Path(src).name, Path(dst).name))
        return real_replace(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", spy)
    code, _, err = run_cli("run", f"input={tiny_mrcs[0].parent}", f"output={out}", *TINY_ARGS, "writer=[csv]")
    assert code == 0, err
    accepted = json.loads((out / "run_summary.json").read_text())["picks"]["accepted"]
    assert accepted > 0 and (out / "done.txt").read_text() == f"{accepted} particles\n"
    # Written to a temporary file in the folder, then renamed over done.txt.
    assert any(dst == "done.txt" and src.startswith(".done.txt.") for src, dst in replaced), replaced
    assert not [p for p in out.iterdir() if p.name.startswith(".done.txt.")]
    # Not tracked: not in written_files.json, and kept by a run with other settings (which removes the listed exports).
    listed = json.loads((out / "written_files.json").read_text())["files"]
    assert "done.txt" not in listed and any(f.startswith("csv/") for f in listed) and (out / "csv").is_dir()
    (out / "done.txt").write_text("earlier\n")
    monkeypatch.setenv("LIPOFRAME_BLOCK_PLUGINS", "done")
    code, _, err = run_cli("run", f"input={tiny_mrcs[0].parent}", f"output={out}", *TINY_ARGS, "writer=[star]")
    assert code == 0, err
    assert not (out / "csv").exists() and (out / "done.txt").read_text() == "earlier\n"
