"""Rows written the way the April 2026 Reigh app (banodoco/reigh-app, supabase/functions/create-task/
resolvers/) and the April 2026 headless worker (banodoco/reigh-worker) write them: every key honoured,
a known no-op, reported in ignored_params, or refused naming the field and the rule. Each builder
names the source it follows; values are realistic, sizes tiny (32x32, 9 frames, 2 steps)."""
from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

import pytest

from worker.dialects import expand_lora_objects
from worker.errors import ValidationError
from worker.resources import WorkerResources
from worker.store import TaskStatus, TaskStore
from worker.params import ParamReader
from worker.travel.guidance import read_guidance
from worker.travel.plan import read_travel
from worker.video import probe
from fleet_servers import file_server  # noqa: F401 (fixture)
from worker_harness import resources, run_until_idle, write_keyframes  # noqa: F401 (fixture)

APP = "banodoco/reigh-app supabase/functions/create-task/resolvers"
RUN_ID = "20260411054848123"


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    return write_keyframes(tmp_path_factory.mktemp("keys"), 3, size=(40, 36))


def contract_keys(details: dict[str, Any], family: str, images: list[str], **orchestration: Any) -> dict[str, Any]:
    """What shared/taskContracts.ts composeTaskFamilyPayload adds to a payload: the contract version,
    the task family, a nested copy of the payload, and three read contracts for the app's views."""
    return {
        "contract_version": 1, "task_family": family, "orchestrator_details": dict(details),
        "orchestration_contract": {"contract_version": 3, "task_family": family, **orchestration},
        "task_view_contract": {"contract_version": 1, "input_images": images, "prompt": details.get("base_prompt"),
                               "model_name": details.get("model_name"),
                               "resolution": details.get("parsed_resolution_wh")},
        "family_contract": {"contract_version": 1, "segment_regen_mode": "segment_regen_from_pair",
                            "image_count": len(images), "segment_count": max(1, len(images) - 1),
                            "has_pair_ids": True},
    }  # fmt: skip


def travel_row(images: list[str], **details: Any) -> dict[str, Any]:
    """A travel_orchestrator (or, in turbo mode, wan_2_2_i2v) row as travelBetweenImages.ts
    buildTravelBetweenImagesPayload writes it for a VACE journey with continuation (the ShotEditor's
    requestBody.ts sends continuation_config {strategy, overlap_frames}, independent_segments false)."""
    segments = max(1, len(images) - 1)
    payload = {
        "generation_source": "batch", "orchestrator_task_id": "sm_travel_orchestrator_260411_ab12cd",
        "run_id": RUN_ID, "input_image_paths_resolved": images,
        "input_image_generation_ids": [f"gen-{i}" for i in range(len(images))],
        "pair_shot_generation_ids": [f"pair-{i}" for i in range(segments)],
        "num_new_segments_to_generate": segments, "base_prompts_expanded": ["a walk"] * segments,
        "base_prompt": "a walk", "negative_prompts_expanded": [""] * segments,
        "motion_settings_expanded": [{"amount_of_motion": 0.5, "motion_mode": "basic"}] + [None] * (segments - 1),
        "segment_frames_expanded": [9] * segments, "frame_overlap_expanded": [4] * segments,
        "continuation_config": {"strategy": "guide_overlap_masked", "overlap_frames": 4},
        "parsed_resolution_wh": "32x32", "model_name": "tiny_vace_2_2", "model_type": "vace", "seed_base": 789,
        "steps": 2, "after_first_post_generation_saturation": 1, "after_first_post_generation_brightness": 0,
        "debug_mode_enabled": False, "shot_id": "shot-1", "parent_generation_id": "parent-1",
        "enhance_prompt": False, "show_input_images": True, "generation_mode": "timeline",
        "dimension_source": "project", "amount_of_motion": 0.5, "advanced_mode": False,
        "generation_name": "take 2", "independent_segments": False, "motion_mode": "basic",
    }  # fmt: skip
    payload.update(details)
    composed = {**payload, **contract_keys(payload, "travel_between_images", images, orchestrator_task_id=payload[
        "orchestrator_task_id"], run_id=RUN_ID, parent_generation_id="parent-1", shot_id="shot-1",
        generation_routing="orchestrator", sibling_lookup="run_id")}
    return {"tool_type": "travel-between-images", "orchestrator_details": composed, "parent_generation_id": "parent-1",
            "generation_name": "take 2"}


def ignored_of(row: dict[str, Any]) -> dict[str, str]:
    plan, _ = read_travel(row)
    return plan.ignored_params


