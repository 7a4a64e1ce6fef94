"""Allowlisted DICOM header metadata and the pseudonymous study key.

Only the keywords of :class:`monitor.events.DicomMetadata` are read; everything else in the data
set (names, IDs, dates, UIDs, institution, station and operator names: DICOM PS3.15 Annex E) is
never touched here, so it cannot leak by accident. ``PatientAge`` is read only to derive a
ten-year band. Allowlisted text that has the form of an identifier (a ``^`` name, a UID, a date, six
or more digits: :mod:`monitor.phi`) is dropped, and :func:`screen_metadata` says which fields.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from pydantic import ValidationError
from pydicom import Dataset
from pydicom.multival import MultiValue

from monitor.events import DicomMetadata
from monitor.phi import PhiRule, screen_text

NUMERIC_KEYS: Final = frozenset(
    {
        "KVP", "XRayTubeCurrent", "Exposure", "ExposureTime", "SliceThickness", "PixelSpacing",
        "ImagerPixelSpacing", "Rows", "Columns", "BitsStored", "WindowCenter", "WindowWidth",
        "RescaleSlope", "RescaleIntercept",
    }
)  # fmt: skip
TEXT_KEYS: Final = frozenset(
    {
        "Modality", "Manufacturer", "ManufacturerModelName", "SoftwareVersions",
        "ConvolutionKernel", "PhotometricInterpretation", "ViewPosition", "BodyPartExamined",
    }
)  # fmt: skip
DERIVED_KEYS: Final = frozenset({"PatientSex", "PatientAgeBand"})

MAX_ITEMS: Final = 16
MAX_TEXT: Final = 64

# Where enhanced multi-frame objects keep an attribute when it is not at the top level:
# (functional group macro sequence, keyword) inside SharedFunctionalGroupsSequence[0].
_SHARED_GROUP_HOME: Final = {
    "PixelSpacing": "PixelMeasuresSequence",
    "SliceThickness": "PixelMeasuresSequence",
    "RescaleSlope": "PixelValueTransformationSequence",
    "RescaleIntercept": "PixelValueTransformationSequence",
    "WindowCenter": "FrameVOILUTSequence",
    "WindowWidth": "FrameVOILUTSequence",
}

_AGE = re.compile(r"^(\d{1,3})([DWMY])$")
_DAYS_PER_UNIT: Final = {"D": 1.0, "W": 7.0, "M": 365.25 / 12, "Y": 365.25}
_PAD: Final = " \t\r\n\x00"

Scalar = float | str
Value = Scalar | list[float] | list[str]


def study_key_for(study_instance_uid: str, site_key: bytes) -> str:
    """The pseudonymous key of a study: HMAC-SHA256 of its StudyInstanceUID, as 64 hex chars.

    A plain hash would not do: UIDs have a guessable structure (an organisation root followed by
    dates, device serials and counters), so anyone holding the hash could enumerate candidate
    UIDs and confirm a study. The site's secret key makes the mapping unguessable without it,
    while still letting the site join labels to inferences. Padding (spaces, NULs) is stripped
    first so that every producer at a site derives the same key for the same study.
    """
    uid = study_instance_uid.strip(_PAD)
    if not uid:
        raise ValueError("study_instance_uid is empty")
    if not site_key:
        raise ValueError("site_key is empty; an unkeyed hash of a UID is not a pseudonym")
    return hmac.new(site_key, uid.encode("ascii", "replace"), hashlib.sha256).hexdigest()


@dataclass(frozen=True, slots=True)
class ScreenedMetadata:
    """The allowlisted metadata of a data set, and the text fields withheld as possible PHI."""

    metadata: DicomMetadata
    phi_dropped: Mapping[str, PhiRule]
    """Keyword -> the rule of :func:`monitor.phi.screen_text` that its value matched."""


def extract_metadata(ds: Dataset) -> DicomMetadata:
    """The allowlisted metadata of ``ds``; attributes that are absent or invalid are omitted.

    One bad attribute never loses the study: each value is converted on its own, and a value the
    contract rejects is dropped, not the record. Text in the form of a name, UID, date or
    identifier number is dropped too; :func:`screen_metadata` also says which fields.
    """
    return screen_metadata(ds).metadata


def screen_metadata(ds: Dataset) -> ScreenedMetadata:
    """:func:`extract_metadata`, plus the text fields dropped by the PHI screen and why.

    A text field is dropped whole when any of its values (the first ``MAX_ITEMS``) matches a
    rule; the values are screened before truncation to 64 characters, so that an identifier cut
    in two by the limit does not leave in part.
    """
    raw: dict[str, Value] = {}
    dropped: dict[str, PhiRule] = {}
    for keyword in sorted(NUMERIC_KEYS | TEXT_KEYS):
        found = _lookup(ds, keyword)
        rule = _screened(found) if keyword in TEXT_KEYS else None
        if rule is not None:
            dropped[keyword] = rule
            continue
        value = _converted(keyword, found)
        if value is not None:
            raw[keyword] = value
    sex = _text(_lookup(ds, "PatientSex"))
    if isinstance(sex, str) and sex.upper() in {"M", "F", "O"}:
        raw["PatientSex"] = sex.upper()
    band = age_band(_lookup(ds, "PatientAge"))
    if band is not None:
        raw["PatientAgeBand"] = band
    return ScreenedMetadata(_validated(raw), dropped)


def age_band(patient_age: object) -> str | None:
    """The ten-year band ("40-49", "90+") of a DICOM Age String such as "045Y", or None.

    Days, weeks and months are converted to whole years, so "006M" and "003W" fall in "0-9".
    Unparsable values ("45", "", "abc") give None.
    """
    text = _text(patient_age)
    match = _AGE.match(text.upper()) if isinstance(text, str) else None
    if match is None:
        return None
    count, unit = int(match.group(1)), match.group(2)
    years = count if unit == "Y" else int(count * _DAYS_PER_UNIT[unit] // _DAYS_PER_UNIT["Y"])
    if years >= 90:
        return "90+"
    low = years // 10 * 10
    return f"{low}-{low + 9}"


def _lookup(ds: Dataset, keyword: str) -> object:
    """The value of ``keyword`` at the top level, else in the shared functional groups."""
    value = get_value(ds, keyword)
    if value is not None or keyword not in _SHARED_GROUP_HOME:
        return value
    shared = first_item(ds, "SharedFunctionalGroupsSequence")
    macro = first_item(shared, _SHARED_GROUP_HOME[keyword])
    return get_value(macro, keyword) if macro is not None else None


def first_item(ds: Dataset | None, keyword: str) -> Dataset | None:
    """The first item of sequence ``keyword`` in ``ds``, or None."""
    sequence = get_value(ds, keyword) if ds is not None else None
    if isinstance(sequence, Iterable) and not isinstance(sequence, str | bytes):
        for item in sequence:
            return item if isinstance(item, Dataset) else None
    return None


def get_value(ds: Dataset, keyword: str) -> object:
    """``ds.get(keyword)``, or None when the element is absent or its value cannot be read."""
    # pydicom converts raw elements lazily, so a malformed value (bad VR, undecodable bytes)
    # raises on access with any of several exception types; here that must mean "absent".
    try:
        return ds.get(keyword)
    except Exception:
        return None


def _converted(keyword: str, value: object) -> Value | None:
    convert = _number if keyword in NUMERIC_KEYS else _text
    if isinstance(value, MultiValue | list | tuple):
        items = [convert(item) for item in list(value)[:MAX_ITEMS]]
        if keyword in NUMERIC_KEYS:
            # Positions carry meaning (row vs column spacing): one bad item spoils the list.
            numbers = [item for item in items if isinstance(item, float)]
            return numbers if numbers and len(numbers) == len(items) else None
        texts = [item for item in items if isinstance(item, str)]
        return texts or None
    return convert(value)


def _number(value: object) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)  # type: ignore[arg-type]  # DSfloat, IS, int, str, Decimal
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def _screened(value: object) -> PhiRule | None:
    """The PHI rule the first of the text values in ``value`` to match one matches, or None."""
    items = list(value)[:MAX_ITEMS] if isinstance(value, MultiValue | list | tuple) else [value]
    for item in items:
        text = _untruncated(item)
        rule = screen_text(text) if text is not None else None
        if rule is not None:
            return rule
    return None


def _text(value: object) -> str | None:
    text = _untruncated(value)
    text = text[:MAX_TEXT].strip(_PAD) if text is not None else None
    return text or None


def _untruncated(value: object) -> str | None:
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            return None
    if not isinstance(value, str):
        return None
    return value.strip(_PAD)


def _validated(raw: dict[str, Value]) -> DicomMetadata:
    """Validate, dropping the keys the contract rejects (at most one retry is ever needed)."""
    try:
        return DicomMetadata.model_validate(raw)
    except ValidationError as exc:
        rejected = {error["loc"][0] for error in exc.errors() if error["loc"]}
        kept = {key: value for key, value in raw.items() if key not in rejected}
        return DicomMetadata.model_validate(kept)
