"""Reading task params: one place that turns JSON values into typed values, or into a
ValidationError that names the field and the rule, so every handler rejects bad input the same way.

Backends written in other languages send loosely typed JSON (numbers as strings, integral floats),
so readers accept the unambiguous spellings of a value and reject everything else.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from worker.errors import ValidationError
from worker.inputs import fetch_input, is_url

RESOLUTION_MULTIPLE = 16  # VAE stride 8 x DiT patch 2
MAX_SIDE_PIXELS = 4096
MAX_VIDEO_FRAMES = 1025

# Defaults and bounds every generation task shares (generate_video and travel jobs alike).
DEFAULT_RESOLUTION = "832x480"
DEFAULT_FPS = 16
MAX_FPS = 120
DEFAULT_SEED = 12345  # headless Wan2GP's default seed_base; -1 asks for a random seed instead
RANDOM_SEED = -1
MAX_SEED = 2**32 - 1  # seeds of all segments (seed + index) must fit numpy / torch generators

_Number = TypeVar("_Number", int, float)


class _Required:
    """Marker default: the field must be present."""

    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip() == "")


class ParamReader:
    """Typed, validated access to one task's params.

    Each reader returns the default when the field is absent (None or an empty string counts as
    absent) and raises ValidationError(field, rule) when it is required or malformed.
    """

    def __init__(self, params: Mapping[str, Any]):
        if not isinstance(params, Mapping):
            raise ValidationError("params", "must be a JSON object")
        self.params = params

    def has(self, field: str) -> bool:
        return not _is_missing(self.params.get(field))

    def _read(self, field: str, default: Any, convert: Callable[[Any, str], Any]) -> Any:
        """`convert(value, field)` of a present field; the default (or "is required") of an absent one."""
        value = self.params.get(field)
        if _is_missing(value):
            if default is REQUIRED:
                raise ValidationError(field, "is required")
            return default
        return convert(value, field)

    def text(self, field: str, default: Any = REQUIRED) -> Any:
        return self._read(field, default, to_text)

    def integer(self, field: str, default: Any = REQUIRED, *, minimum: int | None = None,
                maximum: int | None = None) -> Any:
        return self._read(field, default, lambda value, name: _in_range(to_int(value, name), name, minimum, maximum))

    def number(self, field: str, default: Any = REQUIRED, *, minimum: float | None = None,
               maximum: float | None = None) -> Any:
        return self._read(field, default, lambda value, name: _in_range(to_float(value, name), name, minimum, maximum))

    def texts(self, field: str, default: Any = REQUIRED) -> Any:
        return self._read(field, default, to_texts)

    def resolution(self, field: str = "resolution", default: Any = REQUIRED) -> Any:
        return self._read(field, default, parse_resolution)

    def input_file(self, field: str, default: Any = REQUIRED) -> Any:
        return self._read(field, default, existing_file)

    def input_files(self, field: str, default: Any = REQUIRED) -> Any:
        return self._read(field, default, existing_files)


def to_text(value: Any, field: str) -> str:
    """A string, as given (no number or list is turned into one)."""
    if not isinstance(value, str):
        raise ValidationError(field, f"must be a string, got {type(value).__name__}")
    return value


def to_texts(value: Any, field: str) -> list[str]:
    """A list of strings; a single string is a list of one."""
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValidationError(field, "must be a list of strings")
    return list(value)


def to_int(value: Any, field: str) -> int:
    """An int from an int, an integral float or a decimal string; never from a bool."""
    if isinstance(value, bool):
        raise ValidationError(field, "must be an integer, got a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise ValidationError(field, f"must be an integer, got {value!r}")


def to_float(value: Any, field: str) -> float:
    """A finite float from a number or a numeric string; never from a bool."""
    if isinstance(value, bool):
        raise ValidationError(field, "must be a number, got a boolean")
    number: float | None = None
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            number = None
    if number is None or not math.isfinite(number):
        raise ValidationError(field, f"must be a finite number, got {value!r}")
    return number


def _in_range(number: _Number, field: str, minimum: float | None, maximum: float | None) -> _Number:
    """`number` itself, once it is within [minimum, maximum] (either bound may be None)."""
    if minimum is not None and number < minimum:
        raise ValidationError(field, f"must be >= {minimum}, got {number}")
    if maximum is not None and number > maximum:
        raise ValidationError(field, f"must be <= {maximum}, got {number}")
    return number


def parse_resolution(value: Any, field: str = "resolution") -> tuple[int, int]:
    """(width, height) from "WxH" or [W, H]; both sides multiples of 16 within [16, 4096].

    The one resolution rule for every task type: generate's `resolution`, a travel plan's
    `resolution` and headless rows' `parsed_resolution_wh` (a string or a [W, H] pair). `field` is
    the name the user wrote, so the error points at it.
    """
    width, height = split_resolution(value, field)
    for side in (width, height):
        if side % RESOLUTION_MULTIPLE or not RESOLUTION_MULTIPLE <= side <= MAX_SIDE_PIXELS:
            raise ValidationError(
                field, f"width and height must be multiples of {RESOLUTION_MULTIPLE} between "
                f"{RESOLUTION_MULTIPLE} and {MAX_SIDE_PIXELS}, got {width}x{height}")
    return width, height


def split_resolution(value: Any, field: str = "resolution") -> tuple[int, int]:
    """(width, height) integers from "WxH" (any case, spaces allowed) or [W, H], before any size rule."""
    if isinstance(value, str):
        parts = value.lower().replace(" ", "").split("x")
    elif isinstance(value, (list, tuple)):
        parts = list(value)
    else:
        parts = []
    if len(parts) != 2:
        raise ValidationError(field, f"must be 'WIDTHxHEIGHT' like '832x480', got {value!r}")
    try:
        width, height = (to_int(part, field) for part in parts)
    except ValidationError:
        raise ValidationError(field, f"must be 'WIDTHxHEIGHT' like '832x480', got {value!r}") from None
    return width, height


def round_to_frame_count(frames: int, field: str) -> int:
    """Largest 4n+1 <= frames (what the Wan VAE's 4x temporal compression needs)."""
    if not 1 <= frames <= MAX_VIDEO_FRAMES:
        raise ValidationError(field, f"must be between 1 and {MAX_VIDEO_FRAMES} frames, got {frames}")
    return (frames - 1) // 4 * 4 + 1


def local_path(value: Any, field: str) -> Path:
    """Where a path field's file is on this box: the path as given (not checked, and `~` not expanded:
    the worker's home is not the backend's), or for an http(s):// or s3:// URL the local copy its
    content was fetched into (worker.inputs), so every path field of every task type also takes a URL."""
    if not isinstance(value, str) or not value or "\x00" in value:
        raise ValidationError(field, f"must be a file path or URL, got {value!r}")
    return fetch_input(value, field) if is_url(value) else Path(value)


def existing_file(value: Any, field: str) -> Path:
    """An absolute or working-directory-relative path to a regular file that exists, or a URL (local_path)."""
    path = local_path(value, field)
    if not path.is_file():
        if path.exists():
            raise ValidationError(field, f"not a regular file ({path_kind(path)}): {value}")
        raise ValidationError(field, f"file does not exist: {value}")
    return path


def path_kind(path: Path) -> str:
    """What a path that is not a regular file is, in words."""
    if path.is_dir():
        return "a directory"
    if path.is_fifo():
        return "a fifo"
    if path.is_socket():
        return "a socket"
    if path.is_block_device() or path.is_char_device():
        return "a device"
    return "not a regular file"


def existing_files(value: Any, field: str) -> list[Path]:
    """One path (or URL) or a list of them, each to an existing regular file (errors name the entry)."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list):
        raise ValidationError(field, "must be a path or URL, or a list of them")
    return [existing_file(item, f"{field}[{index}]") for index, item in enumerate(items)]
