"""Filters that reject junk: ice contamination, carbon film and its edges, specks.

They flag picks (``accepted=False`` with a reason); nothing is dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from lipoframe import schema
from lipoframe.algorithms.binning import mad_gau
from lipoframe.algorithms.junk import darkness_concentration, disc_quantile, neighbourhood_measures
from lipoframe.algorithms.peel import disc_mask
from lipoframe.algorithms.regions import constant_cells, dense_regions, level_map
from lipoframe.algorithms.stats import background_stats
from lipoframe.algorithms.pyramid import pow2_floor, to_binned
from lipoframe.builtin.maskfilter import mean_in_discs
from lipoframe.hookspecs import hookimpl
from lipoframe.records import Micrograph, PickContext
from lipoframe.stages import Filter, check_finite


#: Columns of the contamination filter: darkness above the background (in
#: background spreads) and how many of the micrograph's picks set its typical particle.
DARKNESS = "darkness"
SURROUND = "surround_darkness"
REFERENCE = "contamination_reference"
TAIL = "tail_contrast"


def _working_factor(ctx: PickContext) -> int:
    """Binning of the image these filters measure on: the smallest particle about 8 px across."""
    return pow2_floor(ctx.dmin_px / 2.0 / 8.0)


def _working_level(picks: pd.DataFrame, mic: Micrograph, ctx: PickContext, stage: str):
    """The polarity-corrected image these filters measure on (the smallest
    particle about 8 px across) and the picks' rows, columns and diameters on it."""
    if mic.image.ndim != 2:
        raise ValueError(f"the {stage} filter works on 2D micrographs; for volumes select filters that work on them, "
                         f"e.g. 'filter=[diameter_range,edge]' (the +experiment=tomo preset does so; with detector=heatmap give it yourself)")
    factor = _working_factor(ctx)
    return (
        mic.signal(factor),
        to_binned(picks[schema.Y].to_numpy(float), factor),
        to_binned(picks[schema.X].to_numpy(float), factor),
        picks[schema.DIAMETER].to_numpy(float) / factor,
    )


def _measure(picks: pd.DataFrame, mic: Micrograph, ctx: PickContext, stage: str) -> tuple[dict, float, float]:
    img, rows, cols, diameters = _working_level(picks, mic, ctx, stage)
    med, spread = background_stats(img)
    return neighbourhood_measures(img, rows, cols, diameters), med, spread


@dataclass
class ContaminationParams:
    """Reject ice contamination: picks far darker than the micrograph's particles.

    max_contrast_ratio: reject picks whose darkness above the background, or
        above their own surroundings (the annulus 1.15-1.6 radii), is more
        than this many times the median contrast of the micrograph's picks
        over their surroundings, and at least this many background spreads
        (ice balls and ethane contamination are much darker; the second test
        catches them where an illumination or ice-thickness gradient makes
        the whole micrograph's background a poor reference).
    max_surround: reject picks whose surroundings are darker than the
        background by more than this many background spreads (picks inside or
        on the rim of a large contamination).
    min_reference: a micrograph with fewer confident accepted picks than
        this has no typical particle of its own (an empty micrograph, one ice
        ball and nothing else): its picks are compared, once all micrographs
        are picked, with the dataset's typical particle instead (darkness
        above the background in background spreads, more than
        ``max_contrast_ratio`` times the dataset's median, and at least that
        many spreads).
    max_darkness_z: also reject picks whose darkness (in background spreads)
        lies more than this many robust standard deviations (1.4826 MAD)
        above the median darkness of the micrograph's confident picks, and
        is at least ``min_outlier_darkness`` spreads: a contamination among
        particles that are hardly darker than the ice inside their outline
        (vesicles, whose lumen is ice), where ``max_contrast_ratio`` falls
        back to its floor of one spread. Needs ``reliable_reference``
        confident picks. 0 turns it off.
    min_outlier_darkness: see ``max_darkness_z``.
    max_surround_z, min_outlier_surround: the same for the surroundings
        (the annulus 1.15-1.6 radii, column ``surround_darkness``): a pick
        whose surroundings are more than ``max_surround_z`` robust standard
        deviations darker than those of the micrograph's confident picks,
        and at least ``min_outlier_surround`` spreads darker than the
        background, sits on something dark the particles do not (a carbon
        film, the rim of an ice sheet). 0 turns it off.
    reliable_reference: a micrograph with fewer confident picks than this
        (but at least ``min_reference``) is judged by its own picks and, once
        all micrographs are picked, also against the dataset's typical
        particle, like one below ``min_reference``: a few ice balls alone on
        a micrograph must not make each other typical.
    max_tail_z, min_outlier_tail: the same for the darkest tenth of the
        disc (its 0.9 quantile, area-weighted, above the median of the
        surroundings, in background spreads; column ``tail_contrast``): a
        circle around a cluster of small, very dark specks (ice crystals,
        ethane contamination) has a disc median and surroundings like a
        particle's, but its darkest tenth is far darker than a particle's
        rim or shell. Judged against the same typical particles as the
        darkness. 0 turns it off.
    """

    max_contrast_ratio: float = 3.0
    max_surround: float = 3.0
    min_reference: int = 3
    max_darkness_z: float = 5.0
    min_outlier_darkness: float = 2.0
    max_surround_z: float = 5.0
    min_outlier_surround: float = 1.0
    reliable_reference: int = 10
    max_tail_z: float = 5.0
    min_outlier_tail: float = 1.0

    def __post_init__(self) -> None:
        check_finite(self, "filter.contamination")
        if not self.max_contrast_ratio > 1:
            raise ValueError(f"filter.contamination.max_contrast_ratio must be > 1, got {self.max_contrast_ratio}")
        if not self.max_surround > 0:
            raise ValueError(f"filter.contamination.max_surround must be > 0, got {self.max_surround}")
        if self.min_reference < 1:
            raise ValueError(f"filter.contamination.min_reference must be >= 1, got {self.min_reference}")
        for name in ("max_darkness_z", "max_surround_z", "max_tail_z"):
            if getattr(self, name) < 0:
                raise ValueError(f"filter.contamination.{name} must be >= 0 (0 = off), got {getattr(self, name)}")
        for name in ("min_outlier_darkness", "min_outlier_surround", "min_outlier_tail"):
            if not getattr(self, name) > 0:
                raise ValueError(f"filter.contamination.{name} must be > 0, got {getattr(self, name)}")
        if self.reliable_reference < 3:
            raise ValueError(f"filter.contamination.reliable_reference must be >= 3, got {self.reliable_reference}")


