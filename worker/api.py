"""The seed's Python API (Headless-Wan2GP's HeadlessTaskQueue / WanOrchestrator usage), on top of this
worker: no second queue and no second way of reading parameters.

Queue form: tasks are rows of the `tasks` table that `wan-worker run` executes.

    queue = QueueClient("postgresql://...")      # or sqlite:///wan-worker.db
    queue.submit_task(GenerationTask(id="vace-demo-1", model="vace_14B_cocktail_2_2",
                                     prompt="A cat walking in a garden",
                                     parameters={"video_guide": "/path/control.mp4", "resolution": "1280x720"}))
    queue.submit_vace_task("vace-demo-2", "A cat", "/path/control.mp4", use_wan22=False, num_inference_steps=25)
    task = queue.wait("vace-demo-1", timeout=600)          # the row: status, output_location, result_data

Direct form: a resident engine in this process, no database.

    generator = InProcessGenerator(models_dir="models", output_dir="outputs")
    generator.load_model("vace_14B_cocktail_2_2")
    path = generator.generate_vace(prompt="A person dancing", video_guide="/path/control.mp4", guidance_scale=1.0)

Parameters take every spelling the rows take (wan_engine.schema, worker/dialects.py). A task id that
is not a UUID (the seed's "vace-demo-1") names the row whose id is uuid5 of it, and is kept in the
row's params as `task_id`.
"""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from wan_engine.loras import LORAS_FOLDER
from wan_engine.schema import DEFAULT_LIMITS, Limits
from worker.config import WorkerConfig
from worker.db import connect, parse_uuid
from worker.generation import DEFAULT_MODELS, read_generation, write_video
from worker.inputs import fetcher_for
from worker.resources import WorkerResources, resolve_device
from worker.store import Task, TaskStatus, TaskStore

GENERATE_TASK = "generate_video"
WAN22_VACE, WAN21_VACE = "vace_14B_cocktail_2_2", "vace_14B"  # submit_vace_task's models (use_wan22)
ENDED = (TaskStatus.COMPLETE, TaskStatus.FAILED, TaskStatus.CANCELLED)
_TASK_ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "wan-worker/task-id")


def row_id(task_id: str) -> str:
    """The row id of a task id: itself when it is a UUID, else a UUID derived from it (stable)."""
    return parse_uuid(task_id) or str(uuid.uuid5(_TASK_ID_NAMESPACE, task_id))


@dataclass
class GenerationTask:
    """The seed's task: a model, a prompt and generation parameters (any spelling the rows take)."""

    id: str
    model: str
    prompt: str
    parameters: dict[str, Any] = field(default_factory=dict)

    def to_params(self) -> dict[str, Any]:
        """The row params: the seed's GenerationTask shape, which generate_video reads as it is."""
        return {"task_id": self.id, "model": self.model, "prompt": self.prompt, "parameters": dict(self.parameters)}


