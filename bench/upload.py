"""The door, measured: how fast the server takes uploads in, and whether the loop stalls meanwhile.

    .venv/bin/python bench/upload.py                       # 1 MB .. 1 GB, raw and multipart, then 100 users at once
    .venv/bin/python bench/upload.py --sizes 1,100 --users 0

A real server (``python -m app serve``, tiny.en) on loopback. Uploads are WAV
files of noise (valid media, so they are probed and accepted like a user's;
Silero finds no speech in them, so the jobs end quickly). The client sends
with ``socket.sendfile`` (the kernel copies the file; the client costs next to
nothing on this 2-core machine), as a raw body (``POST /v1/jobs?filename=``) and
as ``multipart/form-data``.

For each size and body kind:

  ingest MB/s   upload bytes per second of the server's own CPU (utime + stime
                of its process while the body streams): what one core takes in
  wall MB/s     upload bytes per second of wall time, first byte to the answer
  loop lag      /healthz answered every 20 ms from another thread during the
                upload: p99 and worst answer time

Against limits on the same machine: ``cat FILE > /dev/null`` (page cache
read), a plain socket server reading the same bytes into a buffer
(``recv_into``; the least any server must spend), and the same server also
writing them to a file and fsyncing it (what an upload has to do).

``--users N`` then uploads N files at once (sizes spread log-uniformly from 1
to 100 MB, one connection each): the answer time of the uploads of 5 MB or
less (p99, target < 1 s) and the /healthz lag meanwhile (p99, target < 50 ms).
Writes bench/out/upload.json.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.longmedia import Server  # noqa: E402

MB = 1_000_000
BOUNDARY = "altyazibenchboundary7MA4YWxkTrZu0gW"
LIMIT_ENV = {
    "ALTYAZI_STORAGE_MAX_UPLOAD_MB": "4096",
    "ALTYAZI_STORAGE_MAX_DURATION_S": "100000",
    "ALTYAZI_LIMITS_MAX_ACTIVE_JOBS_PER_KEY": "1000",
    "ALTYAZI_LIMITS_MAX_QUEUED_JOBS_PER_KEY": "1000",
    "ALTYAZI_LIMITS_MAX_RUNNING_JOBS": "1",  # accepted jobs wait: the bench measures the door
    "ALTYAZI_AUTH_RATE_LIMIT_PER_MINUTE": "0",
    "ALTYAZI_SERVER_TIMEOUT_BODY_S": "120",
}


def noise_wav(path: Path, size: int) -> Path:
    """A WAV of ``size`` bytes: 48 kHz stereo 16-bit noise (about 5.5 min per 100 MB)."""
    data = size - 44
    header = b"RIFF" + struct.pack("<I", 36 + data) + b"WAVEfmt " + struct.pack(
        "<IHHIIHH", 16, 1, 2, 48000, 48000 * 4, 4, 16
    ) + b"data" + struct.pack("<I", data)
    # quiet noise (about -45 dBFS), 1 MB of it repeated: valid audio with no speech
    chunk = (np.random.default_rng(0).normal(0, 200, 1 << 19).astype("<i2")).tobytes()
    with path.open("wb") as f:
        f.write(header)
        left = data
        while left:
            n = min(left, len(chunk))
            f.write(chunk[:n])
            left -= n
    return path


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def read_answer(sock: socket.socket) -> tuple[int, bytes]:
    buf = b""
    while b"\r\n\r\n" not in buf:
        part = sock.recv(65536)
        if not part:
            break
        buf += part
    head, _, body = buf.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else 0
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")), 0)
    while len(body) < length:
        part = sock.recv(65536)
        if not part:
            break
        body += part
    return status, body


def upload(port: int, path: Path, kind: str) -> tuple[int, float, float]:
    """Send ``path``; answer (status, seconds to the answer, seconds after the last byte)."""
    size = path.stat().st_size
    if kind == "raw":
        prefix, suffix = b"", b""
        head = f"POST /v1/jobs?filename={path.name} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
    else:
        prefix = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"vad\"\r\n\r\ntrue\r\n"
                  f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{path.name}\"\r\n"
                  "Content-Type: audio/wav\r\n\r\n").encode()  # fmt: skip
        suffix = f"\r\n--{BOUNDARY}--\r\n".encode()
        head = f"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
    head += f"Content-Length: {len(prefix) + size + len(suffix)}\r\nConnection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port)) as sock, path.open("rb") as f:
        t0 = time.perf_counter()
        sock.sendall(head.encode() + prefix)
        sock.sendfile(f)
        sock.sendall(suffix)
        sent = time.perf_counter()
        status, _ = read_answer(sock)
        done = time.perf_counter()
    return status, done - t0, done - sent


class LagProbe:
    """GET /healthz every ``every_s`` on one keep-alive connection; answer times."""

    def __init__(self, port: int, every_s: float = 0.02) -> None:
        self.port, self.every_s = port, every_s
        self.times: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> LagProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        sock = socket.create_connection(("127.0.0.1", self.port))
        try:
            while not self._stop.is_set():
                t0 = time.perf_counter()
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                status, _ = read_answer(sock)
                if status == 0:
                    sock.close()
                    sock = socket.create_connection(("127.0.0.1", self.port))
                    continue
                self.times.append(time.perf_counter() - t0)
                self._stop.wait(self.every_s)
        finally:
            sock.close()

    def summary(self) -> dict:
        t = sorted(self.times) or [0.0]
        return dict(probes=len(self.times), p99_ms=1000 * t[min(len(t) - 1, int(0.99 * len(t)))], max_ms=1000 * t[-1])


def cat_limit(path: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run(["cat", str(path)], stdout=subprocess.DEVNULL, check=True)
    return path.stat().st_size / MB / (time.perf_counter() - t0)


SOCKET_SINK = r"""
import os, socket, sys
dest = sys.argv[1] if len(sys.argv) > 1 else None
fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600) if dest else None
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1)
print(srv.getsockname()[1], flush=True)
conn, _ = srv.accept(); buf = bytearray(4 << 20); view = memoryview(buf); n = 0
while True:
    got = conn.recv_into(view)
    if not got: break
    n += got
    if fd is not None:
        os.write(fd, view[:got])
