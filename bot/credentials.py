"""The Atlas client for the configured credentials: service account first, else the API key pair.

Kept apart from ``bot.app`` so the ``atlas`` CLI commands build a client without
loading Bolt or the database.
"""

from __future__ import annotations

from typing import Any

from bot.atlas import AtlasClient
from bot.config import ConfigError, Settings


def atlas_client(settings: Settings, **options: Any) -> AtlasClient:
    """The Atlas client for the configured credentials (service account preferred)."""
    if not settings.has_atlas_credentials:
        raise ConfigError(
            "no Atlas credentials: set MONGODB_ATLAS_CLIENT_ID and MONGODB_ATLAS_CLIENT_SECRET "
            "(service account) or MONGODB_ATLAS_PUBLIC_API_KEY and MONGODB_ATLAS_PRIVATE_API_KEY; "
            "to try the bot without an account, run `billing-bot shell`, or `billing-bot sandbox` "
            "and paste its export lines"
        )
    return AtlasClient.with_credentials(
        base_url=settings.MONGODB_ATLAS_BASE_URL,
        client_id=settings.MONGODB_ATLAS_CLIENT_ID,
        client_secret=settings.MONGODB_ATLAS_CLIENT_SECRET,
        public_key=settings.MONGODB_ATLAS_PUBLIC_API_KEY,
        private_key=settings.MONGODB_ATLAS_PRIVATE_API_KEY,
        **options,
    )
