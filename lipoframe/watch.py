"""Streaming: ``lipoframe run watch=true input=<folder>``.

The run keeps going and picks micrographs as they appear in the input
folders (or glob). A file is picked only once it is completely written: its
size and modification time must not change over ``stream.stable_polls``
scans ``stream.poll_seconds`` apart. A file that still fails (a copy that
stalled longer than that, read half-written) is told once as maybe not
finished, and picked again once it has changed and is stable again; it
counts as failed only if it still fails when the session stops, so a slow
transfer costs nothing; ``run_summary.json`` lists it apart until then
(``not_finished``). A file that fails on the settings, read whole (a
diameter in Å and no pixel size in its header), fails at once, and when
``stream.stop_after_settings_errors`` files have failed so, with the same
problem, before any was picked, the session stops with that error
(:func:`nothing_can_be_picked`). Every ``stream.update_every`` new micrographs
the dataset-level outputs (size statistics, size bins, extraction plan,
writers' files, ``run_summary.json``) are rewritten, so downstream jobs can
start on a growing dataset.

A micrograph that failed is also picked again once a file the stages read
for it changes or appears (a network's heatmap written after the
micrograph, a mask).

The run stops cleanly, with final dataset-level outputs, on Ctrl-C or
SIGTERM (the micrographs in progress are finished first), when the stop
file appears (every file already there is picked first), or after
``stream.idle_timeout`` seconds without new files.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

from lipoframe.logs import once_each
from lipoframe.records import InputError, file_stem

log = logging.getLogger("lipoframe")


@dataclass
class FolderWatcher:
    """Finds input files and reports those that have stopped changing.

    Parameters
    ----------
    specs : list of str or Path
        Folders, globs or files, as for ``input=``; a Path is one file as it
        is (see :func:`lipoframe.runner.expand_inputs`).
    suffixes : tuple of str
        File suffixes to take from folders.
    stable_polls : int
        A file is ready once its (size, mtime) was the same in this many
        consecutive scans (1 = ready when first seen).
    """

    specs: list[str | Path]
    suffixes: tuple[str, ...]
    stable_polls: int = 2
    #: files inside this folder are never inputs (the run's own outputs)
    exclude: Path | None = None
    #: path -> (stamp, number of consecutive scans with that stamp)
    _seen: dict[str, tuple[tuple[int, int], int]] = field(default_factory=dict)
    #: path -> stamp when it was handed out
    _handled: dict[str, tuple[int, int]] = field(default_factory=dict)
    #: files handed out earlier that the last scan no longer found (deleted or renamed away)
    gone: list[Path] = field(default_factory=list)
    #: (left out, kept) pairs of files reached twice that the user was told of
    _told_same: set = field(default_factory=set)

    def _scan(self) -> list[Path]:
        from lipoframe.runner import expand_inputs, outside_output

        same: list[tuple[Path, Path]] = []
        found = [p for p in expand_inputs(self.specs, self.suffixes, same_file=same) if not p.name.startswith(".")]
        # A file already handed out stays the one picked when another path to it appears later
        # (a link that sorts first): it is not gone, and its picks keep their name.
        keep = {}
        for left, kept in same:
            if str(left) in self._handled and str(kept) not in self._handled and kept not in keep:
                keep[kept] = left
        if keep:
            found = [keep.get(p, p) for p in found]
            same = [(kept if keep.get(kept) == left else left, keep.get(kept, kept)) for left, kept in same]
        for pair in same:  # told once per session, as a batch run tells it once
            if pair not in self._told_same:
                self._told_same.add(pair)
                log.warning("%s: the same file as %s, picked once", *pair)
        return outside_output(found, self.exclude)[0] if self.exclude is not None else found

    def poll(self) -> list[Path]:
        """Scan once; return the files that are complete and new (or changed since handed out).

        Files handed out earlier that this scan does not find any more are
        listed in :attr:`gone`; one that comes back is handed out again. A
        symbolic link whose target is missing is handed out once, as a
        batch run takes it (its reader reports it: file not found).
        """
        ready = []
        present = set()
        for path in self._scan():
            key = str(path)
            try:
                st = path.stat()
                stamp = (int(st.st_size), int(st.st_mtime_ns))
            except OSError:
                # A link left dangling by a deletion (Import/a.mrc -> ../raw/a.mrc): handed out once, by the
                # link's own time, so that it fails as 'file not found' as in a batch run, where it was
                # dropped without a word; handed out again when its target is back.
                try:
                    st = path.lstat()
                except OSError:  # deleted since the scan
                    continue
                if not stat.S_ISLNK(st.st_mode):
                    continue
                stamp = (-1, int(st.st_mtime_ns))
            present.add(key)
            old = self._seen.get(key)
            count = old[1] + 1 if old is not None and old[0] == stamp else 1
            self._seen[key] = (stamp, count)
            if count >= self.stable_polls and self._handled.get(key) != stamp:
                self._handled[key] = stamp
                ready.append(path)
        for key in set(self._seen) - present:  # deleted or renamed away
            del self._seen[key]
        self.gone = [Path(key) for key in sorted(set(self._handled) - present)]
        for path in self.gone:
            del self._handled[str(path)]
        return ready

    def present(self) -> list[Path]:
        """The files the last scan found."""
        return [Path(k) for k in self._seen]

    def unsettled(self) -> int:
        """Files seen in the last scan that are not handed out yet (still being written)."""
        return sum(self._handled.get(k) != stamp for k, (stamp, _) in self._seen.items())

    def pending(self) -> list[Path]:
        """The files in the input now that were not handed out as they are.

        Scans again (a file written since the last scan counts): new files,
        files still being written, files changed since they were handed out.
        Changes nothing, so the next :meth:`poll` is as it would have been.
        """
        out = []
        for path in self._scan():
            try:
                st = path.stat()
            except OSError:  # deleted since the scan, or a dangling link (handed out as it is)
                continue
            if self._handled.get(str(path)) != (int(st.st_size), int(st.st_mtime_ns)):
                out.append(path)
        return out


def _others(stamp: dict | None) -> dict | None:
    """The stamps of the files the stages read for a micrograph (its heatmap, its mask) in its input stamp
    (taken by size and modification time, ``digest=False``: checked at every scan)."""
    return None if stamp is None else stamp.get("extra", {})


def _existing_names(out_dir: Path) -> dict[str, str]:
    """input path -> output name of the micrographs an earlier run saved here."""
    from lipoframe.runner import WORK_DIR

    names = {}
    for info_path in sorted((out_dir / WORK_DIR).glob("*.json")):
        try:
            meta = json.loads(info_path.read_text())["meta"]
            names[os.path.abspath(meta["path"])] = str(meta["name"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return names


def assign_name(path: Path, taken: set[str]) -> str:
    """A safe output name for ``path`` not in ``taken``: the stem, else parent folders + stem, else a counter."""
    from lipoframe.runner import NAME_SEP, safe_name

    name = safe_name(file_stem(path))
    parts = path.resolve().parent.parts
    depth = 1
    while name in taken and depth <= len(parts):
        name = safe_name(NAME_SEP.join([*parts[-depth:], file_stem(path)]))
        depth += 1
    base, k = name, 2
    while name in taken:
        name = f"{base}_{k}"
        k += 1
    return name


def watched_specs(specs: list[str], suffixes: tuple[str, ...], status=log.info) -> list[str]:
    """``specs`` with each micrograph list (a RELION micrographs STAR, a ``.txt`` list) replaced by the files it lists.

    The listed files are given as :class:`~lipoframe.inputlists.ListedPath`
    strings, which :func:`lipoframe.runner.expand_inputs` takes as they are: a listed
    ``mic[1].mrc`` is that file, not a pattern that matches ``mic1.mrc``.

    A list is read once, when the session starts: its micrographs are picked
    as they appear (a listed file not there yet is waited for), but lines
    added to the list later are not seen. RELION rewrites a STAR in place,
    so a scan could read half of it and take the missing rows for deleted
    micrographs; watch the folder the micrographs are written to instead
    (``input=MotionCorr/job002/Movies/``) to take new ones.

    Raises
    ------
    InputError
        For a list that cannot be read, or that lists another list (one line naming it).
    """
    from lipoframe.inputlists import ListedPath, is_list_spec, list_paths

    out: list[str] = []
    for spec in specs:
        if not is_list_spec(spec, suffixes):
            out.append(spec)
            continue
        paths = list_paths(spec, suffixes)
        if not paths:
            raise InputError(f"{spec}: the list names no micrographs")
        status(f"{spec}: read once, {len(paths)} micrograph(s); micrographs added to it later are not picked "
               "(watch their folder to take new ones)")
        out.extend(ListedPath(p) for p in paths)
    return out


def nothing_can_be_picked(results, *, after: int) -> str:
    """The error that stops a session whose settings can pick none of its files, or ``""``.

    That is when none of ``results`` (:class:`~lipoframe.runner.MicResult`)
    was picked (or kept from an earlier session), and at least ``after``
    failed on the settings (:attr:`~lipoframe.runner.MicResult.settings`),
    all with the same problem: a diameter in Å for micrographs whose headers
    give no pixel size fails every one of them. Failures that may be copies
    still being written do not count, either way.

    Parameters
    ----------
    results : iterable of MicResult
        The session's micrographs so far.
    after : int
        How many failures on the same settings problem stop it (0 = never).

    Examples
    --------
    >>> from lipoframe.runner import MicResult
    >>> bad = [MicResult(f"m{i}", f"m{i}.mrc", "failed", error=f"m{i}.mrc: no pixel size", settings="no pixel size")
    ...        for i in range(3)]
    >>> nothing_can_be_picked(bad, after=3).split(":")[0]
    '3 micrographs failed on the settings (no pixel size) and none was picked'
    >>> nothing_can_be_picked(bad[:2], after=3), nothing_can_be_picked(bad, after=0)
    ('', '')
    >>> nothing_can_be_picked([*bad, MicResult("ok", "ok.mrc", "ok")], after=3)
    ''
    """
    results = list(results)
    if after < 1 or any(r.status != "failed" for r in results):
        return ""
    problems = [r.settings for r in results if r.settings]
    if len(problems) < after or len(set(problems)) != 1:
        return ""
    return (f"{len(problems)} micrographs failed on the settings ({problems[0]}) and none was picked: nothing can be "
            f"picked with these settings, so the session stops (stream.stop_after_settings_errors={after}); change "
            "them and start it again")


def watch_pipeline(cfg, out_dir, *, registry, pm=None, exclude=None):
    """Pick micrographs as they appear in ``cfg.input`` until stopped.

    Returns
    -------
    RunResult
        Of the whole session, after the final dataset-level outputs are written.

    Raises
    ------
    InputError
        If no input is given or the output folder cannot be written.
    """
    from lipoframe.merge import drop_merge_record
    from lipoframe.runner import (
        MicJob,
        build_stages,
        drop_outputs_of_other_settings,
        every_micrograph_failed,
        finish_run,
        given_pixel_size_notes,
        input_stamp,
        listed_pixel_size_notes,
        output_folder,
        print_timed,
        read_for_others,
        resolve_workers,
        run_jobs,
        sigterm_as_interrupt,
        write_manifest,
    )

    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    specs = list(cfg.input)
    if not specs:
        raise InputError("watch=true needs input=<folder or glob> to watch")
    s = cfg.stream
    stop_file = Path(s.stop_file).expanduser()
    if not stop_file.is_absolute():
        stop_file = out_dir / stop_file
    # On a terminal and in a log file alike (nohup, a batch job): one line per round of picks or update, none per scan.
    tell = cfg.runner.progress

    def status(msg: str) -> None:
        log.info(msg)
        if tell:
            print_timed(msg)

    with output_folder(out_dir, "run watch=true"), sigterm_as_interrupt():
        stages = build_stages(cfg, registry)
        watcher = FolderWatcher(watched_specs(specs, tuple(stages.readers_by_suffix), status), tuple(stages.readers_by_suffix),
                                s.stable_polls, exclude=Path(exclude) if exclude is not None else out_dir)
        fingerprint = cfg.per_micrograph_fingerprint()
        known = _existing_names(out_dir)  # keep the names of an earlier session
        path_name: dict[str, str] = {}
        results: dict[str, object] = {}
        #: abspath -> (path, input_stamp) of every micrograph handed out: one that failed is tried again,
        #: and one that was picked is picked again, when a file it needs (its heatmap or mask) changes
        handed: dict[str, tuple[Path, dict | None]] = {}
        listed = listed_pixel_size_notes(stages, cfg)  # the listed micrographs already there
        notes: list[str] = list(listed)
        header_checked = cfg.pixel_size is None  # pixel_size= against the headers: once, on the first files handed out
        dropped = drop_outputs_of_other_settings(out_dir, cfg)  # an earlier session's or run's with the same settings stay
        if dropped:
            log.warning(dropped)
            notes.append(dropped)
        told: set[str] = set()  # notes logged at an earlier update: once per session (the TIFF row flip)
        said: set[tuple[int, str]] = set()  # what the updates logged: each message once per session (logs.once_each)
        stopped: list[str] = []  # the session stopped on an error (nothing_can_be_picked): its error
        #: names of the micrographs whose file was there and failed (a copy stalled half-written?): each picked
        #: again when its file changes, and counted as failed only if it still fails when the session stops
        unfinished: set[str] = set()
        told_unfinished: set[str] = set()  # their errors told so far: each once per session
        since_update = 0
        last_new = time.monotonic()
        interrupted = False
        reason = ""
        undone: list[Path] = []  # handed out in the round Ctrl-C or SIGTERM stopped, and not picked

        def update(final: bool = False):
            ordered = sorted(path_name, key=Path)  # the order a batch run over the same folder uses
            names = [path_name[p] for p in ordered]
            write_manifest(out_dir, specs, [Path(p) for p in ordered], names, cfg, fingerprint, stages=stages)
            # The same warnings and notes hold at each update (the binning's min_picks, the pixel size, the range,
            # every micrograph failed): logged once, and again when their words change; the summary has them all.
            with once_each(said):
                # As a batch run: when every micrograph so far failed there is no dataset to write, and empty picks,
                # STAR files and plan would look like micrographs without particles (an earlier session's stay).
                errors = every_micrograph_failed(out_dir, list(results.values()))
                result = finish_run(
                    out_dir, names, list(results.values()), stages, cfg, pm=pm if final else None, t0=t0,
                    errors=[*errors, *stopped], notes=list(notes), interrupted=False,
                    workers=resolve_workers(cfg.runner.workers, max(1, len(results))),
                    listed_notes=listed, told=told, finalize=not errors, watched=True,
                    # Until the session stops, a file that failed may be a copy still being written: kept apart.
                    not_finished=() if final else unfinished,
                )
            if not errors:  # its results are in place: the folder is this session's, not an earlier merge's
                drop_merge_record(out_dir)
            return result, bool(errors)

        def tell_failure(r) -> None:
            """A failed micrograph whose file is there may be a copy still being written: told once, not yet a failure.

            Unless it failed on the settings, read whole (a diameter in Å and no pixel size in its header): no
            copy still being written does, so it is a failure at once, told as a batch run tells one.
            """
            if r.settings or not os.path.exists(r.path):  # or deleted since, a link left dangling: failed, as in a batch run
                unfinished.discard(r.name)
                log.error(r.error)
                return
            unfinished.add(r.name)
            if r.error not in told_unfinished:
                told_unfinished.add(r.error)
                first, *rest = r.error.split("\n", 1)
                log.warning("%s; not counted as failed yet: a file still being written (a stalled copy) is picked again "
                            "when it changes, and counts as failed if it still fails when the session stops%s",
                            first, "".join("\n" + line for line in rest))

        status(f"watching {', '.join(specs)} (stop with Ctrl-C or by creating {stop_file})")
        if stop_file.exists():
            # Left by an earlier session: without a word (no terminal: a batch job) this one would end at once.
            log.warning("the stop file %s is already there (an earlier session's?): this session picks the files "
                        "in the input now and stops; remove it to keep watching", stop_file)
        try:
            while True:
                stop_seen = stop_file.exists()
                ready = watcher.poll()
                theirs = {os.path.abspath(p) for p in read_for_others(watcher.present(), stages)}
                if theirs:  # heatmaps or masks next to the micrographs are not micrographs
                    ready = [p for p in ready if os.path.abspath(p) not in theirs]
                gone = list(watcher.gone)
                gone += [Path(k) for k in path_name if k in theirs]  # a map that arrived before its micrograph
                for path in gone:
                    # A batch run over the folder would not have it: a renamed file is picked
                    # again under its new name, and its picks must not be exported twice.
                    handed.pop(os.path.abspath(path), None)
                    name = path_name.pop(os.path.abspath(path), None)
                    if name is not None:
                        results.pop(name, None)
                        unfinished.discard(name)
                        notes[:] = [n for n in notes if not n.startswith(f"{path}:")]
                        why = ("read for another micrograph (a heatmap or mask)" if os.path.abspath(path) in theirs
                               else "no longer in the input (deleted or renamed)")
                        log.warning("%s: %s; its picks are left out", path, why)
                        since_update += 1
                queued = {os.path.abspath(p) for p in ready}
                for key, (path, stamp) in list(handed.items()):
                    # The micrograph itself is the watcher's; what the stages read for it is checked here.
                    # Only the other files count: a changed micrograph waits for the watcher's stable scans.
                    failed = getattr(results.get(path_name[key]), "status", "") == "failed"
                    needs_others = failed or (stamp is not None and "extra" in stamp)
                    if needs_others and key not in queued and _others(input_stamp(path, path_name[key], stages, digest=False)) != _others(stamp):
                        ready.append(path)  # its heatmap or mask has come, changed or gone since
                        queued.add(key)
                if ready and not header_checked:
                    # As a batch run checks its first inputs' headers (pixel_size= vs header, a warning and a note).
                    header_checked = True
                    given = given_pixel_size_notes(sorted(ready, key=Path), stages, cfg)
                    listed.extend(given)
                    notes.extend(given)
                if ready:
                    jobs = []
                    stamps = {}
                    for path in ready:
                        key = os.path.abspath(path)  # as the saved results record it
                        if key not in path_name:
                            taken = set(path_name.values())
                            name = known[key] if key in known and known[key] not in taken else assign_name(path, taken | set(known.values()))
                            path_name[key] = name
                            if name != file_stem(path):
                                notes.append(f"{path}: results are named {name!r} (another input has the same name or the name is not safe)")
                                log.warning(notes[-1])
                        jobs.append(MicJob(path, path_name[key], out_dir, fingerprint, cfg.runner.resume, cfg.runner.verbose))
                        stamps[key] = (path, input_stamp(path, path_name[key], stages, digest=False))  # before reading: a later change is new
                    resized: list[str] = []  # picked before at another pixel size: re-used, or picked again and why
                    done, interrupted = run_jobs(jobs, cfg, stages, progress=False, notes=resized, tell_failure=tell_failure)
                    listed.extend(resized)  # notes on the pixel size, as a batch run's
                    notes.extend(resized)
                    finished = {r.name for r in done}
                    undone = [job.path for job in jobs if job.name not in finished]
                    for r in done:
                        results[r.name] = r
                        if r.status != "failed":
                            unfinished.discard(r.name)
                        key = os.path.abspath(r.path)
                        if key in stamps:
                            handed[key] = stamps[key]
                    ok = sum(r.status != "failed" for r in done)
                    since_update += ok
                    last_new = time.monotonic()
                    n_failed = sum(r.status == "failed" and r.name not in unfinished for r in results.values())
                    n_unfinished = sum(r.status == "failed" and r.name in unfinished for r in results.values())
                    # A restarted session's first round finds the earlier session's micrographs done: they are
                    # kept, not picked (as the summary's `skipped`), and saying "picked" of them looked like work.
                    kept = sum(r.status == "skipped" for r in done)
                    status(f"picked {ok - kept} micrograph(s){f', kept {kept} done before' if kept else ''}; "
                           f"{len(results)} seen, {n_failed} failed"
                           f"{f', {n_unfinished} not finished yet? (picked again when changed)' if n_unfinished else ''}")
                    if interrupted:
                        reason = "interrupted"
                        break
                    error = nothing_can_be_picked(results.values(), after=s.stop_after_settings_errors)
                    if error:
                        # Told at once, not when someone looks: the session would wait for files it cannot pick.
                        log.error(error)
                        stopped.append(error)
                        reason = "nothing can be picked with these settings"
                        break
                if since_update >= s.update_every:
                    _, none_picked = update()
                    since_update = 0
                    status("every micrograph so far failed: no dataset-level outputs written" if none_picked
                           else "dataset-level outputs updated")
                if stop_seen and not watcher.unsettled():
                    reason = f"found the stop file {stop_file}"
                    break
                if s.idle_timeout and time.monotonic() - last_new > s.idle_timeout and not watcher.unsettled():
                    reason = f"no new files for {s.idle_timeout:g} s"
                    break
                time.sleep(s.poll_seconds)
        except KeyboardInterrupt:
            interrupted = True
            reason = "interrupted"
        if interrupted:
            # Ctrl-C or SIGTERM does not wait for the files still being written (the stop file and the idle
            # timeout do): say which files of the input this session's outputs leave out.
            try:
                # The files of the round it stopped that were not picked: ready, handed out, but never started
                # (a folder of finished micrographs watched from the start is one round); then those the
                # watcher still waits for.
                waiting = list(dict.fromkeys([*undone, *watcher.pending()]))
                theirs = {os.path.abspath(p) for p in read_for_others(list(dict.fromkeys(watcher.present() + waiting)), stages)}
                waiting = [p for p in waiting if os.path.abspath(p) not in theirs]
            except Exception as exc:  # noqa: BLE001 - only a note: the outputs come first
                log.warning("could not list the input files left unpicked: %s", exc)
                waiting = []
            if waiting:
                shown = ", ".join(str(p) for p in waiting[:3]) + (f" and {len(waiting) - 3} more" if len(waiting) > 3 else "")
                notes.append(f"{len(waiting)} file(s) of the input were not picked (not yet started, still being "
                             f"written, or not yet unchanged over stream.stable_polls scans, when the session was "
                             f"stopped): {shown}; the same command again picks them")
                log.info(notes[-1])  # printed with the summary's notes
        for name in sorted(unfinished):
            # Still failing as the session stops: a failure now, told as a batch run tells one.
            if getattr(results.get(name), "status", "") == "failed":
                log.error(results[name].error)
        status(f"stopping ({reason}); writing the dataset-level outputs")
        result, none_picked = update(final=True)
        if none_picked:
            pass  # no report either: an earlier session's (or run's) stays with its outputs
        elif cfg.runner.report:
            from lipoframe.runner import write_run_report

            write_run_report(out_dir, cfg=cfg, stages=stages, result=result)  # as a batch run's
        else:
            from lipoframe.report import drop_earlier_report

            drop_earlier_report(out_dir)
        return result
