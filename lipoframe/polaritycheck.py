"""Advice on the polarity: particles far clearer with the other one.

Run with the wrong ``polarity`` (bright spheres with the default ``dark``),
lipoframe still accepts picks: the gaps between crowded particles, their
halos and the light side of a gradient are blobs with edges too, and
nothing else in the run says that the particles were missed. After
picking, :func:`polarity_verdict` picks the first micrographs of the run once
more in both polarities, without the filters: detector (its
:data:`MAX_DETECTIONS` strongest detections), NMS once and refiner, then
the diameter range. Each pick's edge counts by how much its ``quality``
(the refiner's edge SNR) exceeds :data:`BASELINE`, the bar of a just-clear
edge, so the many faint blobs any image has in both polarities count for
little; the sum says how much clear particle edge a polarity finds.

Per micrograph, the other polarity's sum over the run's (docs/picking.md
has the table): 0.00-0.31 on 56 simulated micrographs (two 4096² suites and
two ``preset=mini`` ones, with the empty, ice and carbon scenes), 0.03-0.09
on apoferritin, 0.08-0.32 on the liposome images, 0.10-0.38 on the SEM
microspheres run with ``polarity=bright``, at most 0.49 on the
MicrographCleaner image, and 0.84-0.98 on the virion tomogram slice, whose
granules and filtered edges look alike both ways. The wrong polarity gives
the reciprocals: 2.6-9.8 on the microspheres run with ``dark`` (6.0 and 9.6
with ``dmin=10 dmax=200`` px), at least 3.2 on the inverted suites, 11-37
on apoferritin run with ``bright``. The note is given when the other
polarity's sum is at least :data:`RATIO` times the run's, from at least
:data:`MIN_PICKS` picks.

It costs a detection, NMS and refinement per polarity of usually one
micrograph per run, half to all of the time of picking it (the detector
runs twice; ``runner.polarity_check=false`` leaves it out); the run's picks are
those of its own polarity whatever it finds. The runner keeps the
:class:`Verdict` in the run folder and takes it again, without picking,
while the micrographs checked keep their saved results
(:func:`lipoframe.runner.polarity_check_for`).
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from dataclasses import dataclass, replace

import numpy as np

from lipoframe import schema
from lipoframe.records import Micrograph, PickContext

log = logging.getLogger(__name__)

OPPOSITE = {"dark": "bright", "bright": "dark"}
#: The other polarity's edge evidence must be at least this many times the run's ...
RATIO = 1.6
#: ... from at least this many picks.
MIN_PICKS = 20
#: Micrographs checked at most per run ...
MAX_MICROGRAPHS = 3
#: ... the check stops earlier once both polarities together have this many picks.
ENOUGH_PICKS = 50
#: The strongest detections kept (NMS and the refiner take time in proportion, or more).
MAX_DETECTIONS = 2000
#: Relative widening of the diameter range (that of the ``diameter_range`` filter).
TOLERANCE = 0.05
#: A pick's edge counts by how much its ``quality`` exceeds this (the default refiner's ``min_contrast``).
BASELINE = 3.5


@dataclass(frozen=True)
class Evidence:
    """Edge evidence of one polarity: the summed ``quality`` above :data:`BASELINE` of its picks, and their number."""

    quality: float = 0.0
    picks: int = 0

    def __add__(self, other: Evidence) -> Evidence:
        return Evidence(self.quality + other.quality, self.picks + other.picks)


def edge_evidence(mic: Micrograph, stages, ctx: PickContext) -> Evidence:
    """Detector, NMS (once) and refiner on ``mic``; the picks the refiner accepts within the range.

    Weak candidates (which only the ``population`` filter may admit) and
    picks outside ``[dmin, dmax]`` widened by :data:`TOLERANCE` do not count.
    Without a ``quality`` column (``refiner=none``) there is no evidence.
    """
    detections = stages.detector.detect(mic, ctx)
    if not len(detections):
        return Evidence()
    if len(detections) > MAX_DETECTIONS:
        detections = detections.nlargest(MAX_DETECTIONS, schema.SCORE)
    picks = stages.refiner.refine(stages.nms.suppress(detections, mic, ctx), mic, ctx)
    if not len(picks) or schema.QUALITY not in picks.columns:
        return Evidence()
    picks = schema.with_acceptance(picks)
    d = picks[schema.DIAMETER].to_numpy(dtype=float)
    quality = picks[schema.QUALITY].to_numpy(dtype=float)
    keep = (picks[schema.ACCEPTED].to_numpy(dtype=bool) & ~schema.weak_mask(picks) & np.isfinite(quality)
            & (d >= ctx.dmin_px * (1 - TOLERANCE)) & (d <= ctx.dmax_px * (1 + TOLERANCE)))
    return Evidence(float(np.clip(quality[keep] - BASELINE, 0, None).sum()), int(keep.sum()))


def polarity_evidence(mic: Micrograph, stages, ctx: PickContext) -> tuple[Evidence, Evidence]:
    """:func:`edge_evidence` of ``mic`` in its own polarity and in the other one.

    The other polarity's signal is the negated signal of ``mic`` (the
    block means are computed once, for both).
    """
    other = OPPOSITE[mic.polarity]
    flipped = Micrograph(meta=mic.meta, image=mic.image, polarity=other, _transform=_negated, _parent=mic)
    return (edge_evidence(mic, stages, replace(ctx, polarity=mic.polarity)),
            edge_evidence(flipped, stages, replace(ctx, polarity=other)))


def _negated(signal: np.ndarray, factor: int) -> np.ndarray:
    return np.negative(signal)


def polarity_note(own: Evidence, other: Evidence, polarity: str, checked: int = 1) -> str | None:
    """The note for a run whose particles look far clearer in the other polarity, or None.

    Parameters
    ----------
    own, other : Evidence
        Summed over the micrographs checked, in the run's polarity and the other one.
    polarity : {'dark', 'bright'}
        The run's.
    checked : int
        Micrographs checked, for the message.
    """
    if other.picks < MIN_PICKS or other.quality < RATIO * own.quality:
        return None
    flip = OPPOSITE[polarity]
    which = "the first micrograph" if checked == 1 else f"the first {checked} micrographs"
    if own.quality > 0:
        compared = f"{other.quality / own.quality:.1f} times as clear as those found with polarity={polarity}"
    else:
        compared = f"clear, those found with polarity={polarity} are not"
    return (f"the particles may be {flip}, not {polarity}: on {which}, the edges found with polarity={flip} are {compared} "
            f"(edge SNR above {BASELINE:g}, summed over {other.picks} and {own.picks} picks); check the overlays and try polarity={flip}")


@contextlib.contextmanager
def quiet():
    """No log records below ERROR and no Python warnings inside: the check reads and picks
    micrographs a second time, whose warnings were given when they were picked."""
    before = logging.root.manager.disable
    logging.disable(max(before, logging.WARNING))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(before)


@dataclass(frozen=True)
class Verdict:
    """What :func:`polarity_verdict` found on the first micrographs of a run.

    Attributes
    ----------
    checked : tuple of str
        Names of the micrographs checked, in the run's order.
    final : bool
        Whether the check stopped by its own rule (:data:`MAX_MICROGRAPHS`,
        :data:`ENOUGH_PICKS`): more micrographs after these
        would not change it. False when it ran out of micrographs.
    own, other : Evidence
        Summed over ``checked``, in the run's polarity and the other one.
    notes : tuple of str
        The note (at most one).
    """

    checked: tuple[str, ...] = ()
    final: bool = False
    own: Evidence = Evidence()
    other: Evidence = Evidence()
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {"checked": list(self.checked), "final": self.final, "own": [self.own.quality, self.own.picks],
                "other": [self.other.quality, self.other.picks], "notes": list(self.notes)}

    @classmethod
    def from_dict(cls, d: dict) -> Verdict:
        """The verdict :meth:`to_dict` gave; KeyError, TypeError or ValueError for anything else."""
        return cls(tuple(str(n) for n in d["checked"]), bool(d["final"]), Evidence(float(d["own"][0]), int(d["own"][1])),
                   Evidence(float(d["other"][0]), int(d["other"][1])), tuple(str(n) for n in d["notes"]))

    def describe(self, polarity: str) -> str:
        """``edge evidence 12.0 with polarity=dark (30 picks), ...`` for the log."""
        return (f"edge evidence {self.own.quality:.1f} with polarity={polarity} ({self.own.picks} picks), "
                f"{self.other.quality:.1f} with polarity={OPPOSITE[polarity]} ({self.other.picks} picks)")


def polarity_verdict(micrographs, stages, polarity: str) -> Verdict:
    """The :class:`Verdict` on the first micrographs of a run.

    Parameters
    ----------
    micrographs : iterable of (Micrograph, PickContext)
        In the run's order, read lazily: the check stops after
        :data:`MAX_MICROGRAPHS`, or once both polarities together have
        :data:`ENOUGH_PICKS` picks. A 3-D image (a tomogram) ends it:
        no micrograph checked (an empty :class:`Verdict`).
    stages : StageSet
        The run's detector, NMS and refiner are used.
    polarity : {'dark', 'bright'}
        The run's.
    """
    t0 = time.perf_counter()
    own = other = Evidence()
    checked: list[str] = []
    final = False
    for mic, ctx in micrographs:
        if mic.image.ndim != 2:
            return Verdict()
        with quiet():
            a, b = polarity_evidence(mic, stages, ctx)
        own, other = own + a, other + b
        checked.append(mic.name)
        log.debug("%s: edge evidence %s %.1f (%d picks), %s %.1f (%d picks)", mic.name, polarity, a.quality, a.picks,
                  OPPOSITE[polarity], b.quality, b.picks)
        if len(checked) >= MAX_MICROGRAPHS or own.picks + other.picks >= ENOUGH_PICKS:
            final = True
            break
    if not checked:
        return Verdict()
    note = polarity_note(own, other, polarity, len(checked))
    verdict = Verdict(tuple(checked), final, own, other, (note,) if note else ())
    log.info("polarity check on %d micrograph(s) in %.1f s: %s", len(checked), time.perf_counter() - t0, verdict.describe(polarity))
    return verdict
