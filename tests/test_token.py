"""POST /token: both request shapes, the claims inside, CORS, and every bad input."""

from __future__ import annotations

import json
import time
from datetime import timedelta
from typing import Any

import pytest

from tests.conftest import API_KEY, API_SECRET, post_token, token_claims


@pytest.mark.gen_test
async def test_openvidu_shape_gives_exactly_a_token(http_client: Any, base_url: str) -> None:
    before = int(time.time())
    response = await post_token(http_client, base_url, {"roomName": "R1", "participantName": "alice"})
    assert response.code == 200
    body = json.loads(response.body)
    assert list(body) == ["token"]  # the Android client rejects unknown keys
    claims = token_claims(body["token"])
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
    assert token_claims(json.loads(response.body)["token"]).identity == "ios"


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
    claims = token_claims(body["participant_token"])
    assert (claims.identity, claims.name, claims.video.room) == ("user-7", "Ada", "support")
    assert claims.metadata == '{"role":"agent"}'
    assert claims.attributes == {"team": "blue"}
    assert claims.room_config.agents[0].agent_name == "helper"
    assert claims.room_config.agents[0].metadata == "m1"


@pytest.mark.gen_test
async def test_standard_shape_generates_missing_room_and_identity(http_client: Any, base_url: str) -> None:
    first = json.loads((await post_token(http_client, base_url, {})).body)["participant_token"]
    second = json.loads((await post_token(http_client, base_url, {})).body)["participant_token"]
    one, two = token_claims(first), token_claims(second)
    assert one.identity and one.video.room and one.video.room_join
    assert one.identity != two.identity and one.video.room != two.video.room


@pytest.mark.settings(token_ttl=timedelta(minutes=10))
@pytest.mark.gen_test
async def test_token_ttl_follows_config(http_client: Any, base_url: str) -> None:
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
        http_client,
        base_url,
        {"roomName": "R", "participantName": "a"},
        headers={"Origin": "http://localhost:5080"},
    )
    assert actual.headers["Access-Control-Allow-Origin"] == "*"


@pytest.mark.settings(cors_allowed_origins=("http://localhost:5080", "null"))
@pytest.mark.gen_test
async def test_allow_list_of_origins(http_client: Any, base_url: str) -> None:
    electron = await post_token(
        http_client, base_url, {"roomName": "R", "participantName": "a"}, headers={"Origin": "null"}
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
        {"video": {"can_publish": False, "hidden": True, "can_publish_sources": ["microphone"]}},
        {"video": {"can_publish": 1}},  # equal to the default's True, but written as 1
    ],
)
def test_minted_claims_are_what_livekit_api_writes(extra: dict[str, Any]) -> None:
    """Grants are minted without AccessToken for speed; the payload must stay the same."""
    from datetime import timedelta

    import jwt
    from google.protobuf.json_format import ParseDict
    from livekit.api import AccessToken, VideoGrants
    from livekit.protocol.room import RoomConfiguration

    from extensions import Grant
    from ground.config import Config
    from handlers.token import mint

    video = VideoGrants(room_join=True, room="R", **extra.get("video", {}))
    reference = AccessToken(API_KEY, API_SECRET).with_identity("alice").with_grants(video)
    ours = Grant("R", "alice", name=extra.get("name", ""), video=VideoGrants(**extra.get("video", {})))
    if "name" in extra:
        reference.with_name(extra["name"])
    if "metadata" in extra:
        reference.with_metadata(extra["metadata"])
        ours.metadata = extra["metadata"]
    if "attributes" in extra:
        reference.with_attributes(extra["attributes"])
        ours.attributes = extra["attributes"]
    if "room_config" in extra:
        room_config = ParseDict(extra["room_config"], RoomConfiguration())
        reference.with_room_config(room_config)
        ours.room_config = room_config
    theirs = jwt.decode(reference.to_jwt(), API_SECRET, algorithms=["HS256"])
    config = Config(token_ttl=timedelta(hours=6))
    mine = jwt.decode(mint(ours, config), API_SECRET, algorithms=["HS256"])
    assert abs(mine.pop("exp") - theirs.pop("exp")) <= 1 and abs(mine.pop("nbf") - theirs.pop("nbf")) <= 1
    assert mine == theirs
    assert list(mine) == list(theirs)  # the same order too: byte-for-byte the same token shape
    assert list(mine["video"]) == list(theirs["video"])  # unchanged grants take a shortcut (authorize.py)


