"""Configuration: config.yaml, ``--set key.path=value`` and ``EDGE_EMOTION__KEY__PATH`` validated into typed objects.

Everything is checked once, at start-up. Any problem becomes one ``ConfigError`` line that names the key path,
what was expected and what was found (``mqtt.port: expected an integer 1-65535, got 'abc'``), so a bad edit on a
device shows up in the journal as a single readable line. Precedence, lowest first: built-in defaults, the YAML
file, environment variables, ``--set`` overrides.

(No ``from __future__ import annotations`` and no ``X | None`` here: pydantic evaluates these annotations at run
time, on Python 3.9 too.)
"""

import logging
import os
import re
import socket
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from edge_app.config_text import ConfigError, describe_errors, key_path, parse_value, read_yaml, set_value
from edge_app.emotions import resolve_classes

ENV_PREFIX = "EDGE_EMOTION__"
# Set by the systemd template unit to its instance name (one config file and camera per instance).
INSTANCE_ENV = "EDGE_EMOTION_INSTANCE"
DEFAULT_CONFIG_FILE = "config.yaml"
# Also the value of mqtt.ca_file that means "verify the broker with the operating system's trust store".
SYSTEM_CA = "system"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# Device ids and topic prefixes become parts of MQTT topics and Home Assistant unique ids.
TOPIC_WORD = re.compile(r"^[A-Za-z0-9_-]+$")


def default_device_id() -> str:
    """The host name, reduced to characters that are safe in MQTT topics and Home Assistant ids; under the unit
    edge-emotion@<instance>.service (which sets $EDGE_EMOTION_INSTANCE) ``<host>-<instance>``, so that several
    cameras on one host publish under distinct ids."""
    name = socket.gethostname().split(".")[0]
    instance = os.environ.get(INSTANCE_ENV, "")
    name = f"{name}-{instance}" if instance else name
    return re.sub(r"[^A-Za-z0-9_-]", "_", name) or "edge-emotion"


def _rule(key: str, message: str) -> PydanticCustomError:
    """A cross-field rule broken inside a section; ``key`` is appended to the section's path in the message."""
    return PydanticCustomError("config_rule", "{key}: {message}", {"key": key, "message": message})


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, coerce_numbers_to_str=True, validate_default=True)


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


def _bool_as_text(value: Any) -> Any:
    """Keep YAML's true/false from passing as 1/0 where a number is chosen from a list."""
    return str(value).lower() if isinstance(value, bool) else value


def _class_list(value: Any) -> Any:
    """Accept ``happy,sad`` (handy in --set and environment variables) as well as a YAML list."""
    return [part.strip() for part in value.split(",") if part.strip()] if isinstance(value, str) else value


def _resolved_classes(value: Optional[list[str]]) -> Optional[list[str]]:
    return None if value is None else list(resolve_classes(value))


def _topic_prefix(value: str) -> str:
    if not all(TOPIC_WORD.match(part) for part in value.split("/")):
        raise ValueError(f"expected topic words of letters, digits, '_' or '-' separated by '/', got {value!r}")
    return value


def _positive_widths(value: list[int]) -> list[int]:
    if any(width < 1 for width in value):
        raise ValueError(f"expected a list of positive integers, got {value}")
    return value


# Emotion class subsets: a list or "a,b,c", case-insensitive, returned in FER-2013 order; None means all.
ClassSubset = Annotated[Optional[list[str]], BeforeValidator(_class_list), AfterValidator(_resolved_classes)]
TopicPrefix = Annotated[str, AfterValidator(_topic_prefix)]


class DeviceConfig(Section):
    id: Optional[str] = None  # None: the host name (see default_device_id)

    @field_validator("id")
    @classmethod
    def _topic_safe(cls, value: Optional[str]) -> str:
        if value is None:
            return default_device_id()
        if not TOPIC_WORD.match(value):
            raise ValueError(f"expected letters, digits, '_' or '-' (it is part of MQTT topics), got {value!r}")
        return value


class SourceConfig(Section):
    uri: str = "demo"
    kind: Annotated[Literal["auto", "picamera2", "camera", "stream", "gstreamer", "video", "images", "demo"],
                    BeforeValidator(_lower)] = "auto"
    width: int = Field(640, ge=16, le=8192, strict=True)
    height: int = Field(480, ge=16, le=8192, strict=True)
    fps: float = Field(15.0, ge=0, strict=True)
    rotate: Annotated[Literal[0, 90, 180, 270], BeforeValidator(_bool_as_text)] = 0
    mirror: bool = Field(False, strict=True)
    loop: bool = Field(True, strict=True)
    reopen_initial_s: float = Field(1.0, gt=0, strict=True)
    reopen_max_s: float = Field(30.0, gt=0, strict=True)

    @model_validator(mode="after")
    def _backoff_order(self) -> "SourceConfig":
        if self.reopen_initial_s > self.reopen_max_s:
            raise _rule("reopen_initial_s", f"must not exceed source.reopen_max_s ({self.reopen_max_s})")
        return self


