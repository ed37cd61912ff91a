"""`travel_segment`: one VACE or image-to-video generation from a keyframe (or the previous segment's
last frames) to the next keyframe; `individual_travel_segment`: one segment of a travel job re-made
on its own.

Image-to-video: the segment is conditioned on its start frame (image_start) and the next keyframe
(image_end). Chained, the start frame is the previous segment's frame where their overlap begins
(its last frame without overlap), so the overlapping frames run side by side for the cross-fade;
independent segments start on their own keyframe and read no predecessor.

The guide opens with the previous segment's last `overlap` frames (read from its output_location;
dependant_on guarantees it is Complete) or, for the first segment and independent ones, the start
image; it ends on the end image (a single-keyframe journey has none); the frames between are
generated (worker/travel/guide.py). The output is <output_dir>/<task id>/segment-<i>.mp4, or with
--storage-url its object, which the next segment and the stitch read from whatever box they run on
(segment_video). Once it is written, the parked orchestrator's progress says how many segments are
done (report_job_progress).

Three row forms:
* ours, written by travel_orchestrator: `job` (the segment and the job's shared settings) and
  `previous_segment_task_id`;
* written by the headless Wan2GP / Reigh orchestrator: `orchestrator_details` (the whole travel
  payload; or its older name `full_orchestrator_payload`, or none and the orchestrator row named by
  `orchestrator_task_id_ref` holds it) and `segment_index`, with the segment's own `base_prompt`, `negative_prompt`,
  `segment_frames_target`, `frame_overlap_from_previous` and `seed_to_use`, which win over the
  payload's; the previous segment is the row's dependency;
* `individual_travel_segment` (Reigh): `orchestrator_details` and `segment_index` (default 0), and
  `individual_segment_params` (`base_prompt`, `enhanced_prompt`, `negative_prompt`, `num_frames`,
  `seed_to_use`, `input_image_paths_resolved` [start, end], `start_image_url`, `end_image_url`), which
  win; the segment is planned as an independent one, opening on its own start image. The app's
  payload holds only the pair, so a `segment_index` past its segments is the pair's place in the
  timeline; re-making a segment after the first with a continuation is refused (its predecessor's
  video is found through the app's generation lineage, which this worker does not have).

The April 2026 headless orchestrator also writes the canonical `num_frames` and `seed` next to
`segment_frames_target` and `seed_to_use` (the canonical ones win), `model_family`, and the segment's
`travel_guidance` (its own structure guidance, which wins over the payload's: docs/guidance.md).

With structure guidance, the generated frames of a VACE segment's guide show the guidance's control
frames for their timeline frames (worker/travel/guidance.py) before the generation.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from wan_engine.errors import echo
from worker.dialects import (
    PHASE_CONFIG,
    check_model_family,
    copies_phase_loras,
    ignored_params,
    lora_objects,
    segment_overrides,
)
from worker.errors import ValidationError
from worker.generation import (
    check_request,
    generation_result_data,
    install_lora_urls,
    publish_outputs,
    report_ignored,
    resolve_model,
    run_generation,
    write_video,
)
from worker.handlers import HandlerResult, TaskContext, register
from worker.params import ParamReader, local_path, round_to_frame_count
from worker.paths import output_file
from worker.travel.colour import ColourAdjustments, read_colour
from worker.travel.guidance import Guidance, check_runnable, gives_guidance, guide_segment, place, read_guidance
from worker.travel.guide import segment_guide
from worker.travel.plan import (
    CONTINUATION,
    DEFAULT_MODEL,
    HEADLESS_KEY,
    NO_CONTINUATION,
    SegmentJob,
    TravelPlan,
    continuation_strategy,
    read_travel,
)
from worker.travel_children import (
    HEADLESS_REF,
    SEGMENT_JOB_PARAM,
    headless_payload,
    is_headless_child,
    report_job_progress,
    segment_video,
    stored_segment_job,
)
from worker.video import FFmpegError, check_image, load_image, read_last_frames

INDIVIDUAL_TASK = "individual_travel_segment"
INDIVIDUAL_PARAMS = "individual_segment_params"
# Segment-level keys of a headless segment row (and of its individual_segment_params, which win) ->
# the SegmentPlan field they set; of two keys for one field the later wins, as the headless segment
# handler prefers enhanced_prompt, num_frames and seed (reigh-worker tasks/task_registry.py
# _resolve_generation_inputs, _build_generation_params).
_HEADLESS_SEGMENT_KEYS = {"base_prompt": "prompt", "enhanced_prompt": "prompt", "negative_prompt": "negative_prompt",
                          "segment_frames_target": "frames", "num_frames": "frames",
                          "frame_overlap_from_previous": "overlap", "seed_to_use": "seed", "seed": "seed",
                          "start_image_url": "start_image", "end_image_url": "end_image"}
_TEXT_KEYS = ("prompt", "negative_prompt", "start_image", "end_image")
# An individual segment's [start, end] images, which its start_image_url / end_image_url override
# (reigh-worker tasks/task_registry.py _resolve_image_references).
PAIR_IMAGES = "input_image_paths_resolved"


@register("travel_segment", INDIVIDUAL_TASK)
def travel_segment(ctx: TaskContext) -> HandlerResult:
    from wan_engine.request import GenerationRequest

    params = ctx.task.params
    if SEGMENT_JOB_PARAM in params:
        reader = ParamReader(params)
        job, previous_id = stored_segment_job(params), reader.text("previous_segment_task_id", None)
        reader.used |= {SEGMENT_JOB_PARAM, "segment_index", "model", "preset"}
        ignored = ignored_params(reader)
        install_lora_urls(ctx, job.sampling.get("lora_names"))  # the orchestrator may have run on another box
    elif is_headless_child(params):
        ignored, job, previous_id = _headless_segment(ctx, params)
    else:
        raise ValidationError(SEGMENT_JOB_PARAM, f"required: a segment written by travel_orchestrator, or the "
                                                 f"headless form ({HEADLESS_KEY} or {HEADLESS_REF}, + segment_index)")
    report_ignored(ctx.log, ignored)
    segment, index = job.segment, job.segment.index

    end = None
    if segment.end_image is not None:
        end = _keyframe(segment.end_image, job, f"images[{index + 1}]")
    continues = not job.independent and (index > 0 or segment.previous_video is not None)
    guidance_facts = None

    def preceding(count: int) -> np.ndarray:
        """The last `count` frames of what this segment continues: the video its journey continues,
        or the previous segment's output."""
        if segment.previous_video is not None:
            video = local_path(segment.previous_video, "continue_from_video")
            return _last_frames(video, count, "continue_from_video", (job.width, job.height))
        if previous_id is None:
            raise ValidationError("previous_segment_task_id", f"segment {index} continues its previous segment, "
                                                              "and the row names none (no dependency)")
        return _previous_tail(ctx, previous_id, count, (job.width, job.height))

    if job.image_to_video:  # conditioned on its first and last frames
        if continues:  # the frame where the overlap with what came before begins (its last frame without one)
            start = preceding(max(segment.overlap, 1))[0]
        else:
            start = _keyframe(segment.start_image, job, f"images[{index}]")
        conditioning = {"image_start": start, "image_end": end}
        kept_frames = [0, segment.frames - 1] if end is not None else [0]
    else:  # VACE: a guide video; with an overlap, what came before opens it, so the start image is not decoded
        head = segment.overlap if continues else 0
        start = tail = None
        if head:
            tail = job.colour.guide_head(preceding(head))
        elif segment.previous_video is not None:  # a continued journey without overlap opens on the video's end
            start = preceding(1)[-1]
        else:
            start = _keyframe(segment.start_image, job, f"images[{index}]")
        guide = segment_guide(segment.frames, head, start, end, tail)
        if job.guidance is not None:
            ctx.report_progress({"phase": "structure_guidance", "segment": index, "segments": job.segment_count})
            started = time.monotonic()
            guided = guide_segment(guide, job.guidance, job.guidance_offset, (job.width, job.height), job.fps,
                                   ctx.resources.annotators().annotate)
            guide = guided.guide
            guidance_facts = {"mode": job.guidance.mode, "timeline_offset": job.guidance_offset,
                              "frames": guided.frames, "sources": guided.sources,
                              "seconds": round(time.monotonic() - started, 3)}
        conditioning = {"video_guide": guide.guide, "video_mask": guide.mask}
        kept_frames = guide.kept_frames

    request = GenerationRequest(
        model=job.preset or job.model,
        prompt=segment.prompt,
        negative_prompt=segment.negative_prompt,
        width=job.width,
        height=job.height,
        video_length=segment.frames,
        seed=segment.seed,
        **conditioning,
        **job.sampling,
    )
    ctx.raise_if_cancelled()
    generation = run_generation(ctx, request, {"segment": index, "segments": job.segment_count})
    if len(generation.frames) != segment.frames:
        raise RuntimeError(f"the engine returned {len(generation.frames)} frames for a {segment.frames}-frame segment")
    if index > 0 or segment.previous_video is not None:  # Reigh's adjustments of the segments after the first
        generation.frames = job.colour.after_first(generation.frames)
    output = output_file(ctx.output_dir, f"segment-{index}.mp4")
    ctx.report_progress({"phase": "video_encode", "segment": index, "segments": job.segment_count})
    thumbnail, encode_seconds = write_video(generation.frames, output, job.fps)
    generation.phase_seconds["video_encode"] = encode_seconds
    if guidance_facts is not None:
        generation.phase_seconds["structure_guidance"] = guidance_facts.pop("seconds")
    report_job_progress(ctx, job.segment_count, job.expected_frames, phase="segments", done=index + 1)

    result_data = generation_result_data(
        generation,
        preset=job.preset,
        worker_parameters={
            "width": (job.width, "plan"),
            "height": (job.height, "plan"),
            "video_length": (segment.frames, "plan"),
            "seed": (segment.seed, "plan (seed + segment index)"),
            "fps": (job.fps, "plan"),
            "overlap": (segment.overlap, "plan"),
            "prompt": (segment.prompt, "plan (the segment's prompt after its fallbacks)"),
            "negative_prompt": (segment.negative_prompt, "plan"),
        },
        fps=job.fps,
        output=output,
        thumbnail=thumbnail,
    )
    result_data.update(segment_index=index, orchestrator_task_id=params.get("orchestrator_task_id"),
                       kept_frames=kept_frames, ignored_params=ignored)
    if job.colour != ColourAdjustments():
        result_data["colour_adjustments"] = job.colour.to_params()
    if guidance_facts is not None:
        result_data["structure_guidance"] = guidance_facts
    return HandlerResult(output_location=publish_outputs(ctx, result_data, output, thumbnail), result_data=result_data)


