"""Built-in filter stages (run after refinement, in the order selected).

Filters flag picks (``accepted=False`` with a ``reject_reason``); they never
drop rows, so every decision stays visible in the output tables.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

from lipoframe import schema
from lipoframe.builtin.junk import DARKNESS, SURROUND
from lipoframe.hookspecs import hookimpl
from lipoframe.records import Micrograph, PickContext, length_px
from lipoframe.stages import Filter, check_finite


@dataclass
class DiameterRangeParams:
    """Reject picks whose diameter is outside the run's [dmin, dmax] widened by ``tolerance``.

    tolerance: relative widening of the range on both sides (0.05 = 5%): the
        measurement error of a refined diameter (median 0.7 % on the
        simulated suite, a few % for faint particles).
    """

    tolerance: float = 0.05

    def __post_init__(self) -> None:
        check_finite(self, "filter.diameter_range")
        if not 0 <= self.tolerance < 1:
            raise ValueError(f"filter.diameter_range.tolerance must be in [0, 1), got {self.tolerance}")


class DiameterRangeFilter(Filter):
    name = "diameter_range"
    Params = DiameterRangeParams
    summary = "reject picks whose diameter is outside [dmin, dmax] (with a tolerance)"
    reasons = ("diameter_range",)

    def apply(self, picks: pd.DataFrame, mic: Micrograph, ctx: PickContext) -> pd.DataFrame:
        d = picks[schema.DIAMETER].to_numpy(dtype=float)
        t = self.params.tolerance
        bad = (d < ctx.dmin_px * (1 - t)) | (d > ctx.dmax_px * (1 + t))
        return schema.reject(picks, bad, "diameter_range")


@dataclass
class ScoreParams:
    """Reject picks whose ``score`` is below ``min_score``."""

    min_score: float = 0.0

    def __post_init__(self) -> None:
        check_finite(self, "filter.score")


class ScoreFilter(Filter):
    name = "score"
    Params = ScoreParams
    summary = "reject picks below a score"
    reasons = ("score",)

    def apply(self, picks: pd.DataFrame, mic: Micrograph, ctx: PickContext) -> pd.DataFrame:
        bad = picks[schema.SCORE].to_numpy(dtype=float) < self.params.min_score
        return schema.reject(picks, bad, "score")


MIN_SIZE_UNITS = ("px", "A")


@dataclass
class MinSizeParams:
    """Reject picks (or heatmap components) smaller than a diameter.

    min_diameter: smallest diameter kept, in ``units``; 0 = the run's dmin.
    units: ``px`` (full-resolution pixels) or ``A`` (needs the pixel size).
    """

    min_diameter: float = 0.0
    units: str = "px"

    def __post_init__(self) -> None:
        check_finite(self, "filter.min_size")
        if self.min_diameter < 0:
            raise ValueError(f"filter.min_size.min_diameter must be >= 0 (0 = dmin), got {self.min_diameter}")
        if self.units not in MIN_SIZE_UNITS:
            raise ValueError(f"filter.min_size.units must be one of {MIN_SIZE_UNITS}, got {self.units!r}")


class MinSizeFilter(Filter):
    name = "min_size"
    Params = MinSizeParams
    summary = "reject picks whose diameter is below a size (default: dmin)"
    reasons = ("min_size",)

    def apply(self, picks: pd.DataFrame, mic: Micrograph, ctx: PickContext) -> pd.DataFrame:
        p = self.params
        limit = length_px(p.min_diameter, p.units, ctx, mic, "filter.min_size.min_diameter") if p.min_diameter else ctx.dmin_px
        bad = picks[schema.DIAMETER].to_numpy(dtype=float) < limit
        return schema.reject(picks, bad, "min_size")


def centres(picks: pd.DataFrame) -> np.ndarray:
    """(K, 2) ``x, y`` or (K, 3) ``x, y, z`` centres of a pick table (z when present)."""
    cols = [schema.X, schema.Y] + ([schema.Z] if schema.Z in picks.columns else [])
    return picks[cols].to_numpy(dtype=float).reshape(len(picks), len(cols))


NEIGHBOUR_UNITS = ("diameter", "px", "A")


@dataclass
class NeighbourOutlierParams:
    """Reject picks with fewer than ``min_neighbours`` accepted picks nearby.

    For particles known to cluster (on membranes, in lattices): an isolated
    pick is more likely a false positive. Distances are edge to edge (centre
    distance minus both radii), so big and small neighbours count alike.

    min_neighbours: neighbours a pick needs (>= 1).
    max_gap: largest edge-to-edge gap of a neighbour, in ``units``.
    units: ``diameter`` (multiples of the pick's own diameter), ``px`` or ``A``.
    """

    min_neighbours: int = 1
    max_gap: float = 0.5
    units: str = "diameter"

    def __post_init__(self) -> None:
        check_finite(self, "filter.neighbour_outlier")
        if self.min_neighbours < 1:
            raise ValueError(f"filter.neighbour_outlier.min_neighbours must be >= 1, got {self.min_neighbours}")
        if self.max_gap < 0:
            raise ValueError(f"filter.neighbour_outlier.max_gap must be >= 0, got {self.max_gap}")
        if self.units not in NEIGHBOUR_UNITS:
            raise ValueError(f"filter.neighbour_outlier.units must be one of {NEIGHBOUR_UNITS}, got {self.units!r}")


class NeighbourOutlierFilter(Filter):
    name = "neighbour_outlier"
    Params = NeighbourOutlierParams
    summary = "reject picks with fewer than N accepted neighbours within an edge-to-edge gap"
    reasons = ("neighbour_outlier",)

    def apply(self, picks: pd.DataFrame, mic: Micrograph, ctx: PickContext) -> pd.DataFrame:
        from scipy.spatial import cKDTree

        p = self.params
        out = schema.with_acceptance(picks)
        acc = out[schema.ACCEPTED].to_numpy(dtype=bool)
        xyz = centres(out)
        r = out[schema.DIAMETER].to_numpy(dtype=float) / 2.0
        if p.units == "diameter":
            gap = p.max_gap * 2.0 * r
        else:
            gap = np.full(len(r), length_px(p.max_gap, p.units, ctx, mic, "filter.neighbour_outlier.max_gap"))
        count = np.zeros(len(out), dtype=np.int64)
        idx = np.nonzero(acc)[0]
        if len(idx):
            tree = cKDTree(xyz[idx])
            r_max = float(r[idx].max())
            for i in idx:
                cand = idx[tree.query_ball_point(xyz[i], r[i] + r_max + gap[i])]
                cand = cand[cand != i]
                if len(cand):
                    edge = np.linalg.norm(xyz[cand] - xyz[i], axis=1) - r[cand] - r[i]
                    count[i] = int(np.count_nonzero(edge <= gap[i]))
        out["n_neighbours"] = count
        return schema.reject(out, count < p.min_neighbours, "neighbour_outlier")


@dataclass
class EdgeParams:
    """Reject picks too close to the micrograph (or tomogram) border.

    The allowed distance scales with each pick's size: a pick is rejected
    when its centre is closer to the border than ``margin`` times its radius
    (1 = the whole particle must lie inside; 0.5 = at most half the radius
    may stick out) plus ``extra_px``.

    margin: distance to the border in radii of the pick (>= 0).
    extra_px: additional fixed distance in full-resolution pixels (>= 0).
    z: in tomograms, also apply the rule to the top and bottom planes.
    """

    margin: float = 1.0
    extra_px: float = 0.0
    z: bool = True

    def __post_init__(self) -> None:
        check_finite(self, "filter.edge")
        if self.margin < 0:
            raise ValueError(f"filter.edge.margin must be >= 0, got {self.margin}")
        if self.extra_px < 0:
            raise ValueError(f"filter.edge.extra_px must be >= 0, got {self.extra_px}")


def border_distance(picks: pd.DataFrame, shape: tuple[int, ...], *, z: bool = True) -> np.ndarray:
    """Distance of each centre to the nearest image border, in pixels.

    The image covers ``[-0.5, n - 0.5]`` along an axis of length ``n``
    (pixel centres are 0-indexed), so a centre at pixel 0 is 0.5 px from it.
    """
    axes = [(schema.X, shape[-1]), (schema.Y, shape[-2])]
    if z and len(shape) == 3 and schema.Z in picks.columns:
        axes.append((schema.Z, shape[0]))
    dist = np.full(len(picks), np.inf)
    for col, n in axes:
        c = picks[col].to_numpy(dtype=float)
        dist = np.minimum(dist, np.minimum(c + 0.5, n - 0.5 - c))
    return dist


class EdgeFilter(Filter):
    name = "edge"
    Params = EdgeParams
    summary = "reject picks closer to the border than margin x their radius"
    reasons = ("edge",)

    def apply(self, picks: pd.DataFrame, mic: Micrograph, ctx: PickContext) -> pd.DataFrame:
        p = self.params
        r = picks[schema.DIAMETER].to_numpy(dtype=float) / 2.0
        bad = border_distance(picks, mic.shape, z=p.z) < p.margin * r + p.extra_px
        return schema.reject(picks, bad, "edge")


@dataclass
class PopulationParams:
    """Picks that count only with a crowd behind them.

    Accept a weak pick only when its micrograph holds many confident picks of
    its size and it does not overlap one of them; a confident pick with a
    faint edge only when a few picks of its size keep it company
    (``faint_quality``); reject a pick weak on every measure where the
    particles of its size are clear (``blank_contrast``); accept the picks of a
    (nearly) empty micrograph only when they look like the dataset's typical
    particle (``lonely_below``, once all micrographs are picked).

    A candidate that scored between the detector's ``weak_threshold`` and its
    ``threshold`` (``weak=True``) looks like a faint particle as often as like
    noise. Where confidently found particles of the same size already crowd
    the micrograph (a field packed with one kind of faint particle) it is
    most likely one more; on a sparse, polydisperse or empty micrograph it is
    not.

    min_occupancy: the confident accepted picks of the weak pick's size must
        cover at least this fraction of the micrograph's area (their number
        times the weak pick's disc area over the image area).
    min_support: and they must number at least this many.
    near_min_support: a weak pick that nearly made the threshold and has a
        clear edge (``score`` at least ``near_score``, ``quality`` at least
        ``near_quality``) needs only this many confident accepted picks of
        its size, and no ``min_occupancy``: in a polydisperse or moderately
        crowded field the picks of one size cover little of the micrograph,
        but such a pick is a particle far more often than noise (on the
        simulated suites, 111 particles against 7 false picks over six
        seeds). 0 turns it off.
    near_score, near_quality: see ``near_min_support``; the score in the
        detector's noise units (its ``threshold`` is 5.3, ``weak_threshold``
        4.0), the quality as the refiner's (the confident true particles of
        the suite have a median of 7.7).
    size_tolerance: "same size": diameters within this relative difference.
    weak_min_separation: a weak pick whose centre is closer to a confident
        accepted pick's than this fraction of the sum of their radii is
        rejected (``weak_overlap``): faint particles touch their neighbours,
        an arc or a fragment of a found particle overlaps it (on the
        simulated suite, accepted weak true particles lie at 0.97 or more,
        the weak false picks that overlap a particle at 0.51-0.76). 0 turns
        it off.
    faint_quality: a confident pick (not weak) whose edge ``quality`` is
        below this is rejected (``faint_unsupported``) unless the confident
        accepted picks of its size, itself included, cover at least
        ``faint_min_occupancy`` of the micrograph: a detection the refiner
        barely finds an edge for, of a size nothing else in the micrograph
        has, is a noise blob, a patch of carbon texture or a fragment more
        often than a particle (on the simulated suite such picks were 2 true
        particles and 30 false picks over four seeds; the confident true
        particles have a median quality of 7.7). 0 turns it off.
    faint_min_occupancy: see ``faint_quality``. 0.01 is six picks of 200 px
        on a 4096² micrograph; one pick of 463 px or more passes alone.
    lonely_below: once all micrographs are picked, a micrograph with fewer
        confident accepted picks than this (an empty hole, a broken or
        thick-ice area) keeps only picks whose ``quality`` reaches the median
        of the confident picks of the other micrographs: every micrograph
        has a few noise maxima that pass the detector, and where they are
        all there is, they are most of what was picked. Applies only where
        such micrographs are the exception (at least half of the dataset's
        micrographs have more; in a dataset of sparse micrographs few picks
        are the norm) and at least ``min_support`` confident picks elsewhere
        say what is typical; 0 turns it off. Single-micrograph runs
        (``pick()``) have no dataset to compare with.
    lonely_fraction: a micrograph also counts as nearly empty when its
        confident accepted picks are fewer than this fraction of the median
        number per micrograph of the dataset (micrographs without picks
        count as 0): 4k micrographs of noise alone gave 1-9 confident picks
        on the simulated suites, the median micrograph there about 45.
    blank_contrast: where the confident accepted picks of a pick's size
        stand out (their median contrast over their surroundings,
        ``darkness - surround_darkness`` of the ``contamination`` filter, is
        at least ``blank_min_contrast``), a pick with less than this
        fraction of that contrast, and less than ``blank_strength`` of their
        median detector ``score`` and of their median edge ``quality``, is
        rejected (``blank``): weak on every measure where the particles of
        its size are strong on all of them — a circle on plain background
        at the detector's threshold, around a cluster of specks or in a gap
        between particles. 0 turns it off; without the ``contamination``
        filter's columns it does nothing.
    blank_strength: see ``blank_contrast``. A particle with an edge (a
        thin-membrane vesicle, whose lumen is ice, among solid particles of
        its size) keeps the detector's score of its neighbours and is not
        ``blank``.
    blank_min_contrast: the typical contrast (background spreads) from which
        the comparison is made: below one spread single particles scatter
        down to no contrast at all, and the scores of a size's confident
        picks sit too close to the detector's threshold for half of them to
        say anything.
    blank_min_support: the confident accepted picks of the pick's size
        (itself included) that it takes to say what is typical.
    """

    min_occupancy: float = 0.08
    min_support: int = 20
    near_min_support: int = 8
    near_score: float = 4.8
    near_quality: float = 5.0
    size_tolerance: float = 0.1
    weak_min_separation: float = 0.9
    lonely_below: int = 3
    faint_quality: float = 4.0
    faint_min_occupancy: float = 0.01
    lonely_fraction: float = 0.2
    blank_contrast: float = 0.25
    blank_strength: float = 0.5
    blank_min_contrast: float = 1.0
    blank_min_support: int = 5

    def __post_init__(self) -> None:
        check_finite(self, "filter.population")
        if not 0 <= self.min_occupancy <= 1:
            raise ValueError(f"filter.population.min_occupancy must be in [0, 1], got {self.min_occupancy}")
        if self.min_support < 1:
            raise ValueError(f"filter.population.min_support must be >= 1, got {self.min_support}")
        if self.near_min_support < 0:
            raise ValueError(f"filter.population.near_min_support must be >= 0 (0 = off), got {self.near_min_support}")
        for name in ("near_score", "near_quality"):
            if not getattr(self, name) > 0:
                raise ValueError(f"filter.population.{name} must be > 0, got {getattr(self, name)}")
        if not 0 < self.size_tolerance < 1:
            raise ValueError(f"filter.population.size_tolerance must be in (0, 1), got {self.size_tolerance}")
        if not 0 <= self.weak_min_separation <= 1:
            raise ValueError(f"filter.population.weak_min_separation must be in [0, 1], got {self.weak_min_separation}")
        if not self.faint_quality >= 0:
            raise ValueError(f"filter.population.faint_quality must be >= 0 (0 = off), got {self.faint_quality}")
        if not 0 <= self.faint_min_occupancy <= 1:
            raise ValueError(f"filter.population.faint_min_occupancy must be in [0, 1], got {self.faint_min_occupancy}")
        if self.lonely_below < 0:
            raise ValueError(f"filter.population.lonely_below must be >= 0, got {self.lonely_below}")
        if not 0 <= self.lonely_fraction < 1:
            raise ValueError(f"filter.population.lonely_fraction must be in [0, 1), got {self.lonely_fraction}")
        if not 0 <= self.blank_contrast < 1:
            raise ValueError(f"filter.population.blank_contrast must be in [0, 1) (0 = off), got {self.blank_contrast}")
        if not 0 < self.blank_strength <= 1:
            raise ValueError(f"filter.population.blank_strength must be in (0, 1], got {self.blank_strength}")
        if not self.blank_min_contrast > 0:
            raise ValueError(f"filter.population.blank_min_contrast must be > 0, got {self.blank_min_contrast}")
        if self.blank_min_support < 1:
            raise ValueError(f"filter.population.blank_min_support must be >= 1, got {self.blank_min_support}")


def same_size_support(diameters: np.ndarray, reference: np.ndarray, *, tolerance: float) -> np.ndarray:
    """Number of ``reference`` diameters within ``tolerance`` (relative) of each diameter.

    Parameters
    ----------
    diameters : (K,) ndarray
    reference : (L,) ndarray
    tolerance : float
        ``reference`` value ``r`` counts for ``d`` when ``|r / d - 1| < tolerance``.

    Returns
    -------
    count : (K,) ndarray of int
    """
    lo, hi = _same_size_windows(np.asarray(diameters, dtype=float), np.sort(np.asarray(reference, dtype=float), kind="stable"),
                                tolerance=tolerance)
    return hi - lo


def _same_size_windows(d: np.ndarray, sorted_ref: np.ndarray, *, tolerance: float) -> tuple[np.ndarray, np.ndarray]:
    """``(lo, hi)``: the slice of ``sorted_ref`` within ``tolerance`` (relative, strict) of each of ``d``."""
    return (np.searchsorted(sorted_ref, d * (1 - tolerance), side="right"),
            np.searchsorted(sorted_ref, d * (1 + tolerance), side="left"))


#: Values :func:`same_size_medians` sorts at a time (windows x the widest window x measures): 8 MB an array of float64.
_MEDIAN_CHUNK = 1 << 20


def same_size_medians(diameters: np.ndarray, reference: np.ndarray, values: np.ndarray, *, tolerance: float,
                      min_count: int) -> np.ndarray:
    """Median of ``values`` over the ``reference`` diameters within ``tolerance`` of each diameter.

    Parameters
    ----------
    diameters : (K,) ndarray
    reference : (L,) ndarray
        Diameters of the picks that set what is typical.
    values : (L, M) or (L,) ndarray
        Their measurements, one column per quantity.
    tolerance : float
        As in :func:`same_size_support`.
    min_count : int
        Fewer reference picks of the size than this give ``NaN``.

    Returns
    -------
    medians : (K, M) ndarray
        ``NaN`` where the size has fewer than ``min_count`` reference picks
        (NaN values are left out of a median, and count against ``min_count``).

    Examples
    --------
    >>> same_size_medians(np.r_[50.0, 80.0], np.r_[48.0, 50.0, 52.0, 100.0], np.c_[[1.0, 2.0, 4.0, 9.0]],
    ...                   tolerance=0.1, min_count=3).ravel().tolist()
    [2.0, nan]
    """
    d = np.asarray(diameters, dtype=float)
    ref = np.asarray(reference, dtype=float)
    vals = np.asarray(values, dtype=float)
    vals = vals[:, None] if vals.ndim == 1 else vals
    order = np.argsort(ref, kind="stable")
    ref, vals = ref[order], vals[order]
    lo, hi = _same_size_windows(d, ref, tolerance=tolerance)
    # Picks of the same window of reference sizes share their medians: each window once, its values in a row
    # (padded with inf, as the NaN left out), sorted, the middle one or two of its finite values taken. Windows
    # of about the same width go together (little padding), as many at a time as keep memory bounded.
    windows, which = np.unique(np.c_[lo, np.maximum(hi, lo)], axis=0, return_inverse=True)
    widths = windows[:, 1] - windows[:, 0]
    medians = np.full((len(windows), vals.shape[1]), np.nan)
    by_width = np.argsort(widths, kind="stable")
    start = np.searchsorted(widths[by_width], 1)  # empty windows: NaN
    while start < len(by_width):
        rows_max = max(1, _MEDIAN_CHUNK // (int(widths[by_width[-1]]) * vals.shape[1]))
        group = by_width[start:start + rows_max]
        start += len(group)
        width = int(widths[group[-1]])
        idx = windows[group, :1] + np.arange(width)
        rows = vals[np.minimum(idx, len(ref) - 1)]  # (windows, width, M)
        inside = (idx < windows[group, 1:])[:, :, None] & np.isfinite(rows)
        rows = np.sort(np.where(inside, rows, np.inf), axis=1)
        n = np.sum(inside, axis=1)  # finite values of each window, per measure
        low = np.take_along_axis(rows, (np.maximum(n, 1)[:, None, :] - 1) // 2, axis=1)[:, 0]
        high = np.take_along_axis(rows, np.minimum(n // 2, width - 1)[:, None, :], axis=1)[:, 0]
        with np.errstate(invalid="ignore"):  # inf - inf of a window without finite values: left out below
            mid = np.where(n % 2 == 1, low, (low + high) / 2)  # as np.median
        medians[group] = np.where((n >= min_count) & (n > 0), mid, np.nan)
    return medians[which.ravel()]


def blank_picks(picks: pd.DataFrame, reference: np.ndarray, *, params: PopulationParams) -> np.ndarray:
    """Accepted picks weak on every measure where the clearly visible particles of their size are strong.

    Parameters
    ----------
    picks : DataFrame
        With ``diameter_px``, ``accepted``, ``score``, ``quality``,
        ``darkness`` and ``surround_darkness``.
    reference : (K,) ndarray of bool
        The picks that set what is typical (confident accepted picks).
    params : PopulationParams
        ``blank_contrast``, ``blank_strength``, ``blank_min_contrast``,
        ``blank_min_support`` and ``size_tolerance``.

    Returns
    -------
    blank : (K,) ndarray of bool
        ``False`` for rejected picks and where the size has no clearly
        visible typical particle.
    """
    p = params
    d = picks[schema.DIAMETER].to_numpy(dtype=float)
    contrast = picks[DARKNESS].to_numpy(dtype=float) - picks[SURROUND].to_numpy(dtype=float)
    score = picks[schema.SCORE].to_numpy(dtype=float)
    quality = picks[schema.QUALITY].to_numpy(dtype=float)
    ref = np.asarray(reference, dtype=bool)
    todo = picks[schema.ACCEPTED].to_numpy(dtype=bool)
    typical = np.full((len(d), 3), np.nan)
    typical[todo] = same_size_medians(d[todo], d[ref], np.c_[contrast[ref], score[ref], quality[ref]],
                                      tolerance=p.size_tolerance, min_count=p.blank_min_support)
    with np.errstate(invalid="ignore"):
        return todo & ((typical[:, 0] >= p.blank_min_contrast) & (contrast < p.blank_contrast * typical[:, 0])
                       & (score < p.blank_strength * typical[:, 1]) & (quality < p.blank_strength * typical[:, 2]))


def nearest_separation(xy: np.ndarray, radii: np.ndarray, ref_xy: np.ndarray, ref_radii: np.ndarray) -> np.ndarray:
    """Smallest centre distance to a reference circle, over the sum of the two radii.

    1 where two circles touch, below 1 where they overlap.

    Parameters
    ----------
    xy : (K, 2) ndarray
    radii : (K,) ndarray
    ref_xy : (L, 2) ndarray
    ref_radii : (L,) ndarray

    Returns
    -------
    separation : (K,) ndarray
        ``inf`` where no reference circle comes within reach (or ``L == 0``).
    """
    out = np.full(len(xy), np.inf)
    if len(xy) == 0 or len(ref_xy) == 0:
        return out
    tree = cKDTree(ref_xy)
    reach = np.asarray(radii, float) + float(np.max(ref_radii))
    for i, near in enumerate(tree.query_ball_point(xy, reach)):
        if near:
            near = np.asarray(near)
            dist = np.hypot(*(ref_xy[near] - xy[i]).T)
            out[i] = float(np.min(dist / (radii[i] + ref_radii[near])))
    return out


class PopulationFilter(Filter):
    name = "population"
    Params = PopulationParams
    summary = ("weak picks (and confident ones with a faint edge) only among confident picks of their size; no blank circles "
               "among clear particles; nearly empty micrographs keep typical-looking picks only")
    reasons = ("weak_unsupported", "faint_unsupported", "weak_overlap", "blank", "lonely")

    def apply(self, picks: pd.DataFrame, mic: Micrograph, ctx: PickContext) -> pd.DataFrame:
        out = schema.with_acceptance(picks)
        weak = schema.weak_mask(out)
        acc = out[schema.ACCEPTED].to_numpy(dtype=bool)
        d = out[schema.DIAMETER].to_numpy(dtype=float)
        p = self.params
        support = same_size_support(d, d[acc & ~weak], tolerance=p.size_tolerance)
        area = float(np.prod(mic.shape[-2:]))
        occupancy = support * (np.pi / 4.0) * d**2 / area
        out[schema.SUPPORT] = support
        out["support_occupancy"] = occupancy
        unsupported = (support < p.min_support) | (occupancy < p.min_occupancy)
        if p.near_min_support > 0 and schema.QUALITY in out.columns:
            # Nearly confident, with a clear edge: a few picks of its size are company enough.
            near = (out[schema.SCORE].to_numpy(dtype=float) >= p.near_score) & (out[schema.QUALITY].to_numpy(dtype=float) >= p.near_quality)
            unsupported &= ~(near & (support >= p.near_min_support))
        out = schema.reject(out, weak & unsupported, "weak_unsupported")
        if p.faint_quality > 0 and schema.QUALITY in out.columns:
            # Confident picks with a barely-found edge need company of their size.
            faint = acc & ~weak & (out[schema.QUALITY].to_numpy(dtype=float) < p.faint_quality) & (occupancy < p.faint_min_occupancy)
            out = schema.reject(out, faint, "faint_unsupported")
        if p.weak_min_separation > 0:
            confident = acc & ~weak
            xy = out[[schema.X, schema.Y]].to_numpy(dtype=float)
            sep = nearest_separation(xy[weak], d[weak] / 2, xy[confident], d[confident] / 2)
            overlap = np.zeros(len(out), dtype=bool)
            overlap[weak] = sep < p.weak_min_separation
            out = schema.reject(out, overlap, "weak_overlap")
        if p.blank_contrast > 0 and {schema.SCORE, schema.QUALITY, DARKNESS, SURROUND} <= set(out.columns):
            out = schema.reject(out, blank_picks(out, acc & ~weak, params=p), "blank")
        return out

    def apply_dataset(self, picks: pd.DataFrame, metas: dict, ctx: PickContext) -> pd.DataFrame:
        """Picks of (nearly) empty micrographs must look like the dataset's typical particle."""
        p = self.params
        if not len(picks) or p.lonely_below == 0 or schema.QUALITY not in picks.columns:
            return picks
        out = schema.with_acceptance(picks)
        confident = schema.confident_mask(out)
        names = out[schema.MICROGRAPH].to_numpy()
        counts = pd.Series(confident).groupby(names, sort=False).sum()
        n_micrographs = max(len(metas), len(counts))  # metas also lists micrographs without picks
        every = np.zeros(n_micrographs)
        every[: len(counts)] = counts.to_numpy()
        limit = max(float(p.lonely_below), p.lonely_fraction * float(np.median(every)))
        lonely = pd.Series(names).map(counts).to_numpy() < limit
        quality = out[schema.QUALITY].to_numpy(dtype=float)
        reference = quality[confident & ~lonely]
        if len(reference) < p.min_support or 2 * int((counts >= limit).sum()) < n_micrographs:
            return out  # too few particles elsewhere, or sparse micrographs are the norm here
        typical = float(np.median(reference))
        return schema.reject(out, lonely & ~(quality >= typical), "lonely")


@hookimpl
def lipoframe_register_stages(registry):
    registry.add(DiameterRangeFilter)
    registry.add(ScoreFilter)
    registry.add(MinSizeFilter)
    registry.add(NeighbourOutlierFilter)
    registry.add(EdgeFilter)
    registry.add(PopulationFilter)
