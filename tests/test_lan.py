"""`make run-lan` end to end: the real dev/lan.py in a subprocess (Caddy, livekit-server and
this server), driven by Chromium that trusts the generated certificate authority through
its NSS store, on 127.0.0.2 with OpenVidu's fixed ports 5443, 6443 and 7443."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dev import lan as run_lan
from dev.livekit_server import HOW_TO_GET, find_binary, free_port, is_listening
from ground.config import PROJECT_DIR, Config
from tests.conftest import CHROMIUM, CHROMIUM_ARGS, require, wait_until
from tests.test_e2e import WAIT_MS, join, wait_for_event, wait_for_playing_video

LAN_HOST = "127.0.0.2"
FIXED_PORTS = (5443, 6443, 7443)
DEMO = f"https://{LAN_HOST}:6443/"
CLIENT = f"https://{LAN_HOST}:5443/"
LAN_CLIENT = Path(__file__).parent / "lan_client"


class LanRun:
    """`python -m dev.lan` with LAN_HOST=127.0.0.2, free upstream ports and its own CA folder."""

    def __init__(self, workdir: Path, ca_dir: Path, client_port: int) -> None:
        self.workdir = workdir
        self.ca_dir = ca_dir
        self.client_port = client_port
        self.log_path = workdir / f"run-lan-{time.monotonic_ns()}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._pick_ports()

    def _pick_ports(self) -> None:
        self.server_port = free_port()
        self.livekit_port = free_port()
        self.ca_port = free_port()
        self.env = {
            **os.environ,
            "PYTHONPATH": str(PROJECT_DIR),
            "PYTHONUNBUFFERED": "1",
            "LAN_HOST": LAN_HOST,
            "LAN_CA_DIR": str(self.ca_dir),
            "LAN_CA_PORT": str(self.ca_port),
            "LAN_CLIENT_PORT": str(self.client_port),
            "LAN_RTC_TCP_PORT": str(free_port()),
            "LAN_RTC_UDP_PORT": str(free_port(socket.SOCK_DGRAM)),
            "SERVER_PORT": str(self.server_port),
            "LIVEKIT_URL": f"ws://127.0.0.1:{self.livekit_port}",
            "EVENTS_DB": str(self.workdir / "events.sqlite3"),
        }

    @property
    def root_certificate(self) -> Path:
        return self.ca_dir / "caddy" / "pki" / "authorities" / "local" / "root.crt"

    def start(self, timeout: float = 60.0) -> LanRun:
        for attempt in (1, 2):
            try:
                return self._start_once(timeout)
            except RuntimeError as error:
                # An upstream port taken meanwhile by another process: once more on new ones.
                if attempt == 2 or not re.search(r"is taken|already in use", str(error)):
                    raise
                self._pick_ports()
        raise AssertionError("unreachable")

    def _start_once(self, timeout: float) -> LanRun:
        with open(self.log_path, "ab") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "dev.lan"],
                cwd=self.workdir,  # no developer's .env
                env=self.env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.fetch(DEMO + "healthz")[0] == 200:
                    return self
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"run-lan did not start; its output:\n{self.output()[-4000:]}")
            time.sleep(0.2)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def fetch(self, url: str, **request: Any) -> tuple[int, dict[str, str], bytes]:
        """GET/POST over HTTPS trusting only the generated CA (or plain HTTP)."""
        context = (
            ssl.create_default_context(cafile=str(self.root_certificate)) if url[:5] == "https" else None
        )
        try:
            with urllib.request.urlopen(
                urllib.request.Request(url, **request), timeout=5, context=context
            ) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers), error.read()

    def history(self) -> list[dict[str, Any]]:
        return list(json.loads(self.fetch(DEMO + "events/history?limit=1000")[2]))

    def descendants(self) -> dict[int, str]:
        """Every process under run-lan, by pid, with its command name."""
        assert self.process is not None
        parents: dict[int, tuple[int, str]] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                text = stat.read_text()
            except OSError:
                continue
            name = text[text.index("(") + 1 : text.rindex(")")]
            parents[int(stat.parent.name)] = (int(text[text.rindex(")") + 2 :].split()[1]), name)
        found: dict[int, str] = {}
        frontier = [self.process.pid]
        while frontier:
            parent = frontier.pop()
            for pid, (ppid, name) in parents.items():
                if ppid == parent and pid not in found:
                    found[pid] = name
                    frontier.append(pid)
        return found

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def port_free(port: int, host: str = LAN_HOST) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: TIME_WAIT is no owner
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def serve_client(site: Path, port: int) -> subprocess.Popen[bytes]:
    """tests/lan_client (a client with the contract of OpenVidu's tutorial clients) and,
    beside it, the npm-installed livekit-client build it loads (nothing here reaches a CDN)."""
    livekit_client = PROJECT_DIR / "node_modules/livekit-client/dist/livekit-client.umd.js"
    require("livekit-client", livekit_client.is_file(), "run `make setup-dev` (npm ci)")
    site.mkdir()
    for source in [*LAN_CLIENT.iterdir(), livekit_client]:
        (site / source.name).symlink_to(source)
    process = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(site)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while not is_listening(port):
        assert process.poll() is None and time.monotonic() < deadline, (
            "the client's file server did not start"
        )
        time.sleep(0.05)
    return process


@pytest.fixture(scope="module")
def lan(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LanRun]:
    require("caddy", shutil.which("caddy") is not None, "install Debian's caddy (`make system-packages`)")
    require("livekit-server", find_binary() is not None, HOW_TO_GET)
    for port in FIXED_PORTS:
        require(
            f"port {port} on {LAN_HOST}",
            port_free(port),
            "another process holds it (another run-lan, or an OpenVidu deployment); this test "
            "needs 5443, 6443 and 7443 there, the ports OpenVidu's clients call",
        )
    workdir = tmp_path_factory.mktemp("lan")
    client_port = free_port()
    client = serve_client(workdir / "client", client_port)
    run = LanRun(workdir, workdir / "ca", client_port)
    try:
        assert not run.root_certificate.exists()
        yield run.start()
    finally:
        run.stop()
        client.terminate()
        client.wait()


@pytest.fixture(scope="module")
def lan_browser(lan: LanRun, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Chromium whose NSS store (in $HOME/.pki/nssdb) trusts the generated CA, as a user's
    would after importing it: no flag that skips certificate checks."""
    require("Chromium", Path(CHROMIUM).is_file(), "install Debian's chromium (`make system-packages`)")
    require("certutil", shutil.which("certutil") is not None, "install Debian's libnss3-tools")
    home = tmp_path_factory.mktemp("chromium-home")
    nssdb = home / ".pki" / "nssdb"
    nssdb.mkdir(parents=True)
    subprocess.run(["certutil", "-N", "-d", f"sql:{nssdb}", "--empty-password"], check=True)
    subprocess.run(
        [
            "certutil",
            "-A",
            "-d",
            f"sql:{nssdb}",
            "-t",
            "C,,",
            "-n",
            "run-lan CA",
            "-i",
            str(lan.root_certificate),
        ],
        check=True,
    )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS, env={**os.environ, "HOME": str(home)}
        )
        yield launched
        launched.close()


