"""Built-in binning policies: how the dataset's diameters become extraction bins.

Every policy works on the accepted picks of the whole dataset and returns the
table with a ``size_bin`` column (``-1`` for rejected picks) and an
:class:`~lipoframe.plan.ExtractionPlan`. Policies that reject size outliers
(``kmeans``, ``hac``) flag them (``accepted=False``,
``reject_reason="binning_outlier"``); no pick is ever dropped.

==============  ==============================================================
``single``      one bin, one box for everything
``peak_valley``  modes of the smoothed histogram; bin edges at the valleys;
                broad modes split where that saves pixels (default)
``quantile``    ``n_bins`` equal-count bins
``kmeans``      SIMPLE segdiampick: 10 k-means clusters, edge clusters and
                Z-score outliers rejected, accepted range gates the picks
``hac``         SIMPLE segdiampick: 1-D HAC (threshold = global sd), Z-score
                outliers rejected, one bin per accepted population
==============  ==============================================================

See ``docs/binning.md``.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from lipoframe import schema
from lipoframe.algorithms import binning as algo
from lipoframe.hookspecs import hookimpl
from lipoframe.plan import COSINE_EDGE_WIDTH_PX, OUTLIER_REASON, ExtractionPlan, SizeBin, format_range, round_up_box
from lipoframe.records import MicrographMeta, PickContext
from lipoframe.stages import Binner, BinningResult, check_finite

log = logging.getLogger("lipoframe")

ROUNDINGS = ("multiple32", "fft", "even")
#: Above this upsampling (micrograph pixel size over ``extract_pixel_size``) the note is also a warning.
MAX_UPSAMPLING = 2.0
BROAD_SPLITS = ("quantile", "min_waste")


@dataclass
class BoxParams:
    """Box-size settings shared by the binning policies.

    pad: box edge = pad * largest diameter of the bin (1.4-1.6).
    rounding: ``multiple32`` (next multiple of 32 with no prime factor above
        13), ``fft`` (next even size
        with factors 2, 3, 5) or ``even``; always rounds up.
    extract_pixel_size: also give box sizes for extraction at this Å/px.
    """

    pad: float = 1.5
    rounding: str = "multiple32"
    extract_pixel_size: float | None = None

    def __post_init__(self) -> None:
        check_finite(self, "binning")
        if not 1.4 <= self.pad <= 1.6:
            raise ValueError(f"binning.pad must be in [1.4, 1.6], got {self.pad}")
        if self.rounding not in ROUNDINGS:
            raise ValueError(f"binning.rounding must be one of {ROUNDINGS}, got {self.rounding!r}")
        if self.extract_pixel_size is not None and not self.extract_pixel_size > 0:
            raise ValueError(f"binning.extract_pixel_size must be > 0, got {self.extract_pixel_size}")


def box_for(d_max_px: float, params: BoxParams) -> int:
    """Box edge (px) for a bin whose largest diameter is ``d_max_px``."""
    return round_up_box(params.pad * d_max_px, rounding=params.rounding)


def job_box(d_max_px: float, params: BoxParams, pixel_size: float | None) -> int:
    """Box of the images a bin's extraction job gives (px).

    The box at ``params.extract_pixel_size`` when that is set and the
    micrographs' ``pixel_size`` is known (the particles come out rescaled to
    it), else :func:`box_for`. Two bins with the same job box are the same
    extraction job (``merge_same_box``), and the pixels a plan extracts are
    counted in this box.
    """
    px_extract = getattr(params, "extract_pixel_size", None)
    if px_extract and pixel_size:
        return round_up_box(params.pad * d_max_px * pixel_size / px_extract, rounding=params.rounding)
    return box_for(d_max_px, params)


def make_bin(index: int, lo: float, hi: float, count: int, params: BoxParams, pixel_size: float | None) -> SizeBin:
    """One size bin of a plan, with its box and mask sizes from its largest diameter ``hi``.

    Every built-in policy makes its bins with this function, and a binning
    plugin should too (see docs/plugins.md, "A binning policy"): the boxes
    then follow ``binning.pad``, ``binning.rounding`` and
    ``binning.extract_pixel_size`` as the built-in policies' do.

    Parameters
    ----------
    index : int
        The bin's number in the plan, from 0 (RELION ``rlnClassNumber`` =
        ``index + 1``); the picks in the bin get it as their ``size_bin``.
    lo, hi : float
        The smallest and largest diameter (full-resolution px) of the bin's
        picks, ``0 < lo <= hi``: the bin's range, and ``hi`` sets its box.
    count : int
        How many accepted picks the bin holds.
    params : BoxParams
        The box settings, normally the policy's own ``Params`` (a subclass
        of :class:`BoxParams`): ``pad`` (box edge = ``pad * hi`` before
        rounding up), ``rounding`` and ``extract_pixel_size``.
    pixel_size : float or None
        Å/px of the micrographs (``ctx.pixel_size``); None when unknown:
        the bin then has no mask diameter and no extraction box.

    Returns
    -------
    SizeBin
        ``box_px`` is ``pad * hi`` rounded up (:func:`box_for`);
        ``mask_diameter_A`` is SIMPLE's rule ``min((box - w) * px, 1.2 * hi * px)``,
        with ``w`` the cosine-edge width :data:`~lipoframe.plan.COSINE_EDGE_WIDTH_PX`.
        With ``params.extract_pixel_size`` (and a pixel size), the box at
        that pixel size ``box_px_extract`` is rounded first, and the box cut
        from the micrograph ``extract_size_px`` is ``box_px_extract *
        extract_pixel_size / pixel_size`` rounded to an even size, so that
        rescaling one to the other gives the asked pixel size (up to that
        rounding); the mask must then also fit the rescaled box,
        ``(box_px_extract - w) * pixel_size * extract_size_px / box_px_extract``.

    Raises
    ------
    ValueError
        If ``lo`` and ``hi`` are not diameters with ``0 < lo <= hi`` (both finite).

    Examples
    --------
    >>> from lipoframe.builtin.binning import BoxParams, make_bin
    >>> b = make_bin(0, 180.0, 220.0, 42, BoxParams(), pixel_size=1.06)
    >>> b.box_px, round(b.mask_diameter_A, 1)
    (352, 279.8)
    >>> b = make_bin(0, 180.0, 220.0, 42, BoxParams(extract_pixel_size=2.12), pixel_size=1.06)
    >>> b.box_px, b.box_px_extract, b.extract_size_px
    (352, 192, 384)
    >>> make_bin(1, 180.0, 220.0, 42, BoxParams(), pixel_size=None).mask_diameter_A is None
    True
    """
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo <= hi):
        raise ValueError(f"make_bin needs diameters 0 < lo <= hi (px), got lo={lo}, hi={hi}")
    box = box_for(hi, params)
    mask = None
    box_extract = window = None
    if pixel_size:
        mask = min((box - COSINE_EDGE_WIDTH_PX) * pixel_size, 1.2 * hi * pixel_size)
        if params.extract_pixel_size:
            box_extract = job_box(hi, params, pixel_size)
            window = 2 * max(1, round(box_extract * params.extract_pixel_size / pixel_size / 2))
            rescaled = pixel_size * window / box_extract
            mask = min(mask, (box_extract - COSINE_EDGE_WIDTH_PX) * rescaled)
        mask = float(mask)
    return SizeBin(index=index, d_min_px=float(lo), d_max_px=float(hi), count=int(count), box_px=box,
                   mask_diameter_A=mask, box_px_extract=box_extract, extract_size_px=window)


def _params_dict(params) -> dict:
    return {f.name: getattr(params, f.name) for f in dataclasses.fields(params)}


@dataclass
class SingleParams(BoxParams):
    """One bin for every accepted pick (one box size for the whole dataset)."""


class _PolicyBinner(Binner):
    """Shared frame of the policies.

    Subclasses implement :meth:`edges`, which sees the accepted diameters
    (px, at least one) and returns ``(edges, gate, notes, details)``: the bin
    edges (ascending, ``len >= 2``), an optional ``(lo, hi)`` acceptance gate
    (picks outside are flagged as ``binning_outlier``), remarks for the plan,
    and JSON-friendly diagnostics.
    """

    def min_picks(self) -> int:
        """Fewer accepted picks than this: one bin, no statistics."""
        return int(getattr(self.params, "min_picks", 1))

    def edges(self, d: np.ndarray, ctx: PickContext) -> tuple[np.ndarray, tuple[float, float] | None, list[str], dict]:
        raise NotImplementedError

    def assign(self, picks: pd.DataFrame, metas: dict[str, MicrographMeta], ctx: PickContext) -> BinningResult:
        out = schema.with_acceptance(picks)
        ok = out[schema.ACCEPTED].to_numpy(dtype=bool)
        d_all = out[schema.DIAMETER].to_numpy(dtype=float)
        d = d_all[ok]
        notes: list[str] = []
        details: dict = {"params": _params_dict(self.params)}
        gate = None
        if d.size == 0:
            msg = "no accepted picks: the plan has no bins"
            notes.append(msg)
            log.warning("binning: %s", msg)
            edges = np.array([])
        else:
            details["stats_px"] = algo.size_stats(d).to_dict()
            if d.size < self.min_picks():
                msg = (f"only {d.size} accepted pick(s), fewer than binning.min_picks={self.min_picks()}: "
                       f"one bin over all of them, no {self.name} statistics")
                notes.append(msg)
                log.warning("binning: %s", msg)
                edges = np.array([d.min(), d.max()])
            else:
                edges, gate, more, extra = self.edges(d, ctx)
                notes.extend(more)
                details.update(extra)
        details["n_outliers"] = 0
        if gate is not None:
            outside = (d_all < gate[0]) | (d_all > gate[1])
            n_out = int((outside & ok).sum())
            details["n_outliers"] = n_out
            out = schema.reject(out, outside, OUTLIER_REASON)
            if n_out:
                notes.append(f"{n_out} pick(s) outside the accepted range {gate[0]:.1f}-{gate[1]:.1f} px flagged as {OUTLIER_REASON}")
        ok = out[schema.ACCEPTED].to_numpy(dtype=bool)
        edges = np.asarray(edges, dtype=float)
        size_bin = np.full(len(out), schema.REJECTED_BIN, dtype=np.int64)
        pixel_size = ctx.pixel_size
        bins: list[SizeBin] = []
        if edges.size >= 2:
            # each bin is described by its members: its range is their [min, max]
            # and its box comes from the largest of them; empty bins vanish
            raw = algo.assign_to_edges(d_all[ok], edges)
            used = np.unique(raw[raw >= 0])
            new_index = np.full(edges.size - 1, schema.REJECTED_BIN, dtype=np.int64)
            new_index[used] = np.arange(used.size)
            size_bin[ok] = np.where(raw >= 0, new_index[np.maximum(raw, 0)], schema.REJECTED_BIN)
            d_ok = d_all[ok]
            for k, old in enumerate(used):
                members = d_ok[raw == old]
                bins.append(make_bin(k, members.min(), members.max(), members.size, self.params, pixel_size))
        same = [f"{a.index + 1} and {b.index + 1} ({_job_text(a, self.params)})" for a, b in zip(bins, bins[1:])
                if _job_key(a) == _job_key(b)]
        if same:
            if len(same) > 5:  # n_bins near the number of picks: hundreds of pairs on one line
                same = [*same[:5], f"{len(same) - 5} more pairs"]
            notes.append(f"bins {', '.join(same)} get the same box: extracting them apart gains nothing "
                         "(peak_valley, kmeans and hac merge such bins with merge_same_box=true)")
        notes.extend(_extract_notes(self.params, pixel_size))
        out[schema.SIZE_BIN] = size_bin
        plan = ExtractionPlan(
            policy=self.name,
            pixel_size=pixel_size,
            bins=tuple(bins),
            accepted_range_px=None if gate is None else (float(gate[0]), float(gate[1])),
            extract_pixel_size=getattr(self.params, "extract_pixel_size", None),
            polarity=ctx.polarity,
            notes=tuple(notes),
            details=details,
        )
        return BinningResult(picks=out, plan=plan)


def _job_key(b: SizeBin) -> int:
    """The box of a bin's extraction job: at the extraction pixel size if the plan has one."""
    return b.box_px if b.box_px_extract is None else b.box_px_extract


