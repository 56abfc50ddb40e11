"""Built-in writers: CSV, RELION STAR, cryoSPARC, crYOLO CBOX and EMAN .box.

Every writer converts from lipoframe's one convention (``x_px`` = column,
``y_px`` = row, 0-indexed pixel centres of the input array) to its format's
convention, and only here: :func:`export_view` applies the one frame change
(:func:`lipoframe.io.coords.export_frame`, rows flipped for TIFF inputs), and
the ``lipoframe.io`` modules format the files. See docs/export.md.

Output layout below the output folder::

    relion/autopick.star                 RELION 4/5 coordinate list (all exported picks)
    relion/coords/<mic>_autopick.star    one coordinate file per micrograph
    cryosparc/particles.cs               cryoSPARC particle dataset (location + pick_stats)
    cryosparc/particles.star             STAR for cryoSPARC "Import Particle Stack"
    cbox/<mic>.cbox                      crYOLO / napari-boxmanager
    box/<mic>.box                        EMAN .box
    bins/bin<k>/autopick.star            the same per size bin k (accepted picks of that bin),
    bins/bin<k>/coords/...               for extraction with the bin's box size
    bins/bin<k>/cryosparc/...
    bins/bin<k>/box/...
"""

from __future__ import annotations

import logging
import os
import shlex
import string
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from lipoframe import schema
from lipoframe.hookspecs import hookimpl
from lipoframe.io import cbox as cbox_io
from lipoframe.io import cryosparc as cs_io
from lipoframe.io import eman as eman_io
from lipoframe.io import relion as relion_io
from lipoframe.io.atomic import atomic_path, safe_child, write_bytes, write_text
from lipoframe.io.coords import export_frame, nearest_pixel, on_pixel_centres
from lipoframe.plan import ExtractionPlan, SizeBin, round_up_box
from lipoframe.records import MicrographMeta, PickContext, file_suffix
from lipoframe.stages import Writer

log = logging.getLogger("lipoframe")


def exported(picks: pd.DataFrame, ctx: PickContext) -> pd.DataFrame:
    """The picks a writer should export: accepted ones unless ``export_rejected``."""
    if ctx.export_rejected or schema.ACCEPTED not in picks.columns:
        return picks
    return picks.loc[picks[schema.ACCEPTED].astype(bool)]


def floats_formatted(df: pd.DataFrame, float_format: str) -> pd.DataFrame:
    """``df`` with its floating-point columns as text, as ``to_csv(float_format=...)`` writes them.

    ``to_csv`` of the result without ``float_format`` gives the same text as
    ``df.to_csv(float_format=float_format)``: each float ``float_format % value``,
    NaN the empty field. pandas formats every value through two Python calls
    and a missing-value check; one pass over each column's list is about 5x
    faster (a dataset's ``picks.csv`` has millions of floats).
    """
    floats = [i for i, dtype in enumerate(df.dtypes) if isinstance(dtype, np.dtype) and dtype.kind == "f"]
    if not floats:
        return df
    out = df.copy(deep=False)
    for i in floats:
        values = df.iloc[:, i].to_numpy()
        text = np.array([float_format % v for v in values.tolist()], dtype=object)
        text[np.isnan(values)] = ""
        out.isetitem(i, pd.Series(text, index=df.index, dtype=object))  # object: not converted to pandas' string type
    return out


def write_csv(df: pd.DataFrame, path: Path, *, float_format: str = "%.2f") -> Path:
    with atomic_path(path) as tmp:
        floats_formatted(df, float_format).to_csv(tmp, index=False)
    return path


@dataclass
class CsvWriterParams:
    """Combined ``picks.csv`` plus one ``csv/<micrograph>.csv`` per micrograph.

    per_micrograph: also write one file per micrograph.
    float_format: printf format of floating-point columns.
    """

    per_micrograph: bool = True
    float_format: str = "%.2f"

    def __post_init__(self) -> None:
        # As pandas will use it: it must write a number as a number.
        try:
            text = pd.DataFrame({"x": [1.5]}).to_csv(index=False, header=False, float_format=self.float_format).strip()
            float(text)
        except (TypeError, ValueError, KeyError, IndexError):
            raise ValueError(f"writer.csv.float_format must be a printf format of one number (e.g. %.3f), got {self.float_format!r}") from None


