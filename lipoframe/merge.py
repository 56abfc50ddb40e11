"""``lipoframe merge``: combine the run folders of shards into one result.

Each shard of ``lipoframe run -m shard.index=0,1,2,3 shard.count=4`` saves
its per-micrograph results in ``<run>/micrographs/`` and its input list in
``<run>/inputs.json``. Merging copies those results into one folder, in the
order of the full input list, and runs the dataset-level stages (binning,
writers, plan files) exactly as one run over all micrographs would.

The settings come from the shards' own Hydra record (``.hydra/overrides.yaml``,
composed again with the same config tree); dataset-level options (binning,
writers) may be changed on the merge command line. Every shard must have
been run with the same per-micrograph settings (its fingerprint), else the
merge stops with a message.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from lipoframe.config import override_key
from lipoframe.records import InputError

log = logging.getLogger("lipoframe")

USAGE = """usage: lipoframe merge RUN_DIR [RUN_DIR ...] output=DIR [dataset-level overrides]

Combine the run folders of shards (or a multirun folder holding them) into
DIR: picks, size bins, extraction plan and every writer's files, exactly as
one run over all micrographs.

  RUN_DIR      a run folder (has inputs.json), or a sweep folder whose
               subfolders are run folders (those of its last sweep; an
               earlier sweep's left in it are named and left out)
  output=DIR   where the merged result goes (required)
  overrides    dataset-level options, e.g. binning=... 'writer=[csv,star]'
               export_rejected=true flip_y=false; per-micrograph options must match the shards

report.html is drawn as the shards drew theirs: left out when every shard ran
with runner.report=false, drawn when any shard drew one (the default);
runner.report=true or runner.report=false on the merge command decides instead.

example:
  lipoframe run -m input=mics/ output=shards shard.count=4 shard.index=0,1,2,3 hydra/launcher=submitit_slurm
  lipoframe merge shards output=merged
"""

#: The file of a merged folder that lists the run folders merged into it.
MERGED_FROM = "merged_from.json"

#: Overrides that differ between shards by design, or only steer Hydra or the runner.
_PER_SHARD = ("shard.", "output=", "hydra", "runner.", "+hydra", "~hydra", "watch=", "stream.")


class MergeError(Exception):
    """The run folders cannot be merged; the message says why."""


class NotARunFolder(MergeError):
    """A folder given to merge is missing or is not a run folder: a usage error (exit code 2, as plan, report and evaluate)."""


@dataclass
class Shard:
    """One run folder: its manifest and the overrides it was run with."""

    folder: Path
    manifest: dict
    overrides: list[str]

    @property
    def names(self) -> list[str]:
        return [m["name"] for m in self.manifest["micrographs"]]

    @property
    def index(self) -> tuple[int, int]:
        s = self.manifest["shard"]
        return int(s["index"]), int(s["count"])

    @property
    def report(self) -> bool:
        """Whether the shard's run was to draw report.html (its ``runner.report``).

        Read from the run's ``.hydra/config.yaml``, else from its recorded
        overrides; True (the default) when neither says.
        """
        import yaml

        try:
            runner = (yaml.safe_load((self.folder / ".hydra" / "config.yaml").read_text()) or {}).get("runner")
        except (OSError, yaml.YAMLError, AttributeError):
            runner = None
        if isinstance(runner, dict) and isinstance(runner.get("report"), bool):
            return runner["report"]
        for o in reversed(self.overrides):
            value = o.partition("=")[2]
            if override_key(o).strip() == "runner.report" and value.strip().lower() in ("true", "false"):
                return value.strip().lower() == "true"
        return True


def find_run_folders(specs: list[str]) -> list[Path]:
    """Run folders named by ``specs``: each is a run folder or contains run folders."""
    from lipoframe.runner import MANIFEST

    out: list[Path] = []
    for spec in specs:
        folder = Path(spec).expanduser()
        from lipoframe.sweepdir import run_after_sweep

        last_run = run_after_sweep(folder)
        if last_run is not None:  # a run and a sweep into the same folder: the last one run there is merged
            log.warning(f"{folder}: holds a sweep and a run of its own; merging the "
                        + ("run, started after the sweep" if last_run else "sweep's jobs, started after the run"))
        if (folder / MANIFEST).is_file() and last_run is not False:
            out.append(folder)
            continue
        if not folder.is_dir():
            raise NotARunFolder(f"{folder}: no such folder")
        from lipoframe.sweepdir import job_folders

        subs = job_folders(folder, lambda p: (p / MANIFEST).is_file())  # by job number, also under a hydra.sweep.subdir of the user's
        if not subs:
            raise NotARunFolder(f"{folder}: not a lipoframe run folder (no {MANIFEST}) and has none inside")
        if (folder / "multirun.yaml").is_file():  # Hydra keeps the job folders of an earlier sweep into the same folder
            from lipoframe.sweepdir import stale_jobs, stale_line

            stale = stale_jobs(folder, subs)
            if stale and len(stale) == len(subs):
                raise MergeError(f"{folder}: none of its run folders is a job of the last sweep (multirun.yaml): {stale_line(folder, stale)}")
            if stale:
                log.warning(f"{folder}: {stale_line(folder, stale)}")
                subs = [p for p in subs if p not in stale]
        out.extend(subs)
    seen: dict[Path, Path] = {}
    for f in out:
        if f.resolve() in seen:
            # one shard given twice (s0 s0, or sweep/ and sweep/0) would then be "missing" its partner
            raise MergeError(f"{f}: the same run folder is given twice ({seen[f.resolve()]} and {f}); give each shard's folder once")
        seen[f.resolve()] = f
    return out


def load_shard(folder: Path) -> Shard:
    from lipoframe.runner import MANIFEST
    from lipoframe.sweepdir import job_overrides

    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        manifest["micrographs"], manifest["shard"], manifest["fingerprint"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise MergeError(f"{folder / MANIFEST}: unreadable ({exc})") from None
    over = folder / ".hydra" / "overrides.yaml"
    if not over.is_file():
        raise NotARunFolder(f"{folder}: no .hydra/overrides.yaml (merge needs folders made by `lipoframe run`)")
    overrides = job_overrides(folder)
    if overrides is None:
        raise MergeError(f"{over}: unreadable (not the list of overrides Hydra saves)")
    return Shard(folder, manifest, overrides)


def _kept(overrides: list[str]) -> list[str]:
    return [o for o in overrides if not o.lstrip("+~").startswith(_PER_SHARD)]


def plan_merge(shards: list[Shard]) -> tuple[list[tuple[Shard, str, str]], list[str]]:
    """The micrographs to merge in output order, as (shard, name, path), and notes.

    Shards of one input list (same ``inputs.json`` micrographs) are merged in
    the order of that list and must cover every shard index once. Runs over
    different inputs are concatenated in the order given; their micrograph
    names must not clash.

    Raises
    ------
    MergeError
        Mixed fingerprints, missing or repeated shards, clashing names.
    """
    notes: list[str] = []
    prints = list(dict.fromkeys(s.manifest["fingerprint"] for s in shards))  # in the order the runs were given
    if len(prints) > 1:
        groups = "; ".join(f"{fp}: {', '.join(str(s.folder) for s in shards if s.manifest['fingerprint'] == fp)}" for fp in prints)
        hint = ""
        sweeps = {s.folder.parent for s in shards}
        if len(sweeps) == 1 and (sweep := next(iter(sweeps)) / "multirun.yaml").is_file():
            # The jobs of one parameter sweep (nms.max_containment=0.3,0.5): what a user wants of them is a comparison.
            hint = (f"; the jobs of the sweep {sweep.parent} are compared, not merged: `lipoframe evaluate "
                    f"{shlex.quote(f'picks={sweep.parent}')} reference=<reference picks>` scores each against the same reference")
        raise MergeError(f"the runs were made with different per-micrograph settings (fingerprints {groups}); "
                         f"merge only shards of one run{hint}")
    # Shards of one input list (same inputs.json micrographs) must cover every shard index once, also
    # beside runs over other inputs: a lone shard would bring only its part of its inputs.
    groups: list[list[Shard]] = []
    for s in shards:
        for g in groups:
            if g[0].manifest["micrographs"] == s.manifest["micrographs"]:
                g.append(s)
                break
        else:
            groups.append([s])
    if len(groups) == 1:
        by_index, count = _shard_set(shards, "")
        return [(by_index[pos % count], m["name"], m["path"]) for pos, m in enumerate(shards[0].manifest["micrographs"])], notes
    order, owner = [], {}
    for g in groups:
        n = len(g[0].manifest["micrographs"])
        by_index, count = _shard_set(g, f"the run over the {n} micrograph(s) {g[0].folder}/inputs.json lists (other runs given "
                                        "list other inputs: were the inputs changed between its shards?): ")
        for pos, m in enumerate(g[0].manifest["micrographs"]):
            s = by_index[pos % count]
            if m["name"] in owner:
                raise MergeError(f"micrograph name {m['name']!r} is in both {owner[m['name']]} and {s.folder}; merge runs over different inputs only")
            owner[m["name"]] = s.folder
            order.append((s, m["name"], m["path"]))
    notes.append("the runs are over different inputs: their micrographs are combined in the order the folders were given")
    return order, notes


def _shard_set(shards: list[Shard], what: str) -> tuple[dict[int, Shard], int]:
    """The shards of one input list by shard index, and their shard.count; each index must be there once."""
    counts = {s.index[1] for s in shards}
    if len(counts) > 1:
        raise MergeError(f"{what}the runs split the inputs differently (shard.count {sorted(counts)})")
    count = counts.pop()
    by_index: dict[int, Shard] = {}
    for s in shards:
        i = s.index[0]
        if i in by_index:
            raise MergeError(f"{what}shard {i} of {count} appears twice: {by_index[i].folder} and {s.folder}")
        by_index[i] = s
    missing = sorted(set(range(count)) - set(by_index))
    if missing:
        raise MergeError(f"{what}shard(s) {', '.join(map(str, missing))} of {count} are missing; give every shard's run folder")
    return by_index, count


def report_wanted(shards: list[Shard], overrides: list[str], asked: bool) -> bool:
    """Whether a merge draws report.html: as ``runner.report`` on the merge command says, else as its shards did.

    ``asked`` is the merge's composed ``runner.report``, taken when
    ``overrides`` (the merge command's) set it. Otherwise the merge follows
    its shards: a report when any shard's run was to draw one (the default),
    none when every shard ran with ``runner.report=false``.
    """
    if any(override_key(o).strip() in ("runner", "runner.report") for o in overrides):
        return asked
    without = [s.folder for s in shards if not s.report]
    if without and len(without) < len(shards):
        log.info("%d of %d shards ran with runner.report=false (%s): the merge draws its report as the others did; "
                 "runner.report=false on the merge command leaves it out", len(without), len(shards),
                 ", ".join(map(str, without[:3])) + (", ..." if len(without) > 3 else ""))
    return len(without) < len(shards)


def compose_config(overrides: list[str]):
    """Compose lipoframe's config from overrides (as ``lipoframe run`` does) and validate it."""
    from hydra import compose, initialize_config_dir

    from lipoframe.app import format_config_error, prepare_hydra
    from lipoframe.config import ConfigError, config_dir, to_run_config

    prepare_hydra()
    try:
        with initialize_config_dir(version_base="1.3", config_dir=str(config_dir()), job_name="lipoframe_merge"):
            cfg = compose("config", overrides=overrides)
        return cfg, to_run_config(cfg)
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - Hydra raises many types; all become one line
        raise ConfigError(format_config_error(exc)) from exc


#: How a ``.hydra/`` record set aside to be deleted is renamed (:func:`drop_hydra_record`), and one a merge set
#: aside as it started (``set_aside=True``): a folder holding the latter is a merge's (:func:`is_merged_folder`).
_REMOVED, _MERGING = ".hydra.removed-", ".hydra.merging-"


def drop_hydra_record(out_dir: Path, *, set_aside: bool = False) -> bool:
    """Remove the ``.hydra/`` folder an earlier ``lipoframe run`` into ``out_dir`` left; True when there was one.

    A merged folder's settings are its ``config.yaml``, as are those of a
    run that Hydra keeps no ``.hydra/`` record for (``hydra.output_subdir=null``,
    ``lipoframe.app.run``). ``lipoframe plan``
    and ``report`` read ``.hydra/config.yaml`` (and Hydra's group choices in
    ``.hydra/hydra.yaml``) first, and ``merge`` and ``evaluate`` take a folder
    with ``.hydra/overrides.yaml`` for a run of those overrides: left in place,
    the earlier run's record would stand for the merge (the run). The folder is renamed
    away in one step, then deleted (with any such left by an interrupted merge or run).

    With ``set_aside`` (a merge, as it starts) it is only renamed, to a name
    that says a merge into the folder has begun, and nothing is deleted: in
    that one step the folder stops being the earlier run's and becomes a
    merge's (:func:`is_merged_folder`), also when the merge is stopped before
    it writes :data:`MERGED_FROM`. The call without it deletes it.
    """
    import shutil

    record = out_dir / ".hydra"
    found = record.is_dir()
    if found:
        record.rename(out_dir / f"{_MERGING if set_aside else _REMOVED}{os.getpid()}-{time.time_ns()}")
        log.info("removed %s, the settings record of the earlier run into the folder: this one's are in config.yaml", record)
    if not set_aside:
        for old in [*out_dir.glob(f"{_REMOVED}*"), *out_dir.glob(f"{_MERGING}*")]:
            shutil.rmtree(old, ignore_errors=True)
    return found


def drop_merge_record(out_dir: Path) -> bool:
    """Remove the record of an earlier ``lipoframe merge`` into ``out_dir``; True when there was one.

    A run into a merged folder calls it once its own results are in place
    (its dataset-level outputs and ``run_summary.json`` written): from then
    on the folder is the run's, not the merge's (:func:`is_merged_folder`),
    whether Hydra keeps a ``.hydra/`` record of the run or not
    (``hydra.output_subdir=null``). A run that stops before, or makes no
    dataset (every micrograph failed), leaves the record with the merge's
    outputs. A ``.hydra/`` record a stopped merge set aside
    (:func:`drop_hydra_record`) is renamed for deletion and deleted first,
    then :data:`MERGED_FROM` unlinked, each in one step.
    """
    import shutil

    found = False
    for marker in out_dir.glob(f"{_MERGING}*"):
        gone = out_dir / f"{_REMOVED}{os.getpid()}-{time.time_ns()}"
        marker.rename(gone)
        shutil.rmtree(gone, ignore_errors=True)
        found = True
    if (out_dir / MERGED_FROM).is_file():
        (out_dir / MERGED_FROM).unlink()
        log.info("removed %s, the record of the earlier merge into the folder: its results are this run's now", out_dir / MERGED_FROM)
        found = True
    return found


def is_merged_folder(folder: str | Path) -> bool:
    """Whether ``folder`` holds a ``lipoframe merge``'s result, not a run's.

    It has :data:`MERGED_FROM` (or the ``.hydra/`` record of an earlier run
    that a merge set aside as it started, :func:`drop_hydra_record`) and no
    ``.hydra/`` record. A ``lipoframe run`` into a merged folder writes one
    (which ``lipoframe plan`` and ``report`` read first), and once its results
    are in place it removes the merge's record (:func:`drop_merge_record`),
    also when Hydra writes no ``.hydra/`` (``hydra.output_subdir=null``).
    True also while a merge into the folder is under way or once it was
    stopped or killed: as it starts, before it copies anything, it sets an
    earlier run's ``.hydra/`` aside, then writes its list.
    """
    folder = Path(folder)
    if (folder / ".hydra" / "config.yaml").is_file():
        return False
    return (folder / MERGED_FROM).is_file() or any(p.is_dir() for p in folder.glob(f"{_MERGING}*"))


#: What :func:`merge_unfinished` says, after the folder's name.
MERGE_UNFINISHED = ("the lipoframe merge into this folder did not finish (it stopped before writing its config.yaml): "
                    "run the same `lipoframe merge` command again to finish it")


def merge_unfinished(folder: str | Path) -> bool:
    """Whether ``folder`` holds a merge stopped (Ctrl-C, SIGTERM, or killed outright) before it wrote its ``config.yaml``.

    A merge writes :data:`MERGED_FROM` as it starts, then copies the shards'
    results, writes ``inputs.json`` and then ``config.yaml``: a merged
    folder (:func:`is_merged_folder`) without ``config.yaml`` has no
    settings to plan or report with, and the merge run again finishes it.
    """
    return is_merged_folder(folder) and not (Path(folder) / "config.yaml").is_file()


def merge_runs(folders: list[str | Path], out_dir: str | Path, overrides: list[str] = ()):
    """Merge run folders into ``out_dir``; returns the :class:`~lipoframe.runner.RunResult`.

    Raises
    ------
    MergeError, ConfigError, InputError
    KeyboardInterrupt
        After Ctrl-C or SIGTERM, once ``run_summary.json`` records the
        interruption.
    """
    import shutil

    from omegaconf import OmegaConf

    from lipoframe import plugins
    from lipoframe.config import ConfigError
    from lipoframe.io.atomic import atomic_path, write_text
    from lipoframe.runner import (
        WORK_DIR,
        MicResult,
        _work_paths,
        build_stages,
        drop_outputs_of_other_settings,
        finish_run,
        folder_log,
        load_work,
        output_folder,
        record_started_stages,
        recorded_failures,
        sigterm_as_interrupt,
        stage_names,
        write_manifest,
    )

    t0 = time.perf_counter()
    shards = [load_shard(f) for f in find_run_folders([str(f) for f in folders])]
    out_dir = Path(out_dir)
    if any(s.folder.resolve() == out_dir.resolve() for s in shards):
        raise MergeError(f"{out_dir}: the output folder must not be one of the run folders")
    order, notes = plan_merge(shards)
    base = _kept(shards[0].overrides)
    for s in shards[1:]:
        if _kept(s.overrides) != base:
            notes.append(f"{s.folder} was run with other overrides than {shards[0].folder}; using those of {shards[0].folder}")
    composed, cfg = compose_config(base + list(overrides))
    fingerprint = shards[0].manifest["fingerprint"]
    if cfg.per_micrograph_fingerprint() != fingerprint:
        changed = ""
        if overrides:
            shard_settings = compose_config(base)[1].per_micrograph_settings()
            keys = [k for k, v in cfg.per_micrograph_settings().items() if shard_settings.get(k) != v]
            changed = f" ({', '.join(keys)})" if keys else ""
        raise ConfigError(
            f"the merge settings change per-micrograph options{changed} from those the shards were run with "
            "(reader, detector, nms, refiner, filters, sizes, pixel size); only dataset-level options "
            "(binning, writer, export_rejected, flip_y) can be changed when merging"
        )
    pm, registry, _ = plugins.load()
    stages = build_stages(cfg, registry)
    # The errors the shards recorded: of their failures, and of the files a shard's watch session had not finished
    # at its last update (a copy still being written?), which the merge lists apart too (not_finished).
    failed_before: dict[str, str] = {}
    unfinished_before: dict[str, str] = {}
    for s in shards:
        try:
            summ = json.loads((s.folder / "run_summary.json").read_text())
        except (OSError, ValueError):
            continue
        failed, unfinished = recorded_failures(summ)
        failed_before.update(failed)
        unfinished_before.update(unfinished)
    names = [n for _, n, _ in order]
    # Those a shard's watch session had not finished: when not copied, not failures (yet), as its report shows them.
    not_finished = {n for _, n, path in order if path in unfinished_before and path not in failed_before}

    # SIGTERM (`kill`, the end of a batch job) stops it as Ctrl-C does, and run_summary.json says so.
    with output_folder(out_dir, "merge"), folder_log(out_dir, "merge " + " ".join([*map(str, folders), *overrides])), sigterm_as_interrupt():
        from dataclasses import replace

        # No report when no shard drew one (runner.report=false), unless the merge command asks for it (in the log).
        cfg.runner = replace(cfg.runner, report=report_wanted(shards, list(overrides), cfg.runner.report))
        # As a run does: an earlier merge's (or run's) picks and exports made with other settings go now,
        # not when this merge's dataset step replaces them (never, if it is interrupted).
        dropped = drop_outputs_of_other_settings(out_dir, cfg)  # before write_manifest: it may read the earlier inputs.json
        if dropped:
            log.warning(dropped)
        results: list[MicResult] = []
        try:
            # First of all: stopped or killed at any point from here, the folder is known for a merge's
            # (is_merged_folder), and one without its config.yaml for an unfinished one (merge_unfinished).
            # An earlier run's .hydra/ (read first by plan, report and merge) is set aside in the same step
            # that marks the merge, then the list written, then the record deleted: no stopped state is the run's.
            drop_hydra_record(out_dir, set_aside=True)
            write_text(out_dir / MERGED_FROM, json.dumps([str(s.folder) for s in shards], indent=1))
            drop_hydra_record(out_dir)
            for shard, name, path in order:
                done = load_work(shard.folder, name, fingerprint)
                if done is None:
                    error = (failed_before.get(path) or unfinished_before.get(path)
                             or f"{path}: no complete result in {shard.folder} (rerun that shard to finish it)")
                    results.append(MicResult(name, path, "failed", error=error))
                    continue
                picks = done[1]
                for src, dst in zip(_work_paths(shard.folder, name), _work_paths(out_dir, name)):
                    with atomic_path(dst) as tmp:
                        shutil.copyfile(src, tmp)
                n_acc = int(picks["accepted"].sum()) if len(picks) else 0
                results.append(MicResult(name, path, "ok", len(picks), n_acc))
            (out_dir / WORK_DIR).mkdir(exist_ok=True)
            specs = list(dict.fromkeys(i for s in shards for i in s.manifest.get("inputs", [])))
            from lipoframe.config import ShardConfig

            cfg.shard = ShardConfig()
            project = next((s.manifest["relion_project"] for s in shards if s.manifest.get("relion_project")), None)
            star = next((s.manifest["relion_micrographs_star"] for s in shards if s.manifest.get("relion_micrographs_star")), None)
            # Without its stages (the earlier merge's go too), recorded once config.yaml is written: stopped at any
            # point, the folder never holds one merge's settings with another's binning policy.
            write_manifest(out_dir, specs, [Path(p) for _, _, p in order], names, cfg, fingerprint, project=project,
                           micrographs_star=star)
            merged = OmegaConf.merge(composed, {"output": str(out_dir), "shard": {"index": 0, "count": 1},
                                               "runner": {"report": cfg.runner.report}})
            write_text(out_dir / "config.yaml", OmegaConf.to_yaml(merged))
            record_started_stages(out_dir, stage_names(stages))
        except KeyboardInterrupt:
            # As a run stopped while picking: run_summary.json says so, and how many micrographs are not copied yet;
            # that of an earlier merge with the same settings (whose outputs stay) said its outputs were this merge's.
            finish_run(out_dir.absolute(), names, results, stages, cfg, t0=t0, errors=[], notes=notes + ([dropped] if dropped else []),
                       interrupted=True, workers=1, finalize=False, not_finished=not_finished)
            log.warning("interrupted: %d of %d micrographs are copied; run the same `lipoframe merge` command again to finish it",
                        sum(r.status == "ok" for r in results), len(names))
            raise
        for n in notes:
            log.warning(n)
        notes += [dropped] if dropped else []
        # The absolute folder, as a run's (Hydra's output_dir): the console's 'outputs' line and run_summary.json's out_dir.
        try:
            result = finish_run(out_dir.absolute(), names, results, stages, cfg, pm=pm, t0=t0, errors=[], notes=notes, workers=1,
                                not_finished=not_finished)
        except KeyboardInterrupt:  # in the binning or a writer: finish_run's run_summary.json says so
            log.warning("interrupted while writing the exports and the extraction plan (every micrograph is copied): "
                        "run the same `lipoframe merge` command again to finish it")
            raise
        if cfg.runner.report:
            from lipoframe.runner import write_run_report

            # Stopped while drawing it, run_summary.json says so, as a run's does.
            write_run_report(out_dir, cfg=cfg, stages=stages, result=result)
        else:
            from lipoframe.report import drop_earlier_report

            drop_earlier_report(out_dir)
        return result


def main(argv: list[str]) -> int:
    """``lipoframe merge RUN_DIR ... output=DIR [overrides]``."""
    from lipoframe.logs import command_logging

    with command_logging():
        return _main(argv)


def _main(argv: list[str]) -> int:
    from lipoframe.config import ConfigError
    from lipoframe.runner import format_summary

    if not argv or any(a in ("-h", "--help") for a in argv):
        print(USAGE)
        return 0 if argv else 2
    out = [os.path.expanduser(a.split("=", 1)[1]) for a in argv if a.startswith("output=")]  # `output=~/m` in sh or quoted
    overrides = [a for a in argv if "=" in a and not a.startswith("output=")]
    folders = [a for a in argv if "=" not in a]
    if not out or not out[0]:
        print("lipoframe merge: output=DIR is required\n", file=sys.stderr)
        print(USAGE, file=sys.stderr)
        return 2
    if not folders:
        print("lipoframe merge: give at least one run folder\n", file=sys.stderr)
        print(USAGE, file=sys.stderr)
        return 2
    from lipoframe.logs import logged_errors

    try:
        with logged_errors() as shown:  # on the console as they happened: the summary counts them
            result = merge_runs(folders, out[0], overrides)
    except ConfigError as exc:
        print(f"lipoframe merge: config error: {exc}", file=sys.stderr)
        return 2
    except NotARunFolder as exc:
        print(f"lipoframe merge: {exc}", file=sys.stderr)
        return 2
    except (MergeError, InputError) as exc:
        print(f"lipoframe merge: {exc}", file=sys.stderr)
        return 1
    print(format_summary(result.summary(), shown=shown))
    # A micrograph a shard's watch session had not finished is not in the merge either: as a failure, exit code 1.
    return 0 if result.ok and not result.unfinished else 1
