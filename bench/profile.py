"""`make profile`: where our server spends its time under load, one endpoint at a time.

Runs server.py under cProfile (pinned to the server's core, as `make bench` does), drives
it with wrk for PROFILE_SECONDS (default 5) on each of /token and webhook ingest, stops it
with SIGTERM (the profile is written on the way out) and prints the functions with the
most time of their own and the most time with what they call. PROFILE_ONLY=token or
PROFILE_ONLY=webhooks profiles one; PROFILE_ENV='WORKERS=2 X=y' passes settings. With
WORKERS > 1 nothing is pinned (the workers share the cores with wrk, as in the unpinned
bench) and the printed profile is every worker's, added up.
"""

from __future__ import annotations

import os
import pstats
import sys
import tempfile
from pathlib import Path

from bench.harness import BENCH_DIR, LOAD_CPU, SERVER_CPU, Server, write_webhook_file, wrk

SECONDS = int(os.environ.get("PROFILE_SECONDS", "5"))
ONLY = os.environ.get("PROFILE_ONLY", "")
TOP = int(os.environ.get("PROFILE_TOP", "25"))


def profile(load: str, workdir: Path) -> None:
    extra = dict(pair.split("=", 1) for pair in os.environ.get("PROFILE_ENV", "").split() if "=" in pair)
    extra["PROFILE_OUT"] = str(workdir / load)
    extra["PYTHONPATH"] = str(BENCH_DIR.parent)  # the server runs in a directory of its own
    command = [sys.executable, "-m", "bench.profiled_server"]
    workers = extra.get("WORKERS", "1") != "1"
    server = Server("ours", extra, command=command, cpu=None if workers else SERVER_CPU)
    server.start()
    try:
        if load == "token":
            url, script, connections, args = server.url + "/token", "token.lua", 32, []
        else:
            requests_file = workdir / "webhooks.tsv"
            write_webhook_file(requests_file, 40_000)
            url, script, connections, args = server.url, "webhooks.lua", 16, [str(requests_file)]
        result = wrk(url, BENCH_DIR / script, SECONDS, connections, *args, cpu=None if workers else LOAD_CPU)
    finally:
        server.stop()
    print(f"== {load}: {result['rps']:,.0f} req/s under cProfile ({result['non2xx']} non-2xx)")
    stats = pstats.Stats(*(str(path) for path in sorted(workdir.glob(f"{load}-*.prof"))))
    stats.sort_stats("tottime").print_stats(TOP)
    stats.sort_stats("cumtime").print_stats(TOP)


def main() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="profile-"))
    for load in ("token", "webhooks"):
        if not ONLY or load == ONLY:
            profile(load, workdir)
    print(f"Profiles kept in {workdir} (open with python -m pstats)")


if __name__ == "__main__":
    main()
