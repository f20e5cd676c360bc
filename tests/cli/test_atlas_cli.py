"""The ``billing-bot`` command line run as a user runs it: a subprocess against the sandbox Atlas."""

# Black-box: every test starts ``python -m bot …`` with a clean environment (no Atlas, Slack,
# database or bot variables inherited; a temporary working directory so no stray ``.env`` is
# read) and asserts on its exit status, stdout and stderr. Expected figures come from the
# sandbox's own data, never from the bot's code. Start-up costs about a second per process,
# so commands that do not depend on each other run concurrently.

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
from collections import defaultdict
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import IO

import httpx
import pytest

from bot.core.config import Settings
from bot.sandbox import Fault, LoggedRequest, SandboxData, SandboxServer
from bot.sandbox.data import Invoice, Org
from bot.slack.client import slack_client

TIMEOUT = 60
SHELL_TIMEOUT = 120
CSV_MEDIA_TYPE = "application/vnd.atlas.2023-01-01+csv"
MONEY = re.compile(r"-?\$\d{1,3}(?:,\d{3})*\.\d{2}")
TOKEN = re.compile(r"[A-Za-z0-9]{64}")
UNKNOWN_INVOICE = "0" * 24
# What the contract lets a user set; none of it may leak in from the developer's shell.
_OWN_VARIABLES = ("DATABASE_URL", "PORT")
_OWN_PREFIXES = ("MONGODB_ATLAS_", "SLACK_", "BOT_")


# ---- running the command line ---------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    args: tuple[str, ...]
    code: int
    stdout: bytes
    err: str

    @property
    def out(self) -> str:
        return self.stdout.decode()

    def __str__(self) -> str:  # what a failing assert shows
        return (
            f"billing-bot {' '.join(self.args)} → {self.code}\n{self.out}\n--- stderr\n{self.err}"
        )


def money(cents: int) -> str:
    """The contract's form: ``$12,345.67``, ``-$12.00``."""
    sign = "-" if cents < 0 else ""
    dollars, rest = divmod(abs(cents), 100)
    return f"{sign}${dollars:,}.{rest:02d}"


def cli_env(
    tmp: Path, sandbox: SandboxServer | None = None, *, auth: str | None = None, **extra: str
) -> dict[str, str]:
    """A clean environment aimed at ``sandbox``; ``auth``: ``service-account``, ``api-key``,
    ``no-role`` (a key pair without the billing role) or None.

    ``TMPDIR`` points into the test's directory so whatever the bot leaves behind goes too.
    """
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in _OWN_VARIABLES and not name.startswith(_OWN_PREFIXES)
    }
    env["TMPDIR"] = str(tmp)
    if sandbox is not None:
        env["MONGODB_ATLAS_BASE_URL"] = sandbox.base_url
        creds = sandbox.data.credentials
        env.update(
            {
                "service-account": {
                    "MONGODB_ATLAS_CLIENT_ID": creds.client_id,
                    "MONGODB_ATLAS_CLIENT_SECRET": creds.client_secret,
                },
                "api-key": {
                    "MONGODB_ATLAS_PUBLIC_API_KEY": creds.public_key,
                    "MONGODB_ATLAS_PRIVATE_API_KEY": creds.private_key,
                },
                "no-role": {
                    "MONGODB_ATLAS_PUBLIC_API_KEY": creds.no_role_public_key,
                    "MONGODB_ATLAS_PRIVATE_API_KEY": creds.no_role_private_key,
                },
                None: {},
            }[auth]
        )
    env.update(extra)
    return env


def run(
    args: Sequence[str],
    env: dict[str, str],
    cwd: Path,
    *,
    input: str | None = None,
    timeout: float = TIMEOUT,
) -> Run:
    done = subprocess.run(
        [sys.executable, "-m", "bot", *args],
        env=env,
        cwd=cwd,
        input=input.encode() if input is not None else None,
        stdin=None if input is not None else subprocess.DEVNULL,
        capture_output=True,
        timeout=timeout,
    )
    result = Run(tuple(args), done.returncode, done.stdout, done.stderr.decode())
    assert "Traceback" not in result.err, result
    return result


