"""The editor's and player's API: PATCH of one segment, the waveform, the media with Range and signed links.

A live server with the fake engine, real ffmpeg and real SQLite.
"""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path
from typing import Any, Callable

import httpx
import pytest

from app.api.media_tokens import MediaTokens
from app.media.playback import plan_for
from app.media.waveform import MAX_PEAKS, bucket_samples, peaks_from_pcm
from tests.conftest import LiveServer, add_keys, bearer, wait_done
from tests.media import make_tone, make_video_with_speech


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("media")
    video = make_video_with_speech("hello world, this is a test", d / "clip.mp4")
    mkv = d / "clip.mkv"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-i", str(video), "-c", "copy", str(mkv)], check=True)
    return {"video": video, "mkv": mkv, "tone": make_tone(d / "tone.wav", 65)}


def upload(client: httpx.Client, path: Path, **data: Any) -> dict[str, Any]:
    with open(path, "rb") as fh:
        r = client.post("/v1/jobs", files={"file": (path.name, fh)}, data=data)
    assert r.status_code == 202, r.text
    return r.json()  # type: ignore[no-any-return]


# ---- PATCH -----------------------------------------------------------------------


def test_patch_changes_one_segment_with_the_rules_of_put(make_server: Callable[..., LiveServer], media: dict[str, Path]) -> None:
    live = make_server()
    with live.client() as client:
        job = upload(client, media["tone"], vad="false", word_timestamps="true")
        wait_done(client, job["id"])
        base = f"/v1/jobs/{job['id']}/transcript"
        before = client.get(base).json()["segments"]
        assert len(before) >= 3 and before[0]["words"]

        # New text: stored, words dropped (they timed the old text); the rest untouched.
        r = client.patch(f"{base}/segments/1", json={"text": "Second, corrected"})
        assert r.status_code == 200, r.text
        assert r.json()["segment"]["text"] == "Second, corrected" and "words" not in r.json()["segment"]
        after = client.get(base).json()["segments"]
        assert after[1]["text"] == "Second, corrected"
        assert after[0] == before[0] and after[2] == before[2]

        # New times keep the words still inside them.
        mid = before[0]["words"][0]["end"]
        r = client.patch(f"{base}/segments/0", json={"end": mid})
        assert r.status_code == 200, r.text
        assert [w["word"] for w in r.json()["segment"]["words"]] == [before[0]["words"][0]["word"]]

        # Refused with PUT's rules; the message counts from 1 as the page does, index stays 0-based.
        r = client.patch(f"{base}/segments/2", json={"start": before[1]["start"]})
        assert r.status_code == 422
        err = r.json()["error"]
        assert err["code"] == "invalid_segment" and err["index"] == 2 and err["field"] == "start"
        assert err["message"].startswith("segment 3: start") and "overlaps segment 2" in err["message"]
        r = client.patch(f"{base}/segments/0", json={"end": 0})
        assert r.json()["error"]["message"].startswith("segment 1: end (0.0 s)")

        for body, code in (({}, 422), ({"speaker": "A"}, 422), ([1], 422), ({"text": 5}, 422)):
            assert client.patch(f"{base}/segments/0", json=body).status_code == code, body
        assert client.patch(f"{base}/segments/{len(before)}", json={"text": "x"}).json()["error"]["code"] == "no_such_segment"
        assert client.patch(f"{base}/segments/-1", json={"text": "x"}).status_code == 422
        assert client.patch("/v1/jobs/nope/transcript/segments/0", json={"text": "x"}).status_code == 404
        # Nothing refused was stored.
        assert client.get(base).json()["segments"][2] == before[2]
        # Raw cues (no line rules): the edited segment is one cue, as typed.
        srt = client.get(base, params={"format": "srt", "preset": "none"}).text
        assert "Second, corrected" in srt
        # With the default rules its 30 s are cut into cues of at most 7 s, every word kept.
        ruled = client.get(base, params={"format": "srt"}).text
        assert "Second," in ruled and "corrected" in ruled


def test_put_of_the_whole_transcript_still_works(make_server: Callable[..., LiveServer], media: dict[str, Path]) -> None:
    live = make_server()
    with live.client() as client:
        job = upload(client, media["video"])
        wait_done(client, job["id"])
        base = f"/v1/jobs/{job['id']}/transcript"
        data = client.get(base).json()
        data["segments"][0]["text"] = "Edited"
        r = client.put(base, json={"segments": data["segments"]})
        assert r.status_code == 200 and r.json()["segments"][0]["text"] == "Edited"
        assert len(r.json()["segments"]) == len(data["segments"])


# ---- waveform ----------------------------------------------------------------------


