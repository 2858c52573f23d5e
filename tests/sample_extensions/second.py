"""An async authorize, after first: takes the identity from a cookie, sets attributes and a ttl."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from extensions import Grant, Refuse, TokenRequest


async def authorize(request: TokenRequest, grant: Grant) -> Grant:
    await asyncio.sleep(0)
    if "who" in request.cookies:
        grant.identity = request.cookies["who"]
    if request.headers.get("X-Ask") == "login":
        raise Refuse(401, "log in first")
    grant.attributes = {
        **(grant.attributes or {}),
        "seen_by": "second",
        "shape": request.shape,
        "asked_room": request.room,
        "granted_room": grant.room,
    }
    grant.metadata += "second;"
    grant.ttl = timedelta(minutes=5)
    return grant
