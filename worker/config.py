"""Worker settings: one dataclass, read from command-line flags and WAN_WORKER_* environment variables
(flag > variable > default). Every setting is declared once here, with its unit in its name."""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence
from urllib.parse import urlsplit

from wan_engine.request import PRECISIONS
from wan_engine.schema import DEFAULT_LIMITS, Limits
from worker.s3 import parse_s3_url

LOG_FORMATS = ("auto", "json", "console")
LOG_LEVELS = ("debug", "info", "warning", "error")
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000  # the max_image_pixels default (worker.video starts with it)


def default_worker_id() -> str:
    """host:gpuN:pid (host:cpu:pid without a GPU): unique per process, readable in the table."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
    device = f"gpu{visible}" if visible and visible != "-1" else "cpu"
    return f"{socket.gethostname()}:{device}:{os.getpid()}"


def _setting(default: Any = None, *, help: str, parse: Callable[[str], Any] = str, env: str | None = None,
             factory: Callable[[], Any] | None = None) -> Any:
    metadata = {"help": help, "parse": parse, "env": env}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def _optional_str(value: str) -> str | None:
    return value or None


def _optional_int(value: str) -> int | None:
    return int(value) if value else None


def _optional_path(value: str) -> Path | None:
    return Path(value) if value else None


def _optional_float(value: str) -> float | None:
    return float(value) if value else None


def _names(value: str) -> tuple[str, ...] | None:
    names = tuple(name.strip() for name in value.split(",") if name.strip())
    return names or None


def _paths(value: str) -> tuple[Path, ...] | None:
    folders = tuple(Path(part) for part in value.split(os.pathsep) if part.strip())
    return folders or None


def _boolean(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true/false, got {value!r}")


@dataclass(frozen=True)
class WorkerConfig:
    database_url: str = _setting("sqlite:///wan-worker.db", help="postgresql://user@host:port/db or sqlite:///path")
    models_dir: Path = _setting(Path("models"), parse=Path, help="folder of model weight files")
    output_dir: Path = _setting(Path("outputs"), parse=Path, help="artifacts go to <output-dir>/<task id>/")
    device: str | None = _setting(
        None, parse=_optional_str, help="torch device; default cuda when an NVIDIA GPU is visible, else cpu"
    )
    worker_id: str = _setting(factory=default_worker_id, env="WAN_WORKER_ID", help="default host:gpuN:pid")
    task_types: tuple[str, ...] | None = _setting(
        None, parse=_names, help="comma-separated task types to claim (default: every type)"
    )
    lease_seconds: float = _setting(60.0, parse=float, help="a claim without a heartbeat for this long is rescued")
    heartbeat_seconds: float = _setting(10.0, parse=float, help="how often a running task's lease is refreshed")
    poll_seconds: float = _setting(2.0, parse=float, help="claim attempts when no NOTIFY arrives (and on SQLite)")
    grace_seconds: float = _setting(30.0, parse=float, help="on SIGTERM, time the running task gets to finish")
    task_timeout_seconds: float | None = _setting(
        None, parse=_optional_float,
        help="a task running longer is stopped and retried later (then Failed); one that does not stop within "
             "grace_seconds makes the worker exit for a restart (default: no limit)",
    )  # fmt: skip
    maintenance_seconds: float = _setting(15.0, parse=float, help="interval of lease rescue and dependency cascade")
    affinity_max_wait_seconds: float = _setting(
        300.0, parse=float, help="rows older than this are claimed by age before rows for the loaded model"
    )
    retry_base_seconds: float = _setting(10.0, parse=float, help="first retry delay of a transient failure")
    retry_max_seconds: float = _setting(600.0, parse=float, help="cap of the exponential retry delay")
    max_device_faults: int = _setting(
        2, parse=int, help="consecutive device faults (CUDA errors) after which the worker exits with 70 for a restart"
    )
    max_storage_errors: int = _setting(
        2, parse=int, help="output-storage errors in a row (read-only, full) after which the worker exits with 74"
    )
    max_image_pixels: int = _setting(
        DEFAULT_MAX_IMAGE_PIXELS, parse=int, help="input images with more pixels (width x height, from the header) are refused"
    )
    notify_wakeups: bool = _setting(True, parse=_boolean, help="LISTEN for Postgres NOTIFY (else poll only)")
    preload_model: str | None = _setting(None, parse=_optional_str, help="model to load before the first claim")
    download_missing: bool = _setting(
        False, parse=_boolean, help="download a task's missing model and LoRA files from the hub before running it"
    )
    metrics_port: int | None = _setting(None, parse=_optional_int, help="serve Prometheus metrics on this port")
    log_format: str = _setting("auto", help="json, console, or auto (console on a terminal, else json)")
    log_level: str = _setting("info", help="debug, info, warning or error")
    # Fleet without a shared disk (docs/fleet.md): inputs by URL, outputs to S3-compatible storage.
    cache_dir: Path | None = _setting(
        None, parse=_optional_path, help="where URL inputs are cached by content (default <models-dir>/cache)"
    )
    cache_max_gb: float | None = _setting(
        None, parse=_optional_float,
        help="keep the URL input cache under this many GiB, least recently used first (default: no limit)",
    )  # fmt: skip
    input_dirs: tuple[Path, ...] | None = _setting(
        None, parse=_paths,
        help=f"folders (separated by '{os.pathsep}') that local input paths must lie in, besides the output and cache "
             "folders (default: any local path)",
    )  # fmt: skip
    input_url_hosts: tuple[str, ...] | None = _setting(
        None, parse=_names,
        help="hosts (comma-separated; *.example.com for its subdomains) http(s) inputs may come from, redirects "
             "included; the --storage-public-url host is added (default: any host)",
    )  # fmt: skip
    max_input_bytes: int = _setting(2 * 1024**3, parse=int, help="largest file a URL input may have, in bytes")
    input_connect_timeout_seconds: float = _setting(10.0, parse=float, help="connect timeout of a URL input fetch")
    input_read_timeout_seconds: float = _setting(
        60.0, parse=float, help="longest wait for the next bytes of a URL input fetch"
    )
    input_fetch_attempts: int = _setting(
        4, parse=int, help="tries per URL input on 5xx, timeouts and connection errors (exponential backoff)"
    )
    input_download_seconds: float = _setting(
        900.0, parse=float, help="longest a URL input's fetch may take, tries included (then the task is retried later)"
    )
    storage_url: str | None = _setting(
        None, parse=_optional_str, help="s3://bucket/prefix: upload artifacts to <prefix>/<task id>/ (default: keep them local)"
    )
    storage_public_url: str | None = _setting(
        None, parse=_optional_str, help="https URL serving the storage URL's prefix; output_location uses it"
    )
    storage_presign_seconds: int | None = _setting(
        None, parse=_optional_int, help="add presigned GET URLs valid this long to result_data (max 604800)"
    )
    keep_local: bool = _setting(False, parse=_boolean, help="keep local copies of uploaded artifacts")
    precision: str = _setting("bf16", help="DiT precision: bf16 (exact) or fp8 (fp8 block linears); a task's `precision` wins")
    no_compile: bool = _setting(False, parse=_boolean, help="do not torch.compile the DiT blocks (compiled by default on CUDA)")
    gpu_memory_gb: float | None = _setting(
        None, parse=_optional_float,
        help="device memory (GiB) the engine may use; DiT blocks beyond it stream from host memory (default: the whole card)",
    )  # fmt: skip
    max_prompt_chars: int = _setting(
        DEFAULT_LIMITS.max_prompt_chars, parse=int, help="longest prompt (characters) a task may send")
    max_keyframes: int = _setting(DEFAULT_LIMITS.max_keyframes, parse=int, help="most keyframe images per travel job")
    max_pixel_frames: int = _setting(
        DEFAULT_LIMITS.max_pixel_frames, parse=int,
        help="budget of width x height x frames for one generation and for one control video")

    @property
    def limits(self) -> Limits:
        """The budgets tasks are checked against before any work (wan_engine.schema.Limits)."""
        return Limits(self.max_prompt_chars, self.max_keyframes, self.max_pixel_frames)

    def __post_init__(self) -> None:
        for name in ("lease_seconds", "heartbeat_seconds", "poll_seconds", "maintenance_seconds",
                     "retry_base_seconds", "retry_max_seconds"):
            if not 0 < getattr(self, name) < math.inf:
                raise ValueError(f"{name} must be a finite number > 0, got {getattr(self, name)}")
        for name in ("grace_seconds", "affinity_max_wait_seconds"):
            if not 0 <= getattr(self, name) < math.inf:  # inf would overflow the database's intervals
                raise ValueError(f"{name} must be a finite number >= 0, got {getattr(self, name)}")
        for name in ("max_prompt_chars", "max_keyframes", "max_pixel_frames"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_device_faults < 1:
            raise ValueError(f"max_device_faults must be >= 1, got {self.max_device_faults}")
        if self.max_image_pixels < 1:
            raise ValueError(f"max_image_pixels must be >= 1, got {self.max_image_pixels}")
        if self.max_storage_errors < 1:
            raise ValueError(f"max_storage_errors must be >= 1, got {self.max_storage_errors}")
        if self.heartbeat_seconds >= self.lease_seconds:
            raise ValueError(
                f"heartbeat_seconds ({self.heartbeat_seconds}) must be shorter than lease_seconds ({self.lease_seconds})"
            )
        if self.log_format not in LOG_FORMATS:
            raise ValueError(f"log_format must be one of {', '.join(LOG_FORMATS)}, got {self.log_format!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.task_timeout_seconds is not None and not 0 < self.task_timeout_seconds < math.inf:
            raise ValueError(f"task_timeout_seconds must be a finite number > 0, got {self.task_timeout_seconds}")
        if self.cache_max_gb is not None and not 0 < self.cache_max_gb < math.inf:
            raise ValueError(f"cache_max_gb must be a finite number > 0, got {self.cache_max_gb}")
        if self.gpu_memory_gb is not None and not 0 < self.gpu_memory_gb < math.inf:
            raise ValueError(f"gpu_memory_gb must be a finite number > 0, got {self.gpu_memory_gb}")
        if self.log_level not in LOG_LEVELS:
            raise ValueError(f"log_level must be one of {', '.join(LOG_LEVELS)}, got {self.log_level!r}")
        if self.max_input_bytes < 1 or self.input_fetch_attempts < 1:
            raise ValueError("max_input_bytes and input_fetch_attempts must be >= 1")
        for name in ("input_connect_timeout_seconds", "input_read_timeout_seconds", "input_download_seconds"):
            if not 0 < getattr(self, name) < math.inf:
                raise ValueError(f"{name} must be a finite number > 0, got {getattr(self, name)}")
        for folder in self.input_dirs or ():
            if not Path(folder).is_dir():
                raise ValueError(f"input_dirs: {folder} is not a folder")
        if self.storage_url is not None:
            parse_s3_url(self.storage_url)  # ValueError names what is wrong
        if self.storage_presign_seconds is not None and not 1 <= self.storage_presign_seconds <= 604800:
            raise ValueError(f"storage_presign_seconds must be 1..604800 (7 days), got {self.storage_presign_seconds}")

    @property
    def input_cache_dir(self) -> Path:
        return self.cache_dir if self.cache_dir is not None else Path(self.models_dir) / "cache"

    @property
    def input_url_host_list(self) -> tuple[str, ...] | None:
        """The hosts URL inputs may name (None: any): --input-url-hosts and the host of
        --storage-public-url, through which the segments of a travel job read each other's videos."""
        if self.input_url_hosts is None:
            return None
        public = urlsplit(self.storage_public_url).hostname if self.storage_public_url else None
        return (*self.input_url_hosts, *([public] if public else []))

    @property
    def local_input_roots(self) -> tuple[Path, ...] | None:
        """Where local input paths may lie (None: anywhere): --input-dirs and the worker's output folder,
        which holds the videos of the tasks it ran (a travel segment's predecessor, a stitch's clips)."""
        return None if self.input_dirs is None else (*self.input_dirs, Path(self.output_dir))


