"""``warnings_only``: the backtest's quiet block, and the configured level restored after it."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Literal

import pytest
import structlog
from structlog.testing import capture_logs

from monitor.service.logging import configure_logging, warnings_only
from monitor.service.settings import LoggingSettings


@pytest.fixture(autouse=True)
def _structlog_restored() -> Iterator[None]:
    """Later tests capture INFO lines: leave structlog as it was found."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


def test_info_lines_are_dropped_inside_the_block_and_logged_again_after_it() -> None:
    configure_logging(LoggingSettings(level="INFO"))
    log = structlog.get_logger("monitor.service.performance.store")  # made before the block
    with capture_logs() as logs:
        with warnings_only():
            log.info("performance alerts raised", site_id="site-02", count=1)
            log.warning("still shown")
        log.info("performance alerts raised", site_id="site-02", count=1)
    assert [entry["event"] for entry in logs] == ["still shown", "performance alerts raised"]


@pytest.mark.parametrize("level", ["DEBUG", "ERROR"])
def test_the_block_never_lowers_a_stricter_level_and_restores_any(
    level: Literal["DEBUG", "ERROR"],
) -> None:
    configure_logging(LoggingSettings(level=level))
    configured = structlog.get_logger().get_effective_level()
    with warnings_only():
        assert structlog.get_logger().get_effective_level() == max(configured, logging.WARNING)
    assert structlog.get_logger().get_effective_level() == configured


def test_the_demo_logs_its_routine_jobs_at_debug(capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 22: "performance refreshed" every 15 s scrolled the demo's approval block away.
    In the demo (``run_demo``'s configuration) the jobs' INFO lines are DEBUG lines: gone at
    INFO, shown as debug at DEBUG; their warnings, and other modules' INFO lines, still show."""
    from monitor.service.demo.run import ROUTINE_LOGGERS
    from monitor.service.performance.jobs import log as job_log

    assert "monitor.service.performance.jobs" in ROUTINE_LOGGERS
    configure_logging(LoggingSettings(level="INFO"), routine=ROUTINE_LOGGERS)
    job_log.info("performance refreshed", snapshots=3)
    job_log.warning("performance refresh slow")
    structlog.get_logger("monitor.service.ingest.consumer").info("ingestion started")
    shown = capsys.readouterr().err
    assert "performance refreshed" not in shown
    assert "performance refresh slow" in shown and "ingestion started" in shown

    configure_logging(LoggingSettings(level="DEBUG"), routine=ROUTINE_LOGGERS)
    job_log.info("performance refreshed", snapshots=3)
    [line] = [line for line in capsys.readouterr().err.splitlines() if "refreshed" in line]
    assert "debug" in line

    configure_logging(LoggingSettings(level="INFO"))  # outside the demo: INFO as before
    job_log.info("performance refreshed", snapshots=3)
    assert "performance refreshed" in capsys.readouterr().err


def test_a_metadata_refresh_cancelled_by_close_is_not_logged_as_an_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Seen at a clean Ctrl-C of `make run` in a terminal: "ERROR:kafka.cluster:Metadata
    refresh: failed Cancelled", kafka-python's own close() cancelling its refresh. Dropped;
    a refresh that really failed still shows."""
    from kafka.errors import Cancelled, KafkaConnectionError

    configure_logging(LoggingSettings(level="INFO"))
    cluster = logging.getLogger("kafka.cluster")
    with caplog.at_level(logging.ERROR, logger="kafka.cluster"):
        cluster.error("Metadata refresh: failed %s", Cancelled())
        cluster.error("Metadata refresh: failed %s", KafkaConnectionError("broker down"))
    assert [r.getMessage() for r in caplog.records] == [
        "Metadata refresh: failed KafkaConnectionError: broker down"
    ]
