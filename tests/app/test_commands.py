"""``/atlas-billing`` end to end: signed requests to the running app over HTTP, Atlas answered by
the sandbox, Slack by the fake, state in a real database."""

from __future__ import annotations

import json

import pytest
from sqlmodel import select

import storage.costs
from bot.core.money import format_cents
from bot.sandbox import Fault
from bot.services import costs
from storage import audit, links
from storage.models import CostQuery, QueryStatus
from tests.app.conftest import CHANNEL, OTHER_CHANNEL, TEAM
from tests.app.helpers import replica_with_clock
from tests.fakes.clock import month


@pytest.fixture
def org(sandbox):
    return sandbox.data.org(sandbox.data.org_ids[0])


def _ack_text(response) -> str:
    assert response.status_code == 200
    return json.loads(response.text)["text"] if response.text else ""


def _links(bot, channel=CHANNEL):
    with bot.db.session() as session:
        return [
            row.org_id for row in links.links_for_channel(session, team_id=TEAM, channel_id=channel)
        ]


async def _ephemeral(bot) -> str:
    responses = await bot.fake.wait_for_async(lambda: bot.fake.responses)
    body = responses[-1].body
    assert body.get("response_type") == "ephemeral"
    return body["text"]


# ---- help and bad input ---------------------------------------------------------------------------


async def test_empty_text_and_help_show_usage_ephemerally(bot):
    for text in ("", "help", "  HELP  "):
        reply = _ack_text(await bot.command(text))
        assert "/atlas-billing pending [ORG_ID]" in reply
        assert "costs START END" in reply
    assert bot.fake.calls_to("chat.postMessage") == []
    assert bot.atlas_requests() == []


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("frobnicate", "Unknown sub-command"),
        ("pending a b", "Usage: pending [ORG_ID]"),
        ("link", "Usage: link ORG_ID"),
        ("link ../../etc/passwd", "Usage: link ORG_ID"),
        ("link 5f1a2b3c4d5e6f7a8b9c0d1%2F", "Usage: link ORG_ID"),
        ("link 5F1A2B3C4D5E6F7A8B9C0D1E", "lowercase"),
        ("invoice ١٢٣٤٥٦٧٨٩٠١٢٣٤٥٦٧٨٩٠١٢٣٤", "Usage: invoice"),
        ("invoice 5f1a2b3c4d5e6f7a 8b9c0d1e", "Usage: invoice"),
        ("costs 2024-02-15 2024-03", "first of month"),
        ("costs 2024-03 2024-02", "Usage: costs"),
        ("costs 2020-01 2020-02", "Usage: costs"),
        ("costs 2024-01 2024-02 by regions", "Usage: costs"),
        ("threshold lots", "Usage: threshold"),
        ("x" * 2500, "too long"),
    ],
)
async def test_bad_input_gets_an_ephemeral_usage_error_and_touches_nothing(bot, org, text, needle):
    bot.link(org.id)
    reply = _ack_text(await bot.command(text))
    assert needle in reply
    assert bot.atlas_requests() == []
    assert bot.fake.calls_to("chat.postMessage") == []
    assert _links(bot) == [org.id]


@pytest.mark.parametrize("signature", ["missing", "wrong"])
async def test_unsigned_or_forged_requests_get_401_and_change_nothing(bot, org, signature):
    response = await bot.command(f"link {org.id}", signature=signature)
    assert response.status_code == 401
    stale = await bot.command(f"link {org.id}", stale=True)
    assert stale.status_code == 401
    assert _links(bot) == []
    assert bot.atlas_requests() == []
    assert bot.fake.calls == []


# ---- link, unlink, status -------------------------------------------------------------------------


