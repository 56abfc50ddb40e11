"""How thin can a tomogram be and still be picked? Recall and precision against thickness.

Spheres of diameter d (3 % jitter) on a 3 x 3 grid in volumes of t planes,
t from 0.25 d to 2 d, rendered by :func:`lipoframe.synthetic3d.render_volume`
(solid dark spheres, contrast 1, correlated noise) and picked with the
``+experiment=tomo`` stages (``detector=dog`` with ``min_sigma_binned=2``,
``nms=size_aware``, ``refiner=radial_profile_3d``, ``filter=[diameter_range]``)
and the diameter range ``dmin = 0.7 d``, ``dmax = 1.4 d``. A sphere that fits
in the volume is placed at a random depth where it fits; one thicker than the
volume is centred on the middle plane (its top and bottom cut by the faces).
Every volume is picked as ``lipoframe run`` would (its warning that the
volume is thinner than ``dmax`` is silenced here).

Picks are scored with :func:`lipoframe.evaluate.evaluate` (3D, a match within
0.3 d of the centre). Writes ``benchmarks/results/thin_volumes.md`` and
``.json``.

    python benchmarks/thin_volumes.py [--seeds 4] [--noise 0.2 0.3] [--sizes 10 14 20 30]
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from lipoframe.evaluate import evaluate
from lipoframe.runner import pick
from lipoframe.synthetic3d import render_volume

HERE = Path(__file__).resolve().parent
#: Volume thickness relative to the sphere diameter.
RATIOS = (0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 1.0, 1.25, 1.5, 2.0)
GRID = 3
SPACING = 2.2  # centre spacing in diameters


def volume(d: float, ratio: float, noise: float, seed: int) -> tuple[np.ndarray, pd.DataFrame]:
    """A volume of round(ratio * d) planes (at least 2) with GRID x GRID spheres of about d voxels."""
    rng = np.random.default_rng([seed, int(d * 10), int(ratio * 1000)])
    nz = max(2, int(round(ratio * d)))
    side = int(np.ceil(GRID * SPACING * d))
    rows = []
    for i in range(GRID):
        for j in range(GRID):
            dj = d * rng.uniform(0.97, 1.03)
            x = (j + 0.5) * SPACING * d + rng.uniform(-0.1, 0.1) * d
            y = (i + 0.5) * SPACING * d + rng.uniform(-0.1, 0.1) * d
            lo, hi = dj / 2 + 1, nz - 2 - dj / 2
            z = rng.uniform(lo, hi) if hi > lo else (nz - 1) / 2 + rng.uniform(-0.25, 0.25)
            rows.append((x, y, z, dj))
    truth = pd.DataFrame(rows, columns=["x_px", "y_px", "z_px", "diameter_px"])
    return render_volume((nz, side, side), truth, noise=noise, seed=seed), truth


def measure(d: float, ratio: float, noise: float, seed: int) -> dict:
    vol, truth = volume(d, ratio, noise, seed)
    t0 = time.perf_counter()
    picks = pick(vol, dmin=0.7 * d, dmax=1.4 * d, units="px", detector="dog", detector_params={"min_sigma_binned": 2.0},
                 refiner="radial_profile_3d", filters=("diameter_range",))
    seconds = time.perf_counter() - t0
    acc = picks[picks["accepted"]] if len(picks) else picks
    res = evaluate(acc.assign(micrograph="v"), truth.assign(micrograph="v"))
    s = res.summary
    return {"d": d, "ratio": ratio, "planes": int(vol.shape[0]), "noise": noise, "seed": seed, "n_ref": len(truth), "n_picks": len(acc),
            "tp": int(s["tp"]), "fp": int(s["fp"]), "fn": int(s["fn"]),
            "median_diameter_error": None if s["median_diameter_error"] is None or not np.isfinite(s["median_diameter_error"]) else float(s["median_diameter_error"]),
            "seconds": seconds}


def table(rows: list[dict], noise: float) -> str:
    df = pd.DataFrame([r for r in rows if r["noise"] == noise])
    sizes = sorted(df["d"].unique())
    head = "| planes / d | " + " | ".join(f"d = {d:g}" for d in sizes) + " | all: recall | precision |"
    lines = [head, "|" + " --- |" * (len(sizes) + 3)]
    for ratio in sorted(df["ratio"].unique()):
        cells = []
        for d in sizes:
            g = df[(df["ratio"] == ratio) & (df["d"] == d)]
            cells.append(f"{g.tp.sum()}/{g.n_ref.sum()} ({g.fp.sum()} fp)")
        g = df[df["ratio"] == ratio]
        rec = g.tp.sum() / g.n_ref.sum()
        prec = g.tp.sum() / max(1, g.tp.sum() + g.fp.sum())
        lines.append(f"| {ratio:g} | " + " | ".join(cells) + f" | {rec:.2f} | {prec:.2f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--noise", type=float, nargs="+", default=[0.2, 0.3])
    ap.add_argument("--sizes", type=float, nargs="+", default=[10, 14, 20, 30])
    ap.add_argument("--ratios", type=float, nargs="+", default=list(RATIOS))
    ap.add_argument("--out", default=str(HERE / "results" / "thin_volumes"))
    args = ap.parse_args()
    logging.getLogger("lipoframe").setLevel(logging.ERROR)  # one 'thinner than dmax' warning per thin volume
    rows = []
    for noise in args.noise:
        for d in args.sizes:
            for ratio in args.ratios:
                for seed in range(args.seeds):
                    r = measure(d, ratio, noise, seed)
                    rows.append(r)
                    print(f"noise {noise:g} d {d:g} planes {r['planes']} ({ratio:g} d) seed {seed}: {r['tp']}/{r['n_ref']} found, "
                          f"{r['fp']} false, {r['seconds']:.1f} s", flush=True)
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    text = ["# Thin volumes: spheres found against volume thickness", "",
            f"{len(args.sizes)} sizes, {args.seeds} seeds, {GRID * GRID} spheres per volume; dmin = 0.7 d, dmax = 1.4 d; "
            "cell: spheres found / spheres (false picks). `python benchmarks/thin_volumes.py`", ""]
    for noise in args.noise:
        text += [f"## noise {noise:g}", "", table(rows, noise), ""]
    out.with_suffix(".md").write_text("\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    main()
