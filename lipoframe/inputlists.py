"""Micrograph lists given as ``input=``: a RELION micrographs STAR, or a text file with one path per line.

``input=CtfFind/job003/micrographs_ctf.star`` (or
``MotionCorr/job002/corrected_micrographs.star``, any STAR with a
``rlnMicrographName`` column) and ``input=mics.txt`` (or ``.lst``) stand for
the micrographs they list, in the list's order.

RELION STAR
    The paths are relative to the RELION project folder, the folder RELION
    runs in (the one holding ``MotionCorr/``). It is found by walking up from
    the STAR file's folder to the first folder below which a listed relative
    path exists: that finds the grand-parent of ``Xxx/jobNNN/`` and also
    works for a STAR copied into the project or a folder of its own, whatever
    folder lipoframe runs in. When no listed file exists anywhere above the
    STAR, the current folder is tried (RELION itself resolves them there);
    when none is found there either, the grand-parent of a ``jobNNN/``
    folder, else the STAR's own folder, is taken, and the missing files are
    reported as not found.

    The pixel size of each micrograph is the STAR's: ``rlnMicrographPixelSize``
    of its optics group (RELION 3.1+ ``data_optics``; a STAR with only
    ``rlnMicrographOriginalPixelSize`` has not been binned, so that one), or
    ``rlnDetectorPixelSize`` × 10⁴ / ``rlnMagnification`` of a RELION 3.0
    STAR. RELION's own jobs take the STAR's value over the file header, and
    so does lipoframe; ``pixel_size=`` on the command line wins over both.
    A header that disagrees is one warning for the dataset
    (:func:`lipoframe.runner.listed_pixel_size_notes`). A later run into the
    same output given the same micrographs without the STAR (their folder)
    takes their headers' pixel size, as a new run would
    (:func:`lipoframe.runner.pixel_size_source_changed`).

Text list
    One micrograph per line, relative to the list file's folder (``~`` is the
    home folder); blank lines and lines starting with ``#`` are skipped. No
    globs or folders: each line is one file.

A listed path is one file, never a pattern: ``mic[1].mrc`` is that file,
also in ``watch`` mode. A list that lists another list (a ``.star``,
``.txt`` or ``.lst`` file) is refused (:func:`list_paths`): lists are read
one at a time, each given as an input of its own.

A listed file that does not exist is kept, so that it is reported as not
found like any named input, and the others are picked. A list that cannot
be read raises :class:`ListError`, one line naming the file.
"""

from __future__ import annotations

import glob
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from lipoframe.records import InputError

#: Suffixes of files that ``input=`` reads as lists of micrographs (unless a reader claims the suffix).
LIST_SUFFIXES = (".star", ".txt", ".lst")

#: Listed relative paths tried in each folder when looking for the RELION project.
_PROJECT_PROBES = 20

_JOB_FOLDER = re.compile(r"job\d+")


class ListError(InputError):
    """A micrograph list that cannot be read (the message names the file)."""


class ListedPath(str):
    """A path a micrograph list names, given on as an input (``watch``): one file as it is.

    :func:`lipoframe.runner.expand_inputs` never takes it for a folder, a
    pattern or a list: a listed ``mic[1].mrc`` is that file, not a pattern
    matching ``mic1.mrc``. Any other spec, a :class:`~pathlib.Path` too, is
    read as written on the command line.
    """

    __slots__ = ()


@dataclass
class MicrographList:
    """The micrographs of one list file.

    Attributes
    ----------
    source : Path
        The list file, as given.
    paths : list of Path
        The micrographs in list order, without repeats; relative when the
        list was given relative (to the current folder).
    pixel_sizes : dict
        ``os.path.abspath(path)`` -> Å/px, from a STAR's optics (empty for a text list).
    project : str or None
        The RELION project folder (absolute) of a STAR; None for a text list.
    """

    source: Path
    paths: list[Path]
    pixel_sizes: dict[str, float] = field(default_factory=dict)
    project: str | None = None


def is_list_spec(spec: str | os.PathLike, reader_suffixes: tuple[str, ...] = ()) -> bool:
    """Whether ``input=`` spec ``spec`` names a list file (see :data:`LIST_SUFFIXES`).

    A folder or a glob is never a list, nor is a file whose suffix a reader handles.
    """
    spec = os.path.expanduser(str(spec))
    suffix = Path(spec).suffix.lower()
    return suffix in LIST_SUFFIXES and suffix not in reader_suffixes and not os.path.isdir(spec) and not glob.has_magic(spec)


_CACHE: dict[tuple[str, str], tuple[tuple[int, int], MicrographList]] = {}


