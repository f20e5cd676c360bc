"""The ``billing-bot`` command line: Atlas queries, the sandbox, the shell and the server.

Exit status (CONTRACT.md): 0 success; 2 bad usage or invalid input (nothing is
sent to Atlas); 1 any other failure, with Atlas's ``errorCode`` and ``detail``.
Errors are one line on stderr, never a traceback.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Coroutine
from datetime import date
from typing import Annotated, Any

import typer

from bot.atlas import (
    AtlasAPIError,
    AtlasClient,
    AtlasError,
    CostQuery,
    CostResult,
    InvalidInput,
    NotReady,
    validate_cost_query,
    validate_invoice_id,
    validate_org_id,
)
from bot.core import version
from bot.core.config import ConfigError, Settings, load_settings
from bot.render.text import costs_text, invoice_text, pending_text
from bot.runtime import logs
from bot.services import spend
from bot.services.credentials import atlas_client

log = logging.getLogger("bot.cli")

app = typer.Typer(
    help="Slack bot and tools for MongoDB Atlas billing.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
atlas_app = typer.Typer(help="Query the Atlas billing API directly.", no_args_is_help=True)
app.add_typer(atlas_app, name="atlas")


def _print_version(requested: bool) -> None:
    if requested:
        typer.echo(f"billing-bot {version.version()}")
        raise typer.Exit(0)


@app.callback()
def _options(
    _version: Annotated[
        bool,
        typer.Option(
            "--version",
            help="Print the installed version and exit.",
            callback=_print_version,
            is_eager=True,
        ),
    ] = False,
) -> None:
    """Slack bot and tools for MongoDB Atlas billing."""


class CliError(Exception):
    """A failure to report as one line with a given exit status."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def _run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coro)


def _settings(*, serving: bool = False) -> Settings:
    """The settings, with the logs switched to the format and level they ask for."""
    settings = load_settings()
    logs.configure(settings, serving=serving)
    return settings


def _emit_json(document: object) -> None:
    sys.stdout.write(json.dumps(document, indent=2, default=str) + "\n")


def _parse_day(value: str, option: str) -> date:
    """A first-of-month date for a Cost Explorer bound, with the option named in any error."""
    try:
        day = date.fromisoformat(value)
    except ValueError:
        raise CliError(
            f"{option} must be a date YYYY-MM-DD on the first day of a month, got {value!r}", 2
        ) from None
    if day.day != 1:
        raise CliError(f"{option} must be the first day of a month (YYYY-MM-01), got {value!r}", 2)
    return day


JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print one JSON document (amounts in cents).")
]


@atlas_app.command("pending")
def atlas_pending(
    org_id: Annotated[str, typer.Argument(metavar="ORG_ID")], as_json: JsonOpt = False
) -> None:
    """Pending (month-to-date) invoices of one org, with totals."""
    validate_org_id(org_id)

    async def go() -> spend.PendingSummary:
        async with atlas_client(_settings()) as client:
            return await spend.pending(client, org_id)

    summary = _run(go())
    if as_json:
        _emit_json(summary.to_json())
    else:
        typer.echo(pending_text(summary))


