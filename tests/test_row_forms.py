"""Rows written the way the seed (peteromallet/Headless-Wan2GP's docs), headless Wan2GP (now
banodoco/Reigh-Worker) and the Reigh app (banodoco/Reigh) write them: every key honoured, reported
as ignored, or refused with the field and the rule. Each payload names its source."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from PIL import Image

from wan_engine.registry import ModelRegistry
from wan_engine.schema import resolve, step_plan
from worker.api import GenerationTask, InProcessGenerator, QueueClient, row_id
from worker.dialects import flatten_generation_task, model_and_preset, phase_config_values, sampling
from worker.errors import ValidationError
from worker.params import ParamReader
from worker.resources import WorkerResources
from worker.store import TaskStatus, TaskStore
from worker.travel.plan import HEADLESS_RULE, INDEPENDENT_RULE, plan_travel
from worker.video import VideoWriter, probe, read_video
from fleet_servers import FileServer, file_server  # noqa: F401 (fixture)
from worker_harness import run_until_idle, write_keyframes

HIGH = "https://huggingface.co/Comfy-Org/Wan_2.2_ComfyUI_Repackaged/resolve/main/split_files/loras/wan2.2_i2v_lightx2v_4steps_lora_v1_high_noise.safetensors"
LOW = "https://huggingface.co/Comfy-Org/Wan_2.2_ComfyUI_Repackaged/resolve/main/split_files/loras/wan2.2_i2v_lightx2v_4steps_lora_v1_low_noise.safetensors"
JUNK = "https://huggingface.co/peteromallet/random_junk/resolve/main/14b-i2v.safetensors"

# banodoco/Reigh-Worker scripts/create_test_task.py, the individual_travel_segment example's
# orchestrator_details.phase_config (Lightning 2-phase: 3 + 3 steps, euler, shift 5).
REIGH_WORKER_PHASE_CONFIG = {
    "phases": [
        {"loras": [{"url": HIGH, "multiplier": "1.2"}, {"url": JUNK, "multiplier": "0.50"}], "phase": 1,
         "guidance_scale": 1},
        {"loras": [{"url": LOW, "multiplier": "1.0"}, {"url": JUNK, "multiplier": "0.50"}], "phase": 2,
         "guidance_scale": 1},
    ],
    "num_phases": 2, "steps_per_phase": [3, 3], "model_switch_phase": 1, "flow_shift": 5, "sample_solver": "euler",
}  # fmt: skip


@pytest.fixture(scope="module")
def registry(tiny_models_dir: Path) -> ModelRegistry:
    return ModelRegistry(tiny_models_dir)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    return write_keyframes(tmp_path_factory.mktemp("keys"), 3, size=(40, 36))


# ---- headless phase_config, LoRA forms, prompts ----------------------------------------------------------

def test_reigh_workers_phase_config_gives_each_phase_its_steps_guidance_and_lora_multipliers(
        registry: ModelRegistry) -> None:
    values = phase_config_values(REIGH_WORKER_PHASE_CONFIG, "phase_config")
    assert (values["num_inference_steps"], values["guidance_phases"], values["model_switch_phase"]) == (6, 2, 1)
    assert (values["sample_solver"], values["flow_shift"], values["guidance_scale"]) == ("euler", 5.0, 1.0)
    assert values["lora_names"] == [HIGH, JUNK, LOW]
    assert values["lora_multipliers"] == ["1.2;0", "0.50;0.50", "0;1.0"]
    resolved, _ = resolve(registry.get("tiny_vace_2_2"), values)
    plan = step_plan(resolved, dual_expert=True)
    assert [s.phase for s in plan] == [1, 1, 1, 2, 2, 2]
    assert [s.expert for s in plan] == ["high"] * 3 + ["low"] * 3


@pytest.mark.parametrize("solver,shift,counts", [("unipc", 5.0, [2, 2, 2]), ("euler", 5.0, [1, 4, 3]),
                                                 ("dpm++", 3.0, [3, 1, 2])])
def test_three_phase_configs_split_the_steps_exactly_and_switch_experts_after_phase_2(
        registry: ModelRegistry, solver: str, shift: float, counts: list[int]) -> None:
    """Reigh-Worker's phase_config defaults: 3 phases, model_switch_phase 2 (phase_config_parser.py)."""
    config = {"steps_per_phase": counts, "flow_shift": shift, "sample_solver": solver,
              "phases": [{"guidance_scale": 3.0}, {"guidance_scale": 1.0}, {"guidance_scale": 1.0}]}
    values = phase_config_values(config, "phase_config")
    resolved, _ = resolve(registry.get("tiny_vace_2_2"), values)
    plan = step_plan(resolved, dual_expert=True)
    assert [sum(s.phase == p for s in plan) for p in (1, 2, 3)] == counts
    assert [s.expert for s in plan] == ["high"] * (counts[0] + counts[1]) + ["low"] * counts[2]
    assert [s.guidance for s in plan] == [3.0] * counts[0] + [1.0] * (counts[1] + counts[2])