def test_waveform_peaks_are_small_and_follow_the_audio(tmp_path: Path) -> None:
    pcm = tmp_path / "a.pcm"
    import numpy as np

    loud = (np.sin(np.arange(16000) / 5) * 30000).astype("<i2")
    pcm.write_bytes(np.zeros(16000, "<i2").tobytes() + loud.tobytes() + np.zeros(8000, "<i2").tobytes())
    wave = peaks_from_pcm(pcm)
    assert wave.peaks_per_second == 10 and len(wave.peaks) == 25
    assert max(wave.peaks[:10]) == 0 and min(wave.peaks[10:20]) > 200 and max(wave.peaks[20:]) == 0
    # An hour stays at MAX_PEAKS bytes.
    hour = 3600 * 16000
    assert hour / bucket_samples(hour) <= MAX_PEAKS


def test_waveform_endpoint_serves_cached_peaks(make_server: Callable[..., LiveServer], media: dict[str, Path]) -> None:
    live = make_server()
    with live.client() as client:
        job = upload(client, media["tone"], vad="false")
        wait_done(client, job["id"])
        r = client.get(f"/v1/jobs/{job['id']}/waveform")
        assert r.status_code == 200, r.text
        data = r.json()
        peaks = base64.b64decode(data["peaks"])
        assert data["count"] == len(peaks) == 650 and data["peaks_per_second"] == 10
        assert min(peaks[5:-5]) > 20 and max(peaks) - min(peaks[5:-5]) < 8  # a steady tone throughout (ffmpeg's sine is at 1/8)
        assert len(r.content) < 2000
        # Made once, during the job, and kept: removing the cache makes it again from the input.
        path = live.state.files.waveform_path(job["id"])
        assert path.exists()
        path.unlink()
        assert client.get(f"/v1/jobs/{job['id']}/waveform").json() == data
        assert client.get("/v1/jobs/nope/waveform").status_code == 404


# ---- media ---------------------------------------------------------------------------


def test_plan_for_browser_playable_media() -> None:
    mp4 = {"format_name": "mov,mp4,m4a,3gp,3g2,mj2", "has_video": True, "video_codec": "h264", "audio_codec": "aac"}
    assert plan_for(mp4, ".mp4") == "input"
    assert plan_for({**mp4, "format_name": "matroska,webm"}, ".mkv") == "remux"
    assert plan_for({**mp4, "video_codec": "hevc"}, ".mp4") == "audio"
    assert plan_for({"format_name": "wav", "has_video": False, "audio_codec": "pcm_s16le"}, ".wav") == "input"
    assert plan_for({"format_name": "matroska,webm", "has_video": True, "video_codec": "vp9", "audio_codec": "opus"}, ".webm") == "input"
    assert plan_for({"format_name": "asf", "has_video": False, "audio_codec": "wmav2"}, ".wma") == "audio"


def test_media_streams_the_upload_with_range(make_server: Callable[..., LiveServer], media: dict[str, Path]) -> None:
    live = make_server()
    with live.client() as client:
        job = upload(client, media["video"])
        wait_done(client, job["id"])
        size = media["video"].stat().st_size
        r = client.get(f"/v1/jobs/{job['id']}/media", headers={"Range": "bytes=100-199"})
        assert r.status_code == 206 and r.headers["content-range"] == f"bytes 100-199/{size}"
        assert r.content == media["video"].read_bytes()[100:200]
        assert r.headers["content-type"] == "video/mp4" and r.headers["accept-ranges"] == "bytes"
        link = client.get(f"/v1/jobs/{job['id']}/media/link").json()
        assert link["kind"] == "video" and link["ready"] is True and link["copy"] is False
        full = client.get(link["url"])
        assert full.status_code == 200 and full.content == media["video"].read_bytes()


def test_an_mkv_gets_a_remuxed_mp4_made_once(make_server: Callable[..., LiveServer], media: dict[str, Path]) -> None:
    live = make_server()
    with live.client() as client:
        job = upload(client, media["mkv"])
        wait_done(client, job["id"])
        link = client.get(f"/v1/jobs/{job['id']}/media/link").json()
        assert link["copy"] is True and link["ready"] is True and link["kind"] == "video"
        r = client.get(link["url"], headers={"Range": "bytes=0-15"})
        assert r.status_code == 206 and r.headers["content-type"] == "video/mp4"
        assert r.content[4:8] == b"ftyp"
        assert live.state.files.playback_path(job["id"], ".mp4").exists()


