"""Filter stages flag picks (accepted=False + reason); they never drop rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lipoframe import schema
from lipoframe.builtin.filters import (
    DiameterRangeFilter,
    DiameterRangeParams,
    EdgeFilter,
    EdgeParams,
    MinSizeFilter,
    MinSizeParams,
    NeighbourOutlierFilter,
    NeighbourOutlierParams,
    ScoreFilter,
    ScoreParams,
    border_distance,
)
from lipoframe.records import Micrograph, MicrographMeta, PickContext

CTX = PickContext(dmin_px=50, dmax_px=200, pixel_size=2.0)


def mic(shape=(400, 600), pixel_size=2.0) -> Micrograph:
    return Micrograph(meta=MicrographMeta(name="m", path="m.mrc", shape=shape, pixel_size=pixel_size), image=np.zeros(shape, np.float32))


def table(rows, cols=("x_px", "y_px", "diameter_px")) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=list(cols), dtype=float)
    df["score"] = np.arange(len(df), 0, -1, dtype=float)
    df["pyramid_level"] = 0
    df["sigma_px"] = df["diameter_px"] / 2.83
    return df


def flagged(df: pd.DataFrame) -> list[str]:
    return df[schema.REASON].tolist()


def test_min_size_default_is_dmin_and_units():
    picks = table([(100, 100, 40), (200, 100, 60), (300, 100, 49.9)])
    out = MinSizeFilter(MinSizeParams()).apply(picks, mic(), CTX)
    assert len(out) == 3 and flagged(out) == ["min_size", "", "min_size"]
    assert out[schema.ACCEPTED].tolist() == [False, True, False]
    # 100 Å at 2 Å/px = 50 px
    out_a = MinSizeFilter(MinSizeParams(min_diameter=100, units="A")).apply(picks, mic(), CTX)
    assert flagged(out_a) == flagged(out)
    out_px = MinSizeFilter(MinSizeParams(min_diameter=45)).apply(picks, mic(), CTX)
    assert flagged(out_px) == ["min_size", "", ""]
    with pytest.raises(ValueError, match=r"pixel size is unknown; .*filter\.min_size\.units=px"):
        MinSizeFilter(MinSizeParams(min_diameter=100, units="A")).apply(picks, mic(pixel_size=None), PickContext(dmin_px=50, dmax_px=200))


def test_first_reason_is_kept_and_input_not_mutated():
    picks = table([(100, 100, 40), (200, 100, 60)])
    before = picks.copy()
    a = ScoreFilter(ScoreParams(min_score=1.5)).apply(picks, mic(), CTX)  # rejects the second
    b = MinSizeFilter(MinSizeParams()).apply(a, mic(), CTX)  # rejects the first
    assert flagged(b) == ["min_size", "score"]
    pd.testing.assert_frame_equal(picks, before)


def test_neighbour_outlier_edge_to_edge_gap():
    # A big and a small particle touching (centre distance 150 = r1 + r2),
    # a small one 20 px from the big one's edge, and an isolated one.
    picks = table([(200, 200, 200), (350, 200, 100), (200, 340, 40), (550, 50, 60)])
    out = NeighbourOutlierFilter(NeighbourOutlierParams(min_neighbours=1, max_gap=0.6)).apply(picks, mic(), CTX)
    assert out["n_neighbours"].tolist() == [2, 1, 1, 0]
    assert flagged(out) == ["", "", "", "neighbour_outlier"]
    # In px: a gap of 10 px no longer reaches the small one 20 px away.
    out_px = NeighbourOutlierFilter(NeighbourOutlierParams(max_gap=10, units="px")).apply(picks, mic(), CTX)
    assert out_px["n_neighbours"].tolist() == [1, 1, 0, 0]
    two = NeighbourOutlierFilter(NeighbourOutlierParams(min_neighbours=2, max_gap=0.6)).apply(picks, mic(), CTX)
    assert two[schema.ACCEPTED].tolist() == [True, False, False, False]


def test_neighbour_outlier_ignores_rejected_picks_and_uses_z():
    picks = table([(100, 100, 50, 10), (150, 100, 50, 10), (100, 100, 50, 200)], cols=("x_px", "y_px", "diameter_px", "z_px"))
    out = NeighbourOutlierFilter(NeighbourOutlierParams()).apply(picks, mic(shape=(256, 400, 600)), CTX)
    assert out["n_neighbours"].tolist() == [1, 1, 0]  # the third is far away in z
    pre = schema.reject(picks, [False, True, False], "score")
    out2 = NeighbourOutlierFilter(NeighbourOutlierParams()).apply(pre, mic(shape=(256, 400, 600)), CTX)
    assert flagged(out2) == ["neighbour_outlier", "score", "neighbour_outlier"]


def test_edge_filter_scales_with_size():
    m = mic()  # 400 rows x 600 columns
    picks = table([(60, 200, 100), (60, 200, 140), (300, 394, 20), (300, 385, 20), (599, 10, 4)])
    out = EdgeFilter(EdgeParams()).apply(picks, m, CTX)
    # centre 60 px from the left border: a 100 px particle fits, a 140 px one does not.
    assert flagged(out) == ["", "edge", "edge", "", "edge"]
    half = EdgeFilter(EdgeParams(margin=0.5)).apply(picks, m, CTX)
    assert flagged(half) == ["", "", "", "", "edge"]
    extra = EdgeFilter(EdgeParams(extra_px=20)).apply(picks, m, CTX)
    assert flagged(extra) == ["edge", "edge", "edge", "edge", "edge"]


def test_edge_filter_in_tomograms():
    m = mic(shape=(100, 400, 600))
    picks = table([(300, 200, 40, 10), (300, 200, 40, 50)], cols=("x_px", "y_px", "diameter_px", "z_px"))
    assert flagged(EdgeFilter(EdgeParams()).apply(picks, m, CTX)) == ["edge", ""]
    assert flagged(EdgeFilter(EdgeParams(z=False)).apply(picks, m, CTX)) == ["", ""]
    assert np.allclose(border_distance(picks, m.shape), [10.5, 49.5])


def test_diameter_range_and_score():
    picks = table([(100, 100, 40), (200, 100, 60), (300, 100, 230)])
    out = DiameterRangeFilter(DiameterRangeParams(tolerance=0.1)).apply(picks, mic(), CTX)
    assert flagged(out) == ["diameter_range", "", "diameter_range"]
    assert flagged(ScoreFilter(ScoreParams(min_score=2)).apply(picks, mic(), CTX)) == ["", "", "score"]


def test_empty_tables():
    empty = table([])
    for f in (MinSizeFilter(MinSizeParams()), NeighbourOutlierFilter(NeighbourOutlierParams()), EdgeFilter(EdgeParams())):
        out = f.apply(empty, mic(), CTX)
        assert len(out) == 0 and schema.ACCEPTED in out.columns


@pytest.mark.parametrize(
    "cls, kwargs, key",
    [
        (MinSizeParams, dict(min_diameter=-1), "filter.min_size.min_diameter"),
        (MinSizeParams, dict(units="nm"), "filter.min_size.units"),
        (NeighbourOutlierParams, dict(min_neighbours=0), "filter.neighbour_outlier.min_neighbours"),
        (NeighbourOutlierParams, dict(max_gap=-1), "filter.neighbour_outlier.max_gap"),
        (NeighbourOutlierParams, dict(units="nm"), "filter.neighbour_outlier.units"),
        (EdgeParams, dict(margin=-0.1), "filter.edge.margin"),
        (EdgeParams, dict(extra_px=-1), "filter.edge.extra_px"),
    ],
)
def test_params_name_the_key(cls, kwargs, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        cls(**kwargs)


def test_filters_are_registered_and_selectable():
    from lipoframe import plugins

    _, registry, _ = plugins.load()
    for name in ("diameter_range", "score", "min_size", "neighbour_outlier", "edge"):
        assert ("filter", name) in registry


def test_flags_of_concatenated_tables_are_false_where_missing():
    # A flag only one of the tables had: True/False/NaN objects after concat.
    a = pd.DataFrame({"x_px": [1.0, 2.0], "weak": [True, False]})
    b = pd.DataFrame({"x_px": [3.0]})
    both = pd.concat([a, b], ignore_index=True)
    assert both["weak"].dtype == object
    np.testing.assert_array_equal(schema.flags(both["weak"]), [True, False, False])
    np.testing.assert_array_equal(schema.weak_mask(both), [True, False, False])
    np.testing.assert_array_equal(schema.weak_mask(b), [False])
    assert schema.flags(pd.Series([], dtype=object)).dtype == bool
