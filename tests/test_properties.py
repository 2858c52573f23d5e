"""Property tests against a running server: no body gives a 5xx, and nothing unverified is
ever stored or sent."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import sign
from tests.processes import ServerProcess

PROPERTY_SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=20), children, max_size=4)
    ),
    max_leaves=20,
)
token_fields = st.sampled_from(
    [
        "roomName",
        "participantName",
        "room_name",
        "participant_identity",
        "participant_name",
        "participant_metadata",
        "participant_attributes",
        "room_config",
    ]
)
token_bodies = st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda value: json.dumps(value).encode()),
    st.dictionaries(token_fields, json_values, max_size=5).map(lambda value: json.dumps(value).encode()),
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(Path(tmp_path_factory.mktemp("properties")), TOKEN_RATE_LIMIT="0").start()
    yield process
    process.stop()


def post(server: ServerProcess, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    request = urllib.request.Request(server.url + path, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


@PROPERTY_SETTINGS
@given(
    body=token_bodies, content_type=st.sampled_from(["application/json", "application/json; charset=utf-8"])
)
def test_no_token_request_body_gives_a_5xx(server: ServerProcess, body: bytes, content_type: str) -> None:
    status, answer = post(server, "/token", body, {"Content-Type": content_type})
    assert status in (200, 201, 400), (status, answer)
    if status == 400:
        assert json.loads(answer)["errorMessage"]


@PROPERTY_SETTINGS
@given(
    body=st.one_of(st.binary(max_size=300), json_values.map(lambda value: json.dumps(value).encode())),
    # What an HTTP client can send in a header: printable characters.
    authorization=st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=200),
    signed_body=st.binary(max_size=100),
)
def test_unverified_webhooks_are_never_stored_or_sent(
    server: ServerProcess, body: bytes, authorization: str, signed_body: bytes
) -> None:
    # Either random text or a real signature of some other body: never the body's own.
    headers = {"Content-Type": "application/webhook+json"}
    token = sign(signed_body) if signed_body != body else authorization
    headers["Authorization"] = token
    before = server.history()
    status, answer = post(server, "/livekit/webhook", body, headers)
    assert 400 <= status < 500, (status, answer)
    assert server.history() == before == []
