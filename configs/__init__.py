"""Settings: one pydantic-settings model, ``configs/app.yaml`` defaults."""

from configs.settings import Settings, SettingsError, get_settings, load_settings

__all__ = ["Settings", "SettingsError", "get_settings", "load_settings"]
