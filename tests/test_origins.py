"""Whose pages may open WS /events: this server's own (an IP address, localhost, or a name in
PUBLIC_ORIGINS), never a name only because Host agrees (DNS rebinding); and under which hosts
/events/history answers. Through real proxies and a browser: tests/test_proxy.py."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.httputil import HTTPHeaders, HTTPServerRequest, RequestStartLine
from tornado.websocket import websocket_connect

from ground.config import Config, ConfigError
from handlers.support.origins import known_host, parse_origin, same_origin
from tests.conftest import events_url


def request_to(host: str, protocol: str = "http", **headers: str) -> HTTPServerRequest:
    """A request as the handler sees it; `protocol` is what Tornado's xheaders made of
    X-Forwarded-Proto (it does that only when TRUST_PROXY_HEADERS is on)."""
    start_line = RequestStartLine("GET", "/events", "HTTP/1.1")
    request = HTTPServerRequest(start_line=start_line, headers=HTTPHeaders({"Host": host, **headers}))
    request.protocol = protocol
    return request


PLAIN = Config()
TRUSTED = Config(trust_proxy_headers=True)
NAMED = Config(public_origins=("https://app.example.com", "http://App.Example.com:8080/"))

CASES = [
    # (origin, request, config, accepted, why)
    ("http://localhost:6080", request_to("localhost:6080"), PLAIN, True, "localhost, the host asked for"),
    ("http://127.0.0.1:6080", request_to("127.0.0.1:6080"), PLAIN, True, "an IPv4 address"),
    ("http://[::1]:6080", request_to("[::1]:6080"), PLAIN, True, "an IPv6 address"),
    ("http://192.168.1.20:6080", request_to("192.168.1.20:6080"), PLAIN, True, "a LAN address"),
    ("http://192.168.1.20", request_to("192.168.1.20"), PLAIN, True, "default port on both sides"),
    ("https://10.0.0.5", request_to("10.0.0.5"), PLAIN, True, "TLS at a proxy on 443, Host without port"),
    ("http://evil.example:6080", request_to("evil.example:6080"), PLAIN, False, "DNS rebinding"),
    ("http://evil.example", request_to("evil.example"), PLAIN, False, "DNS rebinding, port 80"),
    ("http://localhost.evil.example:6080", request_to("localhost.evil.example:6080"), PLAIN, False, "a name"),
    ("http://127.0.0.1.nip.io:6080", request_to("127.0.0.1.nip.io:6080"), PLAIN, False, "a name"),
    ("http://evil.example:6080", request_to("localhost:6080"), PLAIN, False, "another site"),
    ("http://localhost:5080", request_to("localhost:6080"), PLAIN, False, "another port"),
    ("http://127.0.0.2:6080", request_to("127.0.0.1:6080"), PLAIN, False, "another address"),
    ("http://localhost:6080", request_to("localhost"), PLAIN, False, "a proxy dropped Host's port"),
    ("null", request_to("localhost:6080"), PLAIN, False, "sandboxed page or file://"),
    ("http://localhost:6080/x", request_to("localhost:6080"), PLAIN, False, "not an origin"),
    ("http://a@localhost:6080", request_to("localhost:6080"), PLAIN, False, "not an origin"),
    ("http://localhost:99999", request_to("localhost:99999"), PLAIN, False, "a port out of range"),
    ("chrome-extension://abc", request_to("abc"), PLAIN, False, "not a web page"),
    ("https://app.example.com", request_to("app.example.com"), NAMED, True, "listed"),
    ("https://APP.example.com:443", request_to("whatever"), NAMED, True, "listed, any spelling"),
    ("http://app.example.com:8080", request_to("app.example.com:8080"), NAMED, True, "listed"),
    ("http://app.example.com", request_to("app.example.com"), NAMED, False, "listed with https only"),
    ("https://app.example.com:8443", request_to("app.example.com:8443"), NAMED, False, "another port"),
    ("https://www.app.example.com", request_to("www.app.example.com"), NAMED, False, "not listed"),
    ("http://box.lan:6080", request_to("box.lan:6080"), Config(server_host="Box.lan"), True, "SERVER_HOST"),
    ("http://box.lan:6080", request_to("box.lan:6081"), Config(server_host="box.lan"), False, "port"),
    # Behind a proxy: X-Forwarded-* count only when TRUST_PROXY_HEADERS is on.
    ("https://127.0.0.1:8443", request_to("127.0.0.1:8443", "https"), TRUSTED, True, "scheme from the proxy"),
    ("http://127.0.0.1:8443", request_to("127.0.0.1:8443", "https"), TRUSTED, False, "page over http"),
    ("https://127.0.0.1:8443", request_to("127.0.0.1:8443", "http"), TRUSTED, False, "proxy says http"),
    ("http://127.0.0.1:8443", request_to("127.0.0.1:8443"), PLAIN, True, "untrusted: scheme unknown"),
    (
        "https://[::1]:8443",
        request_to("backend:6080", "https", **{"X-Forwarded-Host": "[::1]:8443"}),
        TRUSTED,
        True,
        "X-Forwarded-Host",
    ),
    (
        "https://127.0.0.1:8443",
        request_to("backend", "https", **{"X-Forwarded-Host": "evil.example, 127.0.0.1:8443"}),
        TRUSTED,
        True,
        "the last X-Forwarded-Host is the nearest proxy's",
    ),
    (
        "https://127.0.0.1:8443",
        request_to("backend", "https", **{"X-Forwarded-Host": "127.0.0.1:8443"}),
        PLAIN,
        False,
        "X-Forwarded-Host from an untrusted client",
    ),
    (
        "http://evil.example:6080",
        request_to("evil.example:6080", **{"X-Forwarded-Host": "evil.example:6080"}),
        TRUSTED,
        False,
        "DNS rebinding behind a proxy",
    ),
]


@pytest.mark.parametrize(
    ("origin", "request_", "config", "accepted"),
    [case[:4] for case in CASES],
    ids=[f"{case[0]}-{case[4]}" for case in CASES],
)
def test_same_origin(origin: str, request_: HTTPServerRequest, config: Config, accepted: bool) -> None:
    assert same_origin(origin, request_, config) is accepted


@pytest.mark.parametrize(
    ("host", "config", "known"),
    [
        ("localhost:6080", PLAIN, True),
        ("127.0.0.1", PLAIN, True),
        ("[::1]:6080", PLAIN, True),
        ("evil.example:6080", PLAIN, False),
        ("", PLAIN, False),
        ("app.example.com", NAMED, True),
        ("app.example.com:9999", NAMED, True),  # names are what DNS rebinding forges, not ports
        ("www.app.example.com", NAMED, False),
        ("box.lan:6080", Config(server_host="box.lan"), True),
    ],
)
def test_known_hosts(host: str, config: Config, known: bool) -> None:
    assert known_host(request_to(host), config) is known


def test_a_trusted_proxy_names_the_host() -> None:
    forwarded = request_to("127.0.0.1:6080", **{"X-Forwarded-Host": "evil.example"})
    assert not known_host(forwarded, TRUSTED)
    assert known_host(forwarded, PLAIN)  # an untrusted X-Forwarded-Host is ignored


def test_origins_are_compared_by_scheme_host_and_port() -> None:
    assert parse_origin("HTTPS://App.Example.COM:443/") == ("https", "app.example.com", 443)
    assert parse_origin("http://[0:0::1]") == ("http", "::1", 80)
    assert parse_origin("http://[::1") is None
    assert parse_origin("ws://localhost:6080") is None


def test_public_origins_setting() -> None:
    config = Config.from_env({"PUBLIC_ORIGINS": "https://app.example.com/, http://10.1.2.3:8080"}, None)
    assert config.public_origins == ("https://app.example.com", "http://10.1.2.3:8080")
    assert Config.from_env({}, None).public_origins == ()
    for wrong in ("app.example.com", "https://app.example.com/app", "*", "https://x:123456"):
        with pytest.raises(ConfigError, match="PUBLIC_ORIGINS lists the origins"):
            Config.from_env({"PUBLIC_ORIGINS": wrong}, None)


async def handshake(base_url: str, **headers: str) -> int:
    """The status of a WS /events handshake with these headers: 101 or the refusal's."""
    try:
        (await websocket_connect(HTTPRequest(events_url(base_url), headers=headers))).close()
        return 101
    except HTTPClientError as error:
        return error.code