class CsvWriter(Writer):
    name = "csv"
    Params = CsvWriterParams
    summary = "picks.csv (all micrographs) and csv/<micrograph>.csv"

    def write(self, picks, metas: dict[str, MicrographMeta], plan: ExtractionPlan, out_dir: Path, ctx: PickContext) -> list[Path]:
        table = exported(picks, ctx)
        # Format the table once; each micrograph's file is the header and its
        # own lines (what to_csv of its rows would give, without the fixed
        # cost of one to_csv per micrograph).
        text = floats_formatted(table, self.params.float_format).to_csv(index=False)
        written = [write_bytes(safe_child(out_dir, "picks.csv"), text.encode("utf-8"))]
        if self.params.per_micrograph:
            stems = file_stems(metas)
            lines = text.splitlines(keepends=True)
            if len(lines) == len(table) + 1:
                rows = pd.Series(np.arange(len(table))).groupby(table[schema.MICROGRAPH].to_numpy(), sort=False).indices
                for name in metas:
                    body = "".join(lines[i + 1] for i in rows.get(name, ()))
                    written.append(write_bytes(safe_child(out_dir, "csv", f"{stems[name]}.csv"), (lines[0] + body).encode("utf-8")))
            else:  # a field spans lines: format each micrograph on its own
                groups = dict(tuple(table.groupby(schema.MICROGRAPH, sort=False, observed=True)))
                for name in metas:
                    sub = groups.get(name, table.iloc[0:0])
                    written.append(write_csv(sub, safe_child(out_dir, "csv", f"{stems[name]}.csv"), float_format=self.params.float_format))
        return written


# ---------------------------------------------------------------------------
# Shared preparation
# ---------------------------------------------------------------------------
_ALLOWED = frozenset(string.ascii_letters + string.digits + "._+-")


def _safe_stem(name) -> str:
    """``name`` with characters outside ``[A-Za-z0-9._+-]`` as ``_``, no leading dots, never empty."""
    return "".join(c if c in _ALLOWED else "_" for c in str(name)).lstrip(".") or "micrograph"


def file_stems(names) -> dict[str, str]:
    """A safe, unique file stem for each micrograph name.

    Path separators, blanks and other characters outside ``[A-Za-z0-9._+-]``
    become ``_``; leading dots are dropped (so ``..`` cannot climb out of the
    output folder and no hidden files appear); clashes get ``_2``, ``_3``...
    Every path is still checked with :func:`~lipoframe.io.atomic.safe_child`.
    """
    out: dict[str, str] = {}
    used: set[str] = set()
    for name in names:
        stem = _safe_stem(name)
        candidate, k = stem, 1
        while candidate.lower() in used:
            k += 1
            candidate = f"{stem}_{k}"
        used.add(candidate.lower())
        out[name] = candidate
    return out


def _fallback_box(diameter: np.ndarray, plan: ExtractionPlan) -> np.ndarray:
    """Box for picks outside every bin: the box of the nearest bin by diameter."""
    if not plan.bins:
        return np.array([round_up_box(1.5 * max(float(d), 1.0), rounding="even") for d in diameter], dtype=np.int64)
    lo = np.array([b.d_min_px for b in plan.bins])
    hi = np.array([b.d_max_px for b in plan.bins])
    boxes = np.array([b.box_px for b in plan.bins], dtype=np.int64)
    gap = np.maximum(lo[None, :] - diameter[:, None], 0) + np.maximum(diameter[:, None] - hi[None, :], 0)
    return boxes[np.argmin(gap, axis=1)]


