"""A real Prometheus server for the integration tests (the Debian package; `make test` installs it).

It scrapes the given targets every second into a throw-away TSDB and answers PromQL over its
HTTP API, so dashboard queries run exactly as Grafana would send them.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from monitor.service.broker import free_port
from tests.servers import wait_until_serving

STARTUP_TIMEOUT_S = 60.0


class PrometheusMissing(RuntimeError):
    pass


def prometheus_binary() -> str:
    found = shutil.which("prometheus")
    if found is None:
        raise PrometheusMissing(
            "the prometheus binary is not installed: `make test` installs the Debian package "
            "(apt-get install prometheus)"
        )
    return found


@contextmanager
def running_prometheus(targets: Sequence[str], workdir: Path) -> Iterator[str]:
    """Start Prometheus scraping ``targets`` (host:port, path /metrics) every second; yield its
    base URL; stop it at the end."""
    binary = prometheus_binary()
    port = free_port()
    config = workdir / "prometheus.yml"
    config.write_text(
        json.dumps(  # YAML is a superset of JSON
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "scrape_configs": [
                    {"job_name": "radsentry", "static_configs": [{"targets": list(targets)}]}
                ],
            }
        )
    )
    log = (workdir / "prometheus.log").open("w")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={workdir / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(
            f"{url}/-/ready",
            process,
            workdir / "prometheus.log",
            name="prometheus",
            timeout_s=STARTUP_TIMEOUT_S,
        )
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def query(url: str, promql: str) -> list[dict[str, Any]]:
    """An instant query's result vector (or matrix); raises on a PromQL error."""
    address = f"{url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    try:
        with urllib.request.urlopen(address, timeout=10) as response:
            body = json.load(response)
    except urllib.error.HTTPError as exc:  # 400: a bad expression; say which
        raise ValueError(f"{promql!r}: {exc.read().decode()[:500]}") from exc
    if body.get("status") != "success":
        raise ValueError(f"{promql!r}: {body}")
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def metric_names(url: str) -> set[str]:
    """Every metric name Prometheus has stored."""
    with urllib.request.urlopen(f"{url}/api/v1/label/__name__/values", timeout=10) as response:
        return set(json.load(response)["data"])
