"""Frame validation and decoding (no broker)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from consumers.frames import Frame, decode_frame, frame_from_record
from tests.helpers.fakes import GOOD, Record
from tests.helpers.images import png


def frame(**kw: object) -> Frame:
    return frame_from_record(Record(**kw), epoch=1)  # type: ignore[arg-type]


def test_good_headers_are_read():
    f = frame()
    assert f.failure is None
    m = f.meta
    assert (m.frame_id, m.frame_id_derived, m.part_id, m.mm_per_px) == ("f-1", False, "SN-42", 0.05)
    assert m.model_key == ("Disc-A", "Master1", "inspection-1")
    assert (f.source.topic, f.source.partition, f.source.offset) == ("bdi.frames", 3, 17)


def test_optional_headers_may_be_absent():
    f = frame(headers=GOOD[:4])
    assert f.failure is None and f.meta.part_id is None and f.meta.mm_per_px is None


@pytest.mark.parametrize("missing", ["recipe_id", "role_id", "roi_id"])
def test_a_missing_routing_header_is_an_error(missing):
    f = frame(headers=[(k, v) for k, v in GOOD if k != missing])
    assert f.failure is not None
    assert f.failure.error_class == "MissingHeaderError" and missing in f.failure.message
    assert f.failure.verdict == "ERROR"


def test_an_empty_header_counts_as_missing():
    f = frame(headers=[(k, b"  " if k == "role_id" else v) for k, v in GOOD])
    assert f.failure is not None and "role_id" in f.failure.message


def test_a_missing_frame_id_is_derived_from_the_source_and_flagged():
    f = frame(headers=GOOD[1:])
    assert f.meta.frame_id == "bdi.frames:3:17" and f.meta.frame_id_derived
    assert f.failure is not None and f.failure.error_class == "MissingHeaderError"
    assert "frame_id" in f.failure.message
    again = frame(headers=GOOD[1:])
    assert again.meta.frame_id == f.meta.frame_id, "a redelivery gets the same id"


@pytest.mark.parametrize("value", [b"abc", b"nan", b"inf", b"-0.1", b"0"])
def test_mm_per_px_must_be_a_positive_number(value):
    f = frame(headers=[*GOOD[:5], ("mm_per_px", value)])
    assert f.failure is not None and f.failure.error_class == "InvalidHeaderError"
    assert f.meta.mm_per_px is None


def test_non_utf8_header_is_invalid_but_still_shown():
    f = frame(headers=[*GOOD[:3], ("roi_id", b"roi\xff")])
    assert f.failure is not None and f.failure.error_class == "InvalidHeaderError"
    assert f.meta.roi_id == "roi\ufffd"


def test_contradictory_duplicate_headers_are_invalid():
    f = frame(headers=[*GOOD, ("recipe_id", b"other")])
    assert f.failure is not None and "twice" in f.failure.message
    same = frame(headers=[*GOOD, ("recipe_id", b"Disc-A")])
    assert same.failure is None


def test_other_headers_are_ignored():
    f = frame(headers=[*GOOD, ("traceparent", b"\x00\xff"), ("bdi.error.class", b"X")])
    assert f.failure is None


def test_decode_gives_rgb():
    bgr = np.zeros((40, 50, 3), np.uint8)
    bgr[..., 2] = 200  # red in OpenCV's BGR
    d = decode_frame(frame(value=png(bgr)), max_bytes=1 << 20, max_pixels=10_000)
    assert d.failure is None and d.image is not None
    assert d.image.shape == (40, 50, 3) and d.image[0, 0].tolist() == [200, 0, 0]


def test_decode_refuses_oversized_frames_before_decoding():
    d = decode_frame(frame(value=png(np.zeros((40, 50, 3), np.uint8))), 10, 10_000)
    assert d.image is None and d.failure is not None
    assert d.failure.error_class == "FrameTooLargeError"


@pytest.mark.parametrize(
    ("value", "error_class"),
    [
        (b"", "ImageDecodeError"),
        (None, "ImageDecodeError"),
        (b"GIF89a....", "UnsupportedImageError"),
        (png(np.zeros((8, 8, 4), np.uint8)), "UnsupportedImageError"),
        (png(np.zeros((8, 8, 3), np.uint16)), "UnsupportedImageError"),
        (png(np.zeros((200, 200, 3), np.uint8)), "ImageTooLargeError"),
        (png(np.zeros((8, 8, 3), np.uint8))[:40], "ImageDecodeError"),
    ],
)
def test_decode_failures_are_carried_not_raised(value, error_class):
    d = decode_frame(frame(value=value), max_bytes=1 << 20, max_pixels=10_000)
    assert d.image is None and d.failure is not None
    assert d.failure.error_class == error_class and d.failure.verdict == "ERROR"


def test_a_header_failure_skips_decoding():
    f = frame(value=png(np.zeros((8, 8, 3), np.uint8)), headers=GOOD[1:])
    d = decode_frame(f, 1 << 20, 10_000)
    assert d.image is None and d.failure is f.failure


def _with_checksum(value: bytes, digest: str) -> Frame:
    return frame(value=value, headers=[*GOOD, ("content_sha256", digest.encode())])


def test_a_frame_matching_its_checksum_is_decoded():
    value = png(np.zeros((8, 8, 3), np.uint8))
    f = _with_checksum(value, hashlib.sha256(value).hexdigest().upper())
    assert f.failure is None and f.meta.content_sha256 == hashlib.sha256(value).hexdigest()
    d = decode_frame(f, 1 << 20, 10_000)
    assert d.failure is None and d.image is not None


def test_a_frame_damaged_after_its_checksum_is_refused_though_it_decodes():
    """A damaged transfer that still decodes (here: one pixel of a PNG re-encoded, a JPEG
    with zeroed entropy data alike) is refused when the frame carries its checksum."""
    value = png(np.zeros((8, 8, 3), np.uint8))
    damaged = png(np.full((8, 8, 3), 1, np.uint8))
    d = decode_frame(_with_checksum(damaged, hashlib.sha256(value).hexdigest()), 1 << 20, 10_000)
    assert d.image is None and d.failure is not None
    assert d.failure.error_class == "ChecksumMismatchError" and d.failure.verdict == "ERROR"
    assert decode_frame(frame(value=damaged), 1 << 20, 10_000).image is not None


def test_a_frame_without_a_checksum_is_refused_when_one_is_required():
    value = png(np.zeros((8, 8, 3), np.uint8))
    d = decode_frame(frame(value=value), 1 << 20, 10_000, require_checksum=True)
    assert d.image is None and d.failure is not None
    assert d.failure.error_class == "MissingHeaderError" and d.failure.verdict == "ERROR"
    assert "content_sha256" in d.failure.message and "BDI_REQUIRE_CHECKSUM" in d.failure.message
    sound = decode_frame(
        _with_checksum(value, hashlib.sha256(value).hexdigest()), 1 << 20, 10_000, True
    )
    assert sound.failure is None and sound.image is not None
    assert decode_frame(frame(value=value), 1 << 20, 10_000).image is not None  # default: off


@pytest.mark.parametrize("digest", ["abc", "z" * 64, "0" * 63, "0" * 65])
def test_a_malformed_checksum_header_is_invalid(digest):
    f = _with_checksum(b"", digest)
    assert f.failure is not None and f.failure.error_class == "InvalidHeaderError"
    assert "content_sha256" in f.failure.message


def test_every_decoded_frame_names_the_sha256_of_its_bytes_as_received():
    value = png(np.zeros((8, 8, 3), np.uint8))
    damaged = png(np.full((8, 8, 3), 1, np.uint8))
    cases = {
        "decoded": (frame(value=value), value),
        "header failure": (frame(value=value, headers=GOOD[1:]), value),
        "too large": (frame(value=value), value),
        "not an image": (frame(value=b"GIF89a...."), b"GIF89a...."),
        "damaged": (_with_checksum(damaged, hashlib.sha256(value).hexdigest()), damaged),
    }
    for name, (f, received) in cases.items():
        d = decode_frame(f, 10 if name == "too large" else 1 << 20, 10_000)
        assert d.image_sha256 == hashlib.sha256(received).hexdigest(), name
        assert (d.failure is None) == (name == "decoded"), name
    assert decode_frame(frame(value=None), 1 << 20, 10_000).image_sha256 is None  # tombstone


def test_the_checksum_check_reuses_the_frames_hash(monkeypatch):
    import consumers.frames

    calls = []
    real = hashlib.sha256

    def sha256(data=b""):
        calls.append(len(data))
        return real(data)

    monkeypatch.setattr(consumers.frames.hashlib, "sha256", sha256)
    value = png(np.zeros((8, 8, 3), np.uint8))
    digest = real(value).hexdigest()
    d = decode_frame(_with_checksum(value, digest), 1 << 20, 10_000)
    assert d.failure is None and d.image_sha256 == digest
    assert calls == [len(value)]
