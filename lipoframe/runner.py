"""The runner: per micrograph read -> detect -> nms -> refine -> filters, then
over the dataset binning -> writers.

Nothing here knows about Hydra: :func:`run_pipeline` takes a validated
:class:`~lipoframe.config.LipoframeConfig`, and :func:`pick` runs the
per-micrograph part on an array from Python.
"""

from __future__ import annotations

import glob
import json
import logging
import math
import os
import re
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lipoframe import schema
from lipoframe.config import LipoframeConfig
from lipoframe.io.atomic import safe_child, write_text
from lipoframe.plan import ExtractionPlan
from lipoframe.records import InputError, Micrograph, MicrographMeta, PickContext
from lipoframe.registry import StageRegistry
from lipoframe.stages import Stage

log = logging.getLogger("lipoframe")

#: Folder (below the output) with the per-micrograph results used for resume and merge.
WORK_DIR = "micrographs"


# ---------------------------------------------------------------------------
# Stages
# ---------------------------------------------------------------------------
@dataclass
class StageSet:
    """The stages of one run, built from their validated parameters."""

    reader: Stage
    detector: Stage
    nms: Stage
    refiner: Stage
    filters: list[Stage]
    binner: Stage
    writers: list[Stage]
    readers_by_suffix: dict[str, Stage] = field(default_factory=dict)

    def reader_for(self, path: Path) -> Stage:
        if self.reader.name != "auto":
            return self.reader
        suffix = path.suffix.lower()
        try:
            return self.readers_by_suffix[suffix]
        except KeyError:
            known = ", ".join(sorted(self.readers_by_suffix))
            raise InputError(f"{path}: no reader for files ending in {suffix!r} (known: {known})") from None


def build_stages(cfg: LipoframeConfig, registry: StageRegistry) -> StageSet:
    """Instantiate the configured stages (errors name the stage kind)."""
    def one(kind: str, params: Any) -> Stage:
        if params is None:
            raise ValueError(f"no {kind} stage is selected (set {kind}=<name>)")
        stage = registry.build(params)
        if stage.kind != kind:
            raise ValueError(f"{kind}: stage {stage.name!r} is a {stage.kind}")
        return stage

    reader = one("reader", cfg.reader)
    by_suffix: dict[str, Stage] = {}
    dims = getattr(cfg.reader, "dims", 2)
    for info in registry.stages("reader"):
        for suffix in getattr(info.cls, "suffixes", ()):
            if suffix in by_suffix:
                continue
            params = info.cls.Params(**({"dims": dims} if "dims" in info.cls.Params.__dataclass_fields__ else {}))
            by_suffix[suffix] = info.cls(params)
    return StageSet(
        reader=reader,
        detector=one("detector", cfg.detector),
        nms=one("nms", cfg.nms),
        refiner=one("refiner", cfg.refiner),
        filters=[one("filter", p) for p in cfg.filter.values()],
        binner=one("binning", cfg.binning),
        writers=[one("writer", p) for p in cfg.writer.values()],
        readers_by_suffix=by_suffix,
    )


# ---------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------
_GLOB_CHARS = re.compile(r"[*?\[]")


def expand_inputs(specs: list[str], suffixes: tuple[str, ...]) -> list[Path]:
    """Files named by ``specs`` (files, folders or globs), sorted, without repeats.

    Folders contribute the files whose suffix is in ``suffixes``. A named
    file that does not exist is kept, so it is reported as a failure.
    """
    out: list[Path] = []
    seen: set[str] = set()
    for spec in specs:
        spec = os.path.expanduser(str(spec))
        if os.path.isdir(spec):
            found = sorted(p for p in Path(spec).iterdir() if p.is_file() and p.suffix.lower() in suffixes and not p.name.startswith("."))
        elif _GLOB_CHARS.search(spec):
            found = sorted(Path(p) for p in glob.glob(spec, recursive=True) if os.path.isfile(p))
        else:
            found = [Path(spec)]
        for p in found:
            key = str(p.resolve()) if p.exists() else str(p)
            if key not in seen:
                seen.add(key)
                out.append(p)
    return out


