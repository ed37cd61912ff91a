"""`wan-worker demo`, the README's first command, and what a user does next with its output:
`wan-worker stats` and `wan-worker compare`."""
from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import REPO_ROOT
from worker.video import probe


@dataclass
class DemoRun:
    folder: Path
    output: str
    returncode: int

    def printed(self, label: str) -> str:
        """The value printed after `label:` at the start of a line."""
        for line in self.output.splitlines():
            if line.startswith(f"{label}:"):
                return line.split(":", 1)[1].strip()
        raise AssertionError(f"the demo printed no {label!r} line:\n{self.output}")


def wan_worker(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "worker.cli", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    """One run of the demo command, as a user runs it (a fresh folder, JSON logs to stderr)."""
    folder = tmp_path_factory.mktemp("demo")
    done = wan_worker("demo", "--dir", str(folder), "--log-format", "json", "--log-level", "warning")
    return DemoRun(folder=folder, output=done.stdout + done.stderr, returncode=done.returncode)


def test_the_demo_ends_with_a_travel_video_of_the_planned_shape(demo: DemoRun) -> None:
    assert demo.returncode == 0, demo.output
    info = probe(demo.printed("video"))
    assert (info.frames, info.width, info.height, info.fps) == (30, 128, 80, 8)  # 17 + 17 - 4 frames
    assert Path(demo.printed("video")).is_relative_to(demo.folder / "outputs")
    assert Path(demo.printed("thumbnail")).is_file()


def test_the_demo_prints_the_stats_table_of_its_job(demo: DemoRun) -> None:
    for row in ("travel_orchestrator", "travel_segment", "travel_stitch", "denoise_high", "denoise_low", "stitch"):
        assert row in demo.output


def test_stats_reads_what_the_demo_left_in_its_database(demo: DemoRun) -> None:
    done = wan_worker("stats", "--database-url", f"sqlite:///{demo.folder / 'demo.db'}", "--json")

    stats = json.loads(done.stdout)
    counts = {row["task_type"]: (row["tasks"], row["complete"]) for row in stats["counts"]}
    assert counts == {"travel_orchestrator": (1, 1), "travel_segment": (2, 2), "travel_stitch": (1, 1)}
    assert {row["model"] for row in stats["phases"]} == {"tiny_vace_2_2"}


def test_compare_puts_the_demo_segments_side_by_side(demo: DemoRun, tmp_path: Path) -> None:
    segments = [segment.strip() for segment in demo.printed("segments").split(",")]

    done = wan_worker("compare", *segments, "--labels", "segment 0", "segment 1", "--out-dir", str(tmp_path))

    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    [pair] = report["pairs"]
    assert (pair["a"], pair["b"]) == ("segment 0", "segment 1")
    assert 0 < pair["psnr_db"] < 100 and -1 <= pair["ssim"] < 1  # two different clips
    assert probe(tmp_path / "side_by_side.mp4").frames == 17
    assert (tmp_path / "contact_sheet.png").is_file()


def test_compare_with_a_label_per_video_missing_says_so_without_a_traceback(demo: DemoRun, tmp_path: Path) -> None:
    segments = [segment.strip() for segment in demo.printed("segments").split(",")]

    done = wan_worker("compare", *segments, "--labels", "only one", "--out-dir", str(tmp_path))

    assert done.returncode == 2
    assert done.stderr.startswith("wan-worker compare: ") and "2 videos but 1 labels" in done.stderr
    assert "Traceback" not in done.stderr
