"""The request limits around a small echo application: what reaches it, and what is refused."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from monitor.service.limits import SERVER_HEADER_FACTOR, RequestLimits, server_limits

LIMIT, UPLOAD, HEADERS = 2048, 8192, 4096
reached: list[int] = []


async def echo(request: Request) -> JSONResponse:
    body = await request.body()
    reached.append(len(body))
    return JSONResponse({"bytes": len(body)})


@pytest.fixture
def client() -> Iterator[TestClient]:
    app = Starlette(
        routes=[
            Route("/anything", echo, methods=["GET", "POST"]),
            Route("/sites/{site_id}/reference", echo, methods=["POST"]),
        ]
    )
    app.add_middleware(
        RequestLimits, max_body_bytes=LIMIT, max_header_bytes=HEADERS, max_upload_bytes=UPLOAD
    )
    reached.clear()
    with TestClient(app) as test_client:
        yield test_client


def chunks(total: int, size: int = 500) -> Iterator[bytes]:
    for start in range(0, total, size):
        yield b"x" * min(size, total - start)


def test_a_body_within_the_limit_reaches_the_application_whole(client: TestClient) -> None:
    assert client.post("/anything", content=b"x" * LIMIT).json() == {"bytes": LIMIT}
    assert client.post("/anything", content=chunks(LIMIT)).json() == {"bytes": LIMIT}
    assert client.get("/anything").json() == {"bytes": 0}


def test_a_body_over_the_limit_never_reaches_the_application(client: TestClient) -> None:
    declared = client.post("/anything", content=b"x" * (LIMIT + 1))
    assert declared.status_code == 413
    assert declared.json() == {
        "detail": f"the request body is {LIMIT + 1} bytes; the limit is {LIMIT} bytes"
    }
    streamed = client.post("/anything", content=chunks(10 * LIMIT))
    assert streamed.status_code == 413 and "more than 2048 bytes" in streamed.text
    assert reached == []


def test_the_upload_route_has_its_own_limit(client: TestClient) -> None:
    assert client.post("/sites/site-01/reference", content=b"x" * UPLOAD).status_code == 200
    assert client.post("/sites/site-01/reference", content=b"x" * (UPLOAD + 1)).status_code == 413
    assert client.post("/sites/a/b/reference", content=b"x" * UPLOAD).status_code in (404, 413)


def test_headers_over_the_limit_are_431(client: TestClient) -> None:
    assert client.get("/anything", headers={"X-Big": "a" * (HEADERS - 200)}).status_code == 200
    refused = client.get("/anything", headers={"Authorization": "a" * HEADERS})
    assert refused.status_code == 431 and "the limit is 4096" in refused.text


def test_a_content_length_that_is_no_number_is_400(client: TestClient) -> None:
    answer = client.post("/anything", content=b"{}", headers={"Content-Length": "-1"})
    assert answer.status_code == 400


def test_the_server_reads_a_bounded_header_block() -> None:
    assert server_limits(HEADERS) == {
        "http": "h11",
        "h11_max_incomplete_event_size": SERVER_HEADER_FACTOR * HEADERS,
    }


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e999", "-1e400"])
def test_a_json_body_with_a_non_finite_number_is_422(client: TestClient, number: str) -> None:
    body = '{"reason": "r", "score": ' + number + "}"
    answer = client.post("/anything", content=body, headers={"Content-Type": "application/json"})
    assert answer.status_code == 422
    assert answer.json()["detail"][0]["msg"].startswith("NaN and Infinity are not valid JSON")
    # The same text as another media type, and JSON that no parser reads, are the app's to judge.
    assert (
        client.post("/anything", content=body, headers={"Content-Type": "text/plain"}).status_code
        == 200
    )
    broken = client.post("/anything", content="{", headers={"Content-Type": "application/json"})
    assert broken.status_code == 200 and reached[-1] == 1
