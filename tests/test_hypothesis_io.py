"""Property-based tests (hypothesis) of the readers and writers.

Readers: any valid MRC/TIFF array reads back exactly; any invalid file
(random bytes, truncated, damaged header, a stack) gives an InputError naming
the file, never another exception. Writers: random pick tables written by
every built-in writer read back to the same particles.
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile
import tifffile
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from lipoframe import schema
from lipoframe.builtin.readers import MrcReader, TiffReader
from lipoframe.records import InputError, MicrographMeta
from lipoframe.runner import load_work, save_work

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

MRC_DTYPES = [np.int8, np.int16, np.float32, np.uint16, np.float16]
TIFF_DTYPES = [np.uint8, np.uint16, np.int16, np.float32]
shapes_2d = st.tuples(st.integers(2, 48), st.integers(2, 48))


def _elements(dt):
    dt = np.dtype(dt)
    if dt.kind == "f":  # micrograph-like magnitudes (mrcfile's header statistics overflow near float32 max)
        return hnp.from_dtype(dt, min_value=-1e4, max_value=1e4, allow_nan=False, allow_infinity=False, allow_subnormal=False)
    return hnp.from_dtype(dt)


def _arrays(dtypes):
    return st.sampled_from(dtypes).flatmap(lambda dt: hnp.arrays(dt, shapes_2d, elements=_elements(dt)))


def _mrc_bytes(data: np.ndarray, voxel: float = 1.0) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.mrc"
        with mrcfile.new(str(path)) as m:
            m.set_data(data)
            m.voxel_size = voxel
        return path.read_bytes()


def _tiff_bytes(data: np.ndarray) -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, data, photometric="minisblack")
    return buf.getvalue()


def _read(reader, tmp: Path, name: str, payload: bytes):
    path = tmp / name
    path.write_bytes(payload)
    return path, reader.read(path, pixel_size=None)


def _read_or_input_error(reader, tmp: Path, name: str, payload: bytes):
    """The reader either returns a 2D micrograph or raises InputError naming the file."""
    path = tmp / name
    path.write_bytes(payload)
    try:
        mic = reader.read(path, pixel_size=None)
    except InputError as exc:
        assert str(exc).startswith(f"{path}: ")
        assert "\n" not in str(exc)
        return None
    assert mic.image.ndim == 2 and min(mic.image.shape) >= 2
    return mic


# -- readers: valid input ---------------------------------------------------------
@SETTINGS
@given(data=_arrays(MRC_DTYPES), voxel=st.sampled_from([0.0, 0.5, 1.06, 4.2]))
def test_mrc_round_trip(data, voxel):
    with tempfile.TemporaryDirectory() as tmp:
        path, mic = _read(MrcReader(), Path(tmp), "m.mrc", _mrc_bytes(data, voxel))
        expected = data
        if data.dtype == np.int8 and float(data.view(np.uint8).std()) < 0.5 * float(data.std()):
            # The documented exception (readers._mode0_bytes): mode-0 bytes that spread far less
            # as unsigned than as signed are taken for unsigned bytes of older software, with a warning.
            expected = data.view(np.uint8)
        np.testing.assert_array_equal(np.asarray(mic.image), expected)
        assert mic.meta.shape == data.shape
        if voxel > 0:
            assert mic.meta.pixel_size == pytest.approx(voxel, rel=1e-6)
        else:
            assert mic.meta.pixel_size is None


@SETTINGS
@given(data=_arrays(TIFF_DTYPES))
def test_tiff_round_trip(data):
    with tempfile.TemporaryDirectory() as tmp:
        path, mic = _read(TiffReader(), Path(tmp), "t.tif", _tiff_bytes(data))
        np.testing.assert_array_equal(np.asarray(mic.image), data)
        assert mic.meta.flip_y


# -- readers: invalid input -------------------------------------------------------
@SETTINGS
@given(payload=st.binary(min_size=0, max_size=3000))
def test_random_bytes_never_crash_the_readers(payload):
    with tempfile.TemporaryDirectory() as tmp:
        _read_or_input_error(MrcReader(), Path(tmp), "r.mrc", payload)
        _read_or_input_error(TiffReader(), Path(tmp), "r.tif", payload)


@SETTINGS
@given(data=_arrays([np.float32, np.int16]), cut=st.floats(0.0, 0.999))
def test_truncated_files_are_input_errors(data, cut):
    with tempfile.TemporaryDirectory() as tmp:
        for name, payload, reader in (("c.mrc", _mrc_bytes(data), MrcReader()), ("c.tif", _tiff_bytes(data), TiffReader())):
            keep = int(len(payload) * cut)
            assume(keep < len(payload))
            path = Path(tmp) / name
            path.write_bytes(payload[:keep])
            with pytest.raises(InputError, match=f"^{path}: "):
                reader.read(path, pixel_size=None)


@SETTINGS
@given(data=_arrays([np.float32]), where=st.integers(0, 1023), value=st.integers(0, 255))
def test_damaged_mrc_header_is_read_or_an_input_error(data, where, value):
    payload = bytearray(_mrc_bytes(data))
    payload[where] = value
    with tempfile.TemporaryDirectory() as tmp:
        _read_or_input_error(MrcReader(), Path(tmp), "h.mrc", bytes(payload))


@SETTINGS
@given(depth=st.integers(2, 4), shape=st.tuples(st.integers(1, 48), st.integers(1, 48)))
def test_stacks_are_refused_where_a_micrograph_is_expected(depth, shape):
    # Greyscale pages 3 or 4 px wide are a stack too, not RGB pixels.
    data = np.zeros((depth, *shape), np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        for name, payload, reader in (("s.mrc", _mrc_bytes(data), MrcReader()), ("s.tif", _tiff_bytes(data), TiffReader())):
            path = Path(tmp) / name
            path.write_bytes(payload)
            with pytest.raises(InputError, match="3D stack"):
                reader.read(path, pixel_size=None)


@pytest.mark.parametrize("samples", [3, 4])
def test_colour_tiff_pixels_are_averaged(tmp_path, samples):
    grey = np.arange(12 * 7, dtype=np.float32).reshape(12, 7)
    colour = np.stack([grey - 1, grey, grey + 1, np.full_like(grey, 100)][:samples], axis=-1)
    path = tmp_path / "c.tif"
    tifffile.imwrite(path, colour, photometric="rgb", extrasamples=["unspecified"] if samples == 4 else None)
    mic = TiffReader().read(path, pixel_size=None)
    assert mic.image.shape == grey.shape
    np.testing.assert_allclose(mic.image, grey)  # the alpha-like fourth sample is ignored


# -- pick tables ------------------------------------------------------------------
names_st = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_+-]{0,11}", fullmatch=True)
reasons_st = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=12)


@st.composite
def pick_tables(draw):
    """(picks, metas): 1-3 MRC micrographs with 0-12 picks each, in lipoframe's schema."""
    names = draw(st.lists(names_st, min_size=1, max_size=3, unique_by=str.lower))
    rows, metas = [], {}
    for name in names:
        ny, nx = draw(st.integers(64, 4096)), draw(st.integers(64, 4096))
        metas[name] = MicrographMeta(name=name, path=f"/data/{name}.mrc", shape=(ny, nx), pixel_size=draw(st.sampled_from([1.0, 1.34, 2.5])))
        for _ in range(draw(st.integers(0, 12))):
            accepted = draw(st.booleans())
            rows.append({
                schema.MICROGRAPH: name,
                schema.X: draw(st.floats(0, nx - 1)),
                schema.Y: draw(st.floats(0, ny - 1)),
                schema.DIAMETER: draw(st.floats(3, 60)),
                schema.SCORE: draw(st.floats(-1e3, 1e3)),
                schema.LEVEL: draw(st.integers(0, 3)),
                schema.SIGMA: draw(st.floats(0.5, 30)),
                schema.ACCEPTED: accepted,
                schema.REASON: "" if accepted else draw(reasons_st),
            })
    picks = pd.DataFrame(rows, columns=list(schema.CORE_COLUMNS))
    picks[schema.ACCEPTED] = picks[schema.ACCEPTED].astype(bool)
    picks[schema.LEVEL] = picks[schema.LEVEL].astype(np.int64)
    picks[schema.MICROGRAPH] = picks[schema.MICROGRAPH].astype(object)
    picks[schema.REASON] = picks[schema.REASON].astype(object)
    return picks, metas