# banodoco/reigh-worker scripts-style phase config: Lightning 2 + 2 steps, as the app's basic motion presets send.
PHASE_CONFIG = {
    "num_phases": 2, "steps_per_phase": [1, 1], "flow_shift": 5, "sample_solver": "euler", "model_switch_phase": 1,
    "phases": [{"phase": 1, "guidance_scale": 1, "loras": []}, {"phase": 2, "guidance_scale": 1, "loras": []}],
}  # fmt: skip


def individual_row(images: list[str], index: int, **given: Any) -> dict[str, Any]:
    """An individual_travel_segment row as individualTravelSegment.ts buildIndividualTravelSegmentParams
    writes it for a frontend re-make of one pair: the segment's own values, the composed payload spread
    over the row (composeTaskFamilyPayload), and individual_segment_params, which win."""
    inputs = {"start_image_url": images[0], "end_image_url": images[1], "base_prompt": "a walk",
              "enhanced_prompt": "a slow walk through tall grass", "negative_prompt": "", "num_frames": 9,
              "phase_config": PHASE_CONFIG, "model_name": "tiny_vace_2_2", "model_type": "vace", **given}
    steps = sum(PHASE_CONFIG["steps_per_phase"])
    details = {
        "generation_source": "individual_segment", "parsed_resolution_wh": "32x32",
        "input_image_paths_resolved": images[:2], "seed_base": 789, "model_name": inputs["model_name"],
        "flow_shift": 5, "sample_solver": "euler", "guidance_scale": 1, "guidance2_scale": 1, "guidance_phases": 2,
        "num_inference_steps": steps, "model_switch_phase": 1, "additional_loras": {}, "advanced_mode": False,
        "motion_mode": "basic", "amount_of_motion": 0.5, "parent_generation_id": "parent-1", "fps_helpers": 16,
        "model_type": inputs["model_type"], "independent_segments": "continuation_config" not in inputs,
        "chain_segments": "continuation_config" in inputs,
        **({"continuation_config": inputs["continuation_config"]} if "continuation_config" in inputs else {}),
    }  # fmt: skip
    composed = {**details, **contract_keys(details, "individual_travel_segment", images[:2],
                                           parent_generation_id="parent-1", child_order=index, shot_id="shot-1",
                                           generation_routing="variant_child", sibling_lookup="orchestrator_task_id",
                                           segment_regen_mode="segment_regen_from_pair")}
    composed["orchestrator_details"] = details  # the spread payload's own orchestrator_details is the bare one
    own = {key: inputs[key] for key in ("start_image_url", "end_image_url", "base_prompt", "negative_prompt",
                                        "num_frames", "phase_config", "enhanced_prompt")}
    return {
        "flow_shift": 5, "lora_names": [], "model_name": inputs["model_name"], "project_id": "project-1",
        "shot_id": "shot-1", "base_prompt": inputs["base_prompt"], "fps_helpers": 16, "seed_to_use": 789,
        "cfg_zero_step": -1, "sample_solver": "euler", "segment_index": index, "guidance_scale": 1,
        "cfg_star_switch": 0, "guidance2_scale": 1, "guidance_phases": 2, "is_last_segment": False,
        "negative_prompt": "", "is_first_segment": index == 0, "additional_loras": {},
        "lora_multipliers": [], "model_switch_phase": 1, "num_inference_steps": steps,
        "parsed_resolution_wh": "32x32", "num_frames": inputs["num_frames"], "amount_of_motion": 0.5,
        "parent_generation_id": "parent-1", "child_generation_id": "child-1", "input_image_paths_resolved": images[:2],
        "after_first_post_generation_saturation": 1, "after_first_post_generation_brightness": 0,
        "motion_mode": "basic", "enhanced_prompt": inputs["enhanced_prompt"], "pair_shot_generation_id": "pair-1",
        "start_image_generation_id": "gen-0", "end_image_generation_id": "gen-1", "make_primary_variant": True,
        **({"continuation_config": inputs["continuation_config"]} if "continuation_config" in inputs else {}),
        **composed,
        "individual_segment_params": {
            "input_image_paths_resolved": images[:2], **own, "seed_to_use": 789, "random_seed": False,
            "amount_of_motion": 0.5, "motion_mode": "basic", "advanced_mode": False, "additional_loras": {},
            "after_first_post_generation_saturation": 1, "after_first_post_generation_brightness": 0,
            "start_image_generation_id": "gen-0", "end_image_generation_id": "gen-1",
            "pair_shot_generation_id": "pair-1", "start_image_variant_id": "variant-0",
            "end_image_variant_id": "variant-1",
            **({"continuation_config": inputs["continuation_config"]} if "continuation_config" in inputs else {}),
        },
    }  # fmt: skip


