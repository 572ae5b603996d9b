"""Logs as one JSON object a line on stdout (for journald), each with its request id, plus one access line a request."""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from datetime import UTC, datetime

import click
from flask import Flask, Response, g, has_request_context, request

from settings import Settings
from web.request_summary import summarize

access_log = logging.getLogger("ai_image_generator.access")


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, request id, pid and any `fields`."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON (newlines in messages and tracebacks stay escaped)."""
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None),
            # Several gunicorn workers share one stdout; the pid tells their lines apart.
            "pid": record.process,
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str)


# The id of the work a thread does outside a web request: a job worker sets its job's id here (the
# pipeline's threads run in a copy of the context, so they carry it too).
work_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("work_id", default=None)


class RequestIdFilter(logging.Filter):
    """Stamps each record with the id of the request (or job) being served, if any."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Add `request_id` from flask.g, else the job's id; always keep the record."""
        if not hasattr(record, "request_id"):
            record.request_id = g.get("request_id") if has_request_context() else work_id.get()
        return True


class StdoutHandler(logging.StreamHandler):
    """A stream handler that writes to whatever sys.stdout (or sys.stderr) is at the time (test runners swap it)."""

    to_stderr = False

    @property
    def stream(self):
        """The current sys.stdout, or sys.stderr for a command whose stdout is its answer."""
        return sys.stderr if self.to_stderr else sys.stdout

    @stream.setter
    def stream(self, _value) -> None:
        pass


def configure_logging(level: str = "info", *, to_stderr: bool = False) -> None:
    """Send every log record to stdout (or stderr) as JSON; calling it again replaces, never duplicates, the handler."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, StdoutHandler)]:
        root.removeHandler(handler)
    handler = StdoutHandler()
    handler.to_stderr = to_stderr
    handler.setFormatter(JsonFormatter())
    # On the handler, not a logger: logger filters do not see records propagated from child loggers.
    handler.addFilter(RequestIdFilter())
    root.addHandler(handler)
    root.setLevel(level.upper())


def install_logging(app: Flask, settings: Settings) -> None:
    """Configure JSON logging and write one access line for every request the app answers."""
    # Under a `flask` command (e.g. `keys add`), stdout is the command's answer: `KEY=$(...)` must
    # capture the key alone, so the log goes to stderr there.
    configure_logging(settings.log_level, to_stderr=click.get_current_context(silent=True) is not None)
    app.after_request(_access_line)


def _access_line(response: Response) -> Response:
    s = summarize(response)
    access_log.info("%s %s %s %.1fms", s.method, request.path, s.status, s.duration_ms, extra={"fields": {
        # The key's NAME only: the key itself is never logged.
        "key": s.key_name,
        "route": s.route,
        "path": request.path,
        "method": s.method,
        "status": s.status,
        "duration_ms": s.duration_ms,
        "images": s.images,
        "model_ms": s.stage_ms.get("model"),
        "screening_ms": s.stage_ms.get("screening"),
        "upload_ms": s.stage_ms.get("store"),
        "flagged": s.flagged,
        "failed": len(s.failed_codes),
        "replayed": s.replayed,
    }})
    return response
