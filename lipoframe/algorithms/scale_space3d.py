"""Multi-scale blob detection (DoG / LoG) in tomograms: maxima in (scale, z, y, x).

The 3D counterpart of :mod:`lipoframe.algorithms.scale_space`, with the same
pyramid idea: every scale is evaluated on a block-averaged copy of the volume
binned just enough that its sigma is a few voxels there, filtered with one
forward FFT per pyramid level and one inverse FFT per scale. Scales are
processed as a stream, so at most three response volumes are held at once
(a maximum along the scale axis needs its two neighbours only).

For a uniform ball of radius :math:`R` the scale-normalised Laplacian at its
centre, :math:`4\\pi R^3 (2\\pi\\sigma^2)^{-3/2} e^{-R^2/2\\sigma^2}`, peaks at
:math:`\\sigma = R/\\sqrt{3}`, so the diameter is :math:`2\\sqrt{3}\\,\\sigma`
(in 2D, :math:`\\sigma = R/\\sqrt{2}`) [1]_.

References
----------
.. [1] T. Lindeberg, "Feature detection with automatic scale selection",
       Int. J. Comput. Vis. 30 (1998) 79-116. doi:10.1023/A:1008045108935
"""

from __future__ import annotations

import itertools
import math

import numpy as np
from scipy import fft as sfft

from lipoframe.algorithms.scale_space import border_ratio, border_reach, check_search, collect_blobs, equalise_plane, plan_levels, transfer_of_f2
from lipoframe.algorithms.stats import parabola_offset

#: diameter = DIAMETER_PER_SIGMA_3D * sigma for a uniform ball at the LoG peak.
DIAMETER_PER_SIGMA_3D = 2.0 * math.sqrt(3.0)


class _PaddedSpectrum:
    """The FFT of a mirror-padded volume, filtered one transfer function at a time."""

    def __init__(self, volume: np.ndarray, pad: int, *, workers: int = 1):
        self.shape = volume.shape
        self.pads = tuple(min(pad, n - 1) for n in volume.shape)
        padded = np.pad(volume.astype(np.float32, copy=False), [(p, p) for p in self.pads], mode="symmetric")
        self.fshape = tuple(sfft.next_fast_len(n, real=True) for n in padded.shape)
        self.workers = workers
        self.spectrum = sfft.rfftn(padded, s=self.fshape, workers=workers)
        del padded
        fz = sfft.fftfreq(self.fshape[0]).astype(np.float32)[:, None, None]
        fy = sfft.fftfreq(self.fshape[1]).astype(np.float32)[None, :, None]
        fx = sfft.rfftfreq(self.fshape[2]).astype(np.float32)[None, None, :]
        self.f2 = fz * fz + fy * fy + fx * fx
        self._product = np.empty_like(self.spectrum)  # reused by every scale (the inverse FFT may overwrite it)

    def filtered(self, sigma: float, *, method: str, k: float) -> np.ndarray:
        """The volume filtered at scale ``sigma`` (:func:`transfer_of_f2`), unpadded, float32."""
        np.multiply(self.spectrum, transfer_of_f2(self.f2, sigma, method=method, k=k), out=self._product)
        out = sfft.irfftn(self._product, s=self.fshape, workers=self.workers, overwrite_x=True)
        (pz, py, px), (p, m, n) = self.pads, self.shape
        return np.ascontiguousarray(out[pz : pz + p, py : py + m, px : px + n], dtype=np.float32)


def blob_responses_3d(
    volume: np.ndarray,
    sigmas: np.ndarray,
    *,
    method: str = "dog",
    k: float = 1.1,
    workers: int = 1,
) -> np.ndarray:
    """Scale-normalised blob responses of a volume, bright blobs positive.

    Parameters
    ----------
    volume : (P, M, N) ndarray
        Volume with the particles bright.
    sigmas : (S,) array_like
        Sigmas in voxels.
    method : {'dog', 'log'}
        As in :func:`lipoframe.algorithms.scale_space.blob_responses`.
    k : float
        Scale ratio used by the DoG.
    workers : int
        FFT threads.

    Returns
    -------
    responses : (S, P, M, N) ndarray of float32
        Holds every scale at once; :func:`detect_blobs_3d` streams instead.
    """
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise ValueError(f"volume must be 3D, got {volume.ndim}D")
    if method not in ("dog", "log"):
        raise ValueError(f"method must be 'dog' or 'log', got {method!r}")
    sigmas = np.asarray(sigmas, dtype=float)
    pad = int(math.ceil(3.0 * sigmas.max() * (math.sqrt(k) if method == "dog" else 1.0)))
    spec = _PaddedSpectrum(volume, pad, workers=workers)
    return np.stack([spec.filtered(float(s), method=method, k=k) for s in sigmas])