def test_a_phase_config_that_does_not_add_up_names_its_field() -> None:
    with pytest.raises(ValidationError) as error:
        phase_config_values({**REIGH_WORKER_PHASE_CONFIG, "steps_per_phase": [3]}, "orchestrator_details.phase_config")
    assert error.value.field == "orchestrator_details.phase_config.steps_per_phase"


def test_phase_config_replaces_the_rows_own_steps_and_says_so() -> None:
    """Reigh sends `steps` next to phase_config in basic mode (travelBetweenImages.ts); headless uses
    phase_config's steps_per_phase (Reigh-Worker travel/orchestrator.py)."""
    overridden: dict[str, str] = {}
    values = sampling(ParamReader({"steps": 8, "phase_config": REIGH_WORKER_PHASE_CONFIG}), overridden)
    assert values["num_inference_steps"] == 6 and overridden == {"steps": "replaced by phase_config"}


def test_additional_loras_extend_the_list_and_a_listed_file_keeps_its_multiplier() -> None:
    """Reigh's travel builder: `additional_loras: {lora.path: lora.strength}` (travelBetweenImages.ts);
    merged as Reigh-Worker's LoRAConfig.from_params does (source/core/params/lora.py)."""
    row = {"lora_names": [HIGH], "lora_multipliers": ["1.0;0"],
           "additional_loras": {"https://example.com/loras/Motion.safetensors": 0.7, HIGH: 0.3}}
    values = sampling(ParamReader(row), {})
    assert values["lora_names"] == [HIGH, "https://example.com/loras/Motion.safetensors"]
    assert values["lora_multipliers"] == ["1.0;0", "0.7"]


def test_wan2gp_activated_loras_and_a_multiplier_string_with_phases() -> None:
    """Wan2GP's own names: `activated_loras` and `loras_multipliers` as one space-separated string."""
    values = sampling(ParamReader({"activated_loras": ["CausVid.safetensors", "Detail"],
                                   "loras_multipliers": "1;0 0.5"}), {})
    assert (values["lora_names"], values["lora_multipliers"]) == (["CausVid.safetensors", "Detail"], ["1;0", "0.5"])
    with pytest.raises(ValidationError) as error:
        sampling(ParamReader({"activated_loras": ["a"], "lora_names": ["b"]}), {})
    assert "activated_loras" in str(error.value) and "lora_names" in str(error.value)


def reigh_orchestrator_row(images: list[str], **details: Any) -> dict[str, Any]:
    """A travel_orchestrator row as banodoco/Reigh's createTravelBetweenImagesTask writes it
    (src/shared/lib/tasks/travelBetweenImages.ts: buildTravelBetweenImagesPayload), with a VACE model."""
    payload = {
        "generation_source": "batch", "orchestrator_task_id": "sm_travel_orchestrator_1", "run_id": "run-1",
        "input_image_paths_resolved": images, "num_new_segments_to_generate": len(images) - 1,
        "base_prompts_expanded": ["", "out to sea"], "base_prompt": "drift", "negative_prompts_expanded": ["", ""],
        "enhanced_prompts_expanded": ["a slow drift into the forest", ""],
        "segment_frames_expanded": [9, 9], "frame_overlap_expanded": [4, 4], "parsed_resolution_wh": "40x36",
        "model_name": "tiny_vace_2_2", "model_type": "vace", "seed_base": 11111, "steps": 2,
        "after_first_post_generation_saturation": 1.3, "after_first_post_generation_brightness": 0,
        "debug_mode_enabled": False, "shot_id": "shot-1", "main_output_dir_for_run": "./outputs/default_travel_output",
        "enhance_prompt": False, "show_input_images": False, "generation_mode": "batch", "dimension_source": "project",
        "amount_of_motion": 0.5, "advanced_mode": False, "independent_segments": True,
        "text_before_prompts": "cinematic,", "text_after_prompts": "8k", "use_svi": False,
    }  # fmt: skip
    payload.update(details)
    return {"tool_type": "travel-between-images", "orchestrator_details": payload, "generation_name": "take 1"}


