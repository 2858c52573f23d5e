"""WORKERS=N: pre-forked worker processes sharing the listening sockets, and the one
supervisor that starts them, replaces one that dies, and stops them all on a signal.

The parent binds the port, then forks worker 0 and waits until it serves (so a store
that cannot be opened is one line and one exit code, not N), then the others. It never
runs an event loop: it only waits for children and signals. Whatever a worker knows
that another must (events, bans, limits) goes through the store, never through here.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Callable

from ground.config import Config, usable_cores

log = logging.getLogger("server")

# A worker that ends before it said it serves failed to start: its replacement waits
# RESTART_DELAY_SECONDS, twice that after a second failure in a row, and so on up to
# RESTART_DELAY_MAX_SECONDS. A crash loop (say, a full disk) would otherwise fork as fast
# as it can, and reset the connections that land in its listening set each time.
RESTART_DELAY_SECONDS = 1.0
RESTART_DELAY_MAX_SECONDS = 30.0
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
# Waiting for a worker to say it serves: beyond this, start-up has failed.
READY_SECONDS = 60.0
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>

# `serve(worker, ready)`: runs one worker to its end and returns its exit code; calls
# `ready()` once it accepts connections.
Serve = Callable[[int, Callable[[], None]], int]


def pins_workers(config: Config) -> bool:
    """WORKERS_PINNED: `auto` pins when there is one worker per core the server may use
    (what WORKERS=auto makes): fewer would all land on the first cores, more would share
    cores they could never leave."""
    if config.workers_pinned == "auto":
        return config.workers == usable_cores()
    return config.workers_pinned == "true"


def hold_to_one_core(worker: int) -> None:
    """Keep this worker (and the threads it will start) on one of the cores the server may
    use, worker i on the i-th, round robin, as nginx's `worker_cpu_affinity auto` does: a
    worker's event loop and its store threads hand work to each other many times a
    request, and on one core that costs far less than across two (docs/decisions.md)."""
    if not hasattr(os, "sched_setaffinity"):
        return
    cores = sorted(os.sched_getaffinity(0))
    try:
        os.sched_setaffinity(0, {cores[worker % len(cores)]})
    except OSError as error:  # a cpuset that changed under us: serve unpinned
        log.warning("worker %d could not be held to one core, runs on any: %s", worker, error)


class ListeningSets:
    """The parent's copies of the workers' listening sockets, kept to give replacements
    theirs. With one set per worker (SO_REUSEPORT: the kernel spreads new connections
    over the sets), the set of a worker that died is closed at once and bound again for
    its replacement (`bind`), so connections do not wait in a queue no one accepts from
    (for good, if the replacement cannot start). Without `bind`, every worker has the
    same set, and only stopping closes it."""

    def __init__(
        self, sets: list[list[socket.socket]], bind: Callable[[], list[socket.socket]] | None = None
    ) -> None:
        self.sets = sets
        self.bind = bind

    def gone(self, worker: int) -> None:
        if self.bind is not None:
            for sock in self.sets[worker]:
                sock.close()
            self.sets[worker] = []

    def renew(self, worker: int) -> None:
        """Its set, bound again; OSError if the port cannot be bound now."""
        if self.bind is not None and not self.sets[worker]:
            self.sets[worker] = self.bind()

    def close(self) -> None:
        for sock in {sock for group in self.sets for sock in group}:
            sock.close()


class Supervisor:
    def __init__(
        self,
        count: int,
        serve: Serve,
        about: str = "",
        listening: ListeningSets | None = None,
        ended: Callable[[int], None] = lambda pid: None,
    ) -> None:
        self.count = count
        self.serve = serve
        self.about = about  # said when they all serve
        # Closed when the parent stops, else the kernel would queue connections no one accepts.
        self.listening = listening or ListeningSets([])
        self.ended = ended  # told the pid of each worker that ended while serving
        self.children: dict[int, tuple[int, float]] = {}  # pid -> (worker id, started at)
        self.failed_starts: dict[int, int] = {}  # worker id -> failed starts in a row
        self.readiness: dict[int, int] = {}  # a replacement's pid -> its pipe's read end
        self.stopping = ""

    def run(self) -> int:
        """Serve with `count` workers until a stop signal; the exit code for the process."""
        previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
        for signum in STOP_SIGNALS:
            if previous[signum] != signal.SIG_IGN:
                signal.signal(signum, self._stop)
        try:
            for worker in range(self.count):
                if self.stopping:  # a stop signal during start-up: start no more
                    return self._watch()
                code = self._start(worker, wait_ready=True)
                if self.stopping:  # it ended because it was told to stop, or serves and is told now
                    return self._watch()
                if code is not None:  # it could not start: neither can the others
                    self._stop_all()
                    return code
            log.info(
                "Serving with %d workers (WORKERS%s)", self.count, f"; {self.about}" if self.about else ""
            )
            return self._watch()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _start(self, worker: int, wait_ready: bool) -> int | None:
        """Fork worker `worker`; with `wait_ready`, its exit code if it ends before serving."""
        read_end, write_end = os.pipe()
        parent = os.getpid()
        # Until the worker has its own handlers, a stop signal waits: run here, the parent's
        # handler would make the new worker a supervisor that serves on.
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            pid = os.fork()
        except OSError:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
            raise
        if pid == 0:  # the worker
            os.close(read_end)
            for signum in STOP_SIGNALS:
                if signal.getsignal(signum) != signal.SIG_IGN:
                    signal.signal(signum, signal.SIG_DFL)
            stop_when_parent_dies(parent)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
            code = 1
            try:
                code = self.serve(worker, lambda: _say_ready(write_end))
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else 1
            except BaseException:
                log.exception("worker %d failed", worker)
            finally:
                logging.shutdown()
                os._exit(code)
        os.close(write_end)
        self.children[pid] = (worker, time.monotonic())  # before a stop signal can run
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        if self.stopping:  # a signal whose handler ran before this child was known
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        if not wait_ready:  # a replacement: whether it said so is read when it ends
            os.set_blocking(read_end, False)
            self.readiness[pid] = read_end
            return None
        try:
            readable, _, _ = select.select([read_end], [], [], READY_SECONDS)
            if readable and os.read(read_end, 1) == b"r":
                return None
            # Closed without a word: it ended (or hangs); its own line says why.
            return self._reap(pid)
        finally:
            os.close(read_end)

    def _had_served(self, pid: int) -> bool:
        """Whether a worker that ended had said it serves (and its pipe closed)."""
        read_end = self.readiness.pop(pid, -1)
        if read_end < 0:
            return True  # started with wait_ready: it had, or the start had failed
        try:
            return os.read(read_end, 1) == b"r"
        except BlockingIOError:
            return False
        finally:
            os.close(read_end)

    def _reap(self, pid: int) -> int:
        try:
            _, status = os.waitpid(pid, 0)
        except ChildProcessError:
            return 1
        self.children.pop(pid, None)
        code = os.waitstatus_to_exitcode(status)
        return code if code > 0 else 1  # killed by a signal (negative) or ended as if it served

    def _watch(self) -> int:
        while self.children:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            worker, started = self.children.pop(pid, (-1, 0.0))
            had_served = self._had_served(pid)
            if self.stopping or worker < 0:
                continue
            try:
                self.ended(pid)
            except Exception:  # its figures are not worth the supervisor
                log.exception("after worker %d (pid %d) ended", worker, pid)
            self.listening.gone(worker)
            code = os.waitstatus_to_exitcode(status)
            how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
            failed = self.failed_starts[worker] = 0 if had_served else self.failed_starts.get(worker, 0) + 1
            if failed:
                delay = min(RESTART_DELAY_SECONDS * 2 ** (failed - 1), RESTART_DELAY_MAX_SECONDS)
            else:  # it served, but not for long: not at once either
                delay = RESTART_DELAY_SECONDS if time.monotonic() - started < RESTART_DELAY_SECONDS else 0
            log.error(
                "worker %d (pid %d) %s; starting another%s",
                worker,
                pid,
                how,
                f" in {delay:g} s ({failed} failed start{'s' if failed > 1 else ''} in a row)"
                if failed
                else "",
            )
            self._pause(delay)
            while not self.stopping:
                try:
                    self.listening.renew(worker)
                except OSError as error:
                    log.error("worker %d: the port cannot be bound again now (%s); retrying", worker, error)
                    self._pause(RESTART_DELAY_SECONDS)
                    continue
                self._start(worker, wait_ready=False)
                break
        return 0

    def _pause(self, seconds: float) -> None:
        """Sleep, but not past a stop signal (a sleep resumes after a signal's handler)."""
        deadline = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < deadline:
            time.sleep(min(0.05, max(deadline - time.monotonic(), 0)))

    def _stop(self, signum: int, frame: object) -> None:
        if not self.stopping:
            self.stopping = signal.Signals(signum).name
            log.info("Shutting down %d workers (%s)", len(self.children), self.stopping)
            self.listening.close()
        self._stop_all()

    def _stop_all(self) -> None:
        # Each worker drains as one server does on SIGTERM (server.shutdown).
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        if not self.stopping:  # a failed start: wait for the ones already started
            self.stopping = "start-up failed"
            while self.children:
                self._reap(next(iter(self.children)))


def stop_when_parent_dies(parent: int) -> None:
    """A worker gets SIGTERM (and drains) when the parent dies, even by SIGKILL: else it
    would serve on, unsupervised, holding the port (Linux's PR_SET_PDEATHSIG)."""
    if sys.platform.startswith("linux"):
        import ctypes  # here: a server without workers need not load it (half a MiB)

        with contextlib.suppress(OSError, AttributeError):
            if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
                log.warning(
                    "a worker will not stop with its parent: prctl failed (errno %d)", ctypes.get_errno()
                )
    if os.getppid() != parent:  # it died before that took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _say_ready(write_end: int) -> None:
    with contextlib.suppress(OSError):  # a replacement worker: the parent is not listening
        os.write(write_end, b"r")
    os.close(write_end)
