"""Per-client token buckets for /token: one per IPv4 address, one per IPv6 /64.

One process keeps them in a dict. WORKERS processes share one table in a memory-mapped
file (in the directory the parent makes for them), so that a client has the same
allowance whichever worker it lands on: a few microseconds a request, where an SQLite
table on the same machine blocked a worker's loop for up to 0.4 s under a lock
(docs/decisions.md).
"""

from __future__ import annotations

import fcntl
import hashlib
import math
import mmap
import os
import socket
import struct
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
        tokens, wait = self._take(tokens, now - last)
        self._buckets[client] = (tokens, now)
        if len(self._buckets) > MAX_TRACKED_CLIENTS:
            self._buckets.popitem(last=False)
        return wait

    def _take(self, tokens: float, elapsed: float) -> tuple[float, int]:
        """The bucket refilled for `elapsed` seconds, less one if it holds one; and the
        whole seconds to wait when it does not."""
        tokens = min(self.capacity, tokens + elapsed * self.refill_per_second)
        if tokens >= 1:
            return tokens - 1, 0
        return tokens, math.ceil((1 - tokens) / self.refill_per_second)


# The shared table: SLOTS buckets of (key, tokens, last), a key being 64 bits of a hash
# of the client (never 0: 0 marks a free slot). A client's bucket is in one of PROBES
# slots from its hash; when all are taken, the least recently used of them is reused.
SLOTS = 1 << 17  # 3 MiB: more clients than MAX_TRACKED_CLIENTS
PROBES = 8
_SLOT = struct.Struct("=Qdd")
TABLE_FILE = "token-buckets"


class SharedRateLimiter(RateLimiter):
    """The same buckets, in a file every worker maps (`directory`: the workers' shared
    directory, on a memory file system where there is one). A write lock on the file
    (fcntl, which the kernel lets go of when a process dies) makes each take atomic;
    time is the machine's monotonic clock, the same in every process."""

    def __init__(self, per_minute: int, directory: str) -> None:
        super().__init__(per_minute)
        self._fd = os.open(os.path.join(directory, TABLE_FILE), os.O_RDWR | os.O_CREAT, 0o600)
        size = SLOTS * _SLOT.size
        if os.fstat(self._fd).st_size < size:  # the first worker makes it; zeros are free slots
            os.ftruncate(self._fd, size)
        self._table = mmap.mmap(self._fd, size)
        # Past this, a bucket is full again: as good as a free slot.
        self._full_after = self.capacity / self.refill_per_second

    def retry_after(self, address: str) -> int:
        key = _key(client_of(address))
        first = key & (SLOTS - 1)
        table = self._table
        fcntl.lockf(self._fd, fcntl.LOCK_EX)
        try:
            now = time.monotonic()  # under the lock: no take sees a `last` after its `now`
            # The client's slot, else one to take: a free one, a full-again one, or the least recent.
            chosen, lowest = -1, math.inf
            for probe in range(PROBES):
                offset = ((first + probe) & (SLOTS - 1)) * _SLOT.size
                held, tokens, last = _SLOT.unpack_from(table, offset)
                if held == key:
                    chosen = offset
                    break
                score = -2.0 if held == 0 else -1.0 if now - last >= self._full_after else last
                if score < lowest:
                    chosen, lowest = offset, score
            else:
                tokens, last = self.capacity, now  # a client not in the table: a full bucket
            tokens, wait = self._take(tokens, now - last)
            _SLOT.pack_into(table, chosen, key, tokens, now)
        finally:
            fcntl.lockf(self._fd, fcntl.LOCK_UN)
        return wait


def _key(client: str) -> int:
    return int.from_bytes(hashlib.blake2b(client.encode(), digest_size=8).digest()) or 1


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
