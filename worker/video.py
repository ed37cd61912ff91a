"""Video and image I/O: frames in and out of ffmpeg, images fitted to a resolution.

Every frame array in the worker is uint8 RGB, `[H, W, 3]` for one frame and `[F, H, W, 3]` for a
clip. ffmpeg is imageio-ffmpeg's bundled binary (so a bare `pip install` is enough); commands are
built with ffmpeg-python and run with `subprocess`, so the worker owns the process: stderr goes to a
temporary file (an unread pipe would stall ffmpeg once it fills), and a failed or abandoned run is
killed and leaves no half-written output behind.

ffprobe is not bundled. `probe` reads the stream header that `ffmpeg -i` prints (size, fps) and
counts frames by stream-copying the video to the null muxer (`-c copy -f null -`): that walks the
packets without decoding them, one packet per frame for the H.264 mp4 files the worker writes, and
ffmpeg's final `frame=` line is the count.
"""
from __future__ import annotations

import os
import re
import subprocess
import tempfile
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import ffmpeg
import imageio_ffmpeg
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from worker.config import DEFAULT_MAX_IMAGE_PIXELS
from worker.errors import StorageError, ValidationError
from worker.params import path_kind
from worker.paths import create_new_file, replace_file, storage_problem, writing_new_file

# H.264 settings of every mp4 the worker writes: CRF 18 is visually lossless for generated content;
# yuv420p and +faststart make the file play in browsers and start before it is fully downloaded.
VIDEO_CODEC = "libx264"
PIXEL_FORMAT = "yuv420p"
CRF = 18
# Encode with BT.709 and say so in the stream, so players do not guess the matrix.
COLOR_SPACE = "bt709"

_STDERR_TAIL_CHARS = 2000


class FFmpegError(RuntimeError):
    """ffmpeg failed on a file the worker made or was asked to read; carries ffmpeg's own words."""


@dataclass(frozen=True)
class VideoInfo:
    """What `probe` reads from a video file."""

    frames: int
    width: int
    height: int
    fps: float


# Demuxers a task's video or audio file may be opened with: media containers and raw streams only. A
# playlist or script (HLS .m3u8, DASH, concat lists) names other files or URLs, which ffmpeg would open
# outside the folders the worker reads, and from inside the box's network; with these options ffmpeg
# refuses a file of any other format and opens nothing but local files.
MEDIA_DEMUXERS = ("mov", "matroska", "avi", "mpegts", "mpeg", "flv", "asf", "mxf", "dv", "nut", "ogg", "gif", "ivf",
                  "h264", "hevc", "mjpeg", "yuv4mpegpipe", "mp3", "aac", "wav", "flac", "aiff")
GUARDED_INPUT = {"protocol_whitelist": "file", "format_whitelist": ",".join(MEDIA_DEMUXERS)}


def guarded_input(path: str | os.PathLike[str]) -> list[str]:
    """ffmpeg's arguments opening the file `path` as an input, under GUARDED_INPUT."""
    return [*(arg for name, value in GUARDED_INPUT.items() for arg in (f"-{name}", value)), "-i", str(path)]


def ffmpeg_exe() -> str:
    """Path of the bundled ffmpeg binary."""
    return imageio_ffmpeg.get_ffmpeg_exe()


def run_ffmpeg(args: list[str], check: bool = False) -> str:
    """Run ffmpeg to completion and return its stderr (where it reports stream info and progress).

    `ffmpeg -i FILE` alone exits non-zero by design (no output given), hence `check` is opt-in.
    """
    return _ffmpeg(args, check).stderr


def _ffmpeg(args: list[str], check: bool, pass_fds: tuple[int, ...] = ()) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", *args], capture_output=True, text=True,
                          pass_fds=pass_fds)
    if check and proc.returncode != 0:
        raise FFmpegError(f"ffmpeg {' '.join(args)} failed: {_said(proc.stderr)}")
    return proc


