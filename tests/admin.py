"""Helpers for the rooms tests: admin API calls and a WS /live/rooms client, from
threads of their own (Playwright's sync API may hold this thread's event loop)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

SECRET = "rooms-test-admin-secret-0123456789abcdef"


def path_of(*parts: str) -> str:
    """`/rooms/<room>/...` with each part percent-encoded, `/` included."""
    return "/" + "/".join(quote(part, safe="") for part in parts)


def admin(
    base_url: str,
    method: str,
    path: str,
    body: Any = None,
    secret: str | None = SECRET,
    headers: dict[str, str] | None = None,
    timeout: float = 20,
) -> tuple[int, Any, dict[str, str]]:
    """(status, parsed JSON answer, headers) of one admin API call."""
    sent = {"Authorization": f"Bearer {secret}"} if secret else {}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        sent["Content-Type"] = "application/json"
    sent.update(headers or {})
    request = urllib.request.Request(base_url + path, data=data, method=method, headers=sent)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read()), dict(response.headers)
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.loads(error.read()), dict(error.headers)


def eventually(check: Callable[[], Any], timeout: float = 20.0, every: float = 0.1) -> Any:
    """The first truthy result of `check()`, or AssertionError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout} s: {check}")
        time.sleep(every)


class RoomsSocket:
    """A WS /live/rooms client: sends the admin secret first, keeps every message."""

    def __init__(self, base_url: str, secret: str | None = SECRET, origin: str | None = None) -> None:
        self.url = base_url.replace("http", "ws", 1) + "/live/rooms"
        self.secret = secret
        self.origin = origin
        self.messages: list[dict[str, Any]] = []
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.error: Exception | None = None
        self._loop = asyncio.new_event_loop()
        self._connected = threading.Event()
        self._thread = threading.Thread(
            target=self._loop.run_until_complete, args=(self._run(),), daemon=True
        )
        self._thread.start()
        if not self._connected.wait(10):
            raise RuntimeError(f"could not connect to {self.url}")
        if self.error is not None:
            raise self.error

    async def _run(self) -> None:
        from tornado.httpclient import HTTPRequest
        from tornado.websocket import websocket_connect

        headers = {"Origin": self.origin} if self.origin else {}
        try:
            self._client = await websocket_connect(HTTPRequest(self.url, headers=headers))
        except Exception as error:
            self.error = error
            self._connected.set()
            return
        if self.secret is not None:
            await self._client.write_message(json.dumps({"authorization": f"Bearer {self.secret}"}))
        self._connected.set()
        while (message := await self._client.read_message()) is not None:
            self.messages.append(json.loads(message))
        self.close_code = self._client.close_code
        self.close_reason = self._client.close_reason

    def rooms(self) -> dict[str, dict[str, Any]]:
        """The directory as the messages so far describe it: name -> room."""
        rooms: dict[str, dict[str, Any]] = {}
        for message in list(self.messages):
            if message["type"] == "snapshot":
                rooms = {room["name"]: room for room in message["rooms"]}
            elif message["type"] == "room":
                rooms[message["room"]["name"]] = message["room"]
            elif message["type"] == "room_closed":
                rooms.pop(message["name"], None)
        return rooms

    def identities(self, room: str) -> set[str]:
        return {participant["identity"] for participant in self.rooms().get(room, {}).get("participants", [])}

    def close(self) -> None:
        if getattr(self, "_client", None) is not None:
            self._loop.call_soon_threadsafe(self._client.close)
        self._thread.join(10)
        self._loop.close()
