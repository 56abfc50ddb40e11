"""Built-in writers.

Every writer converts from lipoframe's one convention (``x_px`` = column,
``y_px`` = row, 0-indexed pixel centres of the input array) to its format's
convention, and only here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from lipoframe import schema
from lipoframe.hookspecs import hookimpl
from lipoframe.io.atomic import atomic_path, safe_child
from lipoframe.plan import ExtractionPlan
from lipoframe.records import MicrographMeta, PickContext
from lipoframe.stages import Writer


def exported(picks: pd.DataFrame, ctx: PickContext) -> pd.DataFrame:
    """The picks a writer should export: accepted ones unless ``export_rejected``."""
    if ctx.export_rejected or schema.ACCEPTED not in picks.columns:
        return picks
    return picks.loc[picks[schema.ACCEPTED].astype(bool)]


def write_csv(df: pd.DataFrame, path: Path, *, float_format: str = "%.2f") -> Path:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, float_format=float_format)
    return path


@dataclass
class CsvWriterParams:
    """Combined ``picks.csv`` plus one ``csv/<micrograph>.csv`` per micrograph.

    per_micrograph: also write one file per micrograph.
    float_format: printf format of floating-point columns.
    """

    per_micrograph: bool = True
    float_format: str = "%.2f"


class CsvWriter(Writer):
    name = "csv"
    Params = CsvWriterParams
    summary = "picks.csv (all micrographs) and csv/<micrograph>.csv"

    def write(self, picks, metas: dict[str, MicrographMeta], plan: ExtractionPlan, out_dir: Path, ctx: PickContext) -> list[Path]:
        table = exported(picks, ctx)
        written = [write_csv(table, safe_child(out_dir, "picks.csv"), float_format=self.params.float_format)]
        if self.params.per_micrograph:
            groups = dict(tuple(table.groupby(schema.MICROGRAPH, sort=False, observed=True)))
            for name in metas:
                sub = groups.get(name, table.iloc[0:0])
                written.append(write_csv(sub, safe_child(out_dir, "csv", f"{name}.csv"), float_format=self.params.float_format))
        return written


@hookimpl
def lipoframe_register_stages(registry):
    registry.add(CsvWriter)
