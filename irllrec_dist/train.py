"""Stage: train the dual towers (LightGCN alone when every text loss is off).

    python -m irllrec_dist.train --config configs/amazon.yaml train.seed=1 [train.workers=2]

The whole loop is ``train_loop``, its pieces in ``training/``: per epoch (``run_epoch``), draw one
uniform negative per training edge and shuffle; per batch, redraw the edge-dropout mask, propagate
over the full graph (``train.fanouts: full``) or through neighbour-sampled blocks of the batch's
nodes (``train.fanouts: 10,10,10``), add up the switched-on loss terms (model/objective.py), step
Adam, update the EMA teacher (``TrainStep``). Validate on Recall@monitor_k every ``eval_every``
epochs, keep the best state, stop after ``patience`` checks without improvement (not before
``min_epochs``) (``Validator``), save the resumable state (``TrainState``) at every validation
(``Checkpointer``), then evaluate the best on test (``summarise``). With ``train.workers`` >= 1
the same loop runs on Ray Train workers (``run_ray``), each taking its slice of
every global batch under DistributedDataParallel; with sampled blocks the
embedding tables stay out of DDP and ranks exchange only the rows their
batches touched (sparse_allreduce.py).
"""

from __future__ import annotations

import logging
import os
import sys
import time

import torch

from irllrec_dist import runfolder, storage
from irllrec_dist.artifacts import input_hashes, run_uri
from irllrec_dist.cli import NonFiniteLoss, config_main
from irllrec_dist.config import Config, config_from_dict
from irllrec_dist.training.checkpoint import Checkpointer, RayCheckpoints, StorageCheckpoints
from irllrec_dist.training.epoch import run_epoch
from irllrec_dist.training.setup import TrainingGraph, build_graph, build_trainer, share_graph, unshare_graph
from irllrec_dist.training.sink import MetricsSink
from irllrec_dist.training.state import TrainState
from irllrec_dist.training.summary import check_replicas, save_best, summarise
from irllrec_dist.training.validation import Validator

log = logging.getLogger("irllrec_dist.train")


def train_loop(
    cfg: Config,
    rank: int = 0,
    world: int = 1,
    checkpointer: Checkpointer | None = None,
    graph: TrainingGraph | None = None,
    device: torch.device | None = None,
    inputs: dict | None = None,
    runlog: runfolder.RunLog | None = None,
) -> dict | None:
    """The training loop. With world > 1 it runs on every Ray Train worker (torch.distributed is
    initialised); rank 0 logs, keeps the best state and returns the summary, the others None.
    ``checkpointer`` restores the latest resumable state and saves one at every validation;
    ``graph`` (Ray runs) is the one the driver built, else it is built here; ``device`` (Ray runs)
    the worker's; ``inputs`` the dataset / embedding hashes read before the graph was built,
    recorded in best.pt; ``runlog`` the run's train.log (rank 0)."""
    t_start = time.time()
    tc = cfg.train
    torch.set_num_threads(tc.threads or (tc.cpus_per_worker if tc.workers else os.cpu_count()) or 1)
    inputs = inputs if inputs is not None else input_hashes(cfg)
    trainer = build_trainer(cfg, rank, world, graph, device)
    validator = Validator(trainer)
    state = TrainState(trainer, validator, t_start)
    saved = checkpointer.load() if checkpointer is not None else None
    if saved is not None:  # go on exactly where the last checkpoint left off
        state.load_state_dict(saved)
        if runlog is not None:
            runlog.keep_previous()
        if rank == 0:
            log.info(
                "resumed from checkpoint at epoch %d (best val %s %.4f at epoch %d)",
                state.epoch,
                validator.monitor,
                validator.best[validator.monitor],
                validator.best["epoch"],
            )
    # a run that had stopped early, then died before its test metrics were written, trains no more
    last_epoch = state.epoch if validator.should_stop(state.epoch) and saved is not None else tc.max_epochs
    with MetricsSink(trainer, validator, state.epoch, runlog) as sink:  # closes its bars also on an error
        for epoch in range(state.epoch, last_epoch):
            record, intent_scale = run_epoch(trainer, epoch, sink.batch_bar(epoch))
            sink.epoch(record, intent_scale)
            if validator.due(epoch):
                val = validator.validate(epoch)
                record.update({f"val_{k}": v for k, v in val.items() if "@" in k})
                sink.validation(record, val)
            state.history.append(record)
            state.epoch = epoch + 1
            sink.epoch_done()
            if validator.due(epoch):
                if checkpointer is not None:
                    checkpointer.save(
                        state.state_dict(), {k: v for k, v in record.items() if k == "epoch" or k.startswith("val_")}
                    )
                if validator.should_stop(epoch + 1):
                    sink.early_stop(epoch)
                    break
    replicas_identical = check_replicas(state)
    if rank != 0:
        return None
    save_best(state, inputs)
    summary = summarise(state, replicas_identical)
    sink.final(summary)
    return summary


