"""Event contract: the typed records that travel on Kafka (inference v1 and v2, label v1).

Every record carries ``schema`` ("<type>/v<version>") so a consumer rejects versions it does not
know. Models are strict about shape (no extra fields, finite numbers, bounded strings) because the
contract is also the PHI boundary: only allowlisted DICOM keywords and a pseudonymous ``study_key``
may cross it. ``docs/events.md`` describes the contract; ``docs/schemas/`` holds the JSON Schemas
generated from these models (a test keeps them in sync).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Final, Literal
from uuid import UUID

import orjson
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError

from monitor.phi import DESCRIPTIONS, looks_like_uid, screen_text

INFERENCE_SCHEMA: Final = "inference-event/v1"
INFERENCE_SCHEMA_V2: Final = "inference-event/v2"
LABEL_SCHEMA: Final = "label-event/v1"
KNOWN_SCHEMAS: Final = (INFERENCE_SCHEMA, INFERENCE_SCHEMA_V2, LABEL_SCHEMA)
EMBEDDING_MAX_LENGTH: Final = 32
"""The longest embedding an event may carry. The bound is part of the PHI argument
(docs/events.md, "Embeddings"): a few dozen projected features cannot hold an image."""
MAX_EVENT_BYTES: Final = 1_000_000

Identifier = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
"""Site ids, model names and versions: short, printable, safe as metric labels."""

StudyKey = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
"""HMAC-SHA256 (hex) of the StudyInstanceUID under the site's secret: never the UID itself."""

FindingName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
Probability = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
Number = Annotated[float, Field(allow_inf_nan=False)]
PHI_ERROR: Final = "phi_suspected"
"""The pydantic error type of a text value refused by :func:`monitor.phi.screen_text`."""


def _no_phi(value: str) -> str:
    rule = screen_text(value)
    if rule is not None:
        # The message names the rule, never the value (reasons go to logs and DLQ headers).
        raise PydanticCustomError(
            PHI_ERROR, "looks like {form}, not allowed in metadata", {"form": DESCRIPTIONS[rule]}
        )
    return value


Text = Annotated[str, StringConstraints(max_length=64), AfterValidator(_no_phi)]
"""DICOM LO/SH/CS values are at most 64 characters; longer strings are free text, not metadata.
A value in the form of a person name, UID, date or identifier number is refused (monitor/phi.py)."""

NumberOrList = Annotated[
    Number | Annotated[list[Number], Field(max_length=16)], Field(union_mode="left_to_right")
]
TextOrList = Annotated[
    Text | Annotated[list[Text], Field(max_length=16)], Field(union_mode="left_to_right")
]

AGE_BANDS: Final = (*(f"{lo}-{lo + 9}" for lo in range(0, 90, 10)), "90+")
"""Ten-year bands; ages over 89 are pooled as HIPAA Safe Harbor requires."""

_NON_FINITE = re.compile(rb"[:\[,]\s*-?(?:NaN|Infinity)\b")


def _utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


UtcDatetime = Annotated[AwareDatetime, AfterValidator(_utc)]


def _no_dicom_uid(uri: str | None) -> str | None:
    # A WADO-RS URL normally embeds Study/Series/SOP Instance UIDs, which are identifiers under
    # DICOM PS3.15 Annex E. Edges must hand out an opaque locator (e.g. a path named by study_key
    # or a de-identifying gateway's URL) instead.
    if uri is not None and looks_like_uid(uri):
        raise ValueError("contains what looks like a DICOM UID; use an opaque locator")
    return uri


DicomUri = Annotated[
    str,
    StringConstraints(max_length=512, pattern=r"^(file|https?)://"),
    AfterValidator(_no_dicom_uid),
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class DicomMetadata(_Strict):
    """The allowlisted DICOM attributes that drive drift, keyed by DICOM keyword.

    Nothing outside this list leaves the hospital edge: no names, IDs, dates, UIDs, institution,
    station or operator names (DICOM PS3.15 Annex E Basic Profile). ``PatientAgeBand`` replaces
    ``PatientAge``.
    """

    Modality: Text | None = None
    Manufacturer: TextOrList | None = None
    ManufacturerModelName: TextOrList | None = None
    SoftwareVersions: TextOrList | None = None
    KVP: NumberOrList | None = None
    XRayTubeCurrent: NumberOrList | None = None
    Exposure: NumberOrList | None = None
    ExposureTime: NumberOrList | None = None
    ConvolutionKernel: TextOrList | None = None
    SliceThickness: NumberOrList | None = None
    PixelSpacing: NumberOrList | None = None
    ImagerPixelSpacing: NumberOrList | None = None
    Rows: NumberOrList | None = None
    Columns: NumberOrList | None = None
    BitsStored: NumberOrList | None = None
    PhotometricInterpretation: Text | None = None
    ViewPosition: TextOrList | None = None
    BodyPartExamined: TextOrList | None = None
    WindowCenter: NumberOrList | None = None
    WindowWidth: NumberOrList | None = None
    RescaleSlope: NumberOrList | None = None
    RescaleIntercept: NumberOrList | None = None
    PatientSex: Literal["M", "F", "O"] | None = None
    PatientAgeBand: Literal[AGE_BANDS] | None = None  # type: ignore[valid-type]


ALLOWED_METADATA_KEYS: Final = frozenset(DicomMetadata.model_fields)

PixelStatName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,31}$")]