def test_reighs_orchestrator_payload_plans_with_the_headless_rules(images: list[str]) -> None:
    plan = plan_travel(reigh_orchestrator_row(images, independent_segments=False))
    assert [s.prompt for s in plan.segments] == ["cinematic, a slow drift into the forest 8k", "cinematic, out to sea 8k"]
    assert [s.frames for s in plan.segments] == [9, 13] and plan.overlaps == [4]  # 9 + 4 new frames -> 13 (4n+1)
    assert plan.expected_frames == 18 and plan.frame_rule == HEADLESS_RULE
    assert (plan.width, plan.height, plan.sampling["num_inference_steps"]) == (32, 32, 2)
    assert [s.seed for s in plan.segments] == [11111, 11112]
    assert plan.ignored_params == {}
    assert (plan.colour.saturation, plan.colour.brightness) == (1.3, 0)  # applied after the first segment


def test_independent_segments_open_on_their_own_keyframes_and_the_rule_is_recorded(images: list[str]) -> None:
    """Reigh's generateVideoService.ts sends independent_segments: true, chain_segments: false."""
    plan = plan_travel(reigh_orchestrator_row(images, chain_segments=False))
    assert plan.independent and plan.overlaps == [4] and [s.frames for s in plan.segments] == [9, 9]  # no context
    assert plan.frame_rule == HEADLESS_RULE + INDEPENDENT_RULE and plan.expected_frames == 9 + 9 - 4
    with pytest.raises(ValidationError) as error:
        plan_travel(reigh_orchestrator_row(images, chain_segments=True))
    assert error.value.field == "orchestrator_details.chain_segments"


def test_reighs_per_pair_phase_configs_and_loras_reach_their_segments(images: list[str]) -> None:
    """Reigh's pair overrides: `phase_configs_expanded` and `loras_per_segment_expanded` (one entry or
    null per segment; travelBetweenImages.ts), applied per segment as Reigh-Worker's segment handler
    does (the segment's LoRAs win over any phase config's)."""
    from worker.travel.plan import SegmentJob

    row = reigh_orchestrator_row(images, independent_segments=False, phase_config=REIGH_WORKER_PHASE_CONFIG,
                                 phase_configs_expanded=[None, {**REIGH_WORKER_PHASE_CONFIG, "steps_per_phase": [1, 3]}],
                                 loras_per_segment_expanded=[[{"id": "a", "path": "Motion.safetensors", "strength": 0.8,
                                                               "name": "Motion"}], None])
    plan = plan_travel(row)
    first, second = (SegmentJob.of(plan, i).sampling for i in (0, 1))
    assert (first["num_inference_steps"], first["lora_names"], first["lora_multipliers"]) == \
        (6, ["Motion.safetensors"], ["0.8"])
    assert (second["num_inference_steps"], second["lora_names"]) == (4, [HIGH, JUNK, LOW])
    assert not {key for key in plan.ignored_params if "expanded" in key}


def test_reighs_i2v_travel_runs_independent_segments_and_svi_is_refused(images: list[str]) -> None:
    """Reigh's current travel rows are i2v (generateVideoService.ts: independent_segments: true,
    chain_segments: false); the headless orchestrator never chains them, and SVI is not supported."""
    assert plan_travel(reigh_orchestrator_row(images, model_type="i2v", chain_segments=True)).independent
    with pytest.raises(ValidationError) as error:
        plan_travel(reigh_orchestrator_row(images, use_svi=True))
    assert error.value.field == "orchestrator_details.use_svi" and "SVI" in error.value.rule


