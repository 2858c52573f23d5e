"""Real reverse proxies for the tests: Debian's nginx and Caddy on free loopback ports, with
a throwaway certificate authority made by openssl. Every file lives in the test's directory."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dev.livekit_server import free_port, is_listening
from ground.config import PROJECT_DIR

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
CADDY = shutil.which("caddy") or "/usr/bin/caddy"
OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"


OPERATING_PAGE = PROJECT_DIR / "docs" / "operating.md"


def operating_block(language: str, containing: str) -> str:
    """The one fenced block of that language in docs/operating.md that contains `containing`."""
    blocks = re.findall(rf"```{language}\n(.*?)```", OPERATING_PAGE.read_text(), re.DOTALL)
    found = [block for block in blocks if containing in block]
    assert len(found) == 1, f"one ```{language} block with {containing!r} in operating.md, not {len(found)}"
    return str(found[0])


def fill_in(text: str, replacements: dict[str, str]) -> str:
    """Replace each placeholder, which must be there: the docs and the test cannot drift apart."""
    for old, new in replacements.items():
        assert old in text, f"{old!r} is no longer in the docs' example:\n{text}"
        text = text.replace(old, new)
    return text


@dataclass
class Certificate:
    """A leaf certificate for `names` and `addresses`, signed by a CA made for it."""

    ca: Path
    cert: Path
    key: Path
    spki_sha256: str  # of the leaf's key, base64: what Chromium's --ignore-certificate-errors-spki-list pins


def make_certificate(directory: Path, names: list[str], addresses: list[str]) -> Certificate:
    directory.mkdir(parents=True, exist_ok=True)
    alt_names = ",".join([f"DNS:{name}" for name in names] + [f"IP:{address}" for address in addresses])
    (directory / "openssl.cnf").write_text(
        "[req]\ndistinguished_name = dn\n[dn]\n"
        "[ca]\nbasicConstraints = critical,CA:TRUE\nkeyUsage = critical,keyCertSign,cRLSign\n"
        "subjectKeyIdentifier = hash\n"
        "[leaf]\nbasicConstraints = critical,CA:FALSE\nkeyUsage = critical,digitalSignature\n"
        f"extendedKeyUsage = serverAuth\nsubjectAltName = {alt_names}\n"
        "subjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid\n"
    )
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-config", "openssl.cnf"]
    commands = [
        ["req", "-x509", *ec, "-extensions", "ca", "-keyout", "ca.key", "-out", "ca.pem"],
        ["req", "-new", *ec, "-keyout", "key.pem", "-out", "leaf.csr"],
        ["x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-set_serial", "2"],
        ["pkey", "-in", "key.pem", "-pubout", "-outform", "DER", "-out", "key.spki"],
    ]
    commands[0] += ["-subj", "/CN=Test CA for this run", "-days", "2"]
    commands[1] += ["-subj", f"/CN={(names or addresses)[0]}"]
    commands[2] += ["-extfile", "openssl.cnf", "-extensions", "leaf", "-days", "2", "-out", "cert.pem"]
    for command in commands:
        subprocess.run([OPENSSL, *command], cwd=directory, check=True, capture_output=True)
    spki = base64.b64encode(hashlib.sha256((directory / "key.spki").read_bytes()).digest()).decode()
    return Certificate(directory / "ca.pem", directory / "cert.pem", directory / "key.pem", spki)


class Proxy:
    """A proxy process whose configuration, `render(port)`, names the port it listens on: a free
    one, and another when it was taken meanwhile by another process."""

    name = "proxy"

    def __init__(self, directory: Path, render: Callable[[int], str]) -> None:
        self.directory = directory
        self.render = render
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)

    def command(self, configuration: str) -> list[str]:
        raise NotImplementedError

    def log_text(self) -> str:
        return ""

    def environment(self) -> dict[str, str] | None:
        return None

    def start(self) -> Proxy:
        for attempt in range(3):
            self.port = free_port()
            log_path = self.directory / "output.log"
            with open(log_path, "wb") as output:
                self.process = subprocess.Popen(
                    self.command(self.render(self.port)),
                    cwd=self.directory,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    env=self.environment(),
                )
            deadline = time.monotonic() + 15
            while self.process.poll() is None and time.monotonic() < deadline:
                if is_listening(self.port):
                    return self
                time.sleep(0.05)
            self.stop()
            problem = log_path.read_text(errors="replace") + self.log_text()
            if "in use" not in problem or attempt == 2:
                raise RuntimeError(f"{self.name} did not start:\n{problem[-3000:]}")
        raise AssertionError("unreachable")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class Nginx(Proxy):
    """Debian's nginx in the foreground; `render` gives the `http` context's server blocks."""

    name = "nginx"

    def command(self, configuration: str) -> list[str]:
        here = self.directory
        (here / "nginx.conf").write_text(
            f"daemon off;\nworker_processes 1;\npid {here}/nginx.pid;\nerror_log {here}/error.log info;\n"
            "events { worker_connections 256; }\n"
            "http {\n"
            f"  access_log {here}/access.log;\n"
            + "".join(f"  {kind}_temp_path {here}/{kind};\n" for kind in ("client_body", "proxy"))
            + "".join(f"  {kind}_temp_path {here}/{kind};\n" for kind in ("fastcgi", "uwsgi", "scgi"))
            + configuration
            + "\n}\n"
        )
        # -e: the error log before the configuration is read (the default is under /var/log).
        return [NGINX, "-e", f"{here}/error.log", "-p", str(here), "-c", f"{here}/nginx.conf"]

    def log_text(self) -> str:
        path = self.directory / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""


class Caddy(Proxy):
    """Caddy with a Caddyfile; its admin endpoint off, its state in the test's directory."""

    name = "caddy"

    def command(self, configuration: str) -> list[str]:
        path = self.directory / "Caddyfile"
        # No admin endpoint, no redirect server on port 80: only the site's own port.
        path.write_text("{\n  admin off\n  auto_https disable_redirects\n}\n" + configuration)
        return [CADDY, "run", "--config", str(path), "--adapter", "caddyfile"]

    def environment(self) -> dict[str, str]:
        # Caddy keeps certificates and state under these: the test's directory, not the user's.
        here = str(self.directory)
        return {**os.environ, "HOME": here, "XDG_DATA_HOME": here, "XDG_CONFIG_HOME": here}
