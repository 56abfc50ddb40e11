"""Base classes of the interchangeable stages.

A stage is a class with a ``name``, a ``kind`` and a ``Params`` dataclass. The
runner builds it as ``Stage(params)`` and calls the one method of its kind.
Stages never mutate their inputs: they return a new table and may add columns
of their own.

=========  ==========================================================  ==========================
kind       method                                                      runs
=========  ==========================================================  ==========================
reader     ``read(path, *, pixel_size) -> Micrograph``                 per file
detector   ``detect(mic, ctx) -> DataFrame``                           per micrograph
nms        ``suppress(picks, mic, ctx) -> DataFrame``                  per micrograph
refiner    ``refine(picks, mic, ctx) -> DataFrame``                    per micrograph
filter     ``apply(picks, mic, ctx) -> DataFrame``                     per micrograph, in order
           ``apply_dataset(picks, metas, ctx) -> DataFrame`` (optional) once per dataset, before binning
binning    ``assign(picks, metas, ctx) -> BinningResult``              once per dataset
writer     ``write(picks, metas, plan, out_dir, ctx) -> list[Path]``   once per dataset
=========  ==========================================================  ==========================
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import pandas as pd

    from lipoframe.plan import ExtractionPlan
    from lipoframe.records import Micrograph, MicrographMeta, PickContext

#: The stage kinds, in pipeline order. Each is a Hydra config group.
KINDS = ("reader", "detector", "nms", "refiner", "filter", "binning", "writer")
#: Kinds of which several stages can be selected at once (``writer=[csv,star]``).
MULTI_KINDS = ("filter", "writer")


def check_finite(params: Any, section: str, *, infinite: tuple[str, ...] = ()) -> None:
    """Refuse a NaN or infinite number in any field of a stage's ``Params``.

    Range checks such as ``if x < 1: raise`` let NaN through (every comparison
    with NaN is false), so each ``__post_init__`` calls this first.

    Parameters
    ----------
    params : dataclass instance
        The stage's parameters; fields that are not numbers (``None``,
        strings) are skipped.
    section : str
        Where the keys live, e.g. ``"detector"`` or ``"filter.score"``; the
        message names ``section.field``.
    infinite : tuple of str, optional
        Fields for which ``inf`` (or ``-inf``) means something; the field's
        own range check decides which sign. NaN is refused for them too.

    Raises
    ------
    ValueError
        ``"<section>.<field> must be a number, got nan"`` or
        ``"<section>.<field> must be finite, got inf"``.
    """
    for f in dataclasses.fields(params):
        value = getattr(params, f.name)
        if not isinstance(value, numbers.Real) or math.isfinite(value):
            continue
        if math.isnan(value):
            raise ValueError(f"{section}.{f.name} must be a number, got nan")
        if f.name not in infinite:
            raise ValueError(f"{section}.{f.name} must be finite, got {value}")


@dataclass
class NoParams:
    """Placeholder: every stage defines its own ``Params`` dataclass (it may be empty)."""


class Stage:
    """Common base: holds validated parameters."""

    name: ClassVar[str] = ""
    kind: ClassVar[str] = ""
    Params: ClassVar[type] = NoParams
    #: One-line description shown by ``lipoframe stages``.
    summary: ClassVar[str] = ""
    #: Every ``reject_reason`` this stage can give; ``None``: not declared.
    #: ``retry_suppressed`` is checked against the reasons of the registered
    #: refiners and filters, so a misspelt reason is an error.
    reasons: ClassVar["tuple[str, ...] | None"] = None

    def __init__(self, params: Any = None):
        if params is None:
            params = self.Params()
        if not isinstance(params, self.Params):
            raise TypeError(f"{type(self).__name__} needs {self.Params.__name__}, got {type(params).__name__}")
        self.params = params

    def extra_inputs(self, path: Path, name: str) -> list[Path]:
        """Files besides the micrograph ``path`` (output name ``name``) that this stage reads for it.

        A network's heatmap, a mask, ...: a saved result is reused on resume
        only while these files are as they were (present or missing, size and
        modification time), so a new map makes the micrograph be picked
        again. The default is none.
        """
        return []

    def __repr__(self) -> str:
        fields = ", ".join(f"{f.name}={getattr(self.params, f.name)!r}" for f in dataclasses.fields(self.params))
        return f"{type(self).__name__}({fields})"


class Reader(Stage):
    kind = "reader"
    #: File suffixes this reader handles (lower case, with the dot).
    suffixes: ClassVar[tuple[str, ...]] = ()

    def read(self, path: Path, *, pixel_size: float | None) -> "Micrograph":
        raise NotImplementedError


class Detector(Stage):
    kind = "detector"
    #: Columns, besides :data:`lipoframe.schema.DETECTOR_COLUMNS`, that every
    #: table :meth:`detect` returns holds (``("response",)``). Declaring them
    #: lets an option that names another one (``nms.rank_by=respnse``) be
    #: refused before any micrograph is read; ``None``: not declared, such an
    #: option fails each micrograph instead.
    columns: ClassVar["tuple[str, ...] | None"] = None

    def detect(self, mic: "Micrograph", ctx: "PickContext") -> "pd.DataFrame":
        raise NotImplementedError


class Suppressor(Stage):
    kind = "nms"

    def ranked_by(self) -> dict[str, str]:
        """The candidates' columns this NMS orders them by, by option name
        (``{"nms.rank_by": "response"}``); checked against the detector's
        :attr:`Detector.columns` before the run."""
        return {}

    def suppress(self, picks: "pd.DataFrame", mic: "Micrograph", ctx: "PickContext") -> "pd.DataFrame":
        raise NotImplementedError


class Refiner(Stage):
    kind = "refiner"

    def refine(self, picks: "pd.DataFrame", mic: "Micrograph", ctx: "PickContext") -> "pd.DataFrame":
        raise NotImplementedError


class Filter(Stage):
    kind = "filter"

    def apply(self, picks: "pd.DataFrame", mic: "Micrograph", ctx: "PickContext") -> "pd.DataFrame":
        raise NotImplementedError

    def apply_dataset(
        self, picks: "pd.DataFrame", metas: dict[str, "MicrographMeta"], ctx: "PickContext"
    ) -> "pd.DataFrame":
        """Second look with the whole dataset in view (all micrographs' picks, one table).

        For decisions a micrograph cannot make alone, e.g. "far darker than
        this dataset's particles" on a micrograph without particles. The
        default keeps the table as it is.
        """
        return picks


@dataclass(frozen=True)
class BinningResult:
    """What a binning stage returns: the table with ``size_bin`` and the plan."""

    picks: "pd.DataFrame"
    plan: "ExtractionPlan"


class Binner(Stage):
    kind = "binning"

    def assign(
        self, picks: "pd.DataFrame", metas: dict[str, "MicrographMeta"], ctx: "PickContext"
    ) -> BinningResult:
        raise NotImplementedError


class Writer(Stage):
    kind = "writer"

    def write(
        self,
        picks: "pd.DataFrame",
        metas: dict[str, "MicrographMeta"],
        plan: "ExtractionPlan",
        out_dir: Path,
        ctx: "PickContext",
    ) -> list[Path]:
        raise NotImplementedError


BASES = {
    "reader": Reader,
    "detector": Detector,
    "nms": Suppressor,
    "refiner": Refiner,
    "filter": Filter,
    "binning": Binner,
    "writer": Writer,
}