def headless_segment_row(details: dict[str, Any], index: int, orchestrator_id: str) -> dict[str, Any]:
    """A travel_segment row as the April 2026 headless orchestrator writes it (reigh-worker
    source/task_handlers/travel/orchestrator.py, segment_payload, with extract_orchestrator_parameters'
    top-level copies): canonical num_frames and seed dual-written with their legacy names, the model
    family, the segment's travel guidance ({"kind": "none"} without guidance), and the payload as the
    orchestrator normalised it (fps_helpers, model_family, chain_segments and use_svi set)."""
    details = {**details, "fps_helpers": 16, "model_family": "wan", "chain_segments": True, "use_svi": False}
    overlap = 0 if index == 0 else details["frame_overlap_expanded"][index - 1]
    frames = details["segment_frames_expanded"][index] + overlap
    return {
        "orchestrator_task_id_ref": orchestrator_id, "orchestrator_run_id": RUN_ID, "project_id": "project-1",
        "start_image_url": details["input_image_paths_resolved"][index],
        "end_image_url": details["input_image_paths_resolved"][index + 1], "pair_shot_generation_id": "pair-0",
        "parent_generation_id": "parent-1", "segment_index": index, "is_first_segment": index == 0,
        "is_last_segment": index == details["num_new_segments_to_generate"] - 1, "child_order": index,
        "is_single_item": details["num_new_segments_to_generate"] == 1,
        "current_run_base_output_dir": "/outputs/travel_run", "base_prompt": details["base_prompts_expanded"][index],
        "negative_prompt": "", "num_frames": frames, "segment_frames_target": frames,
        "frame_overlap_from_previous": overlap, "frame_overlap_with_next": details["frame_overlap_expanded"][index],
        "vace_image_refs_to_prepare_by_worker": [], "parsed_resolution_wh": details["parsed_resolution_wh"],
        "model_name": details["model_name"], "model_family": "wan", "seed": details["seed_base"],
        "seed_to_use": details["seed_base"], "cfg_star_switch": 0, "cfg_zero_step": -1,
        "params_json_str_override": None, "fps_helpers": 16, "subsequent_starting_strength_adjustment": 0.0,
        "desaturate_subsequent_starting_frames": 0.0, "adjust_brightness_subsequent_starting_frames": 0.0,
        "after_first_post_generation_saturation": 1, "after_first_post_generation_brightness": 0,
        "segment_image_download_dir": "/outputs/travel_run", "debug_mode_enabled": False,
        "skip_cleanup_enabled": False, "continue_from_video_resolved_path_for_guide": None,
        "consolidated_end_anchor_idx": None, "consolidated_keyframe_positions": None, "use_svi": False,
        "travel_guidance": {"kind": "none"}, "structure_guidance": None,
        "orchestrator_details": details, "amount_of_motion": details["amount_of_motion"],
    }  # fmt: skip



# ---- reading the app's travel payload ----------------------------------------------------------------------

def test_the_apps_contract_keys_and_defaults_are_no_ops_and_continuation_chains(images: list[str]) -> None:
    """travelBetweenImages.ts + shared/taskContracts.ts (reigh-app): the contract bookkeeping, the
    nested payload copy, show_input_images true (the app's default; reigh-worker's segment handler
    switches the banner off: tasks/task_registry.py) and guide_overlap_masked, which chains the
    segments as the headless GenerationPolicy does (core/params/generation_policy.py)."""
    plan, _ = read_travel(travel_row(images))
    assert plan.ignored_params == {}
    assert not plan.independent and plan.overlaps == [4]
    assert plan.segments[1].frames == plan.segments[1].overlap + 9  # 9 new frames + the overlap, already 4n+1


def test_a_chained_segment_rounds_its_frames_plus_overlap_up_to_4n_plus_1(images: list[str]) -> None:
    """reigh-worker travel/orchestrator.py: segment_frames_target_with_context is quantized UP
    (_quantize_frames_up) for a chained segment, so 9 frames + a 6-frame overlap make 17, not 13."""
    plan, _ = read_travel(travel_row(images, frame_overlap_expanded=[6, 6]))
    generated = plan.segments[1].frames
    assert (generated - 1) % 4 == 0 and 9 + 6 <= generated < 9 + 6 + 4
    assert plan.expected_frames == sum(s.frames for s in plan.segments) - sum(plan.overlaps)


