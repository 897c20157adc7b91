"""Long media, measured: WER, lost sentences and speed of altyazi against faster-whisper on real-length videos.

    .venv/bin/python bench/longmedia.py                          # 4 videos of ~6 min, modes p,a,b,c, VAD on and off
    .venv/bin/python bench/longmedia.py --n 1 --minutes 1 --vad on   # a quick check
    .venv/bin/python bench/longmedia.py --job-option beam_size=5 --json bench/out/longmedia/beam5.json
    .venv/bin/python bench/longmedia.py --modes c --model base
    .venv/bin/python bench/longmedia.py --server-rev HEAD        # serve the committed code, not the working tree
    .venv/bin/python bench/longmedia.py --report-from bench/out/longmedia/run.json   # the report again, no runs

The videos (``--n``, default 4, of ``--minutes``, default 6) are made from the
English recordings of ``../shared/data/speech`` that have a human reference
(bench/speechmix.py): each a different seeded order, short pauses (0.3-1.5 s,
one clip in five right after the previous one), clips repeated to reach the
length, a small colour video track, AAC in MP4. They are cached with their
reference transcripts in bench/out/longmedia/ (``--rebuild`` makes them again).

Modes, all on the same model folder (``--model``: tiny.en, base or a
CTranslate2 folder), int8 on CPU, ``--cpu-threads`` (0 = CTranslate2's
default, which is also the server's default):

  p  faster-whisper ``WhisperModel.transcribe`` with its defaults (beam 5), one file after another
  a  the same with beam_size=1 (greedy)
  b  faster-whisper ``BatchedInferencePipeline.transcribe`` per file (``--batch-size``; it always
     uses its own VAD, so it runs once, listed under vad=on)
  c  altyazi over HTTP: ``python -m app serve`` as a subprocess with its defaults, all N videos
     uploaded at once, followed to ``done`` over SSE, the JSON transcript downloaded.
     ``--job-option name=value`` (repeatable) is sent as a form field with every upload;
     options the server does not know are refused at a warm-up upload, and said so.
     ``--server-rev REV`` serves a commit (exported with git archive) instead of the tree.

Each mode runs with VAD on and off (``--vad on|off|both``): ``vad_filter`` for
faster-whisper, the job option ``vad`` for altyazi. Every mode decodes the MP4
itself, inside its timed span; language is English everywhere.

The table gives wall seconds, speed (audio seconds per wall second), corpus
WER (all errors over all reference words, case and punctuation normalised as
tests/wer.py does), and each row's speed and WER against (p) and (a) with the
same VAD setting. Then, per video, the reference clips that some mode lost:
fewer than half of their words found in order in the aligned hypothesis. For
altyazi's lost clips the windows that the served code plans around them are
shown, and so are its gaps: runs of 4 or more reference words missing in a
row, wherever they are (a dropped window tail often takes half a clip), each
put down to the nearest window edge. ``--json PATH`` writes everything,
transcripts with their segment times included.

Timings on a shared machine are noisy: compare rows of one run, as ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from httpx_sse import aconnect_sse  # noqa: E402

from bench.load import PYTHON, free_port  # noqa: E402
from bench.speechmix import Gap, Mix, align, build_mix, reference_clips  # noqa: E402
from tests.media import SHARED_SPEECH, to_pcm  # noqa: E402
from tests.wer import normalize, wer  # noqa: E402

OUT = ROOT / "bench" / "out" / "longmedia"
LOST_BELOW = 0.5  # a clip with fewer of its words in the transcript than this is "lost"
# A gap: this many reference words or more in a row missing. Shorter runs are
# ordinary misrecognitions; longer ones are speech that was never decoded
# (a window's dropped tail takes part of a clip as often as a whole one).
GAP_WORDS = 4
EDGE_S = 1.5  # a gap this close to a window's end or start is put down to that edge
WARMUP_CLIP = "fw_jfk.flac"  # 11 s: loads every code path before the timed runs


# ------------------------------------------------------------------------ results


@dataclass
class Run:
    mode: str
    vad: bool
    decoding: str
    wall_s: float | None = None
    done_s: list[float] = field(default_factory=list)  # per file, from the run's start
    first_segment_s: list[float | None] = field(default_factory=list)  # altyazi only
    segments: list[list[tuple[float, float, str]]] = field(default_factory=list)  # per file: (start, end, text)
    error: str | None = None
    # Filled by score():
    edits: int = 0
    words: int = 0
    per_file: list[dict[str, Any]] = field(default_factory=list)
    coverage: list[list[float]] = field(default_factory=list)  # per file, per placed clip
    gaps: list[list[Gap]] = field(default_factory=list)  # per file: stretches of missing reference words

    @property
    def label(self) -> str:
        return f"{self.mode}-{'on' if self.vad else 'off'}"

    @property
    def hyps(self) -> list[str]:
        return [" ".join(text for _, _, text in segs) for segs in self.segments]

    @property
    def wer(self) -> float | None:
        return self.edits / self.words if self.words and self.error is None else None

    @property
    def lost(self) -> int:
        return sum(h < LOST_BELOW for cov in self.coverage for h in cov)

    @property
    def gap_words(self) -> int:
        return sum(g.words for gs in self.gaps for g in gs)


def score(run: Run, mixes: list[Mix]) -> None:
    if run.error is not None:
        return
    for mix, hyp in zip(mixes, run.hyps):
        al = align(mix, hyp, min_gap_words=GAP_WORDS)
        # The number reported is tests/wer.py's own; the aligner must agree with it.
        ref_words = len(normalize(mix.reference))
        w = wer(mix.reference, hyp)
        if round(w * ref_words) != al.edits:
            raise AssertionError(f"aligner disagrees with tests/wer.py on {mix.path.name}: {al.edits} vs {w * ref_words:.1f}")
        run.edits += al.edits
        run.words += al.words
        run.coverage.append(al.coverage)
        run.gaps.append(al.gaps)
        run.per_file.append({"file": mix.path.name, "wer": w, "edits": al.edits, "words": al.words})


# ------------------------------------------------------------------------ faster-whisper


def load_whisper(path: str, args: argparse.Namespace) -> Any:
    from faster_whisper import WhisperModel

    return WhisperModel(path, device=args.device, compute_type=args.compute_type, cpu_threads=args.cpu_threads)


def run_sequential(model: Any, mixes: list[Mix], *, mode: str, beam: int, vad: bool) -> Run:
    run = Run(mode, vad, f"beam {beam}")
    t0 = time.perf_counter()
    for mix in mixes:
        segments, _ = model.transcribe(str(mix.path), language="en", beam_size=beam, vad_filter=vad)
        run.segments.append([(s.start, s.end, s.text.strip()) for s in segments])  # the generator does the work
        run.done_s.append(time.perf_counter() - t0)
    run.wall_s = time.perf_counter() - t0
    return run


def run_batched(model: Any, mixes: list[Mix], *, batch_size: int, beam: int) -> Run:
    from faster_whisper import BatchedInferencePipeline

    pipe = BatchedInferencePipeline(model)
    run = Run("b", True, f"beam {beam}, batch {batch_size}")
    t0 = time.perf_counter()
    for mix in mixes:
        segments, _ = pipe.transcribe(str(mix.path), language="en", beam_size=beam, batch_size=batch_size)
        run.segments.append([(s.start, s.end, s.text.strip()) for s in segments])
        run.done_s.append(time.perf_counter() - t0)
    run.wall_s = time.perf_counter() - t0
    return run


# ------------------------------------------------------------------------ altyazi over HTTP


class Server:
    """``python -m app serve`` of a checkout (this one, or an export of a commit) with its defaults.

    Its own session, so a Ctrl-C reaches this script, which stops it in order.
    """

    def __init__(
        self, root: Path, *, model: str, data_dir: Path, log_path: Path, env: dict[str, str] | None = None
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        env = {**os.environ, "PYTHONPATH": str(root), "ALTYAZI_STORAGE_MIN_FREE_MB": "1", **(env or {})}
        env.pop("ALTYAZI_SERVER_PORT", None)
        self._log = open(log_path, "wb")
        # cwd first on sys.path: the checkout's app package wins over the venv's editable install.
        self.proc = subprocess.Popen(
            [str(PYTHON if PYTHON.exists() else sys.executable), "-m", "app", "serve", "--host", "127.0.0.1",
             "--port", str(self.port), "--data-dir", str(data_dir), "--model", model],
            cwd=root, env=env, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip

    def log_tail(self, n: int = 25) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text("utf-8", "replace").splitlines()[-n:])
        return ""

    def wait_ready(self, timeout: float = 180.0) -> float:
        t0 = time.monotonic()
        while time.monotonic() < t0 + timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with status {self.proc.returncode} before ready:\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return time.monotonic() - t0
            time.sleep(0.1)
        raise RuntimeError(f"server not ready after {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 30 s; safe to call twice."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)  # the server and its ffmpeg children
                self.proc.wait(10)
        if not self._log.closed:
            self._log.close()


@contextlib.contextmanager
def server_checkout(rev: str | None):
    """(folder, commit) of the code to serve: this working tree, or ``git archive`` of ``rev``
    (e.g. HEAD, to measure the committed code while the tree is being changed)."""
    if rev is None:
        yield ROOT, "working tree"
        return
    sha = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--verify", f"{rev}^{{commit}}"],
                         capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="altyazi-rev-") as tmp:
        archive = subprocess.Popen(["git", "-C", str(ROOT), "archive", sha], stdout=subprocess.PIPE)
        subprocess.run(["tar", "-x", "-C", tmp], stdin=archive.stdout, check=True)
        archive.stdout.close()  # type: ignore[union-attr]
        if archive.wait() != 0:
            raise RuntimeError(f"git archive {sha} failed")
        yield Path(tmp), sha[:12]


class Rejected(RuntimeError):
    """The server answered an upload or a job with an error: the message says which."""


def _error_text(r: httpx.Response) -> str:
    try:
        body = r.json()
        err = body.get("error", body) if isinstance(body, dict) else None
        if isinstance(err, dict):
            return f"HTTP {r.status_code} {err.get('code', '')}: {err.get('message', json.dumps(err))}"
    except ValueError:
        pass
    return f"HTTP {r.status_code}: {r.text[:300]}"


async def one_job(client: httpx.AsyncClient, path: Path, body: bytes, fields: dict[str, str], t0: float) -> dict[str, Any]:
    r = await client.post("/v1/jobs", files={"file": (path.name, body, "video/mp4" if path.suffix == ".mp4" else "application/octet-stream")}, data=fields)
    if r.status_code != 202:
        raise Rejected(f"upload of {path.name} refused: {_error_text(r)}")
    job = r.json()
    job_id = job["id"]
    out: dict[str, Any] = {"id": job_id, "options": job.get("options", {}), "first_segment_s": None}
    final, last_id = None, ""
    for _ in range(5):  # a dropped stream is resumed where it stopped
        headers = {"Last-Event-ID": last_id} if last_id else {}
        async with aconnect_sse(client, "GET", f"/v1/jobs/{job_id}/events", headers=headers) as source:
            if source.response.status_code != 200:
                raise Rejected(f"events of {path.name}: {_error_text(source.response)}")
            async for sse in source.aiter_sse():
                last_id = sse.id or last_id
                if sse.event == "segment" and out["first_segment_s"] is None:
                    out["first_segment_s"] = time.perf_counter() - t0
                elif sse.event in ("done", "failed", "cancelled"):
                    final = (sse.event, sse.data)
                    break
        if final is not None:
            break
    if final is None:
        raise Rejected(f"job {job_id} ({path.name}): the event stream ended without a final event")
    if final[0] != "done":
        raise Rejected(f"job {job_id} ({path.name}) {final[0]}: {final[1][:400]}")
    r = await client.get(f"/v1/jobs/{job_id}/transcript", params={"format": "json"})
    if r.status_code != 200:
        raise Rejected(f"transcript of {path.name}: {_error_text(r)}")
    out["done_s"] = time.perf_counter() - t0
    out["segments"] = r.json().get("segments", [])
    return out


async def all_jobs(url: str, paths: list[Path], fields: dict[str, str], timeout_s: float) -> tuple[float, list[dict[str, Any]]]:
    bodies = [p.read_bytes() for p in paths]  # read before the clock starts: the upload is timed, the disk is not
    limits = httpx.Limits(max_connections=4 * len(paths) + 4)
    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(120.0), limits=limits) as client:
        t0 = time.perf_counter()
        jobs = await asyncio.wait_for(
            asyncio.gather(*(one_job(client, p, b, fields, t0) for p, b in zip(paths, bodies))), timeout_s
        )
        return time.perf_counter() - t0, jobs


def run_altyazi(url: str, mixes: list[Mix], *, vad: bool, options: dict[str, str], timeout_s: float) -> Run:
    fields = {"language": "en", **options, "vad": "true" if vad else "false"}
    run = Run("c", vad, "")
    try:
        wall, jobs = asyncio.run(all_jobs(url, [m.path for m in mixes], fields, timeout_s))
    except (Rejected, httpx.HTTPError, asyncio.TimeoutError) as exc:
        run.error = f"{type(exc).__name__}: {exc}" if not isinstance(exc, Rejected) else str(exc)
        return run
    run.wall_s = wall
    run.segments = [[(s["start"], s["end"], s["text"].strip()) for s in j["segments"]] for j in jobs]
    run.done_s = [j["done_s"] for j in jobs]
    run.first_segment_s = [j["first_segment_s"] for j in jobs]
    run.decoding = altyazi_decoding(jobs[0]["options"] if jobs else {}, options)
    return run


def altyazi_decoding(job_options: dict[str, Any], sent: dict[str, str]) -> str:
    """What the job decoded with, as the server reports it; before the server had a
    ``beam_size`` option every window was decoded greedily."""
    beam = job_options.get("beam_size", sent.get("beam_size"))
    text = f"beam {beam}" if beam is not None else "beam 1 (fixed)"
    extra = [f"{k}={v}" for k, v in sent.items() if k not in ("beam_size", "language", "vad")]
    return ", ".join([text, *extra])


def beam_of(run: Run) -> int | None:
    try:
        return int(run.decoding.split(",")[0].split()[1])
    except (IndexError, ValueError):
        return None


# ------------------------------------------------------------------------ window plans


_PLAN = """
import json, sys
try:
    from app.pipeline.windows import plan_windows
