"""The ``mask`` writer: label images of the picks, as training targets.

Per micrograph it writes an instance label image (uint16; 0 = background,
each accepted pick a filled disc, or ball in a tomogram, of its own diameter
with its own id) and a binary mask (0/1; int8 in MRC, uint8 in TIFF), as MRC or TIFF on the
micrograph's grid (optionally binned). With these, lipoframe's classical picks
can bootstrap a segmentation network (pseudo-labels). ``masks/instances.csv``
maps every instance id back to its pick.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from lipoframe import schema
from lipoframe.hookspecs import hookimpl
from lipoframe.io.atomic import atomic_path, safe_child
from lipoframe.plan import ExtractionPlan
from lipoframe.records import MicrographMeta, PickContext
from lipoframe.stages import Writer, check_finite

MASK_FORMATS = ("mrc", "tiff")
_MAX_LABEL = np.iinfo(np.uint16).max


def label_image(
    shape: tuple[int, ...],
    centres: np.ndarray,
    diameters: np.ndarray,
) -> np.ndarray:
    """Draw filled discs (2D) or balls (3D) with ids 1..K into a label image.

    Where two particles overlap, each pixel goes to the particle whose
    centre is nearer relative to its radius (smallest ``distance / radius``),
    so a small particle touching a large one keeps its own pixels.

    Parameters
    ----------
    shape : (M, N) or (P, M, N)
        Shape of the label image.
    centres : (K, ndim) ndarray
        Centres in (plane,) row, col order, in pixels of the output grid.
    diameters : (K,) ndarray
        Diameters in pixels of the output grid.

    Returns
    -------
    labels : ndarray of uint16
        0 = background; pick ``k`` (row ``k`` of ``centres``) has id ``k + 1``.
    """
    ndim = len(shape)
    centres = np.asarray(centres, dtype=float).reshape(-1, ndim)
    diameters = np.asarray(diameters, dtype=float)
    if len(centres) > _MAX_LABEL:
        raise ValueError(f"{len(centres)} picks do not fit in a uint16 label image (at most {_MAX_LABEL})")
    labels = np.zeros(shape, dtype=np.uint16)
    best = np.full(shape, np.inf, dtype=np.float32)
    for k, (c, d) in enumerate(zip(centres, diameters)):
        r = d / 2.0
        if not r > 0:
            continue
        lo = [max(0, int(np.floor(ci - r))) for ci in c]
        hi = [min(n, int(np.ceil(ci + r)) + 1) for ci, n in zip(c, shape)]
        if any(h <= l for l, h in zip(lo, hi)):
            continue
        sl = tuple(slice(l, h) for l, h in zip(lo, hi))
        grids = np.ogrid[sl]
        dist2 = sum((g - ci) ** 2 for g, ci in zip(grids, c))
        rel = (np.sqrt(dist2) / r).astype(np.float32)
        win = (rel <= 1.0) & (rel < best[sl])
        best[sl][win] = rel[win]
        labels[sl][win] = k + 1
    return labels


def write_label_file(path: Path, data: np.ndarray, *, fmt: str, pixel_size: float | None) -> Path:
    """Write one label or mask image atomically as MRC or TIFF."""
    with atomic_path(path) as tmp:
        if fmt == "mrc":
            import mrcfile

            with mrcfile.new(str(tmp), overwrite=True) as mrc:
                mrc.set_data(data)
                if pixel_size:
                    mrc.voxel_size = pixel_size
        else:
            import tifffile

            kwargs = {}
            if pixel_size:
                # XResolution in pixels per cm, as RELION and lipoframe's reader read it.
                kwargs = {"resolution": (1e8 / pixel_size, 1e8 / pixel_size), "resolutionunit": "CENTIMETER"}
            tifffile.imwrite(str(tmp), data, **kwargs)
    return path


@dataclass
class MaskWriterParams:
    """Label image + binary mask per micrograph (``masks/<name>_labels.mrc``, ``<name>_mask.mrc``).

    format: ``mrc`` or ``tiff``.
    bin: write the images binned by this integer factor (1 = the micrograph grid).
    scale: draw each disc with this fraction of the pick's diameter.
    folder: subfolder of the output folder.
    """

    format: str = "mrc"
    bin: int = 1
    scale: float = 1.0
    folder: str = "masks"

    def __post_init__(self) -> None:
        check_finite(self, "writer.mask")
        if self.format not in MASK_FORMATS:
            raise ValueError(f"writer.mask.format must be one of {MASK_FORMATS}, got {self.format!r}")
        if self.bin < 1:
            raise ValueError(f"writer.mask.bin must be >= 1, got {self.bin}")
        if not 0 < self.scale <= 2:
            raise ValueError(f"writer.mask.scale must be in (0, 2], got {self.scale}")
        if not self.folder:
            raise ValueError("writer.mask.folder must not be empty")
        # Checked here, before any micrograph is picked (the writer refuses such a folder when it writes).
        if Path(self.folder).is_absolute() or ".." in Path(self.folder).parts:
            raise ValueError(f"writer.mask.folder must be a subfolder of the output folder (relative, without '..'); "
                             f"{self.folder!r} is outside the output folder")


class MaskWriter(Writer):
    name = "mask"
    Params = MaskWriterParams
    summary = "uint16 instance label image + binary mask per micrograph (MRC/TIFF), training targets"

    def write(self, picks: pd.DataFrame, metas: dict[str, MicrographMeta], plan: ExtractionPlan, out_dir: Path, ctx: PickContext) -> list[Path]:
        from lipoframe.algorithms.pyramid import to_binned

        p = self.params
        suffix = ".mrc" if p.format == "mrc" else ".tif"
        if schema.ACCEPTED in picks.columns:
            picks = picks.loc[picks[schema.ACCEPTED].astype(bool)]
        groups = dict(tuple(picks.groupby(schema.MICROGRAPH, sort=False, observed=True))) if len(picks) else {}
        written: list[Path] = []
        index_rows = []
        for name, meta in metas.items():
            sub = groups.get(name, picks.iloc[0:0])
            shape = tuple(int(s) // p.bin for s in meta.shape)
            cols = ([schema.Z] if len(shape) == 3 else []) + [schema.Y, schema.X]
            missing = [c for c in cols if c not in sub.columns]
            if missing and len(sub):
                raise ValueError(f"writer.mask: picks of {name} have no {missing} column for a {len(shape)}D micrograph")
            centres = to_binned(sub[cols].to_numpy(dtype=float), p.bin) if len(sub) else np.empty((0, len(shape)))
            diam = sub[schema.DIAMETER].to_numpy(dtype=float) * p.scale / p.bin
            try:
                labels = label_image(shape, centres, diam)
            except ValueError as exc:
                raise ValueError(f"writer.mask: {name}: {exc}") from None
            px = meta.pixel_size * p.bin if meta.pixel_size else None
            lab_path = safe_child(out_dir, p.folder, f"{name}_labels{suffix}")
            mask_path = safe_child(out_dir, p.folder, f"{name}_mask{suffix}")
            written.append(write_label_file(lab_path, labels, fmt=p.format, pixel_size=px))
            # 0/1 mask: int8 in MRC (mode 0; mrcfile would widen uint8 to uint16), uint8 in TIFF.
            binary = (labels > 0).astype(np.int8 if p.format == "mrc" else np.uint8)
            written.append(write_label_file(mask_path, binary, fmt=p.format, pixel_size=px))
            table = pd.DataFrame({schema.MICROGRAPH: name, "instance_id": np.arange(1, len(sub) + 1)})
            for c in (schema.X, schema.Y, schema.Z, schema.DIAMETER, schema.SCORE):
                if c in sub.columns:
                    table[c] = sub[c].to_numpy()
            table["label_file"] = lab_path.name
            index_rows.append(table)
        if index_rows:
            from lipoframe.builtin.writers import write_csv

            non_empty = [t for t in index_rows if len(t)]
            index = pd.concat(non_empty, ignore_index=True) if non_empty else index_rows[0]
            written.append(write_csv(index, safe_child(out_dir, p.folder, "instances.csv")))
        return written


@hookimpl
def lipoframe_register_stages(registry):
    registry.add(MaskWriter)
