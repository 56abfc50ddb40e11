"""``lipoframe plan``: recompute the size bins and extraction plan of a finished run.

The plan is dataset-level: it needs only the saved per-micrograph picks
(``<run>/micrographs/<name>.csv|json``), not the micrographs. This command
reads them, composes the run's own settings (``.hydra/config.yaml`` or
``config.yaml``) with the overrides given, and runs the binning stage, the
writers and the plan files again, so another policy can be tried in seconds::

    lipoframe plan runs/day1 binning=kmeans
    lipoframe plan runs/day1 binning=quantile binning.n_bins=4 binning.pad=1.6
    lipoframe plan runs/day1 binning.extract_pixel_size=4.0

Only dataset-level options can change (``binning``, ``writer``,
``export_rejected``, ``flip_y``, and ``pixel_size`` of a run picked in
pixels); picking options need ``lipoframe run``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shlex
import sys
import time
from pathlib import Path
from collections.abc import Collection
from typing import Any

from lipoframe.config import override_key

log = logging.getLogger("lipoframe")

USAGE_EPILOG = """examples:
  lipoframe plan runs/day1                                  recompute with the run's own settings
  lipoframe plan runs/day1 binning=kmeans                   SIMPLE-style k-means + Z-score outlier rejection
  lipoframe plan runs/day1 binning=quantile binning.n_bins=4
  lipoframe plan runs/day1 binning.pad=1.6 binning.rounding=fft binning.extract_pixel_size=4
  lipoframe plan runs/day1 pixel_size=1.06                  Å values of a run picked in pixels (units=px)
  lipoframe plan runs/day1 flip_y=false                     exports in the rows of unflipped micrographs (TIFF inputs)

policies: single, peak_valley, quantile, kmeans, hac (see `lipoframe stages binning`)
"""

#: Top-level options of the saved config that matter at the dataset level.
_TOP_LEVEL = ("pixel_size", "dmin", "dmax", "units", "polarity", "seed", "export_rejected", "flip_y")
#: The settings of the last ``lipoframe plan`` (removed by a later ``lipoframe run`` into the folder, which writes its own plan).
PLAN_CONFIG = "plan_config.yaml"
#: Override keys ``lipoframe plan`` accepts (prefixes).
_ALLOWED = ("binning", "writer", "export_rejected", "runner.")
#: ... and this top-level key (see :func:`check_pixel_size`).
PIXEL_SIZE = "pixel_size"
#: ... and this one: the row flip of the exports, which the picks do not depend on.
FLIP_Y = "flip_y"
#: The options above as the help and the refusal of a picking option name them.
DATASET_OPTIONS = ("binning=<name> binning.<param>=<value> writer=[...] export_rejected=<true|false> "
                   "flip_y=<null|true|false> (pixel_size=<Å/px> for a run picked in pixels)")
#: Stage groups of the saved config whose options may be lengths in Å (``units: A``).
_PICKING_GROUPS = ("reader", "detector", "nms", "refiner", "filter")


class PlanError(Exception):
    """The run folder cannot be re-planned; the message says why."""


# ---------------------------------------------------------------------------
# The run's settings
# ---------------------------------------------------------------------------
def _hydra_value(v: Any) -> str:
    """A value in Hydra's override grammar."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v) if isinstance(v, float) else str(v)
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_hydra_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ",".join(f"{k}:{_hydra_value(x)}" for k, x in v.items()) + "}"
    s = str(v).replace("\\", "\\\\").replace("'", "\\'")
    return f"'{s}'"


