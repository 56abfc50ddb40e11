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
"""

from __future__ import annotations

import math

import numpy as np

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
        ``_CoordinateX = x - box / 2`` (float corner), so a reader's
        ``_CoordinateX + _Width / 2`` gives back ``x`` exactly.
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
