"""Real servers on 127.0.0.1 for the fleet tests: an S3-compatible server (moto's standalone server,
talked to by boto3 over HTTP exactly as AWS would be), a plain HTTP file server whose routes misbehave
on purpose, and a TCP relay that can hold an upload in flight."""
from __future__ import annotations

import socket
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator

import boto3
import pytest

from conftest import free_port

REGION = "us-east-1"


# ---- S3 -----------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server in a thread for the session: http://127.0.0.1:PORT."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_env(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The standard AWS variables pointing at the local server (for this process and its children)."""
    env = {"AWS_ENDPOINT_URL": s3_endpoint, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
           "AWS_REGION": REGION}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def bucket(s3_env: dict[str, str]) -> str:
    """A fresh, empty bucket."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    s3().create_bucket(Bucket=name)
    return name


def s3() -> Any:
    """A plain boto3 client configured from the environment (what an operator's tools would use)."""
    return boto3.session.Session().client("s3")


def get_object(bucket: str, key: str) -> bytes:
    return s3().get_object(Bucket=bucket, Key=key)["Body"].read()


# ---- HTTP ---------------------------------------------------------------------------------------------

@dataclass
class Route:
    """What the HTTP server answers on one path. `fail_first` answers 500 that many times first;
    `delay_first_seconds` stalls the first answer, `delay_seconds` every answer; `length_header=False`
    sends no Content-Length (the body arrives until the connection closes); `trickle_seconds` sends the
    body 16 bytes at a time, this long apart; `location` is sent as the Location header (a redirect)."""

    body: bytes = b""
    status: int = 200
    content_type: str = "application/octet-stream"
    fail_first: int = 0
    delay_first_seconds: float = 0.0
    delay_seconds: float = 0.0
    length_header: bool = True
    trickle_seconds: float = 0.0
    location: str | None = None


@dataclass
class FileServer:
    """A ThreadingHTTPServer on 127.0.0.1 serving `routes`; `hits` counts GETs per path."""

    routes: dict[str, Route] = field(default_factory=dict)
    hits: Counter = field(default_factory=Counter)
    port: int = 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def serve(self, path: str, body: bytes, **options: Any) -> str:
        self.routes[path.split("?")[0]] = Route(body=body, **options)
        return self.url(path)


@pytest.fixture
def file_server() -> Iterator[FileServer]:
    state = FileServer()
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            route = state.routes.get(self.path.split("?")[0])
            with lock:
                state.hits[self.path] += 1
                count = state.hits[self.path]
            if route is None:
                self._answer(404, b"not found", "text/plain")
                return
            if count == 1 and route.delay_first_seconds:
                time.sleep(route.delay_first_seconds)
            time.sleep(route.delay_seconds)
            if count <= route.fail_first:
                self._answer(500, b"try again", "text/plain")
                return
            self._answer(route.status, route.body, route.content_type, route.length_header, route.trickle_seconds,
                         route.location)

        def _answer(self, status: int, body: bytes, content_type: str, length_header: bool = True,
                    trickle_seconds: float = 0.0, location: str | None = None) -> None:
            try:
                self.send_response(status)
                if location is not None:
                    self.send_header("Location", location)
                self.send_header("Content-Type", content_type)
                if length_header:
                    self.send_header("Content-Length", str(len(body)))
                else:
                    self.send_header("Connection", "close")
                    self.close_connection = True
                self.end_headers()
                pieces = [body[i:i + 16] for i in range(0, len(body), 16)] if trickle_seconds else [body]
                for piece in pieces:
                    self.wfile.write(piece)
                    self.wfile.flush()
                    time.sleep(trickle_seconds)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (a timeout or a size limit): what the test wanted

    class Server(ThreadingHTTPServer):
        def handle_error(self, request: Any, client_address: Any) -> None:
            pass  # a client that hung up mid-answer (timeouts, size limits) is what those tests want

    server = Server(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


def closed_port_url(path: str = "/image.png") -> str:
    """An http URL where nothing listens (connection refused)."""
    return f"http://127.0.0.1:{free_port()}{path}"


# ---- a relay that can hold an upload in flight -----------------------------------------------------------

class HoldingRelay:
    """A TCP relay to `target` (host, port). While `hold_puts` is set, a connection whose request is a PUT
    gets its head and the first bytes of its body through, then nothing more: the upload hangs in flight,
    and `put_held` is set, so a test can kill the uploader at exactly that point."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.hold_puts = threading.Event()
        self.put_held = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, from_client: bool) -> None:
        try:
            while data := source.recv(65536):
                if from_client and self.hold_puts.is_set() and data.startswith(b"PUT "):
                    head_end = data.find(b"\r\n\r\n") + 4
                    sink.sendall(data[:head_end + 64])
                    self.put_held.set()
                    time.sleep(3600)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
