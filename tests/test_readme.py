"""Every curl example in the README and the docs gives what it says, run as written against a
real server."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ground.config import PROJECT_DIR

BLOCK = re.compile(r"```sh\n(.*?)```", re.DOTALL)
EXTENDING_PAGE = PROJECT_DIR / "docs" / "extending.md"
EXAMPLES = re.compile(r"^## The examples\n(.*?)^## ", re.DOTALL | re.MULTILINE)
# The README, then the docs pages but the extending one: its walkthroughs start servers of
# their own (see below).
CURL_PAGES = [PROJECT_DIR / "README.md"] + [
    page for page in sorted((PROJECT_DIR / "docs").glob("*.md")) if page != EXTENDING_PAGE
]


# Its examples need a LiveKit server with people in a room: tests/test_rooms_e2e.py runs them.
ADMIN_SECTION = "\n## Rooms and moderation\n"


def curl_examples(admin: bool = False) -> list[tuple[str, str]]:
    examples = []
    for page in CURL_PAGES:
        before, _, section = page.read_text().partition(ADMIN_SECTION)
        section, _, after = section.partition("\n## ")
        for block in BLOCK.findall(section if admin else before + after):
            if "curl" not in block:
                continue
            lines = block.strip().splitlines()
            expected = [line[2:] for line in lines if line.startswith("# ")]
            command = "\n".join(line for line in lines if not line.startswith("#"))
            assert len(expected) == 1, f"one expected answer per example:\n{block}"
            examples.append((command, expected[0]))
    return examples


def test_the_readme_has_curl_examples_for_every_endpoint() -> None:
    commands = " ".join(command for command, _ in curl_examples())
    for path in ("/token", "/livekit/webhook", "/events/history", "/healthz", "/metrics", "/openapi.json"):
        assert path in commands


def as_run_here(command: str, port: int) -> str:
    """The example against the test server, with the Python running the tests (a
    `make test PYTHON=...` run has its own venv instead of the examples' `.venv`)."""
    return command.replace("localhost:6080", f"127.0.0.1:{port}").replace(".venv/bin/python", sys.executable)


@pytest.mark.parametrize(("command", "expected"), curl_examples())
def test_curl_example(server_process: Any, command: str, expected: str) -> None:
    server = server_process(LIVEKIT_URL="ws://localhost:7880")
    if "/events/history" in command:  # there must be an event to list
        setup = next(c for c, _ in curl_examples() if "/livekit/webhook" in c)
        subprocess.run(
            ["bash", "-c", as_run_here(setup, server.port)],
            cwd=PROJECT_DIR,
            check=True,
            capture_output=True,
        )
    result = subprocess.run(
        ["bash", "-c", as_run_here(command, server.port)],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=30,
    )
    pattern = ".*".join(re.escape(part) for part in expected.split("..."))
    assert re.fullmatch(pattern, result.stdout.strip()), (result.stdout, result.stderr)


def walkthroughs() -> dict[str, str]:
    """The subsections of the extending page's examples, by the example file each walks through."""
    section = EXAMPLES.search(EXTENDING_PAGE.read_text())
    assert section, "docs/extending.md has a The examples section"
    found = {}
    for part in section.group(1).split("\n### ")[1:]:
        example = re.search(r"`(examples/\w+\.py)`", part.splitlines()[0])
        assert example, part.splitlines()[0]
        found[example.group(1)] = part
    return found


def test_make_it_yours_walks_through_every_example() -> None:
    shipped = {f"examples/{path.name}" for path in (PROJECT_DIR / "examples").glob("[!_]*.py")}
    assert set(walkthroughs()) == shipped


@pytest.mark.parametrize("example", sorted(walkthroughs()))
def test_make_it_yours_shows_the_examples_own_code(example: str) -> None:
    code = (PROJECT_DIR / example).read_text()
    excerpts = re.findall(r"```python\n(.*?)```", walkthroughs()[example], re.DOTALL)
    assert excerpts
    for excerpt in excerpts:
        assert excerpt in code, f"docs/extending.md's excerpt is not {example}'s code:\n{excerpt}"


@pytest.mark.parametrize("example", sorted(walkthroughs()))
def test_make_it_yours_as_written(
    example: str, server_process: Any, receiver: Any, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Start the server as the walkthrough says, run its commands, get what it shows."""
    start, *commands = BLOCK.findall(walkthroughs()[example])
    assert start.strip().endswith("make run"), start
    env = dict(re.findall(r"(\w+)=(\S+)", start.strip().removesuffix("make run")))
    if "FORWARD_URL" in env:
        target = receiver()
        env["FORWARD_URL"] = target.url
    if "room_list" in env["APP_EXTENSIONS"]:
        env["LIVEKIT_URL"] = livekit_for(request, tmp_path)
    server = server_process(**env)
    for command in commands:
        lines = command.strip().splitlines()
        expected = [line[2:] for line in lines if line.startswith("# ")]
        script = "\n".join(line for line in lines if not line.startswith("#"))
        script = as_run_here(script, server.port)
        for value in env.values():
            if value.startswith("data/"):  # the server's files are in its working directory
                script = script.replace(value, str(tmp_path / value))
        result = subprocess.run(
            ["bash", "-c", script], cwd=PROJECT_DIR, capture_output=True, text=True, timeout=30
        )
        pattern = ".*".join(re.escape(part) for part in expected[0].split("..."))
        assert re.fullmatch(pattern, result.stdout.strip()), (result.stdout, result.stderr)
    if "FORWARD_URL" in env:  # the forwarder's walkthrough: an event reaches the service once
        from tests.conftest import post_webhook, webhook_event

        event = webhook_event("room_started", room="readme")
        assert post_webhook(server.url, event) == 200
        assert target.wait_for(1) == [event["id"]]


def livekit_for(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A real livekit-server, what `make run` starts next to the server."""
    from dev.livekit_server import HOW_TO_GET, LiveKitServer, find_binary
    from tests.conftest import require

    binary = find_binary()
    require("livekit-server", binary is not None, HOW_TO_GET)
    assert binary is not None
    livekit = LiveKitServer(
        binary, "http://127.0.0.1:9/livekit/webhook", log_path=tmp_path / "lk.log"
    ).start()
    request.addfinalizer(livekit.stop)
    return livekit.url