_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")


def safe_name(name: str) -> str:
    """A file-name-safe version of ``name`` (never empty, never starting with a dot)."""
    cleaned = _UNSAFE.sub("_", name).strip("._") or "micrograph"
    return cleaned


def micrograph_names(paths: list[Path]) -> list[str]:
    """Unique, safe output names: the file stem, prefixed by parent folders where stems clash."""
    def candidate(p: Path, depth: int) -> str:
        parts = list(p.resolve().parent.parts[-depth:]) if depth else []
        return safe_name("__".join(parts + [p.stem]))

    depth = [0] * len(paths)
    while True:
        names = [candidate(p, d) for p, d in zip(paths, depth)]
        counts: dict[str, int] = {}
        for nm in names:
            counts[nm] = counts.get(nm, 0) + 1
        clashes = [i for i, nm in enumerate(names) if counts[nm] > 1]
        if not clashes:
            return names
        progressed = False
        for i in clashes:
            if depth[i] < len(paths[i].resolve().parent.parts):
                depth[i] += 1
                progressed = True
        if not progressed:
            seen: dict[str, int] = {}
            for i, nm in enumerate(names):
                seen[nm] = seen.get(nm, 0) + 1
                if seen[nm] > 1:
                    names[i] = f"{nm}_{seen[nm]}"
            return names


def shard(items: list, index: int, count: int) -> list:
    """Every ``count``-th item starting at ``index`` (deterministic for a sorted input)."""
    return items[index::count]


# ---------------------------------------------------------------------------
# Per micrograph
# ---------------------------------------------------------------------------
def pick_context(meta: MicrographMeta, cfg: LipoframeConfig) -> PickContext:
    """Diameter range in pixels of this micrograph."""
    if cfg.units == "px":
        dmin, dmax = cfg.dmin, cfg.dmax
    else:
        if meta.pixel_size is None or not meta.pixel_size > 0:
            raise InputError(
                f"{meta.path}: pixel size is missing from the header; give pixel_size=<Å/px> or use units=px"
            )
        dmin, dmax = cfg.dmin / meta.pixel_size, cfg.dmax / meta.pixel_size
    return PickContext(dmin_px=dmin, dmax_px=dmax, polarity=cfg.polarity, pixel_size=meta.pixel_size, seed=cfg.seed, export_rejected=cfg.export_rejected)


