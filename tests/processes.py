"""Real processes for the tests: this server in a subprocess, on free loopback ports."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from config import PROJECT_DIR
from dev.livekit_server import free_port


class ServerProcess:
    """`python server.py` with its own port and event store; stopped by stop() or kill()."""

    def __init__(self, log_dir: Path, **env: str) -> None:
        self.port = int(env.pop("SERVER_PORT", 0)) or free_port()
        self.env = {
            **os.environ,
            "SERVER_PORT": str(self.port),
            "EVENTS_DB": str(log_dir / "events.sqlite3"),
            "PYTHONUNBUFFERED": "1",
            **env,
        }
        self.log_path = log_dir / f"server-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> ServerProcess:
        with open(self.log_path, "ab") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, str(PROJECT_DIR / "server.py")],
                cwd=self.log_path.parent,
                env=self.env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=1) as response:
                    if response.status == 200:
                        return self
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start; its log:\n{self.log_text()[-3000:]}")
            time.sleep(0.05)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def history(self, since: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        query = f"?limit={limit}" + (f"&since={since}" if since else "")
        with urllib.request.urlopen(self.url + "/events/history" + query, timeout=5) as response:
            return list(json.loads(response.read()))
