"""Records passed between stages: micrographs, their metadata and the run context."""

from __future__ import annotations

import dataclasses
import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any, Callable, Hashable, Optional

import numpy as np

from lipoframe.algorithms.pyramid import block_mean, typical_level


class InputError(Exception):
    """A problem with one input file. The message names the file and the problem."""


class SettingsError(InputError):
    """An input file, read whole, that the settings cannot pick: the problem names a setting to change.

    Such as a diameter in Å for a micrograph whose header gives no pixel
    size. No half-written copy gives it (the reader read the file in
    full), so a ``watch=true`` session counts it as failed at once.

    Parameters
    ----------
    where : str
        The file (its path, or the micrograph's name).
    problem : str
        What is wrong, without the file: the same words for every file the
        same settings fail on.
    """

    def __init__(self, where: str, problem: str):
        super().__init__(f"{where}: {problem}")
        self.where, self.problem = where, problem

    def __reduce__(self):  # pickled with both arguments (a worker process's error)
        return type(self), (self.where, self.problem)


#: Suffixes of a compressed file (gzip, bzip2), which a reader may take after its own: ``mic.mrc.gz``,
#: ``mic.mrc.bz2`` (:func:`file_suffix`); with the tool that decompresses such a file.
COMPRESSION_TOOLS = {".gz": "gunzip", ".bz2": "bunzip2"}
COMPRESSION_SUFFIXES = tuple(COMPRESSION_TOOLS)


def file_suffix(path: str | os.PathLike) -> str:
    """The lower-case suffix a reader is chosen by: ``.mrc``, or ``.mrc.gz`` (``.mrc.bz2``) for a compressed file.

    Examples
    --------
    >>> file_suffix("data/mic_001.MRC.gz"), file_suffix("a.b.tif"), file_suffix("mic.gz"), file_suffix("README")
    ('.mrc.gz', '.tif', '.gz', '')
    >>> file_suffix("mic.mrc.bz2"), file_stem("data/mic_001.mrc.bz2")
    ('.mrc.bz2', 'mic_001')
    """
    p = PurePath(path)
    last = p.suffix.lower()
    if last in COMPRESSION_SUFFIXES and (inner := PurePath(p.stem).suffix.lower()):
        return inner + last
    return last


def file_stem(path: str | os.PathLike) -> str:
    """The file name without its :func:`file_suffix`: ``mic_001`` for ``data/mic_001.mrc.gz`` or ``.mrc.bz2``."""
    name = PurePath(path).name
    return name[: len(name) - len(file_suffix(path))] or name


