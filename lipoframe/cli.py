"""Command-line entry point: ``lipoframe <command> ...``.

``run`` hands everything after it to Hydra; the other commands are plain
and never touch Hydra. Each command is ``module:function`` taking the list of
arguments and returning an exit code, so adding one is a single line here.
"""

from __future__ import annotations

import importlib
import os
import sys

#: name -> (target, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("lipoframe.app:run", "pick micrographs (Hydra overrides: input=... output=... detector=log nms.max_containment=0.3)"),
    "plugins": ("lipoframe.cli:cmd_plugins", "list installed plugins and the stages each provides"),
    "stages": ("lipoframe.cli:cmd_stages", "list stages with their parameters, types and defaults: stages [KIND]"),
    "plan": ("lipoframe.plancmd:main", "recompute size bins and the extraction plan from a run's picks, no re-picking: plan RUN_DIR binning=kmeans"),
    "merge": ("lipoframe.merge:main", "combine shard run folders into one result: merge RUN_DIR... output=DIR"),
    "report": ("lipoframe.report:cmd_report", "write overlays, plots and a self-contained report.html for a run folder: report RUN_DIR"),
    "simulate": ("lipoframe.simulate:main", "write synthetic denoised micrographs + truth.csv: simulate output=DIR preset=suite seed=0"),
    "evaluate": ("lipoframe.evaluate:main", "score picks against a reference: evaluate picks=RUN_DIR reference=truth.csv output=DIR"),
}

USAGE = """usage: lipoframe <command> [args]

One pick per particle, with its own diameter, for round particles of many sizes.

commands:
{commands}

`lipoframe run` with no input runs on a built-in demo set.
`lipoframe run watch=true input=FOLDER output=DIR` picks micrographs as they are written.
`lipoframe run --help` shows every configuration option.
"""


def _usage() -> str:
    width = max(len(n) for n in COMMANDS)
    return USAGE.format(commands="\n".join(f"  {n.ljust(width)}  {h}" for n, (_, h) in COMMANDS.items()))


#: True in the process whose own command line :func:`main` runs (the ``lipoframe`` script, ``python -m lipoframe``).
_PROCESS_ENTRY = False


def outputs_complete(code: int, *, exiting: bool = False) -> None:
    """Say that the command's outputs are complete (its summary is printed next): a SIGTERM or Ctrl-C
    (SIGINT) from now on ends the process with ``code``, the command's own exit code, rather than as
    killed (-15) or interrupted (130).

    A batch system that sends SIGTERM as the job ends (a time limit, ``scancel``) just after the
    summary would otherwise record a failure for a run that finished, and a Ctrl-C pressed as the
    summary appears would say ``interrupted`` of a run that was not. Only in the process whose
    command line :func:`main` runs, from the main thread: an in-process caller keeps its own handlers.
    A signal ignored (a run started with ``&`` from a script ignores Ctrl-C) stays ignored.
    ``exiting``: :func:`main` returns the code, and only the interpreter's exit is left, as it takes
    down a Python handler first: both signals are ignored instead.
    """
    import signal
    import threading

    if not _PROCESS_ENTRY or threading.current_thread() is not threading.main_thread():
        return

    def finished(signum, frame):
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001 - a closed pipe: nothing more to say
                pass
        os._exit(code)

    for sig in (signal.SIGTERM, signal.SIGINT):
        if sig == signal.SIGINT and signal.getsignal(sig) in (signal.SIG_IGN, None):
            continue
        signal.signal(sig, signal.SIG_IGN if exiting else finished)