def run_all(commands: Sequence[tuple[Sequence[str], dict[str, str]]], cwd: Path) -> list[Run]:
    """Run independent commands concurrently; results in the order given."""
    workers = min(len(commands), 2 * (os.cpu_count() or 1), 8)
    with ThreadPoolExecutor(max_workers=max(workers, 1)) as pool:
        futures = [pool.submit(run, args, env, cwd) for args, env in commands]
        return [f.result() for f in futures]


def one_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err}"
    return lines[0]


def assert_money_well_formed(text: str) -> None:
    for token in re.findall(r"-?\$[\d,.]*", text):
        assert MONEY.fullmatch(token), f"{token!r} is not money like $1,234.56"


def amount_line(label: str, cents: int) -> re.Pattern[str]:
    """A line of a table: the label, blanks, then the amount, right-aligned."""
    return re.compile(rf"^\s+{re.escape(label)}\s+{re.escape(money(cents))}$", re.MULTILINE)


def cents_fields(document: object, path: str = "$") -> Iterator[tuple[str, object]]:
    """Every (path, value) whose key ends in ``Cents``, at any depth."""
    if isinstance(document, dict):
        for key, value in document.items():
            if key.endswith("Cents"):
                yield f"{path}.{key}", value
            yield from cents_fields(value, f"{path}.{key}")
    elif isinstance(document, list):
        for index, value in enumerate(document):
            yield from cents_fields(value, f"{path}[{index}]")


def json_document(result: Run) -> dict:
    """stdout is exactly one JSON document, and every ``…Cents`` in it is an integer."""
    document = json.loads(result.out)  # raises on anything before or after the document
    assert isinstance(document, dict)
    amounts = list(cents_fields(document))
    assert amounts
    for path, value in amounts:
        assert type(value) is int, f"{path} = {value!r} is not integer cents"
    return document


# ---- what the sandbox holds -----------------------------------------------------------------


def by_project(invoice: Invoice) -> list[tuple[str, int]]:
    """An invoice's line items by project name, biggest first (credits have no project)."""
    totals: dict[str, int] = defaultdict(int)
    for item in invoice.line_items():
        if item.cluster is not None:
            totals[item.cluster.project_name] += item.total_cents
    return sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))


def detailed_invoice(org: Org) -> Invoice:
    """A closed invoice with a credit and a starting balance, so every amount line differs."""
    return next(i for i in org.closed if i.credits_cents and i.starting_balance_cents)


def closed_months(org: Org, count: int = 3) -> tuple[str, str, list[Invoice]]:
    """``--start``/``--end`` covering the last ``count`` closed months, and their invoices."""
    invoices = sorted(org.closed[:count], key=lambda i: i.start)
    return invoices[0].start.isoformat(), invoices[-1].end.isoformat(), invoices


@pytest.fixture
def org(sandbox: SandboxServer) -> Org:
    """The first org: it pays sales tax, so every amount line of its invoices differs."""
    found = sandbox.data.org(sandbox.data.org_ids[0])
    assert found is not None
    return found


# ---- atlas pending --------------------------------------------------------------------------