def _headless_segment(ctx: TaskContext, params: dict[str, Any]) -> tuple[dict[str, str], SegmentJob, str | None]:
    """(ignored params, the segment's job, the previous segment's id) of a segment row written by
    the headless orchestrator or an `individual_travel_segment` row: the job is planned from the
    payload like an orchestrator would, then the segment's own values win."""
    individual = ctx.task.task_type == INDIVIDUAL_TASK
    reader = ParamReader(params)
    payload = headless_payload(ctx, reader)
    readers = [reader]
    if reader.has(INDIVIDUAL_PARAMS):
        reader.used.add(INDIVIDUAL_PARAMS)
        readers.append(ParamReader(params[INDIVIDUAL_PARAMS], prefix=f"{INDIVIDUAL_PARAMS}."))
    own: dict[str, Any] = {}
    for source in readers:  # individual_segment_params last: they win
        pair = source.texts(PAIR_IMAGES, None) if individual else None
        if pair is not None and len(pair) >= 2:  # a re-made segment's own pair; its *_image_url win
            own["start_image"], own["end_image"] = pair[:2]
        for key, name in _HEADLESS_SEGMENT_KEYS.items():
            if name == "overlap" and individual:
                continue
            value = (source.text if name in _TEXT_KEYS else source.integer)(key, None)
            if value is not None and value != "":
                own[name] = value
    # An individual segment's payload carries no prompts of its own (individualTravelSegment.ts): the
    # segment's prompt stands in for them while the payload is planned.
    plan, details = read_travel({HEADLESS_KEY: payload}, ctx.config.limits, independent=individual,
                                segment_prompt=own.get("prompt"))
    count = len(plan.segments)
    index = reader.integer("segment_index", 0 if individual else None, minimum=0,
                           maximum=None if individual else count - 1)
    if index is None:
        raise ValidationError("segment_index", "is required")
    payload_strategy = continuation_strategy(details)
    for source in readers:  # the segment's own family and continuation, checked like the payload's
        check_model_family(source)
        strategy = continuation_strategy(source) or payload_strategy
        if individual and index > 0 and strategy not in (None, NO_CONTINUATION):
            raise ValidationError(source.prefix + CONTINUATION,
                                  f"re-making segment {index} alone with {echo(strategy)} needs its predecessor's "
                                  "video, which an individual_travel_segment row does not name; send it without "
                                  "a continuation (independent) or re-run the travel job")
    planned = index
    if individual and index >= count:  # the app's re-make carries only its own pair, at its place in the timeline
        if "start_image" not in own:
            raise ValidationError("segment_index", f"is {index}, but the payload plans {count} segment(s) and the "
                                                   "row names no images of its own (start_image_url)")
        planned = 0
    segment = replace(plan.segments[planned], index=index)
    for name in ("start_image", "end_image"):
        if name in own:
            check_image(local_path(own[name], name), name)
    if "frames" in own:
        own["frames"] = round_to_frame_count(own["frames"], "segment_frames_target")
    segment = replace(segment, **own)
    if not 0 <= segment.overlap < segment.frames:
        raise ValidationError("frame_overlap_from_previous", f"{segment.overlap} frames do not fit a "
                                                             f"{segment.frames}-frame segment")
    spec = resolve_model(ctx.resources, details, DEFAULT_MODEL)
    job = replace(SegmentJob.of(plan, planned), segment=segment, image_to_video=spec.is_image_to_video,
                  colour=plan.colour)
    guidance = _segment_guidance(readers, details, plan, remake=individual and index >= count)
    if guidance.guidance is not None:
        check_runnable(guidance.guidance, spec.is_image_to_video, spec.key, (plan.width, plan.height), ctx.resources)
        job = replace(job, guidance=guidance.guidance, guidance_offset=guidance.offset or job.guidance_offset)
    for source in readers:  # the row's own copies of the adjustments win, individual_segment_params last
        job = replace(job, colour=read_colour(source, job.colour))
    if len(readers) > 1:  # individual_segment_params may carry the segment's own phase config and LoRAs
        own_params = readers[-1]
        own_params.used.update(("phase_config", "segment_loras"))
        overrides = segment_overrides(own_params.params.get("phase_config"), own_params.params.get("segment_loras"),
                                      f"{INDIVIDUAL_PARAMS}.phase_config", f"{INDIVIDUAL_PARAMS}.segment_loras")
        job = replace(job, sampling={**job.sampling, **overrides})
    model = job.preset or job.model
    install_lora_urls(ctx, job.sampling.get("lora_names"))
    check_request(ctx.resources, ctx.config.limits,
                  {**job.sampling, "model": model, "prompt": segment.prompt, "width": job.width,
                   "height": job.height, "video_length": segment.frames}, details.schema, details.prefix)
    ignored = {**{key: reason for key, reason in plan.ignored_params.items() if key not in guidance.superseded},
               **_unhonoured_row_keys(readers, details), **guidance.ignored}
    previous = ctx.task.dependant_on[0] if ctx.task.dependant_on and not individual else None
    return ignored, job, previous