def export_view(picks: pd.DataFrame, metas: dict[str, MicrographMeta], plan: ExtractionPlan) -> pd.DataFrame:
    """The picks in the exported frame, with their size bin and box size.

    Parameters
    ----------
    picks : DataFrame
        Picks to export (already filtered by :func:`exported`).
    metas : dict
        Metadata of every micrograph, by name.
    plan : ExtractionPlan

    Returns
    -------
    view : DataFrame
        ``micrograph``, ``x``, ``y`` (exported frame: rows flipped for TIFF,
        sub-pixel kept, a centre in the outer half of an edge pixel moved
        to that pixel's centre: :func:`~lipoframe.io.coords.on_pixel_centres`),
        ``z`` (if the table has ``z_px``; kept on the planes alike), ``diameter_px``,
        ``score`` (finite), ``size_bin`` (-1 outside every bin), ``box_px``
        (the bin's box; the nearest bin's for picks outside every bin) and
        ``accepted``.

    Raises
    ------
    ValueError
        If a pick's micrograph has no metadata.
    """
    names = picks[schema.MICROGRAPH].astype(str).to_numpy() if len(picks) else np.array([], dtype=str)
    missing = sorted(set(names) - set(metas))
    if missing:
        raise ValueError(f"picks of micrograph(s) {missing[:3]} have no metadata; cannot convert their coordinates")
    ny = np.array([metas[n].shape[-2] for n in names], dtype=np.int64)
    nx = np.array([metas[n].shape[-1] for n in names], dtype=np.int64)
    flip = np.array([metas[n].flip_y for n in names], dtype=bool)
    x = picks[schema.X].to_numpy(dtype=float)
    y = picks[schema.Y].to_numpy(dtype=float)
    xe, ye = export_frame(x, y, ny=ny, flip_y=flip)
    # A centre on the image's outer edge (x = nx - 0.5) would be written as pixel nx, off the image.
    xe, ye = on_pixel_centres(xe, nx), on_pixel_centres(ye, ny)
    d = picks[schema.DIAMETER].to_numpy(dtype=float)
    score = picks[schema.SCORE].to_numpy(dtype=float) if schema.SCORE in picks else np.zeros(len(picks))
    if not np.all(np.isfinite(score)):
        log.warning("%d pick(s) have a non-finite score; exported with score 0", int((~np.isfinite(score)).sum()))
        score = np.where(np.isfinite(score), score, 0.0)
    accepted = picks[schema.ACCEPTED].to_numpy(dtype=bool) if schema.ACCEPTED in picks else np.ones(len(picks), dtype=bool)
    if schema.SIZE_BIN in picks:
        size_bin = picks[schema.SIZE_BIN].to_numpy(dtype=np.int64)
    else:
        size_bin = np.where(accepted, plan.assign(d), schema.REJECTED_BIN)
    by_index = {b.index: b.box_px for b in plan.bins}
    known = np.array([i in by_index for i in size_bin.tolist()], dtype=bool)
    box = np.zeros(len(picks), dtype=np.int64)
    box[known] = [by_index[i] for i in size_bin[known].tolist()]
    if (~known).any():
        box[~known] = _fallback_box(d[~known], plan)
        size_bin = np.where(known, size_bin, schema.REJECTED_BIN)
    view = pd.DataFrame({"micrograph": names, "x": xe, "y": ye})
    if schema.Z in picks:
        z = picks[schema.Z].to_numpy(dtype=float)
        nz = np.array([metas[n].shape[-3] if len(metas[n].shape) == 3 else np.inf for n in names])
        view["z"] = np.clip(z, 0.0, nz - 1.0)  # as x and y: a plane's outer edge belongs to it
    view["diameter_px"] = d
    view["score"] = score
    view["size_bin"] = size_bin
    view["box_px"] = box
    view["accepted"] = accepted
    return view


def _groups(view: pd.DataFrame, metas: dict[str, MicrographMeta]):
    """(name, meta, rows) for every micrograph in ``metas`` order.

    ``rows`` maps each column of ``view`` to a NumPy array of that
    micrograph's picks (empty arrays for a micrograph without picks).
    """
    cols = {c: view[c].to_numpy() for c in view.columns}
    index = view.groupby("micrograph", sort=False).indices if len(view) else {}
    empty = np.empty(0, dtype=np.int64)
    for name, meta in metas.items():
        rows = index.get(name, empty)
        yield name, meta, {c: a[rows] for c, a in cols.items()}


def _bin_views(view: pd.DataFrame, plan: ExtractionPlan):
    """(size_bin, accepted picks of that bin) for every bin of the plan."""
    for b in plan.bins:
        yield b, view[view["accepted"].to_numpy() & (view["size_bin"].to_numpy() == b.index)]


def bin_dir(out_dir: Path, size_bin: SizeBin, *parts: str) -> Path:
    """``<out>/bins/bin<k>/<parts>`` (k = index + 1)."""
    return safe_child(out_dir, "bins", size_bin.label, *parts)


# ---------------------------------------------------------------------------
# Micrograph names written into list files
# ---------------------------------------------------------------------------
NAME_FIELDS = ("path", "dir", "name", "stem", "ext")


def _check_template(key: str, template: str) -> None:
    try:
        template.format(**{f: "x" for f in NAME_FIELDS})
    except (KeyError, IndexError, ValueError, AttributeError) as exc:
        raise ValueError(
            f"{key} must be a template using only {{path}}, {{dir}}, {{name}}, {{stem}}, {{ext}}; got {template!r} ({exc})"
        ) from None
    # Checked here, before any micrograph is picked: the writer could not write such a name.
    if not template.strip() or "\n" in template or "\r" in template:
        raise ValueError(f"{key} must give each micrograph a name (not empty, one line), got {template!r}")


