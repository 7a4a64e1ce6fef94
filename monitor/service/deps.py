"""FastAPI dependencies and request value types shared by the routers.

The value types are bounded by what the database can store or compare: an input beyond them is
the caller's error (422), not a database error (500). Found by fuzzing the API
(tests/api/test_fuzz.py).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Query, Request
from pydantic import AfterValidator, Field
from sqlalchemy import Engine

from monitor.service.models import REASON_MAX_CHARS
from monitor.service.settings import Settings


def get_engine(request: Request) -> Engine:
    """The database engine built in the app's lifespan."""
    engine: Engine = request.app.state.engine
    return engine


EngineDep = Annotated[Engine, Depends(get_engine)]


def get_settings(request: Request) -> Settings:
    """The settings the app was built with."""
    settings: Settings = request.app.state.settings
    return settings


SettingsDep = Annotated[Settings, Depends(get_settings)]

MAX_OFFSET = 2**63 - 1
"""OFFSET is a signed 64-bit integer in PostgreSQL."""

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


def _not_blank(text: str) -> str:
    if not text.strip():
        raise ValueError("a reason may not be blank")
    return text


Reason = Annotated[
    StoredText, Field(min_length=1, max_length=REASON_MAX_CHARS), AfterValidator(_not_blank)
]
"""Why a person acts (a signature, a promotion, a rollback, a retrain request): required,
bounded, and not white space alone, which explains nothing (422)."""

Note = Annotated[StoredText, Field(max_length=REASON_MAX_CHARS)]
"""An optional remark, bounded like a reason."""
