"""`make run-lan`: what `make run` does, plus HTTPS on the LAN in the port layout of
OpenVidu's local deployment, so that phones and other machines can join a room.

    https://<lan-host>:5443  ->  the application client you run on port 5080 (LAN_CLIENT_PORT)
    https://<lan-host>:6443  ->  this server (SERVER_PORT, 6080)
    https://<lan-host>:7443  ->  LiveKit's /rtc, /rtc/* and /twirp/* (LIVEKIT_URL, ws://localhost:7880)
    http://<lan-host>:6480   ->  the certificate authority, for download (LAN_CA_PORT)

Caddy terminates TLS with its own local certificate authority (`tls internal`), created
on the first run in LAN_CA_DIR and reused after. The livekit-server started here
advertises the LAN address in its ICE candidates, and pages get wss://<lan-host>:7443."""

from __future__ import annotations

import errno
import io
import ipaddress
import logging
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from html import escape
from pathlib import Path
from types import FrameType
from urllib.parse import urlsplit

import qrcode
from dotenv import dotenv_values

import server
from dev.livekit_server import HOW_TO_GET, LiveKitServer, find_binary, is_listening
from ground.config import PROJECT_DIR, Config, ConfigError

log = logging.getLogger("dev.lan")

# OpenVidu's local deployment: the ports its tutorial clients call when not on localhost.
CLIENT_HTTPS_PORT = 5443
SERVER_HTTPS_PORT = 6443
LIVEKIT_HTTPS_PORT = 7443
HOW_TO_GET_CADDY = (
    "`make run-lan` needs Caddy, the TLS proxy: install it with `sudo apt-get install caddy` "
    "(Debian, Ubuntu), `brew install caddy` (macOS) or your system's package manager, then run "
    "`make run-lan` again. `make run` works without it (on this machine only)."
)


@dataclass(frozen=True)
class LanSettings:
    host: str  # what other devices type: LAN_HOST, an address or a name
    address: str  # an address of this machine: LiveKit's node IP, and Caddy's bind unless host is a name
    ca_dir: Path
    ca_port: int
    client_port: int
    rtc_tcp_port: int
    rtc_udp_port: int

    @property
    def host_is_name(self) -> bool:
        return not _is_ip(self.host)

    def url(self, scheme: str, port: int, path: str = "/") -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{port}{path}"

    @property
    def root_certificate(self) -> Path:
        return self.ca_dir / "caddy" / "pki" / "authorities" / "local" / "root.crt"

    @property
    def download_dir(self) -> Path:
        return self.ca_dir / "download"


