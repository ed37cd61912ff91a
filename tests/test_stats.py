"""`wan-worker stats`: counts and phase percentiles computed by the database, on both dialects."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from worker.stats import collect_stats, format_stats, oldest_ready_task_age_seconds, parse_since
from worker.store import Claim, TaskStore

from conftest import REPO_ROOT, backdate, store_url


def run_to_end(store: TaskStore, task_type: str, params: dict, *, result_data: dict | None = None,
               outcome: str = "complete") -> str:
    """Insert a row and take it through a real claim to the given outcome."""
    task_id = store.enqueue(task_type, params)
    claimed = store.claim("stats-test", [task_type], None)
    assert claimed is not None and claimed.id == task_id
    if outcome == "complete":
        assert store.complete(Claim(task_id, "stats-test", 1), "/out/video.mp4", result_data)
    elif outcome == "failed":
        assert store.fail(Claim(task_id, "stats-test", 1), "boom")
    else:
        assert store.cancel(task_id) == 1
    return task_id


def test_phase_percentiles_equal_linear_interpolation_of_the_samples(store: TaskStore) -> None:
    rng = np.random.default_rng(7)
    samples = {"wan21": rng.uniform(0.1, 90.0, size=7), "wan22": rng.uniform(0.1, 90.0, size=4), "solo": [2.5]}
    for model, values in samples.items():
        for value in values:
            run_to_end(store, "generate_video", {"model": model},
                       result_data={"model": model, "phase_seconds": {"decode": float(value)}})

    phases = {row.model: row for row in collect_stats(store.db).phases}

    for model, values in samples.items():
        assert phases[model].samples == len(values)
        assert phases[model].p50_seconds == pytest.approx(np.percentile(values, 50), rel=1e-9)
        assert phases[model].p90_seconds == pytest.approx(np.percentile(values, 90), rel=1e-9)


def test_every_phase_gets_its_own_row(store: TaskStore) -> None:
    timings = {"queue_wait": 1.0, "model_load": 2.0, "text_encode": 0.5, "denoise_high_noise": 9.0,
               "denoise_low_noise": 8.0, "decode": 3.0, "video_encode": 0.2}
    run_to_end(store, "travel_segment", {"model": "vace22"}, result_data={"model": "vace22", "phase_seconds": timings})

    phases = {row.phase: row.p50_seconds for row in collect_stats(store.db).phases}

    assert phases == pytest.approx(timings)


def test_counts_split_outcomes_per_model_and_task_type(store: TaskStore) -> None:
    run_to_end(store, "t2v", {"model": "a"}, result_data={"model": "a"})
    run_to_end(store, "t2v", {"model": "a"}, outcome="failed")
    run_to_end(store, "t2v", {"model": "a"}, outcome="cancelled")
    store.enqueue("t2v", {"model": "a"})
    run_to_end(store, "vace", {"model": "b"}, result_data={"model": "b"})

    counts = {(row.model, row.task_type): row for row in collect_stats(store.db).counts}

    a = counts[("a", "t2v")]
    assert (a.tasks, a.complete, a.failed, a.cancelled, a.pending) == (4, 1, 1, 1, 1)
    b = counts[("b", "vace")]
    assert (b.tasks, b.complete, b.failed, b.cancelled, b.pending) == (1, 1, 0, 0, 0)


def test_the_model_that_ran_wins_over_the_preset_asked_for(store: TaskStore) -> None:
    run_to_end(store, "generate_video", {"preset": "vace_22_14b"},
               result_data={"model": "vace_14B_cocktail_2_2", "preset": "vace_22_14b", "phase_seconds": {"decode": 1.0}})
    store.enqueue("generate_video", {"preset": "vace_22_14b"})

    counts = {(row.model, row.preset): row.tasks for row in collect_stats(store.db).counts}

    assert counts == {("vace_14B_cocktail_2_2", "vace_22_14b"): 1, ("-", "vace_22_14b"): 1}


def test_a_model_or_preset_written_as_a_number_is_counted_under_its_text(store: TaskStore) -> None:
    run_to_end(store, "generate_video", {"model": 7, "preset": 2},
               result_data={"phase_seconds": {"decode": 1.0}})
    stats = collect_stats(store.db)
    assert [(row.model, row.preset) for row in stats.counts] == [("7", "2")]
    assert [(row.model, row.preset) for row in stats.phases] == [("7", "2")]
    assert "7      2" in format_stats(stats)


def test_since_leaves_out_older_rows(store: TaskStore) -> None:
    old = run_to_end(store, "t2v", {"model": "a"}, result_data={"model": "a", "phase_seconds": {"decode": 100.0}})
    run_to_end(store, "t2v", {"model": "a"}, result_data={"model": "a", "phase_seconds": {"decode": 1.0}})
    backdate(store, old, days=3)

    recent = collect_stats(store.db, parse_since("2d"))
    everything = collect_stats(store.db)

    assert [row.tasks for row in recent.counts] == [1]
    assert [row.p90_seconds for row in recent.phases] == [1.0]
    assert [row.tasks for row in everything.counts] == [2]


def test_phase_values_that_are_not_numbers_are_ignored(store: TaskStore) -> None:
    run_to_end(store, "t2v", {"model": "a"}, result_data={"model": "a", "phase_seconds": {"decode": "slow", "load": 2}})
    run_to_end(store, "t2v", {"model": "a"}, result_data={"model": "a", "phase_seconds": [1, 2]})

    phases = [(row.phase, row.samples) for row in collect_stats(store.db).phases]

    assert phases == [("load", 1)]


def test_oldest_ready_task_age_counts_only_claimable_rows(store: TaskStore) -> None:
    assert oldest_ready_task_age_seconds(store.db) is None
    blocker = store.enqueue("t2v", {})
    store.enqueue("t2v", {}, dependant_on=[blocker])
    backdate(store, blocker, days=1)

    age = oldest_ready_task_age_seconds(store.db)

    assert age is not None and 86_000 < age < 87_000  # the blocker; its dependant is not claimable yet


def test_oldest_ready_task_age_counts_only_the_types_a_worker_takes(store: TaskStore) -> None:
    """A worker's gauge is not raised by rows it leaves queued for other workers (or does not take)."""
    backdate(store, store.enqueue("qwen_image_edit", {}), days=2)
    backdate(store, store.enqueue("t2v", {}), days=1)

    def age(**claim_filter: object) -> float:
        return oldest_ready_task_age_seconds(store.db, **claim_filter) // 86_400

    assert age() == 2
    assert age(left_queued=["qwen_image_edit"]) == 1
    assert age(task_types=["t2v"]) == 1
    assert age(task_types=["qwen_image_edit"]) == 2
    assert oldest_ready_task_age_seconds(store.db, ["vace"]) is None


def test_stats_command_prints_counts_and_phase_table(store: TaskStore) -> None:
    run_to_end(store, "t2v", {"model": "tiny_t2v"}, result_data={"model": "tiny_t2v", "phase_seconds": {"decode": 1.5}})

    done = subprocess.run([sys.executable, "-m", "worker.cli", "stats", "--database-url", store_url(store), "--since", "1h"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)

    assert done.returncode == 0, done.stderr
    assert "tiny_t2v" in done.stdout and "decode" in done.stdout and "1.500" in done.stdout


@pytest.mark.parametrize("text, seconds", [("90m", 5400.0), ("24h", 86400.0), ("7d", 604800.0), ("2w", 1209600.0)])
def test_since_reads_durations(text: str, seconds: float) -> None:
    assert parse_since(text).seconds == seconds


def test_since_rejects_what_is_neither_a_duration_nor_a_date() -> None:
    with pytest.raises(ValueError, match="--since"):
        parse_since("yesterday")
