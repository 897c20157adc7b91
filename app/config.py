"""Configuration: config.toml, then ALTYAZI_<SECTION>_<KEY> variables, then CLI flags.

One flat, typed object per section, validated once at start. A bad value
stops the server with a single line that names the key and quotes the value.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from app.media.cuerules import PRESETS, CueRules, RuleError, check as check_rules
from app.pipeline.options import as_bool

ENV_PREFIX = "ALTYAZI_"
DEFAULT_CONFIG_PATH = Path(__file__).resolve().parent.parent / "config.toml"


class ConfigError(ValueError):
    """A bad configuration value; str() is one line naming the key."""


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    shutdown_timeout_s: float = 20.0
    sse_heartbeat_s: float = 15.0
    log_level: str = "info"
    log_format: str = "text"
    # Connection limits (app/api/connlimits.py).
    limit_concurrency: int = 1000  # connections (and requests) at once; 0 = no limit
    h11_max_incomplete_event_size: int = 16384  # bytes of request line + headers
    timeout_keep_alive_s: float = 5.0
    timeout_headers_s: float = 10.0
    timeout_body_s: float = 30.0
    min_upload_rate_bytes_s: float = 1024.0
    # Upload bodies that take chunks at once, small ones first; the rest wait
    # their turn (app/api/uploads.py IngestGate). 0 = no bound.
    max_upload_streams: int = 8


@dataclass
class ModelConfig:
    name: str = "base"
    device: str = "auto"
    compute_type: str = "default"
    cpu_threads: int = 0  # per CPU replica; 0: cores / replicas
    # On a CPU, the model runs as this many replicas (weights shared) and each
    # batch is split across them; 0: one per core up to 4 (see
    # batching.whisper_runner.default_cpu_layout). Ignored on a GPU.
    cpu_replicas: int = 0
    # GPUs to use: one resident model and batcher per listed index, jobs spread
    # across them (batching/spread.py). A single number is one GPU.
    device_index: list[int] = field(default_factory=lambda: [0])
    # Encoder outputs kept for windows decoded again one temperature warmer.
    encoder_cache_mb: int = 256
    # Encode media of up to 20 s (one window) at a shorter input (10/15/20 s
    # buckets) instead of padding it to 30 s. Off by default: it pays on clean
    # clips but made the 20-user load test 2.4x slower (README, "Measured performance").
    trim_short_windows: bool = False


@dataclass
class BatchingConfig:
    max_batch_size: int = 0  # 0: by device (see batching.whisper_engine.default_batch_size)
    max_wait_ms: float = 10.0
    prepare_threads: int = 2
    # Windows per encoder call on a CPU, where the encoder costs as much or more
    # per window in big batches and only the decoder gains; 0: by device (CPU 1,
    # a GPU encodes the whole batch at once).
    encode_batch_size: int = 0
    # Decoder rows per batch (a beam-5 window counts 5, a window sampled at a
    # fallback temperature counts 5): what fills a GPU's memory. 0: by device
    # (GPU twice max_batch_size, CPU no limit).
    max_batch_rows: int = 0
    # VAD workers shared by all jobs, taken one 60-s block at a time so a long
    # file's analysis never holds a short one back; 0: by device (CPU 1, GPU 4).
    vad_threads: int = 0


@dataclass
class DecodingConfig:
    # Defaults for jobs that do not choose; chosen by measurement on long media
    # (README, "Measured performance").
    beam_size: int = 1
    condition_on_previous_text: bool = False


@dataclass
class FfmpegConfig:
    path: str = "ffmpeg"
    ffprobe_path: str = "ffprobe"
    max_processes: int = 2
    timeout_s: float = 3600.0
    threads: int = 0
    max_render_processes: int = 0  # 0: all of max_processes but one (app/media/ffmpeg_slots.py)
    crf: int = 23
    preset: str = "veryfast"


@dataclass
class StorageConfig:
    data_dir: Path = Path("./data")
    max_upload_mb: float = 2048.0
    max_duration_s: float = 14400.0
    retention_hours: float = 168.0
    min_free_mb: float = 1024.0


@dataclass
class LimitsConfig:
    max_queued_jobs: int = 1000
    max_running_jobs: int = 64
    max_active_jobs_per_key: int = 4
    max_queued_jobs_per_key: int = 100
    max_exports_per_key: int = 4  # queued + rendering, per key (the one anonymous owner too)
    max_transcript_mb: float = 16.0


@dataclass
class AuthConfig:
    # Off by default so `make serve` works at once on 127.0.0.1; the server
    # refuses to start without keys on any non-loopback address (see app/api/auth.py).
    enabled: bool = False
    allow_unauthenticated_remote: bool = False
    keys_file: str = ""  # "" = <storage.data_dir>/keys.json
    cors_origins: list[str] = field(default_factory=list)
    public_metrics: bool = False
    rate_limit_per_minute: float = 600.0
    rate_limit_burst: int = 60
    max_sse_per_key: int = 16
    cache_ttl_s: float = 60.0
    failures_per_minute: float = 10.0  # wrong secrets per key id and per client address; 0 = unlimited
    failure_burst: int = 20


@dataclass
class SubtitlesConfig:
    """Line rules every subtitle output follows unless a job or a download chooses others.

    ``preset`` (netflix, bbc, none/raw) replaces the keys below when set.
    """

    preset: str = ""
    max_chars_per_line: int = 42
    max_lines_per_cue: int = 2
    max_cue_duration_s: float = 7.0
    min_cue_duration_s: float = 0.833
    min_gap_s: float = 0.083
    max_cps: float = 17.0  # 0: no reading-speed limit

    def rules(self) -> CueRules:
        if self.preset:
            return PRESETS[self.preset]
        return CueRules(
            max_chars_per_line=self.max_chars_per_line,
            max_lines_per_cue=self.max_lines_per_cue,
            max_cue_duration_s=self.max_cue_duration_s,
            min_cue_duration_s=self.min_cue_duration_s,
            min_gap_s=self.min_gap_s,
            max_cps=self.max_cps,
        )


@dataclass
class StoreConfig:
    # "" = sqlite:///<storage.data_dir>/altyazi.db, the single box; "postgresql://user@host/db"
    # shares jobs between nodes (README, "Cluster").
    url: str = ""


@dataclass
class FilesConfig:
    # "" = file:///<storage.data_dir>, the single box; "s3://bucket/prefix" keeps job files in
    # S3-compatible storage (endpoint and credentials from the AWS_* environment variables).
    url: str = ""


@dataclass
class ClusterConfig:
    # Used only with a postgresql:// store. "" = this host's name.
    node_id: str = ""
    lease_s: float = 15.0  # a claimed job is another node's to take this long after its owner's last heartbeat
    poll_s: float = 1.0  # how often an idle node looks for queued jobs (a new job also wakes it at once)
    max_jobs: int = 4  # jobs one node holds at once; it claims only while it has fewer and its batcher has room


@dataclass
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    decoding: DecodingConfig = field(default_factory=DecodingConfig)
    ffmpeg: FfmpegConfig = field(default_factory=FfmpegConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    subtitles: SubtitlesConfig = field(default_factory=SubtitlesConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    files: FilesConfig = field(default_factory=FilesConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)

    @property
    def sqlite_path(self) -> Path:
        """The single box's job index: ``store.url``'s sqlite:///path, or data_dir/altyazi.db."""
        url = self.store.url
        return Path(url[len("sqlite://"):]) if url.startswith("sqlite:///") else Path(self.storage.data_dir) / "altyazi.db"

    @property
    def clustered(self) -> bool:
        """Whether jobs live in a shared database (so nodes claim them) rather than in this box's SQLite."""
        return self.store.url.startswith(("postgresql://", "postgres://"))

    def validate(self) -> Config:
        s, m, b, f, st, lim = self.server, self.model, self.batching, self.ffmpeg, self.storage, self.limits
        _check(0 < s.port < 65536, "server.port", s.port, "a port number from 1 to 65535")
        _check(s.shutdown_timeout_s >= 0, "server.shutdown_timeout_s", s.shutdown_timeout_s, ">= 0")
        _check(s.sse_heartbeat_s > 0, "server.sse_heartbeat_s", s.sse_heartbeat_s, "> 0")
        _check(s.log_level in {"debug", "info", "warning", "error"}, "server.log_level", s.log_level, "debug, info, warning or error")
        _check(s.log_format in {"text", "json"}, "server.log_format", s.log_format, "text or json")
        _check(s.limit_concurrency >= 0, "server.limit_concurrency", s.limit_concurrency, ">= 0 (0 = no limit)")
        _check(1024 <= s.h11_max_incomplete_event_size <= 1 << 20, "server.h11_max_incomplete_event_size", s.h11_max_incomplete_event_size, "from 1024 to 1048576 bytes")
        _check(s.timeout_keep_alive_s > 0, "server.timeout_keep_alive_s", s.timeout_keep_alive_s, "> 0")
        _check(s.timeout_headers_s > 0, "server.timeout_headers_s", s.timeout_headers_s, "> 0")
        _check(s.timeout_body_s > 0, "server.timeout_body_s", s.timeout_body_s, "> 0")
        _check(s.min_upload_rate_bytes_s >= 0, "server.min_upload_rate_bytes_s", s.min_upload_rate_bytes_s, ">= 0")
        _check(0 <= s.max_upload_streams <= 100_000, "server.max_upload_streams", s.max_upload_streams, "from 1 to 100000, or 0 for no bound")
        _check(bool(m.name.strip()), "model.name", m.name, "a model name or folder")
        _check(m.device in {"auto", "cpu", "cuda"}, "model.device", m.device, "auto, cpu or cuda")
        _check(m.cpu_threads >= 0, "model.cpu_threads", m.cpu_threads, ">= 0")
        _check(0 <= m.cpu_replicas <= 64, "model.cpu_replicas", m.cpu_replicas, "from 0 to 64")
        _check(
            bool(m.device_index) and all(i >= 0 for i in m.device_index) and len(set(m.device_index)) == len(m.device_index),
            "model.device_index", m.device_index, "a GPU index or a list of distinct ones, e.g. 0 or [0, 1]",
        )
        _check(m.encoder_cache_mb >= 0, "model.encoder_cache_mb", m.encoder_cache_mb, ">= 0 (0 = no cache)")
        _check(0 <= b.encode_batch_size <= 256, "batching.encode_batch_size", b.encode_batch_size, "from 1 to 256, or 0 for the device's default")
        _check(0 <= b.max_batch_rows <= 4096, "batching.max_batch_rows", b.max_batch_rows, "from 1 to 4096, or 0 for the device's default")
        _check(0 <= b.vad_threads <= 64, "batching.vad_threads", b.vad_threads, "from 1 to 64, or 0 for the device's default")
        _check(0 <= b.max_batch_size <= 256, "batching.max_batch_size", b.max_batch_size, "from 1 to 256, or 0 for the device's default")
        _check(0 <= b.max_wait_ms <= 10_000, "batching.max_wait_ms", b.max_wait_ms, "from 0 to 10000")
        _check(1 <= b.prepare_threads <= 64, "batching.prepare_threads", b.prepare_threads, "from 1 to 64")
        _check(1 <= self.decoding.beam_size <= 10, "decoding.beam_size", self.decoding.beam_size, "from 1 to 10")
        _check(1 <= f.max_processes <= 256, "ffmpeg.max_processes", f.max_processes, "from 1 to 256")
        _check(f.timeout_s > 0, "ffmpeg.timeout_s", f.timeout_s, "> 0")
        _check(f.threads >= 0, "ffmpeg.threads", f.threads, ">= 0")
        _check(
            0 <= f.max_render_processes <= f.max_processes, "ffmpeg.max_render_processes", f.max_render_processes,
            "from 0 (all but one of ffmpeg.max_processes) to ffmpeg.max_processes",
        )
        _check(0 <= f.crf <= 51, "ffmpeg.crf", f.crf, "from 0 to 51")
        _check(st.max_upload_mb > 0, "storage.max_upload_mb", st.max_upload_mb, "> 0")
        _check(st.max_duration_s > 0, "storage.max_duration_s", st.max_duration_s, "> 0")
        _check(st.retention_hours >= 0, "storage.retention_hours", st.retention_hours, ">= 0 (0 keeps jobs forever)")
        _check(st.min_free_mb >= 0, "storage.min_free_mb", st.min_free_mb, ">= 0")
        _check(lim.max_queued_jobs >= 1, "limits.max_queued_jobs", lim.max_queued_jobs, ">= 1")
        _check(1 <= lim.max_running_jobs <= 10_000, "limits.max_running_jobs", lim.max_running_jobs, "from 1 to 10000")
        _check(lim.max_active_jobs_per_key >= 1, "limits.max_active_jobs_per_key", lim.max_active_jobs_per_key, ">= 1")
        _check(lim.max_queued_jobs_per_key >= 1, "limits.max_queued_jobs_per_key", lim.max_queued_jobs_per_key, ">= 1")
        _check(lim.max_exports_per_key >= 1, "limits.max_exports_per_key", lim.max_exports_per_key, ">= 1")
        _check(lim.max_transcript_mb > 0, "limits.max_transcript_mb", lim.max_transcript_mb, "> 0")
        sub = self.subtitles
        _check(sub.preset in ("", *PRESETS), "subtitles.preset", sub.preset, f"empty or one of {', '.join(PRESETS)}")
        try:
            check_rules(sub.rules())
        except RuleError as exc:
            key = exc.field
            raise ConfigError(f"config subtitles.{key} = {getattr(sub, key)!r} is invalid: {exc.message.split(': ', 1)[1]}") from None
        au = self.auth
        _check(au.rate_limit_per_minute >= 0, "auth.rate_limit_per_minute", au.rate_limit_per_minute, ">= 0 (0 = unlimited)")
        _check(au.rate_limit_burst >= 1, "auth.rate_limit_burst", au.rate_limit_burst, ">= 1")
        _check(au.max_sse_per_key >= 1, "auth.max_sse_per_key", au.max_sse_per_key, ">= 1")
        _check(au.cache_ttl_s >= 0, "auth.cache_ttl_s", au.cache_ttl_s, ">= 0")
        _check(au.failures_per_minute >= 0, "auth.failures_per_minute", au.failures_per_minute, ">= 0 (0 = unlimited)")
        _check(au.failure_burst >= 1, "auth.failure_burst", au.failure_burst, ">= 1")
        for origin in au.cors_origins:
            _check(
                origin == "*" or (origin.startswith(("http://", "https://")) and not origin.endswith("/")),
                "auth.cors_origins", origin, "origins like https://example.org (scheme and host, no path), or *",
            )
        st_url, f_url, cl = self.store.url, self.files.url, self.cluster
        _check(
            st_url == "" or st_url.startswith(("sqlite:///", "postgresql://", "postgres://")),
            "store.url", st_url, '"" (SQLite in storage.data_dir), sqlite:///path or postgresql://user@host/db',
        )
        _check(
            f_url == "" or f_url.startswith("file:///") or (f_url.startswith("s3://") and len(f_url) > 5),
            "files.url", f_url, '"" (storage.data_dir), file:///path or s3://bucket/prefix',
        )
        _check(not f_url.startswith("s3://") or self.clustered, "files.url", f_url, "s3:// only with a postgresql:// store.url")
        _check(cl.lease_s >= 1, "cluster.lease_s", cl.lease_s, ">= 1")
        _check(0 < cl.poll_s <= cl.lease_s, "cluster.poll_s", cl.poll_s, "> 0 and at most cluster.lease_s")
        _check(1 <= cl.max_jobs <= 10_000, "cluster.max_jobs", cl.max_jobs, "from 1 to 10000")
        return self


