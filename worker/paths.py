"""Where outputs go: every file a task writes lies in <output_dir>/<task_id>/, and nothing a task's
params say (a file name, "..", an absolute path, a symlink planted in the folder) can make the worker
write anywhere else.
"""
from __future__ import annotations

import re
from pathlib import Path

from worker.errors import ValidationError

_SAFE_COMPONENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def task_output_dir(output_root: str | Path, task_id: str) -> Path:
    """<output_root>/<task_id>, created if needed. task_id must be one plain path component."""
    if not _SAFE_COMPONENT.match(task_id) or ".." in task_id:
        raise ValidationError("task_id", f"cannot name an output folder: {task_id!r}")
    root = Path(output_root).resolve()
    folder = root / task_id
    folder.mkdir(parents=True, exist_ok=True)
    if folder.resolve() != folder:
        raise ValidationError("task_id", f"output folder {folder} is a link leading out of {root}")
    return folder


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
