"""Secrets sent with requests: the one reading of `Authorization: Bearer <credential>`
(the scheme in any case, as RFC 9110 has it) and the one comparison, in constant time."""

from __future__ import annotations

import hmac


def bearer_credential(header: str) -> str:
    """The credential of an Authorization header's `Bearer <credential>`, or "" when it has none."""
    scheme, _, credential = header.partition(" ")
    return credential.strip() if scheme.lower() == "bearer" else ""


def secret_matches(given: str, secret: str) -> bool:
    """`given` is `secret`, compared in constant time; an empty secret matches nothing."""
    return bool(secret) and hmac.compare_digest(given.encode(), secret.encode())