except ImportError:  # a revision from before app/ had subpackages
    from app.windows import plan_windows
print(json.dumps([(w.offset, w.offset + w.duration) for w in plan_windows(sys.argv[1], vad=sys.argv[2] == "on")]))
"""


class Windows:
    """altyazi's windows for a mix, as the server's checkout plans them (app/pipeline/windows.py), on demand.

    Planned in a subprocess of that checkout, so the windows are those of the
    code that served the jobs, and a tree in the middle of a change cannot
    break the benchmark: the answer is then a note.
    """

    def __init__(self, work: Path, root: Path) -> None:
        self.work = work
        self.root = root
        self.cache: dict[tuple[str, bool], list[tuple[float, float]] | str] = {}

    def of(self, mix: Mix, vad: bool) -> list[tuple[float, float]] | str:
        key = (mix.path.name, vad)
        if key not in self.cache:
            pcm = self.work / (mix.path.stem + ".pcm")
            if not pcm.exists():
                to_pcm(mix.path, pcm)  # as the server extracts it: ffmpeg, 16 kHz mono s16le
            proc = subprocess.run(
                [str(PYTHON), "-c", _PLAN, str(pcm), "on" if vad else "off"],
                cwd=self.root, env={**os.environ, "PYTHONPATH": str(self.root)},
                capture_output=True, text=True, check=False, timeout=600,
            )  # fmt: skip
            if proc.returncode == 0:
                self.cache[key] = [(a, b) for a, b in json.loads(proc.stdout)]
            else:
                self.cache[key] = f"window plan unavailable: {proc.stderr.strip().splitlines()[-1:] or proc.returncode}"
        return self.cache[key]


def where(start: float, end: float, windows: list[tuple[float, float]] | str) -> tuple[str, str]:
    """(kind, description) of a clip's place among the windows: which it touches, how near their edges it ends."""
    if isinstance(windows, str):
        return "unknown", windows
    touching = [(k, a, b) for k, (a, b) in enumerate(windows) if a < end and b > start]
    if not touching:
        return "outside", "in no window (skipped as silence)"
    spans = ", ".join(f"w{k} {a:.1f}-{b:.1f}" for k, a, b in touching)
    if len(touching) > 1:
        return "crosses an edge", f"{spans} (crosses {len(touching) - 1} edge(s))"
    k, a, b = touching[0]
    kind = "ends <= 1 s before its window's end" if b - end <= 1.0 else "inside its window"
    return kind, f"{spans} (clip ends {b - end:+.1f} s from w{k}'s end)"


