"""Binning benchmark: how many pixels each way of splitting a broad size mode extracts.

``peak_valley`` splits a broad single mode (and, with spare bins, a broad mode
among several) into at most ``broad_bins`` bins. This script compares the two
``broad_split`` methods on simulated diameter sets, through the policy
itself (``PeakValleyBinner`` with ``broad_split=min_waste`` or ``quantile``,
every other parameter at its default):

* pixels extracted, ``sum over bins of picks x box**2``, and the smallest
  bin, for symmetric (uniform, normal) and skewed (log-normal, gamma tail)
  single modes of 60, 300 and 2000 picks;
* a two-population set (60 px particles and a long-tailed vesicle
  population) with and without splitting the broad mode among several;
* stray picks (``stray_gap``): how often the rule moves picks out of a bin
  of a continuous distribution (200 sets each), and what it does to the
  boxes when a few picks stand far above a mode.

Pure numpy; a few seconds::

    python benchmarks/binning.py

Writes ``benchmarks/results/binning.md`` and ``binning.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from lipoframe import schema
from lipoframe.builtin.binning import PeakValleyBinner, PeakValleyParams
from lipoframe.records import PickContext

HERE = Path(__file__).resolve().parent

#: name -> (rng, n) -> diameters (px)
SINGLE_MODES = {
    "uniform 150-300 px": lambda rng, n: rng.uniform(150, 300, n),
    "normal 200 ± 30 px": lambda rng, n: rng.normal(200, 30, n),
    "log-normal 45 px, σ 0.3": lambda rng, n: 45 * np.exp(rng.normal(0, 0.3, n)),
    "log-normal 200 px, σ 0.25": lambda rng, n: 200 * np.exp(rng.normal(0, 0.25, n)),
    "gamma tail 40 px + Γ(1.5, 10)": lambda rng, n: 40 + rng.gamma(1.5, 10, n),
}
SIZES = (60, 300, 2000)

#: continuous distributions on which the stray rule should rarely fire: name -> (rng, n) -> diameters (px)
CONTINUOUS = {
    "normal 200 ± 20 px": lambda rng, n: rng.normal(200, 20, n),
    "log-normal 200 px, σ 0.25": lambda rng, n: 200 * np.exp(rng.normal(0, 0.25, n)),
    "log-normal 60 px, σ 0.4": lambda rng, n: 60 * np.exp(rng.normal(0, 0.4, n)),
    "gamma tail 120 px + Γ(1.3, 30)": lambda rng, n: 120 + rng.gamma(1.3, 30, n),
    "three modes 180/260/370 px": lambda rng, n: np.r_[rng.normal(180, 12, 2 * n // 5), rng.normal(260, 15, 7 * n // 20),
                                                         rng.normal(370, 20, n - 2 * n // 5 - 7 * n // 20)],
}
STRAY_SETS = 200

#: a mode with a few picks far above it: name -> (rng) -> diameters (px)
WITH_STRAYS = {
    "500 at 150 ± 8 px + 1 at 450 px": lambda rng: np.r_[rng.normal(150, 8, 500), 450.0],
    "500 at 150 ± 8 px + 3 at 300 ± 10 px": lambda rng: np.r_[rng.normal(150, 8, 500), rng.normal(300, 10, 3)],
    "500 at 150 ± 8 px + 2 at 240/245 px + 200 at 400 ± 10 px": lambda rng: np.r_[rng.normal(150, 8, 500), 240.0, 245.0,
                                                                                  rng.normal(400, 10, 200)],
}


def plan_of(d: np.ndarray, **params):
    picks = pd.DataFrame({schema.MICROGRAPH: "m", schema.X: 0.0, schema.Y: 0.0, schema.DIAMETER: d,
                          schema.ACCEPTED: True, schema.REASON: ""})
    ctx = PickContext(dmin_px=float(d.min()), dmax_px=float(d.max()), polarity="dark", pixel_size=None, seed=0)
    return PeakValleyBinner(PeakValleyParams(**params)).assign(picks, {}, ctx).plan


def pixels(plan) -> int:
    return int(sum(b.count * b.box_px**2 for b in plan.bins))


def stray_tables(seed: int) -> tuple[list[dict], list[dict]]:
    """The stray rule on sets with a few picks far above a mode, and how often it fires on continuous ones."""
    def counts(p):
        return "/".join(str(b.count) for b in p.bins), "/".join(str(b.box_px) for b in p.bins), round(pixels(p) / 1e6, 2)

    strays = []
    for name, draw in WITH_STRAYS.items():
        d = draw(np.random.default_rng(seed))
        on, off = counts(plan_of(d)), counts(plan_of(d, stray_gap=None))
        strays.append({"set": name, "bins": on[0], "boxes": on[1], "Mpx": on[2],
                       "off_bins": off[0], "off_boxes": off[1], "off_Mpx": off[2]})
    fired = []
    for name, draw in CONTINUOUS.items():
        for n in SIZES:
            moves = [plan_of(draw(np.random.default_rng(seed + k), n)).details.get("strays", [])
                     for k in range(STRAY_SETS)]
            fired.append({"distribution": name, "picks": n, "fired": sum(1 for m in moves if m) / STRAY_SETS,
                          "stray_picks": sum(r["picks"] for m in moves for r in m)})
    return strays, fired


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    rows = []
    for name, draw in SINGLE_MODES.items():
        for n in SIZES:
            d = draw(rng, n)
            plans = {split: plan_of(d, broad_split=split) for split in ("min_waste", "quantile")}
            px = {k: pixels(p) for k, p in plans.items()}
            rows.append({
                "distribution": name, "picks": n,
                "min_waste_bins": "/".join(str(b.count) for b in plans["min_waste"].bins),
                "min_waste_boxes": "/".join(str(b.box_px) for b in plans["min_waste"].bins),
                "quantile_bins": "/".join(str(b.count) for b in plans["quantile"].bins),
                "quantile_boxes": "/".join(str(b.box_px) for b in plans["quantile"].bins),
                "min_waste_Mpx": round(px["min_waste"] / 1e6, 2), "quantile_Mpx": round(px["quantile"] / 1e6, 2),
                "saved": round(1 - px["min_waste"] / px["quantile"], 3),
            })
    table = pd.DataFrame(rows)
    two = np.r_[rng.normal(60, 3, 300), 120 + rng.gamma(1.3, 30, 200)]
    split, whole = plan_of(two), plan_of(two, max_bins=2)
    lines = [
        "# Binning: splitting broad modes (`python benchmarks/binning.py`)", "",
        f"Seed {args.seed}; `peak_valley` defaults except `broad_split`; pixels = sum of picks x box².", "",
        "## One broad mode: `min_waste` (default) against `quantile`", "",
        "| distribution | picks | min_waste bins (picks) | boxes | quantile bins (picks) | boxes | min_waste Mpx | quantile Mpx | saved |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['distribution']} | {r['picks']} | {r['min_waste_bins']} | {r['min_waste_boxes']} | "
                     f"{r['quantile_bins']} | {r['quantile_boxes']} | {r['min_waste_Mpx']} | {r['quantile_Mpx']} | "
                     f"{100 * r['saved']:.1f} % |")
    lines += ["", "## A broad mode among several (300 picks at 60 ± 3 px, 200 at 120 px + Γ(1.3, 30))", "",
              "| plan | bins (picks) | boxes | Mpx |", "|---|---|---|---|"]
    for label, p in (("default (spare bins split the broad mode)", split), ("max_bins=2 (no spare bin)", whole)):
        lines.append(f"| {label} | {'/'.join(str(b.count) for b in p.bins)} | {'/'.join(str(b.box_px) for b in p.bins)} | "
                     f"{pixels(p) / 1e6:.2f} |")
    lines += ["", *(f"- {n}" for n in split.notes), ""]
    strays, fired = stray_tables(args.seed)
    lines += ["## Stray picks (`stray_gap`, default 0.3)", "",
              f"How often the rule fires on continuous distributions ({STRAY_SETS} sets each, seeds "
              f"{args.seed}-{args.seed + STRAY_SETS - 1}), and the picks it moves:", "",
              "| distribution | picks | sets with strays | stray picks in all sets |", "|---|---|---|---|"]
    lines += [f"| {r['distribution']} | {r['picks']} | {100 * r['fired']:.1f} % | {r['stray_picks']} |" for r in fired]
    lines += ["", "A few picks far above a mode:", "",
              "| set | default: bins (picks) | boxes | Mpx | stray_gap=null: bins (picks) | boxes | Mpx |",
              "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['set']} | {r['bins']} | {r['boxes']} | {r['Mpx']} | {r['off_bins']} | {r['off_boxes']} | {r['off_Mpx']} |"
              for r in strays]
    lines += [""]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "binning.md").write_text("\n".join(lines))
    (args.out / "binning.json").write_text(json.dumps(
        {"seed": args.seed, "single_modes": rows,
         "two_populations": {"split_Mpx": pixels(split) / 1e6, "whole_Mpx": pixels(whole) / 1e6, "notes": list(split.notes)},
         "strays": {"continuous": fired, "with_strays": strays}},
        indent=2))
    print("\n".join(lines))
    print(f"min_waste saved {100 * table['saved'].min():.1f}-{100 * table['saved'].max():.1f} % of the pixels; "
          f"wrote {args.out / 'binning.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