class Prediction(_Strict):
    scores: Annotated[dict[FindingName, Probability], Field(min_length=1, max_length=64)]
    threshold: Probability | None = None


class InferenceEvent(_Strict):
    """One study scored by a deployed model, as published by the inference service."""

    schema_id: Literal["inference-event/v1"] = Field(INFERENCE_SCHEMA, alias="schema")
    event_id: UUID
    site_id: Identifier
    model_name: Identifier
    model_version: Identifier
    occurred_at: UtcDatetime
    study_key: StudyKey
    modality: Annotated[str, StringConstraints(pattern=r"^[A-Z0-9]{1,16}$")]
    metadata: DicomMetadata = DicomMetadata()
    pixel_stats: Annotated[dict[PixelStatName, Number], Field(max_length=64)] | None = None
    dicom_uri: DicomUri | None = None
    prediction: Prediction


EmbeddingId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._@/:+-]{0,127}$")]
"""Which projection produced an embedding: model name, version and projection fingerprint."""

Embedding = Annotated[list[Number], Field(min_length=1, max_length=EMBEDDING_MAX_LENGTH)]


class InferenceEventV2(InferenceEvent):
    """v1 plus the deployed model's own view of the image: ``embedding`` is a projection (PCA)
    of the model's penultimate features, at most :data:`EMBEDDING_MAX_LENGTH` finite numbers,
    and ``embedding_id`` names the projection (required with an embedding). A subclass, so
    every consumer of :class:`InferenceEvent` takes a v2 event unchanged."""

    # The override narrows the schema literal to this version; mypy sees a changed type.
    schema_id: Literal["inference-event/v2"] = Field(  # type: ignore[assignment]
        INFERENCE_SCHEMA_V2, alias="schema"
    )
    embedding: Embedding | None = None
    embedding_id: EmbeddingId | None = Field(None, validate_default=True)

    @field_validator("embedding_id", mode="after")
    @classmethod
    def _embedding_is_identified(cls, value: str | None, info: ValidationInfo) -> str | None:
        # Runs after ``embedding`` (declared first); an invalid embedding is not in info.data.
        if value is None and info.data.get("embedding") is not None:
            raise PydanticCustomError(
                "embedding_id_missing", "required when embedding is present (which projection)"
            )
        return value


class LabelSource(StrEnum):
    RADIOLOGIST = "radiologist"
    PATHOLOGY = "pathology"
    CONSENSUS = "consensus"
    OTHER = "other"


class LabelEvent(_Strict):
    """Ground truth for a study, arriving days or weeks after its inference event."""

    schema_id: Literal["label-event/v1"] = Field(LABEL_SCHEMA, alias="schema")
    event_id: UUID
    site_id: Identifier
    model_name: Identifier
    study_key: StudyKey
    occurred_at: UtcDatetime
    labels: Annotated[dict[FindingName, Literal[0, 1]], Field(min_length=1, max_length=64)]
    source: LabelSource

    @field_validator("labels", mode="before")
    @classmethod
    def _reject_booleans(cls, value: Any) -> Any:
        # JSON true/false would otherwise pass as 1/0; labels are integers by contract.
        if isinstance(value, dict) and any(isinstance(v, bool) for v in value.values()):
            raise ValueError("labels must be the integers 0 or 1, not booleans")
        return value


Event = InferenceEvent | LabelEvent
EVENT_MODELS: Final[dict[str, type[InferenceEvent] | type[LabelEvent]]] = {
    INFERENCE_SCHEMA: InferenceEvent,
    INFERENCE_SCHEMA_V2: InferenceEventV2,
    LABEL_SCHEMA: LabelEvent,
}


class RejectCode(StrEnum):
    """Why a record was refused; a bounded set, so it is safe as a metric label."""

    OVERSIZE = "oversize"
    NOT_JSON = "not_json"
    UNKNOWN_SCHEMA = "unknown_schema"
    WRONG_TOPIC = "wrong_topic"
    INVALID = "invalid"
    PHI = "phi"
    """A metadata text value in the form of an identifier (monitor/phi.py); also invalid."""


class InvalidEvent(ValueError):
    """A record that does not satisfy the contract.

    ``reason`` is human-readable and names fields, never their values, so it is safe to log and
    to put in dead-letter headers. ``redacted`` is the parsed record with every offending value
    replaced, or None when nothing could be parsed safely.
    """

    def __init__(self, code: RejectCode, reason: str, redacted: dict[str, Any] | None = None):
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.redacted = redacted


REDACTED: Final = "[redacted]"


def to_json(event: Event) -> bytes:
    """Serialise an event exactly as it goes on the wire."""
    return orjson.dumps(event.model_dump(mode="json", by_alias=True, exclude_none=True))