def check_image(mic: Micrograph, ctx: PickContext) -> None:
    """Reject images that cannot be picked, with a message naming the file."""
    where = mic.meta.path or mic.name
    spatial = mic.shape[-2:]
    if min(spatial) < ctx.dmax_px:
        raise InputError(
            f"{where}: image of {spatial[1]}x{spatial[0]} px is smaller than the largest diameter "
            f"({ctx.dmax_px:.0f} px); lower dmax or check pixel_size"
        )
    factor = max(1, min(spatial) // 512)
    small = mic.signal(factor)
    if not np.all(np.isfinite(small)):
        raise InputError(f"{where}: image contains NaN or infinite pixels")
    if float(small.std()) == 0.0 and float(np.ptp(np.asarray(mic.image[:64, :64], dtype=np.float32))) == 0.0:
        raise InputError(f"{where}: image is constant (no contrast)")


def process_micrograph(mic: Micrograph, stages: StageSet, ctx: PickContext) -> pd.DataFrame:
    """Detect, suppress, refine and filter the picks of one micrograph.

    Returns
    -------
    picks : DataFrame
        ``micrograph`` first, then the detector columns, stage columns,
        ``accepted``/``reject_reason`` and ``diameter_A``.
    """
    check_image(mic, ctx)
    picks = schema.validate_detections(stages.detector.detect(mic, ctx), stage=f"detector/{stages.detector.name}")
    picks = schema.validate_detections(stages.nms.suppress(picks, mic, ctx), stage=f"nms/{stages.nms.name}")
    picks = schema.validate_detections(stages.refiner.refine(picks, mic, ctx), stage=f"refiner/{stages.refiner.name}")
    picks = schema.with_acceptance(picks)
    for f in stages.filters:
        picks = schema.validate_detections(f.apply(picks, mic, ctx), stage=f"filter/{f.name}")
    picks = picks.reset_index(drop=True)
    picks.insert(0, schema.MICROGRAPH, mic.name)
    px = mic.meta.pixel_size
    picks[schema.DIAMETER_A] = picks[schema.DIAMETER] * px if px else np.nan
    return picks


@dataclass
class MicJob:
    path: Path
    name: str
    out_dir: Path
    fingerprint: str
    resume: bool
    verbose: bool


@dataclass
class MicResult:
    name: str
    path: str
    status: str  # ok | skipped | failed
    n_picks: int = 0
    n_accepted: int = 0
    seconds: float = 0.0
    error: str = ""


def _work_paths(out_dir: Path, name: str) -> tuple[Path, Path]:
    return safe_child(out_dir, WORK_DIR, f"{name}.csv"), safe_child(out_dir, WORK_DIR, f"{name}.json")


def load_work(out_dir: Path, name: str, fingerprint: str | None = None) -> tuple[MicrographMeta, pd.DataFrame] | None:
    """The saved result of one micrograph, or None if absent, incomplete or from other settings."""
    csv_path, json_path = _work_paths(out_dir, name)
    try:
        info = json.loads(json_path.read_text())
        if fingerprint is not None and info.get("fingerprint") != fingerprint:
            return None
        picks = pd.read_csv(csv_path, keep_default_na=False, na_values=[""], dtype={schema.MICROGRAPH: str, schema.REASON: str})
        if len(picks) != int(info["n_picks"]):
            return None
        picks[schema.REASON] = picks[schema.REASON].fillna("").astype(object)
        picks[schema.MICROGRAPH] = picks[schema.MICROGRAPH].astype(object)
        return MicrographMeta.from_dict(info["meta"]), picks
    except (OSError, ValueError, KeyError, TypeError, pd.errors.ParserError):
        return None


def save_work(out_dir: Path, meta: MicrographMeta, picks: pd.DataFrame, fingerprint: str, seconds: float) -> None:
    """Write one micrograph's result: the CSV first, then the JSON that marks it complete."""
    from lipoframe import __version__
    from lipoframe.builtin.writers import write_csv

    csv_path, json_path = _work_paths(out_dir, meta.name)
    write_csv(picks, csv_path, float_format="%.4f")
    info = {"meta": meta.to_dict(), "fingerprint": fingerprint, "n_picks": int(len(picks)), "seconds": round(seconds, 4), "lipoframe": __version__}
    write_text(json_path, json.dumps(info, indent=1))


_WORKER_STATE: dict[str, Any] = {}


def _init_worker(cfg: LipoframeConfig, stages: StageSet) -> None:
    _WORKER_STATE["cfg"] = cfg
    _WORKER_STATE["stages"] = stages


def run_job(job: MicJob, cfg: LipoframeConfig | None = None, stages: StageSet | None = None) -> MicResult:
    """Read, pick and save one micrograph; never raises for bad input."""
    cfg = cfg or _WORKER_STATE["cfg"]
    stages = stages or _WORKER_STATE["stages"]
    t0 = time.perf_counter()
    if job.resume:
        done = load_work(job.out_dir, job.name, job.fingerprint)
        if done is not None:
            picks = done[1]
            return MicResult(job.name, str(job.path), "skipped", len(picks), int(picks[schema.ACCEPTED].sum()) if len(picks) else 0)
    try:
        reader = stages.reader_for(job.path)
        mic = reader.read(job.path, pixel_size=cfg.pixel_size)
        meta = MicrographMeta(name=job.name, path=str(job.path), shape=mic.meta.shape, pixel_size=mic.meta.pixel_size, flip_y=mic.meta.flip_y)
        mic = Micrograph(meta=meta, image=mic.image, polarity=cfg.polarity)
        ctx = pick_context(meta, cfg)
        picks = process_micrograph(mic, stages, ctx)
        seconds = time.perf_counter() - t0
        save_work(job.out_dir, meta, picks, job.fingerprint, seconds)
        return MicResult(job.name, str(job.path), "ok", len(picks), int(picks[schema.ACCEPTED].sum()), seconds)
    except InputError as exc:
        return MicResult(job.name, str(job.path), "failed", seconds=time.perf_counter() - t0, error=str(exc))
    except Exception as exc:  # noqa: BLE001 - one bad micrograph must not stop the run
        msg = f"{job.path}: {type(exc).__name__}: {exc}"
        if job.verbose:
            msg += "\n" + traceback.format_exc()
        return MicResult(job.name, str(job.path), "failed", seconds=time.perf_counter() - t0, error=msg)


# ---------------------------------------------------------------------------
# Dataset level
# ---------------------------------------------------------------------------
def dataset_context(metas: dict[str, MicrographMeta], cfg: LipoframeConfig) -> PickContext:
    """Context for binning and writers: the dataset's (median) pixel size."""
    sizes = [m.pixel_size for m in metas.values() if m.pixel_size]
    px = float(np.median(sizes)) if sizes else cfg.pixel_size
    if cfg.units == "px" or not px:
        dmin, dmax = cfg.dmin, cfg.dmax
    else:
        dmin, dmax = cfg.dmin / px, cfg.dmax / px
    return PickContext(dmin_px=dmin, dmax_px=dmax, polarity=cfg.polarity, pixel_size=px, seed=cfg.seed, export_rejected=cfg.export_rejected)


def finalize_dataset(
    picks: pd.DataFrame,
    metas: dict[str, MicrographMeta],
    stages: StageSet,
    cfg: LipoframeConfig,
    out_dir: Path,
) -> tuple[pd.DataFrame, ExtractionPlan, list[Path]]:
    """Binning and writers over all micrographs; returns the binned table, plan and files."""
    from lipoframe.planfiles import write_plan_files

    ctx = dataset_context(metas, cfg)
    result = stages.binner.assign(picks, metas, ctx)
    binned = result.picks
    written: list[Path] = []
    for w in stages.writers:
        written.extend(w.write(binned, metas, result.plan, out_dir, ctx))
    # Plan files last, so extraction_plan.md can point at the files writers made.
    written.extend(write_plan_files(result.plan, binned, out_dir, metas=metas, written=written))
    return binned, result.plan, written


def collect_work(out_dir: Path, names: list[str]) -> tuple[pd.DataFrame, dict[str, MicrographMeta]]:
    """Concatenate the saved per-micrograph tables (in ``names`` order)."""
    tables, metas = [], {}
    for name in names:
        done = load_work(out_dir, name)
        if done is None:
            continue
        meta, picks = done
        metas[name] = meta
        tables.append(picks)
    if tables:
        non_empty = [t for t in tables if len(t)]
        picks = pd.concat(non_empty, ignore_index=True) if non_empty else tables[0].iloc[0:0].copy()
    else:
        picks = schema.with_acceptance(schema.empty_picks())
        picks.insert(0, schema.MICROGRAPH, pd.Series(dtype=object))
        picks[schema.DIAMETER_A] = pd.Series(dtype=float)
    return picks, metas


@dataclass
class RunResult:
    out_dir: Path
    results: list[MicResult]
    picks: pd.DataFrame
    plan: ExtractionPlan | None
    files: list[Path]
    seconds: float
    errors: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[MicResult]:
        return [r for r in self.results if r.status == "failed"]

    @property
    def ok(self) -> bool:
        return not self.failed and not self.errors

    def summary(self) -> dict:
        acc = int(self.picks[schema.ACCEPTED].sum()) if len(self.picks) else 0
        return {
            "out_dir": str(self.out_dir),
            "micrographs": {
                "total": len(self.results),
                "ok": sum(r.status == "ok" for r in self.results),
                "skipped": sum(r.status == "skipped" for r in self.results),
                "failed": len(self.failed),
            },
            "picks": {"total": int(len(self.picks)), "accepted": acc},
            "bins": [] if self.plan is None else [
                {"bin": b.index + 1, "d_min_px": round(b.d_min_px, 1), "d_max_px": round(b.d_max_px, 1), "count": b.count, "box_px": b.box_px}
                for b in self.plan.bins
            ],
            "failures": [{"micrograph": r.path, "error": r.error.splitlines()[0]} for r in self.failed],
            "errors": self.errors,
            "seconds": round(self.seconds, 3),
        }


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="mic", disable=not enabled or not sys.stderr.isatty(), file=sys.stderr, dynamic_ncols=True)


