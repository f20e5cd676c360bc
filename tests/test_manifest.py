"""The Slack app manifest declares what the bot needs."""

from pathlib import Path

import pytest
import yaml

from tests.fakes.slack import METHOD_SCOPES, manifest_scopes

MANIFEST = Path(__file__).parents[1] / "manifest.yml"


def test_manifest_declares_the_command_scopes_and_interactivity():
    manifest = yaml.safe_load(MANIFEST.read_text())
    (command,) = manifest["features"]["slash_commands"]
    assert command["command"] == "/atlas-billing"
    assert command["should_escape"] is True
    assert command["url"].endswith("/slack/events")
    scopes = set(manifest["oauth_config"]["scopes"]["bot"])
    assert {"commands", "chat:write", "files:write", "users:read"} <= scopes
    assert {"channels:history", "groups:history"} <= scopes  # the outbox's duplicate check
    assert "files:read" not in scopes  # least privilege: the bot never reads files
    assert "channels:join" in scopes  # joins a public channel to share a file or read history
    interactivity = manifest["settings"]["interactivity"]
    assert interactivity["is_enabled"] is True
    assert interactivity["request_url"].endswith("/slack/events")
    assert "socket_mode_enabled" in manifest["settings"]


def test_manifest_subscribes_to_the_channel_events_the_bot_handles():
    manifest = yaml.safe_load(MANIFEST.read_text())
    events = manifest["settings"]["event_subscriptions"]
    assert events["request_url"].endswith("/slack/events")
    assert set(events["bot_events"]) == {
        "channel_archive",
        "channel_unarchive",
        "group_archive",
        "group_unarchive",
    }
    # Slack only delivers these events to an app with the read scopes.
    assert {"channels:read", "groups:read"} <= set(manifest["oauth_config"]["scopes"]["bot"])


# ---- the scopes: exactly those the bot's calls need -------------------------------------------

ROOT = Path(__file__).parents[1]
# slack_sdk helpers that are several Web API methods.
COMPOSITE = {"files_upload_v2": ("files.getUploadURLExternal", "files.completeUploadExternal")}
# Scopes no Web API call of the bot needs, each for a reason of its own.
NOT_FOR_A_CALL = {
    "commands": "the /atlas-billing slash command",
    "chat:write.public": "posting in public channels the bot never joined",
    "metadata.message:read": "the outbox's key in message metadata, read back from history",
    "channels:read": "the channel_archive / channel_unarchive events",
    "groups:read": "the group_archive / group_unarchive events",
}


def _called_methods() -> set[str]:
    """Every Slack Web API method the bot's code calls on a client (`….chat_postMessage(`)."""
    import ast

    methods: set[str] = set()
    for path in [*ROOT.joinpath("bot").rglob("*.py"), *ROOT.joinpath("handlers").rglob("*.py")]:
        if "sandbox" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            name = node.func.attr
            if name in COMPOSITE:
                methods.update(COMPOSITE[name])
            elif "_" in name and name.split("_", 1)[0] in PREFIXES:
                family, rest = name.split("_", 1)
                methods.add(f"{family}.{rest}")
    return methods


PREFIXES = {"chat", "users", "usergroups", "conversations", "files", "views", "auth", "team"}


def test_the_manifest_asks_for_exactly_the_scopes_the_bots_calls_need():
    called = _called_methods()
    assert {"chat.postMessage", "conversations.history", "files.completeUploadExternal"} <= called
    unknown = called - set(METHOD_SCOPES)
    assert not unknown, (
        f"add these methods' scopes to METHOD_SCOPES in tests/fakes/slack.py: {unknown}"
    )
    needed = {scope for method in called for scope in METHOD_SCOPES[method]} | set(NOT_FOR_A_CALL)
    assert manifest_scopes() == needed


async def test_a_call_whose_scope_the_manifest_lacks_is_refused(fake_slack):
    from slack_sdk.errors import SlackApiError
    from slack_sdk.web.async_client import AsyncWebClient

    fake_slack.scopes = fake_slack.scopes - {"channels:join"}
    client = AsyncWebClient(token="xoxb-test", base_url=fake_slack.base_url)
    with pytest.raises(SlackApiError) as caught:
        await client.conversations_join(channel="C_LINKED")
    assert caught.value.response["error"] == "missing_scope"
    assert caught.value.response["needed"] == "channels:join"
