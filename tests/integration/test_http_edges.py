"""The HTTP edge of a real `radsentry serve` process, as an unauthenticated client and a clumsy
or hostile one would try it: oversized bodies (declared and streamed) and headers, tokens whose
header names an algorithm of another key type, non-finite numbers, blank reasons. Nothing may
answer 500, and the process's memory stays flat under a stream of oversized requests.

The server runs in OIDC mode with an RSA public key (algorithms RS256 and ES256 accepted, the
defaults), so that an ES256 token checked against the RSA key is tried for real.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from monitor.service.auth import Role
from tests.servers import stop_process_group, wait_until_serving

pytestmark = pytest.mark.integration

ISSUER = "https://idp.example.org/realms/radsentry"
MAX_BODY = 1024 * 1024
MAX_HEADER = 32 * 1024


@dataclass(frozen=True)
class Server:
    base: str
    port: int
    pid: int
    key: rsa.RSAPrivateKey

    def token(self, subject: str = "alice", *roles: Role, **header: Any) -> str:
        now = int(time.time())
        claims = {
            "sub": subject,
            "iss": ISSUER,
            "aud": "radsentry",
            "iat": now,
            "auth_time": now,
            "exp": now + 600,
            "roles": [str(role) for role in roles],
        }
        return jwt.encode(claims, self.key, algorithm="RS256", headers=header or None)

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def server(pg_url: str, broker: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    work = tmp_path_factory.mktemp("http-edges")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = work / "idp.pem"
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    port = _free_port()
    env = {
        **os.environ,
        "RADSENTRY_DATA_DIR": str(work),
        "RADSENTRY_DATABASE__URL": pg_url,
        "RADSENTRY_KAFKA__BOOTSTRAP_SERVERS": json.dumps([broker]),
        "RADSENTRY_AUTH__MODE": "oidc",
        "RADSENTRY_AUTH__ISSUER": ISSUER,
        "RADSENTRY_AUTH__PUBLIC_KEY_FILE": str(public),
        "RADSENTRY_API__MAX_BODY_BYTES": str(MAX_BODY),
        "RADSENTRY_API__MAX_HEADER_BYTES": str(MAX_HEADER),
    }
    log_path = work / "serve.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("radsentry")),
                "serve",
                "--port",
                str(port),
                "--no-consumer",
                "--no-jobs",
            ],
            env=env,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(f"{base}/healthz", process, log_path, name="serve", timeout_s=90)
        yield Server(base, port, process.pid, key)
    finally:
        process.send_signal(signal.SIGTERM)
        stop_process_group(process)
    assert "Traceback" not in log_path.read_text(errors="replace")


def _raw(port: int, head: bytes, body: bytes = b"", *, read_s: float = 10.0) -> tuple[int, bytes]:
    """Send ``head`` (and ``body``, as far as the server lets it in) on a raw socket; the status
    code of the answer and its bytes (0: the server closed without answering)."""
    with socket.create_connection(("127.0.0.1", port), timeout=read_s) as connection:
        # Refused before all was read (what we want): the server may close on it.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            connection.sendall(head)
            connection.sendall(body)
        answer = b""
        try:
            while chunk := connection.recv(65536):
                answer += chunk
        except (ConnectionResetError, TimeoutError):
            pass
    if not answer.startswith(b"HTTP/1.1 "):
        return 0, answer
    return int(answer[9:12]), answer


def _post_head(path: str, *lines: str) -> bytes:
    return ("\r\n".join([f"POST {path} HTTP/1.1", "Host: api", *lines]) + "\r\n\r\n").encode()


def test_a_declared_oversized_body_is_refused_unread_and_unauthenticated(server: Server) -> None:
    head = _post_head(
        "/candidates", "Content-Type: application/json", f"Content-Length: {400 * 1024 * 1024}"
    )
    started = time.monotonic()
    code, answer = _raw(server.port, head)  # no body sent at all: the answer must not wait for it
    assert code == 413, answer
    assert time.monotonic() - started < 5
    assert b"the limit is 1048576 bytes" in answer


def test_a_streamed_body_is_refused_once_it_passes_the_limit(server: Server) -> None:
    head = _post_head("/candidates", "Content-Type: application/json", "Transfer-Encoding: chunked")
    chunk = b"x" * 65536
    body = (f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n") * 40 + b"0\r\n\r\n"  # 2.5 MiB
    code, answer = _raw(server.port, head, body)
    assert code == 413, answer[:300]


def test_a_body_within_the_limit_still_reaches_authentication(server: Server) -> None:
    response = httpx.post(f"{server.base}/candidates", json={"x": "y" * 1000})
    assert response.status_code == 401


@pytest.mark.parametrize("size", [48 * 1024, 10 * 1024 * 1024])
def test_oversized_headers_are_refused_and_the_server_carries_on(server: Server, size: int) -> None:
    head = f"GET /candidates HTTP/1.1\r\nHost: api\r\nAuthorization: Bearer {'a' * size}\r\n\r\n"
    code, _ = _raw(server.port, head.encode())
    # Up to four times the limit, the headers reach the limits layer: 431. Beyond, the server
    # stops reading the header block itself (400, or a closed connection).
    assert code == (431 if size < 4 * MAX_HEADER else 400) or (code == 0 and size > MAX_HEADER)
    assert httpx.get(f"{server.base}/healthz").status_code == 200


def test_memory_stays_flat_under_a_stream_of_oversized_requests(server: Server) -> None:
    head = _post_head("/candidates", "Content-Type: application/json", "Transfer-Encoding: chunked")
    chunk = b"x" * (256 * 1024)
    body = (f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n") * 8 + b"0\r\n\r\n"  # 2 MiB each
    declared = _post_head("/candidates", f"Content-Length: {512 * 1024 * 1024}")
    for _ in range(3):  # warm up: allocator pools, first-use imports
        _raw(server.port, head, body)
    before = server.rss_kib()
    for _ in range(40):
        assert _raw(server.port, head, body)[0] == 413
        assert _raw(server.port, declared, b"x" * (4 * 1024 * 1024))[0] == 413
    growth_mib = (server.rss_kib() - before) / 1024
    # 40 streamed requests of 2 MiB and 40 declared at 512 MiB (4 MiB actually sent): had the
    # bodies been buffered, the growth would be hundreds of MiB.
    assert growth_mib < 24, f"RSS grew by {growth_mib:.1f} MiB"


def test_a_token_naming_an_accepted_algorithm_of_another_key_type_is_401(
    server: Server,
) -> None:
    ec_key = ec.generate_private_key(ec.SECP256R1())
    now = int(time.time())
    claims = {"sub": "mallory", "iss": ISSUER, "aud": "radsentry", "iat": now, "exp": now + 60}
    token = jwt.encode(claims, ec_key, algorithm="ES256")  # ES256 is accepted; the key is RSA
    response = httpx.get(f"{server.base}/candidates", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401, response.text
    for malformed in ("a.b.c", "e30.e30.", "x" * 5000, "..", "eyJhbGciOiJub25lIn0.e30."):
        answer = httpx.get(
            f"{server.base}/candidates", headers={"Authorization": f"Bearer {malformed}"}
        )
        assert answer.status_code == 401, (malformed, answer.text)


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_numbers_are_422_and_the_answer_renders(server: Server, number: str) -> None:
    token = server.token("alice", Role.MLOPS)
    body = (
        '{"model_name": "cxr-lesion", "model_version": "2", "reason": "r", "extra": ' + number + "}"
    )
    response = httpx.post(
        f"{server.base}/candidates",
        content=body,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    assert response.status_code == 422, response.text
    assert response.json()["detail"]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/candidates/00000000-0000-0000-0000-000000000001/approve", {"reason": " \t\n"}),
        ("/candidates/00000000-0000-0000-0000-000000000001/reject", {"reason": "   "}),
        ("/candidates/00000000-0000-0000-0000-000000000001/promote", {"reason": "\u3000"}),
        ("/models/cxr-lesion/rollback", {"expected_version": "2", "reason": " "}),
        ("/models/cxr-lesion/retrain", {"reason": "\n"}),
        ("/sites/site-01/reference", {"model_name": "m", "model_version": "1", "reason": " "}),
    ],
)
def test_a_blank_reason_is_422_on_every_route_that_takes_one(
    server: Server, path: str, body: dict[str, Any]
) -> None:
    token = server.token("alice", Role.MLOPS)
    response = httpx.post(
        f"{server.base}{path}", json=body, headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 422, (path, response.text)