def run_pipeline(
    cfg: LipoframeConfig,
    out_dir: str | os.PathLike,
    *,
    registry: StageRegistry | None = None,
    pm=None,
) -> RunResult:
    """Run lipoframe on ``cfg.input`` and write everything below ``out_dir``.

    Bad inputs are reported (one line each, naming the file) and skipped; the
    other micrographs are processed. Check :attr:`RunResult.ok`.
    """
    from lipoframe import plugins

    t0 = time.perf_counter()
    if registry is None or pm is None:
        pm, registry, _ = plugins.load()
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / f".lipoframe-write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise InputError(f"{out_dir}: output folder is not writable ({exc.strerror or exc})") from None
    stages = build_stages(cfg, registry)
    specs = list(cfg.input)
    if not specs:
        from lipoframe.synthetic import write_demo_dataset

        log.info("no input given: running on the built-in demo set")
        write_demo_dataset(out_dir / "demo_input")
        specs = [str(out_dir / "demo_input")]
    paths = expand_inputs(specs, tuple(stages.readers_by_suffix))
    errors: list[str] = []
    if not paths:
        errors.append(f"no input files match {', '.join(map(str, specs))}")
    names = micrograph_names(paths)
    pairs = shard(list(zip(paths, names)), cfg.shard.index, cfg.shard.count)
    fingerprint = cfg.per_micrograph_fingerprint()
    jobs = [MicJob(p, n, out_dir, fingerprint, cfg.runner.resume, cfg.runner.verbose) for p, n in pairs]
    workers = cfg.runner.workers or os.cpu_count() or 1
    workers = max(1, min(workers, len(jobs)))
    results: list[MicResult] = []
    with _progress(len(jobs), cfg.runner.progress) as bar:
        def done(res: MicResult) -> None:
            results.append(res)
            if res.status == "failed":
                log.error(res.error)
            bar.update(1)

        if workers == 1:
            for job in jobs:
                done(run_job(job, cfg, stages))
        else:
            import multiprocessing as mp

            ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
            with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker, initargs=(cfg, stages)) as ex:
                for res in ex.map(run_job, jobs):
                    done(res)
    order = {n: i for i, n in enumerate(names)}
    results.sort(key=lambda r: order.get(r.name, 0))
    good = [r.name for r in results if r.status in ("ok", "skipped")]
    picks, metas = collect_work(out_dir, good)
    plan = None
    files: list[Path] = []
    try:
        picks, plan, files = finalize_dataset(picks, metas, stages, cfg, out_dir)
    except (ValueError, OSError) as exc:
        errors.append(f"dataset stage failed: {exc}")
        log.error("dataset stage failed: %s", exc)
    result = RunResult(out_dir, results, picks, plan, files, time.perf_counter() - t0, errors)
    summary = result.summary()
    write_text(out_dir / "run_summary.json", json.dumps(summary, indent=2))
    if pm is not None:
        pm.hook.lipoframe_run_end(out_dir=out_dir, summary=summary)
    return result


