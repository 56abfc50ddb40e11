"""Dataset-level plan outputs written next to the picks."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from lipoframe.io.atomic import write_text
from lipoframe.plan import ExtractionPlan


def write_plan_files(plan: ExtractionPlan, picks: pd.DataFrame, out_dir: Path, *, metas=None, written=()) -> list[Path]:
    """Write ``extraction_plan.json``; returns the files written."""
    path = write_text(Path(out_dir) / "extraction_plan.json", plan.to_json() + "\n")
    return [path]