def detect_lan_address() -> str | None:
    """The address this machine uses on its default route, or None without one. A UDP
    socket's connect() only consults the routing table: no packet is sent."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("198.51.100.1", 9))  # TEST-NET-2: any routed address does
        except OSError:
            return None
        address = str(probe.getsockname()[0])
    return None if ipaddress.ip_address(address).is_loopback else address


def lan_settings(values: Mapping[str, str]) -> LanSettings:
    def text(name: str, default: str) -> str:
        return values.get(name, "").strip() or default

    def port(name: str, default: int) -> int:
        raw = text(name, str(default))
        if not raw.isdigit() or not 1 <= int(raw) <= 65535:
            raise ConfigError(f"{name} must be a port number (1-65535), not {raw!r}")
        return int(raw)

    detected = detect_lan_address()
    host = text("LAN_HOST", detected or "").strip("[]")
    if not host:
        raise ConfigError(
            "could not find this machine's LAN address (no default route): "
            "set LAN_HOST to the address or name other devices reach it by"
        )
    address = host if _is_ip(host) else detected
    if address is None:
        raise ConfigError(f"LAN_HOST={host} is a name, and no LAN address was found to advertise to LiveKit")
    return LanSettings(
        host=host,
        address=address,
        ca_dir=Path(text("LAN_CA_DIR", str(PROJECT_DIR / ".lan"))).resolve(),
        ca_port=port("LAN_CA_PORT", 6480),
        client_port=port("LAN_CLIENT_PORT", 5080),
        rtc_tcp_port=port("LAN_RTC_TCP_PORT", 7881),
        rtc_udp_port=port("LAN_RTC_UDP_PORT", 7882),
    )


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def caddyfile(lan: LanSettings, server_upstream: str, livekit_upstream: str | None) -> str:
    """The whole proxy configuration. A site for an address binds that address only; a
    site for a name listens on every interface (the name may resolve to any of them).

    The server runs with TRUST_PROXY_HEADERS=true behind it, so its site overwrites the
    client-address headers with the real remote address: a client's own X-Real-IP or
    X-Forwarded-For must not choose who it is (its rate-limit bucket, the logs)."""
    bind = "" if lan.host_is_name else f"\tbind {lan.address}\n"
    https = "\ttls internal\n" + bind
    client_missing = (
        f"Nothing answers on port {lan.client_port} of this machine: start your application "
        f"client there (an OpenVidu tutorial client's `npm start` uses 5080)."
    )
    sites = [
        "# Generated by dev/lan.py at each `make run-lan`; change dev/lan.py, not this file.\n"
        "{\n\tadmin off\n\tauto_https disable_redirects\n\tskip_install_trust\n\tgrace_period 2s\n"
        f"\tstorage file_system {{\n\t\troot {_quoted(str(lan.ca_dir / 'caddy'))}\n\t}}\n"
        '\tpki {\n\t\tca local {\n\t\t\tname "LiveKit app server LAN CA"\n\t\t}\n\t}\n}\n',
        f"{lan.url('https', CLIENT_HTTPS_PORT, '')} {{\n{https}"
        f"\treverse_proxy 127.0.0.1:{lan.client_port}\n"
        f"\thandle_errors {{\n\t\trespond {_quoted(client_missing)} 502\n\t}}\n}}\n",
        f"{lan.url('https', SERVER_HTTPS_PORT, '')} {{\n{https}\treverse_proxy {server_upstream} {{\n"
        "\t\theader_up X-Real-IP {remote_host}\n\t\theader_up X-Forwarded-For {remote_host}\n\t}\n}\n",
    ]
    if livekit_upstream is not None:
        sites.append(
            f"{lan.url('https', LIVEKIT_HTTPS_PORT, '')} {{\n{https}"
            "\t@livekit path /rtc /rtc/* /twirp/*\n"
            f"\thandle @livekit {{\n\t\treverse_proxy {livekit_upstream}\n\t}}\n"
            '\thandle {\n\t\trespond "Not a LiveKit path" 404\n\t}\n}\n'
        )
    # Plain HTTP: a device fetches the CA certificate here before it trusts anything.
    sites.append(
        f"http://:{lan.ca_port} {{\n{bind}\troot * {_quoted(str(lan.download_dir))}\n"
        "\theader /lan-ca.crt Content-Type application/x-x509-ca-cert\n\tfile_server\n}\n"
    )
    return "\n".join(sites)


def download_page(lan: LanSettings) -> str:
    demo = escape(lan.url("https", SERVER_HTTPS_PORT))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Trust this development server</title></head>
<body>
<h1>Trust this development server</h1>
<ol>
  <li><a href="/lan-ca.crt">Download its certificate authority (lan-ca.crt)</a>
      and install it as a trusted CA (the project's docs/operating.md, "Trusting the certificate
      authority", says how on Android, iOS, macOS, Windows and Linux).</li>
  <li>Then open the demo page: <a href="{demo}">{demo}</a></li>
</ol>
<p>Only install it on your own devices: whoever holds its key (kept on the computer that runs
this server) can impersonate any site to a device that trusts it.</p>
</body></html>
"""


