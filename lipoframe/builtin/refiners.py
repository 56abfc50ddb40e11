"""Built-in refiners."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from lipoframe import schema
from lipoframe.algorithms.pyramid import pow2_floor, to_binned, to_full_resolution
from lipoframe.algorithms.radial import RIMS, blocked_directions, cut_circle_starts, edge_quality, refine_circles
from lipoframe.algorithms.stats import background_stats
from lipoframe.hookspecs import hookimpl
from lipoframe.records import Micrograph, PickContext
from lipoframe.stages import Refiner, check_finite


@dataclass
class RadialProfileParams:
    """Refine each pick from radial profiles of the (lightly binned) micrograph.

    search: the edge is the strongest falling edge within (1 +/- search) x the
        detector's radius.
    iterations: rounds of sub-pixel recentring.
    min_radius_binned: binning is chosen so the smallest radius spans at least
        this many pixels (larger = finer, slower).
    min_contrast: picks whose edge SNR (mean step across the edge over its
        standard error around the circle) is below this are rejected
        (reason ``no_edge``); >= 0, or ``-inf`` for no contrast test.
        A particle cut by the micrograph border is judged on the directions
        whose edge lies in the image (its edge SNR is scaled to that share
        of the circle, so it needs a clearer edge).
    min_coverage: picks whose edge is present on fewer than this fraction of
        directions are rejected (reason ``no_edge``).
    strong_score, strong_min_contrast, strong_min_coverage: picks whose
        detector ``score`` is at least ``strong_score`` need only these (a
        strong detection vouches for a particle whose rim is faint or partly
        hidden by neighbours; a weak one needs a clear edge). Weak candidates
        (``weak=True``) never count as strong. ``strong_score``
        is in the scale-space detectors' noise units; 0 applies the strong
        limits to every pick, ``inf`` never. ``strong_min_contrast`` takes the
        values ``min_contrast`` does.
    ignore_neighbours: judge the edge only on the directions that do not
        point into a touching neighbouring pick (crowded fields).
    rim: where a particle ends: ``sphere`` (the rim of a blurred projected
        sphere, shell or vesicle, just beyond the steepest fall of the
        profile; unbiased diameters) or ``steepest`` (the steepest fall
        itself, 1-3 % small for spheres).
    narrow_search: a pick that fails the edge test is measured again with
        the edge searched within (1 +/- narrow_search) x the detector's
        radius only, where the edge of a touching neighbour cannot pass for
        its own; it is kept (column ``refined_narrow``) if that edge has a
        contrast of at least ``narrow_min_contrast`` and ``min_coverage``
        (never the relaxed test of strong detections). 0 turns the second
        look off.
    narrow_min_contrast: see ``narrow_search`` (``min_contrast`` if that is
        higher); above ``min_contrast`` because a second look is a second
        chance for noise too.
    range_search: a pick measured smaller than the smallest diameter asked
        for (``dmin``) is measured again with the edge searched within
        ``(1 + range_search) * (1 +/- range_search) * dmin / 2``, a window
        that starts at ``dmin`` (within ``range_search**2``), and kept so
        (column ``refined_in_range``) if that edge has a contrast of at
        least ``range_min_contrast`` and ``min_coverage``. For particles
        known to be no smaller than ``dmin`` whose first look found inner
        structure. Most edges it finds lie at the window's start: objects
        just below ``dmin`` come out at ``dmin``. 0 (default) turns it off
        (docs/evaluation.md, "A look within the range asked for").
    range_min_contrast: see ``range_search``.
    border_margin: picks whose refined centre lies less than this many
        radii inside the micrograph, or outside it, are rejected (reason
        ``at_border``): about half of such a particle is cut off, its centre
        and diameter rest on half an edge, and most of its extraction box
        would lie outside the micrograph. 0 keeps every pick whose centre is
        in the image.
    border_search: a pick whose circle, enlarged 1.5 times, crosses the
        micrograph border is measured again from the circle the image falls
        most clearly across in the directions inside the image, among those
        that contain the detector's circle (centre up to 0.6 radii away,
        radius up to 2.2 times) and reach no other confident pick's centre
        (``lipoframe.algorithms.radial.cut_circle_starts``); that
        measurement stands if it passes the edge test and is not
        ``at_border``. On a particle cut by the border the detector finds
        the visible part, a smaller circle further inside, which the edge
        search (``search``) cannot widen to the particle's own. Off by
        default: it doubles the end-to-end time of a 4096² micrograph
        (0.135 -> 0.251 s) for +0.000 to +0.002 suite F1; turn it on when
        the sizes of particles cut by the border matter (docs/picking.md).
    """

    search: float = 0.25
    iterations: int = 3
    min_radius_binned: float = 16.0
    min_contrast: float = 3.5
    min_coverage: float = 0.7
    strong_score: float = 7.0
    strong_min_contrast: float = 2.5
    strong_min_coverage: float = 0.6
    ignore_neighbours: bool = True
    rim: str = "sphere"
    narrow_search: float = 0.1
    narrow_min_contrast: float = 4.0
    range_search: float = 0.0
    range_min_contrast: float = 5.0
    border_margin: float = 0.1
    border_search: bool = False

    def __post_init__(self) -> None:
        check_finite(self, "refiner", infinite=("strong_score", "min_contrast", "strong_min_contrast"))
        if self.rim not in RIMS:
            raise ValueError(f"refiner.rim must be one of {RIMS}, got {self.rim!r}")
        if not 0 < self.search < 1:
            raise ValueError(f"refiner.search must be in (0, 1), got {self.search}")
        if not 0 <= self.narrow_search < self.search:
            raise ValueError(f"refiner.narrow_search must be in [0, refiner.search), got {self.narrow_search}")
        if not self.narrow_min_contrast > 0:
            raise ValueError(f"refiner.narrow_min_contrast must be > 0, got {self.narrow_min_contrast}")
        if not 0 <= self.range_search < 0.5:
            raise ValueError(f"refiner.range_search must be in [0, 0.5), got {self.range_search}")
        if not self.range_min_contrast > 0:
            raise ValueError(f"refiner.range_min_contrast must be > 0, got {self.range_min_contrast}")
        if not 1 <= self.iterations <= 10:
            raise ValueError(f"refiner.iterations must be in [1, 10], got {self.iterations}")
        if self.min_radius_binned < 4:
            raise ValueError(f"refiner.min_radius_binned must be >= 4, got {self.min_radius_binned}")
        for name in ("min_coverage", "strong_min_coverage"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"refiner.{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0 <= self.border_margin < 1:
            raise ValueError(f"refiner.border_margin must be in [0, 1), got {self.border_margin}")
        if not self.strong_score >= 0:
            raise ValueError(f"refiner.strong_score must be >= 0, got {self.strong_score}")
        for name in ("min_contrast", "strong_min_contrast"):
            value = getattr(self, name)
            if not (0 <= value < math.inf or value == -math.inf):
                raise ValueError(f"refiner.{name} must be >= 0 and finite (or -inf: no contrast test), got {value}")


class RadialProfileRefiner(Refiner):
    name = "radial_profile"
    Params = RadialProfileParams
    summary = "diameter from the strongest radial edge, sub-pixel recentring, edge quality; rejects picks with no edge"
    reasons = ("no_edge", "at_border")

    def refine(self, picks: pd.DataFrame, mic: Micrograph, ctx: PickContext) -> pd.DataFrame:
        out = schema.with_acceptance(picks)
        if len(out) == 0:
            for c in ("diameter_detector_px", "refine_shift_px", "edge_contrast", "edge_coverage", schema.QUALITY):
                out[c] = pd.Series(dtype=float)
            return out
        if mic.image.ndim != 2:
            raise ValueError("refiner radial_profile works on 2D micrographs; for volumes use refiner=radial_profile_3d or refiner=none (+experiment=tomo selects radial_profile_3d; with detector=heatmap give it yourself)")
        p = self.params
        factor = pow2_floor(ctx.dmin_px / 2.0 / p.min_radius_binned)
        img = mic.signal(factor)
        rows = to_binned(out[schema.Y].to_numpy(float), factor)
        cols = to_binned(out[schema.X].to_numpy(float), factor)
        diameters = out[schema.DIAMETER].to_numpy(float) / factor
        confident = ~schema.weak_mask(out)
        strong = (out[schema.SCORE].to_numpy(float) >= p.strong_score) & confident
        need_contrast = np.where(strong, p.strong_min_contrast, p.min_contrast)
        need_coverage = np.where(strong, p.strong_min_coverage, p.min_coverage)
        res = refine_circles(img, rows, cols, diameters, search=p.search, iterations=p.iterations, rim=p.rim)
        contrast, coverage, used = self._edge(res, confident)
        if p.border_search:
            # A particle cut by the border: the detector found its visible part, a smaller circle further
            # inside. Measured again from the circle that contains it and whose edge in view is clearest;
            # that measurement stands if it passes the edge test and is not at the border (a crowd at the
            # border can offer a larger circle through the gaps between particles; its edge then fails).
            r2, c2, rad2, moved = cut_circle_starts(img, rows, cols, diameters / 2.0, blockers=confident)
            moved = np.flatnonzero(moved)
            if len(moved):
                again = refine_circles(img, r2[moved], c2[moved], 2.0 * rad2[moved], search=p.search, iterations=p.iterations, rim=p.rim)
                c_again, v_again, _ = self._edge(_replace_rows(res, moved, again), confident)
                ok = again["edge_found"] & (c_again[moved] >= need_contrast[moved]) & (v_again[moved] >= need_coverage[moved])
                ok &= ~self._at_border(again, mic.shape[-2:], factor)
                if ok.any():
                    res = _replace_rows(res, moved[ok], again, take=ok)
                    contrast, coverage, used = self._edge(res, confident)
        narrow = np.zeros(len(out), dtype=bool)
        in_range = np.zeros(len(out), dtype=bool)
        retry = np.flatnonzero(~res["edge_found"] | (contrast < need_contrast) | (coverage < need_coverage))
        if p.narrow_search > 0 and len(retry):
            # A failed pick is measured again on the detector's own radius,
            # where a touching neighbour's edge cannot pass for its own; it
            # is kept only if that edge is clear (a second look is a second
            # chance for noise too, so the bar is higher than the first).
            res, kept = self._look_again(img, res, retry, rows, cols, diameters[retry], p.narrow_search,
                                         max(p.narrow_min_contrast, p.min_contrast), confident)
            narrow[kept] = True
        if p.range_search > 0:
            # A pick measured below the range asked for is measured again at the range's lower end.
            s = p.range_search
            small = np.flatnonzero(res["edge_found"] & (res["diameter"] < (1 + s) * (1 - s) * ctx.dmin_px / factor))
            res, kept = self._look_again(img, res, small, rows, cols, np.full(len(small), (1 + s) * ctx.dmin_px / factor), s,
                                         p.range_min_contrast, confident)
            in_range[kept], narrow[kept] = True, False
        if (narrow | in_range).any():
            contrast, coverage, used = self._edge(res, confident)
        out["diameter_detector_px"] = out[schema.DIAMETER].to_numpy(float)
        out[schema.X] = np.clip(to_full_resolution(res["col"], factor), 0, mic.shape[-1] - 1)
        out[schema.Y] = np.clip(to_full_resolution(res["row"], factor), 0, mic.shape[-2] - 1)
        out[schema.DIAMETER] = res["diameter"] * factor
        out["refine_shift_px"] = res["shift"] * factor
        out["edge_directions_used"] = used
        out["edge_contrast"] = contrast
        out["edge_coverage"] = coverage
        out["edge_width_px"] = res["edge_width"] * factor
        out["edge_roughness"] = res["roundness"]
        # Edge step against the micrograph's own spread at this binning: how
        # far the particle stands out from what the background does anyway.
        out["edge_step_snr"] = res["edge_step"] / background_stats(img)[1]
        out[schema.QUALITY] = np.clip(contrast, 0, None) * coverage
        out["refined_narrow"] = narrow
        if p.range_search > 0:
            out["refined_in_range"] = in_range
        # A second or third look passed its own bar; what stays is the first look's.
        need_contrast = np.where(narrow | in_range, p.min_contrast, need_contrast)
        need_coverage = np.where(narrow | in_range, p.min_coverage, need_coverage)
        bad = ~res["edge_found"] | (contrast < need_contrast) | (coverage < need_coverage)
        out = schema.reject(out, bad, "no_edge")
        # A particle cut by the border is judged on the part in the image;
        # one whose centre is (nearly) on the border or beyond it is about
        # half cut off: half an edge, half a box. Measured on the full-resolution
        # grid: the binned image leaves out the last rows and columns that do
        # not fill a whole block, so its far border lies up to factor - 1
        # pixels inside the micrograph's.
        return schema.reject(out, self._at_border(res, mic.shape[-2:], factor), "at_border")

    def _look_again(self, img, res: dict, which: np.ndarray, rows, cols, diameters, search: float, min_contrast: float,
                    blockers: np.ndarray) -> tuple[dict, np.ndarray]:
        """``res`` with the picks ``which`` measured again from ``diameters`` within ``search`` where that edge is clear.

        Clear: an SNR of at least ``min_contrast`` on at least ``min_coverage`` of the directions.
        Returns the new ``res`` and the picks it measured again.
        """
        if not len(which):
            return res, which
        p = self.params
        again = refine_circles(img, rows[which], cols[which], diameters, search=search, iterations=p.iterations, rim=p.rim)
        contrast, coverage, _ = self._edge(_replace_rows(res, which, again), blockers)
        ok = again["edge_found"] & (contrast[which] >= min_contrast) & (coverage[which] >= p.min_coverage)
        return (_replace_rows(res, which[ok], again, take=ok) if ok.any() else res), which[ok]

    def _at_border(self, res: dict, shape: tuple[int, int], factor: int) -> np.ndarray:
        """Picks of ``res`` (refined on the ``factor``-binned image) centred less than ``border_margin`` radii inside the micrograph."""
        m, n = shape
        row, col = to_full_resolution(res["row"], factor), to_full_resolution(res["col"], factor)
        inset = np.minimum.reduce([row + 0.5, m - 0.5 - row, col + 0.5, n - 0.5 - col])
        return inset < self.params.border_margin * res["diameter"] * factor / 2.0

    def _edge(self, res: dict, blockers: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Edge contrast and coverage of every pick, and the share of its directions used.

        Directions beyond the image border never count (``res["inside"]``).
        """
        inside = res["inside"]
        if not self.params.ignore_neighbours:
            return res["edge_contrast"], res["edge_coverage"], inside.mean(axis=1)
        # In crowded fields a touching neighbour hides the edge on its side:
        # judge the edge on the directions that do not point into one
        # (when at least a third of them remain).
        # Weak candidates (mostly noise until a later stage vouches for them) block nothing.
        blocked = blocked_directions(np.c_[res["row"], res["col"]], res["diameter_steepest"] / 2.0, res["theta"], blockers=blockers)
        valid = inside & ~blocked
        few = valid.sum(axis=1) < blocked.shape[1] / 3
        valid[few] = inside[few]
        contrast, coverage = edge_quality(res["step_per_direction"], valid, directions=inside.sum(axis=1))
        return contrast, coverage, valid.mean(axis=1)


def _replace_rows(res: dict, rows: np.ndarray, other: dict, take: np.ndarray | None = None) -> dict:
    """``res`` (per-pick arrays of :func:`refine_circles`) with its ``rows`` from ``other`` (its ``take`` rows)."""
    out = {"theta": res["theta"]}
    for key, value in res.items():
        if key != "theta":
            value = value.copy()
            value[rows] = other[key] if take is None else other[key][take]
            out[key] = value
    return out


@dataclass
class NoRefinerParams:
    """Keep the detector's centres and diameters."""


class NoRefiner(Refiner):
    name = "none"
    Params = NoRefinerParams
    summary = "keep the detector's centres and diameters"
    reasons = ()

    def refine(self, picks: pd.DataFrame, mic: Micrograph, ctx: PickContext) -> pd.DataFrame:
        return picks.copy()


@hookimpl
def lipoframe_register_stages(registry):
    registry.add(RadialProfileRefiner)
    registry.add(NoRefiner)