# ---- the seed's forms ------------------------------------------------------------------------------------

def test_the_generation_task_shape_is_read_flat_and_a_conflict_names_both() -> None:
    """peteromallet/Headless-Wan2GP tasks/wan22_headless_integration.md: GenerationTask(id, model,
    prompt, parameters={"video_guide", "video_mask", "resolution"})."""
    task = GenerationTask("vace-demo-1", "vace_14B_cocktail_2_2", "A cat walking in a garden",
                          {"video_guide": "/g.mp4", "resolution": "1280x720"})
    assert flatten_generation_task(task.to_params()) == {"task_id": "vace-demo-1", "model": "vace_14B_cocktail_2_2",
                                                         "prompt": "A cat walking in a garden",
                                                         "video_guide": "/g.mp4", "resolution": "1280x720"}
    with pytest.raises(ValidationError) as error:
        flatten_generation_task({"prompt": "a", "parameters": {"prompt": "b"}})
    assert error.value.field == "parameters.prompt" and "top-level prompt" in error.value.rule


def test_vace_version_must_be_a_preset_of_model_name(registry: ModelRegistry) -> None:
    """The seed's "Task Configuration for Wan 2.1 VACE" pairs vace_version vace_21_14b with model_name vace_14B."""
    assert model_and_preset(ParamReader({"vace_version": "vace_21_14b", "model_name": "vace_14B"}), registry) == \
        ("vace_14B", "vace_21_14b")
    with pytest.raises(ValidationError) as error:
        model_and_preset(ParamReader({"vace_version": "vace_22_14b", "model_name": "vace_14B"}), registry)
    assert "vace_version" in str(error.value) and "model_name" in str(error.value)


# ---- through a worker on the tiny models -------------------------------------------------------------------

