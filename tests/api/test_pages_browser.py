"""The API's pages in a real headless Chromium against the app served over HTTP, with no network
beyond it: Swagger UI and ReDoc render from the app's own files (no CDN), and the evidence page
opens through a signed link (a browser sends no bearer header) while an expired or tampered
link is refused. Chromium as in test_evidence_browser.py (skipped where missing, except in CI).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from sqlalchemy import Engine

from monitor.service.api import create_app
from monitor.service.audit.links import issue_link, link_key
from monitor.service.auth import Principal, Role
from monitor.service.pccp import store as candidates_store
from tests.api.test_candidates_api import AUDITOR, MODEL, SETTINGS, FakeRegistry
from tests.api.test_evidence_browser import CHROMIUM
from tests.factories import record_gate_outcome

pytestmark = pytest.mark.integration
LINK_KEY = link_key(SETTINGS)  # derived from the session's audit key (tests/conftest.py)

OFFLINE = [
    # No name resolves but the app's own address, and every proxied request (all but those to
    # loopback, which Chromium never proxies) fails.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    "--proxy-server=127.0.0.1:9",
]


@pytest.fixture(scope="module")
def chromium() -> str:
    return browser()


@contextmanager
def serving(app: FastAPI) -> Iterator[str]:
    """The app on a free port of 127.0.0.1, in a thread, for the length of the block."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the app did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)
        listener.close()


@pytest.fixture
def base_url(pg_engine: Engine) -> Iterator[str]:
    app = create_app(SETTINGS, engine=pg_engine)
    registry = FakeRegistry()
    app.state.registry_factory = lambda: registry
    with serving(app) as url:
        yield url


def page_text(chromium: str, url: str) -> str:
    """The page's text once its scripts have run (virtual time: no waiting on the wall clock)."""
    dom = subprocess.run(
        [
            chromium,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            *OFFLINE,
            "--virtual-time-budget=20000",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    return dom


def browser() -> str:
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("Chromium is missing: `make test` installs it (apt-get install chromium)")
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    return CHROMIUM


def words(dom: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom))


def test_swagger_ui_and_redoc_render_the_operations_with_no_network(
    base_url: str, chromium: str
) -> None:
    html = httpx.get(f"{base_url}/docs").text
    assert not re.search(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", html, re.I), html
    dom = page_text(chromium, f"{base_url}/docs")
    # Swagger UI fetched the OpenAPI document and laid out one block per operation.
    assert dom.count('class="opblock opblock-get') >= 10, words(dom)[:500]
    assert 'class="opblock opblock-post' in dom
    assert 'data-path="/candidates/{candidate_id}/evidence"' in dom
    assert "Failed to load API definition" not in dom

    redoc_html = httpx.get(f"{base_url}/redoc").text
    assert "fonts.googleapis" not in redoc_html
    assert not re.search(r"""src\s*=\s*["']?(?:https?:)?//""", redoc_html, re.I)
    redoc = words(page_text(chromium, f"{base_url}/redoc"))
    assert "Get Model" in redoc and "/models/{model_name}" in redoc, redoc[:500]


def test_the_evidence_page_opens_through_a_signed_link_and_a_bad_link_is_refused(
    base_url: str, pg_engine: Engine, chromium: str
) -> None:
    row = candidates_store.propose(
        pg_engine, model_name=MODEL, model_version="2", proposed_by="alice", reason="browser"
    )
    record_gate_outcome(pg_engine, row.candidate_id)
    page = f"/candidates/{row.candidate_id}/evidence"
    assert "a bearer token is required" in page_text(chromium, base_url + page)

    link = httpx.post(f"{base_url}/links", json={"path": page}, headers=AUDITOR)
    assert link.status_code == 201, link.text
    opened = words(page_text(chromium, link.json()["url"]))
    assert "Decision record" in opened and "0 of 2 approvals required" in opened

    tampered = link.json()["url"][:-3] + (
        "xyz" if not link.json()["url"].endswith("xyz") else "abc"
    )
    assert "this link is not valid" in page_text(chromium, tampered)
    auditor = Principal("audrey", frozenset({Role.AUDITOR}))
    old, _ = issue_link(LINK_KEY, 600, auditor, page, now=datetime.now(UTC) - timedelta(hours=2))
    assert "this link has expired" in page_text(chromium, f"{base_url}{page}?link={old}")