@SETTINGS
@given(table=pick_tables())
def test_per_micrograph_results_round_trip(table):
    """The checkpoint files that resume and merge read give back the same table."""
    picks, metas = table
    name = next(iter(metas))
    mine = picks[picks[schema.MICROGRAPH] == name].reset_index(drop=True)
    with tempfile.TemporaryDirectory() as tmp:
        save_work(Path(tmp), metas[name], mine, "fp", 0.1, source={"size": 1, "mtime": 2})
        meta, back = load_work(Path(tmp), name, "fp", source={"size": 1, "mtime": 2})
        assert meta == metas[name]
        assert load_work(Path(tmp), name, "other") is None
        assert load_work(Path(tmp), name, "fp", source={"size": 1, "mtime": 3}) is None
    assert list(back.columns) == list(mine.columns) and len(back) == len(mine)
    for col in (schema.MICROGRAPH, schema.REASON):
        assert back[col].tolist() == mine[col].tolist()
    assert back[schema.ACCEPTED].astype(bool).tolist() == mine[schema.ACCEPTED].tolist()
    for col in (schema.X, schema.Y, schema.DIAMETER, schema.SCORE, schema.SIGMA):
        np.testing.assert_allclose(back[col].to_numpy(float), mine[col].to_numpy(float), atol=5e-5 + 1e-9)


