"""Long-running tasks are supervised: one that fails is logged, shown as down, started
again after a backoff, and counts as up once it has run a while without failing."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import pytest

from ground import supervisor
from ground.supervisor import Supervisor
from tests.test_rooms import in_a_thread

DEADLINE_SECONDS = 30.0


async def until(read: Callable[[], Any], holds: Callable[[Any], bool]) -> Any:
    """`read()` once `holds` of it, looked at every 10 ms; fails after DEADLINE_SECONDS."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE_SECONDS
    while not holds(value := read()):
        assert loop.time() < deadline, f"still {value!r} after {DEADLINE_SECONDS:g} s"
        await asyncio.sleep(0.01)
    return value


def test_a_failing_task_is_logged_shown_down_and_started_again(
    monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    monkeypatch.setattr(supervisor, "FIRST_BACKOFF", 0.05)
    monkeypatch.setattr(supervisor, "STABLE_SECONDS", 0.3)
    runs: list[int] = []

    async def work() -> None:
        runs.append(len(runs))
        if len(runs) <= 2:
            raise ValueError(f"broken answer {len(runs)}")
        await asyncio.sleep(3600)  # the third run keeps going

    async def scenario() -> tuple[dict[str, Any], dict[str, Any]]:
        tasks = Supervisor()
        tasks.start("the reconcile", work)
        try:
            # Waited for, not slept on: a loaded machine may take its time either way.
            down = await until(tasks.health, lambda health: health != {})
            up = await until(tasks.health, lambda health: health == {} and len(runs) == 3)
        finally:
            await tasks.stop()
        return down, up

    with caplog.at_level(logging.ERROR, logger="ground.supervisor"):
        down, up = in_a_thread(scenario())  # this thread's loop belongs to pytest-tornado
    assert down["the reconcile"]["error"].startswith("ValueError: broken answer")
    assert up == {}
    assert len(runs) == 3
    assert sum("the reconcile stopped (ValueError" in r.getMessage() for r in caplog.records) == 2
