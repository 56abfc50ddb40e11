"""What does a diameter mean on the apoferritin sample? The radial profile behind the 21 % "error".

lipoframe's diameters on the real apoferritin sample are about 21 % larger
than the reference's (``benchmarks/quality.py``). The reference disks were
drawn by hand; lipoframe places the rim at the outer edge of the particle.
This script measures, from the micrographs alone, where the edges are:

1. the mean radial profile of the sample's ``single`` reference particles
   (those whose disk was drawn alone and lies wholly inside the image),
   sampled around the reference centres (``lipoframe.algorithms.radial.
   polar_samples``, 0.25 px steps, 96 directions);
2. on it: the darkest radius (the protein shell in projection), the
   steepest fall from the light centre into the ring (inner edge of the
   shell), the steepest rise from the ring to the background (outer edge),
   and the brightest radius of the defocus halo beyond;
3. the ratio of the outer to the inner edge, against apoferritin's
   outer/inner diameter of 12/8 nm = 1.5 (ferritin's 24-mer shell);
4. beside them: the reference disks' median diameter and lipoframe's median
   diameter on the same micrographs (a default run, ``APO_OVERRIDES`` of
   ``quality.py``).

This is a reading of the profile, not a calibration: the pixel size of the
PNGs is unknown, and the CTF and EMAN2's filter shape the profile too.

Usage::

    python benchmarks/apoferritin_profile.py      # ~10 s; needs ../shared
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import run_and_evaluate  # noqa: E402
from quality import APO, APO_OVERRIDES  # noqa: E402

from lipoframe.algorithms.radial import polar_samples  # noqa: E402
from lipoframe.algorithms.stats import parabola_offset  # noqa: E402
from lipoframe.plugins import read_array  # noqa: E402

#: Apoferritin's outer / inner shell diameter (12 nm / 8 nm).
SHELL_RATIO = 1.5


def mean_profile(image: np.ndarray, rows: np.ndarray, cols: np.ndarray, *, r_max: float = 60.0, step: float = 0.25) -> tuple[np.ndarray, np.ndarray]:
    """Mean radial profile (particles dark, image in units of its standard deviation) around many centres."""
    z = (image - image.mean()) / image.std()
    n_radii = int(round(r_max / step)) + 1
    samples, _, rho = polar_samples(z, rows, cols, np.full(len(rows), r_max), n_angles=96, n_radii=n_radii, rho_max=1.0)
    return rho * r_max, samples.mean(axis=(0, 1))


def _peak(x: np.ndarray, y: np.ndarray, i: int, *, minimum: bool = False) -> float:
    """Sub-sample position of the maximum (or ``minimum``) of ``y`` at index ``i``, in units of ``x``."""
    if not 0 < i < len(y) - 1:
        return float(x[i])
    sign = -1.0 if minimum else 1.0
    return float(x[i] + parabola_offset(sign * y[i - 1], sign * y[i], sign * y[i + 1]) * (x[1] - x[0]))


def edges(radius: np.ndarray, profile: np.ndarray) -> dict:
    """Darkest radius, steepest inner fall, steepest outer rise and brightest halo of a dark-ring profile."""
    grad = np.gradient(profile, radius)
    dark = int(np.argmin(np.where(radius > 5, profile, np.inf)))
    # (the centre, r < 8 px, is left out: its few samples make a noisy gradient)
    inner = int(np.argmin(np.where((radius > 8) & (radius < radius[dark]), grad, np.inf)))
    outer = int(np.argmax(np.where(radius > radius[dark], grad, -np.inf)))
    halo = int(np.argmax(np.where(radius > radius[outer], profile, -np.inf)))
    return {
        "darkest_r": _peak(radius, profile, dark, minimum=True),
        "inner_edge_r": _peak(radius, grad, inner, minimum=True),
        "outer_edge_r": _peak(radius, grad, outer),
        "halo_r": _peak(radius, profile, halo),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", default="/tmp/lipoframe_bench")
    ap.add_argument("--results", default=str(HERE / "results"))
    args = ap.parse_args(argv)
    if not APO.is_dir():
        print(f"apoferritin sample not found at {APO}: nothing to measure")
        return 0
    t0 = time.perf_counter()
    ref = pd.read_csv(APO / "reference_coords_derived.csv")
    per_mic = []
    for name, group in ref.query("kind == 'single'").groupby("micrograph"):
        image = read_array(APO / "micrographs_filtered" / name).astype(float)
        m, n = image.shape
        inside = group[(group.x_px > 60) & (group.x_px < n - 61) & (group.y_px > 60) & (group.y_px < m - 61)]
        radius, prof = mean_profile(image, inside.y_px.to_numpy(), inside.x_px.to_numpy())
        per_mic.append({"micrograph": name, "particles": len(inside), "profile": prof, **edges(radius, prof)})
    weights = np.array([p["particles"] for p in per_mic], float)
    pooled = np.average(np.stack([p["profile"] for p in per_mic]), axis=0, weights=weights)
    summary = edges(radius, pooled)
    summary["outer_over_inner"] = summary["outer_edge_r"] / summary["inner_edge_r"]
    summary["reference_median_diameter"] = float(ref.query("kind == 'single'").diameter_px.median())
    ev, _ = run_and_evaluate(APO / "micrographs_filtered", APO / "reference_coords_derived.csv", Path(args.cache) / "run_apoferritin_profile", overrides=APO_OVERRIDES)
    matched = ev.picks[ev.picks.status == "tp"]
    summary["lipoframe_median_diameter"] = float(matched.diameter_px.median())
    summary["particles"] = int(weights.sum())
    seconds = time.perf_counter() - t0

    rows = [
        ("darkest radius (the shell in projection)", summary["darkest_r"]),
        ("steepest fall into the ring (inner edge of the shell)", summary["inner_edge_r"]),
        ("steepest rise out of the ring (outer edge of the shell)", summary["outer_edge_r"]),
        ("brightest radius beyond (defocus halo)", summary["halo_r"]),
    ]
    lines = [
        "# What a diameter means on the apoferritin sample",
        "",
        f"`python benchmarks/apoferritin_profile.py` ({seconds:.0f} s). Mean radial profile of the {summary['particles']} "
        "`single` reference particles wholly inside the image, around the reference centres (see the script's docstring).",
        "",
        "| on the mean profile | radius (px) | as a diameter (px) |",
        "| --- | --- | --- |",
        *[f"| {label} | {r:.1f} | {2 * r:.1f} |" for label, r in rows],
        f"| reference disks (median, `single`) | | {summary['reference_median_diameter']:.1f} |",
        f"| lipoframe (median of matched picks, defaults `{' '.join(APO_OVERRIDES)}`) | | {summary['lipoframe_median_diameter']:.1f} |",
        "",
        f"Outer edge / inner edge: **{summary['outer_over_inner']:.2f}** (apoferritin's shell: 12 nm / 8 nm = {SHELL_RATIO}).",
        "",
        "Per micrograph:",
        "",
        "| micrograph | particles | darkest r | inner edge r | outer edge r | outer / inner |",
        "| --- | --- | --- | --- | --- | --- |",
        *[f"| {p['micrograph']} | {p['particles']} | {p['darkest_r']:.1f} | {p['inner_edge_r']:.1f} | {p['outer_edge_r']:.1f} | "
          f"{p['outer_edge_r'] / p['inner_edge_r']:.2f} |" for p in per_mic],
        "",
    ]
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    (out / "apoferritin_profile.md").write_text("\n".join(lines))
    record = {"summary": summary, "per_micrograph": [{k: v for k, v in p.items() if k != "profile"} for p in per_mic],
              "radius_px": radius.tolist(), "mean_profile": pooled.tolist(), "seconds": seconds}
    (out / "apoferritin_profile.json").write_text(json.dumps(record, indent=1))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
