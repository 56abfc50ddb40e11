"""Which job folders of a ``lipoframe run -m`` sweep folder belong to its last sweep.

Hydra does not delete the job folders of an earlier sweep into the same
folder: a sweep of 4 jobs re-run with 2 leaves ``2/`` and ``3/`` behind, and
a re-run stopped early leaves earlier jobs' folders where its own did not
start. What Hydra records of the last sweep decides:

* ``multirun.yaml`` is written by the sweep before its jobs start: its
  command line (``hydra.overrides.task``) and ``hydra.sweeper.params``,
  expanded as Hydra's basic sweeper does (:meth:`BasicSweeper.split_arguments`),
  give every job's override list, by job number;
* each job's ``.hydra/hydra.yaml`` (``hydra.job.num``) and
  ``.hydra/overrides.yaml`` say which job it was: a folder belongs to the
  last sweep when its number is one of that sweep's and its overrides are
  that job's;
* when the sweep cannot be expanded (another sweeper, an interval sweep, a
  ``glob()``, whose options depend on the sweep's config folders), the file times: a job's
  ``.hydra/overrides.yaml`` written before ``multirun.yaml`` is older than
  the sweep.
"""

from __future__ import annotations

import os
from collections import deque
from pathlib import Path
from typing import Any, Callable, NamedTuple

#: Hydra's built-in sweeper, whose jobs can be listed from ``multirun.yaml``.
BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
#: Seconds a job's ``.hydra`` may seem older than ``multirun.yaml`` (coarse file times) and still be of the sweep.
TIME_SLACK = 2.0
#: Sweeps larger than this are not expanded (the file times decide).
MAX_JOBS = 100_000


def _yaml(path: Path):
    import yaml

    try:
        return yaml.safe_load(path.read_text())
    except (OSError, ValueError, yaml.YAMLError):
        return None


class SweepRecord(NamedTuple):
    """What a sweep folder's ``multirun.yaml`` records of its last sweep (:func:`sweep_record`).

    sweeper : Any
        ``hydra.sweeper._target_``: the sweeper that ran it (None if not named).
    task : list of str
        ``hydra.overrides.task``: the words of its command line.
    params : dict or None
        ``hydra.sweeper.params`` ({} when none); None when it is not a mapping.
    """

    sweeper: Any
    task: list[str]
    params: dict | None


def sweep_record(folder: str | Path) -> SweepRecord | None:
    """The sweeper, command line and ``hydra.sweeper.params`` of ``folder/multirun.yaml``; None when unreadable."""
    doc = _yaml(Path(folder) / "multirun.yaml")
    try:
        hydra = doc["hydra"]
        sweeper = hydra["sweeper"]
        task = [str(w) for w in (hydra["overrides"]["task"] or [])]
        params = sweeper.get("params") or {}
        target = sweeper.get("_target_")
    except (KeyError, TypeError, AttributeError):
        return None
    return SweepRecord(target, task, params if isinstance(params, dict) else None)


def job_overrides(job: str | Path) -> list[str] | None:
    """The command-line words Hydra saved for one run or sweep job (``job/.hydra/overrides.yaml``).

    None when the file is missing, unreadable or not a list (an empty file
    too: Hydra writes ``[]`` for no words).
    """
    words = _yaml(Path(job) / ".hydra" / "overrides.yaml")
    return [str(w) for w in words] if isinstance(words, list) else None


def run_after_sweep(folder: str | Path) -> bool | None:
    """Whether ``folder`` holds both a sweep (``multirun.yaml``) and a run of its own (``inputs.json``), and which came last.

    ``lipoframe run output=F`` into a sweep folder ``F`` (or ``run -m
    output=F`` into a run folder) leaves both. ``multirun.yaml`` is written as
    a sweep starts and ``inputs.json`` as a run starts, so the newer one is
    what was last run into the folder: True for the run, False for the
    sweep, None when the folder does not hold both. ``lipoframe evaluate``
    and ``lipoframe merge`` read the folder as that one.
    """
    folder = Path(folder)
    try:
        sweep, run = (folder / "multirun.yaml").stat(), (folder / "inputs.json").stat()
    except OSError:
        return None
    return run.st_mtime_ns > sweep.st_mtime_ns


