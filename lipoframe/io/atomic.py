"""Atomic file writing: write to a temporary file in the same folder, then rename.

A reader never sees a half-written file, and an interrupted run leaves either
the old file or the new one.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path next to ``path``; rename it over ``path`` on success.

    Use for libraries that insist on writing to a path themselves
    (``starfile.write``, ``mrcfile.new``, ``fig.savefig``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    # mkstemp creates 0600; give the file the permissions a normal open()
    # would (0666 minus the umask) so colleagues can read the results.
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def safe_child(root: str | os.PathLike, *parts: str, replace_link: bool = False) -> Path:
    """Join ``parts`` below ``root`` and refuse any result outside ``root``.

    The result is resolved: a symbolic link on the way is followed, and the
    path must still be inside ``root``. An existing link at the path itself
    that points outside ``root`` (one an earlier run of a writer made) is
    refused, as a plain ``open()`` of the path would write through it; with
    ``replace_link=True`` such a link (wherever it points) is removed instead,
    the link only, never its target, and the path of the link itself is
    returned, free for the new file or link. Use it to write what an earlier
    run may have left as a link (a writer that links to the micrographs).

    Parameters
    ----------
    root : path
        The folder the result must be inside (the output folder).
    *parts : str
        Folder and file names below ``root``.
    replace_link : bool
        Remove a symbolic link at the joined path (its folder must be inside
        ``root``) and return its path, instead of following it.

    Raises
    ------
    ValueError
        If the joined path would escape ``root`` (``..``, absolute parts, a
        folder on the way that is a link to elsewhere), or is a link to
        outside ``root`` and ``replace_link`` is false.
    """
    root_path = Path(root).resolve()
    joined = root_path.joinpath(*parts)
    place = None
    if joined.name not in ("", ".", ".."):
        folder = joined.parent.resolve()
        if folder == root_path or root_path in folder.parents:
            place = folder / joined.name  # where the entry is, not where a link there points
    if replace_link and place is not None and place.is_symlink():
        os.unlink(place)  # the link itself: its target is never touched
        return place
    target = joined.resolve()
    if target != root_path and root_path not in target.parents:
        if place is not None and place.is_symlink():
            raise ValueError(f"refusing to write {place}: it is a symbolic link to {target}, outside the output folder "
                             f"{root_path} (an earlier run's?), and writing it would write there; remove the link "
                             f"(os.unlink, which leaves its target) or get the path with safe_child(..., replace_link=True), "
                             "which does")
        raise ValueError(f"refusing to write {target}: outside the output folder {root_path}")
    return target


def resolve_all(paths, *, follow_links: bool = True) -> list[Path]:
    """``[Path(p).resolve() for p in paths]``, resolving each folder once.

    A file that is not a symbolic link resolves to its resolved folder plus
    its name; the writers' thousands of files share a few folders, and
    :meth:`~pathlib.Path.resolve` looks up every component of every path.
    ``follow_links=False``: a symbolic link is located where it is (its
    resolved folder plus its name), not where it points.
    """
    folders: dict[Path, Path] = {}
    out = []
    for p in map(Path, paths):
        if p.name in ("", ".", "..") or (follow_links and p.is_symlink()):
            out.append(p.resolve())
            continue
        folder = folders.get(p.parent)
        if folder is None:
            folder = folders[p.parent] = p.parent.resolve()
        out.append(folder / p.name)
    return out
