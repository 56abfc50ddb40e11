"""Could a better rule on lipoframe's own measurements pick better? A supervised ceiling.

lipoframe decides each candidate with hand-written rules (detector
thresholds, the refiner's edge test, the junk filters, the population
filter). This benchmark asks how far those rules are from the best decision
the same measurements allow: a gradient-boosted classifier (scikit-learn's
``HistGradientBoostingClassifier``) is **trained with the ground truth** of
some simulated suites (default seeds 0 and 1) on every candidate the
default picker refines (accepted and rejected rows, each micrograph picked
alone with ``pick()``), from the measurements lipoframe writes into its
tables, and then decides the candidates of other suites (default seeds 2
and 3) that it has never seen.

Measurements used (no decision columns, no coordinates): the detector's
``score``, the diameter in Å, the refiner's ``quality``, ``edge_contrast``,
``edge_coverage``, ``edge_width_px``, ``edge_roughness``,
``edge_step_snr``, ``edge_directions_used`` and recentring shift (relative
to the radius), the contamination filter's ``darkness`` and
``darkness_concentration``, the population filter's ``support`` and
``support_occupancy``, ``weak`` and ``retried``, and two facts about the
micrograph: its number of confident accepted picks and the pick's diameter
over their median.

A candidate counts as a particle for training when its centre lies within
0.3 diameters of a target particle's and its diameter within 15 % of it.
Both lipoframe's accepted picks and the classifier's are then scored by
``lipoframe.evaluate`` (one-to-one matching; duplicates are false picks).
The classifier is compared *at the same number of picks* as lipoframe on
each test suite (no threshold to choose) and at its best threshold in
hindsight (optimistic).

What it shows: where the supervised classifier does no better than the
rules, lipoframe's rules already use what these measurements know, and the
particles both miss need new evidence. It is a ceiling for these
measurements only, for these simulated scenes, and with labels a user does
not have; lipoframe does not use it.

Needs scikit-learn (not a lipoframe dependency)::

    pip install scikit-learn
    python benchmarks/ceiling.py [--train 0,1] [--test 2,3]

Writes ``benchmarks/results/ceiling.md`` and ``ceiling.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

HERE = Path(__file__).resolve().parent

from lipoframe.evaluate import evaluate  # noqa: E402
from lipoframe.runner import pick  # noqa: E402
from lipoframe.simulate import write_suite  # noqa: E402
from lipoframe.synthetic import JUNK_KINDS  # noqa: E402

#: Per-candidate measurements given to the classifier (see the docstring).
MEASUREMENTS = (
    "score", "diameter_A", "quality", "edge_contrast", "edge_coverage", "edge_width_px", "edge_roughness",
    "edge_step_snr", "edge_directions_used", "shift_rel", "darkness", "darkness_concentration", "support",
    "support_occupancy", "weak", "retried", "n_confident", "diameter_rel", "surround_darkness", "refined_narrow",
)


def candidates(seed: int, cache: Path, *, rim_blur_A: float = 0.0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every refined candidate of one suite (default ``pick()`` per micrograph) with its features and label.

    ``rim_blur_A``: the suite rendered with softer rims (``write_suite(rim_blur_A=...)``).
    """
    info = write_suite(cache / suite_folder(seed, rim_blur_A), preset="suite", seed=seed, rim_blur_A=rim_blur_A, progress=True)
    truth = info.truth()
    tables = []
    for path in info.paths:
        name = Path(path).stem
        with mrcfile.open(path, permissive=True) as f:
            image = np.asarray(f.data, dtype=np.float32)
            px = float(f.voxel_size.x)
        p = pick(image, pixel_size=px, name=name)
        confident = p["accepted"].to_numpy(bool) & ~p["weak"].to_numpy(bool)
        p["n_confident"] = int(confident.sum())
        median = float(np.median(p.loc[confident, "diameter_px"])) if confident.any() else np.nan
        p["diameter_rel"] = p["diameter_px"] / median
        p["shift_rel"] = p["refine_shift_px"] / (p["diameter_px"] / 2.0)
        targets = truth[(truth.micrograph == name) & ~truth.kind.isin(JUNK_KINDS)]
        label = np.zeros(len(p), dtype=bool)
        if len(targets) and len(p):
            dist, idx = cKDTree(targets[["x_px", "y_px"]].to_numpy()).query(p[["x_px", "y_px"]].to_numpy())
            d_true = targets["diameter_px"].to_numpy()[idx]
            label = (dist < 0.3 * d_true) & (np.abs(p["diameter_px"].to_numpy() / d_true - 1) < 0.15)
        p["particle"] = label
        p["seed"] = seed
        tables.append(p)
    return pd.concat(tables, ignore_index=True), truth


def suite_folder(seed: int, rim_blur_A: float = 0.0) -> str:
    """Cache folder name of a suite (the quality benchmark's ``suite_seedN``, ``_rimA`` with softer rims)."""
    return f"suite_seed{seed}" + (f"_rim{rim_blur_A:g}" if rim_blur_A else "")


def _counts(values: pd.Series) -> str:
    return ", ".join(f"{k} {int(v)}" for k, v in values.value_counts().items())