def load_saved_config(run_dir: Path) -> tuple[dict, dict]:
    """The run's composed config (plain dict) and its stage choices (may be empty).

    The choices are Hydra's (``.hydra/hydra.yaml``) or, for a folder Hydra
    keeps no record in (``hydra.output_subdir=null``, a merge), the stage
    names the run recorded in ``inputs.json``
    (:func:`lipoframe.runner.recorded_stages`).

    Raises
    ------
    PlanError
        If neither ``.hydra/config.yaml`` nor ``config.yaml`` exists.
    """
    from omegaconf import OmegaConf

    for path in (run_dir / ".hydra" / "config.yaml", run_dir / "config.yaml"):
        if path.is_file():
            try:
                saved = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
            except Exception as exc:  # noqa: BLE001 - YAML/OmegaConf errors become one message
                raise PlanError(f"{path}: unreadable ({exc})") from None
            break
    else:
        from lipoframe.merge import MERGE_UNFINISHED, merge_unfinished
        from lipoframe.sweepdir import sweep_folder_hint

        if merge_unfinished(run_dir):
            raise PlanError(f"{run_dir}: {MERGE_UNFINISHED}")
        raise PlanError(f"{run_dir}: no .hydra/config.yaml or config.yaml (is this a lipoframe run folder?)"
                        + sweep_folder_hint(run_dir))
    choices: dict = {}
    hydra_yaml = run_dir / ".hydra" / "hydra.yaml"
    if hydra_yaml.is_file():
        try:
            h = OmegaConf.to_container(OmegaConf.load(hydra_yaml), resolve=False)
            choices = dict(h.get("hydra", {}).get("runtime", {}).get("choices", {}) or {})
        except Exception:  # noqa: BLE001 - choices are only a hint
            choices = {}
    if not choices:
        from lipoframe.runner import recorded_stages

        choices = recorded_stages(run_dir)
    return saved if isinstance(saved, dict) else {}, choices


def with_run_binning(run_dir: Path, saved: dict, choices: dict, registry, user: list[str]) -> dict:
    """``choices`` with the binning policy of a run that recorded none, found by its options.

    A folder made before runs recorded their stages in ``inputs.json``,
    without ``.hydra/hydra.yaml``, has only the options of its binning
    policy, as has one whose last run (merge) stopped before recording its
    stages (the warning or error says which, by
    :func:`lipoframe.runner.stages_not_recorded`). The one installed policy with exactly those options is taken,
    with a warning that says so; failing that, the one that has them all and
    more (options added to it since the folder was made, which take their
    defaults). When several have them (``single`` and a plugin's policy with
    the same box options) or none has, the plan would use another policy
    than the run's, so the user must choose one, unless ``user`` does.

    Raises
    ------
    PlanError
        When the policy cannot be told and ``user`` selects none.
    """
    import dataclasses

    node = saved.get("binning")
    if choices.get("binning") or not isinstance(node, dict):
        return choices
    keys = set(node)
    fields = {i.name: {f.name for f in dataclasses.fields(i.params)} for i in registry.stages("binning")}
    matches = [name for name, have in fields.items() if have == keys]
    added = ""
    if not matches:  # a folder made before its policy gained options: those it lacks take their defaults
        matches = [name for name, have in fields.items() if have > keys]
        if len(matches) == 1:
            added = f" and options added since ({', '.join(sorted(fields[matches[0]] - keys))}), which take their defaults"
    from lipoframe.runner import stages_not_recorded

    chosen = "binning" in {override_key(o) for o in user}
    options = ", ".join(sorted(keys)) or "none"
    why = f"no .hydra/hydra.yaml, {stages_not_recorded(run_dir)}"
    if len(matches) == 1:
        if not chosen:
            log.warning("%s records no binning policy (%s): taken to be %s, the only installed policy with its options (%s)%s; "
                        "give binning=<name> if the run used another", run_dir, why, matches[0], options, added)
        return {**choices, "binning": matches[0]}
    if not chosen:
        fits = (f"its options ({options}) fit the policies {', '.join(matches)}" if matches
                else f"no installed policy has its options ({options})")
        raise PlanError(f"{run_dir} records no binning policy ({why}) and {fits}: choose one with binning=<name>")
    return choices


def _binning_name(choices: dict, registry) -> str | None:
    """Which installed binning stage the saved config used (its record, or :func:`with_run_binning`'s finding)."""
    name = choices.get("binning")
    return name if isinstance(name, str) and ("binning", name) in registry else None


