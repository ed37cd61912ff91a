"""worker.video: mp4 writing and reading through the bundled ffmpeg, probing, image fitting."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fleet_servers import file_server  # noqa: F401 (fixture)
from worker.errors import ValidationError
from worker.video import (
    FFmpegError,
    VideoWriter,
    run_ffmpeg,
    check_image,
    iter_frames,
    load_image,
    mux_audio,
    probe,
    read_last_frames,
    read_video,
    save_png,
)

WIDTH, HEIGHT, FPS = 64, 48, 12
# H.264 at CRF 18 through yuv420p keeps flat colours to within a few levels.
CODEC_TOLERANCE = 4


def moving_frames(count: int) -> np.ndarray:
    """uint8 [count, HEIGHT, WIDTH, 3]: a smooth gradient that drifts right, different every frame."""
    x = np.arange(WIDTH)[None, :]
    y = np.arange(HEIGHT)[:, None]
    frames = np.empty((count, HEIGHT, WIDTH, 3), np.uint8)
    for i in range(count):
        frames[i, ..., 0] = (x * 3 + 8 * i) % 256
        frames[i, ..., 1] = y * 4
        frames[i, ..., 2] = 40 + 10 * i
    return frames


def flat_frames(colours: list[tuple[int, int, int]]) -> np.ndarray:
    return np.asarray([np.full((HEIGHT, WIDTH, 3), colour) for colour in colours], dtype=np.uint8)


def write(path: Path, frames: np.ndarray, fps: float = FPS) -> Path:
    with VideoWriter(path, fps, frames.shape[2], frames.shape[1]) as writer:
        writer.write(frames)
    return path


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    frames = flat_frames([(200, 30, 40), (10, 220, 90), (60, 60, 230), (127, 127, 127), (250, 200, 10)] * 2)
    return write(tmp_path_factory.mktemp("video") / "clip.mp4", frames), frames


def test_probe_reports_frames_size_and_fps_of_a_written_video(clip: tuple[Path, np.ndarray]) -> None:
    path, frames = clip
    info = probe(path)
    assert (info.frames, info.width, info.height, info.fps) == (len(frames), WIDTH, HEIGHT, FPS)


def test_frames_read_back_match_the_written_ones_within_codec_tolerance(clip: tuple[Path, np.ndarray]) -> None:
    path, frames = clip
    decoded = read_video(path)
    assert decoded.shape == frames.shape and decoded.dtype == np.uint8
    assert np.abs(decoded.astype(int) - frames).max() <= CODEC_TOLERANCE


def test_iter_frames_yields_the_same_frames_as_read_video(tmp_path: Path) -> None:
    path = write(tmp_path / "moving.mp4", moving_frames(7))
    assert np.array_equal(np.stack(list(iter_frames(path))), read_video(path))


def test_iter_frames_from_a_start_frame_skips_exactly_the_frames_before_it(tmp_path: Path) -> None:
    path = write(tmp_path / "moving.mp4", moving_frames(9))
    every = read_video(path)
    for start in (1, 4, 8):
        assert np.array_equal(np.stack(list(iter_frames(path, start=start))), every[start:])
    assert list(iter_frames(path, start=9)) == []
    resampled = np.stack(list(iter_frames(path, fps=FPS / 2)))  # start counts the resampled frames
    assert np.array_equal(np.stack(list(iter_frames(path, fps=FPS / 2, start=2))), resampled[2:])
    with pytest.raises(ValueError, match="start"):
        next(iter_frames(path, start=-1))


def test_a_writer_fed_frame_by_frame_equals_one_fed_a_batch(tmp_path: Path) -> None:
    frames = moving_frames(5)
    batched = write(tmp_path / "batched.mp4", frames)
    with VideoWriter(tmp_path / "single.mp4", FPS, WIDTH, HEIGHT) as writer:
        for frame in frames:
            writer.write(frame)
    assert np.array_equal(read_video(batched), read_video(tmp_path / "single.mp4"))


def test_read_last_frames_returns_the_tail_of_the_video(tmp_path: Path) -> None:
    path = write(tmp_path / "moving.mp4", moving_frames(9))
    decoded = read_video(path)
    assert np.array_equal(read_last_frames(path, 3), decoded[-3:])
    assert np.array_equal(read_last_frames(path, 50), decoded)


def test_frames_read_at_another_size_are_area_averages_of_the_stored_ones(tmp_path: Path) -> None:
    """Columns 40, 200, 200, 40, ...: halving each side averages every pair to 120 (a filter that
    picks pixels gives 40 or 200); another aspect ratio is stretched, not cropped."""
    columns = np.array([40, 200, 200, 40] * (WIDTH // 4), np.uint8)
    frames = np.stack([np.broadcast_to(columns[None, :, None], (HEIGHT, WIDTH, 3))] * 3)
    path = write(tmp_path / "stripes.mp4", frames)
    halved = np.stack(list(iter_frames(path, (WIDTH // 2, HEIGHT // 2))))
    assert halved.shape == (3, HEIGHT // 2, WIDTH // 2, 3)
    assert np.abs(halved.astype(int) - 120).max() <= CODEC_TOLERANCE
    assert np.array_equal(read_last_frames(path, 2, (WIDTH // 2, HEIGHT // 2)), halved[-2:])
    stretched = read_last_frames(path, 1, (WIDTH, HEIGHT * 2))[0]
    assert stretched.shape == (HEIGHT * 2, WIDTH, 3)
    assert np.abs(stretched.astype(int) - frames[0, :1].astype(int)).max() <= CODEC_TOLERANCE  # every row as stored
    assert np.array_equal(np.stack(list(iter_frames(path, (WIDTH, HEIGHT)))), read_video(path))  # its own size: as stored


def test_non_integer_frame_rates_survive_the_round_trip(tmp_path: Path) -> None:
    info = probe(write(tmp_path / "ntsc.mp4", moving_frames(4), fps=29.97))
    assert info.fps == pytest.approx(29.97, abs=0.01) and info.frames == 4


def test_output_is_h264_yuv420p_bt709_with_the_index_in_front(clip: tuple[Path, np.ndarray]) -> None:
    path, _ = clip
    header = run_ffmpeg(["-i", str(path)])
    assert "Video: h264" in header and "yuv420p" in header and "bt709" in header
    data = path.read_bytes()
    assert data.index(b"moov") < data.index(b"mdat")  # +faststart


def test_a_failed_write_leaves_no_file_behind(tmp_path: Path) -> None:
    target = tmp_path / "broken.mp4"
    with pytest.raises(RuntimeError, match="boom"):
        with VideoWriter(target, FPS, WIDTH, HEIGHT) as writer:
            writer.write(moving_frames(2))
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_a_writer_given_no_frames_fails_and_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(FFmpegError, match="no frames"):
        with VideoWriter(tmp_path / "empty.mp4", FPS, WIDTH, HEIGHT):
            pass
    assert list(tmp_path.iterdir()) == []


def test_the_writer_rejects_frames_of_another_size(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="expected uint8 frames"):
        with VideoWriter(tmp_path / "x.mp4", FPS, WIDTH, HEIGHT) as writer:
            writer.write(np.zeros((HEIGHT, WIDTH + 2, 3), np.uint8))


def test_the_writer_rejects_odd_sizes_that_yuv420p_cannot_hold(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="even"):
        VideoWriter(tmp_path / "x.mp4", FPS, 63, 48)


def test_probe_of_a_file_without_video_raises(tmp_path: Path) -> None:
    text = tmp_path / "notes.mp4"
    text.write_text("not a video")
    with pytest.raises(FFmpegError):
        probe(text)


def three_bands(path: Path, size: tuple[int, int], vertical: bool) -> Path:
    """Red | green | blue in equal bands across the longer side; the centre band is green."""
    width, height = size
    image = np.zeros((height, width, 3), np.uint8)
    length = height if vertical else width
    for band, colour in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255)]):
        span = slice(band * length // 3, (band + 1) * length // 3)
        if vertical:
            image[span] = colour
        else:
            image[:, span] = colour
    Image.fromarray(image).save(path)
    return path


@pytest.mark.parametrize("size, vertical", [((300, 100), False), ((100, 300), True)])
def test_load_image_scales_to_cover_and_keeps_the_centre(tmp_path: Path, size: tuple[int, int], vertical: bool) -> None:
    # A 3:1 image fitted to 32x32 keeps its middle third: the green band.
    fitted = load_image(three_bands(tmp_path / "bands.png", size, vertical), 32, 32)
    assert fitted.shape == (32, 32, 3) and fitted.dtype == np.uint8
    inner = fitted[2:-2, 2:-2].astype(int)
    assert np.abs(inner - [0, 255, 0]).max() <= 8


def test_load_image_of_the_target_size_is_unchanged(tmp_path: Path) -> None:
    frame = moving_frames(1)[0]
    path = save_png(frame, tmp_path / "frame.png")
    assert np.array_equal(load_image(path, WIDTH, HEIGHT), frame)


def test_load_image_of_a_missing_file_names_the_field(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="not found") as error:
        load_image(tmp_path / "missing.png", 32, 32, field="images[1]")
    assert error.value.field == "images[1]"


def test_load_image_of_a_non_image_names_the_field(tmp_path: Path) -> None:
    fake = tmp_path / "fake.png"
    fake.write_bytes(b"this is text, not a png")
    with pytest.raises(ValidationError, match="not a readable image") as error:
        load_image(fake, 32, 32, field="image_refs[0]")
    assert error.value.field == "image_refs[0]"


@pytest.mark.parametrize("kind", ["PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF"])
def test_images_users_send_are_read_and_postscript_is_not(tmp_path: Path, kind: str) -> None:
    """An EPS would be handed to Ghostscript, a PostScript interpreter; it is refused like a non-image."""
    path = tmp_path / f"key.{kind.lower()}"
    Image.new("RGB", (40, 30), (200, 90, 30)).save(path, kind)
    assert check_image(path, "images[0]") == (40, 30)
    postscript = tmp_path / "key.eps"
    postscript.write_text("%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 40 30\n0 0 moveto 40 30 lineto stroke\n%%EOF\n")
    with pytest.raises(ValidationError, match="not a readable image") as error:
        check_image(postscript, "images[1]")
    assert error.value.field == "images[1]"


def test_check_image_reads_the_size_from_the_header(tmp_path: Path) -> None:
    path = three_bands(tmp_path / "bands.png", (90, 30), vertical=False)
    assert check_image(path, "images[0]") == (90, 30)


# ---- inputs are media files, never playlists ---------------------------------------------------------------

REFUSED_FORMAT = "not a media file of a format this worker reads"


def playlist(path: Path, *entries: str) -> Path:
    """An HLS playlist naming `entries` (files or URLs) as its segments."""
    lines = ["#EXTM3U", "#EXT-X-TARGETDURATION:1", "#EXT-X-MEDIA-SEQUENCE:0"]
    for entry in entries:
        lines += ["#EXTINF:1.0,", entry]
    path.write_text("\n".join([*lines, "#EXT-X-ENDLIST", ""]))
    return path


def test_a_playlist_input_is_refused_without_opening_what_it_names(tmp_path: Path, file_server) -> None:
    """An HLS playlist (say, fetched from a URL ending in .m3u8) would have ffmpeg open the files and URLs it
    lists: local files outside the worker's folders, or services inside the box's network."""
    segment = tmp_path / "elsewhere" / "segment.ts"
    segment.parent.mkdir()
    run_ffmpeg(["-loglevel", "error", "-f", "lavfi", "-i", f"testsrc=size={WIDTH}x{HEIGHT}:rate={FPS}", "-t", "1",
                "-c:v", "libx264", "-f", "mpegts", str(segment)], check=True)
    assert probe(segment).frames == FPS  # the segment itself is a readable video
    remote = file_server.serve("/segment.ts", segment.read_bytes())
    for entries in ([f"file://{segment}"], [str(segment)], [remote]):
        listed = playlist(tmp_path / "guide.m3u8", *entries)
        for read in (probe, lambda path: read_video(path)):
            with pytest.raises(FFmpegError, match=REFUSED_FORMAT):
                read(listed)
        with pytest.raises(FFmpegError, match=REFUSED_FORMAT):
            mux_audio(segment, listed, tmp_path / f"muxed{len(entries[0])}.mp4", 1.0)
    assert file_server.hits["/segment.ts"] == 0


@pytest.mark.parametrize("suffix, options", [
    (".webm", ["-c:v", "libvpx-vp9", "-deadline", "realtime"]), (".avi", ["-c:v", "mjpeg"]), (".mov", ["-c:v", "libx264"]),
    (".mkv", ["-c:v", "ffv1"]), (".ts", ["-c:v", "libx264"]), (".gif", []), (".mp4", ["-c:v", "libx264"]),
])
def test_the_media_formats_users_send_are_read(tmp_path: Path, suffix: str, options: list[str]) -> None:
    path = tmp_path / f"clip{suffix}"
    run_ffmpeg(["-loglevel", "error", "-f", "lavfi", "-i", f"testsrc=size={WIDTH}x{HEIGHT}:rate={FPS}", "-t", "1",
                *options, str(path)], check=True)
    info = probe(path)
    assert (info.frames, info.width, info.height) == (FPS, WIDTH, HEIGHT)
    assert read_video(path).shape == (FPS, HEIGHT, WIDTH, 3)
