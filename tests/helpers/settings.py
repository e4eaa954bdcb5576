"""The smallest real engine configuration, as settings."""

from __future__ import annotations

import os

import pytest

from configs.settings import Settings, load_settings

# The smallest real engine configuration: packaged EfficientNet-Lite0 weights, CPU, 64 px.
TINY = dict(
    backbone="efficientnet_lite0",
    require_cuda=False,
    image_size=64,
    coreset_rate=0.5,
    engine_batch_size=4,
    fewshot_below=0,  # plain PatchCore unless a test asks for the few-shot options
)


def tiny_settings(**overrides: object) -> Settings:
    """Tiny CPU settings, immune to the developer's own BDI_* variables (session fixtures
    are built before the per-test environment cleaning applies)."""
    with pytest.MonkeyPatch.context() as mp:
        for name in list(os.environ):
            if name.startswith(("BDI_", "BRAKEDISC_")) and name != "BDI_TEST_DATA":
                mp.delenv(name)
        mp.setenv("BDI_ENV_FILE", os.devnull)  # nor a local bdi.env
        return load_settings(**{**TINY, **overrides})
