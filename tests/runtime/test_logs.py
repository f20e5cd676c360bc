"""Logs: JSON lines under ``serve``, readable text elsewhere, and no secret in either."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TypedDict, Unpack

import httpx
import pytest
from cryptography.fernet import Fernet

from bot.atlas import AtlasClient
from bot.core.config import Settings
from bot.core.redaction import REDACTED, Redactor, register_secret
from bot.core.secrets import SecretBox
from bot.runtime import logs
from bot.runtime.app import build_deps
from storage import Database, credentials, links
from tests.app.conftest import CHANNEL, SECRET, TEAM
from tests.app.test_restart import _env, _free_port, _wait
from tests.fakes.slack import SlackDriver

log = logging.getLogger("tests.runtime.test_logs")

# Configured secrets of no recognisable shape: only their registration can hide them.
CONFIGURED = {
    "SLACK_BOT_TOKEN": "xoxz-configured-bot-token-77",  # xoxz: not one of Slack's known kinds
    "SLACK_SIGNING_SECRET": "8f14e45fceea167a5a36dedd4bea2543",
    "SLACK_APP_TOKEN": "xapp-1-A0CONFIGURED-1234-abcdef",
    "MONGODB_ATLAS_CLIENT_SECRET": "configured-client-secret-4b1d",
    "MONGODB_ATLAS_PRIVATE_API_KEY": "c0ffee00-1234-4abc-9def-0123456789ab",
    "BOT_SECRET_KEY": Fernet.generate_key().decode(),
}
# Never registered anywhere: hidden by their shape alone.
SHAPED = {
    "xoxb-2718281828-3141592653-AbCdEfGhIjKlMnOpQrStUvWx": REDACTED,
    "xoxp-1-2-3-deadbeef": REDACTED,
    "xapp-1-A0UNKNOWN-42-cafebabe": REDACTED,
    "Authorization: Bearer eyJhbGciOi.eyJzdWIi.c2lnbmF0dXJl": f"Authorization: Bearer {REDACTED}",
    "bearer abc-DEF_123~+/==": f"bearer {REDACTED}",
    "Authorization: Basic bWRiX3NhX2lkOnNlY3JldA==": f"Authorization: Basic {REDACTED}",
    "mdb_sa_sk_0123456789abcdef0123456789abcdef01234567": REDACTED,
    Fernet(Fernet.generate_key()).encrypt(b"an Atlas secret").decode(): REDACTED,
}


def unique_secret() -> str:
    """A value of no credential shape that no other test has registered."""
    return f"s3cr3t-{uuid.uuid4().hex}"


@pytest.fixture
def configure() -> Iterator:
    """``logs.configure`` into a buffer; the process's logging is put back afterwards."""
    root = logging.getLogger()
    saved_level = root.level
    saved_chatty = {name: logging.getLogger(name).level for name in logs.CHATTY_LOGGERS}
    installed: list[logging.Handler] = []

    def configure_into(settings: Settings | None = None, *, serving: bool = False) -> io.StringIO:
        stream = io.StringIO()
        installed.append(logs.configure(settings, serving=serving, stream=stream))
        return stream

    yield configure_into
    for handler in installed:
        root.removeHandler(handler)
    root.setLevel(saved_level)
    for name, level in saved_chatty.items():
        logging.getLogger(name).setLevel(level)
    logging.captureWarnings(False)


class _TextSettings(TypedDict, total=False):
    """The `Settings` fields that hold text, by their environment names."""

    MONGODB_ATLAS_BASE_URL: str
    MONGODB_ATLAS_CLIENT_ID: str
    MONGODB_ATLAS_CLIENT_SECRET: str
    MONGODB_ATLAS_PUBLIC_API_KEY: str
    MONGODB_ATLAS_PRIVATE_API_KEY: str
    SLACK_BOT_TOKEN: str
    SLACK_SIGNING_SECRET: str
    SLACK_APP_TOKEN: str
    SLACK_API_URL: str
    DATABASE_URL: str
    BOT_SECRET_KEY: str
    BOT_LOG_LEVEL: str
    BOT_LOG_FORMAT: str


def settings(**values: Unpack[_TextSettings]) -> Settings:
    return Settings(_env_file=None, **values)


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


# ---- formats ----------------------------------------------------------------------------------