def _job_text(b: SizeBin, params) -> str:
    """A bin's extraction box as the same-box note names it."""
    if b.box_px_extract is None:
        return f"{b.box_px} px"
    return f"{b.box_px_extract} px at {params.extract_pixel_size:g} Å/px"


def _extract_notes(params, pixel_size: float | None) -> list[str]:
    px_extract = getattr(params, "extract_pixel_size", None)
    if not px_extract:
        return []
    if not pixel_size:
        return [f"binning.extract_pixel_size={px_extract:g} needs the micrographs' pixel size: no extraction box given"]
    if px_extract < pixel_size:
        factor = pixel_size / px_extract
        note = (f"binning.extract_pixel_size={px_extract:g} Å/px is finer than the micrographs ({pixel_size:g} Å/px): "
                f"that upsamples {factor:.3g}x")
        if factor > MAX_UPSAMPLING:
            # Extraction boxes 200 times larger are a slip (0.01 for 1.0), not a plan.
            note += "; check the value (the extraction boxes grow as much)"
            log.warning(note)
        return [note]
    return []


class SingleBinner(_PolicyBinner):
    name = "single"
    Params = SingleParams
    summary = "one bin, one box size for all accepted picks"

    def edges(self, d, ctx):
        return np.array([d.min(), d.max()]), None, [], {}