def micrograph_fields(meta: MicrographMeta, *, strip_suffix: str = "", project_dir: str = "") -> dict[str, str]:
    """Template fields of a micrograph's input path.

    ``stem`` is the file name without extension and without ``strip_suffix``
    (e.g. ``_denoised``); ``name`` = stem + ext; ``path`` = dir/name, relative
    to ``project_dir`` when given, else absolute; ``dir`` its folder.
    """
    raw = meta.path or meta.name
    p = Path(raw)
    ext = p.name[len(p.name) - len(file_suffix(p)):] if meta.path and file_suffix(p) else ""  # as written (.MRC), .mrc.gz whole
    stem = p.name[: len(p.name) - len(ext)] if ext else p.name
    if strip_suffix and stem.endswith(strip_suffix) and len(stem) > len(strip_suffix):
        stem = stem[: -len(strip_suffix)]
    folder = os.path.abspath(p.parent) if meta.path else ""
    if folder and project_dir:
        folder = os.path.relpath(folder, os.path.abspath(os.path.expanduser(project_dir)))
    name = stem + ext
    path = os.path.join(folder, name) if folder and folder != "." else name
    return {"path": path, "dir": "" if folder == "." else folder, "name": name, "stem": stem, "ext": ext}


def _project_path(path: Path, project: str) -> str:
    """``path`` (resolved) relative to ``project`` (resolved, see :func:`_real_project`) when given, else absolute.

    Both sides are resolved: RELION opens the path from the project, and the
    system follows ``..`` from where a folder really is, so a path made
    between a resolved file and a project reached through a symbolic link
    (``/data/proj`` -> ``/mnt/disk/proj``) would name another place.
    """
    if project:
        return os.path.relpath(path, project)
    return str(path)


def _real_project(project_dir: str) -> str:
    """``project_dir`` with ``~`` expanded and symbolic links resolved; ``""`` stays ``""``."""
    return os.path.realpath(os.path.expanduser(project_dir)) if project_dir else ""


def _name_list(items, limit: int = 5) -> str:
    """``a, b, c`` (at most ``limit`` items, then ``... (N more)``)."""
    items = [str(i) for i in items]
    more = f", ... ({len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def _folder_prefixes(metas: list[MicrographMeta], keys: list[str]) -> list[str]:
    """Prefixes that tell apart micrographs whose exported names are equal.

    The shortest tail of the input files' folders that differs for every
    micrograph (``a/mic.mrc``, ``b/mic.mrc`` -> ``a``, ``b``; deeper folders
    are joined with :data:`lipoframe.runner.NAME_SEP`, as the runner names
    results); the micrographs' own (unique) file stems ``keys`` when their
    folders cannot tell them apart (same folder, or inputs without a path).
    """
    from lipoframe.runner import NAME_SEP

    parents = [Path(os.path.abspath(m.path)).parent.parts[1:] if m.path else () for m in metas]
    for depth in range(1, max(len(pp) for pp in parents) + 1):
        cand = [_safe_stem(NAME_SEP.join(pp[max(0, len(pp) - depth):])) if pp else "" for pp in parents]
        if all(cand) and len(set(cand)) == len(cand):
            return cand
    return list(keys)


