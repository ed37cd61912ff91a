"""structlog set-up: one JSON object per line under systemd (or whenever stderr is not a terminal),
readable console lines on a terminal. Logs go to stderr; stdout stays for command output
(`wan-worker submit` prints the new id there)."""
from __future__ import annotations

import logging
import os
import sys

import structlog


def configure_logging(log_format: str = "auto", log_level: str = "info") -> None:
    """log_format: json, console, or auto (json when stderr is not a TTY or under the journal)."""
    json_lines = log_format == "json" or (
        log_format == "auto" and (not sys.stderr.isatty() or "JOURNAL_STREAM" in os.environ)
    )
    renderer: structlog.typing.Processor
    if json_lines:
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if json_lines:
        processors.append(structlog.processors.dict_tracebacks)
    processors.append(renderer)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(log_level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
