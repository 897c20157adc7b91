"""``python -m app keys add|list|remove``: manage the API keys file, or a cluster's key table.

The new key is printed once, on stdout, and nowhere else; the file keeps only
a salted hash. A running server picks up the change within a second or two.
With a ``postgresql://`` store.url the keys are rows of that database instead,
shared by every node; a removed key stops working on every node within
``auth.cache_ttl_s``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import json
import sys
from pathlib import Path
from dataclasses import asdict
from typing import Awaitable, Callable, Iterator

from app.api.auth import ApiKey, KeysFileError, key_from_record, keys_path, load_keys, new_key, save_keys
from app.config import Config, ConfigError, load_config


def add_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    keys = sub.add_parser("keys", help="create, list and remove API keys")
    keys.add_argument("--config", type=Path, default=None, help="TOML config file (default: config.toml of the checkout)")
    keys.add_argument("--data-dir", default=None, help="the server's data dir (the keys file is <data-dir>/keys.json by default)")
    keys.add_argument("--keys-file", default=None, help="the keys file (overrides auth.keys_file)")
    actions = keys.add_subparsers(dest="keys_command", required=True)
    add = actions.add_parser("add", help="create a key and print it once")
    add.add_argument("name", help="who the key is for (shown in logs and `keys list`)")
    add.add_argument("--max-active-jobs", type=int, default=None, help="running jobs at once (default: limits.max_active_jobs_per_key)")
    add.add_argument("--max-queued-jobs", type=int, default=None, help="waiting jobs (default: limits.max_queued_jobs_per_key)")
    add.add_argument("--max-upload-mb", type=float, default=None, help="largest upload (default and ceiling: storage.max_upload_mb)")
    add.add_argument("--max-exports", type=int, default=None, help="exports queued or rendering at once (default: limits.max_exports_per_key)")
    add.add_argument("--rate-per-minute", type=float, default=None, help="requests a minute, 0 = unlimited (default: auth.rate_limit_per_minute)")
    lst = actions.add_parser("list", help="show the keys (names, ids, limits; never the keys)")
    lst.add_argument("--json", action="store_true", help="machine-readable output")
    rm = actions.add_parser("remove", help="remove a key; it stops working at once")
    rm.add_argument("name")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Two `keys add` at once must not lose one of the keys (read, modify, write)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


Add = Callable[[ApiKey], Awaitable[None]]
Remove = Callable[[str], Awaitable[bool]]


def run(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config, overrides={"storage.data_dir": args.data_dir, "auth.keys_file": args.keys_file})
        path = keys_path(cfg)
    except ConfigError as exc:
        print(f"altyazi: {exc}", file=sys.stderr)
        return 2
    if cfg.clustered:
        return asyncio.run(_run_on_database(args, cfg))
    with _locked(path):
        try:
            keys = load_keys(path)
        except KeysFileError as exc:
            print(f"altyazi: {exc}", file=sys.stderr)
            return 2

        async def add(record: ApiKey) -> None:
            save_keys(path, [*keys, record])

        async def remove(name: str) -> bool:
            kept = [k for k in keys if k.name != name]
            if len(kept) == len(keys):
                return False
            save_keys(path, kept)
            return True

        return asyncio.run(_run(args, cfg, str(path), keys, add, remove))


async def _run_on_database(args: argparse.Namespace, cfg: Config) -> int:
    """The same commands on the cluster's key table (created with the schema if need be)."""
    from storage.claims import StoreUnavailable
    from storage.pg_store import KeyNameExists, PgJobStore

    where = "the cluster's database"
    try:
        store = await PgJobStore.open(cfg.store.url, max_connections=1)
    except StoreUnavailable as exc:
        print(f"altyazi: cannot reach {where}: {exc}", file=sys.stderr)
        return 2
    try:
        keys = [key_from_record(raw) for raw in await store.list_keys()]

        async def add(record: ApiKey) -> None:
            await store.add_key(record.id, record.name, asdict(record))

        try:
            return await _run(args, cfg, where, keys, add, store.remove_key)
        except KeyNameExists as exc:  # added by somebody else since the list was read
            print(f"altyazi: a key named {str(exc)!r} already exists; remove it first or pick another name", file=sys.stderr)
            return 2
    except StoreUnavailable as exc:
        print(f"altyazi: cannot reach {where}: {exc}", file=sys.stderr)
        return 2
    finally:
        await store.close()


async def _run(args: argparse.Namespace, cfg: Config, where: str, keys: list[ApiKey], add: Add, remove: Remove) -> int:
    if args.keys_command == "add":
        try:
            record, key = new_key(
                args.name, keys,
                max_active_jobs=args.max_active_jobs,
                max_queued_jobs=args.max_queued_jobs,
                max_upload_mb=args.max_upload_mb,
                rate_per_minute=args.rate_per_minute,
                max_exports=args.max_exports,
            )
        except ValueError as exc:
            print(f"altyazi: {exc}", file=sys.stderr)
            return 2
        await add(record)
        print(key)
        print(
            f"key {record.name!r} (id {record.id}) added to {where}; this is the only time the key is shown.",
            file=sys.stderr,
        )
        if not cfg.auth.enabled:
            print("note: auth.enabled is false in this config, so the server does not ask for keys yet.", file=sys.stderr)
        return 0
    if args.keys_command == "list":
        if args.json:
            print(json.dumps([k.public() for k in keys], indent=2))
            return 0
        if not keys:
            print(f"no keys in {where}; create one with: python -m app keys add NAME", file=sys.stderr)
            return 0
        for k in keys:
            limits = ", ".join(
                f"{label}={value:g}" if isinstance(value, float) else f"{label}={value}"
                for label, value in (
                    ("max_active_jobs", k.max_active_jobs),
                    ("max_queued_jobs", k.max_queued_jobs),
                    ("max_upload_mb", k.max_upload_mb),
                    ("rate_per_minute", k.rate_per_minute),
                    ("max_exports", k.max_exports),
                )
                if value is not None
            )
            print(f"{k.name}\t{k.id}\t{k.created_at}\t{limits or 'server defaults'}")
        return 0
    if args.keys_command == "remove":
        if not await remove(args.name):
            print(f"altyazi: no key named {args.name!r} in {where}", file=sys.stderr)
            return 1
        print(f"key {args.name!r} removed", file=sys.stderr)
        return 0
    return 2
