"""Pictures of a run: micrograph overlays, pick crops and dataset plots.

Everything here is a pure function of arrays and tables that returns pixels
(an RGB ``uint8`` array) or encoded image bytes; nothing reads run folders or
writes files (that is :mod:`lipoframe.report`). Figures are drawn with
matplotlib's Agg canvas through :class:`matplotlib.figure.Figure`, never
``pyplot``, so no display and no global figure state are involved and the
functions are safe in worker processes.

Coordinates follow :mod:`lipoframe.schema`: ``x_px`` is the column and
``y_px`` the row, 0-indexed pixel centres of the full-resolution image.
Overlays are drawn in those coordinates: the downsampled image is placed so
that its element ``[i, j]`` covers full-resolution rows ``[i*f - 0.5,
(i+1)*f - 0.5]`` (the block :func:`~lipoframe.algorithms.pyramid.block_mean`
averaged), so circles need no conversion and sit where the picks are.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import io
import math
import pickle
import threading
from typing import Sequence

import numpy as np
from scipy import ndimage as ndi

from lipoframe.algorithms.pyramid import block_mean

#: Colours of the size bins (Okabe & Ito's colour-blind-safe palette, brightest
#: first so they show on a grey micrograph), then matplotlib's tab20.
BIN_COLORS = ("#E69F00", "#56B4E9", "#F0E442", "#CC79A7", "#009E73", "#D55E00", "#0072B2")
#: Colour of rejected picks (drawn dashed).
REJECTED_COLOR = "#D9D9D9"
#: Colour of picks whose bin is unknown (no extraction plan).
UNBINNED_COLOR = "#E69F00"


def bin_color(index: int) -> str:
    """Colour of size bin ``index`` (0-based); grey for a negative index."""
    if index < 0:
        return REJECTED_COLOR
    if index < len(BIN_COLORS):
        return BIN_COLORS[index]
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    return to_hex(colormaps["tab20"]((index - len(BIN_COLORS)) % 20))


#: A tomogram is shown as the mean of ``2 * SLAB_HALF + 1`` planes.
SLAB_HALF = 2


def nearest_plane(z: float, planes: int) -> int:
    """The plane nearest to plane coordinate ``z`` (0-indexed plane centres), within ``0 .. planes - 1``.

    Plane ``k`` spans ``k - 0.5 <= z < k + 0.5``, so 24.9 is in plane 25 (``int`` would give 24).
    """
    return int(np.clip(math.floor(float(z) + 0.5), 0, planes - 1))


def volume_slab(volume: np.ndarray, z: float, *, half: int = SLAB_HALF) -> tuple[np.ndarray, int, int]:
    """The mean of the planes around ``z`` of a volume, and the first and last of them.

    Parameters
    ----------
    volume : (P, M, N) ndarray
    z : float
        Plane coordinate (0-indexed plane centres); the slab is centred on
        the plane nearest to it, :func:`nearest_plane`.
    half : int
        The slab holds the planes ``c - half`` to ``c + half`` that exist,
        ``c`` that nearest plane.

    Returns
    -------
    plane : (M, N) ndarray of float32
    first, last : int
        The first and last plane averaged.
    """
    if volume.ndim != 3:
        raise ValueError(f"volume must be 3D, got shape {volume.shape}")
    if half < 0:
        raise ValueError(f"half must be >= 0, got {half}")
    zc = nearest_plane(z, volume.shape[0])
    first, last = max(0, zc - half), min(volume.shape[0] - 1, zc + half)
    return np.mean(np.asarray(volume[first : last + 1], dtype=np.float32), axis=0), first, last


def slab_sections(z: np.ndarray, diameter: np.ndarray, first: float, last: float) -> np.ndarray:
    """Diameter of each sphere's largest cross-section with the planes ``first`` to ``last``.

    A sphere of radius ``r`` centred at ``z`` is cut by the plane nearest
    to it within the slab, ``dz`` planes away (0 when its centre lies in the
    slab), in a circle of diameter ``2 * sqrt(r**2 - dz**2)``: what an
    overlay of the slab should draw, as the full diameter would ring a faint
    cap with a circle far larger than it.

    Parameters
    ----------
    z, diameter : (K,) array_like
        Sphere centres (plane coordinate, 0-indexed plane centres) and
        diameters, in voxels.
    first, last : float
        The first and last plane of the slab.

    Returns
    -------
    section : (K,) ndarray of float
        The cross-section's diameter; 0 for spheres that do not reach a
        plane of the slab (``dz >= r``).
    """
    z = np.asarray(z, dtype=float).ravel()
    r = np.asarray(diameter, dtype=float).ravel() / 2.0
    if z.shape != r.shape:
        raise ValueError(f"z and diameter must have the same length, got {z.size} and {r.size}")
    if last < first:
        raise ValueError(f"last must be >= first, got first={first}, last={last}")
    dz = np.maximum(0.0, np.maximum(first - z, z - last))
    return np.where(dz < r, 2.0 * np.sqrt(np.clip(r * r - dz * dz, 0.0, None)), 0.0)


def display_factor(shape: Sequence[int], *, max_size: int = 1600) -> int:
    """Smallest integer binning factor that brings the longest side to ``max_size`` or below."""
    if max_size < 16:
        raise ValueError(f"max_size must be >= 16, got {max_size}")
    return max(1, math.ceil(max(int(s) for s in shape[-2:]) / max_size))


def display_image(
    image: np.ndarray,
    *,
    max_size: int = 1600,
    min_size: int = 640,
    low_pass_sigma: float = 1.0,
    clip_percentiles: tuple[float, float] = (0.5, 99.5),
) -> tuple[np.ndarray, float]:
    """Downsample a micrograph for display, with robust contrast.

    Parameters
    ----------
    image : (M, N) ndarray
        The full-resolution micrograph as read (any real dtype, may be a
        memory map). Nothing is inverted: particles keep their contrast.
    max_size : int
        Longest side of the result, in pixels (the factor is an integer).
    min_size : int
        Images not binned whose longest side fits at least twice in it
        (``<= min_size / 2``) are enlarged by the largest integer factor
        ``z`` that keeps them within ``min_size`` (pixel repetition, after
        low-pass and contrast), so legends stay readable; then ``f = 1 / z``.
    low_pass_sigma : float
        Gaussian sigma of a light low-pass (0 disables it), in pixels of
        the binned image: applied before enlarging, it is ``z`` output
        pixels wide on an enlarged image.
    clip_percentiles : (float, float)
        Grey levels below/above these percentiles are clipped to black/white.

    Returns
    -------
    display : (M // f, N // f) ndarray of uint8
        Block means (factor ``f``), low-passed and scaled to 0-255.
        Element ``[i, j]`` has its centre at full-resolution ``((i + 0.5) * f
        - 0.5, (j + 0.5) * f - 0.5)``.
    factor : int or float
        The binning factor ``f`` (an integer, or ``1 / z`` when enlarged).
    """
    if image.ndim != 2:
        raise ValueError(f"image must be 2D, got shape {image.shape}")
    lo_p, hi_p = clip_percentiles
    if not 0 <= lo_p < hi_p <= 100:
        raise ValueError(f"clip_percentiles must satisfy 0 <= low < high <= 100, got {clip_percentiles}")
    if low_pass_sigma < 0:
        raise ValueError(f"low_pass_sigma must be >= 0, got {low_pass_sigma}")
    if not 0 < min_size <= max_size:
        raise ValueError(f"min_size must be in (0, max_size], got {min_size}")
    factor = display_factor(image.shape, max_size=max_size)
    small = block_mean(image, factor)
    if low_pass_sigma > 0:
        small = ndi.gaussian_filter(small, low_pass_sigma, mode="nearest")
    grey = to_uint8(small, clip_percentiles=clip_percentiles)
    zoom = min_size // max(grey.shape) if factor == 1 else 0
    if zoom >= 2:
        return np.repeat(np.repeat(grey, zoom, axis=0), zoom, axis=1), 1.0 / zoom
    return grey, factor


def to_uint8(image: np.ndarray, *, clip_percentiles: tuple[float, float] = (0.5, 99.5)) -> np.ndarray:
    """Scale ``image`` to 0-255 between two percentiles (constant or non-finite images become mid-grey)."""
    img = np.asarray(image, dtype=np.float32)
    finite = np.isfinite(img)
    step = max(1, int(math.sqrt(img.size / 250_000)))  # percentiles of ~250k samples are plenty
    sample = img[::step, ::step][finite[::step, ::step]]
    if sample.size == 0:
        return np.full(img.shape, 128, dtype=np.uint8)
    lo, hi = np.percentile(sample, clip_percentiles)
    if not hi > lo:
        return np.full(img.shape, 128, dtype=np.uint8)
    out = (np.nan_to_num(img, nan=lo) - lo) * np.float32(255.0 / (hi - lo))
    return np.clip(out, 0, 255).astype(np.uint8)


def _figure(width_px: int, height_px: int, dpi: float = 100.0):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_px / dpi, height_px / dpi), dpi=dpi)
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    return fig


#: Glyph outlines (matplotlib's glyph repr -> (vertices, codes)) and their x extents (None: no outline, a
#: space), at matplotlib's TextToPath.FONT_SCALE, kept for the process: overlays measure the same few glyphs.
_GLYPH_PATHS: dict = {}
_GLYPH_X: dict = {}


def _text_px(text: str, prop) -> float:
    """Width in pixels (at 100 dpi) of ``text`` in the font ``prop``: its widest line.

    The width of ``matplotlib.textpath.TextPath(...).get_extents()``, to the
    bit: that path is each glyph's outline shifted to its place (kerning
    included), so its x extents are those of the glyphs, each measured once
    (the exact extents of a whole text's Bézier curves took 0.36 CPU s per
    overlay legend, half of an overlay's time). Text with ``$`` (mathtext)
    is measured through ``TextPath``.
    """
    from matplotlib.path import Path
    from matplotlib.textpath import TextPath, text_to_path

    if "$" in text:
        return max(TextPath((0, 0), line, prop=prop).get_extents().width for line in text.split("\n")) * 100 / 72
    font = text_to_path._get_font(prop)
    scale = prop.get_size_in_points() / text_to_path.FONT_SCALE
    widest = -np.inf
    for line in text.split("\n"):
        glyphs, new, _ = text_to_path.get_glyphs_with_font(font, line, glyph_map=_GLYPH_PATHS, return_new_glyphs_only=True)
        _GLYPH_PATHS.update(new)
        lo, hi = np.inf, -np.inf
        for glyph, x, _, size in glyphs:
            if glyph not in _GLYPH_X:
                vertices, codes = _GLYPH_PATHS[glyph]
                box = Path(vertices, codes).get_extents() if len(vertices) else None
                _GLYPH_X[glyph] = (box.x0, box.x1) if box is not None else None
            extent = _GLYPH_X[glyph]
            if extent is not None:
                lo, hi = min(lo, extent[0] * size + x), max(hi, extent[1] * size + x)
        # an empty line is matplotlib's null box, of width -inf
        widest = max(widest, hi * scale - lo * scale if hi >= lo else -np.inf)
    return widest * 100 / 72


def legend_layout(labels: Sequence[str], *, width_px: float, fontsize: float, max_columns: int) -> tuple[int, list[str]]:
    """Columns of an overlay legend, and its labels wrapped to fit ``width_px``.

    The legend is drawn as :func:`overlay` draws it (a handle of 1.6 em, 0.8 em
    before the text, 1.5 em between columns; entries fill the columns in
    order, the first ``len(labels) % ncol`` columns one more). The most
    columns up to ``max_columns`` whose widest entries fit side by side are
    used; a label wider than the image on its own (the rejected entry lists
    every reason) is broken after its commas.

    Parameters
    ----------
    labels : sequence of str
        The legend's labels, in order.
    width_px : float
        Width of the picture in pixels (at 100 dpi).
    fontsize : float
        Legend font size in points.
    max_columns : int
        At most this many columns.

    Returns
    -------
    ncol : int
        Number of columns, >= 1.
    labels : list of str
        The labels, with ``"\\n"`` where a too-long one is broken.
    """
    from matplotlib.font_manager import FontProperties

    if not width_px > 0:
        raise ValueError(f"width_px must be > 0, got {width_px}")
    if max_columns < 1:
        raise ValueError(f"max_columns must be >= 1, got {max_columns}")
    prop = FontProperties(size=fontsize)
    em = fontsize * 100 / 72

    def text_px(text: str) -> float:
        return _text_px(text, prop)

    handle = (1.6 + 0.8) * em
    room = width_px - 0.4 * em - 6.0  # the legend's border padding and a margin
    out = []
    for lab in labels:
        lines = [""]
        for part in lab.split(", "):
            joined = f"{lines[-1]}, {part}" if lines[-1] else part
            if lines[-1] and handle + text_px(joined + ",") > room:
                lines[-1] += ","
                lines.append("  " + part)
            else:
                lines[-1] = joined
        out.append("\n".join(lines))
    widths = [handle + text_px(lab) for lab in out]
    for ncol in range(min(max_columns, max(len(out), 1)), 0, -1):
        cols = [c for c in np.array_split(np.arange(len(out)), ncol) if len(c)]
        if sum(max(widths[i] for i in c) for c in cols) + 1.5 * em * (len(cols) - 1) <= room:
            return ncol, out
    return 1, out


def title_lines(title: str, *, width_px: float, fontsize: float) -> list[str]:
    """Break an overlay title into lines that fit ``width_px`` (bold, at ``fontsize`` points, 100 dpi).

    A title is parts joined by three spaces (``name · counts   (binned x2 for
    display)   (slab z=...: ...)``); it is broken between parts first, and a
    part too wide for a line by itself between its words. A single word wider
    than the line is left whole.
    """
    from matplotlib.font_manager import FontProperties

    prop = FontProperties(size=fontsize, weight="bold")

    def fits(text: str) -> bool:
        return _text_px(text, prop) <= width_px

    def fill(pieces: list[str], sep: str) -> list[str]:
        lines: list[str] = []
        for piece in pieces:
            if lines and fits(lines[-1] + sep + piece):
                lines[-1] += sep + piece
            elif fits(piece) or " " not in piece:
                lines.append(piece)
            else:
                lines.extend(fill(piece.split(" "), " "))
        return lines

    if not title or fits(title):
        return [title] if title else []
    return fill([p.strip() for p in title.split("   ") if p.strip()], "   ")


def overlay(
    display: np.ndarray,
    *,
    factor: float,
    x: np.ndarray,
    y: np.ndarray,
    diameter: np.ndarray,
    colors: Sequence[str],
    dashed: np.ndarray,
    legend: Sequence[tuple[str, str, bool]] = (),
    title: str = "",
    linewidth: float = 1.5,
) -> np.ndarray:
    """Draw picks as circles of their diameter on a display image.

    Parameters
    ----------
    display : (m, n) ndarray of uint8
        The image from :func:`display_image`.
    factor : float
        Full-resolution pixels per displayed pixel (the binning factor;
        below 1 for an enlarged image).
    x, y, diameter : (K,) ndarray
        Picks in full-resolution pixels: ``x`` = column, ``y`` = row (pixel
        centres), circle diameter.
    colors : sequence of K str
        Edge colour of each circle.
    dashed : (K,) ndarray of bool
        Draw these circles dashed (rejected picks); they are drawn first so
        accepted picks stay on top.
    legend : sequence of (label, colour, dashed)
        Legend entries, drawn in a band above the image.
    title : str
        First line of that band, broken into several where it is wider than
        the image (:func:`title_lines`).
    linewidth : float
        Circle line width in points (1 pt = 1.39 px at the 100 dpi used).

    Returns
    -------
    rgb : (m + h, n, 3) ndarray of uint8
        The overlay: the bottom ``m`` rows are ``display`` pixel for pixel,
        with a black band of ``h`` rows above it holding the title and
        legend (``h = 0`` without them).
    """
    from matplotlib.collections import EllipseCollection
    from matplotlib.lines import Line2D

    if display.ndim != 2:
        raise ValueError(f"display must be 2D, got shape {display.shape}")
    if not factor > 0:
        raise ValueError(f"factor must be > 0, got {factor}")
    x, y, d = (np.asarray(a, dtype=float).ravel() for a in (x, y, diameter))
    dashed = np.asarray(dashed, dtype=bool).ravel()
    colors = list(colors)
    if not len(x) == len(y) == len(d) == len(dashed) == len(colors):
        raise ValueError("x, y, diameter, colors and dashed must have the same length")
    m, n = display.shape
    fontsize = float(np.clip(n / 110.0, 7.0, 11.0))  # points; 1 pt = 100/72 px
    line_px = fontsize * 100 / 72 * 1.55
    ncol = max(1, min(len(legend), int(n // (fontsize * 100 / 72 * 34))))
    ncol, labels = legend_layout([lab for lab, _, _ in legend], width_px=n, fontsize=fontsize, max_columns=ncol)
    legend = [(lab, c, dsh) for lab, (_, c, dsh) in zip(labels, legend)]
    # a column holds consecutive entries (the first len % ncol columns one more), a wrapped entry more lines
    extra = [lab.count("\n") for lab in labels]
    legend_px = max((len(col) * line_px + sum(extra[i] for i in col) * fontsize * 100 / 72 * 1.2
                     for col in np.array_split(np.arange(len(labels)), ncol)), default=0.0)
    titles = title_lines(title, width_px=n - 12.0, fontsize=fontsize)  # drawn 6 px from the left edge, 6 px spare
    band = int(math.ceil(len(titles) * line_px + legend_px + 8)) if (titles or legend) else 0
    # Matplotlib draws only the circles and text on a transparent canvas, which is
    # then composited over the image (pasting it unresampled is ~3x faster than imshow).
    # The axes covering the bottom m rows use full-resolution data coordinates:
    # block j spans [j*f - 0.5, (j+1)*f - 0.5].
    fig = _figure(n, m + band)
    fig.patch.set_alpha(0.0)
    ax = fig.add_axes((0, 0, 1, m / (m + band)))
    ax.set_axis_off()
    ax.patch.set_visible(False)
    extent = (-0.5, n * factor - 0.5, m * factor - 0.5, -0.5)
    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])
    for mask, style, alpha in ((dashed, (0, (4, 3)), 0.9), (~dashed, "solid", 1.0)):
        if mask.any():
            ax.add_collection(
                EllipseCollection(
                    widths=d[mask], heights=d[mask], angles=np.zeros(int(mask.sum())), units="xy",
                    offsets=np.column_stack([x[mask], y[mask]]), offset_transform=ax.transData,
                    facecolors="none", edgecolors=[c for c, k in zip(colors, mask) if k],
                    linewidths=linewidth * (0.8 if style != "solid" else 1.0), linestyles=style, alpha=alpha,
                )
            )
    # Title and legend go in a band above the image so they never hide particles.
    top = 1.0 - 4.0 / (m + band)
    for line in titles:  # one text per line: the band's height counts line_px per line
        fig.text(6.0 / n, top, line, ha="left", va="top", fontsize=fontsize, color="white", fontweight="bold")
        top -= line_px / (m + band)
    if legend:
        handles = [
            Line2D([], [], color=c, marker="o", markersize=fontsize * 0.9, markerfacecolor="none", linestyle="none",
                   markeredgewidth=1.4, label=lab) if not dsh else
            Line2D([], [], color=c, linestyle=(0, (3, 2)), linewidth=1.4, label=lab)
            for lab, c, dsh in legend
        ]
        fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(0.0, top), ncol=ncol, fontsize=fontsize,
                   frameon=False, labelcolor="white", handlelength=1.6, borderaxespad=0.0, borderpad=0.2,
                   labelspacing=0.35, columnspacing=1.5)
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())  # straight (not premultiplied) alpha
    base = np.zeros((m + band, n, 1), dtype=np.uint16)
    base[band:, :, 0] = display
    alpha = rgba[..., 3:4].astype(np.uint16)
    out = rgba[..., :3] * alpha
    out += base * (255 - alpha)
    out += 127
    out //= 255
    return out.astype(np.uint8)


def crop(image: np.ndarray, *, x: float, y: float, box: int) -> np.ndarray:
    """A ``box`` x ``box`` full-resolution crop centred on pixel centre ``(y, x)``.

    Parts outside the image are filled with the image median of the crop.

    Returns
    -------
    tile : (box, box) ndarray of float32
        Row 0 of the tile is full-resolution row ``round(y) - box // 2``.
    """
    if box < 2:
        raise ValueError(f"box must be >= 2, got {box}")
    r0, c0 = int(round(y)) - box // 2, int(round(x)) - box // 2
    m, n = image.shape[-2:]
    rs, re_ = max(0, r0), min(m, r0 + box)
    cs, ce = max(0, c0), min(n, c0 + box)
    if rs >= re_ or cs >= ce:
        raise ValueError(f"pick at x={x}, y={y} is outside the image of shape {image.shape}")
    inner = np.asarray(image[rs:re_, cs:ce], dtype=np.float32)
    out = np.full((box, box), np.median(inner), dtype=np.float32)
    out[rs - r0 : re_ - r0, cs - c0 : ce - c0] = inner
    return out


def crop_picture(
    image: np.ndarray,
    *,
    x: float,
    y: float,
    diameter: float,
    box: int,
    color: str,
    max_size: int = 256,
    low_pass_sigma: float = 1.0,
) -> np.ndarray:
    """An RGB picture of one pick: its extraction box with the pick's circle.

    Parameters
    ----------
    image : (M, N) ndarray
        Full-resolution micrograph.
    x, y, diameter : float
        The pick (column, row, diameter in pixels).
    box : int
        Extraction box edge in pixels (the crop size).
    color : str
        Circle colour.
    max_size : int
        Crops larger than this are block-averaged by an integer factor.
    low_pass_sigma : float
        Gaussian sigma in displayed pixels.

    Returns
    -------
    rgb : (b, b, 3) ndarray of uint8
    """
    from matplotlib.colors import to_rgb
    from PIL import Image, ImageDraw

    tile = crop(image, x=x, y=y, box=box)
    f = max(1, math.ceil(box / max_size))
    small = block_mean(tile, f) if f > 1 else tile
    if low_pass_sigma > 0:
        small = ndi.gaussian_filter(small, low_pass_sigma, mode="nearest")
    grey = to_uint8(small, clip_percentiles=(1.0, 99.0))
    pic = Image.fromarray(np.repeat(grey[..., None], 3, axis=2))
    # Centre of the pick in tile coordinates, then in binned-tile pixel-centre coordinates.
    cy = y - (round(y) - box // 2)
    cx = x - (round(x) - box // 2)
    cy, cx, r = (cy + 0.5) / f - 0.5, (cx + 0.5) / f - 0.5, diameter / 2.0 / f
    rgb = tuple(int(round(255 * v)) for v in to_rgb(color))
    # Crops are shown ~140 px wide: keep the circle ~1.5 displayed pixels thick.
    ImageDraw.Draw(pic).ellipse((cx - r, cy - r, cx + r, cy + r), outline=rgb, width=max(1, round(1.5 * grey.shape[0] / 140)))
    return np.asarray(pic)


def to_palette(rgb: np.ndarray, *, grey_levels: int = 128, exact: Sequence[str] | None = None):
    """An 8-bit palette image of a grey picture with a few coloured drawings.

    Grey pixels (``r == g == b``) keep ``grey_levels`` evenly spaced levels.
    Pixels of exactly one of the ``exact`` colours keep that colour (an
    entry of its own); the other coloured pixels (anti-aliased edges) share
    the remaining ``256 - grey_levels`` palette entries (fast octree). The
    PNG is ~3x smaller than RGB and as fast to write.

    Parameters
    ----------
    rgb : (M, N, 3) uint8 array
    grey_levels : int
        Palette entries for grey, a divisor of 256 up to 128.
    exact : sequence of str, optional
        Colours (any matplotlib colour) drawn as they are; default: the size
        bins' colours (:data:`BIN_COLORS`), so a bin with few picks is not
        merged by the quantiser into a frequent neighbouring colour.

    Returns
    -------
    image : PIL.Image.Image
        Mode ``"P"``.
    """
    from matplotlib.colors import to_rgb
    from PIL import Image

    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"rgb must be an (M, N, 3) uint8 array, got {rgb.dtype} {rgb.shape}")
    if not 2 <= grey_levels <= 255 or 256 % grey_levels:
        raise ValueError(f"grey_levels must divide 256 and be in [2, 128], got {grey_levels}")
    step = 256 // grey_levels
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    grey = (r == g) & (g == b)
    idx = (g // step).astype(np.uint8)
    palette = np.zeros((256, 3), dtype=np.uint8)
    palette[:grey_levels] = (np.arange(grey_levels) * step + step // 2)[:, None]
    rest = ~grey
    n_col = 256 - grey_levels
    n_exact = 0
    if rest.any():
        for color in BIN_COLORS if exact is None else exact:
            c = tuple(int(round(255 * v)) for v in to_rgb(color))
            hit = rest & (r == c[0]) & (g == c[1]) & (b == c[2])
            if n_exact < n_col - 1 and hit.any():
                idx[hit] = grey_levels + n_exact
                palette[grey_levels + n_exact] = c
                n_exact += 1
                rest &= ~hit
    coloured = rgb[rest]
    if coloured.size:
        q = Image.fromarray(coloured.reshape(1, -1, 3)).quantize(n_col - n_exact, method=Image.Quantize.FASTOCTREE)
        idx[rest] = np.asarray(q).ravel() + grey_levels + n_exact
        used = np.asarray(q.getpalette()[: 3 * (n_col - n_exact)], dtype=np.uint8).reshape(-1, 3)
        palette[grey_levels + n_exact : grey_levels + n_exact + len(used)] = used
    img = Image.frombytes("P", (idx.shape[1], idx.shape[0]), np.ascontiguousarray(idx).tobytes())
    img.putpalette(palette.ravel().tolist())
    return img


#: zlib level of the palette PNGs (overlays). Level 3 wrote the 32 overlays of a run of K3 and 4096²
#: micrographs in 0.038 CPU s each against 0.068 s at level 6, and 1.2 % smaller (34.5 MB against 35.0 MB);
#: the pixels are the same.
PALETTE_PNG_LEVEL = 3


def encode(rgb: np.ndarray, fmt: str = "png", *, max_size: int | None = None, quality: int = 80, palette: bool = False) -> bytes:
    """Encode an RGB (or grey) uint8 array as PNG or JPEG bytes.

    ``max_size`` shrinks the picture first; ``palette`` writes an 8-bit
    palette PNG (see :func:`to_palette`).
    """
    from PIL import Image

    if fmt not in ("png", "jpeg"):
        raise ValueError(f"fmt must be 'png' or 'jpeg', got {fmt!r}")
    if palette and fmt == "png" and max_size is None:
        buf = io.BytesIO()
        to_palette(np.ascontiguousarray(rgb)).save(buf, format="PNG", compress_level=PALETTE_PNG_LEVEL)
        return buf.getvalue()
    img = Image.fromarray(np.ascontiguousarray(rgb))
    if max_size is not None and max(img.size) > max_size:
        img.thumbnail((max_size, max_size), Image.Resampling.LANCZOS, reducing_gap=2.0)
    buf = io.BytesIO()
    if fmt == "png":
        img.save(buf, format="PNG", compress_level=3)
    else:
        img.save(buf, format="JPEG", quality=quality, optimize=True)
    return buf.getvalue()


# ---------------------------------------------------------------------------
# Dataset plots (PNG bytes)
# ---------------------------------------------------------------------------
def _plot_figure(width_in: float = 7.0, height_in: float = 3.8):
    fig = _figure(int(width_in * 100), int(height_in * 100))
    return fig, fig.add_subplot(1, 1, 1)


#: PNG bytes of the plots drawn in this process, by a digest of what they were drawn from (the function, its
#: arguments, matplotlib's version and rcParams), newest last: the same picks give the same plot (a report drawn
#: again, a plan that changes only the bins, another run of the same micrographs), and drawing one takes
#: about a quarter of a second. The last :data:`MEMO_SIZE` are kept.
_PNG_MEMO: collections.OrderedDict[str, bytes] = collections.OrderedDict()
_PNG_MEMO_LOCK = threading.Lock()
MEMO_SIZE = 32


def memo_png(func):
    """Decorator: ``func`` (a pure function returning PNG bytes) draws only what it has not drawn in this process.

    The arguments are compared by their pickled bytes, so equal arrays, tables
    and plans give the PNG drawn before; arguments that cannot be pickled are
    drawn every time.
    """

    @functools.wraps(func)
    def memo(*args, **kwargs):
        import matplotlib

        try:
            blob = pickle.dumps((func.__module__, func.__qualname__, args, sorted(kwargs.items()),
                                 matplotlib.__version__, sorted(dict.items(matplotlib.rcParams))), protocol=5)
        except Exception:  # noqa: BLE001 - an argument pickle cannot hold: no memo
            return func(*args, **kwargs)
        key = hashlib.sha256(blob).hexdigest()
        with _PNG_MEMO_LOCK:
            png = _PNG_MEMO.get(key)
            if png is not None:
                _PNG_MEMO.move_to_end(key)
                return png
        png = func(*args, **kwargs)  # drawn outside the lock: another thread may draw another plot meanwhile
        with _PNG_MEMO_LOCK:
            _PNG_MEMO[key] = png
            while len(_PNG_MEMO) > MEMO_SIZE:
                _PNG_MEMO.popitem(last=False)
        return png

    return memo


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def _nm_axis(ax, pixel_size: float | None, axis: str = "x") -> None:
    """Add a secondary axis in nm on top (or right) when the pixel size is known."""
    if not pixel_size:
        return
    k = pixel_size / 10.0
    if axis == "x":
        sec = ax.secondary_xaxis("top", functions=(lambda v: v * k, lambda v: v / k))
    else:
        sec = ax.secondary_yaxis("right", functions=(lambda v: v * k, lambda v: v / k))
    sec.set_xlabel("diameter (nm)") if axis == "x" else sec.set_ylabel("diameter (nm)")


def _shade_bins(ax, bins, *, label_y: float | None = None) -> None:
    for b in bins:
        ax.axvspan(b.d_min_px, b.d_max_px, color=bin_color(b.index), alpha=0.12, lw=0, zorder=0)
        ax.axvline(b.d_min_px, color=bin_color(b.index), lw=1, alpha=0.8, zorder=1)
        ax.axvline(b.d_max_px, color=bin_color(b.index), lw=1, alpha=0.8, zorder=1)
        if label_y is not None:
            ax.text((b.d_min_px + b.d_max_px) / 2, label_y, f"bin {b.index + 1}\nbox {b.box_px}", ha="center", va="top",
                    fontsize=8, transform=ax.get_xaxis_transform(), color="#333333",
                    bbox=dict(facecolor="white", alpha=0.8, edgecolor=bin_color(b.index), pad=2))


@memo_png
def size_histogram(diameter_px: np.ndarray, accepted: np.ndarray, *, plan=None, pixel_size: float | None = None) -> bytes:
    """Histogram of pick diameters, accepted vs rejected, with the size bins and their box sizes.

    Parameters
    ----------
    diameter_px : (K,) ndarray
    accepted : (K,) ndarray of bool
    plan : ExtractionPlan, optional
        Its bins are shaded and labelled with their box sizes.
    pixel_size : float, optional
        Å/px; adds a diameter axis in nm.
    """
    d = np.asarray(diameter_px, dtype=float)
    acc = np.asarray(accepted, dtype=bool)
    fig, ax = _plot_figure()
    if d.size:
        edges = np.histogram_bin_edges(d, bins=min(80, max(10, int(np.sqrt(d.size)) * 2)))
        ax.hist([d[acc], d[~acc]], bins=edges, stacked=True, color=["#4C72B0", "#BBBBBB"],
                label=[f"accepted ({int(acc.sum())})", f"rejected ({int((~acc).sum())})"], zorder=2)
        ax.legend(fontsize=8, loc="upper right")
    else:
        ax.text(0.5, 0.5, "no picks", ha="center", va="center", transform=ax.transAxes)
    if plan is not None and plan.bins:
        _shade_bins(ax, plan.bins, label_y=0.97)
    ax.set_xlabel("diameter (px)")
    ax.set_ylabel("picks")
    _nm_axis(ax, pixel_size)
    ax.set_title("Particle diameters and size bins", fontsize=10, loc="left")
    fig.tight_layout()
    return _png(fig)


@memo_png
def picks_per_micrograph(names: Sequence[str], accepted: np.ndarray, rejected: np.ndarray, *, max_bars: int = 60) -> bytes:
    """Accepted (and rejected) picks of each micrograph: bars for few micrographs, a histogram for many."""
    acc = np.asarray(accepted, dtype=int)
    rej = np.asarray(rejected, dtype=int)
    fig, ax = _plot_figure()
    if len(names) == 0:
        ax.text(0.5, 0.5, "no micrographs", ha="center", va="center", transform=ax.transAxes)
    elif len(names) <= max_bars:
        pos = np.arange(len(names))
        ax.bar(pos, acc, color="#4C72B0", label="accepted")
        ax.bar(pos, rej, bottom=acc, color="#BBBBBB", label="rejected")
        ax.set_xticks(pos, list(names), rotation=90 if len(names) > 6 else 0, fontsize=7 if len(names) > 20 else 8)
        ax.set_ylabel("picks")
        ax.set_ylim(0, max(1, int((acc + rej).max())) * 1.15)
        ax.legend(fontsize=8, ncol=2, loc="upper right")
    else:
        top = int(acc.max()) if acc.size else 0
        edges = np.arange(-0.5, top + 1.5, max(1, math.ceil((top + 1) / 60)))
        ax.hist(acc, bins=edges, color="#4C72B0")
        ax.axvline(float(np.median(acc)), color="k", ls="--", lw=1, label=f"median {np.median(acc):g}")
        ax.set_xlabel("accepted picks per micrograph")
        ax.set_ylabel("micrographs")
        ax.legend(fontsize=8)
    ax.set_title(f"Picks per micrograph ({len(names)} micrographs)", fontsize=10, loc="left")
    fig.tight_layout()
    return _png(fig)


@memo_png
def score_distribution(score: np.ndarray, accepted: np.ndarray, *, thresholds: Sequence[tuple[str, float]] = ()) -> bytes:
    """Histogram of pick scores, accepted vs rejected, with score thresholds marked."""
    s = np.asarray(score, dtype=float)
    acc = np.asarray(accepted, dtype=bool)
    ok = np.isfinite(s)
    fig, ax = _plot_figure()
    if ok.any():
        lo = min([float(s[ok].min())] + [t for _, t in thresholds])
        hi = max([float(s[ok].max())] + [t for _, t in thresholds])
        edges = np.linspace(lo, hi if hi > lo else lo + 1, 61)
        ax.hist([s[ok & acc], s[ok & ~acc]], bins=edges, stacked=True, color=["#4C72B0", "#BBBBBB"],
                label=["accepted", "rejected"])
    else:
        ax.text(0.5, 0.5, "no scores", ha="center", va="center", transform=ax.transAxes)
    for (label, t), c in zip(thresholds, ("#C44E52", "#8172B2", "#55A868")):
        ax.axvline(t, color=c, ls="--", lw=1.5, label=f"{label} = {t:g}")
    if ok.any() or thresholds:
        ax.legend(fontsize=8)
    ax.set_xlabel("score")
    ax.set_ylabel("picks")
    ax.set_title("Score distribution", fontsize=10, loc="left")
    fig.tight_layout()
    return _png(fig)


@memo_png
def diameter_vs_score(
    diameter_px: np.ndarray,
    score: np.ndarray,
    size_bin: np.ndarray,
    accepted: np.ndarray,
    *,
    plan=None,
    thresholds: Sequence[tuple[str, float]] = (),
    pixel_size: float | None = None,
    seed: int = 0,
    max_points: int = 100_000,
) -> bytes:
    """Scatter of diameter against score, coloured by size bin (rejected grey).

    At most ``max_points`` points are drawn (a seeded random subset).
    """
    d = np.asarray(diameter_px, dtype=float)
    s = np.asarray(score, dtype=float)
    b = np.asarray(size_bin, dtype=int)
    acc = np.asarray(accepted, dtype=bool)
    idx = np.arange(d.size)
    if d.size > max_points:
        idx = np.sort(np.random.default_rng(seed).choice(d.size, max_points, replace=False))
    fig, ax = _plot_figure()
    size = float(np.clip(3000 / max(1, idx.size), 2, 18))
    rej = idx[~acc[idx]]
    if rej.size:
        ax.scatter(d[rej], s[rej], s=size, c=REJECTED_COLOR, edgecolors="#888888", linewidths=0.3, label="rejected", rasterized=True)
    for k in np.unique(b[idx][acc[idx]]):
        sel = idx[acc[idx] & (b[idx] == k)]
        ax.scatter(d[sel], s[sel], s=size, c=bin_color(int(k)) if k >= 0 else UNBINNED_COLOR, edgecolors="#333333", linewidths=0.3,
                   label=f"bin {k + 1}" if k >= 0 else "accepted", rasterized=True)
    if plan is not None and plan.bins:
        _shade_bins(ax, plan.bins)
    for (label, t), c in zip(thresholds, ("#C44E52", "#8172B2", "#55A868")):
        ax.axhline(t, color=c, ls="--", lw=1.2, label=f"{label} = {t:g}")
    if idx.size:
        ax.legend(fontsize=8, markerscale=max(1.0, 6 / math.sqrt(size)))
    else:
        ax.text(0.5, 0.5, "no picks", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("diameter (px)")
    ax.set_ylabel("score")
    _nm_axis(ax, pixel_size)
    ax.set_title("Diameter vs score" + (f" ({idx.size} of {d.size} picks shown)" if idx.size < d.size else ""), fontsize=10, loc="left")
    fig.tight_layout()
    return _png(fig)
