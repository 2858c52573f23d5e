"""The in-process parts of `make bench` still run against today's code (the bench itself
is not part of `make test`: it takes minutes and wants a quiet machine)."""

from __future__ import annotations

import pytest

from bench.run import metrics_work_microseconds


@pytest.mark.parametrize("load", ["/token", "webhook"])
def test_the_metrics_cost_measure_runs(load: str) -> None:
    microseconds = metrics_work_microseconds(load)
    assert 0 < microseconds < 1000
