"""Settings from the environment: defaults, and one clear line per malformed variable."""

import re
from pathlib import Path

import pytest

from bot.core.config import ConfigError, Settings, load_settings

ALL_VARS = [
    "MONGODB_ATLAS_BASE_URL",
    "MONGODB_ATLAS_CLIENT_ID",
    "MONGODB_ATLAS_CLIENT_SECRET",
    "MONGODB_ATLAS_PUBLIC_API_KEY",
    "MONGODB_ATLAS_PRIVATE_API_KEY",
    "SLACK_BOT_TOKEN",
    "SLACK_SIGNING_SECRET",
    "SLACK_APP_TOKEN",
    "SLACK_API_URL",
    "DATABASE_URL",
    "BOT_SECRET_KEY",
    "PORT",
    "BOT_POLL_SECONDS",
    "BOT_THRESHOLD_SECONDS",
    "BOT_DIGEST_SECONDS",
    "BOT_ADMINS",
    "BOT_LOG_LEVEL",
    "BOT_LOG_FORMAT",
]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    for name in ALL_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # no stray .env


def test_defaults_match_the_contract():
    s = load_settings()
    assert s.MONGODB_ATLAS_BASE_URL == "https://cloud.mongodb.com"
    assert s.SLACK_API_URL == "https://slack.com/api/"
    assert s.DATABASE_URL == "sqlite:///billing-bot.db"
    assert (s.PORT, s.BOT_POLL_SECONDS, s.BOT_THRESHOLD_SECONDS, s.BOT_DIGEST_SECONDS) == (
        3000,
        5,
        900,
        60,
    )
    assert s.BOT_ADMINS == ()
    assert (s.BOT_LOG_LEVEL, s.BOT_LOG_FORMAT) == (None, None)  # the command decides
    assert not s.has_atlas_credentials


def test_dotenv_file_is_read(tmp_path):
    (tmp_path / ".env").write_text("PORT=4001\nBOT_ADMINS=U1,W2\n")
    s = load_settings()
    assert s.PORT == 4001
    assert s.BOT_ADMINS == ("U1", "W2")


def test_service_account_and_api_key_detection(monkeypatch):
    monkeypatch.setenv("MONGODB_ATLAS_PUBLIC_API_KEY", "abcdefgh")
    monkeypatch.setenv("MONGODB_ATLAS_PRIVATE_API_KEY", "secret")
    s = load_settings()
    assert s.has_api_key and not s.has_service_account and s.has_atlas_credentials


@pytest.mark.parametrize(
    ("name", "value", "needle"),
    [
        ("PORT", "abc", "PORT:"),
        ("PORT", "70000", "PORT:"),
        ("PORT", "0", "PORT:"),
        (
            "MONGODB_ATLAS_BASE_URL",
            "cloud.mongodb.com",
            "MONGODB_ATLAS_BASE_URL: must be an http(s) URL",
        ),
        ("MONGODB_ATLAS_BASE_URL", "ftp://x", "MONGODB_ATLAS_BASE_URL:"),
        ("SLACK_API_URL", "slack.com/api", "SLACK_API_URL:"),
        ("DATABASE_URL", "not a url", "DATABASE_URL:"),
        ("DATABASE_URL", "mysql://u@h/db", "DATABASE_URL: must be a sqlite"),
        ("BOT_SECRET_KEY", "short", "BOT_SECRET_KEY: must be a Fernet key"),
        ("BOT_POLL_SECONDS", "0", "BOT_POLL_SECONDS:"),
        ("BOT_THRESHOLD_SECONDS", "soon", "BOT_THRESHOLD_SECONDS:"),
        ("BOT_DIGEST_SECONDS", "-5", "BOT_DIGEST_SECONDS:"),
        ("BOT_ADMINS", "U1,robert'); DROP", "BOT_ADMINS:"),
        ("SLACK_APP_TOKEN", "xoxb-wrong-kind", "SLACK_APP_TOKEN:"),
        ("BOT_LOG_LEVEL", "verbose", "BOT_LOG_LEVEL: must be one of DEBUG, INFO, WARNING, ERROR"),
        ("BOT_LOG_LEVEL", "CRITICAL", "BOT_LOG_LEVEL: must be one of"),
        ("BOT_LOG_FORMAT", "logfmt", "BOT_LOG_FORMAT: must be json or text"),
        (
            "MONGODB_ATLAS_CLIENT_ID",
            "mdb_sa_id_x",
            "MONGODB_ATLAS_CLIENT_SECRET: must be set together",
        ),
    ],
)
def test_malformed_value_names_the_variable_in_one_line(monkeypatch, name, value, needle):
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as err:
        load_settings()
    message = str(err.value)
    assert message.startswith(needle.split(":")[0] + ":")
    assert needle in message
    assert "\n" not in message


