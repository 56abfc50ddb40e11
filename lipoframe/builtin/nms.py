"""Built-in non-maximum suppression strategies."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from lipoframe import schema
from lipoframe.algorithms.nms import size_aware_nms
from lipoframe.hookspecs import hookimpl
from lipoframe.records import Micrograph, PickContext
from lipoframe.stages import Suppressor


@dataclass
class SizeAwareParams:
    """Greedy NMS by score with exclusion radius ``beta * r``.

    beta: exclusion radius as a fraction of the accepted pick's radius (> 0).
    symmetric: also reject a candidate whose own ``beta * r`` contains an
        accepted pick (removes large blobs spanning several small particles).
    """

    beta: float = 0.8
    symmetric: bool = True

    def __post_init__(self) -> None:
        if not 0 < self.beta <= 2:
            raise ValueError(f"nms.beta must be in (0, 2], got {self.beta}")


class SizeAwareNms(Suppressor):
    name = "size_aware"
    Params = SizeAwareParams
    summary = "greedy by score; reject centres within beta * r of an accepted pick (KD-tree)"

    def suppress(self, picks: pd.DataFrame, mic: Micrograph, ctx: PickContext) -> pd.DataFrame:
        xy = picks[[schema.X, schema.Y]].to_numpy(dtype=float)
        keep = size_aware_nms(
            xy,
            picks[schema.DIAMETER].to_numpy(dtype=float) / 2.0,
            picks[schema.SCORE].to_numpy(dtype=float),
            beta=self.params.beta,
            symmetric=self.params.symmetric,
        )
        return picks.loc[keep].reset_index(drop=True)


@dataclass
class NoNmsParams:
    """Keep every detection (for debugging a detector)."""


class NoNms(Suppressor):
    name = "none"
    Params = NoNmsParams
    summary = "keep every detection"

    def suppress(self, picks: pd.DataFrame, mic: Micrograph, ctx: PickContext) -> pd.DataFrame:
        return picks.copy()


@hookimpl
def lipoframe_register_stages(registry):
    registry.add(SizeAwareNms)
    registry.add(NoNms)
