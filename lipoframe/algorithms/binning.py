"""One-dimensional size analysis: histograms, modes, clustering and cluster filtering.

Pure numpy/scipy functions behind the ``binning`` stages. All of them take a
1-D array of diameters (any unit; the stages pass pixels) and are
deterministic.

References
----------
.. [1] SIMPLE, ``doc/policies/segdiampick_mics_policy.md`` (hael/SIMPLE):
   k-means (``sortmeans``, 10 clusters, first/last excluded) or 1-D HAC
   (threshold = global sd), then two Z-score tests per cluster.
.. [2] Rousseeuw & Croux (1993), "Alternatives to the median absolute
   deviation", JASA 88:1273 — 1.4826·MAD estimates sd for normal data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter1d

#: Scale factor that turns a MAD into a standard-deviation estimate (normal data).
MAD_TO_SD = 1.4826


def local_maxima(x) -> np.ndarray:
    """Indices of the local maxima of a 1D array, as ``scipy.signal.find_peaks(x)[0]``.

    A maximum is a sample whose neighbours on both sides are lower; on a flat
    top the middle sample (rounded down) is returned, and the first and last
    samples are never maxima. Written here so that lipoframe does not import
    :mod:`scipy.signal` (with :mod:`scipy.stats`, ~0.4 s at start-up) for it.

    Examples
    --------
    >>> local_maxima([0, 2, 1, 3, 3, 3, 0, 5])
    array([1, 4])
    """
    x = np.asarray(x, dtype=float).ravel()
    out = []
    i, last = 1, len(x) - 1
    while i < last:
        if x[i - 1] < x[i]:
            ahead = i + 1
            while ahead < last and x[ahead] == x[i]:
                ahead += 1
            if x[ahead] < x[i]:
                out.append((i + ahead - 1) // 2)
                i = ahead
        i += 1
    return np.asarray(out, dtype=np.intp)


def _as_1d(values, name: str = "values") -> np.ndarray:
    x = np.asarray(values, dtype=float).ravel()
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} must be finite")
    return x


# ---------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------
def mad_gau(values, center: float | None = None) -> float:
    """Robust sd estimate ``1.4826 * median(|x - center|)`` (0 for an empty array).

    Parameters
    ----------
    values : (N,) array_like
    center : float, optional
        Default: the median of ``values``.
    """
    x = _as_1d(values)
    if x.size == 0:
        return 0.0
    c = float(np.median(x)) if center is None else float(center)
    return MAD_TO_SD * float(np.median(np.abs(x - c)))


@dataclass(frozen=True)
class SizeStats:
    """Global statistics of a diameter set (SIMPLE's ``calc_stats`` + ``mad_gau``)."""

    n: int
    mean: float
    median: float
    sd: float
    min: float
    max: float
    mad_gau: float

    def to_dict(self) -> dict:
        return {k: (int(v) if k == "n" else round(float(v), 4)) for k, v in self.__dict__.items()}


def size_stats(values) -> SizeStats:
    """Mean, median, sd (population, ``ddof=0``), min, max and 1.4826·MAD.

    Raises
    ------
    ValueError
        If ``values`` is empty.
    """
    x = _as_1d(values)
    if x.size == 0:
        raise ValueError("values must not be empty")
    med = float(np.median(x))
    return SizeStats(int(x.size), float(x.mean()), med, float(x.std()), float(x.min()), float(x.max()), mad_gau(x, med))


# ---------------------------------------------------------------------------
# Histogram and modes
# ---------------------------------------------------------------------------
def histogram_edges(values, *, bin_width: float) -> np.ndarray:
    """Histogram edges at multiples of ``bin_width`` that cover ``values``.

    Returns
    -------
    edges : (B + 1,) ndarray
        ``edges[0] <= min(values)`` and ``edges[-1] > max(values)``; a single
        bin ``[0, bin_width]`` for an empty input.
    """
    if not bin_width > 0:
        raise ValueError(f"bin_width must be > 0, got {bin_width}")
    x = _as_1d(values)
    if x.size == 0:
        return np.array([0.0, float(bin_width)])
    lo = np.floor(x.min() / bin_width) * bin_width
    if lo > x.min():  # the quotient rounded up to a whole number (27.299999999999997 / 0.3 -> 91.0, and 91 * 0.3 > it)
        lo -= bin_width
    n = int(np.floor((x.max() - lo) / bin_width)) + 1
    edges = lo + bin_width * np.arange(n + 2, dtype=float)
    # The same rounding can leave the n-th edge on the largest value: then one more bin.
    return edges if edges[n] <= x.max() else edges[: n + 1]


def smooth_histogram(counts, *, sigma_bins: float) -> np.ndarray:
    """Gaussian smoothing over histogram bins, zero outside the histogram.

    ``sigma_bins = 0`` returns the counts as floats.
    """
    c = np.asarray(counts, dtype=float)
    if sigma_bins < 0:
        raise ValueError(f"sigma_bins must be >= 0, got {sigma_bins}")
    if sigma_bins == 0 or c.size == 0:
        return c.copy()
    return gaussian_filter1d(c, sigma_bins, mode="constant", cval=0.0, truncate=4.0)


@dataclass(frozen=True)
class PeakValley:
    """Result of :func:`peak_valley_edges`.

    Attributes
    ----------
    hist_edges : (B + 1,) ndarray
        Histogram edges.
    counts : (B,) ndarray of int
        Picks per histogram bin.
    smoothed : (B,) ndarray
        Smoothed counts.
    peaks : (M,) ndarray of int
        Histogram-bin index of each retained mode, ascending.
    valleys : (M - 1,) ndarray of int
        Histogram-bin index of the minimum between consecutive modes.
    cuts : (M - 1,) ndarray
        Diameters at the valleys (centres of the valley bins): the interior
        edges of the size bins.
    dips : (M - 1,) ndarray
        Depth of each valley relative to the lower of its two peaks.
    clear_peaks : (C,) ndarray of int
        The modes with a clear valley between each two of them, before
        ``max_modes`` was applied: ``peaks`` is a subset of them, the same
        when there were no more than ``max_modes``.
    """

    hist_edges: np.ndarray
    counts: np.ndarray
    smoothed: np.ndarray
    peaks: np.ndarray
    valleys: np.ndarray
    cuts: np.ndarray
    dips: np.ndarray
    clear_peaks: np.ndarray | None = None

    @property
    def n_modes(self) -> int:
        return int(self.peaks.size)

    @property
    def n_clear_modes(self) -> int:
        """Modes with clear valleys before the ``max_modes`` cap (``n_modes`` when it did not apply)."""
        return self.n_modes if self.clear_peaks is None else int(self.clear_peaks.size)


def _valley(s: np.ndarray, a: int, b: int) -> int:
    """Index of the minimum of ``s[a..b]`` (middle of a flat minimum)."""
    seg = s[a : b + 1]
    idx = np.flatnonzero(seg == seg.min())
    return a + int(idx[len(idx) // 2])


def peak_valley_edges(
    values,
    *,
    bin_width: float = 12.0,
    smooth_sigma_bins: float = 0.75,
    min_dip: float = 0.3,
    dip_sigma: float = 2.0,
    max_modes: int = 4,
) -> PeakValley:
    """Find the clear modes of a diameter histogram and the valleys between them.

    The histogram (bins of ``bin_width`` at multiples of it) is smoothed by
    a Gaussian of ``smooth_sigma_bins`` bins; every local maximum is a
    candidate mode. Two neighbouring modes stay separate only if the valley
    between them is *clear*: at least ``min_dip`` below the lower peak
    (relative depth ``1 - valley / lower_peak``) and, so that counting noise
    in small data sets does not create modes, deeper than ``dip_sigma``
    standard deviations of Poisson counts after smoothing
    (``lower_peak - valley > dip_sigma * sqrt((lower_peak + valley) * sum(w**2))``
    with ``w`` the smoothing kernel). The shallowest
    failing valley is removed first (its lower peak joins the higher one),
    then the check is repeated. Finally, while there are more than
    ``max_modes`` modes, the shallowest valley is removed.

    Parameters
    ----------
    values : (N,) array_like
        Diameters.
    bin_width : float
        Histogram bin width, same unit as ``values`` (> 0).
    smooth_sigma_bins : float
        Gaussian sigma in histogram bins (>= 0).
    min_dip : float
        Relative valley depth in [0, 1).
    dip_sigma : float
        Poisson significance of the valley (>= 0).
    max_modes : int
        At most this many modes (>= 1).

    Returns
    -------
    PeakValley

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> d = np.r_[rng.normal(180, 12, 400), rng.normal(300, 15, 400)]
    >>> pv = peak_valley_edges(d)
    >>> pv.n_modes, 220 < float(pv.cuts[0]) < 260
    (2, True)
    """
    if not 0 <= min_dip < 1:
        raise ValueError(f"min_dip must be in [0, 1), got {min_dip}")
    if dip_sigma < 0:
        raise ValueError(f"dip_sigma must be >= 0, got {dip_sigma}")
    if max_modes < 1:
        raise ValueError(f"max_modes must be >= 1, got {max_modes}")
    x = _as_1d(values)
    edges = histogram_edges(x, bin_width=bin_width)
    counts, _ = np.histogram(x, bins=edges)
    s = smooth_histogram(counts, sigma_bins=smooth_sigma_bins)
    empty = np.array([], dtype=int)
    if x.size == 0 or not s.max() > 0:
        return PeakValley(edges, counts, s, empty, empty, np.array([]), np.array([]), empty)
    padded = np.r_[0.0, s, 0.0]
    peaks = list(local_maxima(padded) - 1)
    if not peaks:  # cannot happen with zero padding, but stay safe
        peaks = [int(np.argmax(s))]

    def valleys_of(pk):
        return [_valley(s, pk[i], pk[i + 1]) for i in range(len(pk) - 1)]

    # variance of a smoothed count is (Poisson mean) * sum(kernel**2)
    half = np.zeros(int(4 * smooth_sigma_bins) + 2)
    kernel = smooth_histogram(np.r_[half, 1.0, half], sigma_bins=smooth_sigma_bins)
    var_factor = float(np.sum(kernel**2))

    def dip_of(pk, vl, i):
        low = min(s[pk[i]], s[pk[i + 1]])
        v = s[vl[i]]
        rel = 1.0 - v / low if low > 0 else 0.0
        sig = (low - v) / np.sqrt((low + v) * var_factor) if low + v > 0 else 0.0
        return rel, sig

    def drop_valley(pk, i):
        # the lower of the two peaks joins the higher one
        lower = i if s[pk[i]] < s[pk[i + 1]] else i + 1
        return pk[:lower] + pk[lower + 1 :]

    while len(peaks) > 1:
        vl = valleys_of(peaks)
        scored = [dip_of(peaks, vl, i) for i in range(len(vl))]
        failing = [i for i, (rel, sig) in enumerate(scored) if rel < min_dip or sig <= dip_sigma]
        if not failing:
            break
        worst = min(failing, key=lambda i: (scored[i][0], i))
        peaks = drop_valley(peaks, worst)
    clear = np.asarray(peaks, dtype=int)
    while len(peaks) > max_modes:
        vl = valleys_of(peaks)
        worst = min(range(len(vl)), key=lambda i: (dip_of(peaks, vl, i)[0], i))
        peaks = drop_valley(peaks, worst)
    vl = valleys_of(peaks)
    centers = 0.5 * (edges[:-1] + edges[1:])
    dips = np.array([dip_of(peaks, vl, i)[0] for i in range(len(vl))])
    return PeakValley(
        hist_edges=edges,
        counts=counts,
        smoothed=s,
        peaks=np.asarray(peaks, dtype=int),
        valleys=np.asarray(vl, dtype=int),
        cuts=centers[np.asarray(vl, dtype=int)] if vl else np.array([]),
        dips=dips,
        clear_peaks=clear,
    )


def quantile_edges(values, n_bins: int) -> np.ndarray:
    """Edges of ``n_bins`` equal-count bins, from ``min`` to ``max``.

    Repeated edges (many equal values) are merged, so fewer bins may come back;
    a value that several quantiles fall on (a group of equal values) gets a
    bin of its own, ``[v, nextafter(v))``, so that it is not merged with the
    values above it (``[100] * 100 + [300] * 100`` in 3 bins gives 2 bins, as
    in 2). A bin that would hold no value is left out (merged into the one
    below), so every bin holds a value; the last edge may then be
    ``nextafter(max)``.

    Returns
    -------
    edges : (K + 1,) ndarray, K <= n_bins
        Empty for an empty input.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    x = _as_1d(values)
    if x.size == 0:
        return np.array([])
    e = np.quantile(x, np.linspace(0.0, 1.0, n_bins + 1))
    e[0], e[-1] = x.min(), x.max()
    if not x.max() > x.min():
        return np.array([x.min(), x.max()])
    values, counts = np.unique(e, return_counts=True)
    e = np.unique(np.r_[values, np.nextafter(values[counts > 1], np.inf)])
    used = np.unique(assign_to_edges(x, e))  # [100, 100+, 300, 300+] leaves [100+, 300) empty
    return np.r_[e[used], e[-1]]


def min_waste_edges(values, n_bins: int, box_of, *, min_count: int = 1) -> np.ndarray:
    """Edges of at most ``n_bins`` bins that minimise the pixels extracted.

    Every item of a bin is extracted in the bin's box, ``box_of(largest
    diameter of the bin)``, so a partition costs
    ``sum over bins of count * box**2``. Only cuts where the needed box
    changes can matter (and, with ``min_count``, cuts ``min_count``
    items before those), so the items are grouped by their own box
    (``box_of(d)``) and an exact dynamic programme over those C candidate
    cuts finds the cheapest split into at most ``n_bins`` contiguous bins,
    O(n_bins·C²) with C <= n_bins·G.
    Unlike equal-count bins this gives a long tail of large particles its
    own bins instead of one huge box for many small ones.

    Parameters
    ----------
    values : (N,) array_like
        Diameters.
    n_bins : int
        >= 1.
    box_of : callable
        ``box_of(diameter) -> box size``, non-decreasing; called
        O(G log N) times.
    min_count : int, optional
        Every bin holds at least this many items (unless there are fewer
        items). Without it the cheapest split often gives a handful of the
        largest items a bin of their own.

    Returns
    -------
    edges : (K + 1,) ndarray, K <= n_bins
        From ``min`` to ``max``; interior edges lie midway between the
        largest diameter of one bin and the smallest of the next. Empty for
        an empty input.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    if min_count < 1:
        raise ValueError(f"min_count must be >= 1, got {min_count}")
    x = np.sort(_as_1d(values), kind="stable")
    if x.size == 0:
        return np.array([])
    # groups of equal box in diameter order: box_of is a non-decreasing step
    # function, so each group's end is found by bisection (O(G log N) calls)
    starts, g_box = [], []
    i = 0
    while i < x.size:
        b = float(box_of(x[i]))
        lo, hi = i, x.size - 1  # last index whose box is b
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if float(box_of(x[mid])) <= b:
                lo = mid
            else:
                hi = mid - 1
        starts.append(i)
        g_box.append(b)
        i = lo + 1
    starts = np.asarray(starts)
    g_box = np.asarray(g_box)
    n, m = x.size, min(min_count, x.size)
    # Cut positions (index of a bin's first item). Cutting inside a group of
    # equal box only pays when the next bin would otherwise hold fewer than
    # min_count items, so the optimum cuts at group starts or min_count, 2 x
    # min_count, ... items before one (or before the end); ties are not cut.
    cand = {int(g) - j * m for g in (*starts[1:], n) for j in range(n_bins if m > 1 else 1)}
    cand = np.array(sorted(c for c in cand if 0 < c < n and x[c - 1] < x[c]), dtype=np.int64)
    pos = np.r_[0, cand, n]
    end_box = g_box[np.searchsorted(starts, pos[1:] - 1, side="right") - 1]  # box of each bin ending there
    count = pos[None, 1:] - pos[:-1, None]  # [a, b]: items pos[a]..pos[b + 1] - 1
    cost = np.where(count >= m, count * end_box[None, :] ** 2, np.inf)
    p = pos.size
    # layers[k][i]: cheapest split of the items before pos[i] into exactly k bins
    layers = [np.r_[0.0, np.full(p - 1, np.inf)]]
    back = np.full((n_bins, p), -1, dtype=np.int64)
    for level in range(n_bins):
        total = layers[-1][:-1, None] + cost  # (start a, end b + 1)
        arg = np.argmin(total, axis=0)
        new = np.r_[np.inf, total[arg, np.arange(p - 1)]]
        back[level] = np.r_[-1, arg]
        layers.append(new)
    finals = [layer[-1] for layer in layers[1:]]
    level = int(np.argmin(finals))  # fewest bins among the cheapest (argmin takes the first)
    cuts, i = [], p - 1
    while level >= 0:
        i = int(back[level, i])
        if i > 0:
            cuts.append(int(pos[i]))
        level -= 1
    inner = [0.5 * (x[c - 1] + x[c]) for c in sorted(cuts)]
    return np.r_[x[0], inner, x[-1]]


def stray_edges(d, edges, box_of, *, gap: float, max_count: int,
                max_bins: int) -> tuple[np.ndarray, list[dict]]:
    """Move the stray picks at the top of each bin out of it.

    A bin's box is set by its largest member, so a handful of picks far
    larger than the rest of their bin (a few large vesicles, merged
    particles, an ice ball that passed the filters) would give every pick of
    the bin their box. Strays are the top ``t <= max_count`` members of a
    bin whose smallest is at least ``1 + gap`` times the next smaller
    member, when the other members (more than ``t``) need a smaller box:
    of the tails that qualify, the one that extracts the fewest pixels
    (``count x box**2``, the strays in the box of their new bin) is taken,
    if it extracts fewer than the bin as it is. Strays of any bin but
    the last join the next bin, whose box they cannot change (they are
    smaller than its members); those of the last bin (or below an empty
    one) get a bin of their own if fewer than ``max_bins`` bins hold picks.

    Parameters
    ----------
    d : (N,) array_like
        Diameters (px).
    edges : (K + 1,) array_like
        Bin edges (:func:`assign_to_edges`).
    box_of : callable
        ``box_of(diameter) -> box``, non-decreasing.
    gap : float
        Relative gap, > 0.
    max_count : int
        The most picks a group of strays may hold.
    max_bins : int
        Bins allowed in all.

    Returns
    -------
    edges : ndarray
        New edges (the same if nothing moved).
    moves : list of dict
        One record per group of strays: ``bin_px``, ``strays_px``, ``picks``,
        ``others``, ``next_smaller_px``, ``box_px_before``, ``box_px_after``
        and ``action`` (``next_bin``, ``own_bin`` or ``none``).
    """
    if not gap > 0:
        raise ValueError(f"gap must be > 0, got {gap}")
    if max_count < 0:
        raise ValueError(f"max_count must be >= 0, got {max_count}")
    if max_bins < 1:
        raise ValueError(f"max_bins must be >= 1, got {max_bins}")
    d = _as_1d(d)
    edges = np.asarray(edges, dtype=float)
    lab = assign_to_edges(d, edges)
    n_bins = len(edges) - 1
    n_used = len(np.unique(lab[lab >= 0]))
    cuts = list(edges[1:-1])
    moves = []
    for k in range(n_bins):
        m = np.sort(d[lab == k], kind="stable")
        if m.size < 3:
            continue
        # the strays go to a box no smaller than their own largest one's
        nxt = d[lab == k + 1]
        dest = float(box_of(nxt.max() if nxt.size else m[-1]))
        best = (m.size * float(box_of(m[-1])) ** 2, 0)  # pixels extracted as it is
        for t in range(1, min(max_count, (m.size - 1) // 2) + 1):
            if m[-t] < (1.0 + gap) * m[-t - 1]:
                continue
            key = ((m.size - t) * float(box_of(m[-t - 1])) ** 2 + t * dest**2, t)
            if key < best:
                best = key
        if best[1] == 0:
            continue
        t = best[1]
        cut = 0.5 * (m[-t - 1] + m[-t])
        action = "next_bin" if nxt.size else ("own_bin" if n_used < max_bins else "none")
        if action == "next_bin":
            cuts[k] = cut
        elif action == "own_bin":
            n_used += 1
            if k < n_bins - 1:  # an empty bin above: the strays fill it
                cuts[k] = cut
            else:
                cuts.append(cut)
        moves.append({
            "bin_px": [round(float(m[0]), 2), round(float(m[-1]), 2)],
            "strays_px": [round(float(m[-t]), 2), round(float(m[-1]), 2)],
            "picks": t, "others": int(m.size - t), "next_smaller_px": round(float(m[-t - 1]), 2),
            "box_px_before": int(box_of(m[-1])), "box_px_after": int(box_of(m[-t - 1])), "action": action,
        })
    return np.r_[edges[0], np.sort(cuts, kind="stable"), edges[-1]], moves


def assign_to_edges(values, edges) -> np.ndarray:
    """Bin index of each value for bins ``[e_k, e_k+1)``, the last bin closed; -1 outside."""
    x = _as_1d(values)
    e = np.asarray(edges, dtype=float)
    out = np.full(x.shape, -1, dtype=np.int64)
    if e.size < 2:
        return out
    idx = np.searchsorted(e, x, side="right") - 1
    idx[x == e[-1]] = e.size - 2
    inside = (x >= e[0]) & (x <= e[-1])
    out[inside] = idx[inside]
    return out


# ---------------------------------------------------------------------------
# Clustering
# ---------------------------------------------------------------------------
def kmeans_1d(values, n_clusters: int, *, max_iter: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means in one dimension with a deterministic, sorted start.

    The start puts the centres at the middles of ``n_clusters`` equal-count
    chunks of the sorted data (SIMPLE's ``sortmeans`` also starts from the
    sorted data). In 1-D every cluster is an interval of the sorted data, so
    an iteration only moves ``n_clusters - 1`` split points
    (``searchsorted`` against the midpoints between centres) and takes the
    interval means from a cumulative sum: O(k log N) per iteration. A
    cluster that empties keeps its centre. Ties go to the lower cluster.

    Parameters
    ----------
    values : (N,) array_like
    n_clusters : int
        >= 1.
    max_iter : int
        Stop after this many updates, or earlier when no split point moves.

    Returns
    -------
    labels : (N,) ndarray of int
        Nearest centre of each value; 0 = the smallest centre.
    centers : (n_clusters,) ndarray
        Ascending; the means of their clusters once converged. Empty
        ``values`` give no labels and ``n_clusters`` NaN centres.

    Raises
    ------
    ValueError
        If ``values`` holds a non-finite value, or ``n_clusters`` or
        ``max_iter`` is below 1.
    """
    if n_clusters < 1:
        raise ValueError(f"n_clusters must be >= 1, got {n_clusters}")
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    x = _as_1d(values)
    if x.size == 0:
        return np.empty(0, dtype=np.int64), np.full(n_clusters, np.nan)
    order = np.argsort(x, kind="stable")
    xs = x[order]
    csum = np.r_[0.0, np.cumsum(xs)]
    pos = np.minimum(((np.arange(n_clusters) + 0.5) * xs.size / n_clusters).astype(int), xs.size - 1)
    centers = xs[pos].astype(float)

    def splits(c):
        # values <= the midpoint between two centres go to the lower one
        return np.r_[0, np.searchsorted(xs, 0.5 * (c[:-1] + c[1:]), side="right"), xs.size]

    cut = splits(centers)
    for _ in range(max_iter):
        n = np.diff(cut)
        sums = csum[cut[1:]] - csum[cut[:-1]]
        centers = np.sort(np.where(n > 0, sums / np.maximum(n, 1), centers), kind="stable")
        new = splits(centers)
        if np.array_equal(new, cut):
            break
        cut = new
    labels_sorted = np.repeat(np.arange(n_clusters, dtype=np.int64), np.diff(cut))
    labels = np.empty(x.size, dtype=np.int64)
    labels[order] = labels_sorted
    return labels, centers


def hac_1d(values, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Agglomerative clustering in 1-D with centroid linkage, cut at ``threshold``.

    Starting from one cluster per distinct value, the two clusters whose
    centroids are closest are merged (population-weighted centroid) while
    that distance is <= ``threshold``. In 1-D the closest centroids are
    always neighbours in sorted order, and a merged centroid lies between
    the two it replaces, so no other distance shrinks: the linkage is
    *reducible*, and every pair of mutual nearest neighbours can be merged at
    once without changing the result. Each round merges all neighbour pairs
    whose gap is a local minimum (and <= ``threshold``) with numpy, so the
    clusters are intervals and large sets take a few vectorised rounds.

    Parameters
    ----------
    values : (N,) array_like
    threshold : float
        Largest centroid distance that is merged (>= 0). SIMPLE uses the
        global standard deviation of the diameters.

    Returns
    -------
    labels : (N,) ndarray of int
        0 = cluster with the smallest centroid.
    centroids : (K,) ndarray
        Ascending.
    """
    if not threshold >= 0:
        raise ValueError(f"threshold must be >= 0, got {threshold}")
    x = _as_1d(values)
    if x.size == 0:
        return np.empty(0, dtype=np.int64), np.empty(0)
    uniq, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    weight = counts.astype(float)
    total = uniq * weight
    owner = np.arange(uniq.size)
    while weight.size > 1:
        cen = total / weight
        gaps = np.diff(cen)
        left = np.r_[np.inf, gaps[:-1]]
        right = np.r_[gaps[1:], np.inf]
        # mutual nearest neighbours (ties: the leftmost of equal gaps), never two adjacent pairs
        merge = (gaps <= threshold) & (gaps < left) & (gaps <= right)
        if not merge.any():
            break
        starts = np.r_[True, ~merge]  # cluster i+1 joins cluster i where merge[i]
        group = np.cumsum(starts) - 1
        weight = np.bincount(group, weights=weight)
        total = np.bincount(group, weights=total)
        owner = group[owner]
    return owner[inverse.ravel()].astype(np.int64), total / weight


# ---------------------------------------------------------------------------
# Cluster filtering (SIMPLE's two Z-score tests)
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class ClusterFilter:
    """Per-cluster result of :func:`zscore_filter`, clusters in ascending mean.

    Attributes
    ----------
    labels : (K,) ndarray of int
        The cluster labels (only non-empty clusters).
    count, mean, dmin, dmax : (K,) ndarrays
        Population and diameter summary of each cluster.
    mean_z : (K,) ndarray
        ``|mean - median(all)| / (1.4826 MAD(all))``.
    pop_z : (K,) ndarray
        ``(median(pops) - pop) / (1.4826 MAD(pops))``; positive = sparse.
    edge_excluded : (K,) ndarray of bool
        First/last cluster excluded by rule (k-means path).
    accepted : (K,) ndarray of bool
        Passed both tests and not edge-excluded.
    median, mad_gau : float
        Global median and 1.4826·MAD of the diameters.
    pop_median, pop_mad_gau : float
        Median and 1.4826·MAD of the cluster populations.
    mean_test_suppressed, pop_test_suppressed : bool
        True when the corresponding MAD is exactly zero.
    sigma_crit : float
    """

    labels: np.ndarray
    count: np.ndarray
    mean: np.ndarray
    dmin: np.ndarray
    dmax: np.ndarray
    mean_z: np.ndarray
    pop_z: np.ndarray
    edge_excluded: np.ndarray
    accepted: np.ndarray
    median: float
    mad_gau: float
    pop_median: float
    pop_mad_gau: float
    mean_test_suppressed: bool
    pop_test_suppressed: bool
    sigma_crit: float

    @property
    def n_clusters(self) -> int:
        return int(self.labels.size)

    def accepted_range(self) -> tuple[float, float] | None:
        """``(min, max)`` over the members of the accepted clusters."""
        if not self.accepted.any():
            return None
        return float(self.dmin[self.accepted].min()), float(self.dmax[self.accepted].max())

    def rows(self) -> list[dict]:
        """One JSON-friendly dict per cluster."""
        out = []
        for i in range(self.n_clusters):
            reasons = []
            if self.edge_excluded[i]:
                reasons.append("edge cluster")
            if not self.mean_z[i] < self.sigma_crit:
                reasons.append("mean Z")
            if not self.pop_z[i] < self.sigma_crit:
                reasons.append("population Z")
            out.append({
                "cluster": i + 1,
                "count": int(self.count[i]),
                "mean": round(float(self.mean[i]), 3),
                "min": round(float(self.dmin[i]), 3),
                "max": round(float(self.dmax[i]), 3),
                "mean_z": round(float(self.mean_z[i]), 3),
                "pop_z": round(float(self.pop_z[i]), 3),
                "accepted": bool(self.accepted[i]),
                "rejected_by": ", ".join(reasons),
            })
        return out


def zscore_filter(values, labels, *, sigma_crit: float = 2.0, exclude_edges: bool = False) -> ClusterFilter:
    """Accept or reject clusters of diameters with SIMPLE's two Z-score tests.

    A cluster is accepted when both hold [1]_:

    * mean test: ``|mean_i - median(d)| / (1.4826 MAD(d)) < sigma_crit``;
    * population test: ``(median(pops) - pop_i) / (1.4826 MAD(pops)) < sigma_crit``
      (only sparse clusters can fail it).

    A test whose MAD is exactly zero is suppressed (every cluster passes it):
    for the population test this is SIMPLE's documented rule (all
    populations equal); for the mean test it is the guard in SIMPLE's code
    (more than half the diameters identical). With ``exclude_edges`` the
    first and last cluster (by mean) are rejected whatever their scores
    (SIMPLE's k-means path).

    Parameters
    ----------
    values : (N,) array_like
        Diameters.
    labels : (N,) array_like of int
        Cluster of each diameter (any integers; empty clusters do not exist).
    sigma_crit : float
        Threshold of both tests (> 0).
    exclude_edges : bool
        Reject the first and last cluster.

    Returns
    -------
    ClusterFilter
    """
    if not sigma_crit > 0:
        raise ValueError(f"sigma_crit must be > 0, got {sigma_crit}")
    x = _as_1d(values)
    lab = np.asarray(labels).ravel()
    if lab.shape != x.shape:
        raise ValueError(f"labels must have the shape of values, got {lab.shape} and {x.shape}")
    if x.size == 0:
        raise ValueError("values must not be empty")
    uniq, inv = np.unique(lab, return_inverse=True)
    k = uniq.size
    count = np.bincount(inv, minlength=k)
    mean = np.bincount(inv, weights=x, minlength=k) / count
    dmin = np.full(k, np.inf)
    dmax = np.full(k, -np.inf)
    np.minimum.at(dmin, inv, x)
    np.maximum.at(dmax, inv, x)
    order = np.argsort(mean, kind="stable")
    uniq, count, mean, dmin, dmax = uniq[order], count[order], mean[order], dmin[order], dmax[order]

    med = float(np.median(x))
    scale = mad_gau(x, med)
    mean_suppressed = scale == 0.0
    mean_z = np.zeros(k) if mean_suppressed else np.abs(mean - med) / scale

    pops = count.astype(float)
    pop_med = float(np.median(pops))
    pop_scale = mad_gau(pops, pop_med)
    pop_suppressed = pop_scale == 0.0
    pop_z = np.zeros(k) if pop_suppressed else (pop_med - pops) / pop_scale

    edge = np.zeros(k, dtype=bool)
    if exclude_edges and k:
        edge[0] = edge[-1] = True
    accepted = (mean_z < sigma_crit) & (pop_z < sigma_crit) & ~edge
    return ClusterFilter(
        labels=uniq, count=count, mean=mean, dmin=dmin, dmax=dmax, mean_z=mean_z, pop_z=pop_z,
        edge_excluded=edge, accepted=accepted, median=med, mad_gau=scale, pop_median=pop_med,
        pop_mad_gau=pop_scale, mean_test_suppressed=bool(mean_suppressed),
        pop_test_suppressed=bool(pop_suppressed), sigma_crit=float(sigma_crit),
    )


# ---------------------------------------------------------------------------
# From clusters to extraction bins
# ---------------------------------------------------------------------------
def merge_bins(lo, hi, counts, box_of, *, max_bins: int, merge_same_box: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Merge neighbouring size bins that cost least to extract together.

    Merging bin ``j`` with bin ``j + 1`` extracts bin ``j``'s particles in
    the larger box of bin ``j + 1``; the cost is the extra pixels,
    ``count_j * (box_of(hi_{j+1})**2 - box_of(hi_j)**2)``. Bins whose boxes
    are equal (cost 0) are merged first when ``merge_same_box``; then the
    cheapest merge is repeated while there are more than ``max_bins`` bins.

    Parameters
    ----------
    lo, hi : (K,) array_like
        Smallest and largest diameter of each bin, ascending, not overlapping.
    counts : (K,) array_like of int
        Items per bin.
    box_of : callable
        ``box_of(largest_diameter) -> box size``, non-decreasing.
    max_bins : int
        >= 1.
    merge_same_box : bool

    Returns
    -------
    lo, hi, counts : (K',) ndarrays
    """
    if max_bins < 1:
        raise ValueError(f"max_bins must be >= 1, got {max_bins}")
    lo_l = [float(v) for v in lo]
    hi_l = [float(v) for v in hi]
    c = [int(v) for v in counts]
    if not len(lo_l) == len(hi_l) == len(c):
        raise ValueError(f"lo, hi and counts must have the same length, got {len(lo_l)}, {len(hi_l)}, {len(c)}")

    def cost(j: int) -> float:
        return c[j] * (float(box_of(hi_l[j + 1])) ** 2 - float(box_of(hi_l[j])) ** 2)

    while len(c) > 1:
        costs = [cost(j) for j in range(len(c) - 1)]
        j = int(np.argmin(costs))
        if not ((merge_same_box and costs[j] <= 0) or len(c) > max_bins):
            break
        c[j + 1] += c[j]
        lo_l[j + 1] = lo_l[j]
        del c[j], lo_l[j], hi_l[j]
    return np.asarray(lo_l), np.asarray(hi_l), np.asarray(c, dtype=np.int64)
