"""Per-client token buckets for /token: one per IPv4 address, one per IPv6 /64."""

from __future__ import annotations

import math
import socket
import time
from collections import OrderedDict

# Enough addresses for a busy public endpoint; the least recently seen are forgotten first.
MAX_TRACKED_CLIENTS = 100_000


class RateLimiter:
    """`per_minute` requests a minute per client, in bursts of up to `per_minute`."""

    def __init__(self, per_minute: int) -> None:
        self.capacity = float(per_minute)
        self.refill_per_second = per_minute / 60.0
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def retry_after(self, address: str) -> int:
        """0 when the request may go ahead (and is counted), else whole seconds to wait."""
        client = client_of(address)
        now = time.monotonic()
        tokens, last = self._buckets.pop(client, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - last) * self.refill_per_second)
        if tokens >= 1:
            tokens -= 1
            wait = 0
        else:
            wait = math.ceil((1 - tokens) / self.refill_per_second)
        self._buckets[client] = (tokens, now)
        if len(self._buckets) > MAX_TRACKED_CLIENTS:
            self._buckets.popitem(last=False)
        return wait


def client_of(address: str) -> str:
    """The bucket of a client address. An IPv6 client usually holds a whole /64 (one
    subscriber's prefix, with privacy addresses rotating inside it), so the /64 is the
    client; an IPv4-mapped IPv6 address is its IPv4 address."""
    if ":" not in address:
        return address
    try:
        packed = socket.inet_pton(socket.AF_INET6, address.partition("%")[0])  # no zone index
    except OSError:
        return address
    if packed.startswith(_IPV4_MAPPED):
        return socket.inet_ntop(socket.AF_INET, packed[12:])
    return socket.inet_ntop(socket.AF_INET6, packed[:8] + bytes(8)) + "/64"


_IPV4_MAPPED = bytes(10) + b"\xff\xff"