def near_edge(start: float, end: float, windows: list[tuple[float, float]] | str) -> tuple[str, str]:
    """(kind, description) of the window edge nearest to a gap of missing words."""
    if isinstance(windows, str):
        return "unknown", windows
    best: tuple[float, int, str, float] | None = None
    for k, (a, b) in enumerate(windows):
        for kind, t in (("end", b), ("start", a)):  # an end first: without VAD w(k) ends where w(k+1) starts
            d = 0.0 if start <= t <= end else min(abs(t - start), abs(t - end))
            if best is None or d < best[0]:
                best = (d, k, kind, t)
    if best is None:
        return "outside any window", "no windows"
    d, k, kind, t = best
    if d <= EDGE_S:
        return f"at a window's {kind}", f"w{k} {kind}s at {t:.1f}"
    inside = any(a <= start and end <= b for a, b in windows)
    return ("inside a window" if inside else "outside any window"), f"nearest edge w{k} {kind} at {t:.1f}, {d:.1f} s away"


# ------------------------------------------------------------------------ printing


def fmt(x: float | None, spec: str, width: int) -> str:
    return (format(x, spec) if x is not None else "-").rjust(width)


def baseline(runs: list[Run], mode: str, vad: bool) -> Run | None:
    return next((r for r in runs if r.mode == mode and r.vad == vad and r.error is None), None)