async def test_admin_links_a_channel_after_atlas_confirms_access(bot, org):
    _ack_text(await bot.command(f"link {org.id}", user_id="U_ADMIN"))
    posted = await bot.fake.wait_for_async(lambda: bot.fake.calls_to("chat.postMessage"))
    assert org.id in posted[0]["text"] and posted[0]["channel"] == CHANNEL
    assert _links(bot) == [org.id]
    assert [r.operation for r in bot.atlas_requests()] == ["listInvoicePending"]
    with bot.db.session() as session:
        entry = audit.entries(session, action="link")[0]
    assert (entry.user_id, entry.details()) == ("U_ADMIN", {"org_id": org.id})


async def test_bot_admins_setting_grants_admin_rights(bot, org):
    bot.deps.settings.__dict__["BOT_ADMINS"] = ("U_MEMBER",)  # frozen settings, test-only override
    await bot.command(f"link {org.id}", user_id="U_MEMBER")
    await bot.fake.wait_for_async(lambda: bot.fake.calls_to("chat.postMessage"))
    assert _links(bot) == [org.id]


async def test_non_admin_cannot_link(bot, org):
    await bot.command(f"link {org.id}", user_id="U_MEMBER")
    assert "Only workspace admins" in await _ephemeral(bot)
    assert _links(bot) == []
    assert bot.atlas_requests() == []


@pytest.mark.parametrize(
    "external",
    [
        {"team_id": "T_PARTNER", "is_admin": True, "is_owner": True},  # a partner's owner
        {"is_stranger": True, "is_admin": True},
    ],
    ids=["other-team-admin", "stranger"],
)
async def test_an_admin_of_another_organisation_in_a_shared_channel_changes_nothing(
    bot, org, external
):
    """Slack Connect: their is_admin is their own organisation's, not this workspace's."""
    bot.fake.add_user("U_PARTNER", **external)
    for i, text in enumerate((f"link {org.id}", "threshold 5", "oncall off", "digest off")):
        await bot.command(text, user_id="U_PARTNER")
        responses = await bot.fake.wait_for_async(lambda: bot.fake.responses[i:])  # noqa: B023
        answer = responses[0].body["text"]
        assert "another organization" in answer and "Slack Connect" in answer, answer
    assert _links(bot) == []
    assert bot.atlas_requests() == []
    with bot.db.session() as session:
        assert audit.entries(session) == []


async def test_a_guest_is_never_an_admin(bot, org):
    bot.fake.add_user("U_GUEST", is_admin=True, is_restricted=True)
    await bot.command(f"link {org.id}", user_id="U_GUEST")
    assert "Only workspace admins" in await _ephemeral(bot)
    assert _links(bot) == []


async def test_a_403_for_an_address_off_the_access_list_says_so_not_the_role(bot, org):
    """Atlas answers 403 both for a missing role and for an IP off the API access list; the
    remedy follows the errorCode (ATLAS-NOTES.md)."""
    bot.sandbox.state.add_fault(
        Fault(
            kind="status",
            status=403,
            error_code="IP_ADDRESS_NOT_ON_ACCESS_LIST",
            operation="listInvoicePending",
        )
    )
    await bot.command(f"link {org.id}")
    text = await _ephemeral(bot)
    assert "IP_ADDRESS_NOT_ON_ACCESS_LIST" in text and "access list" in text
    assert "Billing Viewer" not in text
    assert _links(bot) == []


async def test_link_reports_the_atlas_error_and_stores_nothing(bot, org):
    bot.sandbox.state.add_fault(
        Fault(
            kind="status",
            status=403,
            error_code="USER_UNAUTHORIZED",
            operation="listInvoicePending",
        )
    )
    await bot.command(f"link {org.id}")
    text = await _ephemeral(bot)
    assert "USER_UNAUTHORIZED" in text and "Organization Billing Viewer" in text
    assert "Traceback" not in text
    assert _links(bot) == []


async def test_unknown_org_is_reported_with_its_error_code(bot):
    await bot.command("link " + "0" * 24)
    assert "404" in await _ephemeral(bot)
    assert _links(bot) == []


