"""The optional API key: `Authorization: Bearer <key>`, `X-API-Key: <key>`, or (WebSocket, for browsers,
which cannot set headers there) `?api_key=<key>`."""

from __future__ import annotations

import secrets
from collections.abc import Mapping

from server.settings import Settings


def key_ok(settings: Settings, headers: Mapping[str, str], query: Mapping[str, str]) -> bool:
    if settings.api_key is None:
        return True
    auth = headers.get("authorization", "")
    given = auth[7:] if auth.lower().startswith("bearer ") else headers.get("x-api-key") or query.get("api_key")
    return given is not None and secrets.compare_digest(given.encode(), settings.api_key.get_secret_value().encode())