def _stderr_tail(stderr_file: IO[bytes]) -> str:
    stderr_file.seek(0)
    return _said(stderr_file.read().decode(errors="replace"))


def _said(stderr: str) -> str:
    """What ffmpeg's complaint means: a refused format in words, else the end of what it wrote."""
    if "not on whitelist" in stderr:
        return ("not a media file of a format this worker reads (playlists and scripts, such as HLS .m3u8, "
                "are refused: they name other files)")
    return stderr[-_STDERR_TAIL_CHARS:].strip()


_VIDEO_STREAM = re.compile(r"Stream #\d+:\d+.*?: Video: (.*)")
_SIZE = re.compile(r"[ ,](\d+)x(\d+)(?=[\s,\[]|$)")
_FPS = re.compile(r"(\d+(?:\.\d+)?) fps")
_TBR = re.compile(r"(\d+(?:\.\d+)?)(k?) tbr")


def _parse_video_header(path: Path, stderr: str) -> tuple[int, int, float]:
    """(width, height, fps) of the first video stream, from the header `ffmpeg -i` prints."""
    match = _VIDEO_STREAM.search(stderr)
    if match is None:
        raise FFmpegError(f"{path}: no video stream found; ffmpeg said: {_said(stderr)}")
    stream = match.group(1)
    size = _SIZE.search(stream)
    if size is None:
        raise FFmpegError(f"{path}: cannot read the frame size from {stream!r}")
    fps = _FPS.search(stream)
    if fps is not None:
        rate = float(fps.group(1))
    else:
        tbr = _TBR.search(stream)
        if tbr is None:
            raise FFmpegError(f"{path}: cannot read the frame rate from {stream!r}")
        rate = float(tbr.group(1)) * (1000 if tbr.group(2) else 1)
    return int(size.group(1)), int(size.group(2)), rate


