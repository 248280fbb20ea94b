"""Settings: environment variables prefixed COORDCONV_, each also a `coordconv serve` option."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, FilePath, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

SHIPPED_MODELS = Path(__file__).resolve().parent.parent / "models"


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity (a container's cpuset, not a
    `--cpus` quota)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="COORDCONV_", extra="ignore")

    model_dir: Path = Field(SHIPPED_MODELS, description="model repository (Triton layout)")
    host: str = Field("127.0.0.1", description="listen address")
    port: int = Field(8000, ge=0, le=65535, description="listen port (0: any free port)")
    providers: str = Field(
        "cuda,cpu", description="execution providers in order of preference: cuda, cpu"
    )
    require_gpu: bool = Field(False, description="refuse to start unless CUDA is in use")
    intra_op_threads: int = Field(
        0,
        ge=0,
        description="threads per inference (0: onnxruntime's choice, one per core; with N "
        "workers, the cores shared out among them)",
    )
    max_batch_size: int = Field(
        64, ge=1, description="items per onnxruntime call, where a config.pbtxt does not say"
    )
    max_queue_delay_us: int = Field(
        500, ge=0, description="longest wait for a batch to fill (config default)"
    )
    max_queue_size: int = Field(
        1024, ge=1, description="items waiting per model before 503 (config default)"
    )
    max_items_per_request: int = Field(1024, ge=1, description="items in one request")
    max_body_bytes: int = Field(64 * 1024 * 1024, ge=1024, description="request body limit")
    request_timeout_s: float = Field(30.0, gt=0, description="queued longer than this: 503")
    max_concurrency: int = Field(
        256, ge=1, description="inference requests in flight before 503 (health routes exempt)"
    )
    max_connections: int = Field(
        4096, ge=1, description="open connections; beyond, the longest-idle one is closed, else 503"
    )
    header_timeout_s: float = Field(
        10.0, gt=0, description="a request's headers must arrive within this (408)"
    )
    body_timeout_s: float = Field(
        30.0, gt=0, description="longest pause between chunks of a request body (408)"
    )
    keepalive_timeout_s: float = Field(
        5.0, gt=0, description="an idle keep-alive connection is closed after this"
    )
    send_timeout_s: float = Field(
        30.0, gt=0, description="a client that does not read its answer for this is cut off"
    )
    max_header_bytes: int = Field(
        32 * 1024, ge=1024, description="request line and headers (431 beyond)"
    )
    # Bounds on what a model's config (config.pbtxt or a load request's override) may ask for:
    # a config outside them is refused with one line before anything is allocated.
    limit_batch_size: int = Field(
        256,
        ge=1,
        description="largest max_batch_size a model config may set (and the most rows "
        "of one request to a model that does not batch)",
    )
    limit_versions: int = Field(8, ge=1, description="most versions of one model served at once")
    limit_instances: int = Field(
        8, ge=1, description="largest instance_group count (onnxruntime calls of a model at once)"
    )
    limit_queue_delay_us: int = Field(
        10_000_000, ge=0, description="largest max_queue_delay_microseconds a config may set"
    )
    limit_queue_size: int = Field(
        65_536, ge=1, description="largest max_queue_size (items) a config may set"
    )
    limit_timeout_s: float = Field(
        600.0,
        gt=0,
        description="largest queue timeout (default_timeout_microseconds) a config may set",
    )
    limit_model_bytes: int = Field(
        1 << 30, ge=1024, description="largest model.onnx file a load reads"
    )
    limit_warmup_runs: int = Field(
        1000,
        ge=1,
        description="most warm-up runs (model_warmup count, summed over its samples) a config "
        "may ask of one version",
    )
    limit_warmup_s: float = Field(
        60.0,
        gt=0,
        description="longest a version's warm-up (model_warmup, or the default one) may run; "
        "one that runs longer fails its load with one line",
    )
    cache_size_bytes: int = Field(
        0,
        ge=0,
        description="response cache in bytes, shared by the models whose config.pbtxt sets "
        "response_cache { enable: true } (least recently used out; 0: no cache, as Triton "
        "without --cache-config)",
    )
    repository_timeout_s: float = Field(
        10.0,
        gt=0,
        description="a repository read (scan, config, ONNX file) that takes longer fails its load",
    )
    parse_processes: int = Field(
        2, ge=0, description="worker processes that parse bodies over 1 MiB (0: threads)"
    )
    grace_s: float = Field(10.0, ge=0, description="drain time on SIGTERM")
    workers: int = Field(
        1,
        ge=1,
        description="worker processes serving the same ports, each with its own sessions and "
        "batchers (auto: one per CPU core this process may use)",
    )
    api_key: str | None = Field(
        None,
        description="bearer token(s) for inference routes, comma-separated (several: rotation)",
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(
        "info",
        description="the least severe log records written: critical, error, warning, info, debug",
    )
    log_format: Literal["text", "json"] = Field(
        "text", description="text: one readable line per record; json: one JSON object per line"
    )
    opentelemetry: bool = Field(
        False,
        description="FastAPI's native OpenTelemetry spans and metrics (with a provider set up, "
        "e.g. by opentelemetry-instrument); off spares every request the provider lookup",
    )
    fast_dispatch: bool = Field(
        True,
        description="the inference routes skip FastAPI's per-request layers (same routes, "
        "parameters and auth; false: FastAPI dispatches them)",
    )
    grpc_port: int = Field(
        8001, ge=0, le=65535, description="gRPC Open Inference Protocol port (0: no gRPC)"
    )
    model_control_mode: Literal["none", "explicit", "poll"] = Field(
        "none",
        description="none: load everything at start; explicit: --load-model and the "
        "repository API; poll: follow the repository's files",
    )
    load_model: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="models to load at start in explicit mode (repeatable; * for all)",
    )
    repository_poll_secs: float = Field(
        15.0, gt=0, description="poll mode: seconds between scans of the repository"
    )
    strict_model_config: bool = Field(
        True, description="refuse a model without config.pbtxt (false: derive it from the graph)"
    )
    # Scoped keys, TLS and the drain on SIGTERM (service/dataplane/auth.py, service/server.py).
    admin_api_key: str | None = Field(
        None,
        description="bearer token(s) for repository control (load, unload), comma-separated; "
        "unset: the API_KEY keys",
    )
    tls_cert_file: FilePath | None = Field(
        None, description="PEM certificate (chain): HTTPS and gRPC over TLS (unset: plain text)"
    )
    tls_key_file: FilePath | None = Field(
        None, validate_default=True, description="PEM private key of TLS_CERT_FILE"
    )
    tls_client_ca_file: FilePath | None = Field(
        None,
        validate_default=True,
        description="PEM CA certificate(s): clients must present a certificate signed by one "
        "(mutual TLS)",
    )
    drain_delay_s: float = Field(
        0.0,
        ge=0,
        le=3600,
        description="on SIGTERM, seconds not ready but still serving before the drain (so load "
        "balancers stop routing here first; a few in containers, 0 outside)",
    )

    @field_validator("load_model", mode="before")
    @classmethod
    def _comma_list(cls, value: object) -> object:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @field_validator("workers", mode="before")
    @classmethod
    def _auto_workers(cls, value: object) -> object:
        if isinstance(value, str) and value.strip().lower() == "auto":
            return usable_cores()
        return value

    @field_validator("providers")
    @classmethod
    def _known_providers(cls, value: str) -> str:
        names = [p.strip().lower() for p in value.split(",") if p.strip()]
        unknown = [p for p in names if p not in {"cuda", "cpu", "tensorrt"}]
        if not names or unknown:
            raise ValueError(f"unknown execution provider(s) {unknown}: use cuda, cpu")
        return ",".join(names)

    @field_validator("api_key", "admin_api_key")
    @classmethod
    def _keys(cls, value: str | None, info: ValidationInfo) -> str | None:
        """Unset or empty: no keys. A value that lists no usable key (`' , '`) would leave the
        scope open while whoever set it believes it closed: refused."""
        if not value:
            return None
        if not any(k.strip() for k in value.split(",")):
            name = (info.field_name or "").upper()
            raise ValueError(
                f"{name} is set but holds no key (only commas and blanks); set at least one "
                f"key, or unset {name} to leave that scope open"
            )
        return value

    @field_validator("tls_cert_file", "tls_key_file", "tls_client_ca_file", mode="before")
    @classmethod
    def _empty_path_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("tls_key_file", "tls_client_ca_file")
    @classmethod
    def _tls_pairs(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if "tls_cert_file" not in info.data:  # the certificate's own error says it
            return value
        cert = info.data["tls_cert_file"]
        if info.field_name == "tls_key_file" and (cert is None) != (value is None):
            raise ValueError("TLS needs both TLS_CERT_FILE and TLS_KEY_FILE")
        if info.field_name == "tls_client_ca_file" and value is not None and cert is None:
            raise ValueError("TLS_CLIENT_CA_FILE needs TLS_CERT_FILE and TLS_KEY_FILE")
        return value

    @property
    def provider_list(self) -> list[str]:
        return self.providers.split(",")
