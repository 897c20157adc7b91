"""A bad-input corpus made here, sent to a live server: each case gets its documented answer.

Nothing here is a committed binary: every file is generated with ffmpeg, or
cut from one, at the start of the module.
"""

from __future__ import annotations

import errno
import os
import json
import re
import socket
import subprocess
import sys
import time
import wave
from pathlib import Path
from typing import Any, Callable

import httpx
import pytest

from tests.conftest import REPO, FinishedRequests, LiveServer, free_port, tmpfs, wait_done, wait_export
from tests.hostile import SECRET_WORDS, Hostile, OpenWatch, external_data_mp4, lying_mkv, make_hostile
from tests.media import make_video_with_speech, speak


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-y", *args], check=True)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("corpus")
    speech = speak("a short sentence for every audio format", d / "speech.wav")
    video = make_video_with_speech("hello there", d / "video.mp4")
    files: dict[str, Path] = {"wav": speech, "mp4": video}
    for ext, codec in [("mp3", ["-c:a", "libmp3lame"]), ("flac", ["-c:a", "flac"]), ("ogg", ["-c:a", "libopus"]), ("m4a", ["-c:a", "aac"]), ("opus", ["-c:a", "libopus"])]:
        files[ext] = d / f"speech.{ext}"
        ffmpeg("-i", str(speech), *codec, str(files[ext]))
    files["mkv"] = d / "video.mkv"
    ffmpeg("-i", str(video), "-c", "copy", str(files["mkv"]))
    files["silent_video"] = d / "silent.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=160x120:rate=10", "-t", "2", "-c:v", "libx264", "-pix_fmt", "yuv420p", str(files["silent_video"]))
    files["png_as_mp4"] = d / "picture.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=64x64", "-frames:v", "1", "-f", "image2", "-c:v", "png", str(files["png_as_mp4"]))
    files["text_as_mp4"] = d / "notes.mp4"
    files["text_as_mp4"].write_text("this is not a video\n" * 50)
    files["empty"] = d / "empty.mp4"
    files["empty"].write_bytes(b"")
    for name in ("mp4", "mkv"):
        # moov/cues at the end of a non-faststart file: the first 30% is unreadable.
        src = files[name] if name == "mkv" else d / "plain.mp4"
        if name == "mp4":
            ffmpeg("-i", str(video), "-c", "copy", "-movflags", "-faststart", str(src))
        data = src.read_bytes()
        files[f"truncated_{name}"] = d / f"truncated.{name}"
        files[f"truncated_{name}"].write_bytes(data[: len(data) * 3 // 10])
    # 60 s of audio whose Matroska header says 3 s: under the test server's 20 s limit.
    files["lying_duration"] = lying_mkv(d / "lying.mkv", seconds=60, claimed_s=3)
    files["long"] = d / "long.wav"
    ffmpeg("-f", "lavfi", "-i", "anullsrc=r=8000:cl=mono", "-t", "30", str(files["long"]))
    return files


def assert_nothing_left(server: LiveServer, client: httpx.Client) -> None:
    """A refused upload leaves no job, no job folder, and a healthy server."""
    assert client.get("/v1/jobs").json()["jobs"] == []
    assert client.get("/healthz").status_code == 200
    root = server.state.files.root
    assert not root.exists() or list(root.iterdir()) == []


def upload(client: httpx.Client, path: Path, name: str | None = None, **data: Any) -> httpx.Response:
    with open(path, "rb") as fh:
        return client.post("/v1/jobs", files={"file": (path.name if name is None else name, fh)}, data=data)


@pytest.fixture
def server(make_server: Callable[..., LiveServer]) -> LiveServer:
    return make_server(**{"storage.max_duration_s": 20, "storage.max_upload_mb": 5})


REJECTED = [
    ("empty", 400, "empty_file"),
    ("text_as_mp4", 415, "not_media"),
    ("png_as_mp4", 415, "not_media"),
    ("silent_video", 415, "no_audio_stream"),
    ("truncated_mp4", 415, "not_media"),
    ("long", 413, "too_long"),
]


@pytest.mark.parametrize(("case", "status", "code"), REJECTED)
def test_rejected_files(server: LiveServer, corpus: dict[str, Path], case: str, status: int, code: str) -> None:
    with server.client() as client:
        r = upload(client, corpus[case])
        assert r.status_code == status, r.text
        error = r.json()["error"]
        assert error["code"] == code and error["message"].endswith(".") is not None
        assert "/" not in error["message"].replace("/v1", "").replace("m/s", ""), "no paths in messages"
        assert client.get("/healthz").status_code == 200
        assert client.get("/v1/jobs").json()["jobs"] == []
    # The job folder made for the upload is gone again.
    root = server.state.files.root
    assert not root.exists() or list(root.iterdir()) == []


def test_truncated_mkv_is_rejected_or_fails_cleanly(server: LiveServer, corpus: dict[str, Path]) -> None:
    # A Matroska file cut short still has readable headers: it is either refused
    # at upload or transcribed as far as it goes; never a crash.
    with server.client() as client:
        r = upload(client, corpus["truncated_mkv"])
        assert r.status_code in (202, 415), r.text
        if r.status_code == 202:
            assert wait_done(client, r.json()["id"])["status"] in ("done", "failed")
        assert client.get("/healthz").status_code == 200


@pytest.mark.parametrize("fmt", ["mp3", "wav", "flac", "ogg", "opus", "m4a", "mkv"])
def test_audio_and_video_formats_work(server: LiveServer, corpus: dict[str, Path], fmt: str) -> None:
    with server.client() as client:
        r = upload(client, corpus[fmt])
        assert r.status_code == 202, r.text
        job = wait_done(client, r.json()["id"])
        assert job["status"] == "done", job
        assert client.get(f"/v1/jobs/{job['id']}/transcript", params={"format": "srt"}).status_code == 200


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("../../etc/passwd", "passwd"),
        ("evil\x00name.wav", None),
        ("a" * 10_000 + ".wav", None),
        ("", "upload"),
        ("..", "upload"),
    ],
)
def test_hostile_file_names(server: LiveServer, corpus: dict[str, Path], name: str, expected: str | None) -> None:
    with server.client() as client:
        r = upload(client, corpus["wav"], name=name)
        assert r.status_code == 202, r.text
        got = r.json()["filename"]
        assert "/" not in got and "\x00" not in got and ".." != got and len(got.encode()) <= 240
        if expected is not None:
            assert got == expected
        job_dir = server.state.files.job_dir(r.json()["id"])
        assert job_dir.parent == server.state.files.root
        wait_done(client, r.json()["id"])


