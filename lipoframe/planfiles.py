"""Dataset-level plan outputs written next to the picks.

:func:`write_plan_files` runs after the writers (so it can point at the
coordinate files they made) and writes:

``sizes.csv``
    the diameter histogram: edges in px and Å, picks per histogram bin
    (binned and flagged ``binning_outlier``), the smoothed curve, and the
    extraction bin each histogram bin falls in;
``size_histogram.png``
    that histogram with the smoothed curve, bin edges and box sizes, axes in
    px and nm;
``extraction_plan.json``
    the plan (:meth:`ExtractionPlan.to_dict`) plus the coordinate files of
    each bin;
``extraction_plan.md``
    the same for people: per bin the diameter range, count, box, mask, the
    coordinate files to use and, when the RELION writer is installed, the
    extraction command.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from lipoframe import schema
from lipoframe.algorithms.binning import histogram_edges, smooth_histogram
from lipoframe.io.atomic import atomic_path, resolve_all, safe_child, write_text
from lipoframe.plan import OUTLIER_REASON, ExtractionPlan, _json_default, format_range
from lipoframe.plots import bin_color, memo_png

log = logging.getLogger("lipoframe")

#: Folder (below the output) where writers put one coordinate set per size bin.
BINS_DIR = "bins"
#: Histogram bin width (px) when the plan does not name one.
DEFAULT_HIST_WIDTH_PX = 12.0
#: Files listed per bin in extraction_plan.md before "... and N more".
MAX_LISTED = 12


# ---------------------------------------------------------------------------
# Histogram table
# ---------------------------------------------------------------------------
def _hist_settings(plan: ExtractionPlan, d: np.ndarray) -> tuple[float, float]:
    h = plan.details.get("histogram") or {}
    width = float(h.get("bin_width_px") or 0.0)
    sigma = float(h.get("smooth_sigma_bins", 1.0))
    if not width > 0:
        width = DEFAULT_HIST_WIDTH_PX
        span = float(d.max() - d.min()) if d.size else 0.0
        if 0 < span < 15 * width:  # small particles / few pixels: keep ~15+ bars
            width = max(span / 15.0, 0.5)
    return width, sigma


def _binned_and_outliers(picks: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Diameters (px) and 0-based bins of picks in a size bin, and diameters of size outliers."""
    if len(picks) == 0 or schema.DIAMETER not in picks.columns:
        return np.empty(0), np.empty(0, dtype=np.int64), np.empty(0)
    d = picks[schema.DIAMETER].to_numpy(dtype=float)
    accepted = picks[schema.ACCEPTED].to_numpy(dtype=bool) if schema.ACCEPTED in picks.columns else np.ones(len(d), bool)
    size_bin = picks[schema.SIZE_BIN].to_numpy(dtype=np.int64) if schema.SIZE_BIN in picks.columns else np.zeros(len(d), np.int64)
    binned = accepted & (size_bin >= 0)
    out = np.zeros(len(d), bool)
    if schema.REASON in picks.columns:
        out = ~accepted & (picks[schema.REASON].astype(str).to_numpy() == OUTLIER_REASON)
    return d[binned], size_bin[binned], d[out]


