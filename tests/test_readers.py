"""Readers: the pixel size a TIFF header carries, and one clear message per unreadable file."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from conftest import write_mrc

from lipoframe.builtin.readers import ImageReader, NpyReader, TiffReader
from lipoframe.records import InputError

IMAGE = np.arange(48, dtype=np.float32).reshape(6, 8)


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        # RELION writes (and reads) CENTIMETER with XResolution = 1e8 / pixel size; the
        # rational is given exactly (older tifffile rounds 1e8 / 1.06 to 1.071 Å).
        ({"resolution": ((3679245283, 39), (3679245283, 39)), "resolutionunit": "CENTIMETER"}, 1.06),
        # RELION also reads INCH: 2.54e8 / XResolution.
        ({"resolution": ((200000000, 1), (200000000, 1)), "resolutionunit": "INCH"}, 1.27),
        # ImageJ's form (unit NONE, Å in the description) is ignored by RELION, and by us.
        ({"imagej": True, "resolution": (1 / 1.06, 1 / 1.06), "metadata": {"unit": "angstrom", "spacing": 1.06}}, None),
        ({}, None),
    ],
)
def test_tiff_pixel_size_is_read_as_relion_reads_it(tmp_path, options, expected):
    path = tmp_path / "m.tif"
    tifffile.imwrite(path, IMAGE, **options)
    mic = TiffReader().read(path, pixel_size=None)
    np.testing.assert_array_equal(np.asarray(mic.image), IMAGE)
    if expected is None:
        assert mic.meta.pixel_size is None
    else:
        assert mic.meta.pixel_size == pytest.approx(expected, rel=1e-6)
    # A pixel size given by the user wins over the header.
    assert TiffReader().read(path, pixel_size=2.0).meta.pixel_size == 2.0


@pytest.mark.parametrize(("dims", "data", "fix"), [
    (2, np.stack([IMAGE] * 3), "give one micrograph per file (a tomogram: +experiment=tomo)"),
    (3, IMAGE, "for micrographs leave out +experiment=tomo (reader.dims=2)"),
])
def test_a_file_with_the_wrong_number_of_dimensions_is_told_what_to_do(tmp_path, dims, data, fix):
    """'a 3D stack of shape (3, 6, 8) where a 2D micrograph is expected' said what was wrong, not what to do."""
    from lipoframe.builtin.readers import MrcReader, MrcReaderParams

    path = write_mrc(tmp_path / "m.mrc", data)
    with pytest.raises(InputError) as caught:
        MrcReader(MrcReaderParams(dims=dims)).read(path, pixel_size=None)
    assert str(caught.value) == (f"{path}: {'a 3D stack' if dims == 2 else 'a 2D array'} of shape {data.shape} where a "
                                 f"{dims}D {'micrograph' if dims == 2 else 'volume'} is expected; {fix}")


MOVIE = "it looks like a movie of {n} frames: give motion-corrected micrographs (its frames aligned and summed, e.g. by " \
        "RELION's MotionCorr, MotionCor2 or cryoSPARC's Patch Motion Correction)"


@pytest.mark.parametrize(("name", "shape", "fix"), [
    ("m.mrc", (12, 256, 256), MOVIE),  # few frames, each large: a movie whatever its suffix
    ("m.tif", (12, 256, 256), MOVIE),
    ("m.mrcs", (60, 256, 200), "a movie of {n} frames? give motion-corrected micrographs (its frames aligned and summed); "
                               "a tomogram? +experiment=tomo"),
    ("m.mrc", (60, 256, 200), "give one micrograph per file (a tomogram: +experiment=tomo)"),  # as thick as a tomogram
    ("m.rec", (12, 256, 256), "give one micrograph per file (a tomogram: +experiment=tomo)"),  # IMOD's reconstruction
    ("m.st", (12, 256, 256), "it looks like a tilt series of {n} images: reconstruct a tomogram and pick it with "
                             "+experiment=tomo, or give one micrograph per file"),
    # a particle stack: was told it was a tomogram
    ("m.mrcs", (300, 64, 64), "it looks like a stack of {n} extracted particles (RELION's .mrcs): lipoframe picks particles in "
                              "micrographs; give the micrographs they came from (motion-corrected, denoised)"),
    ("m.mrcs", (12, 256, 256), "it looks like a stack of {n} extracted particles (RELION's .mrcs): lipoframe picks particles in "
                               "micrographs; give the micrographs they came from (motion-corrected, denoised)"),  # few: no movie
    ("m.mrcs", (12, 1200, 1200), MOVIE),  # frames larger than a particle box: a (small) movie
])
def test_a_movie_given_as_a_micrograph_is_told_apart_from_a_tomogram(tmp_path, name, shape, fix):
    """A movie stack (40 x 4096 x 4096 frames) was told to try +experiment=tomo, which is rarely the fix."""
    from lipoframe.builtin.readers import MrcReader

    data = np.zeros(shape, np.uint16)
    path = tmp_path / name
    if name.endswith(".tif"):
        tifffile.imwrite(path, data, photometric="minisblack")
        reader = TiffReader()
    else:
        write_mrc(path, data)
        reader = MrcReader()
    with pytest.raises(InputError) as caught:
        reader.read(path, pixel_size=None)
    assert str(caught.value) == f"{path}: a 3D stack of shape {shape} where a 2D micrograph is expected; {fix.format(n=shape[0])}"


def test_a_mask_or_heatmap_stack_is_not_called_a_movie(tmp_path):
    """Masks and heatmaps are read with the same readers; 'give motion-corrected micrographs' is no advice for them."""
    from lipoframe.builtin.readers import pixel_size_unused

    path = tmp_path / "m_mask.tif"
    tifffile.imwrite(path, np.zeros((3, 64, 64), np.uint8), photometric="minisblack")
    with pixel_size_unused(), pytest.raises(InputError) as caught:
        TiffReader().read(path, pixel_size=None)
    assert str(caught.value) == (f"{path}: a 3D stack of shape (3, 64, 64) where a 2D micrograph is expected; "
                                 "give one micrograph per file (a tomogram: +experiment=tomo)")


def test_a_tiff_movie_is_refused_before_its_frames_are_read(tmp_path, monkeypatch):
    """A TIFF movie (tens of frames of 4096 x 4096 or more, often compressed) was read whole to be refused."""
    path = tmp_path / "movie.tif"
    tifffile.imwrite(path, np.zeros((8, 64, 64), np.uint8), photometric="minisblack")

    def no_read(*args, **kwargs):
        raise AssertionError("the frames were read")

    monkeypatch.setattr(tifffile.TiffFile, "asarray", no_read)
    with pytest.raises(InputError, match=r"a 3D stack of shape \(8, 64, 64\) .* a movie of 8 frames"):
        TiffReader().read(path, pixel_size=None)


def test_an_eer_movie_is_named_as_one(tmp_path):
    """'no reader for files ending in '.eer'' said what was wrong, not what to give instead."""
    from lipoframe import plugins
    from lipoframe.merge import compose_config
    from lipoframe.runner import build_stages

    path = tmp_path / "FoilHole_1_fractions.eer"
    path.write_bytes(b"II*\0")
    _, registry, _ = plugins.load()
    stages = build_stages(compose_config([f"input={path}"])[1], registry)
    with pytest.raises(InputError) as caught:
        stages.read(path, pixel_size=None)
    assert str(caught.value).startswith(f"{path}: no reader for files ending in '.eer' (known: ")
    assert str(caught.value).endswith("); an EER file is a movie (electron events): give motion-corrected micrographs")


@pytest.mark.parametrize("dpi", [72, 300])
def test_a_tiff_print_resolution_is_not_taken_for_a_pixel_size(tmp_path, caplog, dpi):
    """A TIFF saved at 72 dpi (PIL, GIMP, ImageMagick) was read as 3.5e6 Å/px: with units=A every
    micrograph failed as 'too small to pick', with units=px the plan and the exports carried it."""
    path = tmp_path / "m.tif"
    tifffile.imwrite(path, IMAGE, resolution=(dpi, dpi), resolutionunit="INCH")
    with caplog.at_level("WARNING", logger="lipoframe"):
        assert TiffReader().read(path, pixel_size=None).meta.pixel_size is None
    assert [r.getMessage() for r in caplog.records] == [
        f"{path}: the TIFF's resolution tags give {2.54e8 / dpi:g} Å/px, a print resolution (dots per inch), not a pixel size; "
        "treated as missing (give pixel_size=<Å/px>)"]
    assert TiffReader().read(path, pixel_size=2.0).meta.pixel_size == 2.0


def test_a_mask_or_heatmap_tiff_at_72_dpi_gives_no_pixel_size_warning(tmp_path, caplog):
    """A mask drawn in GIMP (72 dpi) warned on every micrograph to 'give pixel_size=<Å/px>', which
    does not apply to a mask: read_file/read_array (masks, heatmaps, evaluate's images) do not warn."""
    from lipoframe.plugins import read_array, read_file

    path = tmp_path / "mask.tif"
    tifffile.imwrite(path, (IMAGE > IMAGE.mean()).astype(np.uint8) * 255, resolution=(72, 72), resolutionunit="INCH")
    with caplog.at_level("WARNING", logger="lipoframe"):
        assert read_array(path).shape == IMAGE.shape
        assert read_file(path).meta.pixel_size is None
    assert [r.getMessage() for r in caplog.records] == []
    with caplog.at_level("WARNING", logger="lipoframe"):
        TiffReader().read(path, pixel_size=None)  # a run's input: still told
    assert len(caplog.records) == 1 and "print resolution" in caplog.records[0].getMessage()


@pytest.mark.parametrize(
    ("reader", "name", "problem"),
    [(ImageReader(), "m.png", "not a readable image"), (NpyReader(), "m.npy", r"not a \.npy file \(it does not start with NumPy's header\)"),
     (TiffReader(), "m.tif", "not a readable TIFF")],
)
def test_missing_and_unreadable_files_are_input_errors_naming_the_file(tmp_path, reader, name, problem):
    path = tmp_path / name
    with pytest.raises(InputError, match=f"^{path}: file not found"):
        reader.read(path, pixel_size=None)
    path.write_bytes(b"not an image at all")
    with pytest.raises(InputError, match=f"^{path}: {problem}"):
        reader.read(path, pixel_size=None)


def test_a_reader_chosen_by_name_says_which_files_it_reads(tmp_path):
    import mrcfile

    from lipoframe import plugins
    from lipoframe.merge import compose_config
    from lipoframe.runner import build_stages

    path = tmp_path / "m.mrc"
    with mrcfile.new(path) as mrc:
        mrc.set_data(IMAGE)
    registry = plugins.load()[1]
    npy = build_stages(compose_config(["reader=npy"])[1], registry)
    with pytest.raises(InputError, match=f"^{path}: not a \\.npy file .*; reader=npy reads .npy files \\(leave reader=auto"):
        npy.read(path, pixel_size=None)
    # A damaged file of the reader's own suffix gets no such hint; reader=auto reads the MRC.
    bad = tmp_path / "bad.npy"
    bad.write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(InputError) as err:
        npy.read(bad, pixel_size=None)
    assert "reader=npy reads" not in str(err.value)
    auto = build_stages(compose_config([])[1], registry)
    np.testing.assert_array_equal(np.asarray(auto.read(path, pixel_size=1.0).image), IMAGE)


def test_complex_pixels_are_refused(tmp_path):
    path = tmp_path / "c.npy"
    np.save(path, np.zeros((6, 8), np.complex64))
    with pytest.raises(InputError, match=f"^{path}: pixels of type complex64 are not real numbers"):
        NpyReader().read(path, pixel_size=None)


def test_npy_dims_must_match(tmp_path):
    path = tmp_path / "v.npy"
    np.save(path, np.zeros((3, 6, 8), np.float32))
    with pytest.raises(InputError, match=f"^{path}: "):
        NpyReader().read(path, pixel_size=None)
    from lipoframe.builtin.readers import NpyReaderParams

    assert NpyReader(NpyReaderParams(dims=3)).read(path, pixel_size=None).image.shape == (3, 6, 8)
    with pytest.raises(ValueError, match="reader.dims"):
        NpyReaderParams(dims=4)


def test_an_mrc_with_different_x_and_y_pixel_sizes_says_which_it_uses(tmp_path, caplog):
    from lipoframe.builtin.readers import MrcReader, MrcReaderParams

    path = write_mrc(tmp_path / "aniso.mrc", np.zeros((32, 48)), pixel_size=(4.0, 2.0, 1.0))
    with caplog.at_level("WARNING", logger="lipoframe"):
        mic = MrcReader(MrcReaderParams()).read(path)
    assert mic.meta.pixel_size == 4.0
    assert "pixel sizes differ (x 4, y 2 Å/px); using x" in caplog.text


@pytest.mark.parametrize(("voxel", "warned"), [((10.0, 10.0, 20.0), True), ((10.0, 10.0, 10.0), False), ((10.0, 10.0, 0.0), False)])
def test_a_volume_whose_voxels_are_not_cubic_is_warned_about(tmp_path, caplog, voxel, warned):
    # z binned twice as much as x and y was picked as cubic without a word
    import mrcfile

    from lipoframe.builtin.readers import MrcReader, MrcReaderParams

    path = tmp_path / "tomo.mrc"
    with mrcfile.new(str(path)) as m:
        m.set_data(np.zeros((8, 32, 48), dtype=np.float32))
        m.voxel_size = voxel
    with caplog.at_level("WARNING", logger="lipoframe"):
        mic = MrcReader(MrcReaderParams(dims=3)).read(path)
    assert mic.meta.pixel_size == 10.0
    assert ("voxels are not cubic (x 10, z 20 Å)" in caplog.text) == warned


@pytest.mark.parametrize("permissive", [False, True])
@pytest.mark.parametrize(
    ("nx", "cut", "problem"),
    [
        (24, 0, "the header's dimensions, 24 x 32 x 1 in mode 2, do not match the file size: the file is 3072 bytes larger than they describe"),
        (96, 0, "the header's dimensions, 96 x 32 x 1 in mode 2, do not match the file size: the file is 6144 bytes smaller than they describe"),
        (48, 100, "the file is 100 bytes smaller than they describe"),
    ],
)
def test_an_mrc_whose_header_does_not_match_its_size_is_refused(tmp_path, nx, cut, problem, permissive):
    import re

    import mrcfile

    from lipoframe.builtin.readers import MrcReader, MrcReaderParams

    path = tmp_path / "m.mrc"
    with mrcfile.new(str(path)) as m:
        m.set_data(np.zeros((32, 48), dtype=np.float32))
    data = bytearray(path.read_bytes())
    data[0:4] = np.int32(nx).tobytes()  # nx, little-endian as mrcfile writes it
    path.write_bytes(bytes(data[: len(data) - cut]))
    with pytest.raises(InputError, match=f"^{path}: not a readable MRC file \\(.*{re.escape(problem)}"):
        MrcReader(MrcReaderParams(permissive=permissive)).read(path)


def test_less_than_a_row_of_padding_after_the_data_is_a_warning(tmp_path, caplog):
    import mrcfile

    from lipoframe.builtin.readers import MrcReader

    path = tmp_path / "m.mrc"
    with mrcfile.new(str(path)) as m:
        m.set_data(IMAGE)
    path.write_bytes(path.read_bytes() + b"\0" * 8)  # a row is 8 x 4 bytes
    with caplog.at_level("WARNING", logger="lipoframe"):
        np.testing.assert_array_equal(MrcReader().read(path).image, IMAGE)
    assert "8 byte(s) after the data that the header does not describe; ignored" in caplog.text
    path.write_bytes(path.read_bytes() + b"\0" * 24)  # now a whole row: a misdescribed image
    with pytest.raises(InputError, match="32 bytes larger than they describe"):
        MrcReader().read(path)


def test_permissive_mrc_reading_still_accepts_a_header_without_map_id(tmp_path, caplog):
    import mrcfile

    from lipoframe.builtin.readers import MrcReader, MrcReaderParams

    path = tmp_path / "m.mrc"
    with mrcfile.new(str(path)) as m:
        m.set_data(IMAGE)
    data = bytearray(path.read_bytes())
    data[208:212] = b"XXXX"  # map ID: mrcfile warns in permissive mode, which is harmless
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match="Map ID"):
        MrcReader().read(path)
    with caplog.at_level("WARNING", logger="lipoframe"):
        np.testing.assert_array_equal(MrcReader(MrcReaderParams(permissive=True)).read(path).image, IMAGE)
    # The reader.permissive docs promise a warning: one line naming the file and what is non-standard.
    assert f"{path}: read despite a non-standard header (reader.permissive): " in caplog.text and "Map ID" in caplog.text