def parse_event(raw: bytes, expected_schema: str | None = None) -> Event:
    """Decode and validate one wire record, or raise :class:`InvalidEvent` saying why.

    ``expected_schema`` is the event type a topic carries ("inference-event" or "label-event");
    a label event published on the inference topic is refused rather than silently stored.
    """
    if len(raw) > MAX_EVENT_BYTES:
        raise InvalidEvent(
            RejectCode.OVERSIZE, f"record is {len(raw):,} bytes; the limit is {MAX_EVENT_BYTES:,}"
        )
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if _NON_FINITE.search(raw):
            reason = "NaN and Infinity are not valid JSON numbers; every number must be finite"
        else:
            reason = f"not valid UTF-8 JSON ({exc.msg})"
        raise InvalidEvent(RejectCode.NOT_JSON, reason) from None
    if not isinstance(document, dict):
        raise InvalidEvent(RejectCode.NOT_JSON, "record is JSON but not an object")
    schema = document.get("schema")
    model = EVENT_MODELS.get(schema) if isinstance(schema, str) else None
    if model is None or not isinstance(schema, str):
        shown = repr(schema) if isinstance(schema, str) and len(schema) <= 40 else "missing/invalid"
        raise InvalidEvent(
            RejectCode.UNKNOWN_SCHEMA,
            f"unknown schema {shown}; this consumer knows {', '.join(KNOWN_SCHEMAS)}",
        )
    if expected_schema is not None and not schema.startswith(expected_schema + "/"):
        raise InvalidEvent(
            RejectCode.WRONG_TOPIC,
            f"schema {schema} is not accepted on a topic of {expected_schema} records",
        )
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        phi = any(error["type"] == PHI_ERROR for error in exc.errors())
        code = RejectCode.PHI if phi else RejectCode.INVALID
        raise InvalidEvent(code, describe_errors(exc), redact(document, exc)) from None


_SAFE_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")


def _location(loc: tuple[int | str, ...]) -> str:
    # A dictionary key chosen by the producer could itself carry PHI; show only key-like names.
    parts = [str(p) if isinstance(p, int) or _SAFE_KEY.match(p) else "<key>" for p in loc]
    return ".".join(parts) or "<record>"


def describe_errors(exc: ValidationError) -> str:
    """One line per problem, naming the field and the rule, never the offending value."""
    errors = exc.errors(include_input=False, include_url=False)
    lines = []
    for error in _without_other_branches(errors):
        loc = tuple(p for p in error["loc"] if not _is_union_branch(p))
        if error["type"] == "extra_forbidden" and loc[:1] == ("metadata",):
            message = "not an allowed metadata key (see the allowlist in docs/events.md)"
        elif error["type"] == "extra_forbidden":
            message = "unexpected field"
        else:
            message = error["msg"]
        lines.append(f"{_location(loc)}: {message}")
    return "; ".join(dict.fromkeys(lines))


_WRONG_BRANCH: Final = frozenset({"string_type", "list_type"})


def _without_other_branches(errors: list[ErrorDetails]) -> list[ErrorDetails]:
    """Drop "should be a valid string/list" from a text-or-list field when its other branch
    says what is actually wrong ("Manufacturer: looks like a date", not also "should be a list")."""

    def field(error: ErrorDetails) -> tuple[int | str, ...]:
        loc = error["loc"]
        branch = next((i for i, p in enumerate(loc) if _is_union_branch(p)), len(loc))
        return tuple(loc[:branch])

    explained = {
        field(e) for e in errors if e["type"] not in _WRONG_BRANCH and field(e) != e["loc"]
    }
    return [e for e in errors if not (e["type"] in _WRONG_BRANCH and field(e) in explained)]


def _is_union_branch(part: int | str) -> bool:
    # pydantic puts the tried union member ("float", "list[...]", "function-after[...]") in loc.
    return isinstance(part, str) and ("[" in part or part in {"float", "str", "int"})


def redact(document: dict[str, Any], exc: ValidationError) -> dict[str, Any]:
    """Copy of ``document`` with the value at every failing location replaced by a marker.

    Valid fields are PHI-free by construction (allowlisted keys, pseudonymous study key), so what
    remains is safe to keep in a dead-letter topic for inspection and replay.
    """
    copy: dict[str, Any] = orjson.loads(orjson.dumps(document))
    for error in exc.errors(include_input=False, include_url=False):
        loc = [p for p in error["loc"] if not _is_union_branch(p)]
        _replace(copy, loc)
    return copy


def _replace(node: Any, loc: list[int | str]) -> None:
    """Replace the value at ``loc`` (a pydantic error location) when the path exists."""
    if not loc:
        return
    *parents, last = loc
    for part in parents:
        if not _holds(node, part):
            return
        node = node[part]
    if _holds(node, last):
        node[last] = REDACTED


def _holds(node: Any, part: int | str) -> bool:
    if isinstance(node, dict):
        return part in node
    return isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
