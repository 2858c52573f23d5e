"""WORKERS: one reconcile for every worker's room directory.

Worker 0 (the leader) reconciles with RoomService as one server does, and after each
reconcile writes what it found (the rooms and LiveKit's status) to a file in the
workers' shared directory. The other workers follow the event log as the leader does,
and take each new listing the leader writes as their own reconcile's answer, with the
events they applied since the leader began asking on top (it says when in a file, so
they keep no more events than that). When one
of them sees a gap (a room it does not know), it asks the leader for a reconcile by
touching a second file, which the leader watches.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from rooms.directory import DirectoryRoom, RoomDirectory

log = logging.getLogger(__name__)

LISTING_FILE = "room-directory.json"
REQUEST_FILE = "room-directory-wanted"
ASKING_FILE = "room-directory-asking"  # when the leader last began asking RoomService
LOOK_SECONDS = 0.25  # how often a worker looks at the other side's file


@dataclass
class DirectoryShare:
    directory: str  # the workers' shared directory
    leader: bool  # worker 0: the one that asks LiveKit

    def __post_init__(self) -> None:
        self._listing = os.path.join(self.directory, LISTING_FILE)
        self._request = os.path.join(self.directory, REQUEST_FILE)
        self._asking = os.path.join(self.directory, ASKING_FILE)
        self._seen_asking: tuple[int, int, int] | None = None
        self._asking_since = 0.0
        self._seen_listing: tuple[int, int, int] | None = None
        self._seen_request: tuple[int, int, int] | None = None
        self._written = 0

    # The leader's side.

    def asking(self) -> float:
        """Say that a reconcile begins; its time, for `publish`."""
        now = time.time()  # one clock for every process on the machine
        _write(self._asking, orjson.dumps(now))
        return now

    def publish(self, rooms: dict[str, DirectoryRoom], status: dict[str, Any], asked_at: float) -> None:
        """Write the directory after a reconcile that began asking at `asked_at`."""
        self._written += 1
        listing = {
            "written": self._written,
            "askedAt": asked_at,
            "status": status,
            "rooms": {name: [room.info, room.shapes()] for name, room in rooms.items()},
        }
        _write(self._listing, orjson.dumps(listing))

    async def watch_requests(self, room_directory: RoomDirectory) -> None:
        """Reconcile soon whenever another worker asks."""
        self._seen_request = _changed_at(self._request)
        while True:
            await asyncio.sleep(LOOK_SECONDS)
            asked = _changed_at(self._request)
            if asked != self._seen_request:
                self._seen_request = asked
                room_directory.request_reconcile("another worker asked")

    # The other workers' side.

    def ask(self) -> None:
        with contextlib.suppress(OSError), open(self._request, "ab") as file:
            file.write(b".")  # a change the leader sees (its time and size)

    def asking_since(self) -> float:
        """When the leader last began a reconcile (0: never)."""
        changed = _changed_at(self._asking)
        if changed != self._seen_asking:
            self._seen_asking = changed
            try:
                with open(self._asking, "rb") as file:
                    since = orjson.loads(file.read())
                self._asking_since = float(since)
            except (OSError, orjson.JSONDecodeError, TypeError, ValueError):
                self._asking_since = 0.0
        return self._asking_since

    def newest(self) -> tuple[dict[str, tuple[dict[str, Any], dict[str, Any]]], dict[str, Any], float] | None:
        """The leader's listing, its status and when the leader began asking for it,
        when it wrote one since the last look."""
        changed = _changed_at(self._listing)
        if changed == self._seen_listing:
            return None
        try:
            with open(self._listing, "rb") as file:
                listing = orjson.loads(file.read())
        except (OSError, orjson.JSONDecodeError):
            return None
        self._seen_listing = changed
        try:
            rooms = {
                name: (dict(info), {identity: _shape(person) for identity, person in people.items()})
                for name, (info, people) in listing["rooms"].items()
            }
            status = {key: listing["status"][key] for key in ("ok", "error", "reconciledAt")}
            asked_at = float(listing["askedAt"])
        except (KeyError, TypeError, ValueError, AttributeError):
            log.error(
                "rooms: worker 0's listing in %s does not read as one; waiting for the next", self._listing
            )
            return None
        return rooms, status, asked_at


def _shape(person: Any) -> dict[str, Any]:
    """A participant's shape in a listing: it says who, or the listing is not one."""
    if not isinstance(person.get("identity"), str) or not isinstance(person.get("sid"), str):
        raise TypeError("a participant without identity or sid")
    return dict(person)


def _write(path: str, data: bytes) -> None:
    """Whole, then renamed: never half read."""
    partial = f"{path}.{os.getpid()}"
    try:
        with open(partial, "wb") as file:
            file.write(data)
        os.replace(partial, path)
    except OSError as error:
        log.error("rooms: could not share the room directory with the other workers: %s", error)


def _changed_at(path: str) -> tuple[int, int, int] | None:
    """When and how the file last changed: a rename makes a new inode, an append a new
    size, so two changes within one clock tick still differ."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size, stat.st_ino