@dataclass
class _SegmentGuidance:
    guidance: Guidance | None
    offset: int | None = None  # where the segment starts in the guidance's timeline, when not the plan's
    ignored: dict[str, str] = field(default_factory=dict)
    superseded: frozenset[str] = frozenset()  # the plan's reports about the payload's videos, placed again


def _segment_guidance(readers: list[ParamReader], details: ParamReader, plan: TravelPlan,
                      remake: bool) -> _SegmentGuidance:
    """The structure guidance of a headless segment row: its own (individual_segment_params, then the
    row; kind "none": none) over its payload's, placed on the journey's timeline. An app re-make (an
    individual_travel_segment whose payload holds only its pair, at a place in the shot it does not
    say) starts where its videos start: the app lays a re-made segment's structure video over exactly
    that segment (reigh-app media-lightbox submitSegmentTask.ts: start_frame = the segment's start)."""
    own = next((read_guidance(source) for source in reversed(readers) if gives_guidance(source)), None)
    superseded: frozenset[str] = frozenset()
    payload = None
    if remake and plan.guidance is not None:  # the payload's again, before the plan fitted it to one pair
        payload = read_guidance(details)
        superseded = frozenset(video.field for video in payload.guidance.videos)
    reading = own or payload
    if reading is None:
        return _SegmentGuidance(plan.guidance)
    guidance, ignored = reading.guidance, dict(reading.ignored)
    if guidance is None:
        return _SegmentGuidance(None, ignored=ignored, superseded=superseded)
    offset = min((video.start_frame for video in guidance.videos), default=None) if remake else None
    guidance, unplaced = place(guidance, plan.timeline_frames + (offset or 0))
    return _SegmentGuidance(guidance, offset, {**ignored, **unplaced}, superseded)


