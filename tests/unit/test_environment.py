"""RADSENTRY_ variables that name no setting stop the process, by name, with the closest one."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from pydantic import ValidationError

from monitor.service.environment import (
    NOT_SETTINGS,
    Problem,
    environment_problems,
    is_service_link,
    setting_names,
    validation_problems,
)
from monitor.service.settings import Settings

REPOSITORY = Path(__file__).resolve().parents[2]


def test_every_field_at_every_depth_is_a_setting_and_groups_take_json() -> None:
    names = setting_names()
    for name in (
        "RADSENTRY_DATA_DIR",
        "RADSENTRY_AUTH__MODE",
        "RADSENTRY_DRIFT",
        "RADSENTRY_DRIFT__WINDOW__SIZE",
        "RADSENTRY_DRIFT__DETECTORS__ONLINE__DETECTOR__ERT",
        "RADSENTRY_PERFORMANCE__RULES__SENSITIVITY_FLOOR__FLOOR",
        "RADSENTRY_RETRAIN__JOB__TRAIN__DEVICE",
        "RADSENTRY_DRIFT__ALARM_OVERRIDES__KS__OPEN_AFTER",  # below a mapping: any key
    ):
        assert names.known(name), name
    assert names.exact["RADSENTRY_KAFKA__BOOTSTRAP_SERVERS"]  # a list: JSON
    assert names.exact["RADSENTRY_DRIFT__DETECTORS__MMD"]  # a group (or null): JSON
    assert not names.exact["RADSENTRY_API__PORT"]
    assert not names.exact["RADSENTRY_AUDIT__ANCHOR_DIR"]  # Path | None: plain text


@pytest.mark.parametrize(
    ("variable", "closest"),
    [
        ("RADSENTRY_AUTH_MODE", "RADSENTRY_AUTH__MODE"),  # the typo: one underscore
        ("RADSENTRY_DATABASE_URL", "RADSENTRY_DATABASE__URL"),
        ("radsentry_kafka__bootstrap_server", "RADSENTRY_KAFKA__BOOTSTRAP_SERVERS"),
        ("RADSENTRY_API_PORT", "RADSENTRY_API__PORT"),  # not a Kubernetes link: no tcp://
        ("RADSENTRY_EDGE__HMAC", "RADSENTRY_EDGE__HMAC_KEY"),
    ],
)
def test_an_unknown_variable_is_named_with_the_closest_setting(variable: str, closest: str) -> None:
    [problem] = environment_problems({variable: "8001", "PATH": "/usr/bin"})
    assert problem.variable == variable
    assert problem.reason == f"no such setting; did you mean {closest}?"


def test_a_name_like_no_setting_says_where_the_settings_are() -> None:
    [problem] = environment_problems({"RADSENTRY_XYZZY": "1"})
    assert problem.reason == "no such setting; see the README's settings table"


def test_ours_but_not_settings_and_kubernetes_service_links_pass() -> None:
    environ = dict.fromkeys(NOT_SETTINGS, "x") | {
        "RADSENTRY_API_SERVICE_HOST": "10.0.0.11",
        "RADSENTRY_API_SERVICE_PORT": "8000",
        "RADSENTRY_API_SERVICE_PORT_HTTP": "8000",
        "RADSENTRY_API_PORT": "tcp://10.0.0.11:8000",
        "RADSENTRY_API_PORT_8000_TCP": "tcp://10.0.0.11:8000",
        "RADSENTRY_API_PORT_8000_TCP_ADDR": "10.0.0.11",
        "RADSENTRY_CONSUMER_METRICS_PORT_9101_TCP_PROTO": "tcp",
        "RADSENTRY_DATA_DIR": "/var/lib/radsentry",
    }
    assert environment_problems(environ) == []
    assert not is_service_link("RADSENTRY_API_PORT", "8001")


def test_a_list_or_group_that_is_not_json_is_named() -> None:
    problems = environment_problems(
        {
            "RADSENTRY_KAFKA__BOOTSTRAP_SERVERS": "broker-7.site:9092",
            "RADSENTRY_DRIFT__WINDOW": '{"size": 300}',
            "RADSENTRY_DRIFT__DETECTORS__MMD": "null",
            "RADSENTRY_PERFORMANCE__SUBGROUP_FIELDS": "PatientSex,Modality",
        }
    )
    assert [p.variable for p in problems] == [
        "RADSENTRY_KAFKA__BOOTSTRAP_SERVERS",
        "RADSENTRY_PERFORMANCE__SUBGROUP_FIELDS",
    ]
    assert all(p.reason.startswith("not valid JSON") for p in problems)
    assert "broker-7" not in str(problems) and "PatientSex" not in str(problems)


def test_validation_errors_name_the_variable_and_never_the_value() -> None:
    with pytest.raises(ValidationError) as refused:
        Settings(
            auth={"local_secret": "hunter2-hunter2"},
            api={"port": "eighty"},
            drift={"window": {"size": 3, "min_size": 10}},
        )
    problems = {p.variable: p.reason for p in validation_problems(refused.value)}
    assert set(problems) == {
        "RADSENTRY_AUTH__LOCAL_SECRET",
        "RADSENTRY_API__PORT",
        "RADSENTRY_DRIFT__WINDOW",
    }
    assert problems["RADSENTRY_DRIFT__WINDOW"] == "min_size (10) exceeds size (3)"
    text = str(refused.value) + str(list(problems.values()))
    assert "hunter2" not in text and "eighty" not in text and "input_value" not in text


def test_a_problem_reads_as_one_line() -> None:
    line = str(Problem("RADSENTRY_AUTH_MODE", "no such setting; did you mean X?"))
    assert line == "RADSENTRY_AUTH_MODE: no such setting; did you mean X?"


DELIBERATE = {
    "RADSENTRY_NO_SUCH_TOKEN": "tests/integration/test_dashboards_push.py: a variable not set",
    "RADSENTRY_AUTH_MODE": "the issue's typo, refused in tests and docs/security.md",
    "RADSENTRY_API_PORT": "a typo, or a Kubernetes service link (docs/security.md)",
    "RADSENTRY_API_SERVICE_HOST": "a Kubernetes service link, passed (docs/security.md)",
    "RADSENTRY_API_PORT_8000_TCP_ADDR": "a Kubernetes service link, passed (docs/security.md)",
}
"""Names outside this file that are no setting on purpose (this file is full of them)."""


def test_every_radsentry_variable_the_repository_names_is_a_setting_or_allowed() -> None:
    """CI, the Makefile, the Dockerfile, the chart, the tests and the docs: none may trip the
    check (names ending in ``_`` are prefixes, as in ``RADSENTRY_DRIFT__*``)."""
    names = setting_names()
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    unknown: dict[str, str] = {}
    for relative in files:
        path = REPOSITORY / relative
        if path.suffix in {".png", ".whl", ".gz", ".dcm"} or not path.is_file():
            continue
        if path == Path(__file__).resolve():
            continue
        text = path.read_text(errors="replace")
        for name in re.findall(r"RADSENTRY_[A-Za-z0-9_]*", text):
            known = names.known(name.upper()) or name in NOT_SETTINGS
            if not (name.endswith("_") or known or name in DELIBERATE):
                unknown.setdefault(name, relative)
    assert unknown == {}
