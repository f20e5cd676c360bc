"""Settings: the only place the process environment (and ``.env``) is read.

Every variable of CONTRACT.md is a field here. A malformed value stops start-up
with ``ConfigError``, whose message is one line naming the variable and the
form it must take.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Iterator
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS = ("json", "text")


class ConfigError(ValueError):
    """A configuration value is missing or malformed; the message names the variable."""


def _http_url(value: str, name: str | None) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"must be an http(s) URL such as https://example.com, got {value!r}")
    return value


class Settings(BaseSettings):
    """Process configuration, read once at start-up and passed to whatever needs it."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=True,
        frozen=True,
    )

    def __repr_args__(self) -> Iterator[tuple[str | None, object]]:
        # repr(settings), and so repr(deps), a debugger or a crash reporter capturing locals,
        # shows which secrets are set, never their values.
        for name, value in super().__repr_args__():
            yield name, ("**********" if value and name in SECRET_VARIABLES else value)

    MONGODB_ATLAS_BASE_URL: str = "https://cloud.mongodb.com"
    MONGODB_ATLAS_CLIENT_ID: str | None = None
    MONGODB_ATLAS_CLIENT_SECRET: str | None = None
    MONGODB_ATLAS_PUBLIC_API_KEY: str | None = None
    MONGODB_ATLAS_PRIVATE_API_KEY: str | None = None
    SLACK_BOT_TOKEN: str | None = None
    SLACK_SIGNING_SECRET: str | None = None
    SLACK_APP_TOKEN: str | None = None
    SLACK_API_URL: str = "https://slack.com/api/"
    DATABASE_URL: str = "sqlite:///billing-bot.db"
    BOT_SECRET_KEY: str | None = None
    PORT: int = Field(default=3000, ge=1, le=65535)
    BOT_POLL_SECONDS: float = Field(default=5, gt=0)
    BOT_THRESHOLD_SECONDS: float = Field(default=900, gt=0)
    BOT_DIGEST_SECONDS: float = Field(default=60, gt=0)
    BOT_ADMINS: Annotated[tuple[str, ...], NoDecode] = ()
    # None: the command's default (INFO and json for `serve`, WARNING and text elsewhere).
    BOT_LOG_LEVEL: str | None = None
    BOT_LOG_FORMAT: str | None = None

    @field_validator("MONGODB_ATLAS_BASE_URL", "SLACK_API_URL")
    @classmethod
    def _url(cls, value: str, info: ValidationInfo) -> str:
        return _http_url(value.strip(), info.field_name)

    @field_validator("SLACK_API_URL")
    @classmethod
    def _trailing_slash(cls, value: str) -> str:
        # slack_sdk joins method names onto the base URL, which must end in "/".
        return value if value.endswith("/") else value + "/"

    @field_validator("DATABASE_URL")
    @classmethod
    def _database_url(cls, value: str) -> str:
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            url = make_url(value)
        except ArgumentError:
            # Not a URL, so there is no password to mask: show only where it went wrong.
            raise ValueError(
                "must be a SQLAlchemy URL such as sqlite:///billing-bot.db or "
                "postgresql+psycopg://user@host/db"
            ) from None
        if url.get_backend_name() not in ("sqlite", "postgresql"):
            shown = url.render_as_string(hide_password=True)
            raise ValueError(f"must be a sqlite:// or postgresql+psycopg:// URL, got {shown!r}")
        return value

    @field_validator("SLACK_APP_TOKEN")
    @classmethod
    def _app_token(cls, value: str | None) -> str | None:
        if value and not value.startswith("xapp-"):
            raise ValueError("must be a Socket Mode app-level token starting with xapp-")
        return value or None

    @field_validator("SLACK_BOT_TOKEN")
    @classmethod
    def _bot_token(cls, value: str | None) -> str | None:
        if value and not value.startswith("xox"):
            raise ValueError("must be a bot token starting with xoxb-")
        return value or None

    @field_validator("BOT_SECRET_KEY")
    @classmethod
    def _fernet_key(cls, value: str | None) -> str | None:
        if not value:
            return None
        try:
            raw = base64.urlsafe_b64decode(value.encode("ascii"))
        except (binascii.Error, UnicodeEncodeError, ValueError):
            raw = b""
        if len(raw) != 32:
            raise ValueError(
                "must be a Fernet key: 32 url-safe base64-encoded bytes "
                "(make one with: python -c 'from cryptography.fernet import Fernet; "
                "print(Fernet.generate_key().decode())')"
            )
        return value

    @field_validator("BOT_ADMINS", mode="before")
    @classmethod
    def _admins(cls, value: str | Iterable[str] | None) -> tuple[str, ...]:
        if isinstance(value, str):
            ids = tuple(part.strip() for part in value.split(",") if part.strip())
        else:
            ids = tuple(value or ())
        bad = [i for i in ids if not (i.isascii() and i.isalnum() and i[:1] in "UW")]
        if bad:
            raise ValueError(
                f"must be comma-separated Slack user IDs like U0123ABCD, got {bad[0]!r}"
            )
        return ids

    @field_validator("BOT_LOG_LEVEL")
    @classmethod
    def _log_level(cls, value: str | None) -> str | None:
        if not value or not value.strip():
            return None
        if value.strip().upper() not in LOG_LEVELS:
            raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}")
        return value.strip().upper()

    @field_validator("BOT_LOG_FORMAT")
    @classmethod
    def _log_format(cls, value: str | None) -> str | None:
        if not value or not value.strip():
            return None
        if value.strip().lower() not in LOG_FORMATS:
            raise ValueError(f"must be {' or '.join(LOG_FORMATS)}")
        return value.strip().lower()

    @model_validator(mode="after")
    def _pairs(self) -> Settings:
        for first, second in (
            ("MONGODB_ATLAS_CLIENT_ID", "MONGODB_ATLAS_CLIENT_SECRET"),
            ("MONGODB_ATLAS_PUBLIC_API_KEY", "MONGODB_ATLAS_PRIVATE_API_KEY"),
        ):
            if bool(getattr(self, first)) != bool(getattr(self, second)):
                missing = second if getattr(self, first) else first
                other = first if missing == second else second
                raise ValueError(f"{missing}: must be set together with {other}")
        return self

    @property
    def has_service_account(self) -> bool:
        return bool(self.MONGODB_ATLAS_CLIENT_ID and self.MONGODB_ATLAS_CLIENT_SECRET)

    @property
    def has_api_key(self) -> bool:
        return bool(self.MONGODB_ATLAS_PUBLIC_API_KEY and self.MONGODB_ATLAS_PRIVATE_API_KEY)

    @property
    def has_atlas_credentials(self) -> bool:
        return self.has_service_account or self.has_api_key


# Variables whose values are never repeated in an error message.
SECRET_VARIABLES = frozenset(
    {
        "SLACK_BOT_TOKEN",
        "SLACK_SIGNING_SECRET",
        "SLACK_APP_TOKEN",
        "MONGODB_ATLAS_CLIENT_SECRET",
        "MONGODB_ATLAS_PRIVATE_API_KEY",
        "BOT_SECRET_KEY",
    }
)


def load_settings(**overrides: Any) -> Settings:
    """Read the environment (and ``.env``); raise ``ConfigError`` naming the first bad variable."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        error = exc.errors()[0]
        message = error["msg"].removeprefix("Value error, ")
        name = ".".join(str(p) for p in error["loc"])
        if not name:  # a cross-field rule names its variable itself
            raise ConfigError(message) from None
        if name in SECRET_VARIABLES:
            # Saying what was typed would print the secret (or most of a mistyped one).
            message = message.split(", got ", 1)[0]
        elif "got " not in message and error.get("input") is not None and error["loc"]:
            message += f", got {error['input']!r}"
        raise ConfigError(f"{name}: {message}") from None
