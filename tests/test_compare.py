"""worker.compare: side-by-side video, contact sheet and metrics of small generated videos."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from worker.compare import LABEL_BAND_HEIGHT, PSNR_CAP_DB, compare, default_labels
from worker.video import VideoWriter, probe, read_video

W, H, FPS, FRAMES = 64, 48, 16, 9
CODEC_TOLERANCE = 6  # mean-level tolerance for content re-encoded once more


def scene(count: int = FRAMES, shift: int = 0) -> np.ndarray:
    """uint8 [count, H, W, 3]: blocks and a gradient drifting right by 2 px a frame, offset by `shift` px."""
    x = np.arange(W)[None, :]
    y = np.arange(H)[:, None]
    frames = np.empty((count, H, W, 3), np.uint8)
    for t in range(count):
        u = x - 2 * t - shift
        frames[t, ..., 0] = np.where((u // 8 + y // 8) % 2 == 0, 220, 40)
        frames[t, ..., 1] = (u * 4) % 256
        frames[t, ..., 2] = 80 + y
    return frames


def write(path: Path, frames: np.ndarray) -> Path:
    with VideoWriter(path, FPS, frames.shape[2], frames.shape[1]) as writer:
        writer.write(frames)
    return path


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("inputs")
    original = write(folder / "original.mp4", scene())
    copy = folder / "copy.mp4"
    copy.write_bytes(original.read_bytes())
    return {"original": original, "copy": copy, "shifted": write(folder / "shifted.mp4", scene(shift=3))}


@pytest.fixture(scope="module")
def identical(videos: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict:
    return compare([videos["original"], videos["copy"]], tmp_path_factory.mktemp("identical"))


@pytest.fixture(scope="module")
def shifted(videos: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict:
    return compare([videos["original"], videos["shifted"]], tmp_path_factory.mktemp("shifted"), labels=["A", "B"])


def test_identical_videos_have_capped_psnr_and_ssim_of_one(identical: dict) -> None:
    (pair,) = identical["pairs"]
    assert pair["psnr_db"] == pair["psnr_db_min"] == PSNR_CAP_DB
    assert pair["ssim"] == pytest.approx(1.0, abs=1e-9) and pair["ssim_min"] == pytest.approx(1.0, abs=1e-9)


def test_a_shifted_video_scores_lower_on_both_metrics(identical: dict, shifted: dict) -> None:
    (pair,) = shifted["pairs"]
    assert pair["psnr_db"] < 30 and pair["ssim"] < 0.9
    assert pair["ssim"] < identical["pairs"][0]["ssim"]


def test_metrics_equal_scikit_image_on_the_decoded_frames(videos: dict[str, Path], shifted: dict) -> None:
    a, b = read_video(videos["original"]), read_video(videos["shifted"])
    luma = np.array([0.2126, 0.7152, 0.0722], np.float32)
    psnr = [peak_signal_noise_ratio(fa, fb, data_range=255) for fa, fb in zip(a, b)]
    ssim = [
        structural_similarity(
            fa.astype(np.float32) @ luma, fb.astype(np.float32) @ luma,
            data_range=255.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
        )
        for fa, fb in zip(a, b)
    ]
    (pair,) = shifted["pairs"]
    assert pair["psnr_db"] == pytest.approx(np.mean(psnr), rel=1e-5)
    assert pair["psnr_db_min"] == pytest.approx(np.min(psnr), rel=1e-5)
    assert pair["ssim"] == pytest.approx(np.mean(ssim), rel=1e-5)


def test_the_json_is_written_to_out_dir_and_returned(shifted: dict) -> None:
    assert json.loads(Path(shifted["json"]).read_text()) == shifted
    assert Path(shifted["json"]).name == "compare.json"
    assert [entry["label"] for entry in shifted["inputs"]] == ["A", "B"]
    assert (shifted["pairs"][0]["a"], shifted["pairs"][0]["b"]) == ("A", "B")


def test_side_by_side_stacks_the_inputs_under_a_label_band(videos: dict[str, Path], shifted: dict) -> None:
    info = probe(shifted["side_by_side"])
    assert (info.frames, info.width, info.height, info.fps) == (FRAMES, 2 * W, LABEL_BAND_HEIGHT + H, FPS)
    combined = read_video(shifted["side_by_side"]).astype(float)
    body = combined[:, LABEL_BAND_HEIGHT:]
    for column, name in enumerate(["original", "shifted"]):
        source = read_video(videos[name]).astype(float)
        tile = body[:, :, column * W : (column + 1) * W]
        assert np.abs(tile - source).mean() <= CODEC_TOLERANCE, name


def test_side_by_side_is_cut_to_the_shortest_and_scaled_to_the_smallest_height(tmp_path: Path) -> None:
    long_small = write(tmp_path / "long.mp4", scene(count=9))
    short_large = write(tmp_path / "short.mp4", np.repeat(np.repeat(scene(count=5), 2, axis=1), 2, axis=2))
    report = compare([long_small, short_large], tmp_path / "out")
    info = probe(report["side_by_side"])
    assert (info.frames, info.width, info.height) == (5, 2 * W, LABEL_BAND_HEIGHT + H)
    assert report["compared_frames"] == 5 and report["metric_size"] == f"{W}x{H}"
    # The larger video is the smaller one upscaled 2x: scaled back down it matches closely.
    assert report["pairs"][0]["psnr_db"] > 25


def test_contact_sheet_has_one_labelled_row_per_input(videos: dict[str, Path], tmp_path: Path) -> None:
    report = compare([videos["original"], videos["shifted"], videos["copy"]], tmp_path, samples=3)
    sheet = np.asarray(Image.open(report["contact_sheet"]))
    assert report["contact_sheet_frames"] == [0, 4, 8]
    band, rows = LABEL_BAND_HEIGHT, 3
    assert sheet.shape == (band + rows * (band + H), 3 * W, 3)
    for row, name in enumerate(["original", "shifted", "copy"]):
        top = band + row * (band + H)
        label_band = sheet[top : top + band]
        assert (label_band > 128).any(), f"row {row} has no label text"
        frames = read_video(videos[name]).astype(float)
        for column, index in enumerate(report["contact_sheet_frames"]):
            tile = sheet[top + band : top + band + H, column * W : (column + 1) * W].astype(float)
            assert np.abs(tile - frames[index]).mean() <= CODEC_TOLERANCE, (name, index)


def test_flicker_separates_alternating_frames_from_a_steady_fade(tmp_path: Path) -> None:
    fade = np.stack([np.full((H, W, 3), 40 + 20 * t, np.uint8) for t in range(FRAMES)])
    strobe = np.stack([np.full((H, W, 3), 100 if t % 2 else 140, np.uint8) for t in range(FRAMES)])
    report = compare([write(tmp_path / "fade.mp4", fade), write(tmp_path / "strobe.mp4", strobe)], tmp_path / "out")
    fade_scores, strobe_scores = report["inputs"]
    # Both change by 20-40 levels a frame, but only the strobe reverses direction every frame.
    assert fade_scores["mean_abs_frame_diff"] == pytest.approx(20, abs=2)
    assert strobe_scores["mean_abs_frame_diff"] == pytest.approx(40, abs=2)
    assert fade_scores["flicker"] < 1 and strobe_scores["flicker"] == pytest.approx(40, abs=2)


def test_a_steady_pan_of_fine_detail_changes_every_frame_without_flickering(shifted: dict) -> None:
    original = shifted["inputs"][0]  # an 8 px checkerboard moving 2 px a frame
    assert original["mean_abs_frame_diff"] > 10 and original["flicker"] < 1


def test_labels_default_to_file_names_numbered_when_they_clash() -> None:
    assert default_labels([Path("a/x.mp4"), Path("b/y.mp4")]) == ["x.mp4", "y.mp4"]
    assert default_labels([Path("a/final.mp4"), Path("b/final.mp4")]) == ["1: final.mp4", "2: final.mp4"]


def test_labels_must_match_the_inputs(videos: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="labels"):
        compare([videos["original"], videos["copy"]], tmp_path, labels=["only one"])