def _existing(path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    return path


def probe(path: str | os.PathLike[str]) -> VideoInfo:
    """Frame count, size and fps of a video, in one ffmpeg run (header + packet count, no decoding).

    The count is the number of video packets, one `framecrc` line each on stdout: a stable format,
    unlike the progress line on stderr, whose `frame=` field some ffmpeg releases leave out when
    stream-copying.
    """
    path = _existing(path)
    proc = _ffmpeg([*guarded_input(path), "-map", "0:v:0", "-c", "copy", "-f", "framecrc", "-"], check=True)
    width, height, fps = _parse_video_header(path, proc.stderr)
    frames = sum(1 for line in proc.stdout.splitlines() if line and not line.startswith("#"))
    return VideoInfo(frames=frames, width=width, height=height, fps=fps)


def frame_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """(width, height) of a video's frames as stored, from its header alone."""
    path = _existing(path)
    width, height, _ = _parse_video_header(path, run_ffmpeg(guarded_input(path)))
    return width, height


# A video within this many frames per second of a wanted rate is read as it is, not resampled (the
# headless worker's tolerance: reigh-worker media/video/ffmpeg_ops.py ensure_video_fps).
FPS_TOLERANCE = 0.5
# Aspect ratios (width / height) closer than this are the same shape: a video is not cropped for less.
ASPECT_TOLERANCE = 0.01


def resampled_rate(video_fps: float, wanted: float) -> float | None:
    """`wanted` when a video at `video_fps` must be resampled to it, None when it is close enough."""
    return wanted if abs(video_fps - wanted) > FPS_TOLERANCE else None


def cropped_size(width: int, height: int, aspect: float | None) -> tuple[int, int]:
    """The size of a width x height frame center-cropped to `aspect` (width / height), as the headless
    worker standardizes clips of another shape (video_transforms.py standardize_video_aspect_ratio);
    a frame already within ASPECT_TOLERANCE of it, or no aspect, keeps its size."""
    if aspect is None or abs(width / height - aspect) < ASPECT_TOLERANCE:
        return width, height
    if width / height > aspect:
        return int(height * aspect), height
    return width, int(width / aspect)


def iter_frames(path: str | os.PathLike[str], size: tuple[int, int] | None = None, *, fps: float | None = None,
                aspect: float | None = None, start: int = 0) -> Iterator[np.ndarray]:
    """Decode a video one frame at a time, each uint8 [H, W, 3] (read-only); memory holds one frame.

    Frames come out as stored (`-fps_mode passthrough`: none duplicated or dropped to fit a rate),
    unless asked to fit, in this order: resampled to `fps` (ffmpeg's fps filter: the frame showing at
    each tick of the new rate), center-cropped to the aspect ratio `aspect` (cropped_size), scaled
    to `size` (width, height) by pixel-area averaging (the aspect ratio is not kept: how the headless
    worker fits clips of another size). `start` skips that many frames (counted after resampling)
    inside ffmpeg, so frames before it are neither converted nor piped. Closing the generator early
    kills ffmpeg.
    """
    path = _existing(path)
    width, height = frame_size(path)
    if start < 0:
        raise ValueError(f"start must not be negative, got {start}")
    filters = [f"fps={fps:g}"] if fps is not None else []
    if start:
        filters.append(f"trim=start_frame={start}")
    cropped = cropped_size(width, height, aspect)
    if cropped != (width, height):
        filters.append(f"crop={cropped[0]}:{cropped[1]}:{(width - cropped[0]) // 2}:{(height - cropped[1]) // 2}")
        width, height = cropped
    if size is not None and size != (width, height):
        filters.append(f"scale={size[0]}:{size[1]}:flags=area")
        width, height = size
    fitting = {"vf": ",".join(filters)} if filters else {}
    args = (
        ffmpeg.input(str(path), noautorotate=None, **GUARDED_INPUT)  # frames as stored, matching the header's size
        .output("pipe:", format="rawvideo", pix_fmt="rgb24", fps_mode="passthrough", map="0:v:0", **fitting)
        .global_args("-hide_banner", "-nostdin", "-loglevel", "error")
        .compile(cmd=ffmpeg_exe())
    )
    frame_bytes = width * height * 3
    with tempfile.TemporaryFile() as stderr_file:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=stderr_file, bufsize=frame_bytes)
        assert proc.stdout is not None
        try:
            while True:
                buffer = proc.stdout.read(frame_bytes)
                if not buffer:
                    break
                if len(buffer) != frame_bytes:
                    raise FFmpegError(f"{path}: truncated frame ({len(buffer)} of {frame_bytes} bytes)")
                yield np.frombuffer(buffer, np.uint8).reshape(height, width, 3)
            if proc.wait() != 0:
                raise FFmpegError(f"{path}: decoding failed: {_stderr_tail(stderr_file)}")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()


def frame_count(path: str | os.PathLike[str], fps: float | None = None) -> int:
    """Frames of a video as stored (probe's packet count), or resampled to `fps` (decoded: what the fps
    filter keeps, at a thumbnail's size so that only the count costs)."""
    if fps is None:
        return probe(path).frames
    return sum(1 for _ in iter_frames(path, (16, 16), fps=fps))


def read_video(path: str | os.PathLike[str]) -> np.ndarray:
    """Decode a whole video into memory: uint8 [F, H, W, 3]. For short clips; stream long ones."""
    frames = list(iter_frames(path))
    if not frames:
        raise FFmpegError(f"{path}: the video has no frames")
    return np.stack(frames)


def read_last_frames(path: str | os.PathLike[str], count: int, size: tuple[int, int] | None = None) -> np.ndarray:
    """The last `count` frames of a video (fewer if it is shorter): uint8 [<=count, H, W, 3], scaled
    to `size` (width, height) where given (see iter_frames).

    Streams the whole file: how a segment picks up its predecessor's tail.
    """
    return video_ends(path, count, size)[2]


