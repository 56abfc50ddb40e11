"""Built-in readers: MRC (modes 0, 1, 2, 6, 12), TIFF, and 8/16-bit PNG/JPEG.

Readers return the array exactly as stored (row 0 first); nothing is flipped
here. TIFF inputs are marked ``flip_y`` so that writers for programs that flip
TIFFs on reading (RELION, Warp, napari-boxmanager) can convert (the run's
``flip_y`` option may choose otherwise: :func:`lipoframe.runner.flip_y_for`).
"""

from __future__ import annotations

import bz2
import contextlib
import contextvars
import gzip
import io
import logging
import math
import re
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lipoframe.hookspecs import hookimpl
from lipoframe.records import COMPRESSION_SUFFIXES, COMPRESSION_TOOLS, InputError, Micrograph, MicrographMeta, file_stem, file_suffix
from lipoframe.stages import Reader

log = logging.getLogger("lipoframe")

MRC_MODES = {0: "int8", 1: "int16", 2: "float32", 6: "uint16", 12: "float16"}
#: MRC modes that hold no micrograph lipoframe reads, by what they hold (MRC2014, IMOD).
OTHER_MRC_MODES = {3: "complex int16, a Fourier transform", 4: "complex float32, a Fourier transform",
                   16: "RGB colour", 101: "4-bit packed integers"}
_MODE_WORDS = re.compile(r"Unrecognised mode '(-?\d+)'")


def _unsupported_mode(mode: int) -> str:
    """Why an MRC file of ``mode`` is refused, naming the modes lipoframe reads."""
    what = f" ({OTHER_MRC_MODES[mode]})" if mode in OTHER_MRC_MODES else ""
    return f"MRC mode {mode}{what} is not supported; lipoframe reads modes {', '.join(f'{m} ({t})' for m, t in MRC_MODES.items())}"


def _meta(path: Path, shape, pixel_size, *, flip_y=False) -> MicrographMeta:
    return MicrographMeta(name=file_stem(path), path=str(path), shape=tuple(int(s) for s in shape), pixel_size=pixel_size, flip_y=flip_y)


#: False while :func:`pixel_size_unused` is in effect.
_PIXEL_SIZE_USED = contextvars.ContextVar("lipoframe_pixel_size_used", default=True)


@contextlib.contextmanager
def pixel_size_unused():
    """Reads of files whose pixel size nobody uses (a mask, a heatmap, the images an
    evaluation reads for their shape): a header's pixel size is not warned about."""
    token = _PIXEL_SIZE_USED.set(False)
    try:
        yield
    finally:
        _PIXEL_SIZE_USED.reset(token)


def _header_pixel_size(path: Path, value: float | None) -> float | None:
    """The pixel size a header gives, or None when it gives none (0) or one that is not valid.

    A negative or non-finite value (an MRC header with ``mx = 0`` gives inf) is
    treated as missing, with a warning naming the file (none within
    :func:`pixel_size_unused`).
    """
    if value is None or value == 0:
        return None
    if not (math.isfinite(value) and value > 0):
        if _PIXEL_SIZE_USED.get():
            log.warning("%s: pixel size in the header is not valid (%g); treated as missing (give pixel_size=<Å/px>)", path, value)
        return None
    return value


#: The first bytes of a gzip-compressed file.
GZIP_MAGIC = b"\x1f\x8b"
#: The first bytes of a bzip2-compressed file ("BZh" and the block size, 1-9).
BZIP2_MAGIC = b"BZh"


