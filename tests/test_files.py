from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

import pytest

from storage import files as files_mod
from storage.files import (
    JobFiles,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    free_bytes,
    safe_filename,
)

# ------------------------------------------------------------------ atomic writes


def test_atomic_write_creates_and_replaces(tmp_path: Path) -> None:
    p = tmp_path / "transcript.json"
    atomic_write_bytes(p, b"one")
    atomic_write_text(p, "iki üç")
    assert p.read_text(encoding="utf-8") == "iki üç"
    atomic_write_json(p, {"text": "字幕", "n": [1, 2]})
    assert json.loads(p.read_text(encoding="utf-8")) == {"text": "字幕", "n": [1, 2]}
    assert "字幕" in p.read_text(encoding="utf-8")  # not \\u-escaped
    assert os.listdir(tmp_path) == ["transcript.json"]


@pytest.mark.parametrize("fail_at", ["fsync", "replace", "write"])
def test_atomic_write_failure_keeps_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail_at: str) -> None:
    p = tmp_path / "transcript.json"
    p.write_bytes(b"old content")

    def boom(*args: object, **kwargs: object) -> None:
        raise OSError("simulated crash")

    if fail_at == "write":
        # the disk fills half way through the data
        real_fdopen = os.fdopen

        class HalfFile:
            def __init__(self, f: object) -> None:
                self._f = f

            def __enter__(self) -> HalfFile:
                return self

            def __exit__(self, *exc: object) -> None:
                self._f.close()  # type: ignore[attr-defined]

            def write(self, data: bytes) -> None:
                self._f.write(data[: len(data) // 2])  # type: ignore[attr-defined]
                self._f.flush()  # type: ignore[attr-defined]
                raise OSError(28, "No space left on device")

        monkeypatch.setattr(files_mod.os, "fdopen", lambda fd, mode: HalfFile(real_fdopen(fd, mode)))
    else:
        monkeypatch.setattr(files_mod.os, fail_at, boom)

    with pytest.raises(OSError):
        atomic_write_bytes(p, b"new content that never fully lands")
    monkeypatch.undo()
    assert p.read_bytes() == b"old content"
    assert os.listdir(tmp_path) == ["transcript.json"]  # no temp file left behind


def test_free_bytes(tmp_path: Path) -> None:
    assert free_bytes(tmp_path) > 0


# ------------------------------------------------------------------ safe_filename


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("../../etc/passwd", "passwd"),
        ("/etc/passwd", "passwd"),
        ("C:\\Users\\ayse\\Videos\\ders 1.mp4", "ders 1.mp4"),
        ("", "upload"),
        (".", "upload"),
        ("..", "upload"),
        ("...", "upload"),
        ("   ", "upload"),
        ("\x00\x01\x1f", "upload"),
        ("a\x00b.mp4", "ab.mp4"),
        ("line\nbreak\ttab.wav", "line break tab.wav"),
        (".bashrc", "bashrc"),
        ("Çalışma Toplantısı — Ekim.MP4", "Çalışma Toplantısı — Ekim.MP4"),
        ("会议记录.mkv", "会议记录.mkv"),
        ("invoice\u202egpj.exe", "invoicegpj.exe"),  # right-to-left override dropped
        ('a<b>c:"d"|e?f*.mp3', "a_b_c__d__e_f_.mp3"),
        ("CON.txt", "_CON.txt"),
        ("nul", "_nul"),
        ("video.", "video"),
        ("Cafe\u0301.mp4", "Café.mp4"),  # NFC
    ],
)
def test_safe_filename(name: str, expected: str) -> None:
    assert safe_filename(name) == expected


def test_safe_filename_long_names_keep_extension() -> None:
    out = safe_filename("a" * 10_000 + ".mp4")
    assert out == "a" * 116 + ".mp4" and len(out) == 120
    out = safe_filename("ç" * 10_000 + ".webm", max_len=500)
    assert out.endswith(".webm") and len(out.encode("utf-8")) <= 240
    assert safe_filename("x" * 10_000) == "x" * 120
    assert safe_filename("", default="video") == "video"
    # an extension too long to be one is just part of the name
    assert safe_filename("a." + "b" * 200, max_len=20) == "a." + "b" * 18


