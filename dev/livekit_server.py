"""Start and stop a real livekit-server on loopback, for `make run` and the end-to-end tests."""

from __future__ import annotations

import ipaddress
import json
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ground.config import PROJECT_DIR

LIVEKIT_BIN = PROJECT_DIR / "tools" / "bin" / "livekit-server"
HOW_TO_GET = (
    "no livekit-server found: run an OpenVidu local deployment, `livekit-server --dev`, "
    "or `make livekit` (needs Go) to build one into tools/bin"
)


def find_binary() -> str | None:
    return shutil.which("livekit-server") or (str(LIVEKIT_BIN) if LIVEKIT_BIN.is_file() else None)


_handed_out: set[int] = set()


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A loopback port free right now, and not handed out before by this process.
    (Another process may still take it before it is used: starters retry.)"""
    while True:
        with socket.socket(socket.AF_INET, kind) as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def is_listening(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.3)
        return probe.connect_ex((host, port)) == 0


@dataclass
class LiveKitServer:
    """One livekit-server process with its webhooks pointed at `webhook_url`."""

    binary: str
    webhook_url: str
    port: int = 0
    keys: dict[str, str] = field(default_factory=lambda: {"devkey": "secret"})
    webhook_api_key: str = "devkey"
    empty_timeout: int = 300
    departure_timeout: int = 20
    # The address its ICE candidates name: loopback for tests, the LAN address for `make run-lan`.
    node_ip: str = "127.0.0.1"
    # Only node_ip: no candidate from another interface or IPv6 (what `make run-lan` promises).
    advertise_only_node_ip: bool = False
    # Media ports (ICE over TCP, the UDP mux): 0 picks free ones at each start.
    rtc_tcp_port: int = 0
    rtc_udp_port: int = 0
    log_path: Path | None = None
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0, attempts: int = 3) -> LiveKitServer:
        """Start on free ports; a port taken meanwhile by another process means a retry
        on new ones (the signal port too, unless it was chosen by the caller)."""
        chosen = self.port
        for attempt in range(1, attempts + 1):
            self.port = chosen or free_port()
            try:
                return self._start_once(timeout)
            except RuntimeError as error:
                if attempt == attempts or "address already in use" not in str(error):
                    raise
        raise AssertionError("unreachable")

    def _start_once(self, timeout: float) -> LiveKitServer:
        workdir = Path(tempfile.mkdtemp(prefix="livekit-"))
        # JSON is YAML: no YAML library needed to write the config.
        settings: dict[str, Any] = {
            "port": self.port,
            "bind_addresses": ["127.0.0.1"],
            "rtc": {
                "tcp_port": self.rtc_tcp_port or free_port(),
                "udp_port": self.rtc_udp_port or free_port(socket.SOCK_DGRAM),
                "use_external_ip": False,
                "node_ip": self.node_ip,
                "enable_loopback_candidate": ipaddress.ip_address(self.node_ip).is_loopback,
            },
            "keys": self.keys,
            "webhook": {"api_key": self.webhook_api_key, "urls": [self.webhook_url]},
            "room": {"empty_timeout": self.empty_timeout, "departure_timeout": self.departure_timeout},
            "logging": {"level": "info"},
        }
        if self.advertise_only_node_ip:
            node = ipaddress.ip_address(self.node_ip)
            # Candidates come from interface addresses, then are rewritten to node_ip.
            settings["rtc"]["ips"] = {"includes": ["127.0.0.0/8" if node.is_loopback else f"{node}/32"]}
        config_path = workdir / "livekit.yaml"
        config_path.write_text(json.dumps(settings, indent=2))
        self.log_path = workdir / "livekit.log" if self.log_path is None else self.log_path
        with open(self.log_path, "wb") as log_file:
            self.process = subprocess.Popen(
                [self.binary, "--config", str(config_path)], stdout=log_file, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while not is_listening(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"livekit-server did not start; its log:\n{self.log_path.read_text()[-3000:]}"
                )
            time.sleep(0.1)
        return self

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        # livekit-server drains open rooms on the first signal and stops at once on the second.
        for signal_wait in (2, 5):
            self.process.terminate()
            try:
                self.process.wait(signal_wait)
                return
            except subprocess.TimeoutExpired:
                pass
        self.process.kill()
        self.process.wait()
