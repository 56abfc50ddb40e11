"""Picking-quality benchmark: lipoframe with DEFAULT parameters on the simulated
suite and on the real apoferritin sample, scored by ``lipoframe.evaluate``.

    python benchmarks/quality.py                      # suite (cached) + apoferritin -> benchmarks/results/
    python benchmarks/quality.py --preset mini        # quick look (1024² at 4 Å/px)
    python benchmarks/quality.py --seed 1             # held-out suite (other particles)
    python benchmarks/quality.py --only s05_small_rings_crowded,empty --no-apoferritin
    python benchmarks/quality.py --overlay s11_everything,s06_carbon_edge --update-docs
    python benchmarks/quality.py --seed 2 --set peel=true   # an option measured (not the benchmark result)

A full suite run with seed 0 writes ``benchmarks/results/quality.json`` and
``quality.md`` (``--results``); other runs write into ``--cache``/results.
The simulated sets are written once to ``--cache`` and reused.
Targets (issue 3): F1 >= 0.95, duplicates <= 1% of matched particles, median
diameter error <= 3%, no pick on the empty micrograph; apoferritin F1 >= 0.9.
Nothing here tunes the picker: the numbers are what the defaults give.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import plot_overlay, run_and_evaluate  # noqa: E402

from lipoframe.evaluate import micrograph_key  # noqa: E402
from lipoframe.simulate import write_suite  # noqa: E402

APO = HERE.parent.parent / "shared" / "data" / "real" / "apoferritin_empiar10146_sample"
#: The apoferritin PNGs have no pixel size: the diameter range is given in pixels (particles ~61 px).
APO_OVERRIDES = ("units=px", "dmin=40", "dmax=90", "polarity=dark")

TARGETS = {
    "suite_f1": (">=", 0.95),
    "suite_duplicate_rate": ("<=", 0.01),
    "suite_median_diameter_error": ("<=", 0.03),
    "empty_picks": ("==", 0),
    "apoferritin_f1": (">=", 0.90),
}


def _fmt(v, pct=False, digits=3, pct_digits=1):
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    if pct:
        return f"{100 * v:.{pct_digits}f}%"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _passes(op: str, value, target) -> bool | None:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return None
    return {">=": value >= target, "<=": value <= target, "==": value == target}[op]


def _clean(o):
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {k: _clean(v) for k, v in o.items()}
    if isinstance(o, list):
        return [_clean(v) for v in o]
    if hasattr(o, "item"):
        return _clean(o.item())
    return o


def per_mic_rows(ev, descriptions: dict[str, str]) -> list[dict]:
    rows = []
    for r in ev.per_micrograph.to_dict("records"):
        r["description"] = descriptions.get(r["micrograph"], "")
        rows.append(r)
    return rows


def _junk(x: dict) -> str:
    by = {k: v for k, v in (x.get("junk_picks_by_kind") or {}).items() if v}
    return f"{x['junk_picks']}" + (" (" + ", ".join(f"{k} {v}" for k, v in by.items()) + ")" if by else "")


def markdown(report: dict) -> str:
    s, a = report["suite"]["summary"], (report.get("apoferritin") or {}).get("summary")
    sets = report.get("overrides") or []
    lines = [
        "# Picking quality (" + (f"defaults and {' '.join(f'`{o}`' for o in sets)}" if sets else "default parameters") + ")",
        "",
        f"lipoframe {report['lipoframe']} · {report['date']} · preset `{report['preset']}` seed {report['seed']} · "
        f"matching tolerance {s['options']['tolerance']} x reference diameter",
        "",
        "## Targets",
        "",
        "| target | value | goal | pass |",
        "|---|---|---|---|",
    ]
    for name, t in report["targets"].items():
        pct = "rate" in name or "error" in name
        ok = {True: "yes", False: "**no**", None: "n/a"}[t["pass"]]
        lines.append(f"| {name} | {_fmt(t['value'], pct, pct_digits=2)} | {t['op']} {_fmt(t['goal'], pct) if pct else t['goal']} | {ok} |")
    lines += ["", "## Datasets", "", "| dataset | micrographs | particles | picks | precision | recall | F1 | AUPRC | duplicates | on junk | median abs d err | IoU>=0.6 | run time |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for key in ("suite", "apoferritin"):
        block = report.get(key)
        if not block:
            continue
        x = block["summary"]
        lines.append(
            f"| {key} | {x['n_micrographs']} | {x['n_reference']} | {x['n_picks']} | {_fmt(x['precision'])} | {_fmt(x['recall'])} | "
            f"{_fmt(x['f1'])} | {_fmt(x['auprc'])} | {x['duplicates']} ({_fmt(x['duplicate_rate'], True)}) | {_junk(x)} | "
            f"{_fmt(x['median_diameter_error'], True)} | {_fmt(x['iou_rate'], True)} | {block['run']['seconds']:.0f} s |"
        )
    lines += ["", "All candidates (rejected picks included: what the detector found before the filters):", "",
              "| dataset | candidates | recall | precision | AUPRC |", "|---|---|---|---|---|"]
    for key in ("suite", "apoferritin"):
        block = report.get(key)
        if block and block["run"].get("candidates"):
            c = block["run"]["candidates"]
            lines.append(f"| {key} | {c['n_picks']} | {_fmt(c['recall'])} | {_fmt(c['precision'])} | {_fmt(c['auprc'])} |")
    lines += ["", "## Simulated suite, per micrograph", "", "| micrograph | particles | picks | P | R | F1 | dup | junk | abs d err | scenario |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["suite"]["per_micrograph"]:
        lines.append(
            f"| {r['micrograph']} | {r['n_reference']} | {r['n_picks']} | {_fmt(r['precision'], digits=2)} | {_fmt(r['recall'], digits=2)} | "
            f"{_fmt(r['f1'], digits=2)} | {r['duplicates']} | {r['junk_picks']} | {_fmt(r['median_diameter_error'], True)} | {r['description']} |"
        )
    lines += ["", "## By particle kind (suite)", "", "| kind | n | recall | median abs d err |", "|---|---|---|---|"]
    for kind, e in s["per_kind"].items():
        lines.append(f"| {kind} | {e['n']} | {_fmt(e['recall'])} | {_fmt(e.get('median_diameter_error'), True)} |")
    if a:
        lines += ["", "## Apoferritin (EMPIAR-10146 sample, 4 PNG micrographs)", "",
                  f"Run with `{' '.join(APO_OVERRIDES)}` (the PNGs have no pixel size). Reference: "
                  "`reference_coords_derived.csv` (disk centroids, about ±2 px; a few edge particles unannotated).", ""]
        lines.append("| micrograph | particles | picks | P | R | F1 | dup | abs d err |")
        lines.append("|---|---|---|---|---|---|---|---|")
        for r in report["apoferritin"]["per_micrograph"]:
            lines.append(f"| {r['micrograph']} | {r['n_reference']} | {r['n_picks']} | {_fmt(r['precision'], digits=2)} | "
                         f"{_fmt(r['recall'], digits=2)} | {_fmt(r['f1'], digits=2)} | {r['duplicates']} | {_fmt(r['median_diameter_error'], True)} |")
    lines += ["", f"Machine: {report['machine']}; workers {report['workers']}.", ""]
    return "\n".join(lines)


def update_docs(md: str, doc: Path) -> None:
    """Replace the text between the quality markers of ``doc`` with ``md`` (headings demoted)."""
    begin, end = "<!-- quality:begin -->", "<!-- quality:end -->"
    text = doc.read_text()
    if begin not in text or end not in text:
        print(f"{doc}: no {begin} ... {end} markers; not updated", file=sys.stderr)
        return
    body = "\n".join(("#" + ln if ln.startswith("#") else ln) for ln in md.splitlines()[1:])
    new = text.split(begin)[0] + begin + "\n" + body.strip() + "\n" + end + text.split(end, 1)[1]
    doc.write_text(new)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="suite", choices=("suite", "mini"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", default="", help="comma-separated scene names (default: all)")
    ap.add_argument("--cache", default=os.environ.get("LIPOFRAME_BENCH_CACHE", "/tmp/lipoframe_bench"), help="folder for the simulated set and runs")
    ap.add_argument("--results", default=str(HERE / "results"), help="folder for quality.json / quality.md")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--no-apoferritin", action="store_true")
    ap.add_argument("--overlay", default="", help="also save overlay PNGs of these suite micrographs (comma-separated)")
    ap.add_argument("--update-docs", action="store_true", help="write the tables into docs/evaluation.md")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a config override for every run (repeatable), e.g. --set peel=true; such runs are not the benchmark result")
    args = ap.parse_args(argv)

    from lipoframe import __version__

    cache = Path(args.cache)
    only = [o for o in args.only.split(",") if o]
    suffix = f"{args.preset}_seed{args.seed}"
    t0 = time.perf_counter()
    info = write_suite(cache / suffix, preset=args.preset, seed=args.seed, progress=True)
    print(f"suite: {'reused' if info.reused else 'wrote'} {len(info.paths)} micrographs in {info.folder} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    import pandas as pd

    mics = pd.read_csv(info.micrographs_csv)
    descriptions = dict(zip(mics.micrograph, mics.description))
    inputs, truth = info.folder, info.truth()
    if only:
        unknown = sorted(set(only) - set(mics.micrograph))
        if unknown:
            ap.error(f"--only: unknown micrographs {unknown}; the suite has {', '.join(mics.micrograph)}")
        # run on links to the chosen files, in a folder of their own
        suffix += "_" + "_".join(only)
        inputs = cache / f"subset_{suffix}"
        inputs.mkdir(parents=True, exist_ok=True)
        for f in inputs.iterdir():
            f.unlink()
        for name in only:
            (inputs / f"{name}.mrc").symlink_to((info.folder / f"{name}.mrc").resolve())
        truth = truth[truth.micrograph.isin(only)]
    # Runs with overrides get folders of their own: run_suite_seed0_peel-true
    # (only characters a Hydra override value takes unquoted: no lists' brackets or commas).
    tag = "".join("_" + re.sub(r"[^A-Za-z0-9_.-]+", "-", o).strip("-") for o in args.set)
    suffix += tag
    ev, run = run_and_evaluate(inputs, truth, cache / f"run_{suffix}", overrides=tuple(args.set), workers=args.workers)
    report: dict = {
        "lipoframe": __version__, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "preset": args.preset, "seed": args.seed,
        "overrides": list(args.set),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}", "workers": args.workers,
        "suite": {"summary": ev.summary, "per_micrograph": per_mic_rows(ev, descriptions), "run": run},
    }
    empty = ev.per_micrograph.loc[ev.per_micrograph.micrograph == "empty", "n_picks"]
    values = {
        "suite_f1": ev.summary["f1"], "suite_duplicate_rate": ev.summary["duplicate_rate"],
        "suite_median_diameter_error": ev.summary["median_diameter_error"],
        "empty_picks": int(empty.iloc[0]) if len(empty) else None, "apoferritin_f1": None,
    }
    # Only the full suite with seed 0 is the benchmark result; other runs (their tables and overlays) go to the cache.
    full = args.preset == "suite" and not only and args.seed == 0 and not args.set
    results = Path(args.results) if full else cache / "results"
    results.mkdir(parents=True, exist_ok=True)
    for name in [o for o in args.overlay.split(",") if o]:
        import mrcfile

        img = mrcfile.read(info.folder / f"{name}.mrc")
        truth = ev.reference[ev.reference.micrograph.map(micrograph_key) == name]
        picks = ev.picks[ev.picks.micrograph.map(micrograph_key) == name]
        p = plot_overlay(img, truth, picks, results / f"overlay_{name}{'' if full else '_' + suffix}.png", title=f"{name}: {descriptions.get(name, '')}")
        print(f"overlay: {p}", file=sys.stderr)
    if not args.no_apoferritin and APO.is_dir():
        ev_apo, run_apo = run_and_evaluate(APO / "micrographs_filtered", APO / "reference_coords_derived.csv", cache / f"run_apoferritin{tag}",
                                           overrides=APO_OVERRIDES + tuple(args.set), workers=args.workers)
        report["apoferritin"] = {"summary": ev_apo.summary, "per_micrograph": per_mic_rows(ev_apo, {}), "run": run_apo, "overrides": list(APO_OVERRIDES + tuple(args.set))}
        values["apoferritin_f1"] = ev_apo.summary["f1"]
    elif not args.no_apoferritin:
        print(f"apoferritin sample not found at {APO}: skipped", file=sys.stderr)
    report["targets"] = {k: {"value": values[k], "op": op, "goal": goal, "pass": _passes(op, values[k], goal)} for k, (op, goal) in TARGETS.items()}

    stem = "quality" if full else f"quality_{suffix}"
    (results / f"{stem}.json").write_text(json.dumps(_clean(report), indent=2))
    md = markdown(_clean(report))
    (results / f"{stem}.md").write_text(md)
    print(md)
    if args.update_docs and full:
        update_docs(md, HERE.parent / "docs" / "evaluation.md")
    elif args.update_docs:
        print("--update-docs: only a full suite run updates the docs", file=sys.stderr)
    print(f"\nwrote {results / (stem + '.json')} and {results / (stem + '.md')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