@pytest.mark.dates
@pytest.mark.parametrize(
    ("auth", "scheme"), [("service-account", "Bearer "), ("api-key", "Digest ")]
)
def test_pending_text_and_json(
    sandbox: SandboxServer, org: Org, tmp_path: Path, auth: str, scheme: str
) -> None:
    env = cli_env(tmp_path, sandbox, auth=auth)
    text, as_json = run_all(
        [(["atlas", "pending", org.id], env), (["atlas", "pending", org.id, "--json"], env)],
        tmp_path,
    )
    pending = org.pending

    assert text.code == 0, text
    assert text.err == ""
    assert text.out.startswith(
        f"Month-to-date spend of organization {org.id}: {money(pending.subtotal_cents)}\n"
    ), text
    assert pending.id in text.out
    assert amount_line("Usage subtotal", pending.subtotal_cents).search(text.out), text
    assert amount_line("Billed", pending.amount_billed_cents).search(text.out), text
    projects = by_project(pending)
    if projects:  # on the first of a month the pending invoice has no usage yet
        assert "\nTop projects:\n" in text.out, text
        for name, cents in projects[:5]:
            assert amount_line(name, cents).search(text.out), (name, text)
    else:
        assert "Top projects" not in text.out
    assert_money_well_formed(text.out)

    assert as_json.code == 0, as_json
    assert as_json.err == ""
    document = json_document(as_json)
    assert document["orgId"] == org.id
    assert document["usageCents"] == pending.subtotal_cents
    assert document["amountBilledCents"] == pending.amount_billed_cents
    assert [i["invoiceId"] for i in document["invoices"]] == [pending.id]

    # (a Digest client's first, unauthenticated try of each connection gets a 401 challenge)
    answered = [
        c for c in sandbox.state.requests_for("listInvoicePending", org.id) if c.status != 401
    ]
    # At least the two runs' requests (the session-wide sandbox may also see a request from a
    # server another test is still stopping), all answered and authenticated the expected way.
    ours = [c for c in answered if c.headers.get("authorization", "").startswith(scheme)]
    assert len(ours) >= 2 and all(c.status == 200 for c in ours)


# ---- atlas invoice --------------------------------------------------------------------------


def test_invoice_summary_and_json(sandbox: SandboxServer, org: Org, tmp_path: Path) -> None:
    invoice = detailed_invoice(org)
    env = cli_env(tmp_path, sandbox, auth="service-account")
    text, as_json = run_all(
        [
            (["atlas", "invoice", org.id, invoice.id], env),
            (["atlas", "invoice", org.id, invoice.id, "--json"], env),
        ],
        tmp_path,
    )
    # ATLAS-NOTES.md: owed = Σ payments (amountBilledCents × unitPrice + salesTaxCents) less the
    # starting balance; the sandbox's payments are in USD (unitPrice 1) and add up to the bill.
    owed = invoice.amount_billed_cents - invoice.starting_balance_cents

    assert text.code == 0, text
    assert text.err == ""
    assert text.out.startswith(f"Invoice {invoice.id}"), text
    assert org.id in text.out
    for label, cents in (
        ("Usage subtotal", invoice.subtotal_cents),
        ("Credits", invoice.credits_cents),
        ("Sales tax", invoice.sales_tax_cents),
        ("Billed", invoice.amount_billed_cents),
        ("Owed", owed),
    ):
        assert amount_line(label, cents).search(text.out), (label, text)
    assert "\nTop projects:\n" in text.out
    assert_money_well_formed(text.out)

    assert as_json.code == 0, as_json
    assert as_json.err == ""
    document = json_document(as_json)
    assert {k: document[k] for k in ("orgId", "invoiceId", "lineItemCount")} == {
        "orgId": org.id,
        "invoiceId": invoice.id,
        "lineItemCount": invoice.item_count,
    }
    assert (
        document["usageCents"],
        document["creditsCents"],
        document["salesTaxCents"],
        document["amountBilledCents"],
        document["owedCents"],
    ) == (
        invoice.subtotal_cents,
        invoice.credits_cents,
        invoice.sales_tax_cents,
        invoice.amount_billed_cents,
        owed,
    )


def test_invoice_csv_is_byte_identical_to_what_atlas_serves(
    sandbox: SandboxServer, org: Org, tmp_path: Path
) -> None:
    invoice = detailed_invoice(org)
    creds = sandbox.data.credentials
    served = httpx.get(
        f"{sandbox.base_url}/api/atlas/v2/orgs/{org.id}/invoices/{invoice.id}/csv",
        headers={"Accept": CSV_MEDIA_TYPE},
        auth=httpx.DigestAuth(creds.public_key, creds.private_key),
        timeout=30,
    )
    assert served.status_code == 200, served.text
    assert served.content == invoice.csv_text().encode()

    result = run(
        ["atlas", "invoice", org.id, invoice.id, "--csv"],
        cli_env(tmp_path, sandbox, auth="api-key"),
        tmp_path,
    )

    assert result.code == 0, result
    assert result.err == ""
    assert result.stdout == served.content


