"""POST /token: both request shapes, the claims inside, CORS, and every bad input."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from livekit.api import TokenVerifier

from tests.conftest import API_KEY, API_SECRET

verifier = TokenVerifier(API_KEY, API_SECRET)


async def post_token(http_client: Any, base_url: str, body: Any, path: str = "/token", **headers: str) -> Any:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return await http_client.fetch(
        base_url + path,
        method="POST",
        body=raw,
        raise_error=False,
        headers={"Content-Type": "application/json", **headers},
    )


def claims_of(token: str) -> Any:
    return verifier.verify(token)


@pytest.mark.gen_test
async def test_openvidu_shape_gives_exactly_a_token(http_client: Any, base_url: str) -> None:
    before = int(time.time())
    response = await post_token(http_client, base_url, {"roomName": "R1", "participantName": "alice"})
    assert response.code == 200
    body = json.loads(response.body)
    assert list(body) == ["token"]  # the Android client rejects unknown keys
    claims = claims_of(body["token"])
    assert claims.identity == "alice"
    assert claims.video.room == "R1"
    assert claims.video.room_join is True
    raw = __import__("jwt").decode(body["token"], options={"verify_signature": False})
    assert raw["iss"] == API_KEY
    assert before + 6 * 3600 <= raw["exp"] <= int(time.time()) + 6 * 3600 + 1


@pytest.mark.gen_test
async def test_doubled_slash_reaches_the_token_handler(http_client: Any, base_url: str) -> None:
    response = await post_token(http_client, base_url, {"roomName": "R", "participantName": "ios"}, "//token")
    assert response.code == 200
    assert claims_of(json.loads(response.body)["token"]).identity == "ios"


@pytest.mark.gen_test
async def test_standard_shape_carries_every_field_into_the_token(http_client: Any, base_url: str) -> None:
    request = {
        "room_name": "support",
        "participant_identity": "user-7",
        "participant_name": "Ada",
        "participant_metadata": '{"role":"agent"}',
        "participant_attributes": {"team": "blue"},
        "room_config": {"agents": [{"agent_name": "helper", "metadata": "m1"}]},
    }
    response = await post_token(http_client, base_url, request)
    assert response.code == 201
    body = json.loads(response.body)
    assert body["server_url"] == "ws://localhost:7880"
    claims = claims_of(body["participant_token"])
    assert (claims.identity, claims.name, claims.video.room) == ("user-7", "Ada", "support")
    assert claims.metadata == '{"role":"agent"}'
    assert claims.attributes == {"team": "blue"}
    assert claims.room_config.agents[0].agent_name == "helper"
    assert claims.room_config.agents[0].metadata == "m1"


@pytest.mark.gen_test
async def test_standard_shape_generates_missing_room_and_identity(http_client: Any, base_url: str) -> None:
    first = json.loads((await post_token(http_client, base_url, {})).body)["participant_token"]
    second = json.loads((await post_token(http_client, base_url, {})).body)["participant_token"]
    one, two = claims_of(first), claims_of(second)
    assert one.identity and one.video.room and one.video.room_join
    assert one.identity != two.identity and one.video.room != two.video.room


@pytest.mark.gen_test
async def test_token_ttl_follows_config(http_client: Any, base_url: str, app: Any) -> None:
    from dataclasses import replace
    from datetime import timedelta

    app.settings["config"] = replace(app.settings["config"], token_ttl=timedelta(minutes=10))
    token = json.loads(
        (await post_token(http_client, base_url, {"roomName": "R", "participantName": "a"})).body
    )
    exp = __import__("jwt").decode(token["token"], options={"verify_signature": False})["exp"]
    assert abs(exp - (time.time() + 600)) <= 2


BAD_BODIES = [
    (b"{not json", 400, "not valid JSON"),
    (b"[1, 2]", 400, "JSON object"),
    (b'"text"', 400, "JSON object"),
    (b"\xff\xfe", 400, "not valid JSON"),
    (b"[" * 20000 + b"]" * 20000, 400, "not valid JSON"),
    ({"roomName": 5, "participantName": "a"}, 400, "roomName must be a string"),
    ({"roomName": "R"}, 400, "participantName is required"),
    ({"participantName": "a"}, 400, "roomName is required"),
    ({"roomName": "   ", "participantName": "a"}, 400, "roomName must not be empty"),
    ({"roomName": "R", "participantName": ""}, 400, "participantName must not be empty"),
    ({"roomName": "R" * 257, "participantName": "a"}, 400, "at most 256"),
    ({"roomName": "R\n", "participantName": "a\x00b"}, 400, "control characters"),
    ({"participant_attributes": {"a": 1}}, 400, "participant_attributes"),
    ({"participant_attributes": ["a"]}, 400, "participant_attributes"),
    ({"room_config": "x"}, 400, "room_config must be an object"),
    ({"room_config": {"agents": "x"}}, 400, "room_config is not a valid"),
    ({"participant_metadata": 3}, 400, "participant_metadata must be a string"),
    ({"participant_identity": ["x"]}, 400, "participant_identity must be a string"),
]


@pytest.mark.parametrize(("body", "status", "message"), BAD_BODIES)
@pytest.mark.gen_test
async def test_bad_bodies_get_a_json_4xx(
    http_client: Any, base_url: str, body: Any, status: int, message: str
) -> None:
    response = await post_token(http_client, base_url, body)
    assert response.code == status
    assert response.headers["Content-Type"].startswith("application/json")
    assert message in json.loads(response.body)["errorMessage"]


@pytest.mark.gen_test
async def test_oversized_body_is_413(http_client: Any, base_url: str) -> None:
    body = {"roomName": "R", "participantName": "a", "pad": "x" * 70_000}
    response = await post_token(http_client, base_url, body)
    assert response.code == 413
    assert "larger than 65536 bytes" in json.loads(response.body)["errorMessage"]


@pytest.mark.gen_test
async def test_wrong_content_type_is_415(http_client: Any, base_url: str) -> None:
    response = await http_client.fetch(
        base_url + "/token",
        method="POST",
        body="roomName=R",
        raise_error=False,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.code == 415
    assert "Content-Type must be application/json" in json.loads(response.body)["errorMessage"]


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
@pytest.mark.gen_test
async def test_wrong_method_is_405_json(http_client: Any, base_url: str, method: str) -> None:
    body = None if method in ("GET", "DELETE") else b"{}"
    response = await http_client.fetch(
        base_url + "/token", method=method, body=body, raise_error=False, allow_nonstandard_methods=True
    )
    assert response.code == 405
    assert json.loads(response.body)["errorMessage"] == "Method Not Allowed"


@pytest.mark.gen_test
async def test_preflight_from_a_tutorial_dev_server(http_client: Any, base_url: str) -> None:
    response = await http_client.fetch(
        base_url + "/token",
        method="OPTIONS",
        raise_error=False,
        headers={
            "Origin": "http://localhost:5080",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert response.code == 204
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert "content-type" in response.headers["Access-Control-Allow-Headers"].lower()
    assert "POST" in response.headers["Access-Control-Allow-Methods"]
    actual = await post_token(
        http_client, base_url, {"roomName": "R", "participantName": "a"}, Origin="http://localhost:5080"
    )
    assert actual.headers["Access-Control-Allow-Origin"] == "*"


@pytest.mark.gen_test
async def test_allow_list_of_origins(http_client: Any, base_url: str, app: Any) -> None:
    from dataclasses import replace

    app.settings["config"] = replace(
        app.settings["config"], cors_allowed_origins=("http://localhost:5080", "null")
    )
    electron = await post_token(
        http_client, base_url, {"roomName": "R", "participantName": "a"}, Origin="null"
    )
    assert electron.code == 200 and electron.headers["Access-Control-Allow-Origin"] == "null"
    foreign = await http_client.fetch(
        base_url + "/token",
        method="OPTIONS",
        raise_error=False,
        headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert foreign.code == 403
    assert "Access-Control-Allow-Origin" not in foreign.headers


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {
            "name": "Ada",
            "metadata": "m",
            "attributes": {"a": "b"},
            "room_config": {"agents": [{"agent_name": "x"}]},
        },
        {"attributes": {}, "metadata": ""},
    ],
)
def test_minted_claims_are_what_livekit_api_writes(extra: dict[str, Any]) -> None:
    """TokenClaims mints without AccessToken for speed; the payload must stay the same."""
    import jwt
    from google.protobuf.json_format import MessageToDict, ParseDict
    from livekit.api import AccessToken, VideoGrants
    from livekit.protocol.room import RoomConfiguration

    from handlers.token import TokenClaims

    reference = (
        AccessToken(API_KEY, API_SECRET)
        .with_identity("alice")
        .with_grants(VideoGrants(room_join=True, room="R"))
    )
    ours = TokenClaims("R", "alice", name=extra.get("name", ""))
    if "name" in extra:
        reference.with_name(extra["name"])
    if "metadata" in extra:
        reference.with_metadata(extra["metadata"])
        ours.extra["metadata"] = extra["metadata"]
    if "attributes" in extra:
        reference.with_attributes(extra["attributes"])
        ours.extra["attributes"] = extra["attributes"]
    if "room_config" in extra:
        config = ParseDict(extra["room_config"], RoomConfiguration())
        reference.with_room_config(config)
        ours.extra["roomConfig"] = MessageToDict(config)
    theirs = jwt.decode(reference.to_jwt(), API_SECRET, algorithms=["HS256"])
    mine = jwt.decode(ours.to_jwt(API_KEY, API_SECRET, 6 * 3600), API_SECRET, algorithms=["HS256"])
    assert abs(mine.pop("exp") - theirs.pop("exp")) <= 1 and abs(mine.pop("nbf") - theirs.pop("nbf")) <= 1
    assert mine == theirs
    assert list(mine) == list(theirs)  # the same order too: byte-for-byte the same token shape


def test_hand_signed_tokens_are_what_pyjwt_signs() -> None:
    import jwt

    from handlers.token import sign_hs256

    claims = {"video": {"roomJoin": True, "room": "R"}, "sub": "a", "iss": API_KEY, "nbf": 1, "exp": 2}
    assert sign_hs256(claims, API_SECRET) == jwt.encode(claims, API_SECRET, algorithm="HS256")
    # Non-ASCII names are sent as UTF-8 rather than \u escapes: the same claims once decoded.
    unicode_claims = {**claims, "sub": "ü", "video": {"roomJoin": True, "room": "Réunion 会议"}}
    token = sign_hs256(unicode_claims, API_SECRET)
    assert jwt.get_unverified_header(token) == {"alg": "HS256", "typ": "JWT"}
    options = {"verify_exp": False, "verify_nbf": False}
    assert jwt.decode(token, API_SECRET, algorithms=["HS256"], options=options) == unicode_claims
