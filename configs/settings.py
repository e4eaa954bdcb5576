"""One settings model for the whole service.

Precedence: environment (``BDI_*``, legacy ``BRAKEDISC_*``) > the local settings file
(``./bdi.env`` or ``BDI_ENV_FILE``) > the profile's values (``BDI_PROFILE``, see
:mod:`configs.profile`) > ``configs/app.yaml`` (or ``BDI_CONFIG``) > defaults. An invalid
value stops start-up with :class:`SettingsError`, naming the variable and the accepted values.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from configs.profile import Profile, local_file, profile_values

DEFAULT_YAML = Path(__file__).with_name("app.yaml")

BackboneName = Literal["dinov2_vits14", "efficientnet_lite0"]
KnnMode = Literal["exact", "ivf"]  # engine.knn.KnnIndex's modes (the one definition)
KafkaProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
ThresholdMethod = Literal["conformal", "percentile"]  # engine.engine.Engine.fit
InputMode = Literal["square", "aspect", "auto"]  # engine.meta.SQUARE, ASPECT, AUTO
Idempotence = Literal["auto", "on", "off"]  # consumers.publish.start_producer
# never shown in a settings error, whatever their value
SECRET_FIELDS = frozenset({"api_key", "kafka_sasl_password", "trace_db_url", "session_secret"})
KAFKA_TLS_FILES = ("kafka_ssl_cafile", "kafka_ssl_certfile", "kafka_ssl_keyfile")
KAFKA_SASL_FIELDS = (
    "kafka_sasl_mechanism",
    "kafka_sasl_username",
    "kafka_sasl_password",
    "kafka_sasl_password_file",
)

# Legacy names of the original backend that are still accepted.
LEGACY_ALIASES = {
    "backend_host": "BRAKEDISC_BACKEND_HOST",
    "backend_port": "BRAKEDISC_BACKEND_PORT",
    "models_dir": "BRAKEDISC_MODELS_DIR",
    "cors_origins": "BRAKEDISC_CORS_ORIGINS",
}


def _env(name: str, **kwargs: Any) -> Any:
    """A field read from ``BDI_<NAME>`` (and its legacy ``BRAKEDISC_`` name, if any)."""
    names = [f"BDI_{name.upper()}"]
    if name in LEGACY_ALIASES:
        names.append(LEGACY_ALIASES[name])
    return Field(validation_alias=AliasChoices(name, *names), **kwargs)


class SettingsError(ValueError):
    """A setting has an invalid value; the message names the variable and what is accepted."""


class _BdiSources(BaseSettings):
    """Where every settings class here reads from: the arguments, the environment, the local
    settings file, the profile, ``configs/app.yaml`` (see the module docstring)."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return _sources(settings_cls, init_settings, env_settings)


