"""`radsentry dashboards export|push` over real HTTP.

No Grafana server can be installed on the CI machines (it is not in Debian, PyPI or npm), so
``push`` talks to a small fake of Grafana's HTTP API served from a thread with ``http.server``:
a fake of an external API we do not own, implementing just what grafana-client calls here
(folder search, folder creation, dashboard save) the way Grafana answers it, and recording what
it received. grafana-client itself is not mocked.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
from typer.testing import CliRunner

from dashboards.build import build_all
from monitor.service.broker import free_port
from monitor.service.cli import app

TOKEN = "glsa_fake-service-account-token"
GENERATED = Path(__file__).parents[2] / "dashboards" / "generated"
runner = CliRunner()


@dataclass
class FakeGrafana:
    """What the fake Grafana holds and received."""

    folders: dict[str, str] = field(default_factory=dict)  # uid -> title
    dashboards: dict[str, dict[str, object]] = field(default_factory=dict)  # uid -> save body
    versions: dict[str, int] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)
    authorizations: set[str] = field(default_factory=set)
    status_for_all: int | None = None  # answer every request with this status (401, 403)


def _handler(state: FakeGrafana) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # quiet test output
            pass

        def _reply(self, status: int, body: object) -> None:
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def _authorised(self) -> bool:
            state.requests.append((self.command, urlparse(self.path).path))
            state.authorizations.add(self.headers.get("Authorization", ""))
            if state.status_for_all is not None:
                self._reply(state.status_for_all, {"message": "invalid API key"})
                return False
            if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                self._reply(401, {"message": "invalid API key"})
                return False
            return True

        def _body(self) -> dict[str, object]:
            length = int(self.headers.get("Content-Length", "0"))
            body = json.loads(self.rfile.read(length) or b"{}")
            assert isinstance(body, dict)
            return body

        def do_GET(self) -> None:
            if not self._authorised():
                return
            url = urlparse(self.path)
            if url.path != "/api/search":
                self._reply(404, {"message": "Not found"})
                return
            params = parse_qs(url.query)
            query = params.get("query", [""])[0].lower()
            assert params.get("type") == ["dash-folder"]
            hits = [
                {"uid": uid, "title": title, "type": "dash-folder", "url": f"/dashboards/f/{uid}"}
                for uid, title in state.folders.items()
                if query in title.lower()
            ]
            self._reply(200, hits)

        def do_POST(self) -> None:
            if not self._authorised():
                return
            path, body = urlparse(self.path).path, self._body()
            if path == "/api/folders":
                uid = uuid.uuid4().hex[:14]
                state.folders[uid] = str(body["title"])
                self._reply(200, {"uid": uid, "title": body["title"], "id": len(state.folders)})
            elif path == "/api/dashboards/db":
                dashboard = body["dashboard"]
                assert isinstance(dashboard, dict)
                uid = str(dashboard["uid"])
                if uid in state.dashboards and not body.get("overwrite"):
                    self._reply(412, {"message": "A dashboard with the same uid already exists"})
                    return
                if body.get("folderUid") not in state.folders:
                    self._reply(400, {"message": "folder not found"})
                    return
                state.dashboards[uid] = body
                state.versions[uid] = state.versions.get(uid, 0) + 1
                self._reply(200, {"uid": uid, "status": "success", "version": state.versions[uid]})
            else:
                self._reply(404, {"message": "Not found"})

    return Handler


@pytest.fixture
def grafana() -> Iterator[tuple[str, FakeGrafana]]:
    state = FakeGrafana()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", state
    server.shutdown()
    server.server_close()


def _push(url: str, *extra: str) -> tuple[int, str]:
    result = runner.invoke(
        app, ["dashboards", "push", "--url", url, "--token-env", "GRAFANA_TOKEN", *extra]
    )
    return result.exit_code, result.output


def test_push_twice_ends_in_the_same_state(
    grafana: tuple[str, FakeGrafana], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, state = grafana
    monkeypatch.setenv("GRAFANA_TOKEN", TOKEN)
    code, output = _push(url)
    assert code == 0, output
    first = json.loads(json.dumps(state.dashboards))
    code, output = _push(url)
    assert code == 0, output

    assert list(state.folders.values()) == ["RadSentry"], "the folder is created once"
    assert state.dashboards == first
    assert set(state.dashboards) == set(build_all())
    (folder_uid,) = state.folders
    for uid, body in state.dashboards.items():
        assert body["overwrite"] is True and body["folderUid"] == folder_uid
        assert body["dashboard"] == {**build_all()[uid], "id": None}
    assert TOKEN not in output
    assert [path for _, path in state.requests].count("/api/folders") == 1


def test_push_into_a_named_existing_folder(
    grafana: tuple[str, FakeGrafana], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, state = grafana
    state.folders["existing"] = "Imaging AI"
    monkeypatch.setenv("GRAFANA_TOKEN", TOKEN)
    code, output = _push(url, "--folder", "Imaging AI")
    assert code == 0, output
    assert state.folders == {"existing": "Imaging AI"}
    assert {body["folderUid"] for body in state.dashboards.values()} == {"existing"}


@pytest.mark.parametrize("status", [401, 403])
def test_a_refused_token_says_which_variable(
    grafana: tuple[str, FakeGrafana], monkeypatch: pytest.MonkeyPatch, status: int
) -> None:
    url, state = grafana
    state.status_for_all = status
    monkeypatch.setenv("GRAFANA_TOKEN", "expired-token")
    code, output = _push(url)
    assert code == 1
    assert f"Grafana refused the token in GRAFANA_TOKEN (HTTP {status})" in output
    assert "expired-token" not in output
    assert state.dashboards == {}


def test_an_unreachable_grafana_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("GRAFANA_TOKEN", TOKEN)
    code, output = _push(url)
    assert code == 1
    assert f"Grafana at {url} is unreachable:" in output


def test_a_missing_token_variable_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RADSENTRY_NO_SUCH_TOKEN", raising=False)
    result = runner.invoke(
        app,
        [
            "dashboards",
            "push",
            "--url",
            "http://127.0.0.1:9",
            "--token-env",
            "RADSENTRY_NO_SUCH_TOKEN",
        ],
    )
    assert result.exit_code == 2
    assert "RADSENTRY_NO_SUCH_TOKEN is not set" in result.output


def test_export_writes_the_checked_in_files(tmp_path: Path) -> None:
    result = runner.invoke(app, ["dashboards", "export", "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    written = {path.name: path.read_text() for path in (tmp_path / "out").glob("*.json")}
    checked_in = {path.name: path.read_text() for path in GENERATED.glob("*.json")}
    assert written == checked_in