def table(runs: list[Run], audio_s: float) -> str:
    head = (f"{'mode':<4} {'vad':<3} {'decoding':<22} {'wall s':>7} {'x rt':>6} {'WER %':>6} {'errors/words':>13} "
            f"{'lost':>4} {'gaps/words':>10} | {'speed/p':>7} {'speed/a':>7} | {'dWER p':>6} {'dWER a':>6}")  # fmt: skip
    lines = [head, "-" * len(head)]
    for r in runs:
        if r.error is not None:
            lines.append(f"{r.mode:<4} {'on' if r.vad else 'off':<3} FAILED: {r.error}")
            continue
        p, a = baseline(runs, "p", r.vad), baseline(runs, "a", r.vad)
        speed = lambda base, r=r: base.wall_s / r.wall_s if base is not None else None  # noqa: E731
        dwer = lambda base, r=r: 100 * (r.wer - base.wer) if base is not None else None  # noqa: E731
        lines.append(
            f"{r.mode:<4} {'on' if r.vad else 'off':<3} {r.decoding[:22]:<22} {r.wall_s:7.1f} {audio_s / r.wall_s:6.1f} "
            f"{100 * r.wer:6.2f} {f'{r.edits}/{r.words}':>13} {r.lost:>4} {f'{sum(map(len, r.gaps))}/{r.gap_words}':>10} | "
            f"{fmt(speed(p), '.2f', 7)} {fmt(speed(a), '.2f', 7)} | {fmt(dwer(p), '+.2f', 6)} {fmt(dwer(a), '+.2f', 6)}"
        )  # fmt: skip
    return "\n".join(lines)


