"""How many of the simulated suite's particles can be told from background at all?

An oracle check on the quality target (issue 3), for the evidence lipoframe
uses: the refiner's edge quality (``edge_contrast x edge_coverage``).

* **Particles.** The default ``radial_profile`` refiner is run from every
  TRUE particle (true centre and diameter): it finds the best circle nearby
  (+/-25 % in radius, three rounds of recentring) and measures its edge
  quality there, directions into touching particles left out.
  Localisation is perfect: no detector is involved.
* **Background.** Each scene is rendered again with the same settings but no
  particles (same background model, ice, junk, carbon, noise statistics; a
  new noise draw) and picked with the default detector (down to a score of
  3, below its weak threshold of 4) and refiner, the edge test switched off,
  and the diameter-range, contamination and speck filters on. Every pick there is a false pick; their edge qualities are what the
  background offers at its best places, found by the same exhaustive search
  (random places are not enough: the detector's maxima score far above
  them).

A particle is *separable at k false picks per micrograph* when its quality
beats the (k+1)-th best background pick of its scene. The separable fraction
estimates the best recall a picker can reach from this evidence at that
false-pick rate, with perfect localisation and no help from the population
of other particles (which lipoframe uses for weak candidates, so it can beat
the estimate in crowded fields). Where lipoframe's recall is close to it,
the misses are particles this evidence does not show.

Caveats: the background is a new noise draw, not the particles' own; the
detector's noise estimate is lower on an image without particles, so in
crowded scenes the background scores are somewhat inflated against the
particles' (the ``score`` estimate is pessimistic there); false picks that a
real micrograph adds around its particles (arcs, offsets) are not counted
(optimistic). An estimate, not a bound.

    python benchmarks/detectability.py [--seed 0] [--quality benchmarks/results/quality.json]

Writes ``benchmarks/results/detectability_seed<seed>.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent

from lipoframe.builtin.refiners import RadialProfileParams, RadialProfileRefiner  # noqa: E402
from lipoframe.records import Micrograph, MicrographMeta, PickContext  # noqa: E402
from lipoframe.runner import pick  # noqa: E402
from lipoframe.simulate import suite_scenes, write_suite  # noqa: E402
from lipoframe.synthetic import JUNK_KINDS, render_scene  # noqa: E402

#: The picker's default diameter range (Å).
DMIN_A, DMAX_A = 150.0, 500.0
#: The background is searched down to this detector score (the default detector reports weak candidates down to 4).
BACKGROUND_SCORE = 3.0
#: False picks per micrograph at which separability is reported.
FALSE_PICKS = (1, 3)


def particle_quality(image: np.ndarray, pixel_size: float, particles: pd.DataFrame) -> np.ndarray:
    """Edge quality of the best circle the default refiner finds from each true particle (full-resolution table)."""
    mic = Micrograph(meta=MicrographMeta(name="m", path="", shape=image.shape, pixel_size=pixel_size), image=image, polarity="dark")
    ctx = PickContext(dmin_px=DMIN_A / pixel_size, dmax_px=DMAX_A / pixel_size, pixel_size=pixel_size)
    table = particles[["x_px", "y_px", "diameter_px"]].assign(score=0.0)
    return RadialProfileRefiner(RadialProfileParams()).refine(table, mic, ctx)["quality"].to_numpy(float)


def particle_score(image: np.ndarray, pixel_size: float, particles: pd.DataFrame) -> np.ndarray:
    """Best detector score among the detections at each true particle (centre within 0.3 diameters,
    detected diameter within 0.6-1.25 of the true one; the detector reads projected spheres ~15 % small)."""
    det = pick(image, pixel_size=pixel_size, dmin=DMIN_A, dmax=DMAX_A, nms="none", refiner="none", filters=(),
               retry_suppressed=(), detector_params=dict(weak_threshold=BACKGROUND_SCORE))
    xy, d, score = det[["x_px", "y_px"]].to_numpy(float), det["diameter_px"].to_numpy(float), det["score"].to_numpy(float)
    out = np.full(len(particles), -np.inf)
    for i, (x, y, dt) in enumerate(particles[["x_px", "y_px", "diameter_px"]].to_numpy(float)):
        near = (np.hypot(xy[:, 0] - x, xy[:, 1] - y) < 0.3 * dt) & (d > 0.6 * dt) & (d < 1.25 * dt)
        if near.any():
            out[i] = score[near].max()
    return out


def background_picks(spec, pixel_size: float) -> pd.DataFrame:
    """Every pick on the scene rendered without particles (``score``, ``quality``)."""
    null = dataclasses.replace(spec, components=(), coverage=0.0)
    image, _ = render_scene(null)
    picks = pick(image, pixel_size=pixel_size, dmin=DMIN_A, dmax=DMAX_A,
                 refiner_params=dict(min_contrast=-np.inf, min_coverage=0.0, strong_min_contrast=-np.inf, strong_min_coverage=0.0),
                 filters=("diameter_range", "contamination", "speck"), retry_suppressed=(),
                 detector_params=dict(weak_threshold=BACKGROUND_SCORE))
    # Weak candidates (rejected as "weak": no population filter here) are background picks too.
    kept = picks["accepted"].to_numpy(bool) | (picks["reject_reason"] == "weak").to_numpy()
    return picks.loc[kept, ["score", "quality"]]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", default=os.environ.get("LIPOFRAME_BENCH_CACHE", "/tmp/lipoframe_bench"))
    ap.add_argument("--results", default=str(HERE / "results"))
    ap.add_argument("--quality", default="", help="quality.json of the same suite (benchmarks/quality.py) to show lipoframe's recall beside")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    info = write_suite(Path(args.cache) / f"suite_seed{args.seed}", preset="suite", seed=args.seed, progress=True)
    truth_all = info.truth()
    specs = {s.name: s for s in suite_scenes(args.seed)}
    recall = {}
    if args.quality:
        report = json.loads(Path(args.quality).read_text())
        if report.get("seed") != args.seed:
            ap.error(f"--quality {args.quality} is of seed {report.get('seed')}, not {args.seed}")
        recall = {r["micrograph"]: r["recall"] for r in report["suite"]["per_micrograph"]}
    rows = []
    for path in info.paths:
        name = Path(path).stem
        t = truth_all[truth_all.micrograph == name]
        particles = t[~t.kind.isin(JUNK_KINDS)].reset_index(drop=True)
        if not len(particles):
            continue
        with mrcfile.open(path, permissive=True) as f:
            image = np.asarray(f.data, dtype=np.float32)
            px = float(f.voxel_size.x)
        evidence = {"quality": particle_quality(image, px, particles), "score": particle_score(image, px, particles)}
        bg = background_picks(specs[name], px)
        row = {"micrograph": name, "particles": len(particles), "background_picks": len(bg), "recall": recall.get(name)}
        for what, values in evidence.items():
            ranked = np.sort(bg[what].to_numpy(float))[::-1]
            for k in FALSE_PICKS:
                threshold = ranked[k] if len(ranked) > k else -np.inf
                row[f"{what}_separable_{k}"] = int(np.count_nonzero(values > threshold))
                row[f"{what}_threshold_{k}"] = float(threshold)
        # Both together: a particle that no more than k background picks match or beat on both
        # measures at once (what the best rule monotone in the two could separate; optimistic).
        bs, bq = bg["score"].to_numpy(float), bg["quality"].to_numpy(float)
        dominated = np.array([np.count_nonzero((bs >= s_) & (bq >= q_)) for s_, q_ in zip(evidence["score"], evidence["quality"])])
        for k in FALSE_PICKS:
            row[f"both_separable_{k}"] = int(np.count_nonzero(dominated <= k))
        rows.append(row)
        print(f"{name:28s} particles {len(particles):4d}  background picks {len(bg):3d}  "
              + "  ".join(f"{w}@{k} {row[f'{w}_separable_{k}'] / len(particles):.2f}" for w in evidence for k in FALSE_PICKS), file=sys.stderr)
    n = sum(r["particles"] for r in rows)
    m = len(rows)
    lines = [f"# Detectability of the simulated suite (seed {args.seed})", "",
             f"`python benchmarks/detectability.py --seed {args.seed}` ({time.perf_counter() - t0:.0f} s). At each true particle: the "
             "detector's best score there (`score`) and the edge quality of the best circle the refiner finds from it "
             "(`quality`), against the picks on the same scene rendered without particles (see the script's docstring). "
             "Separable at k = beats the (k+1)-th best background pick by that measure; `both` = at most k background picks "
             "match or beat it on both measures at once (the best a rule monotone in the two could do; optimistic).", ""]
    for what in ("score", "quality", "both"):
        for k in FALSE_PICKS:
            s = sum(r[f"{what}_separable_{k}"] for r in rows)
            lines.append(f"* **{what}, k = {k} false pick(s) per micrograph: {s} of {n} particles separable ({s / n:.3f})**; finding "
                         f"exactly these with {k} false pick(s) on each of the {m} micrographs gives F1 {2 * s / (2 * s + (n - s) + k * m):.3f}.")
    lines += ["", "| micrograph | particles | score k=1 | score k=3 | quality k=1 | quality k=3 | both k=1 | both k=3 | lipoframe recall |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        rec = "" if r["recall"] is None else f"{r['recall']:.2f}"
        cells = " | ".join(f"{r[f'{w}_separable_{k}'] / r['particles']:.2f}" for w in ("score", "quality", "both") for k in FALSE_PICKS)
        lines.append(f"| {r['micrograph']} | {r['particles']} | {cells} | {rec} |")
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"detectability_seed{args.seed}.md").write_text("\n".join(lines) + "\n")
    (out / f"detectability_seed{args.seed}.json").write_text(json.dumps({"seed": args.seed, "false_picks": FALSE_PICKS, "per_micrograph": rows}, indent=1))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
