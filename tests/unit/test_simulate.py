"""The synthetic multi-site study generator: images, score model, event stream.

The stream tests run the real edge extractor (``monitor.dicom``) on the files the simulator
writes to a temporary directory, so they also check that the two agree.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydantic import ValidationError
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
)
from scipy.stats import mannwhitneyu, norm

from monitor.events import Event, InferenceEvent, LabelEvent, LabelSource, parse_event, to_json
from monitor.simulate import (
    CATALOGUE,
    DEGRADED,
    FakePatient,
    SimulationConfig,
    StudyIdentity,
    default_profile,
    lesion_scores,
    render_study,
    separation,
    simulate,
    site_ids,
    site_key_for,
)
from monitor.simulate.images import lesion_centres

START = datetime(2025, 3, 1, 8, 0, tzinfo=UTC)
CHANGE_AT = 40
PHI_KEYWORDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "InstitutionName",
    "StationName",
    "ReferringPhysicianName",
    "OperatorsName",
    "AccessionNumber",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
)


def _config(**changes: object) -> SimulationConfig:
    settings: dict[str, object] = {
        "seed": 42,
        "start": START,
        "sites": 3,
        "studies_per_site": 80,
        "image_size": 128,
        "change_site": "site-02",
        "change_at_index": CHANGE_AT,
    }
    settings.update(changes)
    return SimulationConfig.model_validate(settings)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("simulated")


@pytest.fixture(scope="module")
def events(run_dir: Path) -> list[Event]:
    """One run with a scanner change at site-02, shared by the stream tests."""
    return list(simulate(_config(), run_dir))


def _by_site(events: list[Event]) -> dict[str, list[InferenceEvent]]:
    """Each site's inference events in study-index order."""
    sites: dict[str, list[InferenceEvent]] = defaultdict(list)
    for event in events:
        if isinstance(event, InferenceEvent):
            sites[event.site_id].append(event)
    return sites


def _auroc(scores: np.ndarray, truth: np.ndarray) -> float:
    positives, negatives = scores[truth], scores[~truth]
    statistic = mannwhitneyu(positives, negatives, alternative="two-sided").statistic
    return float(statistic) / (len(positives) * len(negatives))


# --- profiles -------------------------------------------------------------------------------


def test_catalogue_has_distinct_vendors_and_the_degraded_profile_differs_from_each() -> None:
    assert len({profile.manufacturer for profile in CATALOGUE}) >= 5
    for profile in CATALOGUE:
        assert profile.manufacturer != DEGRADED.manufacturer
        assert profile.photometric != DEGRADED.photometric
        assert profile.pixel_spacing_mm != DEGRADED.pixel_spacing_mm
        assert profile.noise_sd < DEGRADED.noise_sd
        assert profile.lesion_contrast > DEGRADED.lesion_contrast


def test_sites_get_catalogue_profiles_in_order() -> None:
    sites = site_ids(8)
    assert sites[0] == "site-01" and sites[-1] == "site-08"
    assert [default_profile(site) for site in sites[: len(CATALOGUE)]] == list(CATALOGUE)
    assert default_profile("site-07") == CATALOGUE[0]
    with pytest.raises(ValueError):
        default_profile("hospital-1")


def test_site_keys_are_hmacs_of_the_site_id() -> None:
    expected = hmac.new(b"master", b"site-01", hashlib.sha256).digest()
    assert site_key_for(b"master", "site-01") == expected
    assert site_key_for(b"master", "site-02") != expected
    assert site_key_for(b"other", "site-01") != expected


# --- images ---------------------------------------------------------------------------------


def _render(profile_index: int | None, has_lesion: bool, seed: int = 3) -> pydicom.Dataset:
    profile = DEGRADED if profile_index is None else CATALOGUE[profile_index]
    rng = np.random.default_rng(seed)
    patient = FakePatient.generate(rng, date(2025, 1, 1))
    return render_study(profile, has_lesion, rng, 128, patient=patient)


