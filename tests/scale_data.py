"""Small synthetic inputs shared by the scale tests (runner, resume, merge, watch, bad input)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from lipoframe.synthetic import random_particles, render

SHAPE = (384, 384)
PIXEL_SIZE = 1.0
#: Options that fit the particles of :func:`write_set` (40-110 Å at 1 Å/px). No polarity check: it picks the
#: first micrograph again twice, a third or more of a small run's picking, and no test of these files reads its
#: verdict (tests/test_polaritycheck.py does, and test_resume.py's killed rerun, which runs with it).
RUN_ARGS = ["dmin=30", "dmax=140", "runner.progress=false", "runner.report=false", "runner.polarity_check=false"]


def image(seed: int, shape=SHAPE) -> np.ndarray:
    truth = random_particles(shape, [45, 70, 100], seed=seed, margin=4)
    return render(shape, truth, seed=seed)


def write_mrc(path: Path, data: np.ndarray, pixel_size: float | None = PIXEL_SIZE) -> Path:
    import mrcfile

    path.parent.mkdir(parents=True, exist_ok=True)
    with mrcfile.new(str(path), overwrite=True) as m:
        m.set_data(np.asarray(data))
        if pixel_size is not None:
            m.voxel_size = pixel_size
    return path


def write_tiff(path: Path, data: np.ndarray) -> Path:
    """A float32 TIFF micrograph at :data:`PIXEL_SIZE` Å/px (its resolution tags)."""
    import tifffile

    path.parent.mkdir(parents=True, exist_ok=True)
    per_cm = 1e8 / PIXEL_SIZE
    tifffile.imwrite(path, np.asarray(data, dtype=np.float32), resolution=(per_cm, per_cm), resolutionunit="CENTIMETER")
    return path


def write_set(folder: Path, n: int, *, seed: int = 0, prefix: str = "mic") -> list[Path]:
    """``n`` small MRC micrographs with three particle sizes each."""
    return [write_mrc(folder / f"{prefix}_{i:03d}.mrc", image(seed + i)) for i in range(n)]


def env() -> dict:
    """Environment for subprocess runs: no third-party plugins, this checkout first."""
    e = dict(os.environ)
    e["LIPOFRAME_LOAD_PLUGINS"] = ""
    root = str(Path(__file__).resolve().parent.parent)
    e["PYTHONPATH"] = root + os.pathsep + e.get("PYTHONPATH", "")
    return e


def cli(*args: str, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    """Run ``lipoframe ARGS`` in a subprocess (text output captured)."""
    return subprocess.run(
        [sys.executable, "-m", "lipoframe", *args], capture_output=True, text=True, env=env(), timeout=timeout, **kw
    )


#: A reader plugin giving the interrupt tests a micrograph that takes as long
#: as they like: a ``.gate`` file is an MRC file, read once ``<stem>.go``
#: exists beside it. (lipoframe refuses named pipes, which would block in
#: ``open``.) Install it with ``make_plugin("lipoframe-gate", GATE_READER)``
#: and run subprocesses with :func:`env_with_plugins`.
GATE_READER = '''
import time
from dataclasses import dataclass
from pathlib import Path

from lipoframe import hookimpl
from lipoframe.builtin.readers import MrcReader
from lipoframe.stages import Reader


@dataclass
class GateParams:
    pass


class GateReader(Reader):
    name = "gate"
    Params = GateParams
    suffixes = (".gate",)

    def read(self, path, *, pixel_size=None):
        while not Path(path).with_suffix(".go").exists():
            time.sleep(0.05)
        return MrcReader().read(path, pixel_size=pixel_size)


@hookimpl
def lipoframe_register_stages(registry):
    registry.add(GateReader)
'''


def env_with_plugins() -> dict:
    """:func:`env`, but with the plugins this test enabled (``make_plugin``) loaded."""
    e = env()
    e["LIPOFRAME_LOAD_PLUGINS"] = os.environ["LIPOFRAME_LOAD_PLUGINS"]
    return e
