"""Output paths: everything a task writes stays inside <output_dir>/<task_id>/."""
from __future__ import annotations

from pathlib import Path

import pytest

from worker.errors import ValidationError
from worker.paths import output_file, task_output_dir


def test_a_plain_file_name_lands_in_the_task_folder(tmp_path: Path) -> None:
    folder = task_output_dir(tmp_path, "0b8a852e-0000-4000-8000-000000000000")

    assert output_file(folder, "video.mp4") == (tmp_path / "0b8a852e-0000-4000-8000-000000000000" / "video.mp4").resolve()


@pytest.mark.parametrize("name", ["../escape.mp4", "/etc/passwd", "sub/dir.mp4", "..", ".hidden", "", "a\x00b"])
def test_names_that_could_leave_the_task_folder_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValidationError) as error:
        output_file(task_output_dir(tmp_path, "task"), name)
    assert error.value.field == "output_filename"


def test_a_link_planted_in_the_task_folder_is_not_followed(tmp_path: Path) -> None:
    folder = task_output_dir(tmp_path / "outputs", "task")
    (folder / "video.mp4").symlink_to(tmp_path / "outside.mp4")

    with pytest.raises(ValidationError, match="outside"):
        output_file(folder, "video.mp4")


@pytest.mark.parametrize("task_id", ["../other", "a/b", "..", ""])
def test_a_task_id_that_is_not_one_path_component_is_refused(tmp_path: Path, task_id: str) -> None:
    with pytest.raises(ValidationError):
        task_output_dir(tmp_path, task_id)