def new_page(browser: Any, width: int = 1280, height: int = 860) -> Any:
    context = browser.new_context(viewport={"width": width, "height": height})
    # Only this machine: the tutorial's CDN styles and scripts fail at once instead of hanging.
    context.route(
        lambda url: not url.startswith(("https://127.0.0.2:", "http://127.0.0.2:")), lambda r: r.abort()
    )
    return context.new_page()


def open_demo(browser: Any, url: str = DEMO, **size: int) -> Any:
    page = new_page(browser, **size)
    page.goto(url)
    page.wait_for_selector('#socket-state[data-state="live"]', timeout=WAIT_MS)
    return page


def zbar(png: Path) -> str:
    require("zbarimg", shutil.which("zbarimg") is not None, "install Debian's zbar-tools")
    result = subprocess.run(["zbarimg", "--raw", "-q", str(png)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"no QR code found in {png}"
    return result.stdout.strip()


def test_a_demo_page_over_https_joins_with_camera_and_mic_and_shows_the_webhooks(
    lan: LanRun, lan_browser: Any
) -> None:
    page = open_demo(lan_browser)
    assert page.evaluate("window.isSecureContext") is True
    assert page.input_value("#livekit-url") == f"wss://{LAN_HOST}:7443"
    room = f"lan-demo-{int(time.time())}"
    join(page, room, "ana")
    wait_for_playing_video(page, "ana")
    wait_for_event(page, "room_started", room)
    wait_for_event(page, "participant_joined", room, "ana")
    wait_for_event(page, "track_published", room, "camera")
    wait_for_event(page, "track_published", room, "microphone")
    page.click("#leave-button")
    page.context.close()
    # LiveKit's standard token endpoint hands out the same LAN URL.
    status, _, body = lan.fetch(
        DEMO + "token", data=b"{}", method="POST", headers={"Content-Type": "application/json"}
    )
    assert (status, json.loads(body)["server_url"]) == (201, f"wss://{LAN_HOST}:7443")


def test_b_the_invite_link_and_its_qr_code_open_the_same_room_prefilled(
    lan: LanRun, lan_browser: Any, tmp_path: Path
) -> None:
    room = f"café & co {int(time.time())}"
    host = open_demo(lan_browser)
    join(host, room, "hana")
    link = f"{DEMO}?" + urllib.parse.urlencode({"room": room})
    assert host.url == link  # the address bar is the invite too

    # Keyboard only: the control opens with Enter and closes with Escape.
    host.focus("#invite-button")
    host.keyboard.press("Enter")
    host.wait_for_selector("#invite-panel:not([hidden])")
    assert host.get_attribute("#invite-button", "aria-expanded") == "true"
    assert host.input_value("#invite-link") == link
    host.locator("#invite-qr svg").screenshot(path=str(tmp_path / "invite.png"))
    assert zbar(tmp_path / "invite.png") == link
    host.focus("#copy-invite")
    host.keyboard.press("Escape")
    host.wait_for_selector("#invite-panel", state="hidden")
    assert host.evaluate("document.activeElement.id") == "invite-button"

    # A phone-sized page opens the link: the room is filled in, and it joins that room.
    guest = open_demo(lan_browser, link, width=360, height=740)
    assert guest.input_value("#room-name") == room
    guest.fill("#participant-name", "gus")
    guest.click("#join-button")
    guest.wait_for_selector("#in-room:not([hidden])", timeout=WAIT_MS)
    wait_for_playing_video(host, "gus")
    wait_for_playing_video(guest, "hana")
    guest.click("#invite-button")
    guest.wait_for_selector("#invite-panel:not([hidden])")
    fits = guest.evaluate(
        """() => {
             const inside = (id) => { const box = document.getElementById(id).getBoundingClientRect();
                                      return box.left >= 0 && box.right <= window.innerWidth; };
             return { overflow: document.documentElement.scrollWidth > window.innerWidth,
                      panel: inside('invite-panel'), link: inside('invite-link'), qr: inside('invite-qr') };
           }"""
    )
    assert fits == {"overflow": False, "panel": True, "link": True, "qr": True}
    for page in (guest, host):
        page.click("#leave-button")
        page.context.close()


def test_c_a_client_with_openvidus_contract_and_empty_urls_gets_its_token_from_6443_and_joins_through_7443(
    lan: LanRun, lan_browser: Any
) -> None:
    room = f"lan-openvidu-{int(time.time())}"
    pages = []
    signalling: list[bytes] = []

    def on_socket(socket: Any, seen: list[str]) -> None:
        seen.append(socket.url)
        socket.on("framereceived", lambda payload: signalling.append(_bytes(payload)))

    for name in ("olga", "omar"):
        page = new_page(lan_browser)
        token_calls: list[str] = []
        sockets: list[str] = []
        page.on("request", lambda r, calls=token_calls: r.url.endswith("/token") and calls.append(r.url))
        page.on("websocket", lambda ws, seen=sockets: on_socket(ws, seen))
        page.goto(CLIENT)
        page.wait_for_function("document.getElementById('participant-name').value !== ''")
        page.fill("#room-name", room)
        page.fill("#participant-name", name)
        page.click("#join-button")
        page.wait_for_selector("#room:not([hidden])", timeout=WAIT_MS)
        assert set(token_calls) == {f"https://{LAN_HOST}:6443/token"}
        assert sockets and all(url.startswith(f"wss://{LAN_HOST}:7443/rtc") for url in sockets)
        pages.append(page)
    olga, omar = pages
    playing = (
        "id => { const v = document.querySelector(`#camera-${id} video`);"
        " return Boolean(v && v.videoWidth > 0); }"
    )
    wait_until(olga, playing, "omar", WAIT_MS)
    wait_until(omar, playing, "olga", WAIT_MS)

    # LiveKit names the LAN host in its ICE candidates, and nothing else (no loopback, no other
    # interface), so a phone is told an address it can reach.
    advertised = {
        match.group(1).decode()
        for frame in signalling
        for match in re.finditer(rb"candidate:\S+ \d+ (?:udp|tcp) \d+ (\S+) \d+ typ host", frame, re.I)
    }
    assert advertised == {LAN_HOST}
    joined = {
        frame["event"]["participant"]["identity"]
        for frame in lan.history()
        if frame["event"]["event"] == "participant_joined" and frame["event"]["room"]["name"] == room
    }
    assert joined == {"olga", "omar"}
    for page in pages:
        page.evaluate("room.disconnect()")
        page.context.close()


def test_c2_port_7443_forwards_livekit_paths_only(lan: LanRun) -> None:
    from livekit.api import AccessToken, VideoGrants

    token = AccessToken("devkey", "secret").with_grants(VideoGrants(room_list=True)).to_jwt()
    status, headers, body = lan.fetch(
        f"https://{LAN_HOST}:7443/twirp/livekit.RoomService/ListRooms",
        data=b"{}",
        method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
    )
    # RoomService answers, as livekit-api calls it (an empty list is `{}` in protobuf JSON).
    assert (status, headers["Content-Type"]) == (200, "application/json")
    assert isinstance(json.loads(body).get("rooms", []), list)
    assert lan.fetch(f"https://{LAN_HOST}:7443/rtc/validate")[0] == 401  # LiveKit's own answer
    assert lan.fetch(f"https://{LAN_HOST}:7443/")[:3:2] == (404, b"Not a LiveKit path")


def test_c3_the_client_shows_the_servers_error_message(lan: LanRun, lan_browser: Any) -> None:
    page = new_page(lan_browser)
    answers: list[int] = []
    page.on("response", lambda r: r.url.endswith("/token") and answers.append(r.status))
    page.goto(CLIENT)
    page.fill("#room-name", "lan\u200broom")  # an invisible character: the server refuses it
    page.click("#join-button")
    page.wait_for_selector("#error:not([hidden])", timeout=WAIT_MS)
    assert answers == [400]
    assert page.inner_text("#error") == (
        "roomName must not contain control characters or invisible format characters (U+200B)"
    )
    assert page.is_hidden("#room")
    page.context.close()


def test_c4_on_localhost_the_client_uses_the_development_ports(lan: LanRun, lan_browser: Any) -> None:
    """Served as http://localhost:<port>, the client asks http://localhost:6080/token: the
    request is seen and refused here (nothing of this test listens on 6080 or 7880)."""
    context = lan_browser.new_context()
    asked: list[tuple[str, str, str, Any]] = []

    def refuse(route: Any) -> None:
        request = route.request
        asked.append((request.method, request.url, request.headers["content-type"], request.post_data_json))
        route.abort()

    context.route(lambda url: not url.startswith(f"http://localhost:{lan.client_port}/"), refuse)
    page = context.new_page()
    page.goto(f"http://localhost:{lan.client_port}/")
    assert page.evaluate("[APPLICATION_SERVER_URL, LIVEKIT_URL]") == [
        "http://localhost:6080/",
        "ws://localhost:7880/",
    ]
    page.fill("#room-name", "local room")
    page.fill("#participant-name", "lea")
    page.click("#join-button")
    page.wait_for_selector("#error:not([hidden])", timeout=WAIT_MS)
    assert asked == [
        (
            "POST",
            "http://localhost:6080/token",
            "application/json",
            {"roomName": "local room", "participantName": "lea"},
        )
    ]
    context.close()


def _bytes(payload: str | bytes) -> bytes:
    return payload if isinstance(payload, bytes) else payload.encode()


def test_d_the_banner_gives_the_urls_a_scannable_qr_code_and_the_ca_for_download(lan: LanRun) -> None:
    output = lan.output()
    for url in (CLIENT, DEMO, f"wss://{LAN_HOST}:7443", f"http://{LAN_HOST}:{lan.ca_port}/"):
        assert url in output
    status, headers, body = lan.fetch(f"http://{LAN_HOST}:{lan.ca_port}/lan-ca.crt")
    assert status == 200
    assert headers["Content-Type"] == "application/x-x509-ca-cert"
    assert body == lan.root_certificate.read_bytes()
    assert body.startswith(b"-----BEGIN CERTIFICATE-----")
    page = lan.fetch(f"http://{LAN_HOST}:{lan.ca_port}/")[2].decode()
    assert 'href="/lan-ca.crt"' in page and DEMO in page
    # The private key stays private.
    assert lan.fetch(f"http://{LAN_HOST}:{lan.ca_port}/root.key")[0] == 404
    assert lan.fetch(f"http://{LAN_HOST}:{lan.ca_port}/../caddy/pki/authorities/local/root.key")[0] == 404

    qr_lines = [line for line in output.splitlines() if line and set(line) <= set("█▀▄\xa0 ")]
    assert qr_lines, "no QR code in the output"
    png = lan.workdir / "terminal-qr.png"
    png.write_bytes(terminal_qr_png(qr_lines))
    assert zbar(png) == DEMO


def terminal_qr_png(lines: list[str], scale: int = 6, margin: int = 4) -> bytes:
    """The terminal's block characters (light modules drawn: run-lan inverts for dark
    terminals) back into a black-on-white PNG that a QR reader can take."""
    # Each character is two modules, top and bottom; True is dark.
    halves = {
        "█": (False, False),
        "▄": (True, False),
        "▀": (False, True),
        "\xa0": (True, True),
        " ": (True, True),
    }
    modules: list[list[bool]] = []
    for line in lines:
        modules.append([halves[char][0] for char in line])
        modules.append([halves[char][1] for char in line])
    width = max(len(row) for row in modules) + 2 * margin
    height = len(modules) + 2 * margin
    rows = []
    for y in range(height * scale):
        module_row = y // scale - margin
        pixels = bytearray()
        for x in range(width):
            column = x - margin
            dark = 0 <= module_row < len(modules) and 0 <= column < len(modules[module_row])
            dark = dark and modules[module_row][column]
            pixels += (b"\x00" if dark else b"\xff") * scale
        rows.append(b"\x00" + bytes(pixels))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width * scale, height * scale, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"".join(rows)))
        + chunk(b"IEND", b"")
    )