async def test_unlink_and_status(bot, org):
    bot.link(org.id)
    await bot.command("status")
    status = await _ephemeral(bot)
    assert org.id in status
    await bot.command(f"unlink {org.id}")
    await bot.fake.wait_for_async(lambda: bot.fake.calls_to("chat.postMessage"))
    assert _links(bot) == []
    with bot.db.session() as session:
        assert [e.action for e in audit.entries(session)] == ["unlink"]


# ---- pending and invoice ----------------------------------------------------------------------------


@pytest.mark.dates
async def test_pending_posts_month_to_date_spend_for_the_channel(bot, org):
    bot.link(org.id)
    await bot.command("pending")
    posted = await bot.fake.wait_for_async(lambda: bot.fake.calls_to("chat.postMessage"))
    message = posted[0]
    assert message["channel"] == CHANNEL
    blocks = json.dumps(message["blocks"])
    assert format_cents(org.pending.subtotal_cents) in blocks
    assert "Top projects" in blocks


async def test_commands_in_an_unlinked_channel_are_refused_without_atlas(bot, org):
    bot.link(org.id)
    for text in ("pending", f"invoice {org.latest_closed.id}", f"costs {month(-4)} {month(-2)}"):
        bot.fake.reset()
        await bot.command(text, channel_id=OTHER_CHANNEL)
        assert "not linked" in await _ephemeral(bot)
    assert bot.atlas_requests() == []


async def test_an_org_linked_elsewhere_is_not_visible_here(bot, sandbox, org):
    other = sandbox.data.org_ids[1]
    bot.link(org.id)
    bot.link(other, channel=OTHER_CHANNEL)
    await bot.command(f"pending {other}")
    assert "not linked to this channel" in await _ephemeral(bot)
    assert bot.atlas_requests() == []


async def test_several_links_need_an_org_id(bot, sandbox, org):
    bot.link(org.id)
    bot.link(sandbox.data.org_ids[1])
    await bot.command(f"invoice {org.latest_closed.id}")
    assert "several orgs" in await _ephemeral(bot)
    bot.fake.reset()
    await bot.command("pending")  # pending shows every linked org
    posted = await bot.fake.wait_for_async(lambda: bot.fake.calls_to("chat.postMessage"))
    blocks = json.dumps(posted[0]["blocks"])
    assert org.id in blocks and sandbox.data.org_ids[1] in blocks


async def test_invoice_posts_the_summary_and_uploads_the_csv(bot, org):
    bot.link(org.id)
    invoice = org.latest_closed
    await bot.command(f"invoice {invoice.id}")
    uploads = await bot.fake.wait_for_async(lambda: [u for u in bot.fake.uploads if u.completed])
    assert uploads[0].data.decode() == invoice.csv_text()
    assert uploads[0].channel_id == CHANNEL
    posted = bot.fake.calls_to("chat.postMessage")
    blocks = json.dumps(posted[0]["blocks"])
    assert format_cents(invoice.amount_billed_cents) in blocks
    assert "files.upload" not in [c.method for c in bot.fake.calls]  # never the legacy API


async def test_unknown_invoice_is_one_readable_line(bot, org):
    bot.link(org.id)
    await bot.command("invoice " + "e" * 24)
    text = await _ephemeral(bot)
    assert "404" in text and "\n" not in text


async def test_not_in_channel_tells_how_to_invite_the_bot(bot, org):
    bot.link(org.id)
    bot.fake.fail_next("chat.postMessage", error="not_in_channel")
    await bot.command("pending")
    assert "/invite" in await _ephemeral(bot)


# ---- Cost Explorer in chat ----------------------------------------------------------------------------


async def _start_costs(bot, org, text=f"costs {month(-4)} {month(-1)}"):
    await bot.command(text)
    started = await bot.fake.wait_for_async(lambda: bot.fake.calls_to("chat.postMessage"))
    await bot.fake.wait_for_async(lambda: _pending_count(bot) == 1)
    return started[0]


def _pending_count(bot) -> int:
    with bot.db.session() as session:
        return storage.costs.pending_count(session)


