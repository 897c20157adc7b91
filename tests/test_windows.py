from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import app.pipeline.windows as windows_module
from app.pipeline.windows import HARD_CUT_GAP, WindowSpan, iter_windows, plan_windows
from batching.types import SAMPLE_RATE
from tests.media import have_tool, make_long_speech, make_silence, make_tone, make_video_with_speech, speak, to_pcm

REPO = Path(__file__).resolve().parents[1]
MAX = 30 * SAMPLE_RATE

needs_media_tools = pytest.mark.skipif(
    not (have_tool("ffmpeg") and have_tool("espeak-ng")), reason="needs ffmpeg and espeak-ng"
)

SENTENCES = [
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Subtitles make videos accessible to people who cannot hear the sound.",
    "Every window of audio is at most thirty seconds long before decoding.",
    "A queue keeps the graphics card busy while nobody waits too long.",
]


def loud_frames(pcm: Path, frame_s: float = 0.02, level: float = 0.02) -> np.ndarray:
    """Start samples of the frames whose RMS says something is audible (espeak is clean)."""
    audio = np.fromfile(pcm, dtype="<i2").astype(np.float32) / 32768.0
    n = int(frame_s * SAMPLE_RATE)
    frames = audio[: len(audio) // n * n].reshape(-1, n)
    rms = np.sqrt((frames**2).mean(axis=1))
    return np.nonzero(rms > level)[0] * n


def assert_well_formed(windows: list[WindowSpan], total: int) -> None:
    for w in windows:
        assert 0 < w.num_samples <= MAX
        assert 0 <= w.start_sample and w.end_sample <= total
    for a, b in zip(windows, windows[1:]):
        assert a.end_sample <= b.start_sample, "windows overlap or are out of order"


def assert_covers(windows: list[WindowSpan], starts: np.ndarray, frame: int = 320) -> None:
    assert len(starts) > 0, "the test audio should have audible parts"
    for s in starts:
        assert any(w.start_sample <= s and s + frame <= w.end_sample for w in windows), (
            f"audible audio at {s / SAMPLE_RATE:.2f} s is in no window"
        )


def write_pcm(path: Path, samples: np.ndarray) -> Path:
    samples.astype("<i2").tofile(path)
    return path


@pytest.fixture(scope="module")
def long_pcm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (have_tool("ffmpeg") and have_tool("espeak-ng")):
        pytest.skip("needs ffmpeg and espeak-ng")
    d = tmp_path_factory.mktemp("long")
    return to_pcm(make_long_speech(d / "long.wav", 95, SENTENCES, pause_s=1.0), d / "long.pcm")


def test_window_span():
    w = WindowSpan(start_sample=48_000, num_samples=16_000)
    assert (w.offset, w.duration, w.end_sample) == (3.0, 1.0, 64_000)
    ref = w.audio_ref("/tmp/x.pcm")
    assert (ref.path, ref.start_sample, ref.num_samples) == ("/tmp/x.pcm", 48_000, 16_000)


def test_empty_and_silent_audio_give_no_windows(tmp_path: Path):
    empty = write_pcm(tmp_path / "empty.pcm", np.zeros(0))
    assert plan_windows(empty) == []
    assert plan_windows(empty, vad=False) == []
    silence = write_pcm(tmp_path / "silence.pcm", np.zeros(20 * SAMPLE_RATE))
    assert plan_windows(silence) == []


@needs_media_tools
def test_tone_and_generated_silence_give_no_windows(tmp_path: Path):
    assert plan_windows(to_pcm(make_silence(tmp_path / "s.wav", 5), tmp_path / "s.pcm")) == []
    assert plan_windows(to_pcm(make_tone(tmp_path / "t.wav", 5), tmp_path / "t.pcm")) == []


@needs_media_tools
def test_short_clip_gives_one_window_covering_the_speech(tmp_path: Path):
    wav = speak("Hello world, this is a short test of the speech synthesizer.", tmp_path / "s.wav")
    pcm = to_pcm(wav, tmp_path / "s.pcm")
    total = pcm.stat().st_size // 2
    assert 3 * SAMPLE_RATE < total < 8 * SAMPLE_RATE
    windows = plan_windows(pcm)
    assert len(windows) == 1
    assert_well_formed(windows, total)
    assert_covers(windows, loud_frames(pcm))


@needs_media_tools
def test_video_with_speech(tmp_path: Path):
    video = make_video_with_speech("Subtitles for everyone.", tmp_path / "v.mp4", lead_silence_s=2.0)
    pcm = to_pcm(video, tmp_path / "v.pcm")
    windows = plan_windows(pcm)
    assert len(windows) == 1
    # the 2 s lead-in is silence: the window starts near the speech, padding aside
    assert 1.0 < windows[0].offset < 2.0
    assert_covers(windows, loud_frames(pcm))


def test_long_speech_gives_several_windows_covering_all_speech(long_pcm: Path):
    total = long_pcm.stat().st_size // 2
    windows = plan_windows(long_pcm)
    assert 4 <= len(windows) <= 6
    assert_well_formed(windows, total)
    assert_covers(windows, loud_frames(long_pcm))
    # packing is greedy: all but the last window are nearly full
    assert all(w.duration > 20 for w in windows[:-1])


def test_speech_across_block_boundaries_is_not_lost(long_pcm: Path):
    # 60 s blocks put a boundary inside the 95 s of speech; one big block has none.
    small = plan_windows(long_pcm, block_s=60)
    big = plan_windows(long_pcm, block_s=1000)
    for windows in (small, big):
        assert_well_formed(windows, long_pcm.stat().st_size // 2)
        assert_covers(windows, loud_frames(long_pcm))
    assert abs(len(small) - len(big)) <= 1


@needs_media_tools
def test_continuous_speech_is_split_at_thirty_seconds(tmp_path: Path):
    # hardly any pauses: Silero must split runs itself and the packer must obey the limit
    pcm = to_pcm(make_long_speech(tmp_path / "c.wav", 70, SENTENCES, pause_s=0.05), tmp_path / "c.pcm")
    windows = plan_windows(pcm, max_window_s=20)
    assert len(windows) >= 3
    assert all(w.num_samples <= 20 * SAMPLE_RATE for w in windows)
    assert_well_formed(windows, pcm.stat().st_size // 2)


def test_without_vad_windows_end_in_pauses(long_pcm: Path):
    total = long_pcm.stat().st_size // 2
    windows = plan_windows(long_pcm, vad=False)
    # all the audio, in order, nothing skipped or twice
    assert windows[0].start_sample == 0 and windows[-1].end_sample == total
    assert all(a.end_sample == b.start_sample for a, b in zip(windows, windows[1:]))
    assert all(w.num_samples <= MAX for w in windows) and len(windows) == 4
    # sentences with 1-s pauses: every window ends in one, so none is a chain
    assert not any(w.ends_in_speech for w in windows)
    pcm = np.memmap(long_pcm, dtype="<i2", mode="r")
    for w in windows[:-1]:
        around = pcm[w.end_sample - 1600 : w.end_sample + 1600].astype(np.float64)
        assert np.sqrt(np.mean(around**2)) < 100  # the cut is in silence (±0.1 s)
        assert w.num_samples > MAX - 10 * SAMPLE_RATE  # in the window's last 10 s


def test_without_vad_continuous_sound_is_cut_at_30_s(tmp_path: Path):
    rng = np.random.default_rng(3)
    noise = write_pcm(tmp_path / "noise.pcm", np.clip(6000 * rng.standard_normal(65 * SAMPLE_RATE), -32768, 32767))
    windows = plan_windows(noise, vad=False)
    assert [w.num_samples for w in windows] == [MAX, MAX, 5 * SAMPLE_RATE]
    assert [w.ends_in_speech for w in windows] == [True, True, False]
    # a tail under 0.1 s is not worth a decode; one byte of a half sample is ignored
    pcm = tmp_path / "tail.pcm"
    pcm.write_bytes(b"\0" * (2 * (2 * MAX + 800)) + b"\0")
    assert [w.num_samples for w in plan_windows(pcm, vad=False)] == [MAX, MAX]
    assert [w.ends_in_speech for w in plan_windows(pcm, vad=False)] == [True, False]  # the last is the file's end
    pcm.write_bytes(b"\0" * (2 * (MAX + 1600)))
    assert [w.num_samples for w in plan_windows(pcm, vad=False)] == [MAX, 1600]
    assert [w.num_samples for w in plan_windows(pcm, vad=False, max_window_s=10)] == [10 * SAMPLE_RATE] * 3 + [
        1600
    ]


def test_padding_tells_hard_cuts_from_pauses():
    pad = 400 * SAMPLE_RATE // 1000
    raw = [
        (10_000, 100_000),
        (100_000 + 512, 200_000),  # one frame later: Silero split speech without a pause
        (200_000 + 3_200, 300_000),  # 200 ms later: a pause
        (300_000 + 20 * SAMPLE_RATE, 700_000),  # a long pause
    ]
    padded = list(windows_module._pad(iter(raw), 800_000))
    assert [cut for _, _, cut in padded] == [True, False, False, False]
    # close spans meet in the middle of the gap, far ones get the full padding
    assert padded[0] == (10_000 - pad, 100_256, True) and padded[1][0] == 100_256
    assert padded[2][1] == 300_000 + pad and padded[3][0] == 300_000 + 20 * SAMPLE_RATE - pad
    assert HARD_CUT_GAP > 512


def test_packing_keeps_the_cut_of_the_window_s_last_span():
    spans = [(0, 20 * SAMPLE_RATE, False), (20 * SAMPLE_RATE, 29 * SAMPLE_RATE, True), (29 * SAMPLE_RATE, 40 * SAMPLE_RATE, False)]
    packed = list(windows_module._pack(iter(spans), MAX))
    assert [(w.start_sample, w.end_sample, w.ends_in_speech) for w in packed] == [
        (0, 29 * SAMPLE_RATE, True),
        (29 * SAMPLE_RATE, 40 * SAMPLE_RATE, False),
    ]
    # a span longer than a window is split by the backstop: those cuts are mid-speech
    long = list(windows_module._pack(iter([(0, 70 * SAMPLE_RATE, False)]), MAX))
    assert [w.ends_in_speech for w in long] == [True, True, False]


def test_windows_come_as_the_vad_finds_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    # A long file's first window must not wait for the VAD to read the whole file.
    pcm = write_pcm(tmp_path / "long.pcm", np.zeros(30 * 60 * SAMPLE_RATE))
    blocks: list[int] = []

    def one_span_per_block(audio: np.ndarray, options: object, sampling_rate: int) -> list[dict[str, int]]:
        blocks.append(len(audio))
        return [{"start": SAMPLE_RATE, "end": 5 * SAMPLE_RATE}]

    monkeypatch.setattr(windows_module, "get_speech_timestamps", one_span_per_block)
    it = iter_windows(pcm)
    first = next(it)
    assert first.start_sample < SAMPLE_RATE and len(blocks) <= 3
    rest = list(it)
    assert len(blocks) == 30 and len(rest) >= 5


def test_bad_arguments(tmp_path: Path):
    pcm = write_pcm(tmp_path / "x.pcm", np.zeros(100))
    with pytest.raises(ValueError, match="max_window_s"):
        plan_windows(pcm, max_window_s=31)
    with pytest.raises(ValueError, match="block_s"):
        plan_windows(pcm, block_s=45)
    with pytest.raises(FileNotFoundError):
        plan_windows(tmp_path / "missing.pcm")


_MEMORY_PROBE = textwrap.dedent(
    """
    import json, sys
    from app.pipeline.windows import load_vad_model, plan_windows

    def status_kb(key):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))

    load_vad_model()
    # Reset the peak (VmHWM) so imports and model loading do not hide the run's own peak.
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = status_kb("VmRSS")
    windows = plan_windows(sys.argv[1])
    growth = status_kb("VmHWM") - before
    print(json.dumps({"growth_mb": growth / 1024, "windows": len(windows)}))
    """
)


@needs_media_tools
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc to measure peak RSS")
def test_thirty_minutes_need_little_memory(tmp_path: Path):
    # 30 min of speech-and-pause, tiled from one spoken minute: VAD runs over
    # all of it. Peak RSS is measured in a fresh process (the file is 57.6 MB).
    minute = to_pcm(make_long_speech(tmp_path / "m.wav", 60, SENTENCES, pause_s=2.0), tmp_path / "m.pcm")
    chunk = minute.read_bytes()
    pcm = tmp_path / "long.pcm"
    with pcm.open("wb") as f:
        for _ in range(30):
            f.write(chunk)
    proc = subprocess.run(
        [sys.executable, "-c", _MEMORY_PROBE, str(pcm)], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["windows"] >= 60  # at least two windows per spoken minute
    assert result["growth_mb"] < 100, result


def test_the_vad_gate_is_taken_per_block_not_per_file(tmp_path: Path):
    # Jobs share a few VAD workers through this gate: held for one block at a
    # time, a long file lets a short one's blocks in between its own.
    import threading

    entered: list[int] = []
    gate = threading.BoundedSemaphore(1)

    class Counting:
        def __enter__(self) -> None:
            gate.acquire()
            entered.append(1)

        def __exit__(self, *exc: object) -> None:
            gate.release()

    noise = np.random.default_rng(1).normal(0, 0.001, 150 * SAMPLE_RATE)
    pcm = write_pcm(tmp_path / "quiet.pcm", noise)
    assert list(iter_windows(pcm, vad=True, gate=Counting)) == []
    assert len(entered) == 3  # 60 + 60 + 30 s
    assert gate.acquire(blocking=False)  # released after every block
