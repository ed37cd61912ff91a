"""Outputs: where a task's artifacts (videos, thumbnails) end up once the handler has written them.

Without `--storage-url` they stay in `<output-dir>/<task id>/` and their paths are the locations. With
`--storage-url s3://bucket/prefix` each is uploaded to `<prefix>/<task id>/<file name>` (the client's
transfer manager switches to multipart above MULTIPART_THRESHOLD_BYTES), its size is confirmed with a
HEAD, and the local copy is removed unless `--keep-local`. The key depends only on the task and the
file, so a retried task overwrites the same object; S3 makes an object visible only once its upload
completed, so a worker killed mid-upload leaves no partial object behind, and the retry uploads it whole.
"""
from __future__ import annotations

import mimetypes
from collections.abc import Mapping
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import quote

from worker.config import WorkerConfig
from worker.errors import TransientError
from worker.s3 import S3Location, parse_s3_url, s3_client

MULTIPART_THRESHOLD_BYTES = 16 * 1024**2
MULTIPART_CHUNK_BYTES = 16 * 1024**2
UPLOAD_ATTEMPTS = 5  # botocore's own retries per request (the poller retries the task on top)


class OutputStorage:
    """Publishes artifacts: to S3 when `storage_url` is set, else leaves them where they are."""

    def __init__(self, storage_url: str | None = None, *, public_url: str | None = None,
                 presign_seconds: int | None = None, keep_local: bool = False,
                 connect_timeout_seconds: float = 10.0, read_timeout_seconds: float = 60.0,
                 multipart_threshold_bytes: int = MULTIPART_THRESHOLD_BYTES,
                 multipart_chunk_bytes: int = MULTIPART_CHUNK_BYTES):
        self.prefix: S3Location | None = parse_s3_url(storage_url) if storage_url else None
        self.public_url = public_url.rstrip("/") if public_url else None
        self.presign_seconds = presign_seconds
        self.keep_local = keep_local
        self.connect_timeout_seconds = connect_timeout_seconds
        self.read_timeout_seconds = read_timeout_seconds
        self.multipart_threshold_bytes = multipart_threshold_bytes
        self.multipart_chunk_bytes = multipart_chunk_bytes

    @property
    def uploads(self) -> bool:
        return self.prefix is not None

    def publish(self, task_id: str, artifacts: Mapping[str, Path]) -> dict[str, str]:
        """Result fields for `artifacts` (result_data name -> local file, e.g. {"output": mp4,
        "thumbnail": png}): `<name>` is where it now lives (the local path, else the public URL or the
        s3:// URL); with storage also `<name>_object_url` (s3://) and, with presign_seconds,
        `<name>_presigned_url`. Local copies go only after every upload is confirmed."""
        if self.prefix is None:
            return {name: str(path) for name, path in artifacts.items()}
        fields: dict[str, str] = {}
        for name, path in artifacts.items():
            relative = f"{task_id}/{Path(path).name}"
            target = self.prefix.child(relative)
            self._upload(Path(path), target)
            fields[name] = f"{self.public_url}/{quote(relative)}" if self.public_url else target.url
            fields[f"{name}_object_url"] = target.url
            if self.presign_seconds:
                fields[f"{name}_presigned_url"] = self._client.generate_presigned_url(
                    "get_object", Params={"Bucket": target.bucket, "Key": target.key}, ExpiresIn=self.presign_seconds)
        if not self.keep_local:
            for path in artifacts.values():
                Path(path).unlink(missing_ok=True)
            for folder in {Path(path).parent for path in artifacts.values()}:
                try:
                    folder.rmdir()  # the task's folder, once nothing else is in it
                except OSError:
                    pass
        return fields

    @cached_property
    def _client(self) -> Any:
        return s3_client(connect_timeout_seconds=self.connect_timeout_seconds,
                         read_timeout_seconds=self.read_timeout_seconds, max_attempts=UPLOAD_ATTEMPTS)

    def _upload(self, path: Path, target: S3Location) -> None:
        """Upload `path` as one whole object (single PUT or multipart) and confirm its size."""
        from boto3.s3.transfer import TransferConfig
        from botocore.exceptions import BotoCoreError, ClientError
        from boto3.exceptions import S3UploadFailedError

        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        transfer = TransferConfig(multipart_threshold=self.multipart_threshold_bytes,
                                  multipart_chunksize=self.multipart_chunk_bytes)
        try:
            size = path.stat().st_size
            self._client.upload_file(str(path), target.bucket, target.key,
                                     ExtraArgs={"ContentType": content_type}, Config=transfer)
            stored = self._client.head_object(Bucket=target.bucket, Key=target.key)["ContentLength"]
        except (BotoCoreError, ClientError, S3UploadFailedError) as error:
            raise TransientError(f"upload of {path.name} to {target.url} failed: {type(error).__name__}: {error}") from None
        if stored != size:
            raise TransientError(f"upload of {path.name} to {target.url}: stored {stored} bytes of {size}")


@lru_cache(maxsize=8)
def storage_for(config: WorkerConfig) -> OutputStorage:
    """One OutputStorage (and S3 connection pool) per worker configuration, kept across tasks."""
    return OutputStorage(config.storage_url, public_url=config.storage_public_url,
                         presign_seconds=config.storage_presign_seconds, keep_local=config.keep_local,
                         connect_timeout_seconds=config.input_connect_timeout_seconds,
                         read_timeout_seconds=config.input_read_timeout_seconds)
