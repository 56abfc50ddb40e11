"""Helpers shared by the benchmark scripts: default config, run + evaluate, overlays."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from lipoframe.evaluate import EvaluationResult, evaluate, read_picks, read_reference


def compose_config(overrides: list[str]):
    """The validated run config ``lipoframe run <overrides>`` would use (defaults otherwise)."""
    from hydra import compose, initialize_config_dir

    from lipoframe.app import prepare_hydra
    from lipoframe.config import config_dir, to_run_config

    prepare_hydra()
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir()), job_name="benchmark"):
        cfg = compose("config", overrides=overrides)
    return to_run_config(cfg)


def run_and_evaluate(
    inputs: str | Path,
    reference: str | Path | pd.DataFrame,
    run_dir: str | Path,
    *,
    overrides: tuple[str, ...] = (),
    workers: int = 1,
    **evaluate_kw,
) -> tuple[EvaluationResult, dict]:
    """Run lipoframe (default parameters plus ``overrides``) and evaluate its picks.

    Resume is off so the current code always runs; the HTML report is off
    (it does not change picks).

    Returns
    -------
    result : EvaluationResult
    run : dict
        ``seconds`` (wall time of the run), ``micrographs``, ``failed`` and
        ``candidates``: n_picks, recall, precision and AUPRC over all picks
        including rejected ones (how much the detector found before filtering).
    """
    from lipoframe.runner import run_pipeline

    run_dir = Path(run_dir)
    cfg = compose_config([
        f"input={inputs}", f"output={run_dir}", f"runner.workers={workers}",
        "runner.resume=false", "runner.progress=false", "runner.report=false", *overrides,
    ])
    t0 = time.perf_counter()
    res = run_pipeline(cfg, run_dir)
    seconds = time.perf_counter() - t0
    picks, names = read_picks(run_dir)
    ref = reference if isinstance(reference, pd.DataFrame) else read_reference(reference)
    ev = evaluate(picks, ref, micrographs=names, **evaluate_kw)
    # All candidates, rejected ones included: what the detector found before the filters.
    every = evaluate(picks, ref, micrographs=names, **{**evaluate_kw, "include_rejected": True}).summary
    info = {
        "seconds": round(seconds, 2), "micrographs": len(res.results), "failed": [f.error.splitlines()[0] for f in res.failed],
        "candidates": {k: every[k] for k in ("n_picks", "recall", "auprc", "precision")},
    }
    return ev, info


def plot_overlay(image: np.ndarray, truth: pd.DataFrame, picks: pd.DataFrame, path: str | Path, *, title: str = "", crop=None) -> Path:
    """Save a PNG: the micrograph with truth circles and evaluated picks.

    Truth particles: green (matched) or yellow dashed (missed); ice/junk: red
    (carbon tiles faint red).
    Picks (``status`` from :func:`lipoframe.evaluate.evaluate`): cyan = tp,
    magenta = duplicate, red = on junk, orange = other false positive.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Circle

    r0, c0 = 0, 0
    if crop is not None:
        (r0, r1), (c0, c1) = crop
        image = image[r0:r1, c0:c1]
    lo, hi = np.percentile(image, [0.5, 99.5])
    h, w = image.shape
    fig, ax = plt.subplots(figsize=(10, 10 * h / w))
    ax.imshow(image, cmap="gray", vmin=lo, vmax=hi)
    for r in truth.itertuples():
        junk = str(r.kind) in ("ice", "junk", "carbon", "contamination")
        matched = bool(getattr(r, "matched", True))
        color = "red" if junk else ("lime" if matched else "yellow")
        alpha = 0.25 if str(r.kind) == "carbon" else 1.0
        ax.add_patch(Circle((r.x_px - c0, r.y_px - r0), r.diameter_px / 2, fill=False, color=color, lw=1.0, alpha=alpha,
                            ls="-" if matched or junk else "--"))
    colors = {"tp": "cyan", "duplicate": "magenta", "junk": "red", "fp": "orange"}
    for p in picks.itertuples():
        color = colors.get(getattr(p, "status", "tp"), "orange")
        ax.plot(p.x_px - c0, p.y_px - r0, "+", color=color, ms=6, mew=1.2)
        if hasattr(p, "diameter_px"):
            ax.add_patch(Circle((p.x_px - c0, p.y_px - r0), p.diameter_px / 2, fill=False, color=color, lw=0.8, ls=":"))
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.set_axis_off()
    ax.set_title(title or "truth: green matched / yellow missed / red ice+junk; picks: cyan tp, magenta duplicate, orange fp")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
