"""Three touching virions of 136-178 px on a real tomogram slice, picked with diameter ranges of every width.

The real slice in ``../shared/data/real/sarscov2_virions_tomoslice`` (one z
section of an EMPIAR/CZ portal tomogram, no pixel size) holds three round
SARS-CoV-2 virions with a granular interior, plus a lacey edge with gold-like
specks. Its reference (``reference_virions_derived.csv``) is a watershed of
the published segmentation mask: one centre and diameter per virion.

For each diameter range (pixels) and NMS setting (the defaults, where a
larger candidate may outrank smaller ones inside it by ``score`` once
confirmed; the same without that, ``nms.outrank_by=''``; and ranking every
candidate by ``score``, ``nms.rank_by=score``) the script reports how many
picks are accepted, which virions get a pick within 0.3 of
their diameter (and that pick's diameter over the reference's), and how many
accepted picks lie inside each virion's outline (more than one is the
"peppering" failure: a large particle covered by small picks)::

    python benchmarks/virions.py                  # ~1 min -> benchmarks/results/virions.md
    python benchmarks/virions.py --overlay 40,250,default    # also draw one case (default, no-outrank, score)

n = 3: a check of one behaviour on real data, not a statistical benchmark.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data" / "real" / "sarscov2_virions_tomoslice"
RANGES = ((100, 250), (120, 240), (80, 300), (60, 400), (40, 250))
#: NMS settings compared: name -> nms parameters.
SETTINGS = {"default": {}, "no-outrank": {"outrank_by": ""}, "score": {"rank_by": "score"}}


def score_case(picks: pd.DataFrame, ref: pd.DataFrame) -> dict:
    """Accepted picks, and per virion: the matched pick's diameter ratio and the picks inside it."""
    acc = picks[picks["accepted"].astype(bool)]
    per = []
    for _, r in ref.iterrows():
        d = np.hypot(acc["x_px"] - r.x_px, acc["y_px"] - r.y_px).to_numpy()
        hit = np.flatnonzero(d < 0.3 * r.diameter_px)
        ratio = float(acc["diameter_px"].to_numpy()[hit[np.argmin(d[hit])]] / r.diameter_px) if len(hit) else None
        per.append({"ratio": ratio, "inside": int((d < 0.5 * r.diameter_px).sum())})
    return {"accepted": len(acc), "virions": per}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", default=str(HERE / "results"))
    ap.add_argument("--overlay", default="", help="dmin,dmax,setting of one case to draw (PNG next to the results)")
    args = ap.parse_args(argv)
    if not DATA.is_dir():
        print(f"virion slice not found at {DATA}: nothing to do", file=sys.stderr)
        return 1
    import tifffile

    from lipoframe import pick

    image = tifffile.imread(DATA / "TS_001.133.tif").astype(np.float32)
    ref = pd.read_csv(DATA / "reference_virions_derived.csv").rename(columns={"diameter_px_watershed_equiv": "diameter_px"})
    rows = []
    for dmin, dmax in RANGES:
        for name, nms_params in SETTINGS.items():
            picks = pick(image, units="px", dmin=dmin, dmax=dmax, nms_params=nms_params)
            rows.append(((dmin, dmax, name), score_case(picks, ref)))
            print(f"{dmin}-{dmax} px, {name}: {rows[-1][1]}", file=sys.stderr)
    names = [f"{r.diameter_px:.0f} px at ({r.x_px:.0f}, {r.y_px:.0f})" for _, r in ref.iterrows()]
    lines = [
        "# Three virions on a real tomogram slice: picks by diameter range and NMS setting",
        "",
        "`python benchmarks/virions.py`. Per virion: the accepted pick within 0.3 of its diameter, as "
        "its diameter over the reference's (`miss` if none), and the number of accepted picks inside its "
        "outline (one is right; more is peppering). NMS settings: `default`; `no-outrank` "
        "(`nms.outrank_by=''`: no larger candidate outranks smaller ones inside it); `score` (`nms.rank_by=score`).",
        "",
        "| dmin-dmax (px) | NMS | accepted picks | " + " | ".join(names) + " |",
        "|---|---|---|" + "---|" * len(names),
    ]
    for (dmin, dmax, name), res in rows:
        cells = [("miss" if v["ratio"] is None else f"{v['ratio']:.2f}") + f", {v['inside']} inside" for v in res["virions"]]
        lines.append(f"| {dmin}-{dmax} | {name} | {res['accepted']} | " + " | ".join(cells) + " |")
    md = "\n".join(lines) + "\n"
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    (out / "virions.md").write_text(md)
    print(md)
    if args.overlay:
        from lipoframe.evaluate import evaluate, plot_evaluation

        lo, hi, name = args.overlay.split(",")
        picks = pick(image, units="px", dmin=float(lo), dmax=float(hi), nms_params=SETTINGS[name])
        ev = evaluate(picks, ref.assign(micrograph="image", kind="virion"))
        path = plot_evaluation(image, ev.reference, ev.picks, out / f"virions_{lo}-{hi}_{name}.png",
                               title=f"virion slice, dmin={lo} dmax={hi} px, NMS {name}")
        print(f"overlay: {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