# ---- atlas costs ----------------------------------------------------------------------------


def test_costs_prints_the_token(sandbox: SandboxServer, org: Org, tmp_path: Path) -> None:
    start, end, _ = closed_months(org)
    result = run(
        ["atlas", "costs", org.id, "--start", start, "--end", end],
        cli_env(tmp_path, sandbox, auth="service-account"),
        tmp_path,
    )

    assert result.code == 0, result
    assert result.err == ""
    assert TOKEN.fullmatch(result.out.removesuffix("\n")), result
    created = sandbox.state.requests_for("createCostExplorerProcess", org.id)
    assert [c.status for c in created] == [202]
    assert json.loads(created[0].body)["startDate"] == start


@pytest.mark.dates
def test_costs_wait_prints_the_total_of_those_months(
    sandbox: SandboxServer, org: Org, tmp_path: Path
) -> None:
    # The sandbox's default: the first poll answers "not ready", so --wait really polls.
    start, end, invoices = closed_months(org)
    result = run(
        ["atlas", "costs", org.id, "--start", start, "--end", end, "--wait"],
        cli_env(tmp_path, sandbox, auth="api-key"),
        tmp_path,
    )
    total = sum(i.subtotal_cents for i in invoices)

    assert result.code == 0, result
    assert result.err == ""  # not a terminal: no progress indicator
    assert result.out.startswith(f"Cost Explorer total: {money(total)} "), result
    for invoice in invoices:
        month = invoice.start.isoformat()[:7]
        assert amount_line(month, invoice.subtotal_cents).search(result.out), (month, result)
    assert_money_well_formed(result.out)
    assert len(sandbox.state.requests_for("getCostExplorerUsage", org.id)) >= 2


def test_costs_json_wait_group_by_projects(
    sandbox: SandboxServer, org: Org, tmp_path: Path
) -> None:
    sandbox.state.cost_polls_before_ready = 0
    start, end, invoices = closed_months(org)
    env = cli_env(tmp_path, sandbox, auth="service-account")
    args = ["atlas", "costs", org.id, "--start", start, "--end", end, "--group-by", "projects"]
    text, as_json = run_all(
        [([*args, "--wait"], env), ([*args, "--wait", "--json"], env)], tmp_path
    )
    total = sum(i.subtotal_cents for i in invoices)
    projects: dict[str, int] = defaultdict(int)
    for invoice in invoices:
        for name, cents in by_project(invoice):
            projects[name] += cents

    assert text.code == 0, text
    assert text.err == ""
    assert text.out.startswith(f"Cost Explorer total: {money(total)} "), text
    assert "\nBy projects:\n" in text.out
    for name, cents in projects.items():
        assert amount_line(name, cents).search(text.out), (name, text)

    assert as_json.code == 0, as_json
    assert as_json.err == ""
    document = json_document(as_json)
    assert document["orgId"] == org.id
    assert TOKEN.fullmatch(document["token"])
    assert document["groupBy"] == "projects"
    assert document["totalCents"] == total
    groups = {g["name"]: g["amountCents"] for g in document["byGroup"]}
    assert {name: groups.get(name) for name in projects} == dict(projects)
    assert sum(groups.values()) == total
    assert {m["month"]: m["amountCents"] for m in document["byMonth"]} == {
        i.start.isoformat()[:7]: i.subtotal_cents for i in invoices
    }
    created = sandbox.state.requests_for("createCostExplorerProcess", org.id)
    assert [json.loads(c.body)["groupBy"] for c in created] == ["projects", "projects"]


