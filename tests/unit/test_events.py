"""The event contract: what it accepts, what it refuses and how it says why."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from monitor.events import (
    ALLOWED_METADATA_KEYS,
    MAX_EVENT_BYTES,
    REDACTED,
    InferenceEvent,
    InvalidEvent,
    LabelEvent,
    RejectCode,
    parse_event,
    to_json,
)
from monitor.schemas import SCHEMA_FILES, render
from tests.factories import inference_event, label_event

SCHEMA_DIR = Path(__file__).parents[2] / "docs" / "schemas"


def _document(event: InferenceEvent | LabelEvent) -> dict[str, Any]:
    return orjson.loads(to_json(event))


def _reject(document: dict[str, Any] | bytes, topic: str | None = None) -> InvalidEvent:
    raw = document if isinstance(document, bytes) else orjson.dumps(document)
    with pytest.raises(InvalidEvent) as caught:
        parse_event(raw, topic)
    return caught.value


def test_round_trip_is_lossless() -> None:
    for event in (inference_event(3), label_event(3)):
        assert parse_event(to_json(event)) == event
    assert _document(inference_event(1))["schema"] == "inference-event/v1"


def test_event_time_is_normalised_to_utc() -> None:
    document = _document(inference_event(0))
    document["occurred_at"] = "2026-03-01T10:00:00+02:00"
    event = parse_event(orjson.dumps(document))
    assert event.occurred_at.isoformat() == "2026-03-01T08:00:00+00:00"
    document["occurred_at"] = "2026-03-01T10:00:00"
    assert "occurred_at" in _reject(document).reason


def test_unknown_schema_version_is_named() -> None:
    error = _reject({**_document(inference_event(0)), "schema": "inference-event/v9"})
    assert error.code is RejectCode.UNKNOWN_SCHEMA
    assert "'inference-event/v9'" in error.reason and "inference-event/v1" in error.reason
    assert _reject({"event_id": "x"}).code is RejectCode.UNKNOWN_SCHEMA


@pytest.mark.parametrize(
    ("mutate", "code", "fragment"),
    [
        (lambda d: d.pop("site_id"), RejectCode.INVALID, "site_id: Field required"),
        (lambda d: d.update(site_id=17), RejectCode.INVALID, "site_id"),
        (lambda d: d.update(extra_field=1), RejectCode.INVALID, "extra_field: unexpected field"),
        (
            lambda d: d["prediction"]["scores"].update(lesion=1.2),
            RejectCode.INVALID,
            "prediction.scores.lesion",
        ),
        (
            lambda d: d["prediction"]["scores"].update(lesion=-0.1),
            RejectCode.INVALID,
            "prediction.scores.lesion",
        ),
        (lambda d: d["prediction"].update(scores={}), RejectCode.INVALID, "prediction.scores"),
        (
            lambda d: d["metadata"].update(PatientID="MRN-1"),
            RejectCode.INVALID,
            "metadata.PatientID: not an allowed metadata key",
        ),
        (lambda d: d["metadata"].update(PatientSex="X"), RejectCode.INVALID, "PatientSex"),
        (lambda d: d.update(study_key="1.2.840.10008.1.2.3.4"), RejectCode.INVALID, "study_key"),
        (
            lambda d: d.update(dicom_uri="https://pacs/studies/1.2.840.113619.2.55.3.1/series"),
            RejectCode.INVALID,
            "looks like a DICOM UID",
        ),
        (lambda d: d.update(dicom_uri="smb://share/x.dcm"), RejectCode.INVALID, "dicom_uri"),
        (lambda d: d.update(event_id="not-a-uuid"), RejectCode.INVALID, "event_id"),
    ],
)
def test_invalid_fields_are_refused_with_a_precise_reason(
    mutate: Any, code: RejectCode, fragment: str
) -> None:
    document = _document(inference_event(0))
    mutate(document)
    error = _reject(document)
    assert error.code is code
    assert fragment in error.reason


def test_non_finite_numbers_are_refused() -> None:
    nan = to_json(inference_event(0)).replace(b'"lesion":0.3', b'"lesion":NaN')
    assert "NaN" in _reject(nan).reason
    inf = to_json(inference_event(0)).replace(b'"mean":1000.0', b'"mean":-Infinity')
    assert _reject(inf).code is RejectCode.NOT_JSON
    huge = to_json(inference_event(0)).replace(b'"mean":1000.0', b'"mean":1e999')
    assert "infinity" in _reject(huge).reason


def test_oversize_garbage_and_wrong_topic() -> None:
    assert _reject(b"x" * (MAX_EVENT_BYTES + 1)).code is RejectCode.OVERSIZE
    assert _reject(b"\xff\xfe").code is RejectCode.NOT_JSON
    assert _reject(b"[1, 2]").code is RejectCode.NOT_JSON
    error = _reject(to_json(label_event(0)), "inference-event")
    assert error.code is RejectCode.WRONG_TOPIC


def test_labels_must_be_integers_zero_or_one() -> None:
    document = _document(label_event(0))
    assert "labels" in _reject({**document, "labels": {"lesion": True}}).reason
    assert "labels.lesion" in _reject({**document, "labels": {"lesion": 2}}).reason
    assert "source" in _reject({**document, "source": "guess"}).reason


def test_reasons_and_redactions_never_carry_the_offending_values() -> None:
    document = _document(inference_event(0))
    document["metadata"]["PatientName"] = "Doe^Jane"
    document["metadata"]["Doe^Jane 1960-01-01"] = "x"
    document["study_key"] = "1.2.826.0.1.3680043.8.498.1"
    error = _reject(document)
    assert "Doe" not in error.reason and "1.2.826" not in error.reason
    assert error.redacted is not None
    text = json.dumps(error.redacted)
    assert "Doe^Jane" not in text.replace('"Doe^Jane 1960-01-01"', "") and "1.2.826" not in text
    assert error.redacted["metadata"]["PatientName"] == REDACTED
    assert error.redacted["site_id"] == "site-01"  # valid fields are kept for replay


@given(st.dictionaries(st.text(min_size=1, max_size=20), st.text(max_size=20), max_size=5))
def test_only_allowlisted_metadata_keys_pass(metadata: dict[str, str]) -> None:
    document = _document(inference_event(0))
    document["metadata"] = metadata
    try:
        event = parse_event(orjson.dumps(document))
    except InvalidEvent:
        return
    assert set(event.metadata.model_dump(exclude_none=True)) <= ALLOWED_METADATA_KEYS


@pytest.mark.parametrize("name", sorted(SCHEMA_FILES))
def test_checked_in_json_schemas_match_the_models(name: str) -> None:
    assert (SCHEMA_DIR / name).read_bytes() == render(SCHEMA_FILES[name]), (
        "docs/schemas is stale: run `make schemas`"
    )


PHI_TEXT = [
    ("ManufacturerModelName", "DOE^JOHN", "person name"),
    ("SoftwareVersions", "1.2.826.0.1.3680043.8.498.10293847561029384756", "DICOM UID"),
    ("BodyPartExamined", "19610407", "date"),
    ("ConvolutionKernel", "00123456", "identifier number"),
    ("Manufacturer", "2026-04-07T09:30:00", "date"),
]


@pytest.mark.parametrize(("field", "value", "rule"), PHI_TEXT)
def test_metadata_text_in_an_identifiers_form_is_refused_as_phi(
    field: str, value: str, rule: str
) -> None:
    document = _document(inference_event(0))
    document["metadata"][field] = value
    error = _reject(document)
    assert error.code is RejectCode.PHI
    assert error.reason.startswith(f"metadata.{field}: looks like ") and rule in error.reason
    assert "; " not in error.reason  # one problem, not also the union's other branch
    assert value not in error.reason
    assert error.redacted is not None and value not in json.dumps(error.redacted)
    assert error.redacted["metadata"][field] == REDACTED
    assert error.redacted["metadata"]["Manufacturer" if field != "Manufacturer" else "KVP"]


def test_one_identifier_in_a_list_refuses_the_event_and_redacts_the_field() -> None:
    document = _document(inference_event(0))
    document["metadata"]["SoftwareVersions"] = ["VA10", "MRN 00123456"]
    error = _reject(document)
    assert error.code is RejectCode.PHI
    assert error.reason == (
        "metadata.SoftwareVersions.1: looks like an identifier number (six or more digits in a "
        "row), not allowed in metadata"
    )
    assert error.redacted is not None and "00123456" not in json.dumps(error.redacted)


def test_phi_outranks_other_problems_in_the_code() -> None:
    document = _document(inference_event(0))
    document["metadata"]["BodyPartExamined"] = "DOE^JOHN"
    document["site_id"] = "not a valid id"
    error = _reject(document)
    assert error.code is RejectCode.PHI and "site_id" in error.reason


def test_real_device_strings_are_accepted_in_every_text_field() -> None:
    document = _document(inference_event(0))
    document["metadata"].update(
        Manufacturer="Carestream Health",
        ManufacturerModelName="DRX-Revolution",
        SoftwareVersions=["VXvue 1.0.1.2", "4.30.0.12", "5.7.412.7005"],
        ConvolutionKernel=["B30f", "FC13", "STANDARD"],
        BodyPartExamined="CHEST",
        ViewPosition="PA",
        PhotometricInterpretation="MONOCHROME2",
    )
    event = parse_event(orjson.dumps(document))
    assert isinstance(event, InferenceEvent)
    assert event.metadata.SoftwareVersions == ["VXvue 1.0.1.2", "4.30.0.12", "5.7.412.7005"]
