"""Every secret a request may carry is read one way (ground/credentials.py): the
`Bearer` scheme in any case, the credential compared in constant time."""

from __future__ import annotations

from typing import Any

import pytest

from ground.credentials import bearer_credential, secret_matches
from tests.conftest import post_token

SECRET = "s" * 32


def test_the_scheme_is_read_in_any_case_and_nothing_else_passes() -> None:
    assert [bearer_credential(header) for header in ("Bearer x", "bearer x", "BEARER  x ")] == ["x"] * 3
    assert [bearer_credential(header) for header in ("", "Basic x", "Bearerx", "Bearer ")] == [""] * 4
    assert secret_matches("x", "x") and not secret_matches("y", "x") and not secret_matches("", "")


@pytest.mark.settings(
    token_auth_secret=SECRET, metrics_auth_secret=SECRET, events_auth_secret=SECRET, admin_secret=SECRET
)
@pytest.mark.gen_test
async def test_every_endpoint_with_a_secret_takes_a_lowercase_bearer(http_client: Any, base_url: str) -> None:
    async def statuses(scheme: str, secret: str) -> list[int]:
        headers = {"Authorization": f"{scheme} {secret}"}
        answers = [
            await post_token(http_client, base_url, headers=headers),
            *[
                await http_client.fetch(base_url + path, headers=headers, raise_error=False)
                for path in ("/metrics", "/events/history", "/rooms/R/bans")
            ],
        ]
        return [answer.code for answer in answers]

    assert await statuses("bearer", SECRET) == [200, 200, 200, 200]
    assert await statuses("BEARER", SECRET) == [200, 200, 200, 200]
    assert await statuses("Bearer", "wrong") == [401, 401, 401, 403]
