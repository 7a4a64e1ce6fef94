"""Training images over real HTTP: a tiny WADO-RS endpoint and the dicomweb-client adapter.

The server answers ``GET <base>/studies/<study_key>`` with the simulated study's DICOM file as
``multipart/related; type="application/dicom"`` (DICOM PS3.18 WADO-RS Retrieve Study), so the
real ``dicomweb-client`` parses a real response; only the storage behind it is a directory.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from monitor.events import InferenceEvent
from monitor.simulate import SimulationConfig, simulate
from retrain.images import DicomWebClientSource, ImageError, fetch_image

pytestmark = pytest.mark.integration
_BOUNDARY = "radsentry-test-boundary"


def _handler(root: Path) -> type[BaseHTTPRequestHandler]:
    class WadoRs(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            prefix, _, study_key = self.path.rpartition("/studies/")
            files = sorted(root.glob(f"*/{study_key}.dcm")) if prefix == "/dicomweb" else []
            if not files or "/" in study_key:
                self.send_error(404)
                return
            body = (
                b"".join(
                    f"--{_BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
                    + path.read_bytes()
                    + b"\r\n"
                    for path in files
                )
                + f"--{_BOUNDARY}--\r\n".encode()
            )
            self.send_response(200)
            self.send_header(
                "Content-Type",
                f'multipart/related; type="application/dicom"; boundary={_BOUNDARY}',
            )
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # keep test output quiet

    return WadoRs


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[InferenceEvent]]:
    root = tmp_path_factory.mktemp("wado")
    config = SimulationConfig(
        seed=5, start=datetime(2026, 11, 1, tzinfo=UTC), sites=1, studies_per_site=3, image_size=64
    )
    events = [e for e in simulate(config, root) if isinstance(e, InferenceEvent)]
    return root, events


@pytest.fixture(scope="module")
def base_url(studies: tuple[Path, list[InferenceEvent]]) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(studies[0]))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/dicomweb"
    finally:
        server.shutdown()
        server.server_close()


def test_dicomweb_image_equals_the_file_image(
    studies: tuple[Path, list[InferenceEvent]], base_url: str
) -> None:
    source = DicomWebClientSource(timeout_s=5)
    for event in studies[1]:
        assert event.dicom_uri is not None
        from_file = fetch_image(event.dicom_uri, 32)
        from_web = fetch_image(f"{base_url}/studies/{event.study_key}", 32, source)
        np.testing.assert_array_equal(from_web.pixels, from_file.pixels)
        assert from_web.content_sha256 == from_file.content_sha256


def test_dicomweb_errors_become_image_errors(base_url: str) -> None:
    source = DicomWebClientSource(timeout_s=5)
    with pytest.raises(ImageError, match="DICOMweb retrieval failed"):
        fetch_image(f"{base_url}/studies/{'0' * 64}", 32, source)
    with pytest.raises(ImageError, match="names no study"):
        fetch_image(f"{base_url}/nothing-here", 32, source)
