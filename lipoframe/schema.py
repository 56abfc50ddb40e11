"""Column names and the coordinate convention shared by every table in lipoframe.

The one coordinate story
------------------------
Arrays are indexed ``(row, col)``. Every table uses ``x_px`` = column and
``y_px`` = row, as 0-indexed pixel *centres* on the full-resolution grid of the
input file (the array exactly as ``mrcfile``/``tifffile`` return it). Units are
part of the column name (``_px``, ``_A``). Conversions to other programs'
conventions (RELION, cryoSPARC, EMAN2, crYOLO) live only in the writers.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

MICROGRAPH = "micrograph"
X = "x_px"
Y = "y_px"
Z = "z_px"
DIAMETER = "diameter_px"
DIAMETER_A = "diameter_A"
SCORE = "score"
LEVEL = "pyramid_level"
SIGMA = "sigma_px"
ACCEPTED = "accepted"
REASON = "reject_reason"
SIZE_BIN = "size_bin"
#: Detector flag: scored below the detector's threshold (see the ``population`` filter).
WEAK = "weak"
#: Population filter: confident picks of the same size in the micrograph.
SUPPORT = "support"
#: True for picks that NMS had suppressed and that replaced a pick rejected on its own measurement.
RETRIED = "retried"
#: The radial refiner's edge quality (``edge_contrast x edge_coverage``), read by filters and the range note.
QUALITY = "quality"
#: Runner flag read by NMS strategies that let a larger candidate outrank smaller ones inside it
#: (``size_aware``'s ``outrank_by``): True for a candidate that did and that refinement or a
#: filter then rejected; it may no longer outrank (missing = False). Not written to the pick tables.
OUTRANK_FAILED = "outrank_failed"

#: Columns every detector must return, in this order.
DETECTOR_COLUMNS = (X, Y, DIAMETER, SCORE, LEVEL, SIGMA)
#: Columns of a per-micrograph pick table after the runner has finished it.
CORE_COLUMNS = (MICROGRAPH,) + DETECTOR_COLUMNS + (ACCEPTED, REASON)

#: ``size_bin`` value of a pick that the binning stage rejected.
REJECTED_BIN = -1

_DTYPES = {
    X: "float64",
    Y: "float64",
    Z: "float64",
    DIAMETER: "float64",
    SCORE: "float64",
    LEVEL: "int64",
    SIGMA: "float64",
}


def empty_picks(extra: tuple[str, ...] = ()) -> pd.DataFrame:
    """Return an empty detector table with the right columns and dtypes."""
    cols = {c: pd.Series(dtype=_DTYPES[c]) for c in DETECTOR_COLUMNS}
    for c in extra:
        cols[c] = pd.Series(dtype=_DTYPES.get(c, "float64"))
    return pd.DataFrame(cols)


def validate_detections(df: pd.DataFrame, *, stage: str, shape: tuple[int, ...] | None = None) -> pd.DataFrame:
    """Check that a stage returned the detector columns with usable values.

    Parameters
    ----------
    df : DataFrame
        What the stage returned.
    stage : str
        ``kind/name`` of the stage, for the message.
    shape : tuple of int, optional
        Shape of the micrograph (``(ny, nx)`` or ``(nz, ny, nx)``): every
        centre must lie on it, from -0.5 to ``n - 0.5`` along each axis
        (the pixels' extent, docs/conventions.md).

    Raises
    ------
    ValueError
        Naming ``stage`` and the missing column or the bad values: a
        detector column that is not numbers or not finite, a diameter <= 0,
        a pyramid level that is not a whole number >= 0, or a centre off
        the micrograph.
    """
    if not isinstance(df, pd.DataFrame):
        raise ValueError(f"stage {stage!r} must return a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in DETECTOR_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"stage {stage!r} returned a table without columns {missing}")
    if not len(df):
        return df
    # Each column is taken from the table once: a column lookup costs tens of
    # microseconds in a wide table, and the runner checks every stage's table.
    columns = {c: df[c] for c in DETECTOR_COLUMNS}
    for c, col in columns.items():
        # Every detector column is compared and sorted on (NMS ranks by score).
        if not pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col):
            raise ValueError(f"stage {stage!r} returned values that are not numbers in column {c!r} (dtype {col.dtype})")
    values = {c: col.to_numpy(dtype=float) for c, col in columns.items()}
    for c, v in values.items():
        # A NaN score has no rank in NMS and no place on a threshold.
        if not np.all(np.isfinite(v)):
            raise ValueError(f"stage {stage!r} returned non-finite values in column {c!r}")
    level = values[LEVEL]
    if np.any((level < 0) | (level != np.round(level))):
        raise ValueError(f"stage {stage!r} returned pyramid levels that are not whole numbers >= 0 in column {LEVEL!r} "
                         f"(e.g. {level[(level < 0) | (level != np.round(level))][0]:g}); 0 is the full-resolution image")
    if not np.all(values[DIAMETER] > 0):
        raise ValueError(f"stage {stage!r} returned diameters <= 0 in column {DIAMETER!r}")
    if shape is not None:
        axes = [(X, shape[-1]), (Y, shape[-2])] + ([(Z, shape[-3])] if len(shape) == 3 and Z in df.columns else [])
        for c, n in axes:
            v = values[c] if c in values else df[c].to_numpy(dtype=float)
            off = (v < -0.5) | (v > n - 0.5)
            if off.any():
                size = " x ".join(str(int(s)) for s in shape[::-1])
                raise ValueError(
                    f"stage {stage!r} returned {int(off.sum())} of {len(v)} centres off the {size} px micrograph "
                    f"in column {c!r} (e.g. {v[off][0]:g}; pixel centres run from 0 to {n - 1})"
                )
    return df


def with_acceptance(df: pd.DataFrame) -> pd.DataFrame:
    """Return a copy of ``df`` that has ``accepted`` (bool) and ``reject_reason`` (object, no NaN) columns."""
    out = df.copy()
    if ACCEPTED not in out.columns or out[ACCEPTED].dtype != bool:
        out[ACCEPTED] = _accepted(out)
    if REASON not in out.columns or out[REASON].dtype != object or out[REASON].isna().any():
        out[REASON] = pd.Series(_reasons(out), index=out.index, dtype=object)
    return out


def acceptance(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """The ``accepted`` and ``reject_reason`` columns :func:`with_acceptance` would give ``df``, without copying it.

    Returns
    -------
    accepted : (K,) ndarray of bool
        All True if ``df`` has no ``accepted`` column.
    reasons : (K,) ndarray of object
        ``""`` for a missing value, all ``""`` if ``df`` has no ``reject_reason`` column.
    """
    return _accepted(df), _reasons(df)


def _accepted(df: pd.DataFrame) -> np.ndarray:
    if ACCEPTED not in df.columns:
        return np.ones(len(df), dtype=bool)
    col = df[ACCEPTED]
    return (col if col.dtype == bool else col.astype(bool)).to_numpy(dtype=bool)


def _reasons(df: pd.DataFrame) -> np.ndarray:
    if REASON not in df.columns:
        return np.full(len(df), "", dtype=object)
    col = df[REASON]
    if col.dtype != object or col.isna().any():
        col = col.fillna("").astype(object)
    return col.to_numpy(dtype=object)


def rejection_reasons(picks: pd.DataFrame) -> pd.Series:
    """``reject_reason`` of the rejected rows of ``picks``, ``unspecified`` where a stage gave none."""
    rejected = ~picks[ACCEPTED].to_numpy(dtype=bool)
    return picks.loc[rejected, REASON].astype(str).replace("", "unspecified")


def flags(values) -> np.ndarray:
    """A flag column (``weak``, ``retried``, ...) as a bool array, False where missing.

    A flag column that only some of the concatenated tables had holds
    ``True``/``False``/``NaN`` objects. ``Series.fillna(False)`` on it is
    deprecated in pandas 2.2-2.3 (object downcasting) and would make the
    test suite fail there (warnings are errors); this reads the values
    directly and behaves the same on every pandas.

    Parameters
    ----------
    values : (K,) Series or array-like

    Returns
    -------
    flags : (K,) ndarray of bool
    """
    arr = np.asarray(values, dtype=object)
    out = np.zeros(arr.shape, dtype=bool)
    present = ~pd.isna(arr)
    out[present] = arr[present].astype(bool)
    return out


def weak_mask(df: pd.DataFrame) -> np.ndarray:
    """The ``weak`` flag of every row as a bool array (False without the column, or where missing)."""
    if WEAK not in df.columns:
        return np.zeros(len(df), dtype=bool)
    return flags(df[WEAK])


def confident_mask(df: pd.DataFrame) -> np.ndarray:
    """Rows still accepted and not weak candidates: the picks that set what is typical (bool array)."""
    return df[ACCEPTED].to_numpy(dtype=bool) & ~weak_mask(df)


def reject(df: pd.DataFrame, mask, reason: str) -> pd.DataFrame:
    """Return a copy of ``df`` where the still-accepted rows in ``mask`` are rejected.

    The first reason that rejects a pick is kept; a pick is never dropped.
    """
    out = with_acceptance(df)
    accepted = out[ACCEPTED].to_numpy(dtype=bool, copy=True)
    mask = np.asarray(mask, dtype=bool) & accepted
    if mask.any():
        accepted[mask] = False
        reasons = out[REASON].to_numpy(dtype=object, copy=True)
        reasons[mask] = reason
        out[ACCEPTED] = accepted
        out[REASON] = pd.Series(reasons, index=out.index, dtype=object)
    return out
