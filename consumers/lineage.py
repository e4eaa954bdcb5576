"""Whether a committed offset still belongs to the log it was committed in.

A broker that loses its log (ephemeral storage, a topic recreated) starts the partition
again at offset 0. A position committed against the old log can still reach the new
broker (bug B1 in docs/RELIABILITY.md), and once the new log has grown past it, the
consumer that is assigned the partition starts there and skips every new frame below it.
Kafka itself cannot tell: an offset is only a number.

So the consumer remembers which record each position it commits follows (the record at
``offset - 1``: its timestamp and a CRC of its key and value). When it is assigned a
partition whose committed offset is one of its own, it reads the record at
``offset - 1`` again. Where a different record stands there, the log is not the one the
position was committed in, and the partition is read from its start: frames answered
twice (identical verdicts) rather than never.

A position committed by another member cannot be checked this way (Tansu drops commit
metadata, so it cannot travel with the commit); the check of positions beyond the log
end (:func:`consumers.topics.lost_logs`) still applies to it.
"""

from __future__ import annotations

import logging
import zlib
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Any, Generic, TypeVar

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from consumers.frames import KafkaRecord
from consumers.topics import stop_consumer

log = logging.getLogger(__name__)

TP = TypeVar("TP", bound=Hashable)
Identity = tuple[int, int]  # (record timestamp, CRC-32 of key and value)
ANCHORS_KEPT = 4  # positions remembered per partition (commits may be retried or cancelled)
READ_TIMEOUT_MS = 3000


def identity(record: KafkaRecord) -> Identity:
    crc = zlib.crc32(record.key or b"")
    return (int(record.timestamp), zlib.crc32(record.value or b"", crc))


class Lineage(Generic[TP]):
    """Fetched records not yet behind a commit, and the identity of the record before each
    position committed. Not thread-safe: used from the event loop only.

    A record's identity (a CRC of its value) is taken only for the one record each commit
    follows, not for every frame fetched; until then the record is held, as the batch that
    scores it holds it anyway."""

    def __init__(self) -> None:
        self._fetched: dict[TP, dict[int, KafkaRecord]] = {}
        self._anchors: dict[TP, deque[tuple[int, Identity]]] = {}

    def fetched(self, tp: TP, record: KafkaRecord) -> None:
        self._fetched.setdefault(tp, {})[record.offset] = record

    def committing(self, offsets: Mapping[TP, int]) -> None:
        """Call before sending a commit (it may land even if its answer is lost)."""
        for tp, offset in offsets.items():
            seen = self._fetched.get(tp, {})
            record = seen.get(offset - 1)
            if record is None:
                continue
            before = identity(record)
            anchors = self._anchors.setdefault(tp, deque(maxlen=ANCHORS_KEPT))
            if (offset, before) not in anchors:
                anchors.append((offset, before))
            for old in [o for o in seen if o < offset - 1]:
                del seen[old]

    def forget_fetched(self, tps: Iterable[TP]) -> None:
        """A revoked partition's records will be fetched again; its anchors stay."""
        for tp in tps:
            self._fetched.pop(tp, None)

    def anchor(self, tp: TP, committed: int | None) -> Identity | None:
        """The identity of the record before ``committed``, if this consumer committed it."""
        if committed is None:
            return None
        for offset, ident in reversed(self._anchors.get(tp, ())):
            if offset == committed:
                return ident
        return None


async def replaced_logs(
    committed: Mapping[TopicPartition, int | None],
    lineage: Lineage[TopicPartition],
    reader: Callable[[], AIOKafkaConsumer],
) -> list[TopicPartition]:
    """The partitions of ``committed`` (their committed offsets) whose offset this consumer
    committed after a record that is no longer at that place, to be read from the start
    (the caller seeks).

    ``reader`` makes a client without a group (same connection settings) that reads the
    records to compare. A record that cannot be read (gone, or the broker not answering)
    proves nothing, and the committed offset is kept.
    """
    checks: dict[TopicPartition, tuple[int, Identity]] = {}
    for tp, offset in committed.items():
        ident = lineage.anchor(tp, offset)
        if offset and ident is not None:
            checks[tp] = (offset, ident)
    if not checks:
        return []
    found = await _read_before(reader, {tp: c for tp, (c, _) in checks.items()})
    replaced = []
    for tp, (offset, ident) in checks.items():
        record = found.get(tp)
        if record is None or identity(record) == ident:
            continue
        log.warning(
            "committed offset belongs to another log: reading from the start",
            extra={"partition": f"{tp.topic}-{tp.partition}", "committed": offset},
        )
        replaced.append(tp)
    return replaced


async def _read_before(
    reader: Callable[[], AIOKafkaConsumer], committed: Mapping[TopicPartition, int]
) -> dict[TopicPartition, Any]:
    """The record at ``committed - 1`` of each partition, where it can be read."""
    client = reader()
    found: dict[TopicPartition, Any] = {}
    try:
        await client.start()
        client.assign(list(committed))
        for tp, offset in committed.items():
            client.seek(tp, offset - 1)
        pending = set(committed)
        for _ in range(3):
            batch = await client.getmany(*pending, timeout_ms=READ_TIMEOUT_MS // 3)
            for tp, records in batch.items():
                if records and tp in pending:
                    pending.discard(tp)
                    if records[0].offset == committed[tp] - 1:
                        found[tp] = records[0]
            if not pending:
                break
    except KafkaError as exc:
        log.warning("cannot read back committed positions", extra={"error": repr(exc)})
    finally:
        try:
            await stop_consumer(client)
        except Exception as exc:  # a reader that never started: nothing to release
            log.debug("reader stop failed", extra={"error": repr(exc)})
    return found