def video_ends(path: str | os.PathLike[str], keep: int, size: tuple[int, int] | None = None, *,
               fps: float | None = None, aspect: float | None = None) -> tuple[int, np.ndarray, np.ndarray]:
    """(frame count, the first `keep` frames, the last `keep` frames) of a video read as iter_frames
    fits it (fewer frames where it is shorter), in one pass that holds at most 2 x keep frames: what a
    join reads of the clips on each side of a cut. Raises FFmpegError for a video without frames."""
    if keep <= 0:
        raise ValueError(f"keep must be positive, got {keep}")
    head: list[np.ndarray] = []
    tail: deque[np.ndarray] = deque(maxlen=keep)
    count = 0
    for frame in iter_frames(path, size, fps=fps, aspect=aspect):
        if count < keep:
            head.append(frame)
        tail.append(frame)
        count += 1
    if not count:
        raise FFmpegError(f"{path}: the video has no frames")
    return count, np.stack(head), np.stack(tail)


class VideoWriter:
    """Stream RGB frames into an H.264 mp4 (libx264, yuv420p, CRF 18, +faststart).

    Use as a context manager. Frames go to `<name>.partial.mp4` and the file is renamed to `path`
    only when the block ends without an exception, so `path` never holds a half-written video.
    Width and height must be even (yuv420p subsamples chroma by 2 in both directions).
    """

    def __init__(self, path: str | os.PathLike[str], fps: float, width: int, height: int):
        if width <= 0 or height <= 0 or width % 2 or height % 2:
            raise ValueError(f"video size must be positive and even for {PIXEL_FORMAT}, got {width}x{height}")
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.path = Path(path)
        self.fps = fps
        self.width = width
        self.height = height
        self.frames_written = 0
        self._partial = self.path.with_name(self.path.stem + ".partial" + self.path.suffix)
        self._partial_fd = -1
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None

    def __enter__(self) -> VideoWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # The partial file is created here without following links, and ffmpeg writes to that very
        # file through its descriptor: a link planted at the partial name redirects nothing.
        self._partial_fd = create_new_file(self._partial)
        args = (
            ffmpeg.input(
                "pipe:", format="rawvideo", pix_fmt="rgb24", s=f"{self.width}x{self.height}", framerate=self.fps
            )
            .output(
                f"/proc/self/fd/{self._partial_fd}",
                vcodec=VIDEO_CODEC,
                pix_fmt=PIXEL_FORMAT,
                crf=CRF,
                movflags="+faststart",
                vf=f"scale=out_color_matrix={COLOR_SPACE}",
                colorspace=COLOR_SPACE,
                color_primaries=COLOR_SPACE,
                color_trc=COLOR_SPACE,
                format="mp4",
            )
            .overwrite_output()
            .global_args("-hide_banner", "-nostdin", "-loglevel", "error")
            .compile(cmd=ffmpeg_exe())
        )
        self._stderr = tempfile.TemporaryFile()
        self._proc = subprocess.Popen(args, stdin=subprocess.PIPE, stderr=self._stderr, pass_fds=(self._partial_fd,))
        return self

    def write(self, frames: np.ndarray) -> None:
        """Append one frame uint8 [H, W, 3] or several [N, H, W, 3]."""
        if self._proc is None or self._proc.stdin is None:
            raise RuntimeError("VideoWriter.write outside its `with` block")
        frames = np.asarray(frames)
        if frames.ndim == 3:
            frames = frames[None]
        if frames.dtype != np.uint8 or frames.shape[1:] != (self.height, self.width, 3):
            raise ValueError(
                f"expected uint8 frames [N, {self.height}, {self.width}, 3], got {frames.dtype} {list(frames.shape)}"
            )
        try:
            self._proc.stdin.write(np.ascontiguousarray(frames).tobytes())
        except BrokenPipeError:
            self._proc.wait()
            raise _encoding_error(self.path, f"ffmpeg stopped while encoding: {self._tail()}") from None
        self.frames_written += len(frames)

    def _tail(self) -> str:
        assert self._stderr is not None
        return _stderr_tail(self._stderr)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        assert self._proc is not None and self._proc.stdin is not None and self._stderr is not None
        try:
            if exc_type is not None:
                self._proc.kill()
                self._proc.wait()
                self._partial.unlink(missing_ok=True)
                return
            try:
                self._proc.stdin.close()
            except BrokenPipeError:
                pass
            if self._proc.wait() != 0 or self.frames_written == 0:
                self._partial.unlink(missing_ok=True)
                reason = self._tail() if self.frames_written else "no frames were written"
                raise _encoding_error(self.path, f"encoding failed: {reason}")
            replace_file(self._partial, self.path)
        finally:
            os.close(self._partial_fd)
            self._stderr.close()


