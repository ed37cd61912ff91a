"""Inputs by URL: a path field may name an `http(s)://` or `s3://` object instead of a local file.

The object is downloaded once per box into a content-addressed cache (`--cache-dir`, default
`<models-dir>/cache`) and the handler gets a local path, which it checks like any local file (an image
decodes, a video probes) before spending GPU time. Layout of the cache:

    objects/<sha256><suffix>      the bytes, named by their hash (one copy of equal content)
    urls/<sha256 of the URL>.json which object a URL gave ({"url", "sha256", "bytes", "file"})
    urls/<sha256 of the URL>.lock held while that URL downloads, so concurrent tasks fetch it once
    tmp/                          partial downloads, renamed into objects/ only when complete

A URL is taken to name fixed content: once fetched it is served from the cache (publish new content
under a new URL). Downloads stream with a byte limit (`--max-input-bytes`, counted on the bytes that
arrive, whatever Content-Length says), connect/read timeouts, a deadline for the whole fetch
(`--input-download-seconds`: a server that trickles bytes cannot hold a worker), and retries with
exponential backoff on 5xx, timeouts and connection errors; a task that is stopped stops its download.
A 4xx is the task's fault: a ValidationError naming the field, the URL and the status, so the row
fails at once.

With `--cache-max-gb` the cache is kept under that size after each download by removing the least
recently used objects (a URL whose object went is fetched again when next asked for); an object used
within the last hour is never removed, since a task may be about to open it.

Hosts: by default a URL may name any host. With `--input-url-hosts` an http(s) URL, and every redirect
it takes, must name one of those hosts (`example.com`, or `*.example.com` for its subdomains), so a row
cannot make the box fetch from its own network (a cloud metadata address, an internal service).

Local paths: by default a path field may name any file on the box (headless rows carry local paths).
With `--input-dirs` the fetcher also guards them: a local path must resolve (links followed) inside one
of those folders or the worker's own output and cache folders, else the row fails naming the field.

Handlers do not call this module: the path helpers of worker.params do, through the fetcher the
poller makes active for the task's thread (`InputFetcher.active`).
"""
from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from functools import cached_property, lru_cache
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import tenacity
from filelock import FileLock
from filelock import Timeout as LockTimeout

from wan_engine.errors import echo
from worker.errors import TransientError, ValidationError
from worker.s3 import S3_SCHEME, error_code, http_status, parse_s3_url, s3_client

if TYPE_CHECKING:
    from worker.config import WorkerConfig

HTTP_SCHEMES = ("http", "https")
URL_SCHEMES = (*HTTP_SCHEMES, S3_SCHEME)
CHUNK_BYTES = 1 << 20
KEEP_RECENT_SECONDS = 3600.0  # pruning never removes an object used more recently than this
STREAM_CHUNK_BYTES = 1 << 16  # small enough that the deadline and a stopped task are seen while bytes arrive
BACKOFF_FIRST_SECONDS = 0.5
BACKOFF_MAX_SECONDS = 8.0
# Statuses in the 4xx range that are worth another try (the server asks to come back), not bad input.
RETRIED_CLIENT_STATUSES = (408, 425, 429)
_SUFFIX = re.compile(r"^\.[A-Za-z0-9]{1,12}$")
_LORA_FILE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._ +-]{0,200}\.safetensors$", re.IGNORECASE)


class _Missing(ValidationError):
    """Nothing at the URL: permanent for a user's input, worth waiting for on an object another task writes."""


class _HostRefused(Exception):
    """A request, or one of its redirects, to a host that is not allowed."""


class _Retryable(Exception):
    """A failed try worth repeating: 5xx, timeout, connection error."""


def is_url(value: Any) -> bool:
    """True for a string naming an http(s):// or s3:// URL (a local path never has a scheme here)."""
    return isinstance(value, str) and "://" in value and urlsplit(value).scheme.lower() in URL_SCHEMES


