"""A fake third-party lipoframe plugin, "installed" by putting tests/fake_site on sys.path.

Its detector ``fake_centre`` returns exactly one pick per micrograph, at the
image centre, with the diameter ``sqrt(dmin * dmax)``: a result the tests can
predict, so they prove that a third-party stage really ran end to end. Its
``lipoframe_run_end`` hook leaves a marker file in the output folder.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import pandas as pd

from lipoframe import hookimpl
from lipoframe.stages import Detector


@dataclass
class FakeCentreParams:
    """score: the score of the one pick."""

    score: float = 1.0

    def __post_init__(self) -> None:
        if not self.score > 0:
            raise ValueError(f"detector.score must be > 0, got {self.score}")


class FakeCentreDetector(Detector):
    name = "fake_centre"
    Params = FakeCentreParams
    summary = "one pick at the image centre (test plugin)"

    def detect(self, mic, ctx):
        ny, nx = mic.shape[-2:]
        d = math.sqrt(ctx.dmin_px * ctx.dmax_px)
        return pd.DataFrame(
            {
                "x_px": [(nx - 1) / 2.0],
                "y_px": [(ny - 1) / 2.0],
                "diameter_px": [d],
                "score": [self.params.score],
                "pyramid_level": [0],
                "sigma_px": [d / (2 * math.sqrt(2))],
            }
        )


@hookimpl
def lipoframe_register_stages(registry):
    registry.add(FakeCentreDetector)


@hookimpl
def lipoframe_run_end(out_dir, summary):
    (out_dir / "fake_plugin_run_end.json").write_text(json.dumps(summary["picks"]))
