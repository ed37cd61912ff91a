"""What a fleet without a shared disk costs per travel segment: the upload of a segment's video (and
thumbnail) to S3 and the fetch of it by the next segment's box, beside the segment's generation time.

    python bench/transfer.py                         # moto's S3 server on 127.0.0.1, tiny model on the CPU
    python bench/transfer.py --endpoint-from-env --storage-url s3://bucket/bench   # a real bucket (AWS_* variables)

Two videos are measured, each --repeats times (medians reported):
  * the tiny VACE model's segment (--size, --frames, 2 steps), generated here: its generation time is
    the yardstick the overhead is compared with;
  * a segment of production size (81 frames at 832x480, synthetic moving content encoded as the worker
    encodes);
  * --bulk-mb of random bytes, for a throughput figure (MB/s) of multipart uploads and streamed fetches.
Upload = worker.storage.OutputStorage.publish (transfer manager + HEAD check); fetch =
worker.inputs.InputFetcher.fetch of the s3:// URL into an empty cache (download + hash + rename), the
path a segment on another box takes. Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import numpy as np

from worker.generation import write_video
from worker.inputs import InputFetcher
from worker.storage import OutputStorage

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stitch import synthetic_segment  # noqa: E402 (a sibling bench script)

MB = 1024**2


def timed(call: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    value = call()
    return time.perf_counter() - started, value


def start_local_s3() -> Any:
    """moto's S3 server on a free port; the AWS_* variables point boto3 at it."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ.update(AWS_ENDPOINT_URL=f"http://{host}:{port}", AWS_ACCESS_KEY_ID="bench",
                      AWS_SECRET_ACCESS_KEY="bench", AWS_REGION="us-east-1")
    return server


def tiny_segment(folder: Path, size: str, frames: int, device: str, repeats: int) -> tuple[float, Path]:
    """Generate a tiny VACE segment like a travel segment (guide + mask); (median seconds, mp4 path)."""
    import torch

    from wan_engine.engine import Engine
    from wan_engine.request import GenerationRequest
    from wan_engine.testing import write_tiny_models

    width, height = (int(side) for side in size.split("x"))
    models = write_tiny_models(folder / "models")
    engine = Engine(models, device=device, dtype=torch.float32 if device == "cpu" else torch.bfloat16)
    guide = np.full((frames, height, width, 3), 127, np.uint8)
    guide[0], guide[-1] = 30, 220
    mask = np.full((frames, height, width), 255, np.uint8)
    mask[0] = mask[-1] = 0
    request = GenerationRequest(model="tiny_vace", prompt="a walk into the forest", width=width, height=height,
                                video_length=frames, seed=1, num_inference_steps=2, video_guide=guide, video_mask=mask)
    engine.generate(request)  # loads the model; the timed runs below are resident-model segments
    runs = [timed(lambda: engine.generate(request)) for _ in range(repeats)]
    seconds, result = statistics.median(run[0] for run in runs), runs[-1][1]
    output = folder / "tiny" / "segment-0.mp4"
    output.parent.mkdir(parents=True)
    write_video(result.frames, output, 16)
    return seconds, output


def production_segment(folder: Path) -> Path:
    output = folder / "production" / "segment-0.mp4"
    output.parent.mkdir(parents=True)
    write_video(synthetic_segment(0, 81, 832, 480), output, 16)
    return output


def bulk_file(folder: Path, megabytes: int) -> Path:
    """Incompressible bytes, large enough for multipart uploads and a throughput figure."""
    output = folder / "bulk" / "segment-0.mp4"
    output.parent.mkdir(parents=True)
    output.write_bytes(os.urandom(megabytes * MB))
    return output


def measure(video: Path, storage_url: str, repeats: int, scratch: Path) -> dict[str, Any]:
    """Median upload and fetch seconds (and MB/s) of `video` with its thumbnail."""
    thumbnail = video.with_name(video.stem + ".thumb.png")
    artifacts = {"output": video, **({"thumbnail": thumbnail} if thumbnail.is_file() else {})}
    size = sum(path.stat().st_size for path in artifacts.values())
    # One storage and one fetcher for all repeats, as a worker keeps them (connection pools warm).
    storage = OutputStorage(storage_url, keep_local=True)
    fetcher = InputFetcher(scratch / "cache", max_bytes=2 * 1024**3, connect_timeout_seconds=10,
                           read_timeout_seconds=60, attempts=3)
    uploads, fetches = [], []
    for repeat in range(repeats + 1):  # the first round (client set-up) is not counted
        task_id = uuid.uuid4().hex
        upload_seconds, fields = timed(lambda: storage.publish(task_id, artifacts))
        shutil.rmtree(fetcher.cache_dir, ignore_errors=True)
        fetch_seconds, path = timed(lambda: fetcher.fetch(fields["output_object_url"], "previous_segment_task_id"))
        assert path.stat().st_size == video.stat().st_size
        if repeat:
            uploads.append(upload_seconds)
            fetches.append(fetch_seconds)
    upload, fetch = statistics.median(uploads), statistics.median(fetches)
    return {"video_bytes": video.stat().st_size, "uploaded_bytes": size,
            "upload_seconds": round(upload, 4), "upload_mb_per_s": round(size / MB / upload, 1),
            "fetch_seconds": round(fetch, 4), "fetch_mb_per_s": round(video.stat().st_size / MB / fetch, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--endpoint-from-env", action="store_true",
                        help="use the bucket the AWS_* variables reach instead of a local moto server")
    parser.add_argument("--storage-url", default=None, help="s3://bucket/prefix (default: a new local bucket)")
    parser.add_argument("--size", default="64x48", help="tiny segment WxH")
    parser.add_argument("--frames", type=int, default=17, help="tiny segment frames (4n+1)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bulk-mb", type=int, default=64, help="size of the throughput file")
    args = parser.parse_args()

    server = None if args.endpoint_from_env else start_local_s3()
    storage_url = args.storage_url
    if storage_url is None:
        import boto3

        bucket = f"bench-{uuid.uuid4().hex[:10]}"
        boto3.session.Session().client("s3").create_bucket(Bucket=bucket)
        storage_url = f"s3://{bucket}/transfer"
    try:
        with tempfile.TemporaryDirectory(prefix="wan-transfer-") as scratch:
            folder = Path(scratch)
            generation_seconds, tiny = tiny_segment(folder, args.size, args.frames, args.device, args.repeats)
            tiny_figures = measure(tiny, storage_url, args.repeats, folder)
            production = measure(production_segment(folder), storage_url, args.repeats, folder)
            bulk = measure(bulk_file(folder, args.bulk_mb), storage_url, args.repeats, folder)
    finally:
        if server is not None:
            server.stop()
    overhead = tiny_figures["upload_seconds"] + tiny_figures["fetch_seconds"]
    print(json.dumps({
        "bench": "transfer",
        "storage": "moto server on 127.0.0.1" if server is not None else "AWS_* endpoint",
        "device": args.device,
        "cpu_count": os.cpu_count(),
        "repeats": args.repeats,
        "tiny_segment": {"size": args.size, "frames": args.frames, "steps": 2,
                         "generation_seconds": round(generation_seconds, 4), **tiny_figures,
                         "transfer_overhead_seconds": round(overhead, 4),
                         "transfer_overhead_share_of_generation": round(overhead / generation_seconds, 3)},
        "production_size_segment": {"size": "832x480", "frames": 81, "content": "synthetic", **production},
        "bulk": {"megabytes": args.bulk_mb, "content": "random bytes (multipart above 16 MiB)", **bulk},
    }, indent=2))


if __name__ == "__main__":
    main()
