from pathlib import Path

import pytest

from configs.settings import Settings, SettingsError, load_settings


def test_defaults_without_yaml(monkeypatch, tmp_path):
    monkeypatch.setenv("BDI_CONFIG", str(tmp_path / "absent.yaml"))
    s = load_settings()
    assert s.require_cuda is True
    assert s.backbone == "dinov2_vits14"
    assert s.models_dir == Path("models")
    assert s.cors_origins == []


def test_env_beats_yaml_beats_default(monkeypatch, tmp_path):
    cfg = tmp_path / "app.yaml"
    cfg.write_text("backend_port: 9100\ncoreset_rate: 0.25\nscore_percentile: 97\n")
    monkeypatch.setenv("BDI_CONFIG", str(cfg))
    monkeypatch.setenv("BDI_BACKEND_PORT", "9200")
    s = load_settings()
    assert s.backend_port == 9200  # env wins over yaml
    assert s.coreset_rate == 0.25  # yaml wins over default
    assert s.min_ok_samples == Settings.model_fields["min_ok_samples"].default


@pytest.mark.parametrize(
    ("legacy", "value", "field", "expected"),
    [
        ("BRAKEDISC_BACKEND_HOST", "0.0.0.0", "backend_host", "0.0.0.0"),
        ("BRAKEDISC_BACKEND_PORT", "8123", "backend_port", 8123),
        ("BRAKEDISC_MODELS_DIR", "/srv/models", "models_dir", Path("/srv/models")),
        ("BRAKEDISC_CORS_ORIGINS", "http://a, http://b", "cors_origins", ["http://a", "http://b"]),
    ],
)
def test_legacy_names(monkeypatch, legacy, value, field, expected):
    monkeypatch.setenv(legacy, value)
    assert getattr(load_settings(), field) == expected


def test_new_name_wins_over_legacy(monkeypatch):
    monkeypatch.setenv("BRAKEDISC_BACKEND_PORT", "8123")
    monkeypatch.setenv("BDI_BACKEND_PORT", "8456")
    assert load_settings().backend_port == 8456


@pytest.mark.parametrize(
    ("name", "value", "hint"),
    [
        ("BDI_BACKBONE", "resnet", "dinov2_vits14"),
        ("BDI_REQUIRE_CUDA", "maybe", "bool"),
        ("BDI_CORESET_RATE", "1.5", "less than or equal to 1"),
        ("BDI_BACKEND_PORT", "70000", "65535"),
        ("BDI_KNN_MODE", "annoy", "exact"),
        ("BDI_MODEL_REVISIONS_KEPT", "1", "greater than or equal to 2"),
    ],
)
def test_invalid_value_names_variable_and_accepted_values(monkeypatch, name, value, hint):
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as err:
        load_settings()
    assert name in str(err.value)
    assert hint in str(err.value)


def test_image_size_must_fit_patch_grid(monkeypatch):
    monkeypatch.setenv("BDI_IMAGE_SIZE", "225")
    with pytest.raises(SettingsError, match="multiple of 14"):
        load_settings()


def test_shipped_yaml_is_valid():
    s = load_settings()
    assert s.backend_port == 8000
