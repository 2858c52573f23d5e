"""server.py with each serving process under cProfile (bench/profile.py runs it): one
profile per worker, `<PROFILE_OUT>-<worker>.prof`, written as the worker stops, so
WORKERS > 1 is profiled too (cProfile on the parent would see only the supervisor)."""

from __future__ import annotations

import cProfile
import os
from typing import Any

import server

_serve = server.serve


def serve(config: Any, extensions: Any, worker: Any = None) -> int:
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        return _serve(config, extensions, worker)
    finally:
        profiler.disable()
        profiler.dump_stats(f"{os.environ['PROFILE_OUT']}-{worker.number if worker else 0}.prof")


server.serve = serve

if __name__ == "__main__":
    server.run()
