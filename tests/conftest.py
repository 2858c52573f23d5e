"""Shared fixtures: a server built by make_app with test settings, and LiveKit-style signing."""

from __future__ import annotations

import hashlib
import base64
import json
import secrets
import time
from datetime import timedelta
from typing import Any

import pytest
from livekit.api import AccessToken

from config import Config
from server import make_app

API_KEY = "devkey"
API_SECRET = "secret"


@pytest.fixture
def config(tmp_path: Any) -> Config:
    return Config(events_db=str(tmp_path / "events.sqlite3"), cors_allowed_origins=("*",))


@pytest.fixture
def app(config: Config) -> Any:
    return make_app(config)


def webhook_event(event: str = "room_started", room: str = "R", **extra: Any) -> dict[str, Any]:
    """An event shaped as livekit-server sends it: protobuf JSON, int64 as strings."""
    body: dict[str, Any] = {
        "event": event,
        "id": f"EV_{secrets.token_hex(6)}",
        "createdAt": str(int(time.time())),
        "room": {"sid": "RM_abc", "name": room, "emptyTimeout": 300, "creationTime": str(int(time.time()))},
    }
    body.update(extra)
    return body


def sign(body: bytes, secret: str = API_SECRET, key: str = API_KEY, ttl: timedelta = timedelta(minutes=5)) -> str:
    """The Authorization header livekit-server sends: HS256 JWT, iss = key, sha256 of the body."""
    digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
    return AccessToken(key, secret).with_sha256(digest).with_ttl(ttl).to_jwt()


def webhook_request(event: dict[str, Any] | bytes, **sign_args: Any) -> dict[str, Any]:
    """fetch() keyword arguments for a signed webhook POST."""
    body = event if isinstance(event, bytes) else json.dumps(event).encode()
    return {
        "method": "POST",
        "body": body,
        "headers": {"Content-Type": "application/webhook+json", "Authorization": sign(body, **sign_args)},
        "raise_error": False,
    }
