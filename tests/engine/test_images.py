"""Image decoding (PNG/JPEG, bounded) and preprocessing to backbone tensors."""

from __future__ import annotations

import io
import struct
import tracemalloc
import zlib

import cv2
import numpy as np
import pytest
import torch

from engine.backbone import IMAGENET_MEAN, IMAGENET_STD
from engine.errors import ImageDecodeError, UnsupportedImageError
from engine.images import PNG_MAGIC, decode_image, to_tensor


def _encode(ext: str, image: np.ndarray, *params: int) -> bytes:
    ok, buf = cv2.imencode(ext, image, list(params))
    assert ok
    return buf.tobytes()


@pytest.fixture
def rgb() -> np.ndarray:
    """A 30x40 RGB image whose channels differ (catches BGR/RGB swaps)."""
    image = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    image[..., 0] = 250  # red
    image[..., 2] = 5  # blue
    return image


def _png(image_rgb: np.ndarray) -> bytes:
    return _encode(".png", cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR))


def test_png_rgb_round_trip(rgb: np.ndarray) -> None:
    out = decode_image(_png(rgb))
    assert out.dtype == np.uint8
    assert out.shape == (30, 40, 3)
    np.testing.assert_array_equal(out, rgb)


def test_grey_png_becomes_three_channels() -> None:
    grey = np.random.default_rng(1).integers(0, 256, (25, 35), dtype=np.uint8)
    out = decode_image(_encode(".png", grey))
    assert out.shape == (25, 35, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], grey)


def test_jpeg_decodes_as_rgb() -> None:
    image = np.zeros((48, 64, 3), dtype=np.uint8)
    image[..., 0] = 220  # a flat red: survives JPEG almost unchanged
    image[..., 1] = 40
    image[..., 2] = 10
    out = decode_image(
        _encode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), cv2.IMWRITE_JPEG_QUALITY, 95)
    )
    assert out.shape == (48, 64, 3)
    assert out.dtype == np.uint8
    assert np.abs(out.astype(int) - image.astype(int)).max() <= 6


def test_progressive_jpeg_decodes() -> None:
    image = np.full((33, 17, 3), 128, dtype=np.uint8)
    data = _encode(".jpg", image, cv2.IMWRITE_JPEG_PROGRESSIVE, 1)
    assert decode_image(data).shape == (33, 17, 3)


def test_empty_bytes_are_refused() -> None:
    with pytest.raises(ImageDecodeError, match="empty"):
        decode_image(b"")


@pytest.mark.parametrize("data", [b"GIF89a" + b"\0" * 40, b"BM" + b"\0" * 60, b"hello world"])
def test_other_formats_are_refused(data: bytes) -> None:
    with pytest.raises(ImageDecodeError, match="PNG or JPEG"):
        decode_image(data)


def test_truncated_png_header_is_refused() -> None:
    with pytest.raises(ImageDecodeError):
        decode_image(PNG_MAGIC + b"\0\0\0\rIH")