def test_too_large_upload_is_cut_and_removed(server: LiveServer, tmp_path: Path) -> None:
    big = tmp_path / "big.wav"
    big.write_bytes(b"\0" * (6 * 1024 * 1024))
    with server.client() as client:
        r = client.post("/v1/jobs", params={"filename": "big.wav"}, content=_chunks(big))  # no Content-Length
        assert r.status_code == 413 and r.json()["error"]["code"] == "upload_too_large"
        r = upload(client, big)
        assert r.status_code == 413
    root = server.state.files.root
    assert not root.exists() or list(root.iterdir()) == []


def _chunks(path: Path) -> Any:
    with open(path, "rb") as fh:
        while chunk := fh.read(256 * 1024):
            yield chunk


def test_multipart_without_file_field(server: LiveServer) -> None:
    with server.client() as client:
        r = client.post("/v1/jobs", data={"language": "en"}, files={"other": ("x.txt", b"abc")})
        assert r.status_code == 400 and r.json()["error"]["code"] == "unexpected_file"
        r = client.post("/v1/jobs", data={"language": "en"}, files={})
        assert r.status_code in (400, 415)
        boundary = "XyZ"
        body = f"--{boundary}\r\nContent-Disposition: form-data; name=\"language\"\r\n\r\nen\r\n--{boundary}--\r\n"
        r = client.post("/v1/jobs", content=body.encode(), headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "missing_file"


def test_upload_cut_off_mid_body(server: LiveServer, corpus: dict[str, Path], finished_requests: FinishedRequests) -> None:
    data = corpus["wav"].read_bytes()
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        head = (
            f"POST /v1/jobs?filename=cut.wav HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(data)}\r\n"
            "Content-Type: application/octet-stream\r\n\r\n"
        )
        sock.sendall(head.encode() + data[: len(data) // 3])
    finished_requests.wait_for("POST", "/v1/jobs")  # the server has cleaned up after the cut
    assert server.state.uploads_in_flight == 0
    with server.client() as client:
        assert_nothing_left(server, client)


def test_unknown_and_bad_options(server: LiveServer, corpus: dict[str, Path]) -> None:
    with server.client() as client:
        for data, field in [({"speed": "2"}, "speed"), ({"language": "klingon"}, "language"), ({"vad": "perhaps"}, "vad"),
                            ({"task": "dance"}, "task"), ({"initial_prompt": "x" * 5000}, "initial_prompt")]:  # fmt: skip
            r = upload(client, corpus["wav"], **data)
            assert r.status_code == 422, (data, r.text)
            assert r.json()["error"]["field"] == field
        r = client.post("/v1/jobs", params={"nope": "1", "filename": "a.wav"}, content=corpus["wav"].read_bytes())
        assert r.status_code == 422 and r.json()["error"]["code"] == "unknown_option"
        assert client.get("/v1/jobs/does-not-exist").status_code == 404
        assert client.get("/healthz").status_code == 200


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Hostile:
    return make_hostile(tmp_path_factory.mktemp("hostile"))


HOSTILE = ["hls_m3u8", "hls_as_mp4", "hls_file_urls", "hls_passwd", "ffconcat", "sdp", "dash_mpd", "vobsub_idx",
           "image2_pattern", "image2_glob"]  # fmt: skip


@pytest.mark.parametrize("case", HOSTILE)
def test_playlists_scripts_and_patterns_are_refused_unread(server: LiveServer, hostile: Hostile, case: str) -> None:
    # Each names files on the server (another job's input.ts, a passwd file); before
    # the demuxer whitelist an HLS or DASH one was accepted and transcribed them.
    path, name = hostile.files[case]
    with OpenWatch(*hostile.targets) as watch, server.client() as client:
        r = upload(client, path, name=name)
        assert r.status_code == 415, r.text
        error = r.json()["error"]
        assert error["code"] == "not_media", error
        assert "Upload an audio or video file" in error["message"] and "/" not in error["message"]
        assert watch.opened() == [], "a hostile upload made the server open the file it names"
        assert_nothing_left(server, client)


def test_an_mp4_whose_samples_live_in_another_file_never_reads_it(server: LiveServer, tmp_path: Path) -> None:
    # MP4 is on the list, and a QuickTime data reference can point a track at
    # another file: here, up from data/jobs/<id>/ to a file in the data dir. It
    # stays closed (enable_drefs is off); the upload's own samples are zeros.
    secret = speak(SECRET_WORDS, tmp_path / "said.wav")
    m4a = tmp_path / "secret.m4a"
    ffmpeg("-i", str(secret), "-c:a", "aac", "-movflags", "-faststart", str(m4a))
    target = Path(server.cfg.storage.data_dir) / "secret.m4a"
    target.write_bytes(m4a.read_bytes())
    hostile = external_data_mp4(m4a, tmp_path / "external.m4a", target="/srv/secret.m4a", nlvl_from=3, nlvl_to=1)
    with OpenWatch(target) as watch, server.client() as client:
        r = upload(client, hostile, name="talk.m4a")
        assert r.status_code in (202, 415), r.text
        if r.status_code == 202:
            job = wait_done(client, r.json()["id"])
            if job["status"] == "done":
                text = client.get(f"/v1/jobs/{job['id']}/transcript", params={"format": "txt"}).text
                assert "banana" not in text.lower()
        assert watch.opened() == []


def test_a_header_that_lies_about_the_duration_is_caught_while_decoding(server: LiveServer, corpus: dict[str, Path]) -> None:
    # Accepted on the header's word (3 s of a 20 s limit); before the limit was
    # enforced on the decoded audio all 60 s were transcribed.
    with server.client() as client:
        r = upload(client, corpus["lying_duration"])
        assert r.status_code == 202, r.text
        assert r.json()["duration_s"] == pytest.approx(3, abs=0.1)
        job = wait_done(client, r.json()["id"])
        assert job["status"] == "failed", job
        assert job["error"]["code"] == "too_long"
        assert "20 s" in job["error"]["message"] and "3 s" in job["error"]["message"]
        assert client.get(f"/v1/jobs/{job['id']}/transcript").status_code == 409
    assert not server.state.files.audio_path(job["id"]).exists()
    with server.client() as client, open(corpus["lying_duration"], "rb") as fh:
        r = client.post("/v1/audio/transcriptions", files={"file": ("lying.mkv", fh)}, data={"model": "whisper-1"})
        assert r.status_code == 413 and r.json()["error"]["code"] == "too_long", r.text


# -- disk space while an upload streams ------------------------------------------------


@pytest.fixture(scope="module")
def big_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 MB of silence as a real WAV (12.5 min at 16 kHz): bigger than the 8 MB between free-space checks."""
    path = tmp_path_factory.mktemp("big") / "big.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(b"\0" * (24 << 20))
    return path


def test_free_space_is_checked_while_a_chunked_upload_streams(
    make_server: Callable[..., LiveServer], big_wav: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A chunked body declares no size, so the check before the body passes; before
    # the checks while streaming, it filled the disk past storage.min_free_mb.
    server = make_server(**{"storage.max_upload_mb": 64})
    checks: list[Path] = []

    def disk_nearly_full(path: Path) -> int:
        checks.append(path)
        return 512 * 1024  # below the test server's floor of 1 MB

    monkeypatch.setattr("app.api.uploads.free_bytes", disk_nearly_full, raising=False)
    with server.client() as client:
        r = client.post("/v1/jobs", params={"filename": "big.wav"}, content=_chunks(big_wav))
        assert r.status_code == 507, r.text
        assert r.json()["error"]["code"] == "insufficient_storage" and int(r.headers["retry-after"]) >= 1
        assert checks, "free space was never checked while streaming"
        assert_nothing_left(server, client)


class _FillingDisk:
    """``os.writev`` on a disk that is full after ``room`` bytes: writes past it fail with ENOSPC."""

    def __init__(self, room: int) -> None:
        self._room = room

    def __call__(self, fd: int, buffers: Any) -> int:
        size = sum(len(b) for b in buffers)
        if size > self._room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self._room -= size
        return os.writev(fd, buffers)


def test_a_disk_that_fills_during_an_upload_is_507(
    make_server: Callable[..., LiveServer], big_wav: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before: the OSError escaped as a 500 and the partial file stayed behind.
    server = make_server(**{"storage.max_upload_mb": 64})
    monkeypatch.setattr("app.api.uploads._writev", _FillingDisk(5 << 20))
    with server.client() as client:
        r = upload(client, big_wav)
        assert r.status_code == 507, r.text
        assert r.json()["error"]["code"] == "insufficient_storage"
        assert_nothing_left(server, client)
    monkeypatch.undo()
    with server.client() as client:  # the disk has room again: the same upload goes through
        assert upload(client, big_wav).status_code == 202


# ---- hostile requests (issue 17): each was a 500, a traceback or a stall ----------------


def done_job(client: httpx.Client, corpus: dict[str, Path]) -> str:
    job_id = upload(client, corpus["mp4"]).json()["id"]
    assert wait_done(client, job_id)["status"] == "done"
    return job_id


def raw(server: LiveServer, text: str) -> bytes:
    """Everything the server sends back on one connection (the request must end it)."""
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=20) as sock:
        sock.sendall(text.encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


HOSTILE_JSON = [
    ("deep_nesting", b'{"segments": ' + b"[" * 20_000 + b"]" * 20_000 + b"}", 400, "invalid_json"),
    ("deep_but_parsable", b'{"segments": [{"start": 0, "end": 1, "text": "a", "x": ' + b"[" * 40 + b"]" * 40 + b"}]}", 400, "invalid_json"),
    ("huge_integer", b'{"segments": [{"start": ' + b"9" * 400 + b', "end": 1, "text": "a"}]}', 400, "invalid_json"),
    ("huge_float", b'{"segments": [{"start": 1e400, "end": 1, "text": "a"}]}', 400, "invalid_json"),
    ("nan", b'{"segments": [{"start": NaN, "end": 1, "text": "a"}]}', 400, "invalid_json"),
    ("lone_surrogate", b'{"segments": [{"start": 0, "end": 1, "text": "a\\ud800b"}]}', 400, "invalid_json"),
    ("surrogate_key", b'{"segments": [], "\\udfff": 1}', 400, "invalid_json"),
    ("not_utf8", b'{"segments": [{"start": 0, "end": 1, "text": "\xff"}]}', 400, "invalid_json"),
]


@pytest.mark.parametrize(("case", "body", "status", "code"), HOSTILE_JSON, ids=[c[0] for c in HOSTILE_JSON])
def test_hostile_json_bodies(server: LiveServer, corpus: dict[str, Path], case: str, body: bytes, status: int, code: str) -> None:
    with server.client() as client:
        job_id = done_job(client, corpus)
        for method, path in (("PUT", f"/v1/jobs/{job_id}/transcript"), ("POST", f"/v1/jobs/{job_id}/exports")):
            r = client.request(method, path, content=body, headers={"Content-Type": "application/json"})
            assert r.status_code == status, (method, r.status_code, r.text[:200])
            assert r.json()["error"]["code"] == code
        assert client.get(f"/v1/jobs/{job_id}/transcript", params={"format": "srt"}).status_code == 200
        assert client.get("/healthz").status_code == 200


def test_huge_integer_in_export_options(server: LiveServer, corpus: dict[str, Path]) -> None:
    with server.client() as client:
        job_id = done_job(client, corpus)
        for crf in ("1" + "0" * 400, "10" * 9):
            r = client.post(f"/v1/jobs/{job_id}/exports", content=b'{"mode": "burn", "crf": ' + crf.encode() + b"}",
                            headers={"Content-Type": "application/json"})  # fmt: skip
            assert r.status_code in (400, 422), r.text
            assert r.json()["error"]["code"] in ("invalid_json", "invalid_export_option")


def test_transcript_body_over_the_limit(make_server: Callable[..., LiveServer], corpus: dict[str, Path]) -> None:
    server = make_server(**{"limits.max_transcript_mb": 0.01})
    with server.client() as client:
        job_id = done_job(client, corpus)
        segments = [{"start": i * 0.01, "end": i * 0.01 + 0.01, "text": "word"} for i in range(500)]
        r = client.put(f"/v1/jobs/{job_id}/transcript", json={"segments": segments})
        assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"


@pytest.mark.parametrize("method", ["PUT", "POST"])
def test_delete_racing_a_body(server: LiveServer, corpus: dict[str, Path], method: str) -> None:
    # The request passes its job lookup, then the job is deleted while its body is still on the way.
    with server.client() as client:
        job_id = done_job(client, corpus)
    body = b'{"segments": [{"start": 0.1, "end": 0.9, "text": "edited"}]}' if method == "PUT" else b'{"mode": "soft"}'
    path = f"/v1/jobs/{job_id}/transcript" if method == "PUT" else f"/v1/jobs/{job_id}/exports"
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=20) as sock:
        head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        sock.sendall(head.encode() + body[:5])
        time.sleep(0.3)
        with server.client() as client:
            assert client.delete(f"/v1/jobs/{job_id}").status_code == 204
        sock.sendall(body[5:])
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status = int(data.split()[1])
    assert status == 404, data[:300]
    assert json.loads(data.partition(b"\r\n\r\n")[2])["error"]["code"] == "job_not_found"
    assert not server.state.files.job_dir(job_id).exists()


def test_unexpected_error_keeps_the_connection(server: LiveServer) -> None:
    # A fault injected into one call (a fake, as no real input reaches a 500 any more).
    store = server.state.store
    real = store.list_jobs

    async def broken(*a: Any, **kw: Any) -> Any:
        raise RuntimeError("injected")

    store.list_jobs = broken
    try:
        with server.client() as client:
            r = client.get("/v1/jobs")
            assert r.status_code == 500 and r.json()["error"]["code"] == "internal_error"
            assert "injected" not in r.text
            assert r.headers.get("connection") != "close"
            assert client.get("/healthz").status_code == 200
        data = raw(server, "GET /v1/jobs HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        # Both answered on one connection: the 500 did not drop it.
        assert data.startswith(b"HTTP/1.1 500") and b"HTTP/1.1 200" in data, data[:400]
    finally:
        store.list_jobs = real


@pytest.fixture
def read_only_jobs(tmp_path: Path) -> Any:
    """data/jobs on its own tmpfs, remounted read-only by the test (root only)."""
    with tmpfs(tmp_path / "data" / "jobs", "64m") as jobs:
        yield jobs


def test_read_only_jobs_folder(make_server: Callable[..., LiveServer], read_only_jobs: Path, corpus: dict[str, Path]) -> None:
    server = make_server(data_dir=read_only_jobs.parent)
    with server.client() as client:
        job_id = done_job(client, corpus)
        subprocess.run(["mount", "-o", "remount,ro", str(read_only_jobs)], check=True)
        r = upload(client, corpus["wav"])
        assert r.status_code == 503 and r.json()["error"]["code"] == "storage_unavailable", r.text
        assert r.headers["retry-after"]
        r = client.put(f"/v1/jobs/{job_id}/transcript", json={"segments": [{"start": 0.1, "end": 0.9, "text": "x"}]})
        assert r.status_code == 503 and r.json()["error"]["code"] == "storage_unavailable", r.text
        r = client.post(f"/v1/jobs/{job_id}/exports", json={"mode": "soft", "container": "mkv"})
        assert r.status_code == 202, r.text
        export = wait_export(client, job_id, r.json()["id"], timeout=20)  # not stuck in "queued"
        assert export["status"] == "failed", export
        assert client.get("/healthz").status_code == 200


def test_corrupt_database_is_one_line(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "altyazi.db").write_bytes(b"this is not a database, " * 200)
    proc = subprocess.run(
        [sys.executable, "-m", "app", "serve", "--data-dir", str(data), "--port", str(free_port()), "--model", "tiny.en"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("altyazi: the job index"), proc.stderr
    assert "Traceback" not in proc.stderr


RANGES_10K = ",".join(f"{2 * i}-{2 * i}" for i in range(10_000))
RANGES_1K = ",".join(f"{2 * i}-{2 * i}" for i in range(1_000))
HOSTILE_REQUESTS = [
    # (case, raw request, status, code); the modules named hold the thorough tests.
    ("range_10k", f"GET / HTTP/1.1\r\nHost: x\r\nRange: bytes={RANGES_10K}\r\n\r\n", 431, "headers_too_large"),  # test_ranges
    ("range_1k", f"GET /static/app.js HTTP/1.1\r\nHost: x\r\nRange: bytes={RANGES_1K}\r\n\r\n", 416, "range_not_satisfiable"),
    ("range_backwards", "GET / HTTP/1.1\r\nHost: x\r\nRange: bytes=9-3\r\n\r\n", 416, "range_not_satisfiable"),
    ("range_past_end", "GET / HTTP/1.1\r\nHost: x\r\nRange: bytes=99999999-\r\n\r\n", 416, "range_not_satisfiable"),
    ("header_4mb", "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + "a" * (4 << 20) + "\r\n\r\n", 431, "headers_too_large"),  # test_connlimits
    ("not_http", "GET / HTTP/1.1\r\nno colon\r\n\r\n", 400, "bad_request"),
    ("huge_content_length", "PUT /v1/jobs/x/transcript HTTP/1.1\r\nHost: x\r\nContent-Length: " + "9" * 400 + "\r\n\r\n", 400, "bad_request"),  # h11 refuses it
]


@pytest.mark.parametrize(("case", "request_text", "status", "code"), HOSTILE_REQUESTS, ids=[c[0] for c in HOSTILE_REQUESTS])
def test_hostile_requests(server: LiveServer, case: str, request_text: str, status: int, code: str) -> None:
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=20) as sock:
        try:
            sock.sendall(request_text.encode("latin-1"))
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before it was all sent
        data = b""
        while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < 2:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert int(head.split()[1]) == status, data[:300]
    assert json.loads(body[: int(re.search(rb"(?i)content-length: (\d+)", head).group(1))])["error"]["code"] == code  # type: ignore[union-attr]
    with server.client() as client:
        assert client.get("/healthz").status_code == 200


def test_huge_last_event_id(server: LiveServer, corpus: dict[str, Path]) -> None:
    with server.client() as client:
        job_id = done_job(client, corpus)
        for value in ("9" * 400, "9" * 5000, "-5", "1e9"):
            r = client.get(f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": value})
            assert r.status_code == 200 and r.text.startswith("retry:"), r.text[:200]
