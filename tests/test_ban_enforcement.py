"""Ban enforcement under load, against a real Redis: a reconcile listing thousands of
participants reads each room's bans once, over a bounded pool; and the bans' Redis
client gives up on a Redis that never answers or answers something else."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from pathlib import Path
from typing import Any

import pytest

from dev.livekit_server import free_port
from eventlog import open_event_log
from ground.config import Config
from rooms import Rooms
from rooms.bans import REDIS_CONNECTIONS, BansUnavailable, RedisBans
from rooms.directory import DirectoryRoom, Participant
from rooms.livekit import open_rooms_livekit_api
from tests.conftest import run_async

PARTICIPANTS_PER_ROOM = 500
ROOMS = 6


@pytest.mark.redis
def test_a_reconcile_of_thousands_reads_each_rooms_bans_once(
    redis_server: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = redis_server()
    # LiveKit at a port nobody listens on: removing the banned one fails, and says so.
    config = Config(
        events_db=str(tmp_path / "events.sqlite3"),
        events_redis_url=store.url,
        livekit_api_url=f"http://127.0.0.1:{free_port()}",
    )
    before = store.info("stats", "total_connections_received")

    async def reconcile() -> None:
        event_log = open_event_log(config)
        await event_log.start()
        livekit_api = open_rooms_livekit_api(config)
        rooms = Rooms(config, event_log, livekit_api)
        try:
            await rooms.bans.ban("room-3", "person-77", 60)
            rooms.directory.rooms = {
                f"room-{r}": DirectoryRoom(
                    {"name": f"room-{r}"},
                    {
                        f"person-{p}": Participant(f"person-{p}", f"PA_{r}_{p}")
                        for p in range(PARTICIPANTS_PER_ROOM)
                    },
                )
                for r in range(ROOMS)
            }
            with caplog.at_level(logging.WARNING, logger="rooms.enforcement"):
                rooms.directory._tell_participants()
                await asyncio.sleep(0)
                async with asyncio.timeout(60):
                    while rooms.enforcer._tasks:
                        await asyncio.sleep(0.05)
        finally:
            await rooms.stop()
            await rooms.close()
            await livekit_api.aclose()
            await event_log.close()

    run_async(reconcile())
    # Thousands of participants, a bounded number of connections (the ban set up by one).
    assert store.info("stats", "total_connections_received") - before <= REDIS_CONNECTIONS
    messages = [record.getMessage() for record in caplog.records]
    assert not [m for m in messages if "cannot be read" in m], messages[:3]
    # The banned one was found (and its removal tried, LiveKit being away), nobody else was.
    attempts = [m for m in messages if "banned" in m]
    assert attempts and all("'person-77'" in a and "'room-3'" in a for a in attempts), attempts


class FaultyRedis:
    """A Redis stand-in for the injected fault: it accepts connections and then either says
    nothing at all or answers every command with `reply`."""

    def __init__(self, reply: bytes | None) -> None:
        self.reply = reply
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"redis://127.0.0.1:{self.listener.getsockname()[1]}/0"
        self.connections: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            self.connections.append(connection)
            if self.reply is not None:
                threading.Thread(target=self._answer, args=(connection,), daemon=True).start()

    def _answer(self, connection: socket.socket) -> None:
        try:
            while connection.recv(65536):
                assert self.reply is not None
                connection.sendall(self.reply)
        except OSError:
            pass

    def close(self) -> None:
        self.listener.close()
        for connection in self.connections:
            connection.close()
        self.thread.join(5)


@pytest.mark.parametrize("reply", [None, b"HTTP/1.1 200 OK\r\n\r\n"], ids=["silent", "garbage"])
def test_the_bans_redis_client_gives_up_on_a_faulty_redis(reply: bytes | None) -> None:
    faulty = FaultyRedis(reply)

    async def ask() -> str:
        bans = RedisBans(faulty.url)
        try:
            async with asyncio.timeout(30):  # far above the client's own deadline
                with pytest.raises(BansUnavailable) as raised:
                    await bans.find("R", "bob")
            return str(raised.value)
        finally:
            await bans.close()

    try:
        message = run_async(ask())
    finally:
        faulty.close()
    assert "The ban list in Redis is unavailable" in message
