"""Request limits, enforced before anything else reads the request.

:class:`RequestLimits` wraps the whole API (outside FastAPI, so before routing, authentication
and body parsing):

- request headers larger than ``max_header_bytes`` in all are refused with 431;
- a body whose ``Content-Length`` exceeds ``max_body_bytes`` is refused with 413 at once, without
  reading it; a body without one (chunked) is read up to the limit and refused with 413 the
  moment it passes it. A body within the limit is handed to the application unchanged.
- the one upload route, a stream's reference events (``POST /sites/{site_id}/reference``, up
  to 20,000 events), has its own limit, ``max_upload_bytes``;
- a JSON body with a number JSON does not have (``NaN``, ``Infinity``, or one too large for a
  double, such as ``1e999``) is refused with 422: Python's parser, which FastAPI uses, would
  accept it as a float that no field validates and no response can echo.

So an unauthenticated client cannot make the API hold more than ``max_body_bytes`` of one
request's body in memory. The HTTP server bounds what it reads before this layer sees a request
(:func:`server_limits`: the header block), so a multi-megabyte header never reaches memory whole.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final

import orjson

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

UPLOAD_PATH: Final = re.compile(r"^/sites/[^/]+/reference$")
"""The route whose body may be as large as ``max_upload_bytes``."""

SERVER_HEADER_FACTOR: Final = 4
"""The HTTP server reads a header block up to this many times ``max_header_bytes`` (then it
answers 400 and closes the connection); between the two, this layer answers 431."""


class RequestLimits:
    """The ASGI middleware of the module docstring."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        max_header_bytes: int,
        max_upload_bytes: int | None = None,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_header_bytes = max_header_bytes
        self.max_upload_bytes = max_upload_bytes or max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        header_bytes = sum(len(name) + len(value) + 4 for name, value in headers)
        if header_bytes > self.max_header_bytes:
            await _refuse(
                send,
                431,
                f"the request headers are {header_bytes} bytes; the limit is "
                f"{self.max_header_bytes}",
            )
            return
        limit = self.max_upload_bytes if UPLOAD_PATH.match(scope["path"]) else self.max_body_bytes
        declared = _content_length(headers)
        if declared == -1:
            await _refuse(send, 400, "Content-Length is not a number of bytes")
            return
        if declared is not None and declared > limit:
            await _refuse(send, 413, _too_large(f"{declared} bytes", limit))
            return
        if declared == 0 or (declared is None and not _has_body(headers)):
            await self.app(scope, receive, send)
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > limit:
                await _refuse(send, 413, _too_large(f"more than {limit} bytes", limit))
                return
            if not message.get("more_body", False):
                break
        if _json(headers) and _non_finite(bytes(body)):
            await _refuse(send, 422, NON_FINITE, kind="json_invalid")
            return
        await self.app(scope, _replay(bytes(body), receive), send)


def server_limits(max_header_bytes: int) -> dict[str, Any]:
    """uvicorn's settings that bound what the server itself reads of a request: the h11
    protocol (httptools reads headers of any size) with its header block bounded."""
    return {"http": "h11", "h11_max_incomplete_event_size": SERVER_HEADER_FACTOR * max_header_bytes}


def _too_large(size: str, limit: int) -> str:
    return f"the request body is {size}; the limit is {limit} bytes"


def _content_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    """The declared length; None without one; -1 when it is not a non-negative integer."""
    for name, value in headers:
        if name.lower() == b"content-length":
            text = value.decode("latin-1").strip()
            return int(text) if text.isdigit() else -1
    return None


NON_FINITE: Final = "NaN and Infinity are not valid JSON numbers; every number must be finite"


def _json(headers: list[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        if name.lower() == b"content-type":
            media = value.split(b";")[0].strip().lower()
            return media == b"application/json" or media.endswith(b"+json")
    return False


_SUSPECT: Final = re.compile(rb"NaN|Infinity|[eE]\+?\d{3}")
"""What a non-finite number needs in the text (a word, or an exponent of three digits): only
bodies holding one are parsed here."""


def _non_finite(body: bytes) -> bool:
    """Whether ``body`` parses as JSON only with a number JSON does not have (``NaN``,
    ``Infinity``, one that overflows a double). Bodies that do not parse are FastAPI's to
    refuse."""
    if not _SUSPECT.search(body):
        return False
    found = False

    def constant(_name: str) -> None:
        nonlocal found
        found = True

    def number(text: str) -> float:
        nonlocal found
        value = float(text)
        found = found or not math.isfinite(value)
        return value

    try:
        json.loads(body, parse_constant=constant, parse_float=number)
    except ValueError:
        return False
    return found


def _has_body(headers: list[tuple[bytes, bytes]]) -> bool:
    return any(name.lower() == b"transfer-encoding" for name, _ in headers)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives ``body`` once, then whatever the client sends next (its
    disconnect)."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


async def _refuse(send: Send, status: int, detail: str, *, kind: str | None = None) -> None:
    """Answer ``status`` with ``detail``; with ``kind``, as FastAPI words a validation error."""
    document: object = (
        detail if kind is None else [{"type": kind, "loc": ["body"], "msg": detail, "input": None}]
    )
    content = orjson.dumps({"detail": document})
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(content)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": content})
