"""Request values the routers share, bounded by what the database can store or compare: an
input beyond them is the caller's error (422), not a database error (500). Found by fuzzing
the API (tests/api/test_fuzz.py)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query
from pydantic import AfterValidator

MAX_OFFSET = 2**63 - 1
"""OFFSET is a signed 64-bit integer in PostgreSQL (and SQLite)."""

PageOffset = Annotated[int, Query(ge=0, le=MAX_OFFSET)]
"""How many rows of a listing to skip."""


def _storable(text: str) -> str:
    if "\x00" in text:
        raise ValueError("text may not contain NUL characters")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: a valid JSON escape, but not Unicode text
        raise ValueError("text must be valid Unicode") from None
    return text


StoredText = Annotated[str, AfterValidator(_storable)]
"""Free text that is stored or compared with stored text: PostgreSQL's text holds neither NUL
characters nor lone surrogates."""