def test_z_stopping_leaves_no_process_and_a_second_run_reuses_the_ca(lan: LanRun, lan_browser: Any) -> None:
    children = lan.descendants()
    assert {"caddy", "livekit-server"} <= set(children.values()), children
    root = lan.root_certificate.read_bytes()

    assert lan.stop(signal.SIGTERM) == 0
    assert [pid for pid in children if alive(pid)] == []
    assert [port for port in (*FIXED_PORTS, lan.ca_port) if not port_free(port)] == []
    assert not is_listening(lan.server_port) and not is_listening(lan.livekit_port)
    assert "Stopped the proxy and livekit-server" in lan.output()

    again = LanRun(lan.workdir, lan.ca_dir, lan.client_port).start()
    try:
        assert lan.root_certificate.read_bytes() == root
        assert "reusing the certificate authority" in again.output()
        page = open_demo(lan_browser)  # the browser still trusts it: same CA
        assert page.evaluate("window.isSecureContext") is True
        page.context.close()
        children = again.descendants()
        assert again.stop(signal.SIGINT) == 0  # Ctrl-C
        assert [pid for pid in children if alive(pid)] == []
        assert [port for port in FIXED_PORTS if not port_free(port)] == []
    finally:
        again.stop()


def test_without_caddy_run_lan_says_how_to_get_it_and_starts_nothing(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PATH": str(tmp_path),
        "PYTHONPATH": str(PROJECT_DIR),
        "LAN_CA_DIR": str(tmp_path / "ca"),
    }
    result = subprocess.run(
        [sys.executable, "-m", "dev.lan"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert "needs Caddy" in result.stderr and "apt-get install caddy" in result.stderr
    assert "make run` works without it" in result.stderr
    assert not (tmp_path / "ca").exists()


def test_run_lan_refuses_to_start_saying_why(tmp_path: Path) -> None:
    require("caddy", shutil.which("caddy") is not None, "install Debian's caddy (`make system-packages`)")

    def run_lan_with(**env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "dev.lan"],
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(PROJECT_DIR), "LAN_CA_DIR": str(tmp_path / "ca"), **env},
            capture_output=True,
            text=True,
            timeout=60,
        )

    # 203.0.113.7 (TEST-NET-3) is no address of this machine: nothing can listen there.
    refused = run_lan_with(LAN_HOST="203.0.113.7")
    assert refused.returncode == 1
    assert "LAN_HOST=203.0.113.7 is not an address of this machine" in refused.stderr
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("127.0.0.29", 5443))
        holder.listen()
        refused = run_lan_with(LAN_HOST="127.0.0.29")
    assert refused.returncode == 1
    assert "Port 5443 on 127.0.0.29 is taken by another process" in refused.stderr
    assert not (tmp_path / "ca").exists()  # nothing was started


