"""Engine error types. The front doors map them to HTTP statuses / verdicts."""

from __future__ import annotations

# ``Inference.error_kind`` of a frame whose score or patch scores came out NaN or infinite
# (NaN / inf features, a broken index): the error class the front doors report for it
NON_FINITE = "NonFiniteScoreError"


class EngineError(Exception):
    """Base class of every error the engine raises on purpose."""


class BackboneWeightsError(EngineError):
    """The backbone's weights file is missing, unreadable or of the wrong model."""


class DeviceError(EngineError):
    """CUDA is required but not available."""


class DeviceMemoryError(DeviceError):
    """The GPU ran out of memory (placing a model's index, or a search): transient, the
    model itself is sound (HTTP 503; ERROR verdicts for the frames concerned)."""


class GridMismatchError(EngineError):
    """An image's token grid differs from the model's (HTTP 400)."""


class ChannelMismatchError(EngineError):
    """Grey and colour images together: a frame not of its model's channel mode, or training
    images of both (HTTP 422; an ERROR verdict for the frame)."""


class ShapeMismatchError(EngineError):
    """A frame whose aspect ratio is not its model's (an "aspect" model), or training images
    of different aspect ratios (HTTP 422; an ERROR verdict for the frame)."""


class NotFittedError(EngineError):
    """A model has no memory bank (HTTP 400: missing memory)."""


class ImageDecodeError(EngineError):
    """Image bytes are not a readable PNG/JPEG, or of an unsupported kind."""


class UnsupportedImageError(ImageDecodeError):
    """Not PNG/JPEG, or a kind the engine refuses to guess at: 16-bit, alpha, CMYK (HTTP 415)."""


class ImageTooLargeError(ImageDecodeError):
    """More pixels than allowed, known from the header before decoding (HTTP 413)."""
