import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import make_config

from irllrec_dist import artifacts, evaluate, ingest, scoring, storage, train
from irllrec_dist.data import dataset as ds
from irllrec_dist.metrics import evaluate_ranking
from irllrec_dist.training import validation


def test_ingest_train_evaluate(tmp_path, tiny_raw):
    cfg = make_config(
        tmp_path / "root",
        tiny_raw,
        max_epochs=60,
        eval_every=3,
        patience=5,
        threads=1,
        lr=0.003,
        batch_size=256,
        run_name="t",
    )
    ingest.run(cfg)
    summary = train.run(cfg)
    assert summary["best_epoch"] % 3 == 0
    assert storage.read_json(artifacts.run_uri(cfg, "metrics.json"))["test"] == summary["test"]

    data = ds.load(cfg.run_root)
    # popularity baseline on the same protocol: LightGCN must beat it clearly on planted intents
    pop = torch.from_numpy(np.bincount(data.train[:, 1], minlength=data.n_items).astype(np.float32))
    popular = evaluate_ranking(
        torch.ones(data.n_users, 1), pop[:, None], data.matrix("test"), data.matrix("train"), (20,)
    )
    assert summary["test"]["recall@20"] > 1.3 * popular["recall@20"], (summary["test"], popular)

    recs = storage.read_table(artifacts.run_uri(cfg, "recommendations")).to_pylist()
    assert len(recs) == data.n_users
    train_items = {}
    for u, i in data.train:
        train_items.setdefault(int(u), set()).add(int(i))
    for row in recs[:50]:
        assert len(row["item_ids"]) == cfg.eval.export_top_k
        assert not (set(row["item_ids"]) & train_items.get(row["user_id"], set()))
        assert row["scores"] == sorted(row["scores"], reverse=True)
        assert row["items"][0] == data.item_raw[row["item_ids"][0]]

    # the evaluate stage on its own reproduces the trainer's test numbers
    again = evaluate.run(cfg, "test", export=False)
    assert again["recall@20"] == summary["test"]["recall@20"]


def test_early_stop_rule():
    assert validation.early_stop(bad_checks=5, epochs_done=16, patience=5, min_epochs=0)
    assert not validation.early_stop(bad_checks=4, epochs_done=16, patience=5, min_epochs=0)
    assert not validation.early_stop(bad_checks=5, epochs_done=16, patience=5, min_epochs=50)
    assert validation.early_stop(bad_checks=5, epochs_done=50, patience=5, min_epochs=50)


def test_run_killed_after_its_early_stop_resumes_without_training_on(tmp_path, tiny_raw, monkeypatch):
    """Between the early stop and metrics.json there is the test evaluation and the export; a run
    that dies there and is started again must not train past the epoch it stopped at."""

    def cfg(name):
        return make_config(
            tmp_path / "root",
            tiny_raw,
            max_epochs=40,
            eval_every=1,
            patience=1,
            threads=1,
            lr=1e-7,
            batch_size=256,
            run_name=name,
        )  # no improvement after epoch 0

    ingest.run(cfg("clean"))
    clean = train.run(cfg("clean"))
    assert clean["epochs_run"] == 2
    real_run = scoring.evaluate_run

    def dies(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(scoring, "evaluate_run", dies)
    with pytest.raises(KeyboardInterrupt):
        train.run(cfg("killed"))
    monkeypatch.setattr(scoring, "evaluate_run", real_run)
    resumed = train.run(cfg("killed"))
    assert resumed["resumed_at_epoch"] == 2 and resumed["epochs_run"] == 2
    assert resumed["test"] == clean["test"]


def test_min_epochs_holds_off_early_stopping(tmp_path, tiny_raw):
    # lr so small that validation never improves after epoch 0: patience 1 stops at once
    # (2 epochs), unless min_epochs holds the run until it has done that many epochs.
    runs = {}
    for min_epochs in (0, 5):
        cfg = make_config(
            tmp_path / "root",
            tiny_raw,
            max_epochs=12,
            eval_every=1,
            patience=1,
            threads=1,
            lr=1e-12,
            batch_size=1024,
            min_epochs=min_epochs,
            run_name=f"m{min_epochs}",
        )
        ingest.run(cfg)
        runs[min_epochs] = train.run(cfg)
    assert [runs[m]["epochs_run"] for m in (0, 5)] == [2, 5]
    assert runs[0]["best_epoch"] == runs[5]["best_epoch"] == 0


def test_pipeline_cli_on_generated_data(tmp_path):
    """The demo's config end to end, small: the real SmolLM2 describes 3 items and 3 users."""
    root = tmp_path / "demo"
    cmd = [
        sys.executable,
        "-m",
        "irllrec_dist.pipeline",
        "--config",
        "configs/demo.yaml",
        f"run_root={root}",
        "synthetic.n_users=300",
        "synthetic.n_items=200",
        "synthetic.n_intents=8",
        "train.max_epochs=4",
        "train.threads=1",
        "intents.limit=3",
        "intents.max_new_tokens=24",
        "intents.max_retries=0",
    ]
    out = subprocess.run(
        cmd, capture_output=True, text=True, timeout=300, cwd=str(__import__("pathlib").Path(__file__).parents[1])
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert re.search(r"^test +\| 0\.\d{4} \|", out.stdout, re.M) and "R@20" in out.stdout
    assert "reference, popularity: test R@20" in out.stdout
    assert json.loads((root / "raw" / "_synthetic.json").read_text())["n_users"] == 300
    assert (root / "runs" / "demo-irllrec" / "metrics.json").exists()
    assert "intents/items: 3 described by smollm2-135m-instruct" in out.stdout
    assert "reference, text_only: test R@20" in out.stdout
    meta = json.loads((root / "embeddings" / "items" / "_manifest.json").read_text())["meta"]
    assert meta["text_source"] == "intents" and meta["from_llm"] == 3


def test_synthetic_is_not_regenerated_for_the_same_config(tmp_path):
    from irllrec_dist.config import Config
    from irllrec_dist.pipeline import ensure_synthetic

    cfg = Config(run_root=str(tmp_path))
    cfg.synthetic.n_users, cfg.synthetic.n_items, cfg.synthetic.n_intents = 200, 100, 6
    ensure_synthetic(cfg)
    train_file = tmp_path / "raw" / "train.parquet"
    before = train_file.stat().st_mtime_ns
    cfg2 = Config(run_root=str(tmp_path))
    cfg2.synthetic = cfg.synthetic
    ensure_synthetic(cfg2)
    assert train_file.stat().st_mtime_ns == before
    assert cfg2.ingest.source == str(tmp_path / "raw")


def test_tensorboard_events_are_written(tmp_path, tiny_raw):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = make_config(tmp_path / "root", tiny_raw, max_epochs=4, eval_every=3, threads=1, run_name="tb")
    ingest.run(cfg)
    summary = train.run(cfg)
    acc = EventAccumulator(str(tmp_path / "root" / "runs" / "tb" / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {
        "loss/loss",
        "loss/bpr",
        "loss/reg",
        "val/recall@20",
        "throughput/edges_per_s_per_worker",
        "memory/peak_rss_mib",
        "optim/lr",
        "test/recall@20",
    } <= tags
    bpr = acc.Scalars("loss/bpr")
    assert [e.step for e in bpr] == [0, 1, 2, 3]
    assert abs(bpr[-1].value - summary["history"][-1]["bpr"]) < 1e-6
    assert [e.step for e in acc.Scalars("val/recall@20")] == [0, 3]
    assert abs(acc.Scalars("test/recall@20")[0].value - summary["test"]["recall@20"]) < 1e-6