@pytest.mark.parametrize(
    ("offset", "value", "shown"),
    [(28, np.int32(0), "inf"), (40, np.float32(np.inf), "inf"), (40, np.float32(np.nan), "nan"), (40, np.float32(-48.0), "-6")],
)  # mx = 0 (pixel size cella.x / mx), cella.x = inf, nan or negative
def test_an_mrc_header_pixel_size_that_is_not_valid_is_treated_as_missing(tmp_path, caplog, offset, value, shown):
    import mrcfile

    from lipoframe.builtin.readers import MrcReader

    path = tmp_path / "m.mrc"
    with mrcfile.new(str(path)) as m:
        m.set_data(IMAGE)
        m.voxel_size = 2.0
    data = bytearray(path.read_bytes())
    data[offset : offset + 4] = value.tobytes()
    path.write_bytes(bytes(data))
    with caplog.at_level("WARNING", logger="lipoframe"):
        assert MrcReader().read(path).meta.pixel_size is None
    assert f"{path}: pixel size in the header is not valid ({shown}); treated as missing (give pixel_size=<Å/px>)" in caplog.text
    assert MrcReader().read(path, pixel_size=1.5).meta.pixel_size == 1.5


def test_an_mrc_header_without_pixel_size_gives_none_without_a_warning(tmp_path, caplog):
    import mrcfile

    from lipoframe.builtin.readers import MrcReader

    path = tmp_path / "m.mrc"
    with mrcfile.new(str(path)) as m:
        m.set_data(IMAGE)
    with caplog.at_level("WARNING", logger="lipoframe"):
        assert MrcReader().read(path).meta.pixel_size is None
    assert not caplog.text


