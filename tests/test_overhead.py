"""The fixed cost of a command: work a command repeats, or does for nothing, is left out.

Every command loads the plugins, builds the stage registry and stores the
stages' options in Hydra's ConfigStore; an in-process caller (the tests'
``run_cli``) does it once per command. What is kept between calls must be
the same as what would be made again: the cases where it is not are checked
here too.
"""

from __future__ import annotations

import importlib.metadata as md
from dataclasses import dataclass, field

from lipoframe import plugins
from lipoframe.registry import StageRegistry, params_problem


def test_loading_no_third_party_plugins_reads_no_installed_distribution(monkeypatch):
    # LIPOFRAME_LOAD_PLUGINS= (the tests' setting) loads none: reading every installed package's metadata is for nothing.
    def refuse():
        raise AssertionError("installed distributions were read")

    monkeypatch.setattr(md, "distributions", refuse)
    _, registry, infos = plugins.load(refresh=True)
    assert {i.distribution for i in infos} == {"lipoframe"}
    assert ("detector", "edge") in registry


def test_only_the_metadata_of_distributions_with_a_lipoframe_entry_point_is_read(make_plugin, monkeypatch):
    module = make_plugin("lipoframe-cheap", """
        def lipoframe_register_stages(registry):
            pass
    """)
    real = md.distributions

    class Unread:
        """A distribution with no lipoframe entry point, whose metadata must not be parsed."""

        def __init__(self, dist):
            self.dist = dist

        @property
        def entry_points(self):
            return [ep for ep in self.dist.entry_points if ep.group != plugins.ENTRY_POINT_GROUP]

        @property
        def metadata(self):
            raise AssertionError(f"the metadata of {self.dist.metadata['Name']} was read")

    def distributions():
        for dist in real():
            ours = any(ep.group == plugins.ENTRY_POINT_GROUP for ep in dist.entry_points)
            yield dist if ours else Unread(dist)

    monkeypatch.setattr(md, "distributions", distributions)
    _, _, infos = plugins.load(refresh=True)
    assert [(i.distribution, i.module) for i in infos if i.distribution != "lipoframe"] == [("lipoframe-cheap", module)]


def test_a_params_class_is_converted_by_omegaconf_once_per_process(monkeypatch):
    from omegaconf import OmegaConf

    @dataclass
    class Params:
        width: float = 1.0
        names: list = field(default_factory=list)

    assert params_problem(Params, section="detector") == ""
    calls = []
    real = OmegaConf.structured
    monkeypatch.setattr(OmegaConf, "structured", lambda *a, **k: calls.append(a) or real(*a, **k))
    assert params_problem(Params, section="detector") == ""
    assert calls == []


def test_a_new_params_class_of_the_same_name_is_checked_again():
    # A plugin's module imported again (an upgrade, a test's make_plugin) gives new classes: each is checked.
    @dataclass
    class Params:
        width: float = 1.0

    assert params_problem(Params, section="detector") == ""

    @dataclass
    class Params:  # type: ignore[no-redef]
        width: object = object()

    assert "detector.width" in params_problem(Params, section="detector")


def _nodes(cs) -> dict:
    return {(kind, name): node for kind, group in cs.repo.items() if isinstance(group, dict)
            for name, node in group.items() if kind in ("detector", "nms", "refiner", "filter", "writer", "binning", "reader")}


def test_storing_the_stages_again_keeps_the_stored_nodes():
    from hydra.core.config_store import ConfigStore

    _, registry, _ = plugins.load(refresh=True)
    cs = ConfigStore.instance()
    registry.store_configs()
    first = _nodes(cs)
    assert len(first) == len(registry)
    registry.store_configs()
    again = _nodes(cs)
    assert again.keys() == first.keys()
    assert all(again[k] is first[k] for k in first)


def test_a_stage_of_another_provider_or_class_is_stored_again():
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    from lipoframe.stages import Detector

    def registry_with(params_default: float, provider: str) -> StageRegistry:
        @dataclass
        class ProbeParams:
            width: float = params_default

        class Probe(Detector):
            name = "overhead_probe"
            Params = ProbeParams

            def detect(self, mic, ctx):  # pragma: no cover - never run
                raise NotImplementedError

        registry = StageRegistry()
        registry.current_provider = provider
        registry.add(Probe)
        return registry

    cs = ConfigStore.instance()
    registry_with(1.0, "lipoframe-probe 1.0 (probe)").store_configs()
    node = cs.repo["detector"]["overhead_probe.yaml"]
    assert OmegaConf.to_container(node.node) == {"width": 1.0}
    registry_with(2.0, "lipoframe-probe 1.0 (probe)").store_configs()  # another class (an upgrade in this process)
    assert OmegaConf.to_container(cs.repo["detector"]["overhead_probe.yaml"].node) == {"width": 2.0}
    registry_with(2.0, "lipoframe-probe 2.0 (probe)").store_configs()
    assert cs.repo["detector"]["overhead_probe.yaml"].provider == "lipoframe-probe 2.0 (probe)"