def _brightness(ds: pydicom.Dataset) -> np.ndarray:
    """Display brightness in [0, 1] whatever the photometric interpretation."""
    values: np.ndarray = ds.pixel_array.astype(np.float64) / (2**ds.BitsStored - 1)
    return 1.0 - values if ds.PhotometricInterpretation == "MONOCHROME1" else values


@pytest.mark.parametrize("profile_index", [0, 1, 4, 5, None])
def test_rendered_file_has_the_profile_header_and_fake_phi(
    tmp_path: Path, profile_index: int | None
) -> None:
    profile = DEGRADED if profile_index is None else CATALOGUE[profile_index]
    path = tmp_path / "study.dcm"
    _render(profile_index, has_lesion=True).save_as(path, enforce_file_format=True)
    ds = pydicom.dcmread(path)
    sop_class = (
        ComputedRadiographyImageStorage
        if profile.modality == "CR"
        else DigitalXRayImageStorageForPresentation
    )
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert ds.SOPClassUID == sop_class == ds.file_meta.MediaStorageSOPClassUID
    assert ds.Manufacturer == profile.manufacturer
    assert ds.PhotometricInterpretation == profile.photometric
    assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit) == (
        16,
        profile.bits_stored,
        ds.BitsStored - 1,
    )
    assert [float(v) for v in ds.ImagerPixelSpacing] == [profile.pixel_spacing_mm] * 2
    assert ds.pixel_array.dtype == np.uint16 and ds.pixel_array.shape == (128, 128)
    assert int(ds.pixel_array.max()) <= 2**profile.bits_stored - 1
    assert str(ds.PatientName).startswith("SIM^PATIENT") and ds.PatientID.startswith("SIM")
    assert ds.PatientAge.endswith("Y") and 18 <= int(ds.PatientAge[:3]) <= 95
    for keyword in PHI_KEYWORDS:
        assert ds.get(keyword), keyword


def test_monochrome1_stores_bone_as_low_values() -> None:
    # Same seed, so the same anatomy: the spine (image centre column, mid height) is brighter
    # than a lung field on screen, i.e. stored lower in MONOCHROME1 and higher in MONOCHROME2.
    good, degraded = _render(0, False).pixel_array, _render(None, False).pixel_array
    spine, lung = (64, 64), (50, 38)
    assert good[spine] > good[lung]
    assert degraded[spine] < degraded[lung]


def test_lesion_is_a_blob_of_the_profile_contrast_inside_a_lung() -> None:
    # The same seed draws the same exposure and noise; only the lesion differs.
    with_lesion, without = _render(0, True), _render(0, False)
    difference = _brightness(with_lesion) - _brightness(without)
    peak = np.unravel_index(int(np.argmax(difference)), difference.shape)
    assert difference.max() == pytest.approx(CATALOGUE[0].lesion_contrast, rel=0.2)
    centres = {tuple(centre) for centre in lesion_centres(128)}
    assert tuple(int(i) for i in peak) in centres
    assert np.abs(difference).sum() > 0
    assert (np.abs(difference) > 0.01).mean() < 0.05


def test_identity_is_derived_from_seed_site_and_index() -> None:
    first = StudyIdentity.derive(seed=1, site_id="site-01", index=5, acquired_at=START)
    again = StudyIdentity.derive(seed=1, site_id="site-01", index=5, acquired_at=START)
    other = StudyIdentity.derive(seed=1, site_id="site-01", index=6, acquired_at=START)
    assert first == again
    assert len({first.study_uid, first.series_uid, first.sop_uid, other.study_uid}) == 4
    assert len(first.accession_number) <= 16


# --- score model ----------------------------------------------------------------------------


