"""`make instructions`: the instructions each request costs, ours against bare Tornado, for
/token and webhook ingest, counted by valgrind's callgrind.

Time on a shared machine swings by a third from one second to the next; an instruction
count does not (two runs agree within 1%), so this shows what a change to the hot path
costs where `make bench` cannot see it. It is not time: it leaves out the kernel's work
(system calls, the event store's fsync), waits on memory, and the threads' hand-offs,
which `make bench` has. Each server runs under callgrind with counting off; after
WARMUP requests counting starts, INSTRUCTIONS_REQUESTS (default 300) requests are sent
(webhooks from 16 connections, so that commits group as they do under load; tokens from
one) and the counts are dumped. INSTRUCTIONS_ONLY=token or webhooks runs one.
"""

from __future__ import annotations

import glob
import http.client
import itertools
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from bench.harness import Server, write_webhook_file

REQUESTS = int(os.environ.get("INSTRUCTIONS_REQUESTS", "300"))
ONLY = os.environ.get("INSTRUCTIONS_ONLY", "")
WARMUP = 200
TOKEN_BODY = b'{"roomName":"bench-room","participantName":"alice"}'

Request = tuple[str, bytes, dict[str, str]]


def token_requests() -> Iterator[Request]:
    return itertools.repeat(("/token", TOKEN_BODY, {"Content-Type": "application/json"}))


def webhook_requests(workdir: Path) -> Iterator[Request]:
    signed = workdir / "webhooks.tsv"
    write_webhook_file(signed, WARMUP + REQUESTS)
    for line in signed.read_text().splitlines():
        authorization, body = line.split("\t", 1)
        headers = {"Content-Type": "application/webhook+json", "Authorization": authorization}
        yield "/livekit/webhook", body.encode(), headers


def send(port: int, requests: Iterator[Request], lock: threading.Lock, count: int) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        for _ in range(count):
            with lock:
                path, body, headers = next(requests)
            connection.request("POST", path, body, headers)
            answer = connection.getresponse()
            answer.read()
            if answer.status not in (200, 201):
                raise RuntimeError(f"{path} answered {answer.status}")
    finally:
        connection.close()


def send_all(port: int, requests: Iterator[Request], count: int, connections: int) -> None:
    lock = threading.Lock()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            send(port, requests, lock, count // connections)
        except BaseException as error:  # reported below, after every thread stopped
            errors.append(error)

    threads = [threading.Thread(target=run) for _ in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def count(kind: str, load: str, workdir: Path) -> int:
    """Instructions per request of one server, all its threads together."""
    out = workdir / f"{kind}-{load}.callgrind"
    command = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"]
    server = Server(kind, command=[*command, *Server.COMMANDS[kind]], cpu=None, startup_seconds=300)
    server.start()
    try:
        assert server.process is not None
        requests = token_requests() if load == "token" else webhook_requests(workdir)
        connections = 1 if load == "token" else 16
        send_all(server.port, requests, WARMUP, connections)
        pid = str(server.process.pid)
        subprocess.run(["callgrind_control", "-i", "on", pid], check=True, capture_output=True)
        send_all(server.port, requests, REQUESTS, connections)
        subprocess.run(["callgrind_control", "-d", pid], check=True, capture_output=True)
    finally:
        server.stop()
    dumped = [
        int(line.split()[1])
        for name in glob.glob(f"{out}.*")  # the dump; `out` itself is what came after it
        for line in Path(name).read_text().splitlines()
        if line.startswith("summary:")
    ]
    return sum(dumped) // (REQUESTS // connections * connections)


def main() -> None:
    if not shutil.which("valgrind") or not shutil.which("callgrind_control"):
        sys.exit("make instructions needs valgrind (Debian: apt-get install valgrind)")
    workdir = Path(tempfile.mkdtemp(prefix="bench-instructions-"))
    try:
        for load in ("token", "webhooks"):
            if ONLY and load != ONLY:
                continue
            ours, bare = count("ours", load, workdir), count("bare", load, workdir)
            print(f"{load:9s} ours {ours / 1000:5.0f}k instructions a request,", end=" ")
            print(f"bare Tornado {bare / 1000:4.0f}k: {bare / ours:.2f}x", flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