def size_histogram_table(plan: ExtractionPlan, picks: pd.DataFrame) -> pd.DataFrame:
    """The histogram behind ``sizes.csv`` and ``size_histogram.png``.

    Returns
    -------
    DataFrame
        One row per histogram bin: ``d_lo_px``, ``d_hi_px``, ``d_lo_A``,
        ``d_hi_A`` (empty without a pixel size), ``count`` (picks in a size
        bin), ``outliers`` (picks flagged ``binning_outlier``), ``smoothed``
        (Gaussian-smoothed ``count + outliers``, as the policy sees it) and
        ``bin1``, ``bin2``, ... (picks of each extraction bin).
    """
    d, size_bin, outl = _binned_and_outliers(picks)
    both = np.r_[d, outl]
    bin_cols = [b.label for b in plan.bins]
    cols = ["d_lo_px", "d_hi_px", "d_lo_A", "d_hi_A", "count", "outliers", "smoothed"] + bin_cols
    if both.size == 0:
        return pd.DataFrame({c: pd.Series(dtype="float64" if c.startswith(("d_", "smoothed")) else "int64") for c in cols})
    width, sigma = _hist_settings(plan, both)
    edges = histogram_edges(both, bin_width=width)
    count, _ = np.histogram(d, bins=edges)
    outliers, _ = np.histogram(outl, bins=edges)
    px = plan.pixel_size
    table = {
        "d_lo_px": edges[:-1],
        "d_hi_px": edges[1:],
        "d_lo_A": edges[:-1] * px if px else np.nan,
        "d_hi_A": edges[1:] * px if px else np.nan,
        "count": count.astype(np.int64),
        "outliers": outliers.astype(np.int64),
        "smoothed": smooth_histogram(count + outliers, sigma_bins=sigma),
    }
    for b in plan.bins:
        table[b.label] = np.histogram(d[size_bin == b.index], bins=edges)[0].astype(np.int64)
    return pd.DataFrame(table, columns=cols)


