"""100 people at once, measured: an end-to-end load test of a real altyazi server.

    .venv/bin/python bench/load.py                       # 100 users, burst, batched vs one-at-a-time
    .venv/bin/python bench/load.py --users 10,50,100     # a sweep; writes the plot bench/out/load.png
    .venv/bin/python bench/load.py --arrival steady --rate 2
    .venv/bin/python bench/load.py --long --users 100 --long-seconds 600 --no-compare   # memory bound
    .venv/bin/python bench/load.py --users 100 --repeat 3   # batched and one-at-a-time alternately, 3 each

``--repeat K`` runs batched and one-at-a-time alternately, K times each (so
slow drift of a shared machine falls on both), and reports each mode's median
throughput with the spread (min-max) of its runs, and the ratio of medians.

``--long`` is the memory bound: every user uploads the same ``--long-seconds``
clip of dense speech (8 s of speech every ``--long-speech-every`` s, 8.5 by
default: continuous talk, so every window is decoded, not skipped as silence).
The run fails (exit 1) when the server's peak RSS exceeds its RSS once the
model was loaded by more than ``--rss-budget-mb`` (1536 MB by default).

For each user count (and, with ``--compare``, once more with
``ALTYAZI_BATCHING_MAX_BATCH_SIZE=1``) the script starts the server as a
subprocess (``python -m app serve --model tiny.en`` on a free loopback port,
a fresh data dir), waits for ``/readyz``, and runs N simulated users with
httpx on one asyncio loop. Each user uploads a real speech clip, follows the
job's SSE stream to ``done``, downloads the SRT and checks it. Then it scrapes
``/metrics`` (optional: "n/a" where the server has none) and stops the server
(SIGTERM, then SIGKILL), whatever happened.

Every latency is measured from the moment the user starts its upload:
``upload`` (202 received), ``first event``, ``first segment``, ``done``.
The load generator shares the machine's cores with the server, so on a small
box its numbers include the client's own scheduling delay.

Writes ``bench/out/load-<arrival>.json`` (``load-long.json`` for ``--long``)
and, for a sweep, ``bench/out/load.png``. Exit status 1 if any user saw an
error of any kind.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from httpx_sse import aconnect_sse  # noqa: E402

from bench.clips import BUCKETS, LONG_LENGTHS, SHORT_LENGTHS, Clip, assign, build_clips, build_long_clip  # noqa: E402

OUT = ROOT / "bench" / "out"
PYTHON = ROOT / ".venv" / "bin" / "python"

# ---- the server under test ------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_LIVE: set[subprocess.Popen[bytes]] = set()


@atexit.register
def _kill_leftovers() -> None:
    # Last resort (an exception escaping everything): no server outlives the script.
    for proc in list(_LIVE):
        with contextlib.suppress(OSError):
            proc.kill()


def _vm_kb(pid: int, key: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


class ServerProcess:
    """``python -m app serve`` in its own session; RSS sampled from /proc in a thread."""

    def __init__(self, *, model: str, data_dir: Path, env: dict[str, str], log_path: Path, python: Path = PYTHON) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.peak_rss_kb = 0
        self._stop_sampling = threading.Event()
        self._sampler: threading.Thread | None = None
        # A hung server can be made to print every thread's stack (see dump_stacks).
        full_env = {**os.environ, "PYTHONFAULTHANDLER": "1", **env}
        full_env.pop("ALTYAZI_SERVER_PORT", None)
        self._log = open(log_path, "wb")
        # A new session: Ctrl-C in the terminal reaches this script only, which
        # then stops the server in order (SIGTERM, wait, SIGKILL).
        self.proc = subprocess.Popen(
            [str(python if python.exists() else sys.executable), "-m", "app", "serve",
             "--host", "127.0.0.1", "--port", str(self.port), "--data-dir", str(data_dir), "--model", model],
            cwd=ROOT, env=full_env, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        _LIVE.add(self.proc)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss_kb(self) -> int | None:
        return _vm_kb(self.pid, "VmRSS")

    def hwm_kb(self) -> int | None:
        return _vm_kb(self.pid, "VmHWM")

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text("utf-8", "replace").splitlines()[-n:])
        except OSError:
            return ""

    def wait_ready(self, timeout: float = 180.0) -> float:
        """Poll /readyz; the seconds it took. Raises with the server's log if it dies or times out."""
        t0 = time.monotonic()
        deadline = t0 + timeout
        with httpx.Client(base_url=self.url, timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited with status {self.proc.returncode} before ready:\n{self.log_tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    if client.get("/readyz").status_code == 200:
                        return time.monotonic() - t0
                time.sleep(0.1)
        raise RuntimeError(f"server not ready after {timeout:.0f} s:\n{self.log_tail()}")

    def start_sampling(self, every_s: float = 0.1) -> None:
        def run() -> None:
            while not self._stop_sampling.wait(every_s):
                kb = self.rss_kb()
                if kb is not None:
                    self.peak_rss_kb = max(self.peak_rss_kb, kb)

        self._sampler = threading.Thread(target=run, name="rss-sampler", daemon=True)
        self._sampler.start()

    def dump_stacks(self) -> None:
        """Diagnosis of a hung server: SIGABRT makes faulthandler write every thread's stack to the log (and ends it)."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGABRT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)

    def stop(self, grace_s: float = 20.0) -> int | None:
        """SIGTERM, wait up to ``grace_s``, then SIGKILL. Safe to call twice."""
        self._stop_sampling.set()
        if self._sampler is not None:
            self._sampler.join(timeout=2)
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)  # the server and its ffmpeg children
                self.proc.wait(timeout=10)
        _LIVE.discard(self.proc)
        self._log.close()
        return self.proc.returncode


# ---- checks --------------------------------------------------------------------------

_CUE_TIME = re.compile(r"^(\d{2}):([0-5]\d):([0-5]\d),(\d{3}) --> (\d{2}):([0-5]\d):([0-5]\d),(\d{3})$")


def _ms(h: str, m: str, s: str, ms: str) -> int:
    return ((int(h) * 60 + int(m)) * 60 + int(s)) * 1000 + int(ms)


def srt_problem(text: str) -> str | None:
    """None for a non-empty, valid SRT (numbered cues, ``HH:MM:SS,mmm --> HH:MM:SS,mmm``, text); else what is wrong."""
    blocks = [b for b in re.split(r"\r?\n[ \t]*\r?\n", text.strip()) if b.strip()]
    if not blocks:
        return "the SRT is empty"
    for n, block in enumerate(blocks, start=1):
        lines = block.splitlines()
        if len(lines) < 3:
            return f"cue {n} has {len(lines)} line(s), expected number, times and text"
        if lines[0].strip() != str(n):
            return f"cue {n} is numbered {lines[0].strip()!r}"
        m = _CUE_TIME.match(lines[1].strip())
        if m is None:
            return f"cue {n} has a bad time line {lines[1]!r}"
        start, end = _ms(*m.groups()[:4]), _ms(*m.groups()[4:])
        if end < start:
            return f"cue {n} ends before it starts: {lines[1]!r}"
        if not any(line.strip() for line in lines[2:]):
            return f"cue {n} has no text"
    return None


# ---- one user --------------------------------------------------------------------------


@dataclass
class UserResult:
    user: int
    clip: str
    audio_s: float
    bucket: str
    arrival_s: float = 0.0  # planned start, from the run's start
    started: float = 0.0  # perf_counter at upload start
    upload_s: float | None = None
    first_event_s: float | None = None
    first_segment_s: float | None = None
    done_s: float | None = None
    srt_s: float | None = None
    segments: int = 0
    cues: int = 0
    job_id: str | None = None
    error: str | None = None


async def run_user(client: httpx.AsyncClient, result: UserResult, body: bytes, t_run: float) -> UserResult:
    delay = t_run + result.arrival_s - time.perf_counter()
    if delay > 0:
        await asyncio.sleep(delay)
    t0 = result.started = time.perf_counter()
    try:
        r = await client.post("/v1/jobs", files={"file": (Path(result.clip).name, body, "audio/flac")})
        result.upload_s = time.perf_counter() - t0
        if r.status_code != 202:
            result.error = f"upload: HTTP {r.status_code} {r.text[:200]}"
            return result
        job_id = result.job_id = r.json()["id"]
        last_id = ""
        final: str | None = None
        for _attempt in range(5):  # reconnects are bounded; a server restart sends a last "status"
            headers = {"Last-Event-ID": last_id} if last_id else {}
            async with aconnect_sse(client, "GET", f"/v1/jobs/{job_id}/events", headers=headers) as source:
                if source.response.status_code != 200:
                    result.error = f"events: HTTP {source.response.status_code}"
                    return result
                async for sse in source.aiter_sse():
                    now = time.perf_counter() - t0
                    if sse.id:
                        last_id = sse.id
                    if result.first_event_s is None:
                        result.first_event_s = now
                    if sse.event == "segment":
                        result.segments += 1
                        if result.first_segment_s is None:
                            result.first_segment_s = now
                    elif sse.event in ("done", "failed", "cancelled"):
                        final = sse.event
                        if final == "done":
                            result.done_s = now
                        else:
                            result.error = f"job {final}: {sse.data[:300]}"
                        break
            if final is not None:
                break
        if final is None:
            result.error = "events: the stream ended without a final event"
            return result
        if final != "done":
            return result
        r = await client.get(f"/v1/jobs/{job_id}/transcript", params={"format": "srt"})
        result.srt_s = time.perf_counter() - t0
        if r.status_code != 200:
            result.error = f"transcript: HTTP {r.status_code} {r.text[:200]}"
            return result
        problem = srt_problem(r.text)
        if problem is not None:
            result.error = f"srt: {problem}"
        result.cues = r.text.count(" --> ")
    except asyncio.CancelledError:
        result.error = result.error or "timeout: the run's --timeout passed before this user finished"
        raise
    except (httpx.HTTPError, OSError, ValueError, KeyError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"[:300]
    return result


async def probe_health(url: str, stop: asyncio.Event, out: list[float], every_s: float = 0.25) -> None:
    """/healthz round trips during the run: what an outside observer sees of the server's loop."""
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        while not stop.is_set():
            t0 = time.perf_counter()
            with contextlib.suppress(httpx.HTTPError):
                await client.get("/healthz")
                out.append(time.perf_counter() - t0)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), every_s)


