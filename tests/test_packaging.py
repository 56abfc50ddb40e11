"""Packaging: the wheel carries the Hydra config tree, and an installed lipoframe runs from any folder."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import REPO, TINY_ARGS


def _build_wheel(dest: Path) -> Path:
    pytest.importorskip("hatchling", reason="building the wheel needs hatchling (pip install '.[test]')")
    cmd = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(dest), str(REPO)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    (wheel,) = dest.glob("lipoframe-*.whl")
    return wheel


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    return _build_wheel(tmp_path_factory.mktemp("wheel"))


def test_wheel_contains_the_config_tree(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        for rel in Path(REPO, "conf").rglob("*.yaml"):
            assert "lipoframe/conf/" + rel.relative_to(REPO / "conf").as_posix() in names
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        assert "lipoframe = lipoframe.cli:main" in zf.read(entry_points).decode()


@pytest.mark.slow
def test_installed_wheel_runs_from_another_folder(wheel, tmp_path):
    """`pip install .` then `lipoframe run` from an unrelated folder finds the packaged config tree.

    The wheel is installed with pip into its own folder, put first on
    PYTHONPATH; the dependencies come from the running environment.
    """
    site = tmp_path / "site"
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--target", str(site), str(wheel)]
    subprocess.run(cmd, check=True, timeout=300, capture_output=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "LIPOFRAME_CONFIG_DIR"}
    env["PYTHONPATH"] = str(site)
    where = subprocess.run(
        [sys.executable, "-c", "import lipoframe, lipoframe.config as c; print(lipoframe.__file__); print(c.config_dir())"],
        capture_output=True, text=True, cwd=elsewhere, env=env, timeout=120, check=True,
    ).stdout.splitlines()
    assert where[0] == str(site / "lipoframe" / "__init__.py")  # the installed copy, not the checkout
    assert where[1] == str(site / "lipoframe" / "conf")
    from conftest import tiny_image, write_mrc

    write_mrc(elsewhere / "mics" / "a.mrc", tiny_image(seed=1)[0])
    res = subprocess.run(
        [sys.executable, "-m", "lipoframe", "run", "input=mics", "output=out", "nms=size_aware", "nms.beta=0.7", *TINY_ARGS],
        capture_output=True, text=True, cwd=elsewhere, env=env, timeout=300,
    )
    assert res.returncode == 0, res.stderr
    assert (elsewhere / "out" / "picks.csv").is_file()
    assert "beta: 0.7" in (elsewhere / "out" / ".hydra" / "config.yaml").read_text()