def test_serve_logs_json_lines_with_time_level_logger_message_and_extras(configure) -> None:
    stream = configure(settings(), serving=True)
    log.debug("not at INFO")
    log.info("linked %s", "C1", extra={"org_id": "5f1a2b3c4d5e6f7a8b9c0d1e", "attempt": 2})
    try:
        raise ZeroDivisionError("division by zero")
    except ZeroDivisionError:
        log.exception("the job failed")
    info, error = (json.loads(line) for line in lines(stream))

    assert list(info)[:4] == ["time", "level", "logger", "message"]
    assert (info["level"], info["logger"], info["message"]) == ("INFO", log.name, "linked C1")
    assert (info["org_id"], info["attempt"]) == ("5f1a2b3c4d5e6f7a8b9c0d1e", 2)
    assert info["time"].endswith("Z")
    moment = datetime.fromisoformat(info["time"].replace("Z", "+00:00"))
    offset = moment.utcoffset()
    assert offset is not None and offset.total_seconds() == 0
    assert abs((datetime.now(UTC) - moment).total_seconds()) < 60
    assert "exc_info" not in info
    assert (error["level"], error["message"]) == ("ERROR", "the job failed")
    assert error["exc_info"].startswith("Traceback (most recent call last):")
    assert error["exc_info"].endswith("ZeroDivisionError: division by zero")


def test_other_commands_log_readable_text_at_warning(configure) -> None:
    stream = configure(settings())
    log.info("not shown")
    log.warning("the key file %s can be read by others", "/data/key")
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        log.exception("could not post")
    assert lines(stream) == [
        f"WARNING {log.name}: the key file /data/key can be read by others",
        f"ERROR {log.name}: could not post (ValueError: bad thing)",  # no traceback for people
    ]


def test_the_variables_choose_format_and_level(configure) -> None:
    stream = configure(settings(BOT_LOG_FORMAT="text", BOT_LOG_LEVEL="DEBUG"), serving=True)
    log.debug("shown at DEBUG")
    try:
        raise KeyError("k")
    except KeyError:
        log.exception("with its traceback at DEBUG")
    first, second, *traceback = lines(stream)
    assert first == f"DEBUG {log.name}: shown at DEBUG"
    assert second == f"ERROR {log.name}: with its traceback at DEBUG"
    assert traceback[0] == "Traceback (most recent call last):"

    stream = configure(settings(BOT_LOG_FORMAT="json", BOT_LOG_LEVEL="ERROR"))
    log.warning("not at ERROR")
    log.error("shown")
    assert [json.loads(line)["message"] for line in lines(stream)] == ["shown"]


def test_third_party_chatter_waits_for_debug(configure) -> None:
    stream = configure(settings(), serving=True)
    logging.getLogger("httpx").info('HTTP Request: GET https://cloud.mongodb.com "200 OK"')
    logging.getLogger("apscheduler.executors.default").info('Running job "poll"')
    logging.getLogger("bot.runtime.jobs").info("job poll was cancelled while stopping")
    assert [json.loads(line)["logger"] for line in lines(stream)] == ["bot.runtime.jobs"]


# ---- redaction --------------------------------------------------------------------------------


def test_configured_secrets_are_redacted_everywhere_in_the_line(configure) -> None:
    stream = configure(
        settings(
            MONGODB_ATLAS_CLIENT_ID="mdb_sa_id_x", MONGODB_ATLAS_PUBLIC_API_KEY="pub", **CONFIGURED
        ),
        serving=True,
    )
    for name, secret in CONFIGURED.items():
        log.warning("%s is %s", name, secret, extra={"detail": f"value={secret}"})
    try:
        try:
            raise OSError(f"connect failed with {CONFIGURED['MONGODB_ATLAS_CLIENT_SECRET']}")
        except OSError as cause:
            raise RuntimeError(f"token {CONFIGURED['SLACK_BOT_TOKEN']} refused") from cause
    except RuntimeError:
        log.exception("posting failed for %s", CONFIGURED["SLACK_SIGNING_SECRET"])
    text = stream.getvalue()
    for secret in CONFIGURED.values():
        assert secret not in text
    records = [json.loads(line) for line in lines(stream)]
    for record in records[:-1]:
        assert record["message"].endswith(f" is {REDACTED}")
        assert record["detail"] == f"value={REDACTED}"
    failure = records[-1]
    assert failure["message"] == f"posting failed for {REDACTED}"
    assert f"OSError: connect failed with {REDACTED}" in failure["exc_info"]
    assert f"RuntimeError: token {REDACTED} refused" in failure["exc_info"]


