"""Every curl example in the README gives what it says, run as written against a real server."""

from __future__ import annotations

import re
import subprocess
from typing import Any

import pytest

from config import PROJECT_DIR

BLOCK = re.compile(r"```sh\n(.*?)```", re.DOTALL)


# Its examples need a LiveKit server with people in a room: tests/test_rooms_e2e.py runs them.
ADMIN_SECTION = "\n## Rooms and moderation\n"


def curl_examples(admin: bool = False) -> list[tuple[str, str]]:
    readme = (PROJECT_DIR / "README.md").read_text()
    before, _, section = readme.partition(ADMIN_SECTION)
    section, _, after = section.partition("\n## ")
    examples = []
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
    for path in ("/token", "/livekit/webhook", "/events/history", "/healthz"):
        assert path in commands


@pytest.mark.parametrize(("command", "expected"), curl_examples())
def test_curl_example(server_process: Any, command: str, expected: str) -> None:
    server = server_process(LIVEKIT_URL="ws://localhost:7880")
    if "/events/history" in command:  # there must be an event to list
        setup = next(c for c, _ in curl_examples() if "/livekit/webhook" in c)
        subprocess.run(
            ["bash", "-c", setup.replace("localhost:6080", f"127.0.0.1:{server.port}")],
            cwd=PROJECT_DIR,
            check=True,
            capture_output=True,
        )
    local = command.replace("localhost:6080", f"127.0.0.1:{server.port}")
    result = subprocess.run(
        ["bash", "-c", local], cwd=PROJECT_DIR, capture_output=True, text=True, timeout=30
    )
    pattern = ".*".join(re.escape(part) for part in expected.split("..."))
    assert re.fullmatch(pattern, result.stdout.strip()), (result.stdout, result.stderr)
