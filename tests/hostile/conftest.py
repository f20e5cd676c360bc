"""The end-to-end fixture of tests/app (a running bot), for the hostile-input tests; the fake
Slack comes from tests/conftest.py like everywhere else."""

from tests.app.conftest import bot

__all__ = ["bot"]