@pytest.fixture(scope="module")
def all_writers():
    """Stages with every built-in writer selected."""
    from lipoframe import plugins
    from lipoframe.merge import compose_config
    from lipoframe.runner import build_stages

    _, registry, _ = plugins.load()
    wanted = [w for w in ("csv", "star", "cryosparc", "cbox", "box") if ("writer", w) in registry]
    _, cfg = compose_config([f"writer=[{','.join(wanted)}]", "units=px", "dmin=3", "dmax=64"])
    return cfg, build_stages(cfg, registry), wanted


def _close(a, b, tol):
    a, b = np.sort(np.asarray(a, float)), np.sort(np.asarray(b, float))
    assert a.shape == b.shape
    np.testing.assert_allclose(a, b, atol=tol)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(table=pick_tables())
def test_writers_round_trip_random_tables(all_writers, table):
    from lipoframe.runner import dataset_context

    cfg, stages, wanted = all_writers
    picks, metas = table
    picks = picks.copy()
    picks[schema.DIAMETER_A] = picks[schema.DIAMETER] * 1.0
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        ctx = dataset_context(metas, cfg)
        binning = stages.binner.assign(picks, metas, ctx)
        binned, files = binning.picks, []
        for writer in stages.writers:
            files += writer.write(binned, metas, binning.plan, out, ctx)
        assert all(out.resolve() in Path(f).resolve().parents for f in files)
        acc = binned[binned[schema.ACCEPTED].astype(bool)]

        back = pd.read_csv(out / "picks.csv", keep_default_na=False, na_values=[""], dtype={schema.MICROGRAPH: str})
        assert len(back) == len(acc)
        assert back[schema.MICROGRAPH].astype(str).tolist() == acc[schema.MICROGRAPH].astype(str).tolist()
        _close(back[schema.X], acc[schema.X], 0.0051)
        _close(back[schema.DIAMETER], acc[schema.DIAMETER], 0.0051)

        for name, meta in metas.items():
            mine = acc[acc[schema.MICROGRAPH] == name]
            ny, nx = meta.shape
            if "cbox" in wanted:
                cbox = [f for f in files if Path(f).suffix == ".cbox" and Path(f).stem == name]
                assert len(cbox) == 1
                blocks = starfile.read(cbox[0], always_dict=True)
                loop = blocks.get("cryolo")
                if len(mine):
                    _close(loop["CoordinateX"] + loop["Width"] / 2, mine[schema.X], 0.0011)
                    _close(loop["CoordinateY"] + loop["Height"] / 2, mine[schema.Y], 0.0011)
                    _close(loop["EstWidth"], mine[schema.DIAMETER], 0.0011)
                else:
                    assert loop is None or len(loop) == 0
            if "box" in wanted and len(mine):
                box = [f for f in files if Path(f).suffix == ".box" and Path(f).stem == name and "bins" not in Path(f).parts]
                assert len(box) == 1
                arr = np.loadtxt(box[0], ndmin=2)
                _close(arr[:, 0] + arr[:, 2] / 2, mine[schema.X], 0.5 + 1e-9)
                _close(arr[:, 1] + arr[:, 3] / 2, mine[schema.Y], 0.5 + 1e-9)
            if "cryosparc" in wanted:
                cs = np.load(out / "cryosparc" / "particles.cs")
                mask = np.array([Path(p.decode() if isinstance(p, bytes) else str(p)).stem == name for p in cs["location/micrograph_path"]], bool)
                assert mask.sum() == len(mine)
                _close(cs["location/center_x_frac"][mask] * nx, mine[schema.X], 1e-3 * max(1.0, nx / 1000))
        if "cryosparc" in wanted:
            assert len(np.load(out / "cryosparc" / "particles.cs")) == len(acc)
        if "star" in wanted:
            stars = [f for f in files if str(f).endswith("_autopick.star") and "bins" not in Path(f).parts]
            total = 0
            for f in stars:
                df = starfile.read(f)
                if isinstance(df, dict):
                    df = next(iter(df.values()), pd.DataFrame())
                total += len(df)
                assert np.all(np.isfinite(df.get("rlnCoordinateX", pd.Series(dtype=float)).to_numpy(float)))
            assert total == len(acc)
