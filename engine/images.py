"""Image decoding (PNG/JPEG only, bounded) and preprocessing to backbone tensors."""

from __future__ import annotations

import struct
from collections.abc import Sequence

import cv2
import numpy as np
import simplejpeg
import torch

from engine.backbone import IMAGENET_MEAN, IMAGENET_STD
from engine.errors import (
    ChannelMismatchError,
    ImageDecodeError,
    ImageTooLargeError,
    ShapeMismatchError,
    UnsupportedImageError,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"


def sniff_format(data: bytes) -> str:
    if data.startswith(PNG_MAGIC):
        return "png"
    if data.startswith(JPEG_MAGIC):
        return "jpeg"
    raise UnsupportedImageError("not a PNG or JPEG image")


def _png_size(data: bytes) -> tuple[int, int]:
    if len(data) < 24 or data[12:16] != b"IHDR":
        raise ImageDecodeError("truncated PNG header")
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def _jpeg_size(data: bytes) -> tuple[int, int]:
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            raise ImageDecodeError("corrupt JPEG marker stream")
        marker = data[i + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        length = struct.unpack(">H", data[i + 2 : i + 4])[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack(">HH", data[i + 5 : i + 9])
            if i + 9 < len(data) and data[i + 9] not in (1, 3):
                # 4 components: CMYK / YCCK, which the decoder would convert by guesswork
                raise UnsupportedImageError(f"JPEG with {data[i + 9]} colour components")
            return width, height
        i += 2 + length
    raise ImageDecodeError("JPEG without a frame header")


def decode_image(data: bytes, max_pixels: int = 40_000_000) -> np.ndarray:
    """PNG/JPEG bytes -> ``(H, W, 3)`` uint8 RGB.

    The pixel count is read from the header and bounded *before* any pixel buffer is
    allocated; grey images are expanded to RGB; 16-bit, alpha and CMYK are refused rather
    than guessed at.
    """
    if not data:
        raise ImageDecodeError("empty image")
    fmt = sniff_format(data)
    width, height = _png_size(data) if fmt == "png" else _jpeg_size(data)
    if width <= 0 or height <= 0 or width * height > max_pixels:
        raise ImageTooLargeError(f"image of {width}x{height} px exceeds {max_pixels} pixels")
    if fmt == "png":
        bit_depth, colour_type = data[24], data[25]
        if bit_depth != 8:
            raise UnsupportedImageError(f"PNG bit depth {bit_depth} is not supported (8 only)")
        if colour_type in (4, 6):
            raise UnsupportedImageError("PNG with an alpha channel is not supported")
    if fmt == "jpeg":
        return _decode_jpeg(data)
    buf = np.frombuffer(data, dtype=np.uint8)
    image = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ImageDecodeError(f"cannot decode {fmt.upper()} data")
    if image.dtype != np.uint8:
        raise UnsupportedImageError(f"pixel type {image.dtype} is not supported (8-bit only)")
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    elif image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    else:
        raise UnsupportedImageError(f"{image.shape[2]}-channel images are not supported")
    return image


def _decode_jpeg(data: bytes) -> np.ndarray:
    """JPEG bytes -> ``(H, W, 3)`` uint8 RGB, refusing data that libjpeg only warns about.

    A JPEG whose entropy-coded data is damaged (a broken transfer, a failing encoder) makes
    libjpeg warn ("Corrupt JPEG data", "Premature end of data segment") and still return
    pixels, part of them invented; OpenCV drops the warning. Such a frame must not be
    scored, OK least of all: libjpeg-turbo is asked to treat every warning as an error.
    Grey JPEGs come out as RGB; the pixels equal OpenCV's for sound data.
    """
    try:
        image = simplejpeg.decode_jpeg(data, colorspace="RGB", strict=True)
    except ValueError as exc:
        raise ImageDecodeError(f"corrupt JPEG data: {exc}") from exc
    return np.ascontiguousarray(image)


# an image's channel mode: a grey camera's crop decodes to R = G = B; a colour camera's
# does not. A model is scored only on frames of its training images' mode.
GREY = "grey"
COLOUR = "colour"
# rows compared first: a colour image almost always differs in them, and is settled there
_HEAD_ROWS = 4


def channel_mode(image: np.ndarray) -> str:
    """``GREY`` when the channels of ``(H, W, 3)`` (or ``(H, W)``) uint8 pixels are all
    equal, else ``COLOUR``. Exact: one differing pixel makes a colour image. Measured on
    one EPYC core at 512 x 512: ~0.4 ms for a grey image, ~0.01 ms for a colour one."""
    if image.ndim == 2 or image.shape[2] == 1:
        return GREY
    for part in (image[:_HEAD_ROWS], image):
        px = part.reshape(-1, image.shape[2])
        if not all(np.array_equal(px[:, 0], px[:, c]) for c in range(1, px.shape[1])):
            return COLOUR
    return GREY


def common_mode(images: Sequence[np.ndarray]) -> str:
    """The one channel mode of ``images``; :class:`ChannelMismatchError` naming the counts
    when they mix grey and colour (a model of both judges each against the other's)."""
    modes = [channel_mode(image) for image in images]
    n_grey = modes.count(GREY)
    if 0 < n_grey < len(modes):
        raise ChannelMismatchError(
            f"the images mix channel modes: {n_grey} grey, {len(modes) - n_grey} colour; "
            "a model is fitted on the images of one camera type (all grey or all colour)"
        )
    return GREY if n_grey else COLOUR


def check_mode(model_mode: str | None, image_mode: str, what: str = "frame is") -> None:
    """:class:`ChannelMismatchError` when an image's channel mode is not its model's
    (``model_mode`` None: a model stored before modes were recorded, not checked)."""
    if model_mode is not None and image_mode != model_mode:
        raise ChannelMismatchError(f"model trained on {model_mode} images, {what} {image_mode}")


def read_image(path: str) -> np.ndarray:
    with open(path, "rb") as fh:
        return decode_image(fh.read())


# an "aspect" model scores frames whose aspect ratio (H / W) is within this factor of its
# input shape's, either way; beyond it a frame would be visibly squashed, and is refused
ASPECT_TOLERANCE = 1.25
# how an "aspect" model's input shape is sized from image_size: "short" makes the short
# side image_size; "area" keeps image_size² pixels (see docs/INPUT.md for the measurements)
SIZING_RULES = ("short", "area")
ASPECT_SIZING = "short"  # the rule new "aspect" fits use
# BDI_INPUT_MODE=auto keeps the aspect ratio only of crops that a square input would squash
# by more than this: measured, aspect input gains on 2.5:1 strips and loses on 4:3 photos
# (docs/INPUT.md#input-shape)
SQUASH_LIMIT = 1.5


def aspect_ratio(image: np.ndarray) -> float:
    """``H / W`` of an ``(H, W, ...)`` image."""
    return image.shape[0] / image.shape[1]


def squash(images: Sequence[np.ndarray]) -> float:
    """How much a square input squashes ``images``: their median aspect ratio, long side
    over short side (1 for square crops)."""
    ratio = float(np.median([aspect_ratio(image) for image in images]))
    return max(ratio, 1.0 / ratio)


def aspect_shape(
    images: Sequence[np.ndarray], image_size: int, multiple: int, rule: str = "short"
) -> tuple[int, int]:
    """The input ``(H, W)`` of an "aspect" model fitted on ``images``: their median aspect
    ratio, sized from ``image_size`` by ``rule`` (:data:`SIZING_RULES`), both sides
    multiples of ``multiple`` (the backbone's). :class:`ShapeMismatchError` when an image's
    ratio is more than :data:`ASPECT_TOLERANCE` from the median (one shape cannot fit all)."""
    ratios = np.array([aspect_ratio(image) for image in images])
    ratio = float(np.median(ratios))
    off = int(np.count_nonzero(np.abs(np.log(ratios / ratio)) > np.log(ASPECT_TOLERANCE)))
    if off:
        raise ShapeMismatchError(
            f"{off} of {len(ratios)} images differ in aspect ratio by more than "
            f"{ASPECT_TOLERANCE:g}x from their median (H/W {ratio:.3g}); an aspect model is "
            "fitted on crops of one shape"
        )
    if rule == "short":
        scale = image_size / min(ratio, 1.0)  # the width at a short side of image_size
    elif rule == "area":
        scale = image_size / np.sqrt(ratio)
    else:
        raise ValueError(f"unknown sizing rule {rule!r}; choose one of {SIZING_RULES}")

    def side(px: float) -> int:
        return max(multiple, int(round(px / multiple)) * multiple)

    return side(scale * ratio), side(scale)


def check_shape(model_hw: tuple[int, int] | None, image: np.ndarray) -> None:
    """:class:`ShapeMismatchError` when ``image``'s aspect ratio differs from that of an
    "aspect" model's input ``model_hw`` by more than :data:`ASPECT_TOLERANCE` (``None``: a
    square model, which squashes every frame as it always has)."""
    if model_hw is None:
        return
    want, got = model_hw[0] / model_hw[1], aspect_ratio(image)
    if abs(np.log(got / want)) > np.log(ASPECT_TOLERANCE):
        raise ShapeMismatchError(
            f"frame of {image.shape[1]}x{image.shape[0]} px (H/W {got:.3g}); the model takes "
            f"{model_hw[1]}x{model_hw[0]} (H/W {want:.3g}), at most {ASPECT_TOLERANCE:g}x off"
        )


def to_tensor(images: list[np.ndarray], size: int | tuple[int, int]) -> torch.Tensor:
    """RGB uint8 images of any size -> normalised ``(B, 3, H, W)`` float32, each resized to
    ``size`` ``(H, W)`` (an int: ``(size, size)``)."""
    height, width = (size, size) if isinstance(size, int) else size
    batch = np.empty((len(images), height, width, 3), dtype=np.uint8)
    for i, image in enumerate(images):
        if image.shape[:2] == (height, width):
            batch[i] = image
        else:
            batch[i] = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    x = torch.from_numpy(batch).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return x.sub_(mean).div_(std)
