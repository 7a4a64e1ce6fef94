"""What each monitored feature and each test statistic means, in a site manager's words.

The pixel statistics are defined exactly in docs/extraction.md ("The statistics") and computed
by ``monitor/dicom/pixels.py``; the features and their order by ``monitor/drift/features.py``.
The site drift page (:mod:`monitor.service.drift.site_page`) shows one line per feature next to
its plot and the whole glossary at the bottom.
"""

from __future__ import annotations

from typing import Final

from monitor.drift.features import (
    CATEGORICAL_METADATA,
    EMBEDDING_PREFIX,
    NUMERIC_METADATA,
    PIXEL_FIELD,
)
from monitor.pixel_names import HIST_BINS, PERCENTILES


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


_PIXELS: Final = {
    "mean": "Mean pixel value of the image (after the rescale: Hounsfield units for CT, "
    "stored values for radiographs): overall brightness.",
    "std": "Standard deviation of the pixel values: overall contrast.",
    **{
        f"p{q:02d}": f"The {_ordinal(q)} percentile of the pixel values: {q}% of pixels are darker."
        for q in PERCENTILES
    },
    **{
        f"hist_{k}": f"Share of pixels in brightness bin {k + 1} of {HIST_BINS}: equal-width bins "
        f"from p01 to p99 (hist_0 darkest, hist_{HIST_BINS - 1} brightest; pixels below p01 "
        f"count in hist_0, above p99 in hist_{HIST_BINS - 1}). Together they are the shape "
        "of the image's histogram."
        for k in range(HIST_BINS)
    },
    "entropy": "Shannon entropy (bits) of the stored pixel values: how many grey levels the "
    "image really uses. Falls with a lower bit depth, heavy compression or burnt-in windowing.",
    "frac_at_min": "Share of pixels at the image's lowest value: clipping in the dark end, "
    "collimation borders or padding.",
    "frac_at_max": "Share of pixels at the image's highest value: saturation in the bright end, "
    "burnt-in labels or markers.",
}

_METADATA: Final = {
    "KVP": "Peak kilovoltage of the X-ray tube (kVp): beam energy, which sets contrast.",
    "XRayTubeCurrent": "X-ray tube current (mA).",
    "Exposure": "Exposure (mAs): tube current times time, the dose per image.",
    "ExposureTime": "Exposure time (ms).",
    "SliceThickness": "Slice thickness (mm; CT and MR).",
    "PixelSpacing": "Distance between pixel centres in the patient (mm, first value).",
    "ImagerPixelSpacing": "Distance between pixel centres at the detector (mm, first value).",
    "Rows": "Image height in pixels.",
    "Columns": "Image width in pixels.",
    "BitsStored": "Bits used per pixel value: the detector's bit depth.",
    "WindowCenter": "Default display window centre (brightness) set by the scanner.",
    "WindowWidth": "Default display window width (contrast) set by the scanner.",
    "RescaleSlope": "Slope of the map from stored values to modality units.",
    "RescaleIntercept": "Intercept of the map from stored values to modality units.",
    "Modality": "Kind of acquisition: CR (computed radiography), DX (digital radiography), "
    "CT, MR, ...",
    "Manufacturer": "Maker of the equipment that produced the image.",
    "ManufacturerModelName": "The scanner's or detector's model name.",
    "SoftwareVersions": "Software version of the equipment.",
    "ConvolutionKernel": "CT reconstruction kernel (sharp or soft).",
    "PhotometricInterpretation": "How pixel values map to grey: MONOCHROME2 (higher = whiter) "
    "or MONOCHROME1 (higher = darker); colour images otherwise.",
    "ViewPosition": "Projection: PA, AP, LL (lateral), ...",
    "BodyPartExamined": "Body part as the equipment recorded it.",
    "PatientSex": "Patient sex as recorded (M, F, O).",
    "PatientAgeBand": "Patient age in bands (ages are banded before they leave the site).",
    PIXEL_FIELD: "The block of pixel statistics as a whole (missing when the pixels could not "
    "be read).",
}

TERMS: Final = {
    "p-value": "How likely a difference this large is if nothing had changed. Adjusted for the "
    "number of features tested together; a change is significant below the detector's "
    "threshold (0.01 unless configured otherwise).",
    "effect size": "How large the change is, whatever the sample sizes. A window drifts only "
    "when its test is significant and its effect exceeds the threshold learned from the "
    "reference's own week-to-week variation (or the configured floor when the reference was "
    "too short to learn from).",
    "wasserstein_norm": "Wasserstein distance between the reference and the window, in "
    "reference standard deviations: how far values moved, on average.",
    "ks_statistic": "Kolmogorov-Smirnov statistic: the largest gap between the two cumulative "
    "distributions (0 = identical, 1 = no overlap).",
    "cramers_v": "Cramér's V of the chi-square test: how strongly the category shares differ "
    "(0 = same shares, 1 = completely different categories).",
    "share_unseen": "Share of the window in categories the reference never had.",
    "mean_shift_sd": "For ordered categories (the age band): how far the window's mean band "
    "moved from the reference's, in reference standard deviations of the band.",
    "mmd2": "Squared maximum mean discrepancy: one multivariate distance between the pixel "
    "statistics of the reference and the window; the features named beside it contribute most.",
    "embedding": "The deployed model's own view of each image: a projection (PCA) of its "
    "penultimate features to up to 32 numbers, emb_00 the direction of largest variation in "
    "its training images. The embedding detector (MMD) tests them together; a known direction "
    "(such as towards lateral views) is named when the window's mean moved along it.",
    "missing_share_difference": "Share of the window missing the field minus that of the "
    "reference.",
    "mahalanobis_normal_score_shift": "The per-event detector's shift of recent images from the "
    "reference, in standard units.",
    "severity": "info (note it), warning (look soon) or critical (act now): how many times its "
    "threshold the effect is (1.5x warning, 3x critical), one level up when two or more "
    "detectors drift in the same window.",
    "reference": "The events the site's current data are compared with: the stream's first "
    "events, or a re-baselined sample.",
    "current sample": "The site's latest events, drawn in the plots and compared in the "
    "detailed appendix.",
}
"""The test terms shown on the page (effect size names as the detectors report them)."""


def describe(feature: str, findings: tuple[str, ...] = ()) -> str:
    """One sentence on what ``feature`` measures (a model output in ``findings`` included)."""
    if feature in _PIXELS:
        return _PIXELS[feature]
    if feature in _METADATA:
        return _METADATA[feature]
    if feature in findings:
        return f"The model's score for the finding {feature!r} (0 to 1)."
    if feature.startswith(EMBEDDING_PREFIX) and feature[len(EMBEDDING_PREFIX) :].isdigit():
        rank = int(feature[len(EMBEDDING_PREFIX) :]) + 1
        return (
            f"Component {rank} of the model's embedding of the image (the {_ordinal(rank)} "
            "direction of variation of its penultimate features on its training images): no "
            "pixel meaning of its own; it moves when what the images show changes."
        )
    return "A monitored feature."


def glossary(findings: tuple[str, ...], embedding: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    """Every feature with its meaning, in the detectors' column order, then the terms."""
    names = [*_PIXELS, *NUMERIC_METADATA, *CATEGORICAL_METADATA, PIXEL_FIELD, *findings]
    names += embedding
    return [(name, describe(name, findings)) for name in names] + list(TERMS.items())