_SPECIAL_FILES = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"),
                  (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device"))


def refuse_special_file(path) -> None:
    """Raise :class:`InputError` when ``path`` exists but is not a regular file.

    Opening a named pipe blocks until something writes to it, so a run given
    one by name would wait for ever; a device or a folder cannot be a
    micrograph either. A missing or unreadable file is left to the reader,
    which names that problem.
    """
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return
    for is_kind, kind in _SPECIAL_FILES:
        if is_kind(mode):
            raise InputError(f"{path}: not a regular file but {kind}; give each micrograph as a file")


@dataclass(frozen=True)
class MicrographMeta:
    """What writers and the dataset-level stages need to know about a micrograph.

    Attributes
    ----------
    name : str
        Unique, file-system-safe name used for output files.
    path : str
        Path of the input file as given by the user (may be empty for arrays).
    shape : tuple of int
        ``(ny, nx)`` (or ``(nz, ny, nx)``) of the full-resolution array.
    pixel_size : float or None
        Å per pixel, or None when unknown.
    flip_y : bool
        True for micrographs whose rows the exports count from the bottom:
        as a reader returns it, inputs that other programs read upside down
        (TIFF); in a run's records, after the run's ``flip_y`` option.
    """

    name: str
    path: str
    shape: tuple[int, ...]
    pixel_size: float | None = None
    flip_y: bool = False

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["shape"] = list(self.shape)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "MicrographMeta":
        return cls(
            name=str(d["name"]),
            path=str(d["path"]),
            shape=tuple(int(s) for s in d["shape"]),
            pixel_size=None if d.get("pixel_size") is None else float(d["pixel_size"]),
            flip_y=bool(d.get("flip_y", False)),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict())


@dataclass(frozen=True)
class Micrograph:
    """A micrograph as stages see it.

    ``image`` is the full-resolution array exactly as read, (M, N) (or
    (P, M, N) for tomograms); it may be a read-only memory map. Stages that
    want particles to be bright call :meth:`signal`, which returns a
    block-averaged, polarity-corrected float32 copy and caches it, so that the
    file is binned once however many stages ask.
    """

    meta: MicrographMeta
    image: np.ndarray
    polarity: str = "dark"
    _cache: dict = field(default_factory=dict, repr=False, compare=False)
    #: Applied to each signal binned from ``image`` (see :meth:`with_transform`).
    _transform: Optional[Callable[[np.ndarray, int], np.ndarray]] = field(default=None, repr=False, compare=False)
    #: The micrograph :meth:`with_transform` was called on: its signals are the ones transformed.
    _parent: Optional["Micrograph"] = field(default=None, repr=False, compare=False)
    #: Results of :meth:`derived`, by key.
    _derived: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def name(self) -> str:
        return self.meta.name

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.image.shape)

    def signal(self, factor: int = 1) -> np.ndarray:
        """Return the image binned by ``factor`` with particles bright (float32).

        Parameters
        ----------
        factor : int
            Block size of the average; 1 returns a full-resolution copy.

        Returns
        -------
        out : (M // factor, N // factor) ndarray of float32
            Block means of the polarity-corrected image, less its typical
            value (:attr:`level`; negated too for dark particles). Element ``[i, j]``
            has its centre at full-resolution ``((i + 0.5) * factor - 0.5,
            (j + 0.5) * factor - 0.5)``. The same values whichever
            factors were asked for before (see
            :func:`~lipoframe.algorithms.pyramid.block_mean`, Notes), unless
            this is a :meth:`with_transform` copy.
        """
        factor = int(factor)
        if factor not in self._cache:
            # Average from the coarsest cached level this factor is a power-of-two multiple of (or the
            # full-resolution one), so that the file is read once: that gives block_mean of the image
            # to the bit (block_mean, Notes), so no level, and no score, depends on which was binned first.
            finer = [g for g in self._cache if g < factor and factor % g == 0 and (g == 1 or _power_of_two(factor // g))]
            if finer:
                g = max(finer)
                binned = block_mean(self._cache[g], factor // g)  # already polarity-corrected
            elif self._parent is not None:
                binned = np.asarray(self._transform(self._parent.signal(factor), factor), dtype=np.float32)
            else:
                binned = block_mean(self.image, factor, offset=self.level)
                if self.polarity == "dark":
                    np.negative(binned, out=binned)
            binned.setflags(write=False)
            self._cache[factor] = binned
        return self._cache[factor]

    @property
    def level(self) -> float:
        """The image's typical value (:func:`~lipoframe.algorithms.pyramid.typical_level`), which :meth:`signal` subtracts.

        Only differences of pixel values carry information; removing the
        level keeps float32 precise for integer counts or a large offset.
        """
        return self.derived(("Micrograph.level",), lambda: typical_level(self.image))

    def derived(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        """``compute()``, worked out once for this micrograph per ``key``.

        For what a stage derives from the image and would otherwise work out
        again each time the runner calls it on the same micrograph (the
        filters run again after retried picks are refined). ``key`` must
        name the stage and hold everything besides this micrograph's signal
        that the result depends on. The result is shared: treat it as
        read-only. A copy from :meth:`with_transform` starts empty.
        """
        if key not in self._derived:
            self._derived[key] = compute()
        return self._derived[key]

    def with_transform(self, transform: Callable[[np.ndarray, int], np.ndarray]) -> "Micrograph":
        """A copy whose :meth:`signal` is ``transform(signal, factor)`` of this one's.

        The transform is applied to this micrograph's signal (binned once,
        and cached here too) where the copy has no finer level cached that
        the factor is a power-of-two multiple of; such coarser factors are
        block means of the coarsest of those, as for the original, so a
        detector that asks for its finest binning first pays for one
        transform. ``transform`` must not modify its input (a read-only
        array) and returns a new array of the same shape (particles
        bright).

        The copy's levels depend on the factor asked for first (where the
        transform is applied), not on the order of the coarser ones: every
        power-of-two multiple of it is the same to the bit as if binned
        from it directly (:func:`~lipoframe.algorithms.pyramid.block_mean`,
        Notes). Making the transform's factor independent of the order
        would mean transforming every level (a transform such as
        :func:`~lipoframe.algorithms.peel.replace_discs` at each one) or at
        full resolution. :func:`lipoframe.runner.peel_again` gives its
        copy to the detector alone, which asks for its levels finest first,
        so the peeled levels are the same from run to run and in
        :func:`lipoframe.runner.pick`. A transform that commutes with block
        means (the polarity check's negation) gives the same levels in any
        order.
        """
        return Micrograph(meta=self.meta, image=self.image, polarity=self.polarity, _transform=transform, _parent=self)


def _power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


@dataclass(frozen=True)
class PickContext:
    """Run-level settings every per-micrograph stage receives.

    Attributes
    ----------
    dmin_px, dmax_px : float
        Diameter range of the particles in full-resolution pixels.
    polarity : {'dark', 'bright'}
        Contrast of the particles against the background.
    pixel_size : float or None
        Å/px of the micrograph (per-micrograph stages) or of the dataset
        (binning and writers); None when unknown.
    seed : int
        Seed for any randomness a stage uses.
    export_rejected : bool
        Writers export rejected picks too (flagged) when True.
    """

    dmin_px: float
    dmax_px: float
    polarity: str = "dark"
    pixel_size: float | None = None
    seed: int = 0
    export_rejected: bool = False


def length_px(value: float, units: str, ctx: PickContext, mic: Micrograph, key: str) -> float:
    """A stage option given in ``units`` (``A`` or ``px``) in full-resolution pixels of ``mic``.

    Raises
    ------
    ValueError
        Naming the micrograph and the option ``key`` when it is in Å and the
        pixel size is unknown.
    """
    if units != "A":
        return value
    px = mic.meta.pixel_size or ctx.pixel_size
    if not px:
        units_key = key.rsplit(".", 1)[0] + ".units"
        raise ValueError(
            f"{mic.meta.path or mic.name}: {key} is in Å but the pixel size is unknown; "
            f"give pixel_size=<Å/px>, or {key} in pixels with {units_key}=px"
        )
    return value / px
