"""`make profile`: where our server spends its time under load, one endpoint at a time.

Runs server.py under cProfile (pinned to the server's core, as `make bench` does), drives
it with wrk for PROFILE_SECONDS (default 5) on each of /token and webhook ingest, stops it
with SIGTERM (the profile is written on the way out) and prints the functions with the
most time of their own and the most time with what they call. PROFILE_ONLY=token or
PROFILE_ONLY=webhooks profiles one; PROFILE_ENV='WORKERS=1 X=y' passes settings.
"""

from __future__ import annotations

import os
import pstats
import sys
import tempfile
from pathlib import Path

from bench.harness import BENCH_DIR, Server, write_webhook_file, wrk

SECONDS = int(os.environ.get("PROFILE_SECONDS", "5"))
ONLY = os.environ.get("PROFILE_ONLY", "")
TOP = int(os.environ.get("PROFILE_TOP", "25"))


def profile(load: str, workdir: Path) -> None:
    stats_file = workdir / f"{load}.prof"
    extra = dict(pair.split("=", 1) for pair in os.environ.get("PROFILE_ENV", "").split() if "=" in pair)
    command = [sys.executable, "-m", "cProfile", "-o", str(stats_file), str(BENCH_DIR.parent / "server.py")]
    server = Server("ours", extra, command=command)
    server.start()
    try:
        if load == "token":
            url, script, connections, args = server.url + "/token", "token.lua", 32, []
        else:
            requests_file = workdir / "webhooks.tsv"
            write_webhook_file(requests_file, 40_000)
            url, script, connections, args = server.url, "webhooks.lua", 16, [str(requests_file)]
        result = wrk(url, BENCH_DIR / script, SECONDS, connections, *args)
    finally:
        server.stop()
    print(f"== {load}: {result['rps']:,.0f} req/s under cProfile ({result['non2xx']} non-2xx)")
    stats = pstats.Stats(str(stats_file))
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
