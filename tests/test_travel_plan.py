"""worker.travel.plan: segment math as properties, both param forms, and every bad input."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from PIL import Image

from worker.errors import ValidationError
from worker.travel.plan import (
    DEFAULT_MODEL,
    MAX_SEGMENT_FRAMES,
    MIN_SEGMENT_FRAMES,
    Rounding,
    TravelPlan,
    plan_travel,
)

MAX_IMAGES = 6


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    folder = tmp_path_factory.mktemp("keyframes")
    paths = []
    for i in range(MAX_IMAGES):
        path = folder / f"key{i}.png"
        Image.fromarray(np.full((24, 32, 3), 40 * i, np.uint8)).save(path)
        paths.append(str(path))
    return paths


@pytest.fixture(scope="module")
def not_an_image(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("fake") / "photo.png"
    path.write_text("plain text with a png name")
    return str(path)


def ours(images: Any, **overrides: Any) -> dict[str, Any]:
    """A valid travel_orchestrator params dict in our form: 3 images, 2 segments."""
    params: dict[str, Any] = {
        "images": images,
        "prompts": ["into the forest", "out to the sea"],
        "negative_prompt": "blurry",
        "resolution": "64x48",
        "fps": 16,
        "segment_frames": 17,
        "frame_overlap": 4,
        "seed": 7,
    }
    params.update(overrides)
    return params


@st.composite
def valid_layouts(draw: st.DrawFn) -> tuple[list[int], list[int]]:
    """(requested frames per segment, requested overlap per transition) that are valid after rounding."""
    count = draw(st.integers(min_value=1, max_value=MAX_IMAGES - 1))
    frames = draw(st.lists(st.integers(MIN_SEGMENT_FRAMES, 200), min_size=count, max_size=count))
    rounded = [(n - 1) // 4 * 4 + 1 for n in frames]
    overlaps, head = [], 0
    for i in range(count - 1):
        limit = min(rounded[i] - head - 1, rounded[i + 1] - 1)
        overlap = draw(st.integers(0, limit))
        overlaps.append(overlap)
        head = overlap // 2 * 2
    return frames, overlaps


def plan_of_layout(images: list[str], layout: tuple[list[int], list[int]], **overrides: Any) -> TravelPlan:
    """The plan of a drawn layout over as many images as it needs, one prompt for every segment."""
    frames, overlaps = layout
    chosen = images[: len(frames) + 1]
    return plan_travel(ours(chosen, prompts=["p"], segment_frames=frames, frame_overlap=overlaps, **overrides))


@given(layout=valid_layouts())
def test_segment_frames_are_4n_plus_1_rounded_down_and_every_rounding_is_recorded(
    images: list[str], layout: tuple[list[int], list[int]]
) -> None:
    frames, _ = layout
    plan = plan_of_layout(images, layout)
    recorded = {r.field: r for r in plan.roundings}
    for i, (segment, requested) in enumerate(zip(plan.segments, frames)):
        assert (segment.frames - 1) % 4 == 0
        assert requested - 4 < segment.frames <= requested
        if segment.frames != requested:
            assert recorded[f"segment_frames[{i}]"] == Rounding(
                f"segment_frames[{i}]", requested, segment.frames, "4n+1, rounded down"
            )
        else:
            assert f"segment_frames[{i}]" not in recorded


@given(layout=valid_layouts())
def test_overlaps_are_even_and_shorter_than_both_neighbours(
    images: list[str], layout: tuple[list[int], list[int]]
) -> None:
    _, overlaps = layout
    plan = plan_of_layout(images, layout)
    assert plan.segments[0].overlap == 0
    assert plan.overlaps == [o // 2 * 2 for o in overlaps]
    for i, overlap in enumerate(plan.overlaps):
        assert overlap % 2 == 0 and overlap >= 0
        assert overlap < plan.segments[i].frames and overlap < plan.segments[i + 1].frames
        if overlap != overlaps[i]:
            assert Rounding(f"frame_overlap[{i}]", overlaps[i], overlap, "even, rounded down") in plan.roundings


@given(layout=valid_layouts())
def test_expected_length_is_sum_of_frames_minus_sum_of_overlaps(
    images: list[str], layout: tuple[list[int], list[int]]
) -> None:
    plan = plan_of_layout(images, layout)
    assert plan.expected_frames == sum(s.frames for s in plan.segments) - sum(plan.overlaps)


@given(layout=valid_layouts(), seed=st.integers(0, 2**31))
def test_segments_chain_the_images_and_seeds_count_up(
    images: list[str], layout: tuple[list[int], list[int]], seed: int
) -> None:
    frames, _ = layout
    chosen = images[: len(frames) + 1]
    plan = plan_of_layout(images, layout, seed=seed)
    assert [s.index for s in plan.segments] == list(range(len(frames)))
    assert [(s.start_image, s.end_image) for s in plan.segments] == list(zip(chosen, chosen[1:]))
    assert [s.seed for s in plan.segments] == [seed + i for i in range(len(frames))]


def headless(params: dict[str, Any]) -> dict[str, Any]:
    """The headless Wan2GP / Reigh spelling of a params dict in our form (lists already expanded).
    Headless `segment_frames_expanded` count the frames a segment adds: a chained segment after the
    first generates them plus its overlap (banodoco/Reigh-Worker travel/orchestrator.py,
    `segment_frames_target = base_segment_frames + frame_overlap_from_previous`)."""
    count = len(params["images"]) - 1
    frames = params["segment_frames"]
    frames = frames if isinstance(frames, list) else [frames] * count
    overlap = params["frame_overlap"]
    overlap = overlap if isinstance(overlap, list) else [overlap] * (count - 1)
    details = {
        "input_image_paths_resolved": params["images"],
        "base_prompts_expanded": params["prompts"],
        "negative_prompts_expanded": [params["negative_prompt"]] * count,
        "segment_frames_expanded": [frames[0], *(n - o for n, o in zip(frames[1:], overlap))],
        "frame_overlap_expanded": overlap,
        "parsed_resolution_wh": params["resolution"],
        "fps_helpers": params["fps"],
        "model_name": params["model"],
        "seed_base": params["seed"],
        "num_new_segments_to_generate": count,
        "num_inference_steps": params["num_inference_steps"],
        "lora_names": params["lora_names"],
        "lora_multipliers": params["lora_multipliers"],
        "main_output_dir_for_run": "/ignored/by/us",
    }
    return {"orchestrator_details": details, "task_id": "abc"}


@given(layout=valid_layouts(), seed=st.integers(0, 2**31), fps=st.integers(1, 60))
def test_both_param_forms_normalise_to_the_same_plan(
    images: list[str], layout: tuple[list[int], list[int]], seed: int, fps: int
) -> None:
    """Same segments from both forms (overlaps in multiples of 4 keep headless totals 4n+1); only the
    recorded frame rule and the stitch's fade (the headless one, sharpened by 0.3) differ."""
    frames, overlaps = layout
    frames = [(n - 1) // 4 * 4 + 1 for n in frames]
    overlaps = [o // 4 * 4 for o in overlaps]
    assume(all(n - o >= o for n, o in zip(frames[1:], overlaps)))  # else the headless cap shortens the overlap
    params = ours(
        images[: len(frames) + 1],
        prompts=[f"prompt {i}" for i in range(len(frames))],
        segment_frames=frames,
        frame_overlap=overlaps,
        seed=seed,
        fps=fps,
        model="vace_14B",
        num_inference_steps=6,
        lora_names=["CausVid"],
        lora_multipliers=["1.0;0"],
    )
    ours_plan, headless_plan = plan_travel(params), plan_travel(headless(params))
    assert replace(headless_plan, frame_rule=ours_plan.frame_rule, given_as=ours_plan.given_as,
                   crossfade_sharpen=None) == ours_plan
    assert headless_plan.frame_rule.startswith("headless") and ours_plan.frame_rule.startswith("ours")
    assert (headless_plan.crossfade_sharpen, ours_plan.crossfade_sharpen) == (0.3, None)


def test_headless_overlap_lists_with_one_entry_per_segment_drop_the_last(images: list[str]) -> None:
    params = ours(images[:3], model="vace_14B", num_inference_steps=6, lora_names=[], lora_multipliers=[])
    row = headless(params)
    row["orchestrator_details"]["frame_overlap_expanded"] = [4, 4]  # 2 segments, 1 transition
    assert plan_travel(row).overlaps == [4]


def test_headless_resolution_may_be_a_width_height_pair(images: list[str]) -> None:
    params = ours(images[:3], model="vace_14B", num_inference_steps=6, lora_names=[], lora_multipliers=[])
    row = headless(params)
    row["orchestrator_details"]["parsed_resolution_wh"] = [64, 48]
    assert (plan_travel(row).width, plan_travel(row).height) == (64, 48)


def test_headless_resolution_is_snapped_down_to_multiples_of_16_and_recorded(images: list[str]) -> None:
    """Reigh sends its aspect-ratio sizes as they are ("902x508" for 16:9); headless Wan2GP snaps them."""
    params = ours(images[:3], model="vace_14B", num_inference_steps=6, lora_names=[], lora_multipliers=[])
    row = headless(params)
    row["orchestrator_details"]["parsed_resolution_wh"] = "902x508"
    plan = plan_travel(row)
    assert (plan.width, plan.height) == (896, 496)
    assert {(r.field, r.requested, r.used) for r in plan.roundings} == {
        ("resolution.width", 902, 896), ("resolution.height", 508, 496)}


@given(layout=valid_layouts())
def test_a_plan_survives_a_json_round_trip(images: list[str], layout: tuple[list[int], list[int]]) -> None:
    frames, overlaps = layout
    plan = plan_travel(
        ours(images[: len(frames) + 1], prompts=["p"], segment_frames=frames, frame_overlap=overlaps,
             guidance_scale=1.0)
    )
    stored = json.loads(json.dumps(plan.to_params()))
    assert stored["expected_frames"] == plan.expected_frames
    assert TravelPlan.from_params(stored) == plan


def test_a_single_prompt_is_used_for_every_segment(images: list[str]) -> None:
    assert [s.prompt for s in plan_travel(ours(images[:4], prompts=["drift"])).segments] == ["drift"] * 3
    params = ours(images[:4])
    del params["prompts"]
    assert [s.prompt for s in plan_travel(params | {"prompt": "drift"}).segments] == ["drift"] * 3


def test_sampling_and_lora_fields_are_passed_through_untouched(images: list[str]) -> None:
    fields = {"num_inference_steps": 10, "guidance_scale": 1.0, "switch_threshold": 875, "sample_solver": "unipc",
              "lora_names": ["CausVid", "DetailEnhancerV1"], "lora_multipliers": ["1.0", "0.2;0"]}
    assert plan_travel(ours(images[:3], **fields, unrelated_key=1)).sampling == fields


def test_model_defaults_to_the_wan_2_2_vace_preset_when_neither_is_given(images: list[str]) -> None:
    plan = plan_travel(ours(images[:3]))
    assert (plan.model, plan.preset) == (DEFAULT_MODEL, None)


def test_model_and_preset_are_passed_through_as_given(images: list[str]) -> None:
    assert plan_travel(ours(images[:3], preset="vace_22_14b")).preset == "vace_22_14b"
    assert plan_travel(ours(images[:3], preset="vace_22_14b")).model is None
    assert plan_travel(ours(images[:3], model="vace_14B")).model == "vace_14B"


def test_seed_minus_one_draws_a_random_seed_and_segments_still_count_up(images: list[str]) -> None:
    plans = [plan_travel(ours(images[:3], seed=-1)) for _ in range(5)]
    assert all(p.seed >= 0 and [s.seed for s in p.segments] == [p.seed, p.seed + 1] for p in plans)
    assert len({p.seed for p in plans}) > 1


def test_defaults_fill_what_the_params_leave_out(images: list[str]) -> None:
    plan = plan_travel({"images": images[:2], "prompt": "p"})
    assert (plan.width, plan.height, plan.fps, plan.seed) == (832, 480, 16, 12345)
    assert plan.segments[0].frames == 81 and plan.segments[0].negative_prompt == ""


# --- bad input: every case names the field and the rule -------------------------------------------


def rejects(params: dict[str, Any], field: str, rule: str) -> None:
    with pytest.raises(ValidationError) as error:
        plan_travel(params)
    assert error.value.field == field
    assert rule in error.value.rule, error.value.rule


def test_no_images_are_rejected(images: list[str]) -> None:
    rejects(ours([]), "images", "at least one keyframe")
    rejects({"prompt": "p"}, "images", "required")
    rejects(ours([images[0], 3]), "images", "list of strings")


def test_one_keyframe_is_a_single_segment_journey_without_an_end_image(images: list[str]) -> None:
    """The headless single-image journey: one image, one segment opening on it."""
    for keyframes in ([images[0]], images[0]):
        plan = plan_travel(ours(keyframes, prompts=["drift away"]))
        assert [(s.start_image, s.end_image, s.frames) for s in plan.segments] == [(images[0], None, 17)]


def test_a_missing_image_is_rejected_by_index(images: list[str], tmp_path: Path) -> None:
    rejects(ours([images[0], str(tmp_path / "gone.png"), images[1]]), "images[1]", "not found")


def test_a_file_that_is_not_an_image_is_rejected_by_index(images: list[str], not_an_image: str) -> None:
    rejects(ours([images[0], images[1], not_an_image]), "images[2]", "not a readable image")


def test_prompt_count_must_be_one_or_one_per_segment(images: list[str]) -> None:
    rejects(ours(images[:4], prompts=["a", "b"]), "prompts", "1 or 3 entries")


def test_prompts_are_required(images: list[str]) -> None:
    params = ours(images[:3])
    del params["prompts"]
    rejects(params, "prompts", "required")


def test_prompt_fills_the_segments_whose_prompt_is_empty(images: list[str]) -> None:
    """As the headless orchestrator falls back to `base_prompt` for an empty segment prompt."""
    plan = plan_travel(ours(images[:3], prompts=["", "out to sea"], prompt="drift"))
    assert [s.prompt for s in plan.segments] == ["drift", "out to sea"]


def test_prompts_must_be_strings(images: list[str]) -> None:
    rejects(ours(images[:3], prompts=["a", 3]), "prompts", "str")


@pytest.mark.parametrize("frames", [-81, 0, 4, MAX_SEGMENT_FRAMES + 1, 10**9])
def test_negative_tiny_or_absurd_frame_counts_are_rejected(images: list[str], frames: int) -> None:
    rule = f"{MIN_SEGMENT_FRAMES}..{MAX_SEGMENT_FRAMES}"
    rejects(ours(images[:3], segment_frames=[17, frames]), "segment_frames[1]", rule)


def test_frame_counts_must_be_integers(images: list[str]) -> None:
    assert plan_travel(ours(images[:3], segment_frames="17")).segments[0].frames == 17  # plain digits, as elsewhere
    rejects(ours(images[:3], segment_frames="1_7"), "segment_frames", "integer")
    rejects(ours(images[:3], segment_frames="\uff11\uff17"), "segment_frames", "integer")
    rejects(ours(images[:3], segment_frames=[17, 16.5]), "segment_frames[1]", "integer")
    rejects(ours(images[:3], segment_frames=True), "segment_frames", "integer")


def test_segment_frames_list_must_have_one_entry_per_segment(images: list[str]) -> None:
    rejects(ours(images[:3], segment_frames=[17, 17, 17]), "segment_frames", "needs 2 entries")


def test_frame_overlap_list_must_have_one_entry_per_transition(images: list[str]) -> None:
    rejects(ours(images[:4], prompts=["p"], frame_overlap=[4]), "frame_overlap", "needs 2 entries")


@pytest.mark.parametrize("overlap", [18, 40])
def test_an_overlap_not_shorter_than_its_segments_is_rejected(images: list[str], overlap: int) -> None:
    rejects(ours(images[:3], frame_overlap=overlap), "frame_overlap[0]", "fewer than both segments")


def test_an_overlap_is_checked_against_the_shorter_neighbour(images: list[str]) -> None:
    rejects(ours(images[:3], segment_frames=[33, 9], frame_overlap=10), "frame_overlap[0]", "(33 and 9)")


def test_a_negative_overlap_is_rejected(images: list[str]) -> None:
    rejects(ours(images[:3], frame_overlap=-2), "frame_overlap[0]", ">= 0")


def test_overlaps_at_both_ends_must_leave_the_middle_segment_a_frame(images: list[str]) -> None:
    params = ours(images[:4], prompts=["p"], segment_frames=[17, 9, 17], frame_overlap=[4, 6])
    rejects(params, "frame_overlap", "segment 1 has 9 frames")


@pytest.mark.parametrize("resolution", ["832x481", "830x480", "832*480", "832", "0x480", "widexhigh", "8192x480", 832])
def test_resolution_must_be_wxh_in_multiples_of_16(images: list[str], resolution: Any) -> None:
    with pytest.raises(ValidationError) as error:
        plan_travel(ours(images[:3], resolution=resolution))
    assert error.value.field == "resolution"


@pytest.mark.parametrize("seed", [-2, 2**32, "7_0", 7.5])
def test_seed_must_be_a_non_negative_integer_or_minus_one(images: list[str], seed: Any) -> None:
    with pytest.raises(ValidationError) as error:
        plan_travel(ours(images[:3], seed=seed))
    assert error.value.field == "seed"


@pytest.mark.parametrize("fps", [0, -16, 1000])
def test_fps_must_be_a_sane_integer(images: list[str], fps: int) -> None:
    rejects(ours(images[:3], fps=fps), "fps", "must be")


def test_model_must_be_a_string_and_a_blank_one_is_absent(images: list[str]) -> None:
    assert plan_travel(ours(images[:3], model="")).model == DEFAULT_MODEL
    rejects(ours(images[:3], preset=["vace"]), "preset", "must be a string")


def test_headless_errors_name_the_headless_field(images: list[str], not_an_image: str) -> None:
    params = ours(images[:3], model="vace_14B", num_inference_steps=6, lora_names=[], lora_multipliers=[])
    row = headless(params)
    row["orchestrator_details"]["input_image_paths_resolved"] = [images[0], not_an_image, images[2]]
    rejects(row, "orchestrator_details.input_image_paths_resolved[1]", "not a readable image")
    row = headless(params)
    row["orchestrator_details"]["segment_frames_expanded"] = [17, 2000]
    rejects(row, "orchestrator_details.segment_frames_expanded[1]", "..1000")
    row = headless(params)
    row["orchestrator_details"]["parsed_resolution_wh"] = "8x100"  # 0 wide once snapped to 16
    rejects(row, "orchestrator_details.parsed_resolution_wh (resolution)", "8x100 is too small to generate at (16x16 at least)")


def test_headless_segment_count_must_match_the_images(images: list[str]) -> None:
    params = ours(images[:3], model="vace_14B", num_inference_steps=6, lora_names=[], lora_multipliers=[])
    row = headless(params)
    row["orchestrator_details"]["num_new_segments_to_generate"] = 5
    rejects(row, "orchestrator_details.num_new_segments_to_generate", "3 images make 2")


def test_headless_details_must_be_an_object() -> None:
    rejects({"orchestrator_details": "not a dict"}, "orchestrator_details", "object")


def test_integral_floats_from_json_writers_are_accepted_but_inf_and_nan_are_not(images: list[str]) -> None:
    assert plan_travel(ours(images[:3], segment_frames=17.0, fps=16.0)).segments[0].frames == 17
    rejects(ours(images[:3], segment_frames=float("inf")), "segment_frames", "integer")
    rejects(ours(images[:3], frame_overlap=float("nan")), "frame_overlap", "integer")
