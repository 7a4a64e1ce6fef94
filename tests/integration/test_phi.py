"""No PHI reaches the database, logs, metrics or the dead-letter topic.

A DICOM file full of identifying values goes through the real edge extractor, the real broker
and the real consumer into PostgreSQL; a malicious record that smuggles the same values past the
extractor goes to the dead-letter topic. Then every place RadSentry writes is searched.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import orjson
import pydicom
import pytest
from fastapi.testclient import TestClient
from prometheus_client import generate_latest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from sqlalchemy import Engine, text
from typer.testing import CliRunner

from monitor.dicom import extract_features
from monitor.events import InferenceEvent, Prediction, to_json
from monitor.service.api import create_app
from monitor.service.cli import app
from monitor.service.kafka import make_producer
from monitor.service.models import Base
from monitor.service.settings import KafkaSettings, Settings
from tests.auth_helpers import TEST_AUTH
from tests.integration.helpers import ingest_until, read_all, send

pytestmark = pytest.mark.integration

STUDY_UID = "1.2.826.0.1.3680043.8.498.10293847561029384756"
PHI = {
    "PatientName": "Doe^Jane^Quincy",
    "PatientID": "MRN-99887766",
    "PatientBirthDate": "19610407",
    "InstitutionName": "St Example General Hospital",
    "InstitutionAddress": "12 Harbour Road, Exampletown",
    "StationName": "XRAYROOM7",
    "OperatorsName": "Tech^Tom",
    "ReferringPhysicianName": "House^Gregory",
    "AccessionNumber": "ACC20260407001",
    "StudyDate": "20260407",
    "StudyInstanceUID": STUDY_UID,
    "SeriesInstanceUID": "1.2.826.0.1.3680043.8.498.56473829105647382910",
    "SOPInstanceUID": "1.2.826.0.1.3680043.8.498.99887766554433221100",
}
SITE_KEY = b"test-site-secret-of-at-least-32-bytes"  # shorter keys are refused


def _phi_dicom(path: Path) -> Path:
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.file_meta.MediaStorageSOPInstanceUID = PHI["SOPInstanceUID"]
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    for keyword, value in PHI.items():
        setattr(ds, keyword, value)
    ds.FrameOfReferenceUID = generate_uid()
    ds.Modality = "DX"
    ds.Manufacturer = "ACME Imaging"
    ds.PatientSex = "F"
    ds.PatientAge = "064Y"
    ds.KVP = 110
    ds.Rows, ds.Columns = 64, 64
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    pixels = np.random.default_rng(0).integers(0, 4096, (64, 64), dtype=np.uint16)
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def _database_text(engine: Engine) -> str:
    with engine.connect() as connection:
        return "\n".join(
            str(row)
            for table in Base.metadata.sorted_tables
            for row in connection.execute(
                text(f'SELECT row_to_json(t)::text FROM "{table.name}" t')
            )
        )


def _assert_no_phi(where: str, content: str | bytes) -> None:
    haystack = content.decode(errors="replace") if isinstance(content, bytes) else content
    for keyword, value in PHI.items():
        assert value not in haystack, f"{keyword} leaked into {where}"
    assert "Doe" not in haystack and "99887766" not in haystack, f"PHI fragment in {where}"


def test_no_phi_in_database_logs_metrics_or_dead_letters(
    pg_engine: Engine,
    kafka_settings: KafkaSettings,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = _phi_dicom(tmp_path / "study.dcm")
    features = extract_features(path, SITE_KEY)
    event = InferenceEvent(
        event_id=uuid.uuid4(),
        site_id="site-phi",
        model_name="cxr-lesion",
        model_version="1.0.0",
        occurred_at=datetime(2026, 4, 7, 9, 30, tzinfo=UTC),
        study_key=features.study_key,
        modality=features.modality,
        metadata=features.metadata,
        pixel_stats=features.pixel_stats,
        dicom_uri=f"file:///edge/site-phi/{features.study_key}.dcm",
        prediction=Prediction(scores={"lesion": 0.42}, threshold=0.5),
    )
    # A producer bug that bypasses the extractor: PHI in metadata and the raw UID as study key.
    smuggled = orjson.loads(to_json(event))
    smuggled["event_id"] = str(uuid.uuid4())
    smuggled["metadata"]["PatientName"] = PHI["PatientName"]
    smuggled["metadata"]["InstitutionName"] = PHI["InstitutionName"]
    smuggled["study_key"] = STUDY_UID
    smuggled["dicom_uri"] = f"https://pacs.example/studies/{STUDY_UID}"

    producer = make_producer(kafka_settings.bootstrap_servers, kafka_settings)
    send(producer, kafka_settings, [event])
    producer.send(kafka_settings.inference_topic, key=b"site-phi", value=orjson.dumps(smuggled))
    producer.flush()
    producer.close()

    stats = ingest_until(pg_engine, kafka_settings, lambda s: s.stored == 1 and s.dead_lettered)
    assert stats.dead_lettered == 1

    dead = read_all(
        kafka_settings.bootstrap_servers,
        kafka_settings.dlq_topic(kafka_settings.inference_topic),
        expected=1,
    )
    assert len(dead) == 1
    _assert_no_phi("the dead-letter value", dead[0].value)
    _assert_no_phi("the dead-letter headers", b"".join(v for _, v in dead[0].headers))
    _assert_no_phi("the database", _database_text(pg_engine))
    _assert_no_phi("the metrics", generate_latest())
    # The API's /metrics adds the database-backed families (alerts, candidates).
    with TestClient(create_app(Settings(auth=TEST_AUTH), engine=pg_engine)) as client:
        scraped = client.get("/metrics").text
    _assert_no_phi("the API's metrics", scraped)
    assert features.study_key not in scraped and str(event.event_id) not in scraped
    logs = capsys.readouterr()
    _assert_no_phi("the logs", logs.out + logs.err)
    assert "dead-lettered" in logs.out + logs.err  # the logs were captured, not silent

    # The edge command line prints features, never identifiers.
    monkeypatch.setenv("RADSENTRY_EDGE__HMAC_KEY", SITE_KEY.decode())
    monkeypatch.setenv("RADSENTRY_DATA_DIR", str(tmp_path / "data"))
    result = CliRunner().invoke(app, ["extract", str(path)])
    assert result.exit_code == 0, result.output
    assert features.study_key in result.output
    _assert_no_phi("the extract output", result.output)
