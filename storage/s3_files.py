"""A job's files on S3-compatible object storage, staged on local scratch while a node works on them.

The paths of storage.seams.FileStore stay local (ffmpeg reads and writes
them): they are the node's scratch copy, laid out as storage.files.JobFiles
lays out the single box's folders. What must outlive the node goes to the
bucket under ``<prefix>/<job_id>/<name>``: ``push`` uploads a finished file
(multipart in 8 MiB parts, read from disk part by part, never whole in
memory), ``pull`` brings one into scratch when this node lacks it (a job
claimed from another node's upload, a transcript asked of another node), and
``remove`` deletes both. Endpoint and credentials come from the environment
(``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``), as every AWS tool reads them.
A storage service that cannot be reached is StoreUnavailable.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError

from storage.claims import StoreUnavailable
from storage.files import JobFiles, _check_id, _fsync_dir

log = logging.getLogger("altyazi.files")

PART_BYTES = 8 << 20  # S3 wants parts of 5 MiB at least (but the last)
_MISSING = {"404", "NoSuchKey", "NotFound"}


def parse_s3_url(url: str) -> tuple[str, str]:
    """"s3://bucket/some/prefix" → ("bucket", "some/prefix")."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise ValueError(f"not an s3://bucket/prefix URL: {url!r}")
    return parts.netloc, parts.path.strip("/")


