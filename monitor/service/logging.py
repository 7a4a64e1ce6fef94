"""structlog configuration: console in development, JSON lines in production.

Log calls pass identifiers that are safe by construction (site ids, topic[partition]@offset,
reject codes); payloads and DICOM values are never logged.
"""

from __future__ import annotations

import functools
import logging
import sys
import warnings
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from typing import Final, ParamSpec, TextIO, TypeVar

import structlog

from monitor.service.settings import LoggingSettings


class _NamedPrintLogger(structlog.PrintLogger):
    """A PrintLogger that knows the name it was asked for (``get_logger(__name__)``), so that
    a processor can tell whose event it is (:func:`_routine_at_debug`)."""

    def __init__(self, file: TextIO | None = None, name: str | None = None) -> None:
        super().__init__(file=file)
        self.name = name


def _stderr_logger(*args: object) -> structlog.PrintLogger:
    # Resolve sys.stderr when a logger is made, not once at configuration: test runners and
    # embedding tools swap the stream, and a logger bound to a closed stream raises.
    name = args[0] if args and isinstance(args[0], str) else None
    return _NamedPrintLogger(file=sys.stderr, name=name)


def _routine_at_debug(routine: Collection[str], level: int) -> structlog.typing.Processor:
    """INFO events of the ``routine`` loggers become DEBUG events: dropped unless the level
    is DEBUG, and shown as debug then."""

    def demote(
        logger: object, method_name: str, event_dict: structlog.typing.EventDict
    ) -> structlog.typing.EventDict:
        if method_name == "info" and getattr(logger, "name", None) in routine:
            if level > logging.DEBUG:
                raise structlog.DropEvent
            event_dict["level"] = "debug"
        return event_dict

    return demote


def configure_logging(settings: LoggingSettings, *, routine: Collection[str] = ()) -> None:
    """Configure structlog (and the standard library's loggers) from ``settings``. The INFO
    events of the ``routine`` loggers (module names) are logged at DEBUG: what the demo does
    with the periodic jobs' lines, which would scroll its instructions away."""
    level = logging.getLevelName(settings.level)
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if settings.json_output
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            _routine_at_debug(frozenset(routine), level),
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=_stderr_logger,
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(level=max(level, logging.WARNING), stream=sys.stderr)
    # pydicom reports odd files through its logger and Python warnings, and those messages can
    # quote DICOM values and file paths (which may be named after patients). They never reach
    # RadSentry's logs; the extractor raises typed errors that name no values instead.
    pydicom_log = logging.getLogger("pydicom")
    pydicom_log.propagate = False
    pydicom_log.setLevel(logging.CRITICAL + 1)
    warnings.filterwarnings("ignore", module=r"pydicom(\..*)?$")
    logging.getLogger("kafka.cluster").addFilter(CANCELLED_AT_CLOSE)


class _CancelledAtClose(logging.Filter):
    """kafka-python logs the metadata refresh that its own ``close()`` cancels as an ERROR
    ("Metadata refresh: failed Cancelled"): on every clean Ctrl-C of the demo, one alarming
    line. A cancellation is not a failure; every other refresh failure still shows."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        return not (
            str(record.msg).startswith("Metadata refresh: failed")
            and any(type(arg).__name__ == "Cancelled" for arg in args)
        )


CANCELLED_AT_CLOSE: Final = _CancelledAtClose()


@contextmanager
def warnings_only() -> Iterator[None]:
    """Drop structlog's DEBUG and INFO events while the block runs (warnings and errors still
    show), then restore the configured filter.

    For a command that runs the service's code and reports on the terminal itself
    (``radsentry backtest``): the lines the service logs per alert and per refresh would bury its
    progress bar and summary. The service's own processes never enter this block. Loggers are
    not cached (``cache_logger_on_first_use=False``), so module-level loggers obey it too.
    """
    previous = structlog.get_config()["wrapper_class"]
    level = max(int(structlog.get_logger().get_effective_level()), logging.WARNING)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(level))
    try:
        yield
    finally:
        structlog.configure(wrapper_class=previous)


P = ParamSpec("P")
R = TypeVar("R")


def job_boundary(failure: str) -> Callable[[Callable[P, R]], Callable[P, R | None]]:
    """Make a scheduled job a boundary: any exception is logged as ``failure`` (with its
    traceback, under the job's module) and the job returns None, so the scheduler keeps going
    and the next run tries again.

    Only for a whole job: code inside it raises, and each job says in ``failure`` what did not
    happen (``"performance refresh failed"``), which is what an operator greps for.
    """

    def decorate(job: Callable[P, R]) -> Callable[P, R | None]:
        job_log = structlog.get_logger(job.__module__)

        @functools.wraps(job)
        def run(*args: P.args, **kwargs: P.kwargs) -> R | None:
            try:
                return job(*args, **kwargs)
            except Exception:
                # Boundary: one failed run must not stop the scheduler; the next run retries.
                job_log.exception(failure)
                return None

        return run

    return decorate