# ---------------------------------------------------------------------------
# Plot
# ---------------------------------------------------------------------------
def plot_size_histogram(plan: ExtractionPlan, picks: pd.DataFrame, ax=None, *, table: pd.DataFrame | None = None):
    """Draw the size histogram with smoothed curve, bin edges and box sizes.

    Parameters
    ----------
    plan : ExtractionPlan
    picks : DataFrame or None
        The binned table (``diameter_px``, ``accepted``, ``size_bin``); not read when ``table`` is given.
    ax : matplotlib Axes, optional
        Draw here; default: a new Agg figure.
    table : DataFrame, optional
        A precomputed :func:`size_histogram_table`.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.figure import Figure

    if ax is None:
        fig = Figure(figsize=(9, 4.8), dpi=110)
        fig.subplots_adjust(left=0.08, right=0.98, bottom=0.11, top=0.82)
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    t = size_histogram_table(plan, picks) if table is None else table
    px = plan.pixel_size
    n_out = int(t["outliers"].sum()) if len(t) else 0
    title = f"{plan.policy}: {plan.n_accepted} picks in {plan.n_bins} bin{'s' if plan.n_bins != 1 else ''}"
    if n_out:
        title += f", {n_out} size outliers"
    ax.set_title(title)
    ax.set_xlabel("diameter (px)")
    ax.set_ylabel("picks per histogram bin")
    if len(t) == 0:
        ax.text(0.5, 0.5, "no picks", transform=ax.transAxes, ha="center", va="center", fontsize=14, color="0.4")
        return fig
    left = t["d_lo_px"].to_numpy()
    width = (t["d_hi_px"] - t["d_lo_px"]).to_numpy()
    bottom = np.zeros(len(t))
    # Only the non-empty bars are drawn (each bar is an artist: drawing is the slow part).
    for b in plan.bins:
        h = t[b.label].to_numpy() if b.label in t.columns else np.zeros(len(t))
        nz = h > 0
        ax.bar(left[nz], h[nz], width=width[nz], bottom=bottom[nz], align="edge", color=bin_color(b.index),
               alpha=0.8, edgecolor="white", linewidth=0.4)
        bottom = bottom + h
    if n_out:
        nz = t["outliers"].to_numpy() > 0
        ax.bar(left[nz], t["outliers"].to_numpy()[nz], width=width[nz], bottom=t["count"].to_numpy()[nz], align="edge", color="0.75",
               hatch="///", edgecolor="0.45", linewidth=0.4, label="rejected: size outlier")
    centers = left + width / 2
    ax.plot(centers, t["smoothed"], color="black", lw=1.6, label="smoothed")
    ymax = float(max((t["count"] + t["outliers"]).max(), t["smoothed"].max(), 1))
    # bin labels: a label goes to the first row where it clears the last label of that row
    span = float(t["d_hi_px"].iloc[-1] - t["d_lo_px"].iloc[0]) or 1.0
    centers_x = [(b.d_min_px + b.d_max_px) / 2 for b in plan.bins]
    last: list[float] = []
    rows = []
    for c in centers_x:
        free = [r for r, x in enumerate(last) if c - x >= 0.14 * span]
        r = free[0] if free else len(last)
        if r == len(last):
            last.append(c)
        last[r] = c
        rows.append(r)
    crowded = len(last) > 1
    top = 1.32 + 0.36 * (len(last) - 1)
    ax.set_ylim(0, ymax * top)
    for i, b in enumerate(plan.bins):
        color = bin_color(b.index)  # the same colour per bin as the overlays and the report
        ax.axvspan(b.d_min_px, b.d_max_px, color=color, alpha=0.07, lw=0)
        for x in (b.d_min_px, b.d_max_px):
            ax.axvline(x, color="0.25", ls="--", lw=0.9)
        label = f"bin {b.index + 1}\nbox {b.box_px} px"
        if b.mask_diameter_A is not None:
            label += f"\nmask {b.mask_diameter_A:.0f} Å"
        y = ymax * (top - 0.04 - 0.36 * rows[i])
        # dark text framed in the bin's colour: the light colours (yellow, sky blue) cannot be read as text on white
        ax.text(centers_x[i], y, label, ha="center", va="top", fontsize=8.5, color="0.15", fontweight="bold",
                bbox={"facecolor": "white", "alpha": 0.85 if crowded else 0.7, "edgecolor": color, "linewidth": 1.5, "pad": 2.0})
    if plan.accepted_range_px is not None:
        lo, hi = plan.accepted_range_px
        ax.axvline(lo, color="#C44E52", lw=1.2)
        ax.axvline(hi, color="#C44E52", lw=1.2, label="accepted range")
    if px:
        sec = ax.secondary_xaxis("top", functions=(lambda v, s=px: v * s / 10.0, lambda v, s=px: v * 10.0 / s))
        sec.set_xlabel(f"diameter (nm) at {px:g} Å/px")
    else:
        # above the axes, where the nm axis would be: inside them it sat in the corner the legend may take
        ax.text(1.0, 1.01, "pixel size unknown: no nm axis", transform=ax.transAxes, ha="right", va="bottom", fontsize=8, color="0.4")
    # the legend goes in the widest gap between the bin labels (a label is centred on its bin)
    lo_x, hi_x = ax.get_xlim()
    at = sorted((c - lo_x) / (hi_x - lo_x) for c in centers_x)
    gaps = [(at[0] if at else 1.0, 0.0, "upper left")]
    gaps += [(b - a, (a + b) / 2, "upper center") for a, b in zip(at, at[1:])]
    gaps.append((1.0 - at[-1] if at else 1.0, 1.0, "upper right"))
    _, x, loc = max(gaps, key=lambda g: g[0] * (1.0 if g[2] == "upper center" else 2.0))
    ax.legend(loc=loc, fontsize=8, frameon=False, bbox_to_anchor=(x, 0.98))
    return fig


# ---------------------------------------------------------------------------
# Coordinate files of each bin
# ---------------------------------------------------------------------------
def bin_files(plan: ExtractionPlan, out_dir: Path, written: list[Path]) -> dict[int, list[str]]:
    """Files the writers made under ``bins/bin<k>/`` for each bin, relative to ``out_dir``.

    ``written``: the writers' files, resolved (:func:`~lipoframe.io.atomic.resolve_all`).
    """
    root = Path(out_dir).resolve()
    by_bin: dict[int, list[str]] = {b.index: [] for b in plan.bins}
    labels = {b.label: b.index for b in plan.bins}
    for f in written:
        try:
            rel = f.relative_to(root)
        except ValueError:
            continue
        parts = rel.parts
        if len(parts) >= 3 and parts[0] == BINS_DIR and parts[1] in labels:
            by_bin[labels[parts[1]]].append(rel.as_posix())
    return {k: sorted(v) for k, v in by_bin.items()}


def _coord_list(files: list[str]) -> str | None:
    """The list file of a bin (a STAR directly in ``bins/bin<k>/``), if any."""
    direct = [f for f in files if f.count("/") == 2 and f.endswith(".star")]
    if not direct:
        return None
    preferred = [f for f in direct if any(w in Path(f).name.lower() for w in ("coord", "list", "autopick", "manualpick"))]
    return (preferred or direct)[0]


def _extract_command(plan: ExtractionPlan, b, coord_list: str | None, micrographs_star: str = "") -> str | None:
    """``lipoframe.io.relion.extract_command`` if that writer is installed (imported lazily).

    ``micrographs_star``: its ``--i``; empty for the function's default.
    """
    if coord_list is None:
        return None
    try:
        from lipoframe.io.relion import extract_command  # provided by the RELION writer
    except ImportError:
        return None
    try:
        given = {"micrographs_star": micrographs_star} if micrographs_star else {}
        cmd = extract_command(b, coord_list, pixel_size=plan.pixel_size, invert_contrast=plan.polarity == "dark", **given)
    except Exception as exc:  # noqa: BLE001 - a helper's failure must not lose the plan
        log.warning("extraction_plan.md: no RELION command for %s (%s)", b.label, exc)
        return None
    return str(cmd) if cmd else None


# ---------------------------------------------------------------------------
# Markdown
# ---------------------------------------------------------------------------
def _fmt(v, spec: str = ".0f", none: str = "–") -> str:
    return none if v is None else format(v, spec)


def _ranges(b, px: float | None) -> tuple[str, str | None]:
    """A bin's diameter range as text, in px and (with a pixel size) in Å."""
    return (format_range(b.d_min_px, b.d_max_px, sep="–"),
            format_range(b.d_min_px * px, b.d_max_px * px, sep="–") if px else None)


