"""Stage: train the dual towers (LightGCN alone when every text loss is off).

    python -m irllrec_dist.train --config configs/amazon.yaml train.seed=1 [train.workers=2]

The whole loop is in ``train_loop``: per epoch, draw one uniform negative per
training edge and shuffle; per batch, redraw the edge-dropout mask, propagate
over the full graph, add up the switched-on loss terms (model/objective.py),
step Adam, update the EMA teacher. Validate on Recall@monitor_k every
``eval_every`` epochs, keep the best checkpoint, stop after ``patience`` checks
without improvement, then evaluate the best on test. With ``train.workers`` >= 1
the same loop runs on Ray Train workers (``run_ray``), each taking its slice of
every global batch under DistributedDataParallel.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import io
import json
import logging
import os
import resource
import sys
import tempfile
import time

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from irllrec_dist import evaluate, storage
from irllrec_dist.config import Config, add_config_args, config_from_dict, load_config
from irllrec_dist.data import dataset as ds
from irllrec_dist.graph.adjacency import build_adjacency
from irllrec_dist.graph.negative_sampler import edge_keys, sample_negatives
from irllrec_dist.model.dual_tower import TextInputs, build_model
from irllrec_dist.model.ema import EMATeacher
from irllrec_dist.model.objective import loss_terms, weighted_sum
from irllrec_dist.monitoring import TensorBoardLog

log = logging.getLogger("irllrec_dist.train")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def load_text(cfg: Config, data: ds.Dataset) -> TextInputs | None:
    if not cfg.loss.uses_text():
        return None
    from irllrec_dist.embed import load_text_inputs

    return load_text_inputs(cfg.run_root, data.n_users, data.n_items)


class TrainStep(nn.Module):
    """One step's forward: propagation and every loss term, so that DistributedDataParallel
    sees the whole computation behind ``loss.backward()`` as one forward call."""

    def __init__(self, model: nn.Module, adj, text: TextInputs | None, cfg: Config,
                 teacher: EMATeacher | None):
        super().__init__()
        self.model, self.adj, self.text, self.loss_cfg = model, adj, text, cfg.loss
        self.teacher = teacher  # frozen: DDP ignores parameters without requires_grad

    def forward(self, mask, bu, bp, bn, gen):
        mats = self.adj.matrices(mask)
        layer_out = self.model.propagate(*mats)
        teacher_out = self.teacher.propagate(*mats) if self.teacher is not None else None
        terms = loss_terms(self.model, layer_out, self.adj, bu, bp, bn, self.loss_cfg, self.text,
                           self.teacher, teacher_out, mask, gen)
        return weighted_sum(terms, self.loss_cfg), terms


def _digest(module: nn.Module) -> str:
    h = hashlib.sha256()
    for t in module.state_dict().values():
        h.update(t.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


def train_loop(cfg: Config, rank: int = 0, world: int = 1, checkpoints=None) -> dict | None:
    """The training loop; with world > 1 it runs on every Ray Train worker (torch.distributed is
    initialised) and rank 0 validates, checkpoints and returns the summary. ``checkpoints``
    (Ray runs) restores the latest resumable state and saves a new one every validation."""
    tc = cfg.train
    distributed = world > 1
    torch.set_num_threads(tc.threads or (tc.cpus_per_worker if tc.workers else os.cpu_count()) or 1)
    torch.manual_seed(tc.seed)
    # The same seed on every rank: negatives, shuffling and dropout masks agree across
    # ranks, and each rank takes its own slice of every global batch.
    rng = np.random.default_rng(tc.seed)
    t_start = time.time()

    data = ds.load(cfg.run_root)
    adj = build_adjacency(data.train, data.n_users, data.n_items)
    train_u, train_i = data.train[:, 0], data.train[:, 1]
    train_keys = np.sort(edge_keys(train_u, train_i, data.n_items))
    n_train = len(train_u)
    text = load_text(cfg, data)
    model = build_model(cfg, data.n_users, data.n_items, text.dim if text is not None else None)
    teacher = EMATeacher(model, cfg.loss.ema_momentum) if cfg.loss.itm else None
    step = TrainStep(model, adj, text, cfg, teacher)
    if distributed:
        # Unused parameters happen legitimately (e.g. the intent MLP when only the profile
        # loss is on), so DDP must look for them.
        step = nn.parallel.DistributedDataParallel(step, find_unused_parameters=True)
    # Text-loss randomness (noise, hard negatives) has its own stream so that
    # switching those losses on does not change the graph tower's draws.
    gen = torch.Generator().manual_seed(tc.seed + 1 + rank)
    opt = torch.optim.Adam(model.parameters(), lr=tc.lr)
    lead = rank == 0
    if lead:
        log.info("train: %d users, %d items, %d edges; %d worker(s), %d threads each", data.n_users,
                 data.n_items, n_train, world, torch.get_num_threads())

    tb = TensorBoardLog(evaluate.run_uri(cfg, "tensorboard")) if lead else None
    history, best, best_state, best_teacher, bad_checks, first_epoch = [], None, None, None, 0, 0
    state = checkpoints.load() if checkpoints is not None else None
    if state is not None:  # resume exactly where the last checkpoint left off
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        if teacher is not None:
            teacher.load_state_dict(state["teacher"])
        rng.bit_generator.state = state["numpy_rng"]
        torch.set_rng_state(state["torch_rng"])
        gen.set_state(state["gen_rng"][rank])
        history, best, bad_checks, first_epoch = state["history"], state["best"], state["bad_checks"], state["epoch"]
        best_state, best_teacher = state["best_state"], state["best_teacher"]
        if lead:
            log.info("resumed from checkpoint at epoch %d (best %s)", first_epoch, best)
    monitor = f"recall@{cfg.eval.monitor_k}"
    bar = tqdm(range(first_epoch, tc.max_epochs), desc="train", unit="epoch", dynamic_ncols=True,
               disable=not lead, initial=first_epoch, total=tc.max_epochs)
    for epoch in bar:
        t0 = time.time()
        model.train()
        neg = sample_negatives(train_u, train_keys, data.n_items, rng)
        perm = rng.permutation(n_train)
        sums: dict[str, float] = {}
        n_batches = 0
        for start in range(0, n_train, tc.batch_size):
            b = perm[start:start + tc.batch_size][rank::world]
            mask = None
            if tc.edge_keep < 1.0:
                mask = (torch.rand(n_train) < tc.edge_keep).to(torch.float32)
            bu, bp, bn = (torch.from_numpy(x) for x in (train_u[b], train_i[b], neg[b]))
            loss, terms = step(mask, bu, bp, bn, gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if teacher is not None:
                teacher.update(model)
            for name, value in [("loss", loss), *terms.items()]:
                sums[name] = sums.get(name, 0.0) + value.item()
            n_batches += 1
        epoch_s = time.time() - t0
        record = {"epoch": epoch, **{k: v / n_batches for k, v in sums.items()},
                  "epoch_s": round(epoch_s, 3), "edges_per_s": round(n_train / epoch_s, 1)}
        if tb is not None:
            tb.scalars(epoch, {k: v for k, v in record.items() if k in sums}, "loss/")
            tb.scalars(epoch, {"edges_per_s_per_worker": n_train / world / epoch_s, "epoch_s": epoch_s},
                       "throughput/")
            tb.scalars(epoch, {"peak_rss_mib": peak_rss_mib()}, "memory/")
            tb.scalars(epoch, {"lr": opt.param_groups[0]["lr"]}, "optim/")

        if epoch % tc.eval_every == 0:
            # Every rank ranks a shard of the users and gets the same metrics, so all ranks
            # take the same early-stopping decision; rank 0 keeps the best state and logs.
            model.eval()
            with torch.no_grad():
                user_all, item_all = model(*adj.matrices())
            val = evaluate.split_metrics(cfg, data, user_all, item_all, "val", rank=rank, world=world)
            record.update({f"val_{k}": v for k, v in val.items() if "@" in k})
            if best is None or val[monitor] > best[monitor]:
                best, bad_checks = dict(val, epoch=epoch), 0
                if lead:
                    best_state = copy.deepcopy(model.state_dict())
                    best_teacher = copy.deepcopy(teacher.state_dict()) if teacher is not None else None
            else:
                bad_checks += 1
            if lead:
                tb.scalars(epoch, {k: v for k, v in val.items() if "@" in k}, "val/")
                tb.flush()
                bar.set_postfix(loss=f"{record['loss']:.4f}", val=f"{val[monitor]:.4f}",
                                best=f"{best[monitor]:.4f}@{best['epoch']}")
                log.info("epoch %d loss %.4f val %s %.4f (best %.4f @ %d) %.2fs/epoch %.0f edges/s rss %.0f MiB",
                         epoch, record["loss"], monitor, val[monitor], best[monitor], best["epoch"], epoch_s,
                         record["edges_per_s"], peak_rss_mib())
        history.append(record)
        if checkpoints is not None and epoch % tc.eval_every == 0:
            gen_states = [gen.get_state()]
            if distributed:
                gen_states = [None] * world
                dist.all_gather_object(gen_states, gen.get_state())
            checkpoints.save({
                "epoch": epoch + 1, "model": model.state_dict(), "optimizer": opt.state_dict(),
                "teacher": teacher.state_dict() if teacher is not None else None,
                "numpy_rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(), "gen_rng": gen_states,
                "history": history, "best": best, "bad_checks": bad_checks,
                "best_state": best_state, "best_teacher": best_teacher,
            } if lead else None, {"epoch": epoch, **{k: v for k, v in record.items() if k.startswith("val_")}})
        if bad_checks >= tc.patience:
            if lead:
                log.info("early stop at epoch %d: %d checks without improvement", epoch, bad_checks)
            break
    bar.close()

    # Replicas must agree bit for bit: students through DDP, teachers through identical updates.
    digests = {"model": _digest(model), "teacher": _digest(teacher) if teacher is not None else None}
    all_digests = [digests]
    if distributed:
        all_digests = [None] * world
        dist.all_gather_object(all_digests, digests)
    if not lead:
        return None

    buf = io.BytesIO()
    torch.save({"model": best_state, "teacher": best_teacher, "epoch": best["epoch"],
                "text_dim": text.dim if text is not None else None,
                "val": {k: v for k, v in best.items()}, "config": cfg.to_dict()}, buf)
    storage.write_bytes(evaluate.run_uri(cfg, "checkpoints", "best.pt"), buf.getvalue())
    test = evaluate.run(cfg, "test")
    summary = {
        "run_name": tc.run_name, "seed": tc.seed, "workers": world, "best_epoch": best["epoch"],
        "epochs_run": len(history), "wall_s": round(time.time() - t_start, 1),
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "replicas_identical": all(d == all_digests[0] for d in all_digests),
        "resumed_at_epoch": first_epoch if state is not None else None,
        "val": {k: v for k, v in best.items() if "@" in k},
        "test": {k: v for k, v in test.items() if "@" in k or k == "users"},
        "test_by_degree": test["by_degree"],
        "history": history,
    }
    storage.write_json(evaluate.run_uri(cfg, "metrics.json"), summary)
    tb.scalars(best["epoch"], summary["test"], "test/")
    tb.hparams({"model": cfg.model.name, "dim": cfg.model.dim, "layers": cfg.model.layers,
                "intents": cfg.model.intents, "lr": tc.lr, "batch_size": tc.batch_size, "workers": world,
                "seed": tc.seed, **{f"loss.{k}": v for k, v in vars(cfg.loss).items()}},
               {k: v for k, v in summary["test"].items() if "@" in k})
    tb.close()
    return summary


class RayCheckpoints:
    """Resumable training state through ``ray.train.Checkpoint`` (Ray Train's storage)."""

    FILE = "state.pt"

    def load(self) -> dict | None:
        import ray.train

        ckpt = ray.train.get_checkpoint()
        if ckpt is None:
            return None
        with ckpt.as_directory() as d:
            return torch.load(os.path.join(d, self.FILE), map_location="cpu", weights_only=True)

    def save(self, state: dict | None, metrics: dict) -> None:
        """Collective: every rank calls it; only rank 0 passes a state."""
        import ray.train

        with tempfile.TemporaryDirectory() as d:
            ckpt = None
            if state is not None:
                torch.save(state, os.path.join(d, self.FILE))
                ckpt = ray.train.Checkpoint.from_directory(d)
            ray.train.report(metrics, checkpoint=ckpt)


def _ray_worker(config: dict) -> None:
    import ray.train

    ctx = ray.train.get_context()
    train_loop(config_from_dict(config), ctx.get_world_rank(), ctx.get_world_size(), RayCheckpoints())


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
    trainer = TorchTrainer(
        _ray_worker, train_loop_config=cfg.to_dict(),
        torch_config=TorchConfig(backend="gloo"),
        scaling_config=ScalingConfig(num_workers=tc.workers, use_gpu=False,
                                     resources_per_worker={"CPU": tc.cpus_per_worker}),
        run_config=RunConfig(name=f"irllrec-{tc.run_name}-{int(time.time())}",
                             storage_path=tc.ray_storage or None,
                             failure_config=FailureConfig(max_failures=tc.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)),
    )
    trainer.fit()
    return storage.read_json(evaluate.run_uri(cfg, "metrics.json"))


def run(cfg: Config) -> dict:
    if cfg.train.workers >= 1:
        return run_ray(cfg)
    return train_loop(cfg)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    cfg = load_config(args.config, args.overrides)
    summary = run(cfg)
    print(json.dumps({k: v for k, v in summary.items() if k != "history"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
