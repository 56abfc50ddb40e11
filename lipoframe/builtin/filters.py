"""Built-in filter stages (run after refinement, in the order selected).

Filters flag picks (``accepted=False`` with a ``reject_reason``); they never
drop rows, so every decision stays visible in the output tables.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from lipoframe import schema
from lipoframe.hookspecs import hookimpl
from lipoframe.records import Micrograph, PickContext
from lipoframe.stages import Filter


@dataclass
class DiameterRangeParams:
    """Reject picks whose diameter is outside the run's [dmin, dmax] widened by ``tolerance``.

    tolerance: relative widening of the range on both sides (0.1 = 10%).
    """

    tolerance: float = 0.1

    def __post_init__(self) -> None:
        if not 0 <= self.tolerance < 1:
            raise ValueError(f"filter.diameter_range.tolerance must be in [0, 1), got {self.tolerance}")


class DiameterRangeFilter(Filter):
    name = "diameter_range"
    Params = DiameterRangeParams
    summary = "reject picks whose diameter is outside [dmin, dmax] (with a tolerance)"

    def apply(self, picks: pd.DataFrame, mic: Micrograph, ctx: PickContext) -> pd.DataFrame:
        d = picks[schema.DIAMETER].to_numpy(dtype=float)
        t = self.params.tolerance
        bad = (d < ctx.dmin_px * (1 - t)) | (d > ctx.dmax_px * (1 + t))
        return schema.reject(picks, bad, "diameter_range")


@dataclass
class ScoreParams:
    """Reject picks whose ``score`` is below ``min_score``."""

    min_score: float = 0.0


class ScoreFilter(Filter):
    name = "score"
    Params = ScoreParams
    summary = "reject picks below a score"

    def apply(self, picks: pd.DataFrame, mic: Micrograph, ctx: PickContext) -> pd.DataFrame:
        bad = picks[schema.SCORE].to_numpy(dtype=float) < self.params.min_score
        return schema.reject(picks, bad, "score")


@hookimpl
def lipoframe_register_stages(registry):
    registry.add(DiameterRangeFilter)
    registry.add(ScoreFilter)
