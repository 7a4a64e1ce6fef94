"""The worker processes' probes: what Health reports, and the port that serves it."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import orjson
import pytest

from monitor.service import metrics
from monitor.service.health import Health, serve_probes


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def test_a_starting_worker_is_live_but_not_ready() -> None:
    report = Health(60, Clock()).report()
    assert report["live"] and not report["ready"]
    assert report["state"] == "starting"


def test_a_good_round_makes_it_ready_and_a_failed_one_takes_readiness_only() -> None:
    clock = Clock()
    health = Health(60, clock)
    health.beat(True, state="consuming")
    assert health.report() | {"last_round_s": 0} == {
        "live": True,
        "ready": True,
        "last_round_s": 0,
        "last_round_ok": True,
        "state": "consuming",
    }
    clock.now += 5
    health.beat(False, state="retrying")
    report = health.report()
    assert report["live"] and not report["ready"] and report["state"] == "retrying"
    health.beat(True)  # no detail: the last one stands
    assert health.report()["ready"] and health.report()["state"] == "retrying"


def test_a_loop_that_stops_going_round_is_neither_live_nor_ready() -> None:
    clock = Clock()
    health = Health(60, clock)
    health.beat(True, state="leading")
    clock.now += 60
    assert health.report()["live"]  # at the limit still live
    clock.now += 0.5
    report = health.report()
    assert not report["live"] and not report["ready"]
    assert report["last_round_s"] == 60.5 and report["last_round_ok"]


@pytest.fixture
def probes() -> Iterator[tuple[Health, Clock, str]]:
    clock = Clock()
    health = Health(30, clock)
    server = serve_probes(health, 0, "127.0.0.1")
    try:
        yield health, clock, f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


def test_the_port_answers_each_probe_with_its_status_code(
    probes: tuple[Health, Clock, str],
) -> None:
    health, clock, base = probes
    starting = httpx.get(f"{base}/readyz")
    assert starting.status_code == 503
    assert starting.json()["status"] == "not ready"
    assert httpx.get(f"{base}/healthz").status_code == 200

    health.beat(True, state="consuming")
    ready = httpx.get(f"{base}/readyz")
    assert ready.status_code == 200
    assert ready.headers["content-type"] == "application/json"
    assert orjson.loads(ready.content)["state"] == "consuming"

    clock.now += 31
    stalled = httpx.get(f"{base}/healthz")
    assert stalled.status_code == 503
    assert stalled.json()["status"] == "stalled"
    assert httpx.get(f"{base}/readyz").status_code == 503


def test_the_port_serves_the_process_metrics_and_nothing_else(
    probes: tuple[Health, Clock, str],
) -> None:
    _, _, base = probes
    metrics.INGEST_FAILURES.inc(0)
    scrape = httpx.get(f"{base}/metrics")
    assert scrape.status_code == 200
    assert "radsentry_ingest_failures_total" in scrape.text
    assert httpx.get(f"{base}/").status_code == 404
    assert httpx.get(f"{base}/admin").status_code == 404
