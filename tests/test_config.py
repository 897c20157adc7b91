from __future__ import annotations

from pathlib import Path

import pytest

from app.__main__ import build_parser, config_from_args, main
from app.config import DEFAULT_CONFIG_PATH, Config, ConfigError, load_config


def test_repo_config_matches_the_code_defaults() -> None:
    # config.toml documents the defaults; the dataclasses must agree with it.
    assert load_config(DEFAULT_CONFIG_PATH, environ={}) == Config().validate()


def test_environment_overrides_file(tmp_path: Path) -> None:
    cfg = load_config(environ={"ALTYAZI_BATCHING_MAX_BATCH_SIZE": "1", "ALTYAZI_STORAGE_DATA_DIR": str(tmp_path)})
    assert cfg.batching.max_batch_size == 1
    assert cfg.storage.data_dir == tmp_path


def test_cli_flags_override_environment(tmp_path: Path) -> None:
    args = build_parser().parse_args(["serve", "--port", "9123", "--model", "tiny.en", "--data-dir", str(tmp_path)])
    cfg = config_from_args(args)
    assert (cfg.server.port, cfg.model.name, cfg.storage.data_dir) == (9123, "tiny.en", tmp_path)


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"ALTYAZI_BATCHING_MAX_BATCH_SIZE": "zero"}, "batching.max_batch_size = 'zero'"),
        ({"ALTYAZI_BATCHING_MAX_BATCH_SIZE": "-1"}, "batching.max_batch_size = -1"),
        ({"ALTYAZI_SERVER_PORT": "70000"}, "server.port = 70000"),
        ({"ALTYAZI_MODEL_DEVICE": "tpu"}, "model.device = 'tpu'"),
        ({"ALTYAZI_SERVER_NOPE": "1"}, "server.nope"),
    ],
)
def test_bad_values_name_the_key(env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(environ=env)
    message = str(info.value)
    assert needle in message
    assert "\n" not in message


def test_bad_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[batching]\nmax_wait_ms = 'soon'\n")
    with pytest.raises(ConfigError, match="batching.max_wait_ms"):
        load_config(bad, environ={})
    bad.write_text("[nosuch]\nx = 1\n")
    with pytest.raises(ConfigError, match=r"unknown config section \[nosuch\]"):
        load_config(bad, environ={})
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml", environ={})


def test_main_prints_one_line_for_bad_config(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALTYAZI_SERVER_PORT", "-1")
    assert main(["serve"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "server.port" in err


def test_batch_size_zero_picks_by_device() -> None:
    from app.serving import batcher_options
    from batching.whisper_engine import CPU_BATCH_SIZE, CUDA_BATCH_SIZE

    def batch_size_for(cfg: Config) -> int:
        return batcher_options(cfg).max_batch_size

    assert batch_size_for(load_config(environ={"ALTYAZI_MODEL_DEVICE": "cpu"})) == CPU_BATCH_SIZE
    assert batch_size_for(load_config(environ={"ALTYAZI_MODEL_DEVICE": "cuda"})) == CUDA_BATCH_SIZE
    assert batch_size_for(load_config(environ={"ALTYAZI_BATCHING_MAX_BATCH_SIZE": "7"})) == 7


@pytest.mark.parametrize(
    ("raw", "want"),
    [("0", [0]), ("1,0", [1, 0]), (" 2 , 3 ", [2, 3])],
)
def test_device_index_is_one_gpu_or_a_list(raw: str, want: list[int]) -> None:
    assert load_config(environ={"ALTYAZI_MODEL_DEVICE_INDEX": raw}).model.device_index == want


def test_device_index_from_the_file(tmp_path: Path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text("[model]\ndevice_index = [0, 1]\n")
    assert load_config(toml, environ={}).model.device_index == [0, 1]
    toml.write_text("[model]\ndevice_index = 1\n")
    assert load_config(toml, environ={}).model.device_index == [1]


@pytest.mark.parametrize("raw", ["x", "0,0", "-1", "1.5", ""])
def test_bad_device_index_names_the_key(raw: str) -> None:
    with pytest.raises(ConfigError, match="model.device_index"):
        load_config(environ={"ALTYAZI_MODEL_DEVICE_INDEX": raw})


def test_several_gpus_give_one_engine_per_device() -> None:
    from app.model_files import ResolvedModel
    from app.serving import engine_for
    from batching.spread import SpreadEngine
    from batching.whisper_engine import WhisperEngine

    resolved = ResolvedModel(name="tiny.en", path_or_id="/nonexistent", source="test", multilingual=False)
    cfg = load_config(environ={"ALTYAZI_MODEL_DEVICE": "cuda", "ALTYAZI_MODEL_DEVICE_INDEX": "0,1"})
    engine = engine_for(cfg, resolved)  # nothing is loaded before start()
    assert isinstance(engine, SpreadEngine)
    assert [e.runner.device_index for e in engine.engines if isinstance(e, WhisperEngine)] == [0, 1]
    single = engine_for(load_config(environ={"ALTYAZI_MODEL_DEVICE": "cpu"}), resolved)
    assert isinstance(single, WhisperEngine) and single.runner.encode_batch_size == 1


def test_batch_rows_and_vad_threads_by_device() -> None:
    from app.application import vad_threads
    from app.serving import batcher_options

    gpu = load_config(environ={"ALTYAZI_MODEL_DEVICE": "cuda"})
    cpu = load_config(environ={"ALTYAZI_MODEL_DEVICE": "cpu"})
    assert batcher_options(gpu).max_batch_weight == 2 * batcher_options(gpu).max_batch_size
    assert batcher_options(cpu).max_batch_weight == 0
    assert (vad_threads(gpu), vad_threads(cpu)) == (4, 1)
    assert vad_threads(load_config(environ={"ALTYAZI_BATCHING_VAD_THREADS": "3"})) == 3


def test_the_single_box_is_the_default_and_a_cluster_is_named_by_its_urls(tmp_path: Path) -> None:
    cfg = load_config(environ={"ALTYAZI_STORAGE_DATA_DIR": str(tmp_path)})
    assert not cfg.clustered and cfg.sqlite_path == tmp_path / "altyazi.db" and cfg.files.url == ""
    assert load_config(environ={"ALTYAZI_STORE_URL": f"sqlite://{tmp_path}/x.db"}).sqlite_path == tmp_path / "x.db"
    cluster = load_config(environ={
        "ALTYAZI_STORE_URL": "postgresql://altyazi@db:5432/altyazi", "ALTYAZI_FILES_URL": "s3://bucket/prefix",
        "ALTYAZI_CLUSTER_NODE_ID": "gpu1", "ALTYAZI_CLUSTER_LEASE_S": "10",
    })  # fmt: skip
    assert cluster.clustered and (cluster.cluster.node_id, cluster.cluster.lease_s) == ("gpu1", 10.0)


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"ALTYAZI_STORE_URL": "mysql://x"}, "store.url = 'mysql://x'"),
        ({"ALTYAZI_FILES_URL": "gs://bucket"}, "files.url = 'gs://bucket'"),
        ({"ALTYAZI_FILES_URL": "s3://bucket"}, "s3:// only with a postgresql:// store.url"),
        ({"ALTYAZI_CLUSTER_LEASE_S": "0.5"}, "cluster.lease_s = 0.5"),
        ({"ALTYAZI_CLUSTER_POLL_S": "30"}, "cluster.poll_s = 30.0"),
    ],
)
def test_bad_cluster_values_name_the_key(env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(environ=env)
    assert needle in str(info.value)


def test_cpu_replicas_from_config_and_the_default_layout() -> None:
    from app.model_files import ResolvedModel
    from app.serving import engine_for
    from batching.whisper_engine import WhisperEngine
    from batching.whisper_runner import default_cpu_layout

    resolved = ResolvedModel(name="tiny.en", path_or_id="/nonexistent", source="test", multilingual=False)
    engine = engine_for(load_config(environ={"ALTYAZI_MODEL_CPU_REPLICAS": "3"}), resolved)
    assert isinstance(engine, WhisperEngine) and engine.runner.replicas == 3
    assert engine_for(load_config(environ={}), resolved).runner.replicas == 0  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="model.cpu_replicas"):
        load_config(environ={"ALTYAZI_MODEL_CPU_REPLICAS": "-1"})
    # (replicas, threads each): one per core on small machines, at most 4
    assert default_cpu_layout(1) == (1, 1)
    assert default_cpu_layout(2) == (2, 1)
    assert default_cpu_layout(16) == (4, 4)
    assert default_cpu_layout(16, threads=8) == (2, 8)
    assert default_cpu_layout(16, replicas=1) == (1, 16)
    assert default_cpu_layout(3, replicas=2, threads=3) == (2, 3)  # both given: as given