def run_in_folder(
    cfg: Config,
    checkpointer: Checkpointer | None = None,
    graph: TrainingGraph | None = None,
    device: torch.device | None = None,
    inputs: dict | None = None,
    rank: int = 0,
    world: int = 1,
) -> dict | None:
    """``train_loop`` with the run folder's files on rank 0 (runfolder.py): the resolved
    ``config.yaml`` first, ``train.log`` at every validation and at the end (also when the run
    fails), ``curves.png`` when it finished and matplotlib is there."""
    if rank != 0:
        return train_loop(cfg, rank, world, checkpointer, graph, device, inputs)
    runfolder.write_config(cfg)
    runlog = runfolder.RunLog(run_uri(cfg, "train.log"))
    with runlog.attached():
        try:
            summary = train_loop(cfg, rank, world, checkpointer, graph, device, inputs, runlog)
            try:
                runfolder.write_curves(cfg, summary)
            except Exception as e:  # noqa: BLE001 -- a picture must not cost a finished run
                log.warning("curves.png not drawn: %s: %s", type(e).__name__, e)
            return summary
        finally:
            try:
                runlog.save()
            except Exception as e:  # noqa: BLE001 -- never hide the run's own outcome behind the log's
                log.warning("could not write %s: %s: %s", runlog.uri, type(e).__name__, e)


NONFINITE = "nonfinite"  # the key that carries a NonFiniteLoss message from the Ray workers to the driver


def _ray_worker(config: dict) -> dict | None:
    """One Ray Train worker. A non-finite loss is not a worker failure: Ray would restart the
    group from the last checkpoint up to train.max_failures times, each attempt diverging at the
    same step. Every rank raises NonFiniteLoss at the same point (the ranks agree on the step,
    and on rank 0's check of the best state, through a collective), so every rank makes one last
    report without a checkpoint (ray.train.report is a barrier: all ranks or none) and returns
    normally; rank 0's return value (and the report's metrics) carry the message, and the driver
    raises NonFiniteLoss from it (run_ray)."""
    import ray
    import ray.train
    from ray.train.torch import get_device

    ctx = ray.train.get_context()
    graph = unshare_graph(ray.get(config["graph"]))
    try:
        run_in_folder(
            config_from_dict(config["config"]),
            RayCheckpoints(),
            graph,
            get_device(),
            config.get("inputs"),
            ctx.get_world_rank(),
            ctx.get_world_size(),
        )
    except NonFiniteLoss as e:
        stopped = {NONFINITE: str(e)}
        ray.train.report(stopped)  # no checkpoint: the latest one stays the last good epoch's
        return stopped
    return None


def _nonfinite_message(result) -> str | None:
    """The NonFiniteLoss message a Ray run ended with: rank 0's return value (Ray Train V2), else
    the last reported metrics (V1 keeps reports without a checkpoint there; V2 does not)."""
    for found in (getattr(result, "return_value", None), getattr(result, "metrics", None)):
        if isinstance(found, dict) and found.get(NONFINITE):
            return str(found[NONFINITE])
    return None


def run_ray(cfg: Config) -> dict:
    """Ray Train: a local Ray is started unless RAY_ADDRESS names a cluster (as under `ray job submit`)."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    if "://" not in cfg.run_root:  # workers do not share the driver's working directory
        cfg.run_root = os.path.abspath(cfg.run_root)
    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS") or None)
    tc = cfg.train
    from irllrec_dist.ray_storage import run_config_storage

    ray_storage = run_config_storage(cfg)  # under an s3:// run root by default; node-local refused across nodes
    # Built once here and put in the object store: the workers of a node map one copy.
    t0 = time.time()
    inputs = input_hashes(cfg)  # before the graph is read: best.pt records what it was built from
    graph_ref = ray.put(share_graph(build_graph(cfg)))
    log.info("training graph built and shared in %.1fs", time.time() - t0)
    trainer = TorchTrainer(
        _ray_worker,
        train_loop_config={"config": cfg.to_dict(), "graph": graph_ref, "inputs": inputs},
        torch_config=TorchConfig(backend="nccl" if tc.gpus_per_worker else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=tc.workers,
            use_gpu=bool(tc.gpus_per_worker),
            resources_per_worker={
                "CPU": tc.cpus_per_worker,
                **({"GPU": tc.gpus_per_worker} if tc.gpus_per_worker else {}),
            },
        ),
        run_config=RunConfig(
            name=f"irllrec-{tc.run_name}-{int(time.time())}",
            **ray_storage,
            failure_config=FailureConfig(max_failures=tc.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )
    result = trainer.fit()
    stopped = _nonfinite_message(result)
    if stopped is not None:  # the run diverged: there is no metrics.json to read
        raise NonFiniteLoss(stopped)
    return storage.read_json(run_uri(cfg, "metrics.json"))


def run(cfg: Config) -> dict:
    if cfg.train.workers >= 1:
        return run_ray(cfg)
    inputs = input_hashes(cfg)
    checkpoints = StorageCheckpoints(cfg, inputs)
    if not cfg.train.resume:
        checkpoints.clear()  # a stale state must not be picked up by a later resumed run
    summary = run_in_folder(cfg, checkpoints if cfg.train.resume else None, inputs=inputs)
    checkpoints.clear()  # metrics.json is written: started again, the run trains from scratch
    return summary


def main(argv: list[str] | None = None) -> int:
    return config_main("train", __doc__, lambda cfg, args: {k: v for k, v in run(cfg).items() if k != "history"}, argv)


if __name__ == "__main__":
    sys.exit(main())
