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
    """Save a PNG of a micrograph with truth and evaluated picks (see :func:`lipoframe.evaluate.plot_evaluation`)."""
    from lipoframe.evaluate import plot_evaluation

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return plot_evaluation(image, truth, picks, path, title=title, crop=crop)