def _check(ok: bool, key: str, value: Any, expected: str) -> None:
    if not ok:
        raise ConfigError(f"config {key} = {value!r} is invalid: expected {expected}")


def _coerce(key: str, raw: Any, kind: Any) -> Any:
    """Convert a TOML or environment value to the field's type, or fail naming the key."""
    try:
        if kind in (int, "int"):
            if isinstance(raw, bool):
                raise ValueError
            if isinstance(raw, float) and not raw.is_integer():
                raise ValueError
            return int(raw)
        if kind in (float, "float"):
            if isinstance(raw, bool):
                raise ValueError
            return float(raw)
        if kind in (bool, "bool"):
            value = as_bool(raw)
            if value is None:
                raise ValueError
            return value
        if kind == "list[int]":
            # one index, a TOML array, or a comma-separated environment value
            items = raw.split(",") if isinstance(raw, str) else raw if isinstance(raw, list) else [raw]
            if any(isinstance(i, (bool, float)) for i in items):
                raise ValueError
            return [int(str(i).strip()) for i in items if str(i).strip()]
        if kind in (list, "list[str]"):
            # a TOML array, or a comma-separated environment value
            items = raw.split(",") if isinstance(raw, str) else raw
            if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
                raise ValueError
            return [i.strip() for i in items if i.strip()]
        if kind in (Path, "Path"):
            return Path(str(raw)).expanduser()
        if not isinstance(raw, (str, int, float)) or isinstance(raw, bool):
            raise ValueError
        return str(raw)
    except (TypeError, ValueError):
        name = kind if isinstance(kind, str) else kind.__name__
        raise ConfigError(f"config {key} = {raw!r} is invalid: expected a {name}") from None


