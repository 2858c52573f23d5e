"""Starting and stopping the real process: every start-up failure is one line saying what
is wrong and what to set (exit 2 for a setting, 1 for anything else), a shutdown keeps its
5 s bound even when another process holds the store's lock, and SIGHUP stops gracefully."""

from __future__ import annotations

import ctypes
import gc
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dev.livekit_server import free_port
from ground.config import PROJECT_DIR
from tests.conftest import post_webhook, webhook_event
from tests.processes import ServerProcess
from tests.test_protection import socket_close_code

PR_CAPBSET_DROP, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 24, 1, 2


def without_root_file_access() -> None:
    """In the child: file permissions apply even to root (the tests may run as root)."""
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def run_server(
    directory: Path, env: dict[str, str], preexec: Callable[[], None] | None = None
) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            [sys.executable, str(PROJECT_DIR / "server.py")],
            cwd=directory,
            env={
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "SERVER_HOST": "127.0.0.1",
                "SERVER_PORT": str(free_port()),
                "EVENTS_DB": str(directory / "events.sqlite3"),
                "LOG_LEVEL": "INFO",
                **env,
            },
            preexec_fn=preexec,
            capture_output=True,
            text=True,
            timeout=15,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the server started (and ran) instead of refusing to")


def corrupt_db(directory: Path) -> dict[str, str]:
    (directory / "events.sqlite3").write_bytes(b"these are not the bytes of a database\n" * 100)
    return {}


def read_only_db(directory: Path) -> dict[str, str]:
    store = directory / "store"
    store.mkdir()
    with sqlite3.connect(store / "events.sqlite3") as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE kept (x)")
    db.close()
    (store / "events.sqlite3").chmod(0o444)
    store.chmod(0o555)
    return {"EVENTS_DB": str(store / "events.sqlite3")}


_held_open: list[socket.socket] = []  # closed when the test ends


def port_in_use(directory: Path) -> dict[str, str]:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    _held_open.append(taken)
    return {"SERVER_PORT": str(taken.getsockname()[1])}


def metrics_port_in_use(directory: Path) -> dict[str, str]:
    return {"METRICS_PORT": port_in_use(directory)["SERVER_PORT"]}


def env_file(content: bytes, mode: int = 0o644) -> Callable[[Path], dict[str, str]]:
    def write(directory: Path) -> dict[str, str]:
        path = directory / ".env"
        path.write_bytes(content)
        path.chmod(mode)
        return {}

    return write


def public_key_as_secret(_: Path) -> dict[str, str]:
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    public = ec.generate_private_key(ec.SECP256R1()).public_key()
    pem = public.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()
    return {"LIVEKIT_API_KEY": "key", "LIVEKIT_API_SECRET": pem}


# (name, setup returning extra env, env, exit code, what the one line must say)
FAILURES: list[tuple[str, Callable[[Path], dict[str, str]], dict[str, str], int, list[str]]] = [
    ("corrupt DB", corrupt_db, {}, 1, ["file is not a database", "EVENTS_DB"]),
    (
        "unwritable DB",
        lambda _: {"EVENTS_DB": "/proc/events.sqlite3"},
        {},
        1,
        ["unable to open database file", "EVENTS_DB"],
    ),
    ("read-only DB", read_only_db, {}, 1, ["readonly database", "EVENTS_DB"]),
    ("TOKEN_TTL overflow", lambda _: {}, {"TOKEN_TTL": "99999999999d"}, 2, ["TOKEN_TTL", "6h"]),
    ("Redis URL without a scheme", lambda _: {}, {"EVENTS_REDIS_URL": "localhost:6379"}, 2, ["redis://"]),
    ("port in use", port_in_use, {}, 1, ["Address already in use", "SERVER_PORT"]),
    ("metrics port in use", metrics_port_in_use, {}, 1, ["Address already in use", "METRICS_PORT"]),
    ("non-UTF-8 .env", env_file(b"LIVEKIT_URL=ws://caf\xe9:7880\n"), {}, 2, [".env is not UTF-8", "UTF-8"]),
    ("unreadable .env", env_file(b"SERVER_PORT=7000\n", 0o000), {}, 2, ["cannot read", ".env"]),
    ("unknown APP_ENV", lambda _: {}, {"APP_ENV": "prod"}, 2, ["APP_ENV", "production", "'prod'"]),
    ("LIVEKIT_URL not a URL", lambda _: {}, {"LIVEKIT_URL": "ws://[::1"}, 2, ["LIVEKIT_URL", "ws://[::1"]),
    ("a public key as the secret", public_key_as_secret, {}, 2, ["LIVEKIT_API_SECRET", "public key"]),
    (
        "ROOM_NAME_PATTERN overflow",
        lambda _: {},
        {"ROOM_NAME_PATTERN": "a{99999999999}"},
        2,
        ["ROOM_NAME_PATTERN"],
    ),
]