@pytest.mark.parametrize("config,independent", [
    ({"strategy": "none"}, True), ({"strategy": "guide_overlap_masked", "overlap_frames": 10}, False),
    ({"overlap_frames": 4}, True),  # no strategy reads as "none" (GenerationPolicy.from_payload)
])
def test_continuation_strategies_that_map_onto_ours(images: list[str], config: dict[str, Any],
                                                    independent: bool) -> None:
    """reigh-worker core/params/generation_policy.py: "none" leaves segments unchained;
    guide_overlap_masked chains them with each join's frame_overlap_expanded (overlap_frames is
    read only by the prefix strategies: tasks/task_registry.py _resolve_predecessor_video_source)."""
    row = travel_row(images, continuation_config=config, independent_segments=independent)
    plan, _ = read_travel(row)
    assert plan.independent == independent and plan.overlaps == [4]
    # An overlap_frames the joins do not use is reported, not silently dropped.
    unused = {"orchestrator_details.continuation_config.overlap_frames": "the joins overlap by [4] frames, from "
              "frame_overlap_expanded (as the headless worker reads them)"}
    assert plan.ignored_params == (unused if config.get("overlap_frames", 4) != 4 else {})


@pytest.mark.parametrize("strategy,words", [("svi_latent_chaining", "SVI"), ("prefix_video_source", "LTX"),
                                            ("latent_magic", "must be"), (["none"], "must be a string")])
def test_continuation_strategies_this_worker_cannot_do_fail_naming_the_field(images: list[str], strategy: str,
                                                                             words: str) -> None:
    """The app's other strategies (src/tools/travel-between-images/modelCapabilities.ts: Wan i2v ->
    svi_latent_chaining, LTX -> prefix_video_source) would make a different video here: refused."""
    with pytest.raises(ValidationError) as error:
        read_travel(travel_row(images, continuation_config={"strategy": strategy, "overlap_frames": 4}))
    assert error.value.field == "orchestrator_details.continuation_config.strategy" and words in error.value.rule


def test_a_flag_that_contradicts_the_continuation_fails_naming_it(images: list[str]) -> None:
    """requestBody.ts sends independent_segments = !continuation.enabled; a row saying otherwise is
    ambiguous (the headless orchestrator would silently follow the continuation)."""
    with pytest.raises(ValidationError) as error:
        read_travel(travel_row(images, independent_segments=True))
    assert error.value.field == "orchestrator_details.independent_segments"
    assert "continuation_config.strategy" in error.value.rule
    with pytest.raises(ValidationError) as error:
        read_travel(travel_row(images, model_type="i2v"))
    assert error.value.field == "orchestrator_details.continuation_config.strategy" and "i2v" in error.value.rule


def test_travel_guidance_none_is_a_no_op_and_the_kinds_this_worker_lacks_are_refused(images: list[str]) -> None:
    """travelBetweenImages.ts copies travel_guidance into the payload; reigh-worker
    core/params/travel_guidance.py kinds: none, vace (raw / flow / depth / canny), uni3c, ltx_control,
    ltx_hybrid. vace runs (raw, canny, depth, flow: test_structure_guidance*.py); another mode, Uni3C
    and LTX-2 fail naming the field."""
    assert ignored_of(travel_row(images, travel_guidance={"kind": "none"})) == {}
    video = {"path": "https://example.com/structure.mp4", "start_frame": 0, "end_frame": 14}
    for guidance, field in (({"kind": "vace", "mode": "pose", "videos": [video], "strength": 1.0}, "mode"),
                            ({"kind": "uni3c", "videos": [video]}, "kind"),
                            ({"kind": "ltx_control", "mode": "pose", "videos": [video]}, "kind")):
        with pytest.raises(ValidationError) as error:
            read_travel(travel_row(images, travel_guidance=guidance))
        assert error.value.field == f"orchestrator_details.travel_guidance.{field}"
        assert repr(guidance[field]) in error.value.rule


def test_model_family_wan_is_read_and_ltx_refused(images: list[str]) -> None:
    """reigh-worker travel/orchestrator.py writes model_family ("ltx" when the model name says so, else
    "wan") into the payload it copies onto segments (_build_minimal_orchestrator_details)."""
    assert ignored_of(travel_row(images, model_family="wan")) == {}
    with pytest.raises(ValidationError) as error:
        read_travel(travel_row(images, model_family="ltx"))
    assert error.value.field == "orchestrator_details.model_family" and "LTX" in error.value.rule


def test_loras_in_the_payload_are_the_list_form_of_additional_loras(images: list[str]) -> None:
    """The payload's `loras` [{path, strength}] (in reigh-worker's _build_minimal_orchestrator_details
    list; the app turns the same list into additional_loras, travelBetweenImages.ts
    buildAdditionalLorasRecord): merged like additional_loras, a file listed twice taken once."""
    motion, style = "https://example.com/loras/Motion.safetensors", "https://example.com/loras/Style.safetensors"
    plan, _ = read_travel(travel_row(images, additional_loras={motion: 0.7},
                                     loras=[{"path": motion, "strength": 0.7}, {"path": style, "strength": 0.4}]))
    assert plan.sampling["lora_names"] == [motion, style] and plan.sampling["lora_multipliers"] == ["0.7", "0.4"]
    assert plan.ignored_params == {}
    with pytest.raises(ValidationError) as error:
        read_travel(travel_row(images, loras=[{"path": 3}]))
    assert error.value.field == "orchestrator_details.loras"