def features(table: pd.DataFrame) -> np.ndarray:
    cols = []
    for c in MEASUREMENTS:
        v = table[c] if c in table.columns else pd.Series(np.nan, index=table.index)
        cols.append(pd.to_numeric(v, errors="coerce").astype(float).to_numpy())
    return np.stack(cols, axis=1)


def scores(picks: pd.DataFrame, truth: pd.DataFrame, chosen: np.ndarray) -> dict:
    s = evaluate(picks.assign(accepted=chosen), truth).summary
    return {k: s[k] for k in ("n_picks", "tp", "fp", "fn", "precision", "recall", "f1")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train", default="0,1", help="seeds of the training suites")
    ap.add_argument("--test", default="2,3", help="seeds of the test suites")
    ap.add_argument("--cache", default=os.environ.get("LIPOFRAME_BENCH_CACHE", "/tmp/lipoframe_bench"))
    ap.add_argument("--results", default=str(HERE / "results"))
    args = ap.parse_args(argv)
    try:
        from sklearn.ensemble import HistGradientBoostingClassifier
        from sklearn.inspection import permutation_importance
    except ImportError:
        ap.error("needs scikit-learn: pip install scikit-learn")
    t0 = time.perf_counter()
    train_seeds = [int(s) for s in args.train.split(",")]
    test_seeds = [int(s) for s in args.test.split(",")]
    if set(train_seeds) & set(test_seeds):
        ap.error("--train and --test must not share a seed")
    cache = Path(args.cache)
    train = pd.concat([candidates(s, cache)[0] for s in train_seeds], ignore_index=True)
    model = HistGradientBoostingClassifier(max_iter=300, learning_rate=0.05, max_depth=4, random_state=0)
    model.fit(features(train), train["particle"].to_numpy())
    rows, gained = [], []
    for seed in test_seeds:
        test, truth = candidates(seed, cache)
        prob = model.predict_proba(features(test))[:, 1]
        accepted = test["accepted"].to_numpy(bool)
        order = np.argsort(-prob, kind="stable")
        same = np.zeros(len(test), dtype=bool)
        same[order[: int(accepted.sum())]] = True
        best = max(
            (scores(test, truth, prob >= t) | {"threshold": float(t)} for t in np.round(np.arange(0.05, 0.96, 0.05), 2)),
            key=lambda r: r["f1"],
        )
        rows.append({"seed": seed, "lipoframe": scores(test, truth, accepted), "classifier_same_count": scores(test, truth, same),
                     "classifier_best": best})
        gained.append(test.assign(chosen=same))
        print(f"seed {seed}: lipoframe F1 {rows[-1]['lipoframe']['f1']:.3f}, classifier (same number of picks) "
              f"{rows[-1]['classifier_same_count']['f1']:.3f}, best in hindsight {best['f1']:.3f}", file=sys.stderr)
    both = pd.concat(gained, ignore_index=True)
    extra = both[both["chosen"] & ~both["accepted"] & both["particle"]]
    dropped = both[~both["chosen"] & both["accepted"] & ~both["particle"]]
    imp = permutation_importance(model, features(both), both["particle"].to_numpy(), n_repeats=3, random_state=0,
                                 scoring="average_precision")
    importance = sorted(zip(imp.importances_mean.tolist(), MEASUREMENTS), reverse=True)
    lines = [
        "# Supervised ceiling on lipoframe's measurements", "",
        f"`python benchmarks/ceiling.py --train {args.train} --test {args.test}` ({time.perf_counter() - t0:.0f} s). "
        f"A gradient-boosted classifier trained with the ground truth of suites {args.train} on every refined candidate's "
        f"measurements ({len(train)} candidates), deciding the candidates of suites {args.test} (see the script's docstring).", "",
        "| test suite | picker | picks | precision | recall | F1 |", "|---|---|---|---|---|---|",
    ]
    for r in rows:
        for key, label in (("lipoframe", "lipoframe (default rules)"), ("classifier_same_count", "classifier, same number of picks"),
                           ("classifier_best", f"classifier, best threshold in hindsight ({r['classifier_best']['threshold']:.2f})")):
            s = r[key]
            lines.append(f"| seed {r['seed']} | {label} | {s['n_picks']} | {s['precision']:.3f} | {s['recall']:.3f} | **{s['f1']:.3f}** |")
    lines += [
        "",
        f"At the same number of picks the classifier accepts {len(extra)} particle candidates lipoframe rejects "
        f"(by lipoframe's reason: {_counts(extra['reject_reason'])}) and rejects {len(dropped)} false picks "
        f"lipoframe accepts (by micrograph: {_counts(dropped['micrograph'])}).",
        "",
        "Permutation importance (drop in average precision on the test candidates): "
        + ", ".join(f"`{n}` {v:.3f}" for v, n in importance[:8]) + ".",
    ]
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ceiling.md").write_text("\n".join(lines) + "\n")
    (out / "ceiling.json").write_text(json.dumps({"train": train_seeds, "test": test_seeds, "results": rows,
                                                   "importance": {n: v for v, n in importance}}, indent=1))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