def plan_markdown(plan: ExtractionPlan, files: dict[int, list[str]], *, n_outliers: int = 0, coord_prefix: str = "",
                  picks_csv: bool = True, micrographs_star: str = "") -> str:
    """The human-readable ``extraction_plan.md``.

    ``coord_prefix`` is put in front of the coordinate list of each RELION
    command: the output folder as seen from the RELION project, when the
    ``star`` writer knows the project (``writer.star.project_dir``); the
    command then runs from the project as it stands. ``micrographs_star``:
    the commands' ``--i``, the micrographs STAR the run picked from as seen
    from the project (empty: :data:`lipoframe.io.relion.DEFAULT_MICROGRAPHS_STAR`). ``picks_csv``: whether
    the run wrote ``picks.csv``, which a bin without coordinate files of its
    own is pointed to.
    """
    px = plan.pixel_size
    params = plan.details.get("params", {})
    pad = params.get("pad")
    rounding = {"multiple32": "a multiple of 32 (no prime factor above 13)", "fft": "an FFT-friendly size (factors 2, 3, 5; even)", "even": "an even size"}.get(params.get("rounding"), "an extraction-friendly size")
    lines = ["# Extraction plan", ""]
    head = f"Policy **`{plan.policy}`**: {plan.n_accepted} picks in {plan.n_bins} size bin{'s' if plan.n_bins != 1 else ''}"
    if n_outliers:
        head += f"; {n_outliers} picks rejected as size outliers (`{OUTLIER_REASON}`)"
    lines.append(head + ".")
    lines.append("")
    unknown = ("unknown (no Å values; `lipoframe plan` of this folder with `pixel_size=<Å/px>` sets them, and the "
               "exports' pixel size, without picking again)")
    lines.append(f"- Pixel size: {f'{px:g} Å/px' if px else unknown}")
    if pad is not None:
        lines.append(f"- Box: `{pad:g} × largest diameter of the bin`, rounded up to {rounding}.")
    lines.append("- Mask diameter: `min((box − 6 px) × pixel size, 1.2 × largest diameter)` (SIMPLE's rule)"
                 + (f", also within the box at {plan.extract_pixel_size:g} Å/px." if plan.extract_pixel_size else "."))
    if plan.polarity == "dark":
        lines.append("- Particles are dark on a light background: extract with contrast inverted (RELION `--invert_contrast`).")
    else:
        lines.append("- Particles are bright on a dark background (`polarity=bright`): extract without inverting the contrast.")
    if plan.accepted_range_px is not None:
        lo, hi = plan.accepted_range_px
        rng = f"{lo:.0f}–{hi:.0f} px" + (f" ({lo * px:.0f}–{hi * px:.0f} Å)" if px else "")
        lines.append(f"- Accepted diameter range: {rng}; picks outside it are flagged, not deleted.")
    lines.append("")
    if plan.bins:
        hdr = "| bin | diameter (px) | diameter (Å) | picks | box (px) | mask (Å) |"
        sep = "|---:|---:|---:|---:|---:|---:|"
        if plan.extract_pixel_size:
            hdr += f" box at {plan.extract_pixel_size:g} Å/px |"
            sep += "---:|"
        lines += [hdr, sep]
        for b in plan.bins:
            rp, ra = _ranges(b, px)
            row = f"| {b.index + 1} | {rp} | {ra or '–'} | {b.count} | {b.box_px} | {_fmt(b.mask_diameter_A)} |"
            if plan.extract_pixel_size:
                row += f" {_fmt(b.box_px_extract, 'd')} |"
            lines.append(row)
        lines.append("")
    else:
        lines += ["**No size bins**: nothing to extract.", ""]
    if plan.notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in plan.notes] + [""]
    for b in plan.bins:
        lab = f"bin {b.index + 1}"
        rp, ra = _ranges(b, px)
        rng = f"{rp} px" + (f" ({ra} Å)" if ra else "")
        lines += [f"## {lab}: {rng}, {b.count} picks", ""]
        box = f"- Box: **{b.box_px} px**" + (f" ({b.box_px * px:.0f} Å)" if px else "")
        if b.box_px_extract is not None:
            box += f"; **{b.box_px_extract} px** at {plan.extract_pixel_size:g} Å/px"
            if b.extract_size_px:
                got = b.rescaled_pixel_size(px)
                if b.box_px_extract > b.extract_size_px:  # upsampling: a Fourier crop only shrinks
                    cs = (f"cryoSPARC: extraction box {b.extract_size_px}; its Fourier crop cannot enlarge it to "
                          f"{b.box_px_extract}")
                else:
                    cs = f"cryoSPARC: extraction box {b.extract_size_px}, Fourier-crop to {b.box_px_extract}"
                box += (f": cut **{b.extract_size_px} px** and rescale to {b.box_px_extract} (RELION `--extract_size "
                        f"{b.extract_size_px} --scale {b.box_px_extract}`; {cs})")
                if got and abs(got / plan.extract_pixel_size - 1) > 5e-4:
                    box += f", which gives {got:.4g} Å/px (boxes are even)"
            else:  # a plan written before extract_size_px existed
                box += f" (RELION: rescale to {b.box_px_extract})"
        lines.append(box)
        if b.mask_diameter_A is not None:
            lines.append(f"- Mask diameter: **{b.mask_diameter_A:.0f} Å**")
        fl = files.get(b.index, [])
        if fl:
            lines.append(f"- Coordinate files (`{BINS_DIR}/{b.label}/`, {len(fl)} file{'s' if len(fl) != 1 else ''}):")
            lines += [f"  - `{f}`" for f in fl[:MAX_LISTED]]
            if len(fl) > MAX_LISTED:
                lines.append(f"  - ... and {len(fl) - MAX_LISTED} more")
        elif picks_csv:
            lines.append(f"- Coordinate files: none written per bin; use the rows of `picks.csv` with "
                         f"`size_bin == {b.index}` (add a writer that writes per-bin sets, e.g. `writer=[csv,star]`).")
        else:
            lines.append("- Coordinate files: none written (no per-bin sets and no `picks.csv`); "
                         "`lipoframe plan <this folder> 'writer=[csv,star]'` writes them without picking again.")
        coord_list = _coord_list(fl)
        if coord_list is not None and coord_prefix:
            coord_list = f"{coord_prefix.rstrip('/')}/{coord_list}"
        cmd = _extract_command(plan, b, coord_list, micrographs_star)
        if cmd:
            lines += ["- Extract with RELION:", "", "  ```sh", f"  {cmd}", "  ```"]
        lines.append("")
    lines += ["---", "", "Try another policy without re-picking: `lipoframe plan <this folder> binning=kmeans` "
              "(policies: `peak_valley`, `quantile`, `kmeans`, `hac`, `single`). See `size_histogram.png` and `sizes.csv`.", ""]
    return "\n".join(lines)


