"""URL inputs (worker/inputs.py): fetched from a real HTTP server and a real S3-compatible server on
127.0.0.1 into the content-addressed cache, with size limits, timeouts, retries and clear errors."""
from __future__ import annotations

import hashlib
import io
import re
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from fleet_servers import bucket, closed_port_url, file_server, s3, s3_endpoint, s3_env  # noqa: F401 (fixtures)
from worker.errors import TaskCancelled, TransientError, ValidationError
from worker.inputs import InputFetcher, fetch_input, is_url
from worker.params import ParamReader, existing_file
from worker.video import check_image


def png(color: tuple[int, int, int] = (200, 40, 40), size: tuple[int, int] = (24, 16)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def fetcher(tmp_path: Path, **options: float) -> InputFetcher:
    settings = {"max_bytes": 1_000_000, "connect_timeout_seconds": 2.0, "read_timeout_seconds": 2.0, "attempts": 3,
                "backoff_first_seconds": 0.02, **options}
    return InputFetcher(tmp_path / "cache", **settings)


def test_urls_are_told_from_paths() -> None:
    assert is_url("http://host/a.png") and is_url("HTTPS://host/a.png") and is_url("s3://bucket/key.mp4")
    assert not is_url("/data/a.png") and not is_url("relative/a.png") and not is_url("ftp://host/a.png")
    assert not is_url(42)


def test_a_url_is_downloaded_into_the_content_addressed_cache(tmp_path: Path, file_server) -> None:
    body = png()
    url = file_server.serve("/keys/a.png", body, content_type="image/png")

    path = fetcher(tmp_path).fetch(url, "images[0]")

    assert path.read_bytes() == body
    assert path.name == hashlib.sha256(body).hexdigest() + ".png"
    assert path.parent == tmp_path / "cache" / "objects"
    assert not any((tmp_path / "cache" / "tmp").iterdir())


def test_the_same_url_is_fetched_once_even_by_two_concurrent_fetchers(tmp_path: Path, file_server) -> None:
    url = file_server.serve("/keys/slow.png", png(), delay_seconds=0.3)
    # Two fetchers on one cache folder: what two worker processes on one box are.
    first, second = fetcher(tmp_path), fetcher(tmp_path)
    results: list[Path] = []
    threads = [threading.Thread(target=lambda f=f: results.append(f.fetch(url, "images[0]"))) for f in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert results[0] == results[1] and results[0].read_bytes() == png()
    assert first.fetch(url, "images[0]") == results[0]
    assert file_server.hits["/keys/slow.png"] == 1


def test_equal_content_at_two_urls_is_stored_once(tmp_path: Path, file_server) -> None:
    inputs = fetcher(tmp_path)
    a = inputs.fetch(file_server.serve("/a.png", png()), "a")
    b = inputs.fetch(file_server.serve("/b.png", png()), "b")
    assert a == b and len(list((tmp_path / "cache" / "objects").iterdir())) == 1


def test_a_server_error_is_retried_until_it_answers(tmp_path: Path, file_server) -> None:
    url = file_server.serve("/flaky.png", png(), fail_first=2)
    assert fetcher(tmp_path).fetch(url, "image_refs[0]").read_bytes() == png()
    assert file_server.hits["/flaky.png"] == 3


def test_a_server_that_keeps_failing_is_a_transient_error_naming_field_url_and_status(tmp_path: Path, file_server) -> None:
    url = file_server.serve("/down.png", png(), fail_first=99)
    with pytest.raises(TransientError, match=r"video_guide: http://127\.0\.0\.1:\d+/down\.png: HTTP 500 .*after 3 attempts"):
        fetcher(tmp_path).fetch(url, "video_guide")
    assert file_server.hits["/down.png"] == 3


def test_a_404_fails_at_once_naming_field_url_and_status(tmp_path: Path, file_server) -> None:
    url = file_server.url("/missing.png?X-Amz-Signature=secret")
    with pytest.raises(ValidationError) as error:
        fetcher(tmp_path).fetch(url, "images[1]")
    assert type(error.value) is ValidationError and error.value.field == "images[1]"
    assert "/missing.png: HTTP 404 Not Found" in error.value.rule and "secret" not in error.value.rule
    assert file_server.hits["/missing.png?X-Amz-Signature=secret"] == 1


def test_a_403_is_a_validation_error_without_retry(tmp_path: Path, file_server) -> None:
    url = file_server.serve("/private.png", b"no", status=403)
    with pytest.raises(ValidationError, match="HTTP 403 Forbidden"):
        fetcher(tmp_path).fetch(url, "video_mask")
    assert file_server.hits["/private.png"] == 1


def test_a_slow_answer_times_out_and_the_retry_succeeds(tmp_path: Path, file_server) -> None:
    url = file_server.serve("/slow-once.png", png(), delay_first_seconds=0.8)
    assert fetcher(tmp_path, read_timeout_seconds=0.3).fetch(url, "images[0]").read_bytes() == png()
    assert file_server.hits["/slow-once.png"] == 2


@pytest.mark.parametrize("length_header", [True, False], ids=["declared", "undeclared"])
def test_an_oversized_file_is_refused_and_nothing_is_left_in_the_cache(tmp_path: Path, file_server,
                                                                       length_header: bool) -> None:
    url = file_server.serve("/big.bin", b"x" * 300_000, length_header=length_header)
    with pytest.raises(ValidationError, match=r"big\.bin: .*the limit is 100000 bytes \(--max-input-bytes\)"):
        fetcher(tmp_path, max_bytes=100_000).fetch(url, "video_guide")
    assert not any((tmp_path / "cache" / "tmp").iterdir()) and not any((tmp_path / "cache" / "objects").iterdir())


def test_a_server_that_trickles_bytes_cannot_hold_a_task_past_the_download_deadline(tmp_path: Path, file_server) -> None:
    """16 bytes every 0.05 s: each read comes well within the read timeout; the whole would take 6 s,
    the deadline is 0.5 s, so the fetch ends with most of the body never sent, and is not retried."""
    url = file_server.serve("/trickle.png", b"x" * 2000, trickle_seconds=0.05)
    with pytest.raises(TransientError) as error:
        fetcher(tmp_path, read_timeout_seconds=2.0, download_seconds=0.5).fetch(url, "images[0]")
    arrived = re.fullmatch(r"images\[0\]: http://127\.0\.0\.1:\d+/trickle\.png: not fetched within 0\.5 s "
                           r"\((\d+) bytes arrived; --input-download-seconds\)", str(error.value))
    assert arrived is not None and int(arrived.group(1)) < 2000
    assert file_server.hits["/trickle.png"] == 1
    assert not any((tmp_path / "cache" / "tmp").iterdir()) and not any((tmp_path / "cache" / "objects").iterdir())


def test_a_stopped_task_abandons_its_download(tmp_path: Path, file_server) -> None:
    url = file_server.serve("/long.mp4", b"x" * 100_000, trickle_seconds=0.02)  # about 2 minutes in all
    stopped = threading.Event()

    def stop_check() -> None:
        if stopped.is_set():
            raise TaskCancelled("task stopped")

    outcome: list[BaseException] = []

    def fetch() -> None:
        with fetcher(tmp_path).active(stop_check=stop_check):
            try:
                fetch_input(url, "video_guide")
            except TaskCancelled as error:
                outcome.append(error)

    thread = threading.Thread(target=fetch)
    thread.start()
    time.sleep(0.3)
    stopped.set()
    thread.join(timeout=30)
    assert not thread.is_alive() and len(outcome) == 1
    assert not any((tmp_path / "cache" / "tmp").iterdir()) and not any((tmp_path / "cache" / "objects").iterdir())


def test_an_unreachable_host_is_a_transient_error_naming_the_url(tmp_path: Path) -> None:
    url = closed_port_url("/a.png")
    with pytest.raises(TransientError, match=r"images\[0\]: http://127\.0\.0\.1:\d+/a\.png: ConnectError"):
        fetcher(tmp_path, attempts=2).fetch(url, "images[0]")


def test_s3_objects_are_fetched_with_the_standard_aws_variables(tmp_path: Path, bucket: str) -> None:
    s3().put_object(Bucket=bucket, Key="inputs/guide.png", Body=png((1, 2, 3)))
    path = fetcher(tmp_path).fetch(f"s3://{bucket}/inputs/guide.png", "video_guide")
    assert path.read_bytes() == png((1, 2, 3)) and path.suffix == ".png"


def test_a_missing_s3_object_is_permanent_or_when_awaited_transient_naming_the_url(tmp_path: Path, bucket: str) -> None:
    url = f"s3://{bucket}/nothing.mp4"
    with pytest.raises(ValidationError) as error:
        fetcher(tmp_path).fetch(url, "video_guide")
    assert str(error.value) == f"video_guide: {url}: NoSuchKey (HTTP 404)"
    with pytest.raises(TransientError) as error:
        fetcher(tmp_path).fetch(url, "previous_segment_task_id", missing_is_transient=True)
    assert str(error.value) == f"previous_segment_task_id: {url}: NoSuchKey (HTTP 404)"


def test_path_helpers_take_urls_through_the_active_fetcher(tmp_path: Path, file_server) -> None:
    url = file_server.serve("/ref.png", png())
    reader = ParamReader({"image_refs": [url], "video_guide": url})
    with pytest.raises(ValidationError, match="fetched only inside a worker's task"):
        reader.input_files("image_refs")
    with fetcher(tmp_path).active():
        [ref] = reader.input_files("image_refs")
        assert ref.read_bytes() == png() and reader.input_file("video_guide") == ref
        assert existing_file(str(ref), "local") == ref  # local paths work as before
    with pytest.raises(ValidationError):
        fetch_input(url, "image_refs[0]")  # the fetcher is active only inside the block


def test_content_decides_not_the_content_type(tmp_path: Path, file_server) -> None:
    inputs = fetcher(tmp_path)
    image = inputs.fetch(file_server.serve("/a.png", png(), content_type="text/html"), "images[0]")
    assert check_image(image, "images[0]") == (24, 16)
    page = inputs.fetch(file_server.serve("/b.png", b"<html>sign in</html>", content_type="image/png"), "images[1]")
    with pytest.raises(ValidationError, match=r"images\[1\]: not a readable image"):
        check_image(page, "images[1]")


# ---- hosts under --input-url-hosts -------------------------------------------------------------------------

def test_with_url_hosts_only_those_hosts_are_fetched_from_redirects_included(tmp_path: Path, file_server) -> None:
    allowed = fetcher(tmp_path, url_hosts=("127.0.0.1", "*.example.com"))
    assert allowed.fetch(file_server.serve("/a.png", png()), "images[0]").read_bytes() == png()
    assert allowed.allows_host("cdn.example.com") and allowed.allows_host("A.B.Example.COM")
    assert not allowed.allows_host("example.com") and not allowed.allows_host("evilexample.com")
    elsewhere = f"http://localhost:{file_server.port}/b.png"
    file_server.serve("/b.png", png())
    with pytest.raises(ValidationError) as error:
        allowed.fetch(elsewhere, "images[1]")
    assert error.value.field == "images[1]" and error.value.rule == (
        f"{elsewhere}: the host 'localhost' is not one this worker fetches inputs from "
        "(127.0.0.1, *.example.com; --input-url-hosts)")
    redirect = file_server.serve("/moved.png", b"", status=302, location=elsewhere)
    with pytest.raises(ValidationError, match=r"moved\.png: redirected; the host 'localhost' is not one"):
        allowed.fetch(redirect, "images[2]")
    assert file_server.hits["/b.png"] == 0 and file_server.hits["/moved.png"] == 1
    assert fetcher(tmp_path).fetch(redirect, "images[2]").read_bytes() == png()  # without the setting: any host


# ---- local paths under --input-dirs ------------------------------------------------------------------------

def test_with_local_roots_a_path_must_resolve_inside_one_of_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    allowed, outside = tmp_path / "inputs", tmp_path / "elsewhere"
    (allowed / "keys").mkdir(parents=True)
    outside.mkdir()
    (allowed / "keys" / "a.png").write_bytes(png())
    (outside / "b.png").write_bytes(png())
    (allowed / "keys" / "link.png").symlink_to(outside / "b.png")
    (allowed / "escape").symlink_to(outside)
    guarded = fetcher(tmp_path, local_roots=(allowed,))
    with guarded.active():
        assert existing_file(str(allowed / "keys" / "a.png"), "images[0]") == allowed / "keys" / "a.png"
        monkeypatch.chdir(allowed)
        assert existing_file("keys/a.png", "images[0]") == Path("keys/a.png")  # relative to the working folder
        for refused in (outside / "b.png", allowed / "keys" / "link.png", allowed / "escape" / "b.png",
                        allowed / ".." / "elsewhere" / "b.png", Path("../elsewhere/b.png")):
            with pytest.raises(ValidationError) as error:
                existing_file(str(refused), "images[1]")
            assert error.value.field == "images[1]"
            assert "outside the folders this worker reads local inputs from" in error.value.rule
            assert str(allowed) in error.value.rule and "--input-dirs" in error.value.rule
        cached = guarded.cache_dir / "objects" / "c.png"  # the worker's own cache is always readable
        cached.parent.mkdir(parents=True)
        cached.write_bytes(png())
        assert existing_file(str(cached), "images[2]") == cached
    with fetcher(tmp_path).active():  # without roots, any local path, as before
        assert existing_file(str(outside / "b.png"), "images[1]") == outside / "b.png"


# ---- a cache of bounded size -------------------------------------------------------------------------------

def test_a_bounded_cache_drops_the_least_recently_used_objects_and_refetches_them_when_asked(
        tmp_path: Path, file_server) -> None:
    urls = [file_server.serve(f"/clip{i}.mp4", bytes([i]) * 1000) for i in range(4)]
    inputs = fetcher(tmp_path, max_cached_bytes=2500, keep_recent_seconds=0.0)
    first = inputs.fetch(urls[0], "a")
    second = inputs.fetch(urls[1], "b")
    time.sleep(0.02)
    assert inputs.fetch(urls[0], "a") == first  # a cache hit: clip 0 is now the more recently used
    time.sleep(0.02)
    third = inputs.fetch(urls[2], "c")  # 3000 bytes held: the least recently used, clip 1, goes
    assert first.is_file() and not second.exists() and third.is_file()
    assert inputs.fetch(urls[1], "b").read_bytes() == bytes([1]) * 1000  # asked for again: fetched again
    assert file_server.hits["/clip1.mp4"] == 2 and file_server.hits["/clip0.mp4"] == 1
    held = sum(path.stat().st_size for path in (tmp_path / "cache" / "objects").iterdir())
    assert held <= 2500


def test_a_bounded_cache_keeps_what_was_used_within_the_last_hour_even_over_its_size(tmp_path: Path, file_server) -> None:
    inputs = fetcher(tmp_path, max_cached_bytes=1500)
    paths = [inputs.fetch(file_server.serve(f"/key{i}.png", bytes([i]) * 1000), f"images[{i}]") for i in range(3)]
    assert all(path.is_file() for path in paths)
    assert inputs.prune() == 0


def test_a_bounded_cache_keeps_an_object_installed_as_a_lora(tmp_path: Path, file_server) -> None:
    """Its bytes live on in the LoRA folder: removing the cache's link would free nothing, and the next
    task naming the URL would download it again."""
    inputs = fetcher(tmp_path, max_cached_bytes=100, keep_recent_seconds=0.0)
    lora = file_server.serve("/style.safetensors", b"s" * 1000)
    inputs.install_loras([lora], tmp_path / "loras")
    inputs.fetch(file_server.serve("/clip.mp4", b"c" * 1000), "video_guide")
    time.sleep(0.02)
    inputs.fetch(file_server.serve("/other.mp4", b"o" * 1000), "video_guide")  # over the limit: clip.mp4 goes
    inputs.install_loras([lora], tmp_path / "loras")
    assert file_server.hits["/style.safetensors"] == 1 and (tmp_path / "loras" / "style.safetensors").is_file()
    assert len(list((tmp_path / "cache" / "objects").iterdir())) == 2  # the LoRA's and the newest clip
