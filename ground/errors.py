"""The API error type: what any layer may raise for the client, answered by handlers/
as `{"errorMessage": message}` with `status` and `headers`."""

from __future__ import annotations

from http import HTTPStatus

import tornado.web


class ApiError(tornado.web.HTTPError):
    """An error whose message is meant for the client, sent as `{"errorMessage": ...}`."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(status, reason=HTTPStatus(status).phrase)
        self.message = message
        self.headers = headers or {}
