"""Is a whitened matched filter new evidence for faint particles? Measured, not adopted.

The quality target (issue 3) is short because faint weak candidates cannot be
told from noise by what lipoframe measures (``detectability.py``,
``ceiling.py``). The textbook detector for a known shape in coloured
Gaussian noise is the matched filter on the whitened image [1]_: correlate
the micrograph with the particle's shape after dividing every spatial
frequency by the noise power there. This script measures it as a *score of
the candidates lipoframe already has*: the projected thickness of a uniform
sphere, ``sqrt(1 - r^2 / R^2)``, at each candidate's refined radius (best
of 0.9, 1 and 1.1 times, and of the 3 x 3 nearest pixels), on the
micrograph binned like the refiner's (smallest radius about 16 px) and
whitened by its own power spectrum (Welch's method [2]_), in units of the
correlation's standard deviation on noise of that spectrum (about N(0, 1)
on noise: checked on white, correlated and ramped noise, printed first).

A second template is learned from each micrograph itself, with no labels
and no user input (``learned``): the mean angular-mean profile, in radii,
of the micrograph's 15 confident picks (accepted, not weak) nearest to the
candidate in diameter, each less its own background (1.3-1.5 radii),
rendered at the candidate's radius and used in the same filter. A confident
pick's own profile is left out of its template (leave-one-out).

For every candidate of the simulated suites (each micrograph picked alone
with ``pick()``, as in ``ceiling.py``; labelled a particle when its centre is
within 0.3 diameters of a target particle's and its diameter within 15 %):

* the area under the ROC curve of the match score and of the detector
  ``score`` among the weak candidates the population filter rejects
  (``weak_unsupported``, most of the particles lipoframe misses), with the
  template sharp and blurred by 3, 6 and 10 % of its radius, and of the
  learned template;
* the suite F1 (``lipoframe.evaluate``) when those weak candidates are
  accepted wherever their match score (sharp sphere, or learned template)
  reaches a threshold: thresholds chosen on the tuning seeds, then applied
  to held-out seeds;
* the same AUCs on the real apoferritin sample and how many of its weak
  candidates the rules would add, and how many picks they would add on the
  two real liposome images (``--crops DIR``: PNGs of those the learned
  template adds, to look at; both skipped without ``../shared``).

Needs no extra package::

    python benchmarks/matched_filter.py [--tune 0,1,2,3] [--held-out 4,5]
    python benchmarks/matched_filter.py --tune 0,1 --held-out "" --rim-blur 4   # softer rims
    python benchmarks/matched_filter.py --crops /tmp/crops    # and look at the liposome picks

Writes ``benchmarks/results/matched_filter.md`` and ``.json`` (``_rimA``
with ``--rim-blur``).

References
----------
.. [1] S. M. Kay, *Fundamentals of Statistical Signal Processing, Volume II:
       Detection Theory*, Prentice Hall, 1998, ch. 4.
.. [2] P. D. Welch, "The use of fast Fourier transform for the estimation of
       power spectra", IEEE Trans. Audio Electroacoust. 15 (1967) 70-73.
       doi:10.1109/TAU.1967.1161901
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
from scipy import fft as sfft
from scipy import ndimage as ndi

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from ceiling import candidates, suite_folder  # noqa: E402

from lipoframe.algorithms.pyramid import block_mean, pow2_floor  # noqa: E402
from lipoframe.evaluate import evaluate  # noqa: E402

APO = HERE.parent.parent / "shared" / "data" / "real" / "apoferritin_empiar10146_sample"
LIPOSOMES = HERE.parent.parent / "shared" / "data" / "real" / "liposomes_cryotem_nanorange"
#: Template blurs (fraction of the radius) compared.
BLURS = (0.0, 0.03, 0.06, 0.1)
#: Match-score thresholds tried for accepting weak candidates.
THRESHOLDS = (3.0, 3.5, 4.0, 4.5, 5.0, 6.0)
#: Suite diameter range (A) and the refiner's smallest binned radius.
DMIN_A, DMAX_A, MIN_RADIUS_BINNED = 150.0, 500.0, 16.0


#: Relative radii at which each pick is matched (its own radius, +/- 10 %).
SCALES = (0.9, 1.0, 1.1)
#: Templates are cached by radius rounded to this relative step.
RADIUS_STEP = 0.02
#: Learned templates: radial positions (in radii) the profiles are sampled at,
#: the outer band (in radii) taken as each pick's local background, and how
#: many confident picks nearest in diameter make a candidate's template.
PROFILE_RHO = np.linspace(0.0, 1.5, 31)
PROFILE_BACKGROUND = (1.3, 1.5)
NEIGHBOURS = 15


def sphere_template(radius: float, blur: float = 0.0) -> np.ndarray:
    """The projected sphere ``sqrt(1 - r^2 / R^2)`` sampled on a ``(2h + 1)^2`` grid, ``h = ceil(R + 3 blur R) + 1``,
    blurred by a Gaussian of width ``blur * R``."""
    h = int(math.ceil(radius * (1.0 + 3.0 * blur))) + 1
    yy, xx = np.mgrid[-h : h + 1, -h : h + 1]
    t = np.sqrt(np.clip(1.0 - (yy * yy + xx * xx) / (radius * radius), 0.0, None))
    if blur > 0:
        t = ndi.gaussian_filter(t, blur * radius, mode="constant")
    return t


def profile_template(profile: np.ndarray, radius: float) -> np.ndarray:
    """A radial profile sampled at :data:`PROFILE_RHO` radii, rendered at ``radius`` pixels.

    Bilinear in the distance from the centre over ``radius``; zero beyond
    the last sample. Grid ``(2h + 1)^2`` with ``h = ceil(PROFILE_RHO[-1] R) + 1``.
    """
    h = int(math.ceil(radius * PROFILE_RHO[-1])) + 1
    yy, xx = np.mgrid[-h : h + 1, -h : h + 1]
    return np.interp(np.hypot(yy, xx) / radius, PROFILE_RHO, np.asarray(profile, float), right=0.0)


def radial_profiles(image: np.ndarray, rows: np.ndarray, cols: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Angular mean of ``image`` around each centre at :data:`PROFILE_RHO` radii, less its :data:`PROFILE_BACKGROUND` band.

    Returns
    -------
    profiles : (K, len(PROFILE_RHO)) ndarray
        Bilinear samples, 48 directions (``lipoframe.algorithms.radial.polar_samples``;
        edge pixels repeated outside the image), each row minus its mean over
        the background band, so that a template falls to about zero there.
    """
    from lipoframe.algorithms.radial import polar_samples

    if len(rows) == 0:
        return np.zeros((0, len(PROFILE_RHO)))
    samples, _, rho = polar_samples(np.asarray(image, np.float32), np.asarray(rows, float), np.asarray(cols, float),
                                    np.asarray(radii, float), n_angles=48, n_radii=len(PROFILE_RHO), rho_max=float(PROFILE_RHO[-1]))
    profiles = samples.mean(axis=1, dtype=np.float64)
    band = (rho >= PROFILE_BACKGROUND[0]) & (rho <= PROFILE_BACKGROUND[1])
    return profiles - profiles[:, band].mean(axis=1, keepdims=True)


