"""WORKERS: /metrics and /healthz for the whole server, whichever worker answers.

Each worker counts in its own registry, as one server does (the hot path is the same),
and every WORKER_SECONDS writes its samples and its health figures (sockets, event
handlers) to a file of its own (by pid) in the workers' shared directory, and once more
when it stops. /healthz adds up the live workers' figures. A scrape answers this
worker's samples as they are now plus every other worker's file, summed by series:
counters and histograms over every file (a worker that died keeps what it counted, so
no counter goes back when it is replaced), gauges over the workers alive. This does what
prometheus-client's multiprocess mode does for its own metric types, for every metric
here too (the frames counter, the socket gauge and the event handlers' figures are read
when scraped, which that mode does not support), at one file write a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

import orjson
from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

WORKER_SECONDS = 1.0  # how stale another worker's figures may be in a scrape
SUFFIX = ".figures.json"


class WorkerFigures(Collector):
    def __init__(
        self, directory: str, registry: CollectorRegistry | None, health: Callable[[], dict[str, Any]]
    ) -> None:
        self.registry = registry  # this worker's own (None: METRICS_ENABLED=false)
        self.health = health  # this worker's health figures
        self.directory = directory
        self.path = os.path.join(directory, f"{os.getpid()}{SUFFIX}")
        self.exposed = CollectorRegistry()  # what /metrics answers: every worker's, summed
        self.exposed.register(self)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self.write()
            self._task = asyncio.create_task(self._write_forever())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self.write()  # what it counted stays in the sums

    async def _write_forever(self) -> None:
        while True:
            await asyncio.sleep(WORKER_SECONDS)
            self.write()

    def _families(self) -> list[Any]:
        if self.registry is None:
            return []
        return [
            [
                family.name,
                family.documentation,
                family.type,
                [[s.name, s.labels, s.value] for s in family.samples],
            ]
            for family in self.registry.collect()
        ]

    def write(self) -> None:
        partial = self.path + ".partial"
        try:
            with open(partial, "wb") as file:
                file.write(orjson.dumps({"families": self._families(), "health": self.health()}))
            os.replace(partial, self.path)  # whole, never half read
        except OSError as error:
            log.error("could not share this worker's figures: %s", error)

    def everyone_alive(self) -> list[dict[str, Any]]:
        """The health figures of every live worker, this one's as they are now."""
        return [self.health(), *(figures["health"] for figures, alive in self._others() if alive)]

    def collect(self) -> Iterator[Metric]:
        merged: dict[str, Metric] = {}
        sums: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
        figures: dict[str, Any]
        for figures, alive in [({"families": self._families()}, True), *self._others()]:
            for name, documentation, kind, samples in figures["families"]:
                if kind == "gauge" and not alive:
                    continue  # a dead worker's sockets are gone
                if name not in merged:
                    merged[name] = Metric(name, documentation, kind)
                    sums[name] = {}
                for sample_name, labels, value in samples:
                    key = (sample_name, tuple(sorted(labels.items())))
                    sums[name][key] = sums[name].get(key, 0.0) + value
        for name, family in merged.items():
            for (sample_name, labels), value in sums[name].items():
                family.add_sample(sample_name, dict(labels), value)
            yield family

    def _others(self) -> Iterator[tuple[dict[str, Any], bool]]:
        """The other workers' files that read as this module writes them, each with
        whether its worker is alive; any other file there is passed over."""
        with contextlib.suppress(OSError):
            for entry in os.scandir(self.directory):
                pid = entry.name.removesuffix(SUFFIX)
                if entry.name == pid or not pid.isdigit() or entry.path == self.path:
                    continue
                try:
                    with open(entry.path, "rb") as file:
                        figures = orjson.loads(file.read())
                except (OSError, orjson.JSONDecodeError):
                    continue
                if _well_formed(figures):
                    yield figures, _alive(int(pid))


def _well_formed(figures: Any) -> bool:
    def sample(item: Any) -> bool:
        return (
            isinstance(item, list)
            and len(item) == 3
            and isinstance(item[0], str)
            and isinstance(item[1], dict)
            and all(isinstance(key, str) and isinstance(value, str) for key, value in item[1].items())
            and isinstance(item[2], (int, float))
        )

    def family(item: Any) -> bool:
        return (
            isinstance(item, list)
            and len(item) == 4
            and all(isinstance(part, str) for part in item[:3])
            and isinstance(item[3], list)
            and all(map(sample, item[3]))
        )

    return (
        isinstance(figures, dict)
        and isinstance(figures.get("families"), list)
        and all(map(family, figures["families"]))
        and isinstance(figures.get("health"), dict)
        and isinstance(figures["health"].get("sockets"), int)
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