def saved_overrides(saved: dict, choices: dict, registry) -> list[str]:
    """Overrides that reproduce the dataset-level part of a saved config."""
    out: list[str] = []
    for k in _TOP_LEVEL:
        if k in saved:
            out.append(f"{k}={_hydra_value(saved[k])}")
    name = _binning_name(choices, registry)
    if name is not None:
        out.append(f"binning={name}")
        for k, v in (saved.get("binning") or {}).items():
            out.append(f"binning.{k}={_hydra_value(v)}")
    filters = saved.get("filter")
    if isinstance(filters, dict):
        # The run's filters with its values: their dataset-level step
        # (apply_dataset) runs again before binning.
        out.append(f"filter=[{','.join(filters)}]")
        for f in filters:
            for k, v in (filters[f] or {}).items():
                out.append(f"filter.{f}.{k}={_hydra_value(v)}")
    writers = saved.get("writer") or {}
    if isinstance(writers, dict):
        known = [w for w in writers if ("writer", w) in registry]
        out.append(f"writer=[{','.join(known)}]")
        for w in known:
            for k, v in (writers[w] or {}).items():
                out.append(f"writer.{w}.{k}={_hydra_value(v)}")
    return out


def check_installed(run_dir: Path, saved: dict, choices: dict, registry, user: list[str]) -> None:
    """Refuse to re-plan when a stage the run used is no longer installed.

    Left out, a writer's files would be deleted as files no writer wrote
    again, a filter's dataset-level rejections would be undone, and another
    binning would be used. A writer or binning chosen by ``user`` replaces
    the run's own.

    Raises
    ------
    PlanError
        Naming the stages and how to go on.
    """
    chosen = {override_key(o) for o in user}
    missing = []
    if "binning" not in chosen:
        name = choices.get("binning")
        if isinstance(name, str) and ("binning", name) not in registry:
            missing.append(f"binning={name}")
    filters = saved.get("filter")
    if isinstance(filters, dict):
        missing += [f"filter {f}" for f in filters if ("filter", f) not in registry]
    writers = saved.get("writer")
    if "writer" not in chosen and isinstance(writers, dict):
        missing += [f"writer {w}" for w in writers if ("writer", w) not in registry]
    if missing:
        raise PlanError(
            f"{run_dir} was made with {', '.join(missing)}, which no installed plugin provides now (uninstalled?): "
            "install it again to re-plan this run"
            + ("; or choose other writers with writer=[...] (the files of a writer left out are removed)" if any(m.startswith("writer") for m in missing) else "")
            + ("; or choose another binning=..." if any(m.startswith("binning") for m in missing) else "")
        )


def combine_overrides(saved: list[str], user: list[str], *, shared_binning: Collection[str] = ()) -> list[str]:
    """``saved`` without the entries that ``user`` replaces, then ``user``.

    Selecting another binning policy drops the saved ``binning.*`` values
    (they belong to the old policy), but those of ``shared_binning``;
    selecting writers drops the saved values of writers no longer selected.

    Parameters
    ----------
    saved, user : list of str
        Overrides that reproduce the run's settings, and the ones given.
    shared_binning : collection of str
        Binning parameters that keep their saved values when the policy
        changes: the box settings every policy has (``pad``, ``rounding``,
        ``extract_pixel_size``, :func:`shared_binning_params`).
    """
    user_keys = {override_key(o) for o in user}
    drop_binning_params = False
    new_writers: set[str] | None = None
    for o in user:
        k, _, v = o.partition("=")
        k = k.lstrip("+~")
        if k == "binning":
            old = next((s.split("=", 1)[1] for s in saved if override_key(s) == "binning"), None)
            drop_binning_params = v != old
        if k == "writer":
            new_writers = {w.strip() for w in v.strip("[]").split(",") if w.strip()}
    kept = []
    for s in saved:
        k = override_key(s)
        if k in user_keys:
            continue
        if drop_binning_params and k.startswith("binning.") and k.split(".", 1)[1] not in shared_binning:
            continue
        if new_writers is not None and k.startswith("writer.") and k.split(".")[1] not in new_writers:
            continue
        kept.append(s)
    return kept + list(user)


