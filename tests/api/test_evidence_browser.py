"""The evidence page in a real headless browser (Debian's Chromium): it renders offline, with
no external asset, and shows what a signer must see: the outcome, every flagged regression
with its sentence, the threshold's provenance, and the decision record read from the change
log with how to verify it.

Chromium is installed by `make test` (its test-tools target); elsewhere the test is skipped
when it is missing, except in CI (``CI`` set), where a missing browser fails it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from matplotlib.image import imread
from sqlalchemy import Engine

from monitor.service.api import create_app
from monitor.service.auth import Role, issue_local_token
from pccp.catalog import SHIPPED_PLANS
from pccp.gate import GateCases, ModelScores, build_report
from pccp.plan import load_plan
from tests.api.test_candidates_api import (
    ALICE,
    AUDITOR,
    BOB,
    MODEL,
    SETTINGS,
    FakeRegistry,
    propose,
)
from tests.factories import no_site_content, record_gate_outcome, threshold_provenance

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
OFFLINE = ["--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=127.0.0.1:9"]
"""No name resolves and every proxied request fails: a page that needs the network shows it."""


@pytest.fixture(scope="module")
def chromium() -> str:
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("Chromium is missing: `make test` installs it (apt-get install chromium)")
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    return CHROMIUM


def browse(chromium: str, page: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            chromium,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            *OFFLINE,
            *extra,
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )


def failing_report() -> dict[str, object]:
    """The shipped plan on a candidate that halves specificity at site-02."""
    rng = np.random.default_rng(0)
    n = 600
    positive = rng.random(n) < 0.35
    site = np.array(["site-01", "site-02", "site-03"])[np.arange(n) % 3]
    sex = np.where(np.arange(n) % 2 == 0, "F", "M")
    scores = 1 / (1 + np.exp(-(np.where(positive, 1.6, -1.6) + rng.standard_normal(n))))
    worse = scores.copy()
    cleared = np.flatnonzero((site == "site-02") & ~positive & (scores < 0.5))
    worse[cleared[::2]] = 0.9
    cases = GateCases(tuple(f"k{i}" for i in range(n)), positive, {"site": site, "PatientSex": sex})
    provenance = threshold_provenance(training_manifest_sha256="b" * 64)
    report = build_report(
        load_plan(SHIPPED_PLANS / "cxr-lesion.yaml"),
        cases,
        ModelScores("2", worse, 0.5),
        ModelScores("1", scores, 0.5),
        model_name=MODEL,
        locked_test_sha256="a" * 64,
        scope_violations=[],
        threshold=provenance,
        content=no_site_content(load_plan(SHIPPED_PLANS / "cxr-lesion.yaml")),
    )
    return report.model_dump(mode="json")


@pytest.fixture
def client(pg_engine: Engine) -> Iterator[TestClient]:
    app = create_app(SETTINGS, engine=pg_engine)
    registry = FakeRegistry()
    app.state.registry_factory = lambda: registry
    with TestClient(app) as test_client:
        yield test_client


def test_the_evidence_page_renders_offline_in_chromium_with_the_whole_decision(
    client: TestClient, pg_engine: Engine, chromium: str, tmp_path: Path
) -> None:
    created = propose(client)
    url = f"/candidates/{created['candidate_id']}"
    record_gate_outcome(pg_engine, created["candidate_id"], "failed", failing_report())  # type: ignore[arg-type]
    rejected = client.post(f"{url}/reject", json={"reason": "site-02 recalls"}, headers=BOB)
    assert rejected.status_code == 409  # a failed candidate is final: nothing to sign
    detail = client.get(url, headers=AUDITOR).json()
    html = client.get(f"{url}/evidence", headers=AUDITOR).text

    # Nothing from the network: no URL in any src, href or CSS url().
    assert not re.search(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", html, re.I)
    assert not re.search(r"url\(\s*['\"]?(?:https?:)?//", html, re.I)
    page = tmp_path / "evidence.html"
    page.write_text(html, encoding="utf-8")

    shot = tmp_path / "evidence.png"
    browse(chromium, page, f"--screenshot={shot}", "--window-size=1280,2400")
    pixels = imread(shot)
    assert pixels.shape[0] >= 2000 and pixels.shape[1] >= 1200
    assert float(pixels[..., :3].std()) > 0.05, "the screenshot is blank"
    # The outcome's colour (#b42318, the failed red) is painted somewhere near the top.
    top = pixels[:400, :, :3]
    red = (np.abs(top[..., 0] - 0xB4 / 255) < 0.05) & (np.abs(top[..., 1] - 0x23 / 255) < 0.05)
    assert red.sum() > 200

    dom = browse(chromium, page, "--dump-dom").stdout
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom))
    assert "FAILED" in text
    assert "Worse than the champion beyond the noise" in text
    assert "At site-02, specificity is" in text and "times as many normal studies" in text
    assert "hold_champion_sensitivity" in text and "tuning split" in text
    assert "Decision record" in text and "radsentry audit verify" in text
    entries = ", ".join(str(h["seq"]) for h in detail["history"])
    assert f"Rendered from change-log entries {entries}" in text
    # Every SVG plot was parsed and laid out by the browser (two plots).
    assert dom.count("<svg") >= 2


def test_a_promoted_and_rolled_back_candidate_shows_each_signature_in_chromium(
    client: TestClient, pg_engine: Engine, chromium: str, tmp_path: Path
) -> None:
    created = propose(client)
    url = f"/candidates/{created['candidate_id']}"
    record_gate_outcome(pg_engine, created["candidate_id"])  # type: ignore[arg-type]
    carol = {
        "Authorization": "Bearer "
        + issue_local_token(SETTINGS, "carol", [Role.MLOPS], name="Carol Example")
    }
    for who, why in ((BOB, "site-02 recovers"), (carol, "agree")):
        assert client.post(f"{url}/approve", json={"reason": why}, headers=who).status_code == 200
    assert client.post(f"{url}/promote", json={"reason": "go"}, headers=ALICE).status_code == 200
    undo = {"expected_version": "2", "reason": "drill"}
    assert client.post(f"/models/{MODEL}/rollback", json=undo, headers=BOB).status_code == 200
    page = tmp_path / "evidence.html"
    page.write_text(client.get(f"{url}/evidence", headers=AUDITOR).text, encoding="utf-8")
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", browse(chromium, page, "--dump-dom").stdout))
    assert re.search(r"As of \S+: rolled back , 2 of 2 approvals required", text), text[:600]
    assert "Carol Example" in text and "site-02 recovers" in text
    assert "Promoted to champion at" in text and "Rolled back at" in text
    for action in ("candidate.proposed", "gate.result", "approval", "promotion", "rollback"):
        assert action in text
