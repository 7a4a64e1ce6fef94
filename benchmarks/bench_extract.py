"""Edge extraction throughput: our extractor against the naive numpy statistics, images/s.

Writes N synthetic 512x512 16-bit CT-like DICOM files (MONOCHROME2, int16, rescale intercept
-1024, a realistic header) to a temporary directory, then times on one core:

(a) ``extract_features``: dcmread + decode + allowlisted metadata + study key + statistics;
(b) the naive baseline: dcmread + ``pixel_array`` + ``apply_modality_lut``, then the same
    statistics with ``np.percentile``, ``np.histogram``, ``np.mean``/``np.std``, ``np.unique``.

Both read every file from the page cache; each is run ``--repeat`` times and the best run kept.
The two must agree on every percentile (checked) before any number is printed.

    .venv/bin/python -m benchmarks.bench_extract --images 200 --repeat 3
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels.processing import apply_modality_lut
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from monitor.dicom import extract_features

SITE_KEY = b"benchmark-site-key"
PERCENTILES = (1, 5, 25, 50, 75, 95, 99)


def ct_slice(rng: np.random.Generator, size: int = 512) -> np.ndarray:
    """Stored values of a CT-like slice: padding, air, a body of fat and soft tissue, bone."""
    y, x = np.mgrid[:size, :size]
    radius = np.hypot(y - size / 2, x - size / 2) / (size / 2)
    hu = np.full((size, size), -1000.0)
    hu[radius < 0.8] = -100.0  # fat
    hu[radius < 0.7] = 40.0  # soft tissue
    hu[(radius > 0.3) & (radius < 0.35)] = 900.0  # a ring of bone
    hu += rng.normal(0, 15, hu.shape)
    stored = np.round(hu + 1024).astype(np.int16)
    stored[radius > 0.98] = -2000  # scanner padding outside the reconstruction circle
    return stored


def write_study(path: Path, rng: np.random.Generator) -> None:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.SOPClassUID = CTImageStorage
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = "Bench^Mark", "BM-0001", "19700101"
    ds.PatientSex, ds.PatientAge = "F", "052Y"
    ds.StudyDate, ds.AccessionNumber, ds.InstitutionName = "20260101", "A1", "Bench Hospital"
    ds.Modality, ds.Manufacturer, ds.ManufacturerModelName = "CT", "ACME", "Slicer 128"
    ds.SoftwareVersions, ds.ConvolutionKernel, ds.BodyPartExamined = "VB20", "B30f", "CHEST"
    ds.KVP, ds.XRayTubeCurrent, ds.Exposure, ds.ExposureTime = "120", 250, 180, 500
    ds.SliceThickness, ds.PixelSpacing = "1.0", ["0.7", "0.7"]
    ds.WindowCenter, ds.WindowWidth = "40", "400"
    ds.set_pixel_data(ct_slice(rng), "MONOCHROME2", 16)
    ds.RescaleSlope, ds.RescaleIntercept = "1", "-1024"
    ds.save_as(path, enforce_file_format=True)


def naive_statistics(path: Path) -> dict[str, float]:
    """The same statistics the obvious way, on the full array of modality values."""
    ds = pydicom.dcmread(path)
    values = apply_modality_lut(ds.pixel_array, ds).ravel()
    quantiles = np.percentile(values, PERCENTILES)
    bins, _ = np.histogram(
        np.clip(values, quantiles[0], quantiles[-1]), 8, (quantiles[0], quantiles[-1])
    )
    _, counts = np.unique(ds.pixel_array, return_counts=True)
    share = counts / counts.sum()
    stats = {"mean": float(np.mean(values)), "std": float(np.std(values))}
    stats |= {f"p{q:02d}": float(v) for q, v in zip(PERCENTILES, quantiles, strict=True)}
    stats |= {f"hist_{i}": float(b) / values.size for i, b in enumerate(bins)}
    stats["entropy"] = float(-(share * np.log2(share)).sum())
    stats["frac_at_min"] = float(np.mean(values == values.min()))
    stats["frac_at_max"] = float(np.mean(values == values.max()))
    return stats


def best_rate(
    paths: list[Path], work: Callable[[Path], object], repeat: int
) -> tuple[float, float]:
    """(images/s of the best run, median ms per image in that run)."""
    best: tuple[float, float] = (0.0, 0.0)
    for _ in range(repeat):
        per_image = []
        for path in paths:
            started = time.perf_counter()
            work(path)
            per_image.append(time.perf_counter() - started)
        rate = len(paths) / sum(per_image)
        if rate > best[0]:
            best = (rate, statistics.median(per_image) * 1000)
    return best


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def pin_to_one_core() -> str:
    if hasattr(os, "sched_setaffinity"):
        core = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {core})
        return f"pinned to core {core}"
    return "not pinned (no sched_setaffinity)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    pinned = pin_to_one_core()
    print(f"date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    print(f"machine: {platform.platform()}, {cpu_model()}, {os.cpu_count()} CPUs, {pinned}")
    print(
        f"python {platform.python_version()}, numpy {np.__version__}, pydicom {pydicom.__version__}"
    )
    with tempfile.TemporaryDirectory() as folder:
        rng = np.random.default_rng(2026)
        paths = [Path(folder) / f"ct{i:05d}.dcm" for i in range(args.images)]
        for path in paths:
            write_study(path, rng)
        print(f"{args.images} files of {paths[0].stat().st_size:,} bytes (512x512 int16 CT)")
        for path in paths[:5]:
            fast, naive = extract_features(path, SITE_KEY).pixel_stats, naive_statistics(path)
            assert all(fast[f"p{q:02d}"] == naive[f"p{q:02d}"] for q in PERCENTILES)
            assert all(np.isclose(fast[name], naive[name]) for name in naive)
        ours = best_rate(paths, lambda p: extract_features(p, SITE_KEY), args.repeat)
        baseline = best_rate(paths, naive_statistics, args.repeat)
    print()
    rows = [
        ("extract_features (histogram path, + metadata, study key)", ours),
        ("naive np.percentile / np.histogram on apply_modality_lut", baseline),
    ]
    print("| pipeline (read + decode + statistics) | images/s | median ms/image |")
    print("|---|---:|---:|")
    for name, (rate, median_ms) in rows:
        print(f"| {name} | {rate:.0f} | {median_ms:.2f} |")
    print(f"\nspeed-up: {ours[0] / baseline[0]:.1f}x")


if __name__ == "__main__":
    main()