def shared_binning_params(saved: list[str], user: list[str], registry) -> tuple[str, ...]:
    """The box settings that carry over when ``user`` selects another binning policy than ``saved``.

    Every built-in policy shares ``pad``, ``rounding`` and
    ``extract_pixel_size`` (:class:`~lipoframe.builtin.binning.BoxParams`,
    docs/binning.md): the boxes a run was planned with stay when another
    policy is tried. Empty unless both policies are installed and have
    those settings (a plugin's policy whose ``Params`` is no ``BoxParams``
    may give the same names another meaning).

    Parameters
    ----------
    saved, user : list of str
        The overrides that reproduce the run's settings, and the ones given.
    registry : StageRegistry
    """
    import dataclasses

    from lipoframe.builtin.binning import BoxParams

    def params(overrides):
        name = next((o.partition("=")[2] for o in reversed(overrides) if override_key(o) == "binning"), None)
        return registry.get("binning", name).params if name is not None and ("binning", name) in registry else None

    old, new = params(saved), params(user)
    if not (old and new and issubclass(old, BoxParams) and issubclass(new, BoxParams)):
        return ()
    return tuple(f.name for f in dataclasses.fields(BoxParams))


def check_user_overrides(user: list[str]) -> None:
    """Refuse options that would need re-picking.

    Raises
    ------
    PlanError
    ConfigError
        For a key that is no option of lipoframe at all (a typo such as
        ``binnin=kmeans``), naming it and the option it most likely meant.
    """
    import dataclasses

    from lipoframe.app import suggested_keys
    from lipoframe.config import ConfigError, LipoframeConfig

    known = [f.name for f in dataclasses.fields(LipoframeConfig)]
    for o in user:
        top = override_key(o).split(".", 1)[0]
        if "=" in o and top not in known:
            rest = override_key(o)[len(top):]  # binnin.n_bins: did you mean binning.n_bins?
            close = suggested_keys(top)
            hint = f"; did you mean {' or '.join(k + rest for k in close)}?" if close else ""
            raise ConfigError(f"{override_key(o)}: not an option of lipoframe{hint}")
    bad = [o for o in user if "=" not in o or not (override_key(o).startswith(_ALLOWED) or override_key(o) in (PIXEL_SIZE, FLIP_Y))]
    if bad:
        raise PlanError(
            f"cannot change {', '.join(bad)} here: lipoframe plan only recomputes dataset-level options: "
            f"{DATASET_OPTIONS}; picking options need `lipoframe run`"
        )


def lengths_in_angstrom(saved: dict) -> list[str]:
    """The settings of a saved config that were converted from Å to pixels with the pixel size when picking."""
    found = []
    if saved.get("units", "A") != "px":
        found.append(f"dmin={saved.get('dmin')}, dmax={saved.get('dmax')} (units=A)")
    for group in _PICKING_GROUPS:
        node = saved.get(group)
        if not isinstance(node, dict):
            continue
        # a stage group holds the stage's options; filter (a list of stages) one node per filter
        nodes = node.items() if group == "filter" else [(None, node)]
        for name, opts in nodes:
            if isinstance(opts, dict) and opts.get("units") == "A":
                found.append(f"{group}.{name + '.' if name else ''}units=A")
    return found


def check_pixel_size(saved: dict, user: list[str]) -> float | None:
    """The ``pixel_size=<Å/px>`` of ``user`` (None if not given), when the run's picks do not depend on it.

    A run picked in pixels (``units=px``, no stage option in Å; e.g. one
    whose micrographs have no pixel size in their headers) has picks that no
    pixel size changed: the plan can give them one, for its Å values,
    masks, ``binning.extract_pixel_size`` boxes, ``diameter_A`` and the
    exports' pixel size. A run that converted lengths in Å to pixels with
    the pixel size it picked at cannot: its picks would be those of one
    pixel size and its plan in another's Å.

    Raises
    ------
    PlanError
        For a value that is no pixel size, or a run whose picks depend on
        the pixel size (naming the settings and the command that picks again).
    """
    given = [o for o in user if override_key(o) == PIXEL_SIZE]
    if not given:
        return None
    raw = given[-1].split("=", 1)[1].strip()
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise PlanError(f"pixel_size={raw}: give the micrographs' pixel size in Å/px (a number > 0)")
    old = saved.get(PIXEL_SIZE)
    if isinstance(old, (int, float)) and math.isclose(float(old), value, rel_tol=1e-9):
        return value  # the pixel size the run picked at
    in_angstrom = lengths_in_angstrom(saved)
    if in_angstrom:
        picked_at = "the headers' pixel size" if old is None else f"pixel_size={old:g}"
        raise PlanError(
            f"cannot change pixel_size here: the run picked with lengths in Å, {', '.join(in_angstrom)}, converted to "
            f"pixels at {picked_at}, so its picks depend on it; "
            f"pick again with `lipoframe run ... pixel_size={value:g}` ({PIXEL_SIZE_PLAN_RULE})"
        )
    return value