def _apply(cfg: Config, section: str, key: str, raw: Any, origin: str) -> None:
    sect = getattr(cfg, section, None)
    if sect is None or not dataclasses.is_dataclass(sect):
        raise ConfigError(f"{origin}: unknown config section [{section}]")
    types = {f.name: f.type for f in fields(sect)}
    if key not in types:
        raise ConfigError(f"{origin}: unknown config key {section}.{key}")
    setattr(sect, key, _coerce(f"{section}.{key}", raw, types[key]))


def load_config(
    path: Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Build the config: file (default config.toml), then environment, then overrides.

    ``overrides`` maps "section.key" to values (the CLI flags); None values are ignored.
    """
    cfg = Config()
    file_path = path if path is not None else DEFAULT_CONFIG_PATH
    if path is not None or file_path.exists():
        try:
            with open(file_path, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"config file {str(file_path)!r} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {str(file_path)!r} is not valid TOML: {exc}") from None
        for section, values in data.items():
            if not isinstance(values, dict):
                raise ConfigError(f"{file_path}: {section!r} must be a [section] table")
            for key, raw in values.items():
                _apply(cfg, section, key, raw, str(file_path))
    env = os.environ if environ is None else environ
    sections = {f.name for f in fields(cfg)}
    for name, raw in env.items():
        if not name.startswith(ENV_PREFIX):
            continue
        rest = name[len(ENV_PREFIX) :].lower()
        env_section = next((s for s in sections if rest.startswith(s + "_")), None)
        if env_section is None:
            continue  # ALTYAZI_* variables of other tools (or typos of sections) are not ours to judge
        _apply(cfg, env_section, rest[len(env_section) + 1 :], raw, f"environment {name}")
    for dotted, raw in (overrides or {}).items():
        if raw is None:
            continue
        section, key = dotted.split(".", 1)
        _apply(cfg, section, key, raw, "command line")
    return cfg.validate()
