"""`python -m extensions` fails clearly: one line naming what is wrong, a non-zero exit,
and never a store created (a real process each time; a real Redis that is stopped)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from dev.livekit_server import free_port
from ground.config import PROJECT_DIR


def cli(tmp_path: Path, *arguments: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "extensions", *arguments],
        cwd=PROJECT_DIR,
        env={**os.environ, "EVENTS_DB": str(tmp_path / "events.sqlite3"), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def one_line_failure(answer: subprocess.CompletedProcess[str]) -> str:
    assert answer.returncode != 0
    assert answer.stdout == ""
    lines = answer.stderr.strip().splitlines()
    assert len(lines) == 1, answer.stderr
    assert "Traceback" not in answer.stderr
    return lines[0]


@pytest.mark.parametrize("command", ["parked", "retry", "drop"])
def test_a_missing_events_db_is_named_and_never_created(tmp_path: Path, command: str) -> None:
    missing = tmp_path / "nowhere" / "events.sqlite3"
    line = one_line_failure(cli(tmp_path, command, EVENTS_DB=str(missing)))
    assert str(missing) in line and "EVENTS_DB" in line
    assert not missing.exists() and not missing.parent.exists()


def test_a_file_that_is_not_sqlite_is_named(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not a database\n" * 100)
    line = one_line_failure(cli(tmp_path, "parked", EVENTS_DB=str(text)))
    assert str(text) in line and "not a SQLite file" in line
    assert text.read_text() == "not a database\n" * 100


def test_an_unreachable_redis_is_one_line(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    line = one_line_failure(cli(tmp_path, "parked", EVENTS_REDIS_URL=f"redis://127.0.0.1:{port}/0"))
    assert f"127.0.0.1:{port}" in line and "EVENTS_REDIS_URL" in line


@pytest.mark.redis
def test_a_redis_that_goes_away_is_one_line(tmp_path: Path, redis_server: Any) -> None:
    server = redis_server()
    url = server.url
    assert cli(tmp_path, "parked", EVENTS_REDIS_URL=url).returncode == 0
    server.stop()
    line = one_line_failure(cli(tmp_path, "drop", EVENTS_REDIS_URL=url))
    assert "Redis" in line


def test_an_existing_store_still_works(tmp_path: Path, server_process: Any) -> None:
    server_process().stop()  # the server creates the store
    answer = cli(tmp_path, "parked")
    assert answer.returncode == 0, answer.stderr
    assert answer.stderr.strip() == "0 parked"