#: When ``lipoframe plan RUN pixel_size=`` takes a new pixel size, as both of its refusals say.
PIXEL_SIZE_PLAN_RULE = ("a plan takes a new pixel_size only for a run whose picks cannot depend on it: units=px, "
                        "no stage option in Å and lipoframe's own reader and picking stages")


def _picking_plugin(choices: dict, registry) -> str:
    """Why the run's chosen reader, detector, NMS or refiner may have used the pixel size (a plugin's); ``""`` if none is.

    The plan's own config holds the run's filters but not these stages (they
    are no dataset-level option), so they are found by the names it recorded.
    """
    from lipoframe.runner import plugin_stage_why

    for kind in ("reader", "detector", "nms", "refiner"):
        name = choices.get(kind)
        if not isinstance(name, str):
            continue
        if (kind, name) not in registry:
            return f"the {kind} {name!r} is no stage of lipoframe's (nor of a plugin installed now), which may use it"
        if why := plugin_stage_why(kind, name, registry.get(kind, name).cls):
            return why
    return ""


def check_picks_ignore_pixel_size(run_dir: Path, names: list[str], cfg, stages, pixel_size: float, *,
                                  choices: dict, registry) -> None:
    """Refuse a new ``pixel_size`` for a run whose picking stages may use it, as :func:`check_pixel_size` refuses lengths in Å.

    A plugin's reader or picking stage is given the pixel size and may use
    it (:func:`~lipoframe.runner.pixel_size_dependence`; the run's stages by
    the names in ``choices``): a run resumed at ``pixel_size`` would pick
    such micrographs again, so a plan of the saved picks at it is not what a
    run at it gives. Micrographs saved at ``pixel_size`` already are not
    changed by it.

    Raises
    ------
    PlanError
        Naming the stage and the command that picks again.
    """
    from lipoframe.runner import pixel_size_dependence, read_infos

    chosen = _picking_plugin(choices, registry)
    for name, info in read_infos(run_dir, names).items():
        meta = info.get("meta") if isinstance(info, dict) else None
        meta = meta if isinstance(meta, dict) else {}
        if meta.get("pixel_size") == pixel_size:
            continue
        why = chosen or pixel_size_dependence(cfg, stages, str(meta.get("path") or name))
        if why:
            raise PlanError(
                f"cannot change pixel_size here: {why} (the pixel size), so the run's picks may depend on it and a run at "
                f"pixel_size={pixel_size:g} would pick them again; pick again with `lipoframe run ... pixel_size={pixel_size:g}` "
                f"({PIXEL_SIZE_PLAN_RULE})"
            )


