"""`make soak`: a few minutes of tokens, webhooks and 1,000 sockets connecting and
leaving, against one server on loopback. Reports memory after each cycle and fails
on any error or any event a socket did not receive.

SOAK_SECONDS (default 180) and SOAK_SOCKETS (default 1000) change its size. SOAK_FORWARD=1
also runs examples.forward_events to a local receiver, and fails unless every webhook was
forwarded exactly once by the end.
"""

from __future__ import annotations

import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from bench.harness import Clients, Server, bench_event, post, signed_webhook

SECONDS = int(os.environ.get("SOAK_SECONDS", "180"))
SOCKETS = int(os.environ.get("SOAK_SOCKETS", "1000"))
FORWARD = os.environ.get("SOAK_FORWARD", "") == "1"
EVENTS_PER_CYCLE = 200
TOKENS_PER_CYCLE = 500


def one_cycle(server: Server, pool: ThreadPoolExecutor) -> tuple[int, int, list[int]]:
    """Sockets join, events and tokens flow, sockets leave: (webhook errors, token errors, received)."""
    clients = Clients(server.url, SOCKETS)
    token_body = json.dumps({"roomName": "soak", "participantName": "alice"}).encode()

    def webhook(_: int) -> int:
        token, body = signed_webhook(bench_event(room="soak"))
        return post(
            server.url + "/livekit/webhook",
            body,
            {"Content-Type": "application/webhook+json", "Authorization": token},
        )

    def token(_: int) -> int:
        return post(server.url + "/token", token_body, {"Content-Type": "application/json"})

    webhooks = pool.map(webhook, range(EVENTS_PER_CYCLE))
    tokens = pool.map(token, range(TOKENS_PER_CYCLE))
    webhook_errors = sum(status != 200 for status in webhooks)
    token_errors = sum(status != 200 for status in tokens)
    time.sleep(1.0)  # let the last frames reach every socket before they leave
    received = clients.result()["received"]
    return webhook_errors, token_errors, received


class Forwarded:
    """The service events are forwarded to: counts each event id it is sent."""

    def __init__(self) -> None:
        import threading
        from collections import Counter
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.ids: Counter[str] = Counter()
        lock = threading.Lock()
        ids = self.ids

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with lock:
                    ids[self.headers.get("X-Event-Id", "")] += 1
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/events"


def main() -> None:
    forwarded = Forwarded() if FORWARD else None
    extension = (
        {"APP_EXTENSIONS": "examples.forward_events", "FORWARD_URL": forwarded.url} if forwarded else {}
    )
    server = Server("ours", {"EVENTS_REPLAY": "0", "LOG_LEVEL": "INFO", **extension})
    server.start()
    memory: list[int] = []
    failures: list[str] = []
    started = time.monotonic()
    cycle = 0
    try:
        with ThreadPoolExecutor(4) as pool:
            while time.monotonic() - started < SECONDS:
                cycle += 1
                webhook_errors, token_errors, received = one_cycle(server, pool)
                memory.append(server.rss_kib())
                missed = sum(EVENTS_PER_CYCLE - count for count in received)
                print(
                    f"cycle {cycle}: {SOCKETS} sockets, {EVENTS_PER_CYCLE} webhooks, "
                    f"{TOKENS_PER_CYCLE} tokens; missed frames {missed}, "
                    f"webhook errors {webhook_errors}, token errors {token_errors}, "
                    f"RSS {memory[-1] / 1024:.1f} MiB",
                    flush=True,
                )
                if missed or webhook_errors or token_errors or len(received) != SOCKETS:
                    failures.append(f"cycle {cycle}: missed {missed}, errors {webhook_errors}+{token_errors}")
        if forwarded is not None:
            expected = cycle * EVENTS_PER_CYCLE
            deadline = time.monotonic() + 60
            while len(forwarded.ids) < expected and time.monotonic() < deadline:
                time.sleep(0.2)
            twice = sum(1 for count in forwarded.ids.values() if count > 1)
            print(f"forwarded {len(forwarded.ids)} of {expected} events, {twice} more than once")
            if len(forwarded.ids) != expected or twice:
                failures.append(f"forwarded {len(forwarded.ids)} of {expected}, {twice} twice")
    finally:
        server.stop()
    log = (server.workdir / "server.log").read_text()
    if "ERROR" in log or "Traceback" in log:
        failures.append("the server logged errors: " + server.workdir.joinpath("server.log").as_posix())
    warm, last = memory[min(1, len(memory) - 1)], memory[-1]
    growth = (last - warm) / warm * 100
    print(f"\nMemory after each cycle, MiB: {' '.join(f'{kib / 1024:.1f}' for kib in memory)}")
    print(f"From the second cycle to the last: {growth:+.1f}% ({'flat' if growth < 5 else 'GROWING'})")
    if growth >= 5:
        failures.append(f"memory grew {growth:.1f}% over the soak")
    print("Zero loss, no errors." if not failures else "FAILED:\n  " + "\n  ".join(failures))
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
