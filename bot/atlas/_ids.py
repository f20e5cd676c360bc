"""Validation of every identifier before it becomes part of a URL path.

The patterns are the spec's (``atlas-billing-openapi.json``); nothing that fails
them is ever sent, so a hostile ``../`` or ``%2F`` cannot reach Atlas.
"""

from __future__ import annotations

import re
from datetime import date

from bot.atlas._errors import InvalidInput

_HEX24 = re.compile(r"[a-f0-9]{24}")
# A Cost Explorer token is exactly 64 characters; Atlas emits hex (upper or lower case).
_TOKEN = re.compile(r"[A-Za-z0-9]{64}")

GROUP_BY = ("organizations", "projects", "clusters", "services")
# Cost Explorer service names (ATLAS-NOTES.md); the sandbox serves the same list.
SERVICES = (
    "Atlas",
    "Clusters",
    "Storage",
    "Serverless Instances",
    "Backup",
    "Data Transfer",
    "BI Connector",
    "Premium Features",
    "Atlas Data Federation",
    "Atlas Stream Processing",
    "App Services",
    "Charts",
    "Cloud Manager",
    "Cloud Manager Standard/Premium",
    "Legacy Backup",
    "Flex Consulting",
    "Support",
    "Credits",
)


def org_id(value: str) -> str:
    return _hex24(value, "organization ID")


def invoice_id(value: str) -> str:
    return _hex24(value, "invoice ID")


def object_id(value: str, what: str) -> str:
    """A project or cluster ID in a Cost Explorer filter."""
    return _hex24(value, what)


def cost_token(value: str) -> str:
    if not isinstance(value, str) or not _TOKEN.fullmatch(value):
        raise InvalidInput(f"Cost Explorer token must be 64 letters and digits, got {_show(value)}")
    return value


def first_of_month(value: date, what: str) -> date:
    if value.day != 1:
        raise InvalidInput(f"{what} must be the first day of a month, got {value.isoformat()}")
    return value


def _hex24(value: str, what: str) -> str:
    if not isinstance(value, str) or not _HEX24.fullmatch(value):
        raise InvalidInput(f"{what} must be 24 lowercase hex digits, got {_show(value)}")
    return value


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "…'"
