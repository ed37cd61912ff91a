"""Output paths: everything a task writes stays inside <output_dir>/<task_id>/, the id is a UUID, and
no link planted in the output folder (at the task folder, the partial video, the thumbnail) is followed."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from worker.db import connect
from worker.errors import ValidationError
from worker.migrate import available_migrations, migrate
from worker.paths import output_file, task_output_dir
from worker.store import TaskStatus, TaskStore
from worker.video import VideoWriter, read_video, save_png, thumbnail_path

TASK_ID = "0b8a852e-0000-4000-8000-000000000000"


def test_a_plain_file_name_lands_in_the_task_folder(tmp_path: Path) -> None:
    folder = task_output_dir(tmp_path, TASK_ID)

    assert output_file(folder, "video.mp4") == (tmp_path / TASK_ID / "video.mp4").resolve()


@pytest.mark.parametrize("name", ["../escape.mp4", "/etc/passwd", "sub/dir.mp4", "..", ".hidden", "", "a\x00b"])
def test_names_that_could_leave_the_task_folder_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValidationError) as error:
        output_file(task_output_dir(tmp_path, TASK_ID), name)
    assert error.value.field == "output_filename"


def test_a_link_planted_at_the_final_name_is_not_followed(tmp_path: Path) -> None:
    folder = task_output_dir(tmp_path / "outputs", TASK_ID)
    (folder / "video.mp4").symlink_to(tmp_path / "outside.mp4")

    with pytest.raises(ValidationError, match="outside"):
        output_file(folder, "video.mp4")


@pytest.mark.parametrize("task_id", ["../other", "a/b", "..", "", "task", "/tmp/x", TASK_ID.upper(), TASK_ID + "/.."])
def test_a_task_id_that_is_not_a_canonical_uuid_names_no_folder(tmp_path: Path, task_id: str) -> None:
    with pytest.raises(ValidationError) as error:
        task_output_dir(tmp_path / "outputs", task_id)
    assert error.value.field == "id"
    assert not (tmp_path / "outputs").exists() or list((tmp_path / "outputs").iterdir()) == []


def test_a_link_planted_at_the_task_folder_fails_the_task_and_redirects_nothing(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "outputs").mkdir()
    (tmp_path / "outputs" / TASK_ID).symlink_to(outside)

    with pytest.raises(ValidationError, match="is a link"):
        task_output_dir(tmp_path / "outputs", TASK_ID)


def test_links_planted_at_the_partial_video_and_the_thumbnail_are_replaced_not_followed(tmp_path: Path) -> None:
    folder = task_output_dir(tmp_path / "outputs", TASK_ID)
    victims = {name: tmp_path / f"victim-{name}" for name in ("video.partial.mp4", "video.thumb.png")}
    for name, victim in victims.items():
        victim.write_bytes(b"precious")
        (folder / name).symlink_to(victim)
    frames = np.full((5, 32, 48, 3), 90, np.uint8)

    with VideoWriter(folder / "video.mp4", 8, 48, 32) as writer:
        writer.write(frames)
    save_png(frames[0], thumbnail_path(folder / "video.mp4"))

    assert all(victim.read_bytes() == b"precious" for victim in victims.values())
    assert read_video(folder / "video.mp4").shape == (5, 32, 48, 3)
    assert not (folder / "video.thumb.png").is_symlink() and (folder / "video.thumb.png").stat().st_size > 100
    assert sorted(path.name for path in folder.iterdir()) == ["video.mp4", "video.thumb.png"]


def test_sqlite_refuses_a_task_id_that_is_not_a_uuid(sqlite_store: TaskStore) -> None:
    for bad in ("../../x", "/tmp/x", "ABCDEF00-0000-4000-8000-000000000000"):
        with pytest.raises(sa.exc.IntegrityError, match="UUID"), sqlite_store.db.engine.begin() as conn:
            conn.execute(sa.text("INSERT INTO tasks (id, task_type) VALUES (:id, 'health_check')"), {"id": bad})
    task_id = sqlite_store.enqueue("health_check", {})
    with pytest.raises(sa.exc.IntegrityError, match="cannot change"), sqlite_store.db.engine.begin() as conn:
        conn.execute(sa.text("UPDATE tasks SET id = '../../x' WHERE id = :id"), {"id": task_id})


def test_the_migration_fails_waiting_rows_whose_id_is_not_a_uuid(tmp_path: Path, monkeypatch) -> None:
    db = connect(f"sqlite:///{tmp_path / 'old.db'}")
    first = available_migrations("sqlite")[:1]
    monkeypatch.setattr("worker.migrate.available_migrations", lambda dialect: first)
    migrate(db)  # the schema as it was before ids were checked
    with db.engine.begin() as conn:
        for task_id, status in (("../../x", "Queued"), ("/abs", "Complete"), (TASK_ID, "Queued")):
            conn.execute(sa.text("INSERT INTO tasks (id, task_type, status) VALUES (:id, 'health_check', :s)"),
                         {"id": task_id, "s": status})
    monkeypatch.undo()
    migrate(db)

    with db.engine.begin() as conn:
        rows = dict(conn.execute(sa.text("SELECT id, status FROM tasks")).all())
    assert rows == {"../../x": TaskStatus.FAILED, "/abs": TaskStatus.COMPLETE, TASK_ID: TaskStatus.QUEUED}
    db.dispose()