# ---------------------------------------------------------------------------
# peak_valley
# ---------------------------------------------------------------------------
#: Automatic histogram bar of ``peak_valley``: this fraction of the median diameter ...
AUTO_WIDTH_FRACTION = 0.06
#: ... and at most this many pixels (the fraction of a 200 px particle).
AUTO_WIDTH_MAX_PX = 12.0


def auto_bin_width(d: np.ndarray) -> float:
    """Histogram bar width (px) for diameters ``d``: 6 % of their median, at most 12 px.

    A fixed bar of 12 px resolves particles of 150-500 px, but merges the
    modes of small particles (50 and 80 px are 2.5 bars apart); a bar that
    is a fixed fraction of the particles' size keeps the same resolution at
    every scale.
    """
    d = np.asarray(d, dtype=float)
    med = float(np.median(d)) if d.size else 0.0
    return min(AUTO_WIDTH_MAX_PX, AUTO_WIDTH_FRACTION * med) if med > 0 else AUTO_WIDTH_MAX_PX


@dataclass
class PeakValleyParams(BoxParams):
    """Bins between the valleys of the smoothed diameter histogram.

    bin_width_px: histogram bin width in pixels; ``None`` (default): 6 % of the
        median accepted diameter, at most 12 px (12 px from 200 px up; finer
        for small or binned particles, whose modes 12 px bars would merge).
    smooth_sigma_bins: Gaussian smoothing of the histogram, in bins (0 = none).
    min_dip: a valley separates two modes only if it is this much lower than
        the lower of the two peaks (0.3 = 30%).
    dip_sigma: ...and deeper than this many Poisson standard deviations
        (guards small data sets against noise modes).
    max_bins: at most this many bins.
    broad_ratio: a mode whose 95th/5th diameter percentiles differ by more
        than this factor is broad: a single broad mode is split into
        ``broad_bins`` bins; broad modes among several get the bins
        ``max_bins`` leaves over, where they save the most pixels.
    broad_bins: at most this many bins for one broad mode (and no more
        than ``max_bins``).
    broad_split: how a broad mode is split: ``min_waste`` (default: fewest
        extracted pixels, at least ``min_bin_picks`` per bin; right for
        long tails of large vesicles) or ``quantile`` (equal counts).
    min_bin_picks: with ``min_waste``, the fewest picks a bin split off a
        broad mode may hold (stray picks, below, are exempt).
    stray_gap: fewer than ``min_bin_picks`` picks at the top of a bin that
        stand at least this fraction above the next smaller pick (0.3: 30 %
        larger) are *strays*: they would set the box of the whole bin. They
        join the next bin, or get a bin of their own if the bin is the last
        and ``max_bins`` allows (after the broad modes are split);
        ``null`` turns this off.
    merge_same_box: merge neighbouring bins that would get the same box.
    min_picks: fewer accepted picks: one bin.
    """

    bin_width_px: float | None = None
    smooth_sigma_bins: float = 0.75
    min_dip: float = 0.3
    dip_sigma: float = 2.0
    max_bins: int = 4
    broad_ratio: float = 1.3
    broad_bins: int = 3
    broad_split: str = "min_waste"
    min_bin_picks: int = 10
    stray_gap: float | None = 0.3
    merge_same_box: bool = True
    min_picks: int = 20

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.bin_width_px is not None and not self.bin_width_px > 0:
            raise ValueError(f"binning.bin_width_px must be > 0 (or null: automatic), got {self.bin_width_px}")
        if self.smooth_sigma_bins < 0:
            raise ValueError(f"binning.smooth_sigma_bins must be >= 0, got {self.smooth_sigma_bins}")
        if not 0 <= self.min_dip < 1:
            raise ValueError(f"binning.min_dip must be in [0, 1), got {self.min_dip}")
        if self.dip_sigma < 0:
            raise ValueError(f"binning.dip_sigma must be >= 0, got {self.dip_sigma}")
        if self.max_bins < 1:
            raise ValueError(f"binning.max_bins must be >= 1, got {self.max_bins}")
        if not self.broad_ratio >= 1:
            raise ValueError(f"binning.broad_ratio must be >= 1, got {self.broad_ratio}")
        if self.broad_bins < 1:
            raise ValueError(f"binning.broad_bins must be >= 1, got {self.broad_bins}")
        if self.broad_split not in BROAD_SPLITS:
            raise ValueError(f"binning.broad_split must be one of {BROAD_SPLITS}, got {self.broad_split!r}")
        if self.min_bin_picks < 1:
            raise ValueError(f"binning.min_bin_picks must be >= 1, got {self.min_bin_picks}")
        if self.min_picks < 1:
            raise ValueError(f"binning.min_picks must be >= 1, got {self.min_picks}")
        if self.stray_gap is not None and not self.stray_gap > 0:
            raise ValueError(f"binning.stray_gap must be > 0 (or null: off), got {self.stray_gap}")