def shown_url(url: str) -> str:
    """The URL without credentials, query or fragment (a presigned URL's signature stays out of logs)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))


_ACTIVE: contextvars.ContextVar[InputFetcher | None] = contextvars.ContextVar("wan_worker_input_fetcher", default=None)
# Told (field, url) when a download starts, in the thread of the task that asked (its progress).
_ON_DOWNLOAD: contextvars.ContextVar[Callable[[str, str], None] | None] = contextvars.ContextVar(
    "wan_worker_on_download", default=None)
# Called as the bytes arrive, in the thread of the task that asked; raises once the task is stopped.
_STOP_CHECK: contextvars.ContextVar[Callable[[], None] | None] = contextvars.ContextVar(
    "wan_worker_stop_check", default=None)


def fetch_input(url: str, field: str, *, missing_is_transient: bool = False) -> Path:
    """The cached local copy of `url` for the param `field`, through the fetcher active in this thread."""
    fetcher = _ACTIVE.get()
    if fetcher is None:
        raise ValidationError(field, f"{shown_url(url)}: URLs are fetched only inside a worker's task")
    return fetcher.fetch(url, field, missing_is_transient=missing_is_transient)


def local_input(path: str, field: str) -> Path:
    """The local path the param `field` names, once the fetcher active in this thread allows it (any
    path without one: the in-process API and direct readers)."""
    fetcher = _ACTIVE.get()
    return fetcher.allowed_local(path, field) if fetcher is not None else Path(path)


class InputFetcher:
    """Downloads URLs into the cache folder; safe to share between threads and processes of one box."""

    def __init__(self, cache_dir: Path, *, max_bytes: int, connect_timeout_seconds: float,
                 read_timeout_seconds: float, attempts: int, backoff_first_seconds: float = BACKOFF_FIRST_SECONDS,
                 local_roots: tuple[Path, ...] | None = None, download_seconds: float = math.inf,
                 max_cached_bytes: int | None = None, keep_recent_seconds: float = KEEP_RECENT_SECONDS,
                 url_hosts: tuple[str, ...] | None = None):
        self.cache_dir = Path(cache_dir)
        # Folders local paths must lie in (None: anywhere); the cache is always one of them.
        self.local_roots = None if local_roots is None else tuple(
            Path(os.path.realpath(root)) for root in (*local_roots, self.cache_dir))
        self.max_bytes = max_bytes
        self.connect_timeout_seconds = connect_timeout_seconds
        self.read_timeout_seconds = read_timeout_seconds
        self.attempts = attempts
        self.backoff_first_seconds = backoff_first_seconds
        self.download_seconds = download_seconds
        self.max_cached_bytes, self.keep_recent_seconds = max_cached_bytes, keep_recent_seconds
        self.url_hosts = None if url_hosts is None else tuple(host.lower() for host in url_hosts)
        self._clients_lock = threading.Lock()

    @contextlib.contextmanager
    def active(self, on_download: Callable[[str, str], None] | None = None,
               stop_check: Callable[[], None] | None = None) -> Iterator[InputFetcher]:
        """Make this the fetcher the path helpers use in the current thread, for the `with` block;
        `on_download(field, url)` is called when a download (not a cache hit) starts, `stop_check()`
        as its bytes arrive (it raises to abandon the download: the task was stopped)."""
        token, reporter, checker = _ACTIVE.set(self), _ON_DOWNLOAD.set(on_download), _STOP_CHECK.set(stop_check)
        try:
            yield self
        finally:
            _STOP_CHECK.reset(checker)
            _ON_DOWNLOAD.reset(reporter)
            _ACTIVE.reset(token)

    def allowed_local(self, path: str, field: str) -> Path:
        """`path`, when it resolves (links followed, `..` folded) inside one of the local roots."""
        if self.local_roots is None:
            return Path(path)
        resolved = Path(os.path.realpath(path))
        if any(resolved.is_relative_to(root) for root in self.local_roots):
            return Path(path)
        roots = ", ".join(str(root) for root in self.local_roots)
        raise ValidationError(field, f"{echo(path, 1024)} is outside the folders this worker reads local inputs from "
                                     f"({roots}); send a URL, or add its folder to --input-dirs")

    def allows_host(self, host: str | None) -> bool:
        """True when URLs may name `host`: any host without url_hosts, else one listed (`*.x` for x's subdomains)."""
        if self.url_hosts is None:
            return True
        host = (host or "").lower()
        return any(host.endswith(allowed[1:]) if allowed.startswith("*.") else host == allowed
                   for allowed in self.url_hosts)

    def _refusal(self, host: str | None) -> str:
        return (f"the host {host!r} is not one this worker fetches inputs from "
                f"({', '.join(self.url_hosts or ())}; --input-url-hosts)")

    # ---- the cache -----------------------------------------------------------------------------------

    def fetch(self, url: str, field: str, *, missing_is_transient: bool = False) -> Path:
        """The local file holding `url`'s content: from the cache, else downloaded (once per box, even
        when several tasks ask at the same time). Nothing at the URL (HTTP 404/410, S3 NoSuchKey) is a
        ValidationError, or a TransientError with `missing_is_transient` (for an object that another
        task writes, such as a travel segment's predecessor)."""
        parts = urlsplit(url)
        if parts.scheme.lower() in HTTP_SCHEMES and not self.allows_host(parts.hostname):
            raise ValidationError(field, f"{shown_url(url)}: {self._refusal(parts.hostname)}")
        cached = self.cached(url)
        if cached is not None:
            return cached
        for folder in ("objects", "urls", "tmp"):
            (self.cache_dir / folder).mkdir(parents=True, exist_ok=True)
        lock_timeout = self.attempts * (self.connect_timeout_seconds + self.read_timeout_seconds + BACKOFF_MAX_SECONDS)
        try:
            with FileLock(self._url_file(url, ".lock"), timeout=lock_timeout):
                found = self.cached(url) or self._download(url, field, missing_is_transient)
        except LockTimeout:
            raise TransientError(f"{field}: {shown_url(url)}: another download of it did not finish "
                                 f"within {lock_timeout:.0f} s") from None
        self.prune(keep=found)
        return found

    def prune(self, keep: Path | None = None) -> int:
        """Remove the least recently used objects until the cache holds at most max_cached_bytes, never
        `keep` nor one used within keep_recent_seconds; one process at a time (another one pruning:
        skipped). Returns the bytes freed. An object also linked elsewhere (an installed LoRA) is kept:
        removing it would free nothing and make the next use of its URL download it again."""
        if self.max_cached_bytes is None:
            return 0
        try:
            with FileLock(self.cache_dir / "prune.lock", timeout=0):
                return self._prune(self.max_cached_bytes, keep)
        except LockTimeout:
            return 0

    def _prune(self, limit: int, keep: Path | None) -> int:
        objects = []
        for path in (self.cache_dir / "objects").iterdir():
            with contextlib.suppress(FileNotFoundError):
                stat = path.stat()
                if stat.st_nlink == 1:
                    objects.append((stat.st_mtime, stat.st_size, path))
        held, freed = sum(size for _, size, _ in objects), 0
        recent = time.time() - self.keep_recent_seconds
        for used_at, size, path in sorted(objects):
            if held - freed <= limit or used_at > recent:
                break
            if path != keep:
                path.unlink(missing_ok=True)
                freed += size
        return freed

    def install_loras(self, names: list[str], loras_dir: Path) -> None:
        """Put each LoRA named by URL into `loras_dir` under the URL's file name (a hard link to the
        cached copy), where the engine resolves LoRA names by file stem. A different file already there
        under that name is an error rather than silently used."""
        for index, url in enumerate(names):
            if not is_url(url):
                continue
            field = f"lora_names[{index}]"
            name = PurePosixPath(urlsplit(url).path).name
            if not _LORA_FILE.match(name):
                raise ValidationError(field, f"{shown_url(url)}: a LoRA URL must end in a file name like name.safetensors")
            cached = self.fetch(url, field)
            target = Path(loras_dir) / name
            if target.exists():
                if not (os.path.samefile(target, cached) or _same_content(target, cached)):
                    raise ValidationError(field, f"{shown_url(url)}: {target} exists with other content; "
                                                 "rename the file or the URL")
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(f".{name}.{os.getpid()}.{threading.get_ident()}")
            try:
                os.link(cached, partial)
            except OSError:  # another file system: copy instead
                shutil.copyfile(cached, partial)
            os.replace(partial, target)

    def cached(self, url: str) -> Path | None:
        """The cached copy of `url`, when one is complete; marked as just used (what pruning goes by)."""
        try:
            entry = json.loads(self._url_file(url, ".json").read_text())
            path = self.cache_dir / "objects" / entry["file"]
            if path.stat().st_size != entry["bytes"]:
                return None
            with contextlib.suppress(OSError):  # a read-only cache still serves its objects
                os.utime(path)
            return path
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _url_file(self, url: str, suffix: str) -> Path:
        return self.cache_dir / "urls" / (hashlib.sha256(url.encode()).hexdigest() + suffix)

    def _download(self, url: str, field: str, missing_is_transient: bool) -> Path:
        report = _ON_DOWNLOAD.get()
        if report is not None:
            report(field, shown_url(url))
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(_Retryable),
            stop=tenacity.stop_after_attempt(self.attempts),
            wait=tenacity.wait_exponential(multiplier=self.backoff_first_seconds, max=BACKOFF_MAX_SECONDS)
            + tenacity.wait_random(0, self.backoff_first_seconds),
            reraise=True,
        )
        deadline = time.monotonic() + self.download_seconds
        try:
            return retrying(self._download_once, url, field, deadline)
        except _Missing as error:
            if missing_is_transient:
                raise TransientError(f"{field}: {error.rule}") from None
            raise ValidationError(field, error.rule) from None
        except _Retryable as error:
            raise TransientError(f"{field}: {shown_url(url)}: {error} (after {self.attempts} attempts)") from None

    def _download_once(self, url: str, field: str, deadline: float) -> Path:
        """One try: stream into tmp/, then rename into objects/ and record the URL's entry."""
        partial = tempfile.NamedTemporaryFile(dir=self.cache_dir / "tmp", prefix="fetch-", delete=False)
        try:
            with partial:
                sink = _LimitedSink(partial, self.max_bytes, field, url, deadline, self.download_seconds)
                if urlsplit(url).scheme.lower() == S3_SCHEME:
                    self._stream_s3(url, field, sink)
                else:
                    self._stream_http(url, field, sink)
                partial.flush()
                os.fsync(partial.fileno())
            digest = sink.hash.hexdigest()
            name = digest + _suffix(url)
            os.replace(partial.name, self.cache_dir / "objects" / name)
        except BaseException:
            Path(partial.name).unlink(missing_ok=True)
            raise
        _write_atomically(self._url_file(url, ".json"),
                          json.dumps({"url": shown_url(url), "sha256": digest, "bytes": sink.size, "file": name}))
        return self.cache_dir / "objects" / name

    # ---- protocols -----------------------------------------------------------------------------------

    @cached_property
    def _http(self) -> Any:
        import httpx

        timeout = httpx.Timeout(connect=self.connect_timeout_seconds, read=self.read_timeout_seconds,
                                write=self.read_timeout_seconds, pool=self.connect_timeout_seconds)

        def check_host(request: httpx.Request) -> None:  # the first request and every redirect
            if not self.allows_host(request.url.host):
                raise _HostRefused(request.url.host)

        return httpx.Client(timeout=timeout, follow_redirects=True, headers={"User-Agent": "wan-worker"},
                            event_hooks={"request": [check_host]})

    @cached_property
    def _s3(self) -> Any:
        # botocore does not retry on its own here: _download retries S3 and HTTP the same way.
        return s3_client(connect_timeout_seconds=self.connect_timeout_seconds,
                         read_timeout_seconds=self.read_timeout_seconds, max_attempts=1)

    def _client(self, name: str) -> Any:
        with self._clients_lock:  # cached_property is not thread-safe
            return getattr(self, name)

    def _stream_http(self, url: str, field: str, sink: _LimitedSink) -> None:
        import httpx

        shown = shown_url(url)
        try:
            with self._client("_http").stream("GET", url) as response:
                status, reason = response.status_code, response.reason_phrase
                if status >= 500 or status in RETRIED_CLIENT_STATUSES:
                    raise _Retryable(f"HTTP {status} {reason}")
                if status in (404, 410):
                    raise _Missing(field, f"{shown}: HTTP {status} {reason}")
                if status != 200:
                    raise ValidationError(field, f"{shown}: HTTP {status} {reason}")
                sink.check_declared(response.headers.get("content-length"))
                for chunk in response.iter_bytes():  # as the bytes arrive, so a trickle meets the deadline
                    sink.write(chunk)
        except httpx.TransportError as error:  # timeouts, refused or reset connections, bad DNS
            raise _Retryable(f"{type(error).__name__}: {error or 'no detail'}") from None
        except _HostRefused as refused:
            raise ValidationError(field, f"{shown}: redirected; {self._refusal(refused.args[0])}") from None

    def _stream_s3(self, url: str, field: str, sink: _LimitedSink) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            location = parse_s3_url(url)
        except ValueError as error:
            raise ValidationError(field, str(error)) from None
        try:
            response = self._client("_s3").get_object(Bucket=location.bucket, Key=location.key)
            sink.check_declared(response.get("ContentLength"))
            for chunk in response["Body"].iter_chunks(STREAM_CHUNK_BYTES):
                sink.write(chunk)
        except ClientError as error:
            code, status = error_code(error), http_status(error)
            detail = f"{url}: {code or 'error'} (HTTP {status})"
            if status is not None and 400 <= status < 500 and status not in RETRIED_CLIENT_STATUSES:
                raise (_Missing if code in ("NoSuchKey", "404") else ValidationError)(field, detail) from None
            raise _Retryable(detail) from None
        except BotoCoreError as error:  # connection, timeout, credentials, a stream cut short
            raise _Retryable(f"{type(error).__name__}: {error}") from None


