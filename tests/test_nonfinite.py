"""Non-finite values stop training and evaluation (issue 17, Build 4).

The NaN comes from a real configuration -- an absurd learning rate (train.lr=1e30: Adam moves
every weight by ~1e30 in one step, the next step's scores overflow float32) -- not from a patched
check. One CPU process reads every step's loss; ranks of a process group (and GPUs) track the
first bad step on the device and agree on it once per epoch: both paths are run here."""

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from irllrec_dist import evaluate, ingest, storage, train
from irllrec_dist.cli import CheckpointError, NonFiniteLoss
from irllrec_dist.config import Config, SyntheticConfig, config_from_dict
from irllrec_dist.data import synthetic
from irllrec_dist.gloo_group import free_port, loopback_gloo_group

REPO = Path(__file__).resolve().parents[1]
DIVERGES = r"non-finite training loss at epoch 0, step 1 \(batch 1 of the epoch\): "


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("nonfinite")
    raw = tmp / "raw"
    synthetic.write_raw(synthetic.generate(SyntheticConfig(seed=5, n_users=150, n_items=80, n_intents=8)), str(raw))
    cfg = _cfg(tmp / "root", raw, "ok", lr=1e-3)
    ingest.run(cfg)
    return tmp / "root", raw


def _cfg(root: Path, raw: Path, run_name: str, lr: float) -> Config:
    cfg = Config(run_root=str(root))
    cfg.ingest.source = str(raw)
    cfg.train.max_epochs, cfg.train.eval_every, cfg.train.threads, cfg.train.batch_size = 3, 1, 1, 256
    cfg.train.run_name, cfg.train.lr = run_name, lr
    cfg.validate()
    return cfg


def test_absurd_learning_rate_stops_training_at_the_step_naming_the_term(root):
    cfg = _cfg(*root, "diverges", lr=1e30)
    with pytest.raises(NonFiniteLoss, match=DIVERGES + r"(bpr|reg)=(nan|inf)"):
        train.run(cfg)
    run = Path(evaluate.run_uri(cfg))
    assert not (run / "checkpoints" / "best.pt").exists()  # nothing saved from it
    assert not (run / "checkpoints" / "state.pt").exists()  # it died before its first validation
    assert not (run / "metrics.json").exists()


def test_cli_one_line_and_exit_code_2(root):
    run_root, raw = root
    proc = subprocess.run([sys.executable, "-m", "irllrec_dist.train", f"run_root={run_root}", f"ingest.source={raw}",
                           "train.lr=1e30", "train.run_name=cli", "train.max_epochs=2", "train.threads=1",
                           "train.batch_size=256"],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, TQDM_DISABLE="1"))
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]  # after the INFO log lines
    assert last.startswith("train: non-finite training loss at epoch 0, step 1"), proc.stderr[-2000:]


def _rank(rank: int, world: int, port: int, cfg_dict: dict, out: str) -> None:
    torch.set_num_threads(1)
    with loopback_gloo_group(rank, world, port):
        try:
            train.train_loop(config_from_dict(cfg_dict), rank, world, device=torch.device("cpu"))
            msg = "finished"
        except NonFiniteLoss as e:
            msg = str(e)
    Path(out, f"r{rank}.txt").write_text(msg)


def test_ranks_agree_on_the_first_bad_step_and_all_stop(root, tmp_path):
    """The path GPUs and process groups take: no per-step read, one all-reduce per epoch."""
    cfg = _cfg(*root, "ranks", lr=1e30)
    mp.start_processes(_rank, args=(2, free_port(), cfg.to_dict(), str(tmp_path)), nprocs=2, start_method="spawn")
    msgs = [(tmp_path / f"r{r}.txt").read_text() for r in (0, 1)]
    for r, msg in enumerate(msgs):
        assert msg.startswith("non-finite training loss at epoch 0, step 1 (batch 1 of the epoch): "), msg
        assert f"summed over the epoch on rank {r}" in msg and ("bpr" in msg or "reg" in msg), msg
    assert not Path(evaluate.run_uri(cfg, "checkpoints", "best.pt")).exists()


def test_evaluate_refuses_a_checkpoint_with_nonfinite_weights_naming_the_tensor(root):
    cfg = _cfg(*root, "ok", lr=1e-3)
    train.run(cfg)
    uri = evaluate.run_uri(cfg, "checkpoints", "best.pt")
    ckpt = torch.load(io.BytesIO(storage.read_bytes(uri)), weights_only=True)
    ckpt["model"]["item_emb"][3, 1] = float("inf")
    ckpt["model"]["item_emb"][5, 0] = float("nan")
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    storage.write_bytes(uri, buf.getvalue())
    before = storage.read_bytes(evaluate.run_uri(cfg, "eval_test.json"))
    with pytest.raises(CheckpointError, match=r"best\.pt holds non-finite weights: item_emb \(2 of 2560 values "
                                              r"NaN/Inf\)"):
        evaluate.run(cfg, "test")
    assert storage.read_bytes(evaluate.run_uri(cfg, "eval_test.json")) == before
