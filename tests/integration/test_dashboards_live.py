"""Every dashboard query against real back ends.

A real ``radsentry serve`` (API, consumer and jobs in one process, on PostgreSQL and the bundled
broker) ingests ``radsentry simulate`` with a scanner change at site-02; a real Prometheus
scrapes its ``/metrics`` every second. Then every PromQL expression of every panel runs through
Prometheus' HTTP API with the dashboard variables substituted (site-02, the model, the finding)
and must return a result, and every SQL panel query runs against the ``grafana`` views as the
read-only role and must return rows. A query naming a metric, label, view or column that does
not exist fails: Prometheus returns nothing, PostgreSQL raises.

The governance tables (retrain requests, candidates, signatures, a checkpoint) are filled
through the product's own store functions, since a retrain would add minutes and nothing a
dashboard reads (``tests.grafana_seed.govern``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from kafka import KafkaProducer  # type: ignore[import-untyped]
from sqlalchemy import Engine, text

from dashboards.build import build_all
from dashboards.queries import PanelQuery, Substitution, panel_queries, render
from monitor.service.broker import free_port
from monitor.service.db import make_engine, upgrade
from monitor.service.grafana.views import GRAFANA_ROLE
from monitor.service.settings import KafkaSettings
from tests.conftest import empty_tables, kafka_topics
from tests.grafana_seed import govern
from tests.prometheus_server import metric_names, query, running_prometheus

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RADSENTRY = str(Path(sys.executable).with_name("radsentry"))
CHANGED, MODEL, FINDING = "site-02", "cxr-lesion", "lesion"
READY_TIMEOUT_S = 240.0


@dataclass(frozen=True)
class Live:
    prometheus: str
    engine: Engine
    started: datetime


def _env(data_dir: Path, pg_url: str, kafka: KafkaSettings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RADSENTRY_")}
    env |= {
        "RADSENTRY_DATA_DIR": str(data_dir),
        "RADSENTRY_DATABASE__URL": pg_url,
        "RADSENTRY_KAFKA__BOOTSTRAP_SERVERS": json.dumps(kafka.bootstrap_servers),
        "RADSENTRY_KAFKA__INFERENCE_TOPIC": kafka.inference_topic,
        "RADSENTRY_KAFKA__LABELS_TOPIC": kafka.labels_topic,
        "RADSENTRY_KAFKA__ALERTS_TOPIC": kafka.alerts_topic,
        "RADSENTRY_KAFKA__GROUP_ID": kafka.group_id,
        "RADSENTRY_KAFKA__SESSION_TIMEOUT_MS": "6000",
        # Small windows so a few hundred studies per site make checks, alerts and snapshots.
        "RADSENTRY_DRIFT__REFERENCE_SIZE": "80",
        "RADSENTRY_DRIFT__WINDOW__SIZE": "40",
        "RADSENTRY_DRIFT__WINDOW__MIN_SIZE": "20",
        # Thresholds learned from the reference's 4 chunks of 20, so that the effect threshold the
        # site overview plots is exported (each chunk's detector is fitted on the other 60 rows;
        # a reference of 60 leaves too few to fit on, and nothing is learned).
        "RADSENTRY_DRIFT__LEARNED__CHUNK_SIZE": "20",
        "RADSENTRY_DRIFT__LEARNED__MIN_CHUNKS": "3",
        "RADSENTRY_PERFORMANCE__REFRESH_S": "2",
        "RADSENTRY_PERFORMANCE__ROLLING_WINDOW": "60",
        "RADSENTRY_PERFORMANCE__ESTIMATE_REFERENCE": "150",
        "RADSENTRY_PERFORMANCE__ESTIMATE__MIN_REFERENCE": "100",
    }
    # The audit key the test process signs with too (tests/conftest.py): one deployment's key.
    env["RADSENTRY_AUDIT__SIGNING_KEY_FILE"] = os.environ["RADSENTRY_AUDIT__SIGNING_KEY_FILE"]
    return env


def _wait(condition: Callable[[], bool], what: str, timeout: float = READY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(1)


@pytest.fixture(scope="module")
def live(pg_url: str, broker: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    engine = make_engine(pg_url)
    upgrade(engine)
    empty_tables(engine)
    workdir = tmp_path_factory.mktemp("live")
    kafka = kafka_topics(broker)
    env = _env(workdir / "data", pg_url, kafka)
    port = free_port()
    started = datetime.now(UTC)
    serve = subprocess.Popen(
        [RADSENTRY, "serve", "--port", str(port)],
        env=env,
        stdout=(workdir / "serve.log").open("w"),
        stderr=subprocess.STDOUT,
    )
    try:
        _wait(lambda: _ready(f"http://127.0.0.1:{port}"), "serve to be ready", timeout=90)
        simulate = subprocess.run(
            [
                RADSENTRY,
                "simulate",
                "--sites",
                "3",
                "--studies",
                "260",
                "--seed",
                "8",
                "--change-site",
                CHANGED,
                "--change-at",
                "120",
                "--scores",
                "score-model",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert simulate.returncode == 0, simulate.stderr[-3000:]
        _publish_invalid(kafka, 3)  # the dead-letter panels need some
        govern(engine)
        with running_prometheus([f"127.0.0.1:{port}"], workdir) as prometheus:
            _wait(
                lambda: (
                    bool(query(prometheus, f'radsentry_drift_detected{{site_id="{CHANGED}"}} == 1'))
                    and bool(query(prometheus, 'radsentry_performance_lower{metric="auroc"}'))
                ),
                "drift at the changed site and performance snapshots in Prometheus",
            )
            time.sleep(5)  # a few more scrapes, so rates over the last minute have two points
            yield Live(prometheus, engine, started)
    finally:
        serve.send_signal(signal.SIGINT)
        try:
            serve.wait(60)
        except subprocess.TimeoutExpired:
            serve.kill()
        empty_tables(engine)
        engine.dispose()


def _publish_invalid(kafka: KafkaSettings, count: int) -> None:
    """Records no consumer can accept (not JSON): they go to the dead-letter topic."""
    producer = KafkaProducer(bootstrap_servers=kafka.bootstrap_servers)
    try:
        for number in range(count):
            producer.send(
                kafka.inference_topic, key=CHANGED.encode(), value=b"not an event %d" % number
            )
        producer.flush(30)
    finally:
        producer.close()


def _ready(base: str) -> bool:
    try:
        return httpx.get(f"{base}/readyz", timeout=5).status_code == 200
    except httpx.TransportError:
        return False


def all_queries() -> list[tuple[str, PanelQuery]]:
    return [
        (uid, found) for uid, model in sorted(build_all().items()) for found in panel_queries(model)
    ]


QUERIES = all_queries()


def _substitution(live: Live) -> Substitution:
    return Substitution(
        variables={"site": [CHANGED], "model": [MODEL], "finding": [FINDING]},
        time_from=live.started - timedelta(days=400),  # simulated studies span months
        time_to=datetime.now(UTC) + timedelta(days=400),
        rate_interval="1m",
    )


@pytest.mark.parametrize(
    ("uid", "panel"),
    [q for q in QUERIES if q[1].kind == "prometheus"],
    ids=[f"{uid}:{q.panel_title}:{q.ref_id}" for uid, q in QUERIES if q.kind == "prometheus"],
)
def test_every_promql_panel_returns_a_result_for_the_changed_site(
    live: Live, uid: str, panel: PanelQuery
) -> None:
    expression = render(panel, _substitution(live))
    result = query(live.prometheus, expression)
    assert result, f"{uid} / {panel.panel_title}: no result for {expression}"
    if "site_id" in expression and CHANGED in expression:
        assert any(r["metric"].get("site_id") in (CHANGED, None) for r in result), result


@pytest.mark.parametrize(
    ("uid", "panel"),
    [q for q in QUERIES if q[1].kind == "postgres"],
    ids=[f"{uid}:{q.panel_title}:{q.ref_id}" for uid, q in QUERIES if q.kind == "postgres"],
)
def test_every_sql_panel_returns_rows_as_the_read_only_role(
    live: Live, uid: str, panel: PanelQuery
) -> None:
    statement = render(panel, _substitution(live))
    with live.engine.begin() as connection:
        connection.execute(text(f"SET LOCAL ROLE {GRAFANA_ROLE}"))
        rows = connection.exec_driver_sql(statement).all()
    assert rows, f"{uid} / {panel.panel_title}: no rows for {statement}"


def test_every_metric_a_dashboard_names_is_scraped(live: Live) -> None:
    """A metric named by a panel but never exposed is caught by name, not only by emptiness."""
    import re

    scraped = metric_names(live.prometheus)
    named = {
        name
        for _, found in QUERIES
        if found.kind == "prometheus"
        for name in re.findall(r"\b(radsentry_[a-z0-9_]+)", found.query)
    }
    assert named and named <= scraped, sorted(named - scraped)