def read_list(spec: str | os.PathLike) -> MicrographList:
    """The micrographs listed in ``spec`` (read again only when the file changed).

    Raises
    ------
    ListError
        For a list that does not exist or cannot be read, or a STAR without
        ``rlnMicrographName``; the message is one line naming the file.
    """
    path = Path(os.path.expanduser(str(spec)))
    try:
        st = path.stat()
    except OSError:
        raise ListError(f"{spec}: micrograph list not found") from None
    if not path.is_file():
        raise ListError(f"{spec}: not a file (a micrograph list is a .star, .txt or .lst file)")
    key = (os.getcwd(), str(path))  # a relative list's paths are shown from the current folder
    stamp = (int(st.st_mtime_ns), int(st.st_size))
    hit = _CACHE.get(key)
    if hit is not None and hit[0] == stamp:
        return hit[1]
    out = _read_star(path) if path.suffix.lower() == ".star" else _read_text(path)
    _CACHE[key] = (stamp, out)
    return out


def list_paths(spec: str | os.PathLike, reader_suffixes: tuple[str, ...] = ()) -> list[Path]:
    """The micrographs listed in ``spec`` (:func:`read_list`); a list that names another list is refused.

    Lists are not read inside lists: a listed ``.star``, ``.txt`` or ``.lst``
    file (unless a reader claims its suffix) would otherwise be taken for a
    micrograph and fail as one with no reader.

    Raises
    ------
    ListError
        As :func:`read_list`, and for a list that names another list (the
        message names both).
    """
    paths = read_list(spec).paths
    for p in paths:
        suffix = p.suffix.lower()
        if suffix in LIST_SUFFIXES and suffix not in reader_suffixes:
            raise ListError(f"{spec}: lists {p}, itself a micrograph list; lists inside lists are not read "
                            "(give that list as an input of its own, or list its micrographs)")
    return paths


def _unique(paths: list[Path]) -> list[Path]:
    return list(dict.fromkeys(paths))


def _read_text(path: Path) -> MicrographList:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ListError(f"{path}: cannot read the micrograph list ({exc.strerror or exc})") from None
    if b"\0" in raw:
        raise ListError(f"{path}: not a text file (a micrograph list has one path per line)")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ListError(f"{path}: not UTF-8 text (a micrograph list has one path per line)") from None
    lines = [ln.strip() for ln in text.splitlines()]
    if lines and lines[0].startswith("#LSX"):
        raise ListError(f"{path}: an EMAN2 particle list (#LSX), not a list of micrographs (one path per line)")
    base = path.parent
    paths = []
    for ln in lines:
        if not ln or ln.startswith("#"):
            continue
        entry = os.path.expanduser(ln)
        paths.append(Path(entry) if os.path.isabs(entry) else base / entry)
    return MicrographList(path, _unique(paths))


def _star_blocks(path: Path) -> dict:
    import starfile

    try:
        # Micrograph names stay text ("0001" is not the number 1).
        return starfile.read(path, always_dict=True, parse_as_string=["rlnMicrographName"])
    except Exception as exc:  # noqa: BLE001 - starfile raises many types for a file it cannot parse
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ListError(f"{path}: not a STAR file lipoframe can read ({first})") from None


def _positive(value) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) and v > 0 else None


def _micrograph_table(path: Path, blocks: dict):
    import pandas as pd

    tables = {name: b for name, b in blocks.items() if isinstance(b, pd.DataFrame)}
    # A one-row block written without loop_ may come back as a dict.
    tables.update({name: pd.DataFrame([b]) for name, b in blocks.items() if isinstance(b, dict) and b})
    mics = next((t for name, t in tables.items() if name == "micrographs" and "rlnMicrographName" in t.columns), None)
    mics = mics if mics is not None else next((t for t in tables.values() if "rlnMicrographName" in t.columns), None)
    if mics is None:
        if any("rlnMicrographMovieName" in t.columns for t in tables.values()):
            raise ListError(f"{path}: a movies STAR (rlnMicrographMovieName), not micrographs; give the motion-corrected "
                            "ones (MotionCorr/jobNNN/corrected_micrographs.star or CtfFind/jobNNN/micrographs_ctf.star)")
        raise ListError(f"{path}: no rlnMicrographName column, so not a RELION micrographs STAR "
                        "(such as CtfFind/jobNNN/micrographs_ctf.star)")
    if "rlnMicrographCoordinates" in mics.columns:
        raise ListError(f"{path}: a RELION coordinate list (rlnMicrographCoordinates), not a micrographs STAR; "
                        "give the micrographs STAR the picks were made on (such as CtfFind/jobNNN/micrographs_ctf.star)")
    optics = next((t for name, t in tables.items() if t is not mics and "rlnOpticsGroup" in t.columns
                   and ({"rlnMicrographPixelSize", "rlnMicrographOriginalPixelSize"} & set(t.columns))), None)
    return mics, optics