def test_the_server_behind_the_proxy_gets_the_lan_urls_and_trusts_its_headers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("SERVER_HOST", "TRUST_PROXY_HEADERS", "LIVEKIT_URL", "PUBLIC_ORIGINS"):
        monkeypatch.setenv(name, "")  # recorded, so what configure_server sets is undone after
        monkeypatch.delenv(name)
    lan = run_lan.lan_settings({"LAN_HOST": "studio.local", "LAN_CA_DIR": "/tmp/x"})
    server, livekit = run_lan.configure_server(
        lan, Config(server_port=6123, livekit_url="ws://localhost:7999")
    )
    assert (server, livekit) == ("127.0.0.1:6123", "127.0.0.1:7999")
    assert os.environ["LIVEKIT_URL"] == "wss://studio.local:7443"
    assert os.environ["TRUST_PROXY_HEADERS"] == "true"
    assert os.environ["SERVER_HOST"] == "127.0.0.1"
    # A page served under a host *name* must be listed to open /events (DNS rebinding).
    assert os.environ["PUBLIC_ORIGINS"] == "https://studio.local:6443"

    monkeypatch.delenv("LIVEKIT_URL")
    by_address = run_lan.lan_settings({"LAN_HOST": "192.168.1.20"})
    cloud = Config(livekit_url="wss://project.example.livekit.cloud")
    assert run_lan.configure_server(by_address, cloud)[1] is None  # already TLS: not proxied
    assert "LIVEKIT_URL" not in os.environ


