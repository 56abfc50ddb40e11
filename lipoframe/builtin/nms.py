"""Built-in non-maximum suppression strategies."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from lipoframe import schema
from lipoframe.algorithms.nms import contained_mask, overlap_nms, size_aware_nms
from lipoframe.hookspecs import hookimpl
from lipoframe.records import Micrograph, PickContext
from lipoframe.stages import Suppressor, check_finite


@dataclass
class SizeAwareParams:
    """Greedy NMS by score with exclusion radius ``beta * r``.

    beta: exclusion radius as a fraction of the accepted pick's radius (> 0).
    symmetric: also reject a candidate whose own ``beta * r`` contains an
        accepted pick (removes large blobs spanning several small particles).
    max_containment: also reject a candidate whose overlap with an accepted
        pick covers more than this fraction of the smaller circle (arcs on a
        particle's edge, picks inside vesicles); 1 turns it off (seed rule).
    rank_by: column that orders candidates (higher first). ``response``, the
        detector's scale-normalised response, is comparable across sizes, so
        a whole particle outranks arcs of its own edge. Falls back to
        ``score`` when the column is missing.
    outrank_by: second column by which a larger confident (not weak)
        candidate may outrank a smaller one inside it (radius at most
        ``outrank_ratio`` of its own):
        the larger wins unless the smaller is ahead on both ``rank_by`` and
        this column. ``score`` (response in units of each scale's noise)
        keeps the dark grains or rim arcs of a large particle, stronger by
        response, from covering it with small picks when the diameter range
        reaches far below its size. The runner lets such a win stand only
        if refinement and the filters accept the larger candidate; otherwise
        the smaller ones get their place back (docs/picking.md, NMS
        strategies). Empty turns it off.
    outrank_ratio: see ``outrank_by``, in (0, 1).
    """

    beta: float = 0.8
    symmetric: bool = True
    max_containment: float = 0.4
    rank_by: str = "response"
    outrank_by: str = "score"
    outrank_ratio: float = 0.7

    def __post_init__(self) -> None:
        check_finite(self, "nms")
        if not 0 < self.beta <= 2:
            raise ValueError(f"nms.beta must be in (0, 2], got {self.beta}")
        if not 0 < self.max_containment <= 1:
            raise ValueError(f"nms.max_containment must be in (0, 1], got {self.max_containment}")
        if not self.rank_by:
            raise ValueError("nms.rank_by must name a column, e.g. response or score")
        if not 0 < self.outrank_ratio < 1:
            raise ValueError(f"nms.outrank_ratio must be in (0, 1), got {self.outrank_ratio}")


def rank_values(picks: pd.DataFrame, column: str, *, option: str = "nms.rank_by") -> np.ndarray:
    """Values that order NMS candidates: ``column``; ``score`` when ``column``
    is ``response`` and the detector does not write it.

    Weak candidates (``weak`` column, below the detector's threshold) come
    after every confident one, so they never suppress a confident pick.

    Raises
    ------
    ValueError
        ``column`` is another column the detections do not have (a typo):
        the message names ``option`` and the numeric columns there are.
    """
    if column not in picks.columns and column != "response":
        numeric = [c for c in picks.columns if not str(c).startswith("_") and pd.api.types.is_numeric_dtype(picks[c]) and not pd.api.types.is_bool_dtype(picks[c])]
        raise ValueError(f"{option}={column!r} is not a column of the detections; they have {', '.join(numeric)}")
    col = column if column in picks.columns else schema.SCORE
    values = picks[col].to_numpy(dtype=float)
    weak = schema.weak_mask(picks)
    if weak.any() and not weak.all():
        values = np.where(weak, values - (np.ptp(values) + 1.0), values)
    return values


class SizeAwareNms(Suppressor):
    name = "size_aware"
    Params = SizeAwareParams
    summary = "greedy (by response; larger over smaller inside it by score): reject centres within beta * r of an accepted pick, and circles mostly inside one (KD-tree)"

    def ranked_by(self) -> dict[str, str]:
        used = {"nms.rank_by": self.params.rank_by}
        if self.params.outrank_by:
            used["nms.outrank_by"] = self.params.outrank_by
        return used

    def suppress(self, picks: pd.DataFrame, mic: Micrograph, ctx: PickContext) -> pd.DataFrame:
        # Tomogram picks carry z_px: suppress in 3D.
        axes = [schema.X, schema.Y] + ([schema.Z] if schema.Z in picks.columns else [])
        xy = picks[axes].to_numpy(dtype=float)
        # Confident candidates may outrank, unless the runner took it back (refinement rejected them).
        failed = schema.flags(picks[schema.OUTRANK_FAILED]) if schema.OUTRANK_FAILED in picks.columns else False
        keep = size_aware_nms(
            xy,
            picks[schema.DIAMETER].to_numpy(dtype=float) / 2.0,
            rank_values(picks, self.params.rank_by),
            beta=self.params.beta,
            symmetric=self.params.symmetric,
            max_containment=self.params.max_containment,
            second=rank_values(picks, self.params.outrank_by, option="nms.outrank_by") if self.params.outrank_by else None,
            may_outrank=~schema.weak_mask(picks) & ~failed,
            inner_ratio=self.params.outrank_ratio,
        )
        return picks.loc[keep].reset_index(drop=True)


@dataclass
class OverlapParams:
    """Greedy NMS by circle overlap: keeps touching particles, removes duplicates.

    max_iou: reject a candidate whose IoU with an accepted pick exceeds this.
    max_containment: ... or whose intersection covers more than this fraction
        of the smaller circle.
    rank_by: column that orders candidates (see size_aware).
    """

    max_iou: float = 0.2
    max_containment: float = 0.4
    rank_by: str = "response"

    def __post_init__(self) -> None:
        check_finite(self, "nms")
        if not 0 < self.max_iou <= 1:
            raise ValueError(f"nms.max_iou must be in (0, 1], got {self.max_iou}")
        if not 0 < self.max_containment <= 1:
            raise ValueError(f"nms.max_containment must be in (0, 1], got {self.max_containment}")
        if not self.rank_by:
            raise ValueError("nms.rank_by must name a column, e.g. response or score")


class OverlapNms(Suppressor):
    name = "overlap"
    Params = OverlapParams
    summary = "greedy by score; reject circles overlapping an accepted pick (IoU / containment)"

    def ranked_by(self) -> dict[str, str]:
        return {"nms.rank_by": self.params.rank_by}

    def suppress(self, picks: pd.DataFrame, mic: Micrograph, ctx: PickContext) -> pd.DataFrame:
        keep = overlap_nms(
            picks[[schema.X, schema.Y]].to_numpy(dtype=float),
            picks[schema.DIAMETER].to_numpy(dtype=float) / 2.0,
            rank_values(picks, self.params.rank_by),
            max_iou=self.params.max_iou,
            max_containment=self.params.max_containment,
        )
        return picks.loc[keep].reset_index(drop=True)


@dataclass
class NestedParams(SizeAwareParams):
    """For vesicles with content: the larger particle wins over what lies inside it.

    First the seed rule alone (``beta``; the symmetric and containment tests
    of size_aware are off, since they would let an accepted inner object
    remove its vesicle). Then, on the refined picks (the second NMS pass,
    after the refiner confirmed each particle's edge), visiting picks from
    the largest, every pick inside a larger kept one is removed.

    tolerance: a pick is inside when dist + r_small <= (1 + tolerance) * r_large.
    max_ratio: only picks at most this fraction of the larger radius are removed.
    """

    symmetric: bool = False
    max_containment: float = 1.0
    tolerance: float = 0.1
    max_ratio: float = 0.75

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.tolerance <= 0.5:
            raise ValueError(f"nms.tolerance must be in [0, 0.5], got {self.tolerance}")
        if not 0 < self.max_ratio < 1:
            raise ValueError(f"nms.max_ratio must be in (0, 1), got {self.max_ratio}")


class NestedNms(SizeAwareNms):
    name = "nested"
    Params = NestedParams
    summary = "seed rule, then drop picks inside a larger particle, whatever their response (vesicles with content)"

    def suppress(self, picks: pd.DataFrame, mic: Micrograph, ctx: PickContext) -> pd.DataFrame:
        kept = super().suppress(picks, mic, ctx)
        if "edge_contrast" not in kept.columns:
            # Before refinement a large candidate may be a spurious blob over
            # several particles; only a refined (edge-confirmed) particle may
            # remove what lies inside it. The runner calls NMS again on the
            # accepted refined picks, where this applies.
            return kept
        inside = contained_mask(
            kept[[schema.X, schema.Y]].to_numpy(dtype=float),
            kept[schema.DIAMETER].to_numpy(dtype=float) / 2.0,
            tolerance=self.params.tolerance,
            max_ratio=self.params.max_ratio,
        )
        return kept.loc[~inside].reset_index(drop=True)


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
    registry.add(OverlapNms)
    registry.add(NestedNms)
    registry.add(NoNms)
