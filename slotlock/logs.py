"""One log format for every slotlock service: JSON lines (the default, for collectors) or a
readable console line (``slotlock dev``), chosen by ``SLOTLOCK_LOG_FORMAT``.

Each record carries the request id of the RPC it was written under (``request_id``, from the
``x-request-id`` metadata or made by the gRPC interceptor) and, when tracing is on, the trace id,
so a log line, a trace and a client's error can be matched. Extra fields given with
``log.info(..., extra={"fields": {...}})`` become JSON keys.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from typing import Any, TextIO

from slotlock import tracing

FORMATS = ("json", "console")

# The id of the RPC being served; set by slotlock.grpc_errors for the duration of each call.
request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "slotlock_request_id", default=None
)

_CONSOLE = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601 with milliseconds), level, logger,
    message, request_id / trace_id when known, the record's ``fields``, and the traceback as
    one string under ``exc``."""

    def format(self, record: logging.LogRecord) -> str:
        seconds = time.gmtime(record.created)
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", seconds) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = getattr(record, "request_id", None) or request_id.get()
        if rid:
            line["request_id"] = rid
        trace = tracing.current_trace_id()
        if trace:
            line["trace_id"] = trace
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line.update(fields)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exc"] = record.exc_text
        return json.dumps(line, default=str, ensure_ascii=False)


class ConsoleFormatter(logging.Formatter):
    """The classic one-line format, with ``[request id]`` and the fields as ``key=value``."""

    def __init__(self) -> None:
        super().__init__(_CONSOLE)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        rid = getattr(record, "request_id", None) or request_id.get()
        fields = getattr(record, "fields", None)
        extra = " ".join(f"{k}={v}" for k, v in fields.items()) if isinstance(fields, dict) else ""
        head, sep, tail = text.partition("\n")  # keep a traceback below the first line
        if rid:
            head = f"{head} [{rid}]"
        if extra:
            head = f"{head} {extra}"
        return head + sep + tail


def formatter_for(log_format: str) -> logging.Formatter:
    if log_format == "console":
        return ConsoleFormatter()
    return JsonFormatter()


def configure(level: str, log_format: str, *, stream: TextIO | None = None) -> None:
    """Set up the root logger once, in a ``__main__``: one handler on stderr in ``log_format``."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter_for(log_format))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