def test_costs_filtered_by_service(sandbox: SandboxServer, org: Org, tmp_path: Path) -> None:
    sandbox.state.cost_polls_before_ready = 0
    start, end, invoices = closed_months(org)
    months = ("--start", start, "--end", end)
    result = run(
        ["atlas", "costs", org.id, *months, "--service", "Clusters", "--wait"],
        cli_env(tmp_path, sandbox, auth="service-account"),
        tmp_path,
    )
    clusters = sum(
        cents
        for invoice in invoices
        for (_, _, service), cents in invoice.totals.items()
        if service == "Clusters"
    )

    assert result.code == 0, result
    assert result.err == ""
    assert result.out.startswith(f"Cost Explorer total: {money(clusters)} "), result
    assert amount_line("Clusters", clusters).search(result.out), result
    assert "Storage" not in result.out
    assert clusters < sum(i.subtotal_cents for i in invoices)


# ---- bad input: exit 2, one line, nothing sent to Atlas ---------------------------------------

ORG = "03085c0a2f9e6556350e9885"  # any well-formed ID: nothing may reach Atlas anyway
COSTS = ("atlas", "costs", ORG)
MONTHS = ("--start", "2026-08-01", "--end", "2026-11-01")
BAD_INPUT: list[tuple[str, tuple[str, ...], tuple[str, ...]]] = [
    ("org-short", ("atlas", "pending", "abc"), ("organization ID", "'abc'", "24 lowercase hex")),
    ("org-uppercase", ("atlas", "pending", ORG.upper()), ("organization ID", "24 lowercase hex")),
    ("org-dotdot", ("atlas", "pending", "../x"), ("organization ID", "'../x'")),
    ("org-percent-2f", ("atlas", "pending", "a" * 21 + "%2F"), ("organization ID", "%2F")),
    ("invoice-id", ("atlas", "invoice", ORG, "xyz"), ("invoice ID", "'xyz'", "24 lowercase hex")),
    ("csv-and-json", ("atlas", "invoice", ORG, "a" * 24, "--csv", "--json"), ("--csv", "--json")),
    (
        "start-not-first",
        (*COSTS, "--start", "2024-01-15", "--end", "2024-03-01"),
        ("--start", "2024-01-15", "first day of a month"),
    ),
    (
        "end-before-start",
        (*COSTS, "--start", "2026-08-01", "--end", "2026-07-01"),
        ("--end", "2026-07-01", "after"),
    ),
    ("group-by", (*COSTS, *MONTHS, "--group-by", "regions"), ("--group-by", "regions", "services")),
    ("service", (*COSTS, *MONTHS, "--service", "Lasers"), ("service", "Lasers")),
    (
        "start-unparseable",
        (*COSTS, "--start", "yesterday", "--end", "2026-11-01"),
        ("--start", "yesterday", "YYYY-MM-DD"),
    ),
    ("start-missing", (*COSTS, "--end", "2026-11-01"), ("--start", "YYYY-MM-DD")),
    ("org-missing", ("atlas", "costs"), ("ORG_ID",)),
]
KNOWN_BAD_MESSAGES: dict[str, str] = {}


@dataclass(frozen=True)
class Batch:
    results: dict[str, Run]
    requests: list[LoggedRequest]  # what the sandbox received while the batch ran


@pytest.fixture(scope="module")
def bad_input(sandbox_session: SandboxServer, tmp_path_factory: pytest.TempPathFactory) -> Batch:
    """Every bad-input command, run concurrently with valid credentials against the sandbox."""
    tmp = tmp_path_factory.mktemp("bad-input")
    env = cli_env(tmp, sandbox_session, auth="service-account")
    sandbox_session.state.reset()
    results = run_all([(args, env) for _, args, _ in BAD_INPUT], tmp)
    return Batch(
        dict(zip([name for name, _, _ in BAD_INPUT], results, strict=True)),
        list(sandbox_session.state.requests),
    )


@pytest.mark.parametrize("name", [name for name, _, _ in BAD_INPUT])
def test_bad_input_exits_2_before_any_request(bad_input: Batch, name: str) -> None:
    result = bad_input.results[name]

    assert result.code == 2, result
    assert result.out == ""
    assert result.err.strip(), result
    assert bad_input.requests == []


