"""Speed and memory of the hot/dead pixel search (``lipoframe.algorithms.outliers``).

Times :func:`~lipoframe.algorithms.outliers.isolated_outliers` on 4096²
float32 micrographs (background 50 ± 1, seeded) with and without hot/dead
pixels, a 200 px zero border and large regions beyond the bounds (ice), as
docs/speed.md "Hot and dead pixels" reports: the best of ``--repeat`` calls,
and the peak of the allocations in one more call (tracemalloc). It also
prints how many pixels each search found, so that two versions of lipoframe
can be compared on the same micrographs::

    python benchmarks/outliers.py                              # this checkout
    PYTHONPATH=/path/to/other/checkout python benchmarks/outliers.py --no-save

Writes ``benchmarks/results/outliers.md`` (unless ``--no-save``). Timings
depend on the machine and its load: run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import platform
import time
import tracemalloc
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
SIZE = 4096


def _with_spikes(image: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``image`` with ``n`` single pixels set far above (odd) or below (even) the background, away from the border."""
    out = image.copy()
    rng = np.random.default_rng(seed)
    rows, cols = rng.integers(300, SIZE - 300, n), rng.integers(300, SIZE - 300, n)
    out[rows, cols] = np.where(np.arange(n) % 2, 5000.0, -4000.0)
    return out


def _with_border(image: np.ndarray, width: int = 200) -> np.ndarray:
    out = image.copy()
    out[:width], out[-width:], out[:, :width], out[:, -width:] = 0, 0, 0, 0
    return out


def _with_ice(image: np.ndarray) -> np.ndarray:
    out = image.copy()
    yy, xx = np.ogrid[:SIZE, :SIZE]
    for r, c in ((800, 800), (800, 3000), (2000, 2000), (3200, 900), (3300, 3300)):
        out[(yy - r) ** 2 + (xx - c) ** 2 < 250**2] = -1000.0
    return out


def cases() -> dict[str, np.ndarray]:
    """The micrographs timed, by the name docs/speed.md gives them."""
    base = (np.random.default_rng(0).normal(size=(SIZE, SIZE)) + 50).astype(np.float32)
    border = _with_border(base)
    return {
        "no hot pixels": base,
        "20 hot/dead pixels": _with_spikes(base, 20, seed=1),
        "200 hot/dead pixels": _with_spikes(base, 200, seed=2),
        "200 px zero border": border,
        "zero border + 20 hot/dead pixels": _with_spikes(border, 20, seed=1),
        "5 ice discs of 500 px beyond the bound": _with_ice(base),
    }


def measure(image: np.ndarray, repeat: int) -> tuple[float, float, int]:
    """(best seconds of ``repeat`` calls, peak MiB allocated in one call, pixels found)."""
    from lipoframe.algorithms.outliers import isolated_outliers

    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        rows, _, _ = isolated_outliers(image)
        times.append(time.perf_counter() - t0)
    tracemalloc.start()
    try:
        isolated_outliers(image)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return min(times), peak / 2**20, int(rows.size)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="calls timed per micrograph (the best is kept)")
    parser.add_argument("--no-save", action="store_true", help="print only; do not write benchmarks/results/outliers.md")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")

    import os

    import lipoframe

    print(f"lipoframe from {Path(lipoframe.__file__).parent}")
    lines = ["| micrograph | seconds (best) | peak MiB | pixels found |", "| --- | --- | --- | --- |"]
    for name, image in cases().items():
        seconds, mib, found = measure(image, args.repeat)
        lines.append(f"| {name} | {seconds:.3f} | {mib:.1f} | {found} |")
        print(lines[-1], flush=True)
    machine = f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}"
    text = "\n".join([
        "# Hot/dead pixel search, 4096² float32 (`python benchmarks/outliers.py`)", "",
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} · best of {args.repeat} · {machine}", "",
        *lines, "",
    ])
    if not args.no_save:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "outliers.md").write_text(text)
        print(f"wrote {RESULTS / 'outliers.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
