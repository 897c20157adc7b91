"""systemd's notify protocol (sd_notify(3)) in a few lines of socket code.

Under ``Type=notify`` systemd passes ``$NOTIFY_SOCKET``: a unix datagram socket,
a path or, with a leading ``@``, a name in the abstract namespace. Each message
is newline-separated ``KEY=VALUE`` lines (``READY=1``, ``STOPPING=1``,
``STATUS=...``). Outside systemd the variable is unset and every call is a
no-op, so the server runs the same from a shell.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger("altyazi.sdnotify")


def socket_address(value: str | None) -> str | bytes | None:
    """The address ``$NOTIFY_SOCKET`` names, or None when it is unset or unusable."""
    if not value:
        return None
    if value.startswith("@"):
        return b"\0" + value[1:].encode()  # abstract namespace
    if value.startswith("/"):
        return value
    # vsock addresses (vsock:CID:PORT) are for VMs; not supported here.
    return None


def notify(*fields: str, environ: dict[str, str] | None = None) -> bool:
    """Send ``fields`` (e.g. ``"READY=1"``) to systemd; True when a message went out.

    Never raises: a lost notification must not stop the server (systemd then
    times the start out and says so in the journal, which is the right place).
    """
    env = os.environ if environ is None else environ
    address = socket_address(env.get("NOTIFY_SOCKET"))
    if address is None or not fields:
        return False
    message = "\n".join(fields).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message)
    except OSError as exc:
        log.warning("could not notify systemd at %s: %s", env.get("NOTIFY_SOCKET"), exc)
        return False
    return True


def ready(status: str | None = None) -> bool:
    return notify("READY=1", *([f"STATUS={status}"] if status else []))


def stopping(status: str | None = None) -> bool:
    return notify("STOPPING=1", *([f"STATUS={status}"] if status else []))


def status(text: str) -> bool:
    return notify(f"STATUS={text}")
