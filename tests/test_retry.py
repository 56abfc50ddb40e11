"""Retrying the detections NMS suppressed in favour of a pick that then failed (``retry_suppressed``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest

from lipoframe import plugins, schema
from lipoframe.config import LipoframeConfig
from lipoframe.records import Micrograph, MicrographMeta
from lipoframe.runner import _CANDIDATE, StageSet, _params, pick_context, process_micrograph, retry_candidates
from lipoframe.stages import Detector
from lipoframe.synthetic import random_particles, render

SHAPE = (1600, 1600)
DIAMETER = 150.0


@dataclass
class ListedParams:
    """Return the detections given (test stage)."""


class ListedDetector(Detector):
    """A detector that reports given tables: one for every call, or one per call in turn (the last one repeats)."""

    name = "listed"
    Params = ListedParams
    def __init__(self, params, tables: list[pd.DataFrame]):
        super().__init__(params)
        self.tables = tables
        self.calls = 0

    def detect(self, mic, ctx):
        self.calls += 1
        return self.tables[min(self.calls, len(self.tables)) - 1].copy()


def detections(truth: pd.DataFrame, decoy_of: int) -> pd.DataFrame:
    """Every particle at its true place and size, and a small dark-interior decoy that outranks particle ``decoy_of``."""
    n = len(truth)
    det = pd.DataFrame({
        schema.X: truth[schema.X].to_numpy(float),
        schema.Y: truth[schema.Y].to_numpy(float),
        schema.DIAMETER: truth[schema.DIAMETER].to_numpy(float) * 0.9,
        schema.SCORE: np.full(n, 8.0),
        schema.LEVEL: np.zeros(n, dtype=np.int64),
        schema.SIGMA: truth[schema.DIAMETER].to_numpy(float) / 3.0,
        "response": np.full(n, 5.0),
        schema.WEAK: np.zeros(n, dtype=bool),
    })
    t = truth.iloc[decoy_of]
    decoy = pd.DataFrame({
        schema.X: [t[schema.X] + 20.0], schema.Y: [t[schema.Y] - 10.0], schema.DIAMETER: [70.0],
        schema.SCORE: [9.0], schema.LEVEL: [0], schema.SIGMA: [23.0], "response": [9.0], schema.WEAK: [False],
    })
    return pd.concat([det, decoy], ignore_index=True)


def run(image, table, *, retry, filters=("diameter_range", "population"), nms_params=None, dmin=120, peel=False):
    """Pick ``image`` with the detections ``table`` (``dmin``-300 px) and the other stages' defaults.

    ``table`` may be a list: the detector's answer to its first call, its
    second (detection again after peeling), ...
    """
    _, registry, _ = plugins.load()
    detector = ListedDetector(ListedParams(), list(table) if isinstance(table, (list, tuple)) else [table])
    cfg = LipoframeConfig(dmin=dmin, dmax=300, units="px")
    stages = StageSet(
        reader=None, detector=detector,
        nms=registry.build(_params(registry, "nms", "size_aware", nms_params)),
        refiner=registry.build(_params(registry, "refiner", "radial_profile", None)),
        filters=[registry.build(_params(registry, "filter", f, None)) for f in filters],
        binner=None, writers=[], retry_suppressed=retry, peel=peel,
    )
    meta = MicrographMeta(name="m", path="m.mrc", shape=image.shape, pixel_size=None)
    return process_micrograph(Micrograph(meta=meta, image=image, polarity="dark"), stages, pick_context(meta, cfg))


@pytest.fixture(scope="module")
def crowd():
    truth = random_particles(SHAPE, np.full(40, DIAMETER), seed=3, gap=10)
    return render(SHAPE, truth, noise=0.05, seed=3), truth


def found(picks: pd.DataFrame, x: float, y: float) -> pd.DataFrame:
    acc = picks[picks[schema.ACCEPTED]]
    return acc[np.hypot(acc[schema.X] - x, acc[schema.Y] - y) < 0.2 * DIAMETER]


def test_a_particle_lost_to_its_dark_interior_comes_back(crowd):
    image, truth = crowd
    assert len(truth) >= 30
    t = truth.iloc[0]
    table = detections(truth, 0)
    without = run(image, table, retry=())
    # The decoy wins NMS, then fails on its own measurement; the particle is lost.
    assert len(found(without, t[schema.X], t[schema.Y])) == 0
    decoy = without[without[schema.DIAMETER] < 100]
    assert len(decoy) == 1 and decoy[schema.REASON].iloc[0] in ("no_edge", "diameter_range")

    picks = run(image, table, retry=("no_edge", "diameter_range"))
    back = found(picks, t[schema.X], t[schema.Y])
    assert len(back) == 1
    assert bool(back[schema.RETRIED].iloc[0]) and bool(back[schema.WEAK].iloc[0])
    assert back[schema.DIAMETER].iloc[0] == pytest.approx(t[schema.DIAMETER], rel=0.05)
    # Nothing else changes: every particle once, the decoy still rejected, no row dropped.
    assert int(picks[schema.ACCEPTED].sum()) == len(truth)
    assert int(picks[schema.RETRIED].sum()) == 1
    assert len(picks) == len(table)
    assert picks[schema.RETRIED].dtype == bool and picks[schema.WEAK].dtype == bool


def test_retried_detections_are_weak_candidates(crowd):
    # Without a filter that vouches for weak candidates, a retried detection is not accepted.
    image, truth = crowd
    t = truth.iloc[0]
    picks = run(image, detections(truth, 0), retry=("no_edge", "diameter_range"), filters=("diameter_range",))
    assert len(found(picks, t[schema.X], t[schema.Y])) == 0
    retried = picks[picks[schema.RETRIED]]
    assert len(retried) == 1 and retried[schema.REASON].iloc[0] == "weak"


def test_only_listed_reasons_are_retried(crowd):
    image, truth = crowd
    t = truth.iloc[0]
    picks = run(image, detections(truth, 0), retry=("contamination",))
    assert len(found(picks, t[schema.X], t[schema.Y])) == 0
    assert not picks[schema.RETRIED].any()


def table_of(rows):
    """Detections (x, y, diameter, response) with their row numbers."""
    x, y, d, resp = np.array(rows, dtype=float).T
    n = len(x)
    return pd.DataFrame({
        schema.X: x, schema.Y: y, schema.DIAMETER: d, schema.SCORE: resp, schema.LEVEL: np.zeros(n, dtype=np.int64),
        schema.SIGMA: d / 3.0, "response": resp, _CANDIDATE: np.arange(n),
    })


def test_retry_candidates_same_place_and_never_displacing_a_standing_pick():
    _, registry, _ = plugins.load()
    stages = StageSet(reader=None, detector=None, nms=registry.build(_params(registry, "nms", "size_aware", None)),
                      refiner=None, filters=[], binner=None, writers=[])
    det = table_of([
        (500, 500, 80, 9.0),    # 0: A, kept, then fails
        (640, 500, 150, 8.0),   # 1: B, kept, stands
        (600, 440, 240, 3.0),   # 2: C, contains A's centre but mostly covers B
        (470, 560, 150, 2.0),   # 3: D, contains A's centre, clear of B
        (900, 900, 150, 1.0),   # 4: E, suppressed elsewhere (not at A's place)
    ])
    kept = det.iloc[[0, 1]]
    mic = Micrograph(meta=MicrographMeta(name="m", path="", shape=(1200, 1200)), image=np.zeros((1200, 1200)))
    ctx = pick_context(mic.meta, LipoframeConfig(dmin=50, dmax=300, units="px"))
    retry = retry_candidates(det, kept, kept.iloc[[0]], kept.iloc[[1]], mic, stages, ctx)
    assert retry[_CANDIDATE].tolist() == [3]
    # Had B failed too, C would be tried as well (and D, which it does not cover).
    both = retry_candidates(det, kept, kept, kept.iloc[:0], mic, stages, ctx)
    assert both[_CANDIDATE].tolist() == [2, 3]
    # Nothing failed: nothing to retry.
    assert len(retry_candidates(det, kept, kept.iloc[:0], kept, mic, stages, ctx)) == 0


def test_config_default_and_fingerprint():
    cfg = LipoframeConfig()
    assert cfg.retry_suppressed == ["no_edge", "diameter_range"]
    off = LipoframeConfig(retry_suppressed=[])
    assert off.per_micrograph_fingerprint() != cfg.per_micrograph_fingerprint()


def test_retry_reasons_are_checked_against_what_the_stages_declare(caplog):
    from lipoframe.config import ConfigError
    from lipoframe.registry import StageRegistry
    from lipoframe.runner import check_retry_suppressed
    from lipoframe.stages import Filter

    registry = plugins.load()[1]
    known, undeclared = registry.reject_reasons()
    assert undeclared == [] and {"no_edge", "diameter_range", "carbon", "weak_unsupported"} <= known
    # Every reason a built-in refiner or filter can give is declared: the
    # reasons in the source are the reasons declared.
    import inspect
    import re

    for info in registry.stages("refiner") + registry.stages("filter"):
        source = inspect.getsource(info.cls)
        given = set(re.findall(r"schema\.reject\([^\n]*,\s*\"(\w+)\"\)", source))
        assert given <= set(info.cls.reasons), info.name
    check_retry_suppressed(["no_edge", "carbon"], registry)  # a stage not in the run may give it
    with pytest.raises(ConfigError, match="'bogus' is not a reject reason"):
        check_retry_suppressed(["no_edge", "bogus"], registry)

    @dataclass
    class OpenParams:
        pass

    class Open(Filter):
        name = "open_reasons"
        Params = OpenParams

    other = StageRegistry()
    other.add(Open)
    with caplog.at_level("WARNING", logger="lipoframe"):
        check_retry_suppressed(["bogus"], other)  # the plugin may give it: a warning, not an error
    assert "'bogus'" in caplog.text and "filter/open_reasons" in caplog.text
