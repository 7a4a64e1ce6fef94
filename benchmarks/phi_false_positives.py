"""False positives of the PHI screen (monitor/phi.py) on real device strings.

Every value of the allowlisted text fields (Manufacturer, ManufacturerModelName, SoftwareVersions,
ConvolutionKernel, BodyPartExamined, and the coded ones: Modality, ViewPosition,
PhotometricInterpretation) found in

- the DICOM-header tables that the torchxrayvision 1.5.7 wheel ships (monitor/simulate/xrv reads
  the same wheel): NIH ChestX-ray14, RSNA Pneumonia, OpenI and CheXpert, plus OpenI's other device
  strings of the same kinds (detector and secondary-capture device manufacturer, model name and
  software versions), which show how vendors write such values;
- pydicom's test corpus (pydicom and pydicom-data, many vendors and modalities), read the way the
  edge reads it (``screen_metadata``);
- with ``--padchest`` only, the PadChest table (Manufacturer_DICOM and the coded fields). PadChest
  is held out for an independent evaluation: it was not used to draw the rules, and its numbers
  are reported as they come out, once, with the rules already fixed (docs/benchmarks.md).

Values are device and body-part strings, not PHI, so the dropped ones are printed. Multi-valued
cells (DICOM's backslash) count per value.

    .venv/bin/python -m benchmarks.phi_false_positives
    .venv/bin/python -m benchmarks.phi_false_positives --padchest
"""

from __future__ import annotations

import argparse
import platform
import time
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_files

from monitor.dicom import screen_metadata
from monitor.dicom.metadata import TEXT_KEYS
from monitor.phi import PhiRule, screen_text
from monitor.simulate.xrv.source import XRV_VERSION, locate_wheel, read_columns

XRV_TABLES: dict[str, tuple[str, dict[str, str]]] = {
    "NIH": ("Data_Entry_2017_v2020.csv.gz", {"View Position": "ViewPosition"}),
    "RSNA": (
        "kaggle_stage_2_train_images_dicom_headers.csv.gz",
        {"BodyPartExamined": "BodyPartExamined", "Modality": "Modality",
         "ViewPosition": "ViewPosition"},
    ),
    "OpenI": (
        "nlmcxr_dicom_metadata.csv.gz",
        {
            "Manufacturer": "Manufacturer",
            "Body Part Examined": "BodyPartExamined",
            "Modality": "Modality",
            "View Position": "ViewPosition",
            "Photometric Interpretation": "PhotometricInterpretation",
            "Detector Manufacturer Name": "(Manufacturer)",
            "Detector Manufacturer's Model Name": "(ManufacturerModelName)",
            "Secondary Capture Device Manufacturer": "(Manufacturer)",
            "Secondary Capture Device Manufacturer's Model Name": "(ManufacturerModelName)",
            "Secondary Capture Device Software Versions": "(SoftwareVersions)",
        },
    ),
    "CheXpert": ("chexpert_train.csv.gz", {"AP/PA": "ViewPosition"}),
}  # fmt: skip
"""Table -> (member of the wheel, column -> the allowlisted keyword it holds; in parentheses:
a device string of the same kind and value representation that is not itself allowlisted)."""
PADCHEST = (
    "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz",
    {
        "Manufacturer_DICOM": "Manufacturer",
        "Modality_DICOM": "Modality",
        "ViewPosition_DICOM": "ViewPosition",
        "PhotometricInterpretation_DICOM": "PhotometricInterpretation",
    },
)


@dataclass
class Tally:
    """The values of one column: how often each occurs, and the rule each dropped one matched."""

    counts: Counter[str] = field(default_factory=Counter)
    dropped: dict[str, PhiRule] = field(default_factory=dict)

    def add(self, value: str) -> None:
        self.counts[value] += 1
        rule = screen_text(value)
        if rule is not None:
            self.dropped[value] = rule

    def row(self, source: str, column: str) -> str:
        rows_dropped = sum(self.counts[v] for v in self.dropped)
        shown = ", ".join(f"`{v}` ({rule})" for v, rule in sorted(self.dropped.items())) or "-"
        return (
            f"| {source} | {column} | {self.counts.total():,} | {len(self.counts):,} | "
            f"{len(self.dropped)} | {rows_dropped:,} | {shown} |"
        )


