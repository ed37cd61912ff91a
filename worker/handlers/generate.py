"""`generate_video` and its aliases (`t2v`, `t2v_22`, `vace`, `vace_21`, `vace_22`, `i2v`, `i2v_22`): one generation
through the resident engine, written as one mp4 with a first-frame thumbnail; `wan_2_2_t2i`: one
frame of a Wan 2.2 text-to-video model, written as a PNG.

Rows come in our form, the seed's (`model_name`, `vace_version`, the GenerationTask shape
`{"model", "prompt", "parameters": {...}}`) and headless Wan2GP / Reigh's (`steps`, `phase_config`,
`additional_loras`, `activated_loras` + `loras_multipliers`, `base_prompt`): worker/dialects.py and
wan_engine/schema.py read them all into one request. Keys that change nothing here are reported in
`result_data.ignored_params` and logged.
"""
from __future__ import annotations

from worker.generation import (
    DEFAULT_MODELS,
    IMAGE_TASK,
    generation_result_data,
    install_lora_urls,
    publish_outputs,
    read_generation,
    render_video,
    run_generation,
)
from worker.handlers import HandlerResult, TaskContext, register
from worker.video import save_png

IMAGE_MODEL = "t2v_2_2"  # what wan_2_2_t2i runs when the row names neither model nor preset


@register(*DEFAULT_MODELS)
def generate_video(ctx: TaskContext) -> HandlerResult:
    """Validate the row, run one generation, write the mp4 and its thumbnail to the task's folder."""
    row = read_generation(ctx.task.params, resources=ctx.resources, limits=ctx.config.limits, output_dir=ctx.output_dir,
                          log=ctx.log, default_model=DEFAULT_MODELS[ctx.task.task_type],
                          install_loras=lambda names: install_lora_urls(ctx, names))
    return render_video(ctx, row)


@register(IMAGE_TASK)
def generate_image(ctx: TaskContext) -> HandlerResult:
    """`wan_2_2_t2i`: one frame from a Wan 2.2 text-to-video model, written as a PNG."""
    row = read_generation(ctx.task.params, resources=ctx.resources, limits=ctx.config.limits, output_dir=ctx.output_dir,
                          log=ctx.log, default_model=IMAGE_MODEL, one_frame=True,
                          install_loras=lambda names: install_lora_urls(ctx, names))
    ctx.raise_if_cancelled()
    generation = run_generation(ctx, row.request)
    output = save_png(generation.frames[0], row.output)
    result_data = generation_result_data(generation, preset=row.preset, worker_parameters=row.worker_parameters,
                                         fps=row.fps, output=output, thumbnail=output)
    row.row_result_data(result_data)
    return HandlerResult(output_location=publish_outputs(ctx, result_data, output), result_data=result_data)