def _pixel_sizes(mics, optics) -> list[float | None]:
    """Å/px of each row of the micrographs table (None where the STAR gives none)."""
    n = len(mics)
    if "rlnMicrographPixelSize" in mics.columns:  # a per-micrograph value, if a program wrote one
        return [_positive(v) for v in mics["rlnMicrographPixelSize"]]
    if optics is not None:
        col = "rlnMicrographPixelSize" if "rlnMicrographPixelSize" in optics.columns else "rlnMicrographOriginalPixelSize"
        by_group = {str(g).strip(): _positive(v) for g, v in zip(optics["rlnOpticsGroup"], optics[col])}
        if "rlnOpticsGroup" in mics.columns:
            return [by_group.get(str(g).strip()) for g in mics["rlnOpticsGroup"]]
        if len(by_group) == 1:
            return [next(iter(by_group.values()))] * n
        return [None] * n
    if {"rlnDetectorPixelSize", "rlnMagnification"} <= set(mics.columns):  # RELION 3.0: µm and magnification
        out = []
        for det, mag in zip(mics["rlnDetectorPixelSize"], mics["rlnMagnification"]):
            d, m = _positive(det), _positive(mag)
            out.append(d * 1e4 / m if d and m else None)
        return out
    return [None] * n


def _ancestors(folder: Path) -> list[str]:
    """``folder`` and the folders above it, absolute."""
    out = [os.path.abspath(folder)]
    while os.path.dirname(out[-1]) != out[-1]:
        out.append(os.path.dirname(out[-1]))
    return out


def find_project(star: Path, names: list[str]) -> str:
    """The RELION project folder (absolute) of the STAR ``star`` listing ``names`` (see the module's notes)."""
    relative = [n for n in names if not os.path.isabs(n)][:_PROJECT_PROBES]
    candidates = _ancestors(star.parent) + [os.getcwd()]
    for folder in candidates:
        if any(os.path.lexists(os.path.join(folder, n)) for n in relative):
            return folder
    parent = os.path.abspath(star.parent)
    # Xxx/jobNNN/the.star: the project holds Xxx/
    return os.path.dirname(os.path.dirname(parent)) if _JOB_FOLDER.fullmatch(os.path.basename(parent)) else parent


def _shown(folder: str, relative_to_cwd: bool) -> str:
    """``folder`` as messages show it: relative to the current folder when the list was given relative."""
    return os.path.relpath(folder) if relative_to_cwd else folder


def _read_star(path: Path) -> MicrographList:
    mics, optics = _micrograph_table(path, _star_blocks(path))
    names = [str(n).strip() for n in mics["rlnMicrographName"]]
    sizes = _pixel_sizes(mics, optics)
    project = find_project(path, names)
    shown = _shown(project, not path.is_absolute())
    paths, pixel_sizes = [], {}
    for name, px in zip(names, sizes):
        if not name:
            continue
        p = Path(name) if os.path.isabs(name) else Path(shown, name)
        paths.append(p)
        if px is not None:
            pixel_sizes.setdefault(os.path.abspath(p), px)
    return MicrographList(path, _unique(paths), pixel_sizes, project)


def listed_pixel_size(lists: tuple[str, ...], path: str | os.PathLike) -> float | None:
    """Å/px that one of the micrograph lists ``lists`` gives ``path``; None when none does (or a list is unreadable)."""
    key = os.path.abspath(path)
    for spec in lists:
        try:
            px = read_list(spec).pixel_sizes.get(key)
        except InputError:
            continue
        if px is not None:
            return px
    return None


def _star_specs(specs, reader_suffixes: tuple[str, ...]) -> list[str]:
    """The RELION micrographs STARs among ``specs`` (list specs ending in ``.star``)."""
    return [str(s) for s in specs if is_list_spec(s, reader_suffixes) and Path(str(s)).suffix.lower() == ".star"]


def relion_star(specs, reader_suffixes: tuple[str, ...] = ()) -> str | None:
    """The absolute path of the one RELION micrographs STAR among ``specs``; None when there is none, or several.

    It is the ``--i`` of the RELION extraction commands: Extract matches the
    coordinate lists' ``rlnMicrographName`` against the STAR's.
    """
    found = {os.path.abspath(os.path.expanduser(s)) for s in _star_specs(specs, reader_suffixes)}
    return found.pop() if len(found) == 1 else None


def relion_project(specs, reader_suffixes: tuple[str, ...] = ()) -> str | None:
    """The RELION project folder of the STAR lists among ``specs``; None when there is none, or they disagree."""
    found = set()
    for spec in _star_specs(specs, reader_suffixes):
        try:
            project = read_list(spec).project
        except InputError:
            continue
        if project:
            found.add(project)
    return found.pop() if len(found) == 1 else None