def split_values(cell: str) -> Iterator[str]:
    """The values of a cell as the edge would see them: split on DICOM's backslash, stripped."""
    for value in cell.split("\\"):
        value = value.strip(" \t\r\n\x00")
        if value:
            yield value


def tally_table(wheel: Path, member: str, columns: dict[str, str]) -> dict[str, Tally]:
    cells = read_columns(wheel, member, list(columns))
    tallies: dict[str, Tally] = {}
    for column, keyword in columns.items():
        tally = tallies[f"{column} -> {keyword}"] = Tally()
        for cell in cells[column]:
            for value in split_values(cell):
                tally.add(value)
    return tallies


def tally_corpus(files: Iterable[str]) -> tuple[int, dict[str, Tally], Counter[str]]:
    """Each text keyword's values over the corpus, and how often the edge dropped each keyword
    (``screen_metadata``, so exactly the edge's reading: padding, bytes, multi-values)."""
    tallies: dict[str, Tally] = defaultdict(Tally)
    edge_dropped: Counter[str] = Counter()
    read = 0
    for path in files:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
            screened = screen_metadata(ds)
        except Exception:  # not DICOM (READMEs, JSON...): not a device string either
            continue
        read += 1
        edge_dropped.update(list(screened.phi_dropped))
        for keyword in sorted(TEXT_KEYS):
            try:
                value = ds.get(keyword)
            except Exception:  # an unreadable element is omitted at the edge too
                continue
            items = list(value) if isinstance(value, pydicom.multival.MultiValue) else [value]
            for item in items:
                if isinstance(item, str):
                    for text in split_values(item):
                        tallies[keyword].add(text)
    return read, dict(sorted(tallies.items())), edge_dropped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--padchest",
        action="store_true",
        help="also measure the held-out PadChest table (report once, never tune on it)",
    )
    args = parser.parse_args()
    warnings.simplefilter("ignore")  # pydicom's warnings about odd test files
    print(f"# PHI screen false positives, {datetime.now(UTC):%Y-%m-%d}")
    print(
        f"{platform.platform()}, Python {platform.python_version()}, pydicom {pydicom.__version__}"
    )
    header = (
        "| source | column -> keyword | values | distinct | distinct dropped | values dropped "
        "| dropped (rule) |\n|---|---|---:|---:|---:|---:|---|"
    )
    wheel = locate_wheel()
    print(f"\n## torchxrayvision {XRV_VERSION} tables\n\n{header}")
    tables = dict(XRV_TABLES)
    if args.padchest:
        tables["PadChest (held out)"] = PADCHEST
    for name, (member, columns) in tables.items():
        for column, tally in tally_table(wheel, member, columns).items():
            print(tally.row(name, column))
    files = get_testdata_files()
    read, tallies, edge_dropped = tally_corpus(files)
    print(f"\n## pydicom test corpus: {read} of {len(files)} files read as DICOM\n\n{header}")
    for keyword, tally in tallies.items():
        print(tally.row("pydicom corpus", keyword))
    print(f"\nFields the edge dropped (screen_metadata), by keyword: {dict(edge_dropped)}")
    distinct = sorted({value for tally in tallies.values() for value in tally.counts})
    print(
        f"\nscreen_text: {time_per_value(distinct):.2f} us per value ({len(distinct)} distinct "
        "corpus values, best of 5 passes of 200 each)"
    )


def time_per_value(values: list[str]) -> float:
    """Best-of-5 mean time of one ``screen_text`` call over ``values``, in microseconds."""
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(200):
            for value in values:
                screen_text(value)
        best = min(best, (time.perf_counter() - started) / (200 * len(values)))
    return best * 1e6


if __name__ == "__main__":
    main()
