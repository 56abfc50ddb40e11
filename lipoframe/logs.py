"""Logging set-up that ends with the command that made it."""

from __future__ import annotations

import contextlib
import logging
import sys


@contextlib.contextmanager
def restored_logging():
    """Give the root logger back its handlers and level on exit; close the handlers added meanwhile.

    For commands run in-process (through ``lipoframe.cli.main``: ``app.run``;
    ``merge.main`` and ``plancmd.main`` through :func:`command_logging`):
    Hydra configures logging for a run (a console handler on the
    ``sys.stderr`` of that moment, a file handler in the run folder),
    as do ``merge`` and ``plan`` when nothing did. Left attached, later
    messages of the process would go to a stream that may be closed by then
    and into the earlier run's ``lipoframe.log``.

    Yields a function that adds the handlers the root logger had on entry
    back to it, beside those set up meanwhile: Hydra's logging config
    replaces the root logger's handlers as each job starts, so ``app.run``
    calls it as a job starts, and the records of the run also reach the
    handlers the process had set up (pytest's ``caplog``, a program's own
    log file; a console handler of its own shows the run's messages beside
    Hydra's). On exit they are the root logger's only handlers again.
    The function can be pickled (a launcher that runs a sweep's jobs in
    other processes, joblib's or submitit's, pickles the job with it): its
    copy there adds nothing, as the handlers belong to this process.
    """
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield _EarlierHandlers(handlers)
    finally:
        for h in root.handlers[:]:
            root.removeHandler(h)
            if h not in handlers:
                h.close()
        for h in handlers:
            root.addHandler(h)
        root.setLevel(level)


class _EarlierHandlers:
    """Calling it adds ``handlers`` to the root logger, those it does not have (see :func:`restored_logging`).

    Pickled, it holds none: handlers (locks, open streams, pytest's
    ``caplog``) cannot be, and belong to the process that set them up.
    """

    def __init__(self, handlers: list[logging.Handler]) -> None:
        self.handlers = handlers

    def __call__(self) -> None:
        root = logging.getLogger()
        for h in self.handlers:
            if h not in root.handlers:
                root.addHandler(h)

    def __reduce__(self):
        return type(self), ([],)


@contextlib.contextmanager
def command_logging():
    """:func:`restored_logging` around a command that logs warnings to the console (``lipoframe: ...``) when nothing set logging up.

    For ``lipoframe merge`` and ``lipoframe plan``, which Hydra does not
    run: the console handler they add ends with the command.
    """
    with restored_logging():
        if not logging.getLogger().handlers:
            logging.basicConfig(level=logging.WARNING, format="lipoframe: %(message)s", stream=sys.stderr)
        yield


def _on_console(record: logging.LogRecord) -> bool:
    """Whether a handler on the way up from ``record``'s logger writes it to this process's stderr or stdout."""
    logger: logging.Logger | None = logging.getLogger(record.name)
    while logger is not None:
        for h in logger.handlers:
            if (isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler) and record.levelno >= h.level
                    and getattr(h, "stream", None) in (sys.stderr, sys.stdout)):
                return True
        logger = logger.parent if logger.propagate else None
    return False


class ShownErrors:
    """The error messages the console has shown (see :func:`logged_errors`), each as it was logged.

    ``message in shown`` is true when a shown message is ``message`` or begins with it and goes on
    with more lines: the summary's words for an error are its first line (a failed micrograph's,
    a dataset stage's) or the whole message, while the console showed all of it, often with a
    traceback after it (``runner.verbose=true``). A message of several lines (a writer's
    exception that says more on its next lines) is shown only when all of its lines were.
    """

    def __init__(self) -> None:
        self._by_first: dict[str, list[str]] = {}

    def add(self, message: str) -> None:
        self._by_first.setdefault(_first_line(message), []).append(message)

    def __contains__(self, message: object) -> bool:
        if not isinstance(message, str):
            return False
        return any(m == message or m.startswith(message + "\n") for m in self._by_first.get(_first_line(message), ()))

    def __iter__(self):
        return (m for ms in self._by_first.values() for m in ms)

    def __len__(self) -> int:
        return sum(len(ms) for ms in self._by_first.values())


def _first_line(message: str) -> str:
    return message.splitlines()[0] if message else ""


class _ErrorLines(logging.Handler):
    """Keeps each error record that the console shows (see :func:`logged_errors`)."""

    def __init__(self, shown: ShownErrors) -> None:
        super().__init__(level=logging.ERROR)
        self.shown = shown

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            if _on_console(record):
                self.shown.add(record.getMessage())


@contextlib.contextmanager
def logged_errors():
    """Collect the errors the ``lipoframe`` logger shows on the console meanwhile.

    A command's console handler shows each as it happens (``lipoframe:
    <file>: <problem>``, with a traceback after it when ``runner.verbose=true``);
    the summary the command prints at the end (:func:`lipoframe.runner.format_summary`)
    is given them so that it counts them rather than printing each a second
    time. Yields a :class:`ShownErrors`, filled as the errors come: an
    error's words, whole or its first line, are ``in`` it when the console
    showed them.
    """
    shown = ShownErrors()
    handler = _ErrorLines(shown)
    logger = logging.getLogger("lipoframe")
    logger.addHandler(handler)
    try:
        yield shown
    finally:
        logger.removeHandler(handler)


class _SaidBefore(logging.Filter):
    """Drops a record whose level and message are in ``said``; adds those of the others (see :func:`once_each`)."""

    def __init__(self, said: set[tuple[int, str]]) -> None:
        super().__init__()
        self.said = said

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            key = (record.levelno, record.getMessage())
        except Exception:  # noqa: BLE001 - a record that cannot be formatted: the handlers say so
            return True
        if key in self.said:
            return False
        self.said.add(key)
        return True


@contextlib.contextmanager
def once_each(said: set[tuple[int, str]]):
    """While it lasts, loggers drop a message logged before with the same level and words.

    ``said`` holds the (level, message) of those logged so far, and is
    filled as it goes: a ``watch=true`` session keeps one for the whole
    session and writes its dataset-level outputs again and again within
    this, so that a warning or note that holds at each update (the binning's
    ``fewer than binning.min_picks``, the notes on the pixel size and the
    diameter range, ``every micrograph failed``) is logged once to the
    console and ``lipoframe.log``, and again only when its words change.
    ``run_summary.json`` and the summary are made as before.

    Not only the ``lipoframe`` logger's: those of its child loggers
    (``lipoframe.polaritycheck``, a module's ``logging.getLogger(__name__)``),
    of plugins' stages and of the libraries they use, which an update runs
    as well. A logger's filter sees only the records made on it, not those
    its children pass up, so each logger that exists on entry (the root one
    included) gets the filter (one made meanwhile does not).
    """
    said_before = _SaidBefore(said)
    loggers = [logging.getLogger()]
    loggers += [logger for logger in list(logging.Logger.manager.loggerDict.values()) if isinstance(logger, logging.Logger)]
    for logger in loggers:
        logger.addFilter(said_before)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(said_before)
