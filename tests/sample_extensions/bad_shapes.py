"""Names that look like extension names but cannot be used."""

from __future__ import annotations

from typing import Any


def authorize(request: Any) -> Any:
    return None