@pytest.mark.dates
async def test_costs_answers_at_once_and_updates_the_message_when_ready(bot, org):
    """The *poll* job runs here as a second replica; a day-old query keeps polling."""
    bot.link(org.id)
    bot.sandbox.state.cost_polls_before_ready = 1
    await _start_costs(bot, org)
    ts = next(iter(bot.fake.messages(CHANNEL)))
    replica, clock = replica_with_clock(bot)
    clock.advance(minutes=1)
    report = await costs.poll_due(replica)
    assert (report.claimed, report.waiting) == (1, 1)
    clock.advance(minutes=1)
    report = await costs.poll_due(replica)
    assert report.done == 1
    updates = bot.fake.calls_to("chat.update")
    assert len(updates) == 1 and updates[0]["ts"] == ts
    expected = sum(
        inv.subtotal_cents
        for inv in org.closed
        if month(-4) <= inv.start.strftime("%Y-%m") < month(-1)
    )
    assert format_cents(expected) in json.dumps(updates[0]["blocks"])
    clock.advance(minutes=5)
    assert (await costs.poll_due(replica)).claimed == 0  # done: never posted again
    assert len(bot.fake.calls_to("chat.update")) == 1
    await replica.atlas.aclose()


async def test_costs_with_an_atlas_error_says_so_in_place(bot, org):
    bot.link(org.id)
    bot.sandbox.state.add_fault(
        Fault(
            kind="status",
            status=400,
            error_code="INVALID_DATE_RANGE",
            operation="createCostExplorerProcess",
        )
    )
    await bot.command(f"costs {month(-4)} {month(-1)}")
    updates = await bot.fake.wait_for_async(lambda: bot.fake.calls_to("chat.update"))
    assert "INVALID_DATE_RANGE" in json.dumps(updates[0])
    assert _pending_count(bot) == 0


async def test_a_poll_error_that_will_not_heal_is_reported_once(bot, org):
    bot.link(org.id)
    await _start_costs(bot, org)
    bot.sandbox.state.add_fault(
        Fault(
            kind="status",
            status=404,
            error_code="RESOURCE_NOT_FOUND",
            operation="getCostExplorerUsage",
            times=None,
        )
    )
    replica, clock = replica_with_clock(bot)
    clock.advance(minutes=1)
    assert (await costs.poll_due(replica)).failed == 1
    clock.advance(minutes=5)
    assert (await costs.poll_due(replica)).claimed == 0
    updates = bot.fake.calls_to("chat.update")
    assert len(updates) == 1 and "RESOURCE_NOT_FOUND" in json.dumps(updates[0])
    with bot.db.session() as session:
        rows = session.exec(select(CostQuery)).all()
    assert [r.status for r in rows] == [QueryStatus.FAILED]
    await replica.atlas.aclose()


async def test_pending_commands_at_once_share_one_atlas_read(bot, org):
    # A channel reacting to an alert: three `pending`s while Atlas is still answering the first.
    bot.link(org.id)
    bot.link(org.id, channel=OTHER_CHANNEL)
    bot.sandbox.state.add_fault(Fault(kind="latency", seconds=0.5, operation="listInvoicePending"))
    for channel in (CHANNEL, CHANNEL, OTHER_CHANNEL):
        assert (await bot.command("pending", channel_id=channel)).status_code == 200
    posts = await bot.fake.wait_for_async(lambda: len(bot.fake.calls_to("chat.postMessage")) == 3)
    assert posts
    reads = [r for r in bot.atlas_requests() if r.operation == "listInvoicePending"]
    assert len(reads) == 1
    texts = {json.dumps(p["blocks"]) for p in bot.fake.calls_to("chat.postMessage")}
    assert len(texts) == 1 and format_cents(org.pending.subtotal_cents) in texts.pop()
    # Once answered, nothing is kept: the next `pending` reads Atlas again.
    await bot.command("pending")
    await bot.fake.wait_for_async(lambda: len(bot.fake.calls_to("chat.postMessage")) == 4)
    assert [r.operation for r in bot.atlas_requests()].count("listInvoicePending") == 2
