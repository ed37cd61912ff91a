"""Reigh's colour adjustments (worker/travel/colour.py) against what the headless worker runs: ffmpeg's
eq filter for the saturation (real ffmpeg, the bundled binary), its frame arithmetic for the rest."""
from __future__ import annotations

import subprocess
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest

from test_row_forms import reigh_orchestrator_row
from worker.errors import ValidationError
from worker.resources import WorkerResources
from worker.store import TaskStatus, TaskStore
from worker.travel.colour import LUMA, ColourAdjustments
from worker.travel.plan import plan_travel
from worker.video import read_video
from worker_harness import resources, run_until_idle, write_keyframes  # noqa: F401 (resources is a fixture)


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    """In-gamut colours (no channel near 0 or 255), so clipping does not dominate the comparison."""
    return np.random.default_rng(7).integers(60, 196, (3, 24, 32, 3), dtype=np.uint8)


def ffmpeg_filter(frames: np.ndarray, video_filter: str) -> np.ndarray:
    """`frames` through an ffmpeg filter chain, RGB in and out."""
    _, height, width, _ = frames.shape
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-f", "rawvideo", "-pix_fmt", "rgb24",
               "-s", f"{width}x{height}", "-i", "-", "-vf", video_filter, "-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
    out = subprocess.run(command, input=frames.tobytes(), capture_output=True, check=True).stdout
    return np.frombuffer(out, np.uint8).reshape(frames.shape)


@pytest.mark.parametrize("level", [0.0, 0.6, 1.3])
def test_saturation_matches_ffmpegs_eq_filter(frames: np.ndarray, level: float) -> None:
    reference = ffmpeg_filter(frames, f"format=yuv444p,eq=saturation={level},format=rgb24").astype(int)
    round_trip = ffmpeg_filter(frames, "format=yuv444p,format=rgb24").astype(int)
    ours = ColourAdjustments(saturation=level).after_first(frames).astype(int)
    # ffmpeg's own RGB -> YUV -> RGB round trip is off by ~0.4 levels; the filter adds its rounding.
    assert np.abs(round_trip - frames).mean() < 0.6
    assert np.abs(reference - ours).mean() < 2.0 and np.abs(reference - ours).max() <= 6
    if level != 1.0:
        assert not np.array_equal(ours, frames)


def test_saturation_zero_is_grey_and_brightness_scales(frames: np.ndarray) -> None:
    grey = ColourAdjustments(saturation=0.0).after_first(frames).astype(int)
    assert np.abs(grey - grey[..., :1]).max() == 0
    assert np.abs(grey[..., 0] - np.rint(frames.astype(np.float32) @ LUMA)).max() <= 1
    brighter = ColourAdjustments(brightness=0.2).after_first(frames)
    assert np.array_equal(brighter, np.clip(frames * np.float32(1.2), 0, 255).astype(np.uint8))


def test_the_neutral_values_change_nothing(frames: np.ndarray) -> None:
    neutral = ColourAdjustments()
    assert not neutral.changes_segments and not neutral.changes_guide_head
    assert neutral.after_first(frames) is frames and neutral.guide_head(frames) is frames
    assert not ColourAdjustments(head_strength=0.4).changes_guide_head  # a weight above 1 is clipped to 1


def test_the_guide_head_fades_to_grey_desaturates_and_brightens_in_that_order(frames: np.ndarray) -> None:
    faded = ColourAdjustments(head_strength=-0.5).guide_head(frames).astype(int)
    assert np.abs(faded - (64 + frames.astype(int) / 2)).max() <= 1
    assert np.array_equal(ColourAdjustments(head_strength=-1.0).guide_head(frames), np.full_like(frames, 128))
    desaturated = ColourAdjustments(head_desaturation=1.0).guide_head(frames).astype(int)
    assert np.abs(desaturated - desaturated[..., :1]).max() == 0
    both = ColourAdjustments(head_desaturation=1.0, head_brightness=-0.5).guide_head(frames).astype(int)
    assert np.abs(both - desaturated // 2).max() <= 1


def test_adjustments_survive_a_row(frames: np.ndarray) -> None:
    adjustments = ColourAdjustments(saturation=1.2, brightness=-0.1, head_desaturation=0.3)
    assert ColourAdjustments.from_params(adjustments.to_params()) == adjustments
    assert ColourAdjustments.from_params(None) == ColourAdjustments()


# ---- through a worker: a Reigh travel job with adjustments --------------------------------------------------

def test_a_reigh_travel_job_applies_its_adjustments_after_the_first_segment(
        sqlite_store: TaskStore, resources: WorkerResources, tmp_path: Path) -> None:
    """banodoco/reigh-app supabase/functions/create-task/resolvers/travelBetweenImages.ts sends
    after_first_post_generation_saturation / _brightness in every payload; the headless orchestrator
    copies the guide adjustments onto its segment rows (reigh-worker travel/orchestrator.py)."""
    images = write_keyframes(tmp_path / "keys", 3, size=(40, 36))
    common = dict(base_prompts_expanded=["a", "b"], negative_prompts_expanded=["", ""], enhanced_prompts_expanded=["", ""],
                  segment_frames_expanded=[9, 9], frame_overlap_expanded=[4, 4], parsed_resolution_wh="32x32",
                  independent_segments=False, model_name="tiny_vace_2_2")
    jobs = {name: sqlite_store.enqueue("travel_orchestrator", reigh_orchestrator_row(images, **common, **changes))
            for name, changes in (("neutral", {"after_first_post_generation_saturation": 1}), ("saturated", {"after_first_post_generation_saturation": 0.4}),
                                  ("grey_head", {"after_first_post_generation_saturation": 1,
                                                 "desaturate_subsequent_starting_frames": 1.0}))}
    run_until_idle(sqlite_store, resources, tmp_path / "out")

    segments = {}
    for name, job in jobs.items():
        assert sqlite_store.get(job).status == TaskStatus.COMPLETE, sqlite_store.get(job).error_message
        children = sorted((c for c in sqlite_store.children(job) if c.task_type == "travel_segment"),
                          key=lambda c: c.result_data["segment_index"])
        segments[name] = [read_video(child.output_location).astype(int) for child in children]
        assert sqlite_store.get(job).result_data["ignored_params"] == {}
    for name in ("saturated", "grey_head"):
        assert np.abs(segments[name][0] - segments["neutral"][0]).max() == 0  # the first segment is left alone
    # The same generation with its chroma scaled by 0.4 (measured through the codec, so roughly).
    ratio = colourfulness(segments["saturated"][1]) / colourfulness(segments["neutral"][1])
    assert 0.3 < ratio < 0.5, ratio
    assert np.abs(segments["grey_head"][1] - segments["neutral"][1]).mean() > 1.0  # its guide opened on grey frames


def colourfulness(frames: np.ndarray) -> float:
    """Mean distance of the pixels from their grey (the chroma that saturation scales)."""
    return float(np.abs(frames - (frames.astype(np.float32) @ LUMA)[..., None]).mean())


def test_an_adjustment_out_of_bounds_fails_naming_its_key(images_for_bounds: list[str]) -> None:
    row = reigh_orchestrator_row(images_for_bounds, desaturate_subsequent_starting_frames=1.5)
    with pytest.raises(ValidationError, match=r"orchestrator_details\.desaturate_subsequent_starting_frames: .*1"):
        plan_travel(row)


@pytest.fixture
def images_for_bounds(tmp_path: Path) -> list[str]:
    return write_keyframes(tmp_path, 3, size=(40, 36))
