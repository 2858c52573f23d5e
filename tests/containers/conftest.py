"""The container tests' fixtures: images built once per session, names removed after each test."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from dev.livekit_server import HOW_TO_GET as HOW_TO_GET_LIVEKIT
from dev.livekit_server import find_binary
from tests.conftest import require
from tests.containers import podman, stand_ins
from tests.containers.podman import PREFIX, report_line
from tests.containers.stand_ins import Images


@pytest.fixture(scope="session")
def images(request: pytest.FixtureRequest) -> Iterator[Images]:
    """The stand-ins and the server image, built once per session (reused across sessions
    while their inputs are unchanged); image size and build times printed."""
    missing = podman.missing_tools()
    require(", ".join(missing), not missing, podman.HOW_TO_GET)
    binary = find_binary()
    require("livekit-server", binary is not None, HOW_TO_GET_LIVEKIT)
    require(
        "node and npm",
        stand_ins.node_and_npm() is not None,
        "install Node.js with npm (`make setup` needs it)",
    )
    assert binary is not None
    log = report_line(request)
    with podman.cache_lock():
        podman.remove_everything_named(PREFIX)  # what a killed run left behind
        try:
            base, node, livekit, redis = stand_ins.stand_ins(binary, log)
            server, built = stand_ins.server_image(base, node, log)
            when = "built earlier with the same inputs; " if built["reused"] else ""
            log(
                f"server image {built['size'] / 1e6:.0f} MB (of which the Debian base "
                f"{built['base_size'] / 1e6:.0f} MB); {when}cold build {built['cold_seconds']} s, "
                f"warm build {built['warm_seconds']} s"
            )
            yield Images(base, node, livekit, redis, server, built)
        finally:
            podman.remove_everything_named(PREFIX)


@pytest.fixture
def names(images: Images) -> Iterator[str]:
    """A name prefix of this test's own; everything named with it is removed after it."""
    prefix = f"{PREFIX}-{secrets.token_hex(4)}"
    yield prefix
    podman.remove_everything_named(prefix)
