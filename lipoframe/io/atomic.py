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


def safe_child(root: str | os.PathLike, *parts: str) -> Path:
    """Join ``parts`` below ``root`` and refuse any result outside ``root``.

    Raises
    ------
    ValueError
        If the joined path would escape ``root`` (``..``, absolute parts).
    """
    root_path = Path(root).resolve()
    target = root_path.joinpath(*parts).resolve()
    if target != root_path and root_path not in target.parents:
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