def high_outliers(values: np.ndarray, reference: np.ndarray, *, z: float, minimum: float, min_reference: int) -> np.ndarray:
    """Values far above the typical one: a robust Z-score against the reference picks.

    SIMPLE's outlier rule for diameters, applied to any per-pick measure
    (here darkness and surroundings, in background spreads).

    Parameters
    ----------
    values : (K,) ndarray
    reference : (K,) ndarray of bool
        The picks that say what is typical (the confident ones).
    z : float
        Robust standard deviations (1.4826 MAD) above the reference median
        beyond which a pick is an outlier; 0 flags nothing.
    minimum : float
        An outlier must also be at least this high (a tight reference
        distribution alone does not make a pick junk).
    min_reference : int
        With fewer finite reference values nothing is flagged.

    Returns
    -------
    outlier : (K,) ndarray of bool
    """
    values = np.asarray(values, dtype=float)
    ref = values[np.asarray(reference, dtype=bool) & np.isfinite(values)]
    if z <= 0 or len(ref) < min_reference:
        return np.zeros(len(values), dtype=bool)
    centre = float(np.median(ref))
    scale = mad_gau(ref, centre)
    with np.errstate(invalid="ignore"):
        return (values >= minimum) & (values > centre + z * scale)


def typical_particles(contrast: np.ndarray, candidates: np.ndarray, *, min_count: int, ratio: float) -> np.ndarray:
    """The picks that say how dark the micrograph's particles are: ``candidates``, or their distinct ones.

    Most of a micrograph's confident picks are its particles, and their
    median contrast is what a contamination is judged against. On a sparse
    micrograph of distinct particles that no longer holds: the few noise
    maxima that pass the detector on any micrograph (more on a large frame
    searched for small particles) can outnumber them, and a median among
    noise makes every particle look far too dark. So when the candidates'
    median contrast is below one background spread (noise maxima, or faint
    particles such as vesicles, whose lumen is ice) but at least
    ``min_count`` of them stand one spread or more above their surroundings
    and their median is above ``ratio`` spreads (so that against the
    faint majority, with its floor of one spread, most of them would be
    contamination: a population, not a few outliers), those are the
    typical particles. Faint particles whose contrast spreads continuously
    over one or two spreads (vesicles) stay judged by them all.

    Parameters
    ----------
    contrast : (K,) ndarray
        Each pick's darkness above its surroundings, in background spreads.
    candidates : (K,) ndarray of bool
        The picks that may set what is typical (the confident ones).
    min_count : int
        How many distinct picks it takes to be the typical particles.
    ratio : float
        Median contrast (background spreads) the distinct picks must exceed
        (the contamination filter's ``max_contrast_ratio``).

    Returns
    -------
    typical : (K,) ndarray of bool
        ``candidates``, or those of them at one spread or more.

    Examples
    --------
    >>> c = np.r_[np.full(17, 0.2), np.full(12, 4.5)]
    >>> int(typical_particles(c, np.ones(29, bool), min_count=10, ratio=3.0).sum())
    12
    >>> int(typical_particles(c, np.ones(29, bool), min_count=13, ratio=3.0).sum())
    29
    """
    contrast = np.asarray(contrast, dtype=float)
    candidates = np.asarray(candidates, dtype=bool)
    if not candidates.any() or float(np.median(contrast[candidates])) >= 1.0:
        return candidates
    distinct = candidates & (contrast >= 1.0)
    if distinct.sum() < min_count or float(np.median(contrast[distinct])) <= ratio:
        return candidates
    return distinct


