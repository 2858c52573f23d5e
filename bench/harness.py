"""Processes and load generators for the benchmarks: servers pinned to one core, the
load on the other, every figure a median of alternating rounds."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
import warnings
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar

import jwt
from livekit.api import AccessToken

from dev.livekit_server import free_port
from ground.config import PROJECT_DIR

BENCH_DIR = PROJECT_DIR / "bench"
# Two cores: the server under test on one, the load generator and clients on the other.
SERVER_CPU, LOAD_CPU = "0", "1"
warnings.filterwarnings("ignore", category=jwt.InsecureKeyLengthWarning)


def pinned(cpu: str | None, command: list[str]) -> list[str]:
    if cpu is None or not shutil.which("taskset") or os.cpu_count() == 1:
        return command
    return ["taskset", "-c", cpu, *command]


@dataclass
class Server:
    """One server under test: ours, the bare Tornado baseline, or the Express peer."""

    kind: str
    env: dict[str, str] = field(default_factory=dict)
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="bench-")))
    command: list[str] | None = None  # instead of the kind's own (bench/profile.py: under cProfile)
    cpu: str | None = SERVER_CPU  # None: not pinned, sharing every core with the load
    startup_seconds: float = 30  # more under valgrind (bench/instructions.py)

    COMMANDS: ClassVar[dict[str, list[str]]] = {
        "ours": [sys.executable, str(PROJECT_DIR / "server.py")],
        "bare": [sys.executable, str(BENCH_DIR / "peers" / "bare_tornado.py")],
        "express": ["node", str(BENCH_DIR / "peers" / "express_token.mjs")],
        "express-cluster": ["node", str(BENCH_DIR / "peers" / "express_cluster.mjs")],
    }

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> float:
        """Start and wait for /healthz; returns the seconds that took."""
        self.port = free_port()
        env = {
            **os.environ,
            "SERVER_PORT": str(self.port),
            "SERVER_HOST": "127.0.0.1",
            "EVENTS_DB": str(self.workdir / "events.sqlite3"),
            "EVENTS_KEEP": "1000000",
            "TOKEN_RATE_LIMIT": "0",
            "EVENTS_REPLAY": "0",  # sockets count only the events of their own round
            "NODE_PATH": str(BENCH_DIR / "node_modules"),
            **self.env,
        }
        started = time.monotonic()
        self.process = subprocess.Popen(
            pinned(self.cpu, self.command or self.COMMANDS[self.kind]),
            env=env,
            cwd=self.workdir,
            stdout=subprocess.DEVNULL,
            stderr=open(self.workdir / "server.log", "ab"),  # noqa: SIM115
        )
        while True:
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=1) as answer:
                    if answer.status == 200:
                        return time.monotonic() - started
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() - started > self.startup_seconds:
                raise RuntimeError(
                    f"{self.kind} did not start: {(self.workdir / 'server.log').read_text()[-2000:]}"
                )
            time.sleep(0.005)

    def rss_kib(self) -> int:
        assert self.process is not None
        # taskset execs the server, so the pid is the server's own.
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def cpu_seconds(self) -> float:
        """User and system CPU the server process (all its threads) has used so far."""
        assert self.process is not None
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def wrk(
    url: str, script: Path, seconds: float, connections: int, *args: str, cpu: str | None = LOAD_CPU
) -> dict[str, Any]:
    """One wrk run; adds `rps` and the CPU share wrk itself used (to show it is not the limit)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), url]
    if args:
        command += ["--", *args]
    output = subprocess.run(pinned(cpu, command), capture_output=True, text=True, check=True).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    result: dict[str, Any] = json.loads(output.strip().splitlines()[-1])
    result["rps"] = result["requests"] / result["seconds"]
    result["wrk_cpu"] = (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / result[
        "seconds"
    ]
    return result


def signed_webhook(event: dict[str, Any]) -> tuple[str, bytes]:
    body = json.dumps(event, separators=(",", ":")).encode()
    digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
    token = AccessToken("devkey", "secret").with_sha256(digest).with_ttl(timedelta(minutes=30)).to_jwt()
    return token, body


def bench_event(sent_at: float | None = None, room: str = "bench-room") -> dict[str, Any]:
    event: dict[str, Any] = {
        "event": "participant_joined",
        "id": f"EV_{uuid.uuid4().hex}",
        "createdAt": str(int(time.time())),
        "room": {"sid": "RM_bench", "name": room},
        "participant": {"sid": "PA_bench", "identity": "alice", "state": "ACTIVE"},
    }
    if sent_at is not None:
        event["benchSentAt"] = sent_at
    return event


def post(url: str, body: bytes, headers: dict[str, str]) -> int:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def write_webhook_file(path: Path, count: int) -> None:
    with open(path, "w") as lines:
        for _ in range(count):
            token, body = signed_webhook(bench_event())
            lines.write(f"{token}\t{body.decode()}\n")


class Clients:
    """A bench/clients.mjs process holding `count` sockets on the load core (`cpu`; None:
    on any)."""

    def __init__(self, url: str, count: int, expect: int = 0, cpu: str | None = LOAD_CPU) -> None:
        self.expect = expect
        ws_url = url.replace("http", "ws") + "/events"
        command = ["node", str(BENCH_DIR / "clients.mjs"), ws_url, str(count)] + (
            [str(expect)] if expect else []
        )
        self.process = subprocess.Popen(
            pinned(cpu, command),
            cwd=PROJECT_DIR,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline().strip()
        if line != "ready":
            raise RuntimeError(f"clients did not connect: {line!r}")

    def result(self) -> dict[str, Any]:
        """What the clients measured: waits for them to finish (or stops idle ones)."""
        assert self.process.stdin is not None and self.process.stdout is not None
        if not self.expect:  # idle clients report when stdin closes; measuring ones when done
            self.process.stdin.close()
        line = self.process.stdout.readline()
        self.stop()
        return dict(json.loads(line))

    def stop(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            if not self.process.stdin.closed:
                self.process.stdin.close()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


@dataclass
class Figure:
    """Rounds of one figure for ours and the baseline, summarised as medians and ratios."""

    name: str
    unit: str
    ours: list[float] = field(default_factory=list)
    base: list[float] = field(default_factory=list)
    baseline: str = ""
    target: str = ""
    met: bool | None = None

    @property
    def ratios(self) -> list[float]:
        return [a / b for a, b in zip(self.ours, self.base, strict=False) if b]

    def cells(self) -> list[str]:
        def span(values: list[float], digits: int = 1) -> str:
            if not values:
                return "-"
            return (
                f"{statistics.median(values):.{digits}f} [{min(values):.{digits}f}-{max(values):.{digits}f}]"
            )

        met = "" if self.met is None else ("yes" if self.met else "**no**")
        ratio = span(self.ratios, 2) + "x" if self.base else "-"
        return [
            self.name,
            f"{span(self.ours)} {self.unit}",
            f"{span(self.base)} ({self.baseline})" if self.base else "-",
            ratio,
            self.target,
            met,
        ]
