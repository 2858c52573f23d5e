"""Fails while it is imported."""

from __future__ import annotations

SETTING = undefined_name  # type: ignore[name-defined]  # noqa: F821
