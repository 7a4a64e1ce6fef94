"""PHI screening of the allowlisted free text (Manufacturer, model name, versions, kernel...).

The metadata allowlist keeps identifying *attributes* out of the events, but an allowlisted text
attribute can still carry an identifying *value*: a patient name typed into a model-name field, a
StudyInstanceUID copied into SoftwareVersions, a birth date in BodyPartExamined. :func:`screen_text`
refuses a value that has the form of one of those; the edge extractor drops such a field and the
consumer's contract refuses the event (docs/security.md, "Edge: DICOM free text").

The four rules, and why each is drawn where it is (docs/benchmarks.md has the false-positive
count on real device strings):

``person_name``
    A ``^`` anywhere: the component separator of the DICOM PN value representation
    ("DOE^JOHN"). Device strings never need it.
``uid``
    A dotted sequence of five or more numbers (``1.2.840.113619.2.55``), the rule that
    ``dicom_uri`` already applies. Version strings have at most four numeric parts
    (major.minor.patch.build: "4.30.0.12", "5.7.412.7005"), and every StudyInstanceUID in practice
    has five or more (an organisation root of at least four, then the study's own numbers). The
    UUID-derived form ``2.25.<39 digits>`` has three parts but is caught by ``digits``.
``date``
    A calendar date or date-time: DICOM DA/DT (``19610407``, ``20260407093000``); year first with
    two-digit month and day (``1961-04-07``, ``1961/04/07``, ``1961.04.07``, an ISO date-time),
    or with ``-``/``/`` and one-digit parts (``1961-4-7``); day or month first with a four-digit
    year (``07/04/1961``, ``7.4.1961``) or, with slashes only, a two-digit year (``07/04/61``);
    a month name between a day and a year (``07-APR-1961``, ``7 April 61``) or before a day and
    a four-digit year (``April 7, 1961``). Dotted year-first
    forms need two-digit month and day so that calendar-style versions ("2020.1.3") pass.
``digits``
    A run of six or more digits: medical record, accession and phone numbers. Model numbers
    ("Definium 8000", "Cassette Holder Type 9840 500 70201") stay below six in a row.

The rules are deliberately about form, not meaning: a vendor's twelve-digit part number or a
build date in a version string is refused too (``date``/``digits``), because it cannot be told
apart from an MRN or a birth date. They do not catch a name without a ``^`` ("John Doe"), an
identifier of five digits or fewer, or digits split by spaces or dashes ("001-234-567").
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Final


class PhiRule(StrEnum):
    """The form a refused value has; safe to print, log and count (it never holds the value)."""

    PERSON_NAME = "person_name"
    UID = "uid"
    DATE = "date"
    DIGITS = "digits"


DESCRIPTIONS: Final = {
    PhiRule.PERSON_NAME: "a DICOM person name (contains '^')",
    PhiRule.UID: "a DICOM UID (five or more dot-separated numbers)",
    PhiRule.DATE: "a date or date-time",
    PhiRule.DIGITS: "an identifier number (six or more digits in a row)",
}
"""What each rule means, for messages that must not quote the value."""

_DAY: Final = r"(?:0?[1-9]|[12]\d|3[01])"
_MONTH: Final = r"(?:0?[1-9]|1[0-2])"
_DAY2: Final = r"(?:0[1-9]|[12]\d|3[01])"
_MONTH2: Final = r"(?:0[1-9]|1[0-2])"
_YEAR: Final = r"(?:19|20)\d\d"
_MONTH_NAME: Final = (
    r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?"
    r"|sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)"
)
_DATE_FORMS: Final = (
    # DICOM DA, optionally continued as DT (HHMMSS.FFFFFF)
    rf"{_YEAR}{_MONTH2}{_DAY2}(?:[0-2]\d(?:[0-5]\d){{0,2}}(?:\.\d{{1,6}})?)?",
    rf"{_YEAR}([-/.]){_MONTH2}\1{_DAY2}",  # ISO 8601 and its slash/dot variants
    rf"{_YEAR}([-/]){_MONTH}\2{_DAY}",
    rf"{_DAY}([-/.]){_DAY}\3{_YEAR}",  # day or month first, four-digit year
    rf"{_DAY}/{_DAY}/\d\d",
    rf"{_DAY}[-\s/.]?(?i:{_MONTH_NAME})(?![a-zA-Z])\.?[-\s/.,]*(?:{_YEAR}|\d\d)",
)
# Every pattern starts with a digit: the lookahead lets the regex engine skip to the digits (an
# alternation tried at every character, month names above all, cost about 3 us per value).
_DATE: Final = re.compile(r"(?=\d)(?<!\d)(?:" + "|".join(_DATE_FORMS) + r")(?!\d)")
_DATE_HINT: Final = re.compile(rf"{_YEAR}|\d/|\d[-\s/.]?[a-zA-Z]{{3}}")
"""What every date form contains (a four-digit year, a slash after a digit, or a day before a
month name): versions such as "4.30.0.12" skip the date patterns, which cost 3-5 us each."""
_DAY_YEAR: Final = re.compile(rf"(?=\d)(?<!\d){_DAY},?\s+{_YEAR}(?!\d)")
_MONTH_BEFORE: Final = re.compile(rf"(?<![a-z]){_MONTH_NAME}\.?\s+\Z", re.IGNORECASE)
"""With ``_DAY_YEAR``, the month-first form ("April 7, 1961"), searched from its digits."""
_UID: Final = re.compile(r"\d+(?:\.\d+){4,}")
_DIGITS: Final = re.compile(r"\d{6,}")
_THREE_DIGITS: Final = re.compile(r"\d\D*\d\D*\d")


def screen_text(value: str) -> PhiRule | None:
    """The first rule that ``value`` matches (in the order of :class:`PhiRule`), or None.

    A match anywhere in the value counts: "Revolution 1.2.840.113619.2.55.3" is refused as
    ``uid``. Digits are matched as Unicode digits, so other scripts' numerals count too.
    """
    if "^" in value:
        return PhiRule.PERSON_NAME
    if not _THREE_DIGITS.search(value):
        return None  # the shortest date ("7 Apr 61") has three digits, the other rules more
    if _UID.search(value):
        return PhiRule.UID
    if _DATE_HINT.search(value) and (_DATE.search(value) or _month_first_date(value)):
        return PhiRule.DATE
    if _DIGITS.search(value):
        return PhiRule.DIGITS
    return None


def _month_first_date(value: str) -> bool:
    days = _DAY_YEAR.finditer(value)
    return any(_MONTH_BEFORE.search(value, 0, found.start()) for found in days)


def looks_like_uid(value: str) -> bool:
    """Whether ``value`` contains a UID-like dotted number sequence (the ``uid`` rule alone)."""
    return _UID.search(value) is not None
