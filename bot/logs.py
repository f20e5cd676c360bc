"""Process logging for the CLI: JSON lines under ``serve``, one readable line elsewhere, no secrets.

Every line goes through ``Redacting``, which replaces each known secret (the
configured ones, every credential decrypted at run time) and anything shaped
like a credential (Slack tokens, bearer tokens, Atlas service account secrets,
Fernet tokens) with ``[REDACTED]`` in the final text, exception text included.
Logging is process-wide by nature, so the registry of secrets is too:
``register_secret`` is called where a secret comes into being, without threading
an object through every layer.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TextIO
from urllib.parse import quote, quote_plus

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

from bot.config import SECRET_VARIABLES

if TYPE_CHECKING:
    from bot.config import Settings

REDACTED = "[REDACTED]"
# Shorter values are not credentials worth the name, and redacting them would blank out
# ordinary words and numbers all over the logs.
MIN_SECRET_LENGTH = 6
TEXT_FORMAT = "%(levelname)s %(name)s: %(message)s"
# Credentials recognised by their shape, registered or not. ``keep`` is the part kept.
_SHAPES = (
    r"(?P<keep>\b(?i:bearer)\s+)[A-Za-z0-9\-._~+/]+=*",  # RFC 6750 b64token
    r"(?P<keep_basic>\b(?i:basic)\s+)[A-Za-z0-9+/]{12,}={0,2}",  # user:password in base64
    r"xox[abposr]-[A-Za-z0-9-]+",  # Slack bot, user, … tokens
    r"xapp-[A-Za-z0-9-]+",  # Slack app-level (Socket Mode) tokens
    r"mdb_sa_sk_[A-Za-z0-9_-]+",  # Atlas service account secrets
    # Fernet tokens: version byte 0x80, then a timestamp; the padding maybe percent-encoded.
    r"gAAAAA[A-Za-z0-9_-]{20,}(?:=|%3[dD]){0,2}",
)
# Third-party loggers that say something on every request or tick: only shown at DEBUG.
CHATTY_LOGGERS = ("httpx", "httpcore", "apscheduler")
# uvicorn adds an ANSI-coloured copy of some messages; JSON lines do not need it.
_SKIPPED_EXTRAS = ("color_message",)


class Redactor:
    """Known secrets plus credential shapes, as one compiled pattern.

    The pattern is rebuilt only when a new secret is registered, so redacting a
    line is one ``re.sub`` whatever the number of secrets. A secret is also
    matched as it looks escaped in a JSON string and percent-encoded in a URL
    (uvicorn's access log quotes the path).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._secrets: set[str] = set()
        self._pattern = self._compile()

    def register(self, secret: str | None) -> None:
        """Redact ``secret`` from now on (values under ``MIN_SECRET_LENGTH`` are ignored)."""
        if not secret or len(secret) < MIN_SECRET_LENGTH:
            return
        # As written, escaped in a JSON string, percent-encoded in a URL path or query.
        forms = {
            secret,
            json.dumps(secret)[1:-1],
            quote(secret),
            quote(secret, safe=""),
            quote_plus(secret),
        }
        with self._lock:
            if forms <= self._secrets:
                return
            self._secrets |= forms
            self._pattern = self._compile()

    def register_all(self, secrets: Iterable[str | None]) -> None:
        for secret in secrets:
            self.register(secret)

    def redact(self, text: str) -> str:
        return self._pattern.sub(_replace, text)

    def _compile(self) -> re.Pattern[str]:
        # Longest first: a secret that contains another is replaced whole.
        known = sorted(self._secrets, key=len, reverse=True)
        return re.compile("|".join([*(re.escape(s) for s in known), *_SHAPES]))


def _replace(match: re.Match[str]) -> str:
    return (match["keep"] or match["keep_basic"] or "") + REDACTED


_redactor = Redactor()


def register_secret(secret: str | None) -> None:
    """Keep ``secret`` out of every log line from now on (a decrypted credential, say)."""
    _redactor.register(secret)


class Redacting(logging.Formatter):
    """Wraps a formatter and redacts its final line, exception text included."""

    def __init__(self, inner: logging.Formatter, redactor: Redactor | None = None) -> None:
        super().__init__()
        self.inner = inner
        self.redactor = redactor or _redactor

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
        self.redactor = redactor or _redactor

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
    return not (method == "GET" and path in PROBE_PATHS and 200 <= int(status) < 300)


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
        _redactor.register_all(getattr(settings, name) for name in SECRET_VARIABLES)
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