def test_safe_filename_never_yields_a_path() -> None:
    for name in ["../" * 50, "a/../../b", "\\\\server\\share\\x", "..\\..\\x.mp4", "/", "./.", "x/.."]:
        out = safe_filename(name)
        assert "/" not in out and "\\" not in out and out not in ("", ".", "..")


# ------------------------------------------------------------------ JobFiles


@pytest.fixture
def jf(tmp_path: Path) -> JobFiles:
    return JobFiles(tmp_path / "data")


@pytest.mark.parametrize(
    "bad", ["", ".", "..", "../x", "a/b", "a\\b", "x\x00", "é", " a", "a" * 65, "a.b", "~root"]
)
def test_job_dir_rejects_bad_ids(jf: JobFiles, bad: str) -> None:
    with pytest.raises(ValueError):
        jf.job_dir(bad)
    with pytest.raises(ValueError):
        jf.remove(bad)


def test_layout(jf: JobFiles, tmp_path: Path) -> None:
    job_id = secrets.token_urlsafe(16)
    d = jf.create(job_id)
    assert d == tmp_path / "data" / "jobs" / job_id and d.is_dir()
    assert jf.create(job_id) == d  # idempotent
    assert jf.input_path(job_id, ".MP4") == d / "input.mp4"
    assert jf.input_path(job_id, "../../etc") == d / "input.etc"
    assert jf.input_path(job_id, ".verylongsuffix") == d / "input.verylongsu"
    assert jf.input_path(job_id, "") == d / "input"
    assert jf.audio_path(job_id) == d / "audio.pcm"
    assert jf.transcript_path(job_id) == d / "transcript.json"
    assert jf.edited_path(job_id) == d / "transcript.edited.json"
    assert jf.export_path(job_id, "e1", "MKV") == d / "exports" / "e1.mkv"
    assert (d / "exports").is_dir()
    with pytest.raises(ValueError):
        jf.export_path(job_id, "../e1", "mp4")
    with pytest.raises(ValueError):
        jf.export_path(job_id, "e1", "..")
    assert jf.work_dir(job_id) == d / "work" and (d / "work").is_dir()


def test_find_input(jf: JobFiles) -> None:
    assert jf.find_input("nojob") is None
    d = jf.create("j1")
    assert jf.find_input("j1") is None
    (d / ".input.mp4.abc.tmp").write_bytes(b"partial")  # an upload in progress
    (d / "input.mp4.part").write_bytes(b"partial")
    assert jf.find_input("j1") is None
    jf.input_path("j1", ".mp4").write_bytes(b"x")
    assert jf.find_input("j1") == d / "input.mp4"


def test_size_and_remove(jf: JobFiles) -> None:
    d = jf.create("j1")
    (d / "audio.pcm").write_bytes(b"\0" * 1000)
    jf.export_path("j1", "e1", "mp4").write_bytes(b"\0" * 500)
    assert jf.size_bytes("j1") == 1500
    assert jf.size_bytes("missing") == 0
    assert jf.job_ids() == ["j1"]
    jf.remove("j1")
    assert not d.exists()
    jf.remove("j1")  # missing is fine
    assert jf.job_ids() == []


def test_remove_does_not_follow_a_symlinked_job_dir(jf: JobFiles, tmp_path: Path) -> None:
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    jf.root.mkdir(parents=True)
    (jf.root / "j1").symlink_to(outside, target_is_directory=True)
    jf.remove("j1")
    assert (outside / "keep.txt").read_text() == "keep"
    assert not (jf.root / "j1").exists()


def test_pins_are_refcounted(jf: JobFiles) -> None:
    assert not jf.is_pinned("j1")
    with jf.pin("j1"):
        with jf.pin("j1"):
            assert jf.is_pinned("j1")
        assert jf.is_pinned("j1")
    assert not jf.is_pinned("j1")
    with pytest.raises(RuntimeError), jf.pin("j2"):
        raise RuntimeError("download failed")
    assert not jf.is_pinned("j2")