def run_failure(
    directory: Path, failure: tuple[Any, ...], **more_env: str
) -> subprocess.CompletedProcess[str]:
    """Start the server into one of FAILURES; whatever its setup holds open (a taken
    port) is closed before this returns, whoever the caller (test_workers too)."""
    _, setup, env, _, _ = failure
    try:
        return run_server(directory, {**more_env, **env, **setup(directory)}, without_root_file_access)
    finally:
        while _held_open:
            _held_open.pop().close()


@pytest.mark.parametrize("failure", FAILURES, ids=[failure[0] for failure in FAILURES])
def test_a_start_up_failure_is_one_line(tmp_path: Path, failure: tuple[Any, ...]) -> None:
    _, _, _, exit_code, says = failure
    result = run_failure(tmp_path, failure)
    output = (result.stdout + result.stderr).strip()
    assert "Traceback" not in output
    assert len(output.splitlines()) == 1, output
    for part in says:
        assert part in output
    assert result.returncode == exit_code, output


def count_events(path: Path) -> int:
    with sqlite3.connect(path) as db:
        count = db.execute("SELECT count(*) FROM events").fetchone()[0]
    db.close()
    return int(count)


@pytest.mark.parametrize("released_after", [None, 1.0], ids=["lock held throughout", "lock released"])
def test_sigterm_while_another_process_holds_the_store_lock(
    server_process: Any, tmp_path: Path, released_after: float | None
) -> None:
    server = server_process()
    store = tmp_path / "events.sqlite3"
    holder = sqlite3.connect(store, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")  # a backup or the sqlite3 shell, writing
    answers: dict[str, int | str] = {}

    def send(event: dict[str, Any]) -> None:
        try:
            answers[event["id"]] = post_webhook(server.url, event)
        except OSError:
            answers[event["id"]] = "cut"  # closed while shutting down: not acknowledged

    senders = [threading.Thread(target=send, args=(webhook_event(),)) for _ in range(6)]
    senders[0].start()
    time.sleep(0.3)  # the first write waits for the lock; the others queue behind it
    for sender in senders[1:]:
        sender.start()
    time.sleep(0.3)
    if released_after is not None:
        threading.Timer(released_after, holder.execute, ("ROLLBACK",)).start()
    started = time.monotonic()
    exit_code = server.stop()
    stopped_in = time.monotonic() - started
    for sender in senders:
        sender.join(15)
    if released_after is None:
        holder.execute("ROLLBACK")
    holder.close()
    assert exit_code == 0
    assert stopped_in < 5, f"stopped in {stopped_in:.1f} s"  # the README's bound
    acknowledged = [event_id for event_id, answer in answers.items() if answer == 200]
    stored = count_events(store)
    assert stored == len(acknowledged)  # acknowledged: stored; anything else: not acknowledged
    if released_after is None:
        assert stored == 0 and set(answers.values()) <= {503, "cut"}, answers
    else:
        assert stored == 6, answers


def test_sighup_stops_gracefully(server_process: Any) -> None:
    server = server_process()
    ready, closed = threading.Event(), {}
    watcher = threading.Thread(
        target=socket_close_code, args=(server.url.replace("http", "ws") + "/events", ready, closed)
    )
    watcher.start()
    assert ready.wait(10)
    assert server.stop(signal.SIGHUP) == 0  # before: killed by the signal (-1)
    watcher.join(10)
    assert closed == {"code": 1001, "reason": "Server shutting down"}
    log = server.log_text()
    assert "Shutting down (SIGHUP)" in log and "Stopped" in log


def test_sighup_is_left_ignored_under_nohup(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path)
    server.preexec_fn = lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN)  # what nohup does
    server.start()
    try:
        assert server.process is not None
        server.process.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        assert post_webhook(server.url, webhook_event()) == 200
    finally:
        assert server.stop() == 0


def refused_in_process(config: Any, says: str) -> list[str]:
    """Run main() as a worker does, which must refuse with StartupError; the
    ResourceWarnings (unclosed sockets and the like) that refusal left behind."""
    from server import StartupError, main
    from tests.conftest import run_async

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        with pytest.raises(StartupError, match=says):
            run_async(main(config))
        gc.collect()
    return [str(warning.message) for warning in caught if issubclass(warning.category, ResourceWarning)]


@pytest.mark.parametrize("port", ["SERVER_PORT", "METRICS_PORT"])
def test_a_taken_port_stops_main_with_everything_closed(tmp_path: Path, port: str) -> None:
    """The refusal leaves SERVER_PORT free and nothing open behind it (no socket, and the
    store not even opened)."""
    from ground.config import Config

    taken = socket.create_server(("127.0.0.1", 0))
    server_port = free_port() if port == "METRICS_PORT" else taken.getsockname()[1]
    config = Config(
        events_db=str(tmp_path / "events.sqlite3"),
        server_host="127.0.0.1",
        server_port=server_port,
        metrics_port=taken.getsockname()[1] if port == "METRICS_PORT" else 0,
    )
    try:
        left_open = refused_in_process(config, port)
    finally:
        taken.close()
    assert left_open == []
    # Held by nothing (the exception's frames included): the port can be listened on again.
    socket.create_server(("127.0.0.1", server_port)).close()
    assert not (tmp_path / "events.sqlite3").exists()  # refused before the store was opened