# ---- /metrics --------------------------------------------------------------------------


def _hist_quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """Quantile ``q`` of cumulative buckets (``le`` ascending), interpolated inside its bucket
    as Prometheus' ``histogram_quantile`` does; the last finite bound if it falls in ``+Inf``."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lo, below = 0.0, 0.0
    for le, cum in buckets:
        if cum >= rank:
            if math.isinf(le):
                return lo
            return lo + (le - lo) * ((rank - below) / (cum - below) if cum > below else 1.0)
        lo, below = le, cum
    return lo


def parse_metrics(text: str) -> dict[str, Any]:
    """The batch-size histogram and the event-loop lag, from Prometheus text."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, Any] = {"batch_size": None, "loop_lag_p99_s": None, "loop_lag_max_s": None, "families": []}
    for fam in text_string_to_metric_families(text):
        out["families"].append(fam.name)
        samples = fam.samples
        if "batch_size" in fam.name and fam.type == "histogram":
            cum = sorted((float(s.labels["le"]), s.value) for s in samples if s.name.endswith("_bucket"))
            count = next((s.value for s in samples if s.name.endswith("_count")), 0.0)
            total = next((s.value for s in samples if s.name.endswith("_sum")), 0.0)
            per_bucket: dict[str, float] = {}
            prev = 0.0
            for le, c in cum:
                key = "+Inf" if math.isinf(le) else f"{le:g}"
                if c - prev > 0:
                    per_bucket[key] = c - prev
                prev = c
            out["batch_size"] = {
                "metric": fam.name,
                "batches": count,
                "mean": (total / count) if count else None,
                "p50": _hist_quantile(cum, 0.5),
                "p99": _hist_quantile(cum, 0.99),
                "histogram": per_bucket,
            }
        elif fam.name == "altyazi_event_loop_lag_seconds":
            if fam.type == "histogram":
                cum = sorted((float(s.labels["le"]), s.value) for s in samples if s.name.endswith("_bucket"))
                out["loop_lag_p99_s"] = _hist_quantile(cum, 0.99)
                out["loop_lag_hist"] = {("+Inf" if math.isinf(le) else f"{le:g}"): c for le, c in cum}
            elif fam.type == "summary":
                q = [s.value for s in samples if s.labels.get("quantile") == "0.99"]
                out["loop_lag_p99_s"] = q[0] if q else None
            elif samples:
                out["loop_lag_p99_s"] = samples[0].value  # a gauge: the last measured lag
        elif fam.name == "altyazi_event_loop_lag_max_seconds" and samples:
            out["loop_lag_max_s"] = max(s.value for s in samples)
        elif fam.name == "altyazi_event_loop_lag_p99_seconds" and samples:
            out["loop_lag_p99_last_minute_s"] = samples[0].value
    return out