@pytest.mark.parametrize(
    ("name", "fragments"),
    [
        pytest.param(
            name,
            fragments,
            id=name,
            marks=[pytest.mark.xfail(strict=True, reason=KNOWN_BAD_MESSAGES[name])]
            if name in KNOWN_BAD_MESSAGES
            else [],
        )
        for name, _, fragments in BAD_INPUT
    ],
)
def test_bad_input_message_names_the_argument_and_its_form(
    bad_input: Batch, name: str, fragments: tuple[str, ...]
) -> None:
    line = one_line(bad_input.results[name].err)

    assert line.startswith("error: "), line
    for fragment in fragments:
        assert fragment in line, (fragment, line)


def test_missing_option_is_named(bad_input: Batch) -> None:
    # Until the usage box is one line (see KNOWN_BAD_MESSAGES), at least the option is named.
    assert "Missing option '--start'" in bad_input.results["start-missing"].err


# ---- configuration errors: exit 2, one line naming the variable --------------------------------

CONFIG_ERRORS = [
    ("port", {"PORT": "abc"}, "service-account", ("PORT", "'abc'")),
    (
        "base-url",
        {"MONGODB_ATLAS_BASE_URL": "nohttp"},
        "service-account",
        ("MONGODB_ATLAS_BASE_URL", "'nohttp'", "http"),
    ),
    (
        "database-url",
        {"DATABASE_URL": "nonsense"},
        "service-account",
        ("DATABASE_URL", "'nonsense'", "sqlite:///"),
    ),
    (
        "client-id-alone",
        {"MONGODB_ATLAS_CLIENT_ID": "mdb_sa_id_0123456789abcdef01234567"},
        None,
        ("MONGODB_ATLAS_CLIENT_SECRET", "MONGODB_ATLAS_CLIENT_ID"),
    ),
    ("no-credentials", {}, None, ("MONGODB_ATLAS_CLIENT_ID", "billing-bot sandbox")),
]


@pytest.fixture(scope="module")
def config_errors(
    sandbox_session: SandboxServer, tmp_path_factory: pytest.TempPathFactory
) -> Batch:
    tmp = tmp_path_factory.mktemp("config-errors")
    sandbox_session.state.reset()
    commands = [
        (["atlas", "pending", ORG], cli_env(tmp, sandbox_session, auth=auth, **extra))
        for _, extra, auth, _ in CONFIG_ERRORS
    ]
    results = run_all(commands, tmp)
    return Batch(
        dict(zip([name for name, *_ in CONFIG_ERRORS], results, strict=True)),
        list(sandbox_session.state.requests),
    )


@pytest.mark.parametrize(
    ("name", "fragments"),
    [pytest.param(name, fragments, id=name) for name, _, _, fragments in CONFIG_ERRORS],
)
def test_config_error_exits_2_with_one_line(
    config_errors: Batch, name: str, fragments: tuple[str, ...]
) -> None:
    result = config_errors.results[name]

    assert result.code == 2, result
    assert result.out == ""
    line = one_line(result.err)
    assert line.startswith("error: "), line
    for fragment in fragments:
        assert fragment in line, (fragment, line)
    assert config_errors.requests == []


# ---- Atlas errors: exit 1 with the errorCode --------------------------------------------------


def test_unknown_invoice_is_404(sandbox: SandboxServer, org: Org, tmp_path: Path) -> None:
    result = run(
        ["atlas", "invoice", org.id, UNKNOWN_INVOICE],
        cli_env(tmp_path, sandbox, auth="service-account"),
        tmp_path,
    )

    assert result.code == 1, result
    assert result.out == ""
    line = one_line(result.err)
    assert line.startswith("error: "), line
    assert "404" in line
    assert "INVOICE_NOT_FOUND" in line
    assert UNKNOWN_INVOICE in line  # Atlas's detail


