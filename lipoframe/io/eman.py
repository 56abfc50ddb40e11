"""EMAN ``.box`` files (EMAN1 box format, read by EMAN2, RELION, crYOLO and napari-boxmanager).

One particle per line: ``x_corner y_corner box box``, integers, tab-separated,
as EMAN2's ``e2boxer.py`` writes them. Readers add half the box to get the
centre in integer arithmetic (RELION ``preprocessing.cpp`` ``readCoordinates``:
``xpos = num1 + num3 / 2``; EMAN2 ``e2import.py``: ``x + box / 2``), so the
box must be even and the corner is ``round(x) - box / 2``; the centre then
comes back exactly at the nearest pixel of the pick.
"""

from __future__ import annotations

import numpy as np

from lipoframe.io.coords import nearest_pixel


def box_text(x, y, *, box) -> str:
    """Text of one ``.box`` file; empty for no particles.

    Parameters
    ----------
    x, y : (N,) array_like of float
        Particle centres in the exported frame (0-based pixel centres).
    box : (N,) array_like of int
        Even box edge of each particle, pixels.

    Raises
    ------
    ValueError
        If a box size is odd or < 2.
    """
    box = np.asarray(box, dtype=np.int64)
    if len(box) and (np.any(box % 2) or np.any(box < 2)):
        raise ValueError(f"EMAN .box needs even box sizes >= 2, got {sorted(set(box.tolist()))}")
    cx = nearest_pixel(x) - box // 2
    cy = nearest_pixel(y) - box // 2
    return "".join(f"{a}\t{b}\t{s}\t{s}\n" for a, b, s in zip(cx.tolist(), cy.tolist(), box.tolist()))