if fd is not None:
    os.fsync(fd); os.close(fd); os.unlink(dest)
t = os.times(); print(n, t.user + t.system, flush=True)
"""


def socket_limit(path: Path, to_disk: Path | None = None) -> float:
    """Bytes per CPU second of a process that only reads the socket (and, with
    ``to_disk``, writes what it read to a file and fsyncs it, as an upload must)."""
    argv = [sys.executable, "-c", SOCKET_SINK] + ([str(to_disk)] if to_disk else [])
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    with socket.create_connection(("127.0.0.1", port)) as sock, path.open("rb") as f:
        sock.sendfile(f)
    n, cpu = proc.stdout.readline().split()
    proc.wait()
    return int(n) / MB / max(float(cpu), 1e-3)


def one_size(server: Server, path: Path, kind: str) -> dict:
    pid = server.proc.pid
    with LagProbe(server.port) as probe:
        time.sleep(0.1)
        c0 = cpu_seconds(pid)
        status, wall, after = upload(server.port, path, kind)
        cpu = cpu_seconds(pid) - c0
    size_mb = path.stat().st_size / MB
    return dict(kind=kind, size_mb=size_mb, status=status, wall_s=wall, answer_after_last_byte_s=after,
                server_cpu_s=cpu, ingest_mb_per_cpu_s=size_mb / max(cpu, 1e-3), wall_mb_s=size_mb / wall,
                lag=probe.summary())  # fmt: skip


def loop_lag_buckets(port: int) -> list[tuple[float, float]]:
    """The server's own event-loop lag histogram (cumulative buckets) from /metrics."""
    import math

    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    for fam in text_string_to_metric_families(text):
        if fam.name == "altyazi_event_loop_lag_seconds":
            return sorted((math.inf if s.labels["le"] == "+Inf" else float(s.labels["le"]), s.value)
                          for s in fam.samples if s.name.endswith("_bucket"))  # fmt: skip
    return []


def lag_p99_between(before: list[tuple[float, float]], after: list[tuple[float, float]]) -> float | None:
    """p99 (s) of the loop-lag samples taken between two scrapes."""
    from bench.load import _hist_quantile

    start = dict(before)
    return _hist_quantile([(le, cum - start.get(le, 0.0)) for le, cum in after], 0.99)


