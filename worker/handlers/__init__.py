"""Task handlers: a registry from task_type to a function, and what a handler gets and returns.

A handler is `def handle(ctx: TaskContext) -> HandlerResult`, registered with `@register("type", ...)`
in a module of this package (every module here is imported by `load_handlers()`). Handlers raise the
error types of worker.errors / wan_engine.errors; the poller decides what happens to the row.
Handlers never write the row themselves except through `ctx`. Importing a handler module must stay
cheap (no torch at import time).
"""
from __future__ import annotations

import importlib
import pkgutil
import threading
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import sqlalchemy as sa
import structlog

from worker.config import WorkerConfig
from worker.errors import TaskCancelled
from worker.inputs import InputFetcher, fetcher_for
from worker.paths import task_output_dir
from worker.resources import WorkerResources
from worker.storage import OutputStorage, storage_for
from worker.store import Claim, NewTask, Task, TaskStore

# Progress writes are throttled to one per this many seconds (a phase change is always written).
PROGRESS_MIN_INTERVAL_SECONDS = 1.0


@dataclass
class HandlerResult:
    """What a finished handler hands back. With park_children set, the poller inserts those children
    (once: see TaskStore.park_with_children) and parks the row until they end it, instead of completing."""

    output_location: str | None = None
    result_data: dict[str, Any] = field(default_factory=dict)
    park_children: list[NewTask] | None = None
    park_progress: dict[str, Any] | None = None


class TaskContext:
    """Everything a handler may use for one claimed task."""

    def __init__(
        self,
        task: Task,
        store: TaskStore,
        config: WorkerConfig,
        resources: WorkerResources,
        log: structlog.typing.FilteringBoundLogger,
    ):
        self.task = task
        self.store = store
        self.config = config
        self.resources = resources
        self.log = log  # bound to task_id and task_type
        self._cancelled = threading.Event()
        self._last_progress_at = 0.0
        self._last_phase: Any = None

    @property
    def worker_id(self) -> str:
        return self.config.worker_id

    @property
    def claim(self) -> Claim:
        """This claim of the row: the fence of every write the handler makes through the store."""
        return Claim(self.task.id, self.worker_id, self.task.attempts)

    @cached_property
    def output_dir(self) -> Path:
        """<output_dir>/<task id>/, created on first use (worker.paths.task_output_dir: the id must be a
        UUID and the folder a real one, not a link)."""
        return task_output_dir(self.config.output_dir, self.task.id)

    @property
    def inputs(self) -> InputFetcher:
        """The worker's URL fetcher and local-path guard (the poller makes it active for the handler's thread)."""
        return fetcher_for(self.config)

    @property
    def storage(self) -> OutputStorage:
        """Where artifacts are published: the local folder, or S3 with --storage-url."""
        return storage_for(self.config)

    def report_progress(self, progress: dict[str, Any]) -> None:
        """Write progress to the row (fenced), at most once per PROGRESS_MIN_INTERVAL_SECONDS unless the
        phase changed. A database error is logged, never raised: progress is not worth failing a task."""
        now = time.monotonic()
        phase = progress.get("phase")
        if phase == self._last_phase and now - self._last_progress_at < PROGRESS_MIN_INTERVAL_SECONDS:
            return
        self._last_progress_at, self._last_phase = now, phase
        try:
            self.store.progress(self.claim, progress)
        except (sa.exc.SQLAlchemyError, TypeError, ValueError) as error:  # ValueError: NaN, not JSON
            self.log.warning("progress not written", error=str(error))

    def cancelled(self) -> bool:
        """True once the row was cancelled, the lease was lost, or shutdown's grace period ran out:
        stop at the next safe point and raise TaskCancelled (or return nothing useful)."""
        return self._cancelled.is_set()

    def raise_if_cancelled(self) -> None:
        if self.cancelled():
            raise TaskCancelled(f"task {self.task.id} stopped: cancelled, lease lost, or shutting down")

    def cancel(self) -> None:
        """Called by the heartbeat thread and by shutdown, not by handlers."""
        self._cancelled.set()


Handler = Callable[[TaskContext], HandlerResult]
HANDLERS: dict[str, Handler] = {}

# Task types of the headless Wan2GP / Reigh ecosystem that other workers run: other model families
# (banodoco/reigh-worker tasks/task_types.py TASK_TYPE_TO_MODEL, its task_registry's specialized
# handlers) and the app's own processing types (reigh-app taskTypeConfigFallback.ts and the
# create-task resolvers, whose upscale row is "image-upscale"). A worker that shares their table
# leaves these queued for those workers unless --task-types names them; any other type no handler
# here knows is claimed and fails naming the known ones (a typo must not wait forever).
OTHER_WORKERS_TASK_TYPES = frozenset({
    "flux", "hunyuan", "ltxv", "ltx2",
    "qwen_image", "qwen_image_2512", "qwen_image_edit", "qwen_image_hires", "qwen_image_style",
    "image_inpaint", "annotated_image_edit", "z_image_turbo", "z_image_turbo_i2i",
    "magic_edit", "create_visualization", "rife_interpolate_images", "comfy",
    "animate_character", "video_enhance", "image-upscale", "image_upscale", "single_image",
    "edit_travel_kontext", "edit_travel_flux", "edit_video_segment", "generate_openpose", "wgp",
})


def left_for_other_workers(task_types: Sequence[str] | None, handlers: Mapping[str, Handler]) -> tuple[str, ...]:
    """The task types a worker leaves queued: without --task-types, the other workers' types it has no
    handler for; none when --task-types names what it takes."""
    return () if task_types else tuple(sorted(OTHER_WORKERS_TASK_TYPES - set(handlers)))


def register(*task_types: str) -> Callable[[Handler], Handler]:
    """Route each of `task_types` to the decorated handler."""

    def decorate(handler: Handler) -> Handler:
        for task_type in task_types:
            if task_type in HANDLERS and HANDLERS[task_type] is not handler:
                raise ValueError(f"task_type {task_type!r} is registered twice")
            HANDLERS[task_type] = handler
        return handler

    return decorate


def load_handlers() -> dict[str, Handler]:
    """Import every handler module of this package (each registers itself) and return the registry."""
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")
    return HANDLERS
