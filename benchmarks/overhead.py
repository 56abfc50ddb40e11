"""Fixed cost of a command: what a tiny run pays whatever its micrographs.

Times, on two 512x512 synthetic micrographs (the test suite's tiny ones, in
pixels, one worker, no progress bar):

* ``run``: ``lipoframe run`` in this process (``lipoframe.cli.main``), as the
  tests' ``run_cli`` fixture calls it, after a first run has imported
  everything; the plugin cache is emptied before each, as between two tests;
* ``run+report``: the same with ``runner.report=true``;
* ``plan`` and ``report``: ``lipoframe plan RUN`` and ``lipoframe report RUN``
  of a finished run (a fresh copy of it each time), in this process;
* ``subprocess``: ``python -m lipoframe run ...`` in a new process
  (its CPU seconds are the child's).

Each is repeated ``--repeat`` times; the least wall and CPU seconds are
printed (the machine may be shared: the least is the least disturbed).
The plots a process has drawn are kept (:func:`lipoframe.plots.memo_png`),
as in the test suite: the repeats of ``report`` and ``plan`` draw none again,
those of ``run+report`` only the overlays. ``--cold`` forgets them before each.

    python benchmarks/overhead.py --repeat 5
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

#: The tests' tiny micrographs (tests/conftest.py): size, particles, range and pixel size.
SHAPE = (512, 512)
DIAMETERS = (40.0, 60.0, 90.0, 130.0)
ARGS = ["dmin=30", "dmax=160", "units=px", "runner.workers=1", "runner.progress=false"]
#: --cold: the plots drawn by earlier commands are forgotten before each.
COLD = False


def write_micrographs(folder: Path, n: int = 2) -> Path:
    """``n`` tiny MRC micrographs (1.5 Å/px) in ``folder``."""
    import mrcfile

    from lipoframe.synthetic import random_particles, render

    folder.mkdir(parents=True, exist_ok=True)
    for seed in range(n):
        truth = random_particles(SHAPE, np.array(DIAMETERS), seed=seed, margin=4, gap=12)
        with mrcfile.new(str(folder / f"mic_{seed}.mrc"), overwrite=True) as mrc:
            mrc.set_data(render(SHAPE, truth, contrast=1.0, noise=0.2, seed=seed).astype(np.float32))
            mrc.voxel_size = 1.5
    return folder


def in_process(argv: list[str]) -> tuple[float, float]:
    """(wall, CPU) seconds of ``lipoframe ARGV`` in this process, with an empty plugin cache."""
    from hydra.core.global_hydra import GlobalHydra

    from lipoframe import plugins
    from lipoframe.cli import main

    plugins._CACHE.clear()
    GlobalHydra.instance().clear()
    if COLD:
        from lipoframe import plots

        getattr(plots, "_PNG_MEMO", {}).clear()  # (the lipoframe of before the memo has none)
    wall, cpu = time.perf_counter(), time.process_time()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
        code = main(argv)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if code != 0:
        raise SystemExit(f"lipoframe {' '.join(argv)} failed ({code}): {err.getvalue()}")
    return wall, cpu


def child(argv: list[str]) -> tuple[float, float]:
    """(wall, CPU) seconds of ``python -m lipoframe ARGV`` in a new process."""
    before = os.times()
    wall = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "lipoframe", *argv], capture_output=True, text=True)
    wall = time.perf_counter() - wall
    after = os.times()
    if done.returncode != 0:
        raise SystemExit(f"lipoframe {' '.join(argv)} failed ({done.returncode}): {done.stderr}")
    return wall, (after.children_user - before.children_user) + (after.children_system - before.children_system)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3, help="times each is run; the least is printed")
    ap.add_argument("--cold", action="store_true", help="forget the plots drawn before each command")
    ap.add_argument("--only", nargs="+", choices=["run", "run+report", "plan", "report", "subprocess"], help="time only these")
    args = ap.parse_args(argv)
    global COLD
    COLD = args.cold
    os.environ.setdefault("LIPOFRAME_LOAD_PLUGINS", "")  # as the tests: installed plugins change nothing
    with tempfile.TemporaryDirectory(prefix="lipoframe-overhead-") as tmp:
        root = Path(tmp)
        mics = write_micrographs(root / "mics")
        n = [0]

        def fresh(name: str) -> Path:
            n[0] += 1
            return root / f"{name}_{n[0]}"

        finished = root / "finished"
        in_process(["run", f"input={mics}", f"output={finished}", *ARGS, "runner.report=false"])  # imports everything

        def copy() -> Path:
            out = fresh("copy")
            shutil.copytree(finished, out)
            return out

        cases = {
            "run": lambda: in_process(["run", f"input={mics}", f"output={fresh('run')}", *ARGS, "runner.report=false"]),
            "run+report": lambda: in_process(["run", f"input={mics}", f"output={fresh('rep')}", *ARGS, "runner.report=true"]),
            "plan": lambda: in_process(["plan", str(copy()), "binning=kmeans"]),
            "report": lambda: in_process(["report", str(copy())]),
            "subprocess": lambda: child(["run", f"input={mics}", f"output={fresh('sub')}", *ARGS, "runner.report=false"]),
        }
        print(f"{'':12s} {'wall s':>7s} {'CPU s':>7s}   (least of {args.repeat})")
        for name, case in cases.items():
            if args.only and name not in args.only:
                continue
            times = [case() for _ in range(args.repeat)]
            print(f"{name:12s} {min(t[0] for t in times):7.2f} {min(t[1] for t in times):7.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