def test_media_keeps_the_keys_rules(make_server: Callable[..., LiveServer], media: dict[str, Path], tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    keys = add_keys(data_dir, "alice", "bob")
    live = make_server(data_dir=data_dir, **{"auth.enabled": True})
    with live.client() as client:
        alice, bob = bearer(keys["alice"]), bearer(keys["bob"])
        with live.client(headers=alice) as as_alice:
            job = upload(as_alice, media["video"])
            wait_done(as_alice, job["id"])
        path = f"/v1/jobs/{job['id']}/media"
        assert client.get(path).status_code == 401
        assert client.get(path, headers=alice).status_code == 200
        # Another tenant: 404 with the key, for the link and the waveform too.
        for p in (path, path + "/link", f"/v1/jobs/{job['id']}/waveform"):
            assert client.get(p, headers=bob).status_code == 404, p
        # The signed link works without the key, for that job only.
        url = client.get(path + "/link", headers=alice).json()["url"]
        r = client.get(url, headers={"Range": "bytes=0-99"})
        assert r.status_code == 206 and len(r.content) == 100
        token = url.split("token=", 1)[1]
        with live.client(headers=bob) as as_bob:
            other = upload(as_bob, media["video"])
        assert client.get(f"/v1/jobs/{other['id']}/media", params={"token": token}).status_code == 404
        assert client.get(path, params={"token": token[:-2] + "xx"}).status_code == 404
        assert client.get(path, params={"token": "1." + token.split(".", 1)[1]}).status_code == 404
        # The token opens the media and nothing else.
        assert client.get(f"/v1/jobs/{job['id']}", params={"token": token}).status_code == 401
        assert client.get(f"/v1/jobs/{job['id']}/waveform", params={"token": token}).status_code == 401


def test_tokens_expire_and_bind_the_owner(tmp_path: Path) -> None:
    tokens = MediaTokens.load(tmp_path / "k")
    assert (tmp_path / "k").stat().st_mode & 0o777 == 0o600
    token, expires = tokens.issue("job1", "alice", now=1000)
    assert tokens.check(token, "job1", "alice", now=1000)
    assert not tokens.check(token, "job1", "bob", now=1000)
    assert not tokens.check(token, "job2", "alice", now=1000)
    assert not tokens.check(token, "job1", "alice", now=expires + 1)
    assert MediaTokens.load(tmp_path / "k").check(token, "job1", "alice", now=1000)  # kept across restarts
    assert not MediaTokens.ephemeral().check(token, "job1", "alice", now=1000)
    assert json.dumps(token).isascii()


def test_unplayable_codecs_get_an_audio_copy(make_server: Callable[..., LiveServer], tmp_path: Path) -> None:
    """AC-3 sound in Matroska: neither container nor codec plays in browsers; the player gets AAC."""
    src = tmp_path / "talk.mka"
    speech = make_video_with_speech("an audio copy for the player", tmp_path / "talk.mp4")
    subprocess.run(["ffmpeg", "-loglevel", "error", "-i", str(speech), "-vn", "-c:a", "ac3", str(src)], check=True)
    live = make_server()
    with live.client() as client:
        job = upload(client, src)
        wait_done(client, job["id"])
        link = client.get(f"/v1/jobs/{job['id']}/media/link").json()
        assert link["kind"] == "audio" and link["copy"] is True and link["ready"] is True
        r = client.get(link["url"])
        assert r.status_code == 200 and r.headers["content-type"] == "audio/mp4" and r.content[4:8] == b"ftyp"
        assert len(r.content) < src.stat().st_size * 2
        # A copy deleted (a job from before copies were made) is made again on request.
        live.state.files.playback_path(job["id"], ".m4a").unlink()
        assert client.get(link["url"], headers={"Range": "bytes=0-7"}).status_code == 206
        names = sorted(p.name for p in live.state.files.job_dir(job["id"]).iterdir())
        assert "playback.m4a" in names and "waveform.json" in names
        assert not [n for n in names if n.endswith((".pcm", ".part"))], names


def test_patches_of_different_segments_at_once_all_land(make_server: Callable[..., LiveServer], media: dict[str, Path]) -> None:
    import asyncio

    live = make_server()
    with live.client() as client:
        job = upload(client, media["tone"], vad="false")
        wait_done(client, job["id"])
        base = f"/v1/jobs/{job['id']}/transcript"
        count = len(client.get(base).json()["segments"])

    async def patch_all() -> list[int]:
        async with live.aclient() as ac:
            answers = await asyncio.gather(*(ac.patch(f"{base}/segments/{i}", json={"text": f"edit {i}"}) for i in range(count)))
        return [a.status_code for a in answers]

    assert asyncio.run(patch_all()) == [200] * count
    with live.client() as client:
        assert [s["text"] for s in client.get(base).json()["segments"]] == [f"edit {i}" for i in range(count)]