def _file_format(head: bytes) -> tuple[str, str] | None:
    """(format, suffix) of a micrograph file from its first 212 bytes, or None."""
    if head[:4] in (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+"):
        return "TIFF", ".tif"
    if head[:4] == b"\x89PNG":
        return "PNG", ".png"
    if head[:3] == b"\xff\xd8\xff":
        return "JPEG", ".jpg"
    if head[:6] == b"\x93NUMPY":
        return "NumPy", ".npy"
    if head[:2] == GZIP_MAGIC:
        return "gzip-compressed", ".gz"
    if head[:3] == BZIP2_MAGIC and head[3:4] and head[3:4] in b"123456789":
        return "bzip2-compressed", ".bz2"
    if head[208:212] == b"MAP ":
        return "MRC", ".mrc"
    return None


def _why_unreadable(path: Path, problem: str, own: str) -> str:
    """``problem`` (the library's words), or what the file really is: empty, or in another format than ``own``."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(212)
    except OSError:
        return problem
    if not head:
        return "the file is empty"
    found = _file_format(head)
    if found is not None and found[0] != own:
        article = "an" if found[0] == "MRC" else "a"  # said letter by letter: "an MRC", "a NumPy", "a PNG", "a TIFF", "a JPEG"
        if found[1] in COMPRESSION_TOOLS:  # the MRC reader reads those: its problem is inside
            return problem if own == "MRC" else f"it is a {found[0]} file: decompress it first ({COMPRESSION_TOOLS[found[1]]})"
        return f"it is {article} {found[0]} file: give it the suffix {found[1]}"
    return problem


#: Suffixes of files that hold a movie's frames more often than a volume.
MOVIE_SUFFIXES = (".mrcs", ".tif", ".tiff", ".eer")
#: A stack fewer frames deep than this fraction of its width is a movie, whatever its suffix: movies are tens
#: of frames of 4096 px or more (0.01), tomograms a few hundred voxels thick for 1000 or so wide (0.15 to 0.5).
MOVIE_DEPTH = 0.1
#: The largest square image of a ``.mrcs`` taken for a particle box (RELION's extracted particles, boxes of tens
#: to a few hundred pixels) rather than a movie frame (3838 px and more) or a tomogram slice.
PARTICLE_BOX_MAX = 1024


def _stack_advice(path: Path, shape: tuple[int, ...]) -> str:
    """What to give instead of a 3D stack where a micrograph is expected: a movie, a tilt series, a particle stack
    or a tomogram, told from its suffix and its depth against its width (for a run's micrographs: not for the
    masks and heatmaps read within :func:`pixel_size_unused`)."""
    if not _PIXEL_SIZE_USED.get():
        return "give one micrograph per file (a tomogram: +experiment=tomo)"
    n = int(shape[0])
    depth = n / max(1, min(int(shape[1]), int(shape[2])))
    suffix = file_suffix(path)
    if suffix.endswith(COMPRESSION_SUFFIXES):
        suffix = suffix[: suffix.rindex(".")]  # .mrcs.gz is a .mrcs
    if suffix == ".mrcs" and int(shape[1]) == int(shape[2]) <= PARTICLE_BOX_MAX:  # RELION's extracted particles
        return (f"it looks like a stack of {n} extracted particles (RELION's .mrcs): lipoframe picks particles in "
                "micrographs; give the micrographs they came from (motion-corrected, denoised)")
    if suffix == ".st":  # IMOD's tilt series
        return f"it looks like a tilt series of {n} images: reconstruct a tomogram and pick it with +experiment=tomo, or give one micrograph per file"
    if suffix != ".rec" and depth < MOVIE_DEPTH:
        return (f"it looks like a movie of {n} frames: give motion-corrected micrographs (its frames aligned and summed, "
                "e.g. by RELION's MotionCorr, MotionCor2 or cryoSPARC's Patch Motion Correction)")
    if suffix in MOVIE_SUFFIXES and depth < 0.5:  # a TIFF tomogram is rare, but as thick as this
        return f"a movie of {n} frames? give motion-corrected micrographs (its frames aligned and summed); a tomogram? +experiment=tomo"
    return "give one micrograph per file (a tomogram: +experiment=tomo)"


def _wrong_dims(path: Path, shape: tuple[int, ...], dims: int) -> str:
    """The message for an array of ``shape`` where a ``dims``-D image is expected."""
    what = "a 3D stack" if len(shape) == 3 else f"a {len(shape)}D array"
    fix = {(3, 2): f"; {_stack_advice(path, shape)}" if len(shape) == 3 else "",
           (2, 3): "; for micrographs leave out +experiment=tomo (reader.dims=2)"}.get((len(shape), dims), "")
    return f"{path}: {what} of shape {tuple(shape)} where a {dims}D {'micrograph' if dims == 2 else 'volume'} is expected{fix}"


def _check_dims(path: Path, data: np.ndarray, dims: int) -> np.ndarray:
    # Leading axes of length 1 hold nothing: one plane (nz = 1), or a volume stack of one
    # (an MRC header with ispg 401, which mrcfile reads as 4D) is one image of its last axes.
    while data.ndim > dims and data.shape[0] == 1:
        data = data[0]
    if data.ndim != dims:
        raise InputError(_wrong_dims(path, tuple(int(n) for n in data.shape), dims))
    if min(data.shape) < 2:
        raise InputError(f"{path}: image of shape {tuple(data.shape)} is too small (fewer than 2 pixels along an axis)")
    if data.dtype.kind not in "biuf":
        raise InputError(f"{path}: pixels of type {data.dtype} are not real numbers")
    return data


@dataclass
class AutoReaderParams:
    """Choose the reader from the file suffix (``.mrc``, ``.tif``, ``.png``, ...).

    dims: 2 for micrographs, 3 for tomograms.
    """

    dims: int = 2

    def __post_init__(self) -> None:
        if self.dims not in (2, 3):
            raise ValueError(f"reader.dims must be 2 or 3, got {self.dims}")


class AutoReader(Reader):
    """Dispatches on the suffix; the runner resolves it to one of the others."""

    name = "auto"
    Params = AutoReaderParams
    summary = "pick the reader from the file suffix"


def _check_mrc_size(path: Path, header, size: int | None = None) -> None:
    """Refuse an MRC file whose header describes more or less data than the file holds.

    mrcfile only warns when the file is larger, and reads a wrongly shaped image.
    Less than one row of extra bytes at the end is padding: a warning.
    A mode the reader does not support is left to the caller's message.
    ``size``: the bytes of the MRC data (a compressed file's once decompressed); default: the file's size.
    """
    import mrcfile.utils

    try:
        dtype = mrcfile.utils.data_dtype_from_header(header)
    except ValueError:
        return
    shape = mrcfile.utils.data_shape_from_header(header)
    expected = 1024 + int(header.nsymbt) + dtype.itemsize * math.prod(shape)
    extra = (path.stat().st_size if size is None else size) - expected
    if 0 < extra < dtype.itemsize * max(1, int(header.nx)):
        # Less than a row: padding some writers leave, not a misdescribed image.
        log.warning("%s: %d byte(s) after the data that the header does not describe; ignored", path, extra)
        return
    if extra:
        dims = " x ".join(str(int(n)) for n in (header.nx, header.ny, header.nz))
        how = f"{extra} bytes larger than they describe" if extra > 0 else f"{-extra} bytes smaller than they describe (truncated?)"
        raise InputError(
            f"{path}: not a readable MRC file (the header's dimensions, {dims} in mode {int(header.mode)}, "
            f"do not match the file size: the file is {how})"
        )


#: IMOD's stamp at header byte 152: the word at byte 156 then holds IMOD's flags,
#: whose bit 0 says mode-0 bytes are signed (IMOD's mrc_format.txt).
IMOD_STAMP = 1146047817


def _mode0_bytes(path: Path, header, data: np.ndarray) -> np.ndarray:
    """Mode-0 pixels as the writer meant them: signed (MRC2014) or unsigned.

    IMOD wrote only unsigned bytes before 4.2.23 and marks them since then
    (:data:`IMOD_STAMP` without the signed flag); mrcfile reads every mode-0
    file as signed, which turns the bright half of an unsigned image dark.
    Without IMOD's stamp, bytes that spread far less as unsigned than as signed
    (values around 128 wrapped to -128) are read as unsigned, with a warning.
    """
    stamp, flags = (int(v) for v in np.frombuffer(header.extra2.tobytes()[40:48], dtype=header.mode.dtype))
    if stamp == IMOD_STAMP:
        return data.view(np.uint8) if not flags & 1 else data
    sample = data.reshape(-1)[:: max(1, data.size // 2**20)]  # about a million pixels are enough to tell
    if float(sample.view(np.uint8).std()) < 0.5 * float(sample.std()):
        log.warning("%s: mode 0 (bytes) read as unsigned: as signed bytes, as MRC2014 defines them, its values wrap "
                    "around at 127/-128 (a file written by older software)", path)
        return data.view(np.uint8)
    return data


@dataclass
class MrcReaderParams:
    """MRC/MRCS reader.

    dims: 2 for micrographs, 3 for tomograms.
    permissive: accept files whose header does not follow MRC2014 (with a warning).
    """

    dims: int = 2
    permissive: bool = False

    def __post_init__(self) -> None:
        if self.dims not in (2, 3):
            raise ValueError(f"reader.dims must be 2 or 3, got {self.dims}")


def _compression(path: Path) -> str | None:
    """``"gzip-compressed"`` or ``"bzip2-compressed"`` when ``path`` starts as such a file does, else None
    (None too when it cannot be read: the reader says why)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError:
        return None
    found = _file_format(head)
    return found[0] if found is not None and found[1] in COMPRESSION_TOOLS else None


@contextlib.contextmanager
def _open_mrc(path: Path, *, permissive: bool):
    """The MRC file ``path`` opened for reading, its size checked first (:func:`_check_mrc_size`).

    A plain file is memory-mapped; a gzip- or bzip2-compressed one
    (``mic.mrc.gz``, ``mic.mrc.bz2``, or any MRC file that starts as such a
    file does) is decompressed into memory.
    """
    import mrcfile
    from mrcfile.mrcinterpreter import MrcInterpreter

    kind = _compression(path)
    if kind is None:
        with mrcfile.open(str(path), mode="r", permissive=permissive, header_only=True) as m:
            _check_mrc_size(path, m.header)
        with mrcfile.mmap(str(path), mode="r", permissive=permissive) as m:
            yield m
        return
    try:
        with (gzip.open if kind == "gzip-compressed" else bz2.open)(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError, zlib.error) as exc:  # a damaged or truncated stream (zlib.error: damaged compressed data)
        raise InputError(f"{path}: not a readable {kind} MRC file ({str(exc).splitlines()[0]}: truncated or corrupt)") from None
    _check_mrc_size(path, MrcInterpreter(io.BytesIO(raw), permissive=permissive, header_only=True).header, size=len(raw))
    yield MrcInterpreter(io.BytesIO(raw), permissive=permissive)


class MrcReader(Reader):
    name = "mrc"
    Params = MrcReaderParams
    suffixes = tuple(f"{s}{c}" for c in ("", *COMPRESSION_SUFFIXES) for s in (".mrc", ".mrcs", ".rec", ".st", ".map"))
    summary = "MRC2014 modes 0, 1, 2, 6 and 12 (float16), also gzip- or bzip2-compressed (.mrc.gz, .mrc.bz2); pixel size from the header"

    def read(self, path: Path, *, pixel_size: float | None = None) -> Micrograph:
        path = Path(path)
        try:
            with warnings.catch_warnings(record=True) as caught:
                # Permissive mode's notes on a non-standard header (passed on
                # below); a data block that does not fill the file is refused
                # by _check_mrc_size first.
                warnings.simplefilter("always")
                with _open_mrc(path, permissive=self.params.permissive) as m:
                    mode = int(m.header.mode)
                    data = m.data
                    if mode == 0 and data is not None:
                        data = _mode0_bytes(path, m.header, data)
                    header_px, header_py, header_pz = float(m.voxel_size.x), float(m.voxel_size.y), float(m.voxel_size.z)
            notes = dict.fromkeys(str(w.message).splitlines()[0] for w in caught if "larger than expected" not in str(w.message))
            if notes and self.params.permissive:
                log.warning("%s: read despite a non-standard header (reader.permissive): %s", path, "; ".join(notes))
        except FileNotFoundError:
            raise InputError(f"{path}: file not found") from None
        except (ValueError, OSError, EOFError, OverflowError) as exc:  # OverflowError: negative sizes in a damaged header
            words = str(exc).splitlines()[0]
            why = _why_unreadable(path, words, "MRC")
            if why == words and (unknown := _MODE_WORDS.fullmatch(words)):
                raise InputError(f"{path}: {_unsupported_mode(int(unknown.group(1)))}") from None
            raise InputError(f"{path}: not a readable MRC file ({why})") from None
        if data is None:
            raise InputError(f"{path}: MRC file has no readable data (truncated or corrupt)")
        if mode not in MRC_MODES:
            raise InputError(f"{path}: {_unsupported_mode(mode)}")
        data = _check_dims(path, data, self.params.dims)
        px = pixel_size if pixel_size is not None else _header_pixel_size(path, header_px)
        if pixel_size is None and header_px > 0 and header_py > 0 and abs(header_py - header_px) > 0.01 * header_px:
            log.warning("%s: the header's pixel sizes differ (x %g, y %g Å/px); using x (give pixel_size=<Å/px> to choose)", path, header_px, header_py)
        if data.ndim == 3 and header_px > 0 and header_pz > 0 and abs(header_pz - header_px) > 0.01 * header_px:
            # A volume binned or stretched along z: spheres are ellipsoids in its voxels.
            log.warning("%s: the header's voxels are not cubic (x %g, z %g Å); lipoframe picks as if they were: "
                        "particles come out stretched or squashed along z (resample the volume to cubic voxels)",
                        path, header_px, header_pz)
        return Micrograph(meta=_meta(path, data.shape, px), image=data)


@dataclass
class TiffReaderParams:
    """TIFF reader (float32, uint16, uint8).

    dims: 2 for micrographs, 3 for tomograms.
    """

    dims: int = 2

    def __post_init__(self) -> None:
        if self.dims not in (2, 3):
            raise ValueError(f"reader.dims must be 2 or 3, got {self.dims}")


#: Å/px above which a TIFF's resolution tags are a print resolution (72 or 300 dots
#: per inch, as PIL, GIMP or ImageMagick write them: 3.5e6 or 8.5e5 Å/px), not a pixel size.
TIFF_PRINT_RESOLUTION_A = 1e4


def _tiff_pixel_size(tif) -> float | None:
    """Å/px from XResolution + ResolutionUnit (as RELION reads it), else None."""
    try:
        page = tif.pages[0]
        tags = page.tags
        xres = tags.get("XResolution")
        unit = tags.get("ResolutionUnit")
        if xres is None or unit is None:
            return None
        num, den = xres.value
        if num == 0 or den == 0:
            return None
        per_unit = num / den
        unit_value = int(unit.value)
        if unit_value == 3:  # centimetre
            return 1e8 / per_unit
        if unit_value == 2:  # inch
            return 2.54e8 / per_unit
    except Exception:  # noqa: BLE001 - a missing tag just means "unknown"
        return None
    return None


@contextlib.contextmanager
def _tifffile_notes():
    """Collect what tifffile logs while it reads a file (lines that would name no file)."""
    notes: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            notes.append(record.getMessage().splitlines()[0])

    logger, handler = logging.getLogger("tifffile"), Collect()
    propagate = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield notes
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


class TiffReader(Reader):
    name = "tiff"
    Params = TiffReaderParams
    suffixes = (".tif", ".tiff")
    summary = "TIFF float32/uint16/uint8; pixel size from XResolution in cm or inch"

    def read(self, path: Path, *, pixel_size: float | None = None) -> Micrograph:
        import tifffile

        path = Path(path)
        try:
            with _tifffile_notes() as notes, tifffile.TiffFile(str(path)) as tif:
                if not len(tif.pages):
                    raise InputError(f"{path}: not a readable TIFF file (it holds no image: truncated?)")
                samples = int(tif.pages[0].samplesperpixel)
                planar = samples > 1 and int(tif.pages[0].planarconfig) == 2  # SEPARATE: (samples, rows, cols)
                grey = int(tif.pages[0].photometric) in (0, 1)  # MINISWHITE/MINISBLACK: further samples are extra (alpha)
                shape = tuple(int(n) for n in tif.series[0].shape)
                if self.params.dims == 2 and samples == 1 and len(shape) == 3 and shape[0] > 1:
                    # Pages of grey frames (a movie): refused before gigabytes of frames are read.
                    raise InputError(_wrong_dims(path, shape, 2))
                data = tif.asarray()
                header_px = _tiff_pixel_size(tif)
        except InputError:
            raise
        except FileNotFoundError:
            raise InputError(f"{path}: file not found") from None
        except Exception as exc:  # noqa: BLE001 - tifffile raises many types
            why = _why_unreadable(path, str(exc).splitlines()[0], "TIFF")
            if "imagecodecs" in why:  # LZW, JPEG, ... compression: tifffile decodes it with imagecodecs
                why += ": pip install 'lipoframe[tiff]' (or imagecodecs) to read it"
            raise InputError(f"{path}: not a readable TIFF file ({why})") from None
        if notes:
            log.warning("%s: tifffile: %s", path, "; ".join(dict.fromkeys(notes)))
        if planar and data.ndim == 3 and data.shape[0] == samples:
            data = np.moveaxis(data, 0, -1)  # each sample in its own plane: as if interleaved (RGBRGB...)
        if samples > 1 and data.ndim == 3 and data.shape[-1] == samples and self.params.dims == 2:
            # Colour (RGB, RGBA) or other multi-sample pixels: the mean of the first three samples;
            # grey + alpha: the grey sample (as the PNG reader does; the mean made a 0/1 mask 0.5/1).
            # A stack of greyscale pages is not averaged (whatever its width): it is refused below.
            data = data[..., 0] if grey else data[..., :3].mean(axis=-1)
        data = _check_dims(path, np.asarray(data), self.params.dims)
        if not np.issubdtype(data.dtype, np.number) or np.iscomplexobj(data):
            raise InputError(f"{path}: unsupported TIFF pixel type {data.dtype}")
        if pixel_size is None and header_px is not None and header_px > TIFF_PRINT_RESOLUTION_A:
            if _PIXEL_SIZE_USED.get():
                log.warning("%s: the TIFF's resolution tags give %g Å/px, a print resolution (dots per inch), not a pixel size; "
                            "treated as missing (give pixel_size=<Å/px>)", path, header_px)
            header_px = None
        px = pixel_size if pixel_size is not None else _header_pixel_size(path, header_px)
        return Micrograph(meta=_meta(path, data.shape, px, flip_y=True), image=data)


@dataclass
class ImageReaderParams:
    """PNG/JPEG reader: 8- and 16-bit greyscale; colour and palette images are averaged, alpha dropped. No pixel size."""


class ImageReader(Reader):
    name = "image"
    Params = ImageReaderParams
    suffixes = (".png", ".jpg", ".jpeg")
    summary = "8/16-bit PNG or JPEG (colour and palette images are averaged); pixel size must be given"

    def read(self, path: Path, *, pixel_size: float | None = None) -> Micrograph:
        from PIL import Image

        path = Path(path)
        try:
            with Image.open(path) as im:
                if im.mode in ("1", "LA"):
                    im = im.convert("L")  # bilevel, grey + alpha: the grey values
                elif not (im.mode in ("L", "F", "RGB", "RGBA") or im.mode.startswith("I")):
                    im = im.convert("RGB")  # palette (P, PA), CMYK, ...: the colours, averaged below
                data = np.asarray(im)
        except FileNotFoundError:
            raise InputError(f"{path}: file not found") from None
        except Exception as exc:  # noqa: BLE001
            own = "JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG"
            raise InputError(f"{path}: not a readable image ({_why_unreadable(path, str(exc).splitlines()[0], own)})") from None
        if data.ndim == 3:
            data = data[..., :3].astype(np.float32).mean(axis=-1)
        data = _check_dims(path, data, 2)
        return Micrograph(meta=_meta(path, data.shape, pixel_size), image=data)


@dataclass
class NpyReaderParams:
    """NumPy ``.npy`` arrays (2D, or 3D with ``dims=3``). No pixel size."""

    dims: int = 2

    def __post_init__(self) -> None:
        if self.dims not in (2, 3):
            raise ValueError(f"reader.dims must be 2 or 3, got {self.dims}")


class NpyReader(Reader):
    name = "npy"
    Params = NpyReaderParams
    suffixes = (".npy",)
    summary = "NumPy .npy arrays (memory-mapped); pixel size must be given"

    def read(self, path: Path, *, pixel_size: float | None = None) -> Micrograph:
        path = Path(path)
        try:
            with open(path, "rb") as fh:
                if fh.read(6) != b"\x93NUMPY":
                    why = _why_unreadable(path, "it does not start with NumPy's header", "NumPy")
                    raise InputError(f"{path}: not a .npy file ({why})")
            data = np.load(path, mmap_mode="r", allow_pickle=False)
        except InputError:
            raise
        except FileNotFoundError:
            raise InputError(f"{path}: file not found") from None
        except Exception as exc:  # noqa: BLE001
            raise InputError(f"{path}: not a readable .npy file ({str(exc).splitlines()[0]})") from None
        data = _check_dims(path, data, self.params.dims)
        return Micrograph(meta=_meta(path, data.shape, pixel_size), image=data)


def colour_bits(path: Path) -> int | None:
    """Bits per sample of a colour PNG, JPEG or integer TIFF, else None.

    The readers average the colour samples of such an image into floating
    point, so the integer scale of a mask or map saved in colour is known
    only from the file (used by the ``mask`` filter and the ``heatmap``
    detector).
    """
    suffix = Path(path).suffix.lower()
    try:
        if suffix in (".png", ".jpg", ".jpeg"):
            from PIL import Image

            with Image.open(path) as im:
                colour = not (im.mode in ("1", "L", "LA", "F") or im.mode.startswith("I"))
            return 8 if colour else None
        if suffix in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(path) as tif:
                page = tif.pages[0]
                if int(page.samplesperpixel) > 1 and np.issubdtype(page.dtype, np.integer):
                    return int(page.bitspersample)
    except Exception:  # noqa: BLE001 - the reader has read the file; an unusual header is not a colour image
        return None
    return None


@hookimpl
def lipoframe_register_stages(registry):
    for cls in (AutoReader, MrcReader, TiffReader, ImageReader, NpyReader):
        registry.add(cls)
