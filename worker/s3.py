"""S3 addresses and the S3 client the worker uses for inputs and outputs.

Credentials, region and endpoint come from boto3's standard sources (AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ENDPOINT_URL, ~/.aws, instance roles), so AWS S3, R2, MinIO,
Supabase storage and GCS interop all work without a worker setting of their own.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

S3_SCHEME = "s3"

_client_lock = threading.Lock()  # boto3 sessions are not thread-safe; the clients they make are


@dataclass(frozen=True)
class S3Location:
    """An object (or a prefix) in a bucket: s3://bucket/key."""

    bucket: str
    key: str

    @property
    def url(self) -> str:
        return f"{S3_SCHEME}://{self.bucket}/{self.key}"

    def child(self, *parts: str) -> S3Location:
        """This prefix joined with `parts` by '/', without doubled slashes."""
        key = "/".join(part.strip("/") for part in (self.key, *parts) if part.strip("/"))
        return S3Location(self.bucket, key)


def parse_s3_url(url: str) -> S3Location:
    """s3://bucket/key -> S3Location; ValueError for anything else (no bucket, another scheme)."""
    parts = urlsplit(url)
    if parts.scheme != S3_SCHEME or not parts.netloc:
        raise ValueError(f"not an s3://bucket/key URL: {url!r}")
    return S3Location(parts.netloc, parts.path.lstrip("/"))


def s3_client(*, connect_timeout_seconds: float, read_timeout_seconds: float, max_attempts: int) -> Any:
    """A boto3 S3 client. `max_attempts` is botocore's own retry count (1: the caller retries)."""
    import boto3
    from botocore.config import Config

    config = Config(connect_timeout=connect_timeout_seconds, read_timeout=read_timeout_seconds,
                    retries={"mode": "standard", "total_max_attempts": max_attempts},
                    signature_version="s3v4")
    with _client_lock:
        return boto3.session.Session().client("s3", config=config)


def error_code(error: Exception) -> str:
    """The S3 error code of a botocore ClientError ("NoSuchKey", "404", "AccessDenied"...), else ""."""
    response = getattr(error, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def http_status(error: Exception) -> int | None:
    """The HTTP status of a botocore ClientError, if it carries one."""
    response = getattr(error, "response", None) or {}
    return response.get("ResponseMetadata", {}).get("HTTPStatusCode")
