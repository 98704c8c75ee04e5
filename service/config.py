"""The one settings class. Every value comes from a ``TBPS_`` environment variable."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from indexer.limits import ImageLimits

REPO_ROOT = Path(__file__).resolve().parent.parent
# beside the repository (../shared of the checkout), wherever the command is started from
DEFAULT_DEMO_GALLERY = REPO_ROOT.parent / "shared" / "data" / "cuhk-pedes" / "imgs"
# placeholder secrets from examples and compose files: refused outside development
KNOWN_DEFAULT_KEYS = frozenset({"changethis", "change-me", "changeme", "secret", "admin", "dev"})
# request threads beyond the admitted requests: routes that never wait on the database (the
# page, static files, /metrics) find a thread while every admitted request waits on it
THREAD_RESERVE = 8



@dataclass(frozen=True)
class DatabaseLimits:
    """How many connections a process keeps and how long it waits on the database. The
    defaults are SQLAlchemy's own with no timeouts (CLI commands, the worker); the API process
    gets its limits from the settings (``Settings.database_limits``, ``configure``)."""

    pool_size: int = 5
    max_overflow: int = 10
    pool_timeout_s: float = 30.0
    connect_timeout_s: float | None = None  # PostgreSQL: connecting, and each pool checkout
    statement_timeout_s: float | None = None  # PostgreSQL: each statement, server and client


def hash_key(key: str) -> str:
    """How an API key is stored and compared: its sha256 hex digest."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def default_data_dir() -> Path:
    """The data dir of `make run` (the checkout's ``data/``) whatever the current folder, so
    that `tbps search` from elsewhere reads the same gallery; ``./data`` for an installed
    package (the image sets TBPS_DATA_DIR)."""
    if (REPO_ROOT / "pyproject.toml").is_file() and (REPO_ROOT / "service").is_dir():
        return REPO_ROOT / "data"
    return Path("data")


