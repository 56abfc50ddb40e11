"""EMAN ``.box`` files (EMAN1 box format, read by EMAN2, RELION, crYOLO and napari-boxmanager).

One particle per line: ``x_corner y_corner box box``, integers, tab-separated,
as EMAN2's ``e2boxer.py`` writes them. Readers add half the box to get the
centre in integer arithmetic (RELION ``preprocessing.cpp`` ``readCoordinates``:
``xpos = num1 + num3 / 2``; EMAN2 ``e2import.py``: ``x + box / 2``), so the
box must be even and the corner is ``round(x) - box / 2``; the centre then
comes back exactly at the nearest pixel of the pick.

:func:`read_box` reads such files back (from lipoframe, EMAN2, crYOLO's
``EMAN/`` folder or napari-boxmanager, which writes float corners): centre =
corner + box / 2, in floating point as ``e2import.py`` does.

:func:`eman2_base_name` is the name EMAN2 files a micrograph's boxes under,
and :func:`eman2_name_clashes` finds the files EMAN2 would take for one.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

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


def eman2_base_name(file_name: str) -> str:
    """The name EMAN2 gives a micrograph or box file inside a project.

    EMAN2's ``base_name(file_name, nodir=True)`` (``libpyEM/EMAN2.py``), which
    ``e2rawdata.py`` uses to name ``micrographs/<name>.hdf`` and
    ``e2import.py --import_boxes`` to choose ``info/<name>_info.json``: the
    file name without its folder and last extension, cut before the first
    ``__`` ("double underscore is used to mark tags added to micrograph
    names"), then with every ``_ptcls`` and ``_info`` removed.

    Examples
    --------
    >>> eman2_base_name("box/grid1__sq2.box")
    'grid1'
    >>> eman2_base_name("mic.001.box")
    'mic.001'
    >>> eman2_base_name("run_info_3_ptcls.box")
    'run_3'
    """
    stem = os.path.splitext(os.path.basename(str(file_name)))[0]
    return stem.split("__", 1)[0].replace("_ptcls", "").replace("_info", "")


def eman2_name_clashes(file_names) -> dict[str, list[str]]:
    """Files that EMAN2 would take for one micrograph (same :func:`eman2_base_name`).

    Parameters
    ----------
    file_names : iterable of str
        Box (or micrograph) file names.

    Returns
    -------
    clashes : dict
        ``{eman2 name: [file names, in the given order]}`` for every name
        shared by two files or more; empty when EMAN2 tells them all apart.
    """
    groups: dict[str, list[str]] = {}
    for f in file_names:
        groups.setdefault(eman2_base_name(f), []).append(str(f))
    return {k: v for k, v in groups.items() if len(v) > 1}


def numeric_rows(text: str, *, min_columns: int, layout: str) -> np.ndarray:
    """The rows of a whitespace-separated table of numbers, cut to the columns every row has.

    Blank lines and ``#`` comment lines are skipped.

    Parameters
    ----------
    text : str
    min_columns : int
        Fewest numbers a row may have.
    layout : str
        What a row holds (e.g. ``"x_corner y_corner width height"``), for the error message.

    Returns
    -------
    rows : (N, K) ndarray of float
        ``K`` >= ``min_columns`` is the number of columns of the shortest row.

    Raises
    ------
    ValueError
        Naming the first line that has too few numbers or one that is not a number.
    """
    rows = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        try:
            values = [float(f) for f in fields]
        except ValueError:
            raise ValueError(f"line {lineno}: expected numbers ({layout}), got {line.strip()[:80]!r}") from None
        if len(values) < min_columns:
            raise ValueError(f"line {lineno}: expected at least {min_columns} numbers ({layout}), got {line.strip()[:80]!r}")
        rows.append(values)
    if not rows:
        return np.zeros((0, min_columns))
    k = min(len(r) for r in rows)
    return np.array([r[:k] for r in rows], dtype=float)


def centres_from_corners(corners: np.ndarray, *, layout: str) -> pd.DataFrame:
    """Box centres of ``x_corner y_corner width height`` rows.

    Returns
    -------
    DataFrame
        ``x``, ``y`` (centre = corner + box / 2, in the file's frame) and
        ``width``, ``height``.

    Raises
    ------
    ValueError
        If a value is not finite or a box is not > 0 (naming the first such row).
    """
    corners = np.asarray(corners, dtype=float).reshape(-1, 4)
    bad = ~np.all(np.isfinite(corners), axis=1) | (corners[:, 2] <= 0) | (corners[:, 3] <= 0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"particle {i + 1}: {layout} must be finite with a box > 0, got {corners[i].tolist()}")
    return pd.DataFrame({
        "x": corners[:, 0] + corners[:, 2] / 2, "y": corners[:, 1] + corners[:, 3] / 2,
        "width": corners[:, 2], "height": corners[:, 3],
    })


def read_box(path: str | Path) -> pd.DataFrame:
    """Particles of an EMAN ``.box`` file (2D), or of crYOLO's 3D ``.box``/``.coords``.

    Each line is ``x_corner y_corner width height``, integers or floats;
    further columns are ignored. The centre is ``corner + box / 2``, so a
    file :func:`box_text` wrote gives back the nearest pixel of each pick.

    A file whose first line (and every line) holds three numbers is crYOLO's
    tomogram output, ``x y z`` centres (``CoordsIO.write_eman_boxfile3d`` and
    ``write_coords_file`` write ``box.x + box.w / 2, box.y + box.h / 2,
    box.z``), and is read as such.

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    DataFrame
        ``x``, ``y`` (centres, in the file's frame: rows of a TIFF micrograph
        count from the bottom), and ``width``, ``height`` (2D) or ``z`` (3D).
        No rows for an empty file.

    Raises
    ------
    OSError
        If the file cannot be read.
    ValueError
        If a line has fewer numbers than the first (which must have three or
        at least four), a file of three-number lines has a longer one, or the
        file holds filaments: EMAN helicon files (``#helix`` lines) and EMAN1
        start/end pairs (fifth column -1, -2), whose lines are not particles.
    """
    text = Path(path).read_text(errors="replace")
    if any(line.lstrip().lower().startswith(("#helix", "#micrograph", "#segment")) for line in text.splitlines()):
        raise ValueError("an EMAN helicon filament file (#helix lines), not particle boxes")
    rows = numeric_rows(text, min_columns=3, layout="x_corner y_corner width height, or crYOLO's 3D x y z")
    if rows.shape[1] == 3 and len(rows):
        # The first line says which: a 2D file with one short line is refused naming that line.
        first = next(f for f in map(str.split, text.splitlines()) if f and not f[0].startswith("#"))
        if len(first) == 3:
            return _centres_3d(text, rows)
        rows = numeric_rows(text, min_columns=4, layout="x_corner y_corner width height")
    if rows.shape[1] >= 5 and len(rows) >= 2 and set(rows[:, 4].tolist()) == {-1.0, -2.0}:
        raise ValueError("EMAN1 filament start/end boxes (fifth column -1, -2), not particle boxes")
    return centres_from_corners(rows[:, :4], layout="x_corner y_corner width height")


def _centres_3d(text: str, rows: np.ndarray) -> pd.DataFrame:
    """crYOLO's ``x y z`` centre rows; refuses a file that mixes them with box corners."""
    for lineno, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if len(fields) > 3 and not fields[0].startswith("#"):
            raise ValueError(f"line {lineno}: {len(fields)} numbers where other lines have 3 "
                             "(crYOLO's 3D x y z centres): neither an EMAN box file nor a 3D one")
    bad = ~np.all(np.isfinite(rows), axis=1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"particle {i + 1}: x y z must be finite, got {rows[i].tolist()}")
    return pd.DataFrame({"x": rows[:, 0], "y": rows[:, 1], "z": rows[:, 2]})