def _grey_png(tmp_path, mode):
    """A small PNG saved in ``mode``, and the grey values the reader must return."""
    from PIL import Image

    grey = np.repeat((np.arange(8, dtype=np.uint8) * 32)[None, :], 6, axis=0)
    if mode == "P":  # a palette that does not map index i to grey i: 7 - i is drawn in grey 32 * i
        im = Image.fromarray((7 - grey // 32).astype(np.uint8), mode="P")
        im.putpalette(np.repeat(np.arange(7, -1, -1, dtype=np.uint8) * 32, 3).tolist())
        im.info["transparency"] = 0
    elif mode == "1":
        im = Image.fromarray(grey >= 128).convert("1")
        grey = np.where(grey >= 128, 255, 0).astype(np.uint8)
    elif mode == "I;16":
        grey = grey.astype(np.uint16) * 257 + 3  # beyond 8 bits
        im = Image.fromarray(grey)
    else:  # LA, RGBA: an alpha that must not count
        im = Image.fromarray(grey).convert(mode)
        im.putalpha(Image.fromarray(np.full_like(grey, 7)))
    path = tmp_path / f"m_{mode.replace(';', '')}.png"
    im.save(path)
    with Image.open(path) as check:
        assert check.mode == mode
    return path, grey


@pytest.mark.parametrize("mode", ["P", "1", "LA", "RGBA", "I;16"])
def test_png_images_are_read_as_grey_values_whatever_their_mode(tmp_path, mode):
    path, grey = _grey_png(tmp_path, mode)
    image = ImageReader().read(path, pixel_size=None).image
    assert image.shape == grey.shape
    np.testing.assert_array_equal(image, grey)


@pytest.mark.parametrize("imod", [None, "unsigned", "signed"])
def test_mode0_bytes_written_unsigned_are_read_unsigned(tmp_path, caplog, imod):
    # An 8-bit image around 128 in a mode-0 file (IMOD before 4.2.23, or IMOD's
    # flags saying unsigned) was read as signed: its bright half wrapped to -128.
    import mrcfile

    from lipoframe.builtin.readers import IMOD_STAMP, MrcReader

    grey = (np.arange(48).reshape(6, 8) * 2 + 80).astype(np.uint8)  # 80 ... 174
    path = tmp_path / "m.mrc"
    with mrcfile.new(str(path)) as m:
        m.set_data(grey.view(np.int8))
    if imod is not None:
        data = bytearray(path.read_bytes())
        data[152:160] = np.array([IMOD_STAMP, 0 if imod == "unsigned" else 1], dtype="<i4").tobytes()
        path.write_bytes(bytes(data))
    with caplog.at_level("WARNING", logger="lipoframe"):
        image = np.asarray(MrcReader().read(path).image)
    # IMOD's flag is followed either way; only a guess from the values is warned about.
    np.testing.assert_array_equal(image, grey.view(np.int8) if imod == "signed" else grey)
    assert ("mode 0 (bytes) read as unsigned" in caplog.text) == (imod is None)
    assert (f"{path}: " in caplog.text) == (imod is None)


@pytest.mark.parametrize(("mode", "what"), [(16, "MRC mode 16 (RGB colour)"), (101, "MRC mode 101 (4-bit packed integers)"),
                                             (4, "MRC mode 4 (complex float32, a Fourier transform)"), (7, "MRC mode 7")])
def test_an_mrc_mode_that_holds_no_micrograph_is_named_with_the_modes_read(tmp_path, mode, what):
    # mrcfile's own words ("not a readable MRC file (Unrecognised mode '16')") said neither what
    # the file holds nor which modes lipoframe reads.
    import mrcfile

    from lipoframe.builtin.readers import MrcReader

    path = tmp_path / "m.mrc"
    with mrcfile.new(str(path)) as m:
        m.set_data(np.zeros((8, 8), np.complex64 if mode == 4 else np.float32))
    if mode != 4:
        data = bytearray(path.read_bytes())
        data[12:16] = np.array([mode], dtype="<i4").tobytes()
        path.write_bytes(bytes(data))
    with pytest.raises(InputError) as err:
        MrcReader().read(path)
    assert str(err.value) == f"{path}: {what} is not supported; lipoframe reads modes 0 (int8), 1 (int16), 2 (float32), 6 (uint16), 12 (float16)"


def test_mode0_signed_bytes_stay_signed(tmp_path, caplog):
    import mrcfile

    from lipoframe.builtin.readers import MrcReader

    signed = (np.arange(48).reshape(6, 8) * 5 - 120).astype(np.int8)  # -120 ... 115, around 0
    path = tmp_path / "m.mrc"
    with mrcfile.new(str(path)) as m:
        m.set_data(signed)
    with caplog.at_level("WARNING", logger="lipoframe"):
        np.testing.assert_array_equal(MrcReader().read(path).image, signed)
    assert not caplog.text


def test_an_lzw_tiff_is_read_with_imagecodecs_or_refused_naming_the_extra(tmp_path):
    # SerialEM and other microscope software write LZW-compressed TIFFs; tifffile
    # needs imagecodecs for them, and the refusal named no way to get it.
    from PIL import Image

    image = (IMAGE - IMAGE.min()) / np.ptp(IMAGE) * 200
    path = tmp_path / "lzw.tif"
    Image.fromarray(image.astype(np.uint8)).save(path, compression="tiff_lzw")
    try:
        import imagecodecs  # noqa: F401
    except ImportError:
        with pytest.raises(InputError, match=r"requires the 'imagecodecs' package: pip install 'lipoframe\[tiff\]' \(or imagecodecs\)"):
            TiffReader().read(path)
    else:
        np.testing.assert_array_equal(TiffReader().read(path).image, image.astype(np.uint8))


def test_a_packbits_tiff_is_read_without_imagecodecs(tmp_path):
    """pyproject.toml said PackBits TIFFs need imagecodecs (the 'tiff' extra): tifffile decodes PackBits itself.
    Read in a Python in which imagecodecs cannot be imported (it may be installed here). tifffile writes PackBits
    only with imagecodecs, so Pillow writes the files."""
    import subprocess
    import sys

    import tifffile
    from PIL import Image
    from scale_data import env

    grey = (IMAGE - IMAGE.min()) / np.ptp(IMAGE)
    grey[10:30] = 0.5  # runs, which PackBits stores as repeats
    images = {"u8": (grey * 200).astype(np.uint8), "u16": (grey * 60000).astype(np.uint16), "f32": grey.astype(np.float32)}
    for key, data in images.items():
        Image.fromarray(data).save(tmp_path / f"{key}.tif", compression="packbits")
        with tifffile.TiffFile(tmp_path / f"{key}.tif") as tif:
            assert tif.pages[0].compression == tifffile.COMPRESSION.PACKBITS
    script = (
        "import sys; sys.modules['imagecodecs'] = None\n"  # import imagecodecs raises ImportError
        "import numpy as np\n"
        "from lipoframe.builtin.readers import TiffReader\n"
        f"for key in {list(images)!r}:\n"
        f"    np.save(f'{tmp_path}/{{key}}.npy', TiffReader().read(f'{tmp_path}/{{key}}.tif').image)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env(), timeout=120)
    assert proc.returncode == 0, proc.stderr
    for key, data in images.items():
        read = np.load(tmp_path / f"{key}.npy")
        assert read.dtype == data.dtype
        np.testing.assert_array_equal(read, data)


def test_a_tiff_without_an_image_is_one_line_naming_the_file(tmp_path, caplog):
    # A TIFF cut after its 8-byte header gave two lines: tifffile's own
    # '<tifffile.TiffPages @8> invalid offset to first page 8', naming no file,
    # then '...: not a readable TIFF file (index 0 out of range(0))'.
    import struct

    path = tmp_path / "m.tif"
    tifffile.imwrite(path, IMAGE)
    full = path.read_bytes()
    path.write_bytes(full[:8])
    with caplog.at_level("WARNING"), pytest.raises(InputError) as err:
        TiffReader().read(path)
    assert str(err.value) == f"{path}: not a readable TIFF file (it holds no image: truncated?)"
    assert not caplog.records
    # A readable TIFF that tifffile has something to say about: one warning naming the file.
    data = bytearray(full)
    ifd = struct.unpack("<I", data[4:8])[0]
    next_ifd = ifd + 2 + 12 * struct.unpack("<H", data[ifd : ifd + 2])[0]
    data[next_ifd : next_ifd + 4] = struct.pack("<I", 10**6)  # a second page past the end of the file
    path.write_bytes(bytes(data))
    with caplog.at_level("WARNING"):
        np.testing.assert_array_equal(TiffReader().read(path).image, IMAGE)
    assert [r.name for r in caplog.records] == ["lipoframe"]
    assert caplog.records[0].getMessage().startswith(f"{path}: tifffile: ") and "invalid page offset" in caplog.text


@pytest.mark.parametrize(("name", "other"), [("m.mrc", "t.tif"), ("m.tif", "a.mrc"), ("m.png", "a.mrc"), ("m.npy", "t.tif"),
                                             ("m.mrc", "n.npy"), ("m.tif", "p.png")])
def test_a_file_that_is_empty_or_in_another_format_is_named_as_such(tmp_path, name, other):
    # An empty .mrc gave 'Couldn't read enough bytes for MRC header', a TIFF named
    # .mrc 'Map ID string not found - not an MRC file, or file is corrupt', an MRC
    # named .tif "not a TIFF file: header=b'0\\x00\\x00\\x00'": none said what the file was.
    import mrcfile

    from lipoframe.builtin.readers import MrcReader

    reader = {".mrc": MrcReader(), ".tif": TiffReader(), ".png": ImageReader(), ".npy": NpyReader()}[name[-4:]]
    source = tmp_path / other
    if other.endswith(".tif"):
        tifffile.imwrite(source, IMAGE)
    elif other.endswith(".npy"):
        np.save(source, IMAGE)
    elif other.endswith(".png"):
        from PIL import Image

        Image.fromarray(IMAGE.astype(np.uint8)).save(source)
    else:
        with mrcfile.new(str(source)) as m:
            m.set_data(IMAGE)
    path = tmp_path / name
    path.write_bytes(source.read_bytes())
    suffix = other[-4:]
    kind = {".tif": "a TIFF", ".mrc": "an MRC", ".npy": "a NumPy", ".png": "a PNG"}[suffix]  # 'an NumPy' before
    with pytest.raises(InputError, match=rf"^{path}: not a .*\(it is {kind} file: give it the suffix \{suffix}\)$"):
        reader.read(path, pixel_size=None)
    path.write_bytes(b"")
    with pytest.raises(InputError, match=rf"^{path}: not a .*\(the file is empty\)$"):
        reader.read(path, pixel_size=None)


@pytest.mark.parametrize(("dims", "shape"), [(2, (1, 6, 8)), (3, (1, 4, 6, 8))])
def test_a_volume_stack_header_of_one_plane_or_volume_is_read_as_one_image(tmp_path, dims, shape):
    """An MRC whose header says 'volume stack' (ispg 401) is read by mrcfile as 4D: one micrograph (nz = 1)
    was refused as 'a 4D array of shape (1, 1, 6, 8) where a 2D micrograph is expected', with no advice."""
    import mrcfile

    from lipoframe.builtin.readers import MrcReader, MrcReaderParams

    data = np.arange(np.prod(shape), dtype=np.float32).reshape(shape[-3:])
    path = tmp_path / "m.mrc"
    with mrcfile.new(str(path)) as m:
        m.set_data(data)
        m.header.ispg = 401
    with mrcfile.open(str(path)) as m:
        assert m.data.ndim == 4  # what the reader is given
    image = MrcReader(MrcReaderParams(dims=dims)).read(path, pixel_size=None).image
    np.testing.assert_array_equal(image, data.reshape(shape[-dims:]))


@pytest.mark.parametrize(("photometric", "extrasamples"), [("rgb", None), ("minisblack", ["unassalpha"])])
def test_a_tiff_with_each_colour_sample_in_its_own_plane_is_read_as_a_colour_tiff(tmp_path, photometric, extrasamples):
    """A planar RGB TIFF (PlanarConfiguration 2, which tifffile returns as (3, rows, cols)) was refused as
    'a 3D stack ... it looks like a movie of 3 frames'; its interleaved twin was read."""
    grey = np.arange(48, dtype=np.uint8).reshape(6, 8) * 5
    planes = np.stack([grey, grey + 1, grey + 3]) if photometric == "rgb" else np.stack([grey, np.full_like(grey, 7)])
    planar, interleaved = tmp_path / "planar.tif", tmp_path / "interleaved.tif"
    tifffile.imwrite(planar, planes, photometric=photometric, planarconfig="separate", extrasamples=extrasamples)
    tifffile.imwrite(interleaved, np.moveaxis(planes, 0, -1), photometric=photometric, planarconfig="contig",
                     extrasamples=extrasamples)
    expected = planes[:3].mean(axis=0) if photometric == "rgb" else grey
    for path in (planar, interleaved):
        np.testing.assert_array_equal(TiffReader().read(path, pixel_size=None).image, expected)


def _compress(kind: str, data: bytes) -> bytes:
    import bz2
    import gzip

    return {"gz": gzip, "bz2": bz2}[kind].compress(data)


#: A compressed MRC's suffix, what the messages call it and the byte of its stream to damage (gzip: the first of the
#: deflate data; bzip2: the block's CRC, after "BZh9" and the block's magic number).
COMPRESSED = [("gz", "gzip-compressed", 10), ("bz2", "bzip2-compressed", 10)]


@pytest.mark.parametrize("kind, said, byte", COMPRESSED)
def test_a_compressed_mrc_is_read_as_the_mrc(tmp_path, kind, said, byte):
    """A '.mrc.gz' micrograph got 'no reader for files ending in '.gz''; mrcfile reads gzip, so lipoframe does.
    A '.mrc.bz2' got 'no reader for files ending in '.bz2'': it is read the same way (stdlib bz2)."""
    from lipoframe.builtin.readers import MrcReader

    plain = write_mrc(tmp_path / "mic_001.mrc", IMAGE, pixel_size=1.25)
    packed = tmp_path / f"mic_001.mrc.{kind}"
    packed.write_bytes(_compress(kind, plain.read_bytes()))
    mic = MrcReader().read(packed)
    np.testing.assert_array_equal(mic.image, MrcReader().read(plain).image)
    assert (mic.meta.name, mic.meta.path, mic.meta.pixel_size) == ("mic_001", str(packed), 1.25)
    # a damaged stream, and a header that describes more data than the stream holds, are named as such
    (tmp_path / f"cut.mrc.{kind}").write_bytes(packed.read_bytes()[: packed.stat().st_size // 2])
    with pytest.raises(InputError, match=rf"^\S+cut\.mrc\.{kind}: not a readable {said} MRC file \(.*: truncated or corrupt\)$"):
        MrcReader().read(tmp_path / f"cut.mrc.{kind}")
    # damaged compressed data raises zlib.error (no OSError), which came out as 'reader/mrc: error: Error -3 ...'
    damaged = bytearray(packed.read_bytes())
    damaged[byte] ^= 0xFF
    (tmp_path / f"damaged.mrc.{kind}").write_bytes(bytes(damaged))
    with pytest.raises(InputError, match=rf"^\S+damaged\.mrc\.{kind}: not a readable {said} MRC file \(.*: truncated or corrupt\)$"):
        MrcReader().read(tmp_path / f"damaged.mrc.{kind}")
    (tmp_path / f"short.mrc.{kind}").write_bytes(_compress(kind, plain.read_bytes()[:-40]))
    with pytest.raises(InputError, match=rf"^\S+short\.mrc\.{kind}: not a readable MRC file \(the header's dimensions.*40 bytes smaller than they describe"):
        MrcReader().read(tmp_path / f"short.mrc.{kind}")


@pytest.mark.parametrize("kind, said, tool", [("gz", "gzip-compressed", "gunzip"), ("bz2", "bzip2-compressed", "bunzip2")])
def test_a_compressed_file_no_reader_takes_is_told_to_be_decompressed(tmp_path, kind, said, tool):
    from lipoframe import plugins
    from lipoframe.merge import compose_config
    from lipoframe.runner import build_stages

    path = tmp_path / f"mic.tif.{kind}"
    path.write_bytes(_compress(kind, b"II*\0"))
    stages = build_stages(compose_config([f"input={path}"])[1], plugins.load()[1])
    with pytest.raises(InputError) as caught:
        stages.read(path, pixel_size=None)
    assert str(caught.value).startswith(f"{path}: no reader for files ending in '.tif.{kind}' (known: ")
    assert str(caught.value).endswith(f"); decompress it first ({tool})")
    tiff = tmp_path / f"{kind}_named.tif"  # a compressed TIFF without its suffix: the TIFF reader says what it is
    tiff.write_bytes(path.read_bytes())
    with pytest.raises(InputError, match=rf"\(it is a {said} file: decompress it first \({tool}\)\)$"):
        TiffReader().read(tiff)
