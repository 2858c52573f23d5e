"""A routes() that fails while it builds its list."""

from __future__ import annotations

from extensions import AppContext, Route


def routes(app: AppContext) -> list[Route]:
    return [(app.config.setting("MISSING_PREFIX") + 1, None)]  # type: ignore[operator]