@dataclass
class Caddy:
    """One `caddy run` process with a generated Caddyfile, its data kept in LAN_CA_DIR."""

    binary: str
    lan: LanSettings
    process: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.lan.ca_dir / "caddy.log"

    def start(self, config_text: str, timeout: float = 20.0) -> Caddy:
        self.lan.download_dir.mkdir(parents=True, exist_ok=True)
        (self.lan.download_dir / "index.html").write_text(download_page(self.lan))
        config_path = self.lan.ca_dir / "Caddyfile"
        config_path.write_text(config_text)
        # Caddy keeps its autosave and data under XDG folders: ours, not the user's home.
        env = {
            **os.environ,
            "XDG_CONFIG_HOME": str(self.lan.ca_dir / "xdg-config"),
            "XDG_DATA_HOME": str(self.lan.ca_dir / "xdg-data"),
        }
        with open(self.log_path, "wb") as log_file:  # this run's log only
            self.process = subprocess.Popen(
                [self.binary, "run", "--config", str(config_path), "--adapter", "caddyfile"],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
            )
        deadline = time.monotonic() + timeout
        while not self._serves_trusted_https():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"Caddy did not start; its log ({self.log_path}):\n{self._log_tail()}")
            time.sleep(0.1)
        shutil.copyfile(self.lan.root_certificate, self.lan.download_dir / "lan-ca.crt")
        return self

    def _serves_trusted_https(self) -> bool:
        """A TLS handshake on 6443 that verifies against our CA: Caddy is up and has its certificate."""
        if not self.lan.root_certificate.is_file():
            return False
        context = ssl.create_default_context(cafile=str(self.lan.root_certificate))
        connect_to = "127.0.0.1" if self.lan.host_is_name else self.lan.address
        try:
            with (
                socket.create_connection((connect_to, SERVER_HTTPS_PORT), timeout=1) as raw,
                context.wrap_socket(raw, server_hostname=self.lan.host),
            ):
                return True
        except (OSError, ssl.SSLError):
            return False

    def _log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:] if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def check_ports(lan: LanSettings) -> None:
    """Refuse to start, saying why, when a port of the proxy cannot be had."""
    address = "" if lan.host_is_name else lan.address
    where = "every interface" if lan.host_is_name else address
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    for port in (CLIENT_HTTPS_PORT, SERVER_HTTPS_PORT, LIVEKIT_HTTPS_PORT, lan.ca_port):
        with socket.socket(family) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Caddy does
            try:
                probe.bind((address, port))
            except OSError as error:
                if error.errno == errno.EADDRNOTAVAIL:
                    raise SystemExit(
                        f"LAN_HOST={lan.host} is not an address of this machine: use one of its "
                        "addresses (`ip addr`), or a name"
                    ) from None
                raise SystemExit(
                    f"Port {port} on {where} is taken by another process (another `make run-lan`, "
                    "or an OpenVidu local deployment?): stop it first."
                ) from None


def terminal_qr(text: str) -> str:
    """A QR code of `text` in block characters with its light modules drawn, for dark
    terminals; on a terminal, with explicit colours so that it scans whatever the theme."""
    code = qrcode.QRCode(border=2, error_correction=qrcode.constants.ERROR_CORRECT_L)
    code.add_data(text)
    code.make(fit=True)
    tty = sys.stdout.isatty()

    class Out(io.StringIO):
        def isatty(self) -> bool:
            return tty

    out = Out()
    code.print_ascii(out=out, tty=tty, invert=True)
    return out.getvalue()


def banner(lan: LanSettings, livekit_url: str, proxied: bool) -> str:
    demo = lan.url("https", SERVER_HTTPS_PORT)
    livekit_line = (
        f"  LiveKit              {livekit_url}   (-> LiveKit's /rtc and /twirp)\n"
        if proxied
        else f"  LiveKit              {livekit_url}   (not proxied: set it in your clients)\n"
    )
    return (
        f"\nHTTPS on the LAN (Caddy, certificate authority in {lan.ca_dir}):\n"
        f"  Demo page and /token {demo}\n"
        f"  Application client   {lan.url('https', CLIENT_HTTPS_PORT)}   (-> your client on port "
        f"{lan.client_port})\n"
        f"{livekit_line}"
        f"  CA certificate       {lan.url('http', lan.ca_port)}   (open it on the other device first)\n\n"
        f"{terminal_qr(demo)}"
        f"Scan to open the demo page. Ctrl-C stops the proxy, LiveKit and the server.\n"
    )


def _environment() -> dict[str, str]:
    """LAN_* settings, read as Config reads its own: the process environment wins over `.env`."""
    values: dict[str, str] = {}
    if Path(".env").is_file():
        values.update({k: v for k, v in dotenv_values(".env").items() if v is not None})
    values.update(os.environ)
    return values


