"""``lipoframe simulate``: synthetic denoised micrographs with ground truth.

Writes MRC files (float32, pixel size in the header) and ``truth.csv``
(``micrograph,x_px,y_px,diameter_px,kind``) plus ``micrographs.csv`` (one row
per micrograph: file, size, pixel size, scenario) and ``simulation.json``
(what was made, used to reuse an existing set). Micrographs of an earlier
write into the folder that are not written again keep their rows of
``truth.csv`` and ``micrographs.csv``.

Presets
-------
``suite``
    The quality benchmark: 11 varied 4096² micrographs at 1 Å/px (size
    mixtures from 150 to 500 Å, crowded fields with touching particles, solid
    particles, dense shells with a lighter core, vesicles, carbon edges, ice
    contamination and junk, particles cut by the border, strong ice
    gradients), one K3-sized 5760x4092 micrograph at 1.06 Å/px, one binned
    2048² micrograph at 2 Å/px and one micrograph without particles.
``mini``
    The same scenarios at 1024² and 4 Å/px (seconds to make; for quick checks).

Python::

    from lipoframe.simulate import write_suite
    info = write_suite("sim/", preset="suite", seed=0)   # reuses sim/ when up to date
    info.truth_csv, info.paths
"""

from __future__ import annotations

import dataclasses
import json
import math
import shlex
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from lipoframe.synthetic import Component, SceneSpec, render_scene, simulated_table, write_mrc

#: Bump when the generator changes so cached sets are remade.
SIMULATOR_VERSION = 6
PRESETS = ("suite", "mini")

S, SH, V = "solid", "shell", "vesicle"
#: Diameter range (Å) of every particle of the presets: lipoframe's default dmin/dmax.
SUITE_RANGE_A = (150.0, 500.0)


def _mix(*kinds: tuple[str, float]) -> tuple[tuple[str, float], ...]:
    return tuple(kinds)