class ContaminationFilter(Filter):
    name = "contamination"
    Params = ContaminationParams
    summary = "reject ice/ethane contamination: far darker than the micrograph's particles, or inside a dark region"
    reasons = ("contamination",)

    def apply(self, picks: pd.DataFrame, mic: Micrograph, ctx: PickContext) -> pd.DataFrame:
        out = schema.with_acceptance(picks)
        if len(out) == 0:
            return out
        m, med, spread = _measure(out, mic, ctx, self.name)
        darkness = m["inside"] - med
        contrast = m["inside"] - m["outside"]
        ok = schema.confident_mask(out)
        p = self.params
        typical = typical_particles(contrast / spread, ok, min_count=p.reliable_reference, ratio=p.max_contrast_ratio)
        ref = contrast[typical & (contrast > 0)]
        if len(ref) >= p.min_reference:
            limit = p.max_contrast_ratio * max(float(np.median(ref)), spread)
            # Against the micrograph's background and against its own
            # surroundings: on a gradient of illumination or ice thickness,
            # a contamination on the bright side is hardly darker than the
            # micrograph's median, but far darker than what is around it
            # (the particles' reference is their local contrast too).
            too_dark = (darkness > limit) | (contrast > limit)
        else:
            too_dark = np.zeros(len(out), dtype=bool)  # decided by apply_dataset
        surround = (m["outside"] - med) / spread
        dark_surround = surround > p.max_surround
        out[DARKNESS] = darkness / spread
        out[SURROUND] = surround
        out[REFERENCE] = len(ref)
        n = p.reliable_reference
        outlier = high_outliers(darkness / spread, typical, z=p.max_darkness_z, minimum=p.min_outlier_darkness, min_reference=n)
        outlier |= high_outliers(surround, ok, z=p.max_surround_z, minimum=p.min_outlier_surround, min_reference=n)
        if p.max_tail_z > 0:
            todo = out[schema.ACCEPTED].to_numpy(dtype=bool)  # the others are decided
            img, rows, cols, diameters = _working_level(out[todo], mic, ctx, self.name)
            tail = np.full(len(out), np.nan)
            tail[todo] = (disc_quantile(img, rows, cols, diameters, q=0.9) - m["outside"][todo]) / spread
            out[TAIL] = tail
            outlier |= high_outliers(tail, typical, z=p.max_tail_z, minimum=p.min_outlier_tail, min_reference=n)
        return schema.reject(out, too_dark | dark_surround | outlier, "contamination")

    def apply_dataset(self, picks: pd.DataFrame, metas: dict, ctx: PickContext) -> pd.DataFrame:
        """Picks of micrographs without a typical particle, against the dataset's."""
        if not len(picks) or REFERENCE not in picks.columns or DARKNESS not in picks.columns:
            return picks
        out = schema.with_acceptance(picks)
        p = self.params
        confident = schema.confident_mask(out)
        darkness = out[DARKNESS].to_numpy(dtype=float)
        own = out[REFERENCE].fillna(0).to_numpy(dtype=float)
        reference = darkness[confident & (own >= p.min_reference)]  # the median shrugs off a micrograph of ice
        if len(reference) < p.min_reference:
            return out  # no micrograph has particles enough to say what is typical
        limit = p.max_contrast_ratio * max(float(np.median(reference)), 1.0)
        checked = own < max(p.min_reference, p.reliable_reference)  # no reference, or a small one of their own
        return schema.reject(out, checked & (darkness > limit), "contamination")


