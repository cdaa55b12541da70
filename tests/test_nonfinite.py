"""Non-finite values stop training and evaluation (issue 17, Build 4).

The NaN comes from a real configuration -- an absurd learning rate (train.lr=1e30: Adam moves
every weight by ~1e30 in one step, the next step's scores overflow float32) -- not from a patched
check. One CPU process reads every step's loss; ranks of a process group (and GPUs) track the
first bad step on the device and agree on it once per epoch: both paths are run here, and on Ray
Train, where the run ends once, with no worker-group restart."""

import io
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from irllrec_dist import artifacts, evaluate, ingest, storage, train
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
    run = Path(artifacts.run_uri(cfg))
    assert not (run / "checkpoints" / "best.pt").exists()  # nothing saved from it
    assert not (run / "checkpoints" / "state.pt").exists()  # it died before its first validation
    assert not (run / "metrics.json").exists()


def test_cli_one_line_and_exit_code_2(root):
    run_root, raw = root
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "irllrec_dist.train",
            f"run_root={run_root}",
            f"ingest.source={raw}",
            "train.lr=1e30",
            "train.run_name=cli",
            "train.max_epochs=2",
            "train.threads=1",
            "train.batch_size=256",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, TQDM_DISABLE="1"),
    )
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
    assert not Path(artifacts.run_uri(cfg, "checkpoints", "best.pt")).exists()


def test_evaluate_refuses_a_checkpoint_with_nonfinite_weights_naming_the_tensor(root):
    cfg = _cfg(*root, "ok", lr=1e-3)
    train.run(cfg)
    uri = artifacts.run_uri(cfg, "checkpoints", "best.pt")
    ckpt = torch.load(io.BytesIO(storage.read_bytes(uri)), weights_only=True)
    ckpt["model"]["item_emb"][3, 1] = float("inf")
    ckpt["model"]["item_emb"][5, 0] = float("nan")
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    storage.write_bytes(uri, buf.getvalue())
    before = storage.read_bytes(artifacts.run_uri(cfg, "eval_test.json"))
    with pytest.raises(
        CheckpointError,
        match=r"best\.pt holds non-finite weights: item_emb \(2 of 2560 values "
        r"NaN/Inf\)",
    ):
        evaluate.run(cfg, "test")
    assert storage.read_bytes(artifacts.run_uri(cfg, "eval_test.json")) == before


@pytest.fixture
def ray_tracking_attempts(monkeypatch):
    """A local Ray (2 CPUs) whose Train controller records every run attempt in its state actor.
    The variables are set before ray.init: the Ray processes inherit them."""
    import ray

    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    monkeypatch.setenv("RAY_TRAIN_ENABLE_STATE_TRACKING", "1")
    # its periodic check of the actors asks Ray's state API, which refuses to pick among several
    # Ray instances on one machine: not needed, a finished run's attempts are recorded as they end
    monkeypatch.setenv("RAY_TRAIN_ENABLE_STATE_ACTOR_RECONCILIATION", "0")
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, address="local")
    yield
    ray.shutdown()


def _attempts(run_prefix: str) -> list:
    """Ray Train's own record of the run's worker-group attempts (one per start or restart)."""
    import ray
    from ray.train.v2._internal.state.state_actor import get_state_actor

    actor = get_state_actor()
    runs = ray.get(actor.get_train_runs.remote())
    attempts = ray.get(actor.get_train_run_attempts.remote())
    ids = [run_id for run_id, run in runs.items() if run.name.startswith(run_prefix)]
    assert len(ids) == 1, {run_id: run.name for run_id, run in runs.items()}
    return list(attempts[ids[0]].values())


def test_ray_train_run_stops_once_without_restarts(root, tmp_path, ray_tracking_attempts):
    """Under Ray Train every rank stops at the agreed step and the run ends as a success that
    carries the message: the driver raises NonFiniteLoss itself, and FailureConfig's restarts
    (max_failures=3: up to 4 attempts, each failing at the same step) never happen."""
    cfg = _cfg(*root, "ray", lr=1e30)
    cfg.train.workers, cfg.train.max_failures, cfg.train.ray_storage = 2, 3, str(tmp_path / "ray")
    cfg.validate()
    t0 = time.time()
    with pytest.raises(
        NonFiniteLoss,
        match=r"^non-finite training loss at epoch 0, step 1 \(batch 1 of the epoch\): "
        r".*summed over the epoch on rank 0",
    ):
        train.run(cfg)
    elapsed = time.time() - t0
    attempts = _attempts("irllrec-ray-")
    assert len(attempts) == 1, [(a.attempt_id, a.status, a.status_detail) for a in attempts]
    assert attempts[0].status.name == "FINISHED", (attempts[0].status, attempts[0].status_detail)
    run = Path(artifacts.run_uri(cfg))
    # rank 0 opens one TensorBoard event file per attempt
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 1
    assert not (run / "metrics.json").exists() and not (run / "checkpoints" / "best.pt").exists()
    print(f"ray non-finite run: {elapsed:.1f}s")