class Settings(BaseSettings):
    """Runtime configuration, validated at start-up."""

    model_config = SettingsConfigDict(env_prefix="TBPS_", env_file=None, extra="ignore")

    environment: str = Field("development", description="development | production")
    data_dir: Path = Field(default_factory=lambda: default_data_dir(), description="SQLite "
                           "file, stored crops, index versions; default: the checkout's data/ "
                           "(where `make run` keeps it) from any folder, ./data when installed")
    database_url: str | None = Field(None, description="SQLAlchemy URL; default SQLite in data_dir")
    checkpoint: Path | None = Field(None, description="model checkpoint; default: bundled model")
    calibration: Path | None = Field(None, description="match-confidence sidecar (`tbps "
                                     "calibrate`); default: <checkpoint stem>.calibration.json "
                                     "beside the checkpoint; used only when its checkpoint "
                                     "sha256 is the served one")
    device: str = Field("auto", description="torch device for encoders: auto | cpu | cuda")
    engine: Literal["auto", "torch", "onnx"] = Field(
        "auto", description="inference engine for the encoder: onnx (ONNX Runtime, CPU only), "
        "torch, or auto (onnx on CPU, torch on CUDA)")
    engine_precision: Literal["auto", "fp32", "bf16", "fp16", "int8"] = Field(
        "auto", description="encoder precision: auto (torch: fp16 on CUDA, fp32 on CPU; ONNX "
        "Runtime: fp32), fp32, bf16 / fp16 (torch autocast), int8 (ONNX Runtime: the text "
        "tower's weights quantised; images stay fp32)")
    cache_dir: Path | None = Field(None, description="derived files that can be made again "
                                   "(the ONNX graphs exported from the checkpoint); default: "
                                   "data_dir/cache")
    engine_cache_dir: Path | None = Field(None, description="where the ONNX graphs exported "
                                          "from the checkpoint are kept; default: "
                                          "cache_dir/onnx")
    admin_keys: str = Field("", description="comma-separated admin API keys (hashed at start-up; "
                            "more keys can be created with `tbps create-key`)", repr=False)
    admin_key_hashes: str = Field("", description="comma-separated sha256 hex digests of admin "
                                  "keys, for deployments that keep no plain key in the environment")
    search_requires_key: bool = Field(False, description="POST /search needs an X-API-Key too")
    url_secret: str | None = Field(None, min_length=32, repr=False, description="secret that "
                                   "signs image URLs; default: random, made once in "
                                   "data_dir/url-signing.key (mode 0600)")
    signed_url_seconds: int = Field(900, ge=10, le=86400, description="lifetime of a signed "
                                    "image URL; longer claimed expiries are refused")
    denied_audit_per_minute: int = Field(30, ge=1, le=100_000, description="refused "
                                         "requests (a missing or wrong key) written to the "
                                         "audit log per client and minute; the rest are "
                                         "counted in tbps_auth_denied_unaudited_total")
    audit_searches: Literal["all", "keyed", "off"] = Field(
        "keyed", description="which searches the audit log records: all, those made with an API "
        "key (anonymous page searches would flood it), or none; true/false mean all/off")
    spawn_worker: bool = Field(False, description="the API starts a `tbps worker` subprocess "
                               "beside itself (`tbps demo` does); off where a worker runs apart")
    worker_poll_seconds: float = Field(1.0, gt=0, le=60)
    job_lease_seconds: float = Field(30.0, ge=0.5, le=3600, description="a running job's "
                                     "lease, renewed by its worker; when it runs out the job "
                                     "is requeued (the worker died)")
    job_max_attempts: int = Field(3, ge=1, le=100, description="runs of a job before a dying "
                                  "worker makes it fail instead of being requeued")
    job_stuck_seconds: float = Field(300.0, ge=1, description="/readyz reports the queue stuck "
                                     "when a job waits this long with nothing running")
    api_threads: int = Field(1, ge=1, le=256, description="torch and FAISS threads in the API "
                             "process: one query gains little from more, and on shared cores "
                             "more threads make latency spike")
    search_batch_max: int = Field(32, ge=1, le=1024, description="concurrent /search "
                                  "requests encoded in one text-tower call and searched in one "
                                  "index call, at most this many (1: each on its own)")
    search_batch_window_ms: float = Field(3.0, ge=0, le=100, description="how long a batch "
                                          "waits for requests already on their way (a lone "
                                          "request never waits)")
    max_concurrent_requests: int = Field(16, ge=1, le=1024, description="requests the API "
                                         "works on at once (everything but /healthz, the "
                                         "pages, static files and /metrics); the database "
                                         "pool has a connection for each and the request "
                                         "thread pool a thread for each plus a reserve")
    admission_queue: int = Field(64, ge=0, le=100_000, description="requests that may wait "
                                 "for one of those places; a request beyond them gets 503 "
                                 "with Retry-After at once")
    admission_wait_seconds: float = Field(5.0, gt=0, le=300, description="longest wait in "
                                          "that queue before a 503 with Retry-After")
    db_connect_timeout: float = Field(3.0, ge=2, le=300, description="PostgreSQL: seconds to "
                                      "connect, and for the ping of a pooled connection before "
                                      "it is used; a database that does not answer is a 503")
    db_statement_timeout: float = Field(30.0, ge=0, le=3600, description="PostgreSQL: seconds "
                                        "a statement may run (the server's statement_timeout, "
                                        "and on the client side for a server that does not "
                                        "answer at all); 0: no limit")
    thumbnail_size: int = Field(160, ge=32, le=1024, description="longest side of a thumbnail")
    max_files_per_upload: int = Field(100, ge=1, le=10000)
    max_request_bytes: int = Field(256 * 1024 * 1024, ge=1024, description="largest body of "
                                   "an upload request (POST /admin/crops: a batch of files); "
                                   "larger ones get 413 unread")
    max_json_request_bytes: int = Field(64 * 1024, ge=1024, description="largest body of "
                                        "every other route (POST /search, admin JSON); the "
                                        "largest valid search, 100 camera names of 128 "
                                        "characters, is about 40 KB in UTF-8")
    trusted_proxies: str = Field("", description="comma-separated proxy addresses whose "
                                 "X-Forwarded-For is believed; from any other peer it is "
                                 "ignored (default: none)")
    metrics_access: Literal["public", "key", "off"] | None = Field(
        None, description="GET /metrics: public, behind an admin key, or off; default public "
        "in development, key in production")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    demo_gallery: Path | None = Field(None, description="folder ingested by `make run` when empty")
    crops_dir: Path | None = None
    index_dir: Path | None = None
    index_backend: Literal["faiss", "milvus"] = Field(
        "faiss", description="where index vectors live: faiss (files under index_dir, searched "
        "in process) or milvus (a Milvus server; its engine stores and filters the vectors)")
    milvus_uri: str | None = Field(None, description="the Milvus server of "
                                   "TBPS_INDEX_BACKEND=milvus, e.g. http://milvus:19530")
    milvus_token: str = Field("", repr=False, description="Milvus credentials (user:password "
                              "or an API key); empty when the server has no authentication")
    milvus_prefix: str = Field("tbps", pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$",
                               description="name prefix of this deployment's Milvus "
                               "collections and aliases (several deployments can share a server)")
    milvus_timeout: float = Field(30.0, gt=0, le=600, description="seconds a Milvus call may "
                                  "take, connecting included")
    milvus_consistency: Literal["Strong", "Session", "Bounded", "Eventually"] = Field(
        "Strong", description="Milvus consistency level of searches: Strong (default) sees "
        "every add and publish at once but waits 200-400 ms a request for the query node; "
        "Session / Bounded answer in milliseconds and see a new add or version about a time "
        "tick (Bounded: a few seconds) after it is written")
    max_upload_bytes: int = Field(ImageLimits().max_bytes, ge=1, description="largest crop "
                                  "file: bigger uploads are refused, bigger files are not "
                                  "indexed (reported failed)")
    max_image_pixels: int = Field(ImageLimits().max_pixels, ge=1, description="largest crop in "
                                  "pixels (width x height), for uploads and the indexer alike")
    log_level: str = "INFO"

    @field_validator("environment")
    @classmethod
    def _known_environment(cls, value: str) -> str:
        if value not in {"development", "production", "test"}:
            raise ValueError("TBPS_ENVIRONMENT must be development, production or test")
        return value

    @field_validator("audit_searches", mode="before")
    @classmethod
    def _audit_booleans(cls, value: object) -> object:
        """The setting was a boolean before: keep `true`/`false` meaning what they meant."""
        if isinstance(value, bool):
            return "all" if value else "off"
        text = str(value).strip().lower()
        return {"true": "all", "1": "all", "yes": "all", "false": "off", "0": "off",
                "no": "off"}.get(text, text)

    @model_validator(mode="after")
    def _milvus_needs_a_server(self) -> Settings:
        if self.index_backend == "milvus" and not self.milvus_uri:
            raise ValueError("TBPS_INDEX_BACKEND=milvus needs TBPS_MILVUS_URI (the Milvus "
                             "server, e.g. http://milvus:19530)")
        if self.milvus_uri and not self.milvus_uri.startswith(("http://", "https://",
                                                               "tcp://")):
            raise ValueError(f"TBPS_MILVUS_URI={self.milvus_uri!r} is not an http(s):// or "
                             "tcp:// address")
        return self

    @model_validator(mode="after")
    def _no_default_secrets_outside_development(self) -> Settings:
        if self.environment != "production":
            return self
        if not self.admin_key_digests:
            raise ValueError("TBPS_ADMIN_KEYS (or TBPS_ADMIN_KEY_HASHES) must be set in production")
        weak = [k for k in self.admin_key_list if k.lower() in KNOWN_DEFAULT_KEYS or len(k) < 16]
        if weak:
            raise ValueError("TBPS_ADMIN_KEYS holds a default or short key (under 16 characters); "
                             "generate one, e.g. `python -c 'import secrets; "
                             "print(secrets.token_urlsafe(32))'`")
        return self

    @property
    def encoder_options(self) -> dict:
        """Keyword arguments of ``models.factory.load_encoder``."""
        return {"checkpoint": self.checkpoint, "device": self.device, "engine": self.engine,
                "cache_dir": self.resolved_engine_cache_dir,
                "precision": self.engine_precision}

    @property
    def resolved_engine_cache_dir(self) -> Path:
        """Under the data dir by default: a first start writes nothing into the source tree."""
        return self.engine_cache_dir or (self.cache_dir or self.data_dir / "cache") / "onnx"

    @property
    def image_limits(self) -> ImageLimits:
        """The limits uploads are checked against, handed to the indexer's reader."""
        return ImageLimits(max_bytes=self.max_upload_bytes, max_pixels=self.max_image_pixels)

    @property
    def request_threads(self) -> int:
        """Threads for the routes' blocking work: one per admitted request and a reserve."""
        return self.max_concurrent_requests + THREAD_RESERVE

    @property
    def database_limits(self) -> DatabaseLimits:
        """The API process's pool: a connection for each admitted request, and overflow for the
        reserve threads and the audit writer, so that no thread waits for a connection."""
        return DatabaseLimits(pool_size=self.max_concurrent_requests,
                              max_overflow=THREAD_RESERVE + 2,
                              pool_timeout_s=self.admission_wait_seconds,
                              connect_timeout_s=self.db_connect_timeout,
                              statement_timeout_s=self.db_statement_timeout or None)

    @property
    def resolved_metrics_access(self) -> str:
        if self.metrics_access:
            return self.metrics_access
        return "key" if self.environment == "production" else "public"

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'tbps.sqlite3').resolve()}"

    @property
    def resolved_crops_dir(self) -> Path:
        return self.crops_dir or self.data_dir / "crops"

    @property
    def resolved_index_dir(self) -> Path:
        return self.index_dir or self.data_dir / "index"

    @property
    def admin_key_list(self) -> list[str]:
        return [k.strip() for k in self.admin_keys.split(",") if k.strip()]

    @property
    def admin_key_digests(self) -> frozenset[str]:
        """sha256 digests of the keys from the environment; plain keys are not kept elsewhere."""
        hashes = {h.strip().lower() for h in self.admin_key_hashes.split(",") if h.strip()}
        return frozenset(hashes | {hash_key(k) for k in self.admin_key_list})

    @property
    def worker_heartbeat(self) -> Path:
        """Touched by `tbps worker` on every poll; the container health check reads its age."""
        return self.data_dir / "worker.heartbeat"

    @property
    def resolved_thumbs_dir(self) -> Path:
        return self.data_dir / "thumbs"

    def ensure_dirs(self) -> None:
        for path in (self.data_dir, self.resolved_crops_dir, self.resolved_index_dir,
                     self.resolved_thumbs_dir):
            path.mkdir(parents=True, exist_ok=True)


@lru_cache
def get_settings() -> Settings:
    return Settings()