def test_caddy_accepts_the_generated_configuration(tmp_path: Path) -> None:
    require("caddy", shutil.which("caddy") is not None, "install Debian's caddy (`make system-packages`)")
    for host, listen in (("192.168.1.20", "192.168.1.20:6443"), ("studio.local", ":6443")):
        lan = run_lan.lan_settings({"LAN_HOST": host, "LAN_CA_DIR": str(tmp_path)})
        path = tmp_path / f"Caddyfile-{host}"
        path.write_text(run_lan.caddyfile(lan, "127.0.0.1:6080", "127.0.0.1:7880"))
        adapted = subprocess.run(
            ["caddy", "adapt", "--config", str(path), "--adapter", "caddyfile"],
            capture_output=True,
            text=True,
            check=True,
        )
        servers = json.loads(adapted.stdout)["apps"]["http"]["servers"]
        listens = {address for server in servers.values() for address in server["listen"]}
        assert listen in listens
        dials = re.findall(r'"dial":"([^"]+)"', adapted.stdout)
        assert set(dials) == {"127.0.0.1:5080", "127.0.0.1:6080", "127.0.0.1:7880"}


def test_the_lan_address_detected_is_this_machines_and_not_loopback() -> None:
    address = run_lan.detect_lan_address()
    if address is None:  # no default route: LAN_HOST must be set, which lan_settings says
        with pytest.raises(Exception, match="set LAN_HOST"):
            run_lan.lan_settings({})
        return
    with socket.socket() as probe:
        probe.bind((address, 0))  # an address of this machine
    assert not address.startswith("127.")
    assert run_lan.lan_settings({}).host == address