class PeakValleyBinner(_PolicyBinner):
    name = "peak_valley"
    Params = PeakValleyParams
    summary = "bin edges at the valleys between histogram modes; broad modes split where that saves pixels"

    def edges(self, d, ctx):
        p = self.params
        width = p.bin_width_px or auto_bin_width(d)
        pv = algo.peak_valley_edges(
            d, bin_width=width, smooth_sigma_bins=p.smooth_sigma_bins,
            min_dip=p.min_dip, dip_sigma=p.dip_sigma, max_modes=p.max_bins,
        )
        centers = 0.5 * (pv.hist_edges[:-1] + pv.hist_edges[1:])
        q05, q95 = np.quantile(d, [0.05, 0.95])
        spread = float(q95 / q05) if q05 > 0 else float("inf")
        details = {
            "histogram": {"bin_width_px": round(width, 3), "smooth_sigma_bins": p.smooth_sigma_bins},
            "modes_px": [round(float(centers[i]), 2) for i in pv.peaks],
            "valleys_px": [round(float(v), 2) for v in pv.cuts],
            "valley_dips": [round(float(v), 3) for v in pv.dips],
            "spread_q95_over_q05": round(spread, 3),
        }
        notes = []
        how = "fewest-pixel" if p.broad_split == "min_waste" else "equal-count"
        # modes with clear valleys that max_bins left in one bin with a neighbour: the user's cap, not the data's shape
        clear = pv.peaks if pv.clear_peaks is None else pv.clear_peaks
        capped = clear.size > pv.n_modes
        if capped:
            details["clear_modes_px"] = [round(float(centers[i]), 2) for i in clear]
            # the edges at every clear valley, and the bins they give (same boxes merged)
            all_pv = algo.peak_valley_edges(d, bin_width=width, smooth_sigma_bins=p.smooth_sigma_bins,
                                            min_dip=p.min_dip, dip_sigma=p.dip_sigma, max_modes=clear.size)
            boxes = _group_boxes(d, all_pv.cuts, p, ctx.pixel_size)
            n_uncapped = len(set(boxes)) if p.merge_same_box else len(boxes)
        if pv.n_modes >= 2:
            edges = np.r_[d.min(), pv.cuts, d.max()]
            details["decision"] = f"{pv.n_modes} modes: edges at the valleys"
            if capped:
                details["decision"] = f"{clear.size} modes, {pv.n_modes} kept (binning.max_bins={p.max_bins}): edges at their valleys"
                notes.append(_capped_modes_note(centers[clear], pv.cuts, p.max_bins, n_uncapped))
            else:
                notes.append(f"{pv.n_modes} modes at {_px_list(centers[pv.peaks])} px; bin {_plural(pv.cuts.size, 'edge')} at the "
                             f"{_plural(pv.cuts.size, 'valley')} {_px_list(pv.cuts)} px")
            edges, split_notes, splits = _split_broad_modes(d, edges, p, ctx.pixel_size)
            notes.extend(split_notes)
            if splits:
                details["decision"] += f"; {len(splits)} broad mode(s) split into {how} bins"
                details["broad_mode_splits"] = splits
        elif capped:  # max_bins=1: every population in one bin
            edges = np.array([d.min(), d.max()])
            details["decision"] = f"{clear.size} modes: one bin (binning.max_bins=1)"
            notes.append(f"{clear.size} size populations (modes at {_px_list(centers[clear])} px; "
                         f"{_plural(all_pv.cuts.size, 'valley')} at {_px_list(all_pv.cuts)} px), "
                         + (f"but binning.max_bins=1 puts them in one bin with {_box_text(d.max(), p, ctx.pixel_size)}; "
                            + _uncapped_hint(clear.size, n_uncapped, "its own box") if n_uncapped > 1 else
                            f"in one bin: they all come out in {_box_text(d.max(), p, ctx.pixel_size)}, whatever binning.max_bins "
                            "(merge_same_box)"))
        elif spread > p.broad_ratio and min(p.broad_bins, p.max_bins) > 1:
            n_broad = min(p.broad_bins, p.max_bins)
            edges = _broad_split(d, n_broad, p, ctx.pixel_size)
            details["decision"] = f"one broad mode: {n_broad} {how} bins"
            notes.append(f"one mode, broad (p95/p5 = {spread:.2f} > {p.broad_ratio:g}): {len(edges) - 1} {how} bins")
        elif spread > p.broad_ratio:
            edges = np.array([d.min(), d.max()])
            details["decision"] = "one broad mode: one bin"
            limit = "binning.max_bins=1" if p.max_bins < 2 else "binning.broad_bins=1"
            notes.append(f"one mode, broad (p95/p5 = {spread:.2f} > {p.broad_ratio:g}): one bin ({limit})")
        else:
            edges = np.array([d.min(), d.max()])
            details["decision"] = "one narrow mode: one bin"
            notes.append(f"one mode, narrow (p95/p5 = {spread:.2f} <= {p.broad_ratio:g}): one bin")
        edges = self._strays(d, edges, notes, details, ctx.pixel_size)
        if p.merge_same_box and len(edges) > 2:
            merged = _merge_same_box(d, edges, p, ctx.pixel_size)
            if len(merged) < len(edges):
                notes.append(f"{len(edges) - len(merged)} bin(s) merged into a neighbour with the same box size"
                             + _at_extraction(p, ctx.pixel_size))
                edges = merged
        return edges, None, notes, details

    def _strays(self, d: np.ndarray, edges: np.ndarray, notes: list[str], details: dict,
                pixel_size: float | None = None) -> np.ndarray:
        """``edges`` with the stray picks moved out of their bins (:func:`~lipoframe.algorithms.binning.stray_edges`); notes and details added.

        The boxes compared are those the particles come out in (:func:`job_box`:
        at ``extract_pixel_size`` when it is set), as ``merge_same_box`` compares
        them: a pick that needs a larger box at the micrographs' pixel size but
        not at the extraction pixel size is no stray (its own bin would be
        merged back, or be a second extraction job in the same box).
        """
        p = self.params
        if p.stray_gap is None:
            return edges
        edges, moves = algo.stray_edges(d, edges, lambda v: job_box(v, p, pixel_size), gap=p.stray_gap,
                                        max_count=p.min_bin_picks - 1, max_bins=p.max_bins)
        at = _at_extraction(p, pixel_size)
        for m in moves:
            lo, hi = m["strays_px"]
            one = m["picks"] == 1
            what = f"1 pick of {lo:.0f} px stands" if one else f"{m['picks']} picks of {lo:.0f}-{hi:.0f} px stand"
            head = (f"stray pick{'' if one else 's'}: {what} far above the other {m['others']} picks of "
                    f"{'its' if one else 'their'} bin ({m['bin_px'][0]:.0f}-{m['next_smaller_px']:.0f} px)")
            if m["action"] == "none":
                notes.append(f"{head} and set{'s' if one else ''} their box to {m['box_px_before']} px{at} instead of "
                             f"{m['box_px_after']} px: no bin left (binning.max_bins={p.max_bins}); "
                             f"check {'it' if one else 'them'}: a stray is a rare large particle or junk (an ice ball, merged particles)")
            else:
                where = "joins the next bin" if m["action"] == "next_bin" else "gets a bin of its own"
                if not one:
                    where = "join the next bin" if m["action"] == "next_bin" else "get a bin of their own"
                notes.append(f"{head}; {'it' if one else 'they'} {where}, so the others get a {m['box_px_after']} px box{at} "
                             f"instead of {m['box_px_before']} px; check {'it' if one else 'them'}: a stray is a rare large particle "
                             f"or junk (an ice ball, merged particles)")
        if moves:
            details["strays"] = moves
        return edges