def last_sweep_jobs(sweep: str | Path) -> list[list[str]] | None:
    """Every job's override list of the last sweep recorded in ``sweep/multirun.yaml``, by job number.

    None when it cannot be told: the file is unreadable, another sweeper
    ran the sweep, or it cannot be expanded here.

    Expanded by Hydra's own :meth:`BasicSweeper.split_arguments`, not by
    :func:`lipoframe.app.sweep_jobs`: the lists are compared with the words
    each job's ``.hydra/overrides.yaml`` holds, which Hydra writes again
    from their parsed values (``nms.beta=.6`` as ``nms.beta=0.6``), while
    ``sweep_jobs`` keeps the words as typed for its error lines.
    """
    record = sweep_record(sweep)
    if record is None or record.sweeper != BASIC_SWEEPER or record.params is None:
        return None
    words = [f"{k}={v}" for k, v in record.params.items()] + record.task  # the sweeper's order: its params, then the command line
    try:
        from hydra import initialize_config_dir
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
        from hydra.core.global_hydra import GlobalHydra
        from hydra.core.override_parser.overrides_parser import OverridesParser
        from hydra.core.override_parser.types import ValueType

        from lipoframe.config import config_dir

        with initialize_config_dir(version_base="1.3", config_dir=str(config_dir()), job_name="lipoframe"):
            parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
            overrides = parser.parse_overrides(words)
            if any(o.value_type == ValueType.GLOB_CHOICE_SWEEP for o in overrides):
                # glob() lists a config group's options, and here only lipoframe's own config is searched:
                # the sweep's -cd/--config-dir or searchpath presets would be missing and its jobs misnumbered.
                return None
            n = 1
            for o in overrides:
                n *= len(list(o.sweep_string_iterator())) if o.is_sweep_override() else 1
                if n > MAX_JOBS:
                    return None
            batches = BasicSweeper.split_arguments(overrides, None)
    except Exception:  # noqa: BLE001 - Hydra raises several types for what it cannot expand here
        return None
    return [list(job) for batch in batches for job in batch] or None


def _job_num(job: Path) -> int | None:
    doc = _yaml(job / ".hydra" / "hydra.yaml")
    try:
        return int(doc["hydra"]["job"]["num"])
    except (KeyError, TypeError, ValueError):
        return int(job.name) if job.name.isdigit() else None


#: Folders of a sweep folder that :func:`job_folders` lists at most: one that also holds a large tree
#: (``output=.`` in a project folder with its data) is not walked to its end.
MAX_SEARCHED = 10000


def job_folders(sweep: str | Path, is_job: Callable[[Path], bool]) -> list[Path]:
    """The subfolders of ``sweep`` for which ``is_job``, by Hydra's job number (``.hydra/hydra.yaml``), then by path.

    With ``hydra.sweep.subdir`` the user's (``${hydra.job.num}_${nms.beta}``)
    the folder names are not the job numbers. In a sweep folder
    (``multirun.yaml``), a job's folder may also be deeper: a subdir with a
    ``/`` in it (``${hydra.job.override_dirname}`` of ``input=/data/mics``)
    nests it. Folders below the children are taken when Hydra made them
    for a job (``.hydra/overrides.yaml``); no job's folder is searched for
    others, nor are hidden or linked folders (a link to a job's folder,
    such as a shard run elsewhere, is taken), nor a folder below the
    children that holds files: the folders Hydra makes on the way to a
    nested job hold only folders, so a data tree beside the jobs is not
    walked (and :data:`MAX_SEARCHED` folders are listed at most).
    """
    sweep = Path(sweep)
    deep = (sweep / "multirun.yaml").is_file()
    found: list[Path] = []
    todo = deque([sweep])
    searched = 0
    while todo and searched < MAX_SEARCHED:
        folder = todo.popleft()
        searched += 1
        try:
            with os.scandir(folder) as entries:  # no stat of each file: a folder may hold thousands
                listed = [(Path(e.path), e.is_symlink(), e.is_dir()) for e in entries if not e.name.startswith(".")]
        except OSError:
            continue
        if folder != sweep and not all(is_dir for _, _, is_dir in listed):
            continue  # files: not a folder Hydra made on the way to a job (a data or output tree)
        for sub, link, _ in sorted(entry for entry in listed if entry[2]):
            made = (sub / ".hydra").is_dir()
            if is_job(sub) and (folder == sweep or (sub / ".hydra" / "overrides.yaml").is_file()):
                found.append(sub)
            elif deep and not made and not link:
                todo.append(sub)
    nums = {f: _job_num(f) for f in found}
    return sorted(found, key=lambda f: (nums[f] is None, nums[f] or 0, f.relative_to(sweep).as_posix()))


