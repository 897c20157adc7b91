"""storage.s3_files.S3Files against a real S3 server (SeaweedFS): what the cluster adds to the file store."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from storage.claims import StoreUnavailable
from storage.s3_files import PART_BYTES, S3Files, parse_s3_url

pytestmark = pytest.mark.cluster


@pytest.fixture
def s3_env(s3_server: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    return s3_server


def store(server: Any, data_dir: Path, prefix: str | None = None) -> S3Files:
    return S3Files(data_dir, f"s3://{server.bucket}/{prefix or uuid.uuid4().hex}")


def test_urls() -> None:
    assert parse_s3_url("s3://bucket/a/b/") == ("bucket", "a/b")
    assert parse_s3_url("s3://bucket") == ("bucket", "")
    with pytest.raises(ValueError):
        parse_s3_url("file:///x")


async def test_a_file_pushed_on_one_node_is_pulled_on_another(s3_env: Any, tmp_path: Path) -> None:
    prefix = uuid.uuid4().hex
    a, b = store(s3_env, tmp_path / "a", prefix), store(s3_env, tmp_path / "b", prefix)
    a.create("j")
    big = os.urandom(PART_BYTES + 12345)  # two parts: a multipart upload
    a.input_path("j", ".mp4").write_bytes(big)
    a.transcript_path("j").write_text('{"segments":[]}')
    await a.push("j", a.input_path("j", ".mp4"))
    await a.push("j", a.transcript_path("j"))
    assert a.key("j", a.transcript_path("j")) == f"{prefix}/j/transcript.json"

    assert b.find_input("j") is None
    got = await b.pull_input("j")
    assert got == b.input_path("j", ".mp4") and got.read_bytes() == big
    assert await b.pull("j", b.transcript_path("j")) and b.transcript_path("j").read_text() == '{"segments":[]}'
    assert not await b.pull("j", b.edited_path("j"))  # never stored: False, nothing made
    assert not b.edited_path("j").exists()
    c_dir = store(s3_env, tmp_path / "c0", prefix)  # a node with no copy streams from the bucket
    assert await c_dir.remote_size("j", c_dir.input_path("j", ".mp4")) == len(big)
    assert b"".join([x async for x in c_dir.read_stream("j", c_dir.input_path("j", ".mp4"), 10, PART_BYTES + 9)]) == big[10 : PART_BYTES + 10]
    assert await c_dir.remote_size("j", c_dir.edited_path("j")) is None  # stored nowhere
    assert await b.remote_size("j", b.input_path("j", ".mp4")) is None  # b has its own copy now
    await c_dir.aclose()
    assert await b.pull_input("other") is None

    await b.aclose()
    await asyncio.to_thread(b.remove, "j")  # as retention and DELETE call it
    await a.aclose()
    c = store(s3_env, tmp_path / "c", prefix)
    assert await c.pull_input("j") is None and not await c.pull("j", c.transcript_path("j"))
    await c.aclose()


@pytest.fixture
def own_s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A server of this test's own, since it is killed."""
    from tests.cluster_servers import S3Server

    server = S3Server().start()
    for name, value in server.env().items():
        monkeypatch.setenv(name, value)
    try:
        yield server
    finally:
        server.close()


async def test_an_unreachable_server_is_unavailable_and_work_goes_on_after_it_returns(own_s3: Any, tmp_path: Path) -> None:
    files = store(own_s3, tmp_path / "n")
    files.create("j")
    path = files.input_path("j", ".wav")
    path.write_bytes(b"abc")
    own_s3.stop()
    with pytest.raises(StoreUnavailable):
        await files.push("j", path)
    own_s3.start()
    await files.push("j", path)
    path.unlink()
    assert await files.pull_input("j") == path and path.read_bytes() == b"abc"
    await files.aclose()