def _px_list(values) -> str:
    """``"56, 118"``: diameters (px) for a note."""
    return ", ".join(f"{v:.0f}" for v in values)


def _plural(n: int, word: str) -> str:
    return word if n == 1 else word + "s"


def _at_extraction(params: BoxParams, pixel_size: float | None) -> str:
    """``" at 8 Å/px"`` when boxes are at ``extract_pixel_size`` (:func:`job_box`), else ``""``: for a note's box sizes."""
    return f" at {params.extract_pixel_size:g} Å/px" if params.extract_pixel_size and pixel_size else ""


def _box_text(d_max_px: float, params: BoxParams, pixel_size: float | None) -> str:
    """``"a 512 px box"``, or with ``extract_pixel_size`` the box the particles come out in: ``"a 64 px box at 8 Å/px"``."""
    return f"a {job_box(d_max_px, params, pixel_size)} px box" + _at_extraction(params, pixel_size)


def _group_boxes(d: np.ndarray, cuts, params: BoxParams, pixel_size: float | None) -> list[int]:
    """The job box (:func:`job_box`) of each non-empty group of ``d`` between ``cuts``, smallest group first."""
    lab = algo.assign_to_edges(d, np.r_[d.min(), np.asarray(cuts, dtype=float), d.max()])
    return [job_box(float(d[lab == k].max()), params, pixel_size) for k in np.unique(lab[lab >= 0])]


