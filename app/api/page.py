"""The web page at ``/`` and its static files, served with strict security headers.

The page is plain HTML, CSS and JavaScript from ``app/api/static`` (no build step,
nothing from a CDN). It talks to the v1 API with ``fetch`` only, so the policy
can forbid inline script and every origin but our own. ``blob:`` is allowed for
media alone: the player plays the user's local file and the subtitle track
fetched with the API key, neither of which a plain URL could carry.
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Message, Receive, Scope, Send

STATIC_DIR = Path(__file__).resolve().parent / "static"

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "media-src 'self' blob:",
        "connect-src 'self'",
        "form-action 'none'",
        "base-uri 'none'",
        "frame-ancestors 'none'",
    ]
)

SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # frame-ancestors covers current browsers; X-Frame-Options the older ones.
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    # Revalidate each time (ETag makes that cheap), so an upgrade is seen at once.
    "Cache-Control": "no-cache",
}


async def index(request: Request) -> Response:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html; charset=utf-8", headers=SECURITY_HEADERS)


class SecuredStatic:
    """StaticFiles (ETag, 304, HEAD, content types) with the security headers added to every answer."""

    def __init__(self, directory: Path) -> None:
        self._files = StaticFiles(directory=directory)
        self._headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in SECURITY_HEADERS.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {k for k, _ in self._headers}
                kept = [(k, v) for k, v in message.get("headers", []) if k.lower() not in names]
                message = {**message, "headers": kept + self._headers}
            await send(message)

        await self._files(scope, receive, send_with_headers)


routes = [
    Route("/", index, methods=["GET", "HEAD"]),
    Mount("/static", app=SecuredStatic(STATIC_DIR), name="static"),
]
