"""Shared fixtures of lipoframe's test suite.

* Plugin loading is isolated: ``LIPOFRAME_LOAD_PLUGINS`` is set to the empty
  string for the whole session (and so for subprocesses), so a plugin that
  happens to be installed on the machine never changes a test. Tests that want
  a plugin use ``fake_plugin`` (the committed ``tests/fake_site``) or
  ``make_plugin`` (a throw-away distribution written to ``tmp_path``).
* Hydra's global ConfigStore is snapshotted before and restored after every
  test, so stages stored by one test never leak into another.
* Tiny synthetic micrographs (``lipoframe.synthetic``), small enough that a
  full ``lipoframe run`` takes well under a second.
"""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

# Before anything imports lipoframe.plugins: no third-party plugins unless a test asks.
os.environ["LIPOFRAME_LOAD_PLUGINS"] = ""
os.environ.pop("LIPOFRAME_BLOCK_PLUGINS", None)
os.environ.pop("LIPOFRAME_CONFIG_DIR", None)

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
FAKE_SITE = TESTS / "fake_site"
FAKE_DIST = "lipoframe-fake"
EXAMPLE_PLUGIN = REPO / "plugins" / "lipoframe-example"

#: Geometry of the tiny test micrographs (pixels).
TINY_SHAPE = (512, 512)
TINY_DIAMETERS = (40.0, 60.0, 90.0, 130.0)
TINY_DMIN, TINY_DMAX = 30.0, 160.0
TINY_PIXEL_SIZE = 1.5


# ---------------------------------------------------------------------------
# Isolation
# ---------------------------------------------------------------------------
def _copy_tree(tree: dict) -> dict:
    """Copy ConfigStore's nested dicts; the stored nodes themselves are never changed in place."""
    return {k: _copy_tree(v) if isinstance(v, dict) else v for k, v in tree.items()}


@pytest.fixture(scope="session", autouse=True)
def _hydra_plugins_loaded():
    """Import Hydra's own plugins once, so their ConfigStore entries are in every snapshot."""
    from hydra.core.plugins import Plugins

    Plugins.instance()


@pytest.fixture(autouse=True)
def _isolate_config_store(_hydra_plugins_loaded):
    """Snapshot Hydra's ConfigStore and GlobalHydra; restore both after the test."""
    from hydra.core.config_store import ConfigStore
    from hydra.core.global_hydra import GlobalHydra

    cs = ConfigStore.instance()
    saved = _copy_tree(cs.repo)
    try:
        yield
    finally:
        cs.repo = saved
        GlobalHydra.instance().clear()


@pytest.fixture(autouse=True)
def _plugin_env(monkeypatch):
    """Every test starts with third-party plugins off and an empty plugin cache."""
    from lipoframe import plugins

    monkeypatch.setenv("LIPOFRAME_LOAD_PLUGINS", "")
    monkeypatch.delenv("LIPOFRAME_BLOCK_PLUGINS", raising=False)
    plugins._CACHE.clear()
    yield
    plugins._CACHE.clear()


def _prepend_path(monkeypatch, folder: Path) -> None:
    """Put ``folder`` first on sys.path, here and for subprocesses."""
    monkeypatch.syspath_prepend(str(folder))
    old = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", str(folder) + (os.pathsep + old if old else ""))


@pytest.fixture
def fake_plugin(monkeypatch) -> str:
    """The committed fake installed plugin (``tests/fake_site``), enabled; returns its detector name."""
    _prepend_path(monkeypatch, FAKE_SITE)
    monkeypatch.setenv("LIPOFRAME_LOAD_PLUGINS", FAKE_DIST)
    yield "fake_centre"
    sys.modules.pop("lipoframe_fake", None)


@pytest.fixture
def make_plugin(tmp_path, monkeypatch):
    """Factory: write an installed distribution (dist-info + module) and enable it.

    ``make_plugin("lipoframe-foo", source, version="1.2")`` writes module
    ``lipoframe_foo`` with ``source`` and an entry point ``foo`` in the group
    ``lipoframe``; returns the module name.
    """
    site = tmp_path / "site"
    site.mkdir()
    _prepend_path(monkeypatch, site)
    enabled: list[str] = []
    modules: list[str] = []

    def make(dist: str, source: str, *, version: str = "1.0", entry_point: str | None = None) -> str:
        module = dist.replace("-", "_")
        ep = entry_point or dist.split("-", 1)[-1]
        info = site / f"{module}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        (info / "entry_points.txt").write_text(f"[lipoframe]\n{ep} = {module}\n")
        (site / f"{module}.py").write_text(textwrap.dedent(source))
        enabled.append(dist)
        modules.append(module)
        monkeypatch.setenv("LIPOFRAME_LOAD_PLUGINS", ",".join(enabled))
        import importlib

        importlib.invalidate_caches()
        return module

    yield make
    for m in modules:
        sys.modules.pop(m, None)


# ---------------------------------------------------------------------------
# Synthetic data
# ---------------------------------------------------------------------------
def tiny_truth(seed: int = 0) -> pd.DataFrame:
    """Ground truth of a tiny micrograph: one particle of each TINY_DIAMETERS size."""
    from lipoframe.synthetic import random_particles

    truth = random_particles(TINY_SHAPE, np.array(TINY_DIAMETERS), seed=seed, margin=4, gap=12)
    assert len(truth) == len(TINY_DIAMETERS), "the tiny micrograph must hold every particle"
    return truth


