"""What word timestamps cost: one file through the server's engine, words off and on, alternated.

    .venv/bin/python bench/words.py [--seconds 120] [--rounds 3] [--model DIR]

Line rules (app/media/cuerules.py) turn word timestamps on for every job, so
cues are cut at the words' own times. This measures the price on the model the
server runs: a file of ``--seconds`` looped from the speech clips (bench/batching.py),
cut into 30-second windows and sent through ``WhisperEngine`` all at once, as a
job's windows are, with ``word_timestamps`` off and on, in alternating rounds
(the machine may be shared: the ratio of medians is the number to read). It
also times the line rules themselves on the transcript.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.media.cuerules import DEFAULT_RULES, apply_rules  # noqa: E402
from bench.batching import DEFAULT_MODEL, Job, looped, make_clips  # noqa: E402
from batching.batcher import BatcherOptions  # noqa: E402
from batching.types import Segment  # noqa: E402
from batching.whisper_engine import WhisperEngine  # noqa: E402
from batching.whisper_runner import WhisperRunner  # noqa: E402


async def transcribe(engine: WhisperEngine, job: Job, words: bool, tag: str) -> tuple[float, list[Segment]]:
    windows = [dataclasses.replace(w, options=dataclasses.replace(w.options, word_timestamps=words)) for w in job.windows(tag, "bench")]
    t0 = time.perf_counter()
    results = await asyncio.gather(*(engine.transcribe(w) for w in windows))
    return time.perf_counter() - t0, [s for r in results for s in r.segments]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(DEFAULT_MODEL), help="CTranslate2 model folder or name")
    ap.add_argument("--seconds", type=float, default=120.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--compute-type", default="int8")
    ap.add_argument("--cpu-threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--max-batch-size", type=int, default=8)
    args = ap.parse_args()

    runner = WhisperRunner(args.model, device=args.device, compute_type=args.compute_type, cpu_threads=args.cpu_threads)
    runner.load()

    async def run() -> None:
        engine = WhisperEngine(runner_or_model_args=runner, options=BatcherOptions(max_batch_size=args.max_batch_size, max_wait_s=0.01, prepare_threads=1))
        await engine.start()
        try:
            with tempfile.TemporaryDirectory(prefix="altyazi-words-") as tmp:
                job = looped(make_clips(Path(tmp)), args.seconds, Path(tmp) / "long.pcm")
                await transcribe(engine, job, True, "warm")  # load and warm both code paths
                times: dict[bool, list[float]] = {False: [], True: []}
                segments: list[Segment] = []
                for r in range(args.rounds):
                    for words in ((False, True) if r % 2 == 0 else (True, False)):
                        wall, segs = await transcribe(engine, job, words, f"r{r}{words}")
                        times[words].append(wall)
                        if words:
                            segments = segs
                t0 = time.perf_counter()
                cues = apply_rules(segments, DEFAULT_RULES)
                rules_s = time.perf_counter() - t0
        finally:
            await engine.stop()
        off, on = statistics.median(times[False]), statistics.median(times[True])
        print(f"model {runner.info.name} {runner.info.compute_type} on {args.device}, {args.cpu_threads} threads, "
              f"{args.seconds:.0f} s of speech in {len(job.windows('x', 'x'))} windows, {args.rounds} rounds each")  # fmt: skip
        print(f"words off: median {off:.2f} s ({args.seconds / off:.1f}x real time)  runs {[round(t, 2) for t in times[False]]}")
        print(f"words on:  median {on:.2f} s ({args.seconds / on:.1f}x real time)  runs {[round(t, 2) for t in times[True]]}")
        paired = sorted(a / b for a, b in zip(times[True], times[False]))
        print(f"words on / off: {on / off:.2f} (medians); per round {statistics.median(paired):.2f} (median), {paired[0]:.2f}-{paired[-1]:.2f}")
        print(f"line rules: {len(segments)} segments -> {len(cues)} cues in {rules_s * 1000:.1f} ms")

    asyncio.run(run())


if __name__ == "__main__":
    main()
