"""Cost of the binned levels a default run asks a micrograph for (``Micrograph.signal``).

For a 4096² (1 Å/px) and a 5760x4092 (1.06 Å/px, K3) float32 MRC, memory-mapped
as the reader gives it, with lipoframe's default ``dmin``/``dmax``:

* the factors a run asks for, in its order, are found by tracing one
  ``pick`` of the image (``check_image`` first, then the detector's levels,
  the refiner's and the filters'), and the factors the detector alone asks
  for, in the polarity check's order (it reads the file again);
* each order is timed on a fresh memory-mapped micrograph (least of
  ``--repeat`` CPU seconds, as the machine may be shared; the file is in the
  page cache after the first),
  with the peak of numpy's allocations (``tracemalloc``) and the number of
  passes over the file (calls of ``block_mean`` on the memory map);
* ``from image``: the same levels each binned from the file itself, the other
  way to make a level independent of the order (for comparison).

    python benchmarks/signal_levels.py --repeat 5
"""

from __future__ import annotations

import argparse
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

from lipoframe import records
from lipoframe.records import Micrograph, MicrographMeta

SHAPES = {"4096x4096": ((4096, 4096), 1.0), "5760x4092": ((4092, 5760), 1.06)}


def write_mrc(path: Path, shape, pixel_size: float) -> None:
    import mrcfile

    rng = np.random.default_rng(0)
    with mrcfile.new(str(path), overwrite=True) as mrc:
        mrc.set_data((1000.0 + 30.0 * rng.standard_normal(shape)).astype(np.float32))
        mrc.voxel_size = pixel_size


def asked_factors(image: np.ndarray, pixel_size: float) -> tuple[list[int], list[int]]:
    """The factors a default ``pick`` of ``image`` asks for first, in order; and those of its detector alone."""
    from lipoframe.runner import pick

    asked: list[int] = []
    signal = records.Micrograph.signal

    def traced(self, factor=1):
        if int(factor) not in self._cache and self._parent is None:
            asked.append(int(factor))
        return signal(self, factor)

    records.Micrograph.signal = traced
    try:
        pick(image, pixel_size=pixel_size, filters=())
        run = list(asked)
        asked.clear()
        from lipoframe import plugins
        from lipoframe.records import PickContext

        _, registry, _ = plugins.load()
        detector = registry.build(registry.get("detector", "edge").cls.Params())
        mic = Micrograph(meta=MicrographMeta("m", "", image.shape, pixel_size), image=image)
        detector.detect(mic, PickContext(dmin_px=150.0 / pixel_size, dmax_px=500.0 / pixel_size))
        return run, list(asked)
    finally:
        records.Micrograph.signal = signal


def measure(path: Path, factors: list[int], *, from_image: bool, repeat: int) -> tuple[float, float, int]:
    """(least CPU seconds, peak MiB allocated, passes over the file) of ``signal(f)`` for ``factors`` in order."""
    import mrcfile

    best, peak, passes = np.inf, 0.0, 0
    block_mean = records.block_mean
    for _ in range(repeat):
        with mrcfile.mmap(str(path), mode="r") as m:
            image = m.data
            mic = Micrograph(meta=MicrographMeta("m", str(path), image.shape, 1.0), image=image)
            count = [0]

            def counted(a, factor, **kw):
                count[0] += a is image
                return block_mean(a, factor, **kw)

            records.block_mean = counted
            try:
                mic.level  # the typical level is not what is measured
                tracemalloc.start()
                t0 = time.process_time()
                for f in factors:
                    if from_image:
                        counted(image, f, offset=mic.level)
                    else:
                        mic.signal(f)
                t = time.process_time() - t0
                peak = max(peak, tracemalloc.get_traced_memory()[1] / 2**20)
                tracemalloc.stop()
            finally:
                records.block_mean = block_mean
            best, passes = min(best, t), count[0]
    return best, peak, passes


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)
    print("| micrograph | order | factors | CPU s | peak MiB | passes over the file |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for label, (shape, px) in SHAPES.items():
            path = Path(tmp) / f"{label}.mrc"
            write_mrc(path, shape, px)
            import mrcfile

            with mrcfile.mmap(str(path), mode="r") as m:
                run, detector = asked_factors(np.array(m.data), px)
            for order, factors, from_image in (("run", run, False), ("detector alone", detector, False),
                                               ("run, from image", run, True)):
                t, peak, passes = measure(path, factors, from_image=from_image, repeat=args.repeat)
                print(f"| {label} | {order} | {', '.join(map(str, factors))} | {t:.3f} | {peak:.1f} | {passes} |")


if __name__ == "__main__":
    main()
