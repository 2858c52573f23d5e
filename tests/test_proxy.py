"""Behind the reverse proxies docs/operating.md shows, run as written (its blocks, with free ports and a
test certificate filled in): Debian's nginx and Caddy in front, Chromium on the other side.
The page's event panel connects and shows webhooks; the server sees the client's address and
scheme; a DNS-rebound page is refused, through a proxy or not."""

from __future__ import annotations

import asyncio
import http.client
import json
import shlex
import socket
import ssl
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.netutil import DefaultLoopResolver, OverrideResolver
from tornado.websocket import websocket_connect

from dev.livekit_server import free_port
from tests.conftest import CHROMIUM, CHROMIUM_ARGS, post_webhook, require, wait_until, webhook_event
from tests.proxies import (
    CADDY,
    NGINX,
    OPENSSL,
    Caddy,
    Certificate,
    Nginx,
    Proxy,
    fill_in,
    make_certificate,
    operating_block,
)

pytestmark = pytest.mark.browser

# Names Chromium resolves to 127.0.0.1 here: the site's own, and an attacker's that DNS
# rebinding points at this server.
SITE = "app.example.com"
REBOUND = "rebound.example"


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    require("openssl", Path(OPENSSL).is_file(), "install Debian's openssl (`make system-packages` as root)")
    return make_certificate(tmp_path_factory.mktemp("tls"), [SITE], ["127.0.0.1"])


@pytest.fixture(scope="module")
def chromium(certificate: Certificate) -> Iterator[Any]:
    """Chromium trusting only the test certificate's key (never all certificates)."""
    require(
        "Chromium", Path(CHROMIUM).is_file(), "install Debian's chromium (`make system-packages` as root)"
    )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                *CHROMIUM_ARGS,
                f"--ignore-certificate-errors-spki-list={certificate.spki_sha256}",
                f"--host-resolver-rules=MAP {SITE} 127.0.0.1, MAP {REBOUND} 127.0.0.1",
            ],
        )
        yield browser
        browser.close()


@pytest.fixture
def page(chromium: Any) -> Iterator[Any]:
    context = chromium.new_context()
    yield context.new_page()
    context.close()


def proxy_fixture(kind: type[Proxy], binary: str, how: str) -> Any:
    @pytest.fixture
    def start_proxy(tmp_path: Path) -> Iterator[Callable[..., Proxy]]:
        require(kind.name, Path(binary).is_file(), how)
        started: list[Proxy] = []

        def start(render: Callable[[int], str]) -> Proxy:
            proxy = kind(tmp_path / f"{kind.name}-{len(started)}", render)
            started.append(proxy)
            return proxy.start()

        try:
            yield start
        finally:
            for proxy in started:
                proxy.stop()

    return start_proxy


nginx = proxy_fixture(Nginx, NGINX, "install Debian's nginx (`make system-packages` as root)")
caddy = proxy_fixture(Caddy, CADDY, "install Debian's caddy (`make system-packages` as root)")


def docs_environment(command_line: str) -> dict[str, str]:
    """The VAR=value words of a shell line of the docs (after `export`, or before the command)."""
    words = shlex.split(command_line)
    words = words[1:] if words[0] == "export" else words
    return dict(word.split("=", 1) for word in words if "=" in word and not word.startswith("-"))


def docs_server_environment(proxy_port: int) -> dict[str, str]:
    """The HTTPS section's server settings, its public origin on the proxy's test port."""
    environment = docs_environment(operating_block("sh", "PUBLIC_ORIGINS=").strip())
    origin = f"https://{SITE}"
    environment["PUBLIC_ORIGINS"] = fill_in(environment["PUBLIC_ORIGINS"], {origin: f"{origin}:{proxy_port}"})
    return environment


def handshake(url: str, context: ssl.SSLContext | None = None, **headers: str) -> int:
    """A raw WS /events handshake (Host from the URL, whose name resolves as in the browser):
    101, or the refusal's status."""

    async def attempt() -> int:
        request = HTTPRequest(url + "/events", headers=headers, ssl_options=context)
        resolver = OverrideResolver(DefaultLoopResolver(), {SITE: "127.0.0.1", REBOUND: "127.0.0.1"})
        try:
            client = await websocket_connect(request, resolver=resolver)
        except HTTPClientError as error:
            return error.code
        client.close()
        while await asyncio.wait_for(client.read_message(), 10) is not None:
            pass  # until the server's close frame: nothing left open
        return 101

    # On a thread of its own: Playwright's sync API holds this thread's event loop.
    with ThreadPoolExecutor(1) as thread:
        return thread.submit(asyncio.run, attempt()).result()