def cryosparc_micrograph_names(metas: dict[str, MicrographMeta], template: str, *, strip_suffix: str = "",
                               told: set | None = None) -> dict[str, str]:
    """The name each micrograph gets in the cryoSPARC export, unique per micrograph.

    ``template`` is filled with :func:`micrograph_fields`. Different
    micrographs whose names come out equal (``dup/a/mic.mrc`` and
    ``dup/b/mic.mrc`` with ``{name}``) would be merged into one micrograph by
    cryoSPARC and by ``location/micrograph_uid``, so their file names get a
    prefix from :func:`_folder_prefixes` (``a-mic.mrc``, ``b-mic.mrc``).
    cryoSPARC links picks to exposures by file name, so the clash is logged
    with the input files and the names written, for the user to make the two
    sides agree. Names that differ only in their folders (e.g. with
    ``{path}``) are kept but logged too: their file names are still equal.

    told : set, optional
        The messages logged by earlier calls (a watch session writes again
        every few micrographs): each is logged once; the new ones are added.

    Returns
    -------
    names : dict
        Exported name by micrograph key (the keys of ``metas``).
    """
    from lipoframe.runner import NAME_SEP

    def warn(message: str) -> None:
        if told is None or message not in told:
            log.warning(message)
            if told is not None:
                told.add(message)

    names = {k: template.format(**micrograph_fields(m, strip_suffix=strip_suffix)) for k, m in metas.items()}
    groups: dict[str, list[str]] = {}
    for k, nm in names.items():
        groups.setdefault(nm, []).append(k)
    stems = file_stems(metas)
    taken = {nm for nm, keys in groups.items() if len(keys) == 1}
    renamed = []
    for nm, keys in groups.items():
        if len(keys) < 2:
            continue
        head, sep, tail = nm.rpartition("/")
        prefixes = _folder_prefixes([metas[k] for k in keys], [stems[k] for k in keys])
        for k, pre in zip(keys, prefixes):
            new, count = f"{head}{sep}{pre}{NAME_SEP}{tail}", 1
            while new in taken:  # the new name is another micrograph's: count up
                count += 1
                root, ext = os.path.splitext(tail)
                new = f"{head}{sep}{pre}{NAME_SEP}{root}_{count}{ext}"
            taken.add(new)
            names[k] = new
        renamed.append((nm, keys))
    if renamed:
        warn(
            "writer cryosparc: different micrographs would get the same name, and cryoSPARC would take them for "
            "one micrograph; they are written under these names instead: %s. cryoSPARC links picks to exposures "
            "by file name: before importing, give these micrographs the same names in cryoSPARC (e.g. import "
            "symlinks with these names), or set writer.cryosparc.micrograph_name to a template that gives the "
            "names cryoSPARC has" % _name_list(
                f"{metas[k].path or k} -> {names[k]}" for _, keys in renamed for k in keys
            ),
        )
    by_file: dict[str, list[str]] = {}
    for k, nm in names.items():
        by_file.setdefault(nm.rpartition("/")[2], []).append(k)
    shared = [keys for keys in by_file.values() if len(keys) > 1]
    if shared:
        warn(
            "writer cryosparc: different micrographs have the same file name, so cryoSPARC's Import Particle "
            "Stack, which matches rlnMicrographName by file name, cannot tell them apart: %s. Give them different "
            "file names (writer.cryosparc.micrograph_name), or link the picks with cryosparc-tools"
            % _name_list(" and ".join(f"{metas[k].path or k} ({names[k]})" for k in keys) for keys in shared),
        )
    return names


# ---------------------------------------------------------------------------
# RELION
# ---------------------------------------------------------------------------
@dataclass
class StarWriterParams:
    """RELION coordinate STAR per micrograph plus the RELION 4/5 list file, also per size bin.

    micrograph_name: template of ``rlnMicrographName`` in the list file; it must
        equal the name in your RELION micrographs STAR. Fields: {path}, {dir},
        {name}, {stem}, {ext} of the input file, e.g.
        ``MotionCorr/job002/Movies/{stem}.mrc``.
    strip_suffix: removed from the end of the input file stem (e.g. ``_denoised``).
    project_dir: RELION project folder; paths in the list file are written
        relative to it (else absolute). Not set, a run from a RELION
        micrographs STAR (``input=CtfFind/job003/micrographs_ctf.star``)
        takes the STAR's project (see :func:`lipoframe.runner.star_project_dir`).
    subpixel: write sub-pixel coordinates (RELION truncates them; default
        writes the nearest pixel).
    per_bin: also write ``bins/bin<k>/autopick.star`` and ``coords/`` for each size bin.
    """

    micrograph_name: str = "{path}"
    strip_suffix: str = ""
    project_dir: str = ""
    subpixel: bool = False
    per_bin: bool = True

    def __post_init__(self) -> None:
        _check_template("writer.star.micrograph_name", self.micrograph_name)
        if "/" in self.strip_suffix:
            raise ValueError(f"writer.star.strip_suffix must not contain '/', got {self.strip_suffix!r}")