def test_score_model_auroc_is_090_on_good_profiles_and_070_on_the_degraded_one() -> None:
    rng = np.random.default_rng(2024)
    truth = rng.random(40_000) < 0.5
    for profile in CATALOGUE:
        assert norm.cdf(separation(profile) / math.sqrt(2)) == pytest.approx(0.90, abs=0.002)
        assert _auroc(lesion_scores(profile, truth, rng), truth) == pytest.approx(0.90, abs=0.01)
    assert norm.cdf(separation(DEGRADED) / math.sqrt(2)) == pytest.approx(0.70, abs=0.002)
    assert _auroc(lesion_scores(DEGRADED, truth, rng), truth) == pytest.approx(0.70, abs=0.01)


def test_scores_are_probabilities_even_for_extreme_logits() -> None:
    scores = lesion_scores(CATALOGUE[0], np.ones(10_000, dtype=bool), np.random.default_rng(0))
    assert np.all((scores >= 0.0) & (scores <= 1.0))


# --- configuration --------------------------------------------------------------------------


def test_config_refuses_a_half_specified_or_unknown_scanner_change() -> None:
    with pytest.raises(ValidationError):
        _config(change_at_index=None)
    with pytest.raises(ValidationError):
        _config(change_site="site-09")
    with pytest.raises(ValidationError):
        _config(start=datetime(2025, 1, 1))  # naive: event times would be ambiguous
    assert _config().fingerprint() == _config().fingerprint() != _config(seed=43).fingerprint()


def test_profile_switches_at_the_change_index_only_at_the_change_site() -> None:
    config = _config()
    assert config.profile_for("site-02", CHANGE_AT - 1) == default_profile("site-02")
    assert config.profile_for("site-02", CHANGE_AT) == DEGRADED
    assert config.profile_for("site-01", CHANGE_AT) == default_profile("site-01")


# --- the stream -----------------------------------------------------------------------------


def test_same_config_gives_identical_events_and_files(tmp_path: Path) -> None:
    config = _config(studies_per_site=12, change_at_index=6)
    first = [to_json(event) for event in simulate(config, tmp_path)]
    files = {path: path.read_bytes() for path in sorted(tmp_path.rglob("*.dcm"))}
    second = [to_json(event) for event in simulate(config, tmp_path)]
    assert first == second
    assert files == {path: path.read_bytes() for path in sorted(tmp_path.rglob("*.dcm"))}
    other_seed = [
        to_json(event) for event in simulate(_config(seed=43, studies_per_site=12), tmp_path)
    ]
    assert not set(first) & set(other_seed)


def test_every_event_satisfies_the_contract(events: list[Event]) -> None:
    for event in events:
        assert parse_event(to_json(event)) == event
    assert sum(isinstance(event, InferenceEvent) for event in events) == 3 * 80
    assert len({event.event_id for event in events}) == len(events)


def test_files_are_named_by_study_key_and_no_phi_reaches_an_event(
    events: list[Event], run_dir: Path
) -> None:
    inferences = [event for event in events if isinstance(event, InferenceEvent)]
    paths = sorted(run_dir.rglob("*"))
    files = [path for path in paths if path.is_file()]
    assert {path.name for path in files} == {f"{e.study_key}.dcm" for e in inferences}
    for event in inferences:
        assert event.dicom_uri == (run_dir / event.site_id / f"{event.study_key}.dcm").as_uri()
    phi = {str(pydicom.dcmread(path).get(k)) for path in files for k in PHI_KEYWORDS}
    assert len(phi) > 6 * len(files)  # the names, IDs and UIDs of every file were collected
    wire = b"\n".join(to_json(event) for event in events).decode()
    leaked = sorted(value for value in phi if value in wire)
    assert not leaked


def test_labels_follow_their_predictions_in_event_time(events: list[Event]) -> None:
    predicted_at: dict[str, datetime] = {}
    labels: list[LabelEvent] = []
    for event in events:
        if isinstance(event, InferenceEvent):
            assert event.study_key not in predicted_at
            predicted_at[event.study_key] = event.occurred_at
        else:
            assert event.study_key in predicted_at  # its inference event came earlier
            assert event.occurred_at >= predicted_at[event.study_key]
            assert event.source is LabelSource.RADIOLOGIST
            labels.append(event)
    times = [event.occurred_at for event in events]
    assert times == sorted(times)
    assert len({label.study_key for label in labels}) == len(labels)
    share = len(labels) / len(predicted_at)
    assert share == pytest.approx(0.8, abs=0.08)  # 3 sd of a binomial share over 240 studies
    positives = sum(label.labels["lesion"] for label in labels) / len(labels)
    assert positives == pytest.approx(0.2, abs=0.09)