# How ffmpeg reports a failure of the storage it writes to (strerror of ENOSPC, EDQUOT, EROFS, EIO).
_STORAGE_FAILURES = ("No space left on device", "Disk quota exceeded", "Read-only file system", "Input/output error")


def _encoding_error(path: Path, reason: str) -> Exception:
    """StorageError when ffmpeg failed because the storage did (by its words, or by the state of the
    file system: read-only, full), not the task; else FFmpegError."""
    if any(words in reason for words in _STORAGE_FAILURES):
        return StorageError(f"cannot write {path}: {reason}")
    problem = storage_problem(path.parent)
    if problem is not None:
        return StorageError(f"cannot write {path}: {problem}; ffmpeg said: {reason}")
    return FFmpegError(f"{path}: {reason}")


# The most pixels an input image may have (width x height, read from its header before decoding): a
# small PNG can claim 100000 x 100000. The worker sets it from its max_image_pixels setting.
_max_image_pixels = DEFAULT_MAX_IMAGE_PIXELS
Image.MAX_IMAGE_PIXELS = None  # PIL's own bomb check (a warning, then an error at twice its limit) gives way to this one

# What PIL raises for a file that is not a decodable image: a truncated or corrupt stream (OSError,
# SyntaxError from the PNG chunk reader, zlib errors as ValueError), a header over its own bomb limit.
_UNDECODABLE = (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


# The image formats an input may be read as. PIL would also open EPS (through Ghostscript, a PostScript
# interpreter that can read other files) and a long tail of rarely used formats.
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF", "AVIF")


def set_max_image_pixels(pixels: int) -> None:
    """The pixel limit of every image decoded from now on in this process (the max_image_pixels setting)."""
    global _max_image_pixels
    if pixels < 1:
        raise ValueError(f"max_image_pixels must be >= 1, got {pixels}")
    _max_image_pixels = pixels


def _open_image(path: str | os.PathLike[str], field: str) -> Image.Image:
    """Open an image lazily (header only) and check its size against the pixel limit; a missing,
    non-image or oversized file is the caller's bad param."""
    path = Path(path)
    if not path.is_file():
        if path.exists():
            raise ValidationError(field, f"not a regular file ({path_kind(path)}): {path}")
        raise ValidationError(field, f"image file not found: {path}")
    try:
        image = Image.open(path, formats=IMAGE_FORMATS)
    except _UNDECODABLE as error:
        raise ValidationError(field, f"not a readable image: {path} ({type(error).__name__}: {error})") from None
    width, height = image.size
    if width * height > _max_image_pixels:
        image.close()
        raise ValidationError(field, f"{path} is {width}x{height} = {width * height} pixels; the limit is "
                                     f"{_max_image_pixels} (max_image_pixels)")
    return image


def check_image(path: str | os.PathLike[str], field: str) -> tuple[int, int]:
    """Check that `path` is an image within the pixel limit by reading its header; return (width, height)."""
    with _open_image(path, field) as image:
        return image.size


def read_image(path: str | os.PathLike[str], field: str, fit_within: tuple[int, int] | None = None) -> Image.Image:
    """Decode an image as RGB, EXIF rotation applied, alpha dropped; a truncated or corrupt file is a
    ValidationError naming `field`. With `fit_within` (width, height), a much larger image is shrunk
    while it is decoded (JPEG's DCT scaling, then whole-factor reduction) to no less than that size,
    so memory follows the output, not the file."""
    with _open_image(path, field) as image:
        try:
            if fit_within is not None:
                image.draft("RGB", fit_within)  # JPEG decodes at 1/2, 1/4 or 1/8 scale: still covers fit_within
                width, height = fit_within  # either way round: EXIF may rotate the image afterwards
                factor = min(image.width // width, image.height // height, image.width // height, image.height // width)
                if factor >= 2:
                    image = image.reduce(factor)
            return ImageOps.exif_transpose(image).convert("RGB")
        except _UNDECODABLE as error:
            raise ValidationError(field, f"not a readable image: {path} ({type(error).__name__}: {error})") from None


def load_image(path: str | os.PathLike[str], width: int, height: int, field: str = "image") -> np.ndarray:
    """Load an image fitted to width x height: scaled to cover it (aspect kept), centre-cropped.

    The one fitting rule for keyframes everywhere, so guides and references line up. EXIF rotation
    is applied; alpha is dropped. Returns uint8 [height, width, 3].
    """
    image = read_image(path, field, fit_within=(width, height))
    fitted = ImageOps.fit(image, (width, height), method=Image.Resampling.LANCZOS, centering=(0.5, 0.5))
    return np.asarray(fitted, dtype=np.uint8)


def mux_audio(video: str | os.PathLike[str], audio: str | os.PathLike[str], output: str | os.PathLike[str],
              seconds: float) -> Path:
    """`video` (`seconds` long) with `audio` as its sound, written to the new file `output`: the video
    stream copied, the audio encoded to AAC and cut at the video's end (a shorter one leaves the rest
    silent). Raises FFmpegError with ffmpeg's complaint when either input cannot be read."""
    output = Path(output)
    descriptor = create_new_file(output)  # written through its descriptor, like VideoWriter's partial file
    try:
        _ffmpeg(["-loglevel", "error", "-y", *guarded_input(video), *guarded_input(audio),
                 "-map", "0:v:0", "-map", "1:a:0", "-c:v", "copy", "-c:a", "aac", "-t", f"{seconds:.6f}", "-movflags", "+faststart", "-f", "mp4",
                 f"/proc/self/fd/{descriptor}"], check=True, pass_fds=(descriptor,))
    finally:
        os.close(descriptor)
    return output


def lay_audio(video: Path, audio: Path, seconds: float, field: str) -> None:
    """Replace `video` (`seconds` long) by itself with `audio` as its sound, cut at the video's end; an
    unreadable audio file fails naming `field`, the key that gave it."""
    with_audio = video.with_name(f"{video.stem}.audio{video.suffix}")
    try:
        mux_audio(video, audio, with_audio, seconds)
    except FFmpegError as error:
        with_audio.unlink(missing_ok=True)
        raise ValidationError(field, f"not a readable audio file: {error}") from None
    os.replace(with_audio, video)


def save_png(frame: np.ndarray, path: str | os.PathLike[str]) -> Path:
    """Write one uint8 [H, W, 3] frame as PNG (thumbnails, contact sheets, debug frames)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with writing_new_file(path) as file:
        Image.fromarray(np.asarray(frame, dtype=np.uint8)).save(file, format="PNG")
    return path


def thumbnail_path(video_path: str | os.PathLike[str]) -> Path:
    """Where the thumbnail of a video goes: `<name>.thumb.png` beside it."""
    video_path = Path(video_path)
    return video_path.with_name(video_path.stem + ".thumb.png")
