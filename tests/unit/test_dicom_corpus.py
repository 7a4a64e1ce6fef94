"""The extractor over pydicom's whole test corpus: features or a typed error, never a crash.

The corpus is pydicom's own ``test_files`` plus the pydicom-data wheel's ``data_store`` files
(which ``get_testdata_files`` also reaches through pydicom's external-source entry point; both
are listed here so the test notices if either goes missing). Every regular file is tried,
including non-DICOM ones (README, JSON, ICC profile), which must come out as NotDicomError.
"""

from __future__ import annotations

import os
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom.data import get_testdata_files

from monitor.dicom import ExtractionError, StudyFeatures, extract_features, read_dataset
from monitor.dicom.pixels import transfer_syntax
from tests.unit.test_dicom_pixels import assert_matches_reference

pytestmark = pytest.mark.corpus

SITE_KEY = b"corpus-test-site-key"
MIN_DECODED = 150  # 152 decode with pylibjpeg + openjpeg + libjpeg + rle + gdcm installed

KNOWN_OUTCOMES = {
    "CT_small.dcm": "decoded",
    "JPEG2000.dcm": "decoded",
    "RG1_J2KR.dcm": "decoded",  # MONOCHROME1 CR, 1955x1841 JPEG 2000 lossless
    "color3d_jpeg_baseline.dcm": "decoded",  # 120 frames: 64 are sampled
    "OT-PAL-8-face.dcm": "decoded",  # no Part 10 header: read as a bare data set
    "MR_truncated.dcm": "CorruptPixelDataError",
    "emri_small_jpeg_2k_lossless_too_short.dcm": "CorruptPixelDataError",  # ends mid-fragment
    "badVR.dcm": "CorruptPixelDataError",
    "rtplan.dcm": "NoPixelDataError",
    "README.txt": "NotDicomError",
    "test_PN.json": "NotDicomError",
}


def corpus_files() -> list[Path]:
    """Every regular file of the test corpus, deduplicated by real path, in a stable order."""
    found = {Path(p).resolve() for p in get_testdata_files() if os.path.isfile(p)}
    try:
        import data_store  # type: ignore[import-untyped]  # the pydicom-data wheel

        found |= {p.resolve() for p in (Path(data_store.__file__).parent / "data").iterdir()}
    except ImportError:
        pass
    return sorted(p for p in found if p.is_file())


@dataclass(frozen=True)
class CorpusRun:
    files: list[Path]
    outcomes: dict[Path, str]  # "decoded" or the ExtractionError class name
    decoded: dict[Path, StudyFeatures]


@pytest.fixture(scope="module")
def corpus_run() -> CorpusRun:
    """The extractor run once over the corpus; anything but an ExtractionError fails here."""
    files = corpus_files()
    outcomes: dict[Path, str] = {}
    decoded: dict[Path, StudyFeatures] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns loudly about the corpus's odd files
        for path in files:
            try:
                decoded[path] = extract_features(path, SITE_KEY)
                outcomes[path] = "decoded"
            except ExtractionError as exc:
                outcomes[path] = type(exc).__name__
    return CorpusRun(files, outcomes, decoded)


def test_every_corpus_file_gives_features_or_a_typed_error(
    corpus_run: CorpusRun, capsys: pytest.CaptureFixture[str]
) -> None:
    roots = {"pydicom" if "pydicom" in p.parts else "data_store" for p in corpus_run.files}
    assert roots == {"pydicom", "data_store"}, "a part of the corpus is missing"
    counts = Counter(corpus_run.outcomes.values())
    summary = ", ".join(f"{kind} {n}" for kind, n in counts.most_common())
    with capsys.disabled():
        print(f"\ncorpus: {len(corpus_run.files)} files: {summary}")
    assert counts["decoded"] >= MIN_DECODED
    assert counts["ExtractionError"] == 0, "every failure must have a specific class"
    by_name = {path.name: kind for path, kind in corpus_run.outcomes.items()}
    assert {name: by_name[name] for name in KNOWN_OUTCOMES} == KNOWN_OUTCOMES
    for features in corpus_run.decoded.values():
        assert len(features.study_key) == 64 and features.modality.isalnum()


def test_decoded_corpus_statistics_match_the_naive_computation(corpus_run: CorpusRun) -> None:
    """Real vendors' files through the fast path equal np.percentile on the full arrays."""
    compared = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path, features in corpus_run.decoded.items():
            ds = read_dataset(path)
            if "SharedFunctionalGroupsSequence" in ds or "PerFrameFunctionalGroupsSequence" in ds:
                continue  # the naive reference knows only top-level rescale attributes
            if not ds.file_meta.get("TransferSyntaxUID"):
                ds.file_meta.TransferSyntaxUID = transfer_syntax(ds)
            assert_matches_reference(ds, features.pixel_stats)
            compared += 1
    assert compared >= MIN_DECODED - 5
