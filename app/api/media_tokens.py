"""Short-lived signed addresses for a job's media, for players that cannot send a key.

A ``<video src>`` sends no ``Authorization`` header, so the page asks (with the
key) for ``GET /v1/jobs/{id}/media/link`` and gets
``/v1/jobs/{id}/media?token=<expires>.<signature>``. The signature is an
HMAC-SHA256 over the job id, the job's owner and the expiry, under a secret the
server keeps in ``<data_dir>/media-token.key`` (0600, made at the first start).
So a token opens that one job's media and nothing else, only while its owner
still owns it, and only until it expires (``TOKEN_TTL_S``). It carries no key
and no owner id; the access log never writes query strings, and the page's
``Referrer-Policy: no-referrer`` keeps it out of Referer headers.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import time
from pathlib import Path

TOKEN_TTL_S = 6 * 3600  # a long film watched with pauses; the page asks again on an error
SECRET_BYTES = 32


class MediaTokens:
    def __init__(self, secret: bytes, *, ttl_s: float = TOKEN_TTL_S) -> None:
        if len(secret) < 16:
            raise ValueError("the media token secret must be at least 16 bytes")
        self._secret = secret
        self.ttl_s = ttl_s

    @classmethod
    def ephemeral(cls) -> MediaTokens:
        """A secret for this process only (tests; tokens die with the process)."""
        return cls(secrets.token_bytes(SECRET_BYTES))

    @classmethod
    def load(cls, path: Path) -> MediaTokens:
        """The server's secret from ``path``, made there (mode 0600) the first time."""
        try:
            secret = path.read_bytes()
        except FileNotFoundError:
            secret = secrets.token_bytes(SECRET_BYTES)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, secret)
            finally:
                os.close(fd)
        if len(secret) < 16:
            raise ValueError(f"{path} is too short to be a media token secret; delete it and restart")
        return cls(secret)

    def _sign(self, job_id: str, owner: str, expires: int) -> str:
        msg = f"media\0{job_id}\0{owner}\0{expires}".encode()
        digest = hmac.new(self._secret, msg, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")

    def issue(self, job_id: str, owner: str, *, now: float | None = None) -> tuple[str, int]:
        """A token for this job and owner, and when it expires (Unix seconds)."""
        expires = int((time.time() if now is None else now) + self.ttl_s)
        return f"{expires}.{self._sign(job_id, owner, expires)}", expires

    def check(self, token: str, job_id: str, owner: str, *, now: float | None = None) -> bool:
        """True when ``token`` was issued for this job and owner and has not expired."""
        stamp, dot, sig = token.partition(".")
        if not dot or not stamp.isdigit() or len(stamp) > 12 or len(sig) > 64:
            return False
        expires = int(stamp)
        if expires < (time.time() if now is None else now):
            return False
        return hmac.compare_digest(sig, self._sign(job_id, owner, expires))
