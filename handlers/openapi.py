"""GET /openapi.json: the OpenAPI 3.1 description of every endpoint and of the WebSocket
frames, kept in docs/openapi.json (tests/test_openapi.py holds real answers against it)."""

from __future__ import annotations

from ground.config import PROJECT_DIR
from handlers.support.base import Handler

OPENAPI_FILE = PROJECT_DIR / "docs" / "openapi.json"


class OpenApiHandler(Handler):
    def initialize(self, document: bytes) -> None:
        self.document = document

    def get(self) -> None:
        # Public and the same for everyone: API tools on other origins may fetch it.
        self.set_header("Access-Control-Allow-Origin", "*")
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(self.document)
