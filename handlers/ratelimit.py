"""Per-client-IP token buckets for /token."""

from __future__ import annotations

import math
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

    def retry_after(self, client: str) -> int:
        """0 when the request may go ahead (and is counted), else whole seconds to wait."""
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