@dataclass
class CarbonEdgeParams:
    """Reject picks on a carbon (or ice-thickness) edge.

    max_asymmetry: reject picks whose surroundings differ from one side to
        the other (first angular harmonic of the annulus outside the particle)
        by more than this fraction of the particle's own contrast.
    """

    max_asymmetry: float = 1.5

    def __post_init__(self) -> None:
        check_finite(self, "filter.carbon_edge")
        if not self.max_asymmetry > 0:
            raise ValueError(f"filter.carbon_edge.max_asymmetry must be > 0, got {self.max_asymmetry}")


class CarbonEdgeFilter(Filter):
    name = "carbon_edge"
    Params = CarbonEdgeParams
    summary = "reject picks whose background is much darker on one side (carbon edges, arcs of big objects)"
    reasons = ("carbon_edge",)

    def apply(self, picks: pd.DataFrame, mic: Micrograph, ctx: PickContext) -> pd.DataFrame:
        out = schema.with_acceptance(picks)
        if len(out) == 0:
            return out
        m, _, _ = _measure(out, mic, ctx, self.name)
        contrast = np.maximum(m["inside"] - m["outside"], 1e-12)
        ratio = m["asymmetry"] / contrast
        out["background_asymmetry"] = ratio
        return schema.reject(out, ratio > self.params.max_asymmetry, "carbon_edge")


#: Column of the carbon filter: the share of the pick's disc inside a dense region.
IN_REGION = "dense_region"


@dataclass
class CarbonParams:
    """Reject picks on a carbon film: a large region denser than the ice, behind a sharp edge.

    The micrograph is averaged over cells of ``cell`` times the largest
    diameter, leaving out the discs of the confident picks (1.2 diameters);
    the cells' median over 3x3 cells is the level map. Regions are the
    connected parts, at least ``min_area`` largest particles in size, of the
    denser side of Otsu's threshold (where that finds none, of higher
    percentiles, for parts that reach the micrograph's border) whose level
    steps up sharply across their boundary: the step left once the map's
    smooth part (a Gaussian of 3 cells) is taken away is at least
    ``min_step`` times the map's cell-to-cell noise, at least
    ``min_sharpness`` of the whole step and not more than the step. A
    gradient of ice thickness or a patchy background changes the level
    smoothly and leaves little. The step is measured away from the
    particles left out (``clearance``), beyond their fringes: in a crowded
    field the gaps between the particles are otherwise denser than the
    cells beside them, with as sharp a step. Contamination far denser than
    the carbon is found first and set aside. See
    :mod:`lipoframe.algorithms.regions`.

    cell: cell size in units of ``dmax``.
    min_area: smallest region, in discs of diameter ``dmax``.
    min_step: see above (in cell-to-cell noise).
    min_sharpness: see above, in (0, 1].
    clearance: cells closer than this to the particles left out (in units
        of ``dmax``, beyond their discs of 1.2 diameters) are not used to
        measure the step.
    max_fraction: reject a pick with more than this share of its disc inside
        a region (column ``dense_region``).
    extra_splits: where Otsu's threshold finds no region, split again at
        the 50th-95th percentiles (regions that reach the border only);
        ``false`` keeps Otsu's threshold only.
    """

    cell: float = 0.125
    min_area: float = 3.0
    min_step: float = 5.0
    min_sharpness: float = 0.35
    clearance: float = 0.3
    max_fraction: float = 0.25
    extra_splits: bool = True

    def __post_init__(self) -> None:
        check_finite(self, "filter.carbon")
        if not 0 < self.cell <= 1:
            raise ValueError(f"filter.carbon.cell must be in (0, 1], got {self.cell}")
        for name in ("min_area", "min_step"):
            if not getattr(self, name) > 0:
                raise ValueError(f"filter.carbon.{name} must be > 0, got {getattr(self, name)}")
        if not 0 < self.min_sharpness <= 1:
            raise ValueError(f"filter.carbon.min_sharpness must be in (0, 1], got {self.min_sharpness}")
        if not self.clearance >= 0:
            raise ValueError(f"filter.carbon.clearance must be >= 0, got {self.clearance}")
        if not 0 <= self.max_fraction < 1:
            raise ValueError(f"filter.carbon.max_fraction must be in [0, 1), got {self.max_fraction}")


