"""`make profile`: where our server spends its time under load, one endpoint at a time.

Runs server.py under cProfile (pinned to the server's core, as `make bench` does), drives
it with wrk for PROFILE_SECONDS (default 5) on each of /token and webhook ingest, stops it
with SIGTERM (the profile is written on the way out) and prints the functions with the
most time of their own and the most time with what they call. PROFILE_ONLY=token or
PROFILE_ONLY=webhooks profiles one; PROFILE_ENV='WORKERS=2 X=y' passes settings. With
WORKERS > 1 the harness pins nothing (the workers share the cores with wrk, as in the
unpinned bench; each worker holds itself to a core when WORKERS_PINNED says so) and the
printed profile is every worker's, added up.
"""

from __future__ import annotations

import collections
import os
import pstats
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.harness import BENCH_DIR, LOAD_CPU, SERVER_CPU, Server, write_webhook_file, wrk

SECONDS = int(os.environ.get("PROFILE_SECONDS", "5"))
ONLY = os.environ.get("PROFILE_ONLY", "")
TOP = int(os.environ.get("PROFILE_TOP", "25"))
PY_SPY = os.environ.get("PROFILE_TOOL", "cprofile") == "py-spy"


def profile(load: str, workdir: Path) -> None:
    extra = dict(pair.split("=", 1) for pair in os.environ.get("PROFILE_ENV", "").split() if "=" in pair)
    extra["PROFILE_OUT"] = str(workdir / load)
    extra["PYTHONPATH"] = str(BENCH_DIR.parent)  # the server runs in a directory of its own
    command = None if PY_SPY else [sys.executable, "-m", "bench.profiled_server"]
    workers = extra.get("WORKERS", "1") != "1"
    server = Server("ours", extra, command=command, cpu=None if workers else SERVER_CPU)
    server.start()
    samples = workdir / f"{load}.samples"
    try:
        if load == "token":
            url, script, connections, args = server.url + "/token", "token.lua", 32, []
        else:
            requests_file = workdir / "webhooks.tsv"
            write_webhook_file(requests_file, 40_000)
            url, script, connections, args = server.url, "webhooks.lua", 16, [str(requests_file)]
        load_cpu = None if workers else LOAD_CPU
        if PY_SPY:
            assert server.process is not None
            result = sampled(
                server.process.pid,
                samples,
                lambda: wrk(url, BENCH_DIR / script, SECONDS, connections, *args, cpu=load_cpu),
            )
        else:
            result = wrk(url, BENCH_DIR / script, SECONDS, connections, *args, cpu=load_cpu)
    finally:
        server.stop()
    tool = "py-spy" if PY_SPY else "cProfile"
    print(f"== {load}: {result['rps']:,.0f} req/s under {tool} ({result['non2xx']} non-2xx)")
    if PY_SPY:
        print_shares(samples)
        return
    stats = pstats.Stats(*(str(path) for path in sorted(workdir.glob(f"{load}-*.prof"))))
    stats.sort_stats("tottime").print_stats(TOP)
    stats.sort_stats("cumtime").print_stats(TOP)


def sampled(pid: int, samples: Path, load: Any) -> dict[str, Any]:
    """Runs `load` while py-spy samples the server (and its workers) for most of it."""
    result: dict[str, Any] = {}
    loading = threading.Thread(target=lambda: result.update(load()))
    loading.start()
    time.sleep(1)  # past the connections' start
    py_spy = [
        str(Path(sys.executable).parent / "py-spy"),
        "record",
        "--gil",
        "--subprocesses",
        "--nonblocking",
    ]
    subprocess.run(
        [
            *py_spy,
            "--format",
            "raw",
            "--rate",
            "250",
            "--duration",
            str(max(1, SECONDS - 2)),
            "--output",
            str(samples),
            "--pid",
            str(pid),
        ],
        check=True,
        capture_output=True,
    )
    loading.join()
    return result


def print_shares(samples: Path) -> None:
    own: collections.Counter[str] = collections.Counter()
    within: collections.Counter[str] = collections.Counter()
    total = 0
    for line in samples.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [frame for frame in stack.split(";") if not frame.startswith("process ")]
        if not frames:
            continue
        total += int(count)
        own[frames[-1]] += int(count)
        for frame in set(frames):
            within[frame] += int(count)
    for title, counter in (("own", own), ("with what it calls", within)):
        print(f"-- share of {total} samples holding the interpreter, {title}")
        for frame, count in counter.most_common(TOP):
            print(f"{100 * count / total:5.1f}%  {frame}")


def main() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="profile-"))
    for load in ("token", "webhooks"):
        if not ONLY or load == ONLY:
            profile(load, workdir)
    print(f"Profiles kept in {workdir} (open with python -m pstats)")


if __name__ == "__main__":
    main()