def _uncapped_hint(n_modes: int, n_bins: int, each: str) -> str:
    """What ``binning.max_bins=<n_modes>`` gives, ``n_bins`` bins once the same boxes are merged (``each``: what each mode gets)."""
    if n_bins >= n_modes:
        return f"binning.max_bins={n_modes} gives each {each}"
    return f"binning.max_bins={n_modes} gives {n_bins} {'box' if n_bins == 1 else 'boxes'} (modes with the same box share a bin)"


def _capped_modes_note(modes, cuts, max_bins: int, n_uncapped: int | None = None) -> str:
    """The note of ``peak_valley`` when ``max_bins`` kept only ``cuts`` of the valleys between ``modes`` (px).

    ``n_uncapped``: the bins that edges at every valley give once bins with the
    same box are merged (default: one per mode).
    """
    groups = np.searchsorted(np.asarray(cuts, dtype=float), np.asarray(modes, dtype=float))
    shared = [np.asarray(modes)[groups == g] for g in np.unique(groups) if (groups == g).sum() > 1]
    together = "; ".join(f"the modes at {_px_list(m[:-1])} and {m[-1]:.0f} px share a bin" for m in shared)
    return (f"{len(modes)} modes at {_px_list(modes)} px, but binning.max_bins={max_bins}: bin edges only at the "
            f"{'deepest ' + _plural(len(cuts), 'valley')} {_px_list(cuts)} px, so {together}; "
            + _uncapped_hint(len(modes), len(modes) if n_uncapped is None else n_uncapped, "mode its own bin"))


def _broad_split(d: np.ndarray, n_bins: int, p: PeakValleyParams, pixel_size: float | None = None) -> np.ndarray:
    """Edges of ``d`` split into at most ``n_bins`` bins the way ``p.broad_split`` says.

    ``min_waste`` counts the pixels of the boxes the particles come out in
    (:func:`job_box`: at ``extract_pixel_size`` when it is set).
    """
    if p.broad_split == "min_waste":
        return algo.min_waste_edges(d, n_bins, lambda v: job_box(v, p, pixel_size), min_count=p.min_bin_picks)
    return algo.quantile_edges(d, n_bins)


def _pixels(d: np.ndarray, edges: np.ndarray, params: BoxParams, pixel_size: float | None = None) -> float:
    """Pixels extracted when the items ``d`` are binned by ``edges``: sum of count x job box**2 (:func:`job_box`)."""
    lab = algo.assign_to_edges(d, edges)
    return float(sum((lab == k).sum() * job_box(d[lab == k].max(), params, pixel_size) ** 2 for k in np.unique(lab[lab >= 0])))


def _split_broad_modes(d: np.ndarray, edges: np.ndarray, p: PeakValleyParams,
                       pixel_size: float | None = None) -> tuple[np.ndarray, list[str], list[dict]]:
    """Split broad modes of a multi-mode histogram with the bins ``max_bins`` leaves over.

    A long-tailed mode (many small vesicles and a tail of large ones) between
    two valleys would otherwise be extracted in the box of its largest member.
    A mode bin with at least ``min_picks`` members whose 95th/5th percentile
    ratio exceeds ``broad_ratio`` is split like a broad single mode (into at
    most ``broad_bins`` bins, ``broad_split``; sub-bins with the same box
    merged). The ``max_bins - n_modes`` spare bins go where they save the
    most extracted pixels (``sum of count x box**2``, searched exhaustively:
    at most ``max_bins`` modes); the valleys stay bin edges.

    Returns the new edges, plan notes and one record per split mode.
    """
    n = len(edges) - 1
    spare = p.max_bins - n
    if spare < 1 or p.broad_bins < 2:
        return edges, [], []
    lab = algo.assign_to_edges(d, edges)
    options: list[list[tuple[int, float, np.ndarray | None, dict | None, str]]] = []
    for k in range(n):
        m = d[lab == k]
        opts: list[tuple[int, float, np.ndarray | None, dict | None, str]] = [(0, 0.0, None, None, "")]
        if m.size >= p.min_picks and m.min() > 0:
            q05, q95 = np.quantile(m, [0.05, 0.95])
            spread = float(q95 / q05)
            if spread > p.broad_ratio:
                base = m.size * float(job_box(m.max(), p, pixel_size)) ** 2  # the whole mode in its largest member's box
                for parts in range(2, min(p.broad_bins, spare + 1) + 1):
                    sub = _broad_split(m, parts, p, pixel_size)
                    if len(sub) > 2:
                        sub = _merge_same_box(m, sub, p, pixel_size)
                    saved = base - _pixels(m, sub, p, pixel_size)
                    if len(sub) > 2 and saved > 0:
                        record = {"mode_bin_px": [round(float(m.min()), 2), round(float(m.max()), 2)],
                                  "spread_q95_over_q05": round(spread, 3), "bins": len(sub) - 1,
                                  "pixels_saved_fraction": round(saved / base, 3)}
                        # from the values, not the record's rounded ones: 37.4981 px would read 38 here and 37 in the table
                        note = (f"the mode of {format_range(m.min(), m.max())} px is broad (p95/p5 = {spread:.2f} > "
                                f"{p.broad_ratio:g}): split into {len(sub) - 1} bins at {_px_list(sub[1:-1])} px "
                                f"({100 * saved / base:.0f} % fewer pixels to extract)")
                        opts.append((len(sub) - 2, saved, sub[1:-1], record, note))
        options.append(opts)
    best, best_key = None, (0.0, 0)
    for combo in itertools.product(*options):
        extra = sum(o[0] for o in combo)
        key = (sum(o[1] for o in combo), -extra)
        if extra <= spare and key > best_key:  # most pixels saved; on a tie, fewer bins
            best, best_key = combo, key
    if best is None:
        return edges, [], []
    inner = [edges[1:-1]] + [o[2] for o in best if o[2] is not None]
    new_edges = np.r_[edges[0], np.sort(np.concatenate(inner), kind="stable"), edges[-1]]
    notes, splits = [], []
    for o in best:
        if o[3] is None:
            continue
        notes.append(o[4])
        splits.append({**o[3], "cuts_px": [round(float(v), 2) for v in o[2]]})
    return new_edges, notes, splits


