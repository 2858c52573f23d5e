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

When a worker has ended, the parent folds its file into RETIRED (`retire`), so the
directory does not fill with the files of dead workers, and a pid used again is not
taken for one alive. Since the other workers' figures are up to a second old, two
scrapes answered by two workers could sum a counter differently: each scrape answers
at least what any scrape answered before (SERVED), so no counter goes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import orjson
from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

WORKER_SECONDS = 1.0  # how stale another worker's figures may be in a scrape
SUFFIX = ".figures.json"
RETIRED = "retired" + SUFFIX  # what ended workers counted (counters and histograms)
SERVED = "served.json"  # the highest value each scrape answered, per cumulative series
CUMULATIVE = frozenset(("counter", "histogram", "summary"))
LOCK_WAIT_SECONDS = 0.2

Sums = dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]


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
        sums: Sums = {}
        figures: dict[str, Any]
        with FiguresLock(self.directory) as locked:  # no file retired while they are read
            for figures, alive in [({"families": self._families()}, True), *self._others()]:
                add_families(merged, sums, figures["families"], alive)
            if locked:
                never_less_than_served(self.directory, merged, sums)
        for name, family in merged.items():
            for (sample_name, labels), value in sums[name].items():
                family.add_sample(sample_name, dict(labels), value)
            yield family

    def _others(self) -> Iterator[tuple[dict[str, Any], bool]]:
        """The other workers' files that read as this module writes them, each with
        whether its worker is alive (RETIRED: not); any other file there is passed over."""
        with contextlib.suppress(OSError):
            for entry in os.scandir(self.directory):
                pid = entry.name.removesuffix(SUFFIX)
                retired = entry.name == RETIRED
                if not retired and (entry.name == pid or not pid.isdigit() or entry.path == self.path):
                    continue
                figures = _read(entry.path)
                if _well_formed(figures):
                    yield figures, not retired and _alive(int(pid))


def add_families(merged: dict[str, Metric], sums: Sums, families: list[Any], alive: bool) -> None:
    """Sums by series: counters and histograms of every worker, gauges of the live ones."""
    for name, documentation, kind, samples in families:
        if kind not in CUMULATIVE and not alive:
            continue  # a dead worker's sockets are gone
        if name not in merged:
            merged[name] = Metric(name, documentation, kind)
            sums[name] = {}
        for sample_name, labels, value in samples:
            key = (sample_name, tuple(sorted(labels.items())))
            sums[name][key] = sums[name].get(key, 0.0) + value


class FiguresLock:
    """What a scrape and `retire` hold: True once held. Waited for a moment only, on the
    event loop: a worker stopped (SIGSTOP) while it held it must not stop the others."""

    def __init__(self, directory: str) -> None:
        self.path = os.path.join(directory, SERVED + ".lock")
        self.file: Any = None

    def __enter__(self) -> bool:
        try:
            self.file = open(self.path, "a")  # closed, and so released, in __exit__
        except OSError:
            return False
        deadline = time.monotonic() + LOCK_WAIT_SECONDS
        while True:
            try:
                fcntl.lockf(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except OSError:
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.001)

    def __exit__(self, *exception: object) -> None:
        if self.file is not None:
            self.file.close()


def never_less_than_served(directory: str, merged: dict[str, Metric], sums: Sums) -> None:
    """Raise each cumulative series to the highest value answered before (by any worker),
    and record what this scrape answers. Under FiguresLock."""
    path = os.path.join(directory, SERVED)
    served = _read(path)
    served = served if isinstance(served, dict) else {}
    for name, family in merged.items():
        if family.type not in CUMULATIVE:
            continue
        before = served.get(name)
        before = before if isinstance(before, dict) else {}
        for key in sums[name]:
            text = orjson.dumps(key).decode()
            value = before.get(text)
            if isinstance(value, (int, float)) and value > sums[name][key]:
                sums[name][key] = value
            before[text] = sums[name][key]
        served[name] = before
    try:
        with open(path + ".partial", "wb") as file:
            file.write(orjson.dumps(served))
        os.replace(path + ".partial", path)
    except OSError as error:  # this scrape's sums stand; the next may go back a little
        log.error("could not keep /metrics counters from going back: %s", error)


def retire(directory: str, pid: int) -> None:
    """In the parent, once worker `pid` has ended: its counters and histograms folded into
    RETIRED, its own file removed; under FiguresLock, so that no scrape reads both."""
    with FiguresLock(directory):  # held or not: the parent does not wait on a stopped worker
        _fold(directory, pid)


def _fold(directory: str, pid: int) -> None:
    path = os.path.join(directory, f"{pid}{SUFFIX}")
    figures = _read(path)
    for leftover in (path, path + ".partial"):  # .partial: killed in the middle of a write
        with contextlib.suppress(OSError):
            os.remove(leftover)
    if not _well_formed(figures):
        return
    retired_path = os.path.join(directory, RETIRED)
    merged: dict[str, Metric] = {}
    sums: Sums = {}
    for families in (_read_families(retired_path), figures["families"]):
        add_families(merged, sums, families, alive=False)  # not alive: its gauges are left out
    families_out = [
        [
            name,
            family.documentation,
            family.type,
            [[s, dict(labels), v] for (s, labels), v in sums[name].items()],
        ]
        for name, family in merged.items()
    ]
    try:
        with open(retired_path + ".partial", "wb") as file:
            file.write(orjson.dumps({"families": families_out, "health": {"sockets": 0}}))
        os.replace(retired_path + ".partial", retired_path)
    except OSError as error:
        log.error("could not keep the counts of the worker with pid %d after it ended: %s", pid, error)


def _read(path: str) -> Any:
    try:
        with open(path, "rb") as file:
            return orjson.loads(file.read())
    except (OSError, orjson.JSONDecodeError):
        return None


def _read_families(path: str) -> list[Any]:
    figures = _read(path)
    return figures["families"] if _well_formed(figures) else []


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
