"""Malformed frames for S5, each with the dead-letter class it must get, and frames that
look odd but are valid (grey, palette, large metadata, large foreign headers): scored like
any other, except grey ones, which a model trained on colour discs refuses (an engine
``InferenceError`` whose text names the ``ChannelMismatchError``, docs/INPUT.md)."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from edge.simulator.discs import encode_jpeg, encode_png, make_ok

PNG_SIG = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class Kind:
    name: str
    make: Callable[[int], bytes | None]  # seed -> frame value
    error_class: str | None  # None: valid, must be scored
    header: tuple[str, bytes] | None = None  # an extra (or replaced) Kafka header


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _ihdr(width: int, height: int, depth: int = 8, colour: int = 2) -> bytes:
    return PNG_SIG + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0))


def _jpeg_header(width: int, height: int) -> bytes:
    """SOI + a baseline frame header claiming ``width x height`` + EOI; no scan data."""
    sof = struct.pack(">HBHHB", 17, 8, height, width, 3) + bytes.fromhex("012200021101031101")
    return b"\xff\xd8\xff\xc0" + sof + b"\xff\xd9"


def _rgb(seed: int, size: int) -> np.ndarray:
    return make_ok(30_000 + seed, size).image


def _grey(seed: int, size: int) -> np.ndarray:
    return cv2.cvtColor(_rgb(seed, size), cv2.COLOR_RGB2GRAY)


def _pil(image: Image.Image, fmt: str, **options: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **options)
    return buf.getvalue()


def _cv(ext: str, array: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(ext, array)
    assert ok
    return buf.tobytes()


def _with_text_chunk(png: bytes, size: int) -> bytes:
    """A valid PNG carrying a ``size``-byte tEXt chunk right after its header."""
    text = _chunk(b"tEXt", b"Comment\x00" + b"m" * size)
    return png[:33] + text + png[33:]


def kinds(size: int, max_frame_bytes: int) -> tuple[list[Kind], list[Kind]]:
    """``(bad, odd_but_valid)`` frame kinds for ROIs of ``size`` px."""
    png = lambda s: encode_png(_rgb(s, size))  # noqa: E731
    jpg = lambda s: encode_jpeg(_rgb(s, size), 95)  # noqa: E731
    big = int(np.sqrt(max_frame_bytes / 3)) + 64  # incompressible noise over the bound
    bad = [
        Kind("truncated_png", lambda s: png(s)[: len(png(s)) // 2], "ImageDecodeError"),
        Kind("truncated_jpeg", lambda s: jpg(s)[: len(jpg(s)) // 2], "ImageDecodeError"),
        Kind(
            "truncated_progressive_jpeg",
            lambda s: (lambda d: d[: len(d) // 2])(
                _pil(Image.fromarray(_rgb(s, size)), "JPEG", progressive=True)
            ),
            "ImageDecodeError",
        ),  # fmt: skip
        Kind(
            "corrupt_png_data",
            lambda s: (lambda d: d[:200] + bytes(64) + d[264:])(png(s)),
            "ImageDecodeError",
        ),  # fmt: skip
        Kind("empty", lambda s: b"", "ImageDecodeError"),
        Kind("tombstone", lambda s: None, "ImageDecodeError"),
        Kind("png_magic_then_garbage", lambda s: PNG_SIG + b"garbage" * 8, "ImageDecodeError"),
        Kind(
            "jpeg_magic_then_garbage", lambda s: b"\xff\xd8\xff" + b"\0junk" * 8, "ImageDecodeError"
        ),  # fmt: skip
        Kind("gif", lambda s: b"GIF89a" + bytes(64), "UnsupportedImageError"),
        Kind("bmp", lambda s: _cv(".bmp", _rgb(s, size)), "UnsupportedImageError"),
        Kind("webp", lambda s: _cv(".webp", _rgb(s, size)), "UnsupportedImageError"),
        Kind(
            "random_bytes", lambda s: np.random.default_rng(s).bytes(512), "UnsupportedImageError"
        ),  # fmt: skip
        Kind("png_60000x60000", lambda s: _ihdr(60000, 60000), "ImageTooLargeError"),
        Kind("jpeg_60000x60000", lambda s: _jpeg_header(60000, 60000), "ImageTooLargeError"),
        Kind(
            "png_16bit_rgb",
            lambda s: _cv(".png", _rgb(s, size).astype(np.uint16) * 257),
            "UnsupportedImageError",
        ),  # fmt: skip
        Kind(
            "png_16bit_grey",
            lambda s: _cv(".png", _grey(s, size).astype(np.uint16) * 257),
            "UnsupportedImageError",
        ),  # fmt: skip
        Kind(
            "png_1bit",
            lambda s: _pil(Image.fromarray(_grey(s, size)).convert("1"), "PNG"),
            "UnsupportedImageError",
        ),  # fmt: skip
        Kind(
            "png_rgba",
            lambda s: _cv(".png", np.dstack([_rgb(s, size), np.full((size, size), 255, np.uint8)])),
            "UnsupportedImageError",
        ),  # fmt: skip
        Kind(
            "png_grey_alpha",
            lambda s: _pil(Image.fromarray(_grey(s, size)).convert("LA"), "PNG"),
            "UnsupportedImageError",
        ),  # fmt: skip
        Kind(
            "jpeg_cmyk",
            lambda s: _pil(Image.fromarray(_rgb(s, size)).convert("CMYK"), "JPEG"),
            "UnsupportedImageError",
        ),  # fmt: skip
        Kind("huge_roi_id_header", png, "InvalidIdError", ("roi_id", b"r" * 100_000)),
        Kind(
            "over_max_frame_bytes",
            lambda s: encode_png(
                np.random.default_rng(s).integers(0, 256, (big, big, 3), dtype=np.uint8)
            ),
            "FrameTooLargeError",
        ),  # fmt: skip
    ]
    odd = [
        # valid, but never judged against colour training images: the engine's ERROR
        # (ChannelMismatchError in the verdict's error text)
        Kind("grey_png", lambda s: _cv(".png", _grey(s, size)), "InferenceError"),
        Kind("grey_jpeg", lambda s: _cv(".jpg", _grey(s, size)), "InferenceError"),
        Kind(
            "palette_png", lambda s: _pil(Image.fromarray(_rgb(s, size)).convert("P"), "PNG"), None
        ),  # fmt: skip
        Kind("png_with_150kb_metadata", lambda s: _with_text_chunk(png(s), 150_000), None),
        Kind("100kb_foreign_header", png, None, ("x-trace", b"t" * 100_000)),
    ]
    return bad, odd