def _merge_same_box(d: np.ndarray, edges: np.ndarray, params: BoxParams, pixel_size: float | None = None) -> np.ndarray:
    """Edges after merging neighbouring bins (of the items ``d``) whose extraction jobs have the same box (:func:`job_box`)."""
    lab = algo.assign_to_edges(d, edges)
    used = np.unique(lab[lab >= 0])
    lo = np.array([d[lab == k].min() for k in used])
    hi = np.array([d[lab == k].max() for k in used])
    cnt = np.array([(lab == k).sum() for k in used])
    lo, hi, _ = algo.merge_bins(lo, hi, cnt, lambda h: job_box(h, params, pixel_size), max_bins=len(used), merge_same_box=True)
    return np.r_[edges[0], 0.5 * (hi[:-1] + lo[1:]), edges[-1]]


# ---------------------------------------------------------------------------
# quantile
# ---------------------------------------------------------------------------
@dataclass
class QuantileParams(BoxParams):
    """``n_bins`` bins with (nearly) equal numbers of picks.

    n_bins: number of bins (fewer if many diameters are equal).
    min_picks: fewer accepted picks: one bin.
    """

    n_bins: int = 3
    min_picks: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_bins < 1:
            raise ValueError(f"binning.n_bins must be >= 1, got {self.n_bins}")
        if self.min_picks < 1:
            raise ValueError(f"binning.min_picks must be >= 1, got {self.min_picks}")


class QuantileBinner(_PolicyBinner):
    name = "quantile"
    Params = QuantileParams
    summary = "n equal-count bins"

    def edges(self, d, ctx):
        edges = algo.quantile_edges(d, self.params.n_bins)
        notes = []
        if len(edges) - 1 < self.params.n_bins:
            notes.append(f"only {len(edges) - 1} distinct quantile bin(s) of the {self.params.n_bins} asked (many equal diameters or few picks)")
        return edges, None, notes, {"quantile_edges_px": [round(float(e), 3) for e in edges]}


# ---------------------------------------------------------------------------
# kmeans / hac (SIMPLE segdiampick policy)
# ---------------------------------------------------------------------------
@dataclass
class _ClusterParams(BoxParams):
    sigma_crit: float = 2.0
    max_bins: int = 4
    merge_same_box: bool = True
    min_picks: int = 10

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.sigma_crit > 0:
            raise ValueError(f"binning.sigma_crit must be > 0, got {self.sigma_crit}")
        if self.max_bins < 1:
            raise ValueError(f"binning.max_bins must be >= 1, got {self.max_bins}")
        if self.min_picks < 1:
            raise ValueError(f"binning.min_picks must be >= 1, got {self.min_picks}")


@dataclass
class KMeansParams(_ClusterParams):
    """SIMPLE segdiampick (k-means path): 1-D k-means, then Z-score filtering.

    n_clusters: k-means clusters (SIMPLE: 10).
    exclude_edges: always reject the first and last cluster (SIMPLE's rule).
    sigma_crit: threshold of both Z-score tests (SIMPLE: 2.0).
    max_iter: k-means iterations at most.
    max_bins: extraction bins made from the accepted clusters (1 = SIMPLE's
        single box; more splits where a shared box wastes most pixels).
    merge_same_box: merge neighbouring bins that would get the same box.
    min_picks: fewer accepted picks (or fewer than n_clusters): one bin, no clustering.
    """

    n_clusters: int = 10
    exclude_edges: bool = True
    max_iter: int = 1000
    max_bins: int = 1
    min_picks: int = 30

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_clusters < 3 and self.exclude_edges:
            raise ValueError(f"binning.n_clusters must be >= 3 with exclude_edges, got {self.n_clusters}")
        if self.n_clusters < 1:
            raise ValueError(f"binning.n_clusters must be >= 1, got {self.n_clusters}")
        if self.max_iter < 1:
            raise ValueError(f"binning.max_iter must be >= 1, got {self.max_iter}")


@dataclass
class HacParams(_ClusterParams):
    """SIMPLE segdiampick (HAC path): 1-D agglomerative clustering, then Z-score filtering.

    threshold_px: largest centroid distance merged (px); null = the global
        standard deviation of the diameters (SIMPLE).
    sigma_crit: threshold of both Z-score tests (SIMPLE: 2.0).
    max_bins: at most this many extraction bins (one per accepted cluster,
        neighbours merged where a shared box costs least).
    merge_same_box: merge neighbouring bins that would get the same box.
    min_picks: fewer accepted picks: one bin, no clustering.
    """

    threshold_px: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.threshold_px is not None and not self.threshold_px > 0:
            raise ValueError(f"binning.threshold_px must be > 0 (or null = global sd), got {self.threshold_px}")


