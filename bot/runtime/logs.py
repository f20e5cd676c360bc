"""Process logging for the CLI: JSON lines under ``serve``, one readable line elsewhere, no secrets.

Every line goes through ``Redacting``, which replaces each known secret (the
configured ones, every credential decrypted at run time) and anything shaped
like a credential (Slack tokens, bearer tokens, Atlas service account secrets,
Fernet tokens) with ``[REDACTED]`` in the final text, exception text included
(the registry and the shapes are ``bot.core.redaction``).
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, SupportsInt, TextIO, cast

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

from bot.core.config import SECRET_VARIABLES
from bot.core.redaction import REDACTOR, Redactor

if TYPE_CHECKING:
    from bot.core.config import Settings

TEXT_FORMAT = "%(levelname)s %(name)s: %(message)s"
# Third-party loggers that say something on every request or tick: only shown at DEBUG.
CHATTY_LOGGERS = ("httpx", "httpcore", "apscheduler")
# uvicorn adds an ANSI-coloured copy of some messages; JSON lines do not need it.
_SKIPPED_EXTRAS = ("color_message",)


class Redacting(logging.Formatter):
    """Wraps a formatter and redacts its final line, exception text included."""

    def __init__(self, inner: logging.Formatter, redactor: Redactor | None = None) -> None:
        super().__init__()
        self.inner = inner
        self.redactor = redactor or REDACTOR

    def format(self, record: logging.LogRecord) -> str:
        return self.redactor.redact(self.inner.format(record))


class TextFormatter(logging.Formatter):
    """``LEVEL logger: message`` on one line; an exception is summed up as ``(Type: message)``.

    The traceback is added only with ``tracebacks`` (at DEBUG): a person at the CLI or
    the shell needs the line, not a stack trace; whoever debugs asks for DEBUG.
    """

    def __init__(self, *, tracebacks: bool = False) -> None:
        super().__init__(TEXT_FORMAT)
        self.tracebacks = tracebacks

    def format(self, record: logging.LogRecord) -> str:
        if self.tracebacks or not record.exc_info:
            return super().format(record)
        exc = record.exc_info[1]
        # A copy without the exception: the record itself is shared with other handlers.
        plain = logging.makeLogRecord({**record.__dict__, "exc_info": None, "exc_text": None})
        line = super().format(plain)
        if exc is None:
            return line
        summary = " ".join(str(exc).split())
        return f"{line} ({type(exc).__name__}{': ' + summary if summary else ''})"


class JsonLineFormatter(JsonFormatter):
    """One JSON object per line: time (ISO 8601, UTC), level, logger, message, then
    ``exc_info`` (the traceback text) when there is one and any ``extra=`` fields.

    String fields are redacted before they are encoded as well as after (by ``Redacting``):
    encoding escapes a secret that was already escaped once (a JSON body in a message)
    a second time, into a form no registered variant matches.
    """

    def __init__(self, redactor: Redactor | None = None) -> None:
        super().__init__(
            "{levelname}{name}{message}",
            style="{",
            rename_fields={"levelname": "level", "name": "logger"},
            reserved_attrs=[*RESERVED_ATTRS, *_SKIPPED_EXTRAS],
        )
        self.redactor = redactor or REDACTOR

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        return {key: self._redacted(value) for key, value in log_data.items()}

    def _redacted(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.redactor.redact(value)
        if isinstance(value, dict):
            return {key: self._redacted(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [self._redacted(item) for item in value]
        return value

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        created = datetime.fromtimestamp(record.created, UTC)
        log_data["time"] = created.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        super().add_fields(log_data, record, message_dict)


def format_and_level(settings: Settings | None, *, serving: bool) -> tuple[str, str]:
    """The (format, level) in force: ``BOT_LOG_FORMAT``/``BOT_LOG_LEVEL``, else the command's
    defaults (JSON at INFO for ``serve``, where a log collector reads them; text at WARNING
    elsewhere, where a person does)."""
    fmt = settings.BOT_LOG_FORMAT if settings is not None else None
    level = settings.BOT_LOG_LEVEL if settings is not None else None
    return fmt or ("json" if serving else "text"), level or ("INFO" if serving else "WARNING")


_installed: logging.Handler | None = None


# Paths a load balancer or Prometheus asks every few seconds: their successful answers would
# bury every other access-log line.
PROBE_PATHS = frozenset({"/healthz", "/metrics"})


def quiet_probes(record: logging.LogRecord) -> bool:
    """Drop uvicorn's access line of a successful probe (``GET /healthz`` or ``/metrics``,
    2xx); a failing probe, and everything at DEBUG, is still logged."""
    if record.name != "uvicorn.access" or not isinstance(record.args, tuple):
        return True
    try:
        _, method, path, _, status = record.args
    except ValueError:
        return True
    # uvicorn's access record carries the status code as an int; LogRecord.args says object.
    code = cast("SupportsInt | str", status)
    return not (method == "GET" and path in PROBE_PATHS and 200 <= int(code) < 300)


def configure(
    settings: Settings | None = None, *, serving: bool = False, stream: TextIO | None = None
) -> logging.Handler:
    """Send the process's logs to ``stream`` (stderr) in the format and level in force.

    Called by the CLI at start (no settings yet: text at WARNING) and again once the
    settings are read; each call replaces the handler the previous one installed and
    registers the configured secrets for redaction.
    """
    global _installed
    if settings is not None:
        REDACTOR.register_all(getattr(settings, name) for name in SECRET_VARIABLES)
    fmt, level = format_and_level(settings, serving=serving)
    inner: logging.Formatter = (
        JsonLineFormatter() if fmt == "json" else TextFormatter(tracebacks=level == "DEBUG")
    )
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(Redacting(inner))
    if level != "DEBUG":
        handler.addFilter(quiet_probes)
    root = logging.getLogger()
    if _installed is not None:
        root.removeHandler(_installed)
    root.addHandler(handler)
    root.setLevel(level)
    chatty = logging.DEBUG if level == "DEBUG" else max(logging.WARNING, root.level)
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(chatty)
    # Python warnings become log records too, so a JSON stream stays JSON.
    logging.captureWarnings(fmt == "json")
    _installed = handler
    return handler