@atlas_app.command("invoice")
def atlas_invoice(
    org_id: Annotated[str, typer.Argument(metavar="ORG_ID")],
    invoice_id: Annotated[str, typer.Argument(metavar="INVOICE_ID")],
    csv: Annotated[bool, typer.Option("--csv", help="Print the invoice's raw CSV.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """One invoice: a summary by default, the raw CSV with --csv."""
    if csv and as_json:
        raise CliError("--csv and --json cannot be combined", 2)
    validate_org_id(org_id)
    validate_invoice_id(invoice_id)

    async def go() -> spend.InvoiceSummary | None:
        async with atlas_client(_settings()) as client:
            if csv:
                out = sys.stdout.buffer
                async with client.invoice_csv(org_id, invoice_id) as chunks:
                    async for chunk in chunks:
                        out.write(chunk)
                out.flush()
                return None
            return await spend.invoice(client, org_id, invoice_id)

    summary = _run(go())
    if summary is None:
        return
    if as_json:
        _emit_json(summary.to_json())
    else:
        typer.echo(invoice_text(summary))


GROUPS = ("services", "projects", "clusters", "organizations")
MAX_WAIT_SECONDS = 15 * 60


@atlas_app.command("costs")
def atlas_costs(
    org_id: Annotated[str, typer.Argument(metavar="ORG_ID")],
    start: Annotated[str, typer.Option("--start", metavar="YYYY-MM-DD", help="First of a month.")],
    end: Annotated[
        str, typer.Option("--end", metavar="YYYY-MM-DD", help="First of a month, exclusive.")
    ],
    group_by: Annotated[
        str | None,
        typer.Option("--group-by", metavar="services|projects|clusters|organizations"),
    ] = None,
    service: Annotated[list[str] | None, typer.Option("--service", metavar="S")] = None,
    project: Annotated[list[str] | None, typer.Option("--project", metavar="ID")] = None,
    cluster: Annotated[list[str] | None, typer.Option("--cluster", metavar="ID")] = None,
    include_partial: Annotated[bool, typer.Option("--include-partial")] = False,
    wait: Annotated[bool, typer.Option("--wait", help="Poll until the result is ready.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Start a Cost Explorer query and print its token; --wait prints the result."""
    start_day, end_day = _parse_day(start, "--start"), _parse_day(end, "--end")
    if end_day <= start_day:
        raise CliError(f"--end must be after --start (the end is exclusive), got {end!r}", 2)
    if group_by is not None and group_by not in GROUPS:
        raise CliError(f"--group-by must be one of {'|'.join(GROUPS)}, got {group_by!r}", 2)
    query = CostQuery(
        start=start_day,
        end=end_day,
        group_by=group_by,
        organizations=(org_id,),
        projects=tuple(project or ()),
        clusters=tuple(cluster or ()),
        services=tuple(service or ()),
        include_partial_matches=include_partial,
    )
    validate_org_id(org_id)
    validate_cost_query(query)

    async def go() -> tuple[str, spend.CostSummary | None]:
        async with atlas_client(_settings()) as client:
            token = await client.create_cost_query(org_id, query)
            if not wait:
                return token, None
            result = await _wait_for(client, org_id, token)
            return token, spend.summarise_costs(result, group_by)

    token, summary = _run(go())
    if summary is None:
        if as_json:
            _emit_json({"orgId": org_id, "token": token})
        else:
            typer.echo(token)
    elif as_json:
        _emit_json({"orgId": org_id, "token": token, **summary.to_json()})
    else:
        typer.echo(costs_text(summary))


async def _wait_for(client: AtlasClient, org_id: str, token: str) -> CostResult:
    """Poll with growing pauses; a spinner on stderr when it is a terminal."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    delay, polls = 1.0, 0
    status = None
    if sys.stderr.isatty():
        from rich.console import Console

        status = Console(stderr=True).status("Waiting for Cost Explorer…")
        status.start()
    try:
        while True:
            polls += 1
            result = await client.cost_result(org_id, token)
            if not isinstance(result, NotReady):
                return result
            elapsed = loop.time() - started
            if elapsed > MAX_WAIT_SECONDS:
                raise CliError(
                    f"Cost Explorer did not finish within {MAX_WAIT_SECONDS // 60} minutes; "
                    f"poll again later with the token {token}"
                )
            if status is not None:
                status.update(f"Waiting for Cost Explorer… {elapsed:.0f}s, {polls} polls")
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 10.0)
    finally:
        if status is not None:
            status.stop()


@app.command("sandbox")
def sandbox(
    port: Annotated[int, typer.Option("--port", min=0, max=65535)] = 8765,
    seed: Annotated[int, typer.Option("--seed")] = 1,
) -> None:
    """Serve the sandbox Atlas Admin API on 127.0.0.1 and print how to point the bot at it."""
    from bot.sandbox.runner import serve_forever

    serve_forever(port=port, seed=seed, echo=typer.echo)


@app.command("shell")
def shell(
    org: Annotated[str | None, typer.Option("--org", metavar="ORG_ID", help="Org to link.")] = None,
) -> None:
    """Run the whole bot in this terminal (against the sandbox Atlas unless credentials are set)."""
    from bot.shell.run import run

    if org is not None:
        validate_org_id(org)
    settings = _settings()

    def echo(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    raise typer.Exit(_run(run(settings, org_id=org, stdin=sys.stdin, echo=echo)))


@app.command("serve")
def serve(
    port: Annotated[int | None, typer.Option("--port", min=1, max=65535)] = None,
) -> None:
    """Run the Slack app (HTTP mode, or Socket Mode when SLACK_APP_TOKEN is set) and the scheduler."""
    from bot.runtime.server import serve as run_server

    settings = _settings(serving=True)
    run_server(settings, port=port or settings.PORT)


jobs_app = typer.Typer(help="Run scheduler jobs by hand.", no_args_is_help=True)
app.add_typer(jobs_app, name="jobs")


@jobs_app.command("run")
def jobs_run(
    name: Annotated[str, typer.Argument(metavar="poll|thresholds|digests|outbox")],
) -> None:
    """Run one scheduler job once, now, and exit."""
    from bot.runtime.app import build_deps
    from bot.runtime.jobs import JOBS

    if name not in JOBS:
        raise CliError(f"unknown job {name!r}; jobs: {', '.join(JOBS)}", 2)
    settings = _settings()
    if name in ("poll", "outbox") and not settings.SLACK_BOT_TOKEN:
        raise CliError(f"SLACK_BOT_TOKEN: must be set to run the {name} job (it posts to Slack)", 2)

    async def go() -> object:
        deps = build_deps(settings)
        try:
            await asyncio.to_thread(deps.db.upgrade)
            return await JOBS[name](deps)
        finally:
            await deps.aclose()

    typer.echo(f"{name}: {_run(go())}")


db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
app.add_typer(db_app, name="db")


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply the schema migrations to DATABASE_URL."""
    from storage import upgrade

    settings = _settings()
    upgrade(settings.DATABASE_URL)
    typer.echo("database schema is up to date")


secrets_app = typer.Typer(help="Encryption of stored Atlas credentials.", no_args_is_help=True)
app.add_typer(secrets_app, name="secrets")


@secrets_app.command("rotate")
def secrets_rotate(
    new_key: Annotated[
        str,
        typer.Option(
            "--new-key",
            metavar="KEY",
            help="The new Fernet key (32 url-safe base64-encoded bytes).",
        ),
    ],
) -> None:
    """Re-encrypt every stored Atlas credential under a new BOT_SECRET_KEY.

    Safe to run again after an interruption: rows already under the new key are skipped.
    """
    from pathlib import Path

    from bot.core.secrets import SecretBox, SecretError, load_key, write_key_file
    from bot.services.credentials import rotate
    from storage import Database, credentials

    try:
        new_id = SecretBox(new_key, source="--new-key").key_id
    except SecretError as exc:
        raise CliError(str(exc), 2) from None
    settings = _settings()
    db = Database(settings.DATABASE_URL)
    try:
        db.upgrade()
        try:
            current = load_key(settings)
            if current is None:
                with db.session() as session:
                    stored = len(credentials.all_credentials(session))
                if stored:
                    raise CliError(
                        f"BOT_SECRET_KEY is not set and there is no key file, yet {stored} "
                        "credential(s) are stored: set BOT_SECRET_KEY to the key they were "
                        "stored with and run this again"
                    )
                count, key_path = 0, None
            else:
                key, source = current
                count = rotate(db, key, new_key)
                key_path = Path(source) if source != "BOT_SECRET_KEY" else None
                if key_path is not None:
                    write_key_file(key_path, new_key)
        except SecretError as exc:
            raise CliError(str(exc)) from None
    finally:
        db.dispose()
    typer.echo(
        f"re-encrypted {count} stored Atlas credential(s) under the new key (key id {new_id})"
    )
    if key_path is not None:
        typer.echo(f"the key file {key_path} now holds the new key")
    typer.echo(
        "Set BOT_SECRET_KEY to the new key wherever the bot runs (every replica) and restart it: "
        "the stored credentials can no longer be read with the old key."
    )


def _describe(exc: BaseException) -> tuple[str, int]:
    """The one line and exit status a failure is reported with."""
    if isinstance(exc, CliError):
        return str(exc), exc.code
    if isinstance(exc, ConfigError | InvalidInput):
        return str(exc), 2
    if isinstance(exc, AtlasAPIError):
        if exc.status in (401, 403):
            from bot.render.explain import atlas_remedy  # only on this path: it loads Slack's SDK

            return f"Atlas answered {exc.summary()}. {atlas_remedy(exc)}", 1
        return f"Atlas answered {exc.summary()}", 1
    if isinstance(exc, AtlasError):
        return str(exc), 1
    from bot.core.secrets import SecretError
    from storage import StorageConfigError, StorageError

    if isinstance(exc, SecretError):
        return f"BOT_SECRET_KEY: {exc}", 2
    if isinstance(exc, StorageConfigError):
        return f"DATABASE_URL: {exc}", 2
    if isinstance(exc, StorageError):
        return f"database: {exc}", 1
    return f"unexpected failure: {type(exc).__name__}: {exc}", 1


def _usage_error(exc: typer.TyperException) -> int:
    """Click's usage errors as one line: what was wrong, the form wanted, where help is."""
    ctx = getattr(exc, "ctx", None)
    if type(exc).__name__ == "NoArgsIsHelpError" and ctx is not None:
        sys.stdout.write(ctx.get_help() + "\n")
        return 2
    message = exc.format_message()
    metavar = getattr(getattr(exc, "param", None), "metavar", None)
    if metavar and metavar not in message:
        message = f"{message.rstrip('.')} (form: {metavar})."
    where = ctx.command_path if ctx is not None else "billing-bot"
    message = message if message.endswith(".") else message + "."
    sys.stderr.write(f"error: {message} See `{where} --help`.\n")
    return exc.exit_code


def main() -> None:
    logs.configure()  # readable text at WARNING until a command has read its settings
    try:
        code = app(standalone_mode=False)
    except typer.Exit as done:
        sys.exit(done.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        sys.exit(130)
    except typer.TyperException as exc:
        sys.exit(_usage_error(exc))
    except Exception as exc:
        log.debug("command failed", exc_info=exc)
        message, code = _describe(exc)
        sys.stderr.write(f"error: {message}\n")
        sys.exit(code)
    sys.exit(code if isinstance(code, int) else 0)