def scrape_metrics(url: str) -> dict[str, Any] | None:
    try:
        r = httpx.get(f"{url}/metrics", timeout=10)
    except httpx.HTTPError:
        return None
    if r.status_code != 200:
        return None
    try:
        return parse_metrics(r.text)
    except Exception as exc:  # a malformed exposition is reported, not fatal to the run
        return {"error": f"could not parse /metrics: {exc}"}


# ---- one run ---------------------------------------------------------------------------


@dataclass
class RunConfig:
    users: int
    clips: list[Clip]
    arrival: str = "burst"  # or "steady"
    rate: float = 5.0  # users per second, steady
    batched: bool = True
    max_batch_size: int | None = None  # None: config.toml's
    timeout_s: float = 1800.0
    model: str = "tiny.en"
    env: dict[str, str] = field(default_factory=dict)


def pct(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no values."""
    if not values:
        return None
    xs = sorted(values)
    k = max(0, min(len(xs) - 1, math.ceil(q / 100 * len(xs)) - 1))
    return xs[k]


def stats(values: list[float]) -> dict[str, Any]:
    return {"n": len(values), "p50": pct(values, 50), "p95": pct(values, 95), "p99": pct(values, 99), "max": max(values) if values else None}


def server_env(cfg: RunConfig) -> dict[str, str]:
    env = {
        "ALTYAZI_STORAGE_MIN_FREE_MB": "1",
        # Room for every user: the load test measures the server, not its admission limits.
        "ALTYAZI_LIMITS_MAX_QUEUED_JOBS": str(max(1000, 2 * cfg.users)),
        "ALTYAZI_LIMITS_MAX_QUEUED_JOBS_PER_KEY": str(max(100, 2 * cfg.users)),
        # Keys are off (config.toml's default), so every simulated user is the one
        # anonymous owner and only the global limits apply; the per-key ones are
        # raised anyway so a run with keys on is not cut at 4 running jobs.
        "ALTYAZI_LIMITS_MAX_ACTIVE_JOBS_PER_KEY": str(max(4, 2 * cfg.users)),
        "ALTYAZI_SERVER_SHUTDOWN_TIMEOUT_S": "5",
    }
    if not cfg.batched:
        env["ALTYAZI_BATCHING_MAX_BATCH_SIZE"] = "1"
        # one window at a time has nothing to share between CPU replicas: one
        # model on every core is its best layout
        env["ALTYAZI_MODEL_CPU_REPLICAS"] = "1"
    elif cfg.max_batch_size is not None:
        env["ALTYAZI_BATCHING_MAX_BATCH_SIZE"] = str(cfg.max_batch_size)
    env.update(cfg.env)
    return env


async def _drive(url: str, cfg: RunConfig, results: list[UserResult], bodies: dict[Path, bytes]) -> tuple[float, list[float]]:
    limits = httpx.Limits(max_connections=2 * cfg.users + 10, max_keepalive_connections=2 * cfg.users + 10)
    timeout = httpx.Timeout(connect=30.0, read=120.0, write=60.0, pool=60.0)  # read > SSE heartbeat
    health: list[float] = []
    stop = asyncio.Event()
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout) as client:
        prober = asyncio.create_task(probe_health(url, stop, health), name="healthz-probe")
        t_run = time.perf_counter()
        tasks = [
            asyncio.create_task(run_user(client, r, bodies[cfg.clips[r.user].path], t_run), name=f"user-{r.user}")
            for r in results
        ]
        try:
            _done, pending = await asyncio.wait(tasks, timeout=cfg.timeout_s)
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            stop.set()
            await asyncio.gather(prober, return_exceptions=True)
        for t in tasks:
            if t.done() and not t.cancelled() and t.exception() is not None:
                r = results[int(t.get_name().split("-")[1])]
                r.error = r.error or f"{type(t.exception()).__name__}: {t.exception()}"
    return t_run, health


def run_once(cfg: RunConfig, *, log_dir: Path) -> dict[str, Any]:
    """Start a server, run the users, scrape, stop. The summary of the run as a dict."""
    mode = "batched" if cfg.batched else "one-at-a-time"
    bodies = {c.path: c.path.read_bytes() for c in cfg.clips}
    results = [
        UserResult(
            user=i, clip=str(c.path.name), audio_s=c.seconds, bucket=c.bucket,
            arrival_s=0.0 if cfg.arrival == "burst" else i / cfg.rate,
        )  # fmt: skip
        for i, c in enumerate(cfg.clips[: cfg.users])
    ]
    with tempfile.TemporaryDirectory(prefix="altyazi-load-") as tmp:
        log_path = log_dir / f"server-{cfg.users}-{mode}.log"
        server = ServerProcess(model=cfg.model, data_dir=Path(tmp) / "data", env=server_env(cfg), log_path=log_path)
        try:
            ready_s = server.wait_ready()
            model_rss_kb = server.rss_kb() or 0
            server.start_sampling()
            t_run, health = asyncio.run(_drive(server.url, cfg, results, bodies))
            t_end = time.perf_counter()
            metrics = scrape_metrics(server.url)
            peak_kb = max(server.peak_rss_kb, server.hwm_kb() or 0)
            if any(r.error and r.error.startswith("timeout") for r in results):
                print(f"   users timed out: the server's thread stacks go to {log_path}", file=sys.stderr)
                server.dump_stacks()
        finally:
            rc = server.stop()
    ends = [r.started + r.srt_s for r in results if r.srt_s is not None and r.error is None]
    wall = (max(ends) - t_run) if ends else (t_end - t_run)
    ok = [r for r in results if r.error is None]
    audio_done = sum(r.audio_s for r in ok)
    errors = [f"user {r.user} ({r.clip}): {r.error}" for r in results if r.error is not None]
    by_bucket = {
        b: stats([r.done_s for r in ok if r.bucket == b and r.done_s is not None])
        for b in BUCKETS
        if any(r.bucket == b for r in results)
    }
    return {
        "users": cfg.users,
        "mode": mode,
        "arrival": cfg.arrival,
        "rate": cfg.rate if cfg.arrival == "steady" else None,
        "env": server_env(cfg),
        "server_exit_status": rc,
        "ready_s": ready_s,
        "audio_s": sum(r.audio_s for r in results),
        "wall_s": wall,
        "throughput": audio_done / wall if wall > 0 else None,
        "upload_s": stats([r.upload_s for r in results if r.upload_s is not None]),
        "first_event_s": stats([r.first_event_s for r in results if r.first_event_s is not None]),
        "first_segment_s": stats([r.first_segment_s for r in results if r.first_segment_s is not None]),
        "done_s": stats([r.done_s for r in ok if r.done_s is not None]),
        "done_by_bucket_s": by_bucket,
        "healthz_s": stats(health),
        "model_rss_mb": model_rss_kb / 1024,
        "peak_rss_mb": peak_kb / 1024,
        "metrics": metrics,
        "errors": errors,
        "srt_ok": sum(1 for r in ok),
        "users_detail": [asdict(r) for r in results],
    }


# ---- report ------------------------------------------------------------------------------


def _f(x: float | None, unit: str = "", nd: int = 2) -> str:
    if x is None:
        return "n/a"
    return f"{x:.{nd}f}{unit}"


def _ms_(x: float | None) -> str:
    return "n/a" if x is None else f"{x * 1000:.0f}"


def format_tables(runs: list[dict[str, Any]]) -> str:
    lines: list[str] = []
    head = "| users | mode | upload p50/p95/p99/max (s) | first event p50/p99 (s) | first segment p50/p95 (s) | done p50/p95 (s) | audio-s per wall-s | errors |"
    lines += [head, "|" + "---|" * 8]
    for r in runs:
        u, fe, fs, d = r["upload_s"], r["first_event_s"], r["first_segment_s"], r["done_s"]
        lines.append(
            f"| {r['users']} | {r['mode']} | {_f(u['p50'])} / {_f(u['p95'])} / {_f(u['p99'])} / {_f(u['max'])} "
            f"| {_f(fe['p50'])} / {_f(fe['p99'])} | {_f(fs['p50'])} / {_f(fs['p95'])} | {_f(d['p50'], nd=1)} / {_f(d['p95'], nd=1)} "
            f"| {_f(r['throughput'], nd=1)} | {len(r['errors'])} |"
        )
    lines.append("")
    lines += ["| users | mode | done p50/p95 by clip length (s) |", "|---|---|---|"]
    for r in runs:
        parts = [f"{b} (n={s['n']}): {_f(s['p50'], nd=1)} / {_f(s['p95'], nd=1)}" for b, s in r["done_by_bucket_s"].items()]
        lines.append(f"| {r['users']} | {r['mode']} | {'; '.join(parts)} |")
    lines.append("")
    lines += [
        "| users | mode | batches, mean size | batch-size histogram | loop lag p99 / max (ms, /metrics) | /healthz p99 / max (ms) | RSS after ready / peak (MB) |",
        "|" + "---|" * 7,
    ]
    for r in runs:
        m = r["metrics"] or {}
        bs = m.get("batch_size")
        hist = ", ".join(f"≤{k}: {v:g}" for k, v in bs["histogram"].items()) if bs else "n/a"
        bsum = f"{bs['batches']:g}, {_f(bs['mean'])}" if bs else "n/a"
        h = r["healthz_s"]
        lag_p99, lag_max = m.get("loop_lag_p99_s"), m.get("loop_lag_max_s")
        if lag_p99 is not None and lag_max is not None:
            lag_p99 = min(lag_p99, lag_max)  # interpolation inside a bucket can overshoot the largest lag seen
        lines.append(
            f"| {r['users']} | {r['mode']} | {bsum} | {hist} | {_ms_(lag_p99)} / {_ms_(lag_max)} "
            f"| {_ms_(h['p99'])} / {_ms_(h['max'])} | {r['model_rss_mb']:.0f} / {r['peak_rss_mb']:.0f} |"
        )
    ratios = compare_ratios(runs)
    if ratios:
        lines.append("")
        lines += ["| users | throughput batched / one-at-a-time | done p50 one-at-a-time / batched | done p95 one-at-a-time / batched |", "|---|---|---|---|"]
        for users, rr in ratios.items():
            lines.append(f"| {users} | {_f(rr['throughput'])}x | {_f(rr['done_p50'])}x | {_f(rr['done_p95'])}x |")
    errs = [e for r in runs for e in r["errors"]]
    if errs:
        lines.append("")
        lines.append(f"errors ({len(errs)}):")
        lines += [f"  {e}" for e in errs[:30]]
    return "\n".join(lines)


def spread(runs: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Per user count: each mode's throughputs, median and range, and the ratio of medians."""
    import statistics

    out: dict[int, dict[str, Any]] = {}
    for users in sorted({r["users"] for r in runs}):
        row: dict[str, Any] = {}
        for mode in ("batched", "one-at-a-time"):
            xs = [r["throughput"] for r in runs if r["users"] == users and r["mode"] == mode and r["throughput"]]
            if xs:
                row[mode] = dict(runs=xs, median=statistics.median(xs), min=min(xs), max=max(xs))
        if "batched" in row and "one-at-a-time" in row:
            row["ratio_of_medians"] = row["batched"]["median"] / row["one-at-a-time"]["median"]
        out[users] = row
    return out


def format_spread(table: dict[int, dict[str, Any]]) -> list[str]:
    lines = []
    for users, row in table.items():
        parts = [f"{m} median {row[m]['median']:.1f} audio-s/s ({row[m]['min']:.1f}-{row[m]['max']:.1f}, {len(row[m]['runs'])} runs)"
                 for m in ("batched", "one-at-a-time") if m in row]  # fmt: skip
        ratio = f"; batched/one {row['ratio_of_medians']:.2f}" if "ratio_of_medians" in row else ""
        lines.append(f"{users} users: " + "; ".join(parts) + ratio)
    return lines


def compare_ratios(runs: list[dict[str, Any]]) -> dict[int, dict[str, float | None]]:
    out: dict[int, dict[str, float | None]] = {}
    for b in runs:
        if b["mode"] != "batched":
            continue
        one = next((r for r in runs if r["mode"] == "one-at-a-time" and r["users"] == b["users"]), None)
        if one is None:
            continue

        def ratio(x: float | None, y: float | None) -> float | None:
            return x / y if x and y else None

        out[b["users"]] = {
            "throughput": ratio(b["throughput"], one["throughput"]),
            "done_p50": ratio(one["done_s"]["p50"], b["done_s"]["p50"]),
            "done_p95": ratio(one["done_s"]["p95"], b["done_s"]["p95"]),
        }
    return out


def plot(runs: list[dict[str, Any]], dest: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install '.[bench]'); no plot", file=sys.stderr)
        return False
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for mode, style in (("batched", "-"), ("one-at-a-time", "--")):
        rs = sorted((r for r in runs if r["mode"] == mode), key=lambda r: r["users"])
        if not rs:
            continue
        xs = [r["users"] for r in rs]
        series = (
            ("upload_s", "p99", "upload p99", "tab:blue"),
            ("first_segment_s", "p50", "first segment p50", "tab:orange"),
            ("done_s", "p50", "done p50", "tab:green"),
            ("done_s", "p95", "done p95", "tab:red"),
        )
        for key, q, label, colour in series:
            ax1.plot(xs, [r[key][q] for r in rs], style, color=colour, marker="o", label=f"{label} ({mode})")
        ax2.plot(xs, [r["throughput"] for r in rs], style, color="tab:purple", marker="o", label=mode)
    ax1.axhline(1.0, color="grey", linestyle=":", linewidth=1, label="upload p99 target (1 s)")
    ax1.set(xlabel="users at once", ylabel="seconds from upload start", title="latency", yscale="log")
    ax1.legend(fontsize=7)
    ax1.grid(alpha=0.3)
    ax2.set(xlabel="users at once", ylabel="audio-seconds per wall-second", title="throughput")
    ax2.set_ylim(bottom=0)
    ax2.legend(fontsize=8)
    ax2.grid(alpha=0.3)
    fig.suptitle("altyazi load test (tiny.en, CPU)", fontsize=10)
    fig.tight_layout()
    dest.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(dest, dpi=110)
    plt.close(fig)
    return True


# ---- command line ------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/load.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", default="100", help="users at once; a comma list runs a sweep (default 100)")
    p.add_argument("--arrival", choices=("burst", "steady"), default="burst", help="all at once, or --rate users per second")
    p.add_argument("--rate", type=float, default=5.0, help="users per second with --arrival steady (default 5)")
    p.add_argument("--compare", action=argparse.BooleanOptionalAction, default=True,
                   help="also run each count with ALTYAZI_BATCHING_MAX_BATCH_SIZE=1 (default on)")  # fmt: skip
    p.add_argument("--one-first", action="store_true",
                   help="with --compare, run one-at-a-time before batched (to see how much the order, i.e. drifting machine load, matters)")  # fmt: skip
    p.add_argument("--max-batch-size", type=int, default=None, help="batched runs' max_batch_size (default: config.toml's)")
    p.add_argument("--model", default="tiny.en")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds a run's users may take in all (default 1800)")
    p.add_argument("--lengths", default=",".join(str(x) for x in SHORT_LENGTHS + LONG_LENGTHS),
                   help="clip lengths in seconds; users take the <=60 s ones in turn and every 33rd a longer one")  # fmt: skip
    p.add_argument("--long", action="store_true", help="memory bound: every user uploads one --long-seconds clip")
    p.add_argument("--long-seconds", type=float, default=600.0)
    p.add_argument("--long-speech-every", type=float, default=8.5,
                   help="8 s of speech every N s in the long clip (default 8.5: dense speech)")
    p.add_argument("--rss-budget-mb", type=float, default=1536.0,
                   help="--long fails when peak RSS exceeds the loaded model's RSS by more than this")
    p.add_argument("--repeat", type=int, default=1, help="batched and one-at-a-time alternately, this many runs each")
    p.add_argument("--cache", type=Path, default=OUT / "clips", help="clip cache folder (built once, reused)")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--merge", type=Path, action="append", default=[], metavar="JSON",
                   help="add the runs of an earlier report (same arrival) to the tables, the JSON and the plot")  # fmt: skip
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="extra server environment, e.g. ALTYAZI_BATCHING_MAX_WAIT_MS=20")
    return p.parse_args(argv)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    counts = [int(x) for x in str(args.users).split(",") if x.strip()]
    if not counts or min(counts) < 1:
        print("--users needs positive counts", file=sys.stderr)
        return 2
    extra_env = dict(kv.split("=", 1) for kv in args.env)
    args.out.mkdir(parents=True, exist_ok=True)
    # SIGTERM ends the script like Ctrl-C does, so every `finally` (server stop) runs.
    signal.signal(signal.SIGTERM, _interrupt)

    t0 = time.monotonic()
    if args.long:
        clip = build_long_clip(args.cache, args.long_seconds, speech_every_s=args.long_speech_every)
        clips_all = [clip] * max(counts)
        name = "long"
    else:
        lengths = tuple(float(x) for x in args.lengths.split(",") if x.strip())
        clips_all = assign(max(counts), build_clips(args.cache, lengths))
        name = args.arrival
    print(f"clips ready in {time.monotonic() - t0:.1f} s ({args.cache})", flush=True)

    runs: list[dict[str, Any]] = []
    modes = ([False, True] if args.one_first else [True, False]) if args.compare else [True]
    over_budget: list[str] = []
    try:
        for users in counts:
            for batched in modes * max(1, args.repeat):
                cfg = RunConfig(
                    users=users, clips=clips_all[:users], arrival=args.arrival, rate=args.rate, batched=batched,
                    max_batch_size=args.max_batch_size, timeout_s=args.timeout, model=args.model, env=extra_env,
                )  # fmt: skip
                label = "batched" if batched else "one-at-a-time"
                audio = sum(c.seconds for c in cfg.clips)
                print(f"-- {users} users, {label}, {args.arrival}, {audio:.0f} s of audio ...", flush=True)
                run = run_once(cfg, log_dir=args.out)
                runs.append(run)
                print(
                    f"   wall {run['wall_s']:.1f} s, {_f(run['throughput'], nd=1)} audio-s/s, upload p99 {_f(run['upload_s']['p99'])} s, "
                    f"errors {len(run['errors'])}, peak RSS {run['peak_rss_mb']:.0f} MB "
                    f"(model loaded: {run['model_rss_mb']:.0f} MB)",
                    flush=True,
                )
                if args.long and run["peak_rss_mb"] - run["model_rss_mb"] > args.rss_budget_mb:
                    over_budget.append(
                        f"{users} users, {label}: peak RSS {run['peak_rss_mb']:.0f} MB is more than "
                        f"{args.rss_budget_mb:.0f} MB over the loaded model's {run['model_rss_mb']:.0f} MB"
                    )
    except KeyboardInterrupt:
        print("interrupted; the server was stopped", file=sys.stderr)
        if not runs:
            return 130
    finally:
        new = {(r["users"], r["mode"]) for r in runs}
        for path in args.merge:
            earlier = json.loads(path.read_text())["runs"]
            runs += [r for r in earlier if (r["users"], r["mode"]) not in new]
        runs.sort(key=lambda r: (r["users"], r["mode"] != "batched"))
        for r in runs:  # reports written before the quantile was interpolated: recompute from the stored buckets
            hist = (r.get("metrics") or {}).get("loop_lag_hist")
            if hist:
                r["metrics"]["loop_lag_p99_s"] = _hist_quantile(sorted((float(k), v) for k, v in hist.items()), 0.99)
        if runs:
            report = {
                "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
                "cpu_count": os.cpu_count(),
                "load_avg_at_end": os.getloadavg(),
                "ratios": compare_ratios(runs),
                "runs": runs,
            }
            if args.repeat > 1:
                report["spread"] = spread(runs)
            if args.long:
                report["rss_budget_mb"] = args.rss_budget_mb
                report["over_budget"] = over_budget
            dest = args.out / f"load-{name}.json"
            dest.write_text(json.dumps(report, indent=1, default=str))
            print()
            print(format_tables(runs))
            for line in format_spread(report.get("spread", {})):
                print(line)
            for line in over_budget:
                print(f"MEMORY BOUND MISSED: {line}")
            print(f"\nwrote {dest}")
            if len({r["users"] for r in runs}) > 1 and not args.long and plot(runs, args.out / "load.png"):
                print(f"wrote {args.out / 'load.png'}")
    return 1 if any(r["errors"] for r in runs) or over_budget else 0


if __name__ == "__main__":
    sys.exit(main())
