"""The Slack app manifest declares what the bot needs."""

from pathlib import Path

import yaml

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
