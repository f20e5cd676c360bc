"""The end-to-end fixtures of tests/app (a running bot, the fake Slack), for the hostile-input tests."""

from tests.app.conftest import bot, fake_slack

__all__ = ["bot", "fake_slack"]