def token_status(port: int, source: str, context: ssl.SSLContext, **headers: str) -> int:
    """POST https://app.example.com:PORT/token from the loopback address `source`, as another
    client would (each has its own address)."""
    connection = http.client.HTTPSConnection(SITE, port, timeout=10, context=context)
    raw = socket.create_connection(("127.0.0.1", port), 10, source_address=(source, 0))
    connection.sock = context.wrap_socket(raw, server_hostname=SITE)
    body = json.dumps({"roomName": "r", "participantName": "p"})
    connection.request("POST", "/token", body, {"Content-Type": "application/json", **headers})
    status = connection.getresponse().status
    connection.close()
    return status


def open_event_panel(page: Any, url: str) -> str:
    """Open the demo page; the state its event socket reaches: `live`, or `reconnecting` when refused."""
    page.goto(url)
    return str(
        wait_until(
            page,
            """() => { const state = document.getElementById('socket-state').dataset.state;
                       return state === 'connecting' ? false : state; }""",
        )
    )


def shows_event(page: Any, event: dict[str, Any]) -> bool:
    return bool(
        wait_until(
            page,
            "room => [...document.querySelectorAll('#event-list li.event')]"
            ".some(row => row.dataset.room === room)",
            event["room"]["name"],
        )
    )


def test_the_docs_load_balancer_example_works_as_written(
    redis_server: Any, server_process: Any, nginx: Any, page: Any
) -> None:
    """Two instances sharing events through Redis, nginx in front: docs/operating.md's blocks."""
    shell = operating_block("sh", "SERVER_PORT=6081").strip().splitlines()
    environment = docs_environment(shell[0])
    assert docs_environment(shell[1]) == {"SERVER_PORT": "6081"}
    assert docs_environment(shell[2]) == {"SERVER_PORT": "6082"}
    redis = redis_server()
    environment["EVENTS_REDIS_URL"] = fill_in(
        environment["EVENTS_REDIS_URL"], {"redis://127.0.0.1:6379/0": redis.url}
    )
    first, second = server_process(**environment), server_process(**environment)
    block = operating_block("nginx", "upstream app_servers")
    proxy = nginx(
        lambda port: fill_in(
            block,
            {
                "listen 6080;": f"listen 127.0.0.1:{port};",
                "127.0.0.1:6081": f"127.0.0.1:{first.port}",
                "127.0.0.1:6082": f"127.0.0.1:{second.port}",
            },
        )
    )
    site = f"http://127.0.0.1:{proxy.port}"
    for url in (site, f"http://localhost:{proxy.port}"):
        assert open_event_panel(page, url + "/") == "live"
        # nginx takes turns: one webhook lands on each instance, both reach this page.
        events = [webhook_event("room_started", room=f"{url}-{n}") for n in range(2)]
        assert all(post_webhook(site, event) == 200 for event in events)
        assert all(shows_event(page, event) for event in events)
    assert "/livekit/webhook" in first.log_text() and "/livekit/webhook" in second.log_text()
    assert "/events" in (proxy.directory / "access.log").read_text()  # it went through nginx
    # The same, raw; and a DNS-rebound page (the attacker's name as Origin and Host).
    assert handshake(site.replace("http", "ws"), Origin=site) == 101
    rebound = f"{REBOUND}:{proxy.port}"
    assert handshake(site.replace("http", "ws"), Origin=f"http://{rebound}", Host=rebound) == 403
    assert open_event_panel(page, f"http://{rebound}/") == "reconnecting"


@pytest.mark.parametrize("trusted", [True, False])
def test_the_docs_https_example_with_nginx(
    server_process: Any, nginx: Any, page: Any, certificate: Certificate, trusted: bool
) -> None:
    """TLS ends at nginx: the page at its name and at its address, wss to itself, and the
    client addresses and scheme from nginx's headers only when TRUST_PROXY_HEADERS is on."""
    app_port = free_port()  # the proxy first: the server's PUBLIC_ORIGINS has the proxy's port
    block = operating_block("nginx", "ssl_certificate")
    proxy = nginx(
        lambda port: fill_in(
            block,
            {
                "listen 443 ssl;": f"listen 127.0.0.1:{port} ssl;",
                "/etc/ssl/certs/app.example.com.pem": str(certificate.cert),
                "/etc/ssl/private/app.example.com.key": str(certificate.key),
                "http://127.0.0.1:6080": f"http://127.0.0.1:{app_port}",
            },
        )
    )
    environment = docs_server_environment(proxy.port)
    environment["TRUST_PROXY_HEADERS"] = str(trusted).lower()
    server = server_process(**environment, SERVER_PORT=str(app_port), TOKEN_RATE_LIMIT="2")
    check_behind_tls_proxy(server, proxy, page, certificate, trusted, any_host=True)


