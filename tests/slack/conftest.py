"""The outbox tests drive the running bot of the end-to-end tests."""

from tests.app.conftest import bot  # noqa: F401  (the fixture: the bot on loopback HTTP)