@pytest.fixture(scope="module")
def seed_models(tiny_models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny models with two LoRAs under the seed's short names (CausVid, DetailEnhancerV1)."""
    folder = tmp_path_factory.mktemp("seed_models")
    for item in tiny_models_dir.iterdir():
        (folder / item.name).symlink_to(item)
    (folder / "loras").unlink()
    (folder / "loras").mkdir()
    shutil.copy(tiny_models_dir / "loras" / "tiny_kohya.safetensors", folder / "loras" / "CausVid.safetensors")
    shutil.copy(tiny_models_dir / "loras" / "tiny_peft.safetensors", folder / "loras" / "DetailEnhancerV1.safetensors")
    return folder


@pytest.fixture(scope="module")
def seed_resources(seed_models: Path) -> WorkerResources:
    return WorkerResources(device="cpu", models_dir=seed_models)


def test_the_seeds_wan22_vace_travel_example_runs_with_every_key_honoured(
        sqlite_store: TaskStore, seed_resources: WorkerResources, images: list[str], tmp_path: Path) -> None:
    """"Task Configuration for Wan 2.2 VACE (Optimized)" from peteromallet/Headless-Wan2GP
    tasks/wan22_headless_integration.md, on the tiny Wan 2.2 VACE model and its preset (the seed's
    vace_22_14b / vace_14B_cocktail_2_2 pair), with keyframes and a small size added."""
    row = {
        "vace_version": "tiny_vace_22",
        "model_name": "tiny_vace_2_2",
        "num_inference_steps": 2,
        "guidance_scale": 1.0,
        "flow_shift": 2.0,
        "video_length": 9,
        "prompt": "A person walking through a forest",
        "lora_names": ["CausVid", "DetailEnhancerV1"],
        "lora_multipliers": [1.0, 0.2],
        "images": images[:3], "resolution": "32x32", "frame_overlap": 4,
    }
    task_id = sqlite_store.enqueue("travel_orchestrator", row)
    run_until_idle(sqlite_store, seed_resources, tmp_path / "out")
    task = sqlite_store.get(task_id)

    assert task.status == TaskStatus.COMPLETE, task.error_message
    result = task.result_data
    assert (result["model"], result["preset"], result["frames"]) == ("tiny_vace_2_2", "tiny_vace_22", 9 + 9 - 4)
    assert result["ignored_params"] == {}
    sources = result["parameter_sources"]
    for field, key in [("model", "model_name"), ("preset", "vace_version"), ("segment_frames", "video_length"),
                       ("prompt", "prompt"), ("num_inference_steps", "num_inference_steps"),
                       ("guidance_scale", "guidance_scale"), ("flow_shift", "flow_shift"),
                       ("lora_names", "lora_names"), ("lora_multipliers", "lora_multipliers")]:
        assert sources[field] == f"task ({key})", field
    assert sources["video_length"] == "task (video_length)"  # each segment's length is the seed's video_length
    parameters = result["parameters"]
    assert (parameters["num_inference_steps"], parameters["flow_shift"], parameters["video_length"]) == (2, 2.0, 9)
    assert (parameters["lora_names"], parameters["lora_multipliers"]) == (["CausVid", "DetailEnhancerV1"], ["1.0", "0.2"])
    assert probe(task.output_location).frames == 14


@pytest.mark.parametrize("task_type", ["t2v", "travel_orchestrator"])
def test_a_row_with_1e309_fails_at_once_naming_the_field(store: TaskStore, seed_resources: WorkerResources,
                                                        images: list[str], tmp_path: Path, task_type: str) -> None:
    """JSON numbers past a double (1e309) decode as inf: a ValidationError, not a retried OverflowError."""
    params = {"model": "tiny_vace", "prompt": "p", "images": images[:2]}
    task_id = store.enqueue(task_type, params)
    cast = "::jsonb" if "postgres" in str(store.db.engine.url) else ""
    with store.db.engine.begin() as conn:
        conn.execute(sa.text(f"UPDATE tasks SET params = CAST(:p AS {'jsonb' if cast else 'text'}) WHERE id = :id"),
                     {"p": json.dumps(params)[:-1] + ', "guidance_scale": 1e309}', "id": task_id})
    run_until_idle(store, seed_resources, tmp_path / "out")
    task = store.get(task_id)
    assert task.status == TaskStatus.FAILED and task.attempts == 1
    assert task.error_message.startswith("ValidationError: guidance_scale: must be a finite number"), task.error_message


def test_the_orchestrator_checks_a_job_without_creating_the_engine(sqlite_store: TaskStore, seed_models: Path,
                                                                  images: list[str], tmp_path: Path) -> None:
    """Validation is torch-free (wan_engine.schema): an orchestrator-only worker never builds an Engine."""
    resources = WorkerResources(device="cpu", models_dir=seed_models)
    good = sqlite_store.enqueue("travel_orchestrator", {"model": "tiny_vace", "prompt": "p", "images": images[:2],
                                                        "lora_names": ["causvid"]})
    bad = sqlite_store.enqueue("travel_orchestrator", {"model": "tiny_vace", "prompt": "p", "images": images[:2],
                                                       "lora_names": ["CausVid"], "lora_multipliers": ["1;0;0"]})
    run_until_idle(sqlite_store, resources, tmp_path / "out", task_types=("travel_orchestrator",))
    assert resources.engine is None
    assert sqlite_store.get(good).status == TaskStatus.IN_PROGRESS and len(sqlite_store.children(good)) == 2
    assert sqlite_store.get(bad).error_message.startswith("ValidationError: lora_multipliers:")


def test_unknown_keys_are_reported_on_the_row_and_no_op_keys_are_not(
        sqlite_store: TaskStore, seed_resources: WorkerResources, tmp_path: Path) -> None:
    task_id = sqlite_store.enqueue("t2v", {"model": "tiny_t2v", "prompt": "p", "resolution": "32x32", "video_length": 5,
                                           "steps": "2", "mystery_knob": 3, "debug": True, "shot_id": "s",
                                           "enhance_prompt": True, "x" * 50: "y" * 10_000,
                                           "structure_guidance": None, "uni3c_guide_video": ""})
    run_until_idle(sqlite_store, seed_resources, tmp_path / "out")
    task = sqlite_store.get(task_id)
    assert task.status == TaskStatus.COMPLETE, task.error_message
    assert task.result_data["ignored_params"] == {"mystery_knob": "not a parameter this worker uses",
                                                  "enhance_prompt": "a switch this worker does not honour",
                                                  "x" * 50: "not a parameter this worker uses"}
    assert task.result_data["parameter_sources"]["num_inference_steps"] == "request (steps)"


def test_reighs_wan_2_2_t2i_row_writes_one_png(sqlite_store: TaskStore, seed_resources: WorkerResources,
                                             seed_models: Path, file_server: FileServer, tmp_path: Path) -> None:
    """banodoco/Reigh src/shared/lib/tasks/imageGeneration.ts: {task_id, model, prompt, resolution, seed,
    negative_prompt, steps, additional_loras: {url: strength}}; Reigh-Worker sets video_length 1 for
    wan_2_2_t2i. The LoRA URL is served by a local HTTP server and fetched like any other."""
    url = file_server.serve("/loras/ReighStyle.safetensors", (seed_models / "loras" / "CausVid.safetensors").read_bytes())
    row = {"task_id": "image-1", "model": "tiny_t2v_2_2", "prompt": "a lighthouse", "resolution": "32x32",
           "seed": 11111, "negative_prompt": "", "steps": 2, "additional_loras": {url: 0.5}}
    task_id = sqlite_store.enqueue("wan_2_2_t2i", row)
    run_until_idle(sqlite_store, seed_resources, tmp_path / "out")
    task = sqlite_store.get(task_id)
    assert task.status == TaskStatus.COMPLETE, task.error_message
    assert task.output_location.endswith(".png") and Image.open(task.output_location).size == (32, 32)
    assert task.result_data["frames"] == 1 and task.result_data["ignored_params"] == {}
    assert task.result_data["parameters"]["lora_multipliers"] == ["0.5"]
    assert (seed_models / "loras" / "ReighStyle.safetensors").is_file()


def reigh_segment_row(images: list[str], index: int, **own: Any) -> dict[str, Any]:
    """A travel_segment row as the headless orchestrator writes it (banodoco/Reigh-Worker
    source/task_handlers/travel/orchestrator.py, segment_payload): the segment's own values and the
    whole payload under orchestrator_details."""
    details = reigh_orchestrator_row(images[:2], base_prompts_expanded=["a walk"], negative_prompts_expanded=[""],
                                     enhanced_prompts_expanded=[""], segment_frames_expanded=[9],
                                     frame_overlap_expanded=[4])["orchestrator_details"]
    return {"orchestrator_task_id_ref": "orch-1", "orchestrator_run_id": "run-1", "project_id": None,
            "segment_index": index, "is_first_segment": index == 0, "is_last_segment": True, "child_order": index,
            "base_prompt": "cinematic, a walk 8k", "negative_prompt": "", "segment_frames_target": 9,
            "frame_overlap_from_previous": 0, "parsed_resolution_wh": details["parsed_resolution_wh"],
            "model_name": details["model_name"], "seed_to_use": 11111, "fps_helpers": 16,
            "debug_mode_enabled": False, "orchestrator_details": details, **own}


def test_headless_written_segments_and_individual_segments_run(sqlite_store: TaskStore, seed_resources: WorkerResources,
                                                               images: list[str], tmp_path: Path) -> None:
    segment_id = sqlite_store.enqueue("travel_segment", reigh_segment_row(images, 0))
    individual = reigh_segment_row(images, 0, individual_segment_params={
        "num_frames": 5, "base_prompt": "a short walk", "seed_to_use": 42, "motion_mode": "basic"})
    individual_id = sqlite_store.enqueue("individual_travel_segment", individual)
    run_until_idle(sqlite_store, seed_resources, tmp_path / "out")

    segment, alone = sqlite_store.get(segment_id), sqlite_store.get(individual_id)
    assert segment.status == alone.status == TaskStatus.COMPLETE, (segment.error_message, alone.error_message)
    assert (segment.result_data["frames"], segment.result_data["seed"]) == (9, 11111)
    assert (alone.result_data["frames"], alone.result_data["seed"]) == (5, 42)
    assert segment.result_data["colour_adjustments"]["saturation"] == 1.3
    assert "is_first_segment" not in segment.result_data["ignored_params"]


def test_the_queue_client_submits_waits_and_cancels_like_the_seeds_queue(
        sqlite_store: TaskStore, seed_resources: WorkerResources, tmp_path: Path) -> None:
    """The seed's usage: queue.submit_task(GenerationTask(id="vace-demo-1", ...)) and submit_vace_task."""
    guide = tmp_path / "guide.mp4"
    with VideoWriter(guide, 8, 32, 32) as writer:
        writer.write(np.full((5, 32, 32, 3), 90, np.uint8))
    queue = QueueClient(str(sqlite_store.db.engine.url))
    queue.submit_task(GenerationTask("vace-demo-1", "tiny_vace", "A cat walking in a garden",
                                     {"video_guide": str(guide), "resolution": "32x32", "video_length": 5,
                                      "num_inference_steps": 2}))
    queue.submit_vace_task("vace-demo-2", "A cat", str(guide), use_wan22=False, num_inference_steps=25)
    assert queue.status("vace-demo-2") == "Queued" and queue.cancel("vace-demo-2")
    stored = sqlite_store.get(row_id("vace-demo-2")).params
    assert (stored["model"], stored["parameters"]["num_inference_steps"]) == ("vace_14B", 25)

    run_until_idle(sqlite_store, seed_resources, tmp_path / "out")
    task = queue.wait("vace-demo-1", timeout=5)
    assert task.status == TaskStatus.COMPLETE, task.error_message
    assert probe(task.output_location).frames == 5 and queue.status("vace-demo-2") == "Cancelled"
    queue.submit_task(GenerationTask("vace-demo-3", "tiny_vace", "p", {}))
    with pytest.raises(TimeoutError):
        queue.wait("vace-demo-3", timeout=0.1, poll_seconds=0.05)


def test_json_of_a_plan_stays_linear_in_the_keyframes(images: list[str]) -> None:
    """Children carry only their own segment; the whole plan is stored once (on the stitch)."""
    from worker.travel.plan import SegmentJob

    many = images[:2] * 40
    plan = plan_travel({"images": many, "prompt": "p", "segment_frames": 9, "frame_overlap": 2})
    sizes = [len(json.dumps(SegmentJob.of(plan, i).to_params())) for i in (0, len(plan.segments) - 1)]
    assert max(sizes) < 2 * min(sizes) and max(sizes) * 20 < len(json.dumps(plan.to_params()))


@pytest.mark.parametrize(("width", "height"), [(32, 32), (48, 24)])
def test_a_headless_journey_continues_a_video_and_the_stitch_starts_with_it(
        sqlite_store: TaskStore, seed_resources: WorkerResources, images: list[str], tmp_path: Path,
        width: int, height: int) -> None:
    """`continue_from_video_resolved_path` as the headless orchestrator reads it (Reigh-Worker
    travel/orchestrator.py: the first segment takes frame_overlap_expanded[0] frames of the video;
    travel/stitch.py prepends the video): one keyframe, one segment from the video's end to it.
    A video of another size than the job's guides the segment scaled to the job's size, and the
    stitch, like the headless one, gives the result the continued video's size."""
    earlier = tmp_path / "earlier.mp4"
    frames = np.stack([np.full((height, width, 3), 20 * i, np.uint8) for i in range(9)])
    with VideoWriter(earlier, 16, width, height) as writer:
        writer.write(frames)
    row = reigh_orchestrator_row(images[:1], continue_from_video_resolved_path=str(earlier), chain_segments=True,
                                 independent_segments=False, base_prompts_expanded=["onwards"],
                                 negative_prompts_expanded=[""], enhanced_prompts_expanded=[""],
                                 segment_frames_expanded=[9], frame_overlap_expanded=[4], parsed_resolution_wh="32x32",
                                 num_new_segments_to_generate=1)
    task_id = sqlite_store.enqueue("travel_orchestrator", row)
    run_until_idle(sqlite_store, seed_resources, tmp_path / "out")
    task = sqlite_store.get(task_id)
    assert task.status == TaskStatus.COMPLETE, task.error_message
    assert task.result_data["frames"] == probe(task.output_location).frames == 9 + 9 - 4
    assert (task.result_data["width"], task.result_data["height"]) == (width, height)
    assert task.result_data.get("scaled_videos", []) == ([] if (width, height) == (32, 32) else [1])
    head = read_video(task.output_location)[:5].astype(int)
    assert np.abs(head - frames[:5].astype(int)).mean() < 4  # the continued video, re-encoded


def test_the_in_process_generator_loads_a_model_and_returns_the_videos_path(seed_models: Path, tmp_path: Path) -> None:
    """The seed's direct usage: orchestrator.load_model(key); orchestrator.generate_vace(prompt=..., video_guide=...,
    num_inference_steps=..., guidance_scale=...) (peteromallet/Headless-Wan2GP wan22_headless_integration.md)."""
    guide = tmp_path / "control.mp4"
    with VideoWriter(guide, 8, 32, 32) as writer:
        writer.write(np.full((5, 32, 32, 3), 60, np.uint8))
    generator = InProcessGenerator(models_dir=seed_models, output_dir=tmp_path / "out", device="cpu")
    generator.load_model("tiny_vace_2_2")
    assert (generator.model_family(), generator.is_vace(), generator.model_family("tiny_t2v")) == ("wan2_2", True, "wan2_1")
    path = generator.generate_vace(prompt="A person dancing", video_guide=str(guide), num_inference_steps=2,
                                   guidance_scale=1.0, resolution="32x32", video_length=5)
    assert probe(path).frames == 5 and Path(path).parent.parent == tmp_path / "out"
    with pytest.raises(ValidationError) as error:
        generator.generate_t2v("a fox", model="tiny_t2v", steps="2_0", resolution="32x32", video_length=5)
    assert error.value.field == "steps (num_inference_steps)"


def test_a_prompt_over_the_limit_and_a_budget_over_the_limit_fail_before_any_work(
        sqlite_store: TaskStore, seed_resources: WorkerResources, images: list[str], tmp_path: Path) -> None:
    """Limits are settings (max_prompt_chars, max_keyframes, max_pixel_frames), checked before any work."""
    long_prompt = sqlite_store.enqueue("t2v", {"model": "tiny_t2v", "prompt": "p" * 101, "resolution": "32x32"})
    too_big = sqlite_store.enqueue("travel_orchestrator", {"model": "tiny_vace", "prompt": "p", "images": images[:2],
                                                           "resolution": "64x64", "segment_frames": 33})
    run_until_idle(sqlite_store, seed_resources, tmp_path / "out", max_prompt_chars=100,
                   max_pixel_frames=64 * 64 * 32)
    failed = [sqlite_store.get(task_id) for task_id in (long_prompt, too_big)]
    assert [task.attempts for task in failed] == [1, 1]
    assert failed[0].error_message.startswith("ValidationError: prompt: has 101 characters")
    assert failed[1].error_message.startswith("ValidationError: segment_frames: 64x64 x 33 frames")


def test_the_claims_resolved_model_knows_the_seeds_names() -> None:
    """Affinity reads the row's model by the schema's names: the seed's vace_version and model_name."""
    from worker.model_keys import resolved_model

    assert resolved_model({"vace_version": "vace_22_14b", "model_name": "vace_14B_cocktail_2_2"}) == "vace_14B_cocktail_2_2"
    assert resolved_model({"vace_version": "vace_21_14b"}) == "vace_14B"
    assert resolved_model({"orchestrator_details": {"model_name": "vace_14B"}}) == "vace_14B"


def test_an_independent_job_runs_its_segments_without_waiting_and_cross_fades_them(
        sqlite_store: TaskStore, seed_resources: WorkerResources, images: list[str], tmp_path: Path) -> None:
    """`independent_segments: true` (Reigh's default): no segment reads another, the stitch still joins them."""
    job = sqlite_store.enqueue("travel_orchestrator", {"model": "tiny_vace", "prompt": "p", "images": images,
                                                       "resolution": "32x32", "segment_frames": 9, "frame_overlap": 2,
                                                       "num_inference_steps": 2, "independent_segments": True})
    run_until_idle(sqlite_store, seed_resources, tmp_path / "out")
    task = sqlite_store.get(job)
    assert task.status == TaskStatus.COMPLETE, task.error_message
    segments = [child for child in sqlite_store.children(job) if child.task_type == "travel_segment"]
    assert len(segments) == 2 and all(child.dependant_on == [] for child in segments)
    assert task.result_data["frames"] == probe(task.output_location).frames == 9 + 9 - 2
    assert all(child.result_data["kept_frames"] == [0, 8] for child in segments)  # each opens on its own keyframe