@pytest.mark.gen_test
async def test_a_dns_rebound_page_cannot_open_the_event_socket(base_url: str, http_server: Any) -> None:
    port = base_url.rsplit(":", 1)[1]
    # What a browser sends from http://evil.example:PORT once evil.example resolves here.
    rebound = {"Origin": f"http://evil.example:{port}", "Host": f"evil.example:{port}"}
    assert await handshake(base_url, **rebound) == 403
    assert await handshake(base_url, **rebound, **{"Sec-Fetch-Site": "same-origin"}) == 403
    assert await handshake(base_url, Origin=f"http://127.0.0.1:{port}", Host=f"127.0.0.1:{port}") == 101
    assert await handshake(base_url, Origin=f"http://localhost:{port}", Host=f"localhost:{port}") == 101
    assert await handshake(base_url) == 101  # not a browser: no Origin


@pytest.mark.settings(public_origins=("https://app.example.com",), events_allowed_origins=("http://x.test",))
@pytest.mark.gen_test
async def test_named_pages_need_public_origins(base_url: str, http_server: Any) -> None:
    assert await handshake(base_url, Origin="https://app.example.com", Host="app.example.com") == 101
    assert await handshake(base_url, Origin="http://x.test", Host="x.test") == 101  # listed for events
    assert await handshake(base_url, Origin="https://evil.example", Host="evil.example") == 403


@pytest.mark.gen_test
async def test_a_refused_name_of_this_host_logs_what_to_set(
    base_url: str, http_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # Origins no other test uses: each hint is logged once per process.
    with caplog.at_level(logging.WARNING, logger="handlers.origins"):
        for _ in range(3):
            assert await handshake(base_url, Origin="https://box.example", Host="box.example") == 403
        assert await handshake(base_url, Origin="https://else.example", Host="box.example") == 403
        assert await handshake(base_url, Origin="http://localhost:6099", Host="localhost") == 403
    hints = [record.getMessage() for record in caplog.records if record.name == "handlers.origins"]
    assert hints == [
        "Refused a page at 'https://box.example' that asked for this server's own host: "
        "a name is trusted only when PUBLIC_ORIGINS lists it; add it there if it is ours",
        "Refused a page at 'http://localhost:6099' that asked for this server's own host: "
        "the Host header has no port: a proxy in front drops it (nginx: Host $http_host)",
    ]


@pytest.mark.settings(public_origins=("https://app.example.com",))
@pytest.mark.gen_test
async def test_history_answers_only_for_this_servers_hosts(http_client: Any, base_url: str) -> None:
    """A DNS-rebound page fetches /events/history same-origin, without an Origin header."""

    async def history(host: str) -> Any:
        url = base_url + "/events/history"
        return await http_client.fetch(url, headers={"Host": host}, raise_error=False)

    refused = await history("evil.example")
    assert refused.code == 403
    assert "PUBLIC_ORIGINS" in json.loads(refused.body)["errorMessage"]
    for host in ("localhost", "127.0.0.1:6080", "app.example.com"):
        assert (await history(host)).code == 200
