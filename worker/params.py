"""Reading task params: one place that turns JSON values into typed values, or into a
ValidationError that names the field and the rule, so every handler rejects bad input the same way.

The generation fields (types, bounds, other names, defaults) are those of wan_engine.schema; this
module adds what only rows have: the key each value came by, the keys a handler never read (reported
as `result_data.ignored_params`), and path checks. Backends written in other languages send loosely
typed JSON (numbers as strings, integral floats), so readers accept the unambiguous spellings of a
value (schema.parse_int / parse_float) and reject everything else.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from wan_engine.errors import InvalidRequest, echo
from wan_engine.schema import (
    DEFAULT,
    FIELDS,
    GENERATE,
    MAX_VIDEO_FRAMES,
    RESOLUTION_MULTIPLE,
    Reading,
    is_absent,
    parse_float,
    parse_int,
    parse_texts,
    read,
)
from wan_engine.schema import parse_resolution as _parse_resolution
from wan_engine.schema import split_resolution
from worker.errors import ValidationError
from worker.inputs import fetch_input, is_url, local_input

_Number = TypeVar("_Number", int, float)


@contextmanager
def validation_errors(prefix: str = "") -> Iterator[None]:
    """Re-raise the engine's InvalidRequest as the worker's ValidationError, the field prefixed with
    where it sits in the row (e.g. "orchestrator_details.")."""
    try:
        yield
    except InvalidRequest as error:
        raise ValidationError(prefix + error.field, error.rule) from None
    except ValidationError as error:
        if not prefix or error.field.startswith(prefix):
            raise
        raise ValidationError(prefix + error.field, error.rule) from None


class _Required:
    """Marker default: the field must be present."""

    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()
SCHEMA_DEFAULT: Any = object()  # marker: the default written in wan_engine.schema


class ParamReader:
    """Typed, validated access to one task's params.

    Each reader returns the default when the field is absent (None or an empty string counts as
    absent) and raises ValidationError(field, rule) when it is required or malformed. Every key read
    (also an absent or defaulted one) is remembered in `used`; `unread()` lists the others.
    `form` picks the schema fields `field()` knows (wan_engine.schema.GENERATE or TRAVEL); `prefix`
    is where the params sit in the row, for error messages.
    """

    def __init__(self, params: Mapping[str, Any], form: str = GENERATE, prefix: str = ""):
        if not isinstance(params, Mapping):
            raise ValidationError(prefix.rstrip(".") or "params", "must be a JSON object")
        self.params = params
        self.form = form
        self.prefix = prefix
        self.used: set[str] = set()
        self._schema: Reading | None = None

    # ---- the schema's fields, by any of their names ----

    @property
    def schema(self) -> Reading:
        """Every schema field of this form the params give (read once; errors name the key used)."""
        if self._schema is None:
            with validation_errors(self.prefix):
                self._schema = read(self.params, self.form)
            self.used |= self._schema.used
        return self._schema

    def given(self, name: str) -> bool:
        return name in self.schema.values

    def field(self, name: str, default: Any = SCHEMA_DEFAULT) -> Any:
        """The typed value of schema field `name`, else `default` (the schema's when not given)."""
        if name in self.schema.values:
            return self.schema.values[name]
        if default is REQUIRED:
            raise ValidationError(self.label(name), "is required")
        return FIELDS[name].default if default is SCHEMA_DEFAULT else default

    def label(self, name: str) -> str:
        """How an error names schema field `name`: the key the row used, with its place in the row."""
        return self.prefix + self.schema.label(name)

    def key(self, name: str) -> str:
        """The key the row used for schema field `name` (the field's own name when absent), with its
        place in the row: for errors about one entry of a list ("segment_frames_expanded[2]")."""
        return self.prefix + self.schema.keys.get(name, name)

    def source(self, name: str) -> str:
        """Where schema field `name`'s value came from, for result_data.parameter_sources."""
        return "task" if self.given(name) else DEFAULT

    # ---- other keys ----

    def has(self, field: str) -> bool:
        return not is_absent(self.params.get(field))

    def _read(self, field: str, default: Any, convert: Callable[[Any, str], Any]) -> Any:
        """`convert(value, field)` of a present field; the default (or "is required") of an absent one."""
        self.used.add(field)
        value = self.params.get(field)
        if is_absent(value):
            if default is REQUIRED:
                raise ValidationError(self.prefix + field, "is required")
            return default
        with validation_errors(self.prefix):
            return convert(value, field)

    def text(self, field: str, default: Any = REQUIRED) -> Any:
        return self._read(field, default, to_text)

    def integer(self, field: str, default: Any = REQUIRED, *, minimum: int | None = None,
                maximum: int | None = None) -> Any:
        return self._read(field, default, lambda value, name: _in_range(to_int(value, name), name, minimum, maximum))

    def number(self, field: str, default: Any = REQUIRED, *, minimum: float | None = None,
               maximum: float | None = None) -> Any:
        return self._read(field, default, lambda value, name: _in_range(to_float(value, name), name, minimum, maximum))

    def flag(self, field: str, default: bool = False) -> bool:
        return self._read(field, default, to_bool)

    def texts(self, field: str, default: Any = REQUIRED) -> Any:
        return self._read(field, default, to_texts)

    def resolution(self, field: str = "resolution", default: Any = REQUIRED) -> Any:
        return self._read(field, default, parse_resolution)

    def input_file(self, field: str, default: Any = REQUIRED) -> Any:
        return self._read(field, default, existing_file)

    def input_files(self, field: str, default: Any = REQUIRED) -> Any:
        return self._read(field, default, existing_files)

    def unread(self) -> list[str]:
        """Keys of the params that no reader asked for, in row order."""
        return [key for key in self.params if key not in self.used]


def to_text(value: Any, field: str) -> str:
    """A string, as given (no number or list is turned into one)."""
    if not isinstance(value, str):
        raise ValidationError(field, f"must be a string, got {type(value).__name__}")
    return value


def to_texts(value: Any, field: str) -> list[str]:
    """A list of strings; a single string is a list of one."""
    with validation_errors():
        return parse_texts(value, field)


def to_bool(value: Any, field: str) -> bool:
    """A JSON boolean, or the strings "true" / "false" some backends write."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ValidationError(field, f"must be true or false, got {echo(value)}")


def to_int(value: Any, field: str) -> int:
    """An int from an int, an integral float or a plain decimal string; never from a bool."""
    with validation_errors():
        return parse_int(value, field)


def to_float(value: Any, field: str) -> float:
    """A finite float from a number or a plain decimal string; never from a bool."""
    with validation_errors():
        return parse_float(value, field)


def _in_range(number: _Number, field: str, minimum: float | None, maximum: float | None) -> _Number:
    """`number` itself, once it is within [minimum, maximum] (either bound may be None)."""
    if minimum is not None and number < minimum:
        raise ValidationError(field, f"must be >= {minimum}, got {number}")
    if maximum is not None and number > maximum:
        raise ValidationError(field, f"must be <= {maximum}, got {number}")
    return number


def parse_resolution(value: Any, field: str = "resolution") -> tuple[int, int]:
    """(width, height) from "WxH" or [W, H]; both sides multiples of 16 within [16, 4096]: the one
    resolution rule (wan_engine.schema) for every task type. `field` is the name the user wrote."""
    with validation_errors():
        return _parse_resolution(value, field)


def snapped_resolution(value: Any, field: str = "resolution") -> tuple[tuple[int, int], tuple[int, int]]:
    """(the size with each side snapped down to a multiple of 16, the size asked), from "WxH" or [W, H]:
    how headless Wan2GP takes the sizes its backends send ("902x508" for 16:9 becomes 896x496)."""
    with validation_errors():
        asked = split_resolution(value, field)
    return _snapped(asked[0], asked[1], field), (asked[0], asked[1])


def headless_size(given: Any, video_size: tuple[int, int], video_field: str) -> tuple[tuple[int, int], str]:
    """(the size a headless row's video edit runs at, where it came from, for parameter_sources): the
    `resolution` it gives snapped down to multiples of 16, else the size of its video (named
    `video_field`) rounded down likewise."""
    if not is_absent(given):
        size, asked = snapped_resolution(given, "resolution")
        return size, "task" if asked == size else f"task ({asked[0]}x{asked[1]} rounded down to multiples of 16)"
    size = _snapped(*video_size, video_field)
    note = "" if size == video_size else f" {video_size[0]}x{video_size[1]} rounded down to multiples of 16"
    return size, f"{video_field} (its size{note})"


def _snapped(width: int, height: int, field: str) -> tuple[int, int]:
    """width x height with each side rounded down to a multiple of 16; under 16 fails naming `field`."""
    snapped = (width // RESOLUTION_MULTIPLE * RESOLUTION_MULTIPLE, height // RESOLUTION_MULTIPLE * RESOLUTION_MULTIPLE)
    if min(snapped) < RESOLUTION_MULTIPLE:
        raise ValidationError(field, f"{width}x{height} is too small to generate at (16x16 at least)")
    return parse_resolution(list(snapped), field)


def round_to_frame_count(frames: int, field: str) -> int:
    """Largest 4n+1 <= frames (what the Wan VAE's 4x temporal compression needs)."""
    if not 1 <= frames <= MAX_VIDEO_FRAMES:
        raise ValidationError(field, f"must be between 1 and {MAX_VIDEO_FRAMES} frames, got {frames}")
    return (frames - 1) // 4 * 4 + 1


def round_up_to_frame_count(frames: int) -> int:
    """The smallest 4n+1 count >= frames (the headless orchestrator's rule for a chained segment's
    frames plus its overlap: reigh-worker travel/orchestrator.py _quantize_frames_up)."""
    return 1 if frames <= 1 else (frames + 2) // 4 * 4 + 1


def local_path(value: Any, field: str) -> Path:
    """Where a path field's file is on this box: the path as given (its existence not checked, `~` not
    expanded: the worker's home is not the backend's; inside --input-dirs when the worker has them), or
    for an http(s):// or s3:// URL the local copy its content was fetched into (worker.inputs), so every
    path field of every task type also takes a URL."""
    if not isinstance(value, str) or not value or "\x00" in value:
        raise ValidationError(field, f"must be a file path or URL, got {value!r}")
    return fetch_input(value, field) if is_url(value) else local_input(value, field)


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
