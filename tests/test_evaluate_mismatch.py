"""evaluate refuses a checkpoint that does not belong to the config and run root it is asked
about (issue 17, Build 4): another model shape or training config, a re-ingested dataset,
re-computed embeddings, a checkpoint that records no inputs -- each refused with one line
naming what differs, and nothing (eval_<split>.json, recommendations) overwritten."""

import io
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from irllrec_dist import artifacts, embed, evaluate, ingest, storage, train
from irllrec_dist.cli import CheckpointError
from irllrec_dist.config import Config, SyntheticConfig
from irllrec_dist.data import synthetic

REPO = Path(__file__).resolve().parents[1]


def _raw(folder: Path, seed: int) -> Path:
    synthetic.write_raw(
        synthetic.generate(SyntheticConfig(seed=seed, n_users=150, n_items=80, n_intents=8)), str(folder)
    )
    return folder


def _cfg(root: Path, raw: Path, **loss) -> Config:
    cfg = Config(run_root=str(root))
    cfg.ingest.source = str(raw)
    cfg.train.max_epochs, cfg.train.eval_every, cfg.train.threads, cfg.train.batch_size = 2, 1, 1, 256
    cfg.train.run_name = "m"
    for k, v in loss.items():
        setattr(cfg.loss, k, v)
    cfg.validate()
    return cfg


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run root with a trained LightGCN run (model.layers 3): (config, eval_test.json bytes)."""
    tmp = tmp_path_factory.mktemp("mismatch")
    cfg = _cfg(tmp / "root", _raw(tmp / "raw", seed=5))
    ingest.run(cfg)
    train.run(cfg)
    return cfg, storage.read_bytes(artifacts.run_uri(cfg, "eval_test.json"))


def _copy(cfg: Config) -> Config:
    from irllrec_dist.config import config_from_dict

    return config_from_dict(cfg.to_dict())


def test_same_config_evaluates_and_evaluation_settings_may_differ(trained):
    cfg, _ = trained
    again = _copy(cfg)
    again.eval.ks, again.eval.monitor_k = (1, 3), 3  # evaluation settings are free
    again.train.threads, again.train.max_epochs = 2, 50  # so is how (long) training ran
    out = evaluate.run(again, "val", export=False)
    assert "recall@3" in out and out["best_epoch"] is not None


def test_other_model_shape_is_refused_naming_the_key(trained):
    cfg, eval_json = trained
    other = _copy(cfg)
    other.model.layers = 2  # loads into the same tables without error: silently other metrics before
    with pytest.raises(CheckpointError, match=r"best\.pt was trained with model\.layers=3, config has 2"):
        evaluate.run(other, "test")
    assert storage.read_bytes(artifacts.run_uri(cfg, "eval_test.json")) == eval_json  # not overwritten

    other.model.dim, other.train.seed = 16, 7  # every difference is named
    with pytest.raises(
        CheckpointError,
        match=r"model\.dim=32, config has 16.*model\.layers=3, config has 2.*"
        r"train\.seed=2023, config has 7",
    ):
        evaluate.run(other, "test")


def test_cli_refuses_with_one_line_and_exit_code_2(trained):
    cfg, eval_json = trained
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "irllrec_dist.evaluate",
            f"run_root={cfg.run_root}",
            "train.run_name=m",
            "model.layers=2",
            "train.max_epochs=2",
            "train.eval_every=1",
            "train.batch_size=256",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("evaluate: checkpoint ") and "model.layers=3, config has 2" in lines[0]
    assert storage.read_bytes(artifacts.run_uri(cfg, "eval_test.json")) == eval_json


def test_reingested_dataset_is_refused_naming_both_hashes(tmp_path):
    """Same sizes, same config keys, other interactions: only the dataset hash tells."""
    cfg = _cfg(tmp_path / "root", _raw(tmp_path / "raw", seed=5))
    ingest.run(cfg)
    train.run(cfg)
    trained_on = torch.load(
        io.BytesIO(storage.read_bytes(artifacts.run_uri(cfg, "checkpoints", "best.pt"))), weights_only=True
    )["inputs"]["dataset"]
    assert trained_on
    cfg.ingest.source = str(_raw(tmp_path / "raw2", seed=6))
    ingest.run(cfg)
    now = artifacts.input_hashes(cfg)["dataset"]
    assert now != trained_on
    with pytest.raises(
        CheckpointError,
        match=rf"dataset config hash {trained_on} \(checkpoint\) != {now} "
        r"\(run root\).*re-run train",
    ):
        evaluate.run(cfg, "test")


def test_recomputed_embeddings_are_refused(tmp_path):
    cfg = _cfg(tmp_path / "root", _raw(tmp_path / "raw", seed=5), prf=0.01)
    ingest.run(cfg)
    embed.run(cfg)
    train.run(cfg)
    evaluate.run(cfg, "test", export=False)  # as trained: accepted
    cfg.embed.batch_size = 7  # part of the embeddings' config hash: embed writes them again
    embed.run(cfg)
    with pytest.raises(
        CheckpointError,
        match=r"user embeddings config hash \w+ \(checkpoint\) != \w+ \(run root\); "
        r"item embeddings config hash \w+ \(checkpoint\) != \w+ \(run root\)",
    ):
        evaluate.run(cfg, "test")


def test_checkpoint_without_recorded_inputs_or_with_other_loss_terms_is_refused(trained, tmp_path):
    cfg, _ = trained
    uri = artifacts.run_uri(cfg, "checkpoints", "best.pt")
    original = storage.read_bytes(uri)
    try:
        ckpt = torch.load(io.BytesIO(original), weights_only=True)
        assert ckpt["n_users"] == 150 and set(ckpt["inputs"]) == {"dataset"}
        del ckpt["inputs"]  # as written before checkpoints recorded their inputs
        buf = io.BytesIO()
        torch.save(ckpt, buf)
        storage.write_bytes(uri, buf.getvalue())
        with pytest.raises(CheckpointError, match="records no dataset/embedding hashes"):
            evaluate.run(cfg, "test", export=False)
    finally:
        storage.write_bytes(uri, original)
    other = _copy(cfg)
    other.loss.prf = 0.01  # a text tower the checkpoint does not have
    with pytest.raises(CheckpointError, match=r"was trained with loss\.prf=0\.0, config has 0\.01"):
        evaluate.run(other, "test", export=False)