def _unavailable(exc: BaseException) -> bool:
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        return status >= 500 or code in {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout"}
    return isinstance(exc, BotoCoreError | OSError | asyncio.TimeoutError) or type(exc).__module__.startswith("aiohttp")


class S3Files(JobFiles):
    """storage.seams.FileStore on a bucket, with the node's scratch copy under ``scratch_dir``."""

    def __init__(self, scratch_dir: Path, url: str, *, endpoint_url: str | None = None) -> None:
        super().__init__(scratch_dir)
        self.bucket, self.prefix = parse_s3_url(url)
        self.endpoint_url = endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None
        # One client per event loop (the server's, and a worker thread's in remove()).
        self._clients: dict[asyncio.AbstractEventLoop, tuple[AsyncExitStack, Any]] = {}

    # ------------------------------------------------------------ keys

    def key(self, job_id: str, path: Path) -> str:
        """The object key of one of the job's scratch paths."""
        rel = Path(path).relative_to(self.job_dir(job_id)).as_posix()
        return "/".join(p for p in (self.prefix, _check_id("job", job_id), rel) if p)

    def _job_prefix(self, job_id: str) -> str:
        return "/".join(p for p in (self.prefix, _check_id("job", job_id)) if p) + "/"

    # ------------------------------------------------------------ the client

    def _new_client(self) -> Any:
        config = AioConfig(connect_timeout=3, read_timeout=30, retries={"max_attempts": 2, "mode": "standard"})
        return get_session().create_client("s3", endpoint_url=self.endpoint_url, config=config)

    async def _s3(self) -> Any:
        """The running loop's client, made on first use and kept until aclose()."""
        loop = asyncio.get_running_loop()
        if loop not in self._clients:
            stack = AsyncExitStack()
            self._clients[loop] = (stack, await stack.enter_async_context(self._new_client()))
        return self._clients[loop][1]

    async def aclose(self) -> None:
        """Close the running loop's client."""
        entry = self._clients.pop(asyncio.get_running_loop(), None)
        if entry is not None:
            await entry[0].aclose()

    async def _call(self, op: str, **kw: Any) -> Any:
        try:
            return await getattr(await self._s3(), op)(**kw)
        except Exception as exc:
            if _unavailable(exc):
                raise StoreUnavailable("object storage", f"{op}: {exc}") from exc
            raise

    # ------------------------------------------------------------ transfers

    async def push(self, job_id: str, path: Path) -> None:
        """Make the scratch file durable in the bucket; returns once the object is stored."""
        key = self.key(job_id, path)
        size = await asyncio.to_thread(os.path.getsize, path)
        if size <= PART_BYTES:
            data = await asyncio.to_thread(path.read_bytes)
            await self._call("put_object", Bucket=self.bucket, Key=key, Body=data)
            return
        upload = await self._call("create_multipart_upload", Bucket=self.bucket, Key=key)
        upload_id = upload["UploadId"]
        parts = []
        try:
            f = await asyncio.to_thread(open, path, "rb")
            with f:
                number = 1
                while chunk := await asyncio.to_thread(f.read, PART_BYTES):
                    done = await self._call("upload_part", Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=chunk)
                    parts.append({"ETag": done["ETag"], "PartNumber": number})
                    number += 1
            await self._call("complete_multipart_upload", Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts})
        except BaseException:
            try:
                await self._call("abort_multipart_upload", Bucket=self.bucket, Key=key, UploadId=upload_id)
            except Exception:
                pass  # the bucket's lifecycle rule cleans up what this could not
            raise

    async def pull(self, job_id: str, path: Path) -> bool:
        """Make sure the scratch file exists, fetching it from the bucket; False when neither has it."""
        if await asyncio.to_thread(path.exists):
            return True
        try:
            obj = await self._call("get_object", Bucket=self.bucket, Key=self.key(job_id, path))
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code", "")) in _MISSING:
                return False
            raise
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                async with obj["Body"] as body:
                    while chunk := await body.read(1 << 20):
                        await asyncio.to_thread(f.write, chunk)
            os.replace(tmp, path)
        except BaseException as exc:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            if isinstance(exc, Exception) and _unavailable(exc):
                raise StoreUnavailable("object storage", f"get_object: {exc}") from exc
            raise
        _fsync_dir(path.parent)
        return True

    async def pull_input(self, job_id: str) -> Path | None:
        """The job's upload in scratch, fetched from the bucket if need be; None when there is none."""
        found = self.find_input(job_id)
        if found is not None:
            return found
        listing = await self._call("list_objects_v2", Bucket=self.bucket, Prefix=self._job_prefix(job_id) + "input")
        for obj in listing.get("Contents", []):
            name = obj["Key"].rsplit("/", 1)[-1]
            self.create(job_id)
            path: Path = self.job_dir(job_id) / name
            if path == self.input_path(job_id, Path(name).suffix) and await self.pull(job_id, path):
                return path
        return None

    async def remote_size(self, job_id: str, path: Path) -> int | None:
        """The stored object's size when this node has no copy (a download then streams from the bucket)."""
        if await asyncio.to_thread(path.exists):
            return None
        try:
            head = await self._call("head_object", Bucket=self.bucket, Key=self.key(job_id, path))
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code", "")) in _MISSING:
                return None
            raise
        return int(head["ContentLength"])

    async def read_stream(self, job_id: str, path: Path, first: int, last: int) -> AsyncIterator[bytes]:
        """Bytes ``first``..``last`` (inclusive) of the stored object, read with an HTTP Range, in pieces."""
        obj = await self._call("get_object", Bucket=self.bucket, Key=self.key(job_id, path), Range=f"bytes={first}-{last}")
        async with obj["Body"] as body:
            while chunk := await body.read(1 << 16):
                yield bytes(chunk)

    async def delete_objects(self, job_id: str) -> None:
        prefix = self._job_prefix(job_id)
        while True:
            listing = await self._call("list_objects_v2", Bucket=self.bucket, Prefix=prefix)
            keys = [{"Key": o["Key"]} for o in listing.get("Contents", [])]
            if not keys:
                return
            await self._call("delete_objects", Bucket=self.bucket, Delete={"Objects": keys, "Quiet": True})

    def remove(self, job_id: str) -> None:
        """Delete the scratch folder and the job's objects (blocking: callers run it in a worker thread)."""
        super().remove(job_id)
        try:
            asyncio.run(self._remove_objects(job_id))
        except StoreUnavailable as exc:
            # Left for the bucket's lifecycle rule (README, "Cluster"); the row is gone either way.
            log.warning("job %s: objects not deleted: %s", job_id, exc)

    async def _remove_objects(self, job_id: str) -> None:
        try:
            await self.delete_objects(job_id)
        finally:
            await self.aclose()
