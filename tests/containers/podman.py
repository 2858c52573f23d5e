"""Podman for the container tests: the commands, clean-up, and what the tests share."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ground.config import PROJECT_DIR

CACHE_DIR = PROJECT_DIR / "tools" / "containers"
# Every container, volume and network the tests create is named with it.
PREFIX = "lkapptest"
# podman 4.3 on this kind of VM: crun fails on the file limit and the hybrid cgroups.
CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]

[engine]
runtime = "runc"
"""
HOW_TO_GET = "install Debian's podman, runc, podman-compose and debootstrap (`make system-packages` as root)"


def missing_tools() -> list[str]:
    """What the container tests need and this machine lacks (root: podman here is rootful)."""
    missing = [tool for tool in ("podman", "runc", "podman-compose", "debootstrap") if not _which(tool)]
    if os.geteuid() != 0:
        missing.append("root (debootstrap and rootful podman)")
    return missing


def _which(tool: str) -> str | None:
    return shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin")


def environment(**extra: str) -> dict[str, str]:
    """The environment for podman and podman-compose: containers.conf, Dockerfile format
    (podman's default OCI format drops HEALTHCHECK)."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    conf = CACHE_DIR / "containers.conf"
    if not conf.exists() or conf.read_text() != CONTAINERS_CONF:
        conf.write_text(CONTAINERS_CONF)
    env = {**os.environ, "CONTAINERS_CONF": str(conf), "BUILDAH_FORMAT": "docker", **extra}
    env["PATH"] = env.get("PATH", "") + ":/usr/sbin:/sbin"
    return env


def podman(
    *args: str, check: bool = True, timeout: float = 120, **run: Any
) -> subprocess.CompletedProcess[str]:
    """`podman args...`; its output as text. Fails with podman's own words when `check`."""
    result = subprocess.run(
        ["podman", *args], env=environment(), capture_output=True, text=True, timeout=timeout, **run
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"podman {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-3000:]}"
        )
    return result


def inspect(name: str, template: str, kind: str = "container") -> str:
    return podman(kind, "inspect", "--format", template, name).stdout.strip()


def remove_everything_named(prefix: str) -> None:
    """Every container (with its anonymous volumes), pod, volume and network whose name
    starts with `prefix`: the tests' own, whatever state a failure left them in."""
    for kind, listing in (
        ("container", ["ps", "-a", "--format", "{{.Names}}"]),
        ("pod", ["pod", "ps", "--format", "{{.Name}}"]),
        ("volume", ["volume", "ls", "--format", "{{.Name}}"]),
        ("network", ["network", "ls", "--format", "{{.Name}}"]),
    ):
        names = [name for name in podman(*listing, check=False).stdout.split() if name.startswith(prefix)]
        if not names:
            continue
        if kind == "container":
            podman("rm", "--force", "--volumes", "--time", "0", *names, check=False)
        else:
            podman(kind, "rm", "--force", *names, check=False)


@contextlib.contextmanager
def cache_lock() -> Iterator[None]:
    """One test session at a time builds, runs and sweeps (podman is shared by the machine)."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with open(CACHE_DIR / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status), json.loads(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return int(error.code), json.loads(error.read())


def wait_healthy(container: str, timeout: float = 90) -> None:
    """Until the image's HEALTHCHECK passes (run by hand: podman schedules it with systemd
    timers, which this machine may not have)."""
    deadline = time.monotonic() + timeout
    while podman("healthcheck", "run", container, check=False).returncode != 0:
        if time.monotonic() > deadline:
            logs = podman("logs", container, check=False)
            raise AssertionError(
                f"{container} never became healthy; its log:\n{logs.stdout[-3000:]}{logs.stderr[-3000:]}"
            )
        time.sleep(0.5)


def in_container(container: str, path: str) -> str:
    """GET http://127.0.0.1:6080<path> from inside a server container (it has no curl)."""
    url = f"http://127.0.0.1:6080{path}"
    script = f"import urllib.request; print(urllib.request.urlopen({url!r}, timeout=5).read().decode())"
    return podman("exec", container, "python3", "-c", script).stdout


CONTAINERS_DOC = PROJECT_DIR / "docs" / "containers.md"


def doc_block(first_line: str) -> str:
    """The code block of docs/containers.md whose first line is `first_line`."""
    for block in re.findall(r"```\w*\n(.*?)```", CONTAINERS_DOC.read_text(), re.DOTALL):
        if block.startswith(first_line + "\n"):
            return str(block)
    raise AssertionError(f"docs/containers.md has no block starting with {first_line!r}")


def report_line(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """Figures for the test output (never asserted): printed even when output is captured."""
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")

    def log(line: str) -> None:
        if reporter is None:
            return
        with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
            reporter.write_line(f"[containers] {line}")

    return log