# ---------------------------------------------------------------------------
# Plots drawn again from the same data
# ---------------------------------------------------------------------------
def _count_savefig(monkeypatch) -> list:
    from matplotlib.figure import Figure

    calls = []
    real = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    return calls


def _two_bins():
    import numpy as np
    import pandas as pd

    from lipoframe import schema
    from lipoframe.builtin.binning import PeakValleyBinner, PeakValleyParams
    from lipoframe.records import PickContext

    rng = np.random.default_rng(0)
    d = np.r_[rng.normal(150, 8, 300), rng.normal(250, 8, 100)]
    picks = pd.DataFrame({schema.MICROGRAPH: "m", schema.X: 0.0, schema.Y: 0.0, schema.DIAMETER: d,
                          schema.ACCEPTED: True, schema.REASON: ""})
    ctx = PickContext(dmin_px=100, dmax_px=600, polarity="dark", pixel_size=1.1, seed=0)
    return PeakValleyBinner(PeakValleyParams()).assign(picks, {}, ctx)


def test_a_plot_of_the_same_data_is_drawn_once_per_process(monkeypatch):
    import numpy as np

    from lipoframe import plots

    monkeypatch.setattr(plots, "_PNG_MEMO", type(plots._PNG_MEMO)())
    calls = _count_savefig(monkeypatch)
    score = np.array([5.0, 9, 12, 2])
    accepted = np.array([True, True, False, False])
    first = plots.score_distribution(score, accepted, thresholds=[("detector.threshold", 6.0)])
    # equal arrays, not the same objects: a report drawn again reads the tables again
    again = plots.score_distribution(score.copy(), accepted.copy(), thresholds=[("detector.threshold", 6.0)])
    assert again == first and first.startswith(b"\x89PNG")
    assert len(calls) == 1


def test_a_plot_of_other_data_or_other_matplotlib_settings_is_drawn_again(monkeypatch):
    import matplotlib
    import numpy as np

    from lipoframe import plots

    monkeypatch.setattr(plots, "_PNG_MEMO", type(plots._PNG_MEMO)())
    calls = _count_savefig(monkeypatch)
    score = np.array([5.0, 9, 12, 2])
    accepted = np.array([True, True, False, False])
    first = plots.score_distribution(score, accepted)
    other = plots.score_distribution(score + 1, accepted)
    assert other != first and len(calls) == 2
    with matplotlib.rc_context({"axes.facecolor": "#DDDDDD"}):
        grey = plots.score_distribution(score, accepted)
    assert grey != first and len(calls) == 3
    assert plots.score_distribution(score, accepted) == first and len(calls) == 3


def test_only_the_last_plots_are_kept(monkeypatch):
    import numpy as np

    from lipoframe import plots

    monkeypatch.setattr(plots, "_PNG_MEMO", type(plots._PNG_MEMO)())
    monkeypatch.setattr(plots, "MEMO_SIZE", 2)
    calls = _count_savefig(monkeypatch)
    accepted = np.array([True, False])
    for shift in (0.0, 1.0, 2.0, 0.0):
        plots.score_distribution(np.array([1.0, 2.0]) + shift, accepted)
    assert len(calls) == 4 and len(plots._PNG_MEMO) == 2


def test_the_plan_files_histogram_is_the_figure_drawn_and_is_drawn_once_for_the_same_plan(tmp_path, monkeypatch):
    from lipoframe import plots
    from lipoframe.planfiles import plot_size_histogram, write_plan_files

    monkeypatch.setattr(plots, "_PNG_MEMO", type(plots._PNG_MEMO)())
    res = _two_bins()
    expected = tmp_path / "expected.png"
    plot_size_histogram(res.plan, res.picks).savefig(expected, format="png")  # as write_plan_files saved it before
    calls = _count_savefig(monkeypatch)
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        write_plan_files(res.plan, res.picks.copy(), tmp_path / folder)
        assert (tmp_path / folder / "size_histogram.png").read_bytes() == expected.read_bytes()
    assert len(calls) == 1
