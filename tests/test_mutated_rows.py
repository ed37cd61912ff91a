"""Bad input, generated: realistic rows (the Reigh app's travel payloads, the headless worker's segment
rows, generation rows in each dialect) with one to three values replaced by arbitrary JSON, or deleted.
Reading such a row either succeeds or fails with a task error naming a field: never a TypeError or
KeyError from deep inside, which the worker could only retry as unexpected and report in its own words."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wan_engine.errors import EngineError
from wan_engine.schema import DEFAULT_LIMITS
from worker.errors import TaskError, ValidationError
from worker.generation import read_generation
from worker.resources import WorkerResources
from worker.travel.plan import read_travel
from worker.video import VideoWriter
from test_row_forms_2026 import PHASE_CONFIG, headless_segment_row, individual_row, travel_row
from worker_harness import resources, write_keyframes  # noqa: F401 (fixture)

# Strings a backend plausibly writes where a number, a size, a path or a name is expected.
ODD_TEXT = ["", " ", "32x32", "0x0", "-16x16", "1e9x9", "[1, 2]", "{}", "null", "true", "2.5", "-3", "9",
            "tiny_vace_2_2", "vace", "i2v", "none", "/etc/passwd", "../up.png", "http://127.0.0.1:9/x.png", "\x00", "é"]
SCALARS = (st.none() | st.booleans() | st.integers(-2**63, 2**64) | st.floats(allow_nan=False, allow_infinity=False)
           | st.sampled_from(ODD_TEXT) | st.text(max_size=6))
KEYS = st.sampled_from(["url", "path", "strength", "multiplier", "strategy", "kind", "phase", "loras", "name", "x"])
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=3),
                    max_leaves=6)


def paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path inside a JSON value, parents before their children."""
    found = [prefix] if prefix else []
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, inner in items:
        found += paths(inner, prefix + (key,))
    return found


def mutated(data: st.DataObject, row: dict[str, Any]) -> dict[str, Any]:
    """`row` with 1-3 values replaced by arbitrary JSON or deleted (a deletion only inside an object)."""
    row = copy.deepcopy(row)
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        path = data.draw(st.sampled_from(paths(row)), label="path")
        parent = row
        for key in path[:-1]:
            parent = parent[key]
        if isinstance(parent, dict) and data.draw(st.booleans(), label="delete"):
            del parent[path[-1]]
        else:
            parent[path[-1]] = data.draw(JSON, label="value")
    return row


def assert_reads_or_names_a_field(read: Any) -> None:
    try:
        read()
    except ValidationError as error:
        assert error.field, error
    except (TaskError, EngineError):
        pass


FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    return write_keyframes(tmp_path_factory.mktemp("keys"), 3, size=(40, 36))


@pytest.fixture(scope="module")
def travel_rows(images: list[str]) -> dict[str, tuple[dict[str, Any], bool]]:
    """(row, read as an independent segment) for each travel dialect."""
    app = travel_row(images)
    details = app["orchestrator_details"]
    return {"app journey": (app, False),
            "app i2v journey": (travel_row(images, model_type="i2v", model_name="tiny_i2v_2_2",
                                           continuation_config={"strategy": "none"}, independent_segments=True), False),
            "app individual segment": (individual_row(images, 0), True),
            "headless segment": (headless_segment_row(details, 1, "orchestrator-1"), True)}


@pytest.mark.parametrize("form", ["app journey", "app i2v journey", "app individual segment", "headless segment"])
@FUZZ
@given(data=st.data())
def test_a_mutated_travel_row_plans_or_fails_naming_a_field(travel_rows: dict, form: str, data: st.DataObject) -> None:
    row, independent = travel_rows[form]
    changed = mutated(data, row)
    assert_reads_or_names_a_field(lambda: read_travel(changed, independent=independent))


@pytest.fixture(scope="module")
def generation_rows(images: list[str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    guide = tmp_path_factory.mktemp("guide") / "guide.mp4"
    with VideoWriter(guide, 16, 32, 32) as writer:
        writer.write(np.full((5, 32, 32, 3), 90, np.uint8))
    size = {"resolution": "32x32", "video_length": 5, "num_inference_steps": 2, "seed": 3}
    return {
        "vace": {"model": "tiny_vace_2_2", "prompt": "a walk", "video_guide": str(guide), "image_refs": [images[0]],
                 "phase_config": copy.deepcopy(PHASE_CONFIG), "additional_loras": {}, **size},
        "i2v": {"model_name": "tiny_i2v_2_2", "prompt": "a walk", "image_start": images[0], "image_end": images[1],
                "lora_names": [], "lora_multipliers": [], "guidance_scale": 1, "guidance2_scale": 1, **size},
        "generation task": {"model": "tiny_vace", "prompt": "a walk",
                            "parameters": {"loras": [{"path": "tiny_peft", "strength": 0.5}], **size}},
    }


def read_row(params: dict[str, Any], resources: WorkerResources, output_dir: Path) -> Any:
    return read_generation(params, resources=resources, limits=DEFAULT_LIMITS, output_dir=output_dir,
                           log=structlog.get_logger(), default_model="tiny_vace", install_loras=lambda names: None)


def test_the_rows_before_mutation_read_cleanly(travel_rows: dict, generation_rows: dict, resources: WorkerResources,
                                               tmp_path: Path) -> None:
    for row, independent in travel_rows.values():
        plan, _ = read_travel(row, independent=independent)
        assert plan.segments
    for row in generation_rows.values():
        assert read_row(row, resources, tmp_path).ignored == {}


@pytest.mark.parametrize("form", ["vace", "i2v", "generation task"])
@FUZZ
@given(data=st.data())
def test_a_mutated_generation_row_reads_or_fails_naming_a_field(generation_rows: dict, resources: WorkerResources,
                                                                tmp_path: Path, form: str, data: st.DataObject) -> None:
    changed = mutated(data, generation_rows[form])
    assert_reads_or_names_a_field(lambda: read_row(changed, resources, tmp_path))
