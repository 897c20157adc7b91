"""The file store seam (storage.seams.FileStore): one contract for every implementation.

A second implementation (object storage staged on local disk) joins by adding
its factory to IMPLEMENTATIONS.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from storage.files import JobFiles
from storage.seams import FileStore


def _s3(request: pytest.FixtureRequest, data_dir: Path) -> FileStore:
    from storage.s3_files import S3Files

    # the session's real S3 server (tests/cluster_servers.py), a prefix of its own
    server = request.getfixturevalue("s3_server")
    monkeypatch = request.getfixturevalue("monkeypatch")
    for name, value in server.env().items():
        monkeypatch.setenv(name, value)
    return S3Files(data_dir, f"s3://{server.bucket}/{uuid.uuid4().hex}")


IMPLEMENTATIONS: dict[str, Callable[[pytest.FixtureRequest, Path], FileStore]] = {
    "folder_per_job": lambda request, data_dir: JobFiles(data_dir),
    "s3": _s3,
}


@pytest.fixture(params=[pytest.param("folder_per_job"), pytest.param("s3", marks=pytest.mark.cluster)])
def files(request: pytest.FixtureRequest, tmp_path: Path) -> FileStore:
    return IMPLEMENTATIONS[request.param](request, tmp_path / "data")


def test_a_job_has_its_own_paths(files: FileStore) -> None:
    d = files.create("job1")
    assert d.is_dir() and files.create("job1") == d  # creating twice is fine
    paths = [files.input_path("job1", ".mp4"), files.audio_path("job1"), files.transcript_path("job1"),
             files.edited_path("job1"), files.export_path("job1", "exp1", ".mkv"), files.work_dir("job1")]
    assert len(set(paths)) == len(paths)
    assert all(p.is_relative_to(files.job_dir("job1")) for p in paths)
    assert not files.audio_path("job2").is_relative_to(files.job_dir("job1"))
    assert files.export_path("job1", "exp1", ".mkv").parent.is_dir() and files.work_dir("job1").is_dir()


@pytest.mark.parametrize("bad", ["../x", "a/b", "", ".", "x" * 300])
def test_ids_cannot_leave_the_store(files: FileStore, bad: str) -> None:
    with pytest.raises(ValueError):
        files.job_dir(bad)
    files.create("ok")
    with pytest.raises(ValueError):
        files.export_path("ok", bad, ".mp4")


def test_the_upload_is_found_whatever_its_suffix(files: FileStore) -> None:
    files.create("j")
    assert files.find_input("j") is None
    assert files.find_input("missing") is None
    (files.job_dir("j") / "upload.partial").write_bytes(b"half")  # an upload in progress is no input
    assert files.find_input("j") is None
    files.input_path("j", ".WebM").write_bytes(b"x")
    found = files.find_input("j")
    assert found is not None and found.read_bytes() == b"x"


def test_remove_takes_everything_and_missing_is_fine(files: FileStore) -> None:
    files.create("j")
    files.export_path("j", "e", ".mp4").write_bytes(b"1234")
    files.audio_path("j").write_bytes(b"12")
    assert files.size_bytes("j") == 6
    assert files.job_ids() == ["j"]
    files.remove("j")
    files.remove("j")
    assert not files.job_dir("j").exists() and files.job_ids() == [] and files.size_bytes("j") == 0


def test_remove_does_not_follow_a_job_folder_replaced_by_a_link(files: FileStore, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("mine")
    files.create("j")
    os.rmdir(files.job_dir("j"))
    files.job_dir("j").symlink_to(outside)
    files.remove("j")
    assert (outside / "keep").read_text() == "mine"


def test_pins_nest_and_work_across_threads(files: FileStore) -> None:
    files.create("j")
    assert not files.is_pinned("j")
    with files.pin("j"):
        with files.pin("j"):
            assert files.is_pinned("j")
        assert files.is_pinned("j")
        seen: list[bool] = []
        worker = threading.Thread(target=lambda: seen.append(files.is_pinned("j")))
        worker.start()
        worker.join()
        assert seen == [True]
    assert not files.is_pinned("j")