def tiny_image(seed: int = 0) -> tuple[np.ndarray, pd.DataFrame]:
    """A (512, 512) float32 micrograph of dark particles and its truth table."""
    from lipoframe.synthetic import render

    truth = tiny_truth(seed)
    return render(TINY_SHAPE, truth, contrast=1.0, noise=0.2, seed=seed), truth


def write_mrc(path: Path, image: np.ndarray, *, pixel_size: float | tuple[float, float, float] | None = TINY_PIXEL_SIZE) -> Path:
    """``image`` as a float32 MRC file; ``pixel_size`` (x, y, z) in Å for a header whose axes differ."""
    import mrcfile

    path.parent.mkdir(parents=True, exist_ok=True)
    with mrcfile.new(str(path), overwrite=True) as mrc:
        mrc.set_data(np.asarray(image, dtype=np.float32))
        if pixel_size is not None:
            mrc.voxel_size = pixel_size
    return path


@pytest.fixture
def tiny_mrcs(tmp_path) -> list[Path]:
    """Two tiny MRC micrographs in ``tmp_path/mics`` (1.5 Å/px in the header)."""
    return [write_mrc(tmp_path / "mics" / f"mic_{i}.mrc", tiny_image(seed=i)[0]) for i in range(2)]


#: Overrides that make ``lipoframe run`` fit the tiny micrographs and stay fast.
TINY_ARGS = [f"dmin={TINY_DMIN:g}", f"dmax={TINY_DMAX:g}", "units=px", "runner.workers=1", "runner.progress=false", "runner.report=false"]
#: TINY_ARGS without the polarity check, which picks the first micrograph again twice after picking (most of a
#: tiny run's picking), for the runs of tests that do not read its verdict (tests/test_polaritycheck.py does).
TINY_RUN_ARGS = [*TINY_ARGS, "runner.polarity_check=false"]


@pytest.fixture
def away_from_home(tmp_path, monkeypatch) -> tuple[Path, Path]:
    """``(cwd, home)``: the test runs in an empty folder ``cwd`` with ``HOME`` set to another, ``home``.

    For ``output=~/...`` as sh or a quoted word passes it: a literal ``~``
    would make a folder ``cwd/~``.
    """
    cwd, home = tmp_path / "cwd", tmp_path / "home"
    cwd.mkdir()
    home.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("HOME", str(home))
    return cwd, home


def as_watch_update_with_mic_1_not_finished(folder: Path, mics: Path, *, ok: int) -> tuple[str, str]:
    """Make ``folder`` (a copy of a tiny run or shard) the last update of a ``watch=true`` session killed since.

    ``mic_1``'s saved result is removed and the summary lists it under ``not_finished`` (a file that failed
    but may be a copy still being written), with an error of its own; ``ok`` micrographs are counted done.
    Returns ``mic_1``'s path as the summary names it, and that error.
    """
    import json

    for suffix in (".json", ".csv"):
        (folder / "micrographs" / f"mic_1{suffix}").unlink()
    summary = json.loads((folder / "run_summary.json").read_text())
    mic_1 = str(mics / "mic_1.mrc")
    error = f"{mic_1}: not a readable MRC file (the session's own words)"
    summary.update(failures=[], not_finished=[{"micrograph": mic_1, "error": error}], watch=True)
    summary["micrographs"].update(ok=ok, failed=0, not_finished=1)
    (folder / "run_summary.json").write_text(json.dumps(summary))
    return mic_1, error


@pytest.fixture
def run_cli(capsys):
    """Run ``lipoframe ARGS`` in this process; returns (exit code, stdout, stderr)."""
    from lipoframe.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture(scope="session")
def tiny_run_folder(tmp_path_factory) -> Path:
    """A finished ``lipoframe run`` of two tiny micrographs (``mic_0``, ``mic_1`` of :func:`tiny_image`) with TINY_ARGS.

    Made once per test process, for tests that need any plain run: read it where it is, or copy it
    (``shutil.copytree``) before changing it. Its micrographs are in ``<folder>.parent / "mics"``.
    """
    from lipoframe.cli import main

    root = tmp_path_factory.mktemp("tiny_run_folder")
    for i in range(2):
        write_mrc(root / "mics" / f"mic_{i}.mrc", tiny_image(seed=i)[0])
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LIPOFRAME_LOAD_PLUGINS", "")
        assert main(["run", f"input={root / 'mics'}", f"output={root / 'run'}", *TINY_ARGS]) == 0
    return root / "run"


@pytest.fixture(scope="session")
def tiny_shard_sweep(tmp_path_factory) -> Path:
    """``lipoframe run -m shard.count=2 shard.index=0,1`` of the two tiny micrographs with TINY_ARGS.

    Made once per test process, for the tests of what evaluate and merge make of the shards of one
    run; they only read it (merge and evaluate write elsewhere). Its folder's name has a space in it
    (``my shards``); the micrographs (``mic_0``, ``mic_1`` of :func:`tiny_image`) are in
    ``<folder>.parent / "mics"``.
    """
    from lipoframe.cli import main

    root = tmp_path_factory.mktemp("tiny_shard_sweep")
    for i in range(2):
        write_mrc(root / "mics" / f"mic_{i}.mrc", tiny_image(seed=i)[0])
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LIPOFRAME_LOAD_PLUGINS", "")
        assert main(["run", "-m", f"input={root / 'mics'}", f"output={root / 'my shards'}", "shard.count=2",
                     "shard.index=0,1", *TINY_ARGS]) == 0
    sweep = root / "my shards"
    made = {p: p.stat().st_mtime_ns for p in sweep.rglob("*")}
    yield sweep
    assert {p: p.stat().st_mtime_ns for p in sweep.rglob("*")} == made, "a test changed tiny_shard_sweep: copy it first"
