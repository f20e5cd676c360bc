"""The ``connect`` modal: its fields are named as the service's fields, so errors land under them."""

from __future__ import annotations

import json

from bot.atlas import Forbidden, Unauthorized
from bot.render.credentials import ACTION, CALLBACK_ID, atlas_refusal, connect_view, field_errors
from bot.services.credentials import Field

ORG = "5f1a2b3c4d5e6f7a8b9c0d1e"


def test_the_modal_has_one_input_per_field_and_says_where_it_came_from() -> None:
    view = connect_view(org_id=ORG, team_id="T1", channel_id="C1")
    assert view["callback_id"] == CALLBACK_ID
    inputs = [block for block in view["blocks"] if block["type"] == "input"]
    assert [block["block_id"] for block in inputs] == [field.value for field in Field]
    assert all(block["element"]["action_id"] == ACTION for block in inputs)
    assert json.loads(view["private_metadata"]) == {
        "org_id": ORG,
        "team_id": "T1",
        "channel_id": "C1",
    }


def test_field_errors_are_keyed_by_block_id() -> None:
    assert field_errors({Field.SECRET: "no"}) == {"secret": "no"}


def test_an_atlas_refusal_lands_on_the_field_to_fix() -> None:
    assert set(atlas_refusal(Unauthorized(401, error_code="UNAUTHORIZED"), ORG)) == {Field.SECRET}
    assert set(atlas_refusal(Forbidden(403, error_code="USER_UNAUTHORIZED"), ORG)) == {
        Field.PUBLIC_ID
    }