@pytest.mark.parametrize(
    ("text", "expected"), list(SHAPED.items()), ids=[f"shape-{n}" for n in range(len(SHAPED))]
)
def test_credential_shapes_are_redacted_without_being_registered(text, expected) -> None:
    redactor = Redactor()
    assert (
        redactor.redact(f"call failed: {text} (retrying)") == f"call failed: {expected} (retrying)"
    )


def test_shapes_leave_ordinary_text_alone() -> None:
    text = "org 5f1a2b3c4d5e6f7a8b9c0d1e: the basic plan, mdb_sa_id_0123, xoxo hugs"
    assert Redactor().redact(text) == text


def test_a_secret_is_redacted_as_json_escapes_it_and_as_a_url_carries_it(configure) -> None:
    secret = unique_secret() + '"\\=é+/ &'
    register_secret(secret)
    stream = configure(settings(), serving=True)
    log.warning("body: %s", json.dumps({"secret": secret}))  # escaped twice in the JSON line
    log.warning("url: %s", httpx.URL("https://example.com/", params={"s": secret}))
    log.warning("extra", extra={"form": {"values": [secret]}})
    text = stream.getvalue()
    assert "s3cr3t-" not in text
    assert text.count(REDACTED) == 3


def test_short_values_are_not_treated_as_secrets() -> None:
    redactor = Redactor()
    redactor.register("abc12")  # would blank out every "abc12" of every line
    redactor.register("")
    redactor.register(None)
    assert redactor.redact("abc12 and more") == "abc12 and more"


def test_the_pattern_is_rebuilt_only_for_a_new_secret() -> None:
    redactor = Redactor()
    secret = unique_secret()
    redactor.register(secret)
    pattern = redactor._pattern
    redactor.register(secret)
    assert redactor._pattern is pattern
    redactor.register(unique_secret())
    assert redactor._pattern is not pattern


def test_a_secret_decrypted_at_run_time_is_redacted_from_then_on(configure) -> None:
    key = Fernet.generate_key()
    secret = unique_secret()
    token = Fernet(key).encrypt(secret.encode())  # stored by another process, say
    box = SecretBox(key.decode())
    stream = configure(settings(), serving=True)
    log.warning("before: %s", secret)
    assert box.decrypt(token) == secret
    log.warning("after: %s", secret)
    before, after = (json.loads(line)["message"] for line in lines(stream))
    assert before == f"before: {secret}"  # nobody knew it yet
    assert after == f"after: {REDACTED}"


async def test_an_orgs_stored_credentials_are_redacted_once_deps_uses_them(
    configure, db: Database
) -> None:
    key, secret, org = Fernet.generate_key().decode(), unique_secret(), "5f1a2b3c4d5e6f7a8b9c0d1e"
    with db.session() as session:
        credentials.set_credential(
            session,
            org_id=org,
            kind="api_key",
            public_id="abcdefgh",
            ciphertext=Fernet(key.encode()).encrypt(secret.encode()),
            key_id=SecretBox(key).key_id,
            updated_by="U_ADMIN",
        )
    url = db.engine.url.render_as_string(hide_password=False)
    deps = build_deps(settings(DATABASE_URL=url, BOT_SECRET_KEY=key), atlas=AtlasClient(), db=db)
    stream = configure(settings(), serving=True)
    try:
        log.error("before: %s", secret)
        await deps.credentials.client(org)  # decrypts the stored secret for the org's client
        log.error("after: %s", secret)
    finally:
        await deps.credentials.aclose()
        await deps.atlas.aclose()
    before, after = (json.loads(line)["message"] for line in lines(stream))
    assert (before, after) == (f"before: {secret}", f"after: {REDACTED}")


# ---- the real processes -----------------------------------------------------------------------