class StarWriter(Writer):
    """RELION AutoPick-style coordinate files and the ``--coord_list`` list file."""

    name = "star"
    Params = StarWriterParams
    summary = "RELION: relion/autopick.star + coords/<mic>_autopick.star, per size bin in bins/bin<k>/"

    def write(self, picks, metas, plan, out_dir, ctx) -> list[Path]:
        view = export_view(exported(picks, ctx), metas, plan)
        stems = file_stems(metas)
        names = self._micrograph_names(metas)
        written = self._write_set(view, metas, stems, names, safe_child(out_dir, relion_io.RELION_DIR))
        if self.params.per_bin:
            for b, sub in _bin_views(view, plan):
                written += self._write_set(sub, metas, stems, names, bin_dir(out_dir, b))
        return written

    def _micrograph_names(self, metas) -> dict[str, str]:
        """``rlnMicrographName`` of each micrograph; warns when different micrographs share one.

        Extract (``--coord_list``) maps each name to one coordinate file, so
        of micrographs written under the same name only one would keep its
        picks, without a word from RELION.
        """
        p = self.params
        names = {k: p.micrograph_name.format(**micrograph_fields(m, strip_suffix=p.strip_suffix, project_dir=p.project_dir))
                 for k, m in metas.items()}
        groups: dict[str, list[str]] = {}
        for k, nm in names.items():
            groups.setdefault(nm, []).append(k)
        # A watch session writes again every few micrographs: each clash is told once.
        told = self.__dict__.setdefault("_told_clashes", {})
        shared = [(nm, keys) for nm, keys in groups.items() if len(keys) > 1 and told.get(nm) != keys]
        told.update(shared)
        if shared:
            log.warning(
                "writer star: different micrographs get the same rlnMicrographName, and RELION's Extract would take "
                "the picks of only one of them (it maps each name to one coordinate file): %s. Set "
                "writer.star.micrograph_name (and strip_suffix) so that each micrograph gets the name it has in "
                "your micrographs STAR",
                _name_list(f"{nm} <- " + " and ".join(str(metas[k].path or k) for k in keys) for nm, keys in shared),
            )
        return names

    def _write_set(self, view, metas, stems, names, folder: Path) -> list[Path]:
        p = self.params
        project = _real_project(p.project_dir)
        mic_names, coord_files, written = [], [], []
        for name, meta, rows in _groups(view, metas):
            x, y = rows["x"], rows["y"]
            z = rows["z"] if "z" in rows else None
            if not p.subpixel:
                x, y = nearest_pixel(x).astype(float), nearest_pixel(y).astype(float)
                z = None if z is None else nearest_pixel(z).astype(float)
            text = relion_io.coordinate_star(
                x, y, z=z,
                class_number=rows["size_bin"] + 1,
                fom=rows["score"],
                diameter_px=rows["diameter_px"],
            )
            path = write_text(safe_child(folder, relion_io.COORDS_DIR, stems[name] + relion_io.COORDINATE_SUFFIX), text)
            written.append(path)
            mic_names.append(names[name])
            coord_files.append(_project_path(path, project))
        written.append(write_text(safe_child(folder, relion_io.LIST_FILE), relion_io.coordinate_list_star(mic_names, coord_files)))
        if "z" in view.columns:
            written += self._write_tomo(view, metas, folder)
        return written

    def _write_tomo(self, view, metas, folder: Path) -> list[Path]:
        """RELION 5 tomography table: rlnTomoName + centred coordinates in Å."""
        names = view["micrograph"].to_numpy()
        missing = sorted({n for n in names if not (metas[n].pixel_size and len(metas[n].shape) == 3)})
        if missing:
            log.warning("star: no RELION 5 tomography table (%s): volumes without a pixel size: %s",
                        relion_io.TOMO_PARTICLES_FILE, ", ".join(missing))
            return []
        tomo = [metas[n].name for n in names]
        text = relion_io.tomo_particles_star(
            tomo, view["x"], view["y"], view["z"],
            shapes=[metas[n].shape for n in names],
            pixel_sizes=[metas[n].pixel_size for n in names],
            class_number=view["size_bin"].to_numpy() + 1,
            fom=view["score"],
            diameter_px=view["diameter_px"],
        )
        return [write_text(safe_child(folder, relion_io.TOMO_PARTICLES_FILE), text)]


# ---------------------------------------------------------------------------
# cryoSPARC
# ---------------------------------------------------------------------------
@dataclass
class CryosparcWriterParams:
    """cryoSPARC particle dataset (.cs) and a STAR for "Import Particle Stack", also per size bin.

    micrograph_name: template of ``location/micrograph_path`` and of
        ``rlnMicrographName`` in the STAR (cryoSPARC matches exposures by file
        name). Fields: {path}, {dir}, {name}, {stem}, {ext}. Different
        micrographs whose names come out equal get the shortest tail of their
        folders in front of the file name (``a/mic.mrc``, ``b/mic.mrc`` ->
        ``a-mic.mrc``, ``b-mic.mrc``), with a warning naming the files.
    strip_suffix: removed from the end of the input file stem.
    exp_group_id: ``location/exp_group_id`` of every particle.
    invert_y: store ``center_y_frac`` of the row flipped (``ny - 1 - y``); use
        it if Inspect Picks shows the picks mirrored top-bottom.
    per_bin: also write ``bins/bin<k>/cryosparc/`` for each size bin.
    """

    micrograph_name: str = "{name}"
    strip_suffix: str = ""
    exp_group_id: int = 1
    invert_y: bool = False
    per_bin: bool = True

    def __post_init__(self) -> None:
        _check_template("writer.cryosparc.micrograph_name", self.micrograph_name)
        if not 0 <= self.exp_group_id < 2**32:
            raise ValueError(f"writer.cryosparc.exp_group_id must be in [0, 2**32), got {self.exp_group_id}")


