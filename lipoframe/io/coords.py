"""The one conversion from lipoframe's coordinates to the frame other programs use.

lipoframe tables hold ``x_px`` = column and ``y_px`` = row: 0-indexed pixel
centres of the array exactly as ``mrcfile``/``tifffile`` return it. RELION,
EMAN2, crYOLO/napari-boxmanager and cryoSPARC all use the same numbers for an
MRC file (0-based column/row of the pixel centre, no flip). They read a TIFF
upside down (RELION ``src/rwTIFF.h``: "IMOD, EMAN2, SerialEM and MotionCor2
flip the Y axis whenever they read or write a TIFF file. We follow this.";
napari-boxmanager ``io/tif.py`` flips on load), so for a TIFF input the
exported row is ``ny - 1 - y``. Every writer goes through :func:`export_frame`,
and :func:`on_pixel_centres` keeps what it writes on the image.
"""

from __future__ import annotations

import numpy as np


def nearest_pixel(values) -> np.ndarray:
    """Round to the nearest integer, halves up (``floor(v + 0.5)``), as int64.

    Python's ``round`` and ``np.round`` round halves to even, which would move
    ``100.5`` and ``101.5`` in different directions.

    Examples
    --------
    >>> nearest_pixel([99.5, 100.5, 99.49, -0.5]).tolist()
    [100, 101, 99, 0]
    """
    return np.floor(np.asarray(values, dtype=float) + 0.5).astype(np.int64)


def export_frame(x, y, *, ny, flip_y) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in the frame RELION, EMAN2, crYOLO and cryoSPARC use.

    Parameters
    ----------
    x, y : (N,) array_like of float
        lipoframe ``x_px`` (column) and ``y_px`` (row), 0-indexed pixel centres.
    ny : int or (N,) array_like of int
        Number of rows of each pick's micrograph (``shape[-2]``).
    flip_y : bool or (N,) array_like of bool
        True for inputs that other programs read upside down (TIFF).

    Returns
    -------
    x_out, y_out : (N,) ndarray of float
        ``x`` unchanged; ``y`` unchanged, or ``ny - 1 - y`` where flipped.
        Sub-pixel values are kept; writers round where their format needs
        integers.

    Examples
    --------
    >>> export_frame([3.0, 3.0], [0.0, 0.0], ny=100, flip_y=[False, True])[1].tolist()
    [0.0, 99.0]
    """
    x = np.array(x, dtype=float)
    y = np.asarray(y, dtype=float)
    flip = np.broadcast_to(np.asarray(flip_y, dtype=bool), y.shape)
    rows = np.broadcast_to(np.asarray(ny, dtype=float), y.shape)
    if np.any(flip & ~(rows >= 1)):
        raise ValueError("ny must be >= 1 to flip rows")
    return x, np.where(flip, (rows - 1.0) - y, y)


def on_pixel_centres(values, n) -> np.ndarray:
    """Centres along an axis of ``n`` pixels, moved onto the pixel centres 0 to ``n - 1``.

    A pick's centre may lie anywhere on the image, from -0.5 to ``n - 0.5``
    (the pixels' extent, docs/conventions.md). In the outer half of an edge
    pixel there is no pixel centre further out, and the formats' readers
    would take such a centre off the image: ``n - 0.5`` rounds half up to
    pixel ``n`` (RELION and EMAN .box coordinates are whole pixels), pyem's
    ``np.round(frac * nx)`` of a cryoSPARC fraction can do the same, and
    -0.5 is a negative cryoSPARC fraction. Such a centre goes to the edge
    pixel's centre: at most half a pixel, within the pixel it is in.

    Parameters
    ----------
    values : (N,) array_like of float
        0-based pixel-centre coordinates.
    n : int or (N,) array_like of int
        Number of pixels along the axis (of each value's image), >= 1.

    Returns
    -------
    (N,) ndarray of float

    Raises
    ------
    ValueError
        If ``n`` < 1.

    Examples
    --------
    >>> on_pixel_centres([-0.5, 0.25, 639.5], 640).tolist()
    [0.0, 0.25, 639.0]
    """
    values = np.asarray(values, dtype=float)
    n = np.broadcast_to(np.asarray(n, dtype=float), values.shape)
    if np.any(~(n >= 1)):
        raise ValueError("n must be >= 1")
    return np.clip(values, 0.0, n - 1.0)