def _unhonoured_row_keys(readers: list[ParamReader], details: ParamReader) -> dict[str, str]:
    """ignored_params of a headless segment row (readers: the row, then its individual_segment_params)
    whose payload `details` was planned: the payload keys the headless orchestrator copies onto each
    segment row are honoured through it; with a phase config in effect it alone gives the segment its
    LoRAs (reigh-worker task_registry.py), so the row's own lora_names / lora_multipliers are replaced,
    except the app's [{url, multiplier}] copy of the phase config's LoRAs (individualTravelSegment.ts),
    which asks for nothing."""
    row, params = readers[0], readers[0].params
    for key in list(row.unread()):
        if key in details.params and details.params[key] == params[key]:
            row.used.add(key)
    replaced: dict[str, str] = {}
    phase_config = next((source.params[PHASE_CONFIG] for source in (*readers[1:], details) if source.has(PHASE_CONFIG)),
                        None)
    for key in ("lora_names", "lora_multipliers") if phase_config is not None else ():
        if key in row.unread() and params[key] not in (None, "", []):
            row.used.add(key)
            objects = lora_objects(params[key]) if key == "lora_multipliers" else None
            if objects is None or not copies_phase_loras(objects, phase_config):
                replaced[key] = f"replaced by {PHASE_CONFIG}"
    return {**replaced, **{key: reason for source in readers for key, reason in ignored_params(source).items()}}