def env_name(name: str) -> str:
    """The WAN_WORKER_* variable of a setting."""
    env = _field(name).metadata["env"]
    return env or f"WAN_WORKER_{name.upper()}"


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


# Settings every subcommand that touches the database takes; `run` takes all of them.
CONNECTION_SETTINGS = ("database_url", "log_format", "log_level")
ALL_SETTINGS = tuple(f.name for f in dataclasses.fields(WorkerConfig))


def add_setting_arguments(parser: argparse.ArgumentParser, names: Sequence[str]) -> None:
    """Add a flag per setting; unset flags stay None so that the environment and defaults apply."""
    group = parser.add_argument_group("settings (flag, else the WAN_WORKER_* variable, else the default)")
    for name in names:
        meta = _field(name).metadata
        default = _default(name)
        shown = "every type" if name == "task_types" else default
        switch = {"nargs": "?", "const": "true"} if meta["parse"] is _boolean else {}  # `--no-compile` alone means true
        group.add_argument(
            flag_name(name), dest=name, default=None, metavar=name.split("_")[-1].upper(),
            help=f"{meta['help']} [{env_name(name)}; default {shown}]", **switch,
        )


def load_config(args: argparse.Namespace | None = None, environ: Mapping[str, str] | None = None) -> WorkerConfig:
    """Resolve every setting: the flag if given, else the environment variable, else the default."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in dataclasses.fields(WorkerConfig):
        raw = getattr(args, f.name, None) if args is not None else None
        if raw is None:
            raw = environ.get(env_name(f.name))
        if raw is None:
            continue
        try:
            values[f.name] = f.metadata["parse"](raw)
        except ValueError as error:
            raise ValueError(f"{flag_name(f.name)} / {env_name(f.name)}: {error}") from None
    return WorkerConfig(**values)


def _field(name: str) -> dataclasses.Field:
    return {f.name: f for f in dataclasses.fields(WorkerConfig)}[name]


def _default(name: str) -> Any:
    f = _field(name)
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
