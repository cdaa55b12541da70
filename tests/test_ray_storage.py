"""Where Ray Train keeps checkpoints (irllrec_dist/ray_storage.py), without a cluster: the S3
default under an s3:// run root, what travels to the workers, and the one-line refusal of a
node-local path across nodes (the decision itself runs on the real cluster in test_multinode.py)."""

import pickle

import pytest

from irllrec_dist import ray_storage
from irllrec_dist.config import Config, ConfigError


def _cfg(run_root, **train):
    cfg = Config(run_root=run_root)
    cfg.train.workers = 2
    for k, v in train.items():
        setattr(cfg.train, k, v)
    return cfg


def test_s3_run_root_puts_checkpoints_under_it(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://10.213.0.2:8333")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDNOTINPICKLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret-not-in-pickle")
    kw = ray_storage.run_config_storage(_cfg("s3://bucket/runs/x/"))
    assert kw["storage_path"] == "bucket/runs/x/ray_results"
    fs = kw["storage_filesystem"]
    assert fs.type_name == "s3"
    # the filesystem is pickled to the controller and every worker: endpoint yes, keys never
    blob = pickle.dumps(fs)
    assert b"10.213.0.2:8333" in blob
    assert b"AKIDNOTINPICKLE" not in blob and b"secret-not-in-pickle" not in blob


def test_explicit_ray_storage_wins(monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    kw = ray_storage.run_config_storage(_cfg("s3://bucket/run", ray_storage="s3://other/ckpt"))
    assert kw["storage_path"] == "other/ckpt"
    assert ray_storage.run_config_storage(_cfg("/data/run", ray_storage="file:///mnt/nfs/ray")) == {
        "storage_path": "file:///mnt/nfs/ray"
    }
    assert ray_storage.storage_uri(_cfg("file:///data/run")) == ""  # a local run root: Ray's default


@pytest.mark.parametrize("ray_storage_value", ["", "/tmp/ray_results"])
def test_node_local_storage_refused_across_nodes(monkeypatch, ray_storage_value):
    monkeypatch.setattr(ray_storage, "run_nodes", lambda workers, resources: {"a", "b"})
    with pytest.raises(ConfigError) as e:
        ray_storage.run_config_storage(_cfg("/data/run", ray_storage=ray_storage_value))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("train.ray_storage: this run spans 2 nodes")
    monkeypatch.setattr(ray_storage, "run_nodes", lambda workers, resources: {"a"})
    expected = "/tmp/ray_results" if ray_storage_value else None
    assert ray_storage.run_config_storage(_cfg("/data/run", ray_storage=ray_storage_value)) == {
        "storage_path": expected
    }
