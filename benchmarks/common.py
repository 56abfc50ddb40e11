"""Helpers shared by the benchmark scripts: default config, run + evaluate, overlays."""

from __future__ import annotations

import contextlib
import sys
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

    The run and its evaluation hold a lock on ``run_dir`` (the file
    ``run_dir.lock`` beside it): two benchmarks started at once with the same
    cache (two clones, or runs by hand) take turns, so each evaluates its own
    picks and the folder never mixes two runs. (The run's STAR files name
    the folder, so it is not written elsewhere and moved.) The run itself
    holds :func:`lipoframe.runner.folder_lock` inside the folder, which
    refuses a second writer rather than waiting and is let go before the
    evaluation reads the picks: without this lock the second benchmark
    failed ("another lipoframe run ... is writing"), or rewrote the folder
    while the first was reading it.

    Returns
    -------
    result : EvaluationResult
    run : dict
        ``seconds`` (wall time of the run), ``micrographs``, ``failed`` and
        ``candidates``: n_picks, recall, precision and AUPRC over all picks
        including rejected ones (how much the detector found before filtering).
    """
    run_dir = Path(run_dir)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    with _locked(run_dir.with_name(run_dir.name + ".lock")):
        return _run_and_evaluate(inputs, reference, run_dir, overrides=overrides, workers=workers, **evaluate_kw)


@contextlib.contextmanager
def _locked(path: Path):
    """Hold an exclusive lock on the file ``path`` (waits for another holder; no lock where ``fcntl`` is missing)."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock
        yield
        return
    with open(path, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another benchmark's run in {path.with_suffix('')} ...", file=sys.stderr)
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _run_and_evaluate(inputs, reference, run_dir: Path, *, overrides, workers, **evaluate_kw) -> tuple[EvaluationResult, dict]:
    from lipoframe.runner import run_pipeline

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