def test_serve_logs_json_on_stderr_without_any_secret(sandbox, fake_slack, db, tmp_path) -> None:
    org = sandbox.data.org_ids[0]
    creds = sandbox.data.credentials
    key = Fernet.generate_key().decode()
    box = SecretBox(key)
    with db.session() as session:
        links.add_link(session, team_id=TEAM, channel_id=CHANNEL, org_id=org, created_by="U_ADMIN")
        # The org's own API key pair, stored encrypted: serve decrypts it at its first `pending`.
        credentials.set_credential(
            session,
            org_id=org,
            kind="api_key",
            public_id=creds.public_key,
            ciphertext=box.encrypt(creds.private_key),
            key_id=box.key_id,
            updated_by="U_ADMIN",
        )
    env = {**_env(sandbox, fake_slack, db), "SLACK_BOT_TOKEN": "xoxb-serve-" + uuid.uuid4().hex}
    env["BOT_SECRET_KEY"] = key
    secrets = {
        "configured": [
            env["SLACK_BOT_TOKEN"],
            SECRET,  # the signing secret
            env["MONGODB_ATLAS_CLIENT_SECRET"],
            key,
        ],
        "decrypted": [creds.private_key],
        "shaped": ["xoxp-1-2-3-unknowntoken", "mdb_sa_sk_" + "f" * 40, box.encrypt("x").decode()],
    }
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    stderr_path, stdout_path = tmp_path / "serve.stderr", tmp_path / "serve.stdout"
    with stderr_path.open("w") as err, stdout_path.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bot", "serve", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=err,
            cwd=tmp_path,
        )
    try:
        _wait(lambda: _healthy(proc, url), 30, "serve to answer /healthz")
        driver = SlackDriver(url, SECRET, fake=fake_slack)
        assert driver.command_sync("pending").status_code == 200
        _wait(lambda: fake_slack.calls_to("chat.postMessage"), 15, "the pending answer")
        assert any(  # the stored key pair was used (so decrypted), not the service account
            r.headers.get("authorization", "").startswith("Digest")
            for r in sandbox.state.requests_for("listInvoicePending", org)
        )
        # A misconfigured probe or client: every secret reaches uvicorn's access log.
        every = [s for group in secrets.values() for s in group]
        for secret in every:
            httpx.get(f"{url}/healthz/{secret}", timeout=5)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()

    text = stderr_path.read_text()
    for group, values in secrets.items():
        for secret in values:
            assert secret not in text, (group, secret)
    records = [json.loads(line) for line in text.splitlines() if line.strip()]  # all JSON
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
    loggers = {r["logger"] for r in records}
    assert {"bot.runtime.server", "uvicorn.error", "uvicorn.access"} <= loggers, loggers
    probes = [r["message"] for r in records if "/healthz/" in r["message"]]
    assert len(probes) == len(every)
    assert all(f"/healthz/{REDACTED} HTTP" in probe for probe in probes), probes
    assert stdout_path.read_text() == ""


def _healthy(proc: subprocess.Popen, url: str) -> bool:
    if proc.poll() is not None:
        pytest.fail(f"serve exited with {proc.returncode}")
    try:
        return httpx.get(url + "/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _cli_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in ("DATABASE_URL", "PORT")
        and not name.startswith(("MONGODB_ATLAS_", "SLACK_", "BOT_"))
    }
    return {**env, "TMPDIR": str(tmp_path), **extra}


def test_shell_logs_stay_readable_text(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bot", "shell"],
        env=_cli_env(tmp_path, BOT_LOG_LEVEL="INFO"),
        cwd=tmp_path,
        input=b"/atlas-billing pending\n",
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    err = done.stderr.decode().splitlines()
    assert err, "INFO shows the migrations at least"
    for line in err:
        assert re.fullmatch(r"(DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+: .+", line), line
        assert not line.startswith("{")
    assert "Traceback" not in done.stderr.decode()


def test_a_bad_log_variable_is_one_line_naming_it(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bot", "db", "upgrade"],
        env=_cli_env(tmp_path, BOT_LOG_LEVEL="loud"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr == (
        "error: BOT_LOG_LEVEL: must be one of DEBUG, INFO, WARNING, ERROR, got 'loud'\n"
    )


def _access(method: str, path: str, status: int) -> logging.LogRecord:
    """A record shaped like uvicorn's access log line."""
    return logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", method, path, "1.1", status),
        None,
    )


def test_successful_probes_are_left_out_of_the_access_log_and_failures_are_not():
    from bot.runtime.logs import quiet_probes

    assert quiet_probes(_access("GET", "/healthz", 200)) is False
    assert quiet_probes(_access("GET", "/metrics", 200)) is False
    assert quiet_probes(_access("GET", "/healthz", 503)) is True  # a failing probe is news
    assert quiet_probes(_access("POST", "/slack/events", 200)) is True
    assert quiet_probes(_access("GET", "/healthz/extra", 404)) is True
    other = logging.LogRecord(
        "bot.runtime.server", logging.INFO, __file__, 1, "GET /healthz", (), None
    )
    assert quiet_probes(other) is True