def carbon_map(image: np.ndarray, confident: tuple[np.ndarray, np.ndarray, np.ndarray], params: CarbonParams, dmax: float):
    """Dense regions of a polarity-corrected image (particles bright).

    ``confident`` holds the rows, columns and diameters (pixels of ``image``)
    of the picks left out of the level map; ``dmax`` is the largest diameter
    in pixels of ``image``. Returns the (H, W) bool map on cells of ``cell``
    pixels, ``cell`` and the regions' descriptions
    (:func:`~lipoframe.algorithms.regions.dense_regions`).
    """
    rows, cols, diameters = confident
    cell = max(1, int(round(params.cell * dmax)))
    # Cells of a constant region (padding, an area filled or masked out) hold no level: left out, as the picks are.
    level = level_map(image, cell, exclude=disc_mask(image.shape, rows, cols, 0.6 * diameters) | constant_cells(image, cell))
    min_cells = params.min_area * np.pi * (dmax / 2.0) ** 2 / cell**2
    regions, found = dense_regions(level, min_cells=min_cells, min_step=params.min_step, min_sharpness=params.min_sharpness,
                                   clearance=params.clearance * dmax / cell, **({} if params.extra_splits else {"levels": ()}))
    return regions, cell, found


class CarbonFilter(Filter):
    name = "carbon"
    Params = CarbonParams
    summary = "reject picks on carbon film (a large region denser than the ice, behind a sharp edge), found without a mask"
    reasons = ("carbon",)

    def apply(self, picks: pd.DataFrame, mic: Micrograph, ctx: PickContext) -> pd.DataFrame:
        out = schema.with_acceptance(picks)
        if len(out) == 0:
            return out
        img, rows, cols, diameters = _working_level(out, mic, ctx, self.name)
        confident = schema.confident_mask(out)
        left_out = (rows[confident], cols[confident], diameters[confident])
        factor = _working_factor(ctx)
        dmax = ctx.dmax_px / factor
        # The filters run again after retries, mostly with the same confident
        # picks: the map is made once per micrograph for each set of them.
        key = (self.name, repr(self.params), factor, dmax, np.column_stack(left_out).tobytes())
        regions, cell, _ = mic.derived(key, lambda: carbon_map(img, left_out, self.params, dmax))
        share = mean_in_discs(regions.astype(np.float32), np.column_stack([rows, cols]), diameters / 2.0, scale=np.full(2, 1.0 / cell))
        out[IN_REGION] = share
        return schema.reject(out, share > self.params.max_fraction, "carbon")


#: Column of the speck filter: the largest share of a pick's excess darkness in one small spot.
CONCENTRATION = "darkness_concentration"


@dataclass
class SpeckParams:
    """Reject circles drawn around a small dark speck.

    A particle spreads its darkness over its disc (projected spheres) or its
    rim (shells, vesicles); a circle that the detector drew around a small
    dark object (a speck of junk, a fleck of ice, a cluster of noise) holds
    most of its darkness in that one spot.

    max_concentration: reject picks holding more than this share of their
        darkness (above the pick's own median) inside one disc of ``core``
        radii. Noise-free projected spheres give 0.21, shells and vesicles
        about 0.1; in noise, particles reach about 0.29 (99th percentile on
        the simulated suite) and small ones in strong noise 0.31; circles
        around a speck give 0.34-0.5.
    core: radius of that disc in units of the pick's radius.
    """

    max_concentration: float = 0.33
    core: float = 0.25

    def __post_init__(self) -> None:
        check_finite(self, "filter.speck")
        if not 0 < self.max_concentration <= 1:
            raise ValueError(f"filter.speck.max_concentration must be in (0, 1], got {self.max_concentration}")
        if not 0 < self.core < 1:
            raise ValueError(f"filter.speck.core must be in (0, 1), got {self.core}")


class SpeckFilter(Filter):
    name = "speck"
    Params = SpeckParams
    summary = "reject circles around a small dark speck (the pick's darkness sits in one small spot)"
    reasons = ("speck",)

    def apply(self, picks: pd.DataFrame, mic: Micrograph, ctx: PickContext) -> pd.DataFrame:
        out = schema.with_acceptance(picks)
        if len(out) == 0:
            return out
        todo = out[schema.ACCEPTED].to_numpy(dtype=bool)  # the others are decided
        img, rows, cols, diameters = _working_level(out[todo], mic, ctx, self.name)
        conc = np.full(len(out), np.nan)
        conc[todo] = darkness_concentration(img, rows, cols, diameters, core=self.params.core)
        out[CONCENTRATION] = conc
        return schema.reject(out, conc > self.params.max_concentration, "speck")


@hookimpl
def lipoframe_register_stages(registry):
    registry.add(ContaminationFilter)
    registry.add(CarbonEdgeFilter)
    registry.add(CarbonFilter)
    registry.add(SpeckFilter)
