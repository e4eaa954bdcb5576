"""Dead letters: every kind of bad input becomes a DLQ record *and* an ERROR / NO_MODEL
verdict; good frames around them are unaffected; the partition never sticks."""

from __future__ import annotations

import asyncio
import struct
import zlib

import cv2
import numpy as np
import pytest

from consumers.dlq import dead_letter
from consumers.frames import Failure, frame_from_record
from edge.simulator.discs import encode_jpeg, encode_png, make_ng, make_ok
from tests.helpers.fakes import Record
from tests.helpers.images import SIZE, noise_png
from tests.helpers.kafka import (
    FrameSpec,
    answered,
    headers,
    parse,
    produce,
    read_all,
    read_until,
    running,
    wait_all_committed,
)


def _png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` (no pixel data to speak of)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", len(ihdr))
        + chunk
        + struct.pack(">I", zlib.crc32(chunk))
    )


def _png(array: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", array)
    assert ok
    return buf.tobytes()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _grey_alpha_png(size: int = SIZE) -> bytes:
    """A valid 8-bit grey + alpha PNG (colour type 4), written by hand: OpenCV cannot."""
    rows = b"".join(b"\x00" + bytes([120, 255]) * size for _ in range(size))
    ihdr = struct.pack(">IIBBBBB", size, size, 8, 4, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(rows))
        + _chunk(b"IEND", b"")
    )


def poison_frames() -> list[tuple[FrameSpec, str, str]]:
    """(frame, expected verdict, expected error class) for each kind of bad input."""
    good = encode_png(make_ok(7, SIZE).image)
    h = headers
    return [
        (
            FrameSpec("p-garbage", b"this is not an image", h("p-garbage")),
            "ERROR",
            "UnsupportedImageError",
        ),
        (FrameSpec("p-truncated", good[:200], h("p-truncated")), "ERROR", "ImageDecodeError"),
        (
            FrameSpec("p-oversized", encode_png(noise_png(256)), h("p-oversized")),
            "ERROR",
            "FrameTooLargeError",
        ),
        (
            FrameSpec("p-huge-pixels", _png_claiming(100_000, 100_000), h("p-huge-pixels")),
            "ERROR",
            "ImageTooLargeError",
        ),
        (
            FrameSpec("p-16bit", _png(np.full((SIZE, SIZE, 3), 999, np.uint16)), h("p-16bit")),
            "ERROR",
            "UnsupportedImageError",
        ),
        (
            FrameSpec("p-rgba", _png(np.full((SIZE, SIZE, 4), 99, np.uint8)), h("p-rgba")),
            "ERROR",
            "UnsupportedImageError",
        ),
        (
            FrameSpec("p-grey-alpha", _grey_alpha_png(), h("p-grey-alpha")),
            "ERROR",
            "UnsupportedImageError",
        ),
        (FrameSpec("p-empty", None, h("p-empty"), b"part-1"), "ERROR", "ImageDecodeError"),
        (
            FrameSpec("p-no-recipe", good, h("p-no-recipe", recipe_id=None)),
            "ERROR",
            "MissingHeaderError",
        ),
        (FrameSpec("p-no-headers", good, []), "ERROR", "MissingHeaderError"),
        (
            FrameSpec("p-bad-mm", good, h("p-bad-mm", mm_per_px="abc")),
            "ERROR",
            "InvalidHeaderError",
        ),
        (
            FrameSpec("p-not-utf8", good, [*h("p-not-utf8", roi_id=None), ("roi_id", b"\xff\xfe")]),
            "ERROR",
            "InvalidHeaderError",
        ),
        (
            FrameSpec("p-bad-recipe", good, h("p-bad-recipe", recipe_id="../etc")),
            "ERROR",
            "InvalidIdError",
        ),
        (
            FrameSpec("p-unknown-recipe", good, h("p-unknown-recipe", recipe_id="disc-zz")),
            "NO_MODEL",
            "MissingModelError",
        ),
        (
            FrameSpec("p-unknown-roi", good, h("p-unknown-roi", roi_id="inspection-9")),
            "NO_MODEL",
            "MissingModelError",
        ),
    ]


def good_frames() -> list[FrameSpec]:
    ok_png = encode_png(make_ok(8, SIZE).image)
    ng_png = encode_png(make_ng(9, SIZE).image)
    ok_jpg = encode_jpeg(make_ok(10, SIZE).image, 95)
    return [
        FrameSpec("g-ok-png", ok_png, headers("g-ok-png"), expect="OK"),
        FrameSpec("g-ng-png", ng_png, headers("g-ng-png", mm_per_px="0.1"), expect="NG"),
        FrameSpec("g-ok-jpg", ok_jpg, headers("g-ok-jpg"), expect="OK"),
    ]


@pytest.mark.kafka
@pytest.mark.slow
def test_poison_frames_are_dead_lettered_and_answered_error(kafka_broker, make_topics, trained):
    topics = make_topics(partitions=1)  # one partition: poison sits between good frames
    settings = trained.settings(
        max_frame_mb=0.1, max_image_pixels=4_000_000, **topics.settings(kafka_broker.bootstrap)
    )
    poison = poison_frames()
    good = good_frames()
    stream: list[FrameSpec] = []
    for i, (frame, _, _) in enumerate(poison):  # good, poison, poison, good, ...
        if i % 2 == 0:
            stream.append(good[(i // 2) % len(good)])
        stream.append(frame)
    stream += good  # and the good ones again at the end (same ids: answered twice)
    ids = {f.frame_id for f in stream} - {"p-no-headers"}

    async def scenario():
        async with running(trained.consumer(settings)) as task:
            await produce(kafka_broker.bootstrap, topics.frames, stream)
            await read_until(
                kafka_broker.bootstrap, topics.verdicts, lambda r: len(r) >= len(stream), watch=task
            )
            offsets = await wait_all_committed(kafka_broker.bootstrap, topics.group, topics.frames)
        verdicts = await read_all(kafka_broker.bootstrap, topics.verdicts)
        dead = await read_all(kafka_broker.bootstrap, topics.dlq)
        return offsets, verdicts, dead

    offsets, records, dead = asyncio.run(scenario())
    verdicts = parse(records)
    assert offsets == {0: len(stream)}, "the partition moved past every poison frame"
    assert len(verdicts) == len(stream)
    assert answered(ids)(records)
    by_offset = {v["source"]["offset"]: v for v in verdicts}
    dlq_by_offset = {int(dict(r.headers)["bdi.source.offset"]): r for r in dead}
    assert len(dlq_by_offset) == len(dead) == len(poison)
    expected = {f.frame_id: (verdict, cls) for f, verdict, cls in poison}
    for offset, spec in enumerate(stream):
        v = by_offset[offset]
        if spec.expect is not None:  # a good frame
            assert (v["frame_id"], v["verdict"], v["error"]) == (spec.frame_id, spec.expect, None)
            assert offset not in dlq_by_offset
            continue
        verdict, cls = expected[spec.frame_id]
        assert v["verdict"] == verdict != "OK"
        assert (v["error_class"], v["dead_lettered"]) == (cls, True), v
        assert v["error"] and v["score"] is None and v["regions"] == []
        record = dlq_by_offset[offset]
        assert record.value == spec.value and record.key == spec.key
        hdrs = record.headers
        assert list(hdrs[: len(spec.headers)]) == spec.headers, "original headers, in order"
        extra = {k: val.decode() for k, val in hdrs[len(spec.headers) :]}
        assert extra["bdi.error.class"] == cls and extra["bdi.error.verdict"] == verdict
        assert extra["bdi.error.message"] == v["error"]
        assert extra["bdi.source.topic"] == topics.frames
        assert (extra["bdi.source.partition"], extra["bdi.source.offset"]) == ("0", str(offset))
        assert extra["bdi.frame_id"] == v["frame_id"]
    derived = by_offset[[f.frame_id for f in stream].index("p-no-headers")]
    assert derived["frame_id"] == f"{topics.frames}:0:{derived['source']['offset']}"
    assert derived["frame_id_derived"] is True


def test_dead_letter_keeps_the_original_and_replaces_old_error_headers():
    original = [("frame_id", b"f1"), ("bdi.error.class", b"Old"), ("x", b"\x00\x01")]
    frame = frame_from_record(Record(value=b"\x89PNG...", headers=original, offset=41), epoch=1)
    record = dead_letter(frame, Failure("ImageDecodeError", "bad"), "dlq")
    assert (record.topic, record.key, record.value) == ("dlq", b"key", b"\x89PNG...")
    assert record.headers[:2] == (("frame_id", b"f1"), ("x", b"\x00\x01"))
    extra = dict(record.headers[2:])
    assert extra["bdi.error.class"] == b"ImageDecodeError"
    assert extra["bdi.source.offset"] == b"41" and extra["bdi.frame_id"] == b"f1"
    assert [k for k, _ in record.headers].count("bdi.error.class") == 1
    assert record.too_large == "drop_value"


def test_dead_letter_of_a_tombstone_keeps_it_a_tombstone():
    frame = frame_from_record(Record(value=None, headers=[]), epoch=1)
    record = dead_letter(frame, Failure("ImageDecodeError", "empty image"), "dlq")
    assert record.value is None and record.key == b"key"
    assert dict(record.headers)["bdi.frame_id_derived"] == b"1"


def test_a_keyless_tombstone_is_dead_lettered_under_its_frame_id():
    frame = frame_from_record(Record(value=None, key=None), epoch=1)
    record = dead_letter(frame, Failure("ImageDecodeError", "empty image"), "dlq")
    assert (record.key, record.value) == (b"f-1", None)
