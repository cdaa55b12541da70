"""Ray Train: 2 gloo workers with DDP against the in-process trainer, on the real Ray runtime."""

import os

import pytest

from irllrec_dist import embed, ingest, train
from irllrec_dist.config import Config, SyntheticConfig
from irllrec_dist.data import synthetic

os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")


@pytest.fixture(scope="module")
def local_ray():
    import ray

    ray.init(num_cpus=2, include_dashboard=True, address="local")
    yield
    ray.shutdown()


def _cfg(root, raw, workers, **loss):
    cfg = Config(run_root=str(root))
    cfg.ingest.source = str(raw)
    cfg.train.max_epochs, cfg.train.lr, cfg.train.batch_size, cfg.train.threads = 12, 0.003, 256, 1
    cfg.train.workers, cfg.train.run_name = workers, f"w{workers}"
    if loss:
        cfg.model.intents = 8
        for k, v in loss.items():
            setattr(cfg.loss, k, v)
    cfg.validate()
    return cfg


def test_two_workers_match_one_process(tmp_path, local_ray):
    """Each rank takes its half of every global batch; DDP averages the halves' gradients,
    which is the full batch's mean gradient: the runs agree up to float rounding."""
    raw = tmp_path / "raw"
    synthetic.write_raw(synthetic.generate(SyntheticConfig(seed=3, n_users=600, n_items=400, n_intents=16)), str(raw))
    single = _cfg(tmp_path / "root", raw, 0)
    ingest.run(single)
    one = train.run(single)
    two = train.run(_cfg(tmp_path / "root", raw, 2))
    assert two["workers"] == 2 and two["replicas_identical"]
    assert abs(two["test"]["recall@20"] - one["test"]["recall@20"]) < 0.005
    # rank 0 logs the loss of its half of each batch: close to, not equal to, the full-batch loss
    assert abs(two["history"][0]["bpr"] - one["history"][0]["bpr"]) < 1e-2


def test_sampled_two_workers_exchange_only_touched_rows(tmp_path, local_ray):
    """Neighbour-sampled steps on 2 workers: the tables leave DDP, the ranks all-reduce only the
    rows their blocks touched (fewer bytes than the tables), replicas stay identical, and the
    bytes per step reach TensorBoard."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    raw = tmp_path / "raw"
    synthetic.write_raw(synthetic.generate(SyntheticConfig(seed=3, n_users=600, n_items=400, n_intents=16)), str(raw))
    cfg = _cfg(tmp_path / "root", raw, 2)
    cfg.model.layers, cfg.train.fanouts, cfg.train.batch_size, cfg.train.max_epochs = 2, "3,3", 64, 3
    cfg.validate()
    ingest.run(cfg)
    summary = train.run(cfg)
    assert summary["fanouts"] == "3,3" and summary["replicas_identical"]
    rows, dense = summary["table_rows_bytes_per_step"], summary["dense_tables_bytes_per_step"]
    assert 0 < rows < 0.9 * dense  # a quarter of the rows never travel (deterministic: seeded sampling)
    assert summary["allreduce_bytes_per_step"] == rows  # LightGCN: nothing but the tables to exchange
    assert summary["test"]["recall@20"] > 0
    acc = EventAccumulator(str(tmp_path / "root" / "runs" / "w2" / "tensorboard"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert {"comm/allreduce_bytes_per_step", "comm/dense_tables_bytes_per_step"} <= set(tags)
    assert acc.Scalars("comm/table_rows_bytes_per_step")[-1].value == summary["table_rows_bytes_per_step"]


def test_ema_teachers_identical_on_every_rank(tmp_path, local_ray):
    raw = tmp_path / "raw"
    synthetic.write_raw(synthetic.generate(SyntheticConfig(seed=5, n_users=150, n_items=80, n_intents=8)), str(raw))
    cfg = _cfg(tmp_path / "root", raw, 2, prf=0.01, ia=0.02, ta=0.02, itm=0.02, itm_max_nodes=32)
    cfg.train.max_epochs = 4
    ingest.run(cfg)
    embed.run(cfg)
    summary = train.run(cfg)
    # digests of the student and the EMA teacher, gathered from both ranks, are equal
    assert summary["workers"] == 2 and summary["replicas_identical"]
    assert {"prf", "ia", "ta", "itm"} <= set(summary["history"][-1])


def test_killed_worker_resumes_from_checkpoint(tmp_path, local_ray):
    """SIGKILL one Ray Train worker mid-run: Ray restarts the group from the latest checkpoint,
    the run finishes, every epoch appears exactly once, and the result matches an
    uninterrupted run (the checkpoint carries model, optimiser and every RNG state)."""
    import signal
    import threading
    import time

    import psutil

    raw = tmp_path / "raw"
    synthetic.write_raw(synthetic.generate(SyntheticConfig(seed=4, n_users=400, n_items=300, n_intents=12)), str(raw))
    # ITM on: the run carries an EMA teacher, which must also come back identical on every rank
    ref = _cfg(tmp_path / "root", raw, 2, itm=0.02, itm_max_nodes=32)
    ref.train.max_epochs, ref.train.patience, ref.train.ray_storage = 24, 100, str(tmp_path / "ray_ref")
    ingest.run(ref)
    embed.run(ref)
    clean = train.run(ref)

    cfg = _cfg(tmp_path / "root", raw, 2, itm=0.02, itm_max_nodes=32)
    cfg.train.max_epochs, cfg.train.patience, cfg.train.run_name = 24, 100, "killed"
    cfg.train.ray_storage = str(tmp_path / "ray_killed")
    killed = []
    started = time.time()

    def kill_after_second_checkpoint():
        deadline = time.time() + 300
        while time.time() < deadline and not killed:
            # two checkpoint folders: the first one is certainly registered by then
            if len(list((tmp_path / "ray_killed").glob("*/checkpoint_*"))) >= 2:
                # only this run's workers: earlier runs' workers may still be shutting down
                for p in psutil.process_iter(["cmdline", "create_time"]):
                    if (p.info["create_time"] or 0) > started and any(
                        "RayTrainWorker" in part for part in (p.info["cmdline"] or [])
                    ):
                        os.kill(p.pid, signal.SIGKILL)
                        killed.append(p.pid)
                        break
            time.sleep(0.2)

    watcher = threading.Thread(target=kill_after_second_checkpoint)
    watcher.start()
    result = train.run(cfg)
    watcher.join()
    assert killed, "no worker was killed"
    epochs = [r["epoch"] for r in result["history"]]
    assert epochs == list(range(24))  # nothing skipped, nothing repeated
    assert result["resumed_at_epoch"] is not None and result["resumed_at_epoch"] > 0
    assert clean["resumed_at_epoch"] is None
    assert abs(result["test"]["recall@20"] - clean["test"]["recall@20"]) < 0.01
    # student and EMA teacher digests gathered from both ranks after the resume are equal
    assert result["replicas_identical"] and "itm" in result["history"][-1]
