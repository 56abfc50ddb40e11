"""Speed of the report: seconds per overlay on camera-sized micrographs.

Writes a fake run folder (``micrographs/<name>.json|csv``, ``extraction_plan.json``)
holding N float32 MRC micrographs of a given size with ~K picks each, then times
:func:`lipoframe.report.write_report` (reading, binning, drawing, PNG/JPEG
encoding, crops, dataset plots and report.html).

    python benchmarks/bench_report.py --n 8 --shape 4096 4096 --workers 2
    python benchmarks/bench_report.py --n 4 --shape 4092 5760   # K3

Prints wall and CPU seconds per overlay, total time, and file sizes.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from lipoframe import report, schema
from lipoframe.plan import ExtractionPlan, SizeBin


def fake_run(root: Path, n: int, shape: tuple[int, int], picks_per_mic: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    small = ndi.gaussian_filter(rng.standard_normal((shape[0] // 8, shape[1] // 8)).astype(np.float32), 2)
    base = np.kron(small, np.ones((8, 8), np.float32))  # smooth, denoised-looking background, quick to make
    (root / "mics").mkdir(parents=True)
    (root / "out" / "micrographs").mkdir(parents=True)
    for i in range(n):
        name = f"mic_{i:04d}"
        img = np.roll(base, i * 97, axis=1) + 0.3 * rng.standard_normal(shape).astype(np.float32)
        path = root / "mics" / f"{name}.mrc"
        with mrcfile.new(str(path), overwrite=True) as m:
            m.set_data(img)
            m.voxel_size = 1.0
        d = rng.uniform(150, 500, picks_per_mic)
        t = pd.DataFrame({
            schema.MICROGRAPH: name, schema.X: rng.uniform(0, shape[1] - 1, picks_per_mic),
            schema.Y: rng.uniform(0, shape[0] - 1, picks_per_mic), schema.DIAMETER: d,
            schema.SCORE: rng.normal(20, 5, picks_per_mic), schema.LEVEL: 0, schema.SIGMA: d / 2.83,
            schema.ACCEPTED: rng.random(picks_per_mic) > 0.1, schema.REASON: "",
        })
        t.loc[~t[schema.ACCEPTED], schema.REASON] = "score"
        t[schema.DIAMETER_A] = t[schema.DIAMETER]
        t.to_csv(root / "out" / "micrographs" / f"{name}.csv", index=False)
        meta = {"name": name, "path": str(path), "shape": list(shape), "pixel_size": 1.0, "flip_y": False}
        (root / "out" / "micrographs" / f"{name}.json").write_text(json.dumps({"meta": meta, "n_picks": picks_per_mic}))
    plan = ExtractionPlan("quantile", 1.0, (SizeBin(0, 150, 260, 0, 416), SizeBin(1, 260, 380, 0, 576), SizeBin(2, 380, 500, 0, 768)))
    (root / "out" / "extraction_plan.json").write_text(plan.to_json())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=6, help="micrographs")
    ap.add_argument("--shape", type=int, nargs=2, default=(4096, 4096), metavar=("ROWS", "COLS"))
    ap.add_argument("--picks", type=int, default=120, help="picks per micrograph")
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="lipoframe-bench-report-") as tmp:
        root = Path(tmp)
        fake_run(root, args.n, tuple(args.shape), args.picks)
        data = report.load_run(root / "out")
        readers = report.ReaderChoice.from_config({}, None)
        t0, c0 = time.perf_counter(), time.process_time()
        stats = report.write_report(data, readers=readers, workers=args.workers)
        wall = time.perf_counter() - t0
        out = root / "out"
        pngs = sorted((out / "overlays").glob("*_picks.png"))
        print(f"{args.n} micrographs {args.shape[0]}x{args.shape[1]} float32, {args.picks} picks each, {stats['workers']} worker(s), "
              f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
        print(f"overlays     {stats['per_overlay']:.3f} s wall, {stats['cpu_per_overlay']:.3f} s CPU per overlay "
              f"(read + bin + draw + encode + crops); all overlays {stats['seconds']:.1f} s")
        print(f"report       {wall:.1f} s total (main process CPU {time.process_time() - c0:.1f} s, dataset plots and HTML included)")
        print(f"sizes        overlay PNG {np.mean([p.stat().st_size for p in pngs]) / 1e6:.2f} MB each, "
              f"report.html {(out / 'report.html').stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