def learned_profiles(profiles: np.ndarray, diameters: np.ndarray, confident: np.ndarray, *, k: int = NEIGHBOURS) -> tuple[np.ndarray, np.ndarray]:
    """Each candidate's template profile: the mean profile of the ``k`` confident picks nearest in diameter, itself left out.

    Parameters
    ----------
    profiles : (K, B) ndarray
        Every candidate's own radial profile (:func:`radial_profiles`).
    diameters : (K,) ndarray
    confident : (K,) bool ndarray
        The picks the templates are learned from (accepted and not weak).
    k : int
        Neighbours in log diameter (fewer when the micrograph has fewer
        confident picks; ties broken by table order).

    Returns
    -------
    table : (P, B) ndarray
        The distinct mean profiles.
    ids : (K,) ndarray of int
        Row of ``table`` for each candidate; -1 where no other confident
        pick exists.
    """
    pool = np.flatnonzero(confident)
    logd = np.log(np.asarray(diameters, float))
    table: dict[tuple, int] = {}
    rows: list[np.ndarray] = []
    ids = np.full(len(logd), -1)
    for i in range(len(logd)):
        others = pool[pool != i]
        if not len(others):
            continue
        chosen = tuple(np.sort(others[np.argsort(np.abs(logd[others] - logd[i]), kind="stable")[:k]]))
        if chosen not in table:
            table[chosen] = len(rows)
            rows.append(profiles[list(chosen)].mean(axis=0))
        ids[i] = table[chosen]
    return (np.array(rows) if rows else np.zeros((0, profiles.shape[1]))), ids