def many_users(server: Server, files: list[Path]) -> dict:
    results: list[tuple[float, int, float]] = []
    afters: list[tuple[float, float]] = []  # (MB, seconds from the last byte sent to the answer)
    lock = threading.Lock()

    def one(path: Path) -> None:
        status, wall, after = upload(server.port, path, "multipart")
        with lock:
            results.append((path.stat().st_size / MB, status, wall))
            afters.append((path.stat().st_size / MB, after))

    threads = [threading.Thread(target=one, args=(p,)) for p in files]
    lag_before = loop_lag_buckets(server.port)
    with LagProbe(server.port) as probe:
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
    server_lag_p99 = lag_p99_between(lag_before, loop_lag_buckets(server.port))
    small = sorted(w for size, _, w in results if size <= 5)
    statuses: dict[int, int] = {}
    for _, s, _ in results:
        statuses[s] = statuses.get(s, 0) + 1
    p99 = small[min(len(small) - 1, int(0.99 * len(small)))] if small else None
    # where a small upload's time goes: sending its body, or after it (probe, job row)
    small_after = sorted(a for size, a in afters if size <= 5)
    after_p99 = small_after[min(len(small_after) - 1, int(0.99 * len(small_after)))] if small_after else None
    return dict(users=len(files), total_mb=sum(r[0] for r in results), wall_s=wall, statuses=statuses,
                small_files=len(small), small_p99_s=p99, small_after_body_p99_s=after_p99, small_median_s=statistics.median(small) if small else None,
                lag=probe.summary(), server_loop_lag_p99_ms=None if server_lag_p99 is None else 1000 * server_lag_p99)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1,10,100,1000", help="MB, comma-separated")
    ap.add_argument("--users", type=int, default=100, help="uploads at once in the crowd run (0: skip it)")
    ap.add_argument("--model", default="tiny.en")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "upload.json"))
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",") if x]
    report: dict = dict(load_average=os.getloadavg(), runs=[])
    with tempfile.TemporaryDirectory(prefix="altyazi-upload-") as tmp:
        work = Path(tmp)
        server = Server(ROOT, model=args.model, data_dir=work / "data", log_path=work / "server.log", env=LIMIT_ENV)
        try:
            server.wait_ready()
            print(f"{'size':>7} {'kind':>9} {'status':>6} | {'ingest MB/cpu-s':>15} {'wall MB/s':>9} | "
                  f"{'lag p99 ms':>10} {'lag max ms':>10} | limits: cat MB/s, socket MB/cpu-s, socket+disk MB/cpu-s", flush=True)  # fmt: skip
            for size in sizes:
                path = noise_wav(work / f"noise{size}.wav", size * MB)
                cat = cat_limit(path)
                sock = socket_limit(path)
                disk = socket_limit(path, work / "sink.bin")
                for kind in ("raw", "multipart"):
                    row = one_size(server, path, kind)
                    row.update(cat_mb_s=cat, socket_mb_per_cpu_s=sock, socket_to_disk_mb_per_cpu_s=disk)
                    report["runs"].append(row)
                    print(f"{size:>5}MB {kind:>9} {row['status']:>6} | {row['ingest_mb_per_cpu_s']:15.0f} "
                          f"{row['wall_mb_s']:9.0f} | {row['lag']['p99_ms']:10.1f} {row['lag']['max_ms']:10.1f} | "
                          f"{cat:.0f}, {sock:.0f}, {disk:.0f}", flush=True)  # fmt: skip
                path.unlink()
            if args.users:
                # log-uniform sizes from 1 to 100 MB, so a third are 5 MB or less
                files = []
                for i in range(args.users):
                    size = int(MB * 10 ** (2 * i / max(1, args.users - 1)))
                    files.append(noise_wav(work / f"user{i}.wav", size))
                crowd = many_users(server, files)
                report["crowd"] = crowd
                print(f"{crowd['users']} users, {crowd['total_mb']:.0f} MB in {crowd['wall_s']:.1f} s; "
                      f"statuses {crowd['statuses']}; files <= 5 MB: answer p99 {crowd['small_p99_s']:.2f} s "
                      f"(median {crowd['small_median_s']:.2f}; after the last byte p99 {crowd['small_after_body_p99_s']:.2f}); /healthz p99 {crowd['lag']['p99_ms']:.1f} ms, "
                      f"worst {crowd['lag']['max_ms']:.1f} ms; the server's own loop lag p99 "
                      f"{crowd['server_loop_lag_p99_ms'] or float('nan'):.1f} ms", flush=True)  # fmt: skip
        finally:
            server.stop()
    report["load_average_after"] = os.getloadavg()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
