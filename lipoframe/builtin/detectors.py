"""Built-in detectors: scale-space edge, DoG and LoG on an automatic pyramid; thin-membrane rings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import pandas as pd

from lipoframe import schema
from lipoframe.algorithms.membrane import find_rings, membrane_map
from lipoframe.algorithms.pyramid import pow2_floor, to_full_resolution
from lipoframe.algorithms.scale_space import detect_blobs
from lipoframe.hookspecs import hookimpl
from lipoframe.records import Micrograph, PickContext, length_px
from lipoframe.stages import Detector, check_finite

THRESHOLD_METHODS = ("mad", "percentile", "absolute")


@dataclass
class BlobParams:
    """Shared parameters of the scale-space detectors.

    k: ratio between successive sigmas (sigma_i = sigma_min * k**i); > 1.
    threshold_method: ``mad`` (median + threshold * 1.4826 MAD of each scale's
        response; adapts per micrograph), ``percentile`` (the seed rule) or
        ``absolute``.
    threshold: value for threshold_method (MAD units, percentile, or raw).
    min_sigma_binned: smallest sigma, in binned pixels, a pyramid level uses.
    octave_span: sigma ratio covered by one pyramid level.
    range_margin: search scales from dmin * (1 - margin) to dmax * (1 + margin)
        so particles at the ends of the range are interior maxima in scale
        (projected spheres peak at ~0.85 of their diameter); the refiner and
        the ``diameter_range`` filter then decide on the refined diameter.
    exclude_border: ignore maxima closer than this fraction of their own
        diameter to the border (0 keeps particles cut by the border).
    weak_threshold: with ``mad``, also report candidates scoring between this
        and ``threshold`` with ``weak=True`` (see the ``population`` filter);
        ``null`` reports none.
    crowding: with ``mad``, measure the noise again away from the candidate
        particles, so crowded micrographs (no particle-free area) are not
        judged against a noise level inflated by their own particles (2D).
        Off by default: on real images with textured backgrounds (vesicle
        interiors, carbon) it takes texture for particles and over-corrects.
    equalise_borders: divide the responses near the micrograph border by how
        much more they fluctuate there than inside (measured per scale; the
        mirror padding of the filters counts the noise near the border
        twice), so a noise blob on the border scores like one inside (2D
        micrographs and the faces of tomograms).
    """

    k: float = 1.1
    threshold_method: str = "mad"
    threshold: float = 6.0
    min_sigma_binned: float = 3.0
    octave_span: float = 4.0
    exclude_border: float = 0.0
    range_margin: float = 0.2
    crowding: bool = False
    weak_threshold: Optional[float] = None
    equalise_borders: bool = True

    def __post_init__(self) -> None:
        check_finite(self, "detector")
        if not 1.0 < self.k <= 2.0:
            raise ValueError(f"detector.k must be in (1, 2], got {self.k}")
        if self.threshold_method not in THRESHOLD_METHODS:
            raise ValueError(f"detector.threshold_method must be one of {THRESHOLD_METHODS}, got {self.threshold_method!r}")
        if self.threshold_method == "percentile" and not 0 <= self.threshold <= 100:
            raise ValueError(f"detector.threshold must be in [0, 100] for percentile, got {self.threshold}")
        if self.min_sigma_binned < 1.0:
            raise ValueError(f"detector.min_sigma_binned must be >= 1, got {self.min_sigma_binned}")
        if self.octave_span <= self.k:
            raise ValueError(f"detector.octave_span must be > detector.k, got {self.octave_span}")
        if not 0 <= self.range_margin < 0.5:
            raise ValueError(f"detector.range_margin must be in [0, 0.5), got {self.range_margin}")
        if not 0 <= self.exclude_border <= 1:
            raise ValueError(f"detector.exclude_border must be in [0, 1], got {self.exclude_border}")
        if self.weak_threshold is not None and not self.weak_threshold > 0:
            raise ValueError(f"detector.weak_threshold must be > 0 or null, got {self.weak_threshold}")


@dataclass
class DogParams(BlobParams):
    """Difference of Gaussians (seed algorithm)."""


@dataclass
class LogParams(BlobParams):
    """Scale-normalised Laplacian of Gaussian."""


@dataclass
class EdgeParams(BlobParams):
    """Circular-edge detector (mean gradient flux through circles of each radius).

    edge_width: blur of the circle, as a fraction of its radius.
    weak_threshold: with ``mad``, also report candidates scoring between this
        and ``threshold``, flagged ``weak``; the ``population`` filter accepts
        a weak pick only when the micrograph holds many confident picks of the
        same size (faint particles in a crowded field). ``null`` (or a value
        >= ``threshold``) reports none.
    """

    threshold: float = 5.3
    edge_width: float = 0.12
    weak_threshold: Optional[float] = 4.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.02 <= self.edge_width <= 0.5:
            raise ValueError(f"detector.edge_width must be in [0.02, 0.5], got {self.edge_width}")


class _BlobDetector(Detector):
    method = "dog"
    columns = ("response",)

    def detect(self, mic: Micrograph, ctx: PickContext) -> pd.DataFrame:
        p = self.params
        if mic.image.ndim == 3:
            return self._detect_3d(mic, ctx)
        weak = p.threshold_method == "mad" and p.weak_threshold is not None and p.weak_threshold < p.threshold
        blobs = detect_blobs(
            None,
            edge_width=getattr(p, "edge_width", 0.12),
            crowding=p.crowding,
            report_threshold=p.weak_threshold if weak else None,
            **self._search(mic, ctx),
        )
        df = pd.DataFrame({c: blobs[c] for c in schema.DETECTOR_COLUMNS})
        df["response"] = blobs["response"]
        if weak:
            df[schema.WEAK] = df[schema.SCORE].to_numpy(float) < p.threshold
        return df

    def _search(self, mic: Micrograph, ctx: PickContext) -> dict:
        """Keyword arguments shared by the 2D and 3D scale-space searches."""
        p = self.params
        return dict(
            dmin_px=ctx.dmin_px * (1 - p.range_margin),
            dmax_px=ctx.dmax_px * (1 + p.range_margin),
            method=self.method,
            k=p.k,
            threshold_method=p.threshold_method,
            threshold=p.threshold,
            min_sigma_binned=p.min_sigma_binned,
            octave_span=p.octave_span,
            exclude_border_px=p.exclude_border * ctx.dmin_px,
            equalise_borders=p.equalise_borders,
            binned=mic.signal,
        )

    def _detect_3d(self, mic: Micrograph, ctx: PickContext) -> pd.DataFrame:
        # Tomograms: maxima in (scale, z, y, x); see lipoframe.algorithms.scale_space3d.
        from lipoframe.algorithms.scale_space3d import detect_blobs_3d

        if self.method not in ("dog", "log"):
            raise ValueError(f"detector {self.name!r} works on 2D micrographs only; use detector=dog or log for tomograms")
        search = self._search(mic, ctx)
        search["binned"] = self._thin_volume_levels(mic, ctx, search)
        blobs = detect_blobs_3d(None, **search)
        df = pd.DataFrame({c: blobs[c] for c in schema.DETECTOR_COLUMNS})
        df[schema.Z] = blobs[schema.Z]
        df["response"] = blobs["response"]
        return df


    @staticmethod
    def _thin_volume_levels(mic: Micrograph, ctx: PickContext, search: dict):
        """``mic.signal``, with an empty volume for the pyramid levels binned more than the volume has planes.

        Each scale is searched on the volume binned by a power of two (``sigma >= min_sigma_binned``
        binned voxels); a volume with fewer planes than the factor has no plane left at that level.
        However few planes remain, a level is searched (benchmarks/thin_volumes.py: 60-voxel spheres
        in 4 planes, binned x4 to one, are found). A volume that has no plane left at the finest
        level cannot be searched at all and is refused, naming the file, its planes and the bound;
        coarser levels without a plane (larger diameters) are left out with a warning.
        """
        import logging

        from lipoframe.algorithms.scale_space import plan_levels
        from lipoframe.algorithms.scale_space3d import DIAMETER_PER_SIGMA_3D
        from lipoframe.records import InputError

        nz = mic.shape[0]
        levels = plan_levels(search["dmin_px"] / DIAMETER_PER_SIGMA_3D, search["dmax_px"] / DIAMETER_PER_SIGMA_3D, k=search["k"],
                             min_sigma_binned=search["min_sigma_binned"], octave_span=search["octave_span"])
        where = mic.meta.path or mic.name
        if nz < levels[0].factor:
            raise InputError(
                f"{where}: volume of {nz} planes is too thin to search: the smallest diameter ({ctx.dmin_px:.0f} px) is "
                f"searched binned x{levels[0].factor}, which needs at least {levels[0].factor} planes; raise "
                f"detector.min_sigma_binned (now {search['min_sigma_binned']:g}) or lower dmin"
            )
        lost = [lv for lv in levels if nz < lv.factor]
        if lost:
            d = lost[0].sigmas[0] * DIAMETER_PER_SIGMA_3D
            logging.getLogger("lipoframe").warning(
                "%s: volume of %d planes is too thin for the search of diameters over %.0f px (binned x%d, which needs "
                "%d planes): particles that large are not found; raise detector.min_sigma_binned to search them",
                where, nz, d, lost[0].factor, lost[0].factor)
        signal = mic.signal
        return lambda f: signal(f) if nz >= f else np.zeros((0, 0, 0), np.float32)


class DogDetector(_BlobDetector):
    name = "dog"
    Params = DogParams
    method = "dog"
    summary = "difference of Gaussians, local maxima in (x, y, scale) on an automatic pyramid"


class LogDetector(_BlobDetector):
    name = "log"
    Params = LogParams
    method = "log"
    summary = "scale-normalised Laplacian of Gaussian, same pyramid and maxima as dog"


class EdgeDetector(_BlobDetector):
    name = "edge"
    Params = EdgeParams
    method = "edge"
    summary = "circular-edge flux: one maximum at the outer edge of discs, shells (rings) and vesicles"


@dataclass
class MembraneParams:
    """Thin-membrane vesicles (large liposomes): circles lined with membrane.

    For vesicles whose membrane is thin next to their radius (large
    liposomes, 40 nm and up) in cluttered fields, where the step-edge
    detectors and the radial refiner can miss a thin line around a lumen as
    grey as the background. Vesicles under about 8 membrane widths across are
    not searched (use ``edge``). Use it through
    ``+experiment=vesicles`` (which also turns the refiner off; the radial
    refiner would reject thin rings). See
    :mod:`lipoframe.algorithms.membrane`.

    thickness: membrane width, in ``units`` (40 Å: a lipid bilayer).
    units: ``A`` or ``px``.
    threshold: smallest ring score (noise units of the mean membrane signal
        along a circle, minus that along the circles at 0.8 and 1.2 radii).
    min_coverage: smallest fraction of directions in which the circle runs
        along membrane.
    ratio: ratio of successive radii searched.
    """

    thickness: float = 40.0
    units: str = "A"
    threshold: float = 6.0
    min_coverage: float = 0.7
    ratio: float = 1.04

    def __post_init__(self) -> None:
        check_finite(self, "detector")
        if not self.thickness > 0:
            raise ValueError(f"detector.thickness must be > 0, got {self.thickness}")
        if self.units not in ("A", "px"):
            raise ValueError(f"detector.units must be 'A' or 'px', got {self.units!r}")
        if not self.threshold > 0:
            raise ValueError(f"detector.threshold must be > 0, got {self.threshold}")
        if not 0 <= self.min_coverage <= 1:
            raise ValueError(f"detector.min_coverage must be in [0, 1], got {self.min_coverage}")
        if not 1 < self.ratio <= 1.5:
            raise ValueError(f"detector.ratio must be in (1, 1.5], got {self.ratio}")


class MembraneDetector(Detector):
    name = "membrane"
    Params = MembraneParams
    columns = ("response", "membrane_coverage")
    summary = "thin-membrane vesicles: circular Hough search on a membrane (ridge) map, with angular coverage"

    def detect(self, mic: Micrograph, ctx: PickContext) -> pd.DataFrame:
        p = self.params
        if mic.image.ndim != 2:
            raise ValueError("detector 'membrane' works on 2D micrographs only")
        thickness_px = length_px(p.thickness, p.units, ctx, mic, "detector.thickness")
        # Bin while the membrane stays about 3 pixels wide (and the smallest
        # vesicle 8 pixels across).
        factor = max(1, min(pow2_floor(thickness_px / 3.0), pow2_floor(ctx.dmin_px / 8.0)))
        ridge = membrane_map(mic.signal(factor), thickness=max(1.0, thickness_px / factor))
        # The dark line of a projected bilayer peaks at its inner radius (the
        # chord through the shell is longest there): the outer edge, and the
        # diameter, lie one membrane width further out.
        # A ring of membrane is only a ring well beyond its own width: radii
        # below three widths (vesicles under ~8 widths across) are left to
        # the step-edge detectors.
        rmin = max(3.0 * thickness_px, (ctx.dmin_px / 2.0 - thickness_px) * 0.95) / factor
        rmax = (ctx.dmax_px / 2.0 - thickness_px) * 1.05 / factor
        if rmax <= rmin:
            raise ValueError(
                f"detector 'membrane': dmax ({ctx.dmax_px:.0f} px) is under 8 membrane widths "
                f"({thickness_px:.1f} px each); these vesicles are not thin rings, use detector=edge"
            )
        rings = find_rings(ridge, rmin=rmin, rmax=rmax, ratio=p.ratio,
                           threshold=p.threshold, min_coverage=p.min_coverage)
        diameter = 2.0 * (rings["radius"] * factor + thickness_px)
        return pd.DataFrame({
            schema.X: to_full_resolution(rings["col"], factor),
            schema.Y: to_full_resolution(rings["row"], factor),
            schema.DIAMETER: diameter,
            schema.SCORE: rings["score"],
            schema.LEVEL: np.zeros(len(diameter), dtype=np.int64),
            schema.SIGMA: diameter / (2.0 * np.sqrt(2.0)),
            "response": rings["score"],
            "membrane_coverage": rings["coverage"],
        })


@hookimpl
def lipoframe_register_stages(registry):
    registry.add(DogDetector)
    registry.add(LogDetector)
    registry.add(EdgeDetector)
    registry.add(MembraneDetector)