def compose(overrides: list[str]):
    """Compose and validate lipoframe's config from ``overrides``.

    Returns
    -------
    (DictConfig, LipoframeConfig)

    Raises
    ------
    ConfigError
        One line naming the bad key.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from lipoframe.app import format_config_error, prepare_hydra
    from lipoframe.config import ConfigError, config_dir, to_run_config

    prepare_hydra()
    try:
        with initialize_config_dir(version_base="1.3", config_dir=str(config_dir()), job_name="lipoframe_plan"):
            cfg = hydra_compose("config", overrides=overrides)
        return cfg, to_run_config(cfg)
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - Hydra raises many types; all become one line
        raise ConfigError(format_config_error(exc)) from exc


# ---------------------------------------------------------------------------
# The run's micrographs
# ---------------------------------------------------------------------------
def run_micrographs(run_dir: Path, summary: Any) -> tuple[list[str], list, set[str]]:
    """Names of the run's micrographs in run order, a MicResult for each, and the names of those not finished.

    Order and failures come from ``inputs.json`` and ``summary`` (the run's
    ``run_summary.json`` as read; None without one) when present (saved results of micrographs ``inputs.json`` does not list,
    left by an earlier run with other inputs, are not the run's:
    :func:`~lipoframe.runner.run_manifest`); otherwise the saved
    results are taken in input-path order. A micrograph without a saved
    result has the error the run recorded, among its ``failures`` or a watch
    session's ``not_finished`` (:func:`~lipoframe.runner.recorded_failures`);
    the names of the latter are the third item.

    Raises
    ------
    PlanError
        If the run saved no per-micrograph results.
    """
    from lipoframe.runner import WORK_DIR, MicResult, recorded_failures, run_manifest, saved_counts

    work = run_dir / WORK_DIR
    saved = sorted(p.stem for p in work.glob("*.json")) if work.is_dir() else []
    if not saved:
        raise PlanError(f"{run_dir}: no saved picks in {WORK_DIR}/ (is this a lipoframe run folder, and did the run finish a micrograph?)")
    listed, fingerprint = run_manifest(run_dir)
    order: list[tuple[str, str]] = listed or []
    # Failed, or not finished in a watch session's update (a file still being written?): the error the run recorded.
    failures, unfinished = recorded_failures(summary)
    results: list = []
    # (meta, rows, accepted rows) of each complete saved result, all read in one go
    # (made with the settings inputs.json records: a run stopped early leaves an earlier run's other picks)
    loaded: dict[str, Any] = saved_counts(run_dir, dict.fromkeys(saved), fingerprint)
    if listed is None:  # no inputs.json: every saved result, in input-path order
        order = sorted(((n, d[0].path) for n, d in loaded.items()), key=lambda t: (t[1], t[0]))
    for name, path in order:
        if name in loaded:
            _, n_picks, n_acc = loaded[name]
            results.append(MicResult(name, path, "skipped", n_picks, n_acc))
        else:
            err = failures.get(path) or unfinished.get(path) or f"{path}: no complete saved result in {WORK_DIR}/"
            results.append(MicResult(name, path, "failed", error=err))
    # A watch session's files not finished at its last update stay apart from its failures, as the report shows them.
    not_finished = {r.name for r in results if r.status == "failed" and r.path in unfinished}
    return [n for n, _ in order], results, not_finished


def _remove_stale_bin_files(run_dir: Path, keep) -> list[Path]:
    """Delete files under ``<run>/bins/`` that this plan's writers did not write.

    Only for a run folder without ``written_files.json`` (made before
    lipoframe recorded its files): with the record, the dataset step
    (:func:`~lipoframe.runner.remove_stale_outputs`) deletes exactly the
    files the previous plan wrote, and files of the user's own under
    ``bins/`` stay.
    """
    from lipoframe.planfiles import BINS_DIR

    root = run_dir / BINS_DIR
    if not root.is_dir():
        return []
    keep = {Path(p).resolve() for p in keep}
    removed = []
    for p in sorted(root.rglob("*"), reverse=True):
        if p.is_file() and p.resolve() not in keep:
            p.unlink()
            removed.append(p)
        elif p.is_dir() and not any(p.iterdir()):
            p.rmdir()
    if root.is_dir() and not any(root.iterdir()):
        root.rmdir()
    return removed


# ---------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------
def replan(run_dir: str | Path, overrides: list[str] = (), *, report: bool = False):
    """Recompute the plan of ``run_dir`` with ``overrides``; returns the :class:`~lipoframe.runner.RunResult`.

    Raises
    ------
    PlanError, ConfigError, InputError
    KeyboardInterrupt
        After Ctrl-C or SIGTERM in the binning or a writer, once
        ``run_summary.json`` records that the plan is incomplete; or while
        drawing the report (``report``), once it records that the report
        is not written (:func:`~lipoframe.runner.record_report_interrupted`).
    """
    from omegaconf import OmegaConf

    from lipoframe import plugins
    from lipoframe.io.atomic import write_text
    from lipoframe.runner import (MANIFEST, REPORT_INTERRUPTED, WRITTEN, build_stages, finish_run, folder_log, output_folder,
                                  record_report_interrupted, record_written, sigterm_as_interrupt)

    t0 = time.perf_counter()
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise PlanError(f"{run_dir}: no such folder")
    user = [str(o) for o in overrides]
    check_user_overrides(user)
    pm, registry, _ = plugins.load()
    saved, choices = load_saved_config(run_dir)
    check_installed(run_dir, saved, choices, registry, user)
    choices = with_run_binning(run_dir, saved, choices, registry, user)
    pixel_size = check_pixel_size(saved, user)
    run_settings = saved_overrides(saved, choices, registry)
    composed, cfg = compose(combine_overrides(run_settings, user, shared_binning=shared_binning_params(run_settings, user, registry)))
    try:
        picking = json.loads((run_dir / "run_summary.json").read_text())
    except (OSError, ValueError):
        picking = None
    names, results, not_finished = run_micrographs(run_dir, picking)
    stages = build_stages(cfg, registry)
    if pixel_size is not None:
        check_picks_ignore_pixel_size(run_dir, names, cfg, stages, pixel_size, choices=choices, registry=registry)
    if picking is None and (run_dir / MANIFEST).is_file():
        # A run writes run_summary.json at its end, also when interrupted: without one it was killed
        # (SIGKILL, out of memory, a hard time limit), so its micrographs without results were not picked, not failed.
        done = sum(r.status != "failed" for r in results)
        picking = {"interrupted": True, "failures": [],
                   "micrographs": {"total": len(results), "ok": 0, "skipped": done, "failed": 0, "not_done": len(results) - done}}
    # A folder that records its files (written_files.json) has the previous plan's removed by the dataset step.
    recorded = (run_dir / WRITTEN).is_file()
    again = "lipoframe plan " + shlex.join([str(run_dir), *user, *(["--report"] if report else [])])
    # SIGTERM (`kill`, the end of a batch job) stops it as Ctrl-C does: run_summary.json says the plan is incomplete.
    with output_folder(run_dir, "plan"), folder_log(run_dir, "plan " + " ".join([str(run_dir), *overrides])), sigterm_as_interrupt():
        result = finish_run(run_dir, names, results, stages, cfg, pm=pm, t0=t0, errors=[], notes=[], workers=1,
                            picking=picking if isinstance(picking, dict) else None, pixel_size=pixel_size, replan=again,
                            not_finished=not_finished)
        removed = _remove_stale_bin_files(run_dir, result.files) if result.plan is not None and not recorded else []
        if removed:
            log.info("removed %d coordinate file(s) of the previous plan under bins/", len(removed))
        record = {"binning": OmegaConf.to_container(composed.binning), "writer": OmegaConf.to_container(composed.writer),
                  "export_rejected": bool(composed.export_rejected), "overrides": user}
        if pixel_size is not None:
            record["pixel_size"] = pixel_size
        if any(override_key(o) == FLIP_Y for o in user):
            record["flip_y"] = composed.flip_y
        write_text(run_dir / PLAN_CONFIG, OmegaConf.to_yaml(OmegaConf.create(record)))
        # One of this plan's outputs: the next dataset step (`lipoframe run` again, with the run's own settings) removes it.
        record_written(run_dir, run_dir / PLAN_CONFIG)
        if report:
            from lipoframe.report import write_report_safely

            try:
                written = write_report_safely(run_dir, cfg=cfg, stages=stages, result=result)
            except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM while drawing it: the plan is complete, as a run's stopped so
                record_report_interrupted(run_dir, how_far=str(getattr(exc, "progress", "")))
                raise
            if written is not None:
                # The report a run stopped while drawing is written: its note no longer applies (nor in run_summary.json).
                result.notes = [n for n in result.notes if not str(n).startswith(REPORT_INTERRUPTED)]
    return result


def _mtime_ns(path: Path) -> int | None:
    """Modification time of ``path`` in ns, or None when it does not exist."""
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


def _report_is_stale(report: Path, plan) -> bool:
    """Whether ``report`` shows another plan than ``plan`` (or cannot tell: a report from before it recorded its plan)."""
    from lipoframe.report import plan_digest, shown_plan_digest

    return shown_plan_digest(report) != plan_digest(plan)


def main(argv: list[str]) -> int:
    """``lipoframe plan RUN_DIR [overrides]``."""
    from lipoframe.logs import command_logging

    with command_logging():
        return _main(argv)


def _main(argv: list[str]) -> int:
    from lipoframe.config import ConfigError
    from lipoframe.records import InputError

    ap = argparse.ArgumentParser(
        prog="lipoframe plan",
        description="Recompute size bins, box sizes and the extraction plan of a run from its saved picks "
        "(no re-picking), and rewrite the writers' files and the plan files.",
        epilog=USAGE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("run_dir", help="folder of a finished `lipoframe run` (or `lipoframe merge`)")
    ap.add_argument("overrides", nargs="*", help=f"dataset-level options: {DATASET_OPTIONS}")
    ap.add_argument("--report", action="store_true", help="also rewrite report.html and the overlays (reads the micrographs)")
    ap.add_argument("--json", action="store_true", help="print the plan as JSON")
    args = ap.parse_intermixed_args(argv)  # options before or after the overrides
    report_path = Path(args.run_dir) / "report.html"
    before = _mtime_ns(report_path)
    from lipoframe.logs import logged_errors

    try:
        with logged_errors() as shown:  # errors on the console as they happened are not printed again
            result = replan(args.run_dir, args.overrides, report=args.report)
    except ConfigError as exc:
        print(f"lipoframe plan: config error: {exc}", file=sys.stderr)
        return 2
    except PlanError as exc:
        print(f"lipoframe plan: {exc}", file=sys.stderr)
        return 2
    except InputError as exc:
        print(f"lipoframe plan: {exc}", file=sys.stderr)
        return 1
    plan = result.plan
    if plan is None:
        for e in result.errors:
            if e not in shown:
                print(f"lipoframe plan: {e}", file=sys.stderr)
        return 1
    missing = sum(r.status == "failed" for r in result.results)
    if missing:
        try:
            interrupted = bool(json.loads((Path(args.run_dir) / "run_summary.json").read_text()).get("interrupted"))
        except (OSError, ValueError, AttributeError):
            interrupted = False
        from lipoframe.merge import is_merged_folder

        # A merge stopped while copying the shards' results: the merge again copies the rest.
        what = "merge" if is_merged_folder(args.run_dir) else "run"
        n_unfinished = len(result.unfinished)  # a watch session's, not finished at its last update: not failed yet
        why = " (they failed in the run)"
        if n_unfinished:
            failed = [f"{missing - n_unfinished} failed in the run"] if missing > n_unfinished else []
            why = f" ({', '.join([*failed, f'{n_unfinished} not finished yet in the watch session'])})"
        print(f"lipoframe plan: {missing} of {len(result.results)} micrograph(s) have no saved picks and are not in the plan"
              + (f"; the {what} was interrupted: run the same `lipoframe {what}` command again to finish it" if interrupted
                 else why), file=sys.stderr)
    if args.json:
        print(plan.to_json())
        return 0 if result.ok or not result.errors else 1
    n_out = plan.details.get("n_outliers")
    print(f"policy {plan.policy}: {plan.n_accepted} picks in {plan.n_bins} bin{'s' if plan.n_bins != 1 else ''}"
          + (f" ({n_out} size outliers flagged)" if n_out else "")
          + (f", pixel size {plan.pixel_size:g} Å/px" if plan.pixel_size else ", pixel size unknown"))
    print(plan.format_table())
    for note in plan.notes:
        print(f"note: {note}")
    for note in result.notes:  # the run's notes that still apply (runner.replanned_notes) and the plan's range notes
        print(f"NOTE {note}")
    for e in result.errors:
        if e not in shown:
            print(f"ERROR {e}", file=sys.stderr)
    run_dir = Path(args.run_dir)
    print(f"wrote {run_dir / 'extraction_plan.md'}, size_histogram.png, sizes.csv, extraction_plan.json"
          + (f" and {len(result.files) - 4} writer file(s)" if len(result.files) > 4 else ""))
    if args.report and _mtime_ns(report_path) not in (None, before):  # a failure is logged by write_report_safely
        print(f"report       {report_path.resolve()}")  # as `lipoframe report` prints it
    if not args.report and report_path.is_file() and _report_is_stale(report_path, plan):
        print(f"report.html still shows the previous plan: `lipoframe plan {shlex.quote(args.run_dir)} ... --report` or "
              f"`lipoframe report {shlex.quote(args.run_dir)}` refreshes it")
    return 0 if not result.errors else 1
