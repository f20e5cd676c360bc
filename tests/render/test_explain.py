"""``explain``: one line per failure, and for a 401 or 403 the remedy its errorCode calls for."""

from __future__ import annotations

import pytest

from bot.atlas import Forbidden, Unauthorized
from bot.render.explain import ATLAS_REMEDIES, explain


@pytest.mark.parametrize(
    ("exc", "needles", "absent"),
    [
        (Forbidden(403, error_code="USER_UNAUTHORIZED"), ["Billing Viewer"], ["access list"]),
        (
            Forbidden(403, error_code="IP_ADDRESS_NOT_ON_ACCESS_LIST"),
            ["access list", "IP address"],
            ["Billing Viewer"],
        ),
        (Forbidden(403, error_code="ORG_REQUIRES_ACCESS_LIST"), ["requires"], ["Billing Viewer"]),
        (Unauthorized(401, error_code=None, reason="Unauthorized"), ["credentials"], []),
        (Unauthorized(401, error_code="API_KEY_NOT_FOUND"), ["no such API key"], []),
    ],
)
def test_the_remedy_follows_the_error_code(exc, needles, absent) -> None:
    line = explain(exc)
    assert (exc.error_code or exc.reason or "") in line  # the code is named
    assert "\n" not in line
    for needle in needles:
        assert needle in line
    for word in absent:
        assert word not in line


def test_every_known_code_has_a_one_line_remedy() -> None:
    for code, remedy in ATLAS_REMEDIES.items():
        assert code.isupper() and remedy.endswith(".") and "\n" not in remedy
