"""cryoSPARC particle datasets (``.cs``) and the STAR its "Import Particle Stack" reads.

A ``.cs`` file is a NumPy ``.npy`` file holding one structured array; the
field names and dtypes below are those of particle picks written by cryoSPARC
itself (cryosparc-tools ``tests/test_dataset_bench.py`` fixture, read from a
real cryoSPARC file; ``location/micrograph_psize_A`` and ``location/min_dist_A``
from cryoSPARC's pick outputs in the cryosparc-tools docs). Strings are stored
as fixed-width bytes (``|S<n>``), as ``cryosparc.dataset.Dataset.save`` does,
so the file loads with plain ``numpy.load`` (no pickle) and with
``Dataset.load``. cryosparc-tools is not needed to write it.

Coordinates: ``center_x_frac = x / nx`` and ``center_y_frac = y / ny`` with
``micrograph_shape = [ny, nx]`` and (x, y) the 0-based pixel centre on the
micrograph file, as the cryosparc-tools crYOLO example converts picks. Whether
cryoSPARC counts rows from the top or the bottom of *its* micrographs is
contested (pyem flips by default; issues asarnow/pyem#81, #101), hence the
writer's ``invert_y`` option and the check in docs/export.md.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np

from lipoframe.io.star import loop_block, star_text

#: (name, dtype[, shape]) of the location and pick_stats slots, as cryoSPARC writes them.
LOCATION_FIELDS = [
    ("location/micrograph_uid", "<u8"),
    ("location/exp_group_id", "<u4"),
    ("location/micrograph_path", None),  # |S<n>, width set per file
    ("location/micrograph_shape", "<u4", (2,)),
    ("location/micrograph_psize_A", "<f4"),
    ("location/center_x_frac", "<f4"),
    ("location/center_y_frac", "<f4"),
    ("location/min_dist_A", "<f4"),
]
PICK_STATS_FIELDS = [
    ("pick_stats/ncc_score", "<f4"),
    ("pick_stats/power", "<f4"),
    ("pick_stats/template_idx", "<u4"),
    ("pick_stats/angle_rad", "<f4"),
]
#: lipoframe's own slot: cryoSPARC has no per-particle diameter field.
LIPOFRAME_FIELDS = [
    ("lipoframe/diameter_px", "<f4"),
    ("lipoframe/diameter_A", "<f4"),
    ("lipoframe/size_bin", "<i4"),
]
#: ``pick_stats/template_idx`` of a pick outside every size bin (exported rejects).
NO_TEMPLATE = np.iinfo(np.uint32).max


def particle_dtype(path_width: int) -> np.dtype:
    """The structured dtype of a lipoframe particle ``.cs`` (``uid`` first)."""
    fields: list[tuple] = [("uid", "<u8")]
    for f in LOCATION_FIELDS + PICK_STATS_FIELDS + LIPOFRAME_FIELDS:
        if f[1] is None:
            fields.append((f[0], f"|S{max(1, int(path_width))}"))
        else:
            fields.append(f)
    return np.dtype(fields)


def micrograph_uid(path: str) -> int:
    """A stable 63-bit uid for a micrograph path (cryoSPARC's own uids are unknown here).

    The uid depends on ``path`` only, so ``path`` must be unique per
    micrograph: two micrographs written with the same path would get the same
    uid and be one micrograph to cryoSPARC. The writer makes the names unique
    (``lipoframe.builtin.writers.cryosparc_micrograph_names``).
    """
    digest = hashlib.blake2b(path.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def particle_uids(n: int, *, seed: int) -> np.ndarray:
    """``n`` distinct random uids (uint64, > 0), reproducible for a ``seed``."""
    rng = np.random.default_rng(seed)
    uids = np.unique(rng.integers(1, 1 << 63, size=n, dtype=np.int64))
    while len(uids) < n:  # astronomically rare; keep uids distinct anyway
        uids = np.unique(np.concatenate([uids, rng.integers(1, 1 << 63, size=n - len(uids), dtype=np.int64)]))
    return rng.permutation(uids).astype(np.uint64)


def particle_array(
    *,
    uid,
    micrograph_uid,
    micrograph_path,
    shape_yx,
    pixel_size_A,
    x,
    y,
    score,
    template_idx,
    diameter_px,
    size_bin,
    exp_group_id: int = 1,
) -> np.ndarray:
    """Fill a particle structured array.

    Parameters
    ----------
    uid, micrograph_uid : (N,) array_like of uint64
    micrograph_path : (N,) sequence of str
        ``location/micrograph_path`` (UTF-8 encoded).
    shape_yx : (N, 2) array_like of int
        ``[ny, nx]`` of each particle's micrograph.
    pixel_size_A : (N,) array_like of float
        Å/px of each micrograph (0 when unknown).
    x, y : (N,) array_like of float
        Pixel-centre coordinates in the exported frame; stored as ``x / nx``
        and ``y / ny``.
    score : (N,) array_like of float
        Written to ``pick_stats/ncc_score`` and ``pick_stats/power`` (what
        Inspect Picks thresholds), like the cryosparc-tools crYOLO example.
    template_idx : (N,) array_like of int
        ``pick_stats/template_idx`` (lipoframe: the 0-based size bin).
    diameter_px : (N,) array_like of float
    size_bin : (N,) array_like of int
        -1 for a pick outside every bin.
    exp_group_id : int
        ``location/exp_group_id`` of every particle.

    Returns
    -------
    arr : (N,) structured ndarray with :func:`particle_dtype`.
    """
    paths = [str(p).encode("utf-8") for p in micrograph_path]
    n = len(paths)
    arr = np.zeros(n, dtype=particle_dtype(max((len(p) for p in paths), default=0) + 1))
    shape_yx = np.asarray(shape_yx, dtype=np.int64).reshape(n, 2)
    psize = np.asarray(pixel_size_A, dtype=float)
    d_px = np.asarray(diameter_px, dtype=float)
    score = np.nan_to_num(np.asarray(score, dtype=float), nan=0.0)
    arr["uid"] = np.asarray(uid, dtype=np.uint64)
    arr["location/micrograph_uid"] = np.asarray(micrograph_uid, dtype=np.uint64)
    arr["location/exp_group_id"] = exp_group_id
    arr["location/micrograph_path"] = paths
    arr["location/micrograph_shape"] = shape_yx
    arr["location/micrograph_psize_A"] = psize
    arr["location/center_x_frac"] = np.asarray(x, dtype=float) / shape_yx[:, 1]
    arr["location/center_y_frac"] = np.asarray(y, dtype=float) / shape_yx[:, 0]
    arr["location/min_dist_A"] = d_px * psize
    arr["pick_stats/ncc_score"] = score
    arr["pick_stats/power"] = score
    arr["pick_stats/template_idx"] = np.asarray(template_idx, dtype=np.int64).astype(np.uint32)
    arr["pick_stats/angle_rad"] = 0.0
    arr["lipoframe/diameter_px"] = d_px
    arr["lipoframe/diameter_A"] = d_px * psize
    arr["lipoframe/size_bin"] = np.asarray(size_bin, dtype=np.int32)
    return arr


def save_cs(arr: np.ndarray, path: str | os.PathLike) -> None:
    """Write ``arr`` as a ``.cs`` file (NumPy format, no pickle) at ``path``."""
    with open(path, "wb") as fh:
        np.save(fh, arr, allow_pickle=False)


def import_star(micrograph_names, x, y, fom) -> str:
    """A STAR for cryoSPARC "Import Particle Stack" (no images, RELION 3.0 layout).

    One ``data_`` block with ``rlnMicrographName`` (matched against the
    exposures' file names, so one name must mean one micrograph),
    ``rlnCoordinateX/Y`` in RELION's convention
    (cryoSPARC converts them itself) and ``rlnAutopickFigureOfMerit``; the same
    columns crYOLO writes for this route.
    """
    return star_text(
        loop_block(
            "",
            [
                ("rlnMicrographName", list(micrograph_names), "%s"),
                ("rlnCoordinateX", np.asarray(x, dtype=float), "%.6f"),
                ("rlnCoordinateY", np.asarray(y, dtype=float), "%.6f"),
                ("rlnAutopickFigureOfMerit", np.nan_to_num(np.asarray(fom, dtype=float), nan=0.0), "%.6f"),
            ],
        )
    )