def job_labels(sweep: str | Path, folders: list[Path]) -> list[str]:
    """How to name each of a sweep's job ``folders``: Hydra's job number, else (not recorded, or shared) its path in ``sweep``.

    The number is the folder's name with Hydra's default ``hydra.sweep.subdir``
    (``${hydra.job.num}``); with another (``${hydra.job.num}_${nms.beta}``,
    ``${hydra.job.override_dirname}``) it is still the job's number, which
    Hydra's console lines (``#1 : ...``) give too.
    """
    nums = [_job_num(f) for f in folders]
    return [str(n) if n is not None and nums.count(n) == 1 else job_path(sweep, f)
            for f, n in zip(folders, nums)]


def stale_jobs(sweep: str | Path, folders: list[Path]) -> dict[Path, str]:
    """The ``folders`` of ``sweep`` that are not jobs of its last sweep, each with why.

    A folder without ``.hydra/overrides.yaml`` cannot be told and is kept
    (not listed), as is every folder when ``multirun.yaml`` is unreadable.
    """
    sweep = Path(sweep)
    try:
        started = (sweep / "multirun.yaml").stat().st_mtime
    except OSError:
        return {}
    jobs = last_sweep_jobs(sweep)
    stale = {}
    for folder in folders:
        words = job_overrides(folder)
        if words is None:
            continue
        if jobs is not None:
            num = _job_num(folder)
            if num is None or num >= len(jobs):
                stale[folder] = f"numbered past the last sweep's {len(jobs)} job{'s' if len(jobs) != 1 else ''}"
            elif sorted(words) != sorted(jobs[num]):
                stale[folder] = f"its overrides are not those of the last sweep's job {num}"
            continue
        try:
            if (folder / ".hydra" / "overrides.yaml").stat().st_mtime < started - TIME_SLACK:
                stale[folder] = "older than the last sweep's multirun.yaml"
        except OSError:
            continue
    return stale


def job_path(sweep: str | Path, folder: str | Path) -> str:
    """``a/b``: the path of a job's ``folder`` in ``sweep`` (its name with Hydra's default ``hydra.sweep.subdir``).

    A ``hydra.sweep.subdir`` with a ``/`` in it (``${hydra.job.override_dirname}``)
    nests the jobs, so their last path parts need not tell them apart.
    """
    try:
        return Path(folder).relative_to(sweep).as_posix()
    except ValueError:  # not below the sweep folder (given so): its whole path
        return str(folder)


def stale_line(sweep: str | Path, stale: dict[Path, str]) -> str:
    """``2 stale job folders left out (...): 2, 3 (numbered past the last sweep's 2 jobs)``: one line for :func:`stale_jobs`.

    Each folder is named by its path in ``sweep`` (:func:`job_path`).
    """
    why: dict[str, list[str]] = {}
    for folder, reason in stale.items():
        why.setdefault(reason, []).append(job_path(sweep, folder))
    n = len(stale)
    return (f"{n} stale job folder{'' if n == 1 else 's'} left out (an earlier sweep's; multirun.yaml records the last): "
            + "; ".join(f"{', '.join(names)} ({reason})" for reason, names in why.items()))


def sweep_folder_hint(folder: str | Path) -> str:
    """``"; a sweep folder (lipoframe run -m) of 4 jobs: give one job's folder, sweep/0 ... sweep/3"`` or ``""``.

    For the commands that read one run folder (``lipoframe plan``,
    ``lipoframe report``) given a sweep's folder by mistake.
    """
    folder = Path(folder)
    if not (folder / "multirun.yaml").is_file():
        return ""
    # by job number, also under a hydra.sweep.subdir of the user's (named or nested otherwise)
    jobs = job_folders(folder, lambda p: (p / ".hydra" / "overrides.yaml").is_file())
    if not jobs:
        return ""
    which = str(jobs[0]) + (f" ... {jobs[-1]}" if len(jobs) > 1 else "")
    return (f"; it is a sweep folder (lipoframe run -m) of {len(jobs)} job(s): give one job's folder, {which} "
            "(shards of one run: lipoframe merge them first)")
