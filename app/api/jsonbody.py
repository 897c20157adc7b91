"""JSON request bodies: bounded in size, parsed off the event loop, refused when hostile.

``json.loads`` accepts what the rest of the server cannot handle, and each
was a 500: nesting deep enough to overflow the recursion limit, integers of
hundreds of digits (overflowing float conversions later), ``NaN`` and
``Infinity``, and ``\\ud800`` escapes that make lone surrogates, which no
UTF-8 file can hold. Here they are a 400 ``invalid_json`` naming the problem.
Parsing a transcript of several MB takes most of a second, so it runs in a
worker thread, never on the loop — and in pieces: one C call to the json
module holds the GIL for all of its work, which would stall the loop from
the thread just the same. The parse calls back into Python for every number
(the hooks below) and :func:`dumps` encodes one list item at a time, so
the interpreter can hand the loop its turn every few milliseconds.
"""

from __future__ import annotations

import json
from typing import Any

import anyio
from starlette.requests import Request

from app.api.errors import ApiError

MAX_DEPTH = 32
MAX_INT_DIGITS = 20  # 64-bit integers and a little more; nothing the API takes is larger


class _Hostile(ValueError):
    pass


def _int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise _Hostile(f"an integer has more than {MAX_INT_DIGITS} digits")
    return int(text)


def _float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise _Hostile(f"the number {text[:24]} is too large")
    return value


def _constant(name: str) -> Any:
    raise _Hostile(f"{name} is not a JSON number")


def _check(value: Any) -> None:
    """Depth and text checks, iteratively (a recursive walk could overflow itself)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            _check_text(item)
        elif isinstance(item, (list, dict)):
            if depth > MAX_DEPTH:
                raise _Hostile(f"it is nested deeper than {MAX_DEPTH} levels")
            if isinstance(item, dict):
                for k, v in item.items():
                    _check_text(k)
                    stack.append((v, depth + 1))
            else:
                stack.extend((v, depth + 1) for v in item)


def _check_text(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise _Hostile("a string holds a lone surrogate (\\ud800-\\udfff) that is not a character") from None


def loads(text: str) -> Any:
    """``json.loads`` that lets other threads run while it works (for our own files)."""
    return json.loads(text, parse_float=lambda t: float(t))


def dumps(obj: dict[str, Any], *, compact: bool = True) -> bytes:
    """UTF-8 JSON of an object, encoding its lists item by item (see the module doc).

    The same text as ``json.dumps(obj, ensure_ascii=False)`` with the same separators.
    """
    item, colon = (",", ":") if compact else (", ", ": ")

    def enc(value: Any) -> str:
        return json.dumps(value, ensure_ascii=False, separators=(item, colon))

    parts = []
    for key, value in obj.items():
        encoded = "[" + item.join(enc(v) for v in value) + "]" if isinstance(value, list) else enc(value)
        parts.append(enc(key) + colon + encoded)
    return ("{" + item.join(parts) + "}").encode("utf-8")


def parse_json(data: bytes) -> Any:
    """Bytes to a checked value; raises ApiError 400 ``invalid_json``. Blocking: run it in a thread."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "invalid_json", "The body is not UTF-8.") from None
    try:
        value = json.loads(text, parse_int=_int, parse_float=_float, parse_constant=_constant)
        _check(value)
    except json.JSONDecodeError as exc:
        raise ApiError(400, "invalid_json", f"The body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}.") from None
    except RecursionError:
        raise ApiError(400, "invalid_json", f"The body is not acceptable JSON: it is nested deeper than {MAX_DEPTH} levels.") from None
    except _Hostile as exc:
        raise ApiError(400, "invalid_json", f"The body is not acceptable JSON: {exc}.") from None
    return value


async def read_json_body(request: Request, *, limit: int) -> Any:
    """The request's JSON body, at most ``limit`` bytes (413 ``body_too_large`` past it)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise _too_large(limit)
    return await anyio.to_thread.run_sync(parse_json, bytes(body))


def _too_large(limit: int) -> ApiError:
    size = f"{limit / (1024 * 1024):g} MB" if limit >= 1024 * 1024 else f"{limit // 1024} kB"
    return ApiError(413, "body_too_large", f"The JSON body is larger than {size}.", headers={"Connection": "close"})