class QueueClient:
    """Submit, watch and cancel generation tasks in the `tasks` table (the schema must exist:
    `wan-worker migrate`)."""

    def __init__(self, database_url: str = "sqlite:///wan-worker.db"):
        self.store = TaskStore(connect(database_url))

    def submit_task(self, task: GenerationTask, *, priority: int = 0) -> str:
        """Queue `task` as a generate_video row; returns the row id."""
        return self.store.enqueue(GENERATE_TASK, task.to_params(), priority=priority, task_id=row_id(task.id))

    def submit_vace_task(self, task_id: str, prompt: str, video_guide: str, use_wan22: bool = True,
                         **params: Any) -> str:
        """The seed's convenience form: a VACE task on the Wan 2.2 cocktail (or Wan 2.1 VACE 14B)."""
        model = WAN22_VACE if use_wan22 else WAN21_VACE
        return self.submit_task(GenerationTask(task_id, model, prompt, {"video_guide": video_guide, **params}))

    def get(self, task_id: str) -> Task | None:
        return self.store.get(row_id(task_id))

    def status(self, task_id: str) -> str | None:
        """'Queued', 'In Progress', 'Complete', 'Failed' or 'Cancelled'; None for an unknown id."""
        task = self.get(task_id)
        return None if task is None else TaskStatus(task.status).value

    def wait(self, task_id: str, timeout: float | None = None, poll_seconds: float = 0.5) -> Task:
        """The row once it has ended (Complete, Failed or Cancelled); TimeoutError after `timeout`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            task = self.get(task_id)
            if task is None:
                raise KeyError(f"no task {task_id!r}")
            if task.status in ENDED:
                return task
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"task {task_id!r} is still {TaskStatus(task.status).value} after {timeout} s")
            time.sleep(poll_seconds)

    def cancel(self, task_id: str) -> bool:
        """Cancel a task that has not ended; False when it had (or does not exist)."""
        return self.store.cancel(row_id(task_id)) > 0


class InProcessGenerator:
    """The seed's direct form: load a model into this process's engine and generate, each call
    writing one mp4 under output_dir and returning its path. Path fields may be URLs, fetched as a
    worker with default settings would (worker.inputs)."""

    def __init__(self, models_dir: str | Path = "models", output_dir: str | Path = "outputs",
                 device: str | None = None, limits: Limits = DEFAULT_LIMITS):
        self.resources = WorkerResources(device=resolve_device(device), models_dir=Path(models_dir))
        self.output_dir = Path(output_dir)
        self.limits = limits
        self.fetcher = fetcher_for(WorkerConfig(models_dir=Path(models_dir)))
        self.current_model: str | None = None
        self.log = structlog.get_logger("wan_worker.api")

    def load_model(self, key: str) -> bool:
        """Make `key` (a definition or preset) resident; False when it already was."""
        loaded = self.resources.load_model(key)
        self.current_model = key
        return loaded

    def model_family(self, key: str | None = None) -> str:
        """"wan2_2" or "wan2_1": the family of `key` (default: the loaded model)."""
        return self.resources.model_registry().get(self._key(key)).family

    def is_vace(self, key: str | None = None) -> bool:
        return self.resources.model_registry().get(self._key(key)).is_vace

    def generate_vace(self, prompt: str, video_guide: str, video_guide2: str | None = None,
                      video_mask2: str | None = None, **kw: Any) -> str:
        """A VACE generation guided by `video_guide` (and a second stream); returns the mp4's path."""
        streams = {"video_guide2": video_guide2, "video_mask2": video_mask2}
        return self._generate({"prompt": prompt, "video_guide": video_guide,
                               **{k: v for k, v in streams.items() if v is not None}, **kw},
                              default=DEFAULT_MODELS["vace_22"])

    def generate_t2v(self, prompt: str, **kw: Any) -> str:
        """A text-to-video generation; returns the mp4's path."""
        return self._generate({"prompt": prompt, **kw}, default=DEFAULT_MODELS["t2v"])

    def _key(self, key: str | None) -> str:
        if key is None and self.current_model is None:
            raise ValueError("no model is loaded: call load_model(key) first or name one")
        return key or self.current_model  # type: ignore[return-value]

    def _generate(self, params: dict[str, Any], *, default: str) -> str:
        params = {"model": self.current_model, **params} if self.current_model and "model" not in params else params
        output_dir = self.output_dir / str(uuid.uuid4())
        output_dir.mkdir(parents=True, exist_ok=True)
        loras_dir = Path(self.resources.models_dir) / LORAS_FOLDER
        with self.fetcher.active():
            row = read_generation(params, resources=self.resources, limits=self.limits, output_dir=output_dir,
                                  log=self.log, default_model=default,
                                  install_loras=lambda names: self.fetcher.install_loras(list(names or []), loras_dir))
        result = self.resources.generate(row.request, on_progress=lambda progress: None, should_cancel=lambda: False)
        write_video(result.frames, row.output, row.fps)
        return str(row.output)