def main(argv: list[str] | None = None) -> int:
    global _PROCESS_ENTRY
    if argv is None:
        _PROCESS_ENTRY = True
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from lipoframe import __version__

        print(f"lipoframe {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        hint = ": to pick micrographs as they are written, use `lipoframe run watch=true input=FOLDER output=DIR`" if name == "watch" else ""
        print(f"lipoframe: unknown command {name!r}{hint}\n", file=sys.stderr)
        print(_usage(), file=sys.stderr)
        return 2
    module, func = COMMANDS[name][0].split(":")
    from lipoframe.plugins import PluginError

    try:
        code = int(getattr(importlib.import_module(module), func)(rest) or 0)
        outputs_complete(code, exiting=True)
        return code
    except PluginError as exc:
        print(f"lipoframe: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # argparse in a subcommand: keep main()'s return-a-code contract
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except KeyboardInterrupt:
        print("lipoframe: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # Output piped into `head` and closed: not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def cmd_plugins(argv: list[str]) -> int:
    """``lipoframe plugins [--json] [--all]``: installed plugins and their stages."""
    import argparse
    import json

    from lipoframe import plugins

    ap = argparse.ArgumentParser(prog="lipoframe plugins", description="List plugins and the stages each provides.")
    ap.add_argument("--json", action="store_true", help="machine-readable output")
    ap.add_argument("--all", action="store_true", help="include the built-in plugins")
    args = ap.parse_args(argv)
    _, _, infos = plugins.load()
    shown = [i for i in infos if args.all or i.distribution != "lipoframe"]
    if args.json:
        print(json.dumps([i.__dict__ for i in shown], indent=2))
        return 0
    if not shown:
        import os

        wanted = os.environ.get("LIPOFRAME_LOAD_PLUGINS")
        blocked = os.environ.get("LIPOFRAME_BLOCK_PLUGINS", "")
        limits = ([f"LIPOFRAME_LOAD_PLUGINS={wanted!r}"] if wanted is not None else []) + (
            [f"LIPOFRAME_BLOCK_PLUGINS={blocked!r}"] if blocked.strip() else [])
        why = f"loaded ({', '.join(limits)})" if limits else "installed"
        print(f"no third-party plugins {why}; use --all to list the built-in ones")
        return 0
    for i in shown:
        print(f"{i.distribution} {i.version}  ({i.name}: {i.module})")
        for s in i.stages:
            print(f"    {s}")
    return 0


def shown_default(default: object) -> object:
    """A parameter's default as it is typed on the command line: an Enum member by its name."""
    import enum

    return default.name if isinstance(default, enum.Enum) else default


def cmd_stages(argv: list[str]) -> int:
    """``lipoframe stages [KIND]``: every stage with its parameters."""
    import argparse

    from lipoframe import plugins
    from lipoframe.registry import describe_params
    from lipoframe.stages import KINDS, MULTI_KINDS

    ap = argparse.ArgumentParser(prog="lipoframe stages", description="List stages with parameters, types and defaults.")
    ap.add_argument("kind", nargs="?", choices=KINDS, help="only this kind")
    args = ap.parse_args(argv)
    _, registry, _ = plugins.load()
    infos = registry.stages(args.kind)
    for kind in dict.fromkeys(info.kind for info in infos):
        print(f"\n[{kind}]  select with {kind}={'[a,b]' if kind in MULTI_KINDS else '<name>'}")
        # The key to set on the command line: list kinds name the stage too (filter.diameter_range.tolerance).
        listing = [(info, [(f"{f'{kind}.{info.name}' if kind in MULTI_KINDS else kind}.{pname}:", ptype, default, help_text)
                           for pname, ptype, default, help_text in describe_params(info.params)])
                   for info in infos if info.kind == kind]
        # Keys and types padded to the longest of this kind, so its '=' line up whatever a plugin's types are.
        key_width = max((len(row[0]) for _, rows in listing for row in rows), default=0)
        type_width = max((len(row[1]) for _, rows in listing for row in rows), default=0)
        for info, rows in listing:
            print(f"  {info.name}  - {info.cls.summary or (info.cls.__doc__ or '').strip().splitlines()[0] if (info.cls.summary or info.cls.__doc__) else ''}")
            print(f"      provided by {info.provider}")
            for key, ptype, default, help_text in rows:
                print(f"      {key:<{key_width}} {ptype:<{type_width}} = {shown_default(default)!r}"
                      + (f"  # {help_text}" if help_text else ""))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
