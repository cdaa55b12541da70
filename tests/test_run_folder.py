"""A training run's folder (issue 21, Build 4-5): the resolved config.yaml and train.log beside
metrics.json (and curves.png), locally and on S3; the epoch bar counts to where early stopping can
still end the run."""

import itertools
import re

import matplotlib.image
import pytest
from tqdm import tqdm

from irllrec_dist import artifacts, ingest, scoring, storage, train
from irllrec_dist.cli import StageError
from irllrec_dist.config import SyntheticConfig, TrainConfig, load_config
from irllrec_dist.data import dataset as ds
from irllrec_dist.data import synthetic
from irllrec_dist.training import sink, validation


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    out = tmp_path_factory.mktemp("raw")
    synthetic.write_raw(synthetic.generate(SyntheticConfig(seed=5, n_users=150, n_items=80, n_intents=8)), str(out))
    return out


def _cfg(root, raw, *more):
    return load_config(
        None,
        [
            f"run_root={root}",
            f"ingest.source={raw}",
            "train.threads=1",
            "train.batch_size=256",
            "train.eval_every=1",
            "train.patience=2",
            "train.run_name=rf-s1",
            *more,
        ],
    )


def test_run_folder_has_config_log_and_curves(tmp_path, raw, monkeypatch):
    bars = []

    class Recorded(tqdm):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            bars.append((self, k))

    monkeypatch.setattr(sink, "tqdm", Recorded)
    cfg = _cfg(tmp_path / "root", raw, "train.max_epochs=30")
    ingest.run(cfg)
    summary = train.run(cfg)

    folder = tmp_path / "root" / "runs" / "rf-s1"
    assert {"metrics.json", "config.yaml", "train.log", "curves.png"} <= {p.name for p in folder.iterdir()}
    assert load_config(str(folder / "config.yaml")) == cfg  # --config reads it back to the same run
    log = (folder / "train.log").read_text().splitlines()
    assert "irllrec_dist.train train: 150 users" in log[0]
    assert sum(" val recall@20 " in line for line in log) == summary["epochs_run"]  # one per validation
    assert "done: best epoch" in log[-1] and str(folder / "metrics.json") in log[-1]
    img = matplotlib.image.imread(str(folder / "curves.png"))
    assert img.shape[:2] == (504, 1500)

    epoch_bar = [b for b, k in bars if k.get("unit") == "epoch"]
    batch_bars = [(b, k) for b, k in bars if k.get("unit") == "batch"]
    assert len(epoch_bar) == 1 and epoch_bar[0].total == summary["epochs_run"]  # early stop or max_epochs
    assert len(batch_bars) == summary["epochs_run"]
    n_train = len(ds.load(cfg.run_root).train)
    assert all(k["leave"] is False and k["delay"] > 0 and b.n == b.total == -(-n_train // 256) for b, k in batch_bars)


def test_a_failed_run_keeps_its_log_and_a_resumed_run_continues_it(tmp_path, raw, monkeypatch):
    cfg = _cfg(tmp_path / "root", raw, "train.max_epochs=3", "train.patience=50")
    ingest.run(cfg)
    real = scoring.evaluate_run

    def fail(*a, **k):
        raise StageError("the test stopped this run before its test metrics")

    monkeypatch.setattr(scoring, "evaluate_run", fail)
    with pytest.raises(StageError):
        train.run(cfg)
    log_uri = artifacts.run_uri(cfg, "train.log")
    first = storage.read_bytes(log_uri).decode()
    assert first.count(" val recall@20 ") == 3 and "done:" not in first
    assert storage.exists(artifacts.run_uri(cfg, "checkpoints", "state.pt"))

    monkeypatch.setattr(scoring, "evaluate_run", real)
    cfg.train.max_epochs = 5  # a runtime key: the saved state resumes
    summary = train.run(cfg)
    assert summary["resumed_at_epoch"] == 3
    log = storage.read_bytes(log_uri).decode()
    assert log.startswith(first) and "resumed from checkpoint at epoch 3" in log[len(first) :]
    assert len(re.findall(r" epoch \d+ loss .* val recall@20 ", log)) == 5 and "done: best epoch" in log


def test_run_folder_on_s3(tmp_path, raw):
    from s3_server import seaweedfs

    with seaweedfs(bucket="runfolder") as server:
        cfg = _cfg("s3://runfolder/root", raw, "train.max_epochs=2")
        ingest.run(cfg)
        train.run(cfg)
        fs = server.filesystem()
        run = "runfolder/root/runs/rf-s1"
        assert {"metrics.json", "config.yaml", "train.log", "curves.png"} <= {
            p.rsplit("/", 1)[-1] for p in fs.ls(run, detail=False)
        }
        (tmp_path / "config.yaml").write_bytes(fs.cat(f"{run}/config.yaml"))
        assert load_config(str(tmp_path / "config.yaml")) == cfg
        log = fs.cat(f"{run}/train.log").decode()
        assert log.count(" val recall@20 ") == 2 and "done: best epoch" in log
        assert fs.cat(f"{run}/curves.png")[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "every,patience,min_epochs,max_epochs", list(itertools.product((1, 3), (1, 5), (0, 10, 50), (20, 500)))
)
def test_stop_horizon_is_where_early_stopping_ends_the_run(every, patience, min_epochs, max_epochs):
    """Simulate the loop's validation and early stopping: after every check, the horizon is the
    number of epochs the run lasts if validation does not improve again."""
    tc = TrainConfig(eval_every=every, patience=patience, min_epochs=min_epochs, max_epochs=max_epochs)
    for improving_until in (0, 7, 31, 1000):  # validation improves at every check before this epoch
        assert validation.stop_horizon(None, 0, tc) == _simulate(tc, -1)  # before anything is known
        best, bad, horizon, epochs_run = None, 0, validation.stop_horizon(None, 0, tc), 0
        for epoch in range(max_epochs):
            epochs_run = epoch + 1
            if epoch % every:
                continue
            if best is None or epoch < improving_until:
                best, bad = epoch, 0
                horizon = validation.stop_horizon(best, epoch + 1, tc)
                assert horizon == _simulate(tc, best)
            else:
                bad += 1
            if validation.early_stop(bad, epoch + 1, patience, min_epochs):
                break
        assert horizon == epochs_run, (improving_until, horizon, epochs_run)


def _simulate(tc: TrainConfig, best: int) -> int:
    """Epochs run when the last improvement was at check ``best`` (-1: the first check improves)."""
    bad, last = 0, 0
    for epoch in range(tc.max_epochs):
        last = epoch + 1
        if epoch % tc.eval_every:
            continue
        if epoch <= best or (best < 0 and epoch == 0):
            bad = 0
            continue
        bad += 1
        if validation.early_stop(bad, epoch + 1, tc.patience, tc.min_epochs):
            break
    return last
