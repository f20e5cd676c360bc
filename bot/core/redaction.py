"""Secrets kept out of every log line: the process-wide registry and the credential shapes.

Logging is process-wide by nature, so the registry of secrets is too: ``register_secret``
is called where a secret comes into being (a key loaded, a credential decrypted or typed
in), without threading an object through every layer, and ``redact`` replaces each one, and
anything shaped like a credential, with ``[REDACTED]``. ``bot.runtime.logs`` applies it to
every formatted line.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterable
from urllib.parse import quote, quote_plus

REDACTED = "[REDACTED]"
# Shorter values are not credentials worth the name, and redacting them would blank out
# ordinary words and numbers all over the logs.
MIN_SECRET_LENGTH = 6
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


REDACTOR = Redactor()


def register_secret(secret: str | None) -> None:
    """Keep ``secret`` out of every log line from now on (a decrypted credential, say)."""
    REDACTOR.register(secret)


def redact(text: str) -> str:
    """``text`` with every registered secret and credential shape replaced."""
    return REDACTOR.redact(text)