PRIVILEGED_ROOM_CONFIG = [
    ({"egress": {"room": {"room_name": "R"}}}, "room_config.egress"),
    ({"max_participants": 500}, "room_config.max_participants"),
    ({"maxParticipants": 500}, "room_config.max_participants"),
    ({"empty_timeout": 86400}, "room_config.empty_timeout"),
    ({"departure_timeout": 3600}, "room_config.departure_timeout"),
    ({"metadata": "vip"}, "room_config.metadata"),
    ({"agents": [{"agent_name": "helper", "deployment": "canary"}]}, "room_config.agents.deployment"),
    ({"agents": [{"agent_name": "a"}], "min_playout_delay": 1}, "room_config.min_playout_delay"),
]


@pytest.mark.parametrize(("room_config", "named"), PRIVILEGED_ROOM_CONFIG)
@pytest.mark.gen_test
async def test_clients_may_only_ask_for_agent_dispatch_by_default(
    http_client: Any, base_url: str, room_config: dict[str, Any], named: str
) -> None:
    response = await post_token(http_client, base_url, {"room_name": "R", "room_config": room_config})
    assert response.code == 403
    message = json.loads(response.body)["errorMessage"]
    assert message.startswith(f"{named} may not be set") and "TOKEN_ROOM_CONFIG_FIELDS" in message
    # What clients may ask for by default: an agent dispatch, its name and metadata.
    dispatch = {"agents": [{"agent_name": "helper", "metadata": '{"lang":"en"}'}]}
    allowed = await post_token(http_client, base_url, {"room_name": "R", "room_config": dispatch})
    assert allowed.code == 201


@pytest.mark.settings(token_room_config_fields=("agents", "max_participants", "agents.deployment"))
@pytest.mark.gen_test
async def test_operator_allows_more_of_room_config(http_client: Any, base_url: str) -> None:
    room_config = {"max_participants": 3, "agents": [{"agent_name": "helper", "deployment": "canary"}]}
    response = await post_token(http_client, base_url, {"room_name": "R", "room_config": room_config})
    assert response.code == 201
    claims = token_claims(json.loads(response.body)["participant_token"])
    assert claims.room_config.max_participants == 3
    assert claims.room_config.agents[0].deployment == "canary"
    egress = await post_token(http_client, base_url, {"room_config": {"egress": {"room": {}}}})
    assert egress.code == 403 and "room_config.egress" in json.loads(egress.body)["errorMessage"]


@pytest.mark.settings(token_room_config_fields=())
@pytest.mark.gen_test
async def test_room_config_fields_none_refuses_even_agents(http_client: Any, base_url: str) -> None:
    response = await post_token(http_client, base_url, {"room_config": {"agents": [{"agent_name": "a"}]}})
    assert response.code == 403 and "room_config.agents" in json.loads(response.body)["errorMessage"]


@pytest.mark.parametrize(
    "pattern",
    [
        pytest.param(pattern, marks=pytest.mark.settings(room_name_pattern=pattern))
        for pattern in (r"[a-z0-9]+", r"room-[0-9a-f]{8}", r"[a-z]+_[0-9a-f]+", r"[0-9a-f]{8}")
    ],
)
@pytest.mark.gen_test
async def test_generated_room_names_obey_room_name_pattern(
    http_client: Any, base_url: str, pattern: str
) -> None:
    import re

    for _ in range(5):
        response = await post_token(http_client, base_url, {"participant_identity": "a"})
        assert response.code == 201
        room = token_claims(json.loads(response.body)["participant_token"]).video.room
        assert re.fullmatch(pattern, room), room


@pytest.mark.settings(room_name_pattern=r"team-[a-z]+")
@pytest.mark.gen_test
async def test_a_pattern_no_generated_name_meets_asks_for_a_room_name(
    http_client: Any, base_url: str
) -> None:
    response = await post_token(http_client, base_url, {})
    assert response.code == 422
    message = json.loads(response.body)["errorMessage"]
    assert "room_name is required" in message and "ROOM_NAME_PATTERN" in message
    named = await post_token(http_client, base_url, {"room_name": "team-blue"})
    assert named.code == 201


# Line and paragraph separators, bidi overrides and isolates, invisible characters, a tag
# character, the soft hyphen, the byte order mark: none may be part of a name.
HIDDEN = ["\u2028", "\u2029", "\u202e", "\u202a", "\u2066", "\u200e", "\u061c", "\u200b", "\u2060"]
HIDDEN += ["\ufeff", "\U000e0041", "\xad", "\x85", "\x1b", "\x00", "\x7f"]
NAME_FIELDS = [
    ("roomName", {"participantName": "alice"}),
    ("participantName", {"roomName": "R"}),
    ("room_name", {}),
    ("participant_identity", {}),
    ("participant_name", {}),
]


