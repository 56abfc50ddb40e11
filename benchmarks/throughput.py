"""Throughput and memory of ``lipoframe run`` on full-size micrographs.

Generates ``--n`` float32 MRC micrographs of ``--size``² pixels (1 Å/px,
particles of 15-50 nm) with :func:`lipoframe.synthetic.render`, then picks
them with 1, 2, ... worker processes and reports, for each worker count:

* micrographs per second, of the whole run and of the picking phase alone
  (the dataset-level stages take a fixed time; the report is switched off),
  and the seconds one micrograph takes in a worker,
* peak resident memory (RSS) of a worker process, from ``getrusage``, and
  the RSS of the parent when the workers were started (forked workers begin
  with the parent's pages, so the difference is what picking costs); each
  worker count runs in a fresh Python process,

and, in this process with :mod:`tracemalloc`, the peak memory allocated while
picking one micrograph, in copies of the micrograph (the target is "a few").

Usage::

    python benchmarks/throughput.py                   # 96 micrographs of 4096², workers 1 and 2 (~4 min the first time)
    python benchmarks/throughput.py --n 8             # quicker; a fixed ~0.5 s dataset stage weighs more
    python benchmarks/throughput.py --n 4 --workers 1 --repeat 1  # quickest
    python benchmarks/throughput.py --json results.json

Run it on a quiet machine: the numbers are wall-clock.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np


def make_inputs(folder: Path, n: int, size: int, seed: int = 0) -> list[Path]:
    """``n`` float32 MRC micrographs of ``size``² px at 1 Å/px (reused if already there)."""
    import mrcfile

    from lipoframe.synthetic import random_particles, render

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"bench_{size}_{i:03d}.mrc"
        if not path.exists():
            rng = np.random.default_rng(seed + i)
            diam = rng.uniform(150, 500, size=max(4, size * size // 400_000))
            truth = random_particles((size, size), diam, seed=seed + i, margin=4)
            img = render((size, size), truth, seed=seed + i)
            tmp = path.with_suffix(".tmp")
            with mrcfile.new(str(tmp), overwrite=True) as m:
                m.set_data(img.astype(np.float32))
                m.voxel_size = 1.0
            os.replace(tmp, path)
        paths.append(path)
    return paths


def config(folder: Path, workers: int):
    from lipoframe.merge import compose_config

    overrides = [
        f"input={folder}",
        "dmin=150",
        "dmax=500",
        f"runner.workers={workers}",
        "runner.resume=false",
        "runner.progress=false",
        "runner.report=false",
    ]
    return compose_config(overrides)[1]


def rss_mb() -> float:
    """Current RSS of this process in MiB (Linux), else NaN."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        return float("nan")


def time_run(folder: Path, out: Path, workers: int) -> dict:
    """One run, timed in two phases: picking (per micrograph, in the workers) and the dataset level."""
    from lipoframe import plugins
    from lipoframe.runner import MicJob, build_stages, find_inputs, finish_run, micrograph_names, run_jobs

    cfg = config(folder, workers)
    parent = rss_mb()
    t0 = time.perf_counter()
    stages = build_stages(cfg, plugins.load()[1])
    paths, _ = find_inputs([str(folder)], tuple(stages.readers_by_suffix))
    names = micrograph_names(paths)
    out.mkdir(parents=True, exist_ok=True)
    fp = cfg.per_micrograph_fingerprint()
    jobs = [MicJob(p, n, out, fp, False, False) for p, n in zip(paths, names)]
    t1 = time.perf_counter()
    results, _ = run_jobs(jobs, cfg, stages, progress=False)
    t2 = time.perf_counter()
    result = finish_run(out, names, results, stages, cfg, t0=t0, errors=[], notes=[], workers=workers)
    t3 = time.perf_counter()
    picked = [r for r in results if r.status == "ok"]
    if len(picked) != len(results):
        raise SystemExit(f"benchmark run failed: {result.summary()['failures']}")
    return {
        "workers": workers,
        "micrographs": len(picked),
        "seconds": round(t3 - t0, 2),
        "micrographs_per_s": round(len(picked) / (t3 - t0), 3),
        "picking_seconds": round(t2 - t1, 2),
        "picking_micrographs_per_s": round(len(picked) / (t2 - t1), 3),
        "dataset_level_seconds": round(t3 - t2, 2),
        "seconds_per_micrograph_in_worker": round(sum(r.seconds for r in picked) / len(picked), 3),
        "peak_rss_mb_per_worker": round(max(r.peak_rss_mb for r in picked), 1),
        "parent_rss_mb_at_start": round(parent, 1),
        "accepted_picks": int(result.picks["accepted"].sum()) if len(result.picks) else 0,
    }


