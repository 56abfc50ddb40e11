"""Advice on the diameter range: clear particles refined just outside it.

The refiner may move a pick's diameter up to 25 % beyond the scales the
detector searched; the ``diameter_range`` filter then rejects it. A few such
rejections are noise blobs and fragments at the ends of the range. Many of
them, with edges as clear as those of the accepted picks, mean the particles
themselves reach beyond ``dmin`` or ``dmax``: on the real liposome image
``Fusion-G-87`` with ``dmin=40`` px, 67 candidates refined to 31-38 px have
an edge at least as clear as the median accepted pick's (120 accepted), while
the simulated suites (150-500 Å particles, the default range) have 21-39 per
~860 accepted picks and the apoferritin sample none.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from lipoframe import schema
from lipoframe.plan import OUTLIER_REASON, format_range

#: A side of the range is reported when at least this many clear candidates lie beyond it ...
MIN_CLEAR = 5
#: ... and they number at least this fraction of the accepted picks.
MIN_FRACTION = 0.15
#: Accepted picks needed to say what a clear edge is.
MIN_ACCEPTED = 20


def _round_out(value: float, *, up: bool) -> float:
    """``value`` rounded outwards to two significant digits (30.5 -> 30, 112 -> 110; up: 512 -> 520)."""
    if not value > 0:
        return value
    step = 10.0 ** (math.floor(math.log10(value)) - 1)
    return (math.ceil if up else math.floor)(value / step) * step


def range_notes(
    picks: pd.DataFrame,
    bounds_px: dict[str, tuple[float, float]],
    *,
    dmin: float,
    dmax: float,
    units: str,
) -> list[str]:
    """Notes for a run whose clear particles were refined beyond its diameter range.

    A candidate counts when it was rejected with ``diameter_range``, its
    ``quality`` is at least the median ``quality`` of the accepted picks, and
    it lies below its micrograph's ``dmin`` (or above ``dmax``). A side is
    reported when at least :data:`MIN_CLEAR` candidates count and they are at
    least :data:`MIN_FRACTION` of the accepted picks (of which there must be
    :data:`MIN_ACCEPTED`).

    Parameters
    ----------
    picks : DataFrame
        Every candidate of the run (accepted and rejected), with
        ``micrograph``, ``diameter_px``, ``accepted``, ``reject_reason`` and
        ``quality`` (without ``quality``, e.g. ``refiner=none``, no note).
    bounds_px : dict
        Micrograph name -> its ``(dmin, dmax)`` in full-resolution pixels.
    dmin, dmax : float
        The run's range, in ``units``; the notes quote diameters in them.
    units : str
        ``"px"`` or ``"A"``, for the message.

    Returns
    -------
    notes : list of str
        At most one note per side of the range.

    Notes
    -----
    Picks the binning flagged as size outliers (``binning_outlier``) count
    as accepted: the note is about the picking's range, and the same saved
    picks must give the same note whatever binning ``lipoframe plan`` tries
    (else a plan repeats the run's note with other numbers).
    """
    needed = {schema.MICROGRAPH, schema.DIAMETER, schema.ACCEPTED, schema.REASON, schema.QUALITY}
    if not len(picks) or not needed <= set(picks.columns):
        return []
    reasons = picks[schema.REASON].astype(str).to_numpy()
    accepted = picks[schema.ACCEPTED].to_numpy(dtype=bool) | (reasons == OUTLIER_REASON)
    if accepted.sum() < MIN_ACCEPTED:
        return []
    quality = picks[schema.QUALITY].to_numpy(dtype=float)
    bar = float(np.nanmedian(quality[accepted]))
    mics = picks[schema.MICROGRAPH]
    lo_px = mics.map({m: b[0] for m, b in bounds_px.items()}).to_numpy(dtype=float)  # NaN: no bounds, never counted
    hi_px = mics.map({m: b[1] for m, b in bounds_px.items()}).to_numpy(dtype=float)
    d = picks[schema.DIAMETER].to_numpy(dtype=float)
    clear = (reasons == "diameter_range") & (quality >= bar)
    unit = "Å" if units == "A" else "px"
    notes = []
    for below in (True, False):
        side = clear & ((d < lo_px) if below else (d > hi_px))
        n = int(side.sum())
        if n < MIN_CLEAR or n < MIN_FRACTION * accepted.sum():
            continue
        # In the run's units: the same ratio to the micrograph's bound.
        run_d = d[side] / lo_px[side] * dmin if below else d[side] / hi_px[side] * dmax
        q_lo, q_hi = np.percentile(run_d, [5, 95])
        name, bound, word = ("dmin", dmin, "below") if below else ("dmax", dmax, "above")
        suggest = _round_out(q_lo if below else q_hi, up=not below)
        span = format_range(q_lo, q_hi)
        notes.append(
            f"{n} candidates with edges as clear as the accepted picks' were refined to "
            f"{span} {unit}, {word} {name}={bound:g} {unit} (rejected: diameter_range): "
            f"the particles may extend {word} the range; check the overlays and consider {name}={suggest:g}"
        )
    return notes