def _keyframe(value: str, job: SegmentJob, field: str) -> np.ndarray:
    """A keyframe (a path or a URL fetched on this box) fitted to the job's resolution."""
    return load_image(local_path(value, field), job.width, job.height, field=field)


def _previous_tail(ctx: TaskContext, previous_id: str, overlap: int, size: tuple[int, int]) -> np.ndarray:
    """The last `overlap` frames of the previous segment's video at `size`, uint8 [overlap, H, W, 3]
    (streamed: only those frames are kept)."""
    previous = ctx.store.get(previous_id)
    if previous is None or not previous.output_location:
        raise ValidationError("previous_segment_task_id", f"segment {previous_id} has no output to continue from")
    return _last_frames(segment_video(previous, "previous_segment_task_id"), overlap, "previous_segment_task_id", size)


def _last_frames(location: str | Path, overlap: int, field: str, size: tuple[int, int]) -> np.ndarray:
    """The last `overlap` frames of the local video at `location` (a previous segment's output, or the
    video a journey continues), uint8 [overlap, H, W, 3], scaled to `size` (width, height) where that
    video has another (as the headless guide builder does)."""
    try:
        frames = read_last_frames(location, overlap, size)
    except FileNotFoundError:
        raise ValidationError(field, f"the video to continue from is gone: {location}") from None
    except FFmpegError as error:
        raise ValidationError(field, f"not a readable video: {error}") from None
    if len(frames) < overlap:
        raise ValidationError(field, f"{location} has {len(frames)} frames, fewer than the overlap {overlap}")
    return frames