class CryosparcWriter(Writer):
    """``.cs`` particle locations with pick_stats and the diameter, plus an import STAR."""

    name = "cryosparc"
    Params = CryosparcWriterParams
    summary = "cryoSPARC: cryosparc/particles.cs (+ particles.star for Import Particle Stack), per size bin"

    def write(self, picks, metas, plan, out_dir, ctx) -> list[Path]:
        view = export_view(exported(picks, ctx), metas, plan)
        # one uid per particle, the same in the dataset set and in its bin's set
        view["uid"] = cs_io.particle_uids(len(view), seed=ctx.seed)
        if "z" in view:
            log.warning("writer cryosparc: z coordinates are not exported (cryoSPARC particle locations are 2D)")
        # Names and pixel sizes are settled once per run, so that every set
        # (all picks and each bin) names a micrograph alike and each problem
        # is reported once.
        # A watch session writes again every few micrographs: each clash is told once.
        mic_names = cryosparc_micrograph_names(metas, self.params.micrograph_name, strip_suffix=self.params.strip_suffix,
                                               told=self.__dict__.setdefault("_told_clashes", set()))
        psize_of = {n: float(m.pixel_size or 0.0) for n, m in metas.items()}
        unknown = sorted({n for n in view["micrograph"].tolist() if not psize_of[n] > 0})
        if unknown:
            log.warning(
                "writer cryosparc: pixel size unknown for %d micrograph(s) (%s); location/micrograph_psize_A, "
                "location/min_dist_A and lipoframe/diameter_A are 0 for their picks (`lipoframe plan %s "
                "pixel_size=<Å/px>` sets it without picking again)",
                len(unknown), _name_list(unknown), shlex.quote(str(out_dir)),
            )
        written = self._write_set(view, metas, mic_names, psize_of, safe_child(out_dir, "cryosparc"))
        if self.params.per_bin:
            for b, sub in _bin_views(view, plan):
                written += self._write_set(sub, metas, mic_names, psize_of, bin_dir(out_dir, b, "cryosparc"))
        return written

    def _write_set(self, view, metas, mic_names, psize_of, folder: Path) -> list[Path]:
        p = self.params
        names = view["micrograph"].tolist()
        mic_path = [mic_names[n] for n in names]
        uids = {m: cs_io.micrograph_uid(m) for m in set(mic_path)}
        shape = np.array([metas[n].shape[-2:] for n in names], dtype=np.int64).reshape(len(names), 2)
        psize = np.array([psize_of[n] for n in names], dtype=float)
        y = view["y"].to_numpy()
        if p.invert_y:
            y = (shape[:, 0] - 1) - y
        size_bin = view["size_bin"].to_numpy()
        arr = cs_io.particle_array(
            uid=view["uid"].to_numpy(),
            micrograph_uid=[uids[m] for m in mic_path],
            micrograph_path=mic_path,
            shape_yx=shape,
            pixel_size_A=psize,
            x=view["x"].to_numpy(),
            y=y,
            score=view["score"].to_numpy(),
            template_idx=np.where(size_bin >= 0, size_bin, cs_io.NO_TEMPLATE),
            diameter_px=view["diameter_px"].to_numpy(),
            size_bin=size_bin,
            exp_group_id=p.exp_group_id,
        )
        cs_path = safe_child(folder, "particles.cs")
        with atomic_path(cs_path) as tmp:
            cs_io.save_cs(arr, tmp)
        star = cs_io.import_star(mic_path, view["x"].to_numpy(), view["y"].to_numpy(), view["score"].to_numpy())
        return [cs_path, write_text(safe_child(folder, "particles.star"), star)]


