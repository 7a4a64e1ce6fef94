"""The PHI screen of allowlisted free text: real device strings pass, identifier forms do not."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from monitor import phi
from monitor.phi import DESCRIPTIONS, PhiRule, looks_like_uid, screen_text
from monitor.simulate.profiles import PROFILES

DEVICE_STRINGS = [
    # Manufacturer
    "GE Healthcare", "GE MEDICAL SYSTEMS", "G.E. Medical Systems", "Siemens Healthineers",
    "SIEMENS", "Philips Medical Systems, Inc.", "Carestream Health", "Agfa-Gevaert AG",
    "FUJIFILM Corporation", "FUJI PHOTO FILM CO. LTD.", "KONICA MINOLTA", "TOSHIBA_MEC",
    "Canon Medical Systems", "ALOKA CO., LTD.", "Kuratorium OFFIS e.V.", "TRIXELL", "LUMISYS",
    # ManufacturerModelName
    "DRX-Revolution", "DRX-Evolution Plus", "Discovery XR656", "Definium 8000", "Ysio Max",
    "DigitalDiagnost C90", "DX-D 600", "FCR PROFECT CS", "REGIUS MODEL 110", "CXDI-70C Wireless",
    "AXIOM-Aristos", "SOMATOM Definition AS+", "LightSpeed Ultra", "Aquilion ONE", "iCT 256",
    "Brilliance 64", "Ingenuity TF PET/CT", "EPIQ 7C", "Cassette Holder Type 9840 500 70201",
    "PIXIUM4600", "LS75", "https://github.com/fedorov/dcmqi.git",
    # SoftwareVersions
    "VXvue 1.0.1.2", "4.30.0.12", "1.2.3.4", "1.2.3", "5.7.412.7005", "NX 23.0.5200", "VF10C",
    "DM_Platform_Release_Version 11.3", "A08-05", "CS-3 1.30", "syngo CT 2011A",
    "syngo MR 2004V 4VB11D", "LightSpeedApps14.13_2.8.2L_H2.1M4", "V3.51*P25", "51.80.108.010",
    "00-2.0.0(29Oct)", "Version:  4.3.2", "2020.1.3", "0005", "R1.0.D", "1.0.7234.21576",
    # ConvolutionKernel
    "B30f", "B30s", "Br40d", "I30f\\3", "FC13", "FC03", "YA", "STANDARD", "LUNG", "BONEPLUS", "11",
    # BodyPartExamined
    "CHEST", "PORTABLE CHEST", "NON GRID CHEST", "EXTREMETY", "WHOLE BODY", "CSPINE",
]  # fmt: skip

HOSTILE = [
    ("DOE^JOHN", PhiRule.PERSON_NAME),
    ("Doe^Jane^Quincy^^", PhiRule.PERSON_NAME),
    ("Yamada^Tarou=山田^太郎", PhiRule.PERSON_NAME),
    ("1.2.826.0.1.3680043.8.498.10293847561029384756", PhiRule.UID),
    ("1.2.840.113619.2.55.3.604688119", PhiRule.UID),
    ("1.3.12.2.1107.5.2.30", PhiRule.UID),
    ("Revolution 1.2.840.113619.2.55.3", PhiRule.UID),
    ("2.25.329800735698586629295641978511506172918", PhiRule.DIGITS),  # UUID-derived UID
    ("19610407", PhiRule.DATE),  # DICOM DA
    ("20260407093000.123", PhiRule.DATE),  # DICOM DT
    ("1961-04-07", PhiRule.DATE),
    ("2026-04-07T09:30:00+02:00", PhiRule.DATE),
    ("1961/04/07", PhiRule.DATE),
    ("1961.04.07", PhiRule.DATE),
    ("1961-4-7", PhiRule.DATE),
    ("07/04/1961", PhiRule.DATE),
    ("7.4.1961", PhiRule.DATE),
    ("04-07-1961", PhiRule.DATE),
    ("07/04/61", PhiRule.DATE),
    ("07-APR-1961", PhiRule.DATE),
    ("7 April 61", PhiRule.DATE),
    ("April 7, 1961", PhiRule.DATE),
    ("00123456", PhiRule.DIGITS),
    ("MRN 00123456", PhiRule.DIGITS),
    ("ACC123456", PhiRule.DIGITS),
    ("٠٠١٢٣٤٥٦", PhiRule.DIGITS),  # Arabic-Indic digits are digits too
]


@pytest.mark.parametrize("value", DEVICE_STRINGS)
def test_real_device_strings_pass(value: str) -> None:
    assert screen_text(value) is None


def test_the_simulators_device_strings_pass() -> None:
    for profile in PROFILES.values():
        for value in (profile.manufacturer, profile.model_name, profile.software_version):
            assert screen_text(value) is None, value


@pytest.mark.parametrize(("value", "rule"), HOSTILE)
def test_identifier_forms_are_refused_with_their_rule(value: str, rule: PhiRule) -> None:
    assert screen_text(value) is rule


@pytest.mark.parametrize(
    "value",
    [
        # Real SoftwareVersions of Philips ultrasound (pydicom's test corpus): twelve-digit part
        # numbers and build dates. Refused by form: they cannot be told from an MRN or a date.
        '"453561454581__PRINTERS.06.708__PRINTERS__[2010/06/30]-07:41:13"',
        "DICOMLib Ver02.00.00[20010925]",
        "1.5.2.1.2",  # a five-part version reads as a UID
        "10.2.2019",  # a version that reads as a date
    ],
)
def test_legitimate_values_in_an_identifiers_form_are_refused_too(value: str) -> None:
    assert screen_text(value) is not None


@pytest.mark.parametrize("value", ["John Doe", "MRN 12345", "001-234-567", "DOE\\JOHN"])
def test_what_the_rules_do_not_catch(value: str) -> None:
    # The documented limits (docs/security.md): a name without '^', short or split numbers.
    assert screen_text(value) is None


@given(st.text(max_size=20), st.text(max_size=20))
def test_a_caret_anywhere_is_a_person_name(before: str, after: str) -> None:
    assert screen_text(f"{before}^{after}") is PhiRule.PERSON_NAME


@given(st.integers(min_value=100_000), st.text(alphabet="ABCXYZ -_", max_size=10))
def test_six_digits_in_a_row_are_always_refused(number: int, prefix: str) -> None:
    assert screen_text(f"{prefix}{number}") is not None


def test_uid_rule_is_the_one_dicom_uri_uses() -> None:
    assert looks_like_uid("https://pacs/studies/1.2.840.113619.2.55/series")
    assert not looks_like_uid("https://pacs/v1.2.3.4/study-key")


def test_every_rule_is_described_without_a_value() -> None:
    assert set(DESCRIPTIONS) == set(PhiRule)
    assert all("{" not in text for text in DESCRIPTIONS.values())


@given(
    st.lists(
        st.sampled_from(
            ["0", "1", "7", "19", "20", "61", "04", "/", "-", ".", " ", ",", "Apr", "x"]
        ),
        max_size=12,
    ).map("".join)
)
def test_the_date_hint_never_skips_a_date(value: str) -> None:
    # screen_text tries the date patterns only where the cheap hint matches.
    if not phi._DATE_HINT.search(value):
        assert not phi._DATE.search(value) and not phi._month_first_date(value)
