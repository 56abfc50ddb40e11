"""Built-in refiners."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from lipoframe.hookspecs import hookimpl
from lipoframe.records import Micrograph, PickContext
from lipoframe.stages import Refiner


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
    registry.add(NoRefiner)
