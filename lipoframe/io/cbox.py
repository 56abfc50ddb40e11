"""crYOLO CBOX files (STAR layout, crYOLO >= 1.8) for crYOLO and napari-boxmanager.

Layout as crYOLO and napari-boxmanager (``src/box_manager/io/cbox.py``) write
it: ``data_global`` with ``_cbox_format_version 1.0``; ``data_cryolo`` with
``_CoordinateX _CoordinateY _CoordinateZ _Width _Height _Depth _EstWidth
_EstHeight _Confidence _NumBoxes _Angle``; ``data_cryolo_include`` with
``_slice_index``. ``_CoordinateX/Y`` is the box *corner* (boxmanager: centre =
``_CoordinateX + _Width / 2``); ``_CoordinateZ`` is the slice centre.
``_EstWidth/_EstHeight`` is crYOLO's estimated particle size, shown and
filtered by boxmanager as ``size``; ``_Confidence`` its ``confidence``.
Missing values are ``<NA>``, as crYOLO writes them.

:func:`read_cbox` reads such files back, and the older CBOX files (crYOLO
before 1.8, Scipion's crYOLO plugin): whitespace-separated ``x_corner
y_corner width height confidence [est_width est_height]`` per line, as
crYOLO's ``CoordsIO.write_cbox_file`` wrote them and napari-boxmanager's
``read_cbox_boxfile_old`` reads them.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

NA = "<NA>"
COLUMNS = ("CoordinateX", "CoordinateY", "CoordinateZ", "Width", "Height", "Depth", "EstWidth", "EstHeight", "Confidence", "NumBoxes", "Angle")


def _num(v: float) -> str:
    v = float(v)
    if not math.isfinite(v):
        return NA
    return f"{v:.3f}"


def cbox_text(x, y, *, box, diameter, confidence, z=None) -> str:
    """Text of one CBOX file.

    Parameters
    ----------
    x, y : (N,) array_like of float
        Particle centres in the exported frame (0-based pixel centres).
    box : (N,) array_like of int
        Box edge of each particle (its size bin's box), pixels.
    diameter : (N,) array_like of float
        Particle diameter in pixels -> ``_EstWidth`` and ``_EstHeight``.
    confidence : (N,) array_like of float
        -> ``_Confidence``.
    z : (N,) array_like of float, optional
        Slice centre for tomograms -> ``_CoordinateZ``; ``_Depth`` = box.

    Returns
    -------
    text : str
        ``_CoordinateX = x - box / 2`` (float corner, three decimals), so a
        reader's ``_CoordinateX + _Width / 2`` gives back ``x`` to 0.0005 px.
        Non-finite values are written as ``<NA>``.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    box = np.asarray(box, dtype=float)
    diameter = np.asarray(diameter, dtype=float)
    confidence = np.asarray(confidence, dtype=float)
    lines = ["data_global", "", "_cbox_format_version 1.0", "", "data_cryolo", "", "loop_"]
    lines += [f"_{c} #{i}" for i, c in enumerate(COLUMNS, start=1)]
    for i in range(len(x)):
        zi = NA if z is None else _num(z[i])
        depth = NA if z is None else _num(box[i])
        row = [_num(x[i] - box[i] / 2), _num(y[i] - box[i] / 2), zi, _num(box[i]), _num(box[i]), depth,
               _num(diameter[i]), _num(diameter[i]), _num(confidence[i]), NA, NA]
        lines.append("\t".join(row))
    lines += ["", "data_cryolo_include", "", "loop_", "_slice_index #1", ""]
    return "\n".join(lines) + "\n"


#: Columns a STAR-layout CBOX needs (napari-boxmanager needs the same).
REQUIRED = ("CoordinateX", "CoordinateY", "Width", "Height")


def _column(block: pd.DataFrame, name: str) -> np.ndarray:
    """A column as float; ``<NA>`` and other non-numbers are NaN."""
    return pd.to_numeric(block[name], errors="coerce").to_numpy(dtype=float)


def _cryolo_block(path: Path) -> pd.DataFrame:
    """The particle loop of a STAR-layout CBOX (block ``data_cryolo``, else the first with ``_CoordinateX``)."""
    import starfile

    try:
        blocks = starfile.read(path, always_dict=True)
    except Exception as exc:  # starfile raises TypeError, ValueError, pandas errors... for text it cannot parse
        raise ValueError(f"cannot read the STAR layout ({type(exc).__name__}: {str(exc)[:80]})") from None
    loops = {k: b for k, b in blocks.items() if isinstance(b, pd.DataFrame)}
    block = loops.get("cryolo")
    if block is None or "CoordinateX" not in block.columns:
        block = next((b for b in loops.values() if "CoordinateX" in b.columns), None)
    if block is None:
        raise ValueError("no data_cryolo block with _CoordinateX (a crYOLO >= 1.8 CBOX file)")
    missing = [f"_{c}" for c in REQUIRED if c not in block.columns]
    if missing:
        raise ValueError(f"data_cryolo lacks {', '.join(missing)} (a CBOX needs _CoordinateX/Y and _Width/_Height)")
    return block


def _estimated_diameter(*columns: np.ndarray) -> np.ndarray:
    """Mean of the estimated width and height; NaN where none is a number > 0 (unknown)."""
    if not columns:
        return np.zeros(0)
    stack = np.vstack(columns)
    stack = np.where(np.isfinite(stack) & (stack > 0), stack, np.nan)
    known = np.isfinite(stack).any(axis=0)
    out = np.full(stack.shape[1], np.nan)
    out[known] = np.nanmean(stack[:, known], axis=0)
    return out


def read_cbox(path: str | Path) -> pd.DataFrame:
    """Particles of a crYOLO CBOX file (STAR layout, crYOLO >= 1.8, or the older whitespace layout).

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    DataFrame
        ``x``, ``y``: centres (``_CoordinateX + _Width / 2``, as
        napari-boxmanager computes them), in the file's frame (rows of a
        TIFF micrograph count from the bottom); ``z`` (``_CoordinateZ``, the
        slice centre) only when every row has one; ``width``, ``height``;
        ``diameter``: mean of ``_EstWidth`` and ``_EstHeight`` (crYOLO's
        estimated particle size), NaN where neither is a number > 0 or the
        file has none; ``confidence``: ``_Confidence``, NaN where missing.
        No rows for a micrograph without particles.

    Raises
    ------
    OSError
        If the file cannot be read.
    ValueError
        If the file is neither layout, lacks a needed column, or a
        coordinate or box is not a finite number (box > 0).
    """
    from lipoframe.io.eman import centres_from_corners, numeric_rows

    path = Path(path)
    text = path.read_text(errors="replace")
    if re.search(r"^\s*data_", text, flags=re.MULTILINE):
        block = _cryolo_block(path)
        corners = np.column_stack([_column(block, c) for c in REQUIRED]) if len(block) else np.zeros((0, 4))
        out = centres_from_corners(corners, layout="_CoordinateX _CoordinateY _Width _Height")
        if "CoordinateZ" in block.columns and len(block):
            z = _column(block, "CoordinateZ")
            if np.isfinite(z).all():
                out["z"] = z
            elif np.isfinite(z).any():
                i = int(np.flatnonzero(~np.isfinite(z))[0])
                raise ValueError(f"particle {i + 1}: _CoordinateZ is missing while other rows have one")
        estimates = [_column(block, c) for c in ("EstWidth", "EstHeight") if c in block.columns]
        out["diameter"] = _estimated_diameter(*estimates) if estimates else np.nan
        out["confidence"] = _column(block, "Confidence") if "Confidence" in block.columns else np.nan
        return out
    layout = "x_corner y_corner width height confidence [est_width est_height]"
    rows = numeric_rows(text, min_columns=4, layout=layout)
    out = centres_from_corners(rows[:, :4], layout=layout)
    out["diameter"] = _estimated_diameter(rows[:, 5], rows[:, 6]) if rows.shape[1] >= 7 else np.nan
    out["confidence"] = rows[:, 4] if rows.shape[1] >= 5 else np.nan
    return out
