"""``BDI_INPUT_MODE``: how new fits shape the backbone's input (docs/INPUT.md)."""

import pytest

from configs.settings import SettingsError, load_settings


def test_input_mode_is_read_and_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().input_mode == "auto"
    monkeypatch.setenv("BDI_INPUT_MODE", "aspect")
    assert load_settings().input_mode == "aspect"
    monkeypatch.setenv("BDI_INPUT_MODE", "tiles")
    with pytest.raises(SettingsError) as err:
        load_settings()
    assert "BDI_INPUT_MODE" in str(err.value) and "square" in str(err.value)