class ModelConfig(Section):
    path: Optional[str] = None  # None: the shipped int8 model
    card: Optional[str] = None  # None: the card beside the model file
    classes: ClassSubset = None  # None: whatever the card says; else must match the card
    flip_average: bool = Field(False, strict=True)  # also classify the mirrored face and average


class RuntimeConfig(Section):
    delegate: Annotated[Literal["cpu", "edgetpu", "gpu"], BeforeValidator(_lower)] = "cpu"
    num_threads: int = Field(2, ge=1, le=64, strict=True)


class DetectionConfig(Section):
    min_score: float = Field(0.5, ge=0, le=1, strict=True)
    min_landmark_score: float = Field(0.5, ge=0, le=1, strict=True)
    every_n_frames: int = Field(5, ge=1, strict=True)
    min_face_px: int = Field(40, ge=1, strict=True)
    max_faces: int = Field(10, ge=1, le=100, strict=True)


class TrackingConfig(Section):
    iou_match: float = Field(0.3, gt=0, le=1, strict=True)
    max_missed_frames: int = Field(15, ge=0, strict=True)
    ema_alpha: float = Field(0.4, gt=0, le=1, strict=True)


class AggregateConfig(Section):
    window_s: float = Field(10.0, gt=0, strict=True)


class MqttConfig(Section):
    enabled: bool = Field(True, strict=True)
    host: str = "localhost"
    port: int = Field(1883, ge=1, le=65535, strict=True)
    prefix: TopicPrefix = "emotion"
    qos: int = Field(1, ge=0, le=2, strict=True)
    client_id: Optional[str] = None  # None: edge-emotion-<device.id>
    username: Optional[str] = None
    password: Optional[SecretStr] = None
    tls: bool = Field(False, strict=True)
    ca_file: Optional[str] = None  # a PEM file, or "system" for the OS trust store
    cert_file: Optional[str] = None
    key_file: Optional[str] = None
    tls_insecure: bool = Field(False, strict=True)
    keepalive: int = Field(30, ge=5, le=65535, strict=True)
    buffer_size: int = Field(1000, ge=1, strict=True)
    queue_dir: Optional[str] = None  # None: $STATE_DIRECTORY under systemd, else memory only
    flush_s: float = Field(5.0, ge=0, strict=True)
    reconnect_probe_s: float = Field(1.0, gt=0, strict=True)
    reconnect_min_s: float = Field(1.0, gt=0, strict=True)
    reconnect_max_s: float = Field(60.0, gt=0, strict=True)
    discovery: bool = Field(True, strict=True)
    discovery_prefix: TopicPrefix = "homeassistant"

    @field_validator("password", mode="before")
    @classmethod
    def _number_password(cls, value: Any) -> Any:
        return str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value

    @model_validator(mode="after")
    def _consistent(self) -> "MqttConfig":
        if self.tls and not self.ca_file:
            raise _rule("ca_file", f"required when mqtt.tls is true (a PEM file, or {SYSTEM_CA!r} for the OS store)")
        if self.key_file and not self.cert_file:
            raise _rule("cert_file", "required when mqtt.key_file is set")
        if self.password is not None and self.username is None:
            raise _rule("username", "required when mqtt.password is set")
        if self.reconnect_min_s > self.reconnect_max_s:
            raise _rule("reconnect_min_s", f"must not exceed mqtt.reconnect_max_s ({self.reconnect_max_s})")
        return self


class SensingConfig(Section):
    switch: bool = Field(True, strict=True)
    default: bool = Field(True, strict=True)
    state_file: Optional[str] = None  # ignored under systemd ($STATE_DIRECTORY); None: ~/.local/state/edge-emotion


