"""What a resumed run pays to sort out results picked before at another pixel size.

A run resumed at another pixel size (``pixel_size=`` given, changed or
dropped) looks at each saved result made with the same settings but another
pixel size: re-used where the picks cannot depend on it, else picked again
(:func:`lipoframe.runner.reused_at_pixel_size`). Times, on ``--n`` small
MRC micrographs (128 x 128, 1.5 Å/px in the header) picked once, then
resumed from a fresh copy of that folder each time:

* ``to-header``: picked with ``units=px pixel_size=2``, resumed without
  ``pixel_size=``: every micrograph's header gives its pixel size (1.5),
  and every result is re-used at it (``diameter_A`` rewritten);
* ``given``: picked with ``units=px pixel_size=2``, resumed with
  ``pixel_size=3``: no header is needed; every result re-used;
* ``same-in-A``: picked with ``units=A pixel_size=1.5``, resumed without it:
  the headers give the same pixel size, so every result is re-used as it is.

For each, the wall and CPU seconds of the resume step
(``lipoframe.runner.run_jobs``: nothing is picked; CPU of this process, so
not the workers' with ``--workers`` over 1) and the wall seconds of the
whole ``run`` (exports and plan too, report off), the least of
``--repeat`` repeats (the machine may be shared).

    python benchmarks/resume_pixel_size.py --n 200 --repeat 3 [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import compose_config  # noqa: E402

SHAPE = (128, 128)
ARGS = ["dmin=12", "dmax=40", "runner.progress=false", "runner.report=false",
        "runner.polarity_check=false"]
CASES = {
    "to-header": (["units=px", "pixel_size=2"], ["units=px"]),
    "given": (["units=px", "pixel_size=2"], ["units=px", "pixel_size=3"]),
    "same-in-A": (["units=A", "pixel_size=1.5"], ["units=A"]),
}
#: --workers: runner.workers of every run.
WORKERS = 1


def write_micrographs(folder: Path, n: int) -> Path:
    """``n`` small MRC micrographs (1.5 Å/px in the header) in ``folder``."""
    import mrcfile

    from lipoframe.synthetic import random_particles, render

    folder.mkdir(parents=True, exist_ok=True)
    for seed in range(n):
        truth = random_particles(SHAPE, np.array([16.0, 24.0]), seed=seed, margin=4, gap=6)
        with mrcfile.new(str(folder / f"mic_{seed:04d}.mrc"), overwrite=True) as mrc:
            mrc.set_data(render(SHAPE, truth, contrast=1.0, noise=0.2, seed=seed).astype(np.float32))
            mrc.voxel_size = 1.5
    return folder


def timed_run(mics: Path, out: Path, overrides: list[str]) -> tuple[float, float, float, dict[str, int]]:
    """Wall and CPU seconds (this process's) of the resume step of ``lipoframe run`` into ``out``, wall seconds of
    the whole run, and its micrographs by status."""
    import lipoframe.runner as runner

    real = runner.run_jobs
    spent = [0.0, 0.0]

    def run_jobs(*args, **kwargs):
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            return real(*args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - t0
            spent[1] += time.process_time() - c0

    cfg = compose_config([f"input={mics}", *ARGS, f"runner.workers={WORKERS}", *overrides])
    runner.run_jobs = run_jobs
    try:
        t0 = time.perf_counter()
        result = runner.run_pipeline(cfg, out)
        whole = time.perf_counter() - t0
    finally:
        runner.run_jobs = real
    counts: dict[str, int] = {}
    for r in result.results:
        counts[r.status] = counts.get(r.status, 0) + 1
    return spent[0], spent[1], whole, counts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200, help="micrographs")
    ap.add_argument("--repeat", type=int, default=3, help="times each case is resumed; the least is printed")
    ap.add_argument("--only", nargs="+", choices=list(CASES), help="time only these")
    ap.add_argument("--workers", type=int, default=1, help="runner.workers")
    args = ap.parse_args(argv)
    global WORKERS
    WORKERS = args.workers
    os.environ.setdefault("LIPOFRAME_LOAD_PLUGINS", "")
    import logging

    logging.getLogger("lipoframe").setLevel(logging.ERROR)  # the notes on the pixel size, once per resume
    with tempfile.TemporaryDirectory(prefix="lipoframe-resume-px-") as tmp:
        root = Path(tmp)
        mics = write_micrographs(root / "mics", args.n)
        print(f"{args.n} micrographs {SHAPE[0]}x{SHAPE[1]}, runner.workers={WORKERS}; least of {args.repeat}")
        print(f"{'case':10s} {'resume s':>9s} {'CPU s':>7s} {'run s':>7s}  statuses")
        for name, (first, then) in CASES.items():
            if args.only and name not in args.only:
                continue
            picked = root / f"{name}_picked"
            timed_run(mics, picked, first)
            times = []
            for i in range(args.repeat):
                out = root / f"{name}_{i}"
                shutil.copytree(picked, out)
                times.append(timed_run(mics, out, then))
                shutil.rmtree(out)
            print(f"{name:10s} {min(t[0] for t in times):9.3f} {min(t[1] for t in times):7.3f} {min(t[2] for t in times):7.3f}  "
                  f"{times[-1][3]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
