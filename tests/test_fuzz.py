"""A fuzz pass over every route of a live server: JSON bodies, options and headers.

Whatever hypothesis sends, the answer is never a 500, every error has the
API's shape, and the server is healthy afterwards. The pass is bounded (a
fixed number of examples, derandomised so CI sees the same ones every run)
and takes about 25 s on 2 cores.
"""

from __future__ import annotations

import json
import string
from typing import Any, Iterator

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batching.fake_engine import FakeEngine
from tests.conftest import LiveServer, add_keys, bearer, server_config, start_server, wait_done, wait_export
from tests.media import speak

FUZZ = settings(
    max_examples=70,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

ROUTES = [
    ("GET", "/"), ("GET", "/static/app.js"), ("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics"),
    ("GET", "/v1/jobs"), ("POST", "/v1/jobs"), ("GET", "/v1/jobs/{job}"), ("GET", "/v1/jobs/{job}/events"),
    ("GET", "/v1/jobs/{job}/transcript"), ("PUT", "/v1/jobs/{job}/transcript"), ("POST", "/v1/jobs/{job}/exports"),
    ("GET", "/v1/jobs/{job}/exports/{export}"), ("GET", "/v1/jobs/{job}/exports/{export}/file"),
    ("DELETE", "/v1/jobs/{other}"), ("DELETE", "/v1/jobs/{job}/exports/{other}"),
    ("POST", "/v1/audio/transcriptions"), ("POST", "/v1/audio/translations"), ("HEAD", "/v1/jobs/{job}/events"),
]  # fmt: skip
JSON_ROUTES = [("PUT", "/v1/jobs/{job}/transcript"), ("POST", "/v1/jobs/{job}/exports")]  # where bodies are read
OPTION_NAMES = ["language", "task", "word_timestamps", "vad", "initial_prompt", "format", "version", "limit", "cursor",
                "last_event_id", "filename", "model", "prompt", "response_format", "temperature", "stream",
                "timestamp_granularities[]", "mode", "container"]  # fmt: skip
HEADER_NAMES = ["Range", "If-Range", "Last-Event-ID", "Content-Type", "Authorization", "Accept", "Origin", "Expect", "Cookie"]
HEADER_TEXT = st.text(alphabet=string.printable.replace("\r", "").replace("\n", "").replace("\x0b", "").replace("\x0c", ""), max_size=80).map(str.strip)

# Floats include the infinities (sent as Infinity); the literals are what once gave 500s.
hostile = st.sampled_from(["a\ud800b", "\udfff", 10**400, -(10**25), 1e308])
scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30) | hostile
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5), max_leaves=25)
segments = st.lists(
    st.fixed_dictionaries({}, optional={"start": scalars, "end": scalars, "text": scalars, "id": scalars, "words": json_values}),
    max_size=5,
)
# Segments that pass the time checks, so what they carry reaches validation and the disk.
plausible_segments = st.lists(
    st.fixed_dictionaries({"start": st.floats(0, 0.4), "end": st.floats(0.5, 0.9), "text": st.text(max_size=20) | hostile}),
    min_size=1, max_size=1,
)
nested = st.integers(33, 3000).map(lambda n: b"[" * n + b"]" * n)  # raw bytes, sent as they are
bodies = st.one_of(
    json_values,
    nested,
    st.fixed_dictionaries({"segments": plausible_segments}),
    st.fixed_dictionaries({"segments": segments}, optional={"language": scalars}),
    st.fixed_dictionaries({"mode": st.sampled_from(["burn", "soft", "x"]) | scalars},
                          optional={"container": scalars, "crf": scalars, "preset": scalars,
                                    "style": st.dictionaries(st.sampled_from(["font", "size", "primary_colour", "position", "margin", "max_chars_per_line", "x"]), scalars)}),
)  # fmt: skip
options = st.dictionaries(st.sampled_from(OPTION_NAMES) | st.text(min_size=1, max_size=8), st.text(max_size=40), max_size=5)
headers = st.dictionaries(st.sampled_from(HEADER_NAMES), HEADER_TEXT, max_size=4)


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, dict[str, str], dict[str, str]]]:
    data = tmp_path_factory.mktemp("fuzz") / "data"
    keys = add_keys(data, "fuzzer")
    cfg = server_config(data, **{"auth.enabled": True, "auth.rate_limit_per_minute": 0})
    live = start_server(cfg, lambda c: (FakeEngine(), True, "fake"))
    wav = speak("fuzz me gently", data.parent / "s.wav")
    try:
        with live.client(headers=bearer(keys["fuzzer"])) as client:
            job = client.post("/v1/jobs", files={"file": ("s.wav", wav.read_bytes())}).json()["id"]
            assert wait_done(client, job)["status"] == "done"
            export = client.post(f"/v1/jobs/{job}/exports", json={"mode": "soft", "container": "mkv"}).json()["id"]
            assert wait_export(client, job, export)["status"] == "done"
        ids = {"job": job, "export": export, "other": "AAAAAAAAAAAAAAAAAAAAAA"}
        yield live, ids, keys
        with live.client(headers=bearer(keys["fuzzer"])) as client:
            # Healthy after: probes answer, and the fixture's job and export are still served.
            assert client.get("/healthz").status_code == 200
            assert client.get("/readyz").status_code == 200
            assert client.get(f"/v1/jobs/{job}/transcript", params={"format": "srt"}).status_code == 200
            assert client.get(f"/v1/jobs/{job}/exports/{export}/file", headers={"Range": "bytes=0-99"}).status_code == 206
    finally:
        live.stop()