def check_behind_tls_proxy(
    server: Any, proxy: Proxy, page: Any, certificate: Certificate, trusted: bool, any_host: bool
) -> None:
    """`any_host`: the proxy passes every Host on (nginx's only server block), not only the site's."""
    port = proxy.port
    assert open_event_panel(page, f"https://{SITE}:{port}/") == "live"
    event = webhook_event("participant_joined", room="behind-tls", participant={"identity": "ana"})
    assert post_webhook(server.url, event) == 200  # as the LiveKit server posts, not through the proxy
    assert shows_event(page, event)
    context = ssl.create_default_context(cafile=str(certificate.ca))
    assert handshake(f"wss://{SITE}:{port}", context, Origin=f"https://{SITE}:{port}") == 101
    assert handshake(f"wss://{SITE}:{port}", context, Origin=f"https://{REBOUND}:{port}") == 403
    if any_host:
        # A page at an IP address needs no setting; over https it needs the proxy's scheme.
        assert open_event_panel(page, f"https://127.0.0.1:{port}/") == "live"
        wss = f"wss://127.0.0.1:{port}"
        assert handshake(wss, context, Origin=f"https://127.0.0.1:{port}") == 101
        # Over TLS, a page claiming plain http: refused once the proxy's scheme is trusted.
        assert handshake(wss, context, Origin=f"http://127.0.0.1:{port}") == (403 if trusted else 101)
        # DNS rebinding through the proxy (the browser was told to accept the certificate).
        assert open_event_panel(page, f"https://{REBOUND}:{port}/") == "reconnecting"
        unnamed = ssl.create_default_context(cafile=str(certificate.ca))
        unnamed.check_hostname = False
        assert handshake(f"wss://{REBOUND}:{port}", unnamed, Origin=f"https://{REBOUND}:{port}") == 403

    # Client addresses: two clients (127.0.0.5 and .6) through the proxy, 2 tokens a minute each.
    # A client's own X-Real-IP / X-Forwarded-For must not change who it is.
    spoof = {"X-Real-IP": "203.0.113.7", "X-Forwarded-For": "203.0.113.8"}
    statuses = [token_status(port, "127.0.0.5", context, **spoof) for _ in range(3)]
    assert statuses == [200, 200, 429]
    other = token_status(port, "127.0.0.6", context)
    # Trusted: the other client has its own allowance. Not: everyone is the proxy's address.
    assert other == (200 if trusted else 429)


def test_the_docs_caddy_example(server_process: Any, caddy: Any, page: Any, certificate: Certificate) -> None:
    """Caddy as docs/operating.md shows it, with the test's certificate instead of a public one."""
    app_port = free_port()
    block = operating_block("caddyfile", "reverse_proxy")

    def render(port: int, header_line: bool = True) -> str:
        text = fill_in(
            block,
            {
                f"{SITE} {{": f"https://{SITE}:{port} {{\n  tls {certificate.cert} {certificate.key}",
                "127.0.0.1:6080": f"127.0.0.1:{app_port}",
            },
        )
        return text if header_line else fill_in(text, {"header_up X-Real-IP {remote_host}": ""})

    proxy = caddy(render)
    environment = docs_server_environment(proxy.port)
    server = server_process(**environment, SERVER_PORT=str(app_port), TOKEN_RATE_LIMIT="2")
    check_behind_tls_proxy(server, proxy, page, certificate, trusted=True, any_host=False)

    # Why the docs' header_up line: without it, Caddy passes a client's X-Real-IP on.
    bare = caddy(lambda port: render(port, header_line=False))
    context = ssl.create_default_context(cafile=str(certificate.ca))
    picked = [
        token_status(bare.port, "127.0.0.7", context, **{"X-Real-IP": f"198.51.100.{n}"}) for n in range(4)
    ]
    assert picked == [200] * 4


def test_a_dns_rebound_page_gets_no_events_without_a_proxy(server_process: Any, page: Any) -> None:
    """The attacker's name resolves to this server: its page loads, but neither its event
    socket nor its same-origin fetch of the history get anything."""
    server = server_process()
    assert post_webhook(server.url, webhook_event("room_started", room="secret-room")) == 200
    fetch_history = "() => fetch('/events/history').then(response => response.text())"
    assert open_event_panel(page, f"http://{REBOUND}:{server.port}/") == "reconnecting"
    assert "secret-room" not in page.evaluate(fetch_history)
    assert "403 GET /events " in server.log_text()
    assert "403 GET /events/history " in server.log_text()
    assert open_event_panel(page, f"http://127.0.0.1:{server.port}/") == "live"
    assert "secret-room" in page.evaluate(fetch_history)
