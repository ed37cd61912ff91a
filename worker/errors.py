"""Error types handlers raise; the poller decides what each means for the row."""
from __future__ import annotations


class TaskError(Exception):
    """Base class for errors a handler raises on purpose."""


class ValidationError(TaskError, ValueError):
    """Bad params: permanent, the task fails at once without retry. Names the field and the rule."""

    def __init__(self, field: str, rule: str):
        super().__init__(f"{field}: {rule}")
        self.field = field
        self.rule = rule


class TransientError(TaskError):
    """Worth retrying later (with backoff) while attempts remain: a download or an upload that failed."""


class StorageError(TaskError):
    """The output storage failed (read-only, full, gone): not the task's fault, so the task goes back
    to the queue, and a worker whose storage keeps failing stops claiming."""


class TaskCancelled(TaskError):
    """The row was cancelled while the handler ran."""


class TaskTimeout(TaskError):
    """The task ran past --task-timeout-seconds and was stopped: retried later, like any unexpected
    failure, until its attempts are used up."""