def test_scanner_change_shows_in_metadata_and_pixels_at_that_site_only(
    events: list[Event], tmp_path: Path
) -> None:
    unchanged = list(simulate(_config(change_site=None, change_at_index=None), tmp_path))
    changed_sites, baseline_sites = _by_site(events), _by_site(unchanged)
    # The two runs wrote to different directories, so only their dicom_uri may differ.
    for site in ("site-01", "site-03"):
        assert _without_uri(changed_sites[site]) == _without_uri(baseline_sites[site])
    changed = changed_sites["site-02"]
    before, after = changed[:CHANGE_AT], changed[CHANGE_AT:]
    assert _without_uri(before) == _without_uri(baseline_sites["site-02"][:CHANGE_AT])
    assert {event.metadata.Manufacturer for event in before} == {"GE Healthcare"}
    assert {event.metadata.Manufacturer for event in after} == {DEGRADED.manufacturer}
    assert {event.metadata.PhotometricInterpretation for event in before} == {"MONOCHROME2"}
    assert {event.metadata.PhotometricInterpretation for event in after} == {"MONOCHROME1"}
    assert {event.modality for event in after} == {"CR"}
    mean_before = np.mean([_stat(event, "mean") for event in before])
    mean_after = np.mean([_stat(event, "mean") for event in after])
    assert mean_after < 0.5 * mean_before  # 10-bit CR against 14-bit DX


def _without_uri(events: list[InferenceEvent]) -> list[dict[str, object]]:
    return [event.model_dump(exclude={"dicom_uri"}) for event in events]


def _stat(event: InferenceEvent, name: str) -> float:
    assert event.pixel_stats is not None
    return event.pixel_stats[name]


def test_stream_is_lazy(tmp_path: Path) -> None:
    stream = simulate(_config(studies_per_site=1000), tmp_path)
    first = next(stream)
    assert isinstance(first, InferenceEvent) and first.site_id == "site-01"
    assert len(list(tmp_path.rglob("*.dcm"))) == 1
    assert not list(tmp_path.rglob("*.partial"))


def test_change_time_maps_to_the_first_study_at_or_after_it() -> None:
    config = SimulationConfig(
        seed=1, sites=3, start=datetime(2026, 1, 1, tzinfo=UTC), study_interval=timedelta(hours=1)
    )
    # site-02 acquires at 00:20, 01:20, 02:20, ...
    assert config.first_index_at("site-02", datetime(2026, 1, 1, 1, 20, tzinfo=UTC)) == 1
    assert config.first_index_at("site-02", datetime(2026, 1, 1, 1, 21, tzinfo=UTC)) == 2
    assert config.first_index_at("site-01", datetime(2025, 12, 31, tzinfo=UTC)) == 0


def test_span_is_the_time_to_the_last_event_and_ending_at_moves_the_stream_there(
    tmp_path: Path,
) -> None:
    config = SimulationConfig(
        seed=4, start=datetime(2026, 1, 1, tzinfo=UTC), sites=2, studies_per_site=6
    )
    events = list(simulate(config, tmp_path / "a"))
    assert max(e.occurred_at for e in events) == config.start + config.span()
    now = datetime(2026, 6, 1, 12, tzinfo=UTC)
    moved = config.ending_at(now)
    moved_events = list(simulate(moved, tmp_path / "b"))
    assert max(e.occurred_at for e in moved_events) == now
    # Only the times move: the same studies, labels and ids.
    assert [e.event_id for e in moved_events] == [e.event_id for e in events]
    assert moved.span() == config.span()