class _LimitedSink:
    """Writes a download to its file, hashing it; stops it once it passes the byte limit or the deadline,
    or its task is stopped."""

    def __init__(self, file: IO[bytes], limit: int, field: str, url: str, deadline: float, seconds: float):
        self.file, self.limit, self.field, self.url = file, limit, field, url
        self.deadline, self.seconds = deadline, seconds
        self.stop_check = _STOP_CHECK.get()
        self.size = 0
        self.hash = hashlib.sha256()

    def check_declared(self, declared: Any) -> None:
        """Refuse early when the server announces too much (what arrives is counted regardless)."""
        try:
            length = int(declared)
        except (TypeError, ValueError):
            return
        if length > self.limit:
            self._too_large(f"announces {length} bytes")

    def write(self, chunk: bytes) -> None:
        if self.stop_check is not None:
            self.stop_check()
        if time.monotonic() > self.deadline:
            raise TransientError(f"{self.field}: {shown_url(self.url)}: not fetched within {self.seconds:g} s "
                                 f"({self.size} bytes arrived; --input-download-seconds)")
        self.size += len(chunk)
        if self.size > self.limit:
            self._too_large(f"sent more than {self.limit} bytes")
        self.hash.update(chunk)
        self.file.write(chunk)

    def _too_large(self, what: str) -> None:
        raise ValidationError(self.field, f"{shown_url(self.url)}: {what}; the limit is {self.limit} bytes "
                                          "(--max-input-bytes)")