# ---------------------------------------------------------------------------
# crYOLO / napari-boxmanager
# ---------------------------------------------------------------------------
@dataclass
class CboxWriterParams:
    """crYOLO CBOX per micrograph: box corner, box = the size bin's box, _EstWidth/_EstHeight = diameter, _Confidence = score."""


class CboxWriter(Writer):
    name = "cbox"
    Params = CboxWriterParams
    summary = "crYOLO / napari-boxmanager: cbox/<mic>.cbox with diameter and score"

    def write(self, picks, metas, plan, out_dir, ctx) -> list[Path]:
        view = export_view(exported(picks, ctx), metas, plan)
        stems = file_stems(metas)
        written = []
        for name, _meta, rows in _groups(view, metas):
            text = cbox_io.cbox_text(
                rows["x"], rows["y"],
                z=rows["z"] if "z" in rows else None,
                box=rows["box_px"],
                diameter=rows["diameter_px"],
                confidence=rows["score"],
            )
            written.append(write_text(safe_child(out_dir, "cbox", stems[name] + ".cbox"), text))
        return written


# ---------------------------------------------------------------------------
# EMAN2
# ---------------------------------------------------------------------------
@dataclass
class BoxWriterParams:
    """EMAN .box per micrograph (integer corner + the size bin's even box), also per size bin.

    per_bin: also write ``bins/bin<k>/box/`` for each size bin.
    """

    per_bin: bool = True


class BoxWriter(Writer):
    name = "box"
    Params = BoxWriterParams
    summary = "EMAN2: box/<mic>.box (integer corner, bin box size), per size bin in bins/bin<k>/box"

    def write(self, picks, metas, plan, out_dir, ctx) -> list[Path]:
        view = export_view(exported(picks, ctx), metas, plan)
        if "z" in view:
            log.warning("writer box: z coordinates are not exported (EMAN .box is 2D)")
        stems = file_stems(metas)
        self._warn_eman2_clashes(metas, stems)
        written = self._write_set(view, metas, stems, safe_child(out_dir, "box"))
        if self.params.per_bin:
            for b, sub in _bin_views(view, plan):
                written += self._write_set(sub, metas, stems, bin_dir(out_dir, b, "box"))
        return written

    def _warn_eman2_clashes(self, metas, stems) -> None:
        """Warn when EMAN2 would file two micrographs' boxes under one name.

        EMAN2 names a micrograph by :func:`~lipoframe.io.eman.eman2_base_name`
        (cut at ``__``, without ``_ptcls``/``_info``): ``e2import.py
        --import_boxes`` would write the boxes of ``grid1__sq2.box`` and
        ``grid1__sq3.box`` into the one ``info/grid1_info.json``, the last
        replacing the others, and ``e2rawdata.py`` would import both
        micrographs as ``micrographs/grid1.hdf``. No file name lipoframe could
        write fixes that (EMAN2 merges the micrographs themselves), so the run
        says which files they are. A watch session writes again every few
        micrographs: each clash is told once.
        """
        told = self.__dict__.setdefault("_told_clashes", set())
        by_file = {f"{stems[k]}.box": k for k in metas}
        clashes = eman_io.eman2_name_clashes(by_file)
        new = {k: v for k, v in clashes.items() if (k, tuple(v)) not in told}
        if not new:
            return
        told.update((k, tuple(v)) for k, v in new.items())
        groups = "; ".join(
            f"'{k}' <- " + _name_list([f"{f} ({metas[by_file[f]].path or by_file[f]})" for f in files])
            for k, files in sorted(new.items())
        )
        log.warning(
            "writer box: EMAN2 would file the boxes of %d micrographs under only %d name(s) (its base_name() keeps the "
            "name before the first '__' and drops '_ptcls' and '_info'): %s. e2import.py --import_boxes would keep only the last "
            "file's boxes of each, and e2rawdata.py would import those micrographs under the one name; rename them "
            "before importing them into EMAN2 (docs/export.md, EMAN2)",
            sum(len(v) for v in new.values()), len(new), groups,
        )

    @staticmethod
    def _write_set(view, metas, stems, folder: Path) -> list[Path]:
        written = []
        for name, _meta, rows in _groups(view, metas):
            text = eman_io.box_text(rows["x"], rows["y"], box=rows["box_px"])
            written.append(write_text(safe_child(folder, stems[name] + ".box"), text))
        return written


@hookimpl
def lipoframe_register_stages(registry):
    registry.add(CsvWriter)
    registry.add(StarWriter)
    registry.add(CryosparcWriter)
    registry.add(CboxWriter)
    registry.add(BoxWriter)