def test_num_inference_steps_next_to_steps(images: list[str]) -> None:
    """travelBetweenImages.ts writes `steps` (basic mode) and `num_inference_steps` (when the model's UI
    has a steps control) side by side: one field; two different values fail naming both."""
    plan, _ = read_travel(travel_row(images, steps=2, num_inference_steps=2))
    assert plan.sampling["num_inference_steps"] == 2 and plan.ignored_params == {}
    with pytest.raises(ValidationError) as error:
        read_travel(travel_row(images, steps=20, num_inference_steps=2))
    assert "steps" in str(error.value) and "num_inference_steps" in str(error.value)


# ---- through a worker on the tiny models -------------------------------------------------------------------

def test_the_apps_chained_travel_job_runs_with_nothing_reported(sqlite_store: TaskStore, resources: WorkerResources,
                                                                images: list[str], tmp_path: Path) -> None:
    """The row travelBetweenImages.ts inserts (travel_orchestrator), with every key it writes."""
    job = sqlite_store.enqueue("travel_orchestrator", travel_row(images))
    run_until_idle(sqlite_store, resources, tmp_path / "out")
    task = sqlite_store.get(job)
    assert task.status == TaskStatus.COMPLETE, task.error_message
    assert task.result_data["ignored_params"] == {}
    segments = sorted((c for c in sqlite_store.children(job) if c.task_type == "travel_segment"),
                      key=lambda child: child.result_data["segment_index"])
    assert segments[1].dependant_on == [segments[0].id]  # chained: segment 1 waits for segment 0
    assert task.result_data["frames"] == probe(task.output_location).frames == sum(
        s.result_data["frames"] for s in segments) - 4


def test_the_turbo_task_type_runs_the_travel_job_it_carries(sqlite_store: TaskStore, resources: WorkerResources,
                                                            images: list[str], tmp_path: Path) -> None:
    """travelBetweenImages.ts: `isTurboMode ? "wan_2_2_i2v" : "travel_orchestrator"`, same payload;
    here on the tiny image-to-video model, without a continuation (independent pairs)."""
    row = travel_row(images[:2], model_name="tiny_i2v_2_2", model_type="i2v", independent_segments=True,
                     continuation_config=None)
    job = sqlite_store.enqueue("wan_2_2_i2v", row)
    plain = sqlite_store.enqueue("wan_2_2_i2v", {"prompt": "a boat", "image_start": images[0]})
    run_until_idle(sqlite_store, resources, tmp_path / "out")
    task = sqlite_store.get(job)
    assert task.status == TaskStatus.COMPLETE, task.error_message
    assert task.result_data["ignored_params"] == {}
    assert task.result_data["model"] == "tiny_i2v_2_2" and probe(task.output_location).frames == 9
    # A row that is not a travel job is pointed at the task type for one generation.
    assert sqlite_store.get(plain).error_message == (
        "ValidationError: orchestrator_details: required: a wan_2_2_i2v row is the Reigh app's travel job in "
        "turbo mode; for one image-to-video generation use task type i2v_22")


def test_the_apps_individual_segment_runs_and_a_chained_remake_is_refused(
        sqlite_store: TaskStore, resources: WorkerResources, images: list[str], tmp_path: Path) -> None:
    """individualTravelSegment.ts buildIndividualTravelSegmentParams: the payload carries no prompts
    (the segment's own base_prompt / enhanced_prompt stand in), the phase config sits in
    individual_segment_params; a re-make of segment 1 with a continuation needs the predecessor's
    video, which reigh-worker finds through the app's generation lineage (travel/guide_builder.py
    get_previous_segment_video) and this worker cannot: refused naming the field."""
    alone = sqlite_store.enqueue("individual_travel_segment", individual_row(images, 0))
    later = sqlite_store.enqueue("individual_travel_segment", individual_row(images[1:], 1, num_frames=5))
    chained = sqlite_store.enqueue("individual_travel_segment", individual_row(
        images, 1, continuation_config={"strategy": "guide_overlap_masked", "overlap_frames": 4}))
    run_until_idle(sqlite_store, resources, tmp_path / "out")
    task, second, refused = (sqlite_store.get(task_id) for task_id in (alone, later, chained))
    for done in (task, second):
        assert done.status == TaskStatus.COMPLETE, done.error_message
        assert done.result_data["ignored_params"] == {}
        assert done.result_data["parameters"]["num_inference_steps"] == sum(PHASE_CONFIG["steps_per_phase"])
    assert (task.result_data["frames"], task.result_data["seed"], task.result_data["segment_index"]) == (9, 789, 0)
    assert task.result_data["parameters"]["prompt"] == "a slow walk through tall grass"  # enhanced_prompt wins
    # segment 1 of the timeline, from the only pair its payload holds
    assert (second.result_data["frames"], second.result_data["segment_index"]) == (5, 1)
    assert Path(second.output_location).name == "segment-1.mp4"
    assert refused.status == TaskStatus.FAILED and refused.attempts == 1
    assert refused.error_message.startswith("ValidationError: continuation_config: re-making segment 1 alone")


