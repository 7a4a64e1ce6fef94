"""Ingestion throughput: consume -> validate -> store into PostgreSQL, events/s.

Publishes N realistic ~1 KB inference events (allowlisted metadata, 24 pixel statistics) to the
bundled broker, then times the real ``Ingestor`` (the same code as ``radsentry consume``) from its
first poll until every event is committed to the database.

    .venv/bin/python -m benchmarks.bench_ingest --events 50000 \
        --database postgresql+psycopg://postgres@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
import os
import platform
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from monitor.events import DicomMetadata, InferenceEvent, Prediction, to_json
from monitor.service.broker import EmbeddedBroker
from monitor.service.db import make_engine, upgrade
from monitor.service.ingest.consumer import Ingestor
from monitor.service.kafka import all_topics, ensure_topics, make_consumer, make_producer
from monitor.service.publish import publish
from monitor.service.settings import KafkaSettings

STAT_NAMES = [
    "mean",
    "std",
    "p01",
    "p05",
    "p25",
    "p50",
    "p75",
    "p95",
    "p99",
    "entropy",
    "frac_at_min",
    "frac_at_max",
    *[f"hist_{i}" for i in range(8)],
]


TYPICAL_DX_HEADER = (
    "Modality",
    "Manufacturer",
    "ManufacturerModelName",
    "KVP",
    "Exposure",
    "ImagerPixelSpacing",
    "Rows",
    "Columns",
    "BitsStored",
    "PhotometricInterpretation",
    "ViewPosition",
    "BodyPartExamined",
    "PatientSex",
    "PatientAgeBand",
)


def realistic_event(n: int, sites: int, full_header: bool = False) -> InferenceEvent:
    """A DX study event: a typical header (~1 KB on the wire) or every allowlisted keyword."""
    event = _full_event(n, sites)
    if full_header:
        return event
    typical = event.metadata.model_dump(include=set(TYPICAL_DX_HEADER))
    return event.model_copy(update={"metadata": DicomMetadata(**typical), "dicom_uri": None})


def _full_event(n: int, sites: int) -> InferenceEvent:
    return InferenceEvent(
        event_id=uuid.uuid4(),
        site_id=f"site-{n % sites:03d}",
        model_name="cxr-lesion",
        model_version="1.4.2",
        occurred_at=datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=n),
        study_key=uuid.uuid4().hex * 2,
        modality="DX",
        metadata=DicomMetadata(
            Modality="DX",
            Manufacturer="Carestream Health",
            ManufacturerModelName="DRX-Evolution",
            SoftwareVersions="5.7.412.7005",
            KVP=110.0,
            XRayTubeCurrent=250.0,
            Exposure=4.0,
            ExposureTime=16.0,
            ImagerPixelSpacing=[0.139, 0.139],
            PixelSpacing=[0.139, 0.139],
            Rows=2874.0,
            Columns=2840.0,
            BitsStored=12.0,
            PhotometricInterpretation="MONOCHROME2",
            ViewPosition="PA",
            BodyPartExamined="CHEST",
            WindowCenter=2048.0,
            WindowWidth=4096.0,
            RescaleSlope=1.0,
            RescaleIntercept=0.0,
            PatientSex="F",
            PatientAgeBand="60-69",
        ),
        pixel_stats={
            name: 1000.0 + (n * 7919 + i) % 997 / 3.0 for i, name in enumerate(STAT_NAMES)
        },
        dicom_uri=f"file:///data/dicom/site-{n % sites:03d}/{uuid.uuid4().hex}.dcm",
        prediction=Prediction(scores={"lesion": (n % 100) / 100, "effusion": 0.2}, threshold=0.5),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--sites", type=int, default=100)
    parser.add_argument(
        "--full-header",
        action="store_true",
        help="every allowlisted keyword and a dicom_uri (~1.5 KB events)",
    )
    parser.add_argument(
        "--database",
        default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
        help="server URL; a scratch database is created in it and dropped afterwards",
    )
    args = parser.parse_args()

    name = f"radsentry_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(args.database, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(args.database).set(database=name).render_as_string(hide_password=False)
    engine = make_engine(url)
    upgrade(engine)

    events = [realistic_event(n, args.sites, args.full_header) for n in range(args.events)]
    size = sum(len(to_json(e)) for e in events[:1000]) / 1000
    try:
        with EmbeddedBroker() as broker:
            settings = KafkaSettings(
                bootstrap_servers=[broker.bootstrap], group_id="bench", session_timeout_ms=6_000
            )
            ensure_topics([broker.bootstrap], all_topics(settings), partitions=6)
            producer = make_producer([broker.bootstrap], settings)
            started = time.perf_counter()
            publish(producer, events, settings)
            produce_s = time.perf_counter() - started
            producer.close()

            consumer = make_consumer([broker.bootstrap], settings)
            dlq = make_producer([broker.bootstrap], settings)
            ingestor = Ingestor(engine, consumer, dlq, settings)
            stop = threading.Event()
            thread = threading.Thread(target=ingestor.run, args=(stop,))
            first_batch = None
            thread.start()
            while ingestor.stats.stored < args.events:
                if first_batch is None and ingestor.stats.batches:
                    first_batch = time.perf_counter()
                time.sleep(0.01)
            finished = time.perf_counter()
            stop.set()
            thread.join()
            consumer.close(autocommit=False)
            dlq.close()
            # Group join takes a few seconds; the rate is measured from the first stored batch.
            batches = ingestor.stats.batches
            first_batch = first_batch or finished
            steady = (args.events - args.events / max(batches, 1)) / (finished - first_batch)
    finally:
        engine.dispose()
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    print(
        f"date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; machine: {platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}"
    )
    print(f"events: {args.events:,} from {args.sites} sites, mean size {size:.0f} bytes")
    print(f"produce: {args.events / produce_s:,.0f} events/s")
    print(
        f"consume -> validate -> store (PostgreSQL): {steady:,.0f} events/s over {batches} batches"
    )


if __name__ == "__main__":
    main()