def test_key_without_billing_role_is_403(sandbox: SandboxServer, org: Org, tmp_path: Path) -> None:
    result = run(
        ["atlas", "pending", org.id, "--json"],
        cli_env(tmp_path, sandbox, auth="no-role"),
        tmp_path,
    )

    assert result.code == 1, result
    assert result.out == ""  # --json: nothing on stdout when there is no document
    line = one_line(result.err)
    assert line.startswith("error: "), line
    assert "403" in line
    assert "USER_UNAUTHORIZED" in line
    assert "Billing Viewer" in line


def test_persistent_500_is_retried_then_reported(
    sandbox: SandboxServer, org: Org, tmp_path: Path
) -> None:
    sandbox.state.add_fault(Fault(kind="status", status=500, times=None))
    started = time.monotonic()
    result = run(
        ["atlas", "pending", org.id],
        cli_env(tmp_path, sandbox, auth="service-account"),
        tmp_path,
    )

    assert result.code == 1, result
    assert result.out == ""
    last = result.err.splitlines()[-1]
    assert last.startswith("error: "), result
    assert "500" in last
    assert "UNEXPECTED_ERROR" in last
    # The lines before it, if any, are the retry warnings.
    assert all("retrying" in line for line in result.err.splitlines()[:-1]), result
    calls = sandbox.state.requests_for("listInvoicePending", org.id)
    assert len(calls) > 1  # retried
    assert {c.status for c in calls} == {500}
    assert time.monotonic() - started < 30


# ---- billing-bot sandbox ----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def read_lines(stream: IO[str], lines: queue.Queue[str | None]) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)


