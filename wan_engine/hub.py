"""Where weight files come from (a Hugging Face hub repo, path and revision) and fetching them into a
models folder under the exact name the registry looks up.

A source is written as a resolve URL, `https://huggingface.co/<owner>/<repo>/resolve/<revision>/<path>`,
the form Wan2GP's definitions use. The host part only says "the hub": downloads go to `HF_ENDPOINT`
when it is set (a mirror, or a local server in tests), with `HF_TOKEN` for private or gated repos,
both read when a download starts.

Fetching (`fetch`) is safe to run from several processes at once and to interrupt:
- a lock file per target name makes a second process wait for the first, then find the file present;
- the file is fetched with huggingface_hub's metadata and HTTP functions (the HEAD a download needs,
  then a streamed GET) into a staging folder inside the models folder
  (`.download/<owner>/<repo>/<revision>/`); the partial file is named after the content's ETag, so
  a transfer cut mid-file, in this run or a killed earlier one, resumes with a Range request;
- only a complete file, its size (and sha256, when the ETag is one) checked, is renamed to its final
  name (same filesystem: atomic);
- transient failures (5xx, timeouts, dropped connections) are retried with backoff; a missing repo,
  revision or file (404), or a refused token (401/403) fails at once.
This module does not import torch.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from wan_engine.errors import EngineError, LoadError

if TYPE_CHECKING:
    from wan_engine.registry import NeededFile

HUB_HOST = "https://huggingface.co"
STAGING_FOLDER = ".download"  # inside the models folder, so the final rename never crosses filesystems
LOCKS_FOLDER = "locks"
ATTEMPTS = 4  # per file, for transient failures, waiting 1, 2, 4 s between them
RETRY_FIRST_WAIT_SECONDS = 1.0
RETRY_MAX_WAIT_SECONDS = 4.0

INDEX_SUFFIX = ".index.json"  # a sharded checkpoint: the index names its shards, which sit beside it
_RESOLVE_URL = re.compile(r"^https?://[^/]+/(?P<repo>[^/]+/[^/]+)/resolve/(?P<revision>[^/]+)/(?P<path>.+)$")
_PERMANENT_STATUS = (400, 401, 403, 404, 410)
_SHA256 = re.compile(r"[0-9a-f]{64}")
PARTIAL_SUFFIX = ".partial"


@dataclass(frozen=True)
class HubFile:
    """One file in a hub repo; `revision` is a branch, tag or commit (a commit pins the content)."""

    repo: str
    path: str
    revision: str = "main"

    @property
    def url(self) -> str:
        """The resolve URL on the public hub (what definitions and messages show)."""
        return f"{HUB_HOST}/{self.repo}/resolve/{self.revision}/{self.path}"

    @property
    def file_name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    def sibling(self, file_name: str) -> HubFile:
        """Another file in the same repo folder (the tokenizer beside its text encoder)."""
        folder = self.path.rsplit("/", 1)[0] + "/" if "/" in self.path else ""
        return HubFile(self.repo, folder + file_name, self.revision)


def parse_hub_url(url: str) -> HubFile | None:
    """The HubFile of a resolve URL; None for anything else (a plain file name has no source)."""
    match = _RESOLVE_URL.match(url.split("?", 1)[0])
    if match is None:
        return None
    return HubFile(match["repo"], match["path"], match["revision"])


def is_index(path: str | Path) -> bool:
    return str(path).endswith(INDEX_SUFFIX)


def shard_names(index: str | Path) -> list[str]:
    """The shard files a `*.safetensors.index.json` names, relative to its folder, in order."""
    try:
        weight_map = json.loads(Path(index).read_text())["weight_map"]
        return sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise LoadError(f"{index} is not a sharded-checkpoint index (a JSON object with a weight_map): {error}") from None


class DownloadError(EngineError):
    """A file could not be fetched. `permanent`: retrying cannot help (missing file, refused token)."""

    def __init__(self, message: str, *, permanent: bool):
        super().__init__(message)
        self.permanent = permanent


@dataclass(frozen=True)
class Fetched:
    """What fetch did for one file: `downloaded` False means it was already present."""

    path: Path
    size: int
    downloaded: bool
    seconds: float


def fetch(
    source: HubFile,
    models_dir: str | Path,
    name: str,
    *,
    show_progress: bool = False,
    attempts: int = ATTEMPTS,
    on_retry: Callable[[int, BaseException], None] | None = None,
) -> Fetched:
    """Make `models_dir/name` the file `source` names, downloading it unless it is already there.

    Raises DownloadError (with `permanent` set for failures a retry cannot fix).
    """
    from filelock import FileLock

    models_dir = Path(models_dir)
    target = models_dir / name
    started = time.monotonic()
    if target.is_file():
        return Fetched(target, target.stat().st_size, False, 0.0)
    locks = models_dir / STAGING_FOLDER / LOCKS_FOLDER
    locks.mkdir(parents=True, exist_ok=True)
    with FileLock(str(locks / (name.replace("/", "__") + ".lock"))):
        if target.is_file():  # another process fetched it while this one waited
            return Fetched(target, target.stat().st_size, False, time.monotonic() - started)
        staged = _download_with_retries(source, models_dir, show_progress, attempts, on_retry)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(staged, 0o644)
        os.replace(staged, target)
    return Fetched(target, target.stat().st_size, True, time.monotonic() - started)


def fetch_needed(
    needed: Sequence[NeededFile],
    models_dir: str | Path,
    *,
    on_file: Callable[[dict[str, Any]], None] = lambda event: None,
    show_progress: bool = False,
    stop_on_failure: bool = True,
) -> list[DownloadError]:
    """Fetch every file of `needed` (registry.needed_files) that is not present, each under its
    download name, and the shards of each sharded checkpoint's index. `on_file` gets one event per
    file: {"file", "role", "status": "present" | "downloaded" | "failed", "bytes", "seconds", "source",
    "index", "files", "error"?}. Returns the failures (raises the first one when `stop_on_failure`)."""
    failures: list[DownloadError] = []
    queue = list(needed)
    index = 0
    while index < len(queue):
        file = queue[index]
        index += 1
        event: dict[str, Any] = {"file": file.download_name, "role": file.role, "index": index, "files": len(queue),
                                 "source": file.source.url if file.source else None}  # fmt: skip
        try:
            if file.present is not None:
                path = file.present
                event.update(status="present", bytes=path.stat().st_size, seconds=0.0)
            elif file.source is None:
                raise DownloadError(f"{file.download_name} ({file.role}) is missing and has no source", permanent=True)
            else:
                done = fetch(file.source, models_dir, file.download_name, show_progress=show_progress)
                path = done.path
                event.update(status="downloaded" if done.downloaded else "present", bytes=done.size,
                             seconds=round(done.seconds, 3))  # fmt: skip
            if is_index(path):  # its shards are known now: fetch them next
                listed = {f.download_name for f in queue}
                shards = dataclasses.replace(file, present=path).shards(Path(models_dir))
                queue += [shard for shard in shards if shard.download_name not in listed]
        except (DownloadError, LoadError, OSError) as error:  # OSError: the models folder is not writable, ...
            event.update(status="failed", error=str(error))
            on_file(event)
            failure = error if isinstance(error, DownloadError) else DownloadError(str(error), permanent=True)
            if stop_on_failure:
                raise failure from None
            failures.append(failure)
            continue
        on_file(event)
    return failures


def _download_with_retries(
    source: HubFile,
    models_dir: Path,
    show_progress: bool,
    attempts: int,
    on_retry: Callable[[int, BaseException], None] | None,
) -> Path:
    import tenacity

    def before_sleep(state: tenacity.RetryCallState) -> None:
        if on_retry is not None and state.outcome is not None:
            on_retry(state.attempt_number, state.outcome.exception())

    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(attempts),
        wait=tenacity.wait_exponential(multiplier=RETRY_FIRST_WAIT_SECONDS, max=RETRY_MAX_WAIT_SECONDS),
        retry=tenacity.retry_if_exception(lambda error: not _is_permanent(error)),
        before_sleep=before_sleep,
        reraise=True,
    )
    try:
        return retrying(_download, source, models_dir, show_progress)
    except Exception as error:  # noqa: BLE001 - every failure becomes a DownloadError naming the URL
        permanent = _is_permanent(error)
        tried = "" if permanent else f" (gave up after {attempts} attempts)"
        raise DownloadError(f"cannot download {source.url}{tried}: {_describe(error)}", permanent=permanent) from error


def _download(source: HubFile, models_dir: Path, show_progress: bool) -> Path:
    """Download `source` into the staging folder and return the complete file there.

    The partial file is named after the content's ETag, so a later run (after a killed process, a
    reboot) continues it with a Range request, and a changed file upstream starts afresh. The size
    is checked, and the sha256 too when the ETag is one (the hub's large files).
    """
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers, disable_progress_bars, enable_progress_bars

    (enable_progress_bars if show_progress else disable_progress_bars)()
    endpoint = os.environ.get("HF_ENDPOINT") or None
    token = os.environ.get("HF_TOKEN") or None
    url = hf_hub_url(source.repo, source.path, revision=source.revision, endpoint=endpoint)
    metadata = get_hf_file_metadata(url, token=token, endpoint=endpoint)
    if not metadata.etag or metadata.size is None:
        raise DownloadError(f"{url} answered without an ETag or a size: not a Hugging Face hub endpoint?",
                            permanent=True)  # fmt: skip
    headers = build_hf_headers(token=token)
    if urlsplit(metadata.location).netloc != urlsplit(url).netloc:
        headers.pop("authorization", None)  # a redirect to a CDN gets no token
    staging = models_dir / STAGING_FOLDER / source.repo / source.revision
    partial = staging / f"{source.path}.{metadata.etag[:16]}{PARTIAL_SUFFIX}"
    partial.parent.mkdir(parents=True, exist_ok=True)
    if partial.exists() and partial.stat().st_size > metadata.size:
        partial.unlink()  # not a prefix of this content
    with partial.open("ab") as file:
        if file.tell() < metadata.size:
            http_get(metadata.location, file, resume_size=file.tell(), headers=headers, expected_size=metadata.size,
                     displayed_filename=source.file_name)  # fmt: skip
    if _SHA256.fullmatch(metadata.etag) and _sha256(partial) != metadata.etag:
        partial.unlink()
        raise OSError(f"{source.file_name}: the downloaded content does not match its sha256 {metadata.etag}")
    return partial


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(2**24):
            digest.update(chunk)
    return digest.hexdigest()


def _is_permanent(error: BaseException) -> bool:
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    if isinstance(error, DownloadError):
        return error.permanent
    if isinstance(error, (RepositoryNotFoundError, RevisionNotFoundError)):
        return True
    if isinstance(error, EntryNotFoundError) and isinstance(error, HfHubHTTPError):
        return True
    if isinstance(error, HfHubHTTPError) and error.response is not None:
        return error.response.status_code in _PERMANENT_STATUS
    return False


def _describe(error: BaseException) -> str:
    from huggingface_hub.errors import HfHubHTTPError

    if isinstance(error, HfHubHTTPError) and error.response is not None:
        return f"HTTP {error.response.status_code} ({type(error).__name__})"
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {first_line}" if first_line else type(error).__name__