def targets(runs: list[Run]) -> list[tuple[str, bool]]:
    """Issue 12's targets for each altyazi run that has its baselines in this run."""
    out = []
    for c in (r for r in runs if r.mode == "c" and r.error is None):
        vad = "on" if c.vad else "off"
        same = baseline(runs, "p" if beam_of(c) == 5 else "a", c.vad) if beam_of(c) in (1, 5) else None
        if same is not None:
            out.append((f"vad {vad}: altyazi WER {100 * c.wer:.2f} <= {same.mode} (same decoding) {100 * same.wer:.2f} + 0.3",
                        c.wer <= same.wer + 0.003))  # fmt: skip
        p, a = baseline(runs, "p", c.vad), baseline(runs, "a", c.vad)
        if p is not None:
            out.append((f"vad {vad}: altyazi speed {p.wall_s / c.wall_s:.2f}x p >= 2.0", p.wall_s / c.wall_s >= 2.0))
            out.append((f"vad {vad}: altyazi WER {100 * c.wer:.2f} <= p {100 * p.wer:.2f} + 0.3", c.wer <= p.wer + 0.003))
        if a is not None:
            out.append((f"vad {vad}: altyazi speed {a.wall_s / c.wall_s:.2f}x a >= 1.3", a.wall_s / c.wall_s >= 1.3))
    return out


