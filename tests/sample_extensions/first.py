"""A sync authorize: refuses one identity, makes viewers, marks its passage in the metadata."""

from __future__ import annotations

from extensions import Grant, Refuse, TokenRequest


def authorize(request: TokenRequest, grant: Grant) -> Grant:
    if request.identity == "mallory":
        raise Refuse(403, "mallory may not join")
    if request.headers.get("X-Role") == "viewer":
        grant.video.can_publish = False
        grant.video.can_publish_data = False
        grant.video.hidden = True
    if request.headers.get("X-Role") == "speaker":
        grant.video.can_publish_sources = ["microphone"]
    grant.metadata += "first;"
    return grant
