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


# --- Kafka TLS and SASL -------------------------------------------------------------------
SECRET = "s3cr3t-Pa55-9f2c"


@pytest.fixture
def kafka_files(tmp_path):
    files = {"ca": "ca.pem", "cert": "client.crt", "key": "client.key", "password": "password"}
    paths = {name: tmp_path / file for name, file in files.items()}
    for name, path in paths.items():
        path.write_text(f"{SECRET}\n" if name == "password" else "pem\n")
    return paths


def _sasl(**extra):
    return {
        "BDI_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "BDI_KAFKA_SASL_MECHANISM": "SCRAM-SHA-256",
        "BDI_KAFKA_SASL_USERNAME": "alice",
        "BDI_KAFKA_SASL_PASSWORD": SECRET,
        **extra,
    }


def test_kafka_security_defaults_to_plaintext():
    s = load_settings()
    assert s.kafka_security_protocol == "PLAINTEXT"
    assert s.kafka_ssl_check_hostname is True
    assert s.kafka_sasl_mechanism is s.kafka_sasl_password is s.kafka_ssl_cafile is None


def test_kafka_sasl_settings_are_read_and_normalised(monkeypatch, kafka_files):
    env = _sasl(BDI_KAFKA_SECURITY_PROTOCOL="sasl_ssl", BDI_KAFKA_SASL_MECHANISM="scram-sha-512",
                BDI_KAFKA_SSL_CAFILE=str(kafka_files["ca"]),
                BDI_KAFKA_SSL_CHECK_HOSTNAME="0")  # fmt: skip
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    s = load_settings()
    assert (s.kafka_security_protocol, s.kafka_sasl_mechanism) == ("SASL_SSL", "SCRAM-SHA-512")
    assert s.kafka_ssl_cafile == kafka_files["ca"] and s.kafka_ssl_check_hostname is False
    assert s.kafka_sasl_password is not None
    assert s.kafka_sasl_password.get_secret_value() == SECRET
    assert SECRET not in repr(s) and SECRET not in str(s)
    assert SECRET not in s.model_dump_json()


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {"BDI_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"},
            "SASL_SSL needs BDI_KAFKA_SASL_MECHANISM (PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512), "
            "BDI_KAFKA_SASL_USERNAME, BDI_KAFKA_SASL_PASSWORD (or BDI_KAFKA_SASL_PASSWORD_FILE)",
        ),
        (_sasl(BDI_KAFKA_SASL_MECHANISM=""), "needs BDI_KAFKA_SASL_MECHANISM"),
        (_sasl(BDI_KAFKA_SASL_USERNAME=""), "needs BDI_KAFKA_SASL_USERNAME"),
        (_sasl(BDI_KAFKA_SASL_PASSWORD=""), "needs BDI_KAFKA_SASL_PASSWORD"),
        (_sasl(BDI_KAFKA_SASL_PASSWORD_FILE="{password}"), "both set: keep one"),
        (
            _sasl(BDI_KAFKA_SASL_PASSWORD="", BDI_KAFKA_SASL_PASSWORD_FILE="{tmp}/absent"),
            "BDI_KAFKA_SASL_PASSWORD_FILE={tmp}/absent: no such file",
        ),  # fmt: skip
        (
            _sasl(BDI_KAFKA_SSL_CAFILE="{tmp}/absent.pem"),
            "BDI_KAFKA_SSL_CAFILE={tmp}/absent.pem: no such file",
        ),  # fmt: skip
        (_sasl(BDI_KAFKA_SSL_CERTFILE="{cert}"), "BDI_KAFKA_SSL_KEYFILE go together"),
        (_sasl(BDI_KAFKA_SSL_KEYFILE="{key}"), "BDI_KAFKA_SSL_KEYFILE go together"),
        (
            _sasl(BDI_KAFKA_SECURITY_PROTOCOL="PLAINTEXT"),
            "BDI_KAFKA_SASL_MECHANISM, BDI_KAFKA_SASL_USERNAME, BDI_KAFKA_SASL_PASSWORD set, but "
            "BDI_KAFKA_SECURITY_PROTOCOL=PLAINTEXT does not use SASL",
        ),  # fmt: skip
        (
            {"BDI_KAFKA_SSL_CAFILE": "{ca}"},
            "BDI_KAFKA_SSL_CAFILE set, but BDI_KAFKA_SECURITY_PROTOCOL=PLAINTEXT does not use TLS",
        ),  # fmt: skip
        (
            _sasl(BDI_KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT", BDI_KAFKA_SSL_CAFILE="{ca}"),
            "SASL_PLAINTEXT does not use TLS",
        ),  # fmt: skip
        ({"BDI_KAFKA_SECURITY_PROTOCOL": "TLS"}, "BDI_KAFKA_SECURITY_PROTOCOL='TLS': Input"),
        (_sasl(BDI_KAFKA_SASL_MECHANISM="GSSAPI"), "BDI_KAFKA_SASL_MECHANISM='GSSAPI': Input"),
    ],
)
def test_inconsistent_kafka_security_is_a_clear_settings_error(
    monkeypatch, tmp_path, kafka_files, env, expected
):
    names = {"tmp": str(tmp_path), **{k: str(v) for k, v in kafka_files.items()}}
    for name, value in env.items():
        monkeypatch.setenv(name, value.format(**names))
    with pytest.raises(SettingsError) as err:
        load_settings()
    assert expected.format(**names) in str(err.value)
    assert SECRET not in str(err.value)


def test_the_password_is_never_shown_in_a_settings_error(monkeypatch, tmp_path):
    for name, value in _sasl(BDI_BACKEND_PORT="70000").items():  # another field's error
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as err:
        load_settings()
    assert "BDI_BACKEND_PORT / BRAKEDISC_BACKEND_PORT='70000'" in str(err.value)
    assert SECRET not in str(err.value)
    cfg = tmp_path / "app.yaml"  # a password of the wrong type is not echoed either
    cfg.write_text(f"kafka_sasl_password: [1, {SECRET}]\n")
    monkeypatch.setenv("BDI_CONFIG", str(cfg))
    monkeypatch.delenv("BDI_KAFKA_SASL_PASSWORD")
    monkeypatch.delenv("BDI_BACKEND_PORT")
    with pytest.raises(SettingsError) as err:
        load_settings()
    assert "BDI_KAFKA_SASL_PASSWORD: Input should be a valid string" in str(err.value)
    assert SECRET not in str(err.value)
    cfg.write_text("kafka_sasl_password: 123456789\n")  # a number is a password too
    assert load_settings().kafka_sasl_password.get_secret_value() == "123456789"


@pytest.mark.parametrize(
    ("raw", "value"),
    [("auto", "auto"), ("1", "on"), ("true", "on"), ("ON", "on"), ("0", "off"), ("no", "off")],
)
def test_the_idempotence_setting_reads_like_a_switch(monkeypatch, raw, value):
    monkeypatch.setenv("BDI_KAFKA_IDEMPOTENCE", raw)
    assert load_settings().kafka_idempotence == value


def test_an_unknown_idempotence_setting_is_refused(monkeypatch):
    monkeypatch.setenv("BDI_KAFKA_IDEMPOTENCE", "sometimes")
    with pytest.raises(
        SettingsError, match="BDI_KAFKA_IDEMPOTENCE='sometimes'.*'auto', 'on' or 'off'"
    ):
        load_settings()