def test_truncated_png_body_is_refused(rgb: np.ndarray) -> None:
    data = _png(rgb)
    with pytest.raises(ImageDecodeError):
        decode_image(data[: len(data) // 2])


def test_truncated_jpeg_without_frame_header_is_refused() -> None:
    data = _encode(".jpg", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ImageDecodeError):
        decode_image(data[:8])


def test_16_bit_png_is_refused() -> None:
    deep = np.full((10, 10, 3), 40000, dtype=np.uint16)
    with pytest.raises(ImageDecodeError, match="bit depth 16"):
        decode_image(_encode(".png", deep))


def test_rgba_png_is_refused() -> None:
    rgba = np.full((10, 10, 4), 200, dtype=np.uint8)
    with pytest.raises(ImageDecodeError, match="alpha"):
        decode_image(_encode(".png", rgba))


def _png_header(width: int, height: int) -> bytes:
    ihdr = b"IHDR" + struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return PNG_MAGIC + struct.pack(">I", 13) + ihdr + struct.pack(">I", zlib.crc32(ihdr))


def test_huge_png_is_refused_from_the_header() -> None:
    tracemalloc.start()
    try:
        with pytest.raises(ImageDecodeError, match="pixels"):
            decode_image(_png_header(60000, 60000))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20  # refused from the header: no 10 GB pixel buffer was allocated


def test_max_pixels_bounds_a_real_image(rgb: np.ndarray) -> None:
    data = _png(rgb)
    with pytest.raises(ImageDecodeError, match="pixels"):
        decode_image(data, max_pixels=30 * 40 - 1)
    assert decode_image(data, max_pixels=30 * 40).shape == (30, 40, 3)


def test_huge_jpeg_is_refused_from_the_header() -> None:
    data = bytearray(_encode(".jpg", np.zeros((16, 16, 3), np.uint8)))
    sof = next(i for i in range(2, len(data) - 1) if data[i] == 0xFF and data[i + 1] == 0xC0)
    data[sof + 5 : sof + 9] = struct.pack(">HH", 60000, 60000)
    with pytest.raises(ImageDecodeError, match="pixels"):
        decode_image(bytes(data))


def test_zero_sized_png_is_refused() -> None:
    with pytest.raises(ImageDecodeError):
        decode_image(_png_header(0, 10))


def test_to_tensor_shape_and_dtype() -> None:
    images = [
        np.zeros((30, 40, 3), np.uint8),
        np.zeros((64, 64, 3), np.uint8),
        np.zeros((100, 50, 3), np.uint8),
    ]
    x = to_tensor(images, 64)
    assert x.shape == (3, 3, 64, 64)
    assert x.dtype == torch.float32


def test_to_tensor_normalises_with_imagenet_statistics() -> None:
    colour = (200, 100, 30)
    image = np.empty((30, 40, 3), np.uint8)
    image[:] = colour
    x = to_tensor([image], 32)
    for c in range(3):
        expected = (colour[c] / 255.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
        torch.testing.assert_close(x[0, c], torch.full((32, 32), expected), rtol=0, atol=1e-5)


def test_to_tensor_keeps_the_layout() -> None:
    """Channel order stays RGB and rows stay rows (no transpose)."""
    image = np.zeros((16, 16, 3), np.uint8)
    image[:8, :, 0] = 255  # red top half
    x = to_tensor([image], 16)
    red = x[0, 0]
    assert float(red[:8].mean()) > float(red[8:].mean())
    torch.testing.assert_close(x[0, 1], torch.full((16, 16), -IMAGENET_MEAN[1] / IMAGENET_STD[1]))


def test_cmyk_jpeg_is_refused():
    from PIL import Image

    buf = io.BytesIO()
    Image.new("CMYK", (16, 16), (10, 20, 30, 40)).save(buf, format="JPEG")
    with pytest.raises(UnsupportedImageError, match="4 colour components"):
        decode_image(buf.getvalue())


def _photo_jpeg(quality: int = 92) -> tuple[np.ndarray, bytes]:
    rng = np.random.default_rng(11)
    image = cv2.GaussianBlur(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8), (0, 0), 2)
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, quality])  # fmt: skip
    assert ok
    return image, buf.tobytes()


def test_a_sound_jpeg_decodes_to_the_pixels_opencv_gives() -> None:
    _, data = _photo_jpeg()
    reference = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), 1), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(decode_image(data), reference)
    grey = cv2.imencode(".jpg", reference[..., 0])[1].tobytes()
    out = decode_image(grey)
    assert out.shape == (96, 128, 3) and (out[..., 0] == out[..., 2]).all()


@pytest.mark.parametrize("seed", [0, 2])
def test_a_jpeg_whose_damage_libjpeg_notices_is_refused(seed: int) -> None:
    """libjpeg only warns about damaged entropy-coded data it notices and invents the pixels
    it lost (OpenCV returns them); such a frame is refused rather than scored. (Damage that
    decodes without a warning cannot be told from a sound image: baseline JPEG carries no
    checksum.)"""
    from edge.simulator.discs import encode_jpeg, make_ok

    data = bytearray(encode_jpeg(make_ok(95_000 + seed, 224).image, 95))
    at = len(data) // 3 + seed * len(data) // 24
    data[at : at + 16] = bytes(16)
    assert cv2.imdecode(np.frombuffer(bytes(data), np.uint8), 1) is not None
    with pytest.raises(ImageDecodeError, match="corrupt JPEG"):
        decode_image(bytes(data))
    with pytest.raises(ImageDecodeError):
        decode_image(bytes(data[: len(data) * 2 // 3]))  # cut short