def test_the_headless_workers_segment_rows_run_with_nothing_reported(
        sqlite_store: TaskStore, resources: WorkerResources, images: list[str], tmp_path: Path) -> None:
    """A segment row the April 2026 headless orchestrator wrote (canonical num_frames and seed,
    model_family, travel_guidance {"kind": "none"}, structure_guidance null) for the app's payload,
    claimed by this worker: its own seed and frames are honoured, nothing is reported."""
    details = travel_row(images[:2], seed_base=4242)["orchestrator_details"]
    orchestrator = str(uuid.uuid4())  # the job's row, run by a headless worker elsewhere
    segment = sqlite_store.enqueue("travel_segment", headless_segment_row(details, 0, orchestrator))
    run_until_idle(sqlite_store, resources, tmp_path / "out")
    task = sqlite_store.get(segment)
    assert task.status == TaskStatus.COMPLETE, task.error_message
    assert task.result_data["ignored_params"] == {}
    assert (task.result_data["frames"], task.result_data["seed"]) == (9, 4242)


def test_a_headless_segment_row_with_uni3c_guidance_is_refused(
        sqlite_store: TaskStore, resources: WorkerResources, images: list[str], tmp_path: Path) -> None:
    """The headless orchestrator gives each segment its slice of the travel guidance
    (_build_segment_travel_guidance_payload); Uni3C guidance fails the segment at once."""
    details = travel_row(images[:2])["orchestrator_details"]
    row = headless_segment_row(details, 0, str(uuid.uuid4()))
    row["travel_guidance"] = {"kind": "uni3c", "videos": [{"path": "https://example.com/s.mp4"}],
                              "_frame_offset": 0}
    segment = sqlite_store.enqueue("travel_segment", row)
    run_until_idle(sqlite_store, resources, tmp_path / "out")
    task = sqlite_store.get(segment)
    assert task.status == TaskStatus.FAILED and task.attempts == 1
    assert task.error_message.startswith("ValidationError: travel_guidance.kind: 'uni3c': Uni3C guidance")


def test_the_apps_image_row_runs_and_its_hires_pass_is_reported(sqlite_store: TaskStore, resources: WorkerResources,
                                                              tmp_path: Path) -> None:
    """imageGeneration.ts buildTaskParams (wan_2_2_t2i) with setTaskLineageFields (shared/lineage.ts):
    task_id, model, prompt, resolution, seed, steps, add_in_position, shot_id, timeline_placement; a hires
    pass (hires_scale, hires_steps, hires_denoise) changes the image and is not done here: reported."""
    row = {"task_id": "wan_2_2_t2i_260411_ab12cd", "model": "tiny_t2v_2_2", "prompt": "a lighthouse",
           "resolution": "32x32", "seed": 11111, "steps": 2, "add_in_position": False, "shot_id": "shot-1",
           "timeline_placement": {"timeline_id": "t1", "source_clip_id": "c1", "target_track": "v1",
                                  "insertion_time": 2.5, "intent": "after_source"}}
    plain = sqlite_store.enqueue("wan_2_2_t2i", row)
    hires = sqlite_store.enqueue("wan_2_2_t2i", {**row, "hires_scale": 1.5, "hires_steps": 2, "hires_denoise": 0.5})
    run_until_idle(sqlite_store, resources, tmp_path / "out")
    done, reported = sqlite_store.get(plain), sqlite_store.get(hires)
    assert done.status == reported.status == TaskStatus.COMPLETE, (done.error_message, reported.error_message)
    assert done.result_data["ignored_params"] == {}
    assert set(reported.result_data["ignored_params"]) == {"hires_scale", "hires_steps", "hires_denoise"}