class LoggingConfig(Section):
    level: str = "INFO"

    @field_validator("level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        if value.upper() not in LOG_LEVELS:
            raise ValueError(f"expected one of {', '.join(LOG_LEVELS)}, got {value!r}")
        return value.upper()


class TrainConfig(Section):
    data: Optional[str] = None  # None: $FER2013_PATH, else ../shared/data/fer2013.npz
    classes: ClassSubset = None  # None: all seven
    epochs: int = Field(26, ge=1, strict=True)
    batch_size: int = Field(128, ge=1, strict=True)
    lr: float = Field(2e-3, gt=0, strict=True)
    weight_decay: float = Field(0.02, ge=0, strict=True)
    warmup_epochs: float = Field(2.0, ge=0, strict=True)
    label_smoothing: float = Field(0.1, ge=0, lt=1, strict=True)
    labels: Annotated[Literal["fer", "ferplus"], BeforeValidator(_lower)] = "fer"
    ferplus_weight: float = Field(1.0, ge=0, le=1, strict=True)  # share of the FER+ votes with labels: ferplus
    class_balance: Annotated[Literal["none", "weights", "sqrt_weights", "sampling"], BeforeValidator(_lower)] = "none"
    camera_augment: bool = Field(False, strict=True)  # blur, noise, JPEG, gamma, down-up-scaling
    mixup_alpha: float = Field(0.0, ge=0, strict=True)  # 0: no mixup
    landmark_noise: float = Field(0.0, ge=0, strict=True)  # sigma in inter-ocular distances
    seed: int = Field(1234, ge=0, strict=True)
    widths: Annotated[list[StrictInt], AfterValidator(_positive_widths)] = Field([24, 48, 96, 192], min_length=1)
    dropout: float = Field(0.4, ge=0, lt=1, strict=True)
    patience: int = Field(8, ge=1, strict=True)
    init_from: Optional[str] = None  # a trained Keras model to fine-tune (its card beside it)
    # Trained Keras models to distil from (one, or several whose predictions are averaged: an ensemble teacher).
    teacher: Union[str, list[str], None] = None
    distill_weight: float = Field(0.5, ge=0, le=1, strict=True)
    average_with_init: bool = Field(False, strict=True)  # save the mean of the best weights and init_from's


class ConvertConfig(Section):
    calibration_size: int = Field(400, ge=1, strict=True)
    max_accuracy_drop: float = Field(1.0, ge=0, le=100, strict=True)
    device_path_size: int = Field(0, ge=0, strict=True)
    max_device_path_drop: float = Field(1.0, ge=0, le=100, strict=True)


class UiConfig(Section):
    host: str = "127.0.0.1"
    port: int = Field(8501, ge=1, le=65535, strict=True)
    max_upload_mb: float = Field(10.0, gt=0, le=1024, strict=True)
    max_faces: int = Field(10, ge=1, le=100, strict=True)


class AppConfig(Section):
    device: DeviceConfig = DeviceConfig()
    source: SourceConfig = SourceConfig()
    model: ModelConfig = ModelConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    detection: DetectionConfig = DetectionConfig()
    tracking: TrackingConfig = TrackingConfig()
    aggregate: AggregateConfig = AggregateConfig()
    mqtt: MqttConfig = MqttConfig()
    sensing: SensingConfig = SensingConfig()
    logging: LoggingConfig = LoggingConfig()
    train: TrainConfig = TrainConfig()
    convert: ConvertConfig = ConvertConfig()
    ui: UiConfig = UiConfig()


def load_config(
    path: Union[str, Path, None] = None, overrides: Iterable[str] = (), env: Optional[Mapping[str, str]] = None
) -> AppConfig:
    """Read, merge and validate the configuration; raise ``ConfigError`` (one line) on any problem.

    ``path`` None means ./config.yaml when it exists, else the built-in defaults. ``overrides`` are
    ``key.path=value`` strings (``--set``); ``env`` defaults to ``os.environ`` (pass ``{}`` to ignore it).
    """
    if path is None and Path(DEFAULT_CONFIG_FILE).is_file():
        path = DEFAULT_CONFIG_FILE
    data = read_yaml(Path(path)) if path is not None else {}
    origins: dict[tuple[str, ...], str] = {}
    environ = os.environ if env is None else env
    for name in sorted(environ):
        if name.upper().startswith(ENV_PREFIX):
            keys = key_path(name[len(ENV_PREFIX):].lower().split("__"), f"environment variable {name}")
            origin = f"environment variable {name}"
            set_value(AppConfig, data, keys, parse_value(AppConfig, keys, environ[name]), origins, origin)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item}: expected KEY=VALUE, e.g. mqtt.port=1883")
        keys = key_path(key.strip().split("."), f"--set {item.split('=')[0]}")
        set_value(AppConfig, data, keys, parse_value(AppConfig, keys, raw), origins, f"--set {key.strip()}")
    try:
        return AppConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe_errors(AppConfig, exc, origins)) from None



def configure_logging(config: AppConfig) -> None:
    """Log to stderr at ``logging.level`` (journald adds its own timestamps under systemd)."""
    stamp = "" if os.environ.get("INVOCATION_ID") else "%(asctime)s "
    logging.basicConfig(level=config.logging.level, format=stamp + "%(levelname)s %(name)s: %(message)s", force=True)
