"""A ``labelled_replay_outputs`` file with each statistics row's summary bytes replaced by a
digest of the counts they hold, so that outputs written in storage formats 1 and 2
(``monitor/performance/_summary_bytes.py``) compare with ``cmp``:

    PYTHONPATH=. .venv/bin/python -m benchmarks.replay_outputs_decoded OUT.jsonl DECODED.jsonl
"""

from __future__ import annotations

import argparse
import base64
import hashlib
from collections import Counter
from pathlib import Path

import orjson

from monitor.performance.sufficient import SummaryLayout, stacked_from_bytes

LAYOUT = SummaryLayout(threshold=0.5)
"""The bins of every stored summary (the threshold does not change the bytes)."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outputs", type=Path)
    parser.add_argument("decoded", type=Path)
    args = parser.parse_args()
    formats: Counter[str] = Counter()
    with args.outputs.open("rb") as source, args.decoded.open("wb") as sink:
        for line in source:
            row = orjson.loads(line)
            if row["table"] == "performance_buckets":
                blob = base64.b64decode(row["summary"])
                formats["format 2" if blob[0] == 2 else "format 1"] += 1
                counts = stacked_from_bytes(LAYOUT, [blob])
                row["summary"] = hashlib.sha256(counts.tobytes()).hexdigest()
            sink.write(orjson.dumps(row, option=orjson.OPT_SORT_KEYS) + b"\n")
    print(f"{args.outputs}: summaries in {dict(formats)}")


if __name__ == "__main__":
    main()