def lost_report(runs: list[Run], mixes: list[Mix], windows: Windows) -> str:
    ok = [r for r in runs if r.error is None]
    lines = []
    alty = [r for r in ok if r.mode == "c"]
    kinds: dict[str, dict[str, int]] = {r.label: {} for r in alty}
    gap_kinds: dict[str, dict[str, list[int]]] = {r.label: {} for r in alty}
    by_all = 0
    for f, mix in enumerate(mixes):
        n_words = ok[0].per_file[f]["words"] if ok else 0
        wers = "  ".join(f"{r.label} {100 * r.per_file[f]['wer']:.1f}" for r in ok)
        lines.append(f"\nvideo {f} {mix.path.name}: {mix.seconds / 60:.1f} min, {len(mix.placed)} clips, {n_words} words; WER % {wers}")
        rows = [k for k in range(len(mix.placed)) if any(r.coverage[f][k] < LOST_BELOW for r in ok)]
        if not rows:
            lines.append("  no clip lost by any mode")
        else:
            lines.append(f"  {'clip s':>13}  {'words found, % (* = lost)':<{9 * len(ok)}}  reference")
            lines.append(f"  {'':>13}  " + "".join(f"{r.label:>9}" for r in ok))
        for k in rows:
            p = mix.placed[k]
            lost_by = [r for r in ok if r.coverage[f][k] < LOST_BELOW]
            by_all += len(lost_by) == len(ok)
            cells = "".join(f"{100 * r.coverage[f][k]:8.0f}{'*' if r in lost_by else ' '}" for r in ok)
            text = p.text if len(p.text) <= 70 else p.text[:67] + "..."
            lines.append(f"  {p.start_s:6.1f}-{p.end_s:6.1f}  {cells}  {text}")
            for r in lost_by:
                if r.mode == "c":
                    kind, text = where(p.start_s, p.end_s, windows.of(mix, r.vad))
                    # A clip that faster-whisper loses too (same VAD) is not a window-edge loss.
                    also = [b.label for b in ok if b.mode in "pa" and b.vad == r.vad and b.coverage[f][k] < LOST_BELOW]
                    kind = "lost by faster-whisper too" if also else kind
                    kinds[r.label][kind] = kinds[r.label].get(kind, 0) + 1
                    lines.append(f"  {'':>13}  {r.label}: {text}" + (f"; also lost by {', '.join(also)}" if also else ""))
        for r in alty:
            if not r.gaps[f]:
                continue
            lines.append(f"  {r.label} gaps ({GAP_WORDS}+ reference words missing in a row; times estimated):")
            for g in r.gaps[f]:
                kind, edge = near_edge(g.start_s, g.end_s, windows.of(mix, r.vad))
                also = [b.label for b in ok if b.mode in "pa" and b.vad == r.vad
                        and any(h.start_s < g.end_s and g.start_s < h.end_s for h in b.gaps[f])]  # fmt: skip
                kind = "faster-whisper misses it too" if also else kind
                counts = gap_kinds[r.label].setdefault(kind, [0, 0])
                counts[0] += 1
                counts[1] += g.words
                text = g.text if len(g.text) <= 60 else g.text[:57] + "..."
                lines.append(f"    {g.start_s:6.1f}-{g.end_s:6.1f} {g.words:>3} w  {edge:<34} {text}"
                             + (f"  (also {', '.join(also)})" if also else ""))  # fmt: skip
    if kinds:
        lines.append("\naltyazi's losses by their place in the served code's windows:")
        for r in alty:
            counts = kinds[r.label]
            parts = ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items(), key=lambda kv: -kv[1]))
            lines.append(f"  {r.label}: {sum(counts.values())} clips lost" + (f": {parts}" if parts else ""))
            gk = gap_kinds[r.label]
            parts = ", ".join(f"{n} {kind} ({w} words)" for kind, (n, w) in sorted(gk.items(), key=lambda kv: -kv[1][1]))
            lines.append(f"  {r.label}: {sum(n for n, _ in gk.values())} gaps, {sum(w for _, w in gk.values())} words"
                         + (f": {parts}" if parts else ""))  # fmt: skip
    if by_all:
        lines.append(f"{by_all} clip(s) lost by every mode: a reference the normaliser cannot match "
                     "(numbers in words, e.g. IN EIGHTEEN THIRTEEN against 'In 1813'), the same in every row")
    return "\n".join(lines)


# ------------------------------------------------------------------------ main


def resolve(name: str) -> tuple[str, str]:
    """(folder for faster-whisper, --model for the server): the same weights on both sides."""
    from app.model_files import resolve_model

    resolved = resolve_model(name, ROOT / "data")
    # tiny.en is passed by name, as a user would; other models by folder, so the
    # server does not prepare a second copy of them in its scratch data dir.
    return resolved.path_or_id, (name if name == "tiny.en" else resolved.path_or_id)


def parse_job_options(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise SystemExit(f"--job-option wants name=value, not {pair!r}")
        if name.strip() == "vad":
            raise SystemExit("--job-option vad=...: use --vad on|off|both; each run sets vad itself")
        out[name.strip()] = value
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=4, help="number of videos (default 4)")
    ap.add_argument("--minutes", type=float, default=6.0, help="length of each video (default 6)")
    ap.add_argument("--seed", type=int, default=12, help="shapes the videos' clip orders and pauses")
    ap.add_argument("--modes", default="p,a,b,c", help="any of p,a,b,c (default all)")
    ap.add_argument("--vad", default="both", choices=["on", "off", "both", "on,off", "off,on"], metavar="on|off|both",
                    help="VAD setting(s) to run each mode with (default both)")
    ap.add_argument("--model", default="tiny.en", help="tiny.en, base or a CTranslate2 folder (default tiny.en)")
    ap.add_argument("--cpu-threads", type=int, default=0, help="faster-whisper threads; 0 = CTranslate2's default, as the server")
    ap.add_argument("--compute-type", default="int8")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                    help="for every mode (altyazi gets ALTYAZI_MODEL_DEVICE and ALTYAZI_MODEL_COMPUTE_TYPE)")
    ap.add_argument("--batch-size", type=int, default=8, help="mode b's batch size")
    ap.add_argument("--b-beam-size", type=int, default=5, help="mode b's beam (its default is 5)")
    ap.add_argument("--job-option", action="append", default=[], metavar="NAME=VALUE", help="altyazi job option sent with every upload (repeatable)")
    ap.add_argument("--server-rev", metavar="REV", help="serve this commit (git archive into a scratch folder) instead of the working tree, e.g. HEAD")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds altyazi gets for all N jobs")
    ap.add_argument("--rebuild", action="store_true", help="make the videos again even if cached")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--report-from", type=Path, metavar="JSON", help="print the report of an earlier --json run again; runs nothing")
    args = ap.parse_args(argv)
    # Holds the served checkout (an export of --server-rev) and scratch folders until the end.
    with contextlib.ExitStack() as stack:
        if args.report_from:
            return reprint(args.report_from, stack)
        return bench(ap, args, argv, stack)


