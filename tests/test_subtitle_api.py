"""Subtitle line rules through the API: job options, aliases, config, download parameters,
the ASS download, exports, OpenAI srt/vtt, GET /v1/models and eta_seconds (fake engine)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable

import httpx
import pysubs2
import pytest
from openai import OpenAI

from tests.conftest import LiveServer, wait_done, wait_export
from tests.media import make_video_with_speech

LONG = (
    "This is a long edited sentence that a person typed into the editor, and it goes on well past what "
    "one subtitle line can hold, so the download has to cut it into several cues at word boundaries."
)


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_video_with_speech("hello world, this is a test", tmp_path_factory.mktemp("subs") / "clip.mp4")


def upload(client: httpx.Client, path: Path, **data: Any) -> httpx.Response:
    with open(path, "rb") as fh:
        return client.post("/v1/jobs", files={"file": (path.name, fh)}, data=data)


def finished(client: httpx.Client, video: Path, **data: Any) -> dict[str, Any]:
    r = upload(client, video, **data)
    assert r.status_code == 202, r.text
    job = wait_done(client, r.json()["id"])
    assert job["status"] == "done"
    # Word times packed into the clip's length (an edit cannot run past the media).
    step = (job["duration_s"] - 0.2) / len(LONG.split())
    words = [{"start": round(0.1 + step * i, 3), "end": round(0.1 + step * (i + 0.8), 3), "word": " " + w} for i, w in enumerate(LONG.split())]
    body = {"segments": [{"start": 0.0, "end": round(job["duration_s"] - 0.05, 3), "text": LONG, "words": words}]}
    assert client.put(f"/v1/jobs/{job['id']}/transcript", json=body).status_code == 200
    return job


def cues(srt: str) -> list[list[str]]:
    """The text lines of each SRT cue."""
    blocks = [b.split("\n") for b in srt.strip().split("\n\n")]
    assert all(re.fullmatch(r"\d+", b[0]) and "-->" in b[1] for b in blocks)
    return [b[2:] for b in blocks]


def download(client: httpx.Client, job_id: str, **params: Any) -> httpx.Response:
    return client.get(f"/v1/jobs/{job_id}/transcript", params=params)


def test_downloads_follow_the_default_rules_and_query_parameters(make_server: Callable[..., LiveServer], video: Path) -> None:
    live = make_server()
    with live.client() as client:
        job = finished(client, video)
        assert job["options"]["word_timestamps"] is True  # on, since line rules need word times
        srt = download(client, job["id"], format="srt").text
        default = cues(srt)
        assert len(default) > 1 and all(len(c) <= 2 and all(len(line) <= 42 for line in c) for c in default)
        assert " ".join(" ".join(c) for c in default) == LONG
        narrow = cues(download(client, job["id"], format="srt", max_chars_per_line=20, max_lines_per_cue=3).text)
        assert all(len(c) <= 3 and all(len(line) <= 20 for line in c) for c in narrow)
        alias = cues(download(client, job["id"], format="srt", max_line_width=20, max_line_count=3).text)
        assert alias == narrow
        raw = cues(download(client, job["id"], format="srt", preset="none").text)
        assert raw == [[LONG]]
        bbc = download(client, job["id"], format="vtt", preset="bbc").text
        text_lines = [line for line in bbc.splitlines()[1:] if line and "-->" not in line]
        assert text_lines and all(len(line) <= 37 for line in text_lines)
        vtt = download(client, job["id"], format="vtt").text
        assert vtt.startswith("WEBVTT") and all(len(line) <= 42 for line in vtt.splitlines())
        # json keeps the raw segments
        assert download(client, job["id"], format="json").json()["segments"][0]["text"] == LONG
        assert download(client, job["id"], format="txt").text == LONG + "\n"
        for params, field in (
            ({"max_chars_per_line": "5"}, "max_chars_per_line"),
            ({"max_line_width": "wide"}, "max_line_width"),
            ({"preset": "cinema"}, "preset"),
            ({"max_cps": "-3"}, "max_cps"),
            ({"min_cue_duration_s": "9"}, "min_cue_duration_s"),
            ({"max_line_width": "30", "max_chars_per_line": "30"}, "max_chars_per_line"),
            ({"format": "sub"}, "format"),
        ):
            r = download(client, job["id"], **{"format": "srt", **params})
            assert r.status_code == 422, (params, r.text)
            assert r.json()["error"]["code"] == "invalid_parameter" and r.json()["error"]["field"] == field


def test_job_options_and_whisper_aliases(make_server: Callable[..., LiveServer], video: Path) -> None:
    live = make_server()
    with live.client() as client:
        job = finished(client, video, max_line_width="24", max_line_count="1")
        assert job["options"]["subtitles"] == {"max_chars_per_line": 24, "max_lines_per_cue": 1}
        one_line = cues(download(client, job["id"], format="srt").text)
        assert all(len(c) == 1 and len(c[0]) <= 24 for c in one_line)
        # The download's parameters go over the job's.
        two = cues(download(client, job["id"], format="srt", max_line_count=2).text)
        assert any(len(c) == 2 for c in two) and all(len(line) <= 24 for c in two for line in c)
        raw = finished(client, video, subtitle_preset="raw")
        assert raw["options"]["word_timestamps"] is False  # no rules: no need for word times
        assert cues(download(client, raw["id"], format="srt").text) == [[LONG]]
        for data, field in (({"max_line_width": "3"}, "max_line_width"), ({"subtitle_preset": "x"}, "subtitle_preset"), ({"max_cue_duration_s": "0"}, "max_cue_duration_s")):
            r = upload(client, video, **data)
            assert r.status_code == 422, r.text
            assert r.json()["error"]["field"] == field


def test_config_defaults(make_server: Callable[..., LiveServer], video: Path) -> None:
    live = make_server(**{"subtitles.max_chars_per_line": 30})
    with live.client() as client:
        job = finished(client, video)
        got = cues(download(client, job["id"], format="srt").text)
        assert max(len(line) for c in got for line in c) <= 30
    off = make_server(**{"subtitles.preset": "none"})
    with off.client() as client:
        job = finished(client, video)
        assert job["options"]["word_timestamps"] is False
        assert cues(download(client, job["id"], format="srt").text) == [[LONG]]


def test_ass_download_has_karaoke_from_word_times(make_server: Callable[..., LiveServer], video: Path) -> None:
    live = make_server()
    with live.client() as client:
        job = finished(client, video)
        r = download(client, job["id"], format="ass")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/x-ssa")
        assert 'filename="clip.ass"' in r.headers["content-disposition"]
        subs = pysubs2.SSAFile.from_string(r.text)
        assert len(subs.events) > 1
        assert all("\\k" in e.text for e in subs.events)
        said = re.sub(r"\{[^}]*\}", "", " ".join(e.text.replace("\\N", " ") for e in subs.events))
        assert " ".join(said.split()) == LONG
        # An edited text without word times: plain cues.
        body = {"segments": [{"start": 0.0, "end": 1.0, "text": "Plain words only."}]}
        assert client.put(f"/v1/jobs/{job['id']}/transcript", json=body).status_code == 200
        plain = pysubs2.SSAFile.from_string(download(client, job["id"], format="ass").text)
        assert [e.text for e in plain.events] == ["Plain words only."]


def test_soft_export_follows_the_rules_and_the_style_alias(make_server: Callable[..., LiveServer], video: Path) -> None:
    import subprocess

    live = make_server()
    with live.client() as client:
        job = finished(client, video)
        r = client.post(f"/v1/jobs/{job['id']}/exports", json={"mode": "soft", "container": "mkv", "style": {"max_chars_per_line": 25}})
        assert r.status_code == 202, r.text
        done = wait_export(client, job["id"], r.json()["id"])
        assert done["status"] == "done", done
        out = live.cfg.storage.data_dir / "x.mkv"
        out.write_bytes(client.get(done["links"]["file"]).content)
        srt = subprocess.run(["ffmpeg", "-v", "error", "-i", str(out), "-map", "0:s:0", "-f", "srt", "-"], capture_output=True, check=True, text=True).stdout
        got = cues(srt.replace("\r\n", "\n"))
        assert len(got) > 1 and all(len(line) <= 25 for c in got for line in c)
        bad = client.post(f"/v1/jobs/{job['id']}/exports", json={"mode": "soft", "subtitles": {"max_line_count": 9}})
        assert bad.status_code == 422 and bad.json()["error"]["field"] == "subtitles.max_line_count"


def test_models_for_openai_clients(make_server: Callable[..., LiveServer]) -> None:
    live = make_server()
    client = OpenAI(base_url=live.url + "/v1", api_key="x", max_retries=0, timeout=30)
    ids = [m.id for m in client.models.list()]
    assert ids == ["fake", "whisper-1"]
    model = client.models.retrieve("whisper-1")
    assert (model.id, model.object, model.owned_by) == ("whisper-1", "model", "altyazi")
    with live.client() as c:
        r = c.get("/v1/models/nope")
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


def test_eta_seconds_in_job_and_progress_events(make_server: Callable[..., LiveServer], video: Path) -> None:
    from tests.test_api import events_of

    live = make_server()
    with live.client() as client:
        r = upload(client, video)
        assert "eta_seconds" in r.json()
        events = events_of(client, r.json()["id"])
        progress = [data for _, kind, data in events if kind == "progress"]
        assert progress and all("eta_seconds" in d for d in progress)
        assert all(d["eta_seconds"] is None or isinstance(d["eta_seconds"], (int, float)) for d in progress)
        assert client.get(f"/v1/jobs/{r.json()['id']}").json()["eta_seconds"] is None  # done


def test_openai_srt_takes_the_line_rules_as_extra_fields(make_server: Callable[..., LiveServer], video: Path) -> None:
    import openai

    live = make_server()
    client = OpenAI(base_url=live.url + "/v1", api_key="x", max_retries=0, timeout=60)
    with open(video, "rb") as fh:
        out = client.audio.transcriptions.create(model="whisper-1", file=fh, response_format="srt", extra_body={"max_line_width": 20})
    assert isinstance(out, str) and "-->" in out
    with open(video, "rb") as fh, pytest.raises(openai.UnprocessableEntityError) as err:
        client.audio.transcriptions.create(model="whisper-1", file=fh, response_format="srt", extra_body={"max_line_width": 3})
    assert err.value.body["param"] == "max_line_width"  # type: ignore[index]


def test_openai_answers_without_cues_skip_the_word_times(make_server: Callable[..., LiveServer], video: Path) -> None:
    live = make_server()
    seen: list[dict[str, Any]] = []
    real_spawn = live.state.manager.spawn
    live.state.manager.spawn = lambda job: (seen.append(dict(job.options)), real_spawn(job))[1]  # type: ignore[method-assign]
    client = OpenAI(base_url=live.url + "/v1", api_key="x", max_retries=0, timeout=60)
    for fmt in ("json", "srt"):
        with open(video, "rb") as fh:
            client.audio.transcriptions.create(model="whisper-1", file=fh, response_format=fmt)  # type: ignore[call-overload]
    assert [o["word_timestamps"] for o in seen] == [False, True]
