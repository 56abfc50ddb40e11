"""Picking quality against residual noise: the simulated suite rendered again
with every scene's noise multiplied by a factor, picked with DEFAULT parameters.

    python benchmarks/noise_curve.py                              # factors 0.5 ... 1.25, seed 0
    python benchmarks/noise_curve.py --factors 0.75,1 --detectors edge,dog
    python benchmarks/noise_curve.py --rim-blur 4 --factors 0.5,0.75,1   # softer rims

The suite of ``quality.py`` is factor 1: its particles, ice, carbon and
backgrounds are the same at every factor (same seeds); only the amplitude of
the residual correlated noise (``SceneSpec.noise``, both its fine and its
25 Å component) changes; ``lipoframe simulate noise_scale=F`` writes such a
set. The curve says how far the suite sits from the noise level where the
targets of issue 3 are met, and which scenes break first. Nothing is tuned
per factor. ``--rim-blur A`` renders every suite with its objects' rims
blurred by A Å more (``lipoframe simulate rim_blur_A=A``): the suite's rims
are far sharper than its residual noise, real denoised micrographs' are not
(docs/evaluation.md), and this says how much the figures depend on that.
Writes ``benchmarks/results/noise_curve.json`` and ``noise_curve.md``
(``noise_curve_seedN.*`` for another seed, ``..._rimA`` with a rim blur;
``--results``); simulated sets and runs go to ``--cache``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import run_and_evaluate  # noqa: E402

from lipoframe.simulate import write_suite  # noqa: E402

#: Measures reported per factor (from ``EvaluationResult.summary``).
MEASURES = ("f1", "precision", "recall", "duplicate_rate", "median_diameter_error")


def markdown(report: dict) -> str:
    dets = report["detectors"]
    lines = [
        "# Picking quality against residual noise (default parameters)", "",
        f"lipoframe {report['lipoframe']} · {report['date']} · suite seed {report['seed']} · "
        "every scene's residual-noise amplitude times the factor"
        + (f" · objects' rims blurred by {report['rim_blur_A']:g} Å more" if report.get("rim_blur_A")
           else " (factor 1 = the quality benchmark's suite)"), "",
        "| detector | noise factor | F1 | precision | recall | duplicates | median abs d err | picks on empty |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for det in dets:
        for row in report["rows"]:
            if row["detector"] != det:
                continue
            lines.append(
                f"| {det} | {row['factor']:g} | {row['f1']:.3f} | {row['precision']:.3f} | {row['recall']:.3f} | "
                f"{100 * row['duplicate_rate']:.1f}% | {100 * row['median_diameter_error']:.1f}% | {row['empty_picks']} |"
            )
    scenes = list(report["rows"][0]["per_scene_f1"])
    for det in dets:
        rows = [r for r in report["rows"] if r["detector"] == det]
        lines += ["", f"F1 per scene, detector `{det}`:", "",
                  "| scene | " + " | ".join(f"x{r['factor']:g}" for r in rows) + " |",
                  "|---|" + "---|" * len(rows)]
        for s in scenes:
            vals = [r["per_scene_f1"][s] for r in rows]
            lines.append(f"| {s} | " + " | ".join("n/a" if v is None else f"{v:.2f}" for v in vals) + " |")
    lines += ["", f"Machine: {report['machine']}."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--factors", default="0.5,0.625,0.75,0.875,1,1.25", help="comma-separated noise factors")
    ap.add_argument("--detectors", default="edge", help="comma-separated detector stages (default parameters each)")
    ap.add_argument("--cache", default=os.environ.get("LIPOFRAME_BENCH_CACHE", "/tmp/lipoframe_bench"))
    ap.add_argument("--results", default=str(HERE / "results"))
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--rim-blur", type=float, default=0.0, help="blur the objects' rims by this many Å more (default 0)")
    args = ap.parse_args(argv)
    if not 0 <= args.rim_blur <= 100:
        ap.error(f"--rim-blur: expected 0-100 Å, got {args.rim_blur:g}")
    try:
        factors = [float(f) for f in args.factors.split(",") if f]
    except ValueError:
        ap.error(f"--factors: expected numbers separated by commas, got {args.factors!r}")
    if not factors or min(factors) < 0:
        ap.error(f"--factors: expected non-negative numbers, got {args.factors!r}")
    detectors = [d for d in args.detectors.split(",") if d]

    from lipoframe import __version__

    cache = Path(args.cache)
    rows = []
    for factor in factors:
        t0 = time.perf_counter()
        # Factor 1 without a rim blur is the quality benchmark's own cached suite.
        rim = f"_rim{args.rim_blur:g}" if args.rim_blur else ""
        name = f"suite_seed{args.seed}" + ("" if factor == 1 else f"_noise{factor:g}") + rim
        info = write_suite(cache / name, seed=args.seed, noise_scale=factor, rim_blur_A=args.rim_blur)
        folder, truth_csv = info.folder, info.truth_csv
        print(f"noise x{factor:g}: suite ready in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        for det in detectors:
            ev, run = run_and_evaluate(folder, truth_csv, cache / f"run_noise{factor:g}_{det}_seed{args.seed}{rim}",
                                       overrides=(f"detector={det}",), workers=args.workers)
            pm = ev.per_micrograph.set_index("micrograph")
            row = {"detector": det, "factor": factor, **{k: float(ev.summary[k]) for k in MEASURES},
                   "empty_picks": int(pm.loc["empty", "n_picks"]) if "empty" in pm.index else None,
                   "per_scene_f1": {m: (None if pm.loc[m, "n_reference"] == 0 else float(pm.loc[m, "f1"])) for m in pm.index},
                   "seconds": run["seconds"]}
            rows.append(row)
            print(f"  {det}: F1 {row['f1']:.3f} P {row['precision']:.3f} R {row['recall']:.3f} ({run['seconds']:.0f} s)", file=sys.stderr)
    report = {
        "lipoframe": __version__, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "seed": args.seed,
        "machine": f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}",
        "detectors": detectors, "rows": rows, "rim_blur_A": args.rim_blur,
    }
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    stem = ("noise_curve" if args.seed == 0 else f"noise_curve_seed{args.seed}") + (f"_rim{args.rim_blur:g}" if args.rim_blur else "")
    (results / f"{stem}.json").write_text(json.dumps(report, indent=2))
    md = markdown(report)
    (results / f"{stem}.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