def bench(ap: argparse.ArgumentParser, args: argparse.Namespace, argv: list[str] | None, stack: contextlib.ExitStack) -> int:
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or set(modes) - set("pabc"):
        ap.error(f"--modes takes p, a, b, c; got {args.modes!r}")
    vads = {"on": [True], "off": [False]}.get(args.vad, [True, False])
    options = parse_job_options(args.job_option)
    if not (SHARED_SPEECH / "MANIFEST.tsv").is_file():
        print(f"{SHARED_SPEECH} is absent: this benchmark needs its recordings", file=sys.stderr)
        return 2

    clips = reference_clips()
    t = time.perf_counter()
    if args.rebuild:
        for old in OUT.glob("mix*"):
            old.unlink()
    mixes = [build_mix(OUT, clips, seconds=args.minutes * 60, seed=args.seed, index=i) for i in range(args.n)]
    audio_s = sum(m.seconds for m in mixes)
    print(f"{len(mixes)} videos from {len(clips)} clips ({sum(c.seconds for c in clips):.0f} s of speech), "
          f"{audio_s:.0f} s of media in all ({', '.join(f'{m.seconds:.0f}' for m in mixes)} s), ready in {time.perf_counter() - t:.1f} s")  # fmt: skip

    model_path, server_model = resolve(args.model)
    print(f"model {args.model}: {model_path}; {args.compute_type}, cpu_threads {args.cpu_threads}; "
          f"{os.cpu_count()} cores, load average {', '.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)  # fmt: skip

    runs: list[Run] = []
    root = ROOT

    def done(run: Run) -> None:
        runs.append(run)
        if run.error:
            print(f"  {run.label}: FAILED: {run.error}", flush=True)
        else:
            print(f"  {run.label} ({run.decoding}): {run.wall_s:.1f} s", flush=True)

    # The server is started first and idles while faster-whisper runs, so that the
    # modes of one VAD setting run close together in time: on a shared machine
    # the load drifts, and neighbours in time make fairer ratios.
    served, server, server_error = "-", None, None
    if "c" in modes:
        root, served = stack.enter_context(server_checkout(args.server_rev))
        OUT.mkdir(parents=True, exist_ok=True)
        server_log = OUT / "server.log"
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="altyazi-longmedia-")))
        server = Server(root, model=server_model, data_dir=tmp / "data", log_path=server_log,
                        env={"ALTYAZI_MODEL_DEVICE": args.device, "ALTYAZI_MODEL_COMPUTE_TYPE": args.compute_type})  # fmt: skip
        stack.callback(server.stop)
        try:
            ready = server.wait_ready()
            print(f"altyazi ({served}) ready in {ready:.1f} s on {server.url} (log {server_log})", flush=True)
            # Warm, and the options checked before anything is timed: a refusal shows here.
            warm = run_altyazi(server.url, [Mix(SHARED_SPEECH / WARMUP_CLIP, 11.0, [])], vad=True, options=options, timeout_s=600)
            server_error = warm.error
        except RuntimeError as exc:
            server_error = f"server: {exc}"
        if server_error is not None:
            print(f"altyazi refused the warm-up job (the job options are checked there): {server_error}", flush=True)

    model = None
    if set(modes) & set("pab"):
        model = load_whisper(model_path, args)
        # Warm: first calls allocate and pick kernels; none of that belongs to a mode.
        list(model.transcribe(str(SHARED_SPEECH / WARMUP_CLIP), language="en", beam_size=1)[0])

    for vad in vads:
        if "p" in modes:
            done(run_sequential(model, mixes, mode="p", beam=5, vad=vad))
        if "a" in modes:
            done(run_sequential(model, mixes, mode="a", beam=1, vad=vad))
        if "b" in modes and (vad or len(vads) == 1):  # always with its VAD: once
            done(run_batched(model, mixes, batch_size=args.batch_size, beam=args.b_beam_size))
        if "c" in modes:
            done(run_altyazi(server.url, mixes, vad=vad, options=options, timeout_s=args.timeout)
                 if server is not None and server_error is None else Run("c", vad, "", error=server_error))  # fmt: skip
    if server is not None:
        server.stop()
    del model

    print("\nscoring...", flush=True)
    info = {
        "command": " ".join(["bench/longmedia.py", *(argv if argv is not None else sys.argv[1:])]),
        "model": args.model, "model_path": model_path, "cpu_threads": args.cpu_threads,
        "compute_type": args.compute_type, "cpu_count": os.cpu_count(), "load_avg_at_end": os.getloadavg(),
        "job_options": options, "altyazi_code": served, "audio_s": audio_s,
    }  # fmt: skip
    report = print_report(runs, mixes, info, root, stack)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1, ensure_ascii=False, default=str))
        print(f"\nwrote {args.json}")
    return 1 if any(r.error for r in runs) else 0


