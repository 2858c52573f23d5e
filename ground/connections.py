"""Accepting connections: at most MAX_CONNECTIONS open at once, a pause rather than a
spin when the process runs out of file descriptors, and IDLE_TIMEOUT for connections
waiting for a request's headers.

At the cap, a newcomer is let in by closing the connection that has waited longest for
a request's headers (a keep-alive connection between requests, or one still sending its
first headers): one slow or idle client cannot hold every slot until IDLE_TIMEOUT.
Connections in a request or a WebSocket are never closed for it; when every slot is such
a one, newcomers wait in the kernel's queue.

IDLE_TIMEOUT is kept here with one timer for every connection (the ones waiting for
headers, in the order they started waiting) instead of Tornado's header_timeout, which
wraps every request's header read in a timer and a future of its own: that cost /token
a few microseconds a request (measured with make bench)."""

from __future__ import annotations

import errno
import logging
import os
import resource
import socket
import time
from asyncio import Future
from collections import OrderedDict
from collections.abc import Awaitable
from typing import Any, cast

from tornado.httpserver import HTTPServer
from tornado.ioloop import IOLoop
from tornado.iostream import IOStream

log = logging.getLogger("server")

# accept() failed for want of descriptors or memory: the connection stays queued in the
# kernel, and the socket is not watched for this long (watching it would spin).
PAUSE_SECONDS = 1.0
WARN_EVERY_SECONDS = 60.0
# Errors of the connection being accepted, not of the server: take the next one (accept(2)).
_PEER_ERRORS = {
    errno.ECONNABORTED,
    errno.EPROTO,
    errno.ENETDOWN,
    errno.ENETUNREACH,
    errno.EHOSTDOWN,
    errno.EHOSTUNREACH,
    errno.ENOPROTOOPT,
    errno.ENONET,
    errno.EOPNOTSUPP,
}
# Taken at most this many at a time, as Tornado does, so the loop serves others meanwhile.
ACCEPT_BATCH = 128
LISTEN_BACKLOG = 128  # Tornado's
# A deadline this close counts as reached: uvloop may run a timer up to a millisecond
# early, and one set again for the rest would run at once, again and again.
TIMER_SLACK_SECONDS = 0.01