def _suffix(url: str) -> str:
    """The URL path's file extension when it is a plain one (.png, .mp4, .safetensors), else ''."""
    suffix = PurePosixPath(urlsplit(url).path).suffix
    return suffix.lower() if _SUFFIX.match(suffix) else ""


def _same_content(a: Path, b: Path) -> bool:
    if a.stat().st_size != b.stat().st_size:
        return False
    with a.open("rb") as first, b.open("rb") as second:
        while chunk := first.read(CHUNK_BYTES):
            if chunk != second.read(len(chunk)):
                return False
    return True


def _write_atomically(path: Path, text: str) -> None:
    partial = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
    partial.write_text(text)
    os.replace(partial, path)


@lru_cache(maxsize=8)
def fetcher_for(config: WorkerConfig) -> InputFetcher:
    """One fetcher (with its HTTP and S3 connection pools) per distinct configuration, kept across tasks."""
    return InputFetcher(config.input_cache_dir, max_bytes=config.max_input_bytes,
                        connect_timeout_seconds=config.input_connect_timeout_seconds,
                        read_timeout_seconds=config.input_read_timeout_seconds, attempts=config.input_fetch_attempts,
                        local_roots=config.local_input_roots, download_seconds=config.input_download_seconds,
                        max_cached_bytes=None if config.cache_max_gb is None else int(config.cache_max_gb * 1024**3),
                        url_hosts=config.input_url_host_list)
