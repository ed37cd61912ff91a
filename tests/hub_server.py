"""A local server speaking the part of the Hugging Face hub protocol that `hf_hub_download` uses, so
tests run the real huggingface_hub client (pointed here by HF_ENDPOINT) against real HTTP.

    HEAD|GET /<owner>/<repo>/resolve/<revision>/<path>

A found file answers with the headers the client requires: `X-Repo-Commit` (the commit the revision
resolves to), `ETag` (the sha256 of the content, as the hub gives for LFS files), `Content-Length`,
and honours `Range: bytes=N-` with 206 (resumed downloads). Not found: 404 with `X-Error-Code`
RepoNotFound / RevisionNotFound / EntryNotFound, as the hub sends. A repo served with a token
answers 401 to requests without `Authorization: Bearer <token>`.

Faults, per served path, for the error and resume paths: `fail(path, status, times, method)` answers
with `status` that many times; `truncate(path, times, stall_seconds)` sends half the body then drops the
connection (after holding it open, so a client can be killed mid-transfer);
`slow(path, seconds, times)` waits that long before answering a GET. Every request is recorded in `requests`.
"""
from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"
RESOLVE = "/resolve/"


@dataclass
class Faults:
    status: int = 0
    status_times: int = 0
    status_method: str | None = None  # None: HEAD and GET
    truncate_times: int = 0
    delay_seconds: float = 0.0
    delay_times: int = 0
    stall_seconds: float = 0.0  # after a truncated half body: hold the connection open this long first


@dataclass(frozen=True)
class Request:
    method: str
    repo: str
    revision: str
    path: str
    range: str | None
    status: int


@dataclass
class HubServer:
    """Serve folders as hub repos: repos[owner/name] = folder (files under their repo paths)."""

    repos: dict[str, Path]
    tokens: dict[str, str] = field(default_factory=dict)  # repo -> token it requires
    requests: list[Request] = field(default_factory=list)
    _faults: dict[str, Faults] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> HubServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def fail(self, path: str, status: int, times: int = 1, method: str | None = None) -> None:
        self._faults.setdefault(path, Faults()).__dict__.update(status=status, status_times=times, status_method=method)

    def truncate(self, path: str, times: int = 1, stall_seconds: float = 0.0) -> None:
        self._faults.setdefault(path, Faults()).__dict__.update(truncate_times=times, stall_seconds=stall_seconds)

    def slow(self, path: str, seconds: float, times: int = 1) -> None:
        self._faults.setdefault(path, Faults()).__dict__.update(delay_seconds=seconds, delay_times=times)

    def downloads(self, path: str) -> int:
        """GET requests for `path` that were answered with content (200 or 206)."""
        return sum(r.method == "GET" and r.path == path and r.status in (200, 206) for r in self.requests)

    def _record(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)

    def _take_fault(self, path: str, method: str) -> tuple[int, bool, float, float]:
        """(status to fail with or 0, truncate this body?, delay, stall after the half body) for one
        request, consuming counts."""
        with self._lock:
            faults = self._faults.get(path)
            if faults is None:
                return 0, False, 0.0, 0.0
            status = 0
            if faults.status_times > 0 and faults.status_method in (None, method):
                faults.status_times -= 1
                status = faults.status
            truncate = False
            if not status and method == "GET" and faults.truncate_times > 0:
                faults.truncate_times -= 1
                truncate = True
            delay = 0.0
            if method == "GET" and faults.delay_times > 0:
                faults.delay_times -= 1
                delay = faults.delay_seconds
            return status, truncate, delay, faults.stall_seconds if truncate else 0.0


def _handler(hub: HubServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
            pass

        def do_HEAD(self) -> None:
            self._serve(body=False)

        def do_GET(self) -> None:
            self._serve(body=True)

        def _serve(self, body: bool) -> None:
            method = "GET" if body else "HEAD"
            repo, _, rest = self.path.split("?", 1)[0].lstrip("/").partition(RESOLVE)
            revision, _, path = rest.partition("/")
            status, truncate, delay, stall = hub._take_fault(path, method)
            if delay:
                time.sleep(delay)
            folder = hub.repos.get(repo)
            if status:
                return self._error(method, repo, revision, path, status, "")
            if folder is None:
                return self._error(method, repo, revision, path, 404, "RepoNotFound")
            token = hub.tokens.get(repo)
            if token is not None and self.headers.get("Authorization") != f"Bearer {token}":
                return self._error(method, repo, revision, path, 401, "RepoNotFound")
            if revision not in ("main", COMMIT):
                return self._error(method, repo, revision, path, 404, "RevisionNotFound")
            file = folder / path
            if not path or ".." in Path(path).parts or not file.is_file():
                return self._error(method, repo, revision, path, 404, "EntryNotFound")
            content = file.read_bytes()
            start = _range_start(self.headers.get("Range"))
            code = 206 if start else 200
            part = content[start:]
            # Recorded before answering, so a client that has its answer always finds it in `requests`.
            hub._record(Request(method, repo, revision, path, self.headers.get("Range"), code))
            self.send_response(code)
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("ETag", f'"{hashlib.sha256(content).hexdigest()}"')
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(len(part)))
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(content) - 1}/{len(content)}")
            self.end_headers()
            if not body:
                return
            if truncate:  # half the body, then (after holding it open `stall` seconds) the connection drops
                self.wfile.write(part[: len(part) // 2])
                self.wfile.flush()
                time.sleep(stall)
                self.close_connection = True
                self.connection.shutdown(2)
                return
            self.wfile.write(part)

        def _error(self, method: str, repo: str, revision: str, path: str, status: int, code: str) -> None:
            message = f"{status} for {repo}/{path}".encode()
            hub._record(Request(method, repo, revision, path, self.headers.get("Range"), status))
            self.send_response(status)
            if code == "EntryNotFound":  # the repo and revision exist: the hub names the commit
                self.send_header("X-Repo-Commit", COMMIT)
            if code:
                self.send_header("X-Error-Code", code)
            self.send_header("Content-Length", str(len(message)))
            self.end_headers()
            if method == "GET":
                self.wfile.write(message)

    return Handler


def _range_start(header: str | None) -> int:
    """The first byte of `Range: bytes=N-` (0 without a range)."""
    if not header or not header.startswith("bytes="):
        return 0
    return int(header[len("bytes="):].split("-", 1)[0] or 0)