def traced_peak(path: Path, out: Path) -> dict:
    """Peak bytes allocated (tracemalloc) while reading and picking one micrograph in this process."""
    from lipoframe import plugins
    from lipoframe.runner import MicJob, build_stages, run_job

    cfg = config(path.parent, 1)
    stages = build_stages(cfg, plugins.load()[1])
    job = MicJob(path, path.stem, out, cfg.per_micrograph_fingerprint(), False, True)
    run_job(job, cfg, stages)  # warm-up: imports and caches are not the micrograph's cost
    tracemalloc.start()
    res = run_job(job, cfg, stages)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    if res.status != "ok":
        raise SystemExit(res.error)
    image_bytes = path.stat().st_size - 1024
    return {"image_mb": round(image_bytes / 2**20, 1), "traced_peak_mb": round(peak / 2**20, 1), "copies": round(peak / image_bytes, 2)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=96, help="micrographs (default 96: a dataset, where the fixed dataset-level cost no longer dominates)")
    ap.add_argument("--size", type=int, default=4096, help="edge in pixels (default 4096)")
    ap.add_argument("--workers", default="1,2", help="comma-separated worker counts (default 1,2)")
    ap.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "lipoframe_bench", help="where inputs are generated (kept for reuse)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per worker count, interleaved; the median run is reported (default 3)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: one timed run in a fresh process
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    os.environ.setdefault("LIPOFRAME_LOAD_PLUGINS", "")
    folder = args.data / f"in_{args.size}_{args.n}"
    if args.one is not None:
        print(json.dumps(time_run(folder, args.out, args.one)))
        return 0

    t0 = time.perf_counter()
    make_inputs(folder, args.n, args.size)
    print(f"inputs: {args.n} x {args.size}² float32 MRC in {folder} ({time.perf_counter() - t0:.0f} s to generate)", file=sys.stderr)
    # Read every input once, so that no setting pays for the disk and all
    # read from the page cache (as the first worker count otherwise would).
    for path in sorted(folder.glob("*.mrc")):
        with open(path, "rb") as f:
            while f.read(16 * 2**20):
                pass
    counts = [int(x) for x in args.workers.split(",")]
    runs: dict[int, list[dict]] = {w: [] for w in counts}
    with tempfile.TemporaryDirectory() as tmp:
        # Interleaved repeats (1, 2, 1, 2, ...), the median run of each
        # setting reported: the machine's speed drifts over minutes.
        for rep in range(args.repeat):
            for w in counts:
                # a fresh process per run, so every run starts from the same memory and caches
                cmd = [sys.executable, __file__, "--n", str(args.n), "--size", str(args.size), "--data", str(args.data), "--one", str(w), "--out", str(Path(tmp) / f"w{w}_{rep}")]
                proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
                if proc.returncode:
                    raise SystemExit(proc.stderr)
                runs[w].append(json.loads(proc.stdout.strip().splitlines()[-1]))
                print(f"  workers={w}: {runs[w][-1]}", file=sys.stderr)
        rows = [sorted(runs[w], key=lambda r: r["seconds"])[len(runs[w]) // 2] for w in counts]
        mem = traced_peak(sorted(folder.glob("*.mrc"))[0], Path(tmp) / "traced")
    cpu = os.cpu_count()
    print(f"\nlipoframe throughput, {args.n} micrographs of {args.size}² float32, {cpu} CPUs")
    print(f"{'workers':>7}  {'mic/s':>7}  {'picking mic/s':>13}  {'s/mic in worker':>15}  {'dataset s':>9}  {'peak RSS/worker MiB':>19}  {'parent RSS MiB':>14}")
    for r in rows:
        print(
            f"{r['workers']:>7}  {r['micrographs_per_s']:>7.3f}  {r['picking_micrographs_per_s']:>13.3f}  "
            f"{r['seconds_per_micrograph_in_worker']:>15.3f}  {r['dataset_level_seconds']:>9.2f}  "
            f"{r['peak_rss_mb_per_worker']:>19.0f}  {r['parent_rss_mb_at_start']:>14.0f}"
        )
    print("mic/s: whole run; picking mic/s: the per-micrograph phase only; dataset s: binning, writers, plan files")
    one = next((r for r in rows if r["workers"] == 1), None)
    for r in rows:
        if one is not None and r["workers"] > 1:
            print(f"{r['workers']} workers vs 1: whole run {r['micrographs_per_s'] / one['micrographs_per_s']:.2f}x, "
                  f"picking phase {r['picking_micrographs_per_s'] / one['picking_micrographs_per_s']:.2f}x")
    print(f"memory allocated while picking one micrograph: peak {mem['traced_peak_mb']} MiB = {mem['copies']} x the "
          f"{mem['image_mb']} MiB image (tracemalloc; the memory-mapped file itself is not counted)")
    if args.json:
        args.json.write_text(json.dumps({"n": args.n, "size": args.size, "cpus": cpu, "repeat": args.repeat, "runs": rows, "one_micrograph": mem}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
