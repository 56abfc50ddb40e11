"""Built-in binning policies."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from lipoframe import schema
from lipoframe.hookspecs import hookimpl
from lipoframe.plan import COSINE_EDGE_WIDTH_PX, ExtractionPlan, SizeBin, round_up_box
from lipoframe.records import MicrographMeta, PickContext
from lipoframe.stages import Binner, BinningResult

ROUNDINGS = ("multiple32", "fft", "even")


@dataclass
class BoxParams:
    """Box-size settings shared by the binning policies.

    pad: box edge = pad * largest diameter of the bin (1.4-1.6).
    rounding: ``multiple32`` (next multiple of 32), ``fft`` (next even size
        with factors 2, 3, 5) or ``even``; always rounds up.
    extract_pixel_size: also give box sizes for extraction at this Å/px.
    """

    pad: float = 1.5
    rounding: str = "multiple32"
    extract_pixel_size: float | None = None

    def __post_init__(self) -> None:
        if not 1.4 <= self.pad <= 1.6:
            raise ValueError(f"binning.pad must be in [1.4, 1.6], got {self.pad}")
        if self.rounding not in ROUNDINGS:
            raise ValueError(f"binning.rounding must be one of {ROUNDINGS}, got {self.rounding!r}")
        if self.extract_pixel_size is not None and not self.extract_pixel_size > 0:
            raise ValueError(f"binning.extract_pixel_size must be > 0, got {self.extract_pixel_size}")


def make_bin(index: int, lo: float, hi: float, count: int, params: BoxParams, pixel_size: float | None) -> SizeBin:
    """A :class:`SizeBin` with box and mask sizes from the bin's largest diameter."""
    box = round_up_box(params.pad * hi, rounding=params.rounding)
    mask = None
    box_extract = None
    if pixel_size:
        mask = float(min((box - COSINE_EDGE_WIDTH_PX) * pixel_size, 1.2 * hi * pixel_size))
        if params.extract_pixel_size:
            box_extract = round_up_box(params.pad * hi * pixel_size / params.extract_pixel_size, rounding=params.rounding)
    return SizeBin(index=index, d_min_px=float(lo), d_max_px=float(hi), count=int(count), box_px=box, mask_diameter_A=mask, box_px_extract=box_extract)


@dataclass
class SingleParams(BoxParams):
    """One bin for every accepted pick (one box size for the whole dataset)."""


class SingleBinner(Binner):
    name = "single"
    Params = SingleParams
    summary = "one bin, one box size for all accepted picks"

    def assign(self, picks: pd.DataFrame, metas: dict[str, MicrographMeta], ctx: PickContext) -> BinningResult:
        out = schema.with_acceptance(picks)
        ok = out[schema.ACCEPTED].to_numpy()
        d = out[schema.DIAMETER].to_numpy(dtype=float)
        bins: tuple[SizeBin, ...] = ()
        notes: tuple[str, ...] = ()
        if ok.any():
            bins = (make_bin(0, float(d[ok].min()), float(d[ok].max()), int(ok.sum()), self.params, ctx.pixel_size),)
        else:
            notes = ("no accepted picks: no bins",)
        out[schema.SIZE_BIN] = np.where(ok, 0, schema.REJECTED_BIN).astype(np.int64)
        plan = ExtractionPlan(policy=self.name, pixel_size=ctx.pixel_size, bins=bins, extract_pixel_size=self.params.extract_pixel_size, notes=notes)
        return BinningResult(picks=out, plan=plan)


@hookimpl
def lipoframe_register_stages(registry):
    registry.add(SingleBinner)
