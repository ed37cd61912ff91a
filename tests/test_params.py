"""Task params: typed reads that fail with the field and the rule."""
from __future__ import annotations

from pathlib import Path

import pytest

from worker.errors import ValidationError
from worker.params import ParamReader, parse_resolution, round_to_frame_count


def rejects(params: dict, read, field: str) -> str:
    with pytest.raises(ValidationError) as error:
        read(ParamReader(params))
    assert error.value.field == field
    return error.value.rule


def test_absent_and_empty_values_take_the_default() -> None:
    reader = ParamReader({"seed": None, "prompt": ""})

    assert reader.integer("seed", 7) == 7
    assert reader.text("prompt", "default") == "default"


def test_a_required_field_that_is_missing_names_itself() -> None:
    assert rejects({}, lambda r: r.text("prompt"), "prompt") == "is required"


@pytest.mark.parametrize("value, expected", [(81, 81), (81.0, 81), ("81", 81)])
def test_integers_accept_unambiguous_spellings(value: object, expected: int) -> None:
    assert ParamReader({"n": value}).integer("n") == expected


@pytest.mark.parametrize("value", [True, 8.5, "eight", [8]])
def test_integers_reject_everything_else(value: object) -> None:
    rejects({"n": value}, lambda r: r.integer("n"), "n")


def test_ranges_are_part_of_the_rule() -> None:
    assert ">= 1" in rejects({"steps": 0}, lambda r: r.integer("steps", minimum=1), "steps")


@pytest.mark.parametrize("value", [float("nan"), "inf", False])
def test_numbers_must_be_finite(value: object) -> None:
    rejects({"g": value}, lambda r: r.number("g"), "g")


def test_resolution_reads_text_and_pairs() -> None:
    assert parse_resolution("832x480") == (832, 480)
    assert parse_resolution([96, 64]) == (96, 64)


@pytest.mark.parametrize("value", [" 832 X 480", ["832", "480"], [832.0, 480.0]])
def test_resolution_accepts_the_loose_spellings_of_json_writers(value: object) -> None:
    assert parse_resolution(value) == (832, 480)


@pytest.mark.parametrize("value", ["832x481", "832*480", "x480", "0x0", "8192x480", 832])
def test_resolution_must_be_multiples_of_16_as_wxh(value: object) -> None:
    with pytest.raises(ValidationError) as error:
        parse_resolution(value)
    assert error.value.field == "resolution"


@pytest.mark.parametrize("frames, expected", [(81, 81), (80, 77), (1, 1), (6, 5)])
def test_frame_counts_round_down_to_4n_plus_1(frames: int, expected: int) -> None:
    assert round_to_frame_count(frames, "video_length") == expected


@pytest.mark.parametrize("frames", [0, -4, 100_000])
def test_absurd_frame_counts_are_refused(frames: int) -> None:
    with pytest.raises(ValidationError):
        round_to_frame_count(frames, "video_length")


def test_input_files_must_exist(tmp_path: Path) -> None:
    present = tmp_path / "a.png"
    present.write_bytes(b"x")

    assert ParamReader({"f": str(present)}).input_file("f") == present
    assert "does not exist" in rejects({"f": str(tmp_path / "missing.png")}, lambda r: r.input_file("f"), "f")
    assert rejects({"f": [str(present), str(tmp_path / "b.png")]}, lambda r: r.input_files("f"), "f[1]")


@pytest.mark.parametrize("value", ["1_000", "\uff19", "\u0669", "9" * 60])
def test_every_integer_reader_refuses_what_is_not_a_plain_decimal(value: str) -> None:
    """One spelling rule (wan_engine.schema.parse_int) for the param reader, the schema fields and the
    travel planner: "9" is a number everywhere, "1_000" and other scripts' digits nowhere."""
    rejects({"n": value}, lambda r: r.integer("n"), "n")
    rejects({"steps": value}, lambda r: r.field("num_inference_steps"), "steps (num_inference_steps)")
    assert ParamReader({"n": "9"}).integer("n") == ParamReader({"steps": "9"}).field("num_inference_steps") == 9