def test_valid_fernet_key_is_accepted(monkeypatch):
    monkeypatch.setenv("BOT_SECRET_KEY", "x" * 43 + "=")
    assert load_settings().BOT_SECRET_KEY == "x" * 43 + "="


@pytest.mark.parametrize(
    ("level", "fmt", "expected"),
    [("debug", "JSON", ("DEBUG", "json")), (" Warning ", "text", ("WARNING", "text"))],
)
def test_log_level_and_format_are_read_in_any_case(monkeypatch, level, fmt, expected):
    monkeypatch.setenv("BOT_LOG_LEVEL", level)
    monkeypatch.setenv("BOT_LOG_FORMAT", fmt)
    s = load_settings()
    assert expected == (s.BOT_LOG_LEVEL, s.BOT_LOG_FORMAT)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("BOT_SECRET_KEY", "Zm9vYmFyYmF6cXV4cXV1eGNvcmdlZ3JhdWx0Z2FycGx5d2FsZG8="),
        ("SLACK_BOT_TOKEN", "oops-xoxb-123456789012-abcdefghijklmnop"),
        ("SLACK_APP_TOKEN", "xoxb-not-an-app-token-123456789"),
    ],
)
def test_a_malformed_secret_is_never_repeated_in_the_error(name, value):
    with pytest.raises(ConfigError) as caught:
        load_settings(_env_file=None, **{name: value})
    message = str(caught.value)
    assert message.startswith(f"{name}: ")
    assert value not in message and value[:12] not in message


def test_a_database_url_error_masks_its_password():
    with pytest.raises(ConfigError) as caught:
        load_settings(_env_file=None, DATABASE_URL="mysql://user:hunter2secret@db/x")
    assert "hunter2secret" not in str(caught.value) and "***" in str(caught.value)


def test_the_repr_of_settings_and_deps_never_shows_a_secret(tmp_path: Path) -> None:
    from bot.deps import Deps
    from bot.services.credentials import OrgCredentials

    secrets = {
        "SLACK_BOT_TOKEN": "xoxb-1234567890-secret-token",
        "SLACK_SIGNING_SECRET": "signing-secret-value-123",
        "MONGODB_ATLAS_CLIENT_ID": "mdb_sa_id_0123456789abcdef01234567",
        "MONGODB_ATLAS_CLIENT_SECRET": "mdb_sa_sk_client-secret-value",
        "BOT_SECRET_KEY": "x5Nq0c3mB0o3Z3m8yQm5s9c0l1r2Yt6N8aJk4P7wXzE=",
    }
    settings = load_settings(_env_file=None, **secrets)
    credentials = OrgCredentials(settings, None, None)  # type: ignore[arg-type]
    credentials.box()  # the key loaded, as after the first stored credential was used
    deps = Deps(settings=settings, atlas=None, db=None, slack=None, credentials=credentials)  # type: ignore[arg-type]
    for shown in (repr(settings), str(settings), repr(deps)):
        for name, value in secrets.items():
            if name == "MONGODB_ATLAS_CLIENT_ID":
                assert value in shown  # not a secret: it names the service account
            else:
                assert value not in shown and f"{name}='**********'" in shown


# ---- .env.example: every variable, its comment and its default ------------------------------

EXAMPLE = Path(__file__).resolve().parents[2] / ".env.example"
VARIABLE_LINE = re.compile(r"# ([A-Z][A-Z0-9_]*)=(.*)")
# In CONTRACT.md, not read by this release yet: listed in the example, ignored by Settings.
NOT_READ_YET = {"BOT_WORKERS"}


def _example() -> dict[str, str]:
    lines = EXAMPLE.read_text().splitlines()
    found: dict[str, str] = {}
    for n, line in enumerate(lines):
        match = VARIABLE_LINE.fullmatch(line)
        if match is None:
            continue
        before = lines[n - 1]
        assert before.startswith("# ") and (
            VARIABLE_LINE.fullmatch(before) or not before.startswith("# ----")
        ), f"{match[1]} in .env.example has no comment of its own above it"
        found[match[1]] = match[2]
    return found


def test_env_example_lists_every_variable_once():
    assert set(_example()) == set(Settings.model_fields) | NOT_READ_YET
    assert len(re.findall(r"^# [A-Z_]+=", EXAMPLE.read_text(), re.MULTILINE)) == len(_example())
    assert list(Settings.model_fields) == ALL_VARS  # the suite's own list keeps up too


def test_env_example_uncommented_gives_the_defaults(tmp_path):
    values = "".join(f"{name}={value}\n" for name, value in _example().items() if value)
    (tmp_path / ".env").write_text(values)
    from_example = load_settings()
    (tmp_path / ".env").unlink()
    assert from_example == load_settings()
