"""NannyML's realised-performance AUROC chunks on the streams of benchmarks/seq_performance.py.

Runs in its own virtualenv (``make .venv-nannyml/.installed``: nannyml 0.13.1 and its
dependencies, never imported by the service or the tests) and imports nothing of ours:

    .venv-nannyml/bin/python benchmarks/seq_performance_nannyml.py STREAMS.npz OUT.npz

``STREAMS.npz`` holds ``labels`` and ``scores`` (streams x cases, label-arrival order) and
``chunk_sizes``. For each stream and chunk size ``c``, NannyML's ``PerformanceCalculator``
(binary classification, metric ``roc_auc``, ``chunk_size=c``, default thresholds: the
reference chunks' mean AUROC minus and plus 3 standard deviations) is fitted on the first 10
chunks of the stream (its reference period) and calculates the rest, cut to whole chunks.
``OUT.npz`` holds, per chunk size, ``end_<c>`` (the stream position of each analysis chunk's
last case), ``auroc_<c>``, ``lower_<c>`` (its lower threshold) and ``alert_<c>`` (NannyML's
own alert flag, which is also set above the upper threshold), each streams x chunks.

With ``units`` (streams x cases) and ``unit_of`` (per stream, the unit to follow, or -1) in
``STREAMS.npz``, each stream's analysis is instead that unit's cases alone, against the same
reference (the stream's first 10 chunks, every unit): NannyML's chunks per segment, by hand.
The chunks then differ in number per stream: ``OUT.npz`` holds them flat, with ``stream_<c>``.
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Any

# NannyML sends usage statistics to segment.io unless told not to: a benchmark run by a
# hospital's team sends nothing (and this machine has no route out, so each try only waits).
os.environ.setdefault("NML_DISABLE_USAGE_LOGGING", "1")

import nannyml as nml  # after the switch above
import numpy as np
import pandas as pd

REFERENCE_CHUNKS = 10


def _frame(labels: np.ndarray, scores: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame(
        {"score": scores, "pred": (scores >= 0.5).astype(int), "label": labels.astype(int)}
    )


def chunks(
    labels: np.ndarray, scores: np.ndarray, chunk_size: int, chosen: np.ndarray | None = None
) -> pd.DataFrame:
    """The analysis chunks of one stream (reference: its first REFERENCE_CHUNKS chunks), or of
    its ``chosen`` cases after the reference; ``end`` is each chunk's last case in the stream."""
    start = REFERENCE_CHUNKS * chunk_size
    if chosen is None:
        positions = np.arange(start, labels.size)
    else:
        positions = np.flatnonzero(chosen[start:]) + start
    positions = positions[: positions.size // chunk_size * chunk_size]
    if positions.size == 0:
        return pd.DataFrame({"end": [], "auroc": [], "lower": [], "alert": []})
    calculator = nml.PerformanceCalculator(
        y_pred_proba="score",
        y_pred="pred",
        y_true="label",
        problem_type="classification_binary",
        metrics=["roc_auc"],
        chunk_size=chunk_size,
    )
    calculator.fit(_frame(labels[:start], scores[:start]))
    result = calculator.calculate(_frame(labels[positions], scores[positions]))
    frame = result.filter(period="analysis").to_df()
    return pd.DataFrame(
        {
            "end": positions[frame[("chunk", "end_index")].to_numpy()],
            "auroc": frame[("roc_auc", "value")].to_numpy(),
            "lower": frame[("roc_auc", "lower_threshold")].to_numpy(),
            "alert": frame[("roc_auc", "alert")].to_numpy(dtype=bool),
        }
    )


def by_unit(data: np.lib.npyio.NpzFile, out_path: str) -> None:
    labels, scores, units = data["labels"], data["scores"], data["units"]
    out: dict[str, Any] = {}
    for chunk_size in data["chunk_sizes"].tolist():
        tables = []
        for i, unit in enumerate(data["unit_of"].tolist()):
            table = chunks(labels[i], scores[i], chunk_size, units[i] == unit)
            tables.append(table.assign(stream=i))
        flat = pd.concat(tables)
        for column in ("end", "auroc", "lower", "alert", "stream"):
            out[f"{column}_{chunk_size}"] = flat[column].to_numpy()
    np.savez(out_path, **out)


def main(streams_path: str, out_path: str) -> None:
    data = np.load(streams_path)
    if "unit_of" in data:
        by_unit(data, out_path)
        return
    labels, scores = data["labels"], data["scores"]
    out: dict[str, Any] = {}
    for chunk_size in data["chunk_sizes"].tolist():
        tables = [chunks(labels[i], scores[i], chunk_size) for i in range(labels.shape[0])]
        for column in ("end", "auroc", "lower", "alert"):
            out[f"{column}_{chunk_size}"] = np.stack([t[column].to_numpy() for t in tables])
    np.savez(out_path, **out)


if __name__ == "__main__":
    warnings.filterwarnings("ignore")
    main(sys.argv[1], sys.argv[2])
