"""Your own login in front of /token: the session your app issued decides who joins which room.

    APP_EXTENSIONS=examples.app_session APP_SESSION_SECRET=<32 characters or more>

The client sends its session, a JWT your app signed (HS256) with APP_SESSION_SECRET, as
`Authorization: Bearer <session>` (or, from a browser app, in the cookie `app_session`).
Its claims: `sub` (who the user is), `exp`, optionally `name` (a display name) and
`rooms` (the room names this user may join).

- The token's identity is the session's `sub`, whatever the request's participantName
  or participant_identity says, and its display name the session's `name` if present.
- A room that is not in `rooms` gets 403 naming the room.
- No session, a wrong signature or an expired session gets 401.
"""

from __future__ import annotations

from typing import Any

import jwt

from extensions import AppContext, ExtensionError, Grant, Refuse, TokenRequest

COOKIE = "app_session"


def setup(app: AppContext) -> None:
    """A missing or short secret stops the start, not the first request."""
    if len(app.config.setting("APP_SESSION_SECRET")) < 32:
        raise ExtensionError("examples.app_session needs APP_SESSION_SECRET, 32 characters or more")


def authorize(request: TokenRequest, grant: Grant) -> Grant:
    session = _session(request)
    rooms = session.get("rooms")
    if not isinstance(rooms, list) or grant.room not in rooms:
        raise Refuse(403, f"Your session does not allow room {grant.room!r}")
    grant.identity = str(session["sub"])
    if isinstance(session.get("name"), str) and session["name"].strip():
        grant.name = session["name"].strip()
    return grant


def _session(request: TokenRequest) -> dict[str, Any]:
    token = request.bearer_token or request.cookies.get(COOKIE, "")
    if not token:
        raise Refuse(401, "Sign in first: this endpoint needs Authorization: Bearer <your session>")
    try:
        return dict(
            jwt.decode(
                token,
                request.app.config.setting("APP_SESSION_SECRET"),
                algorithms=["HS256"],
                options={"require": ["sub", "exp"]},
            )
        )
    except jwt.PyJWTError:
        raise Refuse(401, "Your session is not valid or has expired: sign in again") from None
