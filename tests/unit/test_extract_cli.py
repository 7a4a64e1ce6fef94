"""`radsentry extract` on real DICOM files with identifiers in their text fields: the fields are
dropped and named, the values and the input paths never written."""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from monitor.dicom import study_key_for
from monitor.service.cli import app
from monitor.service.ingest.edge import file_key_for
from tests.phi_files import CLEAN, HOSTILE, NAME_IN_PATH, SECRETS, STUDY_UID, write_files

SITE_KEY = "unit-test-site-key-of-at-least-32-bytes"
runner = CliRunner()


@pytest.fixture(autouse=True)
def _settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RADSENTRY_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("RADSENTRY_EDGE__HMAC_KEY", SITE_KEY)


def _lines(stdout: str) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in stdout.splitlines()]


def test_identifier_text_is_dropped_and_named_never_written(tmp_path: Path) -> None:
    clean, hostile = write_files(tmp_path)
    result = runner.invoke(app, ["extract", str(clean), *map(str, hostile.values())])
    assert result.exit_code == 0, result.output
    lines = _lines(result.stdout)
    assert lines[0]["phi_dropped"] == {}
    assert {k: lines[0]["metadata"][k] for k in CLEAN} == CLEAN  # type: ignore[index]
    for line, case in zip(lines[1:], HOSTILE.values(), strict=True):
        assert line["phi_dropped"] == {case.keyword: case.rule.value}
        assert case.keyword not in line["metadata"]  # type: ignore[operator]
    assert "5 text fields dropped as possible PHI" in result.stderr
    assert "ManufacturerModelName 1" in result.stderr
    for written in (result.stdout, result.stderr):
        assert NAME_IN_PATH not in written and str(tmp_path) not in written
        assert '"file"' not in written
        for secret in SECRETS:
            assert secret not in written, secret


def test_file_key_matches_the_path_it_was_computed_from(tmp_path: Path) -> None:
    clean, hostile = write_files(tmp_path)
    result = runner.invoke(app, ["extract", "--file-key", str(clean.parent)])
    assert result.exit_code == 0, result.output
    walked = sorted([clean, *hostile.values()])
    keys = [line["file_key"] for line in _lines(result.stdout)]
    assert keys == [file_key_for(path, SITE_KEY.encode()) for path in walked]
    assert len(set(keys)) == len(keys)


def test_a_file_key_is_never_a_study_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A file named exactly by its StudyInstanceUID: an HMAC under the site key itself would give
    # the study key, and so link the output line to the events of that study.
    clean, _ = write_files(tmp_path)
    monkeypatch.chdir(clean.parent)
    os.rename(clean, STUDY_UID)
    result = runner.invoke(app, ["extract", "--file-key", STUDY_UID])
    assert result.exit_code == 0, result.output
    (line,) = _lines(result.stdout)
    assert line["study_key"] == study_key_for(STUDY_UID, SITE_KEY.encode())
    assert line["file_key"] == file_key_for(STUDY_UID, SITE_KEY.encode()) != line["study_key"]


def test_error_lines_carry_no_path(tmp_path: Path) -> None:
    missing = tmp_path / NAME_IN_PATH / "DOE^JOHN.dcm"
    result = runner.invoke(app, ["extract", "--file-key", str(missing)])
    assert result.exit_code == 1
    (line,) = _lines(result.stdout)
    assert line == {
        "file_key": file_key_for(missing, SITE_KEY.encode()),
        "error": "UnreadableFileError",
        "message": "cannot read the file: No such file or directory",
    }
    assert "DOE" not in result.stdout + result.stderr


def test_file_key_needs_a_key() -> None:
    with pytest.raises(ValueError, match="site_key is empty"):
        file_key_for("x.dcm", b"")
