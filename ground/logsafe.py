"""Client-controlled text in log lines: one line stays one line, whatever a client sends."""

from __future__ import annotations

import json
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


# Credentials in text a client or a library put in a log line: `Bearer <anything>`,
# `Authorization: <anything>` and query parameters named like secrets. A backslash is
# taken with the character after it: half of a JSON escape (`\"`) left behind would end
# the JSON line's string early.
_CREDENTIALS = re.compile(
    r"(?P<keep>\b(?:Bearer|Basic)\s+|\bAuthorization\s*[:=]\s*['\"]?"
    r"|[?&;](?:[\w.-]*(?:secret|token|password|passwd|api_?key|access_key|auth)[\w.-]*)=)"
    r"(?!\[redacted\])(?:\\.|[^\s'\"\\&;,)}\]])+",
    re.IGNORECASE,
)
REDACTED = "[redacted]"


class Redactor:
    """Takes every configured secret and anything that looks like a credential out of a
    formatted log line (Tornado's own lines too: its "Malformed HTTP message ... Invalid
    header value" quotes the header). Secrets are matched as written, as repr() and as
    JSON escape them (both LOG_FORMAT values)."""

    def __init__(self, secrets: list[str]) -> None:
        forms: set[str] = set()
        for secret in secrets:
            if len(secret) >= 4:  # shorter ones would take out ordinary words
                forms |= {
                    secret,
                    repr(secret)[1:-1],
                    json.dumps(secret)[1:-1],
                    json.dumps(secret, ensure_ascii=False)[1:-1],
                }
        self._secrets = (
            re.compile("|".join(map(re.escape, sorted(forms, key=len, reverse=True)))) if forms else None
        )

    def __call__(self, line: str) -> str:
        if self._secrets is not None:
            line = self._secrets.sub(REDACTED, line)
        return _CREDENTIALS.sub(lambda match: match.group("keep") + REDACTED, line)
