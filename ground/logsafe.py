"""Client-controlled text in log lines: one line stays one line, whatever a client sends."""

from __future__ import annotations

import re

_NEEDS_QUOTES = re.compile(r'[\s"=\\]')


def printable(text: str) -> str:
    """`text` with every non-printable character backslash-escaped (`\\n`, `\\x1b`, `\\u2028`):
    no newline, carriage return, line or paragraph separator or terminal escape reaches
    the log. Printable text (also non-ASCII letters) is kept as is."""
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else char.encode("unicode_escape").decode() for char in text)


def quoted(value: str) -> str:
    """A value for `key=value` in a log line: as is when plain, else double-quoted with
    backslash escapes, so `room="a identity=b"` cannot pass for two fields."""
    if value and value.isprintable() and not _NEEDS_QUOTES.search(value):
        return value
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{printable(escaped)}"'
