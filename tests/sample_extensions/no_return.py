"""An authorize with a bug: it forgets to return the grant."""

from __future__ import annotations

from extensions import Grant, TokenRequest


def authorize(request: TokenRequest, grant: Grant) -> Grant:
    grant.metadata = "changed"
    return None  # type: ignore[return-value]
