"""The ffmpeg pool: bounds, cancellation, timeouts, errors, audio extraction."""

from __future__ import annotations

import asyncio
import os
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from app.media.demuxers import FORMAT_WHITELIST
from app.media.ffmpeg import DiskFull, FfmpegError, FfmpegPool, FfmpegTimeout, TooLong, fraction_reporter, out_time_s
from tests.test_probe import AUDIO_FORMATS, CLIP_SECONDS, make_media, pytestmark  # noqa: F401

# lavfi is no upload demuxer: tests that generate input in ffmpeg name it for that input.
LAVFI = ["-format_whitelist", "lavfi", "-f", "lavfi"]
SLOW = ["-re", *LAVFI, "-i", "anullsrc=r=8000:cl=mono", "-t", "30", "-f", "null", "-"]


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_media(tmp_path_factory.mktemp("media"))


def children(name: str = "ffmpeg") -> list[int]:
    """Our child processes with that name, zombies included (a zombie still has /proc/PID)."""
    me = str(os.getpid())
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        ppid = stat[stat.rindex(")") + 2 :].split()[1]
        if ppid == me and comm == name:
            found.append(int(entry))
    return found


@pytest.fixture
def stalled_wav(tmp_path: Path) -> Iterator[Path]:
    """A FIFO that yields 8 s of a WAV file and then nothing: a stuck input."""
    fifo = tmp_path / "stuck.wav"
    os.mkfifo(fifo)
    stop = threading.Event()

    def feed() -> None:
        try:
            with open(fifo, "wb") as w:  # blocks until ffmpeg opens the other end
                data = b"\0\0" * 16000 * 8  # more than ffmpeg reads while probing (5 s)
                w.write(b"RIFF" + struct.pack("<I", 0x7FFFFFF0) + b"WAVEfmt " + struct.pack("<IHHIIHH", 16, 1, 1, 16000, 32000, 2, 16))
                w.write(b"data" + struct.pack("<I", 0x7FFFFF00) + data)
                w.flush()
                stop.wait(30)
        except OSError:
            pass

    thread = threading.Thread(target=feed, daemon=True)
    thread.start()
    yield fifo
    stop.set()
    try:  # unblock the writer if nobody ever opened the FIFO
        os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
    except OSError:
        pass
    thread.join(5)


# -- command line --------------------------------------------------------------


def test_threads_are_passed_to_decoders_filters_and_encoder() -> None:
    argv = FfmpegPool(threads=3)._ffmpeg_argv(["-i", "a", "-i", "b", "-c:v", "libx264", "out.mp4"])
    assert argv[:9] == ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-progress", "pipe:1", "-nostats"]
    wl = ["-format_whitelist", FORMAT_WHITELIST, "-protocol_whitelist", "file"]
    assert argv[9:] == ["-filter_threads", "3", *wl, "-threads", "3", "-i", "a", *wl, "-threads", "3", "-i", "b", "-c:v", "libx264", "-threads", "3", "out.mp4"]  # fmt: skip
    assert "-threads" not in FfmpegPool(threads=0)._ffmpeg_argv(["-i", "a", "out.mp4"])


def test_progress_parsing() -> None:
    assert out_time_s({"out_time_us": "1500000"}) == 1.5
    assert out_time_s({"out_time": "00:01:02.500000"}) == 62.5
    assert out_time_s({"out_time_us": "N/A", "out_time": "N/A"}) is None
    seen: list[float] = []
    report = fraction_reporter(10.0, seen.append)
    for block in ({"out_time_us": "N/A"}, {"out_time_us": "2000000"}, {"out_time_us": "1000000"}, {"out_time_us": "20000000"}, {"progress": "end"}):  # fmt: skip
        report(block)
    assert seen == [0.2, 0.999, 1.0]


# -- running --------------------------------------------------------------------


async def test_run_reports_progress_blocks() -> None:
    blocks: list[dict[str, str]] = []
    result = await FfmpegPool().run([*LAVFI, "-i", "sine=d=2", "-f", "null", "-"], on_progress=blocks.append)
    assert result.returncode == 0 and result.elapsed_s > 0
    assert blocks[-1]["progress"] == "end"
    assert out_time_s(blocks[-1]) == pytest.approx(2.0, abs=0.05)


async def test_failure_has_a_readable_message(tmp_path: Path) -> None:
    with pytest.raises(FfmpegError) as err:
        await FfmpegPool().run(["-i", f"file:{tmp_path}/missing.mp4", "-f", "null", "-"])
    assert err.value.code == "ffmpeg_failed"
    assert "No such file or directory" in err.value.message and "missing.mp4" in err.value.stderr_tail


async def test_enospc_is_disk_full() -> None:
    with pytest.raises(DiskFull) as err:
        await FfmpegPool().run([*LAVFI, "-i", "sine=d=5", "-f", "s16le", "file:/dev/full"])
    assert err.value.code == "disk_full"


async def test_missing_binary() -> None:
    with pytest.raises(FfmpegError) as err:
        await FfmpegPool(ffmpeg="/nonexistent/ffmpeg").run(["-version"])
    assert err.value.code == "ffmpeg_missing" and "ffmpeg.path" in err.value.message


async def test_pool_bounds_concurrent_runs() -> None:
    pool = FfmpegPool(max_processes=1)
    spans: dict[str, list[float]] = {"a": [], "b": []}
    observed: list[tuple[int, int]] = []
    loop = asyncio.get_running_loop()

    def watcher(name: str):  # noqa: ANN202
        def on_block(block: dict[str, str]) -> None:
            spans[name].append(loop.time())
            observed.append((pool.busy, pool.waiting))

        return on_block

    args = ["-re", *LAVFI, "-i", "anullsrc=r=8000", "-t", "0.6", "-f", "null", "-"]
    await asyncio.gather(pool.run(args, on_progress=watcher("a")), pool.run(args, on_progress=watcher("b")))
    first, second = sorted(spans.values(), key=min)
    assert max(first) < min(second), "the second run started before the first ended"
    assert all(busy == 1 for busy, _ in observed)
    assert (1, 1) in observed  # the other caller was queued while the first ran
    assert (pool.busy, pool.waiting) == (0, 0)


