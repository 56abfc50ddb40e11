"""The extraction plan: size bins, and a box and mask size for each.

A binning stage turns the dataset's diameters into an :class:`ExtractionPlan`;
writers use it to split the picks into one coordinate set per bin.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

import numpy as np

#: ``reject_reason`` of picks outside the diameter range a binning policy accepts.
OUTLIER_REASON = "binning_outlier"

#: Width of the soft edge of the extraction mask, in pixels (SIMPLE's COSMSKHALFWIDTH).
COSINE_EDGE_WIDTH_PX = 6


def format_range(lo: float, hi: float, *, sep: str = "-", spec: str = ".0f") -> str:
    """``lo`` and ``hi`` formatted with ``spec``: ``"79-97"``, or ``"108"`` when they read alike.

    A bin of one pick (or of picks of one size) then reads ``108 px``, not ``108-108 px``.
    """
    a, b = format(lo, spec), format(hi, spec)
    return a if a == b else f"{a}{sep}{b}"


def is_fft_friendly(n: int) -> bool:
    """True for even sizes whose only prime factors are 2, 3 and 5."""
    if n < 2 or n % 2:
        return False
    for p in (2, 3, 5):
        while n % p == 0:
            n //= p
    return n == 1


#: Largest prime factor a ``multiple32`` box may have. Every size of EMAN2's
#: measured ``good_box_sizes`` (libpyEM/EMAN2.py) and all but one of SIMPLE's
#: FFTW-tuned ``boxsizes`` (src/utils/simple_magic_boxes.f90) have no prime
#: factor above 13; a multiple of 32 can have 17, 19, 23, ... (544, 608, 736).
MAX_BOX_PRIME = 13


def largest_prime_factor(n: int) -> int:
    """Largest prime factor of an integer ``n`` >= 2 (``n`` itself for a prime).

    Examples
    --------
    >>> largest_prime_factor(544), largest_prime_factor(576), largest_prime_factor(13)
    (17, 3, 13)
    """
    n = int(n)
    if n < 2:
        raise ValueError(f"n must be an integer >= 2, got {n}")
    largest, p = 1, 2
    while p * p <= n:
        while n % p == 0:
            largest, n = p, n // p
        p += 1
    return max(largest, n) if n > 1 else largest


def round_up_box(size: float, *, rounding: str = "multiple32", multiple: int = 32) -> int:
    """Round a box edge up (never down) to an extraction-friendly size.

    Parameters
    ----------
    size : float
        Minimum box edge in pixels (> 0).
    rounding : {'multiple32', 'fft', 'even'}
        ``multiple32``: next multiple of ``multiple`` with no prime factor
        above :data:`MAX_BOX_PRIME` (544 = 32 x 17 becomes 576); ``fft``:
        next even size with prime factors 2, 3, 5 only; ``even``: next even
        integer.

    Examples
    --------
    >>> round_up_box(300), round_up_box(300, rounding="fft"), round_up_box(301, rounding="even")
    (320, 300, 302)
    >>> round_up_box(530)
    576
    """
    if not size > 0:
        raise ValueError(f"size must be > 0, got {size}")
    n = int(math.ceil(size - 1e-9))
    if rounding == "multiple32":
        box = int(math.ceil(n / multiple) * multiple)
        while box > 1 and largest_prime_factor(box) > MAX_BOX_PRIME:
            box += multiple
        return box
    if rounding == "even":
        return n + (n % 2)
    if rounding == "fft":
        while not is_fft_friendly(n):
            n += 1
        return n
    raise ValueError(f"rounding must be 'multiple32', 'fft' or 'even', got {rounding!r}")


@dataclass(frozen=True)
class SizeBin:
    """One extraction set.

    Attributes
    ----------
    index : int
        0-based bin number (RELION ``rlnClassNumber`` = index + 1).
    d_min_px, d_max_px : float
        Diameter range of the bin: the smallest and largest diameter of its
        picks (the box is computed from ``d_max_px``). Diameters between two
        bins belong to neither (see :meth:`ExtractionPlan.assign`).
    count : int
        Accepted picks in the bin.
    box_px : int
        Box edge at the micrograph's pixel size.
    mask_diameter_A : float or None
        Mask diameter in Å (None without a pixel size).
    box_px_extract : int or None
        Box edge at the plan's ``extract_pixel_size``, if one was asked for.
    extract_size_px : int or None
        With ``box_px_extract``: the box cut from the micrograph (micrograph
        pixels, even) that is rescaled to ``box_px_extract`` (RELION
        ``--extract_size`` with ``--scale``; cryoSPARC's extraction box with
        Fourier cropping). Rescaling gives ``pixel_size * extract_size_px /
        box_px_extract`` Å/px (:meth:`rescaled_pixel_size`): the asked pixel
        size, up to the rounding to an even box.
    """

    index: int
    d_min_px: float
    d_max_px: float
    count: int
    box_px: int
    mask_diameter_A: float | None = None
    box_px_extract: int | None = None
    extract_size_px: int | None = None

    @property
    def label(self) -> str:
        return f"bin{self.index + 1}"

    def rescaled_pixel_size(self, pixel_size: float) -> float | None:
        """Å/px of the particles extracted with ``extract_size_px`` and rescaled to ``box_px_extract``."""
        if not (self.box_px_extract and self.extract_size_px and pixel_size):
            return None
        return pixel_size * self.extract_size_px / self.box_px_extract


@dataclass(frozen=True)
class ExtractionPlan:
    """Size bins of a dataset, with box sizes.

    Attributes
    ----------
    policy : str
        Name of the binning stage that made it.
    pixel_size : float or None
        Å/px of the micrographs.
    bins : tuple of SizeBin
        Ordered by diameter.
    accepted_range_px : (float, float) or None
        Picks outside this diameter range are rejected by the binning stage.
    extract_pixel_size : float or None
        Å/px of a downscaled extraction, if asked for.
    polarity : {'dark', 'bright'}
        Contrast of the particles in the micrographs. RELION's extraction
        wants white particles: dark ones are inverted (``--invert_contrast``).
    notes : tuple of str
        Human-readable remarks (e.g. why a fallback was used).
    details : dict
        JSON-friendly diagnostics of the policy (parameters, global size
        statistics, modes or clusters with their Z-scores, histogram settings).
    """

    policy: str
    pixel_size: float | None
    bins: tuple[SizeBin, ...] = ()
    accepted_range_px: tuple[float, float] | None = None
    extract_pixel_size: float | None = None
    polarity: str = "dark"
    notes: tuple[str, ...] = field(default=())
    details: dict = field(default_factory=dict, compare=False)

    @property
    def n_bins(self) -> int:
        return len(self.bins)

    @property
    def n_accepted(self) -> int:
        """Picks in the bins."""
        return int(sum(b.count for b in self.bins))

    def format_table(self) -> str:
        """A short plain-text table of the bins (for the terminal)."""
        head = f"{'bin':>3}  {'diameter px':>13}  {'diameter Å':>13}  {'picks':>6}  {'box px':>6}  {'mask Å':>7}"
        if self.extract_pixel_size:
            head += f"  box@{self.extract_pixel_size:g}Å/px"
        lines = [head]
        px = self.pixel_size
        for b in self.bins:
            a = format_range(b.d_min_px * px, b.d_max_px * px) if px else "-"
            m = "-" if b.mask_diameter_A is None else f"{b.mask_diameter_A:.0f}"
            lo, _, hi = format_range(b.d_min_px, b.d_max_px).partition("-")
            line = f"{b.index + 1:>3}  {lo:>6}{'-' if hi else ' '}{hi:<6}  {a:>13}  {b.count:>6}  {b.box_px:>6}  {m:>7}"
            if self.extract_pixel_size:
                line += f"  {'-' if b.box_px_extract is None else b.box_px_extract:>6}"
            lines.append(line)
        if not self.bins:
            lines.append("  (no bins)")
        return "\n".join(lines)

    def assign(self, diameters) -> np.ndarray:
        """Bin index of each diameter; -1 outside every bin.

        Ranges are closed, ``[d_min_px, d_max_px]`` (bins never overlap: a
        policy's bins hold disjoint groups of picks). For the picks a plan
        was made from this reproduces their ``size_bin``; a diameter between
        two bins belongs to neither.
        """
        d = np.asarray(diameters, dtype=float)
        out = np.full(d.shape, -1, dtype=np.int64)
        for b in self.bins:
            inside = (d >= b.d_min_px) & (d <= b.d_max_px)
            out[inside & (out < 0)] = b.index
        return out

    def to_dict(self) -> dict:
        d = asdict(self)
        d["bins"] = [asdict(b) for b in self.bins]
        d["accepted_range_px"] = None if self.accepted_range_px is None else list(self.accepted_range_px)
        d["notes"] = list(self.notes)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ExtractionPlan":
        return cls(
            policy=d["policy"],
            pixel_size=d.get("pixel_size"),
            bins=tuple(SizeBin(**b) for b in d.get("bins", [])),
            accepted_range_px=None if d.get("accepted_range_px") is None else tuple(d["accepted_range_px"]),
            extract_pixel_size=d.get("extract_pixel_size"),
            polarity=d.get("polarity", "dark"),  # plans written before the field existed
            notes=tuple(d.get("notes", [])),
            details=dict(d.get("details") or {}),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=_json_default)


def _json_default(o):
    """numpy scalars and arrays in ``details`` become plain JSON."""
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")