def test_the_apps_default_image_model_runs_from_the_deployments_own_definition(
        sqlite_store: TaskStore, resources: WorkerResources, tmp_path: Path) -> None:
    """imageGeneration.ts sends model "optimised-t2i" when the user picks none: a definition the Reigh
    deployment keeps to itself (a Wan2GP finetune). Without it the row fails naming `model` and where
    such a definition goes; with it in <models>/finetunes the row runs on it, with its defaults."""
    models = tmp_path / "models"
    shutil.copytree(resources.models_dir, models, copy_function=os.link)
    row = {"task_id": "wan_2_2_t2i_261201_ef34", "model": "optimised-t2i", "prompt": "a lighthouse",
           "resolution": "32x32", "seed": 7, "add_in_position": False}
    missing = sqlite_store.enqueue("wan_2_2_t2i", row)
    run_until_idle(sqlite_store, WorkerResources(device="cpu", models_dir=models), tmp_path / "out")
    failed = sqlite_store.get(missing)
    assert failed.status == TaskStatus.FAILED
    assert "model: unknown model 'optimised-t2i'" in failed.error_message
    assert f"a Wan2GP definition in {models / 'finetunes'}" in failed.error_message

    (models / "finetunes").mkdir()
    (models / "finetunes" / "optimised-t2i.json").write_text(json.dumps({
        "model": {"name": "Optimised text to image", "architecture": "tiny_t2v_2_2", "group": "wan2_2",
                  "URLs": "tiny_t2v_2_2", "URLs2": "tiny_t2v_2_2"},
        "guidance_phases": 2, "num_inference_steps": 3, "guidance_scale": 1, "switch_threshold": 875}))
    task_id = sqlite_store.enqueue("wan_2_2_t2i", row)
    run_until_idle(sqlite_store, WorkerResources(device="cpu", models_dir=models), tmp_path / "out")
    task = sqlite_store.get(task_id)
    assert task.status == TaskStatus.COMPLETE, task.error_message
    assert task.result_data["model"] == "optimised-t2i" and task.result_data["frames"] == 1
    assert task.result_data["parameters"]["num_inference_steps"] == 3
    assert task.result_data["parameter_sources"]["num_inference_steps"] == "definition"
    assert task.result_data["ignored_params"] == {}


@pytest.mark.parametrize("key,value", [
    ("structure_videos", [{"path": "https://example.com/s.mp4", "start_frame": 0, "end_frame": 14}]),
    ("structure_guidance", {"target": "vace", "videos": [{"path": "https://example.com/s.mp4"}]}),
    ("structure_video_path", "https://example.com/s.mp4"),
])
def test_the_older_structure_guidance_keys_default_to_flow(key: str, value: Any) -> None:
    """The structure-guidance keys the headless orchestrator still copies onto segments (travel/orchestrator.py
    _build_minimal_orchestrator_details, core/params/structure_guidance.py): without a type they ask for
    flow guidance, the headless default; Uni3C is refused; empty or null they ask for nothing."""
    reading = read_guidance(ParamReader({key: value}, prefix="orchestrator_details."))
    assert reading.guidance.mode == "flow" and reading.guidance.videos[0].path == "https://example.com/s.mp4"
    with pytest.raises(ValidationError) as error:
        read_guidance(ParamReader({"use_uni3c": True}, prefix="orchestrator_details."))
    assert error.value.field == "orchestrator_details.use_uni3c"


def test_the_older_structure_guidance_keys_empty_ask_for_nothing(images: list[str]) -> None:
    assert ignored_of(travel_row(images, structure_videos=[], structure_guidance=None, use_uni3c=False)) == {}


def test_an_individual_segments_phase_config_loras_apply_over_a_row_copy_that_disagrees(
        sqlite_store: TaskStore, resources: WorkerResources, images: list[str], tmp_path: Path, file_server) -> None:
    """individualTravelSegment.ts copies the phase config's LoRAs onto the row as lora_multipliers
    [{url, multiplier}] next to lora_names []; the phase config is what gives the segment its LoRAs
    (reigh-worker task_registry.py reads phase_config, not that copy), so a copy that says otherwise
    is reported as replaced (a faithful copy is not: the production row below)."""
    models = tmp_path / "models"
    shutil.copytree(resources.models_dir, models, copy_function=os.link)  # LoRAs get installed here
    url = file_server.serve("/loras/lightning_high.safetensors",
                            (models / "loras" / "tiny_kohya.safetensors").read_bytes())
    config = {**PHASE_CONFIG, "phases": [{"phase": 1, "guidance_scale": 1, "loras": [{"url": url, "multiplier": "1.0"}]},
                                         {"phase": 2, "guidance_scale": 1, "loras": []}]}
    row = individual_row(images, 0, phase_config=config)
    row["lora_multipliers"] = [{"url": url, "multiplier": 0.5}]  # the phase config says 1.0
    row["lora_names"] = [url]  # as reigh-worker's create_test_task.py uni3c_baseline writes them
    task_id = sqlite_store.enqueue("individual_travel_segment", row)
    run_until_idle(sqlite_store, WorkerResources(device="cpu", models_dir=models), tmp_path / "out",
                   cache_dir=tmp_path / "cache")
    task = sqlite_store.get(task_id)
    assert task.status == TaskStatus.COMPLETE, task.error_message
    assert task.result_data["parameters"]["lora_names"] == [url]
    assert task.result_data["parameters"]["lora_multipliers"] == ["1.0;0"]
    assert task.result_data["ignored_params"] == {"lora_names": "replaced by phase_config",
                                                  "lora_multipliers": "replaced by phase_config"}


