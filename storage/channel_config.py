"""Per-channel settings: the on-call user or user group that threshold alerts mention."""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Session, col, select

from storage._sql import insert
from storage.models import ONCALL_ID_LENGTH, ChannelConfig, OncallKind, utcnow

__all__ = ["get_config", "set_oncall"]

_KEY = ("team_id", "channel_id")


def get_config(session: Session, *, team_id: str, channel_id: str) -> ChannelConfig | None:
    """The channel's settings, or None if nobody has set any."""
    return session.exec(
        select(ChannelConfig).where(
            ChannelConfig.team_id == team_id, ChannelConfig.channel_id == channel_id
        )
    ).first()


def set_oncall(
    session: Session,
    *,
    team_id: str,
    channel_id: str,
    kind: OncallKind | str | None,
    target_id: str | None,
    updated_by: str,
    now: datetime | None = None,
) -> ChannelConfig:
    """Set who alerts in the channel mention (`kind` `user` or `usergroup`); `kind=None` clears it.

    An upsert (`INSERT … ON CONFLICT DO UPDATE`), so two concurrent calls leave one
    row holding the last one's choice. `target_id` is the Slack user (`U…`) or user
    group (`S…`) ID, and is ignored when clearing. Raises `ValueError` for an
    unknown kind or a missing or overlong target.
    """
    if kind is None:
        kind_value, target_id = None, None
    else:
        kind_value = OncallKind(kind).value
        if not target_id or len(target_id) > ONCALL_ID_LENGTH:
            raise ValueError(
                f"on-call {kind_value} ID must be 1-{ONCALL_ID_LENGTH} characters: {target_id!r}"
            )
    values = {
        "team_id": team_id,
        "channel_id": channel_id,
        "oncall_kind": kind_value,
        "oncall_id": target_id,
        "updated_by": updated_by,
        "updated_at": now or utcnow(),
    }
    statement = insert(session, ChannelConfig).values(values)
    config_id = session.exec(
        statement.on_conflict_do_update(
            index_elements=_KEY,
            set_={name: statement.excluded[name] for name in values if name not in _KEY},
        ).returning(col(ChannelConfig.id))
    ).scalar_one()
    config = session.get(ChannelConfig, config_id, populate_existing=True)
    assert config is not None
    return config
