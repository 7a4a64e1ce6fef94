"""Content shifts in the simulator: each kind changes the image and header as documented, the
draws are seeded, and a run without a shift (or a study not drawn into one) is unchanged."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path

import numpy as np
import orjson
import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from monitor.dicom.metadata import age_band
from monitor.service.cli import app
from monitor.simulate import DEGRADED, SimulationConfig
from monitor.simulate.anatomy import ADULT_FRONTAL, LATERAL, UNEXPOSED, anatomy_template
from monitor.simulate.content import ContentShift, ContentShiftKind
from monitor.simulate.examples import ContentExamples, content_examples
from monitor.simulate.stream import RenderedStudy, rendered_studies
from retrain.images import modality_values

SIZE = 64
runner = CliRunner()
START = datetime(2026, 3, 1, tzinfo=UTC)


def _config(*shifts: ContentShift, studies: int = 10) -> SimulationConfig:
    return SimulationConfig(
        seed=21,
        start=START,
        sites=2,
        studies_per_site=studies,
        image_size=SIZE,
        content_shifts=shifts,
    )


def _examples(kind: ContentShiftKind, n: int = 6) -> ContentExamples:
    return content_examples(kind, n, seed=4, image_size=SIZE)


def _same(a: RenderedStudy, b: RenderedStudy) -> bool:
    return a.dataset == b.dataset and a.scores == b.scores and a.has_lesion == b.has_lesion


def test_a_config_without_shifts_keeps_its_fingerprint() -> None:
    config = SimulationConfig(
        seed=5,
        start=datetime(2025, 1, 1, tzinfo=UTC),
        sites=6,
        studies_per_site=8,
        image_size=96,
        change_site="site-02",
        change_at_index=3,
    )
    # The value before content shifts existed: stored fingerprints stay valid.
    assert config.fingerprint() == (
        "755d9874a30e5be3efc007d21d51955eff5fb1ed8b0690bc4c04198ea3e3ea21"
    )
    shifted = config.model_copy(
        update={"content_shifts": (ContentShift(kind="lateral", site_id="site-01"),)}
    )
    assert shifted.fingerprint() != config.fingerprint()


def test_studies_outside_a_shift_are_exactly_those_of_a_run_without_it() -> None:
    shift = ContentShift(kind=ContentShiftKind.LATERAL, site_id="site-02", from_index=4, share=0.5)
    plain = list(rendered_studies(_config()))
    shifted = list(rendered_studies(_config(shift)))

    drawn = [s for s in shifted if s.shift is not None]
    assert drawn and all(s.site_id == "site-02" and s.index >= 4 for s in drawn)
    for before, after in zip(plain, shifted, strict=True):
        assert (after.site_id, after.index) == (before.site_id, before.index)
        assert after.has_lesion == before.has_lesion  # the truth is the study's, shifted or not
        if after.shift is None:
            assert _same(before, after)
        else:
            assert after.dataset.PixelData != before.dataset.PixelData


def test_the_mixture_takes_its_share_from_the_index_on_and_is_seeded() -> None:
    shift = ContentShift(kind=ContentShiftKind.SCANNER, site_id="site-01", from_index=50, share=0.3)
    config = _config(shift, studies=250).model_copy(update={"sites": 1, "image_size": 64})
    first = list(rendered_studies(config))
    drawn = [s.index for s in first if s.shift is ContentShiftKind.SCANNER]

    assert min(drawn) >= 50
    # 200 studies at 0.3: 60 expected, sd 6.5; outside 35-85 is a 4-sigma event.
    assert 35 <= len(drawn) <= 85
    again = [s.index for s in rendered_studies(config) if s.shift is not None]
    assert again == drawn


def test_config_refuses_shifts_that_take_more_than_every_study_or_unknown_sites() -> None:
    with pytest.raises(ValidationError, match=r"take 1\.2"):
        _config(
            ContentShift(kind="lateral", site_id="site-01", share=0.6),
            ContentShift(kind="paediatric", site_id="site-01", share=0.6),
        )
    with pytest.raises(ValidationError, match="outside the simulation"):
        _config(ContentShift(kind="lateral", site_id="site-07"))
    with pytest.raises(ValidationError):
        ContentShift(kind="lateral", site_id="ward-3")


@pytest.mark.parametrize("kind", list(ContentShiftKind))
def test_examples_pair_each_study_with_its_shifted_self_and_repeat_with_the_seed(
    kind: ContentShiftKind,
) -> None:
    examples = _examples(kind, n=4)
    assert len(examples.baseline) == len(examples.shifted) == 4
    assert all(s.shift is None for s in examples.baseline)
    assert all(s.shift is kind for s in examples.shifted)
    for base, shifted in zip(examples.baseline, examples.shifted, strict=True):
        assert (base.site_id, base.index, base.has_lesion) == (
            shifted.site_id,
            shifted.index,
            shifted.has_lesion,
        )
        assert base.dataset.PixelData != shifted.dataset.PixelData
    again = _examples(kind, n=4)
    assert all(_same(a, b) for a, b in zip(examples.shifted, again.shifted, strict=True))


def test_lateral_views_say_so_and_show_one_lung_field_with_the_spine_behind() -> None:
    examples = _examples(ContentShiftKind.LATERAL, n=12)
    assert {s.dataset.ViewPosition for s in examples.baseline} == {"PA"}
    assert {s.dataset.ViewPosition for s in examples.shifted} <= {"LL", "LATERAL"}
    frontal, lateral = anatomy_template(1.0, 128), anatomy_template(1.0, 128, LATERAL)
    lungs = slice(35, 70)  # rows across the upper lung fields
    # Frontal: the spine is the bright column in the middle; lateral: the middle is lung.
    assert frontal[lungs, 64].mean() > frontal[lungs, 30].mean() + 0.2
    assert lateral[lungs, 64].mean() < frontal[lungs, 64].mean() - 0.2
    # The lateral spine sits behind (right of) the lung field.
    assert lateral[lungs, 97].mean() > lateral[lungs, 64].mean() + 0.2


def test_paediatric_studies_are_children_with_a_smaller_chest_in_the_field() -> None:
    examples = _examples(ContentShiftKind.PAEDIATRIC, n=12)
    adult_bands = {age_band(s.dataset.PatientAge) for s in examples.baseline}
    child_ages = [int(s.dataset.PatientAge[:3]) for s in examples.shifted]
    assert all(1 <= age <= 15 for age in child_ages)
    assert {age_band(s.dataset.PatientAge) for s in examples.shifted} <= {"0-9", "10-19"}
    assert adult_bands - {"10-19"}  # adults reach bands no child has
    for adult, child in zip(examples.baseline, examples.shifted, strict=True):
        # Scales 0.6-0.8 of the adult: about 0.36-0.64 of its area, same room and exposure.
        assert _body_share(child) < 0.75 * _body_share(adult)


def test_positioning_changes_collimate_with_blank_borders_and_move_the_anatomy() -> None:
    examples = _examples(ContentShiftKind.POSITIONING, n=6)
    for base, shifted in zip(examples.baseline, examples.shifted, strict=True):
        image = _brightness(shifted)
        border = np.concatenate([image[:3].ravel(), image[-3:].ravel(), image[:, :3].ravel()])
        assert abs(float(border.mean()) - UNEXPOSED) < 0.01
        assert abs(float(_brightness(base)[:3].mean()) - UNEXPOSED) > 0.5
        assert shifted.dataset.ViewPosition == base.dataset.ViewPosition  # the header is the same


def test_harder_cases_score_closer_to_the_threshold_with_the_same_truth() -> None:
    examples = _examples(ContentShiftKind.HARDER, n=24)

    def margin(studies: tuple[RenderedStudy, ...]) -> float:
        return float(np.mean([abs(_logit(s.scores["lesion"])) for s in studies]))

    # The score model's threshold is 0.5 (logit 0); the closest of 8 draws is far closer.
    assert margin(examples.shifted) < 0.4 * margin(examples.baseline)
    assert [s.has_lesion for s in examples.shifted] == [s.has_lesion for s in examples.baseline]


def test_scanner_shift_acquires_on_the_degraded_reader() -> None:
    examples = _examples(ContentShiftKind.SCANNER, n=6)
    assert {s.dataset.Manufacturer for s in examples.shifted} == {DEGRADED.manufacturer}
    assert {s.dataset.PhotometricInterpretation for s in examples.shifted} == {"MONOCHROME1"}
    assert DEGRADED.manufacturer not in {s.dataset.Manufacturer for s in examples.baseline}


def test_default_anatomy_is_the_adult_frontal_template() -> None:
    assert np.array_equal(anatomy_template(1.0, SIZE), anatomy_template(1.0, SIZE, ADULT_FRONTAL))
    studies = list(islice(rendered_studies(_config()), 3))
    assert all(s.shift is None and s.dataset.ViewPosition == "PA" for s in studies)


def _brightness(study: RenderedStudy) -> np.ndarray:
    """MONOCHROME2 brightness in [0, 1] as the edge decodes it."""
    values = modality_values(study.dataset).astype(np.float64)
    return values / float(2 ** int(study.dataset.BitsStored) - 1)


def _body_share(study: RenderedStudy) -> float:
    """Share of the image brighter than air by a clear margin (the patient)."""
    image = _brightness(study)
    return float((image > 0.25).mean())


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def test_simulate_command_takes_content_shifts_and_refuses_malformed_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RADSENTRY_DATA_DIR", str(tmp_path / "data"))
    out = tmp_path / "events.jsonl"
    common = ["simulate", "--sites", "2", "--studies", "6", "--seed", "3", "--scores"]
    options = [*common, "score-model", "--start", "2026-03-01T00:00:00", "--jsonl", str(out)]
    result = runner.invoke(app, [*options, "--content-shift", "lateral:site-02:2:1"])
    assert result.exit_code == 0, result.output
    views = [
        (e["site_id"], e["metadata"]["ViewPosition"])
        for e in map(orjson.loads, out.read_bytes().splitlines())
        if e["schema"] == "inference-event/v1"
    ]
    assert [view for site, view in views if site == "site-01"] == ["PA"] * 6
    assert [view in ("LL", "LATERAL") for site, view in views if site == "site-02"] == [
        False,
        False,
        *[True] * 4,
    ]
    for bad, reason in [("lateral", "KIND:SITE"), ("sideways:site-01", "kind")]:
        refused = runner.invoke(app, [*options, "--content-shift", bad])
        assert refused.exit_code == 2 and reason in refused.output, refused.output
