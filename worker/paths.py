"""Where outputs go: every file a task writes lies in <output_dir>/<task_id>/, and nothing a row says
(an id that is not a UUID, a file name, "..", an absolute path, a symlink planted in the folder) can
make the worker write anywhere else.

Task folders and files are created without following links: the folder is made with mkdir and
checked with lstat through a handle on the output root; a file is created under a temporary name
with O_CREAT | O_EXCL | O_NOFOLLOW (a link planted at that name is removed, never written through)
and renamed over its final name, so a link at the final name is replaced, not followed.
"""
from __future__ import annotations

import os
import re
import stat
import uuid
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import BinaryIO, Iterator

from worker.db import parse_uuid
from worker.errors import StorageError, ValidationError

_SAFE_COMPONENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


def task_output_dir(output_root: str | Path, task_id: str) -> Path:
    """<output_root>/<task_id>, created if needed: the one function that names a task's folder.
    task_id must be a canonical UUID (lower-case, hyphenated), and the folder a real directory: a
    link planted at that name fails the task instead of redirecting its writes."""
    if not isinstance(task_id, str) or parse_uuid(task_id) != task_id:
        raise ValidationError("id", f"a task id must be a lower-case hyphenated UUID to name an output folder, "
                                    f"got {str(task_id)[:80]!r}")
    root = Path(output_root).resolve()  # the operator's folder: a link there is the operator's choice
    try:
        root.mkdir(parents=True, exist_ok=True)
        root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            try:
                os.mkdir(task_id, 0o755, dir_fd=root_fd)
            except FileExistsError:
                pass
            mode = os.stat(task_id, dir_fd=root_fd, follow_symlinks=False).st_mode
        finally:
            os.close(root_fd)
    except OSError as error:
        raise StorageError(f"cannot create the output folder {root / task_id}: {error.strerror or error}") from None
    if not stat.S_ISDIR(mode):
        kind = "a link" if stat.S_ISLNK(mode) else "not a folder"
        raise ValidationError("id", f"{root / task_id} is {kind}; refusing to write through it")
    return root / task_id


def output_file(task_dir: str | Path, name: str, field: str = "output_filename") -> Path:
    """task_dir/name for a bare file name (no folders, no "..", not hidden), refusing a name that
    already exists as a link, so a write can only land inside task_dir."""
    if not isinstance(name, str) or not _SAFE_COMPONENT.match(name) or ".." in name:
        raise ValidationError(field, f"must be a plain file name (letters, digits, '.', '_', '-'), got {name!r}")
    folder = Path(task_dir).resolve()
    path = folder / name
    if path.is_symlink() or path.resolve().parent != folder:
        raise ValidationError(field, f"{name!r} would be written outside {folder}")
    return path


def create_new_file(path: str | Path) -> int:
    """A write descriptor on a file just created at `path` (O_EXCL | O_NOFOLLOW). Whatever held the
    name before (an old file, a planted link) is unlinked first, never followed. Failures of the
    storage itself (read-only, full, missing folder) raise StorageError."""
    path = Path(path)
    try:
        folder_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            try:
                os.unlink(path.name, dir_fd=folder_fd)
            except FileNotFoundError:
                pass
            return os.open(path.name, _NEW_FILE_FLAGS, 0o644, dir_fd=folder_fd)
        finally:
            os.close(folder_fd)
    except IsADirectoryError:
        raise ValidationError("output_filename", f"{path} is a folder") from None
    except OSError as error:
        raise StorageError(f"cannot create {path}: {error.strerror or error}") from None


def replace_file(source: str | Path, target: str | Path) -> None:
    """Rename `source` over `target` in the same folder (a link at `target` is replaced, not followed)."""
    source, target = Path(source), Path(target)
    try:
        folder_fd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.replace(source.name, target.name, src_dir_fd=folder_fd, dst_dir_fd=folder_fd)
        finally:
            os.close(folder_fd)
    except OSError as error:
        raise StorageError(f"cannot write {target}: {error.strerror or error}") from None


@contextmanager
def writing_new_file(path: str | Path) -> Iterator[BinaryIO]:
    """A binary file to fill; it appears at `path` (atomically) only when the block succeeds. An
    OSError while writing (a full disk) is a StorageError."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.partial")
    descriptor = create_new_file(temporary)
    try:
        with os.fdopen(descriptor, "wb") as file:
            yield file
        replace_file(temporary, path)
    except BaseException as error:
        with suppress(OSError):
            temporary.unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise StorageError(f"cannot write {path}: {error.strerror or error}") from None
        raise


def check_writable(output_root: str | Path) -> StorageError | None:
    """Why nothing can be written under output_root (created if needed), or None: a worker checks it
    before its first claim instead of failing every task after its generation."""
    root = Path(output_root)
    probe = root / f".wan-worker-probe-{uuid.uuid4().hex[:8]}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        os.close(create_new_file(probe))
        probe.unlink()
    except OSError as error:
        return StorageError(f"cannot write to the output folder {root}: {error.strerror or error}")
    except StorageError as error:
        return error
    return None


MIN_FREE_BYTES = 1024**2  # below this, a failed write is blamed on a full file system


def storage_problem(folder: str | Path) -> str | None:
    """Why the file system of `folder` cannot take a write (read-only, full), or None: to tell a
    failure of the storage from a failure of the task when a writer (ffmpeg) does not say which."""
    try:
        info = os.statvfs(folder)
    except OSError as error:
        return error.strerror or str(error)
    if info.f_flag & os.ST_RDONLY:
        return "read-only file system"
    free = info.f_bavail * info.f_frsize
    if free < MIN_FREE_BYTES:
        return f"no space left ({free} bytes free)"
    return None