def test_sandbox_command_serves_what_it_prints(tmp_path: Path) -> None:
    port = free_port()
    with subprocess.Popen(
        [sys.executable, "-m", "bot", "sandbox", "--port", str(port)],
        env=cli_env(tmp_path),
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        assert process.stdout is not None and process.stderr is not None
        lines: queue.Queue[str | None] = queue.Queue()
        reader = threading.Thread(target=read_lines, args=(process.stdout, lines), daemon=True)
        reader.start()
        try:
            exports: dict[str, str] = {}
            orgs: list[str] = []
            deadline = time.monotonic() + TIMEOUT
            while "MONGODB_ATLAS_CLIENT_SECRET" not in exports or not orgs:
                line = lines.get(timeout=max(deadline - time.monotonic(), 0.1))
                assert line is not None, f"the sandbox stopped early: {process.stderr.read()}"
                if line.startswith("export "):
                    name, _, value = line.removeprefix("export ").strip().partition("=")
                    exports[name] = value
                elif match := re.match(r"#\s+([a-f0-9]{24})\s", line):
                    orgs.append(match[1])

            assert exports["MONGODB_ATLAS_BASE_URL"] == f"http://127.0.0.1:{port}"
            result = run(
                ["atlas", "pending", orgs[0], "--json"],
                cli_env(tmp_path, None, **exports),
                tmp_path,
            )
            assert result.code == 0, result
            assert json_document(result)["orgId"] == orgs[0]
        finally:
            process.send_signal(signal.SIGINT)  # Ctrl-C
            try:
                process.wait(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                raise
            reader.join(timeout=TIMEOUT)
        stderr = process.stderr.read()

    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert stderr == ""


# ---- billing-bot shell ------------------------------------------------------------------------

SUB_COMMANDS = (
    "help",
    "link",
    "connect",
    "unlink",
    "status",
    "pending",
    "invoice",
    "costs",
    "threshold",
    "oncall",
    "digest",
)


def test_shell_without_credentials_uses_its_own_sandbox(
    sandbox: SandboxServer, tmp_path: Path
) -> None:
    # The shell starts a sandbox with the same seed as of the real date (it is the command a
    # user runs, on the wall clock, whatever TEST_TODAY says): that data is the shell's.
    shells = SandboxData(seed=1)
    first = shells.org(shells.org_ids[0])
    assert first is not None and first.id == sandbox.data.org_ids[0]
    result = run(
        ["shell"],
        cli_env(tmp_path),
        tmp_path,
        input="/atlas-billing pending\n",
        timeout=SHELL_TIMEOUT,
    )

    assert result.code == 0, result
    assert result.err == ""
    assert first.id in result.out
    assert money(first.pending.subtotal_cents) in result.out, result
    assert sandbox.state.requests == []  # not the fixture's sandbox: its own


def test_shell_with_credentials_answers_from_the_configured_atlas(
    sandbox: SandboxServer, org: Org, tmp_path: Path
) -> None:
    result = run(
        ["shell", "--org", org.id],
        cli_env(
            tmp_path,
            sandbox,
            auth="api-key",
            DATABASE_URL=f"sqlite:///{tmp_path / 'shell.db'}",
        ),
        tmp_path,
        input="/atlas-billing pending\n/atlas-billing bogus\n/atlas-billing help\n",
        timeout=SHELL_TIMEOUT,
    )

    assert result.code == 0, result
    assert result.err == ""
    pending_part, _, rest = result.out.partition("'bogus'")
    assert money(org.pending.subtotal_cents) in pending_part, result
    assert org.id in pending_part
    assert sandbox.state.requests_for("listInvoicePending", org.id)
    # bogus: an error that shows the way to the usage
    assert "/atlas-billing help" in rest.split("\n── ")[0], result
    # help: one line per sub-command
    for name in SUB_COMMANDS:
        assert f"/atlas-billing {name}" in rest, (name, result)


# ---- the version, in one place ---------------------------------------------------------------


def test_version_is_the_package_metadata_and_rides_on_every_request(
    sandbox: SandboxServer, org: Org, tmp_path: Path
) -> None:
    """``pyproject.toml`` states the version once; the CLI, Atlas's and Slack's User-Agent say it."""
    with open(Path(__file__).resolve().parents[2] / "pyproject.toml", "rb") as project:
        stated = tomllib.load(project)["project"]["version"]
    assert metadata.version("atlas-billing-bot") == stated
    shown = run(["--version"], cli_env(tmp_path), tmp_path)
    assert (shown.code, shown.out, shown.err) == (0, f"billing-bot {stated}\n", "")
    sandbox.state.requests.clear()
    assert (
        run(["atlas", "pending", org.id], cli_env(tmp_path, sandbox, auth="api-key"), tmp_path).code
        == 0
    )
    agents = {r.headers.get("user-agent") for r in sandbox.state.requests}
    assert agents == {f"atlas-billing-bot/{stated}"}
    slack = slack_client(Settings(_env_file=None, SLACK_BOT_TOKEN="xoxb-test"))
    assert slack.headers["User-Agent"].startswith(f"atlas-billing-bot/{stated} Python/")


def test_a_403_off_the_access_list_names_the_access_list_remedy(
    sandbox: SandboxServer, org: Org, tmp_path: Path
) -> None:
    sandbox.state.add_fault(
        Fault(
            kind="status",
            status=403,
            error_code="IP_ADDRESS_NOT_ON_ACCESS_LIST",
            operation="listInvoicePending",
        )
    )
    env = cli_env(tmp_path, sandbox, auth="service-account")
    result = run(["atlas", "pending", org.id], env, tmp_path)
    assert result.code == 1, result
    line = one_line(result.err)
    assert "IP_ADDRESS_NOT_ON_ACCESS_LIST" in line and "access list" in line
    assert "Billing Viewer role" not in line


def test_connect_in_the_shell_opens_its_form_and_says_it_cannot_show_it(
    sandbox: SandboxServer, org: Org, tmp_path: Path
) -> None:
    """`connect` opens a modal first, then fills it in (views.update): the terminal says so
    instead of failing on a method it does not know."""
    result = run(
        ["shell", "--org", org.id],
        cli_env(tmp_path, sandbox, auth="api-key", DATABASE_URL=f"sqlite:///{tmp_path / 's.db'}"),
        tmp_path,
        input=f"/atlas-billing connect {org.id}\n",
        timeout=SHELL_TIMEOUT,
    )
    assert result.code == 0, result
    assert result.err == ""
    assert "the shell cannot show forms" in result.out, result
    assert "unknown_method" not in result.out and "Something went wrong" not in result.out