def suite_scenes(seed: int = 0) -> list[SceneSpec]:
    """The scenes of the ``suite`` preset (names are stable; ``seed`` varies the content)."""
    sq, px = (4096, 4096), 1.0
    base = dict(shape=sq, pixel_size=px)
    scenes = [
        SceneSpec("s01_sparse_trimodal", components=(
            Component(180, 10, 3, _mix((S, 0.7), (SH, 0.3))),
            Component(300, 15, 2, _mix((S, 0.5), (SH, 0.3), (V, 0.2))),
            Component(450, 20, 1, _mix((V, 0.6), (S, 0.4))),
        ), coverage=0.08, description="sparse, three sizes (180/300/450 Å), mixed kinds", **base),
        SceneSpec("s02_crowded_ldl", components=(Component(220, 25, 1, _mix((S, 0.6), (SH, 0.4))),),
                  coverage=0.40, touching=0.5, n_ice=2, description="crowded LDL-like particles 150-300 Å, many touching; two ice", **base),
        SceneSpec("s03_shells", components=(Component(260, 40, 1, _mix((SH, 1.0))),),
                  coverage=0.2, touching=0.2, description="dense shells with a lighter core (dark rings), 180-340 Å", **base),
        SceneSpec("s04_vesicles_broad", components=(Component(350, 90, 1, _mix((V, 1.0))),),
                  coverage=0.2, touching=0.15, nested=0.3,
                  description="thin-membrane vesicles, broad 200-500 Å, some multilamellar (a vesicle inside)", **base),
        SceneSpec("s05_small_rings_crowded", components=(Component(160, 8, 1, _mix((SH, 0.8), (S, 0.2))),),
                  coverage=0.35, touching=0.5, description="crowded small apoferritin-like rings ~160 Å", **base),
        SceneSpec("s06_carbon_edge", components=(
            Component(200, 20, 2, _mix((S, 0.7), (SH, 0.3))),
            Component(380, 30, 1, _mix((V, 0.5), (S, 0.5))),
        ), coverage=0.12, carbon=True, n_junk=20, description="carbon film with a sharp edge across the field", **base),
        SceneSpec("s07_ice_contamination", components=(
            Component(240, 30, 2, _mix((S, 0.6), (SH, 0.4))),
            Component(420, 30, 1, _mix((V, 0.7), (S, 0.3))),
        ), coverage=0.12, n_ice=5, n_junk=40, description="very dark ice contamination (irregular and round balls), small junk", **base),
        SceneSpec("s08_thick_ice_gradient", components=(Component(280, 60, 1, _mix((S, 0.5), (SH, 0.3), (V, 0.2))),),
                  coverage=0.15, gradient=3.0, lowfreq=1.5, contrast=1.6, noise=1.2,
                  description="strong ice-thickness gradient, low-frequency background, lower contrast", **base),
        SceneSpec("s09_bimodal_large_touching", components=(
            Component(340, 20, 1, _mix((S, 0.6), (V, 0.4))),
            Component(480, 15, 1, _mix((V, 0.6), (S, 0.4))),
        ), coverage=0.35, touching=0.6, description="two large sizes (340/480 Å), crowded and touching", **base),
        SceneSpec("s10_border_cut", components=(Component(300, 80, 1, _mix((S, 0.5), (SH, 0.3), (V, 0.2))),),
                  coverage=0.15, border=0.35, description="many particles cut by the micrograph border", **base),
        SceneSpec("s11_everything", components=(
            Component(170, 12, 3, _mix((S, 0.5), (SH, 0.5))),
            Component(280, 20, 2, _mix((S, 0.4), (SH, 0.3), (V, 0.3))),
            Component(460, 25, 1, _mix((V, 0.7), (S, 0.3))),
        ), coverage=0.25, touching=0.3, border=0.1, carbon=True, n_ice=3, n_junk=30, ellipticity=0.1,
            description="mixture of everything: three sizes, all kinds, carbon, ice, junk", **base),
        SceneSpec("k3_mixed", shape=(4092, 5760), pixel_size=1.06, components=(
            Component(200, 25, 2, _mix((S, 0.6), (SH, 0.4))),
            Component(400, 40, 1, _mix((V, 0.5), (S, 0.5))),
        ), coverage=0.18, touching=0.2, n_ice=2, n_junk=20, description="non-square K3 frame 5760x4092 at 1.06 Å/px"),
        SceneSpec("binned_2A", shape=(2048, 2048), pixel_size=2.0, components=(
            Component(190, 20, 2, _mix((S, 0.5), (SH, 0.5))),
            Component(380, 40, 1, _mix((V, 0.4), (S, 0.6))),
        ), coverage=0.2, touching=0.2, n_junk=10, description="binned 2048² at 2 Å/px"),
        SceneSpec("empty", components=(), coverage=0.0, n_ice=2, n_junk=15, gradient=1.5, lowfreq=0.8,
                  description="no particles: background, gradient, noise, two ice contaminations, small junk", **base),
    ]
    # Every particle lies in the default picking range (150-500 Å), which the
    # benchmark uses: a target outside it would have to be rejected by the
    # diameter_range filter and counted as missed at the same time.
    return [
        replace(s, seed=int(np.random.SeedSequence([seed, i]).generate_state(1)[0]), size_range_A=SUITE_RANGE_A)
        for i, s in enumerate(scenes)
    ]


