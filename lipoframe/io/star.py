"""A small STAR writer whose text RELION's own parser reads as intended.

We format STAR text ourselves (instead of ``starfile.write``) so that every
byte is pinned: RELION's parser (``MetaDataTable::readStar``/``readStarLoop``
in ``src/metadata_table.cpp``) takes the first line containing ``data_`` as the
block when no name is asked for, ends a loop at the first empty line, rejects
CR+LF line ends, never understands ``NaN``/``<NA>`` as a number, and reads the
label from after ``_`` to two characters before ``#`` (so labels are written
``_label #n``). Strings with blanks or quotes are double-quoted (RELION >= 3.1
``nextTokenInSTAR`` and ``starfile`` both unquote them).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: The version comment RELION 3.1, 4.0 and 5.0 read without complaint.
VERSION_LINE = "# version 30001"

#: Column spec: (label without leading underscore, values, printf format).
Column = tuple[str, Sequence, str]


def quote(value: str) -> str:
    """Return ``value`` as one STAR token (double-quoted if it needs it).

    Raises
    ------
    ValueError
        For empty strings, line breaks, or a double quote next to a blank
        (no STAR reader can tokenise those).
    """
    s = str(value)
    if s == "" or "\n" in s or "\r" in s:
        raise ValueError(f"cannot write {s!r} as a STAR value (empty or contains a line break)")
    needs = any(c.isspace() for c in s) or s[0] in "\"'_#$;" or s.startswith(("data_", "loop_", "save_", "stop_", "global_"))
    if not needs:
        return s
    if '"' in s:
        if any(c.isspace() for c in s):
            raise ValueError(f"cannot write {s!r} as a STAR value (double quote and blanks)")
        return f"'{s}'"
    return f'"{s}"'


def _format_column(label: str, values, fmt: str, width: int) -> list[str]:
    """Format one column (strings quoted once per distinct value; numbers checked finite)."""
    if fmt == "%s":
        quoted: dict[str, str] = {}
        return [quoted[v] if v in quoted else quoted.setdefault(v, quote(v)) for v in map(str, values)]
    arr = np.asarray(values, dtype=float)
    bad = ~np.isfinite(arr)
    if bad.any():
        raise ValueError(
            f"refusing to write a non-finite value ({arr[bad][0]!r}) in column {label!r}: RELION cannot read it"
        )
    if fmt.endswith("d"):
        items = np.asarray(values).astype(np.int64).tolist()
    else:
        items = arr.tolist()
    return [(fmt % v).rjust(width) for v in items]


def loop_block(name: str, columns: Sequence[Column], *, width: int = 12) -> str:
    """Text of one ``data_<name>`` block holding a loop.

    Parameters
    ----------
    name : str
        Block name; ``""`` gives ``data_`` (what RELION's pickers write).
    columns : sequence of (label, values, fmt)
        ``fmt`` is ``"%s"`` for strings or a printf number format; all
        ``values`` must have the same length (0 writes the labels only).
    width : int
        Numbers are right-aligned to this width, like RELION's own files.

    Raises
    ------
    ValueError
        Unequal column lengths or a non-finite number.
    """
    lengths = {len(values) for _, values, _ in columns}
    if len(lengths) > 1:
        raise ValueError(f"STAR block data_{name}: columns have different lengths {sorted(lengths)}")
    lines = [f"data_{name}", "", "loop_"]
    lines += [f"_{label} #{i}" for i, (label, _, _) in enumerate(columns, start=1)]
    cells = [_format_column(label, values, fmt, width) for label, values, fmt in columns]
    lines += map(" ".join, zip(*cells))
    return "\n".join(lines) + "\n"


def star_text(*blocks: str, version: bool = True) -> str:
    """Join blocks into a file: the version comment, then blocks separated by a blank line.

    Blocks are written in the order given; RELION reads the *first* block
    when no name is asked for, so a coordinate table must come first.
    """
    parts = [VERSION_LINE + "\n"] if version else []
    for block in blocks:
        parts.append(block)
    return "\n".join(parts) + "\n"