@memo_png
def size_histogram_png(plan: ExtractionPlan, table: pd.DataFrame) -> bytes:
    """``size_histogram.png``: :func:`plot_size_histogram` of ``plan`` and its :func:`size_histogram_table`, as PNG bytes."""
    import io

    buf = io.BytesIO()
    plot_size_histogram(plan, None, table=table).savefig(buf, format="png")
    return buf.getvalue()


# ---------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------
def write_plan_files(plan: ExtractionPlan, picks: pd.DataFrame, out_dir: Path, *, metas=None, written=(),
                     project_dir: str = "", micrographs_star: str = "") -> list[Path]:
    """Write ``sizes.csv``, ``size_histogram.png``, ``extraction_plan.json`` and ``.md``.

    Parameters
    ----------
    plan : ExtractionPlan
    picks : DataFrame
        The binned table of the whole dataset.
    out_dir : path
    metas : dict, optional
        Micrograph metadata (unused for now; kept for the runner's call).
    written : sequence of path
        Files the writers produced; those under ``bins/bin<k>/`` are listed per bin.
    project_dir : str
        The RELION project (``writer.star.project_dir``); when given, the
        RELION commands of ``extraction_plan.md`` name the coordinate lists
        relative to it, as the list files name their coordinate files.
    micrographs_star : str
        ``--i`` of those commands: the micrographs STAR the run picked from,
        as seen from the RELION project (empty: the default,
        ``CtfFind/job003/micrographs_ctf.star``).

    Returns
    -------
    list of Path
        The files written, in the order above.
    """
    out_dir = Path(out_dir)
    table = size_histogram_table(plan, picks)
    paths: list[Path] = []

    sizes = safe_child(out_dir, "sizes.csv")
    with atomic_path(sizes) as tmp:
        table.to_csv(tmp, index=False, float_format="%.4g")
    paths.append(sizes)

    png = safe_child(out_dir, "size_histogram.png")
    with atomic_path(png) as tmp:
        Path(tmp).write_bytes(size_histogram_png(plan, table))
    paths.append(png)

    written = resolve_all(written)
    files = bin_files(plan, out_dir, written)
    doc = plan.to_dict()
    doc["coordinate_files"] = {f"bin{k + 1}": v for k, v in files.items()}
    paths.append(write_text(safe_child(out_dir, "extraction_plan.json"), json.dumps(doc, indent=2, default=_json_default) + "\n"))

    n_out = int(table["outliers"].sum()) if len(table) else 0
    prefix = ""
    if project_dir:
        # as the star writer makes the list files' paths relative: between resolved paths, so that
        # the path opens from the project even when one of them is reached through a symbolic link
        prefix = Path(os.path.relpath(os.path.realpath(out_dir), os.path.realpath(os.path.expanduser(project_dir)))).as_posix()
    picks_csv = safe_child(out_dir, "picks.csv").resolve() in set(written)
    paths.append(write_text(safe_child(out_dir, "extraction_plan.md"),
                            plan_markdown(plan, files, n_outliers=n_out, coord_prefix=prefix, picks_csv=picks_csv,
                                          micrographs_star=micrographs_star)))
    return paths