class Settings(_BdiSources):
    model_config = SettingsConfigDict(
        extra="ignore",
        populate_by_name=True,
        case_sensitive=False,
        frozen=True,
    )

    # production: CUDA required, DINOv2; dev: the CPU allowed and EfficientNet-Lite0 where unset
    profile: Profile = _env("profile", default="production")

    # --- original backend -------------------------------------------------------------
    backend_host: str = _env("backend_host", default="127.0.0.1")
    backend_port: int = _env("backend_port", default=8000, ge=1, le=65535)
    models_dir: Path = _env("models_dir", default=Path("models"))
    coreset_rate: float = _env("coreset_rate", default=0.1, gt=0.0, le=1.0)
    score_percentile: float = _env("score_percentile", default=99.5, gt=0.0, le=100.0)
    # the OK-only threshold: "conformal" (a held-out split, false-reject rate <= target_frr,
    # docs/THRESHOLDS.md) or "percentile" (the legacy score_percentile of leave-one-out scores)
    threshold_method: ThresholdMethod = _env("threshold_method", default="conformal")
    target_frr: float = _env("target_frr", default=0.05, gt=0.0, lt=1.0)
    # share of the OK images held out to calibrate (at least what target_frr needs, at most
    # half); they join the memory bank afterwards
    calibration_share: float = _env("calibration_share", default=0.2, gt=0.0, le=0.5)
    area_mm2_thr: float = _env("area_mm2_thr", default=0.0, ge=0.0)
    min_ok_samples: int = _env("min_ok_samples", default=10, ge=1)
    train_dataset_only: bool = _env("train_dataset_only", default=False)
    require_cuda: bool = _env("require_cuda", default=True)
    cache_max_entries: int = _env("cache_max_entries", default=1024, ge=1)  # a cap; MB bound
    # loaded models' resident size per worker (MB); 0 = a quarter of the available memory
    cache_max_mb: float = _env("cache_max_mb", default=0.0, ge=0.0)
    # revisions of each model kept on disk; 2 = the current and the previous one, which
    # readers and crash recovery rely on (store.retention.REVISIONS_KEPT is the default)
    model_revisions_kept: int = _env("model_revisions_kept", default=5, ge=2)
    cors_origins: Annotated[list[str], NoDecode] = _env("cors_origins", default_factory=list)
    gui_log_dir: Path | None = _env("gui_log_dir", default=None)

    # --- engine ---------------------------------------------------------------------------
    backbone: BackboneName = _env("backbone", default="dinov2_vits14")
    # Path to a weights file, or the word "random" (speed benchmarks only; results say so).
    backbone_weights: str | None = _env("backbone_weights", default=None)
    image_size: int = _env("image_size", default=224, ge=28, le=1792)
    # how new fits make a frame the backbone's input (stored with each model): "square"
    # squashes it to image_size²; "aspect" keeps the training crops' aspect ratio; "auto"
    # keeps it where a square input would squash them by more than 1.5x (docs/INPUT.md)
    input_mode: InputMode = _env("input_mode", default="auto")
    coreset_projection_dim: int = _env("coreset_projection_dim", default=128, ge=8, le=4096)
    knn_mode: KnnMode = _env("knn_mode", default="ivf")
    knn_ivf_nprobe: int = _env("knn_ivf_nprobe", default=4, ge=1)
    # memory-bank rows kept per grid position as cheap first bounds for the kNN; 0 = off
    knn_shortlist: int = _env("knn_shortlist", default=64, ge=0, le=4096)
    anomaly_sigma: float = _env("anomaly_sigma", default=4.0, gt=0.0, le=64.0)
    score_reweight: bool = _env("score_reweight", default=False)
    position_norm: bool = _env("position_norm", default=True)
    # new fits on fewer OK images get the few-shot options (engine.fewshot); 0 = never
    fewshot_below: int = _env("fewshot_below", default=17, ge=0)
    # images per backbone forward; 0 = by device (engine.engine.CPU_BATCH / CUDA_BATCH)
    engine_batch_size: int = _env("engine_batch_size", default=0, ge=0, le=4096)
    torch_threads: int = _env("torch_threads", default=0, ge=0)
    max_image_pixels: int = _env("max_image_pixels", default=40_000_000, ge=1)
    seed: int = _env("seed", default=0, ge=0)

    # --- REST API (edge/) ----------------------------------------------------------------
    api_key: SecretStr | None = _env("api_key", default=None)
    max_upload_mb: float = _env("max_upload_mb", default=64.0, gt=0.0, le=4096.0)
    # a request body must arrive within this many seconds, plus one per BODY_MIN_RATE_KB_S
    # KiB received; 0 = no deadline (edge.api.middleware.BodyDeadline)
    body_timeout_s: float = _env("body_timeout_s", default=30.0, ge=0.0, le=3600.0)
    body_min_rate_kb_s: float = _env("body_min_rate_kb_s", default=64.0, ge=0.0)
    max_concurrent_fits: int = _env("max_concurrent_fits", default=1, ge=1, le=64)
    # dynamic batching of /infer and /infer_dataset (edge.api.batching): frames per engine
    # call (0 = the engine batch size), the most the oldest queued frame waits for company,
    # frames queued before 429, and how long a request may wait for its answer before 503
    rest_batch_max: int = _env("rest_batch_max", default=0, ge=0, le=4096)
    rest_batch_wait_ms: float = _env("rest_batch_wait_ms", default=2.0, ge=0.0, le=10_000.0)
    rest_queue_max: int = _env("rest_queue_max", default=256, ge=1, le=1_000_000)
    rest_deadline_s: float = _env("rest_deadline_s", default=30.0, gt=0.0, le=3600.0)
    log_max_mb: float = _env("log_max_mb", default=20.0, gt=0.0)
    log_backups: int = _env("log_backups", default=5, ge=1, le=1000)
    # sessions of named users (docs/AUTH.md); no secret: <models_dir>/.session_key, made once
    session_secret: SecretStr | None = _env("session_secret", default=None)
    session_ttl_s: float = _env("session_ttl_s", default=8 * 3600.0, gt=0.0, le=30 * 86400.0)
    api_key_role: Literal["operator", "engineer"] = _env("api_key_role", default="engineer")

    # --- Kafka (consumers/) ----------------------------------------------------------------
    kafka_bootstrap: str | None = _env("kafka_bootstrap", default=None)
    kafka_group: str = _env("kafka_group", default="bdi-edge", min_length=1)
    kafka_topic_frames: str = _env("kafka_topic_frames", default="bdi.frames", min_length=1)
    kafka_topic_verdicts: str = _env("kafka_topic_verdicts", default="bdi.verdicts", min_length=1)
    kafka_topic_dlq: str = _env("kafka_topic_dlq", default="bdi.frames.dlq", min_length=1)
    kafka_topic_heatmaps: str | None = _env("kafka_topic_heatmaps", default=None)
    # part verdicts (bdi.part/1) and the aggregator's state: a compacted topic the group owns
    # (unset: <BDI_KAFKA_GROUP>.parts.changelog); consumers.part_state
    kafka_topic_parts: str = _env("kafka_topic_parts", default="bdi.parts", min_length=1)
    kafka_topic_parts_changelog: str | None = _env("kafka_topic_parts_changelog", default=None)
    # drift of each model's conformal p-values (consumers.drift, docs/DRIFT.md): the test
    # ("off": none), ADWIN's confidence, and the topic of the bdi.alert/1 records
    kafka_topic_alerts: str = _env("kafka_topic_alerts", default="bdi.alerts", min_length=1)
    drift: Literal["adwin", "martingale", "off"] = _env("drift", default="adwin")
    drift_delta: float = _env("drift_delta", default=0.002, gt=0.0, lt=1.0)
    kafka_exactly_once: bool = _env("kafka_exactly_once", default=False)
    # at-least-once verdict producer: idempotent (no duplicates from the producer's own
    # retries) when the broker grants a producer id; "on" requires it, "off" never asks
    kafka_idempotence: Idempotence = _env("kafka_idempotence", default="auto")
    # TLS and SASL to the broker at BDI_KAFKA_BOOTSTRAP (consumers.security: client options)
    kafka_security_protocol: KafkaProtocol = _env("kafka_security_protocol", default="PLAINTEXT")
    kafka_ssl_cafile: Path | None = _env("kafka_ssl_cafile", default=None)
    kafka_ssl_certfile: Path | None = _env("kafka_ssl_certfile", default=None)
    kafka_ssl_keyfile: Path | None = _env("kafka_ssl_keyfile", default=None)
    kafka_ssl_check_hostname: bool = _env("kafka_ssl_check_hostname", default=True)
    kafka_sasl_mechanism: SaslMechanism | None = _env("kafka_sasl_mechanism", default=None)
    kafka_sasl_username: str | None = _env("kafka_sasl_username", default=None)
    kafka_sasl_password: SecretStr | None = _env("kafka_sasl_password", default=None)
    kafka_sasl_password_file: Path | None = _env("kafka_sasl_password_file", default=None)
    batch_max: int = _env("batch_max", default=16, ge=1, le=4096)
    batch_wait_ms: float = _env("batch_wait_ms", default=20.0, ge=0.0, le=60_000.0)
    shutdown_grace_s: float = _env("shutdown_grace_s", default=10.0, ge=0.0, le=3600.0)
    model_poll_s: float = _env("model_poll_s", default=2.0, gt=0.0, le=3600.0)
    max_frame_mb: float = _env("max_frame_mb", default=16.0, gt=0.0, le=1024.0)
    # refuse frames without a content_sha256 header (JPEG has no checksum of its own)
    require_checksum: bool = _env("require_checksum", default=False)
    consumer_health_port: int = _env("consumer_health_port", default=0, ge=0, le=65535)
    consumer_health_host: str = _env("consumer_health_host", default="127.0.0.1")

    # --- trace store (store/trace/, bdi trace; docs/TRACE.md) ------------------------------
    # unset: SQLite at <models_dir>/trace/trace.db; postgresql://user:pass@host/db: PostgreSQL
    trace_db_url: str | None = _env("trace_db_url", default=None)
    trace_group: str = _env("trace_group", default="bdi-trace", min_length=1)
    trace_max_gb: float = _env("trace_max_gb", default=5.0, gt=0.0)
    trace_ng_days: int = _env("trace_ng_days", default=365, ge=1)
    # OK frames whose crop is kept: 1 in N, chosen by frame_id; 0 = none
    trace_ok_sample: int = _env("trace_ok_sample", default=50, ge=0)

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [o.strip() for o in value.split(",") if o.strip()]
        return value

    @field_validator("profile", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator(
        "backbone_weights",
        "api_key",
        "session_secret",
        "kafka_bootstrap",
        "kafka_topic_heatmaps",
        "kafka_topic_parts_changelog",
        "trace_db_url",
        *KAFKA_TLS_FILES,
        *KAFKA_SASL_FIELDS,
        mode="before",
    )
    @classmethod
    def _blank_is_none(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("kafka_security_protocol", "kafka_sasl_mechanism", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.strip().upper() if isinstance(value, str) and value.strip() else value

    @field_validator("kafka_idempotence", mode="before")
    @classmethod
    def _switch(cls, value: Any) -> Any:
        # "1"/"true"/"yes" and "0"/"false"/"no" read as on/off, like the boolean settings
        if isinstance(value, bool):
            return "on" if value else "off"
        text = str(value).strip().lower()
        return {"1": "on", "true": "on", "yes": "on", "0": "off", "false": "off", "no": "off"}.get(
            text, text
        )

    @field_validator("kafka_sasl_password", mode="before")
    @classmethod
    def _text(cls, value: Any) -> Any:
        # a number in the YAML is a password too (and a type error would show its value)
        return str(value) if isinstance(value, int | float) else value

    @model_validator(mode="after")
    def _kafka_security(self) -> Settings:
        from configs.kafka_security import kafka_security_problems  # it reads these names

        problems = kafka_security_problems(self)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @model_validator(mode="after")
    def _grid_fits(self) -> Settings:
        stride = 14 if self.backbone == "dinov2_vits14" else 16
        if self.image_size % stride:
            raise ValueError(
                f"image_size must be a multiple of {stride} for backbone {self.backbone}"
            )
        return self


class _ProfileChoice(_BdiSources):
    """The profile alone, as the sources choose it (``None``: none chose one); nothing else
    is read or validated."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True, case_sensitive=False)
    profile: str | None = _env("profile", default=None)


def _sources(
    settings_cls: type[BaseSettings],
    init_settings: PydanticBaseSettingsSource,
    env_settings: PydanticBaseSettingsSource,
) -> tuple[PydanticBaseSettingsSource, ...]:
    above: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
    if (local := local_file()) is not None:
        above.append(DotEnvSettingsSource(settings_cls, env_file=local))
    below: list[PydanticBaseSettingsSource] = []
    yaml_file = Path(os.environ.get("BDI_CONFIG", DEFAULT_YAML))
    if yaml_file.is_file():
        try:
            from pydantic_settings import YamlConfigSettingsSource
        except ImportError:  # PyYAML absent: the file is simply not read
            pass
        else:
            below.append(YamlConfigSettingsSource(settings_cls, yaml_file=yaml_file))
    return (*above, _ProfileSource(settings_cls, above, below), *below)


class _ProfileSource(PydanticBaseSettingsSource):
    """The chosen profile's values, for the fields that no source above it sets."""

    def __init__(
        self,
        settings_cls: type[BaseSettings],
        above: list[PydanticBaseSettingsSource],
        below: list[PydanticBaseSettingsSource],
    ) -> None:
        super().__init__(settings_cls)
        self.above, self.below = above, below

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ answers for all fields at once

    def __call__(self) -> dict[str, Any]:
        given: dict[str, Any] = {}
        for source in reversed(self.above):  # the first source wins, as in the settings
            given.update(source())
        profile = given.get("profile")
        for source in self.below:
            profile = profile or source().get("profile")
        return profile_values(profile, given)


def env_names(field: str) -> str:
    """The environment variable name(s) of a settings field, for messages."""
    names = [f"BDI_{field.upper()}"]
    if field in LEGACY_ALIASES:
        names.append(LEGACY_ALIASES[field])
    return " / ".join(names)


def _explain(exc: ValidationError) -> str:
    lines = ["invalid settings:"]
    for err in exc.errors():
        loc = str(err["loc"][0]) if err["loc"] else ""
        field = loc.lower().removeprefix("bdi_").removeprefix("brakedisc_")
        name = env_names(field) if field in Settings.model_fields else "settings"
        value = err.get("input")
        shown = "" if isinstance(value, dict) or field in SECRET_FIELDS else f"={value!r}"
        lines.append(f"  {name}{shown}: {err['msg']}")
    return "\n".join(lines)


def load_settings(**overrides: Any) -> Settings:
    """Build the settings, turning validation errors into one readable :class:`SettingsError`."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise SettingsError(_explain(exc)) from None
    except FileNotFoundError as exc:  # BDI_ENV_FILE names no file
        raise SettingsError(str(exc)) from None


def apply_profile(profile: Profile = "dev") -> Settings:
    """Choose ``profile`` for this process and the processes it starts (through the
    environment they inherit), unless the environment, the local settings file or the YAML
    already chose one. Returns the settings that result."""
    try:
        chosen = _ProfileChoice().profile
    except FileNotFoundError as exc:  # BDI_ENV_FILE names no file
        raise SettingsError(str(exc)) from None
    if not chosen:
        os.environ["BDI_PROFILE"] = profile
    return load_settings()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