async def test_cancel_kills_and_reaps() -> None:
    pool = FfmpegPool(kill_grace_s=2)
    started = asyncio.Event()
    task = asyncio.create_task(pool.run(SLOW, on_progress=lambda _: started.set()))
    await started.wait()
    [pid] = children()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not os.path.exists(f"/proc/{pid}"), "ffmpeg is still running or left a zombie"
    assert pool.busy == 0


async def test_cancel_while_queued_frees_the_place() -> None:
    pool = FfmpegPool(max_processes=1)
    started = asyncio.Event()
    running = asyncio.create_task(pool.run(SLOW, on_progress=lambda _: started.set()))
    await started.wait()
    queued = asyncio.create_task(pool.run(SLOW))
    while pool.waiting == 0:
        await asyncio.sleep(0)
    queued.cancel()
    running.cancel()
    await asyncio.gather(queued, running, return_exceptions=True)
    assert (pool.busy, pool.waiting) == (0, 0) and children() == []


async def test_timeout_kills_a_stuck_process(stalled_wav: Path, tmp_path: Path) -> None:
    # Blocked in read(), ffmpeg does not act on SIGTERM: this also covers the SIGKILL step.
    pool = FfmpegPool(timeout_s=1.0, kill_grace_s=0.3)
    with pytest.raises(FfmpegTimeout) as err:
        await pool.run(["-f", "wav", "-i", f"file:{stalled_wav}", "-f", "null", "-"])
    assert err.value.code == "ffmpeg_timeout" and "1 s" in err.value.message
    assert children() == []


# -- audio extraction ------------------------------------------------------------


@pytest.mark.parametrize("name", ["clip.mp4", *sorted(AUDIO_FORMATS)])
async def test_extract_audio_sample_count(media: dict[str, Path], tmp_path: Path, name: str) -> None:
    dst = tmp_path / "audio.pcm"
    await FfmpegPool().extract_audio(media[name], dst)
    samples = dst.stat().st_size // 2
    assert samples == pytest.approx(CLIP_SECONDS * 16000, rel=0.01)
    assert not (tmp_path / "audio.pcm.part").exists()


async def test_extract_audio_progress(media: dict[str, Path], tmp_path: Path) -> None:
    seen: list[float] = []
    await FfmpegPool().extract_audio(media["clip.mp4"], tmp_path / "a.pcm", duration_s=CLIP_SECONDS, on_progress=seen.append)
    assert seen and seen[-1] == 1.0 and seen == sorted(seen)
    assert seen[0] < 1.0


async def test_extract_audio_failure_leaves_nothing(media: dict[str, Path], tmp_path: Path) -> None:
    dst = tmp_path / "audio.pcm"
    with pytest.raises(FfmpegError):
        await FfmpegPool().extract_audio(media["silent.mp4"], dst)  # no audio stream to map
    assert list(tmp_path.iterdir()) == []


async def test_extract_audio_cancel_removes_partial(stalled_wav: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    dst = out / "audio.pcm"
    task = asyncio.create_task(FfmpegPool(kill_grace_s=0.3).extract_audio(stalled_wav, dst, duration_s=100))
    # ffmpeg stalls once the FIFO runs dry, so no progress block announces the output
    # file: watch the directory for it.
    for _ in range(500):
        if (out / "audio.pcm.part").exists():
            break
        await asyncio.sleep(0.02)
    assert (out / "audio.pcm.part").exists()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert list(out.iterdir()) == [] and children() == []


async def test_extraction_stops_at_the_duration_limit(tmp_path: Path) -> None:
    from tests.hostile import lying_mkv

    src = lying_mkv(tmp_path / "lying.mkv", seconds=60, claimed_s=3)
    pool = FfmpegPool(max_audio_s=5)
    info = await pool.probe(src)
    assert info.duration_s == pytest.approx(3, abs=0.1)  # the header's word
    with pytest.raises(TooLong) as caught:
        await pool.extract_audio(src, tmp_path / "audio.pcm", duration_s=info.duration_s)
    assert caught.value.code == "too_long"
    assert "5 s" in caught.value.message and "3 s" in caught.value.message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lying.mkv"]  # nothing partial left


async def test_extraction_within_the_limit_is_whole(media: dict[str, Path], tmp_path: Path) -> None:
    # An honest file just at the limit passes: headers and decoders differ by frames, not seconds.
    pool = FfmpegPool(max_audio_s=CLIP_SECONDS)
    await pool.extract_audio(media["speech.wav"], tmp_path / "a.pcm")
    assert (tmp_path / "a.pcm").stat().st_size / 32000 == pytest.approx(CLIP_SECONDS, abs=0.1)


async def test_measuring_stops_at_the_duration_limit(tmp_path: Path) -> None:
    # A file with no duration in its headers is measured by decoding it; past the
    # limit there is nothing more to learn, so decoding stops there.
    src = tmp_path / "stream.mka"
    made = await anyio.run_process(["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i", "sine=d=120:sample_rate=16000", "-c:a", "libopus",
                                    "-f", "matroska", "-live", "1", "pipe:1"])  # fmt: skip
    src.write_bytes(made.stdout)
    info = await FfmpegPool(max_audio_s=10).probe(src)
    assert info.duration_s == pytest.approx(11, abs=0.2)  # the limit plus the slack, not 120 s