def check(r: httpx.Response) -> None:
    assert r.status_code < 500, (r.request.method, r.request.url, r.status_code, r.text[:300])
    if r.status_code >= 400 and r.request.method != "HEAD":
        assert r.headers.get("content-type", "").startswith("application/json"), (r.status_code, r.text[:200])
        error = r.json()["error"]
        assert isinstance(error["code"], str) and error["code"] and isinstance(error["message"], str), error


def send(client: httpx.Client, ids: dict[str, str], route: tuple[str, str], **kw: Any) -> httpx.Response:
    method, template = route
    path = template.format(**ids)
    if method == "POST" and template in ("/v1/jobs", "/v1/audio/transcriptions", "/v1/audio/translations") and "content" not in kw:
        kw["files"] = {"file": ("a.wav", b"RIFF not really a wav")}
    if template.endswith("/events") and method == "GET":
        kw.setdefault("params", {})["last_event_id"] = "999999"  # past the end: the finished job's stream ends at once
    return client.request(method, path, timeout=30, **kw)


@settings(FUZZ, max_examples=80)
@given(route=st.sampled_from(JSON_ROUTES) | st.sampled_from(ROUTES), body=bodies)
def test_fuzz_json_bodies(target: Any, route: tuple[str, str], body: Any) -> None:
    live, ids, keys = target
    with live.client(headers=bearer(keys["fuzzer"])) as client:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        check(send(client, ids, route, content=content, headers={"Content-Type": "application/json"}))


@FUZZ
@given(route=st.sampled_from(ROUTES), params=options, form=options)
def test_fuzz_options(target: Any, route: tuple[str, str], params: dict[str, str], form: dict[str, str]) -> None:
    live, ids, keys = target
    kw: dict[str, Any] = {"params": params}
    if route[0] == "POST" and not route[1].endswith("/exports"):
        kw["data"] = form
    with live.client(headers=bearer(keys["fuzzer"])) as client:
        check(send(client, ids, route, **kw))


@FUZZ
@given(route=st.sampled_from(ROUTES), extra=headers, with_key=st.booleans())
def test_fuzz_headers(target: Any, route: tuple[str, str], extra: dict[str, str], with_key: bool) -> None:
    live, ids, keys = target
    sent = {**(bearer(keys["fuzzer"]) if with_key else {}), **extra}
    with live.client() as client:
        try:
            r = send(client, ids, route, headers=sent)
        except httpx.RemoteProtocolError:
            return  # the server refused the request line or headers and closed: not a 500
        except httpx.LocalProtocolError:
            return  # httpx would not send it (e.g. an empty Content-Type); nothing reached the server
        check(r)
