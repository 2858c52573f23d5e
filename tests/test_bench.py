"""The in-process parts of `make bench` still run against today's code (the bench itself
is not part of `make test`: it takes minutes and wants a quiet machine)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("load", ["/token", "webhook"])
def test_the_metrics_cost_measure_runs(load: str) -> None:
    # In a process of its own, as `make bench` runs it: it builds an application outside
    # any running loop, which would leave this process an event loop to collect.
    measure = f"from bench.run import metrics_work_microseconds as m; print(m({load!r}))"
    done = subprocess.run(
        [sys.executable, "-c", measure], cwd=PROJECT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert 0 < float(done.stdout.strip().splitlines()[-1]) < 1000
