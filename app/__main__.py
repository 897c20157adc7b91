"""Command line: ``python -m app serve [--config F] [--host H] [--port P] [--data-dir D] [--model M]``."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from app import keys_cli
from app.api.auth import KeysFileError, KeyStore, keys_path, unauthenticated_remote_problem
from app.config import Config, ConfigError, load_config

log = logging.getLogger("altyazi")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m app", description="altyazi subtitle server")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the HTTP server")
    serve.add_argument("--config", type=Path, default=None, help="TOML config file (default: config.toml of the checkout)")
    serve.add_argument("--host", default=None)
    serve.add_argument("--port", type=int, default=None)
    serve.add_argument("--data-dir", default=None)
    serve.add_argument("--model", default=None, help="base, tiny.en, a faster-whisper name or a CTranslate2 folder")
    keys_cli.add_parser(sub)
    return parser


def config_from_args(args: argparse.Namespace) -> Config:
    return load_config(
        args.config,
        overrides={
            "server.host": args.host,
            "server.port": args.port,
            "storage.data_dir": args.data_dir,
            "model.name": args.model,
        },
    )


def check_auth(cfg: Config) -> str | None:
    """Why the server must not start with this auth setup (one line), or None."""
    problem = unauthenticated_remote_problem(cfg)
    if problem is not None:
        return problem
    if cfg.auth.enabled and not cfg.clustered:  # a cluster's keys are in its database, read when the app connects
        try:
            keys = KeyStore(keys_path(cfg))
        except KeysFileError as exc:
            return str(exc)
        if not len(keys):
            log.warning("auth is on but %s holds no keys; every request will get 401 until you run: python -m app keys add NAME", keys.path)
    return None


def serve(cfg: Config) -> int:
    from app.logs import setup_logging
    from app.model_files import ModelError
    from app.serving import run_server

    setup_logging(cfg.server.log_level, cfg.server.log_format)
    from app.preflight import database_problem

    # A cluster's PostgreSQL is checked when the app connects (a failure stops the start there).
    problem = check_auth(cfg) or (None if cfg.clustered else database_problem(cfg.storage.data_dir, cfg.sqlite_path))
    if problem is not None:
        print(f"altyazi: {problem}", file=sys.stderr)
        return 2
    try:
        return run_server(cfg)
    except ModelError as exc:
        print(f"altyazi: {exc}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "keys":
        return keys_cli.run(args)
    try:
        cfg = config_from_args(args)
    except ConfigError as exc:
        print(f"altyazi: {exc}", file=sys.stderr)
        return 2
    if args.command == "serve":
        return serve(cfg)
    return 2


if __name__ == "__main__":
    sys.exit(main())