class WhitenedImage:
    """A 2D image divided by its own noise power spectrum, ready for matched filtering.

    Parameters
    ----------
    image : (M, N) ndarray
        Particles bright.
    pad : int
        Mirror padding (pixels) against wrap-around at the borders; at least
        the largest template radius.
    tile : int
        Side of the tiles the power spectrum is estimated on (Welch's method:
        Hann-windowed tiles overlapping by half, averaged, then over rings of
        equal frequency) [2]_; at most the image's shorter side.

    Attributes
    ----------
    whitened : (M, N) ndarray of float64
        ``irfft2(X / S)`` cropped to the image: ``X`` is the spectrum of the
        padded, plane-subtracted image and ``S`` the estimated spectral
        density (per pixel; capped below at 1e-6 of its largest value so
        that round-off at the faintest frequencies is not amplified); the
        mean is set to zero.

    Notes
    -----
    The spectrum is estimated on the image itself, particles included: where
    particles cover much of the micrograph they raise the power at their own
    frequencies, which lowers their scores somewhat (conservative). It is
    estimated inside the image, not on the padded one, whose mirror folds
    add power at fine frequencies that the image does not have.

    References
    ----------
    .. [2] P. D. Welch, "The use of fast Fourier transform for the
           estimation of power spectra", IEEE Trans. Audio Electroacoust. 15
           (1967) 70-73. doi:10.1109/TAU.1967.1161901
    """

    def __init__(self, image: np.ndarray, *, pad: int, tile: int = 256, blur: float = 0.0) -> None:
        self.blur = float(blur)
        img = np.asarray(image, dtype=np.float64)
        if img.ndim != 2:
            raise ValueError(f"image must be 2D, got {img.ndim}D")
        m, n = img.shape
        rows, cols = np.mgrid[0:m, 0:n]
        design = np.stack([np.ones(m * n), rows.ravel() / m, cols.ravel() / n], axis=1)
        plane = np.linalg.lstsq(design, img.ravel(), rcond=None)[0]
        img = img - (design @ plane).reshape(m, n)
        self._ring_f, density = _welch_density(img, min(int(tile), m, n))
        floored = np.maximum(density, 1e-6 * float(density.max()) + np.finfo(float).tiny)
        # Var of a correlation = integral of |T|^2 S / S_floored^2 (see noise_sd).
        self._gain = density / (floored * floored)
        pad = int(max(0, min(pad, m - 1, n - 1)))
        padded = np.pad(img, pad, mode="symmetric")
        spectrum = sfft.rfft2(padded)
        fy = sfft.fftfreq(padded.shape[0])[:, None]
        fx = sfft.rfftfreq(padded.shape[1])[None, :]
        inverse = 1.0 / np.interp(np.sqrt(fy * fy + fx * fx), self._ring_f, floored)
        inverse[0, 0] = 0.0
        spectrum *= inverse
        self.whitened = sfft.irfft2(spectrum, s=padded.shape)[pad : pad + m, pad : pad + n]
        self._templates: dict[tuple[int, int], tuple[np.ndarray, int, float]] = {}
        #: Radial profiles (rows at :data:`PROFILE_RHO`) that ``scores(profile_ids=...)`` refers to.
        self.profiles = np.zeros((0, len(PROFILE_RHO)))

    def noise_sd(self, template: np.ndarray) -> float:
        """Standard deviation of the correlation with ``template`` on noise of the image's spectrum.

        ``Var = integral over the frequency square of |T(f)|^2 S(f) / S'(f)^2``
        with ``T`` the transform of the sampled template (evaluated on a grid
        twice its size), ``S`` the image's spectral density and ``S'`` the
        same with its floor (``S' = S`` but at the faintest frequencies).

        Parameters
        ----------
        template : (K, K) ndarray
        """
        size = sfft.next_fast_len(2 * max(template.shape), real=True)
        t2 = np.abs(sfft.rfft2(template, s=(size, size))) ** 2
        fy = sfft.fftfreq(size)[:, None]
        fx = sfft.rfftfreq(size)[None, :]
        weight = np.full(t2.shape, 2.0)  # an rfft column stands for two frequencies ...
        weight[:, 0] = 1.0  # ... but the first
        weight[:, -1] = 1.0  # and the Nyquist one (size is even)
        gain = np.interp(np.sqrt(fy * fy + fx * fx), self._ring_f, self._gain)
        return math.sqrt(float(np.sum(weight * t2 * gain)) / (size * size))

    def _template(self, radius: float, profile: int = -1) -> tuple[np.ndarray, int, float]:
        """Template at ``radius`` (rounded to :data:`RADIUS_STEP`): the sphere, or row ``profile`` of :attr:`profiles`."""
        key = (int(round(math.log(max(radius, 1.0)) / math.log1p(RADIUS_STEP))), profile)
        hit = self._templates.get(key)
        if hit is None:
            r = (1.0 + RADIUS_STEP) ** key[0]
            t = sphere_template(r, self.blur) if profile < 0 else profile_template(self.profiles[profile], r)
            hit = self._templates[key] = (t, t.shape[0] // 2, self.noise_sd(t))
        return hit

    def scores(self, rows: np.ndarray, cols: np.ndarray, radii: np.ndarray, *, shift: int = 1, profile_ids=None) -> np.ndarray:
        """Match score of a template at each position: the best over :data:`SCALES` and +/- ``shift`` pixels.

        Parameters
        ----------
        rows, cols : (K,) ndarrays
            Centres, pixels of the image (rounded to the nearest pixel).
        radii : (K,) ndarray
            Radii in pixels of the image.
        shift : int
            Positions within this many pixels of the centre are tried too.
        profile_ids : (K,) ndarray of int, optional
            Each position's template: a row of :attr:`profiles` rendered at
            its radius; NaN where -1. Default: the sphere for all.

        Returns
        -------
        score : (K,) ndarray
            Correlation over its noise standard deviation (about N(0, 1) on
            background before the maximum over scales and shifts).
        """
        w = self.whitened
        m, n = w.shape
        rows = np.clip(np.rint(np.asarray(rows, float)).astype(np.intp), 0, m - 1)
        cols = np.clip(np.rint(np.asarray(cols, float)).astype(np.intp), 0, n - 1)
        radii = np.asarray(radii, dtype=float)
        ids = np.full(len(rows), -1) if profile_ids is None else np.asarray(profile_ids, int)
        out = np.full(len(rows), -np.inf)
        padded: dict[int, np.ndarray] = {}
        for i, (r, c, rad, pid) in enumerate(zip(rows, cols, radii, ids)):
            if profile_ids is not None and pid < 0:
                out[i] = np.nan
                continue
            for scale in SCALES:
                t, h, sd = self._template(rad * scale, pid)
                reach = h + shift
                if r - reach < 0 or c - reach < 0 or r + reach >= m or c + reach >= n:
                    if reach not in padded:
                        padded[reach] = np.pad(w, reach, mode="symmetric")
                    patch = padded[reach][r : r + 2 * reach + 1, c : c + 2 * reach + 1]
                else:
                    patch = w[r - reach : r + reach + 1, c - reach : c + reach + 1]
                size = 2 * h + 1
                for dy in range(2 * shift + 1):
                    for dx in range(2 * shift + 1):
                        value = float(np.vdot(patch[dy : dy + size, dx : dx + size], t)) / sd
                        if value > out[i]:
                            out[i] = value
        return out


def _welch_density(image: np.ndarray, tile: int) -> tuple[np.ndarray, np.ndarray]:
    """Spectral density of ``image`` (per pixel) averaged over rings: Welch's method on ``tile`` x ``tile`` tiles.

    Returns
    -------
    frequency : (R,) ndarray
        Ring centres, cycles per pixel (0, 1 / tile, 2 / tile, ...).
    density : (R,) ndarray
        ``E |DFT(x)|^2 / N`` at those frequencies; the DC ring (which the
        tiles' mean subtraction empties) takes the value of the next one.
    """
    m, n = image.shape
    window = np.hanning(tile + 2)[1:-1]
    window = np.outer(window, window)
    starts_r = np.unique(np.r_[np.arange(0, m - tile + 1, max(tile // 2, 1)), m - tile])
    starts_c = np.unique(np.r_[np.arange(0, n - tile + 1, max(tile // 2, 1)), n - tile])
    total = np.zeros((tile, tile // 2 + 1))
    for r in starts_r:
        for c in starts_c:
            block = image[r : r + tile, c : c + tile]
            total += np.abs(sfft.rfft2((block - block.mean()) * window)) ** 2
    total /= len(starts_r) * len(starts_c) * float(np.sum(window * window))
    fy = sfft.fftfreq(tile)[:, None]
    fx = sfft.rfftfreq(tile)[None, :]
    ring = np.rint(np.sqrt(fy * fy + fx * fx) * tile).astype(np.intp)
    density = np.bincount(ring.ravel(), total.ravel()) / np.maximum(np.bincount(ring.ravel()), 1)
    density[0] = density[1]
    return np.arange(len(density)) / tile, density


def match_scores(image: np.ndarray, table: pd.DataFrame, *, dmin_px: float, dmax_px: float, blurs=BLURS, learned: bool = False) -> dict:
    """Match score of every row of ``table`` (``x_px``, ``y_px``, ``diameter_px``) for each template blur.

    With ``learned``, also under the key ``"learned"``: the score with each
    row's template learned from the micrograph's confident picks
    (``accepted`` and not ``weak`` in ``table``) nearest in diameter
    (:func:`learned_profiles`; a confident pick's own profile left out),
    profiles measured on the same binned image; NaN where there is none.
    """
    factor = pow2_floor(dmin_px / 2.0 / MIN_RADIUS_BINNED)
    img = block_mean(np.asarray(image, np.float32), factor) if factor > 1 else np.asarray(image, np.float64)
    rows = (table["y_px"].to_numpy(float) + 0.5) / factor - 0.5
    cols = (table["x_px"].to_numpy(float) + 0.5) / factor - 0.5
    radii = table["diameter_px"].to_numpy(float) / 2.0 / factor
    out = {}
    for blur in blurs:
        wi = WhitenedImage(img, pad=int(math.ceil(0.8 * dmax_px / factor)) + 2, blur=blur)
        out[blur] = wi.scores(rows, cols, radii)
    if learned:
        confident = table["accepted"].to_numpy(bool) & ~table["weak"].fillna(False).to_numpy(bool)
        # the widest template reaches PROFILE_RHO[-1] x 1.1 x the largest radius
        wi = WhitenedImage(img, pad=int(math.ceil(0.55 * PROFILE_RHO[-1] * dmax_px / factor)) + 2)
        wi.profiles, ids = learned_profiles(radial_profiles(img, rows, cols, radii), radii, confident)
        out["learned"] = wi.scores(rows, cols, radii, profile_ids=ids)
    return out


def auc(label, score) -> float:
    """Area under the ROC curve (Mann-Whitney), ties counted half; a NaN score ranks lowest."""
    y = np.asarray(label, bool)
    if y.all() or not y.any():
        return float("nan")
    rank = pd.Series(np.asarray(score, float)).rank(na_option="top").to_numpy()
    return float((rank[y].sum() - y.sum() * (y.sum() + 1) / 2) / (y.sum() * (~y).sum()))


def calibration(seed: int = 0) -> list[str]:
    """Mean and spread of single-template correlations on three kinds of noise (should be ~0 and ~1)."""
    rng = np.random.default_rng(seed)
    shape = (768, 640)
    noises = {
        "white": rng.standard_normal(shape),
        "correlated": ndi.gaussian_filter(rng.standard_normal(shape), 3) + 0.3 * ndi.gaussian_filter(rng.standard_normal(shape), 15),
        "correlated + ramp": ndi.gaussian_filter(rng.standard_normal(shape), 2) + np.linspace(0, 5, shape[1])[None, :],
    }
    lines = []
    for name, img in noises.items():
        wi = WhitenedImage(img, pad=60)
        for radius in (10.0, 40.0):
            t, h, sd = wi._template(radius)
            r = rng.integers(h + 1, shape[0] - h - 1, 400)
            c = rng.integers(h + 1, shape[1] - h - 1, 400)
            v = np.array([np.vdot(wi.whitened[a - h : a + h + 1, b - h : b + h + 1], t) / sd for a, b in zip(r, c)])
            lines.append(f"| {name} | {radius:.0f} | {v.mean():+.2f} | {v.std():.2f} |")
    return lines


def suite_candidates(seed: int, cache: Path, rim_blur_A: float = 0.0) -> tuple[pd.DataFrame, pd.DataFrame]:
    table, truth = candidates(seed, cache, rim_blur_A=rim_blur_A)
    scores = {b: np.full(len(table), np.nan) for b in (*BLURS, "learned")}
    for name, rows in table.groupby("micrograph", sort=False).groups.items():
        with mrcfile.open(cache / suite_folder(seed, rim_blur_A) / f"{name}.mrc", permissive=True) as f:
            image = -np.asarray(f.data, dtype=np.float32)  # particles dark in the suite
            px = float(f.voxel_size.x)
        idx = table.index.get_indexer(rows)
        for b, v in match_scores(image, table.loc[rows], dmin_px=DMIN_A / px, dmax_px=DMAX_A / px, learned=True).items():
            scores[b][idx] = v
    for b, v in scores.items():
        table[f"match_{b}"] = v
    return table, truth


def band_ratio(seed: int, name: str, cache: Path, rim_blur_A: float = 0.0, bands=((0.0, 0.01), (0.01, 0.03), (0.03, 0.05), (0.05, 0.07), (0.07, 0.1), (0.1, 0.15), (0.15, 0.25))) -> list[tuple]:
    """Power of a suite scene's noise-free image over that of its noise, per band of spatial frequency (cycles/px).

    The scene is rendered again with the residual noise switched off (same
    random draws otherwise); the noise is the cached scene minus that
    rendering. The noise-free image holds particles, their texture and
    fringes, ice, junk and the background.
    """
    import dataclasses

    from lipoframe.simulate import suite_scenes
    from lipoframe.synthetic import render_scene

    spec = {s.name: s for s in suite_scenes(seed)}[name]
    clean, _ = render_scene(dataclasses.replace(spec, noise=0.0, rim_blur_A=rim_blur_A))
    with mrcfile.open(cache / suite_folder(seed, rim_blur_A) / f"{name}.mrc", permissive=True) as f:
        noisy = np.asarray(f.data, dtype=np.float64)
    noise = noisy - clean
    fy = sfft.fftfreq(noisy.shape[0])[:, None]
    fx = sfft.rfftfreq(noisy.shape[1])[None, :]
    freq = np.sqrt(fy * fy + fx * fx)
    ps = np.abs(sfft.rfft2(clean - clean.mean())) ** 2
    pn = np.abs(sfft.rfft2(noise - noise.mean())) ** 2
    return [(lo, hi, float(ps[(freq >= lo) & (freq < hi)].mean() / pn[(freq >= lo) & (freq < hi)].mean())) for lo, hi in bands]


def with_weak(table: pd.DataFrame, column: str, threshold: float) -> np.ndarray:
    """lipoframe's decisions, plus the weak_unsupported candidates whose ``column`` reaches ``threshold``."""
    weak = (table["reject_reason"].fillna("") == "weak_unsupported").to_numpy()
    return table["accepted"].to_numpy(bool) | (weak & (table[column].to_numpy(float) >= threshold))


def crops(image: np.ndarray, picks: pd.DataFrame, path: Path, *, others=None, title: str = "", columns: int = 5) -> Path | None:
    """Save a PNG of square crops (twice the diameter) around ``picks``, each with its learned match score.

    Circles: the pick's dotted in yellow, those of ``others`` (a table of
    picks, e.g. the accepted ones) in cyan.
    """
    if not len(picks):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = -(-len(picks) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.3 * rows + 0.4), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    m, n = image.shape
    for ax, (_, p) in zip(axes.ravel(), picks.iterrows()):
        h = int(math.ceil(p["diameter_px"]))
        r0, c0 = int(round(p["y_px"])) - h, int(round(p["x_px"])) - h
        crop = image[max(r0, 0) : min(r0 + 2 * h + 1, m), max(c0, 0) : min(c0 + 2 * h + 1, n)]
        ax.imshow(crop, cmap="gray", extent=(max(c0, 0) - 0.5, max(c0, 0) + crop.shape[1] - 0.5, max(r0, 0) + crop.shape[0] - 0.5, max(r0, 0) - 0.5))
        ax.add_patch(matplotlib.patches.Circle((p["x_px"], p["y_px"]), p["diameter_px"] / 2, fill=False, color="yellow", lw=0.6, ls=":", alpha=0.6))
        if others is not None:
            for _, o in others.iterrows():
                ax.add_patch(matplotlib.patches.Circle((o["x_px"], o["y_px"]), o["diameter_px"] / 2, fill=False, color="cyan", lw=0.5, alpha=0.5))
        ax.set_xlim(c0 - 0.5, c0 + 2 * h + 0.5)
        ax.set_ylim(r0 + 2 * h + 0.5, r0 - 0.5)
        ax.set_title(f"({p['x_px']:.0f}, {p['y_px']:.0f}) d {p['diameter_px']:.0f}\nscore {p['score']:.1f} match {p['match_learned']:.1f}", fontsize=7)
    fig.suptitle(title, fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tune", default="0,1,2,3", help="seeds the threshold is chosen on")
    ap.add_argument("--held-out", default="4,5", help="seeds it is then checked on")
    ap.add_argument("--cache", default=os.environ.get("LIPOFRAME_BENCH_CACHE", "/tmp/lipoframe_bench"))
    ap.add_argument("--results", default=str(HERE / "results"))
    ap.add_argument("--rim-blur", type=float, default=0.0,
                    help="suites with the objects' rims blurred by this many A more (lipoframe simulate rim_blur_A); real data skipped")
    ap.add_argument("--crops", default="", help="folder for PNGs of the liposome picks the learned template would add")
    args = ap.parse_args(argv)
    rim = args.rim_blur
    t0 = time.perf_counter()
    tune = [int(s) for s in args.tune.split(",")]
    held = [int(s) for s in args.held_out.split(",")] if args.held_out else []
    cache = Path(args.cache)
    suites = {s: suite_candidates(s, cache, rim) for s in tune + held}
    result: dict = {"tune": tune, "held_out": held, "auc": {}, "f1": {}, "f1_learned": {}}
    lines = ["# A whitened matched filter as new evidence (measured, not adopted)"
             + (f": suites with rims blurred by {rim:g} Å more" if rim else ""), "",
             f"`python benchmarks/matched_filter.py --tune {args.tune} --held-out {args.held_out}"
             + (f" --rim-blur {rim:g}" if rim else "") + "` "
             "({seconds} s); see the script's docstring.", "",
             "Calibration: one template's correlation at 400 random places, in its noise units (should be about 0 and 1):", "",
             "| noise | radius (px) | mean | standard deviation |", "|---|---|---|---|", *calibration(), "",
             "## Weak candidates rejected for lack of support: particle or not?", "",
             "Area under the ROC curve among the `weak_unsupported` candidates (particles / all in brackets):", "",
             "| seed | detector `score` | " + " | ".join(f"match, blur {b:g} R" for b in BLURS) + " | match, learned template |",
             "|---|---|" + "---|" * (len(BLURS) + 1)]
    for s, (table, _) in suites.items():
        weak = table[table["reject_reason"].fillna("") == "weak_unsupported"]
        row = {"score": auc(weak["particle"], weak["score"])} | {f"match_{b}": auc(weak["particle"], weak[f"match_{b}"]) for b in (*BLURS, "learned")}
        result["auc"][s] = row
        lines.append(f"| {s} ({int(weak['particle'].sum())}/{len(weak)}) | " + " | ".join(f"{v:.3f}" for v in row.values()) + " |")
    base = {s: evaluate(t.assign(accepted=t["accepted"].to_numpy(bool)), tr).summary["f1"] for s, (t, tr) in suites.items()}
    result["f1"]["lipoframe"] = base
    best = {}
    for column, title, key in (("match_0.0", "the sharp sphere", ""), ("match_learned", "the learned template", "_learned")):
        lines += ["", f"## Suite F1 with those weak candidates accepted where the match score ({title}) reaches a threshold", "",
                  "| threshold | " + " | ".join(f"seed {s}" for s in suites) + " | mean of tuning seeds |",
                  "|---|" + "---|" * (len(suites) + 1),
                  "| lipoframe (default) | " + " | ".join(f"{v:.3f}" for v in base.values()) + f" | {np.mean([base[s] for s in tune]):.3f} |"]
        means = {}
        for thr in THRESHOLDS:
            f1 = {s: evaluate(t.assign(accepted=with_weak(t, column, thr)), tr).summary["f1"] for s, (t, tr) in suites.items()}
            result["f1" + key][thr] = f1
            means[thr] = float(np.mean([f1[s] for s in tune]))
            lines.append(f"| {thr:g} | " + " | ".join(f"{v:.3f}" for v in f1.values()) + f" | {means[thr]:.3f} |")
        best[column] = max(means, key=means.get)
        result["best_threshold" + key] = best[column]
        lines += ["", f"Best on the tuning seeds: {best[column]:g}"
                  + ("; held-out seeds " + ", ".join(f"{s}: {base[s]:.3f} -> {result['f1' + key][best[column]][s]:.3f}" for s in held) if held else "") + "."]
    ratios = band_ratio(tune[0], "s02_crowded_ldl", cache, rim)
    result["band_ratio_s02"] = ratios
    lines += ["", f"## Where the suite's particles stand out: noise-free over noise power per frequency band (`s02_crowded_ldl`, seed {tune[0]}, 1 A/px)", "",
              "| band (cycles/px) | " + " | ".join(f"{lo:g}-{hi:g}" for lo, hi, _ in ratios) + " |",
              "|---|" + "---|" * len(ratios),
              "| power ratio | " + " | ".join(f"{r:.2g}" for _, _, r in ratios) + " |"]
    if APO.is_dir() and not rim:
        from lipoframe.plugins import read_array
        from lipoframe.runner import pick

        ref = pd.read_csv(APO / "reference_coords_derived.csv")
        tables = []
        for path in sorted((APO / "micrographs_filtered").glob("*.png")):
            image = np.asarray(read_array(path), dtype=np.float32)
            p = pick(image, units="px", dmin=40, dmax=90, polarity="dark", name=path.stem)
            m = match_scores(-image, p, dmin_px=40, dmax_px=90, blurs=(0.0,), learned=True)
            p = p.assign(match=m[0.0], match_learned=m["learned"])
            r = ref[ref["micrograph"] == path.name]
            dist = np.hypot(p["x_px"].to_numpy()[:, None] - r["x_px"].to_numpy()[None], p["y_px"].to_numpy()[:, None] - r["y_px"].to_numpy()[None])
            tables.append(p.assign(particle=dist.min(axis=1) < 0.3 * 61.0))
        apo = pd.concat(tables, ignore_index=True)
        result["apoferritin_auc"] = {k: auc(apo["particle"], apo[k]) for k in ("match", "match_learned", "score", "quality")}
        lines += ["", "## Real data: apoferritin (EMPIAR-10146 sample)", "",
                  f"All {len(apo)} candidates ({int(apo['particle'].sum())} within 0.3 diameters of a reference particle), "
                  "area under the ROC curve: " + ", ".join(f"`{k}` {v:.3f}" for k, v in result["apoferritin_auc"].items())
                  + " (`match` the sphere, `match_learned` the learned template; a confident pick's own profile is left out of its template)."]
        weak = apo["reject_reason"].fillna("") == "weak_unsupported"
        result["apoferritin_added"] = {}
        for column, key in (("match", "match_0.0"), ("match_learned", "match_learned")):
            rule = weak & (apo[column] >= best[key])
            result["apoferritin_added"][column] = {"weak_unsupported": int(weak.sum()), "particles_among_them": int((weak & apo["particle"]).sum()),
                                                   "added": int(rule.sum()), "added_particles": int((rule & apo["particle"]).sum())}
        lines += ["", f"Of its {int(weak.sum())} `weak_unsupported` candidates ({int((weak & apo['particle']).sum())} near a reference particle) the rule would add "
                  + " and ".join(f"{v['added']} ({v['added_particles']} near a reference particle) with `{k}`" for k, v in result["apoferritin_added"].items()) + "."]
    if LIPOSOMES.is_dir() and not rim:
        from lipoframe.plugins import read_array
        from lipoframe.runner import pick

        added = {}
        for path in sorted(LIPOSOMES.glob("*.jpg")):
            image = np.asarray(read_array(path), dtype=np.float32)
            p = pick(image, units="px", dmin=40, dmax=400, polarity="dark", name=path.stem)
            m = match_scores(-image, p, dmin_px=40, dmax_px=400, blurs=(0.0,), learned=True)
            weak = (p["reject_reason"].fillna("") == "weak_unsupported").to_numpy()
            added[path.stem] = {"accepted": int(p["accepted"].sum()), "weak_unsupported": int(weak.sum()),
                                "added": int((weak & (m[0.0] >= best["match_0.0"])).sum()),
                                "added_learned": int((weak & (m["learned"] >= best["match_learned"])).sum())}
            if args.crops:
                rule = weak & (m["learned"] >= best["match_learned"])
                crops(image, p[rule].assign(match_learned=m["learned"][rule]), Path(args.crops) / f"{path.stem}_learned_added.png", others=p[p["accepted"]],
                      title=f"{path.stem}: weak candidates the learned template adds (score >= {best['match_learned']:g})")
        result["liposomes"] = added
        lines += ["", "## Real data: the two liposome images (no reference)", "",
                  "Weak candidates the rule would add (each image picked alone, `dmin=40 dmax=400` px), "
                  f"sphere at threshold {best['match_0.0']:g} / learned template at {best['match_learned']:g}: "
                  + "; ".join(f"`{k}` {v['added']} / {v['added_learned']} of {v['weak_unsupported']} (lipoframe accepts {v['accepted']})" for k, v in added.items())
                  + ". Look at them before trusting them."]
    seconds = time.perf_counter() - t0
    lines[2] = lines[2].replace("{seconds}", f"{seconds:.0f}")
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    stem = "matched_filter" + (f"_rim{rim:g}" if rim else "")
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1, default=str))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