def bind_listening(port: int, host: str, reuse_port: bool = False) -> list[socket.socket]:
    """Non-blocking listening sockets on every address of `host` ("": all interfaces).
    Tornado's bind_sockets does the same but leaves open the socket it failed to bind
    and those bound before it: a start-up refused for a taken port must close them.
    `reuse_port`: one of several sets on the same port (WORKERS: one set a worker), among
    which the kernel spreads new connections."""
    infos = socket.getaddrinfo(host or None, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
    bound: list[socket.socket] = []
    try:
        for family, address in sorted({(info[0], info[4]) for info in infos}, key=lambda pair: pair[0]):
            try:  # IPv6 sockets are IPv6 only (create_server's default), beside IPv4's
                sock = socket.create_server(
                    address, family=family, backlog=LISTEN_BACKLOG, reuse_port=reuse_port
                )
            except OSError as error:
                if error.errno == errno.EAFNOSUPPORT:  # no IPv6 in this kernel
                    continue
                if error.errno:  # without create_server's "(while attempting to bind...)"
                    raise OSError(error.errno, os.strerror(error.errno)) from None
                raise
            bound.append(sock)
            sock.setblocking(False)
    except BaseException:
        for sock in bound:
            sock.close()
        raise
    return bound


def open_file_limit() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def default_max_connections(file_limit: int) -> int:
    """Below the open-file limit, with room left for the store, logs and files being served."""
    return max(1, file_limit - max(64, file_limit // 10))


class Listener:
    """Accepts on the listening sockets and hands each connection to the HTTP server,
    counting them until their descriptor is closed (WebSockets included)."""

    def __init__(
        self, server: HTTPServer, sockets: list[socket.socket], max_connections: int, idle_timeout: float
    ) -> None:
        self.server = server
        self.sockets = sockets
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        server.conn_params.header_timeout = None  # ours: _close_idle
        self.open_connections = 0
        self._io_loop = IOLoop.current()
        self._watching = False
        self._resting = False  # after an accept() failure, until the timer ends it
        self._stopped = False
        self._warned_at: dict[str, float] = {}
        # Streams that started waiting for a request's headers, with when, the earliest
        # first. One that has its headers since is dropped when next looked at.
        self._idle: OrderedDict[_CountedStream, float] = OrderedDict()
        self._idle_timer: object | None = None

    def start(self) -> None:
        self._watch(True)

    def stop(self) -> None:
        """Stop accepting and close the listening sockets; open connections stay."""
        self._stopped = True
        self._watch(False)
        for sock in self.sockets:
            sock.close()

    def _watch(self, on: bool) -> None:
        if on == self._watching or (on and self._stopped):
            return
        for sock in self.sockets:
            if on:
                self._io_loop.add_handler(sock, self._accept, IOLoop.READ)
            else:
                self._io_loop.remove_handler(sock)
        self._watching = on

    def _accept(self, sock: socket.socket, events: int) -> None:
        for _ in range(ACCEPT_BATCH):
            if self.open_connections >= self.max_connections and self._shed_one():
                self._warn(
                    "shed",
                    f"{self.open_connections} connections open (MAX_CONNECTIONS): closing the one "
                    "idle the longest for each new one",
                )
            if self.open_connections >= self.max_connections:
                # Newcomers wait in the kernel's queue until a connection closes.
                self._watch(False)
                self._warn(
                    "full",
                    f"{self.open_connections} connections open (MAX_CONNECTIONS): "
                    "new ones wait until some close",
                )
                return
            try:
                connection, address = sock.accept()
            except BlockingIOError:
                return
            except OSError as error:
                if error.errno in _PEER_ERRORS:
                    continue
                self._rest(error)
                return
            self.open_connections += 1
            stream = _CountedStream(connection, self)
            try:
                self.server.handle_stream(stream, address)
            except Exception:
                log.exception("Error in connection callback")
                stream.close()

    def _rest(self, error: OSError) -> None:
        self._watch(False)
        self._resting = True
        self._io_loop.call_later(PAUSE_SECONDS, self._wake)
        self._warn(
            "accept",
            f"Cannot accept connections ({error.strerror}) with {self.open_connections} open: "
            f"pausing {PAUSE_SECONDS:.0f} s. Raise the open-file limit (ulimit -n) or lower "
            "MAX_CONNECTIONS",
        )

    def _wake(self) -> None:
        self._resting = False
        if self.open_connections < self.max_connections:
            self._watch(True)

    def _shed_one(self) -> bool:
        """Close the connection waiting longest for headers, if there is one."""
        while self._idle:
            oldest, _ = self._idle.popitem(last=False)
            if oldest.waiting_for_headers():
                oldest.close()  # its descriptor is closed now: one slot free
                return True
        return False

    def started_waiting(self, stream: _CountedStream) -> None:
        idle = self._idle
        idle.pop(stream, None)  # to the end: the order is the order they started waiting
        idle[stream] = time.monotonic()  # (the loop's time() is the wall clock's: it may jump)
        if self._idle_timer is None:
            self._idle_timer = self._io_loop.call_later(self.idle_timeout, self._close_idle)

    def _close_idle(self) -> None:
        """Close what waited IDLE_TIMEOUT for its headers; sleep until the next deadline."""
        self._idle_timer = None
        idle, now = self._idle, time.monotonic()
        while idle:
            stream, since = next(iter(idle.items()))
            if stream.waiting_for_headers():
                left = since + self.idle_timeout - now
                if left > TIMER_SLACK_SECONDS:
                    self._idle_timer = self._io_loop.call_later(left, self._close_idle)
                    return
                stream.close()  # Tornado ends the connection: its header read fails
            idle.pop(stream, None)

    def connection_closed(self, stream: _CountedStream) -> None:
        self._idle.pop(stream, None)
        self.open_connections -= 1
        if not self._resting and self.open_connections < self.max_connections:
            self._watch(True)

    def _warn(self, kind: str, message: str) -> None:
        # Once a minute at most: under a flood a line per connection would fill the disk.
        now = self._io_loop.time()
        if now - self._warned_at.get(kind, -WARN_EVERY_SECONDS) >= WARN_EVERY_SECONDS:
            self._warned_at[kind] = now
            log.warning("%s", message)


class _CountedStream(IOStream):
    def __init__(self, connection: socket.socket, listener: Listener, **kwargs: Any) -> None:
        super().__init__(connection, **kwargs)
        self._listener = listener

    _headers: Future[bytes] | None = None

    def read_until_regex(self, regex: bytes, max_bytes: int | None = None) -> Awaitable[bytes]:
        """Tornado reads a request's headers with this (bodies and WebSocket frames not)."""
        future = cast("Future[bytes]", super().read_until_regex(regex, max_bytes))
        if not future.done():
            self._headers = future
            self._listener.started_waiting(self)
        return future

    def waiting_for_headers(self) -> bool:
        return self._headers is not None and not self._headers.done() and not self.closed()

    def close_fd(self) -> None:
        try:
            super().close_fd()
        finally:
            self._listener.connection_closed(self)
