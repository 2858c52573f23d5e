"""Long-running tasks that never stay dead: one that fails is logged, shown in /healthz
as down, and started again after a backoff (1 s, doubling to 30 s); it counts as up
again once it has run STABLE_SECONDS without failing."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

log = logging.getLogger(__name__)

FIRST_BACKOFF = 1.0
MAX_BACKOFF = 30.0
STABLE_SECONDS = 10.0


class Supervisor:
    def __init__(self) -> None:
        self.down: dict[str, dict[str, Any]] = {}
        self._tasks: list[asyncio.Task[None]] = []

    def start(self, name: str, work: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run `work()` until it returns; start it again each time it raises."""
        self._tasks.append(asyncio.create_task(self._keep(name, work), name=name))

    async def _keep(self, name: str, work: Callable[[], Coroutine[Any, Any, None]]) -> None:
        loop = asyncio.get_running_loop()
        backoff, failures = FIRST_BACKOFF, 0
        while True:
            started = loop.time()
            if name in self.down:
                loop.call_later(STABLE_SECONDS, self._up_if_running, name, failures)
            try:
                await work()
                self.down.pop(name, None)
                return
            except Exception as error:
                failures += 1
                if loop.time() - started > STABLE_SECONDS:
                    backoff = FIRST_BACKOFF
                reason = f"{type(error).__name__}: {error}"[:300]
                self.down[name] = {"error": reason, "since": int(time.time() * 1000), "failures": failures}
                log.error("%s stopped (%s); starting it again in %g s", name, reason, backoff, exc_info=error)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)

    def _up_if_running(self, name: str, failures: int) -> None:
        down = self.down.get(name)
        if down is not None and down["failures"] == failures:
            del self.down[name]
            log.info("%s runs again", name)

    def health(self) -> dict[str, Any]:
        """The tasks that are down now: {name: {error, since, failures}}."""
        return dict(self.down)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