def _noise(resp: np.ndarray, step: int = 2) -> tuple[float, float]:
    sub = resp[::step, ::step, ::step].ravel()
    med = float(np.median(sub))
    mad = float(np.median(np.abs(sub - med)))
    floor = 1e-6 * max(float(np.abs(sub).max()), 1e-30)
    return med, max(1.4826 * mad, floor)


def _local_maxima(r_lo: np.ndarray, r0: np.ndarray, r_hi: np.ndarray, idx: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
    """The candidates ``idx`` of ``r0`` that are maxima in (scale, z, y, x).

    A candidate must be at least every value of the 3x3x3 neighbourhood
    around it in its own scale ``r0`` and in the scales below and above
    (the faces repeat, like ``mode='nearest'``). Each neighbour is looked up
    for the candidates still standing only, which is far cheaper than a
    maximum filter over the whole volume. Keeps the order of ``idx``.
    """
    z, y, x = idx
    value = r0[idx]
    hi = [n - 1 for n in r0.shape]
    for vol in (r0, r_lo, r_hi):
        for dz, dy, dx in itertools.product((-1, 0, 1), repeat=3):
            if vol is r0 and dz == dy == dx == 0:
                continue
            ok = value >= vol[np.clip(z + dz, 0, hi[0]), np.clip(y + dy, 0, hi[1]), np.clip(x + dx, 0, hi[2])]
            z, y, x, value = z[ok], y[ok], x[ok], value[ok]
    return z, y, x


def _spatial_offsets(resp: np.ndarray, idx: tuple[np.ndarray, ...]) -> np.ndarray:
    out = np.zeros((len(idx[0]), resp.ndim))
    f0 = resp[idx].astype(float)
    for axis in range(resp.ndim):
        n = resp.shape[axis]
        lo = list(idx)
        hi = list(idx)
        lo[axis] = np.clip(idx[axis] - 1, 0, n - 1)
        hi[axis] = np.clip(idx[axis] + 1, 0, n - 1)
        off = parabola_offset(resp[tuple(lo)].astype(float), f0, resp[tuple(hi)].astype(float))
        valid = (idx[axis] > 0) & (idx[axis] < n - 1)
        out[:, axis] = np.where(valid, off, 0.0)
    return out


def detect_blobs_3d(
    volume: np.ndarray | None,
    *,
    dmin_px: float,
    dmax_px: float,
    method: str = "dog",
    k: float = 1.1,
    threshold_method: str = "mad",
    threshold: float = 6.0,
    min_sigma_binned: float = 3.0,
    octave_span: float = 4.0,
    exclude_border_px: float = 0.0,
    equalise_borders: bool = True,
    binned=None,
    workers: int = 1,
) -> dict[str, np.ndarray]:
    """Find bright, roughly spherical blobs with diameters in ``[dmin_px, dmax_px]``.

    Parameters
    ----------
    volume : (P, M, N) ndarray or None
        Full-resolution volume, particles bright. May be None when ``binned``
        is given.
    dmin_px, dmax_px : float
        Diameter range in full-resolution voxels.
    method, k, threshold_method, threshold, min_sigma_binned, octave_span
        As in :func:`lipoframe.algorithms.scale_space.detect_blobs`; with
        ``'percentile'`` the percentile is taken per scale.
    exclude_border_px : float
        Ignore maxima closer than this to any face of the volume.
    equalise_borders : bool
        Divide each scale's deviations from its median, near the faces, by
        how much more they fluctuate there than inside
        (:func:`lipoframe.algorithms.scale_space.border_ratio`): the mirror
        padding counts the noise near a face twice, which otherwise puts
        most noise maxima on the faces.
    binned : callable, optional
        ``binned(factor) -> (P // f, M // f, N // f) ndarray``, e.g.
        :meth:`lipoframe.records.Micrograph.signal`.
    workers : int
        FFT threads.

    Returns
    -------
    blobs : dict of (K,) ndarrays
        ``x_px``, ``y_px``, ``z_px`` (column, row, plane; full-resolution
        voxel centres), ``diameter_px``, ``sigma_px``, ``score``,
        ``response`` and ``pyramid_level``, by decreasing score.

    Examples
    --------
    >>> z, y, x = np.mgrid[:64, :64, :64]
    >>> vol = (((z - 30) ** 2 + (y - 28) ** 2 + (x - 36) ** 2) <= 10**2).astype(np.float32)
    >>> b = detect_blobs_3d(vol, dmin_px=12, dmax_px=40, threshold_method="absolute", threshold=0.1)
    >>> [round(float(b[c][0])) for c in ("x_px", "y_px", "z_px")]
    [36, 28, 30]
    """
    from lipoframe.algorithms.pyramid import block_mean, to_full_resolution

    check_search(dmin_px=dmin_px, dmax_px=dmax_px, threshold_method=threshold_method, threshold=threshold)
    if method not in ("dog", "log"):
        raise ValueError(f"method must be 'dog' or 'log', got {method!r}")
    if binned is None:
        if volume is None:
            raise ValueError("volume must be given when binned is None")
        if np.asarray(volume).ndim != 3:
            raise ValueError(f"volume must be 3D, got {np.asarray(volume).ndim}D")
        # A level whose blocks are larger than the volume has nothing to detect (skipped below).
        binned = lambda f: block_mean(volume, f) if min(volume.shape) >= f else np.zeros((0,) * volume.ndim, np.float32)  # noqa: E731
    full_shape = None if volume is None else tuple(volume.shape)
    levels = plan_levels(
        dmin_px / DIAMETER_PER_SIGMA_3D,
        dmax_px / DIAMETER_PER_SIGMA_3D,
        k=k,
        min_sigma_binned=min_sigma_binned,
        octave_span=octave_span,
    )
    names = ("x_px", "y_px", "z_px", "sigma_px", "score", "response", "pyramid_level")
    cols: dict[str, list] = {n: [] for n in names}
    for li, level in enumerate(levels):
        vol = binned(level.factor)
        if full_shape is None:
            full_shape = tuple(s * level.factor for s in vol.shape)
        # Too small in y or x for the filters at this binning, or no plane left (a volume thinner than
        # the block). A thin volume is searched however few planes it has: the faces repeat in the
        # maxima and offsets, and spheres cut by them are found by their in-plane contrast
        # (benchmarks/thin_volumes.py); skipping levels of fewer than 8 planes lost every particle
        # of their scales without a word (a 30-voxel sphere in 15 planes: binned x2, 7 planes).
        if min(vol.shape[1:]) < 8 or vol.shape[0] < 1:
            continue
        sig_b = level.pad_sigmas / level.factor
        pad = int(math.ceil(3.0 * sig_b.max() * (math.sqrt(k) if method == "dog" else 1.0)))
        spec = _PaddedSpectrum(vol, pad, workers=workers)
        border = int(math.ceil(exclude_border_px / level.factor))
        window: list[tuple[np.ndarray, float, float]] = []
        for si, s in enumerate(sig_b):
            resp = spec.filtered(float(s), method=method, k=k)
            med, noise = _noise(resp)
            if equalise_borders:
                # As in 2D (detect_blobs): the border gets the interior's false-alarm rate.
                equalise_plane(resp, med, border_ratio(resp, int(border_reach(s, ndim=3))))
            window.append((resp, med, noise))
            if len(window) < 3:
                continue
            (r_lo, _, _), (r0, med0, noise0), (r_hi, _, _) = window
            j = si - 1  # index (in pad_sigmas) of the middle scale
            if threshold_method == "mad":
                thr = med0 + threshold * noise0
            elif threshold_method == "percentile":
                thr = float(np.percentile(r0[::2, ::2, ::2], threshold))
            else:
                thr = threshold
            cand = r0 > thr
            if border > 0:
                cand[:border] = cand[-border:] = False
                cand[:, :border] = cand[:, -border:] = False
                cand[:, :, :border] = cand[:, :, -border:] = False
            if cand.any():
                idx = _local_maxima(r_lo, r0, r_hi, np.nonzero(cand))
                if len(idx[0]):
                    v = r0[idx].astype(float)
                    off = _spatial_offsets(r0, idx)
                    s_off = parabola_offset(r_lo[idx].astype(float), v, r_hi[idx].astype(float))
                    cols["z_px"].append(to_full_resolution(idx[0] + off[:, 0], level.factor))
                    cols["y_px"].append(to_full_resolution(idx[1] + off[:, 1], level.factor))
                    cols["x_px"].append(to_full_resolution(idx[2] + off[:, 2], level.factor))
                    cols["sigma_px"].append(np.exp(np.log(level.pad_sigmas[j]) + s_off * math.log(k)))
                    cols["response"].append(v)
                    cols["score"].append((v - med0) / noise0)
                    cols["pyramid_level"].append(np.full(len(v), li, dtype=np.int64))
            window.pop(0)
        del spec, window
    return collect_blobs(cols, full_shape, DIAMETER_PER_SIGMA_3D)