RUN_FIELDS = ("mode", "vad", "decoding", "wall_s", "done_s", "first_segment_s", "segments", "error")


def reprint(path: Path, stack: contextlib.ExitStack) -> int:
    """The report of a saved run, scored again (e.g. after the report changed)."""
    data = json.loads(path.read_text(encoding="utf-8"))
    mixes = [Mix.load(Path(v["media"]).with_suffix(".json")) for v in data["videos"]]
    for r in data["runs"]:
        if "segments" not in r:  # a report from before segments were kept: one text per file
            r["segments"] = [[(0.0, 0.0, h)] for h in r.get("hypotheses", [])]
    runs = [Run(**{k: r[k] for k in RUN_FIELDS}) for r in data["runs"]]
    for r in runs:
        r.segments = [[tuple(s) for s in segs] for segs in r.segments]  # type: ignore[misc]
    code = data.get("altyazi_code", "working tree")
    root = ROOT
    if code not in ("-", "working tree"):
        root, _ = stack.enter_context(server_checkout(code))
    print(f"report of {path} ({data.get('command', '?')})")
    print_report(runs, mixes, data, root, stack)
    return 0


def print_report(runs: list[Run], mixes: list[Mix], info: dict[str, Any], root: Path, stack: contextlib.ExitStack) -> dict[str, Any]:
    """Score, print everything, and return the JSON report."""
    for run in runs:
        score(run, mixes)
    # Rows in a fixed order whatever order they ran in.
    runs.sort(key=lambda r: ("pabc".index(r.mode), not r.vad))
    audio_s = info["audio_s"]

    n_words = next((r.words for r in runs if r.error is None), 0)
    options = info.get("job_options") or {}
    print(f"\n{len(mixes)} videos, {audio_s:.0f} s of media, {n_words} reference words; model {info['model']}; "
          f"altyazi: {info['altyazi_code']}" + (f", job options {options}" if options else ""))  # fmt: skip
    print(table(runs, audio_s))
    print("x rt: audio seconds per wall second; speed/p, speed/a: that mode's wall time over this row's "
          "(same VAD setting); dWER: WER points over theirs;\nlost: clips with under half their words found; "
          f"gaps: runs of {GAP_WORDS}+ reference words missing in a row, and the words in them")
    for r in runs:
        if r.mode == "c" and r.error is None:
            firsts = [x for x in r.first_segment_s if x is not None]
            print(f"{r.label}: jobs done at {', '.join(f'{x:.1f}' for x in sorted(r.done_s))} s; "
                  f"first segment after {min(firsts) if firsts else float('nan'):.1f}-{max(firsts) if firsts else float('nan'):.1f} s")
    checks = targets(runs)
    if checks:
        print("\nissue 12 targets:")
        for name, ok in checks:
            print(f"  {'met   ' if ok else 'MISSED'} {name}")

    pcm_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="altyazi-longmedia-pcm-")))
    print("\nclips lost, per video:" + lost_report(runs, mixes, Windows(pcm_dir, root)))

    return {
        **{k: v for k, v in info.items() if k not in ("runs", "videos", "targets")},
        "videos": [{"media": str(m.path), "seconds": m.seconds, "clips": len(m.placed)} for m in mixes],
        "runs": [
            {**{k: getattr(r, k) for k in RUN_FIELDS},
             "speed": audio_s / r.wall_s if r.wall_s else None, "wer": r.wer, "edits": r.edits, "words": r.words,
             "lost": r.lost, "per_file": r.per_file,
             "lost_clips": [[{"start_s": m.placed[k].start_s, "end_s": m.placed[k].end_s, "file": m.placed[k].file,
                              "found": c} for k, c in enumerate(cov) if c < LOST_BELOW]
                            for m, cov in zip(mixes, r.coverage)],
             "gaps": [[g.__dict__ for g in gs] for gs in r.gaps],
             "hypotheses": r.hyps}
            for r in runs
        ],
        "targets": {name: ok for name, ok in checks},
    }  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
