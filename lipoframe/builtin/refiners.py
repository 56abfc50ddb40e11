"""Built-in refiners."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from lipoframe import schema
from lipoframe.algorithms.pyramid import pow2_floor, to_binned, to_full_resolution
from lipoframe.algorithms.radial import RIMS, blocked_directions, edge_quality, refine_circles
from lipoframe.algorithms.stats import background_stats
from lipoframe.hookspecs import hookimpl
from lipoframe.records import Micrograph, PickContext
from lipoframe.stages import Refiner


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
        (reason ``no_edge``).
    min_coverage: picks whose edge is present on fewer than this fraction of
        directions are rejected (reason ``no_edge``).
    strong_score, strong_min_contrast, strong_min_coverage: picks whose
        detector ``score`` is at least ``strong_score`` need only these (a
        strong detection vouches for a particle whose rim is faint or partly
        hidden by neighbours; a weak one needs a clear edge). Weak candidates
        (``weak=True``) never count as strong. ``strong_score``
        is in the scale-space detectors' noise units; 0 applies the strong
        limits to every pick, ``inf`` never.
    ignore_neighbours: judge the edge only on the directions that do not
        point into a touching neighbouring pick (crowded fields).
    rim: where a particle ends: ``sphere`` (the rim of a blurred projected
        sphere, shell or vesicle, just beyond the steepest fall of the
        profile; unbiased diameters) or ``steepest`` (the steepest fall
        itself, 1-3 % small for spheres).
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

    def __post_init__(self) -> None:
        if self.rim not in RIMS:
            raise ValueError(f"refiner.rim must be one of {RIMS}, got {self.rim!r}")
        if not 0 < self.search < 1:
            raise ValueError(f"refiner.search must be in (0, 1), got {self.search}")
        if not 1 <= self.iterations <= 10:
            raise ValueError(f"refiner.iterations must be in [1, 10], got {self.iterations}")
        if self.min_radius_binned < 4:
            raise ValueError(f"refiner.min_radius_binned must be >= 4, got {self.min_radius_binned}")
        for name in ("min_coverage", "strong_min_coverage"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"refiner.{name} must be in [0, 1], got {getattr(self, name)}")
        if not self.strong_score >= 0:
            raise ValueError(f"refiner.strong_score must be >= 0, got {self.strong_score}")


class RadialProfileRefiner(Refiner):
    name = "radial_profile"
    Params = RadialProfileParams
    summary = "diameter from the strongest radial edge, sub-pixel recentring, edge quality; rejects picks with no edge"

    def refine(self, picks: pd.DataFrame, mic: Micrograph, ctx: PickContext) -> pd.DataFrame:
        out = schema.with_acceptance(picks)
        if len(out) == 0:
            for c in ("diameter_detector_px", "refine_shift_px", "edge_contrast", "edge_coverage", "quality"):
                out[c] = pd.Series(dtype=float)
            return out
        if mic.image.ndim != 2:
            raise ValueError("refiner radial_profile works on 2D micrographs; for volumes use refiner=radial_profile_3d (or +experiment=tomo)")
        p = self.params
        factor = pow2_floor(ctx.dmin_px / 2.0 / p.min_radius_binned)
        img = mic.signal(factor)
        res = refine_circles(
            img,
            to_binned(out[schema.Y].to_numpy(float), factor),
            to_binned(out[schema.X].to_numpy(float), factor),
            out[schema.DIAMETER].to_numpy(float) / factor,
            search=p.search,
            iterations=p.iterations,
            rim=p.rim,
        )
        out["diameter_detector_px"] = out[schema.DIAMETER].to_numpy(float)
        out[schema.X] = np.clip(to_full_resolution(res["col"], factor), 0, mic.shape[-1] - 1)
        out[schema.Y] = np.clip(to_full_resolution(res["row"], factor), 0, mic.shape[-2] - 1)
        out[schema.DIAMETER] = res["diameter"] * factor
        out["refine_shift_px"] = res["shift"] * factor
        contrast, coverage = res["edge_contrast"], res["edge_coverage"]
        if p.ignore_neighbours:
            # In crowded fields a touching neighbour hides the edge on its side:
            # judge the edge on the directions that do not point into one
            # (when at least a third of them remain).
            # Weak candidates (mostly noise until a later stage vouches for them) block nothing.
            blocked = blocked_directions(
                np.c_[res["row"], res["col"]], res["diameter_steepest"] / 2.0, res["theta"], blockers=~schema.weak_mask(out)
            )
            valid = ~blocked
            valid[valid.sum(axis=1) < blocked.shape[1] / 3] = True
            contrast, coverage = edge_quality(res["step_per_direction"], valid)
            out["edge_directions_used"] = valid.mean(axis=1)
        out["edge_contrast"] = contrast
        out["edge_coverage"] = coverage
        out["edge_width_px"] = res["edge_width"] * factor
        out["edge_roughness"] = res["roundness"]
        # Edge step against the micrograph's own spread at this binning: how
        # far the particle stands out from what the background does anyway.
        out["edge_step_snr"] = res["edge_step"] / background_stats(img)[1]
        out["quality"] = np.clip(contrast, 0, None) * coverage
        strong = (out[schema.SCORE].to_numpy(float) >= p.strong_score) & ~schema.weak_mask(out)
        need_contrast = np.where(strong, p.strong_min_contrast, p.min_contrast)
        need_coverage = np.where(strong, p.strong_min_coverage, p.min_coverage)
        bad = ~res["edge_found"] | (contrast < need_contrast) | (coverage < need_coverage)
        return schema.reject(out, bad, "no_edge")


@dataclass
class NoRefinerParams:
    """Keep the detector's centres and diameters."""


class NoRefiner(Refiner):
    name = "none"
    Params = NoRefinerParams
    summary = "keep the detector's centres and diameters"

    def refine(self, picks: pd.DataFrame, mic: Micrograph, ctx: PickContext) -> pd.DataFrame:
        return picks.copy()


@hookimpl
def lipoframe_register_stages(registry):
    registry.add(RadialProfileRefiner)
    registry.add(NoRefiner)
