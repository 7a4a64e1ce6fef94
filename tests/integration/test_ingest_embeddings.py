"""inference-event/v2 through the real ingest consumer, bundled broker and PostgreSQL: the
embedding is stored with its event; a v2 record with a too-long embedding or one without its
``embedding_id`` is dead-lettered with the reason; v1 events keep arriving beside v2 ones."""

from __future__ import annotations

import orjson
import pytest
from sqlalchemy import Engine, select

from monitor.events import EMBEDDING_MAX_LENGTH, InferenceEventV2, to_json
from monitor.service.kafka import make_producer
from monitor.service.models import DeadLetter, InferenceEventRow
from monitor.service.settings import KafkaSettings
from tests.factories import inference_event
from tests.integration.helpers import ingest_until, read_all

pytestmark = pytest.mark.integration

EMBEDDING = [0.25, -1.5, 3.0, 1e-6]
EMBEDDING_ID = "cxr-lesion@1.0.0/pca4-0123456789ab"


def v2_event(n: int) -> InferenceEventV2:
    fields = inference_event(n).model_dump(exclude={"schema_id"})
    return InferenceEventV2(**fields, embedding=EMBEDDING, embedding_id=EMBEDDING_ID)


def test_v2_embeddings_are_stored_and_invalid_ones_dead_lettered(
    pg_engine: Engine, kafka_settings: KafkaSettings
) -> None:
    good = orjson.loads(to_json(v2_event(100)))
    too_long = {**good, "event_id": str(v2_event(101).event_id)}
    too_long["embedding"] = [0.5] * (EMBEDDING_MAX_LENGTH + 1)
    unnamed = {k: v for k, v in good.items() if k != "embedding_id"}
    unnamed["event_id"] = str(v2_event(102).event_id)
    producer = make_producer(kafka_settings.bootstrap_servers, kafka_settings)
    topic = kafka_settings.inference_topic
    records = [to_json(v2_event(1)), orjson.dumps(too_long), to_json(inference_event(2))]
    records += [orjson.dumps(unnamed)]
    for raw in records:
        producer.send(topic, key=b"site-01", value=raw)
    producer.flush()

    stats = ingest_until(pg_engine, kafka_settings, lambda s: s.stored == 2 and s.dead_lettered)

    assert stats.dead_lettered == 2
    with pg_engine.connect() as connection:
        row = InferenceEventRow
        query = select(row.event_id, row.embedding, row.embedding_id).order_by(row.occurred_at)
        stored = [
            (r.event_id.int - 1, r.embedding, r.embedding_id) for r in connection.execute(query)
        ]
        ledger = connection.execute(select(DeadLetter.__table__).order_by(DeadLetter.offset)).all()
    assert stored == [(1, EMBEDDING, EMBEDDING_ID), (2, None, None)]
    assert [row.code for row in ledger] == ["invalid", "invalid"]
    assert (
        ledger[0].reason == "embedding: List should have at most 32 items after validation, not 33"
    )
    assert ledger[1].reason == "embedding_id: required when embedding is present (which projection)"
    dead = read_all(kafka_settings.bootstrap_servers, kafka_settings.dlq_topic(topic), 2)
    reasons = sorted(dict(record.headers)["radsentry-reason"].decode() for record in dead)
    assert reasons == sorted(row.reason for row in ledger)
    producer.close()
