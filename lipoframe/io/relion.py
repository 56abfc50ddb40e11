"""RELION coordinate files, the RELION 4/5 coordinate list, and the extraction command.

Convention (checked in RELION's source, 3dem/relion ``src/preprocessing.cpp``
``extractParticlesFromOneMicrograph``): Extract takes
``xpos = (long int)rlnCoordinateX`` (truncation) and windows the micrograph
(origin 0) from ``xpos + FIRST_XMIPP_INDEX(size) = xpos - size/2`` to
``xpos + size/2 - 1``, so the box centre (index ``size/2``) is micrograph pixel
``xpos``, 0-based; the same holds for Y and Z, with no flip for MRC. RELION's
pickers write the same numbers (``autopicker.cpp``: ``peak.x = j -
FIRST_XMIPP_INDEX(xsize)``, 0-based). lipoframe's ``x_px``/``y_px`` are
therefore written unchanged for MRC, after :func:`lipoframe.io.coords.export_frame`
(rows flipped for TIFF), and rounded to the nearest pixel because RELION would
truncate 99.9 to 99.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lipoframe.io.star import loop_block, star_text
from lipoframe.plan import SizeBin

#: Suffix of per-micrograph coordinate files, as RELION's AutoPick names them.
COORDINATE_SUFFIX = "_autopick.star"
#: Name of the RELION 4/5 list file (AutoPick's own is ``autopick.star``).
LIST_FILE = "autopick.star"
#: Block name of the list file; ManualPick reads it by this name (``manualpicker.cpp``).
LIST_BLOCK = "coordinate_files"
#: Extra column with the per-particle diameter in micrograph pixels (the frame of
#: rlnCoordinateX/Y). RELION >= 3.1 keeps unknown labels through Extract.
DIAMETER_LABEL = "rlnLipoframeDiameterPix"
#: Folder of the dataset's RELION set below the output folder.
RELION_DIR = "relion"
#: Folder of the per-micrograph coordinate files inside a set folder.
COORDS_DIR = "coords"
#: What ``--i`` of the extraction command points at unless told otherwise
#: (``extraction_plan.md`` names the micrographs STAR a run picked from instead).
DEFAULT_MICROGRAPHS_STAR = "CtfFind/job003/micrographs_ctf.star"


def set_dir(out_dir: str | os.PathLike, size_bin: SizeBin | None = None) -> Path:
    """Folder of a RELION coordinate set: ``<out>/relion`` (all picks) or ``<out>/bins/bin<k>``.

    The set holds the list file :data:`LIST_FILE` and the coordinate files in
    :data:`COORDS_DIR`.
    """
    return Path(out_dir) / RELION_DIR if size_bin is None else Path(out_dir) / "bins" / size_bin.label


def list_path(out_dir: str | os.PathLike, size_bin: SizeBin | None = None) -> Path:
    """The coordinate list the ``star`` writer makes for the dataset or for one size bin.

    Pass it to :func:`extract_command` (``--coord_list``).
    """
    return set_dir(out_dir, size_bin) / LIST_FILE


def coordinate_star(
    x,
    y,
    *,
    class_number,
    fom,
    psi=None,
    z=None,
    diameter_px=None,
) -> str:
    """Text of one RELION coordinate file (one ``data_`` block, as AutoPick writes).

    Parameters
    ----------
    x, y : (N,) array_like of float
        Coordinates already in RELION's frame (0-based pixel centres).
    class_number : (N,) array_like of int
        ``rlnClassNumber`` (lipoframe writes size bin + 1; 0 = no bin).
    fom : (N,) array_like of float
        ``rlnAutopickFigureOfMerit``; Extract's ``--minimum_pick_fom`` filters on it.
    psi : (N,) array_like of float, optional
        ``rlnAnglePsi`` in degrees (0 when not given, like RELION's LoG picker).
    z : (N,) array_like of float, optional
        ``rlnCoordinateZ`` for tomograms.
    diameter_px : (N,) array_like of float, optional
        Written as :data:`DIAMETER_LABEL`.

    Returns
    -------
    text : str
        Columns in AutoPick's order: X, Y, [Z], ClassNumber,
        AutopickFigureOfMerit, AnglePsi, then the diameter. Zero rows give a
        valid file with labels only, which Extract reads as "no particles".
    """
    x = np.asarray(x, dtype=float)
    n = len(x)
    psi = np.zeros(n) if psi is None else np.asarray(psi, dtype=float)
    cols = [("rlnCoordinateX", x, "%.6f"), ("rlnCoordinateY", np.asarray(y, dtype=float), "%.6f")]
    if z is not None:
        cols.append(("rlnCoordinateZ", np.asarray(z, dtype=float), "%.6f"))
    cols += [
        ("rlnClassNumber", np.asarray(class_number, dtype=np.int64), "%d"),
        ("rlnAutopickFigureOfMerit", np.asarray(fom, dtype=float), "%.6f"),
        ("rlnAnglePsi", psi, "%.6f"),
    ]
    if diameter_px is not None:
        cols.append((DIAMETER_LABEL, np.asarray(diameter_px, dtype=float), "%.2f"))
    return star_text(loop_block("", cols))


def coordinate_list_star(micrograph_names: Sequence[str], coordinate_files: Sequence[str]) -> str:
    """Text of a RELION 4/5 coordinate list (``data_coordinate_files``).

    Extract (``--coord_list``) maps each ``rlnMicrographName`` by exact string
    to ``rlnMicrographCoordinates`` and matches it against the names in its
    input micrographs STAR, so the names must be written exactly as there.
    """
    if len(micrograph_names) != len(coordinate_files):
        raise ValueError("micrograph_names and coordinate_files must have the same length")
    return star_text(
        loop_block(
            LIST_BLOCK,
            [("rlnMicrographName", list(micrograph_names), "%s"), ("rlnMicrographCoordinates", list(coordinate_files), "%s")],
        )
    )


def background_radius(box_px: int) -> int:
    """RELION's default normalisation radius for a final box: ``int(0.375 * box)``.

    What the Extract job's GUI passes for "Diameter background circle: -1"
    (3dem/relion ``src/pipeline_jobs.cpp``, extract ``getCommands``): 75 % of
    the extraction box as diameter, halved, scaled to the rescaled box when
    rescaling, then truncated to an integer with ``(int)``.
    """
    return int(np.floor(0.375 * box_px))


def extract_command(
    size_bin: SizeBin,
    coord_list_path: str | os.PathLike,
    *,
    pixel_size: float | None,
    micrographs_star: str = DEFAULT_MICROGRAPHS_STAR,
    output_dir: str | None = None,
    invert_contrast: bool = True,
) -> str:
    """The ``relion_preprocess`` command that extracts one size bin.

    Parameters
    ----------
    size_bin : SizeBin
        The bin; ``--extract_size`` is its ``box_px`` (micrograph pixels) or,
        when the plan asked for a rescaled extraction, its ``extract_size_px``
        with ``--scale`` its ``box_px_extract``.
    coord_list_path : path
        The bin's coordinate list (``bins/bin<k>/autopick.star``, see :func:`list_path`),
        as it should appear on the command line (run from the RELION project).
    pixel_size : float or None
        Å/px of the micrographs (checked to be > 0 when given).
    micrographs_star : str
        ``--i``: the micrographs STAR of the RELION project (with CTF).
    output_dir : str, optional
        Extraction folder; default ``Extract/lipoframe_bin<k>/``.
    invert_contrast : bool
        Add ``--invert_contrast`` (RELION wants white particles; cryo-EM
        micrographs show them dark).

    Returns
    -------
    command : str
        One shell line (arguments quoted). RELION's background radius is its
        GUI default, ``int(0.375 * final box)``.

    Examples
    --------
    >>> from lipoframe.plan import SizeBin
    >>> print(extract_command(SizeBin(0, 150, 200, 10, 320), "bins/bin1/autopick.star", pixel_size=1.0))
    relion_preprocess --i CtfFind/job003/micrographs_ctf.star --coord_list bins/bin1/autopick.star --part_star Extract/lipoframe_bin1/particles.star --part_dir Extract/lipoframe_bin1/ --extract --extract_size 320 --norm --bg_radius 120 --white_dust -1 --black_dust -1 --invert_contrast
    """
    _check(size_bin, pixel_size)
    out = output_dir or f"Extract/lipoframe_{size_bin.label}/"
    if not out.endswith("/"):
        out += "/"
    final = size_bin.box_px_extract or size_bin.box_px
    args = [
        "relion_preprocess",
        "--i", micrographs_star,
        "--coord_list", os.fspath(coord_list_path),
        "--part_star", out + "particles.star",
        "--part_dir", out,
        "--extract",
        "--extract_size", str(size_bin.extract_size_px if size_bin.box_px_extract and size_bin.extract_size_px else size_bin.box_px),
    ]
    if size_bin.box_px_extract:
        args += ["--scale", str(size_bin.box_px_extract)]
    args += ["--norm", "--bg_radius", str(background_radius(final)), "--white_dust", "-1", "--black_dust", "-1"]
    if invert_contrast:
        args.append("--invert_contrast")
    return shlex.join(args)


def _check(size_bin: SizeBin, pixel_size: float | None) -> None:
    if size_bin.box_px < 2 or size_bin.box_px % 2:
        raise ValueError(f"size_bin.box_px must be even and >= 2 for RELION, got {size_bin.box_px}")
    for name in ("box_px_extract", "extract_size_px"):
        value = getattr(size_bin, name)
        if value is not None and (value < 2 or value % 2):
            raise ValueError(f"size_bin.{name} must be even and >= 2 for RELION, got {value}")
    if pixel_size is not None and not pixel_size > 0:
        raise ValueError(f"pixel_size must be > 0 or None, got {pixel_size}")


#: File (below ``relion/`` or a bin's folder) with RELION 5 tomography-style picks.
TOMO_PARTICLES_FILE = "tomo_particles.star"


def tomo_particles_star(tomo_names, x, y, z, *, shapes, pixel_sizes, class_number, fom, diameter_px=None) -> str:
    """RELION 5 tomography particle table (``data_particles``).

    RELION 5 gives tomogram picks as ``rlnTomoName`` plus
    ``rlnCenteredCoordinate{X,Y,Z}Angst``: positions in Å from the centre of
    the tomogram, taken here as pixel ``size / 2`` along each axis, in
    floating point: RELION 5 reads them back by adding
    ``Tomogram::centre = (w0 / 2.0, h0 / 2.0, d0 / 2.0)``
    (``TomogramSet::loadTomogram``, used by ``ParticleSet::getPosition``).
    For an odd size this is half a pixel from the integer centre that
    RELION's subtomogram extraction uses (``setProjectionMatrix``; RELION
    issue 1280).

    Binned tomograms: RELION's centre is in unbinned tilt-series pixels,
    ``rlnTomoSize{X,Y,Z} / 2.0``, and the Å are ``rlnTomoTiltSeriesPixelSize``
    Å (``ParticleSet::getParticleCoordDecenteredPixel``: ``Å / ts_px +
    centre``). ``relion_tomo_reconstruct_tomogram`` (RELION 4.1+, origin 0)
    puts binned voxel ``i`` at unbinned pixel ``i * bin``
    (``RealSpaceBackprojection::backproject``: ``origin + i * spacing``) and
    makes the volume ``int(w0 / bin + 0.5)`` x ``int(h0 / bin + 0.5)`` x
    ``int(d0 / bin)``. With ``size`` and ``pixel_sizes`` of the binned volume,
    ``(i - size / 2) * bin * ts_px`` equals RELION's ``(i * bin - w0 / 2) *
    ts_px`` for odd and even ``size`` whenever ``size * bin == w0``; when the
    unbinned size is not a multiple of the binning (or the binning is not an
    integer, ``--binned_angpix``), the centre is off by up to half a binned
    voxel, since the unbinned size is not in the volume's header.

    Parameters
    ----------
    tomo_names : (N,) sequence of str
    x, y, z : (N,) array_like
        Coordinates in RELION's frame (0-based voxel centres).
    shapes : (N, 3) array_like
        ``(nz, ny, nx)`` of each pick's tomogram.
    pixel_sizes : (N,) array_like
        Å/voxel of each pick's tomogram.
    class_number, fom, diameter_px
        As in :func:`coordinate_star`.
    """
    shapes = np.asarray(shapes, dtype=float).reshape(-1, 3)
    px = np.asarray(pixel_sizes, dtype=float)
    cols = [
        ("rlnTomoName", np.asarray(tomo_names, dtype=object), "%s"),
        ("rlnCenteredCoordinateXAngst", (np.asarray(x, float) - shapes[:, 2] / 2) * px, "%.3f"),
        ("rlnCenteredCoordinateYAngst", (np.asarray(y, float) - shapes[:, 1] / 2) * px, "%.3f"),
        ("rlnCenteredCoordinateZAngst", (np.asarray(z, float) - shapes[:, 0] / 2) * px, "%.3f"),
        ("rlnClassNumber", np.asarray(class_number, dtype=np.int64), "%d"),
        ("rlnAutopickFigureOfMerit", np.asarray(fom, dtype=float), "%.6f"),
    ]
    if diameter_px is not None:
        cols.append((DIAMETER_LABEL, np.asarray(diameter_px, dtype=float), "%.2f"))
    return star_text(loop_block("particles", cols))