def test_a_production_individual_segment_row_runs_with_every_key_honoured(
        sqlite_store: TaskStore, resources: WorkerResources, tmp_path: Path, file_server) -> None:
    """A row of the production database, as banodoco/reigh-worker keeps it for its worker matrix
    (scripts/worker_matrix_db_snapshots.json, individual_travel_segment_wan22_i2v: task f12df812...,
    2026-03-06, kept here as tests/payloads/...): a Wan 2.2 i2v Lightning re-make with an empty prompt,
    num_frames 50, a 3 + 3 phase config with the Lightning LoRAs and the app's object-form copy of them
    in lora_multipliers. Only the model (the tiny i2v one), the size, the images and the LoRAs' host
    (a local server) are swapped."""
    models = tmp_path / "models"
    shutil.copytree(resources.models_dir, models, copy_function=os.link)  # LoRAs get installed here
    snapshot = json.loads((Path(__file__).parent / "payloads" /
                           "reigh_worker_individual_travel_segment_wan22_i2v.json").read_text())
    keys = write_keyframes(tmp_path / "keys", 2, size=(40, 36))
    text = (json.dumps(snapshot["params"]).replace("__FIXTURE_PATH__:wan22_start_image", keys[0])
            .replace("__FIXTURE_PATH__:wan22_end_image", keys[1])
            .replace("wan_2_2_i2v_lightning_baseline_2_2_2", "tiny_i2v_2_2").replace("576x768", "32x48"))
    lora = (models / "loras" / "tiny_kohya.safetensors").read_bytes()
    served = []
    for path in sorted(set(re.findall(r"https://huggingface\.co(/[^\"]+\.safetensors)", text))):
        served.append(file_server.serve(path, lora))
        text = text.replace(f"https://huggingface.co{path}", served[-1])
    task_id = sqlite_store.enqueue(snapshot["task_type"], json.loads(text))
    run_until_idle(sqlite_store, WorkerResources(device="cpu", models_dir=models), tmp_path / "out",
                   cache_dir=tmp_path / "cache")

    task = sqlite_store.get(task_id)
    assert task.status == TaskStatus.COMPLETE, task.error_message
    assert task.result_data["ignored_params"] == {}
    parameters = task.result_data["parameters"]
    assert (task.result_data["frames"], task.result_data["seed"]) == (49, 2028555833)  # 50 -> 4n+1; seed_to_use
    assert (parameters["prompt"], parameters["num_inference_steps"], parameters["model_switch_phase"]) == ("", 6, 1)
    assert parameters["lora_names"] == served and len(served) == 2  # high noise, then low noise
    assert parameters["lora_multipliers"] == ["1.2;0", "0;1.0"]  # each LoRA on its own expert's phase


def test_the_object_form_of_lora_multipliers_reads_as_names_and_multipliers() -> None:
    """Without a phase config the app's [{url, multiplier}] entries are the LoRAs themselves; lora_names
    that disagree with them, or an entry without a URL, fail naming the field."""
    objects = [{"url": "https://host/a.safetensors", "multiplier": 0.7}, {"url": "b", "multiplier": "1;0"}]
    assert expand_lora_objects({"lora_multipliers": objects, "lora_names": []}) == {
        "lora_names": ["https://host/a.safetensors", "b"], "lora_multipliers": ["0.7", "1;0"]}
    assert expand_lora_objects({"lora_multipliers": ["1.0"]}) == {"lora_multipliers": ["1.0"]}
    with pytest.raises(ValidationError, match=r"^orchestrator_details\.lora_multipliers: names LoRAs"):
        expand_lora_objects({"lora_multipliers": objects, "lora_names": ["c"]}, "orchestrator_details.")
    with pytest.raises(ValidationError, match=r"^lora_multipliers: each .* needs its LoRA's URL"):
        expand_lora_objects({"lora_multipliers": [{"multiplier": 1}]})
