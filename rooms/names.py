"""How identities and room names compare: what a person sees, not the code points.

`nfc` is the spelling kept (tokens, LiveKit, logs): Unicode NFC, so `josé` typed with a
combining accent is the same name as with the precomposed letter. `canonical` is the
key bans and IDENTITY_CONFLICT compare: NFKC (compatibility forms such as fullwidth
letters (U+FF42...) or ligatures (U+FB01) fold to plain letters) with every default-ignorable code
point removed (zero-width joiner and non-joiner, soft hyphen, variation selectors,
bidi marks...), which render as nothing. It does not fold letter case (`Bob` and `bob`
look different) nor cross-script homoglyphs (a Cyrillic o, U+043E, in bob): see docs/api.md, Bans.
"""

from __future__ import annotations

import unicodedata

import regex

_INVISIBLE = regex.compile(r"\p{Default_Ignorable_Code_Point}+")


def nfc(name: str) -> str:
    return name if name.isascii() else unicodedata.normalize("NFC", name)


def canonical(name: str) -> str:
    if name.isascii() and name.isprintable():
        return name
    # Removed before and after NFKC: it can map a character to an ignorable one (U+FFA0).
    return _INVISIBLE.sub("", unicodedata.normalize("NFKC", _INVISIBLE.sub("", name)))