def format_summary(summary: dict) -> str:
    """A short human-readable table of a run summary."""
    m = summary["micrographs"]
    lines = [
        f"micrographs  ok {m['ok']}  skipped {m['skipped']}  failed {m['failed']}  (total {m['total']})",
        f"picks        {summary['picks']['accepted']} accepted of {summary['picks']['total']}",
    ]
    for b in summary["bins"]:
        lines.append(f"  bin {b['bin']}: {b['d_min_px']:.0f}-{b['d_max_px']:.0f} px, {b['count']} picks, box {b['box_px']} px")
    for f in summary["failures"]:
        lines.append(f"FAILED {f['error']}")
    for e in summary["errors"]:
        lines.append(f"ERROR  {e}")
    lines.append(f"time         {summary['seconds']:.1f} s")
    lines.append(f"outputs      {summary['out_dir']}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# Python API
# ---------------------------------------------------------------------------
def _params(registry: StageRegistry, kind: str, spec: Any, overrides: dict | None) -> Any:
    if spec is None:
        return None
    if not isinstance(spec, str):
        return spec
    cls = registry.get(kind, spec).cls.Params
    return cls(**(overrides or {}))


def pick(
    image: np.ndarray,
    *,
    pixel_size: float | None = None,
    dmin: float = 150.0,
    dmax: float = 500.0,
    units: str = "A",
    polarity: str = "dark",
    detector: Any = "dog",
    nms: Any = "size_aware",
    refiner: Any = "none",
    filters: tuple = ("diameter_range",),
    detector_params: dict | None = None,
    nms_params: dict | None = None,
    refiner_params: dict | None = None,
    name: str = "image",
) -> pd.DataFrame:
    """Pick one micrograph given as an array.

    Parameters
    ----------
    image : (M, N) ndarray
        The micrograph, row 0 first.
    pixel_size : float, optional
        Å/px; required when ``units='A'``.
    dmin, dmax : float
        Diameter range in ``units``.
    units : {'A', 'px'}
    polarity : {'dark', 'bright'}
    detector, nms, refiner : str or Params instance
        Stage names (or their parameter dataclasses).
    filters : sequence of str or Params
    detector_params, nms_params, refiner_params : dict, optional
        Parameters for stages given by name.
    name : str
        Value of the ``micrograph`` column.

    Returns
    -------
    picks : DataFrame
        One row per pick: ``x_px`` (column), ``y_px`` (row), ``diameter_px``,
        ``score``, ... with ``accepted``/``reject_reason``.

    Examples
    --------
    >>> from lipoframe.synthetic import render, random_particles
    >>> truth = random_particles((1024, 1024), [100, 160, 220], seed=1)
    >>> img = render((1024, 1024), truth, seed=1)
    >>> picks = pick(img, dmin=80, dmax=260, units="px")
    >>> int(picks["accepted"].sum())
    3
    """
    from lipoframe import plugins

    _, registry, _ = plugins.load()
    image = np.asarray(image)
    cfg = LipoframeConfig(pixel_size=pixel_size, dmin=dmin, dmax=dmax, units=units, polarity=polarity)
    stages = StageSet(
        reader=registry.build(registry.get("reader", "auto").cls.Params()),
        detector=registry.build(_params(registry, "detector", detector, detector_params)),
        nms=registry.build(_params(registry, "nms", nms, nms_params)),
        refiner=registry.build(_params(registry, "refiner", refiner, refiner_params)),
        filters=[registry.build(_params(registry, "filter", f, None)) for f in filters],
        binner=None,  # type: ignore[arg-type]
        writers=[],
    )
    meta = MicrographMeta(name=name, path="", shape=image.shape, pixel_size=pixel_size)
    mic = Micrograph(meta=meta, image=image, polarity=polarity)
    return process_micrograph(mic, stages, pick_context(meta, cfg))
