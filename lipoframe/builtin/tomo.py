"""Tomogram stages: diameters from 3D radial profiles.

Detection in tomograms is done by the ``dog``/``log`` detectors (they switch
to (scale, z, y, x) maxima when the reader gives a volume, ``reader.dims=3``)
and suppression by ``nms=size_aware`` (3D when picks have ``z_px``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from lipoframe import schema
from lipoframe.algorithms.pyramid import to_binned, to_full_resolution
from lipoframe.algorithms.radial3d import refine_diameters
from lipoframe.hookspecs import hookimpl
from lipoframe.records import Micrograph, PickContext
from lipoframe.stages import Refiner, check_finite


@dataclass
class RadialProfile3dParams:
    """Set each diameter to where the particle's spherical radial profile falls fastest.

    search: look for the edge within (1 +- search) x the detector's radius.
    recentre: alternate a sharp ball template match for the centre with the
        edge radius (twice); an off-centre profile blurs the edge.
    min_radius_binned: bin the volume so every particle's radius spans at
        least this many voxels (larger = finer, slower).
    """

    search: float = 0.4
    recentre: bool = True
    min_radius_binned: float = 8.0

    def __post_init__(self) -> None:
        check_finite(self, "refiner")
        if not 0 < self.search < 1:
            raise ValueError(f"refiner.search must be in (0, 1), got {self.search}")
        if self.min_radius_binned < 2:
            raise ValueError(f"refiner.min_radius_binned must be >= 2, got {self.min_radius_binned}")


class RadialProfile3dRefiner(Refiner):
    name = "radial_profile_3d"
    Params = RadialProfile3dParams
    summary = "tomograms: diameter = steepest fall of the spherical radial profile (solid spheres and vesicles)"
    reasons = ()

    def refine(self, picks: pd.DataFrame, mic: Micrograph, ctx: PickContext) -> pd.DataFrame:
        p = self.params
        out = picks.copy()
        n = len(out)
        ndim = mic.image.ndim
        axes = ([schema.Z] if ndim == 3 else []) + [schema.Y, schema.X]
        if n and ndim == 3 and schema.Z not in out.columns:
            raise ValueError(f"refiner {self.name!r}: picks on a volume have no {schema.Z!r} column")
        d0 = out[schema.DIAMETER].to_numpy(dtype=float)
        if n == 0:
            out["diameter_initial_px"] = d0
            out["radial_edge_found"] = np.zeros(0, dtype=bool)
            out["radial_edge_drop"] = d0
            return out
        refined = np.full(n, np.nan)
        xyz = out[axes].to_numpy(dtype=float, copy=True).reshape(n, len(axes))
        drop = np.zeros(n)
        factors = np.maximum(1, np.floor(d0 / 2.0 / p.min_radius_binned)).astype(int)
        for f in np.unique(factors):
            sel = np.nonzero(factors == f)[0]
            image = mic.signal(int(f))
            centres = to_binned(xyz[sel], int(f))
            d, dr, moved = refine_diameters(image, centres, d0[sel] / f, search=p.search, recentre=p.recentre)
            refined[sel] = d * f
            drop[sel] = dr
            xyz[sel] = to_full_resolution(moved, int(f))
        ok = np.isfinite(refined)
        if p.recentre:
            # Keep the detector's centre where no edge was found.
            for a, col in enumerate(axes):
                out[col] = np.where(ok, xyz[:, a], out[col].to_numpy(dtype=float))
        out["diameter_initial_px"] = d0
        out[schema.DIAMETER] = np.where(ok, refined, d0)
        out["radial_edge_found"] = ok
        out["radial_edge_drop"] = drop
        return out


@hookimpl
def lipoframe_register_stages(registry):
    registry.add(RadialProfile3dRefiner)