def configure_server(lan: LanSettings, configured: Config) -> tuple[str, str | None]:
    """Point this process's server settings at the proxy; return the proxy's upstreams
    (this server, and LiveKit unless LIVEKIT_URL is already a TLS URL clients can use)."""
    if not configured.server_host:
        os.environ["SERVER_HOST"] = "127.0.0.1"  # behind the proxy only
    elif configured.server_host not in ("127.0.0.1", "localhost", "::1"):
        log.warning(
            "SERVER_HOST=%s with TRUST_PROXY_HEADERS: clients that reach it directly can fake their address",
            configured.server_host,
        )
    os.environ["TRUST_PROXY_HEADERS"] = "true"
    if lan.host_is_name:  # a page served under a name is the server's own only when listed
        own_page = lan.url("https", SERVER_HTTPS_PORT, "")
        os.environ["PUBLIC_ORIGINS"] = ",".join([*configured.public_origins, own_page])
    server_host = configured.server_host or "127.0.0.1"
    if server_host in ("0.0.0.0", "::"):
        server_host = "127.0.0.1"
    server_upstream = _host_port(server_host, configured.server_port)

    livekit = urlsplit(configured.livekit_url)
    if livekit.scheme not in ("ws", "http"):
        return server_upstream, None
    os.environ["LIVEKIT_URL"] = lan.url("wss", LIVEKIT_HTTPS_PORT, "")
    livekit_host = livekit.hostname or "127.0.0.1"
    if livekit_host == "localhost":
        livekit_host = "127.0.0.1"  # what a livekit-server started here binds
    return server_upstream, _host_port(livekit_host, livekit.port or 80)


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def livekit_to_start(lan: LanSettings, config: Config, upstream: str) -> LiveKitServer | None:
    """A livekit-server advertising the LAN address, when LIVEKIT_URL is on this machine
    and nothing listens there yet (as `make run` does for the default URL)."""
    host, _, port_text = upstream.rpartition(":")
    port = int(port_text)
    if host != "127.0.0.1":
        return None
    if is_listening(port):
        log.warning(
            "A LiveKit server already listens on port %d: proxying to it. Other devices get its "
            "media only if it advertises this machine's LAN address (livekit-server --node-ip %s)",
            port,
            lan.address,
        )
        return None
    binary = find_binary()
    if binary is None:
        log.warning("Nothing listens on port %d and %s", port, HOW_TO_GET)
        return None
    return LiveKitServer(
        binary,
        f"http://127.0.0.1:{config.server_port}/livekit/webhook",
        port=port,
        keys={config.livekit_api_key: config.livekit_api_secret},
        webhook_api_key=config.livekit_api_key,
        node_ip=lan.address,
        advertise_only_node_ip=True,
        rtc_tcp_port=lan.rtc_tcp_port,
        rtc_udp_port=lan.rtc_udp_port,
    )


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main() -> None:
    # A SIGTERM before the server installs its own handlers still runs the clean-up below.
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    os.environ.setdefault("LOG_LEVEL", "DEBUG")
    caddy_binary = shutil.which("caddy")
    if caddy_binary is None:
        raise SystemExit(HOW_TO_GET_CADDY)
    try:
        lan = lan_settings(_environment())
        configured = Config.from_env()
        logging.basicConfig(
            level=configured.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        server_upstream, livekit_upstream = configure_server(lan, configured)
        config = Config.from_env()
    except ConfigError as error:
        raise SystemExit(f"Configuration error: {error}") from None
    check_ports(lan)
    if is_listening(config.server_port):
        raise SystemExit(f"Port {config.server_port} (SERVER_PORT) is taken: stop the other server first.")

    # Built before they start, so that a signal at any point still stops what did start.
    livekit = livekit_to_start(lan, config, livekit_upstream) if livekit_upstream else None
    caddy = Caddy(caddy_binary, lan)
    failure = None
    try:
        if livekit is not None:
            livekit.start()
            log.info(
                "Started livekit-server on port %d, node IP %s, media on TCP %d and UDP %d; log in %s",
                livekit.port,
                lan.address,
                lan.rtc_tcp_port,
                lan.rtc_udp_port,
                livekit.log_path,
            )
        lan.ca_dir.mkdir(parents=True, exist_ok=True)
        first_run = not lan.root_certificate.exists()
        caddy.start(caddyfile(lan, server_upstream, livekit_upstream))
        log.info(
            "Started Caddy (%s); log in %s",
            "created the certificate authority" if first_run else "reusing the certificate authority",
            caddy.log_path,
        )
        print(banner(lan, config.livekit_url, livekit_upstream is not None), flush=True)
        server.run()
    except KeyboardInterrupt:
        pass
    except RuntimeError as error:  # livekit-server or Caddy did not start; the message has its log
        failure = str(error)
    finally:
        # Each stop is bounded (a kill after a wait): a second Ctrl-C must not cut it short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        caddy.stop()
        if livekit is not None:
            livekit.stop()
        log.info("Stopped the proxy%s", " and livekit-server" if livekit is not None else "")
    if failure is not None:
        raise SystemExit(failure)


if __name__ == "__main__":
    main()