class _ClusterBinner(_PolicyBinner):
    def cluster(self, d: np.ndarray) -> tuple[np.ndarray, dict]:
        raise NotImplementedError

    def edges(self, d, ctx):
        p = self.params
        labels, info = self.cluster(d)
        filt = algo.zscore_filter(d, labels, sigma_crit=p.sigma_crit, exclude_edges=bool(getattr(p, "exclude_edges", False)))
        notes = []
        details = {
            **info,
            "median_px": round(filt.median, 3),
            "mad_gau_px": round(filt.mad_gau, 3),
            "pop_median": filt.pop_median,
            "pop_mad_gau": round(filt.pop_mad_gau, 3),
            "mean_test_suppressed": filt.mean_test_suppressed,
            "pop_test_suppressed": filt.pop_test_suppressed,
            "clusters": filt.rows(),
        }
        if filt.pop_test_suppressed:
            notes.append("population Z-score test suppressed: the MAD of the cluster populations is 0")
        if filt.mean_test_suppressed:
            notes.append("mean Z-score test suppressed: the MAD of the diameters is 0 (over half of them are equal)")
        n_acc = int(filt.accepted.sum())
        accepted = f"{n_acc} of {filt.n_clusters} clusters accepted (sigma_crit={p.sigma_crit:g})"
        if n_acc == 0:
            notes.append(accepted)
            notes.append("no cluster passed the Z-score tests: no picks rejected, one bin over all of them")
            log.warning("binning %s: no cluster passed the Z-score tests; keeping every pick in one bin", self.name)
            return np.array([d.min(), d.max()]), None, notes, details
        gate = filt.accepted_range()
        acc = filt.accepted
        # one group per accepted cluster, edges midway between them, so members
        # of a rejected cluster inside the accepted range join the nearer group;
        # the groups are described by their members (those picks included: they
        # can raise a group's box to its neighbour's), then merged where a shared
        # box costs least (in two steps, same boxes then max_bins, to say which
        # merged what: merge_bins does the zero-cost merges first, so this gives its result)
        lo, hi, cnt = _group_members(d, gate, 0.5 * (filt.dmax[acc][:-1] + filt.dmin[acc][1:]))
        box = lambda h: job_box(h, p, ctx.pixel_size)  # noqa: E731
        lo, hi, cnt = algo.merge_bins(lo, hi, cnt, box, max_bins=n_acc, merge_same_box=p.merge_same_box)
        n_same = lo.size
        lo, hi, _ = algo.merge_bins(lo, hi, cnt, box, max_bins=p.max_bins, merge_same_box=p.merge_same_box)
        merged = []
        if n_same < n_acc:
            merged.append(f"{n_acc - n_same} joined a neighbour with the same box{_at_extraction(p, ctx.pixel_size)}")
        if lo.size < n_same:
            merged.append(f"binning.max_bins={p.max_bins} merged {'the other ' if merged else ''}{n_same} into "
                          + ("one" if lo.size == 1 else f"{lo.size} where a shared box wastes the fewest pixels")
                          + f" (binning.max_bins={n_same} keeps them apart)")
        if merged:
            accepted += f", in {lo.size} {_plural(lo.size, 'bin')}: " + ", then ".join(merged)
        notes.append(accepted)
        edges = np.r_[gate[0], 0.5 * (hi[:-1] + lo[1:]), gate[1]]
        details["groups_before_merge"] = n_acc
        return edges, gate, notes, details


def _group_members(d: np.ndarray, gate: tuple[float, float], cuts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Smallest and largest diameter and count of the picks ``d`` inside ``gate`` in each group between ``cuts`` (empty groups left out)."""
    inside = d[(d >= gate[0]) & (d <= gate[1])]
    lab = algo.assign_to_edges(inside, np.r_[gate[0], cuts, gate[1]])
    used = np.unique(lab[lab >= 0])
    return (np.array([inside[lab == k].min() for k in used]), np.array([inside[lab == k].max() for k in used]),
            np.array([(lab == k).sum() for k in used], dtype=np.int64))


class KMeansBinner(_ClusterBinner):
    name = "kmeans"
    Params = KMeansParams
    summary = "SIMPLE segdiampick: 10 k-means clusters, edge + Z-score outlier clusters rejected"

    def min_picks(self) -> int:
        return max(self.params.min_picks, self.params.n_clusters)

    def cluster(self, d):
        labels, centers = algo.kmeans_1d(d, self.params.n_clusters, max_iter=self.params.max_iter)
        return labels, {"n_clusters": int(np.unique(labels).size), "centers_px": [round(float(c), 3) for c in centers]}


class HacBinner(_ClusterBinner):
    name = "hac"
    Params = HacParams
    summary = "SIMPLE segdiampick: 1-D HAC (threshold = global sd), Z-score outlier clusters rejected"

    def cluster(self, d):
        thr = self.params.threshold_px if self.params.threshold_px is not None else float(np.std(d))
        if thr <= 0:
            thr = 0.0
        labels, cents = algo.hac_1d(d, thr)
        return labels, {"threshold_px": round(thr, 3), "n_clusters": int(cents.size), "centroids_px": [round(float(c), 3) for c in cents]}


@hookimpl
def lipoframe_register_stages(registry):
    for cls in (SingleBinner, PeakValleyBinner, QuantileBinner, KMeansBinner, HacBinner):
        registry.add(cls)