def mini_scenes(seed: int = 0) -> list[SceneSpec]:
    """The ``suite`` scenarios binned by 4 (1024² at 4 Å/px; K3 1440x1023; the 2 Å/px one 512² at 8 Å/px)."""
    return [replace(s, shape=(s.shape[0] // 4, s.shape[1] // 4), pixel_size=4 * s.pixel_size) for s in suite_scenes(seed)]


def preset_scenes(preset: str, seed: int = 0) -> list[SceneSpec]:
    """The scenes of ``preset`` (one of :data:`PRESETS`)."""
    if preset == "suite":
        return suite_scenes(seed)
    if preset == "mini":
        return mini_scenes(seed)
    raise ValueError(f"preset must be one of {PRESETS}, got {preset!r}")


#: Columns of ``truth.csv`` and ``micrographs.csv``, in order.
TRUTH_COLUMNS = ("micrograph", "x_px", "y_px", "diameter_px", "kind")
MICROGRAPHS_COLUMNS = ("micrograph", "file", "width_px", "height_px", "pixel_size_A", "n_particles", "n_ice", "n_junk",
                       "carbon", "description")


@dataclass
class SimulationInfo:
    """What :func:`write_suite` made: the folder, micrograph files and truth table path.

    ``paths`` are the micrographs written (or reused); ``truth.csv`` and
    ``micrographs.csv`` also hold the micrographs of earlier writes into the
    folder that were not written again, ``kept`` (names; [] when reused).
    """

    folder: Path
    paths: list[Path]
    truth_csv: Path
    micrographs_csv: Path
    reused: bool = False
    kept: list[str] = dataclasses.field(default_factory=list)

    def truth(self) -> pd.DataFrame:
        return pd.read_csv(self.truth_csv, dtype={"micrograph": str})


def _fingerprint(preset: str, seed: int, scenes: list[SceneSpec], noise_scale: float = 1.0, rim_blur_A: float = 0.0) -> dict:
    fp = {"preset": preset, "seed": seed, "version": SIMULATOR_VERSION, "scenes": [s.name for s in scenes]}
    # Options at their defaults stay out, so sets written before they existed stay valid.
    if noise_scale != 1.0:
        fp["noise_scale"] = noise_scale
    if rim_blur_A != 0.0:
        fp["rim_blur_A"] = rim_blur_A
    return fp


def _earlier_tables(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The ``truth.csv`` and ``micrographs.csv`` an earlier write left in ``folder`` (empty tables when absent).

    Raises
    ------
    ValueError
        Naming the file, when one is not a table of a 2D simulated set (so
        it is not overwritten).
    """
    # micrographs.csv is kept as text, written back as read; truth.csv's numbers take float_format again
    return (simulated_table(folder / "truth.csv", TRUTH_COLUMNS, numbers=("x_px", "y_px", "diameter_px"),
                            items="micrographs", command="lipoframe simulate"),
            simulated_table(folder / "micrographs.csv", MICROGRAPHS_COLUMNS, numbers=None,
                            items="micrographs", command="lipoframe simulate"))


def _merged(old: pd.DataFrame, new: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    """The rows of ``old`` and ``new`` (whose micrographs are not in ``old``), by micrograph in ``order``, stably."""
    # Empty frames are left out of the concatenation: pandas' dtype rule for them differs between versions.
    parts = [t for t in (old, new) if len(t)] or [new]
    table = pd.concat(parts, ignore_index=True)
    position = {name: i for i, name in enumerate(order)}
    return table.iloc[np.argsort(table["micrograph"].map(position).to_numpy(), kind="stable")].reset_index(drop=True)


def write_scenes(folder: str | Path, scenes: list[SceneSpec], *, fingerprint: dict | None = None, progress: bool = False) -> SimulationInfo:
    """Render ``scenes`` into ``folder`` (MRC + truth.csv + micrographs.csv + simulation.json).

    Micrographs an earlier write left in ``folder`` (``only=`` a few scenes
    into a suite's folder) keep their rows of ``truth.csv`` and
    ``micrographs.csv`` unless written again, in their place; rows of a
    micrograph whose file is gone are dropped. ``simulation.json`` describes
    this write (it decides whether the next one with the same options is
    reused).

    Raises
    ------
    ValueError
        If ``folder`` holds a ``truth.csv`` or ``micrographs.csv`` that
        simulate did not write (nothing is written then).
    """
    from lipoframe.io.atomic import atomic_path, write_text

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    old_truth, old_mics = _earlier_tables(folder)
    (folder / "simulation.json").unlink(missing_ok=True)  # written last: marks a complete set
    paths, truths, rows = [], [], []
    for i, spec in enumerate(scenes):
        img, truth = render_scene(spec)
        path = write_mrc(folder / f"{spec.name}.mrc", img, spec.pixel_size)
        paths.append(path)
        truths.append(truth.assign(micrograph=spec.name))
        kinds = truth["kind"].value_counts()
        rows.append({
            "micrograph": spec.name, "file": path.name, "width_px": spec.shape[1], "height_px": spec.shape[0],
            "pixel_size_A": spec.pixel_size, "n_particles": int(sum(kinds.get(k, 0) for k in ("solid", "shell", "vesicle"))),
            "n_ice": int(kinds.get("ice", 0)), "n_junk": int(kinds.get("junk", 0)), "carbon": spec.carbon,
            "description": spec.description,
        })
        if progress:
            print(f"[{i + 1}/{len(scenes)}] {path.name}: {rows[-1]['n_particles']} particles", file=sys.stderr)
    # Scenes without objects (the empty micrograph) are left out of the concatenation:
    # pandas' dtype rule for empty frames there differs between versions.
    filled = [t for t in truths if len(t)] or truths[:1]
    table = pd.concat(filled, ignore_index=True)[list(TRUTH_COLUMNS)]
    # The micrographs of earlier writes that are still there and not written again keep their rows, in their place.
    written = [s.name for s in scenes]
    earlier = list(dict.fromkeys([*old_mics["micrograph"], *old_truth["micrograph"]]))
    files = dict(zip(old_mics["micrograph"], old_mics["file"]))
    kept = [m for m in earlier if m not in written and (folder / Path(files.get(m) or f"{m}.mrc").name).is_file()]
    # (nothing kept: as written, so a folder written over in full holds the same files as a fresh one)
    order = ([m for m in earlier if m in kept or m in written] + [m for m in written if m not in earlier]) if kept else written
    table = _merged(old_truth.loc[old_truth["micrograph"].isin(kept)], table, order)
    mics = _merged(old_mics.loc[old_mics["micrograph"].isin(kept)], pd.DataFrame(rows, columns=list(MICROGRAPHS_COLUMNS)), order)
    truth_csv = folder / "truth.csv"
    with atomic_path(truth_csv) as tmp:
        table.to_csv(tmp, index=False, float_format="%.2f")
    mics_csv = folder / "micrographs.csv"
    with atomic_path(mics_csv) as tmp:
        mics.to_csv(tmp, index=False)
    meta = dict(fingerprint or {}, files=[p.name for p in paths], specs=[dataclasses.asdict(s) for s in scenes])
    write_text(folder / "simulation.json", json.dumps(meta, indent=1, default=str))
    return SimulationInfo(folder, paths, truth_csv, mics_csv, kept=kept)


def write_suite(
    folder: str | Path,
    *,
    preset: str = "suite",
    seed: int = 0,
    only: list[str] | None = None,
    noise_scale: float = 1.0,
    rim_blur_A: float = 0.0,
    overwrite: bool = False,
    progress: bool = False,
) -> SimulationInfo:
    """Write (or reuse) a simulated set.

    Parameters
    ----------
    folder : path
    preset : {'suite', 'mini'}
    seed : int
    only : list of str, optional
        Write only these scenes of the preset (by name).
    noise_scale : float
        Multiplies every scene's residual-noise amplitude (``SceneSpec.noise``);
        particles, junk and backgrounds stay the same (same seeds).
    rim_blur_A : float
        Sets every scene's ``SceneSpec.rim_blur_A``: softer rims (Å of
        Gaussian blur of the objects before the fringe), the same objects.
    overwrite : bool
        Render again even when ``folder/simulation.json`` says the same
        preset, seed, scenes and simulator version were written and all
        files exist (then nothing is rendered and ``reused`` is True).
    """
    folder = Path(folder)
    scenes = preset_scenes(preset, seed)
    if only:
        names = [s.name for s in scenes]
        unknown = [o for o in only if o not in names]
        if unknown:
            raise ValueError(f"only: unknown scene(s) {unknown}; {preset} has {', '.join(names)}")
        scenes = [s for s in scenes if s.name in only]
    if not (math.isfinite(noise_scale) and noise_scale >= 0):
        raise ValueError(f"noise_scale must be a finite number >= 0, got {noise_scale}")
    if noise_scale != 1.0:
        scenes = [dataclasses.replace(s, noise=s.noise * noise_scale) for s in scenes]
    if rim_blur_A != 0.0:  # (SceneSpec checks the value)
        scenes = [dataclasses.replace(s, rim_blur_A=rim_blur_A) for s in scenes]
    fp = _fingerprint(preset, seed, scenes, noise_scale, rim_blur_A)
    meta_path = folder / "simulation.json"
    if not overwrite and meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
            same = all(meta.get(k) == v for k, v in fp.items())
            files = [folder / f for f in meta.get("files", [])]
            if same and files and all(f.is_file() for f in files) and (folder / "truth.csv").is_file():
                return SimulationInfo(folder, files, folder / "truth.csv", folder / "micrographs.csv", reused=True)
        except (OSError, ValueError):
            pass
    return write_scenes(folder, scenes, fingerprint=fp, progress=progress)


# ---------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------
@dataclass
class SimulateArgs:
    """Options of ``lipoframe simulate``.

    output: folder to write the micrographs (MRC), truth.csv and micrographs.csv into
    preset: suite (14 micrographs, 4096² at 1 Å/px + K3 + 2 Å/px + empty) or mini (the same scenarios rendered anew at 1024², 4 Å/px)
    seed: random seed (same seed = identical files)
    dims: 2 for micrographs, 3 for tomograms (lipoframe.synthetic3d)
    n: number of tomograms when dims=3
    only: comma-separated scene names to write (default: all of the preset); the folder's other simulated micrographs keep their rows of truth.csv
    noise_scale: multiply every scene's residual noise by this (0.5 = half the noise; the same particles)
    rim_blur_A: blur every object's rim by this many Å (Gaussian) before the fringe; 0 = the suite as benchmarked
    overwrite: render again even if the folder holds the same set
    """

    output: str = "???"
    preset: str = "suite"
    seed: int = 0
    dims: int = 2
    n: int = 2
    only: str = ""
    noise_scale: float = 1.0
    rim_blur_A: float = 0.0
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {PRESETS}, got {self.preset!r}")
        if self.dims not in (2, 3):
            raise ValueError(f"dims must be 2 or 3, got {self.dims}")
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if not (math.isfinite(self.noise_scale) and self.noise_scale >= 0):
            raise ValueError(f"noise_scale must be a finite number >= 0, got {self.noise_scale}")
        if not 0 <= self.rim_blur_A <= 100:
            raise ValueError(f"rim_blur_A must be in [0, 100], got {self.rim_blur_A}")


def main(argv: list[str]) -> int:
    """``lipoframe simulate output=DIR [preset=suite] [seed=0] [dims=2]``."""
    from lipoframe.evaluate import ArgsError, dataclass_help, parse_dotlist

    if any(a in ("-h", "--help") for a in argv):
        print(dataclass_help("simulate", "Write synthetic denoised micrographs (MRC) and their ground truth (truth.csv).", SimulateArgs, (
            "lipoframe simulate output=sim/",
            "lipoframe simulate output=sim_small/ preset=mini seed=3",
            "lipoframe simulate output=sim/ only=s02_crowded_ldl,empty",
            "lipoframe simulate output=sim_clean/ noise_scale=0.5",
            "lipoframe simulate output=sim_soft/ rim_blur_A=4",
        )))
        return 0
    try:
        args = parse_dotlist(SimulateArgs, argv)
    except ArgsError as exc:
        msg = str(exc)
        if "missing mandatory value" in msg.lower():
            msg = "output is required (e.g. lipoframe simulate output=sim/)"
        print(f"lipoframe simulate: {msg}", file=sys.stderr)
        return 2
    out = Path(args.output).expanduser()  # as the shell would: `output=~/sim` in sh, or quoted, made ./~/sim
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"lipoframe simulate: {out}: cannot create the output folder ({exc.strerror or exc})", file=sys.stderr)
        return 1
    if args.dims == 3:
        defaults = SimulateArgs(output=args.output)
        ignored = [f.name for f in dataclasses.fields(SimulateArgs)
                   if f.name not in ("output", "dims", "n", "seed") and getattr(args, f.name) != getattr(defaults, f.name)]
        if ignored:
            print(f"lipoframe simulate: dims=3 takes output, n and seed only; {', '.join(ignored)} "
                  f"{'is' if len(ignored) == 1 else 'are'} for micrographs (dims=2)", file=sys.stderr)
            return 2
        try:
            from lipoframe.synthetic3d import write_tomogram_dataset
        except ImportError as exc:
            print(f"lipoframe simulate: dims=3 needs lipoframe.synthetic3d.write_tomogram_dataset, which is not available ({exc})", file=sys.stderr)
            return 2
        try:
            paths = write_tomogram_dataset(out, n=args.n, seed=args.seed)
        except ValueError as exc:  # a truth.csv it did not write (a 2D set's): kept, and said so
            print(f"lipoframe simulate: {exc}", file=sys.stderr)
            return 2
        print(f"wrote {len(paths)} tomograms to {out}")
        if (out / "truth.csv").is_file():
            try:  # tomograms of earlier writes that were not written again keep their rows
                earlier = len(set(pd.read_csv(out / "truth.csv", dtype=str)["micrograph"]) - {p.stem for p in paths})
            except (OSError, ValueError, KeyError, pd.errors.ParserError):
                earlier = 0
            print(f"truth:   {out / 'truth.csv'}" + (f" (also holds the {earlier} other tomogram(s) written there before)" if earlier else ""))
        truth = out / "truth.csv"
        print(f"next:    lipoframe run +experiment=tomo {shlex.quote(f'input={out}')} output=<run> dmin=150 dmax=500  &&  lipoframe evaluate picks=<run> "
              f"{shlex.quote(f'reference={truth}')}")
        return 0
    only = [o.strip() for o in args.only.split(",") if o.strip()]
    try:
        info = write_suite(out, preset=args.preset, seed=args.seed, only=only, noise_scale=args.noise_scale,
                           rim_blur_A=args.rim_blur_A, overwrite=args.overwrite, progress=sys.stderr.isatty())
    except ValueError as exc:
        print(f"lipoframe simulate: {exc}", file=sys.stderr)
        return 2
    truth = info.truth()
    ours = {p.name for p in info.paths}
    counts = truth.loc[truth["micrograph"].isin({p.stem for p in info.paths}), "kind"].value_counts()
    verb = "reused" if info.reused else "wrote"
    print(f"{verb} {len(info.paths)} micrographs in {out}")
    print("objects: " + ", ".join(f"{k} {int(counts[k])}" for k in sorted(counts.index)))
    try:  # every micrograph of the folder's truth.csv: these and those of earlier writes, kept
        listed = set(pd.read_csv(info.micrographs_csv, dtype=str, keep_default_na=False)["file"]) | ours
    except (OSError, ValueError, KeyError, pd.errors.ParserError):
        listed = ours
    earlier = len(listed - ours)
    print(f"truth:   {info.truth_csv}" + (f" (also holds the {earlier} other micrograph(s) written there before)" if earlier else ""))
    others = sorted(p.name for p in out.glob("*.mrc") if p.name not in listed)
    if others:
        # A run over the folder would pick them, and evaluate would count those picks as false positives.
        print(f"lipoframe simulate: note: {len(others)} other .mrc file(s) in {out} are not in its truth.csv "
              f"({', '.join(others[:3])}{', ...' if len(others) > 3 else ''}); simulate into an empty folder "
              "or give the run the files of truth.csv", file=sys.stderr)
    print(f"next:    lipoframe run {shlex.quote(f'input={out}')} output=<run>  &&  lipoframe evaluate picks=<run> "
          f"{shlex.quote(f'reference={info.truth_csv}')}")
    return 0