@pytest.mark.parametrize("char", HIDDEN, ids=[f"U+{ord(char):04X}" for char in HIDDEN])
@pytest.mark.parametrize(("field", "others"), NAME_FIELDS, ids=[field for field, _ in NAME_FIELDS])
@pytest.mark.gen_test
async def test_names_refuse_control_format_and_separator_characters(
    http_client: Any, base_url: str, field: str, others: dict[str, str], char: str
) -> None:
    response = await post_token(http_client, base_url, {**others, field: f"ali{char}ce"})
    assert response.code == 400
    message = json.loads(response.body)["errorMessage"]
    assert message.startswith(f"{field} must not contain control characters")
    assert f"U+{ord(char):04X}" in message


# Characters that show as nothing and are not control or format characters: a name of
# them alone is blank on every page, and one empty key for bans and IDENTITY_CONFLICT.
INVISIBLE_ONLY = ["\u3164", "\u115f\u1160", "\u200d", "\ufe0f", "\u034f", "\u200c\u3164"]


@pytest.mark.parametrize("name", INVISIBLE_ONLY, ids=[f"U+{ord(name[0]):04X}" for name in INVISIBLE_ONLY])
@pytest.mark.parametrize(("field", "others"), NAME_FIELDS, ids=[field for field, _ in NAME_FIELDS])
@pytest.mark.gen_test
async def test_names_of_invisible_characters_alone_are_refused(
    http_client: Any, base_url: str, field: str, others: dict[str, str], name: str
) -> None:
    response = await post_token(http_client, base_url, {**others, field: name})
    assert response.code == 400
    assert json.loads(response.body)["errorMessage"] == f"{field} must contain a visible character"


@pytest.mark.parametrize(
    "name",
    [
        "Réunion 会议",
        "family \U0001f468\u200d\U0001f469\u200d\U0001f467",  # an emoji sequence joined by ZWJ
        "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645",  # Persian, with a zero-width non-joiner
        "Ada\u00a0Lovelace",  # no-break space
        'a b=c "d" \\e',
    ],
)
@pytest.mark.gen_test
async def test_real_names_still_pass(http_client: Any, base_url: str, name: str) -> None:
    response = await post_token(http_client, base_url, {"roomName": name, "participantName": name})
    assert response.code == 200
    claims = token_claims(json.loads(response.body)["token"])
    assert (claims.video.room, claims.identity) == (name, name)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"participant_attributes": {"role": "\x1b[31madmin"}}, "participant_attributes['role']"),
        ({"participant_attributes": {"role": "a\x00b"}}, "participant_attributes['role']"),
        ({"participant_attributes": {"role": "\u202eadmin"}}, "participant_attributes['role']"),
        ({"participant_attributes": {"ro\x00le": "x"}}, "participant_attributes keys"),
        ({"participant_attributes": {"ro\nle": "x"}}, "participant_attributes keys"),
        ({"participant_attributes": {"ro\u2028le": "x"}}, "participant_attributes keys"),
        ({"participant_metadata": '{"a":"\x00"}'}, "participant_metadata"),
        ({"participant_metadata": "\x1b]0;title\x07"}, "participant_metadata"),
        ({"room_config": {"agents": [{"agent_name": "help\u2028er"}]}}, "room_config.agents.agent_name"),
        (
            {"room_config": {"agents": [{"agent_name": "a", "metadata": "\x1b[2J"}]}},
            "room_config.agents.metadata",
        ),
    ],
)
@pytest.mark.gen_test
async def test_attributes_and_metadata_refuse_nul_escape_and_bidi(
    http_client: Any, base_url: str, body: dict[str, Any], field: str
) -> None:
    response = await post_token(http_client, base_url, body)
    assert response.code == 400
    assert json.loads(response.body)["errorMessage"].startswith(
        f"{field} must not contain control characters"
    )


@pytest.mark.gen_test
async def test_free_text_may_span_lines(http_client: Any, base_url: str) -> None:
    body = {
        "participant_metadata": '{\n\t"role": "agent"\r\n}',
        "participant_attributes": {"bio": "line one\nline two\ttabbed", "emoji": "\U0001f44d\U0001f3fd"},
    }
    response = await post_token(http_client, base_url, body)
    assert response.code == 201
    claims = token_claims(json.loads(response.body)["participant_token"])
    assert claims.metadata == body["participant_metadata"]
    assert claims.attributes == body["participant_attributes"]
