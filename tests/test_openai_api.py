"""The OpenAI-compatible routes, driven by the official ``openai`` client.

The fast tests use the fake engine (shapes, errors, disconnects); the ones
marked slow run the real tiny.en model (and Whisper base for a translation).
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
import openai
import pytest
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families

from batching.fake_engine import FakeEngine
from tests.conftest import REPO, LiveServer, server_config, start_server, tiny_engine_factory
from tests.media import speak

SENTENCE = "The weather today is sunny and warm, and we are going to the park."


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("openai-media")
    bogus = d / "notes.mp3"
    bogus.write_text("this is a text file with an mp3 name\n" * 20)
    return {"speech": speak(SENTENCE, d / "speech.wav"), "bogus": bogus}


def client_for(live: LiveServer, **kw: Any) -> OpenAI:
    return OpenAI(base_url=live.url + "/v1", api_key="x", max_retries=0, timeout=kw.pop("timeout", 120), **kw)


def listed_jobs(live: LiveServer) -> list[dict[str, Any]]:
    with live.client() as c:
        return c.get("/v1/jobs").json()["jobs"]  # type: ignore[no-any-return]


def wait_no_jobs(live: LiveServer, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while listed_jobs(live):
        assert time.monotonic() < deadline, f"OpenAI jobs left behind: {listed_jobs(live)}"
        time.sleep(0.05)


# ---- fast: fake engine -------------------------------------------------------------------


def test_json_answer_and_job_is_deleted(make_server: Callable[..., LiveServer], clips: dict[str, Path]) -> None:
    live = make_server()
    with open(clips["speech"], "rb") as fh:
        out = client_for(live).audio.transcriptions.create(model="whisper-1", file=fh)
    assert out.text == "window 0"  # the fake engine's answer
    assert listed_jobs(live) == []  # answered, then deleted


def test_bad_parameters_are_openai_errors(make_server: Callable[..., LiveServer], clips: dict[str, Path]) -> None:
    live = make_server()
    api = client_for(live)
    with open(clips["speech"], "rb") as fh:
        with pytest.raises(openai.BadRequestError) as info:
            api.audio.transcriptions.create(model="whisper-1", file=fh, response_format="docx")  # type: ignore[arg-type]
    err = info.value.body
    assert isinstance(err, dict)
    assert err["type"] == "invalid_request_error" and err["param"] == "response_format"
    assert "docx" in err["message"]
    with open(clips["speech"], "rb") as fh:
        with pytest.raises(openai.BadRequestError) as info:
            api.audio.transcriptions.create(model="whisper-1", file=fh, response_format="json", timestamp_granularities=["word"])
    assert info.value.body["param"] == "timestamp_granularities"  # type: ignore[index]
    with open(clips["speech"], "rb") as fh:
        with pytest.raises(openai.UnprocessableEntityError) as info:
            api.audio.transcriptions.create(model="whisper-1", file=fh, language="xx")
    assert info.value.body["param"] == "language" and info.value.body["code"] == "invalid_option"  # type: ignore[index]
    with open(clips["speech"], "rb") as fh:
        with pytest.raises(openai.BadRequestError) as info:
            api.audio.transcriptions.create(model="whisper-1", file=fh, extra_body={"colour": "red"})
    assert info.value.body["code"] == "unknown_parameter" and info.value.body["param"] == "colour"  # type: ignore[index]
    assert listed_jobs(live) == []  # nothing was created


def test_not_media_is_an_openai_error(make_server: Callable[..., LiveServer], clips: dict[str, Path]) -> None:
    live = make_server()
    with open(clips["bogus"], "rb") as fh:
        with pytest.raises(openai.APIStatusError) as info:
            client_for(live).audio.transcriptions.create(model="whisper-1", file=fh)
    assert info.value.status_code == 415
    body = info.value.body
    assert isinstance(body, dict) and set(body) == {"message", "type", "param", "code"}
    assert body["code"] == "not_media" and body["type"] == "invalid_request_error"
    assert "audio or video file" in body["message"]
    raw = httpx.post(live.url + "/v1/audio/transcriptions", files={"file": ("notes.mp3", clips["bogus"].read_bytes())}, data={"model": "x"})
    assert set(raw.json()) == {"error"} and raw.json()["error"]["code"] == "not_media"


def send_raw(live: LiveServer, request: httpx.Request) -> socket.socket:
    """Send a request on a bare socket, so the test can hang up before any answer."""
    request.read()
    host, port = live.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    head = f"{request.method} {request.url.raw_path.decode()} HTTP/1.1\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in request.headers.items()
    )
    sock.sendall(head.encode() + b"\r\n" + request.content)
    return sock


@pytest.mark.parametrize("stream", [False, True], ids=["blocking", "stream"])
def test_client_disconnect_cancels_and_deletes_the_job(make_server: Callable[..., LiveServer], clips: dict[str, Path], stream: bool) -> None:
    hold = asyncio.Event()  # never set: the job waits on the "model" until cancelled
    engine = FakeEngine(hold=hold)
    live = make_server(engine_factory=lambda c: (engine, True, "fake"))
    request = httpx.Request(
        "POST", live.url + "/v1/audio/transcriptions",
        files={"file": ("speech.wav", clips["speech"].read_bytes())},
        data={"model": "whisper-1", "stream": "true" if stream else "false"},
    )
    sock = send_raw(live, request)
    try:
        deadline = time.monotonic() + 10
        while not engine.calls:  # the job reached the model
            assert time.monotonic() < deadline, "the job never reached the engine"
            time.sleep(0.02)
        assert len(listed_jobs(live)) == 1
    finally:
        sock.close()  # the client goes away
    wait_no_jobs(live)
    assert live.call(count_all(live)) == 0
    assert engine.completed == [] and engine.stats.cancelled >= 1


async def count_all(live: LiveServer) -> int:
    return int(await live.state.store.count_jobs(("queued", "running", "done", "failed", "cancelled")))


def test_leftover_openai_jobs_are_dropped_at_start(make_server: Callable[..., LiveServer], tmp_path: Path) -> None:
    from storage.store import JobRecord

    data_dir = tmp_path / "data"
    first = make_server(data_dir=data_dir)
    now = time.time()
    for job_id, options in (("leftover-openai", {"via": "openai"}), ("ordinary-job", {})):
        record = JobRecord(
            id=job_id, owner="anonymous", status="done", stage="done", progress=1.0, filename="a.wav",
            options=options, created_at=now, updated_at=now, finished_at=now,
        )
        first.call(first.state.store.create_job(record))
    first.stop()
    second = make_server(data_dir=data_dir)
    assert [j["id"] for j in listed_jobs(second)] == ["ordinary-job"]


# ---- slow: the real tiny.en model ------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = start_server(server_config(tmp_path_factory.mktemp("openai-data")), tiny_engine_factory)
    yield live
    live.stop()


def words_of(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


EXPECTED = {"weather", "sunny", "park"}


def test_verbose_json_carries_the_decoders_scores(make_server: Callable[..., LiveServer], clips: dict[str, Path]) -> None:
    live = make_server()
    with open(clips["speech"], "rb") as fh:
        out: Any = client_for(live).audio.transcriptions.create(model="whisper-1", file=fh, response_format="verbose_json")
    [seg] = out.segments  # the fake engine answers one segment per window, with known scores
    assert (seg.avg_logprob, seg.no_speech_prob, seg.temperature) == (-0.25, 0.05, 0.0)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["json", "text", "srt", "verbose_json", "vtt"])
def test_transcription_formats_with_tiny_en(tiny: LiveServer, clips: dict[str, Path], fmt: str) -> None:
    with open(clips["speech"], "rb") as fh:
        out: Any = client_for(tiny).audio.transcriptions.create(
            model="whisper-1", file=fh, response_format=fmt, language="en", prompt="Weather report.", temperature=0.0  # type: ignore[arg-type]
        )
    if fmt == "json":
        assert EXPECTED <= words_of(out.text)
    elif fmt == "text":
        assert isinstance(out, str) and EXPECTED <= words_of(out)
    elif fmt == "srt":
        assert re.match(r"1\n\d\d:\d\d:\d\d,\d{3} --> \d\d:\d\d:\d\d,\d{3}\n\S", out), out
        assert EXPECTED <= words_of(out)
        assert max(len(line) for line in out.splitlines()) <= 42  # the server's line rules
    elif fmt == "vtt":
        assert out.startswith("WEBVTT\n\n") and re.search(r"\d\d:\d\d:\d\d\.\d{3} --> ", out)
    else:
        assert out.task == "transcribe" and out.language == "en"
        assert 3.0 < out.duration < 8.0
        assert EXPECTED <= words_of(out.text)
        seg = out.segments[0]
        for key in ("id", "seek", "start", "end", "text", "tokens", "temperature", "avg_logprob", "compression_ratio", "no_speech_prob"):
            assert hasattr(seg, key), key
        # the model's own numbers: clear speech is likely and not silence, decoded greedily first
        assert -1.0 < seg.avg_logprob < 0.0 and 0.0 <= seg.no_speech_prob < 0.5 and seg.temperature in (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
        assert 0 <= seg.start < seg.end <= out.duration + 0.5
        assert out.words is None  # only with timestamp_granularities=["word"]
    assert listed_jobs(tiny) == []


@pytest.mark.slow
def test_word_timestamps_with_tiny_en(tiny: LiveServer, clips: dict[str, Path]) -> None:
    with open(clips["speech"], "rb") as fh:
        out = client_for(tiny).audio.transcriptions.create(
            model="whisper-1", file=fh, response_format="verbose_json", timestamp_granularities=["word"]
        )
    assert out.words, out
    spoken = [w.word.lower().strip(".,") for w in out.words]
    assert "sunny" in spoken and "park" in spoken
    starts = [w.start for w in out.words]
    assert starts == sorted(starts)
    assert all(w.end >= w.start for w in out.words)
    assert out.words[-1].end <= out.duration + 0.5


@pytest.mark.slow
def test_stream_deltas_with_tiny_en(tiny: LiveServer, clips: dict[str, Path]) -> None:
    # The openai client streams for any model name; it parses our events into its own types.
    with open(clips["speech"], "rb") as fh:
        events = list(client_for(tiny).audio.transcriptions.create(model="whisper-1", file=fh, stream=True))
    types = [e.type for e in events]
    assert types[-1] == "transcript.text.done" and set(types[:-1]) == {"transcript.text.delta"}
    deltas = "".join(e.delta for e in events[:-1])  # type: ignore[union-attr]
    assert deltas == events[-1].text  # type: ignore[union-attr]
    assert EXPECTED <= words_of(deltas)
    # The wire format, as other clients see it: data-only SSE events, then the end.
    with httpx.Client(timeout=120) as c:
        r = c.post(
            tiny.url + "/v1/audio/transcriptions",
            files={"file": ("speech.wav", clips["speech"].read_bytes())},
            data={"model": "whisper-1", "stream": "true"},
        )
    assert r.headers["content-type"].startswith("text/event-stream")
    payloads = [json.loads(line[len("data: "):]) for line in r.text.splitlines() if line.startswith("data: ")]
    assert payloads[-1]["type"] == "transcript.text.done" and payloads[0]["type"] == "transcript.text.delta"
    wait_no_jobs(tiny)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")  # the SDK marks translations.create so
def test_translation_on_english_only_model_is_a_clear_error(tiny: LiveServer, clips: dict[str, Path]) -> None:
    with open(clips["speech"], "rb") as fh:
        with pytest.raises(openai.UnprocessableEntityError) as info:
            client_for(tiny).audio.translations.create(model="whisper-1", file=fh)
    body = info.value.body
    assert isinstance(body, dict)
    assert body["code"] == "invalid_option" and body["type"] == "invalid_request_error" and body["param"] == "task"
    assert "English-only" in body["message"] and "translate" in body["message"]


@pytest.mark.slow
def test_batch_metrics_move_with_tiny_en(tiny: LiveServer, clips: dict[str, Path]) -> None:
    with open(clips["speech"], "rb") as fh:
        client_for(tiny).audio.transcriptions.create(model="whisper-1", file=fh, response_format="text")
    text = httpx.get(tiny.url + "/metrics").text
    samples = {s.name: s for f in text_string_to_metric_families(text) for s in f.samples if not s.labels or "le" not in s.labels}
    assert samples["altyazi_batch_size_count"].value >= 1
    assert samples["altyazi_batches_total"].value >= 1
    assert samples["altyazi_batch_run_seconds_sum"].value > 0
    assert samples["altyazi_audio_seconds_processed_total"].value > 3
    assert 0 < samples["altyazi_realtime_factor"].value < 1  # faster than real time
    routes = {s.labels.get("route") for f in text_string_to_metric_families(text) for s in f.samples if s.name == "altyazi_http_requests_total"}
    assert "/v1/audio/transcriptions" in routes


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")
def test_translation_with_multilingual_base(make_server: Callable[..., LiveServer], tmp_path: Path) -> None:
    from app.model_files import resolve_model
    from app.serving import engine_for

    # The joined base model lives under the checkout's data dir when setup ran; else it is made here.
    prepared = REPO / "data"
    model_dir = prepared if (prepared / "models").is_dir() else tmp_path / "models-data"

    def base_factory(cfg: Any) -> Any:
        resolved = resolve_model("base", model_dir)
        return engine_for(cfg, resolved), resolved.multilingual, resolved.name

    live = make_server(engine_factory=base_factory)
    clip = speak("Guten Morgen, wie geht es dir?", tmp_path / "de.wav", voice="de")
    with open(clip, "rb") as fh:
        # OpenAI's translations take no language; altyazi accepts one as a hint for the
        # source (Whisper base mistakes two seconds of espeak German for English).
        out = client_for(live).audio.translations.create(
            model="whisper-1", file=fh, response_format="verbose_json", extra_body={"language": "de"}
        )
    assert out.task == "translate"  # type: ignore[attr-defined]
    assert out.language == "de"  # type: ignore[attr-defined]
    assert {"good", "morning"} <= words_of(out.text), out.text
